/**
 * The replica's network ingress defences on real replica processes: peers and clients on
 * separate ports, the client blacklist after a bad signature or an undecodable frame,
 * ordered requests behind a sequence gap refused before verification, and a cluster file
 * without peer_port still working on one shared port.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import net from "node:net";
import { randomBytes } from "node:crypto";
import type { FitbClient } from "../../src/client/index.ts";
import { buildRequest, requestFrame } from "../../src/client/request.ts";
import { requireClusterConfig } from "../../src/config/cluster.ts";
import { loadSigningKeyFile, SigningKey } from "../../src/crypto/keys.ts";
import type { SessionFraming } from "../../src/crypto/session.ts";
import { FrameDecoder } from "../../wire/frame.ts";
import type { Frame, Hello } from "../../wire/schemas.ts";
import { FrameType, NONCE_BYTES, PROTOCOL_VERSION } from "../../wire/types.ts";
import { decodeSessionFrame, encodeSessionFrame, rawClientAuth, rawClientHello } from "../helpers/client-session.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor } from "./client-util.ts";
import { freePortRange, startCluster, type TestCluster } from "./harness.ts";

const TAG = "def.total";

/** A client connection spoken by hand from a chosen source address. */
class Raw {
  readonly frames: Frame[] = [];
  closed = false;
  private readonly socket: net.Socket;
  private readonly decoder = new FrameDecoder({ copyPayloads: true });
  framing: SessionFraming | null = null;

  constructor(port: number, localAddress: string) {
    this.socket = net.createConnection({ host: "127.0.0.1", port, localAddress });
    this.socket.on("data", (chunk: Buffer) => {
      for (const result of this.decoder.push(new Uint8Array(chunk))) {
        if (!result.ok) continue;
        const decoded = decodeSessionFrame(result, this.framing);
        if (decoded.ok) this.frames.push(decoded.frame);
      }
    });
    this.socket.on("close", () => {
      this.closed = true;
    });
    this.socket.on("error", () => {
      this.closed = true;
    });
  }

  send(frame: Frame): void {
    this.socket.write(encodeSessionFrame(frame, this.framing));
  }

  write(bytes: Uint8Array): void {
    this.socket.write(this.framing === null ? bytes : this.framing.sealer.seal(bytes));
  }

  async next<T extends Frame["type"]>(type: T, what: string): Promise<Extract<Frame, { type: T }>> {
    await waitFor(what, () => this.frames.some((f) => f.type === type) || this.closed, 20_000);
    const index = this.frames.findIndex((f) => f.type === type);
    if (index < 0) throw new Error(`${what}: the connection closed first; got ${JSON.stringify(this.frames.map((f) => f.type))}`);
    return this.frames.splice(index, 1)[0] as Extract<Frame, { type: T }>;
  }

  /** The ERROR the replica closed with. */
  async error(what: string): Promise<{ code: string; reason: string }> {
    const frame = await this.next(FrameType.ERROR, what);
    await waitFor(`${what}: the connection to close`, () => this.closed, 20_000);
    return frame.body;
  }

  /** HELLO, HELLO_ACK, AUTH; then waits for a PONG, so the session is known to be taken. */
  async handshake(key: SigningKey): Promise<void> {
    const state = rawClientHello(key);
    this.send({ type: FrameType.HELLO, body: state.hello });
    const ack = await this.next(FrameType.HELLO_ACK, "HELLO_ACK");
    const { auth, framing } = rawClientAuth(key, state, ack.body);
    this.send(auth);
    this.framing = framing;
    this.send({ type: FrameType.PING, body: { n: 7 } });
    await this.next(FrameType.PONG, "the PONG after AUTH");
  }

  destroy(): void {
    this.socket.destroy();
  }
}

async function metric(port: number, line: RegExp): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  for (const l of text.split("\n")) {
    const m = l.match(line);
    if (m !== null) return Number(l.slice(l.lastIndexOf(" ") + 1));
  }
  return 0;
}

