/**
 * The fan-out of a stored batch to many subscribers on sealed client sessions
 * (src/replica/subscriptions.ts, src/replica/framed.ts, src/crypto/session.ts): the batch
 * is encoded and hashed once, each session's frame is sealed with a MAC over its counter
 * and the payload's SHA-256 (wire/PROTOCOL.md 5.2), and the frames of one turn leave each
 * connection in one socket write. What a client opens must be exactly what was published,
 * and a frame altered, replayed, moved to another session or reordered must be refused,
 * exactly as when every frame's MAC covered its whole payload.
 */
import { describe, expect, test } from "bun:test";
import { sha256 } from "@noble/hashes/sha2.js";
import { ChannelMachine, type ChannelsConfig } from "../../src/core/channels/index.ts";
import type { StoredBatch } from "../../src/core/channels/types.ts";
import { CLIENT_FRAME_MAC_BYTES, FrameOpener, FrameSealer, SharedPayloadPrefix } from "../../src/crypto/session.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import { Subscriptions } from "../../src/replica/subscriptions.ts";
import { type EventsTail, eventsPrefix, eventsRest, eventsRestShared, eventsTail } from "../../wire/hot.ts";
import { encodeRequestBody, encodeTypedFrameWithTrailer, type Frame } from "../../wire/schemas.ts";
import { EVENTS_SUBS_MAX, FRAME_BYTES_MAX, FrameType } from "../../wire/types.ts";
import { concat, nextTurn, receive, sessionKeys, split, type Wire, wire } from "./sealed-wire.ts";

const CONFIG: ChannelsConfig = {
  channelsMax: 4,
  eventBytesMax: 1000,
  requestBytesMax: 100_000,
  requestEventsMax: 64,
  retention: { events: 1000, bytes: 1_000_000, ageMs: 60_000 },
};
const TAG = "net.links";
const PUBLISHER = new Uint8Array(32).fill(0x50);

function channel(): { machine: ChannelMachine; subs: Subscriptions; metrics: Metrics; publish: (events: number) => void } {
  const machine = new ChannelMachine({ hash: (b) => sha256(b), config: CONFIG });
  expect(
    machine.applyAdmin({ t: "create-channel", tag: TAG, fault: "byzantine", order: "total", priority: "normal", public: true }).ok,
  ).toBe(true);
  expect(machine.applyAdmin({ t: "register", tag: TAG, role: "publisher", key: PUBLISHER }).ok).toBe(true);
  const metrics = new Metrics();
  const subs = new Subscriptions(0, machine, metrics, 16);
  let seq = 1;
  const publish = (events: number): void => {
    const list = Array.from({ length: events }, (_, i) => new Uint8Array(200).fill((seq + i) & 0xff));
    const request = { v: 1 as const, client: PUBLISHER, seq, span: events, ts: 1_000, op: { t: "pub" as const, tag: TAG, events: list } };
    seq += events;
    const outcome = machine.applyOrderedPublish({ body: encodeRequestBody(request), sig: new Uint8Array(64) }, request, 1_000);
    expect(outcome.stored).not.toBeNull();
    subs.publish(TAG, outcome.stored as StoredBatch, true);
  };
  return { machine, subs, metrics, publish };
}

/**
 * For each case, the MAC a sealer makes over a batch's shared prefix and the case's rest
 * equals the MAC of the whole frame (the EVENTS body naming `names`) sealed in place by
 * another sealer in step with it. Answers how many frames the first sealer sealed.
 */
function expectSharedMacs(
  label: string,
  cases: readonly { rest: (tail: EventsTail) => Uint8Array; names: { sub: number } | { subs: number[] } }[],
): number {
  const keys = sessionKeys(label);
  const req = { body: new Uint8Array(3000).fill(7), sig: new Uint8Array(64).fill(9) };
  const shared = new SharedPayloadPrefix(eventsPrefix(req, 42).parts);
  const viaShared = new FrameSealer(keys.replica.sendKey);
  const whole = new FrameSealer(keys.replica.sendKey);
  for (const { rest, names } of cases) {
    const frame = encodeTypedFrameWithTrailer(
      { type: FrameType.EVENTS, body: { ...names, seq: 42, tag: TAG, replica: 3, req } } as Frame,
      CLIENT_FRAME_MAC_BYTES,
    );
    const mac = viaShared.macShared(FrameType.EVENTS, shared, rest(eventsTail(TAG, 3)));
    expect(mac).toEqual(whole.sealInPlace(frame).subarray(frame.length - CLIENT_FRAME_MAC_BYTES));
  }
  return viaShared.sealed;
}

