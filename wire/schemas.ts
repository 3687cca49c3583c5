/**
 * One zod schema per frame type: the executable specification of every payload, and the
 * boundary check for everything that arrives from outside. A payload is first decoded as
 * canonical CBOR (canonical.ts), then checked here; only then is it a typed frame.
 */
import { z } from "zod";
import { type Canonical, CanonicalError, decodeCanonical, encodeCanonical, encodeCanonicalAfter } from "./canonical.ts";
import { writeFrameHeader } from "./frame.ts";
import { fastEvents, fastPeer, fastPublishReply, fastPublishRequest, fastRequestFrame } from "./hot.ts";
import {
  DIGEST_BYTES,
  ERROR_CODES,
  EVENTS_SUBS_MAX,
  EVENT_BYTES_MAX,
  FRAME_BYTES_MAX,
  FRAME_HEADER_BYTES,
  FrameType,
  type FrameTypeCode,
  KEY_BYTES,
  MAC_BYTES,
  NONCE_BYTES,
  PROTOCOL_VERSION,
  PROTOCOL_VERSION_MIN,
  REASON_BYTES_MAX,
  REPLICAS_MAX,
  REQUEST_VERSION,
  REQUEST_VERSION_MIN,
  REQUEST_EVENTS_MAX,
  SIGNATURE_BYTES,
  SUB_END_CODES,
  TAG_BYTES_MAX,
  TAG_PATTERN,
  type WireError,
  X25519_KEY_BYTES,
  frameTypeName,
  wireError,
} from "./types.ts";

// ---------------------------------------------------------------------------------------
// Field schemas
// ---------------------------------------------------------------------------------------

/** An unsigned integer. Decoded CBOR integers are always safe integers. */
export const uintSchema = z.int().min(0);
/** An unsigned integer of at least 1 (sequence numbers, spans). */
export const positiveSchema = z.int().min(1);

function bytesExactly(n: number) {
  return z.custom<Uint8Array>((v) => v instanceof Uint8Array && v.length === n, { error: `expected a ${n}-byte string` });
}

function bytesAtMost(max: number, min = 0) {
  return z.custom<Uint8Array>((v) => v instanceof Uint8Array && v.length >= min && v.length <= max, {
    error: `expected a byte string of ${min}..${max} bytes`,
  });
}

const utf8 = new TextEncoder();

/** Text bounded in UTF-8 bytes (not UTF-16 units), as PROTOCOL.md states bounds. */
function textAtMostBytes(max: number) {
  return z.string().refine((s) => s.length <= max && utf8.encode(s).length <= max, { error: `expected at most ${max} UTF-8 bytes` });
}

export const keySchema = bytesExactly(KEY_BYTES);
export const nonceSchema = bytesExactly(NONCE_BYTES);
export const signatureSchema = bytesExactly(SIGNATURE_BYTES);
export const x25519KeySchema = bytesExactly(X25519_KEY_BYTES);
export const macSchema = bytesExactly(MAC_BYTES);
export const digestSchema = bytesExactly(DIGEST_BYTES);
export const eventSchema = bytesAtMost(EVENT_BYTES_MAX);
export const reasonSchema = textAtMostBytes(REASON_BYTES_MAX);

/** A channel tag: dot-separated segments of [a-z0-9_-]+, at most TAG_BYTES_MAX bytes. */
export const tagSchema = z.string().max(TAG_BYTES_MAX).regex(TAG_PATTERN, { error: "expected dot-separated segments of [a-z0-9_-]+" });

export const errorCodeSchema = z.enum(ERROR_CODES);
export const subEndCodeSchema = z.enum(SUB_END_CODES);

/** Any decoded canonical value (used where the payload is open, e.g. query results). */
const canonicalSchema = z.custom<Canonical>((v) => v !== undefined, { error: "expected a value" });

/** A replica's host name or IP literal in a membership command (what a cluster file allows), and its ports. */
const HOST_BYTES_MAX = 253;
const PORT_NUMBER_MAX = 65_535;

// ---------------------------------------------------------------------------------------
// Request body (what a client signs; carried as REQUEST.body)
// ---------------------------------------------------------------------------------------

export const channelClassFields = {
  fault: z.enum(["crash", "byzantine"]),
  order: z.enum(["none", "total"]),
  priority: z.enum(["low", "normal", "high", "critical"]),
} as const;

