/**
 * One subscription to one channel across all replicas: it subscribes at every replica,
 * feeds the copies they send into the delivery voter (src/core/voting/delivery-voter.ts,
 * which applies the per-CLASS rule and verifies every publisher signature end to end),
 * hands the delivered batches to the caller one at a time, and keeps the whole thing
 * going through replica failures:
 *
 * - A replica that comes back (or drops us with SUB_END SLOW) is subscribed again from
 *   the next undelivered channel seq on total-order channels, so nothing is skipped and
 *   nothing is delivered twice. Unordered channels have no common seq: a returning
 *   replica is subscribed live and the other replicas cover the gap.
 * - A live subscription to a total-order channel starts at the (f+1)-th highest `next`
 *   the replicas report in SUB_OK: at least one correct replica is there, so f liars
 *   cannot move the start into the future, and replicas that are ahead of it are asked
 *   again from it, so none of them skips the start.
 * - Every buffer is bounded. Copies a replica sends too far ahead are dropped by the
 *   voter, and that replica is asked again later. Delivered batches the caller has not
 *   consumed are bounded too, in events and in bytes (a count alone would let a few
 *   thousand large events take gigabytes): past either bound a total-order subscription
 *   pauses and later re-reads from where it stopped (signalled as "slow", nothing lost);
 *   an unordered one drops and says how many (signalled as "overflow", never silent). So
 *   does an unordered subscription that already tracks as many publishers as a channel
 *   may register.
 */
import type { Events, SubEnd, SubOk } from "../../wire/schemas.ts";
import { CLIENT_CLOCK_SKEW_MS_MAX, DOMAIN_REQUEST, type ErrorCode } from "../../wire/types.ts";
import { DeliveryVoter, type DeliveredBatch, type DeliveryOutput } from "../core/voting/delivery-voter.ts";
import { byzantineQuorum, vouchQuorum } from "../core/voting/quorum.ts";
import { verifyDomain } from "../crypto/ed25519.ts";
import { sha256 } from "../crypto/hash.ts";
import { ClientClosedError, describeError, NoQuorumError, SubscriptionEndedError } from "./errors.ts";
import type { ChannelInfo } from "./queries.ts";
import { pickLastSeq } from "./seq.ts";

/** Copies held per replica while a live total-order subscription learns where it starts. */
export const START_BUFFER_COPIES_PER_REPLICA_MAX = 256;
/** A replica whose copies overflowed the voter's buffer is asked again after this long. */
export const RESUBSCRIBE_AFTER_OVERFLOW_MS = 250;
/**
 * A replica whose SUBSCRIBE could not be sent (its outbound queue full, or not connected)
 * is asked again after this long, or as soon as it connects.
 */
export const RESUBSCRIBE_AFTER_SEND_FAILURE_MS = 250;
/** A replica that ended the subscription for a reason not yet confirmed by f+1 is asked again after this long. */
export const RESUBSCRIBE_AFTER_REFUSAL_MS = 1_000;
/**
 * How long before a live unordered subscription started an event may have been signed and
 * still be delivered to it: twice the clock skew replicas allow a publisher.
 */
export const LIVE_EVENT_AGE_MS_MAX = 2 * CLIENT_CLOCK_SKEW_MS_MAX;
/** Default bound on delivered events waiting for the caller's handler. */
export const DELIVERY_QUEUE_EVENTS_MAX_DEFAULT = 65_536;
/**
 * Default bound on the payload bytes of delivered events waiting for the caller's handler:
 * 64 of the largest events (EVENT_BYTES_MAX is 1 MiB), far less than the count bound
 * would allow at that size.
 */
export const DELIVERY_QUEUE_BYTES_MAX_DEFAULT = 64 * 1024 * 1024;

/** SUB_END codes that f+1 replicas must agree on before the subscription fails. */
const FATAL_END_CODES: ReadonlySet<string> = new Set(["UNKNOWN_CHANNEL", "UNAUTHORIZED", "DESTROYED", "LIMIT", "BAD_REQUEST"]);

