/**
 * One subscription to one channel across all replicas: it subscribes at every replica
 * (on total-order channels, once started, at f+1 of them until a fault shows: narrowing.ts),
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
 *
 * - On crash-fault channels, where one replica's copy is delivered without a vote, a batch
 *   is delivered only if its publisher is registered on the channel, as f+1 replicas list
 *   it (publisher-registry.ts): a copy signed by any other key, however valid the
 *   signature, is held while the registry is learnt again, then refused. The list is
 *   learnt again every PUBLISHERS_REFRESH_INTERVAL_MS too, so a key unregistered since
 *   stops being delivered. On byzantine/none a key that some replicas, but fewer than
 *   f+1, went on sending copies of lapses (DeliveryVoter.lapseVouches, every
 *   VOUCH_LAPSE_INTERVAL_MS); a quiet one stays vouched for.
 * - A replica that sends a copy failing its checks (a bad signature, another channel's
 *   request; not a body this client cannot read, which may be a newer version) is
 *   unsubscribed and asked again later, each time later (replica-subs.ts sentInvalid), and
 *   the signals such copies cause are rate-limited (signal-limiter.ts).
 *
 * - On `$sys.*` channels a replica sends only what it reports itself (wire/PROTOCOL.md
 *   2.1): a copy signed by any key but that of the member whose session carried it (another
 *   replica's report, replayed) is dropped before the voter and held against its sender
 *   like a copy that fails its checks.
 * - On `$sys.events` the batches the voter delivers are the replicas' signed reports, and
 *   they go on to the group event voter (src/core/voting/group-events.ts): a group event
 *   is handed to the caller once f+1 replicas reported it, once.
 * - An optional observer (`onCopy`) is told of every copy a replica sent, with a key a
 *   delivered batch carries too (`copyKey`), so a caller can show how many replicas sent
 *   what it received. It watches only: delivery is the same with or without it.
 *
 * ClientSubscription keeps the start, the voter and the signals; where our SUBSCRIBE
 * stands at each replica, and the refusals that may end it, are replica-subs.ts; the
 * bounded queue to the caller's handler is delivery-queue.ts.
 */
import { toHex } from "../../wire/bytes.ts";
import type { Events, SubEnd, SubOk } from "../../wire/schemas.ts";
import { CLIENT_CLOCK_SKEW_MS_MAX, SYS_TAG_PREFIX } from "../../wire/types.ts";
import { signedRequestDigest } from "../core/channels/request.ts";
import {
  type CopyKeys,
  DELIVERY_BUFFERED_BYTES_PER_REPLICA_MAX,
  DELIVERY_DEDUPE_RANGES_PER_PUBLISHER_MAX,
  DeliveryVoter,
  type DeliveredBatch,
  type DeliveryOutput,
  type InvalidReason,
  type ParsedBody,
  parseBody,
  type VerifyRequest,
} from "../core/voting/delivery-voter.ts";
import { type GroupEvent, GroupEventVoter, SYS_EVENTS_TAG } from "../core/voting/group-events.ts";
import { byzantineQuorum, vouchQuorum } from "../core/voting/quorum.ts";
import { checkRequestSignature } from "./shared-bodies.ts";
import { sha256 } from "../crypto/hash.ts";
import { DeliveryQueue } from "./delivery-queue.ts";
import { NARROW_STALL_MS, ReplicaNarrowing } from "./narrowing.ts";
import { PublisherRegistry } from "./publisher-registry.ts";
import { ClientClosedError, describeError, NoQuorumError, SubscriptionEndedError } from "./errors.ts";
import type { ChannelInfo, PublisherListing } from "./queries.ts";
import { RESUBSCRIBE_AFTER_OVERFLOW_MS, RESUBSCRIBE_AFTER_REFUSAL_MS, ReplicaSubs } from "./replica-subs.ts";

/**
 * A replica that ends the subscription SLOW a second time with no copy in between is asked
 * again after this long, doubling at each further one up to SLOW_RETRY_MS_MAX.
 */
export const SLOW_RETRY_MS_FIRST = 250;
export const SLOW_RETRY_MS_MAX = 8_000;
import { pickLastSeq } from "./seq.ts";
import { SignalLimiter } from "./signal-limiter.ts";

/**
 * Copies held per replica while a live total-order subscription learns where it starts;
 * their bytes (body + signature) are bounded too, by DELIVERY_BUFFERED_BYTES_PER_REPLICA_MAX.
 */
export const START_BUFFER_COPIES_PER_REPLICA_MAX = 256;
/** How often a byzantine/none subscription lets lapse the keys fewer than f+1 replicas still send copies of (DeliveryVoter.lapseVouches). */
export const VOUCH_LAPSE_INTERVAL_MS = 30_000;
/**
 * How long before a live unordered subscription started an event may have been signed and
 * still be delivered to it: twice the clock skew replicas allow a publisher.
 */
export const LIVE_EVENT_AGE_MS_MAX = 2 * CLIENT_CLOCK_SKEW_MS_MAX;

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
  /**
   * The key its copies are reported under to `onCopy` (set when the subscription has an
   * observer, and always on `$sys.events`).
   */
  readonly copyKey?: string;
}

/** The SEQ of event `index` of a batch: channel seq on total order, publisher seq otherwise. */
export function eventSeq(batch: ReceivedBatch, index: number): number {
  return (batch.seq ?? batch.pubSeq) + index;
}

export type BatchHandler = (batch: ReceivedBatch) => void | Promise<void>;

