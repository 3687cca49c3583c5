import { describe, expect, test } from "bun:test";
import { backoffBaseDelayMs, backoffDelayMs, checkBackoffPolicy, DEFAULT_BACKOFF, type BackoffPolicy } from "../../src/client/backoff.ts";

const policy: BackoffPolicy = { initialDelayMs: 100, maxDelayMs: 5_000, multiplier: 2, jitterRatio: 0.5 };

describe("reconnect backoff", () => {
  test("the base schedule doubles from the initial delay and stops at the cap", () => {
    const schedule = Array.from({ length: 9 }, (_, attempt) => backoffBaseDelayMs(attempt, policy));
    expect(schedule).toEqual([100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
  });

  test("a huge attempt count stays at the cap (no overflow to Infinity)", () => {
    expect(backoffBaseDelayMs(1_000_000, policy)).toBe(5_000);
    expect(backoffBaseDelayMs(Number.MAX_SAFE_INTEGER, policy)).toBe(5_000);
  });

  test("jitter draws from [base * (1 - ratio), base]", () => {
    expect(backoffDelayMs(3, policy, () => 0)).toBe(800);
    expect(backoffDelayMs(3, policy, () => 0.5)).toBe(600);
    expect(backoffDelayMs(3, policy, () => 0.999999)).toBe(400);
    for (let attempt = 0; attempt < 12; attempt++) {
      for (const r of [0, 0.1, 0.37, 0.5, 0.93]) {
        const delay = backoffDelayMs(attempt, policy, () => r);
        const base = backoffBaseDelayMs(attempt, policy);
        expect(delay).toBeGreaterThanOrEqual(Math.floor(base * 0.5));
        expect(delay).toBeLessThanOrEqual(base);
      }
    }
  });

  test("a fixed random source gives a fixed schedule (the jitter is injectable)", () => {
    const randoms = [0.25, 0.75, 0.1, 0.9, 0.5, 0, 0.3];
    const run = () => {
      let i = 0;
      return randoms.map((_, attempt) => backoffDelayMs(attempt, policy, () => randoms[i++] as number));
    };
    expect(run()).toEqual([88, 125, 380, 440, 1200, 3200, 4250]);
    expect(run()).toEqual(run());
  });

  test("no jitter gives the plain exponential schedule; random values out of range are clamped", () => {
    const plain = { ...policy, jitterRatio: 0 };
    expect(backoffDelayMs(2, plain, () => 0.7)).toBe(400);
    expect(backoffDelayMs(2, policy, () => 5)).toBe(200);
    expect(backoffDelayMs(2, policy, () => -5)).toBe(400);
  });

  test("policies outside their domain are refused", () => {
    expect(() => checkBackoffPolicy(DEFAULT_BACKOFF)).not.toThrow();
    expect(() => checkBackoffPolicy({ ...policy, initialDelayMs: -1 })).toThrow("initialDelayMs");
    expect(() => checkBackoffPolicy({ ...policy, maxDelayMs: 50 })).toThrow("maxDelayMs");
    expect(() => checkBackoffPolicy({ ...policy, multiplier: 0.5 })).toThrow("multiplier");
    expect(() => checkBackoffPolicy({ ...policy, jitterRatio: 1.5 })).toThrow("jitterRatio");
    expect(() => backoffBaseDelayMs(-1, policy)).toThrow(RangeError);
  });
});
