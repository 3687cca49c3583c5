/**
 * Multi-homed replicas over real loopback TCP: a replica reached at 127.0.0.1 (through a
 * proxy that can go silent), 127.0.0.2 (directly) and, for refusals, 127.0.0.4 (nothing
 * listens). The client connection and the peer mesh dial the preferred address, move to
 * the next one when a dial is refused or the link goes silent, stay there while the
 * preferred one still does not answer, and go back to it once it does.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { Socket, TCPSocketListener } from "bun";
import type { ReplicaEntry } from "../../src/config/cluster.ts";
import { DEFAULT_BACKOFF } from "../../src/client/backoff.ts";
import { ReplicaConnection } from "../../src/client/connection.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { createLog } from "../../src/replica/log.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import { PeerMesh } from "../../src/replica/peers.ts";
import { type ClientHandler, ReplicaServer } from "../../src/replica/server.ts";
import { FRAME_BYTES_MAX, FrameType } from "../../wire/types.ts";
import { waitFor } from "../helpers/wait.ts";

const PREFERRED = "127.0.0.1";
const SECOND = "127.0.0.2";
/** Where the replica itself listens behind the proxy on PREFERRED. */
const BEHIND_PROXY = "127.0.0.3";
/** Nothing listens here: a refused dial. */
const NOWHERE = "127.0.0.4";

const quietLog = createLog({}, "error", () => {});
const cleanups: (() => void)[] = [];

afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
});

/** A port free on every loopback address the test uses. */
function freePort(): number {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 20_000);
    const listeners: TCPSocketListener<undefined>[] = [];
    try {
      for (const host of [PREFERRED, SECOND, BEHIND_PROXY, NOWHERE])
        listeners.push(Bun.listen({ hostname: host, port, socket: { data() {} } }));
      return port;
    } catch {
      // taken on one of them: another port
    } finally {
      for (const listener of listeners) listener.stop(true);
    }
  }
  throw new Error("no free port");
}

/**
 * A TCP proxy from PREFERRED:port to BEHIND_PROXY:port. `silent` drops every byte both
 * ways and leaves new connections accepted but unanswered: a network that went dark
 * without resetting anything.
 */
class SilentableProxy {
  silent = false;
  /** Connections accepted while silent: each is a try of the preferred address. */
  acceptedWhileSilent = 0;
  private readonly listener: TCPSocketListener<{ upstream: Socket<undefined> | null; pending: Uint8Array[] }>;
  private readonly sockets = new Set<{ end(): void }>();

  constructor(port: number) {
    const proxy = this;
    this.listener = Bun.listen<{ upstream: Socket<undefined> | null; pending: Uint8Array[] }>({
      hostname: PREFERRED,
      port,
      data: { upstream: null, pending: [] },
      socket: {
        open(client) {
          client.data = { upstream: null, pending: [] };
          proxy.sockets.add(client);
          if (proxy.silent) {
            proxy.acceptedWhileSilent++;
            return;
          }
          void Bun.connect({
            hostname: BEHIND_PROXY,
            port,
            socket: {
              binaryType: "uint8array",
              open(upstream) {
                proxy.sockets.add(upstream);
                client.data.upstream = upstream;
                for (const chunk of client.data.pending.splice(0)) upstream.write(chunk);
              },
              data(_upstream, chunk) {
                if (!proxy.silent) client.write(chunk);
              },
              close() {
                client.end();
              },
              error() {},
            },
          }).catch(() => client.end());
        },
        data(client, chunk) {
          if (proxy.silent) return;
          const upstream = client.data.upstream;
          if (upstream === null) client.data.pending.push(new Uint8Array(chunk));
          else upstream.write(chunk);
        },
        close(client) {
          client.data.upstream?.end();
        },
        error() {},
      },
    });
  }

  stop(): void {
    this.listener.stop(true);
    for (const socket of this.sockets) socket.end();
  }
}

/**
 * How long a link may say nothing before it moves on: long enough that a loaded machine's
 * stalled event loop does not pass for a silent link (a spurious move would change the
 * addresses these tests follow), short enough to keep them quick.
 */
const SILENCE_MS = 1_500;

