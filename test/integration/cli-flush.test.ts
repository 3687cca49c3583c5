// `fitb` exits only once everything it wrote has left the process, however slowly its
// output is read (src/cli/flush.ts, used by src/cli/main.ts). Under load, `fitb sub
// --count N --json` read through a pipe once lost every line past the pipe's 64 KiB.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { REPO } from "./harness.ts";

const FLUSH = join(REPO, "src/cli/flush.ts");
const LINE = `${"x".repeat(199)}\n`;
const LINES = 2_000;
/** How long the reader waits before it reads anything: the slow reader. */
const READER_DELAY_MS = 2_000;

describe("output and exit", () => {
  test("output far past a pipe's capacity reaches a slow reader whole, then the process exits", async () => {
    // As main.ts ends: write, flush both streams, exit.
    const script = [
      `import { flushed } from ${JSON.stringify(FLUSH)};`,
      `for (let i = 0; i < ${LINES}; i++) process.stdout.write(${JSON.stringify(LINE)});`,
      "await Promise.all([flushed(process.stdout), flushed(process.stderr)]);",
      "process.exit(3);",
    ].join("\n");
    // The slow reader is a shell pipeline (Bun.spawn's own pipe is read at once): it reads
    // nothing for a while, then counts the bytes. A writer that exits with output still
    // unread loses it here; one that waits for its reader (right) is read whole. The delay
    // is the fault, not a wait for a result.
    const pipeline = `"$0" -e "$1"; echo "exit $?" >&2`;
    const child = Bun.spawn(["sh", "-c", `{ ${pipeline}; } | { sleep ${READER_DELAY_MS / 1000}; wc -c; }`, process.execPath, script], {
      stdout: "pipe",
      stderr: "pipe",
    });
    const [out, err, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
    expect(code).toBe(0);
    expect(err.trim()).toBe("exit 3");
    expect(Number(out.trim())).toBe(LINES * LINE.length);
  });
});
