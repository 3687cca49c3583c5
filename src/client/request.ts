/**
 * Building and signing client requests (the shared data model's Request and
 * SignedRequest): the canonical body, the signature over
 * requestSignedBytes (version 2: over the body's SHA-256), the digest that replicas echo in REPLY.d, and the encoded
 * REQUEST frame, built once and sent to every replica.
 */
import type { AdminCmd, Op, Request } from "../../wire/schemas.ts";
import { encodeRequestBody, encodeTypedFrame } from "../../wire/schemas.ts";
import { requestSignedBytes } from "../../wire/session.ts";
import { EVENT_BYTES_MAX, FrameType, REQUEST_EVENTS_MAX, REQUEST_VERSION, TAG_BYTES_MAX, TAG_PATTERN } from "../../wire/types.ts";
import { sign } from "../crypto/ed25519.ts";
import { toHex } from "../crypto/encoding.ts";
import { sha256 } from "../crypto/hash.ts";
import type { SigningKey } from "../crypto/keys.ts";
import { InvalidInputError } from "./errors.ts";

/**
 * An upper bound on everything in an encoded REQUEST frame except the tag and the
 * events: frame header, CBOR map headers and keys, key, signature, seq, span, ts. The
 * true figure is near 250 bytes; the margin keeps the estimate safe if fields grow.
 */
export const REQUEST_FIXED_OVERHEAD_BYTES = 512;
/** The largest CBOR byte-string header in front of one event (events are < 4 GiB). */
export const EVENT_OVERHEAD_BYTES = 5;

export interface BuiltRequest {
  readonly request: Request;
  /** encodeCanonical(request): the signed bytes. */
  readonly body: Uint8Array;
  readonly sig: Uint8Array;
  /** sha256(body): how a REPLY names the request it answers. */
  readonly digest: Uint8Array;
  readonly digestHex: string;
  /** The complete REQUEST frame, ready for every replica. */
  readonly frame: Uint8Array;
}

export interface RequestFields {
  readonly seq: number;
  readonly ts: number;
  readonly op: Op;
  /**
   * The decided seq the client knows has executed (read-your-writes, PROTOCOL.md 6.3):
   * sent beside the signature in the frame, never signed. 0 or absent: none.
   */
  readonly after?: number;
}

/** The span a request of this op must carry: its event count, or 1 for admin commands. */
export function spanOf(op: Op): number {
  return op.t === "pub" ? op.events.length : 1;
}

/**
 * Encodes, signs and frames a request. Throws InvalidInputError (TOO_LARGE) when the
 * frame would exceed `frameBytesMax`, since no replica would accept it.
 */
export function buildRequest(key: SigningKey, fields: RequestFields, frameBytesMax: number): BuiltRequest {
  const request: Request = {
    v: REQUEST_VERSION,
    client: key.publicKey,
    seq: fields.seq,
    span: spanOf(fields.op),
    ts: fields.ts,
    op: fields.op,
  };
  const body = encodeRequestBody(request);
  // Version 2: the signature covers the body's SHA-256, the digest replicas name in REPLY.
  const digest = sha256(body);
  const sig = sign(
    key,
    requestSignedBytes(request.v, body, () => digest),
  );
  let frame: Uint8Array;
  try {
    frame = requestFrame(body, sig, fields.after ?? 0, frameBytesMax);
  } catch (error) {
    if (error instanceof RangeError) {
      throw new InvalidInputError(
        "TOO_LARGE",
        `request of ${body.byteLength} bytes does not fit in a frame of at most ${frameBytesMax} bytes`,
      );
    }
    throw error;
  }
  return { request, body, sig, digest, digestHex: toHex(digest), frame };
}

/** The REQUEST frame for signed bytes, with `after` when it is above 0. */
export function requestFrame(body: Uint8Array, sig: Uint8Array, after: number, frameBytesMax: number): Uint8Array {
  const frame = after > 0 ? { body, sig, after } : { body, sig };
  return encodeTypedFrame({ type: FrameType.REQUEST, body: frame }, frameBytesMax);
}

/** Why a tag is unusable, or null if it is a valid tag. */
export function tagProblem(tag: string): string | null {
  if (tag.length === 0) return "a tag must not be empty";
  if (tag.length > TAG_BYTES_MAX) return `tag is ${tag.length} bytes; at most ${TAG_BYTES_MAX}`;
  if (!TAG_PATTERN.test(tag)) return `tag ${JSON.stringify(tag)} is not dot-separated segments of [a-z0-9_-]+`;
  return null;
}

/** Throws InvalidInputError (BAD_REQUEST) for an invalid tag. */
export function checkTag(tag: string): void {
  const problem = tagProblem(tag);
  if (problem !== null) throw new InvalidInputError("BAD_REQUEST", problem);
}

export interface EventLimits {
  /** Largest event (the cluster's event_bytes_max, never above the protocol's EVENT_BYTES_MAX). */
  readonly eventBytesMax: number;
  /** Most events in one request (the cluster's batch_events_max). */
  readonly batchEventsMax: number;
}

/** Throws InvalidInputError for an empty batch, too many events, or an oversized event. */
export function checkEvents(events: readonly Uint8Array[], limits: EventLimits): void {
  const countMax = Math.min(limits.batchEventsMax, REQUEST_EVENTS_MAX);
  if (events.length === 0) throw new InvalidInputError("BAD_REQUEST", "a publish needs at least one event");
  if (events.length > countMax) {
    throw new InvalidInputError("TOO_LARGE", `${events.length} events in one request; at most ${countMax}`);
  }
  const bytesMax = Math.min(limits.eventBytesMax, EVENT_BYTES_MAX);
  events.forEach((event, index) => {
    if (event.byteLength > bytesMax) {
      throw new InvalidInputError("TOO_LARGE", `event ${index} is ${event.byteLength} bytes; at most ${bytesMax}`);
    }
  });
}

/** The op of a publish request. */
export function pubOp(tag: string, events: readonly Uint8Array[]): Op {
  return { t: "pub", tag, events: [...events] };
}

/** The op of an admin request. */
export function adminOp(cmd: AdminCmd): Op {
  return { t: "admin", cmd };
}
