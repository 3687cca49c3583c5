/**
 * One client connection to one replica: TCP through Bun.connect, the session handshake
 * (handshake.ts), framing with FrameDecoder, a MAC on every frame after the handshake in
 * both directions (wire/PROTOCOL.md 5.2), a bounded send queue (src/net/write-queue.ts),
 * a keepalive, and reconnection with capped exponential backoff and jitter (backoff.ts).
 *
 * A frame from the replica whose MAC does not verify for the next frame counter (altered,
 * replayed, reordered or removed in transit) is never looked at: the connection is
 * dropped, reported, and dialled again with a fresh handshake. A payload is decoded up to
 * the values the largest valid frame of its type holds (replica-frames.ts): one past it is
 * dropped and counted like any frame that does not decode, and the session goes on.
 *
 * The connection knows nothing about requests or subscriptions. It reports three things
 * to its owner: the session is ready (after every successful handshake, so the owner can
 * re-send what this replica has not answered), a validated frame arrived, and the
 * connection went down (with a typed error saying why). Frames are attributed to the
 * replica this connection dialled and authenticated, never to an id a frame claims.
 *
 * A multi-homed replica (`hosts` in the cluster file) is dialled at its preferred address
 * first and at the next one when an attempt fails or the session goes silent; on such a
 * replica the keepalive is tighter (a PING after a third of `failover.silenceMs` without
 * receiving, the session given up after `silenceMs`). While on another address the
 * preferred one is probed in the background (TCP connect, HELLO, and a HELLO_ACK signed by
 * the replica's key; no session is opened), every `preferredRetryMsMin`, doubling to
 * `preferredRetryMsMax` while it fails; once a probe passes, the session moves back to the
 * preferred address (reported down, then ready again, like any reconnect).
 *
 * A session counts as a success for the backoff only once it has stayed up
 * SESSION_STABLE_MS: a replica that completes the handshake and drops the session at once
 * (a faulty one, or one crashing on start) is dialled ever later, as if it had refused,
 * not every 50-100 ms for ever, each time sent again every request it has not answered and
 * every subscription.
 */
import type { Socket } from "bun";
import { FrameDecoder } from "../../wire/frame.ts";
import { decodeFrameBody, encodeTypedFrame, encodeTypedFrameWithTrailer, type Frame } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";
import { formatAddress } from "../config/cluster.ts";
import type { SigningKey } from "../crypto/keys.ts";
import { CLIENT_FRAME_MAC_BYTES, type PrefixDigests, type SessionFraming, sessionFraming } from "../crypto/session.ts";
import { WriteQueue } from "../net/write-queue.ts";
import { backoffDelayMs, checkBackoffPolicy, type BackoffPolicy } from "./backoff.ts";
import { type ClientError, HandshakeError, ReplicaUnreachableError } from "./errors.ts";
import { checkHelloAck, type ClientHandshake, clientHello, type ExpectedReplica } from "./handshake.ts";
import { decodeReplicaFrame } from "./replica-frames.ts";

/** A replica as the client dials it: the cluster file's entry. */
export interface ReplicaEndpoint extends ExpectedReplica {
  /** The preferred address. */
  readonly host: string;
  /** Further addresses of a multi-homed replica (same port), tried in order after `host`. */
  readonly hosts?: readonly string[];
  readonly port: number;
}

/** Liveness and failover timing for multi-homed replicas. */
export interface FailoverTiming {
  /** A session to a multi-homed replica that receives nothing for this long moves to the next address. */
  readonly silenceMs: number;
  /** While on another address, the preferred one is probed after this long, doubling to the max while it fails. */
  readonly preferredRetryMsMin: number;
  readonly preferredRetryMsMax: number;
}

export const DEFAULT_FAILOVER: FailoverTiming = { silenceMs: 3_000, preferredRetryMsMin: 2_000, preferredRetryMsMax: 30_000 };

