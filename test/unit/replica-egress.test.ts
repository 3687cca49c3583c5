/**
 * Strict priority at egress to subscribers (src/replica/egress.ts, src/replica/framed.ts):
 * a client session's frames wait unsealed in per-class queues and are sealed as they go into
 * a socket write, so a critical channel's EVENTS overtake a backlog of low ones on a
 * connection the subscriber reads slowly, the MAC counter follows the order on the wire (the
 * client's real FrameOpener opens every frame), the less urgent keep their share, and the
 * connection's byte bound and the slow-subscriber cutoff hold as before.
 */
import { describe, expect, test } from "bun:test";
import { sha256 } from "@noble/hashes/sha2.js";
import { ChannelMachine } from "../../src/core/channels/index.ts";
import type { Priority, StoredBatch } from "../../src/core/channels/types.ts";
import { FrameOpener, FrameSealer, payloadDigest, SharedPayloadPrefix } from "../../src/crypto/session.ts";
import { EGRESS_CRITICAL, EGRESS_FRAME_OVERHEAD_BYTES, EGRESS_LOW, EGRESS_PASSED_MAX } from "../../src/replica/egress.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import { Subscriptions } from "../../src/replica/subscriptions.ts";
import { eventsPrefix, eventsRest, eventsTail } from "../../wire/hot.ts";
import { encodeRequestBody, encodeTypedFrame, type Frame } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";
import { concat, nextTurn, receive, sessionKeys, type Wire, wire } from "./sealed-wire.ts";
import { rng } from "./seeded-rng.ts";

const LOW_TAG = "net.links";
const CRITICAL_TAG = "sec.alerts";
const PUBLISHER = new Uint8Array(32).fill(0x50);

/** A batch of `events` events of 200 bytes, as the fan-out shares it. */
function batch(events: number, fill: number): SharedPayloadPrefix {
  const body = new Uint8Array(events * 200).fill(fill);
  return new SharedPayloadPrefix(eventsPrefix({ body, sig: new Uint8Array(64) }, fill).parts);
}

/** Sends one EVENTS frame for subscription `sub` of the batch. */
function sendEvents(w: Wire, sub: number, shared: SharedPayloadPrefix, urgency: number, tag = sub === 1 ? LOW_TAG : CRITICAL_TAG): boolean {
  return w.conn.sendShared(FrameType.EVENTS, shared, eventsRest(sub, eventsTail(tag, 0)), urgency);
}

/** Every frame the client receives on `w`, opened in order by the real opener (a MAC failure fails the test). */
function opened(w: Wire): Frame[] {
  const frames = receive(new FrameOpener(w.keys.client.receiveKey), concat(w.writes));
  expect(frames).not.toContain(null);
  return frames as Frame[];
}

/** Each EVENTS frame as [sub, seq]; other frames as their type. */
function summary(frames: readonly Frame[]): (number | [number, number])[] {
  return frames.map((f) => (f.type === FrameType.EVENTS ? [f.body.sub ?? -1, f.body.seq] : f.type));
}

describe("FrameSealer counters given back (a write the socket did not start)", () => {
  test("the next frame sealed takes a counter given back, and the client opens it; more than was sealed cannot be given back", () => {
    const keys = sessionKeys("give back");
    const sealer = new FrameSealer(keys.replica.sendKey);
    const opener = new FrameOpener(keys.client.receiveKey);
    const ping = encodeTypedFrame({ type: FrameType.PONG, body: { n: 1 } });
    const first = sealer.seal(ping);
    sealer.seal(encodeTypedFrame({ type: FrameType.PONG, body: { n: 2 } })); // never written
    sealer.giveBack(1);
    expect(sealer.sealed).toBe(1);
    const other = encodeTypedFrame({ type: FrameType.PONG, body: { n: 3 } });
    const mac = sealer.macDigest(FrameType.PONG, payloadDigest(other.subarray(5)));
    const received = receive(opener, concat([first, withMac(other, mac)]));
    expect(received.map((f) => (f?.type === FrameType.PONG ? f.body.n : null))).toEqual([1, 3]);
    expect(() => sealer.giveBack(3)).toThrow(RangeError);
  });
});

/** An encoded frame with `mac` appended and its length field grown to count it. */
function withMac(frame: Uint8Array, mac: Uint8Array): Uint8Array {
  const out = concat([frame, mac]);
  new DataView(out.buffer).setUint32(0, out.length - 4, false);
  return out;
}

