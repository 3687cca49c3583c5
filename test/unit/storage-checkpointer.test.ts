/**
 * Write-ahead log checkpoints on a thread of their own (src/replica/storage/checkpointer.ts):
 * the thread copies what the event loop commits into the database file, a clean stop
 * folds in the rest and leaves no log behind, nothing written is lost, a thread that
 * fails stops the replica, and the data directory's lock now held by its own file still
 * refuses a second store.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { closeSync, existsSync, openSync, readSync } from "node:fs";
import { join } from "node:path";
import { FatalError } from "../../src/replica/fatal.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import { WAL_INDEX_HEADER_BYTES, WalCheckpointer, walFramesWaiting } from "../../src/replica/storage/checkpointer.ts";
import { LOCK_FILE, realDisk } from "../../src/replica/storage/disk.ts";
import { EXIT_STORAGE_FAILED, ReplicaStorage } from "../../src/replica/storage/index.ts";
import { ReplicaStore, STORE_FILE, StoreInUseError } from "../../src/replica/storage/store.ts";
import { tempDir, testLog } from "./storage-fixtures.ts";

const identity = { cluster: "unit", replica: 0 };
/** Bounds the waits below; each ends as soon as its condition holds. */
const WAIT_MS = 20_000;
const cleanups: (() => void)[] = [];

afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup();
});

function freshDir(): string {
  const { dir, remove } = tempDir("fitb-checkpointer-");
  cleanups.push(remove);
  return dir;
}

function part(index: number): Uint8Array {
  const data = new Uint8Array(64 * 1024);
  data.fill(index % 251);
  data[0] = index & 0xff;
  data[1] = index >> 8;
  return data;
}

/** Resolves once `ready()` holds, checking between event-loop turns; fails after WAIT_MS. */
async function until(ready: () => boolean, what: string): Promise<void> {
  const deadline = performance.now() + WAIT_MS;
  while (!ready()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(2);
  }
}

describe("the checkpoint thread", () => {
  test("copies committed pages into the database file while the event loop writes; a clean stop folds in the rest and nothing is lost", async () => {
    const dir = freshDir();
    const store = ReplicaStore.open(dir, "full", identity);
    const copied: number[] = [];
    const failures: string[] = [];
    expect(
      store.startCheckpointer({
        pollMs: 5,
        frames: 1,
        onCheckpoint: (frames) => copied.push(frames),
        onFailure: (reason) => failures.push(reason),
      }),
    ).toBe(true);
    // Write until the thread has copied something, then as much again: the event loop
    // keeps committing while the thread checkpoints.
    let written = 0;
    while (copied.length === 0) {
      if (written >= 2_000) throw new Error("the checkpoint thread copied nothing in 2,000 commits");
      store.transaction(() => store.insertPart(1, written, part(written)));
      written++;
      await Bun.sleep(1);
    }
    const seen = written;
    for (let i = 0; i < seen; i++, written++) store.transaction(() => store.insertPart(1, written, part(written)));
    store.close();
    expect(failures).toEqual([]);
    expect(copied.every((frames) => frames > 0)).toBe(true);
    // The last connection to close folded the log in and removed it.
    expect(existsSync(join(dir, `${STORE_FILE}-wal`))).toBe(false);

    const reopened = ReplicaStore.open(dir, "full", identity);
    try {
      for (let i = 0; i < written; i++) {
        const row = reopened.part(1, i);
        expect(row?.ok).toBe(true);
        if (row?.ok) expect(row.row.data).toEqual(part(i));
      }
    } finally {
      reopened.close();
    }
  });

  test("runs under the replica's storage when asked, counted in its metrics", async () => {
    const dir = freshDir();
    const metrics = new Metrics();
    const storage = ReplicaStorage.open({
      dir,
      sync: "full",
      cluster: "unit",
      replica: 0,
      log: testLog(),
      metrics,
      checkpointThread: true,
    });
    let index = 0;
    await until(() => {
      storage.stagePart(3, index, part(index));
      index++;
      storage.commits.flush(true);
      return metrics.get("storage_checkpoints_total") > 0;
    }, "a checkpoint");
    expect(metrics.get("storage_checkpoint_frames_total")).toBeGreaterThan(0);
    storage.close();
    expect(existsSync(join(dir, `${STORE_FILE}-wal`))).toBe(false);
  });

  test("is not started without the directory's lock (a store opened for a test that shares its file)", () => {
    const dir = freshDir();
    const store = ReplicaStore.open(dir, "full", identity, false);
    try {
      expect(store.startCheckpointer({ onFailure: () => {} })).toBe(false);
    } finally {
      store.close();
    }
  });

  test("a thread that fails stops the replica through its fatal handler, with the storage exit status", async () => {
    const dir = freshDir();
    const stops: FatalError[] = [];
    const log = testLog();
    // A real thread, handed a database that is not there: its first step fails.
    const disk = {
      ...realDisk,
      walCheckpointer: (options: ConstructorParameters<typeof WalCheckpointer>[0]) =>
        new WalCheckpointer({ ...options, path: join(dir, "missing.db") }),
    };
    const storage = ReplicaStorage.open({
      dir,
      sync: "full",
      cluster: "unit",
      replica: 0,
      log,
      metrics: new Metrics(),
      disk,
      checkpointThread: true,
      onFatal: (error) => {
        stops.push(error);
        return undefined as never;
      },
    });
    try {
      await until(() => stops.length > 0, "the fatal handler");
      expect(stops[0]).toBeInstanceOf(FatalError);
      expect(stops[0]?.exitCode).toBe(EXIT_STORAGE_FAILED);
      expect(stops[0]?.message).toContain("write-ahead log checkpoint failed");
      expect(log.lines.some((line) => line.level === "error" && line.msg.startsWith("write-ahead log checkpoint thread failed"))).toBe(
        true,
      );
    } finally {
      storage.close();
    }
  });
});

