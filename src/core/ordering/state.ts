/**
 * The state of one replica's ordering core, and the few helpers every part of it uses.
 *
 * OrderingCore (core.ts) owns one CoreState and hands it to the module that implements
 * each part of the protocol, the way etcd raft splits raft.go, log.go and progress.go:
 *
 *   core.ts          `step`, the dispatch of every input and message, the normal case
 *   log.ts           log entries, prepared certificates, decisions, own signed votes
 *   view-change.ts   view change and NEW_VIEW (core/ordering/PROTOCOL.md §6)
 *   suspicion.ts     suspecting the leader (SUSPECT, f+1 of them) and evidence of equivocation
 *   checkpoints.ts   checkpoints, state transfer, catch-up inside the window (§7)
 *   timers.ts        what a tick does: request timers, leader expectations, retransmission
 *   clients.ts       client table, pending pool, admission and forwarding (§5)
 *   restore.ts       restart from persisted records
 *   monitors.ts      Aardvark's throughput and flood monitors
 *
 * The fields below are grouped by the part of the protocol they belong to.
 */
import { bytesEqual } from "../../../wire/bytes.ts";
import type { ProposalPolicy } from "./priority.ts";
import type { CheckpointClients, Transfer } from "./checkpoints.ts";
import { ClientTable, PendingPool } from "./clients.ts";
import { type CertContext, digestOfBatch, verifySigned } from "./certs.ts";
import { type CoreConfig, leaderOf, quorum, type ReplicaId, weakQuorum } from "./config.ts";
import type { Decision, Entry } from "./log.ts";
import type { LostVotes } from "./fence.ts";
import {
  type Checkpoint,
  type ClientRequest,
  type Evidence,
  type NewView,
  NULL_DIGEST,
  type PeerMessage,
  type PreparedCert,
  type PrePrepare,
  SIGNATURE_BYTES,
  signingBytes,
  type ViewChange,
} from "./messages.ts";
import { FloodMonitor, StarvationMonitor, ThroughputMonitor } from "./monitors.ts";
import type { CoreCrypto, Effect, PersistedRecord, Ready } from "./types.ts";

export const NO_DEADLINE = Number.POSITIVE_INFINITY;
export const EMPTY_SIG = new Uint8Array(SIGNATURE_BYTES);

/** Fails loudly: the core's assertions stay on in production (src/README.md §9, rule 8). */
export class CoreAssertionError extends Error {
  override readonly name = "CoreAssertionError";
}

export function assert(cond: boolean, what: string): asserts cond {
  if (!cond) throw new CoreAssertionError(`ordering core: ${what}`);
}

export function assertNever(x: never): never {
  throw new CoreAssertionError(`ordering core: unexpected input ${JSON.stringify(x)}`);
}

/**
 * The seams a test may override (through OrderingCore's protected methods) to build a
 * deliberately broken core for the simulator. The correct behaviour is the default.
 */
export interface Seams {
  /** Q. Every quorum comparison goes through here. */
  quorumSize(): number;
  /** The key a vote is stored under: the signer, so that each signer counts once. */
  voteKey(signer: ReplicaId): number;
  /** Whether a vote for `voteDigest` counts toward `entryDigest`: only an equal digest does. */
  voteMatches(entryDigest: Uint8Array, voteDigest: Uint8Array): boolean;
  /** Whether a NEW_VIEW's O must equal the one recomputed from its VIEW_CHANGEs. */
  recomputesNewView(): boolean;
  /**
   * How many distinct peers must report one decision (seq, digest) before this replica
   * takes it in catch-up: f+1 in BFT mode (one of them is correct), 1 in crash mode.
   */
  decisionClaimsNeeded(): number;
}

/**
 * Collects the Ready of one step: the records to persist and the effects, each in the
 * order the core produced them.
 */
export class ReadyBuilder {
  private records: PersistedRecord[] = [];
  private effects: Effect[] = [];

  persist(record: PersistedRecord): void {
    this.records.push(record);
  }

  effect(effect: Effect): void {
    this.effects.push(effect);
  }

