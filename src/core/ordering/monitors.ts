/**
 * Aardvark's expectations of a leader (Clement et al., NSDI'09 §4.3; core/ordering/PROTOCOL.md §5) that
 * need state across ticks: the throughput requirement, and the per-peer flood counter.
 * The heartbeat and fairness checks are stateless and live in the core's tick handler
 * (timers.ts).
 */
import type { ReplicaId } from "./config.ts";

export interface ThroughputParams {
  readonly throughputWindowTicks: number;
  readonly throughputGraceTicks: number;
  readonly throughputRequiredPercent: number;
  readonly throughputStepPercent: number;
}

/**
 * Observed throughput = requests executed per busy tick, judged per window of
 * throughputWindowTicks. A window with fewer than half its ticks busy is not judged: light
 * load is not a slow leader. At view installation the requirement becomes
 * throughputRequiredPercent of the best view among the last `historyViews`; after
 * throughputGraceTicks every window that meets it raises it by throughputStepPercent, so
 * a leader that merely keeps up is eventually rotated.
 */
export class ThroughputMonitor {
  private readonly history: number[] = [];
  private required = 0;
  private viewStart = 0;
  private windowStart = 0;
  private windowBusy = 0;
  private windowExecuted = 0;
  private viewBusy = 0;
  private viewExecuted = 0;

  constructor(
    private readonly params: ThroughputParams,
    private readonly historyViews: number,
  ) {}

  /** The requirement in requests per busy tick (0 while nothing has been observed). */
  get requiredRate(): number {
    return this.required;
  }

  onViewInstalled(now: number): void {
    if (this.viewBusy > 0) {
      this.history.push(this.viewExecuted / this.viewBusy);
      if (this.history.length > this.historyViews) this.history.shift();
    }
    const best = this.history.length === 0 ? 0 : Math.max(...this.history);
    this.required = (best * this.params.throughputRequiredPercent) / 100;
    this.viewStart = now;
    this.windowStart = now;
    this.windowBusy = 0;
    this.windowExecuted = 0;
    this.viewBusy = 0;
    this.viewExecuted = 0;
  }

  onExecuted(requests: number): void {
    this.windowExecuted += requests;
  }

  /** Advances one tick; returns true when a judged window fell below the requirement. */
  onTick(now: number, busy: boolean): boolean {
    if (busy) this.windowBusy++;
    if (now - this.windowStart < this.params.throughputWindowTicks) return false;
    const judged = this.windowBusy * 2 >= this.params.throughputWindowTicks;
    let slow = false;
    if (judged) {
      const observed = this.windowExecuted / this.windowBusy;
      this.viewBusy += this.windowBusy;
      this.viewExecuted += this.windowExecuted;
      if (now - this.viewStart >= this.params.throughputGraceTicks && this.required > 0) {
        if (observed < this.required) slow = true;
        else this.required *= 1 + this.params.throughputStepPercent / 100;
      }
    }
    this.windowStart = now;
    this.windowBusy = 0;
    this.windowExecuted = 0;
    return slow;
  }
}

/**
 * Aardvark's expectation from the first view on, judged against offered load. A tick is
 * starved when a request has waited at this replica past the batch delay and a little
 * slack for network delay, the pipeline has room, and no proposal arrived for as long.
 * A correct leader proposes whenever it has room and requests waiting (core.ts,
 * tryPropose), so a window in which more than `starvedPercentMax` of the ticks are starved
 * means the leader keeps the group idle while work waits: a slow leader, replaced in one
 * window whatever the history says (the throughput requirement needs earlier views to
 * compare with, and has none in view 0 or after a restart or a quiet spell).
 */
export class StarvationMonitor {
  private windowStart = 0;
  private starved = 0;

  constructor(
    private readonly windowTicks: number,
    private readonly starvedPercentMax: number,
  ) {}

  onViewInstalled(now: number): void {
    this.windowStart = now;
    this.starved = 0;
  }

  /** Advances one tick; returns true when a window ended with too many starved ticks. */
  onTick(now: number, starved: boolean): boolean {
    if (starved) this.starved++;
    if (now - this.windowStart < this.windowTicks) return false;
    const slow = this.starved * 100 > this.starvedPercentMax * this.windowTicks;
    this.windowStart = now;
    this.starved = 0;
    return slow;
  }
}

/** A peer is flagged only above this many messages per window, whatever the others send. */
export const FLOOD_MESSAGES_MIN = 1000;

/** Counts messages per peer per window and names peers far above the busiest other one. */
export class FloodMonitor {
  private readonly counts: number[];
  private windowStart = 0;

  constructor(
    n: number,
    private readonly windowTicks: number,
    private readonly threshold: number,
  ) {
    this.counts = new Array<number>(n).fill(0);
  }

  count(peer: ReplicaId): void {
    this.counts[peer] = (this.counts[peer] ?? 0) + 1;
  }

  /** At the end of each window, the peers sending more than `threshold` times any other. */
  onTick(now: number): ReplicaId[] {
    if (now - this.windowStart < this.windowTicks) return [];
    const flagged: ReplicaId[] = [];
    for (let p = 0; p < this.counts.length; p++) {
      const mine = this.counts[p] ?? 0;
      if (mine < FLOOD_MESSAGES_MIN) continue;
      let busiestOther = 1;
      for (let q = 0; q < this.counts.length; q++) {
        if (q !== p) busiestOther = Math.max(busiestOther, this.counts[q] ?? 0);
      }
      if (mine > this.threshold * busiestOther) flagged.push(p);
    }
    this.counts.fill(0);
    this.windowStart = now;
    return flagged;
  }
}
