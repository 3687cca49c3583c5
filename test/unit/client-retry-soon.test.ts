// A replica that shed a publish by priority shedding (OVERLOADED "priority shedding: ...")
// is asked again soon, not at the 2 s resend: a publisher's requests are ordered one
// after another, so one request waiting out the resend at the leader stalls all behind
// it (src/client/request-tracker.ts, retrySoon). Other "not now" refusals wait for the
// resend. These tests drive the tracker on a clock of their own and record what each
// connection is handed.
import { describe, expect, test } from "bun:test";
import { buildRequest, type BuiltRequest } from "../../src/client/request.ts";
import { RETRY_SOON_MS_MAX, RETRY_SOON_MS_MIN, retrySoonDelayMs } from "../../src/client/request-tracker.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import type { Reply } from "../../wire/schemas.ts";
import { decodeRequestBody } from "../../wire/schemas.ts";
import { PRIORITY_SHEDDING_REASON_PREFIX } from "../../wire/types.ts";
import { trackerFixture } from "./tracker-fixture.ts";

const RESEND_MS = 2_000;

function fixture() {
  const clock = { now: 0 };
  /** Each request handed to a connection: replica and request seq. */
  const handed: { replica: number; seq: number }[] = [];
  const wakes: number[] = [];
  const { tracker, full } = trackerFixture({
    timing: { requestMs: 60_000, resendMs: RESEND_MS },
    now: () => clock.now,
    wakeAt: (atMs) => wakes.push(atMs),
    onSent: (replica, frame) => {
      const body = decodeRequestBody(frame.body);
      if (!body.ok) throw new Error("not a request body");
      handed.push({ replica, seq: body.request.seq });
    },
  });
  return { clock, handed, wakes, tracker, full };
}

const key = SigningKey.generate();
function request(seq: number): BuiltRequest {
  return buildRequest(key, { seq, ts: 1, op: { t: "pub", tag: "bulk.metrics", events: [new Uint8Array([seq])] } }, 1 << 20);
}

const SHED_REASON = `${PRIORITY_SHEDDING_REASON_PREFIX} urgent traffic is waiting; 15% of low publishes are admitted; retry later`;

/** A "not now" refusal; OVERLOADED is priority shedding's unless `reason` says otherwise. */
function refusal(made: BuiltRequest, replica: number, code: "OVERLOADED" | "OUT_OF_ORDER" | "RATE_LIMITED", reason = SHED_REASON): Reply {
  return { seq: made.request.seq, replica, d: made.digest, ok: false, code, reason } as Reply;
}

function stored(made: BuiltRequest, replica: number): Reply {
  return {
    seq: made.request.seq,
    replica,
    d: made.digest,
    ok: true,
    res: { t: "pub", tag: "bulk.metrics", span: 1, first: made.request.seq },
    at: 1,
  } as Reply;
}

