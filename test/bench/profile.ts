/**
 * Where a replica's time goes under `fitb bench` (run on purpose, not part of `npm test`):
 *
 *   npx bun test/bench/profile.ts [--class CLASS|all] [--events N] [--rate R] [--subscribers S] [--top K] [--threads N] [--sync MODE] [--keep DIR] [--json] [--help]
 *
 * For each CLASS: four replicas from source, each under Bun's sampling profiler
 * (`bun --cpu-prof`, one sample a millisecond of the main thread), one channel of that
 * CLASS, and the real `fitb bench` workload on it (N events of 200 bytes, one publisher, one
 * subscriber, as fast as acknowledgements allow). Then the replicas get SIGTERM and stop
 * cleanly, which writes each one's .cpuprofile, and the program counts the samples taken
 * while the bench ran (the profile's clock is the wall clock) by group (ed25519, hashing,
 * HMAC, CBOR, validation, sockets, storage, ordering core, channel machine, fan-out, ...)
 * for the leader (replica 0) and one follower (replica 1).
 *
 * Client signatures are verified on the replica's verification threads (`--threads`,
 * default the cores but one); the profiler samples the main thread only, so the verify
 * work of those threads is not in the table (the main thread's share of ed25519 is). With
 * `--threads 0` everything runs on the main thread and is in the table.
 *
 * "share %" is the group's share of those samples. Removing a group of share X would make the
 * thread at most 1/(1-X) faster, which bounds throughput only where that thread is the
 * bottleneck; the program prints that bound beside each group.
 *
 * JavaScriptCore's sampler takes the thread's stack whether it is on a CPU or blocked in a
 * call (a blocking fsync inside SQLite's COMMIT is sampled as `run`), and takes nothing while
 * the event loop waits: samples are the time the thread was busy or blocked, not CPU time.
 * `fsyncCb` (the group commit starting its fsync off the loop, storage/disk.ts) is such a
 * blocked call: the call only hands the fsync to Bun's thread pool, which took 13-25 µs
 * for one process alone here, but 225-311 µs on average (up to 12 ms) per call with four
 * replicas under load on two cores. strace shows the caller's futex wake of the pool
 * taking hundreds of µs there: most likely the woken pool thread takes the caller's core
 * (the fsync's own kernel work, about 130 µs of CPU, runs on it).
 * JavaScriptCore collects garbage on the thread that allocates, so GC counts for the
 * function that allocated (there is no GC node in Bun's profiles).
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { clientFor, createChannels } from "../integration/client-util.ts";
import { BUN, MAIN, startCluster, type TestCluster } from "../integration/harness.ts";
import {
  eachLine,
  FITB_CLASSES,
  type ClassName,
  killAll,
  type Options as PeersOptions,
  progress,
  setProgressName,
  runFitbBench,
  tagOf,
  track,
  trackDir,
  UNLIMITED_CLIENT,
} from "./peers.ts";
import { optionsOrExit, stopOnSignalsAndDeadline } from "../helpers/program.ts";

// ---------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------

const EVENTS_DEFAULT = 100_000;
const TOP_DEFAULT = 10;
/** The replicas profiled: the leader of view 0 and one follower. */
const PROFILED = [0, 1] as const;
const STOP_MS_MAX = 30_000;
const READY_MS_MAX = 30_000;
/** Starts of one replica killed by SIGPWR under the profiler before it gives up (see profileClass). */
const SIGPWR_STARTS_MAX = 5;
/** How long the output of a replica that exited is read before its last lines are reported. */
const OUTPUT_DRAIN_MS_MAX = 1_000;
const PROGRAM_MS_MAX = 30 * 60_000;

export interface Options {
  readonly classes: readonly ClassName[];
  readonly events: number;
  /** The bench's offered rate (ev/s), or null: as fast as acknowledgements allow. */
  readonly rate: number | null;
  /** Subscribers of the bench's channel (fitb bench --subscribers). */
  readonly subscribers: number;
  readonly top: number;
  readonly threads: number | null;
  readonly sync: "full" | "normal" | null;
  readonly keep: string | null;
  readonly json: boolean;
  readonly help: boolean;
}

