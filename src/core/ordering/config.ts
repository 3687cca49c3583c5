/**
 * Configuration of the ordering core: group size, fault mode and every bound and timer of
 * core/ordering/PROTOCOL.md §10, with the defaults given there. Time is in ticks (1 tick = 10 ms in the
 * runtime); the core never reads a clock.
 */
import { REPLICAS_MAX } from "../../../wire/types.ts";
import { BATCH_REQUESTS_MAX, REQUEST_BODY_BYTES_MAX } from "./messages.ts";

/**
 * A replica as the core names it: its rank in the epoch's group, 0..n-1 (members in
 * ascending id order). Replica ids, which stay with a replica for life and may have gaps,
 * are the runtime's; it maps them to ranks per epoch (src/replica/epochs.ts).
 */
export type ReplicaId = number;

/**
 * `bft`: n >= 3f+1, quorums of 2f+1 (for other n, ceil((n+f+1)/2)), PREPARE and COMMIT phases.
 * `cft`: crash mode on the same group: majority quorums floor(n/2)+1 and no PREPARE phase.
 */
export type FaultMode = "bft" | "cft";

export interface CoreConfig {
  /** This replica's id. */
  readonly id: ReplicaId;
  /** Group size. */
  readonly n: number;
  /** Faults tolerated; n >= 3f+1. */
  readonly f: number;
  readonly mode: FaultMode;
  /** Bound into every signature, so a message of one cluster is worthless in another. */
  readonly clusterId: string;
  /** Requests per proposed batch. */
  readonly batchRequestsMax: number;
  /** Bytes (bodies + signatures) per proposed batch. */
  readonly batchBytesMax: number;
  /** Bytes of one request body. */
  readonly requestBytesMax: number;
  /** Client sequence numbers one request may use. */
  readonly requestSpanMax: number;
  /** Ticks the leader waits to fill a batch before proposing a partial one. */
  readonly batchDelayTicks: number;
  /** Consensus instances in flight beyond the last executed one; must be <= logWindow. */
  readonly pipelineDepth: number;
  /**
   * Urgent pacing (PROTOCOL.md §4, "Urgent pacing"): for this many ticks after a request of
   * urgency URGENT or more was admitted, the leader keeps at most `pacedPipelineDepth`
   * ordinary proposals in flight and stops adding less urgent requests to a batch past
   * `pacedBatchBytesMax` bytes past each client's head request, so an urgent request waits
   * behind little work. 0: off.
   */
  readonly urgentPacingTicks: number;
  readonly pacedPipelineDepth: number;
  readonly pacedBatchBytesMax: number;
  /** K: a checkpoint after every K executed sequence numbers. */
  readonly checkpointInterval: number;
  /** L: the log holds sequence numbers h < seq <= h+L; must exceed K. */
  readonly logWindow: number;
  /** Unanswered requests a client may have pending at a replica. */
  readonly clientWindow: number;
  /** Pending requests over all clients. */
  readonly pendingRequestsMax: number;
  /** Pending requests of one client key over all its spaces (tags and admin). */
  readonly keyPendingMax: number;
  /**
   * Ticks a backup waits before it forwards a request a client gave it to the leader, and
   * only if no batch it has seen carries the request by then (lazy forwarding,
   * PROTOCOL.md §5): clients send to every replica, so the leader normally has its own
   * copy. Less than requestTimeoutTicks.
   */
  readonly forwardDelayTicks: number;
  /** Ticks before a pending request is forwarded to all, and again before the leader is suspected. */
  readonly requestTimeoutTicks: number;
  /** Ticks the leader may go without a new proposal while requests wait (Aardvark heartbeat). */
  readonly progressTimeoutTicks: number;
  /** Base view-change timeout; doubles per attempt up to viewChangeBackoffDoublingsMax doublings. */
  readonly viewChangeTimeoutTicks: number;
  readonly viewChangeBackoffDoublingsMax: number;
  /** Ticks between resends of own VIEW_CHANGE and of stalled votes. */
  readonly retransmitTicks: number;
  /** Starved ticks (a request waits, the pipeline has room, no proposal comes) a window may hold, in percent; more suspects the leader. */
  readonly starvedTicksPercentMax: number;
  /** Ticks of network delay a proposal may take before a waiting tick counts as starved. */
  readonly starvationSlackTicks: number;
  /** Aardvark throughput window and grace period, in ticks. */
  readonly throughputWindowTicks: number;
  readonly throughputGraceTicks: number;
  /** Required throughput, in percent of the median of the last n views (Aardvark: 90, of the best). */
  readonly throughputRequiredPercent: number;
  /** Raise of the requirement per window that meets it, in percent (Aardvark: 1; 0, the default, keeps a leader that keeps up). */
  readonly throughputStepPercent: number;
  /** A request may see this many rounds of fair batches pass it by before the leader is unfair. */
  readonly fairnessMultiplier: number;
  /** Ticks a client with a provably bad signature is ignored. */
  readonly clientQuarantineTicks: number;
  /** A peer sending more than this many times the busiest other peer is flagged. */
  readonly floodThreshold: number;
  /** Ticks between retries of a state transfer that has not completed. */
  readonly transferRetryTicks: number;
  /** Decided sequence numbers returned per STATE_RESPONSE. */
  readonly transferItemsMax: number;
  /**
   * How far ahead of this replica's clock a proposal's timestamp may be (ms): what correct
   * replicas' clocks may differ. A proposal further ahead is refused as invalid.
   */
  readonly proposalClockSkewMs: number;
  /**
   * Whether every proposal carries an external barrier (PROTOCOL.md §12): the leader puts
   * the number the runtime last reported with an `external` input at the head of each
   * batch, and a replica executes that batch only once its own reported number reached it.
   * Off (the default), batches carry none and `external` inputs are ignored.
   */
  readonly externalBarrier: boolean;
  /**
   * The checkpoint this group's epoch starts from (PROTOCOL.md §13): a state the previous
   * epoch's members certified, which every member of this epoch holds or fetches. It is
   * stable by configuration: h starts at `seq`, and a stable checkpoint at `seq` with
   * `digest` needs no CHECKPOINT signatures of this epoch. Absent: the group starts at 0.
   */
  readonly epochStart?: { readonly seq: number; readonly digest: Uint8Array };
  /**
   * The records a restart hands the core were written by a clean stop, which made every
   * one of them durable before it ended: no vote can have outlived its record, so the
   * restart fence (PROTOCOL.md §2, "Votes sent before their fsync") is not needed.
   */
  readonly stoppedClean?: boolean;
  /**
   * The store lost records at this start (damaged rows dropped, or a file moved aside
   * and a new one begun): the votes this replica sent may have left no record in any
   * view, or in a view it has no record of at all, so the restart fence is widened to
   * every view until a view change this replica takes part in (fence.ts; PROTOCOL.md §2).
   */
  readonly lostRecords?: boolean;
}

