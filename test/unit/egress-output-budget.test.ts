/**
 * The output budget shared by a replica's client connections (src/replica/framed.ts
 * OutputBudget, server.ts CLIENT_OUTPUT_BYTES_MAX): low and normal frames fill at most
 * LESS_URGENT_BOUND_PERCENT of it, as of a connection's own bound, and the connections of
 * one remote address hold at most CLIENT_OUTPUT_BYTES_PER_ADDRESS_MAX of it, so that one
 * address's stalled readers cannot starve every other client's replies and critical
 * deliveries.
 */
import { describe, expect, test } from "bun:test";
import type { Socket } from "bun";
import { sha256 } from "@noble/hashes/sha2.js";
import { ChannelMachine, type ChannelsConfig } from "../../src/core/channels/index.ts";
import type { StoredBatch } from "../../src/core/channels/types.ts";
import { toHex } from "../../src/crypto/encoding.ts";
import { FrameOpener, SharedPayloadPrefix, sessionFraming } from "../../src/crypto/session.ts";
import { EGRESS_CRITICAL, EGRESS_FRAME_OVERHEAD_BYTES, EGRESS_NORMAL } from "../../src/replica/egress.ts";
import { FramedConn, LESS_URGENT_BOUND_PERCENT, OutputBudget } from "../../src/replica/framed.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import {
  CLIENT_CONNECTIONS_PER_ADDRESS_MAX,
  CLIENT_OUTBOUND_BYTES_MAX,
  CLIENT_OUTPUT_BYTES_MAX,
  CLIENT_OUTPUT_BYTES_PER_ADDRESS_MAX,
  type ClientSession,
} from "../../src/replica/server.ts";
import { Subscriptions } from "../../src/replica/subscriptions.ts";
import { eventsPrefix, eventsRest, eventsTail } from "../../wire/hot.ts";
import { encodeRequestBody, type Frame } from "../../wire/schemas.ts";
import { FRAME_BYTES_MAX, FrameType } from "../../wire/types.ts";
import { concat, nextTurn, receive, sessionKeys } from "./sealed-wire.ts";

const ATTACKER = "192.0.2.66";
const PUBLISHER = new Uint8Array(32).fill(0x50);

/** A sealed, coalescing client connection from `address` over a socket that takes what it is given while `reading`. */
interface Client {
  readonly session: ClientSession;
  readonly conn: FramedConn;
  readonly writes: Uint8Array[];
  readonly opener: FrameOpener;
  reading: boolean;
}

function client(id: number, address: string, budget: OutputBudget, reading = true): Client {
  const writes: Uint8Array[] = [];
  let self: Client | null = null;
  const socket = {
    remoteAddress: address,
    write: (bytes: Uint8Array) => {
      if (!(self as Client).reading) return 0;
      writes.push(Uint8Array.from(bytes));
      return bytes.length;
    },
    end() {},
    flush() {},
  };
  const conn = new FramedConn(socket as unknown as Socket<unknown>, FRAME_BYTES_MAX, CLIENT_OUTBOUND_BYTES_MAX);
  const keys = sessionKeys(`session ${id}`);
  conn.framing = sessionFraming(keys.replica);
  conn.coalesceWrites();
  conn.useBudget(budget);
  const key = new Uint8Array(32).fill(id % 256);
  self = {
    session: { conn, key, keyHex: toHex(key), id, version: 4 },
    conn,
    writes,
    opener: new FrameOpener(keys.client.receiveKey),
    reading,
  };
  return self;
}

/** What the client of `c` has received so far (every MAC must open). */
function received(c: Client): Frame[] {
  const frames = receive(c.opener, concat(c.writes.splice(0)));
  expect(frames).not.toContain(null);
  return frames as Frame[];
}

/** One EVENTS frame of a 16 KiB batch for subscription 1 of `tag`. */
function sendEvents(c: Client, urgency: number, tag: string): boolean {
  const shared = new SharedPayloadPrefix(eventsPrefix({ body: new Uint8Array(16 * 1024), sig: new Uint8Array(64) }, 1).parts);
  return c.conn.sendShared(FrameType.EVENTS, shared, eventsRest(1, eventsTail(tag, 0)), urgency);
}

const pong = (n: number): Frame => ({ type: FrameType.PONG, body: { n } });
const lessUrgentShare = (bytes: number): number => Math.floor((bytes * LESS_URGENT_BOUND_PERCENT) / 100);

