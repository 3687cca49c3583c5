/**
 * One fitb replica: the listener, the peer mesh, the ordering core and the channel state
 * machine, wired together (src/README.md §4).
 *
 * Paths per CLASS (src/README.md §3):
 * - unordered channels (crash/none, byzantine/none): a REQUEST is verified, stored by this
 *   replica and forwarded to its subscribers at once; no agreement. The client collects
 *   the acks it needs (f+1 or 2f+1 stored).
 * - total-order channels and every admin command: the verified request goes into the
 *   ordering core; once decided, every replica executes it at the same position, assigns
 *   the same channel sequence numbers and answers the client.
 */
import { FatalError, type FatalHandler, throwFatal } from "./fatal.ts";
import { assert } from "../../wire/assert.ts";
import { channelsConfigFrom, type ClusterConfig, newViewBytesBound, type ReplicaEntry, replicaById } from "../config/cluster.ts";
import { configDigests, executionConfigDigests } from "../config/digest.ts";
import { toHex } from "../crypto/encoding.ts";
import { sha256 } from "../crypto/hash.ts";
import { formatPublicKey, type SigningKey } from "../crypto/keys.ts";
import { ChannelMachine } from "../core/channels/machine.ts";
import type { ChannelError, ChannelInfo, KeyQuota, StoredBatch, TrimmedError } from "../core/channels/types.ts";
import type { ClientRequest } from "../core/ordering/messages.ts";
import type { Refusal } from "../core/ordering/types.ts";
import { type Canonical, tryDecodeCanonical } from "../../wire/canonical.ts";
import {
  type AdminCmd,
  decodeRequestBody,
  type Frame,
  type Query,
  type Reply,
  REQUEST_BODY_ITEMS_MAX,
  type Request,
  type RequestFrame,
  type SignedRequest,
} from "../../wire/schemas.ts";
import { clipUtf8, type ErrorCode, FrameType, SHARED_SUBSCRIPTIONS_VERSION } from "../../wire/types.ts";
import {
  ClientAdmission,
  OVER_BUDGET_PAUSE_MS,
  OVER_BUDGET_PAUSE_MS_MAX,
  QUERIES_PER_ADDRESS_BURST,
  QUERIES_PER_ADDRESS_PER_SECOND,
  QUERIES_PER_KEY_BURST,
  QUERIES_PER_KEY_PER_SECOND,
  REFUSAL_BYTES_PER_UNIT,
  REFUSALS_BURST,
  REFUSALS_PER_ADDRESS_FACTOR,
  REFUSALS_PER_SECOND,
} from "./admission.ts";
import { AuditLog } from "./audit.ts";
import { ExecutionGate } from "./execution-gate.ts";
import type { Log } from "./log.ts";
import { type ChannelCells, ChannelMetrics, METRICS_CHANNELS_MAX } from "./channel-metrics.ts";
import { Metrics } from "./metrics.ts";
import { coreConfigFor, EXIT_STATE_UNTRUSTED, type JoinEpoch, OrderingDriver } from "./ordering-driver.ts";
import { PeerFilter, peekPeerMessage, peekTransferPart, provesFaulty } from "./peer-filter.ts";
import { type AcceptedKey, PeerMesh, type PeerEntry } from "./peers.ts";
import { ClientLimits } from "./quota.ts";
import { RateLimiter } from "./rate.ts";
import {
  type Admission,
  admitUnverified,
  BAD_SIGNATURE,
  bodyDigestOf,
  clockSkewProblem,
  DecodedRequests,
  type Refused,
  spaceOf,
  stampOf,
  urgencyOfSpace,
} from "./requests.ts";
import { type Lane, VerifyPool } from "../threads/verify-pool.ts";
import { requestSignedParts } from "../../wire/session.ts";
import { type ClientSession, ReplicaServer, type ServerLimits } from "./server.ts";
import { DEFAULT_SYNC_POLICY, EXIT_STORAGE_FAILED, ReplicaStorage, type SyncPolicy } from "./storage/index.ts";
import { dropGoneUnordered, restoreKeptUnordered } from "./storage/recovery.ts";
import { epochLogFields, genesisMembership, membersAnswer } from "./epochs.ts";
import { startLagProbe, URGENT_DELAY_TARGET_MS_DEFAULT, UrgentShedder } from "./shedding.ts";
import { URGENT } from "../core/ordering/priority.ts";
import { Subscriptions } from "./subscriptions.ts";
import { isSysTag, SysChannels } from "./sys-channels.ts";
import { keyOf, WaitingRequests } from "./waiting.ts";

/** Envelope bytes a forwarded request may add to its signed body and signature (field names, client name). */
const FORWARD_REQUEST_OVERHEAD_BYTES = 512;
/** Ordered spaces whose last received seq is remembered (gapBefore); past it the oldest is forgotten. */
const ARRIVED_SPACES_MAX = 100_000;
/** How often answers held for execution (execution-gate.ts) are checked for their deadline. */
const GATE_CHECK_INTERVAL_MS = 100;
/** Bytes of a peer link's down reason in a status answer (a refused handshake's reason, as the peer sent it). */
const PEER_REASON_BYTES_MAX = 300;
/**
 * How often unordered channels are trimmed by age against this replica's clock. A publish
 * trims its own channel; this is for a channel nobody publishes to any more, which would
 * otherwise keep its events past `age_seconds_max` for ever.
 */
const UNORDERED_AGE_SWEEP_INTERVAL_MS = 1000;
/** How stale the set of keys the replicated state names may be when a full server asks (namesClient). */
const NAMED_KEYS_REFRESH_MS = 1000;

export interface ReplicaOptions {
  readonly config: ClusterConfig;
  readonly id: number;
  readonly key: SigningKey;
  readonly log: Log;
  /**
   * Where to listen (defaults to the config's host and port, which peers and clients still
   * use, and each of the config's further `hosts` at that port).
   */
  readonly listenHost?: string;
  readonly listenPort?: number;
  /** More addresses to listen on besides listenHost:listenPort (a repeated --listen). */
  readonly listenAlso?: readonly { readonly host: string; readonly port: number }[];
  /** The data directory (defaults to the config's data_dir for this replica). */
  readonly dataDir?: string;
  /** When commits are fsynced (default: before anything that depends on them is sent). */
  readonly sync?: SyncPolicy;
  /** What to do when the replica must stop (fatal.ts): `fitb replica` exits with the error's code. */
  readonly onFatal?: FatalHandler;
  /** Called once this replica stopped because a membership change removed it from the group (epochs.ts). */
  readonly onRemoved?: () => void;
  /** Threads verifying client signatures (src/threads/verify-pool.ts); 0 (the default here): on the event loop. */
  readonly threads?: number;
  /** The ordering core on a thread of its own (src/replica/ordering-host.ts); off (the default here): on the event loop. */
  readonly orderingThread?: boolean;
  /** Whether the runtime runs its top compiler tier (src/cli/jit.ts), for the start line; unset: not said. */
  readonly ftl?: boolean;
  /**
   * A replica the cluster file does not list, joining a running group (src/cli/join.ts): its
   * entry as the membership names it, and the epoch it starts in.
   */
  readonly joining?: { readonly self: ReplicaEntry; readonly epoch: JoinEpoch };
  /** The verification budgets and blacklist (admission.ts); tests give one with small budgets and their clock. */
  readonly admission?: ClientAdmission;
  /** The clock of the refusal and query allowances per key and address (ms, monotonic); performance.now by default, tests hold it still. */
  readonly allowanceNow?: () => number;
  /** Overrides of the client listener's limits (server.ts); tests give small ones. */
  readonly serverLimits?: Partial<ServerLimits>;
  /** Priority shedding's event loop lag target in ms (shedding.ts); 0 or absent (the default): off. */
  readonly urgentDelayTargetMs?: number;
}

