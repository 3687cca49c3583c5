/**
 * The safety checkers (core/ordering/PROTOCOL.md §8) over the correct replicas of a run. Each check runs
 * as the events happen, so the first violation names the step that caused it.
 *
 * - agreement: one batch (by digest of its bytes) per decided seq across correct replicas;
 * - total order: each replica decides seq lastDecided+1 (or jumps by an installed snapshot);
 * - validity: every executed request carries a valid client signature;
 * - integrity: a client's requests execute in order, once, with no gap, and `execute` is
 *   exactly the per-client dedupe of the batch;
 * - state: equal application state after every seq and equal checkpoint digests;
 * - bounds: every bounded structure within its bound after every tick;
 * - monotonicity: view and installed view never decrease, h <= lastExecuted.
 */
import { toHex } from "../../wire/bytes.ts";
import {
  batchBytes,
  CLIENT_PENDING_WINDOWS,
  type ClientRequest,
  isBarrier,
  type CoreConfig,
  type CoreSizes,
  type CoreStatus,
  type ReplicaId,
} from "../core/ordering/index.ts";
import { sha256, type SimKeyring } from "./crypto.ts";

/** Violations recorded per run before the rest are only counted. */
const VIOLATIONS_KEPT_MAX = 20;

/** The application state the checker follows for one replica. */
export interface AppState {
  lastDecided: number;
  clientLast: Map<string, number>;
  /** Hash chain over (seq, executed requests): the simulated application's state digest. */
  chain: Uint8Array;
}

export function genesisApp(): AppState {
  return { lastDecided: 0, clientLast: new Map(), chain: new Uint8Array(32) };
}

/** Per-client dedupe exactly as the core must do it. */
export function dedupe(batch: readonly ClientRequest[], clientLast: Map<string, number>): ClientRequest[] {
  const out: ClientRequest[] = [];
  for (const r of batch) {
    // A batch's external barrier (PROTOCOL.md §12) is no client's request.
    if (isBarrier(r)) continue;
    if (r.seq === (clientLast.get(r.client) ?? 0) + 1) {
      clientLast.set(r.client, r.seq + r.span - 1);
      out.push(r);
    }
  }
  return out;
}

export function nextChain(chain: Uint8Array, seq: number, execute: readonly ClientRequest[]): Uint8Array {
  const body = batchBytes(execute);
  const buf = new Uint8Array(32 + 8 + body.length);
  buf.set(chain, 0);
  new DataView(buf.buffer).setFloat64(32, seq);
  buf.set(body, 40);
  return sha256(buf);
}

export class Checker {
  readonly violations: string[] = [];
  violationCount = 0;
  private readonly batchAt = new Map<number, { digest: string; by: ReplicaId }>();
  private readonly chainAt = new Map<number, { chain: string; by: ReplicaId }>();
  private readonly checkpointAt = new Map<number, { digest: string; by: ReplicaId }>();
  private readonly lastStatus = new Map<string, CoreStatus>();

  constructor(
    private readonly keyring: SimKeyring,
    private readonly now: () => number,
  ) {}

  violation(what: string): void {
    this.violationCount++;
    if (this.violations.length < VIOLATIONS_KEPT_MAX) this.violations.push(`tick ${this.now()}: ${what}`);
  }

  /**
   * A correct replica decided `seq`. Checks everything about it, then advances `app`.
   * Returns the executed requests the checker derived (equal to `execute` unless violated).
   */
  onDecide(who: ReplicaId, app: AppState, seq: number, batch: readonly ClientRequest[], execute: readonly ClientRequest[]): void {
    if (seq !== app.lastDecided + 1) this.violation(`replica ${who} decided seq ${seq} after ${app.lastDecided} (gap or repeat)`);
    const digest = toHex(sha256(batchBytes(batch)));
    const prior = this.batchAt.get(seq);
    if (prior === undefined) this.batchAt.set(seq, { digest, by: who });
    else if (prior.digest !== digest)
      this.violation(
        `AGREEMENT: seq ${seq}: replica ${who} decided ${digest.slice(0, 12)}, replica ${prior.by} decided ${prior.digest.slice(0, 12)}`,
      );
    const expected = dedupe(batch, app.clientLast);
    if (expected.length !== execute.length || expected.some((r, i) => r !== execute[i])) {
      this.violation(`INTEGRITY: replica ${who} seq ${seq}: execute list differs from per-client dedupe of the batch`);
    }
    for (const r of execute) {
      if (!this.keyring.verifyRequest(r))
        this.violation(`VALIDITY: replica ${who} executed an unsigned request ${r.client.slice(0, 8)}:${r.seq}`);
    }
    app.chain = nextChain(app.chain, seq, expected);
    app.lastDecided = seq;
    this.compareChain(who, seq, app.chain);
  }

