/**
 * A replica's durable storage (src/README.md §5): the ordering core's records, the decided log
 * (one row per decided batch), base snapshots of the channel state machine, snapshots
 * arriving by state transfer, and the replica's own store of unordered channels, in one
 * bun:sqlite database in WAL mode under the data directory.
 *
 * Writes are staged and committed once per event-loop turn (group-commit.ts); effects
 * that depend on them are deferred until the commit is durable. Every row is checksummed;
 * at open the whole store is scanned, and a damaged row is reported (a JSON log line and
 * the `storage_corrupt_rows_total` metric) and deleted, never served. A file SQLite cannot
 * read at all is moved aside into `quarantine/` and the replica starts empty. Either way
 * what was lost comes back from the other replicas: decisions inside the log window by
 * the core's own catch-up, anything older by state transfer (state-transfer.ts).
 */
import { FatalError, type FatalHandler, throwFatal } from "../fatal.ts";
import { statSync } from "node:fs";
import { join } from "node:path";
import type { PersistedRecord } from "../../core/ordering/types.ts";
import type { PublisherFloor } from "../../core/channels/types.ts";
import type { Member, Membership } from "../../core/channels/membership.ts";
import type { Log } from "../log.ts";
import type { Metrics } from "../metrics.ts";
import type { Canonical } from "../../../wire/canonical.ts";
import { type Disk, realDisk } from "./disk.ts";
import { GroupCommit } from "./group-commit.ts";
import { toHex } from "../../crypto/encoding.ts";
import {
  type BatchLookup,
  type DecidedRecord,
  decodeBatch,
  decodeHead,
  encodeHead,
  encodeRecord,
  readDecided,
  recordBatch,
  recordSeq,
  type SnapshotHead,
} from "./records.ts";
import { type Checkpoint, validateCheckpointProof, withBatchEncoding } from "../../core/ordering/messages.ts";
import { type Checked, type CorruptRow, ReplicaStore, readMetaOnly, STORE_FILE, type StoreIdentity, type SyncPolicy } from "./store.ts";

export { DEFAULT_SYNC_POLICY, SYNC_POLICIES, type SyncPolicy, StoreIdentityError } from "./store.ts";
export type { SnapshotHead } from "./records.ts";

/** The directory under which each damaged database is moved into a directory of its own, named by the time. */
export const QUARANTINE_DIR = "quarantine";
/** Quarantined copies kept; the oldest beyond these are removed when another is moved aside. */
export const QUARANTINE_KEPT = 3;
/** Where the copy an earlier version left directly in `quarantine/` goes (it sorts before any time). */
const QUARANTINE_UNDATED = "0-undated";
/** Corrupt rows logged one by one at open; past this only the count is logged. */
export const CORRUPT_ROWS_LOGGED_MAX = 16;
/** Exit status when a commit fails: nothing acknowledged may depend on it (EX_IOERR). */
export const EXIT_STORAGE_FAILED = 74;
/** The meta row a clean stop sets (true) and the next open clears (false). */
export const STOPPED_CLEAN_META = "stopped_clean";
/**
 * The meta row set (true) once this store is known to have lost records, and deleted when
 * the ordering core's lost-records fence ends (clearLostVotes): a restart before then is
 * fenced again, not only by the ordinary restart fence (core/ordering/PROTOCOL.md §2).
 */
export const LOST_VOTES_META = "lost_votes";

/**
 * Rows a new base or pruning left behind (decided rows at or below the base, batch rows
 * no record names) are deleted at most this many per commit, in commits of later turns,
 * not all in the commit that left them: 7,000 decided rows and their batches (a base at
 * 2,000 ev/s) took 25-45 ms to delete at once, a stall for every request in flight. A
 * slice of 128 takes 0.1-0.5 ms; the 111 slices of those rows take about 70 ms in all
 * (each commit rewrites the pages it touched), spread over as many commits.
 */
export const TRIM_ROWS_PER_COMMIT = 128;

export interface StorageOptions {
  readonly dir: string;
  readonly sync: SyncPolicy;
  readonly cluster: string;
  readonly replica: number;
  /** The cluster file's sections execution reads, checked against the store's (StoreIdentity). */
  readonly executionConfig?: StoreIdentity["executionConfig"];
  readonly log: Log;
  readonly metrics: Metrics;
  /**
   * Whether this process holds the database's lock for its whole life (default true: one
   * replica process per data directory). Only tests that change the file under a running
   * store, to play a disk that went bad, turn it off.
   */
  readonly exclusive?: boolean;
  /** What to do when a commit fails (fatal.ts); thrown by default. */
  readonly onFatal?: FatalHandler;
  /** The file system (disk.ts); the real one by default, a simulated one in the simulator. */
  readonly disk?: Disk;
  /** Schedules the group commit, and the trim slices, after the event-loop turn (setImmediate by default; ports.ts Clock.afterTurn). */
  readonly afterTurn?: (run: () => void) => void;
  /** Wall-clock time in ms, for the names of quarantined copies (Date.now by default; the simulator's own clock there). */
  readonly now?: () => number;
}

/** Decided rows and bytes written since the current base snapshot (restart replays them). */
export interface SinceBase {
  rows: number;
  bytes: number;
}

/** Where a membership epoch's core starts: the checkpoint seq and its state digest. */
export type EpochStart = { readonly epoch: number; readonly seq: number; readonly digest: Uint8Array };

/** The stable proof of the checkpoint where an epoch ended (ordering-driver.ts switchProofs). */
export type SwitchProof = { readonly epoch: number; readonly seq: number; readonly digest: Uint8Array; readonly proof: Checkpoint[] };
/** The group a replica joined (not from its cluster file) and the start of the epoch it joined. */
export type JoinedRecord = {
  readonly membership: Membership;
  readonly start: { readonly seq: number; readonly digest: Uint8Array };
};

