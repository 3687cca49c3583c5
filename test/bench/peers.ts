/**
 * fitb beside NATS (run on purpose, not part of `npm test`):
 *
 *   npm run bench:peers [-- --events N] [--publishers P] [--size BYTES] [--nats-server PATH] [--json] [--help]
 *
 * The same workload against fitb's four CLASSes and against nats-server (core pub/sub, and
 * JetStream with one replica and a file store), driven by Bun in both cases: N events of
 * 200 bytes from P publishers sharing one connection (each with the same bound on events
 * sent and not yet acknowledged), counted when one subscriber on its own connection
 * delivers them; each event carries its send time, so the subscriber measures
 * publish-to-delivery latency into the same histogram.
 *
 * - fitb: per CLASS, four fresh replicas of `bun src/cli/main.ts replica` on 127.0.0.1 (the
 *   cluster's defaults, `--sync full`), one channel per CLASS, and the real `fitb bench
 *   --json` on that CLASS's channel. The key's rate limit is raised out of the way, so the
 *   broker sets the figure.
 * - NATS, when nats-server is installed (Debian: `apt-get install nats-server`): one
 *   nats-server started here on a free loopback port with a fresh store directory, killed at
 *   the end. Core: publishes are fire-and-forget, so each publisher asks the server for a
 *   round trip (flush) every half window and never has more than a window unconfirmed.
 *   JetStream: a stream with one replica on the file store; each publish waits for its
 *   PubAck, at most a window unacknowledged per publisher; an ordered push consumer delivers.
 *   nats-server 2.9 syncs its file store to disk every 2 minutes, not before each PubAck
 *   (fitb replicas, `--sync full` by default, fsync before they acknowledge).
 *
 * "server CPU µs/event" is the CPU time of every server process (fitb: the four replicas,
 * from their status answers; NATS: the nats-server process, from /proc) over the run,
 * divided by the events delivered; "client CPU µs/event" that of the Bun process that
 * published and subscribed (fitb: the whole `fitb bench` process, its start and connecting
 * included; NATS: this program's process during the run). Without nats-server it says how to install it and runs
 * fitb alone. A benchmark is a program: it prints figures and never judges them. Every wait
 * is bounded, the whole run too; every process it started is killed on every way out.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { benchEvent, benchSentAt, LatencyHistogram } from "../../src/cli/commands/bench.ts";
import { CLASSES, startClusterWithChannels } from "../integration/client-util.ts";
import { BUN, freePortRange, MAIN, type TestCluster } from "../integration/harness.ts";
import { integerArgument, optionsOrExit, stopOnSignalsAndDeadline } from "../helpers/program.ts";

// ---------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------

export const EVENTS_DEFAULT = 100_000;
const EVENTS_MIN = 100;
const EVENTS_MAX = 10_000_000;
const SIZE_DEFAULT = 200;
const PUBLISHERS_MAX = 64;
/**
 * Events a publisher may have sent and not yet had acknowledged: what a fitb Publisher holds
 * with the cluster's defaults (4 requests of batch_events_max 1,024 in flight, and 4 more
 * batches queued behind them). The NATS publishers keep to the same bound.
 */
export const WINDOW_EVENTS = 8 * 1024;
/** A run is cut short (its figures from what arrived) past this. */
const RUN_MS_MAX = 180_000;
/** Deliveries are waited for this long after the last one before the run counts what it has. */
const DELIVERY_IDLE_MS = 10_000;
/** The whole program is stopped (everything killed, exit 1) past this. */
const PROGRAM_MS_MAX = 30 * 60_000;
const SERVER_READY_MS = 20_000;

export interface Options {
  readonly events: number;
  readonly publishers: number;
  readonly size: number;
  /** Events per second in total (`fitb bench --rate`); absent: as fast as acknowledgements allow. */
  readonly rate?: number;
  /** Subscribers of the channel in the fitb bench (its --subscribers; default 1). */
  readonly subscribers?: number;
  /** Where nats-server is, or null to look for it on PATH and in the sbin directories. */
  readonly natsServer: string | null;
  readonly json: boolean;
  readonly help: boolean;
}

