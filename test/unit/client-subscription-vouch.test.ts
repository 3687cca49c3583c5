// One subscription against scripted replicas behind the SubscriptionHost port: on
// byzantine/none a publisher key is delivered only once f+1 replicas vouch for it, a full
// publisher table is reported, and a replica is asked again (after UNSUBSCRIBE) when its
// start buffer overflows or when its SUBSCRIBE could not be sent.
import { describe, expect, test } from "bun:test";
import type { ChannelInfo } from "../../src/client/queries.ts";
import { RESUBSCRIBE_AFTER_OVERFLOW_MS, RESUBSCRIBE_AFTER_SEND_FAILURE_MS } from "../../src/client/replica-subs.ts";
import {
  ClientSubscription,
  START_BUFFER_COPIES_PER_REPLICA_MAX,
  type ReceivedBatch,
  type SubscriptionSignal,
} from "../../src/client/subscription.ts";
import { DELIVERY_PUBLISHERS_MAX } from "../../src/core/voting/index.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { channel, ScriptedHost, send, signedRequest, subOk } from "./subscription-host.ts";

const START_TIMEOUT_MS = 60_000;
const text = (b: Uint8Array): string => new TextDecoder().decode(b);

type Harness = { host: ScriptedHost; sub: ClientSubscription; got: string[]; signals: SubscriptionSignal[] };

function subscribe(info: ChannelInfo, from?: number, publishers: readonly Uint8Array[] = []): Harness {
  const host = new ScriptedHost();
  const got: string[] = [];
  const signals: SubscriptionSignal[] = [];
  const options = { onSignal: (s: SubscriptionSignal) => signals.push(s), ...(from === undefined ? {} : { from }) };
  const handler = (batch: ReceivedBatch) => {
    got.push(...batch.events.map(text));
  };
  const sub = new ClientSubscription(host, info, options, handler, START_TIMEOUT_MS, publishers);
  void sub.begin().catch(() => undefined);
  return { host, sub, got, signals };
}

/** Lets the delivery pump hand every queued batch to the handler. */
const settle = (): Promise<void> => Bun.sleep(1);

describe("byzantine/none subscription", () => {
  test("a key one replica made up is never delivered; a key f+1 replicas forward is", async () => {
    const h = subscribe(channel("net.links", "byzantine", "none"));
    for (const replica of [0, 1, 2, 3]) subOk(h, replica);
    const minted = SigningKey.generate();
    for (let seq = 1; seq <= 5; seq++) send(h, 3, 0, signedRequest(minted, "net.links", seq, ["eth0 up"]));
    await settle();
    expect(h.got).toEqual([]);
    const registered = SigningKey.generate();
    const down = signedRequest(registered, "net.links", 1, ["eth0 down"]);
    send(h, 0, 0, down);
    await settle();
    expect(h.got).toEqual([]);
    send(h, 2, 0, down);
    send(h, 1, 0, down);
    await settle();
    expect(h.got).toEqual(["eth0 down"]);
    expect(h.signals).toEqual([]);
  });
});

describe("a full publisher table", () => {
  test("is signalled as overflow and counted, and the replica is not dropped for it", async () => {
    const keys = Array.from({ length: DELIVERY_PUBLISHERS_MAX + 1 }, () => SigningKey.generate());
    const h = subscribe(
      channel("net.links", "crash", "none"),
      undefined,
      keys.map((key) => key.publicKey),
    );
    for (const replica of [0, 1]) subOk(h, replica);
    for (const key of keys.slice(0, DELIVERY_PUBLISHERS_MAX)) send(h, 0, 0, signedRequest(key, "net.links", 1, ["e"]));
    await settle();
    expect(h.got).toHaveLength(DELIVERY_PUBLISHERS_MAX);
    const extra = keys[DELIVERY_PUBLISHERS_MAX] as SigningKey;
    send(h, 1, 0, signedRequest(extra, "net.links", 1, ["lost", "too"]));
    await settle();
    expect(h.got).toHaveLength(DELIVERY_PUBLISHERS_MAX);
    expect(h.signals).toEqual([
      {
        t: "overflow",
        source: "publishers",
        publisher: extra.publicKey,
        droppedEvents: 2,
        reason: `more than ${DELIVERY_PUBLISHERS_MAX} publishers on one subscription`,
      },
    ]);
    expect(h.sub.stats().droppedEvents).toBe(2);
    expect(h.host.unsubscribes).toEqual([]);
  });
});

describe("asking a replica again", () => {
  test("a start buffer overflow unsubscribes there before asking again", () => {
    const h = subscribe(channel("sec.alerts", "byzantine", "total"));
    // One SUB_OK of the 2f+1 a live start waits for: copies are buffered meanwhile.
    subOk(h, 0, 1);
    const first = h.host.subIdAt(0);
    const key = SigningKey.generate();
    for (let seq = 1; seq <= START_BUFFER_COPIES_PER_REPLICA_MAX; seq++) send(h, 0, seq, signedRequest(key, "sec.alerts", seq, ["e"]));
    expect(h.host.unsubscribes).toEqual([]);
    send(h, 0, START_BUFFER_COPIES_PER_REPLICA_MAX + 1, signedRequest(key, "sec.alerts", START_BUFFER_COPIES_PER_REPLICA_MAX + 1, ["e"]));
    expect(h.host.unsubscribes).toEqual([{ replica: 0, subId: first }]);
    h.sub.tick(h.host.nowMs + RESUBSCRIBE_AFTER_OVERFLOW_MS - 1);
    expect(h.host.subscribesTo(0)).toBe(1);
    h.sub.tick(h.host.nowMs + RESUBSCRIBE_AFTER_OVERFLOW_MS);
    expect(h.host.subscribesTo(0)).toBe(2);
  });

  test("a SUBSCRIBE that could not be sent (outbound queue full) is retried", () => {
    const host = new ScriptedHost();
    host.queueFull.add(2);
    const sub = new ClientSubscription(host, channel("net.links", "crash", "none"), {}, () => undefined, START_TIMEOUT_MS);
    void sub.begin().catch(() => undefined);
    expect(host.subscribesTo(2)).toBe(0);
    host.queueFull.delete(2);
    sub.tick(host.nowMs + RESUBSCRIBE_AFTER_SEND_FAILURE_MS - 1);
    expect(host.subscribesTo(2)).toBe(0);
    sub.tick(host.nowMs + RESUBSCRIBE_AFTER_SEND_FAILURE_MS);
    expect(host.subscribesTo(2)).toBe(1);
    // Still full: asked again after another interval, not given up on.
    host.queueFull.add(2);
    host.nowMs += 10 * RESUBSCRIBE_AFTER_SEND_FAILURE_MS;
    sub.onSubEnd(2, host.subIdAt(2), { sub: host.subIdAt(2), replica: 2, code: "SLOW", reason: "behind" });
    expect(host.subscribesTo(2)).toBe(1);
    host.queueFull.delete(2);
    sub.tick(host.nowMs + RESUBSCRIBE_AFTER_SEND_FAILURE_MS);
    expect(host.subscribesTo(2)).toBe(2);
  });
});