describe("OutputBudget", () => {
  test(`frames below high priority fill at most ${LESS_URGENT_BOUND_PERCENT}% of it; the rest is kept for the urgent ones and control frames`, () => {
    const budget = new OutputBudget(256 * 1024);
    const bulk = client(1, "192.0.2.1", budget, false);
    while (sendEvents(bulk, EGRESS_NORMAL, "bulk.logs"));
    expect(budget.usedBytes).toBeLessThanOrEqual(lessUrgentShare(budget.bytesMax) + EGRESS_FRAME_OVERHEAD_BYTES);
    // Another client, elsewhere: its normal deliveries wait too, its critical ones and its PONGs do not.
    const other = client(2, "192.0.2.2", budget, false);
    expect(sendEvents(other, EGRESS_NORMAL, "bulk.logs")).toBe(false);
    expect(sendEvents(other, EGRESS_CRITICAL, "sec.alerts")).toBe(true);
    expect(other.conn.send(pong(1))).toBe(true);
    expect(budget.usedBytes).toBeLessThanOrEqual(budget.bytesMax);
  });

  test("the connections of one address hold at most its share, whatever their urgency; another address still has room", () => {
    const share = 64 * 1024;
    const budget = new OutputBudget(1024 * 1024, share);
    const first = client(1, ATTACKER, budget, false);
    const second = client(2, ATTACKER, budget, false);
    while (sendEvents(first, EGRESS_NORMAL, "bulk.logs"));
    expect(budget.usedBy(ATTACKER)).toBeLessThanOrEqual(lessUrgentShare(share) + EGRESS_FRAME_OVERHEAD_BYTES);
    // Its control frames take the rest of its share, on any of its connections, and no more.
    let pongs = 0;
    while (first.conn.send(pong(pongs)) || second.conn.send(pong(pongs))) pongs++;
    expect(pongs).toBeGreaterThan(0);
    expect(budget.usedBy(ATTACKER)).toBeLessThanOrEqual(share + EGRESS_FRAME_OVERHEAD_BYTES);
    expect(second.conn.describeNoRoom()).toEndWith(`, ${budget.usedBy(ATTACKER)} of ${share} for its address`);
    const other = client(3, "192.0.2.3", budget, false);
    expect(sendEvents(other, EGRESS_NORMAL, "bulk.logs")).toBe(true);
    expect(other.conn.send(pong(1))).toBe(true);
    // What an address's closed connections held goes back to it.
    first.conn.release();
    second.conn.release();
    expect(budget.usedBy(ATTACKER)).toBe(0);
    expect(budget.usedBytes).toBe(other.conn.pendingBytes);
  });

  test("the replica's defaults: an address's share is a sixteenth of the budget", () => {
    expect(CLIENT_OUTPUT_BYTES_PER_ADDRESS_MAX * 16).toBe(CLIENT_OUTPUT_BYTES_MAX);
    // One address may open more connections than its share holds at their bound.
    expect(CLIENT_CONNECTIONS_PER_ADDRESS_MAX * CLIENT_OUTBOUND_BYTES_MAX).toBeGreaterThan(CLIENT_OUTPUT_BYTES_PER_ADDRESS_MAX);
  });
});

const CONFIG: ChannelsConfig = {
  channelsMax: 8,
  eventBytesMax: 64 * 1024,
  requestBytesMax: 1024 * 1024,
  requestEventsMax: 64,
  retention: { events: 1_000_000, bytes: 64 * 1024 * 1024, ageMs: 7 * 86_400_000 },
};

describe("one address's stalled subscribers against the replica's budget", () => {
  test("90 connections of one address resuming a low channel from seq 1 and never reading do not starve another address's critical subscriber, SUBSCRIBE or PONG", async () => {
    const machine = new ChannelMachine({ hash: (b) => sha256(b), config: CONFIG });
    for (const [tag, priority] of [
      ["bulk.logs", "low"],
      ["sec.alerts", "critical"],
    ] as const) {
      expect(machine.applyAdmin({ t: "create-channel", tag, fault: "byzantine", order: "total", priority, public: true }).ok).toBe(true);
      expect(machine.applyAdmin({ t: "register", tag, role: "publisher", key: PUBLISHER }).ok).toBe(true);
    }
    const subs = new Subscriptions(0, machine, new Metrics(), 256);
    const next = new Map<string, number>();
    const publish = (tag: string, events: number, size: number): void => {
      const seq = next.get(tag) ?? 1;
      next.set(tag, seq + events);
      const list = Array.from({ length: events }, () => new Uint8Array(size).fill(1));
      const request = { v: 1 as const, client: PUBLISHER, seq, span: events, ts: 1_000, op: { t: "pub" as const, tag, events: list } };
      const out = machine.applyOrderedPublish({ body: encodeRequestBody(request), sig: new Uint8Array(64) }, request, 1_000);
      expect(out.stored).not.toBeNull();
      subs.publish(tag, out.stored as StoredBatch, true);
    };
    // 8 MiB of history on the low channel: more than a connection's bound takes.
    for (let i = 0; i < 128; i++) publish("bulk.logs", 16, 4096);

    // The replica's own bounds, as server.ts sets them.
    const budget = new OutputBudget(CLIENT_OUTPUT_BYTES_MAX, CLIENT_OUTPUT_BYTES_PER_ADDRESS_MAX);
    const victim = client(1, "192.0.2.1", budget);
    subs.subscribe(victim.session, 1, "sec.alerts", undefined);
    await nextTurn();
    expect(received(victim).map((f) => f.type)).toEqual([FrameType.SUB_OK]);

    const attackers: Client[] = [];
    for (let i = 0; i < 90; i++) {
      const attacker = client(100 + i, ATTACKER, budget, false);
      subs.subscribe(attacker.session, 1, "bulk.logs", 1);
      attackers.push(attacker);
    }
    // ...topped up with PINGs, answered PONG (control frames).
    let n = 0;
    for (const attacker of attackers) while (attacker.conn.send(pong(n))) n++;
    await nextTurn();
    expect(budget.usedBy(ATTACKER)).toBeLessThanOrEqual(CLIENT_OUTPUT_BYTES_PER_ADDRESS_MAX + EGRESS_FRAME_OVERHEAD_BYTES);

    // A client elsewhere subscribes now, and is answered.
    const late = client(2, "192.0.2.2", budget);
    subs.subscribe(late.session, 1, "sec.alerts", undefined);
    await nextTurn();
    expect(received(late).map((f) => f.type)).toEqual([FrameType.SUB_OK]);

    // A critical alert reaches both, and a PONG goes out.
    publish("sec.alerts", 1, 100);
    expect(late.conn.send(pong(1))).toBe(true);
    await nextTurn();
    expect(victim.conn.isClosed).toBe(false);
    expect(received(victim).map((f) => f.type)).toEqual([FrameType.EVENTS]);
    // Control frames go first (egress.ts).
    expect(received(late).map((f) => f.type)).toEqual([FrameType.PONG, FrameType.EVENTS]);
  });
});
