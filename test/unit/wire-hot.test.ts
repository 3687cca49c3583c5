// The hand-written hot-path checks (wire/hot.ts) against the zod schemas they stand in for:
// seeded random mutations of valid payloads (a field replaced by an edge value of any
// type, a key dropped or added, an array grown or shrunk). A check may answer null for
// a value the schema accepts only outside its shape (admin commands, refusals); anything
// it accepts, the schema must accept with the same value, and within its shape it must
// agree with the schema exactly. A failure prints its seed.
import { describe, expect, test } from "bun:test";
import type { z } from "zod";
import { type Canonical, decodeCanonical, encodeCanonical } from "../../wire/canonical.ts";
import { encodeFrame } from "../../wire/frame.ts";
import {
  encodePeerFrame,
  eventsPrefix,
  peerFrameParts,
  eventsRest,
  eventsRestShared,
  eventsTail,
  fastEvents,
  fastPeer,
  fastPublishReply,
  fastPublishRequest,
  fastRequestFrame,
} from "../../wire/hot.ts";
import {
  decodeFrameBody,
  decodeRequestBody,
  encodeTypedFrame,
  eventsFrameSchema,
  peerSchema,
  replySchema,
  requestFrameSchema,
  requestSchema,
} from "../../wire/schemas.ts";
import { EVENTS_SUBS_MAX, FrameType, REQUEST_EVENTS_MAX, TAG_BYTES_MAX } from "../../wire/types.ts";
import { rng } from "./seeded-rng.ts";

const CASES_PER_SHAPE = 4000;
const filled = (n: number, v: number): Uint8Array => new Uint8Array(n).fill(v);

/** Values at and around every bound the schemas state, of every type. */
const EDGE_VALUES: readonly Canonical[] = [
  null,
  true,
  false,
  0,
  1,
  2,
  -1,
  Number.MAX_SAFE_INTEGER,
  Number.MAX_SAFE_INTEGER - 1,
  -Number.MAX_SAFE_INTEGER,
  "",
  "pub",
  "admin",
  "net.links",
  "Net.links",
  "net..links",
  ".net",
  "$sys.events",
  "a".repeat(TAG_BYTES_MAX),
  "a".repeat(TAG_BYTES_MAX + 1),
  "é",
  new Uint8Array(0),
  filled(1, 1),
  filled(31, 2),
  filled(32, 3),
  filled(33, 4),
  filled(63, 5),
  filled(64, 6),
  filled(65, 7),
  [],
  [new Uint8Array(0)],
  {},
  { t: "pub" },
];

interface Shape {
  readonly name: string;
  readonly fast: (value: Canonical) => unknown;
  readonly schema: z.ZodType;
  /** Valid values of the fast shape. */
  readonly seeds: readonly Canonical[];
  /** Whether a value the schema accepts is one the fast check covers. */
  readonly inShape: (value: Canonical) => boolean;
}

const pubBody = (events: Uint8Array[], seq = 7): Canonical => ({
  v: 1,
  client: filled(32, 9),
  seq,
  span: events.length,
  ts: 1_700_000_000_000,
  op: { t: "pub", tag: "net.links", events },
});
const signed = { body: filled(40, 1), sig: filled(64, 2) };
const field = (value: Canonical, ...path: string[]): Canonical | undefined => {
  let at: Canonical | undefined = value;
  for (const key of path)
    at = at !== null && typeof at === "object" && !Array.isArray(at) && !(at instanceof Uint8Array) ? at[key] : undefined;
  return at;
};

