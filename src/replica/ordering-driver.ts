/**
 * Drives the sans-IO ordering core with real time, real crypto, the peer mesh and the
 * replica's storage (src/README.md §9, rules 1-4): ticks from a timer, messages from the
 * mesh, requests from clients; what each step returns becomes durable records, sends,
 * decided batches, checkpoints and state transfers.
 *
 * Persist before effect (the core's contract, src/core/ordering/types.ts): every record
 * of a step's Ready is staged in the storage's group commit, and each of its effects is
 * deferred until the transaction holding those records is durable. One transaction per
 * event-loop turn carries every record of that turn (storage/group-commit.ts).
 *
 * Restart: the constructor rebuilds the channel state machine and the core's records
 * from the data directory (storage/recovery.ts) before anything else happens, so the
 * replica rejoins where it stopped. A replica behind the stable checkpoint fetches the
 * state from its peers (state-transfer.ts), which it also serves to them.
 */
import { FatalError, type FatalHandler, throwFatal } from "./fatal.ts";
import { encodeEnvelope, readEnvelope, TRANSFER_MESSAGE_KINDS } from "./peer-messages.ts";
import { type ClusterConfig, largestGroupSize, largestViewChangeF } from "../config/cluster.ts";
import { sign, verify } from "../crypto/ed25519.ts";
import { bytesEqual, nativeBytesEqual } from "../crypto/encoding.ts";
import { sha256 } from "../crypto/hash.ts";
import { formatPublicKey, type SigningKey } from "../crypto/keys.ts";
import { REQUEST_BYTES_MAX } from "../core/channels/constants.ts";
import type { ChannelMachine } from "../core/channels/machine.ts";
import type { Priority } from "../core/channels/types.ts";
import type { SnapshotImport } from "../core/channels/snapshot.ts";
import { type CoreConfig, type CoreParameters, DEFAULT_PARAMETERS, leaderOf, makeConfig } from "../core/ordering/config.ts";
import type { ClientRequest, DecidedItem, Forward, PeerMessage, StateResponse } from "../core/ordering/messages.ts";
import { PEER_MESSAGE_KINDS, REQUEST_SPAN_MAX, SIGNED_VOTE_BYTES_MAX, validatePeerMessage } from "../core/ordering/messages.ts";
import { OrderingCore } from "../core/ordering/core.ts";
import { decidedItemBytes } from "../core/ordering/index.ts";
import type { CoreCrypto, CoreInput, Effect, PersistedRecord, Ready, Refusal } from "../core/ordering/types.ts";
import type { Canonical } from "../../wire/canonical.ts";
import { toHex } from "../../wire/bytes.ts";
import type { ErrorCode } from "../../wire/types.ts";
import type { AuditKind, AuditLog } from "./audit.ts";
import type { Log } from "./log.ts";
import type { Metrics } from "./metrics.ts";
import { UrgentWindow } from "./shedding.ts";
import { RateLimiter } from "./rate.ts";
import { type Clock, type ClockTimer, type PeerTransport, systemClock } from "./ports.ts";
import { admissibleForwards } from "./forwards.ts";
import { ADMIN_SPACE, urgencyOfSpace, VerifiedRequests, verifiedCacheKey } from "./requests.ts";
import { type CoreHost, CoreStepFailed, InlineCoreHost, ThreadCoreHost } from "./ordering-host.ts";
import { StateTransfer, validateTransferMessage } from "./state-transfer.ts";
import type { EpochStart, ReplicaStorage, SnapshotHead } from "./storage/index.ts";
import { dropGoneUnordered, type Recovered, recover, restoreKeptUnordered, unorderedChannels } from "./storage/recovery.ts";
import { SnapshotKeeper } from "./storage/snapshots.ts";
import { partBytesFor } from "./storage/stream.ts";
import type { Membership } from "../core/channels/membership.ts";
import { EpochView } from "./epochs.ts";

/** One core tick in real time (core/ordering/PROTOCOL.md §10: 1 tick = 10 ms). */
export const TICK_MS = 10;
/** Exit status when this replica's own state can no longer be trusted (EX_SOFTWARE); systemd restarts it. */
export const EXIT_STATE_UNTRUSTED = 70;

export interface OrderingDriverOptions {
  /** What to do when this replica's state can no longer be trusted (fatal.ts); thrown by default. */
  readonly onFatal?: FatalHandler;
  readonly config: ClusterConfig;
  readonly id: number;
  readonly key: SigningKey;
  readonly log: Log;
  readonly metrics: Metrics;
  /** Where suspected leaders and flooding or misbehaving peers are reported (audit.ts). */
  readonly audit?: AuditLog;
  /** Views installed and leaders suspected, for `$sys.events` (sys-channels.ts). */
  readonly onGroupEvent?: (kind: string, fields: Record<string, unknown>) => void;
  /** The core found a peer flooding it (Aardvark): the runtime mutes it for a while (peer-inbox.ts). */
  readonly onPeerFlooding?: (peer: number) => void;
  /**
   * A peer sent what no correct replica sends (`reason` says what): bytes that are no
   * envelope, or a message of a kind this version knows that does not validate. The
   * runtime mutes it (peer-inbox.ts), as its precheck does for the other proofs.
   */
  readonly onPeerFaulty?: (peer: number, reason: string) => void;
  /** Where peer messages go: the PeerMesh (or the simulator's network). */
  readonly mesh: PeerTransport;
  /** Time and timers (ports.ts); the system clock by default, a simulated one in the simulator. */
  readonly clock?: Clock;
  /**
   * Replaces the ed25519 signatures of peer messages by a cheaper scheme with the same
   * contract (the simulator's `--crypto fast`); real signatures when not set.
   */
  readonly peerSignatures?: Pick<CoreCrypto, "sign" | "verify">;
  /** Overrides of the ordering core's parameters (the simulator's short checkpoint interval); none in a replica. */
  readonly coreParameters?: Partial<CoreParameters>;
  /**
   * Executes a decided batch; returns how many of its requests no correct leader proposes
   * (`RefusedFirstRequests`: a client's first request refused as from an unknown channel,
   * key or admin), which the driver holds against the view's leader.
   */
  readonly onDecided: (requests: readonly ClientRequest[], decidedSeq: number) => number;
  readonly onResendReply: (space: string, seq: number) => void;
  readonly onRefused: (space: string, seq: number, reason: Refusal) => void;
  /** The machine jumped to an installed snapshot: what live subscribers were sent may no longer continue from there. */
  readonly onSnapshotInstalled?: (seq: number) => void;
  /** Unordered channels a state transfer made new to the machine: the events of them the data directory kept go back in (default: restoreKeptUnordered, unlogged). */
  readonly restoreKept?: (fresh: readonly { readonly tag: string; readonly gen: number }[], seq: number) => void;
  /**
   * A membership change that removed this replica took effect (src/replica/epochs.ts):
   * it no longer orders; the runtime stops serving clients.
   */
  readonly onRemoved?: (epoch: number, seq: number) => void;
  /** A new epoch's core started here (its number, first seq, group). */
  readonly onEpochStarted?: (view: EpochView) => void;
  /**
   * A replica joining a running group (src/cli/join.ts): the group's current epoch and
   * its starting checkpoint, from f+1 matching answers. Used while the data directory is
   * not in that epoch yet: the core starts there and fetches the state (state transfer).
   * A data directory already in that epoch resumes from its stored epoch start.
   */
  readonly join?: JoinEpoch;
  /** The channel state machine the decided batches run on (snapshots, restore). */
  readonly machine: ChannelMachine;
  readonly storage: ReplicaStorage;
  /**
   * Runs the ordering core on an ordering thread of its own (src/replica/ordering-host.ts)
   * instead of the event loop; stops the replica (onFatal) if that thread fails.
   */
  readonly orderingThread?: boolean;
}

export interface OrderingStatus {
  readonly view: number;
  readonly leader: number;
  readonly status: string;
  readonly lastExecuted: number;
  readonly stableCheckpoint: number;
  /** The checkpoint seq a state transfer is fetching, or null. */
  readonly transferring: number | null;
  /** The seq of the base snapshot on disk (0: none). */
  readonly baseSnapshot: number;
  /** Restarted without a clean stop, it votes on no new proposal until past its fence (core PROTOCOL.md §2). */
  readonly votesFenced: boolean;
  /** Its store lost records: it votes in no view until a view change it takes part in (core fence.ts). */
  readonly lostRecordsFenced: boolean;
}

/** A request's client name (`<64 hex>:<tag of at most 128 bytes>`) and fields, as the core counts them. */
const REQUEST_NAME_ROOM_BYTES = 256;

/** The PEER frame (seq, MAC), the envelope, the message's and a decided item's own fields. */
const PEER_ENVELOPE_FIELDS_BYTES = 4 * 1024;
/** A decided item's own PREPARE and COMMIT beside its certificate (core checkpoints.ts decidedItem). */
const DECIDED_ITEM_OWN_VOTES = 2;

/**
 * Room a peer frame needs besides the requests it carries: the PEER frame (seq, MAC), the
 * message's own fields, and for a decided batch in a STATE_RESPONSE its certificate's
 * COMMITs (unsigned, each with its all-zero signature field), the sender's own two votes
 * and the stable checkpoint's proof. A certificate holds Q = ceil((n+f+1)/2) COMMITs, and
 * one relayed from a peer up to n (certs.ts wellFormedDecisionCert), as does a stable
 * proof; so both are counted for the largest group whose NEW_VIEW fits these frames
 * (largestGroupSize: set-f and add-replica keep every epoch's group within it), or 3f+1
 * for the f given if larger. A request or a batch may use the rest of a frame, no more,
 * so every PRE_PREPARE, FORWARD and STATE_RESPONSE item fits the frames the replicas
 * accept from each other.
 */
export function peerEnvelopeBytes(frameBytesMax: number, f: number): number {
  const n = Math.max(3 * f + 1, largestGroupSize(frameBytesMax));
  const votes = n + DECIDED_ITEM_OWN_VOTES + n;
  return Math.min(Math.floor(frameBytesMax / 4), PEER_ENVELOPE_FIELDS_BYTES + votes * SIGNED_VOTE_BYTES_MAX);
}

