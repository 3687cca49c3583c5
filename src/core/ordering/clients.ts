/**
 * Per-client state of the ordering core: the client table (the last executed client
 * sequence number of each client, which is replicated state and travels in snapshots so
 * that deduplication survives state transfer) and the pool of pending requests (local,
 * bounded, never replicated); and what the core does with client requests before they
 * are proposed: admission and forwarding (core/ordering/PROTOCOL.md §5).
 */
import { isBarrier } from "./barrier.ts";
import { bytesEqual } from "../../../wire/bytes.ts";
import { type ClientRequest, requestBytes } from "./messages.ts";
import { poolLimitFor, URGENT, urgencyOf } from "./priority.ts";
import type { ReplicaId } from "./config.ts";
import type { CoreState } from "./state.ts";
import type { Refusal } from "./types.ts";

/** Quarantined clients remembered at once; the oldest entry goes first. */
const QUARANTINE_ENTRIES_MAX = 10_000;
/**
 * Pending requests one client may have at a replica, in client windows. A client sends its
 * next request once f+1 replicas executed an earlier one, so a replica a few seqs behind
 * them still holds the earlier ones: refusing at exactly one window refused, at whichever
 * replica lagged, requests the client was entitled to send. When that replica was the
 * leader, the backups that took the request saw it wait in no batch and suspected a
 * correct leader of unfairness (the simulator's throughput runs found it).
 */
export const CLIENT_PENDING_WINDOWS = 2;

/** The client table in canonical form: [client, lastExecutedSeq] pairs sorted by client. */
export type ClientTableExport = Array<[string, number]>;

/** Ticks elapse and requests pass through here; `timerStart < 0` means the timer is not running. */
export interface PendingRequest {
  readonly req: ClientRequest;
  /** `client:seq`, the identity of a request for dedupe and indexes. */
  readonly key: string;
  /** Tick at which this replica first held the request. */
  readonly firstSeen: number;
  /** Tick the current request-timer stage started, or -1 while the request is not at the head of its client's chain. */
  timerStart: number;
  /** 0: waiting; 1: forwarded to all after the first expiry; 2: leader suspected. */
  stage: number;
  /** Highest accepted sequence number when the request last reached the leader (Aardvark fairness). */
  seqAtArrival: number;
  /** The peer that forwarded it, or null (a client of this replica, or a proposal). */
  readonly via: ReplicaId | null;
  /**
   * Tick from which the leader is taken to hold the request, for the expectations that
   * judge it (timers.ts): when it became pending here, for a request a peer forwarded or a
   * proposal carried; for one a client gave this backup, +Infinity (the leader may never
   * have had it) until this backup forwards it (forwardOverdue, the request timer, a new
   * view).
   */
  leaderSince: number;
  /** Tick this replica last forwarded the request to the leader (or to all), or -Infinity. */
  forwardedAt: number;
  /**
   * For a request a client gave this backup and not yet forwarded: the ticks it has waited
   * while the leader could have proposed it (forwardOverdue); -1 when not held for a lazy
   * forward.
   */
  heldTicks: number;
}

/** The key part of a client space name ("<hex key>:<space>"): quotas are per key. */
export function keyOfClient(client: string): string {
  const colon = client.indexOf(":");
  return colon < 0 ? client : client.slice(0, colon);
}

export function requestKey(client: string, seq: number): string {
  return `${client}:${seq}`;
}

/** lastExecutedSeq per client; a client absent from the table has executed nothing (0). */
export class ClientTable {
  private readonly last = new Map<string, number>();

  lastExecuted(client: string): number {
    return this.last.get(client) ?? 0;
  }

  /** Records that `req` executed; the caller has checked that it continues the client's chain. */
  recordExecuted(req: ClientRequest): void {
    this.last.set(req.client, req.seq + req.span - 1);
  }

  /** Whether `req` is the next request of its client (no gap, no repeat). */
  isNext(req: ClientRequest): boolean {
    return req.seq === this.lastExecuted(req.client) + 1;
  }

  /**
   * Records a decided batch's execution and returns the requests that ran: each client's
   * next request, in batch order; a barrier marker (§12) is never a client's request. The
   * one rule for live execution and for a restart's replay of decided records, so both
   * rebuild the same table.
   */
  executeBatch(batch: readonly ClientRequest[]): ClientRequest[] {
    const executed: ClientRequest[] = [];
    for (const r of batch) {
      if (isBarrier(r) || !this.isNext(r)) continue;
      this.recordExecuted(r);
      executed.push(r);
    }
    return executed;
  }

  get size(): number {
    return this.last.size;
  }