function entry(id: number, key: SigningKey, host: string, hosts: string[], port: number): ReplicaEntry {
  return { id, host, hosts, port, peerPort: null, publicKey: key.publicKey, publicKeyText: key.publicKeyText, keyFile: "", dataDir: "" };
}

/**
 * Replica 1: a server listening on BEHIND_PROXY and SECOND (the same port), a mesh that
 * accepts replica 0's links and keeps what arrives, and a proxy on PREFERRED.
 */
function startReplica(keys: readonly SigningKey[], port: number) {
  const received: string[] = [];
  const replicas = [entry(0, keys[0] as SigningKey, NOWHERE, [], port), entry(1, keys[1] as SigningKey, PREFERRED, [SECOND], port)];
  const metrics = new Metrics();
  const mesh = new PeerMesh({
    self: 1,
    key: keys[1] as SigningKey,
    replicas,
    frameBytesMax: FRAME_BYTES_MAX,
    log: quietLog,
    metrics,
    onMessage: (_from, msg) => received.push(new TextDecoder().decode(msg)),
  });
  const clients: ClientHandler = {
    onClientFrame(session, frame) {
      if (frame.type === FrameType.PING) session.conn.send({ type: FrameType.PONG, body: { n: frame.body.n } });
    },
    onClientClosed() {},
  };
  const server = new ReplicaServer({
    self: 1,
    host: BEHIND_PROXY,
    port,
    alsoListen: [{ host: SECOND, port }],
    key: keys[1] as SigningKey,
    frameBytesMax: FRAME_BYTES_MAX,
    mesh,
    clients,
    log: quietLog,
    metrics,
  });
  server.listen();
  const proxy = new SilentableProxy(port);
  cleanups.push(() => {
    proxy.stop();
    server.stop();
    mesh.stop();
  });
  return { received, proxy, replicas };
}

describe("a client connection to a multi-homed replica", () => {
  test("moves to the next address when the session goes silent, stays while the preferred one does not answer, and goes back", async () => {
    const keys = [SigningKey.generate(), SigningKey.generate()];
    const port = freePort();
    const { proxy } = startReplica(keys, port);
    const downs: string[] = [];
    let readies = 0;
    const connection = new ReplicaConnection(
      { id: 1, host: PREFERRED, hosts: [SECOND], port, publicKey: (keys[1] as SigningKey).publicKey },
      SigningKey.generate(),
      {
        onReady: () => readies++,
        onFrame() {},
        onDown: (_c, error) => downs.push(error.message),
      },
      {
        frameBytesMax: 1 << 20,
        outboundBytesMax: 1 << 20,
        sessionTimeoutMs: 1_000,
        pingIntervalMs: 5_000,
        idleTimeoutMs: 20_000,
        failover: { silenceMs: SILENCE_MS, preferredRetryMsMin: 100, preferredRetryMsMax: 200 },
        backoff: DEFAULT_BACKOFF,
        random: Math.random,
        now: Date.now,
      },
    );
    cleanups.push(() => connection.close());
    connection.start();
    await waitFor("a session on the preferred address", () => connection.isReady && connection.address === `${PREFERRED}:${port}`);

    proxy.silent = true;
    await waitFor(
      "the session to move to the second address",
      () => connection.isReady && connection.address === `${SECOND}:${port}`,
      20_000,
      () => `${connection.state} at ${connection.address}; downs: ${downs.join(" | ")}`,
    );
    expect(
      downs.some((message) => message.includes(`${PREFERRED}:${port}`) && message.includes(`nothing received for ${SILENCE_MS} ms`)),
    ).toBe(true);
    // The preferred address is tried again (the proxy accepts, and says nothing) and the session stays where it works.
    await waitFor("two tries of the silent preferred address", () => proxy.acceptedWhileSilent >= 2);
    expect(connection.isReady).toBe(true);
    expect(connection.address).toBe(`${SECOND}:${port}`);

    proxy.silent = false;
    await waitFor(
      "the session to come back to the preferred address",
      () => connection.isReady && connection.address === `${PREFERRED}:${port}`,
      20_000,
      () => `${connection.state} at ${connection.address}; downs: ${downs.join(" | ")}`,
    );
    expect(downs.at(-1)).toContain("moving back to the preferred address");
    // At least the three sessions above (a loaded machine may stall a link past the silence bound once more).
    expect(readies).toBeGreaterThanOrEqual(3);
  }, 60_000);

  test("a refused preferred address: the session opens on the next one at once", async () => {
    const keys = [SigningKey.generate(), SigningKey.generate()];
    const port = freePort();
    startReplica(keys, port);
    const connection = new ReplicaConnection(
      { id: 1, host: NOWHERE, hosts: [SECOND], port, publicKey: (keys[1] as SigningKey).publicKey },
      SigningKey.generate(),
      { onReady() {}, onFrame() {}, onDown() {} },
      {
        frameBytesMax: 1 << 20,
        outboundBytesMax: 1 << 20,
        sessionTimeoutMs: 1_000,
        pingIntervalMs: 5_000,
        idleTimeoutMs: 20_000,
        // A backoff far longer than the wait below: the second address is dialled without it.
        backoff: { ...DEFAULT_BACKOFF, initialDelayMs: 60_000, maxDelayMs: 60_000 },
        random: () => 0.5,
        now: Date.now,
      },
    );
    cleanups.push(() => connection.close());
    connection.start();
    await waitFor("a session on the second address", () => connection.isReady && connection.address === `${SECOND}:${port}`, 10_000);
  }, 30_000);
});