/** Things worth telling the caller that do not end the subscription. */
export type SubscriptionSignal =
  /** A replica dropped us for falling behind; we subscribed there again from `resumeFrom`. */
  | {
      readonly t: "slow";
      readonly source: "replica";
      readonly replica: number;
      readonly resumeFrom: number | null;
      /** The replica's own words: it read too slowly, or this replica itself caught up by state transfer. */
      readonly reason: string;
    }
  /** The handler fell behind the bound; delivery pauses and resumes at `resumeFrom` without loss. */
  | { readonly t: "slow"; readonly source: "local"; readonly resumeFrom: number }
  /** Unordered channel: events dropped because the handler fell behind the bound. */
  | { readonly t: "overflow"; readonly source: "local"; readonly droppedEvents: number }
  /**
   * Unordered channel: copies from `replica` dropped because they lie below a range a
   * publisher's dedupe window had to forget (DELIVERY_DEDUPE_RANGES_PER_PUBLISHER_MAX):
   * they cannot be told from delivered events, so `droppedEvents` may have been delivered
   * from another copy, or never. Rate-limited: one signal stands for those since the last.
   */
  | { readonly t: "overflow"; readonly source: "dedupe"; readonly replica: number; readonly droppedEvents: number; readonly reason: string }
  /**
   * Unordered channel: copies from `replica` held until their publisher key was vouched for
   * (byzantine) or known (crash) were dropped at a hold bound (DeliveryVoter
   * "held-dropped"): no replica sends them again, so `droppedEvents` are lost unless another
   * replica's copy of them was delivered. Rate-limited like "dedupe".
   */
  | { readonly t: "overflow"; readonly source: "held"; readonly replica: number; readonly droppedEvents: number; readonly reason: string }
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
  /**
   * A replica sent a copy that failed its checks (bad signature, wrong tag, ...); dropped.
   * `replica` is null when the copy cannot be tied to one replica (a `$sys.events` report
   * delivered, after a membership change, under a key that is no member's any more). Rate-limited per
   * replica (signal-limiter.ts): `copies`, when present, is how many copies this signal
   * stands for (`reason` is the latest's).
   */
  | { readonly t: "invalid"; readonly replica: number | null; readonly reason: string; readonly copies?: number }
  /** A replica sent something that contradicts the others (evidence of a fault). */
  | { readonly t: "conflict"; readonly replica: number; readonly seq: number; readonly reason: string }
  /** History before `oldestSeq` is gone; with `skipTrimmed` delivery went on from there. */
  | { readonly t: "trimmed"; readonly nextSeq: number; readonly oldestSeq: number }
  /**
   * A wildcard subscription (pattern-subscription.ts) began to follow a matching channel
   * (`added`), left one out (`skipped`: at its bound; `refused`), stopped following one
   * (`ended`), or could not read the channel list this time (`list-failed`).
   */
  | {
      readonly t: "channel";
      readonly tag: string;
      readonly event: "added" | "skipped" | "refused" | "ended" | "list-failed";
      readonly reason: string;
      /** What the channel was refused or ended with (`refused`, `ended`), for a caller that answers by its code. */
      readonly cause?: unknown;
    }
  /** One replica ended the subscription; the others carry on. */
  | { readonly t: "replica-ended"; readonly replica: number; readonly code: string; readonly reason: string }
  /**
   * A subscription served by f+1 replicas went back to every replica (narrowing.ts):
   * `suspects` are the replicas whose conduct caused it (none for a membership change),
   * left out when it narrows again.
   */
  | { readonly t: "widened"; readonly reason: string; readonly suspects: readonly number[] };

export interface SubscribeOptions {
  /**
   * Total-order channels: the first channel seq to deliver (default: live, from the next
   * one). Unordered channels: 0 asks for everything retained, then live; absent is live;
   * any other value is refused (FitbClient.subscribe), since each replica numbers its own store.
   */
  readonly from?: number;
  /** Delivered events that may wait for the handler (default DELIVERY_QUEUE_EVENTS_MAX_DEFAULT, delivery-queue.ts). */
  readonly queueEventsMax?: number;
  /** Payload bytes of delivered events that may wait for the handler (default DELIVERY_QUEUE_BYTES_MAX_DEFAULT, delivery-queue.ts). */
  readonly queueBytesMax?: number;
  /** Continue after a trimmed gap instead of failing (default false: a gap ends the subscription). */
  readonly skipTrimmed?: boolean;
  readonly onSignal?: (signal: SubscriptionSignal) => void;
  /**
   * Told of every copy a replica sent, before any voting, with a key: on total-order
   * channels the channel seq and the digest of the signed request, on unordered ones the
   * digest; a delivered batch carries the key of its copies (`ReceivedBatch.copyKey`), so
   * the distinct replicas reported under it are those that sent that same batch. On
   * `$sys.events`, each valid signed report, under the key of the group event it reports.
   * Watching only: it changes nothing delivered. Called on the client's event loop; keep it short.
   */
  readonly onCopy?: (copy: CopySeen) => void;
  /**
   * Total-order channels: which replicas serve the subscription once it has started.
   * "quorum": f+1 of them, the others on standby until a fault shows (narrowing.ts);
   * "all": every replica, always; "auto" (the default): "all" on `high` and `critical`
   * channels, whose deliveries then wait for the (f+1)-th fastest of n replicas, not the
   * slower of f+1, and on any channel whose copies the caller observes (`onCopy`);
   * "quorum" on `low` and `normal` ones, where volume is.
   */
  readonly sources?: SubscriptionSources;
}

/** One replica's copy, as `onCopy` is told of it. */
export interface CopySeen {
  readonly replica: number;
  readonly key: string;
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
  /** Refusals from replicas behind a seq they had been asked to wait for (asked again after a pause: replica-subs.ts). */
  readonly staleRefusals: number;
  /** Matching copies from distinct replicas a delivery needs now (f+1 of the followed group's f on Byzantine channels); null before the start. */
  readonly quorum: number | null;
  /** The replicas serving the subscription while it is narrowed (narrowing.ts); null while every replica does. */
  readonly servingReplicas: readonly number[] | null;
  /** Times the subscription went back from f+1 replicas to every replica. */
  readonly widenings: number;
  /**
   * The replicas whose SUB_OK the subscription holds now, ascending: they took it and send
   * what they store from then on (an unordered subscription starts at f+1 of them, the
   * others may still be taking it).
   */
  readonly activeReplicas: readonly number[];
}

