// The votes a request in flight keeps (request-tracker.ts over ReplyVoter): a replica that
// leaves the group takes its vote with it, and the request is judged again with the larger
// of the f it was sent under and the group's f now; a replica that answers again and again,
// each time otherwise, is one equivocation on record and one warning, not one per reply.
import { describe, expect, test } from "bun:test";
import type { Reply } from "../../wire/schemas.ts";
import type { RequestTracker } from "../../src/client/request-tracker.ts";
import { buildRequest } from "../../src/client/request.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { trackerFixture } from "./tracker-fixture.ts";

const TIMING = { requestMs: 15_000, resendMs: 2_000 };

/** A byzantine/total publish in flight, and the reply each replica may give it (`first`: the seq it claims). */
function publishInFlight(tracker: RequestTracker) {
  const made = buildRequest(SigningKey.generate(), { seq: 1, ts: 1, op: { t: "pub", tag: "a.b", events: [new Uint8Array([1])] } }, 1 << 20);
  let settled = false;
  const outcome = tracker.track(made, "byzantine/total", "publish").then((result) => {
    settled = true;
    return result;
  });
  const reply = (replica: number, first: number): Reply =>
    ({ seq: 1, replica, d: made.digest, ok: true, res: { t: "pub", tag: "a.b", span: 1, first } }) as Reply;
  return { outcome, reply, isSettled: () => settled };
}

/** The tracker's group, which a test changes as a membership change would (then calls onLeft). */
function groupOf(tracker: RequestTracker): { f: number } {
  return (tracker as unknown as { ctx: { group: { f: number } } }).ctx.group;
}

describe("a replica that leaves the group while a request is out", () => {
  test("its answer no longer counts: with one faulty member it cannot make a result no correct replica gave", async () => {
    const { tracker } = trackerFixture({ timing: TIMING, onSent: () => {} });
    const { outcome, reply, isSettled } = publishInFlight(tracker);
    tracker.onReply(3, reply(3, 424242)); // replica 3 lies...
    tracker.onLeft(3); // ...and the group removes it
    tracker.onReply(2, reply(2, 424242)); // one faulty member of the group now
    await Bun.sleep(1);
    expect(isSettled()).toBe(false);
    tracker.onReply(0, reply(0, 7));
    tracker.onReply(1, reply(1, 7));
    const result = await outcome;
    expect(result).toMatchObject({ ok: true, res: { first: 7 }, replicas: [0, 1] });
  });

  test("a replaced replica answers again on its new session, and that answer counts", async () => {
    const sent: number[] = [];
    const { tracker } = trackerFixture({ timing: TIMING, onSent: (replica) => void sent.push(replica) });
    const { outcome, reply } = publishInFlight(tracker);
    tracker.onReply(3, reply(3, 424242));
    tracker.onLeft(3);
    // The new session of replica 3 is sent the request again (it has not answered any more).
    sent.length = 0;
    const session = {
      id: 3,
      sendShared: (): boolean => {
        sent.push(3);
        return true;
      },
    };
    tracker.onReady(session as never);
    expect(sent).toEqual([3]);
    tracker.onReply(3, reply(3, 7));
    tracker.onReply(0, reply(0, 7));
    expect(await outcome).toMatchObject({ ok: true, replicas: [3, 0] });
  });

  test("judged again with the larger f: a group now tolerating f=2 needs three matching answers", async () => {
    const { tracker } = trackerFixture({ timing: TIMING, onSent: () => {} });
    const { outcome, reply, isSettled } = publishInFlight(tracker);
    tracker.onReply(0, reply(0, 7));
    groupOf(tracker).f = 2;
    tracker.onLeft(3);
    tracker.onReply(1, reply(1, 7));
    await Bun.sleep(1);
    expect(isSettled()).toBe(false);
    tracker.onReply(2, reply(2, 7));
    expect(await outcome).toMatchObject({ ok: true, replicas: [0, 1, 2] });
  });

  test("a lower f now does not lower what the request needs (f+1 of the f it was sent under)", async () => {
    const { tracker } = trackerFixture({ timing: TIMING, onSent: () => {} });
    const { outcome, reply, isSettled } = publishInFlight(tracker);
    tracker.onReply(0, reply(0, 7));
    groupOf(tracker).f = 0;
    tracker.onLeft(3);
    await Bun.sleep(1);
    expect(isSettled()).toBe(false);
    tracker.onReply(1, reply(1, 7));
    expect(await outcome).toMatchObject({ ok: true, replicas: [0, 1] });
  });
});

test("a replica answering again and again, each time otherwise: one equivocation on record and one warning", () => {
  const { tracker } = trackerFixture({ timing: TIMING, onSent: () => {} });
  const warnings: string[] = [];
  (tracker as unknown as { ctx: { log: (level: string, text: string) => void } }).ctx.log = (_level, text) => void warnings.push(text);
  const { reply } = publishInFlight(tracker);
  const REPLIES = 10_000;
  for (let first = 1; first <= REPLIES; first++) tracker.onReply(0, reply(0, first));
  const pending = [...(tracker as unknown as { requests: Map<string, { voter: { conflicts(): readonly unknown[] } }> }).requests.values()];
  expect(pending).toHaveLength(1);
  expect(pending[0]?.voter.conflicts()).toHaveLength(1);
  expect(warnings).toEqual(["publish: replica 0 equivocation"]);
  expect(tracker.size).toBe(1);
});
