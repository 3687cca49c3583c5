// A replica killed while it fetches the state, after a membership change it was down
// for. Four real replica processes (f = 1); replica 1 is stopped, replica 3's key is
// rotated (epoch 1) and 3 restarted with its new key (first with its old one, which it
// refuses to run with, naming both keys), and the others order far past
// replica 1's log. Started again, replica 1 is sent the proof that ended epoch 0, switches
// and fetches the state there by state transfer; it is killed with SIGKILL as soon as it
// says the transfer started, and started once more. A replica the cluster file lists,
// with its own key, must come back from that on its own: under systemd a kill mid-transfer
// (a crash, the OOM killer, a power cut) is followed by a restart, and a replica that
// refuses every restart stays the one fault the group tolerates until an operator moves
// its data directory aside.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { FitbClient } from "../../src/client/index.ts";
import { EXIT_STATE_UNTRUSTED } from "../../src/replica/ordering-driver.ts";
import { clientFor, startClusterWithChannels } from "./client-util.ts";
import {
  killAndWait,
  logLines,
  publishStream,
  type Stream,
  startUntilLogged,
  waitCaughtUp,
  historyProblems,
} from "./durability-history.ts";
import { waitFor } from "../helpers/wait.ts";
import { logTail, type TestCluster } from "./harness.ts";
import { rotateUnderTraffic } from "./key-rotation.ts";

let cluster: TestCluster;
let publisher: FitbClient;
const streams: Stream[] = [];
/** Extra arguments each replica is started with (replica 3's new key once rotated). */
const replicaArgs = new Map<number, string[]>();
/** Each event's bytes: a state of some megabytes, so that its transfer takes a while. */
const EVENT_BYTES = 4096;
/** Attempts at killing replica 1 while the transfer runs (one that finished first is tried again). */
const ATTEMPTS = 4;

beforeAll(async () => {
  cluster = await startClusterWithChannels({ replicas: 4, replicaArgs: (id) => replicaArgs.get(id) ?? [] });
  publisher = clientFor(cluster, cluster.clientKey);
}, 120_000);

afterAll(async () => {
  publisher?.close();
  await cluster.stop();
});

describe("a replica killed while it fetches the state in epoch 1", () => {
  test("starts again on its own, fetches the state and catches up; nothing acknowledged is lost", async () => {
    await killAndWait(cluster, 1);
    // Started again with its old key after the rotation took effect there, it stops at once, naming both keys,
    // instead of dialling peers that refuse that key for ever.
    const oldKeyStart = async (): Promise<void> => {
      const before = logLines(cluster, 3, "this replica runs with another key than its group names for it").length;
      cluster.start(3);
      const proc = cluster.procs[3];
      await waitFor(
        "replica 3, started with its old key, to stop",
        () => proc?.exitCode !== null,
        60_000,
        () => logTail(cluster, 3),
      );
      expect(proc?.exitCode).toBe(EXIT_STATE_UNTRUSTED);
      const refused = logLines(cluster, 3, "this replica runs with another key than its group names for it");
      expect(refused.length).toBe(before + 1);
      expect(refused.at(-1)).toMatchObject({ epoch: 1 });
      cluster.procs[3] = null;
    };
    streams.push(
      await rotateUnderTraffic(cluster, publisher, {
        id: 3,
        epoch: 1,
        until: [0, 2, 3],
        prefix: "r",
        replicaArgs,
        beforeRestart: oldKeyStart,
      }),
    );
    await waitCaughtUp(publisher, 3, 60_000);
    // Killed in the transfer, it must come back with the base it had before: the start after
    // the kill says so in its recovery line (a transfer that ended first would be its base).
    let killedMidTransfer = false;
    for (let attempt = 0; attempt < ATTEMPTS && !killedMidTransfer; attempt++) {
      if (attempt > 0) await killAndWait(cluster, 1);
      // Far past replica 1's log window (256 seqs): it can only catch up by state transfer.
      streams.push(await publishStream(publisher, "sec.alerts", `a${attempt}`, 400, 4, undefined, EVENT_BYTES));
      await startUntilLogged(cluster, 1, "state transfer started");
      const target = logLines(cluster, 1, "state transfer started").at(-1)?.["seq"] as number;
      await killAndWait(cluster, 1);
      await startUntilLogged(cluster, 1, "recovered from the data directory");
      killedMidTransfer = (logLines(cluster, 1, "recovered from the data directory").at(-1)?.["baseSnapshot"] as number) < target;
    }
    expect(killedMidTransfer).toBe(true);
    const proc = cluster.procs[1];
    const exited = proc?.exited.then((code) => {
      throw new Error(`replica 1 exited with status ${code} instead of catching up:\n${logTail(cluster, 1)}`);
    });
    await Promise.race([
      waitCaughtUp(publisher, 1, 120_000).catch((error: Error) => {
        throw new Error(`${error.message}\nreplica 1 log:\n${logTail(cluster, 1)}`);
      }),
      exited,
    ]);
    exited?.catch(() => undefined);
    // It takes part: with replica 2 stopped, the quorum (3 of 4) needs it.
    await killAndWait(cluster, 2);
    streams.push(await publishStream(publisher, "sec.alerts", "b", 20, 1));
    expect(streams.at(-1)?.failures).toBe(0);
    expect(await historyProblems(publisher, "sec.alerts", streams)).toEqual([]);
  }, 600_000);
});
