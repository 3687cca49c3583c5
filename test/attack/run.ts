/**
 * Throughput under attack (run on purpose, not part of `npm test`):
 *
 *   npm run attack [-- --attack NAME] [--events N] [--json] [--logs DIR] [--help]
 *
 * For each attack: four real replicas on 127.0.0.1 (one of them the adversary replica of
 * adversary-replica.ts when the attack needs a replica), a byzantine/total channel, and the
 * real `fitb bench` workload of correct clients (N events of 200 bytes, one publisher and
 * one subscriber, as fast as acknowledgements allow). The workload runs once fault-free,
 * then the attack is turned on (the adversary replica is told to attack, or the hostile
 * clients of adversary-clients.ts start) and the same workload runs again in the same
 * cluster, then once more fault-free with the attack turned off. "fault-free ev/s" is the
 * mean of the two fault-free runs: the machine's load drifts, and the two runs around the
 * attack show by how much. One row per attack:
 *
 *   attack | fault-free ev/s | under attack ev/s | retained % | after replacement % |
 *   CPU-matched ev/s | vs CPU-matched % | p99 ms | view changes | time to replace the leader
 *
 * "under attack ev/s" is the correct clients' delivered events/s over the whole run,
 * detection and replacement of a bad leader included; "after replacement %" is the rate
 * from the first progress line after the leader was replaced to the end of that run,
 * against fault-free (leader attacks, when that stretch is long enough to measure).
 *
 * The adversary's process shares the machine's cores with the replicas, bench and its
 * subscriber; on real hosts it would burn its own. So a last fault-free run goes beside
 * cpu-hog.ts asked for the CPU the adversary's process used under attack ("CPU-matched
 * ev/s", when the adversary used at least CONTROL_CPU_PERCENT_MIN of a core), and
 * "vs CPU-matched %" compares the attacked run with it: what the attack costs beyond the
 * CPU its process took from the machine. "p99 ms" is bench's
 * publish-to-delivery p99 under attack. "view changes" is how far the correct replicas'
 * view moved during the attacked run (read from their status once they agree on it again);
 * "time to replace the leader" is from the attack's start to the moment the last correct
 * replica logged "view installed" for a view whose leader is correct (leader attacks only).
 *
 * A benchmark is a program: it prints figures and never fails on a threshold. It marks the
 * rows below 90% retained. Every wait is bounded, the whole run too; every process it
 * started is killed on every way out.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Subprocess } from "bun";
import type { FitbClient } from "../../src/client/index.ts";
import { formatSecretKeyFile, loadPublicKeyFile, SigningKey } from "../../src/crypto/keys.ts";
import { clientFor } from "../integration/client-util.ts";
import { BUN, benchArgv, freePortRange, REPO, startCluster, type TestCluster } from "../integration/harness.ts";
import type { ClientAttackName } from "./adversary-clients.ts";
import type { BehaviourName } from "./adversary-replica.ts";
import { optionsOrExit, stopOnSignalsAndDeadline } from "../helpers/program.ts";

// ---------------------------------------------------------------------------------------
// The attacks
// ---------------------------------------------------------------------------------------

export type AttackSpec =
  | {
      readonly name: string;
      readonly kind: "replica";
      readonly behaviour: BehaviourName;
      readonly adversary: number;
      readonly what: string;
    }
  | { readonly name: string; readonly kind: "clients"; readonly attack: ClientAttackName; readonly what: string };

/** Replica 0 leads view 0: leader attacks take it; the others take a backup. */
export const ATTACKS: readonly AttackSpec[] = [
  {
    name: "slow-leader",
    kind: "replica",
    behaviour: "slow-leader",
    adversary: 0,
    what: "the leader holds each proposal just under the progress timeout",
  },
  {
    name: "equivocating-leader",
    kind: "replica",
    behaviour: "equivocating-leader",
    adversary: 0,
    what: "the leader signs two batches per seq, one per half of the backups",
  },
  { name: "mute-leader", kind: "replica", behaviour: "mute", adversary: 0, what: "the leader sends nothing to its peers" },
  {
    name: "flooding-replica",
    kind: "replica",
    behaviour: "flooding",
    adversary: 3,
    what: "a backup floods FORWARD, STATE_REQUEST, bad-signature PREPARE and garbage at full speed",
  },
  {
    name: "replaying-replica",
    kind: "replica",
    behaviour: "replayer",
    adversary: 3,
    what: "a backup re-sends the last 4096 validly signed ordering messages at full speed",
  },
  {
    name: "client-flood-valid",
    kind: "clients",
    attack: "flood-valid",
    what: "4 unregistered keys send validly signed publishes at full speed",
  },
  {
    name: "client-bad-signatures",
    kind: "clients",
    attack: "bad-signatures",
    what: "32 connections handshake, send bad signatures, reconnect",
  },
  { name: "client-malformed", kind: "clients", attack: "malformed", what: "32 connections send undecodable frames, reconnect" },
  { name: "client-oversize", kind: "clients", attack: "oversize", what: "32 connections send frames over the size limit, reconnect" },
  {
    name: "client-gapped-seqs",
    kind: "clients",
    attack: "gapped-seqs",
    what: "a registered key sends requests behind a sequence gap at full speed",
  },
  { name: "client-idle", kind: "clients", attack: "idle", what: "2,000 handshaken sessions that say nothing" },
];

