/**
 * The deterministic simulator: n replicas of the real OrderingCore in one process, a
 * simulated network and clock, crashes with restart from persisted records, Byzantine
 * replicas and faulty clients, all driven by one seed. `runSeed` returns the violations
 * the checkers found and the liveness figures of the run; the same seed and options give
 * the same run, event for event.
 *
 * Why one file of more than 600 lines: the event loop, the simulated runtime of each
 * replica (persist before send, crashes mid-Ready, restart) and the clients share one
 * clock and one seeded schedule; the parts that stand alone (network, Byzantine replicas,
 * checkers, crypto) are in their own files.
 */
import {
  type Checkpoint,
  type ClientRequest,
  type ClientTableExport,
  compactRecords,
  type CoreConfig,
  type CoreCrypto,
  type CoreInput,
  type Effect,
  leaderOf,
  makeConfig,
  OrderingCore,
  type PeerMessage,
  type PersistedRecord,
  type Ready,
  type ReplicaId,
  requestKey,
  validatePeerMessage,
  weakQuorum,
} from "../core/ordering/index.ts";
import { FLAT_POLICY, type ProposalPolicy } from "../core/ordering/priority.ts";
import { ByzantineReplica } from "./byzantine.ts";
import { answerFromRecords } from "./decided-log.ts";
import { type AppState, Checker, dedupe, genesisApp, nextChain } from "./checkers.ts";
import { requestBody, type SimCryptoKind, type SimKey, SimKeyring } from "./crypto.ts";
import { Network } from "./network.ts";
import { Prng } from "./prng.ts";
import { type FaultMix, faultyReplicas, makeScenario, type Scenario, type ScenarioOptions } from "./scenario.ts";

/** Builds a replica's core; tests substitute deliberately broken subclasses here. */
export type CoreFactory = (
  cfg: CoreConfig,
  crypto: CoreCrypto,
  restored?: readonly PersistedRecord[],
  policy?: ProposalPolicy,
) => OrderingCore;

export const defaultCoreFactory: CoreFactory = (cfg, crypto, restored, policy) => new OrderingCore(cfg, crypto, restored, policy);

export interface RunOptions {
  mix: FaultMix;
  crypto?: SimCryptoKind;
  coreFactory?: CoreFactory;
  scenario?: Omit<ScenarioOptions, "mix">;
  /** Collects a human-readable event log (for replaying a failing seed). */
  trace?: boolean;
}

export interface SeedResult {
  seed: number;
  summary: string;
  violations: string[];
  violationCount: number;
  ticks: number;
  healAt: number;
  /** Ticks from heal until every correct request was decided at every correct replica. */
  recoveryTicks: number | null;
  /** Ticks from submission until f+1 correct replicas executed, per correct request. */
  latencies: number[];
  decided: number;
  viewChanges: number;
  /** Decisions a replica sent from its kept records, at or below its stable checkpoint, to one catching up (serveDecided). */
  decidedServedFromLog: number;
  /** Snapshots installed at an older checkpoint than the core's target, which stayed (PROTOCOL.md §7, "An older state"). */
  olderStatesInstalled: number;
  messages: number;
  verifications: number;
  trace: string[];
  /** Throughput runs (closed-loop clients) only: what src/sim/throughput.ts reports. */
  load: LoadFigures | null;
}

export interface LoadFigures {
  /** Correct requests decided (executed by f+1 correct replicas) by `submitUntil`. */
  decided: number;
  /** The highest view installed by a correct replica at the end. */
  finalView: number;
  /**
   * The first tick, from the one the attack began at, at which every correct replica was in
   * the normal case of an installed view led by a correct replica (null if never).
   */
  correctLeaderAt: number | null;
  /** The tick the attack began (the earliest `from` of the Byzantine replicas; 0 without any). */
  attackFrom: number;
}

/** A correct replica at or past this view was moved by a forged message (no run reaches it honestly). */
const VIEW_PUSHED_FLOOR = 1_000;
/** A client retries an unanswered request to every replica after this many ticks. */
const CLIENT_RETRY_TICKS = 60;
/** Issue rate factor: a client's requests span about 1/SPREAD of the submission period more than needed. */
const CLIENT_ISSUE_SPREAD = 1.3;
/** Ticks the run continues after everything is done, to let stragglers misbehave visibly. */
const TAIL_TICKS = 20;
/** Records kept per replica before the simulated runtime compacts them. */
const RECORDS_COMPACT_AT = 2000;
/** Snapshots a simulated replica keeps for serving state transfers. */
const SNAPSHOTS_KEPT = 4;
/** Faulty clients' identities come after the correct ones in the keyring. */
const FAULTY_CLIENT_KEYS = 5;

