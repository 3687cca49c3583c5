/**
 * View change (core/ordering/PROTOCOL.md §6): leaving a view with a VIEW_CHANGE that reports everything
 * this replica prepared, the new leader's NEW_VIEW, its recomputation by every replica,
 * and installing it. Also how a replica learns that it is behind on views.
 */
import { bytesEqual } from "../../../wire/bytes.ts";
import { bodyMatches, isMember, type NewViewPlan, planNewView, validViewChange } from "./certs.ts";
import { forwardAllPending } from "./clients.ts";
import { leaderOf, type ReplicaId } from "./config.ts";
import { adoptStable, jumpToStable } from "./checkpoints.ts";
import { lostVotesFenced, noteOwnViewChange, notePeerViews, settleLostVotes } from "./fence.ts";
import { acceptInto, checkPrepared, type Entry, markPrepared, newEntry, sendOwnPrepare, signHeader, voteFenced } from "./log.ts";
import {
  type ClientRequest,
  type NewView,
  NULL_DIGEST,
  type PreparedCert,
  type PrePrepare,
  type StateRequest,
  signingBytes,
  type ViewChange,
} from "./messages.ts";
import { assert, type CoreState, EMPTY_SIG, kthLargest, NO_DEADLINE } from "./state.ts";
import { countSuspicions } from "./suspicion.ts";
import type { SuspectReason } from "./types.ts";

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

/** Transport-authenticated hints of where peers are; used only with W agreeing peers. */
export function notePeer(state: CoreState, from: ReplicaId, view: number, seq: number): void {
  if (seq > (state.peerSeqs.get(from) ?? -1)) state.peerSeqs.set(from, seq);
  if (view <= (state.peerViews.get(from) ?? -1)) return;
  state.peerViews.set(from, view);
  notePeerViews(state);
  if (view > state.view) catchUpView(state);
}

/**
 * W peers send normal-case messages of views above ours, so at least one correct replica
 * installed such a view: ask for it with a VIEW_CHANGE, which peers at or past that view
 * answer with their NEW_VIEW (core/ordering/PROTOCOL.md §6, livelock rules).
 */
function catchUpView(state: CoreState): void {
  const target = kthLargest(state.peerViews.values(), state.weakQuorumSize);
  if (target > state.view) startViewChange(state, target, "behind");
}

/**
 * Step 1 before anything else: from here on no vote below `target` is ever signed, so the
 * VIEW_CHANGE reports everything this replica prepared. Persisted before it is sent.
 */
export function startViewChange(state: CoreState, target: number, reason: SuspectReason): void {
  if (target <= state.view) return;
  state.view = target;
  state.phase = "viewChange";
  state.timerArmedForView = -1;
  state.viewChangeDeadline = NO_DEADLINE;
  state.buffered.clear();
  const vc = buildViewChange(state, target);
  noteOwnViewChange(state, vc);
  state.ownViewChange = vc;
  state.viewChanges.set(state.cfg.id, vc);
  persistView(state);
  state.emit({ kind: "suspect", view: target, reason });
  state.send("all", vc);
  state.viewChangeResendAt = state.now + state.cfg.retransmitTicks;
  viewChangeProgress(state);
}

function buildViewChange(state: CoreState, newView: number): ViewChange {
  const prepared: PreparedCert[] = [];
  for (const s of [...state.preparedCerts.keys()].sort((a, b) => a - b)) {
    if (s <= state.stableSeq || s > state.highWater) continue;
    prepared.push((state.preparedCerts.get(s) as { cert: PreparedCert }).cert);
  }
  return state.signed<ViewChange>({
    t: "VIEW_CHANGE",
    newView,
    stableSeq: state.stableSeq,
    stableDigest: state.stableDigest,
    stableProof: state.stableProof,
    prepared,
    replica: state.cfg.id,
    sig: EMPTY_SIG,
  });
}

export function persistView(state: CoreState): void {
  state.viewRecorded = true;
  state.persist({
    t: "view",
    view: state.view,
    installedView: state.installedView,
    status: state.phase,
    viewChange: state.phase === "viewChange" ? state.ownViewChange : null,
    newView: state.installedNewView,
  });
}

/** The view-change timers on a tick: escalate past the deadline, else resend own VIEW_CHANGE. */
export function tickViewChange(state: CoreState): void {
  if (state.now >= state.viewChangeDeadline) {
    startViewChange(state, state.view + 1, "view-change-timeout");
  } else if (state.now >= state.viewChangeResendAt && state.ownViewChange !== null) {
    state.send("all", state.ownViewChange);
    // The proof this replica left the view on goes with it, so the others join it.
    if (state.ownEvidence !== null && state.ownEvidence.a.view + 1 === state.view) state.send("all", state.ownEvidence);
    state.viewChangeResendAt = state.now + state.cfg.retransmitTicks;
  }
}

