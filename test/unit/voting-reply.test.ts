// Client-side reply voting (src/README.md §3 table): quorum per CLASS, distinct replicas only,
// matching on the whole result, and evidence of lying replicas.
import { REPLICAS_MAX } from "../../wire/types.ts";
import { describe, expect, test } from "bun:test";
import {
  ackQuorum,
  checkGroup,
  isByzantine,
  isDeterministic,
  minReplicas,
  replyKindOf,
  ReplyVoter,
  type ReplyKind,
} from "../../src/core/voting/index.ts";

const OK = { ok: true, tag: "net.links", firstSeq: 1, count: 3 };
const FORGED = { ok: true, tag: "net.links", firstSeq: 9, count: 3 };
const REFUSED = { ok: false, code: "not-registered", reason: "publisher is not registered on net.links" };

describe("quorum table", () => {
  test.each<[ReplyKind, number, number]>([
    ["crash/none", 1, 2],
    ["crash/total", 1, 2],
    ["byzantine/none", 1, 3],
    ["byzantine/total", 1, 2],
    ["admin", 1, 2],
    ["byzantine/none", 2, 5],
    ["byzantine/total", 2, 3],
    ["crash/none", 0, 1],
  ])("%s with f=%d needs %d", (kind, f, quorum) => {
    expect(ackQuorum(kind, f)).toBe(quorum);
  });

  test("kinds from classes, and their properties", () => {
    expect(replyKindOf({ fault: "crash", order: "none" })).toBe("crash/none");
    expect(replyKindOf({ fault: "byzantine", order: "total" })).toBe("byzantine/total");
    expect(isByzantine("admin")).toBe(true);
    expect(isByzantine("crash/total")).toBe(false);
    expect(isDeterministic("byzantine/none")).toBe(false);
    expect(isDeterministic("crash/total")).toBe(true);
    expect(minReplicas("byzantine/total", 1)).toBe(4);
    expect(minReplicas("crash/none", 1)).toBe(3);
  });

  test("group sizes that cannot tolerate f faults are refused", () => {
    expect(() => checkGroup("byzantine/total", 3, 1)).toThrow(RangeError);
    expect(() => checkGroup("admin", 3, 1)).toThrow(RangeError);
    expect(() => checkGroup("crash/total", 3, 1)).not.toThrow();
    expect(() => checkGroup("crash/total", REPLICAS_MAX + 1, 1)).toThrow(RangeError);
    expect(() => checkGroup("crash/total", 3, -1)).toThrow(RangeError);
    expect(() => new ReplyVoter({ n: 3, f: 1, kind: "byzantine/none" })).toThrow(RangeError);
  });
});

