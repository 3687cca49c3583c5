/**
 * Checkpoints and state transfer (core/ordering/PROTOCOL.md §7): own checkpoints, stable checkpoints
 * (Q matching signed CHECKPOINTs) and the garbage collection they allow, fetching a
 * snapshot when this replica is behind, and catch-up inside the window from decided
 * batches with their commit certificates (§4).
 */
import { bytesEqual, toHex } from "../../../wire/bytes.ts";
import { encodeCanonical } from "../../../wire/canonical.ts";
import { bodyMatches, isMember, validCheckpointProof, wellFormedDecisionCert } from "./certs.ts";
import type { ClientTableExport } from "./clients.ts";
import type { ReplicaId } from "./config.ts";
import { attachBody, dropEntriesThrough } from "./log.ts";
import {
  type Checkpoint,
  type ClientRequest,
  type Commit,
  type DecidedItem,
  type Prepare,
  requestBytes,
  SIGNED_VOTE_BYTES_MAX,
  type StableProof,
  type StateRequest,
  type StateResponse,
} from "./messages.ts";
import { type CoreState, EMPTY_SIG, NO_DEADLINE } from "./state.ts";

/** A replica answers at most one state request per peer per this many ticks. */
const STATE_SERVE_INTERVAL_TICKS = 1;
/** A decided item's own fields (view, seq, the keys, the array heads) at most, besides its batch and votes. */
const DECIDED_ITEM_FIELDS_BYTES_MAX = 64;
/** A peer's answer budget holds at most this many batches' bytes (a burst: two answers of the largest size). */
const SERVE_BURST_BATCHES = 4;
/** It refills by at least 1/this of a batch's bytes per tick, even when nothing is decided. */
const SERVE_FLOOR_DIVISOR = 8;
/** And by this many times the bytes the group decides per tick, so a lagging replica gains on it. */
const SERVE_DECIDED_FACTOR = 2;

/**
 * The bytes a peer may still be sent in answers (decided batches and bodies), refilled
 * since it was last asked. A correct replica asks for what it misses, about as fast as the
 * group decides; a faulty one asking for the same window every tick gets no more than
 * that, instead of a full batch per kind per tick (core/ordering/PROTOCOL.md §7).
 */
function serveBudget(state: CoreState, from: ReplicaId): number {
  const cap = SERVE_BURST_BATCHES * state.cfg.batchBytesMax;
  const last = state.serveBudgets.get(from);
  if (last === undefined) return cap;
  const refill = Math.max(state.cfg.batchBytesMax / SERVE_FLOOR_DIVISOR, SERVE_DECIDED_FACTOR * state.decidedBytesPerTick);
  return Math.min(cap, last.bytes + (state.now - last.at) * refill);
}

/** A state transfer in progress: the stable checkpoint it fetches and when to try again. */
export interface Transfer {
  seq: number;
  digest: Uint8Array;
  proof: Checkpoint[];
  nextTryAt: number;
  attempt: number;
  /**
   * lastExecuted and the target's seq when the snapshot was last asked for (or the
   * transfer began): at the next try, a replica that executed more seqs since than the
   * target moved is gaining on the group by executing decisions its peers send, and is
   * not made to fetch a snapshot (PROTOCOL.md §7, "An older state").
   */
  executedAtTry: number;
  targetAtTry: number;
}

/** A transfer to (seq, digest), first tried at `nextTryAt`; a replaced one's progress marks carry over. */
export function newTransfer(state: CoreState, seq: number, digest: Uint8Array, proof: Checkpoint[], nextTryAt: number): Transfer {
  const prev = state.transfer;
  return {
    seq,
    digest,
    proof,
    nextTryAt,
    attempt: 0,
    executedAtTry: prev?.executedAtTry ?? state.lastExecuted,
    targetAtTry: prev?.targetAtTry ?? seq,
  };
}

/**
 * Whether the transfer's next try should ask for a snapshot: not while this replica
 * gains on the target by executing (it executed more seqs since the last try than the
 * target moved), since it gets there by executing. The marks move to now either way.
 */
export function transferTryFetches(state: CoreState, t: Transfer): boolean {
  const gaining = state.lastExecuted - t.executedAtTry > t.seq - t.targetAtTry;
  t.executedAtTry = state.lastExecuted;
  t.targetAtTry = t.seq;
  return !gaining;
}

