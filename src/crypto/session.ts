/**
 * The cryptographic pieces of a session, as pure functions. The bytes they cover
 * are fixed by the wire protocol (wire/PROTOCOL.md, wire/session.ts); this module
 * supplies the cryptography over those bytes and takes the transcript as input
 * rather than building it.
 *
 * The handshake goes:
 *   1. each side sends a nonce and its static ed25519 key; replicas also send an
 *      ephemeral X25519 public key (`generateEphemeralKeyPair`);
 *   2. each side signs the transcript T with its static key (`signHandshake`), under
 *      a domain that names its role, so one side's signature can never be reflected
 *      back as the other's;
 *   3. replica peers derive the X25519 shared secret and, with HKDF-SHA-256 salted by
 *      SHA-256(T), one MAC key per direction (`deriveSessionKeys`);
 *   4. every later peer frame carries HMAC-SHA-256 over the domain tag, the frame type,
 *      the u64 seq and the message, under the sender's key (`macFrame`), and the
 *      receiver accepts each seq once, in order (`ReplayGuard`);
 *   5. client sessions make the same exchange and derive their own pair of keys
 *      (`deriveSessionKeys(..., "client")`); every later frame in either direction ends
 *      in HMAC-SHA-256 over the domain tag, an implicit u64 frame counter, the type and
 *      SHA-256 of the payload (`FrameSealer`, `FrameOpener`). Hashing the payload first
 *      lets a replica that sends one batch to many subscribers hash the shared bytes once
 *      (`SharedPayloadPrefix`): each session then pays for a short MAC, not for the batch.
 * Binding the keys to the transcript means a man in the middle who swaps ephemeral
 * keys ends with different MAC keys on each side, so the first MAC fails.
 */
import { BoundedMap } from "../../wire/bounded-map.ts";
import { writeUint32BE, writeUint64BE } from "../../wire/bytes.ts";
import {
  createHash,
  createHmac,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  timingSafeEqual,
  type Hash,
  type KeyObject,
} from "node:crypto";
import { asUint8Array } from "./encoding.ts";
import { signDomain, verifyDomain } from "./ed25519.ts";
import { sha256 } from "./hash.ts";
import type { SigningKey } from "./keys.ts";
import {
  DOMAIN_CLIENT_KEY_I2R,
  DOMAIN_CLIENT_KEY_R2I,
  DOMAIN_CLIENT_MAC,
  DOMAIN_PEER_KEY_I2R,
  DOMAIN_PEER_KEY_R2I,
  DOMAIN_PEER_MAC,
  DOMAIN_SESSION_INITIATOR,
  DOMAIN_SESSION_RESPONDER,
  FRAME_LENGTH_BYTES,
  MAC_BYTES,
  PEER_FRAME_TYPE_FIRST,
  PEER_FRAME_TYPE_LAST,
  X25519_KEY_BYTES,
} from "../../wire/types.ts";

/** Full-length HMAC-SHA-256 tags and X25519 keys, as the wire defines them. */
export { MAC_BYTES, X25519_KEY_BYTES };
export const SHARED_SECRET_BYTES = 32;
export const SESSION_KEY_BYTES = 32;
/** Frame sequence numbers are unsigned 64-bit on the wire; here they stay safe integers. */
export const PEER_FRAME_SEQ_MAX = Number.MAX_SAFE_INTEGER;
const SEQ_FIELD_BYTES = 8;

/** Peer frames are numbered from 1 (wire/PROTOCOL.md); 0 is never a valid peer seq. */
export const PEER_SEQ_FIRST = 1;
/** utf8(DOMAIN_PEER_MAC) || 0x00: the constant start of every peer MAC input. */
const PEER_MAC_PREFIX = new TextEncoder().encode(`${DOMAIN_PEER_MAC}\u0000`);
const FRAME_TYPE_FIELD_BYTES = 1;

/** DER prefix of an X25519 SubjectPublicKeyInfo (RFC 8410), to import a raw peer key. */
const SPKI_X25519_PREFIX = Uint8Array.from([0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00]);
/** DER prefix of an X25519 PKCS#8 private key (RFC 8410), to import a raw private key. */
const PKCS8_X25519_PREFIX = Uint8Array.from([
  0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
]);

