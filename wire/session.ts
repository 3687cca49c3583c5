/**
 * The exact bytes that session signatures, request signatures and peer MACs cover. The
 * cryptography itself (ed25519, X25519, HKDF, HMAC) lives with the runtime; this file fixes
 * only the inputs, so that every implementation signs and MACs the same bytes.
 */
import { type Canonical, encodeCanonical } from "./canonical.ts";
import type { Hello, HelloAck } from "./schemas.ts";
import {
  DOMAIN_CLIENT_MAC,
  DOMAIN_PEER_MAC,
  DOMAIN_REQUEST,
  DOMAIN_REQUEST_DIGEST,
  PEER_FRAME_TYPE_FIRST,
  PEER_FRAME_TYPE_LAST,
} from "./types.ts";

const utf8 = new TextEncoder();

/** Separates the domain tag from the signed bytes; no domain tag contains it. */
const DOMAIN_SEPARATOR = 0x00;

/** `utf8(domain) || 0x00 || bytes`: what every fitb signature covers. */
export function signingInput(domain: string, bytes: Uint8Array): Uint8Array {
  return joined(signingPrefix(domain), bytes);
}

/** `prefix || bytes` in a new array. */
function joined(prefix: Uint8Array, bytes: Uint8Array): Uint8Array {
  const input = new Uint8Array(prefix.length + bytes.length);
  input.set(prefix);
  input.set(bytes, prefix.length);
  return input;
}

const signingPrefixes = new Map<string, Uint8Array>();

/**
 * `utf8(domain) || 0x00`, what signingInput puts before the bytes, for a verifier that
 * takes the two apart (src/threads/verify-pool.ts). Domains are protocol constants, so
 * the cache holds a handful of entries. Never modify the answer: it is shared.
 */
export function signingPrefix(domain: string): Uint8Array {
  let prefix = signingPrefixes.get(domain);
  if (prefix === undefined) {
    const tag = utf8.encode(domain);
    prefix = new Uint8Array(tag.length + 1);
    prefix.set(tag);
    prefix[tag.length] = DOMAIN_SEPARATOR;
    signingPrefixes.set(domain, prefix);
  }
  return prefix;
}

/** What a client signs for a version 1 request: signingInput(DOMAIN_REQUEST, body). */
export function requestSigningInput(body: Uint8Array): Uint8Array {
  return signingInput(DOMAIN_REQUEST, body);
}

/**
 * What a request's signature covers, as the prefix and the bytes after it (a verifier may
 * keep them apart, src/threads/verify-pool.ts): version 1, `utf8(DOMAIN_REQUEST) || 0x00 ||
 * body`; version 2, `utf8(DOMAIN_REQUEST_DIGEST) || 0x00 || bodyDigest()`, the SHA-256 of the
 * body (asked for only then: the caller usually has it). The two domains keep a signature
 * of one form from passing as the other.
 */
export function requestSignedParts(
  version: number,
  body: Uint8Array,
  bodyDigest: () => Uint8Array,
): { readonly prefix: Uint8Array; readonly bytes: Uint8Array } {
  if (version === 1) return { prefix: signingPrefix(DOMAIN_REQUEST), bytes: body };
  if (version === 2) return { prefix: signingPrefix(DOMAIN_REQUEST_DIGEST), bytes: bodyDigest() };
  // Callers pass a version the body's schema accepted: anything else is a bug, never a third form.
  throw new RangeError(`no request signature form for body version ${version}`);
}

/** requestSignedParts joined: the exact bytes a request's signature covers. */
export function requestSignedBytes(version: number, body: Uint8Array, bodyDigest: () => Uint8Array): Uint8Array {
  const { prefix, bytes } = requestSignedParts(version, body, bodyDigest);
  return joined(prefix, bytes);
}

/**
 * The handshake transcript T = encodeCanonical({ hello: HELLO payload, ack: HELLO_ACK
 * payload without its "sig" field }). The responder signs
 * signingInput(DOMAIN_SESSION_RESPONDER, T) into HELLO_ACK.sig; the initiator signs
 * signingInput(DOMAIN_SESSION_INITIATOR, T) into AUTH.sig. Both nonces, both static keys
 * and (for peers) both ephemeral keys are in T, so neither signature can be replayed into
 * another session, and the two domain tags keep one side's signature from serving as the
 * other's.
 */
