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
import { historyProblems, killAndWait, logLines, type Stream, waitCaughtUp } from "./durability-history.ts";
import { type TestCluster, waitListening } from "./harness.ts";
import { changeUnderTraffic, quorumWithout, rejoinUnderTrickle } from "./key-rotation.ts";

let cluster: TestCluster;
let publisher: FitbClient;
const streams: Stream[] = [];

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
  const changed = await changeUnderTraffic(cluster, publisher, { live, epoch: 1, change: ["set-f", "0", "--yes"], prefix: "b" });
  streams.push(changed.stream);
  expect(changed.out).toContain("ok");

  // Every replica that saw the switch restarts (epoch 1's quorum is 3 of 4: each comes back before the next goes).
  for (const id of live) {
    const recovered = logLines(cluster, id, "recovered from the data directory").length;
    await killAndWait(cluster, id);
    cluster.start(id);
    await waitListening(cluster, [id]);
    await waitFor(`replica ${id} to recover`, () => logLines(cluster, id, "recovered from the data directory").length > recovered);
    await waitCaughtUp(publisher, id, 60_000);
  }

  await rejoinUnderTrickle(cluster, publisher, { id: 3, epoch: 1, prefix: "t3", streams });
  const switched = logLines(cluster, 3, "epoch started");
  expect(switched.map((line) => line["epoch"])).toEqual([1]);
  expect(logLines(cluster, 3, "snapshot installed").some((entry) => entry["seq"] === switched[0]?.["seq"])).toBe(true);

  // With replica 1 down, epoch 1's quorum (3 of 4) needs replica 3.
  streams.push(await quorumWithout(cluster, publisher, 1, "c"));
  expect(await historyProblems(publisher, "sec.alerts", streams)).toEqual([]);
}, 400_000);
