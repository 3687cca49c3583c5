/**
 * The replica's one TCP listener. Peers and clients share the port; the first frame, a
 * HELLO, says which one is calling. Client sessions are authenticated (the replica signs
 * the transcript, the client answers with AUTH) before any other frame is taken; peer
 * sessions are handed to the peer mesh.
 *
 * Bad input never escapes as an exception: a frame that cannot be decoded is answered
 * with ERROR and the connection closed (it is hostile or broken); a well-formed request
 * that is refused gets a REPLY with a code and reason and the connection stays.
 */
import { randomBytes } from "node:crypto";
import type { Socket, TCPSocketListener } from "bun";
import { signDomain, verifyDomain } from "../crypto/ed25519.ts";
import type { SigningKey } from "../crypto/keys.ts";
import type { DecodeResult } from "../../wire/frame.ts";
import { decodeFrameBody, type Frame, type Hello } from "../../wire/schemas.ts";
import { sessionTranscript } from "../../wire/session.ts";
import {
  DOMAIN_SESSION_INITIATOR,
  DOMAIN_SESSION_RESPONDER,
  errorCodeFor,
  FrameType,
  NONCE_BYTES,
  PROTOCOL_VERSION,
} from "../../wire/types.ts";
import { FramedConn } from "./framed.ts";
import type { Log } from "./log.ts";
import type { Metrics } from "./metrics.ts";
import type { PeerMesh } from "./peers.ts";

/** A connection that has not completed its handshake in this time is closed. */
export const HANDSHAKE_MS_MAX = 10_000;
/** Open client connections at once; more are refused. */
export const CLIENT_CONNECTIONS_MAX = 4096;
/** Bytes that may wait to be written to one client before it counts as slow. */
export const CLIENT_OUTBOUND_BYTES_MAX = 8 * 1024 * 1024;

/** An authenticated client connection, as the replica's handlers see it. */
export interface ClientSession {
  readonly conn: FramedConn;
  readonly key: Uint8Array;
  readonly keyHex: string;
  readonly id: number;
}

export interface ClientHandler {
  onClientFrame(session: ClientSession, frame: Frame): void;
  onClientClosed(session: ClientSession): void;
}

interface ConnState {
  phase: "hello" | "client-auth" | "client" | "peer" | "closed";
  onPeerFrame: ((frame: Frame) => void) | null;
  clientHello: Hello | null;
  transcript: Uint8Array | null;
  session: ClientSession | null;
  timer: ReturnType<typeof setTimeout> | null;
}

export interface ServerOptions {
  readonly self: number;
  readonly host: string;
  readonly port: number;
  readonly key: SigningKey;
  readonly frameBytesMax: number;
  readonly mesh: PeerMesh;
  readonly clients: ClientHandler;
  readonly log: Log;
  readonly metrics: Metrics;
}

export class ReplicaServer {
  private listener: TCPSocketListener<{ conn: FramedConn | null }> | null = null;
  private readonly conns = new Set<FramedConn>();
  private nextSessionId = 1;
  private clientCount = 0;

  constructor(private readonly options: ServerOptions) {}

  listen(): void {
    const server = this;
    this.listener = Bun.listen<{ conn: FramedConn | null }>({
      hostname: this.options.host,
      port: this.options.port,
      data: { conn: null },
      socket: {
        open(socket) {
          const conn = new FramedConn(socket as Socket<unknown>, server.options.frameBytesMax, CLIENT_OUTBOUND_BYTES_MAX);
          socket.data = { conn };
          server.onOpen(conn);
        },
        data(socket, chunk) {
          const conn = socket.data.conn;
          if (conn !== null) server.onFrames(conn, conn.decoder.push(chunk));
        },
        drain(socket) {
          socket.data.conn?.drain();
        },
        close(socket) {
          const conn = socket.data.conn;
          if (conn !== null) server.onClose(conn);
        },
        error(_socket, error) {
          server.options.log.debug("connection error", { error: error.message });
        },
      },
    });
  }

  stop(): void {
    this.listener?.stop(true);
    this.listener = null;
    for (const conn of this.conns) conn.close();
  }

