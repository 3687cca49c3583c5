/**
 * Entry point of the `fitb` executable (`bun build --compile src/cli/main.ts`).
 * The process exits with the code the command returns, once its output is flushed.
 */
import type { CommandIo } from "./command.ts";
import { runCli } from "./run.ts";

const io: CommandIo = {
  out: (line) => {
    process.stdout.write(`${line}\n`);
  },
  err: (line) => {
    process.stderr.write(`${line}\n`);
  },
};

/** Resolves once everything written so far has left the stream, so exit cannot cut output short. */
function drained(stream: NodeJS.WriteStream): Promise<void> {
  return new Promise((resolve) => stream.write("", () => resolve()));
}

const exitCode = await runCli(process.argv.slice(2), { io, env: process.env });
await Promise.all([drained(process.stdout), drained(process.stderr)]);
process.exit(exitCode);
