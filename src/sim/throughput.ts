/**
 * Throughput under attack, in simulated time: the attacks of the attack harness
 * (test/attack, README "Under attack") as Byzantine replicas of the simulator. For one
 * seed and one attack, the same group and the same closed-loop client load run twice,
 * fault-free and with one replica attacking from the first tick, and each run reports the
 * correct clients' requests decided per simulated second (a tick is 10 ms, as in the
 * runtime). Nothing here reads a wall clock, so a regression in a defence shows up as a
 * lower retained share on every machine, however loaded.
 *
 * The simulator charges nothing for handling a message, so the flooding and replaying
 * rows measure only what the protocol does about them (admission bounds, answer budgets,
 * duplicates), not the CPU a real replica spends on each message; the attack harness
 * measures that.
 */
import type { CoreParameters } from "../core/ordering/index.ts";
import type { SimCryptoKind } from "./crypto.ts";
import { Prng } from "./prng.ts";
import { type ByzBehaviour, type ByzSpec, LIVENESS_TICKS, SIM_PARAMETERS, type Scenario } from "./scenario.ts";
import { type CoreFactory, runScenario, type SeedResult } from "./simulator.ts";

/** Ticks of client load in one run (15 simulated seconds). */
export const LOAD_TICKS = 1500;
/** The attack turns on at a tick drawn between these. */
const ATTACK_FROM_MIN = 100;
const ATTACK_FROM_MAX = 300;
/** A tick is 10 ms in the runtime (`TICK_MS` in src/replica/ordering-driver.ts). */
export const TICKS_PER_SECOND = 100;
/**
 * The simulator's parameters, with the request timeout at twice the progress timeout as in
 * the runtime's defaults (100 and 50 ticks): the slow leader of the harness stays under the
 * heartbeat and well under the request timers, so only the leader expectations can catch it
 * (SIM_PARAMETERS' shorter request timeout would catch it by its queued requests).
 */
export const THROUGHPUT_PARAMETERS: Partial<CoreParameters> = {
  ...SIM_PARAMETERS,
  requestTimeoutTicks: 2 * (SIM_PARAMETERS.progressTimeoutTicks as number),
  // The runtime proposes on arrival.
  batchDelayTicks: 0,
};
/** Scenario stream of the throughput runs: nothing else draws from it. */
const THROUGHPUT_STREAM = 11;

export interface ThroughputAttack {
  name: string;
  behaviours: ByzBehaviour[];
  /** The leader of view 0 attacks, or a backup. */
  target: "leader" | "backup";
}

/** The rows of the attack harness that a replica plays (its client attacks are the runtime's business). */
export const THROUGHPUT_ATTACKS: readonly ThroughputAttack[] = [
  { name: "slow-leader", behaviours: ["hold"], target: "leader" },
  { name: "equivocating-leader", behaviours: ["split"], target: "leader" },
  { name: "mute-leader", behaviours: ["mute"], target: "leader" },
  { name: "flooding-replica", behaviours: ["spam"], target: "backup" },
  { name: "replaying-replica", behaviours: ["replay"], target: "backup" },
];

export interface ThroughputOptions {
  crypto?: SimCryptoKind;
  coreFactory?: CoreFactory;
  /** Overrides of THROUGHPUT_PARAMETERS, for both runs. */
  params?: Partial<CoreParameters>;
  loadTicks?: number;
}

export interface ThroughputResult {
  seed: number;
  attack: string;
  clients: number;
  /** Correct requests decided per simulated second. */
  faultFree: number;
  underAttack: number;
  retainedPercent: number;
  /** How far the correct replicas' view moved in the attacked run. */
  viewChanges: number;
  /** Fault-free run: how far the view moved with no fault at all (a rotation of correct leaders). */
  faultFreeViewChanges: number;
  /** Ticks from the attack's start until every correct replica was in a view led by a correct replica (leader attacks; null: never). */
  replaceTicks: number | null;
  /** Safety and liveness violations of either run. */
  violations: string[];
}

/**
 * The group and the load of a throughput run: n = 4, synchronous from the start (delays
 * of 1 to 5 ticks, no loss), 4 to 8 closed-loop clients, and with `attack` one replica
 * attacking from a tick chosen by the seed: replica 0, the leader of view 0, or a backup
 * chosen by the seed.
 */
export function throughputScenario(seed: number, attack: ThroughputAttack | null, opts: ThroughputOptions = {}): Scenario {
  const rng = new Prng(seed, THROUGHPUT_STREAM);
  const n = 4;
  const loadTicks = opts.loadTicks ?? LOAD_TICKS;
  const correctClients = rng.int(4, 8);
  const backup = rng.int(1, n - 1);
  // Like the harness, the attacker starts honest and turns the attack on in the middle of
  // the run, at no particular point of the leader-monitoring windows.
  const from = rng.int(ATTACK_FROM_MIN, ATTACK_FROM_MAX);
  const byzantine: ByzSpec[] = [];
  if (attack !== null) byzantine.push({ id: attack.target === "leader" ? 0 : backup, behaviours: [...attack.behaviours], from });
  return {
    seed,
    mix: "none",
    n,
    f: 1,
    mode: "bft",
    params: { ...THROUGHPUT_PARAMETERS, ...opts.params },
    healAt: 0,
    submitUntil: loadTicks,
    deadline: loadTicks + LIVENESS_TICKS,
    dropRate: 0,
    dupRate: 0,
    maxDelayPre: 5,
    partitions: [],
    crashes: [],
    byzantine,
    correctClients,
    requestsPerClient: 0,
    clientFaults: [],
    urgency: null,
    closedLoop: true,
  };
}

