/**
 * Suspecting the leader (core/ordering/PROTOCOL.md §6, "Suspicion and evidence").
 *
 * What a replica judges on its own (a request timer, the heartbeat, the throughput,
 * starvation and fairness expectations, an invalid proposal sent to it) is a non-binding
 * SUSPECT: it stays in the view and keeps voting, and a view change starts once f+1
 * replicas suspect the leader of the view (so at least one correct replica does). A
 * replica that left the view alone would shrink the quorum of the others to exactly the
 * correct replicas plus the leader, which would then hold the deciding vote, and nothing
 * would bring the lone replica back until the others changed view too.
 *
 * What a replica can prove (the leader signed two proposals for one seq) starts its view
 * change at once and travels as EVIDENCE that every correct replica checks and acts on.
 */
import { bytesEqual } from "../../../wire/bytes.ts";
import { isMember } from "./certs.ts";
import { leaderOf, type ReplicaId } from "./config.ts";
import type { Entry } from "./log.ts";
import type { Evidence, Prepare, PrePrepare, Suspect } from "./messages.ts";
import type { CoreState } from "./state.ts";
import type { SuspectReason } from "./types.ts";
import { notePeer, startViewChange } from "./view-change.ts";

/** Reasons another replica can check for itself: they start a view change at once. */
const PROVABLE: ReadonlySet<SuspectReason> = new Set(["equivocation"]);

/**
 * This replica suspects the leader of its view. A provable reason starts the view change;
 * any other is announced with a SUSPECT (once per view, resent while the view lasts).
 */
export function suspect(state: CoreState, reason: SuspectReason): void {
  if (state.phase !== "normal") return;
  if (PROVABLE.has(reason)) return startViewChange(state, state.view + 1, reason);
  if (state.suspectedView === state.view) return;
  state.suspectedView = state.view;
  state.emit({ kind: "leaderSuspected", view: state.view, reason });
  sendSuspicion(state);
  countSuspicions(state);
}

/** Resends this replica's SUSPECT every retransmission interval while the view lasts (messages get lost). */
export function resendSuspicion(state: CoreState): void {
  if (state.phase !== "normal" || state.suspectedView !== state.view || state.now < state.suspicionResendAt) return;
  sendSuspicion(state);
}

function sendSuspicion(state: CoreState): void {
  const m: Suspect = { t: "SUSPECT", view: state.view };
  state.send("all", m);
  state.suspicionResendAt = state.now + state.cfg.retransmitTicks;
}

export function onSuspect(state: CoreState, from: ReplicaId, m: Suspect): void {
  notePeer(state, from, m.view, -1);
  if (m.view !== state.view || state.phase !== "normal") return;
  state.suspicions.set(from, m.view);
  countSuspicions(state);
}

/**
 * f+1 replicas (this one included) suspect the leader of this view, by a SUSPECT for it or
 * a VIEW_CHANGE past it (a replica that left the view no longer resends its SUSPECT): at
 * least one correct replica does, so leave the view.
 */
export function countSuspicions(state: CoreState): void {
  if (state.phase !== "normal") return;
  let count = state.suspectedView === state.view ? 1 : 0;
  for (const [peer, view] of state.suspicions) {
    if (view === state.view && peer !== state.cfg.id && !leftView(state, peer)) count++;
  }
  for (const [peer, vc] of state.viewChanges) if (peer !== state.cfg.id && vc.newView > state.view) count++;
  if (count >= state.weakQuorumSize) startViewChange(state, state.view + 1, "suspicion");
}

function leftView(state: CoreState, peer: ReplicaId): boolean {
  const vc = state.viewChanges.get(peer);
  return vc !== undefined && vc.newView > state.view;
}

// ---------------------------------------------------------------------------------------
// Evidence of equivocation.
// ---------------------------------------------------------------------------------------

/** A second signed header for an accepted (view, seq): the leader equivocated. */
export function equivocatedHeaders(state: CoreState, first: PrePrepare, second: PrePrepare): void {
  proveEquivocation(state, { t: "EVIDENCE", a: headerOnly(first), b: headerOnly(second), prepares: [] });
}

/**
 * After a PREPARE or a header arrived for `e`: f+1 replicas other than the leader
 * prepared a digest other than the header this replica accepted. At least one of them is
 * correct and prepared only what the leader signed, so the leader signed two proposals.
 */
export function checkSplitVote(state: CoreState, e: Entry): void {
  if (state.cfg.mode !== "bft" || e.header === null || e.view !== state.view || state.phase !== "normal") return;
  const accepted = e.header.digest;
  const other = [...e.prepares.values()].filter((p) => !bytesEqual(p.digest, accepted));
  for (const p of other) {
    const same = other.filter((q) => bytesEqual(q.digest, p.digest));
    if (same.length >= state.weakQuorumSize) {
      return proveEquivocation(state, { t: "EVIDENCE", a: headerOnly(e.header), b: null, prepares: same });
    }
  }
}

function proveEquivocation(state: CoreState, evidence: Evidence): void {
  if (state.phase !== "normal" || evidence.a.view !== state.view) return;
  state.ownEvidence = evidence;
  state.emit({ kind: "peerMisbehaved", peer: leaderOf(evidence.a.view, state.cfg.n), reason: `equivocation at seq ${evidence.a.seq}` });
  state.send("all", evidence);
  suspect(state, "equivocation");
}

/**
 * EVIDENCE from a peer against the leader of this replica's view. Checked only while this
 * replica is in that view, once per peer and view (a forged one costs its sender its
 * turn); a valid one starts the view change, an invalid one is evidence against its sender.
 */
export function onEvidence(state: CoreState, from: ReplicaId, m: Evidence): void {
  if (state.phase !== "normal" || m.a.view !== state.view || state.installedView !== state.view) return;
  if (state.evidenceCheckedFrom.has(from)) return;
  state.evidenceCheckedFrom.add(from);
  if (!validEvidence(state, m)) {
    state.emit({ kind: "peerMisbehaved", peer: from, reason: `invalid EVIDENCE for view ${m.a.view}` });
    return;
  }
  state.emit({
    kind: "peerMisbehaved",
    peer: leaderOf(m.a.view, state.cfg.n),
    reason: `equivocation at seq ${m.a.seq} (evidence from ${from})`,
  });
  suspect(state, "equivocation");
}

function validEvidence(state: CoreState, m: Evidence): boolean {
  const { a, b } = m;
  const leader = leaderOf(a.view, state.cfg.n);
  if (b !== null) {
    if (m.prepares.length !== 0 || b.view !== a.view || b.seq !== a.seq || bytesEqual(a.digest, b.digest)) return false;
    return state.verify(a) && state.verify(b);
  }
  if (m.prepares.length < state.weakQuorumSize) return false;
  const seen = new Set<ReplicaId>();
  const digest = (m.prepares[0] as Prepare).digest;
  if (bytesEqual(digest, a.digest)) return false;
  for (const p of m.prepares) {
    if (p.view !== a.view || p.seq !== a.seq || !bytesEqual(p.digest, digest)) return false;
    if (p.replica === leader || seen.has(p.replica) || !isMember(state.certContext, p.replica)) return false;
    seen.add(p.replica);
  }
  if (!state.verify(a)) return false;
  for (const p of m.prepares) if (!state.verify(p)) return false;
  return true;
}

function headerOnly(m: PrePrepare): PrePrepare {
  return m.batch === null ? m : { ...m, batch: null };
}
