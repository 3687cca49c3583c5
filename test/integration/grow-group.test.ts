// Growing a running group from 4 to 7 replicas and f from 1 to 2, and shrinking it back,
// with real processes, under a steady publish stream and a live subscriber that started
// with the original four-replica cluster file and is never restarted. add-replica 4
// (n = 5), add-replica 5 and 6 (n = 7), set-f 2; then, with replicas 3 and 5 stopped, the
// group still orders and the subscriber still delivers (it votes with f = 2: three
// matching copies out of the five replicas up); then set-f 1 and remove-replica 6, 5, 4,
// replica 6 being down: started again, it says its peers refuse it as removed.
// The subscriber follows each group (subscribing to new members from its next
// undelivered seq, dropping removed ones), and what it delivered is checked by the
// history checker: every acknowledged event, none twice, one gap-free order.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { FitbClient } from "../../src/client/index.ts";
import { formatPublicKey, loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { waitFor } from "../helpers/wait.ts";
import { adminOk, collect, groupFollower, startClusterWithChannels } from "./client-util.ts";
import { checkTotalOrder, killAndWait, logLines, publishStream, type Stream, waitCaughtUp } from "./durability-history.ts";
import { freePortRange, logTail, type TestCluster, waitListening } from "./harness.ts";

const TAG = "sec.alerts";
const ORIGINAL = [0, 1, 2, 3];
const ADDED = [4, 5, 6];

let cluster: TestCluster;
let publisher: FitbClient;
let subscriber: FitbClient;
const keyPath = (id: number): string => join(cluster.dir, `replica-${id}.key`);

/** A client of the original cluster file that reads the group every second. */
const follower = (): FitbClient => groupFollower(cluster.configPath, cluster.clientKey);

const admin = (args: string[]): Promise<void> => adminOk(cluster, args);

/**
 * Waits until every replica in `replicas` started an epoch whose members are `members` and
 * whose f is `f`, and until the subscriber follows that group.
 */
async function waitGroup(replicas: readonly number[], members: readonly number[], f: number): Promise<void> {
  const started = (id: number): boolean =>
    logLines(cluster, id, "epoch started").some((line) => line["f"] === f && JSON.stringify(line["members"]) === JSON.stringify(members));
  await waitFor(
    `replicas ${replicas.join(",")} to start the epoch of members ${members.join(",")} with f=${f}`,
    () => replicas.every(started),
    60_000,
    () => replicas.map((id) => `replica ${id}: ${logTail(cluster, id, 5)}`).join("\n"),
  );
  await waitFor(
    `the subscriber to follow members ${members.join(",")} with f=${f}`,
    () => subscriber.f === f && JSON.stringify(subscriber.membership.ids) === JSON.stringify(members),
    30_000,
    () => JSON.stringify(subscriber.membership),
  );
}

beforeAll(async () => {
  cluster = await startClusterWithChannels({
    replicas: 4,
    // Replicas 4..6 are not in the cluster file: their own key and data directory.
    replicaArgs: (id) => (id < 4 ? [] : ["--key", keyPath(id), "--data", join(cluster.dir, `data-${id}`)]),
  });
  for (const id of ADDED) {
    cluster.logs[id] = [];
    cluster.procs[id] = null;
  }
  publisher = follower();
  subscriber = follower();
}, 120_000);

afterAll(async () => {
  publisher?.close();
  subscriber?.close();
  for (const id of ADDED) await killAndWait(cluster, id);
  await cluster.stop();
});

describe("growing to 7 replicas with f = 2 and back, one live subscriber throughout", () => {
  test("no acknowledged event lost, none twice, one order; f = 2 orders and delivers with 2 of 7 down", async () => {
    // Which replicas sent the subscription a copy, by the channel seq the copy starts at.
    const copiesAt = new Map<number, Set<number>>();
    const live = await collect(subscriber, TAG, 1, {
      onCopy: (copy) => {
        const seq = Number(copy.key.split("/")[0]);
        const from = copiesAt.get(seq) ?? new Set<number>();
        from.add(copy.replica);
        copiesAt.set(seq, from);
      },
    });
    const sentBy = (acked: Stream, replica: number): boolean =>
      acked.acked.every((ack) => copiesAt.get(ack.seq ?? 0)?.has(replica) === true);
    const streams: Stream[] = [];
    let running = true;
    const steady = publishStream(publisher, TAG, "s", () => running, 1);
    try {
      const keys = new Map<number, string>();
      for (const id of ADDED) {
        const run = await cluster.fitb(["keygen", "--out", keyPath(id)]);
        expect(run.code).toBe(0);
        keys.set(id, formatPublicKey(loadSigningKeyFile(keyPath(id)).key.publicKey));
      }
      const add = (id: number) =>
        admin([
          "add-replica",
          "--id",
          String(id),
          "--host",
          "127.0.0.1",
          "--port",
          String(freePortRange(1)),
          "--replica-key",
          keys.get(id) ?? "",
        ]);
      const join = async (ids: readonly number[]) => {
        for (const id of ids) cluster.start(id);
        await waitListening(cluster, ids);
        for (const id of ids) await waitCaughtUp(subscriber, id, 60_000);
      };

      // 4 -> 5.
      await add(4);
      await waitGroup(ORIGINAL, [0, 1, 2, 3, 4], 1);
      await join([4]);
      // 5 -> 7, then f = 2.
      await add(5);
      await add(6);
      await waitGroup([...ORIGINAL, 4], [0, 1, 2, 3, 4, 5, 6], 1);
      expect(live.subscription.stats().quorum).toBe(2);
      await join([5, 6]);
      await admin(["set-f", "2"]);
      await waitGroup([0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6], 2);
      // The client took the group and, in the same step, its subscription's voter votes with
      // it: three matching copies now (f+1 of f = 2), not the file's two.
      expect(live.subscription.stats().quorum).toBe(3);

      // f = 2 in force: two of seven down (one of the file's, one added), the group orders
      // and the subscriber, voting on three matching copies, delivers.
      await killAndWait(cluster, 3);
      await killAndWait(cluster, 5);
      const down = await publishStream(publisher, TAG, "d", 20, 1);
      streams.push(down);
      expect(down.acked.length).toBe(20);
      const lastDown = Math.max(...down.acked.map((ack) => ack.seq ?? 0));
      await waitFor(
        "the subscriber to deliver what was ordered with 2 of 7 down",
        () => live.events.some((e) => e.seq >= lastDown),
        30_000,
      );
      // The subscription follows the group: the added members up (4 and 6) sent it their
      // copies of those events, as did the file's members up.
      await waitFor(
        "replicas 0, 1, 2, 4 and 6 to send the subscriber their copies of those events",
        () => [0, 1, 2, 4, 6].every((replica) => sentBy(down, replica)),
        30_000,
      );
      // Both back and caught up before the group shrinks: a replica more than one epoch
      // behind is not what this test is about.
      await join([3, 5]);

      // Back to 4 replicas with f = 1, in one epoch; replica 6 is removed while it is down.
      await killAndWait(cluster, 6);
      await admin(["set-f", "1", "--yes"]);
      for (const id of [6, 5, 4]) await admin(["remove-replica", "--id", String(id)]);
      await waitGroup(ORIGINAL, ORIGINAL, 1);
      expect(live.subscription.stats().quorum).toBe(2);
      const after = await publishStream(publisher, TAG, "e", 10, 1);
      streams.push(after);
      expect(after.acked.length).toBe(10);

      // Started again, replica 6 cannot learn its removal (its peers refuse its key at the
      // handshake, a refusal nothing signs): it says so once f+1 of them did, each peer's
      // refusal once, and asks again only every 30 s instead of filling both sides' logs.
      cluster.start(6);
      await waitFor(
        "replica 6 to say its peers refuse it as removed",
        () => logLines(cluster, 6, "peers refuse this replica's key: the group removed this replica or rotated its key").length === 1,
        60_000,
        () => logTail(cluster, 6),
      );
      const refusals = logLines(cluster, 6, "a peer refuses this replica's key: it no longer accepts it");
      expect(refusals.length).toBeGreaterThanOrEqual(3);
      expect(new Set(refusals.map((line) => line["peer"])).size).toBe(refusals.length);
      for (const line of refusals) expect(line["reason"]).toBe("replica 6 was removed from the group");
      await killAndWait(cluster, 6);
    } finally {
      running = false;
      streams.push(await steady);
    }
    const acked = streams.flatMap((s) => s.acked);
    const last = Math.max(...acked.map((ack) => ack.seq ?? 0));
    await waitFor(`the subscriber to deliver up to seq ${last}`, () => live.events.some((e) => e.seq >= last), 30_000);
    await live.close();
    expect(streams[streams.length - 1]?.acked.length ?? 0).toBeGreaterThan(0);
    expect(checkTotalOrder(streams, live.events)).toEqual([]);
    console.log(
      `grow-group: ${live.events.length} events delivered live, ${acked.length} acknowledged, steady stream failures ${streams.at(-1)?.failures}`,
    );
  }, 240_000);
});