/** What a subscription needs from the client that owns the connections. */
export interface SubscriptionHost {
  /** Members of the group the client follows now, and the faults it tolerates (they change: onGroupChange). */
  readonly n: number;
  readonly f: number;
  /** The members' replica ids now. */
  members(): readonly number[];
  readyReplicas(): readonly number[];
  /** A decided seq some correct replica has executed, known to the client (read-your-writes). */
  executedFloor(): number;
  /**
   * Sends SUBSCRIBE (with `after` when above 0); returns the sub id used, or null if the
   * replica is not ready.
   */
  subscribeAt(sub: ClientSubscription, replica: number, from: number | undefined, after: number): number | null;
  /** Sends UNSUBSCRIBE for `subId` (if the replica is ready) and forgets the id. */
  unsubscribeAt(replica: number, subId: number): void;
  /** Forgets a sub id the replica has already ended (no UNSUBSCRIBE needed). */
  releaseSubId(subId: number): void;
  /** The subscription has ended; the host drops it. */
  forget(sub: ClientSubscription): void;
  /** The keys f+1 replicas list as the channel's registered publishers (QUERY "publishers"), and how fresh that is. */
  publishers(tag: string): Promise<PublisherListing>;
  now(): number;
  /** The client's memo of copy keys, shared by its subscriptions' voters (CopyKeys). */
  readonly copyKeys?: CopyKeys;
  /** The client's publisher signature check, shared by its subscriptions' voters (SharedBodies); default: a check of each. */
  readonly verifyRequest?: VerifyRequest;
  /** The client's body reader, shared by its subscriptions' voters (SharedBodies); default: parseBody. */
  readonly parseBody?: (body: Uint8Array) => ParsedBody;
  /** Whether a batch's body came in a frame shared with other subscriptions: the handler then gets a copy of its own. */
  sharedBytes?(body: Uint8Array): boolean;
  /** The period of the client's ticks (ClientSubscription.tick), CLIENT_TICK_MS_DEFAULT if not given. */
  readonly tickMs?: number;
  /**
   * Where this client's subscriptions start choosing their f+1 serving replicas among the
   * members (narrowing.ts; default 0). One offset per client keeps a connection's shared
   * frames from the same replicas; different clients spread the fan-out.
   */
  readonly sourceOffset?: number;
}

type StartState = { readonly t: "starting"; readonly deadline: number } | { readonly t: "started" } | { readonly t: "ended" };

interface BufferedCopy {
  readonly replica: number;
  readonly events: Events;
}

/** One replica's copies held until the start is known, and their bytes (body + signature). */
interface StartHeld {
  readonly copies: BufferedCopy[];
  bytes: number;
}

/** What every subscription offers, to one channel or to a pattern of them. */
export interface SubscriptionHandle {
  /** The channel's tag, or the pattern. */
  readonly tag: string;
  /** Unsubscribes everywhere and stops delivering. */
  close(): Promise<void>;
  /** Resolves when closed; rejects when the subscription ends for a reason the caller must see. */
  readonly done: Promise<void>;
}

/** The public face of a subscription. */
export interface Subscription extends SubscriptionHandle {
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

/** One subscription of this client, as the module comment describes. */
export class ClientSubscription implements Subscription {
  readonly tag: string;
  readonly channel: ChannelInfo;
  readonly done: Promise<void>;
  private readonly host: SubscriptionHost;
  private readonly handler: BatchHandler;
  private readonly options: SubscribeOptions;
  private readonly ordered: boolean;
  /** The bounded queue between the voter and the handler. */
  private readonly delivery: DeliveryQueue;
  /** Where our SUBSCRIBE stands at each replica. */
  private readonly replicas: ReplicaSubs;
  /** Total order: which replicas serve once started (f+1 or all); null where every replica always does. */
  private readonly narrowing: ReplicaNarrowing | null;
  private voter: DeliveryVoter | null = null;
  private start: StartState;
  private readonly startWaiters: { resolve: () => void; reject: (error: Error) => void }[] = [];
  /** Live total-order start: copies held per replica id until the start seq is known. */
  private readonly startBuffer = new Map<number, StartHeld>();
  /** Signals one replica can cause per copy (invalid, stale, held-dropped), at most one per interval each. */
  private readonly limiter = new SignalLimiter<SubscriptionSignal>();
  /** When the voter next lets lapse the keys fewer than f+1 replicas still send copies of (byzantine/none). */
  private nextLapseMs: number;
  /** Crash-fault channels: the registered publishers deliveries are filtered by; null on Byzantine ones (voting covers them). */
  private readonly registry: PublisherRegistry | null;
  private readonly counters = { deliveredBatches: 0, deliveredEvents: 0, droppedEvents: 0, conflicts: 0, invalidReports: 0 };
  /** Per replica, the SUB_END SLOWs it sent with no copy in between (reset by its next EVENTS). */
  private readonly slowStreak = new Map<number, number>();
  /** `$sys.events`: the group event voter the replicas' reports go to; null on other channels. */
  private readonly group: GroupEventVoter | null;
  /** Whether the channel is a `$sys.*` one: each replica sends on it only what it signed itself. */
  private readonly system: boolean;
  /**
   * `$sys.*`: replica ids by the hex of their keys (the group's members: onGroupChange): whose
   * session may carry a copy signed by each, and on `$sys.events` who reported it.
   */
  private readonly reporterIds = new Map<string, number>();
  /** `$sys.events`: group events delivered so far (their `pubSeq`), and the key of each queued one. */
  private groupSeq = 0;
  private readonly groupKeys = new WeakMap<DeliveredBatch, string>();
  /** `$sys.events`: each member's latest signed report batch (an event delivered at a regroup is carried as one of its reporters'). */
  private readonly lastReports = new Map<number, DeliveredBatch>();
  /** Null while running or after a close by the caller; the error the subscription ended with otherwise. */
  private endError: Error | null = null;
  private resolveDone!: () => void;
  private rejectDone!: (error: Error) => void;