/** The ordering core's configuration for this cluster (core/ordering/PROTOCOL.md §10 defaults, sized to the cluster's limits). */
/** The error code a client is sent for each refusal of the core (replica.ts says why in words). */
const REFUSAL_CODES: Record<Refusal, ErrorCode> = {
  invalid: "BAD_REQUEST",
  quarantined: "UNAUTHORIZED",
  window: "OUT_OF_ORDER",
  overloaded: "OVERLOADED",
};

/** PRE-PREPAREs timed for the ordering histogram at once (a window's worth; more: start again). */
const PROPOSALS_TIMED_MAX = 4096;
/**
 * Bytes of decisions a peer is sent from the decided log per second at most (the core's
 * `serveDecided`), and the depth of its bucket. The core answers a peer at most once a
 * tick, each answer up to batch_bytes_max: without this a faulty peer asking every tick
 * would have this replica read and send a hundred of them a second. An honest one
 * catching up from an older state asks as fast as the answers come; 16 MiB/s is far above
 * the rate a group decides at (README, Performance), so it still gains on the group.
 */
export const LOG_SERVE_BYTES_PER_SECOND = 16 * 1024 * 1024;
export const LOG_SERVE_BURST_BYTES = 4 * 1024 * 1024;

/** A peer's misbehaviour is logged at most this often (it is always counted). */
const MISBEHAVIOUR_LOG_INTERVAL_MS = 60_000;

/** The epoch a joining replica starts in: the group and the checkpoint the epoch started from. */
export interface JoinEpoch {
  readonly membership: Membership;
  readonly start: { readonly seq: number; readonly digest: Uint8Array };
}

/** Messages of another epoch are logged at most this often per peer (they are always counted). */
const OTHER_EPOCH_LOG_INTERVAL_MS = 10_000;
/** A peer's messages (or forwarded requests) refused for one reason are logged at most this often; they are always counted. */
const REFUSED_LOG_INTERVAL_MS = 10_000;

/** A peer still in an ended epoch is sent the proof that ended it at most this often. */
const PROOF_RESEND_MS = 1000;

/**
 * The proofs of this many of the last epoch switches are kept (with the states at their
 * switch points: SnapshotKeeper.pin), so a replica that many epochs behind walks forward
 * one epoch at a time (src/core/ordering/PROTOCOL.md §13). One further behind is told to
 * rejoin (it is logged here and there).
 */
export const SWITCH_PROOFS_KEPT = 4;
/**
 * Clients' first requests refused as unknown (noteRefused) one view's decisions may hold
 * before this replica suspects its leader: far above what a channel destroyed or a key
 * unregistered under in-flight first publishes gives, and a few blocks of client-table
 * rows per faulty leadership instead of unbounded ones.
 */
export const REFUSED_FIRST_REQUESTS_PER_VIEW_MAX = 1_024;

/**
 * Counts, per view, the requests a view's decisions held that no correct leader proposes:
 * a client's first request (seq 1: it makes the client a row of the replicated client
 * table) refused at execution. Proposals are checked for signatures only (a backup cannot
 * judge a registration its own execution may not have reached yet), so a faulty leader can
 * sign requests with keys it makes up, each adding a row for good: enough of them and
 * checkpoints outgrow what a restart or a state transfer reads. A correct leader admits a
 * client's first request only from a key registered on an existing channel of the request's
 * kind (or an admin key), so it is refused at execution only when a registration or a
 * channel went away meanwhile, or an admin's first command fails. The seqs a view's
 * NEW_VIEW carries over (up to its maxS) re-propose earlier views' batches and are not its
 * leader's doing: they are left out. Every correct replica that executes the view's
 * decisions counts the same; past the bound they suspect the leader and the view changes.
 */
export class RefusedFirstRequests {
  private view = -1;
  private inView = 0;
  /** The installed view whose NEW_VIEW carried seqs over, and the last of them. */
  private carriedView = -1;
  private carriedUpTo = 0;

  /** Requests counted in the view last noted. */
  get count(): number {
    return this.inView;
  }

  /** `view` was installed; its NEW_VIEW re-proposed the seqs up to `carriedUpTo`. */
  installed(view: number, carriedUpTo: number): void {
    this.carriedView = view;
    this.carriedUpTo = carriedUpTo;
  }

  /** Counts `refused` more in the decision of `seq` in `view`; true once, when the view's count passes the bound. */
  note(view: number, seq: number, refused: number, bound = REFUSED_FIRST_REQUESTS_PER_VIEW_MAX): boolean {
    if (view === this.carriedView && seq <= this.carriedUpTo) return false;
    if (view !== this.view) {
      this.view = view;
      this.inView = 0;
    }
    const before = this.inView;
    this.inView += refused;
    return before <= bound && this.inView > bound;
  }
}

/** Messages of the next epoch held until this replica switches to it (the switch is at most a few checkpoints' votes away). */
const NEXT_EPOCH_HELD_MAX = 4096;
/**
 * Bytes of next-epoch messages held from one peer: enough for the votes and proposals of
 * the few checkpoints a switch takes; past it they are refused like other epochs' (the
 * sender retransmits once this replica switched).
 */
const NEXT_EPOCH_HELD_BYTES_PER_PEER_MAX = 8 * 1024 * 1024;

/** What a joining replica's core gets back of its records when it joins the same epoch again: its votes there (joinRecords). */
const JOIN_VOTE_RECORDS: ReadonlySet<PersistedRecord["t"]> = new Set(["view", "accept", "prepared"]);

/** Whether two starts of an epoch are the same checkpoint. */
function sameStart(
  a: { readonly seq: number; readonly digest: Uint8Array },
  b: { readonly seq: number; readonly digest: Uint8Array },
): boolean {
  return a.seq === b.seq && nativeBytesEqual(a.digest, b.digest);
}

/** Requests submitted here and not yet executed, remembered to submit them again to a new epoch's core. */
const SUBMITTED_REMEMBERED_MAX = 16_384;

export function coreConfigFor(config: ClusterConfig, id: number, overrides: Partial<CoreParameters> = {}): CoreConfig {
  // A decided batch travels with 2f+1 COMMITs of its epoch, whose f set-f may raise above
  // the file's, up to the largest f whose NEW_VIEW fits a frame (membership.ts): sized for
  // that f, the room is the same in every epoch and at every replica.
  const fMax = Math.max(config.f, largestViewChangeF(config.limits.frameBytesMax));
  const room = config.limits.frameBytesMax - peerEnvelopeBytes(config.limits.frameBytesMax, fMax);
  // The core counts a request's client name and fields too (requestBytes): room for a
  // request of REQUEST_BYTES_MAX signed bytes from a key on a tag of the longest name.
  const requestBytesMax = Math.min(room, REQUEST_BYTES_MAX + REQUEST_NAME_ROOM_BYTES);
  return makeConfig(
    // The id is the replica's rank in the cluster file's group, ascending ids (each epoch's core gets its own: epochs.ts); a replica joining with an id the file does not list gets rank 0 here.
    {
      id: Math.max(
        0,
        config.replicas.findIndex((replica) => replica.id === id),
      ),
      n: config.n,
      f: config.f,
      mode: "bft",
      clusterId: config.name,
    },
    {
      // A request travels in one peer frame; a batch of requests must hold the largest one.
      requestBytesMax,
      batchBytesMax: Math.min(room, Math.max(DEFAULT_PARAMETERS.batchBytesMax, requestBytesMax)),
      requestSpanMax: Math.min(config.limits.batchEventsMax, REQUEST_SPAN_MAX),
      // Clients may keep this many requests in flight; the core must admit them all or
      // a refused early request would leave a gap that later ones wait behind.
      clientWindow: Math.max(DEFAULT_PARAMETERS.clientWindow, config.limits.clientInflightRequestsMax),
      // A key's requests over all its tags: room for a relay publishing to a few tags at
      // once, not for one key to take the pool.
      keyPendingMax: 4 * Math.max(DEFAULT_PARAMETERS.clientWindow, config.limits.clientInflightRequestsMax),
      ...overrides,
    },
  );
}

export class OrderingDriver {
  /** The ordering core, on the event loop or on the ordering thread. */
  private readonly core: CoreHost;
  /** The group the core runs with (epochs.ts); ranks in the core, ids everywhere else. */
  private epochView: EpochView;
  /** Bumped at every epoch switch: effects of an older core are dropped. */
  private coreGeneration = 0;
  /** Writes staged through the latest `view`, `stable` or `snapshot` record: what a PRE_PREPARE or PREPARE waits for (handleReady). */
  private voteFenceMark = 0;
  /** The checkpoint at which the current epoch ends (a decided membership change took effect there), with its record. */
  private switchAt: { seq: number; base: Extract<PersistedRecord, { t: "snapshot" }> | null } | null = null;
  /**
   * The ended epochs' stable proofs of their switch points, oldest first (the last
   * SWITCH_PROOFS_KEPT switches seen here, kept on disk across restarts: storage
   * stageSwitchProofs), for a peer still in one of those epochs.
   */
  private readonly switchProofs: {
    epoch: number;
    seq: number;
    digest: Uint8Array;
    proof: Extract<PersistedRecord, { t: "stable" }>["proof"];
  }[] = [];
  /** A fetched state that ends the epoch, installed and not yet adopted as the base: it is, at the switch (installClaimed). */
  private adoptAtSwitch: SnapshotHead | null = null;
  /** The switch point became stable in this step: the switch follows the step's effects. */
  private switchDue = false;
  /** The last stable checkpoint this replica persisted, with its proof (the switch may come after it). */
  private lastStable: { seq: number; digest: Uint8Array; proof: Extract<PersistedRecord, { t: "stable" }>["proof"] } | null = null;
  /** Started from a join (options.join) with a data directory of an older epoch: the core began empty in the group's epoch (until its state is installed). */
  private joining = false;
  /** Joining the epoch this data directory already began joining (a restart before the state came): its votes there are kept (joinRecords). */
  private joinResumed = false;
  /** The last membership change the replay of the decided log went through: its seq and the epoch it began (refuseUnswitched). */
  private replayedChange: { seq: number; epoch: number } | null = null;
  /** This replica is not a member of the current epoch: it orders nothing any more. */
  private removed = false;
  /** Requests submitted here and not executed yet, by client space and seq (bounded). */
  private readonly submitted = new Map<string, ClientRequest>();
  /** Peer messages of the next epoch, held until this replica gets there (bounded, oldest kept). */
  private nextEpochHeld: { from: number; bytes: Uint8Array; key: Uint8Array }[] = [];
  /** Bytes held in nextEpochHeld, by peer. */
  private readonly nextEpochHeldBytes = new Map<number, number>();
  /** When each peer still in the ended epoch was last sent the proof that ended it. */
  private readonly proofSentAt = new Map<number, number>();
  /** When a message of another epoch from each peer was last logged. */
  private readonly otherEpochLoggedAt = new Map<number, number>();
  /** By "peer:reason": when a refusal was last logged, and how many since (refusedByPeer). */
  private readonly refusedLog = new Map<string, { at: number; unlogged: number }>();
  private readonly baseCoreConfig: CoreConfig;
  private readonly verified = new VerifiedRequests();
  private readonly keeper: SnapshotKeeper;
  private readonly transfer: StateTransfer;
  private readonly partBytes: number;
  private readonly checkpointInterval: number;
  /** When each peer's misbehaviour was last logged. */
  private readonly misbehaviourLoggedAt = new Map<number, number>();
  /** Admin keys (hex): the only keys whose admin requests a peer may forward here. */
  private readonly adminKeys: ReadonlySet<string>;
  private timer: ClockTimer | null = null;
  private readonly clock: Clock;
  /** Urgent requests arrived from clients lately: a base snapshot being written gives way (noteUrgent). */
  private readonly urgent = new UrgentWindow();
  /** The last decided seq executed on the machine (decisions run after their commit). */
  private appliedSeq = 0;
  private readonly refusedFirst = new RefusedFirstRequests();
  /** The highest seq each peer sent a COMMIT for: how far it has got (peer lag). */
  private readonly peerCommitSeq = new Map<number, number>();
  /** When each seq's PRE-PREPARE was first sent or seen (the clock's monotonic ms), for the ordering histogram. */
  private readonly proposedMs = new Map<number, number>();
  /**
   * Per peer: its budget of decided-log bytes. An answer is read only while the peer's
   * bucket holds more than zero, and then charged what it read (it may owe one answer).
   */
  private readonly logServeBudgets = new RateLimiter(LOG_SERVE_BYTES_PER_SECOND, LOG_SERVE_BURST_BYTES);
  /** The core is behind the lost-records fence (core fence.ts) and the store keeps asking for it (noteLostVotesFence). */
  private lostVotesFenced = false;
  /** The core generation started behind it (a later one, an epoch switch's, was started without it). */
  private lostVotesGeneration = 0;