export const USAGE = [
  "usage: npm run bench:peers -- [--events N] [--publishers P] [--size BYTES] [--nats-server PATH] [--json] [--help]",
  "",
  "Runs one workload (N events of BYTES bytes from P publishers, one subscriber, as fast as",
  "acknowledgements allow) against fitb's four CLASSes on 4 local replicas and, when",
  "nats-server is installed, against NATS core and JetStream (R1, file store) on a local",
  "nats-server; prints one table: delivered events/s, p50/p99 latency, server CPU per event.",
  `  --events N          events per run (default ${EVENTS_DEFAULT})`,
  "  --publishers P      concurrent publishers on one connection (default 1)",
  `  --size BYTES        bytes per event (default ${SIZE_DEFAULT})`,
  "  --nats-server PATH  the nats-server executable (default: found on PATH, /usr/sbin, /usr/local/sbin)",
  "  --json              one JSON object instead of the table",
].join("\n");

export function parseOptions(argv: readonly string[]): Options | string {
  let events = EVENTS_DEFAULT;
  let publishers = 1;
  let size = SIZE_DEFAULT;
  let natsServer: string | null = null;
  let json = false;
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    let parsed: number | string = 0;
    if (arg === "--json") json = true;
    else if (arg === "--help" || arg === "-h") help = true;
    else if (arg === "--events") parsed = events = integerArgument(arg, argv[++i], EVENTS_MIN, EVENTS_MAX) as number;
    else if (arg === "--publishers") parsed = publishers = integerArgument(arg, argv[++i], 1, PUBLISHERS_MAX) as number;
    else if (arg === "--size") parsed = size = integerArgument(arg, argv[++i], 24, 64 * 1024) as number;
    else if (arg === "--nats-server") {
      const path = argv[++i];
      if (path === undefined || path.startsWith("--")) return "--nats-server: a path is missing";
      natsServer = path;
    } else return `unknown argument ${arg}`;
    if (typeof parsed === "string") return parsed;
  }
  if (publishers > events) return `--publishers: ${publishers} publishers for ${events} events`;
  return { events, publishers, size, natsServer, json, help };
}

// ---------------------------------------------------------------------------------------
// Rows and the table
// ---------------------------------------------------------------------------------------

export interface Row {
  readonly system: "fitb" | "NATS";
  /** fitb: the CLASS (fault/order); NATS: core or JetStream. */
  readonly mode: string;
  readonly events: number;
  readonly delivered: number;
  readonly deliveredPerSecond: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  /** CPU µs per delivered event of every server process together; null when not known. */
  readonly serverCpuUsPerEvent: number | null;
  /** How many server processes that CPU is spread over. */
  readonly serverProcesses: number;
  /** CPU µs per delivered event of the Bun process that published and subscribed; null when not known. */
  readonly clientCpuUsPerEvent: number | null;
  /** What went wrong or what to know (events lost, refusals), or null. */
  readonly note: string | null;
}

const HEADER = ["system", "CLASS / mode", "delivered ev/s", "p50 ms", "p99 ms", "server CPU µs/event", "client CPU µs/event", "note"];

function fixed(value: number, digits: number): string {
  return Number.isFinite(value) ? value.toFixed(digits) : "-";
}