interface Snapshot {
  appDigest: Uint8Array;
  clients: ClientTableExport;
}

interface Fetch {
  seq: number;
  digest: Uint8Array;
  from: ReplicaId[];
  proof: Checkpoint[];
  at: number;
}

/** Ticks each replica's external order lags the clock by, in crash mode (0, 5 or 10): barriers make the others wait. */
const EXTERNAL_LAG_TICKS = 5;

/**
 * How far replica `id`'s external order (PROTOCOL.md §12) has executed at tick `now`: the
 * clock less a lag per replica, so a leader's barrier is often ahead of a backup's order.
 */
function externalAt(id: ReplicaId, now: number): number {
  return Math.max(0, now - EXTERNAL_LAG_TICKS * (id % 3));
}

class SimNode {
  core: OrderingCore | null = null;
  records: PersistedRecord[] = [];
  alive = false;
  app: AppState = genesisApp();
  readonly snapshots = new Map<number, Snapshot>();
  fetch: Fetch | null = null;
  crashMidStep = false;
  life = 0;
  readonly inbox: CoreInput[] = [];

  constructor(
    readonly id: ReplicaId,
    readonly twin: number,
    readonly correct: boolean,
    readonly byz: ByzantineReplica | null,
  ) {}

  get name(): string {
    return this.twin === 0 ? `${this.id}` : `${this.id}'`;
  }
}

interface CorrectRequest {
  req: ClientRequest;
  submittedAt: number;
  lastSentAt: number;
  decidedAt: number | null;
  executedBy: Set<ReplicaId>;
}

class Simulation {
  readonly rng: Prng;
  readonly netRng: Prng;
  readonly clientRng: Prng;
  readonly byzRng: Prng;
  /** Whether a fetch under way goes on past a newer target: a stream of its own, so the rest of a seed's schedule is what it was before this choice existed. */
  private readonly fetchRng: Prng;
  readonly keyring: SimKeyring;
  readonly net: Network;
  readonly checker: Checker;
  readonly nodes: SimNode[] = [];
  readonly byId = new Map<ReplicaId, SimNode[]>();
  readonly cfgs: CoreConfig[] = [];
  readonly faulty: Set<ReplicaId>;
  readonly requests = new Map<string, CorrectRequest>();
  readonly executedPool: ClientRequest[] = [];
  private readonly clientQueue = new Map<number, Array<{ to: ReplicaId; req: ClientRequest; authenticated: boolean }>>();
  private readonly clientNext: number[] = [];
  private readonly clientIssued: number[] = [];
  private readonly faultyNext: number[] = [];
  private readonly openByClient: CorrectRequest[][] = [];
  readonly trace: string[] = [];
  now = 0;
  viewChanges = 0;
  decidedServedFromLog = 0;
  olderStatesInstalled = 0;
  twinSideA = new Set<ReplicaId>();
  forgetAt = -1;
  doneAt: number | null = null;
  /** How urgent each client is to the cores (scenario.urgency), or all equal. */
  private policy: ProposalPolicy = FLAT_POLICY;
  correctLeaderAt: number | null = null;

  constructor(
    readonly scenario: Scenario,
    readonly opts: RunOptions,
  ) {
    const s = scenario;
    this.rng = new Prng(s.seed, 2);
    this.netRng = new Prng(s.seed, 3);
    this.clientRng = new Prng(s.seed, 4);
    this.byzRng = new Prng(s.seed, 5);
    this.fetchRng = new Prng(s.seed, 6);
    this.keyring = new SimKeyring(opts.crypto ?? "ed25519", s.n, s.correctClients + FAULTY_CLIENT_KEYS);
    this.net = new Network(s, this.netRng);
    this.checker = new Checker(this.keyring, () => this.now);
    this.faulty = faultyReplicas(s);
    // Channel priorities, when the scenario drew them: each client key its own urgency.
    if (s.urgency !== null) {
      const byClient = new Map(this.keyring.clients.map((key, i) => [key.publicHex, s.urgency?.[i % s.urgency.length] ?? 0]));
      this.policy = { urgencyOf: (client) => byClient.get(client) ?? 0 };
    }
    for (let id = 0; id < s.n; id++) {
      this.cfgs.push(makeConfig({ id, n: s.n, f: s.f, mode: s.mode, clusterId: `sim-${s.seed}` }, s.params));
    }
    for (let id = 0; id < s.n; id++) {
      const spec = s.byzantine.find((b) => b.id === id);
      const copies = spec?.behaviours.includes("twins") ? 2 : 1;
      for (let twin = 0; twin < copies; twin++) {
        const byz =
          spec === undefined
            ? null
            : new ByzantineReplica(this.byzContext(id), spec.behaviours, this.byzRng.fork(id * 2 + twin), spec.from ?? 0);
        const node = new SimNode(id, twin, spec === undefined, byz);
        this.nodes.push(node);
        const list = this.byId.get(id) ?? [];
        list.push(node);
        this.byId.set(id, list);
        this.start(node, []);
      }
      if (spec?.behaviours.includes("forget")) this.forgetAt = this.rng.int(20, Math.max(21, s.healAt));
    }
    for (let r = 0; r < s.n; r++) if (this.rng.chance(0.5)) this.twinSideA.add(r);
    for (let c = 0; c < s.correctClients; c++) {
      this.clientNext.push(1);
      this.clientIssued.push(0);
    }
    for (let c = 0; c < s.clientFaults.length; c++) this.faultyNext.push(1);
  }