  constructor(private readonly options: OrderingDriverOptions) {
    const { config, id, key, machine, storage, log, metrics } = options;
    this.clock = options.clock ?? systemClock;
    this.adminKeys = new Set(config.adminKeys.map(toHex));
    const crypto: CoreCrypto = {
      hash: sha256,
      sign: options.peerSignatures?.sign ?? ((bytes) => sign(key, bytes)),
      // The current epoch's keys by rank (a rotated key verifies nothing from the epoch it took effect).
      verify:
        options.peerSignatures?.verify ??
        ((rank, bytes, sig) => {
          const pub = this.epochView.keyOfRank(rank);
          return pub !== null && verify(pub, bytes, sig);
        }),
      verifyRequest: (req, atMs) => this.verifyRequest(req, atMs),
      sameBytes: nativeBytesEqual,
    };
    const coreConfig = coreConfigFor(config, id, options.coreParameters);
    this.baseCoreConfig = coreConfig;
    this.checkpointInterval = coreConfig.checkpointInterval;
    this.partBytes = partBytesFor(config.limits.frameBytesMax);
    this.keeper = new SnapshotKeeper({ storage, machine, partBytes: this.partBytes, log, metrics }, null);
    // The proofs of the last switches seen here, from before this start: a peer still in one
    // of those epochs is sent its proof, and the replay below captures their switch points'
    // states again where the log still goes through them.
    for (const kept of storage.switchProofs()) {
      this.switchProofs.push(kept);
      this.keeper.pin(kept.seq, SWITCH_PROOFS_KEPT);
    }
    const recovered = this.recoverFromDisk();
    this.policy = { urgencyOf: (client: string) => urgencyOfSpace(client, (tag) => machine.priorityOf(tag)) };
    this.epochView = this.recoveredEpoch();
    if (!this.joining) this.refuseOtherKey(this.epochView);
    const epochConfig = this.epochView.coreConfig(coreConfig, id);
    if (epochConfig === null) {
      // Removed while it was down: it keeps its data and orders nothing.
      this.removed = true;
      log.warn("this replica is not a member of the group: it was removed and orders nothing", { epoch: this.epochView.epoch });
      options.onRemoved?.(this.epochView.epoch, 0);
    }
    // A joining replica's core starts in the group's epoch without its state, and fetches it.
    const coreRecords = epochConfig === null ? [] : this.joining ? this.joinRecords(recovered.coreRecords) : recovered.coreRecords;
    // After a clean stop every record of the last run is on disk: no restart fence. After
    // records were lost (damage) the fence covers every view (core fence.ts).
    const startConfig: CoreConfig = storage.stoppedClean
      ? { ...(epochConfig ?? coreConfig), stoppedClean: true }
      : { ...(epochConfig ?? coreConfig), ...(storage.lostRecords ? { lostRecords: true } : {}) };
    const restored = new OrderingCore(startConfig, crypto, coreRecords, this.policy);
    this.lostVotesFenced = restored.status().lostVotesFenced;
    this.lostVotesGeneration = this.coreGeneration;
    const fence = restored.status().voteFence;
    if (this.lostVotesFenced) {
      // Its store cannot name the views and seqs it voted in: no PRE_PREPARE or PREPARE in
      // any view until it installs one it knows it never voted in (core fence.ts).
      log.warn(
        "records were lost (now or in a run that ended before its fence did): votes fenced in every view until a view change this replica takes part in",
        {
          view: restored.status().view,
        },
      );
    } else if (fence !== null) {
      // No new proposal or PREPARE from it in that view up to upToSeq: it follows its
      // peers' decisions there (core PROTOCOL.md §2, "Votes sent before their fsync").
      log.info("restarted without a clean stop: votes fenced", { view: fence.view, upToSeq: fence.seq });
    }
    if (!this.removed && !this.joining && restored.status().lastExecuted !== recovered.lastDecided) {
      log.error("restored core and state machine disagree", { core: restored.status().lastExecuted, machine: recovered.lastDecided });
      this.fatal("the restored core and state machine disagree");
    }
    if (options.orderingThread === true && options.peerSignatures !== undefined) {
      throw new Error("the ordering thread signs with the replica's key: it cannot take other peer signatures");
    }
    this.core =
      options.orderingThread === true
        ? new ThreadCoreHost({
            initial: restored,
            cfg: startConfig,
            restored: coreRecords,
            seed: key.exportSeed(),
            keys: this.epochKeys(),
            priorities: this.priorities(),
            crypto,
            policy: this.policy,
            onFailure: (reason) => {
              log.error("the ordering thread failed; stopping", { reason });
              this.fatal(reason);
            },
            onReady: () => log.info("ordering thread ready", { epoch: this.epochView.epoch }),
            onDropped: () => metrics.inc("ordering_thread_inputs_dropped_total"),
          })
        : new InlineCoreHost(restored, crypto, this.policy);
    this.transfer = new StateTransfer(
      {
        self: id,
        send: (to, bytes) => options.mesh.send(to, bytes),
        keeper: this.keeper,
        storage,
        machine,
        partBytes: this.partBytes,
        log,
        metrics,
        now: () => this.clock.now(),
        install: (importer, head) => storage.afterDurable(() => this.installSnapshot(importer, head)),
      },
      recovered.incoming,
    );
    metrics.gauge("state_transfer_target_seq", () => this.transfer.fetching ?? 0);
  }

  /**
   * Rebuilds the machine from the base snapshot and the decided log, and returns the
   * core's records (storage/recovery.ts). Runs before the replica listens.
   */
  private recoverFromDisk(): Recovered {
    const { storage, machine, log } = this.options;
    const startedMs = this.clock.monotonic();
    const recovered = recover({
      storage,
      machine,
      partBytes: this.partBytes,
      execute: (requests, seq) => {
        const before = machine.membership()?.epoch ?? 0;
        this.options.onDecided(requests, seq);
        this.appliedSeq = seq;
        const after = machine.membership()?.epoch ?? 0;
        if (after !== before) this.replayedChange = { seq, epoch: after };
      },
      afterSeq: (seq, clients, stableSeq) => {
        // Captures at the stable checkpoint and after it let this replica serve state
        // transfer right after a restart.
        if (seq % this.checkpointInterval === 0 && (seq >= stableSeq || this.keeper.isPinned(seq)))
          this.keeper.capture(seq, clients.export());
      },
    });
    this.keeper.setBase(recovered.base);
    this.appliedSeq = recovered.lastDecided;
    log.info("recovered from the data directory", {
      dir: storage.dir,
      baseSnapshot: recovered.base?.seq ?? 0,
      replayedDecisions: recovered.replayedDecisions,
      lastDecided: recovered.lastDecided,
      stableCheckpoint: recovered.stableSeq,
      unorderedBatches: recovered.restoredUnordered,
      corruptRows: storage.corruptAtOpen.length,
      quarantined: storage.quarantined,
      ms: Math.round(this.clock.monotonic() - startedMs),
    });
    return recovered;
  }

  private readonly policy: { urgencyOf: (client: string) => number };

  /**
   * A replica started with another key than its epoch names for it (the group rotated its
   * key and it was started again with the old one, say): every peer refuses that key at the
   * handshake, and the epoch verifies nothing it signs, so it could only dial and be refused
   * for ever. It stops at start instead, naming both keys. A replica whose key the group
   * rotated while it was behind joins under the new key (options.join), and is not judged here;
   * nor is one started with the new key of a rotation still pending, or with a cluster file of
   * a later epoch than its data directory holds.
   */
  private refuseOtherKey(view: EpochView): void {
    const { id, key, log, machine } = this.options;
    const own = view.members.find((member) => member.id === id);
    if (own === undefined || bytesEqual(own.key, key.publicKey)) return;
    // Restarted with the new key before the rotation took effect: its peers accept both keys
    // until the switch, which this replica makes in its turn.
    const next = machine.pendingMembership()?.next.members.find((member) => member.id === id);
    if (next !== undefined && bytesEqual(next.key, key.publicKey)) return;
    // A cluster file of a later group (exported since): this replica may be behind a rotation
    // it has not executed yet, and catches up to it (the switch's proof, then the state).
    if (this.options.config.epoch > view.epoch) return;
    const runs = formatPublicKey(key.publicKey);
    const named = formatPublicKey(own.key);
    log.error("this replica runs with another key than its group names for it", {
      epoch: view.epoch,
      key: runs,
      groupKey: named,
      hint: "if the group rotated this replica's key (rotate-replica-key), start it with the new key's file (--key)",
    });
    this.fatal(
      `replica ${id} runs with key ${runs}, but its data directory's group (epoch ${view.epoch}) names ${named} for it, and its peers refuse any other: ` +
        "if the group rotated its key (rotate-replica-key), start it with the new key's file (--key)",
    );
  }