export type SessionRole = "initiator" | "responder";
/** Which kind of session the keys protect: a replica-to-replica link or a client session. */
export type SessionKind = "peer" | "client";

/** A handshake that cannot go on (bad peer key, degenerate shared secret). */
export class SessionCryptoError extends Error {
  override name = "SessionCryptoError";
}

export interface EphemeralKeyPair {
  /** The 32 raw bytes sent to the peer. */
  readonly publicKey: Uint8Array;
  readonly privateKey: KeyObject;
}

/** A fresh X25519 key pair for one handshake; never reuse it for another. */
export function generateEphemeralKeyPair(): EphemeralKeyPair {
  return ephemeralKeyPairFromPrivateKey(generateKeyPairSync("x25519").privateKey);
}

/**
 * The X25519 key pair for a given 32-byte private key. Only for test vectors and
 * deterministic replays: a live handshake must use `generateEphemeralKeyPair`.
 */
export function ephemeralKeyPairFromSecret(secret: Uint8Array): EphemeralKeyPair {
  if (secret.byteLength !== X25519_KEY_BYTES) {
    throw new SessionCryptoError(`X25519 private key must be ${X25519_KEY_BYTES} bytes, got ${secret.byteLength}`);
  }
  const privateKey = createPrivateKey({ key: Buffer.concat([PKCS8_X25519_PREFIX, secret]), format: "der", type: "pkcs8" });
  return ephemeralKeyPairFromPrivateKey(privateKey);
}

function ephemeralKeyPairFromPrivateKey(privateKey: KeyObject): EphemeralKeyPair {
  const spki = createPublicKey(privateKey).export({ format: "der", type: "spki" });
  return { publicKey: Uint8Array.from(spki.subarray(SPKI_X25519_PREFIX.length)), privateKey };
}

/**
 * The X25519 shared secret with the peer's ephemeral public key. Throws
 * SessionCryptoError if the peer key has the wrong length or is a low-order point
 * (which would make the secret all zeros, known to anyone).
 */
export function x25519SharedSecret(own: EphemeralKeyPair, peerPublicKey: Uint8Array): Uint8Array {
  if (peerPublicKey.byteLength !== X25519_KEY_BYTES) {
    throw new SessionCryptoError(`peer ephemeral key must be ${X25519_KEY_BYTES} bytes, got ${peerPublicKey.byteLength}`);
  }
  let secret: Uint8Array;
  try {
    const peer = createPublicKey({ key: Buffer.concat([SPKI_X25519_PREFIX, peerPublicKey]), format: "der", type: "spki" });
    secret = asUint8Array(diffieHellman({ privateKey: own.privateKey, publicKey: peer }));
  } catch {
    throw new SessionCryptoError("peer ephemeral key is unusable (low-order point)");
  }
  // BoringSSL already refuses low-order points; the check stays so the property does not
  // depend on which library runs underneath.
  if (secret.every((byte) => byte === 0)) throw new SessionCryptoError("peer ephemeral key is unusable (all-zero shared secret)");
  return secret;
}

/** SHA-256 of the handshake transcript: the HKDF salt of the session keys. */
export function transcriptHash(transcript: Uint8Array): Uint8Array {
  return sha256(transcript);
}

export interface SessionKeys {
  /** MACs the frames this side sends. */
  readonly sendKey: Uint8Array;
  /** Checks the frames this side receives. */
  readonly receiveKey: Uint8Array;
}

/**
 * The two directional MAC keys: HKDF-SHA-256(ikm = shared secret,
 * salt = SHA-256(transcript), info = DOMAIN_PEER_KEY_I2R or DOMAIN_PEER_KEY_R2I, or the
 * DOMAIN_CLIENT_KEY_ pair for a client session), 32 bytes each. Both sides
 * call this with the same transcript bytes and their own role; the initiator's
 * send key is the responder's receive key and the other way round.
 */
