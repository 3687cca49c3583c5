/**
 * Live subscriptions on a replica (src/replica/subscriptions.ts) when the channel state
 * jumps to an installed snapshot: nothing may go on streaming from a point the state no
 * longer continues from.
 */
import { describe, expect, test } from "bun:test";
import { sha256 } from "@noble/hashes/sha2.js";
import { ChannelMachine, type ChannelsConfig } from "../../src/core/channels/index.ts";
import { toHex } from "../../src/crypto/encoding.ts";
import type { FramedConn } from "../../src/replica/framed.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import type { ClientSession } from "../../src/replica/server.ts";
import { Subscriptions } from "../../src/replica/subscriptions.ts";
import type { Frame } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";

const CONFIG: ChannelsConfig = {
  channelsMax: 4,
  eventBytesMax: 100,
  requestBytesMax: 1000,
  requestEventsMax: 4,
  retention: { events: 10, bytes: 5000, ageMs: 1000 },
};

function session(id: number, frames: Frame[]): ClientSession {
  const key = new Uint8Array(32).fill(id);
  const conn = {
    send: (frame: Frame) => {
      frames.push(frame);
      return true;
    },
    close() {},
  } as unknown as FramedConn;
  return { conn, key, keyHex: toHex(key), id };
}

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
    const s = session(7, frames);
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
