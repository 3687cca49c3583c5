// list-channels on the client side (src/client/channel-listing.ts): the replicated part of
// each channel is voted on (f+1 matching), every replica with a session is heard out, the
// figures that differ between correct replicas are the highest (crash channels) or the
// (f+1)-th highest (byzantine channels) among those that matched, so a replica that lies
// about them alone cannot raise a byzantine channel's; the most any replica reports is kept
// for destroy-channel, whose check (src/cli/commands/admin-channels.ts) asks for --yes when
// any replica says the channel holds events.
import { describe, expect, test } from "bun:test";
import { type ChannelListing, listChannelsRule, parseChannelKeys, pickFigure } from "../../src/client/channel-listing.ts";
import type { FitbClient } from "../../src/client/client.ts";
import { checkDestroy } from "../../src/cli/commands/admin-channels.ts";
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

/** net.links as the operator's `fitb demo` had it: crash/none, public, one publisher. */
const links = { ...base, tag: "net.links", fault: "crash", order: "none", priority: "normal", public: true } as const;

/** A crash/none replica's own store: `events` events of 100 bytes, its own seqs. */
const linksAnswer = (events: number, channel: object = links): Canonical => ({
  channels: [{ ...channel, next: events + 1, oldest: 1, events, bytes: events * 100 }],
});

describe("listChannelsRule", () => {
  test("byzantine/total: f+1 matching parts decide, every replica is heard, figures are the (f+1)-th highest", () => {
    const rule = listChannelsRule(4, 1);
    expect(rule.add(0, ok(0, answer(11, 10)))).toBeNull();
    // Decided here, but replicas 2 and 3 have not answered yet.
    expect(rule.add(1, ok(1, answer(9, 8)))).toBeNull();
    expect(rule.enoughToSettleEarly?.()).toBe(true);
    expect(rule.add(2, ok(2, answer(10, 9)))).toBeNull();
    // Replica 3 inflates its figures; the (f+1)-th highest is one a correct replica reported.
    const outcome = rule.add(3, ok(3, answer(1_000_001, 1_000_000)));
    expect(outcome).toEqual({
      ok: true,
      value: [
        { ...base, lastSeq: 10, retainedEvents: 10, retainedBytes: 1000, reportedEventsMax: 1_000_000, reportedBytesMax: 100_000_000 },
      ],
    });
  });

  test("a replica that differs in the replicated part is outvoted; its figures are reported, not listed", () => {
    const rule = listChannelsRule(4, 1);
    expect(rule.add(3, ok(3, answer(1_000_000, 1_000_000, { publishers: 7 })))).toBeNull();
    expect(rule.add(0, ok(0, answer(5, 4)))).toBeNull();
    expect(rule.add(2, ok(2, answer(5, 4)))).toBeNull();
    const outcome = rule.add(1, ok(1, answer(5, 4)));
    expect(outcome?.ok && outcome.value[0]).toMatchObject({
      publishers: 2,
      lastSeq: 4,
      retainedEvents: 4,
      reportedEventsMax: 1_000_000,
    });
  });

  test("crash/none: the events are on the f+1 replicas the publishes went to; the listing shows the most any holds", () => {
    // The operator's case: 20 events on replicas 1 and 3. The (f+1)-th highest of the first
    // f+1 matching answers (replicas 0 and 2) was 0.
    const rule = listChannelsRule(4, 1);
    expect(rule.add(0, ok(0, linksAnswer(0)))).toBeNull();
    expect(rule.add(2, ok(2, linksAnswer(0)))).toBeNull();
    expect(rule.add(1, ok(1, linksAnswer(20)))).toBeNull();
    const outcome = rule.add(3, ok(3, linksAnswer(20)));
    expect(outcome).toEqual({
      ok: true,
      value: [{ ...links, lastSeq: null, retainedEvents: 20, retainedBytes: 2000, reportedEventsMax: 20, reportedBytesMax: 2000 }],
    });
  });

  test("crash/none with stores that differ (publishes that went to other pairs): the most any replica holds", () => {
    const rule = listChannelsRule(4, 1);
    for (const [replica, events] of [
      [0, 1000],
      [1, 1015],
      [2, 1000],
    ] as const)
      expect(rule.add(replica, ok(replica, linksAnswer(events)))).toBeNull();
    const outcome = rule.add(3, ok(3, linksAnswer(15)));
    expect(outcome?.ok && outcome.value[0]).toMatchObject({ retainedEvents: 1015, retainedBytes: 101_500, reportedEventsMax: 1015 });
  });

  test("with a replica down, it settles once the reachable ones answered (the tracker calls atDeadline), from their figures", () => {
    const rule = listChannelsRule(4, 1);
    expect(rule.settleWhenReachableAnswered).toBe(true);
    expect(rule.add(0, ok(0, linksAnswer(0)))).toBeNull();
    expect(rule.enoughToSettleEarly?.()).toBe(false);
    expect(rule.add(1, ok(1, linksAnswer(20)))).toBeNull();
    expect(rule.add(2, ok(2, linksAnswer(0)))).toBeNull();
    expect(rule.enoughToSettleEarly?.()).toBe(true);
    const outcome = rule.atDeadline(() => "replica 3 down");
    expect(outcome.ok && outcome.value[0]).toMatchObject({ retainedEvents: 20, reportedEventsMax: 20 });
  });

  test("byzantine/none: one replica answering 0 neither lowers the listing nor hides the events; one inflating raises only the report", () => {
    const ids = { ...links, tag: "sec.ids", fault: "byzantine" } as const;
    const hiding = listChannelsRule(4, 1);
    for (const [replica, events] of [
      [0, 0],
      [1, 30],
      [2, 30],
    ] as const)
      expect(hiding.add(replica, ok(replica, linksAnswer(events, ids)))).toBeNull();
    const hidden = hiding.add(3, ok(3, linksAnswer(29, ids)));
    expect(hidden?.ok && hidden.value[0]).toMatchObject({ retainedEvents: 30, reportedEventsMax: 30 });

    const inflating = listChannelsRule(4, 1);
    for (const [replica, events] of [
      [0, 1_000_000],
      [1, 30],
      [2, 30],
    ] as const)
      expect(inflating.add(replica, ok(replica, linksAnswer(events, ids)))).toBeNull();
    const inflated = inflating.add(3, ok(3, linksAnswer(29, ids)));
    expect(inflated?.ok && inflated.value[0]).toMatchObject({ retainedEvents: 30, reportedEventsMax: 1_000_000 });
  });

  test("without everyReplica it settles at the first f+1 matching answers (the wildcard watch)", () => {
    const rule = listChannelsRule(4, 1, false);
    expect(rule.settleWhenReachableAnswered).toBe(false);
    expect(rule.add(0, ok(0, linksAnswer(0)))).toBeNull();
    const outcome = rule.add(2, ok(2, linksAnswer(5)));
    expect(outcome?.ok && outcome.value.map((channel) => channel.tag)).toEqual(["net.links"]);
  });

  test("an order-none channel has no last seq; a replica that lists only the CLASS leaves figures unknown", () => {
    const rule = listChannelsRule(4, 1, false);
    const cls = { tag: "net.links", fault: "crash", order: "none", priority: "normal", public: true } as const;
    rule.add(0, ok(0, { channels: [cls] }));
    const outcome = rule.add(1, ok(1, { channels: [cls] }));
    expect(outcome).toEqual({
      ok: true,
      value: [
        {
          ...cls,
          publishers: null,
          subscribers: null,
          retention: null,
          lastSeq: null,
          retainedEvents: null,
          retainedBytes: null,
          reportedEventsMax: null,
          reportedBytesMax: null,
        },
      ],
    });
  });
});

