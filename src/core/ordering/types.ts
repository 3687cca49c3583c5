/**
 * The ports of the ordering core: what it is given (crypto, inputs, restored records) and
 * what it asks the runtime to do (a `Ready` per step: records to persist, then effects).
 * The core is a pure function of its inputs: the same configuration, crypto and input
 * sequence give the same outputs, byte for byte.
 */
import type { ClientTableExport } from "./clients.ts";
import type { FaultMode, ReplicaId } from "./config.ts";
import type {
  Checkpoint,
  ClientRequest,
  Commit,
  NewView,
  PeerMessage,
  PreparedCert,
  PrePrepare,
  StableProof,
  ViewChange,
} from "./messages.ts";

/**
 * Injected, pure cryptography. The core never imports a crypto library; the runtime uses
 * native ed25519, the simulator whatever its seed budget allows. Implementations may
 * memoize `verify` and `verifyRequest` once they return true: `verify` is pure, and
 * `verifyRequest` may also refuse what is not valid *yet* (the runtime refuses a publish
 * stamped too far in the future) but never turns a true into a false.
 */
export interface CoreCrypto {
  /** SHA-256. */
  hash(bytes: Uint8Array): Uint8Array;
  /** Signs with this replica's key. Must be deterministic (ed25519 is). */
  sign(bytes: Uint8Array): Uint8Array;
  /** Whether `sig` is `replica`'s signature on `bytes`. */
  verify(replica: ReplicaId, bytes: Uint8Array, sig: Uint8Array): boolean;
  /**
   * Checks the client signature AND that client, seq and span match the signed body (and
   * the runtime's own validity rules; see above), judged at `atMs`: the timestamp of the
   * proposal that carries the request, or null for this replica's own clock (a request it
   * admits to its own pool). Monotonic in time: valid at some time, valid at every later one.
   */
  verifyRequest(req: ClientRequest, atMs: number | null): boolean;
  /**
   * Whether two byte strings hold the same bytes, through the runtime's native comparison:
   * a proposal's requests are compared whole with their twins in the pending pool
   * (clients.ts `verifiedTwin`), tens of KiB each under load, where `bytesEqual`'s loop
   * takes about 20 µs for 64 KiB against under 1 µs natively (src/crypto/encoding.ts).
   * Absent (the simulator): `bytesEqual`.
   */
  sameBytes?(a: Uint8Array, b: Uint8Array): boolean;
}

export type CoreInput =
  /** A peer message that passed `validatePeerMessage`; `from` is the authenticated transport sender. */
  | { kind: "message"; from: ReplicaId; msg: PeerMessage }
  /**
   * A client request. `authenticated` is true when the runtime's session with the sender
   * is authenticated as `req.client`; only then does a bad signature prove the client
   * faulty and quarantine it (otherwise anyone could get a correct client quarantined).
   */
  | { kind: "request"; req: ClientRequest; authenticated?: boolean }
  /**
   * One tick of time (10 ms in the runtime), with this replica's clock in ms since the epoch
   * (`nowMs`; the simulator leaves it out and the clock stays at 0). The clock only stamps
   * this leader's proposals and bounds how far ahead another leader's stamp may be.
   */
  | { kind: "tick"; nowMs?: number }
  /** The application's digest after executing `seq`, answering a `takeCheckpoint`. */
  | { kind: "checkpointReady"; seq: number; appDigest: Uint8Array }
  /**
   * The runtime suspects the leader of `view` for what it found executing that view's
   * decisions (the runtime's PROTOCOL.md §6 "Suspicion and evidence" entry: requests no
   * correct leader admits). A non-binding SUSPECT like the core's own; ignored for
   * another view than this replica's.
   */
  | { kind: "suspectLeader"; view: number; reason: "refused-requests" }
  /**
   * How far the runtime's external order has executed here (with `externalBarrier`,
   * PROTOCOL.md §12): a decided batch whose barrier is above it waits. Never decreases;
   * a lower number is ignored.
   */
  | { kind: "external"; seq: number }
  /**
   * The runtime needs every seq up to `seq` decided without waiting for clients: a
   * membership change takes effect at checkpoint `seq` (PROTOCOL.md §13, "Padding to the
   * switch"). A leader with nothing waiting proposes empty batches up to it. Never
   * decreases; a lower number is ignored.
   */
  | { kind: "pad"; seq: number }
  /**
   * The runtime installed a snapshot fetched after `fetchState`. The core recomputes the
   * state digest from `appDigest` and `clients` and accepts it only if it matches the
   * digest it asked for; `stateDigest` is the runtime's claim and must match too.
   */
  | {
      kind: "snapshotInstalled";
      seq: number;
      stateDigest: Uint8Array;
      appDigest: Uint8Array;
      clients: ClientTableExport;
      /**
       * The CHECKPOINTs that vouched for the state when it was fetched (`fetchState`'s
       * proof). Needed only for a state older than the current target: the core takes
       * it if f+1 members signed it and it is still ahead of lastExecuted.
       */
      proof?: Checkpoint[];
    };