  private onOpen(conn: FramedConn): void {
    const state: ConnState = { phase: "hello", onPeerFrame: null, clientHello: null, transcript: null, session: null, timer: null };
    conn.state = state;
    this.conns.add(conn);
    state.timer = setTimeout(() => {
      if (state.phase === "hello" || state.phase === "client-auth") {
        this.options.metrics.inc("handshake_timeouts_total");
        conn.close();
      }
    }, HANDSHAKE_MS_MAX);
  }

  private onClose(conn: FramedConn): void {
    const state = conn.state as ConnState;
    this.conns.delete(conn);
    if (state.timer !== null) clearTimeout(state.timer);
    if (state.phase === "peer") this.options.mesh.inboundClosed(conn);
    if (state.session !== null) {
      this.clientCount--;
      this.options.clients.onClientClosed(state.session);
    }
    state.phase = "closed";
  }

  private onFrames(conn: FramedConn, results: DecodeResult[]): void {
    for (const result of results) {
      if (conn.isClosed) return;
      if (!result.ok) {
        this.options.metrics.inc("bad_frames_total");
        conn.closeWith({ type: FrameType.ERROR, body: { code: errorCodeFor(result.error), reason: result.error.reason } });
        return;
      }
      const decoded = decodeFrameBody(result.type, result.payload);
      if (!decoded.ok) {
        this.options.metrics.inc("bad_frames_total");
        conn.closeWith({ type: FrameType.ERROR, body: { code: errorCodeFor(decoded.error), reason: decoded.error.reason } });
        return;
      }
      this.onFrame(conn, decoded.frame);
    }
  }

  private onFrame(conn: FramedConn, frame: Frame): void {
    const state = conn.state as ConnState;
    switch (state.phase) {
      case "hello":
        return this.onHello(conn, state, frame);
      case "client-auth":
        return this.onClientAuth(conn, state, frame);
      case "client":
        return this.options.clients.onClientFrame(state.session as ClientSession, frame);
      case "peer":
        return state.onPeerFrame?.(frame);
      case "closed":
        return;
      default: {
        const unreachable: never = state.phase;
        return unreachable;
      }
    }
  }

  private onHello(conn: FramedConn, state: ConnState, frame: Frame): void {
    if (frame.type !== FrameType.HELLO) {
      conn.closeWith({ type: FrameType.ERROR, body: { code: "UNAUTHORIZED", reason: "the first frame must be HELLO" } });
      return;
    }
    const hello = frame.body;
    if (hello.role === "replica") {
      const handler = this.options.mesh.acceptInbound(conn, hello);
      if (handler === null) return;
      state.phase = "peer";
      state.onPeerFrame = handler;
      if (state.timer !== null) clearTimeout(state.timer);
      return;
    }
    if (this.clientCount >= CLIENT_CONNECTIONS_MAX) {
      this.options.metrics.inc("clients_refused_total");
      conn.closeWith({ type: FrameType.ERROR, body: { code: "OVERLOADED", reason: "too many client connections" } });
      return;
    }
    const unsigned = {
      v: PROTOCOL_VERSION,
      replica: this.options.self,
      key: this.options.key.publicKey,
      nonce: new Uint8Array(randomBytes(NONCE_BYTES)),
    } as const;
    const transcript = sessionTranscript(hello, unsigned);
    conn.send({ type: FrameType.HELLO_ACK, body: { ...unsigned, sig: signDomain(this.options.key, DOMAIN_SESSION_RESPONDER, transcript) } });
    state.clientHello = hello;
    state.transcript = transcript;
    state.phase = "client-auth";
  }

  private onClientAuth(conn: FramedConn, state: ConnState, frame: Frame): void {
    const hello = state.clientHello as Hello;
    if (frame.type !== FrameType.AUTH || !verifyDomain(hello.key, DOMAIN_SESSION_INITIATOR, state.transcript as Uint8Array, frame.body.sig)) {
      this.options.metrics.inc("client_auth_failed_total");
      conn.closeWith({ type: FrameType.ERROR, body: { code: "UNAUTHORIZED", reason: "client authentication failed" } });
      return;
    }
    if (state.timer !== null) clearTimeout(state.timer);
    state.timer = null;
    state.phase = "client";
    state.session = { conn, key: hello.key, keyHex: Buffer.from(hello.key).toString("hex"), id: this.nextSessionId++ };
    this.clientCount++;
  }
}
