// A subscription follows the group the client follows (membership-follow.ts): a member
// added later is subscribed from the next undelivered seq, a removed one is unsubscribed
// and its copies stop counting, and delivery needs f+1 copies of the group's f now.
import { expect, test } from "bun:test";
import type { Events } from "../../wire/schemas.ts";
import { ClientSubscription, type ReceivedBatch, type SubscribeOptions, type SubscriptionSignal } from "../../src/client/subscription.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { channel, ScriptedHost, signedRequest } from "./subscription-host.ts";

const text = (b: Uint8Array): string => new TextDecoder().decode(b);
const TAG = "net.links";

test("a total-order subscription grows to 7 replicas with f=2 and shrinks back, without gap or duplicate", async () => {
  const host = new ScriptedHost();
  const got: ReceivedBatch[] = [];
  const sub = new ClientSubscription(host, channel(TAG, "byzantine", "total"), { from: 1 }, (b) => void got.push(b), 60_000);
  const started = sub.begin();
  const ok = (replica: number): void => {
    const subId = host.subIdAt(replica);
    sub.onSubOk(replica, subId, { sub: subId, replica, next: 1 });
  };
  for (const replica of [0, 1, 2, 3]) ok(replica);
  await started;
  const publisher = SigningKey.generate();
  const batches = [1, 2, 3].map((seq) => signedRequest(publisher, TAG, seq, [`e${seq}`]));
  const send = (replica: number, seq: number): void => {
    const subId = host.subIdAt(replica);
    const body: Events = { sub: subId, tag: TAG, seq, req: batches[seq - 1] as Events["req"], replica };
    sub.onEvents(replica, subId, body);
  };
  const delivered = async (): Promise<string[]> => {
    await Bun.sleep(1);
    return got.flatMap((b) => b.events.map(text));
  };
  send(0, 1);
  send(1, 1);
  expect(await delivered()).toEqual(["e1"]);

  // The group grows to 7 with f=2: the new members are subscribed from seq 2 once up.
  host.memberIds = [0, 1, 2, 3, 4, 5, 6];
  host.f = 2;
  sub.onGroupChange([]);
  for (const replica of [4, 5, 6]) {
    host.ready.add(replica);
    sub.onReplicaReady(replica);
    expect(host.subscribes.at(-1)).toMatchObject({ replica, from: 2 });
    ok(replica);
  }
  send(0, 2);
  send(1, 2);
  expect(await delivered()).toEqual(["e1"]);
  send(4, 2);
  expect(await delivered()).toEqual(["e1", "e2"]);

  // Shrinks back to the first 4 with f=1: 4..6 are unsubscribed and no longer count.
  send(4, 3);
  send(5, 3);
  host.memberIds = [0, 1, 2, 3];
  host.f = 1;
  const unsubscribed = host.unsubscribes.length;
  sub.onGroupChange([4, 5, 6]);
  expect(host.unsubscribes.slice(unsubscribed).map((u) => u.replica)).toEqual([4, 5, 6]);
  send(2, 3);
  expect(await delivered()).toEqual(["e1", "e2"]);
  send(3, 3);
  expect(await delivered()).toEqual(["e1", "e2", "e3"]);
  expect(sub.nextSeq).toBe(4);
  await sub.close();
});

test("$sys.events counts reports by the members' keys and f after a change: a new member's report counts, f+1 of the new f", async () => {
  const keys = [0, 1, 2, 3, 4, 5, 6].map(() => SigningKey.generate());
  const host = new ScriptedHost();
  const got: ReceivedBatch[] = [];
  const publicKeys = keys.map((key) => key.publicKey);
  const info = channel("$sys.events", "crash", "none");
  const sub = new ClientSubscription(host, info, {}, (b) => void got.push(b), 60_000, publicKeys, publicKeys.slice(0, 4));
  const started = sub.begin();
  const ok = (replica: number): void => {
    const subId = host.subIdAt(replica);
    sub.onSubOk(replica, subId, { sub: subId, replica });
  };
  for (const replica of [0, 1, 2, 3]) ok(replica);
  await started;
  let seq = 0;
  const report = (signer: number, fields: Record<string, unknown>): Events["req"] =>
    signedRequest(keys[signer] as SigningKey, "$sys.events", ++seq, [JSON.stringify({ ts: seq, replica: signer, ...fields })]);
  const send = (via: number, req: Events["req"]): void => {
    const subId = host.subIdAt(via);
    sub.onEvents(via, subId, { sub: subId, tag: "$sys.events", seq: 0, req, replica: via });
  };
  // Replica 0 reports before the switch; under f=1 one more report would deliver it.
  send(0, report(0, { kind: "view-installed", view: 3, leader: 3 }));
  host.memberIds = [0, 1, 2, 3, 4, 5, 6];
  host.f = 2;
  sub.onGroupChange([], new Map(publicKeys.map((key, id) => [id, key])));
  for (const replica of [4, 5, 6]) {
    host.ready.add(replica);
    sub.onReplicaReady(replica);
    ok(replica);
  }
  send(4, report(4, { kind: "view-installed", view: 3, leader: 3 }));
  await Bun.sleep(1);
  expect(got).toEqual([]);
  send(5, report(5, { kind: "view-installed", view: 3, leader: 3 }));
  await Bun.sleep(1);
  expect(got).toHaveLength(1);
  expect(JSON.parse(text((got[0] as ReceivedBatch).events[0] as Uint8Array))).toMatchObject({ reporters: [0, 4, 5], vouched: 3 });
  await sub.close();
});