  /**
   * `publishers`: the channel's registered publishers as f+1 replicas listed them when
   * subscribing (crash-fault channels; without it the first copies wait for a query; a
   * bare list counts as listed at seq 0).
   * `replicaKeys`: every member's key by id; `$sys.*` channels need them to tell a replica's
   * own reports from another's it replays, and `$sys.events` to count its reports by
   * replica (onGroupChange brings them up to date).
   */
  constructor(
    host: SubscriptionHost,
    channel: ChannelInfo,
    options: SubscribeOptions,
    handler: BatchHandler,
    startTimeoutMs: number,
    publishers: PublisherListing | readonly Uint8Array[] = [],
    replicaKeys: readonly Uint8Array[] = [],
  ) {
    this.host = host;
    this.system = channel.tag.startsWith(SYS_TAG_PREFIX);
    this.group = channel.tag === SYS_EVENTS_TAG ? new GroupEventVoter({ n: host.n, f: host.f }) : null;
    this.group?.regroup(host.members(), host.f);
    replicaKeys.forEach((key, id) => this.reporterIds.set(toHex(key), id));
    this.registry = channel.fault === "crash" ? new PublisherRegistry(publishers, host.now()) : null;
    this.nextLapseMs = host.now() + VOUCH_LAPSE_INTERVAL_MS;
    this.tag = channel.tag;
    this.channel = channel;
    this.options = options;
    this.handler = handler;
    this.ordered = channel.order === "total";
    this.delivery = new DeliveryQueue(
      {
        deliver: (batch) => {
          this.counters.deliveredBatches++;
          this.counters.deliveredEvents += batch.events.length;
          return this.handler(this.toReceived(batch));
        },
        failed: (error) => this.end(error instanceof Error ? error : new Error(describeError(error))),
        ended: () => this.start.t === "ended",
        resume: (from) => this.resumeAfterPause(from),
        stopped: () => this.finishDone(),
      },
      options.queueEventsMax,
      options.queueBytesMax,
    );
    if (options.from !== undefined && (!Number.isSafeInteger(options.from) || options.from < 0)) {
      throw new RangeError("from must be a non-negative integer");
    }
    const sources = sourcesOf(options, channel);
    this.narrowing =
      this.ordered && this.group === null && sources === "quorum" ? new ReplicaNarrowing(host.sourceOffset ?? 0, host.now()) : null;
    this.replicas = new ReplicaSubs(host, this, {
      tag: this.tag,
      resumePoint: () => this.resumePoint(),
      hasStarted: () => this.start.t === "started",
      isPaused: () => this.delivery.pausedAt !== null,
      isStandby: (replica) => this.narrowing?.isStandby(replica) === true,
      signal: (signal) => this.signal(signal),
      fail: (error) => this.end(error),
    });
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
    const pausedAt = this.delivery.pausedAt;
    if (pausedAt !== null) return pausedAt;
    return this.voter?.nextSeq ?? null;
  }

  stats(): SubscriptionStats {
    const voterStats = this.voter?.stats();
    const sum = (values: readonly number[] | undefined) => (values ?? []).reduce((a, b) => a + b, 0);
    return {
      deliveredBatches: this.counters.deliveredBatches,
      deliveredEvents: this.counters.deliveredEvents,
      droppedEvents: this.counters.droppedEvents,
      queuedEvents: this.delivery.queuedEvents,
      queuedBytes: this.delivery.queuedBytes,
      invalidCopies: sum(voterStats?.invalid) + this.counters.invalidReports,
      conflicts: this.counters.conflicts,
      staleRefusals: this.replicas.staleRefusalsHeld,
      quorum: this.voter?.quorum ?? null,
      servingReplicas: this.narrowing?.servingReplicas ?? null,
      widenings: this.narrowing?.widenings ?? 0,
      activeReplicas: this.replicas
        .activeReplicas()
        .map((active) => active.replica)
        .sort((a, b) => a - b),
    };
  }

  /** Subscribes at every ready replica; resolves once the subscription has started. */
  begin(): Promise<void> {
    const started = new Promise<void>((resolve, reject) => this.startWaiters.push({ resolve, reject }));
    for (const replica of this.host.readyReplicas()) this.replicas.subscribeAt(replica);
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
    if (this.start.t === "ended" || this.delivery.pausedAt !== null) return;
    this.replicas.subscribeIfIdle(replica);
  }

  /** The replica's connection dropped: its subscription is gone with it. */
  onReplicaDown(replica: number): void {
    if (this.replicas.dropped(replica)) this.startBuffer.delete(replica);
    this.faultAt(replica, `replica ${replica} is disconnected`);
  }

  /**
   * The client moved to another group (membership-follow.ts). `left`: members removed, or
   * whose key or address changed (their connection was replaced); `memberKeys`: each
   * member's key by id (on `$sys.*` a replica carries only copies signed by its own key, and
   * `$sys.events` counts reports by who signed them). Their SUBSCRIBEs are
   * forgotten and their votes taken back; the voter votes with the new members and f
   * (DeliveryVoter.regroup has the rule at the switch). New members are subscribed once
   * their session is up (onReplicaReady), from the next undelivered seq like any replica
   * that comes back, so nothing is skipped and nothing delivered twice.
   */
  onGroupChange(left: readonly number[], memberKeys?: ReadonlyMap<number, Uint8Array>): void {
    if (this.start.t === "ended") return;
    for (const replica of left) {
      this.replicas.forget(replica);
      this.startBuffer.delete(replica);
    }
    // `$sys.*`: a member carries only copies signed by its key now.
    if (this.system && memberKeys !== undefined) {
      this.reporterIds.clear();
      for (const [id, key] of memberKeys) this.reporterIds.set(toHex(key), id);
    }
    if (this.group !== null) {
      // `$sys.events`: reports count by the members' keys now, f+1 of the new f.
      const members = new Set(this.host.members());
      for (const replica of [...this.lastReports.keys()])
        if (!members.has(replica) || left.includes(replica)) this.lastReports.delete(replica);
      // With a lower f, events already reported by f_new+1 members are delivered now.
      for (const event of this.group.regroup(this.host.members(), this.host.f, left)) {
        const carrier = event.reporters.map((replica) => this.lastReports.get(replica)).find((batch) => batch !== undefined);
        if (carrier === undefined) {
          // Not expected (a reporter's latest report is kept while it is a member), but a
          // throw here would stop every subscription following the group: counted, signalled, skipped.
          this.counters.invalidReports++;
          this.signal({
            t: "invalid",
            replica: null,
            reason: `$sys.events: event ${event.key} reported by replicas ${event.reporters.join(", ")}, but no report of theirs is held to carry it; not delivered`,
          });
          continue;
        }
        this.enqueueGroupEvent(carrier, event);
      }
    }
    const voter = this.voter;
    if (voter !== null) this.handleOutputs(voter.regroup(this.host.members(), this.host.f, left));
    if (this.start.t === "starting") this.tryStart();
    // The serving replicas were chosen among the old members and f.
    this.widen("the group changed", []);
  }

