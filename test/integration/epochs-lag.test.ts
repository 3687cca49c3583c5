// A replica down across two membership epochs. Four real replica processes (f = 1);
// replica 3 is stopped, then two changes land under a publish stream, each waited to
// take effect: `rotate-replica-key` for replica 2 (epoch 1; replica 2 is restarted with
// its new key) and `set-f 0` (epoch 2). Replica 3 restarts in epoch 0: its peers kept the
// proofs of both switches, so it is sent the proof that ended epoch 0, fetches the state
// there, switches to epoch 1, is sent the proof that ended epoch 1, fetches that state and
// switches to epoch 2 (one epoch at a time, each proof checked with the keys of the epoch
// it ends). The proof that ended epoch 1 holds a quorum (3) of checkpoint signatures made
// while only replicas 0, 1 and 2 ran, so it carries replica 2's signature under its new
// key: replica 3 can check it only with the keys it learned at the first switch. It then
// takes part: with replica 1 stopped, the quorum of epoch 2 (3 of 4) needs it, and
// publishes are acknowledged. The history checker finds no acknowledged event lost, none
// twice, and one order.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { FitbClient } from "../../src/client/index.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, startClusterWithChannels } from "./client-util.ts";
import { killAndWait, logLines, restartUnderTrickle, type Stream, waitCaughtUp, historyProblems } from "./durability-history.ts";
import { logTail, type TestCluster } from "./harness.ts";
import {
  changeUnderTraffic as changeOf,
  inEpoch as inEpochOf,
  quorumWithout,
  rejoinUnderTrickle,
  rotateUnderTraffic,
} from "./key-rotation.ts";

let cluster: TestCluster;
let publisher: FitbClient;
let _A: string[];
const streams: Stream[] = [];
/** Extra arguments each replica is started with (replica 2's new key once rotated). */
const replicaArgs = new Map<number, string[]>();

const inEpoch = (id: number, epoch: number): boolean => inEpochOf(cluster, id, epoch);

beforeAll(async () => {
  cluster = await startClusterWithChannels({ replicas: 4, replicaArgs: (id) => replicaArgs.get(id) ?? [] });
  publisher = clientFor(cluster, cluster.clientKey);
  _A = ["--config", cluster.configPath, "--key", cluster.adminKey];
}, 120_000);

afterAll(async () => {
  publisher?.close();
  await cluster.stop();
});

/** Publishes until `change` (run at request 10) took effect on every live replica, then a few more. */
async function changeUnderTraffic(live: number[], epoch: number, change: string[], prefix: string): Promise<string> {
  const { stream, out } = await changeOf(cluster, publisher, { live, epoch, change, prefix });
  streams.push(stream);
  return out;
}

/**
 * Rotates replica 2's key (epoch 1) under a publish stream, then restarts replica 2 with
 * the new key. Replicas 0 and 1 alone are no quorum, so publishing stops at the switch
 * and resumes only once replica 2 runs with its new key.
 */
async function rotateReplica2(): Promise<void> {
  const linksBefore = logLines(cluster, 2, "peer link up").length;
  streams.push(await rotateUnderTraffic(cluster, publisher, { id: 2, epoch: 1, until: [0, 1], prefix: "k", replicaArgs }));
  await waitFor(
    "replica 2 to link with replicas 0 and 1 under its new key",
    () => logLines(cluster, 2, "peer link up").length >= linksBefore + 2,
    60_000,
    () => logTail(cluster, 2),
  );
}

describe("a replica two epochs behind", () => {
  test("down across a key rotation and another change, it walks forward epoch by epoch to the current one and takes part in its quorums", async () => {
    await killAndWait(cluster, 3);
    const live = [0, 1, 2];
    await rotateReplica2();
    expect(await changeUnderTraffic(live, 2, ["set-f", "0", "--yes"], "b")).toContain("ok");

    await rejoinUnderTrickle(cluster, publisher, { id: 3, epoch: 2, prefix: "t3", streams });
    // It went through epoch 1, each switch point's state fetched by state transfer.
    const switches = logLines(cluster, 3, "epoch started");
    expect(switches.map((line) => line["epoch"])).toEqual([1, 2]);
    for (const line of switches) {
      expect(logLines(cluster, 3, "snapshot installed").some((entry) => entry["seq"] === line["seq"])).toBe(true);
    }
    expect(switches[1]).toMatchObject({ epoch: 2, n: 4, f: 0, rank: 3 });

    // With replica 1 down, epoch 2's quorum (3 of 4) needs replica 3.
    streams.push(await quorumWithout(cluster, publisher, 1, "c"));

    expect(await historyProblems(publisher, "sec.alerts", streams)).toEqual([]);
  }, 400_000);

  test("further behind than the switches kept, it stays out and both sides log what to do", async () => {
    await restartUnderTrickle(cluster, publisher, 1, "sec.alerts", "t1", streams, async () => {
      await waitCaughtUp(publisher, 1, 60_000);
    });
    await killAndWait(cluster, 3);
    const live = [0, 1, 2];
    // Five more switches (epochs 3..7): the others keep the proofs of the last 4 (epochs 3..6 ended), not of epoch 2's end.
    for (let epoch = 3; epoch <= 7; epoch++) {
      expect(await changeUnderTraffic(live, epoch, epoch % 2 === 1 ? ["set-f", "1"] : ["set-f", "0", "--yes"], `e${epoch}`)).toContain(
        "ok",
      );
    }
    await restartUnderTrickle(cluster, publisher, 3, "sec.alerts", "t3b", streams, async () => {
      await waitFor(
        "a replica to log that it keeps no proof of epoch 2's end",
        () =>
          live.some((id) =>
            logLines(cluster, id, "peer message of another epoch refused: no proof of that epoch's end is kept here").some(
              (line) => line["peer"] === 3 && line["epoch"] === 2 && String(line["why"]).includes("must rejoin"),
            ),
          ),
        120_000,
        () => logTail(cluster, 0),
      );
      await waitFor(
        "replica 3 to log that it is in an older epoch and what to do",
        () =>
          logLines(cluster, 3, "peer message of another epoch refused").some(
            (line) => line["ours"] === 2 && line["epoch"] === 7 && String(line["hint"]).includes("rotate-replica-key"),
          ),
        60_000,
        () => logTail(cluster, 3),
      );
    });
    expect(inEpoch(3, 3)).toBe(false);
    expect(await historyProblems(publisher, "sec.alerts", streams)).toEqual([]);
  }, 600_000);
});
