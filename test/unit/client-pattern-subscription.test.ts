// A wildcard subscription against a fake client (src/client/pattern-subscription.ts):
// which channels it follows, with which options, its bound, and channels that end.
import { describe, expect, test } from "bun:test";
import { ChannelWatch } from "../../src/client/channel-watch.ts";
import { type PatternHost, PatternSubscription } from "../../src/client/pattern-subscription.ts";
import type { ChannelInfo } from "../../src/client/queries.ts";
import type { SubscribeOptions, SubscriptionHandle, SubscriptionSignal } from "../../src/client/subscription.ts";
import { waitFor } from "../helpers/wait.ts";

const info = (tag: string, order: "none" | "total" = "total"): ChannelInfo => ({
  tag,
  fault: "crash",
  order,
  priority: "normal",
  public: true,
});

/** A fake client: a channel list the test edits, and the subscriptions made, each endable. */
function fakeHost(channels: ChannelInfo[], subscriptionsMax = 256) {
  const made: { tag: string; options: SubscribeOptions; end: (error?: Error) => void; closed: boolean }[] = [];
  const calls = { lists: 0 };
  const listChannels = async (): Promise<ChannelInfo[]> => {
    calls.lists++;
    return [...channels];
  };
  // The client's shared watch, reading every 20 ms here.
  const watch = new ChannelWatch<ChannelInfo>(listChannels, 20);
  const host: PatternHost = {
    subscriptionsMax,
    listChannels,
    watchChannels: (listener) => watch.listen(listener),
    subscribe: async (tag, options) => {
      let settle!: { resolve: () => void; reject: (error: Error) => void };
      const done = new Promise<void>((resolve, reject) => {
        settle = { resolve, reject };
      });
      done.catch(() => undefined);
      const entry = {
        tag,
        options,
        closed: false,
        end: (error?: Error) => (error === undefined ? settle.resolve() : settle.reject(error)),
      };
      made.push(entry);
      const handle: SubscriptionHandle = {
        tag,
        done,
        close: async () => {
          entry.closed = true;
          settle.resolve();
        },
      };
      return handle;
    },
  };
  return { host, made, calls };
}

describe("PatternSubscription", () => {
  test("follows the matching channels live; a channel created later from its start", async () => {
    const channels = [info("net.links", "none"), info("net.links.eth0"), info("sec.alerts")];
    const { host, made } = fakeHost(channels);
    const signals: SubscriptionSignal[] = [];
    const sub = await PatternSubscription.start("net.*", host, { onSignal: (s) => signals.push(s) }, () => undefined);
    expect(made.map((m) => m.tag)).toEqual(["net.links"]);
    expect(made[0]?.options.from).toBeUndefined();
    channels.push(info("net.routes"), info("net.arp", "none"));
    await waitFor("the new channels", () => made.length === 3);
    const byTag = new Map(made.map((m) => [m.tag, m.options]));
    expect(byTag.get("net.routes")).toMatchObject({ from: 1, skipTrimmed: true });
    expect(byTag.get("net.arp")).toMatchObject({ from: 0 });
    expect(signals.filter((s) => s.t === "channel" && s.event === "added").length).toBe(3);
    await sub.close();
    expect(made.every((m) => m.closed)).toBe(true);
    await sub.done;
  });

  test("at most as many channels as the replicas allow subscriptions per connection; the rest are reported", async () => {
    const { host, made } = fakeHost([info("net.a"), info("net.b"), info("net.c")], 2);
    const signals: SubscriptionSignal[] = [];
    const sub = await PatternSubscription.start("net.>", host, { onSignal: (s) => signals.push(s) }, () => undefined);
    expect(made.map((m) => m.tag)).toEqual(["net.a", "net.b"]);
    expect(signals).toContainEqual({ t: "channel", tag: "net.c", event: "skipped", reason: "the pattern follows at most 2 channels" });
    await sub.close();
  });

  test("a channel that ends is reported and dropped; created again under its tag, it is followed again", async () => {
    const channels = [info("net.links")];
    const { host, made, calls } = fakeHost(channels);
    const signals: SubscriptionSignal[] = [];
    const sub = await PatternSubscription.start("net.*", host, { onSignal: (s) => signals.push(s) }, () => undefined);
    channels.length = 0;
    made[0]?.end(new Error("channel net.links was destroyed"));
    await waitFor("the end reported", () => signals.some((s) => s.t === "channel" && s.event === "ended"));
    expect(sub.channels).toEqual([]);
    // One poll sees the channel gone; then it is created again.
    const listsBefore = calls.lists;
    await waitFor("a poll of the channel list without the channel", () => calls.lists > listsBefore, 10_000);
    channels.push(info("net.links"));
    await waitFor("the channel followed again", () => made.length === 2, 10_000);
    expect(made[1]?.options).toMatchObject({ from: 1 });
    await sub.close();
  });
});

describe("ChannelWatch", () => {
  test("one reading of the list per interval however many listen", async () => {
    let lists = 0;
    const watch = new ChannelWatch<string>(async () => {
      lists++;
      return ["net.links"];
    }, 10);
    const seen = { a: 0, b: 0 };
    const stopA = watch.listen(() => seen.a++);
    const stopB = watch.listen(() => seen.b++);
    await waitFor("three readings each", () => seen.a >= 3 && seen.b >= 3);
    // Both listeners were handed the same readings: the list was read once for both.
    expect(lists).toBeLessThanOrEqual(Math.max(seen.a, seen.b) + 1);
    stopA();
    stopB();
    watch.stop();
  });
});
