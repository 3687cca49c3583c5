import { describe, expect, test } from "bun:test";
import { parseArgs } from "../../src/cli/args.ts";
import {
  BENCH_HEADER_BYTES,
  BENCH_SUBSCRIBERS_MAX,
  benchCommand,
  benchEvent,
  benchSentAt,
  dueAtMs,
  floodPlanOf,
  LatencyHistogram,
  meanOf,
  pacedRunSeconds,
  pacedSteps,
  readBenchPlan,
  resultJson,
  runIndex,
  type SubscriberSweepRow,
  subscriberSweepTable,
} from "../../src/cli/commands/bench.ts";

const runA = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]);
const runB = new Uint8Array([8, 7, 6, 5, 4, 3, 2, 1]);

describe("bench events", () => {
  test("the send time comes back from an event of its run, and from no other run", () => {
    const event = benchEvent(runA, 3, 41, 200, 1234.5);
    expect(event.length).toBe(200);
    expect(benchSentAt(event, runA)).toBe(1234.5);
    expect(benchSentAt(event, runB)).toBeNull();
    expect(benchSentAt(event.subarray(0, BENCH_HEADER_BYTES - 1), runA)).toBeNull();
    const view = new DataView(event.buffer, event.byteOffset);
    expect([view.getUint32(8), view.getUint32(12)]).toEqual([3, 41]);
    expect(event.subarray(BENCH_HEADER_BYTES).every((byte) => byte === 0x2e)).toBe(true);
  });

  test("each event is its own bytes, whatever run and size came before", () => {
    const first = benchEvent(runA, 0, 1, 64, 10);
    const second = benchEvent(runA, 0, 2, 64, 20);
    first.fill(0);
    expect(benchSentAt(second, runA)).toBe(20);
    const other = benchEvent(runB, 1, 1, 32, 30);
    expect(other.length).toBe(32);
    expect(benchSentAt(other, runB)).toBe(30);
    const bigger = benchEvent(runB, 1, 2, 300, 40);
    expect(bigger.length).toBe(300);
    expect(benchSentAt(bigger, runB)).toBe(40);
    expect(benchSentAt(benchEvent(runA, 0, 3, 64, 50), runA)).toBe(50);
  });

  test("an event inside a larger frame is read where it lies", () => {
    const frame = new Uint8Array(7 + 200);
    frame.set(benchEvent(runA, 2, 9, 200, 77.25), 7);
    expect(benchSentAt(frame.subarray(7), runA)).toBe(77.25);
  });
});

