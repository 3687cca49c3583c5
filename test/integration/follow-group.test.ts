// Clients and relays follow the replica group without a restart, against real replica
// processes (five, f = 1). A client started from a cluster file that lacks replica 4
// learns it from f+1 replicas and opens a session to it. Then, under a publish stream
// from a client and through a relay, `admin remove-replica` removes replica 4: both
// clients take the new epoch, drop replica 4, and go on publishing with the remaining
// four; every PUB the relay was sent is acknowledged. `fitb cluster export` then writes
// the cluster file of the running group, which parses to the same group and exports to
// the same text again, and after a removal that leaves a gap in the ids, a file with that gap.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Socket } from "bun";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { FitbClient } from "../../src/client/index.ts";
import { type ClusterConfig, parseClusterConfig, requireClusterConfig } from "../../src/config/cluster.ts";
import { bytesEqual } from "../../src/crypto/encoding.ts";
import { loadSigningKeyFile, type SigningKey } from "../../src/crypto/keys.ts";
import { RelayServer } from "../../src/relay/server.ts";
import { waitFor } from "../helpers/wait.ts";
import { encode, startClusterWithChannels } from "./client-util.ts";
import { logLines } from "./durability-history.ts";
import { logTail, type TestCluster } from "./harness.ts";

const WAIT_MS = 60_000;
const TAG = "sec.alerts";
const RELAY_TAG = "storage.disks";

let cluster: TestCluster;
let config: ClusterConfig;
let clientKey: SigningKey;
const clients: FitbClient[] = [];
let relay: RelayServer | null = null;
const sockets: Socket<undefined>[] = [];

beforeAll(async () => {
  cluster = await startClusterWithChannels({ replicas: 5 });
  config = requireClusterConfig(cluster.configPath);
  clientKey = loadSigningKeyFile(cluster.clientKey).key;
}, 120_000);

afterAll(async () => {
  for (const socket of sockets) socket.end();
  await relay?.stop(1_000);
  for (const client of clients) client.close();
  await cluster.stop();
});

function started(client: FitbClient): FitbClient {
  clients.push(client);
  client.start();
  return client;
}

/** A line-protocol connection to the relay that keeps every line it receives. */
async function relayConnection(port: number): Promise<{ send(line: string): void; lines(): string[] }> {
  let text = "";
  const socket = await Bun.connect({
    hostname: "127.0.0.1",
    port,
    socket: {
      data(_socket, chunk) {
        text += new TextDecoder().decode(chunk);
      },
    },
  });
  sockets.push(socket);
  return {
    send: (line) => {
      socket.write(`${line}\n`);
    },
    lines: () => text.split("\n").slice(0, -1),
  };
}

