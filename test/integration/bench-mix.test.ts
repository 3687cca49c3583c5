/**
 * `fitb bench --mix`: a low-priority channel saturated in a thread of its own while a
 * critical channel is measured; the figures of both come out, nothing is lost.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { waitFor } from "../helpers/wait.ts";
import { startClusterWithLowChannel } from "./client-util.ts";
import { freePortRange, metricValue, type TestCluster } from "./harness.ts";

let cluster: TestCluster;
let metricsBase: number;

beforeAll(async () => {
  metricsBase = freePortRange(4);
  cluster = await startClusterWithLowChannel({ replicaArgs: (id) => ["--metrics", `127.0.0.1:${metricsBase + id}`] });
});

afterAll(async () => {
  await cluster?.stop();
});

/** `fitb bench` on sec.alerts with this cluster's files, 64-byte events, JSON figures, and `extra`. */
function bench(extra: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const base = ["bench", "--config", cluster.configPath, "--key", cluster.clientKey, "--channel", "sec.alerts", "--size", "64", "--json"];
  return cluster.fitb([...base, ...extra], { timeoutMs: 120_000 });
}

test("bench --mix prints the critical channel's latency and the saturated channel's rate alone and during the run", async () => {
  const run = await bench(["--events", "400", "--rate", "400", "--mix", "bulk.metrics", "--mix-publishers", "2"]);
  expect(run.code, run.stderr).toBe(0);
  const figures = JSON.parse(run.stdout) as {
    delivered: number;
    p99_ms: number;
    bench_cpu_s: number;
    bench_cpu_us_per_event: number | null;
    mix: Record<string, number>;
  };
  expect(figures.delivered).toBe(400);
  // The bench's CPU includes the flood thread's: not a cost of the measured channel's deliveries.
  expect(figures.bench_cpu_s).toBeGreaterThan(0);
  expect(figures.bench_cpu_us_per_event).toBeNull();
  expect(figures.p99_ms).toBeGreaterThan(0);
  // bench measures the solo rate over at least one acknowledgement; the rate during the run
  // depends on the machine (a loaded one may acknowledge nothing in it).
  expect(figures.mix.low_solo_per_s).toBeGreaterThan(0);
  expect(figures.mix.low_mixed_per_s).toBeGreaterThanOrEqual(0);
  expect(figures.mix.low_failed).toBe(0);
  expect(run.stderr).toContain("bulk.metrics alone, saturated by 2 publishers");
}, 180_000);

test("bench --mix floods a crash/none channel where --crash-none-targets says: with all, every replica stores the flood", async () => {
  const flags = ["--mix", "net.links", "--mix-publishers", "1", "--crash-none-targets", "all"];
  const run = await bench(["--events", "100", "--rate", "200", ...flags]);
  expect(run.code, run.stderr).toBe(0);
  // With f+1 targets (the default) two replicas store the flood and the other two only the
  // publishes widened to them; sent to all four, each stores about all of it (a replica
  // whose connection had no room when the publish went out may miss a few).
  const series = 'fitb_channel_events_stored_total{tag="net.links",class="crash/none",priority="normal"}';
  const stored = () => Promise.all([0, 1, 2, 3].map((id) => metricValue(metricsBase + id, series)));
  let counts: number[] = [];
  await waitFor(
    "every replica to store the same crash/none flood",
    async () => {
      counts = await stored();
      return Math.min(...counts) > 0 && Math.min(...counts) >= Math.max(...counts) / 2;
    },
    undefined,
    () => counts.join(", "),
  );
}, 180_000);

test("bench --rate R1,R2 sweeps the rates and prints one row per rate", async () => {
  const run = await bench(["--events", "200", "--rate", "200,400"]);
  expect(run.code, run.stderr).toBe(0);
  const rows = JSON.parse(run.stdout) as { rate: number; delivered: number }[];
  expect(rows.map((row) => [row.rate, row.delivered])).toEqual([
    [200, 200],
    [400, 200],
  ]);
}, 180_000);

test("bench --subscribers S1,S2 sweeps the subscriber counts, each with subscribers of its own, at one rate", async () => {
  const run = await bench(["--events", "200", "--rate", "400", "--subscribers", "1,3"]);
  expect(run.code, run.stderr).toBe(0);
  const rows = JSON.parse(run.stdout) as { subscribers: number; delivered: number; cpu_us_per_published_event: (number | null)[] }[];
  expect(rows.map((row) => [row.subscribers, row.delivered])).toEqual([
    [1, 200],
    [3, 600],
  ]);
  for (const row of rows) expect(row.cpu_us_per_published_event.every((cpu) => cpu !== null && cpu > 0)).toBe(true);
  expect(run.stderr).toContain("fitb bench: sweep: 3 subscribers");
}, 180_000);

test("bench --mix refuses the measured channel as the saturated one", async () => {
  const run = await cluster.fitb([
    "bench",
    "--config",
    cluster.configPath,
    "--key",
    cluster.clientKey,
    "--channel",
    "sec.alerts",
    "--mix",
    "sec.alerts",
  ]);
  expect(run.code).toBe(2);
  expect(run.stderr).toContain("--mix: the saturated channel must differ from --channel");
});

test("bench --mix with a key the saturated channel refuses says why at once, not after waiting for acknowledgements", async () => {
  // The admin key may subscribe to the public channels but is no publisher of bulk.metrics.
  const run = await cluster.fitb(
    [
      "bench",
      "--config",
      cluster.configPath,
      "--key",
      cluster.adminKey,
      "--channel",
      "sec.alerts",
      "--events",
      "100",
      "--mix",
      "bulk.metrics",
    ],
    { timeoutMs: 120_000 },
  );
  expect(run.code, run.stderr).toBe(1);
  expect(run.stderr).toContain("--mix: bulk.metrics:");
  expect(run.stderr).toContain("publisher is not registered on bulk.metrics");
  expect(run.stderr).not.toContain("had no event acknowledged");
}, 180_000);
