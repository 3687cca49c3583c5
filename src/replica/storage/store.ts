/**
 * The replica's store: one SQLite database (bun:sqlite, WAL mode) in the data directory.
 *
 * Tables (every row carries `sum`, the checksum of checksum.ts over table, key and payload):
 *   meta       format version and identity (cluster name, replica id): a data directory
 *              of another replica or cluster is refused, never silently adopted.
 *   core       the ordering core's persisted records other than decisions, canonical CBOR,
 *              in the order they were written (`id`), with their kind and seq for pruning.
 *   decided    one row per decided sequence number (its commit certificate and its batch,
 *              by digest), not one per event: the decided log the channel state is replayed from.
 *   batch      each batch of client requests once, keyed by its digest, with the highest
 *              seq a record refers to it at (records.ts: accept, prepared and decided
 *              records name their batch by digest instead of carrying it).
 *   snap_head  one row per stored snapshot of the channel state machine: a base to
 *              restart from, or one arriving by state transfer.
 *   snap_part  the snapshot's byte stream (stream.ts) cut into parts of equal size.
 *   unordered  this replica's own store of unordered channels, one row per stored request.
 *   unordered_floor  per unordered channel and publisher, the highest publisher seq whose
 *              rows retention deleted: a restart still refuses those seqs (recovery.ts).
 *
 * This class only reads and writes rows and checks their sums; what the rows mean, and
 * what to do about a damaged one, is decided by its callers (recovery.ts, index.ts). All
 * calls are synchronous: a commit returns once SQLite has written (and, under the FULL
 * sync policy, fsynced) the write-ahead log; on the real disk under `full` the fsync is
 * the group commit's instead, run off the event loop (`walSync`, group-commit.ts).
 */
import type { Database, Statement } from "bun:sqlite";
import { join } from "node:path";
import { type Canonical, decodeCanonical, encodeCanonical } from "../../../wire/canonical.ts";
import { bytesEqual } from "../../crypto/encoding.ts";
import { rowChecksum, rowChecksumOfDigest, rowIntact } from "./checksum.ts";
import { type Disk, realDisk, type WalSync } from "./disk.ts";

/** The database file inside the data directory; SQLite adds -wal and -shm beside it. */
export const STORE_FILE = "fitb.db";
/**
 * Bumped when the tables or the meaning of a row change incompatibly. 2: records name
 * their batch by digest (the batch table). 3: batch and unordered rows are written with
 * the digest form of their checksum (checksum.ts), which a format 2 build would take for
 * damage. This build reads format 1 and 2 stores as they are (their records carry their
 * batches, their rows the full-form checksum) and marks them 3; a build that reads only
 * an earlier format refuses a later one, naming both versions.
 */
export const STORE_FORMAT_VERSION = 3;

/**
 * SQLite's page size for a new store. A batch row of a megabyte spans 256 overflow pages
 * of SQLite's default 4 KiB, each one a write-ahead log frame with its own header and
 * checksum: writing and committing it took 3.8-4.4 ms of CPU here against 1.8-2.0 ms with
 * 16 KiB pages and 1.2-1.3 ms with 64 KiB. A commit of a few small rows (the votes'
 * records) writes whole pages, though: 0.30-0.33 ms with fsync at 4 KiB, 0.33-0.40 at
 * 16 KiB, 0.43 at 32 KiB and 0.57 at 64 KiB. 16 KiB halves the cost of the batches and
 * leaves the small commits as they were.
 */
export const STORE_PAGE_BYTES = 16 * 1024;

/**
 * The write-ahead log's size, in pages, past which the commit that grows it copies it into
 * the database file (a checkpoint: sync the log, copy, sync the file) before it returns.
 * SQLite's default, 1,000 pages (16 MiB here), stopped each replica's event loop for 30-60
 * ms every few hundred milliseconds at 45,000 ordered ev/s, and the four replicas of a
 * group fill their logs at the same pace, so the stalls came together: `sec.alerts` at
 * 45,000 ev/s had p99 21-58 ms (median 47) against 22-34 ms (median 27) at 256 pages (4
 * MiB), with the same maximum throughput; 64 and 128 pages did about as well as 256
 * (README, Performance).
 */
export const WAL_AUTOCHECKPOINT_PAGES = 256;

/**
 * `full`: every commit is fsynced before anything that depends on it is sent (survives
 * power loss). `normal`: commits reach the operating system but the log is fsynced only
 * at WAL checkpoints (survives a killed process, may lose the last commits on power loss).
 */
export type SyncPolicy = "full" | "normal";
export const SYNC_POLICIES: readonly SyncPolicy[] = ["full", "normal"];
export const DEFAULT_SYNC_POLICY: SyncPolicy = "full";

