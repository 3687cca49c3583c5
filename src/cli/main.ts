/**
 * Entry point of the `fitb` executable (`bun build --compile src/cli/main.ts`).
 * The process exits with the code the command returns, once its output is flushed.
 *
 * A reader that closes standard output early (`fitb sub ... | head`) ends the command
 * quietly with status 0, as `head` asked for no more: no EPIPE stack trace, and no
 * subscription left running with nowhere to write.
 */
import type { CommandIo } from "./command.ts";
import { EXIT_OK } from "./errors.ts";
import { flushed } from "./flush.ts";
import { runCli } from "./run.ts";

function isClosedPipe(error: unknown): boolean {
  return (error as { code?: unknown } | null)?.code === "EPIPE";
}

function exitOnClosedPipe(error: unknown): void {
  if (!isClosedPipe(error)) throw error;
  process.exit(EXIT_OK);
}

process.stdout.on("error", exitOnClosedPipe);
// A closed standard error is no reason to stop; what was to be said there is lost either way.
process.stderr.on("error", (error) => {
  if (!isClosedPipe(error)) throw error;
});

const io: CommandIo = {
  out: (line) => {
    try {
      process.stdout.write(`${line}\n`);
    } catch (error) {
      exitOnClosedPipe(error);
    }
  },
  err: (line) => {
    try {
      process.stderr.write(`${line}\n`);
    } catch (error) {
      if (!isClosedPipe(error)) throw error;
    }
  },
};

const exitCode = await runCli(process.argv.slice(2), { io, env: process.env });
// Everything written has left the process before it exits, however slowly a pipe is read.
await Promise.all([flushed(process.stdout), flushed(process.stderr)]);
process.exit(exitCode);
