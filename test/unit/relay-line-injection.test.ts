// Output injection through a payload: characters that are well-formed UTF-8 and no C0
// control, but that end a line for some readers (NEL U+0085, U+2028, U+2029: Python's
// splitlines() splits there), drive a terminal (C1 controls) or show text in another order
// (bidi controls). The relay sends such a payload as EVENTB (wire/PROTOCOL.md 11.3), never
// inside an EVENT line where a reader would see lines the relay never wrote; a reason is
// flattened; and `fitb sub` prints such a payload as base64, as it does one with a newline.
import { describe, expect, test } from "bun:test";
import type { ReceivedBatch } from "../../src/client/subscription.ts";
import { jsonLine, plainLine, templateLine, parseTemplate } from "../../src/cli/commands/sub.ts";
import { errLine, eventBytes, isLineSafe } from "../../src/relay/format.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const header = { tag: "net.links", seq: 17, publisher: "ed25519:AbC", tsMs: 1767225600000 };

/** Python's str.splitlines() line boundaries beyond \n and \r (docs.python.org, str.splitlines). */
const SPLITLINES_BREAKS = ["\u000b", "\u000c", "\u001c", "\u001d", "\u001e", "\u0085", "\u2028", "\u2029"];
/** C1 controls (a few), line/paragraph separators, and every bidi control (Unicode Bidi_Control). */
const UNSAFE = [
  "\u0080",
  "\u0085",
  "\u009b",
  "\u009f",
  "\u2028",
  "\u2029",
  "\u061c",
  "\u200e",
  "\u200f",
  "\u202a",
  "\u202b",
  "\u202c",
  "\u202d",
  "\u202e",
  "\u2066",
  "\u2067",
  "\u2068",
  "\u2069",
];
/** Neighbours of the unsafe ones that are plain text: the test is on the characters, not their lead bytes. */
const SAFE_NEIGHBOURS = [
  "\u00a0",
  "\u00e9",
  "\u0100",
  "\u061b",
  "\u200b",
  "\u200d",
  "\u2010",
  "\u2027",
  "\u202f",
  "\u2065",
  "\u206a",
  "\u20ac",
];

/** The lines a splitlines() reader sees. */
function splitlines(text: string): string[] {
  const breaks = new RegExp(`\\r\\n|[\\n\\r${SPLITLINES_BREAKS.join("")}]`);
  return text.split(breaks).filter((line, i, all) => i < all.length - 1 || line !== "");
}

function batch(events: Uint8Array[]): ReceivedBatch {
  return { tag: "sec.alerts", seq: 14, pubSeq: 3, publisher: new Uint8Array(32), ts: 0, events };
}

describe("the relay's EVENT lines", () => {
  test("a C1 control, a line or paragraph separator or a bidi control makes the payload EVENTB", () => {
    for (const char of UNSAFE) {
      const payload = enc.encode(`eth0 down${char}+OK net.links 99`);
      expect([char, isLineSafe(payload)]).toEqual([char, false]);
      const out = eventBytes(header, payload);
      expect(dec.decode(out.subarray(0, out.indexOf(0x0a)))).toBe(`EVENTB net.links 17 ed25519:AbC 1767225600000 ${payload.byteLength}`);
    }
  });

  test("the characters around them stay line-safe", () => {
    for (const char of SAFE_NEIGHBOURS) expect([char, isLineSafe(enc.encode(`a${char}b`))]).toEqual([char, true]);
  });

  test("a splitlines() reader sees the relay's line up to its LF as one line, whatever the payload", () => {
    for (const char of [...UNSAFE, ...SPLITLINES_BREAKS]) {
      const out = dec.decode(eventBytes(header, enc.encode(`x${char}+OK net.links 99`)));
      expect([char, splitlines(out.slice(0, out.indexOf("\n") + 1))]).toEqual([char, [expect.stringMatching(/^EVENTB /)]]);
    }
  });

  test("a reason (it may quote a replica) is one line for a splitlines() reader, with no bidi control", () => {
    const line = errLine("INTERNAL", `a\u2028+OK net.links 1\u0085b\u202ec\u2066d`);
    expect(line).toBe("-ERR INTERNAL a +OK net.links 1 b c d\n");
    expect(splitlines(line)).toHaveLength(1);
  });
});

describe("fitb sub", () => {
  test("a payload with any control character but TAB is printed as base64, as one with a newline is", () => {
    const texts = ["tab\tis fine", ...[...UNSAFE, ...SPLITLINES_BREAKS, "\u001b[2J", "\u0007", "\u007f"].map((char) => `a${char}b`)];
    const b = batch(texts.map((text) => enc.encode(text)));
    expect(plainLine(b, 0)).toBe("sec.alerts 14 tab\tis fine");
    for (let i = 1; i < texts.length; i++) {
      expect(plainLine(b, i)).toBe(`sec.alerts ${14 + i} base64:${Buffer.from(texts[i] as string).toString("base64")}`);
    }
    const template = templateLine(parseTemplate("{payload}"));
    expect(template(b, 1)).toStartWith("base64:");
  });

  test("--json lines escape the characters JSON leaves raw, and still parse to the payload", () => {
    for (const char of [...UNSAFE, "\u007f"]) {
      const text = `a${char}b`;
      const line = jsonLine(batch([enc.encode(text)]), 0);
      expect(splitlines(line)).toHaveLength(1);
      expect(line).not.toContain(char);
      expect(JSON.parse(line).payload).toBe(text);
    }
  });
});
