/**
 * Live subscriptions on one replica: who is subscribed to which tag from which seq, and
 * the fan-out of stored batches to them. A subscriber whose connection cannot take more
 * (its outbound queue is at the bound) is told with SUB_END "SLOW" and dropped, so one
 * slow console never makes the replica grow memory or hold up others; it resubscribes
 * from the next seq it wants. A subscription's frames (SUB_OK, EVENTS, SUB_END) go out in
 * its channel's priority (egress.ts): on a connection with a backlog, a critical channel's
 * EVENTS are written before a low channel's that wait. A connection's subscriptions to one
 * channel that asked for it (SUBSCRIBE `shared`, protocol version 4) get each live batch
 * in one EVENTS frame naming them all (`subs`), so a relay or collector holding many
 * subscriptions of one channel costs the replica one copy of each batch, not one per
 * subscription.
 *
 * A subscription from a past seq replays the retained history a bounded step at a time
 * (HISTORY_BATCHES_PER_READ, HISTORY_BYTES_PER_READ): the first step in its SUBSCRIBE, the
 * rest in later event-loop turns, shared round robin by every subscription still catching
 * up, so one SUBSCRIBE from seq 1 never holds the loop (peers' votes, other clients) for
 * longer than a step. Besides its share, each subscription catching up may send at every
 * turn what its channel published since its last step (work a live subscriber does
 * anyway): a busy channel never outruns a replay, however many others catch up with it,
 * so none ends TRIMMED for waiting its turn. While it catches up, live fan-out skips it: the replay reads on up
 * to the channel's next seq, which covers what was published meanwhile, and it goes live
 * in the same synchronous step as that last read, so nothing is sent twice or missed.
 * A replay is paced by its subscriber: it sends a batch only while the connection keeps
 * room under its bounds after it (REPLAY_HEADROOM_BYTES), and otherwise waits, parked by
 * connection, until the subscriber has read; only live fan-out cuts a subscriber that
 * does not keep up (SLOW).
 * Subscriptions are capped per connection, per remote address and in all.
 */
import type { ChannelMachine } from "../core/channels/machine.ts";
import { unorderedFromProblem } from "../core/channels/request.ts";
import type { StoredBatch } from "../core/channels/types.ts";
import { SharedPayloadPrefix } from "../crypto/session.ts";
import { type EventsTail, eventsPrefix, eventsRest, eventsRestShared, eventsTail } from "../../wire/hot.ts";
import type { Frame } from "../../wire/schemas.ts";
import { EVENTS_SUBS_MAX, FrameType, type SubEndCode } from "../../wire/types.ts";
import type { AuditLog } from "./audit.ts";
import type { ChannelMetrics } from "./channel-metrics.ts";
import type { Metrics } from "./metrics.ts";
import { keyText } from "./quota.ts";
import type { FramedConn } from "./framed.ts";
import type { ClientSession } from "./server.ts";
import { EGRESS_FRAME_OVERHEAD_BYTES, egressOfPriority } from "./egress.ts";

/**
 * Batches one replay step sends at most (a SUBSCRIBE's first step, or a catch-up turn for
 * all the subscriptions catching up together). 256 one-event batches take about half a
 * millisecond to frame and queue (a replay of some 40,000 in one call held the loop 60-80
 * ms): a step stays far inside the client scheduler's CLIENT_TURN_MS (10 ms).
 */
export const HISTORY_BATCHES_PER_READ = 256;
/**
 * Bytes of batches (body and signature) one replay step sends at most, whatever their
 * count; a step sends at least one batch, so a replay always moves on. Each batch is
 * hashed once for its frame's MAC and copied when written, so this bounds a step of large
 * batches as the count bounds one of small ones: 1 MiB is 0.6 ms of SHA-256 on a 2-core
 * test machine, and an eighth of a connection's CLIENT_OUTBOUND_BYTES_MAX.
 */
export const HISTORY_BYTES_PER_READ = 1024 * 1024;
/**
 * A replay sends a batch only while its connection, after it, would still have this much
 * room under its bound for the channel's class and under the replica's output budget for
 * the address and in all; otherwise it waits for the subscriber to read, and goes on from
 * where it stopped. Live fan-out fills a connection as fast as the channel is published
 * to, and a subscriber that cannot keep up with it is cut (SLOW); a replay is as fast as
 * the replica can read, so without this a subscriber asking for a long history was cut for
 * reading at its own pace, and on an unordered channel, where it resubscribes live (no
 * common seq to resume from), lost the rest of that history. The room left keeps live
 * traffic of the connection's other subscriptions from being cut by a replay's backlog.
 */
