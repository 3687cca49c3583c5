// State transfer (src/replica/state-transfer.ts) between in-process replicas over an
// in-memory network: chunked and checked against the signed digest, a lying source is
// detected and another asked, a silent one replaced, an interrupted transfer resumed
// from the parts on disk, and each side holds only a few parts at a time. A source that
// sends parts no valid stream has (empty, short before the end, past the longest valid
// state), no new part for a while, or new parts too slowly is dropped and distrusted for
// the target, and a stream already whole on disk is installed without asking anyone. A
// server sends one peer no more than its byte budget, a cached part again only after a
// while, and nothing for a moment after the peer's link was full.
import { decodeEnvelope } from "../../src/replica/peer-messages.ts";
import { afterEach, describe, expect, test } from "bun:test";
import type { ChannelMachine } from "../../src/core/channels/machine.ts";
import type { SnapshotImport } from "../../src/core/channels/snapshot.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import {
  encodeTransferMessage,
  PART_TIMEOUT_MS,
  UNSENT_ASK_RETRY_MS,
  REASK_MS,
  SERVE_CACHE_PARTS,
  SERVE_OPENS_PER_PEER_MAX,
  SERVE_RESEND_INTERVAL_MS,
  SERVE_BYTES_BURST_MAX,
  SERVE_BYTES_PER_SECOND_MAX,
  SERVE_LINK_FULL_BACKOFF_MS,
  SOURCE_PROGRESS_BYTES_PER_SECOND_MIN,
  SOURCE_PROGRESS_WINDOW_MS,
  SOURCE_ROUND_TRIP_MS_MAX,
  StateTransfer,
  type StateTransferOptions,
  streamPartsBound,
  TRANSFER_WINDOW_PARTS,
  type TransferMessage,
  validateTransferMessage,
} from "../../src/replica/state-transfer.ts";
import { checkpointStateDigest } from "../../src/replica/storage/digest.ts";
import type { ReplicaStorage, SnapshotHead } from "../../src/replica/storage/index.ts";
import { recover } from "../../src/replica/storage/recovery.ts";
import { SnapshotKeeper } from "../../src/replica/storage/snapshots.ts";
import { encodeStreamMeta, PartCutter, STREAM_PART_BYTES_MAX } from "../../src/replica/storage/stream.ts";
import { execute, newMachine, openStorage, payloads, tempDir, testLog, TestClient } from "./storage-fixtures.ts";

const PART_BYTES = 512;
const SEQ = 256;
const CLIENTS: [string, number][] = [["ab:cd", 7]];

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
});

interface Node {
  readonly id: number;
  readonly storage: ReplicaStorage;
  readonly machine: ChannelMachine;
  readonly metrics: Metrics;
  readonly transfer: StateTransfer;
  readonly keeper: SnapshotKeeper;
  installed: { importer: SnapshotImport; head: SnapshotHead } | null;
}

/** An in-memory network: messages queue up and are delivered by `pump`; `filter` may drop or alter them. */
class Network {
  readonly nodes = new Map<number, Node>();
  readonly queue: { from: number; to: number; bytes: Uint8Array }[] = [];
  now = 1_000_000;
  filter: (from: number, to: number, m: TransferMessage) => TransferMessage | null = (_f, _t, m) => m;
  readonly delivered: { from: number; to: number; m: TransferMessage }[] = [];
  /** Peers with no link: a send to one fails (returns false), as the mesh's does while a link is down. */
  readonly unlinked = new Set<number>();
  /** A send for which this says true fails as the mesh's does when the link's queue is full. */
  queueFull: (from: number, to: number) => boolean = () => false;

  constructor(
    readonly partBytes = PART_BYTES,
    /** The nodes' budgets (StateTransferOptions' serveBudget and sourceBytesPerSecondMin), the defaults when not set. */
    readonly budgets: Pick<StateTransferOptions, "serveBudget" | "sourceBytesPerSecondMin"> = {},
  ) {}

  send(from: number, to: number, bytes: Uint8Array): boolean {
    if (this.unlinked.has(to) || this.queueFull(from, to)) return false;
    this.queue.push({ from, to, bytes });
    return true;
  }

  pump(limit = 100_000): void {
    for (let i = 0; i < limit && this.queue.length > 0; i++) {
      const { from, to, bytes } = this.queue.shift() as { from: number; to: number; bytes: Uint8Array };
      const envelope = decodeEnvelope(bytes);
      const m = envelope === null ? null : validateTransferMessage(envelope.message, this.partBytes);
      if (envelope?.kind !== "state-transfer" || m === null) throw new Error("malformed transfer message");
      const passed = this.filter(from, to, m);
      if (passed === null) continue;
      this.delivered.push({ from, to, m: passed });
      this.nodes.get(to)?.transfer.onMessage(from, passed);
    }
    for (const node of this.nodes.values()) node.storage.commits.flush();
  }

  addNode(id: number, machine: ChannelMachine, storage?: ReplicaStorage, appliedSeq = 0, streamBytesMax?: number): Node {
    const t = tempDir();
    cleanups.push(t.remove);
    const metrics = new Metrics();
    const store = storage ?? openStorage(t.dir, testLog(), metrics);
    cleanups.push(() => store.close());
    const partBytes = this.partBytes;
    const keeper = new SnapshotKeeper({ storage: store, machine, partBytes, log: testLog(), metrics }, null);
    if (appliedSeq === SEQ) keeper.capture(SEQ, CLIENTS);
    const resumable = storage === undefined ? null : recoverIncoming(store, machine, partBytes);
    const node: Node = {
      id,
      keeper,
      storage: store,
      machine,
      metrics,
      installed: null,
      transfer: new StateTransfer(
        {
          self: id,
          send: (to, bytes) => this.send(id, to, bytes),
          keeper,
          storage: store,
          machine,
          partBytes,
          ...(streamBytesMax === undefined ? {} : { streamBytesMax }),
          ...this.budgets,
          log: testLog(),
          metrics,
          now: () => this.now,
          install: (importer, head) => {
            node.installed = { importer, head };
          },
        },
        resumable,
      ),
    };
    this.nodes.set(id, node);
    return node;
  }
}

function recoverIncoming(
  storage: ReplicaStorage,
  machine: ChannelMachine,
  partBytes: number,
): { head: SnapshotHead; parts: number } | null {
  return recover({ storage, machine, partBytes, execute: () => undefined }).incoming;
}

/** A machine with a few hundred events: many parts at PART_BYTES. */
function sourceMachine(): ChannelMachine {
  const machine = newMachine();
  const admin = new TestClient();
  const publisher = new TestClient();
  execute(machine, [
    admin.admin({ t: "create-channel", tag: "sec.alerts", fault: "byzantine", order: "total", priority: "high", public: true }),
    admin.admin({ t: "register", tag: "sec.alerts", role: "publisher", key: publisher.key.publicKey }),
  ]);
  for (let i = 0; i < 60; i++) execute(machine, [publisher.pub("sec.alerts", [`alert ${i}`, `alert ${i} again`])]);
  return machine;
}

function targetFor(machine: ChannelMachine, from: number[]) {
  return { seq: SEQ, stateDigest: checkpointStateDigest(SEQ, machine.digest(), CLIENTS), from, proof: [] };
}

/** Three honest-or-not servers holding the same state (0, 2, 3) and an empty fetcher (1). */
function cluster(
  options: {
    partBytes?: number;
    streamBytesMax?: number;
    state?: ChannelMachine;
    budgets?: Pick<StateTransferOptions, "serveBudget" | "sourceBytesPerSecondMin">;
  } = {},
) {
  const net = new Network(options.partBytes, options.budgets);
  const state = options.state ?? sourceMachine();
  for (const id of [0, 2, 3]) net.addNode(id, cloneOf(state), undefined, SEQ);
  const fetcher = net.addNode(1, newMachine(), undefined, 0, options.streamBytesMax);
  return { net, state, fetcher };
}

function cloneOf(machine: ChannelMachine): ChannelMachine {
  const copy = newMachine();
  expect(copy.restore(machine.snapshot())).toEqual({ ok: true });
  return copy;
}

function partsFrom(net: Network, from: number): number {
  return net.delivered.filter((d) => d.from === from && d.m.t === "part").length;
}