/** One delivered batch as the caller sees it. */
export interface ReceivedBatch {
  readonly tag: string;
  /** Channel seq of events[0] on total-order channels; null on unordered channels. */
  readonly seq: number | null;
  /** The publisher's own seq of events[0]. */
  readonly pubSeq: number;
  /** The publisher's public key (32 bytes); its signature over the batch verified. */
  readonly publisher: Uint8Array;
  /** The publisher's timestamp (ms since the epoch), from the signed request. */
  readonly ts: number;
  readonly events: readonly Uint8Array[];
}

/** The SEQ of event `index` of a batch: channel seq on total order, publisher seq otherwise. */
export function eventSeq(batch: ReceivedBatch, index: number): number {
  return (batch.seq ?? batch.pubSeq) + index;
}

export type BatchHandler = (batch: ReceivedBatch) => void | Promise<void>;

/** Things worth telling the caller that do not end the subscription. */
export type SubscriptionSignal =
  /** A replica dropped us for falling behind; we subscribed there again from `resumeFrom`. */
  | { readonly t: "slow"; readonly source: "replica"; readonly replica: number; readonly resumeFrom: number | null }
  /** The handler fell behind the bound; delivery pauses and resumes at `resumeFrom` without loss. */
  | { readonly t: "slow"; readonly source: "local"; readonly resumeFrom: number }
  /** Unordered channel: events dropped because the handler fell behind the bound. */
  | { readonly t: "overflow"; readonly source: "local"; readonly droppedEvents: number }
  /**
   * Unordered channel: a publisher's events dropped because the subscription already
   * tracks as many publishers as a channel may register (`droppedEvents` counts those of
   * the copies dropped this time; replicas that send them again are reported again).
   */
  | {
      readonly t: "overflow";
      readonly source: "publishers";
      readonly publisher: Uint8Array;
      readonly droppedEvents: number;
      readonly reason: string;
    }
  /** A replica sent a copy that failed its checks (bad signature, wrong tag, ...); dropped. */
  | { readonly t: "invalid"; readonly replica: number; readonly reason: string }
  /** A replica sent something that contradicts the others (evidence of a fault). */
  | { readonly t: "conflict"; readonly replica: number; readonly seq: number; readonly reason: string }
  /** History before `oldestSeq` is gone; with `skipTrimmed` delivery went on from there. */
  | { readonly t: "trimmed"; readonly nextSeq: number; readonly oldestSeq: number }
  /** One replica ended the subscription; the others carry on. */
  | { readonly t: "replica-ended"; readonly replica: number; readonly code: string; readonly reason: string };

export interface SubscribeOptions {
  /**
   * Total-order channels: the first channel seq to deliver (default: live, from the next
   * one). Unordered channels: 0 asks for everything retained, then live; absent is live.
   */
  readonly from?: number;
  /** Delivered events that may wait for the handler (default DELIVERY_QUEUE_EVENTS_MAX_DEFAULT). */
  readonly queueEventsMax?: number;
  /** Payload bytes of delivered events that may wait for the handler (default DELIVERY_QUEUE_BYTES_MAX_DEFAULT). */
  readonly queueBytesMax?: number;
  /** Continue after a trimmed gap instead of failing (default false: a gap ends the subscription). */
  readonly skipTrimmed?: boolean;
  readonly onSignal?: (signal: SubscriptionSignal) => void;
}

export interface SubscriptionStats {
  readonly deliveredBatches: number;
  readonly deliveredEvents: number;
  readonly droppedEvents: number;
  readonly queuedEvents: number;
  /** Payload bytes of the queued events. */
  readonly queuedBytes: number;
  readonly invalidCopies: number;
  readonly conflicts: number;
}

/** What a subscription needs from the client that owns the connections. */
export interface SubscriptionHost {
  readonly n: number;
  readonly f: number;
  readyReplicas(): readonly number[];
  /** A decided seq some correct replica has executed, known to the client (read-your-writes). */
  executedFloor(): number;
  /**
   * Sends SUBSCRIBE (with `after` when above 0); returns the sub id used, or null if the
   * replica is not ready.
   */
  subscribeAt(sub: SubscriptionCore, replica: number, from: number | undefined, after: number): number | null;
  /** Sends UNSUBSCRIBE for `subId` (if the replica is ready) and forgets the id. */
  unsubscribeAt(replica: number, subId: number): void;
  /** Forgets a sub id the replica has already ended (no UNSUBSCRIBE needed). */
  releaseSubId(subId: number): void;
  /** The subscription has ended; the host drops it. */
  forget(sub: SubscriptionCore): void;
  now(): number;
}

