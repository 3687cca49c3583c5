/**
 * Two builds of fitb measured against each other on one host, run on purpose (not part of
 * `npm test`):
 *
 *   npm run bench:ab -- --a A --b B [--rounds N] [--same-replicas] [--unlimited] [--base-port P] [--relay-port R] [--json] -- FITB-BENCH-ARGS...
 *
 * A and B are fitb executables (two `npm run build` outputs, or a script that runs one).
 * This host's figures move by a fifth from one run to the next, more than most changes move
 * them, so a figure of A from one hour and one of B from another say little. This program
 * runs A and B in turn, round after round, each on the same workload (`fitb bench` with
 * the arguments after `--`), and prints each pair and, for each figure, the ratio B/A of
 * every pair: a change that helps wins most pairs whatever the host does meanwhile.
 *
 * Each run starts a fresh `fitb demo` of its side (four replicas, the demo's channels) in a
 * directory of its own, and stops it after the bench; `--same-replicas` instead starts one
 * demo of A for the whole program and alternates only the bench's executable (a change to
 * the client library). A runs first in half of the rounds and B in the other half, in a
 * shuffled order, so that neither going first nor a host growing busier or quieter during
 * the run nor anything the replicas do every other run (a snapshot, say) favours one side.
 * `--unlimited`
 * lifts the per-client event rate limit in the demo's cluster file (saturated runs; the
 * default limit, 100,000 ev/s, would set the figure). Every run is bounded in time; the
 * whole program stops itself past its bound.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { integerArgument, optionsOrExit, stopOnSignalsAndDeadline } from "../helpers/program.ts";
import { eachLine, UNLIMITED_CLIENT } from "./peers.ts";

export const ROUNDS_DEFAULT = 3;
export const ROUNDS_MAX = 20;
const BASE_PORT_DEFAULT = 27_100;
/** Replicas in a `fitb demo`, on ports base..base+3. */
const DEMO_REPLICAS = 4;
/** The relay's port, this far above the replicas'. */
const RELAY_PORT_OFFSET = 300;
const RUN_TIMEOUT_S_DEFAULT = 600;
const DEMO_READY_MS = 60_000;
const DEMO_STOP_MS = 30_000;
/** After a demo stops, how long its ports may take to be free, and how often they are tried. */
const PORTS_FREE_MS = 20_000;
const PORT_POLL_MS = 100;
const DEMO_READY_LINE = "fitb demo: ready";
/** Arguments the program gives `fitb bench` itself. */
const OWN_BENCH_FLAGS = ["--config", "--key", "--json"];
export interface Options {
  readonly a: string;
  readonly b: string;
  readonly rounds: number;
  readonly sameReplicas: boolean;
  readonly unlimited: boolean;
  readonly basePort: number;
  readonly relayPort: number;
  readonly runTimeoutS: number;
  readonly json: boolean;
  readonly help: boolean;
  /** `fitb bench`'s arguments: the workload. */
  readonly bench: readonly string[];
}

export const USAGE = [
  "usage: npm run bench:ab -- --a A --b B [--rounds N] [--same-replicas] [--unlimited] [--base-port P] [--relay-port R] [--run-timeout-s S] [--json] -- FITB-BENCH-ARGS...",
  "",
  "Runs `fitb bench FITB-BENCH-ARGS` with executable A and executable B in turn, N rounds, each",
  "run on a fresh `fitb demo` of its own side, and prints every pair and the ratio B/A of each",
  "figure (delivered events/s, p50/p99/max latency, replica and bench CPU per event, and with",
  "--mix the low channel's rate): how many pairs B won and the ratios' min/median/max.",
  `  --rounds N         pairs of runs (default ${ROUNDS_DEFAULT}, at most ${ROUNDS_MAX})`,
  "  --same-replicas    one demo of A for the whole run; only the bench's executable alternates",
  "  --unlimited        lift the per-client rate limit in the demo's cluster file (saturated runs)",
  `  --base-port P      replica 0's port (default ${BASE_PORT_DEFAULT}; the demo's replicas use P..P+3)`,
  `  --relay-port R     the demo's relay port (default P+${RELAY_PORT_OFFSET})`,
  `  --run-timeout-s S  one bench run's bound (default ${RUN_TIMEOUT_S_DEFAULT})`,
  "  --json             one JSON object instead of the tables",
  "FITB-BENCH-ARGS must name --channel and must not name --config, --key or --json (nor a --rate sweep).",
  "A or B may be a script that runs fitb, if it ends by exec-ing it (so that a run's time bound stops fitb itself).",
  "example: npm run bench:ab -- --a /tmp/fitb-before --b dist/fitb --rounds 4 --unlimited -- --channel sec.alerts --size 200 --publishers 4 --events 300000 --warmup 50000",
].join("\n");