export const REPLAY_HEADROOM_BYTES = 2 * 1024 * 1024;
/** While replays wait and none can send, the next catch-up turn comes this much later (no busy loop). */
export const REPLAY_WAIT_MS = 5;
/** A replay on an idle connection that the output budget leaves no room waits at most this long, then ends SLOW. */
export const REPLAY_IDLE_WAIT_MS_MAX = 10_000;

/**
 * Open channel subscriptions of one remote address's connections together, whatever their
 * keys (a key costs nothing to make): 16 a connection over the 256 connections an address
 * may open (CLIENT_CONNECTIONS_PER_ADDRESS_MAX), or 16 connections at the default
 * connection_subscriptions_max (256). Each live subscription costs a frame per publish of
 * its channel, so without it one address held 256 x 256 = 65,536 subscriptions to one
 * public channel and each publish of one event cost tens of milliseconds of fan-out and
 * over 100 of sealing and writing; now that takes 16 addresses, as filling the output
 * budget does (CLIENT_OUTPUT_BYTES_PER_ADDRESS_MAX, a sixteenth). Loopback is one address
 * like any other, as for the connection caps (server.ts): a replica host's relay (one
 * connection of at most connection_subscriptions_max), `fitb bench --subscribers 100` and
 * a console fit many times over. A cluster whose connection_subscriptions_max is above it
 * gets that instead, so one connection may still hold what the file allows.
 */
export const SUBSCRIPTIONS_PER_ADDRESS_MAX = 4_096;
/**
 * Open channel subscriptions at this replica in all: 16 a connection over the
 * CLIENT_CONNECTIONS_MAX (4,096) connections it serves, the same average the per-address
 * cap allows (16 addresses at that cap); system subscriptions have their own
 * (SYS_SUBSCRIPTIONS_MAX, one a connection). It bounds the memory of subscriptions and the
 * fan-out of one publish however many addresses ask.
 */
export const SUBSCRIPTIONS_MAX = 65_536;
/**
 * A total-order channel's first seq (its log starts there, core/channels/channel.ts): a
 * `from` below it asks for no event that ever was, so it asks for everything retained.
 */
const CHANNEL_SEQ_FIRST = 1;

interface Subscription {
  readonly session: ClientSession;
  readonly sub: number;
  readonly tag: string;
  readonly ordered: boolean;
  /** The egress class of its frames: the channel's priority, fixed when the channel was created. */
  readonly urgency: number;
  /** Its live batches may share one EVENTS frame with the connection's other such subscriptions of the channel. */
  readonly shared: boolean;
  /** The next seq its history replay sends while it catches up (live fan-out skips it); null once live. */
  replayFrom: number | null;
  /** Its channel's published batches and bytes (Published) at its last replay step. */
  seenBatches: number;
  seenBytes: number;
  /** While its replay waits for room: the frame bytes its next batch needs, and since when it waits (performance.now). */
  waitBytes: number;
  waitingSinceMs: number;
}

/** Batches and bytes published to a channel with subscribers, ever: what a replay step may send besides its share. */
interface Published {
  batches: number;
  bytes: number;
}

/** What a replay step may still send: decremented by each batch sent. */
interface ReplayBudget {
  batches: number;
  bytes: number;
}

/** How the subscriptions see execution: read-your-writes (execution-gate.ts). */
export interface ExecutionView {
  /** The decided seq the channel state has executed through. */
  executedSeq(): number;
  /** Holds `retry` until the replica executed `after`; false: answer now. */
  hold(session: ClientSession, after: number | undefined, retry: (expired: boolean) => void): boolean;
}

const NEVER_HOLDS: ExecutionView = { executedSeq: () => 0, hold: () => false };

/** A SUBSCRIBE held for read-your-writes (ExecutionView.hold): its id is taken until it is answered or cancelled. */
interface HeldSubscribe {
  readonly tag: string;
}

export class Subscriptions {
  private readonly byTag = new Map<string, Map<string, Subscription>>();
  private readonly bySession = new Map<number, Map<number, Subscription>>();
  /** Open subscriptions per client key (lowercase hex), for keys' subscription quotas. */
  private readonly byKey = new Map<string, number>();
  /**
   * SUBSCRIBEs held for read-your-writes, per session by id: an UNSUBSCRIBE cancels one, and
   * its id is in use meanwhile. Bounded by what the execution view holds (256 a session).
   */
  private readonly held = new Map<number, Map<number, HeldSubscribe>>();
  /** Open subscriptions per remote address, and in all, for their caps. An address leaves the map at zero. */
  private readonly byAddress = new Map<string, number>();
  private open = 0;
  /** Subscriptions still replaying history, in the order of their next catch-up step (round robin). */
  private readonly catchingUp = new Set<Subscription>();
  /**
   * Replaying subscriptions whose connection had no room for their next batch, by
   * connection: a turn looks at each such connection once and takes its replays back into
   * `catchingUp` when it has room, so waiting costs a turn one check per connection.
   */
  private readonly waitingRoom = new Map<ClientSession, Set<Subscription>>();
  private waitingCount = 0;
  /** What was published to each channel that has subscribers: a replay step's own allowance. */
  private readonly published = new Map<string, Published>();
  /** The pending catch-up turn; null when none is catching up. */
  private catchUpTimer:
    | { readonly kind: "immediate"; readonly handle: ReturnType<typeof setImmediate> }
    | {
        readonly kind: "timeout";
        readonly handle: ReturnType<typeof setTimeout>;
      }
    | null = null;
  private readonly perAddressMax: number;

