/**
 * The client scheduler (client-frames.ts) in front of a real peer inbox: a flood of client
 * frames, from one connection or many, does not delay the peers' messages by more than
 * one bounded turn of client work, and a connection over its bound stops being read.
 */
import { describe, expect, test } from "bun:test";
import {
  CLIENT_QUEUE_BYTES_MAX,
  CLIENT_TURN_FRAMES_MAX,
  ClientFrames,
  type ScheduledConn,
  URGENT_CONNECTION_MS,
  URGENT_TURN_FRAMES_MAX,
} from "../../src/replica/client-frames.ts";
import { PeerInbox } from "../../src/replica/peer-inbox.ts";

/** A client connection as the scheduler sees it: whether the owner paused it, and the scheduler's pause. */
class Conn implements ScheduledConn {
  isClosed = false;
  readPaused = false;
  backpressured = false;
  backpressureChanges = 0;
  private held: (() => void)[] = [];
  constructor(readonly id: number) {}
  holdUntilResumed(work: () => void): void {
    this.held.push(work);
  }
  setBackpressure(on: boolean): void {
    this.backpressured = on;
    this.backpressureChanges++;
  }
  resume(): void {
    this.readPaused = false;
    for (const work of this.held.splice(0)) work();
  }
}

/** Both queues with turns the test runs by hand, and a log of what was worked on, in order. */
function harness(limits: { queueBytesMax?: number; totalBytesMax?: number } = {}) {
  const worked: string[] = [];
  let clientTurn: (() => void) | null = null;
  let peerTurn: (() => void) | null = null;
  const inbox = new PeerInbox({
    limits: {
      bytesPerSecondMax: 1_000_000_000,
      messagesPerSecondMax: 1_000_000,
      muteMs: 1_000,
      muteMsMax: 1_000,
      floodMuteMs: 1_000,
      queueBytesMax: 1_000_000,
    },
    process: (from, msg) => worked.push(`peer ${from} vote ${msg[0]}`),
    pause: () => {},
    resume: () => {},
    onMuted: () => {},
    onDropped: () => {},
    schedule: (run) => {
      peerTurn = run;
    },
  });
  const frames = new ClientFrames<Conn, number>({
    ...limits,
    process: (conn, frame) => worked.push(`client ${conn.id} frame ${frame}`),
    peersFirst: () => inbox.drainPending(),
    schedule: (run) => {
      clientTurn = run;
    },
  });
  return {
    inbox,
    frames,
    worked,
    /** The client scheduler's next turn (what the event loop would run next). */
    clientTurn(): void {
      const run = clientTurn;
      clientTurn = null;
      run?.();
    },
    get clientTurnScheduled(): boolean {
      return clientTurn !== null;
    },
    get peerTurnScheduled(): boolean {
      return peerTurn !== null;
    },
  };
}

const FRAME_BYTES = 1_000;
const range = (n: number, from = 0): number[] => Array.from({ length: n }, (_, i) => from + i);

