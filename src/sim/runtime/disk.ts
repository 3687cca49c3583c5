/**
 * The simulated disk under the runtime simulation: the storage's Disk port
 * (src/replica/storage/disk.ts) over database images kept in memory, with the faults of a
 * real disk injected on purpose. A file is either at rest (its durable image) or open (a
 * live in-memory SQLite database, bun:sqlite, deserialized from that image). What is
 * durable when the replica crashes is decided here:
 *
 * Two ways to make a commit durable, as on the real disk (src/replica/storage/disk.ts):
 *
 * - in the commit (no `walSync`; the sync policy `full` with SQLite's own fsync): every
 *   commit is durable once it returns;
 * - overlapped (`overlapped` given, so the disk offers `walSync`, as the real one does): a
 *   commit only writes (to the operating system), and `walSync().later()` starts an fsync
 *   that completes 0..delayMax ticks later, settled by the simulation through `due` and
 *   `complete` between the turns of the replicas (at a drawn place among the deliveries of
 *   that tick, or at its end), so later turns keep writing meanwhile. A completed fsync makes durable exactly the image the
 *   file had when it started; `now()` syncs in place. At a crash everything no completed
 *   fsync covered is dropped, or (half the time) a prefix of those transactions survives,
 *   as the operating system may have written part of the log back before the power went.
 *
 * Faults, on the disks of up to f replicas:
 *
 * - lost fsync: from `loseSyncs` on, commits (or overlapped fsyncs) report success but do
 *   not reach the platter; at the crash the file goes back to the image of the last
 *   honest one;
 * - failing fsync: from `failSyncs` on, the next fsync fails (a commit throws SQLite's I/O
 *   error, an overlapped fsync rejects with EIO): the replica must stop;
 * - torn write: armed by `armTorn`, the last commit before the crash is cut (overlapped:
 *   the writes no fsync covered): a suffix of the 4 KiB pages it changed is lost, and the
 *   first lost page is cut at a 512-byte sector (half new, half old bytes), as a disk
 *   without atomic page writes leaves it;
 * - bitflip: one bit of a file at rest, either anywhere in the file (SQLite's own pages
 *   included) or inside one stored row's payload, where only the row checksum can see it.
 *
 * Images are whole-file byte arrays (Database.serialize), so every fault acts on the bytes
 * SQLite would find on disk; nothing above the Disk port knows it is simulated.
 */
import { Database } from "bun:sqlite";
import type { Disk, WalSync } from "../../replica/storage/disk.ts";
import type { Prng } from "../prng.ts";

/** SQLite's page size (the store keeps the default). */
const PAGE_BYTES = 4096;
/** A disk writes sectors atomically, not pages. */
const SECTOR_BYTES = 512;

/** The tables and payload columns a targeted bitflip may hit (store.ts). */
const ROW_PAYLOADS: readonly (readonly [string, string])[] = [
  ["core", "rec"],
  ["decided", "rec"],
  ["snap_head", "head"],
  ["snap_part", "data"],
  ["unordered", "body"],
  ["core", "sum"],
  ["decided", "sum"],
];

interface SimFile {
  /** The durable image while the file is at rest (null: created, never written). */
  image: Uint8Array | null;
  /** The open database, when a replica has the file open. */
  db: Database | null;
  /** Lost fsync: the image of the last commit that really reached the disk. */
  pinned: Uint8Array | null;
  /** Torn write armed: the image before the last commit. */
  tornArmed: boolean;
  beforeLast: Uint8Array | null;
  /** Failing fsync armed: the next fsync fails, and every one after it until the crash. */
  failSyncs: boolean;
  /** Overlapped mode, while open: what the completed fsyncs made durable. */
  sync: OpenSync | null;
  /** While open: transactions committed, and how many of them the disk has reported durable (a lying disk included). */
  written: number;
  reported: number;
}