export function onViewChange(state: CoreState, m: ViewChange): void {
  if (!isMember(state.certContext, m.replica)) return;
  if (m.newView > viewsAcceptedUpTo(state)) return;
  if (m.newView <= state.installedView) {
    answerWithNewView(state, m.replica);
    return;
  }
  const prev = state.viewChanges.get(m.replica);
  if (prev !== undefined && prev.newView >= m.newView) return;
  if (!validViewChange(state.certContext, m)) {
    // Its own (core.ts refuses one that names another signer), and validity depends only on
    // the message and the epoch's keys and limits, which every replica shares: a correct
    // replica never sends this, and checking it may have cost hundreds of signatures.
    state.emit({ kind: "peerMisbehaved", peer: m.replica, reason: `an invalid VIEW_CHANGE for view ${m.newView}`, mute: true });
    return;
  }
  state.viewChanges.set(m.replica, m);
  joinIfBehind(state);
  countSuspicions(state);
  viewChangeProgress(state);
}

/** A replica still asking for a view we installed gets our NEW_VIEW (core/ordering/PROTOCOL.md §6). */
export function answerWithNewView(state: CoreState, to: ReplicaId): void {
  if (state.installedNewView === null || state.phase !== "normal") return;
  const last = state.newViewAnsweredAt.get(to) ?? -NO_DEADLINE;
  if (state.now - last < Math.max(1, Math.floor(state.cfg.retransmitTicks / 2))) return;
  state.newViewAnsweredAt.set(to, state.now);
  state.send(to, state.installedNewView);
}

/** W valid VIEW_CHANGEs for views above ours: join the smallest of them (OSDI'99 §4.5.2). */
function joinIfBehind(state: CoreState): void {
  let count = 0;
  let smallest = NO_DEADLINE;
  for (const vc of state.viewChanges.values()) {
    if (vc.newView <= state.view) continue;
    count++;
    smallest = Math.min(smallest, vc.newView);
  }
  if (count >= state.weakQuorumSize) startViewChange(state, smallest, "join");
}

/** With Q VIEW_CHANGEs for the target view: arm the escalation timer; the new leader builds NEW_VIEW. */
function viewChangeProgress(state: CoreState): void {
  if (state.phase !== "viewChange") return;
  const vcs = viewChangesFor(state, state.view);
  if (vcs.length < state.seams.quorumSize()) return;
  if (state.timerArmedForView !== state.view) {
    state.timerArmedForView = state.view;
    const backoff = 2 ** Math.min(state.viewChangeAttempts, state.cfg.viewChangeBackoffDoublingsMax);
    state.viewChangeDeadline = state.now + state.cfg.viewChangeTimeoutTicks * backoff;
    state.viewChangeAttempts++;
  }
  // Fenced after losing records, it may have built a NEW_VIEW for this view before: the
  // view change times out past it instead (fence.ts).
  if (state.isLeader() && state.newViewBuiltFor !== state.view && !lostVotesFenced(state, state.view))
    buildNewView(state, vcs.slice(0, state.seams.quorumSize()));
}

function viewChangesFor(state: CoreState, view: number): ViewChange[] {
  const vcs = [...state.viewChanges.values()].filter((vc) => countsForView(vc, view));
  vcs.sort((a, b) => a.replica - b.replica);
  return vcs;
}

/** The new leader's NEW_VIEW: O recomputed from V and a signed header for every entry. */
function buildNewView(state: CoreState, vcs: ViewChange[]): void {
  const plan = planNewView(state.certContext, vcs);
  if (plan === null) return;
  state.newViewBuiltFor = state.view;
  const o = plan.digests.map((d, i) => signHeader(state, state.view, plan.minS + 1 + i, d));
  const nv = state.signed<NewView>({
    t: "NEW_VIEW",
    view: state.view,
    viewChanges: vcs,
    minS: plan.minS,
    maxS: plan.maxS,
    o,
    sig: EMPTY_SIG,
  });
  installNewView(state, nv, plan);
}