const TAG = "atk.bench";
const EVENT_BYTES = 200;
export const EVENTS_DEFAULT = 100_000;
const EVENTS_MIN = 1_000;
const EVENTS_MAX = 10_000_000;
/** The bar every row is judged against (it is printed, never enforced). */
export const RETAINED_PERCENT_MIN = 90;
/** One bench run is killed after this (its figures then come from its last progress line). */
const BENCH_MS_MAX = 150_000;
/** Waits for the cluster, the adversary and the replicas to agree on a view again. */
const READY_MS_MAX = 30_000;
const ENGAGE_MS_MAX = 60_000;
const SETTLE_MS_MAX = 30_000;
/** The whole run is cut short (everything killed, exit 1) past this. */
const RUN_MS_MAX = 45 * 60_000;
const ADVERSARY_REPLICA = join(REPO, "test/attack/adversary-replica.ts");
const ADVERSARY_CLIENTS = join(REPO, "test/attack/adversary-clients.ts");
const CPU_HOG = join(REPO, "test/attack/cpu-hog.ts");
/** Below this share of one core taken by the adversary, no CPU-matched run is made. */
export const CONTROL_CPU_PERCENT_MIN = 5;

// ---------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------

export interface Options {
  readonly attacks: readonly AttackSpec[];
  readonly events: number;
  readonly json: boolean;
  readonly help: boolean;
  /** Where each row's logs go (DIR/<attack>/replica-N.log, adversary.log), or null. */
  readonly logsDir: string | null;
}

export const USAGE = [
  "usage: npm run attack -- [--attack NAME] [--events N] [--json] [--logs DIR] [--help]",
  "",
  "Runs the fitb bench workload (byzantine/total, 200-byte events) on 4 local replicas,",
  "fault-free and then under each attack, and prints one table.",
  `  --attack NAME  one row only; NAME is one of: ${ATTACKS.map((a) => a.name).join(", ")}`,
  `  --events N     events per bench run (default ${EVENTS_DEFAULT})`,
  "  --json         one JSON object instead of the table",
  "  --logs DIR     keep every row's replica, adversary and bench output in DIR/<attack>/",
].join("\n");

/** The options, or a message saying what is wrong with the arguments. */
export function parseOptions(argv: readonly string[]): Options | string {
  let attacks: readonly AttackSpec[] = ATTACKS;
  let events = EVENTS_DEFAULT;
  let json = false;
  let help = false;
  let logsDir: string | null = null;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--json") json = true;
    else if (arg === "--help" || arg === "-h") help = true;
    else if (arg === "--logs") {
      const dir = argv[++i];
      if (dir === undefined || dir.startsWith("--")) return "--logs: a directory is missing";
      logsDir = dir;
    } else if (arg === "--attack") {
      const name = argv[++i];
      const spec = ATTACKS.find((a) => a.name === name);
      if (spec === undefined) return `--attack: expected one of ${ATTACKS.map((a) => a.name).join(", ")}, got ${name ?? "nothing"}`;
      attacks = [spec];
    } else if (arg === "--events") {
      const value = Number(argv[++i]);
      if (!Number.isInteger(value) || value < EVENTS_MIN || value > EVENTS_MAX)
        return `--events: an integer in ${EVENTS_MIN}..${EVENTS_MAX}`;
      events = value;
    } else return `unknown argument ${arg}`;
  }
  return { attacks, events, json, help, logsDir };
}

// ---------------------------------------------------------------------------------------
// Results and the table
// ---------------------------------------------------------------------------------------

export interface BenchFigures {
  readonly eventsPerSecond: number;
  readonly p99Ms: number;
  readonly delivered: number;
  readonly seconds: number;
  /** Bench's exit code, or null when it was killed at BENCH_MS_MAX. */
  readonly exitCode: number | null;
  /** What bench said went wrong, if anything. */
  readonly problem: string | null;
  /** Deliveries so far, from bench's progress lines (harness clock, ms), and when bench ended. */
  readonly samples: readonly { readonly atMs: number; readonly delivered: number }[];
  readonly endMs: number;
}

export interface RowResult {
  readonly attack: string;
  readonly what: string;
  readonly faultFree: BenchFigures | null;
  readonly underAttack: BenchFigures | null;
  /** The same workload once more after the attack was turned off (absent in rows built by hand). */
  readonly faultFreeAfter?: BenchFigures | null;
  readonly viewChanges: number | null;
  /** When the correct replicas did not agree on a view after the attack: what each one said. */
  readonly viewsDisagree?: string | null;
  /** Ms from the attack's start until every correct replica installed a view with a correct leader; null if it did not happen. */
  readonly replaceLeaderMs: number | null;
  /** Delivered events/s of the attacked run from the first progress line after the leader was replaced; null if not known. */
  readonly afterReplacementEventsPerSecond: number | null;
  /** Whether the attack targets the leader (the last column applies). */
  readonly leaderAttack: boolean;
  /** What the adversary reported (its last counters), for the reader. */
  readonly adversaryReport: string | null;
  /** CPU the adversary's process used during the attacked run, in percent of one core (it shares the machine). */
  readonly adversaryCpuPercent?: number | null;
  /** The fault-free workload beside cpu-hog.ts taking the adversary's CPU; null when not run. */
  readonly cpuMatched?: BenchFigures | null;
  /** CPU the hog really used during that run, in percent of one core. */
  readonly cpuMatchedHogPercent?: number | null;
  /** Why the row has no figures, when it has none. */
  readonly error: string | null;
  /** Why earlier attempts at this row were not kept (the leader moved before the attack). */
  readonly retries?: readonly string[];
}

