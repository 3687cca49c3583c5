import { describe, expect, test } from "bun:test";
import { bytesEqual, fromHex, toHex, writeUint32BE, writeUint64BE } from "../../wire/bytes.ts";

describe("wire byte helpers", () => {
  test("writeUint32BE writes what a big-endian DataView writes, at any offset", () => {
    for (const value of [0, 1, 0xff, 0x100, 0x1234_5678, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff]) {
      for (const at of [0, 3]) {
        const ours = new Uint8Array(9).fill(0xaa);
        writeUint32BE(ours, at, value);
        const theirs = new Uint8Array(9).fill(0xaa);
        new DataView(theirs.buffer).setUint32(at, value, false);
        expect(toHex(ours)).toBe(toHex(theirs));
      }
    }
  });

  test("writeUint64BE writes what setBigUint64 writes, up to the largest safe integer", () => {
    for (const value of [0, 1, 0xffff_ffff, 0x1_0000_0000, 2 ** 40 + 7, Number.MAX_SAFE_INTEGER]) {
      const ours = new Uint8Array(10);
      writeUint64BE(ours, 1, value);
      const theirs = new Uint8Array(10);
      new DataView(theirs.buffer).setBigUint64(1, BigInt(value), false);
      expect(toHex(ours)).toBe(toHex(theirs));
    }
  });

  test("equality and hex round trip", () => {
    expect(bytesEqual(fromHex("00ff10"), Uint8Array.of(0, 255, 16))).toBe(true);
    expect(bytesEqual(fromHex("00ff10"), Uint8Array.of(0, 255))).toBe(false);
    expect(toHex(fromHex("deadbeef"))).toBe("deadbeef");
  });
});
