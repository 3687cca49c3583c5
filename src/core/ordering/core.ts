/**
 * The ordering core: PBFT with signatures (Castro & Liskov, OSDI'99 §4; TOCS 2002 §4
 * "BFT-PK"), request handling after BFT-SMaRt / Mod-SMaRt, leader monitoring after
 * Aardvark, as one sans-IO deterministic state machine. ORDERING.md is the reference; the
 * section cited at each handler is the rule it implements.
 *
 * The class is driven only through `step`; it reads no clock, draws no random number and
 * touches no socket or disk. Everything it needs from the world arrives as an input, and
 * everything it wants done leaves in a `Ready`: the records to persist, then the effects
 * (persist before send).
 */
import { encodeCanonical } from "../../../wire/canonical.ts";
import { ClientTable, type ClientTableExport, PendingPool, type PendingRequest, requestKey } from "./clients.ts";
import {
  bodyMatches,
  type CertContext,
  digestOfBatch,
  isMember,
  type NewViewPlan,
  planNewView,
  validCheckpointProof,
  validDecisionCert,
  validViewChange,
  verifySigned,
} from "./certs.ts";
import { type CoreConfig, checkConfig, leaderOf, quorum, type ReplicaId, weakQuorum } from "./config.ts";
import { FloodMonitor, ThroughputMonitor } from "./monitors.ts";
import {
  bytesEqual,
  type Checkpoint,
  type ClientRequest,
  type Commit,
  type DecidedItem,
  type Forward,
  hex,
  type NewView,
  NULL_DIGEST,
  type PeerMessage,
  type Prepare,
  type PreparedCert,
  type PrePrepare,
  requestBytes,
  SIGNATURE_BYTES,
  signingBytes,
  type StableProof,
  type StateRequest,
  type StateResponse,
  type ViewChange,
} from "./messages.ts";
import type { CoreCrypto, CoreInput, CoreSizes, CoreStatus, Effect, PersistedRecord, Ready, Refusal, SuspectReason } from "./types.ts";

/** Messages held for the target view while a view change is in progress (one per kind, seq, signer). */
const BUFFERED_PER_REPLICA_PER_SEQ = 3;
/** Quarantined clients remembered at once; the oldest entry goes first. */
const QUARANTINE_ENTRIES_MAX = 10_000;
/** What one signed COMMIT adds to a message (fields, digest, signature, encoding), for byte bounds. */
const COMMIT_WIRE_BYTES = 192;
/** A replica answers at most one state request per peer per this many ticks. */
const STATE_SERVE_INTERVAL_TICKS = 1;
/** A replica that executed nothing for this many retransmission intervals asks one peer what it missed. */
const IDLE_PROBE_INTERVALS = 4;
/** Progress timeout doublings after repeated heartbeat failures (Aardvark doubles it). */
const PROGRESS_BACKOFF_CAP = 4;

const NO_DEADLINE = Number.POSITIVE_INFINITY;
const EMPTY_SIG = new Uint8Array(SIGNATURE_BYTES);

/** Fails loudly: the core's assertions stay on in production (STYLE.md, convention 8). */
export class CoreAssertionError extends Error {
  override readonly name = "CoreAssertionError";
}

function assert(cond: boolean, what: string): asserts cond {
  if (!cond) throw new CoreAssertionError(`ordering core: ${what}`);
}

function assertNever(x: never): never {
  throw new CoreAssertionError(`ordering core: unexpected input ${JSON.stringify(x)}`);
}

/**
 * Whether a VIEW_CHANGE for `vc.newView` may stand in a quorum for `view` <= newView. Its
 * sender promised to vote in no view below newView, so in none below `view`, and if all
 * its certificates are from views below `view` its report is complete for `view` too.
 * Counting it lets a view form when one replica has already timed out past it; without
 * this, replicas can wait forever for a VIEW_CHANGE their peer will never send again
 * (its retransmissions are for its current, higher view).
 */
function countsForView(vc: ViewChange, view: number): boolean {
  if (vc.newView < view) return false;
  for (const cert of vc.prepared) if (cert.view >= view) return false;
  return true;
}

/** One consensus instance of the current view. */
interface Entry {
  readonly view: number;
  readonly seq: number;
  /** The accepted signed header (its batch field is null); null while only votes arrived. */
  header: PrePrepare | null;
  digest: Uint8Array | null;
  /** The body, checked against `digest`; null while missing. */
  batch: ClientRequest[] | null;
  /** Named by the NEW_VIEW that installed this view, rather than freely proposed in it. */
  fromNewView: boolean;
  /** Votes keyed by `voteKey(signer)`: at most one per signer, the first one. */
  readonly prepares: Map<number, Prepare>;
  readonly commits: Map<number, Commit>;
  prepared: boolean;
  committed: boolean;
  commitCert: Commit[] | null;
  /** Tick the missing body was last asked for. */
  bodyAskedAt: number;
}

interface Decision {
  view: number;
  digest: Uint8Array;
  batch: ClientRequest[];
  commits: Commit[];
}

interface Transfer {
  seq: number;
  digest: Uint8Array;
  proof: Checkpoint[];
  nextTryAt: number;
  attempt: number;
}

const REFUSALS: ReadonlySet<string> = new Set<Refusal>(["invalid", "quarantined", "window", "overloaded"]);

function isRefusal(verdict: string): verdict is Refusal {
  return REFUSALS.has(verdict);
}

/** hash(canonical(client table)): the client part of a checkpoint's state digest. */
export function clientTableHash(hash: (bytes: Uint8Array) => Uint8Array, rows: ClientTableExport): Uint8Array {
  return hash(encodeCanonical(rows));
}

/**
 * The checkpoint state digest D = hash(seq, appDigest, hash(clients)) (ORDERING.md §7).
 * Exported so that the runtime checks a fetched or stored snapshot with the very formula
 * the core signs.
 */
export function stateDigestOf(hash: (bytes: Uint8Array) => Uint8Array, seq: number, appDigest: Uint8Array, clientsHash: Uint8Array): Uint8Array {
  return hash(encodeCanonical({ seq, app: appDigest, clients: clientsHash }));
}

/**
 * The replicated ordering state machine of one replica. See index.ts for the contract.
 *
 * Protected members are the seams a test may override to build deliberately broken
 * variants for the simulator (a wrong quorum, counting messages instead of signers). The
 * shipped runtime and CLI always construct this class itself.
 */
export class OrderingCore {
  protected readonly cfg: CoreConfig;
  protected readonly crypto: CoreCrypto;
  private readonly ctx: CertContext;
  private readonly w: number;
  private records: PersistedRecord[] = [];
  private effects: Effect[] = [];
  private now = 0;

  // View state (ORDERING.md §2).
  private view = 0;
  private installedView = 0;
  private phase: "normal" | "viewChange" = "normal";
  private vcAttempt = 0;
  private vcArmedFor = -1;
  private vcDeadline = NO_DEADLINE;
  private vcResendAt = NO_DEADLINE;
  private myViewChange: ViewChange | null = null;
  private newViewMsg: NewView | null = null;
  private newViewSentFor = -1;
  private readonly viewChanges = new Map<ReplicaId, ViewChange>();
  private readonly newViewAnsweredAt = new Map<ReplicaId, number>();
  private readonly buffered = new Map<string, { from: ReplicaId; msg: PeerMessage }>();

  // Log state.
  private h = 0;
  private hDigest: Uint8Array = NULL_DIGEST;
  private hProof: Checkpoint[] = [];
  private lastExecuted = 0;
  private nextSeq = 1;
  private highestAccepted = 0;
  private log = new Map<number, Entry>();
  private readonly preparedStore = new Map<number, { cert: PreparedCert; batch: ClientRequest[] }>();
  private readonly decided = new Map<number, Decision>();
  private readonly decidedPending = new Map<number, Decision>();
  /** Requests of freely proposed, unexecuted batches of this view: key -> seq. */
  private readonly freeIndex = new Map<string, number>();
  /** Requests of NEW_VIEW batches of this view not yet executed: key -> count. */
  private readonly newViewIndex = new Map<string, number>();
  private readonly signedVotes = new Map<string, Uint8Array>();

  // Checkpoints and state transfer (ORDERING.md §7).
  private readonly checkpoints = new Map<number, Map<ReplicaId, Checkpoint>>();
  private readonly farCheckpoints = new Map<ReplicaId, Checkpoint>();
  private readonly ownCheckpoints = new Map<number, Uint8Array>();
  private readonly checkpointClients = new Map<number, { hash: Uint8Array; rows: ClientTableExport }>();
  private transfer: Transfer | null = null;

  // Clients (ORDERING.md §5).
  private readonly clients = new ClientTable();
  private readonly pending = new PendingPool();
  private readonly quarantine = new Map<string, number>();
  private forwardQueue: ClientRequest[] = [];
  private forwardAllQueue: ClientRequest[] = [];
  private rrOffset = 0;

  // Progress tracking.
  private lastExecProgress = 0;
  private nextRetransmitAt = 0;
  private nextProbeAt = 0;
  private nextCheckpointResendAt = 0;
  private lastLeaderProgress = 0;
  private progressTimeoutCur: number;
  private readonly peerView = new Map<ReplicaId, number>();
  private readonly peerSeq = new Map<ReplicaId, number>();
  /** When each peer was last answered, per kind of answer ("<peer>:<kind>"); see onStateRequest. */
  private readonly servedAt = new Map<string, number>();
  private readonly stableAnsweredAt = new Map<ReplicaId, number>();
  private nonce = 0;
  private readonly tp: ThroughputMonitor;
  private readonly flood: FloodMonitor;

  constructor(cfg: CoreConfig, crypto: CoreCrypto, restored?: readonly PersistedRecord[]) {
    checkConfig(cfg);
    this.cfg = cfg;
    this.crypto = crypto;
    this.w = weakQuorum(cfg.n, cfg.f, cfg.mode);
    this.ctx = {
      n: cfg.n,
      f: cfg.f,
      mode: cfg.mode,
      quorumSize: quorum(cfg.n, cfg.f, cfg.mode),
      logWindow: cfg.logWindow,
      checkpointInterval: cfg.checkpointInterval,
      clusterId: cfg.clusterId,
      crypto,
    };
    this.progressTimeoutCur = cfg.progressTimeoutTicks;
    this.tp = new ThroughputMonitor(cfg, cfg.n);
    this.flood = new FloodMonitor(cfg.n, cfg.throughputWindowTicks, cfg.floodThreshold);
    if (restored !== undefined && restored.length > 0) this.restore(restored);
  }

