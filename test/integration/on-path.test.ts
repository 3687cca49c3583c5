/**
 * An attacker on the path between a client and the replicas (README "Security model"): a
 * userspace TCP proxy in front of every replica that cuts the replicas' byte streams into
 * frames by their length fields and alters them in transit. Real replica processes, the
 * real client library; the proxy knows the wire's framing and CBOR, but no key.
 *
 * Before client frames were MACed, changing one byte in the REPLY of f+1 replicas was
 * enough to make a publisher accept an answer no replica gave. Now the altered frame fails
 * its MAC: the client drops that connection, never counts the reply, and takes the
 * answer of the replicas whose frames arrive intact.
 */
import { afterEach, describe, expect, test } from "bun:test";
import net from "node:net";
import { FitbClient } from "../../src/client/index.ts";
import { loadClientSetup } from "../../src/client/setup.ts";
import { waitFor } from "../helpers/wait.ts";
import { encode } from "./client-util.ts";
import { freePortRange, startCluster, type TestCluster } from "./harness.ts";

const REPLY = 0x11;
const FRAME_LENGTH_BYTES = 4;
/** The CBOR encoding of the text "first": the REPLY field that carries the channel seq. */
const FIRST_KEY = Uint8Array.from([0x65, ...new TextEncoder().encode("first")]);

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** What the proxy does to the REPLY frames of one replica. */
type Tamper = "forge" | "hold";

/**
 * The proxy in front of the replicas. Replicas marked "forge" get the channel seq of their
 * first publish REPLY changed (one byte, `first` 1 -> 3); replicas marked "hold" have their
 * publish REPLY frames (and whatever follows them) held until every forged one is on its
 * way, so that the client sees the forgeries first. Everything else passes untouched.
 */
class OnPathProxy {
  readonly ports: number[];
  forged = 0;
  private readonly servers: net.Server[] = [];
  private readonly sockets = new Set<net.Socket>();
  private readonly held: (() => void)[] = [];
  private readonly forgedReplicas = new Set<number>();

  constructor(
    private readonly targetPorts: readonly number[],
    private readonly tamper: ReadonlyMap<number, Tamper>,
  ) {
    const base = freePortRange(targetPorts.length);
    this.ports = targetPorts.map((_, i) => base + i);
  }

  /** How many forgeries the client must see before held replies go on. */
  private get forgeries(): number {
    return [...this.tamper.values()].filter((t) => t === "forge").length;
  }

  async start(): Promise<void> {
    await Promise.all(
      this.targetPorts.map(
        (target, replica) =>
          new Promise<void>((resolve, reject) => {
            const server = net.createServer((client) => this.relay(replica, target, client));
            server.once("error", reject);
            server.listen(this.ports[replica], "127.0.0.1", () => resolve());
            this.servers.push(server);
          }),
      ),
    );
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await Promise.all(this.servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
  }

  private relay(replica: number, target: number, client: net.Socket): void {
    const upstream = net.createConnection({ host: "127.0.0.1", port: target });
    for (const socket of [client, upstream]) {
      this.sockets.add(socket);
      socket.on("error", () => undefined);
      socket.on("close", () => {
        this.sockets.delete(socket);
        client.destroy();
        upstream.destroy();
      });
    }
    client.on("data", (chunk) => upstream.write(chunk));
    const frames = new FrameCutter();
    let holding: Buffer[] | null = null;
    upstream.on("data", (chunk: Buffer) => {
      for (const frame of frames.push(chunk)) {
        if (holding !== null) {
          holding.push(frame);
          continue;
        }
        const mode = this.tamper.get(replica);
        const isPublishReply = frame[FRAME_LENGTH_BYTES] === REPLY && frame.indexOf(FIRST_KEY) >= 0;
        if (isPublishReply && mode === "forge" && !this.forgedReplicas.has(replica)) {
          this.forgedReplicas.add(replica);
          client.write(forgeFirst(frame));
          this.forged++;
          if (this.forged === this.forgeries) for (const release of this.held.splice(0)) release();
          continue;
        }
        if (isPublishReply && mode === "hold" && this.forged < this.forgeries) {
          const queue: Buffer[] = [frame];
          holding = queue;
          this.held.push(() => {
            holding = null;
            for (const held of queue) client.write(held);
          });
          continue;
        }
        client.write(frame);
      }
    });
  }
}

/** Cuts a byte stream into whole frames (length field included) by their u32 length fields. */
class FrameCutter {
  private buffered = Buffer.alloc(0);