export interface ConnectionOptions {
  /** Largest frame accepted from the replica and sent to it (the cluster's frame_bytes_max). */
  readonly frameBytesMax: number;
  /** Bytes that may wait in the send queue before `send` refuses more. */
  readonly outboundBytesMax: number;
  /** TCP connect plus handshake must finish within this, or the attempt counts as failed. */
  readonly sessionTimeoutMs: number;
  /** A PING goes out after this long without sending anything... */
  readonly pingIntervalMs: number;
  /** ...and the connection is dropped after this long without receiving anything. */
  readonly idleTimeoutMs: number;
  readonly backoff: BackoffPolicy;
  /** Source of jitter, in [0, 1). */
  readonly random: () => number;
  /** Clock for keepalive bookkeeping. */
  readonly now: () => number;
  /** For multi-homed replicas; DEFAULT_FAILOVER when absent. */
  readonly failover?: FailoverTiming;
  /** Shared by the connections of one group: what they receive alike is hashed once for its MACs (PrefixDigests). */
  readonly payloadDigests?: PrefixDigests;
}

export type ConnectionState =
  | "idle" // created, not started
  | "connecting" // TCP connect in progress
  | "handshaking" // HELLO sent, waiting for HELLO_ACK
  | "ready" // AUTH sent: requests may flow
  | "waiting" // down; a reconnect is scheduled
  | "closed"; // closed by the owner; never reconnects

export interface ConnectionEvents {
  /** The session is up (again). */
  onReady(connection: ReplicaConnection): void;
  /** A validated frame other than the session's own (HELLO_ACK, PING, PONG). */
  onFrame(connection: ReplicaConnection, frame: Frame): void;
  /** The connection (or an attempt) failed; a reconnect follows unless closed. */
  onDown(connection: ReplicaConnection, error: ClientError): void;
  /** A frame that failed validation was dropped (for counting; the stream goes on). */
  onBadFrame?(connection: ReplicaConnection, reason: string): void;
}

/**
 * How long a session must stay up before the backoff starts again from its first delay
 * (and a multi-homed replica's addresses count as untried again). Ten seconds is longer
 * than a replica takes to refuse what a client sends at the start (a few round trips),
 * and short against the cap of the default backoff (5 s): a session that ends sooner is
 * counted as a failed attempt. The end of the handshake proves nothing, nor does a frame
 * received after it: a faulty replica can send a PING, a PONG or an answer and drop the
 * session just as well; only time costs it something.
 */
export const SESSION_STABLE_MS = 10_000;

/** Checked while ready; also the granularity of the keepalive. */
const KEEPALIVE_CHECK_DIVISOR = 2;

type TcpSocket = Socket<undefined>;

export class ReplicaConnection {
  readonly id: number;
  readonly endpoint: ReplicaEndpoint;
  /** The replica's addresses, the preferred first, and the one dialled or in use. */
  private readonly hosts: readonly string[];
  private hostIndex = 0;
  /** Addresses that failed since the last session: when all have, the backoff applies. */
  private failedHosts = 0;
  private readonly failover: FailoverTiming;
  private preferredRetryMs: number;
  private preferredTimer: ReturnType<typeof setTimeout> | null = null;
  private probe: { socket: TcpSocket | null; timer: ReturnType<typeof setTimeout> } | null = null;
  private readonly key: SigningKey;
  private readonly events: ConnectionEvents;
  private readonly options: ConnectionOptions;
  private readonly outbound: WriteQueue;
  private currentState: ConnectionState = "idle";
  private socket: TcpSocket | null = null;
  private decoder: FrameDecoder | null = null;
  private handshake: ClientHandshake | null = null;
  /** The session's MAC state once the handshake is done; null before (and between sessions). */
  private framing: SessionFraming | null = null;
  /** Increments per dial; callbacks of an older socket see a different value and do nothing. */
  private attemptId = 0;
  private failures = 0;
  /** When the session now up became ready (options.now), or null while none is. */
  private readyAt: number | null = null;
  private sessionTimer: ReturnType<typeof setTimeout> | null = null;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private keepaliveTimer: ReturnType<typeof setInterval> | null = null;
  private lastReceivedAt = 0;
  private lastSentAt = 0;
  private pingCounter = 0;
  /** The last ERROR the replica sent: the best explanation when it then closes. */
  private lastReplicaError: string | null = null;
  private lastDownError: ClientError | null = null;
  private framesDropped = 0;

