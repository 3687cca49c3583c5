// Clients and relays follow an epoch switch on the replicas' EPOCH notice, with real
// replica processes. A client and a relay's client read the group every hour (an option),
// so after their first read the only way they can learn a new group is the notice each
// replica sends its client sessions when its group enters an epoch (wire/PROTOCOL.md 4.14).
// add-replica 4 under a trickle of publishes: once the replicas switch to epoch 1, both
// follow it (n = 5, replica 4 among the members), and the relay goes on publishing.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Socket } from "bun";
import { FitbClient } from "../../src/client/index.ts";
import { loadClientSetup } from "../../src/client/setup.ts";
import { formatPublicKey, SigningKey } from "../../src/crypto/keys.ts";
import { RelayServer } from "../../src/relay/server.ts";
import { waitFor } from "../helpers/wait.ts";
import { adminOk, clientFor, startClusterWithChannels } from "./client-util.ts";
import { logLines, trickle } from "./durability-history.ts";
import { freePortRange, logTail, type TestCluster } from "./harness.ts";

const WAIT_MS = 60_000;
/** Far beyond the test: the periodic read never comes. */
const REFRESH_MS = 3_600_000;

let cluster: TestCluster;
let publisher: FitbClient;
const clients: FitbClient[] = [];
let relay: RelayServer | null = null;
let socket: Socket<undefined> | null = null;

function hourly(): FitbClient {
  const setup = loadClientSetup(cluster.configPath, cluster.clientKey);
  const client = new FitbClient({ config: setup.config, key: setup.key, timeouts: { requestMs: 20_000, membershipRefreshMs: REFRESH_MS } });
  clients.push(client);
  client.start();
  return client;
}

beforeAll(async () => {
  cluster = await startClusterWithChannels({ replicas: 4 });
  publisher = clientFor(cluster, cluster.clientKey);
}, 120_000);

afterAll(async () => {
  socket?.end();
  await relay?.stop(1_000);
  for (const client of [publisher, ...clients]) client?.close();
  await cluster.stop();
});

describe("EPOCH notices", () => {
  test("a client and a relay whose periodic read is an hour away follow add-replica's epoch on the replicas' notices", async () => {
    const watcher = hourly();
    const relayClient = hourly();
    relay = RelayServer.listen({ client: relayClient, hostname: "127.0.0.1", port: 0 });
    let text = "";
    socket = await Bun.connect({
      hostname: "127.0.0.1",
      port: relay.port,
      socket: {
        data(_socket, chunk) {
          text += new TextDecoder().decode(chunk);
        },
      },
    });
    // Their first read, at start: after it, nothing but a notice (or a session going down) makes them read again.
    await waitFor(
      "both clients to read the group once",
      () => watcher.membership.epoch === 0 && relayClient.membership.epoch === 0,
      WAIT_MS,
      () => JSON.stringify([watcher.membership, relayClient.membership]),
    );

    const traffic = trickle(publisher, "sec.alerts", "t", 20);
    try {
      const key = formatPublicKey(SigningKey.generate().publicKey);
      // adminOk throws unless the command exited 0 and printed "ok:".
      await adminOk(cluster, ["add-replica", "--id", "4", "--host", "127.0.0.1", "--port", String(freePortRange(1)), "--replica-key", key]);
      await waitFor(
        "the replicas to start epoch 1 and tell their client sessions",
        () =>
          [0, 1, 2, 3].every((id) =>
            logLines(cluster, id, "told the client sessions of the new epoch").some((line) => line["epoch"] === 1),
          ),
        WAIT_MS,
        () => [0, 1, 2, 3].map((id) => logTail(cluster, id, 5)).join("\n"),
      );
      for (const [name, client] of [
        ["the client", watcher],
        ["the relay's client", relayClient],
      ] as const) {
        await waitFor(
          `${name} to follow epoch 1`,
          () => client.membership.epoch === 1 && client.membership.ids.includes(4),
          WAIT_MS,
          () => JSON.stringify(client.membership),
        );
        expect(client.membership).toMatchObject({ epoch: 1, ids: [0, 1, 2, 3, 4], f: 1, changes: 1, refused: 0 });
        expect(client.membership.notices).toBeGreaterThan(0);
        expect(client.n).toBe(5);
      }
    } finally {
      await traffic.stop();
    }
    // The relay publishes on with the group of five (a quorum of four: replicas 0..3).
    socket.write("PUB sec.alerts after the switch\n");
    await waitFor(
      "the relay to answer",
      () => text.includes("\n"),
      WAIT_MS,
      () => text,
    );
    expect(text).toMatch(/^\+OK sec\.alerts \d+\n$/);
  }, 180_000);
});
