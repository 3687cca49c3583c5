import { describe, expect, test } from "bun:test";
import type { QueryReply } from "../../wire/schemas.ts";
import { NoQuorumError, RequestRejectedError } from "../../src/client/errors.ts";
import {
  matchingRule,
  parseChannelInfo,
  parseChannelList,
  parseClientSeq,
  rankRule,
  highestRule,
  HIGHEST_ANSWER_MAX,
} from "../../src/client/queries.ts";
import { ADMIN_SPACE, pickLastSeq, SeqCounter, spaceName } from "../../src/client/seq.ts";

const ok = (replica: number, res: QueryReply extends infer R ? (R extends { ok: true; res: infer X } ? X : never) : never): QueryReply => ({
  id: 1,
  replica,
  ok: true,
  res,
});
const refused = (replica: number, code: "UNKNOWN_CHANNEL" | "UNAUTHORIZED", reason: string): QueryReply => ({
  id: 1,
  replica,
  ok: false,
  code,
  reason,
});

describe("pickLastSeq: the (f+1)-th highest answer", () => {
  test("with honest answers it is the f+1-th highest", () => {
    expect(pickLastSeq([10, 10, 10, 10], 1)).toBe(10);
    expect(pickLastSeq([10, 9, 10], 1)).toBe(10);
    expect(pickLastSeq([7, 9, 8], 1)).toBe(8);
    expect(pickLastSeq([0, 0, 0], 1)).toBe(0);
  });

  test("f inflated lies cannot push it above every correct answer", () => {
    // n = 4, f = 1: one liar claims a huge number; correct replicas are at 10 and 9.
    expect(pickLastSeq([1_000_000, 10, 9], 1)).toBe(10);
    // n = 7, f = 2: two liars.
    expect(pickLastSeq([9e15, 8e15, 20, 20, 19], 2)).toBe(20);
  });

  test("f deflated lies cannot pull it below the f+1-th highest correct answer", () => {
    expect(pickLastSeq([0, 10, 10], 1)).toBe(10);
    expect(pickLastSeq([0, 0, 20, 20, 20], 2)).toBe(20);
  });

  test("the result is never above the highest correct answer, for every placement of f liars", () => {
    const f = 2;
    const correct = [15, 12, 14];
    for (const lies of [
      [0, 0],
      [1e9, 1e9],
      [0, 1e9],
      [13, 1e12],
    ]) {
      const picked = pickLastSeq([...lies, ...correct], f) as number;
      expect(picked).toBeLessThanOrEqual(Math.max(...correct));
      expect(picked).toBeGreaterThanOrEqual(Math.min(...correct));
    }
  });

  test("fewer than f+1 usable answers give no choice", () => {
    expect(pickLastSeq([5], 1)).toBeNull();
    expect(pickLastSeq([], 0)).toBeNull();
    expect(pickLastSeq([5, -1, 1.5, Number.NaN], 1)).toBeNull();
    expect(pickLastSeq([5], 0)).toBe(5);
  });
});

describe("SeqCounter", () => {
  test("allocates consecutive ranges: next seq = seq + span", () => {
    const counter = new SeqCounter(10);
    expect(counter.allocate(3)).toBe(11);
    expect(counter.allocate(1)).toBe(14);
    expect(counter.next).toBe(15);
  });

  test("reset continues after the relearned value and bumps the epoch", () => {
    const counter = new SeqCounter(0);
    counter.allocate(5);
    expect(counter.epoch).toBe(0);
    counter.reset(100);
    expect(counter.epoch).toBe(1);
    expect(counter.allocate(1)).toBe(101);
  });

  test("refuses spans and values outside the safe integers", () => {
    expect(() => new SeqCounter(-1)).toThrow(RangeError);
    expect(() => new SeqCounter(Number.MAX_SAFE_INTEGER)).toThrow(RangeError);
    const counter = new SeqCounter(Number.MAX_SAFE_INTEGER - 2);
    expect(() => counter.allocate(0)).toThrow(RangeError);
    expect(() => counter.allocate(3)).toThrow("exhausted");
    expect(counter.allocate(2)).toBe(Number.MAX_SAFE_INTEGER - 1);
  });

  test("the admin space cannot collide with a tag", () => {
    expect(spaceName(null)).toBe(ADMIN_SPACE);
    expect(spaceName("admin")).toBe("admin");
  });
});

