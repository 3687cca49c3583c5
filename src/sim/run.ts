/**
 * The simulator's command line.
 *
 *   bun src/sim/run.ts --seeds 100000 --faults all|crash|byzantine|network|clients|none
 *                      [--start S] [--workers W] [--crypto ed25519|fast]
 *   bun src/sim/run.ts --faults MIX --seed N [--trace]      replays one seed exactly
 *   bun src/sim/run.ts --throughput [--attack NAME] [--seeds N] [--start S] [--crypto ed25519|fast]
 *   bun src/sim/run.ts --runtime [--seeds N] [--start S] [--disk-faults LIST] [--fsync MODE] [--seed N --trace]
 *
 * --runtime runs the replica runtime itself (ordering driver, channel machine, storage on
 * a simulated disk with torn writes, lost and failing fsyncs, bitflips and overlapped
 * fsyncs, state transfer) instead of
 * the ordering core alone: src/sim/runtime.
 *
 * --throughput runs, per seed, the same closed-loop client load fault-free and under each
 * attack of the attack harness (src/sim/throughput.ts) in simulated time, and prints
 * correct requests decided per simulated second, the share retained under attack, how
 * far the view moved and the ticks until a bad leader was replaced.
 *
 * Prints progress, every failing seed with the command that replays it, and at the end
 * seeds/s, violations and the liveness figures. Exits 1 if any seed violated a check.
 */
import { type BatchSpec, runBatch } from "./batch.ts";
import type { SimCryptoKind } from "./crypto.ts";
import { FAULT_MIXES, type FaultMix } from "./scenario.ts";
import { runSeed, type SeedResult } from "./simulator.ts";
import { RunStats } from "./stats.ts";
import { parseDiskFaults, parseFsyncMode, RUNTIME_USAGE, runRuntimeCli } from "./runtime/cli.ts";
import { DISK_FAULT_KINDS, type DiskFaultKind, type FsyncMode } from "./runtime/simulation.ts";
import { runThroughputSeed, THROUGHPUT_ATTACKS, type ThroughputResult, throughputTable } from "./throughput.ts";

/** Seconds between progress lines. */
const PROGRESS_INTERVAL_S = 2;

interface Args {
  seeds: number;
  start: number;
  seed: number | null;
  faults: FaultMix;
  workers: number;
  crypto: SimCryptoKind;
  trace: boolean;
  throughput: boolean;
  /** --throughput: one attack by name, or null for all. */
  attack: string | null;
  seedsGiven: boolean;
  runtime: boolean;
  diskFaults: readonly DiskFaultKind[];
  /** --runtime: forced for every seed, or null: drawn per seed. */
  fsync: FsyncMode | null;
}

const USAGE = [
  "usage: bun src/sim/run.ts --seeds N --faults all|crash|byzantine|network|clients|none [--start S] [--workers W] [--crypto ed25519|fast]",
  "       bun src/sim/run.ts --faults MIX --seed N [--trace]                 replay one seed",
  `       bun src/sim/run.ts --throughput [--attack ${THROUGHPUT_ATTACKS.map((a) => a.name).join("|")}] [--seeds N (default 10)] [--start S] [--crypto ed25519|fast (default fast)]`,
  "           throughput under attack in simulated time: per seed, the same client load fault-free and under the attack",
  RUNTIME_USAGE,
].join("\n");

/** Seeds of a throughput run unless --seeds says otherwise. */
const THROUGHPUT_SEEDS_DEFAULT = 10;