  /**
   * The epoch the recovered machine is in, with the start stored at its switch (or at its
   * join). A machine ahead of the stored start (a stop between a change taking effect and
   * the switch) is not resumed: the replica stops and says how to rejoin, unless the
   * group's answer names that epoch from that checkpoint (joinsFromSwitchGap).
   */
  private recoveredEpoch(): EpochView {
    const { machine, storage, config } = this.options;
    const membership = machine.membership();
    const join = this.options.join;
    const at = membership?.epoch ?? 0;
    // Once it has the state, the machine is in the join epoch: the normal path below, which
    // never runs a core on another epoch's records.
    if (join !== undefined && at < join.membership.epoch) return this.startJoining(join);
    const stored = storage.epochStart();
    if (join !== undefined && this.joinsFromSwitchGap(join, at, stored)) return this.startJoining(join);
    if (stored !== null && stored.epoch > at) {
      // It began joining that epoch and has not got its state yet: only the group can say where to resume.
      this.options.log.error("the data directory stopped while joining an epoch", { epoch: stored.epoch, machine: at });
      this.fatal(
        `the data directory stopped while joining epoch ${stored.epoch} before it got the state; start it so it asks the group again, or move it aside`,
      );
    }
    if ((membership === null || membership.epoch === 0) && config.epoch > 0) {
      // The file lists a later epoch's group (exported): it is not the group this data
      // directory's epoch 0 ran with, so epoch 0 cannot resume under it. fitb replica asks
      // the group in this case (src/cli/join.ts fileIsAheadOfData).
      // A database moved aside as damaged at this start left the directory empty, after
      // fitb replica had read its epoch: the next start finds it new and asks the group.
      const why = storage.quarantined
        ? "the data directory's database was damaged and moved aside at this start (see 'storage corruption detected'), so it now holds nothing: start the replica again and it asks the group for its group and state (under systemd it is restarted by itself)"
        : "start it with the cluster's first file, or let it ask the group (fitb replica does when the directory is new)";
      this.options.log.error("the cluster file lists a later epoch than the data directory holds", { fileEpoch: config.epoch, what: why });
      this.fatal(`the cluster file lists the group of epoch ${config.epoch}, and the data directory holds epoch 0: ${why}`);
    }
    if (membership === null || membership.epoch === 0) {
      return new EpochView(
        0,
        config.f,
        config.replicas.map((r) => ({ id: r.id, host: r.host, port: r.port, peerPort: r.peerPort, key: r.publicKey })),
        null,
        config.name,
      );
    }
    const start = stored;
    if (start === null || start.epoch !== membership.epoch) this.refuseUnswitched(membership.epoch, start);
    this.options.log.info("resuming the epoch from the data directory", { epoch: membership.epoch, from: start.seq });
    // Started from the group's answer (a new key) in the epoch it is already in: later starts need not ask.
    if (join !== undefined && join.membership.epoch === membership.epoch) storage.stageJoined(join);
    return EpochView.of(membership, { seq: start.seq, digest: start.digest }, config.name);
  }

  /**
   * A replica joining the group's epoch (options.join) with a machine of an older one: its
   * core starts there without the state and fetches it. The epoch's start is stored first
   * (older epochs' core records dropped), so a restart resumes this epoch. Restarted
   * before the state came, it joins the same epoch again and keeps what it stored there
   * since: it votes while it fetches (nothing in the core waits for the state), and a core
   * started without those votes could sign others for the same view and seq.
   */
  private startJoining(join: JoinEpoch): EpochView {
    const { storage, log, config } = this.options;
    const epoch = join.membership.epoch;
    const stored = storage.epochStart();
    this.joining = true;
    if (stored !== null && stored.epoch > epoch) {
      // Dropping that epoch's votes for an older one would let a later join of it sign others.
      log.error("the group's answer names an older epoch than this data directory began joining", { epoch, began: stored.epoch });
      this.fatal(
        `the group answered epoch ${epoch}, but this data directory began joining epoch ${stored.epoch}: the replicas that answered are behind; start it again to ask again`,
      );
    }
    this.joinResumed = stored !== null && stored.epoch === epoch;
    if (stored !== null && this.joinResumed && !sameStart(stored, join.start)) {
      // Signatures bind the epoch, not its start: its votes there stay, and one of the two answers was not the group's.
      log.error("the group's answer names another start of the epoch this data directory began joining", {
        epoch,
        began: stored.seq,
        answered: join.start.seq,
      });
      this.fatal(
        `the group answered another start of epoch ${epoch} than this data directory began joining it from (seq ${stored.seq}, digest ${toHex(stored.digest)}): one of the answers was not the group's; check the cluster file (or pass --members-digest)`,
      );
    }
    const fields = { epoch, from: join.start.seq, members: join.membership.members.map((member) => member.id) };
    if (this.joinResumed) {
      log.info("joining the group again: restarted before it got the state, it keeps its votes in the epoch", fields);
    } else {
      storage.stageJoinEpoch({ epoch, seq: join.start.seq, digest: join.start.digest });
      log.info("joining the group: starting in its current epoch, fetching the state", fields);
    }
    return EpochView.of(join.membership, join.start, config.name);
  }

  /**
   * The records a joining replica's core starts from: none when it begins the join. Joining
   * again after a restart, its own votes in the epoch (`view`, `accept` and `prepared`
   * records: the rest its directory holds belong to the epoch it left, or are above its
   * replayed log), so the core regenerates them and fences the view it voted in (core
   * PROTOCOL.md §2), as any replica's restart does.
   */
  private joinRecords(recovered: readonly PersistedRecord[]): PersistedRecord[] {
    return this.joinResumed ? recovered.filter((record) => JOIN_VOTE_RECORDS.has(record.t)) : [];
  }

  /**
   * Whether a machine that stopped in the middle of its switch to epoch `at` (it executed
   * the checkpoint where the change took effect, and the switch was not stored: see
   * unswitchedCase) joins that epoch from the group's answer instead of stopping. That is
   * the case of a replica whose key was rotated while it lagged: the others switched and
   * refused its old key before it saw the checkpoint stable, and it is restarted with its
   * new key, so it asks the group (src/cli/join.ts). It joins as a replica of an older
   * epoch does: its core starts in the epoch without its state and fetches the state at
   * the epoch's start (checked against the answer's digest), which replaces its own. Its
   * core needs none of its records: they are the old epoch's, and it cast no vote in the
   * new one, since a new core records its view before its first vote (core.ts), every vote
   * waits for that record (handleReady), and it is staged after the switch's, which is not
   * on disk. Only when the answer's epoch starts at the very checkpoint its decisions
   * switched at; any other answer is refused as before, its data left as it is.
   */
  private joinsFromSwitchGap(join: JoinEpoch, at: number, stored: EpochStart | null): boolean {
    const change = this.replayedChange;
    if (join.membership.epoch !== at || change === null || change.epoch !== at || join.start.seq !== change.seq) return false;
    if (this.stoppedInSwitch(at, stored)) {
      this.options.log.warn("the data directory stopped in the middle of an epoch switch: joining that epoch from the group's answer", {
        epoch: at,
        checkpoint: change.seq,
      });
      this.compareOwnState(change.seq, join.start.digest);
      return true;
    }
    // Such a join stopped again before the state came: the stored start is a join's (not a
    // switch's) at that checkpoint, and its machine still reached the epoch by replaying its
    // own decisions (an installed state would be its base). It joins again, keeping its
    // votes there, as any joiner restarted before it got the state.
    return (
      stored !== null &&
      stored.epoch === at &&
      sameStart(stored, join.start) &&
      change.seq === this.appliedSeq &&
      this.options.storage.epochStartedByJoin()
    );
  }

  /**
   * A replica joining from the middle of its switch executed the epoch's starting
   * checkpoint itself: its own state there must be the group's (the answer's digest, vouched
   * for by f+1 replicas). The fetched state replaces it either way; a difference means this
   * data directory's state was wrong (damage the checksums did not catch, or a fault in this
   * replica), which the operator is told loudly and the metric counts.
   */
  private compareOwnState(seq: number, digest: Uint8Array): void {
    const own = this.keeper.capturedDigest(seq);
    if (own === null || nativeBytesEqual(own, digest)) return;
    this.options.metrics.inc("snapshot_digest_mismatches_total");
    this.options.log.error("this replica's own state at the epoch's start differs from the group's; the group's replaces it", {
      seq,
      own: toHex(own),
      group: toHex(digest),
    });
  }

  /** The stored start is the previous epoch's and the last decision replayed is the checkpoint where `epoch` took effect. */
  private stoppedInSwitch(epoch: number, stored: { readonly epoch: number } | null): boolean {
    const change = this.replayedChange;
    return change !== null && change.epoch === epoch && (stored?.epoch ?? 0) === epoch - 1 && change.seq === this.appliedSeq;
  }

  /**
   * The machine is in epoch `epoch` (a change took effect) and the stored epoch start is
   * another's: stops, saying which case this is (unswitchedCase).
   *
   * A stop in the middle of the switch is not resumed in the old epoch: the machine no
   * longer holds that epoch's group (only the next one), the old core may never have taken
   * its own checkpoint at the switch point (a restored core does not take it again), and
   * decisions past that point may have been kept and replayed.
   */
  private refuseUnswitched(epoch: number, stored: { readonly epoch: number } | null): never {
    const change = this.replayedChange;
    const fields = { epoch, stored: stored?.epoch ?? null, changedAt: change?.seq ?? null, lastDecided: this.appliedSeq };
    const { reason, what } = this.unswitchedCase(epoch, stored);
    this.options.log.error(reason, fields);
    this.fatal(`${what}; move it aside to rejoin by state transfer`);
  }

