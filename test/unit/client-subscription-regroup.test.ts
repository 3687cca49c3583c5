// A subscription follows the group the client follows (membership-follow.ts): a member
// added later is subscribed from the next undelivered seq, a removed one is unsubscribed
// and its copies stop counting, and delivery needs f+1 copies of the group's f now.
import { expect, test } from "bun:test";
import type { Events } from "../../wire/schemas.ts";
import { ClientSubscription, type ReceivedBatch } from "../../src/client/subscription.ts";
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