/** The table, as Markdown (readable on a terminal, pasted as is into the README). */
export function formatTable(rows: readonly Row[]): string {
  const cells = rows.map((row) => [
    row.system,
    row.mode,
    String(Math.round(row.deliveredPerSecond)),
    fixed(row.p50Ms, 1),
    fixed(row.p99Ms, 1),
    row.serverCpuUsPerEvent === null
      ? "-"
      : `${fixed(row.serverCpuUsPerEvent, 1)}${row.serverProcesses > 1 ? ` (${row.serverProcesses} processes)` : ""}`,
    row.clientCpuUsPerEvent === null ? "-" : fixed(row.clientCpuUsPerEvent, 1),
    row.note ?? "",
  ]);
  const widths = HEADER.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] as string).length)));
  const numeric = (i: number): boolean => i >= 2 && i <= 6;
  const line = (values: readonly string[]): string =>
    `| ${values.map((v, i) => (numeric(i) ? v.padStart(widths[i] as number) : v.padEnd(widths[i] as number))).join(" | ")} |`;
  const rule = `|${widths.map((w, i) => (numeric(i) ? `${"-".repeat(w + 1)}:` : "-".repeat(w + 2))).join("|")}|`;
  return [line(HEADER), rule, ...cells.map(line)].join("\n");
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

let progressName = "bench:peers";

/** Progress lines go to standard error, each led by the program's name. */
export function progress(text: string): void {
  process.stderr.write(`${progressName}: ${text}\n`);
}

export function setProgressName(name: string): void {
  progressName = name;
}

/** Every process this program started, killed on every way out. */
const started = new Set<Subprocess>();
/** Directories this program made, removed on every way out. */
const madeDirs = new Set<string>();
const clusters = new Set<TestCluster>();

export function track<T extends Subprocess>(proc: T): T {
  started.add(proc);
  void proc.exited.then(() => started.delete(proc));
  return proc;
}

/** A directory removed by killAll (on an interrupted run). */
export function trackDir(dir: string): void {
  madeDirs.add(dir);
}

export function killAll(): void {
  for (const proc of started) proc.kill("SIGKILL");
  for (const cluster of clusters) {
    for (const proc of cluster.procs) proc?.kill("SIGKILL");
    rmSync(cluster.dir, { recursive: true, force: true });
  }
  for (const dir of madeDirs) rmSync(dir, { recursive: true, force: true });
}

/** Linux's clock ticks per second in /proc/PID/stat (USER_HZ, 100 on every common build). */
const CLOCK_TICKS_PER_SECOND = 100;

/** User plus system CPU seconds a process has used (Linux /proc), or null. */
export function cpuSeconds(pid: number | undefined): number | null {
  if (pid === undefined) return null;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
  } catch {
    return null;
  }
}

/** Reads a stream line by line into `sink` until it ends. */
export async function eachLine(stream: ReadableStream<Uint8Array>, sink: (line: string) => void): Promise<void> {
  const decoder = new TextDecoder();
  let partial = "";
  for await (const chunk of stream) {
    const parts = (partial + decoder.decode(chunk, { stream: true })).split("\n");
    partial = parts.pop() ?? "";
    for (const line of parts) sink(line);
  }
  if (partial !== "") sink(partial);
}

// ---------------------------------------------------------------------------------------
// fitb: the real `fitb bench`
// ---------------------------------------------------------------------------------------

/** What `fitb bench --json` prints (the fields read here). */
export interface FitbBenchJson {
  readonly events: number;
  readonly delivered: number;
  readonly seconds: number;
  readonly delivered_per_s: number;
  readonly p50_ms: number;
  readonly p99_ms: number;
  readonly cpu_s: readonly (number | null)[];
  readonly cpu_us_per_event: readonly (number | null)[];
  readonly rate_limited: number;
  /** CPU seconds of the whole bench process (startup and connecting included), from its resource usage. */
  readonly clientCpuSeconds?: number | null;
}

/** Limits that keep the key's rate limit from setting the figure. */
export const UNLIMITED_CLIENT = { client_events_per_second_max: 10_000_000, client_burst_events_max: 100_000_000 };

/** A cluster of four replicas from source with one channel per CLASS (tests' CLASSES), tracked for killAll. */
export async function startFitbCluster(replicaArgs?: (id: number) => string[]): Promise<TestCluster> {
  const cluster = await startClusterWithChannels({ limits: UNLIMITED_CLIENT, ...(replicaArgs === undefined ? {} : { replicaArgs }) });
  clusters.add(cluster);
  return cluster;
}

