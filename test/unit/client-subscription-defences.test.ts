// One subscription against scripted replicas, one of them (3) compromised: what that
// replica can no longer do. Bad copies get it unsubscribed and asked again later, each time
// later, and their signals are rate-limited; a key unregistered from the channel stops
// being delivered (crash channels learn the list again; byzantine/none lets the key lapse);
// copies held before a live start are bounded in bytes; copies dropped below a forgotten
// dedupe range, or at the bounds of what is held for keys not yet vouched for, are
// signalled. Every clock here is the host's manual one.
import { describe, expect, test } from "bun:test";
import { type Canonical, decodeCanonical, encodeCanonical } from "../../wire/canonical.ts";
import type { Events } from "../../wire/schemas.ts";
import { PUBLISHERS_REFRESH_INTERVAL_MS, REFRESH_INTERVAL_MS, UNKNOWN_PUBLISHER_WAIT_MS } from "../../src/client/publisher-registry.ts";
import type { ChannelInfo } from "../../src/client/queries.ts";
import { RESUBSCRIBE_AFTER_INVALID } from "../../src/client/replica-subs.ts";
import { checkRequestSignature } from "../../src/client/shared-bodies.ts";
import { SIGNAL_INTERVAL_MS } from "../../src/client/signal-limiter.ts";
import { ClientSubscription, type ReceivedBatch, type SubscriptionSignal, VOUCH_LAPSE_INTERVAL_MS } from "../../src/client/subscription.ts";
import {
  DELIVERY_BUFFERED_BYTES_PER_REPLICA_MAX,
  DELIVERY_DEDUPE_RANGES_PER_PUBLISHER_MAX,
  DELIVERY_UNVOUCHED_PUBLISHERS_PER_REPLICA_MAX,
} from "../../src/core/voting/index.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { channel, ScriptedHost, send, signedRequest, subOk } from "./subscription-host.ts";

const START_TIMEOUT_MS = 60_000;
const F = 3;
const text = (b: Uint8Array): string => new TextDecoder().decode(b);

type Harness = { host: ScriptedHost; sub: ClientSubscription; got: string[]; signals: SubscriptionSignal[]; verified: () => number };

function subscribe(info: ChannelInfo, options: { from?: number; publishers?: Uint8Array[]; trusting?: boolean } = {}): Harness {
  const host = new ScriptedHost();
  host.registered = [...(options.publishers ?? [])];
  let verified = 0;
  // The client's signature check, counted; `trusting` takes every signature (thousands of copies).
  Object.assign(host, {
    verifyRequest: (body: Uint8Array, sig: Uint8Array, publisher: Uint8Array, version: number) => {
      verified++;
      return options.trusting === true || checkRequestSignature(body, sig, publisher, version);
    },
  });
  const got: string[] = [];
  const signals: SubscriptionSignal[] = [];
  const subscribeOptions = {
    onSignal: (s: SubscriptionSignal) => signals.push(s),
    ...(options.from === undefined ? {} : { from: options.from }),
  };
  const handler = (batch: ReceivedBatch) => {
    got.push(...batch.events.map(text));
  };
  const sub = new ClientSubscription(host, info, subscribeOptions, handler, START_TIMEOUT_MS, [...host.registered]);
  void sub.begin().catch(() => undefined);
  return { host, sub, got, signals, verified: () => verified };
}

/** A request whose signature does not verify: its last byte flipped. */
function forged(key: SigningKey, tag: string, seq: number): Events["req"] {
  const req = signedRequest(key, tag, seq, ["forged"]);
  const sig = req.sig.slice();
  sig[63] = (sig[63] as number) ^ 1;
  return { body: req.body, sig };
}

/** Lets answered queries and the delivery pump run. */
const settle = (): Promise<void> => Bun.sleep(1);

/** Moves the manual clock on and ticks, as the client's timer does. */
async function advance(h: Harness, ms: number): Promise<void> {
  h.host.nowMs += ms;
  h.sub.tick(h.host.nowMs);
  await settle();
}

const unsubscribedAt = (h: Harness, replica: number): number => h.host.unsubscribes.filter((u) => u.replica === replica).length;

