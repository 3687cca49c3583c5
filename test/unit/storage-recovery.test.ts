// Restart from the data directory (src/replica/storage/recovery.ts, snapshots.ts): the
// machine and the core's records come back from the base snapshot plus the decided log;
// a damaged base falls back to what can still be trusted; unordered stores come back.
import { afterEach, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { copyFileSync, existsSync, mkdirSync, rmSync, statSync, truncateSync } from "node:fs";
import { join } from "node:path";
import { ClientTable } from "../../src/core/ordering/clients.ts";
import { makeConfig } from "../../src/core/ordering/config.ts";
import { OrderingCore } from "../../src/core/ordering/core.ts";
import type { ClientRequest } from "../../src/core/ordering/messages.ts";
import type { CoreCrypto, PersistedRecord } from "../../src/core/ordering/types.ts";
import { sha256 } from "../../src/crypto/hash.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import { ReplicaStorage, STOPPED_CLEAN_META, type SyncPolicy } from "../../src/replica/storage/index.ts";
import { recover, restoreKeptUnordered } from "../../src/replica/storage/recovery.ts";
import {
  BASE_URGENT_TICKS_PER_PART,
  BASE_WRITE_TICKS_TARGET,
  basePartsPerTick,
  behindPace,
  SnapshotKeeper,
} from "../../src/replica/storage/snapshots.ts";
import { STORE_FILE } from "../../src/replica/storage/store.ts";
import { checkpointStateDigest } from "../../src/replica/storage/digest.ts";
import { decodeRequestBody } from "../../wire/schemas.ts";
import { ChannelMachine } from "../../src/core/channels/machine.ts";
import { SimDisk } from "../../src/sim/runtime/disk.ts";
import { Prng } from "../../src/sim/prng.ts";
import {
  batchDigest,
  execute,
  MACHINE_CONFIG,
  newMachine,
  openStorage,
  payloads,
  tempDir,
  testLog,
  TestClient,
} from "./storage-fixtures.ts";

const K = 128;
const PART_BYTES = 2048;
const DIGEST = new Uint8Array(32).fill(3);

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
});

/**
 * A replica's write path without the network: decisions are persisted and executed,
 * checkpoints captured and persisted, stable checkpoints announced, bases written.
 */
class Writer {
  readonly clients = new ClientTable();
  readonly keeper: SnapshotKeeper;
  readonly metrics = new Metrics();
  /** State digests of the checkpoints taken, by seq. */
  private readonly checkpoints = new Map<number, Uint8Array>();
  seq = 0;

  constructor(
    readonly storage: ReplicaStorage,
    readonly machine: ChannelMachine = newMachine(),
  ) {
    this.keeper = new SnapshotKeeper(
      { storage, machine: this.machine, partBytes: PART_BYTES, log: testLog(), metrics: this.metrics },
      null,
    );
  }

  decide(batch: ClientRequest[]): void {
    const seq = ++this.seq;
    this.storage.persist({ t: "decided", seq, view: 0, digest: batchDigest(batch), batch, commits: [] });
    const run = this.clients.executeBatch(batch);
    execute(this.machine, run);
    if (seq % K === 0) {
      const clients = this.clients.export();
      this.keeper.capture(seq, clients);
      const appDigest = this.machine.digest();
      const stateDigest = checkpointStateDigest(seq, appDigest, clients);
      this.checkpoints.set(seq, stateDigest);
      this.storage.persist({ t: "checkpoint", seq, stateDigest, appDigest, clients });
    }
    this.storage.commits.flush();
  }

  /** Announces `seq` stable to the store and the keeper, which may start a base. */
  announceStable(seq: number): void {
    const at = this.checkpoints.get(seq);
    if (at === undefined) throw new Error(`no checkpoint at ${seq}`);
    this.storage.persist({ t: "stable", seq, digest: at, proof: [] });
    this.keeper.onStable(seq, at, []);
  }

  /** Announces `seq` stable and lets any base it starts finish writing. */
  stable(seq: number): void {
    this.announceStable(seq);
    const before = this.keeper.baseHead?.seq;
    for (let tick = 0; tick < TICKS_PER_BASE_MAX && this.keeper.baseHead?.seq === before; tick++) {
      this.keeper.tick();
      this.storage.commits.flush();
    }
  }
}

/** Ticks a test lets a base take to write: far more than the small states here need. */
const TICKS_PER_BASE_MAX = 1000;

function setup(machine?: ChannelMachine): { dir: string; writer: Writer; admin: TestClient; publisher: TestClient } {
  const t = tempDir();
  cleanups.push(t.remove);
  const writer = new Writer(openStorage(t.dir), machine);
  cleanups.push(() => writer.storage.close());
  const admin = new TestClient();
  const publisher = new TestClient();
  writer.decide([
    admin.admin({ t: "create-channel", tag: "sec.alerts", fault: "byzantine", order: "total", priority: "high", public: true }),
    admin.admin({ t: "register", tag: "sec.alerts", role: "publisher", key: publisher.key.publicKey }),
  ]);
  return { dir: t.dir, writer, admin, publisher };
}

function publishDecisions(writer: Writer, publisher: TestClient, count: number): void {
  for (let i = 0; i < count; i++) writer.decide([publisher.pub("sec.alerts", [`event ${writer.seq + 1}`])]);
}

