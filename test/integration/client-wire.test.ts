/**
 * The client against replicas that speak the real wire protocol over loopback TCP: a
 * small in-test replica (handshake, REQUEST/REPLY, QUERY, SUBSCRIBE/EVENTS) whose
 * answers each test scripts, including wrong keys, lies and silence. It checks the
 * client's side of the contract; the replica runtime has its own tests.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { Socket, TCPSocketListener } from "bun";
import { randomBytes } from "node:crypto";
import type { Canonical } from "../../wire/canonical.ts";
import { FrameDecoder } from "../../wire/frame.ts";
import {
  decodeRequestBody,
  type Frame,
  type Hello,
  type HelloAck,
  type Query,
  type Request,
  type SignedRequest,
  type Subscribe,
} from "../../wire/schemas.ts";
import { sessionTranscript } from "../../wire/session.ts";
import { freePortRange } from "./harness.ts";
import {
  DOMAIN_REQUEST,
  DOMAIN_SESSION_INITIATOR,
  DOMAIN_SESSION_RESPONDER,
  FrameType,
  type ErrorCode,
  PROTOCOL_VERSION,
} from "../../wire/types.ts";
import { FitbClient } from "../../src/client/client.ts";
import { ReplicaConnection, type ConnectionEvents, type ConnectionOptions } from "../../src/client/connection.ts";
import { type ClientError, HandshakeError, NoQuorumError, ReplicaUnreachableError, RequestRejectedError } from "../../src/client/errors.ts";
import type { ReceivedBatch, SubscriptionSignal } from "../../src/client/subscription.ts";
import { checkRequestSignature } from "../../src/client/shared-bodies.ts";
import { parseClusterConfig, type ClusterConfig } from "../../src/config/cluster.ts";
import { signDomain, verifyDomain } from "../../src/crypto/ed25519.ts";
import { toHex } from "../../src/crypto/encoding.ts";
import { sha256 } from "../../src/crypto/hash.ts";
import { formatPublicKey, SigningKey } from "../../src/crypto/keys.ts";
import {
  deriveSessionKeys,
  generateEphemeralKeyPair,
  type SessionFraming,
  type SessionKeys,
  sessionFraming,
  x25519SharedSecret,
} from "../../src/crypto/session.ts";
import { decodeSessionFrame, encodeSessionFrame } from "../helpers/client-session.ts";
import { waitFor } from "../helpers/wait.ts";

// ---------------------------------------------------------------------------------------
// The in-test replica
// ---------------------------------------------------------------------------------------

type Conn = Socket<ConnState>;

interface ConnState {
  decoder: FrameDecoder;
  hello: Hello | null;
  ack: HelloAck | null;
  client: Uint8Array | null;
  /** The session keys from HELLO until AUTH verifies; then the framing that seals and opens every frame. */
  keys: SessionKeys | null;
  framing: SessionFraming | null;
  subs: Map<number, { tag: string; next: number }>;
}

interface ReplicaScript {
  /** The key put in HELLO_ACK (default: the replica's own). */
  presentKey?: SigningKey;
  /** The id put in HELLO_ACK (default: the replica's own). */
  claimId?: number;
  /** Corrupts the HELLO_ACK signature. */
  badSignature?: boolean;
  /** Answers HELLO with ERROR UNAUTHORIZED instead of HELLO_ACK. */
  refuseHello?: boolean;
  /** What to answer a REQUEST with; null = stay silent. Default: the honest answer. */
  onRequest?: (replica: TestReplica, request: Request, signed: SignedRequest, copy: number) => Frame | null;
  /** What to answer a QUERY with; default: the honest answer. */
  onQuery?: (replica: TestReplica, query: Query) => Canonical | { refuse: ErrorCode; reason: string };
  /** Replaces the copy of a batch this replica sends to subscribers. */
  forgeEvents?: (seq: number, signed: SignedRequest) => SignedRequest;
  /** Claims this `next` in SUB_OK (and streams from it when no `from` is given). */
  subOkNext?: number;
  /** Answers every QUERY this many milliseconds late. */
  queryDelayMs?: number;
}

/** What the honest replicas agree on: channels, and the decided order of total-order channels. */
class SharedLedger {
  readonly channels = new Map<string, { fault: "crash" | "byzantine"; order: "none" | "total" }>();
  /** Per tag: the decided batches, by first channel seq. */
  readonly logs = new Map<string, { first: number; signed: SignedRequest; span: number; digest: string }[]>();
  readonly replicas: TestReplica[] = [];
  /** Per tag: the registered publishers (default: the test's client key). */
  readonly publishers = new Map<string, Uint8Array[]>();

  /** The channel seq of a request: assigned once, the same for every honest replica. */
  decide(tag: string, signed: SignedRequest, span: number): number {
    const log = this.logs.get(tag) ?? [];
    this.logs.set(tag, log);
    const digest = toHex(sha256(signed.body));
    const known = log.find((entry) => entry.digest === digest);
    if (known !== undefined) return known.first;
    const last = log.at(-1);
    const first = last === undefined ? 1 : last.first + last.span;
    log.push({ first, signed, span, digest });
    for (const replica of this.replicas) replica.forward(tag, first, signed);
    return first;
  }

  nextSeq(tag: string): number {
    const last = this.logs.get(tag)?.at(-1);
    return last === undefined ? 1 : last.first + last.span;
  }
}

class TestReplica {
  readonly server: TCPSocketListener<ConnState>;
  readonly received: Frame[] = [];
  readonly authenticated: Uint8Array[] = [];
  readonly sockets = new Set<Conn>();
  /** Per client key hex and space: request seq -> body digest. */
  readonly used = new Map<string, Map<number, string>>();
  /** Answers client-seq with this instead of the truth while set... */
  clientSeqOverride: number | null = null;
  /** ...for this many answers (unbounded when null). */
  staleClientSeqAnswers: number | null = null;
  requestCopies = new Map<string, number>();