export async function stopFitbCluster(cluster: TestCluster): Promise<void> {
  await cluster.stop();
  clusters.delete(cluster);
}

const BENCH_PROGRESS = /^fitb bench: (\d+) s: published \d+\/\d+, delivered \d+\/\d+/;

/** Runs `fitb bench --json` on `tag`, relaying its progress; its figures, or an Error saying why there are none. */
export async function runFitbBench(cluster: TestCluster, tag: string, options: Options, label: string): Promise<FitbBenchJson | Error> {
  const argv = [BUN, MAIN, "bench", "--config", cluster.configPath, "--key", cluster.clientKey, "--channel", tag];
  argv.push("--events", String(options.events), "--size", String(options.size), "--publishers", String(options.publishers), "--json");
  if (options.rate !== undefined) argv.push("--rate", String(options.rate));
  if (options.subscribers !== undefined) argv.push("--subscribers", String(options.subscribers));
  const proc = track(Bun.spawn(argv, { stdin: "ignore", stdout: "pipe", stderr: "pipe" }));
  const out: string[] = [];
  const err: string[] = [];
  let lastShown = 0;
  const reading = Promise.all([
    eachLine(proc.stdout, (line) => out.push(line)),
    eachLine(proc.stderr, (line) => {
      err.push(line);
      if (err.length > 1_000) err.splice(0, 500);
      // One progress line in five: enough to see it move.
      const match = BENCH_PROGRESS.exec(line);
      if (match !== null && Number(match[1]) >= lastShown + 5) {
        lastShown = Number(match[1]);
        progress(`  ${label}: ${line.replace("fitb bench: ", "")}`);
      }
    }),
  ]);
  const timer = setTimeout(() => proc.kill("SIGKILL"), RUN_MS_MAX);
  const code = await proc.exited;
  clearTimeout(timer);
  await reading;
  const json = out.findLast((line) => line.startsWith("{"));
  const said = err.filter((line) => !BENCH_PROGRESS.test(line)).slice(-3);
  if (json === undefined) return new Error(`fitb bench gave no figures (exit ${code}): ${said.join("; ") || "nothing said"}`);
  const usage = proc.resourceUsage();
  const figures = {
    ...(JSON.parse(json) as FitbBenchJson),
    clientCpuSeconds: usage === undefined ? null : Number(usage.cpuTime.total) / 1e6,
  };
  if (code !== 0 && said.length > 0) progress(`  ${label}: ${said.join("; ")}`);
  return figures;
}

function fitbRow(mode: string, figures: FitbBenchJson | Error, events: number): Row {
  if (figures instanceof Error) {
    return emptyRow("fitb", mode, events, figures.message);
  }
  const cpu = figures.cpu_us_per_event;
  const known = cpu.filter((value): value is number => value !== null);
  const notes: string[] = [];
  if (figures.delivered < events) notes.push(`${events - figures.delivered} not delivered`);
  if (figures.rate_limited > 0) notes.push(`${figures.rate_limited} RATE_LIMITED`);
  if (known.length < cpu.length) notes.push(`${cpu.length - known.length} replicas did not report CPU`);
  return {
    system: "fitb",
    mode,
    events,
    delivered: figures.delivered,
    deliveredPerSecond: figures.delivered_per_s,
    p50Ms: figures.p50_ms,
    p99Ms: figures.p99_ms,
    serverCpuUsPerEvent: known.length === 0 ? null : known.reduce((sum, value) => sum + value, 0),
    serverProcesses: cpu.length,
    clientCpuUsPerEvent:
      figures.clientCpuSeconds === null || figures.clientCpuSeconds === undefined || figures.delivered === 0
        ? null
        : (figures.clientCpuSeconds * 1e6) / figures.delivered,
    note: notes.length === 0 ? null : notes.join("; "),
  };
}

