/**
 * A replica's TCP listener. With a peer_port in the cluster file a replica runs two: one
 * that takes only clients and one that takes only peers, each with its own handshake and
 * connection bounds, so that clients cannot crowd out the cluster's own links nor a peer
 * the clients; without it one listener takes both. The first frame, a HELLO, says which
 * one is calling; a HELLO on the wrong listener is refused and says where to go. Client sessions are authenticated (the replica signs
 * the transcript, the client answers with AUTH) before any other frame is taken; peer
 * sessions are handed to the peer mesh.
 *
 * Bad input never escapes as an exception: a frame that cannot be decoded is answered
 * with ERROR and the connection closed (it is hostile or broken), or, from an address
 * blacklisted already, held open and unread in the tarpit (tarpit.ts); a well-formed
 * request that is refused gets a REPLY with a code and reason and the connection stays.
 * A frame of a type the session does not take is refused by its type byte before its
 * payload is decoded (PHASE_FRAME_TYPES); on an authenticated peer link such a frame, or
 * one that does not decode, closes the link without muting the peer (peers.ts
 * refuseInbound): nothing authenticates a peer link's frames before the MAC inside PEER.
 *
 * Anyone can open a connection and anyone can make a client key, so everything a caller
 * holds is bounded (ServerLimits). Until AUTH has verified, a connection has proved
 * nothing, whatever its HELLO claims (a replica's public key is public): it is counted
 * against the handshake caps, may send only small frames, and is closed at the handshake
 * deadline. Authenticated client sessions are capped in all, per client key and per
 * remote address, so that one caller cannot take every slot. Peer sessions never count
 * against the client caps: the cluster's own links must not be crowded out by clients.
 */
import { randomBytes } from "node:crypto";
import type { Socket, SocketHandler, TCPSocketListener } from "bun";
import { formatAddress } from "../config/cluster.ts";
import { signDomain, verifyDomain } from "../crypto/ed25519.ts";
import { formatPublicKey, type SigningKey } from "../crypto/keys.ts";
import {
  deriveSessionKeys,
  generateEphemeralKeyPair,
  SessionCryptoError,
  type SessionKeys,
  sessionFraming,
  x25519SharedSecret,
} from "../crypto/session.ts";
import { type DecodeResult, FrameDecoder } from "../../wire/frame.ts";
import { decodeFrameBody, type Frame, type Hello } from "../../wire/schemas.ts";
import { sessionTranscript } from "../../wire/session.ts";
import {
  clipUtf8,
  DOMAIN_SESSION_INITIATOR,
  DOMAIN_SESSION_RESPONDER,
  errorCodeFor,
  FRAME_HEADER_BYTES,
  FrameType,
  frameTypeName,
  NONCE_BYTES,
} from "../../wire/types.ts";
import { ClientFrames } from "./client-frames.ts";
import { FramedConn, OutputBudget } from "./framed.ts";
import type { ClientAdmission } from "./admission.ts";
import type { AuditLog } from "./audit.ts";
import type { Log } from "./log.ts";
import type { Metrics } from "./metrics.ts";
import { RateLimiter } from "./rate.ts";
import type { PeerMesh } from "./peers.ts";
import { type CutFrame, type PartialFrameLimits, PartialFrames } from "./partial-frames.ts";
import { TARPIT_CONNECTIONS_MAX, TARPIT_HOLD_MS_MAX, TARPIT_PER_ADDRESS_MAX, Tarpit } from "./tarpit.ts";
import { addressGroup } from "../net/address.ts";

/** A connection whose AUTH has not verified in this time is closed, whatever its HELLO said. */
export const HANDSHAKE_MS_MAX = 10_000;
/**
 * The largest frame taken before AUTH has verified. A replica's HELLO is about 150 bytes,
 * an AUTH about 75. The frame decoder reserves a frame's declared length as soon as it has
 * read the 4 length bytes, so a connection that has proved nothing must not be able to
 * declare frameBytesMax.
 */
export const HANDSHAKE_FRAME_BYTES_MAX = 1024;
/**
 * Connections still in their handshake, in all. At the bound a new connection takes the
 * slot of the oldest one still in its handshake, which is closed: a replica's or a
 * client's handshake completes in milliseconds, so whoever holds slots open without
 * finishing loses them first, and peers and clients always get in.
 */
export const HANDSHAKES_MAX = 1024;
/** Connections still in their handshake from one remote address; more are refused. */
export const HANDSHAKES_PER_ADDRESS_MAX = 32;
/**
 * New connections per remote address: a token bucket. Each HELLO costs the replica a
 * signature, so one address cannot make it sign more than this many a second.
 */
export const HANDSHAKES_PER_ADDRESS_PER_SECOND_MAX = 200;
export const HANDSHAKES_PER_ADDRESS_BURST_MAX = 1000;
/**
 * Client HELLOs answered a second in all addresses together, each with a signature: a
 * HELLO may be replayed byte for byte, so the sender pays a TCP connect where this replica
 * pays a signature and a key exchange (about 110 µs). 30 addresses at their own rate took
 * half a core; at this bound the answers take a fifth of one at most, and 4,096 clients
 * reconnecting after a restart all get in within a few seconds.
 */
export const CLIENT_HANDSHAKES_PER_SECOND_MAX = 2000;
export const CLIENT_HANDSHAKES_BURST_MAX = 4000;
/**
 * Past CLIENT_HANDSHAKES_PER_SECOND_MAX (a flood from some addresses drained it), a reserve
 * of this many HELLOs a second is answered for quiet hosts only: a host (an IPv6 /64 counts
 * as one, net/address.ts) may draw on it QUIET_HOST_HANDSHAKES_PER_SECOND a second, past a
 * burst of QUIET_HOST_HANDSHAKES_BURST. The flooding addresses spent theirs at once, so an
 * operator's `fitb admin` or a probe reconnecting still gets in; draining the reserve too
 * takes hundreds of hosts (IPv4 addresses, or IPv6 /64s: a /56 holds 256 of those).
 */
export const QUIET_HANDSHAKES_PER_SECOND_MAX = 200;
export const QUIET_HOST_HANDSHAKES_PER_SECOND = 1;
export const QUIET_HOST_HANDSHAKES_BURST = 5;
/** Open client connections at once; more are refused. */
export const CLIENT_CONNECTIONS_MAX = 4096;
/** Client connections authenticated with one key: room for a host's relays and CLIs, not for every slot. */
export const CLIENT_CONNECTIONS_PER_KEY_MAX = 64;
/** Client connections from one remote address, whatever their keys (a key costs nothing to make). */
export const CLIENT_CONNECTIONS_PER_ADDRESS_MAX = 256;
/** Bytes that may wait to be written to one client before it counts as slow. */
export const CLIENT_OUTBOUND_BYTES_MAX = 8 * 1024 * 1024;
/**
 * Bytes that may wait for all client connections together. Past it a send to any client
 * fails as if its own queue were full (a subscription ends SLOW, a reply is dropped and
 * counted), so 4,096 subscribers that stop reading cost this much memory, not 32 GiB.
 * Low and normal frames fill at most LESS_URGENT_BOUND_PERCENT of it (framed.ts): the
 * rest is kept for replies, PONGs and high and critical deliveries.
 */
export const CLIENT_OUTPUT_BYTES_MAX = 512 * 1024 * 1024;
/**
 * Of CLIENT_OUTPUT_BYTES_MAX, what the client connections of one remote address may hold
 * together (the same share rule applies within it): a sixteenth, 32 MiB, four connections'
 * CLIENT_OUTBOUND_BYTES_MAX. Without it one address's readers that stop reading (it may
 * open CLIENT_CONNECTIONS_PER_ADDRESS_MAX connections) fill the whole budget and every
 * other client's replies and deliveries fail; with it that takes 16 addresses. Loopback
 * is one address like any other, as for the connection caps: the clients on a replica's
 * own host share one address's share.
 */
