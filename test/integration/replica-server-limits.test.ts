/**
 * The replica server's bounds on connections, over real loopback TCP: the handshake
 * deadline holds until AUTH verifies whatever the HELLO claims, connections still in their
 * handshake are capped (in all and per address) and may send only small frames, and
 * authenticated client sessions are capped in all, per client key and per address, while
 * replica peers are never refused by the client caps; a blacklisted address's connections
 * are answered once a second and otherwise held open and unread in the tarpit, within its
 * bounds, or reset past them.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { Socket } from "bun";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { type Canonical, encodeCanonical } from "../../wire/canonical.ts";
import { encodeFrame, FrameDecoder } from "../../wire/frame.ts";
import { decodeFrameBody, encodeTypedFrame, type Frame, type Hello, type HelloAck } from "../../wire/schemas.ts";
import { sessionTranscript } from "../../wire/session.ts";
import { DOMAIN_SESSION_INITIATOR, FRAME_BYTES_MAX, FrameType, NONCE_BYTES, PROTOCOL_VERSION } from "../../wire/types.ts";
import type { ReplicaEntry } from "../../src/config/cluster.ts";
import { signDomain } from "../../src/crypto/ed25519.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { CLIENT_FRAME_MAC_BYTES, generateEphemeralKeyPair, type SessionFraming } from "../../src/crypto/session.ts";
import { ClientAdmission } from "../../src/replica/admission.ts";
import { AUDIT_LINES_PER_WINDOW, AuditLog } from "../../src/replica/audit.ts";
import { createLog } from "../../src/replica/log.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import type { PartialFrameLimits } from "../../src/replica/partial-frames.ts";
import type { PeerInboxLimits } from "../../src/replica/peer-inbox.ts";
import { DIALLED_LINK_FRAME_BYTES_MAX, PeerMesh } from "../../src/replica/peers.ts";
import {
  CLIENT_CONNECTIONS_MAX,
  CLIENT_CONNECTIONS_PER_ADDRESS_MAX,
  CLIENT_HANDSHAKES_PER_SECOND_MAX,
  QUIET_HOST_HANDSHAKES_BURST,
  CLIENT_CONNECTIONS_PER_KEY_MAX,
  BLACKLIST_NOTICE_MS,
  type ClientHandler,
  HANDSHAKE_FRAME_BYTES_MAX,
  HANDSHAKE_MS_MAX,
  HANDSHAKES_MAX,
  HANDSHAKES_PER_ADDRESS_MAX,
  type ListenerRole,
  ReplicaServer,
  type ServerLimits,
} from "../../src/replica/server.ts";
import { type ClientHelloState, decodeSessionFrame, encodeSessionFrame, rawClientAuth, rawClientHello } from "../helpers/client-session.ts";
import { waitFor } from "../helpers/wait.ts";

const HOST = "127.0.0.1";
const quietLog = createLog({}, "error", () => {});
const cleanups: (() => void)[] = [];

afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
});

// ---------------------------------------------------------------------------------------
// A raw TCP caller that speaks frames and keeps what it receives
// ---------------------------------------------------------------------------------------

class RawConn {
  readonly frames: Frame[] = [];
  closed = false;
  /** The session's MACs once AUTH is sent (PROTOCOL.md 5.2); null before. */
  framing: SessionFraming | null = null;
  /** Frames that arrived without a valid MAC after AUTH (a refusal of AUTH is sent without one). */
  unsealedFrames = 0;
  private socket: Socket<undefined> | null = null;
  private readonly decoder = new FrameDecoder({ copyPayloads: true });

  static async open(port: number): Promise<RawConn> {
    const raw = new RawConn();
    await Bun.connect({
      hostname: HOST,
      port,
      socket: {
        open(socket) {
          raw.socket = socket;
        },
        data(_socket, chunk) {
          raw.onData(chunk);
        },
        end(socket) {
          raw.closed = true;
          socket.end();
        },
        close() {
          raw.closed = true;
        },
        error() {},
      },
    });
    cleanups.push(() => raw.close());
    return raw;
  }

  send(frame: Frame): void {
    this.write(encodeSessionFrame(frame, this.framing));
  }

  write(bytes: Uint8Array): void {
    this.socket?.write(bytes);
  }

  close(): void {
    this.socket?.end();
  }

  /** Stops reading: what the server sends piles up in the kernel, then in its queue. */
  pause(): void {
    this.socket?.pause();
  }

  has(type: number): boolean {
    return this.frames.some((f) => f.type === type);
  }

  /** The ERROR received, if any, as `CODE reason`. */
  get error(): string | null {
    const error = this.frames.find((f) => f.type === FrameType.ERROR);
    return error?.type === FrameType.ERROR ? `${error.body.code} ${error.body.reason}` : null;
  }

  private onData(chunk: Uint8Array): void {
    for (const result of this.decoder.push(chunk)) {
      if (!result.ok) throw new Error(`server sent a bad frame: ${result.error.reason}`);
      let decoded = decodeSessionFrame(result, this.framing);
      if (!decoded.ok && "mac" in decoded) {
        // A refusal of AUTH comes before the session's MACs begin.
        this.unsealedFrames++;
        decoded = decodeFrameBody(result.type, result.payload);
      }
      if (!decoded.ok) throw new Error(`server sent a bad frame: ${"error" in decoded ? decoded.error.reason : "MAC"}`);
      this.frames.push(decoded.frame);
    }
  }
}

/**
 * A hostile writer from a chosen source address (node:net binds it; Bun.connect cannot):
 * it writes whatever it is given as fast as the connection takes it and reads nothing.
 */
class Flooder {
  closed = false;
  /** Bytes the connection took from this side: handed to the kernel (written, drained). */
  taken = 0;
  /** Bytes received from the server. */
  received = 0;
  private readonly socket: net.Socket;
  private readonly onDrainOrClose: (() => void)[] = [];

  private constructor(port: number, localAddress: string) {
    this.socket = net.createConnection({ host: HOST, port, localAddress });
    this.socket.on("data", (chunk: Buffer) => {
      this.received += chunk.length;
    });
    this.socket.on("drain", () => this.wake());
    const closed = (): void => {
      this.closed = true;
      this.wake();
    };
    this.socket.on("close", closed);
    this.socket.on("error", closed);
    cleanups.push(() => this.socket.destroy());
  }

  static async open(port: number, localAddress: string): Promise<Flooder> {
    const flooder = new Flooder(port, localAddress);
    await new Promise<void>((resolve) => {
      flooder.socket.once("connect", resolve);
      flooder.onDrainOrClose.push(resolve);
    });
    return flooder;
  }

  write(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  /**
   * Writes `chunk` again and again while the connection takes it, up to `capBytes`. Returns
   * "stalled" once a write is left waiting (the kernel's buffers, this side's and the
   * server's, are full) and no drain comes for stallMs, "closed" if the server closed the
   * connection, "cap" if `capBytes` were taken (someone reads them).
   */
  async fill(chunk: Uint8Array, capBytes: number, stallMs = 500): Promise<"stalled" | "closed" | "cap"> {
    while (!this.closed && this.taken < capBytes) {
      const whole = this.socket.write(chunk);
      if (whole) {
        this.taken += chunk.length;
        // Lets the server's event loop (this process's) run between writes.
        if (this.taken % (16 * chunk.length) === 0) await Bun.sleep(0);
        continue;
      }
      const drained = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), stallMs);
        this.onDrainOrClose.push(() => {
          clearTimeout(timer);
          resolve(true);
        });
      });
      if (!drained) return "stalled";
      if (!this.closed) this.taken += chunk.length;
    }
    return this.closed ? "closed" : "cap";
  }

  /** Bytes written but not yet taken by the kernel (they wait in this side's socket). */
  get waiting(): number {
    return this.socket.writableLength;
  }

  private wake(): void {
    for (const resolve of this.onDrainOrClose.splice(0)) resolve();
  }
}

function nonce(): Uint8Array {
  return new Uint8Array(randomBytes(NONCE_BYTES));
}

interface Handshake {
  readonly state: ClientHelloState;
  readonly ack: HelloAck;
}

/** Sends a client HELLO and waits for HELLO_ACK or a refusal; the ACK, or null when refused. */
async function sendClientHello(raw: RawConn, key: SigningKey): Promise<Handshake | null> {
  const state = rawClientHello(key);
  raw.send({ type: FrameType.HELLO, body: state.hello });
  await waitFor("HELLO_ACK or a refusal", () => raw.has(FrameType.HELLO_ACK) || raw.closed);
  const ack = raw.frames.find((f) => f.type === FrameType.HELLO_ACK);
  return ack?.type === FrameType.HELLO_ACK ? { state, ack: ack.body } : null;
}

