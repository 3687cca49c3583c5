// Frame payload schemas and the typed decode path: every frame type round-trips, and each
// class of bad payload yields its own typed error.
import { describe, expect, test } from "bun:test";
import {
  type Canonical,
  DOMAIN_REQUEST,
  ERROR_CODES,
  EVENT_BYTES_MAX,
  EVENTS_SUBS_MAX,
  FRAME_ITEMS_MAX,
  FRAME_SCHEMAS,
  type Frame,
  FrameDecoder,
  FrameType,
  type FrameTypeCode,
  REASON_BYTES_MAX,
  REQUEST_BODY_ITEMS_MAX,
  REQUEST_EVENTS_MAX,
  type Request,
  TAG_BYTES_MAX,
  type WireErrorKind,
  decodeFrameBody,
  decodeRequestBody,
  encodeCanonical,
  encodeFrame,
  encodeRequestBody,
  encodeTypedFrame,
  errorCodeFor,
  frameItemsMax,
  frameTypeName,
  peerMacInput,
  requestSigningInput,
  sessionTranscript,
  signingInput,
  wireError,
} from "../../wire/index.ts";

const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");
const filled = (n: number, v: number): Uint8Array => new Uint8Array(n).fill(v);

const KEY = filled(32, 1);
const KEY2 = filled(32, 2);
const SIG = filled(64, 3);

function request(overrides: Partial<Request> = {}): Request {
  return {
    v: 1,
    client: KEY,
    seq: 5,
    span: 2,
    ts: 1_700_000_000_000,
    op: { t: "pub", tag: "net.links", events: [new Uint8Array([1]), new Uint8Array(0)] },
    ...overrides,
  };
}

/** At least one frame of every type, with optional fields both present and absent. */
const SAMPLE_FRAMES: Frame[] = [
  { type: FrameType.HELLO, body: { v: 3, role: "client", key: KEY, nonce: KEY2, eph: KEY } },
  { type: FrameType.HELLO, body: { v: 3, role: "replica", replica: 3, key: KEY, nonce: KEY2, eph: KEY } },
  { type: FrameType.HELLO_ACK, body: { v: 3, replica: 0, key: KEY, nonce: KEY2, eph: KEY2, sig: SIG } },
  { type: FrameType.AUTH, body: { sig: SIG } },
  { type: FrameType.ERROR, body: { code: "REPLAY", reason: "seq 5 used", ref: 5 } },
  { type: FrameType.ERROR, body: { code: "INTERNAL", reason: "" } },
  { type: FrameType.PING, body: { n: 0 } },
  { type: FrameType.PONG, body: { n: 2 ** 40 } },
  { type: FrameType.REQUEST, body: { body: encodeRequestBody(request()), sig: SIG } },
  { type: FrameType.REPLY, body: { seq: 5, replica: 1, d: KEY, ok: true, res: { t: "pub", tag: "a", span: 2, first: 0 } } },
  { type: FrameType.REPLY, body: { seq: 5, replica: 1, d: KEY, ok: true, res: { t: "admin", cmd: "register" } } },
  { type: FrameType.REPLY, body: { seq: 5, replica: 1, d: KEY, ok: false, code: "OVERLOADED", reason: "shedding low" } },
  { type: FrameType.QUERY, body: { id: 9, q: "client-seq" } },
  { type: FrameType.QUERY, body: { id: 9, q: "channel-info", tag: "a.b" } },
  { type: FrameType.QUERY_REPLY, body: { id: 9, replica: 2, ok: true, res: null } },
  { type: FrameType.QUERY_REPLY, body: { id: 9, replica: 2, ok: true, res: { x: [1, "y", KEY] } } },
  { type: FrameType.QUERY_REPLY, body: { id: 9, replica: 2, ok: false, code: "NOT_READY", reason: "catching up" } },
  { type: FrameType.EPOCH, body: { replica: 4, epoch: 2 } },
  { type: FrameType.SUBSCRIBE, body: { sub: 1, tag: "a", from: 7 } },
  { type: FrameType.SUBSCRIBE, body: { sub: 1, tag: "a" } },
  { type: FrameType.UNSUBSCRIBE, body: { sub: 1 } },
  { type: FrameType.SUB_OK, body: { sub: 1, replica: 0 } },
  { type: FrameType.SUB_OK, body: { sub: 1, replica: 0, next: 3 } },
  { type: FrameType.EVENTS, body: { sub: 1, tag: "a", seq: 3, req: { body: encodeRequestBody(request()), sig: SIG }, replica: 0 } },
  { type: FrameType.SUB_END, body: { sub: 1, replica: 0, code: "SLOW", reason: "queue full" } },
  { type: FrameType.SUB_END, body: { sub: 1, replica: 0, code: "TRIMMED", reason: "", oldest: 10 } },
  { type: FrameType.PEER, body: { seq: 1, msg: new Uint8Array([0xa0]), mac: KEY } },
];