  constructor(
    private readonly self: number,
    private readonly machine: ChannelMachine,
    private readonly metrics: Metrics,
    private readonly perConnectionMax: number,
    private readonly execution: ExecutionView = NEVER_HOLDS,
    private readonly channels: ChannelMetrics | null = null,
    private readonly audit: AuditLog | null = null,
    /** A key's quota of open subscriptions at this replica (set-quota), or null: none. */
    private readonly keyQuota: (keyHex: string) => number | null = () => null,
  ) {
    this.perAddressMax = Math.max(SUBSCRIPTIONS_PER_ADDRESS_MAX, perConnectionMax);
  }

  get count(): number {
    return this.open;
  }

  /** Subscriptions still replaying history (live fan-out skips them until they catch up). */
  get replaying(): number {
    return this.catchingUp.size + this.waitingCount;
  }

  /** Of those, the ones waiting for their subscriber to read: their connection had no room for the next batch. */
  get replayWaiting(): number {
    return this.waitingCount;
  }

  /** Whether `sub` is in use on this session: an open subscription or a held SUBSCRIBE. */
  has(session: ClientSession, sub: number): boolean {
    return this.bySession.get(session.id)?.has(sub) === true || this.held.get(session.id)?.has(sub) === true;
  }

  /**
   * Refuses a SUBSCRIBE whose id this session's subscription or held SUBSCRIBE has
   * (BAD_REQUEST, in that subscription's class: it names it, so it keeps its place among
   * its frames; a held one has sent none yet); false when the id is free here.
   */
  refuseDuplicate(session: ClientSession, sub: number): boolean {
    if (!this.has(session, sub)) return false;
    const urgency = this.bySession.get(session.id)?.get(sub)?.urgency;
    this.end(session, sub, "BAD_REQUEST", `subscription id ${sub} is already in use`, undefined, urgency);
    return true;
  }

