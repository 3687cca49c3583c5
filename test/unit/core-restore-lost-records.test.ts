// The restart fence of a replica whose store lost records (src/core/ordering/fence.ts;
// core/ordering/PROTOCOL.md §2, "Votes sent before their fsync"): its records of votes may
// be gone in any view, so it signs no PRE_PREPARE or PREPARE in any view until it installs
// one whose NEW_VIEW carries a VIEW_CHANGE it signed since the restart.
import { describe, expect, test } from "bun:test";
import type { CoreConfig } from "../../src/core/ordering/config.ts";
import type { PeerMessage } from "../../src/core/ordering/messages.ts";
import { CLUSTER_PARAMETERS, ManualCluster, type QueuedMessage } from "../../src/sim/cluster.ts";

/** Every view fenced at every seq, as the status shows it in `view`. */
function fencedEverywhere(view: number): { view: number; seq: number } {
  return { view, seq: Number.MAX_SAFE_INTEGER };
}

/** Restarts `id` from a store that lost every record (moved aside), as ordering-driver.ts starts it. */
function restartWithLostRecords(c: ManualCluster, id: number): void {
  c.crash(id);
  c.records[id] = [];
  c.cfgs[id] = { ...(c.cfgs[id] as CoreConfig), lostRecords: true };
  c.restart(id, false);
}

/** Decides one request at the leader of `view` (client 0's `seq`), noting the votes `id` sends. */
function decideWatching(c: ManualCluster, leader: number, seq: number, id: number, votes: string[]): void {
  c.submit(leader, c.request(0, seq));
  c.tick();
  c.deliverAll((m) => noteVote(m, id, votes));
}

function noteVote(m: QueuedMessage, id: number, votes: string[]): boolean {
  if (m.from === id && (m.msg.t === "PREPARE" || m.msg.t === "PRE_PREPARE" || m.msg.t === "NEW_VIEW"))
    votes.push(`${m.msg.t}:${m.msg.view}`);
  return true;
}

const RETRANSMIT = CLUSTER_PARAMETERS.retransmitTicks ?? 10;

/** A cluster (in `mode`) that decided client 0's first request in view 0. */
function decidedOnce(mode?: "cft"): ManualCluster {
  const c = new ManualCluster(mode === undefined ? {} : { mode });
  c.submit(0, c.request(0, 1));
  c.tick();
  c.deliverAll();
  return c;
}

/**
 * Replica `fenced` restarts with lost records, then the leader of view 0 crashes and
 * 1, 2 and 3 must change view to decide client 1's request: the votes `fenced` sent meanwhile.
 */
function leaderGoesAfterLostRecords(c: ManualCluster, fenced: number, maxTicks: number): string[] {
  restartWithLostRecords(c, fenced);
  c.crash(0);
  const votes: string[] = [];
  for (const id of [1, 2, 3]) c.submit(id, c.request(1, 1));
  c.runUntil(
    () => [1, 2, 3].every((id) => c.lastExecuted(id) === 2),
    maxTicks,
    (m) => noteVote(m, fenced, votes),
  );
  return votes;
}