  push(chunk: Buffer): Buffer[] {
    this.buffered = Buffer.concat([this.buffered, chunk]);
    const frames: Buffer[] = [];
    while (this.buffered.length >= FRAME_LENGTH_BYTES) {
      const end = FRAME_LENGTH_BYTES + this.buffered.readUInt32BE(0);
      if (this.buffered.length < end) break;
      frames.push(this.buffered.subarray(0, end));
      this.buffered = this.buffered.subarray(end);
    }
    return frames;
  }
}

/** The frame with the integer after its "first" key changed from 1 to 3: one byte, still canonical CBOR. */
function forgeFirst(frame: Buffer): Buffer {
  const forged = Buffer.from(frame);
  const at = forged.indexOf(FIRST_KEY) + FIRST_KEY.length;
  if (forged[at] !== 0x01) throw new Error(`the proxy expected first = 1, found byte 0x${forged[at]?.toString(16)}`);
  forged[at] = 0x03;
  return forged;
}

async function startAdmin(cluster: TestCluster): Promise<FitbClient> {
  const setup = loadClientSetup(cluster.configPath, cluster.adminKey);
  const admin = new FitbClient({ config: setup.config, key: setup.key, timeouts: { requestMs: 20_000 } });
  admin.start();
  cleanups.push(() => admin.close());
  return admin;
}

describe("an on-path attacker between a client and the replicas", () => {
  test("a REPLY altered in transit from f+1 replicas is not counted: those connections drop and the intact replies decide", async () => {
    const cluster = await startCluster();
    cleanups.push(() => cluster.stop());
    const admin = await startAdmin(cluster);
    const publisherSetup = loadClientSetup(cluster.configPath, cluster.clientKey);
    await admin.admin({ t: "create-channel", tag: "sec.alerts", fault: "byzantine", order: "total", priority: "critical", public: false });
    await admin.admin({ t: "register", tag: "sec.alerts", role: "publisher", key: publisherSetup.key.publicKey });

    // f = 1: the attacker alters what replicas 0 and 1 answer, and holds back 2 and 3 until it has.
    const tamper = new Map<number, Tamper>([
      [0, "forge"],
      [1, "forge"],
      [2, "hold"],
      [3, "hold"],
    ]);
    const proxy = new OnPathProxy(
      publisherSetup.config.replicas.map((replica) => replica.port),
      tamper,
    );
    await proxy.start();
    cleanups.push(() => proxy.stop());
    const config = {
      ...publisherSetup.config,
      replicas: publisherSetup.config.replicas.map((replica, i) => ({ ...replica, port: proxy.ports[i] as number })),
    };
    const log: string[] = [];
    const publisher = new FitbClient({
      config,
      key: publisherSetup.key,
      timeouts: { requestMs: 20_000 },
      onLog: (entry) => log.push(entry.message),
    });
    publisher.start();
    cleanups.push(() => publisher.close());
    publisher.observeExecuted(admin.executedFloor);
    // Every session up first (through the proxy, on a loaded machine, one may take longer
    // than the client's grace): the publish then goes to all four at once, and the proxy
    // forges the first answers of 0 and 1 while it holds 2 and 3.
    await waitFor("all four sessions up", () => publisher.readyReplicas().length === 4);

    const ack = await publisher.publish("sec.alerts", [encode("disk failed")]);
    expect(proxy.forged).toBe(2);
    // The channel was empty: the event is at channel seq 1, which the forgeries said was 3.
    expect(ack.channelSeq).toBe(1);
    // The quorum is of intact replies: replicas 2 and 3, or 0 or 1 answering again on a fresh session.
    expect(ack.replicas.length).toBeGreaterThanOrEqual(2);
    // Each altered frame failed its MAC and dropped its connection, with a log line.
    for (const replica of [0, 1]) {
      expect(log.some((line) => line.startsWith(`replica ${replica} sent an invalid frame`) && line.includes("failed its MAC"))).toBe(true);
    }
    // The sessions come back (fresh handshakes through the same proxy) and carry on.
    await waitFor("all four sessions up again", () => publisher.readyReplicas().length === 4);
    const next = await publisher.publish("sec.alerts", [encode("disk replaced")]);
    expect(next.channelSeq).toBe(2);
  }, 60_000);
});
