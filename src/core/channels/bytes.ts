/** Small byte helpers the core needs without importing runtime modules. */

const HEX_DIGITS = "0123456789abcdef";

/** Lowercase hex: the string form of a key or digest where a Map key is needed. */
export function toHex(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += (HEX_DIGITS[b >>> 4] as string) + (HEX_DIGITS[b & 0x0f] as string);
  return s;
}

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