/** Restarts: reopens the store and recovers into a fresh machine. */
function restart(dir: string, writer: Writer) {
  writer.storage.close();
  const storage = openStorage(dir);
  cleanups.push(() => storage.close());
  const machine = newMachine();
  let executedUpTo = 0;
  const recovered = recover({
    storage,
    machine,
    partBytes: PART_BYTES,
    execute: (requests, seq) => {
      execute(machine, requests);
      executedUpTo = seq;
    },
  });
  return { storage, machine, recovered, executedUpTo: () => executedUpTo };
}

function coreFrom(records: ReturnType<typeof recover>["coreRecords"]): OrderingCore {
  const crypto: CoreCrypto = { hash: sha256, sign: () => new Uint8Array(64), verify: () => false, verifyRequest: () => false };
  return new OrderingCore(makeConfig({ id: 0, n: 4, f: 1, mode: "bft", clusterId: "unit" }), crypto, records);
}

describe("recovery", () => {
  test("without a base, the whole decided log is replayed", () => {
    const { dir, writer, publisher } = setup();
    publishDecisions(writer, publisher, 20);
    const { machine, recovered } = restart(dir, writer);
    expect(recovered.base).toBeNull();
    expect(recovered.lastDecided).toBe(21);
    expect(recovered.replayedDecisions).toBe(21);
    expect(machine.digest()).toEqual(writer.machine.digest());
    expect(payloads(machine, "sec.alerts")).toEqual(payloads(writer.machine, "sec.alerts"));
    expect(coreFrom(recovered.coreRecords).status().lastExecuted).toBe(21);
  });

  test("with a base, only the decisions after it are replayed, and the core starts from its stable checkpoint", () => {
    const { dir, writer, publisher } = setup();
    publishDecisions(writer, publisher, K - 1);
    writer.stable(K);
    expect(writer.keeper.baseHead?.seq).toBe(K);
    publishDecisions(writer, publisher, K + 44);
    writer.stable(2 * K);
    // The second base is not due yet: the log since the first is small.
    expect(writer.keeper.baseHead?.seq).toBe(K);
    const { machine, recovered } = restart(dir, writer);
    expect(recovered.base?.seq).toBe(K);
    expect(recovered.lastDecided).toBe(2 * K + 44);
    expect(recovered.replayedDecisions).toBe(K + 44);
    expect(recovered.stableSeq).toBe(2 * K);
    expect(machine.digest()).toEqual(writer.machine.digest());
    // The core restarts from its own checkpoint at the stable seq and gets only the decisions after it.
    const first = recovered.coreRecords[0];
    expect(first?.t === "snapshot" ? first.seq : -1).toBe(2 * K);
    const decidedSeqs = recovered.coreRecords.flatMap((r) => (r.t === "decided" ? [r.seq] : []));
    expect(decidedSeqs[0]).toBe(2 * K + 1);
    expect(decidedSeqs.length).toBe(44);
    const core = coreFrom(recovered.coreRecords);
    expect(core.status().lastExecuted).toBe(2 * K + 44);
    expect(core.status().stableSeq).toBe(2 * K);
  });

  test("a base is written one part per tick, in the background of the ticks that follow its stable checkpoint", () => {
    const { writer, publisher } = setup();
    publishDecisions(writer, publisher, K - 1);
    writer.announceStable(K);
    const staged: number[] = [];
    for (let tick = 0; tick < TICKS_PER_BASE_MAX && writer.keeper.baseHead === null; tick++) {
      writer.keeper.tick();
      writer.storage.commits.flush();
      staged.push(writer.storage.store.partSeqs().find((p) => p.seq === K)?.count ?? 0);
    }
    expect(writer.keeper.baseHead?.seq).toBe(K);
    // Several parts (the state is many times PART_BYTES), one more at each tick.
    const parts = writer.keeper.baseHead?.parts ?? 0;
    expect(parts).toBeGreaterThan(3);
    expect(staged.slice(0, parts)).toEqual(Array.from({ length: parts }, (_, i) => i + 1));
    expect(writer.metrics.get("snapshot_base_ticks_yielded_total")).toBe(0);
  });

  test("while urgent requests arrive, a base writes one part every BASE_URGENT_TICKS_PER_PART ticks and counts the ticks it gave way", () => {
    const { writer, publisher } = setup();
    publishDecisions(writer, publisher, K - 1);
    writer.announceStable(K);
    const staged: number[] = [];
    let ticks = 0;
    for (; ticks < TICKS_PER_BASE_MAX * BASE_URGENT_TICKS_PER_PART && writer.keeper.baseHead === null; ticks++) {
      writer.keeper.tick(true);
      writer.storage.commits.flush();
      staged.push(writer.storage.store.partSeqs().find((p) => p.seq === K)?.count ?? 0);
    }
    expect(writer.keeper.baseHead?.seq).toBe(K);
    const parts = writer.keeper.baseHead?.parts ?? 0;
    expect(parts).toBeGreaterThan(3);
    // The first part at once, then one at every BASE_URGENT_TICKS_PER_PART-th tick; the base ends at the tick after its last part's turn.
    const expected = Array.from({ length: ticks }, (_, tick) => Math.min(parts, Math.floor(tick / BASE_URGENT_TICKS_PER_PART) + 1));
    expect(staged.slice(0, ticks - 1)).toEqual(expected.slice(0, ticks - 1));
    expect(ticks).toBe(parts * BASE_URGENT_TICKS_PER_PART + 1);
    expect(writer.metrics.get("snapshot_base_ticks_yielded_total")).toBe(ticks - parts - 1);
  });

  test("a base behind the pace that writes its expected parts in BASE_WRITE_TICKS_TARGET ticks does not yield", () => {
    // 600 parts expected: the pace is one part every 10 ticks.
    expect(behindPace(0, 600, 1)).toBe(true);
    expect(behindPace(1, 600, 10)).toBe(false);
    expect(behindPace(1, 600, 11)).toBe(true);
    // A large state (a part a tick or more): always behind, never yields.
    expect(behindPace(100, BASE_WRITE_TICKS_TARGET, 101)).toBe(true);
    // Nothing expected (an empty state): never behind.
    expect(behindPace(0, 0, 1)).toBe(false);
  });

  test("a base of a large state (its previous base's size, or the captured state's if larger) goes faster than one part per tick, so that it takes about BASE_WRITE_TICKS_TARGET ticks at most", () => {
    const KIB = 1024;
    expect(basePartsPerTick(0, 256 * KIB)).toBe(1);
    expect(basePartsPerTick(1024 * 1024 * KIB, 256 * KIB)).toBe(1);
    expect(basePartsPerTick(16 * 1024 * 1024 * KIB, 256 * KIB)).toBe(Math.ceil(65_536 / BASE_WRITE_TICKS_TARGET));
    // Just past the target's worth of parts: two a tick.
    expect(basePartsPerTick(BASE_WRITE_TICKS_TARGET * 256 * KIB + 1, 256 * KIB)).toBe(2);
  });

  test("writing a base deletes the decided rows it covers", () => {
    const { writer, publisher } = setup();
    publishDecisions(writer, publisher, K - 1);
    writer.stable(K);
    expect([...writer.storage.store.decidedSeqs(0)]).toEqual([]);
    publishDecisions(writer, publisher, 3);
    expect([...writer.storage.store.decidedSeqs(0)]).toEqual([K + 1, K + 2, K + 3]);
  });

  test("a damaged base is reported and dropped; what depends on it is not trusted", () => {
    const { dir, writer, publisher } = setup();
    writeThenDamageBase(dir, writer, publisher);
    const metrics = new Metrics();
    const storage = openStorage(dir, testLog(), metrics);
    cleanups.push(() => storage.close());
    const machine = newMachine();
    const recovered = recover({ storage, machine, partBytes: PART_BYTES, execute: (requests) => execute(machine, requests) });
    expect(recovered.base).toBeNull();
    expect(recovered.lastDecided).toBe(0);
    expect(recovered.stableSeq).toBe(0);
    expect(machine.channelCount).toBe(0);
    expect(metrics.get("storage_corrupt_rows_total")).toBeGreaterThanOrEqual(1);
    // Nothing past the replayed log reaches the core: it starts empty and will fetch state.
    expect(recovered.coreRecords.some((r) => r.t === "decided" || r.t === "stable" || r.t === "snapshot")).toBe(false);
    expect([...storage.store.decidedSeqs(0)]).toEqual([]);
  });

  test("an interrupted base write leaves no trace after a restart", () => {
    const { dir, writer, publisher } = setup();
    publishDecisions(writer, publisher, K - 1);
    writer.storage.persist({ t: "stable", seq: K, digest: DIGEST, proof: [] });
    writer.storage.stagePart(K, 0, new Uint8Array(PART_BYTES));
    writer.storage.commits.flush();
    const { recovered, storage } = restart(dir, writer);
    expect(recovered.base).toBeNull();
    expect(recovered.lastDecided).toBe(K);
    expect(storage.store.partSeqs()).toEqual([]);
  });

  test("unordered channels come back from their rows, in arrival order", () => {
    const { dir, writer, admin, publisher } = setup();
    createUnordered(writer, admin, publisher, "crash");
    acceptUnordered(writer, publisher, UNORDERED_EVENTS);
    const { machine, recovered } = restart(dir, writer);
    expect(recovered.restoredUnordered).toBe(5);
    const read = machine.readFrom("net.links", 1, 100);
    expect(read.ok && read.batches.map((b) => b.tsMs)).toEqual([1000, 1001, 1002, 1003, 1004]);
    expect(machine.lastUnorderedSeq("net.links", publisher.hex)).toBe(5);
  });

  for (const fault of ["crash", "byzantine"] as const) {
    test(`acknowledged events of a ${fault}/none channel survive a restart after their publisher is unregistered`, () => {
      const { dir, writer, admin, publisher } = setup();
      createUnordered(writer, admin, publisher, fault);
      acceptUnordered(writer, publisher, UNORDERED_EVENTS);
      writer.decide([admin.admin({ t: "unregister", tag: "net.links", role: "publisher", key: publisher.key.publicKey })]);
      // A running replica keeps them: unregistering refuses new publishes only.
      expect(unorderedPayloads(writer.machine)).toEqual(LINKS);
      const { machine, recovered, storage } = restart(dir, writer);
      expect(recovered.restoredUnordered).toBe(UNORDERED_EVENTS);
      expect(unorderedPayloads(machine)).toEqual(LINKS);
      expect([...storage.store.unorderedRows()].length).toBe(UNORDERED_EVENTS);
      // And a second restart still finds them: nothing was deleted by the first.
      const again = restartStorage(storage);
      expect(unorderedPayloads(again.machine)).toEqual(LINKS);
    });
  }

  test("unordered events stay in the store when the replica restarts without its ordered state (no channel to judge them by)", () => {
    const { dir, writer, admin, publisher } = setup();
    createUnordered(writer, admin, publisher, "crash");
    acceptUnordered(writer, publisher, UNORDERED_EVENTS);
    writer.storage.commits.flush();
    // The decided log is lost (as after a base that no longer verifies): the machine comes back empty.
    writer.storage.store.transaction(() => writer.storage.store.deleteDecidedUpTo(Number.MAX_SAFE_INTEGER));
    const { machine, recovered, storage } = restart(dir, writer);
    expect(machine.listChannels()).toEqual([]);
    expect(recovered.restoredUnordered).toBe(0);
    expect([...storage.store.unorderedRows()].length).toBe(UNORDERED_EVENTS);
  });

  test("unordered events kept at a short restart go back into the machine once a state transfer brings their channel", () => {
    const { dir, writer, admin, publisher } = setup();
    createUnordered(writer, admin, publisher, "crash");
    acceptUnordered(writer, publisher, UNORDERED_EVENTS);
    writer.storage.commits.flush();
    writer.storage.store.transaction(() => writer.storage.store.deleteDecidedUpTo(Number.MAX_SAFE_INTEGER));
    const { machine, storage } = restart(dir, writer);
    expect(machine.listChannels()).toEqual([]);
    // The group's state, as a state transfer installs it: the channel, and no event of it (its store is each replica's own).
    expect(machine.restore(writer.machine.snapshot()).ok).toBe(true);
    expect(unorderedPayloads(machine)).toEqual([]);
    const info = machine.channelInfo("net.links");
    expect(info).not.toBeNull();
    // A channel the state does not name is left alone (the replica may be behind the seq that makes it).
    expect(restoreKeptUnordered({ machine, storage }, [{ tag: "no.such", gen: 1 }])).toEqual({ batches: 0, channels: [] });
    expect(restoreKeptUnordered({ machine, storage }, [{ tag: "net.links", gen: info?.generation ?? -1 }])).toEqual({
      batches: UNORDERED_EVENTS,
      channels: ["net.links"],
    });
    expect(unorderedPayloads(machine)).toEqual(LINKS);
    // Put back, not stored again.
    expect([...storage.store.unorderedRows()].length).toBe(UNORDERED_EVENTS);
    // Asked again for a channel that now holds them: nothing is put back twice, and no row goes.
    expect(restoreKeptUnordered({ machine, storage }, [{ tag: "net.links", gen: info?.generation ?? -1 }])).toEqual({
      batches: 0,
      channels: [],
    });
    expect(unorderedPayloads(machine)).toEqual(LINKS);
    expect([...storage.store.unorderedRows()].length).toBe(UNORDERED_EVENTS);
  });

  test("unordered events stay in the store when the decided log comes back cut short (a row lost before the one that made their channel)", () => {
    const { dir, writer, admin, publisher } = setup();
    createUnordered(writer, admin, publisher, "crash");
    acceptUnordered(writer, publisher, UNORDERED_EVENTS);
    publishDecisions(writer, publisher, 3);
    writer.storage.commits.flush();
    // A gap at seq 2, the decision that made net.links: the log replays seq 1 (sec.alerts) and nothing past the gap.
    (writer.storage.store as unknown as { db: Database }).db.run("DELETE FROM decided WHERE seq = 2");
    const { machine, recovered, storage } = restart(dir, writer);
    expect(machine.channelInfo("sec.alerts")).not.toBeNull();
    expect(machine.channelInfo("net.links")).toBeNull();
    expect(recovered.restoredUnordered).toBe(0);
    expect([...storage.store.unorderedRows()].length).toBe(UNORDERED_EVENTS);
  });

  test("unordered events stay in the store when the decided log simply ends before the seq that made their channel (its last writes lost)", () => {
    const { dir, writer, admin, publisher } = setup();
    createUnordered(writer, admin, publisher, "crash");
    acceptUnordered(writer, publisher, UNORDERED_EVENTS);
    writer.storage.commits.flush();
    // No gap: the log ends at seq 1 (sec.alerts), as if the writes of seq 2 on were lost.
    (writer.storage.store as unknown as { db: Database }).db.run("DELETE FROM decided WHERE seq >= 2");
    const { machine, recovered, storage } = restart(dir, writer);
    expect(recovered.lastDecided).toBe(1);
    expect(machine.channelInfo("net.links")).toBeNull();
    expect([...storage.store.unorderedRows()].length).toBe(UNORDERED_EVENTS);
  });

  for (const recreated of [false, true]) {
    test(`unordered events of a destroyed channel are deleted at restart${recreated ? " (the tag created again)" : ""}`, () => {
      const { dir, writer, admin, publisher } = setup();
      createUnordered(writer, admin, publisher, "crash");
      acceptUnordered(writer, publisher, UNORDERED_EVENTS);
      writer.decide([admin.admin({ t: "destroy-channel", tag: "net.links" })]);
      if (recreated) createUnordered(writer, admin, publisher, "crash");
      const { machine, recovered, storage } = restart(dir, writer);
      expect(recovered.restoredUnordered).toBe(0);
      expect(unorderedPayloads(machine)).toEqual([]);
      expect([...storage.store.unorderedRows()]).toEqual([]);
    });
  }

  test("restored unordered events are still trimmed by retention", () => {
    const { dir, writer, admin, publisher } = setup();
    createUnordered(writer, admin, publisher, "crash");
    acceptUnordered(writer, publisher, UNORDERED_EVENTS);
    writer.decide([admin.admin({ t: "unregister", tag: "net.links", role: "publisher", key: publisher.key.publicKey })]);
    writer.storage.close();
    // Retention lowered across the restart: the oldest rows go, the newest are kept.
    const storage = openStorage(dir);
    cleanups.push(() => storage.close());
    const retention = { ...MACHINE_CONFIG.retention, events: RETAINED_EVENTS };
    const config = { ...MACHINE_CONFIG, requestEventsMax: RETAINED_EVENTS, retention };
    const machine = new ChannelMachine({ hash: sha256, config });
    const recovered = recover({ storage, machine, partBytes: PART_BYTES, execute: (requests) => execute(machine, requests) });
    expect(recovered.restoredUnordered).toBe(UNORDERED_EVENTS);
    expect(unorderedPayloads(machine)).toEqual(LINKS.slice(-RETAINED_EVENTS));
    expect([...storage.store.unorderedRows()].length).toBe(RETAINED_EVENTS);
  });
});

