/**
 * `fitb replica --threads N --ordering-thread on|off`: replicas verifying client signatures
 * on threads, replicas running the ordering core on a thread of its own (the leader of
 * view 0 among them), and replicas doing everything on their event loop (--threads 0)
 * carry the same workload to the same state, in one group. A checkpoint becomes stable
 * only when 2f+1 replicas signed the same state digest, and a replica whose state differs
 * from a stable checkpoint stops (divergence); so every replica alive at one stable
 * checkpoint past the workload, at the same decided seq, means all four computed the same
 * state.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { DEFAULT_PARAMETERS } from "../../src/core/ordering/config.ts";
import type { FitbClient } from "../../src/client/index.ts";
import { SHARED_BYTES_MIN } from "../../src/replica/ordering-host.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, startClusterWithChannels } from "./client-util.ts";
import type { TestCluster } from "./harness.ts";

/** Replica 0 (the first leader) and 2 order on a thread; 1 does everything on its event loop; 3 verifies on threads and orders on its loop. */
const REPLICA_ARGS = [
  ["--threads", "2", "--ordering-thread", "on"],
  ["--threads", "0"],
  ["--threads", "2", "--ordering-thread", "on"],
  ["--threads", "2", "--ordering-thread", "off"],
];

let cluster: TestCluster;
let client: FitbClient;

beforeAll(async () => {
  cluster = await startClusterWithChannels({ replicaArgs: (id) => REPLICA_ARGS[id] ?? [] });
  client = clientFor(cluster, cluster.clientKey);
});

afterAll(async () => {
  client?.close();
  await cluster?.stop();
});

test("replicas with and without verification threads and the ordering thread reach the same stable checkpoint and decided seq", async () => {
  for (let id = 0; id < 4; id++) {
    const started =
      cluster.logs[id]
        ?.join("")
        .split("\n")
        .find((line) => line.includes('"msg":"replica started"')) ?? "";
    expect(JSON.parse(started).verifyThreads).toBe(id === 1 ? 0 : 2);
    expect(JSON.parse(started).orderingThread).toBe(id === 0 || id === 2);
  }
  // The core really runs on its thread there: the thread said it built it.
  for (const id of [0, 2]) {
    await waitFor(
      `replica ${id}'s ordering thread`,
      () => cluster.logs[id]?.join("").includes('"msg":"ordering thread ready"') === true,
      30_000,
    );
  }
  // Past one checkpoint interval of decided seqs (concurrent publishes may share a seq):
  // publish until f+1 replicas report it, bounded.
  const target = DEFAULT_PARAMETERS.checkpointInterval + 8;
  let published = 0;
  while (((await client.status()).lastDecided ?? 0) < target) {
    expect(published).toBeLessThan(20 * target);
    const sent: Promise<unknown>[] = [];
    for (let k = 0; k < 8; k++, published++) {
      // Every fourth request is over SHARED_BYTES_MIN: it crosses to and from the ordering threads in shared memory.
      const event = `event ${published}`.padEnd(published % 4 === 0 ? SHARED_BYTES_MIN + 1024 : 0, ".");
      sent.push(client.publish(published % 2 === 0 ? "sec.alerts" : "storage.disks", [new TextEncoder().encode(event)]));
    }
    await Promise.all(sent);
  }
  let last: { id: number; stable: number; decided: number }[] = [];
  await waitFor(
    "every replica at a stable checkpoint past the workload",
    async () => {
      const status = await client.status();
      last = status.replicas.map((r) => ({
        id: r.id,
        stable: r.answer?.ok ? (r.answer.value.stableCheckpoint ?? 0) : -1,
        decided: r.answer?.ok ? r.answer.value.lastDecided : -1,
      }));
      return last.every((r) => r.stable >= DEFAULT_PARAMETERS.checkpointInterval);
    },
    60_000,
    () => JSON.stringify(last),
  );
  await waitFor(
    "every replica at the same decided seq",
    async () => {
      const status = await client.status();
      const decided = status.replicas.map((r) => (r.answer?.ok ? r.answer.value.lastDecided : -1));
      return decided.every((d) => d === decided[0] && d >= target);
    },
    60_000,
  );
  for (let id = 0; id < 4; id++) expect(cluster.logs[id]?.join("")).not.toContain("diverged");
}, 180_000);
