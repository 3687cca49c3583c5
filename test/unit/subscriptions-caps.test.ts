/**
 * The caps on channel subscriptions besides the per-connection one (src/replica/
 * subscriptions.ts): one remote address's connections together hold at most
 * SUBSCRIPTIONS_PER_ADDRESS_MAX, the replica at most SUBSCRIPTIONS_MAX; a SUBSCRIBE over
 * either is answered SUB_END LIMIT saying which, and a subscription that ends frees its place.
 */
import { describe, expect, test } from "bun:test";
import { sha256 } from "@noble/hashes/sha2.js";
import { ChannelMachine } from "../../src/core/channels/index.ts";
import { toHex } from "../../src/crypto/encoding.ts";
import type { FramedConn } from "../../src/replica/framed.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import { CLIENT_CONNECTIONS_MAX, CLIENT_CONNECTIONS_PER_ADDRESS_MAX, type ClientSession } from "../../src/replica/server.ts";
import { SUBSCRIPTIONS_MAX, SUBSCRIPTIONS_PER_ADDRESS_MAX, Subscriptions } from "../../src/replica/subscriptions.ts";
import type { Frame } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";

const TAG = "net.links";
/** connection_subscriptions_max's default (config/cluster.ts). */
const PER_CONNECTION = 256;

function machine(): ChannelMachine {
  const m = new ChannelMachine({
    hash: (b) => sha256(b),
    config: {
      channelsMax: 4,
      eventBytesMax: 100,
      requestBytesMax: 1000,
      requestEventsMax: 4,
      retention: { events: 10, bytes: 5000, ageMs: 60_000 },
    },
  });
  expect(m.applyAdmin({ t: "create-channel", tag: TAG, fault: "crash", order: "none", priority: "normal", public: true }).ok).toBe(true);
  return m;
}

let nextId = 1;
/** A session from `address` whose connection takes every frame and keeps the last one. */
function session(address: string): ClientSession & { last: () => Frame | undefined } {
  const id = nextId++;
  let last: Frame | undefined;
  const conn = {
    remote: address,
    pendingBytes: 0,
    hasRoomFor: () => true,
    send: (frame: Frame) => {
      last = frame;
      return true;
    },
    close() {},
  } as unknown as FramedConn;
  const key = new Uint8Array(32);
  new DataView(key.buffer).setUint32(0, id);
  return { conn, key, keyHex: toHex(key), id, version: 4, last: () => last };
}

/** Opens `count` subscriptions on `s` (ids from 1), each answered SUB_OK. */
function fill(subs: Subscriptions, s: ReturnType<typeof session>, count: number): void {
  for (let sub = 1; sub <= count; sub++) {
    subs.subscribe(s, sub, TAG, undefined);
    expect(s.last()?.type).toBe(FrameType.SUB_OK);
  }
}

/** The answer to one more SUBSCRIBE on `s`: SUB_OK, or the SUB_END's code and reason. */
function answer(subs: Subscriptions, s: ReturnType<typeof session>, sub: number): string {
  subs.subscribe(s, sub, TAG, undefined);
  const frame = s.last();
  if (frame?.type === FrameType.SUB_OK) return "SUB_OK";
  if (frame?.type === FrameType.SUB_END) return `${frame.body.code} ${frame.body.reason}`;
  return `frame type ${frame?.type}`;
}

describe("subscriptions per remote address", () => {
  test("the connections of one address hold at most SUBSCRIPTIONS_PER_ADDRESS_MAX together: past it LIMIT, naming it; another address is served; an ended one frees a place", () => {
    // 16 a connection over the connections one address may open.
    expect(SUBSCRIPTIONS_PER_ADDRESS_MAX).toBe(16 * CLIENT_CONNECTIONS_PER_ADDRESS_MAX);
    const subs = new Subscriptions(0, machine(), new Metrics(), PER_CONNECTION);
    const full = SUBSCRIPTIONS_PER_ADDRESS_MAX / PER_CONNECTION;
    const sessions = Array.from({ length: full + 1 }, () => session("192.0.2.1"));
    for (const s of sessions.slice(0, full)) fill(subs, s, PER_CONNECTION);
    expect(subs.count).toBe(SUBSCRIPTIONS_PER_ADDRESS_MAX);
    const extra = sessions[full] as ReturnType<typeof session>;
    expect(answer(subs, extra, 1)).toBe(`LIMIT at most ${SUBSCRIPTIONS_PER_ADDRESS_MAX} subscriptions per remote address (192.0.2.1)`);
    // The same connection that is full answers its own cap first.
    expect(answer(subs, sessions[0] as ReturnType<typeof session>, PER_CONNECTION + 1)).toBe(
      `LIMIT at most ${PER_CONNECTION} subscriptions per connection`,
    );
    expect(answer(subs, session("192.0.2.2"), 1)).toBe("SUB_OK");
    // One unsubscribed, one connection closed: their places are free again.
    subs.unsubscribe(sessions[0] as ReturnType<typeof session>, 1);
    expect(answer(subs, extra, 1)).toBe("SUB_OK");
    expect(answer(subs, extra, 2)).toMatch(/^LIMIT .* per remote address/);
    subs.dropSession(sessions[1] as ReturnType<typeof session>);
    expect(answer(subs, extra, 2)).toBe("SUB_OK");
  });

  test("a cluster that lets one connection hold more than that (connection_subscriptions_max) still may", () => {
    const perConnection = SUBSCRIPTIONS_PER_ADDRESS_MAX + 100;
    const subs = new Subscriptions(0, machine(), new Metrics(), perConnection);
    const relay = session("192.0.2.1");
    fill(subs, relay, perConnection);
    expect(answer(subs, relay, perConnection + 1)).toBe(`LIMIT at most ${perConnection} subscriptions per connection`);
    expect(answer(subs, session("192.0.2.1"), 1)).toBe(`LIMIT at most ${perConnection} subscriptions per remote address (192.0.2.1)`);
  });
});

describe("subscriptions at one replica", () => {
  test("at most SUBSCRIPTIONS_MAX in all, whatever the addresses: past it LIMIT, naming it; an ended one frees a place", () => {
    // 16 a connection over the connections the replica serves.
    expect(SUBSCRIPTIONS_MAX).toBe(16 * CLIENT_CONNECTIONS_MAX);
    const subs = new Subscriptions(0, machine(), new Metrics(), PER_CONNECTION);
    const addresses = SUBSCRIPTIONS_MAX / SUBSCRIPTIONS_PER_ADDRESS_MAX;
    const first = session("198.51.100.0");
    for (let a = 0; a < addresses; a++) {
      for (let c = 0; c < SUBSCRIPTIONS_PER_ADDRESS_MAX / PER_CONNECTION; c++) {
        fill(subs, a === 0 && c === 0 ? first : session(`198.51.100.${a}`), PER_CONNECTION);
      }
    }
    expect(subs.count).toBe(SUBSCRIPTIONS_MAX);
    const newcomer = session("203.0.113.9");
    expect(answer(subs, newcomer, 1)).toBe(`LIMIT at most ${SUBSCRIPTIONS_MAX} subscriptions at this replica`);
    subs.unsubscribe(first, 7);
    expect(answer(subs, newcomer, 1)).toBe("SUB_OK");
    expect(subs.count).toBe(SUBSCRIPTIONS_MAX);
  });
});