  constructor(
    readonly id: number,
    readonly key: SigningKey,
    readonly ledger: SharedLedger,
    readonly script: ReplicaScript = {},
  ) {
    this.server = Bun.listen<ConnState>({
      hostname: "127.0.0.1",
      port: 0,
      data: { decoder: new FrameDecoder(), hello: null, ack: null, client: null, keys: null, framing: null, subs: new Map() },
      socket: {
        open: (socket) => {
          socket.data = {
            decoder: new FrameDecoder({ copyPayloads: true }),
            hello: null,
            ack: null,
            client: null,
            keys: null,
            framing: null,
            subs: new Map(),
          };
          this.sockets.add(socket);
        },
        data: (socket, data) => this.onData(socket, data),
        close: (socket) => {
          this.sockets.delete(socket);
        },
      },
    });
    ledger.replicas.push(this);
  }

  get port(): number {
    return this.server.port;
  }

  stop(): void {
    this.server.stop(true);
    for (const socket of this.sockets) socket.terminate();
  }

  /** Drops every client connection (the listener stays up, so clients reconnect). */
  dropConnections(): void {
    for (const socket of this.sockets) socket.terminate();
  }

  send(socket: Conn, frame: Frame): void {
    socket.write(encodeSessionFrame(frame, socket.data.framing));
  }

  framesOfType(type: number): Frame[] {
    return this.received.filter((frame) => frame.type === type);
  }

  private onData(socket: Conn, data: Uint8Array): void {
    for (const item of socket.data.decoder.push(new Uint8Array(data))) {
      if (!item.ok) throw new Error(`test replica ${this.id}: ${item.error.reason}`);
      const decoded = decodeSessionFrame(item, socket.data.framing);
      if (!decoded.ok) throw new Error(`test replica ${this.id}: ${"error" in decoded ? decoded.error.reason : "a frame failed its MAC"}`);
      this.received.push(decoded.frame);
      this.onFrame(socket, decoded.frame);
    }
  }

  private onFrame(socket: Conn, frame: Frame): void {
    switch (frame.type) {
      case FrameType.HELLO:
        this.onHello(socket, frame.body);
        return;
      case FrameType.AUTH:
        this.onAuth(socket, frame.body.sig);
        return;
      case FrameType.REQUEST:
        this.onRequest(socket, frame.body);
        return;
      case FrameType.QUERY:
        this.onQuery(socket, frame.body);
        return;
      case FrameType.SUBSCRIBE:
        this.onSubscribe(socket, frame.body);
        return;
      case FrameType.UNSUBSCRIBE:
        socket.data.subs.delete(frame.body.sub);
        return;
      default:
        return;
    }
  }

  private onHello(socket: Conn, hello: Hello): void {
    if (this.script.refuseHello === true) {
      this.send(socket, { type: FrameType.ERROR, body: { code: "UNAUTHORIZED", reason: "this key may not connect" } });
      socket.end();
      return;
    }
    const presented = this.script.presentKey ?? this.key;
    const eph = generateEphemeralKeyPair();
    const unsigned = {
      v: PROTOCOL_VERSION,
      replica: this.script.claimId ?? this.id,
      key: presented.publicKey,
      nonce: new Uint8Array(randomBytes(32)),
      eph: eph.publicKey,
    } as const;
    const transcript = sessionTranscript(hello, unsigned);
    if (hello.role === "client")
      socket.data.keys = deriveSessionKeys(x25519SharedSecret(eph, hello.eph), transcript, "responder", "client");
    const sig = signDomain(presented, DOMAIN_SESSION_RESPONDER, transcript);
    if (this.script.badSignature === true) sig[0] = (sig[0] as number) ^ 0xff;
    const ack: HelloAck = { ...unsigned, sig };
    socket.data.hello = hello;
    socket.data.ack = ack;
    this.send(socket, { type: FrameType.HELLO_ACK, body: ack });
  }

  private onAuth(socket: Conn, sig: Uint8Array): void {
    const { hello, ack } = socket.data;
    if (hello === null || ack === null || !verifyDomain(hello.key, DOMAIN_SESSION_INITIATOR, sessionTranscript(hello, ack), sig)) {
      this.send(socket, { type: FrameType.ERROR, body: { code: "UNAUTHORIZED", reason: "AUTH does not verify" } });
      socket.end();
      return;
    }
    socket.data.client = hello.key;
    socket.data.framing = sessionFraming(socket.data.keys as SessionKeys);
    this.authenticated.push(hello.key);
  }

  private onRequest(socket: Conn, signed: SignedRequest): void {
    const decoded = decodeRequestBody(signed.body);
    if (!decoded.ok) throw new Error(decoded.error.reason);
    const request = decoded.request;
    const digest = toHex(sha256(signed.body));
    const copy = (this.requestCopies.get(digest) ?? 0) + 1;
    this.requestCopies.set(digest, copy);
    const reply =
      this.script.onRequest !== undefined ? this.script.onRequest(this, request, signed, copy) : this.honestReply(request, signed);
    if (reply !== null) this.send(socket, reply);
  }

  /** The reply a correct replica gives. */
  honestReply(request: Request, signed: SignedRequest): Frame {
    const d = sha256(signed.body);
    const base = { seq: request.seq, replica: this.id, d };
    if (!checkRequestSignature(signed.body, signed.sig, request.client, request.v)) {
      return { type: FrameType.REPLY, body: { ...base, ok: false, code: "BAD_SIGNATURE", reason: "bad signature" } };
    }
    const space = `${toHex(request.client)}/${request.op.t === "pub" ? request.op.tag : "#admin"}`;
    const used = this.used.get(space) ?? new Map<number, string>();
    this.used.set(space, used);
    const previous = used.get(request.seq);
    if (previous !== undefined && previous !== toHex(d)) {
      return { type: FrameType.REPLY, body: { ...base, ok: false, code: "REPLAY", reason: `seq ${request.seq} already used` } };
    }
    used.set(request.seq, toHex(d));
    if (request.op.t === "admin") {
      return { type: FrameType.REPLY, body: { ...base, ok: true, res: { t: "admin", cmd: request.op.cmd.t } } };
    }
    const tag = request.op.tag;
    const channel = this.ledger.channels.get(tag);
    if (channel === undefined) {
      return { type: FrameType.REPLY, body: { ...base, ok: false, code: "UNKNOWN_CHANNEL", reason: `no channel ${tag}` } };
    }
    if (channel.order === "none") {
      this.forward(tag, request.seq, signed);
      return { type: FrameType.REPLY, body: { ...base, ok: true, res: { t: "pub", tag, span: request.span } } };
    }
    const first = this.ledger.decide(tag, signed, request.span);
    return { type: FrameType.REPLY, body: { ...base, ok: true, res: { t: "pub", tag, span: request.span, first } } };
  }

