// Read-your-writes (wire/PROTOCOL.md 6.3): a replica holds a refusal judged on its own
// state until it has executed the decided seq the client names (`after`), and a client
// never counts such a refusal from a replica that is behind (`at` below the freshest
// decided seq it knows) as a vote against what the ordered history says. Each client-side
// case below failed before: two lagging replicas saying "no channel" first were a verdict.
import { describe, expect, test } from "bun:test";
import { decodeCanonical } from "../../wire/canonical.ts";
import type { QueryReply, SubEnd } from "../../wire/schemas.ts";
import type { ReplicaConnection } from "../../src/client/connection.ts";
import { ExecutedFloor } from "../../src/client/executed-floor.ts";
import { channelInfoRule, type ChannelInfo } from "../../src/client/queries.ts";
import { QUERY_REASK_BACKOFF, QueryTracker } from "../../src/client/query-tracker.ts";
import type { TrackingContext } from "../../src/client/replica-group.ts";
import { RESUBSCRIBE_AFTER_REFUSAL_MS } from "../../src/client/replica-subs.ts";
import { ClientSubscription, type SubscriptionSignal } from "../../src/client/subscription.ts";
import type { RequestRejectedError } from "../../src/client/errors.ts";
import { buildRequest } from "../../src/client/request.ts";
import type { RequestOutcome } from "../../src/client/request-tracker.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import type { Reply } from "../../wire/schemas.ts";
import { ExecutionGate } from "../../src/replica/execution-gate.ts";
import { channel, ScriptedHost } from "./subscription-host.ts";
import { trackerFixture } from "./tracker-fixture.ts";

const INFO: ChannelInfo = { tag: "sec.alerts", fault: "byzantine", order: "total", priority: "critical", public: true };

function described(replica: number, at: number): QueryReply {
  return { id: 1, replica, ok: true, res: { ...INFO, next: 1, oldest: 1 }, at };
}

function unknown(replica: number, at: number | undefined): QueryReply {
  const reply = { id: 1, replica, ok: false as const, code: "UNKNOWN_CHANNEL" as const, reason: "no channel sec.alerts" };
  return at === undefined ? reply : { ...reply, at };
}

describe("ExecutionGate (replica side)", () => {
  const limits = { waitMsMax: 1_000, perSessionMax: 2, totalMax: 3 };

  test("nothing to wait for: the caller answers now", () => {
    const gate = new ExecutionGate(limits);
    expect(gate.hold(1, undefined, 10, 0, () => undefined)).toBe(false);
    expect(gate.hold(1, 10, 10, 0, () => undefined)).toBe(false);
    expect(gate.hold(1, 9, 10, 0, () => undefined)).toBe(false);
    expect(gate.size).toBe(0);
  });

  test("held answers are judged again in order of `after` once the replica executed it", () => {
    const gate = new ExecutionGate({ ...limits, perSessionMax: 10, totalMax: 10 });
    const ran: string[] = [];
    expect(gate.hold(1, 14, 10, 0, (expired) => ran.push(`a14 ${expired}`))).toBe(true);
    expect(gate.hold(2, 12, 10, 0, (expired) => ran.push(`b12 ${expired}`))).toBe(true);
    expect(gate.hold(1, 12, 10, 0, (expired) => ran.push(`c12 ${expired}`))).toBe(true);
    gate.advance(11);
    expect(ran).toEqual([]);
    gate.advance(13);
    expect(ran).toEqual(["b12 false", "c12 false"]);
    gate.advance(20);
    expect(ran).toEqual(["b12 false", "c12 false", "a14 false"]);
    expect(gate.size).toBe(0);
  });

  test("at its deadline an answer goes out as things are (expired), never held again by the gate itself", () => {
    const gate = new ExecutionGate(limits);
    const ran: boolean[] = [];
    gate.hold(1, 50, 10, 0, (expired) => ran.push(expired));
    gate.expire(999);
    expect(ran).toEqual([]);
    gate.expire(1_000);
    expect(ran).toEqual([true]);
    expect(gate.size).toBe(0);
  });

  test("bounded per session and in all; a closed session's answers are dropped", () => {
    const gate = new ExecutionGate(limits);
    const ran: number[] = [];
    expect(gate.hold(1, 20, 10, 0, () => ran.push(1))).toBe(true);
    expect(gate.hold(1, 20, 10, 0, () => ran.push(2))).toBe(true);
    expect(gate.hold(1, 20, 10, 0, () => ran.push(3))).toBe(false); // per session
    expect(gate.hold(2, 20, 10, 0, () => ran.push(4))).toBe(true);
    expect(gate.hold(3, 20, 10, 0, () => ran.push(5))).toBe(false); // in all
    gate.dropSession(1);
    expect(gate.size).toBe(1);
    expect(gate.hold(3, 20, 10, 0, () => ran.push(6))).toBe(true);
    gate.advance(20);
    expect(ran.sort()).toEqual([4, 6]);
  });
});