export const USAGE = [
  "usage: npx bun test/bench/profile.ts [--class CLASS|all] [--events N] [--rate R] [--subscribers S] [--top K] [--threads N] [--sync MODE] [--keep DIR] [--json] [--help]",
  "",
  "Profiles 4 local replicas (bun --cpu-prof) while fitb bench runs on a channel of CLASS,",
  "stops them cleanly and prints, for the leader (replica 0) and a follower (replica 1),",
  "the share of its main thread's samples by group: ed25519, hashing, HMAC, CBOR, validation,",
  "sockets, storage commit and append, ordering core, channel machine, fan-out, ...",
  `  --class CLASS  one of ${FITB_CLASSES.join(", ")}, or all (default)`,
  `  --events N     events in the bench run (default ${EVENTS_DEFAULT})`,
  "  --rate R       offer R events/s in total (fitb bench --rate; default: as fast as acknowledgements allow)",
  "  --subscribers S  subscribers of the bench's channel (fitb bench --subscribers; default 1): the cost of fan-out",
  `  --top K        groups per table (default ${TOP_DEFAULT}), and as many top functions`,
  "  --threads N    the replicas' --threads (default: theirs, the cores but one); 0 puts signature checks on the profiled thread",
  "  --sync MODE    the replicas' --sync (full, their default, or normal: no fsync at each commit)",
  "  --keep DIR     keep the .cpuprofile files in DIR/<class>/ (open them in Chrome's DevTools)",
  "  --json         one JSON object instead of the tables",
].join("\n");

export function parseOptions(argv: readonly string[]): Options | string {
  let classes: readonly ClassName[] = FITB_CLASSES;
  let events = EVENTS_DEFAULT;
  let top = TOP_DEFAULT;
  let rate: number | null = null;
  let subscribers = 1;
  let threads: number | null = null;
  let keep: string | null = null;
  let sync: Options["sync"] = null;
  let json = false;
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--json") json = true;
    else if (arg === "--help" || arg === "-h") help = true;
    else if (arg === "--class") {
      const name = argv[++i];
      if (name === "all") classes = FITB_CLASSES;
      else {
        const found = FITB_CLASSES.find((c) => c === name);
        if (found === undefined) return `--class: one of ${FITB_CLASSES.join(", ")} or all, got ${name ?? "nothing"}`;
        classes = [found];
      }
    } else if (arg === "--rate") {
      const text = argv[++i];
      const value = Number(text);
      if (!Number.isInteger(value) || value < 1 || value > 10_000_000) return `--rate: an integer in 1..10000000, got ${text ?? "nothing"}`;
      rate = value;
    } else if (arg === "--subscribers") {
      const text = argv[++i];
      const value = Number(text);
      if (!Number.isInteger(value) || value < 1 || value > 1_000) return `--subscribers: an integer in 1..1000, got ${text ?? "nothing"}`;
      subscribers = value;
    } else if (arg === "--events" || arg === "--top" || arg === "--threads") {
      const text = argv[++i];
      const value = Number(text);
      const [min, max] = arg === "--events" ? [100, 10_000_000] : arg === "--top" ? [1, 100] : [0, 8];
      if (!Number.isInteger(value) || value < (min as number) || value > (max as number))
        return `${arg}: an integer in ${min}..${max}, got ${text ?? "nothing"}`;
      if (arg === "--events") events = value;
      else if (arg === "--top") top = value;
      else threads = value;
    } else if (arg === "--sync") {
      const mode = argv[++i];
      if (mode !== "full" && mode !== "normal") return `--sync: full or normal, got ${mode ?? "nothing"}`;
      sync = mode;
    } else if (arg === "--keep") {
      const dir = argv[++i];
      if (dir === undefined || dir.startsWith("--")) return "--keep: a directory is missing";
      keep = dir;
    } else return `unknown argument ${arg}`;
  }
  return { classes, events, rate, subscribers, top, threads, sync, keep, json, help };
}

// ---------------------------------------------------------------------------------------
// The profile and its groups
// ---------------------------------------------------------------------------------------