type ReplicaSubState =
  | { readonly t: "none" }
  | { readonly t: "pending"; readonly subId: number; readonly from: number | undefined }
  | { readonly t: "active"; readonly subId: number; readonly from: number | undefined; readonly next: number | undefined }
  | { readonly t: "retry"; readonly at: number; readonly endCode: string | null };

type StartState =
  | { readonly t: "starting"; readonly deadline: number }
  | { readonly t: "started" }
  | { readonly t: "ended" };

interface BufferedCopy {
  readonly replica: number;
  readonly events: Events;
}

/** The public face of a subscription. */
export interface Subscription {
  readonly tag: string;
  readonly channel: ChannelInfo;
  /** Total order: the next channel seq to deliver (where a new subscription would resume). Null on unordered channels. */
  readonly nextSeq: number | null;
  stats(): SubscriptionStats;
  /** Unsubscribes everywhere and stops delivering; `done` settles once a running handler call returns. */
  close(): Promise<void>;
  /** Resolves when closed; rejects when the subscription ends for a reason the caller must see. */
  readonly done: Promise<void>;
}

export class SubscriptionCore implements Subscription {
  readonly tag: string;
  readonly channel: ChannelInfo;
  readonly done: Promise<void>;
  private readonly host: SubscriptionHost;
  private readonly handler: BatchHandler;
  private readonly options: SubscribeOptions;
  private readonly ordered: boolean;
  private readonly queueEventsMax: number;
  private readonly queueBytesMax: number;
  private readonly replicas: ReplicaSubState[];
  private voter: DeliveryVoter | null = null;
  private start: StartState;
  private readonly startWaiters: { resolve: () => void; reject: (error: Error) => void }[] = [];
  /** Live total-order start: copies held until the start seq is known. */
  private readonly startBuffer: BufferedCopy[][];
  private readonly queue: DeliveredBatch[] = [];
  private queuedEvents = 0;
  private queuedBytes = 0;
  private pumping = false;
  /** Total order: set while paused for a slow handler; where delivery resumes. */
  private pausedAt: number | null = null;
  /** The last fatal SUB_END per replica; f+1 agreeing (and fresh, see onRefused) end the subscription. */
  private readonly fatalEnds = new Map<number, { code: string; reason: string; at: number | undefined }>();
  /** Replicas that answered a SUBSCRIBE at least once (SUB_OK or SUB_END). */
  private readonly answered = new Set<number>();
  /** The highest `at` any replica reported to this subscription. */
  private freshestAt = 0;
  private readonly counters = { deliveredBatches: 0, deliveredEvents: 0, droppedEvents: 0, conflicts: 0 };
  /** Null while running or after a close by the caller; the error the subscription ended with otherwise. */
  private endError: Error | null = null;
  private resolveDone!: () => void;
  private rejectDone!: (error: Error) => void;

  constructor(host: SubscriptionHost, channel: ChannelInfo, options: SubscribeOptions, handler: BatchHandler, startTimeoutMs: number) {
    this.host = host;
    this.tag = channel.tag;
    this.channel = channel;
    this.options = options;
    this.handler = handler;
    this.ordered = channel.order === "total";
    this.queueEventsMax = options.queueEventsMax ?? DELIVERY_QUEUE_EVENTS_MAX_DEFAULT;
    if (!Number.isSafeInteger(this.queueEventsMax) || this.queueEventsMax < 1) throw new RangeError("queueEventsMax must be a positive integer");
    this.queueBytesMax = options.queueBytesMax ?? DELIVERY_QUEUE_BYTES_MAX_DEFAULT;
    if (!Number.isSafeInteger(this.queueBytesMax) || this.queueBytesMax < 1) throw new RangeError("queueBytesMax must be a positive integer");
    if (options.from !== undefined && (!Number.isSafeInteger(options.from) || options.from < 0)) {
      throw new RangeError("from must be a non-negative integer");
    }
    this.replicas = Array.from({ length: host.n }, (): ReplicaSubState => ({ t: "none" }));
    this.startBuffer = Array.from({ length: host.n }, (): BufferedCopy[] => []);
    this.start = { t: "starting", deadline: host.now() + startTimeoutMs };
    this.done = new Promise<void>((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
    });
    // The caller may only look at `done` after close; an unobserved rejection is not a crash.
    this.done.catch(() => undefined);
    if (this.ordered && options.from !== undefined) this.voter = this.newVoter(Math.max(1, options.from));
    if (!this.ordered) {
      // A live unordered subscription wants what is published from now on: an event
      // signed well before it started is an old one replayed (by a lying replica) and is
      // dropped. The margin covers the publisher's clock, which replicas keep within
      // CLIENT_CLOCK_SKEW_MS_MAX of theirs, and this host's own.
      const notBeforeMs = options.from === undefined ? host.now() - LIVE_EVENT_AGE_MS_MAX : undefined;
      this.voter = this.newVoter(1, notBeforeMs);
    }
  }