describe("channel-info: a refusal from a replica behind a decision is not a verdict", () => {
  const ready = () => [0, 1, 2, 3];

  test("two lagging replicas answering 'no channel' first, then two that executed the create: the channel", () => {
    const rule = channelInfoRule(4, 1, "channel-info sec.alerts", 0, ready);
    expect(rule.add(2, unknown(2, 9))).toBeNull();
    expect(rule.add(3, unknown(3, 9))).toBeNull();
    expect(rule.add(0, described(0, 10))).toBeNull();
    // The stale refusals are asked again, waiting for seq 10.
    expect(rule.stale?.()).toEqual({ replicas: [2, 3], after: 10 });
    expect(rule.add(1, described(1, 11))).toEqual({ ok: true, value: INFO });
  });

  test("f+1 refusals are not enough before 2f+1 replicas answered", () => {
    const rule = channelInfoRule(4, 1, "channel-info sec.alerts", 0, ready);
    expect(rule.add(2, unknown(2, 9))).toBeNull();
    expect(rule.add(3, unknown(3, 9))).toBeNull();
    const outcome = rule.add(1, unknown(1, 9));
    expect(outcome?.ok).toBe(false);
    expect((outcome as unknown as { error: RequestRejectedError }).error.code).toBe("UNKNOWN_CHANNEL");
  });

  test("with only f+1 replicas reachable, their fresh refusals settle", () => {
    const rule = channelInfoRule(4, 1, "channel-info sec.alerts", 0, () => [2, 3]);
    expect(rule.add(2, unknown(2, 9))).toBeNull();
    const outcome = rule.add(3, unknown(3, 9));
    expect(outcome?.ok).toBe(false);
  });

  test("in a busy cluster, refusals judged at rising seqs still settle: refusals do not raise the bar", () => {
    const rule = channelInfoRule(4, 1, "channel-info sec.alerts", 5, ready);
    expect(rule.add(0, unknown(0, 9))).toBeNull();
    expect(rule.add(1, unknown(1, 10))).toBeNull();
    const outcome = rule.add(2, unknown(2, 11));
    expect((outcome as unknown as { error: RequestRejectedError }).error.code).toBe("UNKNOWN_CHANNEL");
  });

  test("refusals older than the client's own floor (its admin command's seq) are asked again", () => {
    const rule = channelInfoRule(4, 1, "channel-info sec.alerts", 12, ready);
    for (const replica of [0, 1, 2]) expect(rule.add(replica, unknown(replica, 11))).toBeNull();
    expect(rule.stale?.()).toEqual({ replicas: [0, 1, 2], after: 12 });
    expect(rule.add(0, described(0, 12))).toBeNull();
    expect(rule.add(1, described(1, 12))).toEqual({ ok: true, value: INFO });
  });

  test("one replica's huge `at` asks the refusals again once; 2f+1 next answers settle", () => {
    const huge = Number.MAX_SAFE_INTEGER;
    const rule = channelInfoRule(4, 1, "channel-info sec.alerts", 0, ready);
    // Replica 3 describes a channel nobody created, claiming it executed seq 2^53-1.
    expect(rule.add(3, described(3, huge))).toBeNull();
    for (const replica of [0, 1, 2]) expect(rule.add(replica, unknown(replica, 60))).toBeNull();
    expect(rule.stale?.()).toEqual({ replicas: [0, 1, 2], after: huge });
    // Nothing more to ask while they wait.
    expect(rule.stale?.()).toEqual({ replicas: [], after: 0 });
    // Past their hold bound they refuse again at the seq they reached: unconfirmed refusals,
    // each one of the 2f+1 that settle it whatever one replica claims.
    expect(rule.add(0, unknown(0, 60))).toBeNull();
    expect(rule.add(1, unknown(1, 61))).toBeNull();
    expect(rule.stale?.()).toEqual({ replicas: [], after: 0 });
    const outcome = rule.add(2, unknown(2, 61));
    expect((outcome as unknown as { error: RequestRejectedError }).error.code).toBe("UNKNOWN_CHANNEL");
  });

  test("a channel created moments ago: two refusals below the one description, after their wait, are not a verdict", () => {
    // n=4, f=1, no floor: replica 0 executed the create at seq 10 and describes the channel.
    const rule = channelInfoRule(4, 1, "channel-info sec.alerts", 0, ready);
    expect(rule.add(0, described(0, 10))).toBeNull();
    expect(rule.add(1, unknown(1, 9))).toBeNull();
    expect(rule.add(2, unknown(2, 9))).toBeNull();
    expect(rule.stale?.()).toEqual({ replicas: [1, 2], after: 10 });
    // Their 5 s hold is over (or their wait queue was full) before they executed seq 10.
    expect(rule.add(1, unknown(1, 9))).toBeNull();
    expect(rule.add(2, unknown(2, 9))).toBeNull();
    const atDeadline = rule.atDeadline(() => "replica 3: no answer");
    expect((atDeadline as { error: Error }).error.constructor.name).toBe("NoQuorumError");
    // Once they have executed it, they describe it.
    expect(rule.add(1, described(1, 10))).toEqual({ ok: true, value: INFO });
  });

  test("refusals still asked to wait do not count at the deadline", () => {
    const rule = channelInfoRule(4, 1, "channel-info sec.alerts", 0, ready);
    rule.add(0, described(0, 10));
    rule.add(1, unknown(1, 9));
    rule.add(2, unknown(2, 9));
    rule.add(3, unknown(3, 9));
    expect(rule.stale?.()).toEqual({ replicas: [1, 2, 3], after: 10 });
    const atDeadline = rule.atDeadline(() => "replicas 1, 2, 3: asked again");
    expect((atDeadline as { error: Error }).error.constructor.name).toBe("NoQuorumError");
  });

  test("a refusal behind the (f+1)-th highest `at` of the descriptions is still asked again, however often", () => {
    const rule = channelInfoRule(4, 1, "channel-info sec.alerts", 0, ready);
    expect(rule.add(0, described(0, 10))).toBeNull();
    const otherInfo: QueryReply = { id: 1, replica: 1, ok: true, res: { ...INFO, tag: "other", next: 1, oldest: 1 }, at: 12 };
    expect(rule.add(1, otherInfo)).toBeNull();
    expect(rule.add(2, unknown(2, 9))).toBeNull();
    expect(rule.stale?.()).toEqual({ replicas: [2], after: 12 });
    expect(rule.add(2, unknown(2, 9))).toBeNull();
    // Replicas 0 and 1 both executed seq 10: one of them is correct; 9 is behind it.
    expect(rule.stale?.()).toEqual({ replicas: [2], after: 10 });
  });

  test("at the deadline, fresh refusals from f+1 settle and stale ones never do", () => {
    const stale = channelInfoRule(4, 1, "channel-info sec.alerts", 12, ready);
    stale.add(0, unknown(0, 11));
    stale.add(1, unknown(1, 11));
    const atDeadline = stale.atDeadline(() => "replica 2: no answer");
    expect(atDeadline.ok).toBe(false);
    expect((atDeadline as { error: Error }).error.constructor.name).toBe("NoQuorumError");
    const fresh = channelInfoRule(4, 1, "channel-info sec.alerts", 12, ready);
    fresh.add(0, unknown(0, 12));
    fresh.add(1, unknown(1, undefined)); // a replica that does not say counts as fresh
    expect((fresh.atDeadline(() => "") as unknown as { error: RequestRejectedError }).error.code).toBe("UNKNOWN_CHANNEL");
  });
});

