/**
 * Live subscriptions on a replica (src/replica/subscriptions.ts): when the channel state
 * jumps to an installed snapshot nothing may go on streaming from a point the state no
 * longer continues from, and a private channel's events reach only its registered
 * subscribers.
 */
import { describe, expect, test } from "bun:test";
import { sha256 } from "@noble/hashes/sha2.js";
import { ChannelMachine, type ChannelsConfig } from "../../src/core/channels/index.ts";
import type { StoredBatch } from "../../src/core/channels/types.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import { Subscriptions } from "../../src/replica/subscriptions.ts";
import { encodeRequestBody, type Frame } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";
import { recordingSession } from "./recording-session.ts";

const CONFIG: ChannelsConfig = {
  channelsMax: 4,
  eventBytesMax: 100,
  requestBytesMax: 1000,
  requestEventsMax: 4,
  retention: { events: 10, bytes: 5000, ageMs: 1000 },
};

describe("after a snapshot install", () => {
  test("every live subscription is ended as SLOW (resubscribe from the next wanted seq) and gets nothing more", () => {
    const machine = new ChannelMachine({ hash: (b) => sha256(b), config: CONFIG });
    for (const [tag, order] of [
      ["sec.alerts", "total"],
      ["net.links", "none"],
    ] as const) {
      expect(machine.applyAdmin({ t: "create-channel", tag, fault: "byzantine", order, priority: "normal", public: true }).ok).toBe(true);
    }
    const subs = new Subscriptions(2, machine, new Metrics(), 16);
    const frames: Frame[] = [];
    const s = recordingSession(7, frames);
    subs.subscribe(s, 1, "sec.alerts", undefined);
    subs.subscribe(s, 2, "net.links", undefined);
    expect(subs.count).toBe(2);
    frames.length = 0;
    subs.stateReplaced();
    expect(subs.count).toBe(0);
    expect(frames.map((f) => (f.type === FrameType.SUB_END ? [f.body.sub, f.body.code] : f.type))).toEqual([
      [1, "SLOW"],
      [2, "SLOW"],
    ]);
    frames.length = 0;
    subs.publish(
      "sec.alerts",
      { firstSeq: 1, count: 1, tsMs: 1, publisher: new Uint8Array(32), pubSeq: 1, body: new Uint8Array(1), sig: new Uint8Array(64) },
      true,
    );
    expect(frames).toEqual([]);
  });
});