describe("unordered channels: what retention deleted stays refused across restarts", () => {
  test("a replayed request whose row retention deleted is refused, and the publisher's highest seq is kept", () => {
    const { dir, writer, admin, publisher } = setup(smallRetentionMachine());
    createUnordered(writer, admin, publisher, "crash");
    const requests = acceptUnordered(writer, publisher, UNORDERED_EVENTS);
    // Count retention kept the newest RETAINED_EVENTS rows; the others' seqs are the floor.
    expect([...writer.storage.store.unorderedRows()].length).toBe(RETAINED_EVENTS);
    const { machine, storage } = restart(dir, writer);
    expect(machine.lastUnorderedSeq("net.links", publisher.hex)).toBe(UNORDERED_EVENTS);
    for (const [i, req] of requests.entries()) {
      const outcome = acceptOnce(machine, req as ClientRequest, UNORDERED_TS + 100 + i);
      // The kept ones are retries of stored requests (acknowledged again, not stored twice).
      if (i >= UNORDERED_EVENTS - RETAINED_EVENTS) expect(outcome.result.ok).toBe(true);
      else expect(outcome.result).toMatchObject({ ok: false, code: "replayed" });
      expect(outcome.stored).toBeNull();
    }
    expect(unorderedPayloads(machine)).toEqual(LINKS.slice(-RETAINED_EVENTS));
    expect([...storage.store.unorderedFloorRows()].map((r) => r.ok && r.row.seq)).toEqual([UNORDERED_EVENTS - RETAINED_EVENTS]);
  });

  test("a channel that age retention emptied still knows its publisher after a restart", () => {
    const retention = { ...MACHINE_CONFIG.retention, ageMs: AGE_MS };
    const { dir, writer, admin, publisher } = setup(new ChannelMachine({ hash: sha256, config: { ...MACHINE_CONFIG, retention } }));
    createUnordered(writer, admin, publisher, "crash");
    const requests = acceptUnordered(writer, publisher, UNORDERED_EVENTS);
    const generation = writer.machine.channelInfo("net.links")?.generation ?? 0;
    // What the replica's age sweep does to an idle channel once its events are old.
    const reports = writer.machine.trimUnorderedByAge(UNORDERED_TS + UNORDERED_EVENTS + AGE_MS);
    expect(reports).toEqual([
      {
        tag: "net.links",
        oldestSeq: UNORDERED_EVENTS + 1,
        batchesRemoved: UNORDERED_EVENTS,
        floors: [{ publisher: publisher.key.publicKey, through: UNORDERED_EVENTS }],
      },
    ]);
    for (const report of reports) writer.storage.trimUnordered(report.tag, generation, report.batchesRemoved, report.floors);
    writer.storage.commits.flush();
    expect([...writer.storage.store.unorderedRows()]).toEqual([]);
    const { machine } = restart(dir, writer);
    expect(machine.lastUnorderedSeq("net.links", publisher.hex)).toBe(UNORDERED_EVENTS);
    expect(acceptOnce(machine, requests[0] as ClientRequest, UNORDERED_TS).result).toMatchObject({ ok: false, code: "replayed" });
  });

  test("rows a restart trims (retention lowered) leave their floor too", () => {
    const { dir, writer, admin, publisher } = setup();
    createUnordered(writer, admin, publisher, "crash");
    const requests = acceptUnordered(writer, publisher, UNORDERED_EVENTS);
    writer.storage.close();
    const lowered = openStorage(dir);
    const machine = smallRetentionMachine();
    recover({ storage: lowered, machine, partBytes: PART_BYTES, execute: (batch) => execute(machine, batch) });
    expect([...lowered.store.unorderedRows()].length).toBe(RETAINED_EVENTS);
    // Retention raised again: the deleted seqs are still refused.
    const again = restartStorage(lowered);
    expect(again.machine.lastUnorderedSeq("net.links", publisher.hex)).toBe(UNORDERED_EVENTS);
    expect(acceptOnce(again.machine, requests[0] as ClientRequest, UNORDERED_TS).result).toMatchObject({ ok: false, code: "replayed" });
  });

  test("a restart short of its ordered state keeps the publishers' floors with the rows, and the state brings both back", () => {
    const { dir, writer, admin, publisher } = setup(smallRetentionMachine());
    createUnordered(writer, admin, publisher, "crash");
    const requests = acceptUnordered(writer, publisher, UNORDERED_EVENTS);
    writer.storage.commits.flush();
    writer.storage.store.transaction(() => writer.storage.store.deleteDecidedUpTo(Number.MAX_SAFE_INTEGER));
    const { machine, storage } = restart(dir, writer);
    expect(machine.listChannels()).toEqual([]);
    expect([...storage.store.unorderedFloorRows()].length).toBe(1);
    expect(machine.restore(writer.machine.snapshot()).ok).toBe(true);
    const generation = machine.channelInfo("net.links")?.generation ?? -1;
    expect(restoreKeptUnordered({ machine, storage }, [{ tag: "net.links", gen: generation }]).batches).toBe(RETAINED_EVENTS);
    // What retention deleted before the restart is still refused.
    expect(machine.lastUnorderedSeq("net.links", publisher.hex)).toBe(UNORDERED_EVENTS);
    expect(acceptOnce(machine, requests[0] as ClientRequest, UNORDERED_TS).result).toMatchObject({ ok: false, code: "replayed" });
  });

  test("a row refused at restart goes before a trim, so the trim deletes the rows the machine trimmed", () => {
    const { dir, writer, admin, publisher } = setup();
    createUnordered(writer, admin, publisher, "crash");
    const generation = writer.machine.channelInfo("net.links")?.generation ?? -1;
    // The oldest row of the channel does not decode (refused at restart, deleted after).
    const garbage = new Uint8Array([0xff, 0x00, 0xff]);
    writer.storage.store.insertUnordered("net.links", generation, UNORDERED_TS, garbage, new Uint8Array(64), sha256(garbage));
    acceptUnordered(writer, publisher, UNORDERED_EVENTS);
    writer.storage.close();
    const lowered = openStorage(dir);
    const machine = smallRetentionMachine();
    recover({ storage: lowered, machine, partBytes: PART_BYTES, execute: (batch) => execute(machine, batch) });
    // What the machine kept, and nothing else: the refused row and every trimmed one are gone.
    expect(unorderedPayloads(machine)).toEqual(LINKS.slice(-RETAINED_EVENTS));
    expect([...lowered.store.unorderedRows()].length).toBe(RETAINED_EVENTS);
  });

  test("the floors of a destroyed channel are deleted at restart", () => {
    const { dir, writer, admin, publisher } = setup(smallRetentionMachine());
    createUnordered(writer, admin, publisher, "crash");
    acceptUnordered(writer, publisher, UNORDERED_EVENTS);
    writer.decide([admin.admin({ t: "destroy-channel", tag: "net.links" })]);
    createUnordered(writer, admin, publisher, "crash");
    const { machine, storage } = restart(dir, writer);
    expect(machine.lastUnorderedSeq("net.links", publisher.hex)).toBe(0);
    expect([...storage.store.unorderedFloorRows()]).toEqual([]);
  });
});

