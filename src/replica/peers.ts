/**
 * The peer mesh: an authenticated, MAC-protected link to every other replica.
 *
 * Each replica dials every other one and sends only on the link it dialled; it receives on
 * the links others dialled to it. Two one-way links per pair avoid the tie-breaking a
 * single shared link would need when both sides dial at once, at the cost of one more
 * socket per pair (n is small). A link whose handshake or MAC fails is closed and the
 * failure counted; the dialler reconnects with capped exponential backoff.
 *
 * What flows is opaque bytes (`msg`): the replica runtime encodes its own envelopes. The
 * mesh guarantees only who sent it (`from`), integrity, and no replay within a session.
 *
 * A multi-homed peer (`hosts` in the cluster file) is dialled at its preferred address
 * (`host`) first, and at the next one when a dial fails or an open link goes silent: on
 * such links the dialler PINGs every PEER_PING_MS and gives the link up after
 * PEER_SILENCE_MS without a PONG. While on another address the dialler tries the
 * preferred one again in the background (a full handshake on a second connection, every
 * PEER_PREFERRED_RETRY_MS_MIN, doubling to _MAX while it fails) and, once that handshake
 * is done, moves the link onto it: the peer replaces its inbound session by the new one,
 * as after a reconnect. A peer with one address is PINGed too, and reported silent (not
 * up, in status and peer_up) after as long, but its link is kept open: it has no other
 * address to go to, and a peer that was only paused catches up from what TCP holds.
 *
 * The group starts as the cluster file's replicas and then follows the replicated
 * membership (`setGroup`, called by the replica runtime as changes are decided and take
 * effect): a replica added by add-replica is dialled and its handshake accepted with the
 * key the membership names, a removed one's links are closed, and a key that a
 * rotate-replica-key replaced (or a removed replica's) is refused with its own reason,
 * counted in peer_handshake_retired_key_total.
 */
import { randomBytes } from "node:crypto";
import type { Socket } from "bun";
import { formatAddress, type ReplicaEntry, replicaHosts } from "../config/cluster.ts";
import { configDifferences, withoutAddresses } from "../config/digest.ts";
import { signDomain, verifyDomain } from "../crypto/ed25519.ts";
import { bytesEqual, toHex } from "../crypto/encoding.ts";
import type { SigningKey } from "../crypto/keys.ts";
import {
  checkMac,
  deriveSessionKeys,
  generateEphemeralKeyPair,
  macFrame,
  x25519SharedSecret,
  type EphemeralKeyPair,
  type SessionKeys,
} from "../crypto/session.ts";
import type { DecodeResult } from "../../wire/frame.ts";
import { encodePeerFrame, peerFrameParts } from "../../wire/hot.ts";
import { type ConfigDigests, decodeFrameBody, type Frame, type Hello, type HelloAck } from "../../wire/schemas.ts";
import { sessionTranscript } from "../../wire/session.ts";
import { DOMAIN_SESSION_INITIATOR, DOMAIN_SESSION_RESPONDER, FrameType, NONCE_BYTES, PROTOCOL_VERSION } from "../../wire/types.ts";
import { FramedConn } from "./framed.ts";
import type { AuditLog } from "./audit.ts";
import type { Log } from "./log.ts";
import type { Metrics } from "./metrics.ts";
import {
  type MuteReason,
  PEER_BYTES_PER_SECOND_MAX,
  PEER_FLOOD_MUTE_MS,
  PEER_MESSAGES_PER_SECOND_MAX,
  PEER_MUTE_MS,
  PEER_MUTE_MS_MAX,
  PeerInbox,
  type PeerInboxLimits,
} from "./peer-inbox.ts";

/** Reconnect backoff: first wait, cap. */
export const PEER_RECONNECT_MS_MIN = 50;
export const PEER_RECONNECT_MS_MAX = 2_000;
/**
 * How long a link waits before dialling again a peer that refused this replica's key as
 * retired: a removed replica, or one started with a rotated-away key, is refused until an
 * operator acts, and asking every 2 s only fills the logs on both sides.
 */
export const PEER_RETIRED_RETRY_MS = 30_000;
/** The refusal a peer sends to a key it no longer accepts (its reason follows). */
const RETIRED_REFUSAL = "peer refused: UNAUTHORIZED key no longer accepted: ";
/** Bytes that may wait for one peer before messages to it are dropped (the protocol retransmits). */
export const PEER_OUTBOUND_BYTES_MAX = 32 * 1024 * 1024;
/**
 * From this size on, a message is written to each peer's socket from where it is, in a
 * frame of three parts, instead of being copied into each peer's frame.
 */
export const PEER_MESSAGE_SHARED_BYTES = 16 * 1024;
/** Bytes a PEER frame adds around its message: header, CBOR map, seq and MAC. */
export const PEER_FRAME_OVERHEAD_BYTES = 96;
/** A handshake that has not finished in this time is abandoned. */
export const PEER_HANDSHAKE_MS_MAX = 5_000;
/**
 * The largest frame taken on a link this replica dialled. The dialled side sends nothing
 * there but HELLO_ACK (about 200 bytes), PONG and ERROR (a reason of at most
 * REASON_BYTES_MAX = 1,024 bytes), and anyone who answers TCP at a peer's address can
 * send frames before its HELLO_ACK has proved anything: the decoder reserves memory as a
 * declared frame's bytes arrive, and the frame would be decoded, so the link takes no more
 * than those frames need (the listener's own bound before AUTH is HANDSHAKE_FRAME_BYTES_MAX).
 */
export const DIALLED_LINK_FRAME_BYTES_MAX = 2 * 1024;
/** On a link to a multi-homed peer: a PING this often... */
export const PEER_PING_MS = 500;
/** ...and the link is given up for the next address after this long without receiving anything. */
export const PEER_SILENCE_MS = 2_500;
/** While on another address, the preferred one is tried again after this long, doubling to the max while it fails. */
export const PEER_PREFERRED_RETRY_MS_MIN = 2_000;
export const PEER_PREFERRED_RETRY_MS_MAX = 30_000;

/** Liveness and failover timing of links to multi-homed peers (tests shorten them). */
export interface PeerFailoverTiming {
  readonly pingMs: number;
  readonly silenceMs: number;
  readonly preferredRetryMsMin: number;
  readonly preferredRetryMsMax: number;
}

export const PEER_FAILOVER_TIMING: PeerFailoverTiming = {
  pingMs: PEER_PING_MS,
  silenceMs: PEER_SILENCE_MS,
  preferredRetryMsMin: PEER_PREFERRED_RETRY_MS_MIN,
  preferredRetryMsMax: PEER_PREFERRED_RETRY_MS_MAX,
};

