/**
 * FitbClient: the client side of fitb. It holds one authenticated connection per
 * replica and speaks to the group as a whole:
 *
 * - publish / admin: sign a request once, send it to every replica, and vote on the
 *   replies with the quorum the channel's CLASS needs (src/core/voting, src/README.md §3).
 *   Replicas that have not answered get the same signed bytes again after a timeout and
 *   whenever their session comes back; the request fails with TIMEOUT at its deadline
 *   (request-tracker.ts). Sequence numbers are learned from the group once per space
 *   (seq-spaces.ts, seq.ts) and then counted locally; a REPLAY answer makes the client
 *   learn again and re-number.
 * - query: channel-info and list-channels from f+1 matching answers, client-seq by rank,
 *   status from each replica (queries.ts, query-tracker.ts, cluster-status.ts).
 * - subscribe: delivery voting, end-to-end signature checks and resume (subscription.ts),
 *   routed by sub id (subscription-router.ts).
 *
 * This class is the facade that ties those units together: it owns the connections
 * (replica-group.ts), the read-your-writes floor (executed-floor.ts), the window and the
 * timer, and hands each frame from a replica to the unit it is for.
 *
 * Everything is bounded: requests in flight (the window), callers waiting for the
 * window, each connection's send queue, subscriptions, each subscription's buffers.
 */
import type { AdminCmd, Frame, Op, Query, QueryKind, ReplyResult } from "../../wire/schemas.ts";
import { FrameType, type ErrorCode } from "../../wire/types.ts";
import type { Canonical } from "../../wire/canonical.ts";
import { unorderedFromProblem } from "../core/channels/request.ts";
import { liveQuorum, type ReplyKind, vouchQuorum } from "../core/voting/quorum.ts";
import { formatPublicKey } from "../crypto/keys.ts";
import type { ClusterConfig } from "../config/cluster.ts";
import { type ChannelKeys, type ChannelListing, listChannelsRule, parseChannelKeys } from "./channel-listing.ts";
import { ChannelWatch } from "./channel-watch.ts";
import { summarizeStatus, type ClusterStatus } from "./cluster-status.ts";
import type { ReplicaConnection } from "./connection.ts";
import { ClientClosedError, ClientError, InvalidInputError, NoQuorumError, QueueFullError, ReplicaUnreachableError } from "./errors.ts";
import { ExecutedFloor } from "./executed-floor.ts";
import {
  PREFERRED_RETRY_MS_MAX,
  resolveOptions,
  type ClientLimits,
  type ClientTimeouts,
  type FitbClientOptions,
  type ResolvedOptions,
} from "./options.ts";
import {
  channelInfoRule,
  eachRule,
  matchingRule,
  parseClientSeq,
  parseQuotas,
  parseStatus,
  type PublisherListing,
  publisherListingRule,
  publishersRule,
  quotaListings,
  highestRule,
  rankRule,
  type ChannelInfo,
  type KeyQuotaListing,
  type GroupListing,
  type MembersListing,
  membersListing,
  membersWithStart,
  parseMembers,
  parseMembersWithStart,
  type QueryRule,
  type Voucher,
  vouchedRule,
} from "./queries.ts";
import {
  type AgreedGroup,
  fileEntryOf,
  groupProblem,
  isNewer,
  MEMBERSHIP_REFRESH_MIN_MS,
  membershipRule,
  noticeAsksRead,
  sameAsFile,
} from "./membership-follow.ts";
import { QueryTracker } from "./query-tracker.ts";
import { ReplicaGroup, type TrackingContext } from "./replica-group.ts";
import { adminOp, buildRequest, checkEvents, checkTag, pubOp, spanOf } from "./request.ts";
import { RequestTracker, type RequestOutcome } from "./request-tracker.ts";
import { SeqSpaces, type SeqSpace } from "./seq-spaces.ts";
import { isPattern, patternProblem } from "./pattern.ts";
import { type PatternHost, PatternSubscription } from "./pattern-subscription.ts";
import {
  ClientSubscription,
  type BatchHandler,
  type SubscribeOptions,
  type Subscription,
  type SubscriptionHandle,
} from "./subscription.ts";
import { SubscriptionRouter } from "./subscription-router.ts";
import { InflightWindow } from "./window.ts";

/** What `FitbClient.membership` reports. */
export interface MembershipState {
  /** The epoch the client follows; null until it has read the group (it runs on the cluster file's). */
  readonly epoch: number | null;
  readonly ids: readonly number[];
  readonly f: number;
  /**
   * The group followed as f+1 replicas listed it at the last read that agreed on its epoch
   * (their addresses, which a client may reach otherwise); null while the client runs on
   * the cluster file's. Set also when it is the file's group: then it matches the file.
   */
  readonly group: GroupListing | null;
  /** Groups taken since the client started. */
  readonly changes: number;
  /** Answers naming a newer group that fewer than f+1 replicas backed, and agreed groups the client could not vote with. */
  readonly refused: number;
  /** Reads of the group in a row that found no f+1 agreement. */
  readonly failedReads: number;
  /**
   * The group followed tolerates more faults than the cluster file says: the file is stale
   * and unsafe to start new clients and hosts from (its f is their trust anchor).
   */
  readonly staleFile: boolean;
  /** Epochs in which the client warned that its cluster file is stale (one warning per epoch). */
  readonly staleFileWarnings: number;
  /** EPOCH notices received that named an epoch newer than the one followed: each asked for a read of the group, no more. */
  readonly notices: number;
}

export { summarizeStatus, type ClusterStatus, type ReplicaStatus } from "./cluster-status.ts";

/**
 * How long a client that already has the sessions it needs waits for the others before it
 * goes on (they keep connecting in the background).
 */
export const SESSION_GRACE_MS = 1_000;