  onSubOk(replica: number, subId: number, body: SubOk): void {
    const accepted = this.replicas.accepted(replica, subId, body);
    if (accepted === null) return;
    if (this.start.t === "starting") {
      this.tryStart();
      return;
    }
    // A live subscription answered after the start was fixed; if that replica is ahead
    // of what we still need, it would skip it: ask again from the next seq.
    const voter = this.voter;
    if (this.ordered && voter !== null && accepted.from === undefined && body.next !== undefined && body.next > voter.nextSeq) {
      this.replicas.resubscribe(replica);
    }
  }

  onEvents(replica: number, subId: number, events: Events): void {
    if (!this.replicas.carries(replica, subId)) return;
    if (events.tag !== this.tag || this.start.t === "ended" || this.delivery.pausedAt !== null) return;
    if (this.slowStreak.size > 0) this.slowStreak.delete(replica);
    if (this.system && !this.isOwnReport(replica, events.req.body)) return;
    if (this.options.onCopy !== undefined && this.group === null) this.options.onCopy({ replica, key: copyKeyOf(this.ordered, events) });
    const voter = this.voter;
    if (voter === null) {
      this.bufferForStart(replica, events);
      return;
    }
    const outputs = voter.onBatch(replica, { firstSeq: events.seq, tsMs: 0, body: events.req.body, sig: events.req.sig });
    this.observeCopy(voter, replica, events.seq, outputs);
    this.handleOutputs(outputs);
  }

  /**
   * `$sys.*`: whether a copy is signed by the key of the member whose session carried it
   * (PROTOCOL.md 2.1: a replica sends on them only what it reports itself). One signed by
   * another key is another replica's report, replayed: taken, it would count on
   * `$sys.events` as its signer's vote (an old `peer-down` delivered again, or a correct
   * replica's pending report withdrawn by an older opposite one) and reach the caller as
   * its signer's word on `$sys.replica.<id>`. It is dropped before the voter (whose dedupe
   * would otherwise take the signer's own copy for a duplicate), counted, signalled and held
   * against its sender as a copy that fails its checks is (replica-subs.ts sentInvalid). A
   * body that is not a publish request goes on to the voter, which says so.
   */
  private isOwnReport(replica: number, body: Uint8Array): boolean {
    const request = (this.host.parseBody ?? parseBody)(body);
    if (typeof request === "string" || this.reporterIds.get(toHex(request.client)) === replica) return true;
    this.counters.invalidReports++;
    const signer = this.reporterIds.get(toHex(request.client));
    const reason = `${this.tag}: a report signed by ${signer === undefined ? "a key that is no member's" : `replica ${signer}`}, not by replica ${replica} whose session carried it (a replica sends only its own)`;
    this.signalLimited(`invalid/${replica}`, { t: "invalid", replica, reason }, 1);
    this.replicas.sentInvalid(replica);
    return false;
  }

  onSubEnd(replica: number, subId: number, body: SubEnd): void {
    if (!this.replicas.release(replica, subId)) return;
    this.endedBy(replica, body);
    // A serving replica that ends the subscription for any reason but slowness (which it
    // is asked again after at once) leaves too few for a vote: every other replica is
    // asked (the one that ended it when its own handling above says so).
    if (body.code !== "SLOW") this.faultAt(replica, `replica ${replica} ended the subscription (${body.code})`);
  }

  /**
   * A replica dropped its session or ended the subscription: a serving one widens the
   * subscription; while wide, it is noted as a suspect for the next narrowing.
   */
  private faultAt(replica: number, reason: string): void {
    const narrowing = this.narrowing;
    if (narrowing === null) return;
    if (narrowing.isServing(replica)) this.widen(reason, [replica]);
    else if (!narrowing.narrowed) narrowing.suspect(this.host.now(), [replica]);
  }

  /** Times a copy the voter took (narrowing.ts); one it refused, or had no room for, is not timed. */
  private observeCopy(voter: DeliveryVoter, replica: number, firstSeq: number, outputs: readonly DeliveryOutput[]): void {
    const narrowing = this.narrowing;
    if (narrowing === null) return;
    const refused = outputs.some(
      (output) => (output.t === "invalid" || output.t === "overflow" || output.t === "conflict") && output.replica === replica,
    );
    if (!refused) narrowing.observe(this.host.now(), replica, firstSeq, voter.nextSeq, voter.headFirstSeq());
  }

  private endedBy(replica: number, body: SubEnd): void {
    switch (body.code) {
      case "UNSUBSCRIBED":
        return;
      case "SLOW": {
        this.signalLimited(
          `slow/${replica}`,
          { t: "slow", source: "replica", replica, resumeFrom: this.resumePoint() ?? null, reason: body.reason },
          1,
        );
        // Asked again at once, as a client that fell behind wants; but a replica ending the
        // subscription SLOW again with no copy in between is asked ever later (it may be
        // faulty, and each SUBSCRIBE costs it a replay and this client a frame).
        const streak = (this.slowStreak.get(replica) ?? 0) + 1;
        this.slowStreak.set(replica, streak);
        if (streak === 1) this.replicas.subscribeAt(replica);
        else this.replicas.retryLater(replica, Math.min(SLOW_RETRY_MS_MAX, SLOW_RETRY_MS_FIRST * 2 ** (streak - 2)), null);
        return;
      }
      case "TRIMMED":
        this.onTrimmed(replica, body);
        return;
      case "SHUTDOWN":
        // The connection will drop; the replica is subscribed again when it is back.
        this.signal({ t: "replica-ended", replica, code: body.code, reason: body.reason });
        return;
      default:
        this.replicas.refused(replica, body);
    }
  }

