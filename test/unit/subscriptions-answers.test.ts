/**
 * How a replica answers SUBSCRIBE and UNSUBSCRIBE (src/replica/subscriptions.ts,
 * sys-channels.ts, wire/PROTOCOL.md 7): a subscription is open only once its SUB_OK went
 * out, `from` 0 on a total-order channel is TRIMMED only when retention dropped events,
 * and a SUBSCRIBE held for read-your-writes keeps its id and is cancelled by UNSUBSCRIBE.
 */
import { describe, expect, test } from "bun:test";
import { sha256 } from "@noble/hashes/sha2.js";
import { ChannelMachine, type ChannelsConfig } from "../../src/core/channels/index.ts";
import type { StoredBatch } from "../../src/core/channels/types.ts";
import { toHex } from "../../src/crypto/encoding.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { ExecutionGate } from "../../src/replica/execution-gate.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import type { ClientSession } from "../../src/replica/server.ts";
import { Subscriptions } from "../../src/replica/subscriptions.ts";
import { SysChannels } from "../../src/replica/sys-channels.ts";
import { encodeRequestBody, type Frame } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";
import { recordingSession } from "./recording-session.ts";
import { type Wire, wire } from "./sealed-wire.ts";

const CONFIG: ChannelsConfig = {
  channelsMax: 4,
  eventBytesMax: 100,
  requestBytesMax: 1000,
  requestEventsMax: 4,
  retention: { events: 4, bytes: 5000, ageMs: 60_000 },
};
const PUBLISHER = new Uint8Array(32).fill(0x50);
/** A connection bound small enough to fill with a few PONGs. */
const SMALL_BOUND_BYTES = 64 * 1024;

function machineWith(tag: string, isPublic = true): ChannelMachine {
  const machine = new ChannelMachine({ hash: (b) => sha256(b), config: CONFIG });
  expect(
    machine.applyAdmin({ t: "create-channel", tag, fault: "byzantine", order: "total", priority: "normal", public: isPublic }).ok,
  ).toBe(true);
  expect(machine.applyAdmin({ t: "register", tag, role: "publisher", key: PUBLISHER }).ok).toBe(true);
  return machine;
}

/** Publishes one event at each of seqs 1..count and fans each out. */
function publish(machine: ChannelMachine, subs: Subscriptions | null, tag: string, count: number): void {
  for (let seq = 1; seq <= count; seq++) {
    const request = {
      v: 1 as const,
      client: PUBLISHER,
      seq,
      span: 1,
      ts: 1_000,
      op: { t: "pub" as const, tag, events: [Uint8Array.of(seq)] },
    };
    const out = machine.applyOrderedPublish({ body: encodeRequestBody(request), sig: new Uint8Array(64) }, request, 1_000);
    expect(out.stored).not.toBeNull();
    subs?.publish(tag, out.stored as StoredBatch, true);
  }
}

/** Each frame as SUB_OK / its SUB_END code / EVENTS seq, with its sub. */
function summary(frames: readonly Frame[]): string[] {
  return frames.map((f) => {
    if (f.type === FrameType.SUB_OK) return `${f.body.sub} SUB_OK`;
    if (f.type === FrameType.SUB_END) return `${f.body.sub} ${f.body.code}${f.body.oldest === undefined ? "" : ` oldest=${f.body.oldest}`}`;
    if (f.type === FrameType.EVENTS) return `${f.body.sub} EVENTS ${f.body.seq}`;
    return `type ${f.type}`;
  });
}

/** A sealed connection, stalled, whose queue is full of PONGs: no subscription frame fits. */
function fullWire(id: number): Wire {
  const w = wire(id, SMALL_BOUND_BYTES);
  w.reading = false;
  let n = 0;
  while (w.conn.send({ type: FrameType.PONG, body: { n } })) n++;
  expect(n).toBeGreaterThan(0);
  return w;
}

describe("a SUBSCRIBE whose SUB_OK the connection has no room for", () => {
  test("on a channel: it is not opened, and the connection is handled as a slow subscriber's (SUB_END does not fit either: closed)", () => {
    const machine = machineWith("net.links");
    const metrics = new Metrics();
    const subs = new Subscriptions(0, machine, metrics, 256);
    const w = fullWire(1);
    subs.subscribe(w.session, 5, "net.links", undefined);
    expect(subs.count).toBe(0);
    expect(metrics.get("subscribers_dropped_slow_total")).toBe(1);
    expect(w.conn.isClosed).toBe(true);
    // Nothing is delivered for it.
    w.reading = true;
    publish(machine, subs, "net.links", 1);
    expect(w.writes).toEqual([]);
  });

  test("on a system channel: the same", () => {
    const sys = new SysChannels({ self: 0, members: () => [], key: SigningKey.generate(), health: () => ({}) });
    const w = fullWire(2);
    sys.subscribe(w.session, 5, "$sys.events");
    expect(sys.count).toBe(0);
    expect(w.conn.isClosed).toBe(true);
  });
});

