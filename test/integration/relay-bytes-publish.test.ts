/**
 * The relay's byte bound on publishes across all connections and tags (PROTOCOL.md
 * 11.2, Bounds), over real loopback TCP with a client whose publishes the test answers
 * by hand: once the relay holds the bound in unacknowledged events, a new PUB from any
 * connection is refused with `-ERR OVERLOADED` instead of queued, the connection goes on,
 * and publishes are taken again once the held ones are acknowledged.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { FitbClient, PublishAck } from "../../src/client/client.ts";
import { SubscriptionEndedError } from "../../src/client/errors.ts";
import type { SubscribeOptions } from "../../src/client/subscription.ts";
import { DEFAULT_RELAY_LIMITS, RELAY_PUBLISH_BYTES_MAX } from "../../src/relay/limits.ts";
import { RelayMetrics } from "../../src/relay/metrics.ts";
import { PublishBytesBudget } from "../../src/relay/publish-bytes.ts";
import { RelayServer } from "../../src/relay/server.ts";
import { LineClient } from "../helpers/line-client.ts";
import { waitFor } from "../helpers/wait.ts";

const HOST = "127.0.0.1";
const EVENT_BYTES = 1_000;
const cleanups: (() => Promise<void> | void)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** The part of FitbClient the relay publishes through; the test acknowledges by hand. */
class HandAnsweredClient {
  /** The relay names its key in refusals of it. */
  readonly publicKey = new Uint8Array(32);
  readonly calls: { tag: string; events: readonly Uint8Array[]; resolve: (ack: PublishAck) => void; reject: (error: Error) => void }[] = [];
  private readonly nextSeq = new Map<string, number>();

  publishLimits() {
    return { batchEventsMax: 100, eventBytesMax: 64 * 1024, frameBytesMax: 4 * 1024 * 1024, inflightRequestsMax: 64 };
  }

  publish(tag: string, events: readonly Uint8Array[]): Promise<PublishAck> {
    return new Promise((resolve, reject) => this.calls.push({ tag, events, resolve, reject }));
  }

  subscribe(): Promise<never> {
    return Promise.reject(new Error("not used here"));
  }

  /** Acknowledges every request not yet acknowledged. */
  ackAll(): void {
    for (const call of this.calls.splice(0)) {
      const first = this.nextSeq.get(call.tag) ?? 1;
      this.nextSeq.set(call.tag, first + call.events.length);
      call.resolve({ tag: call.tag, span: call.events.length, pubSeq: first, channelSeq: first, firstSeq: first, replicas: [0, 1] });
    }
  }

  /** Fails every request not yet answered. */
  failAll(error: Error): void {
    for (const call of this.calls.splice(0)) call.reject(error);
  }

  get pendingEvents(): number {
    return this.calls.reduce((sum, call) => sum + call.events.length, 0);
  }
}

function startRelay(publishBytesMax: number): { relay: RelayServer; client: HandAnsweredClient; refusedOverloaded: () => Promise<number> } {
  const client = new HandAnsweredClient();
  // The state gauges are not read here: only the refusal counter is.
  const metrics = new RelayMetrics(() => ({ connections: 0, subscriptions: 0, publishers: 0, publishBytesHeld: 0, replicas: [] }));
  const relay = RelayServer.listen({
    client: client as unknown as FitbClient,
    hostname: HOST,
    port: 0,
    // Each connection's own bound (at which its PUB waits) out of the way: the bound across
    // connections is what is tested here (test/unit/relay-connection.test.ts tests the other).
    limits: { publishBytesMax, connectionPublishBytesMax: 2 * publishBytesMax },
    metrics,
  });
  const refusedOverloaded = async (): Promise<number> => {
    const line = (await metrics.registry.text())
      .split("\n")
      .find((l) => l.startsWith('fitb_relay_publishes_refused_total{reason="OVERLOADED"} '));
    return line === undefined ? 0 : Number(line.split(" ")[1]);
  };
  cleanups.push(async () => {
    client.ackAll();
    await relay.stop(100);
  });
  return { relay, client, refusedOverloaded };
}

const pub = (tag: string, fill: string): string => `PUB ${tag} ${fill.repeat(EVENT_BYTES)}\n`;

