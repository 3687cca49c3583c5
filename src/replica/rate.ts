/**
 * Per-client rate limits: a token bucket of events per client key, refilled at
 * `eventsPerSecond` up to `burst`. A publish that does not fit is refused with
 * RATE_LIMITED (the client backs off and retries); nothing is queued for it, so a flooding
 * probe costs the replica a signature check per request at most, and no memory.
 */
export const RATE_BUCKETS_MAX = 100_000;

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
   */
  take(client: string, events: number, nowMs: number, perSecond = this.eventsPerSecond, burst = this.burst): boolean {
    let bucket = this.buckets.get(client);
    if (bucket === undefined) {
      if (this.buckets.size >= RATE_BUCKETS_MAX) this.evictOldest();
      bucket = { tokens: burst, updatedMs: nowMs };
      this.buckets.set(client, bucket);
    }
    const elapsedMs = Math.max(0, nowMs - bucket.updatedMs);
    bucket.tokens = Math.min(burst, bucket.tokens + (elapsedMs * perSecond) / 1000);
    bucket.updatedMs = nowMs;
    if (bucket.tokens < events) return false;
    bucket.tokens -= events;
    return true;
  }

  private evictOldest(): void {
    const oldest = this.buckets.keys().next().value;
    if (oldest !== undefined) this.buckets.delete(oldest);
  }
}