  /**
   * Periodic: retries refused or overflowed replicas and unsent SUBSCRIBEs, times out a slow
   * start, learns the registered publishers again or lets lapse the keys fewer than f+1
   * replicas still send when due, and sends rate-limited signals held back.
   */
  tick(now: number): void {
    if (this.start.t === "ended") return;
    if (this.start.t === "starting" && now >= this.start.deadline) this.startAtDeadline();
    this.refreshPublishersIfDue();
    if (now >= this.nextLapseMs) {
      this.nextLapseMs = now + VOUCH_LAPSE_INTERVAL_MS;
      this.voter?.lapseVouches();
    }
    this.flushLimitedSignals(now);
    if (this.delivery.pausedAt !== null) return;
    this.replicas.retryDue(now);
    const onTime = this.narrowing?.onTick(now, this.host.tickMs ?? CLIENT_TICK_MS_DEFAULT) ?? true;
    this.checkSources(now, { onTime });
  }

  /**
   * Narrowed: widens when the copy covering the next seq has waited too long for its vote
   * (judged at ticks only; longer at a late one). Wide and started: narrows to f+1 replicas
   * when due (narrowing.ts).
   */
  private checkSources(now: number, tick: { readonly onTime: boolean } | null): void {
    const narrowing = this.narrowing;
    const voter = this.voter;
    if (narrowing === null || voter === null || this.start.t !== "started" || this.delivery.pausedAt !== null) return;
    const suspects = tick === null ? null : narrowing.stalled(now, voter.headFirstSeq(), voter.nextSeq, tick.onTime);
    if (suspects !== null) {
      this.widen(`a copy waited ${NARROW_STALL_MS} ms or more for a vote`, suspects);
      return;
    }
    const active = this.replicas.activeReplicas().map((entry) => entry.replica);
    const standby = narrowing.narrow(now, this.host.members(), active, this.host.f);
    if (standby === null) return;
    for (const replica of standby) this.replicas.standby(replica);
  }

  /**
   * Back to every replica (narrowing.ts): each ready one on standby is asked from the next
   * undelivered seq; one waiting to be asked again (a refusal, an overflow) keeps its wait.
   * Suspects are noted even when the subscription is already wide.
   */
  private widen(reason: string, suspects: readonly number[]): void {
    const narrowing = this.narrowing;
    if (narrowing === null || this.start.t === "ended" || !narrowing.widen(this.host.now(), suspects)) return;
    this.signal({ t: "widened", reason, suspects });
    if (this.delivery.pausedAt !== null) return;
    this.replicas.wake();
  }

  // ---------------------------------------------------------------------------------
  // Starting
  // ---------------------------------------------------------------------------------

  private newVoter(fromSeq: number, notBeforeMs?: number): DeliveryVoter {
    const registry = this.registry;
    const voter = new DeliveryVoter({
      ...(registry === null ? {} : { acceptPublisher: (publisher: Uint8Array) => registry.check(publisher, this.host.now()) }),
      tag: this.tag,
      cls: { fault: this.channel.fault, order: this.channel.order },
      n: this.host.n,
      f: this.host.f,
      fromSeq,
      ...(notBeforeMs === undefined ? {} : { notBeforeMs }),
      hash: sha256,
      ...(this.host.copyKeys === undefined ? {} : { copyKeys: this.host.copyKeys }),
      verify: this.host.verifyRequest ?? checkRequestSignature,
      ...(this.host.parseBody === undefined ? {} : { parseBody: this.host.parseBody }),
    });
    // Counts only the members' copies, by their ids (after a removal they need not be 0..n-1).
    voter.regroup(this.host.members(), this.host.f);
    return voter;
  }

  /**
   * f+1 SUB_OKs start a subscription with a known start (unordered, or `from` given).
   * A live total-order one waits for 2f+1, to take the (f+1)-th highest `next`.
   */
  private tryStart(): void {
    const active = this.replicas.activeReplicas();
    const f = this.host.f;
    if (this.voter !== null) {
      if (active.length >= vouchQuorum(f)) this.started();
      return;
    }
    if (active.length >= Math.min(byzantineQuorum(f), this.host.n)) this.fixLiveStart(active);
  }

  private startAtDeadline(): void {
    const active = this.replicas.activeReplicas();
    if (active.length >= vouchQuorum(this.host.f)) {
      if (this.voter === null) this.fixLiveStart(active);
      else this.started();
      return;
    }
    const error = new NoQuorumError(
      `no quorum to subscribe to ${this.tag}: ${active.length} replicas accepted, ${vouchQuorum(this.host.f)} needed${this.replicas.describeRefusals()}`,
    );
    this.end(error);
  }

  private fixLiveStart(active: readonly { replica: number; next: number | undefined }[]): void {
    const nexts = active.map((entry) => entry.next ?? 1);
    const startSeq = Math.max(1, pickLastSeq(nexts, this.host.f) ?? 1);
    const voter = this.newVoter(startSeq);
    this.voter = voter;
    for (const entry of active) {
      if ((entry.next ?? 1) > startSeq) this.replicas.resubscribe(entry.replica);
    }
    const buffered = [...this.startBuffer.values()].flatMap((held) => held.copies);
    this.startBuffer.clear();
    for (const copy of buffered) {
      if (!this.replicas.isActive(copy.replica)) continue;
      const outputs = voter.onBatch(copy.replica, {
        firstSeq: copy.events.seq,
        tsMs: 0,
        body: copy.events.req.body,
        sig: copy.events.req.sig,
      });
      this.observeCopy(voter, copy.replica, copy.events.seq, outputs);
      this.handleOutputs(outputs);
    }
    this.started();
  }