/**
 * The group the replica of data directory `dir` joined (stageJoined), or null: none, or
 * unreadable. Opens the store briefly (no row scan); it is refused like any open when
 * another process holds it or it belongs to another replica.
 */
export function readJoined(dir: string, cluster: string, replica: number, disk: Disk = realDisk): JoinedRecord | null {
  const v = metaBeforeStart(dir, cluster, replica, disk, "joined") as {
    epoch?: unknown;
    f?: unknown;
    members?: unknown;
    seq?: unknown;
    digest?: unknown;
  } | null;
  if (v === null || typeof v !== "object") return null;
  const { epoch, f, members, seq, digest } = v;
  if (typeof epoch !== "number" || typeof f !== "number" || typeof seq !== "number" || !(digest instanceof Uint8Array)) return null;
  if (!Array.isArray(members)) return null;
  const list: Member[] = [];
  for (const m of members as { id?: unknown; host?: unknown; port?: unknown; peerPort?: unknown; key?: unknown }[]) {
    if (typeof m.id !== "number" || typeof m.host !== "string" || typeof m.port !== "number" || !(m.key instanceof Uint8Array)) return null;
    list.push({ id: m.id, host: m.host, port: m.port, peerPort: typeof m.peerPort === "number" ? m.peerPort : null, key: m.key });
  }
  return { membership: { epoch, f, members: list }, start: { seq, digest } };
}

/**
 * The epoch the replica of data directory `dir` runs in and where it started (as
 * `ReplicaStorage.epochStart`), or null: epoch 0, or a new directory. Opens the store
 * briefly like readJoined. A replica started from a cluster file of a later epoch
 * (`fitb cluster export`) resumes from its directory only when it holds a later epoch.
 */
export function readEpochStart(dir: string, cluster: string, replica: number, disk: Disk = realDisk): EpochStart | null {
  return epochStartOf(metaBeforeStart(dir, cluster, replica, disk, "epoch"));
}

/**
 * A meta value of the store of `dir`, read before the replica starts; null when there is
 * none or the store is damaged. It is read without writing anything (`readMetaOnly`: no
 * store is created, and the write-ahead log is not folded into the file), so damage is
 * left for `ReplicaStorage.open` to find, move aside and fence. An emptied file is not
 * read at all, and damage met while reading is no reason to stop the start.
 */
function metaBeforeStart(dir: string, cluster: string, replica: number, disk: Disk, key: string): unknown {
  try {
    refuseEmptiedFile(disk, dir);
    return readMetaOnly(dir, { cluster, replica }, key, disk);
  } catch (error) {
    if (isDamage(error)) return null;
    throw error;
  }
}

function epochStartOf(meta: unknown): EpochStart | null {
  const value = meta as { epoch?: unknown; seq?: unknown; digest?: unknown } | null;
  if (value === null || typeof value !== "object") return null;
  const { epoch, seq, digest } = value;
  if (typeof epoch !== "number" || typeof seq !== "number" || !(digest instanceof Uint8Array)) return null;
  return { epoch, seq, digest };
}

export class ReplicaStorage {
  readonly commits: GroupCommit;
  /** Rows found damaged at open (deleted since); for the start-up report. */
  readonly corruptAtOpen: readonly CorruptRow[];
  /** Whether the database file was unreadable and the replica starts empty. */
  readonly quarantined: boolean;
  readonly sinceBase: SinceBase = { rows: 0, bytes: 0 };
  private closed = false;
  /**
   * The batch rows as they stand once every staged write has run: hex digest -> the
   * highest seq a record names the batch at, and its size. A record whose batch is here
   * is written by reference alone.
   */
  private readonly batches = new Map<string, { seq: number; bytes: number }>();
  /**
   * The highest stable seq whose accept and prepared rows were deleted, and the highest
   * base seq whose decided rows were, since this store was opened. A batch named at no
   * seq above both is named by no row any more (see persist) and is deleted.
   */
  private prunedVotesTo = 0;
  private prunedDecidedTo = 0;
  private batchesPrunedTo = 0;
  /** Decided and batch rows at or below these are deleted a slice at a time (trimRows). */
  private trimDecidedTo = 0;
  private trimBatchesTo = 0;
  /** A slice is staged and not yet run. */
  private trimStaged = false;
  /** The last slice deleted all it could: more rows may be left. */
  private trimBacklog = false;
  /**
   * Unordered channels that no longer exist (destroyed, or gone from a state a transfer
   * installed) whose rows are still in the store, keyed `gen:tag`, with the rows deleted
   * so far: deleted a slice at a time (trimRows), their floors with the last slice.
   */
  private readonly goneUnordered = new Map<string, { readonly tag: string; readonly gen: number; rows: number }>();

  /** The data directory. */
  get dir(): string {
    return this.options.dir;
  }

  /** The database file's device and inode at open (on a real disk), to tell it was removed or replaced since. */
  private readonly fileIdentity: FileIdentity | null;

  private constructor(
    readonly store: ReplicaStore,
    private readonly options: StorageOptions,
    corrupt: readonly CorruptRow[],
    quarantined: boolean,
  ) {
    this.corruptAtOpen = corrupt;
    this.quarantined = quarantined;
    this.fileIdentity = (options.disk ?? realDisk) === realDisk ? fileIdentityOf(join(options.dir, STORE_FILE)) : null;
    this.markerFound = takeStopMarker(store, options);
    this.lostVotesStored = store.meta(LOST_VOTES_META) === true;
    this.lostVotesAtOpen = this.lostVotesStored;
    // Written with the loss itself (scanAndDelete, the quarantine above); made durable here under `normal` too.
    if (corrupt.some(mayHoldVotes) || quarantined) {
      this.lostVotesStored = false;
      this.storeLostVotes();
    }
    this.commits = new GroupCommit({
      commit: (writes) =>
        this.store.transactionWritten(() => {
          for (const write of writes) write();
        }),
      onFailure: (error) => this.fail(error),
      ...(store.walSync === null ? {} : { sync: store.walSync }),
      ...(options.afterTurn === undefined ? {} : { schedule: options.afterTurn }),
      onCommit: (writes, ms) => {
        options.metrics.inc("storage_commits_total");
        options.metrics.inc("storage_writes_total", writes);
        options.metrics.storageCommit.observe(ms / 1000);
      },
    });
    for (const row of store.batchIndex()) this.batches.set(toHex(row.digest), { seq: row.seq, bytes: row.bytes });
    options.metrics.gauge("storage_pending_writes", () => this.commits.pendingWrites);
    options.metrics.gauge("storage_file_bytes", () => (this.closed ? 0 : this.store.sizeBytes()));
    const disk = options.disk ?? realDisk;
    if (disk.freeBytes !== undefined) {
      const freeBytes = disk.freeBytes.bind(disk);
      options.metrics.gauge("storage_disk_free_bytes", () => {
        try {
          return freeBytes(options.dir);
        } catch {
          return -1;
        }
      });
    }
  }

