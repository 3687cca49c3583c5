// `fitb top`'s view (issue 15, item 4): rates from two status samples, interval latency
// quantiles from histogram differences, and the rendered block.
import { describe, expect, test } from "bun:test";
import { summarizeStatus } from "../../src/client/client.ts";
import type { EachAnswer, ReplicaStatusAnswer } from "../../src/client/queries.ts";
import { assessStatus } from "../../src/cli/commands/status-report.ts";
import { channelRates, intervalLatency, quantileMs, renderTop, type TopSample } from "../../src/cli/commands/top-view.ts";

const BOUNDS_US = [1000, 10_000, 100_000];

function histogram(counts: number[]) {
  return { counts, sumUs: 0 };
}

function sample(atMs: number, stored: number, ackCounts: number[]): TopSample {
  const answers = new Map<number, EachAnswer<ReplicaStatusAnswer>>();
  for (const replica of [0, 1, 2]) {
    answers.set(replica, {
      ok: true,
      value: {
        replica,
        view: 0,
        leader: 0,
        lastDecided: 5,
        channels: 1,
        traffic: [
          { tag: "sec.alerts", class: "byzantine/total", priority: "critical", published: stored, stored, delivered: 2 * stored, shed: 0 },
        ],
        latency: {
          boundsUs: BOUNDS_US,
          publishAck: histogram(ackCounts),
          ordering: histogram([0, 0, 0, 0]),
          storageCommit: histogram([0, 0, 0, 0]),
          delivery: histogram([0, 0, 0, 0]),
        },
      },
    });
  }
  const connections = [0, 1, 2, 3].map((id) => ({ id, address: `127.0.0.1:710${id}`, isReady: id < 3 }));
  return { atMs, status: summarizeStatus(1, answers, connections) };
}

describe("fitb top view", () => {
  test("quantiles interpolate inside the bucket, and past the last bound answer it", () => {
    expect(quantileMs(BOUNDS_US, [0, 10, 0, 0], 0.5)).toBe(5.5);
    expect(quantileMs(BOUNDS_US, [10, 0, 0, 0], 0.99)).toBeCloseTo(0.99);
    expect(quantileMs(BOUNDS_US, [0, 0, 0, 4], 0.5)).toBe(100);
    expect(quantileMs(BOUNDS_US, [0, 0, 0, 0], 0.5)).toBeNull();
  });

  test("rates are the difference over the interval; the first sample has none", () => {
    const first = sample(0, 100, [1, 0, 0, 0]);
    const second = sample(2000, 300, [1, 20, 0, 0]);
    expect(channelRates(null, first)[0]?.storedPerS).toBeNull();
    const [rates] = channelRates(first, second);
    expect(rates).toMatchObject({ tag: "sec.alerts", publishedPerS: 100, storedPerS: 100, deliveredPerS: 200, shedPerS: 0, stored: 300 });
    const latency = intervalLatency(first, second, "publishAck");
    expect(latency.count).toBe(60);
    expect(latency.p50Ms).toBeCloseTo(5.5);
  });

  test("the block names the cluster, every replica, the problems, the channels and the latency", () => {
    const first = sample(0, 100, [1, 0, 0, 0]);
    const second = sample(1000, 150, [1, 10, 0, 0]);
    const report = assessStatus({ name: "unit", n: 4, f: 1 }, second.status, new Map([[3, "unreachable: connection refused"]]));
    const lines = renderTop(report, first, second, "12:00:00");
    expect(lines[0]).toBe("fitb top  cluster unit  n=4 f=1  view 0  leader 0  3/4 up  degraded  12:00:00");
    expect(lines.find((l) => l.startsWith("3 "))).toContain("false  -");
    expect(lines).toContain("! replica 3 is down: unreachable: connection refused");
    expect(lines.find((l) => l.startsWith("sec.alerts "))).toMatch(/critical +50\.0 +50\.0 +100 +0\.0 +150$/);
    expect(lines.at(-1)).toStartWith("LATENCY last interval: publish-ack p50 5.5 ms p99 9.9 ms (30)");
  });
});