  constructor(endpoint: ReplicaEndpoint, key: SigningKey, events: ConnectionEvents, options: ConnectionOptions) {
    checkBackoffPolicy(options.backoff);
    if (options.idleTimeoutMs <= options.pingIntervalMs) {
      throw new RangeError("idleTimeoutMs must exceed pingIntervalMs, or a quiet but healthy replica would be dropped");
    }
    this.endpoint = endpoint;
    this.id = endpoint.id;
    this.hosts = [endpoint.host, ...(endpoint.hosts ?? [])];
    this.failover = options.failover ?? DEFAULT_FAILOVER;
    if (this.hosts.length > 1 && this.failover.silenceMs < 3) throw new RangeError("failover.silenceMs must be at least 3 ms");
    this.preferredRetryMs = this.failover.preferredRetryMsMin;
    this.key = key;
    this.events = events;
    this.options = options;
    this.outbound = new WriteQueue(options.outboundBytesMax);
  }

  get state(): ConnectionState {
    return this.currentState;
  }

  /** The address dialled or in use now (`host:port`). */
  get address(): string {
    return formatAddress(this.hosts[this.hostIndex] as string, this.endpoint.port);
  }

  /** Whether an address failed since the last session and another one is being tried before the backoff. */
  get tryingNextAddress(): boolean {
    return this.failedHosts > 0;
  }

  /** Whether the replica lists more than one address. */
  get multiHomed(): boolean {
    return this.hosts.length > 1;
  }

  get isReady(): boolean {
    return this.currentState === "ready";
  }

  /** Why the connection last went down, or null if it never did. */
  get lastError(): ClientError | null {
    return this.lastDownError;
  }

  /** Failed attempts, sessions that ended within SESSION_STABLE_MS included, since the last session that stayed up longer (drives the backoff). */
  get consecutiveFailures(): number {
    return this.failures;
  }

  /** Frames from this replica that failed validation and were dropped. */
  get droppedFrames(): number {
    return this.framesDropped;
  }

  get bufferedBytes(): number {
    return this.outbound.bufferedBytes;
  }

  /** Starts dialling; from now on the connection keeps itself up until `close`. */
  start(): void {
    if (this.currentState !== "idle") return;
    this.dial();
  }

  /** Whether a frame of `bytes` would be accepted by `sendEncoded` now. */
  hasRoomFor(bytes: number): boolean {
    return this.isReady && this.outbound.hasRoomFor(bytes);
  }

  /** Encodes and sends a frame; false if the session is not ready or the send queue is full. */
  send(frame: Frame): boolean {
    if (!this.isReady) return false;
    return this.sendSealed(encodeTypedFrameWithTrailer(frame, CLIENT_FRAME_MAC_BYTES, this.options.frameBytesMax), true);
  }

  /**
   * Sends an already encoded frame (a query fanned out to every replica is encoded once,
   * and each connection seals its own copy). False if not ready or the queue is full:
   * the caller re-sends later.
   */
  sendEncoded(bytes: Uint8Array): boolean {
    if (!this.isReady) return false;
    return this.sendSealed(bytes, false);
  }

  /**
   * Sends a frame every replica's connection shares (a request): `bytes` has room for its
   * MAC (withMacRoom), `digest` is its framePayloadDigest, both made once for all
   * connections. Each connection writes its MAC into the same bytes and hands them to its
   * socket, which takes them at once or keeps a copy (a borrowed write), so a request is
   * neither copied nor hashed per replica. False if not ready or the queue is full.
   */
  sendShared(bytes: Uint8Array, digest: Uint8Array): boolean {
    const framing = this.framing;
    if (!this.isReady || framing === null || !this.outbound.hasRoomFor(bytes.length)) return false;
    return this.write(framing.sealer.sealInPlace(bytes, digest), true);
  }

  /**
   * MACs and writes one session frame. The frame counter advances only for a frame that
   * is written: the replica expects every counter value, in order.
   */
  private sendSealed(bytes: Uint8Array, trailerReserved: boolean): boolean {
    const framing = this.framing;
    if (framing === null) return false;
    const sealedBytes = trailerReserved ? bytes.length : bytes.length + CLIENT_FRAME_MAC_BYTES;
    if (!this.outbound.hasRoomFor(sealedBytes)) return false;
    return this.write(trailerReserved ? framing.sealer.sealInPlace(bytes) : framing.sealer.seal(bytes));
  }

