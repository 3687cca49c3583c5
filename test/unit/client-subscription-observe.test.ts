// What a subscription shows beyond the batches it delivers: on $sys.events the replicas'
// signed reports are voted on, so a group event reaches the caller once f+1 replicas
// reported it (a lone liar's report, one signed by a replica claiming another's id, or one
// replica's report replayed by another, never does); and an `onCopy` observer sees every replica copy under the key the
// delivered batch carries, so a caller can count the replicas that sent what it got.
import { describe, expect, test } from "bun:test";
import type { Events } from "../../wire/schemas.ts";
import type { ChannelInfo } from "../../src/client/queries.ts";
import { ClientSubscription, type CopySeen, type ReceivedBatch, type SubscriptionSignal } from "../../src/client/subscription.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { channel, ScriptedHost, signedRequest } from "./subscription-host.ts";

const START_TIMEOUT_MS = 60_000;
const text = (b: Uint8Array): string => new TextDecoder().decode(b);
const settle = (): Promise<void> => Bun.sleep(1);

type Harness = { host: ScriptedHost; sub: ClientSubscription; got: ReceivedBatch[]; copies: CopySeen[]; signals: SubscriptionSignal[] };

function subscribe(info: ChannelInfo, replicaKeys: readonly Uint8Array[] = [], observe = true, publishers = replicaKeys): Harness {
  const host = new ScriptedHost();
  const got: ReceivedBatch[] = [];
  const copies: CopySeen[] = [];
  const signals: SubscriptionSignal[] = [];
  const options = {
    onSignal: (s: SubscriptionSignal) => signals.push(s),
    ...(observe ? { onCopy: (c: CopySeen) => copies.push(c) } : {}),
  };
  const sub = new ClientSubscription(host, info, options, (batch) => void got.push(batch), START_TIMEOUT_MS, publishers, replicaKeys);
  void sub.begin().catch(() => undefined);
  for (const replica of [0, 1, 2, 3]) {
    const subId = host.subIdAt(replica);
    sub.onSubOk(replica, subId, info.order === "total" ? { sub: subId, replica, next: 1 } : { sub: subId, replica });
  }
  return { host, sub, got, copies, signals };
}

function send(h: Harness, replica: number, seq: number, req: Events["req"]): void {
  const subId = h.host.subIdAt(replica);
  h.sub.onEvents(replica, subId, { sub: subId, tag: h.sub.tag, seq, req, replica });
}

