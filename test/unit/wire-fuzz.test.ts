// Seeded fuzzing of the whole decode path (FrameDecoder -> decodeFrameBody ->
// decodeRequestBody): random bytes, random split points, and mutated valid frames. No
// exception may escape, every push consumes its chunk, buffering stays bounded, and
// whatever is accepted re-encodes to exactly the bytes it came from (canonical form).
// A failure prints its seed; rerun with that seed to replay it exactly.
import { rng } from "./seeded-rng.ts";
import { describe, expect, test } from "bun:test";
import {
  type Canonical,
  type DecodeResult,
  FrameDecoder,
  FrameType,
  decodeFrameBody,
  decodeRequestBody,
  encodeCanonical,
  encodeFrame,
  encodeFrameBody,
  encodeRequestBody,
  encodeTypedFrame,
  type Frame,
  type Request,
  tryDecodeCanonical,
} from "../../wire/index.ts";

const int = (next: () => number, n: number): number => Math.floor(next() * n);

function randomBytes(next: () => number, n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = int(next, 256);
  return b;
}

const filled = (n: number, v: number): Uint8Array => new Uint8Array(n).fill(v);
const REQUEST: Request = {
  v: 1,
  client: filled(32, 1),
  seq: 9,
  span: 2,
  ts: 1_700_000_000_000,
  op: { t: "pub", tag: "net.links", events: [new Uint8Array([1, 2, 3]), new Uint8Array(0)] },
};
const ADMIN: Request = {
  ...REQUEST,
  span: 1,
  op: { t: "admin", cmd: { t: "create-channel", tag: "a", fault: "crash", order: "total", priority: "high", public: false } },
};
const SEEDS: Frame[] = [
  { type: FrameType.HELLO, body: { v: 3, role: "replica", replica: 2, key: filled(32, 1), nonce: filled(32, 2), eph: filled(32, 3) } },
  {
    type: FrameType.HELLO_ACK,
    body: { v: 3, replica: 0, key: filled(32, 1), nonce: filled(32, 2), eph: filled(32, 3), sig: filled(64, 4) },
  },
  { type: FrameType.AUTH, body: { sig: filled(64, 5) } },
  { type: FrameType.ERROR, body: { code: "BAD_FRAME", reason: "x", ref: 1 } },
  { type: FrameType.PING, body: { n: 300 } },
  { type: FrameType.REQUEST, body: { body: encodeRequestBody(REQUEST), sig: filled(64, 6) } },
  { type: FrameType.REQUEST, body: { body: encodeRequestBody(ADMIN), sig: filled(64, 6) } },
  {
    type: FrameType.REPLY,
    body: { seq: 9, replica: 1, d: filled(32, 8), ok: true, res: { t: "pub", tag: "net.links", span: 2, first: 70000 } },
  },
  { type: FrameType.QUERY, body: { id: 1, q: "channel-info", tag: "a.b" } },
  { type: FrameType.QUERY_REPLY, body: { id: 1, replica: 1, ok: true, res: { a: [1, -2, "x", null, true], b: filled(3, 7) } } },
  { type: FrameType.SUBSCRIBE, body: { sub: 3, tag: "a", from: 2 ** 33 } },
  { type: FrameType.SUB_OK, body: { sub: 3, replica: 0, next: 5 } },
  {
    type: FrameType.EVENTS,
    body: { sub: 3, tag: "net.links", seq: 12, req: { body: encodeRequestBody(REQUEST), sig: filled(64, 6) }, replica: 3 },
  },
  { type: FrameType.SUB_END, body: { sub: 3, replica: 0, code: "TRIMMED", reason: "r", oldest: 4 } },
  { type: FrameType.PEER, body: { seq: 1, msg: encodeCanonical({ t: "write", view: 0 }), mac: filled(32, 8) } },
];
const SEED_BYTES = SEEDS.map((f) => encodeTypedFrame(f));

