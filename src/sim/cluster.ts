/**
 * A hand-driven cluster of real ordering cores for scripted scenarios and unit tests:
 * messages wait in a queue until the script delivers (or drops, or tampers with) them,
 * and time moves only when the script ticks. Every Ready each replica returned is kept for
 * inspection.
 */
import {
  type ClientRequest,
  compactRecords,
  type CoreConfig,
  type CoreInput,
  type CoreParameters,
  type Effect,
  type FaultMode,
  makeConfig,
  OrderingCore,
  type PeerMessage,
  type PersistedRecord,
  type Ready,
  type ReplicaId,
} from "../core/ordering/index.ts";
import { dedupe, nextChain } from "./checkers.ts";
import { answerFromRecords } from "./decided-log.ts";
import { requestBody, type SimCryptoKind, SimKeyring } from "./crypto.ts";
import type { CoreFactory } from "./simulator.ts";

export interface QueuedMessage {
  from: ReplicaId;
  to: ReplicaId;
  msg: PeerMessage;
}

export interface Decision {
  seq: number;
  view: number;
  batch: ClientRequest[];
  execute: ClientRequest[];
  /** The batch's external barrier (PROTOCOL.md §12; 0 without one). */
  after: number;
}

export interface ClusterOptions {
  n?: number;
  f?: number;
  mode?: FaultMode;
  params?: Partial<CoreParameters>;
  crypto?: SimCryptoKind;
  factory?: CoreFactory;
  clients?: number;
}

/** Small parameters so scripts reach checkpoints and timeouts in a few steps. */
export const CLUSTER_PARAMETERS: Partial<CoreParameters> = {
  batchRequestsMax: 4,
  pipelineDepth: 4,
  checkpointInterval: 4,
  logWindow: 8,
  clientWindow: 4,
  requestTimeoutTicks: 20,
  progressTimeoutTicks: 15,
  viewChangeTimeoutTicks: 20,
  retransmitTicks: 10,
  throughputWindowTicks: 20,
  throughputGraceTicks: 40,
  transferRetryTicks: 20,
};

export class ManualCluster {
  readonly n: number;
  readonly f: number;
  readonly keyring: SimKeyring;
  readonly cfgs: CoreConfig[] = [];
  readonly cores: Array<OrderingCore | null> = [];
  readonly records: PersistedRecord[][] = [];
  /** Decisions replicas sent from their records, below their stable checkpoints (serveDecided). */
  servedFromLog = 0;
  /** Every Ready each replica returned, step by step. */
  readonly readies: Ready[][] = [];
  readonly decided: Decision[][] = [];
  readonly chains: Uint8Array[] = [];
  readonly clientLast: Array<Map<string, number>> = [];
  queue: QueuedMessage[] = [];
  private readonly factory: CoreFactory;

  constructor(opts: ClusterOptions = {}) {
    this.f = opts.f ?? 1;
    this.n = opts.n ?? 3 * this.f + 1;
    this.keyring = new SimKeyring(opts.crypto ?? "ed25519", this.n, opts.clients ?? 4);
    this.factory = opts.factory ?? ((cfg, crypto, restored) => new OrderingCore(cfg, crypto, restored));
    for (let id = 0; id < this.n; id++) {
      const cfg = makeConfig(
        { id, n: this.n, f: this.f, mode: opts.mode ?? "bft", clusterId: "cluster-test" },
        { ...CLUSTER_PARAMETERS, ...opts.params },
      );
      this.cfgs.push(cfg);
      this.cores.push(this.factory(cfg, this.keyring.cryptoFor(id)));
      this.records.push([]);
      this.readies.push([]);
      this.decided.push([]);
      this.chains.push(new Uint8Array(32));
      this.clientLast.push(new Map());
    }
  }

  core(id: ReplicaId): OrderingCore {
    const c = this.cores[id];
    if (c === null || c === undefined) throw new Error(`replica ${id} is down`);
    return c;
  }

  /** A request of client `client` (index into the keyring), validly signed unless told otherwise. */
  request(client: number, seq: number, span = 1, payload = "x"): ClientRequest {
    const key = this.keyring.clients[client];
    if (key === undefined) throw new Error(`no client ${client}`);
    const body = requestBody(key, seq, span, new TextEncoder().encode(payload));
    return { client: key.publicHex, seq, span, body, sig: this.keyring.signRequest(key, body) };
  }