  // -------------------------------------------------------------------------------------
  // Seams for deliberately broken test variants. The correct behaviour is the default.
  // -------------------------------------------------------------------------------------

  /** Q. Every quorum comparison goes through here. */
  protected quorumSize(): number {
    return this.ctx.quorumSize;
  }

  /** The key a vote is stored under: the signer, so that each signer counts once. */
  protected voteKey(signer: ReplicaId): number {
    return signer;
  }

  /** Whether a vote for `voteDigest` counts toward `entryDigest`: only an equal digest does. */
  protected voteMatches(entryDigest: Uint8Array, voteDigest: Uint8Array): boolean {
    return bytesEqual(entryDigest, voteDigest);
  }

  /** Whether a NEW_VIEW's O must equal the one recomputed from its VIEW_CHANGEs. */
  protected recomputesNewView(): boolean {
    return true;
  }

  // -------------------------------------------------------------------------------------
  // Public surface.
  // -------------------------------------------------------------------------------------

  /**
   * Feeds one input; returns what the runtime must do: every record of `persist` made
   * durable before any of `effects` is performed.
   */
  step(input: CoreInput): Ready {
    this.records = [];
    this.effects = [];
    switch (input.kind) {
      case "message":
        this.onMessage(input.from, input.msg);
        break;
      case "request":
        this.onClientRequest(input.req, input.authenticated === true);
        break;
      case "tick":
        this.onTick();
        break;
      case "checkpointReady":
        this.onCheckpointReady(input.seq, input.appDigest);
        break;
      case "snapshotInstalled":
        this.onSnapshotInstalled(input.seq, input.stateDigest, input.appDigest, input.clients);
        break;
      default:
        assertNever(input);
    }
    this.afterStep();
    const ready: Ready = { persist: this.records, effects: this.effects };
    this.records = [];
    this.effects = [];
    return ready;
  }

  status(): CoreStatus {
    return {
      id: this.cfg.id,
      mode: this.cfg.mode,
      view: this.view,
      installedView: this.installedView,
      leader: leaderOf(this.view, this.cfg.n),
      status: this.phase,
      lastExecuted: this.lastExecuted,
      stableSeq: this.h,
      pending: this.pending.total,
      transferTo: this.transfer?.seq ?? null,
    };
  }

  sizes(): CoreSizes {
    let votes = 0;
    for (const set of this.checkpoints.values()) votes += set.size;
    return {
      log: this.log.size,
      prepared: this.preparedStore.size,
      decided: this.decided.size,
      decidedPending: this.decidedPending.size,
      checkpointSeqs: this.checkpoints.size,
      checkpointVotes: votes,
      farCheckpoints: this.farCheckpoints.size,
      viewChanges: this.viewChanges.size,
      buffered: this.buffered.size,
      pending: this.pending.total,
      pendingMaxPerClient: this.pending.maxPerClient(),
      forwardQueue: this.forwardQueue.length + this.forwardAllQueue.length,
      quarantined: this.quarantine.size,
    };
  }

  /** The client table, for the application's snapshot. */
  exportClients(): ClientTableExport {
    return this.clients.export();
  }

  /** The last executed seq of one client (0 if none): a lookup, not an export. */
  lastExecutedOf(client: string): number {
    return this.clients.lastExecuted(client);
  }

  // -------------------------------------------------------------------------------------
  // Small helpers.
  // -------------------------------------------------------------------------------------

  private leader(view: number = this.view): ReplicaId {
    return leaderOf(view, this.cfg.n);
  }

  private isLeader(): boolean {
    return this.leader() === this.cfg.id;
  }

  private get highWater(): number {
    return this.h + this.cfg.logWindow;
  }

  private emit(o: Effect): void {
    this.effects.push(o);
  }

  private persist(record: PersistedRecord): void {
    this.records.push(record);
  }

  private send(to: ReplicaId | "all", msg: PeerMessage): void {
    this.effects.push({ kind: "send", to, msg });
  }

  private hashBatch(batch: readonly ClientRequest[]): Uint8Array {
    return digestOfBatch(this.crypto, batch);
  }

  private signed<M extends { sig: Uint8Array } & Parameters<typeof signingBytes>[0]>(m: M): M {
    m.sig = this.crypto.sign(signingBytes(m, this.cfg.clusterId));
    return m;
  }

  private verify(m: Parameters<typeof signingBytes>[0]): boolean {
    return verifySigned(this.ctx, m);
  }

  /** Signs a PREPARE or COMMIT; never two digests for one (kind, view, seq), never below the view. */
  private signVote(t: "PREPARE", view: number, seq: number, digest: Uint8Array): Prepare;
  private signVote(t: "COMMIT", view: number, seq: number, digest: Uint8Array): Commit;
  private signVote(t: "PREPARE" | "COMMIT", view: number, seq: number, digest: Uint8Array): Prepare | Commit {
    assert(view === this.view && this.phase === "normal", `vote in view ${view} while in ${this.phase} ${this.view}`);
    const key = `${t}:${view}:${seq}`;
    const prev = this.signedVotes.get(key);
    assert(prev === undefined || bytesEqual(prev, digest), `second ${t} digest for view ${view} seq ${seq}`);
    this.signedVotes.set(key, digest);
    return this.signed<Prepare | Commit>({ t, view, seq, digest, replica: this.cfg.id, sig: EMPTY_SIG });
  }

  private signHeader(view: number, seq: number, digest: Uint8Array): PrePrepare {
    const key = `PRE_PREPARE:${view}:${seq}`;
    const prev = this.signedVotes.get(key);
    assert(prev === undefined || bytesEqual(prev, digest), `second proposal for view ${view} seq ${seq}`);
    this.signedVotes.set(key, digest);
    return this.signed({ t: "PRE_PREPARE", view, seq, digest, batch: null, sig: EMPTY_SIG });
  }

  private newEntry(view: number, seq: number): Entry {
    return {
      view,
      seq,
      header: null,
      digest: null,
      batch: null,
      fromNewView: false,
      prepares: new Map(),
      commits: new Map(),
      prepared: false,
      committed: false,
      commitCert: null,
      bodyAskedAt: -1,
    };
  }

  private entryFor(seq: number): Entry {
    let e = this.log.get(seq);
    if (e === undefined) {
      e = this.newEntry(this.view, seq);
      this.log.set(seq, e);
    }
    return e;
  }

  private countMatching(votes: Map<number, Prepare | Commit>, digest: Uint8Array): number {
    let n = 0;
    for (const v of votes.values()) if (this.voteMatches(digest, v.digest)) n++;
    return n;
  }

  private matchingVotes<V extends Prepare | Commit>(votes: Map<number, V>, digest: Uint8Array, count: number): V[] {
    const list = [...votes.values()].filter((v) => this.voteMatches(digest, v.digest));
    list.sort((a, b) => a.replica - b.replica);
    return list.slice(0, count);
  }

  private kthLargest(values: Iterable<number>, k: number): number {
    const sorted = [...values].sort((a, b) => b - a);
    return sorted[k - 1] ?? -1;
  }

  // -------------------------------------------------------------------------------------
  // Dispatch.
  // -------------------------------------------------------------------------------------

  private onMessage(from: ReplicaId, msg: PeerMessage): void {
    if (!isMember(this.ctx, from) || from === this.cfg.id) return;
    this.flood.count(from);
    switch (msg.t) {
      case "PRE_PREPARE":
        return this.onPrePrepare(from, msg);
      case "PREPARE":
        return this.onPrepare(from, msg);
      case "COMMIT":
        return this.onCommit(from, msg);
      case "CHECKPOINT":
        return this.onCheckpoint(from, msg);
      case "VIEW_CHANGE":
        return this.onViewChange(from, msg);
      case "NEW_VIEW":
        return this.onNewView(msg);
      case "FORWARD":
        return this.onForward(msg);
      case "STATE_REQUEST":
        return this.onStateRequest(from, msg);
      case "STATE_RESPONSE":
        return this.onStateResponse(from, msg);
      default:
        assertNever(msg);
    }
  }

  /**
   * The normal-case gate (ORDERING.md §4): only the current view, only inside (h, H];
   * during a view change, messages for the target view wait in a bounded buffer.
   */
  private gate(from: ReplicaId, view: number, seq: number, key: string, msg: PeerMessage): boolean {
    this.notePeer(from, view, seq);
    if (view < this.installedView) this.answerWithNewView(from);
    if (view !== this.view) return false;
    if (seq <= this.h || seq > this.highWater) return false;
    if (this.phase === "viewChange") {
      const bound = BUFFERED_PER_REPLICA_PER_SEQ * this.cfg.logWindow * this.cfg.n;
      if (!this.buffered.has(key) && this.buffered.size < bound) this.buffered.set(key, { from, msg });
      return false;
    }
    return true;
  }

  /** Transport-authenticated hints of where peers are; used only with W agreeing peers. */
  private notePeer(from: ReplicaId, view: number, seq: number): void {
    if (seq > (this.peerSeq.get(from) ?? -1)) this.peerSeq.set(from, seq);
    if (view <= (this.peerView.get(from) ?? -1)) return;
    this.peerView.set(from, view);
    if (view > this.view) this.catchUpView();
  }

  /**
   * W peers send normal-case messages of views above ours, so at least one correct replica
   * installed such a view: ask for it with a VIEW_CHANGE, which peers at or past that view
   * answer with their NEW_VIEW (ORDERING.md §6, livelock rules).
   */
  private catchUpView(): void {
    const target = this.kthLargest(this.peerView.values(), this.w);
    if (target > this.view) this.startViewChange(target, "behind");
  }