export const adminCmdSchema = z.discriminatedUnion("t", [
  z.strictObject({ t: z.literal("create-channel"), tag: tagSchema, ...channelClassFields, public: z.boolean() }),
  z.strictObject({ t: z.literal("destroy-channel"), tag: tagSchema }),
  z.strictObject({
    t: z.literal("register"),
    tag: tagSchema,
    role: z.enum(["publisher", "subscriber"]),
    key: keySchema,
  }),
  z.strictObject({
    t: z.literal("unregister"),
    tag: tagSchema,
    role: z.enum(["publisher", "subscriber"]),
    key: keySchema,
  }),
  // A key's own limits; a limit left out keeps the cluster default; none at all removes the quota.
  z.strictObject({
    t: z.literal("set-quota"),
    key: keySchema,
    eventsPerSecond: positiveSchema.optional(),
    bytesPerSecond: positiveSchema.optional(),
    subscriptions: positiveSchema.optional(),
  }),
  // Membership (PROTOCOL.md section 6.4): decided like the others, effective at the next checkpoint boundary.
  z.strictObject({
    t: z.literal("add-replica"),
    id: z
      .int()
      .min(0)
      .max(REPLICAS_MAX - 1),
    host: z.string().min(1).max(HOST_BYTES_MAX),
    port: z.int().min(1).max(PORT_NUMBER_MAX),
    peerPort: z.int().min(1).max(PORT_NUMBER_MAX).optional(),
    key: keySchema,
  }),
  z.strictObject({
    t: z.literal("remove-replica"),
    id: z
      .int()
      .min(0)
      .max(REPLICAS_MAX - 1),
  }),
  z.strictObject({
    t: z.literal("rotate-replica-key"),
    id: z
      .int()
      .min(0)
      .max(REPLICAS_MAX - 1),
    key: keySchema,
  }),
  z.strictObject({
    t: z.literal("set-f"),
    f: z
      .int()
      .min(0)
      .max(Math.floor((REPLICAS_MAX - 1) / 3)),
  }),
]);

export const pubOpSchema = z.strictObject({
  t: z.literal("pub"),
  tag: tagSchema,
  events: z.array(eventSchema).min(1).max(REQUEST_EVENTS_MAX),
});

export const adminOpSchema = z.strictObject({ t: z.literal("admin"), cmd: adminCmdSchema });

export const opSchema = z.discriminatedUnion("t", [pubOpSchema, adminOpSchema]);

export const requestSchema = z
  .strictObject({
    v: z.union([z.literal(REQUEST_VERSION_MIN), z.literal(REQUEST_VERSION)]),
    client: keySchema,
    seq: positiveSchema,
    span: positiveSchema,
    ts: uintSchema,
    op: opSchema,
  })
  .superRefine((req, ctx) => {
    const expectedSpan = req.op.t === "pub" ? req.op.events.length : 1;
    if (req.span !== expectedSpan) {
      ctx.addIssue({ code: "custom", path: ["span"], message: `span must be ${expectedSpan}, got ${req.span}` });
    }
    // The last publisher sequence number, seq + span - 1, must stay a safe integer.
    if (req.seq > Number.MAX_SAFE_INTEGER - req.span + 1) {
      ctx.addIssue({ code: "custom", path: ["seq"], message: "seq + span - 1 exceeds 2^53 - 1" });
    }
  });

export type AdminCmd = z.infer<typeof adminCmdSchema>;
export type PubOp = z.infer<typeof pubOpSchema>;
export type AdminOp = z.infer<typeof adminOpSchema>;
export type Op = z.infer<typeof opSchema>;
export type Request = z.infer<typeof requestSchema>;
export type ChannelFault = z.infer<typeof channelClassFields.fault>;
export type ChannelOrder = z.infer<typeof channelClassFields.order>;
export type ChannelPriority = z.infer<typeof channelClassFields.priority>;

/**
 * Whether a decoded value is a map (decodeCanonical makes plain objects of maps). zod
 * takes a Uint8Array for an object, and a strict object schema then walks every byte of it
 * as an unrecognized key: a 4 MiB byte string where a map belongs held the event loop for
 * 3.5 s and built a reason of megabytes. So every map of a frame is checked to be one
 * before its schema looks inside: a frame's payload and a request body here
 * (decodeFrameBody, decodeRequestBody), a map inside a map through `mapGuard`. A map that
 * is the option of a discriminated union needs neither: the union reads its discriminator
 * and refuses anything else at once.
 */
