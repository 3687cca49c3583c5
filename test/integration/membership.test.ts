// The replica group as replicated state, with real replica processes and the `fitb`
// command: `admin add-replica` is ordered and acknowledged, `admin members` shows it
// pending on f+1 matching answers, and once the checkpoint boundary after it has
// executed every replica holds the new epoch (and says so in its log), while a publish
// stream crosses the boundary without losing or repeating an acknowledged event. Unsafe
// changes (n below 3f+1) are refused by the replicas with their reason.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { FitbClient } from "../../src/client/index.ts";
import { formatPublicKey, loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, collect, startClusterWithChannels } from "./client-util.ts";
import { checkTotalOrder, logLines, publishStream } from "./durability-history.ts";
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

  test("add-replica is pending until its checkpoint boundary, then every replica holds epoch 1, under a publish stream", async () => {
    const keyPath = join(cluster.dir, "replica-4.key");
    const keygen = await cluster.fitb(["keygen", "--out", keyPath]);
    expect(keygen.code).toBe(0);
    const newKey = formatPublicKey(loadSigningKeyFile(keyPath).key.publicKey);
    const port = cluster.basePort + 40;
    const live = await collect(publisher, "sec.alerts");

    // A stream that runs until every replica has taken the change.
    const tookEffect = (): boolean =>
      [0, 1, 2, 3].every((id) => logLines(cluster, id, "membership change took effect").some((line) => line["epoch"] === 1));
    let added = "";
    const stream = publishStream(
      publisher,
      "sec.alerts",
      "m",
      (r) => r < 20 || !tookEffect(),
      1,
      async (r) => {
        if (r !== 10) return;
        const run = await cluster.fitb([
          "admin",
          ...A,
          "add-replica",
          "--id",
          "4",
          "--host",
          "127.0.0.1",
          "--port",
          String(port),
          "--replica-key",
          newKey,
        ]);
        added = `${run.code} ${run.stdout}${run.stderr}`;
        const pending = (await members()).pending;
        expect(pending).toMatchObject({ epoch: 1, f: 1, n: 5 });
        expect(pending?.members.find((member) => member.id === 4)).toEqual({ id: 4, host: "127.0.0.1", port, peerPort: null, key: newKey });
      },
    );
    const done = await stream;
    expect(added).toContain("ok: adding replica 4");
    const at = Number(/executed at decided seq (\d+)/.exec(added)?.[1]);
    const boundary = Math.ceil(at / 128) * 128;

    for (const id of [0, 1, 2, 3]) {
      const line = logLines(cluster, id, "membership change took effect").find((entry) => entry["epoch"] === 1);
      expect(line).toMatchObject({ epoch: 1, seq: boundary, n: 5, f: 1, added: [4], removed: [], rekeyed: [] });
    }
    await waitFor("members to show epoch 1 on f+1 matching answers", async () => (await members()).epoch === 1);
    const group = await members();
    expect(group).toMatchObject({ epoch: 1, f: 1, n: 5, pending: null });

    // Nothing acknowledged was lost or repeated across the boundary.
    await waitFor("the live subscriber to catch up", () => live.events.length >= done.acked.length);
    await live.close();
    const history = await collect(publisher, "sec.alerts", 1);
    await waitFor("the history to be read", () => history.events.length >= done.acked.length);
    await history.close();
    expect(done.failures).toBe(0);
    expect(checkTotalOrder([done], history.events, live.events)).toEqual([]);
  }, 300_000);
});