  /**
   * Starts a subscription: checks access, replays retained history from `from`, then
   * keeps the subscriber live. For total-order channels `from` defaults to the next seq,
   * and 0 means everything retained; for unordered ones `from` absent means live only and
   * 0 means everything retained. A SUBSCRIBE held for `after` keeps its id until answered.
   */
  subscribe(session: ClientSession, sub: number, tag: string, from: number | undefined, after?: number, shared = false): void {
    if (this.refuseDuplicate(session, sub)) return;
    const mine = this.bySession.get(session.id) ?? new Map<number, Subscription>();
    const limit = this.capReached(session, mine.size);
    if (limit !== null) {
      this.end(session, sub, "LIMIT", limit);
      this.auditRefusal(session, tag, "LIMIT", limit);
      return;
    }
    const quota = this.keyQuota(session.keyHex);
    const open = this.byKey.get(session.keyHex) ?? 0;
    if (quota !== null && open >= quota) {
      const reason = `key ${keyText(session.keyHex)} has ${open} subscriptions open at this replica; its quota is ${quota} (set-quota)`;
      this.end(session, sub, "LIMIT", reason);
      return;
    }
    const access = this.machine.checkSubscribe(tag, session.key);
    if (!access.ok) {
      // Judged on this replica's state: if the client saw a later decision, wait for it,
      // unless the client has cancelled it (UNSUBSCRIBE) or closed meanwhile.
      const waiting: HeldSubscribe = { tag };
      const again = (expired: boolean): void => {
        if (!this.unhold(session, sub, waiting)) return;
        this.subscribe(session, sub, tag, from, expired ? undefined : after, shared);
      };
      if (this.execution.hold(session, after, again)) {
        const held = this.held.get(session.id) ?? new Map<number, HeldSubscribe>();
        held.set(sub, waiting);
        this.held.set(session.id, held);
        return;
      }
      const code: SubEndCode = access.code === "unknown-channel" ? "UNKNOWN_CHANNEL" : "UNAUTHORIZED";
      this.end(session, sub, code, access.reason, this.execution.executedSeq());
      this.auditRefusal(session, tag, code, access.reason);
      return;
    }
    const info = this.machine.channelInfo(tag);
    if (info === null) {
      this.end(session, sub, "UNKNOWN_CHANNEL", `no channel ${tag}`, this.execution.executedSeq());
      return;
    }
    const ordered = info.order === "total";
    const urgency = egressOfPriority(this.machine.priorityOf(tag));
    const unorderedFrom = ordered ? null : unorderedFromProblem(tag, info.fault, from);
    if (unorderedFrom !== null) {
      // Each replica numbers its own store of an unordered channel, so a position means
      // something else at each: replayed from it, a subscriber got a different slice from
      // each replica, and on byzantine/none waited for the f+1 copies vouching for a key
      // that fewer replicas than that had past the position (wire/PROTOCOL.md 4.10).
      // With `at`: the order is replicated state, judged on this replica's (a channel since recreated with another order).
      this.end(session, sub, "BAD_REQUEST", unorderedFrom, this.execution.executedSeq(), urgency);
      return;
    }
    // Below the first seq is no event, hence no gap: only what retention dropped is TRIMMED.
    const wanted = from === undefined ? undefined : Math.max(from, CHANNEL_SEQ_FIRST);
    const start = ordered ? (wanted ?? info.nextSeq) : from === undefined ? null : Math.max(from, info.oldestSeq);
    if (start !== null && ordered && start < info.oldestSeq && start < info.nextSeq) {
      const reason = `seq ${start} of ${tag} is no longer retained; the oldest available is ${info.oldestSeq}`;
      this.send(
        session,
        { type: FrameType.SUB_END, body: { sub, replica: this.self, code: "TRIMMED", reason, oldest: info.oldestSeq } },
        urgency,
      );
      return;
    }
    const replayFrom = start !== null && start < info.nextSeq ? start : null;
    const published = this.publishedTo(tag);
    const subscription: Subscription = {
      session,
      sub,
      tag,
      ordered,
      urgency,
      shared,
      replayFrom,
      waitBytes: 0,
      waitingSinceMs: 0,
      seenBatches: published.batches,
      seenBytes: published.bytes,
    };
    const ok: Frame = { type: FrameType.SUB_OK, body: { sub, replica: this.self, next: info.nextSeq, at: this.execution.executedSeq() } };
    // A SUB_OK the connection has no room for is a frame it cannot take, as an EVENTS would
    // be: the subscription is not opened, and ends as a slow one does.
    if (!this.send(session, ok, urgency)) {
      this.dropSlow(subscription);
      return;
    }
    mine.set(sub, subscription);
    this.bySession.set(session.id, mine);
    this.byKey.set(session.keyHex, (this.byKey.get(session.keyHex) ?? 0) + 1);
    this.byAddress.set(session.conn.remote, (this.byAddress.get(session.conn.remote) ?? 0) + 1);
    this.open++;
    const tagSubs = this.byTag.get(tag) ?? new Map<string, Subscription>();
    tagSubs.set(`${session.id}/${sub}`, subscription);
    this.byTag.set(tag, tagSubs);
    if (replayFrom === null) return;
    // The first step now (a short resume is live at once); the rest in later turns.
    const step = this.replayStep(subscription, { batches: HISTORY_BATCHES_PER_READ, bytes: HISTORY_BYTES_PER_READ });
    if (step === "more") this.catchingUp.add(subscription);
    else if (step === "waiting") this.park(subscription);
    this.scheduleCatchUp();
  }

  /** Why a new subscription of this session would be over a cap (per connection, per address, in all), or null. */
  private capReached(session: ClientSession, onConnection: number): string | null {
    if (onConnection >= this.perConnectionMax) return `at most ${this.perConnectionMax} subscriptions per connection`;
    if ((this.byAddress.get(session.conn.remote) ?? 0) >= this.perAddressMax) {
      return `at most ${this.perAddressMax} subscriptions per remote address (${session.conn.remote})`;
    }
    if (this.open >= SUBSCRIPTIONS_MAX) return `at most ${SUBSCRIPTIONS_MAX} subscriptions at this replica`;
    return null;
  }

  unsubscribe(session: ClientSession, sub: number): void {
    const waiting = this.held.get(session.id)?.get(sub);
    if (waiting !== undefined) {
      // Cancelled before it was answered: its retry finds it gone and does nothing.
      this.unhold(session, sub, waiting);
      const urgency = egressOfPriority(this.machine.priorityOf(waiting.tag));
      this.end(session, sub, "UNSUBSCRIBED", "unsubscribed", undefined, urgency);
      return;
    }
    const subscription = this.bySession.get(session.id)?.get(sub);
    if (subscription === undefined) return;
    this.remove(subscription);
    this.end(session, sub, "UNSUBSCRIBED", "unsubscribed", undefined, subscription.urgency);
  }