/** The fetcher installed `state`, every part from `source`, and `untouched` was never asked anything. */
function expectWholeFrom(net: Network, fetcher: Node, state: ChannelMachine, source: number, untouched: number): void {
  expect(fetcher.installed?.importer.digest()).toEqual(state.digest());
  expect(partsFrom(net, source)).toBe(fetcher.installed?.head.parts ?? -1);
  expect(net.delivered.filter((d) => d.to === untouched).length).toBe(0);
}

/** Bytes of the stream of `state` at SEQ: the meta record and the snapshot, as a server cuts them. */
function streamBytes(state: ChannelMachine): number {
  const cutter = new PartCutter(encodeStreamMeta({ seq: SEQ, clients: CLIENTS }), state.exportSnapshot(), 1024 * 1024);
  let bytes = 0;
  for (let part = cutter.next(); part !== null; part = cutter.next()) bytes += part.length;
  return bytes;
}

/**
 * Makes replica `id` a Byzantine source: every get it receives is answered with the parts
 * `reply` makes up, its own server never sees the get. Counts the gets it was sent.
 */
function fakeSource(net: Network, id: number, reply: (part: number) => { data: Uint8Array; end: boolean }): { gets: number } {
  const asked = { gets: 0 };
  const passOn = net.filter;
  net.filter = (from, to, m) => {
    if (to !== id || m.t !== "get") return passOn(from, to, m);
    asked.gets++;
    for (let part = m.part; part < m.part + m.count; part++) {
      const { data, end } = reply(part);
      net.send(id, from, encodeTransferMessage({ t: "part", seq: m.seq, nonce: m.nonce, part, data, end }));
    }
    return null;
  };
  return asked;
}

/**
 * Part `part`, of `size` bytes, of a stream whose meta record claims `metaBytes` bytes: the
 * reader takes such parts without complaint until the claimed record ends, so a source
 * sending them never fails the stream.
 */
function endlessMeta(part: number, size: number, metaBytes = 16 * 1024 * 1024): Uint8Array {
  const data = new Uint8Array(size);
  if (part === 0) new DataView(data.buffer).setUint32(0, metaBytes);
  return data;
}

/**
 * Stops `node` and starts it again on the same data directory, as a restart does; that
 * takes a while, past the servers' SERVE_RESEND_INTERVAL_MS for the parts they just sent.
 */
function restart(net: Network, node: Node): Node {
  net.now += SERVE_RESEND_INTERVAL_MS;
  net.nodes.delete(node.id);
  const dir = node.storage.store.path.replace(/\/[^/]+$/, "");
  node.storage.close();
  return net.addNode(node.id, newMachine(), openStorage(dir));
}

/** Runs a whole transfer to `fetcher`, whose install leaves the head incoming, as a restart before the install would. */
/** Restarts `fetcher` and asks for `target` again: it must install `state` from its disk, sending nothing. */
function installFromDiskAlone(net: Network, fetcher: Node, target: ReturnType<typeof targetFor>, state: ChannelMachine): Node {
  const restarted = restart(net, fetcher);
  restarted.transfer.fetch(target);
  expect(net.queue).toEqual([]);
  expect(restarted.installed?.importer.digest()).toEqual(state.digest());
  return restarted;
}

function fetchWhole(net: Network, fetcher: Node, target: ReturnType<typeof targetFor>): number {
  fetcher.transfer.fetch(target);
  net.pump();
  const parts = fetcher.installed?.head.parts ?? -1;
  expect(fetcher.storage.store.partSeqs()).toEqual([{ seq: SEQ, count: parts }]);
  return parts;
}

