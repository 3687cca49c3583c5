// Batches written once (src/replica/storage/records.ts, index.ts, recovery.ts): the
// accept, prepared and decided records of a seq name their batch by digest and the batch
// is one row; a restart puts the batches back; a batch whose records were lost goes; a
// record whose batch is missing, damaged or not the one its digest names is refused and
// reported, never replayed; batches go with the records that name them at checkpoints.
import { afterEach, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { ClientRequest, PrePrepare } from "../../src/core/ordering/messages.ts";
import type { PersistedRecord } from "../../src/core/ordering/types.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import { ReplicaStorage, readEpochStart, type SnapshotHead, TRIM_ROWS_PER_COMMIT } from "../../src/replica/storage/index.ts";
import { encodeBatch, encodeRecord } from "../../src/replica/storage/records.ts";
import { type Recovered, recover } from "../../src/replica/storage/recovery.ts";
import { rowChecksum } from "../../src/replica/storage/checksum.ts";
import { sha256 } from "../../src/crypto/hash.ts";
import { STORE_FILE, STORE_FORMAT_VERSION, StoreIdentityError } from "../../src/replica/storage/store.ts";
import { encodeCanonical } from "../../wire/canonical.ts";
import { batchDigest, execute, newMachine, openStorage, payloads, tempDir, type TestLog, testLog, TestClient } from "./storage-fixtures.ts";

const PART_BYTES = 2048;
const SIG = new Uint8Array(64).fill(7);
const STATE = new Uint8Array(32).fill(5);

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
});

/** A complete base snapshot head at `seq` with no parts (only its rows' pruning is under test). */
function emptyBase(seq: number): SnapshotHead {
  return {
    status: "complete",
    seq,
    stateDigest: STATE,
    appDigest: STATE,
    clients: [],
    proof: [],
    parts: 0,
    bytes: 0,
    partBytes: PART_BYTES,
  };
}

function header(seq: number, digest: Uint8Array): PrePrepare {
  return { t: "PRE_PREPARE", view: 0, seq, digest, ts: 0, batch: null, sig: SIG };
}

/** The three records the core writes for one seq, in its order. */
function recordsFor(seq: number, batch: ClientRequest[]): PersistedRecord[] {
  const digest = batchDigest(batch);
  return [
    { t: "accept", prePrepare: { ...header(seq, digest), batch } },
    { t: "prepared", cert: { view: 0, seq, digest, prePrepare: header(seq, digest), prepares: [], batch: null }, batch },
    { t: "decided", seq, view: 0, digest, batch, commits: [] },
  ];
}

interface Setup {
  readonly dir: string;
  readonly storage: ReplicaStorage;
  readonly publisher: TestClient;
  /** The batch of each seq written. */
  readonly batches: Map<number, ClientRequest[]>;
}

/** A store with seq 1 (a channel and its publisher) and seqs 2..last, each accepted, prepared and decided. */
function setup(last: number, payload = (seq: number) => `event ${seq}`): Setup {
  const t = tempDir();
  cleanups.push(t.remove);
  const storage = openStorage(t.dir);
  const admin = new TestClient();
  const publisher = new TestClient();
  const batches = new Map<number, ClientRequest[]>();
  batches.set(1, [
    admin.admin({ t: "create-channel", tag: "sec.alerts", fault: "byzantine", order: "total", priority: "high", public: true }),
    admin.admin({ t: "register", tag: "sec.alerts", role: "publisher", key: publisher.key.publicKey }),
  ]);
  for (let seq = 2; seq <= last; seq++) batches.set(seq, [publisher.pub("sec.alerts", [payload(seq)])]);
  for (const [seq, batch] of batches) {
    for (const record of recordsFor(seq, batch)) storage.persist(record);
    storage.commits.flush();
  }
  return { dir: t.dir, storage, publisher, batches };
}

function reopen(dir: string, log: TestLog = testLog(), metrics = new Metrics()) {
  const storage = openStorage(dir, log, metrics);
  cleanups.push(() => storage.close());
  const machine = newMachine();
  const recovered = recover({ storage, machine, partBytes: PART_BYTES, execute: (requests) => execute(machine, requests) });
  return { storage, machine, recovered, log, metrics };
}

