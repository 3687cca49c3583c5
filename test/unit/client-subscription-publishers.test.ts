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
import { type ChannelInfo, type PublisherListing, publisherListingRule } from "../../src/client/queries.ts";
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

describe("crash/none: the periodic refresh answered by replicas behind a registration", () => {
  test("a key learnt at seq 50 is still delivered after a refresh that replicas at seq 49 answered", async () => {
    const h = subscribe(channel("net.links", "crash", "none"));
    const late = SigningKey.generate();
    // Registered at seq 50; the replicas that answered the unknown key's query had executed it.
    h.host.registered = [REGISTERED.publicKey, late.publicKey];
    h.host.registeredAt = 50;
    send(h, 0, 1, signedRequest(late, "net.links", 1, ["first"]));
    await settle();
    expect(h.got).toEqual(["first"]);
    // The periodic refresh asks for the client's floor only: f+1 replicas still at seq 49 answer it.
    h.host.registered = [REGISTERED.publicKey];
    h.host.registeredAt = 49;
    const queries = h.host.publisherQueries;
    await advance(h, PUBLISHERS_REFRESH_INTERVAL_MS);
    expect(h.host.publisherQueries).toBe(queries + 1);
    send(h, 1, 2, signedRequest(late, "net.links", 2, ["second"]));
    await settle();
    expect(h.got).toEqual(["first", "second"]);
    expect(h.host.publisherQueries).toBe(queries + 1);
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
  /** A refresh's answer: `publishers` as f+1 replicas listed them, the (f+1)-th highest of whose `at` is `at`. */
  const listed = (publishers: Uint8Array[], at = 0): PublisherListing => ({ publishers, at });

  test("registered: true; unknown until a refresh that began after it appeared has waited long enough; then refused, for a while", () => {
    const registry = new PublisherRegistry([key(1)]);
    expect(registry.check(key(1), 0)).toBe(true);
    expect(registry.shouldRefresh(0)).toBe(false);
    expect(registry.check(key(2), 0)).toBe("unknown");
    expect(registry.shouldRefresh(0)).toBe(true);
    registry.begin(0);
    expect(registry.shouldRefresh(0)).toBe(false);
    registry.update(listed([key(1)]), 100);
    // Not long enough to refuse: still unknown, and another refresh is wanted, spaced.
    expect(registry.check(key(2), 100)).toBe("unknown");
    expect(registry.shouldRefresh(100)).toBe(false);
    expect(registry.shouldRefresh(REFRESH_INTERVAL_MS)).toBe(true);
    registry.begin(UNKNOWN_PUBLISHER_WAIT_MS);
    registry.update(listed([key(1)]), UNKNOWN_PUBLISHER_WAIT_MS);
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
    registry.update(listed([]), due + PUBLISHERS_REFRESH_INTERVAL_MS);
    // Unregistered since: no longer known (its copies are held, then refused).
    expect(registry.check(key(1), due + PUBLISHERS_REFRESH_INTERVAL_MS)).toBe("unknown");
  });

  test("a key registered moments ago stays while the replicas answering have yet to execute its registration", () => {
    // Learnt at subscribing from a listing at seq 50 (replicas that executed the registration).
    const registry = new PublisherRegistry(listed([key(1)], 50), 0);
    const due = PUBLISHERS_REFRESH_INTERVAL_MS;
    registry.begin(due);
    // The periodic refresh asks only for the client's floor: f+1 lagging replicas (at 49) do not list it yet.
    registry.update(listed([], 49), due);
    expect(registry.check(key(1), due)).toBe(true);
    // A key learnt from an unknown copy, at seq 70, alike.
    expect(registry.check(key(2), due)).toBe("unknown");
    registry.begin(due + REFRESH_INTERVAL_MS);
    registry.update(listed([key(1), key(2)], 70), due + REFRESH_INTERVAL_MS);
    expect(registry.check(key(2), due + REFRESH_INTERVAL_MS)).toBe(true);
    registry.begin(2 * due);
    registry.update(listed([key(1)], 69), 2 * due);
    expect(registry.check(key(2), 2 * due)).toBe(true);
    // Unregistered: a listing at least as fresh as the freshest that listed a key drops it.
    registry.begin(3 * due);
    registry.update(listed([key(2)], 70), 3 * due);
    expect(registry.check(key(1), 3 * due)).toBe("unknown");
    expect(registry.check(key(2), 3 * due)).toBe(true);
  });

  test("a listing's `at` is the (f+1)-th highest of the answers': one replica's huge `at` does not make it", () => {
    const rule = publisherListingRule(4, 1, "publishers net.links");
    const answer = (replica: number, keys: Uint8Array[], at: number) => ({
      id: 1,
      replica,
      ok: true as const,
      res: { publishers: keys },
      at,
    });
    expect(rule.add(3, answer(3, [key(1)], Number.MAX_SAFE_INTEGER))).toBeNull();
    expect(rule.add(0, answer(0, [key(1)], 50))).toBeNull();
    expect(rule.add(1, answer(1, [], 49))).toEqual({ ok: true, value: { publishers: [key(1)], at: 50 } });
  });

  test("a refresh replaces the list (a destroyed and re-created channel drops keys); a failed one keeps waiting", () => {
    const registry = new PublisherRegistry([key(1), key(2)]);
    registry.begin(0);
    registry.update(listed([key(2)]), 0);
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
    registry.update(listed([registered]), UNKNOWN_PUBLISHER_WAIT_MS);
    expect(registry.check(registered, UNKNOWN_PUBLISHER_WAIT_MS)).toBe(true);
    // The made-up keys that were still waiting are refused.
    expect(registry.check(key(100 + 4 * UNKNOWN_PUBLISHERS_MAX - 1), UNKNOWN_PUBLISHER_WAIT_MS)).toBe(false);
  });
});