/** The parts of a .cpuprofile (Chrome DevTools' format, which Bun writes) read here. */
export interface CpuProfile {
  readonly nodes: readonly {
    readonly id: number;
    readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber?: number };
    readonly children?: readonly number[];
  }[];
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
  readonly startTime: number;
  readonly endTime: number;
}

/**
 * Groups, first match wins. A sample is put in a group by its leaf function's name (`fn`)
 * and by the source (`url`, relative to the repository or a package) of the nearest frame
 * on its stack that is fitb's or a package's code: a native leaf (SQLite's `run`, a
 * hasher's `update`, a socket's `write`, `slice`, ...) counts for the code that called it.
 */
export const GROUPS: readonly { readonly name: string; readonly test: (fn: string, url: string, caller: string) => boolean }[] = [
  { name: "GC", test: (fn) => fn === "(garbage collector)" || fn === "(garbage collection)" },
  {
    name: "ed25519 verify/sign",
    test: (fn, url) => url.includes("@noble/ed25519") || url.endsWith("src/crypto/ed25519.ts") || /^(verify|sign)$/.test(fn),
  },
  { name: "HMAC", test: (fn, url) => /^hmac$/i.test(fn) || url.includes("/hmac") || url.endsWith("src/crypto/session.ts") },
  {
    name: "hashing",
    test: (fn, url) =>
      url.includes("@noble/hashes") || url.endsWith("src/crypto/hash.ts") || /^(digest|update|Hash|CryptoHasher)$/.test(fn),
  },
  { name: "CBOR encode/decode", test: (_fn, url) => url.includes("cbor-x") || url.endsWith("wire/canonical.ts") },
  {
    name: "validation",
    test: (_fn, url) =>
      url.includes("zod/") || url.endsWith("wire/schemas.ts") || url.endsWith("wire/assert.ts") || url.endsWith("wire/hot.ts"),
  },
  {
    name: "socket write/read",
    test: (fn, url) => url.endsWith("src/net/write-queue.ts") || /^(write|end|cork|flush|read)$/.test(fn),
  },
  {
    // SQLite's BEGIN and COMMIT, run by Database.transaction: the commit's fsync (--sync full) is here.
    name: "storage commit (fsync)",
    test: (fn, url, caller) => fn === "run" && url.endsWith("src/replica/storage/store.ts") && caller === "transaction",
  },
  { name: "storage append", test: (fn, url) => url.includes("src/replica/storage/") || /^(run|step|exec|fsync|fsyncSync)$/.test(fn) },
  {
    name: "framing, sessions",
    test: (_fn, url) => url.endsWith("wire/frame.ts") || url.endsWith("wire/session.ts") || url.endsWith("src/replica/framed.ts"),
  },
  { name: "ordering core", test: (_fn, url) => url.includes("src/core/ordering/") || url.endsWith("src/replica/ordering-driver.ts") },
  { name: "channel machine", test: (_fn, url) => url.includes("src/core/channels/") || url.includes("src/core/voting/") },
  { name: "fan-out", test: (_fn, url) => url.endsWith("src/replica/subscriptions.ts") || url.endsWith("src/replica/server.ts") },
  { name: "peer links", test: (_fn, url) => /src\/replica\/(peers|peer-inbox|peer-messages|peer-filter|forwards)\.ts$/.test(url) },
  {
    name: "admission, requests, execution",
    test: (_fn, url) =>
      /src\/replica\/(admission|requests|execution-gate|quota|rate|waiting|replica|state-transfer|sys-channels|audit)\.ts$/.test(url),
  },
  {
    name: "metrics, logs",
    test: (_fn, url) => /src\/(replica\/(metrics|channel-metrics|log)\.ts|metrics\/)/.test(url) || url.includes("prom-client"),
  },
  { name: "verify threads (main side)", test: (_fn, url) => url.includes("src/threads/") },
  { name: "other fitb code", test: (_fn, url) => url.startsWith("src/") || url.startsWith("wire/") },
  { name: "runtime (no fitb frame on the stack)", test: () => true },
];

export interface GroupShare {
  readonly group: string;
  /** Samples (one a millisecond of the thread running). */
  readonly samples: number;
  /** Share of the samples, 0..1. */
  readonly share: number;
  /** The most the thread could speed up if this group cost nothing: 1/(1-share). */
  readonly speedupMax: number;
}