/** The parameters of core/ordering/PROTOCOL.md §10 (1 tick = 10 ms). */
export const DEFAULT_PARAMETERS = {
  batchRequestsMax: 256,
  batchBytesMax: 1024 * 1024,
  requestBytesMax: 64 * 1024,
  requestSpanMax: 256,
  batchDelayTicks: 0,
  pipelineDepth: 8,
  urgentPacingTicks: 100,
  pacedPipelineDepth: 1,
  pacedBatchBytesMax: 16 * 1024,
  checkpointInterval: 128,
  logWindow: 256,
  clientWindow: 16,
  pendingRequestsMax: 10_000,
  keyPendingMax: 128,
  forwardDelayTicks: 3,
  requestTimeoutTicks: 100,
  progressTimeoutTicks: 50,
  viewChangeTimeoutTicks: 200,
  viewChangeBackoffDoublingsMax: 6,
  retransmitTicks: 100,
  starvedTicksPercentMax: 50,
  starvationSlackTicks: 2,
  throughputWindowTicks: 100,
  throughputGraceTicks: 500,
  throughputRequiredPercent: 90,
  throughputStepPercent: 0,
  fairnessMultiplier: 2,
  clientQuarantineTicks: 6_000,
  floodThreshold: 20,
  transferRetryTicks: 200,
  transferItemsMax: 32,
  proposalClockSkewMs: 60_000,
  externalBarrier: false,
} as const;

