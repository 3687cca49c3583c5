// The simulated disk under the runtime simulation (src/sim/runtime/disk.ts), with the real
// storage on top: what survives a crash with each injected fault, and that the storage's
// row checksums catch a flipped bit that SQLite itself cannot see.
import { describe, expect, test } from "bun:test";
import { Metrics } from "../../src/replica/metrics.ts";
import { ReplicaStorage } from "../../src/replica/storage/index.ts";
import { STORE_FILE } from "../../src/replica/storage/store.ts";
import { SimDisk } from "../../src/sim/runtime/disk.ts";
import { Prng } from "../../src/sim/prng.ts";
import { testLog } from "./storage-fixtures.ts";

const DIR = "/sim/replica-0";
const FILE = `${DIR}/${STORE_FILE}`;

function open(disk: SimDisk): ReplicaStorage {
  return ReplicaStorage.open({ dir: DIR, sync: "full", cluster: "unit", replica: 0, log: testLog(), metrics: new Metrics(), disk });
}

function decidedSeqs(storage: ReplicaStorage): number[] {
  return [...storage.store.decidedSeqs(0)];
}

function write(storage: ReplicaStorage, seq: number, bytes = 64): void {
  storage.store.transaction(() => storage.store.insertDecided(seq, new Uint8Array(bytes).fill(seq)));
}

describe("simulated disk", () => {
  test("an honest crash keeps every commit", () => {
    const disk = new SimDisk();
    const storage = open(disk);
    for (let seq = 1; seq <= 5; seq++) write(storage, seq);
    expect(disk.crash(FILE, new Prng(1)).kind).toBe("none");
    expect(decidedSeqs(open(disk))).toEqual([1, 2, 3, 4, 5]);
  });

  test("lost fsync: the commits after the disk stopped syncing are gone after the crash", () => {
    const disk = new SimDisk();
    const storage = open(disk);
    write(storage, 1);
    write(storage, 2);
    expect(disk.loseSyncs(FILE)).toBe(true);
    write(storage, 3);
    write(storage, 4);
    expect(decidedSeqs(storage)).toEqual([1, 2, 3, 4]);
    expect(disk.crash(FILE, new Prng(1)).kind).toBe("lost-fsync");
    expect(decidedSeqs(open(disk))).toEqual([1, 2]);
  });

  test("torn write: the last commit is cut; the storage opens without serving a damaged row", () => {
    let torn = 0;
    for (let seed = 1; seed <= 20; seed++) {
      const disk = new SimDisk();
      const storage = open(disk);
      for (let seq = 1; seq <= 20; seq++) write(storage, seq, 2000);
      disk.armTorn(FILE);
      storage.store.transaction(() => {
        for (let seq = 21; seq <= 40; seq++) storage.store.insertDecided(seq, new Uint8Array(3000).fill(seq));
        storage.store.deleteDecidedUpTo(10);
      });
      const note = disk.crash(FILE, new Prng(seed));
      expect(note.kind).toBe("torn");
      const reopened = open(disk);
      const seqs = decidedSeqs(reopened);
      // Whatever survived is intact: every row read back passes its checksum.
      for (const row of reopened.store.decidedRows(0)) expect(row.ok).toBe(true);
      if (reopened.quarantined || reopened.corruptAtOpen.length > 0 || seqs.join() !== [...Array(30)].map((_, i) => i + 11).join()) torn++;
    }
    // The tear usually shows: the file moved aside, rows dropped, or the commit lost.
    expect(torn).toBeGreaterThan(10);
  });

  test("a bit flipped inside a row's payload is caught by the row checksum at open and the row is dropped", () => {
    let caught = 0;
    for (let seed = 1; seed <= 10; seed++) {
      const disk = new SimDisk();
      const storage = open(disk);
      for (let seq = 1; seq <= 8; seq++) write(storage, seq);
      disk.crash(FILE, new Prng(seed));
      const note = disk.bitflip(FILE, new Prng(seed), true);
      expect(note.kind).toBe("bitflip-row");
      const reopened = open(disk);
      expect(reopened.quarantined).toBe(false);
      expect(reopened.corruptAtOpen.length).toBe(1);
      for (const row of reopened.store.decidedRows(0)) expect(row.ok).toBe(true);
      caught++;
    }
    expect(caught).toBe(10);
  });
});