export function isMap(value: unknown): value is { readonly [key: string]: unknown } {
  return typeof value === "object" && value !== null && Object.getPrototypeOf(value) === Object.prototype;
}

/** The check in front of a map inside a map: refused at once when it is not one (then its schema judges it). */
export function mapGuard<T>() {
  return z.custom<T>(isMap, { error: "expected a map", abort: true });
}

/** The signed envelope: canonical Request bytes and the client's signature over them. */
export const signedRequestSchema = z.strictObject({
  body: bytesAtMost(FRAME_BYTES_MAX, 1),
  sig: signatureSchema,
});
export type SignedRequest = z.infer<typeof signedRequestSchema>;
/** A SignedRequest inside another map (an EVENTS frame's `req`). */
const signedRequestField = mapGuard<z.input<typeof signedRequestSchema>>().pipe(signedRequestSchema);

// ---------------------------------------------------------------------------------------
// Frame payload schemas
// ---------------------------------------------------------------------------------------

/** HELLO and HELLO_ACK: any version a responder serves (checkVersion refuses the others first, with its own error). */
const version = z.number().int().min(PROTOCOL_VERSION_MIN).max(PROTOCOL_VERSION);

/**
 * Digests of the sections of the cluster file every replica must share (sent by a
 * replica in its peer HELLO; src/config/digest.ts says what each covers).
 */
export const configDigestsSchema = z.strictObject({
  group: digestSchema,
  admins: digestSchema,
  clients: digestSchema,
  limits: digestSchema,
  retention: digestSchema,
  /** The first group's hosts and ports: sent while the group is still the cluster file's first (src/config/digest.ts). */
  addrs: digestSchema.optional(),
});
export type ConfigDigests = z.infer<typeof configDigestsSchema>;

export const helloSchema = z.discriminatedUnion("role", [
  z.strictObject({ v: version, role: z.literal("client"), key: keySchema, nonce: nonceSchema, eph: x25519KeySchema }),
  z.strictObject({
    v: version,
    role: z.literal("replica"),
    replica: uintSchema,
    key: keySchema,
    nonce: nonceSchema,
    eph: x25519KeySchema,
    cfg: mapGuard<z.input<typeof configDigestsSchema>>().pipe(configDigestsSchema).optional(),
  }),
]);

/** Both roles exchange ephemeral X25519 keys (since version 2; PROTOCOL.md 5.2, 5.3). */
export const helloAckSchema = z.strictObject({
  v: version,
  replica: uintSchema,
  key: keySchema,
  nonce: nonceSchema,
  eph: x25519KeySchema,
  sig: signatureSchema,
});

export const authSchema = z.strictObject({ sig: signatureSchema });

export const errorSchema = z.strictObject({ code: errorCodeSchema, reason: reasonSchema, ref: uintSchema.optional() });

export const pingSchema = z.strictObject({ n: uintSchema });
export const pongSchema = z.strictObject({ n: uintSchema });

/**
 * A REQUEST frame: the SignedRequest, and `after`, outside the signature: "judge this on
 * state that has executed at least decided seq `after`" (read-your-writes after an admin
 * command; PROTOCOL.md section 6.3). It is a hint for when to answer, never a command.
 */
export const requestFrameSchema = signedRequestSchema.extend({ after: uintSchema.optional() });
export type RequestFrame = z.infer<typeof requestFrameSchema>;

/** What a successful publish or admin command produced; identical at every correct replica. */
export const replyResultSchema = z.discriminatedUnion("t", [
  z.strictObject({ t: z.literal("pub"), tag: tagSchema, span: positiveSchema, first: uintSchema.optional() }),
  // `at`: the decided seq at which the command executed, the same at every correct replica.
  z.strictObject({
    t: z.literal("admin"),
    cmd: z.enum([
      "create-channel",
      "destroy-channel",
      "register",
      "unregister",
      "set-quota",
      "add-replica",
      "remove-replica",
      "rotate-replica-key",
      "set-f",
    ]),
    at: uintSchema.optional(),
  }),
]);

/**
 * `d` is sha256 of the request body the reply answers: it binds a reply to one exact
 * request, so a client whose sequence number was already used by another body learns it
 * (REPLAY) instead of taking the old request's reply for its own.
 */
