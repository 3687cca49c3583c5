// The status query on the client side (src/client/queries.ts): a status answer's traffic
// rows must name what a channel can have (they are printed by `fitb top`), and the `each`
// rule does not wait out the query timeout for a replica that holds its session but does
// not answer: once n-f answered, the rest get EACH_ANSWER_GRACE_MS.
import { describe, expect, test } from "bun:test";
import { EACH_ANSWER_GRACE_MS, eachRule, parseStatus } from "../../src/client/queries.ts";
import type { QueryReply } from "../../wire/schemas.ts";

const BASE = { replica: 1, view: 0, leader: 0, lastDecided: 7, channels: 1 };
const ROW = { tag: "sec.alerts", class: "byzantine/total", priority: "critical", published: 1, stored: 1, delivered: 2, shed: 0 };

function reply(id: number): QueryReply {
  return { id: 1, replica: id, ok: true, res: { ...BASE, replica: id } };
}

describe("status answers", () => {
  test("traffic rows with a wire tag, a known class and priority are kept", () => {
    expect(parseStatus({ ...BASE, traffic: [ROW, { ...ROW, tag: "$sys.events" }, { ...ROW, tag: "_other" }] })?.traffic).toHaveLength(3);
  });

  test("a forged tag, class or priority leaves the traffic out, not the rest of the answer", () => {
    const forgeries = [
      { ...ROW, tag: "sec.\x1b]0;owned\x07" },
      { ...ROW, tag: "Upper.Case" },
      { ...ROW, class: "byzantine/total\x1b[2J" },
      { ...ROW, priority: "urgent" },
    ];
    for (const forged of forgeries) {
      const answer = parseStatus({ ...BASE, traffic: [ROW, forged] });
      expect(answer).not.toBeNull();
      expect(answer?.lastDecided).toBe(7);
      expect(answer?.traffic).toBeUndefined();
    }
  });
});

describe("the each rule", () => {
  test("once n-f answered, it settles EACH_ANSWER_GRACE_MS after the first tick that saw them, with the answers so far", () => {
    const rule = eachRule(4, parseStatus, 1);
    expect(rule.add(0, reply(0))).toBeNull();
    expect(rule.add(1, reply(1))).toBeNull();
    expect(rule.settleOnTick?.(100)).toBeNull();
    expect(rule.add(2, reply(2))).toBeNull();
    expect(rule.settleOnTick?.(5_000)).toBeNull();
    expect(rule.settleOnTick?.(5_000 + EACH_ANSWER_GRACE_MS - 1)).toBeNull();
    const outcome = rule.settleOnTick?.(5_000 + EACH_ANSWER_GRACE_MS);
    expect(outcome?.ok).toBe(true);
    expect(outcome?.ok === true ? [...outcome.value.keys()] : []).toEqual([0, 1, 2]);
  });

  test("fewer than n-f answers never settle on time, only at the deadline; all n settle at once", () => {
    const rule = eachRule(4, parseStatus, 1);
    rule.add(0, reply(0));
    rule.add(1, reply(1));
    for (const now of [0, 10_000, 1_000_000]) expect(rule.settleOnTick?.(now)).toBeNull();
    expect(rule.atDeadline(() => "").ok).toBe(true);
    const full = eachRule(4, parseStatus, 1);
    for (const id of [0, 1, 2]) full.add(id, reply(id));
    expect(full.add(3, reply(3))?.ok).toBe(true);
  });

  test("without f it takes the most n tolerates: n=7 starts the grace at 5 answers", () => {
    const rule = eachRule(7, parseStatus);
    for (const id of [0, 1, 2, 3]) rule.add(id, reply(id));
    expect(rule.settleOnTick?.(0)).toBeNull();
    rule.add(4, reply(4));
    expect(rule.settleOnTick?.(0)).toBeNull();
    expect(rule.settleOnTick?.(EACH_ANSWER_GRACE_MS)?.ok).toBe(true);
  });
});