describe("ReplyVoter", () => {
  test("a group with gaps in its ids (after a removal): only members count, and a result fails once the members left cannot reach the quorum", () => {
    const v = new ReplyVoter({ n: 4, ids: [0, 2, 3, 4], f: 1, kind: "byzantine/total" });
    // Replica 1 was removed: its answer is not counted; replica 4 (id above n-1) is a member.
    expect(v.add(1, OK).outcome).toBe("unknown-replica");
    expect(v.add(4, OK).outcome).toBe("counted");
    expect(v.missing()).toEqual([0, 2, 3]);
    expect(v.add(0, FORGED).status.state).toBe("pending");
    // One member left to answer: it could still match one of the three.
    expect(v.add(2, REFUSED).status.state).toBe("pending");
    // Every member answered, each differently: no result can reach two (a removed id is not waited for).
    expect(v.add(3, { ok: true, other: 1 }).status).toMatchObject({ state: "failed" });
    expect(() => new ReplyVoter({ n: 4, ids: [0, 2, 2, 4], f: 1, kind: "byzantine/total" })).toThrow(RangeError);
    expect(() => new ReplyVoter({ n: 4, ids: [0, 2, 4], f: 1, kind: "byzantine/total" })).toThrow(RangeError);
  });

  test("byzantine/total decides on f+1 matching results from distinct replicas", () => {
    const v = new ReplyVoter({ n: 4, f: 1, kind: "byzantine/total" });
    expect(v.add(2, OK)).toMatchObject({ outcome: "counted", status: { state: "pending", answered: 1, quorum: 2 } });
    const decided = v.add(0, { count: 3, firstSeq: 1, tag: "net.links", ok: true }); // key order is irrelevant
    expect(decided.status).toEqual({ state: "decided", result: OK, replicas: [2, 0] });
    expect(v.conflicts()).toEqual([]);
  });

  test("duplicates from one replica never count twice", () => {
    const v = new ReplyVoter({ n: 4, f: 1, kind: "byzantine/total" });
    for (let i = 0; i < 5; i++) v.add(1, OK);
    expect(v.add(1, OK)).toMatchObject({ outcome: "duplicate", status: { state: "pending", answered: 1 } });
    const b = new ReplyVoter({ n: 4, f: 1, kind: "byzantine/none" });
    b.add(0, OK);
    b.add(0, OK);
    b.add(1, OK);
    expect(b.status().state).toBe("pending");
    expect(b.add(3, OK).status.state).toBe("decided");
  });

  test("f lying replicas cannot decide a forged result", () => {
    const v = new ReplyVoter({ n: 7, f: 2, kind: "byzantine/total" });
    v.add(5, FORGED);
    v.add(6, FORGED);
    v.add(5, FORGED);
    expect(v.status()).toMatchObject({ state: "pending", answered: 2, quorum: 3 });
    v.add(0, OK);
    v.add(1, OK);
    const done = v.add(2, OK);
    expect(done.status).toEqual({ state: "decided", result: OK, replicas: [0, 1, 2] });
    // At the decision, both liars are exposed.
    expect(done.conflicts).toEqual([
      { kind: "wrong-result", replica: 5, result: FORGED, decided: OK },
      { kind: "wrong-result", replica: 6, result: FORGED, decided: OK },
    ]);
  });

  test("a wrong result after the decision is reported; a second quorum proves more than f faults", () => {
    const v = new ReplyVoter({ n: 4, f: 1, kind: "admin" });
    v.add(0, OK);
    v.add(1, OK);
    expect(v.add(2, FORGED).conflicts).toEqual([{ kind: "wrong-result", replica: 2, result: FORGED, decided: OK }]);
    expect(v.add(3, FORGED).conflicts).toEqual([
      { kind: "wrong-result", replica: 3, result: FORGED, decided: OK },
      { kind: "split-quorum", results: [OK, FORGED] },
    ]);
    // The decision is sticky.
    expect(v.status()).toMatchObject({ state: "decided", result: OK });
  });

  test("a replica that changes its answer is equivocating: reported, first answer kept", () => {
    const v = new ReplyVoter({ n: 4, f: 1, kind: "byzantine/total" });
    v.add(3, FORGED);
    const second = v.add(3, OK);
    expect(second.outcome).toBe("equivocation");
    expect(second.conflicts).toEqual([{ kind: "equivocation", replica: 3, first: FORGED, second: OK }]);
    v.add(0, OK);
    expect(v.status().state).toBe("pending");
    expect(v.add(1, OK).status).toMatchObject({ state: "decided", replicas: [0, 1] });
  });

  test("a replica that answers again and again, each time otherwise, is one equivocation on record", () => {
    const v = new ReplyVoter({ n: 4, f: 1, kind: "byzantine/total" });
    v.add(3, FORGED);
    expect(v.add(3, OK).conflicts).toHaveLength(1);
    for (let count = 4; count < 1_000; count++)
      expect(v.add(3, { ...OK, count })).toMatchObject({ outcome: "equivocation", conflicts: [] });
    expect(v.conflicts()).toEqual([{ kind: "equivocation", replica: 3, first: FORGED, second: OK }]);
    // Another replica's equivocation is its own record.
    v.add(2, OK);
    expect(v.add(2, FORGED).conflicts).toEqual([{ kind: "equivocation", replica: 2, first: OK, second: FORGED }]);
    expect(v.conflicts()).toHaveLength(2);
  });

  test("withdraw: a replica that left takes its answer back; what is pending is judged with the larger f", () => {
    const v = new ReplyVoter({ n: 4, f: 1, kind: "byzantine/total" });
    v.add(3, FORGED);
    expect(v.withdraw(3, 1)).toEqual({ state: "pending", answered: 0, quorum: 2 });
    expect(v.missing()).toEqual([0, 1, 2, 3]);
    // One faulty member alone cannot decide the forged result any more.
    expect(v.add(2, FORGED).status.state).toBe("pending");
    // The replica, replaced, answers again on its new session: counted afresh.
    expect(v.add(3, OK).outcome).toBe("counted");
    // The group now tolerates f=2: three matching answers; a lower f later does not lower it.
    expect(v.withdraw(1, 2)).toMatchObject({ state: "pending", quorum: 3 });
    expect(v.withdraw(1, 0)).toMatchObject({ state: "pending", quorum: 3 });
    expect(v.add(0, OK).status.state).toBe("pending");
    expect(v.add(1, OK).status).toEqual({ state: "decided", result: OK, replicas: [3, 0, 1] });
    // A decision stands.
    expect(v.withdraw(0, 1).state).toBe("decided");
    expect(() => v.withdraw(0, -1)).toThrow(RangeError);
  });

  test("withdraw: a raised f that no result can reach any more fails the vote", () => {
    const v = new ReplyVoter({ n: 4, f: 1, kind: "byzantine/none" });
    v.add(0, OK);
    v.add(1, REFUSED);
    expect(v.withdraw(2, 2)).toMatchObject({ state: "failed", reason: "no result can reach 5 matching replies" });
  });

  test("unordered kinds do not call differing results lies", () => {
    const v = new ReplyVoter({ n: 4, f: 1, kind: "crash/none" });
    v.add(0, REFUSED);
    v.add(1, OK);
    expect(v.add(2, OK)).toMatchObject({ status: { state: "decided", result: OK }, conflicts: [] });
    expect(v.add(3, REFUSED).conflicts).toEqual([]);
  });

  test("byzantine/none fails once 2f+1 stored acks are out of reach", () => {
    const v = new ReplyVoter({ n: 4, f: 1, kind: "byzantine/none" });
    const unknown = { ok: false, code: "unknown-channel", reason: "no channel net.links" };
    v.add(0, OK);
    v.add(1, REFUSED);
    v.add(2, REFUSED);
    // Two refusals and one replica to go: the refusal could still reach 3.
    expect(v.status().state).toBe("pending");
    const failed = v.add(3, unknown).status;
    expect(failed).toEqual({
      state: "failed",
      reason: "no result can reach 3 matching replies",
      groups: [
        { result: OK, replicas: [0] },
        { result: REFUSED, replicas: [1, 2] },
        { result: unknown, replicas: [3] },
      ],
    });
  });

  test("byzantine/total fails when every replica answers differently", () => {
    const v = new ReplyVoter({ n: 4, f: 1, kind: "byzantine/total" });
    for (let r = 0; r < 3; r++) v.add(r, { ok: true, tag: "t", firstSeq: r + 1, count: 1 });
    expect(v.status().state).toBe("pending");
    expect(v.add(3, { ok: true, tag: "t", firstSeq: 9, count: 1 }).status.state).toBe("failed");
  });

  test("matching covers the whole result, byte for byte", () => {
    const v = new ReplyVoter({ n: 4, f: 1, kind: "crash/total" });
    v.add(0, OK);
    v.add(1, { ...OK, extra: null });
    v.add(2, { ...OK, count: 4 });
    expect(v.status().state).toBe("pending");
    expect(v.add(3, { ...OK }).status.state).toBe("decided");
  });

  test("unknown replicas and values that cannot be compared are not counted", () => {
    const v = new ReplyVoter({ n: 4, f: 1, kind: "byzantine/total" });
    expect(v.add(4, OK).outcome).toBe("unknown-replica");
    expect(v.add(-1, OK).outcome).toBe("unknown-replica");
    expect(v.add(1.5, OK).outcome).toBe("unknown-replica");
    expect(v.add(0, { ok: true, firstSeq: 1.5 }).outcome).toBe("unencodable");
    expect(v.missing()).toEqual([0, 1, 2, 3]);
    v.add(0, OK);
    expect(v.missing()).toEqual([1, 2, 3]);
  });
});
