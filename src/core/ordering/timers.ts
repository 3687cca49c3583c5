/**
 * Time (core/ordering/PROTOCOL.md §5 timers, §6 view-change timers, Aardvark expectations): what one
 * tick does. core.ts calls, in order, `startTick`, then by phase and role
 * `tickViewChange` (view-change.ts), `tickLeader` or `tickBackup`, then `finishTick`.
 * A backup watches its leader here: request timers, the heartbeat, fairness and
 * throughput; the expectations that need state across ticks live in monitors.ts.
 */
import { isBarrier } from "./barrier.ts";
import { lessUrgentRequests, ordinaryDepth, pacingUrgent, URGENT, URGENT_PIPELINE_SLOTS, urgencyOf } from "./priority.ts";
import { ownCheckpoint, requestSnapshot, transferTryFetches } from "./checkpoints.ts";
import { flushForwards, forwardOverdue, type PendingRequest } from "./clients.ts";
import type { ReplicaId } from "./config.ts";
import type { StateRequest } from "./messages.ts";
import { type CoreState, kthLargest, NO_DEADLINE } from "./state.ts";
import { resendSuspicion, suspect } from "./suspicion.ts";
import { askForMissingBodies } from "./view-change.ts";
import { voteFenced } from "./log.ts";

/** A replica that executed nothing for this many retransmission intervals asks one peer what it missed. */
const IDLE_PROBE_INTERVALS = 4;
/** Ticks the moving average of decided bytes spans, about. */
const DECIDED_BYTES_AVERAGE_TICKS = 16;
/** Progress timeout doublings after repeated heartbeat failures (Aardvark doubles it). */
const PROGRESS_BACKOFF_DOUBLINGS_MAX = 4;

/** The clock moves; the flood monitor judges its window; a state transfer that has not completed is retried. */
export function startTick(state: CoreState): void {
  state.now++;
  state.decidedBytesPerTick += (state.decidedBytesThisTick - state.decidedBytesPerTick) / DECIDED_BYTES_AVERAGE_TICKS;
  state.decidedBytesThisTick = 0;
  for (const peer of state.floodMonitor.onTick(state.now)) state.emit({ kind: "peerFlooding", peer });
  const t = state.transfer;
  if (t !== null && state.now >= t.nextTryAt) {
    t.nextTryAt = state.now + state.cfg.transferRetryTicks;
    if (transferTryFetches(state, t)) {
      t.attempt++;
      requestSnapshot(state);
    }
  }
}

/**
 * The leader in the normal case: start request timers, resend what stalled (its proposals
 * too), ask for bodies. Restarted as this view's leader it proposes nothing here (fenced,
 * PROTOCOL.md §2), so the view has to change; its own request timers suspect it too,
 * since the backups that would time out may have moved to other views meanwhile (the
 * simulator found two restarted replicas each leading a view of its own and a third
 * changing to a later one: no backup of either view was left to suspect its leader).
 */
export function tickLeader(state: CoreState): void {
  startHeadTimers(state);
  if (voteFenced(state, state.view, state.nextProposalSeq)) {
    watchLeader(state);
    resendSuspicion(state);
  }
  if (state.phase !== "normal") return;
  retransmitStalled(state, true);
  askForMissingBodies(state);
}

/**
 * A backup in the normal case: start request timers and watch the leader; unless that
 * started a view change, resend what stalled and ask for missing bodies.
 */
export function tickBackup(state: CoreState): void {
  startHeadTimers(state);
  // A pipeline full of padding (§13) is no excuse: a leader that held a request would have
  // proposed it before any padding, so the lazy forward counts those ticks.
  forwardOverdue(state, !pipelineFull(state, pacingUrgent(state, state.cfg.urgentPacingTicks)) || paddingInFlight(state));
  if (state.barrierBlocked) restartHeadTimers(state);
  else watchLeader(state);
  if (state.phase === "normal") {
    resendSuspicion(state);
    retransmitStalled(state, false);
    askForMissingBodies(state);
  }
}