/** Overlapped mode: the durability of one open file. */
interface OpenSync {
  /** The image the last completed fsync made durable (null: nothing yet, the file is empty). */
  durable: Uint8Array | null;
  /** Transactions written in this open life, and how many of them `durable` holds. */
  written: number;
  durableWritten: number;
  /** The start order of the fsync that made `durable`: an older one completing later does not go back. */
  durableOrder: number;
  started: number;
  /** The image after each transaction no fsync covers yet (a crash may keep a prefix of them). */
  unsynced: { written: number; image: Uint8Array }[];
  /** Overlapped fsyncs started and not completed. */
  inFlight: number;
  /** Lost fsync: they report success and make nothing durable. */
  lying: boolean;
}

/** An overlapped fsync in flight: settled by the simulation once `due`. */
export interface PendingSync {
  readonly path: string;
  readonly due: number;
  readonly file: SimFile;
  readonly db: Database;
  /** The start order, the transactions it covers and the image it makes durable. */
  readonly order: number;
  readonly written: number;
  readonly image: Uint8Array;
  readonly result: SimSettle;
}

/** How the overlapped fsyncs are timed: a Prng (the delays) and the simulation's clock. */
export interface OverlappedSync {
  readonly rng: Prng;
  /** An fsync completes 0..delayMax ticks after it starts. */
  readonly delayMax: number;
  readonly now: () => number;
  /** Whether a crash may keep a prefix of the transactions no completed fsync covered (else it keeps none). */
  readonly keepUnsynced: boolean;
}

/**
 * The completion of a simulated fsync: a PromiseLike the disk settles synchronously when
 * the simulation completes the fsync, so a run stays one deterministic loop (no
 * microtasks). `then` chains as a promise's does.
 */
export class SimSettle<T = void> implements PromiseLike<T> {
  private outcome: { ok: true; value: T } | { ok: false; error: unknown } | null = null;
  private readonly waiting: ((outcome: { ok: true; value: T } | { ok: false; error: unknown }) => void)[] = [];

  // biome-ignore lint/suspicious/noThenProperty: a thenable on purpose: the group commit consumes WalSync.later() through then (disk.ts).
  then<A = T, B = never>(
    onFulfilled?: ((value: T) => A | PromiseLike<A>) | null,
    onRejected?: ((reason: unknown) => B | PromiseLike<B>) | null,
  ): PromiseLike<A | B> {
    const next = new SimSettle<A | B>();
    const run = (outcome: { ok: true; value: T } | { ok: false; error: unknown }): void => {
      try {
        if (outcome.ok) next.resolve((onFulfilled ? onFulfilled(outcome.value) : outcome.value) as A);
        else if (onRejected) next.resolve(onRejected(outcome.error) as B);
        else next.reject(outcome.error);
      } catch (error) {
        next.reject(error);
      }
    };
    if (this.outcome === null) this.waiting.push(run);
    else run(this.outcome);
    return next;
  }

  resolve(value: T): void {
    this.settle({ ok: true, value });
  }

  reject(error: unknown): void {
    this.settle({ ok: false, error });
  }

  private settle(outcome: { ok: true; value: T } | { ok: false; error: unknown }): void {
    if (this.outcome !== null) return;
    this.outcome = outcome;
    for (const run of this.waiting.splice(0)) run(outcome);
  }
}

/** What a fault did, for the trace and the counts. */
export interface FaultNote {
  readonly kind: "torn" | "lost-fsync" | "bitflip-file" | "bitflip-row" | "none";
  readonly detail: string;
  /** Overlapped mode, at a crash: fsyncs in flight, transactions written that no completed fsync covered, and how many of those survived. */
  readonly syncsInFlight?: number;
  readonly unsynced?: number;
  readonly unsyncedKept?: number;
}

/** What the overlapped fsyncs did, for the run's figures. */
export interface SyncCounts {
  /** Overlapped fsyncs started, completed (settled successfully) and failed. */
  started: number;
  completed: number;
  failed: number;
  /** Transactions written while an overlapped fsync of the same file was in flight. */
  writesDuringSync: number;
  /** Commits made to fail by a failing-fsync fault (in-commit mode). */
  commitsFailed: number;
}