export function deriveSessionKeys(
  sharedSecret: Uint8Array,
  transcript: Uint8Array,
  role: SessionRole,
  kind: SessionKind = "peer",
): SessionKeys {
  if (sharedSecret.byteLength !== SHARED_SECRET_BYTES) {
    throw new SessionCryptoError(`shared secret must be ${SHARED_SECRET_BYTES} bytes, got ${sharedSecret.byteLength}`);
  }
  const salt = transcriptHash(transcript);
  const initiatorToResponder = hkdf(sharedSecret, salt, kind === "peer" ? DOMAIN_PEER_KEY_I2R : DOMAIN_CLIENT_KEY_I2R);
  const responderToInitiator = hkdf(sharedSecret, salt, kind === "peer" ? DOMAIN_PEER_KEY_R2I : DOMAIN_CLIENT_KEY_R2I);
  return role === "initiator"
    ? { sendKey: initiatorToResponder, receiveKey: responderToInitiator }
    : { sendKey: responderToInitiator, receiveKey: initiatorToResponder };
}

function hkdf(ikm: Uint8Array, salt: Uint8Array, info: string): Uint8Array {
  return new Uint8Array(hkdfSync("sha256", ikm, salt, info, SESSION_KEY_BYTES));
}

/** The domain a side of the given role signs the transcript under. */
export function handshakeDomain(role: SessionRole): string {
  return role === "initiator" ? DOMAIN_SESSION_INITIATOR : DOMAIN_SESSION_RESPONDER;
}

/** The static-key signature over the transcript T, under the signer's role domain. */
export function signHandshake(key: SigningKey, role: SessionRole, transcript: Uint8Array): Uint8Array {
  return signDomain(key, handshakeDomain(role), transcript);
}

/** Checks a peer's handshake signature; `peerRole` is the role the peer holds in this session. */
export function verifyHandshake(peerPublicKey: Uint8Array, peerRole: SessionRole, transcript: Uint8Array, signature: Uint8Array): boolean {
  return verifyDomain(peerPublicKey, handshakeDomain(peerRole), transcript, signature);
}

/**
 * HMAC-SHA-256(key, utf8(DOMAIN_PEER_MAC) || 0x00 || u8 type || u64be(seq) || msg),
 * the peer frame MAC of wire/PROTOCOL.md. The parts are fed to the HMAC one by one
 * so that a large message is never copied. Throws RangeError for a type outside the
 * peer range or a seq below 1: those are the caller's bugs, not hostile input.
 */
export function macFrame(key: Uint8Array, type: number, seq: number, msg: Uint8Array): Uint8Array {
  const header = encodeMacHeader(type, seq);
  return asUint8Array(createHmac("sha256", key).update(PEER_MAC_PREFIX).update(header).update(msg).digest());
}

/** Whether `mac` is the peer MAC of (type, seq, msg), compared in constant time; never throws. */
export function checkMac(key: Uint8Array, type: number, seq: number, msg: Uint8Array, mac: Uint8Array): boolean {
  if (mac.byteLength !== MAC_BYTES) return false;
  if (!isPeerFrameType(type) || !isValidSeq(seq) || seq < PEER_SEQ_FIRST) return false;
  return timingSafeEqual(macFrame(key, type, seq, msg), mac);
}

function isPeerFrameType(type: number): boolean {
  return Number.isInteger(type) && type >= PEER_FRAME_TYPE_FIRST && type <= PEER_FRAME_TYPE_LAST;
}

function isValidSeq(seq: number): boolean {
  return Number.isSafeInteger(seq) && seq >= 0;
}

/** u8 type || u64 big-endian seq. */
function encodeMacHeader(type: number, seq: number): Uint8Array {
  if (!isPeerFrameType(type)) throw new RangeError(`frame type ${type} is not a peer frame type`);
  if (!isValidSeq(seq) || seq < PEER_SEQ_FIRST)
    throw new RangeError(`peer seq must be an integer in ${PEER_SEQ_FIRST}..${PEER_FRAME_SEQ_MAX}, got ${seq}`);
  const out = new Uint8Array(FRAME_TYPE_FIELD_BYTES + SEQ_FIELD_BYTES);
  out[0] = type;
  writeUint64BE(out, FRAME_TYPE_FIELD_BYTES, seq);
  return out;
}