function expectError(type: number, payload: Uint8Array, kind: WireErrorKind): string {
  const r = decodeFrameBody(type, payload);
  expect(r.ok).toBe(false);
  if (r.ok) return "";
  expect(r.error.kind).toBe(kind);
  expect(r.error.fatal).toBe(false);
  expect(r.error.reason.length).toBeGreaterThan(0);
  return r.error.reason;
}

const cbor = (v: unknown): Uint8Array => encodeCanonical(v as Canonical);

describe("typed frames round-trip", () => {
  test("every assigned frame type has a sample", () => {
    const covered = new Set(SAMPLE_FRAMES.map((f) => f.type));
    for (const code of Object.values(FrameType)) expect(covered.has(code)).toBe(true);
    expect(Object.keys(FRAME_SCHEMAS).length).toBe(Object.keys(FrameType).length);
  });

  for (const frame of SAMPLE_FRAMES) {
    test(`${frameTypeName(frame.type)} ${hex(encodeTypedFrame(frame)).slice(8, 40)}...`, () => {
      const bytes = encodeTypedFrame(frame);
      const [raw] = new FrameDecoder().push(bytes);
      expect(raw?.ok).toBe(true);
      if (!raw?.ok) return;
      expect(raw.type).toBe(frame.type);
      const decoded = decodeFrameBody(raw.type, raw.payload);
      expect(decoded).toEqual({ ok: true, frame });
      if (decoded.ok) expect(hex(encodeTypedFrame(decoded.frame))).toBe(hex(bytes));
    });
  }

  test("switch on frame.type narrows the body", () => {
    const r = decodeFrameBody(FrameType.SUBSCRIBE, cbor({ sub: 4, tag: "x.y", from: 2 }));
    if (!r.ok) throw new Error(r.error.reason);
    const frame = r.frame;
    switch (frame.type) {
      case FrameType.SUBSCRIBE:
        expect(frame.body.from).toBe(2);
        break;
      default:
        throw new Error("wrong type");
    }
  });
});