export interface StoreIdentity {
  readonly cluster: string;
  readonly replica: number;
  /**
   * Digests of the cluster file's sections that execution reads (admin keys, limits,
   * retention), by the name an error gives them. A replica executes its decided history
   * again at each start with the file it has then, so a store written under other values
   * is refused: with them it could judge an old command otherwise than the group did and
   * diverge. Absent: not checked (tests of the store alone).
   */
  readonly executionConfig?: Readonly<Record<string, Uint8Array>>;
}

/** The meta key of StoreIdentity.executionConfig, written at the first start that gave it. */
const EXECUTION_CONFIG_META = "execution-config";

/** A row whose checksum did not match, or that could not be decoded. */
export interface CorruptRow {
  readonly table: string;
  /** The row's key fields (id, seq, or seq and part), to delete it by. */
  readonly ids: readonly number[];
  /** The key in words, for the report. */
  readonly key: string;
  readonly reason: string;
}

export interface CoreRow {
  readonly id: number;
  readonly kind: string;
  readonly seq: number;
  readonly rec: Uint8Array;
}

export interface DecidedRow {
  readonly seq: number;
  readonly rec: Uint8Array;
}

export interface BatchRow {
  readonly id: number;
  readonly digest: Uint8Array;
  readonly seq: number;
  readonly data: Uint8Array;
}

export interface PartRow {
  readonly seq: number;
  readonly part: number;
  readonly data: Uint8Array;
}

export interface UnorderedRow {
  readonly id: number;
  readonly tag: string;
  readonly gen: number;
  readonly ts: number;
  readonly body: Uint8Array;
  readonly sig: Uint8Array;
}

/** A publisher's seqs through `seq` were stored on unordered channel (tag, gen) and deleted by retention. */
export interface UnorderedFloorRow {
  readonly id: number;
  readonly tag: string;
  readonly gen: number;
  readonly publisher: Uint8Array;
  readonly seq: number;
}

/** A row as read: intact, or the reason it is not. */
export type Checked<T> = { readonly ok: true; readonly row: T } | { readonly ok: false; readonly corrupt: CorruptRow };

/** The data directory belongs to another replica or cluster, or to a newer format. */
export class StoreIdentityError extends Error {
  override readonly name = "StoreIdentityError";
}

type Row = Record<string, unknown>;

/**
 * The `core` table has no index besides its row id. It holds the `accept` and `prepared`
 * records of the log window and a few checkpoint, stable, view and snapshot records:
 * hundreds of rows (up to a few thousand after many views installed without a stable
 * checkpoint between them, each of which writes a `prepared` record again for the seqs it
 * re-proposes). Deletes by kind and seq (at each stable checkpoint, and at each `view` or
 * `snapshot` record, base and epoch) scan it: about 70 µs for 600 rows, 0.3 ms for a few
 * thousand. An index on (kind, seq) made every commit of a record write the index's page
 * to the write-ahead log beside the table's, two pages of 16 KiB instead of one: 25 µs
 * against 14 µs per commit of one record here, on every vote. A store opened by a version
 * that had the index loses it at open.
 */
const DROPPED_INDEXES = ["core_kind_seq"];

const SCHEMA = [
  "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL, sum BLOB NOT NULL)",
  "CREATE TABLE IF NOT EXISTS core (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, seq INTEGER NOT NULL, rec BLOB NOT NULL, sum BLOB NOT NULL)",
  "CREATE TABLE IF NOT EXISTS decided (seq INTEGER PRIMARY KEY, rec BLOB NOT NULL, sum BLOB NOT NULL)",
  "CREATE TABLE IF NOT EXISTS batch (id INTEGER PRIMARY KEY, digest BLOB NOT NULL UNIQUE, seq INTEGER NOT NULL, data BLOB NOT NULL, sum BLOB NOT NULL)",
  "CREATE INDEX IF NOT EXISTS batch_seq ON batch (seq)",
  "CREATE TABLE IF NOT EXISTS snap_head (seq INTEGER PRIMARY KEY, head BLOB NOT NULL, sum BLOB NOT NULL)",
  "CREATE TABLE IF NOT EXISTS snap_part (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, part INTEGER NOT NULL, data BLOB NOT NULL, sum BLOB NOT NULL)",
  "CREATE UNIQUE INDEX IF NOT EXISTS snap_part_seq ON snap_part (seq, part)",
  "CREATE TABLE IF NOT EXISTS unordered (id INTEGER PRIMARY KEY, tag TEXT NOT NULL, gen INTEGER NOT NULL, ts INTEGER NOT NULL, body BLOB NOT NULL, sig BLOB NOT NULL, sum BLOB NOT NULL)",
  "CREATE INDEX IF NOT EXISTS unordered_tag ON unordered (tag, gen, id)",
  // Added without a format change: an older build leaves the table alone.
  "CREATE TABLE IF NOT EXISTS unordered_floor (id INTEGER PRIMARY KEY, tag TEXT NOT NULL, gen INTEGER NOT NULL, publisher BLOB NOT NULL, seq INTEGER NOT NULL, sum BLOB NOT NULL, UNIQUE (tag, gen, publisher))",
];