  /** Takes a held SUBSCRIBE out of the held ones; false if `waiting` is no longer held there (cancelled, or the session closed). */
  private unhold(session: ClientSession, sub: number, waiting: HeldSubscribe): boolean {
    const held = this.held.get(session.id);
    if (held?.get(sub) !== waiting) return false;
    held.delete(sub);
    if (held.size === 0) this.held.delete(session.id);
    return true;
  }

  /** Drops every subscription of a closed connection, and the SUBSCRIBEs it has held. */
  dropSession(session: ClientSession): void {
    this.held.delete(session.id);
    const mine = this.bySession.get(session.id);
    if (mine === undefined) return;
    for (const subscription of [...mine.values()]) this.remove(subscription);
    this.bySession.delete(session.id);
  }

  /** Fans a newly stored batch out to the tag's live subscribers. */
  publish(tag: string, batch: StoredBatch, ordered: boolean): void {
    const subs = this.byTag.get(tag);
    if (subs === undefined) return;
    const cells = this.channels?.of(tag) ?? null;
    const published = this.publishedTo(tag);
    published.batches++;
    published.bytes += batch.body.length + batch.sig.length;
    // Once per batch: the publisher's signed time to this fan-out (hosts' clocks are kept
    // within CLIENT_CLOCK_SKEW_MS_MAX, so this is end-to-end latency give or take the skew).
    cells?.deliveryLatency?.observe(Math.max(0, Date.now() - batch.tsMs) / 1000);
    // The batch is encoded and hashed once for every subscriber; each frame adds its sub id,
    // and its seal is a MAC over the payload's hash (wire/PROTOCOL.md 5.2).
    const shared = this.sharedPayload(batch, ordered);
    const tail = eventsTail(tag, this.self);
    let together: Map<number, Subscription[]> | null = null;
    for (const subscription of [...subs.values()]) {
      // Still replaying: its replay reads on through this batch (stored before this call).
      if (subscription.replayFrom !== null) continue;
      if (!subscription.shared) {
        this.deliver(subscription, batch, cells, shared, tail);
        continue;
      }
      together ??= new Map();
      const mates = together.get(subscription.session.id);
      if (mates === undefined) together.set(subscription.session.id, [subscription]);
      else mates.push(subscription);
    }
    if (together === null) return;
    for (const mates of together.values()) {
      if (mates.length === 1) this.deliver(mates[0] as Subscription, batch, cells, shared, tail);
      else this.deliverShared(mates, batch, cells, shared, tail);
    }
  }

  /** Ends every subscription of a destroyed channel. */
  channelDestroyed(tag: string): void {
    const subs = this.byTag.get(tag);
    if (subs === undefined) return;
    for (const subscription of [...subs.values()]) {
      this.remove(subscription);
      this.end(subscription.session, subscription.sub, "DESTROYED", `channel ${tag} was destroyed`, undefined, subscription.urgency);
    }
  }

  /**
   * A subscriber key was unregistered from `tag`: each live subscription whose key may no
   * longer read it (a private channel) ends as UNAUTHORIZED. Called at the decided seq of
   * the revocation, so every correct replica ends the same subscriptions, and the client
   * sees f+1 agreeing ends. On a public channel nothing ends.
   */
  accessRevoked(tag: string): void {
    const subs = this.byTag.get(tag);
    if (subs === undefined) return;
    for (const subscription of [...subs.values()]) {
      if (this.machine.canSubscribe(tag, subscription.session.key)) continue;
      this.remove(subscription);
      const reason = `the subscriber key was unregistered from ${tag}`;
      this.end(subscription.session, subscription.sub, "UNAUTHORIZED", reason, undefined, subscription.urgency);
    }
  }

  /**
   * The channel state jumped to an installed snapshot: live subscribers would silently
   * miss the decisions it covers, and a channel destroyed and created again in that range
   * would go on feeding them with no new access check. Every live subscription is ended
   * as SLOW, which tells the client to subscribe again from the next seq it wants (and so
   * to be checked and served from the new state).
   */
  stateReplaced(): void {
    for (const subs of [...this.bySession.values()]) {
      for (const subscription of [...subs.values()]) {
        this.remove(subscription);
        if (
          !this.end(
            subscription.session,
            subscription.sub,
            "SLOW",
            "this replica caught up by state transfer; resubscribe from the next wanted seq",
            undefined,
            subscription.urgency,
          )
        ) {
          subscription.session.conn.close();
        }
      }
    }
  }

