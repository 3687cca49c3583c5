// Membership epochs with real replica processes: `admin remove-replica` of the leader of a
// five-replica group (f = 1) takes effect at a checkpoint the old group made stable; the
// four others start the next epoch's ordering core there (new ranks, quorums and cluster
// id) and go on ordering a steady publish stream, while the removed replica says so in
// its log and stops. The history checker finds no acknowledged event lost, none twice,
// and one order for the live subscriber and the history read afterwards.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { FitbClient } from "../../src/client/index.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, collect, startClusterWithChannels } from "./client-util.ts";
import { checkTotalOrder, logLines, publishStream } from "./durability-history.ts";
import { logTail, type TestCluster } from "./harness.ts";

let cluster: TestCluster;
let publisher: FitbClient;

beforeAll(async () => {
  cluster = await startClusterWithChannels({ replicas: 5 });
  publisher = clientFor(cluster, cluster.clientKey);
}, 120_000);

afterAll(async () => {
  publisher?.close();
  await cluster.stop();
});

describe("epoch switch", () => {
  test("removing the leader under a publish stream: the others switch epochs at the checkpoint, nothing acknowledged is lost", async () => {
    const A = ["--config", cluster.configPath, "--key", cluster.adminKey];
    const live = await collect(publisher, "sec.alerts");
    const remaining = [1, 2, 3, 4];
    const started = (id: number): boolean => logLines(cluster, id, "epoch started").some((line) => line["epoch"] === 1);
    let removedOut = "";
    let afterSwitch = 0;
    const stream = await publishStream(
      publisher,
      "sec.alerts",
      "r",
      // Bounded: a group that never switched fails below instead of publishing forever.
      (r) => r < 600 && (r < 20 || !remaining.every(started) || afterSwitch++ < 30),
      1,
      async (r) => {
        if (r !== 10) return;
        const run = await cluster.fitb(["admin", ...A, "remove-replica", "--id", "0"]);
        removedOut = `${run.code} ${run.stdout}${run.stderr}`;
      },
    );
    expect(removedOut).toContain("ok: removing replica 0");
    for (const id of remaining) {
      const line = logLines(cluster, id, "epoch started").find((entry) => entry["epoch"] === 1);
      expect(line).toMatchObject({ epoch: 1, n: 4, f: 1, members: remaining, rank: id - 1 });
      expect((line?.["seq"] as number) % 128).toBe(0);
    }
    // The removed leader said why it stopped, and stopped.
    await waitFor(
      "replica 0 to log its removal",
      () => logLines(cluster, 0, "this replica was removed from the group: it stops ordering and serving clients").length > 0,
      30_000,
      () => logTail(cluster, 0),
    );
    const exited = await cluster.procs[0]?.exited;
    expect(exited).toBe(0);
    cluster.procs[0] = null;

    // The new epoch has a leader of its own, and every remaining replica executed past the switch.
    const status = await publisher.status();
    const views = status.replicas.filter((r) => r.answer?.ok === true).map((r) => (r.answer?.ok === true ? r.answer.value : null));
    expect(views.length).toBeGreaterThanOrEqual(4);

    await waitFor("the live subscriber to catch up", () => live.events.length >= stream.acked.length, 60_000);
    await live.close();
    const history = await collect(publisher, "sec.alerts", 1);
    await waitFor("the history to be read", () => history.events.length >= stream.acked.length, 60_000);
    await history.close();
    expect(checkTotalOrder([stream], history.events, live.events)).toEqual([]);
    for (const id of [0, 1, 2])
      console.log(
        (cluster.logs[id] ?? [])
          .join("")
          .split("\n")
          .filter((l) => /epoch|view|warn|error|removed|again/.test(l))
          .join("\n"),
      );
    const members = JSON.parse((await cluster.fitb(["admin", ...A, "members", "--json"])).stdout) as {
      epoch: number;
      n: number;
      members: { id: number }[];
    };
    expect(members).toMatchObject({ epoch: 1, n: 4 });
    expect(members.members.map((member) => member.id)).toEqual(remaining);
  }, 300_000);
});