function num(value: unknown): number {
  return typeof value === "number" ? value : typeof value === "bigint" ? Number(value) : Number.NaN;
}

function blob(value: unknown): Uint8Array {
  return value instanceof Uint8Array ? value : new Uint8Array(0);
}

function prepareStatements(db: Database) {
  return {
    putMeta: db.prepare("INSERT OR REPLACE INTO meta (k, v, sum) VALUES (?, ?, ?)"),
    deleteMeta: db.prepare("DELETE FROM meta WHERE k = ?"),
    insertCore: db.prepare("INSERT INTO core (id, kind, seq, rec, sum) VALUES (?, ?, ?, ?, ?)"),
    deleteCoreKindUpTo: db.prepare("DELETE FROM core WHERE kind = ? AND seq <= ?"),
    deleteCoreKindBelowId: db.prepare("DELETE FROM core WHERE kind = ? AND id < ?"),
    deleteCoreKindSeqBelow: db.prepare("DELETE FROM core WHERE kind = ? AND seq < ?"),
    deleteCoreId: db.prepare("DELETE FROM core WHERE id = ?"),
    insertDecided: db.prepare("INSERT OR REPLACE INTO decided (seq, rec, sum) VALUES (?, ?, ?)"),
    deleteDecidedUpTo: db.prepare("DELETE FROM decided WHERE seq <= ?"),
    deleteDecidedUpToLimit: db.prepare("DELETE FROM decided WHERE seq IN (SELECT seq FROM decided WHERE seq <= ? ORDER BY seq LIMIT ?)"),
    deleteDecidedFrom: db.prepare("DELETE FROM decided WHERE seq >= ?"),
    putBatch: db.prepare("INSERT OR REPLACE INTO batch (digest, seq, data, sum) VALUES (?, ?, ?, ?)"),
    readBatch: db.prepare("SELECT id, digest, seq, data, sum FROM batch WHERE digest = ?"),
    readBatchData: db.prepare("SELECT data FROM batch WHERE digest = ?"),
    deleteBatchesUpToLimit: db.prepare("DELETE FROM batch WHERE id IN (SELECT id FROM batch WHERE seq <= ? ORDER BY seq LIMIT ?)"),
    deleteBatchId: db.prepare("DELETE FROM batch WHERE id = ?"),
    putHead: db.prepare("INSERT OR REPLACE INTO snap_head (seq, head, sum) VALUES (?, ?, ?)"),
    insertPart: db.prepare("INSERT OR REPLACE INTO snap_part (seq, part, data, sum) VALUES (?, ?, ?, ?)"),
    deleteHead: db.prepare("DELETE FROM snap_head WHERE seq = ?"),
    deleteParts: db.prepare("DELETE FROM snap_part WHERE seq = ?"),
    deletePartsFrom: db.prepare("DELETE FROM snap_part WHERE seq = ? AND part >= ?"),
    readPart: db.prepare("SELECT seq, part, data, sum FROM snap_part WHERE seq = ? AND part = ?"),
    insertUnordered: db.prepare("INSERT INTO unordered (id, tag, gen, ts, body, sig, sum) VALUES (?, ?, ?, ?, ?, ?, ?)"),
    deleteUnorderedOldest: db.prepare(
      "DELETE FROM unordered WHERE id IN (SELECT id FROM unordered WHERE tag = ? AND gen = ? ORDER BY id LIMIT ?)",
    ),
    deleteUnorderedId: db.prepare("DELETE FROM unordered WHERE id = ?"),
    // The seq only rises: the sum is written with the seq it covers, or not at all.
    raiseUnorderedFloor: db.prepare(
      "INSERT INTO unordered_floor (tag, gen, publisher, seq, sum) VALUES (?, ?, ?, ?, ?) " +
        "ON CONFLICT (tag, gen, publisher) DO UPDATE SET seq = excluded.seq, sum = excluded.sum WHERE excluded.seq > unordered_floor.seq",
    ),
    deleteUnorderedFloorId: db.prepare("DELETE FROM unordered_floor WHERE id = ?"),
    deleteUnorderedFloorsOf: db.prepare("DELETE FROM unordered_floor WHERE tag = ? AND gen = ?"),
    // An index seek each (unordered_tag; the floors' UNIQUE index), not a scan of the rows.
    firstUnorderedChannel: db.prepare("SELECT tag, gen FROM unordered ORDER BY tag, gen LIMIT 1"),
    nextUnorderedChannel: db.prepare("SELECT tag, gen FROM unordered WHERE (tag, gen) > (?, ?) ORDER BY tag, gen LIMIT 1"),
    firstFloorChannel: db.prepare("SELECT tag, gen FROM unordered_floor ORDER BY tag, gen LIMIT 1"),
    nextFloorChannel: db.prepare("SELECT tag, gen FROM unordered_floor WHERE (tag, gen) > (?, ?) ORDER BY tag, gen LIMIT 1"),
  };
}

type Statements = ReturnType<typeof prepareStatements>;

