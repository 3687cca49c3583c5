/**
 * A total-order subscription served by f+1 replicas (src/client/narrowing.ts): the rule
 * alone, then a ClientSubscription on a scripted host of four replicas: it starts at every
 * replica, narrows to two, and goes back to every replica from the next undelivered seq as
 * soon as a fault shows (a silent serving replica, a contradiction, a dropped connection, a
 * refusal), nothing lost; then narrows again after a calm spell without the suspects.
 */
import { describe, expect, test } from "bun:test";
import type { Events } from "../../wire/schemas.ts";
import {
  NARROW_AGAIN_AFTER_MS,
  NARROW_AGAIN_AFTER_MS_MAX,
  NARROW_CALM_RESET_MS,
  NARROW_STALL_BUSY_MS,
  NARROW_STALL_MS,
  ReplicaNarrowing,
} from "../../src/client/narrowing.ts";
import type { ChannelInfo } from "../../src/client/queries.ts";
import {
  ClientSubscription,
  type ReceivedBatch,
  type SubscribeOptions,
  type SubscriptionSignal,
  sourcesOf,
} from "../../src/client/subscription.ts";
import { RESUBSCRIBE_AFTER_REFUSAL_MS } from "../../src/client/replica-subs.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { channel, ScriptedHost, signedRequest } from "./subscription-host.ts";

const MEMBERS = [0, 1, 2, 3];