describe("a FramedConn with a backlog", () => {
  test("a critical frame is written right after the frame in progress, ahead of the low backlog, and every MAC opens in order", async () => {
    let overtakes = 0;
    const w = wire(1, 16 * 1024 * 1024, (frames) => {
      overtakes += frames;
    });
    const low = Array.from({ length: 20 }, (_, i) => batch(20, i + 1));
    // The kernel takes 6,000 bytes of the turn's write: all of the first low frame (about
    // 4 KiB) and part of the second; then it is full.
    w.room = 6000;
    for (const shared of low) expect(sendEvents(w, 1, shared, EGRESS_LOW)).toBe(true);
    await nextTurn();
    expect(concat(w.writes).length).toBe(6000);
    expect(w.conn.pendingBytes).toBeGreaterThan(0);
    // A critical event arrives behind the backlog.
    expect(sendEvents(w, 2, batch(1, 99), EGRESS_CRITICAL)).toBe(true);
    await nextTurn();
    expect(concat(w.writes).length).toBe(6000); // the socket is full: nothing more went out
    w.room = Number.POSITIVE_INFINITY;
    w.conn.drain();
    expect(w.conn.pendingBytes).toBe(0);
    expect(summary(opened(w))).toEqual([
      [1, 1],
      [1, 2], // the frame in progress finishes first
      [2, 99],
      ...Array.from({ length: 18 }, (_, i) => [1, i + 3] as [number, number]),
    ]);
    expect(overtakes).toBe(1);
  });

  test("replies and PONGs (control) overtake deliveries waiting on a full socket", async () => {
    const w = wire(1);
    w.room = 100;
    for (let i = 1; i <= 5; i++) sendEvents(w, 1, batch(20, i), EGRESS_LOW);
    await nextTurn();
    expect(w.conn.send({ type: FrameType.PONG, body: { n: 7 } })).toBe(true);
    w.room = Number.POSITIVE_INFINITY;
    w.conn.drain();
    expect(summary(opened(w))).toEqual([[1, 1], FrameType.PONG, [1, 2], [1, 3], [1, 4], [1, 5]]);
  });

  test("with a steady stream of critical frames, low frames still get one frame in every EGRESS_PASSED_MAX + 1", async () => {
    const w = wire(1);
    // Frames of one size, so that a socket with room for 5 takes exactly 5 frames a write.
    const lowBatch = batch(10, 1);
    const criticalBatch = batch(10, 2);
    w.room = 0;
    for (let i = 0; i < 40; i++) sendEvents(w, 1, lowBatch, EGRESS_LOW);
    await nextTurn();
    expect(w.writes.length).toBe(0);
    const frameBytes = w.conn.pendingBytes / 40 - EGRESS_FRAME_OVERHEAD_BYTES;
    for (let round = 0; round < 36; round++) {
      // As many critical frames arrive as the socket takes: critical never runs out.
      for (let i = 0; i < 5; i++) sendEvents(w, 2, criticalBatch, EGRESS_CRITICAL, LOW_TAG);
      w.room = 5 * frameBytes;
      w.conn.drain();
    }
    const subs = opened(w).map((f) => (f.type === FrameType.EVENTS ? f.body.sub : 0));
    expect(subs.length).toBe(180);
    const lows = subs.filter((sub) => sub === 1).length;
    expect(lows).toBe(180 / (EGRESS_PASSED_MAX + 1));
    // Never more than EGRESS_PASSED_MAX critical frames in a row while low frames wait.
    let run = 0;
    for (const sub of subs) {
      run = sub === 2 ? run + 1 : 0;
      expect(run).toBeLessThanOrEqual(EGRESS_PASSED_MAX);
    }
  });

  test("at random socket room, frames of random classes (control included) all open in order, each class in the order it was sent", async () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      const random = rng(seed);
      const w = wire(seed);
      const sent: number[][] = [[], [], [], [], []];
      let n = 0;
      for (let step = 0; step < 200; step++) {
        const cls = Math.floor(random() * 5);
        n++;
        if (cls === 4) expect(w.conn.send({ type: FrameType.PONG, body: { n } })).toBe(true);
        else expect(sendEvents(w, 10 + cls, batch(1 + Math.floor(random() * 20), n % 200), cls, LOW_TAG)).toBe(true);
        sent[cls]?.push(n % 200);
        w.room = Math.floor(random() * 6000);
        if (random() < 0.3) await nextTurn();
        else w.conn.drain();
      }
      await nextTurn();
      w.room = Number.POSITIVE_INFINITY;
      w.conn.drain();
      expect(w.conn.pendingBytes).toBe(0);
      const received: number[][] = [[], [], [], [], []];
      for (const f of opened(w)) {
        if (f.type === FrameType.PONG) received[4]?.push(f.body.n % 200);
        else if (f.type === FrameType.EVENTS) received[(f.body.sub ?? 0) - 10]?.push(f.body.seq);
      }
      expect(received).toEqual(sent);
    }
  });

  test("the byte bound counts frames waiting in every class: a frame over it is refused, and the session's counter is not used", async () => {
    const w = wire(1, 20_000);
    w.room = 0;
    let accepted = 0;
    for (let i = 1; i <= 10; i++) if (sendEvents(w, 1, batch(20, i), i % 2 === 0 ? EGRESS_CRITICAL : EGRESS_LOW)) accepted++;
    await nextTurn();
    expect(accepted).toBeLessThan(10);
    expect(w.conn.pendingBytes).toBeLessThanOrEqual(20_000);
    expect(w.conn.hasRoomFor(w.conn.pendingBytes)).toBe(false);
    w.room = Number.POSITIVE_INFINITY;
    w.conn.drain();
    expect(opened(w).length).toBe(accepted);
  });
});