describe("rank rule (client-seq)", () => {
  const n = 4;
  const f = 1;

  test("decides at 2f+1 answers, ignoring one liar", () => {
    const rule = rankRule(n, f, "client-seq", parseClientSeq);
    expect(rule.add(0, ok(0, { last: 12 }))).toBeNull();
    expect(rule.add(3, ok(3, { last: 999_999 }))).toBeNull();
    expect(rule.add(1, ok(1, { last: 12 }))).toEqual({ ok: true, value: 12 });
  });

  test("a replica answering twice counts once", () => {
    const rule = rankRule(n, f, "client-seq", parseClientSeq);
    expect(rule.add(0, ok(0, { last: 3 }))).toBeNull();
    expect(rule.add(0, ok(0, { last: 3 }))).toBeNull();
    expect(rule.add(0, ok(0, { last: 3 }))).toBeNull();
    const outcome = rule.atDeadline(() => "replicas 1, 2, 3: no answer");
    expect(outcome.ok).toBe(false);
  });

  test("at the deadline f+1 answers are enough, fewer are a clear NoQuorumError", () => {
    const enough = rankRule(n, f, "client-seq", parseClientSeq);
    enough.add(2, ok(2, { last: 4 }));
    enough.add(1, ok(1, { last: 6 }));
    expect(enough.atDeadline(() => "")).toEqual({ ok: true, value: 4 });
    const short = rankRule(n, f, "client-seq", parseClientSeq);
    short.add(2, ok(2, { last: 4 }));
    const outcome = short.atDeadline(() => "replica 0: connection refused");
    expect(outcome.ok).toBe(false);
    if (outcome.ok) return;
    expect(outcome.error).toBeInstanceOf(NoQuorumError);
    expect(outcome.error.code).toBe("TIMEOUT");
    expect(outcome.error.message).toContain("replica 0: connection refused");
  });

  test("malformed answers are not numbers", () => {
    const rule = rankRule(n, f, "client-seq", parseClientSeq);
    rule.add(0, ok(0, { last: -3 }));
    rule.add(1, ok(1, "twelve"));
    rule.add(2, ok(2, { last: 8 }));
    expect(rule.atDeadline(() => "").ok).toBe(false);
  });

  test("f+1 refusals settle it as a refusal", () => {
    const rule = rankRule(n, f, "client-seq", parseClientSeq);
    expect(rule.add(0, refused(0, "UNAUTHORIZED", "unknown key"))).toBeNull();
    const outcome = rule.add(1, refused(1, "UNAUTHORIZED", "unknown key"));
    expect(outcome?.ok).toBe(false);
    if (outcome === null || outcome.ok) return;
    expect(outcome.error).toBeInstanceOf(RequestRejectedError);
    expect(outcome.error.code).toBe("UNAUTHORIZED");
  });
});