describe("following the replica group", () => {
  test("a client whose cluster file lacks a replica learns it from f+1 replicas and opens a session to it", async () => {
    const older: ClusterConfig = { ...config, n: 4, replicas: config.replicas.slice(0, 4) };
    const client = started(new FitbClient({ config: older, key: clientKey, timeouts: { requestMs: 20_000 } }));
    expect(client.membership.ids).toEqual([0, 1, 2, 3]);
    await waitFor(
      "the client to follow the five-replica group and reach replica 4",
      () => client.readyReplicas().includes(4),
      WAIT_MS,
      () => JSON.stringify({ membership: client.membership, states: client.replicaStates() }),
    );
    expect(client.membership).toMatchObject({ epoch: 0, ids: [0, 1, 2, 3, 4], f: 1, changes: 1, refused: 0 });
    expect(client.n).toBe(5);
    const ack = await client.publish(TAG, [encode("after learning replica 4")]);
    expect(ack.replicas.length).toBeGreaterThanOrEqual(2);
  }, 120_000);

  test("under a publish stream, remove-replica: a client and a relay drop the removed replica and go on publishing with the rest", async () => {
    const publisher = started(new FitbClient({ config, key: clientKey, timeouts: { requestMs: 20_000 } }));
    const relayClient = started(new FitbClient({ config, key: clientKey }));
    await waitFor("every session up", () => publisher.readyReplicas().length === 5 && relayClient.readyReplicas().length === 5, WAIT_MS);
    relay = RelayServer.listen({ client: relayClient, hostname: "127.0.0.1", port: 0 });
    const line = await relayConnection(relay.port);
    const admin = ["--config", cluster.configPath, "--key", cluster.adminKey];
    let removal = "";
    let relaySent = 0;
    let afterSwitch = 0;
    const ackersAfterSwitch = new Set<number>();
    const switched = (): boolean => publisher.membership.epoch === 1 && relayClient.membership.epoch === 1;
    // Bounded in time, not in count (the clients follow on a timer, however fast the
    // publishes go): clients that never follow fail below instead of publishing forever.
    const deadline = Date.now() + 2 * WAIT_MS;
    for (let r = 0; (r <= 10 || Date.now() < deadline) && afterSwitch < 30; r++) {
      if (r === 10) {
        const run = await cluster.fitb(["admin", ...admin, "remove-replica", "--id", "4"]);
        removal = `${run.code} ${run.stdout}${run.stderr}`;
      }
      const wasSwitched = switched();
      const ack = await publisher.publish(TAG, [encode(`stream ${r}`)]);
      // Another channel: the relay signs with the same key, and each channel has its own seqs.
      line.send(`PUB ${RELAY_TAG} relay ${r}`);
      relaySent++;
      if (wasSwitched) {
        afterSwitch++;
        for (const id of ack.replicas) ackersAfterSwitch.add(id);
      }
    }
    expect(removal).toContain("ok: removing replica 4");
    expect(afterSwitch).toBe(30);
    for (const client of [publisher, relayClient]) {
      expect(client.membership).toMatchObject({ epoch: 1, ids: [0, 1, 2, 3], f: 1, refused: 0 });
      expect(client.n).toBe(4);
      expect(client.replicaStates().map((state) => state.id)).toEqual([0, 1, 2, 3]);
    }
    expect(ackersAfterSwitch.has(4)).toBe(false);
    // The removed replica stopped; the relay answered every PUB it was sent, across the change.
    await waitFor(
      "replica 4 to log its removal",
      () => logLines(cluster, 4, "this replica was removed from the group: it stops ordering and serving clients").length > 0,
      WAIT_MS,
      () => logTail(cluster, 4),
    );
    await waitFor(
      "the relay to answer every PUB",
      () => line.lines().length >= relaySent,
      WAIT_MS,
      () => line.lines().slice(-3).join(" | "),
    );
    const refused = line.lines().filter((answer) => !answer.startsWith(`+OK ${RELAY_TAG} `));
    expect(refused).toEqual([]);
    const seqs = line.lines().map((answer) => Number(answer.split(" ")[2]));
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
  }, 300_000);

  test("cluster export writes the running group's file: it parses to that group, keeps the rest, and exports to the same text again", async () => {
    const out = join(cluster.dir, "exported.toml");
    const run = await cluster.fitb(["cluster", "export", "--config", cluster.configPath, "--key", cluster.adminKey, "--out", out]);
    expect(`${run.code} ${run.stderr}`).toStartWith("0 ");
    expect(run.stderr).toContain("epoch 1, n=4, f=1");
    const text = readFileSync(out, "utf8");
    const parsed = parseClusterConfig(text, out);
    if (!parsed.ok) throw new Error(`exported file does not parse: ${JSON.stringify(parsed.errors)}`);
    const exported = parsed.config;
    expect(exported.replicas.map((replica) => replica.id)).toEqual([0, 1, 2, 3]);
    expect(exported.f).toBe(1);
    for (const replica of exported.replicas) {
      const original = config.replicas[replica.id];
      expect(original).toBeDefined();
      expect(bytesEqual(replica.publicKey, original?.publicKey as Uint8Array)).toBe(true);
      expect({ host: replica.host, port: replica.port, peerPort: replica.peerPort }).toEqual({
        host: original?.host as string,
        port: original?.port as number,
        peerPort: original?.peerPort as number | null,
      });
    }
    expect(exported.name).toBe(config.name);
    expect(exported.limits).toEqual(config.limits);
    expect(exported.retention).toEqual(config.retention);
    expect(exported.adminKeys.map((key) => Buffer.from(key).toString("hex"))).toEqual(
      config.adminKeys.map((key) => Buffer.from(key).toString("hex")),
    );
    // Round trip: the exported file reaches the group and exports the same text.
    const again = await cluster.fitb(["cluster", "export", "--config", out, "--key", cluster.adminKey]);
    expect(again.code).toBe(0);
    expect(`${again.stdout.trimEnd()}\n`).toBe(text);
    // A client started from it publishes without learning anything.
    const fresh = started(new FitbClient({ config: exported, key: clientKey, timeouts: { requestMs: 20_000 } }));
    await fresh.publish(TAG, [encode("from the exported file")]);
    await waitFor("the fresh client to read the group", () => fresh.membership.epoch === 1, WAIT_MS);
    expect(fresh.membership.changes).toBe(0);
  }, 120_000);

  test("after set-f 0 and removing replica 1 the ids have a gap: the client votes in the id space (replica 3 alone answers a query), and export writes the gap", async () => {
    const client = started(new FitbClient({ config, key: clientKey, timeouts: { requestMs: 20_000, queryMs: 20_000 } }));
    const admin = ["--config", cluster.configPath, "--key", cluster.adminKey];
    const change = async (args: string[], epoch: number): Promise<void> => {
      const run = await cluster.fitb(["admin", ...admin, ...args]);
      expect(`${run.code} ${run.stdout}${run.stderr}`).toContain("ok:");
      // Checkpoints come with traffic: publish until the client follows the new epoch (it
      // reads the group every membershipRefreshMs, however fast the publishes go).
      const deadline = Date.now() + WAIT_MS;
      for (let r = 0; Date.now() < deadline && client.membership.epoch !== epoch; r++) {
        await client.publish(TAG, [encode(`${args[0]} ${r}`)]);
      }
      expect(client.membership.epoch).toBe(epoch);
    };
    await change(["set-f", "0", "--yes"], 2);
    await change(["remove-replica", "--id", "1"], 3);
    expect(client.membership).toMatchObject({ ids: [0, 2, 3], f: 0 });
    const ack = await client.publish(TAG, [encode("with a gap")]);
    expect(ack.replicas.length).toBeGreaterThanOrEqual(1);
    // The cluster file of the group with a gap: its ids as they are, its epoch.
    const exported = await cluster.fitb(["cluster", "export", ...admin]);
    expect(`${exported.code} ${exported.stderr}`).toStartWith("0 ");
    const gapped = parseClusterConfig(exported.stdout, join(cluster.dir, "gapped.toml"));
    if (!gapped.ok) throw new Error(`exported file does not parse: ${JSON.stringify(gapped.errors)}`);
    expect([gapped.config.replicas.map((replica) => replica.id), gapped.config.f, gapped.config.epoch]).toEqual([[0, 2, 3], 0, 3]);
    // Only replica 3, whose id is n = 3, is left to answer: its answer must count.
    for (const id of [0, 2]) cluster.kill(id);
    await waitFor("replicas 0 and 2 to be down", () => client.readyReplicas().join() === "3", WAIT_MS);
    const channels = await client.listChannels();
    expect(channels.map((channel) => channel.tag)).toContain(TAG);
    // What a joining replica asks (src/cli/join.ts) counts in the id space too.
    const withStart = await client.membersWithStart();
    expect(withStart.members.epoch).toBe(3);
    expect(withStart.members.members.map((member) => member.id)).toEqual([0, 2, 3]);
  }, 300_000);
});