export function onNewView(state: CoreState, m: NewView): void {
  if (m.view <= state.installedView || m.view < state.view || m.view > viewsAcceptedUpTo(state)) return;
  if (!state.verify(m)) return;
  const plan = checkNewView(state, m);
  if (plan === null) {
    // Signed by the leader of m.view and wrong: evidence against that replica, never a
    // reason to jump to its view (a replica leads every view equal to its id mod n, so
    // one that could move the group by signing garbage could push the view to the ceiling).
    // Only the leader of the view this replica is changing to can stall it this way,
    // and for that one it moves on to the next view, as for any faulty new leader.
    state.emit({ kind: "peerMisbehaved", peer: leaderOf(m.view, state.cfg.n), reason: `invalid NEW_VIEW for view ${m.view}` });
    if (state.phase === "viewChange" && m.view === state.view) startViewChange(state, state.view + 1, "bad-new-view");
    return;
  }
  settleLostVotes(state, m);
  installNewView(state, m, plan);
}

/**
 * Views above this are not looked at (VIEW_CHANGE, NEW_VIEW): the higher of this replica's
 * view and the view f+1 peers show in their messages, plus a margin. Correct replicas move
 * one view per timeout or join a view f+1 of them announced, so only a faulty replica
 * names a view beyond it, and storing or checking its messages would only cost memory
 * and signature checks (core/ordering/PROTOCOL.md §6, §11).
 */
export function viewsAcceptedUpTo(state: CoreState): number {
  const announced = kthLargest(state.peerViews.values(), state.weakQuorumSize);
  return Math.max(state.view, announced) + VIEWS_AHEAD_MAX;
}

/** How far past the known views a VIEW_CHANGE or NEW_VIEW may name a view. */
export const VIEWS_AHEAD_MAX = 64;

/** Every replica recomputes minS, maxS and O from V; they must equal what was sent. */
function checkNewView(state: CoreState, m: NewView): NewViewPlan | null {
  const seen = new Set<ReplicaId>();
  for (const vc of m.viewChanges) {
    if (!countsForView(vc, m.view) || !isMember(state.certContext, vc.replica) || seen.has(vc.replica)) return null;
    seen.add(vc.replica);
  }
  if (seen.size < state.seams.quorumSize()) return null;
  for (const vc of m.viewChanges) {
    // A VIEW_CHANGE this replica already checked need not be checked again, but only if the
    // copy is that message, every field of it: the leader forwards the copies and plans O
    // from them, so one that kept a correct replica's signature and dropped its prepared
    // certificates, or changed its stable checkpoint, would have O leave out a batch that
    // committed (PROTOCOL.md §9, bug 5). The copy's signing bytes are what its signature covers.
    const known = state.viewChanges.get(vc.replica);
    const same = known !== undefined && sameViewChange(state, known, vc);
    if (!same && !validViewChange(state.certContext, vc)) return null;
  }
  const plan = planNewView(state.certContext, m.viewChanges);
  if (plan === null) return null;
  if (!state.seams.recomputesNewView()) return { ...plan, minS: m.minS, maxS: m.maxS, digests: m.o.map((header) => header.digest) };
  if (plan.minS !== m.minS || plan.maxS !== m.maxS || m.o.length !== plan.digests.length) return null;
  for (let i = 0; i < m.o.length; i++) {
    const header = m.o[i] as PrePrepare;
    if (header.view !== m.view || header.seq !== plan.minS + 1 + i || header.batch !== null) return null;
    if (!bytesEqual(header.digest, plan.digests[i] as Uint8Array)) return null;
  }
  for (const header of m.o) if (!state.verify(header)) return null;
  return plan;
}

/** Whether `copy` is the VIEW_CHANGE `known`, signed the same and saying the same in every field. */
function sameViewChange(state: CoreState, known: ViewChange, copy: ViewChange): boolean {
  if (known.newView !== copy.newView || !bytesEqual(known.sig, copy.sig)) return false;
  const clusterId = state.certContext.clusterId;
  return bytesEqual(signingBytes(known, clusterId), signingBytes(copy, clusterId));
}

/**
 * Installs view m.view (core/ordering/PROTOCOL.md §6, "Installing NEW_VIEW"): adopt or fetch the stable
 * checkpoint at minS, replace the log by the O entries, persist, then vote on every O
 * entry (null batches included). Requests of dropped entries stay pending.
 */