  /**
   * Opens the store in `dir`, checking the file and every row. Throws StoreIdentityError
   * when the directory belongs to another replica.
   */
  static open(options: StorageOptions): ReplicaStorage {
    const disk = options.disk ?? realDisk;
    disk.makeDir(options.dir);
    const identity = {
      cluster: options.cluster,
      replica: options.replica,
      ...(options.executionConfig === undefined ? {} : { executionConfig: options.executionConfig }),
    };
    let store: ReplicaStore | null = null;
    let corrupt: CorruptRow[] = [];
    let quarantined = false;
    try {
      refuseEmptiedFile(disk, options.dir);
      store = ReplicaStore.open(options.dir, options.sync, identity, options.exclusive ?? true, disk);
      const structural = store.quickCheck();
      if (structural !== null) throw new StructuralDamage(`SQLite integrity check failed: ${structural}`);
      corrupt = scanAndDelete(store);
    } catch (error) {
      // Only damage moves the file aside; a permission or I/O problem must not cost a
      // healthy replica its data, so it stops the start instead.
      if (!isDamage(error)) throw error;
      closeQuietly(store);
      quarantined = true;
      const moved = quarantine(disk, options.dir, options.log, new Date((options.now ?? Date.now)()));
      reportCorruption(options, [
        { table: "*", ids: [], key: STORE_FILE, reason: `unreadable (${(error as Error).message}); moved to ${moved}` },
      ]);
      store = ReplicaStore.open(options.dir, options.sync, identity, options.exclusive ?? true, disk);
      // At once (storeLostVotes makes it durable): a crash from here on leaves the fence asked
      // for. One between the move and this write starts the new store unfenced (not closed).
      store.transaction(() => (store as ReplicaStore).putMeta(LOST_VOTES_META, true));
    }
    if (corrupt.length > 0) reportCorruption(options, corrupt);
    return new ReplicaStorage(store, options, corrupt, quarantined);
  }

  /** Commits everything staged and closes the database (a clean stop). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.commits.close();
    // Everything staged is durable now, the records of every message sent included. A run
    // that lost records says nothing of the votes it sent before: its clean stop must not
    // lift the next start's fence, so it leaves no marker.
    if (!this.lostRecords) {
      try {
        this.store.transaction(() => this.store.putMeta(STOPPED_CLEAN_META, true));
      } catch (error) {
        // No marker: the next start fences its votes, as after a crash.
        try {
          this.store.close();
        } catch {}
        return this.failClose(error);
      }
    }
    try {
      this.store.close();
    } catch (error) {
      return this.failClose(error);
    }
  }

  /**
   * Stops the replica (its fatal handler, EX_IOERR) when the database file it writes was
   * removed or replaced since it opened it (`rm -rf` of the data directory, a restore over
   * it): its writes went to a file no later start would read, so every acknowledgement from
   * then on would rest on nothing. Called every second or so; one stat.
   */
  checkInPlace(): void {
    if (this.closed || this.fileIdentity === null) return;
    const file = join(this.options.dir, STORE_FILE);
    const now = fileIdentityOf(file);
    if (now !== null && now.dev === this.fileIdentity.dev && now.ino === this.fileIdentity.ino) return;
    const what = now === null ? "removed" : "replaced by another file";
    this.options.log.error("the data directory's database was removed or replaced under the running replica; stopping", { file, what });
    (this.options.onFatal ?? throwFatal)(new FatalError(EXIT_STORAGE_FAILED, `the database ${file} was ${what} while the replica ran`));
  }

  /** The clean stop could not finish (a full disk): said, and the process ends with EX_IOERR rather than hang or exit 0. */
  private failClose(error: unknown): never {
    this.options.log.error("storage could not be closed cleanly; the next start recovers what was committed from the write-ahead log", {
      error: (error as Error).message,
    });
    return (this.options.onFatal ?? throwFatal)(new FatalError(EXIT_STORAGE_FAILED, `storage close failed: ${(error as Error).message}`));
  }

  /**
   * The last run ended with a clean stop (close) and nothing was lost since: every record
   * it wrote is here, so the ordering core needs no restart fence (core/ordering/PROTOCOL.md
   * §2, "Votes sent before their fsync"). Read after recovery, which may find damage too.
   */
  get stoppedClean(): boolean {
    return this.markerFound && !this.lostRecords;
  }

  /**
   * Records were lost: damaged rows were dropped or the file moved aside at open, or
   * recovery (or a read since) found damage, or an earlier run lost them and was stopped
   * before its core's fence ended (LOST_VOTES_META). The core then fences every view, since
   * the records that bound its ordinary fence may be among those lost (CoreConfig.lostRecords).
   */
  get lostRecords(): boolean {
    return this.corruptAtOpen.some(mayHoldVotes) || this.quarantined || this.damageReported || this.lostVotesAtOpen;
  }