export interface FunctionShare {
  readonly fn: string;
  /** Where it is, or for a native function, which code called it ("in ..."). */
  readonly where: string;
  readonly group: string;
  readonly samples: number;
  readonly share: number;
}

export interface ProfileSummary {
  /** Samples in the window (one a millisecond of the thread running JavaScript or native code). */
  readonly samples: number;
  /** Samples of the whole process, startup included. */
  readonly samplesAll: number;
  readonly windowSeconds: number;
  readonly groups: readonly GroupShare[];
  readonly functions: readonly FunctionShare[];
}

/** A source path without the machine's directories: from src/, wire/ or the package on. */
export function shortUrl(url: string): string {
  const modules = url.lastIndexOf("/node_modules/");
  if (modules >= 0) return url.slice(modules + "/node_modules/".length);
  const at = url.search(/\/(src|wire)\//);
  return at < 0 ? url : url.slice(at + 1);
}

/** Code of fitb or of a package: the frames a sample is attributed to. */
function isCode(url: string): boolean {
  return url.includes("/node_modules/") || /\/(src|wire)\//.test(url);
}

export function groupOf(fn: string, url: string, caller: string): string {
  return (GROUPS.find((g) => g.test(fn, url, caller)) as (typeof GROUPS)[number]).name;
}

/**
 * Samples per group and per function of a profile, from `fromUs` to `toUs` (the profile's
 * clock: µs since the epoch); the whole profile when they are null.
 */
export function summarize(profile: CpuProfile, top: number, fromUs: number | null = null, toUs: number | null = null): ProfileSummary {
  const nodes = new Map(profile.nodes.map((node) => [node.id, node]));
  const parents = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parents.set(child, node.id);
  /** Per leaf node: its group and the function it counts as (memoized). */
  const attribution = new Map<number, { group: string; fn: string; where: string }>();
  const attribute = (leafId: number): { group: string; fn: string; where: string } => {
    const known = attribution.get(leafId);
    if (known !== undefined) return known;
    const leaf = nodes.get(leafId)?.callFrame ?? { functionName: "(unknown)", url: "" };
    const fn = leaf.functionName === "" ? "(anonymous)" : leaf.functionName;
    let codeId: number | undefined = leafId;
    while (codeId !== undefined && !isCode(nodes.get(codeId)?.callFrame.url ?? "")) codeId = parents.get(codeId);
    const code = codeId === undefined ? null : (nodes.get(codeId)?.callFrame ?? null);
    const url = code === null ? "" : shortUrl(code.url);
    const line = code?.lineNumber === undefined || code.lineNumber < 0 ? "" : `:${code.lineNumber + 1}`;
    const where = code === null ? "" : `${codeId === leafId ? "" : `in ${code.functionName || "(anonymous)"} `}${url}${line}`;
    const result = { group: groupOf(fn, url, code?.functionName ?? ""), fn, where };
    attribution.set(leafId, result);
    return result;
  };
  const byGroup = new Map<string, number>();
  const byFunction = new Map<string, { fn: string; where: string; group: string; samples: number }>();
  let atUs = profile.startTime;
  let samples = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    atUs += profile.timeDeltas[i] ?? 0;
    if ((fromUs !== null && atUs < fromUs) || (toUs !== null && atUs > toUs)) continue;
    const { group, fn, where } = attribute(profile.samples[i] as number);
    samples++;
    byGroup.set(group, (byGroup.get(group) ?? 0) + 1);
    const key = `${fn} ${where}`;
    const entry = byFunction.get(key) ?? { fn, where, group, samples: 0 };
    entry.samples++;
    byFunction.set(key, entry);
  }
  const share = (count: number): number => (samples > 0 ? count / samples : 0);
  const groups = [...byGroup]
    .sort((a, b) => b[1] - a[1])
    .map(([group, count]) => ({
      group,
      samples: count,
      share: share(count),
      speedupMax: share(count) < 1 ? 1 / (1 - share(count)) : Number.POSITIVE_INFINITY,
    }));
  const functions = [...byFunction.values()]
    .sort((a, b) => b.samples - a.samples)
    .slice(0, top)
    .map((f) => ({ ...f, share: share(f.samples) }));
  const windowSeconds = ((toUs ?? profile.endTime) - (fromUs ?? profile.startTime)) / 1e6;
  return { samples, samplesAll: profile.samples.length, windowSeconds, groups, functions };
}