/** A replica the mesh links with: the cluster file's entry, or a member of the replicated membership. */
export type PeerEntry = Pick<ReplicaEntry, "id" | "host" | "port" | "peerPort" | "publicKey"> & { readonly hosts?: readonly string[] };

/** A key the mesh accepts in a replica's handshake. */
export interface AcceptedKey {
  readonly id: number;
  readonly key: Uint8Array;
}

/** Keys that were accepted once and no longer are, remembered to name the reason (oldest forgotten first). */
const RETIRED_KEYS_MAX = 256;

export interface PeerMeshOptions {
  readonly self: number;
  readonly key: SigningKey;
  readonly replicas: readonly ReplicaEntry[];
  readonly frameBytesMax: number;
  readonly log: Log;
  readonly metrics: Metrics;
  /**
   * How many peers refusing this replica's key as retired (removed from the group, or
   * rotated: `key no longer accepted`) make it say so as an error, once: f+1 of its epoch,
   * so that at least one correct replica says it. Unset: never.
   */
  readonly retiredQuorum?: () => number;
  /** Where failed peer handshakes are reported (audit.ts); none in some tests. */
  readonly audit?: AuditLog;
  /** A peer's message, with the public key its session authenticated with. */
  readonly onMessage: (from: number, msg: Uint8Array, key: Uint8Array) => void;
  readonly onPeerUp?: (id: number) => void;
  /** An open link to a peer went down (for `$sys.events`). */
  readonly onPeerDown?: (id: number, reason: string) => void;
  /**
   * Digests of this replica's shared cluster file sections (src/config/digest.ts), sent
   * in every HELLO; a peer that sends others is refused. Absent (unit tests of the mesh
   * alone): nothing is sent or checked.
   */
  readonly configDigests?: ConfigDigests;
  /**
   * Whether the replicated group is still the cluster file's first (epoch 0, no change
   * decided): only then are the first group's addresses (`addrs`) sent and compared,
   * since the first change builds the group from them (src/config/digest.ts). Absent:
   * they are compared whenever both sides send them.
   */
  readonly firstGroupInUse?: () => boolean;
  /** Failover timing for multi-homed peers; PEER_FAILOVER_TIMING when absent. */
  readonly failover?: PeerFailoverTiming;
  /** Overrides of the inbound budgets (peer-inbox.ts); the defaults are its constants. */
  readonly inbox?: Partial<PeerInboxLimits>;
  /** Why an inbound message may be dropped before it is decoded (peer-filter.ts), or null. */
  readonly precheck?: (from: number, msg: Uint8Array) => string | null;
  /** Whether an inbound message of `peer` counts against its byte budget (default: every one). */
  readonly chargesBytes?: (peer: number, msg: Uint8Array) => boolean;
  /** Whether a precheck's reason proves the peer faulty: it is muted (peer-inbox.ts). */
  readonly proves?: (reason: string) => boolean;
}

type OutboundPhase = "connecting" | "awaiting-ack" | "open" | "closed";

/**
 * What the dialled side sends on a link this replica dialled: HELLO_ACK or a refusal
 * while the handshake is under way, then only PONG (the answer to a liveness PING), PING
 * and ERROR. Any other frame ends the link by its type byte, before its payload is decoded.
 */
const AWAITING_ACK_FRAME_TYPES: ReadonlySet<number> = new Set([FrameType.HELLO_ACK, FrameType.ERROR]);
const OPEN_LINK_FRAME_TYPES: ReadonlySet<number> = new Set([FrameType.PONG, FrameType.PING, FrameType.ERROR]);

interface OutboundLink {
  readonly peer: PeerEntry;
  /** The peer left the mesh's group: nothing is dialled again. */
  retired: boolean;
  /** The key the peer authenticated with on the open link. */
  peerKey: Uint8Array | null;
  phase: OutboundPhase;
  conn: FramedConn | null;
  hello: Hello | null;
  eph: EphemeralKeyPair | null;
  keys: SessionKeys | null;
  sendSeq: number;
  backoffMs: number;
  timer: ReturnType<typeof setTimeout> | null;
  /** The peer's addresses, the preferred first, and the one this link dials or uses. */
  readonly hosts: readonly string[];
  hostIndex: number;
  /** Addresses that failed since the link was last open: when all have, the backoff applies. */
  failedHosts: number;
  /** Multi-homed peers only: when the open link last received anything (performance.now: a wall-clock step must not fail the link), and its PING timer. */
  receivedMs: number;
  pingTimer: ReturnType<typeof setInterval> | null;
  pings: number;
  /** A second connection to the preferred address while the link is on another one, and when the next is due. */
  preferred: OutboundLink | null;
  preferredTimer: ReturnType<typeof setTimeout> | null;
  preferredRetryMs: number;
  /** Set on that second connection: the link it replaces once its handshake is done. */
  readonly preferredFor: OutboundLink | null;
  /** The data of the socket this link dialled last: its callbacks act on `data.link`. */
  socketData: DialData | null;
  /** Why the link went down last (a refused handshake says why: a cluster file that differs, a key), null while it is up or before it ever failed. */
  downReason: string | null;
}

/** A dial's socket data; `abandoned`: its TCP connect took too long or its link moved on, so it is closed if it ever opens. */
interface DialData {
  conn: FramedConn | null;
  link: OutboundLink;
  abandoned: boolean;
}

interface InboundLink {
  readonly peerId: number;
  readonly key: Uint8Array;
  readonly keys: SessionKeys;
  lastSeq: number;
}

/** A peer's dropped sends, and its messages dropped before processing, are logged at most this often per reason (they are always counted). */
const SEND_DROP_LOG_MS = 10_000;

export class PeerMesh {
  private readonly outbound = new Map<number, OutboundLink>();
  private readonly inbound = new Map<number, FramedConn>();
  /** The key each open inbound session authenticated with. */
  private readonly inboundKeys = new Map<number, Uint8Array>();
  /** The keys accepted in each replica's handshake (two while a rotation waits for its epoch). */
  private accepted = new Map<number, Uint8Array[]>();
  /** Keys no longer accepted, by hex, with the replica that held them and why; `fileOnly`: only the cluster file named it (setGroup). */
  private readonly retiredKeys = new Map<string, { id: number; why: string; fileOnly: boolean }>();
  /**
   * Keys some replicated group this replica followed accepted (setGroup), as opposed to
   * keys only its cluster file named: a few per membership change, kept for the process's life.
   */
  private readonly groupKeys = new Set<string>();
  /** Peers that refuse this replica's key as retired, with why (each logged once, then at debug; cleared when its link comes up). */
  private readonly retiredBy = new Map<number, string>();
  /** The error for f+1 such peers was logged (refusedAsRetired). */
  private retiredReported = false;
  private started = false;
  private stopped = false;
  private oversizedReported = false;
  /** When each peer's dropped sends (and received messages, "in:peer:reason") were last logged, by "peer:reason", and how many since. */
  private readonly sendDropLog = new Map<string, { at: number; unlogged: number }>();
  /** Inbound messages, per peer, fairly and within budgets (peer-inbox.ts). */
  private readonly inbox: PeerInbox;

