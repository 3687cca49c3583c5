/**
 * Write-ahead log checkpoints off the event loop. SQLite copies the log's pages into the
 * database file (a checkpoint) inside the commit that takes the log past its
 * auto-checkpoint size, 1,000 pages (16 MiB here): that commit syncs the log, copies up to
 * 16 MiB and syncs the database file before it returns. Under a bulk flood every replica
 * did that every few hundred milliseconds, and each time its event loop stood still for
 * 30-100 ms: every request in flight, a critical alert's too, waited.
 *
 * So a thread of its own (checkpoint-worker.ts) runs a passive checkpoint every
 * CHECKPOINT_INTERVAL_MS on a connection of its own, which copies what the event loop
 * committed since without ever blocking its writes. The event loop's auto-checkpoint stays
 * on and still restarts the log from its start once it has been copied whole (only the
 * committing connection can, between two of its own writes), but by then it finds nearly
 * every page copied and synced already: it copies the last milliseconds' pages.
 *
 * Two connections to one database need SQLite's shared-memory log index, so a store with
 * a checkpointer does not take the database's exclusive lock; the data directory is locked
 * with a file of its own instead (store.ts, LOCK_FILE).
 *
 * A thread that fails or exits stops the replica (`onFailure`), as every other thread's
 * failure does.
 */
import { workerEntry } from "../../threads/entry.ts";

/** How often the thread copies the log into the database file: about 1.5 MiB a pass at 30 MiB/s of commits. */
export const CHECKPOINT_INTERVAL_MS = 50;
/** The thread's name in `top -H`, `ps -L` and /proc (at most 15 bytes). */
export const CHECKPOINT_THREAD_NAME = "fitb-checkpoint";

export type CheckpointOp = { readonly t: "open"; readonly path: string; readonly intervalMs: number } | { readonly t: "stop" };

export type CheckpointAnswer =
  | { readonly t: "ready" }
  /** One pass: `frames` in the log, `backfilled` of them in the database file; `busy` when another checkpoint ran. */
  | { readonly t: "pass"; readonly busy: boolean; readonly frames: number; readonly backfilled: number; readonly ms: number }
  | { readonly t: "stopped" };

export interface CheckpointerEvents {
  /** The thread failed (threw or exited while not asked to stop): the replica must stop. */
  readonly onFailure: (reason: string) => void;
  /** After each pass, for metrics. */
  readonly onPass?: (pass: Extract<CheckpointAnswer, { t: "pass" }>) => void;
}

/** The host side of the checkpoint thread. */
export class Checkpointer {
  private readonly worker: Worker;
  private stopping = false;
  private failed = false;
  /** The thread has ended (after `stop`, or a failure). */
  ended = false;

  constructor(
    path: string,
    private readonly events: CheckpointerEvents,
    intervalMs = CHECKPOINT_INTERVAL_MS,
  ) {
    this.worker = new Worker(workerEntry("replica/storage/checkpoint-worker.ts"));
    this.worker.onmessage = (event: MessageEvent<CheckpointAnswer>) => {
      const answer = event.data;
      if (answer.t === "pass") this.events.onPass?.(answer);
      else if (answer.t === "stopped") this.worker.terminate();
    };
    this.worker.onerror = (event) => this.fail(`the write-ahead log checkpoint thread failed: ${errorLine(event.message)}`);
    this.worker.addEventListener("close", () => {
      this.ended = true;
      this.fail("the write-ahead log checkpoint thread exited");
    });
    const open: CheckpointOp = { t: "open", path, intervalMs };
    this.worker.postMessage(open);
  }

  /** Closes the thread's connection and ends it; it may still be in a pass, which SQLite lets the event loop wait for. */
  stop(): void {
    if (this.stopping) return;
    this.stopping = true;
    const stop: CheckpointOp = { t: "stop" };
    this.worker.postMessage(stop);
  }

  private fail(reason: string): void {
    if (this.stopping || this.failed) return;
    this.failed = true;
    this.events.onFailure(reason);
  }
}

/** The "SomeError: what" line of a thread's error report, which the runtime prefixes with the source lines around the throw. */
export function errorLine(report: string): string {
  const lines = report.split("\n").map((line) => line.trim());
  return lines.find((line) => /^[A-Za-z]*Error: /.test(line)) ?? lines.find((line) => line !== "") ?? report;
}
