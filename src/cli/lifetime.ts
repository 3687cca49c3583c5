/**
 * How long-running commands end. Processes that must not outlive the one that started
 * them: a child can learn that its parent died in two ways that also work after `kill -9`
 * of the parent, which runs no handler of its own:
 *
 * - standard input is a pipe the parent holds: the kernel closes the parent's end when
 *   it dies, and the child reads end of file (`untilStdinEnds`). `fitb demo` starts its
 *   replicas so (`fitb replica --with-parent`).
 * - the parent process id changes: the orphan is re-parented to init or a subreaper
 *   (`untilParentChanges`). `fitb demo` watches its own parent so, because `npm start`
 *   runs it under `sh -c`, and npm stopped by a signal does not stop that shell's child.
 *
 * And SIGHUP stops a service command as SIGTERM does (`stopOnHangup`).
 */

import { readFileSync } from "node:fs";

/** How often the parent process id is looked at: the orphan is stopped within this. */
export const PARENT_POLL_MS = 500;

/** Resolves once standard input reaches end of file (or fails). Reads and drops whatever comes. */
export async function untilStdinEnds(): Promise<void> {
  try {
    for await (const _chunk of Bun.stdin.stream()) {
      // The parent sends nothing; the pipe only tells that it is alive.
    }
  } catch {
    // A read error means the same as end of file here: the parent's end is gone.
  }
}

/**
 * Calls `onGone` once, when this process's parent id is no longer the one it had at the
 * start. Returns a function that stops watching.
 */
export function untilParentChanges(onGone: () => void, pollMs = PARENT_POLL_MS): () => void {
  const parent = process.ppid;
  const timer = setInterval(() => {
    if (process.ppid === parent) return;
    clearInterval(timer);
    onGone();
  }, pollMs);
  // Watching alone does not keep the process alive.
  timer.unref();
  return () => clearInterval(timer);
}

/**
 * Makes SIGHUP stop this process as SIGTERM does, through whatever SIGTERM handler the
 * command installed: the replica logs "replica stopped", the demo stops its replicas and
 * removes relay.sock. Left alone, SIGHUP (the terminal or ssh session closed, or `kill
 * -HUP` from an operator used to daemons) ends the process at once, with none of that.
 * SIGTERM is raised rather than the handlers called, so that a process that has none yet
 * (still starting) ends just as SIGTERM would end it.
 *
 * Not when the process was started with SIGHUP ignored (`nohup fitb replica &`, so that
 * the replica outlives the session): a listener would undo that.
 */
export function stopOnHangup(ignoredAtStart: boolean = hangupIgnored()): void {
  if (ignoredAtStart) return;
  process.on("SIGHUP", () => {
    process.kill(process.pid, "SIGTERM");
  });
}

/**
 * Whether this process started with SIGHUP ignored (what nohup does), from the kernel's
 * view of its signal dispositions; false where there is no /proc (the listener is then
 * installed, as on a terminal).
 */
export function hangupIgnored(status: () => string = () => readFileSync("/proc/self/status", "utf8")): boolean {
  let text: string;
  try {
    text = status();
  } catch {
    return false;
  }
  const mask = /^SigIgn:\s*([0-9a-fA-F]+)$/m.exec(text)?.[1];
  // SIGHUP is signal 1: the mask's lowest bit.
  return mask !== undefined && (Number.parseInt(mask.slice(-1), 16) & 1) === 1;
}