function emptyRow(system: Row["system"], mode: string, events: number, note: string): Row {
  return {
    system,
    mode,
    events,
    delivered: 0,
    deliveredPerSecond: 0,
    p50Ms: Number.NaN,
    p99Ms: Number.NaN,
    serverCpuUsPerEvent: null,
    serverProcesses: 1,
    clientCpuUsPerEvent: null,
    note,
  };
}

/** The four CLASSes, in the order of the table. */
export const FITB_CLASSES = ["byzantine/total", "byzantine/none", "crash/total", "crash/none"] as const;
export type ClassName = (typeof FITB_CLASSES)[number];

/** The test cluster's channel of a CLASS. */
export function tagOf(name: ClassName): string {
  const found = CLASSES.find((c) => `${c.fault}/${c.order}` === name);
  if (found === undefined) throw new Error(`no channel of class ${name}`);
  return found.tag;
}

/**
 * Each CLASS on four fresh replicas: run one after another on one group, the later CLASSes
 * ran on replicas already holding the earlier runs' events and measured 20 to 30% slower
 * for that alone (crash/total, third, looked slower than byzantine/total; swapped, the
 * other way round).
 */
async function runFitb(options: Options): Promise<Row[]> {
  const rows: Row[] = [];
  for (const name of FITB_CLASSES) {
    progress(`fitb ${name}: starting 4 fresh replicas (bun src/cli/main.ts replica) and one channel per CLASS`);
    const cluster = await startFitbCluster();
    try {
      progress(`fitb ${name}: fitb bench, ${options.events} events of ${options.size} B, ${options.publishers} publisher(s)`);
      const figures = await runFitbBench(cluster, tagOf(name), options, `fitb ${name}`);
      const row = fitbRow(name, figures, options.events);
      progress(
        `fitb ${name}: ${Math.round(row.deliveredPerSecond)} ev/s, p99 ${fixed(row.p99Ms, 1)} ms${row.note ? ` (${row.note})` : ""}`,
      );
      rows.push(row);
    } finally {
      await stopFitbCluster(cluster);
    }
  }
  return rows;
}

// ---------------------------------------------------------------------------------------
// NATS
// ---------------------------------------------------------------------------------------

const SBIN_DIRS = ["/usr/sbin", "/usr/local/sbin", "/sbin"];

/** The nats-server executable, or null when there is none. */
export function findNatsServer(explicit: string | null): string | null {
  if (explicit !== null) return Bun.which(explicit) ?? null;
  const path = [process.env.PATH ?? "", ...SBIN_DIRS].join(":");
  return Bun.which("nats-server", { PATH: path }) ?? null;
}

export const INSTALL_HINT =
  "nats-server is not installed: on Debian or Ubuntu `apt-get install nats-server` (elsewhere a release from the NATS project), or name it with --nats-server PATH; running fitb alone";

interface NatsServer {
  readonly proc: Subprocess;
  readonly port: number;
  readonly dir: string;
}

async function startNatsServer(executable: string): Promise<NatsServer> {
  const dir = mkdtempSync(join(tmpdir(), "fitb-peers-nats-"));
  madeDirs.add(dir);
  const port = freePortRange(1);
  const proc = track(
    Bun.spawn([executable, "-a", "127.0.0.1", "-p", String(port), "-js", "-sd", dir], {
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
    }),
  );
  const said: string[] = [];
  const ready = new Promise<boolean>((resolve) => {
    const sink = (line: string): void => {
      said.push(line);
      if (said.length > 200) said.shift();
      if (line.includes("Server is ready")) resolve(true);
    };
    void eachLine(proc.stdout, sink);
    void eachLine(proc.stderr, sink);
    void proc.exited.then(() => resolve(false));
    setTimeout(() => resolve(false), SERVER_READY_MS);
  });
  if (!(await ready)) {
    proc.kill("SIGKILL");
    throw new Error(`nats-server did not start within ${SERVER_READY_MS / 1_000} s: ${said.slice(-5).join(" | ")}`);
  }
  return { proc, port, dir };
}

