/**
 * Priority shedding: while urgent (high/critical) publishes arrive at this replica, the
 * share of `low` (then `normal`) publishes it admits from clients follows how late its
 * event loop runs, so an alert does not wait behind a flood (README "How it works" →
 * Priority).
 *
 * The signal is the event loop's lag: how late a timer probe fires. On one event loop,
 * everything an urgent request needs on this replica (its socket read, its verification
 * callback, each PRE-PREPARE, PREPARE and COMMIT it takes, its execution and reply) waits
 * behind the work queued before it, once per step; the lag is that wait, sampled
 * continuously whatever the rate of urgent requests (a critical channel at a few events
 * per second gives few latency samples, and an ack's latency also counts the other
 * replicas and the network, which shedding here does not cure). The pending-request pool
 * bound (priority.ts) covers the other overload, a full pool.
 *
 * The controller is AIMD, deterministic given its inputs (times and lags are arguments):
 * a probe over the target halves the admitted share of `low` (down to the floor), and
 * once `low` is at its floor, of `normal`; a probe under the target adds a step back,
 * `normal` first. Admission spreads the share evenly with a credit per class (no
 * randomness). With no urgent publish for `urgentWindowMs`, both shares return to 1:
 * nothing is shed. Urgent classes and admin commands are never shed here.
 *
 * The share is this replica's. On a total-order channel a client sends each request to
 * every replica, and a request any one of them admits is ordered (a backup forwards what
 * it holds to the leader), so four replicas that each admit a share s let through about
 * 1 - (1 - s)^4 of a flood's requests at each ask (about half at the floor), and
 * SHED_FLOOR_SHARE was tuned on what a group lets through (src/README.md §4 says what a
 * draw common to the replicas did instead).
 */
import { PRIORITY_SHEDDING_REASON_PREFIX } from "../../wire/types.ts";
import type { Priority } from "../core/channels/types.ts";

export interface SheddingOptions {
  /** The event loop lag (ms) past which less urgent publishes are shed while urgent ones flow. */
  readonly targetMs: number;
  /** The share of `low` (and of `normal`) publishes always admitted, in (0, 1]. */
  readonly floor: number;
  /** Urgent traffic counts as present for this long after an urgent publish arrived (ms). */
  readonly urgentWindowMs: number;
  /** A probe over the target multiplies the share by this, in (0, 1). */
  readonly decrease: number;
  /** A probe under the target adds this to the share, in (0, 1]. */
  readonly increase: number;
}

/**
 * The default of `fitb replica --urgent-delay-target-ms`: off. A fixed lag target sheds
 * `normal` publishes at every GC pause or neighbour's burst on a shared host whenever an
 * alert flows, and an unordered event refused by one replica is then stored by the others
 * only; an operator turns it on for a host that carries critical channels, with
 * URGENT_DELAY_TARGET_MS_SUGGESTED on a dedicated one (as `fitb demo` runs its replicas).
 */
export const URGENT_DELAY_TARGET_MS_DEFAULT = 0;
/** The event loop lag (ms) past which `low` then `normal` publishes are shed while urgent ones flow, on a dedicated host. */
export const URGENT_DELAY_TARGET_MS_SUGGESTED = 2;
/** The largest target `fitb replica --urgent-delay-target-ms` takes. */
export const URGENT_DELAY_TARGET_MS_MAX = 10_000;
/**
 * The share of a shed class's publishes a replica always admits. A client asks a replica
 * that shed its publish again soon (src/client/request-tracker.ts, retrySoon), so a
 * saturated `low` channel keeps about this share of its rate alone or more (README,
 * Performance, "Priority shedding"), and never stops.
 */
export const SHED_FLOOR_SHARE = 0.15;
/** How long an urgent publish keeps the policy on. */
export const URGENT_WINDOW_MS = 1000;
/** How often the event loop's lag is probed. */
export const LAG_PROBE_INTERVAL_MS = 10;

export const SHEDDING_DEFAULTS: SheddingOptions = {
  targetMs: URGENT_DELAY_TARGET_MS_SUGGESTED,
  floor: SHED_FLOOR_SHARE,
  urgentWindowMs: URGENT_WINDOW_MS,
  decrease: 0.5,
  increase: 0.02,
};

/** Whether urgent (high or critical) requests arrived within a window: the shedder's, and a base snapshot's (snapshots.ts). */
export class UrgentWindow {
  /** When one last arrived (ms), or -Infinity. */
  private atMs = Number.NEGATIVE_INFINITY;

  constructor(private readonly windowMs: number = URGENT_WINDOW_MS) {}

  /** An urgent request arrived at `nowMs`. */
  note(nowMs: number): void {
    this.atMs = nowMs;
  }

  /** Whether one arrived within the window before `nowMs`. */
  active(nowMs: number): boolean {
    return nowMs - this.atMs < this.windowMs;
  }
}

/** What admit() decided: null (admitted) or the reason sent with OVERLOADED. */
export type ShedDecision = string | null;

export class UrgentShedder {
  private readonly options: SheddingOptions;
  private readonly urgent: UrgentWindow;
  private lowShare = 1;
  private normalShare = 1;
  private lowCredit = 0;
  private normalCredit = 0;
  /** The last lag observed (ms), for the metrics and the reason text. */
  private lastLagMs = 0;

