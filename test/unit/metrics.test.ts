// The metrics registry and its bounds (issue 15, item 1): HELP and TYPE for every family
// from the first scrape, histogram buckets, and the per-channel and per-tag series folded
// into tag="_other" past their bound.
import { describe, expect, test } from "bun:test";
import type { ChannelInfo } from "../../src/core/channels/types.ts";
import { MetricsRegistry } from "../../src/metrics/registry.ts";
import { RelayMetrics } from "../../src/relay/metrics.ts";
import { ChannelMetrics, OTHER_TAG, TRAFFIC_REBIND_MS } from "../../src/replica/channel-metrics.ts";
import { Metrics } from "../../src/replica/metrics.ts";

function channel(tag: string, extra: Partial<ChannelInfo> = {}): ChannelInfo {
  return {
    tag,
    generation: 1,
    fault: "byzantine",
    order: "total",
    priority: "high",
    public: true,
    publishers: 1,
    subscribers: 0,
    retention: { events: 100, bytes: 1 << 20, ageMs: 1000 },
    nextSeq: 11,
    oldestSeq: 1,
    retainedEvents: 10,
    retainedBytes: 1000,
    ...extra,
  };
}

function machineOf(channels: ChannelInfo[]) {
  return {
    listChannels: () => channels,
    channelInfo: (tag: string) => channels.find((c) => c.tag === tag) ?? null,
  };
}

function lines(text: string): string[] {
  return text.split("\n").filter((line) => line !== "" && !line.startsWith("#"));
}