  /** The Ready collected so far; the builder starts an empty one. */
  take(): Ready {
    const ready: Ready = { persist: this.records, effects: this.effects };
    this.records = [];
    this.effects = [];
    return ready;
  }
}

/** The k-th largest of `values` (1-based), or -1 when there are fewer than k. */
export function kthLargest(values: Iterable<number>, k: number): number {
  const sorted = [...values].sort((a, b) => b - a);
  return sorted[k - 1] ?? -1;
}

export class CoreState {
  readonly certContext: CertContext;
  /** W: weak quorum. */
  readonly weakQuorumSize: number;
  /** What the current step asks of the runtime. */
  readonly output = new ReadyBuilder();
  /** The core's clock: ticks since it started (or restarted). */
  now = 0;
  /** This replica's clock (ms since the epoch) at the last tick; 0 if the runtime gives none. */
  nowMs = 0;
  /** How far the runtime's external order has executed here (`external` inputs; PROTOCOL.md §12). */
  externalExecuted = 0;
  /**
   * The seq up to which a leader with nothing to propose proposes empty batches, and up to
   * which a backup accepts them (`pad` inputs; PROTOCOL.md §13).
   */
  padTo = 0;
  /** When `padTo` last rose: while seqs up to it are owed, the leader is judged as for a waiting request, after a grace. */
  padSince = 0;
  /** Whether the last ordinary batch fill found a request it could propose (a chain head not blocked by a gap, a proposal or the NEW_VIEW). */
  proposableWaiting = false;
  /** The leader's empty proposals past `padTo`, by seq, held unvoted until `padTo` reaches them (at most logWindow). */
  readonly heldPadding = new Map<number, { readonly from: ReplicaId; readonly msg: PrePrepare }>();
  /** Whether the next decided batch waits for the external order (§12): the wait is this replica's, not its leader's. */
  barrierBlocked = false;
  /** The highest proposal timestamp this replica signed or accepted: its next proposal stamps no less. */
  proposalTsFloor = 0;

  // View state (core/ordering/PROTOCOL.md §2; view-change.ts).
  view = 0;
  installedView = 0;
  phase: "normal" | "viewChange" = "normal";
  /** View changes started since a new request last executed in an installed view; sets the backoff. */
  viewChangeAttempts = 0;
  /** The view whose view-change timer is armed (-1: none). */
  timerArmedForView = -1;
  viewChangeDeadline = NO_DEADLINE;
  viewChangeResendAt = NO_DEADLINE;
  /** This replica's VIEW_CHANGE for `view` while the view change is in progress. */
  ownViewChange: ViewChange | null = null;
  /** The NEW_VIEW of the installed view. */
  installedNewView: NewView | null = null;
  /** The view this replica, as its leader, built a NEW_VIEW for (-1: none). */
  newViewBuiltFor = -1;
  readonly viewChanges = new Map<ReplicaId, ViewChange>();
  /** The view whose leader this replica suspects (suspicion.ts), or -1. */
  suspectedView = -1;
  suspicionResendAt = NO_DEADLINE;
  /** The view each peer last said it suspects the leader of (SUSPECT). */
  readonly suspicions = new Map<ReplicaId, number>();
  /** The proof of equivocation this replica left its last view on; resent with its VIEW_CHANGE. */
  ownEvidence: Evidence | null = null;
  /** Peers whose EVIDENCE was checked in this view (one check per peer and view). */
  readonly evidenceCheckedFrom = new Set<ReplicaId>();
  readonly newViewAnsweredAt = new Map<ReplicaId, number>();
  /** Normal-case messages for the target view, held while its view change is in progress. */
  readonly buffered = new Map<string, { from: ReplicaId; msg: PeerMessage }>();
  /** Transport-authenticated hints of where peers are; used only with W agreeing peers. */
  readonly peerViews = new Map<ReplicaId, number>();
  readonly peerSeqs = new Map<ReplicaId, number>();

