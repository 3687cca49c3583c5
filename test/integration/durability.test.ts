/**
 * Durability with real processes (src/README.md §5): four `fitb replica` processes on
 * 127.0.0.1 with their data directories, killed with SIGKILL mid-stream and restarted;
 * all four killed at once; one wiped and restored by state transfer, then serving
 * history with only f+1 replicas up. Judged by the history checker over everything
 * acknowledged and delivered (durability-history.ts).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import type { FitbClient } from "../../src/client/index.ts";
import { loadPublicKeyFile } from "../../src/crypto/keys.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, collect, createChannels, type Delivered } from "./client-util.ts";
import {
  catchUpUnderTraffic,
  checkTotalOrder,
  checkUnordered,
  dataDirOf,
  historyByCli,
  logLines,
  publishStream,
  acked,
  readHistory,
  type Stream,
  waitConverged,
} from "./durability-history.ts";
import { startCluster, type TestCluster } from "./harness.ts";

/** Requests per stream; each of the streams below runs them one after another. */
const REQUESTS = 120;
/** Bound on waiting for replicas to converge after a restart. */
const CONVERGE_MS = 60_000;

describe("kill -9 during a publish stream", () => {
  let cluster: TestCluster;
  let admin: FitbClient;
  let publisher: FitbClient;
  let reader: FitbClient;
  const alerts: Stream[] = [];
  const disks: Stream[] = [];
  const links: Stream[] = [];

  beforeAll(async () => {
    cluster = await startCluster();
    admin = clientFor(cluster, cluster.adminKey);
    publisher = clientFor(cluster, cluster.clientKey);
    reader = clientFor(cluster, cluster.clientKey);
    await createChannels(admin, loadPublicKeyFile(`${cluster.clientKey}.pub`));
  }, 120_000);

  afterAll(async () => {
    for (const client of [admin, publisher, reader]) client?.close();
    await cluster?.stop();
  });

  test("a follower and then the leader killed and restarted mid-stream: nothing acknowledged is lost, duplicated or reordered", async () => {
    const leader = (await admin.status()).leader as number;
    const follower = (leader + 1) % cluster.n;
    const liveAlerts = await collect(reader, "sec.alerts");
    const liveDisks = await collect(reader, "storage.disks");
    // The crash schedule runs on the progress of the alerts stream.
    const schedule = new Map<number, () => void>([
      [Math.floor(REQUESTS / 5), () => cluster.kill(follower)],
      [Math.floor((2 * REQUESTS) / 5), () => cluster.start(follower)],
      [Math.floor((3 * REQUESTS) / 5), () => cluster.kill(leader)],
      [Math.floor((4 * REQUESTS) / 5), () => cluster.start(leader)],
    ]);
    const streams = await Promise.all([
      publishStream(publisher, "sec.alerts", "alert", REQUESTS, 2, (r) => schedule.get(r)?.()),
      publishStream(publisher, "storage.disks", "disk", REQUESTS, 1),
      publishStream(publisher, "net.links", "link", REQUESTS / 2, 1),
    ]);
    alerts.push(streams[0]);
    disks.push(streams[1]);
    links.push(streams[2]);
    expect(acked(alerts)).toBeGreaterThan(REQUESTS);
    await waitConverged(admin, [0, 1, 2, 3], CONVERGE_MS);
    // Both restarted replicas came back from their data directories, not from scratch,
    // and, killed, fenced their votes in the view they were in (core PROTOCOL.md §2).
    for (const id of [follower, leader]) {
      const recoveries = logLines(cluster, id, "recovered from the data directory");
      expect(recoveries.length).toBe(2);
      expect(recoveries[1]?.lastDecided as number).toBeGreaterThan(0);
      expect(logLines(cluster, id, "restarted without a clean stop: votes fenced").length).toBe(1);
    }
    const alertHistory = await readHistory(reader, publisher, alerts, 1);
    const diskHistory = await readHistory(reader, publisher, disks, 1);
    // The live subscribers are judged up to the same end markers.
    for (const [live, history] of [
      [liveAlerts, alertHistory],
      [liveDisks, diskHistory],
    ] as const) {
      const end = (history.at(-1) as Delivered).payload;
      await waitFor(`the live subscriber to get ${end}`, () => live.events.some((e) => e.payload === end), 30_000);
    }
    expect(checkTotalOrder(alerts, alertHistory, liveAlerts.events)).toEqual([]);
    expect(checkTotalOrder(disks, diskHistory, liveDisks.events)).toEqual([]);
    expect(liveAlerts.events.length).toBeGreaterThanOrEqual(acked(alerts));
    const linkHistory = await readHistory(reader, publisher, links, 0);
    expect(checkUnordered(links, linkHistory)).toEqual([]);
    await liveAlerts.close();
    await liveDisks.close();
  }, 180_000);

  test("a replica stopped cleanly (SIGTERM) restarts without the fence a killed one takes", async () => {
    const id = (((await admin.status()).leader as number) + 2) % cluster.n;
    const proc = cluster.procs[id];
    if (proc === null || proc === undefined) throw new Error(`replica ${id} is not running`);
    const fencesBefore = logLines(cluster, id, "restarted without a clean stop: votes fenced").length;
    const startsBefore = logLines(cluster, id, "replica started").length;
    cluster.kill(id, "SIGTERM");
    expect(await proc.exited).toBe(0);
    cluster.start(id);
    // "replica started" follows the core's construction, where a fence would be logged.
    await waitFor(`replica ${id} to start again`, () => logLines(cluster, id, "replica started").length > startsBefore, 30_000);
    expect(logLines(cluster, id, "restarted without a clean stop: votes fenced").length).toBe(fencesBefore);
    await waitConverged(admin, [0, 1, 2, 3], CONVERGE_MS);
    // Its status answer says so too (admin status flags a fenced replica), and names its epoch.
    const answer = (await admin.status()).replicas.find((replica) => replica.id === id)?.answer;
    expect(answer?.ok === true ? { fenced: answer.value.votesFenced, epoch: answer.value.epoch } : answer).toEqual({
      fenced: false,
      epoch: 0,
    });
  }, 120_000);

  test("all four killed with SIGKILL and restarted: every acknowledged event is still there and the group goes on", async () => {
    for (let id = 0; id < cluster.n; id++) cluster.kill(id);
    await Promise.all(cluster.procs.map((proc) => proc?.exited));
    for (let id = 0; id < cluster.n; id++) cluster.start(id);
    await waitConverged(admin, [0, 1, 2, 3], CONVERGE_MS);
    const more = await publishStream(publisher, "sec.alerts", "after", 5, 1);
    expect(more.acked.length).toBe(5);
    alerts.push(more);
    const alertHistory = await readHistory(reader, publisher, alerts, 1);
    expect(checkTotalOrder(alerts, alertHistory)).toEqual([]);
    const diskHistory = await readHistory(reader, publisher, disks, 1);
    expect(checkTotalOrder(disks, diskHistory)).toEqual([]);
    const linkHistory = await readHistory(reader, publisher, links, 0);
    expect(checkUnordered(links, linkHistory)).toEqual([]);
  }, 180_000);
});

