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
import { join } from "node:path";
import type { PersistedRecord } from "../../core/ordering/types.ts";
import type { Log } from "../log.ts";
import type { Metrics } from "../metrics.ts";
import { type Disk, realDisk } from "./disk.ts";
import { GroupCommit } from "./group-commit.ts";
import { decodeHead, encodeHead, encodeRecord, recordSeq, type SnapshotHead } from "./records.ts";
import { type Checked, type CorruptRow, ReplicaStore, STORE_FILE, type SyncPolicy } from "./store.ts";

export { DEFAULT_SYNC_POLICY, SYNC_POLICIES, type SyncPolicy, StoreIdentityError } from "./store.ts";
export type { SnapshotHead } from "./records.ts";

/** The directory a damaged database is moved into (the previous one there is replaced). */
export const QUARANTINE_DIR = "quarantine";
/** Corrupt rows logged one by one at open; past this only the count is logged. */
export const CORRUPT_ROWS_LOGGED_MAX = 16;
/** Exit status when a commit fails: nothing acknowledged may depend on it (EX_IOERR). */
export const EXIT_STORAGE_FAILED = 74;

export interface StorageOptions {
  readonly dir: string;
  readonly sync: SyncPolicy;
  readonly cluster: string;
  readonly replica: number;
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
  /** Schedules the group commit at the end of the event-loop turn (setImmediate by default; ports.ts Clock.afterTurn). */
  readonly afterTurn?: (run: () => void) => void;
}

/** Decided rows and bytes written since the current base snapshot (restart replays them). */
export interface SinceBase {
  rows: number;
  bytes: number;
}

export class ReplicaStorage {
  readonly commits: GroupCommit;
  /** Rows found damaged at open (deleted since); for the start-up report. */
  readonly corruptAtOpen: readonly CorruptRow[];
  /** Whether the database file was unreadable and the replica starts empty. */
  readonly quarantined: boolean;
  readonly sinceBase: SinceBase = { rows: 0, bytes: 0 };
  private closed = false;

  /** The data directory. */
  get dir(): string {
    return this.options.dir;
  }

  private constructor(
    readonly store: ReplicaStore,
    private readonly options: StorageOptions,
    corrupt: readonly CorruptRow[],
    quarantined: boolean,
  ) {
    this.corruptAtOpen = corrupt;
    this.quarantined = quarantined;
    this.commits = new GroupCommit({
      commit: (writes) =>
        this.store.transaction(() => {
          for (const write of writes) write();
        }),
      onFailure: (error) => this.fail(error),
      ...(options.afterTurn === undefined ? {} : { schedule: options.afterTurn }),
      onCommit: (writes, ms) => {
        options.metrics.inc("storage_commits_total");
        options.metrics.inc("storage_writes_total", writes);
        options.metrics.storageCommit.observe(ms / 1000);
      },
    });
    options.metrics.gauge("storage_pending_writes", () => this.commits.pendingWrites);
    options.metrics.gauge("storage_file_bytes", () => (this.closed ? 0 : this.store.sizeBytes()));
  }

  /**
   * Opens the store in `dir`, checking the file and every row. Throws StoreIdentityError
   * when the directory belongs to another replica.
   */
  static open(options: StorageOptions): ReplicaStorage {
    const disk = options.disk ?? realDisk;
    disk.makeDir(options.dir);
    const identity = { cluster: options.cluster, replica: options.replica };
    let store: ReplicaStore | null = null;
    let corrupt: CorruptRow[] = [];
    let quarantined = false;
    try {
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
      const moved = quarantine(disk, options.dir);
      reportCorruption(options, [
        { table: "*", ids: [], key: STORE_FILE, reason: `unreadable (${(error as Error).message}); moved to ${moved}` },
      ]);
      store = ReplicaStore.open(options.dir, options.sync, identity, options.exclusive ?? true, disk);
    }
    if (corrupt.length > 0) reportCorruption(options, corrupt);
    return new ReplicaStorage(store, options, corrupt, quarantined);
  }

  /** Commits everything staged and closes the database (a clean stop). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.commits.close();
    this.store.close();
  }

  /** Runs `effect` once every write staged so far is durable. */
  afterDurable(effect: () => void): void {
    this.commits.defer(effect);
  }

  /** Reports damage found while running (at read), with the same log line and metric as at open. */
  reportCorrupt(rows: readonly CorruptRow[]): void {
    reportCorruption(this.options, rows);
  }