/** The client table exported with a checkpoint, and its hash. */
export interface CheckpointClients {
  hash: Uint8Array;
  rows: ClientTableExport;
}

/** hash(canonical(client table)): the client part of a checkpoint's state digest. */
export function clientTableHash(hash: (bytes: Uint8Array) => Uint8Array, rows: ClientTableExport): Uint8Array {
  return hash(encodeCanonical(rows));
}

/**
 * The checkpoint state digest D = hash(seq, appDigest, hash(clients)) (core/ordering/PROTOCOL.md §7).
 * Exported so that the runtime checks a fetched or stored snapshot with the very formula
 * the core signs.
 */
export function stateDigestOf(
  hash: (bytes: Uint8Array) => Uint8Array,
  seq: number,
  appDigest: Uint8Array,
  clientsHash: Uint8Array,
): Uint8Array {
  return hash(encodeCanonical({ seq, app: appDigest, clients: clientsHash }));
}

function clientsHash(state: CoreState, rows: ClientTableExport): Uint8Array {
  return clientTableHash(state.crypto.hash, rows);
}

function stateDigest(state: CoreState, seq: number, appDigest: Uint8Array, clientsHash: Uint8Array): Uint8Array {
  return stateDigestOf(state.crypto.hash, seq, appDigest, clientsHash);
}

/** The stable checkpoint as it travels in a STATE_RESPONSE. */
function stableProofOf(state: CoreState): StableProof {
  return { seq: state.stableSeq, digest: state.stableDigest, proof: state.stableProof };
}

/** This replica's own signed CHECKPOINT for (seq, digest). */
export function ownCheckpoint(state: CoreState, seq: number, digest: Uint8Array): Checkpoint {
  return state.signed<Checkpoint>({ t: "CHECKPOINT", seq, digest, replica: state.cfg.id, sig: EMPTY_SIG });
}

export function takeCheckpoint(state: CoreState, s: number): void {
  const rows = state.clientTable.export();
  state.checkpointClients.set(s, { hash: clientsHash(state, rows), rows });
  state.emit({ kind: "takeCheckpoint", seq: s, clients: rows });
}

export function onCheckpointReady(state: CoreState, seq: number, appDigest: Uint8Array): void {
  const taken = state.checkpointClients.get(seq);
  if (taken === undefined) return;
  state.checkpointClients.delete(seq);
  const digest = stateDigest(state, seq, appDigest, taken.hash);
  state.ownCheckpoints.set(seq, digest);
  state.persist({ t: "checkpoint", seq, stateDigest: digest, appDigest, clients: taken.rows });
  if (seq <= state.stableSeq) {
    // Below h (a replica catching up from decisions after h jumped ahead with a NEW_VIEW)
    // there is no stable digest of this seq to compare with: h's is another seq's.
    if (seq === state.stableSeq) checkDivergence(state, seq, state.stableDigest);
    return;
  }
  const msg = ownCheckpoint(state, seq, digest);
  state.send("all", msg);
  addCheckpoint(state, msg);
}

export function onCheckpoint(state: CoreState, from: ReplicaId, m: Checkpoint): void {
  if (!isMember(state.certContext, m.replica) || m.seq % state.cfg.checkpointInterval !== 0) return;
  if (m.seq <= state.stableSeq) {
    answerWithStable(state, from);
    return;
  }
  if (m.seq <= state.highWater) {
    if (state.checkpointVotes.get(m.seq)?.has(m.replica)) return;
    if (!state.verify(m)) return;
    addCheckpoint(state, m);
    return;
  }
  const prev = state.farCheckpoints.get(m.replica);
  if (prev !== undefined && prev.seq >= m.seq) return;
  if (!state.verify(m)) return;
  state.farCheckpoints.set(m.replica, m);
  checkFarCheckpoints(state);
}

/**
 * A CHECKPOINT at or below our stable one comes from a replica that may lack the proof
 * (its own was resent because it saw no quorum): send it ours, at most once per
 * retransmission interval per peer.
 */