  private readonly timing: PeerFailoverTiming;

  constructor(private readonly options: PeerMeshOptions) {
    this.timing = options.failover ?? PEER_FAILOVER_TIMING;
    this.inbox = new PeerInbox({
      limits: {
        bytesPerSecondMax: PEER_BYTES_PER_SECOND_MAX,
        messagesPerSecondMax: PEER_MESSAGES_PER_SECOND_MAX,
        muteMs: PEER_MUTE_MS,
        muteMsMax: PEER_MUTE_MS_MAX,
        floodMuteMs: PEER_FLOOD_MUTE_MS,
        queueBytesMax: 4 * options.frameBytesMax,
        ...options.inbox,
      },
      process: (from, msg, key) => options.onMessage(from, msg, key),
      ...(options.precheck === undefined ? {} : { precheck: options.precheck }),
      ...(options.chargesBytes === undefined ? {} : { chargesBytes: options.chargesBytes }),
      ...(options.proves === undefined ? {} : { proves: options.proves }),
      pause: (peer) => this.inbound.get(peer)?.pauseReading(),
      resume: (peer) => this.inbound.get(peer)?.resumeReading(),
      onMuted: (peer, reason, detail, ms) => this.onMuted(peer, reason, detail, ms),
      onDropped: (peer, reason) => this.receiveDropped(peer, reason),
    });
    for (const peer of options.replicas) {
      if (peer.id === options.self) continue;
      this.outbound.set(peer.id, newOutboundLink(peer, replicaHosts(peer), 0, null, this.timing));
      this.accepted.set(peer.id, [peer.publicKey]);
    }
  }

  start(): void {
    this.started = true;
    for (const link of this.outbound.values()) this.dial(link);
  }

  /**
   * The group the mesh links with from now on: `peers` are dialled (links to others are
   * closed and not dialled again; a peer whose address or key changed is dialled afresh),
   * and a replica's handshake is accepted only with a key in `accept` (open sessions
   * authenticated with another key are closed). Ids and keys come from the replicated
   * membership: the current epoch's and, while a change is pending, the next one's.
   */
  setGroup(peers: readonly PeerEntry[], accept: readonly AcceptedKey[]): void {
    if (this.stopped) return;
    const self = this.options.self;
    const next = new Map<number, Uint8Array[]>();
    for (const { id, key } of accept) {
      if (id === self) continue;
      const keys = next.get(id) ?? [];
      if (!keys.some((known) => bytesEqual(known, key))) keys.push(key);
      next.set(id, keys);
    }
    for (const [id, keys] of this.accepted) {
      for (const key of keys) {
        const kept = next.get(id);
        if (kept?.some((known) => bytesEqual(known, key))) continue;
        // A replica only the cluster file named left no group this replica followed: the
        // group may have removed it before this start, or this replica may be behind a group
        // that added it since (an exported file ahead of this data directory). It cannot say
        // which, and its refusal must not read as retired (the dialler would wait 30 s).
        const fileOnly = kept === undefined && !this.groupKeys.has(toHex(key));
        const why = fileOnly
          ? `replica ${id} is not in this replica's group (only its cluster file lists it; this replica may be behind)`
          : kept === undefined
            ? `replica ${id} was removed from the group`
            : `replica ${id}'s key was rotated`;
        this.retiredKeys.set(toHex(key), { id, why, fileOnly });
        if (this.retiredKeys.size > RETIRED_KEYS_MAX) this.retiredKeys.delete(this.retiredKeys.keys().next().value as string);
      }
    }
    for (const keys of next.values()) {
      for (const key of keys) {
        this.retiredKeys.delete(toHex(key));
        this.groupKeys.add(toHex(key));
      }
    }
    this.accepted = next;
    for (const [id, key] of [...this.inboundKeys]) {
      if (this.accepts(id, key)) continue;
      const conn = this.inbound.get(id);
      this.inbound.delete(id);
      this.inboundKeys.delete(id);
      const why = this.retiredKeys.get(toHex(key))?.why ?? `replica ${id} left the group`;
      this.options.log.info("peer session closed: its key is no longer accepted", { peer: id, reason: why });
      conn?.closeWith({ type: FrameType.ERROR, body: { code: "UNAUTHORIZED", reason: `${why}: this key is no longer accepted` } });
    }
    const wanted = new Map(peers.filter((peer) => peer.id !== self).map((peer) => [peer.id, peer]));
    for (const [id, link] of [...this.outbound]) {
      const want = wanted.get(id);
      const keyRetired = link.peerKey !== null && !this.accepts(id, link.peerKey);
      if (want !== undefined && samePeer(link.peer, want) && !keyRetired) continue;
      this.retireLink(link);
      this.outbound.delete(id);
      this.options.log.info(
        want === undefined ? "peer left the group: its link is closed" : "peer's address or key changed: dialling it afresh",
        {
          peer: id,
        },
      );
    }
    for (const [id, peer] of wanted) {
      if (this.outbound.has(id)) continue;
      const link = newOutboundLink(peer, replicaHosts(peer), 0, null, this.timing);
      this.outbound.set(id, link);
      this.options.log.info("peer joined the group: dialling it", { peer: id, address: linkAddress(link) });
      if (this.started) this.dial(link);
    }
  }

  /** Whether `key` is accepted now in replica `id`'s handshake. */
  private accepts(id: number, key: Uint8Array): boolean {
    return this.accepted.get(id)?.some((known) => bytesEqual(known, key)) === true;
  }

  /** A link of a peer that left the group: closed for good. */
  private retireLink(link: OutboundLink): void {
    link.retired = true;
    if (link.timer !== null) clearTimeout(link.timer);
    link.timer = null;
    this.stopLiveness(link);
    this.dropPreferred(link);
    if (link.socketData !== null) link.socketData.abandoned = true;
    const conn = link.conn;
    link.conn = null;
    link.keys = null;
    const wasOpen = link.phase === "open";
    link.phase = "closed";
    conn?.close();
    if (wasOpen) this.options.onPeerDown?.(link.peer.id, "left the group");
  }

  stop(): void {
    this.stopped = true;
    for (const link of this.outbound.values()) {
      if (link.timer !== null) clearTimeout(link.timer);
      this.stopLiveness(link);
      this.dropPreferred(link);
      link.conn?.close();
      link.phase = "closed";
    }
    for (const conn of this.inbound.values()) conn.close();
    this.inbound.clear();
    this.inbox.stop();
  }