  /** Canonical export: sorted by client id so every correct replica produces the same bytes. */
  export(): ClientTableExport {
    const rows: ClientTableExport = [];
    for (const [client, seq] of this.last) rows.push([client, seq]);
    rows.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    return rows;
  }

  /** Replaces the table with an exported one (state transfer or restart). */
  import(rows: ClientTableExport): void {
    this.last.clear();
    for (const [client, seq] of rows) this.last.set(client, seq);
  }
}

/** Pending requests, bounded per client space, per client key, per forwarding peer and in total. */
export class PendingPool {
  private readonly byClient = new Map<string, Map<number, PendingRequest>>();
  private readonly byKey = new Map<string, number>();
  private readonly byPeer = new Map<ReplicaId, number>();
  private count = 0;

  get total(): number {
    return this.count;
  }

  countFor(client: string): number {
    return this.byClient.get(client)?.size ?? 0;
  }

  /** Pending requests of one client key, over all its spaces. */
  countForKey(key: string): number {
    return this.byKey.get(key) ?? 0;
  }

  /** Pending requests a peer forwarded. */
  countForPeer(peer: ReplicaId): number {
    return this.byPeer.get(peer) ?? 0;
  }

  get(client: string, seq: number): PendingRequest | undefined {
    return this.byClient.get(client)?.get(seq);
  }

  has(client: string, seq: number): boolean {
    return this.byClient.get(client)?.has(seq) ?? false;
  }

  add(req: ClientRequest, now: number, seqAtArrival: number, via: ReplicaId | null = null): PendingRequest {
    let forClient = this.byClient.get(req.client);
    if (forClient === undefined) {
      forClient = new Map();
      this.byClient.set(req.client, forClient);
    }
    const p: PendingRequest = {
      req,
      key: requestKey(req.client, req.seq),
      firstSeen: now,
      timerStart: -1,
      stage: 0,
      seqAtArrival,
      via,
      leaderSince: now,
      forwardedAt: Number.NEGATIVE_INFINITY,
      heldTicks: -1,
    };
    forClient.set(req.seq, p);
    this.count++;
    bump(this.byKey, keyOfClient(req.client), 1);
    if (via !== null) bump(this.byPeer, via, 1);
    return p;
  }

  remove(client: string, seq: number): void {
    const forClient = this.byClient.get(client);
    const p = forClient?.get(seq);
    if (forClient === undefined || p === undefined) return;
    this.drop(forClient, p);
  }

  /** Drops every request of `client` that starts at or below `lastExecuted`: executed or overlapping. */
  pruneExecuted(client: string, lastExecuted: number): void {
    const forClient = this.byClient.get(client);
    if (forClient === undefined) return;
    for (const p of [...forClient.values()]) if (p.req.seq <= lastExecuted) this.drop(forClient, p);
  }

  /**
   * Drops the requests of clients whose chain has a gap (no request at the next seq this
   * replica holds) that have waited `ticks` or more: nothing can bring them to the head,
   * so they would hold their place for ever (a key that sends seqs 2..65 and never 1).
   * A client that really sent the missing request retransmits the rest with it.
   */
  expireGapped(nextOf: (client: string) => number, now: number, ticks: number): number {
    // Runs every tick: no copies (deleting the entry being visited is safe in a Map).
    let dropped = 0;
    for (const [client, forClient] of this.byClient) {
      if (forClient.has(nextOf(client))) continue;
      for (const p of forClient.values()) {
        if (now - p.firstSeen < ticks) continue;
        this.drop(forClient, p);
        dropped++;
      }
    }
    return dropped;
  }

  /**
   * Holds a request a client gave this backup for a lazy forward (forwardOverdue): until it
   * is forwarded the leader is not judged for it (`leaderSince` is +Infinity).
   */
  holdForLeader(p: PendingRequest): void {
    p.leaderSince = Number.POSITIVE_INFINITY;
    p.heldTicks = 0;
  }

  private drop(forClient: Map<number, PendingRequest>, p: PendingRequest): void {
    forClient.delete(p.req.seq);
    this.count--;
    bump(this.byKey, keyOfClient(p.req.client), -1);
    if (p.via !== null) bump(this.byPeer, p.via, -1);
    if (forClient.size === 0) this.byClient.delete(p.req.client);
  }

  /** Every client with pending requests, in first-arrival order (deterministic). */
  clients(): IterableIterator<[string, Map<number, PendingRequest>]> {
    return this.byClient.entries();
  }

  clientCount(): number {
    return this.byClient.size;
  }

