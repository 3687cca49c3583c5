/**
 * Per-channel series, labelled {tag, class, priority}. The number of channels is bounded
 * by the cluster file, but a scrape should stay small whatever it says: the first
 * METRICS_CHANNELS_MAX channels get their own series, and the channels beyond share the
 * series of tag="_other" for their class and priority (README "Metrics").
 */
import type { ChannelInfo } from "../core/channels/types.ts";
import type { CounterCell, CounterFamily, GaugeFamily, HistogramCell, HistogramFamily, MetricsRegistry } from "../metrics/registry.ts";

/** Channels with series of their own; more fold into tag="_other". */
export const METRICS_CHANNELS_MAX = 200;
/** The tag label of the folded channels. */
export const OTHER_TAG = "_other";
/**
 * How long the status query's traffic reuses the last binding of channels to series: a
 * binding walks every channel (0.6 ms with 222 channels), and anyone with a key may ask
 * for status as fast as it likes. The counters themselves are read live, and a change in
 * the number of channels binds them again at once (a channel just created is listed).
 */
export const TRAFFIC_REBIND_MS = 1000;

/** Why events were shed (refused under load, counted per channel). */
export const SHED_REASONS = ["rate_limited", "overloaded", "priority"] as const;
export type ShedReason = (typeof SHED_REASONS)[number];

/** The cells of one channel (or of one folded group): the hot paths keep these. */
export interface ChannelCells {
  readonly labels: readonly [string, string, string];
  readonly published: CounterCell;
  readonly stored: CounterCell;
  readonly delivered: CounterCell;
  readonly shedRate: CounterCell;
  readonly shedOverload: CounterCell;
  /** Shed by priority shedding (shedding.ts): a less urgent publish while urgent traffic waits. */
  readonly shedPriority: CounterCell;
  /** The class's latency histograms (labelled by class only), bound here so the hot paths build no label. */
  readonly ackLatency: HistogramCell | null;
  readonly deliveryLatency: HistogramCell | null;
}

/** The histograms labelled by class that channel cells carry. */
export interface ClassHistograms {
  readonly publishAck: HistogramFamily;
  readonly delivery: HistogramFamily;
}

type ChannelClass = Pick<ChannelInfo, "tag" | "fault" | "order" | "priority">;

export class ChannelMetrics {
  private readonly published: CounterFamily;
  private readonly stored: CounterFamily;
  private readonly delivered: CounterFamily;
  private readonly shed: CounterFamily;
  private readonly lastSeq: GaugeFamily;
  private readonly retainedEvents: GaugeFamily;
  private readonly retainedBytes: GaugeFamily;
  private readonly retentionUsed: GaugeFamily;
  /** Channels with series of their own, by tag. */
  private readonly own = new Map<string, ChannelCells>();
  /** Folded groups, by "class priority". */
  private readonly folded = new Map<string, ChannelCells>();
  /** Which cells each known channel counts into (own or folded), by tag. */
  private readonly byTag = new Map<string, ChannelCells>();
  /** When refresh() last bound every channel (performance.now() ms), and how many channels there were. */
  private refreshedAtMs = Number.NEGATIVE_INFINITY;
  private refreshedCount = -1;

  constructor(
    registry: MetricsRegistry,
    private readonly channels: {
      listChannels(): readonly ChannelInfo[];
      channelInfo(tag: string): ChannelInfo | null;
      /** How many channels there are (ChannelMachine's): a change binds them again at once. */
      readonly channelCount?: number;
    },
    private readonly limit = METRICS_CHANNELS_MAX,
    private readonly histograms: ClassHistograms | null = null,
  ) {
    const labels = ["tag", "class", "priority"];
    this.published = registry.counter("channel_events_published_total", "Events in publish requests admitted for this channel", labels);
    this.stored = registry.counter("channel_events_stored_total", "Events of this channel stored by this replica", labels);
    this.delivered = registry.counter("channel_events_delivered_total", "Events of this channel sent to subscribers", labels);
    this.shed = registry.counter("channel_events_shed_total", "Events of this channel refused under load, by reason", [
      ...labels,
      "reason",
    ]);
    this.lastSeq = registry.gauge("channel_last_seq", "The last channel seq assigned (total-order channels; 0 otherwise)", labels);
    this.retainedEvents = registry.gauge("channel_retained_events", "Events this replica retains for the channel", labels);
    this.retainedBytes = registry.gauge("channel_retained_bytes", "Bytes this replica retains for the channel", labels);
    this.retentionUsed = registry.gauge(
      "channel_retention_used_ratio",
      "Retained events or bytes over the channel's retention limit, whichever is fuller",
      labels,
    );
    registry.onScrape(() => this.refresh());
  }

  /** The cells a channel's events count into; null for a channel unknown here. */
  of(tag: string): ChannelCells | null {
    const known = this.byTag.get(tag);
    if (known !== undefined) return known;
    const info = this.channels.channelInfo(tag);
    return info === null ? null : this.bind(info);
  }

