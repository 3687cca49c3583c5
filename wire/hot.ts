/**
 * Hand-written code for the payloads on the hot path: checks: a publish request body, and the
 * REQUEST, PEER, EVENTS and successful publish REPLY frames. They accept exactly what the
 * zod schemas of schemas.ts accept for those shapes (test/unit/wire-hot.test.ts fuzzes one
 * against the other) at a fraction of the cost, which matters because a request body is
 * checked at every replica for every request, and a publish carries up to thousands of
 * events, each of which zod checks with a closure call.
 *
 * Each check answers the typed value, or null: "not this fast shape". null is not a
 * refusal; the caller then runs the zod schema, which either accepts a shape the fast path
 * does not cover (admin commands, refusals) or refuses with its precise message. So these
 * checks must never accept anything zod refuses, and that is what the test pins.
 */
import { writeUint32BE } from "./bytes.ts";
import { type Canonical, encodeCanonical } from "./canonical.ts";
import type { EventsFrame, Peer, Reply, Request, RequestFrame } from "./schemas.ts";
import {
  DIGEST_BYTES,
  EVENT_BYTES_MAX,
  EVENTS_SUBS_MAX,
  FRAME_BYTES_MAX,
  FRAME_HEADER_BYTES,
  FRAME_LENGTH_BYTES,
  FrameType,
  KEY_BYTES,
  MAC_BYTES,
  REQUEST_EVENTS_MAX,
  REQUEST_VERSION,
  REQUEST_VERSION_MIN,
  SIGNATURE_BYTES,
  TAG_BYTES_MAX,
  TAG_PATTERN,
} from "./types.ts";

type CanonicalMap = { [key: string]: Canonical };

/** A decoded map (not an array, byte string or null). */
function isMap(value: Canonical | undefined): value is CanonicalMap {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array);
}

/** Own enumerable keys of a decoded map: the decoder makes only those. */
function keyCount(map: CanonicalMap): number {
  let count = 0;
  for (const _ in map) count++;
  return count;
}

function isUint(value: Canonical | undefined): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

function isPositive(value: Canonical | undefined): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 1;
}

function isBytes(value: Canonical | undefined, length: number): value is Uint8Array {
  return value instanceof Uint8Array && value.length === length;
}

function isBytesWithin(value: Canonical | undefined, min: number, max: number): value is Uint8Array {
  return value instanceof Uint8Array && value.length >= min && value.length <= max;
}

function isTag(value: Canonical | undefined): value is string {
  return typeof value === "string" && value.length <= TAG_BYTES_MAX && TAG_PATTERN.test(value);
}

/** A publish request body (requestSchema with a pub op), or null. */
export function fastPublishRequest(value: Canonical): Request | null {
  if (!isMap(value) || keyCount(value) !== 6) return null;
  const { v, client, seq, span, ts, op } = value;
  if (
    (v !== REQUEST_VERSION && v !== REQUEST_VERSION_MIN) ||
    !isBytes(client, KEY_BYTES) ||
    !isPositive(seq) ||
    !isPositive(span) ||
    !isUint(ts)
  )
    return null;
  if (!isMap(op) || keyCount(op) !== 3 || op["t"] !== "pub" || !isTag(op["tag"])) return null;
  const events = op["events"];
  if (!Array.isArray(events) || events.length < 1 || events.length > REQUEST_EVENTS_MAX) return null;
  for (let i = 0; i < events.length; i++) if (!isBytesWithin(events[i], 0, EVENT_BYTES_MAX)) return null;
  // requestSchema's refinements: the span is the number of events, and seq + span - 1 stays safe.
  if (span !== events.length || seq > Number.MAX_SAFE_INTEGER - span + 1) return null;
  return value as unknown as Request;
}

/** The signed envelope {body, sig} (signedRequestSchema), or null. */
function isSignedRequest(value: Canonical | undefined): boolean {
  return (
    isMap(value) && keyCount(value) === 2 && isBytesWithin(value["body"], 1, FRAME_BYTES_MAX) && isBytes(value["sig"], SIGNATURE_BYTES)
  );
}

/** A REQUEST frame body (requestFrameSchema), or null. */
export function fastRequestFrame(value: Canonical): RequestFrame | null {
  if (!isMap(value)) return null;
  const count = keyCount(value);
  const after = value["after"];
  if (after === undefined ? count !== 2 : count !== 3 || !isUint(after)) return null;
  if (!isBytesWithin(value["body"], 1, FRAME_BYTES_MAX) || !isBytes(value["sig"], SIGNATURE_BYTES)) return null;
  return value as unknown as RequestFrame;
}

