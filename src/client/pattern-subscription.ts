/**
 * A wildcard subscription (`net.*`, `net.>`; pattern.ts): one ordinary subscription per
 * matching channel, so each channel keeps its own guarantees (order and voting by its
 * CLASS, resume, the bounded delivery queue), and a watch on the channel list that
 * subscribes to matching channels created later, from their first retained event, so
 * that nothing published before the watch saw them is missed. There is no order across
 * channels.
 *
 * The channel list is read through the client's one shared watch (channel-watch.ts).
 *
 * Bounds: at most PATTERN_CHANNELS_MAX channels (and never more than the replicas allow
 * subscriptions per connection) are followed at once; a matching channel past the bound
 * is reported with a signal and left out. A channel that ends its subscription
 * (destroyed, the key revoked) is reported and dropped; one created again under its tag
 * is followed again.
 */
import type { ChannelListListener } from "./channel-watch.ts";
import type { ChannelInfo } from "./queries.ts";
import { matchesPattern } from "./pattern.ts";
import type { BatchHandler, SubscribeOptions, SubscriptionHandle, SubscriptionSignal } from "./subscription.ts";
import { describeError } from "./errors.ts";

/** Channels one pattern subscription follows at most. */
export const PATTERN_CHANNELS_MAX = 64;

/** What a pattern subscription needs from the client. */
export interface PatternHost {
  listChannels(): Promise<readonly ChannelInfo[]>;
  /** Each later reading of the channel list, until the returned function is called. */
  watchChannels(listener: ChannelListListener<ChannelInfo>): () => void;
  subscribe(tag: string, options: SubscribeOptions, onBatch: BatchHandler): Promise<SubscriptionHandle>;
  /** The replicas' bound on subscriptions per connection (config limits). */
  readonly subscriptionsMax: number;
}

export class PatternSubscription implements SubscriptionHandle {
  readonly done: Promise<void>;
  private readonly followed = new Map<string, SubscriptionHandle | null>();
  /** Tags refused or left out; not tried again while they exist. */
  private readonly passed = new Set<string>();
  private readonly channelsMax: number;
  private unwatch: (() => void) | null = null;
  private closed = false;
  private resolveDone!: () => void;

  private constructor(
    readonly tag: string,
    private readonly host: PatternHost,
    private readonly options: SubscribeOptions,
    private readonly onBatch: BatchHandler,
  ) {
    this.channelsMax = Math.min(PATTERN_CHANNELS_MAX, host.subscriptionsMax);
    this.done = new Promise<void>((resolve) => {
      this.resolveDone = resolve;
    });
  }

  /** Subscribes to the channels that match now (live), then watches for new ones. */
  static async start(pattern: string, host: PatternHost, options: SubscribeOptions, onBatch: BatchHandler): Promise<PatternSubscription> {
    const subscription = new PatternSubscription(pattern, host, options, onBatch);
    await subscription.follow(await host.listChannels(), false);
    if (!subscription.closed) subscription.unwatch = host.watchChannels((reading) => void subscription.onReading(reading));
    return subscription;
  }

  /** The channels followed now. */
  get channels(): string[] {
    return [...this.followed.keys()].sort();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.unwatch?.();
    this.unwatch = null;
    const open = [...this.followed.values()];
    this.followed.clear();
    await Promise.all(open.map((subscription) => subscription?.close()));
    this.resolveDone();
  }

  private async onReading(reading: Parameters<ChannelListListener<ChannelInfo>>[0]): Promise<void> {
    if (this.closed) return;
    if (!reading.ok) {
      this.signal({ t: "channel", tag: this.tag, event: "list-failed", reason: describeError(reading.error) });
      return;
    }
    // A tag passed over that no longer exists may be created again: it is looked at then.
    const present = new Set(reading.channels.map((channel) => channel.tag));
    for (const tag of [...this.passed]) if (!present.has(tag)) this.passed.delete(tag);
    await this.follow(reading.channels, true);
  }

  /** Subscribes to each matching channel not yet followed; `fromStart` for channels created since. */
  private async follow(channels: readonly ChannelInfo[], fromStart: boolean): Promise<void> {
    const fresh = channels.filter(
      (channel) => matchesPattern(this.tag, channel.tag) && !this.followed.has(channel.tag) && !this.passed.has(channel.tag),
    );
    const starts: Promise<void>[] = [];
    for (const channel of fresh) {
      if (this.followed.size >= this.channelsMax) {
        this.passed.add(channel.tag);
        this.signal({
          t: "channel",
          tag: channel.tag,
          event: "skipped",
          reason: `the pattern follows at most ${this.channelsMax} channels`,
        });
        continue;
      }
      this.followed.set(channel.tag, null);
      starts.push(this.start(channel, fromStart));
    }
    await Promise.all(starts);
  }

  private async start(channel: ChannelInfo, fromStart: boolean): Promise<void> {
    const onSignal = this.options.onSignal;
    const base: SubscribeOptions = { ...this.options, ...(onSignal === undefined ? {} : { onSignal }) };
    // A channel created after the pattern subscription started is read from its first
    // retained event: what was published before this watch saw it is not lost.
    const options: SubscribeOptions = fromStart ? { ...base, from: channel.order === "total" ? 1 : 0, skipTrimmed: true } : base;
    try {
      const subscription = await this.host.subscribe(channel.tag, options, this.onBatch);
      if (this.closed || !this.followed.has(channel.tag)) {
        await subscription.close();
        return;
      }
      this.followed.set(channel.tag, subscription);
      this.signal({ t: "channel", tag: channel.tag, event: "added", reason: fromStart ? "created" : "matches" });
      subscription.done.then(
        () => this.ended(channel.tag, subscription, null),
        (error: unknown) => this.ended(channel.tag, subscription, error),
      );
    } catch (error) {
      this.followed.delete(channel.tag);
      this.passed.add(channel.tag);
      this.signal({ t: "channel", tag: channel.tag, event: "refused", reason: describeError(error), cause: error });
    }
  }

  private ended(tag: string, subscription: SubscriptionHandle, error: unknown): void {
    if (this.closed || this.followed.get(tag) !== subscription) return;
    this.followed.delete(tag);
    // Not followed again while the tag exists (a revoked key would only be refused);
    // once the tag is gone from the list, a channel created again under it is followed.
    this.passed.add(tag);
    this.signal({
      t: "channel",
      tag,
      event: "ended",
      ...(error === null ? { reason: "closed" } : { reason: describeError(error), cause: error }),
    });
  }

  private signal(signal: SubscriptionSignal): void {
    this.options.onSignal?.(signal);
  }
}
