/**
 * FitbClient: the client side of fitb. It holds one authenticated connection per
 * replica and speaks to the group as a whole:
 *
 * - publish / admin: sign a request once, send it to every replica, and vote on the
 *   replies with the quorum the channel's CLASS needs (src/core/voting, DESIGN §3).
 *   Replicas that have not answered get the same signed bytes again after a timeout and
 *   whenever their session comes back; the request fails with TIMEOUT at its deadline.
 *   Sequence numbers are learned from the group once per space (seq.ts) and then
 *   counted locally; a REPLAY answer makes the client learn again and re-number.
 * - query: channel-info and list-channels from f+1 matching answers, client-seq by rank,
 *   status from each replica (queries.ts).
 * - subscribe: delivery voting, end-to-end signature checks and resume (subscription.ts).
 *
 * Everything is bounded: requests in flight (the window), callers waiting for the
 * window, each connection's send queue, subscriptions, each subscription's buffers.
 */
import type { Canonical } from "../../wire/canonical.ts";
import {
  encodeTypedFrame,
  type AdminCmd,
  type Events,
  type Frame,
  type Op,
  type Query,
  type QueryKind,
  type QueryReply,
  type Reply,
  type ReplyResult,
  type SubEnd,
  type SubOk,
} from "../../wire/schemas.ts";
import { FrameType, type ErrorCode } from "../../wire/types.ts";
import { ReplyVoter } from "../core/voting/reply-voter.ts";
import { byzantineQuorum, liveQuorum, replyKindOf, vouchQuorum, type ReplyKind } from "../core/voting/quorum.ts";
import type { ClusterConfig } from "../config/cluster.ts";
import { toHex } from "../crypto/encoding.ts";
import { ReplicaConnection, type ReplicaEndpoint } from "./connection.ts";
import {
  ClientClosedError,
  ClientError,
  NoQuorumError,
  QueueFullError,
  RequestRejectedError,
} from "./errors.ts";
import { resolveOptions, type ClientLimits, type ClientTimeouts, type FitbClientOptions, type ResolvedOptions } from "./options.ts";
import {
  channelInfoRule,
  eachRule,
  matchingRule,
  parseChannelList,
  parseClientSeq,
  parseStatus,
  rankRule,
  type ChannelInfo,
  type EachAnswer,
  type QueryRule,
  type ReplicaStatusAnswer,
} from "./queries.ts";
import { adminOp, buildRequest, checkEvents, checkTag, pubOp, requestFrame, spanOf, type BuiltRequest } from "./request.ts";
import { SeqCounter, spaceName } from "./seq.ts";
import { InflightWindow } from "./window.ts";
import { ClientSubscription, type BatchHandler, type SubscribeOptions, type Subscription, type SubscriptionHost } from "./subscription.ts";

/**
 * How long a client that already has the sessions it needs waits for the others before it
 * goes on (they keep connecting in the background).
 */
export const SESSION_GRACE_MS = 1_000;
/** The client's timers look at deadlines this often at most. */
const TICK_MS_MAX = 250;

/**
 * Refusals that say "not now" rather than "no": the replica is catching up, shedding
 * load, rate-limiting, or still waiting for an earlier request of ours. They are not
 * votes; the request goes to that replica again at the next resend.
 */
const TRANSIENT_REFUSALS: ReadonlySet<ErrorCode> = new Set(["OUT_OF_ORDER", "NOT_READY", "OVERLOADED", "RATE_LIMITED", "TIMEOUT"]);

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
  readonly tag: string;
  readonly replicas: readonly number[];
  /**
   * The decided seq at which the command executed (null from replicas that do not say).
   * This client waits for it on later calls by itself; another process can pass it on
   * (read-your-writes, PROTOCOL.md 6.3).
   */
  readonly at: number | null;
}

/** One replica's line in ClusterStatus. */
export interface ReplicaStatus {
  readonly id: number;
  readonly address: string;
  /** Whether the client holds a session with it right now. */
  readonly connected: boolean;
  /** Its own status answer, or why there is none. */
  readonly answer: EachAnswer<ReplicaStatusAnswer> | null;
}

/** What `status()` reports. */
export interface ClusterStatus {
  /** The view f+1 replicas agree on, or the one most replicas report if none has f+1; null if none answered. */
  readonly view: number | null;
  readonly leader: number | null;
  /** Whether `view` and `leader` are backed by f+1 matching answers. */
  readonly agreed: boolean;
  /** The (f+1)-th highest last decided seq: reached by at least one correct replica. */
  readonly lastDecided: number | null;
  readonly channels: number | null;
  readonly replicas: readonly ReplicaStatus[];
}