  // -------------------------------------------------------------------------------------
  // Client requests (ORDERING.md §5).
  // -------------------------------------------------------------------------------------

  private onClientRequest(req: ClientRequest, authenticated: boolean): void {
    const verdict = this.admit(req, authenticated);
    if (verdict === "executed") this.emit({ kind: "resendReply", client: req.client, seq: req.seq });
    // A client that reached this replica directly is told at once, so it backs off
    // instead of waiting for its timeout; forwarded copies are refused silently.
    if (isRefusal(verdict)) this.emit({ kind: "refused", client: req.client, seq: req.seq, reason: verdict });
    if (verdict === "added" && !this.isLeader()) this.forwardQueue.push(req);
  }

  private onForward(msg: Forward): void {
    const limit = Math.min(msg.requests.length, this.cfg.batchRequestsMax);
    for (let i = 0; i < limit; i++) this.admit(msg.requests[i] as ClientRequest, false);
  }

  /**
   * Admission: cheap checks first, the signature last (Aardvark verifies MAC before
   * signature for the same reason). Returns what happened to the request.
   */
  private admit(
    req: ClientRequest,
    authenticated: boolean,
  ): "executed" | "added" | "duplicate" | Refusal | "bad-signature" {
    if (req.span < 1 || req.span > this.cfg.requestSpanMax || req.seq < 1) return "invalid";
    if (requestBytes(req) > this.cfg.requestBytesMax) return "invalid";
    const last = this.clients.lastExecuted(req.client);
    if (req.seq + req.span - 1 <= last) return "executed";
    if (req.seq <= last) return "invalid";
    if (this.pending.has(req.client, req.seq)) return "duplicate";
    const until = this.quarantine.get(req.client);
    if (until !== undefined && until > this.now) return "quarantined";
    if (req.seq - last > this.cfg.clientWindow * this.cfg.requestSpanMax) return "window";
    if (this.pending.countFor(req.client) >= this.cfg.clientWindow) return "window";
    if (this.pending.total >= this.cfg.pendingRequestsMax) return "overloaded";
    if (!this.crypto.verifyRequest(req)) {
      if (authenticated) this.quarantineClient(req.client);
      return "bad-signature";
    }
    this.pending.add(req, this.now, this.highestAccepted);
    return "added";
  }

  private quarantineClient(client: string): void {
    if (this.quarantine.size >= QUARANTINE_ENTRIES_MAX) {
      const oldest = this.quarantine.keys().next().value;
      if (oldest !== undefined) this.quarantine.delete(oldest);
    }
    this.quarantine.delete(client);
    this.quarantine.set(client, this.now + this.cfg.clientQuarantineTicks);
  }

  /** A request already verified when it became pending need not be verified again. */
  private alreadyVerified(r: ClientRequest): boolean {
    const p = this.pending.get(r.client, r.seq);
    return p !== undefined && p.req.span === r.span && bytesEqual(p.req.sig, r.sig) && bytesEqual(p.req.body, r.body);
  }

  /** Batch-borne requests become pending too, so their timers run (BFT-SMaRt checkProposedValue). */
  private adoptBatchRequests(batch: readonly ClientRequest[]): void {
    for (const r of batch) {
      const last = this.clients.lastExecuted(r.client);
      if (r.seq <= last || this.pending.has(r.client, r.seq)) continue;
      if (this.pending.countFor(r.client) >= this.cfg.clientWindow) continue;
      if (this.pending.total >= this.cfg.pendingRequestsMax) continue;
      this.pending.add(r, this.now, this.highestAccepted);
    }
  }

  // -------------------------------------------------------------------------------------
  // Leader: proposing (ORDERING.md §4, "Leader").
  // -------------------------------------------------------------------------------------

  private tryPropose(): void {
    if (!this.isLeader() || this.phase !== "normal" || this.installedView !== this.view) return;
    if (this.transfer !== null) return;
    for (const e of this.log.values()) {
      if (e.seq > this.lastExecuted && e.batch === null) return;
    }
    while (this.nextSeq <= Math.min(this.highWater, this.lastExecuted + this.cfg.pipelineDepth)) {
      const batch = this.buildBatch();
      if (batch === null) return;
      this.propose(batch);
    }
  }

  /**
   * Round-robin over clients, each client's requests strictly in chain order from its last
   * executed sequence number. A request already in a free proposal of this view is stepped
   * over (it executes first); one named by the NEW_VIEW stops its client's chain, because it
   * may yet be skipped and must not be proposed twice.
   */
  private buildBatch(): ClientRequest[] | null {
    const chains: PendingRequest[][] = [];
    for (const [client, forClient] of this.pending.clients()) {
      const chain: PendingRequest[] = [];
      let seq = this.clients.lastExecuted(client) + 1;
      for (let steps = 0; steps < this.cfg.clientWindow * 2; steps++) {
        const p = forClient.get(seq);
        if (p === undefined || this.newViewIndex.has(p.key)) break;
        if (!this.freeIndex.has(p.key)) chain.push(p);
        seq += p.req.span;
      }
      if (chain.length > 0) chains.push(chain);
    }
    if (chains.length === 0) return null;
    const start = this.rrOffset % chains.length;
    const batch: ClientRequest[] = [];
    let bytes = 0;
    let oldest = NO_DEADLINE;
    let full = false;
    for (let round = 0; !full; round++) {
      let took = false;
      for (let i = 0; i < chains.length && !full; i++) {
        const p = (chains[(start + i) % chains.length] as PendingRequest[])[round];
        if (p === undefined) continue;
        const size = requestBytes(p.req);
        if (batch.length >= this.cfg.batchRequestsMax || bytes + size > this.cfg.batchBytesMax) {
          full = true;
          break;
        }
        batch.push(p.req);
        bytes += size;
        oldest = Math.min(oldest, p.firstSeen);
        took = true;
      }
      if (!took) break;
    }
    if (batch.length === 0) return null;
    if (!full && batch.length < this.cfg.batchRequestsMax && this.now - oldest < this.cfg.batchDelayTicks) return null;
    this.rrOffset++;
    return batch;
  }

  private propose(batch: ClientRequest[]): void {
    const seq = this.nextSeq++;
    const digest = this.hashBatch(batch);
    const header = this.signHeader(this.view, seq, digest);
    const e = this.entryFor(seq);
    assert(e.header === null, `proposal over an accepted entry at ${seq}`);
    this.acceptInto(e, header, batch, false);
    this.persist({ t: "accept", prePrepare: { ...header, batch } });
    this.send("all", { ...header, batch });
    if (this.cfg.mode === "cft") this.markPrepared(e);
    else this.checkPrepared(e);
  }

  // -------------------------------------------------------------------------------------
  // Backup: PRE_PREPARE, PREPARE, COMMIT (ORDERING.md §4).
  // -------------------------------------------------------------------------------------

  private onPrePrepare(from: ReplicaId, m: PrePrepare): void {
    if (!this.gate(from, m.view, m.seq, `PP:${m.seq}`, m)) return;
    const e = this.log.get(m.seq);
    if (e?.header) {
      if (e.digest !== null && bytesEqual(e.digest, m.digest)) {
        if (e.batch === null && m.batch !== null) this.attachBody(e, m.batch);
        return;
      }
      // Check 6: a second signed header for (view, seq) proves equivocation.
      if (this.verify(m)) this.suspect("equivocation");
      return;
    }
    if (m.seq <= this.lastExecuted || m.batch === null) return;
    if (!this.verify(m)) return;
    const fault = this.proposalFault(m, m.batch);
    if (fault === "digest") {
      // A body that does not hash to the signed digest proves nothing against the leader
      // unless the leader itself sent it.
      if (from === this.leader()) this.suspect("bad-proposal");
      return;
    }
    if (fault !== null) {
      this.suspect("bad-proposal");
      return;
    }
    const entry = this.entryFor(m.seq);
    this.acceptInto(entry, { ...m, batch: null }, m.batch, false);
    this.persist({ t: "accept", prePrepare: m });
    if (this.cfg.mode === "cft") {
      this.markPrepared(entry);
    } else {
      const own = this.signVote("PREPARE", this.view, m.seq, m.digest);
      entry.prepares.set(this.voteKey(this.cfg.id), own);
      this.send("all", own);
      this.checkPrepared(entry);
    }
  }

  /**
   * Checks 3-5 of ORDERING.md §4: the digest is the body's, the batch is within bounds, and
   * every request is validly signed, unique in the batch, consecutive with its client's
   * other requests in the batch, not executed and not in another free proposal of this view.
   */
  private proposalFault(m: PrePrepare, batch: ClientRequest[]): "digest" | "invalid" | null {
    if (batch.length < 1 || batch.length > this.cfg.batchRequestsMax) return "invalid";
    let bytes = 0;
    for (const r of batch) bytes += requestBytes(r);
    if (bytes > this.cfg.batchBytesMax) return "invalid";
    if (!bytesEqual(this.hashBatch(batch), m.digest)) return "digest";
    const nextInBatch = new Map<string, number>();
    for (const r of batch) {
      if (r.span > this.cfg.requestSpanMax || requestBytes(r) > this.cfg.requestBytesMax) return "invalid";
      const expected = nextInBatch.get(r.client);
      if (expected !== undefined && r.seq !== expected) return "invalid";
      nextInBatch.set(r.client, r.seq + r.span);
      if (r.seq <= this.clients.lastExecuted(r.client)) return "invalid";
      if (this.freeIndex.has(requestKey(r.client, r.seq))) return "invalid";
    }
    for (const r of batch) {
      if (!this.alreadyVerified(r) && !this.crypto.verifyRequest(r)) return "invalid";
    }
    return null;
  }

  /** Records an accepted proposal in `e` and indexes its requests. */
  private acceptInto(e: Entry, header: PrePrepare, batch: ClientRequest[] | null, fromNewView: boolean): void {
    e.header = header;
    e.digest = header.digest;
    e.fromNewView = fromNewView;
    e.batch = null;
    if (batch !== null) this.setBody(e, batch);
    if (e.seq > this.highestAccepted) this.highestAccepted = e.seq;
    if (!fromNewView) this.lastLeaderProgress = this.now;
  }