async function stopNatsServer(server: NatsServer): Promise<void> {
  server.proc.kill("SIGTERM");
  const timer = setTimeout(() => server.proc.kill("SIGKILL"), 5_000);
  await server.proc.exited;
  clearTimeout(timer);
  rmSync(server.dir, { recursive: true, force: true });
  madeDirs.delete(server.dir);
}

/** Deliveries of one run, by send time carried in each event. */
class Deliveries {
  delivered = 0;
  lastAt = 0;
  readonly latency = new LatencyHistogram();
  private waiter: (() => void) | null = null;
  private target = Number.POSITIVE_INFINITY;

  constructor(private readonly runId: Uint8Array) {}

  onEvent(data: Uint8Array): void {
    const now = performance.now();
    const sentAt = benchSentAt(data, this.runId);
    if (sentAt === null) return;
    this.delivered++;
    this.latency.record(now - sentAt);
    this.lastAt = now;
    if (this.delivered >= this.target) this.waiter?.();
  }

  /** Resolves once `target` events arrived, or after DELIVERY_IDLE_MS without one, or at `deadline`. */
  async waitFor(target: number, deadline: number): Promise<void> {
    this.target = target;
    let seen = -1;
    while (this.delivered < target && this.delivered !== seen && performance.now() < deadline) {
      seen = this.delivered;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(DELIVERY_IDLE_MS, Math.max(0, deadline - performance.now())));
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.waiter = null;
    }
  }
}

/** The events publisher `index` of `publishers` sends. */
function shareOf(events: number, publishers: number, index: number): number {
  return Math.floor(events / publishers) + (index < events % publishers ? 1 : 0);
}

interface NatsRun {
  readonly delivered: number;
  readonly seconds: number;
  readonly latency: LatencyHistogram;
  readonly failed: number;
  readonly firstError: string | null;
}

/**
 * One NATS run: `send(publisher, event, index)` sends an event and returns a promise, or
 * null when there is nothing to wait for. With `acks`, the promise is the event's
 * acknowledgement and each publisher keeps at most WINDOW_EVENTS unacknowledged; without,
 * the publisher waits for the promise at once (the round trip that bounds its window).
 */
async function driveNats(
  options: Options,
  deliveries: Deliveries,
  runId: Uint8Array,
  send: (publisher: number, event: Uint8Array, index: number) => Promise<unknown> | null,
  acks: boolean,
  label: string,
): Promise<NatsRun> {
  const startedAt = performance.now();
  const deadline = startedAt + RUN_MS_MAX;
  let published = 0;
  let failed = 0;
  let firstError: string | null = null;
  const ticker = setInterval(
    () =>
      progress(
        `  ${label}: ${((performance.now() - startedAt) / 1_000).toFixed(0)} s: published ${published}/${options.events}, delivered ${deliveries.delivered}`,
      ),
    5_000,
  );
  const publisher = async (index: number): Promise<void> => {
    const pending: Promise<unknown>[] = [];
    const count = shareOf(options.events, options.publishers, index);
    for (let i = 0; i < count; i++) {
      const ack = send(index, benchEvent(runId, index, i, options.size, performance.now()), i);
      published++;
      if (ack !== null && !acks) await ack;
      else if (ack !== null) {
        pending.push(
          ack.catch((error: unknown) => {
            failed++;
            firstError ??= error instanceof Error ? error.message : String(error);
          }),
        );
        // Acks of one connection come back in order: waiting for the oldest bounds the window.
        if (pending.length >= WINDOW_EVENTS) await pending.shift();
      }
      if (performance.now() > deadline) break;
    }
    await Promise.all(pending);
  };
  await Promise.all(Array.from({ length: options.publishers }, (_, index) => publisher(index)));
  progress(
    `  ${label}: ${published} published${acks ? " and acknowledged" : ""} in ${((performance.now() - startedAt) / 1_000).toFixed(1)} s, ${deliveries.delivered} delivered by then`,
  );
  await deliveries.waitFor(published - failed, deadline);
  clearInterval(ticker);
  return {
    delivered: deliveries.delivered,
    seconds: Math.max(deliveries.lastAt - startedAt, 0) / 1_000,
    latency: deliveries.latency,
    failed,
    firstError,
  };
}

