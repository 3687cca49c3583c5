/**
 * Entry point of the `fitb` executable (`bun build --compile src/cli/main.ts`).
 * The process exits with the code the command returns, once its output is flushed.
 *
 * A reader that closes standard output early (`fitb sub ... | head`) ends the command
 * quietly with status 0, as `head` asked for no more: no EPIPE stack trace, and no
 * subscription left running with nowhere to write.
 *
 * A service command (replica, relay, console, demo: they run until stopped, under
 * systemd or a terminal) is another matter: see `stopForLostOutput`. Those also stop on
 * SIGHUP as on SIGTERM (lifetime.ts).
 */
import type { CommandIo } from "./command.ts";
import { EXIT_OK } from "./errors.ts";
import { flushed } from "./flush.ts";
import { stopOnHangup } from "./lifetime.ts";
import { PROGRAM, runCli, wantsHelp } from "./run.ts";

/** The commands that run until they are stopped, as services do. */
const SERVICE_COMMANDS: ReadonlySet<string> = new Set(["replica", "relay", "console", "demo"]);
/** sysexits.h EX_IOERR: what a service command whose standard output is gone exits with. */
const EXIT_OUTPUT_LOST = 74;
/**
 * How long a service command whose standard output is gone has to stop as on SIGTERM
 * before it exits anyway; below the 15 s systemd gives a unit's stop (service.ts).
 */
const OUTPUT_LOST_STOP_MS = 10_000;

const commandWord = process.argv[2];
/** A service command, run as one: `fitb replica --help | head -1` only prints help, and ends quietly as any command does. */
const isService = commandWord !== undefined && SERVICE_COMMANDS.has(commandWord) && !wantsHelp(process.argv.slice(3));
/** Set once a service command's standard output is found gone; it then exits EXIT_OUTPUT_LOST. */
let outputLost = false;

function errorCode(error: unknown): unknown {
  return (error as { code?: unknown } | null)?.code;
}

function isClosedPipe(error: unknown): boolean {
  return errorCode(error) === "EPIPE";
}

/** The reader is gone (EPIPE), or the terminal is (EIO after a hangup). */
function isLostOutput(error: unknown): boolean {
  const code = errorCode(error);
  return code === "EPIPE" || code === "EIO";
}

function onStdoutError(error: unknown): void {
  if (isService) {
    // Once gone, every later write fails too (some as "write after end"): all are dropped.
    if (outputLost) return;
    if (isLostOutput(error)) return stopForLostOutput(error);
    throw error;
  }
  if (!isClosedPipe(error)) throw error;
  process.exit(EXIT_OK);
}

/**
 * A service command whose standard output is gone stops, cleanly, and exits non-zero.
 * Its log is that output (the replica's JSON lines, which systemd's journal keeps): going
 * on without it would run a replica nobody can watch, and exiting 0 is a clean stop that
 * `Restart=on-failure` does not restart. EX_IOERR is a failure systemd records and
 * restarts from, with a standard output that works; the group rides out one replica
 * restarting, which resumes from its data directory. The command's own SIGTERM handler
 * does the stopping (the replica logs its stop, the demo removes relay.sock), bounded in
 * time. Not by raising a real signal: systemd counts death by SIGTERM or SIGPIPE as clean.
 * A command still starting (no SIGTERM handler yet) exits at once: a replica is safe to
 * stop anywhere, as after kill -9.
 */
function stopForLostOutput(error: unknown): void {
  outputLost = true;
  writeErr(
    `${PROGRAM} ${commandWord}: standard output is gone (${String(errorCode(error))}); stopping with status ${EXIT_OUTPUT_LOST} (EX_IOERR), so that a supervisor restarts it with one that works`,
  );
  // A command that has no SIGTERM handler yet is still starting, with nothing to stop cleanly.
  if (process.listenerCount("SIGTERM") === 0) process.exit(EXIT_OUTPUT_LOST);
  process.emit("SIGTERM", "SIGTERM");
  // Stopping already: a real SIGTERM now (systemd's stop, say) would find the command's own
  // handler used up and end the process by the signal, which systemd counts as clean.
  process.on("SIGTERM", () => undefined);
  // Kept referenced: should the command never finish, this still ends the process.
  setTimeout(() => process.exit(EXIT_OUTPUT_LOST), OUTPUT_LOST_STOP_MS);
}

function writeErr(line: string): void {
  try {
    process.stderr.write(`${line}\n`);
  } catch (error) {
    if (!isLostOutput(error)) throw error;
  }
}

process.stdout.on("error", onStdoutError);
// A closed standard error is no reason to stop; what was to be said there is lost either way.
process.stderr.on("error", (error) => {
  if (!isLostOutput(error)) throw error;
});
if (isService) stopOnHangup();

const io: CommandIo = {
  out: (line) => {
    if (outputLost) return;
    try {
      process.stdout.write(`${line}\n`);
    } catch (error) {
      onStdoutError(error);
    }
  },
  err: writeErr,
};

const exitCode = await runCli(process.argv.slice(2), { io, env: process.env });
// Everything written has left the process before it exits, however slowly a pipe is read.
await Promise.all([flushed(process.stdout), flushed(process.stderr)]);
// A command that failed of its own says so by its own code; one that stopped because its output went, by EX_IOERR.
process.exit(outputLost && exitCode === EXIT_OK ? EXIT_OUTPUT_LOST : exitCode);