  /** Restarts every request timer, as after a view change (core/ordering/PROTOCOL.md §6, pending requests). */
  restartTimers(seqAtArrival: number): void {
    for (const forClient of this.byClient.values()) {
      for (const p of forClient.values()) {
        p.timerStart = -1;
        p.stage = 0;
        p.seqAtArrival = seqAtArrival;
      }
    }
  }

  /** Largest per-client count, for the simulator's bound checks. */
  maxPerClient(): number {
    let max = 0;
    for (const forClient of this.byClient.values()) max = Math.max(max, forClient.size);
    return max;
  }
}

/** Adds `delta` to a count kept in a map, deleting it at zero so the map holds only what is pending. */
function bump<K>(counts: Map<K, number>, key: K, delta: number): void {
  const next = (counts.get(key) ?? 0) + delta;
  if (next <= 0) counts.delete(key);
  else counts.set(key, next);
}

// ---------------------------------------------------------------------------------------
// Admission and forwarding (core/ordering/PROTOCOL.md §5).
// ---------------------------------------------------------------------------------------

const REFUSALS: ReadonlySet<string> = new Set<Refusal>(["invalid", "quarantined", "window", "overloaded"]);

export function isRefusal(verdict: string): verdict is Refusal {
  return REFUSALS.has(verdict);
}

/** What admission did with a request. */
export type Admission = "executed" | "added" | "duplicate" | Refusal | "bad-signature";

/**
 * Admission: cheap checks first, the signature last (Aardvark verifies MAC before
 * signature for the same reason). Returns what happened to the request.
 */
export function admit(state: CoreState, req: ClientRequest, authenticated: boolean, via: ReplicaId | null = null): Admission {
  const cfg = state.cfg;
  if (req.span < 1 || req.span > cfg.requestSpanMax || req.seq < 1 || isBarrier(req)) return "invalid";
  if (requestBytes(req) > cfg.requestBytesMax) return "invalid";
  const last = state.clientTable.lastExecuted(req.client);
  if (req.seq + req.span - 1 <= last) return "executed";
  if (req.seq <= last) return "invalid";
  if (state.pending.has(req.client, req.seq)) return "duplicate";
  const until = state.quarantinedUntil.get(req.client);
  if (until !== undefined && until > state.now) return "quarantined";
  if (req.seq - last > cfg.clientWindow * cfg.requestSpanMax) return "window";
  if (state.pending.countFor(req.client) >= CLIENT_PENDING_WINDOWS * cfg.clientWindow) return "window";
  // A key costs nothing to make, and may name many spaces: it holds a bounded share.
  if (state.pending.countForKey(keyOfClient(req.client)) >= cfg.keyPendingMax) return "window";
  // One peer's forwards fill at most its share of the pool, so a lying replica cannot
  // crowd out the requests the others and this replica's own clients bring.
  if (via !== null && state.pending.countForPeer(via) >= Math.ceil(cfg.pendingRequestsMax / cfg.n)) return "overloaded";
  // Under overload the least urgent of this replica's own clients are refused first
  // (priority.ts). A peer's forward may use the whole pool: a backup that took a request
  // and forwards it when its timer runs out must not find the leader refusing it.
  const shedsByUrgency = state.policy.flat !== true && via === null;
  const poolLimit = shedsByUrgency ? poolLimitFor(cfg.pendingRequestsMax, urgencyOf(state.policy, req.client)) : cfg.pendingRequestsMax;
  if (state.pending.total >= poolLimit) return "overloaded";
  if (!state.crypto.verifyRequest(req, null)) {
    if (authenticated) quarantineClient(state, req.client);
    return "bad-signature";
  }
  state.pending.add(req, state.now, state.highestAcceptedSeq, via);
  if (state.policy.flat !== true && urgencyOf(state.policy, req.client) >= URGENT) state.urgentAdmittedAt = state.now;
  return "added";
}

function quarantineClient(state: CoreState, client: string): void {
  if (state.quarantinedUntil.size >= QUARANTINE_ENTRIES_MAX) {
    const oldest = state.quarantinedUntil.keys().next().value;
    if (oldest !== undefined) state.quarantinedUntil.delete(oldest);
  }
  state.quarantinedUntil.delete(client);
  state.quarantinedUntil.set(client, state.now + state.cfg.clientQuarantineTicks);
}

/**
 * The pending request with exactly the bytes of `r`, so `r` need not be verified again
 * (a pending request was verified when it became pending, or came in a body a quorum's
 * signed digest vouched for); undefined if there is none. Every field is equal, so the
 * caller may hold the pending copy in `r`'s place (the runtime knows things of it, such as
 * its body's digest, that it would compute again for another copy of the same bytes).
 */