export type CoreParameters = Omit<CoreConfig, "id" | "n" | "f" | "mode" | "clusterId" | "epochStart" | "stoppedClean" | "lostRecords">;

/** Builds a full configuration from the identity fields and any overrides; throws on a bad one. */
export function makeConfig(
  base: Pick<CoreConfig, "id" | "n" | "f" | "mode" | "clusterId" | "epochStart">,
  overrides: Partial<CoreParameters> = {},
): CoreConfig {
  const cfg: CoreConfig = { ...DEFAULT_PARAMETERS, ...overrides, ...base };
  checkConfig(cfg);
  return cfg;
}

/** Throws a RangeError naming the first inconsistent parameter. */
export function checkConfig(cfg: CoreConfig): void {
  const positive: Array<keyof CoreConfig> = [
    "n",
    "batchRequestsMax",
    "batchBytesMax",
    "requestBytesMax",
    "requestSpanMax",
    "pipelineDepth",
    "checkpointInterval",
    "logWindow",
    "clientWindow",
    "pendingRequestsMax",
    "keyPendingMax",
    "requestTimeoutTicks",
    "progressTimeoutTicks",
    "viewChangeTimeoutTicks",
    "retransmitTicks",
    "throughputWindowTicks",
    "starvedTicksPercentMax",
    "fairnessMultiplier",
    "floodThreshold",
    "transferRetryTicks",
    "transferItemsMax",
    "pacedPipelineDepth",
    "pacedBatchBytesMax",
  ];
  for (const key of positive) {
    const v = cfg[key];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 1) {
      throw new RangeError(`${key} must be a positive integer`);
    }
  }
  // 0: the leader proposes as soon as a request waits and the pipeline has room.
  if (!Number.isSafeInteger(cfg.batchDelayTicks) || cfg.batchDelayTicks < 0)
    throw new RangeError("batchDelayTicks must be a non-negative integer");
  if (!Number.isSafeInteger(cfg.urgentPacingTicks) || cfg.urgentPacingTicks < 0)
    throw new RangeError("urgentPacingTicks must be a non-negative integer");
  // 0: a backup forwards at the next tick, as long as no batch carries the request by then.
  if (!Number.isSafeInteger(cfg.forwardDelayTicks) || cfg.forwardDelayTicks < 0)
    throw new RangeError("forwardDelayTicks must be a non-negative integer");
  if (cfg.forwardDelayTicks >= cfg.requestTimeoutTicks) throw new RangeError("forwardDelayTicks must be less than requestTimeoutTicks");
  // A replica that missed a decision probes its peers after retransmitTicks; the stall
  // rule (timers.ts, stalledInView) suspects after two request timeouts, so the probe
  // must come first or a correct leader is suspected for one lost COMMIT.
  if (cfg.retransmitTicks > cfg.requestTimeoutTicks) throw new RangeError("retransmitTicks must be at most requestTimeoutTicks");
  if (!Number.isSafeInteger(cfg.f) || cfg.f < 0) throw new RangeError("f must be a non-negative integer");
  if (cfg.n > REPLICAS_MAX) throw new RangeError(`n must be at most ${REPLICAS_MAX}`);
  if (cfg.n < 3 * cfg.f + 1) throw new RangeError("n must be at least 3f+1");
  if (cfg.keyPendingMax < cfg.clientWindow) throw new RangeError("keyPendingMax must be at least clientWindow");
  if (!Number.isSafeInteger(cfg.id) || cfg.id < 0 || cfg.id >= cfg.n) throw new RangeError("id must be in 0..n-1");
  if (cfg.mode !== "bft" && cfg.mode !== "cft") throw new RangeError("mode must be bft or cft");
  if (typeof cfg.externalBarrier !== "boolean") throw new RangeError("externalBarrier must be a boolean");
  // A barrier holds execution and the suspicion of the leader: only a crash-mode instance,
  // whose leader is trusted not to lie about it, may carry one.
  if (cfg.externalBarrier && cfg.mode !== "cft") throw new RangeError("externalBarrier needs mode cft");
  // A batch, with its barrier (§12), must pass the structural bound every replica checks.
  if (cfg.batchRequestsMax + (cfg.externalBarrier ? 1 : 0) > BATCH_REQUESTS_MAX) {
    throw new RangeError(`batchRequestsMax must leave a batch within ${BATCH_REQUESTS_MAX} elements`);
  }
  if (cfg.pipelineDepth > cfg.logWindow) throw new RangeError("pipelineDepth must be <= logWindow");
  // At least two checkpoint intervals: a replica that crashed after executing a checkpoint
  // seq and before its CHECKPOINT went out does not sign that one after its restart (its
  // state has moved on); the next one must fit in the window, or with another replica down
  // no checkpoint becomes stable again and the group stops at the high water mark.
  if (cfg.logWindow < 2 * cfg.checkpointInterval) throw new RangeError("logWindow must be at least twice checkpointInterval");
  if (cfg.requestBytesMax > cfg.batchBytesMax) throw new RangeError("requestBytesMax must be <= batchBytesMax");
  // Peers' messages and the records read back at a restart are checked against the structural bound.
  if (cfg.requestBytesMax > REQUEST_BODY_BYTES_MAX) throw new RangeError(`requestBytesMax must be <= ${REQUEST_BODY_BYTES_MAX}`);
  if (cfg.epochStart !== undefined) {
    const { seq, digest } = cfg.epochStart;
    if (!Number.isSafeInteger(seq) || seq < 1 || seq % cfg.checkpointInterval !== 0) {
      throw new RangeError("epochStart.seq must be a positive multiple of checkpointInterval");
    }
    if (!(digest instanceof Uint8Array) || digest.length !== 32) throw new RangeError("epochStart.digest must be 32 bytes");
  }
  if (cfg.viewChangeBackoffDoublingsMax < 0 || cfg.throughputGraceTicks < 0 || cfg.clientQuarantineTicks < 0) {
    throw new RangeError("viewChangeBackoffDoublingsMax, throughputGraceTicks and clientQuarantineTicks must be >= 0");
  }
}

/**
 * Q, the one quorum size every count is compared with. BFT: ceil((n+f+1)/2), which is
 * 2f+1 for n = 3f+1, so that two quorums share a correct replica. CFT: a majority of the
 * same group, floor(n/2)+1, so that two quorums share a replica.
 */
export function quorum(n: number, f: number, mode: FaultMode): number {
  if (mode === "cft") return Math.floor(n / 2) + 1;
  return Math.ceil((n + f + 1) / 2);
}

/**
 * W, the weak quorum: enough replicas that at least one of them is correct (BFT: f+1), or,
 * in crash mode, enough that every quorum of live replicas overlaps it (n-Q+1).
 */
export function weakQuorum(n: number, f: number, mode: FaultMode): number {
  if (mode === "cft") return n - quorum(n, f, mode) + 1;
  return f + 1;
}

/** leader(view) = view mod n (core/ordering/PROTOCOL.md §6: never a local counter). */
export function leaderOf(view: number, n: number): ReplicaId {
  return view % n;
}