function parseArgs(argv: readonly string[]): Args {
  const args: Args = {
    seeds: 1000,
    start: 1,
    seed: null,
    faults: "all",
    workers: Math.min(2, navigator.hardwareConcurrency || 1),
    crypto: "ed25519",
    trace: false,
    throughput: false,
    attack: null,
    seedsGiven: false,
    runtime: false,
    diskFaults: DISK_FAULT_KINDS,
    fsync: null,
  };
  let cryptoGiven = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value\n${USAGE}`);
      return v;
    };
    const int = (): number => {
      const v = Number(value());
      if (!Number.isSafeInteger(v) || v < 0) throw new Error(`${a} needs a non-negative integer\n${USAGE}`);
      return v;
    };
    switch (a) {
      case "--seeds":
        args.seeds = int();
        args.seedsGiven = true;
        break;
      case "--start":
        args.start = int();
        break;
      case "--seed":
        args.seed = int();
        break;
      case "--workers":
        args.workers = Math.max(1, int());
        break;
      case "--faults": {
        const v = value();
        if (!(FAULT_MIXES as readonly string[]).includes(v)) throw new Error(`unknown fault mix ${v}\n${USAGE}`);
        args.faults = v as FaultMix;
        break;
      }
      case "--crypto": {
        const v = value();
        if (v !== "ed25519" && v !== "fast") throw new Error(`unknown crypto ${v}\n${USAGE}`);
        args.crypto = v;
        cryptoGiven = true;
        break;
      }
      case "--throughput":
        args.throughput = true;
        break;
      case "--attack": {
        const v = value();
        if (!THROUGHPUT_ATTACKS.some((x) => x.name === v)) throw new Error(`unknown attack ${v}\n${USAGE}`);
        args.attack = v;
        break;
      }
      case "--trace":
        args.trace = true;
        break;
      case "--runtime":
        args.runtime = true;
        break;
      case "--disk-faults":
        args.diskFaults = parseDiskFaults(value());
        break;
      case "--fsync":
        args.fsync = parseFsyncMode(value());
        break;
      case "--help":
      case "-h":
        console.log(USAGE);
        process.exit(0);
        break;
      default:
        throw new Error(`unknown argument ${a}\n${USAGE}`);
    }
  }
  if (args.attack !== null && !args.throughput) throw new Error(`--attack goes with --throughput\n${USAGE}`);
  if (args.throughput) {
    if (!args.seedsGiven) args.seeds = THROUGHPUT_SEEDS_DEFAULT;
    if (!cryptoGiven) args.crypto = "fast";
  }
  return args;
}

function printFailure(r: SeedResult, args: Args): void {
  console.log(`FAIL seed ${r.seed} [${args.faults}] ${r.summary}`);
  for (const v of r.violations) console.log(`  ${v}`);
  const crypto = args.crypto === "ed25519" ? "" : ` --crypto ${args.crypto}`;
  console.log(`  replay: bun src/sim/run.ts --faults ${args.faults}${crypto} --seed ${r.seed} --trace`);
}

function replayOne(args: Args, seed: number): number {
  const r = runSeed(seed, { mix: args.faults, crypto: args.crypto, trace: args.trace });
  console.log(`seed ${seed} [${args.faults}] ${r.summary}`);
  if (args.trace) for (const line of r.trace) console.log(`  ${line}`);
  console.log(
    `ticks ${r.ticks}, decided ${r.decided}, view-change starts ${r.viewChanges}, recovery ${r.recoveryTicks ?? "none"} ticks after heal`,
  );
  if (r.violationCount === 0) {
    console.log("no violations");
    return 0;
  }
  printFailure(r, args);
  return 1;
}

async function runMany(args: Args): Promise<number> {
  const stats = new RunStats();
  const t0 = performance.now();
  let lastProgress = t0;
  const onResult = (r: SeedResult): void => {
    stats.add(r);
    if (r.violationCount > 0) printFailure(r, args);
    const now = performance.now();
    if (now - lastProgress >= PROGRESS_INTERVAL_S * 1000) {
      lastProgress = now;
      const s = (now - t0) / 1000;
      console.error(`[sim] ${stats.seeds}/${args.seeds} seeds, ${(stats.seeds / s).toFixed(1)} seeds/s, ${stats.violations} violations`);
    }
  };
  const end = args.start + args.seeds;
  if (args.workers <= 1) {
    runBatch({ mix: args.faults, crypto: args.crypto, start: args.start, end, stride: 1 }, undefined, onResult);
  } else {
    await Promise.all(
      Array.from({ length: args.workers }, (_, w) => {
        const spec: BatchSpec = { mix: args.faults, crypto: args.crypto, start: args.start + w, end, stride: args.workers };
        return new Promise<void>((resolve, reject) => {
          const worker = new Worker(new URL("./worker.ts", import.meta.url).href);
          worker.onmessage = (e: MessageEvent<SeedResult | null>) => {
            if (e.data === null) {
              worker.terminate();
              resolve();
            } else {
              onResult(e.data);
            }
          };
          worker.onerror = (e) => reject(new Error(e.message));
          worker.postMessage(spec);
        });
      }),
    );
  }
  console.log(`faults ${args.faults}, crypto ${args.crypto}, workers ${args.workers}, seeds ${args.start}..${end - 1}`);
  console.log(stats.report((performance.now() - t0) / 1000));
  return stats.violations === 0 ? 0 : 1;
}

/** --throughput: a table over seeds, each attack against the same seed fault-free; exits 1 on a violation. */
function runThroughputs(args: Args): number {
  const attacks = THROUGHPUT_ATTACKS.filter((a) => args.attack === null || a.name === args.attack);
  const seeds = args.seed !== null ? [args.seed] : Array.from({ length: args.seeds }, (_, i) => args.start + i);
  const results: ThroughputResult[] = [];
  const t0 = performance.now();
  for (const seed of seeds) {
    for (const r of runThroughputSeed(seed, attacks, { crypto: args.crypto })) {
      results.push(r);
      const replaced = r.replaceTicks === null ? "" : `, replaced after ${r.replaceTicks} ticks`;
      console.log(
        `seed ${seed} ${r.attack}: ${r.faultFree.toFixed(0)} -> ${r.underAttack.toFixed(0)} req/s (${r.retainedPercent.toFixed(0)}%), ${r.viewChanges} view changes${replaced}`,
      );
      for (const v of r.violations) console.log(`  VIOLATION ${v}`);
    }
  }
  console.log(
    `\nthroughput, crypto ${args.crypto}, seeds ${seeds[0]}..${seeds[seeds.length - 1]}, ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
  console.log(throughputTable(results));
  return results.some((r) => r.violations.length > 0) ? 1 : 0;
}

async function main(): Promise<void> {
  let args: Args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error((e as Error).message);
    process.exit(2);
  }
  const code = args.runtime
    ? runRuntimeCli(args)
    : args.throughput
      ? runThroughputs(args)
      : args.seed !== null
        ? replayOne(args, args.seed)
        : await runMany(args);
  process.exit(code);
}

await main();