/**
 * How long replicas must have refused connections before a one-shot command gives up
 * (`refusedFailsAtOnce`): long enough for replicas started a moment ago (`fitb replica &`,
 * then a command) to begin listening, far shorter than the connect timeout.
 */
export const REFUSED_GRACE_MS = 1_000;

/** Connection failures that retrying within seconds will not cure (describeSocketError's words). */
const DEFINITE_REFUSALS: ReadonlySet<string> = new Set(["connection refused", "host name not found"]);
/** The client's timers look at deadlines this often at most. */
const TICK_MS_MAX = 250;

/** Refusals after which what the client believes about a channel (its CLASS) may be stale. */
const CHANNEL_STALE_REFUSALS: ReadonlySet<ErrorCode> = new Set(["UNKNOWN_CHANNEL", "BAD_REQUEST"]);

/** The acknowledgement of a publish. */
export interface PublishAck {
  readonly tag: string;
  /** Events in the request. */
  readonly span: number;
  /** The publisher seq of the first event (this key's own counter on this tag). */
  readonly pubSeq: number;
  /** The channel seq of the first event on total-order channels; null on unordered ones. */
  readonly channelSeq: number | null;
  /** SEQ of the first event as commands print it: channelSeq on total order, else pubSeq. */
  readonly firstSeq: number;
  /** The replicas whose matching replies formed the quorum. */
  readonly replicas: readonly number[];
}

/** The acknowledgement of an admin command. */
export interface AdminAck {
  readonly cmd: AdminCmd["t"];
  /** The channel the command was about; null for set-quota, which is about a key. */
  readonly tag: string | null;
  readonly replicas: readonly number[];
  /**
   * The decided seq at which the command executed (null from replicas that do not say).
   * This client waits for it on later calls by itself; another process can pass it on
   * (read-your-writes, PROTOCOL.md 6.3).
   */
  readonly at: number | null;
}

export type QueryResult =
  | { readonly kind: "status"; readonly value: ClusterStatus }
  | { readonly kind: "list-channels"; readonly value: readonly ChannelListing[] }
  | { readonly kind: "channel-info"; readonly value: ChannelInfo }
  | { readonly kind: "client-seq"; readonly value: number }
  | { readonly kind: "publishers"; readonly value: readonly Uint8Array[] }
  | { readonly kind: "quotas"; readonly value: readonly KeyQuotaListing[] }
  | { readonly kind: "members"; readonly value: MembersListing };

export class FitbClient {
  /** The cluster file the client started from (its replicas may since have changed: see `members` and `membership`). */
  readonly config: ClusterConfig;
  private readonly options: ResolvedOptions;
  private readonly group: ReplicaGroup;
  private readonly window: InflightWindow;
  /**
   * A decided seq this client knows some correct replica has executed: from its own admin
   * commands, and the (f+1)-th highest `at` of any answer. Sent as `after` so that a
   * replica behind it waits instead of answering from older state.
   */
  private readonly floor: ExecutedFloor;
  private readonly spaces: SeqSpaces;
  private readonly requests: RequestTracker;
  private readonly queries: QueryTracker;
  private readonly subscriptions: SubscriptionRouter;
  private readonly everReady = new Set<number>();
  private readonly readyWaiters: (() => void)[] = [];
  private tickTimer: ReturnType<typeof setInterval> | null = null;
  /** The period of the client's tick: half the resend timeout, at most TICK_MS_MAX. */
  private readonly tickMs: number;
  /** The timer of the requests' next retry (RequestTracker.retryDue), and when it fires. */
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private retryTimerAt = Number.POSITIVE_INFINITY;
  private closed = false;
  /** The channel list, read once per interval for all wildcard subscriptions (channel-watch.ts). */
  private readonly channelWatch = new ChannelWatch<ChannelInfo>(() => this.listChannelClasses());
  /** Following the group (membership-follow.ts). */
  private readonly follow = {
    epoch: null as number | null,
    /** The group of `epoch`, as f+1 replicas listed it (MembershipState.group). */
    group: null as GroupListing | null,
    inFlight: false,
    lastAt: Number.NEGATIVE_INFINITY,
    dueAt: Number.POSITIVE_INFINITY,
    changes: 0,
    refused: 0,
    failedReads: 0,
    /** The newer epoch each dissenting replica last claimed: a claim is logged and read again soon once, not at every read. */
    claims: new Map<number, number>(),
    /** The last epoch the stale cluster file was warned about (once per epoch), and how many were. */
    staleFileEpoch: null as number | null,
    staleFileWarnings: 0,
    notices: 0,
  };

  constructor(options: FitbClientOptions) {
    this.options = resolveOptions(options);
    this.tickMs = Math.max(1, Math.min(TICK_MS_MAX, Math.floor(this.options.timeouts.resendMs / 2)));
    this.config = options.config;
    const { limits, timeouts } = this.options;
    this.window = new InflightWindow(limits.inflightRequestsMax, limits.waitersMax);
    this.group = new ReplicaGroup(
      options.config,
      options.key,
      {
        onReady: (connection) => this.onReady(connection),
        onFrame: (connection, frame) => this.onFrame(connection, frame),
        onDown: (connection, error) => this.onDown(connection, error),
        onBadFrame: (connection, reason) => this.log("warn", `replica ${connection.id} sent an invalid frame: ${reason}`, connection.id),
      },
      {
        frameBytesMax: options.config.limits.frameBytesMax,
        outboundBytesMax: limits.outboundBytesMax,
        sessionTimeoutMs: timeouts.sessionMs,
        pingIntervalMs: timeouts.pingIntervalMs,
        idleTimeoutMs: timeouts.idleMs,
        failover: {
          silenceMs: timeouts.addressSilenceMs,
          preferredRetryMsMin: timeouts.preferredRetryMs,
          preferredRetryMsMax: Math.max(timeouts.preferredRetryMs, PREFERRED_RETRY_MS_MAX),
        },
        backoff: this.options.backoff,
        random: this.options.random,
        now: this.options.now,
      },
    );
    // The followed group's f and members, read at every count.
    this.floor = new ExecutedFloor(this.group);
    const tracking: TrackingContext = {
      group: this.group,
      floor: this.floor,
      frameBytesMax: options.config.limits.frameBytesMax,
      now: () => this.options.now(),
      log: (level, message, replica) => this.log(level, message, replica),
      wakeAt: (atMs) => this.wakeAt(atMs),
    };
    this.requests = new RequestTracker(tracking, timeouts, this.options.crashNoneTargets);
    this.queries = new QueryTracker(tracking, timeouts.queryMs);
    this.spaces = new SeqSpaces({
      channelInfo: (tag) => this.channelInfo(tag),
      clientSeq: (tag, kind) => this.clientSeq(tag, kind),
    });
    this.subscriptions = new SubscriptionRouter(
      this.group,
      this.floor,
      () => this.options.now(),
      (tag) => this.publisherListing(tag),
      this.tickMs,
    );
  }