  /**
   * The ordering core's lost-records fence has ended (it installed a view it knows it
   * never voted in: core fence.ts): the next start need not fence every view again. The
   * row goes with the next commit; a crash before it fences once more, which is safe. This
   * run stays one that lost records (no clean-stop marker at its close).
   */
  clearLostVotes(): void {
    if (!this.lostVotesStored || this.closed) return;
    this.lostVotesStored = false;
    this.commits.stage(() => this.store.deleteMeta(LOST_VOTES_META));
  }

  /**
   * Stores that records were lost, durably, before anything can vote: what loses records
   * (damage at open, quarantine, damage found later) calls this.
   */
  private storeLostVotes(): void {
    if (this.lostVotesStored) return;
    this.lostVotesStored = true;
    this.store.transaction(() => this.store.putMeta(LOST_VOTES_META, true));
    if (this.options.sync === "normal") syncLogNow(this.store, this.options.disk ?? realDisk);
  }

  /** The row LOST_VOTES_META is in the store (or staged to be). */
  private lostVotesStored: boolean;
  /** An earlier run lost records and its core's fence had not ended (LOST_VOTES_META at open). */
  private readonly lostVotesAtOpen: boolean;

  /** The clean-stop marker was set at open (and has been cleared durably since). */
  private readonly markerFound: boolean;
  /** Damage was reported after open (reportCorrupt). */
  private damageReported = false;

  /** Runs `effect` once every write staged so far is durable, or the first `mark` writes (a `stagedMark` taken earlier). */
  afterDurable(effect: () => void, mark?: number): void {
    this.commits.defer(effect, mark);
  }

  /** Runs `effect` once the first `mark` writes are durable, not waiting for effects deferred before it (GroupCommit.deferAhead). */
  afterDurableAhead(effect: () => void, mark: number): void {
    this.commits.deferAhead(effect, mark);
  }

  /** For a timer: makes durable the writes that no effect has waited for since the previous call (GroupCommit.syncIdle). */
  syncIdle(): void {
    if (!this.closed) this.commits.syncIdle();
  }

  /** Writes staged ever: a mark for `afterDurable`. */
  get stagedMark(): number {
    return this.commits.stagedCount;
  }

  /**
   * The stored decisions from `from` on, in seq order, read as they are taken. Ends
   * before the first seq not stored: below the base (trimmed), not committed yet, or a
   * row or batch that does not read back (left for the next open, which reports and
   * deletes it; a start replays up to it only). Serves a peer catching up from an older
   * state (the core's `serveDecided`).
   */
  *decisionsFrom(from: number): Generator<DecidedRecord> {
    const store = this.store;
    const batches: BatchLookup = (digest) => {
      const data = store.batchData(digest);
      if (data === null) return "batch missing";
      return decodeBatch(digest, data) ?? "batch does not match its digest";
    };
    let expected = from;
    for (const checked of store.decidedRows(from)) {
      if (!checked.ok || checked.row.seq !== expected) return;
      const read = readDecided(checked.row.rec, checked.row.seq, batches);
      if (!read.ok) return;
      yield read.record;
      expected++;
    }
  }

  /** Reports damage found while running (at read), with the same log line and metric as at open. */
  reportCorrupt(rows: readonly CorruptRow[]): void {
    if (rows.some(mayHoldVotes)) {
      this.damageReported = true;
      // The running core is not fenced by this: the next start is, until its fence ends.
      try {
        if (!this.closed) this.storeLostVotes();
      } catch (error) {
        this.fail(error);
      }
    }
    reportCorruption(this.options, rows);
  }

  // -----------------------------------------------------------------------------------
  // The ordering core's records
  // -----------------------------------------------------------------------------------

  /**
   * Stages one record of the core's `persist` output. Decisions go to the decided log;
   * the rest to the core table, where a stable checkpoint prunes what a restart no
   * longer needs (the same rule as compactRecords in src/core/ordering/persist.ts).
   *
   * A record's batch is written once, to the batch table, and the record names it by
   * digest (records.ts). The batch row carries the highest seq any record names it at;
   * it is deleted once that seq is at or below both the stable seq whose votes were
   * pruned and the base whose decisions were. For that to never leave a reference
   * dangling, a record is written by reference only if the pruning that will delete it
   * has not passed its seq yet (an `accept` or `prepared` record above the last pruned
   * stable seq, a `decided` record above the last base); any other carries its batch.
   */
  persist(record: PersistedRecord): void {
    const store = this.store;
    const seq = recordSeq(record);
    const rec = this.encodeStaged(record, seq);
    if (record.t === "decided") {
      if (this.trimBacklog) this.trimRows();
      this.sinceBase.rows++;
      this.sinceBase.bytes += rec.length + (rec.byRef ? this.batchBytes(rec.key) : 0);
      this.commits.stage(() => store.insertDecided(record.seq, rec.bytes));
      return;
    }
    switch (record.t) {
      case "view":
      case "snapshot":
        // Only the latest of each matters for a restart.
        this.commits.stage(() => store.deleteCoreOlderThan(record.t, store.insertCore(record.t, seq, rec.bytes)));
        return;
      case "stable":
        this.commits.stage(() => {
          store.deleteCoreOlderThan("stable", store.insertCore("stable", seq, rec.bytes));
          store.deleteCoreUpTo("accept", seq);
          store.deleteCoreUpTo("prepared", seq);
          // The checkpoint at the stable seq is the base the core restarts from.
          store.deleteCoreBelow("checkpoint", seq);
        });
        this.prunedVotesTo = Math.max(this.prunedVotesTo, seq);
        this.pruneBatches();
        return;
      default:
        this.commits.stage(() => void store.insertCore(record.t, seq, rec.bytes));
    }
  }

