/**
 * A replica whose key is rotated while it lags can stop between executing the checkpoint
 * where the rotation takes effect and storing its own switch to the new epoch: the others
 * switch there and refuse its old key before it saw that checkpoint stable. Restarted with
 * its new key (README "Changing a replica's key"), it asks the group, whose answer names
 * that very epoch and checkpoint; it must join the epoch by state transfer from its data
 * directory as it is, instead of refusing to start until an operator moves it aside.
 *
 * Four real replicas; replica 3's key is rotated under a publish stream, then replica 3 is
 * killed and its data directory made what such a stop leaves (the stored switch and the
 * new epoch's records removed: its decided log ends at the switch checkpoint, whose
 * replay puts its machine in the new epoch). Started with its new key, it joins, installs
 * the state at the checkpoint, catches up, and carries a quorum while replica 0 is down;
 * nothing acknowledged is lost, repeated or reordered.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { join } from "node:path";
import type { FitbClient } from "../../src/client/index.ts";
import { STORE_FILE } from "../../src/replica/storage/store.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, startClusterWithChannels } from "./client-util.ts";
import { dataDirOf, killAndWait, logLines, publishStream, type Stream, waitCaughtUp, historyProblems } from "./durability-history.ts";
import { logTail, type TestCluster } from "./harness.ts";
import { rotateUnderTraffic } from "./key-rotation.ts";

const JOINS = "the data directory stopped in the middle of an epoch switch: joining that epoch from the group's answer";

let cluster: TestCluster;
let publisher: FitbClient;
const replicaArgs = new Map<number, string[]>();
const streams: Stream[] = [];

beforeAll(async () => {
  cluster = await startClusterWithChannels({ replicaArgs: (id) => replicaArgs.get(id) ?? [] });
  publisher = clientFor(cluster, cluster.clientKey);
}, 120_000);

afterAll(async () => {
  publisher?.close();
  await cluster?.stop();
});

test("a replica stopped between the rotation's checkpoint and its own switch, restarted with its new key, joins the epoch by state transfer and takes part in quorums", async () => {
  // Replica 3 writes its first base snapshot at the first stable checkpoint. The rotation
  // is sent after that, so it takes effect at a later checkpoint, where too little was
  // decided since for another base: the switch leaves its decided log from that base on.
  const based = await publishStream(
    publisher,
    "sec.alerts",
    "b",
    (r) => r < 3_000 && logLines(cluster, 3, "base snapshot written").length === 0,
    1,
  );
  streams.push(based);
  const base = logLines(cluster, 3, "base snapshot written")[0]?.["seq"] as number;
  expect(base).toBeGreaterThan(0);
  let switchedAt = 0;
  const stream = await rotateUnderTraffic(cluster, publisher, {
    id: 3,
    epoch: 1,
    until: [0, 1, 2, 3],
    prefix: "r",
    replicaArgs,
    // What a stop before the switch was stored leaves: no epoch record, none of the new
    // epoch's core records, the decided log ending at the checkpoint (it decided nothing
    // after it: the others refused its old key) and running from the base below it.
    beforeRestart: () => {
      switchedAt = logLines(cluster, 3, "epoch started").find((line) => line["epoch"] === 1)?.["seq"] as number;
      const db = new Database(join(dataDirOf(cluster, 3), STORE_FILE));
      try {
        db.run("DELETE FROM meta WHERE k = 'epoch'");
        db.run("DELETE FROM core");
        expect((db.query("SELECT MAX(seq) AS m FROM decided").get() as { m: number }).m).toBe(switchedAt);
        expect((db.query("SELECT COUNT(*) AS c FROM snap_head WHERE seq >= ?").get(switchedAt) as { c: number }).c).toBe(0);
      } finally {
        db.close();
      }
    },
  });
  streams.push(stream);
  expect(switchedAt).toBeGreaterThan(base);
  await waitFor(
    "replica 3 to join from the middle of its switch",
    () => logLines(cluster, 3, JOINS).length > 0,
    60_000,
    () => logTail(cluster, 3),
  );
  expect(logLines(cluster, 3, JOINS)[0]).toMatchObject({ epoch: 1, checkpoint: switchedAt });
  await waitFor(
    "replica 3 to install the state at the epoch's start or later",
    () => logLines(cluster, 3, "snapshot installed").some((line) => (line["seq"] as number) >= switchedAt),
    60_000,
    () => logTail(cluster, 3),
  );
  await waitCaughtUp(publisher, 3, 60_000);
  expect(logLines(cluster, 3, "the data directory stopped in the middle of an epoch switch")).toEqual([]);

  // With replica 0 down, a quorum of the four needs replica 3's votes under its new key.
  await killAndWait(cluster, 0);
  const q = await publishStream(publisher, "sec.alerts", "q", 20, 1);
  streams.push(q);
  expect(q.acked.length).toBe(20);

  expect(await historyProblems(publisher, "sec.alerts", streams)).toEqual([]);
}, 300_000);
