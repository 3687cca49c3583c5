// Audit lines (issue 15, item 3): warn lines with kind, key, address and reason, at most
// AUDIT_LINES_PER_WINDOW per kind per window, and one line saying how many were left out.
import { describe, expect, test } from "bun:test";
import {
  AUDIT_LINES_PER_SOURCE_PER_WINDOW,
  AUDIT_LINES_PER_WINDOW,
  AUDIT_SOURCES_PER_WINDOW_MAX,
  AUDIT_WINDOW_MS,
  AuditLog,
} from "../../src/replica/audit.ts";
import { createLog, parseLogLevel } from "../../src/replica/log.ts";

function capture(): { lines: Record<string, unknown>[]; audit: AuditLog; clock: { ms: number } } {
  const lines: Record<string, unknown>[] = [];
  const clock = { ms: 1_000_000 };
  const log = createLog({ replica: 0 }, "info", (line) => lines.push(JSON.parse(line)));
  return { lines, audit: new AuditLog(log, () => clock.ms), clock };
}

describe("audit log", () => {
  test("a line is a warn with its kind, the key as ed25519:..., the address and the reason", () => {
    const { lines, audit } = capture();
    audit.warn("request-refused", "request refused", { key: new Uint8Array(32).fill(7), address: "127.0.0.9", reason: "UNAUTHORIZED: x" });
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({
      level: "warn",
      msg: "request refused",
      audit: "request-refused",
      address: "127.0.0.9",
      reason: "UNAUTHORIZED: x",
    });
    expect(String(lines[0]?.key)).toStartWith("ed25519:");
  });

  test("a flood writes AUDIT_LINES_PER_WINDOW lines per kind, then one line with how many were left out", () => {
    const { lines, audit, clock } = capture();
    for (let i = 0; i < 10_000; i++) audit.warn("handshake-failed", "handshake failed", { address: `10.0.${i % 100}.1`, reason: "bad" });
    audit.warn("rate-limited", "request rate-limited", { reason: "RATE_LIMITED" });
    expect(lines.filter((l) => l.audit === "handshake-failed")).toHaveLength(AUDIT_LINES_PER_WINDOW);
    expect(lines.filter((l) => l.audit === "rate-limited")).toHaveLength(1);
    audit.flush();
    expect(lines).toHaveLength(AUDIT_LINES_PER_WINDOW + 1);
    clock.ms += AUDIT_WINDOW_MS;
    audit.flush();
    const summary = lines.at(-1);
    expect(summary).toMatchObject({
      msg: "audit lines left out (rate limit)",
      audit: "handshake-failed",
      suppressed: 10_000 - AUDIT_LINES_PER_WINDOW,
    });
    audit.warn("handshake-failed", "handshake failed", { reason: "again" });
    expect(lines.at(-1)).toMatchObject({ reason: "again" });
  });

  test("one source writes at most its share of a window: the next client's refusal is still logged, and the summary names the noisy one", () => {
    const { lines, audit, clock } = capture();
    const noisy = new Uint8Array(32).fill(1);
    const quiet = new Uint8Array(32).fill(2);
    for (let i = 0; i < 30; i++)
      audit.warn("request-refused", "request refused", { key: noisy, address: "10.0.0.1", reason: "UNAUTHORIZED" });
    audit.warn("request-refused", "request refused", { key: quiet, address: "10.0.0.1", reason: "UNAUTHORIZED" });
    const written = lines.filter((l) => l.audit === "request-refused");
    expect(written).toHaveLength(AUDIT_LINES_PER_SOURCE_PER_WINDOW + 1);
    expect(written.at(-1)?.key).not.toBe(written[0]?.key);
    clock.ms += AUDIT_WINDOW_MS;
    audit.flush();
    expect(lines.at(-1)).toMatchObject({
      msg: "audit lines left out (rate limit)",
      audit: "request-refused",
      suppressed: 30 - AUDIT_LINES_PER_SOURCE_PER_WINDOW,
      most: [{ source: written[0]?.key, suppressed: 30 - AUDIT_LINES_PER_SOURCE_PER_WINDOW }],
    });
  });

  test("sources past the bound share one count: the window's memory stays bounded", () => {
    const { lines, audit, clock } = capture();
    for (let i = 0; i < AUDIT_SOURCES_PER_WINDOW_MAX + 100; i++) {
      for (let j = 0; j < AUDIT_LINES_PER_SOURCE_PER_WINDOW + 1; j++)
        audit.warn("client-refused", "refused", { address: `10.1.${i >> 8}.${i & 255}`, reason: "x" });
    }
    clock.ms += AUDIT_WINDOW_MS;
    audit.flush();
    const summary = lines.at(-1) as { most: { source: string; suppressed: number }[] };
    // Every source past the bound falls into `other`, which lost the most lines.
    expect(summary.most[0]?.source).toBe("other");
    expect(summary.most).toHaveLength(3);
  });

  test("FITB_LOG: the four levels (any case), unset or empty is info, anything else is refused by name", () => {
    expect(parseLogLevel(undefined)).toEqual({ ok: true, level: "info" });
    expect(parseLogLevel("")).toEqual({ ok: true, level: "info" });
    expect(parseLogLevel("DEBUG")).toEqual({ ok: true, level: "debug" });
    expect(parseLogLevel("warn")).toEqual({ ok: true, level: "warn" });
    const bad = parseLogLevel("verbose");
    expect(bad.ok).toBe(false);
    expect(bad.ok ? "" : bad.reason).toBe('FITB_LOG="verbose": expected one of debug, info, warn, error (default info)');
  });
});
