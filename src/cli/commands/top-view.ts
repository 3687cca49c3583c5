/**
 * What `fitb top` shows, from two status samples: the replicas (status-report.ts), each
 * channel's rates over the interval and the latency of the interval. Pure functions,
 * so the view is tested without a terminal.
 *
 * Up to f replicas may answer anything: a channel is shown when f+1 replicas list it, and
 * each of its figures is the (f+1)-th highest the replicas report, one that a correct
 * replica reached or exceeded, so f liars can neither inflate it nor invent a channel.
 */
import type { ClusterStatus } from "../../client/client.ts";
import type { ReplicaStatusAnswer } from "../../client/queries.ts";
import { vouchQuorum } from "../../core/voting/quorum.ts";
import { LATENCY_BUCKETS_SECONDS } from "../../metrics/registry.ts";
import { printable, type StatusReport } from "./status-report.ts";

/**
 * The latency bucket bounds (µs) this build's replicas use (replica/metrics.ts
 * latencySummary): an answer with other bounds is left out of the latency, so that no
 * replica chooses how the others' counts are read.
 */
export const LATENCY_BOUNDS_US: readonly number[] = LATENCY_BUCKETS_SECONDS.map((seconds) => Math.round(seconds * 1e6));

export interface TopSample {
  readonly atMs: number;
  readonly status: ClusterStatus;
}

export interface ChannelRates {
  readonly tag: string;
  readonly class: string;
  readonly priority: string;
  /** Events per second over the interval, the (f+1)-th highest of the replicas' counts (null: fewer than f+1 counted both times). */
  readonly publishedPerS: number | null;
  readonly storedPerS: number | null;
  readonly deliveredPerS: number | null;
  readonly shedPerS: number | null;
  /** Events stored since the replicas started (the (f+1)-th highest count). */
  readonly stored: number;
}

export const LATENCY_KINDS = ["publishAck", "ordering", "storageCommit", "delivery"] as const;
export type LatencyKind = (typeof LATENCY_KINDS)[number];

export interface IntervalLatency {
  readonly count: number;
  readonly p50Ms: number | null;
  readonly p99Ms: number | null;
}

type Traffic = NonNullable<ReplicaStatusAnswer["traffic"]>[number];
type Counter = "published" | "stored" | "delivered" | "shed";

/**
 * The answers of a sample, each with the id of the replica whose session it came on: not
 * the id the answer claims, which a faulty replica could set to a correct one's so that
 * its counters were subtracted from that one's.
 */
function answers(sample: TopSample): { replica: number; answer: ReplicaStatusAnswer }[] {
  const out: { replica: number; answer: ReplicaStatusAnswer }[] = [];
  for (const replica of sample.status.replicas)
    if (replica.answer?.ok === true) out.push({ replica: replica.id, answer: replica.answer.value });
  return out;
}

const COUNTERS: readonly Counter[] = ["published", "stored", "delivered", "shed"];

/** The (f+1)-th highest value: one at least one correct replica reached; null when fewer than f+1. */
function vouched(values: readonly number[], f: number): number | null {
  if (values.length < vouchQuorum(f)) return null;
  return [...values].sort((a, b) => b - a)[f] as number;
}

/**
 * Each channel's rates between two samples (every channel f+1 replicas of `current` list,
 * sorted by tag), each figure the (f+1)-th highest over the replicas: a crash/none channel
 * is stored by f+1 replicas only, and those are counted. `f`: the group's (StatusReport.f);
 * by default the most the sample's replicas tolerate, which never takes fewer vouchers.
 */