/** Runs SQL on a closed store, as damage or a lost write would leave it. */
function sql(dir: string, statement: string, ...params: (string | number | Uint8Array)[]): void {
  const db = new Database(join(dir, STORE_FILE));
  db.query(statement).run(...params);
  db.close();
}

function batchRows(storage: ReplicaStorage): number {
  return storage.store.batchIndex().length;
}

function coreOf<T extends PersistedRecord["t"]>(recovered: Recovered, t: T): Extract<PersistedRecord, { t: T }>[] {
  return recovered.coreRecords.filter((r): r is Extract<PersistedRecord, { t: T }> => r.t === t);
}

function occurrences(haystack: Uint8Array, needle: string): number {
  const text = Buffer.from(haystack).toString("latin1");
  return text.split(needle).length - 1;
}

describe("batches written once", () => {
  test("accept, prepared and decided name one batch row; a restart puts the batch back in each", () => {
    const marker = "only-once-0123456789abcdef";
    const { dir, storage, batches } = setup(6, (seq) => `${marker} ${seq}`);
    storage.close();
    // Closing folds the write-ahead log into the file: each payload is in it once.
    const file = readFileSync(join(dir, STORE_FILE));
    for (let seq = 2; seq <= 6; seq++) expect(occurrences(file, `${marker} ${seq}`)).toBe(1);
    const { recovered, machine, storage: reopened } = reopen(dir);
    expect(recovered.lastDecided).toBe(6);
    expect(payloads(machine, "sec.alerts")).toEqual([2, 3, 4, 5, 6].map((seq) => `${marker} ${seq}`));
    for (const r of coreOf(recovered, "decided")) expect(r.batch).toEqual(batches.get(r.seq) as ClientRequest[]);
    for (const r of coreOf(recovered, "accept")) expect(r.prePrepare.batch).toEqual(batches.get(r.prePrepare.seq) as ClientRequest[]);
    for (const r of coreOf(recovered, "prepared")) expect(r.batch).toEqual(batches.get(r.cert.seq) as ClientRequest[]);
    expect(coreOf(recovered, "accept").length).toBe(6);
    expect(coreOf(recovered, "prepared").length).toBe(6);
    expect(batchRows(reopened)).toBe(6);
  });

  test("in crash mode the certificate's body is the same batch and is stored once too", () => {
    const { dir, storage, publisher } = setup(1);
    const batch = [publisher.pub("sec.alerts", ["crash mode"])];
    const digest = batchDigest(batch);
    storage.persist({ t: "prepared", cert: { view: 0, seq: 2, digest, prePrepare: header(2, digest), prepares: [], batch }, batch });
    storage.commits.flush();
    expect(batchRows(storage)).toBe(2);
    storage.close();
    const { recovered } = reopen(dir);
    const prepared = coreOf(recovered, "prepared").find((r) => r.cert.seq === 2);
    expect(prepared?.batch).toEqual(batch);
    expect(prepared?.cert.batch).toEqual(batch);
  });

  test("torn tail: the batch and its accept are durable, the later records lost; the accept comes back with its batch", () => {
    const { dir, storage, batches } = setup(5);
    storage.close();
    // The transactions after the accept of seq 5 never reached the disk.
    sql(dir, "DELETE FROM decided WHERE seq = 5");
    sql(dir, "DELETE FROM core WHERE kind = 'prepared' AND seq = 5");
    const { recovered, metrics, storage: reopened } = reopen(dir);
    expect(metrics.get("storage_corrupt_rows_total")).toBe(0);
    expect(recovered.lastDecided).toBe(4);
    const accept = coreOf(recovered, "accept").find((r) => r.prePrepare.seq === 5);
    expect(accept?.prePrepare.batch).toEqual(batches.get(5) as ClientRequest[]);
    expect(coreOf(recovered, "prepared").some((r) => r.cert.seq === 5)).toBe(false);
    expect(batchRows(reopened)).toBe(5);
  });

  test("torn tail: a batch whose every record was lost is dropped at restart, and written again when it is named again", () => {
    const { dir, storage, batches } = setup(5);
    storage.close();
    sql(dir, "DELETE FROM decided WHERE seq = 5");
    sql(dir, "DELETE FROM core WHERE seq = 5 AND kind IN ('accept', 'prepared')");
    const first = reopen(dir);
    expect(first.recovered.lastDecided).toBe(4);
    expect(first.metrics.get("storage_corrupt_rows_total")).toBe(0);
    expect(batchRows(first.storage)).toBe(4);
    // The proposal comes again after the restart: its batch must be stored again, not assumed.
    const [accept] = recordsFor(5, batches.get(5) as ClientRequest[]);
    first.storage.persist(accept as PersistedRecord);
    first.storage.close();
    const second = reopen(dir);
    expect(second.metrics.get("storage_corrupt_rows_total")).toBe(0);
    expect(coreOf(second.recovered, "accept").find((r) => r.prePrepare.seq === 5)?.prePrepare.batch).toEqual(
      batches.get(5) as ClientRequest[],
    );
  });

  test("a decided record whose batch is missing cuts the decided log there, reported; its votes are refused too", () => {
    const { dir, storage } = setup(6);
    const digest4 = storage.store.batchIndex().find((row) => row.seq === 4)?.digest as Uint8Array;
    storage.close();
    sql(dir, "DELETE FROM batch WHERE digest = ?", digest4);
    const { recovered, machine, log, metrics, storage: reopened } = reopen(dir);
    expect(recovered.lastDecided).toBe(3);
    expect(payloads(machine, "sec.alerts")).toEqual(["event 2", "event 3"]);
    expect([...reopened.store.decidedSeqs(0)]).toEqual([1, 2, 3]);
    expect(coreOf(recovered, "accept").some((r) => r.prePrepare.seq === 4)).toBe(false);
    expect(coreOf(recovered, "prepared").some((r) => r.cert.seq === 4)).toBe(false);
    const reasons = log.lines.filter((l) => l.msg === "storage corruption detected").map((l) => `${l.fields.table} ${l.fields.reason}`);
    expect(reasons).toContain("decided batch missing");
    expect(reasons).toContain("core batch missing");
    expect(metrics.get("storage_corrupt_rows_total")).toBeGreaterThanOrEqual(3);
  });

  test("a damaged batch row is caught by its checksum at open and its records are refused", () => {
    const { dir, storage } = setup(4);
    storage.close();
    const db = new Database(join(dir, STORE_FILE));
    const row = db.query("SELECT id, data FROM batch WHERE seq = 3").get() as { id: number; data: Uint8Array };
    const damaged = Uint8Array.from(row.data);
    damaged[damaged.length - 1] = (damaged[damaged.length - 1] as number) ^ 1;
    db.query("UPDATE batch SET data = ? WHERE id = ?").run(damaged, row.id);
    db.close();
    const { recovered, storage: reopened } = reopen(dir);
    expect(reopened.corruptAtOpen.map((r) => r.table)).toEqual(["batch"]);
    expect(recovered.lastDecided).toBe(2);
  });

  test("a batch row holding another batch than its digest names is refused, not replayed", () => {
    const { dir, storage, publisher } = setup(4);
    const digest3 = storage.store.batchIndex().find((row) => row.seq === 3)?.digest as Uint8Array;
    storage.close();
    // A whole, checksummed row: only the content address shows it is not the batch named.
    const other = encodeBatch([publisher.pub("sec.alerts", ["invented"])]);
    sql(dir, "UPDATE batch SET data = ?, sum = ? WHERE digest = ?", other, rowChecksum("batch", [digest3, 3], [other]), digest3);
    const { recovered, machine, log } = reopen(dir);
    expect(recovered.lastDecided).toBe(2);
    expect(payloads(machine, "sec.alerts")).toEqual(["event 2"]);
    expect(log.lines.some((l) => l.fields.reason === "batch does not match its digest")).toBe(true);
  });

  test("batches go once the rows naming them are pruned; a late record below the pruning carries its batch", () => {
    const { storage, batches } = setup(10);
    expect(batchRows(storage)).toBe(10);
    storage.persist({ t: "stable", seq: 6, digest: STATE, proof: [] });
    storage.commits.flush();
    // The decided rows still name them.
    expect(batchRows(storage)).toBe(10);
    storage.stageAdoptBase(emptyBase(6), []);
    storage.commits.flush();
    expect(
      storage.store
        .batchIndex()
        .map((row) => row.seq)
        .sort((a, b) => a - b),
    ).toEqual([7, 8, 9, 10]);
    // A record about a seq already pruned is written whole: no batch row can vanish under it.
    const [late] = recordsFor(5, batches.get(5) as ClientRequest[]);
    storage.persist(late as PersistedRecord);
    storage.commits.flush();
    expect(batchRows(storage)).toBe(4);
    const rows = [...storage.store.coreRows()].flatMap((c) => (c.ok && c.row.kind === "accept" && c.row.seq === 5 ? [c.row.rec] : []));
    expect(rows).toEqual([encodeRecord(late as PersistedRecord)]);
  });
});