describe("a slow reader's connection", () => {
  test("each drain seals about what the socket takes, not the whole backlog (the write offered grows from 64 KiB)", async () => {
    const w = wire(1, 16 * 1024 * 1024);
    w.room = 0;
    let macs = 0;
    const sealer = w.conn.framing?.sealer as FrameSealer;
    const macDigest = sealer.macDigest.bind(sealer);
    sealer.macDigest = (type, digest) => {
      macs++;
      return macDigest(type, digest);
    };
    // About 4 MiB of small low frames wait on a socket that takes nothing.
    for (let i = 0; i < 18_000; i++) expect(sendEvents(w, 1, batch(1, i % 250), EGRESS_LOW)).toBe(true);
    await nextTurn();
    const waiting = w.conn.pendingBytes;
    expect(waiting).toBeGreaterThan(4_000_000);
    macs = 0;
    let frames = 0;
    for (let drain = 0; drain < 8; drain++) {
      w.room = 256 * 1024;
      w.conn.drain();
      frames = receive(new FrameOpener(w.keys.client.receiveKey), concat(w.writes)).length;
    }
    // Each drain frees 256 KiB: the first write of a drain offers 64 KiB, then 128, 256, ...
    // so what is sealed and given back per drain is at most one write's worth, not megabytes.
    expect(frames).toBeGreaterThan(4_000);
    expect(macs).toBeLessThan(frames * 2);
  });

  test("a backlog of low frames leaves a quarter of the bound to critical frames and replies", async () => {
    const w = wire(1, 100_000);
    w.room = 0;
    let low = 0;
    while (sendEvents(w, 1, batch(2, low % 250), EGRESS_LOW)) low++;
    expect(w.conn.pendingBytes).toBeLessThanOrEqual(75_000);
    expect(sendEvents(w, 2, batch(2, 7), EGRESS_CRITICAL)).toBe(true);
    expect(w.conn.send({ type: FrameType.PONG, body: { n: 1 } })).toBe(true);
    await nextTurn();
    w.room = Number.POSITIVE_INFINITY;
    w.conn.drain();
    const frames = opened(w);
    expect(frames.length).toBe(low + 2);
    expect(frames[0]?.type).toBe(FrameType.PONG);
    expect(frames[1]?.type === FrameType.EVENTS && frames[1].body.sub).toBe(2);
  });

  test("each waiting frame counts EGRESS_FRAME_OVERHEAD_BYTES besides its bytes: small frames cannot hold many times the bound", async () => {
    const w = wire(1, 64 * 1024);
    w.room = 0;
    let pongs = 0;
    while (w.conn.send({ type: FrameType.PONG, body: { n: pongs + 1 } })) pongs++;
    // A PONG is about 40 bytes on the wire: by bytes alone some 1,600 would wait.
    expect(EGRESS_FRAME_OVERHEAD_BYTES).toBe(256);
    expect(pongs).toBeLessThan((64 * 1024) / 256);
    expect(pongs).toBeGreaterThan((64 * 1024) / (256 + 64));
    await nextTurn();
    w.room = Number.POSITIVE_INFINITY;
    w.conn.drain();
    expect(opened(w).length).toBe(pongs);
    expect(w.conn.pendingBytes).toBe(0);
  });
});

