/**
 * The ordering core: PBFT with signatures (Castro & Liskov, OSDI'99 §4; TOCS 2002 §4
 * "BFT-PK"), request handling after BFT-SMaRt / Mod-SMaRt, leader monitoring after
 * Aardvark, as one sans-IO deterministic state machine. PROTOCOL.md beside this file is the
 * reference; the section cited at each handler is the rule it implements.
 *
 * The class is driven only through `step`; it reads no clock, draws no random number and
 * touches no socket or disk. Everything it needs from the world arrives as an input, and
 * everything it wants done leaves in a `Ready`: the records to persist, then the effects
 * (persist before send).
 *
 * This file holds `step`, the dispatch of every input and peer message, the role dispatch
 * (`stepLeader` / `stepBackup`) and the normal case; state.ts lists the modules that
 * implement the rest.
 */
import { barrierOf, barrierRequest, isBarrier, isWellFormedBarrier } from "./barrier.ts";
import { bytesEqual } from "../../../wire/bytes.ts";
import { bodyMatches, isMember } from "./certs.ts";
import {
  acceptStateResponse,
  adoptStable,
  answerLaggingVoter,
  onCheckpoint,
  onCheckpointReady,
  onSnapshotInstalled,
  onStateRequest,
  snapshotTarget,
  provesStable,
  takeCheckpoint,
} from "./checkpoints.ts";
import { admit, type ClientTableExport, isRefusal, requestKey, verifiedTwin } from "./clients.ts";
import { type CoreConfig, checkConfig, type ReplicaId } from "./config.ts";
import {
  acceptInto,
  attachBody,
  checkCommitted,
  checkPrepared,
  type Decision,
  type Entry,
  entryFor,
  markPrepared,
  sendOwnPrepare,
  signHeader,
  unindex,
  voteFenced,
  fenceStatus,
} from "./log.ts";
import {
  type Checkpoint,
  type ClientRequest,
  type Commit,
  type Forward,
  type PeerMessage,
  type Prepare,
  type PrePrepare,
  requestBytes,
  type StateResponse,
} from "./messages.ts";
import {
  buildBatch,
  countUrgentInFlight,
  FLAT_POLICY,
  noteUrgentBatch,
  ordinaryDepth,
  pacingUrgent,
  padding,
  type ProposalPolicy,
  URGENT_PIPELINE_SLOTS,
} from "./priority.ts";
import { restore, startEmptyInEpoch } from "./restore.ts";
import { fenceLostVotes } from "./fence.ts";
import { assert, assertNever, CoreState, type Seams } from "./state.ts";
import { finishTick, startTick, tickBackup, tickLeader } from "./timers.ts";
import type { CoreCrypto, CoreInput, CoreSizes, CoreStatus, PersistedRecord, Ready } from "./types.ts";
import { checkSplitVote, equivocatedHeaders, onEvidence, onSuspect, suspect } from "./suspicion.ts";
import { answerWithNewView, notePeer, onNewView, onViewChange, persistView, tickViewChange } from "./view-change.ts";

export { CoreAssertionError } from "./state.ts";

