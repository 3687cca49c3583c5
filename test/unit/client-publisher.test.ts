import { describe, expect, test } from "bun:test";
import type { PublishAck } from "../../src/client/client.ts";
import { ClientClosedError, InvalidInputError, QueueFullError, RequestRejectedError } from "../../src/client/errors.ts";
import { Publisher, type EventAck, type PublishTarget } from "../../src/client/publisher.ts";
import { EVENT_OVERHEAD_BYTES, REQUEST_FIXED_OVERHEAD_BYTES } from "../../src/client/request.ts";
import { REQUEST_BYTES_MAX } from "../../src/core/channels/constants.ts";

/**
 * A publish target whose requests the test answers by hand, standing in for the replica
 * group so that only the batching and ordering logic is under test.
 */
class HandAnsweredTarget implements PublishTarget {
  readonly calls: { tag: string; events: readonly Uint8Array[]; resolve: (ack: PublishAck) => void; reject: (error: Error) => void }[] = [];
  private nextSeq = 1;

  constructor(private readonly limits = { batchEventsMax: 100, eventBytesMax: 1000, frameBytesMax: 64 * 1024, inflightRequestsMax: 64 }) {}

  publishLimits() {
    return this.limits;
  }

  publish(tag: string, events: readonly Uint8Array[]): Promise<PublishAck> {
    return new Promise((resolve, reject) => this.calls.push({ tag, events, resolve, reject }));
  }

  /** Acknowledges call `index` with channel seqs numbered in acknowledgement order. */
  ack(index: number): void {
    const call = this.calls[index]!;
    const first = this.nextSeq;
    this.nextSeq += call.events.length;
    call.resolve({ tag: call.tag, span: call.events.length, pubSeq: first, channelSeq: first, firstSeq: first, replicas: [0, 1] });
  }
}

const settle = () => new Promise<void>((resolve) => setTimeout(resolve, 0));
const event = (text: string) => new TextEncoder().encode(text);
const texts = (events: readonly Uint8Array[]) => events.map((e) => new TextDecoder().decode(e));

describe("Publisher batching", () => {
  test("events published in the same turn travel in one signed request", async () => {
    const target = new HandAnsweredTarget();
    const publisher = new Publisher(target, "net.links");
    const acks = ["a", "b", "c"].map((t) => publisher.publish(event(t)));
    await settle();
    expect(target.calls.length).toBe(1);
    expect(texts(target.calls[0]!.events)).toEqual(["a", "b", "c"]);
    target.ack(0);
    expect(await Promise.all(acks)).toEqual([
      { tag: "net.links", seq: 1 },
      { tag: "net.links", seq: 2 },
      { tag: "net.links", seq: 3 },
    ]);
  });

  // With one request in flight at most, and with the default pipeline of four: there only
  // the rule of one partial request in flight holds the later events back.
  test.each([
    ["one request in flight at most", { inflightBatchesMax: 1 }],
    ["the default pipeline", {}],
  ])("an idle publisher sends at once; a busy one gathers what waits into the next request (%s)", async (_name, options) => {
    const target = new HandAnsweredTarget();
    const publisher = new Publisher(target, "t", options);
    const first = publisher.publish(event("1"));
    await settle();
    expect(target.calls.length).toBe(1);
    // Published one turn apart: each would have had a pipeline slot of its own.
    const rest: Promise<EventAck>[] = [];
    for (const text of ["2", "3", "4"]) {
      rest.push(publisher.publish(event(text)));
      await settle();
    }
    expect(target.calls.length).toBe(1);
    expect(publisher.queuedEvents).toBe(3);
    target.ack(0);
    await first;
    await settle();
    expect(target.calls.length).toBe(2);
    expect(texts(target.calls[1]!.events)).toEqual(["2", "3", "4"]);
    target.ack(1);
    expect((await Promise.all(rest)).map((a) => a.seq)).toEqual([2, 3, 4]);
  });

  test("a request holds at most batchEventsMax events", async () => {
    const target = new HandAnsweredTarget();
    const publisher = new Publisher(target, "t", { batchEventsMax: 2, inflightBatchesMax: 8 });
    for (let i = 0; i < 5; i++) void publisher.publish(event(String(i)));
    await settle();
    expect(target.calls.map((call) => call.events.length)).toEqual([2, 2, 1]);
  });

  test("a request holds at most batchBytesMax bytes (events plus their overhead)", async () => {
    const target = new HandAnsweredTarget();
    const perEvent = 10 + EVENT_OVERHEAD_BYTES;
    const publisher = new Publisher(target, "t", { batchBytesMax: 3 * perEvent, inflightBatchesMax: 8 });
    for (let i = 0; i < 7; i++) void publisher.publish(new Uint8Array(10));
    await settle();
    expect(target.calls.map((call) => call.events.length)).toEqual([3, 3, 1]);
  });

  test("a request never exceeds what replicas take of one (REQUEST_BYTES_MAX), however large the frame", () => {
    const target = new HandAnsweredTarget({
      batchEventsMax: 4096,
      eventBytesMax: 1 << 20,
      frameBytesMax: 4 << 20,
      inflightRequestsMax: 64,
    });
    const publisher = new Publisher(target, "t");
    expect(publisher.batchBytesMax).toBe(REQUEST_BYTES_MAX - REQUEST_FIXED_OVERHEAD_BYTES - 1);
    expect(() => new Publisher(target, "t", { batchBytesMax: REQUEST_BYTES_MAX })).toThrow(/batchBytesMax/);
  });

  test("no more than inflightBatchesMax requests are outstanding", async () => {
    const target = new HandAnsweredTarget();
    const publisher = new Publisher(target, "t", { batchEventsMax: 1, inflightBatchesMax: 2, queueEventsMax: 10 });
    for (let i = 0; i < 6; i++) void publisher.publish(event(String(i)));
    await settle();
    expect(target.calls.length).toBe(2);
    expect(publisher.inflightBatches).toBe(2);
    target.ack(0);
    await settle();
    expect(target.calls.length).toBe(3);
  });
});