/** The groups of one replica as a Markdown table. */
export function formatGroups(summary: ProfileSummary, top: number): string {
  const rows = summary.groups
    .slice(0, top)
    .map((g) => [g.group, String(g.samples), (100 * g.share).toFixed(1), `${g.speedupMax.toFixed(2)}x`]);
  return markdown(["group", "samples", "share %", "at most x faster without it"], rows, [1, 2, 3]);
}

export function formatFunctions(summary: ProfileSummary): string {
  const rows = summary.functions.map((f) => [f.fn, f.where, f.group, String(f.samples), (100 * f.share).toFixed(1)]);
  return markdown(["function", "where (a native one: the code that called it)", "group", "samples", "share %"], rows, [3, 4]);
}

function markdown(header: readonly string[], rows: readonly (readonly string[])[], numeric: readonly number[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] as string).length)));
  const line = (values: readonly string[]): string =>
    `| ${values.map((v, i) => (numeric.includes(i) ? v.padStart(widths[i] as number) : v.padEnd(widths[i] as number))).join(" | ")} |`;
  const rule = `|${widths.map((w, i) => (numeric.includes(i) ? `${"-".repeat(w + 1)}:` : "-".repeat(w + 2))).join("|")}|`;
  return [line(header), rule, ...rows.map(line)].join("\n");
}

// ---------------------------------------------------------------------------------------
// One CLASS
// ---------------------------------------------------------------------------------------

export interface ClassProfile {
  readonly className: ClassName;
  readonly bench: { delivered_per_s: number; seconds: number; p99_ms: number; cpu_us_per_event: readonly (number | null)[] } | null;
  readonly benchError: string | null;
  /** By replica id: the summary of its profile, or why there is none. */
  readonly replicas: readonly {
    readonly id: number;
    readonly summary: ProfileSummary | null;
    /** CPU seconds of the replica's threads during the bench, by kind (main, verify threads, GC helpers, JIT, other). */
    readonly threadCpu: Record<string, number> | null;
    readonly error: string | null;
  }[];
}

/** CPU seconds of each thread of a process by kind (Linux /proc/PID/task), or null. */
export function threadCpu(pid: number): Map<string, number> | null {
  const kinds = new Map<string, number>();
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const seconds = (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
      const kind = Number(tid) === pid ? "main" : threadKind(comm);
      kinds.set(kind, (kinds.get(kind) ?? 0) + seconds);
    }
    return kinds;
  } catch {
    return null;
  }
}

/** What a thread of a Bun process does, by its name. */
function threadKind(comm: string): string {
  if (comm === "Worker") return "verify threads";
  if (comm.startsWith("HeapHelper") || comm.includes("Heap") || comm.includes("GC")) return "GC helpers";
  if (comm.startsWith("JIT")) return "JIT";
  return "other";
}

/** Linux's clock ticks per second in /proc (USER_HZ, 100 on every common build). */
const CLOCK_TICKS_PER_SECOND = 100;

function cpuBetween(before: Map<string, number> | null, after: Map<string, number> | null): Record<string, number> | null {
  if (before === null || after === null) return null;
  const result: Record<string, number> = {};
  for (const [kind, seconds] of after) result[kind] = Math.round((seconds - (before.get(kind) ?? 0)) * 100) / 100;
  return result;
}

/**
 * Waits for a line containing `needle`; false at the timeout, or once the process has
 * exited without it (after its output has been read to the end, `outputRead`, or a second).
 */
async function waitForLine(
  lines: string[],
  needle: string,
  timeoutMs: number,
  exited?: { readonly proc: Subprocess; readonly outputRead: Promise<unknown> },
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  let pauseMs = 10;
  while (Date.now() < deadline) {
    if (lines.some((line) => line.includes(needle))) return true;
    if (exited !== undefined && (exited.proc.exitCode !== null || exited.proc.signalCode !== null)) {
      await Promise.race([exited.outputRead, Bun.sleep(OUTPUT_DRAIN_MS_MAX)]);
      return lines.some((line) => line.includes(needle));
    }
    await Bun.sleep(pauseMs);
    pauseMs = Math.min(pauseMs * 2, 200);
  }
  return false;
}

