/**
 * A subscription from a past seq catches up a bounded step at a time (src/replica/
 * subscriptions.ts): one SUBSCRIBE never replays more than HISTORY_BATCHES_PER_READ batches
 * or HISTORY_BYTES_PER_READ bytes in one synchronous run, the rest follows in later turns,
 * and what is published meanwhile comes after the replay, once, in order. A subscription
 * that ends while it catches up (UNSUBSCRIBE, its connection closed, too slow, its history
 * trimmed) stops there and leaves no turn scheduled.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { sha256 } from "@noble/hashes/sha2.js";
import { ChannelMachine, type ChannelsConfig } from "../../src/core/channels/index.ts";
import type { StoredBatch } from "../../src/core/channels/types.ts";
import { toHex } from "../../src/crypto/encoding.ts";
import type { SharedPayloadPrefix } from "../../src/crypto/session.ts";
import type { FramedConn } from "../../src/replica/framed.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import type { ClientSession } from "../../src/replica/server.ts";
import {
  HISTORY_BATCHES_PER_READ,
  HISTORY_BYTES_PER_READ,
  REPLAY_HEADROOM_BYTES,
  REPLAY_WAIT_MS,
  Subscriptions,
} from "../../src/replica/subscriptions.ts";
import { decodeFrameBody, encodeRequestBody, type Frame } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";
import { waitFor } from "../helpers/wait.ts";

const TAG = "net.links";
const PUBLISHER = new Uint8Array(32).fill(0x50);
/** Retained history: more batches than several replay steps send. */
const HISTORY_BATCHES = 4 * HISTORY_BATCHES_PER_READ - 24;
/** The fake connection's bound on bytes not yet written (a client connection's, server.ts). */
const CONNECTION_BOUND_BYTES = 8 * 1024 * 1024;
/** Live batches published while a subscription catches up. */
const LIVE_BATCHES = 5;
/** Catch-up turns a busy-channel test runs at most: about 100 are needed (8 x 3,000 batches, 256 a turn). */
const TURNS_MAX = 2_000;

function config(retainedEvents: number): ChannelsConfig {
  return {
    channelsMax: 4,
    eventBytesMax: 64 * 1024,
    requestBytesMax: 1024 * 1024,
    requestEventsMax: 64,
    retention: { events: retainedEvents, bytes: 256 * 1024 * 1024, ageMs: 7 * 86_400_000 },
  };
}

interface Channel {
  readonly machine: ChannelMachine;
  readonly subs: Subscriptions;
  readonly metrics: Metrics;
  /** Stores one batch of `events` events of `size` bytes and fans it out, as the replica does. */
  publish(events?: number, size?: number): StoredBatch;
}

function channel(retainedEvents = 1_000_000): Channel {
  const machine = new ChannelMachine({ hash: (b) => sha256(b), config: config(retainedEvents) });
  expect(machine.applyAdmin({ t: "create-channel", tag: TAG, fault: "byzantine", order: "total", priority: "low", public: true }).ok).toBe(
    true,
  );
  expect(machine.applyAdmin({ t: "register", tag: TAG, role: "publisher", key: PUBLISHER }).ok).toBe(true);
  const metrics = new Metrics();
  const subs = new Subscriptions(0, machine, metrics, 256);
  let seq = 1;
  const publish = (events = 1, size = 8): StoredBatch => {
    const list = Array.from({ length: events }, () => new Uint8Array(size).fill(seq & 0xff));
    const request = { v: 1 as const, client: PUBLISHER, seq, span: events, ts: 1_000, op: { t: "pub" as const, tag: TAG, events: list } };
    seq++;
    const out = machine.applyOrderedPublish({ body: encodeRequestBody(request), sig: new Uint8Array(64) }, request, 1_000);
    expect(out.stored).not.toBeNull();
    subs.publish(TAG, out.stored as StoredBatch, true);
    return out.stored as StoredBatch;
  };
  return { machine, subs, metrics, publish };
}

interface Client {
  readonly session: ClientSession;
  /** Every frame sent, decoded as the client sees it. */
  readonly frames: Frame[];
  /** EVENTS frames sent in each synchronous run of the replica's code (a run ends at the next microtask checkpoint). */
  readonly bursts: number[];
  /** Frames the connection still takes; past them every send fails, as on a full queue. */
  room: number;
  /** Bytes the connection holds not yet written (FramedConn.pendingBytes, against an 8 MiB bound): the subscriber's reading, simulated. */
  pending: number;
  closed: boolean;
}

