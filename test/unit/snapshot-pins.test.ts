/**
 * The states at the last epoch switch points stay servable (src/replica/storage/snapshots.ts
 * `pin`): a replica several epochs behind fetches each switch point's state in turn, long
 * after later checkpoints became stable here. A real keeper, machine and store.
 */
import { afterEach, expect, test } from "bun:test";
import type { ClientTableExport } from "../../src/core/ordering/index.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import { checkpointStateDigest } from "../../src/replica/storage/digest.ts";
import { CAPTURES_MAX, type PartSource, SnapshotKeeper } from "../../src/replica/storage/snapshots.ts";
import { StreamReader } from "../../src/replica/storage/stream.ts";
import { SERVE_OPENS_PER_PEER_MAX } from "../../src/replica/state-transfer.ts";
import { execute, newMachine, openStorage, tempDir, TestClient, testLog } from "./storage-fixtures.ts";

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
});

const INTERVAL = 128;
const KEEP = 4;
const CLIENTS: ClientTableExport = [["ab:cd", 7]];

/** Reads a served stream whole into a fresh machine: the digest of the state it carries. */
function readOut(source: PartSource): Uint8Array {
  const target = newMachine();
  const importer = target.beginRestore();
  const reader = new StreamReader(importer);
  for (let part = source.next(); part !== null; part = source.next()) expect(reader.push(part)).toEqual({ ok: true });
  expect(reader.finish()).toEqual({ ok: true });
  expect(target.installSnapshot(importer)).toEqual({ ok: true });
  return checkpointStateDigest(source.seq, target.digest(), reader.meta?.clients ?? []);
}

/**
 * A keeper over a real store and machine with one channel; `checkpoint(seq)` publishes an
 * event, captures the state at seq and makes it stable.
 */
function keeperWithChannel() {
  const t = tempDir();
  cleanups.push(t.remove);
  const metrics = new Metrics();
  const storage = openStorage(t.dir, testLog(), metrics);
  cleanups.push(() => storage.close());
  const machine = newMachine();
  const admin = new TestClient();
  const publisher = new TestClient();
  execute(machine, [
    admin.admin({ t: "create-channel", tag: "sec.alerts", fault: "byzantine", order: "total", priority: "high", public: true }),
    admin.admin({ t: "register", tag: "sec.alerts", role: "publisher", key: publisher.key.publicKey }),
  ]);
  const keeper = new SnapshotKeeper({ storage, machine, partBytes: 512, log: testLog(), metrics }, null);
  const digests = new Map<number, Uint8Array>();
  const checkpoint = (seq: number): void => {
    execute(machine, [publisher.pub("sec.alerts", [`alert ${seq}`])]);
    keeper.capture(seq, CLIENTS);
    const digest = checkpointStateDigest(seq, machine.digest(), CLIENTS);
    digests.set(seq, digest);
    keeper.onStable(seq, digest, []);
  };
  return { metrics, machine, publisher, keeper, digests, checkpoint, storage };
}

test("the last switch points pinned stay servable after later stable checkpoints; an older one is let go", () => {
  const { metrics, machine, keeper, digests, checkpoint } = keeperWithChannel();
  // Five switch points, each followed by more stable checkpoints than the keeper keeps captures of.
  const switches: number[] = [];
  const retainedAt = new Map<number, number>();
  for (let n = 1; n <= 5 * (CAPTURES_MAX + 2); n++) {
    const seq = n * INTERVAL;
    checkpoint(seq);
    if (n % (CAPTURES_MAX + 2) === 1) {
      keeper.pin(seq, KEEP);
      switches.push(seq);
      retainedAt.set(seq, machine.channelInfo("sec.alerts")?.retainedBytes ?? 0);
    }
  }
  // The gauges: the pinned states held, and the batch bytes they refer to.
  expect(metrics.get("snapshot_pinned_states")).toBe(KEEP);
  const pinnedBytes = switches.slice(1).reduce((sum, seq) => sum + (retainedAt.get(seq) ?? 0), 0);
  expect(pinnedBytes).toBeGreaterThan(0);
  expect(metrics.get("snapshot_pinned_bytes")).toBe(pinnedBytes);
  expect(switches.length).toBe(KEEP + 1);
  const servable = (seq: number) => keeper.openSource(seq, digests.get(seq) as Uint8Array) !== null;
  // The oldest switch point is past the kept ones: let go.
  expect(servable(switches[0] as number)).toBe(false);
  for (const seq of switches.slice(1)) expect(servable(seq)).toBe(true);
  // An unpinned checkpoint between them was dropped as usual.
  expect(servable((switches[1] as number) + INTERVAL)).toBe(false);
});