export function verifiedTwin(state: CoreState, r: ClientRequest): ClientRequest | undefined {
  const p = state.pending.get(r.client, r.seq);
  if (p === undefined || p.req.span !== r.span || !bytesEqual(p.req.sig, r.sig) || !state.sameBytes(p.req.body, r.body)) return undefined;
  return p.req;
}

/** Batch-borne requests become pending too, so their timers run (BFT-SMaRt checkProposedValue). */
export function adoptBatchRequests(state: CoreState, batch: readonly ClientRequest[]): void {
  for (const r of batch) {
    if (isBarrier(r)) continue;
    const last = state.clientTable.lastExecuted(r.client);
    if (r.seq <= last || state.pending.has(r.client, r.seq)) continue;
    if (state.pending.countFor(r.client) >= CLIENT_PENDING_WINDOWS * state.cfg.clientWindow) continue;
    if (state.pending.total >= state.cfg.pendingRequestsMax) continue;
    state.pending.add(r, state.now, state.highestAcceptedSeq);
  }
}

/** Pending requests go to the new leader again, with fresh timers (core/ordering/PROTOCOL.md §6). */
export function forwardAllPending(state: CoreState): void {
  for (const [, forClient] of state.pending.clients()) {
    for (const p of forClient.values()) {
      state.forwardToLeader.push(p.req);
      p.leaderSince = state.now;
      p.forwardedAt = state.now;
      p.heldTicks = -1;
    }
  }
}

/**
 * Lazy forwarding (core/ordering/PROTOCOL.md §5), on every tick of a backup in the normal
 * case. Clients send every request to every replica, so the leader normally holds its own
 * copy; a backup forwards a request a client gave it only once the leader has failed to
 * propose it for `forwardDelayTicks` ticks on which it could have: the request was the
 * first of its client's chain in no batch this backup has seen (a leader proposes a
 * client's requests in order, so one behind an unproposed request is not yet due) and the
 * pipeline had room (`room`: a leader with its pipeline full proposes nothing, whatever it
 * holds). That request goes with every request behind it that this backup holds, since a
 * leader that lacks one request of a client probably lacks the rest. From its forward on,
 * the leader is judged for it (`leaderSince`; the fairness reference moves to now).
 */
export function forwardOverdue(state: CoreState, room: boolean): void {
  const cfg = state.cfg;
  for (const [client, forClient] of state.pending.clients()) {
    let seq = state.clientTable.lastExecuted(client) + 1;
    let due = false;
    for (let steps = 0; steps < CLIENT_PENDING_WINDOWS * cfg.clientWindow; steps++) {
      const p = forClient.get(seq);
      // A request named by the NEW_VIEW stops its client's chain, as in buildBatch.
      if (p === undefined || state.inNewViewBatch.has(p.key)) break;
      seq += p.req.span;
      if (state.inFreeProposal.has(p.key)) continue;
      if (!due) {
        // The first request of the chain in no batch: only a held one counts the leader's ticks.
        if (p.heldTicks < 0) break;
        if (room) p.heldTicks++;
        if (p.heldTicks < cfg.forwardDelayTicks) break;
        due = true;
      } else if (p.heldTicks < 0) {
        continue;
      }
      p.heldTicks = -1;
      p.leaderSince = state.now;
      p.seqAtArrival = state.highestAcceptedSeq;
      p.forwardedAt = state.now;
      state.forwardToLeader.push(p.req);
    }
  }
}

/** Sends the requests queued for all replicas and, from a backup in the normal case, those for the leader. */
export function flushForwards(state: CoreState): void {
  if (state.forwardToAll.length > 0) {
    for (const requests of chunks(state, state.forwardToAll)) state.send("all", { t: "FORWARD", requests });
    state.forwardToAll = [];
  }
  if (state.forwardToLeader.length > 0) {
    const leader = state.leader();
    if (leader !== state.cfg.id && state.phase === "normal") {
      for (const requests of chunks(state, state.forwardToLeader)) state.send(leader, { t: "FORWARD", requests });
    }
    state.forwardToLeader = [];
  }
}

/**
 * Splits requests into FORWARD-sized pieces, bounded like a batch by count and bytes
 * (each piece holds at least one request), so no message outgrows what a batch may be.
 */
function chunks(state: CoreState, requests: readonly ClientRequest[]): ClientRequest[][] {
  const out: ClientRequest[][] = [];
  let piece: ClientRequest[] = [];
  let bytes = 0;
  for (const r of requests) {
    const size = requestBytes(r);
    if (piece.length > 0 && (piece.length >= state.cfg.batchRequestsMax || bytes + size > state.cfg.batchBytesMax)) {
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