export function parseOptions(argv: readonly string[]): Options | string {
  const split = argv.indexOf("--");
  const own = split < 0 ? argv : argv.slice(0, split);
  const bench = split < 0 ? [] : argv.slice(split + 1);
  let a: string | null = null;
  let b: string | null = null;
  let rounds = ROUNDS_DEFAULT;
  let sameReplicas = false;
  let unlimited = false;
  let basePort = BASE_PORT_DEFAULT;
  let relayPort: number | null = null;
  let runTimeoutS = RUN_TIMEOUT_S_DEFAULT;
  let json = false;
  let help = false;
  for (let i = 0; i < own.length; i++) {
    const arg = own[i];
    let parsed: number | string = 0;
    if (arg === "--help" || arg === "-h") help = true;
    else if (arg === "--json") json = true;
    else if (arg === "--same-replicas") sameReplicas = true;
    else if (arg === "--unlimited") unlimited = true;
    else if (arg === "--a" || arg === "--b") {
      const path = own[++i];
      if (path === undefined || path.startsWith("--")) return `${arg}: a path to a fitb executable is missing`;
      if (arg === "--a") a = path;
      else b = path;
    } else if (arg === "--rounds") parsed = rounds = integerArgument(arg, own[++i], 1, ROUNDS_MAX) as number;
    else if (arg === "--base-port") parsed = basePort = integerArgument(arg, own[++i], 1024, 65_535 - RELAY_PORT_OFFSET) as number;
    else if (arg === "--relay-port") parsed = relayPort = integerArgument(arg, own[++i], 1024, 65_535) as number;
    else if (arg === "--run-timeout-s") parsed = runTimeoutS = integerArgument(arg, own[++i], 10, 7_200) as number;
    else return `unknown argument ${arg}${split < 0 ? " (fitb bench's arguments go after --)" : ""}`;
    if (typeof parsed === "string") return parsed;
  }
  const relay = relayPort ?? basePort + RELAY_PORT_OFFSET;
  if (help) return { a: "", b: "", rounds, sameReplicas, unlimited, basePort, relayPort: relay, runTimeoutS, json, help, bench };
  if (a === null || b === null) return "--a and --b are both needed: the two fitb executables to compare";
  for (const [flag, path] of [
    ["--a", a],
    ["--b", b],
  ] as const) {
    if (!existsSync(path) || !statSync(path).isFile()) return `${flag}: ${path} is not a file`;
    if ((statSync(path).mode & 0o111) === 0) return `${flag}: ${path} is not executable`;
  }
  const named = (flag: string): boolean => bench.some((arg) => arg === flag || arg.startsWith(`${flag}=`));
  if (!named("--channel")) return "fitb bench's arguments (after --) must name --channel";
  const taken = OWN_BENCH_FLAGS.filter(named);
  if (taken.length > 0) return `fitb bench's arguments must not name ${taken.join(", ")}: this program gives them`;
  const rate = bench.findIndex((arg) => arg === "--rate" || arg.startsWith("--rate="));
  const rates = rate < 0 ? "" : bench[rate] === "--rate" ? (bench[rate + 1] ?? "") : (bench[rate] as string).slice("--rate=".length);
  if (rates.includes(",")) return "--rate: one rate (a sweep prints a table of rates, which this program does not compare)";
  if (relay >= basePort && relay < basePort + DEMO_REPLICAS)
    return `--relay-port: ${relay} is one of the replicas' ports ${basePort}..${basePort + DEMO_REPLICAS - 1}`;
  return { a, b, rounds, sameReplicas, unlimited, basePort, relayPort: relay, runTimeoutS, json, help, bench };
}