  private setBody(e: Entry, batch: ClientRequest[]): void {
    e.batch = batch;
    if (e.seq <= this.lastExecuted) return;
    for (const r of batch) {
      const key = requestKey(r.client, r.seq);
      if (e.fromNewView) this.newViewIndex.set(key, (this.newViewIndex.get(key) ?? 0) + 1);
      else this.freeIndex.set(key, e.seq);
    }
    this.adoptBatchRequests(batch);
  }

  private unindex(e: Entry): void {
    if (e.batch === null) return;
    for (const r of e.batch) {
      const key = requestKey(r.client, r.seq);
      if (e.fromNewView) {
        const c = (this.newViewIndex.get(key) ?? 0) - 1;
        if (c <= 0) this.newViewIndex.delete(key);
        else this.newViewIndex.set(key, c);
      } else if (this.freeIndex.get(key) === e.seq) {
        this.freeIndex.delete(key);
      }
    }
  }

  /** A body arrived for an entry that had only its header; it is checked against the digest alone. */
  private attachBody(e: Entry, batch: ClientRequest[]): void {
    if (e.digest === null || e.batch !== null) return;
    if (!bodyMatches(this.crypto, e.digest, batch)) return;
    this.setBody(e, batch);
    if (this.cfg.mode === "cft") this.markPrepared(e);
    else this.checkPrepared(e);
  }

  private onPrepare(from: ReplicaId, m: Prepare): void {
    if (this.cfg.mode === "cft") return;
    if (!isMember(this.ctx, m.replica)) return;
    if (!this.gate(from, m.view, m.seq, `P:${m.seq}:${m.replica}`, m)) return;
    // The leader's PRE_PREPARE is its vote; a PREPARE from it would count it twice.
    if (m.replica === this.leader()) return;
    this.answerLaggingVoter(from, m);
    const e = m.seq > this.lastExecuted ? this.entryFor(m.seq) : this.log.get(m.seq);
    if (e === undefined) return;
    const key = this.voteKey(m.replica);
    if (e.prepares.has(key)) return;
    if (!this.verify(m)) return;
    e.prepares.set(key, m);
    this.checkPrepared(e);
  }

  private onCommit(from: ReplicaId, m: Commit): void {
    if (!isMember(this.ctx, m.replica)) return;
    if (!this.gate(from, m.view, m.seq, `C:${m.seq}:${m.replica}`, m)) return;
    this.answerLaggingVoter(from, m);
    const e = m.seq > this.lastExecuted ? this.entryFor(m.seq) : this.log.get(m.seq);
    if (e === undefined) return;
    const key = this.voteKey(m.replica);
    if (e.commits.has(key)) return;
    if (!this.verify(m)) return;
    e.commits.set(key, m);
    this.checkCommitted(e);
  }

  /** Prepared: header accepted, body held, and Q-1 PREPAREs for its digest from distinct non-leaders. */
  private checkPrepared(e: Entry): void {
    if (e.prepared || e.header === null || e.digest === null || e.batch === null) return;
    if (this.phase !== "normal" || e.view !== this.view) return;
    if (this.countMatching(e.prepares, e.digest) < this.quorumSize() - 1) return;
    this.markPrepared(e);
  }

  /** Stores the certificate, persists it, then sends COMMIT (persist before send). */
  private markPrepared(e: Entry): void {
    if (e.prepared || e.header === null || e.digest === null || e.batch === null) return;
    if (this.phase !== "normal" || e.view !== this.view) return;
    e.prepared = true;
    const prepares = this.cfg.mode === "cft" ? [] : this.matchingVotes(e.prepares, e.digest, this.quorumSize() - 1);
    const cert: PreparedCert = {
      view: e.view,
      seq: e.seq,
      digest: e.digest,
      prePrepare: e.header,
      prepares,
      batch: this.cfg.mode === "cft" ? e.batch : null,
    };
    const prev = this.preparedStore.get(e.seq);
    if (prev === undefined || prev.cert.view <= cert.view) this.preparedStore.set(e.seq, { cert, batch: e.batch });
    this.persist({ t: "prepared", cert, batch: e.batch });
    const own = this.signVote("COMMIT", e.view, e.seq, e.digest);
    e.commits.set(this.voteKey(this.cfg.id), own);
    this.send("all", own);
    this.checkCommitted(e);
  }

  /** Committed: prepared and Q COMMITs with the same digest (a COMMIT for another digest never counts). */
  private checkCommitted(e: Entry): void {
    if (!e.prepared || e.committed || e.digest === null) return;
    const q = this.quorumSize();
    if (this.countMatching(e.commits, e.digest) < q) return;
    e.committed = true;
    e.commitCert = this.matchingVotes(e.commits, e.digest, q);
  }

  // -------------------------------------------------------------------------------------
  // Execution (ORDERING.md §4, "Execute").
  // -------------------------------------------------------------------------------------

  private tryExecute(): void {
    for (;;) {
      const s = this.lastExecuted + 1;
      const e = this.log.get(s);
      let d: Decision | undefined;
      if (e?.committed && e.batch !== null && e.digest !== null && e.commitCert !== null) {
        d = { view: e.view, digest: e.digest, batch: e.batch, commits: e.commitCert };
      } else {
        d = this.decidedPending.get(s);
      }
      if (d === undefined) return;
      assert(bodyMatches(this.crypto, d.digest, d.batch), `executing seq ${s} with a body that does not match`);
      this.execute(s, d, e);
    }
  }

  private execute(s: number, d: Decision, e: Entry | undefined): void {
    const execute: ClientRequest[] = [];
    for (const r of d.batch) {
      // Dedupe is deterministic: only the next request of each client runs; anything
      // else is skipped with no effect and stays pending to be proposed again.
      if (this.clients.isNext(r)) {
        this.clients.recordExecuted(r);
        execute.push(r);
      }
    }
    this.lastExecuted = s;
    this.lastExecProgress = this.now;
    this.decided.set(s, d);
    this.decidedPending.delete(s);
    if (e !== undefined) this.unindex(e);
    for (const r of d.batch) this.pending.pruneExecuted(r.client, this.clients.lastExecuted(r.client));
    this.persist({ t: "decided", seq: s, view: d.view, digest: d.digest, batch: d.batch, commits: d.commits });
    this.emit({ kind: "decide", seq: s, view: d.view, batch: d.batch, execute });
    this.tp.onExecuted(execute.length);
    if (e !== undefined && !e.fromNewView && this.installedView === this.view && execute.length > 0) {
      // The first new request executed in an installed view ends the view-change backoff.
      this.vcAttempt = 0;
      this.progressTimeoutCur = this.cfg.progressTimeoutTicks;
    }
    if (s % this.cfg.checkpointInterval === 0) this.takeCheckpoint(s);
    const t = this.transfer;
    if (t !== null && s >= t.seq) {
      // Caught up by executing: the transfer is moot, and its proof now moves h.
      this.transfer = null;
      if (new Set(t.proof.map((c) => c.replica)).size >= this.quorumSize()) this.adoptStable(t.seq, t.digest, t.proof);
    }
  }

  // -------------------------------------------------------------------------------------
  // Checkpoints and state transfer (ORDERING.md §7).
  // -------------------------------------------------------------------------------------

  private clientsHash(rows: ClientTableExport): Uint8Array {
    return clientTableHash(this.crypto.hash, rows);
  }

  private stateDigest(seq: number, appDigest: Uint8Array, clientsHash: Uint8Array): Uint8Array {
    return stateDigestOf(this.crypto.hash, seq, appDigest, clientsHash);
  }

  private takeCheckpoint(s: number): void {
    const rows = this.clients.export();
    this.checkpointClients.set(s, { hash: this.clientsHash(rows), rows });
    this.emit({ kind: "takeCheckpoint", seq: s, clients: rows });
  }

  private onCheckpointReady(seq: number, appDigest: Uint8Array): void {
    const taken = this.checkpointClients.get(seq);
    if (taken === undefined) return;
    this.checkpointClients.delete(seq);
    const digest = this.stateDigest(seq, appDigest, taken.hash);
    this.ownCheckpoints.set(seq, digest);
    this.persist({ t: "checkpoint", seq, stateDigest: digest, appDigest, clients: taken.rows });
    if (seq <= this.h) {
      this.checkDivergence(seq, this.hDigest);
      return;
    }
    const msg = this.signed<Checkpoint>({ t: "CHECKPOINT", seq, digest, replica: this.cfg.id, sig: EMPTY_SIG });
    this.send("all", msg);
    this.addCheckpoint(msg);
  }

  private onCheckpoint(from: ReplicaId, m: Checkpoint): void {
    this.notePeer(from, -1, m.seq);
    if (!isMember(this.ctx, m.replica) || m.seq % this.cfg.checkpointInterval !== 0) return;
    if (m.seq <= this.h) {
      this.answerWithStable(from);
      return;
    }
    if (m.seq <= this.highWater) {
      if (this.checkpoints.get(m.seq)?.has(m.replica)) return;
      if (!this.verify(m)) return;
      this.addCheckpoint(m);
      return;
    }
    const prev = this.farCheckpoints.get(m.replica);
    if (prev !== undefined && prev.seq >= m.seq) return;
    if (!this.verify(m)) return;
    this.farCheckpoints.set(m.replica, m);
    this.checkFarCheckpoints();
  }

  /**
   * A CHECKPOINT at or below our stable one comes from a replica that may lack the proof
   * (its own was resent because it saw no quorum): send it ours, at most once per
   * retransmission interval per peer.
   */
  private answerWithStable(to: ReplicaId): void {
    if (this.h === 0 || to === this.cfg.id) return;
    const last = this.stableAnsweredAt.get(to) ?? -NO_DEADLINE;
    if (this.now - last < this.cfg.retransmitTicks) return;
    this.stableAnsweredAt.set(to, this.now);
    const stable: StableProof = { seq: this.h, digest: this.hDigest, proof: this.hProof };
    this.send(to, { t: "STATE_RESPONSE", kind: "decided", nonce: 0, items: [], stable, lastExecuted: this.lastExecuted });
  }

