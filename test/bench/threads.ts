/**
 * Where each replica's CPU goes, thread by thread (run on purpose, not part of `npm test`):
 *
 *   npx bun test/bench/threads.ts [--events N] [--rate R] [--threads T] [--ordering-thread on|off] [--ftl on|off] [--class C] [--json] [--help]
 *
 * Starts four replicas on 127.0.0.1 with `--threads T` verification threads (and with
 * `--ordering-thread on`, the ordering core on a thread of its own), creates one
 * channel of CLASS C, runs the real `fitb bench` workload on it (N events of 200 bytes, as
 * fast as acknowledgements allow or at R events/s, where per-seq costs weigh more),
 * and reads every replica thread's CPU time from /proc/PID/task/TID/stat before and after.
 * It prints, per replica, the CPU µs per delivered event of the main thread (sockets,
 * ordering core, storage, execution, fan-out: one event loop), of the ordering thread, of the verification threads
 * and of the runtime's own threads (garbage collector and JIT helpers), and then what the
 * figures bound:
 *
 * - on this machine every thread of the four replicas, bench and its subscriber shares
 *   the same cores, so the cores' time divided by the replicas' CPU per event is what the
 *   replicas alone would allow here;
 * - on hosts of their own with a core per thread, a replica's events/s is bounded by its
 *   busiest thread: 1,000,000 / (that thread's µs per event). The main thread is the one
 *   that does not split across cores; the verification threads do, up to `--threads`.
 *
 * A benchmark: it prints figures and judges nothing; every process it starts is killed on
 * every way out, and the run is bounded in time.
 */
import { readdirSync, readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { loadPublicKeyFile } from "../../src/crypto/keys.ts";
import { ORDERING_THREAD_NAME } from "../../src/replica/ordering-host.ts";
import { clientFor } from "../integration/client-util.ts";
import { benchArgv, startCluster, type TestCluster } from "../integration/harness.ts";
import { optionsOrExit, stopOnSignalsAndDeadline } from "../helpers/program.ts";

const CLASSES = {
  "byzantine/total": { fault: "byzantine", order: "total" },
  "byzantine/none": { fault: "byzantine", order: "none" },
  "crash/total": { fault: "crash", order: "total" },
  "crash/none": { fault: "crash", order: "none" },
} as const;
type ClassName = keyof typeof CLASSES;

const TAG = "threads.bench";
const EVENT_BYTES = 200;
const EVENTS_DEFAULT = 100_000;
const BENCH_MS_MAX = 300_000;
const RUN_MS_MAX = 600_000;
/** USER_HZ: clock ticks per second in /proc stat files on every common Linux build. */
const CLOCK_TICKS_PER_SECOND = 100;

export const USAGE = [
  "usage: npx bun test/bench/threads.ts [--events N] [--rate R] [--threads T] [--ordering-thread on|off] [--ftl on|off] [--class C] [--json] [--help]",
  "",
  "Runs fitb bench on 4 local replicas and prints each replica's CPU per delivered event,",
  "thread by thread (main event loop, verification threads, runtime threads), and the",
  "throughput those figures allow here and with a core per thread.",
  `  --events N   events of ${EVENT_BYTES} B (default ${EVENTS_DEFAULT}, 1000..10000000)`,
  "  --rate R     offer R events/s (fitb bench --rate; default: as fast as acknowledgements allow; the warm-up runs unpaced)",
  "  --threads T  the replicas' --threads (verification threads, 0..8; default: the replica's own default)",
  "  --ordering-thread on|off  the replicas' --ordering-thread (default: the replica's own default)",
  "  --ftl on|off the replicas' --ftl, the runtime's top compiler tier (default: the replica's own default, off)",
  `  --class C    the channel's CLASS: ${Object.keys(CLASSES).join(", ")} (default byzantine/total)`,
  "  --json       one JSON object instead of the tables",
].join("\n");

export interface Options {
  readonly events: number;
  /** fitb bench --rate for the measured run, or null: as fast as acknowledgements allow. */
  readonly rate: number | null;
  readonly threads: number | null;
  /** The replicas' --ordering-thread, or null: their default. */
  readonly orderingThread: "on" | "off" | null;
  /** The replicas' --ftl, or null: their default. */
  readonly ftl: "on" | "off" | null;
  readonly className: ClassName;
  readonly json: boolean;
  readonly help: boolean;
}

export function parseOptions(argv: readonly string[]): Options | string {
  let events = EVENTS_DEFAULT;
  let rate: number | null = null;
  let threads: number | null = null;
  let orderingThread: "on" | "off" | null = null;
  let ftl: "on" | "off" | null = null;
  let className: ClassName = "byzantine/total";
  let json = false;
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--json") json = true;
    else if (arg === "--help" || arg === "-h") help = true;
    else if (arg === "--events") {
      const value = Number(argv[++i]);
      if (!Number.isInteger(value) || value < 1_000 || value > 10_000_000) return "--events: an integer in 1000..10000000";
      events = value;
    } else if (arg === "--rate") {
      const value = Number(argv[++i]);
      if (!Number.isInteger(value) || value < 1 || value > 10_000_000) return "--rate: an integer in 1..10000000";
      rate = value;
    } else if (arg === "--threads") {
      const value = Number(argv[++i]);
      if (!Number.isInteger(value) || value < 0 || value > 8) return "--threads: an integer in 0..8";
      threads = value;
    } else if (arg === "--ordering-thread") {
      const value = argv[++i];
      if (value !== "on" && value !== "off") return "--ordering-thread: on or off";
      orderingThread = value;
    } else if (arg === "--ftl") {
      const value = argv[++i];
      if (value !== "on" && value !== "off") return "--ftl: on or off";
      ftl = value;
    } else if (arg === "--class") {
      const value = argv[++i];
      if (value === undefined || !(value in CLASSES)) return `--class: one of ${Object.keys(CLASSES).join(", ")}`;
      className = value as ClassName;
    } else return `unknown argument ${arg}`;
  }
  return { events, rate, threads, orderingThread, ftl, className, json, help };
}