  /**
   * Connects to every replica and resolves once n-f sessions are up, or, at the connect
   * timeout, if at least f+1 are. Otherwise rejects with NoQuorumError naming why each
   * replica is missing. Replicas not yet up keep being dialled in the background.
   */
  /**
   * `refusedFailsAtOnce`: give up as soon as so many replicas refused the connection
   * (nothing listens at their address) that the rest cannot make a quorum, instead of
   * waiting out the connect timeout. For one-shot commands; a long-running client, whose
   * replicas may be starting, keeps trying.
   */
  static async connect(options: FitbClientOptions, how: { readonly refusedFailsAtOnce?: boolean } = {}): Promise<FitbClient> {
    const client = new FitbClient(options);
    client.start();
    try {
      const { connectMs } = client.options.timeouts;
      await client.waitForSessions(liveQuorum(client.n, client.f), vouchQuorum(client.f), connectMs, how.refusedFailsAtOnce ?? false);
    } catch (error) {
      client.close();
      throw error;
    }
    return client;
  }

  /** Replicas in the group the client follows now (the cluster file's until it learns another; membership-follow.ts). */
  get n(): number {
    return this.group.n;
  }

  /** Faults tolerated by the group the client follows now. */
  get f(): number {
    return this.group.f;
  }

  /** The group the client follows: its epoch (null: the cluster file's), members, and reads of it. */
  get membership(): MembershipState {
    return {
      epoch: this.follow.epoch,
      ids: this.group.connections.map((connection) => connection.id),
      f: this.group.f,
      group: this.follow.group,
      changes: this.follow.changes,
      refused: this.follow.refused,
      failedReads: this.follow.failedReads,
      staleFile: this.group.f > this.config.f,
      staleFileWarnings: this.follow.staleFileWarnings,
      notices: this.follow.notices,
    };
  }

  /** Starts the connections and timers (connect() does this). */
  start(): void {
    if (this.tickTimer !== null || this.closed) return;
    this.follow.dueAt = this.options.now();
    this.tickTimer = setInterval(() => this.tick(), this.tickMs);
    this.group.start();
  }

  get timeouts(): ClientTimeouts {
    return this.options.timeouts;
  }

  get limits(): ClientLimits {
    return this.options.limits;
  }

  /** The key this client signs with. */
  get publicKey(): Uint8Array {
    return this.options.key.publicKey;
  }

  /** The decided seq this client waits for replicas to have executed (see `floor`). */
  get executedFloor(): number {
    return this.floor.value;
  }

  /**
   * Raises the floor to a decided seq the caller learned elsewhere (e.g. printed by
   * `fitb admin` in another process): later calls wait for replicas to reach it.
   */
  observeExecuted(seq: number): void {
    this.floor.observe(seq);
  }

  /** Ids of the replicas with a session up now. */
  readyReplicas(): number[] {
    return this.group.readyReplicas();
  }

  /** Each replica's connection state and last error, for diagnostics. */
  replicaStates(): { id: number; address: string; state: string; lastError: string | null }[] {
    return this.group.replicaStates();
  }

  /** Requests in flight now. */
  get inflightRequests(): number {
    return this.requests.size;
  }

  /** "Not now" refusals (RATE_LIMITED, OVERLOADED, ...) received and retried since the client started, by code. */
  get transientRefusals(): ReadonlyMap<ErrorCode, number> {
    return this.requests.transientRefusals;
  }

  /** crash/none publishes sent to every replica after their f+1 replicas refused, dropped or were slower than the hedge delay (crashNoneTargets "quorum"). */
  get crashNoneWidened(): number {
    return this.requests.widened;
  }

  /**
   * Resolves once `wanted` sessions are up; at `timeoutMs` resolves if at least `needed`
   * are, else rejects with NoQuorumError.
   */
  async waitForSessions(wanted: number, needed: number, timeoutMs: number, refusedFailsAtOnce = false): Promise<void> {
    const startedMs = this.options.now();
    let deadline = startedMs + timeoutMs;
    let graceStarted = false;
    while (this.readyReplicas().length < wanted) {
      if (this.closed) throw new ClientClosedError();
      const refused = refusedFailsAtOnce && this.options.now() - startedMs >= REFUSED_GRACE_MS ? this.refusedReplicas() : 0;
      if (this.n - refused < needed) {
        throw new NoQuorumError(
          `no quorum: ${refused} of ${this.n} replicas refused the connection for ${REFUSED_GRACE_MS} ms (nothing listens there), so fewer than the ${needed} needed can answer (${this.group.describeReplicas(new Set())})`,
        );
      }
      // Once enough are ready, the rest get a short grace, not the whole timeout: with
      // replicas down, a publish should not first wait out --connect-timeout.
      if (!graceStarted && this.readyReplicas().length >= needed) {
        graceStarted = true;
        deadline = Math.min(deadline, this.options.now() + SESSION_GRACE_MS);
      }
      const now = this.options.now();
      const left = deadline - now;
      if (left <= 0) break;
      // Look again when the refusal grace ends, not only at the next event.
      const untilGraceEnds = startedMs + REFUSED_GRACE_MS - now;
      const waitMs = refusedFailsAtOnce && untilGraceEnds > 0 ? Math.min(left, untilGraceEnds) : left;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, waitMs);
        this.readyWaiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    const ready = this.readyReplicas().length;
    if (ready >= needed) return;
    throw new NoQuorumError(
      `no quorum: ${ready} of ${this.n} replicas reachable within ${timeoutMs} ms, ${needed} needed (${this.group.describeReplicas(new Set())})`,
    );
  }