function client(id: number): Client {
  const key = new Uint8Array(32).fill(id);
  let burst = 0;
  let counting = false;
  const self: Client = {
    session: null as unknown as ClientSession,
    frames: [],
    bursts: [],
    room: Number.POSITIVE_INFINITY,
    pending: 0,
    closed: false,
  };
  const take = (frame: Frame): boolean => {
    if (self.room <= 0) return false;
    self.room--;
    self.frames.push(frame);
    if (frame.type !== FrameType.EVENTS) return true;
    burst++;
    if (!counting) {
      counting = true;
      queueMicrotask(() => {
        self.bursts.push(burst);
        burst = 0;
        counting = false;
      });
    }
    return true;
  };
  const conn = {
    remote: "192.0.2.1",
    get pendingBytes() {
      return self.pending;
    },
    hasRoomFor: (bytes: number) => self.pending + bytes <= CONNECTION_BOUND_BYTES,
    send: (frame: Frame) => take(frame),
    sendShared: (type: number, shared: SharedPayloadPrefix, rest: Uint8Array) => {
      const decoded = decodeFrameBody(type, Uint8Array.from(Buffer.concat([...shared.parts, rest])));
      if (!decoded.ok) throw new Error(decoded.error.reason);
      return take(decoded.frame);
    },
    close() {
      self.closed = true;
    },
  } as unknown as FramedConn;
  (self as { session: ClientSession }).session = { conn, key, keyHex: toHex(key), id, version: 4 };
  return self;
}

/** The seq of each EVENTS frame, in the order sent. */
const eventSeqs = (c: Client): number[] => c.frames.flatMap((f) => (f.type === FrameType.EVENTS ? [f.body.seq] : []));
const ends = (c: Client): string[] => c.frames.flatMap((f) => (f.type === FrameType.SUB_END ? [f.body.code] : []));
const seqsFrom = (first: number, last: number): number[] => Array.from({ length: last - first + 1 }, (_, i) => first + i);

/**
 * Counts the immediates scheduled and not yet run or cleared while installed (the replica
 * schedules its catch-up turns with setImmediate).
 */
function watchImmediates(): { readonly pending: Set<unknown>; restore(): void } {
  const realSet = globalThis.setImmediate;
  const realClear = globalThis.clearImmediate;
  const pending = new Set<unknown>();
  globalThis.setImmediate = ((run: (...args: unknown[]) => void, ...args: unknown[]) => {
    const handle = realSet(() => {
      pending.delete(handle);
      run(...args);
    });
    pending.add(handle);
    return handle;
  }) as typeof setImmediate;
  globalThis.clearImmediate = ((handle: ReturnType<typeof setImmediate>) => {
    pending.delete(handle);
    realClear(handle);
  }) as typeof clearImmediate;
  const restore = (): void => {
    globalThis.setImmediate = realSet;
    globalThis.clearImmediate = realClear;
  };
  restores.push(restore);
  return { pending, restore };
}
const restores: (() => void)[] = [];
afterEach(() => {
  for (const restore of restores.splice(0)) restore();
});

