import { describe, expect, test } from "bun:test";
import { RATE_BUCKETS_MAX, RateLimiter } from "../../src/replica/rate.ts";

describe("RateLimiter", () => {
  test("a burst passes, then the rate holds", () => {
    const limiter = new RateLimiter(100, 50);
    expect(limiter.take("a", 50, 0)).toBe(true);
    expect(limiter.take("a", 1, 0)).toBe(false);
    // 100 events/s: 10 ms buys one event.
    expect(limiter.take("a", 1, 10)).toBe(true);
    expect(limiter.take("a", 1, 10)).toBe(false);
    expect(limiter.take("a", 50, 10_000)).toBe(true);
  });

  test("clients do not share a bucket", () => {
    const limiter = new RateLimiter(1, 10);
    expect(limiter.take("a", 10, 0)).toBe(true);
    expect(limiter.take("b", 10, 0)).toBe(true);
    expect(limiter.take("a", 1, 0)).toBe(false);
  });

  test("a request larger than the burst never passes", () => {
    const limiter = new RateLimiter(1000, 10);
    expect(limiter.take("a", 11, 1_000_000)).toBe(false);
  });

  test("the number of buckets is bounded", () => {
    const limiter = new RateLimiter(1, 1);
    for (let i = 0; i < RATE_BUCKETS_MAX + 10; i++) limiter.take(`c${i}`, 1, 0);
    // The first client's bucket was evicted, so it starts full again.
    expect(limiter.take("c0", 1, 0)).toBe(true);
    expect(limiter.take(`c${RATE_BUCKETS_MAX + 9}`, 1, 0)).toBe(false);
  });
});