  // ---------------------------------------------------------------------------------
  // Publish and admin
  // ---------------------------------------------------------------------------------

  /**
   * Publishes the events as one signed request to `tag` and resolves when the CLASS's
   * quorum acknowledged it. Rejects with InvalidInputError (before sending),
   * RequestRejectedError (a quorum refused), NoQuorumError (TIMEOUT; RATE_LIMITED or OVERLOADED,
   * a RetriedRefusalError, when every replica it went to still refused it so at the deadline)
   * or QueueFullError.
   */
  async publish(tag: string, events: readonly Uint8Array[]): Promise<PublishAck> {
    this.assertOpen();
    checkTag(tag);
    checkEvents(events, this.config.limits);
    const op = pubOp(tag, events);
    const span = spanOf(op);
    const result = await this.submitWithRetries(tag, op, () => `publish to ${tag}`);
    return this.publishAck(tag, span, result);
  }

  /** Runs an admin command (signed by this client's key, which must be an admin key). */
  async admin(cmd: AdminCmd): Promise<AdminAck> {
    this.assertOpen();
    const tag = "tag" in cmd ? cmd.tag : null;
    if (tag !== null) checkTag(tag);
    const what = describeCmd(cmd);
    const result = await this.submitWithRetries(null, adminOp(cmd), () => what);
    if (result.res.t !== "admin" || result.res.cmd !== cmd.t) {
      throw new ClientError("INTERNAL", `${what}: the replicas acknowledged a different command`);
    }
    const at = result.res.at ?? null;
    if (at !== null) this.observeExecuted(at);
    return { cmd: cmd.t, tag, replicas: result.replicas, at };
  }

  /** The limits a batcher (Publisher) must keep to. */
  publishLimits(): { batchEventsMax: number; eventBytesMax: number; frameBytesMax: number; inflightRequestsMax: number } {
    return {
      batchEventsMax: this.config.limits.batchEventsMax,
      eventBytesMax: this.config.limits.eventBytesMax,
      frameBytesMax: this.config.limits.frameBytesMax,
      inflightRequestsMax: this.options.limits.inflightRequestsMax,
    };
  }

  private publishAck(tag: string, span: number, result: { res: ReplyResult; replicas: readonly number[]; pubSeq: number }): PublishAck {
    const res = result.res;
    if (res.t !== "pub" || res.tag !== tag || res.span !== span) {
      throw new ClientError("INTERNAL", `publish to ${tag}: the replicas acknowledged a different request`);
    }
    const channelSeq = res.first ?? null;
    return { tag, span, pubSeq: result.pubSeq, channelSeq, firstSeq: channelSeq ?? result.pubSeq, replicas: result.replicas };
  }

  /**
   * Submits with fresh numbers until it is not refused as REPLAY, at most
   * replayRetriesMax + 1 times. Each retry learns the space's last seq again first.
   */
  private async submitWithRetries(
    tag: string | null,
    op: Op,
    describe: () => string,
  ): Promise<{ res: ReplyResult; replicas: readonly number[]; pubSeq: number }> {
    for (let attempt = 0; ; attempt++) {
      const space = await this.spaces.space(tag);
      if (space.stale) await this.spaces.relearn(space, space.counter.epoch);
      const epoch = space.counter.epoch;
      const { outcome, seq } = await this.submit(space, op, describe());
      if (outcome.ok) return { res: outcome.res, replicas: outcome.replicas, pubSeq: seq };
      const code = outcome.error.code;
      if (code === "REPLAY" && attempt < this.options.limits.replayRetriesMax) {
        await this.spaces.relearn(space, epoch);
        continue;
      }
      // A request that timed out, or ran out of time retrying "not now" refusals (RATE_LIMITED,
      // OVERLOADED), may or may not have been ordered: the numbering is read again.
      if (outcome.error instanceof NoQuorumError) space.stale = true;
      if (tag !== null && CHANNEL_STALE_REFUSALS.has(code)) this.spaces.forget(tag);
      throw outcome.error;
    }
  }

  /** Takes a window slot, numbers, signs and sends one request, and waits for its outcome. */
  private async submit(space: SeqSpace, op: Op, what: string): Promise<{ outcome: RequestOutcome; seq: number }> {
    await this.window.acquire();
    try {
      this.assertOpen();
      // Numbering right after taking the slot, with no await in between, sends every
      // space's requests in the order of their numbers, which total-order replicas need.
      const seq = space.counter.allocate(spanOf(op));
      const built = buildRequest(
        this.options.key,
        { seq, ts: this.options.now(), op, after: this.floor.value },
        this.config.limits.frameBytesMax,
      );
      const outcome = await this.requests.track(built, space.kind, `${what} (seq ${seq})`);
      return { outcome, seq };
    } finally {
      this.window.release();
    }
  }

  // ---------------------------------------------------------------------------------
  // Queries
  // ---------------------------------------------------------------------------------