describe("state transfer", () => {
  test("a replica fetches the state in parts, checks it against the signed digest and installs it", () => {
    const { net, state, fetcher } = cluster();
    fetcher.transfer.fetch(targetFor(state, [0, 2, 3]));
    net.pump();
    const installed = fetcher.installed;
    if (installed === null) throw new Error("nothing installed");
    expect(installed.head.parts).toBeGreaterThan(TRANSFER_WINDOW_PARTS);
    expect(installed.head.seq).toBe(SEQ);
    expect(installed.head.clients).toEqual(CLIENTS);
    expect(installed.importer.digest()).toEqual(state.digest());
    expect(fetcher.machine.installSnapshot(installed.importer)).toEqual({ ok: true });
    expect(payloads(fetcher.machine, "sec.alerts")).toEqual(payloads(state, "sec.alerts"));
    // Every part went to disk as it arrived (the incoming snapshot a restart can resume).
    expect(fetcher.storage.store.partSeqs()).toEqual([{ seq: SEQ, count: installed.head.parts }]);
    expect(fetcher.metrics.get("state_transfer_completed_total")).toBe(1);
  });

  test("the fetch under way awaits parts only from its source, of its seq and nonce: those alone are spared the byte budget (replica.ts)", () => {
    const { net, state, fetcher } = cluster();
    expect(fetcher.transfer.awaitsPart(0, SEQ, 0)).toBe(false);
    fetcher.transfer.fetch(targetFor(state, [0, 2, 3]));
    const ask = net.queue.find((q) => q.from === 1);
    const envelope = ask === undefined ? null : decodeEnvelope(ask.bytes);
    const get = envelope === null ? null : validateTransferMessage(envelope.message, net.partBytes);
    if (ask === undefined || get === null || get.t !== "get") throw new Error("no get sent");
    expect(fetcher.transfer.awaitsPart(ask.to, SEQ, get.nonce)).toBe(true);
    expect(fetcher.transfer.awaitsPart(ask.to, SEQ, get.nonce + 1)).toBe(false);
    expect(fetcher.transfer.awaitsPart(ask.to, SEQ + 1, get.nonce)).toBe(false);
    expect(fetcher.transfer.awaitsPart([0, 2, 3].find((id) => id !== ask.to) as number, SEQ, get.nonce)).toBe(false);
    net.pump();
    expect(fetcher.installed).not.toBeNull();
    expect(fetcher.transfer.awaitsPart(ask.to, SEQ, get.nonce)).toBe(false);
  });

  test("a source asked for a state it does not hold answers none and counts the refusal", () => {
    const { net, state, fetcher } = cluster();
    const target = { ...targetFor(state, [2]), stateDigest: new Uint8Array(32).fill(7) };
    fetcher.transfer.fetch(target);
    net.pump();
    expect(net.delivered.some(({ from, m }) => from === 2 && m.t === "none" && m.reason === "state not held here")).toBe(true);
    expect(net.nodes.get(2)?.metrics.get("state_transfer_serve_refused_total")).toBe(1);
    expect(fetcher.installed).toBeNull();
  });

  test("a Byzantine source serving altered parts is detected and another replica is asked", () => {
    const { net, state, fetcher } = cluster();
    net.filter = (from, _to, m) => {
      if (from !== 2 || m.t !== "part" || m.part !== 3) return m;
      const data = Uint8Array.from(m.data);
      data[data.length - 1] = (data[data.length - 1] as number) ^ 0x01;
      return { ...m, data };
    };
    fetcher.transfer.fetch(targetFor(state, [2, 0, 3]));
    net.pump();
    expect(fetcher.metrics.get("state_transfer_rejected_total")).toBe(1);
    expect(fetcher.installed?.importer.digest()).toEqual(state.digest());
    // After the rejection the whole state came again, from replica 0.
    expect(partsFrom(net, 0)).toBe(fetcher.installed?.head.parts ?? -1);
  });

  test("a source that does not answer is replaced after the part timeout", () => {
    const { net, state, fetcher } = cluster();
    net.filter = (from, _to, m) => (from === 2 ? null : m);
    fetcher.transfer.fetch(targetFor(state, [2, 3]));
    net.pump();
    expect(fetcher.installed).toBeNull();
    net.now += PART_TIMEOUT_MS + 1;
    fetcher.transfer.tick();
    net.pump();
    expect(fetcher.installed?.importer.digest()).toEqual(state.digest());
    expect(fetcher.metrics.get("state_transfer_source_timeouts_total")).toBe(1);
  });

  test("an ask that could not be sent (no link yet) is tried once more, then goes to the next source, not after the part timeout", () => {
    const { net, state, fetcher } = cluster();
    net.unlinked.add(2);
    fetcher.transfer.fetch(targetFor(state, [2, 3]));
    net.pump();
    expect(fetcher.installed).toBeNull();
    net.now += UNSENT_ASK_RETRY_MS;
    expect(UNSENT_ASK_RETRY_MS).toBeLessThan(PART_TIMEOUT_MS);
    fetcher.transfer.tick();
    net.pump();
    expect(fetcher.installed?.importer.digest()).toEqual(state.digest());
    // The first ask, and the one sent again before replica 3 was asked.
    expect(fetcher.metrics.get("state_transfer_asks_unsent_total")).toBe(2);
    expect(fetcher.metrics.get("state_transfer_source_timeouts_total")).toBe(0);
    // Replica 2 was not distrusted: with no link anywhere the asks go round, and the first link up serves.
    const again = cluster();
    again.net.unlinked.add(2);
    again.net.unlinked.add(3);
    again.fetcher.transfer.fetch(targetFor(again.state, [2, 3]));
    // Asked 2 (unsent), then 3 (unsent); replica 2's link comes up, and 2 is asked again.
    again.net.now += UNSENT_ASK_RETRY_MS;
    again.fetcher.transfer.tick();
    again.net.unlinked.delete(2);
    again.net.now += UNSENT_ASK_RETRY_MS;
    again.fetcher.transfer.tick();
    again.net.pump();
    expect(again.fetcher.installed?.importer.digest()).toEqual(again.state.digest());
    expect(partsFrom(again.net, 2)).toBe(again.fetcher.installed?.head.parts ?? -1);
  });

  test("a source that cannot be reached does not keep the transfer from asking again those that could not serve a moment ago", () => {
    const { net, state, fetcher } = cluster();
    // Replica 4 does not hold the state; replica 2 refuses for now (its serving bound for
    // this peer reached, say); replica 3 cannot be reached (a key the fetcher's epoch does not accept).
    net.addNode(4, newMachine());
    let refusing = true;
    const passOn = net.filter;
    net.filter = (from, to, m) => {
      if (to !== 2 || m.t !== "get" || !refusing) return passOn(from, to, m);
      net.send(
        2,
        from,
        encodeTransferMessage({ t: "none", seq: m.seq, nonce: m.nonce, reason: "too many restarts of this transfer; ask another replica" }),
      );
      return null;
    };
    net.unlinked.add(3);
    fetcher.transfer.fetch(targetFor(state, [4, 2, 3]));
    net.pump();
    for (let i = 0; i < 10; i++) {
      net.now += UNSENT_ASK_RETRY_MS;
      fetcher.transfer.tick();
      net.pump();
    }
    expect(fetcher.installed).toBeNull();
    // Replica 3 is not asked again and again meanwhile: it had its turn, like the others.
    expect(fetcher.metrics.get("state_transfer_asks_unsent_total")).toBe(2);
    refusing = false;
    // After the timeout every source is asked again, in turn: replica 2 serves now.
    for (let waited = 0; waited <= PART_TIMEOUT_MS && fetcher.installed === null; waited += UNSENT_ASK_RETRY_MS) {
      net.now += UNSENT_ASK_RETRY_MS;
      fetcher.transfer.tick();
      net.pump();
    }
    expect(fetcher.installed?.importer.digest()).toEqual(state.digest());
    expect(partsFrom(net, 2)).toBe(fetcher.installed?.head.parts ?? -1);
  });

  test("an ask that could not leave while others are answered (a full queue) is sent again with the next part: no hole, no wait", () => {
    const { net, state, fetcher } = cluster();
    let gets = 0;
    // The fetcher's third ask (part 5, asked when part 1 arrived) finds the link's queue full.
    net.queueFull = (from) => from === 1 && ++gets === 3;
    fetcher.transfer.fetch(targetFor(state, [2, 3]));
    net.pump();
    expect(fetcher.metrics.get("state_transfer_asks_unsent_total")).toBe(1);
    expectWholeFrom(net, fetcher, state, 2, 3);
    expect(fetcher.metrics.get("state_transfer_source_timeouts_total")).toBe(0);
  });

  test("an ask that could not leave with nothing else asked (a full queue) is sent again to the same source, not the next", () => {
    const { net, state, fetcher } = cluster();
    let full = true;
    net.queueFull = (from, to) => from === 1 && to === 2 && full;
    fetcher.transfer.fetch(targetFor(state, [2, 3]));
    net.pump();
    expect(fetcher.metrics.get("state_transfer_asks_unsent_total")).toBe(1);
    // The queue drains before the retry.
    full = false;
    net.now += UNSENT_ASK_RETRY_MS;
    fetcher.transfer.tick();
    net.pump();
    // Every part from replica 2; no cursor opened at replica 3.
    expectWholeFrom(net, fetcher, state, 2, 3);
    expect(fetcher.metrics.get("state_transfer_asks_unsent_total")).toBe(1);
  });

  test("a part the source could not send mid-stream is asked again soon, and the source kept, not replaced after the part timeout", () => {
    const { net, state, fetcher } = cluster();
    // Replica 2's part 5 is lost once (its queue to replica 1 was full).
    let lost = false;
    net.filter = (from, _to, m) => {
      if (from !== 2 || m.t !== "part" || m.part !== 5 || lost) return m;
      lost = true;
      return null;
    };
    fetcher.transfer.fetch(targetFor(state, [2, 3]));
    net.pump();
    expect(lost).toBe(true);
    expect(fetcher.installed).toBeNull();
    net.now += REASK_MS - 1;
    fetcher.transfer.tick();
    net.pump();
    expect(fetcher.installed).toBeNull();
    net.now += 1;
    fetcher.transfer.tick();
    net.pump();
    expect(fetcher.installed?.importer.digest()).toEqual(state.digest());
    expect(net.delivered.filter((d) => d.to === 3).length).toBe(0);
    expect(fetcher.metrics.get("state_transfer_asks_repeated_total")).toBe(1);
    expect(fetcher.metrics.get("state_transfer_source_timeouts_total")).toBe(0);
  });

  test("a source whose parts could not reach the fetcher (no link back yet) is asked again soon, not after the part timeout", () => {
    const { net, state, fetcher } = cluster();
    // Replica 2 gets the ask, but its parts are lost until its own link to replica 1 is up.
    let linkBack = false;
    net.filter = (from, _to, m) => (from === 2 && m.t === "part" && !linkBack ? null : m);
    fetcher.transfer.fetch(targetFor(state, [2, 3]));
    net.pump();
    expect(fetcher.installed).toBeNull();
    linkBack = true;
    net.now += REASK_MS - 1;
    fetcher.transfer.tick();
    net.pump();
    expect(fetcher.installed).toBeNull();
    net.now += 1;
    fetcher.transfer.tick();
    net.pump();
    expect(fetcher.installed?.importer.digest()).toEqual(state.digest());
    expect(partsFrom(net, 2)).toBe(fetcher.installed?.head.parts ?? -1);
    expect(fetcher.metrics.get("state_transfer_asks_repeated_total")).toBe(1);
    expect(fetcher.metrics.get("state_transfer_source_timeouts_total")).toBe(0);
  });

  test("asks repeated for a silent source are bounded, and the part timeout still replaces it", () => {
    const { net, state, fetcher } = cluster();
    net.filter = (from, _to, m) => (from === 2 ? null : m);
    fetcher.transfer.fetch(targetFor(state, [2, 3]));
    for (let ms = 0; ms <= PART_TIMEOUT_MS; ms += 10) {
      net.now += 10;
      fetcher.transfer.tick();
      net.pump();
    }
    // 500, 1000, 1500, 2000 and 2500 ms after the ask: five repeats, then replica 3 serves.
    expect(fetcher.metrics.get("state_transfer_asks_repeated_total")).toBe(5);
    expect(fetcher.metrics.get("state_transfer_source_timeouts_total")).toBe(1);
    expect(fetcher.installed?.importer.digest()).toEqual(state.digest());
  });

  test("a request for the state a transfer just completed, made before its install and run after it, does not start it again over its parts", () => {
    const { net, state, fetcher } = cluster();
    const target = targetFor(state, [2, 0]);
    const parts = fetchWhole(net, fetcher, target);
    const asked = net.delivered.filter((d) => d.to === 2 || d.to === 0).length;
    // The core's earlier request, run once the disk caught up with it (effects wait for it).
    fetcher.transfer.fetch(target);
    net.pump();
    expect(net.delivered.filter((d) => d.to === 2 || d.to === 0).length).toBe(asked);
    expect(fetcher.storage.store.partSeqs()).toEqual([{ seq: SEQ, count: parts }]);
    expect(fetcher.transfer.fetching).toBeNull();
    // Installed, the state is this replica's base: a request for it still leaves its rows alone.
    const head = fetcher.installed?.head as SnapshotHead;
    fetcher.keeper.adoptInstalled(head);
    fetcher.transfer.installDeclined(SEQ);
    fetcher.transfer.fetch(target);
    net.pump();
    expect(fetcher.storage.store.partSeqs()).toEqual([{ seq: SEQ, count: parts }]);
    expect(fetcher.transfer.fetching).toBeNull();
  });

  test("a state whose install was declined is fetched again when the core asks for it again", () => {
    const { net, state, fetcher } = cluster();
    const target = targetFor(state, [2, 0]);
    fetchWhole(net, fetcher, target);
    fetcher.installed = null;
    fetcher.transfer.installDeclined(SEQ);
    fetcher.transfer.fetch(target);
    net.pump();
    expect((fetcher.installed as Node["installed"])?.importer.digest()).toEqual(state.digest());
    expect(fetcher.metrics.get("state_transfer_completed_total")).toBe(2);
  });

  test("a replica that no longer holds the state says so, and the next one serves it", () => {
    const { net, state, fetcher } = cluster();
    net.addNode(4, newMachine());
    fetcher.transfer.fetch(targetFor(state, [4, 0]));
    net.pump();
    expect(net.delivered.some((d) => d.from === 4 && d.m.t === "none")).toBe(true);
    expect(fetcher.installed?.importer.digest()).toEqual(state.digest());
  });

  test("a transfer interrupted by a restart resumes from the parts already on disk", () => {
    const { net, state, fetcher } = cluster();
    const keepParts = 5;
    net.filter = (_from, _to, m) => (m.t === "part" && m.part >= keepParts ? null : m);
    const target = targetFor(state, [0]);
    fetcher.transfer.fetch(target);
    net.pump();
    expect(fetcher.installed).toBeNull();
    // Restart the fetcher on the same data directory (which takes a while: the server sends its cached parts again).
    net.now += SERVE_RESEND_INTERVAL_MS;
    net.nodes.delete(1);
    const dir = fetcher.storage.store.path.replace(/\/[^/]+$/, "");
    fetcher.storage.close();
    const reopened = openStorage(dir);
    net.filter = (_from, _to, m) => m;
    net.delivered.length = 0;
    const restarted = net.addNode(1, newMachine(), reopened);
    restarted.transfer.fetch(target);
    net.pump();
    expect(restarted.installed?.importer.digest()).toEqual(state.digest());
    const asked = net.delivered.filter((d) => d.m.t === "get").map((d) => (d.m.t === "get" ? d.m.part : -1));
    expect(Math.min(...asked)).toBe(keepParts);
  });

  test("a part asked again after the window moved past it is read afresh, byte for byte", () => {
    const { net, state, fetcher } = cluster();
    fetcher.transfer.fetch(targetFor(state, [0]));
    net.pump();
    const first = net.delivered.find((d) => d.from === 0 && d.m.t === "part" && d.m.part === 0);
    // The server caches only the last few parts per peer; part 0 is long gone from it.
    expect(SERVE_CACHE_PARTS).toBeLessThan(fetcher.installed?.head.parts ?? 0);
    net.delivered.length = 0;
    net.send(1, 0, encodeTransferMessage({ t: "get", seq: SEQ, digest: targetFor(state, []).stateDigest, part: 0, count: 1, nonce: 42 }));
    net.pump();
    const again = net.delivered.find((d) => d.m.t === "part");
    expect(again?.m).toEqual({ ...(first?.m as TransferMessage), nonce: 42 } as TransferMessage);
  });

  test("a peer restarting the same transfer from part 0 again and again is refused after a few, so serving work stays bounded", () => {
    const { net, state } = cluster();
    const digest = targetFor(state, []).stateDigest;
    const answers: string[] = [];
    for (let i = 0; i < SERVE_OPENS_PER_PEER_MAX + 2; i++) {
      net.delivered.length = 0;
      // Part 0 again, once the parts after it have pushed it out of the cache, needs a new
      // cursor each time.
      net.send(1, 0, encodeTransferMessage({ t: "get", seq: SEQ, digest, part: 0, count: 1, nonce: i }));
      for (let part = 1; part <= SERVE_CACHE_PARTS + 1; part++)
        net.send(1, 0, encodeTransferMessage({ t: "get", seq: SEQ, digest, part, count: 1, nonce: 1000 + part }));
      net.pump();
      const first = net.delivered.find((d) => d.from === 0 && (d.m.t === "part" || d.m.t === "none") && d.m.nonce === i);
      answers.push(first?.m.t ?? "nothing");
    }
    expect(answers.slice(0, 2)).toEqual(["part", "part"]);
    expect(answers.at(-1)).toBe("none");
    expect(answers.filter((a) => a === "part").length).toBeLessThanOrEqual(SERVE_OPENS_PER_PEER_MAX);
  });

  test("a peer alternating between states does not escape the bound on cursor opens", () => {
    const { net, state } = cluster();
    const digest = targetFor(state, []).stateDigest;
    const answers: string[] = [];
    for (let i = 0; i < SERVE_OPENS_PER_PEER_MAX + 2; i++) {
      net.delivered.length = 0;
      // Every other get names another state (one this replica does not hold: still a cursor open).
      const seq = i % 2 === 0 ? SEQ : SEQ + 1_000;
      net.send(1, 0, encodeTransferMessage({ t: "get", seq, digest, part: 0, count: 1, nonce: i }));
      net.pump();
      const first = net.delivered.find((d) => d.from === 0 && (d.m.t === "part" || d.m.t === "none") && d.m.nonce === i);
      answers.push(first?.m.t === "none" ? `none: ${first.m.reason}` : (first?.m.t ?? "nothing"));
    }
    expect(answers.at(-1)).toBe("none: too many restarts of this transfer; ask another replica");
    expect(answers.filter((a) => a === "part").length).toBeLessThanOrEqual(SERVE_OPENS_PER_PEER_MAX);
  });

  test("a get for parts beyond the largest valid stream is refused without reading the stored state", () => {
    const { net, state } = cluster();
    const digest = targetFor(state, []).stateDigest;
    net.delivered.length = 0;
    net.send(1, 0, encodeTransferMessage({ t: "get", seq: SEQ, digest, part: 2 ** 32 - 2, count: 1, nonce: 7 }));
    net.pump();
    const answer = net.delivered.find((d) => d.from === 0 && d.m.t === "none" && d.m.nonce === 7);
    expect(answer?.m.t === "none" ? answer.m.reason : "").toMatch(/^parts beyond \d+, the most any state has$/);
  });

  describe("a source that sends parts no valid stream has", () => {
    // A bound on messages: a source that is never dropped keeps the transfer going past it.
    const MESSAGES_MAX = 3_000;

    const liars: { what: string; reply: (part: number) => { data: Uint8Array; end: boolean } }[] = [
      { what: "empty parts", reply: () => ({ data: new Uint8Array(0), end: false }) },
      // Not to be taken for a stream that ends.
      { what: "an empty last part", reply: () => ({ data: new Uint8Array(0), end: true }) },
      // The first part holds the meta record's length prefix and one byte; every other part one byte.
      { what: "short parts before the end", reply: (part) => ({ data: endlessMeta(part, part === 0 ? 5 : 1), end: false }) },
    ];
    for (const { what, reply } of liars) {
      test(`one sending ${what} is dropped and the next source completes the transfer`, () => {
        const { net, state, fetcher } = cluster();
        const liar = fakeSource(net, 2, reply);
        fetcher.transfer.fetch(targetFor(state, [2, 0]));
        net.pump(MESSAGES_MAX);
        expect(fetcher.installed?.importer.digest()).toEqual(state.digest());
        // Dropped at its first part: it was asked for one window and never again.
        expect(liar.gets).toBe(1);
        expect(fetcher.metrics.get("state_transfer_sources_dropped_total")).toBe(1);
        expect(fetcher.metrics.get("state_transfer_rejected_total")).toBe(0);
        expect(fetcher.storage.store.partSeqs()).toEqual([{ seq: SEQ, count: fetcher.installed?.head.parts ?? -1 }]);
      });
    }

    test("one sending more full parts than the longest valid state has is dropped at the bound", () => {
      const state = sourceMachine();
      // The bound at this state's own length: the honest stream just fits.
      const partsMax = Math.ceil(streamBytes(state) / PART_BYTES);
      const { net, fetcher } = cluster({ state, streamBytesMax: partsMax * PART_BYTES });
      expect(streamPartsBound(partsMax * PART_BYTES, PART_BYTES)).toBe(partsMax);
      fakeSource(net, 2, (part) => ({ data: endlessMeta(part, PART_BYTES), end: false }));
      fetcher.transfer.fetch(targetFor(state, [2, 0]));
      net.pump(MESSAGES_MAX);
      expect(fetcher.installed?.importer.digest()).toEqual(state.digest());
      expect(fetcher.installed?.head.parts).toBe(partsMax);
      // The source's parts were taken up to the bound; the one past it got it dropped.
      expect(partsFrom(net, 2)).toBeLessThanOrEqual(partsMax + TRANSFER_WINDOW_PARTS);
      expect(fetcher.metrics.get("state_transfer_sources_dropped_total")).toBe(1);
      expect(fetcher.metrics.get("state_transfer_rejected_total")).toBe(0);
    });

    test("a source that timed out is not asked again before the others have had their turn", () => {
      const { net, state, fetcher } = cluster();
      net.filter = (from, _to, m) => {
        if (from === 2) return null;
        if (from !== 3 || m.t !== "part" || m.part !== 1) return m;
        const data = Uint8Array.from(m.data);
        data[data.length - 1] = (data[data.length - 1] as number) ^ 0x01;
        return { ...m, data };
      };
      fetcher.transfer.fetch(targetFor(state, [2, 3, 0]));
      net.pump();
      net.now += PART_TIMEOUT_MS + 1;
      fetcher.transfer.tick();
      // 3 serves a damaged state, is rejected, and 0 (not the silent 2) is asked next.
      net.pump();
      expect(fetcher.metrics.get("state_transfer_rejected_total")).toBe(1);
      expect(fetcher.installed?.importer.digest()).toEqual(state.digest());
      expect(net.delivered.filter((d) => d.to === 2).length).toBe(1);
    });
  });

  describe("a restart", () => {
    test("that finds the whole stream on disk installs it without a message to any peer", () => {
      const { net, state, fetcher } = cluster();
      const target = targetFor(state, [0]);
      const parts = fetchWhole(net, fetcher, target);
      net.delivered.length = 0;
      const restarted = installFromDiskAlone(net, fetcher, target, state);
      expect(restarted.installed?.head.parts).toBe(parts);
      expect(restarted.installed?.head.bytes).toBe(streamBytes(state));
    });

    test("installs a whole stream of a whole number of parts (the head records the end)", () => {
      const state = sourceMachine();
      const bytes = streamBytes(state);
      // A part size that cuts this stream evenly, so that no part is shorter than the others.
      const evenParts = [7, 6, 5, 4, 3, 2].find((n) => bytes % n === 0);
      if (evenParts === undefined) throw new Error(`no even cut of ${bytes} bytes`);
      const { net, fetcher } = cluster({ state, partBytes: bytes / evenParts });
      const target = targetFor(state, [0]);
      expect(fetchWhole(net, fetcher, target)).toBe(evenParts);
      installFromDiskAlone(net, fetcher, target, state);
    });

    test("installs a whole stream whose head does not record the end, by its shorter last part", () => {
      const { net, state, fetcher } = cluster();
      expect(streamBytes(state) % PART_BYTES).not.toBe(0);
      const target = targetFor(state, [0]);
      fetchWhole(net, fetcher, target);
      // A head as written when a transfer starts, which says nothing of where the stream ends.
      fetcher.storage.stageHead({
        status: "incoming",
        seq: SEQ,
        stateDigest: target.stateDigest,
        appDigest: null,
        clients: null,
        proof: [],
        parts: 0,
        bytes: 0,
        partBytes: PART_BYTES,
      });
      fetcher.storage.commits.flush();
      installFromDiskAlone(net, fetcher, target, state);
    });

    test("resumes after the parts on disk when an earlier attempt that ended was rejected", () => {
      const { net, state, fetcher } = cluster();
      const keepParts = 4;
      // 2 ends its stream early with a part the reader takes; the stream is then rejected,
      // and 0's parts from keepParts on are lost, as if the replica stopped there.
      net.filter = (from, _to, m) => {
        if (m.t !== "part" || m.part < keepParts - 1) return m;
        if (from === 2) return m.part === keepParts - 1 ? { ...m, data: m.data.subarray(0, 1), end: true } : null;
        return m.part >= keepParts ? null : m;
      };
      const target = targetFor(state, [2, 0]);
      fetcher.transfer.fetch(target);
      net.pump();
      expect(fetcher.metrics.get("state_transfer_rejected_total")).toBe(1);
      expect(fetcher.storage.store.partSeqs()).toEqual([{ seq: SEQ, count: keepParts }]);
      net.filter = (_from, _to, m) => m;
      net.delivered.length = 0;
      const restarted = restart(net, fetcher);
      restarted.transfer.fetch(target);
      net.pump();
      expect(restarted.installed?.importer.digest()).toEqual(state.digest());
      expect(restarted.metrics.get("state_transfer_rejected_total")).toBe(0);
      expect(net.delivered.find((d) => d.m.t === "get")?.m).toMatchObject({ part: keepParts });
    });

    test("starts over when a stored part is one no valid stream has", () => {
      const { net, state, fetcher } = cluster();
      const keepParts = 5;
      net.filter = (_from, _to, m) => (m.t === "part" && m.part >= keepParts ? null : m);
      const target = targetFor(state, [0]);
      fetcher.transfer.fetch(target);
      net.pump();
      // An empty part after them, as a source could leave before parts were checked.
      fetcher.storage.stagePart(SEQ, keepParts, new Uint8Array(0));
      fetcher.storage.commits.flush();
      net.filter = (_from, _to, m) => m;
      net.delivered.length = 0;
      const restarted = restart(net, fetcher);
      restarted.transfer.fetch(target);
      net.pump();
      expect(restarted.installed?.importer.digest()).toEqual(state.digest());
      expect(restarted.metrics.get("state_transfer_rejected_total")).toBe(0);
      expect(net.delivered.find((d) => d.m.t === "get")?.m).toMatchObject({ part: 0 });
    });
  });
});

