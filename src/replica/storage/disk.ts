/**
 * The disk port of the replica's storage: every file operation the store makes goes
 * through a Disk. The store keeps its data in one SQLite database per data directory
 * (store.ts), so what storage really does to files is: create the directory, open (and
 * create) the database file, commit a transaction durably, and, when the file is damaged,
 * move it aside (exists, rename, remove). `realDisk` is the file system under the shipped
 * replica; the simulator (src/sim/runtime/disk.ts) keeps database images in memory and
 * injects the disk's faults there: torn writes, lost fsyncs and flipped bits.
 *
 * The record formats (records.ts) and the tables (store.ts) sit above this port and are
 * the same on either disk.
 */
import { Database } from "bun:sqlite";
import { chmodSync, existsSync, mkdirSync, renameSync, rmSync } from "node:fs";

export interface Disk {
  /** Creates the directory and its parents (owner-only) if missing. */
  makeDir(dir: string): void;
  exists(path: string): boolean;
  /** Moves a file; the target is replaced. */
  rename(from: string, to: string): void;
  /** Removes a directory and everything under it, if present. */
  removeTree(dir: string): void;
  /** Opens the database file at `path`, creating it (owner-only) if missing. */
  openDatabase(path: string): Database;
  /**
   * Runs `writes` as one transaction of `db` and returns once it is durable (the sync
   * policy's fsync done). A throw means nothing of it may be relied on.
   */
  commit(db: Database, writes: () => void): void;
}

export const realDisk: Disk = {
  makeDir: (dir) => void mkdirSync(dir, { recursive: true, mode: 0o700 }),
  exists: (path) => existsSync(path),
  rename: (from, to) => renameSync(from, to),
  removeTree: (dir) => rmSync(dir, { recursive: true, force: true }),
  openDatabase: (path) => {
    const fresh = !existsSync(path);
    const db = new Database(path, { create: true, strict: true });
    if (fresh) chmodSync(path, 0o600);
    return db;
  },
  commit: (db, writes) => db.transaction(writes)(),
};