  /** The peer inbox's turn, if messages wait: taken before each turn of client frames (client-frames.ts). */
  peersTurn(): void {
    this.inbox.drainPending();
  }

  /** Mutes a peer the ordering core found flooding (its `peerFlooding` advisory) for PEER_FLOOD_MUTE_MS. */
  muteFlooding(peer: number): void {
    this.inbox.mute(peer, "flooding", "the ordering core found it sending far more than the others", this.floodMuteMs);
  }

  private get floodMuteMs(): number {
    return this.options.inbox?.floodMuteMs ?? PEER_FLOOD_MUTE_MS;
  }

  /**
   * The ordering runtime found `peer` sending what no correct replica sends (a message
   * that does not decode or is not valid: ordering-driver.ts): muted as misbehaving.
   */
  muteMisbehaving(peer: number, detail: string): void {
    this.inbox.misbehaving(peer, detail);
  }

  /**
   * The listener refused a frame of an authenticated inbound session before decoding it
   * (a type a peer link does not carry) or could not decode it. No correct replica sends
   * either, but neither proves that the peer did: a peer link has no frame-level MAC (the
   * MAC is inside PEER; PING has none), so the bytes may be anyone's on the path, and
   * muting for them would let an injector cut a correct peer off (PEER_MUTE_MS up to
   * PEER_MUTE_MS_MAX, its HELLOs refused meanwhile). The link is closed, as for a failed
   * MAC, and the peer reconnects with a fresh handshake; only what is found after
   * checkMac (onInboundFrame: the PEER frame's contents) mutes it. A connection the mesh
   * does not hold (replaced by a newer session of its peer) is only closed.
   */
  refuseInbound(conn: FramedConn, detail: string): void {
    for (const [peer, held] of this.inbound) {
      if (held !== conn) continue;
      this.options.metrics.inc("peer_frames_rejected_total");
      this.options.log.warn("peer frame refused before its MAC check; closing the link", { peer, reason: detail });
      conn.closeWith({ type: FrameType.ERROR, body: { code: "BAD_FRAME", reason: detail } });
      return;
    }
    conn.close();
  }

  /** Whether a peer is muted now (status, tests). */
  isMuted(peer: number): boolean {
    return this.inbox.isMuted(peer);
  }

  private onMuted(peer: number, reason: MuteReason, detail: string, ms: number): void {
    this.options.metrics.peerMuted.with(String(peer), reason).value += 1;
    const entry = this.outbound.get(peer)?.peer;
    const key = this.inboundKeys.get(peer) ?? entry?.publicKey;
    const fields = {
      peer,
      reason: `${reason}: ${detail}`,
      ms,
      ...(key === undefined ? {} : { key }),
      address: this.inbound.get(peer)?.remote ?? (entry === undefined ? "unknown" : `${entry.host}`),
    };
    if (this.options.audit === undefined) this.options.log.warn("peer muted: its link is closed and refused for a while", fields);
    else this.options.audit.warn("peer-muted", "peer muted: its link is closed and refused for a while", fields);
    // Cut off at once: nothing more of it is read, decoded or MAC-checked until the mute
    // ends; then it reconnects with a fresh handshake (counters from 1), as after any drop.
    const conn = this.inbound.get(peer);
    if (conn !== undefined) {
      this.inbound.delete(peer);
      this.inboundKeys.delete(peer);
      conn.closeWith({ type: FrameType.ERROR, body: { code: "OVERLOADED", reason: `muted for ${ms} ms: ${reason}: ${detail}` } });
    }
  }

  /**
   * Which peers we can send to now and that answer, at which of its addresses each link is,
   * and why a link is not up: why it went down last, or, open, how long its PINGs have had
   * no answer (a peer stopped with SIGSTOP, or hung, keeps its connection open).
   */
  status(): { id: number; up: boolean; address: string; reason: string | null }[] {
    const now = performance.now();
    return [...this.outbound.values()].map((link) => {
      const open = link.phase === "open";
      const silentMs = open && link.pingTimer !== null ? Math.round(now - link.receivedMs) : 0;
      const silent = silentMs > this.timing.silenceMs;
      return {
        id: link.peer.id,
        up: open && !silent,
        address: linkAddress(link),
        reason: !open
          ? link.downReason
          : silent
            ? `the link is open but its PINGs have had no answer for ${silentMs} ms (the peer is stopped, hung or overloaded)`
            : null,
      };
    });
  }

  /** Sends `msg` to one peer; false if the link is down or its queue is full (counted). */
  send(to: number, msg: Uint8Array): boolean {
    const link = this.outbound.get(to);
    if (link === undefined || link.phase !== "open" || link.conn === null || link.keys === null) {
      this.sendDropped(to, "link-down");
      return false;
    }
    if (msg.length + PEER_FRAME_OVERHEAD_BYTES > this.options.frameBytesMax) {
      // The peer's decoder would refuse the frame and drop the link; the core bounds its
      // messages so this never happens, and if it does it costs one message, not a link.
      this.options.metrics.inc("peer_send_oversized_total");
      if (!this.oversizedReported) {
        this.oversizedReported = true;
        this.options.log.warn("peer message too large to send; dropped (counted in peer_send_oversized_total)", {
          peer: to,
          bytes: msg.length,
          frameBytesMax: this.options.frameBytesMax,
        });
      }
      return false;
    }
    if (!link.conn.hasRoomFor(msg.length + PEER_FRAME_OVERHEAD_BYTES)) {
      // A dropped consensus message is recovered by the protocol's retransmission; the
      // sequence number is not consumed, so the receiver still sees no gap.
      this.sendDropped(to, "queue-full");
      return false;
    }
    const seq = ++link.sendSeq;
    this.options.metrics.inc("peer_messages_sent_total");
    const mac = macFrame(link.keys.sendKey, FrameType.PEER, seq, msg);
    // A large message (a proposal's batch) is written from where it is to every peer; a
    // small one (a vote) costs less copied into one frame and written once.
    if (msg.length >= PEER_MESSAGE_SHARED_BYTES) return link.conn.sendEncodedParts(peerFrameParts(seq, msg, mac));
    return link.conn.sendEncoded(encodePeerFrame(seq, msg, mac));
  }

  /** A message not sent to `to`: counted by peer and reason, and logged at most once per SEND_DROP_LOG_MS per peer and reason. */
  private sendDropped(to: number, reason: "link-down" | "queue-full"): void {
    this.options.metrics.inc("peer_send_dropped_total");
    this.options.metrics.peerSendDropped.with(String(to), reason).inc();
    const since = this.dropLogDue(`${to}:${reason}`);
    if (since !== null) this.options.log.warn("peer message not sent", { peer: to, reason, alsoSinceLastLine: since });
  }

