/**
 * Reasons stay within REASON_BYTES_MAX and stay text that encodes: a schema's message may
 * quote what the peer sent (a 100 kB unknown key), and a reason cut by UTF-16 units could
 * end in half a surrogate pair, which the canonical encoder refuses, so the refusal quoting
 * it was never sent (wire/types.ts clipUtf8, wireError).
 */
import { expect, test } from "bun:test";
import { encodeCanonical } from "../../wire/canonical.ts";
import { decodeFrameBody } from "../../wire/schemas.ts";
import { clipUtf8, FrameType, REASON_BYTES_MAX } from "../../wire/types.ts";

const utf8Bytes = (text: string): number => new TextEncoder().encode(text).byteLength;

test("a frame quoting a 100 kB unknown key gets a reason of at most REASON_BYTES_MAX bytes", () => {
  const result = decodeFrameBody(FrameType.SUBSCRIBE, encodeCanonical({ sub: 1, tag: "a.b", ["k".repeat(100_000)]: 0 }));
  expect(result.ok).toBe(false);
  if (result.ok) return;
  expect(utf8Bytes(result.error.reason)).toBeLessThanOrEqual(REASON_BYTES_MAX);
  expect(result.error.reason).toStartWith("SUBSCRIBE: ");
});

test("clipUtf8 cuts at a character boundary, within the bytes, whatever the characters", () => {
  for (let pad = 0; pad < 200; pad++) {
    const text = `${"x".repeat(pad)}${"é".repeat(20)}${"😀".repeat(40)}${"中".repeat(20)}`;
    for (const bytes of [1, 2, 3, 5, 120, 200]) {
      const cut = clipUtf8(text, bytes);
      expect(cut.isWellFormed()).toBe(true);
      expect(utf8Bytes(cut)).toBeLessThanOrEqual(bytes);
      // Nothing was cut that fitted: the next character would not.
      expect(text.startsWith(cut)).toBe(true);
      if (cut.length < text.length) {
        const next = String.fromCodePoint(text.codePointAt(cut.length) as number);
        expect(utf8Bytes(cut) + utf8Bytes(next)).toBeGreaterThan(bytes);
      }
      // Every such cut encodes.
      expect(() => encodeCanonical({ reason: cut })).not.toThrow();
    }
  }
  expect(clipUtf8("short", REASON_BYTES_MAX)).toBe("short");
});