/** Ticks every 250 ms until `replica` is sent a SUBSCRIBE again (at most a few minutes); how long that took. */
async function untilAskedAgain(h: Harness, replica: number): Promise<number> {
  const asked = h.host.subscribesTo(replica);
  let waited = 0;
  while (h.host.subscribesTo(replica) === asked && waited < 300_000) {
    await advance(h, 250);
    waited += 250;
  }
  return waited;
}

describe("a replica that sends copies failing their checks", () => {
  test("is unsubscribed at its first bad copy, so its next ones cost no check, and asked again later, each time later", async () => {
    const h = subscribe(channel("sec.alerts", "byzantine", "none"));
    for (const replica of [0, 1, 2, F]) subOk(h, replica);
    const publisher = SigningKey.generate();
    // Two replicas vouch for the key (a copy of a key not yet vouched for is checked only once f+1 replicas sent one).
    const real = signedRequest(publisher, "sec.alerts", 1, ["eth0 up"]);
    send(h, 0, 0, real);
    send(h, 1, 0, real);
    const checked = h.verified();
    // F floods copies with bad signatures: the first costs a check, the rest are not its subscription's any more.
    for (let seq = 2; seq <= 101; seq++) send(h, F, 0, forged(publisher, "sec.alerts", seq));
    expect(h.verified()).toBe(checked + 1);
    expect(unsubscribedAt(h, F)).toBe(1);
    expect(h.sub.stats().invalidCopies).toBe(1);
    // Asked again after the first delay, then after twice as long at each further bad copy.
    const waits: number[] = [];
    for (let strike = 0; strike < 3; strike++) {
      waits.push(await untilAskedAgain(h, F));
      subOk(h, F);
      send(h, F, 0, forged(publisher, "sec.alerts", 200 + strike));
    }
    const first = RESUBSCRIBE_AFTER_INVALID.initialDelayMs;
    expect(waits).toEqual([first, 2 * first, 4 * first]);
    // The others go on delivering.
    const next = signedRequest(publisher, "sec.alerts", 2, ["eth0 down"]);
    send(h, 0, 0, next);
    send(h, 1, 0, next);
    await settle();
    expect(h.got).toEqual(["eth0 up", "eth0 down"]);
  });

  test("a body this client cannot read (a newer version) is signalled, but no replica is struck for it", async () => {
    const h = subscribe(channel("sec.alerts", "byzantine", "none"));
    for (const replica of [0, 1, 2, F]) subOk(h, replica);
    const publisher = SigningKey.generate();
    // Every correct replica forwards a request of a body version this client does not know.
    const newer = signedRequest(publisher, "sec.alerts", 1, ["eth0 up"]);
    const fields = decodeCanonical(newer.body) as Record<string, Canonical>;
    const body = encodeCanonical({ ...fields, v: 3 });
    for (const replica of [0, 1, 2, F]) send(h, replica, 0, { body, sig: newer.sig });
    expect(h.signals).toContainEqual({ t: "invalid", replica: 0, reason: "malformed" });
    for (const replica of [0, 1, 2, F]) expect(unsubscribedAt(h, replica)).toBe(0);
    // Undecodable bytes alike (their signal is held back by the rate limit: replica 1 just had one).
    const invalidBefore = h.sub.stats().invalidCopies;
    send(h, 1, 0, { body: new Uint8Array([0xff, 0xff]), sig: newer.sig });
    expect(h.sub.stats().invalidCopies).toBe(invalidBefore + 1);
    expect(unsubscribedAt(h, 1)).toBe(0);
    // A bad signature still is the sender's doing (checked once the key is vouched for).
    const real = signedRequest(publisher, "sec.alerts", 3, ["eth1 up"]);
    send(h, 0, 0, real);
    send(h, 1, 0, real);
    send(h, 2, 0, forged(publisher, "sec.alerts", 2));
    expect(unsubscribedAt(h, 2)).toBe(1);
  });

  test("is signalled at most once per interval, with how many copies the signal stands for", async () => {
    const h = subscribe(channel("sec.alerts", "byzantine", "none"));
    for (const replica of [0, 1, 2, F]) subOk(h, replica);
    const publisher = SigningKey.generate();
    const real = signedRequest(publisher, "sec.alerts", 1, ["eth0 up"]);
    send(h, 0, 0, real);
    send(h, 1, 0, real);
    const invalid = () => h.signals.filter((s) => s.t === "invalid");
    send(h, F, 0, forged(publisher, "sec.alerts", 5));
    expect(invalid()).toEqual([{ t: "invalid", replica: F, reason: "bad-signature" }]);
    // Three more bad copies within the interval, each after F was asked again.
    for (let seq = 6; seq <= 8; seq++) {
      await untilAskedAgain(h, F);
      subOk(h, F);
      send(h, F, 0, forged(publisher, "sec.alerts", seq));
    }
    expect(h.host.nowMs - 1_000).toBeLessThan(SIGNAL_INTERVAL_MS);
    expect(invalid()).toHaveLength(1);
    // The interval over, what was held back goes out in one signal.
    while (h.host.nowMs - 1_000 < SIGNAL_INTERVAL_MS) await advance(h, 250);
    expect(invalid()).toEqual([
      { t: "invalid", replica: F, reason: "bad-signature" },
      { t: "invalid", replica: F, reason: "bad-signature", copies: 3 },
    ]);
  });
});