/** A PEER frame body (peerSchema), or null. */
export function fastPeer(value: Canonical): Peer | null {
  if (!isMap(value) || keyCount(value) !== 3) return null;
  if (!isPositive(value["seq"]) || !isBytesWithin(value["msg"], 0, FRAME_BYTES_MAX) || !isBytes(value["mac"], MAC_BYTES)) return null;
  return value as unknown as Peer;
}

/** An EVENTS frame body (eventsFrameSchema: `sub`, or `subs` ascending), or null. */
export function fastEvents(value: Canonical): EventsFrame | null {
  if (!isMap(value) || keyCount(value) !== 5) return null;
  if (!isTag(value["tag"]) || !isUint(value["seq"]) || !isUint(value["replica"])) return null;
  if (!isUint(value["sub"]) && !isSubs(value["subs"])) return null;
  if (!isSignedRequest(value["req"])) return null;
  return value as unknown as EventsFrame;
}

function isSubs(value: Canonical | undefined): boolean {
  if (!Array.isArray(value) || value.length < 2 || value.length > EVENTS_SUBS_MAX) return false;
  let previous = -1;
  for (let i = 0; i < value.length; i++) {
    const sub = value[i];
    if (!isUint(sub) || sub <= previous) return false;
    previous = sub;
  }
  return true;
}

/** A successful publish REPLY (replySchema, ok: true, a pub result), or null. */
export function fastPublishReply(value: Canonical): Reply | null {
  if (!isMap(value) || value["ok"] !== true) return null;
  const count = keyCount(value);
  const at = value["at"];
  if (at === undefined ? count !== 5 : count !== 6 || !isUint(at)) return null;
  if (!isPositive(value["seq"]) || !isUint(value["replica"]) || !isBytes(value["d"], DIGEST_BYTES)) return null;
  const res = value["res"];
  if (!isMap(res) || res["t"] !== "pub" || !isTag(res["tag"]) || !isPositive(res["span"])) return null;
  const first = res["first"];
  if (first === undefined ? keyCount(res) !== 3 : keyCount(res) !== 4 || !isUint(first)) return null;
  return value as unknown as Reply;
}

// ---------------------------------------------------------------------------------------
// EVENTS payloads for fan-out: the batch encoded once, each subscriber's fields after it
// ---------------------------------------------------------------------------------------

/**
 * The part of an EVENTS frame's payload every subscriber of one batch shares: the map's
 * head and, in canonical key order (shorter keys first, then bytewise: req, seq, sub, tag,
 * replica), `req` with the signed body and `seq`. What follows differs per subscription
 * (`sub`) or is small (`tag`, `replica`): eventsRest. The bytes are exactly those
 * encodeTypedFrame writes for the same body (test/unit/wire-hot.test.ts).
 */
export interface EventsPrefix {
  /**
   * The prefix in order: a small head, the request body itself (not copied: a batch may
   * be megabytes, and each replica sends every batch it executes), and a small tail.
   */
  readonly parts: readonly Uint8Array[];
}

const EVENTS_MAP_HEAD = 0xa5; // a map of 5 pairs
const REQ_MAP_HEAD = 0xa2; // { sig, body }: "sig" sorts first (its encoding is shorter)
const KEY_REQ = encodeCanonical("req");
const KEY_SEQ = encodeCanonical("seq");
const KEY_SUB = encodeCanonical("sub");
const KEY_SUBS = encodeCanonical("subs");
const KEY_TAG = encodeCanonical("tag");
const KEY_REPLICA = encodeCanonical("replica");
const KEY_SIG = encodeCanonical("sig");
const KEY_BODY = encodeCanonical("body");

export function eventsPrefix(req: { readonly body: Uint8Array; readonly sig: Uint8Array }, seq: number): EventsPrefix {
  const head = concatParts([
    Uint8Array.of(EVENTS_MAP_HEAD),
    KEY_REQ,
    Uint8Array.of(REQ_MAP_HEAD),
    KEY_SIG,
    byteStringHead(req.sig.length),
    req.sig,
    KEY_BODY,
    byteStringHead(req.body.length),
  ]);
  const tail = concatParts([KEY_SEQ, encodeCanonical(seq)]);
  return { parts: [head, req.body, tail] };
}

/**
 * The last fields of an EVENTS payload, `tag` and `replica`, the same for every subscriber
 * of one fan-out: `bytes` both in a one-subscription frame's order, `tag` and `replica`
 * apart for a shared frame's, where `subs` comes between them.
 */
export interface EventsTail {
  readonly bytes: Uint8Array;
  readonly tag: Uint8Array;
  readonly replica: Uint8Array;
}

export function eventsTail(tag: string, replica: number): EventsTail {
  const tagPart = concatParts([KEY_TAG, encodeCanonical(tag)]);
  const replicaPart = concatParts([KEY_REPLICA, encodeCanonical(replica)]);
  return { bytes: concatParts([tagPart, replicaPart]), tag: tagPart, replica: replicaPart };
}

