/**
 * The write-ahead log checkpoint thread (checkpointer.ts `Checkpointer`): a connection of
 * its own to the replica's database that copies the log's committed pages into the
 * database file every CHECKPOINT_INTERVAL_MS, off the event loop. A passive checkpoint
 * never blocks the event loop's writes; it syncs the log before copying and the database
 * file after, as SQLite's own checkpoints do. It answers each pass with the log's frames
 * and how many of them are in the database file now.
 *
 * A pass that finds the database locked counts as busy and the next one goes on; any other
 * error stops the thread (it reaches the host, which stops the replica).
 */
import { Database } from "bun:sqlite";
import { writeFileSync } from "node:fs";
import { CHECKPOINT_THREAD_NAME, type CheckpointAnswer, type CheckpointOp } from "./checkpointer.ts";

declare const self: Worker;

try {
  writeFileSync("/proc/thread-self/comm", CHECKPOINT_THREAD_NAME);
} catch {
  // Not Linux, or /proc is not mounted: only the name is lost.
}

let db: Database | null = null;
let timer: ReturnType<typeof setTimeout> | null = null;

function answer(message: CheckpointAnswer): void {
  self.postMessage(message);
}

function pass(intervalMs: number): void {
  timer = null;
  if (db === null) return;
  const started = performance.now();
  try {
    // SQLite answers busy (1) when another checkpoint runs (the event loop's own, at its
    // auto-checkpoint size): that pass is then skipped, and the next one goes on.
    const row = db.query("PRAGMA wal_checkpoint(PASSIVE)").get() as { busy: number; log: number; checkpointed: number };
    answer({ t: "pass", busy: row.busy === 1, frames: row.log, backfilled: row.checkpointed, ms: performance.now() - started });
  } catch (error) {
    // A lock the event loop held past BUSY_MS (the log restarting under it): the same as a
    // busy pass. Anything else is a failure.
    if (!isBusy(error)) throw error;
    answer({ t: "pass", busy: true, frames: 0, backfilled: 0, ms: performance.now() - started });
  }
  timer = setTimeout(() => pass(intervalMs), intervalMs);
}

/** How long the thread waits for a lock before a pass counts as busy: the thread's own time, never the event loop's. */
const BUSY_MS = 1_000;

function isBusy(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return code === "SQLITE_BUSY" || code === "SQLITE_LOCKED";
}

self.onmessage = (event: MessageEvent<CheckpointOp>) => {
  const op = event.data;
  if (op.t === "open") {
    db = new Database(op.path, { readwrite: true, create: false, strict: true });
    // A passive checkpoint never waits for the event loop's writer (SQLite calls no busy
    // handler for it); this bounds the wait for a read lock, which only the log's restart
    // holds, for a moment.
    db.exec(`PRAGMA busy_timeout = ${BUSY_MS}`);
    answer({ t: "ready" });
    timer = setTimeout(() => pass(op.intervalMs), op.intervalMs);
    return;
  }
  if (timer !== null) clearTimeout(timer);
  timer = null;
  db?.close();
  db = null;
  answer({ t: "stopped" });
};
