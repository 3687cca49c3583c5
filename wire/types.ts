/**
 * The vocabulary of the fitb wire protocol: frame type numbers, error codes, protocol
 * bounds and signature domain tags. wire/PROTOCOL.md is the prose form of this file and
 * of schemas.ts; the two must say the same thing.
 */

/**
 * The session protocol version carried in HELLO and HELLO_ACK. Version 2 added the
 * ephemeral key exchange to client sessions and a MAC on every client frame after the
 * handshake; version 3 made that MAC cover the SHA-256 of the payload (PROTOCOL.md 5.2);
 * version 4 lets a client ask for one EVENTS frame naming several of its subscriptions
 * (SUBSCRIBE `shared`, EVENTS `subs`). A responder accepts a HELLO of any version from
 * PROTOCOL_VERSION_MIN up and answers in the initiator's version; a HELLO of another
 * version is refused with BAD_VERSION.
 */
export const PROTOCOL_VERSION = 4;
/** The oldest version a responder still serves: version 3 sessions never see `subs`. */
export const PROTOCOL_VERSION_MIN = 3;
/** The first version whose SUBSCRIBE `shared` is honoured (an older session's is ignored). */
export const SHARED_SUBSCRIPTIONS_VERSION = 4;
/**
 * Subscriptions one EVENTS frame names at most (`subs`); a replica with more shared
 * subscriptions of one channel on a connection sends one frame per this many.
 */
export const EVENTS_SUBS_MAX = 1024;
/**
 * The version of the signed Request body (`v`) this version's clients write. Version 1: the
 * signature covers the body itself (DOMAIN_REQUEST); version 2: the SHA-256 of the body
 * (DOMAIN_REQUEST_DIGEST), which every replica hashes anyway for the request's digest, so
 * a check costs a constant instead of a pass over up to 2 MiB (PROTOCOL.md 6.1). Replicas
 * and subscribers accept both.
 */
export const REQUEST_VERSION = 2;
/** The oldest Request body version accepted. */
export const REQUEST_VERSION_MIN = 1;

/**
 * Frame type byte values. The ranges group frames by purpose so that a reader of a hex
 * dump knows what it is looking at: 0x01-0x0f session, 0x10-0x1f requests and queries,
 * 0x20-0x3f subscriptions, 0x40-0x7f authenticated replica-to-replica traffic. 0x00 and
 * 0x80-0xff are reserved and never valid.
 */
export const FrameType = {
  HELLO: 0x01,
  HELLO_ACK: 0x02,
  AUTH: 0x03,
  ERROR: 0x04,
  PING: 0x05,
  PONG: 0x06,
  REQUEST: 0x10,
  REPLY: 0x11,
  QUERY: 0x12,
  QUERY_REPLY: 0x13,
  EPOCH: 0x14,
  SUBSCRIBE: 0x20,
  UNSUBSCRIBE: 0x21,
  SUB_OK: 0x22,
  EVENTS: 0x23,
  SUB_END: 0x24,
  PEER: 0x40,
} as const;

export type FrameTypeName = keyof typeof FrameType;
export type FrameTypeCode = (typeof FrameType)[FrameTypeName];

/** The name of a frame type byte, or undefined for an unassigned value. */
export function frameTypeName(type: number): FrameTypeName | undefined {
  return FRAME_TYPE_NAMES.get(type);
}

const FRAME_TYPE_NAMES = new Map<number, FrameTypeName>((Object.keys(FrameType) as FrameTypeName[]).map((name) => [FrameType[name], name]));

/** The first and last type byte of the replica-to-replica range, all MAC-protected. */
export const PEER_FRAME_TYPE_FIRST = 0x40;
export const PEER_FRAME_TYPE_LAST = 0x7f;

// ---------------------------------------------------------------------------------------
// Bounds. Each is a protocol-wide maximum; a deployment may configure lower limits.
// ---------------------------------------------------------------------------------------

/** Default maximum of a frame's length field (type byte + payload): 4 MiB. */
export const FRAME_BYTES_MAX = 4 * 1024 * 1024;
/** The length field itself: an unsigned 32-bit big-endian integer. */
export const FRAME_LENGTH_BYTES = 4;
/** Length field plus type byte: the fixed part in front of every payload. */
export const FRAME_HEADER_BYTES = FRAME_LENGTH_BYTES + 1;

/** A tag is at most 128 bytes (ASCII, so also 128 characters). */
export const TAG_BYTES_MAX = 128;
/**
 * Tags: dot-separated segments of lowercase letters, digits, '_' and '-'. The first segment
 * may also be `$sys`: the replicas' own system channels (PROTOCOL.md 2.1), which clients
 * subscribe to and never create or publish to.
 */
