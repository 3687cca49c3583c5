// A crash/none publish goes to f+1 replicas, the same ones for a tag while their sessions
// are up, and to the others only when one of them refuses, drops, or is slower than the
// hedge delay (src/client/request-tracker.ts, quorumTargets and widen). These tests drive
// the tracker on a clock of their own and record what each connection is handed.
import { describe, expect, test } from "bun:test";
import { buildRequest, type BuiltRequest } from "../../src/client/request.ts";
import {
  type CrashNoneTargets,
  HEDGE_ACK_MULTIPLE,
  HEDGE_MS_INITIAL,
  HEDGE_MS_MIN,
  type RequestOutcome,
  SUSPECT_MS,
} from "../../src/client/request-tracker.ts";
import type { ReplyKind } from "../../src/core/voting/quorum.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import type { Reply } from "../../wire/schemas.ts";
import { decodeRequestBody } from "../../wire/schemas.ts";
import { trackerFixture } from "./tracker-fixture.ts";

const RESEND_MS = 2_000;

function fixture(options: { ready?: number[]; crashNoneTargets?: CrashNoneTargets } = {}) {
  const clock = { now: 0 };
  const handed: { replica: number; seq: number }[] = [];
  const wakes: number[] = [];
  const ready = { ids: options.ready ?? [0, 1, 2, 3] };
  const { tracker, full } = trackerFixture({
    timing: { requestMs: 60_000, resendMs: RESEND_MS },
    now: () => clock.now,
    wakeAt: (atMs) => wakes.push(atMs),
    ready: () => ready.ids,
    ...(options.crashNoneTargets === undefined ? {} : { crashNoneTargets: options.crashNoneTargets }),
    onSent: (replica, frame) => {
      const body = decodeRequestBody(frame.body);
      if (!body.ok) throw new Error("not a request body");
      handed.push({ replica, seq: body.request.seq });
    },
  });
  /** Replicas handed request `seq`, in order. */
  const to = (seq: number) => handed.filter((h) => h.seq === seq).map((h) => h.replica);
  return { clock, handed, wakes, tracker, ready, to, full };
}

const key = SigningKey.generate();
function request(seq: number, tag = "net.links"): BuiltRequest {
  return buildRequest(key, { seq, ts: 1, op: { t: "pub", tag, events: [new Uint8Array([seq])] } }, 1 << 20);
}

function stored(made: BuiltRequest, replica: number): Reply {
  const op = made.request.op as { tag: string };
  return { seq: made.request.seq, replica, d: made.digest, ok: true, res: { t: "pub", tag: op.tag, span: 1 }, at: 1 } as Reply;
}

function refused(made: BuiltRequest, replica: number, code: "OVERLOADED" | "UNAUTHORIZED" | "RATE_LIMITED"): Reply {
  return { seq: made.request.seq, replica, d: made.digest, ok: false, code, reason: "test" } as Reply;
}

function track(tracker: ReturnType<typeof fixture>["tracker"], made: BuiltRequest, kind: ReplyKind = "crash/none") {
  const outcome: { value: RequestOutcome | null } = { value: null };
  void tracker.track(made, kind, `publish ${made.request.seq}`).then((o) => {
    outcome.value = o;
  });
  return outcome;
}

