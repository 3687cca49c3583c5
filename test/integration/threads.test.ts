/**
 * `fitb replica --threads N`: replicas verifying client signatures on threads and replicas
 * verifying on their event loop (--threads 0) carry the same workload to the same state.
 * Two of each in one group: a checkpoint becomes stable only when 2f+1 replicas signed the
 * same state digest, and a replica whose state differs from a stable checkpoint stops
 * (divergence); so every replica alive at one stable checkpoint past the workload means
 * all four computed the same state.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { DEFAULT_PARAMETERS } from "../../src/core/ordering/config.ts";
import type { FitbClient } from "../../src/client/index.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, startClusterWithChannels } from "./client-util.ts";
import type { TestCluster } from "./harness.ts";

let cluster: TestCluster;
let client: FitbClient;

beforeAll(async () => {
  cluster = await startClusterWithChannels({ replicaArgs: (id) => ["--threads", id < 2 ? "0" : "2"] });
  client = clientFor(cluster, cluster.clientKey);
});

afterAll(async () => {
  client?.close();
  await cluster?.stop();
});

test("replicas with and without verification threads reach the same stable checkpoint and decided seq", async () => {
  for (let id = 0; id < 4; id++) {
    const started =
      cluster.logs[id]
        ?.join("")
        .split("\n")
        .find((line) => line.includes('"msg":"replica started"')) ?? "";
    expect(JSON.parse(started).verifyThreads).toBe(id < 2 ? 0 : 2);
  }
  // Past one checkpoint interval of decided seqs (concurrent publishes may share a seq):
  // publish until f+1 replicas report it, bounded.
  const target = DEFAULT_PARAMETERS.checkpointInterval + 8;
  let published = 0;
  while (((await client.status()).lastDecided ?? 0) < target) {
    expect(published).toBeLessThan(20 * target);
    const sent: Promise<unknown>[] = [];
    for (let k = 0; k < 8; k++, published++) {
      sent.push(client.publish(published % 2 === 0 ? "sec.alerts" : "storage.disks", [new TextEncoder().encode(`event ${published}`)]));
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