function answerWithStable(state: CoreState, to: ReplicaId): void {
  if (state.stableSeq === 0 || to === state.cfg.id) return;
  const last = state.stableAnsweredAt.get(to) ?? -NO_DEADLINE;
  if (state.now - last < state.cfg.retransmitTicks) return;
  state.stableAnsweredAt.set(to, state.now);
  const stable = stableProofOf(state);
  state.send(to, { t: "STATE_RESPONSE", kind: "decided", nonce: 0, items: [], stable, lastExecuted: state.lastExecuted });
}

/** Adds a verified in-window CHECKPOINT and adopts it as stable at Q matching signers. */
function addCheckpoint(state: CoreState, m: Checkpoint): void {
  let set = state.checkpointVotes.get(m.seq);
  if (set === undefined) {
    set = new Map();
    state.checkpointVotes.set(m.seq, set);
  }
  if (set.has(m.replica)) return;
  set.set(m.replica, m);
  const matching = [...set.values()].filter((c) => bytesEqual(c.digest, m.digest));
  if (matching.length >= state.seams.quorumSize()) {
    matching.sort((a, b) => a.replica - b.replica);
    adoptStable(state, m.seq, m.digest, matching.slice(0, state.seams.quorumSize()));
  }
}

/** W agreeing CHECKPOINTs beyond the window: this replica is behind; fetch that state. */
function checkFarCheckpoints(state: CoreState): void {
  const groups = new Map<string, Checkpoint[]>();
  for (const c of state.farCheckpoints.values()) {
    const key = `${c.seq}:${toHex(c.digest)}`;
    const g = groups.get(key) ?? [];
    g.push(c);
    groups.set(key, g);
  }
  for (const g of groups.values()) {
    g.sort((a, b) => a.replica - b.replica);
    const first = g[0] as Checkpoint;
    if (g.length >= state.seams.quorumSize()) adoptStable(state, first.seq, first.digest, g.slice(0, state.seams.quorumSize()));
    else if (g.length >= state.weakQuorumSize && first.seq > state.lastExecuted) startTransfer(state, first.seq, first.digest, g);
  }
}

/** Whether `proof` holds Q distinct signers, enough to make its checkpoint stable. */
export function provesStable(state: CoreState, proof: readonly Checkpoint[]): boolean {
  return new Set(proof.map((c) => c.replica)).size >= state.seams.quorumSize();
}

/**
 * A stable checkpoint (Q signers). Below or at lastExecuted it moves h and collects
 * garbage; above, it becomes the state-transfer target and h moves after installation.
 */
export function adoptStable(state: CoreState, seq: number, digest: Uint8Array, proof: Checkpoint[]): void {
  if (seq <= state.stableSeq) return;
  if (seq > state.lastExecuted) {
    startTransfer(state, seq, digest, proof);
    return;
  }
  if (!checkDivergence(state, seq, digest)) return;
  state.stableSeq = seq;
  state.stableDigest = digest;
  state.stableProof = proof;
  state.persist({ t: "stable", seq, digest, proof });
  collectGarbage(state);
}

/**
 * A NEW_VIEW starts the new view's log at minS, a stable checkpoint this replica has not
 * reached. As in PBFT, h moves there at once (the proof has Q signatures) and the state
 * is fetched: everything at or below minS is obsolete in the new view, and keeping it
 * would let the log outgrow its window. Until the snapshot is installed, h is above
 * lastExecuted and a transfer to h is in progress.
 */
export function jumpToStable(state: CoreState, seq: number, digest: Uint8Array, proof: Checkpoint[]): void {
  state.stableSeq = seq;
  state.stableDigest = digest;
  state.stableProof = proof;
  state.persist({ t: "stable", seq, digest, proof });
  collectGarbage(state);
  startTransfer(state, seq, digest, proof);
  if (state.transfer !== null && state.transfer.seq === seq) {
    state.transfer.nextTryAt = state.now + state.cfg.transferRetryTicks;
    requestSnapshot(state);
  }
}

/** Replicas are deterministic: an own digest that differs from a stable one is fatal. */
function checkDivergence(state: CoreState, seq: number, stable: Uint8Array): boolean {
  const own = state.ownCheckpoints.get(seq);
  if (own === undefined || bytesEqual(own, stable)) return true;
  state.emit({ kind: "divergence", seq, own, stable });
  return false;
}