/**
 * The fault-free figure a row compares with: the mean of the runs before and after the
 * attack (the machine's load drifts; two runs around the attack show by how much).
 */
export function faultFreeRate(row: RowResult): number | null {
  const runs = [row.faultFree, row.faultFreeAfter ?? null].filter((f): f is BenchFigures => f !== null);
  if (runs.length === 0) return null;
  return runs.reduce((sum, f) => sum + f.eventsPerSecond, 0) / runs.length;
}

export function retainedPercent(row: RowResult): number | null {
  const faultFree = faultFreeRate(row);
  if (faultFree === null || row.underAttack === null || faultFree <= 0) return null;
  return (100 * row.underAttack.eventsPerSecond) / faultFree;
}

/** The rate once the leader was replaced, against fault-free; null when not measured. */
export function afterReplacementPercent(row: RowResult): number | null {
  const faultFree = faultFreeRate(row);
  if (faultFree === null || faultFree <= 0 || row.afterReplacementEventsPerSecond === null) return null;
  return (100 * row.afterReplacementEventsPerSecond) / faultFree;
}

/** The attacked run against the fault-free run beside a hog taking the adversary's CPU. */
export function cpuMatchedPercent(row: RowResult): number | null {
  const control = row.cpuMatched ?? null;
  if (control === null || row.underAttack === null || control.eventsPerSecond <= 0) return null;
  return (100 * row.underAttack.eventsPerSecond) / control.eventsPerSecond;
}

/** The share of one core each hog is asked for, one hog per started core, or [] below the minimum. */
export function hogShares(adversaryCpuPercent: number | null | undefined): number[] {
  if (adversaryCpuPercent === null || adversaryCpuPercent === undefined || adversaryCpuPercent < CONTROL_CPU_PERCENT_MIN) return [];
  const hogs = Math.ceil(adversaryCpuPercent / 100);
  return Array.from({ length: hogs }, () => Math.min(100, adversaryCpuPercent / hogs));
}

/** Shortest stretch after a replacement that gives a rate worth printing. */
const AFTER_REPLACEMENT_MS_MIN = 2_000;

/**
 * Delivered events/s of a run from the first progress sample at or after `fromMs` to its
 * end; null when that stretch is shorter than AFTER_REPLACEMENT_MS_MIN.
 */
export function rateAfter(figures: BenchFigures, fromMs: number): number | null {
  const first = figures.samples.find((s) => s.atMs >= fromMs);
  if (first === undefined || figures.endMs - first.atMs < AFTER_REPLACEMENT_MS_MIN) return null;
  return ((figures.delivered - first.delivered) * 1_000) / (figures.endMs - first.atMs);
}

function formatReplace(row: RowResult): string {
  if (!row.leaderAttack) return "-";
  if (row.replaceLeaderMs === null) return "not replaced";
  return `${(row.replaceLeaderMs / 1_000).toFixed(1)} s`;
}

const HEADER = [
  "attack",
  "fault-free ev/s",
  "under attack ev/s",
  "retained %",
  "after replacement %",
  "CPU-matched ev/s",
  "vs CPU-matched %",
  "p99 ms",
  "view changes",
  "time to replace the leader",
];

function percentCell(percent: number | null): string {
  if (percent === null) return "-";
  return `${percent.toFixed(0)}${percent < RETAINED_PERCENT_MIN ? " **" : ""}`;
}

/** The table, as Markdown (readable on a terminal, pasted as is into the README). */
export function formatTable(rows: readonly RowResult[]): string {
  const cells = rows.map((row) => {
    const control = row.cpuMatched ?? null;
    return [
      row.attack,
      faultFreeRate(row) === null ? "-" : String(Math.round(faultFreeRate(row) as number)),
      row.underAttack === null ? "-" : String(Math.round(row.underAttack.eventsPerSecond)),
      percentCell(retainedPercent(row)),
      percentCell(afterReplacementPercent(row)),
      control === null ? "-" : String(Math.round(control.eventsPerSecond)),
      percentCell(cpuMatchedPercent(row)),
      row.underAttack === null || !Number.isFinite(row.underAttack.p99Ms) ? "-" : String(Math.round(row.underAttack.p99Ms)),
      row.viewChanges === null ? "?" : String(row.viewChanges),
      formatReplace(row),
    ];
  });
  const widths = HEADER.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] as string).length)));
  const line = (values: readonly string[]): string =>
    `| ${values.map((v, i) => (i === 0 ? v.padEnd(widths[i] as number) : v.padStart(widths[i] as number))).join(" | ")} |`;
  const rule = `|${widths.map((w, i) => (i === 0 ? "-".repeat(w + 2) : `${"-".repeat(w + 1)}:`)).join("|")}|`;
  return [line(HEADER), rule, ...cells.map(line)].join("\n");
}