describe("Publisher: one partial request in flight", () => {
  test("full requests pipeline beside a partial one, up to inflightBatchesMax", async () => {
    const target = new HandAnsweredTarget();
    const publisher = new Publisher(target, "t", { batchEventsMax: 2, inflightBatchesMax: 4 });
    void publisher.publish(event("a"));
    await settle();
    // Five more in one turn: two full requests go at once, the fifth (a partial one) waits.
    for (const text of ["b", "c", "d", "e", "f"]) void publisher.publish(event(text));
    await settle();
    expect(target.calls.map((call) => texts(call.events))).toEqual([["a"], ["b", "c"], ["d", "e"]]);
    expect(publisher.queuedEvents).toBe(1);
    // A full request answered frees no partial slot; the partial one answered does.
    target.ack(1);
    await settle();
    expect(target.calls.length).toBe(3);
    target.ack(0);
    await settle();
    expect(target.calls.map((call) => texts(call.events))[3]).toEqual(["f"]);
  });

  test("a request cut by the byte bound counts as full and pipelines beside a partial one", async () => {
    const target = new HandAnsweredTarget();
    const perEvent = 10 + EVENT_OVERHEAD_BYTES;
    const publisher = new Publisher(target, "t", { batchBytesMax: 3 * perEvent });
    void publisher.publish(new Uint8Array(10));
    await settle();
    for (let i = 0; i < 4; i++) void publisher.publish(new Uint8Array(10));
    await settle();
    expect(target.calls.map((call) => call.events.length)).toEqual([1, 3]);
    expect(publisher.queuedEvents).toBe(1);
  });

  test("inflightPartialBatchesMax lets more partial requests pipeline, within inflightBatchesMax", async () => {
    const target = new HandAnsweredTarget();
    const publisher = new Publisher(target, "t", { inflightBatchesMax: 3, inflightPartialBatchesMax: 3 });
    for (const text of ["1", "2", "3", "4"]) {
      void publisher.publish(event(text));
      await settle();
    }
    expect(target.calls.map((call) => texts(call.events))).toEqual([["1"], ["2"], ["3"]]);
    expect(() => new Publisher(target, "t", { inflightBatchesMax: 2, inflightPartialBatchesMax: 3 })).toThrow("inflightPartialBatchesMax");
  });
});