// ---------------------------------------------------------------------------------------
// Figures and their comparison
// ---------------------------------------------------------------------------------------

/**
 * What `fitb bench --json` prints that this program compares. Older builds leave some of
 * it out (the CPU figures came later): a figure either run of a pair lacks is left out of
 * that pair.
 */
export interface BenchFigures {
  readonly delivered_per_s: number;
  readonly p50_ms: number;
  readonly p99_ms: number;
  readonly max_ms: number;
  readonly cpu_us_per_event?: readonly (number | null)[];
  readonly bench_cpu_us_per_event?: number | null;
  readonly mix?: { readonly low_mixed_per_s: number };
}

/** One compared figure: its values in a pair of runs (null: not both gave it), and which way is better. */
interface Figure {
  readonly name: string;
  readonly of: (a: BenchFigures, b: BenchFigures) => readonly [number, number] | null;
  readonly higherIsBetter: boolean;
}

/** A figure read the same way from each run of a pair. */
function each(read: (run: BenchFigures) => number | null | undefined): Figure["of"] {
  return (a, b) => {
    const x = read(a);
    const y = read(b);
    return typeof x === "number" && typeof y === "number" ? [x, y] : null;
  };
}

/** The replicas' mean CPU per event, over the replicas that reported in both runs of the pair. */
function replicaCpu(a: BenchFigures, b: BenchFigures): readonly [number, number] | null {
  const both: [number, number][] = [];
  const as = a.cpu_us_per_event ?? [];
  const bs = b.cpu_us_per_event ?? [];
  for (let i = 0; i < Math.min(as.length, bs.length); i++) {
    const x = as[i];
    const y = bs[i];
    if (typeof x === "number" && typeof y === "number") both.push([x, y]);
  }
  if (both.length === 0) return null;
  const sum = both.reduce((acc, [x, y]) => [acc[0] + x, acc[1] + y] as [number, number], [0, 0] as [number, number]);
  return [sum[0] / both.length, sum[1] / both.length];
}

const FIGURES: readonly Figure[] = [
  { name: "delivered ev/s", of: each((run) => run.delivered_per_s), higherIsBetter: true },
  { name: "p50 ms", of: each((run) => run.p50_ms), higherIsBetter: false },
  { name: "p99 ms", of: each((run) => run.p99_ms), higherIsBetter: false },
  { name: "max ms", of: each((run) => run.max_ms), higherIsBetter: false },
  { name: "replica CPU µs/event (mean)", of: replicaCpu, higherIsBetter: false },
  { name: "bench CPU µs/event", of: each((run) => run.bench_cpu_us_per_event), higherIsBetter: false },
  { name: "--mix low ev/s during the run", of: each((run) => run.mix?.low_mixed_per_s), higherIsBetter: true },
];

/** A figure over every pair in which both runs gave it. */
export interface Comparison {
  readonly figure: string;
  readonly pairs: number;
  readonly a: { readonly min: number; readonly max: number };
  readonly b: { readonly min: number; readonly max: number };
  /** B/A of each pair: its least, median and greatest. */
  readonly ratio: { readonly min: number; readonly median: number; readonly max: number };
  /** Pairs in which B was better (higher or lower, as the figure reads). */
  readonly bBetter: number;
}

/** One comparison per figure both sides gave in at least one pair. */
export function compare(pairs: readonly { readonly a: BenchFigures; readonly b: BenchFigures }[]): Comparison[] {
  const out: Comparison[] = [];
  for (const figure of FIGURES) {
    const values = pairs
      .map((pair) => figure.of(pair.a, pair.b))
      .filter((pair): pair is readonly [number, number] => pair !== null && pair[0] > 0);
    if (values.length === 0) continue;
    const ratios = values.map(([a, b]) => b / a).sort((x, y) => x - y);
    const as = values.map(([a]) => a);
    const bs = values.map(([, b]) => b);
    out.push({
      figure: figure.name,
      pairs: values.length,
      a: { min: Math.min(...as), max: Math.max(...as) },
      b: { min: Math.min(...bs), max: Math.max(...bs) },
      ratio: { min: ratios[0] as number, median: median(ratios), max: ratios[ratios.length - 1] as number },
      bBetter: values.filter(([a, b]) => (figure.higherIsBetter ? b > a : b < a)).length,
    });
  }
  return out;
}