describe("bench --rate", () => {
  const planOf = (argv: string[]) => readBenchPlan(parseArgs(argv, { flags: benchCommand.flags, positionals: benchCommand.positionals }));

  test("a rate under 1 event/s (alerts seconds apart) and decimals are taken; a sweep keeps its order", () => {
    expect(planOf(["--channel", "sec.alerts", "--rate", "0.5", "--mix", "bulk.metrics"]).rate).toBe(0.5);
    expect(planOf(["--channel", "sec.alerts", "--rate", "0.01", "--events", "100"]).rate).toBe(0.01);
    const sweep = planOf(["--channel", "sec.alerts", "--rate", "2.5,1000"]);
    expect([sweep.rate, ...sweep.sweep]).toEqual([2.5, 1000]);
  });

  test("a run with a rate under 1 that would take more than a day is refused, saying how long it would take", () => {
    // The default 10,000 events at 0.5 ev/s: 5.6 hours, taken; at 0.1: 27.8 hours.
    expect(planOf(["--channel", "sec.alerts", "--rate", "0.5"]).events).toBe(10_000);
    expect(() => planOf(["--channel", "sec.alerts", "--rate", "0.1"])).toThrow(
      "--rate: 10000 events at this rate take about 27.8 h; with a rate under 1 a run may take at most 24 h",
    );
    // --mix doubles it (the saturated channel alone first), a warm-up and a sweep add theirs.
    expect(pacedRunSeconds(12, 0, [0.5], true)).toBe(48);
    expect(pacedRunSeconds(100, 50, [10, 100], false)).toBe(5 + 10 + 1);
    expect(pacedRunSeconds(100, 50, [], false)).toBe(0);
    expect(() => planOf(["--channel", "sec.alerts", "--rate", "0.6", "--events", "30000", "--mix", "bulk.metrics"])).toThrow(
      "30000 events at this rate, after --mix's solo phase as long, take about 27.8 h",
    );
    // A sweep counts every rate, the warm-up at the first: 0.9 alone would be taken.
    expect(planOf(["--channel", "sec.alerts", "--rate", "0.9", "--events", "60000"]).rate).toBe(0.9);
    expect(() => planOf(["--channel", "sec.alerts", "--rate", "0.9,0.9", "--events", "60000"])).toThrow("at these rates take about 37.0 h");
    // Rates of 1 and more are not bounded: a soak run at 1,000 ev/s may take days.
    expect(planOf(["--channel", "sec.alerts", "--rate", "1000", "--events", "100000000"]).rate).toBe(1000);
  });

  test("publishers share one schedule, interleaved: every event of the run is due once, 1/rate apart", () => {
    for (const [events, publishers] of [
      [7, 3],
      [12, 1],
      [64, 64],
      [100, 7],
    ] as const) {
      const due: number[] = [];
      for (let p = 0; p < publishers; p++) {
        const share = Math.floor(events / publishers) + (p < events % publishers ? 1 : 0);
        for (let i = 0; i < share; i++) due.push(dueAtMs(1_000, runIndex(i, p, publishers), 0.5));
      }
      due.sort((a, b) => a - b);
      expect(due).toEqual(Array.from({ length: events }, (_, k) => 1_000 + k * 2_000));
    }
  });

  test("delivered events/s keeps two decimals under 100, whole numbers above", () => {
    const plan = planOf(["--channel", "sec.alerts", "--rate", "0.5", "--events", "5"]);
    const result = (delivered: number, seconds: number) =>
      resultJson(plan, {
        acked: delivered,
        failed: 0,
        firstError: null,
        delivered,
        seconds,
        latency: new LatencyHistogram(),
        replicaCpuSeconds: [],
        benchCpuSeconds: 0,
        rateLimited: 0,
        widened: 0,
        slowCutoffs: 0,
        droppedEvents: 0,
        subscriptionsWidened: 0,
      }).delivered_per_s;
    expect(result(5, 9)).toBe(0.56);
    expect(result(1000, 3)).toBe(333);
    expect(result(0, 0)).toBe(0);
  });

  test("--sources: auto by default, quorum or all on request, anything else refused", () => {
    expect(planOf(["--channel", "sec.alerts"]).sources).toBe("auto");
    expect(planOf(["--channel", "sec.alerts", "--sources", "all"]).sources).toBe("all");
    expect(planOf(["--channel", "sec.alerts", "--sources", "quorum"]).sources).toBe("quorum");
    expect(() => planOf(["--channel", "sec.alerts", "--sources", "most"])).toThrow("--sources: expected auto, quorum or all, got 'most'");
  });

  test("a rate below 0.01, with more than two decimals or in another notation is refused", () => {
    for (const text of ["0", "0.001", "0.125", "1e3", "-1", ".5", "10000001"]) {
      expect(() => planOf(["--channel", "sec.alerts", "--rate", text])).toThrow("--rate: expected a number from 0.01 to 10000000");
    }
  });
});

describe("bench --mix", () => {
  test("the flood thread gets the --mix channel and the bench's own client flags, --crash-none-targets included", () => {
    const args = parseArgs(["--channel", "sec.alerts", "--mix", "net.links", "--mix-publishers", "3", "--size", "64"], {
      flags: benchCommand.flags,
      positionals: benchCommand.positionals,
    });
    const plan = readBenchPlan(args);
    const flags = { configPath: "/c.toml", keyPath: "/k", timeoutMs: 5_000, connectTimeoutMs: 2_000 };
    for (const crashNoneTargets of ["all", "quorum"] as const) {
      expect(floodPlanOf(plan, { ...flags, crashNoneTargets })).toEqual({
        configPath: "/c.toml",
        keyPath: "/k",
        tag: "net.links",
        size: 64,
        publishers: 3,
        connectTimeoutMs: 2_000,
        timeoutMs: 5_000,
        crashNoneTargets,
      });
    }
  });
});