/**
 * Why a request was not admitted: malformed or already-used numbers ("invalid"), the client
 * is quarantined after a bad signature, it is beyond the client's window of pending
 * requests ("window"), or the replica's pending pool is full ("overloaded").
 */
export type Refusal = "invalid" | "quarantined" | "window" | "overloaded";

/** Why a replica started a view change; for status and logs. */
export type SuspectReason =
  | "equivocation"
  | "bad-proposal"
  | "bad-new-view"
  | "request-timeout"
  | "stalled"
  | "heartbeat"
  | "throughput"
  | "starved"
  | "unfair"
  | "view-change-timeout"
  | "suspicion"
  | "join"
  | "behind"
  | "refused-requests";

/**
 * What one `step` asks of the runtime. CONTRACT: the runtime makes every record of
 * `persist` durable (fsync), in order, before it performs any of `effects`; the effects
 * then run in order. A crash may lose a suffix of the records (and then every effect),
 * or a suffix of the effects, never a middle part. Persist before send is thus a
 * property of the shape: nothing the core sends can get ahead of what it promised.
 * One exception: the runtime may perform a `decide` effect before the `decided` record
 * of its seq is durable (written in the same or an earlier transaction than the
 * execution's own writes), because Q replicas hold the `prepared` record behind it:
 * a crash that loses it leads to the same decision again (PROTOCOL.md §2, "Decided
 * records do not hold back execution").
 */
export interface Ready {
  /** Records to append to durable storage (see `compactRecords`), in order. */
  readonly persist: readonly PersistedRecord[];
  /** What to do once every record of `persist` is durable, in order. */
  readonly effects: readonly Effect[];
}

/** An effect of a step: performed after every record of its Ready is durable. */
export type Effect =
  /** `to: "all"` means every other replica. */
  | { kind: "send"; to: ReplicaId | "all"; msg: PeerMessage }
  /**
   * Sequence number `seq` is decided and executed. `batch` is the decided batch (every
   * replica sees the same bytes); `execute` are the requests that passed per-client
   * dedupe, in order: apply exactly these, and reply to their clients. `after` is the
   * batch's external barrier (PROTOCOL.md §12; 0 without `externalBarrier`): every replica
   * executes this batch with the same `after`, and only once its own external order
   * reached it.
   */
  | { kind: "decide"; seq: number; view: number; batch: ClientRequest[]; execute: ClientRequest[]; after: number }
  /**
   * After the decide of `seq` (a multiple of K): store the application snapshot at `seq`
   * together with `clients`, then answer with `checkpointReady(seq, appDigest)`.
   */
  | { kind: "takeCheckpoint"; seq: number; clients: ClientTableExport }
  /** The request (client, seq) already executed: send the cached reply again, if still cached. */
  | { kind: "resendReply"; client: string; seq: number }
  /** A client's request was not admitted (see Refusal); the runtime tells the client. */
  | { kind: "refused"; client: string; seq: number; reason: Refusal }
  /**
   * Fetch the snapshot at `seq` whose state digest is `stateDigest` from one of `from`
   * (try them in order), install it, then input `snapshotInstalled`. `proof` holds the
   * signed CHECKPOINTs that vouch for the digest.
   */
  | { kind: "fetchState"; seq: number; stateDigest: Uint8Array; from: ReplicaId[]; proof: Checkpoint[] }
  /**
   * Answer `to`'s request for the decisions `seq`..`toSeq`, which are at or below this
   * replica's stable checkpoint and so no longer in the core, from the decided log on
   * disk: send `to` a STATE_RESPONSE of kind "decided" with `nonce`, `stable` and
   * `lastExecuted`, whose items are the stored decisions from `seq` on, in order, each
   * with its batch and COMMITs (no votes), ending before the first one not stored, after
   * `toSeq`, or before the bytes (decidedItemBytes) pass `bytesMax` (the first always
   * goes). With none stored, the answer still carries the stable proof.
   */
  | {
      kind: "serveDecided";
      to: ReplicaId;
      seq: number;
      toSeq: number;
      bytesMax: number;
      nonce: number;
      stable: StableProof;
      lastExecuted: number;
    }
  /** This replica left `view - 1` (or lower) for `view`, suspecting its leader. */
  | { kind: "suspect"; view: number; reason: SuspectReason }
  /**
   * This replica suspects the leader of `view` but stays in it (a non-binding SUSPECT): the
   * view changes once f+1 replicas do. For status and logs.
   */
  | { kind: "leaderSuspected"; view: number; reason: SuspectReason }
  /** A view is installed; `leader` now orders. */
  /** A view installed; `carriedUpTo`: its NEW_VIEW's maxS (seqs up to it re-propose earlier views' batches). */
  | { kind: "viewInstalled"; view: number; leader: ReplicaId; carriedUpTo: number }
  /** A peer sends far more than any other (Aardvark flood defence): the runtime may mute it. */
  | { kind: "peerFlooding"; peer: ReplicaId }
  /**
   * A peer signed something no correct replica signs (an invalid NEW_VIEW, say): evidence
   * against it, for the operator. The core does not act on it beyond what the protocol says.
   * `mute`: the message came from that peer itself and no correct replica sends it in any
   * state (a VIEW_CHANGE of its own that is not valid, a FORWARD of a request whose
   * signature fails, which a correct replica verified before it took it), and checking it
   * cost many signatures: the runtime cuts the peer off for a while, or one faulty replica
   * could send the same costly bytes again and again.
   */
  | { kind: "peerMisbehaved"; peer: ReplicaId; reason: string; mute?: true }
  /**
   * FATAL: this replica's state digest at `seq` differs from the stable one. Replicas are
   * deterministic, so this is a bug or corruption here; the runtime should stop and
   * restore from a peer's snapshot.
   */
  | { kind: "divergence"; seq: number; own: Uint8Array; stable: Uint8Array };

