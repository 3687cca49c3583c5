/**
 * A replica behind its peers' stable checkpoint catches up from their decided logs on
 * disk, not by a state transfer (core/ordering/PROTOCOL.md §7, "An older state"). Four
 * real replicas; replica 3 is killed after the first base (every replica writes one at
 * the first stable checkpoint, and keeps its decided log after it), the group orders past
 * the next stable checkpoint, and replica 3 is started again under a trickle of ordered
 * publishes. The decisions between where it stopped and the group's stable checkpoint
 * are no longer in any peer's memory; the peers read them from disk
 * (`fitb_state_decided_served_from_log_total`), and replica 3 executes them: it logs no
 * state transfer. Before, peers sent only decisions above their stable checkpoint, and a
 * replica there fetched the whole state.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { DEFAULT_PARAMETERS } from "../../src/core/ordering/config.ts";
import type { FitbClient } from "../../src/client/index.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, encode, startClusterWithChannels } from "./client-util.ts";
import { catchUpUnderTraffic, killAndWait, lastDecided, logLines, waitConverged } from "./durability-history.ts";
import { freePortRange, metricValue, type TestCluster, waitListening } from "./harness.ts";

const INTERVAL = DEFAULT_PARAMETERS.checkpointInterval;
const TAG = "sec.alerts";
const LAGGING = 3;

let cluster: TestCluster;
let metricsBase: number;
let admin: FitbClient;
let publisher: FitbClient;

beforeAll(async () => {
  metricsBase = freePortRange(3);
  cluster = await startClusterWithChannels({
    replicaArgs: (id) => (id === LAGGING ? [] : ["--metrics", `127.0.0.1:${metricsBase + id}`]),
  });
  admin = clientFor(cluster, cluster.adminKey);
  publisher = clientFor(cluster, cluster.clientKey);
}, 120_000);

afterAll(async () => {
  admin?.close();
  publisher?.close();
  await cluster?.stop();
});

/** Publishes one event at a time (one decided seq each) until every live replica in `ids` decided past `seq`. */
async function publishPast(seq: number, ids: readonly number[], prefix: string): Promise<void> {
  for (let i = 0; ; i++) {
    const seqs = await lastDecided(admin);
    if (ids.every((id) => (seqs[id] ?? 0) > seq)) return;
    await publisher.publish(TAG, [encode(`${prefix}-${i}`)]);
  }
}

async function servedFromLog(): Promise<number> {
  let sum = 0;
  for (const id of [0, 1, 2]) sum += await metricValue(metricsBase + id, "fitb_state_decided_served_from_log_total");
  return sum;
}

test("a replica behind the peers' stable checkpoint executes the decisions after it from their decided logs, with no state transfer", async () => {
  // Past the first stable checkpoint (and its base) at every replica, then replica 3 stops.
  await publishPast(INTERVAL + 20, [0, 1, 2, 3], "before");
  await waitFor("replica 3's first base", () => logLines(cluster, LAGGING, "base snapshot written").length > 0, 30_000);
  const stoppedAt = await waitConverged(admin, [0, 1, 2, 3], 30_000);
  await killAndWait(cluster, LAGGING);
  // The others order past the next stable checkpoint: decisions stoppedAt+1 .. 2 * INTERVAL
  // leave their memory.
  await publishPast(2 * INTERVAL + 20, [0, 1, 2], "while-down");
  expect(stoppedAt).toBeLessThan(2 * INTERVAL);
  expect(await servedFromLog()).toBe(0);

  const linesBefore = (cluster.logs[LAGGING] ?? []).length;
  cluster.start(LAGGING);
  await waitListening(cluster, [LAGGING]);
  await catchUpUnderTraffic(cluster, admin, publisher, TAG, [LAGGING], 60_000);

  expect(await servedFromLog()).toBeGreaterThan(0);
  const since = (cluster.logs[LAGGING] ?? []).slice(linesBefore).join("");
  expect(since).not.toContain("state transfer started");
  const decided = await lastDecided(admin);
  expect(decided[LAGGING]).toBeGreaterThan(2 * INTERVAL);
}, 180_000);