  /** Adds a verified in-window CHECKPOINT and adopts it as stable at Q matching signers. */
  private addCheckpoint(m: Checkpoint): void {
    let set = this.checkpoints.get(m.seq);
    if (set === undefined) {
      set = new Map();
      this.checkpoints.set(m.seq, set);
    }
    if (set.has(m.replica)) return;
    set.set(m.replica, m);
    const matching = [...set.values()].filter((c) => bytesEqual(c.digest, m.digest));
    if (matching.length >= this.quorumSize()) {
      matching.sort((a, b) => a.replica - b.replica);
      this.adoptStable(m.seq, m.digest, matching.slice(0, this.quorumSize()));
    }
  }

  /** W agreeing CHECKPOINTs beyond the window: this replica is behind; fetch that state. */
  private checkFarCheckpoints(): void {
    const groups = new Map<string, Checkpoint[]>();
    for (const c of this.farCheckpoints.values()) {
      const key = `${c.seq}:${hex(c.digest)}`;
      const g = groups.get(key) ?? [];
      g.push(c);
      groups.set(key, g);
    }
    for (const g of groups.values()) {
      g.sort((a, b) => a.replica - b.replica);
      const first = g[0] as Checkpoint;
      if (g.length >= this.quorumSize()) this.adoptStable(first.seq, first.digest, g.slice(0, this.quorumSize()));
      else if (g.length >= this.w && first.seq > this.lastExecuted) this.startTransfer(first.seq, first.digest, g);
    }
  }

  /**
   * A stable checkpoint (Q signers). Below or at lastExecuted it moves h and collects
   * garbage; above, it becomes the state-transfer target and h moves after installation.
   */
  private adoptStable(seq: number, digest: Uint8Array, proof: Checkpoint[]): void {
    if (seq <= this.h) return;
    if (seq > this.lastExecuted) {
      this.startTransfer(seq, digest, proof);
      return;
    }
    if (!this.checkDivergence(seq, digest)) return;
    this.h = seq;
    this.hDigest = digest;
    this.hProof = proof;
    this.persist({ t: "stable", seq, digest, proof });
    this.collectGarbage();
  }

  /**
   * A NEW_VIEW starts the new view's log at minS, a stable checkpoint this replica has not
   * reached. As in PBFT, h moves there at once (the proof has Q signatures) and the state
   * is fetched: everything at or below minS is obsolete in the new view, and keeping it
   * would let the log outgrow its window. Until the snapshot is installed, h is above
   * lastExecuted and a transfer to h is in progress.
   */
  private jumpToStable(seq: number, digest: Uint8Array, proof: Checkpoint[]): void {
    this.h = seq;
    this.hDigest = digest;
    this.hProof = proof;
    this.persist({ t: "stable", seq, digest, proof });
    this.collectGarbage();
    this.startTransfer(seq, digest, proof);
    if (this.transfer !== null && this.transfer.seq === seq) {
      this.transfer.nextTryAt = this.now + this.cfg.transferRetryTicks;
      this.emitFetch();
    }
  }

  /** Replicas are deterministic: an own digest that differs from a stable one is fatal. */
  private checkDivergence(seq: number, stable: Uint8Array): boolean {
    const own = this.ownCheckpoints.get(seq);
    if (own === undefined || bytesEqual(own, stable)) return true;
    this.emit({ kind: "divergence", seq, own, stable });
    return false;
  }

  private collectGarbage(): void {
    const h = this.h;
    for (const [s, e] of this.log) {
      if (s > h) continue;
      this.unindex(e);
      this.log.delete(s);
    }
    for (const s of [...this.preparedStore.keys()]) if (s <= h) this.preparedStore.delete(s);
    for (const s of [...this.decided.keys()]) if (s <= h) this.decided.delete(s);
    for (const s of [...this.decidedPending.keys()]) if (s <= h) this.decidedPending.delete(s);
    for (const s of [...this.checkpoints.keys()]) if (s <= h) this.checkpoints.delete(s);
    for (const s of [...this.ownCheckpoints.keys()]) if (s < h) this.ownCheckpoints.delete(s);
    for (const s of [...this.checkpointClients.keys()]) if (s < h) this.checkpointClients.delete(s);
    for (const [r, c] of [...this.farCheckpoints]) {
      if (c.seq > this.highWater) continue;
      this.farCheckpoints.delete(r);
      if (c.seq > h) this.addCheckpoint(c);
    }
    for (const key of [...this.signedVotes.keys()]) {
      const seq = Number(key.slice(key.lastIndexOf(":") + 1));
      if (seq <= h) this.signedVotes.delete(key);
    }
  }

  /**
   * Targets the state at `seq`. A target inside the window is usually reached by executing
   * what is already in flight, so the fetch waits one retransmission interval first; a
   * target beyond the window can only be reached by a snapshot, so it is fetched at once.
   */
  private startTransfer(seq: number, digest: Uint8Array, proof: Checkpoint[]): void {
    if (this.transfer !== null && this.transfer.seq >= seq) return;
    const inWindow = seq <= this.highWater;
    const firstTry = inWindow ? this.now + this.cfg.retransmitTicks : this.now + this.cfg.transferRetryTicks;
    this.transfer = { seq, digest, proof, nextTryAt: firstTry, attempt: 0 };
    if (!inWindow) this.emitFetch();
  }

  /** Asks the runtime for the snapshot, rotating the preferred source on every retry. */
  private emitFetch(): void {
    const t = this.transfer;
    if (t === null) return;
    const signers = [...new Set(t.proof.map((c) => c.replica))].filter((r) => r !== this.cfg.id);
    const k = signers.length === 0 ? 0 : t.attempt % signers.length;
    const from = [...signers.slice(k), ...signers.slice(0, k)];
    this.emit({ kind: "fetchState", seq: t.seq, stateDigest: t.digest, from, proof: t.proof });
  }

  private onSnapshotInstalled(seq: number, stateDigest: Uint8Array, appDigest: Uint8Array, rows: ClientTableExport): void {
    const t = this.transfer;
    if (t === null || seq !== t.seq) return;
    const digest = this.stateDigest(seq, appDigest, this.clientsHash(rows));
    if (!bytesEqual(digest, t.digest) || !bytesEqual(stateDigest, t.digest)) return;
    this.transfer = null;
    this.lastExecuted = seq;
    this.lastExecProgress = this.now;
    this.clients.import(rows);
    for (const [s, e] of [...this.log]) {
      if (s > seq) continue;
      this.unindex(e);
      this.log.delete(s);
    }
    for (const s of [...this.decided.keys()]) if (s <= seq) this.decided.delete(s);
    for (const s of [...this.decidedPending.keys()]) if (s <= seq) this.decidedPending.delete(s);
    for (const [client] of [...this.pending.clients()]) this.pending.pruneExecuted(client, this.clients.lastExecuted(client));
    this.ownCheckpoints.set(seq, digest);
    this.persist({ t: "snapshot", seq, stateDigest: digest, appDigest, clients: rows, proof: t.proof });
    if (new Set(t.proof.map((c) => c.replica)).size >= this.quorumSize()) this.adoptStable(seq, digest, t.proof);
    this.nextProbeAt = this.now;
    if (this.nextSeq <= seq) this.nextSeq = seq + 1;
  }

  // -------------------------------------------------------------------------------------
  // Catch-up inside the window: decided batches with commit certificates (ORDERING.md §4).
  // -------------------------------------------------------------------------------------

  /**
   * Answers a peer's request for decided batches or bodies, at most once per peer and kind
   * per STATE_SERVE_INTERVAL_TICKS. Each kind has its own budget ("decided", "batch", and
   * "lagging" for answers to a lagging voter), so that what a stalled replica sends in one
   * tick never uses up the budget of another: the votes it resends once did, every time
   * (the answer to the votes starts at the voted seq, the request at the first missing
   * one), and the replica never caught up.
   */
  private onStateRequest(from: ReplicaId, m: StateRequest, budget: "decided" | "batch" | "lagging" = m.kind): void {
    const key = `${from}:${budget}`;
    if ((this.servedAt.get(key) ?? -NO_DEADLINE) + STATE_SERVE_INTERVAL_TICKS > this.now) return;
    this.servedAt.set(key, this.now);
    const items: DecidedItem[] = [];
    const first = Math.max(m.seq, this.h + 1);
    const last = Math.min(m.toSeq, first + this.cfg.transferItemsMax - 1, this.highWater);
    // Bounded in bytes like one batch (at least one item), so the answer fits a message.
    let bytes = 0;
    for (let s = first; s <= last; s++) {
      const item = m.kind === "decided" ? this.decidedItem(s) : this.bodyItem(s, m.digest);
      if (item === null) continue;
      const size = item.batch.reduce((sum, r) => sum + requestBytes(r), 0) + item.commits.length * COMMIT_WIRE_BYTES;
      if (items.length > 0 && bytes + size > this.cfg.batchBytesMax) break;
      items.push(item);
      bytes += size;
    }
    const stable: StableProof | null = this.h > 0 ? { seq: this.h, digest: this.hDigest, proof: this.hProof } : null;
    // The stable proof alone is worth sending when the asker has executed up to it: it may
    // be stuck with a full window for want of exactly that proof.
    if (items.length === 0 && (stable === null || this.h < m.seq - 1)) return;
    const resp: StateResponse = {
      t: "STATE_RESPONSE",
      kind: m.kind,
      nonce: m.nonce,
      items,
      stable,
      lastExecuted: this.lastExecuted,
    };
    this.send(from, resp);
  }

  /**
   * A peer still voting on a seq this replica executed has not seen the decision: answer
   * with the decided batches from there on, instead of counting its vote (ORDERING.md §4,
   * retransmission).
   */
  private answerLaggingVoter(from: ReplicaId, m: Prepare | Commit): void {
    if (m.seq > this.lastExecuted || m.replica !== from || !this.decided.has(m.seq)) return;
    // A first vote after the decision is just late; the same vote again is a resend by a
    // replica that is stuck.
    const e = this.log.get(m.seq);
    const seen = e !== undefined && (m.t === "PREPARE" ? e.prepares : e.commits).has(this.voteKey(from));
    if (e !== undefined && !seen) return;
    const req: StateRequest = { t: "STATE_REQUEST", kind: "decided", seq: m.seq, toSeq: this.lastExecuted, digest: null, nonce: 0 };
    this.onStateRequest(from, req, "lagging");
  }