  /** Closes for good: no reconnect, no more events. */
  close(): void {
    if (this.currentState === "closed") return;
    this.currentState = "closed";
    this.clearTimers();
    this.dropSocket();
  }

  // ---------------------------------------------------------------------------------
  // Dialling and the handshake
  // ---------------------------------------------------------------------------------

  private dial(): void {
    const attempt = ++this.attemptId;
    this.currentState = "connecting";
    // A session frame's length counts its MAC, which the frame limit does not.
    this.decoder = new FrameDecoder({ frameBytesMax: this.options.frameBytesMax + CLIENT_FRAME_MAC_BYTES, copyPayloads: true });
    this.lastReplicaError = null;
    this.sessionTimer = setTimeout(() => this.onSessionTimeout(attempt), this.options.sessionTimeoutMs);
    Bun.connect({
      hostname: this.hosts[this.hostIndex] as string,
      port: this.endpoint.port,
      socket: {
        binaryType: "uint8array",
        open: (socket) => this.onOpen(attempt, socket),
        data: (_socket, data) => this.onData(attempt, data),
        drain: (socket) => this.onDrain(attempt, socket),
        close: (_socket, error) => this.onSocketClosed(attempt, error),
        error: (_socket, error) => this.onSocketClosed(attempt, error),
        end: (_socket) => this.onSocketClosed(attempt, undefined),
        connectError: (_socket, error) => this.onConnectError(attempt, error),
      },
    }).catch(() => {
      // connectError has reported the failure; the rejected promise carries nothing new.
    });
  }

  private onOpen(attempt: number, socket: TcpSocket): void {
    if (attempt !== this.attemptId || this.currentState !== "connecting") {
      socket.terminate();
      return;
    }
    this.socket = socket;
    socket.setNoDelay(true);
    this.currentState = "handshaking";
    this.handshake = clientHello(this.key);
    this.lastReceivedAt = this.options.now();
    this.write(encodeTypedFrame({ type: FrameType.HELLO, body: this.handshake.hello }, this.options.frameBytesMax));
  }

  private onConnectError(attempt: number, error: Error): void {
    if (attempt !== this.attemptId || this.currentState === "closed") return;
    this.goDown(new ReplicaUnreachableError(this.id, this.address, describeSocketError(error)));
  }

  private onSessionTimeout(attempt: number): void {
    if (attempt !== this.attemptId) return;
    this.sessionTimer = null;
    if (this.currentState === "connecting") {
      this.goDown(new ReplicaUnreachableError(this.id, this.address, `no TCP connection within ${this.options.sessionTimeoutMs} ms`));
    } else if (this.currentState === "handshaking") {
      this.goDown(new HandshakeError(this.id, this.address, "TIMEOUT", `no HELLO_ACK within ${this.options.sessionTimeoutMs} ms`));
    }
  }

  private onSocketClosed(attempt: number, error: Error | undefined): void {
    if (attempt !== this.attemptId || this.currentState === "closed" || this.currentState === "waiting") return;
    const cause = this.lastReplicaError ?? (error === undefined ? "the replica closed the connection" : describeSocketError(error));
    if (this.currentState === "handshaking") {
      this.goDown(new HandshakeError(this.id, this.address, "UNAUTHORIZED", `closed during the handshake: ${cause}`));
    } else if (this.currentState === "ready") {
      this.goDown(new ReplicaUnreachableError(this.id, this.address, `connection lost: ${cause}`));
    } else {
      this.goDown(new ReplicaUnreachableError(this.id, this.address, cause));
    }
  }

