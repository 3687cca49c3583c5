// The lines the relay writes (wire/PROTOCOL.md 11.2, 11.3), the line-safe rule that picks
// EVENT or EVENTB, and the --listen address rules (loopback unless allowed).
import { describe, expect, test } from "bun:test";
import { REASON_BYTES_MAX } from "../../wire/types.ts";
import { ackLine, endLine, errLine, eventBytes, isLineSafe, oneLineReason } from "../../src/relay/format.ts";
import { isLoopbackHost, parseListenAddress, remoteListenRefusal } from "../../src/relay/listen.ts";
import { DEFAULT_RELAY_LIMITS, RELAY_PUBLISH_BYTES_MAX, resolveRelayLimits, tcpSubscriptionsMax } from "../../src/relay/limits.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const header = { tag: "net.links", seq: 17, publisher: "ed25519:AbC", tsMs: 1767225600000 };

describe("line-safe payloads", () => {
  test("UTF-8 text with spaces and TABs is line-safe, including the empty payload", () => {
    for (const text of ["eth0 down", "café été", "a\tb", "", "日本語 ✓", "emoji 🎉"]) expect(isLineSafe(enc.encode(text))).toBe(true);
  });

  test("LF, CR, other control bytes, DEL and malformed UTF-8 are not", () => {
    const unsafe = [[0x61, 0x0a], [0x0d], [0x00], [0x1b, 0x5b], [0x7f], [0xff], [0xc3], [0xed, 0xa0, 0x80], [0xc0, 0xaf]];
    for (const payload of unsafe) expect(isLineSafe(Uint8Array.from(payload))).toBe(false);
  });
});

describe("event lines", () => {
  test("EVENT: the payload to the end of the line, as it is", () => {
    expect(dec.decode(eventBytes(header, enc.encode("eth0 down")))).toBe("EVENT net.links 17 ed25519:AbC 1767225600000 eth0 down\n");
  });

  test("an empty payload leaves the line ending in the separating space", () => {
    expect(dec.decode(eventBytes(header, new Uint8Array(0)))).toBe("EVENT net.links 17 ed25519:AbC 1767225600000 \n");
  });

  test("EVENTB: the count, LF, exactly n bytes, LF", () => {
    const payload = enc.encode("eth1 up\n");
    const line = eventBytes({ ...header, seq: 18 }, payload);
    const head = enc.encode("EVENTB net.links 18 ed25519:AbC 1767225600000 8\n");
    expect([...line]).toEqual([...head, ...payload, 0x0a]);
  });

  test("binary payloads arrive byte for byte", () => {
    const payload = Uint8Array.from({ length: 256 }, (_, i) => i);
    const line = eventBytes(header, payload);
    const newline = line.indexOf(0x0a);
    expect(dec.decode(line.subarray(0, newline))).toBe("EVENTB net.links 17 ed25519:AbC 1767225600000 256");
    expect([...line.subarray(newline + 1, newline + 1 + 256)]).toEqual([...payload]);
    expect(line.byteLength).toBe(newline + 1 + 256 + 1);
  });
});

describe("answers", () => {
  test("+OK with tag and seq, -ERR with code and reason, END with tag, code and reason", () => {
    expect(ackLine("net.links", 17)).toBe("+OK net.links 17\n");
    expect(errLine("UNKNOWN_CHANNEL", "no channel x")).toBe("-ERR UNKNOWN_CHANNEL no channel x\n");
    expect(endLine("net.links", "SLOW", "resume with SUB net.links 5")).toBe("END net.links SLOW resume with SUB net.links 5\n");
  });

  test("a reason is one line of at most REASON_BYTES_MAX bytes", () => {
    expect(errLine("INTERNAL", "first\nsecond\r\nthird\u0007")).toBe("-ERR INTERNAL first second third\n");
    const long = oneLineReason("é".repeat(REASON_BYTES_MAX));
    expect(enc.encode(long).byteLength).toBeLessThanOrEqual(REASON_BYTES_MAX);
    expect(enc.encode(long).byteLength).toBeGreaterThan(REASON_BYTES_MAX - 2);
    expect(long).toMatch(/^é+$/);
  });
});

describe("--listen", () => {
  test("HOST:PORT and [IPV6]:PORT", () => {
    expect(parseListenAddress("127.0.0.1:7400")).toEqual({ ok: true, address: { host: "127.0.0.1", port: 7400 } });
    expect(parseListenAddress("[::1]:7400")).toEqual({ ok: true, address: { host: "::1", port: 7400 } });
    expect(parseListenAddress("localhost:1")).toEqual({ ok: true, address: { host: "localhost", port: 1 } });
  });

  test("malformed addresses and ports are refused with a reason", () => {
    for (const text of ["7400", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "::1:7400", "[nothost]:7400", "h:p", ""]) {
      const parsed = parseListenAddress(text);
      expect(parsed.ok).toBe(false);
    }
  });

  test("loopback: 127.0.0.0/8, ::1, localhost; nothing else", () => {
    for (const host of ["127.0.0.1", "127.1.2.3", "::1", "localhost", "LOCALHOST", "::ffff:127.0.0.1"])
      expect(isLoopbackHost(host)).toBe(true);
    for (const host of ["0.0.0.0", "::", "10.0.0.1", "192.168.1.2", "128.0.0.1", "example.org", "localhost.example.org"])
      expect(isLoopbackHost(host)).toBe(false);
  });
});

describe("relay limits", () => {
  test("the hard output bound leaves room for the event bound, a batch and every answer", () => {
    const limits = resolveRelayLimits({ eventOutboundBytesMax: 1000, readPauseOutboundBytes: 100 });
    expect(limits.outboundBytesMax).toBeGreaterThan(1100);
    expect(() => resolveRelayLimits({ pendingAnswersMax: 0 })).toThrow(RangeError);
  });

  test("a connection's own publish bytes are a quarter of the relay's, lowered with them unless given", () => {
    expect(resolveRelayLimits().connectionPublishBytesMax).toBe(RELAY_PUBLISH_BYTES_MAX / 4);
    expect(resolveRelayLimits({ publishBytesMax: 1000 }).connectionPublishBytesMax).toBe(250);
    expect(resolveRelayLimits({ publishBytesMax: 1000, connectionPublishBytesMax: 600 }).connectionPublishBytesMax).toBe(600);
  });

  test("the stall timeout and the relay-wide output bounds have their documented defaults", () => {
    expect(DEFAULT_RELAY_LIMITS.outputStallTimeoutMs).toBe(60_000);
    expect(DEFAULT_RELAY_LIMITS.relayOutboundBytesMax).toBe(256 * 1024 * 1024);
    expect(DEFAULT_RELAY_LIMITS.relayAnswerOutboundBytesMax).toBe(32 * 1024 * 1024);
  });

  test("with a Unix socket the TCP port's connections hold three quarters of the subscriptions, rounded up", () => {
    expect(tcpSubscriptionsMax(256)).toBe(192);
    expect([1, 2, 3, 4, 5].map(tcpSubscriptionsMax)).toEqual([1, 2, 3, 3, 4]);
  });
});

describe("--listen refused beyond loopback", () => {
  test("one reason for fitb relay and fitb service unit, naming --allow-remote", () => {
    expect(remoteListenRefusal("127.0.0.1:7400", { host: "127.0.0.1", port: 7400 })).toBeNull();
    expect(remoteListenRefusal("0.0.0.0:7400", { host: "0.0.0.0", port: 7400 })).toContain("needs --allow-remote");
  });
});