describe("decodeFrameBody: each bad-input class has its typed error", () => {
  test("unknown type", () => {
    for (const t of [0x00, 0x07, 0x15, 0x41, 0x7f, 0x80, 0xff]) expectError(t, cbor({}), "unknown-type");
  });

  test("malformed CBOR", () => {
    expectError(FrameType.PING, new Uint8Array(0), "malformed-cbor");
    expectError(FrameType.PING, new Uint8Array([0xa1, 0x61, 0x6e]), "malformed-cbor");
    expectError(FrameType.PING, new Uint8Array([0xa1, 0x61, 0x6e, 0xfb, 0, 0, 0, 0, 0, 0, 0, 0]), "malformed-cbor");
    expectError(FrameType.PING, new Uint8Array([0xa1, 0x61, 0x6e, 0x18, 0x07]), "malformed-cbor");
  });

  test("trailing bytes", () => {
    const reason = expectError(FrameType.PING, new Uint8Array([0xa1, 0x61, 0x6e, 0x07, 0x00]), "trailing-bytes");
    expect(reason).toContain("PING");
  });

  test("schema violations name the field", () => {
    expect(expectError(FrameType.PING, cbor({ n: -1 }), "schema")).toContain("n:");
    expectError(FrameType.PING, cbor({ n: 1, extra: 0 }), "schema");
    expectError(FrameType.PING, cbor([1]), "schema");
    expect(expectError(FrameType.SUBSCRIBE, cbor({ sub: 1, tag: "A" }), "schema")).toContain("tag");
    expectError(FrameType.SUBSCRIBE, cbor({ sub: 1, tag: "a".repeat(TAG_BYTES_MAX + 1) }), "schema");
    expectError(FrameType.SUBSCRIBE, cbor({ sub: 1, tag: "a." }), "schema");
    expectError(FrameType.AUTH, cbor({ sig: filled(65, 0) }), "schema");
    expectError(FrameType.ERROR, cbor({ code: "NOPE", reason: "" }), "schema");
    expectError(FrameType.ERROR, cbor({ code: "INTERNAL", reason: "\u00e9".repeat(REASON_BYTES_MAX / 2 + 1) }), "schema");
    expectError(FrameType.QUERY, cbor({ id: 1, q: "channel-info" }), "schema");
    expectError(FrameType.QUERY, cbor({ id: 1, q: "status", tag: "a" }), "schema");
    expectError(FrameType.QUERY_REPLY, cbor({ id: 1, replica: 0, ok: true }), "schema");
    expectError(FrameType.EPOCH, cbor({ replica: 0 }), "schema");
    expectError(FrameType.EPOCH, cbor({ replica: 0, epoch: 1, group: [] }), "schema");
    expectError(FrameType.REPLY, cbor({ seq: 0, replica: 0, d: KEY, ok: false, code: "INTERNAL", reason: "" }), "schema");
    expectError(FrameType.PEER, cbor({ seq: 0, msg: new Uint8Array(0), mac: KEY }), "schema");
    expectError(FrameType.REQUEST, cbor({ body: new Uint8Array(0), sig: SIG }), "schema");
    expectError(FrameType.HELLO, cbor({ v: 3, role: "replica", key: KEY, nonce: KEY }), "schema");
    expectError(FrameType.HELLO, cbor({ v: 3, role: "admin", key: KEY, nonce: KEY }), "schema");
    // Since version 2 a client HELLO carries an ephemeral key, and so does every HELLO_ACK.
    expectError(FrameType.HELLO, cbor({ v: 3, role: "client", key: KEY, nonce: KEY }), "schema");
    expectError(FrameType.HELLO_ACK, cbor({ v: 3, replica: 0, key: KEY, nonce: KEY2, sig: SIG }), "schema");
  });

  test("a version other than 3 or 4 in HELLO / HELLO_ACK is bad-version; an older client is told why", () => {
    expect(expectError(FrameType.HELLO, cbor({ v: 5, role: "client", key: KEY, nonce: KEY }), "bad-version")).toBe(
      "HELLO: version 5 is not supported (this is version 4, serving 3 and up)",
    );
    expect(expectError(FrameType.HELLO, cbor({ v: 2, role: "client", key: KEY, nonce: KEY }), "bad-version")).toBe(
      "HELLO: version 2 is not supported (this is version 4, serving 3 and up; since version 3 a client frame's MAC covers the SHA-256 of its payload: upgrade the client or replica)",
    );
    expect(expectError(FrameType.HELLO, cbor({ v: 1, role: "client", key: KEY, nonce: KEY }), "bad-version")).toBe(
      "HELLO: version 1 is not supported (this is version 4, serving 3 and up; since version 2 every client frame after the handshake carries a MAC, and since version 3 a client frame's MAC covers the SHA-256 of its payload: upgrade the client or replica)",
    );
    expectError(FrameType.HELLO_ACK, cbor({ v: 0 }), "bad-version");
    expectError(FrameType.HELLO, cbor({ v: "1", role: "client", key: KEY, nonce: KEY }), "schema");
  });

  test("a decoding failure maps to the ERROR code to send", () => {
    expect(errorCodeFor(wireError("oversized", "", true))).toBe("TOO_LARGE");
    expect(errorCodeFor(wireError("bad-version", ""))).toBe("BAD_VERSION");
    for (const kind of ["empty-frame", "poisoned", "truncated", "unknown-type", "malformed-cbor", "trailing-bytes", "schema"] as const) {
      expect(errorCodeFor(wireError(kind, ""))).toBe("BAD_FRAME");
    }
    for (const code of ERROR_CODES) expect(code).toMatch(/^[A-Z_]+$/);
  });
});