  /** A channel's CLASS, from f+1 matching answers; RequestRejectedError(UNKNOWN_CHANNEL) if f+1 say so. */
  channelInfo(tag: string): Promise<ChannelInfo> {
    checkTag(tag);
    const floor = this.floor.value;
    const rule = channelInfoRule(this.n, this.f, `channel-info ${tag}`, floor, () => this.readyReplicas());
    const body: Query = floor > 0 ? { id: 0, q: "channel-info", tag, after: floor } : { id: 0, q: "channel-info", tag };
    return this.runQuery(body, rule);
  }

  /**
   * The keys registered as publishers of `tag` that f+1 replicas list, in ascending
   * order (queries.ts, publishersRule); RequestRejectedError(UNKNOWN_CHANNEL) if f+1 say
   * there is no such channel.
   */
  publishers(tag: string): Promise<readonly Uint8Array[]> {
    checkTag(tag);
    return this.runQuery(this.publishersQuery(tag), publishersRule(this.n, this.f, `publishers ${tag}`));
  }

  /** publishers, with the decided seq the listing is known to be as fresh as (what a subscription's registry needs). */
  publisherListing(tag: string): Promise<PublisherListing> {
    checkTag(tag);
    return this.runQuery(this.publishersQuery(tag), publisherListingRule(this.n, this.f, `publishers ${tag}`));
  }

  private publishersQuery(tag: string): Query {
    const floor = this.floor.value;
    return floor > 0 ? { id: 0, q: "publishers", tag, after: floor } : { id: 0, q: "publishers", tag };
  }

  /**
   * Where a total-order channel's next event will go: the (f+1)-th highest `next` the
   * replicas report (at least one correct replica has stored up to just below it); null
   * for an unordered channel, whose seqs are each replica's own.
   */
  async nextChannelSeq(tag: string): Promise<number | null> {
    const info = await this.channelInfo(tag);
    if (info.order !== "total") return null;
    const read = (res: Canonical): number | null => {
      const next = (res as { next?: unknown } | null)?.next;
      return typeof next === "number" && Number.isSafeInteger(next) && next >= 1 ? next : null;
    };
    return this.runQuery({ id: 0, q: "channel-info", tag }, rankRule(this.n, this.f, `channel-info ${tag}`, read));
  }

  /**
   * Every channel, sorted by tag: CLASS and key counts from f+1 matching answers, with
   * retention figures from every replica that answers (channel-listing.ts): it waits for
   * every replica with a session, or the deadline.
   */
  listChannels(): Promise<readonly ChannelListing[]> {
    return this.runQuery({ id: 0, q: "list-channels" }, listChannelsRule(this.group.ids, this.f));
  }

  /**
   * The channels as soon as f+1 replicas agree on them, for readers of tags and CLASSes
   * only (the wildcard watches, here and in the relay): a stopped replica whose session is
   * still up would otherwise hold each reading until the deadline. Its figures come from
   * those first answers only.
   */
  listChannelClasses(): Promise<readonly ChannelInfo[]> {
    return this.runQuery({ id: 0, q: "list-channels" }, listChannelsRule(this.group.ids, this.f, false));
  }

  /** The client keys with a quota of their own (set-quota), in ascending key order, from f+1 matching answers. */
  async listQuotas(): Promise<readonly KeyQuotaListing[]> {
    const floor = this.floor.value;
    const body: Query = floor > 0 ? { id: 0, q: "quotas", after: floor } : { id: 0, q: "quotas" };
    return quotaListings(await this.runQuery(body, matchingRule(this.group.ids, this.f, "quotas", parseQuotas)));
  }

  /** The replica group (epoch, f, members, digest and any pending change), from f+1 matching answers. */
  async members(): Promise<MembersListing> {
    const floor = this.floor.value;
    const body: Query = floor > 0 ? { id: 0, q: "members", after: floor } : { id: 0, q: "members" };
    return membersListing(await this.runQuery(body, matchingRule(this.group.ids, this.f, "members", parseMembers)));
  }

  /**
   * `members` with the checkpoint the current epoch started from, from f+1 matching
   * answers: what a replica joining the group starts at (src/cli/join.ts).
   */
  async membersWithStart(): Promise<ReturnType<typeof membersWithStart>> {
    return membersWithStart(
      await this.runQuery({ id: 0, q: "members", start: true }, matchingRule(this.group.ids, this.f, "members", parseMembersWithStart)),
    );
  }

  /**
   * membersWithStart, with the replicas whose answers settled it and the key each one's
   * session authenticated with: what a joining replica checks the answer against
   * (src/cli/join.ts).
   */
  async membersWithStartVouched(): Promise<ReturnType<typeof membersWithStart> & { readonly vouchers: readonly Voucher[] }> {
    const rule = vouchedRule(this.group.ids, this.f, "members", parseMembersWithStart, (id) => {
      const connection = this.group.connection(id);
      return connection?.isReady === true ? connection.endpoint.publicKey : null;
    });
    const { value, vouchers } = await this.runQuery({ id: 0, q: "members", start: true }, rule);
    return { ...membersWithStart(value), vouchers };
  }

  /** A channel's registered publisher and subscriber keys, from f+1 matching answers. */
  channelKeys(tag: string): Promise<ChannelKeys> {
    checkTag(tag);
    const floor = this.floor.value;
    const rule = matchingRule(this.group.ids, this.f, `channel-info ${tag}`, (res) => parseChannelKeys(res) as Canonical | null);
    const body: Query = { id: 0, q: "channel-info", tag, keys: true, ...(floor > 0 ? { after: floor } : {}) };
    return this.runQuery(body, rule) as Promise<unknown> as Promise<ChannelKeys>;
  }

  /**
   * The last seq this key used in a space (tag, or null for admin): the (f+1)-th highest
   * answer, of the first 2f+1 or, for `kind` byzantine/none, of every replica that answers
   * before the deadline (queries.ts, rankRule); for crash/none the highest answer
   * (highestRule), since its publishes normally reach f+1 replicas only.
   */
  clientSeq(tag: string | null, kind: ReplyKind | null = null): Promise<number> {
    const what = `client-seq ${tag ?? "admin"}`;
    const rule =
      kind === "crash/none"
        ? highestRule(this.n, this.f, what, parseClientSeq)
        : rankRule(this.n, this.f, what, parseClientSeq, kind === "byzantine/none");
    const body = (tag === null ? { id: 0, q: "client-seq" } : { id: 0, q: "client-seq", tag }) as Query;
    return this.runQuery(body, rule);
  }