function median(sorted: readonly number[]): number {
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[middle] as number) : ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2;
}

/**
 * The order of each of `rounds` rounds: A first in half of them and B first in the other
 * half (one more of either, drawn, when `rounds` is odd), shuffled with `random` (0 <= value
 * < 1), so that neither side gains from going first or second, nor from a pattern in time.
 */
export function drawOrders(rounds: number, random: () => number): ("a" | "b")[][] {
  const aFirst = Math.floor(rounds / 2) + (rounds % 2 === 1 && random() < 0.5 ? 1 : 0);
  const orders: ("a" | "b")[][] = Array.from({ length: rounds }, (_, i) => (i < aFirst ? ["a", "b"] : ["b", "a"]));
  for (let i = orders.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [orders[i], orders[j]] = [orders[j] as ("a" | "b")[], orders[i] as ("a" | "b")[]];
  }
  return orders;
}

export function formatComparisons(comparisons: readonly Comparison[]): string {
  const fmt = (value: number): string => (Math.abs(value) >= 100 ? Math.round(value).toLocaleString("en-US") : value.toFixed(2));
  const range = (r: { readonly min: number; readonly max: number }): string =>
    r.min === r.max ? fmt(r.min) : `${fmt(r.min)}-${fmt(r.max)}`;
  const lines = ["| figure | pairs | A | B | B/A min | B/A median | B/A max | B better in |", "|---|---|---|---|---|---|---|---|"];
  for (const c of comparisons) {
    lines.push(
      `| ${c.figure} | ${c.pairs} | ${range(c.a)} | ${range(c.b)} | ${c.ratio.min.toFixed(3)} | ${c.ratio.median.toFixed(3)} | ${c.ratio.max.toFixed(3)} | ${c.bBetter} of ${c.pairs} |`,
    );
  }
  return lines.join("\n");
}

// ---------------------------------------------------------------------------------------
// Demos and bench runs
// ---------------------------------------------------------------------------------------

const running = new Set<Subprocess>();
const dirs = new Set<string>();

function progress(text: string): void {
  console.error(`bench:ab: ${text}`);
}

/** A demo of `binary` in `dir`, up and ready; with `unlimited`, on a cluster file without the per-client rate limit. */
async function startDemo(binary: string, dir: string, options: Options): Promise<Subprocess> {
  const first = await launchDemo(binary, dir, options);
  if (!options.unlimited) return first;
  await stopDemo(first, options);
  const path = join(dir, "cluster.toml");
  let text = readFileSync(path, "utf8");
  for (const [key, value] of Object.entries(UNLIMITED_CLIENT)) {
    const line = new RegExp(`^${key} = .*$`, "m");
    if (!line.test(text)) throw new Error(`${path} has no ${key} line to lift`);
    text = text.replace(line, `${key} = ${value}`);
  }
  writeFileSync(path, text);
  return launchDemo(binary, dir, options);
}

async function launchDemo(binary: string, dir: string, options: Options): Promise<Subprocess> {
  const argv = [binary, "demo", "--dir", dir, "--base-port", String(options.basePort)];
  argv.push("--relay-port", String(options.relayPort), "--console-port", "0");
  const proc = Bun.spawn(argv, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  running.add(proc);
  const said: string[] = [];
  const ready = new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), DEMO_READY_MS);
    void eachLine(proc.stdout, (line) => {
      said.push(line);
      if (line.includes(DEMO_READY_LINE)) {
        clearTimeout(timer);
        resolve(true);
      }
    });
    void eachLine(proc.stderr, (line) => said.push(line));
    void proc.exited.then(() => {
      clearTimeout(timer);
      resolve(false);
    });
  });
  if (!(await ready)) {
    await stopDemo(proc, options);
    throw new Error(`${binary} demo was not ready within ${DEMO_READY_MS / 1000} s: ${said.slice(-3).join("; ") || "it said nothing"}`);
  }
  return proc;
}