  private decidedItem(s: number): DecidedItem | null {
    const d = this.decided.get(s);
    if (d === undefined) return null;
    return { view: d.view, seq: s, batch: d.batch, commits: d.commits };
  }

  /** Any body this replica holds for `s` (matching `digest` if given); the asker checks it. */
  private bodyItem(s: number, digest: Uint8Array | null): DecidedItem | null {
    const candidates: Array<{ view: number; digest: Uint8Array | null; batch: ClientRequest[] | null }> = [];
    const d = this.decided.get(s);
    if (d !== undefined) candidates.push(d);
    const e = this.log.get(s);
    if (e !== undefined) candidates.push(e);
    const p = this.preparedStore.get(s);
    if (p !== undefined) candidates.push({ view: p.cert.view, digest: p.cert.digest, batch: p.batch });
    for (const c of candidates) {
      if (c.batch === null || c.digest === null) continue;
      if (digest !== null && !bytesEqual(c.digest, digest)) continue;
      return { view: c.view, seq: s, batch: c.batch, commits: [] };
    }
    return null;
  }

  private onStateResponse(from: ReplicaId, m: StateResponse): void {
    if (m.lastExecuted > (this.peerSeq.get(from) ?? -1)) this.peerSeq.set(from, m.lastExecuted);
    if (m.stable !== null && m.stable.seq > this.h && m.stable.seq % this.cfg.checkpointInterval === 0) {
      const st = m.stable;
      if (validCheckpointProof(this.ctx, st.seq, st.digest, st.proof, this.quorumSize())) {
        this.adoptStable(st.seq, st.digest, st.proof);
      }
    }
    const before = this.lastExecuted;
    for (const item of m.items) {
      if (item.commits.length > 0) this.acceptDecidedItem(item);
      else this.acceptBodyItem(item);
    }
    this.tryExecute();
    if (this.lastExecuted > before) this.nextProbeAt = this.now + 1;
  }

  private acceptDecidedItem(item: DecidedItem): void {
    // Only inside the window: a replica further behind catches up by state transfer.
    if (item.seq <= this.lastExecuted || item.seq > this.highWater) return;
    if (this.decidedPending.has(item.seq)) return;
    // The certificate names the digest; the body must match it (an empty body matches the
    // null digest of a NEW_VIEW gap).
    const digest = (item.commits[0] as Commit).digest;
    if (!bodyMatches(this.crypto, digest, item.batch)) return;
    if (!validDecisionCert(this.ctx, item.view, item.seq, digest, item.commits)) return;
    this.decidedPending.set(item.seq, { view: item.view, digest, batch: item.batch, commits: item.commits });
    const e = this.log.get(item.seq);
    if (e !== undefined && e.batch === null && e.digest !== null && bytesEqual(e.digest, digest)) this.attachBody(e, item.batch);
  }

  private acceptBodyItem(item: DecidedItem): void {
    const e = this.log.get(item.seq);
    if (e === undefined || e.batch !== null || e.digest === null) return;
    this.attachBody(e, item.batch);
  }

  // -------------------------------------------------------------------------------------
  // View change (ORDERING.md §6).
  // -------------------------------------------------------------------------------------

  private suspect(reason: SuspectReason): void {
    if (this.phase !== "normal") return;
    this.startViewChange(this.view + 1, reason);
  }

  /**
   * Step 1 before anything else: from here on no vote below `target` is ever signed, so the
   * VIEW_CHANGE reports everything this replica prepared. Persisted before it is sent.
   */
  private startViewChange(target: number, reason: SuspectReason): void {
    if (target <= this.view) return;
    this.view = target;
    this.phase = "viewChange";
    this.vcArmedFor = -1;
    this.vcDeadline = NO_DEADLINE;
    this.buffered.clear();
    const vc = this.buildViewChange(target);
    this.myViewChange = vc;
    this.viewChanges.set(this.cfg.id, vc);
    this.persistView();
    this.emit({ kind: "suspect", view: target, reason });
    this.send("all", vc);
    this.vcResendAt = this.now + this.cfg.retransmitTicks;
    this.viewChangeProgress();
  }

  private buildViewChange(newView: number): ViewChange {
    const prepared: PreparedCert[] = [];
    for (const s of [...this.preparedStore.keys()].sort((a, b) => a - b)) {
      if (s <= this.h || s > this.highWater) continue;
      prepared.push((this.preparedStore.get(s) as { cert: PreparedCert }).cert);
    }
    return this.signed<ViewChange>({
      t: "VIEW_CHANGE",
      newView,
      stableSeq: this.h,
      stableDigest: this.hDigest,
      stableProof: this.hProof,
      prepared,
      replica: this.cfg.id,
      sig: EMPTY_SIG,
    });
  }

  private persistView(): void {
    this.persist({
      t: "view",
      view: this.view,
      installedView: this.installedView,
      status: this.phase,
      viewChange: this.phase === "viewChange" ? this.myViewChange : null,
      newView: this.newViewMsg,
    });
  }

  private onViewChange(from: ReplicaId, m: ViewChange): void {
    if (!isMember(this.ctx, m.replica)) return;
    if (m.newView <= this.installedView) {
      this.answerWithNewView(m.replica);
      return;
    }
    const prev = this.viewChanges.get(m.replica);
    if (prev !== undefined && prev.newView >= m.newView) return;
    if (!validViewChange(this.ctx, m)) return;
    this.viewChanges.set(m.replica, m);
    this.joinIfBehind();
    this.viewChangeProgress();
  }

  /** A replica still asking for a view we installed gets our NEW_VIEW (ORDERING.md §6). */
  private answerWithNewView(to: ReplicaId): void {
    if (this.newViewMsg === null || this.phase !== "normal") return;
    const last = this.newViewAnsweredAt.get(to) ?? -NO_DEADLINE;
    if (this.now - last < Math.max(1, Math.floor(this.cfg.retransmitTicks / 2))) return;
    this.newViewAnsweredAt.set(to, this.now);
    this.send(to, this.newViewMsg);
  }

  /** W valid VIEW_CHANGEs for views above ours: join the smallest of them (OSDI'99 §4.5.2). */
  private joinIfBehind(): void {
    let count = 0;
    let smallest = NO_DEADLINE;
    for (const vc of this.viewChanges.values()) {
      if (vc.newView <= this.view) continue;
      count++;
      smallest = Math.min(smallest, vc.newView);
    }
    if (count >= this.w) this.startViewChange(smallest, "join");
  }

  /** With Q VIEW_CHANGEs for the target view: arm the escalation timer; the new leader builds NEW_VIEW. */
  private viewChangeProgress(): void {
    if (this.phase !== "viewChange") return;
    const vcs = this.viewChangesFor(this.view);
    if (vcs.length < this.quorumSize()) return;
    if (this.vcArmedFor !== this.view) {
      this.vcArmedFor = this.view;
      const backoff = 2 ** Math.min(this.vcAttempt, this.cfg.viewChangeBackoffDoublingsMax);
      this.vcDeadline = this.now + this.cfg.viewChangeTimeoutTicks * backoff;
      this.vcAttempt++;
    }
    if (this.isLeader() && this.newViewSentFor !== this.view) this.buildNewView(vcs.slice(0, this.quorumSize()));
  }

  private viewChangesFor(view: number): ViewChange[] {
    const vcs = [...this.viewChanges.values()].filter((vc) => countsForView(vc, view));
    vcs.sort((a, b) => a.replica - b.replica);
    return vcs;
  }

  /** The new leader's NEW_VIEW: O recomputed from V and a signed header for every entry. */
  private buildNewView(vcs: ViewChange[]): void {
    const plan = planNewView(this.ctx, vcs);
    if (plan === null) return;
    this.newViewSentFor = this.view;
    const o = plan.digests.map((d, i) => this.signHeader(this.view, plan.minS + 1 + i, d));
    const nv = this.signed<NewView>({
      t: "NEW_VIEW",
      view: this.view,
      viewChanges: vcs,
      minS: plan.minS,
      maxS: plan.maxS,
      o,
      sig: EMPTY_SIG,
    });
    this.installNewView(nv, plan);
  }

  private onNewView(m: NewView): void {
    if (m.view <= this.installedView || m.view < this.view) return;
    if (!this.verify(m)) return;
    const plan = this.checkNewView(m);
    if (plan === null) {
      // Signed by the leader and wrong: the leader is faulty.
      this.startViewChange(Math.max(m.view, this.view) + 1, "bad-new-view");
      return;
    }
    this.installNewView(m, plan);
  }

  /** Every replica recomputes minS, maxS and O from V; they must equal what was sent. */
  private checkNewView(m: NewView): NewViewPlan | null {
    const seen = new Set<ReplicaId>();
    for (const vc of m.viewChanges) {
      if (!countsForView(vc, m.view) || !isMember(this.ctx, vc.replica) || seen.has(vc.replica)) return null;
      seen.add(vc.replica);
    }
    if (seen.size < this.quorumSize()) return null;
    for (const vc of m.viewChanges) {
      const known = this.viewChanges.get(vc.replica);
      const same = known !== undefined && known.newView === vc.newView && bytesEqual(known.sig, vc.sig);
      if (!same && !validViewChange(this.ctx, vc)) return null;
    }
    const plan = planNewView(this.ctx, m.viewChanges);
    if (plan === null) return null;
    if (!this.recomputesNewView()) return { ...plan, minS: m.minS, maxS: m.maxS, digests: m.o.map((h) => h.digest) };
    if (plan.minS !== m.minS || plan.maxS !== m.maxS || m.o.length !== plan.digests.length) return null;
    for (let i = 0; i < m.o.length; i++) {
      const h = m.o[i] as PrePrepare;
      if (h.view !== m.view || h.seq !== plan.minS + 1 + i || h.batch !== null) return null;
      if (!bytesEqual(h.digest, plan.digests[i] as Uint8Array)) return null;
    }
    for (const h of m.o) if (!this.verify(h)) return null;
    return plan;
  }

