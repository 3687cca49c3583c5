/**
 * The first group's addresses at the group's first change (wire/PROTOCOL.md 6.4, `first`):
 * replicas dial each other by their own cluster files until the first membership change,
 * and operators may name a replica differently on different hosts. The change writes the
 * group into the replicated state; taken from each replica's own file, the groups (and the
 * checkpoint digests) would differ, and the replica whose file differs would find its state
 * diverged at the next checkpoint and stop. `fitb admin` sends its file's first group with
 * the command, and every replica takes those addresses.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { FitbClient } from "../../src/client/index.ts";
import { requireClusterConfig } from "../../src/config/cluster.ts";
import { formatPublicKey, loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { waitFor } from "../helpers/wait.ts";
import { adminOk, clientFor, encode } from "./client-util.ts";
import { freePortRange, logTail, startCluster, type TestCluster } from "./harness.ts";

/** The replica whose cluster file names replica 2 by another address, and the address. */
const ODD = 3;
const ODD_HOST = "127.0.0.2";
/** The ordering core's checkpoint interval: the first change takes effect at this seq, and its checkpoint is taken there. */
const K = 128;

let cluster: TestCluster;
let admin: FitbClient;

beforeAll(async () => {
  cluster = await startCluster({ start: false, replicaConfig: (id) => (id === ODD ? join(cluster.dir, "odd.toml") : undefined) });
  // Replica 2's section names it at another loopback address in replica 3's file (where
  // nothing listens: replica 3 reaches the group through the others). Ids and keys are the
  // same, so the peers' handshake (which compares those) accepts it.
  const text = readFileSync(cluster.configPath, "utf8");
  const sections = text.split("[[replicas]]");
  sections[3] = (sections[3] as string).replace('host = "127.0.0.1"', `host = "${ODD_HOST}"`);
  writeFileSync(join(cluster.dir, "odd.toml"), sections.join("[[replicas]]"));
  expect(requireClusterConfig(join(cluster.dir, "odd.toml")).replicas[2]?.host).toBe(ODD_HOST);
  for (let id = 0; id < cluster.n; id++) cluster.start(id);
  admin = clientFor(cluster, cluster.adminKey);
  const publisher = loadSigningKeyFile(cluster.clientKey).key.publicKey;
  await admin.admin({ t: "create-channel", tag: "sec.alerts", fault: "byzantine", order: "total", priority: "high", public: true });
  await admin.admin({ t: "register", tag: "sec.alerts", role: "publisher", key: publisher });
}, 120_000);

afterAll(async () => {
  admin?.close();
  await cluster?.stop();
});

test("replicas whose files name the first group differently build one group at its first change, and none diverges", async () => {
  const keyPath = join(cluster.dir, "replica-4.key");
  const keygen = await cluster.fitb(["keygen", "--out", keyPath]);
  expect(keygen.code).toBe(0);
  const port = freePortRange(1);
  // Replica 4 is never started: the group of five still has a quorum of three.
  await adminOk(cluster, [
    "add-replica",
    "--id",
    "4",
    "--host",
    "127.0.0.1",
    "--port",
    String(port),
    "--replica-key",
    formatPublicKey(loadSigningKeyFile(keyPath).key.publicKey),
  ]);
  // Past the checkpoint where the change takes effect.
  const publisher = clientFor(cluster, cluster.clientKey);
  try {
    for (let i = 0; i < K + 8; i++) await publisher.publish("sec.alerts", [encode(`alert ${i}`)]);
  } finally {
    publisher.close();
  }
  // Every replica, the odd one included, made the checkpoint at K stable: their states agree.
  await waitFor(
    "every replica to make the checkpoint past the change stable",
    async () => {
      const status = await admin.status();
      return [0, 1, 2, 3].every((id) => {
        const answer = status.replicas[id]?.answer;
        return answer?.ok === true && (answer.value.stableCheckpoint ?? 0) >= K;
      });
    },
    60_000,
    () => logTail(cluster, ODD, 10),
  );
  expect(logTail(cluster, ODD, 400)).not.toContain("state diverged");
  const members = await admin.members();
  expect(members.epoch).toBe(1);
  expect(members.members.find((member) => member.id === 2)?.host).toBe("127.0.0.1");
}, 180_000);