  log(line: string): void {
    if (this.opts.trace) this.trace.push(`${this.now}: ${line}`);
  }

  private byzContext(id: ReplicaId) {
    return {
      id,
      n: this.scenario.n,
      clusterId: `sim-${this.scenario.seed}`,
      signAsSelf: (bytes: Uint8Array) => this.keyring.signAsReplica(id, bytes),
      now: () => this.now,
      send: (to: ReplicaId, msg: unknown, extraDelay = 0) => this.net.send(this.now, { from: id, to, msg }, extraDelay),
      executed: () => this.executedPool,
      params: this.cfgs[id] as CoreConfig,
    };
  }

  // ---------------------------------------------------------------------------------------
  // Replica lifecycle.
  // ---------------------------------------------------------------------------------------

  private start(node: SimNode, records: PersistedRecord[]): void {
    const factory = this.opts.coreFactory ?? ((cfg, crypto, restored) => new OrderingCore(cfg, crypto, restored));
    const cfg = this.cfgs[node.id] as CoreConfig;
    node.records = records;
    node.life++;
    try {
      node.core = factory(cfg, this.keyring.cryptoFor(node.id), records.length > 0 ? records : undefined, this.policy);
    } catch (e) {
      if (node.correct) this.checker.violation(`replica ${node.name} failed to restart: ${(e as Error).message}`);
      node.core = null;
      node.alive = false;
      return;
    }
    node.alive = true;
    node.crashMidStep = false;
    node.fetch = null;
    node.app = this.replayApp(node, records);
  }

  /** Rebuilds the application from the base snapshot record and the decided records after it. */
  private replayApp(node: SimNode, records: readonly PersistedRecord[]): AppState {
    const app = genesisApp();
    for (const r of records) {
      if (r.t === "snapshot" && r.seq > app.lastDecided) {
        app.lastDecided = r.seq;
        app.chain = r.appDigest;
        app.clientLast = new Map(r.clients);
      } else if (r.t === "decided" && r.seq === app.lastDecided + 1) {
        const exec = dedupe(r.batch, app.clientLast);
        app.chain = nextChain(app.chain, r.seq, exec);
        app.lastDecided = r.seq;
        if (node.correct) this.checker.onReplayedDecide(node.id, r.seq, r.batch, app.chain);
      }
    }
    return app;
  }

  private crash(node: SimNode): void {
    this.log(`crash ${node.name}`);
    node.alive = false;
    node.core = null;
    node.inbox.length = 0;
  }

  private restart(node: SimNode, forget = false): void {
    const records = forget ? [] : compactRecords(node.records);
    this.log(`restart ${node.name}${forget ? " with no state" : ""} (${records.length} records)`);
    this.start(node, records);
  }

  private step(node: SimNode, input: CoreInput): void {
    if (!node.alive || node.core === null) return;
    let ready: Ready;
    try {
      ready = node.core.step(input);
    } catch (e) {
      if (node.correct) this.checker.violation(`replica ${node.name} threw: ${(e as Error).message}`);
      this.crash(node);
      return;
    }
    if (node.crashMidStep) {
      // The crash hits after a random prefix of the Ready was done: some of its records,
      // or all of them and some of its effects.
      const cut = this.rng.int(0, ready.persist.length + ready.effects.length);
      this.persist(node, ready.persist.slice(0, cut));
      this.perform(node, ready.effects.slice(0, Math.max(0, cut - ready.persist.length)));
      this.crash(node);
      return;
    }
    this.persist(node, ready.persist);
    this.perform(node, ready.effects);
    while (node.inbox.length > 0 && node.alive) this.step(node, node.inbox.shift() as CoreInput);
  }