  /**
   * Which of the cases refuseUnswitched stops in, from the stored start and the replay of
   * the decided log. A stop between executing the checkpoint where the change took effect
   * and storing the switch leaves the previous epoch's start stored (none for epoch 0) and
   * that change at the last decision replayed (decisions past it are dropped as the epoch
   * ends). Decisions replayed past it mean the switch was stored and its record lost, or a
   * stop before the drop of those decisions was durable: the data cannot tell. Anything
   * else is a missing or damaged epoch record.
   */
  private unswitchedCase(epoch: number, stored: { readonly epoch: number } | null): { reason: string; what: string } {
    const change = this.replayedChange;
    const lastDecided = this.appliedSeq;
    const replayedSwitch = change !== null && change.epoch === epoch && (stored?.epoch ?? 0) === epoch - 1;
    const named = stored === null ? "no epoch" : `epoch ${stored.epoch}`;
    if (replayedSwitch && change.seq === lastDecided) {
      return {
        reason: "the data directory stopped in the middle of an epoch switch",
        what: `the data directory stopped in the middle of the switch to epoch ${epoch}: it executed checkpoint ${change.seq}, where the change took effect, and stopped before the switch was stored`,
      };
    }
    if (replayedSwitch) {
      return {
        reason: "the data directory's epoch record does not name the epoch its decisions switched to",
        what: `the data directory's epoch record names ${named}, and its decisions switched to epoch ${epoch} at checkpoint ${change.seq} and go on to seq ${lastDecided}: the record of the switch is missing or damaged, or it stopped during the switch with decisions past the checkpoint kept`,
      };
    }
    return {
      reason: "the data directory's epoch record is missing or damaged",
      what: `the data directory's epoch record is missing or damaged: it names ${named}, and the state is in epoch ${epoch} (decided to seq ${lastDecided})`,
    };
  }

  /** The current epoch's group (for status and the peer mesh). */
  get epoch(): EpochView {
    return this.epochView;
  }

  get isRemoved(): boolean {
    return this.removed;
  }

  /** The checkpoint the core was last told to pad to (padToPendingChange). */
  private paddedTo = 0;

  /**
   * A decided membership change takes effect at the checkpoint after it (src/core/ordering/
   * PROTOCOL.md §13), which an idle group never reaches. Every replica's core is told to
   * pad to it, so that the leader, whichever it is or becomes, proposes empty batches up
   * to that checkpoint when no client's request waits, and every backup accepts that
   * padding up to there only (holding what comes before it executed the change itself).
   * Checked each tick, so a change decided, restored at a restart or installed by state
   * transfer is seen alike; never from inside an effect, since a core step there would
   * queue its decisions ahead of the current step's later ones.
   */
  private padToPendingChange(): void {
    const pending = this.options.machine.pendingMembership();
    if (pending === null || pending.from <= this.paddedTo) return;
    this.paddedTo = pending.from;
    this.step({ kind: "pad", seq: pending.from });
  }

  /**
   * After a decided seq executed or a snapshot installed: a membership change that took
   * effect in the machine ends this epoch at that checkpoint. Old-epoch decisions above it
   * are never executed (nor kept on disk).
   */
  private noteMembership(seq: number): void {
    const membership = this.options.machine.membership();
    if (membership === null || membership.epoch <= this.epochView.epoch || this.switchAt !== null) return;
    this.switchAt = { seq, base: null };
    this.keeper.switchPending(seq);
    this.options.storage.stageDropDecidedAbove(seq);
    this.armSwitch();
    this.options.log.info("membership change decided: this epoch ends at its checkpoint", {
      epoch: this.epochView.epoch,
      next: membership.epoch,
      seq,
    });
  }

  /**
   * Starts the next epoch's core at the switch checkpoint, once the old epoch made it
   * stable (src/core/ordering/PROTOCOL.md §13): the same machine state, a new core with
   * the new group's ranks, quorums, keys and cluster id, and every request submitted here
   * and not executed submitted again. A replica the change removed stops ordering.
   */
  private switchEpoch(): void {
    const pending = this.switchAt;
    const membership = this.options.machine.membership();
    if (pending === null || membership === null || pending.base === null) return;
    const { log, id, storage } = this.options;
    this.switchAt = null;
    const view = EpochView.of(membership, { seq: pending.seq, digest: pending.base.stateDigest }, this.options.config.name);
    this.epochView = view;
    this.coreGeneration++;
    const cfg = view.coreConfig(this.baseCoreConfig, id);
    storage.stageEpochStart({ epoch: view.epoch, seq: pending.seq, digest: pending.base.stateDigest }, pending.base);
    const installed = this.adoptAtSwitch;
    this.adoptAtSwitch = null;
    if (installed !== null && installed.seq === pending.seq) this.keeper.adoptInstalled(installed);
    // A replica that joined the group keeps the group it is in, not the one it joined: a
    // start whose state came back short (damage found at open) rejoins this epoch from it,
    // as a joiner restarted before it got the state, instead of an older epoch's group.
    // Not a group that removed it: a later start then resumes from its own records (and
    // orders nothing), as before.
    if (cfg !== null && storage.hasJoined()) {
      storage.stageJoined({ membership, start: { seq: pending.seq, digest: pending.base.stateDigest } });
    }
    // A peer still in the ended epoch fetches the state at the switch point from here: from
    // the capture while this replica runs, from a base written there once it restarted
    // (staged after the epoch's start, so no start finds that base without it).
    this.keeper.pin(pending.seq, SWITCH_PROOFS_KEPT);
    const proof = this.lastStable?.seq === pending.seq ? this.lastStable.proof : [];
    if (!this.keeper.baseAtSwitch(pending.seq, proof))
      log.warn("no state held at the switch point to write a base of", { seq: pending.seq });
    if (cfg === null) {
      this.removed = true;
      this.options.metrics.inc("epoch_switches_total");
      log.warn("this replica was removed from the group: it stops ordering and serving clients", { epoch: view.epoch, seq: pending.seq });
      this.options.onRemoved?.(view.epoch, pending.seq);
      return;
    }
    this.core.replace(cfg, [pending.base], this.epochKeys());
    this.options.metrics.inc("epoch_switches_total");
    log.info("epoch started", {
      epoch: view.epoch,
      seq: pending.seq,
      n: view.n,
      f: view.f,
      rank: cfg.id,
      members: view.members.map((member) => member.id),
    });
    this.options.onEpochStarted?.(view);
    let again = 0;
    for (const [key, req] of [...this.submitted]) {
      if (this.core.lastExecutedOf(req.client) >= req.seq) {
        this.submitted.delete(key);
        continue;
      }
      again++;
      this.step({ kind: "request", req, authenticated: true });
    }
    if (again > 0) log.info("requests submitted again to the new epoch", { epoch: view.epoch, requests: again });
    const held = this.nextEpochHeld;
    this.nextEpochHeld = [];
    this.nextEpochHeldBytes.clear();
    for (const message of held) this.onPeerMessage(message.from, message.bytes, message.key);
  }

  /**
   * A peer's message of another epoch: counted, logged (rate-limited), and a peer still in
   * an ended epoch whose proof is kept here is sent the proof that ended it (it fetches the
   * state there and switches, then is sent the next one: one epoch at a time).
   */
  private otherEpoch(from: number, theirs: number): void {
    this.options.metrics.inc("peer_messages_rejected_total");
    this.options.metrics.inc("peer_messages_other_epoch_total");
    const now = this.clock.now();
    const ours = this.epochView.epoch;
    const proof = theirs < ours ? this.switchProofs.find((kept) => kept.epoch === theirs) : undefined;
    if (theirs < ours && proof === undefined) this.options.metrics.inc("epoch_proofs_unavailable_total");
    if (now - (this.otherEpochLoggedAt.get(from) ?? 0) >= OTHER_EPOCH_LOG_INTERVAL_MS) {
      this.otherEpochLoggedAt.set(from, now);
      if (theirs > ours) {
        this.options.log.warn("peer message of another epoch refused", {
          peer: from,
          epoch: theirs,
          ours,
          reason: "the peer is in a newer epoch",
          hint: "this replica waits for a peer to send the proof that ended its epoch, and the state there; if it never moves, it is further behind than its peers keep proofs for (or none of them holds that state any more): move its data directory aside, make it a new key (fitb keygen), give the group that key (fitb admin rotate-replica-key) and start it with the new key: it joins the current epoch by state transfer",
        });
      } else if (theirs < ours && proof === undefined) {
        const oldest = this.switchProofs[0]?.epoch;
        this.options.log.warn("peer message of another epoch refused: no proof of that epoch's end is kept here", {
          peer: from,
          epoch: theirs,
          ours,
          reason: "the peer is in an older epoch",
          kept: this.switchProofs.map((kept) => kept.epoch),
          why:
            oldest !== undefined && theirs < oldest
              ? `the peer is further behind than the last ${SWITCH_PROOFS_KEPT} epoch switches kept: it must rejoin: its data directory moved aside, a new key given by rotate-replica-key, started with that key`
              : "this replica holds no proof of that epoch's end (it joined the group after it, or its kept proofs could not be read): another peer that switched there may have it",
        });
      } else {
        const why = theirs < ours ? "the peer is in an older epoch" : "the peer is not a member of this epoch";
        this.options.log.warn("peer message of another epoch refused", { peer: from, epoch: theirs, ours, reason: why });
      }
    }
    if (proof !== undefined && now - (this.proofSentAt.get(from) ?? 0) >= PROOF_RESEND_MS) {
      this.proofSentAt.set(from, now);
      const stable = { seq: proof.seq, digest: proof.digest, proof: proof.proof };
      const msg = { t: "STATE_RESPONSE", kind: "decided", nonce: 0, items: [], stable, lastExecuted: proof.seq };
      this.options.mesh.send(from, encodeEnvelope("ordering", msg as unknown as Canonical, theirs));
    }
  }

  start(): void {
    // The first tick now, so the core has the clock before anything arrives.
    this.onTick();
    this.timer = this.clock.every(TICK_MS, () => this.onTick());
  }

  stop(): void {
    this.timer?.cancel();
    this.timer = null;
    this.core.stop();
  }