  private auditRefusal(session: ClientSession, tag: string, code: SubEndCode, reason: string): void {
    this.audit?.warn("subscribe-refused", "subscribe refused", {
      key: session.key,
      address: session.conn.remote,
      tag,
      reason: `${code}: ${reason}`,
    });
  }

  /** Ends every subscription (the replica is stopping). */
  shutdown(): void {
    for (const subs of this.bySession.values()) {
      for (const subscription of subs.values()) {
        this.end(subscription.session, subscription.sub, "SHUTDOWN", "replica stopping", undefined, subscription.urgency);
      }
    }
    this.bySession.clear();
    this.byTag.clear();
    this.published.clear();
    this.byKey.clear();
    this.byAddress.clear();
    this.open = 0;
    this.held.clear();
    this.catchingUp.clear();
    this.waitingRoom.clear();
    this.waitingCount = 0;
    this.cancelCatchUp();
  }

  /**
   * Sends a catching-up subscription's history from `replayFrom`, within `budget`. Once it
   * has sent up to the channel's next seq it is live (replayFrom null), in this same
   * synchronous step: every later batch reaches it by publish, every earlier one was read
   * here. "more" while it still has history to send, "waiting" when its connection had no
   * room for the next batch (roomForReplay: it goes on from there once the subscriber has
   * read), "live" once live or ended (the history it needs trimmed meanwhile: TRIMMED; a
   * frame the connection refused after all: SLOW).
   */
  private replayStep(subscription: Subscription, budget: ReplayBudget): "more" | "waiting" | "live" {
    const from = subscription.replayFrom as number;
    const read = this.machine.readFrom(subscription.tag, from, Math.min(budget.batches, HISTORY_BATCHES_PER_READ));
    if (!read.ok) {
      this.remove(subscription);
      const oldest = read.code === "trimmed" ? read.oldestSeq : undefined;
      const code: SubEndCode = read.code === "trimmed" ? "TRIMMED" : "UNKNOWN_CHANNEL";
      const body = { sub: subscription.sub, replica: this.self, code, reason: read.reason, ...(oldest === undefined ? {} : { oldest }) };
      this.send(subscription.session, { type: FrameType.SUB_END, body }, subscription.urgency);
      return "live";
    }
    const tail = eventsTail(subscription.tag, this.self);
    const cells = this.channels?.of(subscription.tag) ?? null;
    let next = from;
    let waiting = false;
    for (const batch of read.batches) {
      if (budget.batches <= 0 || budget.bytes <= 0) break;
      const frameBytes = batch.body.length + batch.sig.length + EGRESS_FRAME_OVERHEAD_BYTES;
      if (!roomForReplay(subscription.session.conn, frameBytes, subscription.urgency)) {
        subscription.waitBytes = frameBytes;
        waiting = true;
        break;
      }
      if (!this.deliver(subscription, batch, cells, this.sharedPayload(batch, subscription.ordered), tail)) return "live";
      budget.batches--;
      budget.bytes -= batch.body.length + batch.sig.length;
      next = batch.firstSeq + batch.count;
    }
    // An empty read is the end of the log too (nothing at or past `from`).
    if (read.batches.length === 0 || next >= read.nextSeq) {
      subscription.replayFrom = null;
      return "live";
    }
    subscription.replayFrom = next;
    return waiting ? "waiting" : "more";
  }

  /** A replay waits for its connection to have room (waitingRoom). */
  private park(subscription: Subscription): void {
    let parked = this.waitingRoom.get(subscription.session);
    if (parked === undefined) {
      parked = new Set();
      this.waitingRoom.set(subscription.session, parked);
    }
    if (!parked.has(subscription)) {
      this.waitingCount++;
      subscription.waitingSinceMs = performance.now();
    }
    parked.add(subscription);
  }

  /**
   * Takes back into `catchingUp` the waiting replays of every connection that has room
   * again for what they wait to send (one check per connection). A replay whose connection
   * is idle and still has no room (the output budget of its address, or of all clients,
   * held by other connections) for REPLAY_IDLE_WAIT_MS_MAX is ended as a slow subscriber's
   * would be (SLOW: the client subscribes again): it would otherwise wait for good, on a
   * connection that looks healthy.
   */
  private unparkWithRoom(): void {
    const now = performance.now();
    for (const [session, parked] of this.waitingRoom) {
      // The most urgent of them and the largest frame set the check; each one checks its own room before every batch.
      let urgency = 0;
      let bytes = 0;
      let since = now;
      for (const subscription of parked) {
        urgency = Math.max(urgency, subscription.urgency);
        bytes = Math.max(bytes, subscription.waitBytes);
        since = Math.min(since, subscription.waitingSinceMs);
      }
      if (roomForReplay(session.conn, bytes, urgency)) {
        this.waitingRoom.delete(session);
        this.waitingCount -= parked.size;
        for (const subscription of parked) this.catchingUp.add(subscription);
      } else if (session.conn.pendingBytes === 0 && now - since >= REPLAY_IDLE_WAIT_MS_MAX) {
        for (const subscription of [...parked]) this.dropSlow(subscription);
      }
    }
  }