  /** A decision rebuilt from a restarted replica's records: it must agree with everyone's. */
  onReplayedDecide(who: ReplicaId, seq: number, batch: readonly ClientRequest[], chain: Uint8Array): void {
    const digest = toHex(sha256(batchBytes(batch)));
    const prior = this.batchAt.get(seq);
    if (prior === undefined) this.batchAt.set(seq, { digest, by: who });
    else if (prior.digest !== digest)
      this.violation(
        `AGREEMENT: seq ${seq}: restarted replica ${who} holds ${digest.slice(0, 12)}, replica ${prior.by} decided ${prior.digest.slice(0, 12)}`,
      );
    this.compareChain(who, seq, chain);
  }

  private compareChain(who: ReplicaId, seq: number, chain: Uint8Array): void {
    const c = toHex(chain);
    const prior = this.chainAt.get(seq);
    if (prior === undefined) this.chainAt.set(seq, { chain: c, by: who });
    else if (prior.chain !== c) this.violation(`STATE: replica ${who} state after seq ${seq} differs from replica ${prior.by}`);
  }

  /** A correct replica installed a snapshot: its state after `seq` must be everyone's. */
  onSnapshot(who: ReplicaId, lastDecidedBefore: number, seq: number, chain: Uint8Array): void {
    if (seq <= lastDecidedBefore) this.violation(`replica ${who} installed snapshot ${seq} at or below its state ${lastDecidedBefore}`);
    this.compareChain(who, seq, chain);
  }

  onCheckpoint(who: ReplicaId, seq: number, stateDigest: Uint8Array): void {
    const d = toHex(stateDigest);
    const prior = this.checkpointAt.get(seq);
    if (prior === undefined) this.checkpointAt.set(seq, { digest: d, by: who });
    else if (prior.digest !== d) this.violation(`CHECKPOINT: replica ${who} digest at ${seq} differs from replica ${prior.by}`);
  }

  /** `life` names one lifetime of a replica: views may restart from disk after a crash. */
  onStatus(life: string, s: CoreStatus): void {
    const prev = this.lastStatus.get(life);
    if (prev !== undefined) {
      if (s.view < prev.view) this.violation(`replica ${s.id} view went back from ${prev.view} to ${s.view}`);
      if (s.installedView < prev.installedView) this.violation(`replica ${s.id} installed view went back`);
      if (s.lastExecuted < prev.lastExecuted) this.violation(`replica ${s.id} lastExecuted went back`);
    }
    // h may pass lastExecuted only while the state at h is being fetched (a NEW_VIEW whose
    // stable checkpoint this replica had not reached).
    if (s.stableSeq > s.lastExecuted && (s.transferTo ?? -1) < s.stableSeq)
      this.violation(`replica ${s.id} h ${s.stableSeq} above lastExecuted ${s.lastExecuted} with no transfer past it`);
    this.lastStatus.set(life, s);
  }

  onSizes(who: ReplicaId, z: CoreSizes, cfg: CoreConfig): void {
    const L = cfg.logWindow;
    const checkpointSeqs = Math.floor(L / cfg.checkpointInterval) + 1;
    const bounds: Array<[keyof CoreSizes, number]> = [
      ["log", L],
      ["prepared", L],
      ["decided", L],
      ["decidedPending", L],
      ["checkpointSeqs", checkpointSeqs],
      ["checkpointVotes", checkpointSeqs * cfg.n],
      ["farCheckpoints", cfg.n],
      ["viewChanges", cfg.n],
      ["buffered", 3 * L * cfg.n],
      ["pending", cfg.pendingRequestsMax],
      ["pendingMaxPerClient", CLIENT_PENDING_WINDOWS * cfg.clientWindow],
      ["forwardQueue", 2 * cfg.pendingRequestsMax + cfg.batchRequestsMax],
      ["quarantined", 10_000],
      ["heldPadding", L],
    ];
    for (const [k, bound] of bounds) {
      if (z[k] > bound) this.violation(`BOUNDS: replica ${who} ${k} = ${z[k]} exceeds ${bound}`);
    }
  }
}
