// The replica group as replicated state, with real replica processes and the `fitb`
// command: `admin members` shows the cluster file's group at epoch 0 on f+1 matching
// answers; unsafe changes (n below 3f+1) are refused by the replicas with their reason,
// and so are add-replica and rotate-replica-key, which this build's replicas cannot yet
// carry out in a running group. Removing a replica, with the epoch switch at the
// checkpoint under a publish stream, is tested in epochs.test.ts.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { FitbClient } from "../../src/client/index.ts";
import { formatPublicKey, loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { clientFor, startClusterWithChannels } from "./client-util.ts";
import type { TestCluster } from "./harness.ts";

let cluster: TestCluster;
let A: string[];
let publisher: FitbClient;

type MembersJson = {
  epoch: number;
  f: number;
  n: number;
  digest: string;
  members: { id: number; host: string; port: number; peerPort: number | null; key: string }[];
  pending: (MembersJson & { from: number }) | null;
};

async function members(): Promise<MembersJson> {
  const run = await cluster.fitb(["admin", ...A, "members", "--json"]);
  if (run.code !== 0) throw new Error(`admin members exited ${run.code}: ${run.stderr}${run.stdout}`);
  return JSON.parse(run.stdout) as MembersJson;
}

beforeAll(async () => {
  cluster = await startClusterWithChannels();
  A = ["--config", cluster.configPath, "--key", cluster.adminKey];
  publisher = clientFor(cluster, cluster.clientKey);
}, 120_000);

afterAll(async () => {
  publisher?.close();
  await cluster.stop();
});

describe("membership as replicated state", () => {
  test("before any change, members is the cluster file's group at epoch 0", async () => {
    const group = await members();
    expect(group).toMatchObject({ epoch: 0, f: 1, n: 4, pending: null });
    expect(group.members.map((member) => member.id)).toEqual([0, 1, 2, 3]);
    expect(group.digest).toMatch(/^[0-9a-f]{64}$/);
  }, 60_000);

  test("a change that would leave n below 3f+1 is refused by the replicas, naming the rule", async () => {
    const removed = await cluster.fitb(["admin", ...A, "remove-replica", "--id", "3"]);
    expect(removed.code).not.toBe(0);
    expect(`${removed.stdout}${removed.stderr}`).toContain("removing replica 3 leaves n = 3, below 3f+1 = 4");
    const raised = await cluster.fitb(["admin", ...A, "set-f", "2"]);
    expect(raised.code).not.toBe(0);
    expect(`${raised.stdout}${raised.stderr}`).toContain("f = 2 needs n >= 3f+1 = 7");
    expect((await members()).pending).toBeNull();
  }, 60_000);

  test("add-replica and rotate-replica-key are refused in a running group, saying why; the group stays as it was", async () => {
    const keyPath = join(cluster.dir, "replica-4.key");
    const keygen = await cluster.fitb(["keygen", "--out", keyPath]);
    expect(keygen.code).toBe(0);
    const newKey = formatPublicKey(loadSigningKeyFile(keyPath).key.publicKey);
    const before = await members();
    const add = await cluster.fitb([
      "admin",
      ...A,
      "add-replica",
      "--id",
      "4",
      "--host",
      "127.0.0.1",
      "--port",
      String(cluster.basePort + 40),
      "--replica-key",
      newKey,
    ]);
    expect(add.code).not.toBe(0);
    expect(`${add.stdout}${add.stderr}`).toContain(
      "cannot yet let a replica or key that the cluster file does not name join a running group",
    );
    const rotate = await cluster.fitb(["admin", ...A, "rotate-replica-key", "--id", "2", "--replica-key", newKey]);
    expect(rotate.code).not.toBe(0);
    expect(`${rotate.stdout}${rotate.stderr}`).toContain("stop the replicas, give every host the new cluster.toml");
    const after = await members();
    expect(after).toEqual(before);
    expect(after.pending).toBeNull();
  }, 120_000);
});