/** Part 0 of `m` with the client table's one row claiming seq 8 instead of 7: the stream parses, only its digest is wrong. */
function withClientSeqAltered(m: TransferMessage): TransferMessage {
  if (m.t !== "part" || m.part !== 0) return m;
  const row = new TextEncoder().encode("ab:cd");
  const data = Uint8Array.from(m.data);
  for (let at = 0; at + row.length < data.length; at++) {
    if (row.every((byte, i) => data[at + i] === byte) && data[at + row.length] === 7) {
      data[at + row.length] = 8;
      return { ...m, data };
    }
  }
  throw new Error("no client row in part 0");
}

/** A node that serves from its keeper only: its base at S1 is written in full, then it can be moved on. */
function baseServer() {
  const t = tempDir();
  cleanups.push(t.remove);
  const metrics = new Metrics();
  const storage = openStorage(t.dir, testLog(), metrics);
  cleanups.push(() => storage.close());
  const machine = sourceMachine();
  const keeper = new SnapshotKeeper({ storage, machine, partBytes: PART_BYTES, log: testLog(), metrics }, null);
  const digestAt = (seq: number): Uint8Array => checkpointStateDigest(seq, machine.digest(), CLIENTS);
  /** A base at `seq`, written and committed. */
  const writeBase = (seq: number): void => {
    storage.sinceBase.rows = Math.max(storage.sinceBase.rows, 1_000_000);
    keeper.capture(seq, CLIENTS);
    keeper.onStable(seq, digestAt(seq), []);
    while (keeper.baseHead?.seq !== seq) keeper.tick();
    storage.commits.flush();
  };
  const sent: TransferMessage[] = [];
  /** The server's clock (ms), moved by tests that need time to pass. */
  const clock = { now: 1_000_000 };
  const server = new StateTransfer(
    {
      self: 0,
      send: (_to, bytes) => {
        const envelope = decodeEnvelope(bytes);
        const m = envelope === null ? null : validateTransferMessage(envelope.message, PART_BYTES);
        if (m === null) throw new Error("malformed transfer message");
        sent.push(m);
        return true;
      },
      keeper,
      storage,
      machine,
      partBytes: PART_BYTES,
      log: testLog(),
      metrics,
      now: () => clock.now,
      install: () => undefined,
    },
    null,
  );
  /** Starts a base at `seq` and writes `parts` of its parts, leaving it unfinished. */
  const startBase = (seq: number, parts: number): void => {
    storage.sinceBase.rows = Math.max(storage.sinceBase.rows, 1_000_000);
    keeper.capture(seq, CLIENTS);
    keeper.onStable(seq, digestAt(seq), []);
    for (let i = 0; i < parts; i++) keeper.tick();
    storage.commits.flush();
  };
  /** The whole stream of the state at `seq` on disk, as a finished transfer leaves it, and its complete head. */
  const stageFetched = (seq: number): SnapshotHead => {
    const cutter = new PartCutter(encodeStreamMeta({ seq, clients: CLIENTS }), machine.exportSnapshot(), PART_BYTES);
    let parts = 0;
    let bytes = 0;
    for (let part = cutter.next(); part !== null; part = cutter.next(), parts++) {
      storage.stagePart(seq, parts, part);
      bytes += part.length;
    }
    storage.commits.flush();
    const stateDigest = digestAt(seq);
    return {
      status: "complete",
      seq,
      stateDigest,
      appDigest: machine.digest(),
      clients: CLIENTS,
      proof: [],
      parts,
      bytes,
      partBytes: PART_BYTES,
    };
  };
  return { storage, keeper, metrics, server, sent, digestAt, writeBase, startBase, stageFetched, clock };
}