  get nextSeq(): number | null {
    if (!this.ordered) return null;
    if (this.pausedAt !== null) return this.pausedAt;
    return this.voter?.nextSeq ?? null;
  }

  stats(): SubscriptionStats {
    const voterStats = this.voter?.stats();
    const sum = (values: readonly number[] | undefined) => (values ?? []).reduce((a, b) => a + b, 0);
    return {
      deliveredBatches: this.counters.deliveredBatches,
      deliveredEvents: this.counters.deliveredEvents,
      droppedEvents: this.counters.droppedEvents,
      queuedEvents: this.queuedEvents,
      queuedBytes: this.queuedBytes,
      invalidCopies: sum(voterStats?.invalid),
      conflicts: this.counters.conflicts,
    };
  }

  /** Subscribes at every ready replica; resolves once the subscription has started. */
  begin(): Promise<void> {
    const started = new Promise<void>((resolve, reject) => this.startWaiters.push({ resolve, reject }));
    for (const replica of this.host.readyReplicas()) this.subscribeAt(replica);
    return started;
  }

  /**
   * Unsubscribes everywhere and stops delivering. It does not wait for a handler call in
   * progress, so a handler may call it (to stop after N events); `done` settles after
   * that call returns.
   */
  close(): Promise<void> {
    this.end(null);
    return Promise.resolve();
  }

  // ---------------------------------------------------------------------------------
  // Events from the host
  // ---------------------------------------------------------------------------------

  onReplicaReady(replica: number): void {
    if (this.start.t === "ended" || this.pausedAt !== null) return;
    const state = this.replicas[replica];
    if (state === undefined || state.t === "pending" || state.t === "active") return;
    this.subscribeAt(replica);
  }

  /** The replica's connection dropped: its subscription is gone with it. */
  onReplicaDown(replica: number): void {
    const state = this.replicas[replica];
    if (state === undefined || state.t === "none" || state.t === "retry") return;
    this.replicas[replica] = { t: "none" };
    this.startBuffer[replica] = [];
  }

  onSubOk(replica: number, subId: number, body: SubOk): void {
    const state = this.replicas[replica];
    if (state === undefined || state.t !== "pending" || state.subId !== subId) return;
    this.replicas[replica] = { t: "active", subId, from: state.from, next: body.next };
    this.fatalEnds.delete(replica);
    this.answered.add(replica);
    if (body.at !== undefined && body.at > this.freshestAt) {
      this.freshestAt = body.at;
      this.askStaleAgain();
    }
    if (this.start.t === "starting") {
      this.tryStart();
      return;
    }
    // A live subscription answered after the start was fixed; if that replica is ahead
    // of what we still need, it would skip it: ask again from the next seq.
    const voter = this.voter;
    if (this.ordered && voter !== null && state.from === undefined && body.next !== undefined && body.next > voter.nextSeq) {
      this.resubscribe(replica);
    }
  }

  onEvents(replica: number, subId: number, events: Events): void {
    const state = this.replicas[replica];
    if (state === undefined || (state.t !== "active" && state.t !== "pending") || state.subId !== subId) return;
    if (events.tag !== this.tag || this.start.t === "ended" || this.pausedAt !== null) return;
    const voter = this.voter;
    if (voter === null) {
      this.bufferForStart(replica, events);
      return;
    }
    const outputs = voter.onBatch(replica, { firstSeq: events.seq, tsMs: 0, body: events.req.body, sig: events.req.sig });
    this.handleOutputs(outputs);
  }

