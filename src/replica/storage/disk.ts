/**
 * The disk port of the replica's storage: every file operation the store makes goes
 * through a Disk. The store keeps its data in one SQLite database per data directory
 * (store.ts), so what storage really does to files is: create the directory, open (and
 * create) the database file, commit a transaction durably, and, when the file is damaged,
 * move it aside (exists, rename, remove). `realDisk` is the file system under the shipped
 * replica; the simulator (src/sim/runtime/disk.ts) keeps database images in memory and
 * injects the disk's faults there: torn writes, lost and failing fsyncs, flipped bits,
 * and (with `walSync`) fsyncs that complete ticks after they start.
 *
 * The record formats (records.ts) and the tables (store.ts) sit above this port and are
 * the same on either disk.
 */
import { Database } from "bun:sqlite";
import {
  chmodSync,
  closeSync,
  existsSync,
  fsync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  renameSync,
  rmSync,
  statfsSync,
  statSync,
} from "node:fs";
import { dirname } from "node:path";

export interface Disk {
  /** Creates the directory and its parents (owner-only) if missing. */
  makeDir(dir: string): void;
  exists(path: string): boolean;
  /** Moves a file; the target is replaced. */
  rename(from: string, to: string): void;
  /** Removes a directory and everything under it, if present. */
  removeTree(dir: string): void;
  /** The names of a directory's entries (files and directories), sorted; none for a missing directory. */
  list(dir: string): string[];
  /** A file's size in bytes, or null if it does not exist; absent where files have no size of their own (the simulator's). */
  sizeOf?(path: string): number | null;
  /** Bytes an unprivileged process may still write on the filesystem holding `dir` (statfs); absent where there is no filesystem. */
  freeBytes?(dir: string): number;
  /** Opens the database file at `path`, creating it (owner-only) if missing. */
  openDatabase(path: string): Database;
  /**
   * Opens the database file at `path` read-only, or null if there is none. Nothing is
   * written to the file or its write-ahead log, and closing folds nothing back (SQLite may
   * create an empty log and its shared-memory index beside the file).
   */
  openDatabaseReadOnly(path: string): Database | null;
  /**
   * Runs `writes` as one transaction of `db` and returns once it is durable (the sync
   * policy's fsync done). A throw means nothing of it may be relied on.
   */
  commit(db: Database, writes: () => void): void;
  /**
   * Overlapped fsync, where the disk offers it: the database at `path` then commits to the
   * operating system only (SQLite `synchronous = NORMAL` in WAL mode, which stays
   * consistent after a crash), and this makes its write-ahead log durable, off the event
   * loop or in place (group-commit.ts). Absent: `commit` syncs.
   */
  walSync?(path: string): WalSync;
}

/** Makes every transaction committed so far to one database durable (its write-ahead log fsynced). */
export interface WalSync {
  /**
   * Off the event loop: resolves once durable, rejects if the fsync failed or after close.
   * Only `then` is used (group-commit.ts): the simulated disk settles it at a simulated time.
   */
  later(): PromiseLike<void>;
  /** In place: returns once durable, throws if the fsync failed or after close. */
  now(): void;
  /** Refuses every later sync; an fsync in flight still completes (and reports its error). */
  close(): void;
}

/**
 * fsync of a database's `-wal` file, opened at the first sync (SQLite creates it at the
 * first write).
 *
 * `later` and `now` fsync through two descriptors of their own, each from its own
 * `open`: Linux reports a writeback error (EIO) once per open file description, so an
 * fsync in flight off the loop and one run in place at the same time (the bound of
 * deferred effects, a close) would share one report through one descriptor, and the one
 * that did not get it would take lost pages as durable.
 */
function fileWalSync(path: string): WalSync {
  const logPath = `${path}-wal`;
  /** The two descriptors; null while SQLite has not created the log (then nothing is waiting in it). */
  let fds: { later: number; now: number } | null = null;
  const open = (): { later: number; now: number } | null => {
    if (fds !== null) return fds;
    if (!existsSync(logPath)) return null;
    // Both at once, so that neither misses an error of a write made before it was opened.
    const later = openSync(logPath, "r");
    let now: number;
    try {
      now = openSync(logPath, "r");
      // The log file itself must survive power loss too: its directory entry is synced once.
      const dir = openSync(dirname(path), "r");
      try {
        fsyncSync(dir);
      } finally {
        closeSync(dir);
      }
    } catch (error) {
      closeSync(later);
      throw error;
    }
    fds = { later, now };
    return fds;
  };
  // The descriptor of `later` is closed only once no fsync on it is in flight: closed
  // earlier, its number could be reused by another file while the fsync still runs on it.
  let inFlight = 0;
  let closing = false;
  const closeIfIdle = (): void => {
    if (!closing || inFlight > 0 || fds === null) return;
    closeSync(fds.later);
    fds = null;
  };
  const refused = (): Error => new Error(`the write-ahead log sync of ${path} is closed`);
  return {
    later: () =>
      new Promise<void>((resolve, reject) => {
        if (closing) {
          reject(refused());
          return;
        }
        const log = open();
        if (log === null) {
          resolve();
          return;
        }
        inFlight++;
        fsync(log.later, (error) => {
          inFlight--;
          closeIfIdle();
          if (error) reject(error);
          else resolve();
        });
      }),
    now: () => {
      if (closing) throw refused();
      const log = open();
      if (log !== null) fsyncSync(log.now);
    },
    close: () => {
      if (closing) return;
      closing = true;
      // Nothing is ever in flight on the in-place descriptor.
      if (fds !== null) closeSync(fds.now);
      closeIfIdle();
    },
  };
}

export const realDisk: Disk = {
  makeDir: (dir) => void mkdirSync(dir, { recursive: true, mode: 0o700 }),
  exists: (path) => existsSync(path),
  rename: (from, to) => renameSync(from, to),
  removeTree: (dir) => rmSync(dir, { recursive: true, force: true }),
  list: (dir) => (existsSync(dir) ? readdirSync(dir).sort() : []),
  sizeOf: (path) => (existsSync(path) ? statSync(path).size : null),
  freeBytes: (dir) => {
    const fs = statfsSync(dir);
    return fs.bavail * fs.bsize;
  },
  openDatabase: (path) => {
    const fresh = !existsSync(path);
    const db = new Database(path, { create: true, strict: true });
    if (fresh) chmodSync(path, 0o600);
    return db;
  },
  openDatabaseReadOnly: (path) => (existsSync(path) ? new Database(path, { readonly: true, strict: true }) : null),
  commit: (db, writes) => db.transaction(writes)(),
  walSync: fileWalSync,
};