  /**
   * Every replica's status side by side, with the view and leader f+1 of them agree on.
   * `answerGraceMs`: once n-f replicas answered, how long the others still have (a replica
   * that holds its session but does not answer would otherwise hold the read until the
   * query timeout); by default they have until the timeout.
   */
  async status(options: { readonly answerGraceMs?: number } = {}): Promise<ClusterStatus> {
    const rule = eachRule(this.n, parseStatus, this.f, options.answerGraceMs ?? Number.POSITIVE_INFINITY);
    const answers = await this.runQuery({ id: 0, q: "status" }, rule);
    return summarizeStatus(this.f, answers, this.group.connections);
  }

  /** Any query by kind, with the rule that kind takes (see queries.ts). */
  async query(kind: QueryKind, tag?: string): Promise<QueryResult> {
    switch (kind) {
      case "status":
        return { kind, value: await this.status() };
      case "list-channels":
        return { kind, value: await this.listChannels() };
      case "channel-info":
        if (tag === undefined) throw new RangeError("channel-info needs a tag");
        return { kind, value: await this.channelInfo(tag) };
      case "client-seq":
        return { kind, value: await this.clientSeq(tag ?? null) };
      case "publishers":
        if (tag === undefined) throw new RangeError("publishers needs a tag");
        return { kind, value: await this.publishers(tag) };
      case "quotas":
        return { kind, value: await this.listQuotas() };
      case "members":
        return { kind, value: await this.members() };
      default: {
        const unreachable: never = kind;
        throw new RangeError(`unknown query kind ${String(unreachable)}`);
      }
    }
  }

  private runQuery<T>(body: Query, rule: QueryRule<T>): Promise<T> {
    this.assertOpen();
    return this.queries.run(body, rule);
  }

  // ---------------------------------------------------------------------------------
  // Subscriptions
  // ---------------------------------------------------------------------------------

  /**
   * Subscribes to every channel whose tag matches `pattern` (`net.*`, `net.>`;
   * pattern.ts), including channels created later (pattern-subscription.ts). Live only:
   * `from` is refused, as channel seqs differ between channels.
   */
  async subscribePattern(pattern: string, options: SubscribeOptions, onBatch: BatchHandler): Promise<PatternSubscription> {
    this.assertOpen();
    const problem = patternProblem(pattern);
    if (problem !== null) throw new InvalidInputError("BAD_REQUEST", problem);
    if (options.from !== undefined)
      throw new InvalidInputError("BAD_REQUEST", "a pattern subscription is live: --from names a seq of one channel");
    const host: PatternHost = {
      listChannels: () => this.listChannelClasses(),
      watchChannels: (listener) => this.channelWatch.listen(listener),
      subscribe: (tag, channelOptions, handler) => this.subscribe(tag, channelOptions, handler),
      subscriptionsMax: this.config.limits.connectionSubscriptionsMax,
    };
    return PatternSubscription.start(pattern, host, options, onBatch);
  }

  /** `subscribe` for a tag, `subscribePattern` for a pattern. */
  subscribeAny(tagOrPattern: string, options: SubscribeOptions, onBatch: BatchHandler): Promise<SubscriptionHandle> {
    return isPattern(tagOrPattern) ? this.subscribePattern(tagOrPattern, options, onBatch) : this.subscribe(tagOrPattern, options, onBatch);
  }

  /**
   * Subscribes to `tag` and resolves once the subscription has started (see
   * subscription.ts for the per-CLASS rules); `onBatch` then gets every delivered batch,
   * one call at a time, in channel order on total-order channels.
   */
  async subscribe(tag: string, options: SubscribeOptions, onBatch: BatchHandler): Promise<Subscription> {
    this.assertOpen();
    checkTag(tag);
    if (this.subscriptions.size >= this.options.limits.subscriptionsMax) {
      throw new QueueFullError(`${this.subscriptions.size} subscriptions open; at most ${this.options.limits.subscriptionsMax}`);
    }
    const channel = await this.channelInfo(tag);
    // Replicas refuse it too (older ones replayed from positions that differ at each).
    const unorderedFrom = channel.order === "none" ? unorderedFromProblem(tag, channel.fault, options.from) : null;
    if (unorderedFrom !== null) throw new InvalidInputError("BAD_REQUEST", unorderedFrom);
    // Crash-fault channels deliver one replica's copy without a vote: only registered publishers' batches are taken.
    const publishers = channel.fault === "crash" ? await this.publisherListing(tag) : [];
    // The members' keys by id ($sys.events counts reports by who signed them).
    const replicaKeys: Uint8Array[] = [];
    for (const connection of this.group.connections) replicaKeys[connection.id] = connection.endpoint.publicKey;
    const sub = new ClientSubscription(
      this.subscriptions,
      channel,
      options,
      onBatch,
      this.options.timeouts.queryMs,
      publishers,
      replicaKeys,
    );
    this.subscriptions.add(sub);
    await sub.begin();
    return sub;
  }

  // ---------------------------------------------------------------------------------
  // Frames from replicas: one handler per kind
  // ---------------------------------------------------------------------------------