  // Log state (log.ts).
  lastExecuted = 0;
  /** The seq the leader proposes next. */
  nextProposalSeq = 1;
  highestAcceptedSeq = 0;
  entries = new Map<number, Entry>();
  /** The highest-view prepared certificate per seq, with its body. */
  readonly preparedCerts = new Map<number, { cert: PreparedCert; batch: ClientRequest[] }>();
  readonly decided = new Map<number, Decision>();
  /** Decisions learnt from peers (decisionClaimsNeeded of them agreeing) for seqs not yet executed. */
  readonly decidedPending = new Map<number, Decision>();
  /**
   * Decisions peers reported for seqs inside the window not yet taken: seq -> peer -> the
   * digest it reported (its latest). Bounded by the window times n, 32 bytes each: no body
   * is kept, the report that completes the count brings its own.
   */
  readonly decisionClaims = new Map<number, Map<ReplicaId, Uint8Array>>();
  /** Requests of freely proposed, unexecuted batches of this view: key -> seq. */
  readonly inFreeProposal = new Map<string, number>();
  /** Requests of NEW_VIEW batches of this view not yet executed: key -> count. */
  readonly inNewViewBatch = new Map<string, number>();
  /** Digest of every own PRE_PREPARE, PREPARE and COMMIT signed: "<kind>:<view>:<seq>" -> digest. */
  readonly signedVotes = new Map<string, Uint8Array>();
  /**
   * After a restart: in `view`, at seqs up to `seq`, this replica may have sent a
   * PRE_PREPARE or PREPARE whose `accept` record was lost, so it signs no new one there
   * (core/ordering/PROTOCOL.md §2, "Votes sent before their fsync"). Null: no fence.
   */
  voteFence: { view: number; seq: number } | null = null;
  /**
   * After a restart whose store lost records (cfg.lostRecords): every view is fenced
   * until a view change this replica takes part in (fence.ts). Null: not fenced so.
   */
  lostVotes: LostVotes | null = null;
  /** A `view` record for the installed view was written (view 0 has none until its first vote). */
  viewRecorded = false;

  // Checkpoints and state transfer (core/ordering/PROTOCOL.md §7; checkpoints.ts).
  /** h: the last stable checkpoint, its state digest and its Q signed CHECKPOINTs. */
  stableSeq = 0;
  stableDigest: Uint8Array = NULL_DIGEST;
  stableProof: Checkpoint[] = [];
  /** CHECKPOINTs inside the window, by seq and signer. */
  readonly checkpointVotes = new Map<number, Map<ReplicaId, Checkpoint>>();
  /** The latest CHECKPOINT beyond the window from each replica. */
  readonly farCheckpoints = new Map<ReplicaId, Checkpoint>();
  /** This replica's own state digests, by seq. */
  readonly ownCheckpoints = new Map<number, Uint8Array>();
  /** Client tables exported at `takeCheckpoint`, waiting for `checkpointReady`. */
  readonly checkpointClients = new Map<number, CheckpointClients>();
  transfer: Transfer | null = null;
  /** When each peer was last answered, per kind of answer ("<peer>:<kind>"); see onStateRequest. */
  readonly servedAt = new Map<string, number>();
  readonly stableAnsweredAt = new Map<ReplicaId, number>();
  /** Each peer's answer budget in bytes when last charged (checkpoints.ts, `serveBudget`). */
  readonly serveBudgets = new Map<ReplicaId, { bytes: number; at: number }>();
  /** Bytes of requests decided per tick, a moving average (refills the answer budgets). */
  decidedBytesPerTick = 0;
  decidedBytesThisTick = 0;
  /** Nonce of the next STATE_REQUEST this replica sends. */
  stateRequestNonce = 0;

  // Clients (core/ordering/PROTOCOL.md §5; clients.ts).
  readonly clientTable = new ClientTable();
  readonly pending = new PendingPool();
  /** Quarantined clients and the tick their quarantine ends. */
  readonly quarantinedUntil = new Map<string, number>();
  forwardToLeader: ClientRequest[] = [];
  forwardToAll: ClientRequest[] = [];
  /** The request a client gave this replica in the current step, if admitted; a backup holds it for a lazy forward. */
  admittedFromClient: ClientRequest | null = null;
  /** Where the leader's next round-robin pass over clients starts. */
  roundRobinStart = 0;
  /** Seqs this leader proposed in the slots kept for urgent requests (priority.ts), and the view it proposed them in. */
  readonly urgentSlotSeqs = new Set<number>();
  urgentSlotsView = -1;
  /** Tick at which a request of urgency URGENT or more was last admitted (urgent pacing, priority.ts); never: -Infinity. */
  urgentAdmittedAt = Number.NEGATIVE_INFINITY;

