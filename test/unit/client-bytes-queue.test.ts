// The delivery queue between the voter and a slow handler is bounded in bytes as well as
// in events: a few large events reach the byte bound long before the count bound, and
// then an unordered subscription drops and signals "overflow", while a total-order one
// pauses, signals "slow" and resumes from where it stopped without losing anything.
import { describe, expect, test } from "bun:test";
import type { Events } from "../../wire/schemas.ts";
import type { ChannelInfo } from "../../src/client/queries.ts";
import { DELIVERY_QUEUE_BYTES_MAX_DEFAULT, DELIVERY_QUEUE_EVENTS_MAX_DEFAULT } from "../../src/client/delivery-queue.ts";
import { ClientSubscription, type ReceivedBatch, type SubscribeOptions, type SubscriptionSignal } from "../../src/client/subscription.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { channel, ScriptedHost, signedRequest } from "./subscription-host.ts";

const START_TIMEOUT_MS = 60_000;
const KIB = 1024;
const MIB = 1024 * KIB;

/** One event of `bytes` bytes, every byte `mark`, so the handler can tell which it got. */
function bigEvent(bytes: number, mark: number): Uint8Array {
  return new Uint8Array(bytes).fill(mark);
}

/** A handler that takes the first batch and then holds on to it until released. */
class GatedHandler {
  readonly marks: number[] = [];
  private opened = false;
  private open: () => void = () => undefined;
  private readonly gate = new Promise<void>((resolve) => (this.open = resolve));

  readonly handle = async (batch: ReceivedBatch): Promise<void> => {
    for (const event of batch.events) this.marks.push(event[0] as number);
    if (!this.opened) await this.gate;
  };

  release(): void {
    this.opened = true;
    this.open();
  }
}

type Harness = { host: ScriptedHost; sub: ClientSubscription; handler: GatedHandler; signals: SubscriptionSignal[] };

/** The publisher registered on every channel here (crash-fault subscribers take only registered publishers). */
const PUBLISHER = SigningKey.generate();

function subscribe(info: ChannelInfo, options: SubscribeOptions): Harness {
  const host = new ScriptedHost();
  const handler = new GatedHandler();
  const signals: SubscriptionSignal[] = [];
  const sub = new ClientSubscription(host, info, { ...options, onSignal: (s) => signals.push(s) }, handler.handle, START_TIMEOUT_MS, [
    PUBLISHER.publicKey,
  ]);
  void sub.begin().catch(() => undefined);
  for (const replica of [0, 1]) {
    const subId = host.subIdAt(replica);
    sub.onSubOk(replica, subId, { sub: subId, replica });
  }
  return { host, sub, handler, signals };
}

function send(h: Harness, replica: number, seq: number, req: Events["req"]): void {
  const subId = h.host.subIdAt(replica);
  h.sub.onEvents(replica, subId, { sub: subId, tag: h.sub.tag, seq, req, replica });
}

/** Lets the delivery pump hand every queued batch to the handler. */
const settle = (): Promise<void> => Bun.sleep(1);