  /**
   * A message of `peer` dropped before processing (peer-inbox.ts: muted, or peer-filter.ts's
   * reason): counted by peer and reason, and logged at most once per SEND_DROP_LOG_MS per
   * peer and reason.
   */
  private receiveDropped(peer: number, reason: string): void {
    this.options.metrics.peerDropped.with(String(peer), reason).value += 1;
    const since = this.dropLogDue(`in:${peer}:${reason}`);
    if (since !== null) this.options.log.warn("peer message dropped before processing", { peer, reason, alsoSinceLastLine: since });
  }

  /** Null when a line for `key` was written less than SEND_DROP_LOG_MS ago (this drop is counted for the next); else the drops since that line. */
  private dropLogDue(key: string): number | null {
    const now = performance.now();
    const last = this.sendDropLog.get(key);
    if (last !== undefined && now - last.at < SEND_DROP_LOG_MS) {
      last.unlogged++;
      return null;
    }
    this.sendDropLog.set(key, { at: now, unlogged: 0 });
    return last?.unlogged ?? 0;
  }

  private readonly countSocketWrite = (): void => this.options.metrics.inc("peer_socket_writes_total");

  broadcast(msg: Uint8Array): void {
    for (const id of this.outbound.keys()) this.send(id, msg);
  }

  // ---------------------------------------------------------------------------------
  // Dialling side (initiator)
  // ---------------------------------------------------------------------------------

  private dial(link: OutboundLink): void {
    if (this.stopped || link.retired) return;
    link.phase = "connecting";
    link.timer = null;
    const mesh = this;
    // `link` is read from the socket's data: a connection to the preferred address moves
    // onto the link it replaces once its handshake is done (adoptPreferred).
    const data: DialData = { conn: null, link, abandoned: false };
    link.socketData = data;
    if (link.hosts.length > 1) {
      // A dark address may leave a TCP connect hanging for minutes: a multi-homed peer has
      // other addresses to try, so the connect is bounded like the handshake.
      setTimeout(() => {
        if (data.conn !== null || data.abandoned) return;
        data.abandoned = true;
        if (data.link.socketData === data) mesh.linkDown(data.link, `no TCP connection within ${PEER_HANDSHAKE_MS_MAX} ms`);
      }, PEER_HANDSHAKE_MS_MAX);
    }
    Bun.connect<DialData>({
      hostname: link.hosts[link.hostIndex] as string,
      port: dialPort(link.peer),
      data,
      socket: {
        open(socket) {
          if (socket.data.abandoned) {
            socket.terminate();
            return;
          }
          const frameBytesMax = Math.min(DIALLED_LINK_FRAME_BYTES_MAX, mesh.options.frameBytesMax);
          const conn = new FramedConn(socket as Socket<unknown>, frameBytesMax, PEER_OUTBOUND_BYTES_MAX);
          socket.data.conn = conn;
          mesh.beginHandshake(socket.data.link, conn);
        },
        data(socket, chunk) {
          const conn = socket.data.conn;
          if (conn !== null) mesh.onOutboundFrames(socket.data.link, conn, conn.decoder.push(chunk));
        },
        drain(socket) {
          socket.data.conn?.drain();
        },
        close(socket) {
          const conn = socket.data.conn;
          if (conn !== null && socket.data.link.conn === conn) mesh.linkDown(socket.data.link, "closed");
        },
        error(socket, error) {
          mesh.options.log.debug("peer link error", { peer: socket.data.link.peer.id, error: error.message });
        },
        connectError(socket, error) {
          if (!socket.data.abandoned) mesh.linkDown(socket.data.link, error.message);
        },
      },
    }).catch((error: Error) => {
      if (!data.abandoned) mesh.linkDown(data.link, error.message);
    });
  }

  private beginHandshake(link: OutboundLink, conn: FramedConn): void {
    const eph = generateEphemeralKeyPair();
    const hello: Hello = {
      v: PROTOCOL_VERSION,
      role: "replica",
      replica: this.options.self,
      key: this.options.key.publicKey,
      nonce: new Uint8Array(randomBytes(NONCE_BYTES)),
      eph: eph.publicKey,
      ...(this.options.configDigests === undefined ? {} : { cfg: this.sentDigests(this.options.configDigests) }),
    };
    link.conn = conn;
    link.hello = hello;
    link.eph = eph;
    link.phase = "awaiting-ack";
    link.sendSeq = 0;
    conn.send({ type: FrameType.HELLO, body: hello });
    const started = conn;
    setTimeout(() => {
      if (link.conn === started && link.phase === "awaiting-ack") {
        this.options.metrics.inc("peer_handshake_failed_total");
        started.close();
        this.linkDown(link, "handshake timed out");
      }
    }, PEER_HANDSHAKE_MS_MAX);
  }

  private onOutboundFrames(link: OutboundLink, conn: FramedConn, results: DecodeResult[]): void {
    for (const result of results) {
      if (link.conn !== conn) return;
      if (!result.ok) return this.failOutbound(link, conn, `bad frame: ${result.error.reason}`);
      const expected = link.phase === "open" ? OPEN_LINK_FRAME_TYPES : AWAITING_ACK_FRAME_TYPES;
      if (!expected.has(result.type)) {
        // Judged by its type byte alone: its payload is never decoded.
        return this.failOutbound(link, conn, `unexpected frame type 0x${result.type.toString(16)} on a link this replica dialled`);
      }
      const decoded = decodeFrameBody(result.type, result.payload);
      if (!decoded.ok) return this.failOutbound(link, conn, `bad frame: ${decoded.error.reason}`);
      const frame = decoded.frame;
      if (link.phase === "awaiting-ack" && frame.type === FrameType.HELLO_ACK) {
        this.finishHandshake(link, conn, frame.body);
        continue;
      }
      if (frame.type === FrameType.ERROR) {
        return this.failOutbound(link, conn, `peer refused: ${frame.body.code} ${frame.body.reason}`);
      }
      if (frame.type === FrameType.PING) {
        // Answered at once, so charged like a message: a peer cannot make this replica answer without bound.
        if (!this.inbox.chargePing(link.peer.id)) return this.failOutbound(link, conn, "PINGs over the peer's budget of them");
        conn.send({ type: FrameType.PONG, body: { n: frame.body.n } });
        continue;
      }
      if (frame.type === FrameType.PONG) {
        // The answer to our liveness PING; its arrival is what counts.
        link.receivedMs = performance.now();
        continue;
      }
      // The dialled side never sends anything else on a link we dialled.
      return this.failOutbound(link, conn, `unexpected frame type ${frame.type}`);
    }
  }

  /** This replica's digests as a HELLO carries them now: the first group's addresses only while that group is in use. */
  private sentDigests(digests: ConfigDigests): ConfigDigests {
    return this.options.firstGroupInUse === undefined || this.options.firstGroupInUse() ? digests : withoutAddresses(digests);
  }