/**
 * What follows the shared prefix in one subscription's EVENTS payload: `sub`, then the
 * tail. The payload is the prefix's parts || eventsRest(sub, tail), exactly the bytes
 * encodeTypedFrame writes for the same body (test/unit/wire-hot.test.ts); the sender frames
 * it (src/replica/framed.ts sendShared) without copying the prefix per subscriber.
 */
export function eventsRest(sub: number, tail: EventsTail): Uint8Array {
  return concatParts([KEY_SUB, encodeCanonical(sub), tail.bytes]);
}

/**
 * The same for a shared frame naming `subs` (ascending, 2 to EVENTS_SUBS_MAX): in canonical
 * order `tag` (a 3-letter key) comes before `subs`, and `replica` last. The map still has
 * five pairs, so the prefix is the one-subscription frame's.
 */
export function eventsRestShared(subs: readonly number[], tail: EventsTail): Uint8Array {
  return concatParts([tail.tag, KEY_SUBS, encodeCanonical(subs as number[]), tail.replica]);
}

function concatParts(parts: readonly Uint8Array[]): Uint8Array {
  let length = 0;
  for (const part of parts) length += part.length;
  const out = new Uint8Array(length);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// PEER frames: a large message written from where it is, a small one copied once
// ---------------------------------------------------------------------------------------

const PEER_MAP_HEAD = 0xa3; // a map of 3 pairs
const KEY_MAC = encodeCanonical("mac");
const KEY_MSG = encodeCanonical("msg");
const MAJOR_BYTES = 0x40;

/**
 * A whole PEER frame, header and payload `{ seq, msg, mac }`: exactly the bytes
 * encodeTypedFrame writes for the same frame (test/unit/wire-hot.test.ts), with `msg`
 * copied once, into the frame. Throws RangeError for a frame over `frameBytesMax`.
 */
export function encodePeerFrame(seq: number, msg: Uint8Array, mac: Uint8Array, frameBytesMax: number = FRAME_BYTES_MAX): Uint8Array {
  const [head, , tail] = peerFrameParts(seq, msg, mac, frameBytesMax);
  const bytes = new Uint8Array(head.length + msg.length + tail.length);
  bytes.set(head, 0);
  bytes.set(msg, head.length);
  bytes.set(tail, head.length + msg.length);
  return bytes;
}

/**
 * The same PEER frame as three parts written one after another: a head (frame header,
 * map head, MAC, the head of `msg`), `msg` itself, not copied, and a tail (`seq`). A
 * replica sends each consensus message, a proposal of up to a megabyte among them, to
 * every peer under that peer's MAC: the message is written to each socket from where it
 * is (src/net/write-queue.ts enqueueParts). Throws RangeError for a frame over `frameBytesMax`.
 */
export function peerFrameParts(
  seq: number,
  msg: Uint8Array,
  mac: Uint8Array,
  frameBytesMax: number = FRAME_BYTES_MAX,
): [head: Uint8Array, msg: Uint8Array, tail: Uint8Array] {
  const macBytes = encodeCanonical(mac);
  const msgHead = byteStringHead(msg.length);
  const tail = concatParts([KEY_SEQ, encodeCanonical(seq)]);
  const headParts = [KEY_MAC, macBytes, KEY_MSG, msgHead];
  let headLength = FRAME_HEADER_BYTES + 1;
  for (const part of headParts) headLength += part.length;
  const frameLength = headLength + msg.length + tail.length - FRAME_LENGTH_BYTES;
  if (frameLength > frameBytesMax) throw new RangeError(`frame of ${frameLength} bytes is outside 1..${frameBytesMax}`);
  const head = new Uint8Array(headLength);
  let at = FRAME_HEADER_BYTES;
  head[at++] = PEER_MAP_HEAD;
  for (const part of headParts) {
    head.set(part, at);
    at += part.length;
  }
  writeUint32BE(head, 0, frameLength);
  head[FRAME_LENGTH_BYTES] = FrameType.PEER;
  return [head, msg, tail];
}

/** The head of a CBOR byte string of `length` bytes, in shortest form (RFC 8949 §4.2.1). */
function byteStringHead(length: number): Uint8Array {
  if (length < 24) return Uint8Array.of(MAJOR_BYTES | length);
  if (length <= 0xff) return Uint8Array.of(MAJOR_BYTES | 24, length);
  if (length <= 0xffff) return Uint8Array.of(MAJOR_BYTES | 25, length >>> 8, length & 0xff);
  return Uint8Array.of(MAJOR_BYTES | 26, length >>> 24, (length >>> 16) & 0xff, (length >>> 8) & 0xff, length & 0xff);
}