export const replySchema = z.discriminatedUnion("ok", [
  z.strictObject({
    seq: positiveSchema,
    replica: uintSchema,
    d: digestSchema,
    ok: z.literal(true),
    res: replyResultSchema,
    at: uintSchema.optional(),
  }),
  z.strictObject({
    seq: positiveSchema,
    replica: uintSchema,
    d: digestSchema,
    ok: z.literal(false),
    code: errorCodeSchema,
    reason: reasonSchema,
    at: uintSchema.optional(),
  }),
]);

export const QUERY_KINDS = ["status", "list-channels", "client-seq", "channel-info", "publishers", "quotas", "members"] as const;

// `after` (QUERY, SUBSCRIBE) and `at` (QUERY_REPLY, SUB_OK, SUB_END, REPLY) carry decided
// seqs for read-your-writes: PROTOCOL.md section 6.3.
export const querySchema = z.discriminatedUnion("q", [
  z.strictObject({ id: uintSchema, q: z.literal(["status", "list-channels"]), after: uintSchema.optional() }),
  // The sequence space of publishes is per (client, tag); without a tag, the admin space.
  z.strictObject({ id: uintSchema, q: z.literal("client-seq"), tag: tagSchema.optional(), after: uintSchema.optional() }),
  // `keys`: also list the channel's registered publisher and subscriber keys.
  z.strictObject({
    id: uintSchema,
    q: z.literal("channel-info"),
    tag: tagSchema,
    keys: z.literal(true).optional(),
    after: uintSchema.optional(),
  }),
  // The keys registered as publishers of a channel: what subscribers of crash-fault channels filter by.
  z.strictObject({ id: uintSchema, q: z.literal("publishers"), tag: tagSchema, after: uintSchema.optional() }),
  // The client keys with a quota of their own (set-quota) and their limits.
  z.strictObject({ id: uintSchema, q: z.literal("quotas"), after: uintSchema.optional() }),
  // The replica group: its epoch, f, members and any pending change (replicated state).
  // `start`: also the checkpoint the current epoch started from (what a joining replica starts at).
  z.strictObject({ id: uintSchema, q: z.literal("members"), after: uintSchema.optional(), start: z.literal(true).optional() }),
]);

export const queryReplySchema = z.discriminatedUnion("ok", [
  z.strictObject({ id: uintSchema, replica: uintSchema, ok: z.literal(true), res: canonicalSchema, at: uintSchema.optional() }),
  z.strictObject({
    id: uintSchema,
    replica: uintSchema,
    ok: z.literal(false),
    code: errorCodeSchema,
    reason: reasonSchema,
    at: uintSchema.optional(),
  }),
]);

/** A replica's notice that its group entered a membership epoch (PROTOCOL.md 4.14): a client reads `members`, nothing more. */
export const epochSchema = z.strictObject({ replica: uintSchema, epoch: uintSchema });

export const subscribeSchema = z.strictObject({
  sub: uintSchema,
  tag: tagSchema,
  from: uintSchema.optional(),
  after: uintSchema.optional(),
  /** Version 4: this subscription's live batches may come in EVENTS frames naming several subscriptions (`subs`). */
  shared: z.literal(true).optional(),
});
export const unsubscribeSchema = z.strictObject({ sub: uintSchema });
export const subOkSchema = z.strictObject({ sub: uintSchema, replica: uintSchema, next: uintSchema.optional(), at: uintSchema.optional() });

/** One subscription's EVENTS: what a subscription sees, whichever form the frame had. */
export const eventsSchema = z.strictObject({
  sub: uintSchema,
  tag: tagSchema,
  seq: uintSchema,
  req: signedRequestField,
  replica: uintSchema,
});

/** Subscription ids of a shared EVENTS frame: at least two, in ascending order (so each once). */
const eventsSubsSchema = z
  .array(uintSchema)
  .min(2)
  .max(EVENTS_SUBS_MAX)
  .refine((subs) => subs.every((sub, i) => i === 0 || sub > (subs[i - 1] as number)), "subs must be ascending and distinct");

/** The EVENTS frame: one subscription (`sub`), or, version 4, several shared ones (`subs`). */
export const eventsFrameSchema = z.union([
  eventsSchema.extend({ subs: z.undefined().optional() }),
  z.strictObject({
    sub: z.undefined().optional(),
    subs: eventsSubsSchema,
    tag: tagSchema,
    seq: uintSchema,
    req: signedRequestField,
    replica: uintSchema,
  }),
]);

export const subEndSchema = z.strictObject({
  sub: uintSchema,
  replica: uintSchema,
  code: subEndCodeSchema,
  reason: reasonSchema,
  oldest: uintSchema.optional(),
  at: uintSchema.optional(),
});