/**
 * A $sys.events subscription of a 7-member group with f=2 (replicas 4-6 ready), subscribed
 * at every member; `send(signer, view)` delivers a view-installed report signed by `signer`.
 */
async function eventsSubOfSeven(options: SubscribeOptions = {}) {
  const keys = [0, 1, 2, 3, 4, 5, 6].map(() => SigningKey.generate());
  const publicKeys = keys.map((key) => key.publicKey);
  const host = new ScriptedHost();
  host.memberIds = [0, 1, 2, 3, 4, 5, 6];
  host.f = 2;
  for (const replica of [4, 5, 6]) host.ready.add(replica);
  const got: ReceivedBatch[] = [];
  const info = channel("$sys.events", "crash", "none");
  const sub = new ClientSubscription(host, info, options, (b) => void got.push(b), 60_000, publicKeys, publicKeys);
  const started = sub.begin();
  for (const replica of host.memberIds) {
    const subId = host.subIdAt(replica);
    sub.onSubOk(replica, subId, { sub: subId, replica });
  }
  await started;
  let seq = 0;
  const send = (signer: number, view: number): void => {
    const req = signedRequest(keys[signer] as SigningKey, "$sys.events", ++seq, [
      JSON.stringify({ ts: seq, replica: signer, kind: "view-installed", view, leader: 5 }),
    ]);
    const subId = host.subIdAt(signer);
    sub.onEvents(signer, subId, { sub: subId, tag: "$sys.events", seq: 0, req, replica: signer });
  };
  /** Waits (bounded) until a batch was delivered, and returns the first one's first event. */
  const firstDelivered = async (): Promise<unknown> => {
    const deadline = Date.now() + 30_000;
    while (got.length === 0 && Date.now() < deadline) await Bun.sleep(1);
    expect(got).toHaveLength(1);
    return JSON.parse(text((got[0] as ReceivedBatch).events[0] as Uint8Array));
  };
  return { publicKeys, host, sub, send, firstDelivered };
}

test("$sys.events: when f is lowered, an event f_new+1 members already reported is delivered at the switch", async () => {
  const { publicKeys, host, sub, send, firstDelivered } = await eventsSubOfSeven();
  // Two of the three reports f=2 needs; the third never comes.
  send(1, 5);
  send(4, 5);
  expect(sub.stats().deliveredEvents).toBe(0);
  host.f = 1;
  sub.onGroupChange([], new Map(publicKeys.map((key, id) => [id, key])));
  expect(await firstDelivered()).toMatchObject({ view: 5, reporters: [1, 4], vouched: 2 });
  await sub.close();
});

test("$sys.events: an event due at a switch whose reporters' reports are not held is counted and signalled, and the switch goes on", async () => {
  const signals: SubscriptionSignal[] = [];
  const { publicKeys, host, sub, send, firstDelivered } = await eventsSubOfSeven({ onSignal: (s) => signals.push(s) });
  send(1, 5);
  send(4, 5);
  // The reports that would carry the event are gone (the invariant this guards is broken).
  (sub as unknown as { lastReports: Map<number, unknown> }).lastReports.clear();
  host.memberIds = [0, 1, 2, 3, 4];
  host.f = 1;
  sub.onGroupChange([5, 6], new Map(publicKeys.slice(0, 5).map((key, id) => [id, key])));
  expect(signals.filter((s) => s.t === "invalid" && s.reason.includes("no report of theirs"))).toHaveLength(1);
  expect(sub.stats().invalidCopies).toBe(1);
  expect(sub.stats().deliveredEvents).toBe(0);
  // The switch went on: the next event two members report (f+1 of f=1) is delivered.
  send(0, 6);
  send(2, 6);
  expect(await firstDelivered()).toMatchObject({ view: 6, reporters: [0, 2], vouched: 2 });
  await sub.close();
});
