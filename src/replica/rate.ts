/**
 * Per-client rate limits: a token bucket of events per client key, refilled at
 * `eventsPerSecond` up to `burst`. A publish that does not fit is refused with
 * RATE_LIMITED (the client backs off and retries); nothing is queued for it, so a flooding
 * probe costs the replica a signature check per request at most, and no memory. A bucket
 * may be let owe (`take`'s `owe`): a request larger than any burst then passes while the
 * bucket owes nothing, and the debt holds back what follows.
 */
export const RATE_BUCKETS_MAX = 100_000;
/** Buckets looked at, oldest first, for one that owes nothing to evict (evictOldest). */
const EVICTION_SCAN = 64;

interface Bucket {
  tokens: number;
  updatedMs: number;
}

export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();

  constructor(
    private readonly eventsPerSecond: number,
    private readonly burst: number,
  ) {}

  /**
   * Takes `events` tokens for `client` at time `nowMs`; false if the bucket has too few.
   * `perSecond` and `burst` override the limiter's own for this client (a key's quota).
   * With `owe`, a request larger than `burst`, which no bucket could ever hold, passes
   * whenever the bucket owes nothing, and leaves it owing the rest: later requests wait
   * until the rate has paid for it, so over time the client still gets `perSecond` (plus
   * one burst and one such request) and no more. Not "once the bucket is full": smaller
   * requests of the same client at its rate would keep it from ever filling.
   */
  take(client: string, events: number, nowMs: number, perSecond = this.eventsPerSecond, burst = this.burst, owe = false): boolean {
    const bucket = this.refilled(client, nowMs, perSecond, burst);
    if (!fits(bucket, events, burst, owe)) return false;
    bucket.tokens -= events;
    return true;
  }

  /** Whether `take` with the same arguments would pass now; takes nothing. */
  fits(client: string, events: number, nowMs: number, perSecond = this.eventsPerSecond, burst = this.burst, owe = false): boolean {
    return fits(this.refilled(client, nowMs, perSecond, burst), events, burst, owe);
  }

  /**
   * Whether `client`'s bucket holds anything now (more than zero): for a cost known only
   * after the work, checked before it and `charge`d after.
   */
  positive(client: string, nowMs: number): boolean {
    return this.refilled(client, nowMs, this.eventsPerSecond, this.burst).tokens > 0;
  }

  /** Takes `amount` from `client`'s bucket whatever it holds; it may owe (go below zero) after. */
  charge(client: string, amount: number, nowMs: number): void {
    this.refilled(client, nowMs, this.eventsPerSecond, this.burst).tokens -= amount;
  }

  /** What `client`'s bucket owes as of its last refill (0 when it owes nothing or has none). */
  owed(client: string): number {
    const tokens = this.buckets.get(client)?.tokens ?? 0;
    return tokens < 0 ? -tokens : 0;
  }

  private refilled(client: string, nowMs: number, perSecond: number, burst: number): Bucket {
    let bucket = this.buckets.get(client);
    if (bucket === undefined) {
      if (this.buckets.size >= RATE_BUCKETS_MAX) this.evictOldest();
      bucket = { tokens: burst, updatedMs: nowMs };
      this.buckets.set(client, bucket);
    }
    const elapsedMs = Math.max(0, nowMs - bucket.updatedMs);
    bucket.tokens = Math.min(burst, bucket.tokens + (elapsedMs * perSecond) / 1000);
    bucket.updatedMs = nowMs;
    return bucket;
  }

  /**
   * Makes room: the oldest bucket that owes nothing among the EVICTION_SCAN oldest (one that
   * owes would come back full, its debt forgiven, for whoever can make new clients fast
   * enough), else the oldest. Runs only with RATE_BUCKETS_MAX buckets held.
   */
  private evictOldest(): void {
    let oldest: string | undefined;
    let scanned = 0;
    for (const [client, bucket] of this.buckets) {
      oldest ??= client;
      if (bucket.tokens >= 0) {
        this.buckets.delete(client);
        return;
      }
      if (++scanned >= EVICTION_SCAN) break;
    }
    if (oldest !== undefined) this.buckets.delete(oldest);
  }
}

/** A bucket holds `events`, or, owing allowed, it owes nothing and `events` is more than it can ever hold. */
function fits(bucket: Bucket, events: number, burst: number, owe: boolean): boolean {
  return bucket.tokens >= events || (owe && events > burst && bucket.tokens >= 0);
}