/** Parts of an unfinished base written before a fetched state is installed: fewer than the state takes. */
const PARTS_BEFORE_INSTALL = 2;

/** A later stable checkpoint than SEQ, which no server here holds (they answer `none`). */
function newerTarget(from: number[]) {
  return { seq: SEQ + 128, stateDigest: new Uint8Array(32).fill(7), from, proof: [] };
}

/** Starts fetching `state` from [0, 2, 3] and delivers the first few parts only. */
function fetchFirstParts(net: Network, fetcher: Node, state: ChannelMachine): void {
  fetcher.transfer.fetch(targetFor(state, [0, 2, 3]));
  net.pump(4);
  expect(net.delivered.filter((d) => d.to === 1 && d.m.t === "part").length).toBeGreaterThan(0);
  expect(fetcher.installed).toBeNull();
}

describe("a newer target while a fetch is under way (ordered traffic moves the stable checkpoint)", () => {
  test("a fetch whose parts still come goes on, and the older state is installed", () => {
    const { net, state, fetcher } = cluster();
    fetchFirstParts(net, fetcher, state);
    fetcher.transfer.fetch(newerTarget([0, 2, 3]));
    expect(fetcher.transfer.fetching).toBe(SEQ);
    net.pump();
    expect(fetcher.installed?.head.seq).toBe(SEQ);
    expect(fetcher.installed?.importer.digest()).toEqual(state.digest());
    expect(fetcher.metrics.get("state_transfer_abandoned_total")).toBe(0);
    expect(fetcher.metrics.get("state_transfer_started_total")).toBe(1);
  });

  test("the core's newer target does not cancel it while the older one is still ahead of what the core executed", () => {
    const { net, state, fetcher } = cluster();
    fetchFirstParts(net, fetcher, state);
    fetcher.transfer.cancelUnless(SEQ + 128, 0);
    expect(fetcher.transfer.fetching).toBe(SEQ);
    fetcher.transfer.cancelUnless(SEQ + 128, SEQ);
    expect(fetcher.transfer.fetching).toBe(null);
    fetchFirstParts(net, fetcher, state);
    fetcher.transfer.cancelUnless(null, 0);
    expect(fetcher.transfer.fetching).toBe(null);
    expect(fetcher.metrics.get("state_transfer_abandoned_total")).toBe(2);
  });

  test("once no part came for the part timeout, the newer target is fetched instead", () => {
    const { net, state, fetcher } = cluster();
    fetchFirstParts(net, fetcher, state);
    fetcher.transfer.fetch(newerTarget([0, 2, 3]));
    net.filter = () => null;
    net.pump();
    net.now += PART_TIMEOUT_MS - 1;
    fetcher.transfer.tick();
    expect(fetcher.transfer.fetching).toBe(SEQ);
    net.now += 1;
    fetcher.transfer.tick();
    expect(fetcher.transfer.fetching).toBe(SEQ + 128);
    expect(fetcher.metrics.get("state_transfer_abandoned_total")).toBe(1);
  });

  test("a source that no longer holds the older state moves the fetch to the newer target at once", () => {
    const { net, state, fetcher } = cluster();
    fetchFirstParts(net, fetcher, state);
    fetcher.transfer.fetch(newerTarget([0, 2, 3]));
    // The source answers the next ask with `none`, as one whose capture of SEQ is gone does.
    net.filter = (_from, _to, m) => (m.t === "part" ? { t: "none", seq: m.seq, nonce: m.nonce, reason: "not held" } : m);
    net.pump();
    expect(fetcher.transfer.fetching).toBe(SEQ + 128);
    expect(fetcher.installed).toBeNull();
  });

  test("with a newer target waiting, a source that sends a part no stream has moves the fetch to the newer target, not back to part 0", () => {
    const { net, state, fetcher } = cluster();
    fetchFirstParts(net, fetcher, state);
    fetcher.transfer.fetch(newerTarget([0, 2, 3]));
    net.filter = (_from, _to, m) => (m.t === "part" ? { ...m, data: new Uint8Array(PART_BYTES + 1) } : m);
    net.pump();
    expect(fetcher.transfer.fetching).toBe(SEQ + 128);
    expect(fetcher.metrics.get("state_transfer_sources_dropped_total")).toBe(1);
  });

  test("a fetch still waiting for its first part is kept for the part timeout, then the newer target is fetched", () => {
    const { net, state, fetcher } = cluster();
    net.filter = () => null;
    fetcher.transfer.fetch(targetFor(state, [0, 2, 3]));
    net.now += PART_TIMEOUT_MS - 1;
    fetcher.transfer.fetch(newerTarget([0, 2, 3]));
    expect(fetcher.transfer.fetching).toBe(SEQ);
    net.now += 1;
    fetcher.transfer.fetch(newerTarget([0, 2, 3]));
    expect(fetcher.transfer.fetching).toBe(SEQ + 128);
    expect(fetcher.metrics.get("state_transfer_abandoned_total")).toBe(1);
  });
});