  private bufferForStart(replica: number, events: Events): void {
    const held = this.startBuffer.get(replica) ?? { copies: [], bytes: 0 };
    const bytes = held.bytes + events.req.body.length + events.req.sig.length;
    if (held.copies.length >= START_BUFFER_COPIES_PER_REPLICA_MAX || bytes > DELIVERY_BUFFERED_BYTES_PER_REPLICA_MAX) {
      // Too much arrived before the start is known; this replica is asked again from the
      // start. Its current subscription is ended first, or it would go on streaming.
      this.replicas.retryLater(replica, RESUBSCRIBE_AFTER_OVERFLOW_MS, null);
      this.startBuffer.delete(replica);
      return;
    }
    held.copies.push({ replica, events });
    held.bytes = bytes;
    this.startBuffer.set(replica, held);
  }

  private started(): void {
    if (this.start.t !== "starting") return;
    this.start = { t: "started" };
    for (const waiter of this.startWaiters.splice(0)) waiter.resolve();
    this.checkSources(this.host.now(), null);
  }

  /** Where a (re)subscription at one replica starts. */
  private resumePoint(): number | undefined {
    if (!this.ordered) return this.start.t === "starting" ? this.options.from : undefined;
    const pausedAt = this.delivery.pausedAt;
    if (pausedAt !== null) return pausedAt;
    return this.voter?.nextSeq;
  }

  private onTrimmed(replica: number, body: SubEnd): void {
    const voter = this.voter;
    if (voter === null || body.oldest === undefined) {
      this.replicas.refused(replica, body);
      return;
    }
    // The replica's SUBSCRIBE has just been released, so nothing is unsubscribed here.
    this.replicas.retryLater(replica, RESUBSCRIBE_AFTER_REFUSAL_MS, body.code);
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
          if (this.group === null) this.enqueue(output.batch);
          else this.onReports(this.group, output.batch);
          break;
        case "invalid":
          this.signalLimited(`invalid/${output.replica}`, { t: "invalid", replica: output.replica, reason: output.reason }, 1);
          if (strikesSender(output.reason)) this.replicas.sentInvalid(output.replica);
          this.widen(`replica ${output.replica} sent a copy that failed its checks`, [output.replica]);
          break;
        case "conflict":
          this.counters.conflicts++;
          // One replica can send a contradicting copy again and again: one signal per interval.
          this.signalLimited(
            `conflict/${output.replica}`,
            { t: "conflict", replica: output.replica, seq: output.seq, reason: output.reason },
            1,
          );
          this.widen(`replica ${output.replica} contradicted the others`, [output.replica]);
          break;
        case "overflow":
          // Flow control, not a fault: the replica is asked again from the next seq, and if
          // the copies it is ahead of wait too long for their vote, the stall widens.
          this.replicas.retryLater(output.replica, RESUBSCRIBE_AFTER_OVERFLOW_MS, null);
          break;
        case "publishers-full":
          this.counters.droppedEvents += output.droppedEvents;
          this.signal({
            t: "overflow",
            source: "publishers",
            publisher: output.publisher,
            droppedEvents: output.droppedEvents,
            reason: output.reason,
          });
          break;
        case "stale":
          this.signalLimited(
            `stale/${output.replica}`,
            {
              t: "overflow",
              source: "dedupe",
              replica: output.replica,
              droppedEvents: output.events,
              reason: `copies from replica ${output.replica} below a range forgotten by a publisher's dedupe window (more than ${DELIVERY_DEDUPE_RANGES_PER_PUBLISHER_MAX} ranges), which cannot be told from delivered events`,
            },
            output.events,
          );
          break;
        case "held-dropped":
          this.signalLimited(
            `held/${output.replica}`,
            {
              t: "overflow",
              source: "held",
              replica: output.replica,
              droppedEvents: output.events,
              reason: `copies from replica ${output.replica} held until their publisher was vouched for or known were dropped (${output.reason}); they are lost unless another replica's copy was delivered`,
            },
            output.events,
          );
          break;
        case "trimmed":
          this.onAgreedTrim(output.nextSeq, output.oldestSeq);
          break;
        case "unknown-publisher":
          this.refreshPublishersIfDue();
          break;
        default: {
          const unreachable: never = output;
          throw new Error(`unknown delivery output ${String(unreachable)}`);
        }
      }
    }
  }

  /**
   * Learns the registered publishers again when a copy of an unknown key waits for it
   * (at most one query at a time, spaced by the registry), then feeds the held copies
   * back to the voter: delivered if their key is now listed, held or refused if not.
   */
  private refreshPublishersIfDue(): void {
    const registry = this.registry;
    if (registry === null || this.start.t === "ended" || !registry.shouldRefresh(this.host.now())) return;
    registry.begin(this.host.now());
    this.host.publishers(this.tag).then(
      (listing) => {
        registry.update(listing, this.host.now());
        this.recheckHeld();
      },
      () => {
        // No quorum in time: the keys stay unknown and are asked about again, or refused
        // once they have waited too long (their copies then show as "invalid").
        registry.failed(this.host.now());
        this.recheckHeld();
      },
    );
  }

  private recheckHeld(): void {
    if (this.start.t === "ended" || this.voter === null) return;
    this.handleOutputs(this.voter.recheckHeld());
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
    this.replicas.resubscribeAll();
    this.handleOutputs(outputs);
  }

  /**
   * `$sys.events`: the voter delivered one replica's signed reports; the group event voter
   * counts them by the replica that signed, which is the one whose session carried them
   * (isOwnReport), and what f+1 replicas reported is queued.
   */
  private onReports(group: GroupEventVoter, batch: DeliveredBatch): void {
    const replica = this.reporterIds.get(toHex(batch.publisher));
    if (replica === undefined) {
      this.counters.invalidReports++;
      this.signal({ t: "invalid", replica: null, reason: "a $sys.events report signed by a key that is no member's" });
      return;
    }
    this.lastReports.set(replica, batch);
    for (const payload of batch.events) {
      for (const output of group.onReport(replica, payload)) {
        if (this.start.t === "ended") return;
        switch (output.t) {
          case "report":
            this.options.onCopy?.({ replica: output.replica, key: output.key });
            break;
          case "invalid":
            this.counters.invalidReports++;
            this.signal({ t: "invalid", replica: output.replica, reason: `$sys.events report: ${output.reason}` });
            break;
          case "deliver":
            this.enqueueGroupEvent(batch, output.event);
            break;
          default: {
            const unreachable: never = output;
            throw new Error(`unknown group event output ${String(unreachable)}`);
          }
        }
      }
    }
  }

  /**
   * A group event goes to the caller as a batch of one event: its JSON, signed by none
   * of them but vouched for by the reporters it names; `publisher` and `ts` are those of
   * the report that made f+1 (at a regroup that lowered f: a reporter's latest report), `pubSeq` counts the group events this subscription delivered.
   */
  private enqueueGroupEvent(report: DeliveredBatch, event: GroupEvent): void {
    this.groupSeq++;
    const batch: DeliveredBatch = { ...report, pubSeq: this.groupSeq, events: [event.payload] };
    this.groupKeys.set(batch, event.key);
    this.enqueue(batch);
  }

  private toReceived(batch: DeliveredBatch): ReceivedBatch {
    const received: ReceivedBatch = {
      tag: batch.tag,
      seq: batch.seq,
      pubSeq: batch.pubSeq,
      publisher: batch.publisher,
      ts: batch.request.ts,
      events: batch.events,
    };
    const own = this.host.sharedBytes?.(batch.signed.body) === true ? ownBytes(received, batch.signed.body) : received;
    const groupKey = this.groupKeys.get(batch);
    if (groupKey !== undefined) return { ...own, copyKey: groupKey };
    if (this.options.onCopy === undefined) return own;
    // The copy began at the batch's first seq; a resume point may have cut the batch.
    const firstSeq = batch.seq === null ? null : batch.seq - (batch.pubSeq - batch.request.seq);
    return { ...own, copyKey: copyKey(firstSeq, batch.signed) };
  }

  private enqueue(batch: DeliveredBatch): void {
    if (this.delivery.enqueue(batch) === "full") this.onQueueFull(batch);
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
    this.delivery.pause(batch.seq);
    this.signal({ t: "slow", source: "local", resumeFrom: batch.seq });
    this.replicas.unsubscribeAll();
  }

  /** The queue drained after a pause: a fresh voter from `from`, and every ready replica asked again. */
  private resumeAfterPause(from: number): void {
    this.voter = this.newVoter(from);
    this.narrowing?.restart();
    for (const replica of this.host.readyReplicas()) this.replicas.subscribeAt(replica);
  }

  private signal(signal: SubscriptionSignal): void {
    this.options.onSignal?.(signal);
  }

  /** A signal one replica can cause per copy: sent now, or counted into the next one of its kind (SignalLimiter). */
  private signalLimited(key: string, signal: SubscriptionSignal, count: number): void {
    const now = this.limiter.offer(key, signal, count, this.host.now());
    if (now !== null) this.signal(withCount(now.what, now.count));
  }

  /** Signals held back whose interval is over. */
  private flushLimitedSignals(now: number): void {
    for (const held of this.limiter.due(now)) this.signal(withCount(held.what, held.count));
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
    this.replicas.unsubscribeAll();
    this.host.forget(this);
    this.delivery.clear();
    if (wasStarting) {
      const reason = error ?? new ClientClosedError(`subscription to ${this.tag} closed before it started`);
      for (const waiter of this.startWaiters.splice(0)) waiter.reject(reason);
    }
    if (!this.delivery.isPumping) this.finishDone();
  }

  private finishDone(): void {
    if (this.endError === null) this.resolveDone();
    else this.rejectDone(this.endError);
  }
}