function replaceTicks(r: SeedResult): number | null {
  const at = r.load?.correctLeaderAt ?? null;
  return at === null ? null : at - (r.load?.attackFrom ?? 0);
}

function perSecond(r: SeedResult, loadTicks: number): number {
  return ((r.load?.decided ?? 0) * TICKS_PER_SECOND) / loadTicks;
}

/** One seed, one attack: the fault-free run and the attacked run, and what they show. */
export function runThroughput(seed: number, attack: ThroughputAttack, opts: ThroughputOptions = {}): ThroughputResult {
  return runThroughputSeed(seed, [attack], opts)[0] as ThroughputResult;
}

/** One run of a seed's load, fault-free (`attack` null) or under one attack. */
export function throughputRun(seed: number, attack: ThroughputAttack | null, opts: ThroughputOptions = {}): SeedResult {
  return runScenario(throughputScenario(seed, attack, opts), {
    crypto: opts.crypto ?? "fast",
    ...(opts.coreFactory === undefined ? {} : { coreFactory: opts.coreFactory }),
  });
}

/**
 * One seed, several attacks against one fault-free run of the same load (`clean`, that
 * run if the caller has it already, with the same options).
 */
export function runThroughputSeed(
  seed: number,
  attacks: readonly ThroughputAttack[],
  opts: ThroughputOptions = {},
  clean: SeedResult = throughputRun(seed, null, opts),
): ThroughputResult[] {
  const loadTicks = opts.loadTicks ?? LOAD_TICKS;
  const faultFree = perSecond(clean, loadTicks);
  return attacks.map((attack) => {
    const attacked = throughputRun(seed, attack, opts);
    const underAttack = perSecond(attacked, loadTicks);
    return {
      seed,
      attack: attack.name,
      clients: throughputScenario(seed, null, opts).correctClients,
      faultFree,
      underAttack,
      retainedPercent: faultFree > 0 ? (100 * underAttack) / faultFree : 0,
      viewChanges: attacked.load?.finalView ?? 0,
      faultFreeViewChanges: clean.load?.finalView ?? 0,
      replaceTicks: attack.target === "leader" ? replaceTicks(attacked) : null,
      violations: [...clean.violations.map((v) => `fault-free: ${v}`), ...attacked.violations.map((v) => `${attack.name}: ${v}`)],
    };
  });
}

/** A table over seeds, one row per attack: the figures the CLI prints. */
export function throughputTable(results: readonly ThroughputResult[]): string {
  const header = [
    "attack",
    "seeds",
    "fault-free req/s",
    "under attack req/s",
    "retained % min",
    "retained % median",
    "view changes max",
    "ticks to replace p50",
    "ticks to replace max",
  ];
  const rows: string[][] = [];
  for (const attack of new Set(results.map((r) => r.attack))) {
    const mine = results.filter((r) => r.attack === attack);
    const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
    const retained = mine.map((r) => r.retainedPercent).sort((a, b) => a - b);
    const leaderAttack = THROUGHPUT_ATTACKS.find((a) => a.name === attack)?.target === "leader";
    const replace = mine.map((r) => r.replaceTicks).filter((t): t is number => t !== null);
    replace.sort((a, b) => a - b);
    const never = leaderAttack ? mine.length - replace.length : 0;
    rows.push([
      attack,
      String(mine.length),
      mean(mine.map((r) => r.faultFree)).toFixed(0),
      mean(mine.map((r) => r.underAttack)).toFixed(0),
      (retained[0] ?? 0).toFixed(0),
      (retained[Math.floor((retained.length - 1) / 2)] ?? 0).toFixed(0),
      String(Math.max(...mine.map((r) => r.viewChanges))),
      replace.length === 0 ? (never > 0 ? "never" : "-") : String(replace[Math.floor((replace.length - 1) / 2)]),
      replace.length === 0 ? (never > 0 ? "never" : "-") : `${replace[replace.length - 1]}${never > 0 ? ` (${never} never)` : ""}`,
    ]);
  }
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] as string).length)));
  const line = (cells: string[]): string =>
    `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] as number) : c.padStart(widths[i] as number))).join(" | ")} |`;
  return [
    line(header),
    `|${widths.map((w, i) => (i === 0 ? "-".repeat(w + 2) : `${"-".repeat(w + 1)}:`)).join("|")}|`,
    ...rows.map(line),
  ].join("\n");
}