describe("the wal-index header the thread reads", () => {
  test("tells the frames waiting in the log as SQLite keeps them: some after commits, none after a checkpoint", () => {
    const dir = freshDir();
    // Without the lock, so that this test may open a second connection and checkpoint.
    const store = ReplicaStore.open(dir, "full", identity, false);
    try {
      const shm = join(dir, `${STORE_FILE}-shm`);
      const waiting = (): number | null => {
        const fd = openSync(shm, "r");
        try {
          const header = new Uint8Array(WAL_INDEX_HEADER_BYTES);
          readSync(fd, header, 0, WAL_INDEX_HEADER_BYTES, 0);
          return walFramesWaiting(header);
        } finally {
          closeSync(fd);
        }
      };
      const before = waiting() ?? -1;
      for (let i = 0; i < 8; i++) store.transaction(() => store.insertPart(2, i, part(i)));
      // Each part is four 16 KiB pages at least: 32 frames or more were added.
      expect((waiting() ?? -1) - before).toBeGreaterThanOrEqual(32);
      const other = new Database(join(dir, STORE_FILE));
      try {
        const row = other.query("PRAGMA wal_checkpoint(PASSIVE)").get() as { busy: number; log: number; checkpointed: number };
        expect(row.busy).toBe(0);
        expect(row.checkpointed).toBe(row.log);
      } finally {
        other.close();
      }
      expect(waiting()).toBe(0);
      expect(walFramesWaiting(new Uint8Array(WAL_INDEX_HEADER_BYTES))).toBeNull();
      expect(walFramesWaiting(new Uint8Array(10))).toBeNull();
    } finally {
      store.close();
    }
  });
});

describe("the data directory's lock file", () => {
  test("a second store in the same directory is refused while the first is open, and opens once it is closed", () => {
    const dir = freshDir();
    const first = ReplicaStore.open(dir, "full", identity);
    expect(existsSync(join(dir, LOCK_FILE))).toBe(true);
    expect(() => ReplicaStore.open(dir, "full", identity)).toThrow(StoreInUseError);
    first.close();
    const second = ReplicaStore.open(dir, "full", identity);
    second.close();
  });
});