describe("subscribe: a refusal from a replica behind a decision does not end the subscription", () => {
  function start(floor = 0): { host: ScriptedHost; sub: ClientSubscription; ended: Error[] } {
    const host = new ScriptedHost();
    host.floor = floor;
    const ended: Error[] = [];
    const sub = new ClientSubscription(host, channel("sec.alerts", "byzantine", "total"), {}, () => undefined, 60_000);
    sub.begin().catch((error: Error) => ended.push(error));
    sub.done.catch((error: Error) => ended.push(error));
    return { host, sub, ended };
  }

  function refuse(host: ScriptedHost, sub: ClientSubscription, replica: number, at: number): void {
    const subId = host.subIdAt(replica);
    const body: SubEnd = { sub: subId, replica, code: "UNKNOWN_CHANNEL", reason: "no channel sec.alerts", at };
    sub.onSubEnd(replica, subId, body);
  }

  test("two stale refusals first, then SUB_OK from replicas that executed the create: both asked again with after", async () => {
    const { host, sub, ended } = start();
    expect(host.subscribes.every((s) => s.after === 0)).toBe(true);
    refuse(host, sub, 2, 9);
    refuse(host, sub, 3, 9);
    const first = host.subIdAt(0);
    sub.onSubOk(0, first, { sub: first, replica: 0, next: 1, at: 10 });
    const second = host.subIdAt(1);
    sub.onSubOk(1, second, { sub: second, replica: 1, next: 1, at: 10 });
    await Bun.sleep(0);
    expect(ended).toEqual([]);
    const again = host.subscribes.filter((s) => s.after === 10).map((s) => s.replica);
    expect(again.sort()).toEqual([2, 3]);
    await sub.close();
  });

  test("a refusal below the client's floor is asked again at once, and is not reported as the channel's end", async () => {
    const { host, sub, ended } = start();
    // The client learns seq 10 after its first SUBSCRIBEs went out (they carry no `after`).
    host.floor = 10;
    refuse(host, sub, 2, 9);
    refuse(host, sub, 3, 9);
    await Bun.sleep(0);
    expect(ended).toEqual([]);
    expect(host.subscribes.filter((s) => s.replica === 2).map((s) => s.after)).toEqual([0, 10]);
    await sub.close();
  });

  test("a replica that refuses below a seq it was already asked to wait for (a new member fetching the state) is asked again only after a pause", async () => {
    const signals: SubscriptionSignal[] = [];
    const host = new ScriptedHost();
    host.floor = 10_000;
    const sub = new ClientSubscription(
      host,
      channel("net.links", "byzantine", "total"),
      { from: 1, onSignal: (s) => signals.push(s) },
      () => undefined,
      60_000,
    );
    const started = sub.begin();
    for (const replica of [0, 1, 2, 3]) {
      const subId = host.subIdAt(replica);
      sub.onSubOk(replica, subId, { sub: subId, replica, next: 1, at: 10_000 });
    }
    await started;
    host.memberIds = [0, 1, 2, 3, 4];
    sub.onGroupChange([]);
    host.ready.add(4);
    sub.onReplicaReady(4);
    expect(host.subscribes.filter((s) => s.replica === 4).map((s) => s.after)).toEqual([10_000]);
    // The joiner answers every SUBSCRIBE at once (past its hold bound) with its own old executed seq.
    const refuseAtOnce = (): void => {
      const subId = host.subIdAt(4);
      sub.onSubEnd(4, subId, { sub: subId, replica: 4, code: "UNKNOWN_CHANNEL", reason: "no channel net.links", at: 3 });
    };
    for (let i = 0; i < 100; i++) refuseAtOnce();
    expect(host.subscribesTo(4)).toBe(1);
    expect(sub.stats().staleRefusals).toBe(1);
    expect(signals.filter((s) => s.t === "replica-ended" && s.replica === 4).length).toBe(1);
    host.nowMs += RESUBSCRIBE_AFTER_REFUSAL_MS - 1;
    sub.tick(host.nowMs);
    expect(host.subscribesTo(4)).toBe(1);
    host.nowMs += 1;
    sub.tick(host.nowMs);
    expect(host.subscribes.filter((s) => s.replica === 4).map((s) => s.after)).toEqual([10_000, 10_000]);
    refuseAtOnce();
    expect(host.subscribesTo(4)).toBe(2);
    expect(sub.stats().staleRefusals).toBe(2);
    // While it stays behind, its refusals each second are not reported again.
    const behind = (): SubscriptionSignal[] => signals.filter((s) => s.t === "replica-ended" && s.replica === 4);
    for (let i = 0; i < 5; i++) {
      host.nowMs += RESUBSCRIBE_AFTER_REFUSAL_MS;
      sub.tick(host.nowMs);
      refuseAtOnce();
    }
    expect(host.subscribesTo(4)).toBe(7);
    expect(behind()).toHaveLength(1);
    expect(behind()[0]).toMatchObject({ code: "UNKNOWN_CHANNEL" });
    expect((behind()[0] as { reason: string }).reason).toContain("it is behind (it has executed seq 3, short of seq 10000");
    // Once it serves, a later stretch behind is reported again.
    host.nowMs += RESUBSCRIBE_AFTER_REFUSAL_MS;
    sub.tick(host.nowMs);
    const subId = host.subIdAt(4);
    sub.onSubOk(4, subId, { sub: subId, replica: 4, next: 1, at: 10_000 });
    host.floor = 20_000;
    sub.onSubEnd(4, subId, { sub: subId, replica: 4, code: "SLOW", reason: "fell behind", at: 10_000 });
    host.nowMs += RESUBSCRIBE_AFTER_REFUSAL_MS;
    sub.tick(host.nowMs);
    refuseAtOnce();
    expect(behind()).toHaveLength(2);
    await sub.close();
  });

  test("a replica refusing below the seq it was asked to wait for is asked again only after a pause, even when the floor rose meanwhile", async () => {
    const host = new ScriptedHost();
    host.floor = 10_000;
    // Every replica serves (no narrowing), so that replica 3 stays subscribed.
    const sub = new ClientSubscription(
      host,
      channel("net.links", "byzantine", "total"),
      { from: 1, sources: "all" },
      () => undefined,
      60_000,
    );
    const started = sub.begin();
    for (const replica of [0, 1, 2]) {
      const subId = host.subIdAt(replica);
      sub.onSubOk(replica, subId, { sub: subId, replica, next: 1, at: 10_000 });
    }
    await started;
    expect(host.subscribes.filter((s) => s.replica === 3).map((s) => s.after)).toEqual([10_000]);
    // Replica 3's wait queue is full: it refuses at once with its own executed seq, while
    // this client publishes and its floor rises before each refusal comes back.
    for (let i = 0; i < 100; i++) {
      host.floor++;
      const subId = host.subIdAt(3);
      sub.onSubEnd(3, subId, { sub: subId, replica: 3, code: "UNKNOWN_CHANNEL", reason: "no channel net.links", at: 3 });
    }
    expect(host.subscribesTo(3)).toBe(1);
    expect(sub.stats().staleRefusals).toBe(1);
    host.nowMs += RESUBSCRIBE_AFTER_REFUSAL_MS;
    sub.tick(host.nowMs);
    expect(host.subscribes.filter((s) => s.replica === 3).map((s) => s.after)).toEqual([10_000, 10_100]);
    // A refusal at or above what it was asked for, but below the floor now, is asked again at once.
    const subId = host.subIdAt(3);
    host.floor = 10_200;
    sub.onSubEnd(3, subId, { sub: subId, replica: 3, code: "UNKNOWN_CHANNEL", reason: "no channel net.links", at: 10_150 });
    expect(host.subscribes.filter((s) => s.replica === 3).map((s) => s.after)).toEqual([10_000, 10_100, 10_200]);
    await sub.close();
  });

  test("one replica's SUB_OK at 2^53-1 cannot keep a refused subscription from ending: each replica waits for it once", async () => {
    const { host, sub, ended } = start();
    const F = 3;
    const answered = new Set<number>();
    const ok = (replica: number, at: number): void => {
      const subId = host.subIdAt(replica);
      answered.add(subId);
      sub.onSubOk(replica, subId, { sub: subId, replica, next: 1, at });
    };
    ok(F, Number.MAX_SAFE_INTEGER);
    // The channel does not exist: the correct replicas refuse every SUBSCRIBE at the seq they
    // executed, after holding it (up to 5 s) when it asks them to wait for more.
    for (let round = 0; round < 20 && ended.length === 0; round++) {
      for (const replica of [0, 1, 2]) {
        const subId = host.subIdAt(replica);
        if (answered.has(subId)) continue;
        answered.add(subId);
        sub.onSubEnd(replica, subId, { sub: subId, replica, code: "UNKNOWN_CHANNEL", reason: "no channel sec.alerts", at: 60 });
      }
      host.nowMs += 5_000;
      sub.tick(host.nowMs);
      await Bun.sleep(0);
    }
    expect(String(ended[0])).toContain("UNKNOWN_CHANNEL");
    for (const replica of [0, 1, 2]) {
      const waits = host.subscribes.filter((s) => s.replica === replica && s.after === Number.MAX_SAFE_INTEGER);
      expect(waits.length).toBeLessThanOrEqual(1);
    }
  });

  test("a channel created moments ago: two replicas refusing below the one SUB_OK's `at`, after their wait, do not end it", async () => {
    const { host, sub, ended } = start();
    const first = host.subIdAt(0);
    sub.onSubOk(0, first, { sub: first, replica: 0, next: 1, at: 10 });
    refuse(host, sub, 1, 9);
    refuse(host, sub, 2, 9);
    expect(host.subscribes.filter((s) => s.after === 10).map((s) => s.replica)).toEqual([1, 2]);
    // Their hold is over (or their wait queue full) before they executed seq 10: they refuse at 9 again.
    refuse(host, sub, 1, 9);
    refuse(host, sub, 2, 9);
    await Bun.sleep(0);
    expect(ended).toEqual([]);
    // They are asked again after a pause, and accept once they have executed the create.
    host.nowMs += RESUBSCRIBE_AFTER_REFUSAL_MS;
    sub.tick(host.nowMs);
    for (const replica of [1, 2]) {
      expect(host.subscribesTo(replica)).toBe(3);
      const subId = host.subIdAt(replica);
      sub.onSubOk(replica, subId, { sub: subId, replica, next: 1, at: 10 });
    }
    await Bun.sleep(0);
    expect(ended).toEqual([]);
    expect(sub.stats().staleRefusals).toBe(0);
    await sub.close();
  });

  test("fresh refusals from f+1 end it once 2f+1 replicas answered", async () => {
    const { host, sub, ended } = start(5);
    refuse(host, sub, 2, 9);
    refuse(host, sub, 3, 9);
    await Bun.sleep(0);
    expect(ended).toEqual([]);
    refuse(host, sub, 1, 9);
    await Bun.sleep(0);
    expect(ended.length).toBeGreaterThan(0);
    expect(String(ended[0])).toContain("UNKNOWN_CHANNEL");
  });
});