  /** Why a peer's HELLO shows another cluster file than ours, or null. */
  private configProblem(hello: Hello): string | null {
    const mine = this.options.configDigests;
    if (mine === undefined || hello.role !== "replica") return null;
    if (hello.cfg === undefined) return "the HELLO carries no cluster file digest (a fitb that does not check configurations)";
    const differences = configDifferences(this.sentDigests(mine), hello.cfg);
    if (differences.length === 0) return null;
    return `cluster file differs from replica ${this.options.self}'s in: ${differences.join("; ")}`;
  }

  private finishHandshake(link: OutboundLink, conn: FramedConn, ack: HelloAck): void {
    const hello = link.hello as Hello;
    const eph = link.eph as EphemeralKeyPair;
    if (ack.v !== hello.v)
      return this.failOutbound(link, conn, `peer answered in protocol version ${ack.v}, the HELLO was version ${hello.v}`);
    // The key the group names for the peer (while a rotation waits for its epoch, the old or the new one).
    if (ack.replica !== link.peer.id || !this.accepts(link.peer.id, ack.key) || ack.eph === undefined) {
      const retired = this.retiredKeys.get(toHex(ack.key));
      if (retired !== undefined) this.options.metrics.inc("peer_handshake_retired_key_total");
      return this.failOutbound(
        link,
        conn,
        retired === undefined ? "peer presented the wrong identity" : `peer answered with a retired key: ${retired.why}`,
      );
    }
    const transcript = sessionTranscript(hello, ack);
    if (!verifyDomain(ack.key, DOMAIN_SESSION_RESPONDER, transcript, ack.sig)) {
      return this.failOutbound(link, conn, "peer handshake signature does not verify");
    }
    let secret: Uint8Array;
    try {
      secret = x25519SharedSecret(eph, ack.eph);
    } catch (error) {
      return this.failOutbound(link, conn, (error as Error).message);
    }
    link.keys = deriveSessionKeys(secret, transcript, "initiator");
    link.peerKey = ack.key.slice();
    conn.send({ type: FrameType.AUTH, body: { sig: signDomain(this.options.key, DOMAIN_SESSION_INITIATOR, transcript) } });
    // From here on the link carries PEER frames: those of one event-loop turn (a step's
    // votes, the effects one fsync releases) go to the socket in one write at its end.
    conn.coalesceWrites();
    conn.countWrites(this.countSocketWrite);
    if (link.preferredFor !== null) {
      this.adoptPreferred(link.preferredFor, link);
      return;
    }
    link.phase = "open";
    link.downReason = null;
    link.backoffMs = PEER_RECONNECT_MS_MIN;
    link.failedHosts = 0;
    if (this.retiredBy.delete(link.peer.id) && this.retiredBy.size === 0) this.retiredReported = false;
    this.startLiveness(link);
    this.options.log.info("peer link up", {
      peer: link.peer.id,
      address: linkAddress(link),
    });
    this.options.onPeerUp?.(link.peer.id);
  }

  // ---------------------------------------------------------------------------------
  // Multi-homed peers: liveness on the open link, and the way back to the preferred address
  // ---------------------------------------------------------------------------------

  /**
   * PINGs every open link. A multi-homed peer's link silent for PEER_SILENCE_MS is given up
   * for the next address; a single address has no other to try, so its link stays open
   * (TCP still takes what is sent: a peer that was paused catches up from it) and is only
   * reported silent (status, peer_up), since a stopped or hung process keeps its sockets.
   */
  private startLiveness(link: OutboundLink): void {
    this.stopLiveness(link);
    link.receivedMs = performance.now();
    const conn = link.conn;
    link.pingTimer = setInterval(() => {
      if (link.conn !== conn || conn === null || link.phase !== "open") return;
      const silentMs = Math.round(performance.now() - link.receivedMs);
      if (silentMs > this.timing.silenceMs && link.hosts.length >= 2) {
        this.options.metrics.inc("peer_links_silent_total");
        this.options.log.warn("peer link silent; trying the peer's next address", {
          peer: link.peer.id,
          address: linkAddress(link),
          silentMs,
        });
        conn.close();
        this.linkDown(link, `nothing received for ${silentMs} ms`);
        return;
      }
      conn.send({ type: FrameType.PING, body: { n: ++link.pings } });
    }, this.timing.pingMs);
    if (link.hostIndex !== 0) this.schedulePreferred(link);
  }

  private stopLiveness(link: OutboundLink): void {
    if (link.pingTimer !== null) clearInterval(link.pingTimer);
    link.pingTimer = null;
  }

  /** While the link is open on another address, a handshake on the preferred one is tried after the current wait. */
  private schedulePreferred(link: OutboundLink): void {
    if (link.preferredTimer !== null || link.preferred !== null || this.stopped) return;
    link.preferredTimer = setTimeout(() => {
      link.preferredTimer = null;
      if (this.stopped || link.phase !== "open" || link.hostIndex === 0) return;
      const attempt = newOutboundLink(link.peer, link.hosts, 0, link, this.timing);
      link.preferred = attempt;
      this.dial(attempt);
    }, link.preferredRetryMs);
  }

  /** The handshake on the preferred address is done: the link moves onto that connection. */
  private adoptPreferred(link: OutboundLink, attempt: OutboundLink): void {
    const conn = attempt.conn as FramedConn;
    link.preferred = null;
    if (link.phase !== "open" || this.stopped) {
      // The link went down meanwhile and is being dialled on its own: this connection is not needed.
      attempt.phase = "closed";
      attempt.conn = null;
      conn.close();
      return;
    }
    const old = link.conn;
    const from = linkAddress(link);
    link.conn = conn;
    link.keys = attempt.keys;
    link.peerKey = attempt.peerKey;
    link.hello = attempt.hello;
    link.eph = attempt.eph;
    link.sendSeq = attempt.sendSeq;
    link.hostIndex = 0;
    link.preferredRetryMs = this.timing.preferredRetryMsMin;
    attempt.conn = null;
    attempt.phase = "closed";
    // The socket's callbacks now act on the link itself.
    if (attempt.socketData !== null) attempt.socketData.link = link;
    link.socketData = attempt.socketData;
    attempt.socketData = null;
    old?.close();
    this.startLiveness(link);
    this.options.metrics.inc("peer_links_back_to_preferred_total");
    this.options.log.info("peer link back on the preferred address", {
      peer: link.peer.id,
      from,
      address: formatAddress(link.hosts[0] as string, dialPort(link.peer)),
    });
  }

