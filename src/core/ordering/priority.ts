/**
 * What the leader puts into a batch first (core/ordering/PROTOCOL.md §4 "Batch fill and
 * priority"): requests of more urgent clients before less urgent ones, round robin among
 * clients of one urgency, each client's requests in chain order; a share of every batch
 * kept for the less urgent when they wait, so they never starve; and a few pipeline slots
 * past `pipelineDepth` that only urgent requests may take, so an alert does not wait for
 * a full pipeline of bulk traffic to drain; and, while urgent requests arrive, less
 * urgent work paced in small batches (urgent pacing), so an alert waits behind little.
 *
 * Urgency is the runtime's to say (a channel's priority); it need not agree across
 * replicas for safety, because a backup accepts any valid batch in any order. The backups'
 * fairness expectation (timers.ts) uses the same share to bound how long a less urgent
 * request may wait.
 */
import type { PendingRequest } from "./clients.ts";
import { type ClientRequest, requestBytes } from "./messages.ts";
import { NO_DEADLINE } from "./state.ts";
import type { CoreState } from "./state.ts";

/** Urgency of the runtime's channel priorities: low 0, normal 1, high 2, critical 3. */
export const URGENCY_MAX = 3;
/** Requests of this urgency or more may use the pipeline slots kept for urgent requests. */
export const URGENT = 2;
/** Proposals past `pipelineDepth` that only urgent requests may take (still within the log window). */
export const URGENT_PIPELINE_SLOTS = 2;
/** Of each batch's requests and bytes, the share kept for less urgent requests while they wait, in percent. */
export const LESS_URGENT_SHARE_PERCENT = 10;

/** Tells the core how urgent a client's requests are (0..URGENCY_MAX; out-of-range values are clamped). */
export interface ProposalPolicy {
  urgencyOf(client: string): number;
  /** No priorities at all: round-robin batch fill, no urgent slots, no shedding by urgency. */
  readonly flat?: boolean;
}

/** Every client equally urgent: batch fill is plain round robin (the simulator, tests). */
export const FLAT_POLICY: ProposalPolicy = { urgencyOf: () => 0, flat: true };

/** Of the pending-request pool, the share the least urgent may fill, in percent; each urgency up adds POOL_STEP_PERCENT. */
export const POOL_SHARE_LEAST_PERCENT = 70;
export const POOL_STEP_PERCENT = 10;

/**
 * Pending requests past which a request of `urgency` is refused as overloaded: under
 * overload `low` is shed first (70% of the pool), then normal (80%), high (90%); critical
 * requests may fill the pool.
 */
export function poolLimitFor(pendingRequestsMax: number, urgency: number): number {
  if (urgency >= URGENCY_MAX) return pendingRequestsMax;
  return Math.floor((pendingRequestsMax * (POOL_SHARE_LEAST_PERCENT + POOL_STEP_PERCENT * urgency)) / 100);
}

/**
 * Proposals in flight that this leader made in the urgent slots. Forgets those executed or
 * no longer ahead of the next proposal, and all of them when the view changed.
 */
export function countUrgentInFlight(state: CoreState): number {
  const seqs = state.urgentSlotSeqs;
  if (state.urgentSlotsView !== state.view) {
    seqs.clear();
    state.urgentSlotsView = state.view;
  }
  for (const seq of seqs) if (seq <= state.lastExecuted || seq >= state.nextProposalSeq) seqs.delete(seq);
  return seqs.size;
}

/**
 * Urgent pacing: whether a request of urgency URGENT or more was admitted here within the
 * last `urgentPacingTicks` (plus `slackTicks`). While it holds, the leader keeps at most
 * `pacedPipelineDepth` ordinary proposals in flight and adds less urgent requests to a
 * batch past each client's head request only up to `pacedBatchBytesMax` bytes,
 * so an urgent request waits behind one small batch, not a pipeline of large ones. The
 * backups judge the leader against the paced pipeline while they saw urgent requests
 * within twice the window (timers.ts): the leader's view of the window may lag theirs.
 */