  private persist(node: SimNode, records: readonly PersistedRecord[]): void {
    for (const record of records) {
      node.records.push(record);
      if (record.t === "checkpoint" && node.correct) this.checker.onCheckpoint(node.id, record.seq, record.stateDigest);
      if (node.records.length > RECORDS_COMPACT_AT) node.records = compactRecords(node.records);
    }
  }

  private perform(node: SimNode, effects: readonly Effect[]): void {
    for (const o of effects) {
      switch (o.kind) {
        case "send":
          this.sendFrom(node, o.to, o.msg);
          break;
        case "decide":
          // §12: a batch never runs before this replica's own external order reached its barrier.
          if (node.correct && o.after > externalAt(node.id, this.now)) {
            this.checker.violation(
              `replica ${node.name} executed seq ${o.seq} behind barrier ${o.after} at external ${externalAt(node.id, this.now)}`,
            );
          }
          this.log(`${node.name} decided seq ${o.seq} in view ${o.view}: ${o.execute.length}/${o.batch.length} requests executed`);
          this.onDecide(node, o.seq, o.batch, o.execute);
          break;
        case "takeCheckpoint":
          node.snapshots.set(o.seq, { appDigest: node.app.chain, clients: o.clients });
          for (const s of [...node.snapshots.keys()].sort((a, b) => a - b).slice(0, -SNAPSHOTS_KEPT)) node.snapshots.delete(s);
          node.inbox.push({ kind: "checkpointReady", seq: o.seq, appDigest: node.app.chain });
          break;
        case "fetchState": {
          // As the runtime's fetcher may (src/replica/state-transfer.ts), half the time a
          // fetch under way goes on though the core now asks for a newer state: the core
          // then installs the older one and catches up from the peers' decided logs.
          const under = node.fetch;
          const executed = node.core?.status().lastExecuted ?? 0;
          if (under !== null && under.seq < o.seq && under.seq > executed && this.fetchRng.int(0, 1) === 0) {
            this.log(`${node.name} goes on fetching the state at ${under.seq}; ${o.seq} waits`);
            break;
          }
          this.log(`${node.name} fetches the state at ${o.seq} from ${o.from.join(",")}`);
          node.fetch = { seq: o.seq, digest: o.stateDigest, from: o.from, proof: o.proof, at: this.now + this.rng.int(2, 10) };
          break;
        }
        case "serveDecided":
          this.serveDecided(node, o);
          break;
        case "suspect":
          if (node.correct) this.viewChanges++;
          this.log(`${node.name} suspects, moves to view ${o.view} (${o.reason})`);
          break;
        case "leaderSuspected":
          this.log(`${node.name} suspects the leader of view ${o.view} (${o.reason})`);
          break;
        case "viewInstalled":
          this.log(`${node.name} installed view ${o.view}`);
          break;
        case "divergence":
          if (node.correct) this.checker.violation(`replica ${node.name} diverged at checkpoint ${o.seq}`);
          break;
        case "resendReply":
        case "refused":
        case "peerFlooding":
        case "peerMisbehaved":
          break;
        default: {
          const never: never = o;
          throw new Error(`unknown effect ${JSON.stringify(never)}`);
        }
      }
    }
  }

  /** The runtime's answer from its decided log (ordering-driver.ts serveDecided): here, the node's kept records. */
  private serveDecided(node: SimNode, o: Extract<Effect, { kind: "serveDecided" }>): void {
    const msg = answerFromRecords(node.records, o);
    this.decidedServedFromLog += msg.items.length;
    this.sendFrom(node, o.to, msg);
  }

  private sendFrom(node: SimNode, to: ReplicaId | "all", msg: PeerMessage): void {
    if (node.byz !== null) {
      node.byz.outgoing(to, msg);
      return;
    }
    if (to !== "all") {
      this.net.send(this.now, { from: node.id, to, msg });
      return;
    }
    for (let r = 0; r < this.scenario.n; r++) if (r !== node.id) this.net.send(this.now, { from: node.id, to: r, msg });
  }

