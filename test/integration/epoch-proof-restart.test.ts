// A replica down across an epoch switch, while every other replica restarts after the
// switch. Four real replica processes (f = 1); replica 3 is stopped, `set-f 0` lands under a
// publish stream and takes effect (epoch 1), then replicas 0, 1 and 2 are killed and started
// again one by one. Replica 3 restarts in epoch 0: its peers kept the proof that ended it
// across their restarts (storage stageSwitchProofs), and the state at the switch point (the
// base written there, or a capture taken while replaying their logs through it), so it is
// sent the proof, fetches that state, switches, catches up and takes part in epoch 1's
// quorums. Before, a peer forgot both at its restart, and replica 3 waited for ever.
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { FitbClient } from "../../src/client/index.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, startClusterWithChannels } from "./client-util.ts";
import {
  historyProblems,
  killAndWait,
  logLines,
  publishStream,
  restartUnderTrickle,
  type Stream,
  waitCaughtUp,
} from "./durability-history.ts";
import { logTail, type TestCluster, waitListening } from "./harness.ts";
import { inEpoch as inEpochOf } from "./key-rotation.ts";

let cluster: TestCluster;
let publisher: FitbClient;
const streams: Stream[] = [];

const inEpoch = (id: number, epoch: number): boolean => inEpochOf(cluster, id, epoch);

beforeAll(async () => {
  cluster = await startClusterWithChannels({ replicas: 4 });
  publisher = clientFor(cluster, cluster.clientKey);
}, 120_000);

afterAll(async () => {
  publisher?.close();
  await cluster.stop();
});

test("a replica down across a switch catches up though every other replica restarted since the switch", async () => {
  await killAndWait(cluster, 3);
  const live = [0, 1, 2];
  let changed = "";
  let after = 0;
  streams.push(
    await publishStream(
      publisher,
      "sec.alerts",
      "b",
      // Bounded: a group that never switched fails below instead of publishing forever.
      (r) => r < 600 && (r < 20 || !live.every((id) => inEpoch(id, 1)) || after++ < 20),
      1,
      async (r) => {
        if (r !== 10) return;
        const run = await cluster.fitb(["admin", "--config", cluster.configPath, "--key", cluster.adminKey, "set-f", "0", "--yes"]);
        changed = `${run.code} ${run.stdout}${run.stderr}`;
      },
    ),
  );
  expect(changed).toContain("ok");
  for (const id of live) expect(inEpoch(id, 1)).toBe(true);

  // Every replica that saw the switch restarts (epoch 1's quorum is 3 of 4: each comes back before the next goes).
  for (const id of live) {
    const recovered = logLines(cluster, id, "recovered from the data directory").length;
    await killAndWait(cluster, id);
    cluster.start(id);
    await waitListening(cluster, [id]);
    await waitFor(`replica ${id} to recover`, () => logLines(cluster, id, "recovered from the data directory").length > recovered);
    await waitCaughtUp(publisher, id, 60_000);
  }

  await restartUnderTrickle(cluster, publisher, 3, "sec.alerts", "t3", streams, async () => {
    await waitFor(
      "replica 3 to reach epoch 1",
      () => inEpoch(3, 1),
      120_000,
      () => logTail(cluster, 3),
    );
    await waitCaughtUp(publisher, 3, 60_000);
  });
  const switched = logLines(cluster, 3, "epoch started");
  expect(switched.map((line) => line["epoch"])).toEqual([1]);
  expect(logLines(cluster, 3, "snapshot installed").some((entry) => entry["seq"] === switched[0]?.["seq"])).toBe(true);

  // With replica 1 down, epoch 1's quorum (3 of 4) needs replica 3.
  await killAndWait(cluster, 1);
  const last = await publishStream(publisher, "sec.alerts", "c", 20, 1);
  streams.push(last);
  expect(last.failures).toBe(0);
  expect(last.acked.length).toBe(20);
  expect(await historyProblems(publisher, "sec.alerts", streams)).toEqual([]);
}, 400_000);