describe("the relay's byte bound on publishes", () => {
  test("defaults to 256 MiB", () => {
    expect(RELAY_PUBLISH_BYTES_MAX).toBe(256 * 1024 * 1024);
    expect(DEFAULT_RELAY_LIMITS.publishBytesMax).toBe(RELAY_PUBLISH_BYTES_MAX);
  });

  test("the budget takes one event alone whatever its size, then refuses past the bound", () => {
    const budget = new PublishBytesBudget(100);
    expect(budget.take(150)).toBeNull();
    expect(budget.take(1)).toBe("the relay holds 150 bytes of events not yet acknowledged; at most 100");
    budget.release(150);
    expect(budget.take(60)).toBeNull();
    expect(budget.take(40)).toBeNull();
    expect(budget.take(1)).not.toBeNull();
    expect(budget.usedBytes).toBe(100);
    expect(() => budget.release(101)).toThrow();
  });

  test("past the bound a PUB on any connection is refused with OVERLOADED, and taken again once acknowledged", async () => {
    const { relay, client, refusedOverloaded } = startRelay(3 * EVENT_BYTES);
    const busy = await LineClient.connect(relay.port, cleanups);
    const other = await LineClient.connect(relay.port, cleanups);

    busy.send(pub("net.links", "a") + pub("net.links", "b") + pub("net.links", "c"));
    // The relay holds all three; its publisher has sent one request or more (one that is
    // not full at a time: the rest wait in it for that one's answer).
    await waitFor("three events held", () => relay.publishBytesHeld === 3 * EVENT_BYTES && client.pendingEvents >= 1);
    const sent = client.pendingEvents;

    other.send(`${pub("sec.alerts", "d")}PING\n`);
    expect(await other.nextLines(2)).toEqual([
      `-ERR OVERLOADED the relay holds ${3 * EVENT_BYTES} bytes of events not yet acknowledged; at most ${3 * EVENT_BYTES}`,
      "PONG",
    ]);
    expect(client.pendingEvents).toBe(sent);
    // The connection that holds the bytes is refused its next one too; its answer comes
    // after those of the earlier commands, as always.
    busy.send(pub("net.links", "e"));
    // The relay has run that PUB (refused it) once the refusal is counted; its answer waits.
    await waitFor("the second refusal counted", async () => (await refusedOverloaded()) === 2);
    expect(busy.lines).toEqual([]);

    // Each answer lets the publisher send what waited: answer until all three are acknowledged.
    await waitFor("three acknowledged", () => {
      client.ackAll();
      return busy.lines.length >= 3;
    });
    expect(await busy.nextLines(4)).toEqual([
      "+OK net.links 1",
      "+OK net.links 2",
      "+OK net.links 3",
      `-ERR OVERLOADED the relay holds ${3 * EVENT_BYTES} bytes of events not yet acknowledged; at most ${3 * EVENT_BYTES}`,
    ]);
    await waitFor("the held bytes given back", () => relay.publishBytesHeld === 0);

    other.send(pub("sec.alerts", "d"));
    await waitFor("the publish sent", () => client.pendingEvents === 1);
    client.ackAll();
    expect(await other.nextLines(1)).toEqual(["+OK sec.alerts 1"]);
    expect(relay.publishBytesHeld).toBe(0);
  });

  test("a publish that fails gives its bytes back too", async () => {
    const { relay, client } = startRelay(EVENT_BYTES);
    const conn = await LineClient.connect(relay.port, cleanups);
    conn.send(pub("net.links", "a"));
    await waitFor("the publish sent", () => client.pendingEvents === 1);
    expect(relay.publishBytesHeld).toBe(EVENT_BYTES);
    client.failAll(new Error("no quorum"));
    expect((await conn.nextLines(1))[0]).toStartWith("-ERR INTERNAL");
    await waitFor("the held bytes given back", () => relay.publishBytesHeld === 0);
    conn.send(pub("net.links", "b"));
    await waitFor("the next publish sent", () => client.pendingEvents === 1);
  });
});

describe("a SUB from a seq older than the retained history", () => {
  test("is answered +OK and END <tag> TRIMMED oldest <seq>, as a trim during a subscription is", async () => {
    class TrimmedClient extends HandAnsweredClient {
      override subscribe(_tag?: unknown, options?: SubscribeOptions): Promise<never> {
        options?.onSignal?.({ t: "trimmed", nextSeq: 1, oldestSeq: 13 });
        return Promise.reject(
          new SubscriptionEndedError("BAD_REQUEST", "TRIMMED", "channel t.tot no longer holds seq 1; the oldest retained is 13"),
        );
      }
    }
    const client = new TrimmedClient();
    const relay = RelayServer.listen({ client: client as unknown as FitbClient, hostname: HOST, port: 0 });
    cleanups.push(() => relay.stop(100));
    const reader = await LineClient.connect(relay.port, cleanups);
    reader.send("SUB t.tot 1\nPING\n");
    expect(await reader.nextLines(3)).toEqual(["+OK", "END t.tot TRIMMED oldest 13", "PONG"]);
  });
});
