// What a request that missed its deadline reports (src/client/request-tracker.ts,
// deadlineError): replicas that kept refusing it "not now" RATE_LIMITED or OVERLOADED are
// not silent, and when those refusals kept it from its quorum the error carries their code
// and says so (`-ERR RATE_LIMITED ...`, as the README shows for a key over its quota);
// replicas that did not answer still make a TIMEOUT naming each one.
import { describe, expect, test } from "bun:test";
import type { ReplicaConnection } from "../../src/client/connection.ts";
import { NoQuorumError, RetriedRefusalError } from "../../src/client/errors.ts";
import { ExecutedFloor } from "../../src/client/executed-floor.ts";
import { ReplicaGroup, type TrackingContext } from "../../src/client/replica-group.ts";
import { buildRequest, type BuiltRequest } from "../../src/client/request.ts";
import { RequestTracker, type RequestOutcome } from "../../src/client/request-tracker.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import type { ReplyKind } from "../../src/core/voting/quorum.ts";
import type { Reply } from "../../wire/schemas.ts";

const REQUEST_MS = 15_000;
const RESEND_MS = 2_000;
const QUOTA_REASON = "key ed25519:AAAA is over its quota of 5 events/s (set-quota); retry later";
const POOL_REASON = "the pending pool is full (4096 requests); retry later";

/** A tracker over four replicas on a clock of the test's own; `sent` counts what each connection took. */
function fixture() {
  const clock = { now: 0 };
  const sent = new Map<number, number>();
  const connections = [0, 1, 2, 3].map(
    (id) =>
      ({
        id,
        address: `127.0.0.1:710${id}`,
        isReady: true,
        lastError: null,
        sendShared(): boolean {
          sent.set(id, (sent.get(id) ?? 0) + 1);
          return true;
        },
      }) as unknown as ReplicaConnection,
  );
  const group = {
    n: 4,
    f: 1,
    slots: 4,
    connections,
    connection: (id: number) => connections[id],
    readyReplicas: () => [0, 1, 2, 3],
    has: (id: number) => id >= 0 && id < 4,
    describeReplicas: ReplicaGroup.prototype.describeReplicas,
  };
  const ctx = {
    group,
    floor: new ExecutedFloor(group as unknown as ReplicaGroup),
    frameBytesMax: 1 << 20,
    now: () => clock.now,
    log: () => {},
  } as unknown as TrackingContext;
  const tracker = new RequestTracker(ctx, { requestMs: REQUEST_MS, resendMs: RESEND_MS });
  return { clock, sent, tracker };
}

const key = SigningKey.generate();
function request(seq: number, tag = "sec.alerts"): BuiltRequest {
  return buildRequest(key, { seq, ts: 1, op: { t: "pub", tag, events: [new Uint8Array([seq])] } }, 1 << 20);
}

function refusal(made: BuiltRequest, replica: number, code: "RATE_LIMITED" | "OVERLOADED" | "OUT_OF_ORDER", reason: string): Reply {
  return { seq: made.request.seq, replica, d: made.digest, ok: false, code, reason } as Reply;
}

function stored(made: BuiltRequest, replica: number): Reply {
  const tag = made.request.op.t === "pub" ? made.request.op.tag : "";
  return {
    seq: made.request.seq,
    replica,
    d: made.digest,
    ok: true,
    res: { t: "pub", tag, span: 1, first: made.request.seq },
    at: 1,
  } as Reply;
}

/** Tracks `made`, lets `answer` reply, resends every RESEND_MS (each replica answering again) and returns the outcome at the deadline. */
async function atDeadline(
  kind: ReplyKind,
  made: BuiltRequest,
  answer: (tracker: RequestTracker, round: number, sent: ReadonlyMap<number, number>) => void,
): Promise<{ outcome: RequestOutcome; sent: Map<number, number> }> {
  const { clock, sent, tracker } = fixture();
  let outcome: RequestOutcome | null = null;
  const tag = made.request.op.t === "pub" ? made.request.op.tag : "";
  void tracker.track(made, kind, `publish to ${tag} (seq ${made.request.seq})`).then((settled) => {
    outcome = settled;
  });
  for (let round = 0; clock.now < REQUEST_MS; round++) {
    answer(tracker, round, sent);
    clock.now += RESEND_MS;
    tracker.tick(Math.min(clock.now, REQUEST_MS));
  }
  await Promise.resolve();
  if (outcome === null) throw new Error("not settled at the deadline");
  return { outcome, sent };
}

function errorOf(outcome: RequestOutcome): NoQuorumError {
  if (outcome.ok) throw new Error("acknowledged");
  expect(outcome.error).toBeInstanceOf(NoQuorumError);
  return outcome.error as NoQuorumError;
}