describe("publish: a refusal from a replica behind a decision is not a verdict, nor one replica's `at` a reason to wait for ever", () => {
  const key = SigningKey.generate();
  /** A publish to sec.alerts (byzantine/none: 2f+1 must store it) tracked over four fake replicas (n=4, f=1); each send recorded with its `after`. */
  function publish() {
    const sent: { replica: number; after: number }[] = [];
    const { tracker } = trackerFixture({
      timing: { requestMs: 60_000, resendMs: 60_000 },
      onSent: (replica, frame) => sent.push({ replica, after: frame.after ?? 0 }),
    });
    const built = buildRequest(key, { seq: 1, ts: 1, op: { t: "pub", tag: "sec.alerts", events: [new Uint8Array([1])] } }, 1 << 20);
    const outcomes: RequestOutcome[] = [];
    void tracker.track(built, "byzantine/none", "publish to sec.alerts").then((outcome) => outcomes.push(outcome));
    const answer = (replica: number, ok: boolean, at: number): void =>
      tracker.onReply(
        replica,
        (ok
          ? { seq: 1, replica, d: built.digest, ok: true, res: { t: "pub", tag: "sec.alerts", span: 1 }, at }
          : { seq: 1, replica, d: built.digest, ok: false, code: "UNKNOWN_CHANNEL", reason: "no channel sec.alerts", at }) as Reply,
      );
    const asked = (replica: number): number[] => sent.filter((s) => s.replica === replica).map((s) => s.after);
    return { tracker, outcomes, answer, asked };
  }

  test("one replica accepting at 2^53-1 cannot keep a refused publish from failing: each replica waits for it once", async () => {
    const { outcomes, answer, asked } = publish();
    answer(3, true, Number.MAX_SAFE_INTEGER);
    // The channel does not exist: the correct replicas refuse as of the seq they executed,
    // and are asked once to wait for the one replica's claim.
    for (const replica of [0, 1, 2]) answer(replica, false, 60);
    for (const replica of [0, 1, 2]) expect(asked(replica)).toEqual([0, Number.MAX_SAFE_INTEGER]);
    await Bun.sleep(0);
    expect(outcomes).toEqual([]);
    // Past their hold bound they refuse again, still as of seq 60: 2f+1 agree, and the publish fails at once, not at its deadline.
    for (const replica of [0, 1, 2]) answer(replica, false, 61);
    await Bun.sleep(0);
    expect(outcomes).toHaveLength(1);
    const outcome = outcomes[0] as RequestOutcome;
    expect(outcome.ok).toBe(false);
    if (!outcome.ok) expect((outcome.error as RequestRejectedError).code).toBe("UNKNOWN_CHANNEL");
    for (const replica of [0, 1, 2]) expect(asked(replica)).toEqual([0, Number.MAX_SAFE_INTEGER]);
  });

  test("a claim that keeps rising asks each replica to wait for it once, not each time", async () => {
    const { outcomes, answer, asked } = publish();
    answer(3, true, 100);
    for (const replica of [0, 1, 2]) answer(replica, false, 60);
    // The same replica claims ever later seqs (a faulty one: its second answer is no new vote).
    answer(3, true, 200);
    answer(3, true, 300);
    for (const replica of [0, 1, 2]) expect(asked(replica)).toEqual([0, 100]);
    // They reached seq 100 and still find no channel: as of a seq one replica's claim is above, after their wait.
    for (const replica of [0, 1, 2]) answer(replica, false, 150);
    await Bun.sleep(0);
    expect(outcomes).toHaveLength(1);
    expect(outcomes[0]?.ok).toBe(false);
  });

  test("a channel created moments ago: two replicas refusing below the one acceptance's `at`, after their wait, do not refuse it", async () => {
    const { outcomes, answer, asked } = publish();
    answer(0, true, 10);
    answer(1, false, 9);
    answer(2, false, 9);
    expect(asked(1)).toEqual([0, 10]);
    expect(asked(2)).toEqual([0, 10]);
    // Their hold is over before they executed seq 10: refusals of two, one of 2f+1 each, are no verdict.
    answer(1, false, 9);
    answer(2, false, 9);
    await Bun.sleep(0);
    expect(outcomes).toEqual([]);
    // The fourth replica had executed the create; then replica 1 has, too.
    answer(3, true, 10);
    answer(1, true, 10);
    await Bun.sleep(0);
    expect(outcomes).toHaveLength(1);
    expect(outcomes[0]?.ok).toBe(true);
  });

  test("a refusal behind the (f+1)-th highest accepted `at` never counts, however often", async () => {
    const { tracker, outcomes, answer, asked } = publish();
    answer(0, true, 10);
    answer(1, true, 12);
    for (let round = 0; round < 3; round++) {
      answer(2, false, 9);
      answer(3, false, 9);
    }
    expect(asked(2)).toEqual([0, 12]);
    await Bun.sleep(0);
    expect(outcomes).toEqual([]);
    tracker.failAll(new Error("done") as never);
  });

  test("fresh refusals from f+1 refuse it once 2f+1 replicas answered", async () => {
    const { outcomes, answer } = publish();
    answer(0, false, 9);
    answer(1, false, 9);
    await Bun.sleep(0);
    expect(outcomes).toEqual([]);
    answer(2, true, 8);
    await Bun.sleep(0);
    expect(outcomes).toHaveLength(1);
    expect(outcomes[0]?.ok).toBe(false);
  });
});