  private onQuery(socket: Conn, query: Query): void {
    const delayMs = this.script.queryDelayMs ?? 0;
    if (delayMs > 0) setTimeout(() => this.answerQuery(socket, query), delayMs);
    else this.answerQuery(socket, query);
  }

  private answerQuery(socket: Conn, query: Query): void {
    const answer = this.script.onQuery !== undefined ? this.script.onQuery(this, query) : this.honestAnswer(socket, query);
    if (answer !== null && typeof answer === "object" && "refuse" in answer) {
      this.send(socket, {
        type: FrameType.QUERY_REPLY,
        body: { id: query.id, replica: this.id, ok: false, code: answer.refuse as ErrorCode, reason: answer.reason as string },
      });
      return;
    }
    this.send(socket, { type: FrameType.QUERY_REPLY, body: { id: query.id, replica: this.id, ok: true, res: answer } });
  }

  honestAnswer(socket: Conn, query: Query): Canonical | { refuse: ErrorCode; reason: string } {
    switch (query.q) {
      case "channel-info": {
        const channel = this.ledger.channels.get(query.tag);
        if (channel === undefined) return { refuse: "UNKNOWN_CHANNEL", reason: `no channel ${query.tag}` };
        return { tag: query.tag, ...channel, priority: "normal", public: true, next: this.ledger.nextSeq(query.tag) };
      }
      case "client-seq": {
        if (this.clientSeqOverride !== null && this.staleClientSeqAnswers !== 0) {
          if (this.staleClientSeqAnswers !== null) this.staleClientSeqAnswers--;
          return { last: this.clientSeqOverride };
        }
        const space = `${toHex(socket.data.client as Uint8Array)}/${query.tag ?? "#admin"}`;
        const seqs = [...(this.used.get(space)?.keys() ?? [])];
        return { last: seqs.length === 0 ? 0 : Math.max(...seqs) };
      }
      case "list-channels":
        return { channels: [...this.ledger.channels].map(([tag, c]) => ({ tag, ...c, priority: "normal", public: true })) };
      case "status":
        return { replica: this.id, view: 2, leader: 2, lastDecided: 40 + this.id, channels: this.ledger.channels.size, peers: [] };
      case "publishers":
        if (!this.ledger.channels.has(query.tag)) return { refuse: "UNKNOWN_CHANNEL", reason: `no channel ${query.tag}` };
        return { publishers: this.ledger.publishers.get(query.tag) ?? [clientKey.publicKey] };
      case "quotas":
        // This scripted replica keeps no quotas.
        return { quotas: [] };
      case "members":
        return { refuse: "BAD_REQUEST", reason: "this scripted replica does not answer members" };
    }
  }

  private onSubscribe(socket: Conn, subscribe: Subscribe): void {
    const channel = this.ledger.channels.get(subscribe.tag);
    if (channel === undefined) {
      this.send(socket, {
        type: FrameType.SUB_END,
        body: { sub: subscribe.sub, replica: this.id, code: "UNKNOWN_CHANNEL", reason: "no such channel" },
      });
      return;
    }
    const next = this.script.subOkNext ?? this.ledger.nextSeq(subscribe.tag);
    socket.data.subs.set(subscribe.sub, { tag: subscribe.tag, next: subscribe.from ?? next });
    this.send(socket, { type: FrameType.SUB_OK, body: { sub: subscribe.sub, replica: this.id, next } });
    for (const entry of this.ledger.logs.get(subscribe.tag) ?? []) {
      if (entry.first >= (subscribe.from ?? next)) this.sendEvents(socket, subscribe.sub, subscribe.tag, entry.first, entry.signed);
    }
  }

  /** A new batch for `tag`: to every subscription on it. */
  forward(tag: string, seq: number, signed: SignedRequest): void {
    for (const socket of this.sockets) {
      for (const [sub, entry] of socket.data.subs) {
        if (entry.tag === tag && seq >= entry.next) this.sendEvents(socket, sub, tag, seq, signed);
      }
    }
  }

  private sendEvents(socket: Conn, sub: number, tag: string, seq: number, signed: SignedRequest): void {
    const req = this.script.forgeEvents !== undefined ? this.script.forgeEvents(seq, signed) : signed;
    this.send(socket, { type: FrameType.EVENTS, body: { sub, tag, seq, req, replica: this.id } });
  }
}

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

const clientKey = SigningKey.generate();
const adminKey = SigningKey.generate();
const replicaKeys = Array.from({ length: 4 }, () => SigningKey.generate());
const started: { stop(): void }[] = [];
const clients: { close(): void }[] = [];

afterEach(() => {
  for (const client of clients.splice(0)) client.close();
  for (const replica of started.splice(0)) replica.stop();
});

function group(scripts: ReplicaScript[] = []): { ledger: SharedLedger; replicas: TestReplica[]; config: ClusterConfig } {
  const ledger = new SharedLedger();
  const replicas = replicaKeys.map((key, id) => new TestReplica(id, key, ledger, scripts[id] ?? {}));
  started.push(...replicas);
  return { ledger, replicas, config: configFor(replicas.map((replica) => replica.port)) };
}

function configFor(ports: readonly number[]): ClusterConfig {
  const replicas = ports
    .map(
      (port, id) =>
        `[[replicas]]\nid = ${id}\nhost = "127.0.0.1"\nport = ${port}\nkey = "${formatPublicKey((replicaKeys[id] as SigningKey).publicKey)}"\n`,
    )
    .join("\n");
  const text = `name = "wire-test"\nf = 1\nadmin_keys = ["${formatPublicKey(adminKey.publicKey)}"]\n\n${replicas}`;
  const parsed = parseClusterConfig(text, "/virtual/cluster.toml");
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.errors));
  return parsed.config;
}

