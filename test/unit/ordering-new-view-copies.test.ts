// A NEW_VIEW carries copies of the VIEW_CHANGEs its leader chose, and every replica plans
// the new view's log (minS and O) from those copies. A replica that already holds and
// checked a VIEW_CHANGE skips its signature checks, but only for a copy that is that same
// message in every field: a faulty new leader that kept a correct replica's signature and
// emptied its prepared certificates (or rewrote its stable checkpoint) had O leave out a
// batch that committed, and two correct replicas decided different batches at one seq.
// Both attacks against the real core on a hand-driven cluster (src/sim/cluster.ts) with
// real ed25519; each ended in the outcome named before the fix in view-change.ts.
import { expect, test } from "bun:test";
import { batchBytes, type NewView, type PrePrepare, signingBytes, type ViewChange } from "../../src/core/ordering/index.ts";
import type { ClientRequest, Commit } from "../../src/core/ordering/messages.ts";
import { ManualCluster, type QueuedMessage } from "../../src/sim/cluster.ts";
import { sha256 } from "../../src/sim/crypto.ts";

const CLUSTER_ID = "cluster-test";

function signed<M extends NewView | ViewChange | PrePrepare>(c: ManualCluster, signer: number, m: M): M {
  return { ...m, sig: c.keyring.signAsReplica(signer, signingBytes(m, CLUSTER_ID)) };
}

/** Messages among replicas 1..3 only: replica 0 (view 0's leader) is cut off. */
const withoutZero = (m: QueuedMessage): boolean => m.from !== 0 && m.to !== 0;

/**
 * Replicas 2 and 3 suspect leader 0 and send VIEW_CHANGE(1); replica 1 (faulty, view 1's
 * leader) receives them but its own core's messages are dropped: the test speaks for it.
 * Returns the VIEW_CHANGEs of 2 and 3 as sent, which every replica holds.
 */
function viewChangesOfTwoAndThree(c: ManualCluster): { vc2: ViewChange; vc3: ViewChange } {
  c.queue = c.queue.filter(withoutZero);
  c.step(2, { kind: "suspectLeader", view: 0, reason: "refused-requests" });
  c.step(3, { kind: "suspectLeader", view: 0, reason: "refused-requests" });
  const sent = new Map<number, ViewChange>();
  for (let round = 0; round < 10 && c.queue.length > 0; round++) {
    const queued = c.queue;
    c.queue = [];
    for (const m of queued) {
      if (!withoutZero(m)) continue;
      if (m.msg.t === "VIEW_CHANGE") sent.set(m.msg.replica, m.msg);
      if (m.from === 1) continue;
      c.step(m.to, { kind: "message", from: m.from, msg: m.msg });
    }
  }
  c.queue = [];
  const vc2 = sent.get(2);
  const vc3 = sent.get(3);
  if (vc2 === undefined || vc3 === undefined) throw new Error("replicas 2 and 3 sent no VIEW_CHANGE");
  return { vc2, vc3 };
}

/** Batch B commits at seq 1 at replica 0 only (COMMITs reach only it); 1, 2 and 3 hold it prepared. */
function committedAtZeroOnly(c: ManualCluster): void {
  c.submit(0, c.request(0, 1, 1, "B"));
  c.tick(1, [0]);
  c.deliverAll((m) => m.msg.t !== "COMMIT" || m.to === 0);
  expect(c.decided[0]?.map((d) => d.seq)).toEqual([1]);
}

const lastBytes = (request: ClientRequest | undefined): string => new TextDecoder().decode(request?.body.slice(-8));