const SHAPES: readonly Shape[] = [
  {
    name: "publish request body",
    fast: fastPublishRequest,
    schema: requestSchema,
    seeds: [
      pubBody([filled(3, 1)]),
      pubBody([new Uint8Array(0), filled(200, 2), filled(5, 3)]),
      pubBody([filled(1, 1)], Number.MAX_SAFE_INTEGER),
      pubBody([filled(1, 1), filled(1, 1)], Number.MAX_SAFE_INTEGER - 1),
    ],
    inShape: (value) => field(value, "op", "t") === "pub",
  },
  {
    name: "REQUEST frame",
    fast: fastRequestFrame,
    schema: requestFrameSchema,
    seeds: [signed, { ...signed, after: 0 }, { ...signed, after: 12 }],
    inShape: () => true,
  },
  {
    name: "PEER frame",
    fast: fastPeer,
    schema: peerSchema,
    seeds: [
      { seq: 1, msg: filled(10, 1), mac: filled(32, 2) },
      { seq: 99, msg: new Uint8Array(0), mac: filled(32, 3) },
    ],
    inShape: () => true,
  },
  {
    name: "EVENTS frame",
    fast: fastEvents,
    schema: eventsFrameSchema,
    seeds: [
      { sub: 0, tag: "sec.alerts", seq: 0, req: signed, replica: 3 },
      { sub: 5, tag: "$sys.events", seq: 12, req: signed, replica: 0 },
      { subs: [1, 2], tag: "sec.alerts", seq: 7, req: signed, replica: 1 },
      { subs: [0, 24, 256, 2 ** 32], tag: "net.links", seq: 0, req: signed, replica: 2 },
    ],
    inShape: () => true,
  },
  {
    name: "publish REPLY",
    fast: fastPublishReply,
    schema: replySchema,
    seeds: [
      { seq: 1, replica: 0, d: filled(32, 1), ok: true, res: { t: "pub", tag: "net.links", span: 3 } },
      { seq: 4, replica: 2, d: filled(32, 1), ok: true, res: { t: "pub", tag: "net.links", span: 1, first: 9 }, at: 17 },
    ],
    inShape: (value) => field(value, "ok") === true && field(value, "res", "t") === "pub",
  },
];

/** A deep copy (byte strings shared: nothing mutates them). */
function copy(value: Canonical): Canonical {
  if (Array.isArray(value)) return value.map(copy);
  if (value !== null && typeof value === "object" && !(value instanceof Uint8Array)) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, copy(v)]));
  }
  return value;
}

/** Every container (map or array) inside `value`, itself included. */
function containers(
  value: Canonical,
  out: (Canonical[] | { [key: string]: Canonical })[] = [],
): (Canonical[] | { [key: string]: Canonical })[] {
  if (Array.isArray(value)) {
    out.push(value);
    for (const item of value) containers(item, out);
  } else if (value !== null && typeof value === "object" && !(value instanceof Uint8Array)) {
    out.push(value);
    for (const item of Object.values(value)) containers(item, out);
  }
  return out;
}

/** One to three random mutations of a copy of `seed`. */
function mutate(seed: Canonical, next: () => number): Canonical {
  const value = copy(seed);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)] as T;
  const rounds = 1 + Math.floor(next() * 3);
  for (let round = 0; round < rounds; round++) {
    const target = pick(containers(value));
    const roll = next();
    if (Array.isArray(target)) {
      if (roll < 0.4 && target.length > 0) target.splice(Math.floor(next() * target.length), 1);
      else if (roll < 0.8) target.push(copy(pick(EDGE_VALUES)));
      else if (target.length > 0) target[Math.floor(next() * target.length)] = copy(pick(EDGE_VALUES));
      continue;
    }
    const keys = Object.keys(target);
    if (roll < 0.15 && keys.length > 0) delete target[pick(keys)];
    else if (roll < 0.3) {
      // defineProperty: a plain assignment of "__proto__" would set the prototype instead of adding a key.
      const key = pick(["extra", "after", "at", "first", "t", "__proto__", "ok"]);
      Object.defineProperty(target, key, { value: copy(pick(EDGE_VALUES)), enumerable: true, writable: true, configurable: true });
    } else if (keys.length > 0) target[pick(keys)] = copy(pick(EDGE_VALUES));
  }
  // Through canonical bytes and back: the shape the checks meet on the wire (sorted keys, views).
  return decodeCanonical(encodeCanonical(value));
}