/** Whether an empty batch (padding, §13) is among the proposals this replica accepted and has not executed. */
function paddingInFlight(state: CoreState): boolean {
  if (state.padTo <= state.lastExecuted) return false;
  for (const e of state.entries.values()) if (e.seq > state.lastExecuted && e.batch !== null && e.batch.every(isBarrier)) return true;
  return false;
}

/** Every tick, after the rest: own CHECKPOINTs, catch-up probes, queued forwards. */
export function finishTick(state: CoreState): void {
  resendCheckpoints(state);
  catchUpProbe(state);
  flushForwards(state);
}

/**
 * A CHECKPOINT is sent once; if one is lost, the checkpoint may never become stable and
 * the window fills up for good. So while execution stalls, resend our own CHECKPOINTs
 * above h (re-signed on demand: ed25519 is deterministic, the bytes are the same).
 */
function resendCheckpoints(state: CoreState): void {
  if (state.now < state.nextCheckpointResendAt) return;
  if (state.now - state.lastExecutedAt < state.cfg.retransmitTicks) return;
  let any = false;
  for (const [seq, digest] of state.ownCheckpoints) {
    if (seq <= state.stableSeq) continue;
    state.send("all", ownCheckpoint(state, seq, digest));
    any = true;
  }
  if (any) state.nextCheckpointResendAt = state.now + state.cfg.retransmitTicks;
}

/**
 * While the next decided batch waits for this replica's own external order (§12), the
 * leader is not judged: the wait is here. Request timers start again from now, so a leader
 * is never suspected for time spent behind a barrier.
 */
function restartHeadTimers(state: CoreState): void {
  for (const [client, forClient] of state.pending.clients()) {
    const head = forClient.get(state.clientTable.lastExecuted(client) + 1);
    if (head !== undefined) head.timerStart = state.now;
  }
}

/**
 * The head request of every client's chain: a request that just became the head starts
 * its timer, and its fairness reference, now.
 */
function startHeadTimers(state: CoreState): void {
  state.pending.expireGapped((client) => state.clientTable.lastExecuted(client) + 1, state.now, state.cfg.requestTimeoutTicks);
  for (const [client, forClient] of state.pending.clients()) {
    const head = forClient.get(state.clientTable.lastExecuted(client) + 1);
    if (head === undefined) continue;
    if (head.timerStart < 0) {
      // The request just became the head of its chain: its timer and its fairness
      // reference start now, not when it arrived behind a gap.
      head.timerStart = state.now;
      head.seqAtArrival = state.highestAcceptedSeq;
    }
  }
}

/**
 * One pass over the head request of every client's chain: request timers (forward to all,
 * then suspect), the heartbeat, fairness and throughput expectations.
 */
