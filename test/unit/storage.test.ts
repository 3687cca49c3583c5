// The replica store (src/replica/storage/store.ts, index.ts): rows round-trip with their
// checksums; damage in a row or in the file is detected at open, reported and never
// served; the core's records are pruned at stable checkpoints; a data directory of
// another replica is refused.
import { afterEach, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  statfsSync,
  statSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { basename, join } from "node:path";
import type { PersistedRecord } from "../../src/core/ordering/types.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import { FatalError } from "../../src/replica/fatal.ts";
import {
  EXIT_STORAGE_FAILED,
  QUARANTINE_DIR,
  ReplicaStorage,
  readEpochStart,
  readJoined,
  StoreIdentityError,
} from "../../src/replica/storage/index.ts";
import { type BatchLookup, decodeBatch, decodeRecord } from "../../src/replica/storage/records.ts";
import { realDisk } from "../../src/replica/storage/disk.ts";
import { STORE_FILE, STORE_PAGE_BYTES } from "../../src/replica/storage/store.ts";
import { decidedRecord, openStorage, tempDir, testLog, TestClient } from "./storage-fixtures.ts";

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
});

function freshDir(): string {
  const t = tempDir();
  cleanups.push(t.remove);
  return t.dir;
}

/** A store in `dir` whose fatal handler records each stop, then throws it (as a replica's would not return). */
function openRecordingStops(dir: string, log: ReturnType<typeof testLog>, metrics = new Metrics(), exclusive = true) {
  const stops: FatalError[] = [];
  const storage = ReplicaStorage.open({
    dir,
    sync: "full",
    cluster: "unit",
    replica: 0,
    log,
    metrics,
    exclusive,
    onFatal: (error) => {
      stops.push(error);
      throw error;
    },
  });
  return { storage, stops };
}

const client = new TestClient();
const DIGEST = new Uint8Array(32).fill(9);

function decided(seq: number, payload = `event ${seq}`): PersistedRecord {
  return decidedRecord(client, seq, payload);
}

/** The batches of `storage`, for reading back the records that name them. */
function batchesOf(storage: ReplicaStorage): BatchLookup {
  return (digest) => {
    const checked = storage.store.batch(digest);
    if (checked === null || !checked.ok) return "batch missing";
    return decodeBatch(digest, checked.row.data) ?? "batch does not match";
  };
}

/** Persists records and commits them. */
function write(storage: ReplicaStorage, records: PersistedRecord[]): void {
  for (const record of records) storage.persist(record);
  storage.commits.flush();
}

function coreKinds(storage: ReplicaStorage): string[] {
  const kinds: string[] = [];
  for (const row of storage.store.coreRows()) if (row.ok) kinds.push(`${row.row.kind}:${row.row.seq}`);
  return kinds;
}

/**
 * A store of 3,000 decided records written in 60 commits, enough for its log to have been
 * folded into the file a few times (a base of pages there, recent ones in the log), as a
 * replica's store is, and a copy of it as kill -9 leaves it: the file and its log, copied
 * while it was open. The store itself is closed.
 */
function killedStoreCopy(): { dir: string; copy: string } {
  const dir = freshDir();
  const storage = openStorage(dir);
  for (let i = 0; i < 60; i++)
    write(
      storage,
      Array.from({ length: 50 }, (_, k) => decided(i * 50 + k + 1, `payload ${"x".repeat(300)} ${i}`)),
    );
  const copy = freshDir();
  copyFileSync(join(dir, STORE_FILE), join(copy, STORE_FILE));
  copyFileSync(join(dir, `${STORE_FILE}-wal`), join(copy, `${STORE_FILE}-wal`));
  storage.close();
  return { dir, copy };
}

function decidedSeqs(storage: ReplicaStorage): number[] {
  return [...storage.store.decidedSeqs(0)];
}