/** One line per row that misses the bar or has a problem, saying what the harness saw. */
export function formatFindings(rows: readonly RowResult[]): string[] {
  const lines: string[] = [];
  for (const row of rows) {
    const retained = retainedPercent(row);
    const notes: string[] = [];
    if (row.error !== null) notes.push(`no figures: ${row.error}`);
    if (retained !== null && retained < RETAINED_PERCENT_MIN) {
      const after = row.afterReplacementEventsPerSecond;
      const since =
        after === null || faultFreeRate(row) === null
          ? ""
          : ` over the whole run, ${((100 * after) / (faultFreeRate(row) as number)).toFixed(0)}% once the leader was replaced`;
      const cpu = row.adversaryCpuPercent;
      const matched = cpuMatchedPercent(row);
      const hog = row.cpuMatchedHogPercent;
      const matchedNote =
        matched === null
          ? ""
          : `; ${matched.toFixed(0)}% of the fault-free run beside a process taking ${hog === null || hog === undefined ? "?" : hog.toFixed(0)}% of a core`;
      const cpuNote =
        cpu === null || cpu === undefined ? "" : ` (the adversary's process used ${cpu.toFixed(0)}% of a core meanwhile${matchedNote})`;
      const around =
        row.faultFree === null || row.faultFreeAfter === undefined || row.faultFreeAfter === null
          ? ""
          : `; fault-free ${Math.round(row.faultFree.eventsPerSecond)} ev/s before, ${Math.round(row.faultFreeAfter.eventsPerSecond)} after`;
      notes.push(`retained ${retained.toFixed(0)}% < ${RETAINED_PERCENT_MIN}%${since}${cpuNote}${around}`);
    }
    if (row.viewChanges !== null && row.viewChanges > 1) notes.push(`${row.viewChanges} view changes`);
    if (row.leaderAttack && row.replaceLeaderMs === null) notes.push("the leader was not replaced");
    if (row.viewsDisagree)
      notes.push(`the correct replicas did not agree on a view ${SETTLE_MS_MAX / 1_000} s after the attack (${row.viewsDisagree})`);
    for (const [when, figures] of [
      ["fault-free", row.faultFree],
      ["fault-free after", row.faultFreeAfter ?? null],
      ["under attack", row.underAttack],
    ] as const) {
      if (figures?.problem) notes.push(`bench ${when}: ${figures.problem}`);
    }
    if (row.retries !== undefined && row.retries.length > 0) {
      notes.push(`${row.retries.length} earlier attempt(s) not kept: ${row.retries.join("; ")}`);
    }
    if (notes.length > 0) lines.push(`${row.attack}: ${notes.join("; ")}`);
  }
  return lines;
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

function progress(text: string): void {
  process.stderr.write(`attack: ${text}\n`);
}

/** Every process this program started, killed on every way out. */
const started = new Set<Subprocess>();

/** Output lines of a process, each with the time it arrived. */
class Lines {
  readonly lines: { atMs: number; text: string }[] = [];
  private partial = "";
  private readonly watchers: { match: (text: string) => boolean; resolve: (text: string) => void }[] = [];

  static follow(stream: ReadableStream<Uint8Array>): Lines {
    const lines = new Lines();
    void lines.read(stream);
    return lines;
  }

  /** Resolves with the first line (past or future) `match` accepts; null after `timeoutMs`. */
  async waitFor(match: (text: string) => boolean, timeoutMs: number): Promise<string | null> {
    const seen = this.lines.find((l) => match(l.text));
    if (seen !== undefined) return seen.text;
    return await new Promise<string | null>((resolve) => {
      const timer = setTimeout(() => resolve(null), timeoutMs);
      this.watchers.push({
        match,
        resolve: (text) => {
          clearTimeout(timer);
          resolve(text);
        },
      });
    });
  }

  last(match: (text: string) => boolean): string | null {
    return this.lines.findLast((l) => match(l.text))?.text ?? null;
  }

  private async read(stream: ReadableStream<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      const parts = (this.partial + decoder.decode(chunk, { stream: true })).split("\n");
      this.partial = parts.pop() ?? "";
      for (const text of parts) this.add(text);
    }
    if (this.partial !== "") this.add(this.partial);
  }

  private add(text: string): void {
    this.lines.push({ atMs: Date.now(), text });
    // Bounded: a flooding adversary logs every second, a replica a little more.
    if (this.lines.length > 20_000) this.lines.splice(0, 10_000);
    for (let i = this.watchers.length - 1; i >= 0; i--) {
      const watcher = this.watchers[i] as (typeof this.watchers)[number];
      if (watcher.match(text)) {
        this.watchers.splice(i, 1);
        watcher.resolve(text);
      }
    }
  }
}

function spawn(argv: string[], stdin: "pipe" | "ignore"): { proc: Subprocess<"pipe" | "ignore", "pipe", "pipe">; out: Lines; err: Lines } {
  const proc = Bun.spawn(argv, { stdin, stdout: "pipe", stderr: "pipe", env: { ...process.env, FITB_LOG: "info" } });
  started.add(proc);
  void proc.exited.then(() => started.delete(proc));
  return { proc, out: Lines.follow(proc.stdout), err: Lines.follow(proc.stderr) };
}