function installNewView(state: CoreState, m: NewView, plan: NewViewPlan): void {
  state.view = m.view;
  if (plan.minS > state.stableSeq && plan.minS > 0) {
    if (plan.minS > state.lastExecuted) jumpToStable(state, plan.minS, plan.stableDigest, plan.stableProof);
    else adoptStable(state, plan.minS, plan.stableDigest, plan.stableProof);
  }
  const old = state.entries;
  state.entries = new Map();
  state.inFreeProposal.clear();
  state.inNewViewBatch.clear();
  state.signedVotes.clear();
  for (let i = 0; i < plan.digests.length; i++) {
    const s = plan.minS + 1 + i;
    const digest = plan.digests[i] as Uint8Array;
    const header = m.o[i] as PrePrepare;
    if (s <= state.stableSeq) continue;
    const done = state.decided.get(s);
    if (done !== undefined) {
      assert(bytesEqual(done.digest, digest), `NEW_VIEW ${m.view} names another digest at executed seq ${s}`);
    }
    const e = newEntry(m.view, s);
    state.entries.set(s, e);
    acceptInto(state, e, header, findBody(state, s, digest, old, plan), true);
    if (state.isLeader()) state.signedVotes.set(`PRE_PREPARE:${m.view}:${s}`, digest);
  }
  state.installedView = m.view;
  state.phase = "normal";
  state.installedNewView = m;
  // Padding held from the old view's leader (§13) is that view's: its seqs are in this NEW_VIEW or free again.
  state.heldPadding.clear();
  state.ownViewChange = null;
  state.ownEvidence = null;
  state.evidenceCheckedFrom.clear();
  state.viewChangeDeadline = NO_DEADLINE;
  state.timerArmedForView = -1;
  state.nextProposalSeq = Math.max(plan.maxS, state.lastExecuted) + 1;
  for (const [r, vc] of [...state.viewChanges]) if (vc.newView <= m.view) state.viewChanges.delete(r);
  persistView(state);
  state.emit({ kind: "viewInstalled", view: m.view, leader: state.leader(), carriedUpTo: m.maxS });
  if (state.isLeader()) announceNewView(state, m);
  voteOnNewViewEntries(state);
  askForMissingBodies(state);
  state.pending.restartTimers(state.highestAcceptedSeq);
  state.lastProposalAt = state.now;
  state.throughputMonitor.onViewInstalled(state.now);
  state.starvationMonitor.onViewInstalled(state.now);
  if (!state.isLeader()) forwardAllPending(state);
  replayBuffered(state);
}

/** A body for O[s] from any source this replica already trusts, or null to fetch it. */
function findBody(state: CoreState, s: number, digest: Uint8Array, old: Map<number, Entry>, plan: NewViewPlan): ClientRequest[] | null {
  if (bytesEqual(digest, NULL_DIGEST)) return [];
  const candidates: Array<ClientRequest[] | null | undefined> = [
    state.decided.get(s)?.batch,
    old.get(s)?.batch,
    state.preparedCerts.get(s)?.batch,
    plan.bodies.get(s),
  ];
  const e = old.get(s);
  for (const c of candidates) {
    if (c === null || c === undefined) continue;
    if (c === e?.batch && e.digest !== null && bytesEqual(e.digest, digest)) return c;
    if (bodyMatches(state.crypto, digest, c)) return c;
  }
  return null;
}

function announceNewView(state: CoreState, m: NewView): void {
  state.send("all", m);
  for (const e of state.entries.values()) {
    if (e.header === null || e.batch === null || e.batch.length === 0) continue;
    state.send("all", { ...e.header, batch: e.batch });
  }
}

function voteOnNewViewEntries(state: CoreState): void {
  for (const e of [...state.entries.values()]) {
    if (e.digest === null) continue;
    if (state.cfg.mode === "cft") {
      markPrepared(state, e);
      continue;
    }
    // A replica that lost records installs a NEW_VIEW it took no part in without voting (fence.ts).
    if (!state.isLeader() && !voteFenced(state, e.view, e.seq)) sendOwnPrepare(state, e, e.digest);
    checkPrepared(state, e);
  }
}

/** Asks every peer for the bodies of entries that have only a header, at most once per retransmission interval each. */
export function askForMissingBodies(state: CoreState): void {
  let lo = NO_DEADLINE;
  let hi = -1;
  for (const e of state.entries.values()) {
    if (e.batch !== null || e.digest === null) continue;
    if (e.bodyAskedAt >= 0 && state.now - e.bodyAskedAt < state.cfg.retransmitTicks) continue;
    e.bodyAskedAt = state.now;
    lo = Math.min(lo, e.seq);
    hi = Math.max(hi, e.seq);
  }
  if (hi < 0) return;
  const req: StateRequest = { t: "STATE_REQUEST", kind: "batch", seq: lo, toSeq: hi, digest: null, nonce: state.stateRequestNonce++ };
  state.send("all", req);
}

function replayBuffered(state: CoreState): void {
  const held = [...state.buffered.values()];
  state.buffered.clear();
  for (const { from, msg } of held) state.redeliver(from, msg);
}