export const peerSchema = z.strictObject({
  seq: positiveSchema,
  msg: bytesAtMost(FRAME_BYTES_MAX),
  mac: macSchema,
});

export type Hello = z.infer<typeof helloSchema>;
export type HelloAck = z.infer<typeof helloAckSchema>;
export type Auth = z.infer<typeof authSchema>;
export type ErrorBody = z.infer<typeof errorSchema>;
export type Ping = z.infer<typeof pingSchema>;
export type Pong = z.infer<typeof pongSchema>;
export type ReplyResult = z.infer<typeof replyResultSchema>;
export type Reply = z.infer<typeof replySchema>;
export type QueryKind = (typeof QUERY_KINDS)[number];
export type Query = z.infer<typeof querySchema>;
export type QueryReply = z.infer<typeof queryReplySchema>;
export type EpochNotice = z.infer<typeof epochSchema>;
export type Subscribe = z.infer<typeof subscribeSchema>;
export type Unsubscribe = z.infer<typeof unsubscribeSchema>;
export type SubOk = z.infer<typeof subOkSchema>;
export type Events = z.infer<typeof eventsSchema>;
export type EventsFrame = z.infer<typeof eventsFrameSchema>;
export type SubEnd = z.infer<typeof subEndSchema>;
export type Peer = z.infer<typeof peerSchema>;

/** The payload type of each frame type. */
export interface FrameBodies {
  [FrameType.HELLO]: Hello;
  [FrameType.HELLO_ACK]: HelloAck;
  [FrameType.AUTH]: Auth;
  [FrameType.ERROR]: ErrorBody;
  [FrameType.PING]: Ping;
  [FrameType.PONG]: Pong;
  [FrameType.REQUEST]: RequestFrame;
  [FrameType.REPLY]: Reply;
  [FrameType.QUERY]: Query;
  [FrameType.QUERY_REPLY]: QueryReply;
  [FrameType.EPOCH]: EpochNotice;
  [FrameType.SUBSCRIBE]: Subscribe;
  [FrameType.UNSUBSCRIBE]: Unsubscribe;
  [FrameType.SUB_OK]: SubOk;
  [FrameType.EVENTS]: EventsFrame;
  [FrameType.SUB_END]: SubEnd;
  [FrameType.PEER]: Peer;
}

/** A decoded, validated frame; `switch (frame.type)` narrows `body`. */
export type Frame = { [K in FrameTypeCode]: { readonly type: K; readonly body: FrameBodies[K] } }[FrameTypeCode];

/** The schema of each frame type's payload. */
export const FRAME_SCHEMAS: { readonly [K in FrameTypeCode]: z.ZodType<FrameBodies[K]> } = {
  [FrameType.HELLO]: helloSchema,
  [FrameType.HELLO_ACK]: helloAckSchema,
  [FrameType.AUTH]: authSchema,
  [FrameType.ERROR]: errorSchema,
  [FrameType.PING]: pingSchema,
  [FrameType.PONG]: pongSchema,
  [FrameType.REQUEST]: requestFrameSchema,
  [FrameType.REPLY]: replySchema,
  [FrameType.QUERY]: querySchema,
  [FrameType.QUERY_REPLY]: queryReplySchema,
  [FrameType.EPOCH]: epochSchema,
  [FrameType.SUBSCRIBE]: subscribeSchema,
  [FrameType.UNSUBSCRIBE]: unsubscribeSchema,
  [FrameType.SUB_OK]: subOkSchema,
  [FrameType.EVENTS]: eventsFrameSchema,
  [FrameType.SUB_END]: subEndSchema,
  [FrameType.PEER]: peerSchema,
};

/**
 * The most values (decodeCanonical's items: every CBOR item but a map key) a frame of a
 * fixed shape holds: the largest, a replica's HELLO with its config digests, holds 13, so
 * this leaves room for fields a later version adds. The payload is decoded whole before
 * its schema is checked, so without a bound a frame of a fixed shape with one more field
 * of four million empty arrays costs its receiver four million allocations before it is
 * refused; with it, the decoder stops after this many.
 */
export const FRAME_ITEMS_MAX = 64;
/** EVENTS: the fixed fields and up to EVENTS_SUBS_MAX subscription ids (`subs`). */
export const EVENTS_FRAME_ITEMS_MAX = EVENTS_SUBS_MAX + FRAME_ITEMS_MAX;
/**
 * A Request body: its fixed fields (an admin command's included) and up to
 * REQUEST_EVENTS_MAX events, each a value of its own.
 */