  /**
   * A request from an authenticated client session whose key signed it. With `verified`
   * (the runtime checked the signature, the header and decoded the stamp: requests.ts),
   * the check is remembered so the core's admission does not verify it again.
   */
  submit(req: ClientRequest, verified?: { readonly stamp: number; readonly bodyDigest: Uint8Array }): void {
    const mark = verified === undefined ? undefined : { cacheKey: verifiedCacheKey(req, verified.bodyDigest), stamp: verified.stamp };
    if (mark !== undefined) this.verified.remember(mark.cacheKey, mark.stamp);
    if (this.removed) return;
    this.submitted.set(`${req.client}#${req.seq}`, req);
    if (this.submitted.size > SUBMITTED_REMEMBERED_MAX) this.submitted.delete(this.submitted.keys().next().value as string);
    if (this.step({ kind: "request", req, authenticated: true }, undefined, mark)) return;
    // The ordering thread is too far behind to take it: refused as a full pending pool is,
    // so the client hears OVERLOADED at once and asks again, instead of waiting out its
    // resend timeout with a slot of its connection held.
    this.submitted.delete(`${req.client}#${req.seq}`);
    this.options.metrics.refused(REFUSAL_CODES.overloaded);
    this.options.onRefused(req.client, req.seq, "overloaded");
  }

  /**
   * An urgent (high or critical) request arrived here from a client: for URGENT_WINDOW_MS a
   * base snapshot being written yields to such requests (snapshots.ts,
   * BASE_URGENT_TICKS_PER_PART).
   */
  noteUrgent(): void {
    this.urgent.note(this.clock.monotonic());
  }

  /** The current epoch's public keys, by rank (what the ordering thread verifies peers with). */
  private epochKeys(): Uint8Array[] {
    return this.epochView.members.map((member) => member.key);
  }

  /** Every channel's priority (the leader's batch fill on the ordering thread reads them). */
  private priorities(): [string, Priority][] {
    return this.options.machine.listChannels().map((channel) => [channel.tag, channel.priority]);
  }

  /**
   * A peer message: an envelope for the ordering core or for state transfer
   * (peer-messages.ts). `key` is the public key the peer's session authenticated with:
   * an ordering message counts only if it is the epoch's key for that replica. COMMITs
   * carry no signature (core/ordering/PROTOCOL.md §3), and while a key rotation waits for
   * its switch the mesh takes both keys of the replica, so without this check a COMMIT
   * sent over the old key's session, or held for the next epoch and replayed at the
   * switch, would count as the rotated replica's vote.
   */
  onPeerMessage(from: number, bytes: Uint8Array, key: Uint8Array): void {
    const read = readEnvelope(bytes);
    if (!read.ok) return this.refuseMessage(from, read.reason, read.proves);
    const envelope = read.envelope;
    if (this.removed && envelope.kind === "ordering") return;
    if (envelope.kind === "state-transfer") {
      const m = validateTransferMessage(envelope.message, this.partBytes);
      if (m === null) {
        this.refuseMessage(from, "a state transfer message that is not valid", TRANSFER_MESSAGE_KINDS.has(kindOf(envelope.message)));
      } else this.transfer.onMessage(from, m);
      return;
    }
    // The epoch is checked first, for a clear reason: its signatures would not verify anyway
    // (the cluster id names the epoch).
    if (envelope.epoch === this.epochView.epoch + 1 && this.nextEpochKeyDiffers(from, key)) {
      this.otherKey(from, key, envelope.epoch);
      return;
    }
    if (envelope.epoch === this.epochView.epoch + 1 && this.mayHoldNextEpoch(from, bytes.length)) {
      // A peer switched first: its messages are for the core this replica is about to start.
      this.nextEpochHeld.push({ from, bytes, key });
      this.nextEpochHeldBytes.set(from, (this.nextEpochHeldBytes.get(from) ?? 0) + bytes.length);
      return;
    }
    if (envelope.epoch !== this.epochView.epoch) {
      this.otherEpoch(from, envelope.epoch);
      return;
    }
    const rank = this.epochView.rankOf(from);
    if (rank < 0) {
      this.otherEpoch(from, envelope.epoch);
      return;
    }
    const epochKey = this.epochView.keyOfRank(rank);
    if (epochKey === null || !nativeBytesEqual(epochKey, key)) {
      this.otherKey(from, key, this.epochView.epoch);
      return;
    }
    const msg = validatePeerMessage(envelope.message);
    if (msg === null)
      return this.refuseMessage(from, "an ordering message that is not valid", PEER_MESSAGE_KINDS.has(kindOf(envelope.message)));
    if (msg.t === "COMMIT" && msg.seq > (this.peerCommitSeq.get(from) ?? 0)) this.peerCommitSeq.set(from, msg.seq);
    else if (msg.t === "PRE_PREPARE") this.proposalSeen(msg.seq);
    this.step({ kind: "message", from: rank, msg: msg.t === "FORWARD" ? this.admissibleForwards(from, msg) : msg });
  }

  /**
   * A message of `from` refused for `reason`: counted and logged (rate-limited); with
   * `proves` (no correct replica sends it: the checks above are the same in every epoch and
   * at every replica of this version, and a later version's unknown kinds do not prove),
   * the runtime mutes the peer.
   */
  private refuseMessage(from: number, reason: string, proves: boolean): void {
    this.options.metrics.inc("peer_messages_rejected_total");
    this.refusedByPeer(from, reason);
    if (proves) this.options.onPeerFaulty?.(from, reason);
  }

  /** Whether the state transfer waits for the `part` of `seq` and `nonce` from `from` (which is then spared the byte budget). */
  awaitsTransferPart(from: number, seq: number, nonce: number): boolean {
    return this.transfer.awaitsPart(from, seq, nonce);
  }

  /** An ordering message over a session whose key is not `epoch`'s key for its sender: counted and logged (rate-limited). */
  private otherKey(from: number, key: Uint8Array, epoch: number): void {
    this.options.metrics.inc("peer_messages_rejected_total");
    this.options.metrics.inc("peer_messages_other_key_total");
    this.refusedByPeer(
      from,
      `an ordering message over a session opened with key ${toHex(key)}, not replica ${from}'s key in epoch ${epoch}`,
    );
  }

  /** Whether the next group (a decided change) names `from` with another key than its session's. */
  private nextEpochKeyDiffers(from: number, key: Uint8Array): boolean {
    const next = this.options.machine.membership();
    if (next === null || next.epoch !== this.epochView.epoch + 1) return false;
    const member = next.members.find((m) => m.id === from);
    return member !== undefined && !nativeBytesEqual(member.key, key);
  }

  /** A message (or forwarded requests) of `from` refused for `reason`: logged at most once per REFUSED_LOG_INTERVAL_MS per peer and reason, with the count since. */
  private refusedByPeer(from: number, reason: string, count = 1): void {
    const key = `${from}:${reason}`;
    const now = this.clock.monotonic();
    const last = this.refusedLog.get(key);
    if (last !== undefined && now - last.at < REFUSED_LOG_INTERVAL_MS) {
      last.unlogged += count;
      return;
    }
    this.refusedLog.set(key, { at: now, unlogged: 0 });
    this.options.log.warn("peer message refused", { peer: from, reason, count, alsoSinceLastLine: last?.unlogged ?? 0 });
  }

  /**
   * Whether a next-epoch message of `bytes` from `from` may wait here: only while this
   * replica's own switch is decided and pending, only from a member of the next group (over
   * a session of its next-epoch key: onPeerMessage refused any other first), and
   * within a count and a per-peer byte bound (a Byzantine member cannot fill memory with
   * messages for an epoch that is not coming).
   */
  private mayHoldNextEpoch(from: number, bytes: number): boolean {
    if (this.switchAt === null || this.nextEpochHeld.length >= NEXT_EPOCH_HELD_MAX) return false;
    const next = this.options.machine.membership();
    if (next === null || next.epoch !== this.epochView.epoch + 1 || !next.members.some((member) => member.id === from)) return false;
    return (this.nextEpochHeldBytes.get(from) ?? 0) + bytes <= NEXT_EPOCH_HELD_BYTES_PER_PEER_MAX;
  }

  /** How many decided seqs a peer is behind this replica, by the COMMITs it sent (0 if ahead). */
  peerLag(peer: number): number {
    return Math.max(0, this.core.status().lastExecuted - (this.peerCommitSeq.get(peer) ?? 0));
  }

  private proposalSeen(seq: number): void {
    if (this.proposedMs.has(seq)) return;
    // Seqs proposed in a view that then changed never decide here: bound what they leave.
    if (this.proposedMs.size >= PROPOSALS_TIMED_MAX) this.proposedMs.clear();
    this.proposedMs.set(seq, this.clock.monotonic());
  }

  /** A peer's FORWARD, less what this replica would not take from its own clients (forwards.ts). */
  private admissibleForwards(from: number, msg: Forward): Forward {
    const kept = admissibleForwards(msg, this.adminKeys, (tag, keyHex) => this.options.machine.isPublisherHex(tag, keyHex));
    const dropped = msg.requests.length - kept.requests.length;
    if (dropped > 0) {
      this.options.metrics.inc("forwarded_requests_dropped_total", dropped);
      this.refusedByPeer(from, "forwarded requests of keys not registered for them", dropped);
    }
    return kept;
  }

  /** The last executed seq of a client's sequence space (0 if none). */
  lastExecutedSeq(space: string): number {
    return this.core.lastExecutedOf(space);
  }

  status(): OrderingStatus {
    const s = this.core.status();
    return {
      view: s.view,
      leader: this.epochView.idOf(s.leader),
      status: s.status,
      lastExecuted: s.lastExecuted,
      stableCheckpoint: s.stableSeq,
      transferring: this.transfer.fetching,
      baseSnapshot: this.keeper.baseHead?.seq ?? 0,
      votesFenced: s.voteFence !== null,
      lostRecordsFenced: s.lostVotesFenced,
    };
  }

  private onTick(): void {
    if (this.removed) return;
    this.padToPendingChange();
    this.step({ kind: "tick", nowMs: this.clock.now() });
    // A transfer the core no longer wants is dropped before the keeper writes a base part:
    // reached by executing, its seq may be where the keeper now writes a base, in the
    // same snapshot rows.
    const core = this.core.status();
    this.transfer.cancelUnless(core.transferTo, core.lastExecuted);
    this.keeper.tick(this.urgent.active(this.clock.monotonic()));
    this.transfer.tick();
    // Writes no effect waited for (a vote's own record) are made durable within two ticks.
    this.options.storage.syncIdle();
  }