  private onFrame(connection: ReplicaConnection, frame: Frame): void {
    switch (frame.type) {
      case FrameType.REPLY:
        this.requests.onReply(connection.id, frame.body);
        return;
      case FrameType.QUERY_REPLY:
        this.queries.onQueryReply(connection.id, frame.body);
        return;
      case FrameType.SUB_OK:
        this.subscriptions.onSubOk(connection.id, frame.body);
        return;
      case FrameType.EVENTS:
        this.subscriptions.onEvents(connection.id, frame.body);
        return;
      case FrameType.SUB_END:
        this.subscriptions.onSubEnd(connection.id, frame.body);
        return;
      case FrameType.EPOCH:
        this.onEpochNotice(connection.id, frame.body.epoch);
        return;
      case FrameType.ERROR:
        this.log("warn", `replica ${connection.id} reported ${frame.body.code}: ${frame.body.reason}`, connection.id);
        return;
      case FrameType.HELLO:
      case FrameType.HELLO_ACK:
      case FrameType.AUTH:
      case FrameType.PING:
      case FrameType.PONG:
      case FrameType.REQUEST:
      case FrameType.QUERY:
      case FrameType.SUBSCRIBE:
      case FrameType.UNSUBSCRIBE:
      case FrameType.PEER:
        this.log("warn", `replica ${connection.id} sent an unexpected frame type 0x${frame.type.toString(16)}; ignored`, connection.id);
        return;
      default: {
        const unreachable: never = frame;
        throw new Error(`unhandled frame ${String(unreachable)}`);
      }
    }
  }

  // ---------------------------------------------------------------------------------
  // Connections coming and going
  // ---------------------------------------------------------------------------------

  private onReady(connection: ReplicaConnection): void {
    const id = connection.id;
    if (this.everReady.has(id)) this.log("info", `replica ${id} (${connection.address}) is back`, id);
    this.everReady.add(id);
    // In creation order, which is number order within each space.
    this.requests.onReady(connection);
    this.queries.onReady(connection);
    this.subscriptions.onReady(id);
    for (const wake of this.readyWaiters.splice(0)) wake();
  }

  /** Replicas that are not up and whose last attempt met a definite "no": nothing listens, or no such host. */
  private refusedReplicas(): number {
    return this.group.connections.filter(
      (connection) =>
        !connection.isReady &&
        // A multi-homed replica that refused at one address may still answer at the next.
        !connection.tryingNextAddress &&
        connection.lastError instanceof ReplicaUnreachableError &&
        DEFINITE_REFUSALS.has(connection.lastError.detail),
    ).length;
  }

  private onDown(connection: ReplicaConnection, error: ClientError): void {
    const id = connection.id;
    // waitForSessions looks again: this may have been the refusal that leaves no quorum.
    for (const wake of this.readyWaiters.splice(0)) wake();
    // Report the first failure after being up (or the first ever), not every retry; a
    // multi-homed replica's every move to another address.
    if (connection.consecutiveFailures === 1) {
      this.log("warn", error.message, id);
      // A member that went away may have been removed: read the group again soon.
      this.refreshMembershipSoon();
    } else if (connection.multiHomed && connection.consecutiveFailures === 0)
      this.log("warn", `${error.message}; dialling ${connection.address} next`, id);
    this.requests.onDown(id);
    this.queries.onDown(id);
    this.subscriptions.onDown(id);
  }

  // ---------------------------------------------------------------------------------
  // Following the group (membership-follow.ts)
  // ---------------------------------------------------------------------------------

  /**
   * A replica says its group entered `epoch`: if that is newer than the epoch followed,
   * the group is read soon (at most one read per MEMBERSHIP_REFRESH_MIN_MS, however many
   * notices come). The notice changes nothing itself: a group is taken only from f+1
   * matching `members` answers (membership-follow.ts).
   */
  private onEpochNotice(replica: number, epoch: number): void {
    if (!noticeAsksRead(epoch, this.follow.epoch, this.group.has(replica))) return;
    this.follow.notices++;
    this.refreshMembershipSoon();
  }

  private refreshMembershipSoon(): void {
    this.follow.dueAt = Math.min(this.follow.dueAt, this.follow.lastAt + MEMBERSHIP_REFRESH_MIN_MS);
  }

  /**
   * Reads the group (f+1 matching answers of the members trusted now) and moves to it if
   * it is newer. Never rejects: a read that fails is counted and logged, and the next one
   * comes at the next interval.
   */
  async refreshMembership(): Promise<void> {
    if (this.follow.inFlight || this.closed) return;
    this.follow.inFlight = true;
    this.follow.lastAt = this.options.now();
    this.follow.dueAt = this.follow.lastAt + this.options.timeouts.membershipRefreshMs;
    try {
      const floor = this.floor.value;
      const body: Query = floor > 0 ? { id: 0, q: "members", after: floor } : { id: 0, q: "members" };
      const trusted = new Set(this.group.connections.map((connection) => connection.id));
      const agreed = await this.queries.run(body, membershipRule(this.group.f, trusted));
      this.follow.failedReads = 0;
      this.takeGroup(agreed);
    } catch (error) {
      if (this.closed) return;
      this.follow.failedReads++;
      // Once per run of failures, not every retry: at info for the first (a one-shot command
      // whose replicas are still coming up), as a warning once the next read failed too.
      if (this.follow.failedReads <= 2)
        this.log(this.follow.failedReads === 1 ? "info" : "warn", `could not read the replica group: ${(error as Error).message}`);
    } finally {
      this.follow.inFlight = false;
    }
  }