/** A machine whose channels keep RETAINED_EVENTS events. */
function smallRetentionMachine(): ChannelMachine {
  const retention = { ...MACHINE_CONFIG.retention, events: RETAINED_EVENTS };
  return new ChannelMachine({ hash: sha256, config: { ...MACHINE_CONFIG, requestEventsMax: RETAINED_EVENTS, retention } });
}

/** The age limit of the test whose channel age retention empties. */
const AGE_MS = 1000;

/** Events stored on the unordered channel in the tests that use one. */
const UNORDERED_EVENTS = 5;
const LINKS = Array.from({ length: UNORDERED_EVENTS }, (_, i) => `link ${i}`);
/** Events retention keeps per channel after the restart that lowers it (at least requestEventsMax). */
const RETAINED_EVENTS = 2;
/** Arrival time of the first unordered event; each next one arrives a ms later. */
const UNORDERED_TS = 1000;

/** Creates the unordered channel net.links of `fault` and registers `publisher` on it. */
function createUnordered(writer: Writer, admin: TestClient, publisher: TestClient, fault: "crash" | "byzantine"): void {
  writer.decide([
    admin.admin({ t: "create-channel", tag: "net.links", fault, order: "none", priority: "normal", public: true }),
    admin.admin({ t: "register", tag: "net.links", role: "publisher", key: publisher.key.publicKey }),
  ]);
}

