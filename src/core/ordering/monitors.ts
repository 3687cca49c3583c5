/**
 * Aardvark's expectations of a leader (Clement et al., NSDI'09 §4.3; core/ordering/PROTOCOL.md §5) that
 * need state across ticks: the throughput requirement, starvation, and the per-peer flood counter.
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

/** Consecutive judged windows below the requirement, with the leader to blame, that suspect it. */
export const THROUGHPUT_STRIKES = 2;

/**
 * Observed throughput = requests executed per busy tick, judged per window of
 * throughputWindowTicks; a window with fewer than half its ticks busy is not judged (light
 * load is not a slow leader). At view installation the requirement becomes
 * throughputRequiredPercent of the median rate of the last `historyViews` views this
 * replica observed (the median, not the best: one lucky view, or up to f views of faulty
 * leaders, cannot set it). After throughputGraceTicks a judged window below the
 * requirement is held against the leader only if the leader was the bottleneck for at
 * least half its busy ticks (`leaderBound`: work waited outside any proposal while the
 * pipeline had room); when agreement, a backup or the machine is the bottleneck the
 * leader is proposing all it can. THROUGHPUT_STRIKES such windows in a row suspect the
 * leader, and so does one such window below half the requirement (a gross slowdown goes
 * in one window). The requirement does not rise while a leader keeps up unless
 * throughputStepPercent is set (Aardvark's 1% per window, which rotates every leader
 * every few seconds, and round robin hands the lead back to a replica just replaced).
 */
export class ThroughputMonitor {
  private readonly history: number[] = [];
  private required = 0;
  private viewStart = 0;
  private windowStart = 0;
  private windowBusy = 0;
  private windowBound = 0;
  private windowExecuted = 0;
  private viewBusy = 0;
  private viewExecuted = 0;
  private strikes = 0;

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
    this.required = (lowerMedian(this.history) * this.params.throughputRequiredPercent) / 100;
    this.viewStart = now;
    this.windowStart = now;
    this.windowBusy = 0;
    this.windowBound = 0;
    this.windowExecuted = 0;
    this.viewBusy = 0;
    this.viewExecuted = 0;
    this.strikes = 0;
  }

  onExecuted(requests: number): void {
    this.windowExecuted += requests;
  }

  /**
   * Advances one tick; returns true when the leader is to be suspected. `busy`: this
   * replica held a request older than the batch delay. `leaderBound`: a request waited
   * outside any proposal while the pipeline had room.
   */
  onTick(now: number, busy: boolean, leaderBound: boolean): boolean {
    if (busy) this.windowBusy++;
    if (busy && leaderBound) this.windowBound++;
    if (now - this.windowStart < this.params.throughputWindowTicks) return false;
    const judged = this.windowBusy * 2 >= this.params.throughputWindowTicks;
    let slow = false;
    if (judged) {
      const observed = this.windowExecuted / this.windowBusy;
      this.viewBusy += this.windowBusy;
      this.viewExecuted += this.windowExecuted;
      if (now - this.viewStart >= this.params.throughputGraceTicks && this.required > 0) {
        if (observed >= this.required) {
          this.strikes = 0;
          this.required *= 1 + this.params.throughputStepPercent / 100;
        } else if (this.windowBound * 2 >= this.windowBusy) {
          this.strikes++;
          slow = this.strikes >= THROUGHPUT_STRIKES || observed * 2 < this.required;
        } else {
          // Slow, but not the leader's doing: the row of strikes is broken.
          this.strikes = 0;
        }
      }
    }
    this.windowStart = now;
    this.windowBusy = 0;
    this.windowBound = 0;
    this.windowExecuted = 0;
    return slow;
  }
}

/** The lower median (0 for none): with 2f+1 or more values, f outliers on either side cannot move it past a correct one. */
function lowerMedian(values: readonly number[]): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)] as number;
}

/**
 * Aardvark's expectation from the first view on, judged against offered load. A tick is
 * starved when a request has waited at this replica past the batch delay and a little
 * slack for network delay, the pipeline has room, and no proposal arrived for as long.
 * A correct leader proposes whenever it has room and requests waiting (core.ts,
 * tryPropose), so more than `starvedPercentMax` starved ticks among the last `windowTicks`
 * ticks means the leader keeps the group idle while work waits: a slow leader, replaced
 * whatever the history says (the throughput requirement needs earlier views to compare
 * with, and has none in view 0 or after a restart or a quiet spell). The window slides
 * tick by tick, so a leader that turns slow is suspected within one window of it, wherever
 * the slowdown falls; fixed windows could split it across two and take nearly two.
 */
export class StarvationMonitor {
  /** One mark per tick of the last window, at index tick mod windowTicks. */
  private readonly marks: Uint8Array;
  private starved = 0;
  private lastTick = 0;

  constructor(
    private readonly windowTicks: number,
    private readonly starvedPercentMax: number,
  ) {
    this.marks = new Uint8Array(windowTicks);
  }

  onViewInstalled(now: number): void {
    this.marks.fill(0);
    this.starved = 0;
    this.lastTick = now;
  }

  /** Advances one tick; returns true while the last window holds too many starved ticks. */
  onTick(now: number, starved: boolean): boolean {
    // Ticks this monitor did not see (another check suspected first) count as not starved.
    for (let t = Math.max(this.lastTick + 1, now - this.windowTicks + 1); t < now; t++) this.mark(t, 0);
    this.lastTick = now;
    this.mark(now, starved ? 1 : 0);
    return this.starved * 100 > this.starvedPercentMax * this.windowTicks;
  }

  private mark(tick: number, value: 0 | 1): void {
    const i = tick % this.windowTicks;
    this.starved += value - (this.marks[i] as number);
    this.marks[i] = value;
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
