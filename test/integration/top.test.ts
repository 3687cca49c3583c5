/**
 * `fitb top` against real replicas (issue 15, item 4): not on a terminal, it prints one
 * plain block per refresh with every replica, the channels and their rates, and the
 * latency of the interval; a stopped replica shows as down with its reason.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { clientFor, createChannels, encode } from "./client-util.ts";
import { startCluster, type TestCluster } from "./harness.ts";

let cluster: TestCluster;

beforeAll(async () => {
  cluster = await startCluster();
  const admin = clientFor(cluster, cluster.adminKey);
  const publisher = clientFor(cluster, cluster.clientKey);
  try {
    await createChannels(admin, loadSigningKeyFile(cluster.clientKey).key.publicKey);
    for (let i = 0; i < 3; i++) await publisher.publish("sec.alerts", [encode(`alert ${i}`)]);
  } finally {
    admin.close();
    publisher.close();
  }
}, 60_000);

afterAll(async () => {
  await cluster.stop();
});

describe("fitb top", () => {
  test("plain blocks when not a terminal: replicas, channels with rates, latency", async () => {
    const args = ["top", "--config", cluster.configPath, "--key", cluster.clientKey, "--interval", "0.2", "--count", "2"];
    const result = await cluster.fitb(args, { timeoutMs: 60_000 });
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    expect(result.stdout).not.toContain("\x1b[");
    const blocks = result.stdout.trimEnd().split("\n\nfitb top");
    expect(blocks).toHaveLength(2);
    const last = blocks[1] as string;
    // "ok", or "degraded" when a replica of a loaded machine suspected the leader alone
    // (it then shows in another view): top reports it either way.
    expect(last).toMatch(/4\/4 up {2}(ok|degraded) /);
    for (const id of [0, 1, 2, 3]) expect(last).toMatch(new RegExp(`\\n${id} +127\\.0\\.0\\.1:\\d+ +true `));
    const alerts = last.split("\n").find((line) => line.startsWith("sec.alerts ")) as string;
    expect(alerts).toMatch(/^sec\.alerts +byzantine\/total +critical +\d+(\.\d)? +\d+(\.\d)? +\d+(\.\d)? +\d+(\.\d)? +3$/);
    expect(last).toContain("SHED/S    STORED-SINCE-START");
    expect(last).toContain("(STORED-SINCE-START counts from the replicas' start; what a channel retains: fitb admin list-channels)");
    expect(last).toContain("LATENCY last interval: publish-ack p50");
    expect(blocks[0]).toContain("LATENCY since start: publish-ack p50");
  }, 90_000);

  test("a stopped replica is down with its reason, and the problem is named", async () => {
    const proc = cluster.procs[3];
    cluster.kill(3);
    await proc?.exited;
    const args = ["top", "--config", cluster.configPath, "--key", cluster.clientKey, "--count", "1"];
    const result = await cluster.fitb(args, { timeoutMs: 60_000 });
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/\n3 +127\.0\.0\.1:\d+ +false .*unreachable/);
    expect(result.stdout).toContain("! replica 3 is down: unreachable");
  }, 60_000);
});