export class Replica {
  readonly metrics = new Metrics();
  readonly machine: ChannelMachine;
  readonly channelMetrics: ChannelMetrics;
  private readonly mesh: PeerMesh;
  private readonly server: ReplicaServer;
  /** The listener of the peer_port, apart from the clients' (null: peers use the client port). */
  private readonly peerServer: ReplicaServer | null;
  private readonly subs: Subscriptions;
  private readonly ordering: OrderingDriver;
  private readonly storage: ReplicaStorage;
  private readonly adminKeys: Set<string>;
  /** This replica's entry: the cluster file's, or the membership's when it joined (options.joining). */
  private readonly self: ReplicaEntry;
  /** The client_keys allow-list (null: open) with the admin keys and the group's replica keys, rebuilt as the group changes (followClientKeys). */
  private readonly clientKeysAllowed: Set<string> | null;
  /** Ordered requests waiting for their decision, and the replies kept for retransmissions. */
  private readonly waiting = new WaitingRequests();
  /** Priority shedding of less urgent client publishes while urgent ones wait (null: off). */
  private readonly shedder: UrgentShedder | null;
  private stopLagProbe: (() => void) | null = null;
  private readonly startedMs = Date.now();
  private readonly limits: ClientLimits;
  /** Refusals judged on local state, held until this replica executed what the client saw. */
  private readonly gate = new ExecutionGate();
  private gateTimer: ReturnType<typeof setInterval> | null = null;
  private ageSweepTimer: ReturnType<typeof setInterval> | null = null;
  /** The decided seq this replica's channel state has executed through. */
  private executedSeq = 0;
  /** The peers that have `peer_up` and `peer_lag_seqs` series (refreshStateMetrics). */
  private peerSeries = new Set<string>();
  /** True while the constructor re-executes the decided log from disk: admin lines say "replayed". */
  private replaying = true;
  private readonly audit: AuditLog;
  /**
   * Per ordered space, the last seq (seq + span - 1) of the requests taken here for
   * ordering, the most recent spaces last (bounded): a request after it is behind a gap.
   */
  private readonly arrivedThrough = new Map<string, number>();
  /** How long a session over its budget is paused next (admission.ts), while it stays over. */
  private readonly overBudgetPauseMs = new WeakMap<ClientSession, number>();
  /** Refusals before verification per client key, before its sessions are paused. */
  private readonly refusals = new RateLimiter(REFUSALS_PER_SECOND, REFUSALS_BURST);
  /** The same per remote address, whatever the keys, at REFUSALS_PER_ADDRESS_FACTOR times the rate. */
  private readonly refusalsByAddress = new RateLimiter(
    REFUSALS_PER_SECOND * REFUSALS_PER_ADDRESS_FACTOR,
    REFUSALS_BURST * REFUSALS_PER_ADDRESS_FACTOR,
  );
  /** Queries answered per client key and per remote address (admission.ts, QUERIES_*). */
  private readonly queriesByKey = new RateLimiter(QUERIES_PER_KEY_PER_SECOND, QUERIES_PER_KEY_BURST);
  private readonly queriesByAddress = new RateLimiter(QUERIES_PER_ADDRESS_PER_SECOND, QUERIES_PER_ADDRESS_BURST);
  /** Verification budgets per client key and address, and the blacklist (admission.ts). */
  private readonly admission: ClientAdmission;
  /** `$sys.replica.<id>` and `$sys.events` (sys-channels.ts). */
  private readonly sys: SysChannels;
  /** Client signatures are verified here, on threads unless `threads` is 0. */
  private readonly verifier: VerifyPool;
  /** Each client session's line of signature checks: its requests go on in the order it sent them. */
  private readonly lanes = new WeakMap<ClientSession, Lane>();
  /** Requests decoded at admission, for their execution (requests.ts). */
  private readonly decoded = new DecodedRequests();

  constructor(private readonly options: ReplicaOptions) {
    const { config, id, key, log } = options;
    this.admission = options.admission ?? new ClientAdmission();
    const self = options.joining?.self ?? replicaById(config, id);
    if (self === undefined) {
      throw new RangeError(`replica id ${id} is not in the config (ids ${config.replicas.map((replica) => replica.id).join(", ")})`);
    }
    this.self = self;
    this.adminKeys = new Set(config.adminKeys.map(toHex));
    // A joining replica asks the group with its own key (src/cli/join.ts): members' keys may open a session.
    this.clientKeysAllowed =
      config.clientKeys.length === 0
        ? null
        : new Set([...config.clientKeys, ...config.adminKeys, ...config.replicas.map((r) => r.publicKey)].map(toHex));
    this.audit = new AuditLog(log);
    this.sys = new SysChannels({
      self: id,
      key,
      members: () => this.machine.membership()?.members ?? config.replicas.map((replica) => ({ id: replica.id, key: replica.publicKey })),
      health: () => this.health(),
    });
    this.machine = new ChannelMachine({
      hash: sha256,
      config: channelsConfigFrom(config.limits, config.retention),
      // Replicas and keys the file does not name are admitted (the mesh follows the group, a new replica joins: src/cli/join.ts), and f above the file's (clients and their subscriptions vote with the group they follow).
      membership: {
        genesis: genesisMembership(config),
        checkpointInterval: coreConfigFor(config, id).checkpointInterval,
        admitsNewReplicas: true,
        // set-f is held to the NEW_VIEW bound the config check holds the file's f to.
        viewChange: { frameBytesMax: config.limits.frameBytesMax, newViewBytes: newViewBytesBound },
      },
    });
    this.channelMetrics = new ChannelMetrics(this.metrics.registry, this.machine, METRICS_CHANNELS_MAX, this.metrics);
    const defaults = { eventsPerSecond: config.limits.clientEventsPerSecondMax, burstEvents: config.limits.clientBurstEventsMax };
    this.limits = new ClientLimits(defaults, (keyHex) => this.machine.quotaOf(keyHex));
    const targetMs = options.urgentDelayTargetMs ?? URGENT_DELAY_TARGET_MS_DEFAULT;
    this.shedder = targetMs === 0 ? null : new UrgentShedder({ targetMs });
    this.subs = new Subscriptions(
      id,
      this.machine,
      this.metrics,
      config.limits.connectionSubscriptionsMax,
      {
        executedSeq: () => this.executedSeq,
        hold: (session, after, retry) => this.holdUntilExecuted(session, after, retry),
      },
      this.channelMetrics,
      this.audit,
      (keyHex) => this.limits.subscriptionsOf(keyHex),
    );
    const core = coreConfigFor(config, id);
    const peerFilter = new PeerFilter({
      lastExecuted: () => this.ordering.status().lastExecuted,
      lastExecutedOf: (space) => this.ordering.lastExecutedSeq(space),
      // The core cuts its forwards into chunks of one batch (or one larger request); each
      // request adds its CBOR field names and client name to the envelope.
      forwardBytesMax: Math.max(core.batchBytesMax, core.requestBytesMax) + core.batchRequestsMax * FORWARD_REQUEST_OVERHEAD_BYTES,
      rankOf: (peer, epoch) => (epoch === this.ordering.epoch.epoch ? this.ordering.epoch.rankOf(peer) : -1),
    });
    this.mesh = new PeerMesh({
      self: id,
      key,
      replicas: config.replicas,
      frameBytesMax: config.limits.frameBytesMax,
      log,
      metrics: this.metrics,
      audit: this.audit,
      onPeerUp: (peer) => this.sys.event("peer-up", { peer }),
      onPeerDown: (peer, reason) => this.sys.event("peer-down", { peer, reason }),
      onMessage: (from, msg, key) => this.ordering.onPeerMessage(from, msg, key),
      configDigests: configDigests(config),
      firstGroupInUse: () => this.machine.membership()?.epoch === 0 && this.machine.pendingMembership() === null,
      precheck: (from, msg) => peerFilter.check(from, msg, peekPeerMessage(msg)),
      // A state transfer part that answers this replica's own ask (the source, seq and nonce
      // of the fetch under way), a window at a time, is spared the byte budget; every other
      // message, any other state transfer message included, is charged.
      chargesBytes: (from, msg) => {
        const part = peekTransferPart(msg);
        return part === null || !this.ordering.awaitsTransferPart(from, part.seq, part.nonce);
      },
      proves: provesFaulty,
      // f+1 of the epoch: one of them, at least, is correct (not before the driver exists).
      retiredQuorum: () => ((this.ordering as OrderingDriver | undefined)?.epoch.f ?? Number.POSITIVE_INFINITY) + 1,
    });

    // Opening the store checks every row; the driver then restores the machine and the
    // core from it before the replica listens.
    this.storage = ReplicaStorage.open({
      dir: options.dataDir ?? self.dataDir,
      sync: options.sync ?? DEFAULT_SYNC_POLICY,
      cluster: config.name,
      replica: id,
      executionConfig: executionConfigDigests(config),
      log,
      metrics: this.metrics,
      onFatal: options.onFatal,
    });
    this.ordering = new OrderingDriver({
      onFatal: options.onFatal,
      config,
      id,
      key,
      log,
      metrics: this.metrics,
      mesh: this.mesh,
      onDecided: (requests, decidedSeq) => this.executeDecided(requests, decidedSeq),
      onResendReply: (space, seq) => this.resendReply(space, seq),
      onRefused: (space, seq, reason) => this.refuseWaiting(space, seq, reason),
      restoreKept: (fresh, seq) => this.restoreKept(fresh, seq),
      onSnapshotInstalled: (seq) => {
        this.subs.stateReplaced();
        this.executed(seq);
        this.followMembership();
        this.noticeEpoch();
      },
      onEpochStarted: (view) => {
        this.followMembership();
        this.noticeEpoch();
        // A membership change taking effect, for $sys.events (f+1 matching reports deliver it).
        this.sys.event("epoch-started", {
          epoch: view.epoch,
          n: view.n,
          f: view.f,
          members: view.members.map((member) => member.id).join(" "),
        });
      },
      ...(options.joining === undefined ? {} : { join: options.joining.epoch }),
      machine: this.machine,
      storage: this.storage,
      orderingThread: options.orderingThread === true,
      audit: this.audit,
      onGroupEvent: (kind, fields) => this.sys.event(kind, fields),
      onPeerFlooding: (peer) => this.mesh.muteFlooding(peer),
      onPeerFaulty: (peer, reason) => this.mesh.muteMisbehaving(peer, reason),
      onRemoved: () => {
        // Removed from the group: it serves no client any more. Stopped after this turn's
        // commit, which carries the epoch switch.
        setTimeout(() => {
          this.stop();
          this.options.onRemoved?.();
        }, 0);
      },
    });
    this.replaying = false;
    this.followMembership();
    const peerPort = self.peerPort;
    this.server = new ReplicaServer({
      self: id,
      accepts: peerPort === null ? "both" : "clients",
      ...(peerPort === null ? {} : { otherPort: peerPort }),
      host: options.listenHost ?? self.host,
      port: options.listenPort ?? self.port,
      // A multi-homed replica listens on each of its addresses, unless told where to listen.
      alsoListen:
        options.listenHost === undefined && options.listenPort === undefined
          ? self.hosts.map((host) => ({ host, port: self.port }))
          : (options.listenAlso ?? []),
      key,
      frameBytesMax: config.limits.frameBytesMax,
      mesh: this.mesh,
      // client_keys, when the cluster file lists any, is the allow-list of client sessions.
      clientKeysAllowed: this.clientKeysAllowed,
      knownClient: (keyHex) => this.namesClient(keyHex),
      admission: this.admission,
      ...(options.serverLimits === undefined ? {} : { limits: options.serverLimits }),
      clients: {
        onClientFrame: (session, frame) => this.onClientFrame(session, frame),
        onClientClosed: (session) => this.onClientClosed(session),
      },
      log,
      metrics: this.metrics,
      audit: this.audit,
    });
    // Client sessions hear of the epochs after this one (noticeEpoch).
    this.noticedEpoch = this.ordering.epoch.epoch;
    this.peerServer =
      peerPort === null
        ? null
        : new ReplicaServer({
            self: id,
            accepts: "peers",
            otherPort: self.port,
            host: options.listenHost ?? self.host,
            port: peerPort,
            // A multi-homed replica takes its peers on each of its addresses too.
            alsoListen:
              options.listenHost === undefined && options.listenPort === undefined
                ? self.hosts.map((host) => ({ host, port: peerPort }))
                : (options.listenAlso ?? []).map((listen) => ({ host: listen.host, port: peerPort })),
            key,
            frameBytesMax: config.limits.frameBytesMax,
            mesh: this.mesh,
            clientKeysAllowed: null,
            clients: {
              onClientFrame: () => {
                throw new Error("replica: a client session on the peer port");
              },
              onClientClosed: () => {},
            },
            log,
            metrics: this.metrics,
            audit: this.audit,
          });
    // The threads start last: a constructor that threw before leaves none running.
    this.verifier = new VerifyPool({
      threads: options.threads ?? 0,
      onFailure: (reason) => {
        log.error("a verification thread failed; stopping", { reason });
        (options.onFatal ?? throwFatal)(new FatalError(EXIT_STATE_UNTRUSTED, reason));
      },
      onReady: () => log.info("verification threads ready", { threads: options.threads ?? 0 }),
      onCallbackError: (error) => log.error("handling a verified request failed", { error: (error as Error).message }),
    });
  }