  /** The next catch-up turn: at once while some replay can send, REPLAY_WAIT_MS later while all wait for room. */
  private scheduleCatchUp(): void {
    // A replay that can send does not wait behind the timer of the ones that wait for room.
    if (this.catchUpTimer?.kind === "timeout" && this.catchingUp.size > 0) this.cancelCatchUp();
    if (this.catchUpTimer !== null) return;
    if (this.catchingUp.size > 0) this.catchUpTimer = { kind: "immediate", handle: setImmediate(() => this.catchUpTurn()) };
    else if (this.waitingCount > 0) this.catchUpTimer = { kind: "timeout", handle: setTimeout(() => this.catchUpTurn(), REPLAY_WAIT_MS) };
  }

  private cancelCatchUp(): void {
    const timer = this.catchUpTimer;
    if (timer?.kind === "immediate") clearImmediate(timer.handle);
    else if (timer?.kind === "timeout") clearTimeout(timer.handle);
    this.catchUpTimer = null;
  }

  /**
   * One catch-up turn: the waiting replays of connections that have room again rejoin the
   * line; then one step's budget shared by every subscription catching up, taken in turn
   * (the one at the front, then to the back of the line if it still has history to send,
   * or to the waiting room if its connection had no room), and each one's own allowance of
   * what its channel published since its last step (spent even by a step that waits: what
   * it could not send is read again later, not owed); then the loop gets a turn (peers,
   * other clients) before the next.
   */
  private catchUpTurn(): void {
    this.catchUpTimer = null;
    this.unparkWithRoom();
    const share: ReplayBudget = { batches: HISTORY_BATCHES_PER_READ, bytes: HISTORY_BYTES_PER_READ };
    for (const subscription of [...this.catchingUp]) {
      // Ended by an earlier one's step (a connection closed): its catch-up is over.
      if (!this.catchingUp.has(subscription)) continue;
      const published = this.publishedTo(subscription.tag);
      const own = { batches: published.batches - subscription.seenBatches, bytes: published.bytes - subscription.seenBytes };
      if (own.batches === 0 && (share.batches <= 0 || share.bytes <= 0)) continue;
      subscription.seenBatches = published.batches;
      subscription.seenBytes = published.bytes;
      const budget: ReplayBudget = { batches: own.batches + share.batches, bytes: own.bytes + share.bytes };
      this.catchingUp.delete(subscription);
      const step = this.replayStep(subscription, budget);
      // What it sent past its own allowance came out of the share.
      share.batches = Math.min(share.batches, budget.batches);
      share.bytes = Math.min(share.bytes, budget.bytes);
      if (step === "more") this.catchingUp.add(subscription);
      else if (step === "waiting") this.park(subscription);
    }
    this.scheduleCatchUp();
  }

  /** The batches and bytes published to `tag` while it has subscribers (kept while it has any). */
  private publishedTo(tag: string): Published {
    let published = this.published.get(tag);
    if (published === undefined) {
      published = { batches: 0, bytes: 0 };
      this.published.set(tag, published);
    }
    return published;
  }

  /** The part of a batch's EVENTS payload every subscriber shares, with its hash state. */
  private sharedPayload(batch: StoredBatch, ordered: boolean): SharedPayloadPrefix {
    return new SharedPayloadPrefix(eventsPrefix({ body: batch.body, sig: batch.sig }, ordered ? batch.firstSeq : batch.pubSeq).parts);
  }

  /** Sends one batch; on a full connection (or a frame over the limit) ends the subscription as SLOW. */
  private deliver(
    subscription: Subscription,
    batch: StoredBatch,
    cells: ReturnType<ChannelMetrics["of"]> | null,
    shared: SharedPayloadPrefix,
    tail: EventsTail,
  ): boolean {
    if (subscription.session.conn.sendShared(FrameType.EVENTS, shared, eventsRest(subscription.sub, tail), subscription.urgency)) {
      this.metrics.inc("events_delivered_total", batch.count);
      cells?.delivered.inc(batch.count);
      return true;
    }
    this.dropSlow(subscription);
    return false;
  }