// ---------------------------------------------------------------------------------------
// Threads and their CPU
// ---------------------------------------------------------------------------------------

/** What a thread is, from its name and whether it is the process's first thread. */
export type ThreadRole = "main" | "ordering" | "verify" | "runtime";

export interface ThreadCpu {
  readonly tid: number;
  readonly name: string;
  /** CPU seconds (user + system). */
  readonly seconds: number;
}

/** Every thread of `pid` with its name and CPU seconds; [] when the process is gone. */
export function threadsOf(pid: number): ThreadCpu[] {
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return [];
  }
  const threads: ThreadCpu[] = [];
  for (const tid of tids) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      threads.push({ tid: Number(tid), name: readFileSync(`/proc/${pid}/task/${tid}/comm`, "utf8").trim(), seconds: statSeconds(stat) });
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return threads;
}

/** utime + stime of a /proc stat line, in seconds (fields 14 and 15; the name may hold spaces). */
export function statSeconds(stat: string): number {
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
}

/**
 * The role of a thread: the process's first thread runs the event loop; the ordering
 * thread names itself (src/replica/ordering-worker.ts); Bun names the thread of every other
 * Worker "Worker" (the replica's other workers are its verification threads); everything
 * else is the runtime's own (JIT, GC helpers, the I/O pool).
 */
export function roleOf(thread: ThreadCpu, pid: number): ThreadRole {
  if (thread.tid === pid) return "main";
  if (thread.name === ORDERING_THREAD_NAME) return "ordering";
  return thread.name === "Worker" ? "verify" : "runtime";
}

export interface RoleCpu {
  main: number;
  ordering: number;
  verify: number;
  runtime: number;
  /** Each verification thread's own seconds (the busiest bounds them on separate cores). */
  verifyThreads: number[];
  /** Runtime threads by name, seconds. */
  runtimeByName: Record<string, number>;
}