  /** The stored form of a record, staging its batch row first when it is not stored yet. */
  private encodeStaged(record: PersistedRecord, seq: number): { bytes: Uint8Array; length: number; byRef: boolean; key: string } {
    const carried = recordBatch(record);
    const prunedTo = record.t === "decided" ? this.prunedDecidedTo : this.prunedVotesTo;
    if (carried === null || seq <= prunedTo) {
      const bytes = encodeRecord(record);
      return { bytes, length: bytes.length, byRef: false, key: "" };
    }
    const key = toHex(carried.digest);
    const known = this.batches.get(key);
    if (known === undefined || known.seq < seq) {
      const { batch, digest } = carried;
      // Encoded when the commit writes it, into the encoder's buffer: a batch of a
      // megabyte is not allocated here to be copied once into SQLite. A batch is never
      // changed once built, so the bytes are those hashed into `digest`.
      this.batches.set(key, { seq, bytes: withBatchEncoding(batch, (data) => data.length) });
      this.commits.stage(() => withBatchEncoding(batch, (data) => this.store.putBatch(digest, seq, data)));
    }
    const bytes = encodeRecord(record, true);
    return { bytes, length: bytes.length, byRef: true, key };
  }

  /**
   * Deletes, at once, every stored batch whose digest (hex) is not in `named`: recovery
   * passes the batches the rows it kept name. Returns how many went.
   */
  dropBatchesExcept(named: ReadonlySet<string>): number {
    const drop = this.store.batchIndex().filter((row) => !named.has(toHex(row.digest)));
    if (drop.length === 0) return 0;
    this.store.transaction(() => {
      for (const row of drop) this.store.deleteBatchRow(row.id);
    });
    for (const row of drop) this.batches.delete(toHex(row.digest));
    return drop.length;
  }

  /** The size of the stored batch named `hexDigest`, or 0 when none is stored. */
  batchBytes(hexDigest: string): number {
    return this.batches.get(hexDigest)?.bytes ?? 0;
  }

  /** Deletes the batches no remaining row can name (see persist). */
  private pruneBatches(): void {
    const upTo = Math.min(this.prunedVotesTo, this.prunedDecidedTo);
    if (upTo <= this.batchesPrunedTo) return;
    this.batchesPrunedTo = upTo;
    for (const [key, batch] of this.batches) if (batch.seq <= upTo) this.batches.delete(key);
    this.trimBatchesTo = upTo;
    this.trimRows();
  }

  /**
   * A membership epoch starts at the checkpoint `start.seq` (src/replica/epochs.ts): the
   * previous epoch's core records and any decision it persisted above that seq are
   * dropped, the new core's base record is written, and the epoch's start is kept so a
   * restart rebuilds the same core. One transaction, with what was staged before it.
   */
  stageEpochStart(start: EpochStart, base: Extract<PersistedRecord, { t: "snapshot" }>): void {
    const rec = encodeRecord(base);
    const store = this.store;
    this.commits.stage(() => {
      for (const kind of ["view", "accept", "prepared", "checkpoint", "stable", "snapshot"])
        store.deleteCoreUpTo(kind, Number.MAX_SAFE_INTEGER);
      store.deleteDecidedFrom(start.seq + 1);
      store.insertCore("snapshot", base.seq, rec);
      store.putMeta("epoch", { epoch: start.epoch, seq: start.seq, digest: start.digest });
    });
  }

  /**
   * A replica joining the group in epoch `start.epoch` (ordering-driver.ts `join`): the
   * core records of any older epoch this directory held, and decisions above the start,
   * are dropped (they are never valid in the new epoch), and the epoch's start is kept so
   * a restart resumes this epoch, not an older one. Its core starts empty and fetches the
   * state; this is staged before it can vote, so it is durable before any vote leaves. A
   * restart that joins the same epoch again (before the state came) does not stage it
   * again: the votes it stored since are kept (ordering-driver.ts `startJoining`).
   */
  stageJoinEpoch(start: EpochStart): void {
    const store = this.store;
    this.commits.stage(() => {
      for (const kind of ["view", "accept", "prepared", "checkpoint", "stable", "snapshot"])
        store.deleteCoreUpTo(kind, Number.MAX_SAFE_INTEGER);
      store.deleteDecidedFrom(start.seq + 1);
      // `joining` tells this start from a switch's (epochStartedByJoin); readers of the start ignore it.
      store.putMeta("epoch", { epoch: start.epoch, seq: start.seq, digest: start.digest, joining: true });
    });
  }

  /**
   * A joining replica got its state in the epoch it joined: the group it joined and that
   * epoch's start are kept, so a later start resumes from this directory without asking
   * the cluster file's replicas (readJoined, src/cli/join.ts).
   */
  stageJoined(joined: JoinedRecord): void {
    const value = {
      epoch: joined.membership.epoch,
      f: joined.membership.f,
      members: joined.membership.members.map((m) => ({ id: m.id, host: m.host, port: m.port, peerPort: m.peerPort, key: m.key })),
      seq: joined.start.seq,
      digest: joined.start.digest,
    };
    const store = this.store;
    this.commits.stage(() => store.putMeta("joined", value));
  }

  /**
   * The proofs of the last epoch switches this replica saw, oldest first, kept across its
   * restarts: a peer still in one of those epochs is sent the proof that ended it by a
   * replica that restarted since, not only by one that switched in the same run.
   */
  stageSwitchProofs(proofs: readonly SwitchProof[]): void {
    const value = proofs.map((kept) => ({ epoch: kept.epoch, seq: kept.seq, digest: kept.digest, proof: kept.proof }));
    const store = this.store;
    this.commits.stage(() => store.putMeta("switch_proofs", value as unknown as Canonical));
  }

  /** The switch proofs stageSwitchProofs kept (none when absent, or when the row does not read as proofs). */
  switchProofs(): SwitchProof[] {
    const value = this.store.meta("switch_proofs");
    if (!Array.isArray(value)) return [];
    const proofs: SwitchProof[] = [];
    for (const item of value as { epoch?: unknown; seq?: unknown; digest?: unknown; proof?: unknown }[]) {
      const proof = validateCheckpointProof(item?.proof);
      const { epoch, seq, digest } = item ?? {};
      if (typeof epoch !== "number" || typeof seq !== "number" || !(digest instanceof Uint8Array) || proof === null) return [];
      proofs.push({ epoch, seq, digest, proof });
    }
    return proofs;
  }