  onSubEnd(replica: number, subId: number, body: SubEnd): void {
    const state = this.replicas[replica];
    if (state === undefined || (state.t !== "active" && state.t !== "pending") || state.subId !== subId) return;
    this.host.releaseSubId(subId);
    this.replicas[replica] = { t: "none" };
    switch (body.code) {
      case "UNSUBSCRIBED":
        return;
      case "SLOW":
        this.signal({ t: "slow", source: "replica", replica, resumeFrom: this.resumePoint() ?? null });
        this.subscribeAt(replica);
        return;
      case "TRIMMED":
        this.onTrimmed(replica, body);
        return;
      case "SHUTDOWN":
        // The connection will drop; the replica is subscribed again when it is back.
        this.signal({ t: "replica-ended", replica, code: body.code, reason: body.reason });
        return;
      default:
        this.onRefused(replica, body);
    }
  }

  /** Periodic: retries refused or overflowed replicas and unsent SUBSCRIBEs, and times out a slow start. */
  tick(now: number): void {
    if (this.start.t === "ended") return;
    if (this.start.t === "starting" && now >= this.start.deadline) this.startAtDeadline();
    if (this.pausedAt !== null) return;
    this.replicas.forEach((state, replica) => {
      if (state.t === "retry" && now >= state.at && this.host.readyReplicas().includes(replica)) this.subscribeAt(replica);
    });
  }

  // ---------------------------------------------------------------------------------
  // Starting
  // ---------------------------------------------------------------------------------

  private newVoter(fromSeq: number, notBeforeMs?: number): DeliveryVoter {
    return new DeliveryVoter({
      tag: this.tag,
      cls: { fault: this.channel.fault, order: this.channel.order },
      n: this.host.n,
      f: this.host.f,
      fromSeq,
      ...(notBeforeMs === undefined ? {} : { notBeforeMs }),
      hash: sha256,
      verify: (body, sig, publisher) => verifyDomain(publisher, DOMAIN_REQUEST, body, sig),
    });
  }

  /** The replicas that answered SUB_OK, and the `next` each reported. */
  private activeReplicas(): { replica: number; next: number | undefined }[] {
    const active: { replica: number; next: number | undefined }[] = [];
    this.replicas.forEach((state, replica) => {
      if (state.t === "active") active.push({ replica, next: state.next });
    });
    return active;
  }

  /**
   * f+1 SUB_OKs start a subscription with a known start (unordered, or `from` given).
   * A live total-order one waits for 2f+1, to take the (f+1)-th highest `next`.
   */
  private tryStart(): void {
    const active = this.activeReplicas();
    const f = this.host.f;
    if (this.voter !== null) {
      if (active.length >= vouchQuorum(f)) this.started();
      return;
    }
    if (active.length >= Math.min(byzantineQuorum(f), this.host.n)) this.fixLiveStart(active);
  }

  private startAtDeadline(): void {
    const active = this.activeReplicas();
    if (active.length >= vouchQuorum(this.host.f)) {
      if (this.voter === null) this.fixLiveStart(active);
      else this.started();
      return;
    }
    const error = new NoQuorumError(
      `no quorum to subscribe to ${this.tag}: ${active.length} replicas accepted, ${vouchQuorum(this.host.f)} needed${this.describeRefusals()}`,
    );
    this.end(error);
  }

  private fixLiveStart(active: readonly { replica: number; next: number | undefined }[]): void {
    const nexts = active.map((entry) => entry.next ?? 1);
    const startSeq = Math.max(1, pickLastSeq(nexts, this.host.f) ?? 1);
    const voter = this.newVoter(startSeq);
    this.voter = voter;
    for (const entry of active) {
      if ((entry.next ?? 1) > startSeq) this.resubscribe(entry.replica);
    }
    const buffered = this.startBuffer.flat();
    this.startBuffer.forEach((_, replica) => (this.startBuffer[replica] = []));
    for (const copy of buffered) {
      const state = this.replicas[copy.replica];
      if (state?.t !== "active") continue;
      const outputs = voter.onBatch(copy.replica, {
        firstSeq: copy.events.seq,
        tsMs: 0,
        body: copy.events.req.body,
        sig: copy.events.req.sig,
      });
      this.handleOutputs(outputs);
    }
    this.started();
  }