/** After the subscriptions' turn: what each connection was sent so far (SUB_OKs) becomes its preamble. */
async function settle(...wires: Wire[]): Promise<void> {
  await nextTurn();
  for (const w of wires) {
    w.preamble = concat(w.writes);
    w.writes.length = 0;
  }
}

/** Two sessions, each with the same three subscription ids, and three batches published in one turn. */
async function fanOut(): Promise<{ a: Wire; b: Wire; streamA: Uint8Array; streamB: Uint8Array }> {
  const { subs, publish } = channel();
  const a = wire(1);
  const b = wire(2);
  for (const w of [a, b]) for (const sub of [1, 2, 3]) subs.subscribe(w.session, sub, TAG, undefined);
  await settle(a, b);
  publish(10);
  publish(1);
  publish(30);
  // Nothing is written until the turn's synchronous work is done.
  expect(a.writes.length + b.writes.length).toBe(0);
  await nextTurn();
  return { a, b, streamA: concat(a.writes), streamB: concat(b.writes) };
}

/** The client's opener of a session, past the frames of its preamble (which must open). */
function opener(w: Wire): FrameOpener {
  const o = new FrameOpener(w.keys.client.receiveKey);
  expect(receive(o, w.preamble)).not.toContain(null);
  return o;
}

describe("fan-out on sealed sessions", () => {
  test("each client opens exactly the batches published, in order, for each of its subscriptions; one socket write per connection and turn", async () => {
    const { subs, publish } = channel();
    const a = wire(1);
    const b = wire(2);
    for (const w of [a, b]) for (const sub of [1, 2, 3]) subs.subscribe(w.session, sub, TAG, undefined);
    publish(10);
    publish(1);
    publish(30);
    await nextTurn();
    for (const w of [a, b]) {
      // SUB_OK x3 and EVENTS x9, all in one write.
      expect(w.writes.length).toBe(1);
      const frames = receive(opener(w), w.writes[0] as Uint8Array);
      expect(frames.map((f) => (f === null ? null : f.type))).toEqual([
        ...[1, 2, 3].map(() => FrameType.SUB_OK),
        ...Array.from({ length: 9 }, () => FrameType.EVENTS),
      ]);
      const events = frames
        .slice(3)
        .map((f) => (f?.type === FrameType.EVENTS ? [f.body.sub, f.body.seq, f.body.tag, f.body.replica] : null));
      expect(events).toEqual([1, 11, 12].flatMap((seq) => [1, 2, 3].map((sub) => [sub, seq, TAG, 0])));
    }
  });

  test("a MAC over a shared prefix and the rest is the MAC of the whole frame sealed in place", () => {
    const sealed = expectSharedMacs(
      "same bytes",
      [1, 2, 300].map((sub) => ({ rest: (tail) => eventsRest(sub, tail), names: { sub } })),
    );
    expect(sealed).toBe(3);
  });

  test("an EVENTS frame over the frame limit is refused (false, never a throw): nothing is written and the frame counter is not used", async () => {
    const w = wire(1);
    const huge = new SharedPayloadPrefix(eventsPrefix({ body: new Uint8Array(FRAME_BYTES_MAX), sig: new Uint8Array(64) }, 1).parts);
    const rest = eventsRest(1, eventsTail(TAG, 0));
    expect(w.conn.sendShared(FrameType.EVENTS, huge, rest)).toBe(false);
    const small = new SharedPayloadPrefix(eventsPrefix({ body: new Uint8Array(10), sig: new Uint8Array(64) }, 1).parts);
    expect(w.conn.sendShared(FrameType.EVENTS, small, rest)).toBe(true);
    await nextTurn();
    expect(receive(opener(w), concat(w.writes)).map((f) => f?.type)).toEqual([FrameType.EVENTS]);
  });

  test("a tampered byte in the batch, in the subscription id or in the MAC is refused", async () => {
    const { a, streamA } = await fanOut();
    const frames = split(streamA);
    expect(frames.length).toBe(9);
    const first = frames[0] as Uint8Array;
    // A byte of the shared batch (inside the signed body), the last payload byte (the
    // replica id, after the sub id), a sub-id byte found by value, and a MAC byte.
    const subAt = first.length - CLIENT_FRAME_MAC_BYTES - 1 - 1 - 8 - TAG.length - 1 - 4;
    for (const at of [100, first.length - CLIENT_FRAME_MAC_BYTES - 1, subAt, first.length - 1]) {
      const tampered = Uint8Array.from(first);
      tampered[at] = (tampered[at] as number) ^ 0x01;
      expect(receive(opener(a), tampered)).toEqual([null]);
    }
    // The untouched frame opens, and its sub id is the one the offset above points at.
    const opened = receive(opener(a), first);
    expect(opened[0]?.type).toBe(FrameType.EVENTS);
    expect(first[subAt]).toBe(0x01);
    const swapped = Uint8Array.from(first);
    swapped[subAt] = 0x02; // the same batch, addressed to the session's other subscription
    expect(receive(opener(a), swapped)).toEqual([null]);
  });

  test("a replayed frame is refused", async () => {
    const { a, streamA } = await fanOut();
    const [first, second] = split(streamA) as [Uint8Array, Uint8Array];
    expect(receive(opener(a), concat([first, second])).map((f) => f?.type)).toEqual([FrameType.EVENTS, FrameType.EVENTS]);
    const replayed = receive(opener(a), concat([first, first]));
    expect(replayed.length).toBe(2);
    expect(replayed[1]).toBeNull();
  });

  test("another session's frame of the same batch, sub id and counter is refused", async () => {
    const { a, b, streamA, streamB } = await fanOut();
    const fromA = split(streamA)[0] as Uint8Array;
    const fromB = split(streamB)[0] as Uint8Array;
    // Same payload (batch, sub 1, tag, replica), same counter: only the session key differs.
    expect(fromA.subarray(0, fromA.length - CLIENT_FRAME_MAC_BYTES)).toEqual(fromB.subarray(0, fromB.length - CLIENT_FRAME_MAC_BYTES));
    expect(receive(opener(b), fromB)[0]?.type).toBe(FrameType.EVENTS);
    expect(receive(opener(a), fromB)).toEqual([null]);
    expect(receive(opener(b), fromA)).toEqual([null]);
  });

  test("reordered or dropped frames are refused", async () => {
    const { a, streamA } = await fanOut();
    const [first, second, third, fourth] = split(streamA) as [Uint8Array, Uint8Array, Uint8Array, Uint8Array];
    // Two subscriptions' frames of one batch swapped, and two batches of one subscription swapped.
    expect(receive(opener(a), concat([second, first]))).toEqual([null]);
    expect(receive(opener(a), concat([fourth, first]))).toEqual([null]);
    const dropped = receive(opener(a), concat([first, third]));
    expect(dropped[0]?.type).toBe(FrameType.EVENTS);
    expect(dropped[1]).toBeNull();
  });
});

