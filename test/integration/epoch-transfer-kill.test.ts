// A replica killed while it fetches the state, after a membership change it was down
// for. Four real replica processes (f = 1); replica 1 is stopped, replica 3's key is
// rotated (epoch 1) and 3 restarted with its new key, and the others order far past
// replica 1's log. Started again, replica 1 is sent the proof that ended epoch 0, switches
// and fetches the state there by state transfer; it is killed with SIGKILL as soon as it
// says the transfer started, and started once more. A replica the cluster file lists,
// with its own key, must come back from that on its own: under systemd a kill mid-transfer
// (a crash, the OOM killer, a power cut) is followed by a restart, and a replica that
// refuses every restart stays the one fault the group tolerates until an operator moves
// its data directory aside.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { FitbClient } from "../../src/client/index.ts";
import { formatPublicKey, loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, collect, startClusterWithChannels } from "./client-util.ts";
import { checkTotalOrder, killAndWait, logLines, publishStream, type Stream, waitCaughtUp } from "./durability-history.ts";
import { logTail, type TestCluster } from "./harness.ts";

let cluster: TestCluster;
let publisher: FitbClient;
let A: string[];
const streams: Stream[] = [];
/** Extra arguments each replica is started with (replica 3's new key once rotated). */
const replicaArgs = new Map<number, string[]>();
/** Each event's bytes: a state of some megabytes, so that its transfer takes a while. */
const EVENT_BYTES = 4096;
/** Attempts at killing replica 1 while the transfer runs (one that finished first is tried again). */
const ATTEMPTS = 4;

const inEpoch = (id: number, epoch: number): boolean => logLines(cluster, id, "epoch started").some((line) => line["epoch"] === epoch);

beforeAll(async () => {
  cluster = await startClusterWithChannels({ replicas: 4, replicaArgs: (id) => replicaArgs.get(id) ?? [] });
  publisher = clientFor(cluster, cluster.clientKey);
  A = ["--config", cluster.configPath, "--key", cluster.adminKey];
}, 120_000);

afterAll(async () => {
  publisher?.close();
  await cluster.stop();
});

/** Rotates replica 3's key under a publish stream until the `live` replicas and 3 started epoch 1, then restarts 3 with its new key. */
async function rotateReplica3(live: number[]): Promise<void> {
  const path = join(cluster.dir, "replica-3-new.key");
  const keygen = await cluster.fitb(["keygen", "--out", path]);
  expect(keygen.code).toBe(0);
  const key = formatPublicKey(loadSigningKeyFile(path).key.publicKey);
  let out = "";
  streams.push(
    await publishStream(
      publisher,
      "sec.alerts",
      "r",
      (r) => r < 600 && (r < 20 || ![...live, 3].every((id) => inEpoch(id, 1))),
      1,
      async (r) => {
        if (r !== 10) return;
        const run = await cluster.fitb(["admin", ...A, "rotate-replica-key", "--id", "3", "--replica-key", key]);
        out = `${run.code} ${run.stdout}${run.stderr}`;
      },
    ),
  );
  expect(out).toContain("ok");
  await killAndWait(cluster, 3);
  replicaArgs.set(3, ["--key", path]);
  cluster.start(3);
  await waitFor(
    "replica 3 to learn the group under its new key",
    () => logLines(cluster, 3, "learned the group from its replicas").length > 0,
    60_000,
    () => logTail(cluster, 3),
  );
  await waitCaughtUp(publisher, 3, 60_000);
}

describe("a replica killed while it fetches the state in epoch 1", () => {
  test("starts again on its own, fetches the state and catches up; nothing acknowledged is lost", async () => {
    await killAndWait(cluster, 1);
    await rotateReplica3([0, 2]);
    let killedMidTransfer = false;
    for (let attempt = 0; attempt < ATTEMPTS && !killedMidTransfer; attempt++) {
      if (attempt > 0) await killAndWait(cluster, 1);
      // Far past replica 1's log window (256 seqs): it can only catch up by state transfer.
      streams.push(await publishStream(publisher, "sec.alerts", `a${attempt}`, 400, 4, undefined, EVENT_BYTES));
      const started = logLines(cluster, 1, "state transfer started").length;
      const installed = logLines(cluster, 1, "snapshot installed").length;
      cluster.start(1);
      await waitFor(
        "replica 1 to start fetching the state",
        () => logLines(cluster, 1, "state transfer started").length > started,
        60_000,
        () => logTail(cluster, 1),
      );
      await killAndWait(cluster, 1);
      killedMidTransfer = logLines(cluster, 1, "snapshot installed").length === installed;
    }
    expect(killedMidTransfer).toBe(true);
    cluster.start(1);
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
    const acked = streams.reduce((sum, stream) => sum + stream.acked.length, 0);
    const history = await collect(publisher, "sec.alerts", 1);
    await waitFor("the history to be read", () => history.events.length >= acked, 60_000);
    await history.close();
    expect(checkTotalOrder(streams, history.events)).toEqual([]);
  }, 600_000);
});