/** The data directory's database is held by another process. */
export class StoreInUseError extends Error {
  override name = "StoreInUseError";
}

function isLocked(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return code === "SQLITE_BUSY" || code === "SQLITE_LOCKED" || /database is locked/i.test(String((error as Error | null)?.message ?? ""));
}

function inUse(dir: string): StoreInUseError {
  return new StoreInUseError(`${dir} is in use by another fitb process (its database is locked); stop that process first`);
}

/** Throws StoreIdentityError for a store (its intact meta values) of a newer format or of another replica. */
function refuseNotOurs(path: string, meta: ReadonlyMap<string, Canonical>, identity: StoreIdentity): void {
  const format = meta.get("format");
  if (typeof format === "number" && format > STORE_FORMAT_VERSION) {
    throw new StoreIdentityError(`${path} has store format ${format}; this fitb reads format ${STORE_FORMAT_VERSION}`);
  }
  const stored = meta.get("identity") as { cluster?: unknown; replica?: unknown } | undefined;
  if (stored !== undefined && (stored.cluster !== identity.cluster || stored.replica !== identity.replica)) {
    throw new StoreIdentityError(
      `${path} belongs to replica ${String(stored.replica)} of cluster ${String(stored.cluster)}, not replica ${identity.replica} of ${identity.cluster}`,
    );
  }
}

/**
 * A meta value of the store in `dir`, read without changing the store: the file is opened
 * read-only, so no store is created and nothing is written to it or to its write-ahead
 * log, which is not folded into the file when the connection closes (SQLite may create an
 * empty log and its shared-memory index beside an existing file, with the file's mode and
 * owner). So damage stays where the open will find it. Null when there is no store yet,
 * no meta table, or the row is damaged. Throws StoreIdentityError for the store of another
 * replica or of a newer format, StoreInUseError while another process holds it, and
 * SQLite's own errors (damage among them) as they come.
 */
export function readMetaOnly(dir: string, identity: StoreIdentity, key: string, disk: Disk = realDisk): Canonical | null {
  const path = join(dir, STORE_FILE);
  const db = disk.openDatabaseReadOnly(path);
  if (db === null) return null;
  try {
    const table = db.query("SELECT 1 AS one FROM sqlite_master WHERE type = 'table' AND name = 'meta'").get();
    if (table === null) return null;
    const rows = db.query("SELECT k, v, sum FROM meta WHERE k IN ('format', 'identity', ?)").all(key) as Row[];
    const meta = new Map<string, Canonical>();
    for (const row of rows) {
      const k = String(row.k);
      const v = blob(row.v);
      if (rowIntact("meta", k, [v], row.sum as Uint8Array)) meta.set(k, decodeCanonical(v));
    }
    refuseNotOurs(path, meta, identity);
    return meta.get(key) ?? null;
  } catch (error) {
    if (isLocked(error)) throw inUse(dir);
    throw error;
  } finally {
    db.close();
  }
}

export class ReplicaStore {
  readonly path: string;
  private readonly db: Database;
  private readonly stmts: Statements;
  private nextCoreId: number;
  private nextUnorderedId: number;
  /**
   * Under `full` on a disk that offers it: the fsync of the write-ahead log, which the
   * group commit runs after `transaction` (index.ts); then `transaction` only writes.
   * Null: `transaction` returns once durable under the sync policy.
   */
  readonly walSync: WalSync | null = null;

  private constructor(
    dir: string,
    sync: SyncPolicy,
    exclusive: boolean,
    private readonly disk: Disk,
  ) {
    this.path = join(dir, STORE_FILE);
    this.db = disk.openDatabase(this.path);
    try {
      // The first write takes the database's lock and keeps it until this process ends
      // (the kernel drops it even on kill -9): a second replica process started on the
      // same data directory is refused instead of writing beside this one.
      if (exclusive) this.db.exec("PRAGMA locking_mode = EXCLUSIVE");
      // Takes effect only when this creates the database; an existing store keeps its size.
      this.db.exec(`PRAGMA page_size = ${STORE_PAGE_BYTES}`);
      this.db.exec("PRAGMA journal_mode = WAL");
      this.db.exec(`PRAGMA wal_autocheckpoint = ${WAL_AUTOCHECKPOINT_PAGES}`);
      // `full` with an overlapped fsync (disk.ts walSync): SQLite writes, the group commit syncs.
      this.walSync = sync === "full" && disk.walSync !== undefined ? disk.walSync(this.path) : null;
      this.db.exec(`PRAGMA synchronous = ${sync === "full" && this.walSync === null ? "FULL" : "NORMAL"}`);
      for (const statement of SCHEMA) this.db.exec(statement);
      for (const index of DROPPED_INDEXES) this.db.exec(`DROP INDEX IF EXISTS ${index}`);
    } catch (error) {
      if (!isLocked(error)) throw error;
      this.db.close();
      throw inUse(dir);
    }
    this.stmts = prepareStatements(this.db);
    this.nextCoreId = num((this.db.query("SELECT COALESCE(MAX(id), 0) AS m FROM core").get() as Row).m) + 1;
    this.nextUnorderedId = num((this.db.query("SELECT COALESCE(MAX(id), 0) AS m FROM unordered").get() as Row).m) + 1;
  }