/**
 * `count` publishes reach this replica on net.links, each stored (and what retention removes
 * deleted) and acknowledged as the replica does. Returns the requests, in order.
 */
function acceptUnordered(writer: Writer, publisher: TestClient, count: number): ClientRequest[] {
  const generation = writer.machine.channelInfo("net.links")?.generation ?? 0;
  const requests: ClientRequest[] = [];
  for (let i = 0; i < count; i++) {
    const req = publisher.pub("net.links", [`link ${i}`]);
    requests.push(req);
    const outcome = acceptOnce(writer.machine, req, UNORDERED_TS + i);
    if (outcome.stored === null) throw new Error(`publish ${i} refused: ${JSON.stringify(outcome.result)}`);
    writer.storage.recordUnordered("net.links", generation, outcome.stored.tsMs, req.body, req.sig, sha256(req.body));
    if (outcome.trimmed !== null)
      writer.storage.trimUnordered("net.links", generation, outcome.trimmed.batchesRemoved, outcome.trimmed.floors);
  }
  writer.storage.commits.flush();
  return requests;
}

/** What `machine` makes of `req` arriving on its unordered channel at `tsMs`. */
function acceptOnce(machine: ChannelMachine, req: ClientRequest, tsMs: number) {
  const decoded = decodeRequestBody(req.body);
  if (!decoded.ok) throw new Error(decoded.error.reason);
  return machine.acceptUnorderedPublish({ body: req.body, sig: req.sig }, decoded.request, tsMs);
}