  private takeGroup({ group, dissent }: AgreedGroup): void {
    let newerClaimed = false;
    for (const [replica, epoch] of dissent) {
      if (epoch === null || epoch <= group.epoch) continue;
      // One replica (or f) naming a newer group moves nothing. A new claim is logged and the
      // group read again soon (the others may be about to switch); the same claim again is
      // only counted, so a lying replica cannot make every client read once a second and log
      // at every read.
      this.follow.refused++;
      if (this.follow.claims.get(replica) === epoch) continue;
      this.follow.claims.set(replica, epoch);
      newerClaimed = true;
      this.log(
        "warn",
        `replica ${replica} named epoch ${epoch}, but ${vouchQuorum(this.group.f)} replicas agree on epoch ${group.epoch}; not taken`,
        replica,
      );
    }
    for (const replica of this.follow.claims.keys())
      if (!this.group.connections.some((c) => c.id === replica)) this.follow.claims.delete(replica);
    if (newerClaimed) this.refreshMembershipSoon();
    const current = { epoch: this.follow.epoch, ids: this.group.connections.map((connection) => connection.id) };
    if (!isNewer(group, current, sameAsFile(group, this.config), this.config.epoch)) {
      if (this.follow.epoch === null && group.epoch >= this.config.epoch) this.follow.epoch = group.epoch;
      // An older group f+1 replicas still list (some behind, one faulty) is not the one followed.
      if (this.follow.epoch === group.epoch) this.follow.group = group;
      this.warnIfFileStale();
      return;
    }
    const problem = groupProblem(group);
    if (problem !== null) {
      this.follow.refused++;
      this.log("warn", `the replicas agree on epoch ${group.epoch}, but the client cannot vote with it (${problem}); not taken`);
      return;
    }
    const change = this.group.apply(
      group.epoch,
      group.f,
      group.members.map((member) => {
        // A member the file lists with the same key is dialled where the file says (the
        // client may reach it by another name than the replicas' file gives, and a
        // multi-homed one keeps its further addresses); others at the group's address.
        const entry = fileEntryOf(this.config, member);
        if (entry !== undefined) return { id: member.id, host: entry.host, hosts: entry.hosts, port: entry.port, publicKey: member.key };
        return { id: member.id, host: member.host, hosts: [], port: member.port, publicKey: member.key };
      }),
    );
    this.follow.epoch = group.epoch;
    this.follow.group = group;
    this.follow.changes++;
    for (const id of [...change.removed, ...change.replaced]) {
      this.everReady.delete(id);
      this.requests.onLeft(id);
      this.queries.onLeft(id);
      this.subscriptions.onDown(id);
    }
    this.subscriptions.onGroupChange([...change.removed, ...change.replaced]);
    for (const wake of this.readyWaiters.splice(0)) wake();
    const listed = (ids: readonly number[]): string => (ids.length === 0 ? "none" : ids.join(", "));
    this.log(
      "info",
      `following the replica group of epoch ${group.epoch}: n=${group.members.length} f=${group.f}; added ${listed(change.added)}, removed ${listed(change.removed)}, reconnected ${listed(change.replaced)}`,
    );
    this.warnIfFileStale();
  }

  /**
   * The cluster file's f is the trust anchor of whoever starts from it: a new client (or a
   * joining replica) takes its first group from f_file+1 matching answers. Once the group
   * followed tolerates more (set-f raised it), f_file+1 of its up to f faulty replicas could
   * hand such a newcomer a made-up group. This client is safe (it followed each epoch with
   * f+1 of the group it trusted), but its file is not: warned once per epoch and counted.
   */
  private warnIfFileStale(): void {
    const epoch = this.follow.epoch;
    if (this.group.f <= this.config.f || epoch === null || this.follow.staleFileEpoch === epoch) return;
    this.follow.staleFileEpoch = epoch;
    this.follow.staleFileWarnings++;
    this.log(
      "warn",
      `the cluster file is stale: it says f=${this.config.f}, the replica group (epoch ${epoch}) tolerates f=${this.group.f}; a client or host started from this file trusts ${vouchQuorum(this.config.f)} matching ${vouchQuorum(this.config.f) === 1 ? "answer" : "answers"}, which faulty replicas of this group can give, so it is unsafe for new clients and hosts: distribute the file \`fitb cluster export\` writes`,
    );
  }

  // ---------------------------------------------------------------------------------
  // Timers
  // ---------------------------------------------------------------------------------

  /** Arms the retry timer for `atMs` unless it fires by then already. */
  private wakeAt(atMs: number): void {
    if (this.closed || atMs >= this.retryTimerAt) return;
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimerAt = atMs;
    this.retryTimer = setTimeout(
      () => {
        this.retryTimer = null;
        this.retryTimerAt = Number.POSITIVE_INFINITY;
        if (this.closed) return;
        const next = this.requests.retryDue(this.options.now());
        if (next !== Number.POSITIVE_INFINITY) this.wakeAt(next);
      },
      Math.max(0, atMs - this.options.now()),
    );
  }

  private tick(): void {
    const now = this.options.now();
    if (!this.follow.inFlight && now >= this.follow.dueAt) void this.refreshMembership();
    this.requests.tick(now);
    this.queries.tick(now);
    this.subscriptions.tick(now);
  }

  // ---------------------------------------------------------------------------------
  // Closing
  // ---------------------------------------------------------------------------------

  /** Closes every connection; pending calls reject with ClientClosedError, subscriptions end. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.tickTimer !== null) clearInterval(this.tickTimer);
    this.tickTimer = null;
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.channelWatch.stop();
    const error = new ClientClosedError();
    this.window.close(error);
    this.requests.failAll(error);
    this.queries.failAll(error);
    this.subscriptions.endAll();
    this.group.close();
    for (const wake of this.readyWaiters.splice(0)) wake();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private assertOpen(): void {
    if (this.closed) throw new ClientClosedError();
  }

  private log(level: "info" | "warn", message: string, replica?: number): void {
    this.options.log(replica === undefined ? { level, message } : { level, message, replica });
  }
}

/** How errors name an admin command: its kind and what it is about. */
function describeCmd(cmd: AdminCmd): string {
  switch (cmd.t) {
    case "set-quota":
      return `set-quota ${formatPublicKey(cmd.key)}`;
    case "add-replica":
    case "remove-replica":
    case "rotate-replica-key":
      return `${cmd.t} ${cmd.id}`;
    case "set-f":
      return `set-f ${cmd.f}`;
    default:
      return `${cmd.t} ${cmd.tag}`;
  }
}
