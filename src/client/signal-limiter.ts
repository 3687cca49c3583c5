/**
 * Signals a replica can cause once per copy it sends (a copy that failed its checks, one
 * below a range a dedupe window forgot) reach the caller at most once per
 * SIGNAL_INTERVAL_MS for each replica and kind: one replica sending thousands of bad
 * copies a second must not turn into as many calls, nor as many lines on a terminal
 * (`fitb sub` prints every signal). What is held back is counted, and the count goes out
 * with the next signal of its kind, or at a tick once the interval is over.
 *
 * Pure bookkeeping: the caller passes the clock. Keys are a kind and a replica id, so the
 * map holds a few entries per replica id (ids are bounded: REPLICAS_MAX).
 */

/** The least time between two signals of one kind about one replica. */
export const SIGNAL_INTERVAL_MS = 10_000;

/** A signal to send now, standing for `count` occurrences (the latest is `what`). */
export interface LimitedSignal<T> {
  readonly what: T;
  readonly count: number;
}

export class SignalLimiter<T> {
  private readonly kinds = new Map<string, { lastMs: number; held: LimitedSignal<T> | null }>();

  constructor(private readonly intervalMs: number = SIGNAL_INTERVAL_MS) {}

  /** `what` happened `count` times under `key`: the signal to send now (with what was held back), or null if held back. */
  offer(key: string, what: T, count: number, nowMs: number): LimitedSignal<T> | null {
    const kind = this.kinds.get(key);
    if (kind === undefined || nowMs - kind.lastMs >= this.intervalMs) {
      this.kinds.set(key, { lastMs: nowMs, held: null });
      return { what, count: count + (kind?.held?.count ?? 0) };
    }
    kind.held = { what, count: count + (kind.held?.count ?? 0) };
    return null;
  }

  /** Signals held back whose interval is over: to send now. */
  due(nowMs: number): LimitedSignal<T>[] {
    const signals: LimitedSignal<T>[] = [];
    for (const [key, kind] of this.kinds) {
      if (kind.held === null || nowMs - kind.lastMs < this.intervalMs) continue;
      signals.push(kind.held);
      this.kinds.set(key, { lastMs: nowMs, held: null });
    }
    return signals;
  }
}