describe("highest rule (client-seq of a crash/none space)", () => {
  const n = 4;
  const f = 1;

  test("one of the f+1 replicas that hold the latest numbers is enough: the pick is the highest answer", () => {
    // Publishes 1..50 went to replicas 0 and 1 (request-tracker.ts quorumTargets); 0 is down.
    const rule = highestRule(n, f, "client-seq", parseClientSeq);
    expect(rule.add(1, ok(1, { last: 50 }))).toBeNull();
    expect(rule.add(2, ok(2, { last: 0 }))).toBeNull();
    expect(rule.add(3, ok(3, { last: 0 }))).toBeNull();
    expect(rule.atDeadline(() => "")).toEqual({ ok: true, value: 50 });
    // The (f+1)-th highest of the same answers is below numbers already used.
    const rank = rankRule(n, f, "client-seq", parseClientSeq, true);
    for (const [replica, last] of [
      [1, 50],
      [2, 0],
      [3, 0],
    ] as const)
      rank.add(replica, ok(replica, { last }));
    expect(rank.atDeadline(() => "")).toEqual({ ok: true, value: 0 });
  });

  test("decides at once when every replica answered", () => {
    const rule = highestRule(n, f, "client-seq", parseClientSeq);
    for (const replica of [0, 1, 2]) expect(rule.add(replica, ok(replica, { last: replica * 10 }))).toBeNull();
    expect(rule.add(3, ok(3, { last: 7 }))).toEqual({ ok: true, value: 20 });
  });

  test("fewer than f+1 answers are a NoQuorumError; f+1 of them settle once every reachable replica answered", () => {
    const rule = highestRule(n, f, "client-seq", parseClientSeq);
    rule.add(2, ok(2, { last: 4 }));
    expect(rule.enoughToSettleEarly?.()).toBe(false);
    const outcome = rule.atDeadline(() => "replicas 0, 1, 3: no answer");
    expect(outcome.ok).toBe(false);
    if (outcome.ok) return;
    expect(outcome.error).toBeInstanceOf(NoQuorumError);
    expect(outcome.error.message).toContain("2 needed");
    rule.add(3, ok(3, { last: 6 }));
    expect(rule.enoughToSettleEarly?.()).toBe(true);
    expect(rule.atDeadline(() => "")).toEqual({ ok: true, value: 6 });
  });

  test("an answer above 2^52 is not taken: one faulty replica cannot use up the key's numbers", () => {
    const rule = highestRule(n, f, "client-seq", parseClientSeq);
    rule.add(0, ok(0, { last: Number.MAX_SAFE_INTEGER }));
    rule.add(1, ok(1, { last: 9 }));
    rule.add(2, ok(2, { last: 9 }));
    expect(rule.add(3, ok(3, { last: 0 }))).toEqual({ ok: true, value: 9 });
    expect(HIGHEST_ANSWER_MAX).toBe(2 ** 52);
  });

  test("malformed answers are not numbers, and f+1 refusals settle it as a refusal", () => {
    const rule = highestRule(n, f, "client-seq", parseClientSeq);
    rule.add(0, ok(0, { last: -3 }));
    rule.add(1, ok(1, "twelve"));
    rule.add(2, ok(2, { last: 8 }));
    expect(rule.atDeadline(() => "").ok).toBe(false);
    const refusing = highestRule(n, f, "client-seq", parseClientSeq);
    expect(refusing.add(0, refused(0, "UNAUTHORIZED", "unknown key"))).toBeNull();
    expect(refusing.add(1, refused(1, "UNAUTHORIZED", "unknown key"))?.ok).toBe(false);
  });
});

describe("matching rule (channel-info, list-channels)", () => {
  const info = { tag: "sec.alerts", fault: "byzantine", order: "total", priority: "critical", public: false } as const;

  test("f+1 identical answers decide, after projecting away the next seq", () => {
    const rule = matchingRule(4, 1, "channel-info", parseChannelInfo);
    expect(rule.add(0, ok(0, { ...info, next: 10 }))).toBeNull();
    expect(rule.add(1, ok(1, { ...info, next: 12 }))).toEqual({ ok: true, value: info });
  });

  test("one lying replica cannot decide, and does not block the truth", () => {
    const rule = matchingRule(4, 1, "channel-info", parseChannelInfo);
    expect(rule.add(3, ok(3, { ...info, fault: "crash" }))).toBeNull();
    expect(rule.add(0, ok(0, info))).toBeNull();
    expect(rule.add(2, ok(2, info))).toEqual({ ok: true, value: info });
  });

  test("malformed answers never match each other", () => {
    const rule = matchingRule(4, 1, "channel-info", parseChannelInfo);
    expect(rule.add(0, ok(0, { tag: "x" }))).toBeNull();
    expect(rule.add(1, ok(1, { tag: "x" }))).toBeNull();
    expect(rule.atDeadline(() => "").ok).toBe(false);
  });

  test("f+1 matching refusals reject with the replicas' code and reason", () => {
    const rule = matchingRule(4, 1, "channel-info", parseChannelInfo);
    rule.add(0, refused(0, "UNKNOWN_CHANNEL", "no channel sec.alerts"));
    const outcome = rule.add(2, refused(2, "UNKNOWN_CHANNEL", "no channel sec.alerts"));
    expect(outcome?.ok).toBe(false);
    if (outcome === null || outcome.ok) return;
    expect(outcome.error.code).toBe("UNKNOWN_CHANNEL");
    expect(outcome.error.message).toBe("no channel sec.alerts");
  });

  test("channel lists match whatever order each replica lists in", () => {
    const a = { tag: "a.x", fault: "crash", order: "none", priority: "low", public: true } as const;
    const b = { tag: "b.y", fault: "byzantine", order: "total", priority: "high", public: false } as const;
    const rule = matchingRule(4, 1, "list-channels", parseChannelList);
    rule.add(0, ok(0, { channels: [b, a] }));
    expect(rule.add(1, ok(1, { channels: [a, b] }))).toEqual({ ok: true, value: [a, b] });
  });
});