describe("subscriptions on one connection, a low and a critical channel", () => {
  function setup(outboundBytesMax: number): {
    subs: Subscriptions;
    metrics: Metrics;
    w: Wire;
    publish: (tag: string, events: number) => void;
  } {
    const machine = new ChannelMachine({
      hash: (b) => sha256(b),
      config: {
        channelsMax: 4,
        eventBytesMax: 1000,
        requestBytesMax: 100_000,
        requestEventsMax: 64,
        retention: { events: 10_000, bytes: 10_000_000, ageMs: 60_000 },
      },
    });
    const priorities: [string, Priority][] = [
      [LOW_TAG, "low"],
      [CRITICAL_TAG, "critical"],
    ];
    for (const [tag, priority] of priorities) {
      expect(machine.applyAdmin({ t: "create-channel", tag, fault: "byzantine", order: "total", priority, public: true }).ok).toBe(true);
      expect(machine.applyAdmin({ t: "register", tag, role: "publisher", key: PUBLISHER }).ok).toBe(true);
    }
    const metrics = new Metrics();
    const subs = new Subscriptions(0, machine, metrics, 16);
    const w = wire(1, outboundBytesMax, (frames) => metrics.inc("egress_overtakes_total", frames));
    const seqs = new Map<string, number>();
    const publish = (tag: string, events: number): void => {
      const seq = seqs.get(tag) ?? 1;
      seqs.set(tag, seq + events);
      const list = Array.from({ length: events }, () => new Uint8Array(200).fill(seq & 0xff));
      const request = { v: 1 as const, client: PUBLISHER, seq, span: events, ts: 1_000, op: { t: "pub" as const, tag, events: list } };
      const outcome = machine.applyOrderedPublish({ body: encodeRequestBody(request), sig: new Uint8Array(64) }, request, 1_000);
      expect(outcome.stored).not.toBeNull();
      subs.publish(tag, outcome.stored as StoredBatch, true);
    };
    return { subs, metrics, w, publish };
  }

  test("a critical channel's event is delivered before the low channel's backlog; SUB_OK and SUB_END keep their place in their subscription", async () => {
    const { subs, metrics, w, publish } = setup(16 * 1024 * 1024);
    subs.subscribe(w.session, 1, LOW_TAG, undefined);
    subs.subscribe(w.session, 2, CRITICAL_TAG, undefined);
    await nextTurn();
    // The critical SUB_OK went ahead of the low one sent before it in the same turn.
    expect(metrics.get("egress_overtakes_total")).toBe(1);
    w.room = 0; // the subscriber stopped reading
    for (let i = 0; i < 10; i++) publish(LOW_TAG, 20);
    await nextTurn();
    publish(CRITICAL_TAG, 1);
    subs.unsubscribe(w.session, 1);
    w.room = Number.POSITIVE_INFINITY;
    w.conn.drain();
    const frames = summary(opened(w));
    expect(frames).toEqual([
      FrameType.SUB_OK,
      FrameType.SUB_OK,
      [2, 1],
      ...Array.from({ length: 10 }, (_, i) => [1, 1 + 20 * i] as [number, number]),
      FrameType.SUB_END,
    ]);
    expect(metrics.get("egress_overtakes_total")).toBe(2);
  });

  test("a low subscriber that falls behind the connection's bound is still ended SLOW, and what it was sent opens in order", async () => {
    const { subs, metrics, w, publish } = setup(20_000);
    subs.subscribe(w.session, 1, LOW_TAG, undefined);
    subs.subscribe(w.session, 2, CRITICAL_TAG, undefined);
    await nextTurn();
    w.room = 0;
    for (let i = 0; i < 20; i++) {
      publish(LOW_TAG, 20);
      expect(w.conn.pendingBytes).toBeLessThanOrEqual(20_000);
    }
    expect(metrics.get("subscribers_dropped_slow_total")).toBe(1);
    expect(subs.count).toBe(1);
    publish(CRITICAL_TAG, 1);
    await nextTurn();
    w.room = Number.POSITIVE_INFINITY;
    w.conn.drain();
    const frames = opened(w);
    expect(frames[2]?.type === FrameType.EVENTS && frames[2].body.sub).toBe(2);
    const last = frames.at(-1) as Frame;
    expect(last.type === FrameType.SUB_END && [last.body.sub, last.body.code]).toEqual([1, "SLOW"]);
  });
});
