// Framing: `u32 BE length | u8 type | payload`, cut incrementally by FrameDecoder. Fed
// whole, one byte at a time and at random split points (the nats.js parser tests' way).
import { rng } from "./seeded-rng.ts";
import { describe, expect, test } from "bun:test";
import { type DecodeResult, FRAME_BYTES_MAX, FRAME_HEADER_BYTES, FrameDecoder, encodeFrame } from "../../wire/index.ts";

const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");
const unhex = (h: string): Uint8Array => new Uint8Array(Buffer.from(h, "hex"));

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Frames as [type, hex payload] pairs, so results compare structurally. */
function summarise(results: DecodeResult[]): Array<[number, string] | string> {
  return results.map((r) => (r.ok ? [r.type, hex(r.payload)] : `error:${r.error.kind}`));
}

function feed(decoder: FrameDecoder, stream: Uint8Array, cuts: number[]): DecodeResult[] {
  const results: DecodeResult[] = [];
  let at = 0;
  for (const cut of [...cuts, stream.length]) {
    results.push(...decoder.push(stream.subarray(at, cut)));
    at = cut;
  }
  return results;
}

const SAMPLE: Array<[number, Uint8Array]> = [
  [0x01, unhex("a0")],
  [0x10, new Uint8Array(0)],
  [0x23, Uint8Array.from({ length: 300 }, (_, i) => i & 0xff)],
  [0x40, Uint8Array.from({ length: 70_000 }, (_, i) => (i * 7) & 0xff)],
  [0x05, unhex("a1616e07")],
];
const SAMPLE_STREAM = concat(SAMPLE.map(([t, p]) => encodeFrame(t, p)));
const SAMPLE_EXPECTED = SAMPLE.map(([t, p]): [number, string] => [t, hex(p)]);

describe("encodeFrame", () => {
  test("writes length (type + payload), type byte, payload", () => {
    expect(hex(encodeFrame(0x05, unhex("a1616e07")))).toBe("0000000505a1616e07");
    expect(hex(encodeFrame(0x10, new Uint8Array(0)))).toBe("0000000110");
  });

  test("refuses a type that is not a byte and a frame over the maximum", () => {
    expect(() => encodeFrame(256, new Uint8Array(0))).toThrow(RangeError);
    expect(() => encodeFrame(-1, new Uint8Array(0))).toThrow(RangeError);
    expect(() => encodeFrame(1.5, new Uint8Array(0))).toThrow(RangeError);
    expect(() => encodeFrame(1, new Uint8Array(FRAME_BYTES_MAX))).toThrow(RangeError);
    expect(encodeFrame(1, new Uint8Array(FRAME_BYTES_MAX - 1)).length).toBe(FRAME_BYTES_MAX + 4);
    expect(() => encodeFrame(1, new Uint8Array(10), 10)).toThrow(RangeError);
  });
});

describe("FrameDecoder: feeding", () => {
  test("a whole stream in one push", () => {
    const d = new FrameDecoder();
    expect(summarise(d.push(SAMPLE_STREAM))).toEqual(SAMPLE_EXPECTED);
    expect(d.bufferedBytes).toBe(0);
    expect(d.finish()).toBeNull();
  });

  test("one byte at a time", () => {
    const d = new FrameDecoder();
    const cuts = Array.from({ length: SAMPLE_STREAM.length - 1 }, (_, i) => i + 1);
    expect(summarise(feed(d, SAMPLE_STREAM, cuts))).toEqual(SAMPLE_EXPECTED);
    expect(d.finish()).toBeNull();
  });

  test("at random split points (200 seeded splittings)", () => {
    const next = rng(42);
    for (let round = 0; round < 200; round++) {
      const cuts = new Set<number>();
      const n = Math.floor(next() * 12);
      for (let i = 0; i < n; i++) cuts.add(Math.floor(next() * SAMPLE_STREAM.length));
      const d = new FrameDecoder();
      const sorted = [...cuts].sort((a, b) => a - b);
      expect(summarise(feed(d, SAMPLE_STREAM, sorted))).toEqual(SAMPLE_EXPECTED);
      expect(d.finish()).toBeNull();
    }
  });

  test("empty pushes are harmless", () => {
    const d = new FrameDecoder();
    expect(d.push(new Uint8Array(0))).toEqual([]);
    expect(summarise(d.push(SAMPLE_STREAM))).toEqual(SAMPLE_EXPECTED);
  });

  test("a frame inside one chunk is a zero-copy view; copyPayloads copies", () => {
    const frame = encodeFrame(0x23, unhex("0102"));
    const [view] = new FrameDecoder().push(frame);
    expect(view?.ok && view.payload.buffer).toBe(frame.buffer);
    const [copy] = new FrameDecoder({ copyPayloads: true }).push(frame);
    expect(copy?.ok && copy.payload.buffer).not.toBe(frame.buffer);
    expect(copy?.ok && hex(copy.payload)).toBe("0102");
  });

  test("a frame split across chunks is assembled once and not aliased to the chunks", () => {
    const frame = encodeFrame(0x23, unhex("01020304"));
    const d = new FrameDecoder();
    const first = frame.slice(0, 6);
    const second = frame.slice(6);
    expect(d.push(first)).toEqual([]);
    expect(d.bufferedBytes).toBe(6);
    const [r] = d.push(second);
    first.fill(0);
    second.fill(0);
    expect(r?.ok && hex(r.payload)).toBe("01020304");
  });
});

