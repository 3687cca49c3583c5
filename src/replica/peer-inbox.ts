/**
 * Fair, bounded intake of peer messages (Aardvark's per-peer queues and budgets): one
 * replica, correct or not, cannot take the event loop from the others.
 *
 * - Each peer's messages, once their MAC has verified (peers.ts), wait in that peer's own
 *   queue; a drain takes one message of each peer in turn (round robin), at most
 *   TURN_MESSAGES_MAX or TURN_MS per turn, then yields to the event loop (timers, clients,
 *   commits) and goes on. A queue over queueBytesMax pauses the reads of that peer's
 *   connection (TCP backpressure; its own send queue then drops, which the protocol
 *   retransmits), resumed once the queue is down to half; a new session of the peer
 *   starts paused while the queue is still above that (`connected`).
 * - Each peer has a budget of bytes and messages per second (token buckets with a burst of
 *   one second); a PING the mesh answers at once costs a message too (`charge`). Bytes
 *   cannot tell a flood from work: the leader sends every batch, and
 *   each backup forwards the client requests it receives, so the byte budget is a bound
 *   far above what a replica processes, not a fair share. A peer that spends its budget
 *   is muted: its queue is dropped and `onMuted` is called (the mesh closes its link and
 *   refuses it until the mute ends), counted per peer (fitb_peer_muted_total{peer,reason})
 *   and logged. A mute lasts muteMs, doubled each time the peer is muted again within
 *   MUTE_MEMORY_MS of the last one, up to muteMsMax.
 * - A peer whose message `precheck` finds no correct replica sends (`proves`: a FORWARD
 *   larger than the core ever sends, a vote naming another signer, an envelope whose
 *   message is not a map) is muted the same way, as misbehaving, and so is one the mesh or
 *   the ordering runtime catches at it after its MAC verified (`misbehaving`: a message
 *   that does not decode or is not valid); the ordering core's
 *   `peerFlooding` advisory mutes it for floodMuteMs.
 * - Before a message is processed, `precheck` (peer-filter.ts) may drop it cheaply.
 *
 * Muting is always time-bounded, and nothing here decides what a message means: a muted
 * correct peer loses some messages, as on a lossy network, and is heard again when its
 * mute ends. Safety never depends on it.
 */
import { RateLimiter } from "./rate.ts";

/** The budget interval: budgets are per second, with a burst of one second's worth. */
export const PEER_BYTES_PER_SECOND_MAX = 48 * 1024 * 1024;
export const PEER_MESSAGES_PER_SECOND_MAX = 20_000;
/** How long a peer that spent its budget is muted, at first; again soon after, twice as long, up to PEER_MUTE_MS_MAX. */
export const PEER_MUTE_MS = 5_000;
export const PEER_MUTE_MS_MAX = 30_000;
/** A mute this long after the last one ended starts again from PEER_MUTE_MS. */
export const MUTE_MEMORY_MS = 60_000;
/** How long a peer the ordering core flags as flooding is muted. */
export const PEER_FLOOD_MUTE_MS = 5_000;
/** Messages processed in one drain turn at most, and its time, before the loop gets a turn. */
export const TURN_MESSAGES_MAX = 256;
export const TURN_MS = 10;

export interface PeerInboxLimits {
  readonly bytesPerSecondMax: number;
  readonly messagesPerSecondMax: number;
  readonly muteMs: number;
  readonly muteMsMax: number;
  readonly floodMuteMs: number;
  /** Bytes waiting in one peer's queue before its reads are paused. */
  readonly queueBytesMax: number;
}

export type MuteReason = "budget" | "flooding" | "misbehaving";

export interface PeerInboxOptions {
  readonly limits: PeerInboxLimits;
  /**
   * Processes one message (decode, validate, the ordering core); `key` is the public key
   * the peer's session authenticated with, which the ordering driver checks against the
   * epoch's key for that replica (an unsigned COMMIT counts on the link's word).
   */
  readonly process: (from: number, msg: Uint8Array, key: Uint8Array) => void;
  /** Whether a message of `peer` counts against the byte budget (state transfer parts this replica is waiting for from it do not). */
  readonly chargesBytes?: (peer: number, msg: Uint8Array) => boolean;
  /** Why a message may be dropped before processing (peer-filter.ts), or null. */
  readonly precheck?: (from: number, msg: Uint8Array) => string | null;
  /** Whether a precheck's reason proves the peer faulty (no correct replica sends it): it is muted. */
  readonly proves?: (reason: string) => boolean;
  /** Stop and start reading the peer's inbound connection (its queue is full, then drained). */
  readonly pause: (peer: number) => void;
  readonly resume: (peer: number) => void;
  /** A peer was muted for `ms`: cut it off, count it and log it. */
  readonly onMuted: (peer: number, reason: MuteReason, detail: string, ms: number) => void;
  /** The peer's mute ended. */
  readonly onUnmuted?: (peer: number) => void;
  /** A message was dropped without processing: count it. */
  readonly onDropped: (peer: number, reason: string) => void;
  readonly now?: () => number;
  /** How the next drain turn is scheduled (tests); setImmediate by default. */
  readonly schedule?: (run: () => void) => void;
}