export const CLIENT_OUTPUT_BYTES_PER_ADDRESS_MAX = CLIENT_OUTPUT_BYTES_MAX / 16;
/**
 * Bytes of a decode error's reason quoted where a hostile frame is refused (a log line, and
 * the refusal sent to its address's later connections): enough to say what was wrong.
 */
const REFUSED_FRAME_REASON_BYTES = 120;
/**
 * How an HTTP request begins: a method and a space (`PRI ` opens HTTP/2 with prior
 * knowledge). As the length of a first frame those bytes are over a gigabyte, so no fitb
 * frame begins so: a connection that does is someone's browser, curl or scraper at the
 * wrong port (wire/PROTOCOL.md §1).
 */
const HTTP_REQUEST_START = /^(?:GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|CONNECT|TRACE|PRI) /;
/** Bytes of a connection's first chunk looked at for an HTTP method. */
const HTTP_METHOD_BYTES_MAX = 8;
/** A TLS record's first two bytes when it opens a handshake: content type 22, protocol version 3.x (TLS 1.0-1.3 all say 3). */
const TLS_HANDSHAKE_RECORD = 0x16;
const TLS_MAJOR_VERSION = 0x03;
/** A client session that sends nothing (clients PING every few seconds) for this long is closed. */
export const CLIENT_IDLE_MS_MAX = 60_000;
/** A client connection whose queued bytes the client has taken none of for this long is closed. */
export const CLIENT_STUCK_MS_MAX = 30_000;

/**
 * On a clients-only port, the connections of a blacklisted address are answered (ERROR with
 * the reason) and logged at most once per this window; the others in the window are
 * counted, held in the tarpit (tarpit.ts: kept open, never read, so the sender's writes
 * block) while it has room, else closed at once (a reset: nothing written, nothing more
 * read), and reported together in one line when the window is over. A hostile host that
 * reconnects as fast as it can then waits on held connections, and past the tarpit's
 * bounds costs a replica a lookup and a close per connection.
 */
export const BLACKLIST_NOTICE_MS = 1_000;
/** Addresses with a notice window open, at most; past it the oldest is reported and forgotten. */
const BLACKLIST_NOTICE_ADDRESSES_MAX = 10_000;

/** The server's bounds on connections. Each defaults to the constant of the same name. */
export interface ServerLimits {
  readonly handshakeMsMax: number;
  readonly handshakeFrameBytesMax: number;
  readonly handshakesMax: number;
  readonly handshakesPerAddressMax: number;
  readonly handshakesPerAddressPerSecondMax: number;
  readonly handshakesPerAddressBurstMax: number;
  readonly clientHandshakesPerSecondMax: number;
  readonly clientHandshakesBurstMax: number;
  readonly clientConnectionsMax: number;
  readonly clientConnectionsPerKeyMax: number;
  readonly clientConnectionsPerAddressMax: number;
  readonly clientOutputBytesMax: number;
  readonly clientOutputBytesPerAddressMax: number;
  readonly clientIdleMsMax: number;
  readonly clientStuckMsMax: number;
  /** Connections held in the tarpit per remote address, and in all (0: none held, every refusal reset). */
  readonly tarpitPerAddressMax: number;
  readonly tarpitConnectionsMax: number;
  /** How long a connection stays in the tarpit before it is reset. */
  readonly tarpitHoldMsMax: number;
}

export const SERVER_LIMITS_DEFAULT: ServerLimits = {
  handshakeMsMax: HANDSHAKE_MS_MAX,
  handshakeFrameBytesMax: HANDSHAKE_FRAME_BYTES_MAX,
  handshakesMax: HANDSHAKES_MAX,
  handshakesPerAddressMax: HANDSHAKES_PER_ADDRESS_MAX,
  handshakesPerAddressPerSecondMax: HANDSHAKES_PER_ADDRESS_PER_SECOND_MAX,
  handshakesPerAddressBurstMax: HANDSHAKES_PER_ADDRESS_BURST_MAX,
  clientHandshakesPerSecondMax: CLIENT_HANDSHAKES_PER_SECOND_MAX,
  clientHandshakesBurstMax: CLIENT_HANDSHAKES_BURST_MAX,
  clientConnectionsMax: CLIENT_CONNECTIONS_MAX,
  clientConnectionsPerKeyMax: CLIENT_CONNECTIONS_PER_KEY_MAX,
  clientConnectionsPerAddressMax: CLIENT_CONNECTIONS_PER_ADDRESS_MAX,
  clientOutputBytesMax: CLIENT_OUTPUT_BYTES_MAX,
  clientOutputBytesPerAddressMax: CLIENT_OUTPUT_BYTES_PER_ADDRESS_MAX,
  clientIdleMsMax: CLIENT_IDLE_MS_MAX,
  clientStuckMsMax: CLIENT_STUCK_MS_MAX,
  tarpitPerAddressMax: TARPIT_PER_ADDRESS_MAX,
  tarpitConnectionsMax: TARPIT_CONNECTIONS_MAX,
  tarpitHoldMsMax: TARPIT_HOLD_MS_MAX,
};

/** The limits that may be 0 (the tarpit's bounds: no connection held). */
const LIMITS_MAY_BE_ZERO: ReadonlySet<keyof ServerLimits> = new Set(["tarpitPerAddressMax", "tarpitConnectionsMax"]);

/** An authenticated client connection, as the replica's handlers see it. */
export interface ClientSession {
  readonly conn: FramedConn;
  readonly key: Uint8Array;
  readonly keyHex: string;
  readonly id: number;
  /** The protocol version the session speaks (its HELLO's): shared subscriptions need 4. */
  readonly version: number;
}

export interface ClientHandler {
  onClientFrame(session: ClientSession, frame: Frame): void;
  onClientClosed(session: ClientSession): void;
}

type Phase = "hello" | "client-auth" | "peer-auth" | "client" | "peer" | "closed";

/**
 * The frame types each phase takes. Any other is refused by its type byte, before its
 * payload is decoded: a payload is decoded whole before its schema is checked, so a frame
 * of a type the phase never takes (a QUERY_REPLY whose open `res` holds four million empty
 * arrays) would otherwise cost the replica its decoding, up to frameBytesMax, for nothing.
 * A type byte no frame has goes on to the decoder, which refuses it at once (unknown-type).
 */
const PHASE_FRAME_TYPES: { readonly [P in Phase]: ReadonlySet<number> } = {
  hello: new Set([FrameType.HELLO]),
  "client-auth": new Set([FrameType.AUTH]),
  "peer-auth": new Set([FrameType.AUTH]),
  client: new Set([FrameType.REQUEST, FrameType.QUERY, FrameType.SUBSCRIBE, FrameType.UNSUBSCRIBE, FrameType.PING, FrameType.PONG]),
  // A replica sends PEER frames on the link it dialled, and PINGs on a multi-homed peer's (peers.ts).
  peer: new Set([FrameType.PEER, FrameType.PING]),
  closed: new Set(),
};

interface ConnState {
  phase: Phase;
  /**
   * Cuts frames with the small handshake bound until AUTH has verified; null after that
   * (the connection's own decoder takes over) and for a connection refused at open. A
   * connection is counted against the handshake caps exactly while this is set.
   */
  handshake: FrameDecoder | null;
  onPeerFrame: ((frame: Frame) => void) | null;
  clientHello: Hello | null;
  transcript: Uint8Array | null;
  /** A client session's keys, from HELLO until AUTH has verified (then held by the connection's framing). */
  clientKeys: SessionKeys | null;
  session: ClientSession | null;
  timer: ReturnType<typeof setTimeout> | null;
  /** When the last bytes arrived from the other side. */
  receivedMs: number;
  /** A client session whose key the cluster named when its AUTH verified (knownClient), judged once. */
  named: boolean;
}

