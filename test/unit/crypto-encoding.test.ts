import { describe, expect, test } from "bun:test";
import { bytesEqual, concatBytes, fromBase64urlStrict, fromHex, nativeBytesEqual, toBase64url, toHex } from "../../src/crypto/encoding.ts";
import { sha256, sha256Hex, sha256Parts } from "../../src/crypto/hash.ts";

const utf8 = (text: string) => new TextEncoder().encode(text);

describe("hex", () => {
  test("round trips and is lowercase", () => {
    const bytes = Uint8Array.from([0, 1, 0xab, 0xff]);
    expect(toHex(bytes)).toBe("0001abff");
    expect(fromHex("0001abff")).toEqual(bytes);
  });

  test("respects subarray offsets", () => {
    const whole = Uint8Array.from([1, 2, 3, 4]);
    expect(toHex(whole.subarray(1, 3))).toBe("0203");
  });

  test("rejects odd length, uppercase and non-hex", () => {
    expect(() => fromHex("abc")).toThrow(/even number of digits/);
    expect(() => fromHex("AB")).toThrow(RangeError);
    expect(() => fromHex("zz")).toThrow(RangeError);
  });
});

describe("strict base64url", () => {
  test("round trips every length from 0 to 40", () => {
    for (let length = 0; length <= 40; length += 1) {
      const bytes = Uint8Array.from({ length }, (_, i) => (i * 37 + length) & 0xff);
      const text = toBase64url(bytes);
      expect(text).not.toContain("=");
      expect(fromBase64urlStrict(text)).toEqual(bytes);
    }
  });

  test("rejects padding, the standard alphabet, impossible lengths and dirty trailing bits", () => {
    expect(fromBase64urlStrict("AA==")).toBeNull();
    expect(fromBase64urlStrict("a+b/")).toBeNull();
    expect(fromBase64urlStrict("AAAAA")).toBeNull();
    // "AB" decodes to one byte 0x00 but leaves the low bits of "B" set: not canonical.
    expect(fromBase64urlStrict("AB")).toBeNull();
    expect(fromBase64urlStrict("AA")).toEqual(Uint8Array.from([0]));
  });
});

describe("byte helpers", () => {
  test("bytesEqual compares content and length", () => {
    expect(bytesEqual(Uint8Array.from([1, 2]), Uint8Array.from([1, 2]))).toBe(true);
    expect(bytesEqual(Uint8Array.from([1, 2]), Uint8Array.from([1, 3]))).toBe(false);
    expect(bytesEqual(Uint8Array.from([1, 2]), Uint8Array.from([1, 2, 0]))).toBe(false);
  });

  test("nativeBytesEqual answers as bytesEqual, whatever the views' offsets and buffers", () => {
    const whole = Uint8Array.from({ length: 70_000 }, (_, i) => (i * 7) & 0xff);
    const cases: Array<[Uint8Array, Uint8Array]> = [
      [whole.subarray(3, 60_003), whole.slice(3, 60_003)],
      [whole.subarray(0, 60_000), whole.subarray(3, 60_003)],
      [whole.subarray(5, 9), Uint8Array.from(whole.subarray(5, 9))],
      [whole.subarray(1, 10), whole.subarray(1, 11)],
      [new Uint8Array(0), whole.subarray(7, 7)],
      [Buffer.from(whole.subarray(0, 100)), whole.subarray(0, 100)],
    ];
    const changed = whole.slice(3, 60_003);
    changed[59_999] = (changed[59_999] as number) ^ 1;
    cases.push([whole.subarray(3, 60_003), changed]);
    for (const [a, b] of cases) {
      expect(nativeBytesEqual(a, b)).toBe(bytesEqual(a, b));
      expect(nativeBytesEqual(b, a)).toBe(bytesEqual(a, b));
    }
    expect(cases.map(([a, b]) => bytesEqual(a, b))).toEqual([true, false, true, false, true, true, false]);
  });

  test("concatBytes joins in order", () => {
    expect(concatBytes(Uint8Array.from([1]), new Uint8Array(0), Uint8Array.from([2, 3]))).toEqual(Uint8Array.from([1, 2, 3]));
  });
});

describe("sha256", () => {
  // FIPS 180-2 examples.
  test("matches the standard test vectors", () => {
    expect(sha256Hex(new Uint8Array(0))).toBe("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    expect(sha256Hex(utf8("abc"))).toBe("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  });

  test("hashing parts equals hashing the concatenation", () => {
    const parts = [utf8("a"), utf8(""), utf8("bc")];
    expect(sha256Parts(parts)).toEqual(sha256(utf8("abc")));
    expect(sha256(utf8("abc")).byteLength).toBe(32);
  });
});
