/**
 * A fault scenario, drawn entirely from one seed: group size and mode, network behaviour
 * before and after "heal" (GST), partitions, crashes, Byzantine replicas and faulty
 * clients. After `healAt` the network is synchronous (delay 1..5 ticks, no loss, no
 * partition), crashed replicas are back, and at most f replicas are faulty; liveness is
 * judged from then on.
 */
import { URGENCY_MAX } from "../core/ordering/priority.ts";
import type { CoreParameters, FaultMode, ReplicaId } from "../core/ordering/index.ts";
import { Prng } from "./prng.ts";

export type FaultMix = "all" | "crash" | "byzantine" | "network" | "clients" | "none";
export const FAULT_MIXES: readonly FaultMix[] = ["all", "crash", "byzantine", "network", "clients", "none"];

export type ByzBehaviour =
  | "mute" // sends nothing
  | "omit" // drops each message with probability 1/2, or sends it to a subset
  | "equivocate" // as leader: different proposals to different replicas, reflects votes
  | "stuff" // repeats its own votes and reflects others' votes many times
  | "corrupt" // flips bytes or breaks fields without re-signing
  | "wrongsig" // claims another replica's identity, or garbles the signature
  | "stale" // replays old messages, re-signs its votes for an older view
  | "byzzfuzz" // small-scope mutations: view +-1, seq +-1, re-signed
  | "badproposal" // as leader: proposes invalid, replayed or duplicate requests
  | "nvforge" // as new leader: a NEW_VIEW whose O does not follow from its VIEW_CHANGEs
  | "flood" // far-future votes and view changes
  | "nvfuture" // signs NEW_VIEWs for far-future views it leads, with no VIEW_CHANGEs in them
  | "slow" // as leader: holds each proposal back 5-20 ticks (slow, yet within the heartbeat)
  | "accuse" // suspects every leader (SUSPECT) and sends forged EVIDENCE of equivocation
  | "hold" // as leader: releases one proposal at a time, spaced just under the heartbeat (the attack harness's slow leader)
  | "split" // as leader: the real batch to the lowest other replica, the batch less its last request to the rest
  | "spam" // floods every peer each tick: FORWARDs of real requests, STATE_REQUESTs for the window, bad-signature PREPAREs, junk
  | "replay" // re-sends the validly signed messages it sent and received, oldest first, to every peer each tick
  | "twins" // two copies of the replica with the same keys
  | "forget" // restarts with no state (Twins' lost-state case)
  | "censor" // drops every FORWARD it receives: as leader, proposes only what clients gave it directly
  | "fakedecision"; // reports decisions never made: empty batches with well-formed, unsigned COMMITs of every member

export const BYZ_BEHAVIOURS: readonly ByzBehaviour[] = [
  "mute",
  "omit",
  "equivocate",
  "stuff",
  "corrupt",
  "wrongsig",
  "stale",
  "byzzfuzz",
  "badproposal",
  "nvforge",
  "flood",
  "nvfuture",
  "slow",
  "twins",
  "forget",
];

export type ClientFault = "badsig" | "replay" | "flood" | "equivocate" | "gap";
export const CLIENT_FAULTS: readonly ClientFault[] = ["badsig", "replay", "flood", "equivocate", "gap"];

export type PartitionKind = "split" | "oneway" | "isolateLeader";

export interface PartitionSpec {
  kind: PartitionKind;
  start: number;
  end: number;
  /** split/oneway: the replicas on side A (the rest are side B). isolateLeader: resolved at start. */
  sideA: ReplicaId[];
}

export interface CrashSpec {
  replica: ReplicaId;
  at: number;
  /** null: stays down (counts toward f). */
  restartAt: number | null;
  /** Crash in the middle of a step: a random suffix of its Ready (records, then effects) is lost. */
  midStep: boolean;
}

export interface ByzSpec {
  id: ReplicaId;
  behaviours: ByzBehaviour[];
  /** The tick the behaviours turn on (default 0); before it the replica behaves (throughput runs). */
  from?: number;
}