describe("the peer mesh dialling a multi-homed replica", () => {
  function startMesh(keys: readonly SigningKey[], replicas: readonly ReplicaEntry[]): PeerMesh {
    const mesh = new PeerMesh({
      self: 0,
      key: keys[0] as SigningKey,
      replicas,
      frameBytesMax: FRAME_BYTES_MAX,
      log: quietLog,
      metrics: new Metrics(),
      onMessage() {},
      failover: { pingMs: 50, silenceMs: SILENCE_MS, preferredRetryMsMin: 100, preferredRetryMsMax: 200 },
    });
    cleanups.push(() => mesh.stop());
    mesh.start();
    return mesh;
  }

  const linkTo = (mesh: PeerMesh) => mesh.status().find((peer) => peer.id === 1);

  test("a silent link moves to the next address and messages flow there; back on the preferred address once it answers", async () => {
    const keys = [SigningKey.generate(), SigningKey.generate()];
    const port = freePort();
    const { received, proxy, replicas } = startReplica(keys, port);
    const mesh = startMesh(keys, replicas);
    await waitFor(
      "the link up on the preferred address",
      () => linkTo(mesh)?.up === true && linkTo(mesh)?.address === `${PREFERRED}:${port}`,
    );
    mesh.send(1, new TextEncoder().encode("one"));
    await waitFor("the first message", () => received.includes("one"));

    proxy.silent = true;
    await waitFor(
      "the link to move to the second address",
      () => linkTo(mesh)?.up === true && linkTo(mesh)?.address === `${SECOND}:${port}`,
      20_000,
      () => JSON.stringify(linkTo(mesh)),
    );
    mesh.send(1, new TextEncoder().encode("two"));
    await waitFor("the message sent on the second address", () => received.includes("two"));
    await waitFor("two tries of the silent preferred address", () => proxy.acceptedWhileSilent >= 2);
    expect(linkTo(mesh)).toEqual({ id: 1, up: true, address: `${SECOND}:${port}`, reason: null });

    proxy.silent = false;
    await waitFor(
      "the link back on the preferred address",
      () => linkTo(mesh)?.up === true && linkTo(mesh)?.address === `${PREFERRED}:${port}`,
      20_000,
      () => JSON.stringify(linkTo(mesh)),
    );
    mesh.send(1, new TextEncoder().encode("three"));
    await waitFor("the message sent after moving back", () => received.includes("three"));
  }, 60_000);

  test("a refused preferred address: the link opens on the next one", async () => {
    const keys = [SigningKey.generate(), SigningKey.generate()];
    const port = freePort();
    const { received, replicas } = startReplica(keys, port);
    const peer = replicas[1] as ReplicaEntry;
    const mesh = startMesh(keys, [replicas[0] as ReplicaEntry, { ...peer, host: NOWHERE, hosts: [SECOND] }]);
    await waitFor("the link up on the second address", () => linkTo(mesh)?.up === true && linkTo(mesh)?.address === `${SECOND}:${port}`);
    mesh.send(1, new TextEncoder().encode("hello"));
    await waitFor("the message", () => received.includes("hello"));
  }, 30_000);
});