describe("ReplicaNarrowing, the rule", () => {
  test("picks f+1 active replicas from the client's offset on, and puts the others on standby", () => {
    const narrowing = new ReplicaNarrowing(6, 0);
    expect(narrowing.narrow(0, MEMBERS, MEMBERS, 1)).toEqual([0, 1]);
    expect(narrowing.servingReplicas).toEqual([2, 3]);
    expect(narrowing.isStandby(0)).toBe(true);
    expect(narrowing.isServing(3)).toBe(true);
    // Already narrowed: nothing more to do.
    expect(narrowing.narrow(1, MEMBERS, MEMBERS, 1)).toBeNull();
  });

  test("skips replicas that are not active, and stays wide when fewer than f+1 are", () => {
    const narrowing = new ReplicaNarrowing(0, 0);
    expect(narrowing.narrow(0, MEMBERS, [1], 1)).toBeNull();
    expect(narrowing.servingReplicas).toBeNull();
    expect(narrowing.narrow(0, MEMBERS, [3, 1], 1)).toEqual([0, 2]);
    // A group of f+1 members has nothing to leave out.
    expect(new ReplicaNarrowing(0, 0).narrow(0, [0, 1], [0, 1], 1)).toBeNull();
  });

  test("a stall is the copy covering the next seq waiting NARROW_STALL_MS; its suspects sent no copy at that seq", () => {
    const narrowing = new ReplicaNarrowing(0, 0);
    narrowing.narrow(0, MEMBERS, MEMBERS, 1);
    narrowing.observe(100, 0, 5, 5, 5);
    expect(narrowing.stalled(100 + NARROW_STALL_MS - 1, 5, 5, true)).toBeNull();
    expect(narrowing.stalled(100 + NARROW_STALL_MS, 5, 5, true)).toEqual([1]);
    // Replica 1 releases seq 5 late; seq 6, which replica 0 sent at 150, is the head now
    // and has waited since then: one batch released now and then holds back no other.
    narrowing.observe(150, 0, 6, 5, 5);
    narrowing.observe(640, 1, 5, 6, 6);
    expect(narrowing.stalled(649, 6, 6, true)).toBeNull();
    expect(narrowing.stalled(650, 6, 6, true)).toEqual([1]);
    // Nothing covers the next seq: no stall however long (a copy far ahead is not the head).
    narrowing.observe(700, 0, 50, 7, null);
    expect(narrowing.stalled(10_000, null, 7, true)).toBeNull();
    // A head whose copies came before the narrowing is timed from the narrowing; one never
    // seen arrive from when it is found at the head.
    const late = new ReplicaNarrowing(0, 0);
    late.observe(0, 2, 1, 1, 1);
    late.narrow(1_000, MEMBERS, MEMBERS, 1);
    expect(late.stalled(1_000 + NARROW_STALL_MS - 1, 1, 1, true)).toBeNull();
    expect(late.stalled(1_000 + NARROW_STALL_MS, 1, 1, true)).toEqual([0, 1]);
    expect(late.stalled(5_000, 3, 4, true)).toBeNull();
    expect(late.stalled(5_000 + NARROW_STALL_MS, 3, 4, true)).toEqual([0, 1]);
    // While wide, nothing stalls.
    late.widen(6_000, []);
    expect(late.stalled(20_000, 3, 4, true)).toBeNull();
  });

  test("at a late tick a stall is judged only once the copy has waited NARROW_STALL_BUSY_MS", () => {
    const narrowing = new ReplicaNarrowing(0, 0);
    narrowing.narrow(0, MEMBERS, MEMBERS, 1);
    narrowing.observe(100, 0, 5, 5, 5);
    expect(narrowing.stalled(100 + NARROW_STALL_MS, 5, 5, false)).toBeNull();
    expect(narrowing.stalled(100 + NARROW_STALL_BUSY_MS - 1, 5, 5, false)).toBeNull();
    expect(narrowing.stalled(100 + NARROW_STALL_BUSY_MS, 5, 5, false)).toEqual([1]);
  });

  test("a straddler at the head is timed from its copy; copies far ahead cannot keep the head from being timed", () => {
    const narrowing = new ReplicaNarrowing(0, 0);
    narrowing.narrow(0, MEMBERS, MEMBERS, 1);
    // A copy starting at 3 covers the next seq, 4 (a resume point inside its batch).
    narrowing.observe(100, 1, 3, 4, 3);
    expect(narrowing.stalled(100 + NARROW_STALL_MS, 3, 4, true)).toEqual([0]);
    // Replica 0 fills the times with copies far ahead; the head's copy still is timed when it comes.
    const filled = new ReplicaNarrowing(0, 0);
    filled.narrow(0, MEMBERS, MEMBERS, 1);
    for (let seq = 1_000; seq < 4_000; seq++) filled.observe(10, 0, seq, 10, null);
    filled.observe(100, 1, 10, 10, 10);
    expect(filled.stalled(100 + NARROW_STALL_MS - 1, 10, 10, true)).toBeNull();
    expect(filled.stalled(100 + NARROW_STALL_MS, 10, 10, true)).toEqual([0]);
  });

  test("a tick more than twice the tick period plus 50 ms after the one before is late; a clock stepping back is not", () => {
    const narrowing = new ReplicaNarrowing(0, 0);
    expect(narrowing.onTick(1_000, 250)).toBe(true);
    expect(narrowing.onTick(1_250, 250)).toBe(true);
    expect(narrowing.onTick(1_800, 250)).toBe(true);
    expect(narrowing.onTick(2_351, 250)).toBe(false);
    expect(narrowing.onTick(2_200, 250)).toBe(true);
    expect(narrowing.onTick(2_450, 250)).toBe(true);
  });

  test("widening leaves the suspects out for twice the spell, and the spell doubles up to its bound", () => {
    const narrowing = new ReplicaNarrowing(0, 0);
    narrowing.narrow(0, MEMBERS, MEMBERS, 1);
    expect(narrowing.widen(10, [1])).toBe(true);
    expect(narrowing.widen(11, [])).toBe(false);
    expect(narrowing.servingReplicas).toBeNull();
    expect(narrowing.widenings).toBe(1);
    expect(narrowing.narrow(10 + NARROW_AGAIN_AFTER_MS - 1, MEMBERS, MEMBERS, 1)).toBeNull();
    let now = 10 + NARROW_AGAIN_AFTER_MS;
    expect(narrowing.narrow(now, MEMBERS, MEMBERS, 1)).toEqual([1, 3]);
    expect(narrowing.servingReplicas).toEqual([0, 2]);
    // The next spell is twice as long, and so on up to the bound.
    narrowing.widen(now, []);
    expect(narrowing.narrow(now + 2 * NARROW_AGAIN_AFTER_MS - 1, MEMBERS, MEMBERS, 1)).toBeNull();
    now += 2 * NARROW_AGAIN_AFTER_MS;
    expect(narrowing.narrow(now, MEMBERS, MEMBERS, 1)).not.toBeNull();
    for (let i = 0; i < 20; i++) {
      narrowing.widen(now, []);
      now += NARROW_AGAIN_AFTER_MS_MAX;
      expect(narrowing.narrow(now, MEMBERS, MEMBERS, 1)).not.toBeNull();
    }
    // A suspect named while wide is left out too.
    narrowing.widen(now, []);
    expect(narrowing.widen(now, [0])).toBe(false);
    now += NARROW_AGAIN_AFTER_MS_MAX;
    expect(narrowing.narrow(now, MEMBERS, MEMBERS, 1)).toEqual([0, 3]);
    // Narrowed long without trouble: the next spell is the first one again.
    now += NARROW_CALM_RESET_MS;
    narrowing.widen(now, []);
    expect(narrowing.narrow(now + NARROW_AGAIN_AFTER_MS, MEMBERS, MEMBERS, 1)).not.toBeNull();
  });
});