describe("a replica restarted with lost records", () => {
  test("sends no PREPARE in the view it was in and follows its peers' decisions", () => {
    const c = decidedOnce();
    restartWithLostRecords(c, 2);
    expect(c.core(2).status().voteFence).toEqual(fencedEverywhere(0));
    const votes: string[] = [];
    decideWatching(c, 0, 2, 2, votes);
    expect(votes).toEqual([]);
    expect([0, 1, 3].map((id) => c.lastExecuted(id))).toEqual([2, 2, 2]);
    c.runUntil(
      () => c.lastExecuted(2) === 2,
      3 * RETRANSMIT,
      (m) => noteVote(m, 2, votes),
    );
    expect(votes).toEqual([]);
  });

  test("stays fenced in a view a peer's NEW_VIEW takes it to, which it took no part in (it may have voted there before)", () => {
    const c = decidedOnce();
    // The group, replica 2 included, moves to view 1 (replica 0's proposals are lost) and decides there.
    const mute0 = (m: QueuedMessage): boolean => !(m.from === 0 && m.msg.t === "PRE_PREPARE");
    for (const id of [1, 2, 3]) c.submit(id, c.request(1, 1));
    c.runUntil(() => [1, 2, 3].every((id) => c.lastExecuted(id) === 2), 500, mute0);
    expect(c.core(2).status().installedView).toBe(1);
    restartWithLostRecords(c, 2);
    expect(c.core(2).status().view).toBe(0);
    // Its peers' votes in view 1 bring it there (their NEW_VIEW, answered to its VIEW_CHANGE).
    const votes: string[] = [];
    decideWatching(c, 1, 2, 2, votes);
    c.runUntil(
      () => c.lastExecuted(2) === 3,
      3 * RETRANSMIT,
      (m) => noteVote(m, 2, votes),
    );
    expect(c.core(2).status().installedView).toBe(1);
    expect(c.core(2).status().voteFence).toEqual(fencedEverywhere(1));
    decideWatching(c, 1, 3, 2, votes);
    expect(votes).toEqual([]);
  });

  test("a NEW_VIEW from before its restart does not end the fence, even for a view above every one it heard of", () => {
    const c = decidedOnce();
    const mute0 = (m: QueuedMessage): boolean => !(m.from === 0 && m.msg.t === "PRE_PREPARE");
    for (const id of [1, 2, 3]) c.submit(id, c.request(1, 1));
    c.runUntil(() => [1, 2, 3].every((id) => c.lastExecuted(id) === 2), 500, mute0);
    const before = c.allEffects(1).flatMap((o) => (o.kind === "send" && o.msg.t === "NEW_VIEW" ? [o.msg] : []));
    expect(before.map((m) => m.view)).toContain(1);
    restartWithLostRecords(c, 2);
    // The NEW_VIEW of view 1 reaches it before anything else of view 1 (a peer's answer,
    // or a delayed copy): it voted under that one before the crash.
    c.step(2, { kind: "message", from: 1, msg: before[0] as PeerMessage });
    expect(c.core(2).status()).toMatchObject({ installedView: 1, voteFence: fencedEverywhere(1) });
    const votes: string[] = [];
    decideWatching(c, 1, 2, 2, votes);
    expect(votes).toEqual([]);
  });

  test("votes again from the first view change it takes part in, and is then needed for a quorum", () => {
    // The leader goes: a NEW_VIEW for view 1 needs the VIEW_CHANGEs of 1, 2 and 3.
    const c = decidedOnce();
    const votes = leaderGoesAfterLostRecords(c, 2, 1000);
    expect(c.core(2).status()).toMatchObject({ installedView: 1, voteFence: null });
    expect(votes).toContain("PREPARE:1");
    expect(votes.filter((v) => v.endsWith(":0"))).toEqual([]);
  });

  test("as the next leader it builds no NEW_VIEW (it may have built one before): the view change moves on past it", () => {
    const c = decidedOnce();
    const votes = leaderGoesAfterLostRecords(c, 1, 2000);
    expect(votes.some((v) => v.startsWith("NEW_VIEW:") || v.startsWith("PRE_PREPARE:"))).toBe(false);
    expect(c.core(1).status()).toMatchObject({ installedView: 2, voteFence: null });
    expect(votes).toContain("PREPARE:2");
  });

  test("in crash mode only a leader is fenced (a backup's COMMIT waits for its accept record)", () => {
    const c = decidedOnce("cft");
    restartWithLostRecords(c, 2);
    expect(c.core(2).status().voteFence).toBeNull();
    restartWithLostRecords(c, 0);
    expect(c.core(0).status().voteFence).toEqual(fencedEverywhere(0));
  });
});