  // Progress tracking (timers.ts).
  lastExecutedAt = 0;
  nextRetransmitAt = 0;
  nextProbeAt = 0;
  nextCheckpointResendAt = 0;
  /**
   * The next seq to execute, seen in flight in this view (COMMITs from W replicas) and not
   * executed here: its view, seq and the tick it was first seen so (timers.ts, `stalledInView`).
   */
  stalledSeq: { view: number; seq: number; since: number } | null = null;
  /** Tick of the last new proposal this replica accepted from the leader. */
  lastProposalAt = 0;
  /** The heartbeat timeout now: progressTimeoutTicks, doubled after each heartbeat failure. */
  progressTimeoutCurrentTicks: number;
  readonly throughputMonitor: ThroughputMonitor;
  readonly starvationMonitor: StarvationMonitor;
  readonly floodMonitor: FloodMonitor;

  constructor(
    readonly cfg: CoreConfig,
    readonly crypto: CoreCrypto,
    readonly seams: Seams,
    /** The core's message dispatch: messages held during a view change are replayed through it. */
    readonly redeliver: (from: ReplicaId, msg: PeerMessage) => void,
    /** How urgent each client's requests are (priority.ts). */
    readonly policy: ProposalPolicy,
  ) {
    this.weakQuorumSize = weakQuorum(cfg.n, cfg.f, cfg.mode);
    this.certContext = {
      n: cfg.n,
      f: cfg.f,
      mode: cfg.mode,
      quorumSize: quorum(cfg.n, cfg.f, cfg.mode),
      logWindow: cfg.logWindow,
      checkpointInterval: cfg.checkpointInterval,
      clusterId: cfg.clusterId,
      crypto,
      epochStart: cfg.epochStart ?? null,
    };
    if (cfg.epochStart !== undefined) {
      // The epoch starts at a checkpoint the previous epoch certified (PROTOCOL.md §13).
      this.stableSeq = cfg.epochStart.seq;
      this.stableDigest = cfg.epochStart.digest;
    }
    this.progressTimeoutCurrentTicks = cfg.progressTimeoutTicks;
    this.throughputMonitor = new ThroughputMonitor(cfg, cfg.n);
    this.starvationMonitor = new StarvationMonitor(cfg.throughputWindowTicks, cfg.starvedTicksPercentMax);
    this.floodMonitor = new FloodMonitor(cfg.n, cfg.throughputWindowTicks, cfg.floodThreshold);
  }

  leader(view: number = this.view): ReplicaId {
    return leaderOf(view, this.cfg.n);
  }

  isLeader(): boolean {
    return this.leader() === this.cfg.id;
  }

  /** H = h + L: the highest seq the log may hold. */
  get highWater(): number {
    return this.stableSeq + this.cfg.logWindow;
  }

  persist(record: PersistedRecord): void {
    this.output.persist(record);
  }

  send(to: ReplicaId | "all", msg: PeerMessage): void {
    this.output.effect({ kind: "send", to, msg });
  }

  emit(effect: Effect): void {
    this.output.effect(effect);
  }

  /** Whether two byte strings hold the same bytes (the runtime's comparison when it gives one). */
  sameBytes(a: Uint8Array, b: Uint8Array): boolean {
    return this.crypto.sameBytes === undefined ? bytesEqual(a, b) : this.crypto.sameBytes(a, b);
  }

  hashBatch(batch: readonly ClientRequest[]): Uint8Array {
    return digestOfBatch(this.crypto, batch);
  }

  signed<M extends { sig: Uint8Array } & Parameters<typeof signingBytes>[0]>(m: M): M {
    m.sig = this.crypto.sign(signingBytes(m, this.cfg.clusterId));
    return m;
  }

  verify(m: Parameters<typeof signingBytes>[0]): boolean {
    return verifySigned(this.certContext, m);
  }
}