/** Mutations of a valid frame: bit flips, byte changes, inserts, deletes, truncation. */
function mutate(next: () => number, frame: Uint8Array): Uint8Array {
  let b = Uint8Array.from(frame);
  const rounds = 1 + int(next, 4);
  for (let r = 0; r < rounds; r++) {
    const at = int(next, Math.max(1, b.length));
    switch (int(next, 6)) {
      case 0:
        b[at] = (b[at] ?? 0) ^ (1 << int(next, 8));
        break;
      case 1:
        b[at] = int(next, 256);
        break;
      case 2: {
        const ins = randomBytes(next, 1 + int(next, 4));
        b = Uint8Array.from([...b.subarray(0, at), ...ins, ...b.subarray(at)]);
        break;
      }
      case 3:
        b = Uint8Array.from([...b.subarray(0, at), ...b.subarray(at + 1 + int(next, 3))]);
        break;
      case 4:
        b = b.slice(0, at);
        break;
      default:
        // Keep the framing consistent with a mutated payload, so the body decoders see it.
        if (b.length >= 5) new DataView(b.buffer).setUint32(0, b.length - 4);
        break;
    }
  }
  return b;
}

function splitPoints(next: () => number, length: number): number[] {
  const cuts: number[] = [];
  const n = int(next, 6);
  for (let i = 0; i < n; i++) cuts.push(int(next, length + 1));
  return cuts.sort((a, b) => a - b);
}

interface Tally {
  frames: number;
  accepted: number;
  errors: number;
}

/** Checks every invariant on one decoded item; counts what happened. */
function checkResult(r: DecodeResult, tally: Tally): void {
  if (!r.ok) {
    tally.errors++;
    expect(r.error.reason.length).toBeGreaterThan(0);
    return;
  }
  tally.frames++;
  const decoded = decodeFrameBody(r.type, r.payload);
  if (!decoded.ok) {
    expect(decoded.error.fatal).toBe(false);
    return;
  }
  tally.accepted++;
  // Canonical: an accepted payload is the one encoding of its value.
  expect(Buffer.from(encodeFrameBody(decoded.frame)).equals(r.payload)).toBe(true);
  const f = decoded.frame;
  const body = f.type === FrameType.REQUEST ? f.body.body : f.type === FrameType.EVENTS ? f.body.req.body : null;
  if (body !== null) {
    const req = decodeRequestBody(body);
    if (req.ok) expect(Buffer.from(encodeRequestBody(req.request)).equals(body)).toBe(true);
  }
}

/** Feeds a stream at the given cuts; the decoder must consume every byte of every push. */
function run(stream: Uint8Array, cuts: number[], frameBytesMax: number, tally: Tally): void {
  const decoder = new FrameDecoder({ frameBytesMax });
  let at = 0;
  for (const cut of [...cuts, stream.length]) {
    const chunk = stream.subarray(at, cut);
    const results = decoder.push(chunk);
    // Each result stands for at least one byte of input (a 5-byte frame at least), except
    // the single `poisoned` answer to a push after a fatal error.
    expect(results.length).toBeLessThanOrEqual(Math.max(1, chunk.length));
    expect(decoder.bufferedBytes).toBeLessThanOrEqual(frameBytesMax + 4);
    for (const r of results) checkResult(r, tally);
    at = cut;
  }
  const end = decoder.finish();
  if (end !== null) tally.errors++;
}

function guarded(seed: number, body: () => void): void {
  try {
    body();
  } catch (e) {
    throw new Error(`fuzz seed ${seed} failed: ${e instanceof Error ? e.message : String(e)}`);
  }
}

