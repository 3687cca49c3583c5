/**
 * Byte/text conversions used by keys, logs and config files.
 *
 * Decoders here are strict on purpose: a key has exactly one text form, so two
 * operators comparing key strings (or a Map keyed by them) never disagree about
 * whether two spellings name the same key.
 */

export { bytesEqual, fromHex, toHex } from "../../wire/bytes.ts";

const BASE64URL_PATTERN = /^[A-Za-z0-9_-]*$/;
/** A base64 text of length 4k+1 cannot come from any byte string. */
const BASE64_IMPOSSIBLE_REMAINDER = 1;

/** Wraps a Uint8Array as a Buffer without copying, to reach Buffer's native codecs. */
function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Returns a plain Uint8Array view of a Buffer's bytes (no copy). */
export function asUint8Array(buffer: Buffer | Uint8Array): Uint8Array {
  return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
}

/** base64url without padding (RFC 4648 §5). */
export function toBase64url(bytes: Uint8Array): string {
  return asBuffer(bytes).toString("base64url");
}

/**
 * Parses base64url without padding, rejecting every text that `toBase64url` would
 * not produce: padding, characters outside the alphabet, impossible lengths and
 * non-zero unused trailing bits. Returns null instead of throwing so that callers
 * can word the error for their own context.
 */
export function fromBase64urlStrict(text: string): Uint8Array | null {
  if (!BASE64URL_PATTERN.test(text)) return null;
  if (text.length % 4 === BASE64_IMPOSSIBLE_REMAINDER) return null;
  const bytes = new Uint8Array(Buffer.from(text, "base64url"));
  // Re-encoding catches non-canonical trailing bits, which Buffer ignores.
  if (toBase64url(bytes) !== text) return null;
  return bytes;
}

/** Concatenates byte arrays into one new array. */
export function concatBytes(...parts: readonly Uint8Array[]): Uint8Array {
  return concatByteList(parts);
}

/** concatBytes for a list of any length (a spread of a very long list would overflow the stack). */
export function concatByteList(parts: readonly Uint8Array[]): Uint8Array {
  let total = 0;
  for (const part of parts) total += part.byteLength;
  const out = new Uint8Array(total);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.byteLength;
  }
  return out;
}

/**
 * bytesEqual through the runtime's native comparison: about 0.7 µs for two distinct 64 KiB
 * arrays, against 21 µs for bytesEqual's loop and 31 µs for SHA-256 of the same bytes (a
 * micro-benchmark with Bun 1.4 on the development machine). Not constant-time: for
 * comparing what others sent, never secrets.
 */
export function nativeBytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Bun.deepEquals(a, b, true);
}
