/**
 * The cryptographic pieces of a replica-to-replica session, as pure functions.
 *
 * The handshake (its frames and the exact transcript bytes are specified in
 * wire/PROTOCOL.md) goes:
 *   1. each side makes an ephemeral X25519 key pair and sends the public half;
 *   2. each side signs the transcript with its static ed25519 key (`signHandshake`),
 *      under a domain that names its role, so one side's signature can never be
 *      reflected back as the other's;
 *   3. both derive the X25519 shared secret and, with HKDF-SHA-256 salted by the
 *      transcript hash, two MAC keys, one per direction (`deriveSessionKeys`);
 *   4. every later frame carries HMAC-SHA-256 over (seq, frame bytes) under the
 *      sender's key (`macFrame`), and the receiver accepts each seq once, in
 *      increasing order (`ReplayGuard`).
 * Binding the keys to the transcript means a man in the middle who swaps ephemeral
 * keys ends with different MAC keys on each side, so the first MAC fails.
 */
import {
  createHmac,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  timingSafeEqual,
  type KeyObject,
} from "node:crypto";
import { asUint8Array } from "./encoding.ts";
import { signDomain, verifyDomain } from "./ed25519.ts";
import { sha256 } from "./hash.ts";
import type { SigningKey } from "./keys.ts";

export const X25519_PUBLIC_KEY_BYTES = 32;
export const SHARED_SECRET_BYTES = 32;
export const SESSION_KEY_BYTES = 32;
/** Full-length HMAC-SHA-256 tags: the bytes are cheap next to a frame, truncation buys nothing. */
export const MAC_BYTES = 32;
/** Frame sequence numbers are unsigned 64-bit on the wire; here they stay safe integers. */
export const SEQ_MAX = Number.MAX_SAFE_INTEGER;
const SEQ_FIELD_BYTES = 8;

/** Signature domains of the two handshake roles. */
export const DOMAIN_HANDSHAKE_INITIATOR = "fitb/v1/peer-handshake/initiator";
export const DOMAIN_HANDSHAKE_RESPONDER = "fitb/v1/peer-handshake/responder";
/** HKDF info strings: one per direction, so the two keys are independent. */
export const HKDF_INFO_INITIATOR_TO_RESPONDER = "fitb/v1/session-mac/initiator-to-responder";
export const HKDF_INFO_RESPONDER_TO_INITIATOR = "fitb/v1/session-mac/responder-to-initiator";

/** DER prefix of an X25519 SubjectPublicKeyInfo (RFC 8410), to import a raw peer key. */
const SPKI_X25519_PREFIX = Uint8Array.from([0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00]);

export type SessionRole = "initiator" | "responder";

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
  const pair = generateKeyPairSync("x25519");
  const spki = pair.publicKey.export({ format: "der", type: "spki" });
  return { publicKey: Uint8Array.from(spki.subarray(SPKI_X25519_PREFIX.length)), privateKey: pair.privateKey };
}

/**
 * The X25519 shared secret with the peer's ephemeral public key. Throws
 * SessionCryptoError if the peer key has the wrong length or is a low-order point
 * (which would make the secret all zeros, known to anyone).
 */
