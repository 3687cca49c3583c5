// On `$sys.*` channels a replica sends only what it reports itself (wire/PROTOCOL.md 2.1),
// so a copy signed by another member's key is another replica's report replayed over this
// session: a compromised replica must not have old signed reports of others delivered as
// their votes, nor withdraw a correct replica's pending vote with an older opposite one.
// Such a copy is dropped, said, and held against the replica that carried it.
import { describe, expect, test } from "bun:test";
import { encodeCanonical } from "../../wire/canonical.ts";
import type { Events } from "../../wire/schemas.ts";
import { DOMAIN_REQUEST } from "../../wire/types.ts";
import { ClientSubscription, type ReceivedBatch, type SubscriptionSignal } from "../../src/client/subscription.ts";
import { signDomain } from "../../src/crypto/ed25519.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { channel, ScriptedHost } from "./subscription-host.ts";

const NOW = 1_700_000_000_000;
const text = (b: Uint8Array): string => new TextDecoder().decode(b);

/** A report as replica `id`'s SysChannels signs it: seq and ts as given, the payload with `ts` and `replica`. */
function report(key: SigningKey, tag: string, id: number, seq: number, ts: number, fields: Record<string, unknown>): Events["req"] {
  const event = new TextEncoder().encode(JSON.stringify({ ts, replica: id, ...fields }));
  const body = encodeCanonical({ v: 1, client: key.publicKey, seq, span: 1, ts, op: { t: "pub", tag, events: [event] } });
  return { body, sig: signDomain(key, DOMAIN_REQUEST, body) };
}

/** A live subscription to a `$sys.*` tag at replicas 0-3, each member's key known; `via` sends a copy over one replica's session. */
async function subscribeSys(tag: string, publishersOf: (keys: readonly Uint8Array[]) => readonly Uint8Array[]) {
  const keys = [0, 1, 2, 3].map(() => SigningKey.generate());
  const publicKeys = keys.map((key) => key.publicKey);
  const host = new ScriptedHost();
  host.nowMs = NOW;
  const got: ReceivedBatch[] = [];
  const signals: SubscriptionSignal[] = [];
  const options = { onSignal: (s: SubscriptionSignal) => void signals.push(s) };
  const sub = new ClientSubscription(
    host,
    channel(tag, "crash", "none"),
    options,
    (b) => void got.push(b),
    60_000,
    publishersOf(publicKeys),
    publicKeys,
  );
  const started = sub.begin();
  for (const r of [0, 1, 2, 3]) sub.onSubOk(r, host.subIdAt(r), { sub: host.subIdAt(r), replica: r });
  await started;
  const via = (replica: number, req: Events["req"]): void =>
    sub.onEvents(replica, host.subIdAt(replica), { sub: host.subIdAt(replica), tag, seq: 0, req, replica });
  const delivered = async (): Promise<unknown[]> => {
    await Bun.sleep(2);
    return got.map((b) => JSON.parse(text(b.events[0] as Uint8Array)));
  };
  return { keys, host, sub, signals, via, delivered };
}

describe("$sys.events: a replica replaying others' signed reports", () => {
  test("alone, replica 2 replays replicas 0 and 1's old peer-down reports: not delivered, and replica 2 is held to account", async () => {
    const { keys, host, sub, signals, via, delivered } = await subscribeSys("$sys.events", (k) => k);
    const old0 = report(keys[0] as SigningKey, "$sys.events", 0, 41, NOW - 300_000, { kind: "peer-down", peer: 3, reason: "x" });
    const old1 = report(keys[1] as SigningKey, "$sys.events", 1, 17, NOW - 300_000, { kind: "peer-down", peer: 3, reason: "x" });
    const subscribesTo2 = host.subscribesTo(2);
    via(2, old0);
    via(2, old1);
    expect(await delivered()).toEqual([]);
    // Said once, naming the carrier; and replica 2 is unsubscribed, asked again later.
    const invalid = signals.filter((s) => s.t === "invalid");
    expect(invalid).toHaveLength(1);
    expect(invalid[0]).toMatchObject({ t: "invalid", replica: 2 });
    expect(invalid[0]?.t === "invalid" && invalid[0].reason).toContain("signed by replica 0, not by replica 2");
    expect(host.unsubscribes.map((u) => u.replica)).toEqual([2]);
    expect(sub.stats().invalidCopies).toBe(1);
    expect(host.subscribesTo(2)).toBe(subscribesTo2);
    // The replayed copy took nothing from replica 0's own: the same report over its own session still counts.
    via(0, old0);
    via(1, report(keys[1] as SigningKey, "$sys.events", 1, 18, NOW + 5, { kind: "peer-down", peer: 3, reason: "y" }));
    expect(await delivered()).toEqual([{ kind: "peer-down", peer: 3, reporters: [0, 1], vouched: 2 }]);
    await sub.close();
  });

  test("replica 2 cannot withdraw replica 0's pending vote by replaying 0's older opposite report", async () => {
    const { keys, sub, via, delivered } = await subscribeSys("$sys.events", (k) => k);
    const older0 = report(keys[0] as SigningKey, "$sys.events", 0, 40, NOW - 200_000, { kind: "peer-up", peer: 3 });
    via(0, report(keys[0] as SigningKey, "$sys.events", 0, 41, NOW + 10, { kind: "peer-down", peer: 3, reason: "x" }));
    via(2, older0);
    via(1, report(keys[1] as SigningKey, "$sys.events", 1, 17, NOW + 20, { kind: "peer-down", peer: 3, reason: "x" }));
    expect(await delivered()).toEqual([{ kind: "peer-down", peer: 3, reporters: [0, 1], vouched: 2 }]);
    await sub.close();
  });

  test("after a membership change the members' new keys are the ones each must sign with", async () => {
    const { keys, host, sub, via, delivered } = await subscribeSys("$sys.events", (k) => k);
    // Replica 1's key was rotated; the subscription learns the members' keys anew.
    const rotated = SigningKey.generate();
    const memberKeys = new Map(keys.map((key, id) => [id, id === 1 ? rotated.publicKey : key.publicKey]));
    sub.onGroupChange([1], memberKeys);
    host.ready.add(1);
    sub.onReplicaReady(1);
    sub.onSubOk(1, host.subIdAt(1), { sub: host.subIdAt(1), replica: 1 });
    // Replica 1's reports under its old key are no longer its own.
    via(0, report(keys[0] as SigningKey, "$sys.events", 0, 50, NOW + 1, { kind: "view-installed", view: 2, leader: 2 }));
    via(1, report(keys[1] as SigningKey, "$sys.events", 1, 50, NOW + 2, { kind: "view-installed", view: 2, leader: 2 }));
    expect(await delivered()).toEqual([]);
    expect(sub.stats().invalidCopies).toBe(1);
    await sub.close();
  });
});

describe("$sys.replica.<id>: another replica's health report", () => {
  test("replica 1 replaying replica 0's signed health report is not delivered as replica 0's word; replica 0's own is", async () => {
    const tag = "$sys.replica.0";
    const { keys, host, sub, via, delivered } = await subscribeSys(tag, (k) => [k[0] as Uint8Array]);
    const health = report(keys[0] as SigningKey, tag, 0, 7, NOW - 5_000, { kind: "health", lag: 0 });
    via(1, health);
    expect(await delivered()).toEqual([]);
    expect(host.unsubscribes.map((u) => u.replica)).toEqual([1]);
    via(0, health);
    expect(await delivered()).toEqual([{ ts: NOW - 5_000, replica: 0, kind: "health", lag: 0 }]);
    await sub.close();
  });
});