export class SimDisk implements Disk {
  private readonly files = new Map<string, SimFile>();
  private readonly dirs = new Set<string>();
  private readonly byDb = new Map<Database, SimFile>();
  private pending: PendingSync[] = [];
  commits = 0;
  readonly syncs: SyncCounts = { started: 0, completed: 0, failed: 0, writesDuringSync: 0, commitsFailed: 0 };
  /** Present in overlapped mode only: the storage then syncs through it (store.ts). */
  readonly walSync?: (path: string) => WalSync;

  constructor(private readonly overlapped: OverlappedSync | null = null) {
    if (overlapped !== null) this.walSync = (path) => this.openWalSync(path);
  }

  makeDir(dir: string): void {
    let d = dir;
    while (d !== "" && d !== "/" && !this.dirs.has(d)) {
      this.dirs.add(d);
      d = d.slice(0, Math.max(0, d.lastIndexOf("/")));
    }
  }

  exists(path: string): boolean {
    return this.files.has(path) || this.dirs.has(path);
  }

  rename(from: string, to: string): void {
    const file = this.files.get(from);
    if (file === undefined) throw new Error(`ENOENT: no such file, rename '${from}'`);
    this.files.delete(from);
    this.files.set(to, file);
  }

  removeTree(dir: string): void {
    for (const path of [...this.files.keys()]) if (path === dir || path.startsWith(`${dir}/`)) this.dropFile(path);
    for (const d of [...this.dirs]) if (d === dir || d.startsWith(`${dir}/`)) this.dirs.delete(d);
  }

  list(dir: string): string[] {
    const names = new Set<string>();
    for (const path of [...this.files.keys(), ...this.dirs]) {
      if (!path.startsWith(`${dir}/`)) continue;
      const rest = path.slice(dir.length + 1);
      names.add(rest.includes("/") ? rest.slice(0, rest.indexOf("/")) : rest);
    }
    return [...names].sort();
  }

  /** A copy of the file's last image (null: none), so reading it changes nothing here; busy while the file is open, as openDatabase is. */
  openDatabaseReadOnly(path: string): Database | null {
    const file = this.files.get(path);
    if (file === undefined || file.image === null) return null;
    if (file.db !== null) throw Object.assign(new Error("database is locked"), { code: "SQLITE_BUSY" });
    return Database.deserialize(file.image, { strict: true, readonly: true } as never);
  }

  openDatabase(path: string): Database {
    let file = this.files.get(path);
    if (file === undefined) {
      file = {
        image: null,
        db: null,
        pinned: null,
        tornArmed: false,
        beforeLast: null,
        failSyncs: false,
        sync: null,
        written: 0,
        reported: 0,
      };
      this.files.set(path, file);
    }
    if (file.db !== null) throw Object.assign(new Error("database is locked"), { code: "SQLITE_BUSY" });
    const db =
      file.image === null ? new Database(":memory:", { strict: true }) : Database.deserialize(file.image, { strict: true } as never);
    file.db = db;
    file.written = 0;
    file.reported = 0;
    if (this.overlapped !== null)
      file.sync = {
        durable: file.image,
        written: 0,
        durableWritten: 0,
        durableOrder: 0,
        started: 0,
        unsynced: [],
        inFlight: 0,
        lying: false,
      };
    this.byDb.set(db, file);
    return db;
  }

  commit(db: Database, writes: () => void): void {
    const file = this.byDb.get(db);
    const sync = file?.sync ?? null;
    if (sync === null) {
      if (file?.failSyncs === true) {
        // SQLite's own fsync of the commit failed: the commit reports an I/O error.
        this.syncs.commitsFailed++;
        throw Object.assign(new Error("disk I/O error"), { code: "SQLITE_IOERR_FSYNC" });
      }
      if (file?.tornArmed === true) file.beforeLast = db.serialize();
      db.transaction(writes)();
      this.commits++;
      if (file !== undefined) file.reported = ++file.written;
      return;
    }
    // Overlapped: the transaction goes to the operating system only; an fsync makes it durable.
    db.transaction(writes)();
    this.commits++;
    sync.written++;
    if (file !== undefined) file.written++;
    sync.unsynced.push({ written: sync.written, image: db.serialize() });
    if (sync.inFlight > 0) this.syncs.writesDuringSync++;
  }

