// Membership epochs with real replica processes. A five-replica group (f = 1) removes its
// leader with `admin remove-replica` under a steady publish stream, while replica 4 is
// down: the change takes effect at a checkpoint the old group made stable, and replicas
// 1-3 start the next epoch's ordering core there (new ranks, quorums and cluster id) and
// go on ordering; the removed replica says so in its log and exits. Replica 4 then comes
// back in the old epoch: its peers send it the proof that ended that epoch, it fetches
// the state at the switch point and joins the new epoch. A replica restarted in the new
// epoch resumes it from its data directory. The history checker finds no acknowledged
// event lost, none twice, and one order for live subscribers and the history.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import type { FitbClient } from "../../src/client/index.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, startClusterWithChannels } from "./client-util.ts";
import {
  killAndWait,
  logLines,
  publishStream,
  restartUnderTrickle,
  type Stream,
  waitCaughtUp,
  historyProblems,
} from "./durability-history.ts";
import { freePortRange, logTail, type TestCluster } from "./harness.ts";

let cluster: TestCluster;
let publisher: FitbClient;
let A: string[];
const streams: Stream[] = [];
/** Replica 1's metrics port. */
let metricsPort: number;

/** Replica 1's peer_up series, as `peer -> value`. */
async function peerUpSeries(): Promise<Map<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  const series = new Map<string, number>();
  for (const match of text.matchAll(/^fitb_peer_up\{peer="(\d+)"\} (\S+)$/gm)) series.set(match[1] as string, Number(match[2]));
  return series;
}

const started = (id: number): boolean => logLines(cluster, id, "epoch started").some((line) => line["epoch"] === 1);

beforeAll(async () => {
  // Replicas 0 (the leader removed), 2 and 4 run their ordering core on its thread, the
  // others on the event loop: epoch switches, a core replaced, a rejoin by state transfer.
  metricsPort = freePortRange(1);
  cluster = await startClusterWithChannels({
    replicas: 5,
    replicaArgs: (id) => [
      ...(id % 2 === 0 ? ["--threads", "1", "--ordering-thread", "on"] : []),
      ...(id === 1 ? ["--metrics", `127.0.0.1:${metricsPort}`] : []),
    ],
  });
  publisher = clientFor(cluster, cluster.clientKey);
  A = ["--config", cluster.configPath, "--key", cluster.adminKey];
}, 120_000);

afterAll(async () => {
  publisher?.close();
  await cluster.stop();
});

