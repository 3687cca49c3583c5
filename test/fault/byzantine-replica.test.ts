/**
 * A compromised replica (f = 1) serves forged and altered events to subscribers; three
 * correct replicas carry the real ones. Subscribers of Byzantine channels must deliver
 * exactly the real events, at their real sequence numbers.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { FitbClient } from "../../src/client/index.ts";
import { sign } from "../../src/crypto/ed25519.ts";
import { loadPublicKeyFile, loadSigningKeyFile, SigningKey } from "../../src/crypto/keys.ts";
import { encodeRequestBody, type Request, type SignedRequest } from "../../wire/schemas.ts";
import { requestSigningInput } from "../../wire/session.ts";
import { clientFor, collect, createChannels, encode, waitForCount } from "../integration/client-util.ts";
import { startCluster, type TestCluster, waitListening } from "../integration/harness.ts";
import { type EvilReplica, type ForgedBatch, startEvilReplica } from "./evil-replica.ts";
import { waitFor } from "../helpers/wait.ts";

const EVIL_ID = 3;

function signedBy(key: SigningKey, request: Request): SignedRequest {
  const body = encodeRequestBody(request);
  return { body, sig: sign(key, requestSigningInput(body)) };
}

describe("a Byzantine replica serving forged events", () => {
  let cluster: TestCluster;
  let evil: EvilReplica;
  let admin: FitbClient;
  let publisher: FitbClient;
  let subscriber: FitbClient;
  let publisherKey: Uint8Array;
  const forgeries: ForgedBatch[] = [];

  beforeAll(async () => {
    cluster = await startCluster({ start: false });
    for (let id = 0; id < cluster.n; id++) if (id !== EVIL_ID) cluster.start(id);
    const evilKey = loadSigningKeyFile(join(cluster.dir, `replica-${EVIL_ID}.key`)).key;
    evil = startEvilReplica({ id: EVIL_ID, port: cluster.basePort + EVIL_ID, key: evilKey, forgeries: () => forgeries, next: () => 1 });
    // The clients give up at once on refused connections: every replica listens first.
    await waitListening(
      cluster,
      [0, 1, 2, 3].filter((id) => id !== EVIL_ID),
    );
    admin = clientFor(cluster, cluster.adminKey);
    publisher = clientFor(cluster, cluster.clientKey);
    subscriber = clientFor(cluster, cluster.clientKey);
    publisherKey = loadPublicKeyFile(`${cluster.clientKey}.pub`);
    await createChannels(admin, publisherKey);
  }, 60_000);

  afterAll(async () => {
    for (const client of [admin, publisher, subscriber]) client?.close();
    evil?.stop();
    await cluster?.stop();
  });

  /** Forgeries aimed at `tag`'s first seqs: altered payloads, a wrong signer, an unregistered key. */
  function forge(tag: string): void {
    forgeries.length = 0;
    const realKey = loadSigningKeyFile(cluster.clientKey).key;
    const attacker = SigningKey.generate();
    const base = { v: 1 as const, client: publisherKey, seq: 1, span: 1, ts: Date.now() };
    // 1. A request the publisher really signed, with its payload altered afterwards.
    const genuine = signedBy(realKey, { ...base, op: { t: "pub", tag, events: [encode("real payload")] } });
    const altered = encodeRequestBody({ ...base, op: { t: "pub", tag, events: [encode("FORGED altered")] } });
    forgeries.push({ seq: 1, req: { body: altered, sig: genuine.sig } });
    // 2. The publisher's identity claimed, signed by another key.
    forgeries.push({ seq: 1, req: signedBy(attacker, { ...base, op: { t: "pub", tag, events: [encode("FORGED identity")] } }) });
    // 3. Validly signed by a key that was never registered on the channel.
    forgeries.push({
      seq: 1,
      req: signedBy(attacker, { ...base, client: attacker.publicKey, op: { t: "pub", tag, events: [encode("FORGED unregistered")] } }),
    });
  }

  for (const tag of ["sec.alerts", "sec.ids"] as const) {
    test(`${tag}: subscribers deliver only the real events`, async () => {
      forge(tag);
      const before = evil.subscriptions;
      const received = await collect(subscriber, tag);
      const total = 20;
      for (let i = 0; i < total; i++) await publisher.publish(tag, [encode(`real ${i}`)]);
      await waitForCount(received.events, total, tag);
      // The evil replica was asked and did answer with its forgeries.
      expect(evil.subscriptions).toBeGreaterThan(before);
      // An event published after the others: once it is delivered, every copy that came
      // before it (forgeries included) has been judged.
      await publisher.publish(tag, [encode("end")]);
      await waitFor(`${tag}: the end marker`, () => received.events.some((e) => e.payload === "end"));
      const payloads = received.events.map((e) => e.payload).filter((p) => p !== "end");
      if (tag === "sec.alerts") {
        expect(payloads).toEqual(Array.from({ length: total }, (_, i) => `real ${i}`));
        expect(received.events.map((e) => e.seq)).toEqual(Array.from({ length: total + 1 }, (_, i) => i + 1));
      } else {
        // Unordered: first valid copy per publisher seq. An unregistered key's correctly
        // signed event is not a forgery of anyone's, but it must never pass as this publisher's.
        const real = received.events.filter((e) => !e.payload.startsWith("FORGED unregistered") && e.payload !== "end");
        expect(real.map((e) => e.payload).sort()).toEqual(Array.from({ length: total }, (_, i) => `real ${i}`).sort());
        expect(payloads.some((p) => p === "FORGED altered" || p === "FORGED identity")).toBe(false);
      }
      await received.close();
    }, 60_000);
  }

  test("shared frames naming every subscription of a connection, and one it never opened: each subscription delivers only the real events", async () => {
    forge("sec.alerts");
    const sharedBefore = evil.sharedFrames;
    // Two subscriptions of sec.alerts and one of sec.ids on one client: the evil replica's
    // shared frames of sec.alerts forgeries name all three.
    const first = await collect(subscriber, "sec.alerts");
    const second = await collect(subscriber, "sec.alerts");
    const other = await collect(subscriber, "sec.ids");
    await waitFor("the evil replica sent shared frames", () => evil.sharedFrames > sharedBefore);
    const start = (await publisher.publish("sec.alerts", [encode("shared 0")])).channelSeq as number;
    const total = 10;
    for (let i = 1; i < total; i++) await publisher.publish("sec.alerts", [encode(`shared ${i}`)]);
    await publisher.publish("sec.alerts", [encode("end")]);
    for (const received of [first, second]) {
      await waitFor("sec.alerts: the end marker", () => received.events.some((e) => e.payload === "end"));
      const real = received.events.filter((e) => e.seq >= start && e.payload !== "end");
      expect(real.map((e) => e.payload)).toEqual(Array.from({ length: total }, (_, i) => `shared ${i}`));
      expect(received.events.some((e) => e.payload.startsWith("FORGED"))).toBe(false);
    }
    // Nothing was published to sec.ids: its subscription delivered none of the sec.alerts forgeries.
    expect(other.events).toEqual([]);
    for (const received of [first, second, other]) await received.close();
  }, 60_000);
});