  /** Stops this replica: its state can no longer be trusted (EXIT_STATE_UNTRUSTED). */
  private fatal(reason: string): never {
    return (this.options.onFatal ?? throwFatal)(new FatalError(EXIT_STATE_UNTRUSTED, reason));
  }

  /**
   * Hands `input` to the core; its Ready is handled in input order (at once on the event
   * loop, later from the ordering thread), then `after` runs. A Ready of a core an epoch
   * switch replaced meanwhile is dropped whole (its records are of the ended epoch and
   * its effects moot); `after` still runs, since what it finishes (an installed snapshot's
   * bookkeeping) happened on this replica either way.
   */
  private step(input: CoreInput, after?: () => void, verified?: { cacheKey: string; stamp: number }): boolean {
    const generation = this.coreGeneration;
    try {
      return this.core.step(
        input,
        (ready) => {
          if (generation === this.coreGeneration) this.handleReady(ready);
          after?.();
        },
        verified,
      );
    } catch (error) {
      if (!(error instanceof CoreStepFailed)) throw error;
      // A core assertion failed: this replica's state can no longer be trusted. Stopping
      // is what a crash-tolerant group expects of it; systemd restarts it.
      this.options.log.error("ordering core assertion failed", { error: (error as Error).message });
      this.fatal(`ordering core assertion failed: ${(error as Error).message}`);
    }
  }

  /**
   * The core started behind the lost-records fence (its store lost records, now or in a
   * run that ended before the fence did): once the fence ends, the store stops asking the
   * next start for it (storage/index.ts LOST_VOTES_META).
   */
  private noteLostVotesFence(): void {
    const status = this.core.status();
    if (status.lostVotesFenced) return;
    this.lostVotesFenced = false;
    // An epoch switch built a new core without the fence (it orders the new epoch at once):
    // that is no view this replica knows it never voted in, so the store keeps asking the
    // next start for the fence.
    if (this.coreGeneration !== this.lostVotesGeneration) {
      this.options.log.warn("a new epoch's core started without the lost-records fence; the next start is fenced again", {
        epoch: this.epochView.epoch,
      });
      return;
    }
    this.options.storage.clearLostVotes();
    this.options.log.info("the lost-records fence ended: this replica votes again", { view: status.view });
  }

  /** A step's records into the group commit, in the core's order, and its effects after them. */
  private handleReady(ready: Ready): void {
    // The records are staged in the core's order; every effect waits until every record
    // staged before it is durable, except the `decided` records after the step's last
    // other record (core PROTOCOL.md §2, "Decided records do not hold back execution"):
    // the execution they name does not wait for their fsync, since Q replicas persisted
    // the prepared record behind each before their COMMITs, so a crash that loses one
    // loses nothing the group cannot decide again, identically. Staged before any effect
    // runs, they go into the same transaction as the execution's own writes, or an
    // earlier one, and every later effect (a CHECKPOINT sent, a reply of a later step)
    // waits for them.
    //
    // A PRE_PREPARE or PREPARE waits only for the records a restart fences its votes by
    // (core PROTOCOL.md §2, "Votes sent before their fsync"): the view's record and the
    // stable checkpoints. Its own `accept` record is written in the same turn, and a
    // crash that loses it leaves the restarted core unwilling to vote again where it may
    // have voted; so a proposal reaches the backups, and their PREPAREs the group, while
    // their records are still being synced, and two of a seq's four disk syncs in a row
    // leave its path.
    const generation = this.coreGeneration;
    const storage = this.options.storage;
    let mark = storage.stagedMark;
    for (const record of ready.persist) {
      this.persist(record);
      if (record.t !== "decided") mark = storage.stagedMark;
      if (record.t === "view" || record.t === "stable" || record.t === "snapshot") this.voteFenceMark = storage.stagedMark;
    }
    for (const effect of ready.effects) {
      const run = (): void => {
        // An effect of the previous epoch's core, queued before the switch: moot.
        if (generation === this.coreGeneration) this.perform(effect);
      };
      if (effect.kind === "send" && (effect.msg.t === "PRE_PREPARE" || effect.msg.t === "PREPARE")) {
        storage.afterDurableAhead(run, this.voteFenceMark);
      } else {
        storage.afterDurable(run, mark);
      }
    }
    if (this.lostVotesFenced) this.noteLostVotesFence();
    if (this.switchDue) {
      this.switchDue = false;
      this.options.storage.afterDurable(() => this.switchEpoch());
    }
  }

  private persist(record: PersistedRecord): void {
    const switchAt = this.switchAt;
    // The old epoch's decisions above its last checkpoint never execute: not kept either.
    if (switchAt !== null && record.t === "decided" && record.seq > switchAt.seq) return;
    this.options.storage.persist(record);
    if (record.t === "stable") {
      this.keeper.onStable(record.seq, record.digest, record.proof);
      this.lastStable = { seq: record.seq, digest: record.digest, proof: record.proof };
    }
    if (record.t === "checkpoint") this.keeper.checkCheckpoint(record.seq, record.stateDigest);
    if (switchAt === null || !("seq" in record) || record.seq !== switchAt.seq) return;
    if (record.t === "checkpoint" || record.t === "snapshot") {
      switchAt.base = {
        t: "snapshot",
        seq: record.seq,
        stateDigest: record.stateDigest,
        appDigest: record.appDigest,
        clients: record.clients,
        proof: [],
      };
    }
    this.armSwitch();
  }

  /**
   * Level-triggered: once the switch point is decided here, its checkpoint record is in
   * hand and the old epoch made it stable, in whatever order those three came (a lagging
   * replica may persist the others' stable proof before its own decision of that seq
   * executes), the switch follows the current step's effects (its own CHECKPOINT at the
   * switch point among them).
   */
  private armSwitch(): void {
    const pending = this.switchAt;
    const stable = this.lastStable;
    if (pending === null || pending.base === null || stable === null || stable.seq !== pending.seq) return;
    const epoch = this.epochView.epoch;
    if (!this.switchProofs.some((kept) => kept.epoch === epoch)) {
      this.switchProofs.push({ epoch, seq: stable.seq, digest: stable.digest, proof: stable.proof });
      if (this.switchProofs.length > SWITCH_PROOFS_KEPT) this.switchProofs.shift();
      this.options.storage.stageSwitchProofs(this.switchProofs);
    }
    this.switchDue = true;
  }

  private perform(effect: Effect): void {
    switch (effect.kind) {
      case "send": {
        if (effect.msg.t === "PRE_PREPARE") this.proposalSeen(effect.msg.seq);
        const view = this.epochView;
        const bytes = encodeEnvelope("ordering", effect.msg as unknown as Canonical, view.epoch);
        if (effect.to !== "all") this.options.mesh.send(view.idOf(effect.to), bytes);
        else if (view.epoch === 0) this.options.mesh.broadcast(bytes);
        else for (const member of view.members) if (member.id !== this.options.id) this.options.mesh.send(member.id, bytes);
        return;
      }
      case "decide":
        // A decision queued before a snapshot installed past it is already in that state.
        if (effect.seq <= this.appliedSeq) return;
        // Past the checkpoint that ends this epoch: the next epoch orders from there.
        if (this.switchAt !== null && effect.seq > this.switchAt.seq) {
          this.options.metrics.inc("decisions_past_epoch_end_total");
          return;
        }
        this.observeOrdering(effect.seq);
        this.noteRefused(effect.view, effect.seq, this.options.onDecided(effect.execute, effect.seq));
        this.appliedSeq = effect.seq;
        // Admin commands are what change channels and their priorities.
        if (this.core.followsPriorities && effect.execute.some((req) => req.client.endsWith(`:${ADMIN_SPACE}`))) {
          this.core.setPriorities(this.priorities());
        }
        for (const req of effect.batch) this.submitted.delete(`${req.client}#${req.seq}`);
        this.noteMembership(effect.seq);
        return;
      case "resendReply":
        this.options.onResendReply(effect.client, effect.seq);
        return;
      case "refused":
        this.options.metrics.refused(REFUSAL_CODES[effect.reason]);
        this.options.onRefused(effect.client, effect.seq, effect.reason);
        return;
      case "takeCheckpoint":
        // Effects run in order, so the machine is exactly at `seq` now, unless a snapshot
        // installed past it meanwhile (then this checkpoint is moot).
        if (effect.seq !== this.appliedSeq) return;
        this.keeper.capture(effect.seq, effect.clients);
        this.step({ kind: "checkpointReady", seq: effect.seq, appDigest: this.options.machine.digest() });
        return;
      case "suspect": {
        // Leaving the view (f+1 replicas suspect its leader, or a proof): the view left is
        // the one before effect.view (or lower); its leader is the suspect.
        const suspect = this.epochView.idOf(leaderOf(Math.max(0, effect.view - 1), this.epochView.n));
        // Named apart from `view` and `leader`, which elsewhere are the view a replica is in and its leader.
        this.options.log.warn("leaving the view", { next_view: effect.view, suspected_leader: suspect, reason: effect.reason });
        this.options.onGroupEvent?.("view-change", { leader: suspect, view: effect.view, reason: effect.reason });
        return;
      }
      case "leaderSuspected": {
        // This replica's own suspicion (a SUSPECT; it stays in the view until f+1 do).
        this.options.metrics.inc("leader_suspected_total");
        const suspect = this.epochView.idOf(leaderOf(effect.view, this.epochView.n));
        this.auditPeer("leader-suspected", "suspecting the leader", suspect, effect.reason, { view: effect.view });
        this.options.onGroupEvent?.("leader-suspected", { leader: suspect, view: effect.view, reason: effect.reason });
        return;
      }
      case "viewInstalled":
        this.refusedFirst.installed(effect.view, effect.carriedUpTo);
        this.options.log.info("view installed", {
          view: effect.view,
          leader: this.epochView.idOf(effect.leader),
          epoch: this.epochView.epoch,
        });
        this.options.onGroupEvent?.("view-installed", { view: effect.view, leader: this.epochView.idOf(effect.leader) });
        return;
      case "peerFlooding":
        this.options.metrics.inc("peer_flooding_total");
        this.options.onPeerFlooding?.(this.epochView.idOf(effect.peer));
        this.auditPeer(
          "peer-muted",
          "peer flooding: its messages are not taken for a while",
          this.epochView.idOf(effect.peer),
          "sends far more than the others",
        );
        return;
      case "peerMisbehaved": {
        this.options.metrics.inc("peer_misbehaviour_total");
        if (effect.mute === true) this.options.onPeerFaulty?.(this.epochView.idOf(effect.peer), effect.reason);
        // Once a minute per peer at most: a lying peer must not flood the log as well.
        const now = this.clock.now();
        if (now - (this.misbehaviourLoggedAt.get(effect.peer) ?? 0) < MISBEHAVIOUR_LOG_INTERVAL_MS) return;
        this.misbehaviourLoggedAt.set(effect.peer, now);
        this.auditPeer("peer-misbehaved", "peer misbehaved", this.epochView.idOf(effect.peer), effect.reason);
        return;
      }
      case "divergence":
        this.options.log.error("state diverged from the stable checkpoint", { seq: effect.seq });
        this.fatal(`state diverged from the stable checkpoint at seq ${effect.seq}`);
        return;
      case "fetchState": {
        // The signers first, in the core's order, then every other member: the digest the
        // signers vouched for is what protects the state, so any member may serve it, and
        // a faulty signer among f+1 cannot be the only source left.
        const signers = effect.from.map((rank) => this.epochView.idOf(rank));
        const others = this.epochView.members.map((member) => member.id).filter((id) => !signers.includes(id));
        this.transfer.fetch({ seq: effect.seq, stateDigest: effect.stateDigest, from: [...signers, ...others], proof: effect.proof });
        return;
      }
      case "serveDecided":
        return this.serveDecided(effect);
      default: {
        const unreachable: never = effect;
        return unreachable;
      }
    }
  }

