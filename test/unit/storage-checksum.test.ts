/**
 * Row checksums (src/replica/storage/checksum.ts): a row read back from a damaged file is
 * judged damaged, whatever its fields decoded to, never an error of the reader.
 */
import { describe, expect, test } from "bun:test";
import { sha256 } from "../../src/crypto/hash.ts";
import { DIGEST_FORM, rowChecksum, rowChecksumOfDigest, rowIntact } from "../../src/replica/storage/checksum.ts";

describe("row checksums", () => {
  const payload = [new Uint8Array([1, 2, 3])];
  const sum = rowChecksum("batch", [new Uint8Array(32).fill(7), 3], payload);

  test("the row as written is intact; a changed key, payload or checksum is not", () => {
    expect(rowIntact("batch", [new Uint8Array(32).fill(7), 3], payload, sum)).toBe(true);
    expect(rowIntact("batch", [new Uint8Array(32).fill(7), 4], payload, sum)).toBe(false);
    expect(rowIntact("batch", [new Uint8Array(32).fill(7), 3], [new Uint8Array([1, 2, 4])], sum)).toBe(false);
    expect(rowIntact("batch", [new Uint8Array(32).fill(7), 3], payload, sum.subarray(1))).toBe(false);
  });

  test("a key field no row is written with (a flipped record header turned an integer into NaN, a float, a huge value) is damage, not a throw", () => {
    // What a bitflip in SQLite's record header gives back for an integer column: the
    // runtime simulator's seed 47304 stopped a replica at start with "only safe integers
    // are encodable, got NaN" instead of finding the row damaged.
    for (const bad of [Number.NaN, 3.5, 2 ** 60, Number.POSITIVE_INFINITY]) {
      expect(rowIntact("batch", [new Uint8Array(32).fill(7), bad], payload, sum)).toBe(false);
    }
  });

  describe("the digest form (the writer knows the SHA-256 of the first part)", () => {
    const key = [1, "net.links", 0, 1000];
    const body = new Uint8Array(4096).map((_, i) => i % 251);
    const sig = new Uint8Array(64).fill(9);
    const digestSum = rowChecksumOfDigest("unordered", key, sha256(body), [sig]);

    test("is 33 bytes, the form byte first, and the row as written is intact", () => {
      expect(digestSum.length).toBe(33);
      expect(digestSum[0]).toBe(DIGEST_FORM);
      expect(rowIntact("unordered", key, [body, sig], digestSum)).toBe(true);
    });

    test("a flipped bit in the first part, in the rest, in the key or in the checksum is damage", () => {
      const flipped = body.slice();
      flipped[1234] = (flipped[1234] as number) ^ 0x10;
      expect(rowIntact("unordered", key, [flipped, sig], digestSum)).toBe(false);
      expect(rowIntact("unordered", key, [body, sig.map((b, i) => (i === 3 ? b ^ 1 : b))], digestSum)).toBe(false);
      expect(rowIntact("unordered", [2, "net.links", 0, 1000], [body, sig], digestSum)).toBe(false);
      expect(rowIntact("batch", key, [body, sig], digestSum)).toBe(false);
      const badSum = digestSum.slice();
      badSum[20] = (badSum[20] as number) ^ 0x01;
      expect(rowIntact("unordered", key, [body, sig], badSum)).toBe(false);
    });

    test("a digest that is not the SHA-256 of the bytes written makes the row read back as damaged", () => {
      const wrong = rowChecksumOfDigest("unordered", key, sha256(new Uint8Array([1])), [sig]);
      expect(rowIntact("unordered", key, [body, sig], wrong)).toBe(false);
    });

    test("the two forms never stand for each other: a full-form sum with a form byte in front, or a digest-form sum without it, is damage", () => {
      const full = rowChecksum("unordered", key, [body, sig]);
      expect(rowIntact("unordered", key, [body, sig], full)).toBe(true);
      const dressed = new Uint8Array(33);
      dressed[0] = DIGEST_FORM;
      dressed.set(full, 1);
      expect(rowIntact("unordered", key, [body, sig], dressed)).toBe(false);
      expect(rowIntact("unordered", key, [body, sig], digestSum.subarray(1))).toBe(false);
      // Only batch and unordered rows are written in the digest form.
      const meta = rowChecksumOfDigest("meta", key, sha256(body), [sig]);
      expect(rowIntact("meta", key, [body, sig], meta)).toBe(false);
      // Another form byte is no form this build knows.
      const other = digestSum.slice();
      other[0] = 2;
      expect(rowIntact("unordered", key, [body, sig], other)).toBe(false);
    });
  });
});