  /**
   * Opens (creating if needed) the store in `dir`. Throws StoreIdentityError for a store
   * of another replica, and SQLite's own errors for a file it cannot read at all.
   */
  static open(dir: string, sync: SyncPolicy, identity: StoreIdentity, exclusive = true, disk: Disk = realDisk): ReplicaStore {
    const store = new ReplicaStore(dir, sync, exclusive, disk);
    try {
      store.checkIdentity(identity);
      // The tables and the identity written at creation are durable before anything else.
      store.walSync?.now();
    } catch (error) {
      store.close();
      throw error;
    }
    return store;
  }

  private checkIdentity(identity: StoreIdentity): void {
    const rows = this.db.query("SELECT k, v, sum FROM meta").all() as Row[];
    const meta = new Map<string, Canonical>();
    for (const row of rows) {
      const k = String(row.k);
      const v = blob(row.v);
      // A damaged meta row is rewritten below: this replica knows who it is.
      if (rowIntact("meta", k, [v], row.sum as Uint8Array)) meta.set(k, decodeCanonical(v));
    }
    refuseNotOurs(this.path, meta, identity);
    const given = identity.executionConfig;
    if (given !== undefined) {
      const differing = differingSections(meta.get(EXECUTION_CONFIG_META), given);
      if (differing.length > 0) {
        throw new StoreIdentityError(
          `${this.path} was written under a cluster file with other ${differing.join(", ")}. ` +
            "These are fixed for a cluster's life: a replica executes its decided history again at each start with the file it has, " +
            "so under other values it could judge an earlier command otherwise than the group and diverge. " +
            "Put back the values this data directory was written under (the other replicas' files), or start a new cluster",
        );
      }
    }
    this.putMeta("format", STORE_FORMAT_VERSION);
    this.putMeta("identity", { cluster: identity.cluster, replica: identity.replica });
    if (given !== undefined) this.putMeta(EXECUTION_CONFIG_META, { ...given });
  }

  /** A meta value (null when absent or damaged): what the runtime keeps beside the identity (the epoch start). */
  meta(k: string): Canonical | null {
    const row = this.db.query("SELECT v, sum FROM meta WHERE k = ?").get(k) as Row | null;
    if (row === null) return null;
    const v = blob(row.v);
    return rowIntact("meta", k, [v], row.sum as Uint8Array) ? decodeCanonical(v) : null;
  }

  deleteMeta(k: string): void {
    this.stmts.deleteMeta.run(k);
  }

  putMeta(k: string, value: Canonical): void {
    const v = encodeCanonical(value);
    this.stmts.putMeta.run(k, v, rowChecksum("meta", k, [v]));
  }

  /** SQLite's structural check of every page; null when the file is sound. */
  quickCheck(): string | null {
    const rows = this.db.query("PRAGMA quick_check").all() as Row[];
    const problems = rows.map((row) => String(Object.values(row)[0])).filter((text) => text !== "ok");
    return problems.length === 0 ? null : problems.slice(0, 4).join("; ");
  }

  /** Runs `fn` in one transaction: all of its writes become durable together, or none. */
  transaction(fn: () => void): void {
    this.disk.commit(this.db, fn);
    this.walSync?.now();
  }

  /**
   * Runs `fn` in one transaction that is written but, with `walSync`, not yet durable: the
   * group commit (index.ts) makes it durable with `walSync` before anything depends on it.
   * Without `walSync`, the same as `transaction`.
   */
  transactionWritten(fn: () => void): void {
    this.disk.commit(this.db, fn);
  }

  /**
   * Folds the write-ahead log into the database file and closes it (a clean stop). The
   * database is closed even when the fold fails (a full disk: SQLITE_FULL), and the error
   * thrown then: what was committed stays in the write-ahead log, which the next open reads.
   */
  close(): void {
    let failure: unknown = null;
    try {
      this.db.exec("PRAGMA wal_checkpoint(TRUNCATE)");
    } catch (error) {
      failure = error;
    }
    for (const statement of Object.values(this.stmts)) statement.finalize();
    this.db.close();
    this.walSync?.close();
    if (failure !== null) throw failure;
  }

  // -----------------------------------------------------------------------------------
  // Writes (callers group them into transactions)
  // -----------------------------------------------------------------------------------

  insertCore(kind: string, seq: number, rec: Uint8Array): number {
    const id = this.nextCoreId++;
    this.stmts.insertCore.run(id, kind, seq, rec, rowChecksum("core", [id, kind, seq], [rec]));
    return id;
  }