  /** Whether this data directory holds the group it joined (stageJoined): it was started as a replica joining the group. */
  hasJoined(): boolean {
    return this.store.meta("joined") !== null;
  }

  /** Drops decisions persisted above `seq`: the old epoch's, past its last checkpoint (they never execute). */
  stageDropDecidedAbove(seq: number): void {
    const store = this.store;
    this.commits.stage(() => store.deleteDecidedFrom(seq + 1));
  }

  /** The epoch this replica's core runs in and where it started, or null: epoch 0 (the cluster file's group). */
  epochStart(): EpochStart | null {
    return epochStartOf(this.store.meta("epoch"));
  }

  /** Whether the stored epoch start is a join's (stageJoinEpoch), not a switch's (stageEpochStart). */
  epochStartedByJoin(): boolean {
    const value = this.store.meta("epoch") as { joining?: unknown } | null;
    return value !== null && typeof value === "object" && value.joining === true;
  }

  // -----------------------------------------------------------------------------------
  // Snapshots
  // -----------------------------------------------------------------------------------

  /** Every intact snapshot head, newest first (damaged heads are reported and dropped). */
  heads(): SnapshotHead[] {
    const heads: SnapshotHead[] = [];
    for (const checked of this.store.heads()) {
      const head = checked.ok ? decodeHead(checked.row.head) : null;
      if (head !== null && checked.ok && head.seq === checked.row.seq) {
        heads.push(head);
        continue;
      }
      const row = checked.ok
        ? { table: "snap_head", ids: [checked.row.seq], key: `seq ${checked.row.seq}`, reason: "malformed head" }
        : checked.corrupt;
      this.reportCorrupt([row]);
      this.store.transaction(() => deleteCorruptRow(this.store, row));
    }
    return heads.sort((a, b) => b.seq - a.seq);
  }

  /** Stages the head of a snapshot (a new incoming transfer, or a base being written). */
  stageHead(head: SnapshotHead): void {
    const bytes = encodeHead(head);
    this.commits.stage(() => this.store.putHead(head.seq, bytes));
  }

  stagePart(seq: number, part: number, data: Uint8Array): void {
    this.commits.stage(() => this.store.insertPart(seq, part, data));
  }

  /** Stages the removal of a snapshot (an abandoned transfer or a superseded base). */
  stageDropSnapshot(seq: number): void {
    this.commits.stage(() => this.store.deleteSnapshot(seq));
  }

  stageDropPartsFrom(seq: number, part: number): void {
    this.commits.stage(() => this.store.deletePartsFrom(seq, part));
  }

  /**
   * Makes `head` (complete, all parts written) the base: every other snapshot goes in the
   * same transaction as the head itself, and the decided rows it covers a slice per turn
   * from that transaction on (trimRows).
   */
  stageAdoptBase(head: SnapshotHead, others: readonly number[]): void {
    const bytes = encodeHead(head);
    const store = this.store;
    this.commits.stage(() => {
      store.putHead(head.seq, bytes);
      for (const seq of others) if (seq !== head.seq) store.deleteSnapshot(seq);
      store.deleteCoreBelow("checkpoint", head.seq);
      store.deleteCoreBelow("snapshot", head.seq);
    });
    this.sinceBase.rows = 0;
    this.sinceBase.bytes = 0;
    this.prunedDecidedTo = Math.max(this.prunedDecidedTo, head.seq);
    this.trimDecidedTo = Math.max(this.trimDecidedTo, head.seq);
    this.trimRows();
    this.pruneBatches();
  }

  /**
   * Deletes the decided rows at or below `trimDecidedTo` and the batch rows at or below
   * `trimBatchesTo`, TRIM_ROWS_PER_COMMIT at a time: a slice in the next commit, and while
   * a slice finds as many rows as it may delete (`trimBacklog`), another in a later turn
   * and one in every commit that stores a decision meanwhile, so the deletes always outrun
   * the inserts. Those rows are already as good as gone: no kept record names them (a
   * batch named again meanwhile was put again with a higher seq), and the next open
   * deletes any left (recovery.ts).
   */
  private trimRows(): void {
    this.trimBacklog = true;
    if (this.trimStaged) return;
    this.trimStaged = true;
    const store = this.store;
    this.commits.stage(() => {
      this.trimStaged = false;
      let left = TRIM_ROWS_PER_COMMIT;
      left -= store.deleteDecidedUpToLimit(this.trimDecidedTo, left);
      if (left > 0) left -= store.deleteBatchesUpToLimit(this.trimBatchesTo, left);
      if (left > 0) left = this.deleteGoneUnordered(left);
      this.trimBacklog = left === 0;
      if (!this.trimBacklog) return;
      this.commits.schedule(() => {
        if (this.trimBacklog) this.trimRows();
      });
    });
  }

  /**
   * The rows of unordered channels that no longer exist are deleted, a slice at a time
   * (trimRows), with their floors: `channels` are the unordered channels the machine holds
   * now, and `lastGeneration` its last generation. A row of a channel made past it (kept
   * by a start whose ordered state came back short: recovery.ts restoreRows) stays for the
   * state that makes the channel. Called after a destroy-channel executes and after a
   * state transfer installs a state; a start deletes them itself (restoreRows).
   */
  dropGoneUnordered(channels: readonly { readonly tag: string; readonly gen: number }[], lastGeneration: number): void {
    const live = new Set(channels.map((channel) => `${channel.gen}:${channel.tag}`));
    // Looked for when the commit runs, after the writes staged before it: a channel whose
    // only rows were stored in this very turn is found too.
    this.commits.stage(() => {
      let added = false;
      for (const channel of this.store.unorderedChannelsStored()) {
        const key = `${channel.gen}:${channel.tag}`;
        if (live.has(key) || channel.gen > lastGeneration || this.goneUnordered.has(key)) continue;
        this.goneUnordered.set(key, { ...channel, rows: 0 });
        added = true;
      }
      // The slice staged below ran before this (one was pending already): another, in the next commit.
      if (added && !this.trimStaged) this.trimRows();
    });
    this.trimRows();
  }