  constructor(options: Partial<SheddingOptions> = {}) {
    this.options = { ...SHEDDING_DEFAULTS, ...options };
    const { targetMs, floor, urgentWindowMs, decrease, increase } = this.options;
    if (!(targetMs > 0 && Number.isFinite(targetMs)))
      throw new Error(`shedding: the target must be a positive number of ms, not ${targetMs}`);
    if (!(floor > 0 && floor <= 1)) throw new Error(`shedding: the floor must be in (0, 1], not ${floor}`);
    if (!(urgentWindowMs > 0)) throw new Error(`shedding: the urgent window must be positive, not ${urgentWindowMs}`);
    if (!(decrease > 0 && decrease < 1)) throw new Error(`shedding: the decrease must be in (0, 1), not ${decrease}`);
    if (!(increase > 0 && increase <= 1)) throw new Error(`shedding: the increase must be in (0, 1], not ${increase}`);
    this.urgent = new UrgentWindow(urgentWindowMs);
  }

  get targetMs(): number {
    return this.options.targetMs;
  }

  /** An urgent (high/critical) publish arrived from a client at `nowMs`. */
  noteUrgent(nowMs: number): void {
    this.urgent.note(nowMs);
  }

  /** Whether urgent traffic was seen within the window before `nowMs`. */
  urgentActive(nowMs: number): boolean {
    return this.urgent.active(nowMs);
  }

  /** One probe of the event loop's lag (ms) at `nowMs`: the shares move (AIMD). */
  observeLag(nowMs: number, lagMs: number): void {
    this.lastLagMs = lagMs;
    if (!this.urgentActive(nowMs)) {
      this.reset();
      return;
    }
    const { targetMs, floor, decrease, increase } = this.options;
    if (lagMs > targetMs) {
      if (this.lowShare > floor) this.lowShare = Math.max(floor, this.lowShare * decrease);
      else this.normalShare = Math.max(floor, this.normalShare * decrease);
    } else if (this.normalShare < 1) {
      this.normalShare = Math.min(1, this.normalShare + increase);
    } else {
      this.lowShare = Math.min(1, this.lowShare + increase);
    }
  }

  /** The share of `priority`'s publishes admitted now (1 for high and critical). */
  share(priority: Priority, nowMs: number): number {
    if (!this.urgentActive(nowMs)) return 1;
    if (priority === "low") return this.lowShare;
    if (priority === "normal") return this.normalShare;
    return 1;
  }

  /** The status query's view (`fitb admin status`): the target, and the shares of low and normal publishes admitted at `nowMs`, in percent. */
  describe(nowMs: number): { targetMs: number; low: number; normal: number } {
    const percent = (priority: Priority): number => Math.round(this.share(priority, nowMs) * 100);
    return { targetMs: this.options.targetMs, low: percent("low"), normal: percent("normal") };
  }

  /**
   * Whether a client publish on a channel of `priority` is admitted at `nowMs`: null, or
   * the reason it is refused OVERLOADED. Urgent publishes are admitted and noted.
   */
  admit(priority: Priority, nowMs: number): ShedDecision {
    if (priority === "high" || priority === "critical") {
      this.noteUrgent(nowMs);
      return null;
    }
    if (!this.urgentActive(nowMs)) {
      this.reset();
      return null;
    }
    const share = priority === "low" ? this.lowShare : this.normalShare;
    if (share >= 1) return null;
    // A credit per class spreads the admitted share evenly: admit when it reaches 1.
    let credit = (priority === "low" ? this.lowCredit : this.normalCredit) + share;
    const admitted = credit >= 1;
    if (admitted) credit -= 1;
    if (priority === "low") this.lowCredit = credit;
    else this.normalCredit = credit;
    if (admitted) return null;
    return (
      `${PRIORITY_SHEDDING_REASON_PREFIX} urgent traffic is waiting (event loop lag ${this.lastLagMs.toFixed(1)} ms, target ${this.options.targetMs} ms); ` +
      `${Math.round(share * 100)}% of ${priority} publishes are admitted; retry later`
    );
  }

  private reset(): void {
    this.lowShare = 1;
    this.normalShare = 1;
    this.lowCredit = 0;
    this.normalCredit = 0;
  }
}

/**
 * Probes the event loop's lag with a timer every `intervalMs` and hands each sample to
 * `onLag(nowMs, lagMs)`. Returns the function that stops it.
 */
export function startLagProbe(onLag: (nowMs: number, lagMs: number) => void, intervalMs = LAG_PROBE_INTERVAL_MS): () => void {
  let stopped = false;
  let timer: ReturnType<typeof setTimeout> | null = null;
  const arm = (): void => {
    const due = performance.now() + intervalMs;
    timer = setTimeout(() => {
      if (stopped) return;
      const now = performance.now();
      onLag(now, Math.max(0, now - due));
      arm();
    }, intervalMs);
    (timer as { unref?: () => void }).unref?.();
  };
  arm();
  return () => {
    stopped = true;
    if (timer !== null) clearTimeout(timer);
  };
}