test("a NEW_VIEW whose copies of correct replicas' VIEW_CHANGEs lost their prepared certificates is refused", () => {
  const c = new ManualCluster();
  committedAtZeroOnly(c);
  const { vc2, vc3 } = viewChangesOfTwoAndThree(c);
  expect(vc2.prepared.length + vc3.prepared.length).toBeGreaterThan(0);
  const vc1 = signed(c, 1, { ...vc2, replica: 1, prepared: [], sig: new Uint8Array(64) });
  // The copies keep 2's and 3's signatures; with their certificates gone, O is empty.
  const stripped = [vc1, { ...vc2, prepared: [] }, { ...vc3, prepared: [] }];
  const nv = signed(c, 1, { t: "NEW_VIEW", view: 1, viewChanges: stripped, minS: 0, maxS: 0, o: [], sig: new Uint8Array(64) });
  for (const r of [2, 3]) c.step(r, { kind: "message", from: 1, msg: nv });
  expect([2, 3].map((r) => c.core(r).status().installedView)).toEqual([0, 0]);
  // Leader 1 goes on as if installed: another batch at seq 1, and its COMMIT.
  const batch: ClientRequest[] = [c.request(1, 1, 1, "B-prime")];
  const digest = sha256(batchBytes(batch));
  const header = signed(c, 1, { t: "PRE_PREPARE", view: 1, seq: 1, digest, ts: 0, batch: null, sig: new Uint8Array(64) });
  const commit: Commit = { t: "COMMIT", view: 1, seq: 1, digest, replica: 1, sig: new Uint8Array(64) };
  for (const r of [2, 3]) {
    c.step(r, { kind: "message", from: 1, msg: { ...header, batch } });
    c.step(r, { kind: "message", from: 1, msg: commit });
  }
  c.deliverAll((m) => withoutZero(m) && m.from !== 1);
  for (const r of [2, 3]) for (const d of c.decided[r] ?? []) expect(lastBytes(d.batch[0])).not.toContain("B-prime");
});

test("the same NEW_VIEW with the VIEW_CHANGEs as sent is installed and carries the committed batch into view 1", () => {
  const c = new ManualCluster();
  committedAtZeroOnly(c);
  const { vc2, vc3 } = viewChangesOfTwoAndThree(c);
  const vc1 = signed(c, 1, { ...vc2, replica: 1, prepared: [], sig: new Uint8Array(64) });
  const cert = vc2.prepared[0] ?? vc3.prepared[0];
  if (cert === undefined) throw new Error("no prepared certificate");
  const o = [signed(c, 1, { ...cert.prePrepare, view: 1, ts: 0 })];
  const nv = signed(c, 1, { t: "NEW_VIEW", view: 1, viewChanges: [vc1, vc2, vc3], minS: 0, maxS: 1, o, sig: new Uint8Array(64) });
  for (const r of [2, 3]) c.step(r, { kind: "message", from: 1, msg: nv });
  expect([2, 3].map((r) => c.core(r).status().installedView)).toEqual([1, 1]);
  expect([2, 3].map((r) => c.core(r).status().status)).toEqual(["normal", "normal"]);
  // Leader 1's COMMIT for it, and 2's and 3's votes among themselves: B is decided at seq 1 again.
  const commit: Commit = { t: "COMMIT", view: 1, seq: 1, digest: cert.digest, replica: 1, sig: new Uint8Array(64) };
  for (const r of [2, 3]) c.step(r, { kind: "message", from: 1, msg: commit });
  c.deliverAll((m) => withoutZero(m) && m.from !== 1);
  for (const r of [2, 3])
    expect(c.decided[r]?.map((d) => `${d.seq}:${lastBytes(d.batch[0])}`)).toEqual([`1:${lastBytes(c.decided[0]?.[0]?.batch[0])}`]);
});

test("a NEW_VIEW whose copy of a correct replica's VIEW_CHANGE names a stable checkpoint it never had is refused", () => {
  const c = new ManualCluster();
  for (let s = 1; s <= 4; s++) {
    c.submit(0, c.request(0, s));
    c.tick();
    c.deliverAll();
  }
  const { vc2, vc3 } = viewChangesOfTwoAndThree(c);
  const vc1 = signed(c, 1, { ...vc3, replica: 1, prepared: [], sig: new Uint8Array(64) });
  // 2's signature, a checkpoint at 16 nobody signed: minS would be 16 with no proof.
  const forged = { ...vc2, stableSeq: 16, stableDigest: new Uint8Array(32).fill(7), stableProof: [], prepared: [] };
  const nv = signed(c, 1, { t: "NEW_VIEW", view: 1, viewChanges: [vc1, forged, vc3], minS: 16, maxS: 16, o: [], sig: new Uint8Array(64) });
  for (const r of [2, 3]) c.step(r, { kind: "message", from: 1, msg: nv });
  expect([2, 3].map((r) => c.core(r).status().installedView)).toEqual([0, 0]);
  expect([2, 3].map((r) => c.core(r).status().stableSeq)).toEqual([4, 4]);
});