  /** Unordered channels that no longer exist whose rows are still being deleted. */
  get goneUnorderedPending(): number {
    return this.goneUnordered.size;
  }

  /** Deletes up to `left` rows of gone unordered channels (in a staged write); returns what is left of the budget. */
  private deleteGoneUnordered(left: number): number {
    for (const [key, gone] of this.goneUnordered) {
      const deleted = this.store.deleteUnorderedOldest(gone.tag, gone.gen, left);
      gone.rows += deleted;
      left -= deleted;
      if (left === 0) return 0;
      // Fewer than asked for: the channel's rows are all gone, and its floors go with the last of them.
      this.store.deleteUnorderedFloorsOf(gone.tag, gone.gen);
      this.goneUnordered.delete(key);
      this.commits.defer(() =>
        this.options.log.info("stored events of a channel that no longer exists deleted", {
          tag: gone.tag,
          generation: gone.gen,
          batches: gone.rows,
        }),
      );
    }
    return left;
  }

  /** One stored part, checked; a damaged part is reported and null is returned. */
  readPart(seq: number, part: number): Uint8Array | null {
    const checked = this.store.part(seq, part);
    if (checked === null) return null;
    if (!checked.ok) {
      this.reportCorrupt([checked.corrupt]);
      return null;
    }
    return checked.row.data;
  }

  // -----------------------------------------------------------------------------------
  // Unordered channels (this replica's own store)
  // -----------------------------------------------------------------------------------

  /** Stages a request stored on an unordered channel (`bodyDigest`: the SHA-256 of `body`); acknowledge it via afterDurable. */
  recordUnordered(tag: string, generation: number, tsMs: number, body: Uint8Array, sig: Uint8Array, bodyDigest: Uint8Array): void {
    this.commits.stage(() => void this.store.insertUnordered(tag, generation, tsMs, body, sig, bodyDigest));
  }

  /**
   * Retention removed the `count` oldest batches of an unordered channel, whose publishers'
   * seqs reached `floors`: the floors are kept in the same commit, so no restart forgets them.
   */
  trimUnordered(tag: string, generation: number, count: number, floors: readonly PublisherFloor[]): void {
    this.commits.stage(() => {
      this.store.deleteUnorderedOldest(tag, generation, count);
      for (const floor of floors) this.store.raiseUnorderedFloor(tag, generation, floor.publisher, floor.through);
    });
  }

  private fail(error: unknown): never {
    this.options.log.error("storage commit failed; stopping so that nothing depends on a lost write", {
      error: (error as Error).message,
    });
    this.options.metrics.inc("storage_commit_failures_total");
    return (this.options.onFatal ?? throwFatal)(new FatalError(EXIT_STORAGE_FAILED, `storage commit failed: ${(error as Error).message}`));
  }
}

/** Full scan at open: every row of every table is checked; damaged rows are deleted. */
function scanAndDelete(store: ReplicaStore): CorruptRow[] {
  const corrupt: CorruptRow[] = [];
  const note = (checked: Checked<unknown>): void => {
    if (!checked.ok) corrupt.push(checked.corrupt);
  };
  for (const row of store.coreRows()) note(row);
  for (const row of store.decidedRows(0)) note(row);
  for (const row of store.batchRows()) note(row);
  for (const row of store.heads()) note(row);
  for (const { seq } of store.partSeqs()) for (const row of store.parts(seq)) note(row);
  for (const row of store.unorderedRows()) note(row);
  for (const row of store.unorderedFloorRows()) note(row);
  // The deletes and the row that asks for the fence go together: a crash between them would leave no sign of the loss.
  if (corrupt.length > 0)
    store.transaction(() => {
      for (const row of corrupt) deleteCorruptRow(store, row);
      if (corrupt.some(mayHoldVotes)) store.putMeta(LOST_VOTES_META, true);
    });
  return corrupt;
}

/**
 * What deleting a damaged row means per table. A damaged decided row cuts the decided
 * log there (what follows can no longer be replayed); a damaged snapshot head or part
 * drops the whole snapshot; other rows go alone.
 */
export function deleteCorruptRow(store: ReplicaStore, row: CorruptRow): void {
  const first = row.ids[0];
  if (first === undefined) return;
  switch (row.table) {
    case "core":
      return store.deleteCoreRow(first);
    case "decided":
      return store.deleteDecidedFrom(first);
    case "batch":
      // The records that name it are refused when read (recovery.ts).
      return store.deleteBatchRow(first);
    case "snap_head":
    case "snap_part":
      return store.deleteSnapshot(first);
    case "unordered":
      return store.deleteUnorderedRow(first);
    case "unordered_floor":
      return store.deleteUnorderedFloorRow(first);
    default:
      return;
  }
}

/** The file is not a sound SQLite database. */
class StructuralDamage extends Error {
  override readonly name = "StructuralDamage";
}

/**
 * A database file cut to 0 bytes beside a write-ahead log that holds frames: SQLite opens
 * it without a word, as a database holding nothing or only the log's pages, and the
 * replica would start so with no word of damage (no quarantine, no fence on the votes it lost). A store SQLite made holds its
 * first page in the file from its first commit on, so this is never a store's own state.
 */
function refuseEmptiedFile(disk: Disk, dir: string): void {
  if (disk.sizeOf === undefined) return;
  const file = disk.sizeOf(join(dir, STORE_FILE));
  const log = disk.sizeOf(join(dir, `${STORE_FILE}-wal`));
  if (file === 0 && log !== null && log > 0) {
    throw new StructuralDamage(`the database file is empty (0 bytes) but its write-ahead log holds ${log} bytes: the file was truncated`);
  }
}