describe("a request refused 'not now' by a replica", () => {
  test("the delay doubles with each refusal, from the minimum up to its maximum or the resend timeout", () => {
    expect(retrySoonDelayMs(1, RESEND_MS)).toBe(RETRY_SOON_MS_MIN);
    expect(retrySoonDelayMs(2, RESEND_MS)).toBe(2 * RETRY_SOON_MS_MIN);
    expect(retrySoonDelayMs(3, RESEND_MS)).toBe(4 * RETRY_SOON_MS_MIN);
    expect(retrySoonDelayMs(60, RESEND_MS)).toBe(RETRY_SOON_MS_MAX);
    expect(retrySoonDelayMs(60, RETRY_SOON_MS_MAX / 2)).toBe(RETRY_SOON_MS_MAX / 2);
  });

  test("OVERLOADED: asked again once its delay passed, later after each further refusal", () => {
    const { clock, handed, wakes, tracker } = fixture();
    const one = request(1);
    void tracker.track(one, "byzantine/total", "publish 1");
    expect(handed.length).toBe(4);
    clock.now = 100;
    tracker.onReply(0, refusal(one, 0, "OVERLOADED"));
    expect(wakes).toEqual([100 + RETRY_SOON_MS_MIN]);
    // Not due yet: nothing sent.
    expect(tracker.retryDue(100 + RETRY_SOON_MS_MIN - 1)).toBe(100 + RETRY_SOON_MS_MIN);
    expect(handed.length).toBe(4);
    clock.now = 100 + RETRY_SOON_MS_MIN;
    expect(tracker.retryDue(clock.now)).toBe(Number.POSITIVE_INFINITY);
    expect(handed.slice(4)).toEqual([{ replica: 0, seq: 1 }]);
    // Refused again: the next try waits twice as long.
    tracker.onReply(0, refusal(one, 0, "OVERLOADED"));
    expect(wakes.at(-1)).toBe(clock.now + 2 * RETRY_SOON_MS_MIN);
    tracker.retryDue(clock.now + 2 * RETRY_SOON_MS_MIN);
    expect(handed.slice(5)).toEqual([{ replica: 0, seq: 1 }]);
    // Fired once: a second call at the same time sends nothing more.
    tracker.retryDue(clock.now + 2 * RETRY_SOON_MS_MIN);
    expect(handed.length).toBe(6);
  });

  test("a replica's due retries go in the order the requests were made", () => {
    const { clock, handed, tracker } = fixture();
    const made = [request(1), request(2), request(3)];
    for (const m of made) void tracker.track(m, "byzantine/total", `publish ${m.request.seq}`);
    handed.length = 0;
    // The leader shed all three, answering in another order.
    for (const index of [2, 0, 1]) tracker.onReply(0, refusal(made[index] as BuiltRequest, 0, "OVERLOADED"));
    clock.now = RETRY_SOON_MS_MIN;
    tracker.retryDue(clock.now);
    expect(handed).toEqual([1, 2, 3].map((seq) => ({ replica: 0, seq })));
  });

  test("a connection with no room: the retry is due again after the same delay", () => {
    const { clock, handed, tracker, full } = fixture();
    const one = request(1);
    void tracker.track(one, "byzantine/total", "publish 1");
    handed.length = 0;
    tracker.onReply(0, refusal(one, 0, "OVERLOADED"));
    full.add(0);
    clock.now = RETRY_SOON_MS_MIN;
    expect(tracker.retryDue(clock.now)).toBe(2 * RETRY_SOON_MS_MIN);
    expect(handed).toEqual([]);
    full.delete(0);
    clock.now = 2 * RETRY_SOON_MS_MIN;
    expect(tracker.retryDue(clock.now)).toBe(Number.POSITIVE_INFINITY);
    expect(handed).toEqual([{ replica: 0, seq: 1 }]);
  });

  test("OVERLOADED of a full pending pool, OUT_OF_ORDER and RATE_LIMITED wait for the resend", () => {
    const { clock, handed, wakes, tracker } = fixture();
    const one = request(1);
    void tracker.track(one, "byzantine/total", "publish 1");
    handed.length = 0;
    tracker.onReply(0, refusal(one, 0, "OVERLOADED", "pending requests at 70% of their bound: low publishes refused"));
    tracker.onReply(1, refusal(one, 1, "OUT_OF_ORDER", "an earlier request of this client has not arrived"));
    tracker.onReply(2, refusal(one, 2, "RATE_LIMITED", "over the key's event rate"));
    expect(wakes).toEqual([]);
    clock.now = RETRY_SOON_MS_MAX;
    expect(tracker.retryDue(clock.now)).toBe(Number.POSITIVE_INFINITY);
    expect(handed).toEqual([]);
    // The resend asks every replica that has not answered.
    clock.now = RESEND_MS;
    tracker.tick(clock.now);
    expect(handed.map((h) => h.replica).sort()).toEqual([0, 1, 2, 3]);
  });

  test("a replica that voted before its retry was due is not asked again", () => {
    const { clock, handed, tracker } = fixture();
    const one = request(1);
    void tracker.track(one, "byzantine/total", "publish 1");
    handed.length = 0;
    tracker.onReply(0, refusal(one, 0, "OVERLOADED"));
    // Replica 0 stored it after all (it had the request from a proposal, say).
    tracker.onReply(0, stored(one, 0));
    clock.now = RETRY_SOON_MS_MIN;
    tracker.retryDue(clock.now);
    expect(handed).toEqual([]);
  });

  test("a replica that already voted, or a request settled, is not asked again", async () => {
    const { clock, handed, wakes, tracker } = fixture();
    const one = request(1);
    const outcome = tracker.track(one, "byzantine/total", "publish 1");
    handed.length = 0;
    tracker.onReply(0, stored(one, 0));
    // A refusal after its vote (a duplicate, or a lie): the vote stands, nothing is scheduled.
    tracker.onReply(0, refusal(one, 0, "OVERLOADED"));
    expect(wakes).toEqual([]);
    tracker.onReply(1, refusal(one, 1, "OVERLOADED"));
    expect(wakes.length).toBe(1);
    for (const replica of [2, 3]) tracker.onReply(replica, stored(one, replica));
    expect((await outcome).ok).toBe(true);
    clock.now = 10 * RETRY_SOON_MS_MIN;
    tracker.retryDue(clock.now);
    expect(handed).toEqual([]);
  });
});
