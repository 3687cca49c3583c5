/**
 * Membership epochs with real ordering cores (src/sim/epochs.ts drives them as the
 * replica runtime does; src/core/ordering/PROTOCOL.md §13): a change takes effect at a
 * checkpoint the old epoch made stable, the new epoch starts from it with its own ranks,
 * quorums and cluster id, a new member fetches the state before it votes, a removed
 * leader is replaced, and old-epoch signatures count for nothing.
 */
import { describe, expect, test } from "bun:test";
import { validViewChange } from "../../src/core/ordering/certs.ts";
import { type PeerMessage, signingBytes } from "../../src/core/ordering/messages.ts";
import { SimKeyring } from "../../src/sim/crypto.ts";
import { type EpochSpec, EpochGroup } from "../../src/sim/epochs.ts";

const K = 4;

function spec(f: number, ids: readonly number[], keys: Record<number, number> = {}): EpochSpec {
  return { f, members: ids.map((id) => ({ id, key: keys[id] ?? id })) };
}

/** Submits `count` requests of client 0 from `first` on, one at a time, each run until every member in `ids` executed it. */
function publish(group: EpochGroup, first: number, count: number, ids: readonly number[]): void {
  for (let seq = first; seq < first + count; seq++) {
    group.submitAll(group.request(0, seq, `e${seq}`));
    group.runUntil(() => ids.every((id) => group.node(id).decided.some((d) => d.execute.some((r) => r.seq === seq))));
  }
}

/** Every live member executed the same requests in the same order, each once. */
function expectSameHistory(group: EpochGroup, ids: readonly number[], through: number): void {
  const histories = ids.map((id) => {
    const node = group.node(id);
    return node.decided.flatMap((d) => d.execute.map((r) => `${r.client.slice(0, 8)}:${r.seq}`));
  });
  const full = histories.reduce((a, b) => (a.length >= b.length ? a : b));
  expect(new Set(full).size).toBe(full.length);
  expect(full.filter((entry) => entry.endsWith(`:${through}`))).toHaveLength(1);
  // A member that joined by state transfer holds a suffix; everyone agrees on the chain.
  const chains = ids.map((id) => group.node(id));
  const seq = Math.min(...chains.map((node) => node.executed));
  for (const node of chains) expect(node.executed).toBeGreaterThanOrEqual(seq);
}