  private dropPreferred(link: OutboundLink): void {
    if (link.preferredTimer !== null) clearTimeout(link.preferredTimer);
    link.preferredTimer = null;
    const attempt = link.preferred;
    link.preferred = null;
    if (attempt === null) return;
    if (attempt.timer !== null) clearTimeout(attempt.timer);
    // A connect still pending is closed if it ever opens.
    if (attempt.socketData !== null) attempt.socketData.abandoned = true;
    const conn = attempt.conn;
    attempt.conn = null;
    attempt.phase = "closed";
    conn?.close();
  }

  private failOutbound(link: OutboundLink, conn: FramedConn, reason: string): void {
    this.options.metrics.inc("peer_handshake_failed_total");
    if (reason.startsWith(RETIRED_REFUSAL) && link.preferredFor === null) {
      this.refusedAsRetired(link.peer.id, reason.slice(RETIRED_REFUSAL.length));
      // Before the close, whose callback may take the link down (and schedule the next dial) at once.
      link.backoffMs = PEER_RETIRED_RETRY_MS;
      conn.close();
      this.linkDown(link, reason);
      return;
    }
    const what = link.preferredFor === null ? "peer link failed" : "peer link to the preferred address failed";
    this.options.log.warn(what, { peer: link.peer.id, reason });
    conn.close();
    this.linkDown(link, reason);
  }

  /**
   * A peer refused this replica's key as one the group no longer accepts. Said once per
   * peer and reason; once f+1 peers say so (retiredQuorum), an error says what it means and
   * what to do, once. Not a reason to stop: the refusal is not signed, so a stop on it
   * would let whoever can forge it stop a replica for good; the operator decides.
   */
  private refusedAsRetired(peer: number, why: string): void {
    if (this.retiredBy.get(peer) === why) {
      this.options.log.debug("peer link failed", { peer, reason: `${RETIRED_REFUSAL}${why}` });
    } else {
      this.retiredBy.set(peer, why);
      this.options.log.warn("a peer refuses this replica's key: it no longer accepts it", {
        peer,
        reason: why,
        retryMs: PEER_RETIRED_RETRY_MS,
      });
    }
    const quorum = this.options.retiredQuorum?.() ?? Number.POSITIVE_INFINITY;
    if (this.retiredReported || this.retiredBy.size < quorum) return;
    this.retiredReported = true;
    this.options.log.error("peers refuse this replica's key: the group removed this replica or rotated its key", {
      peers: [...this.retiredBy.keys()].sort((a, b) => a - b),
      reason: why,
      hint: "removed while it was down (fitb admin members does not list it): stop it and disable its unit; its key rotated: start it with the new key's file (--key)",
    });
  }

  private linkDown(link: OutboundLink, reason: string): void {
    const owner = link.preferredFor;
    if (link.retired || owner?.retired === true) return;
    if (owner !== null) {
      if (link.phase === "closed") return;
      // The try of the preferred address failed: the link stays where it is, and waits longer before the next try.
      if (owner.preferred === link) owner.preferred = null;
      link.phase = "closed";
      link.conn = null;
      owner.preferredRetryMs = Math.min(owner.preferredRetryMs * 2, this.timing.preferredRetryMsMax);
      this.options.log.debug("peer's preferred address still fails", { peer: link.peer.id, reason });
      if (owner.phase === "open") this.schedulePreferred(owner);
      return;
    }
    link.downReason = reason;
    if (link.phase === "closed" && link.timer !== null) return;
    const wasOpen = link.phase === "open";
    const address = linkAddress(link);
    link.phase = "closed";
    link.conn = null;
    link.keys = null;
    link.peerKey = null;
    this.stopLiveness(link);
    this.dropPreferred(link);
    if (wasOpen) {
      this.options.log.info("peer link down", { peer: link.peer.id, address, reason });
      this.options.onPeerDown?.(link.peer.id, reason);
    }
    if (this.stopped || link.timer !== null) return;
    if (link.hosts.length > 1) {
      // The next address at once while some address has not failed since the link was last
      // open; once every one has, from the preferred one again after the backoff.
      link.failedHosts++;
      link.hostIndex = (link.hostIndex + 1) % link.hosts.length;
      if (link.failedHosts < link.hosts.length) {
        this.options.log.info("peer address failed; dialling its next address", {
          peer: link.peer.id,
          failed: address,
          next: linkAddress(link),
          reason,
        });
        link.timer = setTimeout(() => this.dial(link), 0);
        return;
      }
      link.failedHosts = 0;
      link.hostIndex = 0;
    }
    const wait = link.backoffMs;
    link.backoffMs = Math.min(link.backoffMs * 2, PEER_RECONNECT_MS_MAX);
    link.timer = setTimeout(() => this.dial(link), wait);
  }

  // ---------------------------------------------------------------------------------
  // Dialled side (responder): the server hands us a connection whose first frame was a
  // replica HELLO.
  // ---------------------------------------------------------------------------------