/** Whom a listener takes: clients, peers, or both (one shared port). */
export type ListenerRole = "clients" | "peers" | "both";

export interface ServerOptions {
  readonly self: number;
  /** Bounds on client frames still arriving; DEFAULT_PARTIAL_FRAME_LIMITS when absent (tests lower them). */
  readonly partialFrames?: PartialFrameLimits;
  /**
   * Whether the cluster names this client key (an admin key, a replica's, a key registered
   * on a channel or given a quota): with every client slot taken, such a key's session takes
   * the slot of a session whose key the cluster does not name (keys cost nothing to make,
   * so sessions of made-up keys could otherwise hold every slot). Absent: none is.
   */
  readonly knownClient?: (keyHex: string) => boolean;
  /** Whom this listener takes (default both); the other listener's port, for the refusal's reason. */
  readonly accepts?: ListenerRole;
  readonly otherPort?: number;
  readonly host: string;
  readonly port: number;
  /** Further addresses to listen on as well, with the same handling (a multi-homed replica's other networks). */
  readonly alsoListen?: readonly { readonly host: string; readonly port: number }[];
  readonly key: SigningKey;
  readonly frameBytesMax: number;
  readonly mesh: PeerMesh;
  readonly clients: ClientHandler;
  readonly log: Log;
  readonly metrics: Metrics;
  /** Where failed handshakes and refused sessions are reported (audit.ts); none in some tests. */
  readonly audit?: AuditLog;
  /**
   * The client keys (hex) that may open a session (the cluster file's client_keys and
   * admin_keys), or null: any key may.
   */
  readonly clientKeysAllowed?: ReadonlySet<string> | null;
  /** Overrides of SERVER_LIMITS_DEFAULT. */
  readonly limits?: Partial<ServerLimits>;
  /** The client blacklist (admission.ts): blacklisted addresses and keys are refused, hostile ones added. */
  readonly admission?: ClientAdmission;
  /**
   * The clock of the server's durations (connection rates, idle and stuck sessions,
   * handshake and tarpit times, frames still arriving); tests drive it by hand. By default
   * performance.now: a step of the wall clock (NTP, an operator) must not close every
   * session as idle or hold a tarpit's connections for the size of the step.
   */
  readonly now?: () => number;
}

/** Open connections per key (a client key or a remote address). A key leaves the map at zero, so the map is bounded by what is open. */
class Tally {
  private readonly counts = new Map<string, number>();
  private sum = 0;

  get total(): number {
    return this.sum;
  }

  of(key: string): number {
    return this.counts.get(key) ?? 0;
  }

  add(key: string): void {
    this.counts.set(key, this.of(key) + 1);
    this.sum++;
  }

  remove(key: string): void {
    const left = this.of(key) - 1;
    if (left < 0) throw new Error(`server: removing ${key} from a tally that does not hold it`);
    if (left === 0) this.counts.delete(key);
    else this.counts.set(key, left);
    this.sum--;
  }
}

/** What one notice window of an address saw: refusals not answered, and how many of them the tarpit held. */
interface NoticeWindow {
  sinceMs: number;
  quiet: number;
  held: number;
}

type QuietReport = (address: string, quiet: number, held: number) => void;

/** Per blacklisted address: when its last answered refusal was, and how many were refused quietly since. */
class BlacklistNotices {
  private readonly windows = new Map<string, NoticeWindow>();

  /** True when a refusal of `address` now is to be quiet (one was answered less than BLACKLIST_NOTICE_MS ago); counts it. */
  quiet(address: string, nowMs: number): boolean {
    const window = this.windows.get(address);
    if (window === undefined || nowMs - window.sinceMs >= BLACKLIST_NOTICE_MS) return false;
    window.quiet++;
    return true;
  }

  /** A quiet refusal of `address`, counted by quiet() just before, was held in the tarpit rather than reset. */
  held(address: string): void {
    const window = this.windows.get(address);
    if (window !== undefined) window.held++;
  }

  /** A refusal of `address` is answered now: a new window opens; the quiet refusals of the last one, if any, are reported. */
  answered(address: string, nowMs: number, report: QuietReport): void {
    const window = this.windows.get(address);
    if (window !== undefined && window.quiet > 0) report(address, window.quiet, window.held);
    this.windows.delete(address);
    this.windows.set(address, { sinceMs: nowMs, quiet: 0, held: 0 });
    while (this.windows.size > BLACKLIST_NOTICE_ADDRESSES_MAX) {
      const [oldest, left] = this.windows.entries().next().value as [string, NoticeWindow];
      if (left.quiet > 0) report(oldest, left.quiet, left.held);
      this.windows.delete(oldest);
    }
  }

  /** Ends the windows that are over, reporting their quiet refusals. */
  sweep(nowMs: number, report: QuietReport): void {
    for (const [address, window] of this.windows) {
      if (nowMs - window.sinceMs < BLACKLIST_NOTICE_MS) continue;
      if (window.quiet > 0) report(address, window.quiet, window.held);
      this.windows.delete(address);
    }
  }
}

function resolveLimits(overrides: Partial<ServerLimits> = {}): ServerLimits {
  const limits: Record<keyof ServerLimits, number> = { ...SERVER_LIMITS_DEFAULT };
  for (const name of Object.keys(SERVER_LIMITS_DEFAULT) as (keyof ServerLimits)[]) {
    const value = overrides[name] ?? SERVER_LIMITS_DEFAULT[name];
    const least = LIMITS_MAY_BE_ZERO.has(name) ? 0 : 1;
    if (!Number.isInteger(value) || value < least) {
      throw new RangeError(`server limit ${name} must be ${least === 0 ? "a non-negative" : "a positive"} integer, got ${value}`);
    }
    limits[name] = value;
  }
  return limits;
}

/** A socket of the server's listeners: its connection, or null while it has none (refused at open, or held in the tarpit). */
type ServerSocket = Socket<{ conn: FramedConn | null }>;

export class ReplicaServer {
  private listener: TCPSocketListener<{ conn: FramedConn | null }> | null = null;
  private readonly moreListeners: TCPSocketListener<{ conn: FramedConn | null }>[] = [];
  private readonly conns = new Set<FramedConn>();
  private readonly limits: ServerLimits;
  private nextSessionId = 1;
  /** Connections in their handshake, by remote address. */
  private readonly handshakes = new Tally();
  /** The same connections, oldest first: the one to close when a new one needs its slot. */
  private readonly inHandshake = new Set<FramedConn>();
  private readonly newConnections: RateLimiter;
  /** Client sessions whose key the cluster did not name at their AUTH: those a named key may take the slot of. */
  private unnamedSessions = 0;
  /** Client HELLOs answered (each with a signature), in all addresses together. */
  private readonly clientHandshakes: RateLimiter;
  /** The reserve past it for quiet hosts, and each host's allowance of that reserve. */
  private readonly quietHandshakes: RateLimiter;
  private readonly quietHosts: RateLimiter;
  private readonly outputBudget: OutputBudget;
  private sweepTimer: ReturnType<typeof setInterval> | null = null;
  /** Authenticated client sessions, by client key (hex) and by remote address. */
  private readonly clientsByKey = new Tally();
  private readonly clientsByAddress = new Tally();
  private readonly blacklistNotices = new BlacklistNotices();
  /** Connections of hostile addresses held open and unread (tarpit.ts). */
  private readonly tarpit: Tarpit<ServerSocket>;
  /** Client sessions' frames, worked on in bounded turns after the peers' (client-frames.ts). */
  private readonly clientFrames: ClientFrames<FramedConn, DecodeResult>;
  /** Memory held in client frames still arriving, bounded in all and per address (partial-frames.ts). */
  private readonly partialFrames: PartialFrames<FramedConn>;
  /** Frames a client session wrote ahead of less urgent ones that waited longer (egress.ts). */
  private readonly countOvertakes = (frames: number): void => this.options.metrics.inc("egress_overtakes_total", frames);