describe("a request refused RATE_LIMITED or OVERLOADED until its deadline", () => {
  test("every replica refused it RATE_LIMITED: the error is RATE_LIMITED, naming them and the last one's reason", async () => {
    const made = request(1);
    const { outcome } = await atDeadline("byzantine/total", made, (tracker) => {
      for (const replica of [0, 3, 1, 2]) tracker.onReply(replica, refusal(made, replica, "RATE_LIMITED", QUOTA_REASON));
    });
    const error = errorOf(outcome);
    expect(error).toBeInstanceOf(RetriedRefusalError);
    expect(error.code).toBe("RATE_LIMITED");
    expect((error as RetriedRefusalError).replicas).toEqual([0, 1, 2, 3]);
    expect((error as RetriedRefusalError).reason).toBe(QUOTA_REASON);
    expect(error.message).toBe(
      `publish to sec.alerts (seq 1): 4 of 4 replicas refused it for its rate, retried until the deadline (${REQUEST_MS} ms); ` +
        `the last, replica 2 (127.0.0.1:7102): RATE_LIMITED ${QUOTA_REASON}`,
    );
    expect(error.message).not.toContain("no quorum");
  });

  test("OVERLOADED (a full pending pool) the same way, with its own code", async () => {
    const made = request(2);
    const { outcome } = await atDeadline("byzantine/total", made, (tracker) => {
      for (const replica of [0, 1, 2, 3]) tracker.onReply(replica, refusal(made, replica, "OVERLOADED", POOL_REASON));
    });
    const error = errorOf(outcome);
    expect(error.code).toBe("OVERLOADED");
    expect(error.message).toStartWith(
      "publish to sec.alerts (seq 2): 4 of 4 replicas refused it for their load, retried until the deadline",
    );
    expect(error.message).toEndWith(`the last, replica 3 (127.0.0.1:7103): OVERLOADED ${POOL_REASON}`);
  });

  test("refusals beside a replica that stored it: a TIMEOUT (it may be stored), the refusals named", async () => {
    // byzantine/none needs 3 matching (2f+1): 1 stored it, 2 refused RATE_LIMITED, 1 silent.
    const made = request(3);
    const { outcome } = await atDeadline("byzantine/none", made, (tracker, round) => {
      if (round === 0) tracker.onReply(0, stored(made, 0));
      for (const replica of [1, 2]) tracker.onReply(replica, refusal(made, replica, "RATE_LIMITED", QUOTA_REASON));
    });
    const error = errorOf(outcome);
    expect(error.code).toBe("TIMEOUT");
    expect(error).not.toBeInstanceOf(RetriedRefusalError);
    expect(error.message).toStartWith(
      "no quorum for publish to sec.alerts (seq 3): 3 matching answers needed within 15000 ms, 1 of 4 replicas gave a final answer",
    );
    expect(error.message).toContain(`RATE_LIMITED ${QUOTA_REASON}`);
  });

  test("every replica refused it but one, whose vote stored it: a TIMEOUT, whatever the others say (a faulty one cannot choose the code)", async () => {
    const made = request(3, "sec.alerts");
    const { outcome } = await atDeadline("byzantine/total", made, (tracker) => {
      tracker.onReply(0, stored(made, 0));
      for (const replica of [1, 2, 3]) tracker.onReply(replica, refusal(made, replica, "RATE_LIMITED", QUOTA_REASON));
    });
    expect(errorOf(outcome).code).toBe("TIMEOUT");
  });

  test("the code more replicas gave is the error's; the last answer of each replica counts", async () => {
    const made = request(4);
    const { outcome } = await atDeadline("byzantine/total", made, (tracker) => {
      tracker.onReply(0, refusal(made, 0, "OVERLOADED", POOL_REASON));
      // Replica 1 was overloaded, then rate-limited it: its last answer is what counts.
      tracker.onReply(1, refusal(made, 1, "OVERLOADED", POOL_REASON));
      tracker.onReply(1, refusal(made, 1, "RATE_LIMITED", QUOTA_REASON));
      tracker.onReply(2, refusal(made, 2, "RATE_LIMITED", QUOTA_REASON));
      tracker.onReply(3, refusal(made, 3, "RATE_LIMITED", QUOTA_REASON));
    });
    const error = errorOf(outcome);
    expect(error.code).toBe("RATE_LIMITED");
    expect((error as RetriedRefusalError).replicas).toEqual([1, 2, 3]);
    expect(error.message).toStartWith("publish to sec.alerts (seq 4): 3 of 4 replicas refused it for its rate");
  });

  test("a crash/none publish its f+1 replicas refused RATE_LIMITED: RATE_LIMITED, the others not asked", async () => {
    const made = request(5, "bulk.metrics");
    const { outcome, sent } = await atDeadline("crash/none", made, (tracker, _round, asked) => {
      for (const replica of asked.keys()) tracker.onReply(replica, refusal(made, replica, "RATE_LIMITED", QUOTA_REASON));
    });
    const error = errorOf(outcome);
    expect(error.code).toBe("RATE_LIMITED");
    // Only the f+1 were asked, at every resend.
    const asked = [...sent.keys()].sort();
    expect(asked).toHaveLength(2);
    expect((error as RetriedRefusalError).replicas).toEqual(asked);
    expect(error.message).toStartWith(
      "publish to bulk.metrics (seq 5): 2 of 4 replicas refused it for its rate, retried until the deadline",
    );
    expect(error.message).toContain("not asked (a crash/none publish stays with its f+1 replicas while they refuse it RATE_LIMITED)");
  });
});