/** The client's tick period when the host does not say (client.ts TICK_MS_MAX). */
export const CLIENT_TICK_MS_DEFAULT = 250;

/** Which replicas serve a subscription: SubscribeOptions.sources. */
export type SubscriptionSources = "auto" | "quorum" | "all";

/** SubscribeOptions.sources with "auto" decided for the channel. */
export function sourcesOf(options: SubscribeOptions, channel: ChannelInfo): "quorum" | "all" {
  const sources = options.sources ?? "auto";
  if (sources !== "auto") return sources;
  const urgent = channel.priority === "high" || channel.priority === "critical";
  return urgent || options.onCopy !== undefined ? "all" : "quorum";
}

/** The key a copy is reported under to `onCopy`: its first channel seq (total order) and the digest of its signed request. */
function copyKey(firstSeq: number | null, signed: { readonly body: Uint8Array; readonly sig: Uint8Array }): string {
  const digest = toHex(signedRequestDigest(sha256, signed));
  return firstSeq === null ? digest : `${firstSeq}/${digest}`;
}

/**
 * A delivered batch whose bytes other subscriptions were handed too (one EVENTS frame named
 * them all), with its own copy of them: the publisher key and events point into a copy of
 * the body, so a handler writing over them changes no other subscription's events.
 */
function ownBytes(received: ReceivedBatch, body: Uint8Array): ReceivedBatch {
  const copy = body.slice();
  const own = (view: Uint8Array): Uint8Array => {
    const at = view.byteOffset - body.byteOffset;
    return view.buffer === body.buffer && at >= 0 && at + view.length <= body.length ? copy.subarray(at, at + view.length) : view.slice();
  };
  return { ...received, publisher: own(received.publisher), events: received.events.map(own) };
}

/**
 * Whether an invalid copy is held against its sender (replica-subs.ts sentInvalid). Not a
 * key our list refused (it may be one the list has yet to learn), nor a body this client
 * cannot read (undecodable, malformed): a newer body version that every correct replica
 * stores and forwards would otherwise strike them all and keep them away for up to a
 * minute. A bad signature or content for another channel is the sender's doing.
 */
function strikesSender(reason: InvalidReason): boolean {
  return reason !== "publisher-refused" && reason !== "undecodable" && reason !== "malformed";
}

/** A rate-limited signal with the count it stands for: invalid copies, or dropped events. */
function withCount(signal: SubscriptionSignal, count: number): SubscriptionSignal {
  if (signal.t === "invalid") return count > 1 ? { ...signal, copies: count } : signal;
  if (signal.t === "overflow" && (signal.source === "dedupe" || signal.source === "held")) return { ...signal, droppedEvents: count };
  return signal;
}

function copyKeyOf(ordered: boolean, events: Events): string {
  return copyKey(ordered ? events.seq : null, events.req);
}