  /**
   * Sends one batch to several shared subscriptions of one connection (one channel, so one
   * egress class) in frames naming up to EVENTS_SUBS_MAX of them each, in ascending order.
   * What does not fit ends as SLOW, exactly as one subscription's frame would.
   */
  private deliverShared(
    mates: Subscription[],
    batch: StoredBatch,
    cells: ReturnType<ChannelMetrics["of"]> | null,
    shared: SharedPayloadPrefix,
    tail: EventsTail,
  ): void {
    mates.sort((a, b) => a.sub - b.sub);
    for (let at = 0; at < mates.length; at += EVENTS_SUBS_MAX) {
      const chunk = mates.slice(at, at + EVENTS_SUBS_MAX);
      const first = chunk[0] as Subscription;
      const rest =
        chunk.length === 1
          ? eventsRest(first.sub, tail)
          : eventsRestShared(
              chunk.map((mate) => mate.sub),
              tail,
            );
      if (first.session.conn.sendShared(FrameType.EVENTS, shared, rest, first.urgency)) {
        this.metrics.inc("events_delivered_total", batch.count * chunk.length);
        cells?.delivered.inc(batch.count * chunk.length);
        if (chunk.length > 1) this.metrics.inc("events_frames_shared_total");
        continue;
      }
      for (const mate of chunk) this.dropSlow(mate);
    }
  }

  /** A subscription whose frame (SUB_OK, EVENTS) did not fit its connection: ended as SLOW (or the connection closed). */
  private dropSlow(subscription: Subscription): void {
    this.metrics.inc("subscribers_dropped_slow_total");
    this.remove(subscription);
    // The queue is full, so SUB_END may not fit either; it is sent once there is room is
    // not guaranteed, hence the close: the client reconnects and resumes from its seq.
    const reason = "subscriber fell behind; resubscribe from the next wanted seq";
    if (!this.end(subscription.session, subscription.sub, "SLOW", reason, undefined, subscription.urgency)) {
      subscription.session.conn.close();
    }
  }

  /** Forgets an open subscription (nothing if `subscription` is not the one open under its id), its catch-up included. */
  private remove(subscription: Subscription): void {
    const mine = this.bySession.get(subscription.session.id);
    if (mine?.get(subscription.sub) !== subscription) return;
    mine.delete(subscription.sub);
    forget(this.byKey, subscription.session.keyHex);
    forget(this.byAddress, subscription.session.conn.remote);
    this.open--;
    const tagSubs = this.byTag.get(subscription.tag);
    tagSubs?.delete(`${subscription.session.id}/${subscription.sub}`);
    if (tagSubs !== undefined && tagSubs.size === 0) {
      this.byTag.delete(subscription.tag);
      this.published.delete(subscription.tag);
    }
    // Its catch-up stops here; the last one's pending turn is cancelled, not left to run idle.
    const parked = this.waitingRoom.get(subscription.session);
    if (parked?.delete(subscription) === true) {
      this.waitingCount--;
      if (parked.size === 0) this.waitingRoom.delete(subscription.session);
    }
    if (this.catchingUp.delete(subscription) || parked !== undefined) {
      if (this.catchingUp.size === 0 && this.waitingCount === 0) this.cancelCatchUp();
    }
  }

  /**
   * `at`: the decided seq a refusal judged on this replica's state was judged at;
   * `urgency`: the subscription's class, so SUB_END follows the EVENTS before it.
   */
  private end(session: ClientSession, sub: number, code: SubEndCode, reason: string, at?: number, urgency?: number): boolean {
    const body = at === undefined ? { sub, replica: this.self, code, reason } : { sub, replica: this.self, code, reason, at };
    return this.send(session, { type: FrameType.SUB_END, body }, urgency);
  }

  private send(session: ClientSession, frame: Frame, urgency?: number): boolean {
    return session.conn.send(frame, urgency);
  }
}

/** Takes one off a count; the entry leaves the map at zero, so the map holds only what is open. */
function forget(counts: Map<string, number>, key: string): void {
  const left = (counts.get(key) ?? 1) - 1;
  if (left > 0) counts.set(key, left);
  else counts.delete(key);
}

/**
 * Whether a replay may send a frame of `frameBytes` of class `urgency` on `conn` now: the
 * connection would keep REPLAY_HEADROOM_BYTES of room under its bound for the class and
 * under the output budget (FramedConn.hasRoomFor) after it, or is idle and has room for it
 * (the largest frames leave less than the headroom: a replay never waits for room that
 * cannot come).
 */
function roomForReplay(conn: FramedConn, frameBytes: number, urgency: number): boolean {
  return conn.hasRoomFor(frameBytes + (conn.pendingBytes === 0 ? 0 : REPLAY_HEADROOM_BYTES), urgency);
}