  constructor(private readonly options: ServerOptions) {
    this.limits = resolveLimits(options.limits);
    this.clientFrames = new ClientFrames<FramedConn, DecodeResult>({
      process: (conn, result) => this.onResult(conn, result),
      peersFirst: () => options.mesh.peersTurn(),
      onBackpressure: () => options.metrics.inc("client_reads_backpressured_total"),
    });
    this.newConnections = new RateLimiter(this.limits.handshakesPerAddressPerSecondMax, this.limits.handshakesPerAddressBurstMax);
    this.clientHandshakes = new RateLimiter(this.limits.clientHandshakesPerSecondMax, this.limits.clientHandshakesBurstMax);
    this.quietHandshakes = new RateLimiter(QUIET_HANDSHAKES_PER_SECOND_MAX, QUIET_HANDSHAKES_PER_SECOND_MAX);
    this.quietHosts = new RateLimiter(QUIET_HOST_HANDSHAKES_PER_SECOND, QUIET_HOST_HANDSHAKES_BURST);
    this.outputBudget = new OutputBudget(this.limits.clientOutputBytesMax, this.limits.clientOutputBytesPerAddressMax);
    this.tarpit = new Tarpit(this.limits.tarpitPerAddressMax, this.limits.tarpitConnectionsMax, this.limits.tarpitHoldMsMax);
    this.partialFrames = new PartialFrames<FramedConn>((conn) => conn.readsHeld, options.partialFrames);
  }

  private now(): number {
    return this.options.now === undefined ? performance.now() : this.options.now();
  }

  /** A client session on `conn` sent an urgent request: its frames go first for a while (client-frames.ts). */
  markUrgent(conn: FramedConn): void {
    this.clientFrames.markUrgent(conn);
  }

  private get accepts(): ListenerRole {
    return this.options.accepts ?? "both";
  }

  /** The port listened on: the configured one, or the one the system chose for port 0. */
  get port(): number {
    if (this.listener === null) throw new Error("server: not listening");
    return this.listener.port;
  }

  listen(): void {
    const server = this;
    if (this.accepts === "peers") {
      this.options.metrics.gauge("peer_handshakes_open", () => this.handshakes.total);
    } else {
      this.options.metrics.gauge("handshakes_open", () => this.handshakes.total);
      this.options.metrics.gauge("client_connections", () => this.clientsByKey.total);
      this.options.metrics.gauge("client_output_bytes", () => this.outputBudget.usedBytes);
      this.options.metrics.gauge("client_partial_frame_bytes", () => this.partialFrames.heldBytes);
      this.options.metrics.gauge("tarpit_connections", () => this.tarpit.size);
    }
    const { clientIdleMsMax, clientStuckMsMax } = this.limits;
    this.sweepTimer = setInterval(
      () => this.sweepClients(),
      Math.max(10, Math.min(1_000, Math.floor(Math.min(clientIdleMsMax, clientStuckMsMax) / 4))),
    );
    const socketHandler: SocketHandler<{ conn: FramedConn | null }> = {
      open(socket) {
        if (server.refusedQuietly(socket)) return;
        const conn = new FramedConn(
          socket as Socket<unknown>,
          server.options.frameBytesMax,
          CLIENT_OUTBOUND_BYTES_MAX,
          socket.remoteAddress,
          () => server.now(),
        );
        socket.data = { conn };
        server.onOpen(conn);
      },
      data(socket, chunk) {
        const conn = socket.data.conn;
        if (conn !== null) server.onData(conn, chunk);
      },
      drain(socket) {
        socket.data.conn?.drain();
      },
      close(socket) {
        const conn = socket.data.conn;
        if (conn !== null) server.onClose(conn);
        else server.tarpit.release(socket);
      },
      error(_socket, error) {
        server.options.log.debug("connection error", { error: error.message });
      },
    };
    const open = (host: string, port: number): TCPSocketListener<{ conn: FramedConn | null }> => {
      try {
        return Bun.listen<{ conn: FramedConn | null }>({ hostname: host, port, data: { conn: null }, socket: socketHandler });
      } catch (error) {
        // Which of several addresses failed, for the message that explains why.
        if (error !== null && typeof error === "object") Object.assign(error, { listenAddress: formatAddress(host, port) });
        throw error;
      }
    };
    this.listener = open(this.options.host, this.options.port);
    try {
      for (const more of this.options.alsoListen ?? []) this.moreListeners.push(open(more.host, more.port));
    } catch (error) {
      this.stop();
      throw error;
    }
  }

  /**
   * A connection from a blacklisted address on a clients-only port, while one refusal of
   * that address was answered less than BLACKLIST_NOTICE_MS ago: counted, and held in the
   * tarpit if it has room, else reset, before anything is allocated for it, written to it
   * or read from it.
   */
  private refusedQuietly(socket: ServerSocket): boolean {
    const admission = this.options.admission;
    if (this.accepts !== "clients" || admission === undefined) return false;
    const address = socket.remoteAddress;
    if (!admission.isAddressBlacklisted(address) || !this.blacklistNotices.quiet(address, this.now())) return false;
    this.options.metrics.inc("clients_blacklisted_refused_total");
    if (this.holdInTarpit(socket, address)) this.blacklistNotices.held(address);
    else socket.terminate();
    return true;
  }

  /** Holds `socket` (from `address`, which is blacklisted) in the tarpit if it has room; counted. */
  private holdInTarpit(socket: ServerSocket, address: string): boolean {
    if (!this.tarpit.hold(socket, address, this.now())) return false;
    this.options.metrics.inc("clients_tarpitted_total");
    return true;
  }

  private reportQuietRefusals = (address: string, connections: number, tarpitted: number): void => {
    this.options.audit?.warn("client-refused", "connections refused without an answer: blacklisted", {
      address,
      connections,
      tarpitted,
      reason: "address blacklisted; at most one refusal a second is answered, the others are held unread (the tarpit) or reset",
    });
  };

  stop(): void {
    if (this.sweepTimer !== null) clearInterval(this.sweepTimer);
    this.sweepTimer = null;
    this.listener?.stop(true);
    this.listener = null;
    for (const listener of this.moreListeners.splice(0)) listener.stop(true);
    for (const conn of this.conns) conn.close();
    this.tarpit.clear();
    this.clientFrames.stop();
  }

  private onOpen(conn: FramedConn): void {
    const state: ConnState = {
      phase: "hello",
      handshake: null,
      onPeerFrame: null,
      clientHello: null,
      transcript: null,
      clientKeys: null,
      session: null,
      timer: null,
      receivedMs: this.now(),
      named: false,
    };
    conn.state = state;
    this.conns.add(conn);
    // On a clients-only port a blacklisted address costs one lookup (on a shared port a
    // replica may call from it, so the address is judged at a client's HELLO instead).
    const blacklisted = this.accepts === "clients" ? (this.options.admission?.addressRefusal(conn.remote) ?? null) : null;
    if (blacklisted !== null) {
      state.phase = "closed";
      this.blacklistNotices.answered(conn.remote, this.now(), this.reportQuietRefusals);
      this.refuseBlacklisted(conn, null, blacklisted);
      return;
    }
    const refusal = this.handshakeRefusal(conn.remote);
    if (refusal !== null) {
      state.phase = "closed";
      this.options.metrics.inc("handshakes_refused_total");
      this.options.audit?.warn("client-refused", "connection refused", { address: conn.remote, reason: refusal });
      conn.closeWith({ type: FrameType.ERROR, body: { code: "OVERLOADED", reason: refusal } });
      return;
    }
    if (this.handshakes.total >= this.limits.handshakesMax) this.evictOldestHandshake();
    state.handshake = new FrameDecoder({
      frameBytesMax: Math.min(this.limits.handshakeFrameBytesMax, this.options.frameBytesMax),
      copyPayloads: true,
    });
    this.handshakes.add(conn.remote);
    this.inHandshake.add(conn);
    state.timer = setTimeout(() => this.onHandshakeDeadline(conn, state), this.limits.handshakeMsMax);
  }