export function pacingUrgent(state: CoreState, slackTicks = 0): boolean {
  const ticks = state.cfg.urgentPacingTicks;
  return ticks > 0 && state.policy.flat !== true && state.now - state.urgentAdmittedAt <= ticks + slackTicks;
}

/** A backup that accepts a proposal holding an urgent request paces its judgement too (a client may not have reached it directly). */
export function noteUrgentBatch(state: CoreState, batch: readonly ClientRequest[]): void {
  if (state.cfg.urgentPacingTicks === 0 || state.policy.flat === true) return;
  for (const req of batch) {
    if (urgencyOf(state.policy, req.client) >= URGENT) {
      state.urgentAdmittedAt = state.now;
      return;
    }
  }
}

/** Ordinary proposals the leader keeps in flight: `pipelineDepth`, or the paced depth while urgent requests arrive. */
export function ordinaryDepth(state: CoreState, paced: boolean): number {
  return paced ? Math.min(state.cfg.pipelineDepth, state.cfg.pacedPipelineDepth) : state.cfg.pipelineDepth;
}

/** The requests of each batch kept for less urgent clients while they wait (at least one). */
export function lessUrgentRequests(batchRequestsMax: number): number {
  return Math.max(1, Math.floor((batchRequestsMax * LESS_URGENT_SHARE_PERCENT) / 100));
}

export function urgencyOf(policy: ProposalPolicy, client: string): number {
  const u = policy.urgencyOf(client);
  return Number.isInteger(u) ? Math.min(URGENCY_MAX, Math.max(0, u)) : 0;
}

/**
 * Padding (PROTOCOL.md §13): an empty batch when nothing may be proposed and the runtime
 * needs the seqs up to `padTo` decided (a membership change takes effect at that
 * checkpoint, which an idle group would otherwise never reach); null otherwise.
 */
export function padding(state: CoreState): ClientRequest[] | null {
  // Not while a request could be proposed (the fill just before found one): a partial batch
  // held while a proposal is in flight keeps its slot. A request that cannot be proposed
  // (behind a gap in its client's chain, already in flight, named by the NEW_VIEW) does
  // not stop the padding, or a faulty client could hold the switch back.
  return state.nextProposalSeq <= state.padTo && !state.proposableWaiting ? [] : null;
}

/**
 * The next batch, or null when nothing may be proposed yet. `urgentOnly`: only clients of
 * urgency URGENT or more (the reserved pipeline slots). A partial batch waits until its
 * oldest request is `batchDelayTicks` old (0: propose on arrival).
 */