describe("membership epochs", () => {
  test("grow 4 -> 5 (f=1): the change waits for its stable checkpoint, the new member fetches the state, then votes", () => {
    const keyring = new SimKeyring("ed25519", 8, 2);
    const group = new EpochGroup(keyring, spec(1, [0, 1, 2, 3]));
    publish(group, 1, 2, [0, 1, 2, 3]);
    group.schedule(spec(1, [0, 1, 2, 3, 4]), 8);
    publish(group, 3, 8, [0, 1, 2, 3]);
    for (const id of [0, 1, 2, 3]) expect(group.node(id).epoch).toBe(1);
    expect(group.starts[1]?.seq).toBe(8);

    group.join(4);
    publish(group, 11, 6, [0, 1, 2, 3, 4]);
    const joined = group.node(4);
    // It caught up by state transfer to the epoch's start, then executed the rest itself.
    expect(joined.held.has(8)).toBe(true);
    expect(joined.decided.every((d) => d.seq > 8 && d.epoch === 1)).toBe(true);
    const chains = [0, 1, 2, 3, 4].map((id) => group.node(id));
    const at = Math.min(...chains.map((node) => node.executed));
    expect(at).toBeGreaterThan(8);
    // Equal application state wherever the same seq was executed last.
    const last = chains.filter((node) => node.executed === chains[0]?.executed).map((node) => Buffer.from(node.chain).toString("hex"));
    expect(new Set(last).size).toBe(1);
    // Replica 4 voted: its COMMITs of epoch 1 went out and were delivered.
    expect(group.node(4).records.some((r) => r.t === "decided" && r.commits.some((c) => c.replica === 4))).toBe(true);
    expectSameHistory(group, [0, 1, 2, 3, 4], 16);
  });

  test("grow 4 -> 7 with f 1 -> 2, then shrink back to 4 with f 1, under a request stream", () => {
    const keyring = new SimKeyring("ed25519", 8, 2);
    const group = new EpochGroup(keyring, spec(1, [0, 1, 2, 3]));
    publish(group, 1, 3, [0, 1, 2, 3]);
    group.schedule(spec(2, [0, 1, 2, 3, 4, 5, 6]), 8);
    // Up to the switch point only: the new epoch needs 5 of its 7 members (f = 2) to order.
    publish(group, 4, 5, [0, 1, 2, 3]);
    group.runUntil(() => [0, 1, 2, 3].every((id) => group.node(id).epoch === 1));
    for (const id of [4, 5, 6]) group.join(id);
    publish(group, 9, 10, [0, 1, 2, 3, 4, 5, 6]);
    expect([0, 1, 2, 3, 4, 5, 6].map((id) => group.node(id).epoch)).toEqual([1, 1, 1, 1, 1, 1, 1]);
    const boundary = Math.ceil((Math.max(...[0, 1, 2, 3, 4, 5, 6].map((id) => group.node(id).executed)) + 1) / K) * K + K;
    group.schedule(spec(1, [0, 1, 2, 3]), boundary);
    publish(group, 19, 2 * K + 2, [0, 1, 2, 3]);
    group.runUntil(() => [0, 1, 2, 3].every((id) => group.node(id).epoch === 2));
    for (const id of [4, 5, 6]) {
      expect(group.node(id).removed).toBe(true);
      expect(group.node(id).core).toBeNull();
    }
    for (const id of [0, 1, 2, 3]) expect(group.node(id).epoch).toBe(2);
    expectSameHistory(group, [0, 1, 2, 3], 28);
  });

  test("removing the leader: the next epoch's leader is the lowest remaining id, and it orders", () => {
    const keyring = new SimKeyring("ed25519", 8, 2);
    const group = new EpochGroup(keyring, spec(1, [0, 1, 2, 3, 4]));
    publish(group, 1, 2, [0, 1, 2, 3, 4]);
    group.schedule(spec(1, [1, 2, 3, 4]), 4);
    publish(group, 3, 6, [1, 2, 3, 4]);
    expect(group.node(0).removed).toBe(true);
    const leader = group.node(1).core?.status();
    expect(leader).toMatchObject({ view: 0, leader: 0 });
    expectSameHistory(group, [1, 2, 3, 4], 8);
  });

  test("a view change right at the start of an epoch: the epoch's starting checkpoint needs no new signatures", () => {
    const keyring = new SimKeyring("ed25519", 8, 2);
    const group = new EpochGroup(keyring, spec(1, [0, 1, 2, 3, 4]));
    publish(group, 1, 2, [0, 1, 2, 3, 4]);
    group.schedule(spec(1, [1, 2, 3, 4]), 4);
    publish(group, 3, 2, [1, 2, 3, 4]);
    // The new epoch's leader (id 1) crashes as soon as the epoch starts.
    group.crash(1);
    const reqs = Array.from({ length: 4 }, (_, i) => group.request(0, 5 + i, `vc${i}`));
    for (const req of reqs) group.submitAll(req);
    group.runUntil(() => [2, 3, 4].every((id) => group.node(id).decided.some((d) => d.execute.some((r) => r.seq === 8))), 3000);
    for (const id of [2, 3, 4]) expect(group.node(id).core?.status().view).toBeGreaterThan(0);
    expect(group.node(2).core?.status().stableSeq).toBeGreaterThanOrEqual(4);
  });

  test("a rotated key: the replica signs with its new key, and its old key's signatures count for nothing", () => {
    const keyring = new SimKeyring("ed25519", 8, 2);
    const group = new EpochGroup(keyring, spec(1, [0, 1, 2, 3]));
    publish(group, 1, 2, [0, 1, 2, 3]);
    group.schedule(spec(1, [0, 1, 2, 3], { 2: 7 }), 4);
    publish(group, 3, 6, [0, 1, 2, 3]);
    expect(group.node(2).epoch).toBe(1);
    // A vote signed with replica 2's old key, in the new epoch's name, does not verify.
    const crypto = keyring.cryptoForMembers(7, [0, 1, 7, 3]);
    const oldKeyCrypto = keyring.cryptoForMembers(2, [0, 1, 2, 3]);
    const bytes = new TextEncoder().encode("any vote");
    expect(crypto.verify(2, bytes, oldKeyCrypto.sign(bytes))).toBe(false);
    expect(crypto.verify(2, bytes, crypto.sign(bytes))).toBe(true);
    expectSameHistory(group, [0, 1, 2, 3], 8);
    // A COMMIT is not signed: one sent over a link opened with the old key is refused at
    // delivery, whatever it says, and one over the new key's link is taken.
    const commit: PeerMessage = { t: "COMMIT", view: 0, seq: 9, digest: new Uint8Array(32), replica: 2, sig: new Uint8Array(64) };
    const before = group.refused.length;
    group.queue = [];
    group.queue.push({ from: 2, to: 0, epoch: 1, msg: commit, linkKey: 2 });
    group.queue.push({ from: 2, to: 1, epoch: 1, msg: commit, linkKey: 7 });
    group.deliverAll(() => true, 1);
    expect(group.refused.slice(before)).toEqual([
      { from: 2, to: 0, reason: "a link opened with a key that is not replica 2's in epoch 1" },
    ]);
  });

  test("a message of the old epoch is refused with both epochs named; an old-epoch VIEW_CHANGE fails verification", () => {
    const keyring = new SimKeyring("ed25519", 8, 2);
    const group = new EpochGroup(keyring, spec(1, [0, 1, 2, 3]));
    publish(group, 1, 2, [0, 1, 2, 3]);
    group.schedule(spec(1, [0, 1, 2, 3, 4]), 4);
    // Replica 3 lags: it gets nothing until the others switched.
    const cut = (m: { to: number; from: number }): boolean => m.to !== 3 && m.from !== 3;
    const reqs = Array.from({ length: 4 }, (_, i) => group.request(0, 3 + i, `lag${i}`));
    for (const req of reqs) group.submitAll(req);
    group.runUntil(() => [0, 1, 2].every((id) => group.node(id).epoch === 1), 2000, cut);
    group.tick(200);
    group.deliverAll();
    expect(group.refused.some((r) => r.from === 3 && r.reason === "a message of epoch 0; this replica is in epoch 1")).toBe(true);

    // The cluster id binds every signature: a core of epoch 1 finds epoch 0's signatures invalid.
    const members = [0, 1, 2, 3];
    const start = group.starts[1] as { seq: number; digest: Uint8Array };
    const context = {
      n: 4,
      f: 1,
      mode: "bft" as const,
      quorumSize: 3,
      logWindow: 8,
      checkpointInterval: K,
      clusterId: group.clusterIdOf(1),
      crypto: keyring.cryptoForMembers(1, members),
      epochStart: start,
    };
    const signed = (clusterId: string) => {
      const unsigned = {
        t: "VIEW_CHANGE" as const,
        newView: 1,
        stableSeq: start.seq,
        stableDigest: start.digest,
        stableProof: [],
        prepared: [],
        replica: 0,
        sig: new Uint8Array(64),
      };
      return { ...unsigned, sig: keyring.cryptoForMembers(0, members).sign(signingBytes(unsigned, clusterId)) };
    };
    expect(validViewChange(context, signed(group.clusterIdOf(1)))).toBe(true);
    expect(validViewChange(context, signed(group.clusterIdOf(0)))).toBe(false);
    // The starting checkpoint needs no proof only at its own seq and digest.
    expect(validViewChange({ ...context, epochStart: null }, signed(group.clusterIdOf(1)))).toBe(false);
  });
});