  /**
   * Installs view m.view (ORDERING.md §6, "Installing NEW_VIEW"): adopt or fetch the stable
   * checkpoint at minS, replace the log by the O entries, persist, then vote on every O
   * entry (null batches included). Requests of dropped entries stay pending.
   */
  private installNewView(m: NewView, plan: NewViewPlan): void {
    this.view = m.view;
    if (plan.minS > this.h && plan.minS > 0) {
      if (plan.minS > this.lastExecuted) this.jumpToStable(plan.minS, plan.stableDigest, plan.stableProof);
      else this.adoptStable(plan.minS, plan.stableDigest, plan.stableProof);
    }
    const old = this.log;
    this.log = new Map();
    this.freeIndex.clear();
    this.newViewIndex.clear();
    this.signedVotes.clear();
    for (let i = 0; i < plan.digests.length; i++) {
      const s = plan.minS + 1 + i;
      const digest = plan.digests[i] as Uint8Array;
      const header = m.o[i] as PrePrepare;
      if (s <= this.h) continue;
      const done = this.decided.get(s);
      if (done !== undefined) {
        assert(bytesEqual(done.digest, digest), `NEW_VIEW ${m.view} names another digest at executed seq ${s}`);
      }
      const e = this.newEntry(m.view, s);
      this.log.set(s, e);
      this.acceptInto(e, header, this.findBody(s, digest, old, plan), true);
      if (this.isLeader()) this.signedVotes.set(`PRE_PREPARE:${m.view}:${s}`, digest);
    }
    this.installedView = m.view;
    this.phase = "normal";
    this.newViewMsg = m;
    this.myViewChange = null;
    this.vcDeadline = NO_DEADLINE;
    this.vcArmedFor = -1;
    this.nextSeq = Math.max(plan.maxS, this.lastExecuted) + 1;
    for (const [r, vc] of [...this.viewChanges]) if (vc.newView <= m.view) this.viewChanges.delete(r);
    this.persistView();
    this.emit({ kind: "viewInstalled", view: m.view, leader: this.leader() });
    if (this.isLeader()) this.announceNewView(m);
    this.voteOnNewViewEntries();
    this.askForMissingBodies();
    this.pending.restartTimers(this.highestAccepted);
    this.lastLeaderProgress = this.now;
    this.tp.onViewInstalled(this.now);
    if (!this.isLeader()) this.forwardAllPending();
    this.replayBuffered();
  }

  /** A body for O[s] from any source this replica already trusts, or null to fetch it. */
  private findBody(s: number, digest: Uint8Array, old: Map<number, Entry>, plan: NewViewPlan): ClientRequest[] | null {
    if (bytesEqual(digest, NULL_DIGEST)) return [];
    const candidates: Array<ClientRequest[] | null | undefined> = [
      this.decided.get(s)?.batch,
      old.get(s)?.batch,
      this.preparedStore.get(s)?.batch,
      plan.bodies.get(s),
    ];
    const e = old.get(s);
    for (const c of candidates) {
      if (c === null || c === undefined) continue;
      if (c === e?.batch && e.digest !== null && bytesEqual(e.digest, digest)) return c;
      if (bodyMatches(this.crypto, digest, c)) return c;
    }
    return null;
  }

  private announceNewView(m: NewView): void {
    this.send("all", m);
    for (const e of this.log.values()) {
      if (e.header === null || e.batch === null || e.batch.length === 0) continue;
      this.send("all", { ...e.header, batch: e.batch });
    }
  }

  private voteOnNewViewEntries(): void {
    for (const e of [...this.log.values()]) {
      if (e.digest === null) continue;
      if (this.cfg.mode === "cft") {
        this.markPrepared(e);
        continue;
      }
      if (!this.isLeader()) {
        const own = this.signVote("PREPARE", this.view, e.seq, e.digest);
        e.prepares.set(this.voteKey(this.cfg.id), own);
        this.send("all", own);
      }
      this.checkPrepared(e);
    }
  }

  private askForMissingBodies(): void {
    let lo = NO_DEADLINE;
    let hi = -1;
    for (const e of this.log.values()) {
      if (e.batch !== null || e.digest === null) continue;
      if (e.bodyAskedAt >= 0 && this.now - e.bodyAskedAt < this.cfg.retransmitTicks) continue;
      e.bodyAskedAt = this.now;
      lo = Math.min(lo, e.seq);
      hi = Math.max(hi, e.seq);
    }
    if (hi < 0) return;
    const req: StateRequest = { t: "STATE_REQUEST", kind: "batch", seq: lo, toSeq: hi, digest: null, nonce: this.nonce++ };
    this.send("all", req);
  }

  /** Pending requests go to the new leader again, with fresh timers (ORDERING.md §6). */
  private forwardAllPending(): void {
    for (const [, forClient] of this.pending.clients()) {
      for (const p of forClient.values()) this.forwardQueue.push(p.req);
    }
  }

  private replayBuffered(): void {
    const held = [...this.buffered.values()];
    this.buffered.clear();
    for (const { from, msg } of held) this.onMessage(from, msg);
  }

  // -------------------------------------------------------------------------------------
  // Time (ORDERING.md §5 timers, §6 view-change timers, Aardvark expectations).
  // -------------------------------------------------------------------------------------

  private onTick(): void {
    this.now++;
    for (const peer of this.flood.onTick(this.now)) this.emit({ kind: "peerFlooding", peer });
    if (this.transfer !== null && this.now >= this.transfer.nextTryAt) {
      this.transfer.attempt++;
      this.transfer.nextTryAt = this.now + this.cfg.transferRetryTicks;
      this.emitFetch();
    }
    if (this.phase === "viewChange") {
      if (this.now >= this.vcDeadline) {
        this.startViewChange(this.view + 1, "view-change-timeout");
      } else if (this.now >= this.vcResendAt && this.myViewChange !== null) {
        this.send("all", this.myViewChange);
        this.vcResendAt = this.now + this.cfg.retransmitTicks;
      }
    } else {
      this.checkRequestsAndLeader();
      if (this.phase === "normal") {
        this.retransmitStalled();
        this.askForMissingBodies();
      }
    }
    this.resendCheckpoints();
    this.catchUpProbe();
    this.flushForwards();
  }

  /**
   * A CHECKPOINT is sent once; if one is lost, the checkpoint may never become stable and
   * the window fills up for good. So while execution stalls, resend our own CHECKPOINTs
   * above h (re-signed on demand: ed25519 is deterministic, the bytes are the same).
   */
  private resendCheckpoints(): void {
    if (this.now < this.nextCheckpointResendAt) return;
    if (this.now - this.lastExecProgress < this.cfg.retransmitTicks) return;
    let any = false;
    for (const [seq, digest] of this.ownCheckpoints) {
      if (seq <= this.h) continue;
      this.send("all", this.signed<Checkpoint>({ t: "CHECKPOINT", seq, digest, replica: this.cfg.id, sig: EMPTY_SIG }));
      any = true;
    }
    if (any) this.nextCheckpointResendAt = this.now + this.cfg.retransmitTicks;
  }

  /**
   * One pass over the head request of every client's chain: request timers (forward to all,
   * then suspect), the heartbeat, fairness and throughput expectations.
   */
  private checkRequestsAndLeader(): void {
    const leader = this.isLeader();
    let busy = false;
    let waitingSince = NO_DEADLINE;
    let unfair = false;
    let timedOut = false;
    const activeClients = this.pending.clientCount();
    const fairRounds = this.cfg.fairnessMultiplier * Math.ceil(activeClients / this.cfg.batchRequestsMax);
    const fairnessBound = this.cfg.pipelineDepth + fairRounds;
    for (const [client, forClient] of this.pending.clients()) {
      const head = forClient.get(this.clients.lastExecuted(client) + 1);
      if (head === undefined) continue;
      if (head.timerStart < 0) {
        // The request just became the head of its chain: its timer and its fairness
        // reference start now, not when it arrived behind a gap.
        head.timerStart = this.now;
        head.seqAtArrival = this.highestAccepted;
      }
      if (leader) continue;
      const age = this.now - head.firstSeen;
      if (age > this.cfg.batchDelayTicks) busy = true;
      const inBatch = this.freeIndex.has(head.key) || this.newViewIndex.has(head.key);
      if (!inBatch && age > this.cfg.batchDelayTicks) {
        waitingSince = Math.min(waitingSince, Math.max(head.firstSeen, head.timerStart));
        if (this.lastExecuted > head.seqAtArrival + fairnessBound) unfair = true;
      }
      if (this.now - head.timerStart < this.cfg.requestTimeoutTicks) continue;
      if (head.stage === 0) {
        head.stage = 1;
        head.timerStart = this.now;
        head.seqAtArrival = this.highestAccepted;
        this.forwardAllQueue.push(head.req);
      } else if (head.stage === 1) {
        head.stage = 2;
        timedOut = true;
      }
    }
    if (leader) return;
    if (timedOut) return this.suspect("request-timeout");
    if (unfair) return this.suspect("unfair");
    const inFlight = this.highestAccepted - this.lastExecuted;
    const pipelineFull = inFlight >= this.cfg.pipelineDepth;
    if (!pipelineFull && waitingSince !== NO_DEADLINE) {
      if (this.now - Math.max(waitingSince, this.lastLeaderProgress) > this.progressTimeoutCur) {
        this.progressTimeoutCur = Math.min(this.progressTimeoutCur * 2, this.cfg.progressTimeoutTicks * 2 ** PROGRESS_BACKOFF_CAP);
        return this.suspect("heartbeat");
      }
    }
    if (this.tp.onTick(this.now, busy)) this.suspect("throughput");
  }