export interface ReplayGuardOptions {
  /**
   * Require each seq to be exactly one more than the last accepted one. Over a
   * TCP session frames arrive in order and none is lost, so a gap means frames
   * were removed in transit: the session should be torn down, not carried on.
   */
  readonly contiguous: boolean;
  /** The first seq the guard accepts in contiguous mode (and the least in the other). */
  readonly firstSeq: number;
}

const DEFAULT_REPLAY_GUARD_OPTIONS: ReplayGuardOptions = { contiguous: true, firstSeq: PEER_SEQ_FIRST };

/**
 * Accepts each frame sequence number at most once, in strictly increasing order.
 * Call `accept` only after the frame's MAC has checked out; otherwise a forged frame
 * with a huge seq could push the guard forward and lock out the honest sender.
 */
export class ReplayGuard {
  readonly #contiguous: boolean;
  #next: number;

  constructor(options: Partial<ReplayGuardOptions> = {}) {
    const resolved = { ...DEFAULT_REPLAY_GUARD_OPTIONS, ...options };
    if (!isValidSeq(resolved.firstSeq)) throw new RangeError(`firstSeq must be an integer in 0..${PEER_FRAME_SEQ_MAX}`);
    this.#contiguous = resolved.contiguous;
    this.#next = resolved.firstSeq;
  }

