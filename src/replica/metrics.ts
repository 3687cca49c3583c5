/**
 * Counters and gauges, exposed in the Prometheus text format. Names follow Prometheus
 * conventions: `_total` for counters, units last.
 */
export class Metrics {
  private readonly counters = new Map<string, number>();
  private readonly gauges = new Map<string, () => number>();

  inc(name: string, by = 1): void {
    this.counters.set(name, (this.counters.get(name) ?? 0) + by);
  }

  get(name: string): number {
    return this.counters.get(name) ?? this.gauges.get(name)?.() ?? 0;
  }

  gauge(name: string, read: () => number): void {
    this.gauges.set(name, read);
  }

  snapshot(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [name, value] of this.counters) out[name] = value;
    for (const [name, read] of this.gauges) out[name] = read();
    return out;
  }

  prometheus(prefix = "fitb_"): string {
    const lines: string[] = [];
    for (const [name, value] of [...Object.entries(this.snapshot())].sort()) {
      lines.push(`# TYPE ${prefix}${name} ${name.endsWith("_total") ? "counter" : "gauge"}`);
      lines.push(`${prefix}${name} ${value}`);
    }
    return `${lines.join("\n")}\n`;
  }
}
