// client_keys follows the group, with real replica processes. With a client_keys
// allow-list in the cluster file, a replica's own key may open client sessions too (a
// joining replica asks `members` with it: src/cli/join.ts). Once rotate-replica-key
// replaces replica 2's key (typically because it leaked) and the epoch that rotates it
// starts, the old key is dropped from the allow-list: its open client session is closed
// (logged and counted) and a new one is refused at the handshake.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { FitbClient } from "../../src/client/index.ts";
import { requireClusterConfig } from "../../src/config/cluster.ts";
import { formatPublicKey, loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, createChannels } from "./client-util.ts";
import { logLines, publishStream } from "./durability-history.ts";
import { logTail, startCluster, type TestCluster, waitListening } from "./harness.ts";

let cluster: TestCluster;
let publisher: FitbClient;
let oldKeyClient: FitbClient | null = null;

beforeAll(async () => {
  cluster = await startCluster({ replicas: 4, start: false });
  // The allow-list names the cluster's client key (the admin key is always allowed).
  const clientPublic = formatPublicKey(loadSigningKeyFile(cluster.clientKey).key.publicKey);
  const text = readFileSync(cluster.configPath, "utf8");
  if (!/^client_keys = \[\]$/m.test(text)) throw new Error("the cluster file has no empty client_keys line");
  writeFileSync(cluster.configPath, text.replace(/^client_keys = \[\]$/m, `client_keys = ["${clientPublic}"]`));
  for (let id = 0; id < cluster.n; id++) cluster.start(id);
  await waitListening(cluster, [0, 1, 2, 3]);
  const admin = clientFor(cluster, cluster.adminKey);
  try {
    await createChannels(admin, loadSigningKeyFile(cluster.clientKey).key.publicKey);
  } finally {
    admin.close();
  }
  publisher = clientFor(cluster, cluster.clientKey);
}, 120_000);

afterAll(async () => {
  oldKeyClient?.close();
  publisher?.close();
  await cluster.stop();
});

describe("client_keys follows the group", () => {
  test("a replica key rotated away can no longer open a client session, and its open session is closed", async () => {
    const config = requireClusterConfig(cluster.configPath);
    const oldKey = loadSigningKeyFile((config.replicas[2] as { keyFile: string }).keyFile).key;
    const oldKeyText = formatPublicKey(oldKey.publicKey);
    // Before the rotation replica 2's key is one of the group's: it may ask `members`.
    oldKeyClient = await FitbClient.connect({ config, key: oldKey });
    const before = await oldKeyClient.members();
    expect(before.members.find((member) => member.id === 2)?.key).toEqual(oldKey.publicKey);

    const newKeyPath = join(cluster.dir, "replica-2-new.key");
    const keygen = await cluster.fitb(["keygen", "--out", newKeyPath]);
    expect(keygen.code).toBe(0);
    const newKeyText = formatPublicKey(loadSigningKeyFile(newKeyPath).key.publicKey);
    const A = ["--config", cluster.configPath, "--key", cluster.adminKey];
    let rotateOut = "";
    let afterSwitch = 0;
    const startedOn0 = (): boolean => logLines(cluster, 0, "epoch started").some((line) => line["epoch"] === 1);
    // The change takes effect at a checkpoint: publish until replica 0 runs the new epoch (bounded).
    await publishStream(
      publisher,
      "sec.alerts",
      "r",
      (r) => r < 600 && (r < 3 || !startedOn0() || afterSwitch++ < 3),
      1,
      async (r) => {
        if (r !== 1) return;
        const run = await cluster.fitb(["admin", ...A, "rotate-replica-key", "--id", "2", "--replica-key", newKeyText]);
        rotateOut = `${run.code} ${run.stdout}${run.stderr}`;
      },
    );
    expect(rotateOut).toContain("ok:");
    expect(startedOn0()).toBe(true);

    // The session the old key had open at replica 0 is closed, saying why.
    await waitFor(
      "replica 0 to close the old key's client session",
      () =>
        logLines(cluster, 0, "client sessions closed: their key left the allow-list").some(
          (line) => line["key"] === oldKeyText && (line["sessions"] as number) >= 1,
        ),
      60_000,
      () => logTail(cluster, 0),
    );
    // A new session with the old key (the client reconnects by itself) is refused at the handshake.
    await waitFor(
      "replica 0 to refuse the old key's new session",
      () =>
        logLines(cluster, 0, "client handshake failed").some(
          (line) => line["key"] === oldKeyText && line["reason"] === "key not in client_keys",
        ),
      60_000,
      () => logTail(cluster, 0),
    );
    // The keys still allowed keep working: the publisher publishes, the admin administers.
    const ack = await publisher.publish("sec.alerts", [new TextEncoder().encode("after")]);
    expect(ack.channelSeq).not.toBeNull();
  }, 300_000);
});
