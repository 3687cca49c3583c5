// `fitb top`'s view (issue 15, item 4): rates from two status samples, interval latency
// quantiles from histogram differences, and the rendered block.
import { describe, expect, test } from "bun:test";
import { summarizeStatus } from "../../src/client/client.ts";
import type { EachAnswer, ReplicaStatusAnswer } from "../../src/client/queries.ts";
import { assessStatus } from "../../src/cli/commands/status-report.ts";
import {
  channelRates,
  intervalLatency,
  LATENCY_BOUNDS_US,
  quantileMs,
  renderTop,
  type TopSample,
} from "../../src/cli/commands/top-view.ts";

const BOUNDS_US = [1000, 10_000, 100_000];
/** The local bucket (5 ms, 10 ms]: LATENCY_BOUNDS_US[3] is 5000 µs. */
const BUCKET_5_10_MS = 4;

function histogram(counts: number[]) {
  return { counts, sumUs: 0 };
}

/** Counts per local bucket (+Inf last), all 0 but those given by bucket index. */
function counts(at: Record<number, number>): number[] {
  return Array.from({ length: LATENCY_BOUNDS_US.length + 1 }, (_, i) => at[i] ?? 0);
}

const ZERO = counts({});

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
          boundsUs: [...LATENCY_BOUNDS_US],
          publishAck: histogram(ackCounts),
          ordering: histogram(ZERO),
          storageCommit: histogram(ZERO),
          delivery: histogram(ZERO),
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
    const first = sample(0, 100, counts({ 0: 1 }));
    const second = sample(2000, 300, counts({ 0: 1, [BUCKET_5_10_MS]: 20 }));
    expect(channelRates(null, first)[0]?.storedPerS).toBeNull();
    const [rates] = channelRates(first, second);
    expect(rates).toMatchObject({ tag: "sec.alerts", publishedPerS: 100, storedPerS: 100, deliveredPerS: 200, shedPerS: 0, stored: 300 });
    const latency = intervalLatency(first, second, "publishAck");
    expect(latency.count).toBe(60);
    expect(latency.p50Ms).toBeCloseTo(7.5);
  });

  test("the block names the cluster, every replica, the problems, the channels and the latency", () => {
    const first = sample(0, 100, counts({ 0: 1 }));
    const second = sample(1000, 150, counts({ 0: 1, [BUCKET_5_10_MS]: 10 }));
    const report = assessStatus({ name: "unit", n: 4, f: 1 }, second.status, new Map([[3, "unreachable: connection refused"]]));
    const lines = renderTop(report, first, second, "12:00:00");
    expect(lines[0]).toBe("fitb top  cluster unit  n=4 f=1  view 0  leader 0  3/4 up  degraded  12:00:00");
    expect(lines.find((l) => l.startsWith("3 "))).toContain("false  -");
    expect(lines).toContain("! replica 3 is down: unreachable: connection refused");
    expect(lines.find((l) => l.startsWith("sec.alerts "))).toMatch(/critical +50\.0 +50\.0 +100 +0\.0 +150$/);
    expect(lines.at(-1)).toStartWith("LATENCY last interval: publish-ack p50 7.5 ms p99 9.9 ms (30)");
  });

  test("one replica's counters set neither a channel's rates nor STORED: each is the (f+1)-th highest", () => {
    const liar = { published: 10 ** 12, stored: 10 ** 12, delivered: 10 ** 12, shed: 10 ** 12 };
    const first = fourReplicas(0, (replica) => ({ traffic: [row("sec.alerts", replica === 3 ? { stored: 0 } : { stored: 100 })] }));
    const second = fourReplicas(1000, (replica) => ({ traffic: [row("sec.alerts", replica === 3 ? liar : { stored: 150 })] }));
    const [rates] = channelRates(first, second, 1);
    expect(rates).toMatchObject({ publishedPerS: 50, storedPerS: 50, deliveredPerS: 100, shedPerS: 0, stored: 150 });
    const report = assessStatus({ name: "unit", n: 4, f: 1 }, second.status, new Map());
    expect(renderTop(report, first, second, "12:00:00").find((l) => l.startsWith("sec.alerts "))).toMatch(/ 150$/);
  });

  test("an answer claiming another replica's id is matched with its own earlier answer, not that replica's", () => {
    const first = fourReplicas(0, (replica) => ({
      ...(replica === 3 ? { replica: 0 } : {}),
      traffic: [row("sec.alerts", { stored: replica === 3 ? 0 : 100 })],
    }));
    const second = fourReplicas(1000, (replica) => ({
      ...(replica === 3 ? { replica: 0 } : {}),
      traffic: [row("sec.alerts", { stored: replica === 3 ? 10 ** 12 : 150 })],
    }));
    expect(channelRates(first, second, 1)[0]?.storedPerS).toBe(50);
  });

  test("a channel fewer than f+1 replicas list is not shown", () => {
    const forged = fourReplicas(0, (replica) => ({ traffic: replica === 0 ? [row("made.up", {})] : [row("sec.alerts", {})] }));
    expect(channelRates(null, forged, 1).map((c) => c.tag)).toEqual(["sec.alerts"]);
  });

  test("latency: the local bucket bounds; an answer with other bounds is left out", () => {
    const honest = (ack: number[]) => latencyOf(LATENCY_BOUNDS_US, ack);
    const first = fourReplicas(0, () => ({ latency: honest(counts({})) }));
    const second = fourReplicas(1000, (replica) => ({
      latency: replica === 3 ? latencyOf([1, 2, 3], [0, 0, 0, 10 ** 9]) : honest(counts({ [BUCKET_5_10_MS]: 10 })),
    }));
    // Read last, the forged answer once chose the bounds every replica's counts were read with.
    const latency = intervalLatency(first, second, "publishAck");
    expect(latency.count).toBe(30);
    expect(latency.p50Ms).toBeCloseTo(7.5);
    // Its earlier answer with other bounds keeps it out too.
    const third = fourReplicas(2000, () => ({ latency: honest(counts({ [BUCKET_5_10_MS]: 10 })) }));
    expect(intervalLatency(second, third, "publishAck").count).toBe(0);
  });

  test("a replica cut off from its peers: isolated in its NOTE, its problem named, the others' missing links as warnings", () => {
    const peers = (replica: number, up: (peer: number) => boolean) =>
      [0, 1, 2, 3].filter((peer) => peer !== replica).map((peer) => ({ id: peer, up: up(peer) }));
    const cut = fourReplicas(0, (replica) => ({ peers: peers(replica, (peer) => replica !== 2 && peer !== 2) }));
    const report = assessStatus({ name: "unit", n: 4, f: 1 }, cut.status, new Map());
    const lines = renderTop(report, null, cut, "12:00:00");
    expect(lines[0]).toBe("fitb top  cluster unit  n=4 f=1  view 0  leader 0  4/4 up  degraded  12:00:00");
    expect(lines.find((l) => l.startsWith("2 "))).toEndWith("isolated");
    expect(lines.find((l) => l.startsWith("0 "))).toEndWith("peers-unreached");
    expect(lines).toContain(
      "! replica 2 is isolated from its peers: it reaches 0 of 3 (no link to replicas 0, 1, 3), fewer than the 2 it needs to take part in a quorum of 3",
    );
    expect(lines).toContain("  warning: replica 0 does not reach replica 2 (it reaches 2 of its 3 peers; a quorum of 3 needs 2)");
  });

  test("a tag, class or priority carrying terminal escapes never reaches the screen", () => {
    const sequence = "\x1b]0;owned\x07\x1b[2J\u009b31m\x7f";
    // As if the answer had not been validated (queries.ts keeps such rows out): the view strips them too.
    const forgedRow = { ...row(`a${sequence}`, {}), class: `c${sequence}`, priority: `p${sequence}` } as unknown as Row;
    const forged = fourReplicas(0, () => ({ traffic: [forgedRow] }));
    const report = assessStatus({ name: "unit", n: 4, f: 1 }, forged.status, new Map());
    const screen = renderTop(report, null, forged, "12:00:00").join("\n");
    expect(screen).toContain("a]0;owned[2J31m  c]0;owned[2J31m  p]0;owned[2J31m");
    expect(hasControl(screen.replaceAll("\n", ""))).toBe(false);
  });
});