  private onHandshakeFrame(frame: Frame): void {
    if (frame.type === FrameType.ERROR) {
      const { code, reason } = frame.body;
      this.goDown(new HandshakeError(this.id, this.address, code, `refused by the replica: ${code} ${reason}`));
      return;
    }
    if (frame.type !== FrameType.HELLO_ACK || this.handshake === null) {
      this.goDown(
        new HandshakeError(this.id, this.address, "BAD_FRAME", `expected HELLO_ACK, got frame type 0x${frame.type.toString(16)}`),
      );
      return;
    }
    const check = checkHelloAck(this.handshake, frame.body, this.endpoint, this.key);
    if (!check.ok) {
      this.goDown(new HandshakeError(this.id, this.address, check.code, check.reason));
      return;
    }
    this.write(encodeTypedFrame({ type: FrameType.AUTH, body: check.auth }, this.options.frameBytesMax));
    // AUTH is the last frame without a MAC, in both directions.
    this.framing = sessionFraming(check.keys, this.options.payloadDigests ?? null);
    this.handshake = null;
    this.becomeReady();
  }

  /**
   * The session is up. The failure count (and the addresses tried) are kept until it has
   * stayed up SESSION_STABLE_MS (noteStableSession).
   */
  private becomeReady(): void {
    this.clearSessionTimer();
    this.currentState = "ready";
    this.readyAt = this.options.now();
    const checkEveryMs = Math.max(1, Math.floor(this.pingIntervalMs() / KEEPALIVE_CHECK_DIVISOR));
    this.keepaliveTimer = setInterval(() => this.keepalive(), checkEveryMs);
    if (this.hostIndex !== 0) this.schedulePreferredProbe();
    this.events.onReady(this);
  }

  /** The keepalive's PING interval and silence bound: tighter for a multi-homed replica, which has somewhere else to go. */
  private pingIntervalMs(): number {
    return this.multiHomed ? Math.min(this.options.pingIntervalMs, Math.floor(this.failover.silenceMs / 3)) : this.options.pingIntervalMs;
  }

  private idleTimeoutMs(): number {
    return this.multiHomed ? Math.min(this.options.idleTimeoutMs, this.failover.silenceMs) : this.options.idleTimeoutMs;
  }

  // ---------------------------------------------------------------------------------
  // Multi-homed replicas: the way back to the preferred address
  // ---------------------------------------------------------------------------------

  private schedulePreferredProbe(): void {
    if (this.preferredTimer !== null || this.probe !== null) return;
    this.preferredTimer = setTimeout(() => {
      this.preferredTimer = null;
      if (this.currentState === "ready" && this.hostIndex !== 0) this.probePreferred();
    }, this.preferredRetryMs);
  }

  /**
   * Checks that the preferred address answers as the replica (a HELLO_ACK signed by its
   * key), without opening a session there; then moves the session onto it.
   */
  private probePreferred(): void {
    const handshake = clientHello(this.key);
    const decoder = new FrameDecoder({ frameBytesMax: this.options.frameBytesMax, copyPayloads: true });
    const preferred = formatAddress(this.hosts[0] as string, this.endpoint.port);
    let settled = false;
    const finish = (passed: boolean, why: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(mine.timer);
      mine.socket?.terminate();
      if (this.probe !== mine) return;
      this.probe = null;
      if (this.currentState !== "ready" || this.hostIndex === 0) return;
      if (!passed) {
        this.preferredRetryMs = Math.min(this.preferredRetryMs * 2, this.failover.preferredRetryMsMax);
        this.schedulePreferredProbe();
        return;
      }
      this.preferredRetryMs = this.failover.preferredRetryMsMin;
      this.moveToPreferred(why);
    };
    const mine: { socket: TcpSocket | null; timer: ReturnType<typeof setTimeout> } = {
      socket: null,
      timer: setTimeout(() => finish(false, "probe timed out"), this.options.sessionTimeoutMs),
    };
    this.probe = mine;
    Bun.connect({
      hostname: this.hosts[0] as string,
      port: this.endpoint.port,
      socket: {
        binaryType: "uint8array",
        open: (socket) => {
          if (settled) {
            socket.terminate();
            return;
          }
          mine.socket = socket;
          socket.write(encodeTypedFrame({ type: FrameType.HELLO, body: handshake.hello }, this.options.frameBytesMax));
        },
        data: (_socket, data) => {
          for (const item of decoder.push(data)) {
            if (!item.ok) return finish(false, item.error.reason);
            const decoded = decodeReplicaFrame(item.type, item.payload);
            if (!decoded.ok || decoded.frame.type !== FrameType.HELLO_ACK) return finish(false, "no HELLO_ACK");
            const check = checkHelloAck(handshake, decoded.frame.body, this.endpoint, this.key);
            return finish(check.ok, check.ok ? `${preferred} answers again` : check.reason);
          }
        },
        close: () => finish(false, "closed"),
        error: () => finish(false, "socket error"),
        end: () => finish(false, "closed"),
        connectError: () => finish(false, "connect failed"),
      },
    }).catch(() => {
      // connectError has reported the failure.
    });
  }