describe("a publisher key unregistered while the subscription runs stops being delivered", () => {
  test("crash/none: the registered publishers are learnt again periodically; a key no longer listed is refused", async () => {
    const registered = SigningKey.generate();
    const probe = SigningKey.generate();
    const h = subscribe(channel("net.links", "crash", "none"), { publishers: [registered.publicKey, probe.publicKey] });
    for (const replica of [0, 1, 2, F]) subOk(h, replica);
    send(h, 0, 0, signedRequest(probe, "net.links", 1, ["probe ok"]));
    await settle();
    expect(h.got).toEqual(["probe ok"]);
    // The probe key is unregistered (and stolen): correct replicas stop forwarding it.
    h.host.registered = [registered.publicKey];
    expect(h.host.publisherQueries).toBe(0);
    await advance(h, PUBLISHERS_REFRESH_INTERVAL_MS);
    expect(h.host.publisherQueries).toBe(1);
    // F forwards the stolen key's new batches: held while the list is asked again, then refused.
    send(h, F, 0, signedRequest(probe, "net.links", 2, ["forged: all clear"]));
    for (let waited = 0; waited <= UNKNOWN_PUBLISHER_WAIT_MS; waited += REFRESH_INTERVAL_MS) await advance(h, REFRESH_INTERVAL_MS);
    expect(h.got).toEqual(["probe ok"]);
    expect(h.signals).toContainEqual({ t: "invalid", replica: F, reason: "publisher-refused" });
    // A key the list may not have learnt yet is no fault of the sender's: F stays subscribed.
    expect(unsubscribedAt(h, F)).toBe(0);
  });

  test("byzantine/none: a key only one replica goes on sending lapses, and is no longer delivered", async () => {
    const probe = SigningKey.generate();
    const h = subscribe(channel("net.links", "byzantine", "none"));
    for (const replica of [0, 1, 2, F]) subOk(h, replica);
    const first = signedRequest(probe, "net.links", 1, ["probe ok"]);
    send(h, 0, 0, first);
    send(h, F, 0, first);
    await settle();
    expect(h.got).toEqual(["probe ok"]);
    // The key is unregistered: from now on only F forwards it.
    await advance(h, VOUCH_LAPSE_INTERVAL_MS);
    send(h, F, 0, signedRequest(probe, "net.links", 2, ["forged 2"]));
    await advance(h, VOUCH_LAPSE_INTERVAL_MS);
    send(h, F, 0, signedRequest(probe, "net.links", 3, ["forged 3"]));
    send(h, F, 0, signedRequest(probe, "net.links", 4, ["forged 4"]));
    await settle();
    // Delivered while the key was still vouched for; not once it lapsed.
    expect(h.got).toEqual(["probe ok", "forged 2"]);
  });
});

describe("copies held before a live total-order start", () => {
  test(`are bounded in bytes per replica (${DELIVERY_BUFFERED_BYTES_PER_REPLICA_MAX}): past it the replica is asked again`, () => {
    const h = subscribe(channel("ops.log", "byzantine", "total"));
    // Two SUB_OKs: a live start waits for 2f+1, so copies are held.
    subOk(h, 0, 1);
    subOk(h, 1, 1);
    const publisher = SigningKey.generate();
    const big = new Uint8Array(1 << 20);
    const copies = Math.floor(DELIVERY_BUFFERED_BYTES_PER_REPLICA_MAX / big.length);
    for (let seq = 1; seq < copies; seq++) send(h, 0, seq, signedRequest(publisher, "ops.log", seq, [big]));
    expect(unsubscribedAt(h, 0)).toBe(0);
    // With bodies and signatures, this one takes the replica past the bound.
    send(h, 0, copies, signedRequest(publisher, "ops.log", copies, [big]));
    expect(unsubscribedAt(h, 0)).toBe(1);
  });
});