describe("the delivery queue's byte bound", () => {
  test("defaults to 64 MiB, next to the count bound", () => {
    expect(DELIVERY_QUEUE_BYTES_MAX_DEFAULT).toBe(64 * MIB);
    expect(DELIVERY_QUEUE_BYTES_MAX_DEFAULT).toBeLessThan(DELIVERY_QUEUE_EVENTS_MAX_DEFAULT * MIB);
  });

  test("must be a positive integer", () => {
    const host = new ScriptedHost();
    for (const queueBytesMax of [0, -1, 1.5]) {
      expect(
        () => new ClientSubscription(host, channel("net.links", "crash", "none"), { queueBytesMax }, () => undefined, START_TIMEOUT_MS),
      ).toThrow(RangeError);
    }
  });

  test("unordered: a few large events past the bound are dropped, counted and signalled as overflow", async () => {
    const h = subscribe(channel("net.links", "crash", "none"), { from: 0, queueBytesMax: 2 * 64 * KIB });
    const key = PUBLISHER;
    // The first goes to the handler, which holds it; the next two fill the 128 KiB.
    for (let seq = 1; seq <= 3; seq++) send(h, 0, 0, signedRequest(key, "net.links", seq, [bigEvent(64 * KIB, seq)]));
    await settle();
    expect(h.sub.stats().queuedEvents).toBe(2);
    expect(h.sub.stats().queuedBytes).toBe(2 * 64 * KIB);
    send(h, 0, 0, signedRequest(key, "net.links", 4, [bigEvent(64 * KIB, 4)]));
    expect(h.signals).toEqual([{ t: "overflow", source: "local", droppedEvents: 1 }]);
    expect(h.sub.stats().droppedEvents).toBe(1);
    expect(h.sub.stats().queuedBytes).toBe(2 * 64 * KIB);

    h.handler.release();
    await settle();
    expect(h.handler.marks).toEqual([1, 2, 3]);
    expect(h.sub.stats().queuedBytes).toBe(0);
    // Once the handler caught up, events are taken again.
    send(h, 0, 0, signedRequest(key, "net.links", 5, [bigEvent(64 * KIB, 5)]));
    await settle();
    expect(h.handler.marks).toEqual([1, 2, 3, 5]);
    expect(h.host.unsubscribes).toEqual([]);
  });

  test("unordered, default bound: 1 MiB events are dropped past 64 MiB, far below the count bound", async () => {
    const h = subscribe(channel("net.links", "crash", "none"), { from: 0 });
    const key = PUBLISHER;
    const queuedMax = DELIVERY_QUEUE_BYTES_MAX_DEFAULT / MIB;
    // One held by the handler, then a full queue, then one more.
    const total = 1 + queuedMax + 1;
    for (let seq = 1; seq <= total; seq++) send(h, 0, 0, signedRequest(key, "net.links", seq, [bigEvent(MIB, seq % 256)]));
    await settle();
    expect(h.sub.stats().queuedBytes).toBe(DELIVERY_QUEUE_BYTES_MAX_DEFAULT);
    expect(h.signals).toEqual([{ t: "overflow", source: "local", droppedEvents: 1 }]);
    h.handler.release();
    await settle();
    expect(h.handler.marks).toHaveLength(total - 1);
  });

  test("total order: a few large events past the bound pause delivery, which resumes where it stopped, nothing lost", async () => {
    // Every replica serves (no narrowing), so that each one is seen paused and asked again.
    const h = subscribe(channel("ops.log", "crash", "total"), { from: 1, queueBytesMax: 2 * 64 * KIB, sources: "all" });
    const key = PUBLISHER;
    const reqs = [1, 2, 3, 4, 5].map((seq) => signedRequest(key, "ops.log", seq, [bigEvent(64 * KIB, seq)]));
    for (let seq = 1; seq <= 3; seq++) send(h, 0, seq, reqs[seq - 1] as Events["req"]);
    await settle();
    expect(h.signals).toEqual([]);
    // Channel seq 4 does not fit behind the 128 KiB already waiting: pause there.
    const before = h.host.subscribes.length;
    send(h, 0, 4, reqs[3] as Events["req"]);
    expect(h.signals).toEqual([{ t: "slow", source: "local", resumeFrom: 4 }]);
    expect(h.sub.nextSeq).toBe(4);
    expect(h.host.unsubscribes.map((u) => u.replica).sort()).toEqual([0, 1, 2, 3]);
    // While paused, nothing more is taken, and nothing is asked for.
    send(h, 1, 5, reqs[4] as Events["req"]);
    expect(h.host.subscribes.length).toBe(before);

    h.handler.release();
    await settle();
    expect(h.handler.marks).toEqual([1, 2, 3]);
    const resumed = h.host.subscribes.slice(before);
    expect(resumed.map((s) => [s.replica, s.from])).toEqual([
      [0, 4],
      [1, 4],
      [2, 4],
      [3, 4],
    ]);
    for (const replica of [0, 1]) {
      const subId = h.host.subIdAt(replica);
      h.sub.onSubOk(replica, subId, { sub: subId, replica });
    }
    send(h, 0, 4, reqs[3] as Events["req"]);
    send(h, 0, 5, reqs[4] as Events["req"]);
    await settle();
    expect(h.handler.marks).toEqual([1, 2, 3, 4, 5]);
    expect(h.sub.stats().droppedEvents).toBe(0);
    expect(h.sub.nextSeq).toBe(6);
  });
});