describe("rows a base leaves behind", () => {
  test("go a slice per commit, the first in the base's own, then in later turns and in each commit that stores a decision, until none is left; a batch named again meanwhile stays", () => {
    const t = tempDir();
    cleanups.push(t.remove);
    // The storage's turns run only when this test says (the embedder's afterTurn).
    const turns: (() => void)[] = [];
    const storage = ReplicaStorage.open({
      dir: t.dir,
      sync: "full",
      cluster: "unit",
      replica: 0,
      log: testLog(),
      metrics: new Metrics(),
      afterTurn: (run) => void turns.push(run),
    });
    cleanups.push(() => storage.close());
    const publisher = new TestClient();
    const total = TRIM_ROWS_PER_COMMIT + 100;
    const batches: ClientRequest[][] = [];
    for (let seq = 1; seq <= total; seq++) {
      const batch = [publisher.pub("sec.alerts", [`event ${seq}`])];
      batches[seq] = batch;
      storage.persist({ t: "decided", seq, view: 0, digest: batchDigest(batch), batch, commits: [] });
    }
    storage.persist({ t: "stable", seq: total, digest: STATE, proof: [] });
    storage.commits.flush();
    const decidedSeqs = (): number[] => [...storage.store.decidedRows(0)].map((row) => (row.ok ? row.row.seq : -1));
    const batchSeqs = (): number[] => storage.store.batchIndex().map((row) => row.seq);
    expect(decidedSeqs().length).toBe(total);
    expect(batchRows(storage)).toBe(total);

    storage.stageAdoptBase(emptyBase(total), []);
    storage.commits.flush();
    // The base's commit deleted one slice, the lowest decided rows first.
    expect(decidedSeqs().length).toBe(total - TRIM_ROWS_PER_COMMIT);
    expect(decidedSeqs()[0]).toBe(TRIM_ROWS_PER_COMMIT + 1);
    expect(batchRows(storage)).toBe(total);

    // A decision stored before the next turn takes a slice into its own commit (the other
    // 100 decided rows and the 28 lowest batches). It names the batch of seq `total` again,
    // which is put again with its seq: no slice may delete it.
    const again = batches[total] as ClientRequest[];
    storage.persist({ t: "decided", seq: total + 1, view: 0, digest: batchDigest(again), batch: again, commits: [] });
    storage.commits.flush();
    expect(decidedSeqs()).toEqual([total + 1]);
    expect(batchRows(storage)).toBe(total - (TRIM_ROWS_PER_COMMIT - 100));

    // Later turns delete the rest, and then schedule nothing more.
    let ran = 0;
    while (turns.length > 0 && ran < 20) {
      (turns.shift() as () => void)();
      storage.commits.flush();
      ran++;
    }
    expect(turns.length).toBe(0);
    expect(ran).toBeGreaterThanOrEqual(2);
    expect(decidedSeqs()).toEqual([total + 1]);
    expect(batchSeqs()).toEqual([total + 1]);
  });
});