  /** Deletes `kind` rows with seq <= `seq`. */
  deleteCoreUpTo(kind: string, seq: number): void {
    this.stmts.deleteCoreKindUpTo.run(kind, seq);
  }

  /** Deletes `kind` rows with seq < `seq`. */
  deleteCoreBelow(kind: string, seq: number): void {
    this.stmts.deleteCoreKindSeqBelow.run(kind, seq);
  }

  /** Deletes `kind` rows written before row `id`. */
  deleteCoreOlderThan(kind: string, id: number): void {
    this.stmts.deleteCoreKindBelowId.run(kind, id);
  }

  deleteCoreRow(id: number): void {
    this.stmts.deleteCoreId.run(id);
  }

  insertDecided(seq: number, rec: Uint8Array): void {
    this.stmts.insertDecided.run(seq, rec, rowChecksum("decided", seq, [rec]));
  }

  deleteDecidedUpTo(seq: number): void {
    this.stmts.deleteDecidedUpTo.run(seq);
  }

  /** Deletes at most `limit` decided rows at or below `seq`, lowest first; returns how many went. */
  deleteDecidedUpToLimit(seq: number, limit: number): number {
    return this.stmts.deleteDecidedUpToLimit.run(seq, limit).changes;
  }

  deleteDecidedFrom(seq: number): void {
    this.stmts.deleteDecidedFrom.run(seq);
  }

  /**
   * Stores a batch under its digest (replacing the row when it is named at a higher seq).
   * `digest` is the SHA-256 of `data` (a batch's digest is that of its canonical encoding),
   * so the row's checksum takes it instead of hashing the batch again.
   */
  putBatch(digest: Uint8Array, seq: number, data: Uint8Array): void {
    this.stmts.putBatch.run(digest, seq, data, rowChecksumOfDigest("batch", [digest, seq], digest, []));
  }

  /**
   * Deletes at most `limit` of the batches no record at a seq above `seq` names (their
   * seq is at or below it), lowest first; returns how many went.
   */
  deleteBatchesUpToLimit(seq: number, limit: number): number {
    return this.stmts.deleteBatchesUpToLimit.run(seq, limit).changes;
  }

  deleteBatchRow(id: number): void {
    this.stmts.deleteBatchId.run(id);
  }

  putHead(seq: number, head: Uint8Array): void {
    this.stmts.putHead.run(seq, head, rowChecksum("snap_head", seq, [head]));
  }

  insertPart(seq: number, part: number, data: Uint8Array): void {
    this.stmts.insertPart.run(seq, part, data, rowChecksum("snap_part", [seq, part], [data]));
  }

  /** Deletes a snapshot: its head and every part. */
  deleteSnapshot(seq: number): void {
    this.stmts.deleteHead.run(seq);
    this.stmts.deleteParts.run(seq);
  }

  /** Deletes the parts of snapshot `seq` from `part` on (an interrupted transfer resumes there). */
  deletePartsFrom(seq: number, part: number): void {
    this.stmts.deletePartsFrom.run(seq, part);
  }

  /** Stores an unordered event's request; `bodyDigest` is the SHA-256 of `body` (the checksum takes it instead of hashing the body again). */
  insertUnordered(tag: string, gen: number, ts: number, body: Uint8Array, sig: Uint8Array, bodyDigest: Uint8Array): number {
    const id = this.nextUnorderedId++;
    this.stmts.insertUnordered.run(id, tag, gen, ts, body, sig, rowChecksumOfDigest("unordered", [id, tag, gen, ts], bodyDigest, [sig]));
    return id;
  }

  /** Deletes the `count` oldest rows of a channel (retention removes oldest first); returns how many it deleted. */
  deleteUnorderedOldest(tag: string, gen: number, count: number): number {
    return this.stmts.deleteUnorderedOldest.run(tag, gen, count).changes;
  }

  /** Deletes every publisher floor of an unordered channel (tag and generation). */
  deleteUnorderedFloorsOf(tag: string, gen: number): void {
    this.stmts.deleteUnorderedFloorsOf.run(tag, gen);
  }

  /**
   * The unordered channels (tag and generation) the store holds rows or floors of, each
   * once, in tag order: an index seek per channel, whatever the number of rows.
   */
  unorderedChannelsStored(): { readonly tag: string; readonly gen: number }[] {
    const found = new Map<string, { readonly tag: string; readonly gen: number }>();
    const walk = (first: Statement, next: Statement): void => {
      for (let r = first.get() as Row | null; r !== null; r = next.get(r.tag, r.gen) as Row | null) {
        const channel = { tag: String(r.tag), gen: num(r.gen) };
        found.set(`${channel.gen}:${channel.tag}`, channel);
      }
    };
    walk(this.stmts.firstUnorderedChannel, this.stmts.nextUnorderedChannel);
    walk(this.stmts.firstFloorChannel, this.stmts.nextFloorChannel);
    return [...found.values()];
  }

  deleteUnorderedRow(id: number): void {
    this.stmts.deleteUnorderedId.run(id);
  }