describe("a replica that lost its data directory", () => {
  // The second time with every core on its ordering thread: the state transfer's install
  // goes through the thread's claim (src/replica/ordering-host.ts claimTransfer).
  test.each([
    ["", [] as string[]],
    [", every core on its ordering thread", ["--threads", "1", "--ordering-thread", "on"]],
  ])(
    "is restored by state transfer and then serves history with only f+1 replicas up%s",
    async (_name, replicaArgs) => {
      const cluster = await startCluster({ replicaArgs: () => replicaArgs });
      const admin = clientFor(cluster, cluster.adminKey);
      const publisher = clientFor(cluster, cluster.clientKey);
      try {
        await createChannels(admin, loadPublicKeyFile(`${cluster.clientKey}.pub`));
        const leader = (await admin.status()).leader as number;
        const wiped = (leader + 2) % cluster.n;
        // Enough decisions for two stable checkpoints (K = 128): the wiped replica can
        // only come back by state transfer, not by replaying the log window.
        const stream = await publishStream(publisher, "sec.alerts", "alert", 300, 1);
        cluster.kill(wiped);
        rmSync(dataDirOf(cluster, wiped), { recursive: true, force: true });
        cluster.start(wiped);
        const trickled = await catchUpUnderTraffic(cluster, admin, publisher, "sec.alerts", [wiped], CONVERGE_MS);
        expect(logLines(cluster, wiped, "state transfer completed").length).toBeGreaterThanOrEqual(1);
        // Down to f+1 = 2: the restored replica and one other, neither of them the leader.
        const other = (wiped + 1) % cluster.n === leader ? (wiped + 2) % cluster.n : (wiped + 1) % cluster.n;
        for (let id = 0; id < cluster.n; id++) if (id !== wiped && id !== other) cluster.kill(id);
        const streams = [stream, trickled];
        const total = acked(streams);
        const history = await historyByCli(cluster, "sec.alerts", total);
        expect(history.length).toBe(total);
        expect(checkTotalOrder(streams, history)).toEqual([]);
        // f+1 can serve history but cannot order: status says so, and exits 2 (no quorum) for monitoring.
        const status = await cluster.fitb(
          ["admin", "--config", cluster.configPath, "--key", cluster.adminKey, "status", "--connect-timeout", "1000"],
          { timeoutMs: 30_000 },
        );
        expect(status.code).toBe(2);
        expect(status.stdout).toContain("NO QUORUM: 2 of 4 replicas answered, 3 are needed");
      } finally {
        admin.close();
        publisher.close();
        await cluster.stop();
      }
    },
    180_000,
  );
});