  /** Whether a client HELLO from `address` is answered now: within the bound in all, or from the reserve for a quiet host. */
  private handshakeAnswered(address: string): boolean {
    const now = this.now();
    if (this.clientHandshakes.take("all", 1, now)) return true;
    return this.quietHosts.take(addressGroup(address), 1, now) && this.quietHandshakes.take("all", 1, now);
  }

  /** Why a new connection from `address` may not start a handshake now, or null if it may. */
  private handshakeRefusal(address: string): string | null {
    const { handshakesPerAddressMax, handshakesPerAddressPerSecondMax } = this.limits;
    const fromAddress = this.handshakes.of(address);
    if (fromAddress >= handshakesPerAddressMax) {
      return `${fromAddress} connections awaiting authentication from this address; at most ${handshakesPerAddressMax}`;
    }
    if (!this.newConnections.take(address, 1, this.now())) {
      return `more than ${handshakesPerAddressPerSecondMax} new connections a second from this address`;
    }
    return null;
  }

  /** The handshake slots are full: the oldest connection still in its handshake gives up its slot. */
  private evictOldestHandshake(): void {
    const oldest = this.inHandshake.values().next().value as FramedConn | undefined;
    if (oldest === undefined) return;
    this.options.metrics.inc("handshakes_evicted_total");
    this.endHandshake(oldest, oldest.state as ConnState);
    oldest.closeWith({
      type: FrameType.ERROR,
      body: {
        code: "OVERLOADED",
        reason: `${this.limits.handshakesMax} connections awaiting authentication; the oldest is closed for a new one`,
      },
    });
  }

  private onHandshakeDeadline(conn: FramedConn, state: ConnState): void {
    state.timer = null;
    if (state.handshake === null) return;
    this.options.metrics.inc("handshake_timeouts_total");
    this.options.audit?.warn("handshake-failed", "handshake failed", { address: conn.remote, reason: "not authenticated in time" });
    conn.close();
  }

  /** The connection has authenticated (or is closing): it leaves the handshake caps and the small frame bound. */
  private endHandshake(conn: FramedConn, state: ConnState): void {
    if (state.timer !== null) clearTimeout(state.timer);
    state.timer = null;
    if (state.handshake === null) return;
    state.handshake = null;
    this.handshakes.remove(conn.remote);
    this.inHandshake.delete(conn);
  }

  private onClose(conn: FramedConn): void {
    const state = conn.state as ConnState;
    this.conns.delete(conn);
    this.clientFrames.forget(conn);
    this.partialFrames.remove(conn);
    conn.release();
    this.endHandshake(conn, state);
    if (state.phase === "peer") this.options.mesh.inboundClosed(conn);
    this.releaseSession(conn);
    state.phase = "closed";
  }

  /** A client session gives up its slot (once: at its close, or earlier when evicted). */
  private releaseSession(conn: FramedConn): void {
    const state = conn.state as ConnState;
    const session = state.session;
    if (session === null) return;
    state.session = null;
    state.phase = "closed";
    if (!state.named) this.unnamedSessions--;
    this.clientsByKey.remove(session.keyHex);
    this.clientsByAddress.remove(conn.remote);
    this.options.clients.onClientClosed(session);
  }

  private onData(conn: FramedConn, chunk: Uint8Array): void {
    if (conn.isClosed) return;
    const state = conn.state as ConnState;
    state.receivedMs = this.now();
    if (state.handshake === null) this.onFramesRead(conn, state, conn.decoder.push(chunk));
    else this.onHandshakeData(conn, state, state.handshake, chunk);
  }

  /**
   * Frames cut from what a connection sent after its handshake. A client session's wait
   * in its queue of the client scheduler (client-frames.ts), which works on them in
   * bounded turns after the peers'; a peer's go to the mesh at once (its inbox queues and
   * schedules them, peer-inbox.ts).
   */
  private onFramesRead(conn: FramedConn, state: ConnState, results: DecodeResult[]): void {
    if (state.phase === "client") {
      this.clientFrames.push(conn, results, resultBytes);
      return this.cutPartialFrames(this.partialFrames.update(conn, conn.remote, conn.decoder, this.now()));
    }
    // Bun may hand over bytes read before a pause: they wait behind what is held.
    if (conn.readPaused || conn.holding) conn.holdUntilResumed(() => this.onFrames(conn, results));
    else this.onFrames(conn, results);
  }

  /**
   * Cuts handshake frames with the small bound. The frame that completes the handshake may
   * share its chunk with session frames (an initiator MAY send them right after AUTH);
   * the bytes after it go to the connection's own decoder. Where that frame ends in the
   * chunk follows from the frames cut: each took FRAME_HEADER_BYTES plus its payload, and
   * the first of them began with the bytes the decoder held from earlier chunks.
   */
  private onHandshakeData(conn: FramedConn, state: ConnState, handshake: FrameDecoder, chunk: Uint8Array): void {
    const other = state.phase === "hello" && handshake.bufferedBytes === 0 ? otherProtocol(chunk) : null;
    if (other !== null) return this.answerOtherProtocol(conn, state, other);
    let end = -handshake.bufferedBytes;
    for (const result of handshake.push(chunk)) {
      if (result.ok) end += FRAME_HEADER_BYTES + result.payload.length;
      this.onResult(conn, result);
      if (conn.isClosed) return;
      if (state.handshake !== null) continue;
      if (end < 0 || end > chunk.length) throw new Error(`server: handshake ended at ${end}, outside a chunk of ${chunk.length} bytes`);
      if (end < chunk.length) this.onFramesRead(conn, state, conn.decoder.push(chunk.subarray(end)));
      return;
    }
  }

  /**
   * Handles the frames cut from one chunk, in order. A connection whose reads were paused
   * meanwhile (a client over its budget, replica.ts) keeps the rest, unprocessed, until
   * it is resumed: what was already read is not worked on while the pause lasts.
   */
  private onFrames(conn: FramedConn, results: DecodeResult[]): void {
    for (let i = 0; i < results.length; i++) {
      if (conn.isClosed) return;
      if (conn.readPaused) {
        conn.holdUntilResumed(() => this.onFrames(conn, results.slice(i)));
        return;
      }
      this.onResult(conn, results[i] as DecodeResult);
    }
  }

  /**
   * An HTTP request where fitb's binary protocol is spoken (an operator's curl or browser, a
   * scraper given the wrong port): answered in HTTP, saying where HTTP is served, and closed
   * without reading more; a TLS handshake (https://) is closed. Not taken for a hostile
   * frame: blacklisting the address would also lock out the relay and the probes on the host
   * the operator typed it on, for a minute.
   */
  private answerOtherProtocol(conn: FramedConn, state: ConnState, protocol: "http" | "tls"): void {
    state.phase = "closed";
    this.options.metrics.inc("http_requests_refused_total");
    const port = this.accepts === "peers" ? "peer port" : "client port";
    const what = protocol === "http" ? "an HTTP request" : "a TLS handshake (https://)";
    this.options.audit?.warn("client-refused", `connection refused: ${what}`, {
      address: conn.remote,
      reason: `${what} on the ${port} (HTTP is served only on --metrics)`,
    });
    if (protocol === "tls") {
      // Nothing a TLS client would read: it says the handshake failed.
      conn.close();
      return;
    }
    const text =
      `fitb replica ${this.options.self}: this ${port} speaks fitb's binary protocol (wire/PROTOCOL.md), not HTTP.\n` +
      "Publish and subscribe with fitb pub, fitb sub or a fitb relay. A replica serves HTTP (/metrics, /status)\n" +
      "only where it was started with --metrics HOST:PORT.\n";
    conn.closeWithRaw(httpResponse(400, "Bad Request", text));
  }