describe("the values a frame may hold", () => {
  /** Four million bytes of empty arrays, under `pad` beside a frame's own fields. */
  const padded = (fields: Record<string, unknown>): Uint8Array => cbor({ ...fields, pad: new Array(4_000_000).fill([]) });

  test("a frame of a fixed shape with one more field of four million empty arrays stops decoding after FRAME_ITEMS_MAX values", () => {
    for (const [type, fields] of [
      [FrameType.PING, { n: 1 }],
      [FrameType.PEER, { seq: 1, msg: new Uint8Array(1), mac: KEY }],
      [FrameType.REQUEST, { body: new Uint8Array(1), sig: SIG }],
      [FrameType.QUERY, { id: 1, q: "status" }],
      [FrameType.HELLO, { v: 4, role: "replica", replica: 1, key: KEY, nonce: KEY2, eph: KEY }],
    ] as const) {
      const reason = expectError(type, padded(fields), "malformed-cbor");
      expect(reason).toContain("items-exceeded");
      const at = Number(/at byte (\d+)/.exec(reason)?.[1]);
      expect(at).toBeLessThan(FRAME_ITEMS_MAX + 300);
    }
    expect(frameItemsMax(FrameType.QUERY_REPLY)).toBe(Number.POSITIVE_INFINITY);
  });

  test("the largest valid frames and request bodies are read whole", () => {
    const cfg = { group: KEY, admins: KEY, clients: KEY, limits: KEY, retention: KEY };
    const hello = cbor({ v: 4, role: "replica", replica: 1, key: KEY, nonce: KEY2, eph: KEY, cfg });
    expect(decodeFrameBody(FrameType.HELLO, hello).ok).toBe(true);
    const subs = Array.from({ length: EVENTS_SUBS_MAX }, (_, i) => i);
    const events = cbor({ subs, tag: "a", seq: 3, req: { body: new Uint8Array(1), sig: SIG }, replica: 0 });
    expect(decodeFrameBody(FrameType.EVENTS, events).ok).toBe(true);
    const body = encodeRequestBody(
      request({ span: REQUEST_EVENTS_MAX, op: { t: "pub", tag: "a", events: new Array(REQUEST_EVENTS_MAX).fill(new Uint8Array(0)) } }),
    );
    expect(decodeRequestBody(body).ok).toBe(true);
    const bomb = encodeRequestBody(
      request({
        span: 4 * REQUEST_EVENTS_MAX,
        op: { t: "pub", tag: "a", events: new Array(4 * REQUEST_EVENTS_MAX).fill(new Uint8Array(0)) },
      }),
    );
    const refused = decodeRequestBody(bomb);
    expect(refused.ok ? "" : refused.error.reason).toContain("items-exceeded");
    expect(REQUEST_BODY_ITEMS_MAX).toBeLessThan(4 * REQUEST_EVENTS_MAX);
  });
});

