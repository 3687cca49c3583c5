// The replica group as replicated state, with real replica processes and the `fitb`
// command: `admin members` shows the cluster file's group at epoch 0 on f+1 matching
// answers; unsafe changes (n below 3f+1, an f whose NEW_VIEW exceeds a frame, a key or id already taken) are refused by the
// replicas with their reason. Removing a replica, with the
// epoch switch at the checkpoint under a publish stream, is tested in epochs.test.ts;
// adding one and rotating a key in join.test.ts.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { FitbClient } from "../../src/client/index.ts";
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
    expect(`${raised.stdout}${raised.stderr}`).toContain("needs n >= 3f+1 = 7");
    expect(`${raised.stdout}${raised.stderr}`).toContain("f = 2 needs n >= 3f+1 = 7");
    // An f whose NEW_VIEW would not fit the cluster's frames, whatever n (the largest frames allow f = 4).
    const unfit = await cluster.fitb(["admin", ...A, "set-f", "5"]);
    expect(unfit.code).not.toBe(0);
    expect(`${unfit.stdout}${unfit.stderr}`).toContain("a leader change may need a NEW_VIEW message of up to");
    expect((await members()).pending).toBeNull();
  }, 60_000);

  test("add-replica and rotate-replica-key keep their checks (unique ids, keys and addresses), set-f needs n >= 3f+1; the group stays as it was", async () => {
    const before = await members();
    const fileKey = (id: number): string => before.members.find((member) => member.id === id)?.key ?? "";
    const taken = await cluster.fitb([
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
      fileKey(1),
    ]);
    expect(taken.code).not.toBe(0);
    expect(`${taken.stdout}${taken.stderr}`).toContain("the key is replica 1's");
    const again = await cluster.fitb([
      "admin",
      ...A,
      "add-replica",
      "--id",
      "2",
      "--host",
      "127.0.0.1",
      "--port",
      String(cluster.basePort + 41),
      "--replica-key",
      fileKey(0),
    ]);
    expect(again.code).not.toBe(0);
    expect(`${again.stdout}${again.stderr}`).toContain("replica 2 is already a member");
    const rotate = await cluster.fitb(["admin", ...A, "rotate-replica-key", "--id", "2", "--replica-key", fileKey(3)]);
    expect(rotate.code).not.toBe(0);
    expect(`${rotate.stdout}${rotate.stderr}`).toContain("the key is replica 3's");
    const raised = await cluster.fitb(["admin", ...A, "set-f", "2"]);
    expect(raised.code).not.toBe(0);
    expect(`${raised.stdout}${raised.stderr}`).toContain("needs n >= 3f+1 = 7");
    const after = await members();
    expect(after).toEqual(before);
    expect(after.pending).toBeNull();
  }, 120_000);
});