export function collectGarbage(state: CoreState): void {
  const h = state.stableSeq;
  dropEntriesThrough(state, h);
  for (const s of [...state.preparedCerts.keys()]) if (s <= h) state.preparedCerts.delete(s);
  for (const s of [...state.decided.keys()]) if (s <= h) state.decided.delete(s);
  for (const s of [...state.decidedPending.keys()]) if (s <= h) state.decidedPending.delete(s);
  for (const s of [...state.checkpointVotes.keys()]) if (s <= h) state.checkpointVotes.delete(s);
  for (const s of [...state.ownCheckpoints.keys()]) if (s < h) state.ownCheckpoints.delete(s);
  for (const s of [...state.checkpointClients.keys()]) if (s < h) state.checkpointClients.delete(s);
  for (const [r, c] of [...state.farCheckpoints]) {
    if (c.seq > state.highWater) continue;
    state.farCheckpoints.delete(r);
    if (c.seq > h) addCheckpoint(state, c);
  }
  for (const key of [...state.signedVotes.keys()]) {
    const seq = Number(key.slice(key.lastIndexOf(":") + 1));
    if (seq <= h) state.signedVotes.delete(key);
  }
}

/**
 * Targets the state at `seq`. A target inside the window is usually reached by executing
 * what is already in flight, so the fetch waits one retransmission interval first; a
 * target beyond the window can only be reached by a snapshot, so it is fetched at once.
 */
function startTransfer(state: CoreState, seq: number, digest: Uint8Array, proof: Checkpoint[]): void {
  const prev = state.transfer;
  if (prev !== null && prev.seq >= seq) return;
  const inWindow = seq <= state.highWater;
  // A replica executing decisions its peers send (after installing an older state, say)
  // keeps its retry time when the target moves: it is asked for a snapshot only at that
  // try, and only if it is not gaining on the target by then (transferTryFetches).
  const catchingUp = prev !== null && state.now - state.lastExecutedAt < state.cfg.retransmitTicks;
  const firstTry = inWindow ? state.now + state.cfg.retransmitTicks : state.now + state.cfg.transferRetryTicks;
  state.transfer = newTransfer(state, seq, digest, proof, catchingUp ? prev.nextTryAt : firstTry);
  if (!inWindow && !catchingUp) requestSnapshot(state);
}

/** Asks the runtime for the snapshot, rotating the preferred source on every retry. */
export function requestSnapshot(state: CoreState): void {
  const t = state.transfer;
  if (t === null) return;
  // The epoch's starting checkpoint has no signers of this epoch: any other member may hold it.
  const vouched = t.proof.length === 0 ? Array.from({ length: state.cfg.n }, (_, r) => r) : t.proof.map((c) => c.replica);
  const signers = [...new Set(vouched)].filter((r) => r !== state.cfg.id);
  const k = signers.length === 0 ? 0 : t.attempt % signers.length;
  const from = [...signers.slice(k), ...signers.slice(0, k)];
  state.emit({ kind: "fetchState", seq: t.seq, stateDigest: t.digest, from, proof: t.proof });
}

/**
 * The state a fetched snapshot at (seq, digest) installs as, or null when this replica
 * does not take it: the transfer's target, or an older stable checkpoint still ahead of
 * lastExecuted that `proof` vouches for (f+1 valid signatures of this epoch's members,
 * so one correct replica had that state). The runtime keeps fetching an older target
 * while its sources still serve it, instead of starting over at each newer one
 * (src/replica/state-transfer.ts); the decisions after it come from the peers' decided
 * logs (onStateRequest).
 */
export function snapshotTarget(
  state: CoreState,
  seq: number,
  digest: Uint8Array,
  proof: readonly Checkpoint[] | undefined,
): { digest: Uint8Array; proof: Checkpoint[] } | null {
  const t = state.transfer;
  if (t === null || seq <= state.lastExecuted) return null;
  if (seq === t.seq) return bytesEqual(digest, t.digest) ? { digest: t.digest, proof: t.proof } : null;
  if (seq > t.seq || proof === undefined || seq % state.cfg.checkpointInterval !== 0) return null;
  if (!validCheckpointProof(state.certContext, seq, digest, proof, state.weakQuorumSize)) return null;
  return { digest, proof: [...proof] };
}