function natsRow(mode: string, run: NatsRun | Error, events: number, cpuSecondsUsed: number | null, clientCpuSeconds: number): Row {
  if (run instanceof Error) return emptyRow("NATS", mode, events, run.message);
  const notes: string[] = [];
  if (run.failed > 0) notes.push(`${run.failed} failed (${run.firstError})`);
  if (run.delivered < events - run.failed) notes.push(`${events - run.failed - run.delivered} not delivered`);
  return {
    system: "NATS",
    mode,
    events,
    delivered: run.delivered,
    deliveredPerSecond: run.seconds > 0 ? run.delivered / run.seconds : 0,
    p50Ms: run.latency.percentile(50),
    p99Ms: run.latency.percentile(99),
    serverCpuUsPerEvent: cpuSecondsUsed === null || run.delivered === 0 ? null : (cpuSecondsUsed * 1e6) / run.delivered,
    serverProcesses: 1,
    clientCpuUsPerEvent: run.delivered === 0 ? null : (clientCpuSeconds * 1e6) / run.delivered,
    note: notes.length === 0 ? null : notes.join("; "),
  };
}

async function runNats(options: Options, executable: string): Promise<Row[]> {
  // Loaded here, not at the top: fitb alone needs none of it.
  const { connect } = await import("@nats-io/transport-node");
  const { jetstream, jetstreamManager, StorageType } = await import("@nats-io/jetstream");
  progress(`NATS: starting ${executable} on 127.0.0.1 with JetStream (file store in a fresh directory)`);
  const server = await startNatsServer(executable);
  const servers = [`127.0.0.1:${server.port}`];
  const rows: Row[] = [];
  try {
    const version = Bun.spawnSync([executable, "--version"]).stdout.toString().trim();
    progress(`NATS: ${version} listening on port ${server.port}`);

    // Core: subscriber and publishers on their own connections, as fitb bench has them.
    {
      const label = "NATS core";
      progress(`${label}: ${options.events} events of ${options.size} B, ${options.publishers} publisher(s)`);
      const runId = crypto.getRandomValues(new Uint8Array(8));
      const deliveries = new Deliveries(runId);
      const subscriber = await connect({ servers });
      const publisherConnection = await connect({ servers });
      const subject = "bench.core";
      subscriber.subscribe(subject, { callback: (error, msg) => (error === null ? deliveries.onEvent(msg.data) : undefined) });
      await subscriber.flush();
      const cpuBefore = cpuSeconds(server.proc.pid);
      const clientBefore = process.cpuUsage();
      // A round trip (flush) every half window; a publisher waits for the one before it, so
      // at most a window of its events is unconfirmed at once.
      const flushes: (Promise<void> | null)[] = new Array(options.publishers).fill(null);
      const half = WINDOW_EVENTS / 2;
      const run = await driveNats(
        options,
        deliveries,
        runId,
        (publisher, event, index) => {
          publisherConnection.publish(subject, event);
          if ((index + 1) % half !== 0) return null;
          const previous = flushes[publisher] ?? Promise.resolve();
          const flush = publisherConnection.flush();
          flushes[publisher] = flush;
          return previous;
        },
        false,
        label,
      ).catch((error: unknown) => (error instanceof Error ? error : new Error(String(error))));
      const cpuAfter = cpuSeconds(server.proc.pid);
      const client = process.cpuUsage(clientBefore);
      const clientSeconds = (client.user + client.system) / 1e6;
      await Promise.all([publisherConnection.close(), subscriber.close()]);
      const row = natsRow(
        "core",
        run,
        options.events,
        cpuBefore === null || cpuAfter === null ? null : cpuAfter - cpuBefore,
        clientSeconds,
      );
      progress(`${label}: ${Math.round(row.deliveredPerSecond)} ev/s, p99 ${fixed(row.p99Ms, 1)} ms${row.note ? ` (${row.note})` : ""}`);
      rows.push(row);
    }

    // JetStream: one replica, file store; publishes acknowledged; an ordered push consumer delivers.
    {
      const label = "NATS JetStream R1 file";
      progress(`${label}: ${options.events} events of ${options.size} B, ${options.publishers} publisher(s)`);
      const runId = crypto.getRandomValues(new Uint8Array(8));
      const deliveries = new Deliveries(runId);
      const subscriber = await connect({ servers });
      const publisherConnection = await connect({ servers });
      const subject = "bench.js";
      const manager = await jetstreamManager(subscriber);
      await manager.streams.add({ name: "BENCH", subjects: [subject], storage: StorageType.File, num_replicas: 1 });
      // An ordered push consumer: the server pushes as events are stored, as fitb's replicas
      // push to a subscription. (The ordered pull consumer, `consumers.get`, delivered
      // almost nothing until the publisher stopped in this workload: same rate, seconds more latency.)
      const consumer = await jetstream(subscriber).consumers.getPushConsumer("BENCH");
      const messages = await consumer.consume({ callback: (msg) => deliveries.onEvent(msg.data) });
      const js = jetstream(publisherConnection);
      const cpuBefore = cpuSeconds(server.proc.pid);
      const clientBefore = process.cpuUsage();
      const run = await driveNats(options, deliveries, runId, (_publisher, event) => js.publish(subject, event), true, label).catch(
        (error: unknown) => (error instanceof Error ? error : new Error(String(error))),
      );
      const cpuAfter = cpuSeconds(server.proc.pid);
      const client = process.cpuUsage(clientBefore);
      const clientSeconds = (client.user + client.system) / 1e6;
      await messages.close();
      await Promise.all([publisherConnection.close(), subscriber.close()]);
      const row = natsRow(
        "JetStream R1 file",
        run,
        options.events,
        cpuBefore === null || cpuAfter === null ? null : cpuAfter - cpuBefore,
        clientSeconds,
      );
      progress(`${label}: ${Math.round(row.deliveredPerSecond)} ev/s, p99 ${fixed(row.p99Ms, 1)} ms${row.note ? ` (${row.note})` : ""}`);
      rows.push(row);
    }
    return rows;
  } finally {
    await stopNatsServer(server);
  }
}