  /** The overlapped fsync of the database at `path` (the store asks for it right after opening it). */
  private openWalSync(path: string): WalSync {
    const file = this.files.get(path);
    const db = file?.db ?? null;
    if (file === undefined || db === null || file.sync === null) throw new Error(`walSync of a database not open: ${path}`);
    const live = (): OpenSync | null => (file.db === db ? file.sync : null);
    return {
      later: () => {
        const result = new SimSettle();
        const sync = live();
        // Closed or crashed meanwhile: nothing is left to sync (the real one resolves too).
        if (sync === null || this.overlapped === null) {
          result.resolve();
          return result;
        }
        sync.inFlight++;
        sync.started++;
        this.syncs.started++;
        const delay = this.overlapped.rng.int(0, this.overlapped.delayMax);
        this.pending.push({
          path,
          due: this.overlapped.now() + delay,
          file,
          db,
          order: sync.started,
          written: sync.written,
          image: db.serialize(),
          result,
        });
        return result;
      },
      now: () => {
        const sync = live();
        if (sync === null) return;
        if (file.failSyncs) {
          this.syncs.failed++;
          throw Object.assign(new Error("EIO: i/o error, fsync"), { code: "EIO" });
        }
        sync.started++;
        file.reported = Math.max(file.reported, sync.written);
        this.makeDurable(sync, sync.started, sync.written, db.serialize());
      },
      close: () => {},
    };
  }

  private makeDurable(sync: OpenSync, order: number, written: number, image: Uint8Array): void {
    if (sync.lying || order < sync.durableOrder) return;
    sync.durableOrder = order;
    sync.durable = image;
    sync.durableWritten = Math.max(sync.durableWritten, written);
    sync.unsynced = sync.unsynced.filter((u) => u.written > sync.durableWritten);
  }

  /** Overlapped fsyncs due by `now`, in the order they started (the simulation completes each between turns). */
  due(now: number): PendingSync[] {
    if (this.pending.length === 0) return [];
    const due = this.pending.filter((p) => p.due <= now);
    if (due.length > 0) this.pending = this.pending.filter((p) => p.due > now);
    return due;
  }

  /** Whether an fsync taken by `due` is still in flight (its file was not closed or crashed since). */
  inFlight(p: PendingSync): boolean {
    return p.file.db === p.db;
  }

  /** Completes an overlapped fsync: durable, or (failing-fsync fault) rejected with EIO. */
  complete(p: PendingSync): void {
    const sync = p.file.db === p.db ? p.file.sync : null;
    if (sync === null) throw new Error(`an fsync of ${p.path} completed after its file was closed`);
    sync.inFlight--;
    if (p.file.failSyncs) {
      this.syncs.failed++;
      p.result.reject(Object.assign(new Error("EIO: i/o error, fsync"), { code: "EIO" }));
      return;
    }
    this.syncs.completed++;
    p.file.reported = Math.max(p.file.reported, p.written);
    this.makeDurable(sync, p.order, p.written, p.image);
    p.result.resolve();
  }

  /**
   * Transactions committed to the open file at `path`, and how many of them the disk has
   * reported durable (a commit returned in-commit, an fsync covering them completed
   * overlapped); 0 when not open.
   */
  writtenCount(path: string): number {
    return this.files.get(path)?.written ?? 0;
  }

  reportedDurable(path: string): number {
    return this.files.get(path)?.reported ?? 0;
  }

  /** Whether an overlapped fsync of this file is in flight. */
  syncing(path: string): boolean {
    return (this.files.get(path)?.sync?.inFlight ?? 0) > 0;
  }

  /** From now on this file's fsyncs fail (an I/O error): the replica must stop. */
  failSyncs(path: string): boolean {
    const file = this.files.get(path);
    if (file?.db == null || file.failSyncs) return false;
    file.failSyncs = true;
    return true;
  }