export function onSnapshotInstalled(
  state: CoreState,
  seq: number,
  claimedDigest: Uint8Array,
  appDigest: Uint8Array,
  rows: ClientTableExport,
  claimedProof?: readonly Checkpoint[],
): void {
  const t = state.transfer;
  const target = snapshotTarget(state, seq, claimedDigest, claimedProof);
  if (t === null || target === null) return;
  const digest = stateDigest(state, seq, appDigest, clientsHash(state, rows));
  if (!bytesEqual(digest, target.digest)) return;
  if (seq === t.seq) {
    state.transfer = null;
  } else {
    // An older state: the target stays, reached by the decisions after this one unless
    // the replica stops gaining on it (transferTryFetches).
    t.nextTryAt = state.now + state.cfg.transferRetryTicks;
    t.executedAtTry = seq;
    t.targetAtTry = t.seq;
  }
  state.lastExecuted = seq;
  state.lastExecutedAt = state.now;
  state.clientTable.import(rows);
  dropEntriesThrough(state, seq);
  for (const s of [...state.decided.keys()]) if (s <= seq) state.decided.delete(s);
  for (const s of [...state.decidedPending.keys()]) if (s <= seq) state.decidedPending.delete(s);
  forgetClaimsThrough(state, seq);
  for (const [client] of [...state.pending.clients()]) state.pending.pruneExecuted(client, state.clientTable.lastExecuted(client));
  state.ownCheckpoints.set(seq, digest);
  state.persist({ t: "snapshot", seq, stateDigest: digest, appDigest, clients: rows, proof: target.proof });
  if (provesStable(state, target.proof)) adoptStable(state, seq, digest, target.proof);
  state.nextProbeAt = state.now;
  if (state.nextProposalSeq <= seq) state.nextProposalSeq = seq + 1;
}

// ---------------------------------------------------------------------------------------
// Catch-up inside the window: decided batches reported by f+1 peers (core/ordering/PROTOCOL.md §4).
// ---------------------------------------------------------------------------------------

/**
 * Answers a peer's request for decided batches or bodies, at most once per peer and kind
 * per STATE_SERVE_INTERVAL_TICKS. Each kind has its own budget ("decided", "batch", and
 * "lagging" for answers to a lagging voter), so that what a stalled replica sends in one
 * tick never uses up the budget of another: the votes it resends once did, every time
 * (the answer to the votes starts at the voted seq, the request at the first missing
 * one), and the replica never caught up.
 */
export function onStateRequest(state: CoreState, from: ReplicaId, m: StateRequest, budget: "decided" | "batch" | "lagging" = m.kind): void {
  const key = `${from}:${budget}`;
  if ((state.servedAt.get(key) ?? -NO_DEADLINE) + STATE_SERVE_INTERVAL_TICKS > state.now) return;
  const allowance = serveBudget(state, from);
  if (allowance <= 0) return;
  state.servedAt.set(key, state.now);
  if (m.kind === "decided" && m.seq <= state.stableSeq) {
    // Decisions at or below the stable checkpoint are gone from memory but still in the
    // decided log on disk (back to the last base): a replica that installed an older
    // state catches up from them (PROTOCOL.md §7, "An older state"). The runtime reads
    // them, within its own budget of bytes a second per peer (it alone knows what it
    // read); here, at most one answer per peer per STATE_SERVE_INTERVAL_TICKS.
    const toSeq = Math.min(m.toSeq, state.stableSeq, m.seq + state.cfg.transferItemsMax - 1);
    const stable = stableProofOf(state);
    state.emit({
      kind: "serveDecided",
      to: from,
      seq: m.seq,
      toSeq,
      bytesMax: state.cfg.batchBytesMax,
      nonce: m.nonce,
      stable,
      lastExecuted: state.lastExecuted,
    });
    return;
  }
  const items: DecidedItem[] = [];
  const first = Math.max(m.seq, state.stableSeq + 1);
  const last = Math.min(m.toSeq, first + state.cfg.transferItemsMax - 1, state.highWater);
  // Bounded in bytes like one batch (at least one item), so the answer fits a message.
  let bytes = 0;
  for (let s = first; s <= last; s++) {
    const item = m.kind === "decided" ? decidedItem(state, s) : bodyItem(state, s, m.digest);
    if (item === null) continue;
    const size = decidedItemBytes(item);
    if (items.length > 0 && bytes + size > state.cfg.batchBytesMax) break;
    items.push(item);
    bytes += size;
  }
  const stable: StableProof | null = state.stableSeq > 0 ? stableProofOf(state) : null;
  // The stable proof alone is worth sending when the asker has executed up to it: it may
  // be stuck with a full window for want of exactly that proof.
  if (items.length === 0 && (stable === null || state.stableSeq < m.seq - 1)) return;
  state.serveBudgets.set(from, { bytes: allowance - bytes, at: state.now });
  const resp: StateResponse = {
    t: "STATE_RESPONSE",
    kind: m.kind,
    nonce: m.nonce,
    items,
    stable,
    lastExecuted: state.lastExecuted,
  };
  state.send(from, resp);
}