describe("hot-path checks agree with the zod schemas", () => {
  for (const shape of SHAPES) {
    test(`${shape.name}: every seed passes the fast check`, () => {
      for (const seed of shape.seeds) {
        const value = decodeCanonical(encodeCanonical(seed));
        expect(shape.schema.safeParse(value).success).toBe(true);
        expect(shape.fast(value)).not.toBeNull();
      }
    });

    test(`${shape.name}: ${CASES_PER_SHAPE} mutations, never accepted by the fast check alone`, () => {
      const seed = 0x5eed + shape.name.length;
      const next = rng(seed);
      let accepted = 0;
      let refused = 0;
      for (let i = 0; i < CASES_PER_SHAPE; i++) {
        const value = mutate(shape.seeds[i % shape.seeds.length] as Canonical, next);
        const fast = shape.fast(value);
        const zod = shape.schema.safeParse(value);
        const context = `seed ${seed}, case ${i}: ${JSON.stringify(value, (_k, v) => (v instanceof Uint8Array ? `bytes(${v.length})` : v))}`;
        if (fast !== null) {
          expect(zod.success, context).toBe(true);
          expect(fast as object, context).toEqual(zod.data as object);
          accepted++;
        } else if (zod.success) {
          // The schema accepts it: only a shape the fast check leaves to the schema.
          expect(shape.inShape(value), context).toBe(false);
        } else refused++;
      }
      // The mutations reach both sides of the bounds.
      expect(accepted).toBeGreaterThan(CASES_PER_SHAPE / 50);
      expect(refused).toBeGreaterThan(CASES_PER_SHAPE / 4);
    });
  }

  test("a publish of REQUEST_EVENTS_MAX events passes, one more does not, and the fast path gives the schema's answer", () => {
    const most = Array.from({ length: REQUEST_EVENTS_MAX }, () => new Uint8Array(0));
    expect(fastPublishRequest(decodeCanonical(encodeCanonical(pubBody(most))))).not.toBeNull();
    const tooMany = encodeCanonical(pubBody([...most, new Uint8Array(0)]));
    expect(fastPublishRequest(decodeCanonical(tooMany))).toBeNull();
    const decoded = decodeRequestBody(tooMany);
    expect(decoded.ok).toBe(false);
    if (!decoded.ok) expect(decoded.error.reason).toContain("op.events");
  });

  test("decodeFrameBody still refuses what the fast check leaves to the schema, with the schema's message", () => {
    const bad = encodeCanonical({ seq: 0, msg: new Uint8Array(0), mac: filled(32, 1) });
    const decoded = decodeFrameBody(FrameType.PEER, bad);
    expect(decoded.ok).toBe(false);
    if (!decoded.ok) expect(decoded.error.reason).toStartWith("PEER: seq:");
  });

  test("EVENTS subs: ascending, distinct, 2 to EVENTS_SUBS_MAX; the fast path gives the schema's answer", () => {
    const frame = (subs: number[]) => decodeCanonical(encodeCanonical({ subs, tag: "net.links", seq: 1, req: signed, replica: 0 }));
    const most = Array.from({ length: EVENTS_SUBS_MAX }, (_, i) => i);
    for (const good of [[1, 2], most]) {
      expect(fastEvents(frame(good))).not.toBeNull();
      expect(eventsFrameSchema.safeParse(frame(good)).success).toBe(true);
    }
    for (const bad of [[], [1], [2, 1], [1, 1], [...most, EVENTS_SUBS_MAX]]) {
      expect(fastEvents(frame(bad))).toBeNull();
      expect(eventsFrameSchema.safeParse(frame(bad)).success).toBe(false);
    }
    // Both forms at once is neither.
    const both = decodeCanonical(encodeCanonical({ sub: 1, subs: [1, 2], tag: "net.links", seq: 1, req: signed }));
    expect(fastEvents(both)).toBeNull();
    expect(eventsFrameSchema.safeParse(both).success).toBe(false);
  });

  test("a shared EVENTS payload (subs) from the shared prefix and its rest is byte for byte encodeTypedFrame's", () => {
    const next = rng(0x5ab5);
    const uints = [0, 1, 23, 24, 255, 256, 65_535, 65_536, 2 ** 32, Number.MAX_SAFE_INTEGER];
    for (let i = 0; i < 300; i++) {
      const req = { body: filled(1 + Math.floor(next() * 300), 1), sig: filled(64, 2) };
      const seq = uints[i % uints.length] as number;
      const count = 2 + Math.floor(next() * 40);
      const subs = [...new Set(Array.from({ length: count }, () => uints[Math.floor(next() * uints.length)] as number))].sort(
        (a, b) => a - b,
      );
      if (subs.length < 2) continue;
      const tag = i % 2 === 0 ? "net.links" : "x".repeat(TAG_BYTES_MAX);
      const replica = i % 3 === 0 ? 1000 : 3;
      const frame = { type: FrameType.EVENTS, body: { subs, tag, seq, req, replica } } as const;
      const payload = Uint8Array.from(Buffer.concat([...eventsPrefix(req, seq).parts, eventsRestShared(subs, eventsTail(tag, replica))]));
      expect(encodeFrame(FrameType.EVENTS, payload)).toEqual(encodeTypedFrame(frame));
    }
  });

  test("an EVENTS payload from a shared prefix and a subscriber's rest is byte for byte encodeTypedFrame's", () => {
    const next = rng(0xe7e);
    const uints = [0, 1, 23, 24, 255, 256, 65_535, 65_536, 2 ** 32, Number.MAX_SAFE_INTEGER];
    const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)] as T;
    for (let i = 0; i < 500; i++) {
      // Every CBOR length form of the body, a 4-byte one (past 65,535) among them.
      const req = { body: filled(i % 50 === 0 ? 70_000 : 1 + Math.floor(next() * 300), 1), sig: filled(64, 2) };
      const seq = pick(uints);
      const prefix = eventsPrefix(req, seq);
      for (const sub of [pick(uints), pick(uints)]) {
        const tag = pick(["a", "net.links", "$sys.events", "x".repeat(TAG_BYTES_MAX)]);
        const replica = pick([0, 3, 24, 1000]);
        const frame = { type: FrameType.EVENTS, body: { sub, tag, seq, req, replica } } as const;
        const payload = Uint8Array.from(Buffer.concat([...prefix.parts, eventsRest(sub, eventsTail(tag, replica))]));
        expect(encodeFrame(FrameType.EVENTS, payload)).toEqual(encodeTypedFrame(frame));
      }
    }
  });

  test("a PEER frame from encodePeerFrame, and peerFrameParts joined, is byte for byte encodeTypedFrame's, across every length form", () => {
    const next = rng(0x9ee4);
    const seqs = [1, 23, 24, 255, 256, 65_535, 65_536, 2 ** 32, Number.MAX_SAFE_INTEGER];
    // Message lengths on both sides of each CBOR length form: direct, 1, 2 and 4 bytes.
    const lengths = [0, 1, 23, 24, 255, 256, 65_535, 65_536, 300_000];
    for (const length of lengths) {
      for (let i = 0; i < 4; i++) {
        const seq = seqs[Math.floor(next() * seqs.length)] as number;
        const msg = filled(length, Math.floor(next() * 256));
        const mac = filled(32, Math.floor(next() * 256));
        const typed = encodeTypedFrame({ type: FrameType.PEER, body: { seq, msg, mac } });
        expect(encodePeerFrame(seq, msg, mac)).toEqual(typed);
        const parts = peerFrameParts(seq, msg, mac);
        expect(parts[1]).toBe(msg);
        expect(Buffer.concat(parts).equals(Buffer.from(typed))).toBe(true);
      }
    }
  });

  test("encodePeerFrame refuses a frame over the limit, as encodeTypedFrame does", () => {
    const msg = new Uint8Array(5000);
    expect(() => encodePeerFrame(1, msg, filled(32, 1), 4096)).toThrow(RangeError);
    expect(() => peerFrameParts(1, msg, filled(32, 1), 4096)).toThrow(RangeError);
    // At the limit exactly: accepted, and the length field says so; a byte more is refused.
    const overhead = encodePeerFrame(1, new Uint8Array(4000), filled(32, 1)).length - 4 - 4000;
    const fits = encodePeerFrame(1, new Uint8Array(4096 - overhead), filled(32, 1), 4096);
    expect(new DataView(fits.buffer).getUint32(0)).toBe(4096);
    expect(() => peerFrameParts(1, new Uint8Array(4097 - overhead), filled(32, 1), 4096)).toThrow(RangeError);
    expect(() => encodeTypedFrame({ type: FrameType.PEER, body: { seq: 1, msg, mac: filled(32, 1) } }, 4096)).toThrow(RangeError);
  });
});