  /** From now on this file's commits return without being durable (a disk that lies about fsync). */
  loseSyncs(path: string): boolean {
    const file = this.files.get(path);
    if (file?.db == null || file.pinned !== null || file.sync?.lying === true) return false;
    if (file.sync !== null) file.sync.lying = true;
    else file.pinned = file.db.serialize();
    return true;
  }

  /** The last commit before the next crash of this file will be torn. */
  armTorn(path: string): void {
    const file = this.files.get(path);
    if (file !== undefined) file.tornArmed = true;
  }

  /**
   * The replica holding `path` crashed: the open database is dropped and the file keeps
   * what was durable, with the armed faults applied. Returns what happened to it.
   */
  crash(path: string, rng: Prng): FaultNote {
    const file = this.files.get(path);
    if (file?.db == null) return { kind: "none", detail: "" };
    const live = file.db.serialize();
    let note: FaultNote = { kind: "none", detail: "" };
    let image: Uint8Array | null = live;
    if (file.sync !== null) {
      const crashed = this.crashOverlapped(file.sync, file.tornArmed, live, rng);
      image = crashed.image;
      note = crashed.note;
    } else if (file.pinned !== null) {
      image = file.pinned;
      note = { kind: "lost-fsync", detail: `file back to ${file.pinned.length} bytes from ${live.length}` };
    } else if (file.tornArmed && file.beforeLast !== null) {
      image = tear(file.beforeLast, live, rng);
      note = { kind: "torn", detail: `last commit torn (${file.beforeLast.length} -> ${live.length} bytes, ${image.length} kept)` };
    }
    this.closeFile(file);
    file.image = image;
    return note;
  }

  /**
   * Overlapped mode: the file keeps what the completed fsyncs made durable; of the
   * transactions written after, none or (half the time) a prefix survives, torn if armed.
   */
  private crashOverlapped(sync: OpenSync, tornArmed: boolean, live: Uint8Array, rng: Prng): { image: Uint8Array | null; note: FaultNote } {
    const counts = { syncsInFlight: sync.inFlight, unsynced: sync.written - sync.durableWritten };
    if (sync.lying) {
      const bytes = sync.durable?.length ?? 0;
      return {
        image: sync.durable,
        note: {
          kind: "lost-fsync",
          detail: `file back to ${bytes} bytes from ${live.length} (the last honest fsync)`,
          ...counts,
          unsyncedKept: 0,
        },
      };
    }
    if (tornArmed && sync.unsynced.length > 0) {
      const before = sync.durable ?? new Uint8Array(0);
      const image = tear(before, live, rng);
      return {
        image,
        note: {
          kind: "torn",
          detail: `unsynced writes torn (${before.length} -> ${live.length} bytes, ${image.length} kept)`,
          ...counts,
          unsyncedKept: 0,
        },
      };
    }
    const kept =
      sync.unsynced.length > 0 && this.overlapped?.keepUnsynced === true && rng.chance(0.5) ? rng.int(1, sync.unsynced.length) : 0;
    const image = kept === 0 ? sync.durable : (sync.unsynced[kept - 1] as { image: Uint8Array }).image;
    return { image, note: { kind: "none", detail: "", ...counts, unsyncedKept: kept } };
  }

  private closeFile(file: SimFile): void {
    if (file.db !== null) {
      this.byDb.delete(file.db);
      file.db.close();
    }
    this.pending = this.pending.filter((p) => p.file !== file);
    file.db = null;
    file.pinned = null;
    file.tornArmed = false;
    file.beforeLast = null;
    file.failSyncs = false;
    file.sync = null;
  }

