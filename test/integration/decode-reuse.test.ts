/**
 * Execution takes the request a replica decoded when it admitted it (src/replica/requests.ts
 * DecodedRequests): on a real group, a client's publishes to a total-order channel reach
 * every replica from the client, so a backup executes them without decoding their bodies
 * again (fitb_requests_decode_reused_total).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, createChannels } from "./client-util.ts";
import { freePortRange, metricValue, startCluster, type TestCluster } from "./harness.ts";

const EVENTS = 20;
let cluster: TestCluster;
let metricsPort: number;

/** One gauge or counter (no labels) of replica 1, or a labelled series given in full. */
const metric = (series: string): Promise<number> => metricValue(metricsPort, series);

beforeAll(async () => {
  metricsPort = freePortRange(1);
  // Replica 1: a backup in view 0, which gets each request from the client and the batch from the leader.
  cluster = await startCluster({ replicaArgs: (id) => (id === 1 ? ["--metrics", `127.0.0.1:${metricsPort}`] : []) });
  const admin = clientFor(cluster, cluster.adminKey);
  try {
    await createChannels(admin, loadSigningKeyFile(cluster.clientKey).key.publicKey);
  } finally {
    admin.close();
  }
});

afterAll(async () => {
  await cluster?.stop();
});

describe("a decided request is executed from this replica's own decoding of it", () => {
  test("a backup reuses what it decoded at admission", async () => {
    const client = clientFor(cluster, cluster.clientKey);
    try {
      const encode = (text: string): Uint8Array => new TextEncoder().encode(text);
      const acks: Awaited<ReturnType<typeof client.publish>>[] = [];
      for (let i = 0; i < EVENTS; i++) acks.push(await client.publish("sec.alerts", [encode(`disk ${i} failed`)]));
      expect(acks.map((a) => a.channelSeq)).toEqual(Array.from({ length: EVENTS }, (_, i) => (acks[0]?.channelSeq as number) + i));
      await waitFor(
        "replica 1 executed a request it had decoded at admission",
        async () => (await metric("fitb_requests_decode_reused_total")) >= 1,
      );
    } finally {
      client.close();
    }
  });
});
