/** The JSON log lines, among a process's output chunks, whose msg is `msg`. */
export function jsonLogLines(chunks: readonly string[] | undefined, msg: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const line of (chunks ?? []).join("").split("\n")) {
    if (!line.includes(msg)) continue;
    try {
      const parsed = JSON.parse(line) as Record<string, unknown>;
      if (parsed.msg === msg) out.push(parsed);
    } catch {
      // A line cut between two chunks of output; the next read has it whole.
    }
  }
  return out;
}