describe("shared subscriptions: one EVENTS frame naming several (SUBSCRIBE shared)", () => {
  test("a connection's shared subscriptions of the channel get each batch in one frame naming them all; the others get their own", async () => {
    const { subs, publish, metrics } = channel();
    const a = wire(1);
    const b = wire(2);
    // a: three shared subscriptions, subscribed out of order; b: two plain ones and a single shared one.
    for (const sub of [3, 1, 2]) subs.subscribe(a.session, sub, TAG, undefined, undefined, true);
    subs.subscribe(b.session, 1, TAG, undefined);
    subs.subscribe(b.session, 2, TAG, undefined);
    subs.subscribe(b.session, 3, TAG, undefined, undefined, true);
    await settle(a, b);
    publish(10);
    publish(1);
    await nextTurn();
    const opened = (w: Wire) =>
      receive(opener(w), concat(w.writes)).map((f) => (f?.type === FrameType.EVENTS ? [f.body.sub ?? f.body.subs, f.body.seq] : f));
    expect(opened(a)).toEqual([
      [[1, 2, 3], 1],
      [[1, 2, 3], 11],
    ]);
    expect(opened(b)).toEqual([
      [1, 1],
      [2, 1],
      [3, 1],
      [1, 11],
      [2, 11],
      [3, 11],
    ]);
    // Counted per subscription delivered to, as before; the shared frames apart.
    expect(metrics.get("events_delivered_total")).toBe(6 * 11);
    expect(metrics.get("events_frames_shared_total")).toBe(2);
  });

  test("a shared frame's MAC over the shared prefix and its rest is the MAC of the whole frame", () => {
    const subsLists = [[1, 2], [5, 70_000, 2 ** 33], Array.from({ length: EVENTS_SUBS_MAX }, (_, i) => i * 3)];
    expectSharedMacs(
      "shared frame",
      subsLists.map((subs) => ({ rest: (tail) => eventsRestShared(subs, tail), names: { subs } })),
    );
  });

  test("more shared subscriptions than one frame may name go out in frames of EVENTS_SUBS_MAX", async () => {
    const { machine, metrics } = channel();
    const subs = new Subscriptions(0, machine, metrics, EVENTS_SUBS_MAX + 10);
    const a = wire(1);
    for (let sub = 1; sub <= EVENTS_SUBS_MAX + 1; sub++) subs.subscribe(a.session, sub, TAG, undefined, undefined, true);
    await settle(a);
    const request = {
      v: 1 as const,
      client: PUBLISHER,
      seq: 1,
      span: 1,
      ts: 1_000,
      op: { t: "pub" as const, tag: TAG, events: [new Uint8Array(8)] },
    };
    const outcome = machine.applyOrderedPublish({ body: encodeRequestBody(request), sig: new Uint8Array(64) }, request, 1_000);
    subs.publish(TAG, outcome.stored as StoredBatch, true);
    await nextTurn();
    const frames = receive(opener(a), concat(a.writes));
    expect(frames.map((f) => (f?.type === FrameType.EVENTS ? (f.body.subs?.length ?? f.body.sub) : null))).toEqual([
      EVENTS_SUBS_MAX,
      EVENTS_SUBS_MAX + 1,
    ]);
    expect(metrics.get("events_delivered_total")).toBe(EVENTS_SUBS_MAX + 1);
    // The frame naming one subscription is not a shared one.
    expect(metrics.get("events_frames_shared_total")).toBe(1);
  });

  test("a shared frame that does not fit ends every subscription it names as SLOW", async () => {
    const { subs, publish, metrics } = channel();
    const slow = wire(1, 20_000);
    for (const sub of [1, 2]) subs.subscribe(slow.session, sub, TAG, undefined, undefined, true);
    await settle(slow);
    slow.reading = false;
    // Both end at the same publish: one frame named them both, so neither outlived the other.
    const counts: number[] = [];
    for (let i = 0; i < 20 && subs.count > 0; i++) {
      publish(20);
      counts.push(subs.count);
    }
    expect(counts.at(-1)).toBe(0);
    expect(counts).not.toContain(1);
    expect(metrics.get("subscribers_dropped_slow_total")).toBe(2);
  });
});