/** What a decided item counts for against an answer's bound of batchBytesMax bytes. */
export function decidedItemBytes(item: DecidedItem): number {
  return (
    item.batch.reduce((sum, r) => sum + requestBytes(r), 0) +
    (item.commits.length + item.votes.length) * SIGNED_VOTE_BYTES_MAX +
    DECIDED_ITEM_FIELDS_BYTES_MAX
  );
}

/**
 * A peer still voting on a seq this replica executed has not seen the decision: answer
 * with the decided batches from there on, instead of counting its vote (core/ordering/PROTOCOL.md §4,
 * retransmission).
 */
export function answerLaggingVoter(state: CoreState, from: ReplicaId, m: Prepare | Commit): void {
  if (m.seq > state.lastExecuted || m.replica !== from || !state.decided.has(m.seq)) return;
  // A first vote after the decision is just late; the same vote again is a resend by a
  // replica that is stuck.
  const e = state.entries.get(m.seq);
  const key = state.seams.voteKey(from);
  const seen =
    e !== undefined &&
    (m.t === "PREPARE" ? e.prepares.has(key) || e.surplusPrepares.has(key) : e.commits.has(key) || e.surplusCommits.has(key));
  if (e !== undefined && !seen) return;
  const req: StateRequest = { t: "STATE_REQUEST", kind: "decided", seq: m.seq, toSeq: state.lastExecuted, digest: null, nonce: 0 };
  onStateRequest(state, from, req, "lagging");
}

/**
 * A decided batch as this replica reports it, with its own PREPARE and COMMIT for the seq
 * while it holds them: a decision is taken from f+1 reports, and when this replica is the
 * only correct one that decided it (the others' votes lost on the way), the asker
 * completes its own certificates with these instead, as in PBFT with MACs.
 */
function decidedItem(state: CoreState, s: number): DecidedItem | null {
  const d = state.decided.get(s);
  if (d === undefined) return null;
  const votes: Array<Prepare | Commit> = [];
  const e = state.entries.get(s);
  if (e !== undefined) {
    const own = state.seams.voteKey(state.cfg.id);
    const prepare = e.prepares.get(own);
    if (prepare !== undefined && prepare.replica === state.cfg.id) votes.push(prepare);
    const commit = e.commits.get(own);
    if (commit !== undefined && commit.replica === state.cfg.id) votes.push(commit);
  }
  return { view: d.view, seq: s, batch: d.batch, commits: d.commits, votes };
}

/** Any body this replica holds for `s` (matching `digest` if given); the asker checks it. */
function bodyItem(state: CoreState, s: number, digest: Uint8Array | null): DecidedItem | null {
  const candidates: Array<{ view: number; digest: Uint8Array | null; batch: ClientRequest[] | null }> = [];
  const d = state.decided.get(s);
  if (d !== undefined) candidates.push(d);
  const e = state.entries.get(s);
  if (e !== undefined) candidates.push(e);
  const p = state.preparedCerts.get(s);
  if (p !== undefined) candidates.push({ view: p.cert.view, digest: p.cert.digest, batch: p.batch });
  for (const c of candidates) {
    if (c.batch === null || c.digest === null) continue;
    if (digest !== null && !bytesEqual(c.digest, digest)) continue;
    return { view: c.view, seq: s, batch: c.batch, commits: [], votes: [] };
  }
  return null;
}

