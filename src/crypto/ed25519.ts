/**
 * ed25519 signatures on the hot path, through Bun's native node:crypto (BoringSSL).
 *
 * Every signature in fitb covers a domain tag: the signed message is
 * `utf8(domain) || 0x00 || bytes`. The tag keeps a signature made for one purpose
 * (a client request, a handshake, a checkpoint) from being replayed as another.
 *
 * Verification never throws on malformed input: a key or signature of the wrong
 * length, or a key that is not a curve point, simply does not verify. Hostile input
 * reaches this code, and an exception would be a way to crash its caller.
 */
import { createPublicKey, sign as nativeSign, verify as nativeVerify, type KeyObject } from "node:crypto";
import { asUint8Array } from "./encoding.ts";
import { ED25519_PUBLIC_KEY_BYTES, ED25519_SIGNATURE_BYTES, SPKI_ED25519_PREFIX, type SigningKey } from "./keys.ts";

/** The byte between the domain tag and the message. */
const DOMAIN_SEPARATOR_BYTE = 0x00;
/** A domain tag is a short protocol constant; the bound catches misuse, not attacks. */
export const DOMAIN_BYTES_MAX = 128;
/**
 * Public key objects kept for reuse. A cluster sees a bounded set of signers
 * (replicas, admins, publishers); past this many the oldest entry is dropped, so a
 * flood of one-shot keys costs a key parse each, never unbounded memory.
 */
export const PUBLIC_KEY_CACHE_ENTRIES_MAX = 4096;

const publicKeyCache = new Map<string, KeyObject>();
const domainPrefixCache = new Map<string, Uint8Array>();
const textEncoder = new TextEncoder();

/** Signs the message as is (no domain tag); prefer `signDomain`. */
export function sign(key: SigningKey, message: Uint8Array): Uint8Array {
  return asUint8Array(nativeSign(null, message, key.native));
}

/** Verifies a signature over the message as is (no domain tag); prefer `verifyDomain`. */
export function verify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  if (signature.byteLength !== ED25519_SIGNATURE_BYTES) return false;
  const keyObject = publicKeyObject(publicKey);
  if (keyObject === null) return false;
  try {
    return nativeVerify(null, message, keyObject, signature);
  } catch {
    return false;
  }
}

/** Signs `utf8(domain) || 0x00 || bytes`. */
export function signDomain(key: SigningKey, domain: string, bytes: Uint8Array): Uint8Array {
  return sign(key, domainMessage(domain, bytes));
}

/** Verifies a signature over `utf8(domain) || 0x00 || bytes`. */
export function verifyDomain(publicKey: Uint8Array, domain: string, bytes: Uint8Array, signature: Uint8Array): boolean {
  return verify(publicKey, domainMessage(domain, bytes), signature);
}

/** The exact bytes that `signDomain` signs: `utf8(domain) || 0x00 || bytes`. */
export function domainMessage(domain: string, bytes: Uint8Array): Uint8Array {
  const prefix = domainPrefix(domain);
  const message = new Uint8Array(prefix.byteLength + bytes.byteLength);
  message.set(prefix, 0);
  message.set(bytes, prefix.byteLength);
  return message;
}

/** `utf8(domain) || 0x00`, checked once per distinct domain and then reused. */
function domainPrefix(domain: string): Uint8Array {
  const cached = domainPrefixCache.get(domain);
  if (cached !== undefined) return cached;
  const encoded = textEncoder.encode(domain);
  // A NUL inside the tag would make "a\0b" + msg and "a" + "b\0..." ambiguous.
  if (encoded.includes(DOMAIN_SEPARATOR_BYTE)) throw new RangeError("signature domain must not contain a NUL byte");
  if (encoded.byteLength === 0) throw new RangeError("signature domain must not be empty");
  if (encoded.byteLength > DOMAIN_BYTES_MAX) throw new RangeError(`signature domain longer than ${DOMAIN_BYTES_MAX} bytes`);
  const prefix = new Uint8Array(encoded.byteLength + 1);
  prefix.set(encoded, 0);
  prefix[encoded.byteLength] = DOMAIN_SEPARATOR_BYTE;
  // Domains are program constants, so this map stays as small as the set of tags in the code.
  domainPrefixCache.set(domain, prefix);
  return prefix;
}

/** The cached native key object for a raw public key, or null if the bytes are unusable. */
function publicKeyObject(publicKey: Uint8Array): KeyObject | null {
  if (publicKey.byteLength !== ED25519_PUBLIC_KEY_BYTES) return null;
  const cacheKey = Buffer.from(publicKey.buffer, publicKey.byteOffset, publicKey.byteLength).toString("latin1");
  const cached = publicKeyCache.get(cacheKey);
  if (cached !== undefined) {
    // Re-insert to mark it most recently used (Map keeps insertion order).
    publicKeyCache.delete(cacheKey);
    publicKeyCache.set(cacheKey, cached);
    return cached;
  }
  let created: KeyObject;
  try {
    created = createPublicKey({ key: Buffer.concat([SPKI_ED25519_PREFIX, publicKey]), format: "der", type: "spki" });
  } catch {
    return null;
  }
  if (publicKeyCache.size >= PUBLIC_KEY_CACHE_ENTRIES_MAX) {
    const oldest = publicKeyCache.keys().next();
    if (!oldest.done) publicKeyCache.delete(oldest.value);
  }
  publicKeyCache.set(cacheKey, created);
  return created;
}

/** How many public keys are cached (exposed so the bound can be tested). */
export function publicKeyCacheSize(): number {
  return publicKeyCache.size;
}