describe("$sys.events through a subscription", () => {
  const keys = [0, 1, 2, 3].map(() => SigningKey.generate());
  const replicaKeys = keys.map((key) => key.publicKey);
  let reportSeq = 1_000;
  /** A report signed by `signer`, as that replica's SysChannels publishes it. */
  const report = (signer: number, fields: Record<string, unknown>) =>
    signedRequest(keys[signer] as SigningKey, "$sys.events", ++reportSeq, [JSON.stringify({ ts: reportSeq, replica: signer, ...fields })]);

  test("a view change reported by f+1 replicas is delivered once; a lone liar's is not", async () => {
    const h = subscribe(channel("$sys.events", "crash", "none"), replicaKeys);
    // Replica 3 lies alone: a view nobody installed, said twice, and a report in replica 0's name.
    send(h, 3, 0, report(3, { kind: "view-installed", view: 9, leader: 3 }));
    send(h, 3, 0, report(3, { kind: "view-installed", view: 9, leader: 3 }));
    send(h, 3, 0, report(3, { kind: "view-installed", view: 9, leader: 3, replica: 0 }));
    await settle();
    expect(h.got).toEqual([]);
    expect(h.signals).toContainEqual(expect.objectContaining({ t: "invalid", replica: 3 }));
    // Each correct replica's report reaches the subscriber over its own session; a copy a
    // replica sends again is the same report, counted once.
    send(h, 1, 0, report(1, { kind: "view-installed", view: 1, leader: 1, reason: "mine" }));
    await settle();
    expect(h.got).toEqual([]);
    const second = report(2, { kind: "view-installed", view: 1, leader: 1 });
    send(h, 2, 0, second);
    send(h, 2, 0, second);
    send(h, 0, 0, report(0, { kind: "view-installed", view: 1, leader: 1 }));
    await settle();
    expect(h.got).toHaveLength(1);
    const [event] = h.got as [ReceivedBatch];
    expect(JSON.parse(text(event.events[0] as Uint8Array))).toEqual({
      kind: "view-installed",
      view: 1,
      leader: 1,
      reporters: [1, 2],
      vouched: 2,
    });
    expect(event.pubSeq).toBe(1);
    expect(event.publisher).toEqual(replicaKeys[2] as Uint8Array);
    // The observer saw each replica's report once per copy, under the delivered event's key.
    const reporters = new Set(h.copies.filter((c) => c.key === event.copyKey).map((c) => c.replica));
    expect([...reporters].sort()).toEqual([0, 1, 2]);
  });

  test("a report carried by a replica whose key is not in the cluster file is refused, and said, naming that replica", async () => {
    const h = subscribe(channel("$sys.events", "crash", "none"), replicaKeys.slice(0, 2), true, replicaKeys);
    send(h, 0, 0, report(0, { kind: "peer-up", peer: 2 }));
    send(h, 2, 0, report(2, { kind: "peer-up", peer: 1 }));
    send(h, 3, 0, report(3, { kind: "peer-up", peer: 2 }));
    await settle();
    expect(h.got).toEqual([]);
    const invalid = h.signals.filter((s) => s.t === "invalid");
    // Replicas 2 and 3 sent reports signed by keys that are no member's the client knows.
    expect(invalid.map((s) => (s.t === "invalid" ? s.replica : "?"))).toEqual([2, 3]);
    expect(h.sub.stats().invalidCopies).toBe(2);
  });
});

describe("onCopy: the replicas that sent what was delivered", () => {
  test("byzantine/total: each replica's copy under the delivered batch's key; a different copy under another", async () => {
    const h = subscribe(channel("sec.alerts", "byzantine", "total"));
    const publisher = SigningKey.generate();
    const batch = signedRequest(publisher, "sec.alerts", 1, ["disk failed"]);
    const forged = signedRequest(publisher, "sec.alerts", 2, ["disk fine"]);
    send(h, 0, 1, batch);
    send(h, 3, 1, forged);
    send(h, 1, 1, batch);
    await settle();
    expect(h.got.map((b) => text(b.events[0] as Uint8Array))).toEqual(["disk failed"]);
    send(h, 2, 1, batch);
    const key = h.got[0]?.copyKey as string;
    expect(key).toStartWith("1/");
    expect(h.copies.filter((c) => c.key === key).map((c) => c.replica)).toEqual([0, 1, 2]);
    expect(h.copies.find((c) => c.replica === 3)?.key).not.toBe(key);
  });

  test("unordered: the key is the signed request's, whatever seq a replica puts on it; without an observer, no key", async () => {
    const h = subscribe(channel("net.links", "crash", "none"), [], true);
    const quiet = subscribe(channel("net.links", "crash", "none"), [], false);
    const publisher = SigningKey.generate();
    for (const s of [h, quiet]) s.host.registered = [publisher.publicKey];
    const batch = signedRequest(publisher, "net.links", 5, ["eth0 down"]);
    for (const s of [h, quiet]) {
      s.sub.tick(s.host.nowMs);
      await settle();
      send(s, 0, 0, batch);
      send(s, 2, 17, batch);
    }
    await settle();
    for (const s of [h, quiet]) expect(s.got.map((b) => text(b.events[0] as Uint8Array))).toEqual(["eth0 down"]);
    expect(quiet.got[0]?.copyKey).toBeUndefined();
    const key = h.got[0]?.copyKey as string;
    expect(key).toMatch(/^[0-9a-f]{64}$/);
    expect(h.copies).toEqual([
      { replica: 0, key },
      { replica: 2, key },
    ]);
  });
});
