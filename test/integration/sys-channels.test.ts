/**
 * The replicas' system channels (issue 15, item 4; wire/PROTOCOL.md 2.1) on real
 * processes: `$sys.replica.<id>` carries that replica's health, signed by it;
 * `$sys.events` carries what the replicas see happen (a peer down and up again); `fitb sub`
 * prints them like any channel; no client can create or publish to one.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { ReceivedBatch } from "../../src/client/subscription.ts";
import { requireClusterConfig } from "../../src/config/cluster.ts";
import { formatPublicKey } from "../../src/crypto/keys.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, encode } from "./client-util.ts";
import { startCluster, type TestCluster } from "./harness.ts";

let cluster: TestCluster;

beforeAll(async () => {
  cluster = await startCluster();
}, 60_000);

afterAll(async () => {
  await cluster.stop();
});

function payloads(batches: ReceivedBatch[]): Record<string, unknown>[] {
  return batches.flatMap((batch) => batch.events.map((event) => JSON.parse(new TextDecoder().decode(event)) as Record<string, unknown>));
}

describe("$sys channels", () => {
  test("$sys.replica.<id>: that replica's health at once and every few seconds, signed by its key", async () => {
    const client = clientFor(cluster, cluster.clientKey);
    const batches: ReceivedBatch[] = [];
    try {
      const info = await client.channelInfo("$sys.replica.2");
      expect(info).toMatchObject({ tag: "$sys.replica.2", fault: "crash", order: "none", public: true });
      const subscription = await client.subscribe("$sys.replica.2", {}, (batch) => {
        batches.push(batch);
      });
      await waitFor("a first health report", () => batches.length >= 1);
      const replica2 = requireClusterConfig(cluster.configPath).replicas[2];
      expect(formatPublicKey(batches[0]?.publisher as Uint8Array)).toBe(formatPublicKey(replica2?.publicKey as Uint8Array));
      const [health] = payloads(batches);
      expect(health).toMatchObject({ kind: "health", replica: 2, mode: "normal" });
      expect(health?.peersUp).toBeArray();
      expect(typeof health?.rssBytes).toBe("number");
      await waitFor("a second report, a few seconds later", () => batches.length >= 2, 20_000);
      expect((batches[1]?.pubSeq as number) > (batches[0]?.pubSeq as number)).toBe(true);
      await subscription.close();
    } finally {
      client.close();
    }
  }, 60_000);

  test("$sys.events: a replica stopped and started again is reported down and up by the others", async () => {
    const client = clientFor(cluster, cluster.clientKey);
    const batches: ReceivedBatch[] = [];
    try {
      const subscription = await client.subscribe("$sys.events", {}, (batch) => {
        batches.push(batch);
      });
      const proc = cluster.procs[3];
      cluster.kill(3);
      await proc?.exited;
      await waitFor(
        "a peer-down report about replica 3",
        () => payloads(batches).some((e) => e.kind === "peer-down" && e.peer === 3),
        20_000,
      );
      cluster.start(3);
      await waitFor("a peer-up report about replica 3", () => payloads(batches).some((e) => e.kind === "peer-up" && e.peer === 3), 30_000);
      const down = payloads(batches).find((e) => e.kind === "peer-down") as Record<string, unknown>;
      expect([0, 1, 2]).toContain(down.replica as number);
      expect(typeof down.reason).toBe("string");
      await subscription.close();
    } finally {
      client.close();
    }
  }, 90_000);

  test("no client creates or publishes to a $sys channel; an unknown one is refused", async () => {
    const admin = clientFor(cluster, cluster.adminKey);
    try {
      await expect(
        admin.admin({ t: "create-channel", tag: "$sys.mine", fault: "crash", order: "none", priority: "low", public: true }),
      ).rejects.toThrow();
      await expect(admin.publish("$sys.events", [encode("forged")])).rejects.toThrow();
      await expect(admin.subscribe("$sys.replica.9", {}, () => undefined)).rejects.toThrow();
    } finally {
      admin.close();
    }
  }, 60_000);

  test("fitb sub prints a $sys channel like any other", async () => {
    const proc = Bun.spawn(
      [
        process.execPath,
        `${import.meta.dir}/../../src/cli/main.ts`,
        "sub",
        "--config",
        cluster.configPath,
        "--key",
        cluster.clientKey,
        "$sys.replica.0",
        "--count",
        "1",
        "--json",
      ],
      { stdout: "pipe", stderr: "pipe" },
    );
    const timer = setTimeout(() => proc.kill("SIGKILL"), 30_000);
    const [out, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
    clearTimeout(timer);
    expect(code).toBe(0);
    expect(out).toContain("health");
  }, 60_000);
});