const FAST = {
  timeouts: { connectMs: 2_000, sessionMs: 1_000, requestMs: 1_500, resendMs: 100, queryMs: 1_000, pingIntervalMs: 1_000, idleMs: 5_000 },
  backoff: { initialDelayMs: 10, maxDelayMs: 50, multiplier: 2, jitterRatio: 0 },
};

async function connect(config: ClusterConfig, key = clientKey, logs: string[] = []): Promise<FitbClient> {
  const client = await FitbClient.connect({ config, key, ...FAST, onLog: (entry) => logs.push(`${entry.level}: ${entry.message}`) });
  clients.push(client);
  return client;
}

/** A bare connection with recorded events, for the handshake tests. */
function connection(port: number, expectedKey: Uint8Array, id = 0) {
  const events = { ready: 0, down: [] as ClientError[], frames: [] as Frame[] };
  const handlers: ConnectionEvents = {
    onReady: () => events.ready++,
    onDown: (_c, error) => events.down.push(error),
    onFrame: (_c, frame) => events.frames.push(frame),
  };
  const options: ConnectionOptions = {
    frameBytesMax: 1024 * 1024,
    outboundBytesMax: 1024 * 1024,
    sessionTimeoutMs: 1_000,
    pingIntervalMs: 1_000,
    idleTimeoutMs: 5_000,
    backoff: { initialDelayMs: 10, maxDelayMs: 40, multiplier: 2, jitterRatio: 0 },
    random: () => 0,
    now: Date.now,
  };
  const conn = new ReplicaConnection({ id, host: "127.0.0.1", port, publicKey: expectedKey }, clientKey, handlers, options);
  clients.push(conn);
  conn.start();
  return { conn, events };
}

// ---------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------

describe("session handshake", () => {
  test("a replica with the listed key and id: session up, and the replica verifies our AUTH", async () => {
    const replica = new TestReplica(0, replicaKeys[0]!, new SharedLedger());
    started.push(replica);
    const { conn, events } = connection(replica.port, replicaKeys[0]!.publicKey);
    await waitFor("session", () => events.ready === 1 && replica.authenticated.length === 1);
    expect(conn.state).toBe("ready");
    expect(replica.authenticated[0]).toEqual(clientKey.publicKey);
    expect(events.down).toEqual([]);
  });

  test("a replica presenting another key is rejected before AUTH", async () => {
    const impostor = SigningKey.generate();
    const replica = new TestReplica(0, replicaKeys[0]!, new SharedLedger(), { presentKey: impostor });
    started.push(replica);
    const { events } = connection(replica.port, replicaKeys[0]!.publicKey);
    await waitFor("rejection", () => events.down.length >= 1);
    const error = events.down[0]!;
    expect(error).toBeInstanceOf(HandshakeError);
    expect(error.code).toBe("UNAUTHORIZED");
    expect(error.message).toContain(`presented key ${formatPublicKey(impostor.publicKey)}`);
    expect(error.message).toContain(`the cluster file lists ${formatPublicKey(replicaKeys[0]!.publicKey)}`);
    expect(events.ready).toBe(0);
    expect(replica.framesOfType(FrameType.AUTH)).toEqual([]);
  });

  test("a HELLO_ACK whose signature does not verify is rejected", async () => {
    const replica = new TestReplica(0, replicaKeys[0]!, new SharedLedger(), { badSignature: true });
    started.push(replica);
    const { events } = connection(replica.port, replicaKeys[0]!.publicKey);
    await waitFor("rejection", () => events.down.length >= 1);
    expect(events.down[0]!.code).toBe("BAD_SIGNATURE");
    expect(events.ready).toBe(0);
    expect(replica.framesOfType(FrameType.AUTH)).toEqual([]);
  });

  test("a replica answering as another id is rejected", async () => {
    const replica = new TestReplica(0, replicaKeys[0]!, new SharedLedger(), { claimId: 3 });
    started.push(replica);
    const { events } = connection(replica.port, replicaKeys[0]!.publicKey);
    await waitFor("rejection", () => events.down.length >= 1);
    expect(events.down[0]!.message).toContain("answered as replica 3, expected replica 0");
  });

  test("a replica that refuses us: its code and reason reach the caller", async () => {
    const replica = new TestReplica(0, replicaKeys[0]!, new SharedLedger(), { refuseHello: true });
    started.push(replica);
    const { events } = connection(replica.port, replicaKeys[0]!.publicKey);
    await waitFor("refusal", () => events.down.length >= 1);
    expect(events.down[0]).toBeInstanceOf(HandshakeError);
    expect(events.down[0]!.message).toContain("UNAUTHORIZED this key may not connect");
  });

  test("PING from the replica is answered with PONG carrying the same n", async () => {
    const replica = new TestReplica(0, replicaKeys[0]!, new SharedLedger());
    started.push(replica);
    const { events } = connection(replica.port, replicaKeys[0]!.publicKey);
    // Until the replica has taken AUTH it has no session keys to seal the PING with.
    await waitFor("session", () => events.ready === 1 && replica.authenticated.length === 1);
    replica.send([...replica.sockets][0]!, { type: FrameType.PING, body: { n: 77 } });
    await waitFor("PONG", () => replica.framesOfType(FrameType.PONG).length === 1);
    expect(replica.framesOfType(FrameType.PONG)[0]!.body).toEqual({ n: 77 });
  });

  test("an unreachable replica is a typed error, retried on the backoff schedule", async () => {
    // A port nothing listens on, below the range outgoing connections take theirs from.
    const port = freePortRange(1);
    const { events } = connection(port, replicaKeys[0]!.publicKey);
    await waitFor("three failed attempts", () => events.down.length >= 3);
    expect(events.down[0]).toBeInstanceOf(ReplicaUnreachableError);
    expect(events.down[0]!.message).toBe(`replica 0 (127.0.0.1:${port}) unreachable: connection refused`);
  });

  test("a dropped session reconnects and comes back up", async () => {
    const replica = new TestReplica(0, replicaKeys[0]!, new SharedLedger());
    started.push(replica);
    const { conn, events } = connection(replica.port, replicaKeys[0]!.publicKey);
    await waitFor("first session", () => events.ready === 1 && replica.authenticated.length === 1);
    replica.dropConnections();
    await waitFor("second session", () => events.ready === 2 && replica.authenticated.length === 2);
    expect(events.down.length).toBe(1);
    expect(events.down[0]!.message).toContain("connection lost");
    expect(conn.isReady).toBe(true);
  });

  test("a frame whose MAC fails (one byte altered in transit) is not looked at: the session drops, reports it, and comes back", async () => {
    const replica = new TestReplica(0, replicaKeys[0]!, new SharedLedger());
    started.push(replica);
    const { events } = connection(replica.port, replicaKeys[0]!.publicKey);
    await waitFor("session", () => events.ready === 1 && replica.authenticated.length === 1);
    const socket = [...replica.sockets][0]!;
    const sealed = encodeSessionFrame({ type: FrameType.ERROR, body: { code: "INTERNAL", reason: "made up" } }, socket.data.framing);
    sealed[sealed.length - 33] = (sealed[sealed.length - 33] as number) ^ 0x20;
    socket.write(sealed);
    await waitFor("drop", () => events.down.length === 1);
    expect(events.down[0]).toBeInstanceOf(ReplicaUnreachableError);
    expect(events.down[0]!.message).toContain("frame 1 (type 0x4) failed its MAC check: altered, replayed or reordered in transit");
    expect(events.frames).toEqual([]);
    await waitFor("a fresh session", () => events.ready === 2 && replica.authenticated.length === 2);
  });

  test("a byte stream that cannot be framed drops the session", async () => {
    const replica = new TestReplica(0, replicaKeys[0]!, new SharedLedger());
    started.push(replica);
    const { events } = connection(replica.port, replicaKeys[0]!.publicKey);
    await waitFor("session", () => events.ready === 1 && replica.sockets.size === 1);
    [...replica.sockets][0]!.write(new Uint8Array([0xff, 0xff, 0xff, 0xff, 0x01]));
    await waitFor("drop", () => events.down.length === 1);
    expect(events.down[0]!.message).toContain("unusable byte stream");
  });
});