describe("ReplicaStore rows", () => {
  test("decided records round-trip as one row each, with the record intact", () => {
    const dir = freshDir();
    const storage = openStorage(dir);
    const records = [decided(1), decided(2), decided(3)];
    write(storage, records);
    storage.close();
    const reopened = openStorage(dir);
    const rows = [...reopened.store.decidedRows(1)];
    expect(rows.map((r) => r.ok)).toEqual([true, true, true]);
    const first = rows[0];
    if (first === undefined || !first.ok) throw new Error("row 1 missing");
    const record = decodeRecord(first.row.rec, batchesOf(reopened));
    expect(record?.t).toBe("decided");
    expect(record).toEqual(records[0] as PersistedRecord);
    reopened.close();
  });

  test("the proofs of the last epoch switches are kept across a restart, and a row that does not read as proofs gives none", () => {
    const dir = freshDir();
    const storage = openStorage(dir);
    expect(storage.switchProofs()).toEqual([]);
    const vote = (replica: number) => ({
      t: "CHECKPOINT" as const,
      seq: 256,
      digest: new Uint8Array(32).fill(4),
      replica,
      sig: new Uint8Array(64).fill(replica),
    });
    const proofs = [{ epoch: 2, seq: 256, digest: new Uint8Array(32).fill(4), proof: [vote(0), vote(1), vote(2)] }];
    storage.stageSwitchProofs(proofs);
    storage.commits.flush(true);
    storage.close();
    const reopened = openStorage(dir);
    expect(reopened.switchProofs()).toEqual(proofs);
    reopened.store.putMeta("switch_proofs", [{ epoch: 2, seq: 256, digest: new Uint8Array(32), proof: "not a proof" }]);
    expect(reopened.switchProofs()).toEqual([]);
    reopened.close();
  });

  test("a stable checkpoint prunes the core records a restart no longer needs", () => {
    const dir = freshDir();
    const storage = openStorage(dir);
    const pp = (seq: number): PersistedRecord => ({
      t: "accept",
      prePrepare: { t: "PRE_PREPARE", view: 0, seq, digest: DIGEST, ts: 0, batch: [], sig: new Uint8Array(64) },
    });
    const view = (v: number): PersistedRecord => ({
      t: "view",
      view: v,
      installedView: v,
      status: "normal",
      viewChange: null,
      newView: null,
    });
    const checkpoint = (seq: number): PersistedRecord => ({ t: "checkpoint", seq, stateDigest: DIGEST, appDigest: DIGEST, clients: [] });
    write(storage, [view(0), pp(1), pp(2), pp(3), checkpoint(2), view(1), pp(4)]);
    write(storage, [{ t: "stable", seq: 2, digest: DIGEST, proof: [] }, checkpoint(4)]);
    expect(coreKinds(storage).sort()).toEqual(["accept:3", "accept:4", "checkpoint:2", "checkpoint:4", "stable:2", "view:1"]);
    storage.close();
  });

  test("a new store is made with STORE_PAGE_BYTES pages; an existing store keeps the page size it was made with", () => {
    const dir = freshDir();
    openStorage(dir).close();
    const pageSize = (): number => {
      const db = new Database(join(dir, STORE_FILE), { readonly: true });
      const size = (db.query("PRAGMA page_size").get() as { page_size: number }).page_size;
      db.close();
      return size;
    };
    expect(pageSize()).toBe(STORE_PAGE_BYTES);
    // A store made by a build with SQLite's default pages opens and stays as it is.
    const old = freshDir();
    const db = new Database(join(old, STORE_FILE), { create: true });
    db.exec("PRAGMA page_size = 4096");
    db.exec("PRAGMA journal_mode = WAL");
    db.close();
    const storage = openStorage(old);
    write(storage, [decided(1)]);
    storage.close();
    const reopened = new Database(join(old, STORE_FILE), { readonly: true });
    expect((reopened.query("PRAGMA page_size").get() as { page_size: number }).page_size).toBe(4096);
    reopened.close();
    expect(STORE_PAGE_BYTES).not.toBe(4096);
  });

  test("a data directory of another replica is refused", () => {
    const dir = freshDir();
    openStorage(dir).close();
    expect(() => ReplicaStorage.open({ dir, sync: "full", cluster: "unit", replica: 1, log: testLog(), metrics: new Metrics() })).toThrow(
      StoreIdentityError,
    );
    expect(() => ReplicaStorage.open({ dir, sync: "full", cluster: "other", replica: 0, log: testLog(), metrics: new Metrics() })).toThrow(
      StoreIdentityError,
    );
  });

  test("a data directory written under other admin keys, limits or retention is refused, naming what differs", () => {
    const dir = freshDir();
    const open = (executionConfig?: Record<string, Uint8Array>): ReplicaStorage =>
      ReplicaStorage.open({
        dir,
        sync: "full",
        cluster: "unit",
        replica: 0,
        log: testLog(),
        metrics: new Metrics(),
        ...(executionConfig === undefined ? {} : { executionConfig }),
      });
    const first = { admin_keys: new Uint8Array(32).fill(1), "[limits]": new Uint8Array(32).fill(2) };
    // A store from before the check has nothing to compare: it takes the file's values.
    open().close();
    open(first).close();
    open(first).close();
    expect(() => open({ ...first, admin_keys: new Uint8Array(32).fill(3) })).toThrow(
      /written under a cluster file with other admin_keys\. These are fixed for a cluster's life/,
    );
    // The refusal changed nothing: the recorded values still open it.
    open(first).close();
    expect(() => open({ admin_keys: new Uint8Array(32).fill(3), "[limits]": new Uint8Array(32).fill(4) })).toThrow(
      "other admin_keys, [limits]",
    );
  });
});