describe("Publisher acks", () => {
  test("acks resolve in publish order even when a later request is acknowledged first", async () => {
    const target = new HandAnsweredTarget();
    const publisher = new Publisher(target, "t", { batchEventsMax: 1, inflightBatchesMax: 3 });
    const order: string[] = [];
    const acks = ["x", "y", "z"].map((t) => publisher.publish(event(t)).then((ack: EventAck) => order.push(`${t}:${ack.seq}`)));
    await settle();
    target.ack(2);
    target.ack(1);
    await settle();
    expect(order).toEqual([]);
    target.ack(0);
    await Promise.all(acks);
    // Seqs are the group's answer; the order of answers is the order of publishing.
    expect(order).toEqual(["x:3", "y:2", "z:1"]);
  });

  test("a refused request fails its own events only, still in order", async () => {
    const target = new HandAnsweredTarget();
    const publisher = new Publisher(target, "t", { batchEventsMax: 2, inflightBatchesMax: 4 });
    const outcomes: string[] = [];
    const all = ["a", "b", "c", "d"].map((t) =>
      publisher.publish(event(t)).then(
        (ack) => outcomes.push(`${t} ok ${ack.seq}`),
        (error: RequestRejectedError) => outcomes.push(`${t} ${error.code}`),
      ),
    );
    await settle();
    target.ack(1);
    target.calls[0]!.reject(new RequestRejectedError("UNAUTHORIZED", "not registered"));
    await Promise.all(all);
    expect(outcomes).toEqual(["a UNAUTHORIZED", "b UNAUTHORIZED", "c ok 1", "d ok 2"]);
  });

  test("flush and close wait for every answer; close refuses new events", async () => {
    const target = new HandAnsweredTarget();
    const publisher = new Publisher(target, "t");
    const ack = publisher.publish(event("a"));
    let flushed = false;
    const flush = publisher.flush().then(() => (flushed = true));
    await settle();
    expect(flushed).toBe(false);
    const closing = publisher.close();
    await expect(publisher.publish(event("b"))).rejects.toBeInstanceOf(ClientClosedError);
    target.ack(0);
    await Promise.all([ack, flush, closing]);
    expect(flushed).toBe(true);
  });
});

describe("Publisher bounds", () => {
  test("past queueEventsMax publish refuses with OVERLOADED, and waitForRoom waits for room", async () => {
    const target = new HandAnsweredTarget();
    const publisher = new Publisher(target, "t", { batchEventsMax: 2, inflightBatchesMax: 1, queueEventsMax: 2 });
    void publisher.publish(event("in flight"));
    await settle();
    void publisher.publish(event("q1"));
    void publisher.publish(event("q2"));
    const refused = publisher.publish(event("q3"));
    await expect(refused).rejects.toBeInstanceOf(QueueFullError);
    await expect(refused).rejects.toMatchObject({ code: "OVERLOADED" });
    let room = false;
    const waiting = publisher.waitForRoom().then(() => (room = true));
    await settle();
    expect(room).toBe(false);
    target.ack(0);
    await waiting;
    expect(room).toBe(true);
    expect(publisher.hasRoom()).toBe(true);
  });

  test("past queueBytesMax publish refuses", async () => {
    const target = new HandAnsweredTarget();
    const publisher = new Publisher(target, "t", { inflightBatchesMax: 1, queueBytesMax: 100 });
    void publisher.publish(new Uint8Array(10));
    await settle();
    void publisher.publish(new Uint8Array(60));
    await expect(publisher.publish(new Uint8Array(41))).rejects.toBeInstanceOf(QueueFullError);
    expect(publisher.queuedBytes).toBe(60);
  });

  test("an event over the event bound is refused at once, without holding up the others", async () => {
    const target = new HandAnsweredTarget({ batchEventsMax: 100, eventBytesMax: 16, frameBytesMax: 64 * 1024, inflightRequestsMax: 64 });
    const publisher = new Publisher(target, "t");
    const small = publisher.publish(new Uint8Array(16));
    const large = publisher.publish(new Uint8Array(17));
    await expect(large).rejects.toBeInstanceOf(InvalidInputError);
    await expect(large).rejects.toMatchObject({ code: "TOO_LARGE" });
    await settle();
    expect(target.calls.length).toBe(1);
    expect(target.calls[0]!.events.length).toBe(1);
    target.ack(0);
    expect((await small).seq).toBe(1);
  });

  test("options beyond the cluster's limits are refused", () => {
    const target = new HandAnsweredTarget();
    expect(() => new Publisher(target, "t", { batchEventsMax: 101 })).toThrow("batchEventsMax");
    expect(() => new Publisher(target, "t", { inflightBatchesMax: 65 })).toThrow("inflightBatchesMax");
    expect(() => new Publisher(target, "Bad Tag")).toThrow(InvalidInputError);
  });
});