/** Sends a HELLO claiming to be replica 1, whose public key anyone may know, and waits for HELLO_ACK. */
async function sendReplicaHello(raw: RawConn, replicaKey: SigningKey): Promise<void> {
  const hello: Hello = {
    v: PROTOCOL_VERSION,
    role: "replica",
    replica: 1,
    key: replicaKey.publicKey,
    nonce: nonce(),
    eph: generateEphemeralKeyPair().publicKey,
  };
  raw.send({ type: FrameType.HELLO, body: hello });
  await waitFor("HELLO_ACK", () => raw.has(FrameType.HELLO_ACK));
}

/** Sends AUTH then PING; waits until the session answers PONG or the server refuses. */
async function sendClientAuth(raw: RawConn, key: SigningKey, handshake: Handshake): Promise<void> {
  const { auth, framing } = rawClientAuth(key, handshake.state, handshake.ack);
  raw.send(auth);
  raw.framing = framing;
  raw.send({ type: FrameType.PING, body: { n: 1 } });
  await waitFor("PONG or a refusal", () => raw.has(FrameType.PONG) || raw.closed);
}

/** A full client handshake; the connection is either a live session (it got PONG) or refused. */
async function clientSession(port: number, key: SigningKey): Promise<RawConn> {
  const raw = await RawConn.open(port);
  const handshake = await sendClientHello(raw, key);
  if (handshake !== null) await sendClientAuth(raw, key, handshake);
  return raw;
}

function expectSession(raw: RawConn): void {
  expect(raw.error).toBeNull();
  expect(raw.has(FrameType.PONG)).toBe(true);
  expect(raw.closed).toBe(false);
}

async function expectRefused(raw: RawConn, reason: string): Promise<void> {
  await waitFor("the refusal to close the connection", () => raw.closed);
  expect(raw.error).toBe(`OVERLOADED ${reason}`);
  expect(raw.has(FrameType.PONG)).toBe(false);
}

// ---------------------------------------------------------------------------------------
// A server on a free loopback port, with a peer mesh that knows one more replica
// ---------------------------------------------------------------------------------------

function replicaEntries(keys: readonly SigningKey[], port0: number): ReplicaEntry[] {
  return keys.map((key, id) => ({
    id,
    host: HOST,
    hosts: [],
    port: id === 0 ? port0 : 0,
    peerPort: null,
    publicKey: key.publicKey,
    publicKeyText: key.publicKeyText,
    keyFile: "",
    dataDir: "",
  }));
}

interface Fixture {
  readonly server: ReplicaServer;
  readonly mesh: PeerMesh;
  readonly metrics: Metrics;
  readonly serverKey: SigningKey;
  /** The key of replica 1, the server's only peer. */
  readonly peerKey: SigningKey;
  /** What the server's mesh received from peers. */
  readonly peerMessages: { from: number; msg: Uint8Array }[];
  /** Frames that reached the client handler. */
  readonly clientFrames: Frame[];
  /** Per QUERY: how many of the large answers the server could queue (send returned true). */
  readonly bulkSent: number[];
  /** The server's log lines at warn and above. */
  readonly logLines: string[];
}

/** The test handler answers a QUERY with this many QUERY_REPLY frames of BULK_FRAME_BYTES each. */
const BULK_FRAMES = 32;
const BULK_FRAME_BYTES = 512 * 1024;

function startServer(
  limits: Partial<ServerLimits> = {},
  clientKeysAllowed: ReadonlySet<string> | null = null,
  now?: () => number,
  more: {
    readonly accepts?: ListenerRole;
    readonly admission?: ClientAdmission;
    readonly audit?: boolean;
    /** The mesh's precheck (peer-filter.ts); with it the mesh logs to the fixture's log lines. */
    readonly precheck?: (from: number, msg: Uint8Array) => string | null;
    /** Overrides of the mesh's inbound budgets (peer-inbox.ts). */
    readonly inbox?: Partial<PeerInboxLimits>;
    /** Bounds on client frames still arriving (partial-frames.ts). */
    readonly partialFrames?: PartialFrameLimits;
    /** The keys the cluster names (server.ts knownClient). */
    readonly knownClient?: (keyHex: string) => boolean;
  } = {},
): Fixture {
  const serverKey = SigningKey.generate();
  const peerKey = SigningKey.generate();
  const metrics = new Metrics();
  const peerMessages: { from: number; msg: Uint8Array }[] = [];
  const clientFrames: Frame[] = [];
  const bulkSent: number[] = [];
  const logLines: string[] = [];
  const log = createLog({}, "warn", (line) => logLines.push(line));
  const mesh = new PeerMesh({
    self: 0,
    key: serverKey,
    replicas: replicaEntries([serverKey, peerKey], 0),
    frameBytesMax: FRAME_BYTES_MAX,
    log: more.precheck === undefined ? quietLog : log,
    metrics,
    onMessage: (from, msg) => peerMessages.push({ from, msg }),
    ...(more.precheck === undefined ? {} : { precheck: more.precheck }),
    ...(more.inbox === undefined ? {} : { inbox: more.inbox }),
  });
  const clients: ClientHandler = {
    onClientFrame(session, frame) {
      clientFrames.push(frame);
      if (frame.type === FrameType.PING) session.conn.send({ type: FrameType.PONG, body: { n: frame.body.n } });
      if (frame.type === FrameType.QUERY) {
        let sent = 0;
        const res = new Uint8Array(BULK_FRAME_BYTES);
        for (let i = 0; i < BULK_FRAMES; i++) {
          if (session.conn.send({ type: FrameType.QUERY_REPLY, body: { id: frame.body.id, replica: 0, ok: true, res } })) sent++;
        }
        bulkSent.push(sent);
      }
    },
    onClientClosed() {},
  };
  const server = new ReplicaServer({
    self: 0,
    host: HOST,
    port: 0,
    key: serverKey,
    frameBytesMax: FRAME_BYTES_MAX,
    mesh,
    clients,
    log,
    metrics,
    limits,
    clientKeysAllowed,
    ...(now === undefined ? {} : { now }),
    ...(more.accepts === undefined ? {} : { accepts: more.accepts }),
    ...(more.admission === undefined ? {} : { admission: more.admission }),
    ...(more.audit === true ? { audit: new AuditLog(log, now) } : {}),
    ...(more.partialFrames === undefined ? {} : { partialFrames: more.partialFrames }),
    ...(more.knownClient === undefined ? {} : { knownClient: more.knownClient }),
  });
  server.listen();
  cleanups.push(() => {
    server.stop();
    mesh.stop();
  });
  return { server, mesh, metrics, serverKey, peerKey, peerMessages, clientFrames, bulkSent, logLines };
}