export function buildBatch(state: CoreState, urgentOnly: boolean, paced = false): ClientRequest[] | null {
  const cfg = state.cfg;
  // Each client's chain: its requests in order from its last executed seq. A request
  // already in a free proposal of this view is stepped over (it executes first); one named
  // by the NEW_VIEW stops its client's chain, because it may yet be skipped and must not be
  // proposed twice.
  const byUrgency: PendingRequest[][][] = Array.from({ length: URGENCY_MAX + 1 }, () => []);
  let waiting = 0;
  for (const [client, forClient] of state.pending.clients()) {
    const urgency = urgencyOf(state.policy, client);
    if (urgentOnly && urgency < URGENT) continue;
    const chain: PendingRequest[] = [];
    let seq = state.clientTable.lastExecuted(client) + 1;
    for (let steps = 0; steps < cfg.clientWindow * 2; steps++) {
      const p = forClient.get(seq);
      if (p === undefined || state.inNewViewBatch.has(p.key)) break;
      if (!state.inFreeProposal.has(p.key)) chain.push(p);
      seq += p.req.span;
    }
    if (chain.length > 0) {
      (byUrgency[urgency] as PendingRequest[][]).push(chain);
      waiting++;
    }
  }
  if (!urgentOnly) state.proposableWaiting = waiting > 0;
  if (waiting === 0) return null;
  const fill = new BatchFill(cfg.batchRequestsMax, cfg.batchBytesMax);
  // Each less urgent class that waits keeps its own share: with critical, normal and low
  // waiting, critical may fill up to 80% of the batch, normal up to 90%, low the rest.
  const keptRequests = lessUrgentRequests(cfg.batchRequestsMax);
  const keptBytes = Math.floor((cfg.batchBytesMax * LESS_URGENT_SHARE_PERCENT) / 100);
  let lessUrgentClasses = byUrgency.filter((chains) => chains.length > 0).length;
  for (let urgency = URGENCY_MAX; urgency >= 0 && !fill.full; urgency--) {
    const chains = byUrgency[urgency] as PendingRequest[][];
    if (chains.length === 0) continue;
    lessUrgentClasses--;
    const bytesCap = cfg.batchBytesMax - keptBytes * lessUrgentClasses;
    fill.take(
      chains,
      state.roundRobinStart,
      cfg.batchRequestsMax - keptRequests * lessUrgentClasses,
      bytesCap,
      paced && urgency < URGENT ? cfg.pacedBatchBytesMax : Number.POSITIVE_INFINITY,
    );
  }
  if (fill.batch.length === 0) return null;
  const full = fill.full || fill.batch.length >= cfg.batchRequestsMax;
  if (!full && !urgentOnly && state.now - fill.oldest < partialBatchDelayTicks(state)) return null;
  state.roundRobinStart++;
  return fill.batch;
}

/**
 * How long a partial batch waits for more requests. `batchDelayTicks` 0 proposes on
 * arrival while nothing is in flight; with proposals in flight, a partial batch waits up
 * to one tick for what arrives meanwhile (one instance carries what would otherwise be
 * many: each costs every replica signatures and a disk commit). One tick stays under the
 * backups' starvation patience (`batchDelayTicks + starvationSlackTicks`).
 */
export function partialBatchDelayTicks(state: CoreState): number {
  const delay = state.cfg.batchDelayTicks;
  if (delay > 0) return delay;
  return state.nextProposalSeq - 1 > state.lastExecuted ? 1 : 0;
}

/** A batch being filled: round robin over chains, under the batch's bounds and a class's cap. */
class BatchFill {
  readonly batch: ClientRequest[] = [];
  bytes = 0;
  oldest = NO_DEADLINE;
  /** The batch's own bounds are reached. */
  full = false;

  constructor(
    private readonly requestsMax: number,
    private readonly bytesMax: number,
  ) {}

  /** Takes from `chains` round robin (starting at `start`) until they are empty or a cap is reached. */
  /**
   * `pacedBytes` (urgent pacing): past the first round (each client's head request), stop
   * once the batch holds that many bytes. The first round is never cut by it, so every
   * waiting client's head still goes into each batch its bounds allow, as the backups'
   * request timers and fairness expectation require.
   */
  take(chains: readonly PendingRequest[][], start: number, requestsCap: number, bytesCap: number, pacedBytes: number): void {
    const first = start % chains.length;
    let taken = 0;
    for (let round = 0; ; round++) {
      let took = false;
      for (let i = 0; i < chains.length; i++) {
        const p = (chains[(first + i) % chains.length] as PendingRequest[])[round];
        if (p === undefined) continue;
        const size = requestBytes(p.req);
        if (this.batch.length >= this.requestsMax || this.bytes + size > this.bytesMax) {
          this.full = true;
          return;
        }
        // A class's cap leaves room for the less urgent; each class's first request is
        // taken whenever the batch's own bounds allow, so a request larger than its
        // class's share is not held forever.
        if (taken > 0 && (this.batch.length >= requestsCap || this.bytes + size > bytesCap)) return;
        if (round > 0 && this.bytes + size > pacedBytes) return;
        this.batch.push(p.req);
        taken++;
        this.bytes += size;
        this.oldest = Math.min(this.oldest, p.firstSeen);
        took = true;
      }
      if (!took) return;
    }
  }
}
