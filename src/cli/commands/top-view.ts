/**
 * What `fitb top` shows, from two status samples: the replicas (status-report.ts), each
 * channel's rates over the interval and the latency of the interval. Pure functions,
 * so the view is tested without a terminal.
 */
import type { ClusterStatus } from "../../client/client.ts";
import type { ReplicaStatusAnswer } from "../../client/queries.ts";
import type { StatusReport } from "./status-report.ts";

export interface TopSample {
  readonly atMs: number;
  readonly status: ClusterStatus;
}

export interface ChannelRates {
  readonly tag: string;
  readonly class: string;
  readonly priority: string;
  /** Events per second over the interval, as the busiest replica counted them (null: first sample). */
  readonly publishedPerS: number | null;
  readonly storedPerS: number | null;
  readonly deliveredPerS: number | null;
  readonly shedPerS: number | null;
  /** Events stored since the replica started (the largest count among replicas). */
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

function answers(sample: TopSample): ReplicaStatusAnswer[] {
  const out: ReplicaStatusAnswer[] = [];
  for (const replica of sample.status.replicas) if (replica.answer?.ok === true) out.push(replica.answer.value);
  return out;
}

/** Each channel's rates between two samples (every channel of `current`, sorted by tag). */
export function channelRates(previous: TopSample | null, current: TopSample): ChannelRates[] {
  const seconds = previous === null ? 0 : (current.atMs - previous.atMs) / 1000;
  const before = new Map<string, Traffic>();
  for (const answer of previous === null ? [] : answers(previous)) {
    for (const row of answer.traffic ?? []) before.set(`${answer.replica} ${row.tag} ${row.class} ${row.priority}`, row);
  }
  const byChannel = new Map<string, { row: Traffic; rates: Record<Counter, number | null> }>();
  for (const answer of answers(current)) {
    for (const row of answer.traffic ?? []) {
      const key = `${row.tag} ${row.class} ${row.priority}`;
      const old = before.get(`${answer.replica} ${key}`);
      const rate = (counter: Counter): number | null =>
        seconds <= 0 || old === undefined ? null : Math.max(0, row[counter] - old[counter]) / seconds;
      const entry = byChannel.get(key) ?? { row, rates: { published: null, stored: null, delivered: null, shed: null } };
      for (const counter of ["published", "stored", "delivered", "shed"] as const) {
        const mine = rate(counter);
        const theirs = entry.rates[counter];
        entry.rates[counter] = mine === null ? theirs : Math.max(mine, theirs ?? 0);
      }
      if (row.stored > entry.row.stored) entry.row = row;
      byChannel.set(key, entry);
    }
  }
  return [...byChannel.values()]
    .map(({ row, rates }) => ({
      tag: row.tag,
      class: row.class,
      priority: row.priority,
      publishedPerS: rates.published,
      storedPerS: rates.stored,
      deliveredPerS: rates.delivered,
      shedPerS: rates.shed,
      stored: row.stored,
    }))
    .sort((a, b) => (a.tag < b.tag ? -1 : a.tag > b.tag ? 1 : 0));
}

/** One latency histogram over the interval, summed over the replicas that answered both times. */
export function intervalLatency(previous: TopSample | null, current: TopSample, kind: LatencyKind): IntervalLatency {
  const old = new Map((previous === null ? [] : answers(previous)).map((a) => [a.replica, a.latency] as const));
  let bounds: readonly number[] = [];
  let deltas: number[] = [];
  for (const answer of answers(current)) {
    const now = answer.latency;
    if (now === undefined) continue;
    const then = old.get(answer.replica);
    bounds = now.boundsUs;
    if (deltas.length === 0) deltas = new Array<number>(now[kind].counts.length).fill(0);
    now[kind].counts.forEach((count, i) => {
      deltas[i] = (deltas[i] as number) + Math.max(0, count - (then?.[kind].counts[i] ?? 0));
    });
  }
  const count = deltas.reduce((a, b) => a + b, 0);
  return { count, p50Ms: quantileMs(bounds, deltas, 0.5), p99Ms: quantileMs(bounds, deltas, 0.99) };
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
  lines.push("");
  const channels = channelRates(previous, current);
  const tagWidth = Math.max(7, ...channels.map((c) => c.tag.length));
  lines.push(`${"CHANNEL".padEnd(tagWidth)}  CLASS            PRIORITY  PUB/S     STORED/S  DELIV/S   SHED/S    STORED`);
  for (const c of channels) {
    lines.push(
      `${c.tag.padEnd(tagWidth)}  ${c.class.padEnd(15)}  ${c.priority.padEnd(8)}  ${rate(c.publishedPerS).padEnd(8)}  ` +
        `${rate(c.storedPerS).padEnd(8)}  ${rate(c.deliveredPerS).padEnd(8)}  ${rate(c.shedPerS).padEnd(8)}  ${c.stored}`,
    );
  }
  if (channels.length === 0) lines.push("(no channels)");
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
