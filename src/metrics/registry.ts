/**
 * Metric families for Prometheus, on prom-client's registry and text format.
 *
 * Why not prom-client's own Counter and Histogram on the hot path: their labelled
 * children build a label string on every `inc` and `observe`. Here a series is a plain
 * object (a cell) bound once to its label values; the publish and ordering paths keep the
 * cell and add to a number. prom-client reads the cells only when scraped, formats them,
 * and supplies the process metrics (CPU, RSS, file descriptors, event loop lag).
 *
 * Every family is declared with its help text before the first scrape, and a family
 * without labels has its one series from the start, at zero.
 */
import { collectDefaultMetrics, Registry } from "prom-client";

export type MetricType = "counter" | "gauge" | "histogram";
export type LabelValues = readonly string[];

/** One exported sample, in the shape prom-client's registry formats. */
interface Sample {
  readonly value: number;
  readonly labels: Record<string, string>;
  readonly metricName?: string;
}

/** Latency buckets in seconds: 0.5 ms to 10 s. */
export const LATENCY_BUCKETS_SECONDS: readonly number[] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export class CounterCell {
  value = 0;
  inc(by = 1): void {
    this.value += by;
  }
}

export class GaugeCell {
  value = 0;
  set(value: number): void {
    this.value = value;
  }
}

export class HistogramCell {
  /** Observations per bucket (not cumulative); the last slot is +Inf. */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(readonly buckets: readonly number[]) {
    this.counts = new Float64Array(buckets.length + 1);
  }

  observe(value: number): void {
    const buckets = this.buckets;
    let i = 0;
    while (i < buckets.length && value > (buckets[i] as number)) i++;
    this.counts[i] = (this.counts[i] as number) + 1;
    this.sum += value;
    this.count++;
  }
}

/** A family of series of one kind, each bound once to its label values. */
abstract class Family<Cell> {
  private readonly cells = new Map<string, { readonly labels: Record<string, string>; readonly cell: Cell }>();

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly string[],
  ) {}

  protected abstract make(): Cell;
  protected abstract samplesOf(labels: Record<string, string>, cell: Cell, out: Sample[]): void;

  /** The series for these label values (in labelNames order), made on first use. */
  with(...values: LabelValues): Cell {
    const key = values.join("\u0000");
    const found = this.cells.get(key);
    if (found !== undefined) return found.cell;
    if (values.length !== this.labelNames.length)
      throw new RangeError(`${this.name}: ${this.labelNames.length} label values expected, got ${values.length}`);
    const labels: Record<string, string> = {};
    this.labelNames.forEach((name, i) => {
      labels[name] = values[i] as string;
    });
    const cell = this.make();
    this.cells.set(key, { labels, cell });
    return cell;
  }

  /** Drops one series (its channel or peer is gone). */
  remove(...values: LabelValues): void {
    this.cells.delete(values.join("\u0000"));
  }

  get size(): number {
    return this.cells.size;
  }

  /** The sum over every series (a labelled counter read as one number). */
  total(read: (cell: Cell) => number): number {
    let sum = 0;
    for (const { cell } of this.cells.values()) sum += read(cell);
    return sum;
  }

  samples(): Sample[] {
    const out: Sample[] = [];
    for (const { labels, cell } of this.cells.values()) this.samplesOf(labels, cell, out);
    return out;
  }
}

export class CounterFamily extends Family<CounterCell> {
  protected make(): CounterCell {
    return new CounterCell();
  }
  protected samplesOf(labels: Record<string, string>, cell: CounterCell, out: Sample[]): void {
    out.push({ value: cell.value, labels });
  }
}

export class GaugeFamily extends Family<GaugeCell> {
  protected make(): GaugeCell {
    return new GaugeCell();
  }
  protected samplesOf(labels: Record<string, string>, cell: GaugeCell, out: Sample[]): void {
    out.push({ value: cell.value, labels });
  }
}

