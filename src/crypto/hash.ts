/**
 * SHA-256 through node:crypto, which Bun implements natively (BoringSSL) and which
 * also works inside Worker threads.
 */
import { createHash } from "node:crypto";
import { asUint8Array, toHex } from "./encoding.ts";

export const SHA256_BYTES = 32;

/** SHA-256 of the bytes. */
export function sha256(bytes: Uint8Array): Uint8Array {
  return asUint8Array(createHash("sha256").update(bytes).digest());
}

/** SHA-256 of the concatenation of the parts, without building the concatenation. */
export function sha256Parts(parts: readonly Uint8Array[]): Uint8Array {
  const hasher = createHash("sha256");
  for (const part of parts) hasher.update(part);
  return asUint8Array(hasher.digest());
}

/** Lowercase hex of the SHA-256 of the bytes (for logs, digests in text, file names). */
export function sha256Hex(bytes: Uint8Array): string {
  return toHex(sha256(bytes));
}