  /** Raises a publisher's floor on an unordered channel to `seq` (never lowers it). */
  raiseUnorderedFloor(tag: string, gen: number, publisher: Uint8Array, seq: number): void {
    this.stmts.raiseUnorderedFloor.run(tag, gen, publisher, seq, rowChecksum("unordered_floor", [tag, gen, seq], [publisher]));
  }

  deleteUnorderedFloorRow(id: number): void {
    this.stmts.deleteUnorderedFloorId.run(id);
  }

  // -----------------------------------------------------------------------------------
  // Reads: every row is checked against its sum before it is handed out
  // -----------------------------------------------------------------------------------

  *coreRows(): Generator<Checked<CoreRow>> {
    for (const r of this.db.query("SELECT id, kind, seq, rec, sum FROM core ORDER BY id").iterate() as IterableIterator<Row>) {
      const row: CoreRow = { id: num(r.id), kind: String(r.kind), seq: num(r.seq), rec: blob(r.rec) };
      if (rowIntact("core", [row.id, row.kind, row.seq], [row.rec], r.sum as Uint8Array)) yield { ok: true, row };
      else
        yield {
          ok: false,
          corrupt: { table: "core", ids: [row.id], key: `id ${row.id} (${row.kind} ${row.seq})`, reason: "checksum mismatch" },
        };
    }
  }

  /** Decided rows with seq >= `from`, in seq order. */
  *decidedRows(from: number): Generator<Checked<DecidedRow>> {
    const query = this.db.query("SELECT seq, rec, sum FROM decided WHERE seq >= ? ORDER BY seq");
    for (const r of query.iterate(from) as IterableIterator<Row>) {
      const row: DecidedRow = { seq: num(r.seq), rec: blob(r.rec) };
      if (rowIntact("decided", row.seq, [row.rec], r.sum as Uint8Array)) yield { ok: true, row };
      else yield { ok: false, corrupt: { table: "decided", ids: [row.seq], key: `seq ${row.seq}`, reason: "checksum mismatch" } };
    }
  }

  /** The seqs of the decided rows from `from` on, in order (no payload is read). */
  *decidedSeqs(from: number): Generator<number> {
    const query = this.db.query("SELECT seq FROM decided WHERE seq >= ? ORDER BY seq");
    for (const r of query.iterate(from) as IterableIterator<Row>) yield num(r.seq);
  }

  /** The lowest and highest decided seq stored, and the count; null when there is none. */
  decidedRange(): { readonly first: number; readonly last: number; readonly count: number } | null {
    const r = this.db.query("SELECT MIN(seq) AS lo, MAX(seq) AS hi, COUNT(*) AS n FROM decided").get() as Row;
    return r.lo === null ? null : { first: num(r.lo), last: num(r.hi), count: num(r.n) };
  }

  /** The batch stored under `digest`, checked; null when there is none. */
  batch(digest: Uint8Array): Checked<BatchRow> | null {
    const r = this.stmts.readBatch.get(digest) as Row | null;
    return r === null ? null : this.checkBatch(r);
  }

  /**
   * The bytes stored under `digest`, unchecked; null when there is none. For a reader
   * that checks them against the digest itself (content addressing is the stronger check).
   */
  batchData(digest: Uint8Array): Uint8Array | null {
    const r = this.stmts.readBatchData.get(digest) as Row | null;
    return r === null ? null : blob(r.data);
  }

  *batchRows(): Generator<Checked<BatchRow>> {
    const query = this.db.query("SELECT id, digest, seq, data, sum FROM batch ORDER BY id");
    for (const r of query.iterate() as IterableIterator<Row>) yield this.checkBatch(r);
  }

  /** Every stored batch's id, digest, seq and size (no payload is read). */
  batchIndex(): { readonly id: number; readonly digest: Uint8Array; readonly seq: number; readonly bytes: number }[] {
    const rows = this.db.query("SELECT id, digest, seq, length(data) AS n FROM batch").all() as Row[];
    return rows.map((r) => ({ id: num(r.id), digest: blob(r.digest), seq: num(r.seq), bytes: num(r.n) }));
  }

  private checkBatch(r: Row): Checked<BatchRow> {
    const row: BatchRow = { id: num(r.id), digest: blob(r.digest), seq: num(r.seq), data: blob(r.data) };
    if (rowIntact("batch", [row.digest, row.seq], [row.data], r.sum as Uint8Array)) return { ok: true, row };
    return { ok: false, corrupt: { table: "batch", ids: [row.id], key: `batch ${row.id} (seq ${row.seq})`, reason: "checksum mismatch" } };
  }

  *heads(): Generator<Checked<{ readonly seq: number; readonly head: Uint8Array }>> {
    for (const r of this.db.query("SELECT seq, head, sum FROM snap_head ORDER BY seq").iterate() as IterableIterator<Row>) {
      const row = { seq: num(r.seq), head: blob(r.head) };
      if (rowIntact("snap_head", row.seq, [row.head], r.sum as Uint8Array)) yield { ok: true, row };
      else yield { ok: false, corrupt: { table: "snap_head", ids: [row.seq], key: `seq ${row.seq}`, reason: "checksum mismatch" } };
    }
  }