describe("private channels (README, Security model)", () => {
  const PUBLISHER = new Uint8Array(32).fill(0x50);
  const REGISTERED = 7;
  const STRANGER = 8;

  /** A private channel of each order, with a registered publisher and one registered subscriber key. */
  function privateChannels(): ChannelMachine {
    const machine = new ChannelMachine({ hash: (b) => sha256(b), config: CONFIG });
    for (const [tag, order] of [
      ["sec.alerts", "total"],
      ["net.links", "none"],
    ] as const) {
      expect(machine.applyAdmin({ t: "create-channel", tag, fault: "crash", order, priority: "normal", public: false }).ok).toBe(true);
      expect(machine.applyAdmin({ t: "register", tag, role: "publisher", key: PUBLISHER }).ok).toBe(true);
      const subscriber = new Uint8Array(32).fill(REGISTERED);
      expect(machine.applyAdmin({ t: "register", tag, role: "subscriber", key: subscriber }).ok).toBe(true);
    }
    return machine;
  }

  let nextSeq = 1;
  function publishOrdered(machine: ChannelMachine, subs: Subscriptions, tag: string): void {
    const request = {
      v: 1 as const,
      client: PUBLISHER,
      seq: nextSeq,
      span: 1,
      ts: 1_000,
      op: { t: "pub" as const, tag, events: [Uint8Array.of(nextSeq)] },
    };
    nextSeq++;
    const outcome = machine.applyOrderedPublish({ body: encodeRequestBody(request), sig: new Uint8Array(64) }, request, 1_000);
    expect(outcome.stored).not.toBeNull();
    subs.publish(tag, outcome.stored as StoredBatch, true);
  }

  const events = (frames: Frame[]) => frames.filter((f) => f.type === FrameType.EVENTS);
  const ends = (frames: Frame[]) => frames.flatMap((f) => (f.type === FrameType.SUB_END ? [[f.body.sub, f.body.code]] : []));

  test("an unregistered key is refused at SUBSCRIBE, live and from history, and gets no event; the registered subscriber gets them", () => {
    const machine = privateChannels();
    const subs = new Subscriptions(0, machine, new Metrics(), 16);
    publishOrdered(machine, subs, "sec.alerts");
    const registeredFrames: Frame[] = [];
    const strangerFrames: Frame[] = [];
    const registered = recordingSession(REGISTERED, registeredFrames);
    const stranger = recordingSession(STRANGER, strangerFrames);
    subs.subscribe(stranger, 1, "sec.alerts", undefined);
    subs.subscribe(stranger, 2, "sec.alerts", 1);
    subs.subscribe(stranger, 3, "net.links", undefined);
    subs.subscribe(stranger, 4, "net.links", 0);
    subs.subscribe(registered, 1, "sec.alerts", 1);
    subs.subscribe(registered, 2, "net.links", undefined);
    expect(ends(strangerFrames)).toEqual([
      [1, "UNAUTHORIZED"],
      [2, "UNAUTHORIZED"],
      [3, "UNAUTHORIZED"],
      [4, "UNAUTHORIZED"],
    ]);
    publishOrdered(machine, subs, "sec.alerts");
    subs.publish(
      "net.links",
      { firstSeq: 1, count: 1, tsMs: 1, publisher: PUBLISHER, pubSeq: 1, body: new Uint8Array(1), sig: new Uint8Array(64) },
      false,
    );
    expect(events(strangerFrames)).toEqual([]);
    expect(subs.count).toBe(2);
    // History (seq 1) and live (seq 2) on the total-order channel, live on the unordered one.
    expect(events(registeredFrames).map((f) => (f.type === FrameType.EVENTS ? [f.body.tag, f.body.seq] : null))).toEqual([
      ["sec.alerts", 1],
      ["sec.alerts", 2],
      ["net.links", 1],
    ]);
  });

  test("a channel destroyed and created again without that subscriber ends the subscription; nothing more reaches it", () => {
    const machine = privateChannels();
    const subs = new Subscriptions(0, machine, new Metrics(), 16);
    const frames: Frame[] = [];
    const registered = recordingSession(REGISTERED, frames);
    subs.subscribe(registered, 1, "sec.alerts", undefined);
    expect(machine.applyAdmin({ t: "destroy-channel", tag: "sec.alerts" }).ok).toBe(true);
    subs.channelDestroyed("sec.alerts");
    const create = { t: "create-channel", tag: "sec.alerts", fault: "crash", order: "total", priority: "normal", public: false } as const;
    expect(machine.applyAdmin(create).ok).toBe(true);
    expect(machine.applyAdmin({ t: "register", tag: "sec.alerts", role: "publisher", key: PUBLISHER }).ok).toBe(true);
    publishOrdered(machine, subs, "sec.alerts");
    expect(ends(frames)).toEqual([[1, "DESTROYED"]]);
    expect(events(frames)).toEqual([]);
    subs.subscribe(registered, 2, "sec.alerts", 1);
    expect(ends(frames)).toEqual([
      [1, "DESTROYED"],
      [2, "UNAUTHORIZED"],
    ]);
    expect(events(frames)).toEqual([]);
  });
});

describe("from on an unordered channel", () => {
  test("from 0 (every retained event) and no from (live) are taken; any other from is refused BAD_REQUEST saying why, since each replica numbers its own store", () => {
    const machine = new ChannelMachine({ hash: (b) => sha256(b), config: CONFIG });
    expect(
      machine.applyAdmin({ t: "create-channel", tag: "sec.ids", fault: "byzantine", order: "none", priority: "normal", public: true }).ok,
    ).toBe(true);
    const subs = new Subscriptions(0, machine, new Metrics(), 16);
    const frames: Frame[] = [];
    const s = recordingSession(7, frames);
    subs.subscribe(s, 1, "sec.ids", undefined);
    subs.subscribe(s, 2, "sec.ids", 0);
    subs.subscribe(s, 3, "sec.ids", 20);
    expect(subs.count).toBe(2);
    const ended = frames.filter((f) => f.type === FrameType.SUB_END);
    expect(ended.map((f) => (f.type === FrameType.SUB_END ? [f.body.sub, f.body.code] : null))).toEqual([[3, "BAD_REQUEST"]]);
    const reason = ended[0]?.type === FrameType.SUB_END ? ended[0].body.reason : "";
    expect(reason).toBe(
      "from 20 on sec.ids, an unordered channel (byzantine/none): there only from 0 (every retained event) or no from (live) has a meaning, since each replica numbers its own store",
    );
  });
});