// ---------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const options = optionsOrExit(parseOptions(process.argv.slice(2)), USAGE);
  const bail = (code: number, why: string): never => {
    progress(why);
    killAll();
    process.exit(code);
  };
  const deadline = stopOnSignalsAndDeadline(bail, PROGRAM_MS_MAX);
  const nats = findNatsServer(options.natsServer);
  if (nats === null) progress(INSTALL_HINT);
  const startedAt = Date.now();
  const rows = await runFitb(options);
  if (nats !== null) {
    try {
      rows.push(...(await runNats(options, nats)));
    } catch (error) {
      progress(`NATS: ${error instanceof Error ? error.message : String(error)}`);
      rows.push(emptyRow("NATS", "core", options.events, "no figures (see standard error)"));
    }
  }
  clearTimeout(deadline);
  const seconds = Math.round((Date.now() - startedAt) / 1_000);
  if (options.json) {
    console.log(JSON.stringify({ ...options, help: undefined, windowEvents: WINDOW_EVENTS, natsServer: nats, seconds, rows }, null, 2));
  } else {
    console.log(
      `${options.events} events of ${options.size} B per row, ${options.publishers} publisher(s), 1 subscriber, all on 127.0.0.1; ${seconds} s in all${nats === null ? "; nats-server not installed" : ""}`,
    );
    console.log("");
    console.log(formatTable(rows));
  }
  process.exit(0);
}

if (import.meta.main) await main();
