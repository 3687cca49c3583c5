// A membership change on an idle group. A change takes effect at the checkpoint after the
// seq it was decided at (src/core/ordering/PROTOCOL.md §13); with no client publishing,
// the group reached that checkpoint only when traffic came, so a key rotated or a replica
// removed stayed pending meanwhile. The leader now pads the seqs up to it with empty
// batches. Here nothing is published at all: a fifth replica is added (and never started),
// then the leader is removed, and each change takes effect by itself.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { SigningKey } from "../../src/crypto/keys.ts";
import { waitFor } from "../helpers/wait.ts";
import { killAndWait, logLines, startUntilLogged } from "./durability-history.ts";
import { logTail, startCluster, type TestCluster } from "./harness.ts";

let cluster: TestCluster;
let A: string[];

beforeAll(async () => {
  // Replica 1 runs its ordering core on a thread of its own: the core's padding input
  // crosses to it like any other.
  cluster = await startCluster({ replicas: 4, replicaArgs: (id) => (id === 1 ? ["--threads", "1", "--ordering-thread", "on"] : []) });
  A = ["--config", cluster.configPath, "--key", cluster.adminKey];
}, 120_000);

afterAll(async () => {
  await cluster.stop();
});

const startedEpoch = (id: number, epoch: number) => logLines(cluster, id, "epoch started").find((line) => line["epoch"] === epoch);

describe("a membership change on an idle group", () => {
  test("adding a replica takes effect at the next checkpoint with no client publishing, padded by the leader of the moment", async () => {
    // The first leader is paused: the next one (replica 1, its core on its own thread)
    // orders the change after the view change and pads to its checkpoint.
    const paused = cluster.procs[0];
    paused?.kill("SIGSTOP");
    try {
      const added = await cluster.fitb([
        "admin",
        ...A,
        "add-replica",
        "--id",
        "4",
        "--host",
        "127.0.0.1",
        "--port",
        "1",
        "--replica-key",
        SigningKey.generate().publicKeyText,
        // Replica 4 never runs and replica 0 is paused: the group of five has three of its
        // members running, under its quorum of four, which the command asks to confirm.
        "--yes",
      ]);
      expect(`${added.code} ${added.stdout}${added.stderr}`).toContain("ok: adding replica 4");
      for (const id of [1, 2, 3]) {
        await waitFor(
          `replica ${id} to start epoch 1`,
          () => startedEpoch(id, 1) !== undefined,
          60_000,
          () => logTail(cluster, id),
        );
        expect(startedEpoch(id, 1)).toMatchObject({ epoch: 1, seq: 128, n: 5, f: 1, members: [0, 1, 2, 3, 4] });
      }
      expect(logLines(cluster, 1, "view installed").find((line) => line["epoch"] === 0)).toMatchObject({ leader: 1 });
    } finally {
      paused?.kill("SIGCONT");
    }
    // The paused replica catches up across the switch (its peers send it the proof that ended epoch 0).
    await waitFor(
      "replica 0 to start epoch 1",
      () => startedEpoch(0, 1) !== undefined,
      60_000,
      () => logTail(cluster, 0),
    );
  }, 120_000);

  test("removing the leader takes effect the same way, the removed leader padding to its own removal", async () => {
    const removed = await cluster.fitb(["admin", ...A, "remove-replica", "--id", "0"]);
    expect(`${removed.code} ${removed.stdout}${removed.stderr}`).toContain("ok: removing replica 0");
    for (const id of [1, 2, 3]) {
      await waitFor(
        `replica ${id} to start epoch 2`,
        () => startedEpoch(id, 2) !== undefined,
        60_000,
        () => logTail(cluster, id),
      );
      expect(startedEpoch(id, 2)).toMatchObject({ epoch: 2, n: 4, f: 1, members: [1, 2, 3, 4] });
      expect((startedEpoch(id, 2)?.["seq"] as number) % 128).toBe(0);
    }
    expect(await cluster.procs[0]?.exited).toBe(0);
    cluster.procs[0] = null;
  }, 90_000);

  test("a replica restarted in the later epoch says in its start line the group it runs in, not the cluster file's", async () => {
    await killAndWait(cluster, 2);
    await startUntilLogged(cluster, 2, "replica started");
    const started = logLines(cluster, 2, "replica started").at(-1);
    expect(started).toMatchObject({ epoch: 2, n: 4, f: 1 });
  }, 90_000);
});