export function channelRates(
  previous: TopSample | null,
  current: TopSample,
  f = Math.max(0, Math.floor((current.status.replicas.length - 1) / 3)),
): ChannelRates[] {
  const seconds = previous === null ? 0 : (current.atMs - previous.atMs) / 1000;
  const before = new Map<string, Traffic>();
  for (const { replica, answer } of previous === null ? [] : answers(previous)) {
    for (const row of answer.traffic ?? []) before.set(`${replica} ${row.tag} ${row.class} ${row.priority}`, row);
  }
  /** Per channel: its row (for the names), each replica's stored count, and each rate of the replicas that listed it both times. */
  const byChannel = new Map<string, { row: Traffic; stored: number[]; rates: Record<Counter, number[]> }>();
  for (const { replica, answer } of answers(current)) {
    const listed = new Set<string>();
    for (const row of answer.traffic ?? []) {
      const key = `${row.tag} ${row.class} ${row.priority}`;
      // A replica listing a channel twice counts once.
      if (listed.has(key)) continue;
      listed.add(key);
      const entry = byChannel.get(key) ?? { row, stored: [], rates: { published: [], stored: [], delivered: [], shed: [] } };
      entry.stored.push(row.stored);
      const old = before.get(`${replica} ${key}`);
      if (seconds > 0 && old !== undefined) {
        for (const counter of COUNTERS) entry.rates[counter].push(Math.max(0, row[counter] - old[counter]) / seconds);
      }
      byChannel.set(key, entry);
    }
  }
  return [...byChannel.values()]
    .filter((entry) => entry.stored.length >= vouchQuorum(f))
    .map(({ row, stored, rates }) => ({
      tag: row.tag,
      class: row.class,
      priority: row.priority,
      publishedPerS: vouched(rates.published, f),
      storedPerS: vouched(rates.stored, f),
      deliveredPerS: vouched(rates.delivered, f),
      shedPerS: vouched(rates.shed, f),
      stored: vouched(stored, f) as number,
    }))
    .sort((a, b) => (a.tag < b.tag ? -1 : a.tag > b.tag ? 1 : 0));
}

type Latency = NonNullable<ReplicaStatusAnswer["latency"]>;

/** Whether a replica's histograms are read with LATENCY_BOUNDS_US: the same bounds, one count per bucket and +Inf. */
function hasLocalBounds(latency: Latency | undefined, kind: LatencyKind): latency is Latency {
  return (
    latency !== undefined &&
    latency.boundsUs.length === LATENCY_BOUNDS_US.length &&
    latency.boundsUs.every((bound, i) => bound === LATENCY_BOUNDS_US[i]) &&
    latency[kind].counts.length === LATENCY_BOUNDS_US.length + 1
  );
}

/**
 * One latency histogram over the interval, summed over the replicas that answered both
 * times (since start: the first time), with LATENCY_BOUNDS_US; answers with other bounds
 * are left out.
 */
export function intervalLatency(previous: TopSample | null, current: TopSample, kind: LatencyKind): IntervalLatency {
  const old = new Map((previous === null ? [] : answers(previous)).map(({ replica, answer }) => [replica, answer.latency] as const));
  const deltas = new Array<number>(LATENCY_BOUNDS_US.length + 1).fill(0);
  for (const { replica, answer } of answers(current)) {
    const now = answer.latency;
    if (!hasLocalBounds(now, kind)) continue;
    // A replica whose earlier answer had other bounds is left out too: its counts cannot be subtracted.
    const then = old.get(replica);
    if (old.has(replica) && !hasLocalBounds(then, kind)) continue;
    now[kind].counts.forEach((count, i) => {
      deltas[i] = (deltas[i] as number) + Math.max(0, count - (then?.[kind].counts[i] ?? 0));
    });
  }
  const count = deltas.reduce((a, b) => a + b, 0);
  return { count, p50Ms: quantileMs(LATENCY_BOUNDS_US, deltas, 0.5), p99Ms: quantileMs(LATENCY_BOUNDS_US, deltas, 0.99) };
}

/**
 * The q-quantile of a histogram (bounds in µs, counts per bucket with +Inf last), by
 * linear interpolation inside its bucket, as Prometheus's histogram_quantile does; null
 * when empty. Past the last bound it answers the last bound.
 */