  start(): void {
    const shedder = this.shedder;
    if (shedder !== null) this.stopLagProbe = startLagProbe((nowMs, lagMs) => shedder.observeLag(nowMs, lagMs));
    this.metrics.gauge("priority_low_admitted_percent", () => Math.round((shedder?.share("low", performance.now()) ?? 1) * 100));
    this.metrics.gauge("priority_normal_admitted_percent", () => Math.round((shedder?.share("normal", performance.now()) ?? 1) * 100));
    this.metrics.gauge("view", () => this.ordering.status().view);
    this.metrics.gauge("epoch", () => this.ordering.epoch.epoch);
    this.metrics.gauge("membership_change_pending", () => (this.machine.pendingMembership() === null ? 0 : 1));
    this.metrics.gauge("leader", () => this.ordering.status().leader);
    this.metrics.gauge("is_leader", () => (this.ordering.status().leader === this.options.id ? 1 : 0));
    this.metrics.gauge("last_decided_seq", () => this.ordering.status().lastExecuted);
    this.metrics.gauge("stable_checkpoint_seq", () => this.ordering.status().stableCheckpoint);
    this.metrics.registry.onScrape(() => this.refreshStateMetrics());
    this.metrics.gauge("subscriptions", () => this.subs.count);
    this.metrics.gauge("subscriptions_replaying", () => this.subs.replaying);
    this.metrics.gauge("subscriptions_replay_waiting", () => this.subs.replayWaiting);
    this.metrics.gauge("sys_subscriptions", () => this.sys.count);
    this.metrics.gauge("channels", () => this.machine.channelCount);
    this.metrics.gauge("answers_held_for_execution", () => this.gate.size);
    this.gateTimer = setInterval(() => {
      this.gate.expire(Date.now());
      this.audit.flush();
    }, GATE_CHECK_INTERVAL_MS);
    this.ageSweepTimer = setInterval(() => {
      this.storage.checkInPlace();
      this.sweepUnorderedByAge(Date.now());
    }, UNORDERED_AGE_SWEEP_INTERVAL_MS);
    this.server.listen();
    this.peerServer?.listen();
    this.mesh.start();
    this.ordering.start();
    this.sys.start();
    const self = this.self;
    // The group this replica runs in (its epoch's), not the cluster file's: they differ once the group changed.
    const group = this.ordering.epoch;
    this.options.log.info("replica started", {
      address: `${self?.host}:${self?.port}`,
      ...(self?.peerPort === null || self === undefined ? {} : { peerAddress: `${self.host}:${self.peerPort}` }),
      epoch: group.epoch,
      n: group.members.length,
      f: group.f,
      verifyThreads: this.verifier.threadCount,
      orderingThread: this.options.orderingThread === true,
      urgentDelayTargetMs: this.shedder?.targetMs ?? 0,
      ...(this.options.ftl === undefined ? {} : { ftl: this.options.ftl }),
    });
  }

  /**
   * Trims unordered channels by age at `nowMs` (this replica's own store: no other replica
   * needs to agree), deleting their rows and keeping their publishers' floors. Returns the
   * batches removed.
   */
  sweepUnorderedByAge(nowMs: number): number {
    let removed = 0;
    for (const report of this.machine.trimUnorderedByAge(nowMs)) {
      const generation = this.machine.channelInfo(report.tag)?.generation ?? 0;
      this.storage.trimUnordered(report.tag, generation, report.batchesRemoved, report.floors);
      removed += report.batchesRemoved;
    }
    return removed;
  }

  /** Mode and per-peer gauges, read from the ordering driver and the mesh at each scrape. */
  private refreshStateMetrics(): void {
    const core = this.ordering.status();
    this.metrics.setMode(core.transferring !== null ? "stateTransfer" : core.status === "viewChange" ? "viewChange" : "normal");
    const current = new Set<string>();
    for (const peer of this.mesh.status()) {
      const label = String(peer.id);
      current.add(label);
      this.metrics.peerUp.with(label).set(peer.up ? 1 : 0);
      this.metrics.peerLag.with(label).set(this.ordering.peerLag(peer.id));
    }
    // A peer the group removed has no link any more: its series go, not stay at their last value.
    for (const label of this.peerSeries) {
      if (current.has(label)) continue;
      this.metrics.peerUp.remove(label);
      this.metrics.peerLag.remove(label);
    }
    this.peerSeries = current;
  }

  stop(): void {
    this.stopLagProbe?.();
    if (this.gateTimer !== null) clearInterval(this.gateTimer);
    this.gateTimer = null;
    if (this.ageSweepTimer !== null) clearInterval(this.ageSweepTimer);
    this.ageSweepTimer = null;
    this.sys.stop();
    this.subs.shutdown();
    this.verifier.stop();
    this.ordering.stop();
    this.mesh.stop();
    this.server.stop();
    this.peerServer?.stop();
    this.storage.close();
    this.options.log.info("replica stopped");
  }

  // ---------------------------------------------------------------------------------
  // Client frames
  // ---------------------------------------------------------------------------------

  private onClientFrame(session: ClientSession, frame: Frame): void {
    switch (frame.type) {
      case FrameType.REQUEST:
        return this.onRequest(session, frame.body);
      case FrameType.QUERY:
        return this.queryWithinBudget(session, frame.body) ? this.onQuery(session, frame.body) : undefined;
      case FrameType.SUBSCRIBE:
        // One id space per connection for system and channel subscriptions (wire/PROTOCOL.md
        // 4.10): whichever holds the id refuses the SUBSCRIBE, so an UNSUBSCRIBE names one.
        if (this.sys.refuseDuplicate(session, frame.body.sub) || this.subs.refuseDuplicate(session, frame.body.sub)) return;
        if (isSysTag(frame.body.tag)) return this.sys.subscribe(session, frame.body.sub, frame.body.tag);
        return this.subs.subscribe(
          session,
          frame.body.sub,
          frame.body.tag,
          frame.body.from,
          frame.body.after,
          frame.body.shared === true && session.version >= SHARED_SUBSCRIPTIONS_VERSION,
        );
      case FrameType.UNSUBSCRIBE:
        // Ids are unique per connection across both kinds: the one that holds it ends it.
        if (this.sys.unsubscribe(session, frame.body.sub)) return;
        return this.subs.unsubscribe(session, frame.body.sub);
      case FrameType.PING:
        session.conn.send({ type: FrameType.PONG, body: { n: frame.body.n } });
        return;
      case FrameType.PONG:
        return;
      default:
        this.metrics.inc("bad_frames_total");
        session.conn.closeWith({
          type: FrameType.ERROR,
          body: { code: "BAD_FRAME", reason: `frame type 0x${frame.type.toString(16)} is not for a replica's client port` },
        });
    }
  }

  private onClientClosed(session: ClientSession): void {
    this.lanes.get(session)?.close();
    this.subs.dropSession(session);
    this.sys.dropSession(session);
    this.gate.dropSession(session.id);
    this.waiting.dropSession(session);
  }