export interface Scenario {
  seed: number;
  mix: FaultMix;
  n: number;
  f: number;
  mode: FaultMode;
  params: Partial<CoreParameters>;
  healAt: number;
  submitUntil: number;
  deadline: number;
  dropRate: number;
  dupRate: number;
  maxDelayPre: number;
  partitions: PartitionSpec[];
  crashes: CrashSpec[];
  byzantine: ByzSpec[];
  correctClients: number;
  requestsPerClient: number;
  clientFaults: ClientFault[];
  /** Each client key's urgency (channel priority, 0..3) by key index, or null: all equal (core/ordering/priority.ts). */
  urgency: number[] | null;
  /**
   * Throughput runs (src/sim/throughput.ts): every correct client keeps its window full
   * until `submitUntil` (closed loop) instead of issuing `requestsPerClient` requests.
   */
  closedLoop?: boolean;
}

/**
 * Ticks after heal within which every correct request must be decided at every correct
 * replica. Over 30,000 seeds of the "all" mix the slowest run needed 302; the bound leaves
 * five times that, which still covers the longest view-change backoff
 * (viewChangeTimeoutTicks * 2^viewChangeBackoffDoublingsMax).
 */
export const LIVENESS_TICKS = 1500;
/** Delay bounds after heal (core/ordering/PROTOCOL.md §10: 1-5 ticks after GST). */
export const DELAY_POST_MIN = 1;
export const DELAY_POST_MAX = 5;

/** Parameters scaled down so that checkpoints, window wrap and view changes happen in short runs. */
export const SIM_PARAMETERS: Partial<CoreParameters> = {
  batchRequestsMax: 8,
  batchBytesMax: 64 * 1024,
  requestBytesMax: 4096,
  requestSpanMax: 8,
  batchDelayTicks: 1,
  pipelineDepth: 4,
  checkpointInterval: 8,
  logWindow: 16,
  clientWindow: 4,
  pendingRequestsMax: 64,
  requestTimeoutTicks: 40,
  progressTimeoutTicks: 25,
  viewChangeTimeoutTicks: 40,
  viewChangeBackoffDoublingsMax: 3,
  retransmitTicks: 12,
  throughputWindowTicks: 40,
  throughputGraceTicks: 160,
  // The simulated network delays a message 1-5 ticks after GST (a real one, well under a
  // 10 ms tick): a proposal may take that long before a waiting tick counts as starved.
  starvationSlackTicks: 5,
  clientQuarantineTicks: 200,
  transferRetryTicks: 40,
  transferItemsMax: 8,
};

/** A mix as drawn for one seed: "all" becomes one of the others or a combination of them. */
type DrawnMix = Exclude<FaultMix, "all"> | "combined";

export interface ScenarioOptions {
  mix: FaultMix;
  /** Force n = 3f+1 for this f (default: mostly f=1, sometimes f=2). */
  f?: number;
  /** Force one Byzantine behaviour set (tests of broken variants and of single attacks). */
  byzantine?: ByzBehaviour[];
  mode?: FaultMode;
  /** Which replica the (first) forced Byzantine replica is. */
  byzantineId?: ReplicaId;
  /** How many replicas get the forced behaviours (default 1; at most f). */
  byzantineCount?: number;
  /** Isolate the leader of the moment at this tick for 60 ticks, forcing a view change. */
  isolateLeaderAt?: number;
  /**
   * Whether random Byzantine replicas may draw ATTACK_BEHAVIOURS (default true). Seeds
   * recorded before those behaviours existed replay their original run with false.
   */
  attackBehaviours?: boolean;
}