describe("a SUBSCRIBE from seq 1 over a long retained history", () => {
  test("no synchronous run sends more than HISTORY_BATCHES_PER_READ EVENTS; the rest follow in later turns, then what was published meanwhile, each once, in order", async () => {
    const { subs, publish } = channel();
    for (let i = 0; i < HISTORY_BATCHES; i++) publish();
    const resuming = client(1);
    const live = client(2);
    subs.subscribe(live.session, 1, TAG, undefined);
    subs.subscribe(resuming.session, 1, TAG, 1);
    // The SUBSCRIBE itself sent one step, and the subscription is catching up.
    expect(resuming.frames[0]?.type).toBe(FrameType.SUB_OK);
    expect(eventSeqs(resuming)).toEqual(seqsFrom(1, HISTORY_BATCHES_PER_READ));
    expect(subs.replaying).toBe(1);
    // Published while it catches up: the live subscriber has them at once, the resuming one after its history.
    for (let i = 0; i < LIVE_BATCHES; i++) publish();
    expect(eventSeqs(live)).toEqual(seqsFrom(HISTORY_BATCHES + 1, HISTORY_BATCHES + LIVE_BATCHES));

    const total = HISTORY_BATCHES + LIVE_BATCHES;
    await waitFor(
      "the resuming subscription to catch up",
      () => subs.replaying === 0,
      undefined,
      () => `${eventSeqs(resuming).length} events`,
    );
    expect(eventSeqs(resuming)).toEqual(seqsFrom(1, total));
    expect(Math.max(...resuming.bursts)).toBeLessThanOrEqual(HISTORY_BATCHES_PER_READ);
    expect(resuming.bursts.length).toBeGreaterThanOrEqual(Math.ceil(total / HISTORY_BATCHES_PER_READ));
    // Live now: the next batch reaches it in the publish itself, as it does the live subscriber.
    publish();
    expect(eventSeqs(resuming)).toEqual(seqsFrom(1, total + 1));
    expect(eventSeqs(live)).toEqual(seqsFrom(HISTORY_BATCHES + 1, total + 1));
    expect(ends(resuming)).toEqual([]);
    expect(subs.count).toBe(2);
  });

  test("on a busy channel, many resuming at once each catch up and go live, none TRIMMED for waiting its turn", async () => {
    // Retention of 3,000 one-event batches, all retained; 8 subscribers resume from its
    // oldest while 40 batches a turn are published: more than a shared step gives each.
    const { subs, publish } = channel(3_000);
    for (let i = 0; i < 3_000; i++) publish();
    const clients = Array.from({ length: 8 }, (_, i) => client(i + 1));
    for (const c of clients) subs.subscribe(c.session, 1, TAG, 1);
    let published = 3_000;
    // One catch-up turn per 40 published (each turn is one event-loop turn of the replica's):
    // counted turns, not time; far more than catching up needs.
    for (let turn = 0; turn < TURNS_MAX && subs.replaying > 0; turn++) {
      for (let i = 0; i < 40; i++) publish();
      published += 40;
      await new Promise((resolve) => setImmediate(resolve));
    }
    expect(subs.replaying).toBe(0);
    for (const c of clients) {
      expect(ends(c)).toEqual([]);
      expect(eventSeqs(c)).toEqual(seqsFrom(1, published));
    }
  });

  test("of large batches, a step stops at HISTORY_BYTES_PER_READ (and sends at least one)", async () => {
    const { subs, publish } = channel();
    // 4 events of 60 KiB: about 240 KiB a batch, so a step takes a handful, not 256.
    const batches = 40;
    let batchBytes = 0;
    for (let i = 0; i < batches; i++) {
      const stored = publish(4, 60 * 1024);
      batchBytes = stored.body.length + stored.sig.length;
    }
    const perStep = Math.ceil(HISTORY_BYTES_PER_READ / batchBytes);
    expect(perStep).toBeLessThan(batches);
    const resuming = client(1);
    subs.subscribe(resuming.session, 1, TAG, 1);
    expect(eventSeqs(resuming).length).toBeGreaterThanOrEqual(1);
    expect(eventSeqs(resuming).length).toBeLessThanOrEqual(perStep);
    await waitFor("the subscription to catch up", () => subs.replaying === 0);
    expect(eventSeqs(resuming)).toEqual(Array.from({ length: batches }, (_, i) => 1 + 4 * i));
    expect(Math.max(...resuming.bursts)).toBeLessThanOrEqual(perStep);
  });
});

