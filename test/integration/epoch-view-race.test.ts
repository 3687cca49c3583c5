// A membership change racing a view change, with real replica processes. A five-replica
// group (f = 1) orders a steady publish stream; its leader is paused (SIGSTOP) and, at
// once, `admin remove-replica` removes that paused leader. The request cannot be ordered
// in the leader's view: the others change views, the new leader orders the change, and it
// takes effect at the next checkpoint as epoch 1 with n = 4. The paused replica, resumed,
// learns it was removed, says so and exits. The history checker finds no acknowledged event lost, none twice,
// and one order, across the view change and the epoch switch.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { FitbClient } from "../../src/client/index.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, collect, startClusterWithChannels } from "./client-util.ts";
import { checkTotalOrder, logLines, publishStream, type Stream } from "./durability-history.ts";
import { logTail, type TestCluster } from "./harness.ts";

let cluster: TestCluster;
let publisher: FitbClient;

beforeAll(async () => {
  cluster = await startClusterWithChannels({ replicas: 5 });
  publisher = clientFor(cluster, cluster.clientKey);
}, 120_000);

afterAll(async () => {
  publisher?.close();
  for (const proc of cluster?.procs ?? []) proc?.kill("SIGCONT");
  await cluster?.stop();
});

const tsOf = (line: Record<string, unknown> | undefined): number => Date.parse(String(line?.["ts"]));

describe("a membership change racing a view change", () => {
  test("remove-replica of the paused leader, under a publish stream: ordered in the next view, epoch 1 starts without it, nothing lost", async () => {
    // The leader and its view are read when the pause is due, not before the stream: the
    // group may change views while it starts on a loaded machine.
    let leader = -1;
    let viewBefore = -1;
    let others: number[] = [];
    const started = (id: number): boolean => logLines(cluster, id, "epoch started").some((line) => line["epoch"] === 1);
    let removal: Promise<{ code: number; stdout: string; stderr: string }> | null = null;
    let afterSwitch = 0;
    const streams: Stream[] = [];
    const stream = await publishStream(
      publisher,
      "sec.alerts",
      "v",
      // Bounded: a group that never switched fails below instead of publishing forever.
      (r) => r < 600 && (r < 20 || !others.every(started) || afterSwitch++ < 20),
      1,
      async (r) => {
        if (r !== 10) return;
        await waitFor(
          "the replicas to agree on a view and its leader",
          async () => {
            const status = await publisher.status();
            if (!status.agreed || status.view === null || status.leader === null) return false;
            leader = status.leader;
            viewBefore = status.view;
            return true;
          },
          60_000,
        );
        others = [0, 1, 2, 3, 4].filter((id) => id !== leader);
        // The leader stops answering, and the change that removes it is sent at once, not awaited.
        cluster.procs[leader]?.kill("SIGSTOP");
        removal = cluster.fitb(
          ["admin", "--config", cluster.configPath, "--key", cluster.adminKey, "remove-replica", "--id", String(leader)],
          { timeoutMs: 120_000 },
        );
      },
    );
    streams.push(stream);
    const removed = await (removal as unknown as Promise<{ code: number; stdout: string; stderr: string }>);
    expect(`${removed.code} ${removed.stdout}${removed.stderr}`).toContain(`ok: removing replica ${leader}`);

    for (const id of others) {
      // The view changed away from the paused leader before the change was executed: it was ordered in the new view.
      const installed = logLines(cluster, id, "view installed").find((line) => (line["view"] as number) > viewBefore);
      const executed = logLines(cluster, id, "admin command executed").find((line) => line["cmd"] === "remove-replica");
      expect(installed).toBeDefined();
      expect(executed).toBeDefined();
      // The line's `replica` is the one that wrote it; the command's target is `target_replica`.
      expect(executed).toMatchObject({ replica: id, target_replica: String(leader) });
      expect(tsOf(installed)).toBeLessThanOrEqual(tsOf(executed));
      expect(installed?.["leader"]).not.toBe(leader);
      const epoch = logLines(cluster, id, "epoch started").find((line) => line["epoch"] === 1);
      expect(epoch).toMatchObject({ epoch: 1, n: 4, f: 1, members: others });
      expect((epoch?.["seq"] as number) % 128).toBe(0);
    }
    expect(stream.acked.length).toBeGreaterThan(20);

    // The paused replica resumes in a group that no longer has it: it learns so, says so and exits.
    cluster.procs[leader]?.kill("SIGCONT");
    await waitFor(
      `replica ${leader} to log its removal`,
      () => logLines(cluster, leader, "this replica was removed from the group: it stops ordering and serving clients").length > 0,
      60_000,
      () => logTail(cluster, leader),
    );
    expect(await cluster.procs[leader]?.exited).toBe(0);
    cluster.procs[leader] = null;

    // More traffic in epoch 1, then the whole history: nothing lost, nothing twice, one order.
    streams.push(await publishStream(publisher, "sec.alerts", "w", 20, 1));
    const history = await collect(publisher, "sec.alerts", 1);
    const acked = streams.reduce((sum, s) => sum + s.acked.length, 0);
    await waitFor(
      "the history to be read",
      () => history.events.length >= acked,
      60_000,
      () => `${history.events.length} of ${acked}\n${logTail(cluster, others[0] as number)}`,
    );
    await history.close();
    expect(checkTotalOrder(streams, history.events)).toEqual([]);
  }, 300_000);
});