export class HistogramFamily extends Family<HistogramCell> {
  constructor(
    name: string,
    help: string,
    labelNames: readonly string[],
    readonly buckets: readonly number[],
  ) {
    super(name, help, labelNames);
  }
  protected make(): HistogramCell {
    return new HistogramCell(this.buckets);
  }
  protected samplesOf(labels: Record<string, string>, cell: HistogramCell, out: Sample[]): void {
    let cumulative = 0;
    cell.buckets.forEach((le, i) => {
      cumulative += cell.counts[i] as number;
      out.push({ metricName: `${this.name}_bucket`, value: cumulative, labels: { ...labels, le: String(le) } });
    });
    out.push({ metricName: `${this.name}_bucket`, value: cell.count, labels: { ...labels, le: "+Inf" } });
    out.push({ metricName: `${this.name}_sum`, value: cell.sum, labels });
    out.push({ metricName: `${this.name}_count`, value: cell.count, labels });
  }
}

/** What prom-client's registry asks of a metric: its name, help, type and current samples. */
interface PromMetric {
  readonly name: string;
  readonly help: string;
  readonly type: MetricType;
  readonly aggregator: "sum";
  get(): Promise<{ name: string; help: string; type: MetricType; values: Sample[]; aggregator: "sum" }>;
}

/** prom-client default metrics that fail promtool's lint (gauges ending in _total). */
const LINT_FAILING_DEFAULTS = ["nodejs_active_handles_total", "nodejs_active_requests_total", "nodejs_active_resources_total"];

export class MetricsRegistry {
  private readonly prom = new Registry();
  private readonly families = new Map<string, Family<unknown>>();
  /** Run before each scrape: gauges that are read from state rather than kept. */
  private readonly beforeScrape: (() => void)[] = [];
  private processMetrics = false;

  constructor(readonly prefix = "fitb_") {}

  counter(name: string, help: string, labelNames: readonly string[] = []): CounterFamily {
    return this.add(new CounterFamily(this.prefix + name, help, labelNames), "counter");
  }

  gauge(name: string, help: string, labelNames: readonly string[] = []): GaugeFamily {
    return this.add(new GaugeFamily(this.prefix + name, help, labelNames), "gauge");
  }

  histogram(name: string, help: string, labelNames: readonly string[] = [], buckets = LATENCY_BUCKETS_SECONDS): HistogramFamily {
    return this.add(new HistogramFamily(this.prefix + name, help, labelNames, buckets), "histogram");
  }

  /** `refresh` runs before every scrape, to set gauges read from state. */
  onScrape(refresh: () => void): void {
    this.beforeScrape.push(refresh);
  }

  /** `<prefix>build_info{version,runtime} 1`: which build answers. */
  buildInfo(version: string, runtime: string): void {
    this.gauge("build_info", "Always 1: the fitb version and the runtime it runs on, as labels", ["version", "runtime"])
      .with(version, runtime)
      .set(1);
  }

  /**
   * The standard process metrics (process_cpu_seconds_total, process_resident_memory_bytes,
   * process_open_fds, nodejs_eventloop_lag_seconds, ...), unprefixed as dashboards expect.
   * Once per registry; a process should serve one registry with them.
   */
  withProcessMetrics(): void {
    if (this.processMetrics) return;
    this.processMetrics = true;
    collectDefaultMetrics({ register: this.prom });
    // Gauges named like counters, which `promtool check metrics` refuses; the handle
    // and request counts they carry say little about a replica anyway.
    for (const name of LINT_FAILING_DEFAULTS) this.prom.removeSingleMetric(name);
  }

  /** The Prometheus text format (version 0.0.4). */
  async text(): Promise<string> {
    for (const refresh of this.beforeScrape) refresh();
    return this.prom.metrics();
  }

  get contentType(): string {
    return this.prom.contentType;
  }

  private add<F extends Family<unknown>>(family: F, type: MetricType): F {
    if (this.families.has(family.name)) throw new Error(`metric ${family.name} is declared twice`);
    this.families.set(family.name, family);
    // A family without labels exports its one series from the start, at zero.
    if (family.labelNames.length === 0) family.with();
    const metric: PromMetric = {
      name: family.name,
      help: family.help,
      type,
      aggregator: "sum",
      get: async () => ({ name: family.name, help: family.help, type, values: family.samples(), aggregator: "sum" }),
    };
    this.prom.registerMetric(metric as unknown as Parameters<Registry["registerMetric"]>[0]);
    return family;
  }
}