/** Peer `peer` asks `server` for parts part..part+count-1 of the state at SEQ. */
function askFor(
  server: StateTransfer,
  digestAt: (seq: number) => Uint8Array,
  peer: number,
  part: number,
  count: number,
  nonce: number,
): void {
  server.onMessage(peer, { t: "get", seq: SEQ, digest: digestAt(SEQ), part, count, nonce });
}

/** The checkpoint after SEQ becomes stable: the keeper drops its capture of SEQ. */
function passCapture(keeper: SnapshotKeeper, digestAt: (seq: number) => Uint8Array): void {
  keeper.capture(2 * SEQ, CLIENTS);
  keeper.onStable(2 * SEQ, digestAt(2 * SEQ), []);
}

describe("state transfer against a faulty source", () => {
  test("a source that sends a bad part and falls silent cannot stall a transfer: after a stream of several sources fails, each comes from one source", () => {
    const { net, state, fetcher } = cluster();
    // Replica 2 (asked first) lies in part 0's client table, which only the digest shows,
    // and sends nothing past part 2: replica 0 finishes the stream from part 3.
    net.filter = (from, _to, m) => {
      if (from !== 2 || m.t !== "part") return m;
      return m.part > 2 ? null : withClientSeqAltered(m);
    };
    fetcher.transfer.fetch(targetFor(state, [2, 0]));
    net.pump();
    for (let round = 0; round < 10 && fetcher.installed === null; round++) {
      net.now += PART_TIMEOUT_MS + 1;
      fetcher.transfer.tick();
      net.pump();
    }
    expect(fetcher.installed?.importer.digest()).toEqual(state.digest());
    // One stream of both sources failed; the next, all of replica 0's, was installed.
    expect(fetcher.metrics.get("state_transfer_rejected_total")).toBe(1);
    const lastStart = net.delivered.findLastIndex((d) => d.to === 0 && d.m.t === "get" && d.m.part === 0);
    expect(lastStart).toBeGreaterThan(-1);
    expect(net.delivered.slice(lastStart).some((d) => d.from === 2 && d.m.t === "part")).toBe(false);
  });

  test("when the core asks again for the same state, the sources it names join the transfer's", () => {
    const { net, state, fetcher } = cluster();
    // Replica 2 never answers; the first target names only it, the core's retry also replica 3.
    net.filter = (from, _to, m) => (from === 2 ? null : m);
    fetcher.transfer.fetch(targetFor(state, [2]));
    net.pump();
    fetcher.transfer.fetch(targetFor(state, [3, 2]));
    net.now += PART_TIMEOUT_MS + 1;
    fetcher.transfer.tick();
    net.pump();
    expect(fetcher.installed?.importer.digest()).toEqual(state.digest());
    expect(partsFrom(net, 3)).toBe(fetcher.installed?.head.parts ?? -1);
  });

  test("a cursor on a superseded base is answered 'not held' and the new base is not taken for damaged", () => {
    const { storage, keeper, metrics, server, sent, digestAt, writeBase } = baseServer();
    writeBase(SEQ);
    // A later stable checkpoint drops the capture at SEQ: the state is served from the base on disk.
    keeper.capture(2 * SEQ, CLIENTS);
    keeper.onStable(2 * SEQ, digestAt(2 * SEQ), []);
    expect(keeper.capturedDigest(SEQ)).toBeNull();
    server.onMessage(9, { t: "get", seq: SEQ, digest: digestAt(SEQ), part: 0, count: 1, nonce: 1 });
    expect(sent.at(-1)?.t).toBe("part");
    // A newer base replaces it (and deletes its parts) while peer 9's cursor is open.
    writeBase(3 * SEQ);
    server.onMessage(9, { t: "get", seq: SEQ, digest: digestAt(SEQ), part: 1, count: 1, nonce: 1 });
    expect(sent.at(-1)).toMatchObject({ t: "none", reason: "state not held here" });
    expect(keeper.baseHead?.seq).toBe(3 * SEQ);
    expect(metrics.get("storage_corrupt_rows_total")).toBe(0);
    expect(storage.readPart(3 * SEQ, 0)).not.toBeNull();
  });

  test("a cursor on a capture the stable checkpoint dropped goes on serving its peer while it takes new parts", () => {
    const { keeper, server, sent, digestAt } = baseServer();
    keeper.capture(SEQ, CLIENTS);
    askFor(server, digestAt, 9, 0, 1, 1);
    expect(sent.at(-1)?.t).toBe("part");
    passCapture(keeper, digestAt);
    expect(keeper.holds(SEQ, digestAt(SEQ))).toBe(false);
    server.tick();
    askFor(server, digestAt, 9, 1, 1, 1);
    expect(sent.at(-1)).toMatchObject({ t: "part", part: 1 });
    // Another peer cannot open one on it.
    askFor(server, digestAt, 8, 0, 1, 2);
    expect(sent.at(-1)).toMatchObject({ t: "none", reason: "state not held here" });
  });

  test("a peer that only asks again for parts it had cannot keep a dropped capture: its cursor goes once no new part was read for the part timeout", () => {
    const { keeper, server, sent, digestAt, clock } = baseServer();
    keeper.capture(SEQ, CLIENTS);
    askFor(server, digestAt, 9, 0, 2, 1);
    expect(sent.at(-1)).toMatchObject({ t: "part", part: 1 });
    passCapture(keeper, digestAt);
    // Part 0 again and again, each past the resend interval: cached, nothing new read.
    for (let k = 0; k < 4; k++) {
      clock.now += PART_TIMEOUT_MS / 4 - 1;
      askFor(server, digestAt, 9, 0, 1, 1);
      expect(sent.at(-1)).toMatchObject({ t: "part", part: 0 });
      server.tick();
    }
    clock.now += 10;
    server.tick();
    askFor(server, digestAt, 9, 2, 1, 1);
    expect(sent.at(-1)).toMatchObject({ t: "none", reason: "state not held here" });
  });

  test("a peer taking a new part of a dropped capture only now and then loses its cursor: it must read at half the least progress a fetcher asks", () => {
    const { keeper, server, sent, digestAt, clock } = baseServer();
    keeper.capture(SEQ, CLIENTS);
    askFor(server, digestAt, 9, 0, 1, 1);
    passCapture(keeper, digestAt);
    server.tick();
    // A new part just within each part timeout: 512 bytes every 2.9 s, below half of the
    // least progress for 512-byte parts.
    let part = 1;
    for (; part < 10; part++) {
      clock.now += PART_TIMEOUT_MS - 100;
      server.tick();
      server.onMessage(9, { t: "get", seq: SEQ, digest: digestAt(SEQ), part, count: 1, nonce: 1 });
      if (sent.at(-1)?.t !== "part") break;
    }
    expect(sent.at(-1)).toMatchObject({ t: "none", reason: "state not held here" });
    expect(part).toBeLessThan(4);
  });

  test("a transfer dropped when its seq became the keeper's base (reached by executing) leaves the base's rows", () => {
    const { net, state, fetcher } = cluster();
    // Parts 0..2 arrive, then the source falls silent: the transfer to SEQ is in progress.
    net.filter = (from, _to, m) => (from === 2 && m.t === "part" && m.part > 2 ? null : m);
    fetcher.transfer.fetch(targetFor(state, [2]));
    net.pump();
    expect(fetcher.storage.store.partSeqs()).toEqual([{ seq: SEQ, count: 3 }]);
    // The replica reaches SEQ by executing: its own base at SEQ starts, a part is staged, and
    // then the core no longer wants the transfer.
    const keeper = new SnapshotKeeper(
      { storage: fetcher.storage, machine: cloneOf(state), partBytes: PART_BYTES, log: testLog(), metrics: fetcher.metrics },
      null,
    );
    const transfer = new StateTransfer(
      {
        self: 1,
        send: () => true,
        keeper,
        storage: fetcher.storage,
        machine: fetcher.machine,
        partBytes: PART_BYTES,
        log: testLog(),
        metrics: fetcher.metrics,
        now: () => net.now,
        install: () => undefined,
      },
      recoverIncoming(fetcher.storage, newMachine(), PART_BYTES),
    );
    transfer.fetch(targetFor(state, [2]));
    fetcher.storage.sinceBase.rows = 1_000_000;
    keeper.capture(SEQ, CLIENTS);
    keeper.onStable(SEQ, targetFor(state, [2]).stateDigest, []);
    keeper.tick();
    transfer.cancelUnless(null, 0);
    while (keeper.baseHead?.seq !== SEQ) keeper.tick();
    fetcher.storage.commits.flush();
    const base = keeper.baseHead as SnapshotHead;
    for (let part = 0; part < base.parts; part++) expect(fetcher.storage.readPart(SEQ, part)).not.toBeNull();
  });

  test("a fetched state installed while a base is being written drops the parts that base had written", () => {
    const { storage, keeper, startBase, stageFetched } = baseServer();
    startBase(SEQ, PARTS_BEFORE_INSTALL);
    expect(storage.store.partSeqs()).toEqual([{ seq: SEQ, count: PARTS_BEFORE_INSTALL }]);
    const head = stageFetched(2 * SEQ);
    keeper.adoptInstalled(head);
    keeper.tick();
    storage.commits.flush();
    expect(keeper.baseHead?.seq).toBe(2 * SEQ);
    expect(storage.store.partSeqs()).toEqual([{ seq: 2 * SEQ, count: head.parts }]);
  });

  test("a fetched state installed at the seq of the base being written keeps the rows they share", () => {
    const { storage, keeper, startBase, stageFetched } = baseServer();
    startBase(SEQ, PARTS_BEFORE_INSTALL);
    const head = stageFetched(SEQ);
    keeper.adoptInstalled(head);
    storage.commits.flush();
    expect(storage.store.partSeqs()).toEqual([{ seq: SEQ, count: head.parts }]);
    for (let part = 0; part < head.parts; part++) expect(storage.readPart(SEQ, part)).not.toBeNull();
  });
});