export function makeScenario(seed: number, opts: ScenarioOptions): Scenario {
  const rng = new Prng(seed, 1);
  const mix: DrawnMix = opts.mix === "all" ? rng.pick<DrawnMix>(["crash", "byzantine", "network", "clients", "combined"]) : opts.mix;
  const f = opts.f ?? (rng.chance(0.08) ? 2 : 1);
  const n = 3 * f + 1;
  const combined = mix === "combined";
  const wantsByz = opts.byzantine !== undefined || mix === "byzantine" || (combined && rng.chance(0.5));
  const mode: FaultMode = opts.mode ?? (!wantsByz && rng.chance(0.25) ? "cft" : "bft");
  const healAt = rng.int(150, 450);
  const s: Scenario = {
    seed,
    mix: opts.mix,
    n,
    f,
    mode,
    // Crash mode runs as the runtime's second instance would: behind an external order
    // (PROTOCOL.md §12), which the simulator advances with a lag per replica.
    params: mode === "cft" ? { ...SIM_PARAMETERS, externalBarrier: true } : { ...SIM_PARAMETERS },
    healAt,
    submitUntil: healAt + rng.int(20, 120),
    deadline: healAt + LIVENESS_TICKS,
    dropRate: 0,
    dupRate: 0,
    maxDelayPre: DELAY_POST_MAX,
    partitions: [],
    crashes: [],
    byzantine: [],
    correctClients: rng.int(2, 4),
    requestsPerClient: rng.int(8, 24),
    clientFaults: [],
    urgency: null,
  };
  const light = (): void => {
    s.dropRate = rng.pick([0, 0.01, 0.05]);
    s.dupRate = rng.pick([0, 0.02]);
    s.maxDelayPre = rng.int(DELAY_POST_MAX, 10);
  };
  if (mix === "network" || combined) addNetworkFaults(s, rng);
  else light();
  if (opts.isolateLeaderAt !== undefined) {
    const start = opts.isolateLeaderAt;
    s.partitions.push({ kind: "isolateLeader", start, end: Math.min(s.healAt, start + 60), sideA: [] });
  }
  let faultBudget = f;
  if (wantsByz && mode === "bft") faultBudget -= addByzantine(s, rng, opts.byzantine, opts.byzantineId, opts.byzantineCount);
  if (opts.byzantine === undefined) addLaterBehaviours(s, seed, opts.attackBehaviours ?? true);
  if (opts.byzantine === undefined && (opts.attackBehaviours ?? true)) addPriorities(s, seed);
  if (mix === "crash" || (combined && rng.chance(0.5))) addCrashes(s, rng, faultBudget);
  if (mix === "clients" || (combined && rng.chance(0.5))) addClientFaults(s, rng);
  return s;
}

function addNetworkFaults(s: Scenario, rng: Prng): void {
  s.dropRate = rng.pick([0, 0.05, 0.1, 0.2, 0.35]);
  s.dupRate = rng.pick([0, 0.05, 0.15]);
  s.maxDelayPre = rng.pick([5, 10, 20, 40]);
  const count = rng.int(0, 3);
  let t = rng.int(0, 60);
  for (let i = 0; i < count && t < s.healAt - 20; i++) {
    const kind = rng.pick<PartitionKind>(["split", "oneway", "isolateLeader", "isolateLeader"]);
    const len = rng.int(20, 200);
    const sideA = rng.shuffle([...Array(s.n).keys()]).slice(0, rng.int(1, Math.max(1, Math.floor(s.n / 2))));
    s.partitions.push({ kind, start: t, end: Math.min(t + len, s.healAt), sideA });
    // Back-to-back leader isolation is Miller's livelock schedule (bft-smart #19).
    t += kind === "isolateLeader" && rng.chance(0.5) ? len : len + rng.int(0, 80);
  }
}

/**
 * Behaviours added after seeds were first recorded are drawn from streams of their own,
 * one per generation (EXTRA_BEHAVIOURS from stream 9, ATTACK_BEHAVIOURS from stream 10,
 * "censor" from CENSOR_STREAM, "fakedecision" from FAKE_DECISION_STREAM),
 * so every earlier seed still names the scenario it named before.
 */
const EXTRA_BEHAVIOURS: readonly ByzBehaviour[] = ["accuse"];
/** The attacks of the attack harness (test/attack) that the older behaviours did not cover. */
export const ATTACK_BEHAVIOURS: readonly ByzBehaviour[] = ["hold", "split", "spam", "replay"];

function addLaterBehaviours(s: Scenario, seed: number, attackBehaviours: boolean): void {
  const rng = new Prng(seed, 9);
  for (const b of s.byzantine) for (const extra of EXTRA_BEHAVIOURS) if (rng.chance(0.3)) b.behaviours = [...b.behaviours, extra];
  if (!attackBehaviours) return;
  const attacks = new Prng(seed, 10);
  for (const b of s.byzantine) for (const extra of ATTACK_BEHAVIOURS) if (attacks.chance(0.15)) b.behaviours = [...b.behaviours, extra];
  // A leader that ignores forwarded requests (lazy forwarding, core/ordering/PROTOCOL.md §5):
  // a client that reached only backups depends on their forwards and on the expectations.
  const censors = new Prng(seed, CENSOR_STREAM);
  for (const b of s.byzantine) if (censors.chance(0.15)) b.behaviours = [...b.behaviours, "censor"];
  // A liar about decisions: COMMITs are not signed, so a decision certificate it relays
  // proves nothing, and catch-up must take a decision from f+1 peers (PROTOCOL.md §4).
  const liars = new Prng(seed, FAKE_DECISION_STREAM);
  for (const b of s.byzantine) if (liars.chance(0.15)) b.behaviours = [...b.behaviours, "fakedecision"];
}