export function x25519SharedSecret(own: EphemeralKeyPair, peerPublicKey: Uint8Array): Uint8Array {
  if (peerPublicKey.byteLength !== X25519_PUBLIC_KEY_BYTES) {
    throw new SessionCryptoError(`peer ephemeral key must be ${X25519_PUBLIC_KEY_BYTES} bytes, got ${peerPublicKey.byteLength}`);
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

/** SHA-256 of the handshake transcript, the value that is signed and that salts HKDF. */
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
 * salt = SHA-256(transcript), info = direction label), 32 bytes each. Both sides
 * call this with the same transcript bytes and their own role; the initiator's
 * send key is the responder's receive key and the other way round.
 */
export function deriveSessionKeys(sharedSecret: Uint8Array, transcript: Uint8Array, role: SessionRole): SessionKeys {
  if (sharedSecret.byteLength !== SHARED_SECRET_BYTES) {
    throw new SessionCryptoError(`shared secret must be ${SHARED_SECRET_BYTES} bytes, got ${sharedSecret.byteLength}`);
  }
  const salt = transcriptHash(transcript);
  const initiatorToResponder = hkdf(sharedSecret, salt, HKDF_INFO_INITIATOR_TO_RESPONDER);
  const responderToInitiator = hkdf(sharedSecret, salt, HKDF_INFO_RESPONDER_TO_INITIATOR);
  return role === "initiator"
    ? { sendKey: initiatorToResponder, receiveKey: responderToInitiator }
    : { sendKey: responderToInitiator, receiveKey: initiatorToResponder };
}

function hkdf(ikm: Uint8Array, salt: Uint8Array, info: string): Uint8Array {
  return new Uint8Array(hkdfSync("sha256", ikm, salt, info, SESSION_KEY_BYTES));
}

/** The domain a side of the given role signs its handshake under. */
export function handshakeDomain(role: SessionRole): string {
  return role === "initiator" ? DOMAIN_HANDSHAKE_INITIATOR : DOMAIN_HANDSHAKE_RESPONDER;
}

/** The static-key signature over SHA-256(transcript), under the signer's role domain. */
export function signHandshake(key: SigningKey, role: SessionRole, transcript: Uint8Array): Uint8Array {
  return signDomain(key, handshakeDomain(role), transcriptHash(transcript));
}

/** Checks a peer's handshake signature; `peerRole` is the role the peer claims. */
export function verifyHandshake(
  peerPublicKey: Uint8Array,
  peerRole: SessionRole,
  transcript: Uint8Array,
  signature: Uint8Array,
): boolean {
  return verifyDomain(peerPublicKey, handshakeDomain(peerRole), transcriptHash(transcript), signature);
}

/** HMAC-SHA-256(key, u64be(seq) || bytes). */
export function macFrame(key: Uint8Array, seq: number, bytes: Uint8Array): Uint8Array {
  return asUint8Array(createHmac("sha256", key).update(encodeSeq(seq)).update(bytes).digest());
}

/** Whether `mac` is the MAC of (seq, bytes), compared in constant time. */
export function checkMac(key: Uint8Array, seq: number, bytes: Uint8Array, mac: Uint8Array): boolean {
  if (mac.byteLength !== MAC_BYTES) return false;
  if (!isValidSeq(seq)) return false;
  return timingSafeEqual(macFrame(key, seq, bytes), mac);
}

function isValidSeq(seq: number): boolean {
  return Number.isSafeInteger(seq) && seq >= 0;
}

/** u64 big-endian, the form the sequence number takes inside the MAC input. */
function encodeSeq(seq: number): Uint8Array {
  if (!isValidSeq(seq)) throw new RangeError(`frame seq must be an integer in 0..${SEQ_MAX}, got ${seq}`);
  const out = new Uint8Array(SEQ_FIELD_BYTES);
  new DataView(out.buffer).setBigUint64(0, BigInt(seq), false);
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

const DEFAULT_REPLAY_GUARD_OPTIONS: ReplayGuardOptions = { contiguous: true, firstSeq: 0 };

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
    if (!isValidSeq(resolved.firstSeq)) throw new RangeError(`firstSeq must be an integer in 0..${SEQ_MAX}`);
    this.#contiguous = resolved.contiguous;
    this.#next = resolved.firstSeq;
  }

  /** Records `seq` and returns true if it is acceptable; returns false (and records nothing) if not. */
  accept(seq: number): boolean {
    if (!isValidSeq(seq)) return false;
    if (seq < this.#next) return false;
    if (this.#contiguous && seq !== this.#next) return false;
    // Past SEQ_MAX no further seq could be accepted; the session must be rekeyed long before.
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

  constructor(firstSeq = 0) {
    if (!isValidSeq(firstSeq)) throw new RangeError(`firstSeq must be an integer in 0..${SEQ_MAX}`);
    this.#next = firstSeq;
  }

  /** The next seq to put on a frame; throws once the space is used up rather than wrap. */
  next(): number {
    if (this.#next > SEQ_MAX) throw new RangeError("frame sequence numbers exhausted; the session must be re-established");
    const seq = this.#next;
    this.#next += 1;
    return seq;
  }
}
