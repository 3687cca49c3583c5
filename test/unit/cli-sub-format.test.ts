/** `fitb sub` plain lines: text when it is safe, and `base64:` always meaning base64. */
import { describe, expect, test } from "bun:test";
import type { ReceivedBatch } from "../../src/client/subscription.ts";
import { parseTemplate, plainLine, reportSignal, templateLine } from "../../src/cli/commands/sub.ts";
import { UsageError } from "../../src/cli/errors.ts";

const utf8 = (text: string): Uint8Array => new TextEncoder().encode(text);

function batch(events: Uint8Array[]): ReceivedBatch {
  return { tag: "sec.alerts", seq: 14, pubSeq: 3, publisher: new Uint8Array(32), ts: 0, events };
}

describe("plain lines", () => {
  test("one-line UTF-8 text is printed as it is", () => {
    expect(plainLine(batch([utf8("eth0 down")]), 0)).toBe("sec.alerts 14 eth0 down");
  });

  test("bytes, line breaks, and text that begins with base64: itself are printed as base64", () => {
    const b = batch([new Uint8Array([0xff, 0x00]), utf8("two\nlines"), utf8("base64:aGVsbG8=")]);
    expect(plainLine(b, 0)).toBe("sec.alerts 14 base64:/wA=");
    expect(plainLine(b, 1)).toBe(`sec.alerts 15 base64:${Buffer.from("two\nlines").toString("base64")}`);
    expect(plainLine(b, 2)).toBe(`sec.alerts 16 base64:${Buffer.from("base64:aGVsbG8=").toString("base64")}`);
  });
});

describe("--format templates", () => {
  test("fields are replaced, the rest is kept; time is ISO 8601 UTC of the signed ts", () => {
    const line = templateLine(parseTemplate("[{time}] {ts} {publisher} {tag}#{seq}: {payload}!"));
    const b = { ...batch([utf8("a"), new Uint8Array([0xff])]), ts: 1767225600004 };
    expect(line(b, 0)).toBe(
      "[2026-01-01T00:00:00.004Z] 1767225600004 ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA sec.alerts#14: a!",
    );
    expect(line(b, 1)).toBe(
      "[2026-01-01T00:00:00.004Z] 1767225600004 ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA sec.alerts#15: base64:/w==!",
    );
    expect(templateLine(parseTemplate("{seq}"))(b, 1)).toBe("15");
  });

  test("an unknown field is a usage error naming it", () => {
    expect(() => parseTemplate("{seq} {when}")).toThrow(UsageError);
    expect(() => parseTemplate("{seq} {when}")).toThrow("unknown field {when}");
  });
});

describe("signal lines on standard error", () => {
  test("a rate-limited invalid signal is one line naming how many copies it stands for", () => {
    const lines: string[] = [];
    const io = { err: (line: string) => lines.push(line) };
    reportSignal(io, { t: "invalid", replica: 3, reason: "bad-signature" });
    reportSignal(io, { t: "invalid", replica: 3, reason: "bad-signature", copies: 4_000 });
    reportSignal(io, { t: "overflow", source: "dedupe", replica: 2, droppedEvents: 7, reason: "below a forgotten range" });
    expect(lines).toEqual([
      "fitb sub: warning: replica 3 sent a copy that failed its checks (bad-signature); dropped",
      "fitb sub: warning: replica 3 sent 4000 copies that failed their checks (last: bad-signature); dropped",
      "fitb sub: warning: 7 events dropped: below a forgotten range",
    ]);
  });

  test("a replica's SLOW end is told in its own words: it need not be this client that was slow", () => {
    const lines: string[] = [];
    const io = { err: (line: string) => lines.push(line) };
    const reason = "this replica caught up by state transfer; resubscribe from the next seq you need";
    reportSignal(io, { t: "slow", source: "replica", replica: 2, resumeFrom: 40, reason });
    expect(lines).toEqual([`fitb sub: warning: replica 2 ended the subscription SLOW (${reason}); resubscribed, nothing lost`]);
  });
});