export type QueryResult =
  | { readonly kind: "status"; readonly value: ClusterStatus }
  | { readonly kind: "list-channels"; readonly value: readonly ChannelInfo[] }
  | { readonly kind: "channel-info"; readonly value: ChannelInfo }
  | { readonly kind: "client-seq"; readonly value: number };

/** A sequence space once learned: the channel's CLASS (publishes) and the counter. */
interface SeqSpace {
  readonly name: string;
  readonly tag: string | null;
  readonly kind: ReplyKind;
  readonly counter: SeqCounter;
  /** Set when a request timed out: its numbers may or may not have been used. */
  stale: boolean;
  relearning: Promise<void> | null;
}

type RequestOutcome =
  | { readonly ok: true; readonly res: ReplyResult; readonly replicas: readonly number[] }
  | { readonly ok: false; readonly error: ClientError };

interface PendingRequest {
  readonly built: BuiltRequest;
  /** The REQUEST frame as sent now: built.frame, or again with a higher `after`. */
  frame: Uint8Array;
  frameAfter: number;
  /**
   * Refusals judged on one replica's own state (they carry `at`): not votes until they
   * are fresh and enough replicas answered (localRefusal below).
   */
  readonly local: Map<number, { readonly code: ErrorCode; readonly reason: string; readonly at: number }>;
  /** Every `at` a replica reported for this request. */
  readonly ats: Map<number, number>;
  readonly what: string;
  readonly voter: ReplyVoter;
  /** Replicas that have the request on their current session. */
  readonly sentTo: Set<number>;
  /** One reason text per refusal code, for the error message. */
  readonly reasons: Map<string, string>;
  /** The last transient refusal per replica (not a vote). */
  readonly transient: Map<number, string>;
  lastSendAt: number;
  readonly deadline: number;
  readonly settle: (outcome: RequestOutcome) => void;
}

interface PendingQuery {
  readonly id: number;
  readonly body: Query;
  frame: Uint8Array;
  /** Every `at` a replica reported for this query. */
  readonly ats: Map<number, number>;
  readonly rule: QueryRule<unknown>;
  readonly sentTo: Set<number>;
  readonly answered: Set<number>;
  readonly deadline: number;
  readonly settle: (outcome: { ok: true; value: unknown } | { ok: false; error: ClientError }) => void;
}

interface SubRoute {
  readonly sub: ClientSubscription;
  readonly replica: number;
}

export class FitbClient {
  readonly config: ClusterConfig;
  readonly n: number;
  readonly f: number;
  private readonly options: ResolvedOptions;
  private readonly connections: readonly ReplicaConnection[];
  private readonly window: InflightWindow;
  private readonly spaces = new Map<string, Promise<SeqSpace>>();
  private readonly requests = new Map<string, PendingRequest>();
  private readonly queries = new Map<number, PendingQuery>();
  private readonly subscriptions = new Set<ClientSubscription>();
  private readonly subRoutes = new Map<number, SubRoute>();
  private readonly everReady = new Set<number>();
  private readonly readyWaiters: (() => void)[] = [];
  private readonly subscriptionHost: SubscriptionHost;
  private tickTimer: ReturnType<typeof setInterval> | null = null;
  private queryCounter = 0;
  private subCounter = 0;
  private closed = false;
  /**
   * A decided seq this client knows some correct replica has executed: from its own admin
   * commands, and the (f+1)-th highest `at` of any answer. Sent as `after` so that a
   * replica behind it waits instead of answering from older state.
   */
  private floor = 0;