/** SQLite result codes that mean the file itself is damaged (not missing, locked or unreadable by permission). */
const DAMAGE_CODES: ReadonlySet<string> = new Set(["SQLITE_CORRUPT", "SQLITE_NOTADB"]);

function isDamage(error: unknown): boolean {
  if (error instanceof StructuralDamage) return true;
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && DAMAGE_CODES.has(code);
}

/**
 * Reads the clean-stop marker and, if set, clears it durably before anything runs: a crash
 * from here on (a power loss included) leaves no marker, and only the next clean stop
 * writes one again. Whether it was set.
 */
function takeStopMarker(store: ReplicaStore, options: StorageOptions): boolean {
  const marker = store.meta(STOPPED_CLEAN_META);
  if (marker === null) return false;
  store.transaction(() => store.putMeta(STOPPED_CLEAN_META, false));
  // Under `normal` that commit reached the operating system only: a power loss after this
  // run voted could bring the marker back and skip the fence its votes need.
  if (options.sync === "normal") syncLogNow(store, options.disk ?? realDisk);
  return marker === true;
}

/**
 * Makes every commit so far durable by an fsync of the write-ahead log, where the store
 * does not (`normal`: SQLite syncs the log at its checkpoints only). A disk without
 * `walSync` has no fsync to offer: the simulator's, whose every commit is durable as it
 * returns in that mode (src/sim/runtime/disk.ts).
 */
function syncLogNow(store: ReplicaStore, disk: Disk): void {
  if (store.walSync !== null) return store.walSync.now();
  const sync = disk.walSync?.(store.path);
  if (sync === undefined) return;
  try {
    sync.now();
  } finally {
    sync.close();
  }
}

function closeQuietly(store: ReplicaStore | null): void {
  try {
    store?.close();
  } catch {
    // A damaged file may refuse even the checkpoint on close; it is moved aside next.
  }
}

/**
 * Moves the database files aside, into a directory of their own under `quarantine/` named
 * by the time (UTC), and returns it. The newest QUARANTINE_KEPT copies stay (an operator
 * may want the first damaged copy as much as the last); older ones are removed, each one
 * logged. The files an earlier version left directly in `quarantine/` count as the oldest copy.
 */
function quarantine(disk: Disk, dir: string, log: Log, now: Date): string {
  const root = join(dir, QUARANTINE_DIR);
  disk.makeDir(root);
  const loose = disk.list(root).filter((name) => name.startsWith(STORE_FILE));
  if (loose.length > 0) moveStoreFiles(disk, root, join(root, QUARANTINE_UNDATED), loose);
  const stamp = now
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d+Z$/, "Z");
  let name = stamp;
  for (let n = 2; disk.exists(join(root, name)); n++) name = `${stamp}-${n}`;
  const target = join(root, name);
  moveStoreFiles(disk, dir, target, STORE_FILES);
  // The copy just made always stays; of the earlier ones (only those named as this code
  // names them: an operator's own entries are left alone), the oldest go. Removing one is
  // optional work: a failure is logged, never a reason to stop this start, which must go
  // on fenced as a store moved aside is.
  const earlier = disk
    .list(root)
    .filter((entry) => entry !== name && quarantineOrder(entry) !== null)
    .sort((a, b) => compareOrder(quarantineOrder(a) as [string, number], quarantineOrder(b) as [string, number]));
  for (const old of earlier.slice(0, Math.max(0, earlier.length - (QUARANTINE_KEPT - 1)))) {
    try {
      disk.removeTree(join(root, old));
      log.warn("storage: an old quarantined copy removed", { removed: join(root, old), kept: QUARANTINE_KEPT });
    } catch (error) {
      log.warn("storage: an old quarantined copy could not be removed; kept", { copy: join(root, old), error: (error as Error).message });
    }
  }
  return target;
}

/** A quarantined copy's place in time: [stamp, n] ("0-undated" first); null for a name this code does not make. */
function quarantineOrder(name: string): [string, number] | null {
  if (name === QUARANTINE_UNDATED) return ["", 0];
  const match = /^(\d{8}T\d{6}Z)(?:-(\d+))?$/.exec(name);
  return match === null ? null : [match[1] as string, Number(match[2] ?? 1)];
}

function compareOrder(a: [string, number], b: [string, number]): number {
  return a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] - b[1];
}

const STORE_FILES = [STORE_FILE, `${STORE_FILE}-wal`, `${STORE_FILE}-shm`];

function moveStoreFiles(disk: Disk, from: string, to: string, names: readonly string[]): void {
  disk.makeDir(to);
  for (const name of names) if (disk.exists(join(from, name))) disk.rename(join(from, name), join(to, name));
}

function reportCorruption(options: StorageOptions, rows: readonly CorruptRow[]): void {
  options.metrics.inc("storage_corrupt_rows_total", rows.length);
  rows.slice(0, CORRUPT_ROWS_LOGGED_MAX).forEach((row) => {
    options.log.error("storage corruption detected", { table: row.table, key: row.key, reason: row.reason, repair: "state transfer" });
  });
  if (rows.length > CORRUPT_ROWS_LOGGED_MAX) {
    options.log.error("storage corruption detected", { rows: rows.length, logged: CORRUPT_ROWS_LOGGED_MAX });
  }
}

/**
 * Whether a damaged row may have held what the vote fence stands on: the core's records
 * (votes, views, stable checkpoints), the decided log and the batches records name, and
 * the base snapshot (a base that fails cuts the log, and the stable records above it go).
 * A replica's store of unordered events holds no vote: its damage loses events, not the fence.
 */
function mayHoldVotes(row: CorruptRow): boolean {
  return row.table !== "unordered";
}

interface FileIdentity {
  readonly dev: number;
  readonly ino: number;
}

/** A file's device and inode, or null when it is not there. */
function fileIdentityOf(path: string): FileIdentity | null {
  try {
    const stat = statSync(path);
    return { dev: stat.dev, ino: stat.ino };
  } catch {
    return null;
  }
}