export const REQUEST_BODY_ITEMS_MAX = REQUEST_EVENTS_MAX + FRAME_ITEMS_MAX;

/**
 * The values a frame of `type` may hold at most: FRAME_ITEMS_MAX but for EVENTS
 * (EVENTS_FRAME_ITEMS_MAX) and QUERY_REPLY, whose `res` is open (a listing of every
 * channel), unbounded here: the client bounds a replica's QUERY_REPLY by the largest
 * answer a correct replica gives (src/client/replica-frames.ts, QUERY_REPLY_ITEMS_MAX).
 */
export function frameItemsMax(type: FrameTypeCode): number {
  if (type === FrameType.QUERY_REPLY) return Number.POSITIVE_INFINITY;
  if (type === FrameType.EVENTS) return EVENTS_FRAME_ITEMS_MAX;
  return FRAME_ITEMS_MAX;
}

/** Frames whose `v` field is checked first, so a version mismatch gets its own error. */
const VERSIONED_FRAME_TYPES: ReadonlySet<number> = new Set([FrameType.HELLO, FrameType.HELLO_ACK]);

// ---------------------------------------------------------------------------------------
// Decoding and encoding
// ---------------------------------------------------------------------------------------

export type FrameResult = { readonly ok: true; readonly frame: Frame } | { readonly ok: false; readonly error: WireError };
export type RequestResult = { readonly ok: true; readonly request: Request } | { readonly ok: false; readonly error: WireError };

/**
 * Decodes and validates one frame payload. Never throws. Byte strings in the result are
 * views into `payload` (see decodeCanonical). Errors are per frame and not fatal: the
 * stream stays in step, though the runtime may still close a hostile connection. The
 * decoding stops at `itemsMax` values, by default frameItemsMax(type) (a `malformed-cbor`
 * error, "items-exceeded"): a reader that knows a tighter bound for an open frame gives it.
 */
export function decodeFrameBody(type: number, payload: Uint8Array, itemsMax?: number): FrameResult {
  const name = frameTypeName(type);
  if (name === undefined) return { ok: false, error: wireError("unknown-type", `no frame type 0x${hexByte(type)}`) };
  const code = FrameType[name];
  const parsed = parseCanonical(payload, name, itemsMax ?? frameItemsMax(code));
  if (!parsed.ok) return parsed;
  if (!isMap(parsed.value)) return { ok: false, error: notAMap(name) };
  if (VERSIONED_FRAME_TYPES.has(code)) {
    const versionError = checkVersion(parsed.value, name, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN);
    if (versionError !== null) return { ok: false, error: versionError };
  }
  const fast = FAST_FRAME_CHECKS[code]?.(parsed.value) ?? null;
  if (fast !== null) return { ok: true, frame: { type: code, body: fast } as Frame };
  const result = FRAME_SCHEMAS[code].safeParse(parsed.value);
  if (!result.success) return { ok: false, error: schemaError(name, result.error) };
  return { ok: true, frame: { type: code, body: result.data } as Frame };
}

/**
 * The hot frames' hand-written checks (hot.ts): what they accept, the schema would too;
 * what they do not cover (null) goes through the schema, for its exact verdict and message.
 */
const FAST_FRAME_CHECKS: { readonly [K in FrameTypeCode]?: (value: Canonical) => FrameBodies[K] | null } = {
  [FrameType.REQUEST]: fastRequestFrame,
  [FrameType.PEER]: fastPeer,
  [FrameType.EVENTS]: fastEvents,
  [FrameType.REPLY]: fastPublishReply,
};

/** Decodes and validates a Request body (the bytes a client signed). Never throws. */
export function decodeRequestBody(body: Uint8Array): RequestResult {
  const parsed = parseCanonical(body, "request body", REQUEST_BODY_ITEMS_MAX);
  if (!parsed.ok) return parsed;
  if (!isMap(parsed.value)) return { ok: false, error: notAMap("request body") };
  const versionError = checkVersion(parsed.value, "request body", REQUEST_VERSION, REQUEST_VERSION_MIN);
  if (versionError !== null) return { ok: false, error: versionError };
  const fast = fastPublishRequest(parsed.value);
  if (fast !== null) return { ok: true, request: fast };
  const result = requestSchema.safeParse(parsed.value);
  if (!result.success) return { ok: false, error: schemaError("request body", result.error) };
  return { ok: true, request: result.data };
}

