import { describe, expect, test } from "bun:test";
import { LOG_SERVE_BURST_BYTES, LOG_SERVE_BYTES_PER_SECOND } from "../../src/replica/ordering-driver.ts";
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

  test("a cost known after the work (the decided log served to a peer): served while positive, charged after, owing one answer at most", () => {
    const MiB = 1024 * 1024;
    const budget = new RateLimiter(LOG_SERVE_BYTES_PER_SECOND, LOG_SERVE_BURST_BYTES);
    // A fresh peer has a burst: four answers of 1 MiB, and a fifth of 2 MiB (read while positive) leaves it owing 2 MiB.
    for (let i = 0; i < 4; i++) {
      expect(budget.positive("3", 0)).toBe(true);
      budget.charge("3", MiB, 0);
    }
    expect(budget.positive("3", 0)).toBe(false);
    budget.charge("3", 2 * MiB, 0);
    expect(budget.owed("3")).toBe(2 * MiB);
    // 16 MiB/s pays 2 MiB in 125 ms: refused until past it.
    expect(budget.positive("3", 125)).toBe(false);
    expect(budget.positive("3", 126)).toBe(true);
    // Another peer has its own.
    expect(budget.positive("2", 0)).toBe(true);
    // A peer asking every 10 ms tick for a second, 1 MiB an answer, gets at most what the rate pays and one answer.
    const late = new RateLimiter(LOG_SERVE_BYTES_PER_SECOND, LOG_SERVE_BURST_BYTES);
    let served = 0;
    for (let now = 0; now <= 1000; now += 10) {
      if (!late.positive("1", now)) continue;
      late.charge("1", MiB, now);
      served += MiB;
    }
    expect(served).toBeLessThanOrEqual(LOG_SERVE_BURST_BYTES + LOG_SERVE_BYTES_PER_SECOND + MiB);
    expect(served).toBeGreaterThanOrEqual(LOG_SERVE_BURST_BYTES + LOG_SERVE_BYTES_PER_SECOND - MiB);
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

  test("allowed to owe, a request larger than the burst passes while the bucket owes nothing, and the debt holds back what follows", () => {
    const limiter = new RateLimiter(10, 10);
    const owe = (events: number, nowMs: number): boolean => limiter.take("a", events, nowMs, 10, 10, true);
    // Not full (5 of 10 left), but owing nothing: it passes, and owes 25.
    expect(limiter.take("a", 5, 0)).toBe(true);
    expect(limiter.fits("a", 30, 0, 10, 10, true)).toBe(true);
    expect(owe(30, 0)).toBe(true);
    expect(limiter.owed("a")).toBe(25);
    // Owing, nothing passes: a large request waits until the debt is paid (2.5 s), a small one until it fits.
    expect(owe(30, 2_400)).toBe(false);
    expect(owe(30, 2_500)).toBe(true);
    expect(limiter.take("a", 1, 5_500)).toBe(false);
    expect(limiter.take("a", 1, 5_600)).toBe(true);
    // fits takes nothing.
    expect(limiter.fits("a", 1, 5_700, 10, 10)).toBe(true);
    expect(limiter.fits("a", 1, 5_700, 10, 10)).toBe(true);
    // Without owe, the same request never passes.
    expect(new RateLimiter(10, 10).take("b", 30, 0)).toBe(false);
  });

  test("a client whose small requests keep its bucket below full still gets its large ones through", () => {
    const limiter = new RateLimiter(10, 10);
    let small = 0;
    let large = 0;
    // One event every 50 ms (twice the rate) and a 20-event request tried every 50 ms, for 60 s.
    for (let nowMs = 0; nowMs < 60_000; nowMs += 50) {
      if (limiter.take("a", 1, nowMs, 10, 10, true)) small++;
      if (limiter.take("a", 20, nowMs, 10, 10, true)) large++;
    }
    expect(large).toBeGreaterThan(0);
    // And the rate holds over the run: 60 s at 10 a second, plus one burst and one large request.
    expect(small + 20 * large).toBeLessThanOrEqual(600 + 10 + 20);
  });

  test("eviction spares a bucket that owes: its debt is not forgiven by new clients crowding in", () => {
    const limiter = new RateLimiter(1, 1);
    expect(limiter.take("owing", 50, 0, 1, 1, true)).toBe(true);
    for (let i = 0; i < RATE_BUCKETS_MAX + 10; i++) limiter.take(`c${i}`, 1, 0);
    expect(limiter.owed("owing")).toBe(49);
    expect(limiter.take("owing", 1, 0, 1, 1, true)).toBe(false);
  });

  test("the number of buckets is bounded", () => {
    const limiter = new RateLimiter(1, 1);
    for (let i = 0; i < RATE_BUCKETS_MAX + 10; i++) limiter.take(`c${i}`, 1, 0);
    // The first client's bucket was evicted, so it starts full again.
    expect(limiter.take("c0", 1, 0)).toBe(true);
    expect(limiter.take(`c${RATE_BUCKETS_MAX + 9}`, 1, 0)).toBe(false);
  });
});
