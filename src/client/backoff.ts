/**
 * The reconnect schedule: exponential backoff with jitter, capped. The jitter spreads
 * the reconnects of many clients after a replica restart, so they do not all arrive in
 * the same millisecond; the cap keeps a long-lived client (a relay) retrying often
 * enough to notice a replica that comes back hours later.
 */

export interface BackoffPolicy {
  /** The delay before the first retry. */
  readonly initialDelayMs: number;
  /** The delay never grows past this. */
  readonly maxDelayMs: number;
  /** Each failed attempt multiplies the delay by this (>= 1). */
  readonly multiplier: number;
  /**
   * The fraction of the delay that is random, in 0..1: the delay is drawn from
   * [base * (1 - jitterRatio), base]. 0 gives the plain exponential schedule.
   */
  readonly jitterRatio: number;
}

export const DEFAULT_BACKOFF: BackoffPolicy = {
  initialDelayMs: 100,
  maxDelayMs: 5_000,
  multiplier: 2,
  jitterRatio: 0.5,
};

/** A policy outside these bounds is a programming error, not a runtime condition. */
const DELAY_MS_CEILING = 3_600_000;
const MULTIPLIER_CEILING = 16;

/** Throws a RangeError naming the first field out of its domain. */
export function checkBackoffPolicy(policy: BackoffPolicy): void {
  const { initialDelayMs, maxDelayMs, multiplier, jitterRatio } = policy;
  if (!Number.isFinite(initialDelayMs) || initialDelayMs < 0 || initialDelayMs > DELAY_MS_CEILING) {
    throw new RangeError(`initialDelayMs must be in 0..${DELAY_MS_CEILING}, got ${initialDelayMs}`);
  }
  if (!Number.isFinite(maxDelayMs) || maxDelayMs < initialDelayMs || maxDelayMs > DELAY_MS_CEILING) {
    throw new RangeError(`maxDelayMs must be in initialDelayMs..${DELAY_MS_CEILING}, got ${maxDelayMs}`);
  }
  if (!Number.isFinite(multiplier) || multiplier < 1 || multiplier > MULTIPLIER_CEILING) {
    throw new RangeError(`multiplier must be in 1..${MULTIPLIER_CEILING}, got ${multiplier}`);
  }
  if (!Number.isFinite(jitterRatio) || jitterRatio < 0 || jitterRatio > 1) {
    throw new RangeError(`jitterRatio must be in 0..1, got ${jitterRatio}`);
  }
}

/** The un-jittered delay before retry number `attempt` (0 = the first retry). */
export function backoffBaseDelayMs(attempt: number, policy: BackoffPolicy): number {
  if (!Number.isSafeInteger(attempt) || attempt < 0) throw new RangeError(`attempt must be a non-negative integer, got ${attempt}`);
  // Growing step by step stops at the cap, so a huge attempt count cannot overflow to Infinity.
  let delay = policy.initialDelayMs;
  for (let i = 0; i < attempt && delay < policy.maxDelayMs; i++) delay *= policy.multiplier;
  return Math.min(delay, policy.maxDelayMs);
}

/**
 * The delay before retry number `attempt`, jittered by `random()` (a value in [0, 1),
 * injected so that tests get a fixed schedule).
 */
export function backoffDelayMs(attempt: number, policy: BackoffPolicy, random: () => number): number {
  const base = backoffBaseDelayMs(attempt, policy);
  const r = Math.min(Math.max(random(), 0), 1);
  return Math.round(base * (1 - policy.jitterRatio * r));
}
