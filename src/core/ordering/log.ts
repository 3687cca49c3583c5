/**
 * The log (core/ordering/PROTOCOL.md §4): one entry per consensus instance of the current view, the
 * prepared certificates and decisions kept beside it, and the own votes this replica has
 * signed. An entry moves accepted -> prepared -> committed here; core.ts decides when a
 * message is let in, and executes committed entries in order.
 */
import { isBarrier } from "./barrier.ts";
import { bytesEqual } from "../../../wire/bytes.ts";
import { bodyMatches, isLinkAuthenticated } from "./certs.ts";
import { adoptBatchRequests, requestKey } from "./clients.ts";
import { lostVotesFenced } from "./fence.ts";
import type { ClientRequest, Commit, Prepare, PreparedCert, PrePrepare } from "./messages.ts";
import { assert, type CoreState, EMPTY_SIG } from "./state.ts";

/** One consensus instance of the current view. */
export interface Entry {
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
  /**
   * `voteKey`s of voters whose PREPARE or COMMIT for this entry's digest came from the
   * voter itself after the certificate it would join had formed: taken as seen, without
   * checking a signature nothing will use (core.ts, `surplusVote`).
   */
  readonly surplusPrepares: Set<number>;
  readonly surplusCommits: Set<number>;
  prepared: boolean;
  committed: boolean;
  commitCert: Commit[] | null;
  /** Tick the missing body was last asked for. */
  bodyAskedAt: number;
}

export interface Decision {
  view: number;
  digest: Uint8Array;
  batch: ClientRequest[];
  commits: Commit[];
}

export function newEntry(view: number, seq: number): Entry {
  return {
    view,
    seq,
    header: null,
    digest: null,
    batch: null,
    fromNewView: false,
    prepares: new Map(),
    commits: new Map(),
    surplusPrepares: new Set(),
    surplusCommits: new Set(),
    prepared: false,
    committed: false,
    commitCert: null,
    bodyAskedAt: -1,
  };
}

export function entryFor(state: CoreState, seq: number): Entry {
  let e = state.entries.get(seq);
  if (e === undefined) {
    e = newEntry(state.view, seq);
    state.entries.set(seq, e);
  }
  return e;
}

/**
 * True where a restart fenced off new PRE_PREPAREs and PREPAREs (state.voteFence, or
 * every view after a store lost records, fence.ts): the replica may have sent one there
 * whose record is gone, and signing another could contradict it. Votes it holds the
 * record of are regenerated, not signed anew.
 */
export function voteFenced(state: CoreState, view: number, seq: number): boolean {
  if (lostVotesFenced(state, view)) return true;
  const fence = state.voteFence;
  return fence !== null && view === fence.view && seq <= fence.seq;
}

/**
 * The fence as the status shows it while it still holds (in the current view, with seqs
 * left below its top), else null. Fenced after losing records: every seq of the view.
 */
export function fenceStatus(state: CoreState): { view: number; seq: number } | null {
  if (lostVotesFenced(state, state.view)) return { view: state.view, seq: Number.MAX_SAFE_INTEGER };
  return voteFenced(state, state.view, state.lastExecuted + 1) && state.voteFence !== null ? { ...state.voteFence } : null;
}

/** Signs a PREPARE or COMMIT; never two digests for one (kind, view, seq), never below the view. */
export function signVote(state: CoreState, t: "PREPARE", view: number, seq: number, digest: Uint8Array): Prepare;
export function signVote(state: CoreState, t: "COMMIT", view: number, seq: number, digest: Uint8Array): Commit;
export function signVote(state: CoreState, t: "PREPARE" | "COMMIT", view: number, seq: number, digest: Uint8Array): Prepare | Commit {
  assert(view === state.view && state.phase === "normal", `vote in view ${view} while in ${state.phase} ${state.view}`);
  const key = `${t}:${view}:${seq}`;
  const prev = state.signedVotes.get(key);
  assert(prev === undefined || bytesEqual(prev, digest), `second ${t} digest for view ${view} seq ${seq}`);
  state.signedVotes.set(key, digest);
  const vote: Prepare | Commit = { t, view, seq, digest, replica: state.cfg.id, sig: EMPTY_SIG };
  // A COMMIT is authenticated by the peer link, not signed (PROTOCOL.md §3).
  return isLinkAuthenticated(vote) ? vote : state.signed(vote);
}

/**
 * Signs a proposal header, stamped with this replica's clock but never below a stamp it
 * signed or accepted before: a request judged valid against an earlier stamp stays valid
 * against this one (PROTOCOL.md §4, check 5).
 */
export function signHeader(state: CoreState, view: number, seq: number, digest: Uint8Array): PrePrepare {
  const key = `PRE_PREPARE:${view}:${seq}`;
  const prev = state.signedVotes.get(key);
  assert(prev === undefined || bytesEqual(prev, digest), `second proposal for view ${view} seq ${seq}`);
  state.signedVotes.set(key, digest);
  const ts = Math.max(state.nowMs, state.proposalTsFloor);
  state.proposalTsFloor = ts;
  return state.signed({ t: "PRE_PREPARE", view, seq, digest, ts, batch: null, sig: EMPTY_SIG });
}

/** Signs this replica's PREPARE for `e`, records it as its own vote and sends it. */
export function sendOwnPrepare(state: CoreState, e: Entry, digest: Uint8Array): void {
  const own = signVote(state, "PREPARE", state.view, e.seq, digest);
  e.prepares.set(state.seams.voteKey(state.cfg.id), own);
  state.send("all", own);
}