type Row = NonNullable<ReplicaStatusAnswer["traffic"]>[number];

function row(tag: string, counters: Partial<Pick<Row, "published" | "stored" | "delivered" | "shed">>): Row {
  const stored = counters.stored ?? 0;
  return {
    tag,
    class: "byzantine/total",
    priority: "critical",
    published: stored,
    stored,
    delivered: 2 * stored,
    shed: 0,
    ...counters,
  } as Row;
}

function latencyOf(boundsUs: readonly number[], ack: number[]): NonNullable<ReplicaStatusAnswer["latency"]> {
  const zero = new Array<number>(ack.length).fill(0);
  return {
    boundsUs: [...boundsUs],
    publishAck: histogram(ack),
    ordering: histogram(zero),
    storageCommit: histogram(zero),
    delivery: histogram(zero),
  };
}

/** A sample in which replicas 0..3 of n=4, f=1 all answer, each with `extra`. */
function fourReplicas(atMs: number, extra: (replica: number) => Partial<ReplicaStatusAnswer>): TopSample {
  const answers = new Map<number, EachAnswer<ReplicaStatusAnswer>>();
  for (const replica of [0, 1, 2, 3]) {
    answers.set(replica, { ok: true, value: { replica, view: 0, leader: 0, lastDecided: 5, channels: 1, ...extra(replica) } });
  }
  const connections = [0, 1, 2, 3].map((id) => ({ id, address: `127.0.0.1:710${id}`, isReady: true }));
  return { atMs, status: summarizeStatus(1, answers, connections) };
}

/** Whether text holds a C0 or C1 control character or DEL. */
function hasControl(text: string): boolean {
  return [...text].some((char) => {
    const code = char.codePointAt(0) as number;
    return code < 0x20 || (code >= 0x7f && code <= 0x9f);
  });
}