describe("epoch switch", () => {
  test("removing the leader while another replica is down, under a publish stream: the others switch epochs at the checkpoint", async () => {
    for (const id of [0, 2, 4]) {
      await waitFor(`replica ${id}'s ordering thread`, () => logLines(cluster, id, "ordering thread ready").length === 1, 30_000);
    }
    // Replica 0's series is there (up or not, as its PINGs go) before its removal.
    expect((await peerUpSeries()).has("0")).toBe(true);
    // The change taking effect is a group event on $sys.events.
    const events: Record<string, unknown>[] = [];
    const watcher = await publisher.subscribe("$sys.events", {}, (batch) => {
      for (const event of batch.events) events.push(JSON.parse(new TextDecoder().decode(event)) as Record<string, unknown>);
    });
    await waitFor("every replica to take the $sys.events subscription", () => watcher.stats().activeReplicas.length === 5);
    await killAndWait(cluster, 4);
    const live = [1, 2, 3];
    let removedOut = "";
    let afterSwitch = 0;
    const stream = await publishStream(
      publisher,
      "sec.alerts",
      "r",
      // Bounded: a group that never switched fails below instead of publishing forever.
      (r) => r < 600 && (r < 20 || !live.every(started) || afterSwitch++ < 30),
      1,
      async (r) => {
        if (r !== 10) return;
        const run = await cluster.fitb(["admin", ...A, "remove-replica", "--id", "0"]);
        removedOut = `${run.code} ${run.stdout}${run.stderr}`;
      },
    );
    streams.push(stream);
    expect(removedOut).toContain("ok: removing replica 0");
    for (const id of live) {
      const line = logLines(cluster, id, "epoch started").find((entry) => entry["epoch"] === 1);
      expect(line).toMatchObject({ epoch: 1, n: 4, f: 1, members: [1, 2, 3, 4], rank: id - 1 });
      expect((line?.["seq"] as number) % 128).toBe(0);
    }
    // The removed leader said why it stopped, and exited cleanly.
    const removal = "this replica was removed from the group: it stops ordering and serving clients";
    await waitFor(
      "replica 0 to log its removal",
      () => logLines(cluster, 0, removal).length > 0,
      30_000,
      () => logTail(cluster, 0),
    );
    expect(await cluster.procs[0]?.exited).toBe(0);
    cluster.procs[0] = null;
    const members = JSON.parse((await cluster.fitb(["admin", ...A, "members", "--json"])).stdout) as {
      epoch: number;
      n: number;
      members: { id: number }[];
    };
    expect(members).toMatchObject({ epoch: 1, n: 4 });
    expect(members.members.map((member) => member.id)).toEqual([1, 2, 3, 4]);
    await waitFor(
      "the group's epoch-started of epoch 1 on $sys.events",
      () => events.some((event) => event["kind"] === "epoch-started"),
      30_000,
      () => JSON.stringify(events),
    );
    expect(events.filter((event) => event["kind"] === "epoch-started")).toEqual([
      expect.objectContaining({ kind: "epoch-started", epoch: 1, n: 4, f: 1, members: "1 2 3 4" }),
    ]);
    await watcher.close();
    // The removed replica's series are gone from the others' metrics, not left at their last value.
    let seen = "";
    await waitFor(
      "replica 1's peer_up series for replica 0 to go",
      async () => {
        const series = await peerUpSeries();
        seen = JSON.stringify([...series]);
        return !series.has("0");
      },
      30_000,
      () => seen,
    );
    expect([...(await peerUpSeries()).keys()].sort()).toEqual(["2", "3", "4"]);
  }, 300_000);

  test("a replica that was down across the change comes back in the old epoch, is sent the proof that ended it, fetches the state and joins the new epoch", async () => {
    await restartUnderTrickle(cluster, publisher, 4, "sec.alerts", "t4", streams, async () => {
      await waitFor(
        "replica 4 to start epoch 1",
        () => started(4),
        60_000,
        () => logTail(cluster, 4),
      );
      await waitCaughtUp(publisher, 4, 60_000);
    });
    const line = logLines(cluster, 4, "epoch started").find((entry) => entry["epoch"] === 1);
    expect(line).toMatchObject({ epoch: 1, n: 4, rank: 3 });
    // It got the switch point by state transfer, certified by the old epoch.
    expect(logLines(cluster, 4, "snapshot installed").some((entry) => entry["seq"] === line?.["seq"])).toBe(true);
  }, 180_000);

  test("a replica restarted in the new epoch resumes it from its data directory", async () => {
    await killAndWait(cluster, 2);
    // Since the change the group's addresses are replicated state: a file that writes the
    // first group's hosts otherwise (the removed replica's, here) is still this cluster's,
    // and neither side compares them any more (src/config/digest.ts, addrs).
    const file = readFileSync(cluster.configPath, "utf8");
    const edited = file.replace(/host = "127\.0\.0\.1"/, 'host = "localhost"');
    expect(edited).not.toBe(file);
    writeFileSync(cluster.configPath, edited);
    await restartUnderTrickle(cluster, publisher, 2, "sec.alerts", "t2", streams, async () => {
      await waitCaughtUp(publisher, 2, 60_000);
    });
    expect(logLines(cluster, 2, "the data directory stopped in the middle of an epoch switch")).toEqual([]);
    for (const id of [1, 2, 3, 4]) expect(logLines(cluster, id, "peer refused: its cluster file differs")).toEqual([]);
    // Nothing acknowledged over the whole run was lost, repeated or reordered.
    expect(await historyProblems(publisher, "sec.alerts", streams)).toEqual([]);
  }, 180_000);
});