  constructor(options: FitbClientOptions) {
    this.options = resolveOptions(options);
    this.config = options.config;
    this.n = options.config.n;
    this.f = options.config.f;
    const { limits, timeouts } = this.options;
    this.window = new InflightWindow(limits.inflightRequestsMax, limits.waitersMax);
    this.subscriptionHost = this.makeSubscriptionHost();
    this.connections = options.config.replicas.map((replica) => {
      const endpoint: ReplicaEndpoint = { id: replica.id, host: replica.host, port: replica.port, publicKey: replica.publicKey };
      return new ReplicaConnection(
        endpoint,
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
          backoff: this.options.backoff,
          random: this.options.random,
          now: this.options.now,
        },
      );
    });
  }

  /**
   * Connects to every replica and resolves once n-f sessions are up, or, at the connect
   * timeout, if at least f+1 are. Otherwise rejects with NoQuorumError naming why each
   * replica is missing. Replicas not yet up keep being dialled in the background.
   */
  static async connect(options: FitbClientOptions): Promise<FitbClient> {
    const client = new FitbClient(options);
    client.start();
    try {
      await client.waitForSessions(liveQuorum(client.n, client.f), vouchQuorum(client.f), client.options.timeouts.connectMs);
    } catch (error) {
      client.close();
      throw error;
    }
    return client;
  }

  /** Starts the connections and timers (connect() does this). */
  start(): void {
    if (this.tickTimer !== null || this.closed) return;
    const tickMs = Math.max(1, Math.min(TICK_MS_MAX, Math.floor(this.options.timeouts.resendMs / 2)));
    this.tickTimer = setInterval(() => this.tick(), tickMs);
    for (const connection of this.connections) connection.start();
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
    return this.floor;
  }

  /**
   * Raises the floor to a decided seq the caller learned elsewhere (e.g. printed by
   * `fitb admin` in another process): later calls wait for replicas to reach it.
   */
  observeExecuted(seq: number): void {
    if (Number.isSafeInteger(seq) && seq > this.floor) this.floor = seq;
  }

  /** The (f+1)-th highest of several replicas' `at`: reached by at least one correct replica. */
  private observeAts(ats: ReadonlyMap<number, number>): void {
    if (ats.size < vouchQuorum(this.f)) return;
    const sorted = [...ats.values()].sort((a, b) => b - a);
    this.observeExecuted(sorted[this.f] as number);
  }

  /** Ids of the replicas with a session up now. */
  readyReplicas(): number[] {
    return this.connections.filter((connection) => connection.isReady).map((connection) => connection.id);
  }

  /** Each replica's connection state and last error, for diagnostics. */
  replicaStates(): { id: number; address: string; state: string; lastError: string | null }[] {
    return this.connections.map((connection) => ({
      id: connection.id,
      address: connection.address,
      state: connection.state,
      lastError: connection.lastError?.message ?? null,
    }));
  }

  /** Requests in flight now. */
  get inflightRequests(): number {
    return this.requests.size;
  }

  /**
   * Resolves once `wanted` sessions are up; at `timeoutMs` resolves if at least `needed`
   * are, else rejects with NoQuorumError.
   */
  async waitForSessions(wanted: number, needed: number, timeoutMs: number): Promise<void> {
    let deadline = this.options.now() + timeoutMs;
    let graceStarted = false;
    while (this.readyReplicas().length < wanted) {
      if (this.closed) throw new ClientClosedError();
      // Once enough are ready, the rest get a short grace, not the whole timeout: with
      // replicas down, a publish should not first wait out --connect-timeout.
      if (!graceStarted && this.readyReplicas().length >= needed) {
        graceStarted = true;
        deadline = Math.min(deadline, this.options.now() + SESSION_GRACE_MS);
      }
      const left = deadline - this.options.now();
      if (left <= 0) break;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.readyWaiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    const ready = this.readyReplicas().length;
    if (ready >= needed) return;
    throw new NoQuorumError(
      `no quorum: ${ready} of ${this.n} replicas reachable within ${timeoutMs} ms, ${needed} needed (${this.describeReplicas(new Set())})`,
    );
  }

  // ---------------------------------------------------------------------------------
  // Publish and admin
  // ---------------------------------------------------------------------------------

  /**
   * Publishes the events as one signed request to `tag` and resolves when the CLASS's
   * quorum acknowledged it. Rejects with InvalidInputError (before sending),
   * RequestRejectedError (a quorum refused), NoQuorumError (TIMEOUT) or QueueFullError.
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
    checkTag(cmd.tag);
    const result = await this.submitWithRetries(null, adminOp(cmd), () => `${cmd.t} ${cmd.tag}`);
    if (result.res.t !== "admin" || result.res.cmd !== cmd.t) {
      throw new ClientError("INTERNAL", `${cmd.t} ${cmd.tag}: the replicas acknowledged a different command`);
    }
    const at = result.res.at ?? null;
    if (at !== null) this.observeExecuted(at);
    return { cmd: cmd.t, tag: cmd.tag, replicas: result.replicas, at };
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
      const space = await this.space(tag);
      if (space.stale) await this.relearn(space, space.counter.epoch);
      const epoch = space.counter.epoch;
      const { outcome, seq } = await this.submit(space, op, describe());
      if (outcome.ok) return { res: outcome.res, replicas: outcome.replicas, pubSeq: seq };
      const code = outcome.error.code;
      if (code === "REPLAY" && attempt < this.options.limits.replayRetriesMax) {
        await this.relearn(space, epoch);
        continue;
      }
      if (code === "TIMEOUT") space.stale = true;
      if (tag !== null && CHANNEL_STALE_REFUSALS.has(code)) this.spaces.delete(spaceName(tag));
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
      const built = buildRequest(this.options.key, { seq, ts: this.options.now(), op, after: this.floor }, this.config.limits.frameBytesMax);
      const outcome = await this.track(built, space.kind, `${what} (seq ${seq})`);
      return { outcome, seq };
    } finally {
      this.window.release();
    }
  }

  private track(built: BuiltRequest, kind: ReplyKind, what: string): Promise<RequestOutcome> {
    return new Promise<RequestOutcome>((resolve) => {
      const now = this.options.now();
      const pending: PendingRequest = {
        built,
        frame: built.frame,
        frameAfter: this.floor,
        local: new Map(),
        ats: new Map(),
        what,
        voter: new ReplyVoter({ n: this.n, f: this.f, kind }),
        sentTo: new Set(),
        reasons: new Map(),
        transient: new Map(),
        lastSendAt: now,
        deadline: now + this.options.timeouts.requestMs,
        settle: (outcome) => {
          this.requests.delete(built.digestHex);
          this.observeAts(pending.ats);
          resolve(outcome);
        },
      };
      this.requests.set(built.digestHex, pending);
      for (const connection of this.connections) this.sendRequest(pending, connection);
    });
  }

  private sendRequest(pending: PendingRequest, connection: ReplicaConnection): void {
    if (pending.sentTo.has(connection.id)) return;
    if (connection.sendEncoded(pending.frame)) pending.sentTo.add(connection.id);
  }

  // ---------------------------------------------------------------------------------
  // Sequence spaces
  // ---------------------------------------------------------------------------------

  /** The learned space of `tag` (null: admin), learning it (CLASS and last seq) on first use. */
  private space(tag: string | null): Promise<SeqSpace> {
    const name = spaceName(tag);
    const known = this.spaces.get(name);
    if (known !== undefined) return known;
    const learning = this.learnSpace(tag, name);
    this.spaces.set(name, learning);
    // A failed learn is forgotten, so the next call asks again instead of failing forever.
    learning.catch(() => {
      if (this.spaces.get(name) === learning) this.spaces.delete(name);
    });
    return learning;
  }

  private async learnSpace(tag: string | null, name: string): Promise<SeqSpace> {
    const kind: ReplyKind = tag === null ? "admin" : replyKindOf(await this.channelInfo(tag));
    const last = await this.clientSeq(tag, isUnordered(kind));
    return { name, tag, kind, counter: new SeqCounter(last), stale: false, relearning: null };
  }

  /** Learns the space's last seq again, once per epoch however many requests ask. */
  private async relearn(space: SeqSpace, epochSeen: number): Promise<void> {
    if (space.counter.epoch !== epochSeen) return;
    if (space.relearning === null) {
      space.relearning = this.clientSeq(space.tag, isUnordered(space.kind))
        .then((last) => {
          space.counter.reset(last);
          space.stale = false;
        })
        .finally(() => {
          space.relearning = null;
        });
    }
    await space.relearning;
  }

  // ---------------------------------------------------------------------------------
  // Queries
  // ---------------------------------------------------------------------------------

  /** A channel's CLASS, from f+1 matching answers; RequestRejectedError(UNKNOWN_CHANNEL) if f+1 say so. */
  channelInfo(tag: string): Promise<ChannelInfo> {
    checkTag(tag);
    const rule = channelInfoRule(this.n, this.f, `channel-info ${tag}`, this.floor, () => this.readyReplicas());
    const body: Query = this.floor > 0 ? { id: 0, q: "channel-info", tag, after: this.floor } : { id: 0, q: "channel-info", tag };
    return this.runQuery(body, rule);
  }

  /** Every channel, sorted by tag, from f+1 matching answers. */
  listChannels(): Promise<readonly ChannelInfo[]> {
    const rule = matchingRule(this.n, this.f, "list-channels", (res) => parseChannelList(res) as Canonical | null);
    return this.runQuery({ id: 0, q: "list-channels" }, rule) as Promise<unknown> as Promise<readonly ChannelInfo[]>;
  }

  /**
   * The last seq this key used in a space (tag, or null for admin): the (f+1)-th highest
   * answer, of the first 2f+1 or, with `everyReplica` (unordered spaces), of every replica
   * that answers before the deadline (queries.ts, rankRule).
   */
  clientSeq(tag: string | null, everyReplica = false): Promise<number> {
    const what = `client-seq ${tag ?? "admin"}`;
    const rule = rankRule(this.n, this.f, what, parseClientSeq, everyReplica);
    const body = (tag === null ? { id: 0, q: "client-seq" } : { id: 0, q: "client-seq", tag }) as Query;
    return this.runQuery(body, rule);
  }

  /** Every replica's status side by side, with the view and leader f+1 of them agree on. */
  async status(): Promise<ClusterStatus> {
    const answers = await this.runQuery({ id: 0, q: "status" }, eachRule(this.n, parseStatus));
    return summarizeStatus(this.f, answers, this.connections);
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
      default: {
        const unreachable: never = kind;
        throw new RangeError(`unknown query kind ${String(unreachable)}`);
      }
    }
  }

  private runQuery<T>(body: Query, rule: QueryRule<T>): Promise<T> {
    this.assertOpen();
    const id = ++this.queryCounter;
    const frame = encodeTypedFrame({ type: FrameType.QUERY, body: { ...body, id } as Query }, this.config.limits.frameBytesMax);
    return new Promise<T>((resolve, reject) => {
      const pending: PendingQuery = {
        id,
        body: { ...body, id } as Query,
        frame,
        ats: new Map(),
        rule: rule as QueryRule<unknown>,
        sentTo: new Set(),
        answered: new Set(),
        deadline: this.options.now() + this.options.timeouts.queryMs,
        settle: (outcome) => {
          this.queries.delete(id);
          this.observeAts(pending.ats);
          if (outcome.ok) resolve(outcome.value as T);
          else reject(outcome.error);
        },
      };
      this.queries.set(id, pending);
      for (const connection of this.connections) this.sendQuery(pending, connection);
    });
  }

  private sendQuery(pending: PendingQuery, connection: ReplicaConnection): void {
    if (pending.sentTo.has(connection.id) || pending.answered.has(connection.id)) return;
    if (connection.sendEncoded(pending.frame)) pending.sentTo.add(connection.id);
  }

  // ---------------------------------------------------------------------------------
  // Subscriptions
  // ---------------------------------------------------------------------------------

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
    const sub = new ClientSubscription(this.subscriptionHost, channel, options, onBatch, this.options.timeouts.queryMs);
    this.subscriptions.add(sub);
    await sub.begin();
    return sub;
  }

  /** The side of the client a subscription sees: sending, routing, the clock. */
  private makeSubscriptionHost(): SubscriptionHost {
    return {
    n: this.n,
    f: this.f,
    readyReplicas: () => this.readyReplicas(),
    executedFloor: () => this.floor,
    subscribeAt: (sub, replica, from, after) => {
      const connection = this.connections[replica];
      if (connection === undefined || !connection.isReady) return null;
      const subId = ++this.subCounter;
      const body: { sub: number; tag: string; from?: number; after?: number } = { sub: subId, tag: sub.tag };
      if (from !== undefined) body.from = from;
      if (after > 0) body.after = after;
      if (!connection.send({ type: FrameType.SUBSCRIBE, body })) return null;
      this.subRoutes.set(subId, { sub, replica });
      return subId;
    },
    unsubscribeAt: (replica, subId) => {
      this.subRoutes.delete(subId);
      this.connections[replica]?.send({ type: FrameType.UNSUBSCRIBE, body: { sub: subId } });
    },
    releaseSubId: (subId) => {
      this.subRoutes.delete(subId);
    },
    forget: (sub) => {
      this.subscriptions.delete(sub);
      for (const [subId, route] of this.subRoutes) if (route.sub === sub) this.subRoutes.delete(subId);
    },
    now: () => this.options.now(),
    };
  }

  // ---------------------------------------------------------------------------------
  // Frames from replicas: one handler per kind
  // ---------------------------------------------------------------------------------

  private onFrame(connection: ReplicaConnection, frame: Frame): void {
    switch (frame.type) {
      case FrameType.REPLY:
        this.onReply(connection.id, frame.body);
        return;
      case FrameType.QUERY_REPLY:
        this.onQueryReply(connection.id, frame.body);
        return;
      case FrameType.SUB_OK:
        this.onSubOk(connection.id, frame.body);
        return;
      case FrameType.EVENTS:
        this.onEvents(connection.id, frame.body);
        return;
      case FrameType.SUB_END:
        this.onSubEnd(connection.id, frame.body);
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

  private onReply(replica: number, body: Reply): void {
    const pending = this.requests.get(toHex(body.d));
    if (pending === undefined) return;
    if (body.seq !== pending.built.request.seq) {
      this.log("warn", `replica ${replica} answered ${pending.what} with seq ${body.seq}; ignored`, replica);
      return;
    }
    if (body.at !== undefined) pending.ats.set(replica, body.at);
    if (!body.ok && TRANSIENT_REFUSALS.has(body.code)) {
      pending.transient.set(replica, `${body.code} ${body.reason}`);
      pending.sentTo.delete(replica);
      return;
    }
    if (!body.ok && body.at !== undefined) {
      pending.local.set(replica, { code: body.code, reason: body.reason, at: body.at });
      this.judgeLocalRefusals(pending);
      return;
    }
    pending.local.delete(replica);
    if (!body.ok) pending.reasons.set(body.code, body.reason);
    const vote: Canonical = body.ok ? { ok: true, res: body.res as unknown as Canonical } : { ok: false, code: body.code };
    const added = pending.voter.add(replica, vote);
    for (const conflict of added.conflicts) {
      this.log("warn", `${pending.what}: replica ${"replica" in conflict ? conflict.replica : "?"} ${conflict.kind}`, replica);
    }
    this.settleIfDone(pending);
    if (this.requests.get(pending.built.digestHex) === pending && pending.local.size > 0) this.judgeLocalRefusals(pending);
  }

  /**
   * Refusals a replica judged on its own state (no such channel, key not registered) may
   * predate a decision another replica has executed: such an answer is never a vote
   * against the ordered history. One is stale when its `at` is below the freshest
   * decided seq known (this client's floor, or any replica's `at` for this request); a
   * stale replica is asked again with `after` = that seq and waits until it has executed
   * it. The fresh ones refuse the request once f+1 agree and at least 2f+1 replicas (or
   * every reachable one) have answered, so that a replica that did execute the decision
   * had its say.
   */
  private judgeLocalRefusals(pending: PendingRequest): void {
    let fresh = this.floor;
    for (const at of pending.ats.values()) fresh = Math.max(fresh, at);
    const counts = new Map<ErrorCode, number>();
    for (const [replica, refusal] of pending.local) {
      if (refusal.at < fresh) {
        pending.transient.set(replica, `${refusal.code} ${refusal.reason} (as of decided seq ${refusal.at}; asked again to wait for ${fresh})`);
        pending.sentTo.delete(replica);
        continue;
      }
      counts.set(refusal.code, (counts.get(refusal.code) ?? 0) + 1);
    }
    if (fresh > pending.frameAfter) {
      pending.frame = requestFrame(pending.built.body, pending.built.sig, fresh, this.config.limits.frameBytesMax);
      pending.frameAfter = fresh;
    }
    for (const replica of pending.local.keys()) {
      const connection = this.connections[replica];
      if (!pending.sentTo.has(replica) && connection !== undefined) this.sendRequest(pending, connection);
    }
    const answered = new Set([...pending.ats.keys(), ...pending.local.keys()]);
    for (const id of this.connections.map((c) => c.id)) if (!pending.voter.missing().includes(id)) answered.add(id);
    const everyReachable = this.readyReplicas().every((id) => answered.has(id));
    if (answered.size < byzantineQuorum(this.f) && !everyReachable) return;
    for (const [code, count] of counts) {
      if (count < vouchQuorum(this.f)) continue;
      const reason = [...pending.local.values()].find((refusal) => refusal.code === code)?.reason ?? code;
      pending.settle({ ok: false, error: new RequestRejectedError(code, reason) });
      return;
    }
  }

  private settleIfDone(pending: PendingRequest): void {
    const status = pending.voter.status();
    if (status.state === "pending") return;
    if (status.state === "decided") {
      const result = status.result as { ok: boolean; res?: ReplyResult; code?: ErrorCode };
      if (result.ok) pending.settle({ ok: true, res: result.res as ReplyResult, replicas: status.replicas });
      else pending.settle({ ok: false, error: this.refusal(result.code as ErrorCode, pending) });
      return;
    }
    pending.settle({ ok: false, error: this.disagreement(pending, status.groups) });
  }

  private refusal(code: ErrorCode, pending: PendingRequest): RequestRejectedError {
    return new RequestRejectedError(code, pending.reasons.get(code) ?? code);
  }

  /**
   * No result can reach its quorum: report the largest refusal that at least f+1 replicas
   * gave (so at least one correct replica stands behind it), or else the split. A refusal
   * from f replicas or fewer may be a lie, and what the client does next depends on the
   * code: REPLAY makes it publish the same events again under new numbers, so one lying
   * replica answering REPLAY could otherwise have events stored twice.
   */
  private disagreement(pending: PendingRequest, groups: readonly { result: Canonical; replicas: readonly number[] }[]): ClientError {
    let largestRefusal: { code: ErrorCode; count: number } | null = null;
    for (const group of groups) {
      const result = group.result as { ok: boolean; code?: ErrorCode };
      if (result.ok || group.replicas.length < vouchQuorum(this.f)) continue;
      if (largestRefusal === null || group.replicas.length > largestRefusal.count) {
        largestRefusal = { code: result.code as ErrorCode, count: group.replicas.length };
      }
    }
    if (largestRefusal !== null) return this.refusal(largestRefusal.code, pending);
    const answers = groups.map((group) => `${describeVote(group.result)} from ${group.replicas.length}`).join(", ");
    return new NoQuorumError(`no quorum for ${pending.what}: the replicas answered differently (${answers})`);
  }

  private onQueryReply(replica: number, body: QueryReply): void {
    const pending = this.queries.get(body.id);
    if (pending === undefined || pending.answered.has(replica)) return;
    pending.answered.add(replica);
    if (body.at !== undefined) pending.ats.set(replica, body.at);
    const outcome = pending.rule.add(replica, body);
    if (outcome !== null) pending.settle(outcome);
    else this.askStaleAgain(pending);
    if (this.queries.get(pending.id) === pending) this.settleIfReachableAnswered(pending);
  }

  /** Replicas whose answer predates what another replica executed are asked again, waiting for it. */
  private askStaleAgain(pending: PendingQuery): void {
    const stale = pending.rule.stale?.() ?? null;
    if (stale === null || stale.replicas.length === 0) return;
    const body = { ...pending.body, after: stale.after } as Query;
    pending.frame = encodeTypedFrame({ type: FrameType.QUERY, body }, this.config.limits.frameBytesMax);
    for (const replica of stale.replicas) {
      pending.answered.delete(replica);
      pending.sentTo.delete(replica);
      const connection = this.connections[replica];
      if (connection !== undefined) this.sendQuery(pending, connection);
    }
  }

  private settleIfReachableAnswered(pending: PendingQuery): void {
    if (pending.rule.settleWhenReachableAnswered !== true || pending.answered.size === 0) return;
    if (pending.rule.enoughToSettleEarly !== undefined && !pending.rule.enoughToSettleEarly()) return;
    if (!this.readyReplicas().every((id) => pending.answered.has(id))) return;
    pending.settle(pending.rule.atDeadline(() => this.describeReplicas(pending.answered)));
  }

  private route(replica: number, subId: number): SubRoute | null {
    const route = this.subRoutes.get(subId);
    return route !== undefined && route.replica === replica ? route : null;
  }

  private onSubOk(replica: number, body: SubOk): void {
    this.route(replica, body.sub)?.sub.onSubOk(replica, body.sub, body);
  }

  private onEvents(replica: number, body: Events): void {
    this.route(replica, body.sub)?.sub.onEvents(replica, body.sub, body);
  }

  private onSubEnd(replica: number, body: SubEnd): void {
    this.route(replica, body.sub)?.sub.onSubEnd(replica, body.sub, body);
  }

  // ---------------------------------------------------------------------------------
  // Connections coming and going
  // ---------------------------------------------------------------------------------

  private onReady(connection: ReplicaConnection): void {
    const id = connection.id;
    if (this.everReady.has(id)) this.log("info", `replica ${id} (${connection.address}) is back`, id);
    this.everReady.add(id);
    // In creation order, which is number order within each space.
    for (const pending of this.requests.values()) {
      if (pending.voter.missing().includes(id)) this.sendRequest(pending, connection);
    }
    for (const pending of this.queries.values()) this.sendQuery(pending, connection);
    for (const sub of this.subscriptions) sub.onReplicaReady(id);
    for (const wake of this.readyWaiters.splice(0)) wake();
  }

  private onDown(connection: ReplicaConnection, error: ClientError): void {
    const id = connection.id;
    // Report the first failure after being up (or the first ever), not every retry.
    if (connection.consecutiveFailures === 1) this.log("warn", error.message, id);
    for (const pending of this.requests.values()) pending.sentTo.delete(id);
    for (const pending of this.queries.values()) pending.sentTo.delete(id);
    for (const [subId, route] of this.subRoutes) if (route.replica === id) this.subRoutes.delete(subId);
    for (const sub of this.subscriptions) sub.onReplicaDown(id);
  }

  // ---------------------------------------------------------------------------------
  // Timers
  // ---------------------------------------------------------------------------------

  private tick(): void {
    const now = this.options.now();
    for (const pending of [...this.requests.values()]) this.tickRequest(pending, now);
    for (const pending of [...this.queries.values()]) {
      if (now >= pending.deadline) pending.settle(pending.rule.atDeadline(() => this.describeReplicas(pending.answered)));
      else this.settleIfReachableAnswered(pending);
    }
    for (const sub of [...this.subscriptions]) sub.tick(now);
  }

  private tickRequest(pending: PendingRequest, now: number): void {
    if (now >= pending.deadline) {
      const answered = new Set(this.connections.map((c) => c.id).filter((id) => !pending.voter.missing().includes(id)));
      const quorum = pending.voter.quorum;
      pending.settle({
        ok: false,
        error: new NoQuorumError(
          `no quorum for ${pending.what}: ${answered.size} of ${this.n} replicas answered within ${this.options.timeouts.requestMs} ms, ${quorum} matching needed (${this.describeReplicas(answered, pending.transient)})`,
        ),
      });
      return;
    }
    if (now - pending.lastSendAt < this.options.timeouts.resendMs) return;
    pending.lastSendAt = now;
    // The same signed bytes again, to every replica that has not answered.
    for (const id of pending.voter.missing()) {
      pending.sentTo.delete(id);
      const connection = this.connections[id];
      if (connection !== undefined) this.sendRequest(pending, connection);
    }
  }

  /** "replica 2 (127.0.0.1:7002): connection refused; replica 3: no answer" for those not in `answered`. */
  private describeReplicas(answered: ReadonlySet<number>, notes: ReadonlyMap<number, string> = new Map()): string {
    const parts: string[] = [];
    for (const connection of this.connections) {
      if (answered.has(connection.id)) continue;
      const note = notes.get(connection.id);
      const why = note ?? (connection.isReady ? "no answer" : (connection.lastError?.message.replace(/^replica \d+ \([^)]*\) /, "") ?? "not connected"));
      parts.push(`replica ${connection.id} (${connection.address}): ${why}`);
    }
    return parts.length === 0 ? "every replica answered" : parts.join("; ");
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
    const error = new ClientClosedError();
    this.window.close(error);
    for (const pending of [...this.requests.values()]) pending.settle({ ok: false, error });
    for (const pending of [...this.queries.values()]) pending.settle({ ok: false, error });
    for (const sub of [...this.subscriptions]) sub.end(null);
    for (const connection of this.connections) connection.close();
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

/** Folds every replica's status answer into one view of the cluster. */
export function summarizeStatus(
  f: number,
  answers: ReadonlyMap<number, EachAnswer<ReplicaStatusAnswer>>,
  connections: readonly { id: number; address: string; isReady: boolean }[],
): ClusterStatus {
  const good: ReplicaStatusAnswer[] = [];
  for (const answer of answers.values()) if (answer.ok) good.push(answer.value);
  const byViewLeader = new Map<string, { view: number; leader: number; count: number }>();
  for (const answer of good) {
    const key = `${answer.view}/${answer.leader}`;
    const entry = byViewLeader.get(key) ?? { view: answer.view, leader: answer.leader, count: 0 };
    entry.count++;
    byViewLeader.set(key, entry);
  }
  let best: { view: number; leader: number; count: number } | null = null;
  for (const entry of byViewLeader.values()) {
    if (best === null || entry.count > best.count || (entry.count === best.count && entry.view > best.view)) best = entry;
  }
  const rank = (values: number[]): number | null => {
    if (values.length === 0) return null;
    values.sort((a, b) => b - a);
    return values[Math.min(f, values.length - 1)] as number;
  };
  return {
    view: best?.view ?? null,
    leader: best?.leader ?? null,
    agreed: best !== null && best.count >= vouchQuorum(f),
    lastDecided: rank(good.map((answer) => answer.lastDecided)),
    channels: rank(good.map((answer) => answer.channels)),
    replicas: connections.map((connection) => ({
      id: connection.id,
      address: connection.address,
      connected: connection.isReady,
      answer: answers.get(connection.id) ?? null,
    })),
  };
}

/** One vote as a short phrase for an error message: "ok" or the refusal code. */
function describeVote(result: Canonical): string {
  const vote = result as { ok?: boolean; code?: string };
  return vote.ok === true ? "ok" : String(vote.code ?? "?");
}

/** Unordered spaces: no agreement keeps the replicas' numbers equal. */
function isUnordered(kind: ReplyKind): boolean {
  return kind === "crash/none" || kind === "byzantine/none";
}