  private onDecide(node: SimNode, seq: number, batch: ClientRequest[], execute: ClientRequest[]): void {
    if (node.correct) {
      this.checker.onDecide(node.id, node.app, seq, batch, execute);
    } else {
      node.app.chain = nextChain(node.app.chain, seq, dedupe(batch, node.app.clientLast));
      node.app.lastDecided = seq;
    }
    if (!node.correct || node.twin !== 0) return;
    for (const r of execute) {
      if (this.executedPool.length < 256) this.executedPool.push(r);
      else this.executedPool[this.rng.int(0, 255)] = r;
      const cr = this.requests.get(requestKey(r.client, r.seq));
      if (cr === undefined || (cr.req !== r && !sameRequest(cr.req, r))) continue;
      cr.executedBy.add(node.id);
      if (cr.decidedAt === null && cr.executedBy.size >= weakQuorum(this.scenario.n, this.scenario.f, this.scenario.mode)) {
        cr.decidedAt = this.now;
      }
    }
  }

  /** The simulated runtime's part of state transfer: fetch from a listed peer, check, install. */
  private completeFetch(node: SimNode): void {
    const f = node.fetch;
    if (f === null || this.now < f.at || node.core === null) return;
    node.fetch = null;
    for (const src of f.from) {
      const server = (this.byId.get(src) ?? []).find((n) => n.alive && n.snapshots.has(f.seq));
      if (server === undefined) continue;
      let snap = server.snapshots.get(f.seq) as Snapshot;
      if (!server.correct && server.byz?.has("corrupt")) snap = { ...snap, appDigest: this.rng.bytes(32) };
      const before = node.core.status().lastExecuted;
      if (before >= f.seq) return;
      // The application installs the snapshot first, as a runtime would, so that decisions
      // the core emits right after installing apply on top of it; it rolls back if the
      // core refuses the snapshot.
      const previous = node.app;
      node.app = { lastDecided: f.seq, clientLast: new Map(snap.clients), chain: snap.appDigest };
      this.step(node, {
        kind: "snapshotInstalled",
        seq: f.seq,
        stateDigest: f.digest,
        appDigest: snap.appDigest,
        clients: snap.clients,
        proof: f.proof,
      });
      if (node.core === null) return;
      if (node.core.status().lastExecuted < f.seq) {
        node.app = previous;
        continue;
      }
      if (node.correct) this.checker.onSnapshot(node.id, before, f.seq, snap.appDigest);
      node.snapshots.set(f.seq, snap);
      if (node.correct && node.core.status().transferTo !== null) this.olderStatesInstalled++;
      this.log(`${node.name} installed snapshot ${f.seq} from ${server.name}`);
      return;
    }
  }

  // ---------------------------------------------------------------------------------------
  // Network delivery and scheduled faults.
  // ---------------------------------------------------------------------------------------

  private deliver(d: { from: ReplicaId; to: ReplicaId; msg: unknown }): void {
    const msg = validatePeerMessage(d.msg);
    if (msg === null) return;
    const targets = this.byId.get(d.to) ?? [];
    const chosen = targets.length === 1 ? targets : [targets[this.twinSideA.has(d.from) ? 0 : 1] as SimNode];
    for (const node of chosen) {
      if (!node.alive || node.byz?.refuses(msg) === true) continue;
      this.step(node, { kind: "message", from: d.from, msg });
      node.byz?.incoming(d.from, msg);
    }
  }

  private scheduledEvents(): void {
    const s = this.scenario;
    for (const c of s.crashes) {
      for (const node of this.byId.get(c.replica) ?? []) {
        if (c.at === this.now && node.alive) {
          if (c.midStep) node.crashMidStep = true;
          else this.crash(node);
        }
        if (c.restartAt === this.now && !node.alive) this.restart(node);
      }
    }
    if (this.now === this.forgetAt) for (const node of this.nodes) if (node.byz?.has("forget")) this.restart(node, true);
    for (const p of s.partitions) {
      if (p.start === this.now && this.now < s.healAt) {
        const sideA = p.kind === "isolateLeader" ? [this.currentLeader()] : p.sideA;
        this.net.active.push({ kind: p.kind, end: p.end, sideA: new Set(sideA) });
        this.log(`partition ${p.kind} [${sideA.join(",")}] until ${p.end}`);
      }
    }
    for (let i = this.net.active.length - 1; i >= 0; i--) {
      if ((this.net.active[i]?.end ?? 0) <= this.now || this.now >= s.healAt) this.net.active.splice(i, 1);
    }
    if (this.now === s.healAt) {
      this.log("heal");
      for (const node of this.nodes) {
        if (node.crashMidStep && node.alive) node.crashMidStep = false;
        const crash = s.crashes.find((c) => c.replica === node.id);
        if (!node.alive && node.byz === null && crash?.restartAt !== null) this.restart(node);
      }
    }
  }

  private currentLeader(): ReplicaId {
    let view = 0;
    for (const node of this.nodes) if (node.correct && node.core !== null) view = Math.max(view, node.core.status().installedView);
    return leaderOf(view, this.scenario.n);
  }