  private onRequest(session: ClientSession, frame: RequestFrame): void {
    this.metrics.inc("requests_total");
    const signed: SignedRequest = { body: frame.body, sig: frame.sig };
    const admitted = admitUnverified(signed, session.keyHex, (request) =>
      this.beforeVerify(session, request, frame.after, signed.body.length),
    );
    if (!admitted.ok) return this.refuseAdmission(session, signed, admitted);
    // In the pipeline from here: a later request of the space is no gap (gapBefore).
    if (admitted.request.op.t === "admin" || this.machine.orderOf(admitted.request.op.tag) === "total") {
      this.noteArrived(admitted.space, admitted.request);
    }
    // Urgency speeds a request up only for a key allowed to send it (admin commands are
    // refused before this for any other key): a free key naming a critical channel with a
    // far `after` would otherwise jump the queues before the gate refuses it, and hold
    // priority shedding on for everyone's low and normal publishes.
    const op = admitted.request.op;
    const allowed = op.t === "admin" || this.machine.isPublisherHex(op.tag, session.keyHex);
    if (this.shedForUrgent(session, signed, admitted.request, allowed)) return;
    const urgency = allowed ? urgencyOfSpace(admitted.space, (tag) => this.machine.priorityOf(tag)) : 0;
    // The session's next frames go first in the client scheduler's turns (client-frames.ts).
    if (urgency >= URGENT) {
      this.server.markUrgent(session.conn);
      // Background disk work (a base snapshot) gives way while urgent requests arrive.
      this.ordering.noteUrgent();
    }
    // The signature is checked on a verification thread; the session's requests go on in
    // the order it sent them (its lane), and only once their check is in.
    let lane = this.lanes.get(session);
    if (lane === undefined) {
      lane = this.verifier.lane();
      this.lanes.set(session, lane);
    }
    // Version 2 requests are signed over the body's SHA-256, which execution needs anyway
    // (bodyDigestOf remembers it): the thread checks 32 bytes, not the body.
    const covered = requestSignedParts(admitted.request.v, signed.body, () => bodyDigestOf(signed.body));
    this.verifier.verify(
      admitted.request.client,
      { prefix: covered.prefix, body: covered.bytes },
      signed.sig,
      (ok) => {
        if (!ok) return this.refuseAdmission(session, signed, BAD_SIGNATURE);
        this.onVerifiedRequest(session, signed, admitted, frame.after);
      },
      lane,
      urgency,
    );
  }

  /**
   * Priority shedding (shedding.ts): a client's less urgent publish refused OVERLOADED
   * while urgent ones wait here, before its verification costs anything. Only client
   * requests pass here (forwarded and proposed requests are never shed by it). An urgent
   * publish notes urgent traffic only from a key `allowed` to send it; a less urgent one is
   * shed whoever sent it.
   */
  private shedForUrgent(session: ClientSession, signed: SignedRequest, request: Request, allowed: boolean): boolean {
    if (this.shedder === null || request.op.t !== "pub") return false;
    const priority = this.machine.priorityOf(request.op.tag);
    if (priority === null || (!allowed && (priority === "high" || priority === "critical"))) return false;
    const reason = this.shedder.admit(priority, performance.now());
    if (reason === null) return false;
    this.metrics.refused("OVERLOADED");
    this.channelMetrics.of(request.op.tag)?.shedPriority.inc(request.span);
    this.auditRefusal(session, "OVERLOADED", reason, request.op.tag);
    this.reply(session, failure(request.seq, this.options.id, sha256(signed.body), "OVERLOADED", reason));
    return true;
  }

  /**
   * Unordered channels new to the machine (made by a decision executed here, or brought by a
   * state transfer at `seq`): the events of them this replica stored before a start that
   * came back short of the seq that made them, kept in its data directory since, go back
   * into the machine (recovery.ts restoreKeptUnordered). A failure stops the replica, as a
   * failed commit does: the channel would go on with a store that memory no longer matches
   * (a retention trim deletes a store's oldest rows, which would be the kept ones), and the
   * next start puts everything back from the store.
   */
  private restoreKept(fresh: readonly { readonly tag: string; readonly gen: number }[], seq: number): void {
    let restored: ReturnType<typeof restoreKeptUnordered>;
    try {
      restored = restoreKeptUnordered({ machine: this.machine, storage: this.storage }, fresh);
    } catch (error) {
      const reason = `restoring the unordered events kept in the data directory failed: ${(error as Error).message}`;
      this.options.log.error("unordered events kept in the data directory could not be restored; stopping", { seq, reason });
      return (this.options.onFatal ?? throwFatal)(new FatalError(EXIT_STORAGE_FAILED, reason));
    }
    if (restored.batches > 0) {
      this.options.log.info("unordered events kept in the data directory restored", {
        seq,
        channels: restored.channels,
        batches: restored.batches,
      });
    }
  }

  /** A request admitRequest's checks refused. */
  private refuseAdmission(session: ClientSession, signed: SignedRequest, admitted: Refused): void {
    this.metrics.refused(admitted.code);
    // A gap in a client's seqs (OUT_OF_ORDER) is a replica behind its client, after a
    // restart say, which the client sends again: counted, not an audit line per request.
    if (admitted.code !== "OUT_OF_ORDER") this.auditRefusal(session, admitted.code, admitted.reason, admitted.local?.tag);
    if (admitted.local !== undefined) {
      this.reply(session, this.localFailure(admitted.local.seq, sha256(signed.body), admitted.code, admitted.reason));
      return;
    }
    const seq = admitted.seq ?? peekSeq(signed);
    if (admitted.code === "BAD_SIGNATURE") this.blacklist(session, "a request signature that does not verify");
    if (seq === null || admitted.code === "BAD_SIGNATURE") {
      // Unsigned, forged or undecodable requests are hostile: answer and close.
      session.conn.closeWith({ type: FrameType.ERROR, body: { code: admitted.code, reason: admitted.reason } });
      return;
    }
    this.reply(session, failure(seq, this.options.id, sha256(signed.body), admitted.code, admitted.reason));
  }

  /** A request whose signature verified: rate limits, then where it goes (routeRequest). */
  private onVerifiedRequest(
    session: ClientSession,
    signed: SignedRequest,
    admitted: Extract<Admission, { ok: true }>,
    after: number | undefined,
  ): void {
    // admitRequest refused any key but the session's own: that keeps the core's
    // "authenticated" admission (which may quarantine a client) honest, and the rate
    // below is charged to the key that really sent.
    const { request, clientHex, space } = admitted;
    const digest = bodyDigestOf(signed.body);
    const overLimit = this.limits.admit(clientHex, request.span, signed.body.length, Date.now());
    if (overLimit !== null) {
      this.metrics.inc("requests_rate_limited_total");
      this.metrics.refused("RATE_LIMITED");
      if (request.op.t === "pub") this.channelMetrics.of(request.op.tag)?.shedRate.inc(request.span);
      this.auditRefusal(session, "RATE_LIMITED", overLimit, request.op.t === "pub" ? request.op.tag : undefined);
      this.reply(session, failure(request.seq, this.options.id, digest, "RATE_LIMITED", overLimit));
      return;
    }
    this.routeRequest(session, signed, request, clientHex, space, digest, after);
  }

  /**
   * The one point just before a request's signature is verified: the key's and address's
   * verification budgets (admission.ts), then what may be refused without a verification.
   * A session whose requests are refused here (over budget, or asking what its key may
   * not do) faster than its key's REFUSALS_PER_SECOND, past a burst of REFUSALS_BURST, or
   * its address's REFUSALS_PER_ADDRESS_FACTOR times those (a refusal per
   * REFUSAL_BYTES_PER_UNIT bytes of the request's body), is also not read for a while: OVER_BUDGET_PAUSE_MS, doubling while its requests keep being refused
   * (up to OVER_BUDGET_PAUSE_MS_MAX), until one passes. A correct client is refused here
   * rarely and briefly; one writing refused requests at full speed is slowed by TCP
   * instead of costing a refusal each.
   */
  private beforeVerify(session: ClientSession, request: Request, after: number | undefined, bodyBytes: number): Refused | null {
    const over = this.admission.beforeVerify(session.keyHex, session.conn.remote);
    if (over !== null) this.metrics.inc(over.budget === "key" ? "client_key_budget_refused_total" : "client_address_budget_refused_total");
    const refused =
      over === null
        ? this.refusedBeforeVerify(request, session.keyHex, after)
        : { ok: false as const, code: over.code, reason: over.reason, seq: request.seq };
    if (refused === null) {
      this.overBudgetPauseMs.delete(session);
      return null;
    }
    // Counted per key (a key's sessions share its allowance: 64 sessions must not draw 64
    // bursts) and per address (keys cost nothing to make), by size: a refused request was
    // decoded whole, about 3 ms of CPU per MiB, so a large one counts as many.
    // By size whatever the refusal: a request refused behind a gap (OUT_OF_ORDER) was decoded
    // whole too, and counting those one each let a key follow one refused request with a
    // thousand 4 MiB ones. An honest large publisher behind one refused request may be paused
    // (100 ms at first) until it sends the missing one.
    const cost = Math.max(1, Math.ceil(bodyBytes / REFUSAL_BYTES_PER_UNIT));
    const now = this.allowanceNow();
    const withinKey = this.refusals.take(session.keyHex, cost, now);
    if (withinKey && this.refusalsByAddress.take(session.conn.remote, cost, now)) return refused;
    const pauseMs = this.overBudgetPauseMs.get(session) ?? OVER_BUDGET_PAUSE_MS;
    this.overBudgetPauseMs.set(session, Math.min(OVER_BUDGET_PAUSE_MS_MAX, pauseMs * 2));
    this.pauseSession(session, pauseMs, refused.reason);
    return refused;
  }