/** CPU seconds by role between two readings of one process (threads new in `after` count from 0). */
export function cpuByRole(before: readonly ThreadCpu[], after: readonly ThreadCpu[], pid: number): RoleCpu {
  const start = new Map(before.map((t) => [t.tid, t.seconds]));
  const result: RoleCpu = { main: 0, ordering: 0, verify: 0, runtime: 0, verifyThreads: [], runtimeByName: {} };
  for (const thread of after) {
    const seconds = Math.max(0, thread.seconds - (start.get(thread.tid) ?? 0));
    const role = roleOf(thread, pid);
    result[role] += seconds;
    if (role === "verify") result.verifyThreads.push(seconds);
    if (role === "runtime") result.runtimeByName[thread.name] = (result.runtimeByName[thread.name] ?? 0) + seconds;
  }
  return result;
}

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

function progress(text: string): void {
  process.stderr.write(`threads: ${text}\n`);
}

interface BenchJson {
  readonly delivered: number;
  readonly seconds: number;
  readonly delivered_per_s: number;
  readonly p50_ms: number;
  readonly p99_ms: number;
}

async function runBench(cluster: TestCluster, events: number, rate: number | null = null): Promise<BenchJson> {
  const argv = benchArgv(cluster, TAG, events, EVENT_BYTES);
  if (rate !== null) argv.push("--rate", String(rate));
  const proc = Bun.spawn(argv, { stdout: "pipe", stderr: "inherit" });
  const timer = setTimeout(() => proc.kill("SIGKILL"), BENCH_MS_MAX);
  const [stdout, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
  clearTimeout(timer);
  const line = stdout
    .trim()
    .split("\n")
    .findLast((l) => l.startsWith("{"));
  if (line === undefined) throw new Error(`fitb bench gave no result (exit ${code})`);
  return JSON.parse(line) as BenchJson;
}

interface ReplicaFigures {
  readonly replica: number;
  readonly mainUs: number;
  readonly orderingUs: number;
  readonly verifyUs: number;
  readonly busiestVerifyUs: number;
  readonly verifyThreads: number;
  readonly runtimeUs: number;
  readonly runtimeTop: string;
}

const usPerEvent = (seconds: number, events: number): number => (events === 0 ? 0 : Math.round((seconds * 1e7) / events) / 10);

async function main(): Promise<void> {
  const options = optionsOrExit(parseOptions(process.argv.slice(2)), USAGE);
  const threadArgs = [
    ...(options.threads === null ? [] : ["--threads", String(options.threads)]),
    ...(options.orderingThread === null ? [] : ["--ordering-thread", options.orderingThread]),
    ...(options.ftl === null ? [] : ["--ftl", options.ftl]),
  ];
  progress(`starting 4 replicas${threadArgs.length === 0 ? "" : ` with ${threadArgs.join(" ")}`}`);
  const cluster = await startCluster({ replicaArgs: () => threadArgs });
  const stop = (code: number, why: string): never => {
    progress(why);
    for (const proc of cluster.procs) proc?.kill("SIGKILL");
    process.exit(code);
  };
  const deadline = stopOnSignalsAndDeadline(stop, RUN_MS_MAX, "the replicas");
  try {
    const admin = clientFor(cluster, cluster.adminKey);
    const cls = CLASSES[options.className];
    await admin.admin({ t: "create-channel", tag: TAG, fault: cls.fault, order: cls.order, priority: "normal", public: true });
    await admin.admin({ t: "register", tag: TAG, role: "publisher", key: loadPublicKeyFile(`${cluster.clientKey}.pub`) });
    admin.close();
    const pids = cluster.procs.map((p) => p?.pid as number);
    progress(`warm-up: ${Math.min(10_000, options.events)} events`);
    await runBench(cluster, Math.min(10_000, options.events));
    const before = pids.map(threadsOf);
    const wallStart = performance.now();
    const paced = options.rate === null ? "" : ` at ${options.rate} ev/s`;
    progress(`bench: ${options.events} events of ${EVENT_BYTES} B on a ${options.className} channel${paced}`);
    const bench = await runBench(cluster, options.events, options.rate);
    const wallSeconds = (performance.now() - wallStart) / 1_000;
    const after = pids.map(threadsOf);
    const replicas: ReplicaFigures[] = pids.map((pid, replica) => {
      const cpu = cpuByRole(before[replica] ?? [], after[replica] ?? [], pid);
      const top = Object.entries(cpu.runtimeByName)
        .sort((a, b) => b[1] - a[1])
        .slice(0, 2)
        .map(([name, s]) => `${name} ${usPerEvent(s, bench.delivered)}`)
        .join(", ");
      return {
        replica,
        mainUs: usPerEvent(cpu.main, bench.delivered),
        orderingUs: usPerEvent(cpu.ordering, bench.delivered),
        verifyUs: usPerEvent(cpu.verify, bench.delivered),
        busiestVerifyUs: usPerEvent(Math.max(0, ...cpu.verifyThreads), bench.delivered),
        verifyThreads: cpu.verifyThreads.length,
        runtimeUs: usPerEvent(cpu.runtime, bench.delivered),
        runtimeTop: top,
      };
    });
    const cores = availableParallelism();
    const allUs = replicas.reduce((sum, r) => sum + r.mainUs + r.orderingUs + r.verifyUs + r.runtimeUs, 0);
    const hereBound = allUs === 0 ? 0 : Math.round((cores * 1e6) / allUs);
    const busiestMain = Math.max(...replicas.map((r) => r.mainUs));
    const busiestOrdering = Math.max(...replicas.map((r) => r.orderingUs));
    const busiestVerify = Math.max(...replicas.map((r) => r.busiestVerifyUs));
    const ownHostsBound = Math.round(1e6 / Math.max(busiestMain, busiestOrdering, busiestVerify, 0.001));
    const inlineHostsBound = Math.round(1e6 / Math.max(...replicas.map((r) => r.mainUs + r.orderingUs + r.verifyUs), 0.001));
    const figures = {
      class: options.className,
      events: options.events,
      rate: options.rate,
      delivered: bench.delivered,
      delivered_per_s: bench.delivered_per_s,
      p50_ms: bench.p50_ms,
      p99_ms: bench.p99_ms,
      wall_s: Math.round(wallSeconds * 10) / 10,
      cores,
      replicas,
      bound_here_per_s: hereBound,
      bound_core_per_thread_per_s: ownHostsBound,
      bound_one_thread_per_replica_per_s: inlineHostsBound,
    };
    if (options.json) console.log(JSON.stringify(figures, null, 2));
    else {
      console.log(
        `${options.className}, ${bench.delivered} of ${options.events} events delivered${paced}, ${bench.delivered_per_s} ev/s (p50 ${bench.p50_ms} ms, p99 ${bench.p99_ms} ms), on ${cores} cores`,
      );
      console.log("");
      console.log(
        "| replica | main thread µs/ev | ordering thread µs/ev | verify threads µs/ev (busiest) | runtime threads µs/ev | top runtime threads |",
      );
      console.log(
        "|--------:|------------------:|----------------------:|-------------------------------:|----------------------:|---------------------|",
      );
      for (const r of replicas) {
        console.log(
          `| ${r.replica} | ${r.mainUs} | ${r.orderingUs} | ${r.verifyUs} (${r.busiestVerifyUs}, ${r.verifyThreads} threads) | ${r.runtimeUs} | ${r.runtimeTop || "-"} |`,
        );
      }
      console.log("");
      console.log(`the replicas' CPU alone would allow ${hereBound} ev/s on these ${cores} cores (bench and subscriber not counted)`);
      console.log(
        `with a core per thread, the busiest thread allows ${ownHostsBound} ev/s (main ${busiestMain}, ordering ${busiestOrdering}, verify ${busiestVerify} µs/ev)`,
      );
      console.log(`with verification on the main thread, a core per replica (from these figures): ${inlineHostsBound} ev/s`);
    }
  } finally {
    clearTimeout(deadline);
    await cluster.stop();
  }
  process.exit(0);
}

if (import.meta.main) await main();