/**
 * SIGINT, the demo's clean stop (it stops its replicas and waits for them); SIGKILL past
 * DEMO_STOP_MS, after which its replicas stop on their own once their stdin closes. Either
 * way it returns once the demo's ports take no connection, so the next demo can have them.
 */
async function stopDemo(proc: Subprocess, options: Options): Promise<void> {
  proc.kill("SIGINT");
  const timer = setTimeout(() => proc.kill("SIGKILL"), DEMO_STOP_MS);
  await proc.exited;
  clearTimeout(timer);
  running.delete(proc);
  const ports = [...Array.from({ length: DEMO_REPLICAS }, (_, i) => options.basePort + i), options.relayPort];
  const until = Date.now() + PORTS_FREE_MS;
  for (const port of ports) {
    while (await listening(port)) {
      if (Date.now() > until) throw new Error(`port ${port} still takes connections ${PORTS_FREE_MS / 1000} s after the demo stopped`);
      await Bun.sleep(PORT_POLL_MS);
    }
  }
}

/** Whether something on 127.0.0.1 accepts a connection on `port`. */
export async function listening(port: number): Promise<boolean> {
  try {
    const socket = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data() {} } });
    socket.end();
    return true;
  } catch {
    return false;
  }
}

/** `binary bench` against the demo in `dir`: its figures, or why there are none. */
async function runBench(binary: string, dir: string, options: Options): Promise<BenchFigures | Error> {
  const argv = [binary, "bench", "--config", join(dir, "cluster.toml"), "--key", join(dir, "client.key"), ...options.bench, "--json"];
  const proc = Bun.spawn(argv, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  running.add(proc);
  const out: string[] = [];
  const err: string[] = [];
  const timer = setTimeout(() => proc.kill("SIGKILL"), options.runTimeoutS * 1000);
  await Promise.all([eachLine(proc.stdout, (line) => out.push(line)), eachLine(proc.stderr, (line) => err.push(line)), proc.exited]);
  clearTimeout(timer);
  running.delete(proc);
  const json = out.findLast((line) => line.startsWith("{"));
  const said = err.filter((line) => !line.includes(": published ")).slice(-3);
  if (proc.exitCode !== 0 || json === undefined) {
    return new Error(
      `fitb bench exited ${proc.exitCode ?? proc.signalCode}${json === undefined ? " with no figures" : ""}: ${said.join("; ") || "it said nothing"}`,
    );
  }
  try {
    return JSON.parse(json) as BenchFigures;
  } catch (error) {
    return new Error(`fitb bench printed a line that is not JSON: ${error instanceof Error ? error.message : String(error)}`);
  }
}

function freshDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "fitb-ab-"));
  dirs.add(dir);
  return dir;
}

function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  dirs.delete(dir);
}