  /** An audit line about a peer: its id, key and address in the current epoch's group. */
  private auditPeer(kind: AuditKind, msg: string, peer: number, reason: string, extra: Record<string, unknown> = {}): void {
    const entry = this.epochView.members.find((member) => member.id === peer);
    const fields = { peer, reason, ...extra };
    const audit = this.options.audit;
    if (audit === undefined) this.options.log.warn(msg, fields);
    else if (entry === undefined) audit.warn(kind, msg, fields);
    else audit.warn(kind, msg, { ...fields, key: entry.key, address: `${entry.host}:${entry.port}` });
  }

  private observeOrdering(seq: number): void {
    const proposed = this.proposedMs.get(seq);
    if (proposed === undefined) return;
    this.proposedMs.delete(seq);
    this.options.metrics.ordering.observe((this.clock.monotonic() - proposed) / 1000);
  }

  /**
   * Answers a peer catching up from an older state with the decisions it asked for, from
   * the decided log on disk (the core no longer holds them: they are at or below its
   * stable checkpoint). Only this epoch's: a decision before the epoch's start carries
   * COMMITs of another group.
   */
  private serveDecided(effect: Extract<Effect, { kind: "serveDecided" }>): void {
    const items: DecidedItem[] = [];
    const first = Math.max(effect.seq, (this.epochView.start?.seq ?? 0) + 1);
    let bytes = 0;
    const peer = String(effect.to);
    const now = this.clock.monotonic();
    if (!this.logServeBudgets.positive(peer, now)) {
      // Dropped unanswered: the asker asks again (its catch-up probe), as for any answer lost.
      this.options.metrics.inc("state_decided_serve_refused_total");
      return;
    }
    if (first === effect.seq) {
      for (const record of this.options.storage.decisionsFrom(first)) {
        if (record.seq > effect.toSeq) break;
        const item: DecidedItem = { view: record.view, seq: record.seq, batch: record.batch, commits: record.commits, votes: [] };
        const size = decidedItemBytes(item);
        if (items.length > 0 && bytes + size > effect.bytesMax) break;
        items.push(item);
        bytes += size;
        if (record.seq === effect.toSeq) break;
      }
      this.logServeBudgets.charge(peer, bytes, now);
    }
    this.options.metrics.inc("state_decided_served_from_log_total", items.length);
    const msg: StateResponse = {
      t: "STATE_RESPONSE",
      kind: "decided",
      nonce: effect.nonce,
      items,
      stable: effect.stable,
      lastExecuted: effect.lastExecuted,
    };
    this.perform({ kind: "send", to: effect.to, msg });
  }

  /**
   * Installs a fetched state whose digest the transfer checked: into the machine, as the
   * base on disk, then into the core. Skipped when the core no longer wants it (it caught
   * up by executing meanwhile), since the machine may already be past that state.
   */
  private installSnapshot(importer: SnapshotImport, head: SnapshotHead): void {
    const generation = this.coreGeneration;
    // On the ordering thread, the core may have moved on since its last answer: it says
    // whether it still wants this state, and holds still until the install's step if so.
    this.core.claimTransfer({ seq: head.seq, stateDigest: head.stateDigest, proof: head.proof }, (wanted) => {
      // Answered by a core an epoch switch replaced: released, and the state dropped.
      const current = generation === this.coreGeneration;
      if (!current && wanted) this.core.releaseTransfer();
      this.installClaimed(importer, head, current && wanted);
    });
  }

  private installClaimed(importer: SnapshotImport, head: SnapshotHead, wanted: boolean): void {
    const { log, machine } = this.options;
    // A replica joining from the middle of its switch (joinsFromSwitchGap) executed up to
    // the epoch's start itself: the fetched state there replaces its own, since its core
    // has none until it installs one.
    const reached = this.joining ? this.appliedSeq > head.seq : this.appliedSeq >= head.seq;
    if (!wanted || reached) {
      if (wanted) this.core.releaseTransfer();
      this.transfer.installDeclined(head.seq);
      log.info("fetched state no longer needed", { seq: head.seq, applied: this.appliedSeq });
      // Its rows may be the keeper's base by now (the same seq, reached by executing).
      if (!this.keeper.owns(head.seq)) this.options.storage.stageDropSnapshot(head.seq);
      return;
    }
    const held = new Set(unorderedChannels(machine).map((channel) => `${channel.gen}:${channel.tag}`));
    const installed = machine.installSnapshot(importer);
    if (!installed.ok) {
      this.core.releaseTransfer();
      this.transfer.installDeclined(head.seq);
      log.error("fetched state does not install", { seq: head.seq, reason: installed.reason });
      this.options.storage.stageDropSnapshot(head.seq);
      return;
    }
    // Unordered channels new to this machine start empty; this replica's own events of them
    // that a start short of the seq that made them kept in its data directory go back in
    // now (recovery.ts restoreKeptUnordered).
    const fresh = unorderedChannels(machine).filter((channel) => !held.has(`${channel.gen}:${channel.tag}`));
    if (fresh.length > 0) {
      if (this.options.restoreKept !== undefined) this.options.restoreKept(fresh, head.seq);
      else restoreKeptUnordered(this.options, fresh);
    }
    // The rows of unordered channels the installed state no longer has (destroyed while
    // this replica was behind) are deleted, as a start would delete them.
    dropGoneUnordered(this.options);
    this.appliedSeq = head.seq;
    // A state that ends this epoch (a laggard fetched the switch point's) becomes the base
    // only with the switch (switchEpoch), in the same commit as the epoch's start or after
    // it: a base of the new epoch on disk under the old epoch's record is a directory no
    // start can resume. Until then its parts stay an incoming transfer, whole, which a start
    // installs again from disk.
    const endsEpoch = (machine.membership()?.epoch ?? 0) > this.epochView.epoch;
    if (endsEpoch) this.adoptAtSwitch = head;
    else this.keeper.adoptInstalled(head);
    this.noteMembership(head.seq);
    const clients = head.clients ?? [];
    this.keeper.capture(head.seq, clients);
    if (this.core.followsPriorities) this.core.setPriorities(this.priorities());
    this.step(
      {
        kind: "snapshotInstalled",
        seq: head.seq,
        stateDigest: head.stateDigest,
        appDigest: head.appDigest ?? new Uint8Array(0),
        clients,
        proof: [...head.proof],
      },
      () => this.snapshotTaken(head.seq),
    );
  }

  /** After the core's step on an installed snapshot: it must have taken it. */
  private snapshotTaken(seq: number): void {
    const { log, machine } = this.options;
    if (this.core.status().lastExecuted < seq) {
      // The machine now holds a state the core refused: nothing here can be trusted.
      log.error("the core refused an installed snapshot", { seq });
      this.fatal(`the core refused the snapshot installed at seq ${seq}`);
    }
    const join = this.options.join;
    if (this.joining && join !== undefined && machine.membership()?.epoch === join.membership.epoch) {
      // It has its state in the epoch it joined: later starts resume here without asking the group.
      this.joining = false;
      this.options.storage.stageJoined(join);
    }
    log.info("snapshot installed", { seq });
    this.options.onSnapshotInstalled?.(seq);
  }

  /** RefusedFirstRequests: past its bound in a view, this replica suspects that view's leader. */
  private noteRefused(view: number, seq: number, refused: number): void {
    if (refused === 0) return;
    this.options.metrics.inc("refused_first_requests_total", refused);
    if (!this.refusedFirst.note(view, seq, refused)) return;
    this.options.log.warn("leader suspected: it proposed requests no correct leader admits (keys or channels unknown here)", {
      view,
      refused: this.refusedFirst.count,
      bound: REFUSED_FIRST_REQUESTS_PER_VIEW_MAX,
    });
    this.step({ kind: "suspectLeader", view, reason: "refused-requests" });
  }

  /**
   * Checks a request's client signature, that its header matches the signed body, and the
   * timestamp bound (requests.ts `VerifiedRequests`, which remembers what passed).
   */
  private verifyRequest(req: ClientRequest, atMs: number | null): boolean {
    return this.verified.check(req, atMs, () => this.clock.now());
  }
}

export type { PeerMessage };

/** A decoded message's `t` field, or "" when it has none (not a map, or `t` not text). */
function kindOf(message: unknown): string {
  if (message === null || typeof message !== "object" || Array.isArray(message) || message instanceof Uint8Array) return "";
  const t = (message as { t?: unknown }).t;
  return typeof t === "string" ? t : "";
}