  /** Stops reading a client session for `ms` (TCP backpressure on a client over its budget): counted and logged. */
  private pauseSession(session: ClientSession, ms: number, why: string): void {
    const conn = session.conn;
    if (conn.isClosed || conn.readPaused) return;
    conn.pauseReading();
    setTimeout(() => conn.resumeReading(), ms);
    this.metrics.inc("client_sessions_paused_total");
    this.audit.warn("client-paused", "client session not read for a while: its requests are refused too fast", {
      key: session.key,
      address: conn.remote,
      reason: `more than ${REFUSALS_PER_SECOND} refusals a second past a burst of ${REFUSALS_BURST}; the last: ${why}`,
      pauseMs: ms,
    });
  }

  /** The session proved hostile: its key and address are blacklisted for a while (admission.ts). */
  private blacklist(session: ClientSession, why: string): void {
    this.admission.blacklist(session.keyHex, session.conn.remote, why);
    this.metrics.inc("clients_blacklisted_total");
    this.audit.warn("client-blacklisted", "client key and address blacklisted", {
      key: session.key,
      address: session.conn.remote,
      reason: why,
      keyMs: this.admission.limits.keyBlacklistMs,
      addressMs: this.admission.limits.addressBlacklistMs,
    });
  }

  /**
   * A publish by a key that is not a registered publisher of an existing channel, refused
   * before its signature is verified (admitRequest, which has checked that the request is
   * the session key's own, `keyHex`): the same refusal routeRequest would
   * give after it, without the cost. Not judged while this replica has executed less than
   * the client saw (`after`): routeRequest holds those until it has.
   */
  private refusedBeforeVerify(request: Request, keyHex: string, after: number | undefined): Refused | null {
    // Admin keys are in the cluster file, not in replicated state: judged at once.
    if (request.op.t === "admin" && !this.adminKeys.has(keyHex)) {
      return { ok: false, code: "UNAUTHORIZED", reason: "admin commands must be signed by an admin key" };
    }
    const gap = this.gapBefore(request, keyHex);
    if (gap !== null) return gap;
    if (request.op.t !== "pub" || (after !== undefined && after > this.executedSeq)) return null;
    const tag = request.op.tag;
    // A registered publisher (the common case) costs one lookup; the channel is looked
    // up only for a key that is not one (an unknown channel is routeRequest's to answer).
    if (this.machine.isPublisherHex(tag, keyHex) || this.machine.channelInfo(tag) === null) return null;
    return { ok: false, code: "UNAUTHORIZED", reason: `publisher is not registered on ${tag}`, local: { seq: request.seq, tag } };
  }

  /**
   * An ordered request behind a sequence gap: its space has neither executed nor has
   * waiting here the seq before it. The ordering core would hold it until the gap is
   * filled, after its signature is verified; a client sends its requests in order on
   * one connection, so a gap here means a lost or refused request, which the client
   * sends again (OUT_OF_ORDER is transient): refused now, before any verification.
   */
  private gapBefore(request: Request, keyHex: string): Refused | null {
    if (request.seq <= 1) return null;
    if (request.op.t === "pub" && this.machine.orderOf(request.op.tag) !== "total") return null;
    const space = spaceOf(keyHex, request);
    const executed = this.ordering.lastExecutedSeq(space);
    const arrived = this.arrivedThrough.get(space) ?? 0;
    if (request.seq <= Math.max(executed, arrived) + 1) return null;
    this.metrics.inc("requests_gap_refused_total");
    return {
      ok: false,
      code: "OUT_OF_ORDER",
      reason: `seq ${request.seq - 1} of this space has not reached this replica (executed through ${executed}, received through ${Math.max(executed, arrived)}); send it first`,
      seq: request.seq,
    };
  }

  /**
   * The space's requests arrive in order on a connection: remember how far, for
   * gapBefore. Noted when a request passes the checks before verification (it is then in
   * the pipeline: the next may arrive before its signature is checked on a thread).
   */
  private noteArrived(space: string, request: Request): void {
    const end = request.seq + request.span - 1;
    if (end > (this.arrivedThrough.get(space) ?? 0)) {
      this.arrivedThrough.delete(space);
      this.arrivedThrough.set(space, end);
      if (this.arrivedThrough.size > ARRIVED_SPACES_MAX) this.arrivedThrough.delete(this.arrivedThrough.keys().next().value as string);
    }
  }

  /** Where an admitted request goes: refused here, stored (unordered), or into ordering. */
  private routeRequest(
    session: ClientSession,
    signed: SignedRequest,
    request: Request,
    clientHex: string,
    space: string,
    digest: Uint8Array,
    after: number | undefined,
  ): void {
    if (request.op.t === "pub") {
      const info = this.machine.channelInfo(request.op.tag);
      if (info === null && isSysTag(request.op.tag)) {
        // Only the replicas write their system channels (sys-channels.ts); clients read them.
        const reason = `${request.op.tag} is a system channel, reserved to the replicas: clients may subscribe to it, not publish`;
        this.auditRefusal(session, "UNKNOWN_CHANNEL", "publish to a system channel", request.op.tag);
        this.reply(session, this.localFailure(request.seq, digest, "UNKNOWN_CHANNEL", reason));
        return;
      }
      if (info === null) {
        const again = (expired: boolean): void =>
          this.routeRequest(session, signed, request, clientHex, space, digest, expired ? undefined : after);
        if (this.holdUntilExecuted(session, after, again)) return;
        this.auditRefusal(session, "UNKNOWN_CHANNEL", "no such channel", request.op.tag);
        this.reply(session, this.localFailure(request.seq, digest, "UNKNOWN_CHANNEL", `no channel ${request.op.tag}`));
        return;
      }
      const skew = clockSkewProblem(request, Date.now());
      if (skew !== null) {
        this.metrics.refused("BAD_REQUEST");
        this.auditRefusal(session, "BAD_REQUEST", skew, request.op.tag);
        this.reply(session, failure(request.seq, this.options.id, digest, "BAD_REQUEST", skew));
        return;
      }
      if (info.order === "none") return this.publishUnordered(session, signed, request, digest, after);
      // Only a registered publisher's request may take a place in the ordering core's
      // pending pool (keys cost nothing to make). A replica behind a fresh 'register'
      // holds the refusal until it has executed what the client saw (`after`), and the
      // refusal it sends carries `at`, so the client does not count it against the
      // ordered history (PROTOCOL.md 6.3). Execution checks again, in order.
      if (!this.machine.isPublisherHex(request.op.tag, clientHex)) {
        const again = (expired: boolean): void =>
          this.routeRequest(session, signed, request, clientHex, space, digest, expired ? undefined : after);
        if (this.holdUntilExecuted(session, after, again)) return;
        this.metrics.refused("UNAUTHORIZED");
        this.auditRefusal(session, "UNAUTHORIZED", "publisher is not registered on the channel", request.op.tag);
        this.reply(session, this.localFailure(request.seq, digest, "UNAUTHORIZED", `publisher is not registered on ${request.op.tag}`));
        return;
      }
      this.channelMetrics.of(request.op.tag)?.published.inc(request.span);
    } else if (!this.adminKeys.has(clientHex)) {
      this.metrics.refused("UNAUTHORIZED");
      this.auditRefusal(session, "UNAUTHORIZED", "admin command not signed by an admin key");
      this.reply(session, failure(request.seq, this.options.id, digest, "UNAUTHORIZED", "admin commands must be signed by an admin key"));
      return;
    }
    this.submitOrdered(session, signed, request, space, digest);
  }

  private publishUnordered(
    session: ClientSession,
    signed: SignedRequest,
    request: Request,
    digest: Uint8Array,
    after: number | undefined,
  ): void {
    const arrivedMs = performance.now();
    // Stored here, an unordered event is stored for good: a replica behind what the client
    // saw (`after`: a revocation, say) judges it once it has executed that, whichever way.
    const again = (expired: boolean): void => this.publishUnordered(session, signed, request, digest, expired ? undefined : after);
    if (this.holdUntilExecuted(session, after, again)) return;
    const outcome = this.machine.acceptUnorderedPublish(signed, request, Date.now());
    const result = outcome.result;
    if (!result.ok) {
      // An unordered publish is judged on this replica's state alone (through `after`, above).
      this.metrics.refused(channelErrorCode(result));
      this.auditRefusal(session, channelErrorCode(result), result.reason, request.op.t === "pub" ? request.op.tag : undefined);
      this.reply(session, this.localFailure(request.seq, digest, channelErrorCode(result), result.reason));
      return;
    }
    // "Stored" means durable: the ack waits for the commit of this batch (or of the copy
    // it duplicates, if that one is still being committed).
    const generation = this.machine.channelInfo(result.tag)?.generation ?? 0;
    if (outcome.stored !== null) this.storage.recordUnordered(result.tag, generation, outcome.stored.tsMs, signed.body, signed.sig, digest);
    if (outcome.trimmed !== null)
      this.storage.trimUnordered(result.tag, generation, outcome.trimmed.batchesRemoved, outcome.trimmed.floors);
    const ack: Reply = {
      seq: request.seq,
      replica: this.options.id,
      d: digest,
      ok: true,
      res: { t: "pub", tag: result.tag, span: result.count },
      at: this.executedSeq,
    };
    const cells = this.channelMetrics.of(result.tag);
    const ackLatency = cells?.ackLatency ?? null;
    this.storage.afterDurable(() => {
      ackLatency?.observe((performance.now() - arrivedMs) / 1000);
      this.reply(session, ack);
    });
    cells?.published.inc(result.count);
    if (outcome.stored !== null) {
      this.metrics.inc("events_stored_total", outcome.stored.count);
      cells?.stored.inc(outcome.stored.count);
      this.subs.publish(result.tag, outcome.stored, false);
    }
  }

