// The write-ahead log checkpoint thread (src/replica/storage/checkpointer.ts): it copies what
// the event loop commits into the database file, so the event loop's own auto-checkpoint
// finds nearly nothing left to copy; a thread that fails stops the replica.
import { afterEach, expect, test } from "bun:test";
import { statSync } from "node:fs";
import { join } from "node:path";
import { Checkpointer } from "../../src/replica/storage/checkpointer.ts";
import { ReplicaStorage } from "../../src/replica/storage/index.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import type { FatalError } from "../../src/replica/fatal.ts";
import { realDisk } from "../../src/replica/storage/disk.ts";
import { ReplicaStore, STORE_FILE } from "../../src/replica/storage/store.ts";
import { waitFor } from "../helpers/wait.ts";
import { decidedRecord, TestClient, tempDir, testLog } from "./storage-fixtures.ts";

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
});

function open(checkpointThread: boolean, onFatal?: (error: FatalError) => never) {
  const t = tempDir("fitb-checkpointer-");
  cleanups.push(t.remove);
  const metrics = new Metrics();
  const storage = ReplicaStorage.open({
    dir: t.dir,
    sync: "full",
    cluster: "unit",
    replica: 0,
    log: testLog(),
    metrics,
    checkpointThread,
    ...(onFatal === undefined ? {} : { onFatal }),
  });
  cleanups.push(() => storage.close());
  return { dir: t.dir, storage, metrics };
}

/** Decisions of `payloadBytes` each, committed one turn at a time. */
function writeDecisions(storage: ReplicaStorage, count: number, payloadBytes: number): void {
  const client = new TestClient();
  for (let seq = 1; seq <= count; seq++) {
    storage.persist(decidedRecord(client, seq, `${seq} ${"x".repeat(payloadBytes)}`));
    storage.commits.flush();
  }
}

test("the thread copies the committed log into the database file, and the file grows with it while the log is still open", async () => {
  const { dir, storage, metrics } = open(true);
  // About 4 MiB: a quarter of the event loop's auto-checkpoint size, so only the thread copies it.
  writeDecisions(storage, 64, 64 * 1024);
  const before = statSync(join(dir, STORE_FILE)).size;
  await waitFor(
    "a checkpoint pass that left no page behind",
    () => metrics.get("storage_checkpoints_total") > 0 && metrics.get("storage_wal_frames_pending") === 0,
    20_000,
  );
  // The pages reached the database file while the store stayed open: the thread's work, not a close.
  expect(statSync(join(dir, STORE_FILE)).size).toBeGreaterThan(before + 2 * 1024 * 1024);
  expect(storage.store.meta("identity")).not.toBeNull();
});

test("without the thread nothing copies a log under the auto-checkpoint size while the store is open", () => {
  const { dir, storage, metrics } = open(false);
  const before = statSync(join(dir, STORE_FILE)).size;
  writeDecisions(storage, 64, 64 * 1024);
  expect(statSync(join(dir, STORE_FILE)).size).toBe(before);
  expect(metrics.get("storage_checkpoints_total")).toBe(0);
});

test("a checkpoint thread that fails reports it (the replica stops); one asked to stop ends without a report", async () => {
  const reasons: string[] = [];
  // A database that is not there: the thread's open throws.
  const broken = new Checkpointer(join(tempDir("fitb-checkpointer-").dir, "missing", STORE_FILE), {
    onFailure: (reason) => reasons.push(reason),
  });
  await waitFor("the thread's failure", () => reasons.length > 0, 20_000);
  expect(reasons[0]).toContain("checkpoint thread failed: SQLiteError: unable to open database file");
  broken.stop();

  const t = tempDir("fitb-checkpointer-");
  cleanups.push(t.remove);
  const store = ReplicaStore.open(t.dir, "full", { cluster: "unit", replica: 0 }, true, realDisk, true);
  cleanups.push(() => store.close());
  const stopReasons: string[] = [];
  let passes = 0;
  const checkpointer = new Checkpointer(store.path, { onFailure: (reason) => stopReasons.push(reason), onPass: () => passes++ });
  await waitFor("a first pass", () => passes > 0, 20_000);
  checkpointer.stop();
  await waitFor("the thread's end", () => checkpointer.ended, 20_000);
  expect(stopReasons).toEqual([]);
});