/** What a subscriber reads from net.links here. */
function unorderedPayloads(machine: ChannelMachine): string[] {
  return machine.channelInfo("net.links") === null ? [] : payloads(machine, "net.links");
}

/** Restarts once more from the store `storage` (closed first). */
function restartStorage(storage: ReplicaStorage) {
  const dir = storage.store.path.replace(/\/[^/]+$/, "");
  storage.close();
  const reopened = openStorage(dir);
  cleanups.push(() => reopened.close());
  const machine = newMachine();
  recover({ storage: reopened, machine, partBytes: PART_BYTES, execute: (requests) => execute(machine, requests) });
  return { storage: reopened, machine };
}

// -------------------------------------------------------------------------------------
// Lost records and the restart fence (core/ordering/PROTOCOL.md §2; core fence.ts)
// -------------------------------------------------------------------------------------

/** The record of view 0, installed: what a replica writes before its first vote. */
const VIEW_0: PersistedRecord = { t: "view", view: 0, installedView: 0, status: "normal", viewChange: null, newView: null };

/** The core the replica starts from `storage`, with the flags ordering-driver.ts passes it. */
function coreStartedFrom(storage: ReplicaStorage, records: PersistedRecord[]): OrderingCore {
  const crypto: CoreCrypto = { hash: sha256, sign: () => new Uint8Array(64), verify: () => false, verifyRequest: () => false };
  const cfg = makeConfig({ id: 0, n: 4, f: 1, mode: "bft", clusterId: "unit" });
  const flags = storage.stoppedClean ? { stoppedClean: true } : storage.lostRecords ? { lostRecords: true } : {};
  return new OrderingCore({ ...cfg, ...flags }, crypto, records);
}

