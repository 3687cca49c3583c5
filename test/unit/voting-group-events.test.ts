// Voting on $sys.events (src/core/voting/group-events.ts): a group event is delivered once
// f+1 distinct replicas reported it, with the same kind and agreed fields, and only once; a
// lone liar's report never is; per-replica fields (ts, reason) do not split a vote; peer
// events can happen again; and a flooding replica evicts only its own pending reports.
import { describe, expect, test } from "bun:test";
import {
  GROUP_DELIVERED_REMEMBERED_MAX,
  GROUP_PENDING_PER_REPLICA_MAX,
  type GroupEvent,
  GroupEventVoter,
  type GroupReportOutput,
} from "../../src/core/voting/group-events.ts";

const report = (fields: Record<string, unknown>): Uint8Array => new TextEncoder().encode(JSON.stringify(fields));
const delivered = (outputs: readonly GroupReportOutput[]): GroupEvent[] => outputs.flatMap((o) => (o.t === "deliver" ? [o.event] : []));
const json = (event: GroupEvent): unknown => JSON.parse(new TextDecoder().decode(event.payload));

function viewInstalled(replica: number, view: number, leader: number, ts = 1_000 + replica): Uint8Array {
  return report({ ts, kind: "view-installed", replica, view, leader });
}

describe("group event voting", () => {
  test("f+1 replicas reporting the same view deliver it once, naming them; later reports only count", () => {
    const voter = new GroupEventVoter({ n: 4, f: 1 });
    expect(delivered(voter.onReport(2, viewInstalled(2, 1, 1)))).toEqual([]);
    const out = voter.onReport(0, viewInstalled(0, 1, 1));
    const [event] = delivered(out);
    expect(json(event as GroupEvent)).toEqual({ kind: "view-installed", view: 1, leader: 1, reporters: [0, 2], vouched: 2 });
    // The third and fourth reports are counted for observers under the same key, and deliver nothing.
    for (const replica of [3, 1]) {
      const later = voter.onReport(replica, viewInstalled(replica, 1, 1));
      expect(delivered(later)).toEqual([]);
      expect(later).toEqual([{ t: "report", replica, key: (event as GroupEvent).key }]);
    }
    expect(voter.pendingReports).toBe(0);
  });

  test("when f is lowered, an event f_new+1 members already reported is delivered at the switch, once", () => {
    const voter = new GroupEventVoter({ n: 7, f: 2 });
    voter.regroup([0, 1, 2, 3, 4, 5, 6], 2);
    expect(delivered(voter.onReport(0, viewInstalled(0, 4, 1)))).toEqual([]);
    expect(delivered(voter.onReport(5, viewInstalled(5, 4, 1)))).toEqual([]);
    expect(delivered(voter.onReport(1, report({ kind: "peer-down", replica: 1, peer: 6 })))).toEqual([]);
    // n=4, f=1: replica 5 left, so its report is taken back; 0 and 1 alone deliver nothing.
    expect(voter.regroup([0, 1, 2, 3], 1, [])).toEqual([]);
    expect(delivered(voter.onReport(2, viewInstalled(2, 4, 1))).map(json)).toEqual([
      { kind: "view-installed", view: 4, leader: 1, reporters: [0, 2], vouched: 2 },
    ]);
    // Two reports of a peer-down under f=2 (three needed); f lowered to 1 with the same members: delivered now.
    voter.regroup([0, 1, 2, 3, 4, 5, 6], 2);
    expect(delivered(voter.onReport(3, report({ kind: "peer-down", replica: 3, peer: 6 })))).toEqual([]);
    const atSwitch = voter.regroup([0, 1, 2, 3, 4, 5, 6], 1);
    expect(atSwitch.map(json)).toEqual([{ kind: "peer-down", peer: 6, reporters: [1, 3], vouched: 2 }]);
    expect(voter.pendingReports).toBe(0);
    expect(voter.regroup([0, 1, 2, 3, 4, 5, 6], 1)).toEqual([]);
    expect(delivered(voter.onReport(4, report({ kind: "peer-down", replica: 4, peer: 6 })))).toEqual([]);
  });

  test("a lone liar's report is never delivered, however often it says it", () => {
    const voter = new GroupEventVoter({ n: 4, f: 1 });
    for (let i = 0; i < 10; i++) expect(delivered(voter.onReport(3, viewInstalled(3, 7, 3, 5_000 + i)))).toEqual([]);
    // The correct replicas report another leader for that view: no vote of theirs joins the liar's.
    expect(delivered(voter.onReport(0, viewInstalled(0, 7, 2)))).toEqual([]);
    const [event] = delivered(voter.onReport(1, viewInstalled(1, 7, 2)));
    expect(event?.fields).toEqual({ view: 7, leader: 2 });
    expect(event?.reporters).toEqual([0, 1]);
  });

  test("ts and reason are each replica's own: reports that differ only there agree", () => {
    const voter = new GroupEventVoter({ n: 4, f: 1 });
    voter.onReport(1, report({ ts: 10, kind: "peer-down", replica: 1, peer: 3, reason: "connection reset" }));
    const [event] = delivered(voter.onReport(2, report({ ts: 99, kind: "peer-down", replica: 2, peer: 3, reason: "timed out" })));
    expect(json(event as GroupEvent)).toEqual({ kind: "peer-down", peer: 3, reporters: [1, 2], vouched: 2 });
  });

  test("a report that names another replica than its signer, or is no report, is refused", () => {
    const voter = new GroupEventVoter({ n: 4, f: 1 });
    const refused = (replica: number, payload: Uint8Array) => voter.onReport(replica, payload)[0];
    expect(refused(3, viewInstalled(0, 9, 9))).toMatchObject({ t: "invalid", replica: 3 });
    expect(refused(3, new TextEncoder().encode("not json"))).toMatchObject({ t: "invalid", reason: "not a JSON report" });
    expect(refused(3, report({ kind: "x", replica: 3, reporters: [0, 1] }))).toMatchObject({ t: "invalid" });
    expect(refused(3, report({ kind: "x", replica: 3, view: { nested: 1 } }))).toMatchObject({ t: "invalid" });
    expect(refused(3, report({ replica: 3, view: 1 }))).toMatchObject({ t: "invalid", reason: "no kind" });
    expect(refused(7, viewInstalled(7, 1, 1))).toMatchObject({ t: "invalid", reason: "no replica 7" });
    // The refused report from replica 3 did not count: replica 0 alone delivers nothing.
    expect(delivered(voter.onReport(0, viewInstalled(0, 9, 9)))).toEqual([]);
  });

  test("a peer goes down, comes up and goes down again: three events; a withdrawn report does not join a liar's", () => {
    const voter = new GroupEventVoter({ n: 4, f: 1 });
    const peer = (replica: number, kind: string) => delivered(voter.onReport(replica, report({ kind, replica, peer: 3 })));
    expect(peer(0, "peer-down")).toEqual([]);
    expect(peer(1, "peer-down").map((e) => e.kind)).toEqual(["peer-down"]);
    expect(peer(2, "peer-down")).toEqual([]); // late: counted, not delivered again
    expect(peer(0, "peer-up")).toEqual([]);
    expect(peer(1, "peer-up").map((e) => e.kind)).toEqual(["peer-up"]);
    expect(peer(0, "peer-down")).toEqual([]);
    expect(peer(1, "peer-down").map((e) => e.kind)).toEqual(["peer-down"]);

    // Replica 2 reported the peer down and then up: its latest word is "up", so a liar's
    // "down" does not find a second vote in replica 2's earlier report.
    const fresh = new GroupEventVoter({ n: 4, f: 1 });
    const say = (replica: number, kind: string) => delivered(fresh.onReport(replica, report({ kind, replica, peer: 1 })));
    expect(say(2, "peer-down")).toEqual([]);
    expect(say(2, "peer-up")).toEqual([]);
    expect(say(3, "peer-down")).toEqual([]);
  });

  test("a replica flooding made-up events evicts only its own pending reports", () => {
    const voter = new GroupEventVoter({ n: 4, f: 1 });
    voter.onReport(0, viewInstalled(0, 2, 2));
    for (let view = 100; view < 100 + 10 * GROUP_PENDING_PER_REPLICA_MAX; view++) voter.onReport(3, viewInstalled(3, view, 1));
    expect(voter.pendingReports).toBe(1 + GROUP_PENDING_PER_REPLICA_MAX);
    const [event] = delivered(voter.onReport(1, viewInstalled(1, 2, 2)));
    expect(event?.reporters).toEqual([0, 1]);
  });

  test("delivered events are remembered within a bound", () => {
    const voter = new GroupEventVoter({ n: 4, f: 1 });
    for (let view = 1; view <= GROUP_DELIVERED_REMEMBERED_MAX + 10; view++) {
      voter.onReport(0, viewInstalled(0, view, view % 4));
      expect(delivered(voter.onReport(1, viewInstalled(1, view, view % 4)))).toHaveLength(1);
    }
    // The newest is still remembered: a late report does not deliver it again.
    const last = GROUP_DELIVERED_REMEMBERED_MAX + 10;
    expect(delivered(voter.onReport(2, viewInstalled(2, last, last % 4)))).toEqual([]);
    expect(voter.pendingReports).toBe(0);
  });
});