type Harness = {
  readonly host: ScriptedHost;
  readonly sub: ClientSubscription;
  readonly got: ReceivedBatch[];
  readonly signals: SubscriptionSignal[];
};

const publisher = SigningKey.generate();
const requests = Array.from({ length: 8 }, (_, i) => signedRequest(publisher, "sec.alerts", i + 1, [`alert ${i + 1}`]));

/** A live byzantine/total subscription started at every replica (all at next 1), this client's offset 0. */
async function started(options: SubscribeOptions = {}): Promise<Harness> {
  const host = new ScriptedHost();
  const got: ReceivedBatch[] = [];
  const signals: SubscriptionSignal[] = [];
  const sub = new ClientSubscription(
    host,
    channel("sec.alerts", "byzantine", "total"),
    { ...options, onSignal: (s) => signals.push(s) },
    (batch) => {
      got.push(batch);
    },
    60_000,
  );
  const begun = sub.begin();
  for (const replica of MEMBERS) {
    const subId = host.subIdAt(replica);
    sub.onSubOk(replica, subId, { sub: subId, replica, next: 1 });
  }
  await begun;
  return { host, sub, got, signals };
}

function send(h: Harness, replica: number, seq: number): void {
  h.sub.onEvents(replica, h.host.subIdAt(replica), {
    sub: h.host.subIdAt(replica),
    tag: "sec.alerts",
    seq,
    replica,
    req: requests[seq - 1] as Events["req"],
  });
}

async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}

function delivered(h: Harness): (number | null)[] {
  return h.got.map((batch) => batch.seq);
}

/** The SUBSCRIBEs sent after `count` earlier ones, as [replica, from]. */
function subscribesSince(h: Harness, count: number): [number, number | undefined][] {
  return h.host.subscribes.slice(count).map((s) => [s.replica, s.from]);
}

