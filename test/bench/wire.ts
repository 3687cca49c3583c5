/**
 * Wire codec micro-benchmark: a program that prints figures, never a pass/fail test.
 *   bun test/bench/wire.ts [seconds-per-case]
 * Cases: framing alone, framing + frame schema, framing + schema + request body (the
 * replica's ingress path), and encoding of delivery frames (the fan-out path). Last, a
 * client's reads at saturation: EVENTS frames of a full batch (1,024 events of 200 B) in
 * fresh reads of 512 KiB, as Bun's sockets deliver them, with each frame copied out
 * (`copyPayloads`) or viewed where it is at least a quarter of its read
 * (`CLIENT_FRAME_VIEW_SHARE_MIN`, src/client/connection.ts).
 */
import { CLIENT_FRAME_VIEW_SHARE_MIN } from "../../src/client/connection.ts";
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
  clientReadCases();
}

/** Bun's largest socket read: a saturated client's reads are mostly this size. */
const CLIENT_READ_BYTES = 512 * 1024;
const CLIENT_BATCH: Shape = { name: "1,024 events x 200 B", eventsPerRequest: 1024, eventBytes: 200 };
const CLIENT_FRAMES = 400;

/** `frames` copies of one frame, cut into fresh reads of CLIENT_READ_BYTES (each its own buffer). */
function clientReads(frame: Uint8Array, frames: number): Uint8Array[] {
  const reads: Uint8Array[] = [];
  let read = new Uint8Array(CLIENT_READ_BYTES);
  let filled = 0;
  for (let i = 0; i < frames; i++) {
    for (let at = 0; at < frame.length; ) {
      const take = Math.min(frame.length - at, read.length - filled);
      read.set(frame.subarray(at, at + take), filled);
      at += take;
      filled += take;
      if (filled === read.length) {
        reads.push(read);
        read = new Uint8Array(CLIENT_READ_BYTES);
        filled = 0;
      }
    }
  }
  if (filled > 0) reads.push(read.subarray(0, filled));
  return reads;
}

/**
 * A client's reads, decoded with the given policy; each payload is touched at both ends, as
 * a MAC check and a decode would. Fresh reads for every pass (a socket never hands the same
 * buffer twice), made before the clock starts; three passes, so the runtime's collector,
 * which the copies feed, takes its share.
 */
function clientReadCase(viewShareMin: number | undefined): { readonly microsPerFrame: number; readonly eventsPerFrame: number } {
  const frame = encodeTypedFrame(eventsFrame(CLIENT_BATCH, 1));
  let elapsedMs = 0;
  let sink = 0;
  const passes = 3;
  for (let pass = 0; pass < passes; pass++) {
    const reads = clientReads(frame, CLIENT_FRAMES);
    const decoder = new FrameDecoder({ copyPayloads: true, viewShareMin, frameBytesMax: frame.length });
    const start = performance.now();
    for (const read of reads) {
      for (const r of decoder.push(read)) {
        if (!r.ok) throw new Error(r.error.reason);
        sink += (r.payload[0] as number) + (r.payload[r.payload.length - 1] as number);
      }
    }
    elapsedMs += performance.now() - start;
  }
  checkOk(sink > 0);
  return { microsPerFrame: (elapsedMs * 1000) / (passes * CLIENT_FRAMES), eventsPerFrame: CLIENT_BATCH.eventsPerRequest };
}

function clientReadCases(): void {
  const frameBytes = encodeTypedFrame(eventsFrame(CLIENT_BATCH, 1)).length;
  console.log(`client reads: EVENTS frames of ${frameBytes.toLocaleString("en-US")} B (${CLIENT_BATCH.name}) in fresh reads of 512 KiB`);
  for (const [label, share] of [
    ["every frame copied", undefined],
    [`viewed from ${CLIENT_FRAME_VIEW_SHARE_MIN} of a read`, CLIENT_FRAME_VIEW_SHARE_MIN],
  ] as const) {
    const { microsPerFrame, eventsPerFrame } = clientReadCase(share);
    console.log(
      `  ${label.padEnd(34)} ${microsPerFrame.toFixed(1).padStart(8)} µs per frame ${(microsPerFrame / eventsPerFrame).toFixed(3).padStart(8)} µs per event`,
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