  // ---------------------------------------------------------------------------------------
  // Clients.
  // ---------------------------------------------------------------------------------------

  private clientSend(to: ReplicaId, req: ClientRequest, authenticated: boolean): void {
    if (this.now < this.scenario.healAt && this.clientRng.chance(this.scenario.dropRate)) return;
    const at = this.now + this.net.delay(this.now);
    const q = this.clientQueue.get(at) ?? [];
    q.push({ to, req, authenticated });
    this.clientQueue.set(at, q);
  }

  private sendToSome(req: ClientRequest, authenticated: boolean): void {
    let any = false;
    for (let r = 0; r < this.scenario.n; r++) {
      if (this.clientRng.chance(0.5)) {
        this.clientSend(r, req, authenticated);
        any = true;
      }
    }
    if (!any) this.clientSend(this.clientRng.int(0, this.scenario.n - 1), req, authenticated);
  }

  private sendToAll(req: ClientRequest, authenticated: boolean): void {
    for (let r = 0; r < this.scenario.n; r++) this.clientSend(r, req, authenticated);
  }

  private makeRequest(key: SimKey, seq: number, span: number, payloadBytes = 16): ClientRequest {
    const body = requestBody(key, seq, span, this.clientRng.bytes(payloadBytes));
    return { client: key.publicHex, seq, span, body, sig: this.keyring.signRequest(key, body) };
  }

  private correctClientsAct(): void {
    const s = this.scenario;
    const window = (this.cfgs[0] as CoreConfig).clientWindow;
    for (let c = 0; c < s.correctClients; c++) {
      const key = this.keyring.clients[c] as SimKey;
      let outstanding = 0;
      // A closed-loop client looks only at its own undecided requests (thousands are issued
      // in a throughput run); the same requests, in the same order, as the scan of all.
      const own = s.closedLoop === true ? this.undecided(c) : this.requests.values();
      for (const cr of own) {
        if (cr.req.client !== key.publicHex || cr.decidedAt !== null) continue;
        outstanding++;
        if (this.now - cr.lastSentAt >= CLIENT_RETRY_TICKS) {
          cr.lastSentAt = this.now;
          this.sendToAll(cr.req, true);
        }
      }
      const issued = this.clientIssued[c] as number;
      if (s.closedLoop === true) {
        for (let k = outstanding; k < window && this.now <= s.submitUntil; k++) this.issue(c, key);
        continue;
      }
      if (this.now > s.submitUntil || issued >= s.requestsPerClient || outstanding >= window) continue;
      // Requests are spread over the whole submission period, so some are in flight while
      // faults strike and some right at heal.
      const rate = Math.min(1, (CLIENT_ISSUE_SPREAD * s.requestsPerClient) / Math.max(1, s.submitUntil));
      if (!this.clientRng.chance(rate)) continue;
      this.issue(c, key);
    }
  }

  /** Client `c`'s undecided requests, in the order it issued them (closed-loop runs). */
  private undecided(c: number): CorrectRequest[] {
    const list = (this.openByClient[c] ?? []).filter((cr) => cr.decidedAt === null);
    this.openByClient[c] = list;
    return list;
  }

  /** Client `c` issues its next request. */
  private issue(c: number, key: SimKey): void {
    const seq = this.clientNext[c] as number;
    const span = this.clientRng.int(1, 3);
    const req = this.makeRequest(key, seq, span);
    this.clientNext[c] = seq + span;
    this.clientIssued[c] = (this.clientIssued[c] as number) + 1;
    const cr: CorrectRequest = { req, submittedAt: this.now, lastSentAt: this.now, decidedAt: null, executedBy: new Set() };
    this.requests.set(requestKey(req.client, req.seq), cr);
    // A closed-loop client sends to every replica, as fitb's client library does; the
    // others reach only some replicas, so forwarding and retries are exercised.
    if (this.scenario.closedLoop === true) {
      const open = this.openByClient[c] ?? [];
      open.push(cr);
      this.openByClient[c] = open;
      this.sendToAll(req, true);
    } else {
      this.sendToSome(req, true);
    }
  }

