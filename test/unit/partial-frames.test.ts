// The count of client frames still arriving (src/replica/partial-frames.ts): bounds in all
// and per address cut the frame arriving slowest, a paused connection is neither chosen
// nor judged slow, and a new frame starts its own clock.
import { expect, test } from "bun:test";
import { PartialFrames, type PartialFrameState } from "../../src/replica/partial-frames.ts";

const LIMITS = { bytesMax: 1_000, perAddressBytesMax: 600, graceMs: 10_000, bytesPerSecondMin: 10 };

const frame = (reservedBytes: number, partialBytes: number, partialsBegun = 1): PartialFrameState => ({
  reservedBytes,
  partialBytes,
  partialsBegun,
});

test("past the bound in all, the slowest frame of any address goes, however little its address holds", () => {
  const frames = new PartialFrames<string>(() => false, { ...LIMITS, perAddressBytesMax: 1_000 });
  // Senders spread thin: one address each, a frame each, coming slowly (1 byte so far).
  expect(frames.update("thin1", "10.0.0.1", frame(300, 1), 0)).toEqual([]);
  expect(frames.update("thin2", "10.0.0.2", frame(300, 1), 0)).toEqual([]);
  // A fast sender's frame takes the count over the bound: a thin one goes, not the fast one.
  const cut = frames.update("fast", "10.0.0.3", frame(500, 500), 1_000);
  expect(cut.map((c) => c.conn)).toEqual(["thin1"]);
  expect(cut[0]?.reason).toContain("this replica holds 1100 bytes of client frames still arriving, over 1000");
  expect(frames.heldBy("10.0.0.3")).toBe(500);
});

test("an IPv6 /64 counts as one address for the per-address bound", () => {
  const frames = new PartialFrames<string>(() => false, LIMITS);
  frames.update("a", "2001:db8:1:2::1", frame(300, 300), 0);
  const cut = frames.update("b", "2001:db8:1:2::ffff", frame(400, 400), 1_000);
  expect(cut.map((c) => c.conn)).toEqual(["a"]);
  expect(frames.heldBy("2001:db8:1:2::/64")).toBe(400);
});

test("past an address's bound, only that address's frames are candidates", () => {
  const frames = new PartialFrames<string>(() => false, LIMITS);
  frames.update("other", "10.0.0.9", frame(300, 1), 0);
  frames.update("a1", "10.0.0.1", frame(300, 300), 0);
  const cut = frames.update("a2", "10.0.0.1", frame(400, 400), 1_000);
  // "other" is far slower, but its address is within its share.
  expect(cut.map((c) => c.conn)).toEqual(["a1"]);
  expect(frames.heldBy("10.0.0.1")).toBe(400);
});

test("a connection whose reads are paused is not chosen, and its slowness window starts again", () => {
  const paused = new Set<string>(["a"]);
  const frames = new PartialFrames<string>((conn) => paused.has(conn), LIMITS);
  frames.update("a", "10.0.0.1", frame(500, 1), 0);
  // b pushes the address over: a is slower but paused, so b itself is cut.
  expect(frames.update("b", "10.0.0.1", frame(200, 200), 1_000).map((c) => c.conn)).toEqual(["b"]);
  // Paused at the sweep: not judged, though it got 1 byte in 20 s.
  expect(frames.slow(20_000)).toEqual([]);
  paused.clear();
  // Its window began at the last sweep (20 s): judged only a whole window later.
  expect(frames.slow(29_000)).toEqual([]);
  const slow = frames.slow(30_000);
  expect(slow.map((c) => c.conn)).toEqual(["a"]);
  expect(slow[0]?.reason).toContain("a frame arriving at 0 bytes/s over 10000 ms");
  expect(frames.heldBytes).toBe(0);
});

test("a new frame on the same connection starts its own clock; a finished one leaves the count", () => {
  const frames = new PartialFrames<string>(() => false, LIMITS);
  frames.update("a", "10.0.0.1", frame(300, 50, 1), 0);
  // 10 s later a second frame (partialsBegun moved on) with 300 bytes: its window starts now.
  frames.update("a", "10.0.0.1", frame(300, 300, 2), 10_000);
  expect(frames.heldBytes).toBe(300);
  expect(frames.slow(19_000)).toEqual([]);
  // The window of the second frame: 300 bytes over 10 s is 30 bytes/s, above the minimum.
  expect(frames.slow(20_000)).toEqual([]);
  frames.update("a", "10.0.0.1", frame(0, 0, 2), 21_000);
  expect(frames.heldBytes).toBe(0);
  frames.update("b", "10.0.0.1", frame(100, 100), 21_000);
  frames.remove("b");
  expect(frames.heldBy("10.0.0.1")).toBe(0);
});

test("below a quarter of the bound in all, no frame is judged slow: it may come as slowly as its link allows", () => {
  const frames = new PartialFrames<string>(() => false, LIMITS);
  frames.update("a", "10.0.0.1", frame(250, 1), 0);
  expect(frames.slow(60_000)).toEqual([]);
  // A second frame takes the count past a quarter: from the next whole window on, a is judged.
  frames.update("b", "10.0.0.2", frame(100, 100), 60_000);
  expect(frames.slow(69_000)).toEqual([]);
  expect(frames.slow(70_000).map((c) => c.conn)).toEqual(["a"]);
});
