/**
 * Restart from persisted records (the records `persist` wrote, or `compactRecords` of
 * them, in the order they were written): the client table and decisions, the stable
 * checkpoint, the view, and the current view's log with this replica's own votes.
 */
import { bytesEqual } from "../../../wire/bytes.ts";
import { bodyMatches } from "./certs.ts";
import { collectGarbage, newTransfer } from "./checkpoints.ts";
import { acceptInto, entryFor, keepPrepared, newEntry } from "./log.ts";
import { type Commit, NULL_DIGEST, type Prepare, type PreparedCert, type PrePrepare } from "./messages.ts";
import { assert, assertNever, type CoreState, EMPTY_SIG } from "./state.ts";
import type { PersistedRecord } from "./types.ts";

export function restore(state: CoreState, records: readonly PersistedRecord[]): void {
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
      case "prepared":
        keepPrepared(state, r.cert, r.batch);
        break;
      case "decided":
        restoreDecided(state, r);
        break;
      case "checkpoint":
        state.ownCheckpoints.set(r.seq, r.stateDigest);
        break;
      case "stable":
        if (r.seq > state.stableSeq) {
          state.stableSeq = r.seq;
          state.stableDigest = r.digest;
          state.stableProof = r.proof;
        }
        break;
      case "snapshot":
        if (r.seq > state.lastExecuted) {
          state.lastExecuted = r.seq;
          state.clientTable.import(r.clients);
          state.ownCheckpoints.set(r.seq, r.stateDigest);
          for (const s of [...state.decided.keys()]) if (s <= r.seq) state.decided.delete(s);
        }
        break;
      default:
        assertNever(r);
    }
  }
  if (viewRec !== null) {
    state.view = viewRec.view;
    state.installedView = viewRec.installedView;
    state.phase = viewRec.status;
    state.ownViewChange = viewRec.viewChange;
    state.installedNewView = viewRec.newView;
  }
  state.highestAcceptedSeq = state.lastExecuted;
  state.nextProposalSeq = state.lastExecuted + 1;
  collectGarbage(state);
  if (viewRec !== null) {
    state.viewRecorded = true;
    // The runtime sends a PRE_PREPARE or PREPARE before its `accept` record is durable,
    // but never before this view record and every stable checkpoint record staged before
    // it (PROTOCOL.md §2): each vote of the installed view that a crash may have lost the
    // record of is at a seq at most the window's top it had then. That is the restored
    // one, or, if the NEW_VIEW moved h to its minS before the state there was fetched,
    // minS + L (a `stable` record above the decided log is not kept across a restart).
    // In crash mode only the leader's proposals go out early: a backup's COMMIT waits
    // for its `accept` record. After a clean stop every record was durable: no fence.
    const nv = state.installedNewView;
    const h = Math.max(state.stableSeq, nv !== null && nv.view === state.installedView ? nv.minS : 0);
    const early = state.cfg.mode === "bft" || state.leader(state.installedView) === state.cfg.id;
    if (state.phase === "normal" && early && state.cfg.stoppedClean !== true)
      state.voteFence = { view: state.installedView, seq: h + state.cfg.logWindow };
  }
  if (state.phase === "normal") restoreLog(state, accepts);
  if (state.phase === "viewChange" && state.ownViewChange !== null) {
    state.viewChanges.set(state.cfg.id, state.ownViewChange);
    state.viewChangeResendAt = 0;
  }
  state.throughputMonitor.onViewInstalled(0);
  state.starvationMonitor.onViewInstalled(0);
  if (state.stableSeq > state.lastExecuted) {
    // Restarted during a state transfer: ask again.
    state.transfer = newTransfer(state, state.stableSeq, state.stableDigest, state.stableProof, 0);
  }
}

function restoreDecided(state: CoreState, r: Extract<PersistedRecord, { t: "decided" }>): void {
  if (r.seq <= state.lastExecuted) return;
  assert(r.seq === state.lastExecuted + 1, `restored decision ${r.seq} after ${state.lastExecuted}`);
  state.clientTable.executeBatch(r.batch);
  state.lastExecuted = r.seq;
  state.decided.set(r.seq, { view: r.view, digest: r.digest, batch: r.batch, commits: r.commits });
}