  private submitOrdered(session: ClientSession, signed: SignedRequest, request: Request, space: string, digest: Uint8Array): void {
    const arrivedMs = performance.now();
    const arrival = this.waiting.arrive(session, space, request.seq, digest, arrivedMs);
    switch (arrival.t) {
      case "cached":
        // Executed before this copy arrived (the leader's or a forwarded copy came first):
        // acknowledged now, and counted like every other acknowledgement.
        if (request.op.t === "pub") this.channelMetrics.of(request.op.tag)?.ackLatency?.observe((performance.now() - arrivedMs) / 1000);
        return this.reply(session, arrival.reply);
      case "replay":
        return this.reply(session, failure(request.seq, this.options.id, digest, "REPLAY", "this sequence number was already used"));
      case "too-many":
        this.metrics.refused("RATE_LIMITED");
        if (request.op.t === "pub") this.channelMetrics.of(request.op.tag)?.shedRate.inc(request.span);
        this.auditRefusal(session, "RATE_LIMITED", "too many requests in flight on this connection");
        return this.reply(
          session,
          failure(request.seq, this.options.id, digest, "RATE_LIMITED", "too many requests in flight on this connection"),
        );
      case "waiting":
        this.noteArrived(space, request);
        break;
      default: {
        const unreachable: never = arrival;
        return unreachable;
      }
    }
    const req: ClientRequest = { client: space, seq: request.seq, span: request.span, body: signed.body, sig: signed.sig };
    // Verified already (onRequest): the core's admission does not verify it again.
    this.decoded.keep(digest, signed.body.length, request);
    this.ordering.submit(req, { stamp: stampOf(request), bodyDigest: digest });
  }

  // ---------------------------------------------------------------------------------
  // Execution of decided requests (identical on every replica)
  // ---------------------------------------------------------------------------------

  /** Returns how many requests were clients' first ones refused (ordering-driver.ts RefusedFirstRequests). */
  private executeDecided(requests: readonly ClientRequest[], decidedSeq: number): number {
    // Execution follows decided order (a restart resumes above its base snapshot, so a
    // first seq may skip ahead), and nothing executes twice.
    assert(decidedSeq > this.executedSeq, `replica: decided seq ${decidedSeq} executed after ${this.executedSeq}`);
    let refusedFirst = 0;
    for (const req of requests) if (this.executeOne(req, decidedSeq) && req.seq === 1) refusedFirst++;
    this.metrics.inc("batches_decided_total");
    const previous = this.machine.membership();
    const epoch = this.machine.endOfDecision(decidedSeq);
    if (epoch !== null && previous !== null) {
      this.options.log.info("membership change took effect", {
        ...epochLogFields(previous, epoch, decidedSeq),
        ...(this.replaying ? { replay: true } : {}),
      });
    }
    this.executed(decidedSeq);
    if (!this.replaying) this.followMembership();
    return refusedFirst;
  }

  /** The last epoch the client sessions were told of; -1 until the server exists. */
  private noticedEpoch = -1;

  /**
   * Tells every client session that this replica's group entered a newer epoch (EPOCH,
   * wire/PROTOCOL.md 4.14), so clients and relays read `members` now rather than at their
   * next periodic read. Only a hint: a client takes a group from f+1 matching answers.
   */
  private noticeEpoch(): void {
    const epoch = this.ordering.epoch.epoch;
    if (this.noticedEpoch < 0 || epoch <= this.noticedEpoch) return;
    this.noticedEpoch = epoch;
    const sessions = this.server.sendToClients({ type: FrameType.EPOCH, body: { replica: this.options.id, epoch } });
    this.options.log.info("told the client sessions of the new epoch", { epoch, sessions });
  }

  /** The groups the peer mesh last followed (followMembership): unchanged objects mean nothing to do. */
  private meshFollows: readonly unknown[] = [];

  /**
   * The peer mesh follows the replicated membership: it links with the members of the
   * ordering core's epoch (an ended epoch still needs its members until the switch), of
   * the machine's current group and of a pending change, and accepts each one's keys
   * (a rotated key stays accepted until the epoch that replaces it starts here).
   */
  private followMembership(): void {
    const current = this.machine.membership();
    // Not before the driver exists (a snapshot installed while it is being built).
    if (current === null || (this.ordering as OrderingDriver | undefined) === undefined) return;
    const pending = this.machine.pendingMembership();
    const view = this.ordering.epoch;
    const groups = [view.members, current.members, ...(pending === null ? [] : [pending.next.members])];
    if (groups.length === this.meshFollows.length && groups.every((group, i) => group === this.meshFollows[i])) return;
    this.meshFollows = groups;
    // A removed replica's $sys.replica.<id> is retired with it.
    this.sys.followMembers();
    const dial = new Map<number, PeerEntry>();
    const accept: AcceptedKey[] = [];
    for (const group of groups) {
      for (const member of group) {
        const file = this.options.config.replicas.find((replica) => replica.id === member.id);
        // A cluster file entry keeps its further addresses (hosts) when the membership names the same preferred one.
        const hosts = file !== undefined && file.host === member.host ? file.hosts : [];
        dial.set(member.id, {
          id: member.id,
          host: member.host,
          hosts,
          port: member.port,
          peerPort: member.peerPort,
          publicKey: member.key,
        });
        accept.push({ id: member.id, key: member.key });
      }
    }
    this.mesh.setGroup([...dial.values()], accept);
    this.followClientKeys(accept);
  }

  /**
   * client_keys follows the group too: the file's client and admin keys and the keys of the
   * groups the mesh accepts, rebuilt (not only added to), so that a replica key rotated away
   * (often because it leaked) or a removed replica's may no longer open a client session,
   * and the sessions it has open are closed.
   */
  private followClientKeys(accepted: readonly AcceptedKey[]): void {
    const allowed = this.clientKeysAllowed;
    if (allowed === null) return;
    const { clientKeys, adminKeys } = this.options.config;
    allowed.clear();
    for (const key of [...clientKeys, ...adminKeys, ...accepted.map((member) => member.key)]) allowed.add(toHex(key));
    // Not before the server exists (the first follow runs while the replica is built).
    (this.server as ReplicaServer | undefined)?.closeClientsNotAllowed("not in client_keys and no longer a replica key of the group");
  }

  /** The channel state now reflects every decision through `seq`. */
  private executed(seq: number): void {
    if (seq <= this.executedSeq) return;
    this.executedSeq = seq;
    this.gate.advance(seq);
  }

  /** Executes one decided request and answers the clients waiting for it. Returns whether it was refused. */
  private executeOne(req: ClientRequest, decidedSeq: number): boolean {
    const signed: SignedRequest = { body: req.body, sig: req.sig };
    const digest = bodyDigestOf(req.body);
    // The core decides only requests whose signature it verified (verifyRequest), so
    // execution decodes without verifying again, and not at all when this replica
    // decoded the same bytes at admission.
    const kept = this.decoded.take(digest);
    if (kept !== undefined) this.metrics.inc("requests_decode_reused_total");
    const request = kept ?? decodedOrThrow(req.body);
    const clientHex = toHex(request.client);
    let reply: Reply;
    let cells: ChannelCells | null = null;
    if (request.op.t === "admin") {
      if (!this.adminKeys.has(clientHex)) {
        reply = failure(request.seq, this.options.id, digest, "UNAUTHORIZED", "admin commands must be signed by an admin key");
        this.options.log.warn("admin command refused: not signed by an admin key", {
          ...adminTarget(request.op.cmd),
          signer: formatPublicKey(request.client),
        });
      } else {
        const result = this.machine.applyAdmin(request.op.cmd, decidedSeq);
        if (result.ok) {
          reply = { seq: request.seq, replica: this.options.id, d: digest, ok: true, res: { t: "admin", cmd: result.cmd, at: decidedSeq } };
          if (result.cmd === "destroy-channel") {
            this.subs.channelDestroyed(result.tag);
            // Its stored events go now, a slice per commit; a start replaying it deletes them itself (recovery.ts).
            if (!this.replaying) dropGoneUnordered({ machine: this.machine, storage: this.storage });
          }
          // A start replays its decisions first and puts the stored events back after (recovery.ts).
          if (result.cmd === "create-channel" && !this.replaying && this.machine.orderOf(result.tag) === "none") {
            this.restoreKept([{ tag: result.tag, gen: result.generation }], decidedSeq);
          }
          if (result.cmd === "unregister" && result.role === "subscriber") this.subs.accessRevoked(result.tag);
          this.options.log.info(this.replaying ? "admin command replayed from disk" : "admin command executed", {
            ...adminTarget(request.op.cmd),
            signer: formatPublicKey(request.client),
            seq: decidedSeq,
            ...(this.replaying ? { replay: true } : {}),
          });
        } else {
          reply = failure(request.seq, this.options.id, digest, channelErrorCode(result), result.reason);
        }
      }
    } else {
      // The publisher's own timestamp is what every replica has in common; it drives
      // retention by age deterministically.
      const outcome = this.machine.applyOrderedPublish(signed, request, request.ts);
      const result = outcome.result;
      if (result.ok) {
        reply = {
          seq: request.seq,
          replica: this.options.id,
          d: digest,
          ok: true,
          res: { t: "pub", tag: result.tag, span: result.count, first: result.firstSeq },
          // The state this was judged on: a client does not count another replica's
          // "not registered" from before it (PROTOCOL.md 6.3).
          at: decidedSeq,
        };
        cells = this.channelMetrics.of(result.tag);
        if (outcome.stored !== null) {
          this.metrics.inc("events_stored_total", outcome.stored.count);
          cells?.stored.inc(outcome.stored.count);
          this.subs.publish(result.tag, outcome.stored as StoredBatch, true);
        }
      } else {
        reply = failure(request.seq, this.options.id, digest, channelErrorCode(result), result.reason);
      }
    }
    const waited = this.waiting.executed(req.client, request.seq, digest, reply);
    if (cells?.ackLatency != null && waited.arrivedMs !== null) cells.ackLatency.observe((performance.now() - waited.arrivedMs) / 1000);
    for (const session of waited.sessions) this.reply(session, reply);
    return !reply.ok;
  }