export function sessionTranscript(hello: Hello, ack: HelloAck | Omit<HelloAck, "sig">): Uint8Array {
  const { sig: _sig, ...unsigned } = ack as HelloAck;
  return encodeCanonical({ hello: hello as unknown as Canonical, ack: unsigned as unknown as Canonical });
}

/** Bytes of a peer MAC input in front of the message: the type byte and the u64 seq. */
const PEER_MAC_FIXED_BYTES = 1 + 8;
const TWO_POW_32 = 0x1_0000_0000;

/**
 * The input of a peer frame's MAC:
 * utf8(DOMAIN_PEER_MAC) || 0x00 || u8 frame type || u64 big-endian seq || msg.
 * mac = HMAC-SHA-256(K_dir, this), where K_dir is the session key of the sending
 * direction. The type byte is covered so a message cannot be moved to another peer kind.
 */
export function peerMacInput(type: number, seq: number, msg: Uint8Array): Uint8Array {
  if (type < PEER_FRAME_TYPE_FIRST || type > PEER_FRAME_TYPE_LAST) {
    throw new RangeError(`frame type 0x${type.toString(16)} is not a peer frame type`);
  }
  if (!Number.isSafeInteger(seq) || seq < 1) throw new RangeError(`peer seq must be a positive safe integer, got ${seq}`);
  const tag = utf8.encode(DOMAIN_PEER_MAC);
  const input = new Uint8Array(tag.length + 1 + PEER_MAC_FIXED_BYTES + msg.length);
  input.set(tag);
  let at = tag.length;
  input[at++] = DOMAIN_SEPARATOR;
  input[at++] = type;
  const view = new DataView(input.buffer, input.byteOffset, input.byteLength);
  view.setUint32(at, Math.floor(seq / TWO_POW_32));
  view.setUint32(at + 4, seq >>> 0);
  at += 8;
  input.set(msg, at);
  return input;
}

/**
 * The input of a client session frame's MAC (PROTOCOL.md 5.2):
 * utf8(DOMAIN_CLIENT_MAC) || 0x00 || u64 big-endian seq || u8 frame type || SHA-256(payload).
 * mac = HMAC-SHA-256(K_dir, this) is appended to the frame (its length field counts it).
 * `seq` is not sent: each side counts the frames of each direction from 1, so a frame
 * replayed, reordered or removed in transit fails the next MAC check. The caller hashes
 * the payload (`payloadDigest`, 32 bytes): a replica sending one batch to many sessions
 * hashes the bytes they share once.
 */
export function clientMacInput(seq: number, type: number, payloadDigest: Uint8Array): Uint8Array {
  if (!Number.isSafeInteger(seq) || seq < 1) throw new RangeError(`client frame seq must be a positive safe integer, got ${seq}`);
  if (!Number.isInteger(type) || type < 0 || type > 0xff) throw new RangeError(`frame type ${type} is not a byte`);
  if (payloadDigest.length !== CLIENT_MAC_DIGEST_BYTES)
    throw new RangeError(`payload digest must be ${CLIENT_MAC_DIGEST_BYTES} bytes (SHA-256)`);
  const tag = utf8.encode(DOMAIN_CLIENT_MAC);
  const input = new Uint8Array(tag.length + 1 + 8 + 1 + payloadDigest.length);
  input.set(tag);
  let at = tag.length;
  input[at++] = DOMAIN_SEPARATOR;
  const view = new DataView(input.buffer, input.byteOffset, input.byteLength);
  view.setUint32(at, Math.floor(seq / TWO_POW_32));
  view.setUint32(at + 4, seq >>> 0);
  at += 8;
  input[at++] = type;
  input.set(payloadDigest, at);
  return input;
}

/** SHA-256's output: what a client frame MAC covers instead of the payload. */
const CLIENT_MAC_DIGEST_BYTES = 32;
