/**
 * The checkpoint thread (checkpointer.ts): a connection of its own to the replica's
 * database, and a PASSIVE write-ahead log checkpoint whenever the log holds at least
 * `frames` frames not yet copied. It never writes a row and never blocks the event loop's
 * connection; SQLite's `synchronous = NORMAL` makes each checkpoint fsync the log before
 * copying and the database file after.
 *
 * How many frames wait is read every `pollMs` from the wal-index header at the start of
 * the `-shm` file (SQLite's documented WAL-index format, walformat.html: `mxFrame` at
 * byte 16, `nBackfill` at byte 96, in the host's byte order, for index version 3007000):
 * one read of 100 bytes, no lock, no fsync. A torn read only moves a checkpoint by one
 * poll. If the header cannot be read or has another version, the thread checkpoints
 * every poll instead.
 *
 * A checkpoint another connection is running at the same time (the event loop's automatic
 * one) is skipped, not an error. Any other error ends the thread's work: it reports
 * `failed`, and the replica stops.
 */
import { Database, type Statement } from "bun:sqlite";
import { closeSync, openSync, readSync, writeFileSync } from "node:fs";
import {
  CHECKPOINT_THREAD_NAME,
  type CheckpointerCommand,
  type CheckpointerReport,
  WAL_INDEX_HEADER_BYTES,
  walFramesWaiting,
} from "./checkpointer.ts";

declare const self: Worker;

try {
  writeFileSync("/proc/thread-self/comm", CHECKPOINT_THREAD_NAME);
} catch {
  // Not Linux, or /proc is not mounted: only the name is lost.
}

let db: Database | null = null;
let timer: ReturnType<typeof setInterval> | null = null;
let closed: Int32Array | null = null;
/** The `-shm` file, read for the wal-index header; null when it could not be opened. */
let shm: number | null = null;
const header = new Uint8Array(WAL_INDEX_HEADER_BYTES);
/** Frames in the log and frames copied, as of the last checkpoint (to count what one copied). */
let lastLog = 0;
let lastCopied = 0;

self.onmessage = (event: MessageEvent<CheckpointerCommand>) => {
  const command = event.data;
  if (command.t === "start") start(command.path, command.pollMs, command.frames, command.closed);
  else stop();
};

function start(path: string, pollMs: number, frames: number, closedFlag: SharedArrayBuffer): void {
  closed = new Int32Array(closedFlag);
  try {
    db = new Database(path, { readwrite: true, create: false, strict: true });
    // A lock held by the other connection is a skipped checkpoint, never a wait.
    db.exec("PRAGMA busy_timeout = 0");
    db.exec("PRAGMA synchronous = NORMAL");
    const checkpoint = db.prepare("PRAGMA wal_checkpoint(PASSIVE)");
    shm = openShm(`${path}-shm`);
    timer = setInterval(() => {
      const waiting = framesWaiting();
      if (waiting === null || waiting >= frames) run(checkpoint);
    }, pollMs);
  } catch (error) {
    fail(error);
  }
}

function openShm(path: string): number | null {
  try {
    return openSync(path, "r");
  } catch {
    return null;
  }
}

/** Frames in the log not yet copied into the database file, or null if the header is not readable. */
function framesWaiting(): number | null {
  if (shm === null) return null;
  try {
    if (readSync(shm, header, 0, WAL_INDEX_HEADER_BYTES, 0) < WAL_INDEX_HEADER_BYTES) return null;
  } catch {
    return null;
  }
  return walFramesWaiting(header);
}

function run(checkpoint: Statement): void {
  const started = performance.now();
  let row: { busy: number; log: number; checkpointed: number } | null;
  try {
    row = checkpoint.get() as typeof row;
  } catch (error) {
    if (isBusy(error)) return;
    fail(error);
    return;
  }
  if (row === null || row.log < 0) return;
  // The log restarted since the last checkpoint: every frame copied now is new.
  const copied = row.log < lastLog || row.checkpointed < lastCopied ? row.checkpointed : row.checkpointed - lastCopied;
  lastLog = row.log;
  lastCopied = row.checkpointed;
  if (copied > 0) report({ t: "checkpointed", frames: copied, ms: performance.now() - started });
}

function stop(): void {
  if (timer !== null) clearInterval(timer);
  timer = null;
  if (shm !== null) closeSync(shm);
  shm = null;
  try {
    db?.close();
  } finally {
    db = null;
    if (closed !== null) {
      Atomics.store(closed, 0, 1);
      Atomics.notify(closed, 0);
    }
  }
}

function fail(error: unknown): void {
  if (timer !== null) clearInterval(timer);
  timer = null;
  report({ t: "failed", reason: `write-ahead log checkpoint failed: ${(error as Error)?.message ?? String(error)}` });
}

function isBusy(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return code === "SQLITE_BUSY" || code === "SQLITE_LOCKED";
}

function report(message: CheckpointerReport): void {
  self.postMessage(message);
}