  private refuseBlacklisted(conn: FramedConn, key: Uint8Array | null, reason: string): void {
    this.options.metrics.inc("clients_blacklisted_refused_total");
    this.options.audit?.warn("client-refused", "connection refused: blacklisted", {
      ...(key === null ? {} : { key }),
      address: conn.remote,
      reason,
    });
    conn.closeWith({ type: FrameType.ERROR, body: { code: "UNAUTHORIZED", reason } });
  }

  /**
   * A client connection sent a frame that does not decode or is over the size limit: no
   * correct client does. Its address (and key, once authenticated) are blacklisted, and it
   * is answered `refusal` and closed; but when its address was blacklisted already (by
   * another of its connections: this one opened before, or on a shared port, where
   * addresses are judged at HELLO), it is held in the tarpit, unanswered, if that has room.
   * Peer connections are neither: they are closed (the mesh counts and logs it on an
   * authenticated link), and the peer not muted, since nothing authenticates a peer link's
   * frames before the MAC inside PEER (peers.ts refuseInbound).
   */
  private onHostileFrame(conn: FramedConn, reason: string, refusal: Frame): void {
    const state = conn.state as ConnState;
    if (state.phase === "peer") {
      this.options.mesh.refuseInbound(
        conn,
        `a frame that does not decode or is too large (${clipUtf8(reason, REFUSED_FRAME_REASON_BYTES)})`,
      );
      return;
    }
    const admission = this.options.admission;
    if (admission === undefined || state.phase === "peer-auth") {
      conn.closeWith(refusal);
      return;
    }
    const again = admission.isAddressBlacklisted(conn.remote);
    const why = `a frame that does not decode or is too large (${clipUtf8(reason, REFUSED_FRAME_REASON_BYTES)})`;
    const key = state.session?.key ?? null;
    admission.blacklist(state.session?.keyHex ?? null, conn.remote, why);
    this.options.metrics.inc("clients_blacklisted_total");
    const held = again && this.detachToTarpit(conn);
    this.options.audit?.warn("client-blacklisted", "client address blacklisted", {
      ...(key === null ? {} : { key }),
      address: conn.remote,
      reason: why,
      ...(held ? { tarpitted: true } : {}),
    });
    if (!held) conn.closeWith(refusal);
  }

  /**
   * Moves `conn`'s socket to the tarpit if it has room for one more from its address: the
   * connection ends here (its slots freed, its session closed) while its socket stays open
   * and unread. False, and nothing done, without room.
   */
  private detachToTarpit(conn: FramedConn): boolean {
    if (!this.tarpit.hasRoomFor(conn.remote)) return false;
    const socket = conn.detach() as ServerSocket;
    socket.data = { conn: null };
    this.onClose(conn);
    if (this.holdInTarpit(socket, conn.remote)) return true;
    throw new Error(`server: the tarpit had room for ${conn.remote}, then none`);
  }

  private onResult(conn: FramedConn, result: DecodeResult): void {
    if (!result.ok) {
      this.options.metrics.inc("bad_frames_total");
      this.onHostileFrame(conn, result.error.reason, {
        type: FrameType.ERROR,
        body: { code: errorCodeFor(result.error), reason: result.error.reason },
      });
      return;
    }
    let payload = result.payload;
    if (conn.framing !== null) {
      const opened = conn.framing.opener.open(result.type, payload);
      if (opened === null) return this.onBadMac(conn, result.type);
      payload = opened;
    }
    const state = conn.state as ConnState;
    if (!PHASE_FRAME_TYPES[state.phase].has(result.type) && frameTypeName(result.type) !== undefined) {
      return this.onUnexpectedType(conn, state, result.type);
    }
    const decoded = decodeFrameBody(result.type, payload);
    if (!decoded.ok) {
      this.options.metrics.inc("bad_frames_total");
      this.onHostileFrame(conn, decoded.error.reason, {
        type: FrameType.ERROR,
        body: { code: errorCodeFor(decoded.error), reason: decoded.error.reason },
      });
      return;
    }
    this.onFrame(conn, decoded.frame);
  }

  /**
   * A client frame whose MAC does not verify for the next frame counter: altered,
   * replayed, reordered or removed in transit. It is never processed, and the session
   * cannot go on (PROTOCOL.md 5.2): the connection is closed; the client reconnects.
   */
  private onBadMac(conn: FramedConn, type: number): void {
    const state = conn.state as ConnState;
    this.options.metrics.inc("client_frames_bad_mac_total");
    // Anyone with a key can make a session and send a bad MAC, as often as handshakes
    // allow: the line goes through the audit log's bound on lines per window.
    const fields = {
      address: conn.remote,
      key: state.session?.keyHex,
      reason: "bad MAC",
      frame: (conn.framing?.opener.opened ?? 0) + 1,
      type,
    };
    const msg = "client frame failed its MAC check; closing the connection";
    if (this.options.audit !== undefined) this.options.audit.warn("client-refused", msg, fields);
    else this.options.log.warn(msg, fields);
    conn.closeWith({
      type: FrameType.ERROR,
      body: { code: "BAD_MAC", reason: "a frame failed its MAC check (altered, replayed or reordered)" },
    });
  }