export const TAG_PATTERN = /^(?:\$sys|[a-z0-9_-]+)(?:\.[a-z0-9_-]+)*$/;
/** The first segment of the replicas' system channels. */
export const SYS_TAG_PREFIX = "$sys.";

/** One event's payload. Larger payloads belong in a blob store, not on a monitoring bus. */
export const EVENT_BYTES_MAX = 1024 * 1024;
/** Events in one publish request (one signature covers them all). */
export const REQUEST_EVENTS_MAX = 16_384;
/**
 * Replicas in one group at most (ids 0..REPLICAS_MAX-1): the bound of the cluster file,
 * of the ordering core and of every replica id and signer list in a peer message.
 * All-to-all protocols cost O(n^2) messages; past this size the group needs another design.
 */
export const REPLICAS_MAX = 64;
/** Human-readable reasons in ERROR, REPLY, QUERY_REPLY and SUB_END, in UTF-8 bytes. */
export const REASON_BYTES_MAX = 1024;

export const KEY_BYTES = 32;
export const NONCE_BYTES = 32;
export const SIGNATURE_BYTES = 64;
export const X25519_KEY_BYTES = 32;
export const MAC_BYTES = 32;
/** SHA-256 digests (REPLY.d). */
export const DIGEST_BYTES = 32;

/** The relay's text protocol: the longest command line, terminator included. */
export const RELAY_LINE_BYTES_MAX = 64 * 1024;

/**
 * How far a publish's signed `ts` may be from the clock of the replica the client sends it
 * to, either way (PROTOCOL.md §6.1); subscribers use the same figure to tell a live event
 * from an old one replayed.
 */
export const CLIENT_CLOCK_SKEW_MS_MAX = 5 * 60_000;

// ---------------------------------------------------------------------------------------
// Error codes: a closed list, shared by ERROR frames, failed REPLY / QUERY_REPLY frames
// and the relay's `-ERR <code> <reason>` lines.
// ---------------------------------------------------------------------------------------

