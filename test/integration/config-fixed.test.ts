/**
 * A replica executes its decided history again at each start with the cluster file it has
 * then, so a data directory records the admin keys, limits and retention it was written
 * under and refuses a start with other ones (storage/store.ts StoreIdentity.executionConfig):
 * changed on every host at once, they would pass the peers' HELLO check and still make
 * replicas with different checkpoints judge an old admin command differently.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { publicKeyPathFor } from "../../src/crypto/keys.ts";
import { jsonLogLines } from "../helpers/log-lines.ts";
import { waitFor } from "../helpers/wait.ts";
import { logTail, startCluster, type TestCluster } from "./harness.ts";

let cluster: TestCluster;

/** The cluster file each replica starts from when not the one the cluster was made with. */
const configOf: Record<number, string> = {};

beforeAll(async () => {
  cluster = await startCluster({ start: false, replicaConfig: (id) => configOf[id] });
});

afterAll(async () => {
  await cluster.stop();
});

async function startedTimes(id: number, times: number): Promise<void> {
  await waitFor(
    `replica ${id} started ${times} time(s)`,
    () => jsonLogLines(cluster.logs[id], "replica started").length >= times,
    30_000,
    () => logTail(cluster, id),
  );
}

async function stopReplica(id: number): Promise<void> {
  const proc = cluster.procs[id];
  cluster.kill(id, "SIGTERM");
  await proc?.exited;
}

describe("the cluster file's admin keys are fixed for a data directory", () => {
  test("a start with other admin_keys is refused, naming them; the file it was written under still starts it", async () => {
    cluster.start(0);
    await startedTimes(0, 1);
    await stopReplica(0);

    const original = readFileSync(cluster.configPath, "utf8");
    const clientPublic = readFileSync(publicKeyPathFor(cluster.clientKey), "utf8").trim();
    const altered = original.replace(/^admin_keys = \[.*\]$/m, `admin_keys = ["${clientPublic}"]`);
    expect(altered).not.toBe(original);
    const alteredPath = join(cluster.dir, "altered.toml");
    writeFileSync(alteredPath, altered);

    const refused = await cluster.fitb(["replica", "--config", alteredPath, "--id", "0"], { timeoutMs: 30_000 });
    expect(refused.code).not.toBe(0);
    expect(refused.stdout + refused.stderr).toContain("was written under a cluster file with other admin_keys");

    cluster.start(0);
    await startedTimes(0, 2);
    await stopReplica(0);
  }, 90_000);

  test("a limit that bounds sessions only (a client's event rate) may change: the replica starts again with it", async () => {
    cluster.start(1);
    await startedTimes(1, 1);
    await stopReplica(1);
    const original = readFileSync(cluster.configPath, "utf8");
    const raised = original.replace(/^client_events_per_second_max = \d+/m, "client_events_per_second_max = 10000000");
    expect(raised).not.toBe(original);
    configOf[1] = join(cluster.dir, "raised.toml");
    writeFileSync(configOf[1], raised);
    cluster.start(1);
    await startedTimes(1, 2);
    await stopReplica(1);
  }, 90_000);
});