describe("copies below a range a dedupe window forgot", () => {
  test("are signalled as an overflow (rate-limited), never dropped silently", async () => {
    const h = subscribe(channel("net.links", "byzantine", "none"), { trusting: true });
    for (const replica of [0, 1, 2, F]) subOk(h, replica);
    const publisher = SigningKey.generate();
    // A publisher whose seqs here have gaps: replicas 0 and 1 take the window past its bound.
    const odd = Array.from({ length: DELIVERY_DEDUPE_RANGES_PER_PUBLISHER_MAX + 10 }, (_, i) => 2 * i + 1);
    for (const seq of odd) {
      const req = { body: signedRequest(publisher, "net.links", seq, [`e${seq}`]).body, sig: new Uint8Array(64) };
      send(h, 0, 0, req);
      send(h, 1, 0, req);
    }
    const dropped = () => h.signals.filter((s) => s.t === "overflow");
    expect(dropped()).toEqual([]);
    // Replica 2 is slow: its copies of the first ranges come after the window forgot them.
    for (const seq of [3, 5, 7])
      send(h, 2, 0, { body: signedRequest(publisher, "net.links", seq, [`e${seq}`]).body, sig: new Uint8Array(64) });
    const signal = dropped()[0];
    expect(dropped()).toHaveLength(1);
    expect(signal).toMatchObject({ t: "overflow", source: "dedupe", replica: 2, droppedEvents: 1 });
    await advance(h, SIGNAL_INTERVAL_MS);
    expect(dropped()[1]).toMatchObject({ t: "overflow", source: "dedupe", replica: 2, droppedEvents: 2 });
  });
});

describe("copies held for keys not yet vouched for, dropped at a hold bound", () => {
  test("are signalled as an overflow (rate-limited), never dropped silently", async () => {
    const h = subscribe(channel("net.links", "byzantine", "none"), { trusting: true });
    for (const replica of [0, 1, 2, F]) subOk(h, replica);
    // Replica 0 alone sends one batch of each of more keys than it may hold evidence for.
    const keys = Array.from({ length: DELIVERY_UNVOUCHED_PUBLISHERS_PER_REPLICA_MAX + 3 }, () => SigningKey.generate());
    for (const key of keys) send(h, 0, 0, signedRequest(key, "net.links", 1, ["eth0 up"]));
    const dropped = () => h.signals.filter((s) => s.t === "overflow");
    expect(dropped()).toHaveLength(1);
    expect(dropped()[0]).toMatchObject({ t: "overflow", source: "held", replica: 0, droppedEvents: 1 });
    await advance(h, SIGNAL_INTERVAL_MS);
    expect(dropped()).toHaveLength(2);
    expect(dropped()[1]).toMatchObject({ t: "overflow", source: "held", replica: 0, droppedEvents: 2 });
    expect(h.got).toEqual([]);
  });
});

describe("byzantine/none: a replica replaying copies of keys of its own making", () => {
  test("65 pre-signed copies replayed round its allowance cost no signature check; a real publisher still gets through", async () => {
    const h = subscribe(channel("sec.ids", "byzantine", "none"), { from: 0 });
    for (const replica of [0, 1, 2, F]) subOk(h, replica);
    const pool = Array.from({ length: DELIVERY_UNVOUCHED_PUBLISHERS_PER_REPLICA_MAX + 1 }, (_, i) =>
      signedRequest(SigningKey.generate(), "sec.ids", 1, [`x${i}`]),
    );
    for (let i = 0; i < 5_000; i++) send(h, F, 0, pool[i % pool.length] as Events["req"]);
    expect(h.verified()).toBe(0);
    await settle();
    expect(h.got).toEqual([]);
    const publisher = SigningKey.generate();
    const real = signedRequest(publisher, "sec.ids", 1, ["eth0 up"]);
    send(h, 0, 0, real);
    send(h, 1, 0, real);
    await settle();
    expect(h.got).toEqual(["eth0 up"]);
    expect(h.verified()).toBe(2);
  });
});
