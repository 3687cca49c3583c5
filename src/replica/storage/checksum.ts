/**
 * Row checksums. Every row the store writes carries SHA-256 over its table name, its key
 * and its payload, so that a flipped bit anywhere in the row, a row that moved to another
 * key, or a payload cut short is caught when the row is read, and again by the full scan
 * at start. SHA-256 rather than a CRC: it is what the rest of fitb already hashes with,
 * it runs natively, and a checksum that never collides by accident needs no argument.
 */
import { CanonicalError, encodeCanonical, type Canonical } from "../../../wire/canonical.ts";
import { bytesEqual } from "../../crypto/encoding.ts";
import { sha256Parts } from "../../crypto/hash.ts";

/** Bytes of a row checksum. */
export const CHECKSUM_BYTES = 32;

const DOMAIN = new TextEncoder().encode("fitb/v1/store-row");

/** The checksum of one row: its table, its key fields and its payload parts, in order. */
export function rowChecksum(table: string, key: Canonical, payload: readonly Uint8Array[]): Uint8Array {
  return sha256Parts([DOMAIN, encodeCanonical([table, key]), ...payload]);
}

/**
 * Whether `stored` is the checksum of the row as read. A key field a damaged file gives
 * back as something no row is written with (a flipped bit in SQLite's record header turns
 * an integer into a float, NaN say, which the canonical encoding refuses) makes the row
 * damaged too, not an error of the reader.
 */
export function rowIntact(table: string, key: Canonical, payload: readonly Uint8Array[], stored: Uint8Array | null | undefined): boolean {
  if (!(stored instanceof Uint8Array) || stored.length !== CHECKSUM_BYTES) return false;
  for (const part of payload) if (!(part instanceof Uint8Array)) return false;
  let expected: Uint8Array;
  try {
    expected = rowChecksum(table, key, payload);
  } catch (error) {
    if (error instanceof CanonicalError) return false;
    throw error;
  }
  return bytesEqual(expected, stored);
}
