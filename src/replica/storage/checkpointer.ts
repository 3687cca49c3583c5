/**
 * Write-ahead log checkpoints off the event loop.
 *
 * SQLite in WAL mode appends every transaction to the `-wal` file and copies those pages
 * into the database file at a checkpoint. Left to itself, the connection that commits
 * runs the checkpoint inside the commit that takes the log past 1,000 pages: on the event
 * loop, copying up to 16 MiB (16 KiB pages, store.ts) and fsyncing the database file. Under
 * a flood of large batches that was a stall of 36-118 ms every few hundred milliseconds,
 * and every request in flight, a critical alert included, waited for it.
 *
 * Here a thread of its own (checkpoint-worker.ts) holds a second connection to the same
 * database and runs a PASSIVE checkpoint once CHECKPOINT_FRAMES frames wait to be copied:
 * it copies the pages committed so far without ever blocking the writer, fsyncing the log
 * before and the database file after (SQLite's `synchronous = NORMAL` on that connection),
 * so the database never holds a page whose log frame is not durable. The event loop's connection keeps SQLite's own
 * automatic checkpoint: when it comes, the thread has copied nearly everything, so it copies
 * the last few pages and lets the next commit start the log again from its beginning (the
 * log restarts only after a checkpoint that copied every frame, with no commit between).
 *
 * A second connection needs the database file's ordinary locking, so the store takes the
 * directory's one-process lock on a file of its own (disk.ts `lockDirectory`) instead of
 * SQLite's exclusive locking mode. A checkpoint that fails (an I/O error) stops the
 * replica: `onFailure`, as a failed commit does. A thread that throws or exits does the same.
 */
import { endianness } from "node:os";
import { workerEntry } from "../../threads/entry.ts";

/** How often the thread looks at how much of the log waits to be copied (one read of 100 bytes). */
export const CHECKPOINT_POLL_MS = 20;
/**
 * Log frames (16 KiB pages, store.ts) waiting that make the thread checkpoint: 2 MiB. Each
 * checkpoint costs two fsyncs besides the copy, so an idle store is not checkpointed at
 * all and a busy one about ten times a second, while SQLite's own checkpoint on the loop,
 * at 1,000 frames, finds at most this much (and one poll's worth) left to copy.
 */
export const CHECKPOINT_FRAMES = 128;
/** How long a clean stop waits for the thread to close its connection. */
export const CHECKPOINTER_STOP_WAIT_MS = 5_000;
/** The thread's name in `top -H`, `ps -L` and /proc (at most 15 bytes). */
export const CHECKPOINT_THREAD_NAME = "fitb-checkpoint";

/** The wal-index header's version for SQLite's WAL format since 3.7.0 (walformat.html). */
export const WAL_INDEX_VERSION = 3007000;
const WAL_INDEX_MX_FRAME_AT = 16;
const WAL_INDEX_N_BACKFILL_AT = 96;
/** The bytes read from the start of `-shm`: the header, its copy, and `nBackfill`. */
export const WAL_INDEX_HEADER_BYTES = 100;
const LITTLE_ENDIAN = endianness() === "LE";

/**
 * Frames in the log not yet copied into the database file (`mxFrame - nBackfill`), from
 * the first WAL_INDEX_HEADER_BYTES of the `-shm` file, written by SQLite in the host's
 * byte order; null for a header of another version or too short.
 */
export function walFramesWaiting(header: Uint8Array): number | null {
  if (header.byteLength < WAL_INDEX_HEADER_BYTES) return null;
  const view = new DataView(header.buffer, header.byteOffset, header.byteLength);
  if (view.getUint32(0, LITTLE_ENDIAN) !== WAL_INDEX_VERSION) return null;
  const mxFrame = view.getUint32(WAL_INDEX_MX_FRAME_AT, LITTLE_ENDIAN);
  const nBackfill = view.getUint32(WAL_INDEX_N_BACKFILL_AT, LITTLE_ENDIAN);
  return Math.max(0, mxFrame - nBackfill);
}

/** Event loop -> thread. */
export type CheckpointerCommand =
  | { readonly t: "start"; readonly path: string; readonly pollMs: number; readonly frames: number; readonly closed: SharedArrayBuffer }
  | { readonly t: "stop" };

/** Thread -> event loop. */
export type CheckpointerReport =
  /** A checkpoint that copied `frames` log frames into the database file in `ms`. */
  { readonly t: "checkpointed"; readonly frames: number; readonly ms: number } | { readonly t: "failed"; readonly reason: string };

export interface CheckpointerOptions {
  /** The database file (its `-wal` beside it). */
  readonly path: string;
  readonly pollMs?: number;
  /** Frames waiting that start a checkpoint (at least 1). */
  readonly frames?: number;
  readonly onCheckpoint?: (frames: number, ms: number) => void;
  /** The thread failed, or a checkpoint did: the replica must stop. */
  readonly onFailure: (reason: string) => void;
}

export class WalCheckpointer {
  private readonly worker: Worker;
  /** Set to 1 by the thread once its connection is closed (read with Atomics.wait). */
  private readonly closed = new Int32Array(new SharedArrayBuffer(4));
  private stopped = false;

  constructor(private readonly options: CheckpointerOptions) {
    this.worker = new Worker(workerEntry("replica/storage/checkpoint-worker.ts"));
    // A store someone forgot to close must not keep its process alive.
    this.worker.unref();
    this.worker.onmessage = (event: MessageEvent<CheckpointerReport>) => this.onReport(event.data);
    this.worker.onerror = (event) => this.fail(`checkpoint thread failed: ${event.message}`);
    this.worker.addEventListener("close", () => this.fail("checkpoint thread exited"));
    const start: CheckpointerCommand = {
      t: "start",
      path: options.path,
      pollMs: options.pollMs ?? CHECKPOINT_POLL_MS,
      frames: Math.max(1, options.frames ?? CHECKPOINT_FRAMES),
      closed: this.closed.buffer as SharedArrayBuffer,
    };
    this.worker.postMessage(start);
  }

  /**
   * Stops the thread: it finishes a checkpoint it is in, closes its connection, and ends.
   * Blocks the caller until then, at most CHECKPOINTER_STOP_WAIT_MS. Returns whether the
   * connection was closed in time (if not, the caller's own final checkpoint may be refused
   * as busy; the log is then folded in at the next open).
   */
  stop(): boolean {
    if (this.stopped) return Atomics.load(this.closed, 0) === 1;
    this.stopped = true;
    const stop: CheckpointerCommand = { t: "stop" };
    this.worker.postMessage(stop);
    const closedInTime = Atomics.wait(this.closed, 0, 0, CHECKPOINTER_STOP_WAIT_MS) !== "timed-out";
    void this.worker.terminate();
    return closedInTime;
  }

  private onReport(report: CheckpointerReport): void {
    if (this.stopped) return;
    if (report.t === "checkpointed") this.options.onCheckpoint?.(report.frames, report.ms);
    else this.fail(report.reason);
  }

  private fail(reason: string): void {
    if (this.stopped) return;
    this.stopped = true;
    void this.worker.terminate();
    this.options.onFailure(reason);
  }
}