  /** Ends the session on the other address and dials the preferred one at once. */
  private moveToPreferred(why: string): void {
    const from = this.address;
    this.attemptId++;
    this.clearTimers();
    this.dropSocket();
    const error = new ReplicaUnreachableError(this.id, from, `moving back to the preferred address: ${why}`);
    this.lastDownError = error;
    this.hostIndex = 0;
    this.failedHosts = 0;
    this.currentState = "waiting";
    this.events.onDown(this, error);
    if (this.currentState === "waiting") this.dial();
  }

  // ---------------------------------------------------------------------------------
  // Frames in and out
  // ---------------------------------------------------------------------------------

  private onData(attempt: number, data: Uint8Array): void {
    if (attempt !== this.attemptId || this.decoder === null) return;
    this.lastReceivedAt = this.options.now();
    for (const item of this.decoder.push(data)) {
      if (attempt !== this.attemptId || this.currentState === "closed") return;
      if (!item.ok) {
        this.onUndecodable(item.error.reason, item.error.fatal);
        continue;
      }
      const payload = this.framing === null ? item.payload : this.framing.opener.open(item.type, item.payload);
      if (payload === null) {
        this.onBadMac(item.type, item.payload);
        return;
      }
      const decoded = decodeReplicaFrame(item.type, payload);
      if (!decoded.ok) {
        this.onUndecodable(decoded.error.reason, decoded.error.fatal);
        continue;
      }
      this.onFrame(decoded.frame);
    }
  }

  private onFrame(frame: Frame): void {
    if (this.currentState === "handshaking") {
      this.onHandshakeFrame(frame);
      return;
    }
    if (this.currentState !== "ready") return;
    switch (frame.type) {
      case FrameType.PING:
        this.send({ type: FrameType.PONG, body: { n: frame.body.n } });
        return;
      case FrameType.PONG:
        return;
      case FrameType.ERROR:
        this.lastReplicaError = `${frame.body.code} ${frame.body.reason}`;
        this.events.onFrame(this, frame);
        return;
      default:
        this.events.onFrame(this, frame);
    }
  }

  /**
   * A frame whose MAC does not verify: it is not looked at, and the session cannot go on
   * (PROTOCOL.md 5.2), so the connection is dropped and dialled again. An ERROR the
   * replica sent without a MAC (it refused AUTH) is quoted, marked as unauthenticated.
   */
  private onBadMac(type: number, sealedPayload: Uint8Array): void {
    const framing = this.framing as SessionFraming;
    let reason = `frame ${framing.opener.opened + 1} (type 0x${type.toString(16)}) failed its MAC check: altered, replayed or reordered in transit`;
    const unsealed = type === FrameType.ERROR ? decodeFrameBody(type, sealedPayload) : null;
    if (unsealed?.ok && unsealed.frame.type === FrameType.ERROR) {
      reason += ` (an unauthenticated ERROR: ${unsealed.frame.body.code} ${unsealed.frame.body.reason})`;
    }
    this.framesDropped++;
    this.events.onBadFrame?.(this, reason);
    this.goDown(new ReplicaUnreachableError(this.id, this.address, `connection dropped: ${reason}`));
  }

  /** A frame that does not decode: a framing error ends the stream, a payload error only the frame. */
  private onUndecodable(reason: string, fatal: boolean): void {
    this.framesDropped++;
    this.events.onBadFrame?.(this, reason);
    if (fatal) this.goDown(new ReplicaUnreachableError(this.id, this.address, `unusable byte stream: ${reason}`));
  }