describe("corruption", () => {
  test("a row whose bytes changed is detected at open, reported, and cuts the decided log there", () => {
    const dir = freshDir();
    const storage = openStorage(dir);
    write(
      storage,
      [1, 2, 3, 4, 5].map((seq) => decided(seq)),
    );
    storage.close();
    // Bit rot inside row 3: the payload changes, its checksum does not.
    const db = new Database(join(dir, STORE_FILE));
    const row = db.query("SELECT rec FROM decided WHERE seq = 3").get() as { rec: Uint8Array };
    const damaged = Uint8Array.from(row.rec);
    damaged[damaged.length - 5] = (damaged[damaged.length - 5] as number) ^ 0x01;
    db.query("UPDATE decided SET rec = ? WHERE seq = 3").run(damaged);
    db.close();
    const log = testLog();
    const metrics = new Metrics();
    const reopened = openStorage(dir, log, metrics);
    expect(reopened.corruptAtOpen.map((r) => `${r.table} ${r.key}`)).toEqual(["decided seq 3"]);
    expect(metrics.get("storage_corrupt_rows_total")).toBe(1);
    expect(log.lines.some((l) => l.level === "error" && l.msg === "storage corruption detected" && l.fields.table === "decided")).toBe(
      true,
    );
    // Rows from the damaged one on cannot be replayed; peers supply them again.
    expect(decidedSeqs(reopened)).toEqual([1, 2]);
    reopened.close();
  });

  test("a flipped byte in the database file is detected", () => {
    const dir = freshDir();
    const storage = openStorage(dir);
    const marker = "flip-this-payload-0123456789abcdef";
    write(storage, [decided(1), decided(2, marker), decided(3)]);
    storage.close();
    // Closing the last connection folds the WAL into the main file.
    const file = join(dir, STORE_FILE);
    const bytes = readFileSync(file);
    const at = bytes.indexOf(Buffer.from(marker));
    expect(at).toBeGreaterThan(0);
    bytes[at + 4] = (bytes[at + 4] as number) ^ 0x20;
    writeFileSync(file, bytes);
    const metrics = new Metrics();
    const reopened = openStorage(dir, testLog(), metrics);
    expect(metrics.get("storage_corrupt_rows_total")).toBeGreaterThanOrEqual(1);
    // The payload is in the batch row; the decided row that names it is refused when
    // recovery reads it (storage-recovery.test.ts).
    expect(reopened.corruptAtOpen.map((r) => r.table)).toEqual(["batch"]);
    expect([...reopened.store.batchRows()].length).toBe(2);
    const row2 = [...reopened.store.decidedRows(2)][0];
    expect(row2?.ok).toBe(true);
    if (row2?.ok) expect(decodeRecord(row2.row.rec, batchesOf(reopened))).toBeNull();
    reopened.close();
  });

  test("a truncated database file is moved aside and the replica starts empty", () => {
    const dir = freshDir();
    const storage = openStorage(dir);
    write(
      storage,
      Array.from({ length: 200 }, (_, i) => decided(i + 1, `payload ${"x".repeat(200)} ${i}`)),
    );
    storage.close();
    const file = join(dir, STORE_FILE);
    truncateSync(file, Math.floor(statSync(file).size / 2));
    const log = testLog();
    const metrics = new Metrics();
    const reopened = openStorage(dir, log, metrics);
    expect(reopened.quarantined).toBe(true);
    expect(metrics.get("storage_corrupt_rows_total")).toBe(1);
    const [copy] = readdirSync(join(dir, QUARANTINE_DIR));
    expect(copy).toMatch(/^\d{8}T\d{6}Z$/);
    expect(existsSync(join(dir, QUARANTINE_DIR, String(copy), STORE_FILE))).toBe(true);
    expect(decidedSeqs(reopened)).toEqual([]);
    // The new store works.
    write(reopened, [decided(1)]);
    expect(decidedSeqs(reopened)).toEqual([1]);
    reopened.close();
  });

  test("a database file cut to 0 bytes beside its write-ahead log is damage: moved aside and the replica fenced, not opened as a new store", () => {
    const dir = freshDir();
    // A copy of a store as a kill -9 leaves it: the file and its write-ahead log (copied while open).
    const storage = openStorage(dir);
    write(storage, [decided(1), decided(2), decided(3)]);
    const copy = freshDir();
    copyFileSync(join(dir, STORE_FILE), join(copy, STORE_FILE));
    copyFileSync(join(dir, `${STORE_FILE}-wal`), join(copy, `${STORE_FILE}-wal`));
    storage.close();
    expect(statSync(join(copy, `${STORE_FILE}-wal`)).size).toBeGreaterThan(0);
    truncateSync(join(copy, STORE_FILE), 0);
    const log = testLog();
    const reopened = openStorage(copy, log);
    expect(reopened.quarantined).toBe(true);
    expect(reopened.lostRecords).toBe(true);
    expect(
      log.lines.some((line) => line.msg === "storage corruption detected" && String(line.fields["reason"]).includes("truncated")),
    ).toBe(true);
    reopened.close();
    // The reads fitb replica makes first (the epoch a later cluster file asks about, a join
    // record) take nothing from it and leave it as it is for the open to find.
    const again = freshDir();
    const source = openStorage(again);
    write(source, [decided(1), decided(2)]);
    copyFileSync(join(again, STORE_FILE), join(copy, STORE_FILE));
    copyFileSync(join(again, `${STORE_FILE}-wal`), join(copy, `${STORE_FILE}-wal`));
    source.close();
    truncateSync(join(copy, STORE_FILE), 0);
    const walBytes = statSync(join(copy, `${STORE_FILE}-wal`)).size;
    expect(readEpochStart(copy, "unit", 0)).toBeNull();
    expect(readJoined(copy, "unit", 0)).toBeNull();
    expect([statSync(join(copy, STORE_FILE)).size, statSync(join(copy, `${STORE_FILE}-wal`)).size]).toEqual([0, walBytes]);
    const afterReads = openStorage(copy);
    expect([afterReads.quarantined, afterReads.lostRecords]).toEqual([true, true]);
    afterReads.close();
    // A 0-byte file with no write-ahead log (a start that stopped before its first commit) is a new store.
    const empty = freshDir();
    writeFileSync(join(empty, STORE_FILE), "");
    const fresh = openStorage(empty);
    expect(fresh.quarantined).toBe(false);
    fresh.close();
  });

  test("the reads before a start do not stop it on a damaged store (closing it fails to fold the log)", () => {
    const { copy } = killedStoreCopy();
    // The file cut to half.
    truncateSync(join(copy, STORE_FILE), Math.floor(statSync(join(copy, STORE_FILE)).size / 2));
    expect(readEpochStart(copy, "unit", 0)).toBeNull();
    expect(readJoined(copy, "unit", 0)).toBeNull();
    const opened = openStorage(copy);
    expect([opened.quarantined, opened.lostRecords]).toEqual([true, true]);
    opened.close();
  });

  test("the reads before a start change nothing in the files: damage the log would be folded over is still found by the open", () => {
    const { dir, copy } = killedStoreCopy();
    // Cut to 90%, and copied once more: folding the log into the file (on close) may
    // cover the cut part with the pages the log holds, and hide the damage from the open.
    truncateSync(join(copy, STORE_FILE), Math.floor(statSync(join(copy, STORE_FILE)).size * 0.9));
    const untouched = freshDir();
    for (const name of [STORE_FILE, `${STORE_FILE}-wal`]) copyFileSync(join(copy, name), join(untouched, name));
    const before = [STORE_FILE, `${STORE_FILE}-wal`].map((name) => readFileSync(join(copy, name)));
    expect(readEpochStart(copy, "unit", 0)).toBeNull();
    expect(readJoined(copy, "unit", 0)).toBeNull();
    const after = [STORE_FILE, `${STORE_FILE}-wal`].map((name) => readFileSync(join(copy, name)));
    expect(after.map((bytes, i) => bytes.equals(before[i] as Buffer))).toEqual([true, true]);
    // The open finds what it finds without the reads before it.
    const outcome = (storage: ReplicaStorage): unknown[] => [storage.quarantined, storage.lostRecords, decidedSeqs(storage).length];
    const opened = openStorage(copy);
    const openedAlone = openStorage(untouched);
    expect(outcome(opened)).toEqual(outcome(openedAlone));
    opened.close();
    openedAlone.close();
    // The store of another replica is refused, as the open refuses it.
    expect(() => readEpochStart(dir, "unit", 1)).toThrow(StoreIdentityError);
    // A directory with no store yet is left without one: the open creates it.
    const empty = freshDir();
    expect(readEpochStart(empty, "unit", 0)).toBeNull();
    expect(existsSync(join(empty, STORE_FILE))).toBe(false);
  });

  test("quarantine keeps the copy it just made whatever the names beside it, leaves an operator's own entries, and a copy it cannot remove does not stop the start", () => {
    const dir = freshDir();
    const root = join(dir, QUARANTINE_DIR);
    // Copies named ahead of now (a clock that was ahead), and an operator's own directory.
    for (const name of ["20990101T000000Z", "20990101T000001Z", "20990101T000002Z", "evidence-for-ticket-42"])
      mkdirSync(join(root, name), { recursive: true });
    writeFileSync(join(dir, STORE_FILE), `not a database ${"x".repeat(4096)}`);
    const log = testLog();
    const storage = openStorage(dir, log);
    const moved = String(log.lines.find((line) => line.msg === "storage corruption detected")?.fields["reason"]).match(
      /moved to (\S+)$/,
    )?.[1];
    storage.close();
    expect(moved).toBeDefined();
    expect(existsSync(join(String(moved), STORE_FILE))).toBe(true);
    expect(readdirSync(root).sort()).toEqual(
      ["20990101T000001Z", "20990101T000002Z", basename(String(moved)), "evidence-for-ticket-42"].sort(),
    );
    // A removal that fails is logged; the start goes on, moved aside and fenced.
    writeFileSync(join(dir, STORE_FILE), `not a database either ${"x".repeat(4096)}`);
    const failing = {
      ...realDisk,
      removeTree: (): void => {
        throw new Error("EACCES: permission denied");
      },
    };
    const log2 = testLog();
    const opened = ReplicaStorage.open({
      dir,
      sync: "full",
      cluster: "unit",
      replica: 0,
      log: log2,
      metrics: new Metrics(),
      disk: failing,
    });
    expect([opened.quarantined, opened.lostRecords]).toEqual([true, true]);
    expect(log2.lines.some((line) => line.msg === "storage: an old quarantined copy could not be removed; kept")).toBe(true);
    opened.close();
  });

  test("storage_disk_free_bytes is what statfs says the data directory's filesystem has free; -1 once it cannot be read", () => {
    const dir = freshDir();
    const metrics = new Metrics();
    const storage = openStorage(dir, testLog(), metrics);
    const fs = statfsSync(dir);
    const free = metrics.get("storage_disk_free_bytes");
    // Other processes write meanwhile: within 64 MiB of the figure read here.
    expect(Math.abs(free - fs.bavail * fs.bsize)).toBeLessThan(64 * 1024 * 1024);
    expect(free).toBeGreaterThan(0);
    storage.close();
    rmSync(dir, { recursive: true, force: true });
    expect(metrics.get("storage_disk_free_bytes")).toBe(-1);
  });

  test("each damaged database gets a quarantined copy of its own; the newest three are kept, the oldest first to go", () => {
    const dir = freshDir();
    // What an earlier version left: one copy directly in quarantine/.
    mkdirSync(join(dir, QUARANTINE_DIR), { recursive: true });
    writeFileSync(join(dir, QUARANTINE_DIR, STORE_FILE), "the first damaged copy");
    const damage = (marker: string): { log: ReturnType<typeof testLog>; storage: ReplicaStorage } => {
      writeFileSync(join(dir, STORE_FILE), `not a database: ${marker} ${"x".repeat(4096)}`);
      const log = testLog();
      const storage = openStorage(dir, log);
      expect(storage.quarantined).toBe(true);
      storage.close();
      return { log, storage };
    };
    const copies = (): string[] => readdirSync(join(dir, QUARANTINE_DIR)).sort();
    const held = (name: string): string => readFileSync(join(dir, QUARANTINE_DIR, name, STORE_FILE), "utf8").slice(0, 26);

    damage("second");
    expect(copies()).toHaveLength(2);
    expect(copies()[0]).toBe("0-undated");
    expect(held("0-undated")).toBe("the first damaged copy");
    expect(held(String(copies()[1]))).toStartWith("not a database: second");
    damage("third");
    expect(copies()).toHaveLength(3);
    expect(held("0-undated")).toBe("the first damaged copy");
    // Within one second the name takes a suffix; nothing is replaced.
    const { log } = damage("fourth");
    const kept = copies();
    expect(kept).toHaveLength(3);
    expect(kept).not.toContain("0-undated");
    expect(kept.map(held).map((text) => text.split(" ")[3])).toEqual(["second", "third", "fourth"]);
    expect(log.lines.filter((line) => line.msg.includes("old quarantined copy removed"))).toHaveLength(1);
  });

  test("a part read while serving that fails its checksum is reported and not returned", () => {
    const dir = freshDir();
    const log = testLog();
    const metrics = new Metrics();
    // The bytes are changed under the running store (a disk going bad), which the
    // data directory lock would otherwise (rightly) forbid.
    const storage = ReplicaStorage.open({ dir, sync: "full", cluster: "unit", replica: 0, log, metrics, exclusive: false });
    storage.stagePart(7, 0, new Uint8Array([1, 2, 3, 4]));
    storage.commits.flush();
    expect(storage.readPart(7, 0)).toEqual(new Uint8Array([1, 2, 3, 4]));
    const db = new Database(join(dir, STORE_FILE));
    db.query("UPDATE snap_part SET data = ? WHERE seq = 7").run(new Uint8Array([1, 2, 3, 5]));
    db.close();
    expect(storage.readPart(7, 0)).toBeNull();
    expect(metrics.get("storage_corrupt_rows_total")).toBe(1);
    expect(log.lines.some((l) => l.msg === "storage corruption detected" && l.fields.table === "snap_part")).toBe(true);
    storage.close();
  });
  test("a commit that fails stops the replica through its fatal handler, with the storage exit status (no process.exit in the library)", () => {
    const dir = freshDir();
    const log = testLog();
    const metrics = new Metrics();
    const { storage, stops } = openRecordingStops(dir, log, metrics, false);
    // The table goes away under the running store: the next commit cannot be made durable.
    const db = new Database(join(dir, STORE_FILE));
    db.run("DROP TABLE snap_part");
    db.close();
    storage.stagePart(7, 0, new Uint8Array([1, 2, 3, 4]));
    expect(() => storage.commits.flush()).toThrow(FatalError);
    expect(stops.map((e) => e.exitCode)).toEqual([EXIT_STORAGE_FAILED]);
    expect(metrics.get("storage_commit_failures_total")).toBe(1);
    expect(log.lines.some((l) => l.msg.startsWith("storage commit failed"))).toBe(true);
  });

  test("a database file removed or replaced under the running store stops it through the fatal handler", () => {
    for (const how of ["removed", "replaced by another file"] as const) {
      const dir = freshDir();
      const log = testLog();
      const { storage, stops } = openRecordingStops(dir, log);
      storage.checkInPlace();
      expect(stops).toEqual([]);
      const file = join(dir, STORE_FILE);
      if (how === "removed") rmSync(dir, { recursive: true, force: true });
      else {
        copyFileSync(file, `${file}.copy`);
        renameSync(`${file}.copy`, file);
      }
      expect(() => storage.checkInPlace()).toThrow(FatalError);
      expect(stops.map((e) => [e.exitCode, e.message])).toEqual([
        [EXIT_STORAGE_FAILED, `the database ${file} was ${how} while the replica ran`],
      ]);
      expect(log.lines.some((l) => l.msg.startsWith("the data directory's database was removed or replaced"))).toBe(true);
    }
  });

  test("a clean stop whose last fold of the write-ahead log fails (a full disk) closes the database and stops through the fatal handler", () => {
    const dir = freshDir();
    const log = testLog();
    const { storage, stops } = openRecordingStops(dir, log);
    storage.stagePart(7, 0, new Uint8Array([1, 2, 3, 4]));
    storage.commits.flush();
    // What SQLite throws for PRAGMA wal_checkpoint(TRUNCATE) on a full disk.
    const db = (storage.store as unknown as { db: { exec(sql: string): void } }).db;
    const exec = db.exec.bind(db);
    db.exec = (sql: string) => {
      if (sql.includes("wal_checkpoint")) throw new Error("database or disk is full");
      exec(sql);
    };
    expect(() => storage.close()).toThrow(FatalError);
    expect(stops.map((e) => [e.exitCode, e.message])).toEqual([[EXIT_STORAGE_FAILED, "storage close failed: database or disk is full"]]);
    expect(log.lines.some((l) => l.msg.startsWith("storage could not be closed cleanly"))).toBe(true);
    // Closed all the same: no descriptor left on the database, and what was committed is read back.
    expect(descriptorsOf(join(dir, STORE_FILE))).toEqual([]);
    const reopened = ReplicaStorage.open({ dir, sync: "full", cluster: "unit", replica: 0, log: testLog(), metrics: new Metrics() });
    expect(reopened.readPart(7, 0)).toEqual(new Uint8Array([1, 2, 3, 4]));
    reopened.close();
  });
});