  private faultyClientsAct(): void {
    const s = this.scenario;
    if (this.now > s.healAt + 100) return;
    for (let i = 0; i < s.clientFaults.length; i++) {
      const key = this.keyring.clients[s.correctClients + i] as SimKey;
      const next = this.faultyNext[i] as number;
      switch (s.clientFaults[i]) {
        case "badsig":
          if (this.clientRng.chance(0.1)) {
            const req = this.makeRequest(key, next, 1);
            const sig = req.sig.slice();
            sig[5] = (sig[5] as number) ^ 0x10;
            this.sendToSome({ ...req, sig }, true);
          }
          break;
        case "replay":
          if (this.executedPool.length > 0 && this.clientRng.chance(0.2)) this.sendToAll(this.clientRng.pick(this.executedPool), false);
          break;
        case "flood":
          for (let k = 0; k < 4; k++) {
            // Far beyond the window: refused before any signature check, so not worth signing.
            const seq = next + 1000 + this.clientRng.int(0, 10_000);
            const body = requestBody(key, seq, 1, this.clientRng.bytes(4));
            this.clientSend(
              this.clientRng.int(0, s.n - 1),
              { client: key.publicHex, seq, span: 1, body, sig: this.clientRng.bytes(64) },
              true,
            );
          }
          if (this.clientRng.chance(0.05)) {
            this.sendToAll(this.makeRequest(key, next, 1), true);
            this.faultyNext[i] = next + 1;
          }
          break;
        case "equivocate":
          if (this.clientRng.chance(0.05)) {
            // Two different signed bodies for one sequence number, to different replicas.
            const a = this.makeRequest(key, next, 1);
            const b = this.makeRequest(key, next, 1);
            for (let r = 0; r < s.n; r++) this.clientSend(r, r % 2 === 0 ? a : b, true);
            this.faultyNext[i] = next + 1;
          }
          break;
        case "gap":
          if (this.clientRng.chance(0.05)) {
            this.sendToAll(this.makeRequest(key, next, 1), true);
            // Skips two sequence numbers now and then: what follows can never execute.
            this.faultyNext[i] = next + (this.clientRng.chance(0.3) ? 3 : 1);
          }
          // Now and then a burst of requests behind a gap, up to the client window: they
          // can never execute and must not hold the pending pool.
          if (this.clientRng.chance(0.02)) {
            for (let gapped = 2; gapped <= 6; gapped++) this.sendToAll(this.makeRequest(key, next + gapped, 1), true);
          }
          break;
        default:
          break;
      }
    }
  }

  private deliverClientRequests(): void {
    const q = this.clientQueue.get(this.now);
    if (q === undefined) return;
    this.clientQueue.delete(this.now);
    for (const { to, req, authenticated } of q) {
      const targets = this.byId.get(to) ?? [];
      const node = targets[this.clientRng.int(0, targets.length - 1)];
      if (node !== undefined) this.step(node, { kind: "request", req, authenticated });
    }
  }

  // ---------------------------------------------------------------------------------------
  // The run.
  // ---------------------------------------------------------------------------------------

  private allDone(): boolean {
    const s = this.scenario;
    if (s.closedLoop === true && this.now <= s.submitUntil) return false;
    for (let c = 0; c < s.correctClients; c++) {
      if ((this.clientIssued[c] as number) < s.requestsPerClient && this.now <= s.submitUntil) return false;
    }
    for (const cr of this.requests.values()) {
      const last = cr.req.seq + cr.req.span - 1;
      for (const node of this.nodes) {
        if (!node.correct || this.faulty.has(node.id)) continue;
        if (!node.alive || (node.app.clientLast.get(cr.req.client) ?? 0) < last) return false;
      }
    }
    return true;
  }