  // -----------------------------------------------------------------------------------
  // The ordering core's records
  // -----------------------------------------------------------------------------------

  /**
   * Stages one record of the core's `persist` output. Decisions go to the decided log;
   * the rest to the core table, where a stable checkpoint prunes what a restart no
   * longer needs (the same rule as compactRecords in src/core/ordering/persist.ts).
   */
  persist(record: PersistedRecord): void {
    const rec = encodeRecord(record);
    const store = this.store;
    if (record.t === "decided") {
      this.sinceBase.rows++;
      this.sinceBase.bytes += rec.length;
      this.commits.stage(() => store.insertDecided(record.seq, rec));
      return;
    }
    const seq = recordSeq(record);
    switch (record.t) {
      case "view":
      case "snapshot":
        // Only the latest of each matters for a restart.
        this.commits.stage(() => store.deleteCoreOlderThan(record.t, store.insertCore(record.t, seq, rec)));
        return;
      case "stable":
        this.commits.stage(() => {
          store.deleteCoreOlderThan("stable", store.insertCore("stable", seq, rec));
          store.deleteCoreUpTo("accept", seq);
          store.deleteCoreUpTo("prepared", seq);
          // The checkpoint at the stable seq is the base the core restarts from.
          store.deleteCoreBelow("checkpoint", seq);
        });
        return;
      default:
        this.commits.stage(() => void store.insertCore(record.t, seq, rec));
    }
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
   * Makes `head` (complete, all parts written) the base: every other snapshot and the
   * decided rows it covers go, in the same transaction as the head itself.
   */
  stageAdoptBase(head: SnapshotHead, others: readonly number[]): void {
    const bytes = encodeHead(head);
    const store = this.store;
    this.commits.stage(() => {
      store.putHead(head.seq, bytes);
      for (const seq of others) if (seq !== head.seq) store.deleteSnapshot(seq);
      store.deleteDecidedUpTo(head.seq);
      store.deleteCoreBelow("checkpoint", head.seq);
      store.deleteCoreBelow("snapshot", head.seq);
    });
    this.sinceBase.rows = 0;
    this.sinceBase.bytes = 0;
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

  /** Stages a request stored on an unordered channel; acknowledge it via afterDurable. */
  recordUnordered(tag: string, generation: number, tsMs: number, body: Uint8Array, sig: Uint8Array): void {
    this.commits.stage(() => void this.store.insertUnordered(tag, generation, tsMs, body, sig));
  }

  /** Retention removed the `count` oldest batches of an unordered channel. */
  trimUnordered(tag: string, generation: number, count: number): void {
    this.commits.stage(() => this.store.deleteUnorderedOldest(tag, generation, count));
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
  for (const row of store.heads()) note(row);
  for (const { seq } of store.partSeqs()) for (const row of store.parts(seq)) note(row);
  for (const row of store.unorderedRows()) note(row);
  if (corrupt.length > 0) store.transaction(() => corrupt.forEach((row) => deleteCorruptRow(store, row)));
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
    case "snap_head":
    case "snap_part":
      return store.deleteSnapshot(first);
    case "unordered":
      return store.deleteUnorderedRow(first);
    default:
      return;
  }
}

/** The file is not a sound SQLite database. */
class StructuralDamage extends Error {
  override readonly name = "StructuralDamage";
}

/** SQLite result codes that mean the file itself is damaged (not missing, locked or unreadable by permission). */
const DAMAGE_CODES: ReadonlySet<string> = new Set(["SQLITE_CORRUPT", "SQLITE_NOTADB"]);

function isDamage(error: unknown): boolean {
  if (error instanceof StructuralDamage) return true;
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && DAMAGE_CODES.has(code);
}

function closeQuietly(store: ReplicaStore | null): void {
  try {
    store?.close();
  } catch {
    // A damaged file may refuse even the checkpoint on close; it is moved aside next.
  }
}

/** Moves the database files aside; returns where to. */
function quarantine(disk: Disk, dir: string): string {
  const target = join(dir, QUARANTINE_DIR);
  disk.removeTree(target);
  disk.makeDir(target);
  for (const suffix of ["", "-wal", "-shm"]) {
    const file = join(dir, STORE_FILE + suffix);
    if (disk.exists(file)) disk.rename(file, join(target, STORE_FILE + suffix));
  }
  return target;
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