function watchLeader(state: CoreState): void {
  const cfg = state.cfg;
  let busy = false;
  let waitingSince = NO_DEADLINE;
  let unfair = false;
  let timedOut = false;
  const activeClients = state.pending.clientCount();
  const patience = cfg.batchDelayTicks + cfg.starvationSlackTicks;
  // Heads that waited past the patience for a proposal: handed to the leader again if it
  // turns out to be idle (below), in case the copy it was given was lost.
  const overdue: PendingRequest[] = [];
  // A leader fills batches most urgent first (priority.ts): a request less urgent than the
  // most urgent waiting is owed only the share kept for the less urgent.
  let mostUrgent = 0;
  for (const [client] of state.pending.clients()) mostUrgent = Math.max(mostUrgent, urgencyOf(state.policy, client));
  const inFlightMax = cfg.pipelineDepth + URGENT_PIPELINE_SLOTS;
  const fairnessBound = inFlightMax + cfg.fairnessMultiplier * Math.ceil(activeClients / cfg.batchRequestsMax);
  const lessUrgentBound = inFlightMax + cfg.fairnessMultiplier * Math.ceil(activeClients / lessUrgentRequests(cfg.batchRequestsMax));
  // While urgent requests arrive the leader paces less urgent work (priority.ts): judged
  // against the paced pipeline while this replica saw urgent requests within twice the
  // window. Paced, every waiting head still goes into each ordinary batch within its
  // class's share, but only one ordinary proposal is in flight and urgent-slot proposals
  // may come between: each round of the less urgent bound takes up to 1 + the urgent slots.
  const paced = pacingUrgent(state, cfg.urgentPacingTicks);
  const pacedBound =
    inFlightMax +
    cfg.fairnessMultiplier * Math.ceil(activeClients / lessUrgentRequests(cfg.batchRequestsMax)) * (1 + URGENT_PIPELINE_SLOTS);
  for (const [client, forClient] of state.pending.clients()) {
    const head = forClient.get(state.clientTable.lastExecuted(client) + 1);
    if (head === undefined) continue;
    if (state.now - head.firstSeen > cfg.batchDelayTicks) busy = true;
    // The leader is judged for a request only from when it can be taken to hold it: a
    // request a client gave this backup alone reaches it by the lazy forward
    // (clients.ts, forwardOverdue), so its wait counts from that forward.
    const owedSince = Math.max(head.firstSeen, head.leaderSince);
    const inBatch = state.inFreeProposal.has(head.key) || state.inNewViewBatch.has(head.key);
    if (!inBatch && state.now - owedSince > cfg.batchDelayTicks) {
      const since = Math.max(owedSince, head.timerStart);
      waitingSince = Math.min(waitingSince, since);
      if (state.now - since > patience && state.now - head.forwardedAt > patience) overdue.push(head);
      const urgency = urgencyOf(state.policy, client);
      const bound = paced && urgency < URGENT ? pacedBound : mostUrgent > 0 && urgency < mostUrgent ? lessUrgentBound : fairnessBound;
      if (state.lastExecuted > head.seqAtArrival + bound) unfair = true;
    }
    if (state.now - head.timerStart < cfg.requestTimeoutTicks) continue;
    if (head.stage === 0) {
      head.stage = 1;
      head.timerStart = state.now;
      head.seqAtArrival = state.highestAcceptedSeq;
      head.forwardedAt = state.now;
      head.heldTicks = -1;
      head.leaderSince = Math.min(head.leaderSince, state.now);
      state.forwardToAll.push(head.req);
    } else if (head.stage === 1) {
      head.stage = 2;
      timedOut = true;
    }
  }
  // Padding owed to a membership switch (§13) is judged like a waiting request: a leader
  // that stops proposing it (crashed, cut off, fenced after a restart) is replaced by the
  // heartbeat even when no client publishes. From a retransmission interval after this
  // replica was told: a leader that executes the change a little later is not judged for it.
  if (state.padTo > state.lastExecuted) waitingSince = Math.min(waitingSince, state.padSince + cfg.retransmitTicks);
  if (timedOut) return suspect(state, "request-timeout");
  if (stalledInView(state)) return suspect(state, "stalled");
  // Fenced after a restart (PROTOCOL.md §2) it ignores this view's proposals and follows
  // the decisions: what it holds of them says nothing of the leader's fairness or pace.
  // Its request timers still run: they are what replaces a leader that stops deciding.
  if (state.phase === "normal" && voteFenced(state, state.view, state.lastExecuted + 1)) return;
  if (unfair) return suspect(state, "unfair");
  const full = pipelineFull(state, paced);
  const leaderBound = !full && waitingSince !== NO_DEADLINE && state.now - waitingSince > patience;
  const starved = leaderBound && state.now - state.lastProposalAt > patience;
  if (starved && overdue.length > 0) reforward(state, overdue);
  if (state.starvationMonitor.onTick(state.now, starved)) return suspect(state, "starved");
  if (!full && waitingSince !== NO_DEADLINE) {
    if (state.now - Math.max(waitingSince, state.lastProposalAt) > state.progressTimeoutCurrentTicks) {
      state.progressTimeoutCurrentTicks = Math.min(
        state.progressTimeoutCurrentTicks * 2,
        cfg.progressTimeoutTicks * 2 ** PROGRESS_BACKOFF_DOUBLINGS_MAX,
      );
      return suspect(state, "heartbeat");
    }
  }
  // Paced ticks are not judged, nor do they lower the rate later views are held to.
  if (state.throughputMonitor.onTick(state.now, busy && !paced, leaderBound)) suspect(state, "throughput");
}

