// Crash-fault channels deliver one replica's copy without a vote, so a subscriber takes a
// batch only from a publisher registered on the channel, as f+1 replicas list it
// (src/client/publisher-registry.ts). A forged EVENTS frame from one replica, carrying a
// batch validly signed by a key that is not registered, is never delivered; a key
// registered while the subscription runs is learnt, and its batches are delivered.
import { describe, expect, test } from "bun:test";
import type { Events } from "../../wire/schemas.ts";
import {
  PUBLISHERS_REFRESH_INTERVAL_MS,
  PublisherRegistry,
  REFRESH_INTERVAL_MS,
  REFUSED_PUBLISHER_MS,
  UNKNOWN_PUBLISHER_WAIT_MS,
  UNKNOWN_PUBLISHERS_MAX,
} from "../../src/client/publisher-registry.ts";
import type { ChannelInfo } from "../../src/client/queries.ts";
import { ClientSubscription, type ReceivedBatch, type SubscriptionSignal } from "../../src/client/subscription.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { channel, ScriptedHost, signedRequest } from "./subscription-host.ts";

const START_TIMEOUT_MS = 60_000;
const text = (b: Uint8Array): string => new TextDecoder().decode(b);
const REGISTERED = SigningKey.generate();
const STRANGER = SigningKey.generate();

type Harness = { host: ScriptedHost; sub: ClientSubscription; got: string[]; signals: SubscriptionSignal[] };

function subscribe(info: ChannelInfo, from?: number): Harness {
  const host = new ScriptedHost();
  host.registered = [REGISTERED.publicKey];
  const got: string[] = [];
  const signals: SubscriptionSignal[] = [];
  const options = { onSignal: (s: SubscriptionSignal) => signals.push(s), ...(from === undefined ? {} : { from }) };
  const handler = (batch: ReceivedBatch) => {
    got.push(...batch.events.map(text));
  };
  // As FitbClient.subscribe does: the registered publishers are learnt before the start.
  const sub = new ClientSubscription(host, info, options, handler, START_TIMEOUT_MS, [...host.registered]);
  void sub.begin().catch(() => undefined);
  for (const replica of [0, 1, 2, 3]) {
    const subId = host.subIdAt(replica);
    sub.onSubOk(replica, subId, { sub: subId, replica, next: 1 });
  }
  return { host, sub, got, signals };
}

function send(h: Harness, replica: number, seq: number, req: Events["req"]): void {
  const subId = h.host.subIdAt(replica);
  h.sub.onEvents(replica, subId, { sub: subId, tag: h.sub.tag, seq, req, replica });
}

/** Lets answered queries and the delivery pump run. */
const settle = (): Promise<void> => Bun.sleep(1);

/** Moves the clock on and ticks the subscription, as the client's timer does. */
async function advance(h: Harness, ms: number): Promise<void> {
  h.host.nowMs += ms;
  h.sub.tick(h.host.nowMs);
  await settle();
}

describe("crash/none: only registered publishers", () => {
  test("a forged EVENTS frame from one replica, signed by an unregistered key, is not delivered", async () => {
    const h = subscribe(channel("net.links", "crash", "none"));
    send(h, 0, 1, signedRequest(STRANGER, "net.links", 1, ["forged: eth0 down"]));
    send(h, 1, 1, signedRequest(REGISTERED, "net.links", 1, ["eth0 up"]));
    await settle();
    expect(h.got).toEqual(["eth0 up"]);
    // The unknown key made the subscription ask the replicas again; they do not list it.
    expect(h.host.publisherQueries).toBe(1);
    for (let waited = 0; waited <= UNKNOWN_PUBLISHER_WAIT_MS; waited += REFRESH_INTERVAL_MS) await advance(h, REFRESH_INTERVAL_MS);
    expect(h.got).toEqual(["eth0 up"]);
    expect(h.signals).toEqual([{ t: "invalid", replica: 0, reason: "publisher-refused" }]);
    // Refused now: more copies of it cost no query and are dropped at once.
    const queries = h.host.publisherQueries;
    send(h, 0, 2, signedRequest(STRANGER, "net.links", 2, ["forged again"]));
    await advance(h, REFRESH_INTERVAL_MS);
    expect(h.host.publisherQueries).toBe(queries);
    expect(h.got).toEqual(["eth0 up"]);
    expect(h.sub.stats().invalidCopies).toBe(2);
  });

  test("a key registered after the subscription started: its copies wait for the list, then are delivered, none lost", async () => {
    const h = subscribe(channel("net.links", "crash", "none"));
    const late = SigningKey.generate();
    h.host.holdPublisherQueries = true;
    send(h, 2, 1, signedRequest(late, "net.links", 1, ["first"]));
    send(h, 3, 2, signedRequest(late, "net.links", 2, ["second"]));
    send(h, 2, 2, signedRequest(late, "net.links", 2, ["second"]));
    await settle();
    expect(h.got).toEqual([]);
    expect(h.host.publisherQueries).toBe(1);
    h.host.registered.push(late.publicKey);
    h.host.answerPublishers();
    await settle();
    expect(h.got).toEqual(["first", "second"]);
    expect(h.signals).toEqual([]);
  });
});

