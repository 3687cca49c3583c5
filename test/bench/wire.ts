/**
 * Wire codec micro-benchmark: a program that prints figures, never a pass/fail test.
 *   bun test/bench/wire.ts [seconds-per-case]
 * Cases: framing alone, framing + frame schema, framing + schema + request body (the
 * replica's ingress path), and encoding of delivery frames (the fan-out path).
 */
import { encodeCanonical } from "../../wire/canonical.ts";
import { FrameDecoder } from "../../wire/frame.ts";
import { type Frame, type Request, decodeFrameBody, decodeRequestBody, encodeRequestBody, encodeTypedFrame } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";

const SECONDS_DEFAULT = 1;
const CHUNK_BYTES = 64 * 1024;
const FRAMES_IN_STREAM = 2000;

interface Shape {
  name: string;
  eventsPerRequest: number;
  eventBytes: number;
}

const SHAPES: Shape[] = [
  { name: "1 event x 100 B", eventsPerRequest: 1, eventBytes: 100 },
  { name: "64 events x 100 B", eventsPerRequest: 64, eventBytes: 100 },
  { name: "16 events x 1 KiB", eventsPerRequest: 16, eventBytes: 1024 },
  { name: "64 events x 4 KiB", eventsPerRequest: 64, eventBytes: 4096 },
];

function request(shape: Shape, seq: number): Request {
  const events = Array.from({ length: shape.eventsPerRequest }, (_, i) => new Uint8Array(shape.eventBytes).fill(i & 0xff));
  return {
    v: 1,
    client: new Uint8Array(32).fill(7),
    seq,
    span: events.length,
    ts: 1_767_225_600_000,
    op: { t: "pub", tag: "net.links", events },
  };
}

function eventsFrame(shape: Shape, seq: number): Frame {
  return {
    type: FrameType.EVENTS,
    body: {
      sub: 1,
      tag: "net.links",
      seq,
      req: { body: encodeRequestBody(request(shape, seq)), sig: new Uint8Array(64).fill(9) },
      replica: 0,
    },
  };
}

function stream(shape: Shape): Uint8Array {
  const frames = Array.from({ length: FRAMES_IN_STREAM }, (_, i) => encodeTypedFrame(eventsFrame(shape, 1 + i * shape.eventsPerRequest)));
  return new Uint8Array(Buffer.concat(frames));
}

/** Runs `pass` until `seconds` elapse; returns passes per second. */
function rate(seconds: number, pass: () => void): number {
  pass(); // warm up the JIT before timing
  let passes = 0;
  const start = performance.now();
  let elapsedMs = 0;
  while (elapsedMs < seconds * 1000) {
    pass();
    passes++;
    elapsedMs = performance.now() - start;
  }
  return (passes * 1000) / elapsedMs;
}

function pushInChunks(bytes: Uint8Array, onFrame: (type: number, payload: Uint8Array) => void): void {
  const decoder = new FrameDecoder();
  for (let at = 0; at < bytes.length; at += CHUNK_BYTES) {
    for (const r of decoder.push(bytes.subarray(at, at + CHUNK_BYTES))) {
      if (!r.ok) throw new Error(r.error.reason);
      onFrame(r.type, r.payload);
    }
  }
}

function report(label: string, passesPerSecond: number, framesPerPass: number, eventsPerFrame: number, bytesPerPass: number): void {
  const frames = passesPerSecond * framesPerPass;
  const fmt = (n: number) => Math.round(n).toLocaleString("en-US");
  console.log(
    `  ${label.padEnd(34)} ${fmt(frames).padStart(12)} frames/s ${fmt(frames * eventsPerFrame).padStart(13)} events/s ${(
      (passesPerSecond * bytesPerPass) /
      1e6
    )
      .toFixed(0)
      .padStart(6)} MB/s`,
  );
}

function main(): void {
  const seconds = Number(process.argv[2] ?? SECONDS_DEFAULT);
  console.log(`fitb wire codec, ${seconds}s per case, ${CHUNK_BYTES / 1024} KiB chunks`);
  for (const shape of SHAPES) {
    const bytes = stream(shape);
    console.log(`${shape.name} (${(bytes.length / FRAMES_IN_STREAM).toFixed(0)} B per EVENTS frame)`);
    const n = FRAMES_IN_STREAM;
    const e = shape.eventsPerRequest;
    report(
      "framing only",
      rate(seconds, () => pushInChunks(bytes, () => {})),
      n,
      e,
      bytes.length,
    );
    report(
      "framing + frame schema",
      rate(seconds, () => pushInChunks(bytes, (t, p) => checkOk(decodeFrameBody(t, p).ok))),
      n,
      e,
      bytes.length,
    );
    report(
      "framing + schema + request body",
      rate(seconds, () => pushInChunks(bytes, decodeFull)),
      n,
      e,
      bytes.length,
    );
    const frame = eventsFrame(shape, 1);
    const frameBytes = encodeTypedFrame(frame).length;
    report(
      "encode EVENTS frame",
      rate(seconds, () => {
        for (let i = 0; i < 100; i++) encodeTypedFrame(frame);
      }),
      100,
      e,
      100 * frameBytes,
    );
    const body = request(shape, 1);
    report(
      "encode request body (canonical)",
      rate(seconds, () => {
        for (let i = 0; i < 100; i++) encodeCanonical(body as never);
      }),
      100,
      e,
      100 * frameBytes,
    );
  }
}

function decodeFull(type: number, payload: Uint8Array): void {
  const r = decodeFrameBody(type, payload);
  if (!r.ok || r.frame.type !== FrameType.EVENTS) throw new Error("unexpected frame");
  checkOk(decodeRequestBody(r.frame.body.req.body).ok);
}

function checkOk(ok: boolean): void {
  if (!ok) throw new Error("benchmark input failed to decode");
}

if (import.meta.main) main();
