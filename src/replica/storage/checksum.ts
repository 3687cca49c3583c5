/**
 * Row checksums. Every row the store writes carries SHA-256 over its table name, its key
 * and its payload, so that a flipped bit anywhere in the row, a row that moved to another
 * key, or a payload cut short is caught when the row is read, and again by the full scan
 * at start. SHA-256 rather than a CRC: it is what the rest of fitb already hashes with,
 * it runs natively, and a checksum that never collides by accident needs no argument.
 *
 * Two forms, told apart by their length:
 *
 * - the full form (32 bytes): SHA-256 over `fitb/v1/store-row`, the canonical encoding of
 *   `[table, key]`, and every payload part;
 * - the digest form (33 bytes: the form byte 1, then 32): SHA-256 over
 *   `fitb/v1/store-row-digest`, `[table, key]`, the SHA-256 of the first payload part, and
 *   the other parts. A writer that already holds the SHA-256 of a large part (a batch, by
 *   its digest; an unordered event's body, hashed when its request arrived) checksums the
 *   row without hashing that part again. A reader hashes the part either way, so the
 *   check is as strong: a flipped bit in the part changes its SHA-256.
 *
 * The digest form came with store format 3 (store.ts) for batch and unordered rows
 * (DIGEST_FORM_TABLES); rows of the full form stay valid.
 */
import { CanonicalError, encodeCanonical, type Canonical } from "../../../wire/canonical.ts";
import { bytesEqual } from "../../crypto/encoding.ts";
import { sha256, sha256Parts } from "../../crypto/hash.ts";

/** Bytes of a row checksum of the full form. */
export const CHECKSUM_BYTES = 32;
/** Bytes of a row checksum of the digest form: the form byte, then the SHA-256. */
export const DIGEST_CHECKSUM_BYTES = 1 + CHECKSUM_BYTES;
/** The first byte of a digest-form checksum. */
export const DIGEST_FORM = 1;

/** The tables whose rows are written with the digest form; another table's row in it is damage. */
export const DIGEST_FORM_TABLES: ReadonlySet<string> = new Set(["batch", "unordered"]);

const DOMAIN = new TextEncoder().encode("fitb/v1/store-row");
const DIGEST_DOMAIN = new TextEncoder().encode("fitb/v1/store-row-digest");

/** The checksum of one row (full form): its table, its key fields and its payload parts, in order. */
export function rowChecksum(table: string, key: Canonical, payload: readonly Uint8Array[]): Uint8Array {
  return sha256Parts([DOMAIN, encodeCanonical([table, key]), ...payload]);
}

/**
 * The checksum of one row in the digest form, for a row whose payload is a part the
 * caller knows the SHA-256 of (`firstDigest`, which must be SHA-256 of exactly the bytes
 * written: a reader that finds otherwise takes the row as damaged), then `rest`.
 */
export function rowChecksumOfDigest(table: string, key: Canonical, firstDigest: Uint8Array, rest: readonly Uint8Array[]): Uint8Array {
  const sum = new Uint8Array(DIGEST_CHECKSUM_BYTES);
  sum[0] = DIGEST_FORM;
  sum.set(digestFormSum(table, key, firstDigest, rest), 1);
  return sum;
}

function digestFormSum(table: string, key: Canonical, firstDigest: Uint8Array, rest: readonly Uint8Array[]): Uint8Array {
  return sha256Parts([DIGEST_DOMAIN, encodeCanonical([table, key]), firstDigest, ...rest]);
}

/**
 * Whether `stored` is the checksum of the row as read, in either form. A key field a
 * damaged file gives back as something no row is written with (a flipped bit in SQLite's
 * record header turns an integer into a float, NaN say, which the canonical encoding
 * refuses) makes the row damaged too, not an error of the reader.
 */
export function rowIntact(table: string, key: Canonical, payload: readonly Uint8Array[], stored: Uint8Array | null | undefined): boolean {
  if (!(stored instanceof Uint8Array)) return false;
  for (const part of payload) if (!(part instanceof Uint8Array)) return false;
  const digestForm =
    stored.length === DIGEST_CHECKSUM_BYTES && stored[0] === DIGEST_FORM && payload.length > 0 && DIGEST_FORM_TABLES.has(table);
  if (!digestForm && stored.length !== CHECKSUM_BYTES) return false;
  let expected: Uint8Array;
  try {
    expected = digestForm
      ? digestFormSum(table, key, sha256(payload[0] as Uint8Array), payload.slice(1))
      : rowChecksum(table, key, payload);
  } catch (error) {
    if (error instanceof CanonicalError) return false;
    throw error;
  }
  return bytesEqual(expected, digestForm ? stored.subarray(1) : stored);
}
