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

  test("allowed to owe, a request larger than the burst passes once the bucket is full, and the debt holds back what follows", () => {
    const limiter = new RateLimiter(10, 10);
    const owe = (events: number, nowMs: number): boolean => limiter.take("a", events, nowMs, 10, 10, true);
    // Not full: even owing, it waits.
    expect(limiter.take("a", 5, 0)).toBe(true);
    expect(limiter.fits("a", 30, 0, 10, 10, true)).toBe(false);
    expect(owe(30, 0)).toBe(false);
    // Full again after half a second: it passes and owes 20.
    expect(owe(30, 500)).toBe(true);
    // The 30 events took 3 s of the rate: nothing passes before the bucket is back above zero.
    expect(limiter.take("a", 1, 2_500)).toBe(false);
    expect(limiter.take("a", 1, 2_600)).toBe(true);
    // fits takes nothing.
    expect(limiter.fits("a", 1, 2_700, 10, 10)).toBe(true);
    expect(limiter.fits("a", 1, 2_700, 10, 10)).toBe(true);
  });

  test("the number of buckets is bounded", () => {
    const limiter = new RateLimiter(1, 1);
    for (let i = 0; i < RATE_BUCKETS_MAX + 10; i++) limiter.take(`c${i}`, 1, 0);
    // The first client's bucket was evicted, so it starts full again.
    expect(limiter.take("c0", 1, 0)).toBe(true);
    expect(limiter.take(`c${RATE_BUCKETS_MAX + 9}`, 1, 0)).toBe(false);
  });
});