  /** The core saw a duplicate of an executed request: answer the waiting client again. */
  private resendReply(space: string, seq: number): void {
    const cached = this.waiting.cached(space, seq);
    for (const session of this.waiting.take(keyOf(space, seq))) {
      if (cached !== null) this.reply(session, cached);
      else this.reply(session, failure(seq, this.options.id, new Uint8Array(32), "REPLAY", "this sequence number was already used"));
    }
  }

  /** The core did not admit a request: the clients waiting for it learn why at once. */
  private refuseWaiting(space: string, seq: number, reason: Refusal): void {
    const digest = this.waiting.digestOf(space, seq);
    if (digest === null) return;
    this.decoded.forget(digest);
    const [code, text] = REFUSAL_REPLIES[reason];
    if (reason === "overloaded") {
      const tag = space.slice(space.indexOf(":") + 1);
      if (!tag.startsWith("!")) this.channelMetrics.of(tag)?.shedOverload.inc();
    }
    for (const session of this.waiting.take(keyOf(space, seq))) {
      this.auditRefusal(session, code, text);
      this.reply(session, failure(seq, this.options.id, digest, code, text));
    }
  }

  /**
   * Holds a refusal judged on this replica's own state until it has executed `after`
   * (execution-gate.ts); false: answer now.
   */
  private holdUntilExecuted(session: ClientSession, after: number | undefined, retry: (expired: boolean) => void): boolean {
    return this.gate.hold(session.id, after, this.executedSeq, Date.now(), retry);
  }

  /** A refusal judged on this replica's own state as of the decided seq it executed through. */
  private localFailure(seq: number, digest: Uint8Array, code: ErrorCode, reason: string): Reply {
    return { ...failure(seq, this.options.id, digest, code, reason), at: this.executedSeq };
  }

  /** An audit line for a refused request: who (key, address), what and why. */
  private auditRefusal(session: ClientSession, code: ErrorCode, reason: string, tag?: string): void {
    const kind = code === "RATE_LIMITED" ? "rate-limited" : "request-refused";
    const fields = { key: session.key, address: session.conn.remote, reason: `${code}: ${reason}`, ...(tag === undefined ? {} : { tag }) };
    this.audit.warn(kind, code === "RATE_LIMITED" ? "request rate-limited" : "request refused", fields);
  }

  private reply(session: ClientSession, reply: Reply): void {
    if (session.conn.send({ type: FrameType.REPLY, body: reply })) return;
    this.metrics.inc("replies_dropped_total");
    this.audit.warn("reply-dropped", "reply not sent: the client's connection has no room for it", {
      key: session.key,
      address: session.conn.remote,
      reason: session.conn.describeNoRoom(),
      seq: reply.seq,
    });
  }

  // ---------------------------------------------------------------------------------
  // Queries (read-only, answered from this replica's state)
  // ---------------------------------------------------------------------------------

  private allowanceNow(): number {
    return this.options.allowanceNow === undefined ? performance.now() : this.options.allowanceNow();
  }

  /** Whether the session's key and address may ask one more query now; answered OVERLOADED, counted, when not. */
  private queryWithinBudget(session: ClientSession, query: Query): boolean {
    const now = this.allowanceNow();
    // A key the cluster names (a relay's or console's, registered on its channels) is held
    // to its address's budget only: a relay resubscribing thousands of tags at once asks as many.
    const byKey = this.namesClient(session.keyHex) || this.queriesByKey.take(session.keyHex, 1, now);
    if (byKey && this.queriesByAddress.take(session.conn.remote, 1, now)) return true;
    this.metrics.inc("queries_refused_total");
    const reason = byKey
      ? `more than ${QUERIES_PER_ADDRESS_PER_SECOND} queries a second from this address`
      : `more than ${QUERIES_PER_KEY_PER_SECOND} queries a second with this key`;
    this.refuseQuery(session, query.id, "OVERLOADED", reason);
    return false;
  }

  private refuseQuery(session: ClientSession, id: number, code: ErrorCode, reason: string): void {
    session.conn.send({
      type: FrameType.QUERY_REPLY,
      body: { id, replica: this.options.id, ok: false, code, reason, at: this.executedSeq },
    });
  }

  private onQuery(session: ClientSession, query: Query): void {
    const { id, q, after } = query;
    const tag = "tag" in query ? query.tag : undefined;
    const answer = (res: Canonical): void => {
      session.conn.send({ type: FrameType.QUERY_REPLY, body: { id, replica: this.options.id, ok: true, res, at: this.executedSeq } });
    };
    const refuse = (code: ErrorCode, reason: string): void => this.refuseQuery(session, id, code, reason);
    switch (q) {
      case "status":
        return answer(this.status());
      case "list-channels":
        return answer({ channels: this.machine.listChannels().map(channelListing) });
      case "channel-info": {
        if (tag !== undefined && isSysTag(tag)) {
          const sysInfo = this.sys.info(tag);
          return sysInfo === null ? refuse("UNKNOWN_CHANNEL", `no system channel ${tag}`) : answer(sysInfo);
        }
        const info = tag === undefined ? null : this.machine.channelInfo(tag);
        if (info === null) {
          const again = (expired: boolean): void => this.onQuery(session, expired ? { ...query, after: undefined } : query);
          if (this.holdUntilExecuted(session, after, again)) return;
          return refuse("UNKNOWN_CHANNEL", `no channel ${tag ?? ""}`);
        }
        const keys = "keys" in query && query.keys === true ? this.machine.channelKeys(info.tag) : null;
        return answer({
          ...channelListing(info),
          ...(keys === null ? {} : { publisherKeys: keys.publishers, subscriberKeys: keys.subscribers }),
        });
      }
      case "publishers": {
        if (tag !== undefined && isSysTag(tag)) {
          const sysPublishers = this.sys.publishers(tag);
          return sysPublishers === null
            ? refuse("UNKNOWN_CHANNEL", `no system channel ${tag}`)
            : answer({ publishers: [...sysPublishers] });
        }
        const publishers = tag === undefined ? null : this.machine.registeredPublishers(tag);
        if (publishers === null) {
          const again = (expired: boolean): void => this.onQuery(session, expired ? { ...query, after: undefined } : query);
          if (this.holdUntilExecuted(session, after, again)) return;
          return refuse("UNKNOWN_CHANNEL", `no channel ${tag ?? ""}`);
        }
        return answer({ publishers });
      }
      case "client-seq":
        return answer({ last: this.lastSeqOf(session.keyHex, tag) });
      case "quotas":
        return answer({ quotas: this.machine.listQuotas().map(quotaListing) });
      case "members": {
        const current = this.machine.membership();
        if (current === null) return refuse("BAD_REQUEST", "this replica does not manage its group's membership");
        const listing = membersAnswer(current, this.machine.pendingMembership()) as { [key: string]: Canonical };
        if (!("start" in query) || query.start !== true) return answer(listing);
        // The current epoch's starting checkpoint, once this replica's core runs in it.
        const view = this.ordering.epoch;
        const start = view.epoch === current.epoch && view.start !== null ? { seq: view.start.seq, digest: view.start.digest } : null;
        return answer({ ...listing, start });
      }
      default:
        return refuse("BAD_REQUEST", `unknown query ${q}`);
    }
  }

  /** The last sequence number executed (ordered) or stored (unordered) in a client's space. */
  private lastSeqOf(clientHex: string, tag: string | undefined): number {
    if (tag === undefined) return this.ordering.lastExecutedSeq(`${clientHex}:!admin`);
    const info = this.machine.channelInfo(tag);
    if (info !== null && info.order === "none") return this.machine.lastUnorderedSeq(tag, clientHex);
    return this.ordering.lastExecutedSeq(spaceOf(clientHex, { op: { t: "pub", tag } } as Request));
  }