  /** Flips one bit of a file at rest: anywhere in it, or inside one row's payload. */
  bitflip(path: string, rng: Prng, inRow: boolean): FaultNote {
    const file = this.files.get(path);
    if (file === undefined || file.db !== null || file.image === null || file.image.length === 0) return { kind: "none", detail: "" };
    if (inRow) {
      const flipped = flipInRow(file.image, rng);
      if (flipped !== null) {
        file.image = flipped.image;
        return { kind: "bitflip-row", detail: flipped.detail };
      }
    }
    const image = file.image.slice();
    const at = rng.int(0, image.length - 1);
    const bit = rng.int(0, 7);
    image[at] = (image[at] as number) ^ (1 << bit);
    file.image = image;
    return { kind: "bitflip-file", detail: `byte ${at} bit ${bit} of ${image.length}` };
  }

  /** Whether a file is open (its replica runs). */
  isOpen(path: string): boolean {
    return this.files.get(path)?.db != null;
  }

  /** Closes every open database (end of a run). */
  closeAll(): void {
    for (const file of this.files.values()) this.closeFile(file);
    this.byDb.clear();
    this.pending = [];
  }

  private dropFile(path: string): void {
    const file = this.files.get(path);
    if (file !== undefined) this.closeFile(file);
    this.files.delete(path);
  }
}

/**
 * The bytes a torn write leaves: the pages the commit changed are written in order, and
 * the crash cut that in the middle. Pages past the cut keep their old bytes (or are
 * missing, when the commit grew the file); the page at the cut is new up to a sector.
 */
function tear(before: Uint8Array, after: Uint8Array, rng: Prng): Uint8Array {
  const pages = Math.ceil(after.length / PAGE_BYTES);
  const changed: number[] = [];
  for (let p = 0; p < pages; p++) {
    const start = p * PAGE_BYTES;
    const a = after.subarray(start, start + PAGE_BYTES);
    const b = before.subarray(start, start + PAGE_BYTES);
    if (a.length !== b.length || !a.every((x, i) => x === b[i])) changed.push(p);
  }
  if (changed.length === 0) return after;
  const cut = rng.int(0, changed.length - 1);
  const sector = rng.int(0, PAGE_BYTES / SECTOR_BYTES - 1) * SECTOR_BYTES;
  const start = (changed[cut] as number) * PAGE_BYTES;
  // A commit that grew the file leaves it as long as what was written before the cut.
  const writtenEnd = Math.min(after.length, start + sector);
  const out = new Uint8Array(Math.max(before.length, writtenEnd));
  out.set(before.subarray(0, Math.min(before.length, out.length)));
  for (const p of changed.slice(0, cut))
    out.set(after.subarray(p * PAGE_BYTES, Math.min((p + 1) * PAGE_BYTES, after.length)), p * PAGE_BYTES);
  out.set(after.subarray(start, writtenEnd), start);
  return out;
}

/** Flips one bit inside one stored row's payload (through SQLite, so only the row checksum can tell). */
function flipInRow(image: Uint8Array, rng: Prng): { image: Uint8Array; detail: string } | null {
  let db: Database;
  try {
    db = Database.deserialize(image, { strict: true } as never);
  } catch {
    return null;
  }
  try {
    const candidates: { table: string; column: string; rowid: number }[] = [];
    for (const [table, column] of ROW_PAYLOADS) {
      const rows = db.query(`SELECT rowid AS r FROM ${table} WHERE length(${column}) > 0`).all() as { r: number }[];
      for (const row of rows) candidates.push({ table, column, rowid: row.r });
    }
    if (candidates.length === 0) return null;
    const target = rng.pick(candidates);
    const row = db.query(`SELECT ${target.column} AS v FROM ${target.table} WHERE rowid = ?`).get(target.rowid) as { v: Uint8Array };
    const value = new Uint8Array(row.v);
    const at = rng.int(0, value.length - 1);
    const bit = rng.int(0, 7);
    value[at] = (value[at] as number) ^ (1 << bit);
    db.query(`UPDATE ${target.table} SET ${target.column} = ? WHERE rowid = ?`).run(value, target.rowid);
    return { image: db.serialize(), detail: `${target.table}.${target.column} rowid ${target.rowid} byte ${at} bit ${bit}` };
  } catch {
    return null;
  } finally {
    db.close();
  }
}