describe("request bodies", () => {
  test("valid publish and admin requests round-trip", () => {
    const reqs: Request[] = [
      request(),
      request({ v: 2 }),
      request({ seq: Number.MAX_SAFE_INTEGER - 1, span: 2 }),
      request({
        span: 1,
        op: { t: "admin", cmd: { t: "create-channel", tag: "a", fault: "crash", order: "none", priority: "low", public: true } },
      }),
      request({ span: 1, op: { t: "admin", cmd: { t: "destroy-channel", tag: "a" } } }),
      request({ span: 1, op: { t: "admin", cmd: { t: "register", tag: "a", role: "subscriber", key: KEY2 } } }),
      request({ span: 1, op: { t: "admin", cmd: { t: "unregister", tag: "a", role: "publisher", key: KEY2 } } }),
    ];
    for (const req of reqs) {
      const body = encodeRequestBody(req);
      expect(decodeRequestBody(body)).toEqual({ ok: true, request: req });
    }
  });

  const badRequests: Array<[string, unknown, WireErrorKind]> = [
    ["span != events.length", request({ span: 3 }), "schema"],
    ["admin span 2", request({ span: 2, op: { t: "admin", cmd: { t: "destroy-channel", tag: "a" } } }), "schema"],
    ["no events", request({ span: 0, op: { t: "pub", tag: "a", events: [] } }), "schema"],
    ["seq 0", request({ seq: 0 }), "schema"],
    ["seq + span - 1 above 2^53 - 1", request({ seq: Number.MAX_SAFE_INTEGER }), "schema"],
    ["bad tag", request({ op: { t: "pub", tag: "a b", events: [filled(1, 0), filled(1, 0)] } }), "schema"],
    ["short client key", request({ client: filled(31, 0) }), "schema"],
    ["unknown op", { ...request(), op: { t: "delete" } }, "schema"],
    ["extra field", { ...request(), x: 1 }, "schema"],
    ["version 3", { ...request(), v: 3 }, "bad-version"],
    ["version 0", { ...request(), v: 0 }, "bad-version"],
    ["not a map", [1, 2], "schema"],
  ];
  for (const [name, value, kind] of badRequests) {
    test(`refused: ${name}`, () => {
      const r = decodeRequestBody(cbor(value));
      expect(r.ok).toBe(false);
      if (!r.ok) expect(r.error.kind).toBe(kind);
    });
  }

  test("event size and event count bounds", () => {
    const big = request({ span: 1, op: { t: "pub", tag: "a", events: [new Uint8Array(EVENT_BYTES_MAX + 1)] } });
    expect(decodeRequestBody(cbor(big)).ok).toBe(false);
    const atMax = request({ span: 1, op: { t: "pub", tag: "a", events: [new Uint8Array(EVENT_BYTES_MAX)] } });
    expect(decodeRequestBody(cbor(atMax)).ok).toBe(true);
    const many = Array.from({ length: REQUEST_EVENTS_MAX + 1 }, () => new Uint8Array(0));
    expect(decodeRequestBody(cbor(request({ span: many.length, op: { t: "pub", tag: "a", events: many } }))).ok).toBe(false);
    const enough = many.slice(1);
    expect(decodeRequestBody(cbor(request({ span: enough.length, op: { t: "pub", tag: "a", events: enough } }))).ok).toBe(true);
  });

  test("malformed and trailing bytes are reported as such", () => {
    const body = encodeRequestBody(request());
    expect(decodeRequestBody(body.subarray(0, body.length - 1))).toMatchObject({ ok: false, error: { kind: "malformed-cbor" } });
    const trailing = new Uint8Array(body.length + 1);
    trailing.set(body);
    expect(decodeRequestBody(trailing)).toMatchObject({ ok: false, error: { kind: "trailing-bytes" } });
  });
});

describe("the bytes signatures and MACs cover", () => {
  test("signingInput is utf8(domain) || 0x00 || bytes", () => {
    expect(hex(signingInput("ab", new Uint8Array([1, 2])))).toBe("6162000102");
    const body = new Uint8Array([0xa0]);
    expect(hex(requestSigningInput(body))).toBe(`${Buffer.from(DOMAIN_REQUEST).toString("hex")}00a0`);
  });

  test("sessionTranscript encodes {hello, ack without sig}", () => {
    const hello = { v: 3 as const, role: "client" as const, key: KEY, nonce: KEY2, eph: KEY };
    const ack = { v: 3 as const, replica: 0, key: KEY2, nonce: KEY, eph: KEY2, sig: SIG };
    const { sig: _sig, ...unsigned } = ack;
    const expected = cbor({ hello, ack: unsigned });
    expect(hex(sessionTranscript(hello, ack))).toBe(hex(expected));
    expect(hex(sessionTranscript(hello, unsigned))).toBe(hex(expected));
  });

  test("peerMacInput is domain || 0x00 || type || u64be(seq) || msg", () => {
    const input = peerMacInput(FrameType.PEER, 2 ** 32 + 5, new Uint8Array([0xee]));
    const domain = Buffer.from("fitb/v1/peer-mac").toString("hex");
    expect(hex(input)).toBe(`${domain}00400000000100000005ee`);
    expect(() => peerMacInput(FrameType.PEER, 0, new Uint8Array(0))).toThrow(RangeError);
    expect(() => peerMacInput(FrameType.REQUEST, 1, new Uint8Array(0))).toThrow(RangeError);
  });

  test("encodeTypedFrame equals encodeFrame of the canonical body", () => {
    const frame: Frame = { type: FrameType.PING, body: { n: 1 } };
    expect(hex(encodeTypedFrame(frame))).toBe(hex(encodeFrame(FrameType.PING, cbor({ n: 1 }))));
    const code: FrameTypeCode = frame.type;
    expect(code).toBe(5);
  });
});