  /** Resend own votes for instances that stopped moving (ORDERING.md §4, retransmission). */
  private retransmitStalled(): void {
    if (this.now - this.lastExecProgress < this.cfg.retransmitTicks || this.now < this.nextRetransmitAt) return;
    let any = false;
    for (const e of this.log.values()) {
      if (e.seq <= this.lastExecuted || e.header === null || e.digest === null) continue;
      any = true;
      if (this.isLeader() && e.batch !== null && !e.fromNewView) this.send("all", { ...e.header, batch: e.batch });
      const p = e.prepares.get(this.voteKey(this.cfg.id));
      if (p !== undefined && p.replica === this.cfg.id) this.send("all", p);
      const c = e.commits.get(this.voteKey(this.cfg.id));
      if (c !== undefined && c.replica === this.cfg.id) this.send("all", c);
    }
    if (any) this.nextRetransmitAt = this.now + this.cfg.retransmitTicks;
  }

  /**
   * Asks peers for decided batches (or their stable checkpoint) when this replica is
   * behind: W peers are known to be past it; or it is stuck in a view change, where it
   * takes no part in agreement; or it has executed nothing for a long time, when one peer
   * at a time is asked, so that a replica that missed everything before a quiet spell
   * still catches up.
   */
  private catchUpProbe(): void {
    if (this.now < this.nextProbeAt) return;
    const target = this.kthLargest(this.peerSeq.values(), this.w);
    const stalledTicks = this.now - this.lastExecProgress;
    const farBehind = target > this.lastExecuted + this.cfg.pipelineDepth;
    const stalled = stalledTicks >= this.cfg.retransmitTicks;
    const req: StateRequest = {
      t: "STATE_REQUEST",
      kind: "decided",
      seq: this.lastExecuted + 1,
      toSeq: this.lastExecuted + this.cfg.logWindow,
      digest: null,
      nonce: this.nonce,
    };
    if (target > this.lastExecuted && (farBehind || stalled)) {
      for (const [peer, seq] of this.peerSeq) if (seq > this.lastExecuted && peer !== this.cfg.id) this.send(peer, req);
    } else if (this.phase === "viewChange" && stalled) {
      this.send("all", req);
    } else if (stalledTicks >= IDLE_PROBE_INTERVALS * this.cfg.retransmitTicks) {
      const peer = (this.cfg.id + 1 + (this.nonce % (this.cfg.n - 1))) % this.cfg.n;
      this.send(peer, req);
      this.nonce++;
      this.nextProbeAt = this.now + IDLE_PROBE_INTERVALS * this.cfg.retransmitTicks;
      return;
    } else {
      return;
    }
    this.nonce++;
    this.nextProbeAt = this.now + this.cfg.retransmitTicks;
  }

  private flushForwards(): void {
    if (this.forwardAllQueue.length > 0) {
      for (const requests of this.chunks(this.forwardAllQueue)) this.send("all", { t: "FORWARD", requests });
      this.forwardAllQueue = [];
    }
    if (this.forwardQueue.length > 0) {
      const leader = this.leader();
      if (leader !== this.cfg.id && this.phase === "normal") {
        for (const requests of this.chunks(this.forwardQueue)) this.send(leader, { t: "FORWARD", requests });
      }
      this.forwardQueue = [];
    }
  }

  /**
   * Splits requests into FORWARD-sized pieces, bounded like a batch by count and bytes
   * (each piece holds at least one request), so no message outgrows what a batch may be.
   */
  private chunks(requests: readonly ClientRequest[]): ClientRequest[][] {
    const out: ClientRequest[][] = [];
    let piece: ClientRequest[] = [];
    let bytes = 0;
    for (const r of requests) {
      const size = requestBytes(r);
      if (piece.length > 0 && (piece.length >= this.cfg.batchRequestsMax || bytes + size > this.cfg.batchBytesMax)) {
        out.push(piece);
        piece = [];
        bytes = 0;
      }
      piece.push(r);
      bytes += size;
    }
    if (piece.length > 0) out.push(piece);
    return out;
  }

  // -------------------------------------------------------------------------------------
  // After every step.
  // -------------------------------------------------------------------------------------

  private afterStep(): void {
    this.tryExecute();
    this.tryPropose();
    this.tryExecute();
  }

  // -------------------------------------------------------------------------------------
  // Restart from persisted records.
  // -------------------------------------------------------------------------------------

  private restore(records: readonly PersistedRecord[]): void {
    const accepts: PrePrepare[] = [];
    let viewRec: Extract<PersistedRecord, { t: "view" }> | null = null;
    for (const r of records) {
      switch (r.t) {
        case "view":
          viewRec = r;
          break;
        case "accept":
          accepts.push(r.prePrepare);
          break;
        case "prepared": {
          const prev = this.preparedStore.get(r.cert.seq);
          if (prev === undefined || prev.cert.view <= r.cert.view) this.preparedStore.set(r.cert.seq, { cert: r.cert, batch: r.batch });
          break;
        }
        case "decided":
          this.restoreDecided(r);
          break;
        case "checkpoint":
          this.ownCheckpoints.set(r.seq, r.stateDigest);
          break;
        case "stable":
          if (r.seq > this.h) {
            this.h = r.seq;
            this.hDigest = r.digest;
            this.hProof = r.proof;
          }
          break;
        case "snapshot":
          if (r.seq > this.lastExecuted) {
            this.lastExecuted = r.seq;
            this.clients.import(r.clients);
            this.ownCheckpoints.set(r.seq, r.stateDigest);
            for (const s of [...this.decided.keys()]) if (s <= r.seq) this.decided.delete(s);
          }
          break;
        default:
          assertNever(r);
      }
    }
    if (viewRec !== null) {
      this.view = viewRec.view;
      this.installedView = viewRec.installedView;
      this.phase = viewRec.status;
      this.myViewChange = viewRec.viewChange;
      this.newViewMsg = viewRec.newView;
    }
    this.highestAccepted = this.lastExecuted;
    this.nextSeq = this.lastExecuted + 1;
    this.collectGarbage();
    if (this.phase === "normal") this.restoreLog(accepts);
    if (this.phase === "viewChange" && this.myViewChange !== null) {
      this.viewChanges.set(this.cfg.id, this.myViewChange);
      this.vcResendAt = 0;
    }
    this.tp.onViewInstalled(0);
    if (this.h > this.lastExecuted) {
      // Restarted during a state transfer: ask again.
      this.transfer = { seq: this.h, digest: this.hDigest, proof: this.hProof, nextTryAt: 0, attempt: 0 };
    }
  }

  private restoreDecided(r: Extract<PersistedRecord, { t: "decided" }>): void {
    if (r.seq <= this.lastExecuted) return;
    assert(r.seq === this.lastExecuted + 1, `restored decision ${r.seq} after ${this.lastExecuted}`);
    for (const req of r.batch) if (this.clients.isNext(req)) this.clients.recordExecuted(req);
    this.lastExecuted = r.seq;
    this.decided.set(r.seq, { view: r.view, digest: r.digest, batch: r.batch, commits: r.commits });
  }

  /** Rebuilds the current view's entries: the NEW_VIEW's O, then accepted proposals. */
  private restoreLog(accepts: readonly PrePrepare[]): void {
    const nv = this.newViewMsg;
    if (nv !== null && nv.view === this.installedView) {
      for (const header of nv.o) {
        if (header.seq <= this.h) continue;
        const e = this.newEntry(nv.view, header.seq);
        this.log.set(header.seq, e);
        const body = bytesEqual(header.digest, NULL_DIGEST)
          ? []
          : (this.decided.get(header.seq)?.batch ?? this.preparedStore.get(header.seq)?.batch ?? null);
        const matches = body !== null && bodyMatches(this.crypto, header.digest, body);
        this.acceptInto(e, header, matches ? body : null, true);
        if (header.seq >= this.nextSeq) this.nextSeq = header.seq + 1;
      }
    }
    for (const pp of accepts) {
      if (pp.view !== this.installedView || pp.seq <= this.h || pp.batch === null) continue;
      const e = this.entryFor(pp.seq);
      if (e.header !== null) continue;
      this.acceptInto(e, { ...pp, batch: null }, pp.batch, false);
      if (pp.seq >= this.nextSeq) this.nextSeq = pp.seq + 1;
    }
    for (const e of this.log.values()) {
      const p = this.preparedStore.get(e.seq);
      if (p !== undefined && p.cert.view === e.view && e.digest !== null && bytesEqual(p.cert.digest, e.digest)) {
        e.prepared = true;
      }
      if (e.digest === null) continue;
      if (this.cfg.mode === "cft" && !e.prepared && e.header !== null && e.batch !== null) {
        // In crash mode acceptance is preparation; a crash between the two records lost
        // only the second, which follows from the first.
        e.prepared = true;
        const cert: PreparedCert = { view: e.view, seq: e.seq, digest: e.digest, prePrepare: e.header, prepares: [], batch: e.batch };
        if (p === undefined || p.cert.view <= e.view) this.preparedStore.set(e.seq, { cert, batch: e.batch });
      }
      const kinds = this.isLeader() || this.cfg.mode === "cft" ? [] : ["PREPARE"];
      if (e.prepared) kinds.push("COMMIT");
      for (const t of kinds) this.signedVotes.set(`${t}:${e.view}:${e.seq}`, e.digest);
      if (this.isLeader()) this.signedVotes.set(`PRE_PREPARE:${e.view}:${e.seq}`, e.digest);
    }
    // Own votes are regenerated on demand: ed25519 is deterministic, so a resent vote is
    // byte-identical to the one sent before the crash.
    for (const e of this.log.values()) {
      if (e.digest === null || e.seq <= this.lastExecuted) continue;
      if (this.cfg.mode === "bft" && !this.isLeader()) {
        const own = this.signed<Prepare>({ t: "PREPARE", view: e.view, seq: e.seq, digest: e.digest, replica: this.cfg.id, sig: EMPTY_SIG });
        e.prepares.set(this.voteKey(this.cfg.id), own);
      }
      if (e.prepared) {
        const own = this.signed<Commit>({ t: "COMMIT", view: e.view, seq: e.seq, digest: e.digest, replica: this.cfg.id, sig: EMPTY_SIG });
        e.commits.set(this.voteKey(this.cfg.id), own);
      }
    }
  }
}