/**
 * Takes what a STATE_RESPONSE carries: where the peer is, its stable checkpoint, and
 * decided batches or bodies. Executing them is the caller's part (core.ts).
 */
export function acceptStateResponse(state: CoreState, from: ReplicaId, m: StateResponse): void {
  if (m.lastExecuted > (state.peerSeqs.get(from) ?? -1)) state.peerSeqs.set(from, m.lastExecuted);
  if (m.stable !== null && m.stable.seq > state.stableSeq && m.stable.seq % state.cfg.checkpointInterval === 0) {
    const st = m.stable;
    if (validCheckpointProof(state.certContext, st.seq, st.digest, st.proof, state.seams.quorumSize())) {
      adoptStable(state, st.seq, st.digest, st.proof);
    }
  }
  for (const item of m.items) {
    // The sender's own votes for a seq this replica has not executed count as if they came
    // alone (an executed seq's are not looked at: no vote goes back and forth).
    if (item.seq > state.lastExecuted) {
      for (const vote of item.votes) if (vote.replica === from && vote.seq === item.seq) state.redeliver(from, vote);
    }
    if (item.commits.length > 0) acceptDecidedItem(state, from, item);
    else acceptBodyItem(state, item);
  }
}

/**
 * A peer's report that `item.seq` was decided with the digest its certificate names. The
 * COMMITs in it are authenticated only by the links they came over to that peer, so the
 * report is its word alone: the decision is taken once `decisionClaimsNeeded` distinct
 * peers (f+1 in BFT mode, so one of them correct) reported the same digest. Each peer's
 * latest report per seq is kept, as a digest only: the report that completes the count
 * brings the body, checked against the digest.
 */
function acceptDecidedItem(state: CoreState, from: ReplicaId, item: DecidedItem): void {
  // Only inside the window, or up to a stable checkpoint (Q signers) this replica is
  // catching up to (after installing an older state, its own h stays behind until it
  // executes there, and then moves to it), and within one window of what this replica
  // executed (while a transfer moves it, h may be far ahead): a replica further behind
  // catches up by state transfer, and the reports kept stay within L seqs times n peers.
  const t = state.transfer;
  const bound = t !== null && provesStable(state, t.proof) ? Math.max(state.highWater, t.seq) : state.highWater;
  if (item.seq <= state.lastExecuted || item.seq > bound || item.seq > state.lastExecuted + state.cfg.logWindow) return;
  if (state.decidedPending.has(item.seq) || from === state.cfg.id || !isMember(state.certContext, from)) return;
  // The certificate names the digest; the body must match it (an empty body matches the
  // null digest of a NEW_VIEW gap).
  const digest = (item.commits[0] as Commit).digest;
  if (!wellFormedDecisionCert(state.certContext, item.view, item.seq, digest, item.commits)) return;
  if (!bodyMatches(state.crypto, digest, item.batch)) return;
  forgetClaimsThrough(state, state.lastExecuted);
  let claims = state.decisionClaims.get(item.seq);
  if (claims === undefined) {
    claims = new Map();
    state.decisionClaims.set(item.seq, claims);
  }
  // A copy: the digest is a view into the received frame, which it would keep alive.
  claims.set(from, digest.slice());
  let agreeing = 0;
  for (const d of claims.values()) if (bytesEqual(d, digest)) agreeing++;
  if (agreeing < state.seams.decisionClaimsNeeded()) return;
  state.decisionClaims.delete(item.seq);
  state.decidedPending.set(item.seq, { view: item.view, digest, batch: item.batch, commits: item.commits });
  const e = state.entries.get(item.seq);
  if (e !== undefined && e.batch === null && e.digest !== null && bytesEqual(e.digest, digest)) attachBody(state, e, item.batch);
}

/** Drops the reports of decisions for seqs this replica has executed. */
export function forgetClaimsThrough(state: CoreState, seq: number): void {
  for (const s of state.decisionClaims.keys()) if (s <= seq) state.decisionClaims.delete(s);
}

function acceptBodyItem(state: CoreState, item: DecidedItem): void {
  const e = state.entries.get(item.seq);
  if (e === undefined || e.batch !== null || e.digest === null) return;
  attachBody(state, e, item.batch);
}