/** Peer 1 asks replica `to` for parts part..part+count-1 of `state` (a get as a fetcher's, or a flood's). */
function askParts(net: Network, state: ChannelMachine, to: number, part: number, count: number, nonce = 1): void {
  net.send(1, to, encodeTransferMessage({ t: "get", seq: SEQ, digest: targetFor(state, []).stateDigest, part, count, nonce }));
}

describe("serving is bounded per peer: a get of a hundred bytes cannot make a replica send without bound", () => {
  test("the bounds leave an honest transfer its speed", () => {
    // Its first window and a re-ask right after fit the burst, at the largest part size.
    expect(SERVE_BYTES_BURST_MAX).toBeGreaterThanOrEqual(2 * TRANSFER_WINDOW_PARTS * STREAM_PART_BYTES_MAX);
    // A re-ask (after REASK_MS without progress) always finds the parts it asks again sendable.
    expect(SERVE_RESEND_INTERVAL_MS).toBeLessThan(REASK_MS);
    // A source held to the budget is far above the least progress a fetcher requires of it.
    expect(SERVE_BYTES_PER_SECOND_MAX).toBeGreaterThan(16 * SOURCE_PROGRESS_BYTES_PER_SECOND_MIN);
  });

  test("a flood of gets for the same window is answered once per SERVE_RESEND_INTERVAL_MS: the rest dropped, counted, never answered later", () => {
    const { net, state } = cluster();
    const server = net.nodes.get(0) as Node;
    askParts(net, state, 0, 0, TRANSFER_WINDOW_PARTS);
    net.pump();
    expect(partsFrom(net, 0)).toBe(TRANSFER_WINDOW_PARTS);
    for (let i = 0; i < 500; i++) askParts(net, state, 0, 0, TRANSFER_WINDOW_PARTS);
    net.pump();
    expect(partsFrom(net, 0)).toBe(TRANSFER_WINDOW_PARTS);
    expect(server.metrics.get("state_transfer_serve_refused_total")).toBe(500);
    // Once the interval has passed, nothing of the flood is sent; the next get is answered.
    net.now += SERVE_RESEND_INTERVAL_MS;
    server.transfer.tick();
    net.pump();
    expect(partsFrom(net, 0)).toBe(TRANSFER_WINDOW_PARTS);
    askParts(net, state, 0, 0, TRANSFER_WINDOW_PARTS);
    net.pump();
    expect(partsFrom(net, 0)).toBe(2 * TRANSFER_WINDOW_PARTS);
    expect(server.metrics.get("state_transfer_served_bytes_total")).toBe(2 * TRANSFER_WINDOW_PARTS * PART_BYTES);
  });

  test("a peer asking for new parts as fast as it can is served its budget of bytes a second, no more", () => {
    const rate = 2 * TRANSFER_WINDOW_PARTS; // parts a second
    const budgets = { serveBudget: { bytesPerSecond: rate * PART_BYTES, burstBytes: rate * PART_BYTES } };
    const { net, state } = cluster({ budgets });
    const server = net.nodes.get(0) as Node;
    const fullParts = Math.floor(streamBytes(state) / PART_BYTES);
    expect(fullParts).toBeGreaterThanOrEqual(3 * rate);
    const walk = (from: number): void => {
      for (let part = from; part + TRANSFER_WINDOW_PARTS <= fullParts; part += TRANSFER_WINDOW_PARTS) {
        askParts(net, state, 0, part, TRANSFER_WINDOW_PARTS);
      }
      net.pump();
    };
    // The whole stream asked at once: the burst is served, the rest dropped.
    walk(0);
    expect(partsFrom(net, 0)).toBe(rate);
    const refused = server.metrics.get("state_transfer_serve_refused_total");
    expect(refused).toBeGreaterThan(0);
    // A second later, a second's worth.
    net.now += 1_000;
    walk(rate);
    expect(partsFrom(net, 0)).toBe(2 * rate);
    expect(server.metrics.get("state_transfer_serve_refused_total")).toBeGreaterThan(refused);
  });

  test("after a part could not be sent (the link full), the peer's gets are dropped for a moment before anything is encoded", () => {
    const { net, state } = cluster();
    const server = net.nodes.get(0) as Node;
    let full = true;
    let refusedSends = 0;
    net.queueFull = (from, to) => {
      if (from !== 0 || to !== 1 || !full) return false;
      refusedSends++;
      return true;
    };
    for (let i = 0; i < 100; i++) askParts(net, state, 0, 0, TRANSFER_WINDOW_PARTS);
    net.pump();
    // One part encoded for a send the link refused; the other 99 gets encoded nothing.
    expect(refusedSends).toBe(1);
    expect(server.metrics.get("state_transfer_serve_refused_total")).toBe(99);
    // The link drains: after the backoff the peer is served again, the refused part first.
    full = false;
    net.now += SERVE_LINK_FULL_BACKOFF_MS;
    askParts(net, state, 0, 0, TRANSFER_WINDOW_PARTS);
    net.pump();
    expect(partsFrom(net, 0)).toBe(TRANSFER_WINDOW_PARTS);
  });
});