/** Replica 1's real mesh, dialling the server; it sends only on the link it dialled. */
function dialAsPeer(fx: Fixture): PeerMesh {
  const mesh = new PeerMesh({
    self: 1,
    key: fx.peerKey,
    replicas: replicaEntries([fx.serverKey, fx.peerKey], fx.server.port),
    frameBytesMax: FRAME_BYTES_MAX,
    log: quietLog,
    metrics: new Metrics(),
    onMessage: () => {},
  });
  mesh.start();
  cleanups.push(() => mesh.stop());
  return mesh;
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

describe("the handshake deadline", () => {
  test("a HELLO carrying a replica's (public) key does not lift it: without AUTH the connection is closed at the deadline", async () => {
    const fx = startServer({ handshakeMsMax: 300 });
    const raw = await RawConn.open(fx.server.port);
    await sendReplicaHello(raw, fx.peerKey);
    expect(raw.closed).toBe(false);
    await waitFor("the close at the handshake deadline", () => raw.closed);
    expect(fx.metrics.get("handshake_timeouts_total")).toBe(1);
    expect(fx.metrics.get("handshakes_open")).toBe(0);
  });

  test("a replica peer that completes AUTH keeps its link past the deadline, is not refused by the client caps and frees its handshake slot", async () => {
    // A deadline the peer's handshake meets even on a loaded machine; the test then goes
    // past it.
    const fx = startServer({ handshakeMsMax: 2_000, handshakesMax: 1, clientConnectionsMax: 1, clientConnectionsPerAddressMax: 1 });
    // The only client slot is taken (from the same address the peer dials from).
    expectSession(await clientSession(fx.server.port, SigningKey.generate()));
    const peer = dialAsPeer(fx);
    await waitFor("the peer link", () => peer.status().every((s) => s.up));
    expect(peer.send(0, Uint8Array.of(1))).toBe(true);
    await waitFor("the first peer message", () => fx.peerMessages.length === 1);
    // A connection opened after the peer's, that never says anything: once the deadline
    // has closed it, the peer's own deadline (earlier) has passed too.
    const witness = await RawConn.open(fx.server.port);
    await waitFor("the silent connection closed at its deadline", () => witness.closed);
    expect(fx.metrics.get("handshake_timeouts_total")).toBe(1);
    expect(peer.send(0, Uint8Array.of(2))).toBe(true);
    await waitFor("the peer message sent after the deadline", () => fx.peerMessages.length === 2);
    expect(fx.peerMessages.map((m) => [m.from, ...m.msg])).toEqual([
      [1, 1],
      [1, 2],
    ]);
    // Only the silent connection met the deadline, never the peer's link.
    expect(fx.metrics.get("handshake_timeouts_total")).toBe(1);
    // The peer holds no handshake slot any more: the one slot goes to the next caller (one
    // that claims to be the peer but will never AUTH)...
    const pending = await RawConn.open(fx.server.port);
    await sendReplicaHello(pending, fx.peerKey);
    // ...and the next caller takes it from that one, never from the peer's link.
    const next = await RawConn.open(fx.server.port);
    await waitFor("the oldest handshake to be closed", () => pending.closed);
    expect(pending.error).toBe("OVERLOADED 1 connections awaiting authentication; the oldest is closed for a new one");
    expect(next.closed).toBe(false);
    expect(peer.send(0, Uint8Array.of(3))).toBe(true);
    await waitFor("a peer message after the evictions", () => fx.peerMessages.length === 3);
  });
});

describe("connections still in their handshake", () => {
  const cases: { name: string; limits: Partial<ServerLimits>; reason: string }[] = [
    {
      name: "per remote address",
      limits: { handshakesPerAddressMax: 2 },
      reason: "2 connections awaiting authentication from this address; at most 2",
    },
  ];
  test("are capped in all: a new connection takes the slot of the oldest one still in its handshake, so slot holders cannot lock anyone out", async () => {
    const fx = startServer({ handshakesMax: 2 });
    const first = await RawConn.open(fx.server.port);
    const second = await RawConn.open(fx.server.port);
    expect(await sendClientHello(first, SigningKey.generate())).not.toBeNull();
    expect(await sendClientHello(second, SigningKey.generate())).not.toBeNull();
    const session = await clientSession(fx.server.port, SigningKey.generate());
    expectSession(session);
    await waitFor("the oldest handshake to be closed", () => first.closed);
    expect(first.error).toBe("OVERLOADED 2 connections awaiting authentication; the oldest is closed for a new one");
    expect(second.closed).toBe(false);
    expect(fx.metrics.get("handshakes_evicted_total")).toBe(1);
    // A replica dialling while slot holders keep arriving still gets its link.
    for (let i = 0; i < 3; i++) await sendClientHello(await RawConn.open(fx.server.port), SigningKey.generate());
    const peer = dialAsPeer(fx);
    await waitFor("the peer link", () => peer.status().every((s) => s.up));
    expect(peer.send(0, Uint8Array.of(9))).toBe(true);
    await waitFor("the peer message", () => fx.peerMessages.length === 1);
  });

  test("new connections per address are rate limited (each HELLO costs a signature); the bucket refills with time", async () => {
    let nowMs = 1_000_000;
    const fx = startServer({ handshakesPerAddressPerSecondMax: 1, handshakesPerAddressBurstMax: 2 }, null, () => nowMs);
    expectSession(await clientSession(fx.server.port, SigningKey.generate()));
    expectSession(await clientSession(fx.server.port, SigningKey.generate()));
    await expectRefused(await RawConn.open(fx.server.port), "more than 1 new connections a second from this address");
    nowMs += 1_000;
    expectSession(await clientSession(fx.server.port, SigningKey.generate()));
  });

  test("client HELLOs answered are rate limited in all addresses together, past it a quiet host's few from a reserve; the bucket refills with time", async () => {
    let nowMs = 1_000_000;
    const fx = startServer({ clientHandshakesPerSecondMax: 1, clientHandshakesBurstMax: 2 }, null, () => nowMs);
    // The bound in all, then this host's allowance of the reserve for quiet hosts.
    for (let i = 0; i < 2 + QUIET_HOST_HANDSHAKES_BURST; i++) expectSession(await clientSession(fx.server.port, SigningKey.generate()));
    await expectRefused(
      await clientSession(fx.server.port, SigningKey.generate()),
      "more than 1 client handshakes a second in all; try again",
    );
    nowMs += 1_000;
    expectSession(await clientSession(fx.server.port, SigningKey.generate()));
  });

  for (const { name, limits, reason } of cases) {
    test(`are capped ${name}: one more gets ERROR OVERLOADED naming the limit, and a slot frees when one closes`, async () => {
      const fx = startServer(limits);
      // Two handshakes stop after HELLO_ACK: still unauthenticated, and surely seen by the server.
      const first = await RawConn.open(fx.server.port);
      const second = await RawConn.open(fx.server.port);
      expect(await sendClientHello(first, SigningKey.generate())).not.toBeNull();
      expect(await sendClientHello(second, SigningKey.generate())).not.toBeNull();
      await expectRefused(await RawConn.open(fx.server.port), reason);
      expect(fx.metrics.get("handshakes_refused_total")).toBe(1);
      expect(first.closed || second.closed).toBe(false);
      first.close();
      await waitFor("the closed handshake to be uncounted", () => fx.metrics.get("handshakes_open") === 1);
      expectSession(await clientSession(fx.server.port, SigningKey.generate()));
    });
  }

  test("may send only small frames: a declared length over the handshake bound is TOO_LARGE at once; from the byte after AUTH the full bound applies", async () => {
    const fx = startServer();
    const raw = await RawConn.open(fx.server.port);
    // The 4 length bytes of a frame of FRAME_BYTES_MAX, and its type byte: nothing more.
    const header = new Uint8Array(5);
    new DataView(header.buffer).setUint32(0, FRAME_BYTES_MAX);
    header[4] = FrameType.HELLO;
    raw.write(header);
    await waitFor("the refusal", () => raw.closed);
    expect(raw.error).toBe(`TOO_LARGE frame of ${FRAME_BYTES_MAX} bytes exceeds the maximum of ${HANDSHAKE_FRAME_BYTES_MAX}`);
    expect(fx.metrics.get("handshakes_open")).toBe(0);
    // The bound leaves ample room for the largest real handshake frame, a replica's HELLO.
    const hello = encodeTypedFrame({
      type: FrameType.HELLO,
      body: { v: PROTOCOL_VERSION, role: "replica", replica: 2 ** 32, key: nonce(), nonce: nonce(), eph: nonce() },
    });
    expect(hello.length * 4).toBeLessThan(HANDSHAKE_FRAME_BYTES_MAX);

    // Session frames sent right behind AUTH, in one write or split anywhere, get the full bound.
    const bigBody = new Uint8Array(randomBytes(4 * HANDSHAKE_FRAME_BYTES_MAX));
    const splits: number[][] = [[], [1], [40], [75], [76], [77], [80, 81, 200], [75, 82, 90, 1000, 3000]];
    for (const cuts of splits) {
      const key = SigningKey.generate();
      const raw = await RawConn.open(fx.server.port);
      const handshake = await sendClientHello(raw, key);
      if (handshake === null) throw new Error("refused");
      const { auth, framing } = rawClientAuth(key, handshake.state, handshake.ack);
      raw.framing = framing;
      const frames = [
        encodeTypedFrame(auth),
        encodeSessionFrame({ type: FrameType.PING, body: { n: 7 } }, framing),
        encodeSessionFrame({ type: FrameType.REQUEST, body: { body: bigBody, sig: new Uint8Array(64) } }, framing),
      ];
      const bytes = Buffer.concat(frames);
      const seen = fx.clientFrames.length;
      let at = 0;
      for (const cut of [...cuts, bytes.length]) {
        raw.write(bytes.subarray(at, cut));
        at = cut;
        await Bun.sleep(2);
      }
      await waitFor(
        `the REQUEST (cuts ${cuts.join(",")})`,
        () => (fx.clientFrames.length >= seen + 2 && raw.has(FrameType.PONG)) || raw.closed,
      );
      expectSession(raw);
      const request = fx.clientFrames.at(-1);
      expect(request?.type === FrameType.REQUEST ? request.body.body : null).toEqual(bigBody);
      raw.close();
    }
  });
});

describe("authenticated client connections", () => {
  test(`at most ${CLIENT_CONNECTIONS_PER_KEY_MAX} per client key: one more is refused with the reason, other keys still connect`, async () => {
    const fx = startServer();
    const key = SigningKey.generate();
    const sessions: RawConn[] = [];
    for (let i = 0; i < CLIENT_CONNECTIONS_PER_KEY_MAX; i++) sessions.push(await clientSession(fx.server.port, key));
    for (const raw of sessions) expectSession(raw);
    const reason = `${CLIENT_CONNECTIONS_PER_KEY_MAX} connections open with this client key; at most ${CLIENT_CONNECTIONS_PER_KEY_MAX}`;
    await expectRefused(await clientSession(fx.server.port, key), reason);
    expect(fx.metrics.get("clients_refused_total")).toBe(1);
    expectSession(await clientSession(fx.server.port, SigningKey.generate()));
    // A closed session frees its slot for the same key.
    sessions[0]?.close();
    await waitFor("the closed session to be uncounted", () => fx.metrics.get("client_connections") === CLIENT_CONNECTIONS_PER_KEY_MAX);
    expectSession(await clientSession(fx.server.port, key));
  }, 30_000);

  test("the per-key cap also holds for handshakes of one key that were in flight together", async () => {
    const fx = startServer({ clientConnectionsPerKeyMax: 1 });
    const key = SigningKey.generate();
    const first = await RawConn.open(fx.server.port);
    const second = await RawConn.open(fx.server.port);
    const firstHandshake = await sendClientHello(first, key);
    const secondHandshake = await sendClientHello(second, key);
    if (firstHandshake === null || secondHandshake === null) throw new Error("refused at HELLO");
    await sendClientAuth(first, key, firstHandshake);
    expectSession(first);
    await sendClientAuth(second, key, secondHandshake);
    await expectRefused(second, "1 connections open with this client key; at most 1");
    // Refused after AUTH verified: the refusal is sealed like any session frame.
    expect(second.unsealedFrames).toBe(0);
  });

  test("at most clientConnectionsPerAddressMax from one address, whatever the keys", async () => {
    const fx = startServer({ clientConnectionsPerAddressMax: 2 });
    expectSession(await clientSession(fx.server.port, SigningKey.generate()));
    expectSession(await clientSession(fx.server.port, SigningKey.generate()));
    await expectRefused(
      await clientSession(fx.server.port, SigningKey.generate()),
      "2 client connections open from this address; at most 2",
    );
    expect(fx.metrics.get("clients_refused_total")).toBe(1);
  });

  test("at most clientConnectionsMax in all", async () => {
    const fx = startServer({ clientConnectionsMax: 1 });
    expectSession(await clientSession(fx.server.port, SigningKey.generate()));
    await expectRefused(await clientSession(fx.server.port, SigningKey.generate()), "1 client connections open; at most 1");
  });

  test("every slot taken, a key the cluster names takes the newest slot of a key it does not name; made-up keys are still refused", async () => {
    const named = [SigningKey.generate(), SigningKey.generate()];
    const namedHex = new Set(named.map((key) => Buffer.from(key.publicKey).toString("hex")));
    const fx = startServer({ clientConnectionsMax: 3 }, null, undefined, { knownClient: (keyHex) => namedHex.has(keyHex) });
    const madeUp: RawConn[] = [];
    for (let i = 0; i < 3; i++) {
      const session = await clientSession(fx.server.port, SigningKey.generate());
      expectSession(session);
      madeUp.push(session);
    }
    await expectRefused(await clientSession(fx.server.port, SigningKey.generate()), "3 client connections open; at most 3");
    // The first named key gets in; the newest made-up session gives up its slot, told why.
    const first = await clientSession(fx.server.port, named[0] as SigningKey);
    expectSession(first);
    await waitFor("the newest made-up session to be closed", () => (madeUp[2] as RawConn).closed);
    expect((madeUp[2] as RawConn).error).toBe(
      "OVERLOADED 3 client connections open: a session of a key the cluster does not name gives its place to one it names",
    );
    expect(fx.metrics.get("clients_evicted_total")).toBe(1);
    expect(fx.metrics.get("client_connections")).toBe(3);
    // A second named key: the next made-up one goes. A third session of a named key finds none left.
    expectSession(await clientSession(fx.server.port, named[1] as SigningKey));
    await waitFor("the next made-up session to be closed", () => (madeUp[1] as RawConn).closed);
    expectSession(await clientSession(fx.server.port, named[0] as SigningKey));
    await waitFor("the last made-up session to be closed", () => (madeUp[0] as RawConn).closed);
    await expectRefused(await clientSession(fx.server.port, named[1] as SigningKey), "3 client connections open; at most 3");
    expect(fx.metrics.get("clients_evicted_total")).toBe(3);
  });
});

describe("PROTOCOL.md", () => {
  test("states the session limits the server applies", () => {
    const doc = readFileSync(join(import.meta.dir, "..", "..", "wire", "PROTOCOL.md"), "utf8");
    const fmt = (n: number) => n.toLocaleString("en-US");
    expect(doc).toContain(`\`HANDSHAKE_MS_MAX\` = ${fmt(HANDSHAKE_MS_MAX)}`);
    expect(doc).toContain(`\`CLIENT_HANDSHAKES_PER_SECOND_MAX\`\n  = ${fmt(CLIENT_HANDSHAKES_PER_SECOND_MAX)}`);
    expect(doc).toContain(`\`HANDSHAKE_FRAME_BYTES_MAX\` = ${fmt(HANDSHAKE_FRAME_BYTES_MAX)}`);
    expect(doc).toContain(`\`HANDSHAKES_MAX\` = ${fmt(HANDSHAKES_MAX)}`);
    expect(doc).toContain(`\`HANDSHAKES_PER_ADDRESS_MAX\` = ${fmt(HANDSHAKES_PER_ADDRESS_MAX)}`);
    expect(doc).toContain(`\`CLIENT_CONNECTIONS_MAX\` = ${fmt(CLIENT_CONNECTIONS_MAX)}`);
    expect(doc).toContain(`\`CLIENT_CONNECTIONS_PER_KEY_MAX\` = ${fmt(CLIENT_CONNECTIONS_PER_KEY_MAX)}`);
    expect(doc).toContain(`\`CLIENT_CONNECTIONS_PER_ADDRESS_MAX\` = ${fmt(CLIENT_CONNECTIONS_PER_ADDRESS_MAX)}`);
  });
});

describe("client authentication (PROTOCOL.md §5.1)", () => {
  test("an AUTH that does not verify is answered BAD_SIGNATURE and closed; a frame other than AUTH, UNAUTHORIZED", async () => {
    const fx = startServer();
    const key = SigningKey.generate();
    const forged = await RawConn.open(fx.server.port);
    const handshake = await sendClientHello(forged, key);
    if (handshake === null) throw new Error("no HELLO_ACK");
    // Signed by another key than the one HELLO named.
    forged.send(rawClientAuth(SigningKey.generate(), handshake.state, handshake.ack).auth);
    await waitFor("the close", () => forged.closed);
    expect(forged.error).toBe("BAD_SIGNATURE AUTH does not verify for the HELLO's key");
    const skipped = await RawConn.open(fx.server.port);
    if ((await sendClientHello(skipped, key)) === null) throw new Error("no HELLO_ACK");
    skipped.send({ type: FrameType.PING, body: { n: 1 } });
    await waitFor("the close", () => skipped.closed);
    expect(skipped.error).toBe("UNAUTHORIZED the frame after HELLO must be AUTH");
  });
});

describe("client session MACs (PROTOCOL.md 5.2)", () => {
  /** A live session (it got PONG), and the frames the handler saw so far. */
  async function liveSession(fx: Fixture): Promise<RawConn> {
    const raw = await clientSession(fx.server.port, SigningKey.generate());
    expectSession(raw);
    return raw;
  }

  async function expectClosedForMac(fx: Fixture, raw: RawConn, handled: number): Promise<void> {
    await waitFor("the connection to be closed", () => raw.closed);
    expect(raw.error).toBe("BAD_MAC a frame failed its MAC check (altered, replayed or reordered)");
    // The ERROR itself is sealed: the client can tell it from a forgery.
    expect(raw.unsealedFrames).toBe(0);
    expect(fx.metrics.get("client_frames_bad_mac_total")).toBe(1);
    expect(fx.clientFrames.length).toBe(handled);
    expect(fx.logLines.some((line) => line.includes("client frame failed its MAC check; closing the connection"))).toBe(true);
  }

  test("every replica frame after AUTH is sealed, and the session's frames open in order", async () => {
    const fx = startServer();
    const raw = await liveSession(fx);
    raw.send({ type: FrameType.PING, body: { n: 2 } });
    await waitFor("the second PONG", () => raw.frames.filter((f) => f.type === FrameType.PONG).length === 2);
    expect(raw.framing?.opener.opened).toBe(2);
    expect(raw.unsealedFrames).toBe(0);
  });

  test("a frame with one byte altered is not processed: counted, logged, and the connection closed", async () => {
    const fx = startServer();
    const raw = await liveSession(fx);
    const handled = fx.clientFrames.length;
    const sealed = encodeSessionFrame({ type: FrameType.PING, body: { n: 77 } }, raw.framing);
    // The last payload byte: n = 77 becomes 76.
    sealed[sealed.length - 33] = (sealed[sealed.length - 33] as number) ^ 0x01;
    raw.write(sealed);
    await expectClosedForMac(fx, raw, handled);
  });

  test("a replayed frame (an exact copy of one the replica accepted) is refused", async () => {
    const fx = startServer();
    const raw = await liveSession(fx);
    const sealed = encodeSessionFrame({ type: FrameType.PING, body: { n: 5 } }, raw.framing);
    raw.write(sealed);
    await waitFor("the PONG", () => raw.frames.filter((f) => f.type === FrameType.PONG).length === 2);
    const handled = fx.clientFrames.length;
    raw.write(sealed);
    await expectClosedForMac(fx, raw, handled);
  });

  test("frames out of order are refused", async () => {
    const fx = startServer();
    const raw = await liveSession(fx);
    const framing = raw.framing as SessionFraming;
    const first = encodeSessionFrame({ type: FrameType.PING, body: { n: 5 } }, framing);
    const second = encodeSessionFrame({ type: FrameType.PING, body: { n: 6 } }, framing);
    const handled = fx.clientFrames.length;
    raw.write(Buffer.concat([second, first]));
    await expectClosedForMac(fx, raw, handled);
  });

  test("bad MACs from many sessions write at most the audit log's lines per window; each is still counted", async () => {
    const nowMs = 1_000_000;
    const fx = startServer({}, null, () => nowMs, { audit: true });
    const sessions = AUDIT_LINES_PER_WINDOW + 5;
    for (let i = 0; i < sessions; i++) {
      const raw = await liveSession(fx);
      raw.write(encodeTypedFrame({ type: FrameType.PING, body: { n: i } }));
      await waitFor("the connection to be closed", () => raw.closed);
    }
    expect(fx.metrics.get("client_frames_bad_mac_total")).toBe(sessions);
    const lines = fx.logLines.filter((line) => line.includes("client frame failed its MAC check"));
    expect(lines.length).toBe(AUDIT_LINES_PER_WINDOW);
    expect(JSON.parse(lines[0] as string)).toMatchObject({ audit: "client-refused", address: HOST, reason: "bad MAC" });
  });

  test("a frame without a MAC after AUTH (what a version 1 client sends) is refused", async () => {
    const fx = startServer();
    const raw = await liveSession(fx);
    const handled = fx.clientFrames.length;
    raw.write(encodeTypedFrame({ type: FrameType.PING, body: { n: 9 } }));
    await expectClosedForMac(fx, raw, handled);
  });

  test("a frame of a type a client session does not send is refused by its type byte, undecoded, and the session closed", async () => {
    const fx = startServer();
    const raw = await liveSession(fx);
    const handled = fx.clientFrames.length;
    raw.send(queryReplyBomb());
    await waitFor("the connection to be closed", () => raw.closed);
    expect(raw.error).toBe("BAD_FRAME frame type 0x13 is not for a replica's client port");
    expect(fx.clientFrames.length).toBe(handled);
    expect(fx.metrics.get("bad_frames_total")).toBe(1);
  });

  test("a REQUEST padded with a field of empty arrays is refused after the values a REQUEST holds: blacklisted like any frame that does not decode", async () => {
    const nowMs = 1_000_000;
    const admission = new ClientAdmission({}, () => nowMs);
    const fx = startServer({}, null, undefined, { admission });
    const raw = await liveSession(fx);
    const handled = fx.clientFrames.length;
    const padded = encodeCanonical({ body: Uint8Array.of(1), sig: new Uint8Array(64), pad: new Array<Canonical>(1_000_000).fill([]) });
    raw.write((raw.framing as SessionFraming).sealer.seal(encodeFrame(FrameType.REQUEST, padded)));
    await waitFor("the connection to be closed", () => raw.closed);
    expect(raw.error).toMatch(/^BAD_FRAME REQUEST: items-exceeded at byte \d+/);
    expect(fx.clientFrames.length).toBe(handled);
    expect(admission.isAddressBlacklisted("127.0.0.1")).toBe(true);
  });

  test("a version 1 HELLO is refused with BAD_VERSION saying why, before the replica signs anything", async () => {
    const fx = startServer();
    const raw = await RawConn.open(fx.server.port);
    const key = SigningKey.generate();
    raw.send({ type: FrameType.HELLO, body: { v: 1, role: "client", key: key.publicKey, nonce: nonce() } as unknown as Hello });
    await waitFor("the refusal", () => raw.closed);
    expect(raw.error).toBe(
      "BAD_VERSION HELLO: version 1 is not supported (this is version 4, serving 3 and up; since version 2 every client frame after the handshake carries a MAC, and since version 3 a client frame's MAC covers the SHA-256 of its payload: upgrade the client or replica)",
    );
    expect(raw.has(FrameType.HELLO_ACK)).toBe(false);
  });
});

describe("a blacklisted address on a clients-only port", () => {
  test("one refusal per BLACKLIST_NOTICE_MS is answered with the reason and logged; with no room in the tarpit the others are reset at once, counted, and reported in one line", async () => {
    let nowMs = 1_000_000;
    const admission = new ClientAdmission({}, () => nowMs);
    const fx = startServer({ tarpitPerAddressMax: 0 }, null, () => nowMs, { accepts: "clients", admission, audit: true });
    admission.blacklist(null, HOST, "a test's reason");
    const refusals = () => fx.logLines.filter((line) => line.includes("connection refused: blacklisted")).length;

    const first = await RawConn.open(fx.server.port);
    await waitFor("the first refusal to close the connection", () => first.closed);
    expect(first.error).toMatch(/^UNAUTHORIZED address 127\.0\.0\.1 is blacklisted for 60 s after a test's reason/);
    expect(refusals()).toBe(1);

    // The same second: nothing written, no line each, but every one counted.
    for (let i = 0; i < 5; i++) {
      const again = await RawConn.open(fx.server.port);
      await waitFor("the refusal to close the connection", () => again.closed);
      expect(again.frames).toEqual([]);
    }
    expect(fx.metrics.get("clients_blacklisted_refused_total")).toBe(6);
    expect(refusals()).toBe(1);

    // The window ends: the five are reported together, and the next refusal is answered again.
    nowMs += BLACKLIST_NOTICE_MS;
    await waitFor("the line reporting the quiet refusals", () =>
      fx.logLines.some((line) => line.includes("connections refused without an answer: blacklisted")),
    );
    const report = JSON.parse(fx.logLines.find((line) => line.includes("without an answer")) as string) as Record<string, unknown>;
    expect(report).toMatchObject({ audit: "client-refused", address: HOST, connections: 5, tarpitted: 0 });
    expect(fx.metrics.get("clients_tarpitted_total")).toBe(0);
    const later = await RawConn.open(fx.server.port);
    await waitFor("the refusal to close the connection", () => later.closed);
    expect(later.error).toMatch(/^UNAUTHORIZED address 127\.0\.0\.1 is blacklisted/);
    expect(fx.metrics.get("clients_blacklisted_refused_total")).toBe(7);
    expect(refusals()).toBe(2);
  });
});

/** Sends `bytes` on a new connection and reads until the server closes it. */
async function exchangeRaw(port: number, bytes: string): Promise<string> {
  const socket = net.connect({ host: HOST, port });
  const chunks: Buffer[] = [];
  socket.on("data", (chunk: Buffer) => chunks.push(chunk));
  socket.on("error", () => {});
  socket.write(bytes);
  await new Promise<void>((resolve) => socket.on("close", () => resolve()));
  return Buffer.concat(chunks).toString("latin1");
}

describe("an HTTP request where fitb's protocol is spoken (curl or a browser at the wrong port)", () => {
  const REQUEST = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n";

  test("is answered 400 in HTTP saying where HTTP is served, counted and logged, and its address is not blacklisted: the host's clients still get sessions", async () => {
    const admission = new ClientAdmission({});
    const fx = startServer({}, null, undefined, { accepts: "clients", admission, audit: true });
    const answer = await exchangeRaw(fx.server.port, REQUEST);
    expect(answer).toStartWith("HTTP/1.1 400 Bad Request\r\n");
    const [head, body] = answer.split("\r\n\r\n") as [string, string];
    expect(head).toContain(`Content-Length: ${Buffer.byteLength(body)}`);
    expect(head).toContain("Connection: close");
    expect(body).toContain("fitb replica 0: this client port speaks fitb's binary protocol");
    expect(body).toContain("--metrics HOST:PORT");
    expect(fx.metrics.get("http_requests_refused_total")).toBe(1);
    expect(fx.metrics.get("clients_blacklisted_total")).toBe(0);
    expect(admission.isAddressBlacklisted(HOST)).toBe(false);
    expect(fx.logLines.some((line) => line.includes("connection refused: an HTTP request"))).toBe(true);
    expectSession(await clientSession(fx.server.port, SigningKey.generate()));
  });

  test("other bytes that are no frame still blacklist the address, as before", async () => {
    const admission = new ClientAdmission({});
    const fx = startServer({}, null, undefined, { accepts: "clients", admission, audit: true });
    const answer = await exchangeRaw(fx.server.port, "HELLO fitb, are you there?\n");
    expect(answer).not.toContain("HTTP/1.1");
    expect(fx.metrics.get("http_requests_refused_total")).toBe(0);
    expect(admission.isAddressBlacklisted(HOST)).toBe(true);
  });

  test("a TLS handshake (curl https://) is closed, counted and not blacklisted either", async () => {
    const admission = new ClientAdmission({});
    const fx = startServer({}, null, undefined, { accepts: "clients", admission, audit: true });
    // The start of a TLS 1.2/1.3 ClientHello record: handshake (22), version 3.1, length, type 1.
    const clientHello = String.fromCharCode(0x16, 0x03, 0x01, 0x00, 0xf4, 0x01, 0x00, 0x00, 0xf0, 0x03, 0x03);
    expect(await exchangeRaw(fx.server.port, clientHello)).toBe("");
    expect(fx.metrics.get("http_requests_refused_total")).toBe(1);
    expect(admission.isAddressBlacklisted(HOST)).toBe(false);
    expect(fx.logLines.some((line) => line.includes("connection refused: a TLS handshake (https://)"))).toBe(true);
  });

  test("on a peer port it names the peer port", async () => {
    const fx = startServer({}, null, undefined, { accepts: "peers" });
    expect(await exchangeRaw(fx.server.port, REQUEST)).toContain("fitb replica 0: this peer port speaks fitb's binary protocol");
  });
});

describe("the tarpit: connections of a blacklisted address held open and unread", () => {
  /** The hostile host; the correct clients connect from HOST. */
  const ATTACKER = "127.0.0.2";
  const CHUNK = new Uint8Array(64 * 1024).fill(0x41);
  /** Far more than the kernel buffers of one connection: a writer that gets this far is being read. */
  const CAP_BYTES = 256 * 1024 * 1024;
  /** A frame header claiming far more than any frame may have. */
  const OVERSIZE_HEADER = Uint8Array.of(0x00, 0x40, 0x00, 0x01, FrameType.REQUEST);

  /** A server with an admission and an audit log on the test's clock; the sweep runs every 100 ms (clientStuckMsMax 400). */
  function tarpitServer(limits: Partial<ServerLimits>, accepts: ListenerRole) {
    const clock = { nowMs: 1_000_000 };
    const admission = new ClientAdmission({}, () => clock.nowMs);
    const fx = startServer({ clientStuckMsMax: 400, ...limits }, null, () => clock.nowMs, { accepts, admission, audit: true });
    return { fx, admission, clock };
  }

  test("past the answered refusal a blacklisted address's connections are held: the writer stalls and nothing is read; at most tarpitPerAddressMax, the next reset; reset when the hold time is up", async () => {
    const { fx, admission, clock } = tarpitServer({ tarpitPerAddressMax: 2, tarpitHoldMsMax: 5_000 }, "clients");
    admission.blacklist(null, ATTACKER, "a test's reason");
    // The first refusal in a notice window is answered and closed, as before.
    const answered = await Flooder.open(fx.server.port, ATTACKER);
    await waitFor("the answered refusal to close", () => answered.closed);
    expect(answered.received).toBeGreaterThan(0);
    // The next one is held open, its reads paused: the writer's bytes stop being taken.
    const held = await Flooder.open(fx.server.port, ATTACKER);
    await waitFor("the connection to be held", () => fx.metrics.get("tarpit_connections") === 1);
    held.write(OVERSIZE_HEADER);
    expect(await held.fill(CHUNK, CAP_BYTES)).toBe("stalled");
    expect(held.taken).toBeLessThan(CAP_BYTES);
    expect(held.waiting).toBeGreaterThan(0);
    expect(held.received).toBe(0);
    expect(fx.metrics.get("clients_tarpitted_total")).toBe(1);
    expect(fx.metrics.get("bad_frames_total")).toBe(0);
    // A correct client, from another address, is served meanwhile.
    expectSession(await clientSession(fx.server.port, SigningKey.generate()));

    // The per-address bound: one more is held, the one after it reset as before.
    const second = await Flooder.open(fx.server.port, ATTACKER);
    await waitFor("the second connection to be held", () => fx.metrics.get("tarpit_connections") === 2);
    const third = await Flooder.open(fx.server.port, ATTACKER);
    await waitFor("the connection past the per-address bound to be reset", () => third.closed);
    expect(third.received).toBe(0);
    expect(fx.metrics.get("tarpit_connections")).toBe(2);
    expect(fx.metrics.get("clients_tarpitted_total")).toBe(2);
    expect(fx.metrics.get("clients_blacklisted_refused_total")).toBe(4);
    expect(held.closed || second.closed).toBe(false);

    // The notice window ends: one line reports its three quiet refusals, two of them held.
    clock.nowMs += BLACKLIST_NOTICE_MS;
    await waitFor("the line reporting the quiet refusals", () =>
      fx.logLines.some((line) => line.includes("connections refused without an answer: blacklisted")),
    );
    const report = JSON.parse(fx.logLines.find((line) => line.includes("without an answer")) as string) as Record<string, unknown>;
    expect(report).toMatchObject({ audit: "client-refused", address: ATTACKER, connections: 3, tarpitted: 2 });
    expect(held.closed || second.closed).toBe(false);

    // The hold time is up: both are reset; their slots are free again.
    clock.nowMs += 5_000;
    await waitFor("the held connections to be reset at the end of their hold", () => held.closed && second.closed);
    expect(fx.metrics.get("tarpit_connections")).toBe(0);
    expect(held.received).toBe(0);
  });

  test("at most tarpitConnectionsMax in all: past it a connection is reset as before, with room left for its address", async () => {
    const { fx, admission } = tarpitServer({ tarpitConnectionsMax: 1 }, "clients");
    admission.blacklist(null, ATTACKER, "a test's reason");
    const answered = await Flooder.open(fx.server.port, ATTACKER);
    await waitFor("the answered refusal to close", () => answered.closed);
    const held = await Flooder.open(fx.server.port, ATTACKER);
    await waitFor("the connection to be held", () => fx.metrics.get("tarpit_connections") === 1);
    const past = await Flooder.open(fx.server.port, ATTACKER);
    await waitFor("the connection past the bound in all to be reset", () => past.closed);
    expect(past.received).toBe(0);
    expect(held.closed).toBe(false);
    expect(fx.metrics.get("clients_tarpitted_total")).toBe(1);
    expect(fx.metrics.get("clients_blacklisted_refused_total")).toBe(3);
  });

  test("an oversize frame from an address blacklisted already is held unanswered (the first is answered and closed); held connections are closed when the server stops", async () => {
    // A shared port: addresses are judged at HELLO, so each connection gets to send its frame.
    const { fx } = tarpitServer({}, "both");
    const first = await Flooder.open(fx.server.port, ATTACKER);
    first.write(OVERSIZE_HEADER);
    await waitFor("the first oversize frame to be answered and closed", () => first.closed);
    expect(first.received).toBeGreaterThan(0);
    expect(fx.metrics.get("clients_blacklisted_total")).toBe(1);
    expect(fx.metrics.get("tarpit_connections")).toBe(0);

    const again = await Flooder.open(fx.server.port, ATTACKER);
    again.write(OVERSIZE_HEADER);
    await waitFor("the second to be held", () => fx.metrics.get("tarpit_connections") === 1);
    expect(await again.fill(CHUNK, CAP_BYTES)).toBe("stalled");
    expect(again.taken).toBeLessThan(CAP_BYTES);
    expect(again.received).toBe(0);
    expect(fx.metrics.get("clients_blacklisted_total")).toBe(2);
    expect(fx.metrics.get("clients_tarpitted_total")).toBe(1);
    // Held, it no longer counts as a handshake.
    expect(fx.metrics.get("handshakes_open")).toBe(0);
    const lines = fx.logLines.filter((line) => line.includes('"audit":"client-blacklisted"')).map((line) => JSON.parse(line));
    expect(lines).toEqual([
      expect.not.objectContaining({ tarpitted: true }),
      expect.objectContaining({ address: ATTACKER, tarpitted: true }),
    ]);
    // A correct client on the same port is served.
    expectSession(await clientSession(fx.server.port, SigningKey.generate()));

    fx.server.stop();
    await waitFor("the held connection to be closed by the stop", () => again.closed);
    expect(fx.metrics.get("tarpit_connections")).toBe(0);
  });
});

describe("client_keys: the allow-list of client sessions", () => {
  test("a key not listed is refused at HELLO, before the replica signs anything; a listed key gets in", async () => {
    const listed = SigningKey.generate();
    const fx = startServer({}, new Set([Buffer.from(listed.publicKey).toString("hex")]));
    const stranger = await RawConn.open(fx.server.port);
    expect(await sendClientHello(stranger, SigningKey.generate())).toBeNull();
    await waitFor("the close", () => stranger.closed);
    expect(stranger.error).toBe("UNAUTHORIZED this key is not in the cluster's client_keys");
    expect(stranger.has(FrameType.HELLO_ACK)).toBe(false);
    expectSession(await clientSession(fx.server.port, listed));
  });

  test("no list: any key may open a session", async () => {
    const fx = startServer();
    expectSession(await clientSession(fx.server.port, SigningKey.generate()));
  });
});

/** An authenticated peer session as replica 1 (whose key the fixture holds), spoken by hand. */
async function peerSession(fx: Fixture): Promise<RawConn> {
  const raw = await RawConn.open(fx.server.port);
  const eph = generateEphemeralKeyPair();
  const hello: Hello = {
    v: PROTOCOL_VERSION,
    role: "replica",
    replica: 1,
    key: fx.peerKey.publicKey,
    nonce: nonce(),
    eph: eph.publicKey,
  };
  raw.send({ type: FrameType.HELLO, body: hello });
  await waitFor("HELLO_ACK", () => raw.has(FrameType.HELLO_ACK));
  const ack = raw.frames.find((f) => f.type === FrameType.HELLO_ACK);
  if (ack?.type !== FrameType.HELLO_ACK) throw new Error("no HELLO_ACK");
  raw.send({ type: FrameType.AUTH, body: { sig: signDomain(fx.peerKey, DOMAIN_SESSION_INITIATOR, sessionTranscript(hello, ack.body)) } });
  // The session answers a PING once AUTH has verified.
  raw.send({ type: FrameType.PING, body: { n: 1 } });
  await waitFor("PONG", () => raw.has(FrameType.PONG) || raw.closed);
  return raw;
}

/** A QUERY_REPLY whose open `res` holds a million empty arrays: valid, and a million allocations to decode. */
function queryReplyBomb(): Frame {
  return { type: FrameType.QUERY_REPLY, body: { id: 1, replica: 1, ok: true, res: new Array<Canonical>(1_000_000).fill([]) } };
}

describe("peer links (PROTOCOL.md 5.3)", () => {
  test("a PEER frame that fails its MAC is dropped, counted, and closes the link", async () => {
    const fx = startServer();
    const raw = await peerSession(fx);
    raw.send({ type: FrameType.PEER, body: { seq: 1, msg: Uint8Array.of(1, 2, 3), mac: new Uint8Array(32) } });
    await waitFor("the link to be closed", () => raw.closed);
    expect(raw.error).toBe("BAD_MAC a peer frame failed its MAC or sequence check");
    expect(fx.metrics.get("peer_frames_rejected_total")).toBe(1);
    expect(fx.peerMessages).toEqual([]);
  });

  test("a frame of a type a peer link does not carry is refused by its type byte, undecoded: the link is closed, the peer not muted (no MAC covers the type byte)", async () => {
    const fx = startServer();
    const raw = await peerSession(fx);
    raw.send(queryReplyBomb());
    await waitFor("the link to be closed", () => raw.closed);
    // Refused for its type: a decoded frame would have been judged by its (valid) body.
    expect(raw.error).toBe("BAD_FRAME a frame of type 0x13: a peer link carries only PEER and PING");
    // Anyone on the path could have written those bytes: the peer is not muted, and its next handshake goes through.
    expect(fx.mesh.isMuted(1)).toBe(false);
    expect(fx.metrics.peerMuted.with("1", "misbehaving").value).toBe(0);
    expect(fx.metrics.get("peer_frames_rejected_total")).toBe(1);
    const again = await peerSession(fx);
    expect(again.has(FrameType.PONG)).toBe(true);
  });

  test("a PEER frame padded with a field of empty arrays is refused after the values a PEER frame holds: the link closed, its sender not muted", async () => {
    const fx = startServer();
    const raw = await peerSession(fx);
    const padded = encodeCanonical({
      seq: 1,
      msg: Uint8Array.of(1),
      mac: new Uint8Array(32),
      pad: new Array<Canonical>(1_000_000).fill([]),
    });
    raw.write(encodeFrame(FrameType.PEER, padded));
    await waitFor("the link to be closed", () => raw.closed);
    expect(raw.error).toStartWith("BAD_FRAME a frame that does not decode or is too large (PEER: items-exceeded");
    expect(fx.mesh.isMuted(1)).toBe(false);
    expect(fx.metrics.get("peer_frames_rejected_total")).toBe(1);
    expect(fx.peerMessages).toEqual([]);
  });

  test("PINGs past the peer's budget of them close the link and mute no one (a PING has no MAC): the next handshake goes through", async () => {
    const fx = startServer({}, null, undefined, { inbox: { messagesPerSecondMax: 20 } });
    const raw = await peerSession(fx);
    raw.write(Buffer.concat(Array.from({ length: 200 }, (_, i) => encodeTypedFrame({ type: FrameType.PING, body: { n: i } }))));
    await waitFor("the link to be closed", () => raw.closed);
    expect(raw.error).toBe("BAD_FRAME PINGs over the peer's budget of them");
    expect(raw.frames.filter((f) => f.type === FrameType.PONG).length).toBeLessThan(200);
    expect(fx.mesh.isMuted(1)).toBe(false);
    // Not muted: its next handshake is answered (a muted peer's HELLO is refused).
    const again = await peerSession(fx);
    expect(again.has(FrameType.HELLO_ACK)).toBe(true);
  });

  test("messages the precheck drops are counted by peer and reason and logged, once per interval per peer and reason", async () => {
    const fx = startServer({}, null, undefined, { precheck: (_from, msg) => (msg[0] === 0xff ? "duplicate" : null) });
    const peer = dialAsPeer(fx);
    await waitFor("replica 1's link to the server", () => peer.status().some((link) => link.id === 0 && link.up));
    for (let i = 0; i < 5; i++) expect(peer.send(0, Uint8Array.of(0xff, i))).toBe(true);
    expect(peer.send(0, Uint8Array.of(1))).toBe(true);
    // A peer's messages are taken in the order they came: the one that passes comes after the five.
    await waitFor("the message that passes the precheck", () => fx.peerMessages.length === 1);
    expect(fx.peerMessages[0]?.msg).toEqual(Uint8Array.of(1));
    expect(fx.metrics.peerDropped.with("1", "duplicate").value).toBe(5);
    const lines = fx.logLines.filter((line) => line.includes("peer message dropped before processing")).map((line) => JSON.parse(line));
    expect(lines).toEqual([expect.objectContaining({ level: "warn", peer: 1, reason: "duplicate", alsoSinceLastLine: 0 })]);
  });
});

describe("the links a replica dials", () => {
  /**
   * Replica 0's mesh dialling replica 1's address, where a listener that is no replica
   * answers the HELLO with `answer`; the mesh's warnings are returned as they come.
   */
  function dialImpostor(answer: Uint8Array): { readonly lines: string[]; readonly metrics: Metrics } {
    const lines: string[] = [];
    const metrics = new Metrics();
    const impostor = Bun.listen<undefined>({
      hostname: HOST,
      port: 0,
      socket: {
        data(socket) {
          socket.write(answer);
        },
      },
    });
    const keys = [SigningKey.generate(), SigningKey.generate()];
    const replicas = replicaEntries(keys, 0).map((entry) => (entry.id === 1 ? { ...entry, port: impostor.port } : entry));
    const mesh = new PeerMesh({
      self: 0,
      key: keys[0] as SigningKey,
      replicas,
      frameBytesMax: FRAME_BYTES_MAX,
      log: createLog({}, "warn", (line) => lines.push(line)),
      metrics,
      onMessage: () => {},
    });
    mesh.start();
    cleanups.push(() => {
      mesh.stop();
      impostor.stop(true);
    });
    return { lines, metrics };
  }

  test(`before its HELLO_ACK the dialled side may send frames of at most ${DIALLED_LINK_FRAME_BYTES_MAX} bytes: a declared length over it fails the link at once`, async () => {
    const header = new Uint8Array(5);
    new DataView(header.buffer).setUint32(0, FRAME_BYTES_MAX);
    header[4] = FrameType.HELLO_ACK;
    const { lines, metrics } = dialImpostor(header);
    await waitFor("the link to fail", () => lines.some((line) => line.includes("peer link failed")));
    expect(lines.find((line) => line.includes("peer link failed"))).toContain(
      `exceeds the maximum of ${DIALLED_LINK_FRAME_BYTES_MAX + CLIENT_FRAME_MAC_BYTES}`,
    );
    expect(metrics.get("peer_handshake_failed_total")).toBeGreaterThanOrEqual(1);
  });

  test("a frame of a type the dialled side does not send is refused by its type byte, undecoded", async () => {
    // Not CBOR at all: had it been decoded, the link would have failed for that.
    const { lines } = dialImpostor(encodeFrame(FrameType.QUERY_REPLY, Uint8Array.of(0xff, 0xff)));
    await waitFor("the link to fail", () => lines.some((line) => line.includes("peer link failed")));
    expect(lines.find((line) => line.includes("peer link failed"))).toContain("unexpected frame type 0x13 on a link this replica dialled");
  });
});

describe("client connections that go quiet or stop reading", () => {
  test("a session that sends nothing is closed after clientIdleMsMax; one that PINGs stays", async () => {
    const fx = startServer({ clientIdleMsMax: 400 });
    const quiet = await clientSession(fx.server.port, SigningKey.generate());
    const chatty = await clientSession(fx.server.port, SigningKey.generate());
    let n = 100;
    const pinger = setInterval(() => chatty.send({ type: FrameType.PING, body: { n: n++ } }), 50);
    try {
      await waitFor("the quiet session to be closed", () => quiet.closed);
      expect(quiet.error).toBe("TIMEOUT nothing received for 400 ms; clients PING while idle");
      expect(fx.metrics.get("clients_idle_closed_total")).toBe(1);
      // The sweep that closed the quiet one ran past the deadline; the chatty one kept going.
      const pongs = chatty.frames.filter((f) => f.type === FrameType.PONG).length;
      await waitFor("two more PONGs", () => chatty.frames.filter((f) => f.type === FrameType.PONG).length >= pongs + 2);
      expect(chatty.closed).toBe(false);
    } finally {
      clearInterval(pinger);
    }
  });

  test("a session that stops reading is closed once its queued bytes sit untouched for clientStuckMsMax", async () => {
    const fx = startServer({ clientStuckMsMax: 500, clientIdleMsMax: 60_000 });
    const stuck = await clientSession(fx.server.port, SigningKey.generate());
    stuck.pause();
    stuck.send({ type: FrameType.QUERY, body: { id: 1, q: "status" } });
    await waitFor("the stuck session to be closed", () => fx.metrics.get("clients_stuck_closed_total") === 1);
    await waitFor("its queued bytes to be released", () => fx.metrics.get("client_output_bytes") === 0);
  });

  const bound = 6 * BULK_FRAME_BYTES;
  test.each([
    // The bound for all clients together.
    ["all clients together stay within clientOutputBytesMax", { clientOutputBytesMax: bound }],
    // A budget for all clients that would take every answer: only the address's share bounds them.
    [
      "the clients of one address together stay within clientOutputBytesPerAddressMax",
      { clientOutputBytesMax: 16 * bound, clientOutputBytesPerAddressMax: bound },
    ],
  ] as const)("the bytes queued for %s", async (_what, limits) => {
    const fx = startServer({ ...limits, clientStuckMsMax: 60_000 });
    const readers = [];
    for (let i = 0; i < 3; i++) {
      const raw = await clientSession(fx.server.port, SigningKey.generate());
      raw.pause();
      raw.send({ type: FrameType.QUERY, body: { id: i, q: "status" } });
      readers.push(raw);
    }
    await waitFor("three bulk answers", () => fx.bulkSent.length === 3);
    expect(fx.metrics.get("client_output_bytes")).toBeLessThanOrEqual(bound);
    // Each queues a little (what the kernel took, then up to the bound): far fewer than asked.
    const total = fx.bulkSent.reduce((x, y) => x + y, 0);
    expect(total).toBeLessThan(3 * BULK_FRAMES);
    for (const raw of readers) raw.close();
    await waitFor("the queued bytes to be released", () => fx.metrics.get("client_output_bytes") === 0);
  });
});

describe("client frames still arriving (partial-frames.ts)", () => {
  /** All of a PING frame of `length` bytes (type byte included) but its last byte: it never completes. */
  const unfinished = (length: number): Uint8Array => {
    const whole = encodeFrame(FrameType.PING, new Uint8Array(length - 1));
    return whole.subarray(0, whole.length - 1);
  };
  const FRAME = 300_000;

  test("past the per-address bound the frame arriving slowest is cut, its session told why; the others go on", async () => {
    let nowMs = 1_000_000;
    const limits = { bytesMax: 64 * FRAME, perAddressBytesMax: 2.5 * FRAME, graceMs: 3_600_000, bytesPerSecondMin: 0 };
    const fx = startServer({}, null, () => nowMs, { partialFrames: limits });
    const held = (): number => fx.metrics.get("client_partial_frame_bytes");
    const sessions: RawConn[] = [];
    for (let i = 0; i < 3; i++) {
      const session = await clientSession(fx.server.port, SigningKey.generate());
      session.send({ type: FrameType.PING, body: { n: 1 } });
      await waitFor("the session's PONG", () => session.has(FrameType.PONG));
      sessions.push(session);
    }
    const [a, b, c] = sessions as [RawConn, RawConn, RawConn];
    // A began first and B a second later: by now A's frame has come at half B's rate.
    a.write(unfinished(FRAME));
    await waitFor("A's frame to be held", () => held() >= FRAME - 1);
    nowMs += 1_000;
    b.write(unfinished(FRAME));
    await waitFor("B's frame to be held", () => held() >= 2 * (FRAME - 1));
    nowMs += 1_000;
    c.write(unfinished(FRAME));
    await waitFor("A to be cut", () => a.closed);
    expect(a.error).toContain("OVERLOADED its address holds");
    expect(a.error).toContain("the frame arriving slowest is cut");
    expect(fx.metrics.get("client_partial_frames_cut_total")).toBe(1);
    await waitFor("the count to leave A's frame out", () => held() === 2 * FRAME);
    // B and C still answer: their sessions go on (their frames stay unfinished).
    for (const session of [b, c]) expect(session.closed).toBe(false);
  });

  test("a frame that gets less than the minimum rate over a whole window is cut; one arriving faster stays", async () => {
    let nowMs = 1_000_000;
    // The frames held (about 350 KB) pass a quarter of bytesMax: frames are judged slow.
    const limits = { bytesMax: 4 * FRAME, perAddressBytesMax: 4 * FRAME, graceMs: 10_000, bytesPerSecondMin: 20_000 };
    // clientStuckMsMax sets the sweep's pace (a quarter of it): the sweep judges the frames.
    const fx = startServer({ clientStuckMsMax: 400 }, null, () => nowMs, { partialFrames: limits });
    const slow = await clientSession(fx.server.port, SigningKey.generate());
    const fast = await clientSession(fx.server.port, SigningKey.generate());
    const frame = unfinished(FRAME);
    slow.write(frame.subarray(0, 50_000));
    fast.write(frame.subarray(0, 50_000));
    await waitFor("both frames to be held", () => fx.metrics.get("client_partial_frame_bytes") >= 2 * 50_000);
    // The fast one gets 250,000 bytes more, the slow one nothing; 11 s on, the window is over:
    // 50,000 bytes over it is 4,545 bytes/s, 299,999 is 27,272 bytes/s.
    fast.write(frame.subarray(50_000, 300_000 - 1));
    await waitFor("the fast frame's bytes to be held", () => fx.metrics.get("client_partial_frame_bytes") >= 300_000 - 1 + 50_000);
    nowMs += 11_000;
    await waitFor("the slow frame to be cut", () => slow.closed);
    expect(slow.error).toMatch(/^OVERLOADED a frame arriving at 4545 bytes\/s over 11000 ms/);
    expect(fx.metrics.get("client_partial_frames_cut_total")).toBe(1);
    expect(fast.closed).toBe(false);
  });
});