describe("fuzz: the decode path never throws, never hangs, keeps its bounds", () => {
  test("3000 streams of random bytes at random split points", () => {
    const tally: Tally = { frames: 0, accepted: 0, errors: 0 };
    for (let seed = 1; seed <= 3000; seed++) {
      guarded(seed, () => {
        const next = rng(seed);
        const stream = randomBytes(next, int(next, 200));
        // Small maxima make random length fields land inside the limit sometimes.
        const max = [16, 256, 65536, 4 * 1024 * 1024][int(next, 4)] as number;
        run(stream, splitPoints(next, stream.length), max, tally);
      });
    }
    expect(tally.errors).toBeGreaterThan(0);
  });

  test("3000 streams of random-typed frames with random payloads", () => {
    const tally: Tally = { frames: 0, accepted: 0, errors: 0 };
    for (let seed = 1; seed <= 3000; seed++) {
      guarded(seed, () => {
        const next = rng(seed * 7919);
        const parts: Uint8Array[] = [];
        const n = 1 + int(next, 4);
        for (let i = 0; i < n; i++) {
          const type = next() < 0.7 ? (Object.values(FrameType)[int(next, Object.values(FrameType).length)] as number) : int(next, 256);
          const r = next();
          if (r < 0.4) {
            parts.push(encodeFrame(type, randomBytes(next, int(next, 64))));
          } else if (r < 0.7) {
            parts.push(encodeFrame(type, encodeCanonical(randomMap(next))));
          } else {
            const seedFrame = SEEDS[int(next, SEEDS.length)] as Frame;
            parts.push(encodeFrame(seedFrame.type, encodeCanonical(perturb(next, seedFrame.body as unknown as Canonical))));
          }
        }
        const stream = Buffer.concat(parts);
        run(new Uint8Array(stream), splitPoints(next, stream.length), 4096, tally);
      });
    }
    expect(tally.frames).toBeGreaterThan(3000);
    // Perturbed bodies that kept their meaning (or changed to another valid one) pass.
    expect(tally.accepted).toBeGreaterThan(100);
  });

  test("6000 mutated valid frames, in streams, at random split points", () => {
    const tally: Tally = { frames: 0, accepted: 0, errors: 0 };
    for (let seed = 1; seed <= 6000; seed++) {
      guarded(seed, () => {
        const next = rng(seed * 104729);
        const parts: Uint8Array[] = [];
        const n = 1 + int(next, 3);
        for (let i = 0; i < n; i++) {
          const frame = SEED_BYTES[int(next, SEED_BYTES.length)] as Uint8Array;
          parts.push(next() < 0.8 ? mutate(next, frame) : frame);
        }
        const stream = new Uint8Array(Buffer.concat(parts));
        run(stream, splitPoints(next, stream.length), 4 * 1024 * 1024, tally);
      });
    }
    // The mutations must reach every layer: some frames survive intact, some fail deep.
    expect(tally.accepted).toBeGreaterThan(500);
    expect(tally.frames).toBeGreaterThan(tally.accepted);
  });

  test("4000 mutated request bodies and canonical payloads", () => {
    const bodies = [encodeRequestBody(REQUEST), encodeRequestBody(ADMIN)];
    let accepted = 0;
    for (let seed = 1; seed <= 4000; seed++) {
      guarded(seed, () => {
        const next = rng(seed * 31337);
        const b = mutate(next, bodies[seed % 2] as Uint8Array);
        const req = decodeRequestBody(b);
        if (req.ok) {
          accepted++;
          expect(Buffer.from(encodeRequestBody(req.request)).equals(b)).toBe(true);
        }
        const c = tryDecodeCanonical(b);
        if (c.ok) expect(Buffer.from(encodeCanonical(c.value)).equals(b)).toBe(true);
      });
    }
    expect(accepted).toBeGreaterThan(0);
  });
});

/** A frame body with one field replaced by a random value, dropped, or one field added. */
function perturb(next: () => number, body: Canonical): Canonical {
  const o = { ...(body as { [k: string]: Canonical }) };
  const keys = Object.keys(o);
  const key = keys[int(next, keys.length)] as string;
  const action = int(next, 4);
  if (action === 0) delete o[key];
  else if (action === 1) o[`x${int(next, 3)}`] = 1;
  else if (action === 2) o[key] = (randomMap(next) as { [k: string]: Canonical })[key] ?? int(next, 5);
  return o;
}

/** A random map whose keys often are real field names, so schemas are exercised. */
function randomMap(next: () => number): Canonical {
  const names = [
    "v",
    "n",
    "sub",
    "tag",
    "seq",
    "sig",
    "key",
    "nonce",
    "role",
    "code",
    "reason",
    "id",
    "q",
    "ok",
    "res",
    "msg",
    "mac",
    "from",
  ];
  const o: { [k: string]: Canonical } = {};
  const count = int(next, 6);
  for (let i = 0; i < count; i++) {
    const key = names[int(next, names.length)] as string;
    const pick = int(next, 6);
    o[key] =
      pick === 0
        ? int(next, 1000)
        : pick === 1
          ? "a.b"
          : pick === 2
            ? randomBytes(next, [32, 64, 3][int(next, 3)] as number)
            : pick === 3
              ? next() < 0.5
              : pick === 4
                ? "client"
                : -1;
  }
  return o;
}