/** A message waiting in its peer's queue, with the key its session authenticated with. */
interface Queued {
  readonly msg: Uint8Array;
  readonly key: Uint8Array;
}

interface PeerQueue {
  readonly items: Queued[];
  head: number;
  bytes: number;
  /** Reads paused because the queue is full (not because of a mute). */
  pausedForQueue: boolean;
  mutedUntil: number;
  unmuteTimer: ReturnType<typeof setTimeout> | null;
  /** How long the next budget mute lasts (doubles while the peer keeps being muted). */
  nextMuteMs: number;
}

export class PeerInbox {
  private readonly queues = new Map<number, PeerQueue>();
  private readonly bytes: RateLimiter;
  private readonly messages: RateLimiter;
  /** PINGs answered at once, apart from the messages: a PING is not authenticated (peer links MAC only PEER frames). */
  private readonly pings: RateLimiter;
  private order: number[] = [];
  private next = 0;
  private scheduled = false;
  private stopped = false;

  constructor(private readonly options: PeerInboxOptions) {
    const { bytesPerSecondMax, messagesPerSecondMax } = options.limits;
    this.bytes = new RateLimiter(bytesPerSecondMax, bytesPerSecondMax);
    this.messages = new RateLimiter(messagesPerSecondMax, messagesPerSecondMax);
    this.pings = new RateLimiter(messagesPerSecondMax, messagesPerSecondMax);
  }

  /** Durations only (budgets, mutes): performance.now by default, which a wall-clock step does not move. */
  private now(): number {
    return this.options.now === undefined ? performance.now() : this.options.now();
  }

  private queueOf(peer: number): PeerQueue {
    let q = this.queues.get(peer);
    if (q === undefined) {
      q = { items: [], head: 0, bytes: 0, pausedForQueue: false, mutedUntil: 0, unmuteTimer: null, nextMuteMs: this.options.limits.muteMs };
      this.queues.set(peer, q);
      this.order = [...this.queues.keys()].sort((a, b) => a - b);
    }
    return q;
  }

  /** Whether the peer is muted now. */
  isMuted(peer: number): boolean {
    return (this.queues.get(peer)?.mutedUntil ?? 0) > this.now();
  }

  /** Bytes waiting for `peer` (tests, status). */
  queuedBytes(peer: number): number {
    return this.queues.get(peer)?.bytes ?? 0;
  }

  /** A message from `peer` whose MAC verified on a session authenticated with `key`: queued, or dropped if the peer is muted or over its budget. */
  push(peer: number, msg: Uint8Array, key: Uint8Array): void {
    if (!this.charge(peer)) return;
    const q = this.queueOf(peer);
    const now = this.now();
    const { queueBytesMax, bytesPerSecondMax } = this.options.limits;
    if ((this.options.chargesBytes?.(peer, msg) ?? true) && !this.bytes.take(String(peer), msg.length, now)) {
      this.budgetMute(peer, q, `more than ${bytesPerSecondMax} bytes a second`);
      this.options.onDropped(peer, "muted");
      return;
    }
    q.items.push({ msg, key });
    q.bytes += msg.length;
    if (q.bytes > queueBytesMax && !q.pausedForQueue) {
      q.pausedForQueue = true;
      this.options.pause(peer);
    }
    this.schedule();
  }

  /**
   * Takes one PING of `peer`'s budget of them (as many a second as messages, counted apart):
   * a PING is answered at once with a PONG, which would otherwise let whoever sends them make
   * this replica answer without bound. False when the peer is muted or over that budget; the
   * caller then closes the link. Past the budget the peer is not muted: a PING carries no MAC,
   * so anyone on the path may have sent it, and muting for it would let them silence a
   * correct replica.
   */
  chargePing(peer: number): boolean {
    if (this.stopped) return false;
    const now = this.now();
    if (this.queueOf(peer).mutedUntil > now) {
      this.options.onDropped(peer, "muted");
      return false;
    }
    return this.pings.take(String(peer), 1, now);
  }

  /**
   * Takes one message of `peer`'s message budget, for a message pushed. False, and the
   * drop counted, when the peer is muted or this message put it over its budget (it is
   * muted now).
   */
  charge(peer: number): boolean {
    if (this.stopped) return false;
    const q = this.queueOf(peer);
    const now = this.now();
    if (q.mutedUntil > now) {
      this.options.onDropped(peer, "muted");
      return false;
    }
    if (!this.messages.take(String(peer), 1, now)) {
      this.budgetMute(peer, q, `more than ${this.options.limits.messagesPerSecondMax} messages a second`);
      this.options.onDropped(peer, "muted");
      return false;
    }
    return true;
  }

  /**
   * `peer` sent what no correct replica sends (`detail` says what): muted as misbehaving,
   * for longer each time it comes back soon after, as a precheck that `proves` it is.
   */
  misbehaving(peer: number, detail: string): void {
    const q = this.queueOf(peer);
    // Caught again while muted (what it sent before the mute, still on its way): the mute stands.
    if (this.stopped || q.mutedUntil > this.now()) return;
    this.budgetMute(peer, q, `sent what no correct replica sends (${detail})`, "misbehaving");
  }