test("a pinned switch point and the stable checkpoint can be served any number of times, long after the machine moved on", () => {
  const { machine, publisher, keeper, digests, checkpoint } = keeperWithChannel();
  const switchPoint = INTERVAL;
  checkpoint(switchPoint);
  keeper.pin(switchPoint, KEEP);
  for (let i = 2; i <= CAPTURES_MAX + 2; i++) checkpoint(i * INTERVAL);
  const stable = (CAPTURES_MAX + 2) * INTERVAL;
  // The machine has moved past the stable checkpoint too.
  execute(machine, [publisher.pub("sec.alerts", ["after the checkpoint"])]);
  // Far more opens than one peer may make within a window: every correct peer asking,
  // and a faulty one asking again and again, must not use the states up.
  const opens = 4 * SERVE_OPENS_PER_PEER_MAX;
  for (const seq of [switchPoint, stable]) {
    const digest = digests.get(seq) as Uint8Array;
    for (let i = 0; i < opens; i++) {
      const source = keeper.openSource(seq, digest);
      expect(source).not.toBeNull();
      // Some opens are abandoned after a part (a restarted fetch); the others are read whole.
      if (i % 2 === 0) source?.next();
      else expect(readOut(source as PartSource)).toEqual(digest);
    }
  }
});

test("a pinned seq with no capture here leaves no room for an extra unpinned capture", () => {
  const t = tempDir();
  cleanups.push(t.remove);
  const metrics = new Metrics();
  const storage = openStorage(t.dir, testLog(), metrics);
  cleanups.push(() => storage.close());
  const machine = newMachine();
  const keeper = new SnapshotKeeper({ storage, machine, partBytes: 512, log: testLog(), metrics }, null);
  // A switch point pinned whose state this replica never captured (it fetched a later one).
  keeper.pin(INTERVAL, KEEP);
  const digests = new Map<number, Uint8Array>();
  // Checkpoints that do not become stable (a group that cannot agree): only the last CAPTURES_MAX are kept.
  for (let checkpoint = 2; checkpoint <= CAPTURES_MAX + 2; checkpoint++) {
    const seq = checkpoint * INTERVAL;
    keeper.capture(seq, CLIENTS);
    digests.set(seq, checkpointStateDigest(seq, machine.digest(), CLIENTS));
  }
  const held = [...digests].filter(([seq, digest]) => keeper.openSource(seq, digest) !== null).map(([seq]) => seq);
  expect(held).toEqual([...digests.keys()].slice(-CAPTURES_MAX));
  expect(metrics.get("snapshot_pinned_states")).toBe(0);
});

test("a switch point gets a base once the switch is stored, not before, whatever the log since the last base holds; an earlier base being written gives way; a replica that captured the state after it became stable writes it too", () => {
  const { keeper, digests, checkpoint, storage, machine, publisher } = keeperWithChannel();
  const writeOut = (seq: number): void => {
    for (let tick = 0; tick < 10_000 && keeper.baseHead?.seq !== seq; tick++) keeper.tick();
    storage.commits.flush(true);
  };
  // A first base, at the first checkpoint (the log since none holds rows).
  storage.sinceBase.rows = 1;
  checkpoint(INTERVAL);
  writeOut(INTERVAL);
  expect(keeper.baseHead?.seq).toBe(INTERVAL);
  // The next checkpoint: the log since that base is far too short for another.
  checkpoint(2 * INTERVAL);
  for (let tick = 0; tick < 100; tick++) keeper.tick();
  expect(keeper.baseHead?.seq).toBe(INTERVAL);
  // The one after ends the epoch: though a base is due by the usual rule, none starts there
  // until the switch is stored; then one does.
  storage.sinceBase.rows = 1_000_000;
  keeper.switchPending(3 * INTERVAL);
  checkpoint(3 * INTERVAL);
  for (let tick = 0; tick < 100; tick++) keeper.tick();
  expect(keeper.baseHead?.seq).toBe(INTERVAL);
  expect(keeper.baseAtSwitch(3 * INTERVAL, [])).toBe(true);
  writeOut(3 * INTERVAL);
  expect(keeper.isBase(3 * INTERVAL, digests.get(3 * INTERVAL) as Uint8Array)).toBe(true);
  // A base due at an earlier checkpoint is being written when the next switch is stored: it gives way.
  checkpoint(4 * INTERVAL);
  keeper.tick();
  keeper.switchPending(5 * INTERVAL);
  checkpoint(5 * INTERVAL);
  expect(keeper.baseAtSwitch(5 * INTERVAL, [])).toBe(true);
  writeOut(5 * INTERVAL);
  expect(keeper.isBase(5 * INTERVAL, digests.get(5 * INTERVAL) as Uint8Array)).toBe(true);
  // The parts the abandoned base had written went with the adoption.
  expect(storage.store.partSeqs().map((row) => row.seq)).toEqual([5 * INTERVAL]);
  // A replica whose peers made the switch point stable before it executed it captures the state after the stable checkpoint.
  const late = 6 * INTERVAL;
  keeper.switchPending(late);
  execute(machine, [publisher.pub("sec.alerts", ["the late switch point"])]);
  const digest = checkpointStateDigest(late, machine.digest(), CLIENTS);
  keeper.onStable(late, digest, []);
  keeper.capture(late, CLIENTS);
  expect(keeper.baseAtSwitch(late, [])).toBe(true);
  writeOut(late);
  expect(keeper.isBase(late, digest)).toBe(true);
  // No state held there (a replica that never captured it): nothing to write, and it says so.
  expect(keeper.baseAtSwitch(8 * INTERVAL, [])).toBe(false);
});
