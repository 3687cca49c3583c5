// State transfer (src/replica/state-transfer.ts) between in-process replicas over an
// in-memory network: chunked and checked against the signed digest, a lying source is
// detected and another asked, a silent one replaced, an interrupted transfer resumed
// from the parts on disk, and each side holds only a few parts at a time.
import { afterEach, describe, expect, test } from "bun:test";
import type { ChannelMachine } from "../../src/core/channels/machine.ts";
import type { SnapshotImport } from "../../src/core/channels/snapshot.ts";
import { decodeCanonical } from "../../wire/canonical.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import {
  encodeTransferMessage,
  PART_TIMEOUT_MS,
  SERVE_CACHE_PARTS,
  StateTransfer,
  TRANSFER_WINDOW_PARTS,
  type TransferMessage,
  validateTransferMessage,
} from "../../src/replica/state-transfer.ts";
import { checkpointStateDigest } from "../../src/replica/storage/digest.ts";
import type { ReplicaStorage, SnapshotHead } from "../../src/replica/storage/index.ts";
import { recover } from "../../src/replica/storage/recovery.ts";
import { SnapshotKeeper } from "../../src/replica/storage/snapshots.ts";
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
  installed: { importer: SnapshotImport; head: SnapshotHead } | null;
}

/** An in-memory network: messages queue up and are delivered by `pump`; `filter` may drop or alter them. */
class Network {
  readonly nodes = new Map<number, Node>();
  readonly queue: { from: number; to: number; bytes: Uint8Array }[] = [];
  now = 1_000_000;
  filter: (from: number, to: number, m: TransferMessage) => TransferMessage | null = (_f, _t, m) => m;
  readonly delivered: { from: number; to: number; m: TransferMessage }[] = [];

  send(from: number, to: number, bytes: Uint8Array): boolean {
    this.queue.push({ from, to, bytes });
    return true;
  }

  pump(limit = 100_000): void {
    for (let i = 0; i < limit && this.queue.length > 0; i++) {
      const { from, to, bytes } = this.queue.shift() as { from: number; to: number; bytes: Uint8Array };
      const envelope = decodeCanonical(bytes) as { k: string; m: unknown };
      const m = validateTransferMessage(envelope.m, PART_BYTES);
      if (envelope.k !== "st" || m === null) throw new Error("malformed transfer message");
      const passed = this.filter(from, to, m);
      if (passed === null) continue;
      this.delivered.push({ from, to, m: passed });
      this.nodes.get(to)?.transfer.onMessage(from, passed);
    }
    for (const node of this.nodes.values()) node.storage.commits.flush();
  }

  addNode(id: number, machine: ChannelMachine, storage?: ReplicaStorage, appliedSeq = 0): Node {
    const t = tempDir();
    cleanups.push(t.remove);
    const metrics = new Metrics();
    const store = storage ?? openStorage(t.dir, testLog(), metrics);
    cleanups.push(() => store.close());
    const keeper = new SnapshotKeeper({ storage: store, machine, partBytes: PART_BYTES, log: testLog(), metrics, appliedSeq: () => appliedSeq }, null);
    if (appliedSeq === SEQ) keeper.capture(SEQ, CLIENTS);
    const resumable = storage === undefined ? null : recoverIncoming(store, machine);
    const node: Node = {
      id,
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
          partBytes: PART_BYTES,
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

function recoverIncoming(storage: ReplicaStorage, machine: ChannelMachine): { head: SnapshotHead; parts: number } | null {
  return recover({ storage, machine, partBytes: PART_BYTES, execute: () => undefined }).incoming;
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
function cluster() {
  const net = new Network();
  const state = sourceMachine();
  for (const id of [0, 2, 3]) net.addNode(id, cloneOf(state), undefined, SEQ);
  const fetcher = net.addNode(1, newMachine());
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
    net.filter = (from, _to, m) => (m.t === "part" && m.part >= keepParts ? null : m);
    const target = targetFor(state, [0]);
    fetcher.transfer.fetch(target);
    net.pump();
    expect(fetcher.installed).toBeNull();
    // Restart the fetcher on the same data directory.
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
});
