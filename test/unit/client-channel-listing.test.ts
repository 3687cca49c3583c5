// list-channels on the client side (src/client/channel-listing.ts): the replicated part of
// each channel is voted on (f+1 matching), the figures that differ between correct
// replicas are the (f+1)-th highest among those that matched, and a replica that lies
// about them alone cannot raise them.
import { describe, expect, test } from "bun:test";
import { listChannelsRule, parseChannelKeys } from "../../src/client/channel-listing.ts";
import type { Canonical } from "../../wire/canonical.ts";
import type { QueryReply } from "../../wire/schemas.ts";

const ok = (replica: number, res: Canonical): QueryReply => ({ id: 1, replica, ok: true, res });

const base = {
  tag: "sec.alerts",
  fault: "byzantine",
  order: "total",
  priority: "critical",
  public: false,
  publishers: 2,
  subscribers: 1,
  retention: { events: 1000, bytes: 100_000, ageMs: 0 },
} as const;

const answer = (next: number, events: number, extra: object = {}): Canonical => ({
  channels: [{ ...base, next, oldest: 1, events, bytes: events * 100, ...extra }],
});

describe("listChannelsRule", () => {
  test("f+1 matching replicated parts decide; figures are the (f+1)-th highest of the matching replicas", () => {
    const rule = listChannelsRule(4, 1);
    expect(rule.add(0, ok(0, answer(11, 10)))).toBeNull();
    const outcome = rule.add(1, ok(1, answer(9, 8)));
    expect(outcome).toEqual({
      ok: true,
      value: [{ ...base, lastSeq: 8, retainedEvents: 8, retainedBytes: 800 }],
    });
  });

  test("a replica that differs in the replicated part is outvoted and its figures are not used", () => {
    const rule = listChannelsRule(4, 1);
    expect(rule.add(3, ok(3, answer(1_000_000, 1_000_000, { publishers: 7 })))).toBeNull();
    expect(rule.add(0, ok(0, answer(5, 4)))).toBeNull();
    const outcome = rule.add(2, ok(2, answer(5, 4)));
    expect(outcome?.ok && outcome.value[0]).toMatchObject({ publishers: 2, lastSeq: 4, retainedEvents: 4 });
  });

  test("an order-none channel has no last seq; a replica that lists only the CLASS leaves figures unknown", () => {
    const rule = listChannelsRule(4, 1);
    const cls = { tag: "net.links", fault: "crash", order: "none", priority: "normal", public: true } as const;
    rule.add(0, ok(0, { channels: [cls] }));
    const outcome = rule.add(1, ok(1, { channels: [cls] }));
    expect(outcome).toEqual({
      ok: true,
      value: [{ ...cls, publishers: null, subscribers: null, retention: null, lastSeq: null, retainedEvents: null, retainedBytes: null }],
    });
  });
});

test("parseChannelKeys reads the keys of a channel-info answer asked with keys", () => {
  const key = new Uint8Array(32).fill(3);
  expect(parseChannelKeys({ ...base, publisherKeys: [key], subscriberKeys: [] })).toEqual({
    tag: "sec.alerts",
    publisherKeys: [key],
    subscriberKeys: [],
  });
  expect(parseChannelKeys({ ...base, publisherKeys: [new Uint8Array(3)], subscriberKeys: [] })).toBeNull();
});