/**
 * Makes replica `id` a slow source: of the parts it sends, only the next new one passes, and
 * at most one every `everyMs` (the others are lost, and asked again by the fetcher's re-asks).
 */
function drip(net: Network, id: number, everyMs: number): void {
  let next = 0;
  let dueMs = net.now;
  net.filter = (from, _to, m) => {
    if (from !== id || m.t !== "part") return m;
    if (m.part !== next || net.now < dueMs) return null;
    next++;
    dueMs = net.now + everyMs;
    return m;
  };
}

/** Runs `fetcher` for `ms` (ticks every 100 ms, the core asking again every 2 s with its preferred source rotated) or until it installed. */
function runFetch(net: Network, fetcher: Node, state: ChannelMachine, ms: number): number {
  const orders = [
    [2, 0, 3],
    [0, 3, 2],
    [3, 2, 0],
  ];
  const started = net.now;
  fetcher.transfer.fetch(targetFor(state, orders[0] as number[]));
  net.pump();
  for (let step = 1; fetcher.installed === null && net.now - started < ms; step++) {
    net.now += 100;
    if (step % 20 === 0) fetcher.transfer.fetch(targetFor(state, orders[(step / 20) % 3] as number[]));
    fetcher.transfer.tick();
    net.pump();
  }
  return net.now - started;
}

describe("a slow source", () => {
  test("one sending a part just within each part timeout is replaced after a window, and the parts it sent are kept", () => {
    const { net, state, fetcher } = cluster();
    drip(net, 2, PART_TIMEOUT_MS - 500);
    const ms = runFetch(net, fetcher, state, 10 * SOURCE_PROGRESS_WINDOW_MS);
    expect(fetcher.installed?.importer.digest()).toEqual(state.digest());
    expect(ms).toBeLessThanOrEqual(SOURCE_PROGRESS_WINDOW_MS + 100);
    expect(fetcher.metrics.get("state_transfer_source_timeouts_total")).toBe(1);
    const slow = partsFrom(net, 2);
    expect(slow).toBeGreaterThan(1);
    // Each part came once: the next source went on from where the slow one stopped.
    expect(slow + partsFrom(net, 0) + partsFrom(net, 3)).toBe(fetcher.installed?.head.parts ?? -1);
    const firstAsk = net.delivered.find((d) => d.to !== 2 && d.m.t === "get");
    expect(firstAsk?.m).toMatchObject({ part: slow });
  });

  test("by default the least progress follows the part size: a source delivering a window of parts every round trip of up to SOURCE_ROUND_TRIP_MS_MAX keeps the transfer", () => {
    const { net, state, fetcher } = cluster();
    // One part every half of SOURCE_ROUND_TRIP_MS_MAX / TRANSFER_WINDOW_PARTS: a window each half the longest round trip.
    drip(net, 2, SOURCE_ROUND_TRIP_MS_MAX / TRANSFER_WINDOW_PARTS / 2);
    runFetch(net, fetcher, state, 1_000 * SOURCE_PROGRESS_WINDOW_MS);
    expect(fetcher.installed?.importer.digest()).toEqual(state.digest());
    expect(fetcher.metrics.get("state_transfer_source_timeouts_total")).toBe(0);
  });

  test("one at or above the least progress over each window keeps the transfer", () => {
    // Half a part a second required; the source sends two parts every three seconds.
    const { net, state, fetcher } = cluster({ budgets: { sourceBytesPerSecondMin: PART_BYTES / 2 } });
    drip(net, 2, 1_500);
    runFetch(net, fetcher, state, 1_000 * SOURCE_PROGRESS_WINDOW_MS);
    expect(fetcher.installed?.importer.digest()).toEqual(state.digest());
    expect(partsFrom(net, 2)).toBe(fetcher.installed?.head.parts ?? -1);
    expect(fetcher.metrics.get("state_transfer_source_timeouts_total")).toBe(0);
  });
});