function recoverInto(storage: ReplicaStorage): ReturnType<typeof recover> {
  const machine = newMachine();
  return recover({ storage, machine, partBytes: PART_BYTES, execute: (requests) => execute(machine, requests) });
}

/** Every view fenced at every seq: the fence of a store that lost records. */
const LOST_RECORDS_FENCE = { view: 0, seq: Number.MAX_SAFE_INTEGER };

/**
 * A base at K with decisions past it, the writer closed, then a base part removed in a way
 * its checksum does not cover (as a bug would): only the recomputed state digest catches it.
 */
function writeThenDamageBase(
  dir: string,
  writer: ReturnType<typeof setup>["writer"],
  publisher: ReturnType<typeof setup>["publisher"],
): void {
  publishDecisions(writer, publisher, K - 1);
  writer.stable(K);
  publishDecisions(writer, publisher, 10);
  writer.storage.close();
  const db = new Database(join(dir, STORE_FILE));
  db.exec("DELETE FROM snap_part WHERE part = 0");
  db.close();
}

/** A store that voted in view 0 and decided 200 seqs, stopped, then cut in half: the next open moves it aside. */
function cutStore(): string {
  const { dir, writer, publisher } = setup();
  writer.storage.persist(VIEW_0);
  publishDecisions(writer, publisher, 200);
  writer.storage.close();
  const file = join(dir, STORE_FILE);
  truncateSync(file, Math.floor(statSync(file).size / 2));
  return dir;
}