describe("store format", () => {
  test("a format 1 store, whose records carry their batches, is read as it is", () => {
    const t = tempDir();
    cleanups.push(t.remove);
    const storage = openStorage(t.dir);
    const admin = new TestClient();
    const publisher = new TestClient();
    const batch1 = [
      admin.admin({ t: "create-channel", tag: "sec.alerts", fault: "byzantine", order: "total", priority: "high", public: true }),
      admin.admin({ t: "register", tag: "sec.alerts", role: "publisher", key: publisher.key.publicKey }),
    ];
    const batch2 = [publisher.pub("sec.alerts", ["written by format 1"])];
    // Rows as a format 1 build wrote them: each record whole.
    storage.store.transaction(() => {
      for (const [seq, batch] of [
        [1, batch1],
        [2, batch2],
      ] as const) {
        for (const record of recordsFor(seq, batch)) {
          if (record.t === "decided") storage.store.insertDecided(seq, encodeRecord(record));
          else storage.store.insertCore(record.t, seq, encodeRecord(record));
        }
      }
    });
    storage.close();
    const v = encodeCanonical(1);
    sql(t.dir, "UPDATE meta SET v = ?, sum = ? WHERE k = 'format'", v, rowChecksum("meta", "format", [v]));
    const { recovered, machine } = reopen(t.dir);
    expect(recovered.lastDecided).toBe(2);
    expect(payloads(machine, "sec.alerts")).toEqual(["written by format 1"]);
    expect(coreOf(recovered, "accept").find((r) => r.prePrepare.seq === 2)?.prePrepare.batch).toEqual(batch2);
  });

  test("a format 2 store, whose batch and unordered rows carry full-form checksums, is read as it is and marked 3; new rows take the digest form", () => {
    const { dir, storage, publisher } = setup(4);
    const body = new TextEncoder().encode("an unordered event's request body");
    const sig = new Uint8Array(64).fill(3);
    storage.recordUnordered("net.links", 0, 1000, body, sig, sha256(body));
    storage.commits.flush();
    storage.close();
    // The checksums' lengths on the closed store: 32 for the full form, 33 for the digest form.
    const sumLengths = (): number[] => {
      const db = new Database(join(dir, STORE_FILE));
      const rows = db.query("SELECT sum FROM batch UNION ALL SELECT sum FROM unordered").all() as { sum: Uint8Array }[];
      db.close();
      return rows.map((row) => row.sum.length).sort();
    };
    expect(sumLengths()).toEqual([33, 33, 33, 33, 33]);
    // Rows as a format 2 build wrote them: the checksum of the whole payload.
    const db = new Database(join(dir, STORE_FILE));
    for (const row of db.query("SELECT id, digest, seq, data FROM batch").all() as {
      id: number;
      digest: Uint8Array;
      seq: number;
      data: Uint8Array;
    }[]) {
      db.query("UPDATE batch SET sum = ? WHERE id = ?").run(rowChecksum("batch", [row.digest, row.seq], [row.data]), row.id);
    }
    db.query("UPDATE unordered SET sum = ? WHERE id = 1").run(rowChecksum("unordered", [1, "net.links", 0, 1000], [body, sig]));
    const v = encodeCanonical(2);
    db.query("UPDATE meta SET v = ?, sum = ? WHERE k = 'format'").run(v, rowChecksum("meta", "format", [v]));
    db.close();
    // The unordered row read back as it is (recovery would drop it: its channel is not created here).
    const raw = openStorage(dir);
    expect([...raw.store.unorderedRows()].map((r) => r.ok && new TextDecoder().decode(r.row.body))).toEqual([
      "an unordered event's request body",
    ]);
    raw.close();
    const { recovered, machine, storage: reopened } = reopen(dir);
    expect(reopened.corruptAtOpen).toEqual([]);
    expect(recovered.lastDecided).toBe(4);
    expect(payloads(machine, "sec.alerts")).toEqual(["event 2", "event 3", "event 4"]);
    expect(reopened.store.meta("format")).toBe(STORE_FORMAT_VERSION);
    for (const record of recordsFor(5, [publisher.pub("sec.alerts", ["event 5"])])) reopened.persist(record);
    reopened.commits.flush();
    reopened.close();
    // The unordered row went with its absent channel; the new batch row has the digest form.
    expect(sumLengths()).toEqual([32, 32, 32, 32, 33]);
  });

  test("a store of a newer format is refused, naming both versions, by the open and by the reads before it", () => {
    const t = tempDir();
    cleanups.push(t.remove);
    openStorage(t.dir).close();
    const v = encodeCanonical(STORE_FORMAT_VERSION + 1);
    sql(t.dir, "UPDATE meta SET v = ?, sum = ? WHERE k = 'format'", v, rowChecksum("meta", "format", [v]));
    expect(() => openStorage(t.dir)).toThrow(StoreIdentityError);
    expect(() => openStorage(t.dir)).toThrow(`store format ${STORE_FORMAT_VERSION + 1}; this fitb reads format ${STORE_FORMAT_VERSION}`);
    expect(() => readEpochStart(t.dir, "unit", 0)).toThrow(
      `store format ${STORE_FORMAT_VERSION + 1}; this fitb reads format ${STORE_FORMAT_VERSION}`,
    );
  });
});