describe("FrameDecoder: bad input", () => {
  test("a length above the maximum poisons the stream, before any payload arrives", () => {
    const d = new FrameDecoder({ frameBytesMax: 100 });
    const ok = encodeFrame(1, new Uint8Array(99));
    const rs = d.push(concat([ok, unhex("0000006501")]));
    expect(summarise(rs)).toEqual([[1, hex(new Uint8Array(99))], "error:oversized"]);
    const last = rs[1];
    expect(last?.ok === false && last.error.fatal).toBe(true);
    expect(d.poisoned).toBe(true);
    expect(d.bufferedBytes).toBe(0);
    const after = d.push(ok);
    expect(summarise(after)).toEqual(["error:poisoned"]);
    expect(d.finish()?.kind).toBe("poisoned");
  });

  test("an oversized length split across pushes is caught as soon as the length is whole", () => {
    const d = new FrameDecoder();
    expect(d.push(unhex("ff"))).toEqual([]);
    expect(d.push(unhex("ff"))).toEqual([]);
    expect(summarise(d.push(unhex("ffff00")))).toEqual(["error:oversized"]);
    expect(d.bufferedBytes).toBe(0);
  });

  test("a zero length is fatal (no type byte)", () => {
    const d = new FrameDecoder();
    expect(summarise(d.push(unhex("0000000001")))).toEqual(["error:empty-frame"]);
    expect(d.poisoned).toBe(true);
  });

  test("the stream ending inside a frame is reported by finish()", () => {
    for (const cut of [1, 3, 4, 5, 8]) {
      const d = new FrameDecoder();
      expect(d.push(encodeFrame(5, unhex("a1616e07")).subarray(0, cut))).toEqual([]);
      const e = d.finish();
      expect(e?.kind).toBe("truncated");
      expect(e?.fatal).toBe(false);
      expect(d.bufferedBytes).toBe(0);
    }
  });

  test("a frame of exactly the maximum passes; one byte more does not", () => {
    const max = 1000;
    const d = new FrameDecoder({ frameBytesMax: max });
    const [r] = d.push(encodeFrame(7, new Uint8Array(max - 1), max));
    expect(r?.ok && r.payload.length).toBe(max - 1);
    const e = new FrameDecoder({ frameBytesMax: max });
    expect(summarise(e.push(encodeFrame(7, new Uint8Array(max))))).toEqual(["error:oversized"]);
  });

  test("buffering stays within one frame however the stream is split", () => {
    const max = 4096;
    const d = new FrameDecoder({ frameBytesMax: max });
    const stream = concat(Array.from({ length: 20 }, (_, i) => encodeFrame(9, new Uint8Array(max - 1 - i), max)));
    let frames = 0;
    for (let at = 0; at < stream.length; at += 777) {
      frames += d.push(stream.subarray(at, at + 777)).length;
      expect(d.bufferedBytes).toBeLessThanOrEqual(max + 4);
    }
    expect(frames).toBe(20);
  });

  test("invalid decoder maxima are refused", () => {
    expect(() => new FrameDecoder({ frameBytesMax: 0 })).toThrow(RangeError);
    expect(() => new FrameDecoder({ frameBytesMax: 2 ** 32 })).toThrow(RangeError);
    expect(() => new FrameDecoder({ frameBytesMax: 1.5 })).toThrow(RangeError);
  });

  test("the header is 5 bytes", () => {
    expect(FRAME_HEADER_BYTES).toBe(5);
  });
});

describe("FrameDecoder: input types", () => {
  test("a Buffer chunk yields plain Uint8Array payloads viewing the same memory", () => {
    const buf = Buffer.from(encodeFrame(0x23, unhex("0102")));
    const [r] = new FrameDecoder().push(buf);
    expect(r?.ok && r.payload.constructor).toBe(Uint8Array);
    expect(r?.ok && r.payload.buffer).toBe(buf.buffer);
  });
});

describe("FrameDecoder: memory follows the bytes that arrived", () => {
  test("a declared length alone does not make the decoder reserve the whole frame", () => {
    const decoder = new FrameDecoder({ frameBytesMax: 4 * 1024 * 1024 });
    const header = new Uint8Array([0x00, 0x40, 0x00, 0x00]); // 4 MiB declared
    expect(decoder.push(header)).toEqual([]);
    expect(decoder.reservedBytes).toBeLessThanOrEqual(16 * 1024);
  });

  test("a large frame in small pieces grows at most to twice what arrived, and decodes whole", () => {
    const payload = new Uint8Array(1_000_000).map((_, i) => i % 251);
    const frame = encodeFrame(0x01, payload);
    const decoder = new FrameDecoder();
    const results = [];
    for (let at = 0; at < frame.length; at += 4_096) {
      results.push(...decoder.push(frame.subarray(at, at + 4_096)));
      const arrived = Math.min(at + 4_096, frame.length) - 4;
      if (decoder.reservedBytes > 0) expect(decoder.reservedBytes).toBeLessThanOrEqual(Math.max(16 * 1024, 2 * arrived));
    }
    expect(results.length).toBe(1);
    const only = results[0];
    expect(only?.ok && only.payload).toEqual(payload);
  });
});