describe("a replica's own refusal (judged on its state, with `at`) at the deadline", () => {
  test("is named with its code and reason, not as no answer: a crash/none publish one replica refuses REPLAY while another stores it", async () => {
    const made = request(7, "net.links");
    const replayReason = "this sequence number was already used";
    // The f+1 replicas first asked: one stores it, the other refuses it REPLAY; the others
    // (asked once it is refused) are down and answer nothing.
    let pair: number[] = [];
    const { outcome } = await atDeadline("crash/none", made, (tracker, round, asked) => {
      if (round === 0) pair = [...asked.keys()].sort();
      const [storing, refusing] = pair as [number, number];
      tracker.onReply(storing, stored(made, storing));
      tracker.onReply(refusing, { ...refusal(made, refusing, "OVERLOADED", ""), code: "REPLAY", reason: replayReason, at: 1 } as Reply);
    });
    const error = errorOf(outcome);
    expect(error.code).toBe("TIMEOUT");
    expect(error.message).toContain(`REPLAY ${replayReason} (one replica's refusal; it stands once 2 give it and 3 have answered)`);
    expect(error.message).not.toMatch(/710[0-3]\): no answer.*710[0-3]\): no answer.*710[0-3]\): no answer/);
  });
});

describe("a request that missed its deadline otherwise is still a TIMEOUT", () => {
  test("silent replicas: TIMEOUT, no quorum, each one named", async () => {
    const made = request(6);
    const { outcome } = await atDeadline("byzantine/none", made, () => {});
    const error = errorOf(outcome);
    expect(error).not.toBeInstanceOf(RetriedRefusalError);
    expect(error.code).toBe("TIMEOUT");
    expect(error.message).toBe(
      `no quorum for publish to sec.alerts (seq 6): 3 matching answers needed within ${REQUEST_MS} ms, 0 of 4 replicas gave a final answer (` +
        "replica 0 (127.0.0.1:7100): no answer; replica 1 (127.0.0.1:7101): no answer; replica 2 (127.0.0.1:7102): no answer; replica 3 (127.0.0.1:7103): no answer)",
    );
  });

  test("too few refused RATE_LIMITED to explain it (the rest silent): TIMEOUT, their refusals named", async () => {
    // byzantine/none needs 3 (2f+1): with 2 silent, the 2 refusing could not have made it.
    const made = request(7);
    const { outcome } = await atDeadline("byzantine/none", made, (tracker) => {
      for (const replica of [0, 1]) tracker.onReply(replica, refusal(made, replica, "RATE_LIMITED", QUOTA_REASON));
    });
    const error = errorOf(outcome);
    expect(error.code).toBe("TIMEOUT");
    expect(error.message).toStartWith(
      `no quorum for publish to sec.alerts (seq 7): 3 matching answers needed within ${REQUEST_MS} ms, 0 of 4 replicas gave a final answer`,
    );
    expect(error.message).toContain(`replica 0 (127.0.0.1:7100): RATE_LIMITED ${QUOTA_REASON}`);
    expect(error.message).toContain("replica 3 (127.0.0.1:7103): no answer");
  });

  test("other 'not now' refusals (OUT_OF_ORDER) stay a TIMEOUT", async () => {
    const made = request(8);
    const { outcome } = await atDeadline("byzantine/total", made, (tracker) => {
      for (const replica of [0, 1, 2, 3]) tracker.onReply(replica, refusal(made, replica, "OUT_OF_ORDER", "seq 8 is past 6 + 1"));
    });
    const error = errorOf(outcome);
    expect(error.code).toBe("TIMEOUT");
    expect(error.message).toContain("replica 0 (127.0.0.1:7100): OUT_OF_ORDER seq 8 is past 6 + 1");
  });

  test("refusals heard only at the first send, long before the deadline, are still the replicas' last answers", async () => {
    const made = request(9);
    const { outcome } = await atDeadline("byzantine/total", made, (tracker, round) => {
      if (round === 0) for (const replica of [0, 1, 2, 3]) tracker.onReply(replica, refusal(made, replica, "RATE_LIMITED", QUOTA_REASON));
    });
    // Nothing but RATE_LIMITED ever came back: that is what kept it out, however long ago.
    expect(errorOf(outcome).code).toBe("RATE_LIMITED");
  });

  test("a replica that answered otherwise after refusing it RATE_LIMITED no longer counts as refusing it", async () => {
    // byzantine/none needs 3: replica 0 stored it after refusing it, so only replica 1 still
    // refuses, and with 2 silent that cannot explain the missing quorum.
    const made = request(10);
    const { outcome } = await atDeadline("byzantine/none", made, (tracker, round) => {
      if (round === 0) for (const replica of [0, 1]) tracker.onReply(replica, refusal(made, replica, "RATE_LIMITED", QUOTA_REASON));
      if (round === 1) tracker.onReply(0, stored(made, 0));
    });
    const error = errorOf(outcome);
    expect(error.code).toBe("TIMEOUT");
    expect(error.message).toContain("1 of 4 replicas gave a final answer");
  });
});
