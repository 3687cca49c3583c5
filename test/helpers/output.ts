import type { Subprocess } from "bun";

/** A child's standard output and error as text so far, read as they come (the two pipes apart). */
export interface Output {
  out(): string;
  err(): string;
}

/** Starts reading both pipes of `proc` into text. */
export function collectOutput(proc: Subprocess<"ignore" | "pipe" | null | undefined, "pipe", "pipe">): Output {
  const text = { out: "", err: "" };
  void (async () => {
    for await (const chunk of proc.stdout) text.out += new TextDecoder().decode(chunk);
  })();
  void (async () => {
    for await (const chunk of proc.stderr) text.err += new TextDecoder().decode(chunk);
  })();
  return { out: () => text.out, err: () => text.err };
}