/**
 * Whether the next seq to execute has been in flight in this view for two request
 * timeouts without this replica deciding it: COMMITs from W distinct replicas (so a
 * correct one prepared it in this view) and no decision here. The request timers cover a
 * seq whose requests this replica holds; this one covers a seq it holds none of (it was
 * down when they were sent, and the client, answered by others, sends them no more) and
 * cannot learn from its peers: f+1 reports are needed, and the replicas that decided it
 * may be fewer (core/ordering/PROTOCOL.md §4, "Retransmission and catch-up"). A view
 * change re-proposes it, and a restarted replica fenced in this view votes again there.
 */
function stalledInView(state: CoreState): boolean {
  const s = state.lastExecuted + 1;
  const e = state.entries.get(s);
  const committers = new Set<number>();
  if (e !== undefined && e.view === state.view && !e.committed) for (const c of e.commits.values()) committers.add(c.replica);
  if (state.transfer !== null || state.decidedPending.has(s) || committers.size < state.weakQuorumSize) {
    state.stalledSeq = null;
    return false;
  }
  const watch = state.stalledSeq;
  if (watch === null || watch.view !== state.view || watch.seq !== s) {
    state.stalledSeq = { view: state.view, seq: s, since: state.now };
    return false;
  }
  return state.now - watch.since >= 2 * state.cfg.requestTimeoutTicks;
}

/** Whether the leader's pipeline is full as this backup sees it (the paced depth while urgent requests arrive). */
function pipelineFull(state: CoreState, paced: boolean): boolean {
  return state.highestAcceptedSeq - state.lastExecuted >= ordinaryDepth(state, paced);
}

/**
 * A starved tick (the leader idle, with room in its pipeline, while requests wait past
 * the patience) hands the waiting heads to the leader again, each at most once per
 * patience: a forward (or the client's own copy) may have been lost, and a lost copy
 * otherwise waits for the request timer while the starvation expectation counts against
 * a leader that never had the request. The leader is still judged from the first forward
 * (`leaderSince` and the fairness reference do not move), so a leader that drops what it
 * is given gains nothing; a correct one drops a copy it already holds at the cheapest
 * admission check (core/ordering/PROTOCOL.md §5).
 */
function reforward(state: CoreState, overdue: readonly PendingRequest[]): void {
  for (const head of overdue) {
    head.forwardedAt = state.now;
    state.forwardToLeader.push(head.req);
  }
}

/**
 * Resend own votes for instances that stopped moving (core/ordering/PROTOCOL.md §4, retransmission);
 * the leader resends its proposals too.
 */
function retransmitStalled(state: CoreState, resendProposals: boolean): void {
  if (state.now - state.lastExecutedAt < state.cfg.retransmitTicks || state.now < state.nextRetransmitAt) return;
  let any = false;
  for (const e of state.entries.values()) {
    if (e.seq <= state.lastExecuted || e.header === null || e.digest === null) continue;
    any = true;
    if (resendProposals && e.batch !== null && !e.fromNewView) state.send("all", { ...e.header, batch: e.batch });
    const p = e.prepares.get(state.seams.voteKey(state.cfg.id));
    if (p !== undefined && p.replica === state.cfg.id) state.send("all", p);
    const c = e.commits.get(state.seams.voteKey(state.cfg.id));
    if (c !== undefined && c.replica === state.cfg.id) state.send("all", c);
  }
  if (any) state.nextRetransmitAt = state.now + state.cfg.retransmitTicks;
}