  /** Binds every channel that exists and drops the series of the ones that are gone; sets the gauges. */
  refresh(nowMs: number = performance.now()): void {
    this.refreshedAtMs = nowMs;
    const channels = this.channels.listChannels();
    this.refreshedCount = channels.length;
    const live = new Set<string>();
    const gauges = new Map<ChannelCells, { last: number; events: number; bytes: number; used: number }>();
    for (const info of channels) {
      live.add(info.tag);
      const cells = this.byTag.get(info.tag);
      const bound =
        cells !== undefined && cells.labels[1] === classOf(info) && cells.labels[2] === info.priority ? cells : this.rebind(info);
      const sum = gauges.get(bound) ?? { last: 0, events: 0, bytes: 0, used: 0 };
      sum.last = Math.max(sum.last, info.order === "total" ? info.nextSeq - 1 : 0);
      sum.events += info.retainedEvents;
      sum.bytes += info.retainedBytes;
      sum.used = Math.max(sum.used, info.retainedEvents / info.retention.events, info.retainedBytes / info.retention.bytes);
      gauges.set(bound, sum);
    }
    for (const tag of [...this.byTag.keys()]) if (!live.has(tag)) this.unbind(tag);
    for (const cells of [...this.own.values(), ...this.folded.values()]) {
      const g = gauges.get(cells) ?? { last: 0, events: 0, bytes: 0, used: 0 };
      this.lastSeq.with(...cells.labels).set(g.last);
      this.retainedEvents.with(...cells.labels).set(g.events);
      this.retainedBytes.with(...cells.labels).set(g.bytes);
      this.retentionUsed.with(...cells.labels).set(Number.isFinite(g.used) ? g.used : 0);
    }
  }

  /** Each series' counters, for the status query (`fitb top` turns them into rates). */
  traffic(
    nowMs: number = performance.now(),
  ): { tag: string; class: string; priority: string; published: number; stored: number; delivered: number; shed: number }[] {
    // Every channel, even one with no traffic yet (the cells are bound at scrapes otherwise),
    // bound again at most once per TRAFFIC_REBIND_MS, or at once when channels were created
    // or destroyed since (their count, a field read).
    const count = this.channels.channelCount ?? this.refreshedCount;
    if (!(nowMs - this.refreshedAtMs < TRAFFIC_REBIND_MS) || count !== this.refreshedCount) this.refresh(nowMs);
    return [...this.own.values(), ...this.folded.values()].map((cells) => ({
      tag: cells.labels[0],
      class: cells.labels[1],
      priority: cells.labels[2],
      published: cells.published.value,
      stored: cells.stored.value,
      delivered: cells.delivered.value,
      shed: cells.shedRate.value + cells.shedOverload.value + cells.shedPriority.value,
    }));
  }

  /** Channels with series of their own (for tests and the docs' bound). */
  get ownCount(): number {
    return this.own.size;
  }

  private rebind(info: ChannelClass): ChannelCells {
    this.unbind(info.tag);
    return this.bind(info);
  }

  private bind(info: ChannelClass): ChannelCells {
    const cls = classOf(info);
    let cells: ChannelCells;
    if (this.own.size < this.limit) {
      cells = this.cellsFor([info.tag, cls, info.priority]);
      this.own.set(info.tag, cells);
    } else {
      const key = `${cls} ${info.priority}`;
      cells = this.folded.get(key) ?? this.cellsFor([OTHER_TAG, cls, info.priority]);
      this.folded.set(key, cells);
    }
    this.byTag.set(info.tag, cells);
    return cells;
  }

  /** A channel is gone (or changed class): its own series go; a folded group keeps its totals. */
  private unbind(tag: string): void {
    this.byTag.delete(tag);
    const cells = this.own.get(tag);
    if (cells === undefined) return;
    this.own.delete(tag);
    for (const family of [this.published, this.stored, this.delivered, this.lastSeq, this.retainedEvents, this.retainedBytes]) {
      family.remove(...cells.labels);
    }
    this.retentionUsed.remove(...cells.labels);
    for (const reason of SHED_REASONS) this.shed.remove(...cells.labels, reason);
  }

  private cellsFor(labels: readonly [string, string, string]): ChannelCells {
    return {
      labels,
      published: this.published.with(...labels),
      stored: this.stored.with(...labels),
      delivered: this.delivered.with(...labels),
      shedRate: this.shed.with(...labels, "rate_limited"),
      shedOverload: this.shed.with(...labels, "overloaded"),
      shedPriority: this.shed.with(...labels, "priority"),
      ackLatency: this.histograms?.publishAck.with(labels[1]) ?? null,
      deliveryLatency: this.histograms?.delivery.with(labels[1]) ?? null,
    };
  }
}

export function classOf(info: Pick<ChannelInfo, "fault" | "order">): string {
  return `${info.fault}/${info.order}`;
}