describe("pickFigure", () => {
  test("crash: the highest of at least f+1 answers; byzantine: the (f+1)-th highest", () => {
    expect(pickFigure("crash", [0, 20, 0, 20], 1)).toBe(20);
    expect(pickFigure("crash", [0, 20], 1)).toBe(20);
    expect(pickFigure("crash", [20], 1)).toBeNull();
    expect(pickFigure("byzantine", [0, 20, 0, 20], 1)).toBe(20);
    expect(pickFigure("byzantine", [0, 20, 0, 0], 1)).toBe(0);
    expect(pickFigure("byzantine", [1_000_000, 30, 30, 29], 1)).toBe(30);
  });
});

describe("destroy-channel's check", () => {
  const listed = (channel: Partial<ChannelListing>): FitbClient =>
    ({
      listChannels: async (): Promise<ChannelListing[]> => [
        {
          ...links,
          retention: null,
          lastSeq: null,
          retainedEvents: 0,
          retainedBytes: 0,
          reportedEventsMax: 0,
          reportedBytesMax: 0,
          ...channel,
        },
      ],
    }) as unknown as FitbClient;

  test("an empty channel, an unknown one, or --yes passes", async () => {
    await checkDestroy(listed({}), "net.links", false);
    await checkDestroy(listed({ retainedEvents: 20, reportedEventsMax: 20 }), "other.tag", false);
    await checkDestroy(listed({ retainedEvents: 20, reportedEventsMax: 20 }), "net.links", true);
  });

  test("asks for --yes with the count when the listing shows events", async () => {
    const client = listed({ retainedEvents: 20, retainedBytes: 2000, reportedEventsMax: 20, reportedBytesMax: 2000 });
    await expect(checkDestroy(client, "net.links", false)).rejects.toThrow(
      "channel net.links holds 20 events (2.0 KiB); destroying it deletes them on every replica. Run again with --yes to destroy it",
    );
  });

  test("one event is one event", async () => {
    const client = listed({ retainedEvents: 1, retainedBytes: 200, reportedEventsMax: 1, reportedBytesMax: 200 });
    await expect(checkDestroy(client, "net.links", false)).rejects.toThrow("channel net.links holds 1 event (200 B);");
  });

  test("one replica saying it holds events is enough, whatever the listing shows", async () => {
    const client = listed({ retainedEvents: 0, reportedEventsMax: 12, reportedBytesMax: 1200 });
    await expect(checkDestroy(client, "net.links", false)).rejects.toThrow(
      "channel net.links may hold events: a replica reports 12 events (1.2 KiB), the listing 0; destroying it",
    );
  });

  test("figures the replicas did not give count as events", async () => {
    const client = listed({ retainedEvents: null, retainedBytes: null, reportedEventsMax: null, reportedBytesMax: null });
    await expect(checkDestroy(client, "net.links", false)).rejects.toThrow(
      "channel net.links may hold events (the replicas did not say how many)",
    );
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