  /** One part of snapshot `seq`; null when it is not stored. */
  part(seq: number, part: number): Checked<PartRow> | null {
    const r = this.stmts.readPart.get(seq, part) as Row | null;
    if (r === null) return null;
    return this.checkPart(r);
  }

  /** The parts of snapshot `seq` in order (a gap shows as a missing part number). */
  *parts(seq: number): Generator<Checked<PartRow>> {
    const query = this.db.query("SELECT seq, part, data, sum FROM snap_part WHERE seq = ? ORDER BY part");
    for (const r of query.iterate(seq) as IterableIterator<Row>) yield this.checkPart(r);
  }

  /** Every snapshot seq that has parts stored, with their count. */
  partSeqs(): { readonly seq: number; readonly count: number }[] {
    const rows = this.db.query("SELECT seq, COUNT(*) AS n FROM snap_part GROUP BY seq").all() as Row[];
    return rows.map((r) => ({ seq: num(r.seq), count: num(r.n) }));
  }

  private checkPart(r: Row): Checked<PartRow> {
    const row: PartRow = { seq: num(r.seq), part: num(r.part), data: blob(r.data) };
    if (rowIntact("snap_part", [row.seq, row.part], [row.data], r.sum as Uint8Array)) return { ok: true, row };
    return {
      ok: false,
      corrupt: { table: "snap_part", ids: [row.seq, row.part], key: `seq ${row.seq} part ${row.part}`, reason: "checksum mismatch" },
    };
  }

  /** The unordered rows in the order they were stored: every one, or those of one channel (tag and generation). */
  *unorderedRows(of?: { readonly tag: string; readonly gen: number }): Generator<Checked<UnorderedRow>> {
    const columns = "SELECT id, tag, gen, ts, body, sig, sum FROM unordered";
    const rows =
      of === undefined
        ? this.db.query(`${columns} ORDER BY id`).iterate()
        : this.db.query(`${columns} WHERE tag = ? AND gen = ? ORDER BY id`).iterate(of.tag, of.gen);
    for (const r of rows as IterableIterator<Row>) {
      const row: UnorderedRow = { id: num(r.id), tag: String(r.tag), gen: num(r.gen), ts: num(r.ts), body: blob(r.body), sig: blob(r.sig) };
      if (rowIntact("unordered", [row.id, row.tag, row.gen, row.ts], [row.body, row.sig], r.sum as Uint8Array)) yield { ok: true, row };
      else
        yield { ok: false, corrupt: { table: "unordered", ids: [row.id], key: `id ${row.id} (${row.tag})`, reason: "checksum mismatch" } };
    }
  }

  /** The publishers' floors of unordered channels: every one, or those of one channel (tag and generation). */
  *unorderedFloorRows(of?: { readonly tag: string; readonly gen: number }): Generator<Checked<UnorderedFloorRow>> {
    const columns = "SELECT id, tag, gen, publisher, seq, sum FROM unordered_floor";
    const rows =
      of === undefined
        ? this.db.query(`${columns} ORDER BY id`).iterate()
        : this.db.query(`${columns} WHERE tag = ? AND gen = ? ORDER BY id`).iterate(of.tag, of.gen);
    for (const r of rows as IterableIterator<Row>) {
      const row: UnorderedFloorRow = { id: num(r.id), tag: String(r.tag), gen: num(r.gen), publisher: blob(r.publisher), seq: num(r.seq) };
      if (rowIntact("unordered_floor", [row.tag, row.gen, row.seq], [row.publisher], r.sum as Uint8Array)) yield { ok: true, row };
      else
        yield {
          ok: false,
          corrupt: { table: "unordered_floor", ids: [row.id], key: `id ${row.id} (${row.tag})`, reason: "checksum mismatch" },
        };
    }
  }

  /** Bytes of the database file and its write-ahead log, for metrics. */
  sizeBytes(): number {
    const r = this.db.query("SELECT page_count * page_size AS bytes FROM pragma_page_count(), pragma_page_size()").get() as Row;
    return num(r.bytes);
  }
}

/**
 * The sections of `given` whose digest differs from the stored one. A store without a
 * stored record (written by an older version, or the row damaged and so dropped) has
 * nothing to compare: it takes the file's.
 */
function differingSections(stored: Canonical | undefined, given: Readonly<Record<string, Uint8Array>>): string[] {
  if (stored === undefined || stored === null || typeof stored !== "object" || stored instanceof Uint8Array || Array.isArray(stored))
    return [];
  const record = stored as Record<string, Canonical>;
  return Object.keys(given).filter((name) => {
    const was = record[name];
    return was instanceof Uint8Array && !bytesEqual(was, given[name] as Uint8Array);
  });
}