  /** `borrowed`: the caller writes over `bytes` afterwards (WriteQueue.enqueue). */
  private write(bytes: Uint8Array, borrowed = false): boolean {
    const socket = this.socket;
    if (socket === null) return false;
    const result = this.outbound.enqueue((data) => socket.write(data), bytes, borrowed);
    if (result === "sent" || result === "queued") {
      this.lastSentAt = this.options.now();
      return true;
    }
    return false;
  }

  private onDrain(attempt: number, socket: TcpSocket): void {
    if (attempt !== this.attemptId) return;
    this.outbound.flush((data) => socket.write(data));
  }

  /**
   * A session that stayed up SESSION_STABLE_MS was a success: the backoff starts again
   * from its first delay, and every address of a multi-homed replica counts as untried.
   * Called while the session is up (keepalive) and as it goes down.
   */
  private noteStableSession(now: number): void {
    if (this.currentState !== "ready" || this.readyAt === null || now - this.readyAt < SESSION_STABLE_MS) return;
    this.failures = 0;
    this.failedHosts = 0;
    this.readyAt = null;
  }

  /** Pings a quiet replica, and drops one that has said nothing for too long. */
  private keepalive(): void {
    if (this.currentState !== "ready") return;
    const now = this.options.now();
    this.noteStableSession(now);
    const idleMs = this.idleTimeoutMs();
    if (now - this.lastReceivedAt > idleMs) {
      this.goDown(new ReplicaUnreachableError(this.id, this.address, `nothing received for ${idleMs} ms`));
      return;
    }
    const pingMs = this.pingIntervalMs();
    if (now - this.lastSentAt >= pingMs || now - this.lastReceivedAt >= pingMs) {
      this.pingCounter++;
      this.send({ type: FrameType.PING, body: { n: this.pingCounter } });
    }
  }

  // ---------------------------------------------------------------------------------
  // Going down and coming back
  // ---------------------------------------------------------------------------------

  private goDown(error: ClientError): void {
    if (this.currentState === "closed") return;
    this.noteStableSession(this.options.now());
    this.readyAt = null;
    this.attemptId++;
    this.clearTimers();
    this.dropSocket();
    this.lastDownError = error;
    this.currentState = "waiting";
    let delayMs: number;
    if (this.multiHomed && ++this.failedHosts < this.hosts.length) {
      // The next address at once while some address has not failed since the last
      // session; once every one has, from the preferred one again after the backoff.
      this.hostIndex = (this.hostIndex + 1) % this.hosts.length;
      delayMs = 0;
    } else {
      this.failedHosts = 0;
      this.hostIndex = 0;
      delayMs = backoffDelayMs(this.failures, this.options.backoff, this.options.random);
      this.failures++;
    }
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      if (this.currentState === "waiting") this.dial();
    }, delayMs);
    this.events.onDown(this, error);
  }

  private dropSocket(): void {
    const socket = this.socket;
    this.socket = null;
    this.decoder = null;
    this.handshake = null;
    this.framing = null;
    this.outbound.clear();
    if (socket !== null) socket.terminate();
  }

  private clearSessionTimer(): void {
    if (this.sessionTimer !== null) clearTimeout(this.sessionTimer);
    this.sessionTimer = null;
  }

  private clearTimers(): void {
    this.clearSessionTimer();
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.keepaliveTimer !== null) clearInterval(this.keepaliveTimer);
    this.keepaliveTimer = null;
    if (this.preferredTimer !== null) clearTimeout(this.preferredTimer);
    this.preferredTimer = null;
    const probe = this.probe;
    this.probe = null;
    if (probe !== null) {
      clearTimeout(probe.timer);
      probe.socket?.terminate();
    }
  }
}

/** "connection refused" rather than a stack or an errno number. */
export function describeSocketError(error: Error): string {
  const code = (error as { code?: unknown }).code;
  switch (code) {
    case "ECONNREFUSED":
      return "connection refused";
    case "ECONNRESET":
      return "connection reset";
    case "ETIMEDOUT":
      return "connection timed out";
    case "EHOSTUNREACH":
      return "host unreachable";
    case "ENETUNREACH":
      return "network unreachable";
    case "ENOTFOUND":
    case "EAI_NONAME":
      return "host name not found";
    default:
      return typeof code === "string" ? `${code}: ${error.message}` : error.message;
  }
}