/** This process's file descriptors open on `path`. */
function descriptorsOf(path: string): string[] {
  const fds: string[] = [];
  for (const fd of readdirSync("/proc/self/fd")) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`) === path) fds.push(fd);
    } catch {
      // Closed while listing (the directory's own descriptor): not ours.
    }
  }
  return fds;
}

/** How many of this process's file descriptors are open on `path`. */
function openDescriptorsOf(path: string): number {
  return descriptorsOf(path).length;
}

describe("the clean-stop marker (core/ordering/PROTOCOL.md §2, the restart fence)", () => {
  test("is set by close() and cleared at the next open, so only a run that ended with close() is taken as clean", () => {
    const dir = freshDir();
    const first = openStorage(dir);
    expect(first.stoppedClean).toBe(false);
    write(first, [decided(1)]);
    first.close();
    const second = openStorage(dir);
    expect(second.stoppedClean).toBe(true);
    // This run ends without close() (its database closed under it, as a crash leaves it).
    second.store.close();
    const third = openStorage(dir);
    expect(third.stoppedClean).toBe(false);
    expect(decidedSeqs(third)).toEqual([1]);
    third.close();
  });
});

describe("overlapped fsync on the real disk", () => {
  test("under sync full an effect waits for the log's fsync, which runs off the event loop while the next transaction is written", async () => {
    const dir = freshDir();
    const storage = openStorage(dir);
    expect(storage.store.walSync).not.toBeNull();
    storage.persist(decided(1));
    let ran = false;
    storage.afterDurable(() => {
      ran = true;
    });
    storage.commits.flush();
    // Written (readable here), not yet durable: what depends on it waits.
    expect(decidedSeqs(storage)).toEqual([1]);
    expect(ran).toBe(false);
    expect(storage.commits.pendingEffects).toBe(1);
    // The next seq's write does not wait for that fsync.
    storage.persist(decided(2));
    storage.commits.flush();
    expect(decidedSeqs(storage)).toEqual([1, 2]);
    const deadline = Date.now() + 30_000;
    while (!ran && Date.now() < deadline) await Bun.sleep(1);
    expect(ran).toBe(true);
    // That fsync started before seq 2 was written, and no effect waits for seq 2: no fsync
    // starts for it until one is needed, or the timer's syncIdle finds it still waiting.
    expect(storage.commits.pendingWrites).toBeGreaterThan(0);
    storage.syncIdle();
    storage.syncIdle();
    while (storage.commits.pendingWrites > 0 && Date.now() < deadline) await Bun.sleep(1);
    expect(storage.commits.pendingWrites).toBe(0);
    storage.close();
    const reopened = openStorage(dir);
    expect(decidedSeqs(reopened)).toEqual([1, 2]);
    reopened.close();
  });

  test("the log's descriptor is closed only after the fsync in flight on it returns", async () => {
    const dir = freshDir();
    const path = join(dir, "x.db");
    writeFileSync(`${path}-wal`, "log");
    const sync = realDisk.walSync?.(path);
    if (sync === undefined) throw new Error("the real disk has no overlapped fsync");
    const inFlight = sync.later();
    sync.close();
    // Still open: the fsync in flight holds its number (Linux lists open descriptors in /proc).
    expect(openDescriptorsOf(`${path}-wal`)).toBe(1);
    await inFlight;
    expect(openDescriptorsOf(`${path}-wal`)).toBe(0);
  });

  test("now() and later() use different descriptors (each open file description gets its own writeback error report)", async () => {
    const dir = freshDir();
    const path = join(dir, "x.db");
    writeFileSync(`${path}-wal`, "log");
    const sync = realDisk.walSync?.(path);
    if (sync === undefined) throw new Error("the real disk has no overlapped fsync");
    const before = new Set(descriptorsOf(`${path}-wal`));
    const inFlight = sync.later();
    sync.now();
    const opened = descriptorsOf(`${path}-wal`).filter((fd) => !before.has(fd));
    // Two descriptors, each from its own open: no fd sharing one file description.
    expect(opened.length).toBe(2);
    await inFlight;
    sync.close();
    expect(descriptorsOf(`${path}-wal`).filter((fd) => !before.has(fd))).toEqual([]);
  });

  test("after close the log's sync refuses: later() rejects and now() throws, neither reopens the log", async () => {
    const dir = freshDir();
    const path = join(dir, "x.db");
    writeFileSync(`${path}-wal`, "log");
    const sync = realDisk.walSync?.(path);
    if (sync === undefined) throw new Error("the real disk has no overlapped fsync");
    sync.now();
    sync.close();
    expect(openDescriptorsOf(`${path}-wal`)).toBe(0);
    expect(() => sync.now()).toThrow("is closed");
    await expect(sync.later()).rejects.toThrow("is closed");
    expect(openDescriptorsOf(`${path}-wal`)).toBe(0);
  });

  test("under sync normal nothing waits for an fsync: an effect runs at the commit", () => {
    const dir = freshDir();
    const storage = ReplicaStorage.open({ dir, sync: "normal", cluster: "unit", replica: 0, log: testLog(), metrics: new Metrics() });
    expect(storage.store.walSync).toBeNull();
    storage.persist(decided(1));
    let ran = false;
    storage.afterDurable(() => {
      ran = true;
    });
    storage.commits.flush();
    expect(ran).toBe(true);
    storage.close();
  });
});