/**
 * Asks peers for decided batches (or their stable checkpoint) when this replica is
 * behind: W peers are known to be past it; or it is stuck in a view change, where it
 * takes no part in agreement; or it has executed nothing for a long time, when a few
 * peers at a time are asked (as many as a decision needs reports from), so that a
 * replica that missed everything before a quiet spell still catches up.
 */
function catchUpProbe(state: CoreState): void {
  const cfg = state.cfg;
  if (state.now < state.nextProbeAt) return;
  const target = kthLargest(state.peerSeqs.values(), state.weakQuorumSize);
  const stalledTicks = state.now - state.lastExecutedAt;
  const farBehind = target > state.lastExecuted + cfg.pipelineDepth;
  const stalled = stalledTicks >= cfg.retransmitTicks;
  // Fenced after a restart (PROTOCOL.md §2), it takes no part in this view's agreement:
  // it follows its peers' decisions as they come, before its request timers suspect a
  // leader that is proposing.
  const fenced = state.phase === "normal" && voteFenced(state, state.view, state.lastExecuted + 1);
  const req: StateRequest = {
    t: "STATE_REQUEST",
    kind: "decided",
    seq: state.lastExecuted + 1,
    toSeq: state.lastExecuted + cfg.logWindow,
    digest: null,
    nonce: state.stateRequestNonce,
  };
  const ahead: ReplicaId[] = [];
  if (target > state.lastExecuted)
    for (const [peer, seq] of state.peerSeqs) if (seq > state.lastExecuted && peer !== cfg.id) ahead.push(peer);
  // A decision is taken from decisionClaimsNeeded peers' reports (f+1 in BFT mode,
  // checkpoints.ts), kept across probes. Those known to be past this replica are asked
  // when there are enough of them to hold that many even with f silent; otherwise every
  // peer is (an idle group's other members may never have said how far they are).
  const claims = state.seams.decisionClaimsNeeded();
  const pool = ahead.length >= claims + cfg.f ? ahead : otherReplicas(state);
  if (target > state.lastExecuted && fenced && !farBehind && !stalled) {
    // A few peers a tick, in turn: each answers with up to transferItemsMax decisions.
    for (let i = 0; i < Math.min(claims, pool.length); i++) {
      state.send(pool[(state.stateRequestNonce + i) % pool.length] as ReplicaId, req);
    }
    state.stateRequestNonce++;
    state.nextProbeAt = state.now + 1;
    return;
  }
  if (target > state.lastExecuted && (farBehind || stalled)) {
    for (const peer of pool) state.send(peer, req);
  } else if (state.phase === "viewChange" && stalled) {
    state.send("all", req);
  } else if (stalledTicks >= IDLE_PROBE_INTERVALS * cfg.retransmitTicks) {
    const others = otherReplicas(state);
    for (let i = 0; i < Math.min(claims, others.length); i++) {
      state.send(others[(state.stateRequestNonce + i) % others.length] as ReplicaId, req);
    }
    state.stateRequestNonce++;
    state.nextProbeAt = state.now + IDLE_PROBE_INTERVALS * cfg.retransmitTicks;
    return;
  } else {
    return;
  }
  state.stateRequestNonce++;
  state.nextProbeAt = state.now + cfg.retransmitTicks;
}

/** Every replica but this one, from the next rank up. */
function otherReplicas(state: CoreState): ReplicaId[] {
  const out: ReplicaId[] = [];
  for (let i = 1; i < state.cfg.n; i++) out.push((state.cfg.id + i) % state.cfg.n);
  return out;
}