  private bufferForStart(replica: number, events: Events): void {
    const buffer = this.startBuffer[replica] as BufferedCopy[];
    if (buffer.length >= START_BUFFER_COPIES_PER_REPLICA_MAX) {
      // Too much arrived before the start is known; this replica is asked again from the
      // start. Its current subscription is ended first, or it would go on streaming.
      this.retryLater(replica, RESUBSCRIBE_AFTER_OVERFLOW_MS, null);
      this.startBuffer[replica] = [];
      return;
    }
    buffer.push({ replica, events });
  }

  private started(): void {
    if (this.start.t !== "starting") return;
    this.start = { t: "started" };
    for (const waiter of this.startWaiters.splice(0)) waiter.resolve();
  }

  // ---------------------------------------------------------------------------------
  // Subscribing at one replica
  // ---------------------------------------------------------------------------------

  /** Where a (re)subscription at one replica starts. */
  private resumePoint(): number | undefined {
    if (!this.ordered) return this.start.t === "starting" ? this.options.from : undefined;
    if (this.pausedAt !== null) return this.pausedAt;
    return this.voter?.nextSeq;
  }

  private subscribeAt(replica: number): void {
    const from = this.resumePoint();
    const subId = this.host.subscribeAt(this, replica, from, this.freshness());
    if (subId === null) {
      // Not sent (queue full or not connected): tick asks again once the replica is ready.
      this.replicas[replica] = { t: "retry", at: this.host.now() + RESUBSCRIBE_AFTER_SEND_FAILURE_MS, endCode: null };
      return;
    }
    this.replicas[replica] = { t: "pending", subId, from };
  }

  private resubscribe(replica: number): void {
    const state = this.replicas[replica];
    if (state !== undefined && (state.t === "active" || state.t === "pending")) this.host.unsubscribeAt(replica, state.subId);
    this.subscribeAt(replica);
  }

  private retryLater(replica: number, delayMs: number, endCode: string | null): void {
    const state = this.replicas[replica];
    if (state !== undefined && (state.t === "active" || state.t === "pending")) this.host.unsubscribeAt(replica, state.subId);
    this.replicas[replica] = { t: "retry", at: this.host.now() + delayMs, endCode };
  }

  /**
   * A refusal a replica judged on its own state (it carries `at`) may predate a decision
   * another replica executed (a create-channel or register just made): it is never a vote
   * against that decision. One older than the freshest decided seq known (the client's
   * floor, or any replica's `at` here) is asked again at once with `after` = that seq, and
   * the replica answers once it has executed it. Fresh refusals end the subscription once
   * f+1 agree and 2f+1 replicas, or every reachable one, have answered.
   */
  private onRefused(replica: number, body: SubEnd): void {
    this.answered.add(replica);
    if (body.at !== undefined && body.at > this.freshestAt) this.freshestAt = body.at;
    if (body.at !== undefined && body.at < this.freshness()) {
      this.fatalEnds.delete(replica);
      this.replicas[replica] = { t: "retry", at: this.host.now(), endCode: body.code };
      if (this.pausedAt === null && this.host.readyReplicas().includes(replica)) this.subscribeAt(replica);
      return;
    }
    this.signal({ t: "replica-ended", replica, code: body.code, reason: body.reason });
    if (FATAL_END_CODES.has(body.code)) this.fatalEnds.set(replica, { code: body.code, reason: body.reason, at: body.at });
    this.askStaleAgain();
    const agreed = this.agreedFatalEnd();
    if (agreed !== null) {
      this.end(new SubscriptionEndedError(subEndErrorCode(agreed.code), agreed.code, `subscription to ${this.tag} refused: ${agreed.code} ${agreed.reason}`));
      return;
    }
    this.replicas[replica] = { t: "retry", at: this.host.now() + RESUBSCRIBE_AFTER_REFUSAL_MS, endCode: body.code };
  }

  /** The freshest decided seq known to this subscription: the client's floor or any replica's `at`. */
  private freshness(): number {
    return Math.max(this.host.executedFloor(), this.freshestAt);
  }

  /** Refusals that a fresher answer has made stale are asked again, waiting for that seq. */
  private askStaleAgain(): void {
    const fresh = this.freshness();
    for (const [replica, end] of [...this.fatalEnds]) {
      if (end.at === undefined || end.at >= fresh) continue;
      this.fatalEnds.delete(replica);
      const state = this.replicas[replica];
      if (state !== undefined && state.t !== "active" && state.t !== "pending") this.subscribeAt(replica);
    }
  }