/** The canonical bytes of a Request: the exact bytes a client signs and sends as REQUEST.body. */
export function encodeRequestBody(request: Request): Uint8Array {
  return encodeCanonical(request as unknown as Canonical);
}

/** The canonical payload of a frame body (no framing). */
export function encodeFrameBody(frame: Frame): Uint8Array {
  return encodeCanonical(frame.body as unknown as Canonical);
}

/**
 * A complete frame on the wire: header and canonical payload. The body is not validated
 * here (that would double the cost on the fan-out path); it must be built from the typed
 * fields, and the tests check that every frame kind survives decodeFrameBody.
 */
export function encodeTypedFrame(frame: Frame, frameBytesMax: number = FRAME_BYTES_MAX): Uint8Array {
  const bytes = encodeCanonicalAfter(FRAME_HEADER_BYTES, frame.body as unknown as Canonical);
  writeFrameHeader(bytes, frame.type, frameBytesMax);
  return bytes;
}

/**
 * A frame with `trailerBytes` zero bytes reserved after its payload and counted in its
 * length field, for a session MAC written in place (PROTOCOL.md 5.2). `frameBytesMax`
 * bounds the frame without the trailer: the MAC does not count against the frame limit.
 */
export function encodeTypedFrameWithTrailer(frame: Frame, trailerBytes: number, frameBytesMax: number = FRAME_BYTES_MAX): Uint8Array {
  const bytes = encodeCanonicalAfter(FRAME_HEADER_BYTES, frame.body as unknown as Canonical, trailerBytes);
  writeFrameHeader(bytes, frame.type, frameBytesMax + trailerBytes);
  return bytes;
}

function parseCanonical(
  bytes: Uint8Array,
  what: string,
  itemsMax: number,
): { ok: true; value: Canonical } | { ok: false; error: WireError } {
  try {
    return { ok: true, value: decodeCanonical(bytes, itemsMax) };
  } catch (e) {
    if (!(e instanceof CanonicalError)) {
      return { ok: false, error: wireError("malformed-cbor", `${what}: ${String(e)}`) };
    }
    const kind = e.code === "trailing-bytes" ? "trailing-bytes" : "malformed-cbor";
    return { ok: false, error: wireError(kind, `${what}: ${e.code} at byte ${e.offset}: ${e.message}`) };
  }
}

/** `supported` down to `oldest`: the versions accepted. */
function checkVersion(value: Canonical, what: string, supported: number, oldest: number): WireError | null {
  if (value === null || typeof value !== "object" || Array.isArray(value) || value instanceof Uint8Array) return null;
  const v = value.v;
  if (typeof v === "number" && (v > supported || v < oldest)) {
    const hint = supported === PROTOCOL_VERSION && v < oldest ? `; ${olderVersionHint(v)}` : "";
    const range = oldest === supported ? `this is version ${supported}` : `this is version ${supported}, serving ${oldest} and up`;
    return wireError("bad-version", `${what}: version ${v} is not supported (${range}${hint})`);
  }
  return null;
}

/** Why an older session is refused, for the operator who sees the error. */
function olderVersionHint(v: number): string {
  const mac = v < 2 ? "since version 2 every client frame after the handshake carries a MAC, and " : "";
  return `${mac}since version 3 a client frame's MAC covers the SHA-256 of its payload: upgrade the client or replica`;
}

/** Every frame payload and request body is a map: anything else is refused before a schema sees it (isMap). */
function notAMap(what: string): WireError {
  return wireError("schema", `${what}: (payload): expected a map`);
}

/** Issues beyond this many are summarised, so a reason stays short. */
const SCHEMA_ISSUES_REPORTED_MAX = 3;

function schemaError(what: string, error: z.ZodError): WireError {
  const issues = error.issues.slice(0, SCHEMA_ISSUES_REPORTED_MAX).map((issue) => {
    const path = issue.path.length > 0 ? issue.path.map(String).join(".") : "(payload)";
    return `${path}: ${issue.message}`;
  });
  const more = error.issues.length - issues.length;
  return wireError("schema", `${what}: ${issues.join("; ")}${more > 0 ? `; and ${more} more` : ""}`);
}

function hexByte(n: number): string {
  return n.toString(16).padStart(2, "0");
}