describe("from 0 on a total-order channel (channel seqs start at 1)", () => {
  test("with nothing trimmed: SUB_OK, then everything from seq 1", () => {
    const machine = machineWith("net.links");
    const subs = new Subscriptions(0, machine, new Metrics(), 16);
    const frames: Frame[] = [];
    const s = recordingSession(1, frames);
    subs.subscribe(s, 1, "net.links", 0);
    publish(machine, null, "net.links", 2);
    subs.subscribe(s, 2, "net.links", 0);
    expect(summary(frames)).toEqual(["1 SUB_OK", "2 SUB_OK", "2 EVENTS 1", "2 EVENTS 2"]);
    expect(subs.count).toBe(2);
  });

  test("with events trimmed: TRIMMED, naming the oldest retained", () => {
    const machine = machineWith("net.links");
    publish(machine, null, "net.links", CONFIG.retention.events + 2);
    const oldest = (machine.channelInfo("net.links") as { oldestSeq: number }).oldestSeq;
    expect(oldest).toBeGreaterThan(1);
    const subs = new Subscriptions(0, machine, new Metrics(), 16);
    const frames: Frame[] = [];
    subs.subscribe(recordingSession(1, frames), 1, "net.links", 0);
    expect(summary(frames)).toEqual([`1 TRIMMED oldest=${oldest}`]);
    expect(subs.count).toBe(0);
  });
});

describe("a SUBSCRIBE held for read-your-writes (after)", () => {
  const SUBSCRIBER = new Uint8Array(32).fill(9);

  /** A private channel this replica has yet to register SUBSCRIBER on: it executed seq 5, the client saw seq 10. */
  function heldSetup(): {
    machine: ChannelMachine;
    subs: Subscriptions;
    gate: ExecutionGate;
    frames: Frame[];
    s: ClientSession;
    execute: () => void;
  } {
    const machine = machineWith("sec.alerts", false);
    const gate = new ExecutionGate();
    let executed = 5;
    const subs = new Subscriptions(0, machine, new Metrics(), 256, {
      executedSeq: () => executed,
      hold: (session, after, retry) => gate.hold(session.id, after, executed, Date.now(), retry),
    });
    const frames: Frame[] = [];
    const conn = recordingSession(0, frames).conn;
    const s: ClientSession = { conn, key: SUBSCRIBER, keyHex: toHex(SUBSCRIBER), id: 1, version: 4 };
    const execute = (): void => {
      expect(machine.applyAdmin({ t: "register", tag: "sec.alerts", role: "subscriber", key: SUBSCRIBER }).ok).toBe(true);
      executed = 10;
      gate.advance(10);
    };
    return { machine, subs, gate, frames, s, execute };
  }

  test("UNSUBSCRIBE cancels it and is answered UNSUBSCRIBED; once the replica executes `after`, nothing opens", () => {
    const { subs, gate, frames, s, execute } = heldSetup();
    subs.subscribe(s, 1, "sec.alerts", undefined, 10);
    expect(gate.size).toBe(1);
    expect(frames).toEqual([]);
    subs.unsubscribe(s, 1);
    expect(summary(frames)).toEqual(["1 UNSUBSCRIBED"]);
    execute();
    expect(summary(frames)).toEqual(["1 UNSUBSCRIBED"]);
    expect(subs.count).toBe(0);
  });

  test("its id is in use: a second SUBSCRIBE with it is refused BAD_REQUEST, and only the held one opens", () => {
    const { subs, frames, s, execute } = heldSetup();
    subs.subscribe(s, 1, "sec.alerts", undefined, 10);
    subs.subscribe(s, 1, "sec.alerts", undefined, 10);
    expect(summary(frames)).toEqual(["1 BAD_REQUEST"]);
    execute();
    expect(summary(frames)).toEqual(["1 BAD_REQUEST", "1 SUB_OK"]);
    expect(subs.count).toBe(1);
    // Once answered, the id is that of an open subscription, and UNSUBSCRIBE ends it.
    subs.unsubscribe(s, 1);
    expect(summary(frames).at(-1)).toBe("1 UNSUBSCRIBED");
    expect(subs.count).toBe(0);
  });

  test("a closed session's held SUBSCRIBE does not open when its retry runs", () => {
    const { subs, frames, s, execute } = heldSetup();
    subs.subscribe(s, 1, "sec.alerts", undefined, 10);
    subs.dropSession(s);
    execute();
    expect(frames).toEqual([]);
    expect(subs.count).toBe(0);
  });
});
