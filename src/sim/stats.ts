/** Aggregation of seed results into the figures the CLI and the tests report. */
import type { SeedResult } from "./simulator.ts";

export interface SeedFailure {
  seed: number;
  summary: string;
  violations: string[];
}

export class RunStats {
  seeds = 0;
  violations = 0;
  readonly failures: SeedFailure[] = [];
  private readonly latencies: number[] = [];
  private readonly recoveries: number[] = [];
  viewChanges = 0;
  decided = 0;
  messages = 0;
  verifications = 0;
  /** Decisions served from kept records below a stable checkpoint, and older states installed (PROTOCOL.md §7, "An older state"). */
  servedFromLog = 0;
  olderStates = 0;

  add(r: SeedResult): void {
    this.seeds++;
    this.viewChanges += r.viewChanges;
    this.servedFromLog += r.decidedServedFromLog;
    this.olderStates += r.olderStatesInstalled;
    this.decided += r.decided;
    this.messages += r.messages;
    this.verifications += r.verifications;
    for (const l of r.latencies) this.latencies.push(l);
    if (r.recoveryTicks !== null) this.recoveries.push(r.recoveryTicks);
    if (r.violationCount > 0) {
      this.violations += r.violationCount;
      this.failures.push({ seed: r.seed, summary: r.summary, violations: r.violations });
    }
  }

  merge(o: RunStatsJson): void {
    this.seeds += o.seeds;
    this.violations += o.violations;
    this.failures.push(...o.failures);
    this.latencies.push(...o.latencies);
    this.recoveries.push(...o.recoveries);
    this.viewChanges += o.viewChanges;
    this.decided += o.decided;
    this.messages += o.messages;
    this.verifications += o.verifications;
    this.servedFromLog += o.servedFromLog;
    this.olderStates += o.olderStates;
  }

  toJson(): RunStatsJson {
    return {
      seeds: this.seeds,
      violations: this.violations,
      failures: this.failures,
      latencies: this.latencies,
      recoveries: this.recoveries,
      viewChanges: this.viewChanges,
      decided: this.decided,
      messages: this.messages,
      verifications: this.verifications,
      servedFromLog: this.servedFromLog,
      olderStates: this.olderStates,
    };
  }

  latencyPercentile(p: number): number {
    return percentile(this.latencies, p);
  }

  recoveryPercentile(p: number): number {
    return percentile(this.recoveries, p);
  }

  recoveryMax(): number {
    return this.recoveries.reduce((a, b) => Math.max(a, b), 0);
  }

  report(seconds: number): string {
    const rate = seconds > 0 ? this.seeds / seconds : 0;
    const lines = [
      `seeds ${this.seeds} in ${seconds.toFixed(1)} s (${rate.toFixed(1)} seeds/s)`,
      `violations ${this.violations} (failing seeds: ${this.failures.length})`,
      `ticks to decide (submit -> f+1 correct executed): p50 ${this.latencyPercentile(50)} p99 ${this.latencyPercentile(99)} over ${this.latencies.length} requests`,
      `ticks from heal to all decided everywhere: p50 ${this.recoveryPercentile(50)} p99 ${this.recoveryPercentile(99)} max ${this.recoveryMax()}`,
      `per seed: ${(this.decided / Math.max(1, this.seeds)).toFixed(1)} seqs decided, ${(this.viewChanges / Math.max(1, this.seeds)).toFixed(1)} view-change starts, ${(this.messages / Math.max(1, this.seeds)).toFixed(0)} messages, ${(this.verifications / Math.max(1, this.seeds)).toFixed(0)} signature checks`,
      `catching up from an older state: ${this.olderStates} older states installed, ${this.servedFromLog} decisions served from kept records`,
    ];
    return lines.join("\n");
  }
}

export interface RunStatsJson {
  seeds: number;
  violations: number;
  failures: SeedFailure[];
  latencies: number[];
  recoveries: number[];
  viewChanges: number;
  decided: number;
  messages: number;
  verifications: number;
  servedFromLog: number;
  olderStates: number;
}

export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] as number;
}