describe("a total-order subscription served by f+1 replicas", () => {
  test("starts at every replica, then keeps two serving and unsubscribes at the others", async () => {
    const h = await started();
    expect(h.sub.stats().servingReplicas).toEqual([0, 1]);
    expect(h.host.unsubscribes.map((u) => u.replica).sort()).toEqual([2, 3]);
    send(h, 0, 1);
    send(h, 1, 1);
    await settle();
    expect(delivered(h)).toEqual([1]);
    // A standby replica's session coming back up does not subscribe it.
    const count = h.host.subscribes.length;
    h.sub.onReplicaReady(2);
    expect(h.host.subscribes.length).toBe(count);
    await h.sub.close();
  });

  test("by default (auto) low and normal channels narrow, high and critical ones and observed ones keep every replica", () => {
    const info = (priority: ChannelInfo["priority"]): ChannelInfo => ({ ...channel("x.y", "byzantine", "total"), priority });
    expect(sourcesOf({}, info("low"))).toBe("quorum");
    expect(sourcesOf({}, info("normal"))).toBe("quorum");
    expect(sourcesOf({}, info("high"))).toBe("all");
    expect(sourcesOf({}, info("critical"))).toBe("all");
    expect(sourcesOf({ onCopy: () => undefined }, info("low"))).toBe("all");
    expect(sourcesOf({ sources: "quorum" }, info("critical"))).toBe("quorum");
    expect(sourcesOf({ sources: "all" }, info("low"))).toBe("all");
    expect(sourcesOf({ sources: "auto", onCopy: () => undefined }, info("normal"))).toBe("all");
  });

  test('sources "all" keeps every replica, and so does an observer of copies unless it asks otherwise', async () => {
    const all = await started({ sources: "all" });
    expect(all.sub.stats().servingReplicas).toBeNull();
    expect(all.host.unsubscribes).toEqual([]);
    const watched = await started({ onCopy: () => undefined });
    expect(watched.sub.stats().servingReplicas).toBeNull();
    const narrowed = await started({ onCopy: () => undefined, sources: "quorum" });
    expect(narrowed.sub.stats().servingReplicas).toEqual([0, 1]);
    for (const h of [all, watched, narrowed]) await h.sub.close();
  });

  test("a serving replica that falls silent: after the stall every replica is asked from the next seq, nothing lost", async () => {
    const h = await started();
    send(h, 0, 1);
    send(h, 1, 1);
    await settle();
    // Replica 1 goes silent; replica 0's copies wait for a second vote.
    h.host.nowMs += 10;
    send(h, 0, 2);
    send(h, 0, 3);
    await settle();
    expect(delivered(h)).toEqual([1]);
    const count = h.host.subscribes.length;
    h.host.nowMs += NARROW_STALL_MS - 1;
    h.sub.tick(h.host.nowMs);
    expect(h.sub.stats().widenings).toBe(0);
    h.host.nowMs += 1;
    h.sub.tick(h.host.nowMs);
    expect(h.signals).toContainEqual({ t: "widened", reason: `a copy waited ${NARROW_STALL_MS} ms or more for a vote`, suspects: [1] });
    expect(h.sub.stats().servingReplicas).toBeNull();
    expect(subscribesSince(h, count)).toEqual([
      [2, 2],
      [3, 2],
    ]);
    send(h, 2, 2);
    send(h, 2, 3);
    await settle();
    expect(delivered(h)).toEqual([1, 2, 3]);
    // After the calm spell it narrows again, without the suspect.
    h.host.nowMs += NARROW_AGAIN_AFTER_MS;
    for (const replica of [2, 3]) h.sub.onSubOk(replica, h.host.subIdAt(replica), { sub: h.host.subIdAt(replica), replica });
    h.sub.tick(h.host.nowMs);
    expect(h.sub.stats().servingReplicas).toEqual([0, 2]);
    await h.sub.close();
  });

  test("a contradiction widens at once and leaves its sender out of the next narrowing", async () => {
    const h = await started();
    const count = h.host.subscribes.length;
    // Replica 1 sends another (validly signed) batch at seq 1 than replica 0.
    h.sub.onEvents(1, h.host.subIdAt(1), {
      sub: h.host.subIdAt(1),
      tag: "sec.alerts",
      seq: 1,
      replica: 1,
      req: requests[4] as Events["req"],
    });
    send(h, 0, 1);
    await settle();
    send(h, 0, 2);
    send(h, 1, 1);
    await settle();
    const widened = h.signals.filter((s) => s.t === "widened");
    expect(widened.length).toBe(1);
    expect(widened[0]).toMatchObject({ suspects: [1] });
    expect(subscribesSince(h, count).map(([replica]) => replica)).toEqual([2, 3]);
    send(h, 2, 1);
    await settle();
    expect(delivered(h)).toEqual([1]);
    h.host.nowMs += NARROW_AGAIN_AFTER_MS;
    for (const replica of [2, 3]) h.sub.onSubOk(replica, h.host.subIdAt(replica), { sub: h.host.subIdAt(replica), replica });
    h.sub.tick(h.host.nowMs);
    expect(h.sub.stats().servingReplicas).toEqual([0, 2]);
    await h.sub.close();
  });

  test("a serving replica's connection dropping, or its refusal, widens; a standby replica's does not", async () => {
    const h = await started();
    h.sub.onReplicaDown(3);
    expect(h.sub.stats().widenings).toBe(0);
    h.sub.onReplicaDown(1);
    expect(h.signals.at(-1)).toEqual({ t: "widened", reason: "replica 1 is disconnected", suspects: [1] });
    await h.sub.close();

    const r = await started();
    const subId = r.host.subIdAt(0);
    const before = r.host.subscribes.length;
    r.sub.onSubEnd(0, subId, { sub: subId, replica: 0, code: "UNKNOWN_CHANNEL", reason: "no channel sec.alerts" });
    expect(r.signals).toContainEqual({ t: "widened", reason: "replica 0 ended the subscription (UNKNOWN_CHANNEL)", suspects: [0] });
    expect(r.sub.stats().servingReplicas).toBeNull();
    // The standby replicas are asked; the one that refused waits out its refusal's delay.
    expect(subscribesSince({ ...r, got: [] }, before).map(([replica]) => replica)).toEqual([2, 3]);
    r.host.nowMs += RESUBSCRIBE_AFTER_REFUSAL_MS;
    r.sub.tick(r.host.nowMs);
    expect(subscribesSince({ ...r, got: [] }, before).map(([replica]) => replica)).toEqual([2, 3, 0]);
    // Slowness is not a fault: the replica is asked again and the subscription stays narrowed.
    const s = await started();
    const slowId = s.host.subIdAt(1);
    s.sub.onSubEnd(1, slowId, { sub: slowId, replica: 1, code: "SLOW", reason: "subscriber too slow" });
    expect(s.sub.stats().servingReplicas).toEqual([0, 1]);
    expect(s.host.subIdAt(1)).not.toBe(slowId);
    for (const h2 of [r, s]) await h2.sub.close();
  });

  test("a copy that came before the narrowing, then silence: the stall still widens", async () => {
    const host = new ScriptedHost();
    const signals: SubscriptionSignal[] = [];
    const sub = new ClientSubscription(
      host,
      channel("sec.alerts", "byzantine", "total"),
      { onSignal: (s) => signals.push(s) },
      () => undefined,
      60_000,
    );
    const begun = sub.begin();
    for (const replica of [0, 1]) sub.onSubOk(replica, host.subIdAt(replica), { sub: host.subIdAt(replica), replica, next: 1 });
    // Replica 1's copy of seq 1 comes before the start is fixed; the start narrows to 0 and 1.
    sub.onEvents(1, host.subIdAt(1), { sub: host.subIdAt(1), tag: "sec.alerts", seq: 1, replica: 1, req: requests[0] as Events["req"] });
    sub.onSubOk(2, host.subIdAt(2), { sub: host.subIdAt(2), replica: 2, next: 1 });
    await begun;
    expect(sub.stats().servingReplicas).toEqual([0, 1]);
    // Replica 0 never sends it, and nothing else is published.
    host.nowMs += NARROW_STALL_MS;
    sub.tick(host.nowMs);
    expect(signals).toContainEqual({ t: "widened", reason: `a copy waited ${NARROW_STALL_MS} ms or more for a vote`, suspects: [0] });
    await sub.close();
  });

  test("a pause for a slow handler and its resume ask only the serving replicas", async () => {
    const host = new ScriptedHost();
    let open: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (open = resolve));
    const seqs: (number | null)[] = [];
    const signals: SubscriptionSignal[] = [];
    const sub = new ClientSubscription(
      host,
      channel("sec.alerts", "byzantine", "total"),
      { queueEventsMax: 1, onSignal: (s) => signals.push(s) },
      async (batch) => {
        seqs.push(batch.seq);
        await gate;
      },
      60_000,
    );
    const begun = sub.begin();
    for (const replica of MEMBERS) sub.onSubOk(replica, host.subIdAt(replica), { sub: host.subIdAt(replica), replica, next: 1 });
    await begun;
    expect(sub.stats().servingReplicas).toEqual([0, 1]);
    const h: Harness = { host, sub, got: [], signals };
    for (const seq of [1, 2, 3]) for (const replica of [0, 1]) send(h, replica, seq);
    await settle();
    expect(signals.some((s) => s.t === "slow")).toBe(true);
    const before = host.subscribes.length;
    open();
    await settle();
    await settle();
    expect(subscribesSince(h, before).map(([replica]) => replica)).toEqual([0, 1]);
    expect(sub.stats().servingReplicas).toEqual([0, 1]);
    expect(seqs.length).toBeGreaterThan(0);
    await sub.close();
  });

  test("a late tick (the client's loop busy) does not judge the stall; the next tick on time does", async () => {
    const h = await started();
    h.sub.tick(h.host.nowMs);
    send(h, 0, 1);
    await settle();
    // The loop was busy for a second: the copy may be waiting unread for the other one.
    h.host.nowMs += 1_000;
    h.sub.tick(h.host.nowMs);
    expect(h.sub.stats().widenings).toBe(0);
    h.host.nowMs += 250;
    h.sub.tick(h.host.nowMs);
    expect(h.signals).toContainEqual({ t: "widened", reason: `a copy waited ${NARROW_STALL_MS} ms or more for a vote`, suspects: [1] });
    await h.sub.close();
  });

  test("while wide, a replica that drops its session or refuses is left out of the next narrowing", async () => {
    const h = await started();
    h.sub.onReplicaDown(0);
    expect(h.sub.stats().servingReplicas).toBeNull();
    // Wide now: replica 1 refuses; it is noted, and the next narrowing leaves out 0 and 1.
    const subId = h.host.subIdAt(1);
    h.sub.onSubEnd(1, subId, { sub: subId, replica: 1, code: "UNAUTHORIZED", reason: "not allowed" });
    for (const replica of [0, 2, 3]) {
      if (h.host.ready.has(replica)) h.sub.onSubOk(replica, h.host.subIdAt(replica), { sub: h.host.subIdAt(replica), replica });
    }
    h.host.nowMs += NARROW_AGAIN_AFTER_MS;
    h.sub.tick(h.host.nowMs);
    expect(h.sub.stats().servingReplicas).toEqual([2, 3]);
    await h.sub.close();
  });
});