async function profileClass(className: ClassName, options: Options, index: number): Promise<ClassProfile> {
  const label = `[${index + 1}/${options.classes.length}] ${className}`;
  const cluster: TestCluster = await startCluster({ start: false, limits: UNLIMITED_CLIENT });
  const profileDir = join(options.keep ?? join(tmpdir(), `fitb-profile-${process.pid}`), className.replace("/", "-"));
  rmSync(profileDir, { recursive: true, force: true });
  mkdirSync(profileDir, { recursive: true });
  trackDir(cluster.dir);
  if (options.keep === null) trackDir(profileDir);
  const procs: Subprocess[] = [];
  const logs: string[][] = [];
  try {
    progress(`${label}: starting 4 replicas under bun --cpu-prof`);
    const spawnProfiled = (id: number): { proc: Subprocess; lines: string[]; outputRead: Promise<unknown> } => {
      const argv = [BUN, "--cpu-prof", `--cpu-prof-dir=${profileDir}`, `--cpu-prof-name=replica-${id}.cpuprofile`, MAIN, "replica"];
      argv.push("--config", cluster.configPath, "--id", String(id));
      if (options.threads !== null) argv.push("--threads", String(options.threads));
      if (options.sync !== null) argv.push("--sync", options.sync);
      const proc = track(Bun.spawn(argv, { stdin: "ignore", stdout: "pipe", stderr: "pipe", env: { ...process.env, FITB_LOG: "info" } }));
      const lines: string[] = [];
      const sink = (line: string): void => {
        lines.push(line);
        if (lines.length > 2_000) lines.splice(0, 1_000);
      };
      const outputRead = Promise.all([eachLine(proc.stdout, sink), eachLine(proc.stderr, sink)]).catch(() => {});
      return { proc, lines, outputRead };
    };
    const outputs: Promise<unknown>[] = [];
    for (let id = 0; id < cluster.n; id++) {
      const { proc, lines, outputRead } = spawnProfiled(id);
      procs.push(proc);
      logs.push(lines);
      outputs.push(outputRead);
    }
    for (let id = 0; id < cluster.n; id++) {
      for (let attempt = 1; ; attempt++) {
        const proc = procs[id] as Subprocess;
        const lines = logs[id] as string[];
        if (await waitForLine(lines, '"msg":"replica started"', READY_MS_MAX, { proc, outputRead: outputs[id] as Promise<unknown> })) break;
        // Bun's sampling profiler stops the main thread with SIGPWR, the signal its garbage
        // collector suspends threads with; one that arrives before the runtime has installed
        // its handler kills the process by the signal's default action, before it has printed
        // anything (about one replica start in ten here). Such a start is tried again.
        if (proc.signalCode === "SIGPWR" && attempt < SIGPWR_STARTS_MAX) {
          progress(`${label}: replica ${id} was killed by SIGPWR while starting under the profiler; starting it again`);
          const again = spawnProfiled(id);
          procs[id] = again.proc;
          logs[id] = again.lines;
          outputs[id] = again.outputRead;
          continue;
        }
        const how =
          proc.exitCode !== null || proc.signalCode !== null
            ? `exited (${proc.signalCode ?? `status ${proc.exitCode}`})`
            : `did not start within ${READY_MS_MAX / 1_000} s`;
        throw new Error(`replica ${id} ${how}: ${lines.slice(-3).join(" | ")}`);
      }
    }
    const admin = clientFor(cluster, cluster.adminKey);
    try {
      await createChannels(admin, loadSigningKeyFile(cluster.clientKey).key.publicKey);
    } finally {
      admin.close();
    }
    progress(`${label}: fitb bench, ${options.events} events of 200 B, ${options.subscribers} subscriber(s)`);
    const benchOptions: PeersOptions = {
      events: options.events,
      publishers: 1,
      size: 200,
      natsServer: null,
      json: true,
      help: false,
      subscribers: options.subscribers,
      ...(options.rate === null ? {} : { rate: options.rate }),
    };
    const cpuBefore = PROFILED.map((id) => threadCpu(procs[id]?.pid ?? -1));
    const benchStartMs = Date.now();
    const bench = await runFitbBench(cluster, tagOf(className), benchOptions, label);
    const benchEndMs = Date.now();
    const cpuAfter = PROFILED.map((id) => threadCpu(procs[id]?.pid ?? -1));
    if (!(bench instanceof Error))
      progress(`${label}: ${bench.delivered_per_s} ev/s in ${bench.seconds} s, p99 ${bench.p99_ms} ms; stopping the replicas (SIGTERM)`);
    for (const proc of procs) proc.kill("SIGTERM");
    const stopped = await Promise.race([
      Promise.all(procs.map((p) => p.exited)).then(() => true),
      Bun.sleep(STOP_MS_MAX).then(() => false),
    ]);
    if (!stopped) progress(`${label}: a replica did not stop within ${STOP_MS_MAX / 1_000} s of SIGTERM; its profile may be missing`);
    const replicas = PROFILED.map((id, index) => {
      const path = join(profileDir, `replica-${id}.cpuprofile`);
      if (!existsSync(path))
        return { id, summary: null, error: `no profile written (${readdirSync(profileDir).join(", ") || "none"})`, threadCpu: null };
      return {
        id,
        summary: summarize(JSON.parse(readFileSync(path, "utf8")) as CpuProfile, options.top, benchStartMs * 1_000, benchEndMs * 1_000),
        threadCpu: cpuBetween(cpuBefore[index] ?? null, cpuAfter[index] ?? null),
        error: null,
      };
    });
    return {
      className,
      bench: bench instanceof Error ? null : bench,
      benchError: bench instanceof Error ? bench.message : null,
      replicas,
    };
  } finally {
    for (const proc of procs) proc.kill("SIGKILL");
    await Promise.all(procs.map((p) => p.exited));
    await cluster.stop();
    if (options.keep === null) rmSync(profileDir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------

function printClass(result: ClassProfile, top: number): void {
  const b = result.bench;
  console.log(`## ${result.className}`);
  console.log("");
  console.log(
    b === null
      ? `bench: ${result.benchError}`
      : `bench: ${b.delivered_per_s} ev/s delivered over ${b.seconds} s, p99 ${b.p99_ms} ms, replica CPU µs/event ${b.cpu_us_per_event.map((v, id) => `r${id} ${v ?? "-"}`).join(", ")}`,
  );
  for (const replica of result.replicas) {
    const role = replica.id === 0 ? "leader" : "follower";
    console.log("");
    if (replica.summary === null) {
      console.log(`replica ${replica.id} (${role}): ${replica.error}`);
      continue;
    }
    const s = replica.summary;
    console.log(
      `replica ${replica.id} (${role}): ${s.samples} samples of its main thread during the ${s.windowSeconds.toFixed(1)} s of the bench (${s.samplesAll} over its life)`,
    );
    if (replica.threadCpu !== null)
      console.log(
        `CPU seconds during the bench by thread: ${Object.entries(replica.threadCpu)
          .map(([kind, seconds]) => `${kind} ${seconds}`)
          .join(", ")}`,
      );
    console.log("");
    console.log(formatGroups(s, top));
    console.log("");
    console.log(formatFunctions(s));
  }
  console.log("");
}

async function main(): Promise<void> {
  const options = optionsOrExit(parseOptions(process.argv.slice(2)), USAGE);
  setProgressName("profile");
  const bail = (code: number, why: string): never => {
    progress(why);
    killAll();
    process.exit(code);
  };
  const deadline = stopOnSignalsAndDeadline(bail, PROGRAM_MS_MAX);
  const results: ClassProfile[] = [];
  for (const [index, className] of options.classes.entries()) results.push(await profileClass(className, options, index));
  clearTimeout(deadline);
  if (options.json) console.log(JSON.stringify({ events: options.events, threads: options.threads, results }, null, 2));
  else for (const result of results) printClass(result, options.top);
  process.exit(0);
}

if (import.meta.main) await main();