describe("bench --subscribers S1,S2,... (a sweep of subscriber counts)", () => {
  const planOf = (argv: string[]) => readBenchPlan(parseArgs(argv, { flags: benchCommand.flags, positionals: benchCommand.positionals }));

  test("a list sweeps the counts in its order; one count is no sweep", () => {
    const sweep = planOf(["--channel", "sec.alerts", "--rate", "2000", "--subscribers", "1,10,100"]);
    expect([sweep.subscribers, ...sweep.subscriberSweep]).toEqual([1, 10, 100]);
    // A ceiling each step takes at most one connection per subscriber of: by default one
    // each up to 32, whatever the order of the counts.
    expect(sweep.subscriberConnections).toBe(32);
    expect(planOf(["--channel", "sec.alerts", "--subscribers", "100,10,1"]).subscriberConnections).toBe(32);
    expect(planOf(["--channel", "sec.alerts", "--subscribers", "1,5"]).subscriberConnections).toBe(5);
    const one = planOf(["--channel", "sec.alerts", "--subscribers", "40"]);
    expect([one.subscribers, one.subscriberSweep, one.subscriberConnections]).toEqual([40, [], 32]);
    expect(planOf(["--channel", "sec.alerts", "--subscribers", "1,100", "--subscriber-connections", "8"]).subscriberConnections).toBe(8);
  });

  test("a run over several subscriber counts is estimated as that many steps at the rate", () => {
    expect(pacedSteps([2000], 3)).toEqual([2000, 2000, 2000]);
    expect(pacedSteps([2000, 4000], 1)).toEqual([2000, 4000]);
    expect(pacedSteps([], 3)).toEqual([]);
    // 300 events at 0.01 ev/s take 8 hours at one count, 25 hours over three counts: refused.
    expect(() => planOf(["--channel", "sec.alerts", "--rate", "0.01", "--events", "300", "--subscribers", "1,2,3"])).toThrow("take about");
    expect(planOf(["--channel", "sec.alerts", "--rate", "0.01", "--events", "300"]).rate).toBe(0.01);
  });

  test("a count out of range, a count twice, or a sweep with --mix or a sweep of rates is refused", () => {
    const refused: [string[], string][] = [
      [["--subscribers", "0"], `--subscribers: expected a whole number from 1 to ${BENCH_SUBSCRIBERS_MAX}`],
      [["--subscribers", "1,129"], 'got "129"'],
      [["--subscribers", "1,x"], 'got "x"'],
      [["--subscribers", "10,10"], "--subscribers: a count appears twice in the sweep"],
      [["--subscribers", "1,2", "--mix", "bulk.metrics"], "--subscribers: a sweep of subscriber counts does not combine with --mix"],
      [["--subscribers", "1,2", "--rate", "100,200"], "--subscribers: sweep subscribers or rates, not both at once"],
      [
        ["--subscribers", "1,2", "--subscriber-connections", "3"],
        "--subscriber-connections: 3 connections for 2 subscribers; at most one each",
      ],
      [
        ["--subscribers", "2", "--subscriber-connections", "3"],
        "--subscriber-connections: 3 connections for 2 subscribers; at most one each",
      ],
    ];
    for (const [argv, message] of refused) expect(() => planOf(["--channel", "sec.alerts", ...argv])).toThrow(message);
  });

  test("the table puts each count's replica CPU per published event beside the first count's", () => {
    const plan = planOf(["--channel", "sec.alerts", "--rate", "2000", "--subscribers", "1,100"]);
    const row = (subscribers: number, delivered: number, cpu: (number | null)[]): SubscriberSweepRow =>
      ({
        subscribers,
        published_per_s: 2000,
        delivered_per_s: delivered,
        p50_ms: 5,
        p99_ms: 14,
        cpu_us_per_published_event: cpu,
      }) as unknown as SubscriberSweepRow;
    const lines = subscriberSweepTable(plan, [row(1, 2000, [180, 190, null, 190]), row(100, 200_000, [110, 112, 111, null])]);
    expect(lines[0]).toContain("2000 events/s offered");
    expect(lines[2]?.trim().split(/ +/)).toEqual(["1", "2000", "2000", "5", "14", "186.7", "1.00"]);
    expect(lines[3]?.trim().split(/ +/)).toEqual(["100", "2000", "200000", "5", "14", "111.0", "0.59"]);
    expect(meanOf([null, null])).toBeNull();
  });
});