describe("a subscription that ends while it catches up", () => {
  test("UNSUBSCRIBE: answered UNSUBSCRIBED, then nothing more for it, while another's catch-up goes on to the end", async () => {
    const { subs, publish } = channel();
    for (let i = 0; i < HISTORY_BATCHES; i++) publish();
    const quitter = client(1);
    const other = client(2);
    subs.subscribe(quitter.session, 1, TAG, 1);
    subs.subscribe(other.session, 1, TAG, 1);
    const sent = eventSeqs(quitter).length;
    expect(sent).toBe(HISTORY_BATCHES_PER_READ);
    expect(subs.replaying).toBe(2);
    subs.unsubscribe(quitter.session, 1);
    expect(ends(quitter)).toEqual(["UNSUBSCRIBED"]);
    expect(subs.replaying).toBe(1);
    // The other's catch-up takes turns in the same line the quitter's would have: once it is done, the quitter's would have had its turns.
    publish();
    await waitFor("the other subscription to catch up", () => subs.replaying === 0);
    expect(eventSeqs(other)).toEqual(seqsFrom(1, HISTORY_BATCHES + 1));
    expect(eventSeqs(quitter).length).toBe(sent);
    expect(quitter.frames.at(-1)?.type).toBe(FrameType.SUB_END);
    expect(subs.count).toBe(1);
  });

  test("its connection closes: its catch-up stops and no turn is left scheduled", () => {
    const { subs, publish } = channel();
    for (let i = 0; i < HISTORY_BATCHES; i++) publish();
    const gone = client(1);
    const immediates = watchImmediates();
    subs.subscribe(gone.session, 1, TAG, 1);
    expect(eventSeqs(gone)).toEqual(seqsFrom(1, HISTORY_BATCHES_PER_READ));
    expect(immediates.pending.size).toBe(1);
    expect(subs.replaying).toBe(1);
    subs.dropSession(gone.session);
    expect(immediates.pending.size).toBe(0);
    immediates.restore();
    expect(subs.replaying).toBe(0);
    expect(subs.count).toBe(0);
  });

  test("a frame that does not fit: ended SLOW as a live subscriber is (here SUB_END does not fit either: the connection is closed), and no turn is left scheduled", async () => {
    const { subs, metrics, publish } = channel();
    for (let i = 0; i < HISTORY_BATCHES; i++) publish();
    const slow = client(1);
    // SUB_OK, the first step and part of the second.
    slow.room = 1 + HISTORY_BATCHES_PER_READ + 10;
    subs.subscribe(slow.session, 1, TAG, 1);
    expect(slow.closed).toBe(false);
    expect(subs.replaying).toBe(1);
    const immediates = watchImmediates();
    await waitFor("the slow subscription to be ended", () => slow.closed);
    expect(metrics.get("subscribers_dropped_slow_total")).toBe(1);
    expect(eventSeqs(slow)).toEqual(seqsFrom(1, HISTORY_BATCHES_PER_READ + 10));
    expect(subs.replaying).toBe(0);
    expect(subs.count).toBe(0);
    expect(immediates.pending.size).toBe(0);
  });

  test("retention drops the seq it is to send next: ended TRIMMED, naming the oldest retained", async () => {
    const retained = 2 * HISTORY_BATCHES_PER_READ;
    const { machine, subs, publish } = channel(retained);
    for (let i = 0; i < retained; i++) publish();
    const behind = client(1);
    subs.subscribe(behind.session, 1, TAG, 1);
    expect(eventSeqs(behind)).toEqual(seqsFrom(1, HISTORY_BATCHES_PER_READ));
    expect(subs.replaying).toBe(1);
    // Before its next turn, as many more are published: retention drops what it has yet to send.
    for (let i = 0; i < retained; i++) publish();
    const oldest = (machine.channelInfo(TAG) as { oldestSeq: number }).oldestSeq;
    expect(oldest).toBeGreaterThan(HISTORY_BATCHES_PER_READ + 1);
    await waitFor("the subscription to be ended", () => ends(behind).length > 0);
    const end = behind.frames.at(-1);
    expect(end?.type === FrameType.SUB_END ? [end.body.code, end.body.oldest] : end?.type).toEqual(["TRIMMED", oldest]);
    expect(eventSeqs(behind)).toEqual(seqsFrom(1, HISTORY_BATCHES_PER_READ));
    expect(subs.count).toBe(0);
    expect(subs.replaying).toBe(0);
  });

  test("a replay waits while its connection has less than REPLAY_HEADROOM_BYTES of room, without spinning, and goes on from there once the subscriber has read", async () => {
    const { subs, publish } = channel();
    for (let i = 0; i < HISTORY_BATCHES; i++) publish();
    const reader = client(1);
    subs.subscribe(reader.session, 1, TAG, 1);
    expect(eventSeqs(reader)).toEqual(seqsFrom(1, HISTORY_BATCHES_PER_READ));
    // The subscriber stops reading: what was sent waits on its connection.
    reader.pending = CONNECTION_BOUND_BYTES - REPLAY_HEADROOM_BYTES;
    const immediates = watchImmediates();
    await waitFor("the replay to wait for its subscriber", () => subs.replayWaiting === 1);
    const sent = eventSeqs(reader).length;
    // Turns go on while it waits, a timer of REPLAY_WAIT_MS each and no immediate: counted
    // as they are scheduled, three of them sent nothing more.
    const realSetTimeout = globalThis.setTimeout;
    let timedTurns = 0;
    globalThis.setTimeout = ((run: () => void, ms?: number) => {
      if (ms === REPLAY_WAIT_MS) timedTurns++;
      return realSetTimeout(run, ms);
    }) as typeof setTimeout;
    restores.push(() => {
      globalThis.setTimeout = realSetTimeout;
    });
    await waitFor("three catch-up turns while it waits", () => timedTurns >= 3);
    expect(eventSeqs(reader).length).toBe(sent);
    expect(immediates.pending.size).toBe(0);
    expect(subs.replaying).toBe(1);
    expect(ends(reader)).toEqual([]);
    // Published meanwhile: it comes after the history, once.
    for (let i = 0; i < LIVE_BATCHES; i++) publish();
    immediates.restore();
    reader.pending = 0;
    await waitFor("the replay to finish", () => subs.replaying === 0);
    expect(eventSeqs(reader)).toEqual(seqsFrom(1, HISTORY_BATCHES + LIVE_BATCHES));
    expect(ends(reader)).toEqual([]);
  });
});
