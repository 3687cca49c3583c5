/**
 * A replay on an idle connection that the output budget leaves no room (src/replica/
 * subscriptions.ts): other connections of its address hold the address's share. It waits
 * without reading its history again at every turn, and once it has waited
 * REPLAY_IDLE_WAIT_MS_MAX it is ended as a slow subscriber's would be (SLOW: the client
 * subscribes again), not left waiting for good on a connection that looks healthy.
 */
import { afterEach, expect, test } from "bun:test";
import type { Socket } from "bun";
import { sha256 } from "@noble/hashes/sha2.js";
import { ChannelMachine, type ChannelsConfig } from "../../src/core/channels/index.ts";
import { toHex } from "../../src/crypto/encoding.ts";
import { sessionFraming } from "../../src/crypto/session.ts";
import { FramedConn, OutputBudget } from "../../src/replica/framed.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import {
  CLIENT_OUTBOUND_BYTES_MAX,
  CLIENT_OUTPUT_BYTES_MAX,
  CLIENT_OUTPUT_BYTES_PER_ADDRESS_MAX,
  type ClientSession,
} from "../../src/replica/server.ts";
import { REPLAY_IDLE_WAIT_MS_MAX, Subscriptions } from "../../src/replica/subscriptions.ts";
import { encodeRequestBody } from "../../wire/schemas.ts";
import { FRAME_BYTES_MAX } from "../../wire/types.ts";
import { waitFor } from "../helpers/wait.ts";
import { sessionKeys } from "./sealed-wire.ts";

const ADDRESS = "192.0.2.9";
const TAG = "big.logs";
const PUBLISHER = new Uint8Array(32).fill(0x50);
const CONFIG: ChannelsConfig = {
  channelsMax: 8,
  eventBytesMax: 1024 * 1024,
  requestBytesMax: 2 * 1024 * 1024,
  requestEventsMax: 64,
  retention: { events: 1_000_000, bytes: 1024 * 1024 * 1024, ageMs: 7 * 86_400_000 },
};

const realNow = performance.now.bind(performance);
afterEach(() => {
  performance.now = realNow;
});

/** A session whose socket takes everything at once (a reader keeping up): its connection is idle. */
function reader(budget: OutputBudget): { session: ClientSession; written: () => number } {
  let written = 0;
  const socket = {
    remoteAddress: ADDRESS,
    write: (bytes: Uint8Array) => {
      written += bytes.length;
      return bytes.length;
    },
    end() {},
    flush() {},
    pause() {},
    resume() {},
  };
  const conn = new FramedConn(socket as unknown as Socket<unknown>, FRAME_BYTES_MAX, CLIENT_OUTBOUND_BYTES_MAX, ADDRESS);
  conn.framing = sessionFraming(sessionKeys("replay-budget").replica);
  conn.coalesceWrites();
  conn.useBudget(budget);
  const key = new Uint8Array(32).fill(9);
  return { session: { conn, key, keyHex: toHex(key), id: 9, version: 4 }, written: () => written };
}

test("a replay the address's budget leaves no room waits without re-reading, then ends SLOW", async () => {
  const machine = new ChannelMachine({ hash: (b) => sha256(b), config: CONFIG });
  expect(machine.applyAdmin({ t: "create-channel", tag: TAG, fault: "byzantine", order: "total", priority: "low", public: true }).ok).toBe(
    true,
  );
  expect(machine.applyAdmin({ t: "register", tag: TAG, role: "publisher", key: PUBLISHER }).ok).toBe(true);
  for (let seq = 1; seq <= 64; seq++) {
    const request = {
      v: 1 as const,
      client: PUBLISHER,
      seq,
      span: 1,
      ts: 1_000,
      op: { t: "pub" as const, tag: TAG, events: [new Uint8Array(16 * 1024)] },
    };
    expect(
      machine.applyOrderedPublish({ body: encodeRequestBody(request), sig: new Uint8Array(64) }, request, 1_000).stored,
    ).not.toBeNull();
  }
  let reads = 0;
  const readFrom = machine.readFrom.bind(machine);
  machine.readFrom = (tag, from, max) => {
    reads++;
    return readFrom(tag, from, max);
  };
  const metrics = new Metrics();
  const subs = new Subscriptions(0, machine, metrics, 256);
  const budget = new OutputBudget(CLIENT_OUTPUT_BYTES_MAX, CLIENT_OUTPUT_BYTES_PER_ADDRESS_MAX);
  // Other connections of the address hold all of its less urgent share but 8 KiB.
  budget.change((CLIENT_OUTPUT_BYTES_PER_ADDRESS_MAX * 3) / 4 - 8 * 1024, ADDRESS);
  const client = reader(budget);
  subs.subscribe(client.session, 1, TAG, 1);
  expect(subs.replayWaiting).toBe(1);
  // Turns come and go (5 ms timers) without reading the history again: counted by them, not by time.
  const realSetTimeout = globalThis.setTimeout;
  let turns = 0;
  globalThis.setTimeout = ((run: () => void, ms?: number) => {
    turns++;
    return realSetTimeout(run, ms);
  }) as typeof setTimeout;
  try {
    const readsBefore = reads;
    await waitFor("five catch-up turns while it waits", () => turns >= 5);
    expect(reads).toBe(readsBefore);
    expect(subs.count).toBe(1);
    // Past REPLAY_IDLE_WAIT_MS_MAX of waiting: ended SLOW at the next turn.
    performance.now = () => realNow() + REPLAY_IDLE_WAIT_MS_MAX + 1_000;
    await waitFor("the waiting replay to end", () => subs.count === 0);
  } finally {
    globalThis.setTimeout = realSetTimeout;
  }
  expect(subs.replayWaiting).toBe(0);
  expect(metrics.get("subscribers_dropped_slow_total")).toBe(1);
  expect(client.written()).toBeGreaterThan(0);
  subs.shutdown();
});