function countMatching(state: CoreState, votes: Map<number, Prepare | Commit>, digest: Uint8Array): number {
  let n = 0;
  for (const v of votes.values()) if (state.seams.voteMatches(digest, v.digest)) n++;
  return n;
}

function matchingVotes<V extends Prepare | Commit>(state: CoreState, votes: Map<number, V>, digest: Uint8Array, count: number): V[] {
  const list = [...votes.values()].filter((v) => state.seams.voteMatches(digest, v.digest));
  list.sort((a, b) => a.replica - b.replica);
  return list.slice(0, count);
}

/** Records an accepted proposal in `e` and indexes its requests. */
export function acceptInto(state: CoreState, e: Entry, header: PrePrepare, batch: ClientRequest[] | null, fromNewView: boolean): void {
  e.header = header;
  e.digest = header.digest;
  e.fromNewView = fromNewView;
  e.batch = null;
  if (batch !== null) setBody(state, e, batch);
  if (e.seq > state.highestAcceptedSeq) state.highestAcceptedSeq = e.seq;
  if (!fromNewView) state.lastProposalAt = state.now;
}

function setBody(state: CoreState, e: Entry, batch: ClientRequest[]): void {
  e.batch = batch;
  if (e.seq <= state.lastExecuted) return;
  for (const r of batch) {
    if (isBarrier(r)) continue;
    const key = requestKey(r.client, r.seq);
    if (e.fromNewView) state.inNewViewBatch.set(key, (state.inNewViewBatch.get(key) ?? 0) + 1);
    else state.inFreeProposal.set(key, e.seq);
  }
  adoptBatchRequests(state, batch);
}

export function unindex(state: CoreState, e: Entry): void {
  if (e.batch === null) return;
  for (const r of e.batch) {
    if (isBarrier(r)) continue;
    const key = requestKey(r.client, r.seq);
    if (e.fromNewView) {
      const c = (state.inNewViewBatch.get(key) ?? 0) - 1;
      if (c <= 0) state.inNewViewBatch.delete(key);
      else state.inNewViewBatch.set(key, c);
    } else if (state.inFreeProposal.get(key) === e.seq) {
      state.inFreeProposal.delete(key);
    }
  }
}

/** A body arrived for an entry that had only its header; it is checked against the digest alone. */
export function attachBody(state: CoreState, e: Entry, batch: ClientRequest[]): void {
  if (e.digest === null || e.batch !== null) return;
  if (!bodyMatches(state.crypto, e.digest, batch)) return;
  setBody(state, e, batch);
  if (state.cfg.mode === "cft") markPrepared(state, e);
  else checkPrepared(state, e);
}

/** Prepared: header accepted, body held, and Q-1 PREPAREs for its digest from distinct non-leaders. */
export function checkPrepared(state: CoreState, e: Entry): void {
  if (e.prepared || e.header === null || e.digest === null || e.batch === null) return;
  if (state.phase !== "normal" || e.view !== state.view) return;
  if (countMatching(state, e.prepares, e.digest) < state.seams.quorumSize() - 1) return;
  markPrepared(state, e);
}

/** Stores the certificate, persists it, then sends COMMIT (persist before send). */
export function markPrepared(state: CoreState, e: Entry): void {
  if (e.prepared || e.header === null || e.digest === null || e.batch === null) return;
  if (state.phase !== "normal" || e.view !== state.view) return;
  e.prepared = true;
  const prepares = state.cfg.mode === "cft" ? [] : matchingVotes(state, e.prepares, e.digest, state.seams.quorumSize() - 1);
  const cert: PreparedCert = {
    view: e.view,
    seq: e.seq,
    digest: e.digest,
    prePrepare: e.header,
    prepares,
    batch: state.cfg.mode === "cft" ? e.batch : null,
  };
  keepPrepared(state, cert, e.batch);
  state.persist({ t: "prepared", cert, batch: e.batch });
  const own = signVote(state, "COMMIT", e.view, e.seq, e.digest);
  e.commits.set(state.seams.voteKey(state.cfg.id), own);
  state.send("all", own);
  checkCommitted(state, e);
}

/** Keeps `cert` as the prepared certificate of its seq unless one from a higher view is kept. */
export function keepPrepared(state: CoreState, cert: PreparedCert, batch: ClientRequest[]): void {
  const prev = state.preparedCerts.get(cert.seq);
  if (prev === undefined || prev.cert.view <= cert.view) state.preparedCerts.set(cert.seq, { cert, batch });
}

/** Committed: prepared and Q COMMITs with the same digest (a COMMIT for another digest never counts). */
export function checkCommitted(state: CoreState, e: Entry): void {
  if (!e.prepared || e.committed || e.digest === null) return;
  const q = state.seams.quorumSize();
  if (countMatching(state, e.commits, e.digest) < q) return;
  e.committed = true;
  e.commitCert = matchingVotes(state, e.commits, e.digest, q);
}

/** Drops every entry at or below `seq` from the log, with its request index. */
export function dropEntriesThrough(state: CoreState, seq: number): void {
  for (const [s, e] of [...state.entries]) {
    if (s > seq) continue;
    unindex(state, e);
    state.entries.delete(s);
  }
}