describe("crash/total: only registered publishers", () => {
  test("a forged batch at the next seq from one replica is held, then refused; the registered batch there is delivered", async () => {
    const h = subscribe(channel("ops.log", "crash", "total"), 1);
    send(h, 0, 1, signedRequest(STRANGER, "ops.log", 1, ["forged"]));
    await settle();
    expect(h.got).toEqual([]);
    send(h, 1, 1, signedRequest(REGISTERED, "ops.log", 7, ["disk replaced"]));
    send(h, 1, 2, signedRequest(REGISTERED, "ops.log", 8, ["disk rebuilt"]));
    await settle();
    expect(h.got).toEqual(["disk replaced", "disk rebuilt"]);
    expect(h.sub.nextSeq).toBe(3);
    for (let waited = 0; waited <= UNKNOWN_PUBLISHER_WAIT_MS; waited += REFRESH_INTERVAL_MS) await advance(h, REFRESH_INTERVAL_MS);
    expect(h.got).toEqual(["disk replaced", "disk rebuilt"]);
  });

  test("Byzantine channels ask for no list: f+1 replicas vouch for each batch", async () => {
    const h = subscribe(channel("sec.alerts", "byzantine", "total"), 1);
    const unlisted = SigningKey.generate();
    for (const replica of [0, 1]) send(h, replica, 1, signedRequest(unlisted, "sec.alerts", 1, ["alert"]));
    await settle();
    expect(h.got).toEqual(["alert"]);
    expect(h.host.publisherQueries).toBe(0);
  });
});

describe("PublisherRegistry", () => {
  const key = (i: number) => Uint8Array.from({ length: 32 }, (_, j) => (i + j) & 0xff);

  test("registered: true; unknown until a refresh that began after it appeared has waited long enough; then refused, for a while", () => {
    const registry = new PublisherRegistry([key(1)]);
    expect(registry.check(key(1), 0)).toBe(true);
    expect(registry.shouldRefresh(0)).toBe(false);
    expect(registry.check(key(2), 0)).toBe("unknown");
    expect(registry.shouldRefresh(0)).toBe(true);
    registry.begin(0);
    expect(registry.shouldRefresh(0)).toBe(false);
    registry.update([key(1)], 100);
    // Not long enough to refuse: still unknown, and another refresh is wanted, spaced.
    expect(registry.check(key(2), 100)).toBe("unknown");
    expect(registry.shouldRefresh(100)).toBe(false);
    expect(registry.shouldRefresh(REFRESH_INTERVAL_MS)).toBe(true);
    registry.begin(UNKNOWN_PUBLISHER_WAIT_MS);
    registry.update([key(1)], UNKNOWN_PUBLISHER_WAIT_MS);
    expect(registry.check(key(2), UNKNOWN_PUBLISHER_WAIT_MS)).toBe(false);
    expect(registry.shouldRefresh(UNKNOWN_PUBLISHER_WAIT_MS + REFRESH_INTERVAL_MS)).toBe(false);
    // Long after, a refused key may cause one more look (it may have been registered since).
    expect(registry.check(key(2), UNKNOWN_PUBLISHER_WAIT_MS + REFUSED_PUBLISHER_MS)).toBe("unknown");
  });

  test(`learnt again every ${PUBLISHERS_REFRESH_INTERVAL_MS} ms even when no unknown key asks; a key no longer listed leaves it`, () => {
    const registry = new PublisherRegistry([key(1)], 1_000);
    const due = 1_000 + PUBLISHERS_REFRESH_INTERVAL_MS;
    expect(registry.shouldRefresh(due - 1)).toBe(false);
    expect(registry.shouldRefresh(due)).toBe(true);
    registry.begin(due);
    registry.failed(due);
    // A failed periodic refresh waits for the next interval (no key waits for it).
    expect(registry.shouldRefresh(due + REFRESH_INTERVAL_MS)).toBe(false);
    expect(registry.shouldRefresh(due + PUBLISHERS_REFRESH_INTERVAL_MS)).toBe(true);
    registry.begin(due + PUBLISHERS_REFRESH_INTERVAL_MS);
    registry.update([], due + PUBLISHERS_REFRESH_INTERVAL_MS);
    // Unregistered since: no longer known (its copies are held, then refused).
    expect(registry.check(key(1), due + PUBLISHERS_REFRESH_INTERVAL_MS)).toBe("unknown");
  });

  test("a refresh replaces the list (a destroyed and re-created channel drops keys); a failed one keeps waiting", () => {
    const registry = new PublisherRegistry([key(1), key(2)]);
    registry.begin(0);
    registry.update([key(2)], 0);
    expect(registry.check(key(1), 0)).toBe("unknown");
    registry.begin(REFRESH_INTERVAL_MS);
    registry.failed(REFRESH_INTERVAL_MS);
    expect(registry.check(key(1), REFRESH_INTERVAL_MS)).toBe("unknown");
    registry.begin(UNKNOWN_PUBLISHER_WAIT_MS);
    registry.failed(UNKNOWN_PUBLISHER_WAIT_MS);
    expect(registry.check(key(1), UNKNOWN_PUBLISHER_WAIT_MS)).toBe(false);
  });

  test(`at most ${UNKNOWN_PUBLISHERS_MAX} keys wait at once: a flood of made-up keys cannot get a registered one refused`, () => {
    const registry = new PublisherRegistry([]);
    const registered = key(7);
    expect(registry.check(registered, 0)).toBe("unknown");
    // Made-up keys push it out of the wait; it is still unknown, never refused for them.
    for (let i = 0; i < 4 * UNKNOWN_PUBLISHERS_MAX; i++) expect(registry.check(key(100 + i), 0)).toBe("unknown");
    registry.begin(UNKNOWN_PUBLISHER_WAIT_MS);
    registry.update([registered], UNKNOWN_PUBLISHER_WAIT_MS);
    expect(registry.check(registered, UNKNOWN_PUBLISHER_WAIT_MS)).toBe(true);
    // The made-up keys that were still waiting are refused.
    expect(registry.check(key(100 + 4 * UNKNOWN_PUBLISHERS_MAX - 1), UNKNOWN_PUBLISHER_WAIT_MS)).toBe(false);
  });
});