/** The stream the decision-forging behaviour is drawn from. */
const FAKE_DECISION_STREAM = 18;

/** The stream the censoring behaviour is drawn from (a generation of its own, as above). */
const CENSOR_STREAM = 17;

/**
 * Channel priorities (core/ordering/priority.ts) and proposing on arrival, from a stream
 * of their own (12) so earlier seeds keep their scenarios: in half the seeds each client
 * key gets an urgency, so batch fill by urgency, the urgent pipeline slots, the share kept
 * for the less urgent, shedding by urgency and the fairness bound run under every fault;
 * independently, half the seeds propose on arrival as the runtime does.
 */
const PRIORITY_KEYS = 16;

function addPriorities(s: Scenario, seed: number): void {
  const rng = new Prng(seed, 12);
  const urgency = Array.from({ length: PRIORITY_KEYS }, () => rng.int(0, URGENCY_MAX));
  if (rng.chance(0.5)) s.urgency = urgency;
  // The runtime proposes on arrival (batchDelayTicks 0); half the seeds do too.
  if (rng.chance(0.5)) s.params = { ...s.params, batchDelayTicks: 0 };
}

function addByzantine(
  s: Scenario,
  rng: Prng,
  forced: ByzBehaviour[] | undefined,
  forcedId: ReplicaId | undefined,
  forcedCount = 1,
): number {
  const count = forced !== undefined ? Math.min(forcedCount, s.f) : rng.int(1, s.f);
  const ids = rng.shuffle([...Array(s.n).keys()]).filter((id) => id !== forcedId);
  for (let i = 0; i < count; i++) {
    // Replica 0 leads view 0: make it the Byzantine one often, so leader attacks happen early.
    const id = i === 0 && forcedId !== undefined ? forcedId : i === 0 && rng.chance(0.5) ? 0 : (ids[i] as number);
    if (s.byzantine.some((b) => b.id === id)) continue;
    const behaviours = forced ?? rng.shuffle([...BYZ_BEHAVIOURS]).slice(0, rng.int(1, 3));
    s.byzantine.push({ id, behaviours });
  }
  return s.byzantine.length;
}

function addCrashes(s: Scenario, rng: Prng, budget: number): void {
  const byz = new Set(s.byzantine.map((b) => b.id));
  const candidates = [...Array(s.n).keys()].filter((r) => !byz.has(r));
  const count = rng.int(1, 3);
  let permanentLeft = budget > 0 && rng.chance(0.3) ? 1 : 0;
  for (let i = 0; i < count; i++) {
    const replica = rng.pick(candidates);
    const at = rng.int(5, Math.max(6, s.healAt - 30));
    const permanent = permanentLeft > 0 && !s.crashes.some((c) => c.replica === replica);
    if (permanent) permanentLeft--;
    const restartAt = permanent ? null : Math.min(s.healAt, at + rng.int(10, 200));
    if (s.crashes.some((c) => c.replica === replica && (c.restartAt === null || c.restartAt >= at))) continue;
    s.crashes.push({ replica, at, restartAt, midStep: rng.chance(0.5) });
  }
}

function addClientFaults(s: Scenario, rng: Prng): void {
  const count = rng.int(1, 3);
  for (let i = 0; i < count; i++) s.clientFaults.push(rng.pick(CLIENT_FAULTS));
}

/** Replicas that count as faulty for liveness: Byzantine, and crashed without restart. */
export function faultyReplicas(s: Scenario): Set<ReplicaId> {
  const out = new Set<ReplicaId>(s.byzantine.map((b) => b.id));
  for (const c of s.crashes) if (c.restartAt === null) out.add(c.replica);
  return out;
}