describe("query re-asks are spaced", () => {
  /** A QueryTracker over four fake connections that record the `after` of each QUERY they are handed. */
  function trackerOf(now: () => number, floor: number): { tracker: QueryTracker; sent: Map<number, (number | undefined)[]> } {
    const sent = new Map<number, (number | undefined)[]>();
    const connections = [0, 1, 2, 3].map(
      (id) =>
        ({
          id,
          isReady: true,
          sendEncoded(frame: Uint8Array): boolean {
            const body = decodeCanonical(frame.subarray(5)) as { after?: number };
            sent.set(id, [...(sent.get(id) ?? []), body.after]);
            return true;
          },
        }) as unknown as ReplicaConnection,
    );
    const group = {
      f: 1,
      connections,
      connection: (id: number) => connections[id],
      readyReplicas: () => [0, 1, 2, 3],
      describeReplicas: () => "",
      has: (id: number) => id >= 0 && id < 4,
    };
    const executed = new ExecutedFloor(group);
    executed.observe(floor);
    const ctx = { group, floor: executed, frameBytesMax: 1 << 20, now, log: () => {} } as unknown as TrackingContext;
    return { tracker: new QueryTracker(ctx, 60_000), sent };
  }

  test("a replica that answers stale at once is asked again at once the first time, then after a growing delay", () => {
    let now = 0;
    const { tracker, sent } = trackerOf(() => now, 10);
    const query = tracker.run(
      { id: 0, q: "channel-info", tag: "sec.alerts" },
      channelInfoRule(4, 1, "channel-info", 10, () => [0, 1, 2, 3]),
    );
    query.catch(() => undefined);
    // Replica 0 is behind the client's floor and its wait queue is full: it refuses at once, every time.
    const refuse = (): void => tracker.onQueryReply(0, { ...unknown(0, 5), id: 1 });
    refuse();
    expect(sent.get(0)).toEqual([undefined, 10]);
    refuse();
    expect(sent.get(0)).toHaveLength(2);
    const first = QUERY_REASK_BACKOFF.initialDelayMs;
    now += first - 1;
    tracker.tick(now);
    expect(sent.get(0)).toHaveLength(2);
    now += 1;
    tracker.tick(now);
    expect(sent.get(0)).toEqual([undefined, 10, 10]);
    refuse();
    now += first;
    tracker.tick(now);
    expect(sent.get(0)).toHaveLength(3);
    now += first;
    tracker.tick(now);
    expect(sent.get(0)).toHaveLength(4);
    tracker.failAll(new Error("done") as never);
  });

  test("an OVERLOADED answer (the replica's query budget) is no vote: asked again after a delay, and its later answer counts", async () => {
    let now = 0;
    const { tracker, sent } = trackerOf(() => now, 0);
    const query = tracker.run(
      { id: 0, q: "channel-info", tag: "sec.alerts" },
      channelInfoRule(4, 1, "channel-info", 0, () => [0, 1, 2, 3]),
    );
    const overloaded = (replica: number): QueryReply => ({
      id: 1,
      replica,
      ok: false,
      code: "OVERLOADED",
      reason: "more than 500 queries a second with this key",
      at: 0,
    });
    // Three replicas over budget, one answers: no verdict (f+1 = 2 matching answers needed), not a failure either.
    for (const replica of [0, 1, 2]) tracker.onQueryReply(replica, overloaded(replica));
    tracker.onQueryReply(3, described(3, 0));
    for (const replica of [0, 1, 2]) expect(sent.get(replica)).toHaveLength(1);
    now += QUERY_REASK_BACKOFF.initialDelayMs;
    tracker.tick(now);
    for (const replica of [0, 1, 2]) expect(sent.get(replica)).toHaveLength(2);
    tracker.onQueryReply(0, described(0, 0));
    expect(await query).toMatchObject({ tag: "sec.alerts", priority: "critical" });
  });
});