/**
 * Durable records, written through a Ready's `persist` and handed back to the constructor after a
 * restart, in the order they were written. `compactRecords` trims them after a stable
 * checkpoint. All are canonical values, so the runtime may store them as canonical CBOR.
 */
export type PersistedRecord =
  /** View state: written before a VIEW_CHANGE is sent and when a view is installed. */
  | {
      t: "view";
      view: number;
      installedView: number;
      status: "normal" | "viewChange";
      viewChange: ViewChange | null;
      newView: NewView | null;
    }
  /** A proposal this replica accepted (or, as leader, made); implies its PREPARE was sent. */
  | { t: "accept"; prePrepare: PrePrepare }
  /** A prepared certificate and its body; implies its COMMIT was sent. */
  | { t: "prepared"; cert: PreparedCert; batch: ClientRequest[] }
  /** An executed sequence number with its commit certificate. */
  | { t: "decided"; seq: number; view: number; digest: Uint8Array; batch: ClientRequest[]; commits: Commit[] }
  /** This replica's own checkpoint at `seq`. */
  | { t: "checkpoint"; seq: number; stateDigest: Uint8Array; appDigest: Uint8Array; clients: ClientTableExport }
  /** A stable checkpoint: Q signed CHECKPOINTs. */
  | { t: "stable"; seq: number; digest: Uint8Array; proof: Checkpoint[] }
  /** State installed from a snapshot at `seq` (or the base left by compaction). */
  | {
      t: "snapshot";
      seq: number;
      stateDigest: Uint8Array;
      appDigest: Uint8Array;
      clients: ClientTableExport;
      proof: Checkpoint[];
    };

export interface CoreStatus {
  id: ReplicaId;
  mode: FaultMode;
  /** The view this replica is in or moving to. */
  view: number;
  /** The last view whose NEW_VIEW this replica installed (0 at start). */
  installedView: number;
  leader: ReplicaId;
  status: "normal" | "viewChange";
  lastExecuted: number;
  /** h: the last stable checkpoint. */
  stableSeq: number;
  pending: number;
  /** Sequence number of a state transfer in progress, or null. */
  transferTo: number | null;
  /** Restarted: the view and highest seq in which it signs no new PRE_PREPARE or PREPARE (PROTOCOL.md §2), or null. */
  voteFence: { view: number; seq: number } | null;
  /** Its store lost records and it signs no PRE_PREPARE or PREPARE in any view until the fence of fence.ts ends (PROTOCOL.md §2). */
  lostVotesFenced: boolean;
}

/** Sizes of every bounded structure, for the simulator's bound checks and for metrics. */
export interface CoreSizes {
  log: number;
  prepared: number;
  decided: number;
  decidedPending: number;
  checkpointSeqs: number;
  checkpointVotes: number;
  farCheckpoints: number;
  viewChanges: number;
  buffered: number;
  pending: number;
  pendingMaxPerClient: number;
  forwardQueue: number;
  quarantined: number;
  /** Empty proposals past this replica's padTo, held (PROTOCOL.md §13). */
  heldPadding: number;
}
