/**
 * The replicas' system channels (issue 15, item 4; wire/PROTOCOL.md 2.1) on real
 * processes: `$sys.replica.<id>` carries that replica's health, signed by it;
 * `$sys.events` carries what the group agrees happened (a peer down and up again, a view
 * change when the leader is killed), each event once, once f+1 replicas reported it;
 * `fitb sub` prints them like any channel; no client can create or publish to one.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { CopySeen, ReceivedBatch } from "../../src/client/subscription.ts";
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

  test("$sys.events: a replica stopped and started again is reported down and up, each once, by f+1 others", async () => {
    const client = clientFor(cluster, cluster.clientKey);
    const batches: ReceivedBatch[] = [];
    try {
      const subscription = await client.subscribe("$sys.events", {}, (batch) => {
        batches.push(batch);
      });
      // The subscription starts at f+1 SUB_OKs; a replica that has not taken it yet when it
      // sees the peer go down would report it to nobody here, and f+1 reports are needed.
      await waitFor("every replica to take the subscription", () => subscription.stats().activeReplicas.length === 4);
      const proc = cluster.procs[3];
      cluster.kill(3);
      await proc?.exited;
      await waitFor(
        "the group's peer-down of replica 3",
        () => payloads(batches).some((e) => e.kind === "peer-down" && e.peer === 3),
        20_000,
      );
      cluster.start(3);
      await waitFor("the group's peer-up of replica 3", () => payloads(batches).some((e) => e.kind === "peer-up" && e.peer === 3), 30_000);
      const events = payloads(batches);
      const down = events.filter((e) => e.kind === "peer-down" && e.peer === 3);
      expect(down).toHaveLength(1);
      // What one replica alone says (why the link dropped, when) is not part of the agreed event.
      expect(Object.keys(down[0] as object).sort()).toEqual(["kind", "peer", "reporters", "vouched"]);
      const reporters = (down[0] as { reporters: number[] }).reporters;
      expect(reporters.length).toBeGreaterThanOrEqual(2);
      for (const id of reporters) expect([0, 1, 2]).toContain(id);
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
      // Refused, saying why (not "no channel", since a client may subscribe to it).
      await expect(admin.publish("$sys.events", [encode("forged")])).rejects.toThrow(
        "$sys.events is a system channel, reserved to the replicas: clients may subscribe to it, not publish",
      );
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

  test("$sys.events: killing the leader yields one agreed view-installed, with the new view and leader, vouched by f+1", async () => {
    const admin = clientFor(cluster, cluster.adminKey);
    const batches: ReceivedBatch[] = [];
    const copies: CopySeen[] = [];
    try {
      // Replica 3 was restarted by an earlier test: wait until the group agrees on a view again.
      await waitFor("a view f+1 replicas agree on, with every replica up", async () => {
        const status = await admin.status();
        return status.agreed && status.replicas.every((r) => r.answer?.ok === true && r.answer.value.view === status.view);
      });
      const before = await admin.status();
      const leader = before.leader as number;
      const subscription = await admin.subscribe("$sys.events", { onCopy: (copy) => copies.push(copy) }, (batch) => {
        batches.push(batch);
      });
      await waitFor("every replica to take the subscription", () => subscription.stats().activeReplicas.length === 4);
      const proc = cluster.procs[leader];
      cluster.kill(leader);
      await proc?.exited;
      // An ordered request the dead leader cannot order makes the others change the view.
      // (On a slow machine the request may time out first; the replicas hold it all the same.)
      await admin
        .admin({ t: "create-channel", tag: "ops.after-leader", fault: "crash", order: "none", priority: "low", public: true })
        .catch(() => undefined);
      const installed = () => payloads(batches).filter((e) => e.kind === "view-installed");
      await waitFor("an agreed view-installed on $sys.events", () => installed().length >= 1, 30_000);
      const first = installed()[0] as { view: number; leader: number; reporters: number[]; vouched: number };
      expect(first.view).toBeGreaterThan(before.view as number);
      expect(first.leader).toBe(first.view % cluster.n);
      expect(first.leader).not.toBe(leader);
      expect(first.vouched).toBe(first.reporters.length);
      expect(first.reporters.length).toBeGreaterThanOrEqual(2);
      expect(first.reporters).not.toContain(leader);
      // Every surviving replica's report of that view reached the subscription (the observer
      // saw it), and still the event was delivered once.
      const batch = batches.find((b) => JSON.parse(new TextDecoder().decode(b.events[0])).kind === "view-installed") as ReceivedBatch;
      const survivors = [0, 1, 2, 3].filter((id) => id !== leader);
      await waitFor(
        "each survivor's report of the new view",
        () => survivors.every((id) => copies.some((c) => c.replica === id && c.key === batch.copyKey)),
        30_000,
        () => JSON.stringify(copies),
      );
      expect(installed().filter((e) => e.view === first.view)).toHaveLength(1);
      await subscription.close();
    } finally {
      admin.close();
    }
  }, 120_000);
});
