// What one replica can make a subscriber do per frame is bounded: a copy contradicting what
// was delivered, sent again and again, and a SUB_END SLOW answered to every SUBSCRIBE, each
// give a signal per interval (signal-limiter.ts), not one per frame, and a replica that
// ends the subscription SLOW again with no copy in between is asked ever later. An end that
// f+1 replicas agree on says whether it ended a started subscription or refused a new one.
import { expect, test } from "bun:test";
import { ClientSubscription, SLOW_RETRY_MS_FIRST, type SubscriptionSignal } from "../../src/client/subscription.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { channel, ScriptedHost, send, signedRequest, subOk } from "./subscription-host.ts";

const TAG = "net.links";

async function started(): Promise<{ host: ScriptedHost; sub: ClientSubscription; signals: SubscriptionSignal[] }> {
  const host = new ScriptedHost();
  const signals: SubscriptionSignal[] = [];
  const sub = new ClientSubscription(
    host,
    channel(TAG, "byzantine", "total"),
    { from: 1, sources: "all", onSignal: (s) => void signals.push(s) },
    () => {},
    60_000,
  );
  const begun = sub.begin();
  for (const r of [0, 1, 2, 3]) subOk({ host, sub }, r, 1);
  await begun;
  return { host, sub, signals };
}

test("a contradicting copy sent 10,000 times: counted each time, signalled once per interval", async () => {
  const { host, sub, signals } = await started();
  const pub = SigningKey.generate();
  const good = signedRequest(pub, TAG, 1, ["real"]);
  const other = signedRequest(pub, TAG, 2, ["other"]);
  send({ host, sub }, 0, 1, good);
  send({ host, sub }, 1, 1, good);
  for (let i = 0; i < 10_000; i++) send({ host, sub }, 2, 1, other);
  expect(sub.stats().conflicts).toBe(10_000);
  expect(signals.filter((s) => s.t === "conflict").length).toBe(1);
  await sub.close();
});

test("SUB_END SLOW again with no copy in between: asked again later each time, signalled once per interval", async () => {
  const { host, sub, signals } = await started();
  const before = host.subscribesTo(2);
  for (let i = 0; i < 10_000; i++) {
    const subId = host.subIdAt(2);
    sub.onSubEnd(2, subId, { sub: subId, replica: 2, code: "SLOW", reason: "x" });
  }
  // The first SLOW is asked again at once; the others wait for a tick past their delay.
  expect(host.subscribesTo(2) - before).toBe(1);
  expect(signals.filter((s) => s.t === "slow").length).toBe(1);
  // Past the delay of the second SLOW: asked once more, not once per SLOW.
  host.nowMs += SLOW_RETRY_MS_FIRST;
  sub.tick(host.now());
  expect(host.subscribesTo(2) - before).toBe(2);
  await sub.close();
});

test("a SLOW after copies arrived is asked again at once, as a client that fell behind wants", async () => {
  const { host, sub } = await started();
  const pub = SigningKey.generate();
  const before = host.subscribesTo(2);
  for (let seq = 1; seq <= 3; seq++) {
    const subId = host.subIdAt(2);
    sub.onSubEnd(2, subId, { sub: subId, replica: 2, code: "SLOW", reason: "x" });
    send({ host, sub }, 2, seq, signedRequest(pub, TAG, seq, [`e${seq}`]));
  }
  expect(host.subscribesTo(2) - before).toBe(3);
  await sub.close();
});

test("f+1 replicas ending a started subscription end it, saying ended; before it started, refused", async () => {
  const { host, sub } = await started();
  for (const r of [0, 1]) {
    const subId = host.subIdAt(r);
    sub.onSubEnd(r, subId, { sub: subId, replica: r, code: "DESTROYED", reason: "channel net.links was destroyed" });
  }
  expect(
    await sub.done.then(
      () => "closed",
      (error: Error) => error.message,
    ),
  ).toBe("subscription to net.links ended: DESTROYED channel net.links was destroyed");
  const fresh = new ScriptedHost();
  const refused = new ClientSubscription(fresh, channel(TAG, "byzantine", "total"), { from: 1, sources: "all" }, () => {}, 60_000);
  const begun = refused.begin().catch((error: Error) => error.message);
  for (const r of [0, 1]) {
    const subId = fresh.subIdAt(r);
    refused.onSubEnd(r, subId, { sub: subId, replica: r, code: "UNAUTHORIZED", reason: "subscriber is not registered on net.links" });
  }
  expect(await begun).toBe("subscription to net.links refused: UNAUTHORIZED subscriber is not registered on net.links");
});