describe("client frames scheduler", () => {
  test("a peer's vote that arrives during a client flood is processed before the next turn of client frames, which is bounded", () => {
    const h = harness();
    const conns = range(50).map((i) => new Conn(i));
    for (const conn of conns) h.frames.push(conn, range(2_000), () => FRAME_BYTES);
    // Every flooding connection is over its bound: its reads are paused.
    for (const conn of conns) expect(conn.backpressured).toBe(true);
    expect(h.frames.queuedFrames).toBe(100_000);

    let turns = 0;
    for (let vote = 1; vote <= 20; vote++) {
      h.inbox.push(vote % 3, new Uint8Array([vote]), new Uint8Array(32));
      expect(h.peerTurnScheduled).toBe(true);
      const before = h.worked.length;
      h.clientTurn();
      turns++;
      const turn = h.worked.slice(before);
      // The vote comes first in the turn, then at most one turn's worth of client frames.
      expect(turn[0]).toBe(`peer ${vote % 3} vote ${vote}`);
      expect(turn.slice(1).every((line) => line.startsWith("client "))).toBe(true);
      expect(turn.length - 1).toBeGreaterThan(0);
      expect(turn.length - 1).toBeLessThanOrEqual(CLIENT_TURN_FRAMES_MAX);
      expect(h.clientTurnScheduled).toBe(true);
    }
    expect(turns).toBe(20);
    // The client work is still there, queued, and goes on in later turns.
    expect(h.frames.queuedFrames).toBeGreaterThan(90_000);
  });

  test("connections take turns: a flood on one connection does not hold back another's frame", () => {
    const h = harness();
    const flooder = new Conn(1);
    const quiet = new Conn(2);
    h.frames.push(flooder, range(10_000), () => 10);
    h.frames.push(quiet, [7], () => 10);
    h.clientTurn();
    expect(h.worked.indexOf("client 2 frame 7")).toBeLessThanOrEqual(1);
    // Order within a connection is kept.
    const flooded = h.worked.filter((line) => line.startsWith("client 1 "));
    expect(flooded).toEqual(range(flooded.length).map((i) => `client 1 frame ${i}`));
  });

  test("a connection over its bound is paused, and resumed once its queue is down to half", () => {
    const h = harness();
    const conn = new Conn(1);
    const perFrame = 10_000;
    const count = Math.ceil((CLIENT_QUEUE_BYTES_MAX * 1.5) / perFrame);
    h.frames.push(conn, range(count), () => perFrame - 64);
    expect(conn.backpressured).toBe(true);
    let turns = 0;
    while (conn.backpressured && turns < 100) {
      h.clientTurn();
      turns++;
    }
    expect(conn.backpressured).toBe(false);
    expect(h.frames.queuedBytes(conn)).toBeLessThanOrEqual(CLIENT_QUEUE_BYTES_MAX / 2);
    expect(conn.backpressureChanges).toBe(2);
  });

  test("all connections together are bounded: past the total a connection holding more than its share is paused, one holding little is not", () => {
    // Shares of 10,000 bytes (a sixteenth of the connection bound), 100,000 in all.
    const h = harness({ queueBytesMax: 160_000, totalBytesMax: 100_000 });
    const conns = range(20).map((i) => new Conn(i));
    // 11,000 bytes each, every one under its own bound: from the tenth on the total is over 100,000.
    for (const conn of conns) h.frames.push(conn, range(11), () => 1_000 - 64);
    expect(conns.filter((conn) => conn.backpressured).map((conn) => conn.id)).toEqual(range(11, 9));
    const small = new Conn(99);
    h.frames.push(small, [1], () => 1_000 - 64);
    expect(small.backpressured).toBe(false);
    let turns = 0;
    while (conns.some((conn) => conn.backpressured) && turns < 100) {
      h.clientTurn();
      turns++;
    }
    expect(conns.every((conn) => !conn.backpressured)).toBe(true);
    expect(h.frames.queuedBytesTotal).toBeLessThanOrEqual(50_000);
  });

  test("a connection its owner paused is not worked on until resumed, then goes on in order", () => {
    const h = harness();
    const conn = new Conn(1);
    conn.readPaused = true;
    h.frames.push(conn, [1, 2, 3], () => 10);
    h.clientTurn();
    expect(h.worked).toEqual([]);
    expect(h.frames.queuedFrames).toBe(3);
    expect(h.clientTurnScheduled).toBe(false);
    conn.resume();
    expect(h.clientTurnScheduled).toBe(true);
    h.clientTurn();
    expect(h.worked).toEqual(["client 1 frame 1", "client 1 frame 2", "client 1 frame 3"]);
  });
});

describe("urgent connections first", () => {
  test("a frame of a connection that sent an urgent request goes before a rotation over busy connections", () => {
    const h = harness();
    const busy = range(50).map((i) => new Conn(i));
    for (const conn of busy) h.frames.push(conn, range(100), () => 10);
    const alert = new Conn(99);
    h.frames.markUrgent(alert);
    h.frames.push(alert, [7], () => 10);
    h.clientTurn();
    expect(h.worked[0]).toBe("client 99 frame 7");
    // Unmarked, the same frame waits for its place in the rotation.
    const plain = harness();
    for (const conn of range(50).map((i) => new Conn(i))) plain.frames.push(conn, range(100), () => 10);
    plain.frames.push(new Conn(99), [7], () => 10);
    plain.clientTurn();
    expect(plain.worked.indexOf("client 99 frame 7")).toBe(50);
  });

  test("an urgent connection takes at most URGENT_TURN_FRAMES_MAX frames first; the others still get the rest of the turn", () => {
    const h = harness();
    const other = new Conn(1);
    h.frames.push(other, range(10), () => 10);
    const urgent = new Conn(2);
    h.frames.markUrgent(urgent);
    h.frames.push(urgent, range(1_000), () => 10);
    h.clientTurn();
    const firstOther = h.worked.indexOf("client 1 frame 0");
    expect(firstOther).toBe(URGENT_TURN_FRAMES_MAX);
    expect(h.worked.slice(0, URGENT_TURN_FRAMES_MAX).every((line) => line.startsWith("client 2 "))).toBe(true);
    // Every frame of the other connection was worked on in this turn, in rotation with the urgent one.
    expect(range(10).every((i) => h.worked.includes(`client 1 frame ${i}`))).toBe(true);
  });

  test("urgency lapses URGENT_CONNECTION_MS after the last urgent request", () => {
    const h = harness();
    for (const conn of range(10).map((i) => new Conn(i))) h.frames.push(conn, range(10), () => 10);
    const lapsed = new Conn(99);
    h.frames.markUrgent(lapsed, performance.now() - URGENT_CONNECTION_MS - 1);
    h.frames.push(lapsed, [7], () => 10);
    h.clientTurn();
    expect(h.worked.indexOf("client 99 frame 7")).toBe(10);
  });
});