  /** The fatal end code f+1 replicas agree on, if any (see onRefused for ends that carry `at`). */
  private agreedFatalEnd(): { code: string; reason: string } | null {
    const byCode = new Map<string, { count: number; reason: string; local: boolean }>();
    for (const end of this.fatalEnds.values()) {
      const entry = byCode.get(end.code) ?? { count: 0, reason: end.reason, local: false };
      entry.count++;
      entry.local ||= end.at !== undefined;
      byCode.set(end.code, entry);
    }
    const f = this.host.f;
    const enoughAnswered =
      this.answered.size >= Math.min(this.host.n, byzantineQuorum(f)) || this.host.readyReplicas().every((replica) => this.answered.has(replica));
    for (const [code, entry] of byCode) {
      if (entry.count >= vouchQuorum(f) && (!entry.local || enoughAnswered)) return { code, reason: entry.reason };
    }
    return null;
  }

  private describeRefusals(): string {
    if (this.fatalEnds.size === 0) return "";
    const parts = [...this.fatalEnds].map(([replica, end]) => `replica ${replica}: ${end.code} ${end.reason}`);
    return ` (${parts.join("; ")})`;
  }

  private onTrimmed(replica: number, body: SubEnd): void {
    const voter = this.voter;
    if (voter === null || body.oldest === undefined) {
      this.onRefused(replica, body);
      return;
    }
    this.replicas[replica] = { t: "retry", at: this.host.now() + RESUBSCRIBE_AFTER_REFUSAL_MS, endCode: body.code };
    this.handleOutputs(voter.onTrimmed(replica, body.oldest));
  }

  // ---------------------------------------------------------------------------------
  // Voter outputs and delivery
  // ---------------------------------------------------------------------------------

  private handleOutputs(outputs: readonly DeliveryOutput[]): void {
    for (const output of outputs) {
      if (this.start.t === "ended") return;
      switch (output.t) {
        case "deliver":
          this.enqueue(output.batch);
          break;
        case "invalid":
          this.signal({ t: "invalid", replica: output.replica, reason: output.reason });
          break;
        case "conflict":
          this.counters.conflicts++;
          this.signal({ t: "conflict", replica: output.replica, seq: output.seq, reason: output.reason });
          break;
        case "overflow":
          this.retryLater(output.replica, RESUBSCRIBE_AFTER_OVERFLOW_MS, null);
          break;
        case "publishers-full":
          this.counters.droppedEvents += output.droppedEvents;
          this.signal({ t: "overflow", source: "publishers", publisher: output.publisher, droppedEvents: output.droppedEvents, reason: output.reason });
          break;
        case "trimmed":
          this.onAgreedTrim(output.nextSeq, output.oldestSeq);
          break;
        default: {
          const unreachable: never = output;
          throw new Error(`unknown delivery output ${String(unreachable)}`);
        }
      }
    }
  }

  private onAgreedTrim(nextSeq: number, oldestSeq: number): void {
    this.signal({ t: "trimmed", nextSeq, oldestSeq });
    if (this.options.skipTrimmed !== true) {
      this.end(
        new SubscriptionEndedError(
          "BAD_REQUEST",
          "TRIMMED",
          `channel ${this.tag} no longer holds seq ${nextSeq}; the oldest retained is ${oldestSeq} (subscribe with --from ${oldestSeq} to accept the gap)`,
        ),
      );
      return;
    }
    const voter = this.voter as DeliveryVoter;
    const outputs = voter.skipTo(oldestSeq);
    this.replicas.forEach((state, replica) => {
      if (state.t === "retry" || state.t === "active" || state.t === "pending") this.resubscribe(replica);
    });
    this.handleOutputs(outputs);
  }

  private enqueue(batch: DeliveredBatch): void {
    // While paused, what the old voter still delivers is read again after the pause.
    if (this.pausedAt !== null) return;
    const count = batch.events.length;
    const bytes = payloadBytes(batch);
    // A batch always fits an empty queue, however large: the bounds are on what piles up
    // behind a slow handler, and a batch over them alone could never be delivered.
    const over = this.queuedEvents + count > this.queueEventsMax || this.queuedBytes + bytes > this.queueBytesMax;
    if (over && this.queue.length > 0) {
      this.onQueueFull(batch);
      return;
    }
    this.queue.push(batch);
    this.queuedEvents += count;
    this.queuedBytes += bytes;
    if (!this.pumping) void this.pump();
  }