// ---------------------------------------------------------------------------------------
// Publishing and voting
// ---------------------------------------------------------------------------------------

const utf8 = (text: string) => new TextEncoder().encode(text);

describe("publish", () => {
  test("byzantine/total: acknowledged by f+1 matching replies although one replica lies about the seq", async () => {
    const liar: ReplicaScript = {
      onRequest: (replica, request, signed) => {
        const honest = replica.honestReply(request, signed);
        if (honest.type !== FrameType.REPLY || !honest.body.ok || honest.body.res.t !== "pub") return honest;
        return { type: FrameType.REPLY, body: { ...honest.body, res: { ...honest.body.res, first: 999 } } };
      },
    };
    const { ledger, config } = group([liar]);
    ledger.channels.set("sec.alerts", { fault: "byzantine", order: "total" });
    const logs: string[] = [];
    const client = await connect(config, clientKey, logs);
    const first = await client.publish("sec.alerts", [utf8("a"), utf8("b")]);
    const second = await client.publish("sec.alerts", [utf8("c")]);
    expect(first).toMatchObject({ tag: "sec.alerts", span: 2, pubSeq: 1, channelSeq: 1, firstSeq: 1 });
    expect(second).toMatchObject({ pubSeq: 3, channelSeq: 3, firstSeq: 3 });
    expect(first.replicas).not.toContain(0);
  });

  test("sequence numbers continue after the (f+1)-th highest client-seq answer, whatever one liar says", async () => {
    const { ledger, replicas, config } = group([
      { onQuery: (r, q) => (q.q === "client-seq" ? { last: 1_000_000 } : r.honestAnswer([...r.sockets][0]!, q)) },
    ]);
    ledger.channels.set("sec.ids", { fault: "byzantine", order: "none" });
    for (const replica of replicas.slice(1)) replica.clientSeqOverride = 7;
    const client = await connect(config);
    const ack = await client.publish("sec.ids", [utf8("x")]);
    expect(ack.pubSeq).toBe(8);
    expect(ack.channelSeq).toBeNull();
    expect(ack.firstSeq).toBe(8);
  });

  test("a crash/none space continues after the highest client-seq answer: one of the f+1 replicas that stored its publishes is enough", async () => {
    // Its publishes went to replicas 0 and 1 (f+1); replica 0 is down, 2 and 3 never saw them.
    const { ledger, replicas, config } = group();
    ledger.channels.set("net.links", { fault: "crash", order: "none" });
    replicas[0]!.stop();
    replicas[1]!.clientSeqOverride = 7;
    for (const replica of replicas.slice(2)) replica.clientSeqOverride = 0;
    const client = await connect(config);
    const ack = await client.publish("net.links", [utf8("x")]);
    expect(ack.pubSeq).toBe(8);
    expect(ack.channelSeq).toBeNull();
  });

  test("REPLAY: the client learns the seq again and re-numbers", async () => {
    const { ledger, replicas, config } = group();
    ledger.channels.set("net.links", { fault: "byzantine", order: "none" });
    // Another process with the same key already used seqs 1..3, and each replica's first
    // client-seq answer is stale (0); later answers are the truth.
    for (const replica of replicas) {
      replica.used.set(
        `${toHex(clientKey.publicKey)}/net.links`,
        new Map([
          [1, "other"],
          [2, "other"],
          [3, "other"],
        ]),
      );
      replica.staleClientSeqAnswers = 1;
      replica.clientSeqOverride = 0;
    }
    const client = await connect(config);
    const ack = await client.publish("net.links", [utf8("mine")]);
    expect(ack.pubSeq).toBe(4);
    const seqsTried = replicas[0]!
      .framesOfType(FrameType.REQUEST)
      .map((f) => (decodeRequestBody((f.body as SignedRequest).body) as { ok: true; request: Request }).request.seq);
    expect(seqsTried).toEqual([1, 4]);
  });

  test("one replica's REPLAY is not believed: no re-publish under new numbers, a clear TIMEOUT instead", async () => {
    // Replicas 0 and 1 store the event; replica 2 has not heard of the channel yet; replica
    // 3 lies REPLAY. byzantine/none needs 2f+1 stored, so no answer has its quorum, and a
    // refusal from one replica may be a lie: re-numbering would store the event twice.
    const lying: ReplicaScript = {
      onRequest: (replica, request, signed) => ({
        type: FrameType.REPLY,
        body: { seq: request.seq, replica: replica.id, d: sha256(signed.body), ok: false, code: "REPLAY", reason: "lie" },
      }),
    };
    const unaware: ReplicaScript = {
      onRequest: (replica, request, signed) => ({
        type: FrameType.REPLY,
        body: { seq: request.seq, replica: replica.id, d: sha256(signed.body), ok: false, code: "UNKNOWN_CHANNEL", reason: "not yet" },
      }),
    };
    const { ledger, replicas, config } = group([{}, {}, unaware, lying]);
    ledger.channels.set("net.links", { fault: "byzantine", order: "none" });
    const client = await connect(config);
    const error = await client.publish("net.links", [utf8("once")]).then(
      () => null,
      (e: Error & { code?: string }) => e,
    );
    expect(error?.code).toBe("TIMEOUT");
    expect(error?.message).toMatch(/answered differently \(.*REPLAY from 1/);
    const seqsTried = new Set(
      replicas[0]!
        .framesOfType(FrameType.REQUEST)
        .map((f) => (decodeRequestBody((f.body as SignedRequest).body) as { ok: true; request: Request }).request.seq),
    );
    expect([...seqsTried]).toEqual([1]);
  });

  test("REPLAY from f+1 replicas is believed: the client re-numbers", async () => {
    const { ledger, replicas, config } = group();
    ledger.channels.set("net.links", { fault: "byzantine", order: "none" });
    // Two replicas (f+1) saw seq 1 used by another process; the other two did not. Every
    // replica's first client-seq answer is 0, so the client tries seq 1 first.
    for (const replica of replicas.slice(0, 2)) replica.used.set(`${toHex(clientKey.publicKey)}/net.links`, new Map([[1, "other"]]));
    for (const replica of replicas) {
      replica.staleClientSeqAnswers = 1;
      replica.clientSeqOverride = 0;
    }
    const client = await connect(config);
    const ack = await client.publish("net.links", [utf8("mine")]);
    expect(ack.pubSeq).toBe(2);
    const seqsTried = replicas[0]!
      .framesOfType(FrameType.REQUEST)
      .map((f) => (decodeRequestBody((f.body as SignedRequest).body) as { ok: true; request: Request }).request.seq);
    expect(seqsTried).toEqual([1, 2]);
  });

  test("unordered space: the last seq is ranked over every replica, so a lagging replica and a liar cannot pull it below a used number", async () => {
    // Replica 0 and 1 hold seqs up to 10; replica 2 was away and holds 5; replica 3 lies 0.
    // Replica 1 answers last: ranked over the first 2f+1 answers the pick would be 5, and
    // the client would sign a second body under seq 6.
    const { ledger, replicas, config } = group([{}, { queryDelayMs: 300 }, {}, {}]);
    ledger.channels.set("net.links", { fault: "byzantine", order: "none" });
    const lasts = [10, 10, 5, 0];
    replicas.forEach((replica, id) => {
      replica.clientSeqOverride = lasts[id] as number;
    });
    const client = await connect(config);
    const ack = await client.publish("net.links", [utf8("next")]);
    expect(ack.pubSeq).toBe(11);
  });

  test("a silent replica gets the same signed bytes again, and its late answer completes a 2f+1 quorum", async () => {
    const dropFirst: ReplicaScript = {
      onRequest: (replica, request, signed, copy) => (copy === 1 ? null : replica.honestReply(request, signed)),
    };
    const silent: ReplicaScript = { onRequest: () => null };
    const { ledger, replicas, config } = group([{}, {}, dropFirst, silent]);
    ledger.channels.set("net.bulk", { fault: "byzantine", order: "none" });
    const client = await connect(config);
    const ack = await client.publish("net.bulk", [utf8("e")]);
    expect([...ack.replicas].sort()).toEqual([0, 1, 2]);
    const copies = replicas[2]!.framesOfType(FrameType.REQUEST);
    expect(copies.length).toBeGreaterThanOrEqual(2);
    expect(copies[1]!.body).toEqual(copies[0]!.body);
  });

  test("with only f+1 replicas up, neither the connect nor the seq query waits out its timeout", async () => {
    // Timeouts far beyond the test's own bound: reaching the end at all shows that the
    // client went on once the replicas that are up had answered (crash/none needs f+1).
    const { ledger, replicas, config } = group();
    ledger.channels.set("net.links", { fault: "crash", order: "none" });
    replicas[2]!.stop();
    replicas[3]!.stop();
    const slow = { ...FAST.timeouts, connectMs: 120_000, queryMs: 120_000, requestMs: 120_000 };
    const client = await FitbClient.connect({ config, key: clientKey, timeouts: slow, backoff: FAST.backoff });
    clients.push(client);
    const ack = await client.publish("net.links", [utf8("with two replicas down")]);
    expect(ack.pubSeq).toBe(1);
  }, 20_000);

  test("a replica that is down is reported once, not on every retry, and the rest carry on", async () => {
    const { ledger, replicas, config } = group();
    ledger.channels.set("net.links", { fault: "crash", order: "none" });
    replicas[3]!.stop();
    const logs: string[] = [];
    const client = await connect(config, clientKey, logs);
    await client.publish("net.links", [utf8("e")]);
    await waitFor("the report about replica 3", () => logs.some((line) => line.includes("replica 3")));
    // Retries go on meanwhile; none of them may report it again. The connection's own count
    // of failed attempts is the signal that several retries have run.
    const toReplica3 = client["group"].connection(3) as ReplicaConnection;
    await waitFor("three more failed attempts to reach replica 3", () => toReplica3.consecutiveFailures >= 4);
    const aboutReplica3 = logs.filter((line) => line.includes("replica 3"));
    expect(aboutReplica3).toEqual([`warn: replica 3 (127.0.0.1:${replicas[3]!.port}) unreachable: connection refused`]);
  });

  test("no quorum: a clear TIMEOUT naming each missing replica", async () => {
    const silent: ReplicaScript = { onRequest: () => null };
    const { ledger, config } = group([{}, silent, silent, {}]);
    ledger.channels.set("net.bulk", { fault: "byzantine", order: "none" });
    const client = await connect(config);
    const error = (await client.publish("net.bulk", [utf8("e")]).catch((e: unknown) => e)) as NoQuorumError;
    expect(error).toBeInstanceOf(NoQuorumError);
    expect(error.code).toBe("TIMEOUT");
    expect(error.message).toMatch(
      /^no quorum for publish to net\.bulk \(seq 1\): 3 matching answers needed within 1500 ms, 2 of 4 replicas gave a final answer/,
    );
    expect(error.message).toContain("replica 1 (127.0.0.1:");
    expect(error.message).toContain("): no answer");
  });

  test("a quorum of refusals rejects with the replicas' code; an unknown channel is refused before publishing", async () => {
    const { ledger, config } = group();
    ledger.channels.set("net.links", { fault: "crash", order: "none" });
    const client = await connect(config);
    const unknown = (await client.publish("no.such", [utf8("e")]).catch((e: unknown) => e)) as RequestRejectedError;
    expect(unknown).toBeInstanceOf(RequestRejectedError);
    expect(unknown.code).toBe("UNKNOWN_CHANNEL");
    ledger.channels.delete("net.links");
    const gone = (await client.publish("net.links", [utf8("e")]).catch((e: unknown) => e)) as RequestRejectedError;
    expect(gone.code).toBe("UNKNOWN_CHANNEL");
  });

  test("admin commands use their own seq space and f+1 matching replies", async () => {
    const { replicas, config } = group([{}, {}, {}, { onRequest: () => null }]);
    const client = await connect(config, adminKey);
    const ack = await client.admin({
      t: "create-channel",
      tag: "sec.alerts",
      fault: "byzantine",
      order: "total",
      priority: "critical",
      public: false,
    });
    expect(ack).toMatchObject({ cmd: "create-channel", tag: "sec.alerts" });
    const queries = replicas[0]!.framesOfType(FrameType.QUERY).map((f) => f.body as Query);
    expect(queries.some((q) => q.q === "client-seq" && q.tag === undefined)).toBe(true);
  });
});

// ---------------------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------------------

describe("queries", () => {
  test("list-channels takes f+1 matching answers; one lying replica is outvoted", async () => {
    const liar: ReplicaScript = { onQuery: (r, q) => (q.q === "list-channels" ? { channels: [] } : r.honestAnswer([...r.sockets][0]!, q)) };
    const { ledger, config } = group([liar]);
    ledger.channels.set("net.links", { fault: "crash", order: "none" });
    const client = await connect(config);
    // This scripted replica lists only the CLASS: the key counts and figures stay unknown (null).
    expect(await client.listChannels()).toEqual([
      {
        tag: "net.links",
        fault: "crash",
        order: "none",
        priority: "normal",
        public: true,
        publishers: null,
        subscribers: null,
        retention: null,
        lastSeq: null,
        retainedEvents: null,
        retainedBytes: null,
        reportedEventsMax: null,
        reportedBytesMax: null,
      },
    ]);
  });

  test("status shows every replica and the view and leader f+1 agree on", async () => {
    const { replicas, config } = group();
    const client = await connect(config);
    replicas[3]!.stop();
    await waitFor("replica 3 down", () => client.readyReplicas().length === 3);
    const status = await client.status();
    expect(status).toMatchObject({ view: 2, leader: 2, agreed: true, lastDecided: 41 });
    expect(status.replicas.map((r) => r.answer?.ok ?? null)).toEqual([true, true, true, null]);
  });
});

// ---------------------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------------------

describe("subscribe", () => {
  const forged = (seq: number, signed: SignedRequest): SignedRequest => {
    const decoded = decodeRequestBody(signed.body);
    if (!decoded.ok || decoded.request.op.t !== "pub") return signed;
    // A well-formed body signed by someone else: the signature check must catch it.
    const mallory = SigningKey.fromSeed(new Uint8Array(32).fill(seq));
    const body = signed.body.slice();
    return { body, sig: signDomain(mallory, DOMAIN_REQUEST, body) };
  };

  test("byzantine/total: in order, only what f+1 replicas agree on; a forging replica is outvoted and reported", async () => {
    const { ledger, config } = group([{ forgeEvents: forged }]);
    ledger.channels.set("sec.alerts", { fault: "byzantine", order: "total" });
    const publisher = await connect(config);
    await publisher.publish("sec.alerts", [utf8("old")]);
    const subscriber = await connect(config);
    const got: string[] = [];
    const signals: SubscriptionSignal[] = [];
    // Every replica serves (no narrowing to f+1, src/client/narrowing.ts): replica 0's forged copies must be read.
    const sub = await subscriber.subscribe(
      "sec.alerts",
      { from: 1, sources: "all", onSignal: (s) => signals.push(s) },
      (batch: ReceivedBatch) => {
        batch.events.forEach((event, i) => got.push(`${batch.seq! + i}:${new TextDecoder().decode(event)}`));
      },
    );
    await publisher.publish("sec.alerts", [utf8("a"), utf8("b")]);
    await publisher.publish("sec.alerts", [utf8("c")]);
    await waitFor("four events", () => got.length === 4);
    expect(got).toEqual(["1:old", "2:a", "3:b", "4:c"]);
    expect(sub.nextSeq).toBe(5);
    expect(signals.some((s) => s.t === "invalid" && s.replica === 0)).toBe(true);
  });

  test("resume after a replica drops the connection: SUBSCRIBE from the next undelivered seq, no gap, no duplicate", async () => {
    const { ledger, replicas, config } = group();
    ledger.channels.set("ops.log", { fault: "crash", order: "total" });
    const publisher = await connect(config);
    const subscriber = await connect(config);
    const got: number[] = [];
    // Every replica serves (no narrowing to f+1), so that each one is seen asked again.
    await subscriber.subscribe("ops.log", { sources: "all" }, (batch) => batch.events.forEach((_, i) => got.push(batch.seq! + i)));
    await publisher.publish("ops.log", [utf8("1"), utf8("2")]);
    await waitFor("first two", () => got.length === 2);
    for (const replica of replicas) replica.dropConnections();
    await waitFor(
      "resubscribed",
      () => subscriber.readyReplicas().length === 4 && replicas.every((r) => r.framesOfType(FrameType.SUBSCRIBE).length >= 2),
    );
    const resumed = replicas.map((r) => (r.framesOfType(FrameType.SUBSCRIBE).at(-1)!.body as Subscribe).from);
    expect(resumed).toEqual([3, 3, 3, 3]);
    await waitFor("publisher back", () => publisher.readyReplicas().length === 4);
    await publisher.publish("ops.log", [utf8("3")]);
    await waitFor("third", () => got.length === 3);
    expect(got).toEqual([1, 2, 3]);
  });

  test("unordered: the first valid copy of each batch, once", async () => {
    const { ledger, config } = group([{ forgeEvents: forged }]);
    ledger.channels.set("net.links", { fault: "byzantine", order: "none" });
    const subscriber = await connect(config);
    const got: string[] = [];
    await subscriber.subscribe("net.links", {}, (batch) => {
      expect(batch.seq).toBeNull();
      expect(batch.publisher).toEqual(clientKey.publicKey);
      got.push(...batch.events.map((e) => new TextDecoder().decode(e)));
    });
    const publisher = await connect(config);
    await publisher.publish("net.links", [utf8("up")]);
    await publisher.publish("net.links", [utf8("down")]);
    await waitFor("two events", () => got.length === 2);
    // Delivered after the two: nothing else came in between or before.
    await publisher.publish("net.links", [utf8("end")]);
    await waitFor("the end marker", () => got.includes("end"));
    expect(got).toEqual(["up", "down", "end"]);
  });

  test("a live start is the (f+1)-th highest SUB_OK next: a replica claiming to be far ahead cannot skip events", async () => {
    const { ledger, replicas, config } = group([{ subOkNext: 1_000 }]);
    ledger.channels.set("sec.alerts", { fault: "byzantine", order: "total" });
    const publisher = await connect(config);
    await publisher.publish("sec.alerts", [utf8("history")]);
    const subscriber = await connect(config);
    const got: number[] = [];
    // Every replica serves (no narrowing to f+1), the liar included.
    await subscriber.subscribe("sec.alerts", { sources: "all" }, (batch) => batch.events.forEach((_, i) => got.push(batch.seq! + i)));
    // The replica that claimed 1000 is asked again from the chosen start.
    const toLiar = () => replicas[0]!.framesOfType(FrameType.SUBSCRIBE).map((f) => (f.body as Subscribe).from);
    await waitFor("the second SUBSCRIBE", () => toLiar().length === 2);
    expect(toLiar()).toEqual([undefined, 2]);
    await publisher.publish("sec.alerts", [utf8("live")]);
    await waitFor("the live event", () => got.length === 1);
    expect(got).toEqual([2]);
  });

  test("SUB_END SLOW from a replica: subscribed there again from the next undelivered seq", async () => {
    const { ledger, replicas, config } = group();
    ledger.channels.set("ops.log", { fault: "crash", order: "total" });
    const publisher = await connect(config);
    const subscriber = await connect(config);
    const got: number[] = [];
    const signals: SubscriptionSignal[] = [];
    // Every replica serves (no narrowing to f+1): replica 1 must hold the subscription.
    await subscriber.subscribe("ops.log", { sources: "all", onSignal: (s) => signals.push(s) }, (batch) =>
      batch.events.forEach((_, i) => got.push(batch.seq! + i)),
    );
    await publisher.publish("ops.log", [utf8("1"), utf8("2"), utf8("3")]);
    await waitFor("three events", () => got.length === 3);
    const replica = replicas[1]!;
    const socket = [...replica.sockets].find((s) => s.data.subs.size > 0)!;
    const [subId] = [...socket.data.subs.keys()];
    socket.data.subs.clear();
    replica.send(socket, { type: FrameType.SUB_END, body: { sub: subId!, replica: 1, code: "SLOW", reason: "fell behind" } });
    await waitFor("resubscribe", () => replica.framesOfType(FrameType.SUBSCRIBE).length === 2);
    expect((replica.framesOfType(FrameType.SUBSCRIBE)[1]!.body as Subscribe).from).toBe(4);
    expect(signals).toContainEqual({ t: "slow", source: "replica", replica: 1, resumeFrom: 4, reason: "fell behind" });
  });

  test("a slow handler on a total-order channel: bounded queue, pause, resume, nothing lost or repeated", async () => {
    const { ledger, config } = group();
    ledger.channels.set("ops.log", { fault: "crash", order: "total" });
    const publisher = await connect(config);
    const subscriber = await connect(config);
    const got: number[] = [];
    const signals: SubscriptionSignal[] = [];
    let release: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const sub = await subscriber.subscribe("ops.log", { queueEventsMax: 2, onSignal: (s) => signals.push(s) }, async (batch) => {
      await gate;
      batch.events.forEach((_, i) => got.push(batch.seq! + i));
    });
    for (let i = 1; i <= 6; i++) await publisher.publish("ops.log", [utf8(String(i))]);
    await waitFor("the pause", () => signals.some((s) => s.t === "slow"));
    expect(sub.stats().queuedEvents).toBeLessThanOrEqual(2);
    release();
    await waitFor("all six after the resume", () => got.length === 6);
    expect(got).toEqual([1, 2, 3, 4, 5, 6]);
    expect(signals.filter((s) => s.t === "slow")[0]).toMatchObject({ source: "local" });
  });

  test("an unknown channel is refused by f+1 before subscribing", async () => {
    const { config } = group();
    const subscriber = await connect(config);
    const error = (await subscriber.subscribe("no.such", {}, () => undefined).catch((e: unknown) => e)) as ClientError;
    expect(error.code).toBe("UNKNOWN_CHANNEL");
  });
});