describe("coalesced writes and the outbound bound", () => {
  test("bytes gathered in a turn count against the connection's bound: a subscriber that stopped reading is ended SLOW", async () => {
    const { subs, publish, metrics } = channel();
    // Room for the SUB_OK and a few batches of 20 x 200 bytes, not for 20.
    const slow = wire(1, 20_000);
    const fast = wire(2);
    subs.subscribe(slow.session, 1, TAG, undefined);
    subs.subscribe(fast.session, 1, TAG, undefined);
    await settle(slow, fast);
    slow.reading = false;
    for (let i = 0; i < 20; i++) publish(20);
    expect(metrics.get("subscribers_dropped_slow_total")).toBe(1);
    expect(slow.conn.pendingBytes).toBeLessThanOrEqual(20_000);
    expect(subs.count).toBe(1);
    await nextTurn();
    // The fast subscriber has all 20 batches, in one write this turn.
    expect(fast.writes.length).toBe(1);
    const frames = receive(opener(fast), concat(fast.writes));
    expect(frames.filter((f) => f?.type === FrameType.EVENTS).length).toBe(20);
  });

  test("bytes a socket did not take stay intact while other connections write later turns", async () => {
    const { subs, publish } = channel();
    const a = wire(1);
    const b = wire(2);
    for (const w of [a, b]) subs.subscribe(w.session, 1, TAG, undefined);
    await settle(a, b);
    // a's socket takes 1,000 bytes of its turn: the rest waits in its queue.
    a.takeMax = 1000;
    publish(20);
    publish(20);
    await nextTurn();
    expect(a.conn.pendingBytes).toBeGreaterThan(0);
    // Later turns write other batches to b (and queue more for a) meanwhile.
    a.takeMax = 0;
    for (let turn = 0; turn < 3; turn++) {
      publish(20);
      await nextTurn();
    }
    a.takeMax = Number.POSITIVE_INFINITY;
    a.conn.drain();
    expect(a.conn.pendingBytes).toBe(0);
    for (const w of [a, b]) {
      const frames = receive(opener(w), concat(w.writes));
      expect(frames.map((f) => (f?.type === FrameType.EVENTS ? f.body.seq : null))).toEqual([1, 21, 41, 61, 81]);
    }
  });

  test("what was gathered is written before the connection closes", () => {
    const w = wire(1);
    expect(w.conn.send({ type: FrameType.PONG, body: { n: 1 } })).toBe(true);
    expect(w.writes.length).toBe(0);
    w.conn.closeWith({ type: FrameType.ERROR, body: { code: "OVERLOADED", reason: "too many sessions" } });
    expect(receive(opener(w), concat(w.writes)).map((f) => f?.type)).toEqual([FrameType.PONG, FrameType.ERROR]);
  });
});