  run(): SeedResult {
    const s = this.scenario;
    for (this.now = 0; this.now <= s.deadline; this.now++) {
      this.scheduledEvents();
      for (const d of this.net.take(this.now)) this.deliver(d as { from: ReplicaId; to: ReplicaId; msg: unknown });
      this.deliverClientRequests();
      this.correctClientsAct();
      this.faultyClientsAct();
      for (const node of this.nodes) {
        if (!node.alive) continue;
        if (s.params.externalBarrier === true) this.step(node, { kind: "external", seq: externalAt(node.id, this.now) });
        this.step(node, { kind: "tick" });
        node.byz?.tick();
        this.completeFetch(node);
        if (node.correct && node.core !== null) {
          this.checker.onStatus(`${node.id}/${node.life}`, node.core.status());
          this.checker.onSizes(node.id, node.core.sizes(), this.cfgs[node.id] as CoreConfig);
        }
      }
      if (s.closedLoop === true) this.watchLeaders();
      if (this.checker.violationCount > 0) break;
      if (this.doneAt === null && this.now >= s.healAt && this.allDone()) this.doneAt = this.now;
      if (this.doneAt !== null && this.now >= this.doneAt + TAIL_TICKS) break;
    }
    // Correct replicas move one view per timeout, or to a view f+1 of them announced: in a
    // run of this length that stays far below what a forged NEW_VIEW names.
    for (const node of this.nodes) {
      const view = node.correct && node.core !== null ? node.core.status().view : 0;
      if (view >= VIEW_PUSHED_FLOOR) this.checker.violation(`replica ${node.name} was pushed to view ${view}`);
    }
    if (this.checker.violationCount === 0 && this.doneAt === null) {
      const missing = [...this.requests.values()].filter((r) => r.decidedAt === null).length;
      this.checker.violation(
        `LIVENESS: not every correct request was decided everywhere ${s.deadline - s.healAt} ticks after heal (${missing} not decided by f+1)`,
      );
    }
    const latencies: number[] = [];
    for (const cr of this.requests.values()) if (cr.decidedAt !== null) latencies.push(cr.decidedAt - cr.submittedAt);
    let decided = 0;
    for (const node of this.nodes) if (node.correct) decided = Math.max(decided, node.app.lastDecided);
    return {
      load: s.closedLoop === true ? this.loadFigures() : null,
      seed: s.seed,
      summary: describe(s),
      violations: this.checker.violations,
      violationCount: this.checker.violationCount,
      ticks: this.now,
      healAt: s.healAt,
      recoveryTicks: this.doneAt === null ? null : Math.max(0, this.doneAt - s.healAt),
      latencies,
      decided,
      viewChanges: this.viewChanges,
      decidedServedFromLog: this.decidedServedFromLog,
      olderStatesInstalled: this.olderStatesInstalled,
      messages: this.net.sent,
      verifications: this.keyring.verifications,
      trace: this.trace,
    };
  }

  /** Whether every correct replica is in the normal case of an installed view with a correct leader. */
  private watchLeaders(): void {
    const attackFrom = Math.min(...this.scenario.byzantine.map((b) => b.from ?? 0));
    if (this.correctLeaderAt !== null || this.now < attackFrom) return;
    let allCorrect = true;
    for (const node of this.nodes) {
      if (!node.correct || node.core === null) continue;
      const st = node.core.status();
      if (st.status !== "normal" || st.installedView !== st.view || this.faulty.has(leaderOf(st.installedView, this.scenario.n))) {
        allCorrect = false;
      }
    }
    if (allCorrect) this.correctLeaderAt = this.now;
  }

  private loadFigures(): LoadFigures {
    let decided = 0;
    for (const cr of this.requests.values()) if (cr.decidedAt !== null && cr.decidedAt <= this.scenario.submitUntil) decided++;
    let finalView = 0;
    for (const node of this.nodes)
      if (node.correct && node.core !== null) finalView = Math.max(finalView, node.core.status().installedView);
    const froms = this.scenario.byzantine.map((b) => b.from ?? 0);
    const attackFrom = froms.length === 0 ? 0 : Math.min(...froms);
    return { decided, finalView, correctLeaderAt: this.correctLeaderAt, attackFrom };
  }
}

function sameRequest(a: ClientRequest, b: ClientRequest): boolean {
  return a.span === b.span && a.sig.length === b.sig.length && a.sig.every((x, i) => x === b.sig[i]);
}

export function describe(s: Scenario): string {
  const parts = [`n=${s.n} f=${s.f} ${s.mode}`, `heal@${s.healAt}`];
  if (s.dropRate > 0) parts.push(`drop=${s.dropRate}`);
  if (s.dupRate > 0) parts.push(`dup=${s.dupRate}`);
  if (s.maxDelayPre > 5) parts.push(`delay<=${s.maxDelayPre}`);
  for (const p of s.partitions) parts.push(`${p.kind}@${p.start}-${p.end}`);
  for (const c of s.crashes)
    parts.push(`crash ${c.replica}@${c.at}${c.restartAt === null ? "" : `-${c.restartAt}`}${c.midStep ? "*" : ""}`);
  for (const b of s.byzantine) parts.push(`byz ${b.id}:${b.behaviours.join("+")}`);
  if (s.clientFaults.length > 0) parts.push(`clients:${s.clientFaults.join("+")}`);
  return parts.join(" ");
}

export function runSeed(seed: number, opts: RunOptions): SeedResult {
  const scenario = makeScenario(seed, { ...opts.scenario, mix: opts.mix });
  return new Simulation(scenario, opts).run();
}

/** Runs a scenario built by hand (the throughput runs of src/sim/throughput.ts). */
export function runScenario(scenario: Scenario, opts: Omit<RunOptions, "mix" | "scenario">): SeedResult {
  return new Simulation(scenario, { ...opts, mix: scenario.mix }).run();
}