  /** What this replica publishes to `$sys.replica.<id>` every few seconds. */
  private health(): Record<string, unknown> {
    const core = this.ordering.status();
    return {
      view: core.view,
      leader: core.leader,
      mode: core.transferring !== null ? "stateTransfer" : core.status,
      lastDecided: core.lastExecuted,
      stableCheckpoint: core.stableCheckpoint,
      peersUp: this.mesh
        .status()
        .filter((peer) => peer.up)
        .map((peer) => peer.id),
      channels: this.machine.channelCount,
      subscriptions: this.subs.count + this.sys.count,
      clientConnections: this.metrics.get("client_connections"),
      uptimeMs: Date.now() - this.startedMs,
      rssBytes: residentBytes(),
    };
  }

  /**
   * Whether the cluster names this client key: an admin key, a replica's (the group's or
   * the file's), a key of client_keys, or one the replicated state names (registered on a
   * channel, a quota). With every client slot taken, such a key takes the slot of a session
   * whose key the cluster does not name (server.ts).
   */
  private namesClient(keyHex: string): boolean {
    if (this.adminKeys.has(keyHex) || this.clientKeysAllowed?.has(keyHex) === true) return true;
    const now = performance.now();
    if (this.namedKeys === null || now - this.namedKeys.atMs >= NAMED_KEYS_REFRESH_MS) {
      const keys = this.machine.namedKeys();
      for (const member of this.machine.membership()?.members ?? []) keys.add(toHex(member.key));
      for (const replica of this.options.config.replicas) keys.add(toHex(replica.publicKey));
      this.namedKeys = { keys, atMs: now };
    }
    return this.namedKeys.keys.has(keyHex);
  }

  /**
   * The keys the replicated state and the group name (namesClient), gathered at most every
   * NAMED_KEYS_REFRESH_MS: asked once per session at its AUTH, and at HELLOs only while
   * every client slot is taken.
   */
  private namedKeys: { readonly keys: Set<string>; readonly atMs: number } | null = null;

  /** The status page: status() plus the counters. */
  statusJson(): unknown {
    return { ...(toJson(this.status()) as object), metrics: this.metrics.snapshot() };
  }

  status(): { [key: string]: Canonical } {
    const core = this.ordering.status();
    // The group this replica orders with: the cluster file's until a membership change took effect.
    const group = this.ordering.epoch;
    return {
      replica: this.options.id,
      cluster: this.options.config.name,
      epoch: group.epoch,
      n: group.n,
      f: group.f,
      view: core.view,
      leader: core.leader,
      mode: core.status,
      lastDecided: core.lastExecuted,
      stableCheckpoint: core.stableCheckpoint,
      votesFenced: core.votesFenced,
      lostRecordsFenced: core.lostRecordsFenced,
      channels: this.machine.channelCount,
      subscriptions: this.subs.count,
      heldForExecution: this.gate.size,
      peers: this.mesh.status().map((peer) => ({
        id: peer.id,
        up: peer.up,
        lag: this.ordering.peerLag(peer.id),
        address: peer.address,
        ...(peer.reason === null ? {} : { reason: clipUtf8(peer.reason, PEER_REASON_BYTES_MAX) }),
      })),
      uptimeMs: Date.now() - this.startedMs,
      // The process's CPU time (µs, user + system, every thread): `fitb bench` reads it before and after a run.
      cpuUs: processCpuMicros(),
      // Priority shedding, when on: its target and the shares of low and normal publishes admitted now (percent).
      ...(this.shedder === null ? {} : { shedding: this.shedder.describe(performance.now()) }),
      // For `fitb top`: counters it turns into rates, histograms into recent latency.
      traffic: this.channelMetrics.traffic(),
      latency: this.metrics.latencySummary(),
    };
  }
}

/** A key's quota as the quotas query lists it (PROTOCOL.md section 8): a limit left to the cluster's default is left out. */
function quotaListing(quota: KeyQuota & { readonly key: Uint8Array }): Canonical {
  return {
    key: quota.key,
    ...(quota.eventsPerSecond === null ? {} : { eventsPerSecond: quota.eventsPerSecond }),
    ...(quota.bytesPerSecond === null ? {} : { bytesPerSecond: quota.bytesPerSecond }),
    ...(quota.subscriptions === null ? {} : { subscriptions: quota.subscriptions }),
  };
}

/** CPU time (µs) this process has used, user and system, over all its threads. */
function processCpuMicros(): number {
  const usage = process.cpuUsage();
  return usage.user + usage.system;
}

/** status() as plain JSON (byte strings are not expected in it; numbers and text only). */
function toJson(value: Canonical): unknown {
  if (value instanceof Uint8Array) return Buffer.from(value).toString("hex");
  if (Array.isArray(value)) return value.map(toJson);
  if (value !== null && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toJson(v)]));
  return value;
}

/**
 * A channel as list-channels and channel-info describe it (PROTOCOL.md section 8): its
 * CLASS and access, how many keys are registered, and how much of its retention it uses.
 * `next`, `oldest`, `events` and `bytes` differ between correct replicas (execution
 * progress; each replica's own store of unordered channels), so clients vote only on the
 * rest.
 */
function channelListing(info: ChannelInfo): { [key: string]: Canonical } {
  return {
    tag: info.tag,
    fault: info.fault,
    order: info.order,
    priority: info.priority,
    public: info.public,
    publishers: info.publishers,
    subscribers: info.subscribers,
    retention: { events: info.retention.events, bytes: info.retention.bytes, ageMs: info.retention.ageMs },
    next: info.nextSeq,
    oldest: info.oldestSeq,
    events: info.retainedEvents,
    bytes: info.retainedBytes,
  };
}

/** What an admin command acts on, for its log line: the channel and, for register, the key and role. */
function adminTarget(cmd: AdminCmd): Record<string, string> {
  switch (cmd.t) {
    case "create-channel":
      return { cmd: cmd.t, tag: cmd.tag, class: `${cmd.fault}/${cmd.order}`, priority: cmd.priority };
    case "destroy-channel":
      return { cmd: cmd.t, tag: cmd.tag };
    case "register":
    case "unregister":
      return { cmd: cmd.t, tag: cmd.tag, role: cmd.role, target: formatPublicKey(cmd.key) };
    case "set-quota":
      return { cmd: cmd.t, target: formatPublicKey(cmd.key) };
    case "add-replica":
      return { cmd: cmd.t, target_replica: String(cmd.id), address: `${cmd.host}:${cmd.port}`, target: formatPublicKey(cmd.key) };
    case "remove-replica":
      return { cmd: cmd.t, target_replica: String(cmd.id) };
    case "rotate-replica-key":
      return { cmd: cmd.t, target_replica: String(cmd.id), target: formatPublicKey(cmd.key) };
    case "set-f":
      return { cmd: cmd.t, f: String(cmd.f) };
    default: {
      const unreachable: never = cmd;
      return { cmd: String(unreachable) };
    }
  }
}

/** What a client is told for each kind of refusal by the ordering core. */
const REFUSAL_REPLIES: Record<Refusal, [ErrorCode, string]> = {
  invalid: ["BAD_REQUEST", "the request's sequence numbers or size are not acceptable"],
  quarantined: ["UNAUTHORIZED", "this client sent a bad signature and is refused for a while"],
  window: ["OUT_OF_ORDER", "too many requests of this client are pending here; retry once earlier ones are answered"],
  overloaded: [
    "OVERLOADED",
    "the replica's pending requests are at this channel priority's share of their bound (low priority is refused first); retry later",
  ],
};

function failure(seq: number, replica: number, digest: Uint8Array, code: ErrorCode, reason: string): Reply {
  return { seq: Math.max(seq, 1), replica, d: digest, ok: false, code, reason: reason.slice(0, 512) };
}

function channelErrorCode(error: ChannelError | TrimmedError): ErrorCode {
  switch (error.code) {
    case "unknown-channel":
      return "UNKNOWN_CHANNEL";
    case "channel-exists":
      return "CHANNEL_EXISTS";
    case "not-registered":
      return "UNAUTHORIZED";
    case "oversized":
    case "channels-full":
    case "keys-full":
    case "quotas-full":
      return "TOO_LARGE";
    case "replayed":
      return "REPLAY";
    case "bad-tag":
    case "bad-request":
    case "class-mismatch":
    case "trimmed":
      return "BAD_REQUEST";
    default: {
      const unreachable: never = error;
      return unreachable;
    }
  }
}

/** The seq of a request whose body did not pass admission, if it can be read at all (within the values a valid body holds). */
function peekSeq(signed: SignedRequest): number | null {
  const decoded = tryDecodeCanonical(signed.body, REQUEST_BODY_ITEMS_MAX);
  if (!decoded.ok || decoded.value === null || typeof decoded.value !== "object" || decoded.value instanceof Uint8Array) return null;
  const seq = (decoded.value as { seq?: unknown }).seq;
  return typeof seq === "number" && Number.isSafeInteger(seq) && seq >= 1 ? seq : null;
}

function decodedOrThrow(body: Uint8Array): Request {
  const decoded = decodeRequestBody(body);
  if (!decoded.ok) throw new Error(`decided request does not decode: ${decoded.error.reason}`);
  return decoded.request;
}

/** The process's resident memory; 0 when it cannot be read (out of file descriptors: reading it opens one). */
function residentBytes(): number {
  try {
    return process.memoryUsage.rss();
  } catch {
    return 0;
  }
}
