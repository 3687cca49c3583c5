/**
 * The simulated disk under the runtime simulation: the storage's Disk port
 * (src/replica/storage/disk.ts) over database images kept in memory, with the faults of a
 * real disk injected on purpose. A file is either at rest (its durable image) or open (a
 * live in-memory SQLite database, bun:sqlite, deserialized from that image). What is
 * durable when the replica crashes is decided here:
 *
 * - honest: every commit is durable once it returns (the sync policy `full`);
 * - lost fsync: from `loseSyncs` on, commits return but do not reach the platter; at the
 *   crash the file goes back to the image of the last honest commit;
 * - torn write: armed by `armTorn`, the last commit before the crash is cut: a suffix of
 *   the 4 KiB pages it changed is lost, and the first lost page is cut at a 512-byte
 *   sector (half new, half old bytes), as a disk without atomic page writes leaves it;
 * - bitflip: one bit of a file at rest, either anywhere in the file (SQLite's own pages
 *   included) or inside one stored row's payload, where only the row checksum can see it.
 *
 * Images are whole-file byte arrays (Database.serialize), so every fault acts on the bytes
 * SQLite would find on disk; nothing above the Disk port knows it is simulated.
 */
import { Database } from "bun:sqlite";
import type { Disk } from "../../replica/storage/disk.ts";
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
}

/** What a fault did, for the trace and the counts. */
export interface FaultNote {
  readonly kind: "torn" | "lost-fsync" | "bitflip-file" | "bitflip-row" | "none";
  readonly detail: string;
}

export class SimDisk implements Disk {
  private readonly files = new Map<string, SimFile>();
  private readonly dirs = new Set<string>();
  private readonly byDb = new Map<Database, SimFile>();
  commits = 0;

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

  openDatabase(path: string): Database {
    let file = this.files.get(path);
    if (file === undefined) {
      file = { image: null, db: null, pinned: null, tornArmed: false, beforeLast: null };
      this.files.set(path, file);
    }
    if (file.db !== null) throw Object.assign(new Error("database is locked"), { code: "SQLITE_BUSY" });
    const db =
      file.image === null ? new Database(":memory:", { strict: true }) : Database.deserialize(file.image, { strict: true } as never);
    file.db = db;
    this.byDb.set(db, file);
    return db;
  }

  commit(db: Database, writes: () => void): void {
    const file = this.byDb.get(db);
    if (file?.tornArmed === true) file.beforeLast = db.serialize();
    db.transaction(writes)();
    this.commits++;
  }

  /** From now on this file's commits return without being durable (a disk that lies about fsync). */
  loseSyncs(path: string): boolean {
    const file = this.files.get(path);
    if (file?.db == null || file.pinned !== null) return false;
    file.pinned = file.db.serialize();
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
    let image: Uint8Array = live;
    if (file.pinned !== null) {
      image = file.pinned;
      note = { kind: "lost-fsync", detail: `file back to ${file.pinned.length} bytes from ${live.length}` };
    } else if (file.tornArmed && file.beforeLast !== null) {
      image = tear(file.beforeLast, live, rng);
      note = { kind: "torn", detail: `last commit torn (${file.beforeLast.length} -> ${live.length} bytes, ${image.length} kept)` };
    }
    this.byDb.delete(file.db);
    file.db.close();
    file.db = null;
    file.image = image;
    file.pinned = null;
    file.tornArmed = false;
    file.beforeLast = null;
    return note;
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
    for (const file of this.files.values()) {
      file.db?.close();
      file.db = null;
    }
    this.byDb.clear();
  }

  private dropFile(path: string): void {
    const file = this.files.get(path);
    if (file?.db != null) {
      this.byDb.delete(file.db);
      file.db.close();
    }
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