/** Rebuilds the current view's entries: the NEW_VIEW's O, then accepted proposals. */
function restoreLog(state: CoreState, accepts: readonly PrePrepare[]): void {
  const cfg = state.cfg;
  const nv = state.installedNewView;
  if (nv !== null && nv.view === state.installedView) {
    for (const header of nv.o) {
      if (header.seq <= state.stableSeq) continue;
      const e = newEntry(nv.view, header.seq);
      state.entries.set(header.seq, e);
      const body = bytesEqual(header.digest, NULL_DIGEST)
        ? []
        : (state.decided.get(header.seq)?.batch ?? state.preparedCerts.get(header.seq)?.batch ?? null);
      const matches = body !== null && bodyMatches(state.crypto, header.digest, body);
      acceptInto(state, e, header, matches ? body : null, true);
      if (header.seq >= state.nextProposalSeq) state.nextProposalSeq = header.seq + 1;
    }
  }
  for (const pp of accepts) {
    if (pp.view !== state.installedView || pp.seq <= state.stableSeq || pp.batch === null) continue;
    const e = entryFor(state, pp.seq);
    if (e.header !== null) continue;
    acceptInto(state, e, { ...pp, batch: null }, pp.batch, false);
    if (pp.seq >= state.nextProposalSeq) state.nextProposalSeq = pp.seq + 1;
  }
  for (const e of state.entries.values()) {
    const p = state.preparedCerts.get(e.seq);
    if (p !== undefined && p.cert.view === e.view && e.digest !== null && bytesEqual(p.cert.digest, e.digest)) {
      e.prepared = true;
    }
    if (e.digest === null) continue;
    if (cfg.mode === "cft" && !e.prepared && e.header !== null && e.batch !== null) {
      // In crash mode acceptance is preparation; a crash between the two records lost
      // only the second, which follows from the first.
      e.prepared = true;
      const cert: PreparedCert = { view: e.view, seq: e.seq, digest: e.digest, prePrepare: e.header, prepares: [], batch: e.batch };
      keepPrepared(state, cert, e.batch);
    }
    const kinds = state.isLeader() || cfg.mode === "cft" ? [] : ["PREPARE"];
    if (e.prepared) kinds.push("COMMIT");
    for (const t of kinds) state.signedVotes.set(`${t}:${e.view}:${e.seq}`, e.digest);
    if (state.isLeader()) state.signedVotes.set(`PRE_PREPARE:${e.view}:${e.seq}`, e.digest);
  }
  // Own votes are regenerated on demand: ed25519 is deterministic, so a resent PREPARE is
  // byte-identical to the one sent before the crash, and a COMMIT is not signed (PROTOCOL.md §3).
  for (const e of state.entries.values()) {
    if (e.digest === null || e.seq <= state.lastExecuted) continue;
    if (cfg.mode === "bft" && !state.isLeader()) {
      const own = state.signed<Prepare>({ t: "PREPARE", view: e.view, seq: e.seq, digest: e.digest, replica: cfg.id, sig: EMPTY_SIG });
      e.prepares.set(state.seams.voteKey(cfg.id), own);
    }
    if (e.prepared) {
      const own: Commit = { t: "COMMIT", view: e.view, seq: e.seq, digest: e.digest, replica: cfg.id, sig: EMPTY_SIG };
      e.commits.set(state.seams.voteKey(cfg.id), own);
    }
  }
}

/**
 * A replica that joins an epoch without its starting state (a new member): h is the
 * epoch's starting checkpoint (config), nothing is executed, so it fetches that state
 * from the epoch's other members before it takes part (PROTOCOL.md §13).
 */
export function startEmptyInEpoch(state: CoreState): void {
  if (state.stableSeq <= state.lastExecuted) return;
  state.transfer = newTransfer(state, state.stableSeq, state.stableDigest, [], 0);
}