describe("a cluster with peer ports", () => {
  let cluster: TestCluster;
  let admin: FitbClient;
  let metricsBase: number;
  /** The seq at which the channel's creation executed (at f+1 replicas when admin() returned). */
  let createdAt = 0;

  beforeAll(async () => {
    metricsBase = freePortRange(4);
    cluster = await startCluster({ replicaArgs: (id) => ["--metrics", `127.0.0.1:${metricsBase + id}`] });
    admin = clientFor(cluster, cluster.adminKey);
    const created = await admin.admin({
      t: "create-channel",
      tag: TAG,
      fault: "byzantine",
      order: "total",
      priority: "normal",
      public: true,
    });
    createdAt = created.at ?? 0;
  }, 60_000);

  afterAll(async () => {
    admin?.close();
    await cluster?.stop();
  });

  test("a client HELLO on the peer port and a replica HELLO on the client port are refused, saying which port to use", async () => {
    const config = requireClusterConfig(cluster.configPath);
    const replica = config.replicas[0];
    if (replica === undefined || replica.peerPort === null) throw new Error("cluster init wrote no peer_port");
    const onPeerPort = new Raw(replica.peerPort, "127.0.0.1");
    onPeerPort.send({ type: FrameType.HELLO, body: rawClientHello(SigningKey.generate()).hello });
    const asClient = await onPeerPort.error("the refusal of a client on the peer port");
    expect(asClient.code).toBe("UNAUTHORIZED");
    expect(asClient.reason).toBe(`this is replica 0's peer port; clients connect to its port (port ${replica.port})`);

    const replicaKey = loadSigningKeyFile(config.replicas[1]?.keyFile as string).key;
    const peerHello: Hello = {
      v: PROTOCOL_VERSION,
      role: "replica",
      replica: 1,
      key: replicaKey.publicKey,
      nonce: new Uint8Array(randomBytes(NONCE_BYTES)),
      eph: new Uint8Array(randomBytes(32)),
    };
    const onClientPort = new Raw(replica.port, "127.0.0.1");
    onClientPort.send({ type: FrameType.HELLO, body: peerHello });
    const asPeer = await onClientPort.error("the refusal of a replica on the client port");
    expect(asPeer.code).toBe("UNAUTHORIZED");
    expect(asPeer.reason).toBe(`this is replica 0's client port; replicas connect to its peer_port (port ${replica.peerPort})`);
    expect(await metric(metricsBase, /^fitb_handshakes_wrong_port_total /)).toBeGreaterThanOrEqual(2);
    // The replicas themselves found each other on the peer ports: the admin command was ordered.
  });

  test("a bad request signature blacklists the key and the address: refused at the handshake, others go on", async () => {
    const port = cluster.basePort;
    const hostileKey = SigningKey.generate();
    const hostile = new Raw(port, "127.0.0.2");
    await hostile.handshake(hostileKey);
    // A channel that does not exist: nothing refuses the request before its signature is checked.
    const built = buildRequest(
      hostileKey,
      { seq: 1, ts: Date.now(), op: { t: "pub", tag: "no.such", events: [new Uint8Array(8)] } },
      1 << 20,
    );
    hostile.write(requestFrame(built.body, new Uint8Array(randomBytes(64)), 0, 1 << 20));
    expect((await hostile.error("the close after a bad signature")).code).toBe("BAD_SIGNATURE");

    // The address: any key, refused as it connects.
    const again = new Raw(port, "127.0.0.2");
    const byAddress = await again.error("the refusal of the blacklisted address");
    expect(byAddress.code).toBe("UNAUTHORIZED");
    expect(byAddress.reason).toMatch(
      /^address 127\.0\.0\.2 is blacklisted for 60 s after a request signature that does not verify \(\d+ s left\)$/,
    );
    // The key: from another address, refused at its HELLO.
    const elsewhere = new Raw(port, "127.0.0.3");
    elsewhere.send({ type: FrameType.HELLO, body: rawClientHello(hostileKey).hello });
    const byKey = await elsewhere.error("the refusal of the blacklisted key");
    expect(byKey.reason).toMatch(/^key ed25519:\S+ is blacklisted for 600 s after a request signature that does not verify/);
    // Another replica never saw it; a correct client from 127.0.0.1 is served.
    const fine = new Raw(port, "127.0.0.3");
    await fine.handshake(SigningKey.generate());
    fine.destroy();
    const other = new Raw(port + 1, "127.0.0.2");
    await other.handshake(SigningKey.generate());
    other.destroy();
    expect(await metric(metricsBase, /^fitb_clients_blacklisted_total /)).toBeGreaterThanOrEqual(1);
    expect(await metric(metricsBase, /^fitb_clients_blacklisted_refused_total /)).toBeGreaterThanOrEqual(2);
    expect(cluster.logs[0]?.join("")).toContain('"audit":"client-blacklisted"');
  });

  test("a frame that does not decode blacklists its address", async () => {
    const port = cluster.basePort + 2;
    const broken = new Raw(port, "127.0.0.4");
    const garbage = new Uint8Array([0, 0, 0, 2, 0xee, 0xa0]);
    broken.write(garbage);
    expect((await broken.error("the close after an undecodable frame")).code).toBe("BAD_FRAME");
    const again = new Raw(port, "127.0.0.4");
    expect((await again.error("the refusal of the blacklisted address")).reason).toMatch(
      /^address 127\.0\.0\.4 is blacklisted for 60 s after a frame that does not decode or is too large/,
    );
  });

  test("an ordered request behind a sequence gap is refused OUT_OF_ORDER before verification; the next in line is taken", async () => {
    const key = SigningKey.generate();
    const registered = await admin.admin({ t: "register", tag: TAG, role: "publisher", key: key.publicKey });
    const port = cluster.basePort + 1;
    // The registration executes on every replica in its own time: wait until this one has
    // it (the seq it executed at, not the group's agreed decided seq, which may lag it).
    const decided = Math.max(registered.at ?? 0, (await admin.status()).lastDecided ?? 0);
    await waitFor("replica 1 executed the registration", async () => {
      const answer = (await admin.status()).replicas[1]?.answer;
      return answer?.ok === true && answer.value.lastDecided >= decided;
    });
    const session = new Raw(port, "127.0.0.1");
    await session.handshake(key);
    const ts = Date.now();
    const request = (seq: number) => buildRequest(key, { seq, ts, op: { t: "pub", tag: TAG, events: [new Uint8Array(8)] } }, 1 << 20);
    const gapped = request(3);
    const before = await metric(metricsBase + 1, /^fitb_requests_gap_refused_total /);
    // The signature is not even looked at: a bad one gets the same refusal (and no blacklist).
    session.write(requestFrame(gapped.body, new Uint8Array(64), 0, 1 << 20));
    const refused = await session.next(FrameType.REPLY, "the refusal of seq 3");
    expect(refused.body).toMatchObject({ seq: 3, ok: false, code: "OUT_OF_ORDER" });
    expect((refused.body as { reason: string }).reason).toBe(
      "seq 2 of this space has not reached this replica (executed through 0, received through 0); send it first",
    );
    expect(await metric(metricsBase + 1, /^fitb_requests_gap_refused_total /)).toBe(before + 1);
    const first = request(1);
    session.write(requestFrame(first.body, first.sig, 0, 1 << 20));
    const second = request(2);
    session.write(requestFrame(second.body, second.sig, 0, 1 << 20));
    const one = await session.next(FrameType.REPLY, "the reply to seq 1");
    const two = await session.next(FrameType.REPLY, "the reply to seq 2");
    expect([one.body, two.body]).toMatchObject([
      { seq: 1, ok: true },
      { seq: 2, ok: true },
    ]);
    // Counted, not audited: a replica behind its client refuses so until the client sends again.
    expect(cluster.logs[1]?.join("")).not.toContain("has not reached this replica");
    session.destroy();
  });

  test("a publish by a key not registered on the channel is refused UNAUTHORIZED before verification: a bad signature gets the same refusal and no blacklist", async () => {
    const port = cluster.basePort + 3;
    // The channel must have executed here, or the refusal waits for the signature check.
    const decided = Math.max(createdAt, (await admin.status()).lastDecided ?? 0);
    await waitFor("replica 3 executed the channel's creation", async () => {
      const answer = (await admin.status()).replicas[3]?.answer;
      return answer?.ok === true && answer.value.lastDecided >= decided;
    });
    const key = SigningKey.generate();
    const session = new Raw(port, "127.0.0.6");
    await session.handshake(key);
    const built = buildRequest(key, { seq: 1, ts: Date.now(), op: { t: "pub", tag: TAG, events: [new Uint8Array(8)] } }, 1 << 20);
    session.write(requestFrame(built.body, new Uint8Array(randomBytes(64)), 0, 1 << 20));
    const refused = await session.next(FrameType.REPLY, "the refusal of the unregistered publisher");
    expect(refused.body).toMatchObject({ seq: 1, ok: false, code: "UNAUTHORIZED", reason: `publisher is not registered on ${TAG}` });
    // Still open: a PING is answered.
    session.send({ type: FrameType.PING, body: { n: 8 } });
    await session.next(FrameType.PONG, "the PONG after the refusal");
    expect(session.closed).toBe(false);
    session.destroy();
  });
});

describe("a cluster file without peer_port", () => {
  let cluster: TestCluster;
  let admin: FitbClient;

  beforeAll(async () => {
    cluster = await startCluster({ sharedPort: true });
    admin = clientFor(cluster, cluster.adminKey);
  }, 60_000);

  afterAll(async () => {
    admin?.close();
    await cluster?.stop();
  });

  test("peers and clients share each replica's port, as before", async () => {
    expect(requireClusterConfig(cluster.configPath).replicas.map((r) => r.peerPort)).toEqual([null, null, null, null]);
    const reply = await admin.admin({
      t: "create-channel",
      tag: TAG,
      fault: "byzantine",
      order: "total",
      priority: "normal",
      public: true,
    });
    expect(reply.cmd).toBe("create-channel");
  });
});