  /** Records `seq` and returns true if it is acceptable; returns false (and records nothing) if not. */
  accept(seq: number): boolean {
    if (!isValidSeq(seq)) return false;
    if (seq < this.#next) return false;
    if (this.#contiguous && seq !== this.#next) return false;
    // Past PEER_FRAME_SEQ_MAX no further seq could be accepted; the session must be rekeyed long before.
    this.#next = seq + 1;
    return true;
  }

  /** The smallest seq `accept` could take next. */
  get nextSeq(): number {
    return this.#next;
  }
}

/** Hands out a sender's frame sequence numbers: firstSeq, firstSeq + 1, ... */
export class SendSequence {
  #next: number;

  constructor(firstSeq = PEER_SEQ_FIRST) {
    if (!isValidSeq(firstSeq)) throw new RangeError(`firstSeq must be an integer in 0..${PEER_FRAME_SEQ_MAX}`);
    this.#next = firstSeq;
  }

  /** The next seq to put on a frame; throws once the space is used up rather than wrap. */
  next(): number {
    if (this.#next > PEER_FRAME_SEQ_MAX) throw new RangeError("frame sequence numbers exhausted; the session must be re-established");
    const seq = this.#next;
    this.#next += 1;
    return seq;
  }
}

// ---------------------------------------------------------------------------------------
// Client session frames (wire/PROTOCOL.md 5.2): after the handshake every frame in either
// direction ends in a MAC over an implicit frame counter, its type and the SHA-256 of its
// payload.
// ---------------------------------------------------------------------------------------

/** utf8(DOMAIN_CLIENT_MAC) || 0x00: the constant start of every client frame MAC input. */
const CLIENT_MAC_PREFIX = new TextEncoder().encode(`${DOMAIN_CLIENT_MAC}\u0000`);
/** The bytes a MAC adds to a client session frame (its length field counts them). */
export const CLIENT_FRAME_MAC_BYTES = MAC_BYTES;
const PAYLOAD_DIGEST_BYTES = 32;

/**
 * The whole MAC input, utf8(DOMAIN_CLIENT_MAC) || 0x00 || u64be seq || u8 type ||
 * SHA-256(payload): one buffer per session half, rewritten per frame, so that a MAC is one
 * HMAC update of a few dozen bytes whatever the frame's size.
 */
class MacInput {
  readonly bytes = new Uint8Array(CLIENT_MAC_PREFIX.length + SEQ_FIELD_BYTES + FRAME_TYPE_FIELD_BYTES + PAYLOAD_DIGEST_BYTES);
  private readonly view = new DataView(this.bytes.buffer);

  constructor() {
    this.bytes.set(CLIENT_MAC_PREFIX);
  }

  /** Writes counter, type and payload digest; throws once the counter space is used up rather than wrap. */
  set(seq: number, type: number, payloadDigest: Uint8Array): void {
    if (seq > PEER_FRAME_SEQ_MAX) throw new RangeError("frame sequence numbers exhausted; the session must be re-established");
    const at = CLIENT_MAC_PREFIX.length;
    this.view.setUint32(at, Math.floor(seq / 0x1_0000_0000), false);
    this.view.setUint32(at + 4, seq >>> 0, false);
    this.bytes[at + SEQ_FIELD_BYTES] = type;
    this.bytes.set(payloadDigest, at + SEQ_FIELD_BYTES + FRAME_TYPE_FIELD_BYTES);
  }
}

/** SHA-256 of a client frame's payload, what its MAC covers (FrameSealer.macDigest). */
export function payloadDigest(payload: Uint8Array): Uint8Array {
  return createHash("sha256").update(payload).digest();
}

/** Payloads shorter than this are hashed whole: comparing would save too little. */
export const SHARED_PREFIX_PAYLOAD_BYTES_MIN = 8192;
/** The part of a payload that may differ between replicas' copies (subscription, tag, replica) lies within this many bytes of its end. */
const SHARED_PREFIX_TAIL_BYTES = 512;
/** Where prefixes are cut: a multiple of this, so that copies a few bytes apart in length are cut at the same place. */
const SHARED_PREFIX_STEP_BYTES = 4096;
/** Prefixes remembered at most, and the payload bytes they may hold alive. */
export const SHARED_PREFIXES_MAX = 64;
export const SHARED_PREFIX_BYTES_MAX = 8 * 1024 * 1024;

/**
 * payloadDigest for the payloads a client receives from several replicas: their EVENTS
 * frames carry the same batch and differ only in their last few fields (subscription,
 * tag, replica), so every copy after the first would hash the same megabyte again. This
 * remembers, for the last SHARED_PREFIXES_MAX payloads hashed whole (several batches, as
 * replicas run a few batches apart), a copy of the payload up to a cut at a multiple of
 * 4 KiB at least 512 bytes before its end, and the SHA-256 state after it. A later payload
 * whose bytes up to the same cut equal one of them (a native comparison, many times faster
 * than hashing them; a differing batch differs in its first bytes, its signature)
 * continues from that state, so its digest is the SHA-256 of its own bytes, as without the
 * memo; any other payload is hashed whole and remembered, the least recently used
 * forgotten. The prefixes are copies, so nothing a subscriber does to the events it was
 * handed changes them. One per client, shared by its connections.
 */
export class PrefixDigests {
  /** By a number of their own, least recently used first. */
  readonly #prefixes = new BoundedMap<number, { readonly prefix: Uint8Array; readonly state: Hash }>(
    SHARED_PREFIXES_MAX,
    SHARED_PREFIX_BYTES_MAX,
  );
  #nextId = 0;
  /** Payloads whose prefix was found, and payloads hashed whole (for tests and benchmarks). */
  reused = 0;
  hashed = 0;

  constructor(private readonly equal: (a: Uint8Array, b: Uint8Array) => boolean) {}

  digest(payload: Uint8Array): Uint8Array {
    if (payload.length < SHARED_PREFIX_PAYLOAD_BYTES_MIN) return payloadDigest(payload);
    const cut = Math.floor((payload.length - SHARED_PREFIX_TAIL_BYTES) / SHARED_PREFIX_STEP_BYTES) * SHARED_PREFIX_STEP_BYTES;
    const head = payload.subarray(0, cut);
    const id = this.#prefixes.find((known) => known.prefix.length === cut && this.equal(known.prefix, head));
    const known = id === undefined ? undefined : this.#prefixes.get(id);
    if (id !== undefined && known !== undefined) {
      this.reused++;
      this.#prefixes.touch(id);
      return known.state.copy().update(payload.subarray(cut)).digest();
    }
    this.hashed++;
    const hasher = createHash("sha256").update(head);
    this.#prefixes.set(this.#nextId++, { prefix: head.slice(), state: hasher.copy() }, cut);
    return hasher.update(payload.subarray(cut)).digest();
  }
}

/**
 * A copy of the encoded frame `frame` with CLIENT_FRAME_MAC_BYTES of room after it, counted
 * in its length field: what FrameSealer.sealInPlace seals, once per session, for a frame sent
 * on several (a client's request goes to every replica).
 */
export function withMacRoom(frame: Uint8Array): Uint8Array {
  if (frame.length <= FRAME_LENGTH_BYTES) throw new RangeError("withMacRoom: not an encoded frame");
  const room = new Uint8Array(frame.length + CLIENT_FRAME_MAC_BYTES);
  room.set(frame);
  writeUint32BE(room, 0, room.length - FRAME_LENGTH_BYTES);
  return room;
}

/** payloadDigest of a frame with its MAC room (withMacRoom), the MAC not written yet: what sealInPlace takes. */
export function framePayloadDigest(frame: Uint8Array): Uint8Array {
  const macAt = frame.length - CLIENT_FRAME_MAC_BYTES;
  const payloadAt = FRAME_LENGTH_BYTES + FRAME_TYPE_FIELD_BYTES;
  if (macAt < payloadAt) throw new RangeError("framePayloadDigest: the frame has no room for its type byte and MAC");
  return payloadDigest(frame.subarray(payloadAt, macAt));
}

/**
 * The first bytes of a payload that many frames share, with the SHA-256 state after them:
 * the batch of an EVENTS frame a replica sends to every subscriber of a channel, whose
 * frames differ only in their last few bytes (the subscription id). `FrameSealer.macShared`
 * continues from the state, so the batch is hashed once for all of them.
 */
export class SharedPayloadPrefix {
  readonly #state: Hash;
  /** Bytes of all the parts. */
  readonly length: number;

  /** The prefix is the parts in order; they are referred to, not copied (wire/hot.ts eventsPrefix). */
  constructor(readonly parts: readonly Uint8Array[]) {
    this.#state = createHash("sha256");
    let length = 0;
    for (const part of parts) {
      this.#state.update(part);
      length += part.length;
    }
    this.length = length;
  }

  /** Copies the prefix into `target` at `at`; answers the offset after it. */
  copyInto(target: Uint8Array, at: number): number {
    let offset = at;
    for (const part of this.parts) {
      target.set(part, offset);
      offset += part.length;
    }
    return offset;
  }

  /** SHA-256(prefix || rest). */
  digestWith(rest: Uint8Array): Uint8Array {
    return this.#state.copy().update(rest).digest();
  }
}

/**
 * The sending half of a client session: MACs each frame under the direction's key and
 * the next frame counter. Seal a frame only when it will be written: the receiver
 * expects every counter value exactly once, in order, so a sealed frame that is then
 * dropped makes the next one fail, unless none of its bytes was written and its counter
 * is given back (`giveBack`) before anything else is sealed.
 */
export class FrameSealer {
  readonly #key: Uint8Array;
  readonly #input = new MacInput();
  #sent = 0;

  constructor(key: Uint8Array) {
    if (key.byteLength !== SESSION_KEY_BYTES) throw new SessionCryptoError(`session key must be ${SESSION_KEY_BYTES} bytes`);
    this.#key = key;
  }

  /** Frames sealed so far (the counter of the last one). */
  get sealed(): number {
    return this.#sent;
  }

  /**
   * Writes the MAC into the last CLIENT_FRAME_MAC_BYTES of `frame`, an encoded frame whose
   * length field already counts them (encodeTypedFrameWithTrailer). Returns `frame`.
   */
  sealInPlace(frame: Uint8Array, digest?: Uint8Array): Uint8Array {
    const macAt = frame.length - CLIENT_FRAME_MAC_BYTES;
    const payloadAt = FRAME_LENGTH_BYTES + FRAME_TYPE_FIELD_BYTES;
    if (macAt < payloadAt) throw new RangeError("sealInPlace: the frame has no room for its type byte and MAC");
    frame.set(this.#next(frame[FRAME_LENGTH_BYTES] as number, digest ?? payloadDigest(frame.subarray(payloadAt, macAt))), macAt);
    return frame;
  }

  /**
   * The MAC of the next frame, of type `type` and payload the shared parts || rest, for a caller
   * that writes the frame from those parts (src/replica/framed.ts sendShared): the shared
   * bytes are not hashed again. Counts the frame as sealed, as sealInPlace does.
   */
  macShared(type: number, shared: SharedPayloadPrefix, rest: Uint8Array): Uint8Array {
    if (!Number.isInteger(type) || type < 0 || type > 0xff) throw new RangeError(`frame type ${type} is not a byte`);
    return this.#next(type, shared.digestWith(rest));
  }

  /**
   * The MAC of the next frame, of type `type` and payload SHA-256 `digest` (payloadDigest,
   * or SharedPayloadPrefix.digestWith): for a caller that hashed the payload earlier.
   * Counts the frame as sealed, as sealInPlace does.
   */
  macDigest(type: number, digest: Uint8Array): Uint8Array {
    if (!Number.isInteger(type) || type < 0 || type > 0xff) throw new RangeError(`frame type ${type} is not a byte`);
    return this.#next(type, digest);
  }

  /**
   * Gives back the counters of the last `count` frames sealed, whose bytes were never
   * written (a socket write took none of them): the next frames sealed use those counters.
   * A MAC that never left the process reveals nothing, and the receiver still sees each
   * counter once, in order. Never for a frame any byte of which may have been written.
   */
  giveBack(count: number): void {
    if (!Number.isSafeInteger(count) || count < 0 || count > this.#sent)
      throw new RangeError(`cannot give back ${count} of ${this.#sent} counters`);
    this.#sent -= count;
  }

  /** The MAC under the next counter, which it then uses up. */
  #next(type: number, digest: Uint8Array): Uint8Array {
    this.#input.set(this.#sent + 1, type, digest);
    const mac = createHmac("sha256", this.#key).update(this.#input.bytes).digest();
    this.#sent += 1;
    return mac;
  }

  /** A copy of the encoded frame `frame` with its MAC appended and its length field grown to count it. */
  seal(frame: Uint8Array): Uint8Array {
    return this.sealInPlace(withMacRoom(frame));
  }
}

/**
 * The receiving half of a client session: accepts a frame only if its MAC verifies for
 * the next frame counter, so a frame altered, replayed, reordered or dropped in transit
 * is refused. After a refusal the session cannot go on (the counters are out of step on
 * an ordered stream, or someone is tampering): the caller closes the connection.
 */
export class FrameOpener {
  readonly #key: Uint8Array;
  readonly #input = new MacInput();
  readonly #digests: PrefixDigests | null;
  #accepted = 0;

  /** `digests`: a memo shared with the other sessions that receive the same payloads (a client's, one per replica). */
  constructor(key: Uint8Array, digests: PrefixDigests | null = null) {
    if (key.byteLength !== SESSION_KEY_BYTES) throw new SessionCryptoError(`session key must be ${SESSION_KEY_BYTES} bytes`);
    this.#key = key;
    this.#digests = digests;
  }

  /** Frames accepted so far (the counter of the last one). */
  get opened(): number {
    return this.#accepted;
  }

  /**
   * The payload of a sealed frame (`sealedPayload` is what follows the type byte: the
   * payload and the MAC), or null if the MAC does not verify for the next counter.
   * Never throws; a refusal does not advance the counter.
   */
  open(type: number, sealedPayload: Uint8Array): Uint8Array | null {
    const macAt = sealedPayload.length - CLIENT_FRAME_MAC_BYTES;
    if (macAt < 0 || !Number.isInteger(type) || type < 0 || type > 0xff) return null;
    if (this.#accepted >= PEER_FRAME_SEQ_MAX) return null;
    const payload = sealedPayload.subarray(0, macAt);
    this.#input.set(this.#accepted + 1, type, this.#digests === null ? payloadDigest(payload) : this.#digests.digest(payload));
    const expected = createHmac("sha256", this.#key).update(this.#input.bytes).digest();
    if (!timingSafeEqual(expected, sealedPayload.subarray(macAt))) return null;
    this.#accepted += 1;
    return payload;
  }
}

/** Both halves of one side of a client session. */
export interface SessionFraming {
  readonly sealer: FrameSealer;
  readonly opener: FrameOpener;
}

/** The sealer and opener of one side of a client session, from its keys (`digests`: FrameOpener's). */
export function sessionFraming(keys: SessionKeys, digests: PrefixDigests | null = null): SessionFraming {
  return { sealer: new FrameSealer(keys.sendKey), opener: new FrameOpener(keys.receiveKey, digests) };
}
