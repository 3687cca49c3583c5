/**
 * Row checksums (src/replica/storage/checksum.ts): a row read back from a damaged file is
 * judged damaged, whatever its fields decoded to, never an error of the reader.
 */
import { describe, expect, test } from "bun:test";
import { rowChecksum, rowIntact } from "../../src/replica/storage/checksum.ts";

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
});