export const ERROR_CODES = [
  "BAD_FRAME", // undecodable frame: unknown type, malformed or non-canonical CBOR, schema violation
  "BAD_VERSION", // protocol version not supported
  "BAD_SIGNATURE", // a signature does not verify
  "BAD_MAC", // a peer or client session frame's MAC does not verify, or its sequence number is not the next one
  "REPLAY", // a request sequence number already used, with a different body
  "OUT_OF_ORDER", // a request sequence number beyond the next expected one
  "UNAUTHORIZED", // handshake not done, or the key may not do this
  "UNKNOWN_CHANNEL", // no channel with this tag
  "CHANNEL_EXISTS", // create-channel for a tag that exists
  "TOO_LARGE", // a frame, line, event or batch over a limit
  "RATE_LIMITED", // the client exceeded its rate
  "OVERLOADED", // the replica sheds load (lowest priority first)
  "BAD_REQUEST", // well-formed but invalid: wrong span, bad tag, unknown command, ...
  "NOT_READY", // the replica is starting or catching up
  "TIMEOUT", // no quorum answered in time (relay and client library)
  "INTERNAL", // a bug or an unexpected failure; details are in the replica's log
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

/** Why a subscription ended (SUB_END). A closed list like ERROR_CODES. */
export const SUB_END_CODES = [
  "UNSUBSCRIBED", // the client asked (answer to UNSUBSCRIBE)
  "SLOW", // the subscriber fell too far behind; resubscribe from the next wanted seq
  "TRIMMED", // `from` is older than the oldest retained event; `oldest` says where history starts
  "DESTROYED", // the channel was destroyed
  "UNKNOWN_CHANNEL", // no channel with this tag
  "UNAUTHORIZED", // the key may not subscribe to this channel
  "LIMIT", // too many subscriptions on this connection
  "BAD_REQUEST", // e.g. a subscription id already in use on this connection
  "SHUTDOWN", // the replica is stopping
] as const;

export type SubEndCode = (typeof SUB_END_CODES)[number];

// ---------------------------------------------------------------------------------------
// Signature and key-derivation domain tags. Every signature covers
// utf8(domain) || 0x00 || bytes (see signingInput), so a signature made for one purpose
// can never be replayed as another.
// ---------------------------------------------------------------------------------------

/** A client's signature over a version 1 Request body (SignedRequest.sig). */
export const DOMAIN_REQUEST = "fitb/v1/request";
/** A client's signature over the SHA-256 of a version 2 Request body (SignedRequest.sig). */
export const DOMAIN_REQUEST_DIGEST = "fitb/v1/request-digest";
/** The responder's (replica's) signature over the handshake transcript (HELLO_ACK.sig). */
export const DOMAIN_SESSION_RESPONDER = "fitb/v1/session/responder";
/** The initiator's signature over the handshake transcript (AUTH.sig). */
export const DOMAIN_SESSION_INITIATOR = "fitb/v1/session/initiator";
/** HKDF info for the peer session key that protects initiator -> responder frames. */
export const DOMAIN_PEER_KEY_I2R = "fitb/v1/peer-key/initiator-to-responder";
/** HKDF info for the peer session key that protects responder -> initiator frames. */
export const DOMAIN_PEER_KEY_R2I = "fitb/v1/peer-key/responder-to-initiator";
/** Prefix of every peer frame's MAC input. */
export const DOMAIN_PEER_MAC = "fitb/v1/peer-mac";
/** HKDF info for the client session key that protects client -> replica frames. */
export const DOMAIN_CLIENT_KEY_I2R = "fitb/v1/client-key/initiator-to-responder";
/** HKDF info for the client session key that protects replica -> client frames. */
export const DOMAIN_CLIENT_KEY_R2I = "fitb/v1/client-key/responder-to-initiator";
/** Prefix of the MAC input of every client session frame after the handshake. */
export const DOMAIN_CLIENT_MAC = "fitb/v1/client-mac/payload-sha256";

// ---------------------------------------------------------------------------------------
// Decoding errors: what FrameDecoder and decodeFrameBody report instead of throwing.
// ---------------------------------------------------------------------------------------

export type WireErrorKind =
  | "oversized" // length field above the decoder's maximum (fatal)
  | "empty-frame" // length field 0: no type byte (fatal)
  | "poisoned" // bytes pushed after a fatal error (fatal)
  | "truncated" // the stream ended inside a frame
  | "unknown-type" // a type byte with no frame assigned
  | "malformed-cbor" // payload is not canonical CBOR
  | "trailing-bytes" // bytes after the payload's CBOR item
  | "bad-version" // HELLO / HELLO_ACK with a version outside PROTOCOL_VERSION_MIN..PROTOCOL_VERSION, a Request body outside REQUEST_VERSION_MIN..REQUEST_VERSION
  | "schema"; // canonical CBOR that does not match the frame's schema

/** A decoding failure. `fatal` means the byte stream cannot be trusted any more. */
export interface WireError {
  readonly kind: WireErrorKind;
  readonly reason: string;
  readonly fatal: boolean;
}

/** The ERROR code to send back for a decoding failure. */
export function errorCodeFor(error: WireError): ErrorCode {
  switch (error.kind) {
    case "oversized":
      return "TOO_LARGE";
    case "bad-version":
      return "BAD_VERSION";
    case "empty-frame":
    case "poisoned":
    case "truncated":
    case "unknown-type":
    case "malformed-cbor":
    case "trailing-bytes":
    case "schema":
      return "BAD_FRAME";
    default: {
      const unreachable: never = error.kind;
      return unreachable;
    }
  }
}

/**
 * Builds a WireError; kept in one place so every site sets `fatal` deliberately. Its reason
 * is cut to REASON_BYTES_MAX bytes: a schema's message may quote what the peer sent (an
 * unknown key of 100 kB), and the reason goes back to it in an ERROR frame.
 */
export function wireError(kind: WireErrorKind, reason: string, fatal = false): WireError {
  return { kind, reason: clipUtf8(reason, REASON_BYTES_MAX), fatal };
}

/**
 * `text` cut to at most `bytesMax` bytes of UTF-8, at a character boundary: never half of
 * a surrogate pair, which the canonical encoder refuses (a reason cut by UTF-16 units
 * could not be sent at all).
 */
export function clipUtf8(text: string, bytesMax: number): string {
  // A UTF-16 unit is at most 3 bytes of UTF-8 (a pair, two units, is 4).
  if (text.length * 3 <= bytesMax) return text;
  let bytes = 0;
  let end = 0;
  while (end < text.length) {
    const point = text.codePointAt(end) as number;
    const size = point < 0x80 ? 1 : point < 0x800 ? 2 : point < 0x10000 ? 3 : 4;
    if (bytes + size > bytesMax) break;
    bytes += size;
    end += point >= 0x10000 ? 2 : 1;
  }
  return text.slice(0, end);
}

/**
 * The reason of an OVERLOADED answer from priority shedding begins with this (PROTOCOL.md
 * 6.2): refused before any check, and a share of such publishes is admitted, so a client
 * asks again soon.
 */
export const PRIORITY_SHEDDING_REASON_PREFIX = "priority shedding:";
