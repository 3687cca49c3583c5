/**
 * A compromised backup flooding its peers (the attack harness's `flooding` adversary,
 * test/attack/adversary-replica.ts): the correct replicas mute it, from the ordering core's
 * `peerFlooding` advisory or their own per-peer budgets (src/replica/peer-inbox.ts), count
 * and log it with its id, key and address, and still order commands meanwhile.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { FitbClient } from "../../src/client/index.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor } from "../integration/client-util.ts";
import { freePortRange, startCluster, type TestCluster } from "../integration/harness.ts";
import { type Adversary, startWithAdversary } from "../helpers/adversary.ts";

const ADVERSARY = 3;

async function mutedCount(port: number): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`).catch(() => null))?.text();
  if (text === undefined) return 0;
  let sum = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith(`fitb_peer_muted_total{peer="${ADVERSARY}"`)) sum += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return sum;
}

describe("a flooding peer", () => {
  let cluster: TestCluster;
  let adversary: Adversary;
  let admin: FitbClient;
  let metricsBase: number;

  beforeAll(async () => {
    metricsBase = freePortRange(3);
    cluster = await startCluster({ start: false, replicaArgs: (id) => ["--metrics", `127.0.0.1:${metricsBase + id}`] });
    adversary = await startWithAdversary(cluster, ADVERSARY, "flooding");
    admin = clientFor(cluster, cluster.adminKey);
  }, 60_000);

  afterAll(async () => {
    admin?.close();
    await adversary?.stop();
    await cluster?.stop();
  });

  test("is muted by the correct replicas, counted and logged with its key and address, and commands are still ordered", async () => {
    const correct = [0, 1, 2];
    await waitFor(
      "every correct replica to mute the flooding peer",
      async () => (await Promise.all(correct.map((id) => mutedCount(metricsBase + id)))).every((n) => n >= 1),
      45_000,
      () => correct.map((id) => `replica ${id}: ${cluster.logs[id]?.join("").slice(-400)}`).join("\n"),
    );
    const line = cluster.logs[0]
      ?.join("")
      .split("\n")
      .find((l) => l.includes('"audit":"peer-muted"'));
    expect(line).toBeDefined();
    const fields = JSON.parse(line as string) as Record<string, unknown>;
    expect(fields.peer).toBe(ADVERSARY);
    expect(String(fields.key)).toStartWith("ed25519:");
    expect(String(fields.address)).toContain("127.0.0.1");
    expect(String(fields.reason)).toMatch(/^(flooding|budget|misbehaving): /);
    const reply = await admin.admin({
      t: "create-channel",
      tag: "flood.ok",
      fault: "byzantine",
      order: "total",
      priority: "normal",
      public: true,
    });
    expect(reply.cmd).toBe("create-channel");
  }, 60_000);
});
