/**
 * One client connection to one replica: TCP through Bun.connect, the session handshake
 * (handshake.ts), framing with FrameDecoder, a MAC on every frame after the handshake in
 * both directions (wire/PROTOCOL.md 5.2), a bounded send queue (src/net/write-queue.ts),
 * a keepalive, and reconnection with capped exponential backoff and jitter (backoff.ts).
 *
 * A frame from the replica whose MAC does not verify for the next frame counter (altered,
 * replayed, reordered or removed in transit) is never looked at: the connection is
 * dropped, reported, and dialled again with a fresh handshake.
 *
 * The connection knows nothing about requests or subscriptions. It reports three things
 * to its owner: the session is ready (after every successful handshake, so the owner can
 * re-send what this replica has not answered), a validated frame arrived, and the
 * connection went down (with a typed error saying why). Frames are attributed to the
 * replica this connection dialled and authenticated, never to an id a frame claims.
 */
import type { Socket } from "bun";
import { FrameDecoder } from "../../wire/frame.ts";
import { decodeFrameBody, encodeTypedFrame, encodeTypedFrameWithTrailer, type Frame } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";
import { formatAddress } from "../config/cluster.ts";
import type { SigningKey } from "../crypto/keys.ts";
import { CLIENT_FRAME_MAC_BYTES, type SessionFraming, sessionFraming } from "../crypto/session.ts";
import { WriteQueue } from "../net/write-queue.ts";
import { backoffDelayMs, checkBackoffPolicy, type BackoffPolicy } from "./backoff.ts";
import { type ClientError, HandshakeError, ReplicaUnreachableError } from "./errors.ts";
import { checkHelloAck, type ClientHandshake, clientHello, type ExpectedReplica } from "./handshake.ts";

/** A replica as the client dials it: the cluster file's entry. */
export interface ReplicaEndpoint extends ExpectedReplica {
  readonly host: string;
  readonly port: number;
}

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

/** Checked while ready; also the granularity of the keepalive. */
const KEEPALIVE_CHECK_DIVISOR = 2;

type TcpSocket = Socket<undefined>;

export class ReplicaConnection {
  readonly id: number;
  readonly address: string;
  private readonly endpoint: ReplicaEndpoint;
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
    this.address = formatAddress(endpoint.host, endpoint.port);
    this.key = key;
    this.events = events;
    this.options = options;
    this.outbound = new WriteQueue(options.outboundBytesMax);
  }

  get state(): ConnectionState {
    return this.currentState;
  }

  get isReady(): boolean {
    return this.currentState === "ready";
  }

  /** Why the connection last went down, or null if it never did. */
  get lastError(): ClientError | null {
    return this.lastDownError;
  }

  /** Failed attempts since the last successful session (drives the backoff). */
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
   * Sends an already encoded frame (a request fanned out to every replica is encoded
   * once, and each connection seals its own copy). False if not ready or the queue is
   * full: the caller re-sends later.
   */
  sendEncoded(bytes: Uint8Array): boolean {
    if (!this.isReady) return false;
    return this.sendSealed(bytes, false);
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
      hostname: this.endpoint.host,
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
    this.framing = sessionFraming(check.keys);
    this.handshake = null;
    this.becomeReady();
  }

  private becomeReady(): void {
    this.clearSessionTimer();
    this.currentState = "ready";
    this.failures = 0;
    const checkEveryMs = Math.max(1, Math.floor(this.options.pingIntervalMs / KEEPALIVE_CHECK_DIVISOR));
    this.keepaliveTimer = setInterval(() => this.keepalive(), checkEveryMs);
    this.events.onReady(this);
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
      const decoded = decodeFrameBody(item.type, payload);
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

  private write(bytes: Uint8Array): boolean {
    const socket = this.socket;
    if (socket === null) return false;
    const result = this.outbound.enqueue((data) => socket.write(data), bytes);
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

  /** Pings a quiet replica, and drops one that has said nothing for too long. */
  private keepalive(): void {
    if (this.currentState !== "ready") return;
    const now = this.options.now();
    if (now - this.lastReceivedAt > this.options.idleTimeoutMs) {
      this.goDown(new ReplicaUnreachableError(this.id, this.address, `nothing received for ${this.options.idleTimeoutMs} ms`));
      return;
    }
    if (now - this.lastSentAt >= this.options.pingIntervalMs || now - this.lastReceivedAt >= this.options.pingIntervalMs) {
      this.pingCounter++;
      this.send({ type: FrameType.PING, body: { n: this.pingCounter } });
    }
  }

  // ---------------------------------------------------------------------------------
  // Going down and coming back
  // ---------------------------------------------------------------------------------

  private goDown(error: ClientError): void {
    if (this.currentState === "closed") return;
    this.attemptId++;
    this.clearTimers();
    this.dropSocket();
    this.lastDownError = error;
    this.currentState = "waiting";
    const delayMs = backoffDelayMs(this.failures, this.options.backoff, this.options.random);
    this.failures++;
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