describe("lost records fence every view", () => {
  test("a damaged unordered event's row loses that event, not the fence: no vote was in it", () => {
    const { dir, writer } = setup();
    const body = new TextEncoder().encode("an unordered event's request body");
    writer.storage.recordUnordered("net.links", 0, 1000, body, new Uint8Array(64).fill(3), sha256(body));
    writer.storage.commits.flush();
    writer.storage.close();
    const db = new Database(join(dir, STORE_FILE));
    db.query("UPDATE unordered SET sum = ?").run(new Uint8Array(32).fill(7));
    db.close();
    const storage = openStorage(dir);
    cleanups.push(() => storage.close());
    expect(storage.corruptAtOpen.map((r) => r.table)).toEqual(["unordered"]);
    expect(storage.lostRecords).toBe(false);
  });

  test("a damaged view row is dropped at open; the core restored without it is fenced all the same", () => {
    const { dir, writer, publisher } = setup();
    writer.storage.persist(VIEW_0);
    publishDecisions(writer, publisher, 3);
    writer.storage.close();
    const db = new Database(join(dir, STORE_FILE));
    const row = db.query("SELECT id, rec FROM core WHERE kind = 'view'").get() as { id: number; rec: Uint8Array };
    const damaged = Uint8Array.from(row.rec);
    damaged[0] = (damaged[0] as number) ^ 0x01;
    db.query("UPDATE core SET rec = ? WHERE id = ?").run(damaged, row.id);
    db.close();
    const storage = openStorage(dir);
    cleanups.push(() => storage.close());
    expect(storage.corruptAtOpen.map((r) => r.table)).toEqual(["core"]);
    expect(storage.lostRecords).toBe(true);
    expect(storage.stoppedClean).toBe(false);
    const recovered = recoverInto(storage);
    expect(recovered.coreRecords.some((r) => r.t === "view")).toBe(false);
    // Without the view record the ordinary fence has no view to cover: it would be none.
    expect(coreStartedFrom(storage, recovered.coreRecords).status().voteFence).toEqual(LOST_RECORDS_FENCE);
  });

  test("a store moved aside (quarantined) starts empty and fenced: it cannot vote in the view it was in", () => {
    const dir = cutStore();
    const storage = openStorage(dir);
    cleanups.push(() => storage.close());
    expect(storage.quarantined).toBe(true);
    expect(storage.lostRecords).toBe(true);
    const recovered = recoverInto(storage);
    expect(recovered.coreRecords).toEqual([]);
    expect(coreStartedFrom(storage, recovered.coreRecords).status().voteFence).toEqual(LOST_RECORDS_FENCE);
  });

  test("damage recovery finds (a base that fails) ends the clean stop's exemption, and that run leaves no marker at its own clean stop", () => {
    const { dir, writer, publisher } = setup();
    writer.storage.persist(VIEW_0);
    writeThenDamageBase(dir, writer, publisher);
    const storage = openStorage(dir);
    // The rows are intact at open: only recovery sees that the base does not hash.
    expect(storage.stoppedClean).toBe(true);
    const recovered = recoverInto(storage);
    expect(recovered.stableSeq).toBe(0);
    expect(storage.lostRecords).toBe(true);
    expect(storage.stoppedClean).toBe(false);
    expect(coreStartedFrom(storage, recovered.coreRecords).status().voteFence).toEqual(LOST_RECORDS_FENCE);
    storage.close();
    // The next start is fenced in every view again: the store keeps asking until the core's fence ends.
    const next = openStorage(dir);
    expect(next.lostRecords).toBe(true);
    expect(next.stoppedClean).toBe(false);
    expect(coreStartedFrom(next, recoverInto(next).coreRecords).status().voteFence).toEqual(LOST_RECORDS_FENCE);
    next.close();
    const after = openStorage(dir);
    cleanups.push(() => after.close());
    expect(after.lostRecords).toBe(true);
  });

  test("damage found while running (a read for a peer) fences the next start, not this run; damage to unordered events fences none", () => {
    const { dir, writer, publisher } = setup();
    writer.storage.persist(VIEW_0);
    publishDecisions(writer, publisher, 3);
    writer.storage.reportCorrupt([{ table: "unordered", ids: [1], key: "id 1", reason: "checksum" }]);
    expect(writer.storage.lostRecords).toBe(false);
    writer.storage.reportCorrupt([{ table: "snap_part", ids: [5, 0], key: "seq 5 part 0", reason: "checksum" }]);
    expect(writer.storage.lostRecords).toBe(true);
    writer.storage.close();
    const next = openStorage(dir);
    cleanups.push(() => next.close());
    expect(next.corruptAtOpen).toEqual([]);
    expect(next.lostRecords).toBe(true);
    expect(coreStartedFrom(next, recoverInto(next).coreRecords).status().voteFence).toEqual(LOST_RECORDS_FENCE);
  });

  test("a quarantined store asks every start for the fence until the fence ends (clearLostVotes), even after a clean stop", () => {
    const dir = cutStore();
    const first = openStorage(dir);
    expect(first.quarantined).toBe(true);
    // A kill -9 before the fence ends: the files as the running store left them, opened
    // again; the open finds no damage, and still the lost records.
    const copy = `${dir}-killed`;
    mkdirSync(copy);
    cleanups.push(() => rmSync(copy, { recursive: true, force: true }));
    for (const name of [STORE_FILE, `${STORE_FILE}-wal`]) if (existsSync(join(dir, name))) copyFileSync(join(dir, name), join(copy, name));
    first.close();
    const killed = openStorage(copy);
    expect(killed.quarantined).toBe(false);
    expect(killed.corruptAtOpen).toEqual([]);
    expect(killed.lostRecords).toBe(true);
    expect(coreStartedFrom(killed, recoverInto(killed).coreRecords).status().voteFence).toEqual(LOST_RECORDS_FENCE);
    // Stopped cleanly while still fenced: no marker, and the fence again.
    killed.close();
    const stopped = openStorage(copy);
    expect(stopped.stoppedClean).toBe(false);
    expect(stopped.lostRecords).toBe(true);
    // The core's fence ended: the row goes with the next commit; this run still leaves no marker.
    stopped.clearLostVotes();
    stopped.commits.flush(true);
    stopped.close();
    const cleared = openStorage(copy);
    cleanups.push(() => cleared.close());
    expect(cleared.lostRecords).toBe(false);
    expect(cleared.stoppedClean).toBe(false);
    expect(coreStartedFrom(cleared, recoverInto(cleared).coreRecords).status().voteFence).not.toEqual(LOST_RECORDS_FENCE);
  });
});

describe("the clean-stop marker under sync normal", () => {
  const DIR = "/sim/replica-0";
  const FILE = `${DIR}/${STORE_FILE}`;
  const openOn = (disk: SimDisk, sync: SyncPolicy): ReplicaStorage =>
    ReplicaStorage.open({ dir: DIR, sync, cluster: "unit", replica: 0, log: testLog(), metrics: new Metrics(), disk });

  test("is cleared durably at open: a power loss after the run voted does not bring it back", () => {
    // A disk where only an fsync makes a commit durable, and a power loss keeps nothing after it.
    const disk = new SimDisk({ rng: new Prng(1), delayMax: 0, now: () => 0, keepUnsynced: false });
    const stopped = openOn(disk, "full");
    stopped.store.transaction(() => stopped.store.putMeta(STOPPED_CLEAN_META, true));
    disk.crash(FILE, new Prng(1));
    const started = openOn(disk, "normal");
    expect(started.stoppedClean).toBe(true);
    // The run votes (its records reach the operating system only), then the power goes.
    started.store.transaction(() => started.store.insertCore("accept", 1, new Uint8Array([1])));
    disk.crash(FILE, new Prng(1));
    expect(openOn(disk, "normal").stoppedClean).toBe(false);
  });
});