  /** Mutes a peer over its budget or misbehaving, for longer each time it comes back soon after. */
  private budgetMute(peer: number, q: PeerQueue, detail: string, reason: MuteReason = "budget"): void {
    const { muteMs, muteMsMax } = this.options.limits;
    if (this.now() - q.mutedUntil > MUTE_MEMORY_MS) q.nextMuteMs = muteMs;
    const ms = q.nextMuteMs;
    q.nextMuteMs = Math.min(muteMsMax, ms * 2);
    this.mute(peer, reason, detail, ms);
  }

  /** Mutes `peer` for `ms` (from now; a longer mute already on stays). */
  mute(peer: number, reason: MuteReason, detail: string, ms: number): void {
    if (this.stopped) return;
    const q = this.queueOf(peer);
    const until = this.now() + ms;
    if (until <= q.mutedUntil) return;
    q.mutedUntil = until;
    for (let i = q.head; i < q.items.length; i++) this.options.onDropped(peer, "muted");
    q.items.length = 0;
    q.head = 0;
    q.bytes = 0;
    q.pausedForQueue = false;
    if (q.unmuteTimer !== null) clearTimeout(q.unmuteTimer);
    q.unmuteTimer = setTimeout(() => this.unmute(peer, q), ms);
    this.options.onMuted(peer, reason, detail, ms);
  }

  private unmute(peer: number, q: PeerQueue): void {
    q.unmuteTimer = null;
    if (this.stopped) return;
    const left = q.mutedUntil - this.now();
    if (left > 0) {
      q.unmuteTimer = setTimeout(() => this.unmute(peer, q), left);
      return;
    }
    this.options.onUnmuted?.(peer);
  }

  /**
   * The peer's connection was replaced (it reconnected; the mesh calls this once the new
   * one is its inbound connection). A new connection reads, unless the queue is still above
   * the resume threshold (half of queueBytesMax): then the pause goes on the new connection
   * too, lifted by the drain as for the old one. Otherwise a peer over its bound could open
   * a new session to get each next message in, and queue without bound.
   */
  connected(peer: number): void {
    const q = this.queues.get(peer);
    if (q === undefined) return;
    q.pausedForQueue = q.bytes > this.options.limits.queueBytesMax / 2;
    if (q.pausedForQueue) this.options.pause(peer);
  }

  /** How long the peer stays muted (0: it is not). */
  mutedForMs(peer: number): number {
    return Math.max(0, (this.queues.get(peer)?.mutedUntil ?? 0) - this.now());
  }

  stop(): void {
    this.stopped = true;
    for (const q of this.queues.values()) {
      if (q.unmuteTimer !== null) clearTimeout(q.unmuteTimer);
      q.unmuteTimer = null;
      q.items.length = 0;
      q.head = 0;
      q.bytes = 0;
    }
  }

  /** Whether messages wait to be processed. */
  get pending(): boolean {
    for (const q of this.queues.values()) if (q.head < q.items.length) return true;
    return false;
  }

  /** A turn now, if messages wait (the client scheduler gives the peers the first turn, client-frames.ts). */
  drainPending(): void {
    if (this.pending) this.drain();
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    (this.options.schedule ?? ((run: () => void) => void setImmediate(run)))(() => this.drain());
  }

  /** One turn: one message per peer in turn, within the turn's bounds. */
  drain(): void {
    this.scheduled = false;
    if (this.stopped) return;
    const started = performance.now();
    let processed = 0;
    let idle = 0;
    const { queueBytesMax } = this.options.limits;
    while (processed < TURN_MESSAGES_MAX && idle < this.order.length) {
      const peer = this.order[this.next % this.order.length] as number;
      this.next = (this.next + 1) % this.order.length;
      const q = this.queues.get(peer) as PeerQueue;
      if (q.head >= q.items.length) {
        idle++;
        continue;
      }
      idle = 0;
      const { msg, key } = q.items[q.head] as Queued;
      q.items[q.head++] = EMPTY;
      q.bytes -= msg.length;
      if (q.head >= q.items.length) {
        q.items.length = 0;
        q.head = 0;
      } else if (q.head > 1024 && q.head * 2 > q.items.length) {
        q.items.splice(0, q.head);
        q.head = 0;
      }
      if (q.pausedForQueue && q.bytes <= queueBytesMax / 2) {
        q.pausedForQueue = false;
        this.options.resume(peer);
      }
      processed++;
      const dropped = this.options.precheck?.(peer, msg) ?? null;
      if (dropped === null) this.options.process(peer, msg, key);
      else {
        this.options.onDropped(peer, dropped);
        if (this.options.proves?.(dropped) === true) this.misbehaving(peer, dropped);
      }
      if (this.stopped) return;
      if (performance.now() - started > TURN_MS) break;
    }
    for (const q of this.queues.values()) {
      if (q.head < q.items.length) {
        this.schedule();
        return;
      }
    }
  }
}

const EMPTY: Queued = { msg: new Uint8Array(0), key: new Uint8Array(0) };