/** Kills what runs (a demo's replicas then stop as their stdin closes), removes what it can of the directories, exits. */
function stopAll(code: number, why: string): never {
  if (why !== "") progress(why);
  for (const proc of running) proc.kill("SIGKILL");
  for (const dir of dirs) {
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch (error) {
      progress(`could not remove ${dir}: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  process.exit(code);
}

function summary(label: string, run: BenchFigures | Error): string {
  if (run instanceof Error) return `${label}: failed: ${run.message}`;
  const cpu = (run.cpu_us_per_event ?? []).map((value) => (value === null ? "-" : String(value))).join(", ");
  const mix = run.mix === undefined ? "" : `, low ${Math.round(run.mix.low_mixed_per_s).toLocaleString("en-US")} ev/s`;
  return `${label}: ${Math.round(run.delivered_per_s).toLocaleString("en-US")} ev/s, p50 ${run.p50_ms} ms, p99 ${run.p99_ms} ms, max ${run.max_ms} ms, replica CPU µs/event [${cpu}], bench ${run.bench_cpu_us_per_event ?? "-"}${mix}`;
}

/** One round: each side's figures (or why there are none), and which side ran first. */
interface Round {
  readonly a: BenchFigures | Error;
  readonly b: BenchFigures | Error;
  readonly first: "a" | "b";
}

/** Every round's runs; throws when a demo of --same-replicas cannot start or a demo's ports stay taken. */
async function runRounds(options: Options): Promise<Round[]> {
  const binaries = { a: options.a, b: options.b };
  const rounds: Round[] = [];
  const orders = drawOrders(options.rounds, Math.random);
  let shared: { dir: string; demo: Subprocess } | null = null;
  if (options.sameReplicas) {
    const dir = freshDir();
    progress(`one demo of A for every run (${dir})`);
    shared = { dir, demo: await startDemo(options.a, dir, options) };
  }
  for (let round = 0; round < options.rounds; round++) {
    const results: Partial<Record<"a" | "b", BenchFigures | Error>> = {};
    const order = orders[round] as ("a" | "b")[];
    for (const side of order) {
      progress(`round ${round + 1} of ${options.rounds}: ${side.toUpperCase()} (${binaries[side]})`);
      if (shared !== null) {
        results[side] = await runBench(binaries[side], shared.dir, options);
      } else {
        const dir = freshDir();
        let demo: Subprocess | null = null;
        try {
          demo = await startDemo(binaries[side], dir, options);
          results[side] = await runBench(binaries[side], dir, options);
        } catch (error) {
          results[side] = error instanceof Error ? error : new Error(String(error));
        } finally {
          if (demo !== null) await stopDemo(demo, options);
          removeDir(dir);
        }
      }
      progress(summary(`  ${side.toUpperCase()}`, results[side] as BenchFigures | Error));
    }
    rounds.push({ a: results.a as BenchFigures | Error, b: results.b as BenchFigures | Error, first: order[0] as "a" | "b" });
  }
  if (shared !== null) {
    await stopDemo(shared.demo, options);
    removeDir(shared.dir);
  }
  return rounds;
}

async function main(): Promise<void> {
  const options = optionsOrExit(parseOptions(process.argv.slice(2)), USAGE);
  const deadlineMs = options.rounds * 2 * (options.runTimeoutS * 1000 + 3 * DEMO_READY_MS + DEMO_STOP_MS + PORTS_FREE_MS);
  const deadline = stopOnSignalsAndDeadline(stopAll, deadlineMs, "every demo and bench");
  let rounds: Round[];
  try {
    rounds = await runRounds(options);
  } catch (error) {
    // A demo that never came up for --same-replicas, a port that stayed taken, ...: nothing to compare.
    stopAll(1, error instanceof Error ? error.message : String(error));
  }
  clearTimeout(deadline);
  const complete = rounds.filter(
    (pair): pair is Round & { a: BenchFigures; b: BenchFigures } => !(pair.a instanceof Error) && !(pair.b instanceof Error),
  );
  const comparisons = compare(complete);
  const failed = rounds.length - complete.length;
  if (options.json) {
    const shown = (run: BenchFigures | Error) => (run instanceof Error ? { error: run.message } : run);
    console.log(
      JSON.stringify({
        a: options.a,
        b: options.b,
        bench: options.bench,
        rounds: rounds.map((pair) => ({ first: pair.first, a: shown(pair.a), b: shown(pair.b) })),
        comparisons,
      }),
    );
  } else {
    console.log(
      `A: ${options.a}\nB: ${options.b}\nfitb bench ${options.bench.join(" ")}${options.sameReplicas ? " (one demo of A)" : " (a fresh demo per run)"}`,
    );
    rounds.forEach((pair, index) => {
      console.log(`round ${index + 1} (${pair.first.toUpperCase()} first): ${summary("A", pair.a)}`);
      console.log(`                   ${summary("B", pair.b)}`);
    });
    console.log(comparisons.length === 0 ? "no pair with figures on both sides" : formatComparisons(comparisons));
    if (failed > 0) console.log(`${failed} of ${rounds.length} rounds left out: a run gave no figures`);
  }
  process.exit(failed > 0 ? 1 : 0);
}

if (import.meta.main) await main();