  /**
   * Answers a replica HELLO. Returns the frame handler for the rest of the connection, or
   * null when the HELLO was refused (the connection is then closed).
   */
  acceptInbound(conn: FramedConn, hello: Hello): ((frame: Frame) => void) | null {
    if (hello.role !== "replica") return null;
    if (hello.replica === this.options.self || !this.accepts(hello.replica, hello.key)) {
      this.options.metrics.inc("peer_handshake_failed_total");
      const retired = this.retiredKeys.get(toHex(hello.key));
      if (retired?.fileOnly === true) {
        // Not a retired key as far as this replica knows: said so, without the words a
        // removed replica's dialler waits 30 s on (failOutbound).
        this.options.audit?.warn("handshake-failed", "peer handshake refused: the key is not in this replica's group", {
          key: hello.key,
          address: conn.remote,
          reason: `HELLO as replica ${hello.replica}: ${retired.why}`,
        });
        conn.closeWith({
          type: FrameType.ERROR,
          body: { code: "UNAUTHORIZED", reason: `key not in this replica's group: ${retired.why}` },
        });
        return null;
      }
      if (retired !== undefined) {
        // A key the group accepted once: its replica was removed or its key rotated. Its
        // holder (the old host, or whoever has the old key) learns why.
        this.options.metrics.inc("peer_handshake_retired_key_total");
        this.options.audit?.warn("handshake-failed", "peer handshake refused: the key is no longer accepted", {
          key: hello.key,
          address: conn.remote,
          reason: `HELLO as replica ${hello.replica} with a retired key: ${retired.why}`,
        });
        conn.closeWith({ type: FrameType.ERROR, body: { code: "UNAUTHORIZED", reason: `key no longer accepted: ${retired.why}` } });
        return null;
      }
      this.options.audit?.warn("handshake-failed", "peer handshake failed", {
        key: hello.key,
        address: conn.remote,
        reason: `HELLO as replica ${hello.replica} with a key that is not that replica's`,
      });
      conn.closeWith({ type: FrameType.ERROR, body: { code: "UNAUTHORIZED", reason: "not a replica of this cluster" } });
      return null;
    }
    const peer = { id: hello.replica, publicKey: hello.key.slice() };
    const mutedMs = this.inbox.mutedForMs(peer.id);
    if (mutedMs > 0) {
      // Before signing anything: a muted peer's reconnections cost one lookup.
      this.receiveDropped(peer.id, "muted-handshake");
      conn.closeWith({ type: FrameType.ERROR, body: { code: "OVERLOADED", reason: `replica ${peer.id} is muted for ${mutedMs} ms more` } });
      return null;
    }
    const configProblem = this.configProblem(hello);
    if (configProblem !== null) {
      // Before signing: a peer with another cluster file costs one comparison, and the
      // operator of both replicas learns which sections to make equal.
      this.options.metrics.inc("peer_handshake_failed_total");
      this.options.log.error("peer refused: its cluster file differs", { peer: peer.id, address: conn.remote, reason: configProblem });
      conn.closeWith({ type: FrameType.ERROR, body: { code: "UNAUTHORIZED", reason: configProblem } });
      return null;
    }
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
    const ack: HelloAck = { ...unsigned, sig: signDomain(this.options.key, DOMAIN_SESSION_RESPONDER, transcript) };
    let keys: SessionKeys;
    try {
      keys = deriveSessionKeys(x25519SharedSecret(eph, hello.eph), transcript, "responder");
    } catch {
      conn.closeWith({ type: FrameType.ERROR, body: { code: "UNAUTHORIZED", reason: "unusable ephemeral key" } });
      return null;
    }
    conn.send({ type: FrameType.HELLO_ACK, body: ack });
    let authed = false;
    const link: InboundLink = { peerId: peer.id, key: peer.publicKey, keys, lastSeq: 0 };
    return (frame: Frame) => {
      if (!authed) {
        if (frame.type !== FrameType.AUTH || !verifyDomain(peer.publicKey, DOMAIN_SESSION_INITIATOR, transcript, frame.body.sig)) {
          this.options.metrics.inc("peer_handshake_failed_total");
          this.options.audit?.warn("handshake-failed", "peer handshake failed", {
            key: peer.publicKey,
            address: conn.remote,
            reason: "AUTH does not verify for the replica's key",
          });
          conn.closeWith({ type: FrameType.ERROR, body: { code: "UNAUTHORIZED", reason: "peer authentication failed" } });
          return;
        }
        if (!this.accepts(peer.id, peer.publicKey)) {
          // The key was retired while this handshake was under way.
          this.options.metrics.inc("peer_handshake_failed_total");
          this.options.metrics.inc("peer_handshake_retired_key_total");
          conn.closeWith({ type: FrameType.ERROR, body: { code: "UNAUTHORIZED", reason: "key no longer accepted" } });
          return;
        }
        authed = true;
        // A newer session from the same peer replaces the old one (it restarted).
        this.inbound.get(peer.id)?.close();
        this.inbound.set(peer.id, conn);
        this.inboundKeys.set(peer.id, peer.publicKey);
        this.inbox.connected(peer.id);
        return;
      }
      this.onInboundFrame(link, conn, frame);
    };
  }

  private onInboundFrame(link: InboundLink, conn: FramedConn, frame: Frame): void {
    if (frame.type === FrameType.PING) {
      // A PONG answers at once, without the inbox's queue, within the peer's budget of PINGs;
      // past it the link is closed, not the peer muted (a PING is not authenticated).
      if (this.inbox.chargePing(link.peerId)) conn.send({ type: FrameType.PONG, body: { n: frame.body.n } });
      else this.refuseInbound(conn, "PINGs over the peer's budget of them");
      return;
    }
    if (frame.type !== FrameType.PEER) {
      // The listener refuses other types by their type byte before this (server.ts); kept for any other caller.
      // Not authenticated either (only a PEER frame's MAC is): closed, not muted.
      this.refuseInbound(conn, `a frame of type 0x${frame.type.toString(16)} on a peer link`);
      return;
    }
    const { seq, msg, mac } = frame.body;
    if (seq !== link.lastSeq + 1 || !checkMac(link.keys.receiveKey, FrameType.PEER, seq, msg, mac)) {
      // Dropped and counted, never processed; and since a gap or a bad MAC on an ordered
      // TCP stream means tampering, the link is closed: the peer reconnects with a fresh
      // handshake (PROTOCOL.md 5.3).
      this.options.metrics.inc("peer_frames_rejected_total");
      this.options.log.warn("peer frame failed its MAC or sequence check; closing the link", {
        peer: link.peerId,
        seq,
        expected: link.lastSeq + 1,
      });
      conn.closeWith({ type: FrameType.ERROR, body: { code: "BAD_MAC", reason: "a peer frame failed its MAC or sequence check" } });
      return;
    }
    link.lastSeq = seq;
    this.inbox.push(link.peerId, msg, link.key);
  }

  inboundClosed(conn: FramedConn): void {
    for (const [id, c] of this.inbound) {
      if (c !== conn) continue;
      this.inbound.delete(id);
      this.inboundKeys.delete(id);
    }
  }
}

/** Whether two entries of a peer dial the same addresses (the key is checked against the accepted ones). */
function samePeer(a: PeerEntry, b: PeerEntry): boolean {
  const hostsA = replicaHosts(a);
  const hostsB = replicaHosts(b);
  return dialPort(a) === dialPort(b) && hostsA.length === hostsB.length && hostsA.every((host, i) => host === hostsB[i]);
}

/** The port peers dial at every one of a replica's addresses. */
function dialPort(peer: PeerEntry): number {
  // A peer with a peer_port takes replicas there, and only there.
  return peer.peerPort ?? peer.port;
}

/** `host:port` of the address a link dials or uses now. */
function linkAddress(link: OutboundLink): string {
  return formatAddress(link.hosts[link.hostIndex] as string, dialPort(link.peer));
}

function newOutboundLink(
  peer: PeerEntry,
  hosts: readonly string[],
  hostIndex: number,
  preferredFor: OutboundLink | null,
  timing: PeerFailoverTiming,
): OutboundLink {
  return {
    peer,
    retired: false,
    peerKey: null,
    phase: "closed",
    conn: null,
    hello: null,
    eph: null,
    keys: null,
    sendSeq: 0,
    backoffMs: PEER_RECONNECT_MS_MIN,
    timer: null,
    hosts,
    hostIndex,
    failedHosts: 0,
    receivedMs: 0,
    pingTimer: null,
    pings: 0,
    preferred: null,
    preferredTimer: null,
    preferredRetryMs: timing.preferredRetryMsMin,
    preferredFor,
    socketData: null,
    downReason: null,
  };
}