function killAll(): void {
  for (const proc of started) proc.kill("SIGKILL");
}

/** Linux's clock ticks per second in /proc/PID/stat (USER_HZ, 100 on every common build). */
const CLOCK_TICKS_PER_SECOND = 100;

/** User plus system CPU seconds a process has used (Linux /proc), or null. */
function cpuSeconds(pid: number | undefined): number | null {
  if (pid === undefined) return null;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------
// Status of the replicas (their /status pages)
// ---------------------------------------------------------------------------------------

interface ReplicaStatus {
  readonly view: number;
  readonly leader: number;
  readonly mode: string;
  readonly peersUp: number;
}

async function replicaStatus(port: number): Promise<ReplicaStatus | null> {
  try {
    const response = await fetch(`http://127.0.0.1:${port}/status`, { signal: AbortSignal.timeout(2_000) });
    const s = (await response.json()) as { view: number; leader: number; mode: string; peers: { up: boolean }[] };
    return { view: s.view, leader: s.leader, mode: s.mode, peersUp: s.peers.filter((p) => p.up).length };
  } catch {
    return null;
  }
}

function describeStatus(status: ReplicaStatus | null): string {
  if (status === null) return "no status";
  return status.mode === "normal" ? `view ${status.view}` : `${status.mode} to view ${status.view}`;
}

/** Polls until `check` holds on every listed replica's status, or `timeoutMs`; the last statuses either way. */
async function waitForStatuses(
  ports: readonly number[],
  check: (all: readonly ReplicaStatus[]) => boolean,
  timeoutMs: number,
): Promise<{ ok: boolean; statuses: (ReplicaStatus | null)[] }> {
  const deadline = Date.now() + timeoutMs;
  let pauseMs = 10;
  for (;;) {
    const statuses = await Promise.all(ports.map(replicaStatus));
    const all = statuses.filter((s): s is ReplicaStatus => s !== null);
    if (all.length === ports.length && check(all)) return { ok: true, statuses };
    if (Date.now() >= deadline) return { ok: false, statuses };
    await Bun.sleep(pauseMs);
    pauseMs = Math.min(pauseMs * 2, 200);
  }
}

// ---------------------------------------------------------------------------------------
// The workload: the real `fitb bench`
// ---------------------------------------------------------------------------------------

const BENCH_PROGRESS = /^fitb bench: (\d+) s: published \d+\/\d+, delivered (\d+)\/\d+/;

async function runBench(cluster: TestCluster, events: number, label: string, keep: string[]): Promise<BenchFigures> {
  const { proc, out, err } = spawn(benchArgv(cluster, TAG, events, EVENT_BYTES), "ignore");
  const startedMs = Date.now();
  let killed = false;
  const ticker = setInterval(() => {
    const last = err.last((t) => BENCH_PROGRESS.test(t));
    if (last !== null) progress(`  ${label}: ${last.replace("fitb bench: ", "")}`);
  }, 5_000);
  const timer = setTimeout(() => {
    killed = true;
    proc.kill("SIGKILL");
  }, BENCH_MS_MAX);
  const exitCode = await proc.exited;
  const endMs = Date.now();
  clearTimeout(timer);
  clearInterval(ticker);
  // Let the pipes finish (bounded: the process is gone).
  await Bun.sleep(0);
  keep.push(`# bench ${label}, exit ${killed ? "killed" : exitCode}`, ...out.lines.map((l) => l.text), ...err.lines.map((l) => l.text));
  const json = out.last((t) => t.startsWith("{"));
  const samples = err.lines.flatMap((l) => {
    const match = BENCH_PROGRESS.exec(l.text);
    return match === null ? [] : [{ atMs: l.atMs, delivered: Number(match[2]) }];
  });
  // What bench said besides progress: its own complaints, or the error it stopped on.
  const problems = err.lines
    .map((l) => l.text.trim())
    .filter((t) => t !== "" && !BENCH_PROGRESS.test(t))
    .slice(-3);
  if (!killed && json !== null) {
    const figures = JSON.parse(json) as { delivered: number; seconds: number; delivered_per_s: number; p99_ms: number };
    return {
      eventsPerSecond: figures.delivered_per_s,
      p99Ms: figures.p99_ms,
      delivered: figures.delivered,
      seconds: figures.seconds,
      exitCode,
      problem: exitCode === 0 ? null : (problems.join("; ") || `exit ${exitCode}`).slice(0, 300),
      samples,
      endMs,
    };
  }
  // Killed (or no JSON): the last progress line says how far it got.
  const last = err.last((t) => BENCH_PROGRESS.test(t));
  const match = last === null ? null : BENCH_PROGRESS.exec(last);
  const delivered = match === null ? 0 : Number(match[2]);
  const seconds = (Date.now() - startedMs) / 1_000;
  return {
    eventsPerSecond: delivered / seconds,
    p99Ms: Number.NaN,
    delivered,
    seconds,
    exitCode: killed ? null : exitCode,
    problem: killed
      ? `killed after ${BENCH_MS_MAX / 1_000} s, ${delivered} delivered`
      : `no result (exit ${exitCode}): ${problems.join("; ") || "nothing said"}`.slice(0, 300),
    samples,
    endMs,
  };
}

// ---------------------------------------------------------------------------------------
// One row
// ---------------------------------------------------------------------------------------

/** What the harness reads from "view installed" log lines. */
interface ViewInstalled {
  readonly replica: number;
  readonly view: number;
  readonly leader: number;
  readonly atMs: number;
}

function viewsInstalled(cluster: TestCluster, ids: readonly number[]): ViewInstalled[] {
  const found: ViewInstalled[] = [];
  for (const id of ids) {
    for (const text of (cluster.logs[id] ?? []).join("").split("\n")) {
      if (!text.includes('"view installed"')) continue;
      try {
        const line = JSON.parse(text) as { ts: string; view: number; leader: number };
        found.push({ replica: id, view: line.view, leader: line.leader, atMs: Date.parse(line.ts) });
      } catch {
        // A line cut by the log buffer's trimming: not a view change.
      }
    }
  }
  return found;
}

/**
 * When every correct replica had installed a view led by a correct replica, in ms after
 * `fromMs`; null if one of them never did.
 */
export function replacementMs(
  installed: readonly ViewInstalled[],
  correct: readonly number[],
  adversary: number,
  fromMs: number,
): number | null {
  let latest = 0;
  for (const id of correct) {
    const first = installed
      .filter((v) => v.replica === id && v.atMs >= fromMs && v.leader !== adversary)
      .sort((a, b) => a.atMs - b.atMs)[0];
    if (first === undefined) return null;
    latest = Math.max(latest, first.atMs - fromMs);
  }
  return latest;
}

/** A row that measured nothing meaningful and is worth running again. */
class RetryRow extends Error {}

/** Times a row is run at most when its fault-free run moved the leader. */
const ROW_ATTEMPTS_MAX = 3;

async function runRowWithRetries(
  spec: AttackSpec,
  events: number,
  index: number,
  total: number,
  logsDir: string | null,
): Promise<RowResult> {
  const notes: string[] = [];
  for (let attempt = 1; ; attempt++) {
    try {
      const row = await runRow(spec, events, index, total, logsDir);
      return notes.length === 0 ? row : { ...row, retries: notes };
    } catch (error) {
      if (!(error instanceof RetryRow)) throw error;
      notes.push(error.message);
      progress(`[${index + 1}/${total}] ${spec.name}: ${error.message}; ${attempt < ROW_ATTEMPTS_MAX ? "again" : "giving up"}`);
      if (attempt >= ROW_ATTEMPTS_MAX) {
        return {
          ...unmeasured(`${ROW_ATTEMPTS_MAX} attempts: ${error.message}`),
          attack: spec.name,
          what: spec.what,
          leaderAttack: spec.kind === "replica" && spec.adversary === 0,
          retries: notes,
        };
      }
    }
  }
}

async function runRow(spec: AttackSpec, events: number, index: number, total: number, logsDir: string | null): Promise<RowResult> {
  const tagOf = `[${index + 1}/${total}] ${spec.name}`;
  const adversary = spec.kind === "replica" ? spec.adversary : null;
  const metricsBase = freePortRange(4);
  const cluster = await startCluster({ start: false, replicaArgs: (id) => ["--metrics", `127.0.0.1:${metricsBase + id}`] });
  const correct = [0, 1, 2, 3].filter((id) => id !== adversary);
  const correctPorts = correct.map((id) => metricsBase + id);
  let adversaryProc: ReturnType<typeof spawn> | null = null;
  let attackerProc: ReturnType<typeof spawn> | null = null;
  let admin: FitbClient | null = null;
  const benchLogs: string[] = [];
  const base = { attack: spec.name, what: spec.what, leaderAttack: spec.kind === "replica" && spec.adversary === 0 };
  try {
    progress(`${tagOf}: starting 4 replicas${adversary === null ? "" : ` (replica ${adversary} is the adversary: ${spec.what})`}`);
    for (const id of correct) cluster.start(id);
    if (spec.kind === "replica") {
      adversaryProc = spawn(
        [BUN, ADVERSARY_REPLICA, "--config", cluster.configPath, "--id", String(spec.adversary), "--behaviour", spec.behaviour],
        "pipe",
      );
    }
    const ready = await waitForStatuses(correctPorts, (all) => all.every((s) => s.peersUp === 3 && s.mode === "normal"), READY_MS_MAX);
    if (!ready.ok) throw new Error(`the replicas did not all connect within ${READY_MS_MAX / 1_000} s`);
    admin = clientFor(cluster, cluster.adminKey);
    await admin.admin({ t: "create-channel", tag: TAG, fault: "byzantine", order: "total", priority: "normal", public: true });
    await admin.admin({ t: "register", tag: TAG, role: "publisher", key: loadPublicKeyFile(`${cluster.clientKey}.pub`) });
    const attackerKeyPath = join(cluster.dir, "attacker.key");
    if (spec.kind === "clients" && spec.attack === "gapped-seqs") {
      // A compromised probe: a key the admin registered on the channel.
      const key = SigningKey.generate();
      writeFileSync(attackerKeyPath, formatSecretKeyFile(key), { mode: 0o600 });
      await admin.admin({ t: "register", tag: TAG, role: "publisher", key: key.publicKey });
    }

    progress(`${tagOf}: fault-free bench (${events} events of ${EVENT_BYTES} B)`);
    const faultFree = await runBench(cluster, events, "fault-free", benchLogs);
    const before = await waitForStatuses(
      correctPorts,
      (all) => all.every((s) => s.mode === "normal" && s.view === all[0]?.view),
      SETTLE_MS_MAX,
    );
    const viewBefore = Math.max(...before.statuses.map((s) => s?.view ?? 0));
    if (adversary !== null && base.leaderAttack !== (viewBefore % cluster.n === adversary)) {
      // The leader changed during the fault-free run (a suspicion under load): the attack
      // would not hit the replica it is meant for. The row is run again on a fresh cluster.
      throw new RetryRow(`the view moved to ${viewBefore} during the fault-free run; replica ${viewBefore % cluster.n} leads it`);
    }

    progress(`${tagOf}: turning the attack on`);
    const attackStartMs = Date.now();
    if (spec.kind === "replica") {
      const proc = adversaryProc as ReturnType<typeof spawn>;
      proc.proc.stdin?.write("attack\n");
      proc.proc.stdin?.flush();
      const on = await proc.out.waitFor((t) => t.includes('"adversary attack on"'), ENGAGE_MS_MAX);
      if (on === null) throw new Error("the adversary replica did not turn its attack on");
    } else {
      const args = [BUN, ADVERSARY_CLIENTS, "--config", cluster.configPath, "--attack", spec.attack, "--tag", TAG];
      if (spec.attack === "gapped-seqs") args.push("--key", attackerKeyPath);
      attackerProc = spawn(args, "pipe");
      const engaged = await attackerProc.out.waitFor((t) => t.includes('"engaged"'), ENGAGE_MS_MAX);
      if (engaged === null) throw new Error(`the hostile clients did not engage within ${ENGAGE_MS_MAX / 1_000} s`);
      progress(`${tagOf}: ${engaged}`);
    }

    progress(`${tagOf}: bench under attack`);
    const attackerPid = (adversaryProc ?? attackerProc)?.proc.pid;
    const cpuBefore = { cpu: cpuSeconds(attackerPid), wallMs: Date.now() };
    const underAttack = await runBench(cluster, events, "under attack", benchLogs);
    const cpuAfter = cpuSeconds(attackerPid);
    const adversaryCpuPercent =
      cpuBefore.cpu === null || cpuAfter === null ? null : (100 * (cpuAfter - cpuBefore.cpu) * 1_000) / (Date.now() - cpuBefore.wallMs);
    // Hostile clients stop here, so that replicas they swamped can answer their status
    // (the view changes that count happened meanwhile). An adversary replica stays: if it
    // crashed now, a view it leads would change once more.
    const attackerReport = attackerProc?.err.last((t) => t.startsWith("adversary-clients")) ?? null;
    attackerProc?.proc.kill("SIGKILL");
    await attackerProc?.proc.exited;
    const after = await waitForStatuses(
      correctPorts,
      (all) => all.every((s) => s.mode === "normal" && s.view === all[0]?.view),
      SETTLE_MS_MAX,
    );
    const viewAfter = Math.max(...after.statuses.map((s) => s?.view ?? 0));
    const installed = viewsInstalled(cluster, correct);
    const adversaryReport = adversaryProc?.out.last((t) => t.includes('"adversary ') && !t.includes("attack on")) ?? attackerReport;
    if (adversaryProc !== null) {
      adversaryProc.proc.stdin?.write("peace\n");
      adversaryProc.proc.stdin?.flush();
      const off = await adversaryProc.out.waitFor((t) => t.includes('"adversary attack off"'), ENGAGE_MS_MAX);
      if (off === null) throw new Error("the adversary replica did not turn its attack off");
    }
    progress(`${tagOf}: fault-free bench again, the attack off`);
    const faultFreeAfter = await runBench(cluster, events, "fault-free after", benchLogs);
    const control = await runCpuMatched(cluster, events, adversaryCpuPercent, tagOf, benchLogs);
    const replaceLeaderMs = base.leaderAttack && adversary !== null ? replacementMs(installed, correct, adversary, attackStartMs) : null;
    const row: RowResult = {
      ...base,
      faultFree,
      underAttack,
      faultFreeAfter,
      viewChanges: after.ok ? viewAfter - viewBefore : null,
      viewsDisagree: after.ok ? null : correct.map((id, i) => `replica ${id}: ${describeStatus(after.statuses[i] ?? null)}`).join(", "),
      replaceLeaderMs,
      afterReplacementEventsPerSecond: replaceLeaderMs === null ? null : rateAfter(underAttack, attackStartMs + replaceLeaderMs),
      adversaryReport,
      adversaryCpuPercent,
      cpuMatched: control?.figures ?? null,
      cpuMatchedHogPercent: control?.hogPercent ?? null,
      error: null,
    };
    const retained = retainedPercent(row);
    progress(
      `${tagOf}: fault-free ${Math.round(faultFree.eventsPerSecond)} and ${Math.round(faultFreeAfter.eventsPerSecond)} ev/s, under attack ${Math.round(underAttack.eventsPerSecond)} ev/s` +
        ` (${retained === null ? "-" : retained.toFixed(0)}%), views ${viewBefore} -> ${viewAfter}${after.ok ? "" : " (the replicas did not agree on a view)"}`,
    );
    return row;
  } catch (error) {
    if (error instanceof RetryRow) throw error;
    const message = error instanceof Error ? error.message : String(error);
    progress(`${tagOf}: failed: ${message}`);
    return { ...base, ...unmeasured(message) };
  } finally {
    admin?.close();
    attackerProc?.proc.kill("SIGKILL");
    adversaryProc?.proc.kill("SIGKILL");
    await Promise.all([attackerProc?.proc.exited, adversaryProc?.proc.exited]);
    await cluster.stop();
    if (logsDir !== null) keepLogs(join(logsDir, spec.name), cluster, correct, adversaryProc, attackerProc, benchLogs);
  }
}

/**
 * The fault-free workload once more beside hogs asking for the CPU the adversary used
 * (see cpu-hog.ts), and the CPU they really took; null when the adversary used too little.
 */
async function runCpuMatched(
  cluster: TestCluster,
  events: number,
  adversaryCpuPercent: number | null,
  tagOf: string,
  benchLogs: string[],
): Promise<{ figures: BenchFigures; hogPercent: number | null } | null> {
  const shares = hogShares(adversaryCpuPercent);
  if (shares.length === 0) return null;
  progress(`${tagOf}: fault-free bench beside ${shares.length} process(es) taking ${adversaryCpuPercent?.toFixed(0)}% of a core`);
  const hogs = shares.map((share) => spawn([BUN, CPU_HOG, "--percent", share.toFixed(1)], "ignore"));
  try {
    for (const hog of hogs) {
      if ((await hog.out.waitFor((t) => t.includes('"hog running"'), ENGAGE_MS_MAX)) === null) throw new Error("the CPU hog did not start");
    }
    const before = { cpu: hogs.map((h) => cpuSeconds(h.proc.pid)), wallMs: Date.now() };
    const figures = await runBench(cluster, events, "fault-free beside the CPU hog", benchLogs);
    const after = hogs.map((h) => cpuSeconds(h.proc.pid));
    const wallMs = Date.now() - before.wallMs;
    const used = after.reduce<number | null>((sum, cpu, i) => {
      const start = before.cpu[i];
      return sum === null || cpu === null || start === null || start === undefined ? null : sum + (cpu - start);
    }, 0);
    return { figures, hogPercent: used === null ? null : (100 * used * 1_000) / wallMs };
  } finally {
    for (const hog of hogs) hog.proc.kill("SIGKILL");
    await Promise.all(hogs.map((h) => h.proc.exited));
  }
}

/** Writes a row's output where --logs said, one file per process. */
function keepLogs(
  dir: string,
  cluster: TestCluster,
  correct: readonly number[],
  adversaryProc: ReturnType<typeof spawn> | null,
  attackerProc: ReturnType<typeof spawn> | null,
  benchLogs: readonly string[],
): void {
  mkdirSync(dir, { recursive: true });
  const text = (lines: Lines | undefined): string => (lines?.lines ?? []).map((l) => `${l.text}\n`).join("");
  for (const id of correct) writeFileSync(join(dir, `replica-${id}.log`), (cluster.logs[id] ?? []).join(""));
  if (adversaryProc !== null) writeFileSync(join(dir, "adversary.log"), text(adversaryProc.out) + text(adversaryProc.err));
  if (attackerProc !== null) writeFileSync(join(dir, "attacker.log"), text(attackerProc.out) + text(attackerProc.err));
  writeFileSync(join(dir, "bench.log"), benchLogs.join("\n"));
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
  const deadline = stopOnSignalsAndDeadline(bail, RUN_MS_MAX);
  const startedMs = Date.now();
  const rows: RowResult[] = [];
  for (const [index, spec] of options.attacks.entries())
    rows.push(await runRowWithRetries(spec, options.events, index, options.attacks.length, options.logsDir));
  clearTimeout(deadline);
  const seconds = Math.round((Date.now() - startedMs) / 1_000);
  if (options.json) {
    console.log(
      JSON.stringify({ events: options.events, eventBytes: EVENT_BYTES, retainedPercentMin: RETAINED_PERCENT_MIN, seconds, rows }, null, 2),
    );
  } else {
    console.log(`${options.events} events of ${EVENT_BYTES} B per run, byzantine/total, 4 replicas on 127.0.0.1; ${seconds} s in all`);
    console.log("");
    console.log(formatTable(rows));
    const findings = formatFindings(rows);
    console.log("");
    console.log(findings.length === 0 ? `every row retains at least ${RETAINED_PERCENT_MIN}%` : `** below the bar or with problems:`);
    for (const line of findings) console.log(`  ${line}`);
  }
  process.exit(0);
}

if (import.meta.main) await main();

/** The figures of a row that could not be measured, and why. */
function unmeasured(error: string) {
  return {
    faultFree: null,
    underAttack: null,
    viewChanges: null,
    replaceLeaderMs: null,
    afterReplacementEventsPerSecond: null,
    adversaryReport: null,
    error,
  };
}