  /**
   * The handler is behind. Total order: stop listening, and once the handler has caught
   * up, read again from the first batch not queued, so nothing is lost. Unordered: there
   * is no point to read again from, so the batch is dropped, and counted.
   */
  private onQueueFull(batch: DeliveredBatch): void {
    if (!this.ordered || batch.seq === null) {
      this.counters.droppedEvents += batch.events.length;
      this.signal({ t: "overflow", source: "local", droppedEvents: batch.events.length });
      return;
    }
    this.pausedAt = batch.seq;
    this.signal({ t: "slow", source: "local", resumeFrom: batch.seq });
    this.replicas.forEach((state, replica) => {
      if (state.t === "active" || state.t === "pending") this.host.unsubscribeAt(replica, state.subId);
      this.replicas[replica] = { t: "none" };
    });
  }

  private resumeAfterPause(): void {
    const from = this.pausedAt;
    if (from === null || this.start.t === "ended") return;
    this.pausedAt = null;
    this.voter = this.newVoter(from);
    for (const replica of this.host.readyReplicas()) this.subscribeAt(replica);
  }

  private async pump(): Promise<void> {
    this.pumping = true;
    try {
      while (this.queue.length > 0 && this.start.t !== "ended") {
        const batch = this.queue.shift() as DeliveredBatch;
        this.queuedEvents -= batch.events.length;
        this.queuedBytes -= payloadBytes(batch);
        this.counters.deliveredBatches++;
        this.counters.deliveredEvents += batch.events.length;
        await this.handler(toReceived(batch));
      }
    } catch (error) {
      this.end(error instanceof Error ? error : new Error(describeError(error)));
    } finally {
      this.pumping = false;
    }
    if (this.pausedAt !== null && this.queue.length === 0) this.resumeAfterPause();
    if (this.start.t === "ended") this.finishDone();
  }

  private signal(signal: SubscriptionSignal): void {
    this.options.onSignal?.(signal);
  }

  // ---------------------------------------------------------------------------------
  // Ending
  // ---------------------------------------------------------------------------------

  /** Ends the subscription: null for a close by the caller, else the error it ends with. */
  end(error: Error | null): void {
    if (this.start.t === "ended") return;
    const wasStarting = this.start.t === "starting";
    this.start = { t: "ended" };
    this.endError = error;
    this.replicas.forEach((state, replica) => {
      if (state.t === "active" || state.t === "pending") this.host.unsubscribeAt(replica, state.subId);
      this.replicas[replica] = { t: "none" };
    });
    this.host.forget(this);
    this.queue.length = 0;
    this.queuedEvents = 0;
    this.queuedBytes = 0;
    if (wasStarting) {
      const reason = error ?? new ClientClosedError(`subscription to ${this.tag} closed before it started`);
      for (const waiter of this.startWaiters.splice(0)) waiter.reject(reason);
    }
    if (!this.pumping) this.finishDone();
  }

  private finishDone(): void {
    if (this.endError === null) this.resolveDone();
    else this.rejectDone(this.endError);
  }
}

/** What a batch adds to the delivery queue's byte bound: its events' payloads. */
function payloadBytes(batch: DeliveredBatch): number {
  let bytes = 0;
  for (const event of batch.events) bytes += event.byteLength;
  return bytes;
}

function toReceived(batch: DeliveredBatch): ReceivedBatch {
  return {
    tag: batch.tag,
    seq: batch.seq,
    pubSeq: batch.pubSeq,
    publisher: batch.publisher,
    ts: batch.request.ts,
    events: batch.events,
  };
}

/** The ERROR_CODES entry that stands for a SUB_END code. */
function subEndErrorCode(code: string): ErrorCode {
  switch (code) {
    case "UNKNOWN_CHANNEL":
    case "UNAUTHORIZED":
    case "BAD_REQUEST":
      return code;
    case "DESTROYED":
      return "UNKNOWN_CHANNEL";
    case "LIMIT":
      return "OVERLOADED";
    default:
      return "INTERNAL";
  }
}