  private onFrame(conn: FramedConn, frame: Frame): void {
    const state = conn.state as ConnState;
    switch (state.phase) {
      case "hello":
        return this.onHello(conn, state, frame);
      case "client-auth":
        return this.onClientAuth(conn, state, frame);
      case "peer-auth":
        return this.onPeerAuth(conn, state, frame);
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

  /**
   * A frame of a type the connection's phase does not take (PHASE_FRAME_TYPES), refused by
   * its type byte: answered as each phase answers a wrong frame, without decoding it.
   */
  private onUnexpectedType(conn: FramedConn, state: ConnState, type: number): void {
    switch (state.phase) {
      case "hello":
        return this.refuseNotHello(conn);
      case "client-auth":
        return this.refuseClientNotAuth(conn, state);
      case "peer-auth":
        return this.refusePeerNotAuth(conn);
      case "client":
        this.options.metrics.inc("bad_frames_total");
        conn.closeWith({
          type: FrameType.ERROR,
          body: { code: "BAD_FRAME", reason: `frame type 0x${type.toString(16)} is not for a replica's client port` },
        });
        return;
      case "peer":
        return this.options.mesh.refuseInbound(conn, `a frame of type 0x${type.toString(16)}: a peer link carries only PEER and PING`);
      case "closed":
        return;
      default: {
        const unreachable: never = state.phase;
        return unreachable;
      }
    }
  }

  private refuseNotHello(conn: FramedConn): void {
    conn.closeWith({ type: FrameType.ERROR, body: { code: "UNAUTHORIZED", reason: "the first frame must be HELLO" } });
  }

  private onHello(conn: FramedConn, state: ConnState, frame: Frame): void {
    if (frame.type !== FrameType.HELLO) return this.refuseNotHello(conn);
    const isPeer = frame.body.role === "replica";
    if (this.accepts !== "both" && isPeer !== (this.accepts === "peers")) return this.refuseWrongPort(conn, isPeer, frame.body);
    if (isPeer) this.onPeerHello(conn, state, frame.body);
    else this.onClientHello(conn, state, frame.body);
  }

  /** A replica's HELLO on the client port, or a client's on the peer port: refused, saying which port to use. */
  private refuseWrongPort(conn: FramedConn, isPeer: boolean, hello: Hello): void {
    const where = this.options.otherPort === undefined ? "" : ` (port ${this.options.otherPort})`;
    const reason = isPeer
      ? `this is replica ${this.options.self}'s client port; replicas connect to its peer_port${where}`
      : `this is replica ${this.options.self}'s peer port; clients connect to its port${where}`;
    this.options.metrics.inc("handshakes_wrong_port_total");
    this.options.audit?.warn("handshake-failed", "handshake refused on the wrong port", { key: hello.key, address: conn.remote, reason });
    conn.closeWith({ type: FrameType.ERROR, body: { code: "UNAUTHORIZED", reason } });
  }

  /**
   * A HELLO that names a replica proves nothing (a replica's key is public), so the
   * connection stays under the handshake deadline and caps until the mesh has verified AUTH.
   */
  private onPeerHello(conn: FramedConn, state: ConnState, hello: Hello): void {
    const handler = this.options.mesh.acceptInbound(conn, hello);
    if (handler === null) return;
    state.phase = "peer-auth";
    state.onPeerFrame = handler;
  }

  private refusePeerNotAuth(conn: FramedConn): void {
    this.options.metrics.inc("peer_handshake_failed_total");
    this.options.audit?.warn("handshake-failed", "peer handshake failed", {
      address: conn.remote,
      reason: "the frame after HELLO was not AUTH",
    });
    conn.closeWith({ type: FrameType.ERROR, body: { code: "UNAUTHORIZED", reason: "the frame after HELLO must be AUTH" } });
  }

  private onPeerAuth(conn: FramedConn, state: ConnState, frame: Frame): void {
    if (frame.type !== FrameType.AUTH) return this.refusePeerNotAuth(conn);
    (state.onPeerFrame as (frame: Frame) => void)(frame);
    // The mesh closes the connection when AUTH does not verify; still open means it did.
    if (conn.isClosed) return;
    this.endHandshake(conn, state);
    state.phase = "peer";
  }

  private onClientHello(conn: FramedConn, state: ConnState, hello: Hello): void {
    const keyHex = Buffer.from(hello.key).toString("hex");
    // Before the replica signs anything for it: a key outside the allow-list costs nothing.
    const allowed = this.options.clientKeysAllowed ?? null;
    if (allowed !== null && !allowed.has(keyHex)) {
      this.options.metrics.inc("client_auth_failed_total");
      this.options.audit?.warn("handshake-failed", "client handshake failed", {
        key: hello.key,
        address: conn.remote,
        reason: "key not in client_keys",
      });
      conn.closeWith({ type: FrameType.ERROR, body: { code: "UNAUTHORIZED", reason: "this key is not in the cluster's client_keys" } });
      return;
    }
    const admission = this.options.admission;
    const blacklisted =
      admission === undefined
        ? null
        : (admission.keyRefusal(keyHex) ?? (this.accepts === "both" ? admission.addressRefusal(conn.remote) : null));
    if (blacklisted !== null) return this.refuseBlacklisted(conn, hello.key, blacklisted);
    // Checked here, before the signature is made, and again once AUTH has proved the key.
    const refusal = this.clientRefusal(keyHex, conn.remote);
    if (refusal !== null) return this.refuseClient(conn, refusal);
    if (!this.handshakeAnswered(conn.remote)) {
      return this.refuseClient(conn, `more than ${this.limits.clientHandshakesPerSecondMax} client handshakes a second in all; try again`);
    }
    // PROTOCOL.md 5.2: an ephemeral key exchange gives the session keys every later frame is MACed with.
    const eph = generateEphemeralKeyPair();
    const unsigned = {
      // Answered in the initiator's version (the schema refused any below PROTOCOL_VERSION_MIN).
      v: hello.v,
      replica: this.options.self,
      key: this.options.key.publicKey,
      nonce: new Uint8Array(randomBytes(NONCE_BYTES)),
      eph: eph.publicKey,
    } as const;
    const transcript = sessionTranscript(hello, unsigned);
    try {
      state.clientKeys = deriveSessionKeys(x25519SharedSecret(eph, hello.eph), transcript, "responder", "client");
    } catch (error) {
      if (!(error instanceof SessionCryptoError)) throw error;
      this.options.metrics.inc("client_auth_failed_total");
      conn.closeWith({ type: FrameType.ERROR, body: { code: "UNAUTHORIZED", reason: error.message } });
      return;
    }
    conn.send({
      type: FrameType.HELLO_ACK,
      body: { ...unsigned, sig: signDomain(this.options.key, DOMAIN_SESSION_RESPONDER, transcript) },
    });
    state.clientHello = hello;
    state.transcript = transcript;
    state.phase = "client-auth";
  }

  private refuseClientNotAuth(conn: FramedConn, state: ConnState): void {
    this.options.metrics.inc("client_auth_failed_total");
    this.options.audit?.warn("handshake-failed", "client handshake failed", {
      key: (state.clientHello as Hello).key,
      address: conn.remote,
      reason: "the frame after HELLO was not AUTH",
    });
    conn.closeWith({ type: FrameType.ERROR, body: { code: "UNAUTHORIZED", reason: "the frame after HELLO must be AUTH" } });
  }

  private onClientAuth(conn: FramedConn, state: ConnState, frame: Frame): void {
    const hello = state.clientHello as Hello;
    if (frame.type !== FrameType.AUTH) return this.refuseClientNotAuth(conn, state);
    if (!verifyDomain(hello.key, DOMAIN_SESSION_INITIATOR, state.transcript as Uint8Array, frame.body.sig)) {
      // PROTOCOL.md §5.1 step 4.
      this.options.metrics.inc("client_auth_failed_total");
      this.options.audit?.warn("handshake-failed", "client handshake failed", {
        key: hello.key,
        address: conn.remote,
        reason: "AUTH does not verify for the HELLO's key",
      });
      conn.closeWith({ type: FrameType.ERROR, body: { code: "BAD_SIGNATURE", reason: "AUTH does not verify for the HELLO's key" } });
      return;
    }
    // AUTH was the last frame without a MAC, in both directions: from here on, even a
    // refusal is sealed, so the client can tell it from one an attacker made up.
    conn.framing = sessionFraming(state.clientKeys as SessionKeys);
    // A fan-out sends many frames to one connection in a turn: one socket write for them,
    // the most urgent first (egress.ts).
    conn.coalesceWrites(this.countOvertakes);
    state.clientKeys = null;
    const keyHex = Buffer.from(hello.key).toString("hex");
    // Other handshakes with the same key or address may have finished since the HELLO.
    const refusal = this.clientRefusal(keyHex, conn.remote);
    if (refusal !== null) return this.refuseClient(conn, refusal);
    // Proved now: a key the cluster names takes the slot of one it does not name.
    if (this.clientsByKey.total >= this.limits.clientConnectionsMax) this.evictUnknownClient();
    state.named = this.isKnownClient(keyHex);
    if (!state.named) this.unnamedSessions++;
    this.endHandshake(conn, state);
    state.phase = "client";
    conn.useBudget(this.outputBudget);
    state.session = { conn, key: hello.key, keyHex, id: this.nextSessionId++, version: hello.v };
    this.clientsByKey.add(keyHex);
    this.clientsByAddress.add(conn.remote);
  }

  /**
   * Closes client sessions that went quiet (no frame, not even a PING, for clientIdleMsMax)
   * or stopped reading (queued bytes untouched for clientStuckMsMax): each holds a slot
   * and, when stuck, memory, which a client that is gone or hostile would keep for ever.
   */
  private sweepClients(): void {
    const now = this.now();
    this.blacklistNotices.sweep(now, this.reportQuietRefusals);
    this.tarpit.expire(now);
    this.cutPartialFrames(this.partialFrames.slow(now));
    const { clientIdleMsMax, clientStuckMsMax } = this.limits;
    for (const conn of [...this.conns]) {
      const state = conn.state as ConnState;
      if (state.phase !== "client" || conn.isClosed) continue;
      if (conn.stalledMs() > clientStuckMsMax) {
        this.options.metrics.inc("clients_stuck_closed_total");
        this.options.log.info("client closed: it takes none of what is queued for it", {
          remote: conn.remote,
          queuedBytes: conn.pendingBytes,
        });
        conn.close();
      } else if (now - state.receivedMs > clientIdleMsMax) {
        this.options.metrics.inc("clients_idle_closed_total");
        this.options.log.info("client closed: idle", { remote: conn.remote, idleMs: now - state.receivedMs });
        conn.closeWith({
          type: FrameType.ERROR,
          body: { code: "TIMEOUT", reason: `nothing received for ${clientIdleMsMax} ms; clients PING while idle` },
        });
      }
    }
  }

  /** Closes the sessions whose unfinished frames partial-frames.ts cut, saying why. */
  private cutPartialFrames(cuts: readonly CutFrame<FramedConn>[]): void {
    for (const { conn, reason } of cuts) {
      if (conn.isClosed) continue;
      this.options.metrics.inc("client_partial_frames_cut_total");
      this.options.log.info("client closed: its frame still arriving was cut", { remote: conn.remote, reason });
      conn.closeWith({ type: FrameType.ERROR, body: { code: "OVERLOADED", reason } });
    }
  }

  /**
   * Closes the client sessions, and the handshakes past HELLO, whose key is no longer in
   * `clientKeysAllowed` (the caller changed the set: a replica key rotated away or a removed
   * replica's): each key is logged once with its count and why, each session counted in
   * clients_key_revoked_closed_total. Returns how many were closed.
   */
  closeClientsNotAllowed(why: string): number {
    const allowed = this.options.clientKeysAllowed ?? null;
    if (allowed === null) return 0;
    const closedByKey = new Map<string, number>();
    for (const conn of [...this.conns]) {
      const state = conn.state as ConnState;
      if (conn.isClosed || (state.phase !== "client" && state.phase !== "client-auth")) continue;
      const key = state.session?.key ?? state.clientHello?.key;
      if (key === undefined) continue;
      const keyHex = Buffer.from(key).toString("hex");
      if (allowed.has(keyHex)) continue;
      this.options.metrics.inc("clients_key_revoked_closed_total");
      closedByKey.set(keyHex, (closedByKey.get(keyHex) ?? 0) + 1);
      conn.closeWith({ type: FrameType.ERROR, body: { code: "UNAUTHORIZED", reason: `this key may no longer open a session: ${why}` } });
    }
    for (const [keyHex, sessions] of closedByKey) {
      this.options.log.warn("client sessions closed: their key left the allow-list", {
        key: formatPublicKey(Buffer.from(keyHex, "hex")),
        sessions,
        reason: why,
      });
    }
    return [...closedByKey.values()].reduce((sum, count) => sum + count, 0);
  }

  /**
   * Sends `frame` to every authenticated client session (a notice such as EPOCH, a few
   * bytes each, under each session's own output bound). Returns how many took it.
   */
  sendToClients(frame: Frame): number {
    let sent = 0;
    for (const conn of this.conns) {
      const state = conn.state as ConnState;
      if (state.phase !== "client" || conn.isClosed) continue;
      if (conn.send(frame)) sent++;
    }
    return sent;
  }

  private isKnownClient(keyHex: string): boolean {
    return this.options.knownClient?.(keyHex) === true;
  }

  /**
   * Why one more client session with this key from this address is refused now, or null if
   * it is not. With every slot taken, a key the cluster names (knownClient) is refused only
   * when no session of a key it does not name is left to give up its slot.
   */
  private clientRefusal(keyHex: string, address: string): string | null {
    const { clientConnectionsMax, clientConnectionsPerKeyMax, clientConnectionsPerAddressMax } = this.limits;
    // A count, not a scan: this runs at every HELLO, before the key is proven.
    if (this.clientsByKey.total >= clientConnectionsMax && !(this.unnamedSessions > 0 && this.isKnownClient(keyHex))) {
      return `${this.clientsByKey.total} client connections open; at most ${clientConnectionsMax}`;
    }
    const withKey = this.clientsByKey.of(keyHex);
    if (withKey >= clientConnectionsPerKeyMax) {
      return `${withKey} connections open with this client key; at most ${clientConnectionsPerKeyMax}`;
    }
    const fromAddress = this.clientsByAddress.of(address);
    if (fromAddress >= clientConnectionsPerAddressMax) {
      return `${fromAddress} client connections open from this address; at most ${clientConnectionsPerAddressMax}`;
    }
    return null;
  }

  /**
   * The session to close for a key the cluster names when every slot is taken: one whose
   * key it does not name, from the address holding the most client sessions (made-up keys
   * come many to an address), the newest there; null when every session's key is named.
   */
  private unknownClientToEvict(): FramedConn | null {
    let victim: FramedConn | null = null;
    let victimAddressSessions = 0;
    for (const conn of this.conns) {
      const state = conn.state as ConnState;
      if (state.phase !== "client" || state.session === null || state.named) continue;
      // One already closing (its close not seen yet) gives its slot first: no other need go.
      if (conn.isClosed) return conn;
      const sessions = this.clientsByAddress.of(conn.remote);
      // Later in the set is newer: at an equal count the newest wins.
      if (sessions >= victimAddressSessions) {
        victim = conn;
        victimAddressSessions = sessions;
      }
    }
    return victim;
  }

  private evictUnknownClient(): void {
    const victim = this.unknownClientToEvict();
    if (victim === null) return;
    if (victim.isClosed) return this.releaseSession(victim);
    this.options.metrics.inc("clients_evicted_total");
    const key = (victim.state as ConnState).session?.key;
    this.options.audit?.warn("client-refused", "client session closed for a key the cluster names", {
      ...(key === undefined ? {} : { key }),
      address: victim.remote,
      reason: "every client slot taken; its key is not one the cluster names",
    });
    victim.closeWith({
      type: FrameType.ERROR,
      body: {
        code: "OVERLOADED",
        reason: `${this.limits.clientConnectionsMax} client connections open: a session of a key the cluster does not name gives its place to one it names`,
      },
    });
    // Its slot is free now, not when its socket's close arrives.
    this.releaseSession(victim);
  }

  private refuseClient(conn: FramedConn, reason: string): void {
    this.options.metrics.inc("clients_refused_total");
    this.options.audit?.warn("client-refused", "client session refused", { address: conn.remote, reason });
    conn.closeWith({ type: FrameType.ERROR, body: { code: "OVERLOADED", reason } });
  }
}

/**
 * Which other protocol a connection's first bytes begin, if any: an HTTP request
 * (HTTP_REQUEST_START), or a TLS handshake (a record of type 22, handshake, version 3.x:
 * `curl https://...`). Read as a frame's length, either is hundreds of megabytes or more.
 */
function otherProtocol(chunk: Uint8Array): "http" | "tls" | null {
  if (chunk.length >= 2 && chunk[0] === TLS_HANDSHAKE_RECORD && chunk[1] === TLS_MAJOR_VERSION) return "tls";
  const head = chunk.subarray(0, HTTP_METHOD_BYTES_MAX);
  return HTTP_REQUEST_START.test(String.fromCharCode(...head)) ? "http" : null;
}

/** A whole HTTP/1.1 response that closes its connection, with a plain-text body. */
function httpResponse(status: number, reason: string, text: string): Uint8Array {
  const body = new TextEncoder().encode(text);
  const head = `HTTP/1.1 ${status} ${reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`;
  const bytes = new Uint8Array(head.length + body.length);
  bytes.set(new TextEncoder().encode(head), 0);
  bytes.set(body, head.length);
  return bytes;
}

/** What a cut frame holds (its payload; a frame that did not decode holds nothing). */
function resultBytes(result: DecodeResult): number {
  return result.ok ? result.payload.length : 0;
}