  /** Feeds one input to a replica, persists its records and performs its effects; returns its Ready. */
  step(id: ReplicaId, input: CoreInput): Ready {
    const core = this.cores[id];
    if (core === null || core === undefined) return { persist: [], effects: [] };
    const ready = core.step(input);
    (this.readies[id] as Ready[]).push(ready);
    (this.records[id] as PersistedRecord[]).push(...ready.persist);
    const follow: CoreInput[] = [];
    for (const o of ready.effects) {
      if (o.kind === "send") this.enqueue(id, o.to, o.msg);
      else if (o.kind === "decide") this.applyDecide(id, o);
      else if (o.kind === "takeCheckpoint") follow.push({ kind: "checkpointReady", seq: o.seq, appDigest: this.chains[id] as Uint8Array });
      else if (o.kind === "serveDecided") {
        const answer = answerFromRecords(this.records[id] as PersistedRecord[], o);
        this.servedFromLog += answer.items.length;
        this.enqueue(id, o.to, answer);
      }
    }
    for (const input2 of follow) this.step(id, input2);
    return ready;
  }

  private applyDecide(id: ReplicaId, o: Extract<Effect, { kind: "decide" }>): void {
    (this.decided[id] as Decision[]).push({ seq: o.seq, view: o.view, batch: o.batch, execute: o.execute, after: o.after });
    const exec = dedupe(o.batch, this.clientLast[id] as Map<string, number>);
    this.chains[id] = nextChain(this.chains[id] as Uint8Array, o.seq, exec);
  }

  private enqueue(from: ReplicaId, to: ReplicaId | "all", msg: PeerMessage): void {
    if (to !== "all") {
      this.queue.push({ from, to, msg });
      return;
    }
    for (let r = 0; r < this.n; r++) if (r !== from) this.queue.push({ from, to: r, msg });
  }

  submit(to: ReplicaId, req: ClientRequest, authenticated = true): Ready {
    return this.step(to, { kind: "request", req, authenticated });
  }

  tick(ticks = 1, only?: readonly ReplicaId[]): void {
    for (let t = 0; t < ticks; t++) {
      for (let id = 0; id < this.n; id++) if (only === undefined || only.includes(id)) this.step(id, { kind: "tick" });
    }
  }

  /**
   * Delivers queued messages (and those they cause) until the queue is empty or `maxRounds`
   * passes are done. `keep(m)` false drops a message instead.
   */
  deliverAll(keep: (m: QueuedMessage) => boolean = () => true, maxRounds = 50): void {
    for (let round = 0; round < maxRounds && this.queue.length > 0; round++) {
      const batch = this.queue;
      this.queue = [];
      for (const m of batch) if (keep(m)) this.step(m.to, { kind: "message", from: m.from, msg: m.msg });
    }
  }

  /** Runs ticks with delivery after each until `done()` or `maxTicks`. */
  runUntil(done: () => boolean, maxTicks = 500, keep?: (m: QueuedMessage) => boolean): number {
    for (let t = 0; t < maxTicks; t++) {
      if (done()) return t;
      this.tick();
      this.deliverAll(keep);
    }
    if (!done()) throw new Error(`condition not reached in ${maxTicks} ticks`);
    return maxTicks;
  }

  crash(id: ReplicaId): void {
    this.cores[id] = null;
    this.queue = this.queue.filter((m) => m.to !== id);
  }

  restart(id: ReplicaId, compact = true): void {
    const recs = compact ? compactRecords(this.records[id] as PersistedRecord[]) : [...(this.records[id] as PersistedRecord[])];
    this.records[id] = recs;
    this.cores[id] = this.factory(this.cfgs[id] as CoreConfig, this.keyring.cryptoFor(id), recs);
  }

  lastExecuted(id: ReplicaId): number {
    return this.core(id).status().lastExecuted;
  }

  /** Every effect of replica `id` so far, flattened. */
  allEffects(id: ReplicaId): Effect[] {
    return (this.readies[id] as Ready[]).flatMap((ready) => ready.effects);
  }
}
