/**
 * `fitb bench` reports what a run cost the replicas (CPU seconds from each replica's status
 * answer, CPU µs per event) and says when the figure was set by the key's rate limit
 * (RATE_LIMITED refusals) rather than by the broker.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { startClusterWithChannels } from "./client-util.ts";
import type { TestCluster } from "./harness.ts";

/** Low enough that a few thousand events hit it, and at least batch_events_max (1024) as the config requires. */
const RATE = 500;
const BURST = 1024;

let cluster: TestCluster;

beforeAll(async () => {
  cluster = await startClusterWithChannels({ limits: { client_events_per_second_max: RATE, client_burst_events_max: BURST } });
});

afterAll(async () => {
  await cluster?.stop();
});

interface BenchJson {
  warmup: number;
  delivered: number;
  cpu_s: (number | null)[];
  cpu_us_per_event: (number | null)[];
  cpu_us_per_published_event: (number | null)[];
  bench_cpu_s: number;
  bench_cpu_us_per_event: number | null;
  rate_limited: number;
  slow_cutoffs: number;
  dropped_events: number;
  subscriptions_widened: number;
}

function bench(tag: string, extra: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return cluster.fitb(["bench", "--config", cluster.configPath, "--key", cluster.clientKey, "--channel", tag, "--size", "64", ...extra], {
    timeoutMs: 120_000,
  });
}

test("bench reports every replica's CPU seconds and CPU per event, with subscribers sharing connections past 32", async () => {
  // 40 subscribers: more than the 32 client connections bench opens for them.
  const run = await bench("sec.alerts", ["--events", "200", "--subscribers", "40", "--json"]);
  expect(run.code, run.stderr).toBe(0);
  const figures = JSON.parse(run.stdout) as BenchJson;
  expect(figures.delivered).toBe(200 * 40);
  expect(figures.cpu_s).toHaveLength(4);
  for (let id = 0; id < 4; id++) {
    expect(figures.cpu_s[id] ?? 0).toBeGreaterThan(0);
    expect(figures.cpu_us_per_event[id] ?? 0).toBeGreaterThan(0);
    // Per published event is the same CPU over 40 times fewer events.
    expect(figures.cpu_us_per_published_event[id] ?? 0).toBeGreaterThan(figures.cpu_us_per_event[id] ?? 0);
  }
  // The bench's own CPU: it signed, sent, received and voted on every one of those deliveries.
  expect(figures.bench_cpu_s).toBeGreaterThan(0);
  expect(figures.bench_cpu_us_per_event ?? 0).toBeCloseTo((figures.bench_cpu_s * 1e6) / figures.delivered, 0);
  expect(figures.rate_limited).toBe(0);
  expect(run.stderr).not.toContain("RATE_LIMITED");
  // Counted, not asserted zero: a loaded machine may cut a subscriber off (total order re-sends).
  expect(figures.slow_cutoffs).toBeGreaterThanOrEqual(0);
  expect(figures.dropped_events).toBeGreaterThanOrEqual(0);
  expect(figures.subscriptions_widened).toBeGreaterThanOrEqual(0);

  const text = await bench("net.links", ["--events", "100"]);
  expect(text.code, text.stderr).toBe(0);
  expect(text.stdout).toMatch(/replica CPU seconds during the run: r0 [\d.]+, r1 [\d.]+, r2 [\d.]+, r3 [\d.]+/);
  expect(text.stdout).toMatch(/replica CPU µs per delivered event: r0 [\d.]+, r1/);
  expect(text.stdout).toMatch(
    /this bench's own CPU \(its publishers, its subscribers and their checks and voting\): [\d.]+ s, [\d.]+ µs per delivered event/,
  );
}, 180_000);

test("bench --warmup publishes and delivers its events first and measures only the run after them", async () => {
  const run = await bench("net.links", ["--warmup", "300", "--events", "200", "--subscribers", "2", "--json"]);
  expect(run.code, run.stderr).toBe(0);
  expect(run.stderr).toContain("warm-up: 300 events, not measured");
  const figures = JSON.parse(run.stdout) as BenchJson;
  expect(figures.warmup).toBe(300);
  // Every subscriber got the warm-up events too (the run waits for them); only the measured ones count.
  expect(figures.delivered).toBe(200 * 2);
  const refused = await bench("net.links", ["--warmup", "-1", "--events", "10"]);
  expect(refused.code).toBe(2);
  expect(refused.stderr).toContain("--warmup");
}, 180_000);

test("bench --subscriber-connections: subscribers share the connections asked for, and every one delivers every event", async () => {
  const run = await bench("sec.alerts", ["--events", "200", "--subscribers", "5", "--subscriber-connections", "1", "--json"]);
  expect(run.code, run.stderr).toBe(0);
  expect((JSON.parse(run.stdout) as BenchJson).delivered).toBe(200 * 5);
  const refused = await bench("sec.alerts", ["--events", "10", "--subscribers", "2", "--subscriber-connections", "3"]);
  expect(refused.code).toBe(2);
  expect(refused.stderr).toContain("--subscriber-connections: 3 connections for 2 subscribers");
}, 180_000);

test("bench says the run was RATE_LIMITED when the replicas refused publishes for the key's rate", async () => {
  // Three bursts' worth at 500 events/s: the replicas refuse requests RATE_LIMITED, the client retries them.
  const run = await bench("storage.disks", ["--events", String(3 * BURST), "--json"]);
  expect(run.code, run.stderr).toBe(0);
  const figures = JSON.parse(run.stdout) as BenchJson;
  expect(figures.delivered).toBe(3 * BURST);
  expect(figures.rate_limited).toBeGreaterThan(0);
  expect(run.stderr).toContain("RATE_LIMITED: replicas refused");
  expect(run.stderr).toContain("not the broker's");
}, 180_000);