describe("metrics registry", () => {
  test("every family of a new replica has HELP and TYPE, and its unlabelled series at zero", async () => {
    const text = await new Metrics().prometheus();
    const helped = new Set([...text.matchAll(/^# HELP (\S+) \S/gm)].map((m) => m[1]));
    const typed = new Set([...text.matchAll(/^# TYPE (\S+) (counter|gauge|histogram)$/gm)].map((m) => m[1]));
    expect(helped.size).toBeGreaterThan(50);
    expect([...helped].sort()).toEqual([...typed].sort());
    expect(text).toContain("\nfitb_requests_total 0\n");
    expect(text).toContain('fitb_requests_refused_total{reason="UNAUTHORIZED"} 0');
    expect(text).toContain('fitb_mode{mode="normal"} 0');
  });

  test("a histogram exports cumulative buckets, +Inf, sum and count", async () => {
    const registry = new MetricsRegistry("t_");
    const cell = registry.histogram("latency_seconds", "help", [], [0.1, 1]).with();
    for (const value of [0.05, 0.5, 0.7, 3]) cell.observe(value);
    const text = await registry.text();
    expect(lines(text)).toEqual([
      't_latency_seconds_bucket{le="0.1"} 1',
      't_latency_seconds_bucket{le="1"} 3',
      't_latency_seconds_bucket{le="+Inf"} 4',
      "t_latency_seconds_sum 4.25",
      "t_latency_seconds_count 4",
    ]);
  });

  test("a family declared twice is refused", () => {
    const registry = new MetricsRegistry();
    registry.counter("x_total", "help");
    expect(() => registry.counter("x_total", "help")).toThrow("declared twice");
  });
});

describe("per-channel series", () => {
  test("labelled {tag, class, priority}; gauges from the channel state", async () => {
    const registry = new MetricsRegistry();
    const channels = new ChannelMetrics(registry, machineOf([channel("sec.alerts")]));
    channels.of("sec.alerts")?.stored.inc(10);
    const text = await registry.text();
    const labels = 'tag="sec.alerts",class="byzantine/total",priority="high"';
    expect(text).toContain(`fitb_channel_events_stored_total{${labels}} 10`);
    expect(text).toContain(`fitb_channel_last_seq{${labels}} 10`);
    expect(text).toContain(`fitb_channel_retention_used_ratio{${labels}} 0.1`);
    expect(text).toContain(`fitb_channel_events_shed_total{${labels},reason="rate_limited"} 0`);
  });

  test("the status query's traffic counts events shed for every reason, priority shedding's too", () => {
    const channels = new ChannelMetrics(new MetricsRegistry(), machineOf([channel("bulk.metrics", { priority: "low" })]));
    const cells = channels.of("bulk.metrics");
    cells?.shedRate.inc(1);
    cells?.shedOverload.inc(2);
    cells?.shedPriority.inc(4);
    expect(channels.traffic().find((row) => row.tag === "bulk.metrics")?.shed).toBe(7);
  });

  test("the status query's traffic binds the channels again at most once per TRAFFIC_REBIND_MS; its counters are live", () => {
    let listed = 0;
    const list = [channel("net.links")];
    const machine = machineOf(list);
    const counting = {
      ...machine,
      listChannels: () => {
        listed++;
        return machine.listChannels();
      },
    };
    const channels = new ChannelMetrics(new MetricsRegistry(), counting);
    channels.traffic(1_000);
    channels.of("net.links")?.published.inc(3);
    list.push(channel("net.new"));
    // A flood of status queries inside one interval walks the channels once.
    for (let i = 0; i < 100; i++) expect(channels.traffic(1_000 + i).find((row) => row.tag === "net.links")?.published).toBe(3);
    expect(listed).toBe(1);
    expect(channels.traffic(1_500).some((row) => row.tag === "net.new")).toBe(false);
    // The interval over: the channel created since is listed.
    expect(channels.traffic(1_000 + TRAFFIC_REBIND_MS).some((row) => row.tag === "net.new")).toBe(true);
    expect(listed).toBe(2);
  });

  test("a channel created or destroyed binds the channels again at once, inside the interval", () => {
    const list = [channel("net.links")];
    const machine = {
      ...machineOf(list),
      get channelCount() {
        return list.length;
      },
    };
    const channels = new ChannelMetrics(new MetricsRegistry(), machine);
    expect(channels.traffic(1_000).map((row) => row.tag)).toEqual(["net.links"]);
    list.push(channel("net.new"));
    expect(channels.traffic(1_001).map((row) => row.tag)).toEqual(["net.links", "net.new"]);
    list.shift();
    expect(channels.traffic(1_002).map((row) => row.tag)).toEqual(["net.new"]);
  });

  test("past the bound, channels fold into tag=_other per class and priority, and a destroyed channel's series go", async () => {
    const registry = new MetricsRegistry();
    const list = Array.from({ length: 5 }, (_, i) => channel(`c${i}`, i === 4 ? { priority: "low" } : {}));
    const channels = new ChannelMetrics(registry, machineOf(list), 2);
    for (const info of list) channels.of(info.tag)?.published.inc(1);
    expect(channels.ownCount).toBe(2);
    let text = await registry.text();
    expect(text).toContain('fitb_channel_events_published_total{tag="c0",class="byzantine/total",priority="high"} 1');
    expect(text).toContain(`fitb_channel_events_published_total{tag="${OTHER_TAG}",class="byzantine/total",priority="high"} 2`);
    expect(text).toContain(`fitb_channel_events_published_total{tag="${OTHER_TAG}",class="byzantine/total",priority="low"} 1`);
    expect(text).toContain(`fitb_channel_retained_events{tag="${OTHER_TAG}",class="byzantine/total",priority="high"} 20`);
    expect(text).not.toContain('tag="c2"');
    list.splice(0, 1);
    text = await registry.text();
    expect(text).not.toContain('tag="c0"');
    expect(channels.ownCount).toBe(1);
  });

  test("the relay reports the replica group its client follows", async () => {
    const state = { connections: 0, subscriptions: 0, publishers: 0, publishBytesHeld: 0, replicas: [] };
    const before = await new RelayMetrics(() => ({ ...state, membership: { epoch: null, changes: 0, refused: 0 } })).registry.text();
    expect(lines(before)).toContain("fitb_relay_membership_epoch -1");
    const after = await new RelayMetrics(() => ({ ...state, membership: { epoch: 2, changes: 1, refused: 3 } })).registry.text();
    expect(lines(after)).toEqual(
      expect.arrayContaining(["fitb_relay_membership_epoch 2", "fitb_relay_membership_changes 1", "fitb_relay_membership_refused 3"]),
    );
    expect(lines(after)).toEqual(
      expect.arrayContaining(["fitb_relay_membership_file_stale 0", "fitb_relay_membership_file_stale_warnings 0"]),
    );
    const stale = await new RelayMetrics(() => ({
      ...state,
      membership: { epoch: 3, changes: 2, refused: 0, staleFile: true, staleFileWarnings: 1 },
    })).registry.text();
    expect(lines(stale)).toEqual(
      expect.arrayContaining(["fitb_relay_membership_file_stale 1", "fitb_relay_membership_file_stale_warnings 1"]),
    );
  });

  test("the relay's per-tag series are bounded too, whatever tags clients send", async () => {
    const metrics = new RelayMetrics(() => ({ connections: 0, subscriptions: 0, publishers: 0, publishBytesHeld: 0, replicas: [] }), 3);
    for (let i = 0; i < 1000; i++) metrics.tag(`t${i}`).published.inc();
    const text = await metrics.registry.text();
    const series = lines(text).filter((line) => line.startsWith("fitb_relay_events_published_total{"));
    expect(series).toEqual([
      'fitb_relay_events_published_total{tag="t0"} 1',
      'fitb_relay_events_published_total{tag="t1"} 1',
      'fitb_relay_events_published_total{tag="t2"} 1',
      'fitb_relay_events_published_total{tag="_other"} 997',
    ]);
  });

  test("refused publishes to tags no channel has take no series: a real tag acknowledged later still gets its own", async () => {
    const metrics = new RelayMetrics(() => ({ connections: 0, subscriptions: 0, publishers: 0, publishBytesHeld: 0, replicas: [] }), 3);
    for (let i = 0; i < 200; i++) metrics.refusedTag(`junk.t${i}`).published.inc();
    metrics.tag("net.links").published.inc();
    metrics.refusedTag("net.links").published.inc();
    const series = lines(await metrics.registry.text()).filter((line) => line.startsWith("fitb_relay_events_published_total{"));
    expect(series).toEqual(['fitb_relay_events_published_total{tag="_other"} 200', 'fitb_relay_events_published_total{tag="net.links"} 2']);
  });
});