/** Messages held for the target view while a view change is in progress (one per kind, seq, signer). */
const BUFFERED_PER_REPLICA_PER_SEQ = 3;

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
  private readonly state: CoreState;

  /** `policy`: how urgent each client's requests are, for batch fill (priority.ts); all equal by default. */
  constructor(cfg: CoreConfig, crypto: CoreCrypto, restored?: readonly PersistedRecord[], policy: ProposalPolicy = FLAT_POLICY) {
    checkConfig(cfg);
    this.cfg = cfg;
    this.crypto = crypto;
    const seams: Seams = {
      quorumSize: () => this.quorumSize(),
      voteKey: (signer: ReplicaId) => this.voteKey(signer),
      voteMatches: (entryDigest: Uint8Array, voteDigest: Uint8Array) => this.voteMatches(entryDigest, voteDigest),
      recomputesNewView: () => this.recomputesNewView(),
      decisionClaimsNeeded: () => this.decisionClaimsNeeded(),
    };
    this.state = new CoreState(cfg, crypto, seams, (from, msg) => this.onMessage(from, msg), policy);
    if (restored !== undefined && restored.length > 0) restore(this.state, restored);
    else if (cfg.epochStart !== undefined) startEmptyInEpoch(this.state);
    // Records lost to damage may include the view record and the stable ones the restart
    // fence is bounded by, or be all of them: every view is fenced instead (fence.ts).
    if (cfg.lostRecords === true) fenceLostVotes(this.state);
  }

  // -------------------------------------------------------------------------------------
  // Seams for deliberately broken test variants. The correct behaviour is the default.
  // -------------------------------------------------------------------------------------

  /** Q. Every quorum comparison goes through here. */
  protected quorumSize(): number {
    return this.state.certContext.quorumSize;
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

  /**
   * How many distinct peers must report a decision before catch-up takes it: f+1 in BFT
   * mode, since COMMITs are authenticated by the link and a decision certificate proves
   * nothing to a third party (PROTOCOL.md §3); one in crash mode, whose peers do not lie.
   */
  protected decisionClaimsNeeded(): number {
    return this.cfg.mode === "cft" ? 1 : this.cfg.f + 1;
  }

  // -------------------------------------------------------------------------------------
  // Public surface.
  // -------------------------------------------------------------------------------------

  /**
   * Feeds one input; returns what the runtime must do: every record of `persist` made
   * durable before any of `effects` is performed.
   */
  step(input: CoreInput): Ready {
    const state = this.state;
    // A step that threw may have left a partial Ready behind: start from an empty one.
    state.output.take();
    state.admittedFromClient = null;
    this.dispatch(input);
    if (state.isLeader()) this.stepLeader();
    else this.stepBackup();
    return state.output.take();
  }

  status(): CoreStatus {
    const state = this.state;
    return {
      id: this.cfg.id,
      mode: this.cfg.mode,
      view: state.view,
      installedView: state.installedView,
      leader: state.leader(),
      status: state.phase,
      lastExecuted: state.lastExecuted,
      stableSeq: state.stableSeq,
      pending: state.pending.total,
      transferTo: state.transfer?.seq ?? null,
      voteFence: fenceStatus(state),
      lostVotesFenced: state.lostVotes !== null,
    };
  }

  /**
   * Whether a fetched state at (seq, digest), vouched for by `proof`, would be installed
   * now (the transfer's target, or an older stable checkpoint still ahead: snapshotTarget).
   * The runtime asks before it puts the state into its machine.
   */
  acceptsSnapshot(seq: number, digest: Uint8Array, proof: readonly Checkpoint[]): boolean {
    return snapshotTarget(this.state, seq, digest, proof) !== null;
  }

  sizes(): CoreSizes {
    const state = this.state;
    let votes = 0;
    for (const set of state.checkpointVotes.values()) votes += set.size;
    return {
      log: state.entries.size,
      prepared: state.preparedCerts.size,
      decided: state.decided.size,
      decidedPending: state.decidedPending.size,
      checkpointSeqs: state.checkpointVotes.size,
      checkpointVotes: votes,
      farCheckpoints: state.farCheckpoints.size,
      viewChanges: state.viewChanges.size,
      buffered: state.buffered.size,
      pending: state.pending.total,
      pendingMaxPerClient: state.pending.maxPerClient(),
      forwardQueue: state.forwardToLeader.length + state.forwardToAll.length,
      quarantined: state.quarantinedUntil.size,
      heldPadding: state.heldPadding.size,
    };
  }

  /** The client table, for the application's snapshot. */
  exportClients(): ClientTableExport {
    return this.state.clientTable.export();
  }

  /** The last executed seq of one client (0 if none): a lookup, not an export. */
  lastExecutedOf(client: string): number {
    return this.state.clientTable.lastExecuted(client);
  }

  // -------------------------------------------------------------------------------------
  // Dispatch.
  // -------------------------------------------------------------------------------------

  private dispatch(input: CoreInput): void {
    const state = this.state;
    switch (input.kind) {
      case "message":
        return this.onMessage(input.from, input.msg);
      case "request":
        return this.onRequest(input.req, input.authenticated === true);
      case "tick":
        if (input.nowMs !== undefined) state.nowMs = input.nowMs;
        return this.onTick();
      case "checkpointReady":
        return onCheckpointReady(state, input.seq, input.appDigest);
      case "suspectLeader":
        if (input.view === state.view) suspect(state, input.reason);
        return;
      case "external":
        // Execution catches up in the role step that follows every input.
        if (this.cfg.externalBarrier && input.seq > state.externalExecuted) state.externalExecuted = input.seq;
        return;
      case "pad":
        // The leader proposes in the role step that follows every input.
        if (input.seq <= state.padTo) return;
        state.padTo = input.seq;
        state.padSince = state.now;
        return this.replayHeldPadding();
      case "snapshotInstalled":
        return onSnapshotInstalled(state, input.seq, input.stateDigest, input.appDigest, input.clients, input.proof);
      default:
        return assertNever(input);
    }
  }

  private onMessage(from: ReplicaId, msg: PeerMessage): void {
    const state = this.state;
    if (!isMember(state.certContext, from) || from === this.cfg.id) return;
    state.floodMonitor.count(from);
    if (namesAnotherSigner(from, msg)) {
      // Votes, checkpoints and view changes travel only from their signers (a replica
      // resends its own, never another's on its own): one naming another signer is a lie,
      // dropped before it can take that signer's place in a buffer or cost a verification.
      state.emit({
        kind: "peerMisbehaved",
        peer: from,
        reason: `${msg.t} that names replica ${(msg as { replica: ReplicaId }).replica} as its signer`,
      });
      return;
    }
    switch (msg.t) {
      case "PRE_PREPARE":
        return this.onPrePrepare(from, msg);
      case "PREPARE":
        return this.onPrepare(from, msg);
      case "COMMIT":
        return this.onCommit(from, msg);
      case "CHECKPOINT":
        notePeer(state, from, -1, msg.seq);
        return onCheckpoint(state, from, msg);
      case "VIEW_CHANGE":
        return onViewChange(state, msg);
      case "NEW_VIEW":
        return onNewView(state, msg);
      case "FORWARD":
        return this.onForward(from, msg);
      case "STATE_REQUEST":
        return onStateRequest(state, from, msg);
      case "STATE_RESPONSE":
        return this.onStateResponse(from, msg);
      case "SUSPECT":
        return onSuspect(state, from, msg);
      case "EVIDENCE":
        return onEvidence(state, from, msg);
      default:
        return assertNever(msg);
    }
  }

  /** One tick (timers.ts): the view-change timers during a view change, else the role's timers. */
  private onTick(): void {
    const state = this.state;
    startTick(state);
    if (state.phase === "viewChange") tickViewChange(state);
    else if (state.isLeader()) tickLeader(state);
    else tickBackup(state);
    finishTick(state);
  }

  // -------------------------------------------------------------------------------------
  // Role dispatch, after every input (as etcd raft's stepLeader / stepFollower).
  // -------------------------------------------------------------------------------------

  /** The leader executes what committed, proposes what waits, and executes what that decided. */
  private stepLeader(): void {
    this.tryExecute();
    this.tryPropose();
    this.tryExecute();
  }

  /**
   * A backup holds a request a client gave it for a lazy forward to the leader (clients.ts,
   * forwardOverdue), and executes what committed.
   */
  private stepBackup(): void {
    const state = this.state;
    const req = state.admittedFromClient;
    const p = req === null ? undefined : state.pending.get(req.client, req.seq);
    if (p !== undefined) state.pending.holdForLeader(p);
    this.tryExecute();
  }

  /**
   * The normal-case gate (core/ordering/PROTOCOL.md §4): only the current view, only inside (h, H];
   * during a view change, messages for the target view wait in a bounded buffer.
   */
  private gate(from: ReplicaId, view: number, seq: number, key: string, msg: PeerMessage): boolean {
    const state = this.state;
    notePeer(state, from, view, seq);
    if (view < state.installedView) answerWithNewView(state, from);
    if (view !== state.view) return false;
    if (seq <= state.stableSeq || seq > state.highWater) return false;
    if (state.phase === "viewChange") {
      const bound = BUFFERED_PER_REPLICA_PER_SEQ * this.cfg.logWindow * this.cfg.n;
      if (!state.buffered.has(key) && state.buffered.size < bound) state.buffered.set(key, { from, msg });
      return false;
    }
    return true;
  }

  // -------------------------------------------------------------------------------------
  // Client requests (core/ordering/PROTOCOL.md §5; admission in clients.ts).
  // -------------------------------------------------------------------------------------

  private onRequest(req: ClientRequest, authenticated: boolean): void {
    const state = this.state;
    const verdict = admit(state, req, authenticated);
    if (verdict === "executed") state.emit({ kind: "resendReply", client: req.client, seq: req.seq });
    // A client that reached this replica directly is told at once, so it backs off
    // instead of waiting for its timeout; forwarded copies are refused silently.
    if (isRefusal(verdict)) state.emit({ kind: "refused", client: req.client, seq: req.seq, reason: verdict });
    if (verdict === "added") state.admittedFromClient = req;
  }

  private onForward(from: ReplicaId, msg: Forward): void {
    const limit = Math.min(msg.requests.length, this.cfg.batchRequestsMax);
    for (let i = 0; i < limit; i++) {
      const req = msg.requests[i] as ClientRequest;
      if (admit(this.state, req, false, from) !== "bad-signature") continue;
      // Not valid at this replica's clock may mean only "not yet" (a publish stamped ahead,
      // which a faulty leader's proposal time let correct backups take and forward at a view
      // change): that proves nothing. Valid at no time at all, it was never verified, and a
      // correct replica forwards only requests it admitted: the rest of this FORWARD is not
      // checked, and the runtime cuts its sender off for a while.
      if (this.state.crypto.verifyRequest(req, Number.MAX_SAFE_INTEGER)) continue;
      this.state.emit({ kind: "peerMisbehaved", peer: from, reason: "a FORWARD of a request whose signature does not verify", mute: true });
      return;
    }
  }

  // -------------------------------------------------------------------------------------
  // Leader: proposing (core/ordering/PROTOCOL.md §4, "Leader").
  // -------------------------------------------------------------------------------------

  private tryPropose(): void {
    const state = this.state;
    if (state.phase !== "normal" || state.installedView !== state.view) return;
    if (state.transfer !== null) return;
    // Restarted as this view's leader, possibly having proposed here what it no longer
    // knows of: it proposes again only in a later view (the backups' timers bring one).
    if (voteFenced(state, state.view, state.nextProposalSeq)) return;
    for (const e of state.entries.values()) {
      if (e.seq > state.lastExecuted && e.batch === null) return;
    }
    // A leader that caught up (decisions or a snapshot from peers, after a restart with
    // nothing on disk) must not propose at seqs already decided: they are settled, and
    // proposing there would only fill its log with instances below its window.
    if (state.nextProposalSeq <= state.lastExecuted) state.nextProposalSeq = state.lastExecuted + 1;
    // Proposals made in the slots kept for urgent requests (priority.ts) are counted apart:
    // they never take the place of ordinary ones, so a steady trickle of urgent requests
    // cannot keep the ordinary pipeline full and lock the less urgent out.
    // While urgent requests arrive, less urgent work is paced (priority.ts, pacingUrgent).
    const urgentInFlight = countUrgentInFlight(state);
    const paced = pacingUrgent(state);
    const depth = ordinaryDepth(state, paced);
    let ordinaryInFlight = state.nextProposalSeq - 1 - state.lastExecuted - urgentInFlight;
    while (ordinaryInFlight < depth && state.nextProposalSeq <= state.highWater) {
      const batch = buildBatch(state, false, paced) ?? padding(state);
      if (batch === null) return;
      this.propose(batch);
      ordinaryInFlight++;
    }
    for (let urgent = urgentInFlight; urgent < URGENT_PIPELINE_SLOTS && state.nextProposalSeq <= state.highWater; urgent++) {
      const batch = buildBatch(state, true);
      if (batch === null) return;
      state.urgentSlotSeqs.add(state.nextProposalSeq);
      this.propose(batch);
    }
  }

  private propose(requests: ClientRequest[]): void {
    const state = this.state;
    // §12: the batch carries the external order this leader had executed, inside its digest.
    const batch = this.cfg.externalBarrier ? [barrierRequest(state.externalExecuted), ...requests] : requests;
    const seq = state.nextProposalSeq++;
    const digest = state.hashBatch(batch);
    const header = signHeader(state, state.view, seq, digest);
    const e = entryFor(state, seq);
    assert(e.header === null, `proposal over an accepted entry at ${seq}`);
    acceptInto(state, e, header, batch, false);
    if (!state.viewRecorded) persistView(state);
    state.persist({ t: "accept", prePrepare: { ...header, batch } });
    state.send("all", { ...header, batch });
    if (this.cfg.mode === "cft") markPrepared(state, e);
    else checkPrepared(state, e);
  }

  // -------------------------------------------------------------------------------------
  // Backup: PRE_PREPARE, PREPARE, COMMIT (core/ordering/PROTOCOL.md §4).
  // -------------------------------------------------------------------------------------

  private onPrePrepare(from: ReplicaId, m: PrePrepare): void {
    const state = this.state;
    if (!this.gate(from, m.view, m.seq, `PP:${m.seq}`, m)) return;
    const e = state.entries.get(m.seq);
    if (e?.header) {
      if (e.digest !== null && bytesEqual(e.digest, m.digest)) {
        if (e.batch === null && m.batch !== null) attachBody(state, e, m.batch);
        return;
      }
      // Check 6: a second signed header for (view, seq) proves equivocation.
      if (e.header !== null && state.verify(m)) equivocatedHeaders(state, e.header, m);
      return;
    }
    if (m.seq <= state.lastExecuted || m.batch === null) return;
    // Restarted in this view, it may have prepared another proposal here before the crash:
    // it sends no PREPARE, and learns the decision from its peers (catch-up). The leader's
    // own proposal (the link authenticates the sender) still shows that it proposes, and
    // how far: requests arriving meanwhile are judged from there once the fence ends.
    if (voteFenced(state, m.view, m.seq)) {
      if (from === state.leader()) {
        state.lastProposalAt = state.now;
        if (m.seq > state.highestAcceptedSeq) state.highestAcceptedSeq = m.seq;
      }
      return;
    }
    // §13: an empty batch (a marker alone, with barriers) is padding to a membership switch,
    // accepted only up to the seq this replica's own runtime asked for: a faulty leader
    // cannot run empty seqs at will. One past it, from the leader, waits here unvoted and
    // not held against the leader, until this replica executed the change too.
    if (m.batch.every(isBarrier) && m.seq > state.padTo) {
      const held = state.heldPadding;
      if (from === state.leader() && !held.has(m.seq) && held.size < this.cfg.logWindow && state.verify(m))
        held.set(m.seq, { from, msg: m });
      return;
    }
    if (!state.verify(m)) return;
    // The batch accepted is this replica's own array: proposalFault puts the pending copy of
    // a request it already holds in that request's place (the message itself is left as sent).
    const batch = [...m.batch];
    const fault = this.proposalFault(m, batch);
    if (fault === "digest") {
      // A body that does not hash to the signed digest proves nothing against the leader
      // unless the leader itself sent it.
      if (from === state.leader()) suspect(state, "bad-proposal");
      return;
    }
    if (fault !== null) {
      suspect(state, "bad-proposal");
      return;
    }
    const entry = entryFor(state, m.seq);
    state.proposalTsFloor = Math.max(state.proposalTsFloor, m.ts);
    acceptInto(state, entry, { ...m, batch: null }, batch, false);
    if (!state.viewRecorded) persistView(state);
    state.persist({ t: "accept", prePrepare: { ...m, batch } });
    noteUrgentBatch(state, batch);
    if (this.cfg.mode === "cft") {
      markPrepared(state, entry);
    } else {
      sendOwnPrepare(state, entry, m.digest);
      checkPrepared(state, entry);
      // PREPAREs that came before the header may name another digest.
      if (entry.prepares.size >= state.weakQuorumSize) checkSplitVote(state, entry);
    }
  }

  /** The leader's padding held past `padTo` (onPrePrepare), handled again once `padTo` reaches it; stale entries dropped. */
  private replayHeldPadding(): void {
    const state = this.state;
    for (const [seq, held] of [...state.heldPadding]) {
      if (seq > state.padTo && held.msg.view === state.view && seq > state.lastExecuted) continue;
      state.heldPadding.delete(seq);
      if (seq <= state.padTo) this.onPrePrepare(held.from, held.msg);
    }
  }

  /**
   * Checks 3-5 of core/ordering/PROTOCOL.md §4: the digest is the body's, the batch is within bounds, and
   * every request is validly signed, unique in the batch, consecutive with its client's
   * other requests in the batch, not executed and not in another free proposal of this view.
   */
  private proposalFault(m: PrePrepare, proposed: ClientRequest[]): "digest" | "invalid" | null {
    const state = this.state;
    const cfg = this.cfg;
    // §12: with barriers, a batch is its marker followed by requests; without, a marker is
    // never valid (admission refuses its name, so none can be pending here either).
    let batch = proposed;
    if (cfg.externalBarrier) {
      const marker = proposed[0];
      if (marker === undefined || !isWellFormedBarrier(marker)) return "invalid";
      batch = proposed.slice(1);
    }
    // An empty batch is the leader's padding (§13): it decides nothing but its seq.
    if (batch.length > cfg.batchRequestsMax) return "invalid";
    // The leader's stamp is what the requests are judged against; it may be behind this
    // replica's clock (that only judges them more strictly), not further ahead than clocks differ.
    if (state.nowMs > 0 && m.ts > state.nowMs + cfg.proposalClockSkewMs) return "invalid";
    let bytes = 0;
    for (const r of batch) bytes += requestBytes(r);
    if (bytes > cfg.batchBytesMax) return "invalid";
    if (!bytesEqual(state.hashBatch(proposed), m.digest)) return "digest";
    const nextInBatch = new Map<string, number>();
    for (const r of batch) {
      if (isBarrier(r)) return "invalid";
      if (r.span > cfg.requestSpanMax || requestBytes(r) > cfg.requestBytesMax) return "invalid";
      const expected = nextInBatch.get(r.client);
      if (expected !== undefined && r.seq !== expected) return "invalid";
      nextInBatch.set(r.client, r.seq + r.span);
      if (r.seq <= state.clientTable.lastExecuted(r.client)) return "invalid";
      if (state.inFreeProposal.has(requestKey(r.client, r.seq))) return "invalid";
    }
    // `batch` is `proposed` after its marker, if any: a request found pending is judged
    // verified, and its pending copy (the same bytes) takes its place in the proposal.
    const offset = proposed.length - batch.length;
    for (let i = 0; i < batch.length; i++) {
      const r = batch[i] as ClientRequest;
      const twin = verifiedTwin(state, r);
      if (twin !== undefined) proposed[offset + i] = twin;
      else if (!this.crypto.verifyRequest(r, m.ts)) return "invalid";
    }
    return null;
  }

  private onPrepare(from: ReplicaId, m: Prepare): void {
    const state = this.state;
    if (this.cfg.mode === "cft") return;
    if (!isMember(state.certContext, m.replica)) return;
    if (!this.gate(from, m.view, m.seq, `P:${m.seq}:${m.replica}`, m)) return;
    // The leader's PRE_PREPARE is its vote; a PREPARE from it would count it twice.
    if (m.replica === state.leader()) return;
    answerLaggingVoter(state, from, m);
    const key = this.voteKey(m.replica);
    const existing = state.entries.get(m.seq);
    if (existing === undefined && m.seq <= state.lastExecuted) return;
    if (existing?.prepares.has(key) === true || this.surplusVote(m, existing, key)) return;
    if (!this.voteMayOpenEntry(m, existing)) return;
    const e = existing ?? entryFor(state, m.seq);
    e.prepares.set(key, m);
    checkPrepared(state, e);
    if (e.digest !== null && !bytesEqual(e.digest, m.digest)) checkSplitVote(state, e);
  }

  /**
   * A vote for the digest of a certificate this replica already holds (a PREPARE once the
   * entry is prepared, a COMMIT once it is committed) can add nothing: the certificate is
   * fixed. It came over the authenticated link of its signer (votes travel only from their
   * signers: namesAnotherSigner), so it is noted as seen (a resend of it then tells
   * answerLaggingVoter the voter is stuck) and dropped without checking its signature. A
   * vote for another digest still goes the full way (split votes, equivocation). With
   * n = 3f+1 this spares one of the three PREPAREs at the leader and one of the three
   * COMMITs at every replica, an ed25519 verification each, on every seq.
   */
  private surplusVote(m: Prepare | Commit, e: Entry | undefined, key: number): boolean {
    if (e === undefined || e.view !== m.view || e.digest === null || !this.voteMatches(e.digest, m.digest)) return false;
    if (m.t === "PREPARE" ? !e.prepared : !e.committed) return false;
    (m.t === "PREPARE" ? e.surplusPrepares : e.surplusCommits).add(key);
    return true;
  }

  /**
   * A vote is kept only once its signature verifies, and the leader keeps none for a seq it
   * has not proposed in this view: a correct backup votes only on a proposal it accepted.
   * A vote waiting for its proposal opens an entry without a body, and the leader proposes
   * only while it holds the body of every entry it has, so a bogus vote for the next seq
   * (validly signed by a faulty backup, or not signed at all) would stall a correct leader
   * until the heartbeat deposed it. A validly signed one is reported.
   */
  private voteMayOpenEntry(m: Prepare | Commit, existing: Entry | undefined): boolean {
    const state = this.state;
    if (!state.verify(m)) return false;
    if (!state.isLeader() || m.seq < state.nextProposalSeq || (existing !== undefined && existing.header !== null)) return true;
    state.emit({
      kind: "peerMisbehaved",
      peer: m.replica,
      reason: `${m.t} for seq ${m.seq} of view ${m.view}, which its leader never proposed`,
    });
    return false;
  }

  private onCommit(from: ReplicaId, m: Commit): void {
    const state = this.state;
    if (!isMember(state.certContext, m.replica)) return;
    if (!this.gate(from, m.view, m.seq, `C:${m.seq}:${m.replica}`, m)) return;
    answerLaggingVoter(state, from, m);
    const key = this.voteKey(m.replica);
    const existing = state.entries.get(m.seq);
    if (existing === undefined && m.seq <= state.lastExecuted) return;
    if (existing?.commits.has(key) === true || this.surplusVote(m, existing, key)) return;
    if (!this.voteMayOpenEntry(m, existing)) return;
    const e = existing ?? entryFor(state, m.seq);
    e.commits.set(key, m);
    checkCommitted(state, e);
  }

  /** Catch-up (checkpoints.ts): what the response carries is taken, then executed here. */
  private onStateResponse(from: ReplicaId, m: StateResponse): void {
    const state = this.state;
    const before = state.lastExecuted;
    acceptStateResponse(state, from, m);
    this.tryExecute();
    if (state.lastExecuted > before) state.nextProbeAt = state.now + 1;
  }

  // -------------------------------------------------------------------------------------
  // Execution (core/ordering/PROTOCOL.md §4, "Execute").
  // -------------------------------------------------------------------------------------

  private tryExecute(): void {
    const state = this.state;
    for (;;) {
      const s = state.lastExecuted + 1;
      const e = state.entries.get(s);
      let d: Decision | undefined;
      if (e?.committed && e.batch !== null && e.digest !== null && e.commitCert !== null) {
        d = { view: e.view, digest: e.digest, batch: e.batch, commits: e.commitCert };
      } else {
        d = state.decidedPending.get(s);
      }
      state.barrierBlocked = false;
      if (d === undefined) return;
      // §12: a batch runs only once this replica's external order reached its barrier.
      if (barrierOf(d.batch) > state.externalExecuted) {
        state.barrierBlocked = true;
        return;
      }
      assert(bodyMatches(this.crypto, d.digest, d.batch), `executing seq ${s} with a body that does not match`);
      this.execute(s, d, e);
    }
  }

  private execute(s: number, d: Decision, e: Entry | undefined): void {
    const state = this.state;
    // Dedupe is deterministic: only the next request of each client runs; anything
    // else is skipped with no effect and stays pending to be proposed again.
    const execute = state.clientTable.executeBatch(d.batch);
    state.lastExecuted = s;
    state.lastExecutedAt = state.now;
    // At or below h (executing toward a stable checkpoint a NEW_VIEW moved h to, from the
    // peers' decided logs) a decision is garbage already: no collection comes for it.
    if (s > state.stableSeq) state.decided.set(s, d);
    state.decidedPending.delete(s);
    if (e !== undefined) unindex(state, e);
    for (const r of d.batch) {
      if (isBarrier(r)) continue;
      state.pending.pruneExecuted(r.client, state.clientTable.lastExecuted(r.client));
      state.decidedBytesThisTick += requestBytes(r);
    }
    state.persist({ t: "decided", seq: s, view: d.view, digest: d.digest, batch: d.batch, commits: d.commits });
    state.emit({ kind: "decide", seq: s, view: d.view, batch: d.batch, execute, after: barrierOf(d.batch) });
    state.throughputMonitor.onExecuted(execute.length);
    if (e !== undefined && !e.fromNewView && state.installedView === state.view && execute.length > 0) {
      // The first new request executed in an installed view ends the view-change backoff.
      state.viewChangeAttempts = 0;
      state.progressTimeoutCurrentTicks = this.cfg.progressTimeoutTicks;
    }
    if (s % this.cfg.checkpointInterval === 0) takeCheckpoint(state, s);
    const t = state.transfer;
    if (t !== null && s >= t.seq) {
      // Caught up by executing: the transfer is moot, and its proof now moves h.
      state.transfer = null;
      if (provesStable(state, t.proof)) adoptStable(state, t.seq, t.digest, t.proof);
    } else if (t !== null) {
      // Catching up to a stable checkpoint from the decisions below it (checkpoints.ts
      // acceptDecidedItem): h, whose garbage collection would drop them, moves only at the
      // target, so a window's worth is kept, as for a replica that is not behind. The map
      // is in seq order (decisions are executed, and restored, in order).
      for (const old of state.decided.keys()) {
        if (old > s - this.cfg.logWindow) break;
        state.decided.delete(old);
      }
    }
  }
}

/** Whether a message that only its signer sends directly arrived from another replica. */
function namesAnotherSigner(from: ReplicaId, msg: PeerMessage): boolean {
  switch (msg.t) {
    case "PREPARE":
    case "COMMIT":
    case "CHECKPOINT":
    case "VIEW_CHANGE":
      return msg.replica !== from;
    default:
      return false;
  }
}