describe("crash/none publishes go to f+1 replicas", () => {
  test("the same two replicas get a tag's publishes, and two stores acknowledge each", async () => {
    const { tracker, to } = fixture();
    const first = request(1);
    const outcome = track(tracker, first);
    const targets = to(1);
    expect(targets.length).toBe(2);
    for (let seq = 2; seq <= 5; seq++) {
      track(tracker, request(seq));
      expect(to(seq)).toEqual(targets);
    }
    tracker.onReply(targets[0] as number, stored(first, targets[0] as number));
    tracker.onReply(targets[1] as number, stored(first, targets[1] as number));
    await Promise.resolve();
    expect(outcome.value?.ok).toBe(true);
    expect(to(1)).toEqual(targets);
    expect(tracker.widened).toBe(0);
  });

  test("tags spread over the group: every replica is one of the two for some tag", () => {
    const { tracker, to } = fixture();
    const chosen = new Set<number>();
    for (let i = 0; i < 64; i++) {
      track(tracker, request(1, `probe.t${i}`));
      for (const replica of to(1).slice(-2)) chosen.add(replica);
    }
    expect([...chosen].sort()).toEqual([0, 1, 2, 3]);
  });

  test("a replica whose session is down is passed over, and the next in the tag's order is taken", () => {
    const { tracker, to, ready } = fixture();
    track(tracker, request(1));
    const [a, b] = to(1) as [number, number];
    ready.ids = [0, 1, 2, 3].filter((id) => id !== a);
    track(tracker, request(2));
    expect(to(2)).toContain(b);
    expect(to(2)).not.toContain(a);
    expect(to(2).length).toBe(2);
  });

  test("with no more than f+1 sessions up, a publish goes to every replica", () => {
    const { tracker, to } = fixture({ ready: [1, 3] });
    track(tracker, request(1));
    expect(to(1)).toEqual([0, 1, 2, 3]);
  });

  test("a refusal from one of the two sends it to the others, and their stores acknowledge it", async () => {
    const { tracker, to } = fixture();
    const made = request(1);
    const outcome = track(tracker, made);
    const [a, b] = to(1) as [number, number];
    tracker.onReply(a, refused(made, a, "OVERLOADED"));
    expect(tracker.widened).toBe(1);
    const others = [0, 1, 2, 3].filter((id) => id !== a && id !== b);
    expect(to(1).sort()).toEqual([0, 1, 2, 3]);
    tracker.onReply(b, stored(made, b));
    tracker.onReply(others[0] as number, stored(made, others[0] as number));
    await Promise.resolve();
    expect(outcome.value?.ok).toBe(true);
  });

  test("RATE_LIMITED from both is the key's budget: no other replica is asked, not at the hedge delay nor at the resend, until a session drops", () => {
    const { tracker, to, clock } = fixture();
    const made = request(1);
    track(tracker, made);
    const [a, b] = to(1) as [number, number];
    tracker.onReply(a, refused(made, a, "RATE_LIMITED"));
    tracker.onReply(b, refused(made, b, "RATE_LIMITED"));
    clock.now = HEDGE_MS_INITIAL;
    expect(tracker.retryDue(clock.now)).toBe(Number.POSITIVE_INFINITY);
    clock.now = RESEND_MS;
    tracker.tick(clock.now);
    expect(to(1)).toEqual([a, b, a, b]);
    expect(tracker.widened).toBe(0);
    tracker.onDown(a);
    expect(tracker.widened).toBe(1);
    expect(to(1).slice(4).sort()).toEqual([0, 1, 2, 3].filter((id) => id !== a && id !== b));
  });

  test("a target that refused RATE_LIMITED and then has no room for the resend counts as silent: the others get it at the next hedge", () => {
    const { tracker, to, clock, full } = fixture();
    const made = request(1);
    track(tracker, made);
    const [a, b] = to(1) as [number, number];
    tracker.onReply(a, stored(made, a));
    tracker.onReply(b, refused(made, b, "RATE_LIMITED"));
    clock.now = HEDGE_MS_INITIAL;
    tracker.retryDue(clock.now);
    expect(tracker.widened).toBe(0);
    // b stops reading: its connection takes nothing more.
    full.add(b);
    clock.now = RESEND_MS;
    tracker.tick(clock.now);
    expect(tracker.widened).toBe(0);
    clock.now = RESEND_MS + tracker.hedgeDelayMs();
    tracker.retryDue(clock.now);
    expect(tracker.widened).toBe(1);
    expect(to(1).slice(2).sort()).toEqual([0, 1, 2, 3].filter((id) => id !== a && id !== b));
  });

  test("a target whose connection has no room for it: the others get it at once", () => {
    const probe = fixture();
    track(probe.tracker, request(1));
    const [a] = probe.to(1) as [number];
    const { tracker, to, full } = fixture();
    full.add(a);
    track(tracker, request(1));
    expect(tracker.widened).toBe(1);
    expect(to(1).sort()).toEqual([0, 1, 2, 3].filter((id) => id !== a));
  });

  test("one of the two leaving the group sends it to the others", () => {
    const { tracker, to } = fixture();
    track(tracker, request(1));
    const [a] = to(1) as [number];
    tracker.onLeft(a);
    expect(tracker.widened).toBe(1);
    expect(to(1).length).toBe(4);
  });

  test("one of the two dropping its session sends it to the others", () => {
    const { tracker, to } = fixture();
    track(tracker, request(1));
    const [a] = to(1) as [number];
    tracker.onDown(a);
    expect(tracker.widened).toBe(1);
    expect(
      to(1)
        .filter((id) => id !== a)
        .sort(),
    ).toEqual([0, 1, 2, 3].filter((id) => id !== a));
  });

  test("unacknowledged at the hedge delay, it goes to the others, and not before", () => {
    const { tracker, to, wakes, clock } = fixture();
    const made = request(1);
    track(tracker, made);
    const [a] = to(1) as [number];
    tracker.onReply(a, stored(made, a));
    expect(wakes).toEqual([HEDGE_MS_INITIAL]);
    expect(tracker.retryDue(HEDGE_MS_INITIAL - 1)).toBe(HEDGE_MS_INITIAL);
    expect(to(1).length).toBe(2);
    clock.now = HEDGE_MS_INITIAL;
    expect(tracker.retryDue(clock.now)).toBe(Number.POSITIVE_INFINITY);
    // The one that stored it is not asked again; the two that had not been asked are.
    expect(to(1).length).toBe(4);
    expect(tracker.widened).toBe(1);
  });

  test("the hedge delay follows the time replicas take to answer, between its minimum and the resend timeout", async () => {
    const { tracker, to, clock } = fixture();
    expect(tracker.hedgeDelayMs()).toBe(HEDGE_MS_INITIAL);
    const quick = request(1000);
    track(tracker, quick);
    for (const replica of to(1000)) tracker.onReply(replica, stored(quick, replica));
    // Answered at once: the floor.
    expect(tracker.hedgeDelayMs()).toBe(HEDGE_MS_MIN);
    const answerAfter = async (ms: number, seqs: number[]) => {
      for (const seq of seqs) {
        const made = request(seq);
        track(tracker, made);
        clock.now += ms;
        for (const replica of to(seq)) tracker.onReply(replica, stored(made, replica));
      }
      await Promise.resolve();
    };
    await answerAfter(
      100,
      Array.from({ length: 200 }, (_, i) => i + 1),
    );
    expect(tracker.hedgeDelayMs()).toBe(HEDGE_ACK_MULTIPLE * 100);
    // Slower than the resend timeout allows: capped there.
    await answerAfter(
      RESEND_MS,
      Array.from({ length: 200 }, (_, i) => i + 201),
    );
    expect(tracker.hedgeDelayMs()).toBe(RESEND_MS);
  });

  test("a replica that is up but answers nothing does not raise the hedge delay, and is passed over for a while", async () => {
    const { tracker, to, clock } = fixture();
    const first = request(1);
    track(tracker, first);
    const [a, silent] = to(1) as [number, number];
    tracker.onReply(a, stored(first, a));
    expect(tracker.hedgeDelayMs()).toBe(HEDGE_MS_MIN);
    // Its hedge was armed before any answer was known: at the initial delay.
    clock.now = HEDGE_MS_INITIAL;
    tracker.retryDue(clock.now);
    expect(tracker.widened).toBe(1);
    // The next publishes of the tag go to two replicas that answer, without waiting for a hedge.
    for (let seq = 2; seq <= 50; seq++) {
      const made = request(seq);
      track(tracker, made);
      expect(to(seq)).not.toContain(silent);
      clock.now += 2;
      for (const replica of to(seq)) tracker.onReply(replica, stored(made, replica));
    }
    expect(tracker.widened).toBe(1);
    expect(tracker.hedgeDelayMs()).toBe(HEDGE_MS_MIN);
    // Once the while is over, it is tried again.
    clock.now += SUSPECT_MS;
    track(tracker, request(51));
    expect(to(51)).toContain(silent);
  });

  test("one of the two refusing RATE_LIMITED and the other silent: it goes to the others at the hedge delay", () => {
    const { tracker, to, clock } = fixture();
    const made = request(1);
    track(tracker, made);
    const [a, b] = to(1) as [number, number];
    tracker.onReply(a, refused(made, a, "RATE_LIMITED"));
    expect(tracker.widened).toBe(0);
    clock.now = HEDGE_MS_INITIAL;
    tracker.retryDue(clock.now);
    expect(tracker.widened).toBe(1);
    // The two never asked get it; the one that refused waits for its resend.
    expect(to(1).slice(2).sort()).toEqual([0, 1, 2, 3].filter((id) => id !== a && id !== b));
  });

  test("the resend sends it once to each replica that has not answered", () => {
    const { tracker, to, clock } = fixture();
    const made = request(1);
    track(tracker, made);
    const [a] = to(1) as [number];
    tracker.onReply(a, stored(made, a));
    clock.now = RESEND_MS;
    tracker.tick(clock.now);
    const sent = to(1);
    // Two at first; at the resend, the one that did not answer again and the two never asked, once each.
    expect(sent.length).toBe(5);
    expect(new Set(sent.slice(2)).size).toBe(3);
    expect(sent.slice(2)).not.toContain(a);
  });

  test('"all", and every other kind of request, go to every replica at once', () => {
    const all = fixture({ crashNoneTargets: "all" });
    track(all.tracker, request(1));
    expect(all.to(1)).toEqual([0, 1, 2, 3]);
    const other = fixture();
    for (const [seq, kind] of [
      [1, "crash/total"],
      [2, "byzantine/none"],
      [3, "byzantine/total"],
    ] as const) {
      track(other.tracker, request(seq), kind);
      expect(other.to(seq)).toEqual([0, 1, 2, 3]);
    }
    expect(other.wakes).toEqual([]);
  });
});