export function quantileMs(boundsUs: readonly number[], counts: readonly number[], q: number): number | null {
  const total = counts.reduce((a, b) => a + b, 0);
  if (total === 0) return null;
  const target = q * total;
  let cumulative = 0;
  for (let i = 0; i < counts.length; i++) {
    const count = counts[i] as number;
    if (count > 0 && cumulative + count >= target) {
      if (i >= boundsUs.length) return (boundsUs.at(-1) ?? 0) / 1000;
      const lower = i === 0 ? 0 : (boundsUs[i - 1] as number);
      const upper = boundsUs[i] as number;
      return (lower + ((upper - lower) * (target - cumulative)) / count) / 1000;
    }
    cumulative += count;
  }
  return (boundsUs.at(-1) ?? 0) / 1000;
}

function rate(value: number | null): string {
  if (value === null) return "-";
  return value >= 100 ? value.toFixed(0) : value.toFixed(1);
}

function ms(value: number | null): string {
  return value === null ? "-" : value >= 100 ? `${value.toFixed(0)} ms` : `${value.toFixed(1)} ms`;
}

/** The screen: a header, the replicas, the problems, the channels and the latencies. */
export function renderTop(report: StatusReport, previous: TopSample | null, current: TopSample, clock: string): string[] {
  const lines: string[] = [];
  const leader = report.leader === null ? "none" : `${report.leader}${report.agreed ? "" : " (disputed)"}`;
  lines.push(
    `fitb top  cluster ${report.cluster}  n=${report.n} f=${report.f}  view ${report.view ?? "-"}  leader ${leader}  ` +
      `${report.answered}/${report.n} up  ${report.health}  ${clock}`,
  );
  lines.push("");
  const width = Math.max(7, ...report.replicas.map((r) => r.address.length));
  lines.push(`REPLICA  ${"ADDRESS".padEnd(width)}  UP     VIEW  LEADER  DECIDED  LAG     NOTE`);
  for (const r of report.replicas) {
    const cell = (value: number | null, size: number): string => (value === null ? "-" : String(value)).padEnd(size);
    lines.push(
      `${String(r.id).padEnd(7)}  ${r.address.padEnd(width)}  ${String(r.up).padEnd(5)}  ${cell(r.view, 4)}  ${cell(r.leader, 6)}  ` +
        `${cell(r.lastDecided, 7)}  ${cell(r.behind, 6)}  ${(r.up ? r.flags.join(",") : (r.reason ?? "")).trim()}`.trimEnd(),
    );
  }
  for (const problem of report.problems) lines.push(`! ${problem}`);
  for (const warning of report.warnings) lines.push(`  warning: ${warning}`);
  lines.push("");
  const channels = channelRates(previous, current, report.f).map((c) => ({
    ...c,
    tag: printable(c.tag),
    class: printable(c.class),
    priority: printable(c.priority),
  }));
  const tagWidth = Math.max(7, ...channels.map((c) => c.tag.length));
  lines.push(`${"CHANNEL".padEnd(tagWidth)}  CLASS            PRIORITY  PUB/S     STORED/S  DELIV/S   SHED/S    STORED-SINCE-START`);
  for (const c of channels) {
    lines.push(
      `${c.tag.padEnd(tagWidth)}  ${c.class.padEnd(15)}  ${c.priority.padEnd(8)}  ${rate(c.publishedPerS).padEnd(8)}  ` +
        `${rate(c.storedPerS).padEnd(8)}  ${rate(c.deliveredPerS).padEnd(8)}  ${rate(c.shedPerS).padEnd(8)}  ${c.stored}`,
    );
  }
  if (channels.length === 0) lines.push("(no channels)");
  else lines.push("(STORED-SINCE-START counts from the replicas' start; what a channel retains: fitb admin list-channels)");
  lines.push("");
  const names: Record<LatencyKind, string> = {
    publishAck: "publish-ack",
    ordering: "ordering",
    storageCommit: "storage commit",
    delivery: "delivery",
  };
  const parts = LATENCY_KINDS.map((kind) => {
    const latency = intervalLatency(previous, current, kind);
    return `${names[kind]} p50 ${ms(latency.p50Ms)} p99 ${ms(latency.p99Ms)} (${latency.count})`;
  });
  lines.push(`LATENCY ${previous === null ? "since start" : "last interval"}: ${parts.join("; ")}`);
  return lines;
}
