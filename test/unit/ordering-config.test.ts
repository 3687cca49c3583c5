// Quorums, defaults and configuration checks of the ordering core (core/ordering/PROTOCOL.md §1, §10),
// and the sans-IO rule for src/core (src/README.md §9, rule 1).
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { checkConfig, DEFAULT_PARAMETERS, leaderOf, makeConfig, quorum, weakQuorum } from "../../src/core/ordering/index.ts";

describe("quorum(n, f, mode)", () => {
  test("BFT: 2f+1 of 3f+1, and ceil((n+f+1)/2) for larger groups", () => {
    expect(quorum(4, 1, "bft")).toBe(3);
    expect(quorum(7, 2, "bft")).toBe(5);
    expect(quorum(10, 3, "bft")).toBe(7);
    expect(quorum(5, 1, "bft")).toBe(4);
    expect(quorum(6, 1, "bft")).toBe(4);
  });

  test("BFT: any two quorums share at least f+1 replicas, so a correct one", () => {
    for (let f = 0; f <= 5; f++) {
      for (let n = 3 * f + 1; n <= 3 * f + 6; n++) {
        const q = quorum(n, f, "bft");
        expect(2 * q - n).toBeGreaterThanOrEqual(f + 1);
        expect(q).toBeLessThanOrEqual(n - f);
      }
    }
  });

  test("CFT on the same group: a majority, floor(n/2)+1", () => {
    expect(quorum(4, 1, "cft")).toBe(3);
    expect(quorum(3, 1, "cft")).toBe(2);
    expect(quorum(7, 2, "cft")).toBe(4);
    for (let n = 1; n <= 20; n++) expect(2 * quorum(n, 0, "cft")).toBeGreaterThan(n);
  });

  test("weak quorum: f+1 in BFT; in CFT it overlaps every quorum of live replicas", () => {
    expect(weakQuorum(4, 1, "bft")).toBe(2);
    expect(weakQuorum(7, 2, "bft")).toBe(3);
    expect(weakQuorum(4, 1, "cft")).toBe(2);
    for (let n = 1; n <= 20; n++) expect(weakQuorum(n, 0, "cft") + quorum(n, 0, "cft")).toBe(n + 1);
  });

  test("leader(view) = view mod n", () => {
    expect([0, 1, 2, 3, 4, 5, 9].map((v) => leaderOf(v, 4))).toEqual([0, 1, 2, 3, 0, 1, 1]);
  });
});

describe("configuration", () => {
  test("defaults are those of core/ordering/PROTOCOL.md §10", () => {
    const cfg = makeConfig({ id: 0, n: 4, f: 1, mode: "bft", clusterId: "c" });
    expect(cfg.batchRequestsMax).toBe(256);
    expect(cfg.batchBytesMax).toBe(1024 * 1024);
    expect(cfg.requestBytesMax).toBe(64 * 1024);
    expect(cfg.batchDelayTicks).toBe(0);
    expect(cfg.pipelineDepth).toBe(8);
    expect(cfg.checkpointInterval).toBe(128);
    expect(cfg.logWindow).toBe(256);
    expect(cfg.clientWindow).toBe(16);
    expect(cfg.pendingRequestsMax).toBe(10_000);
    expect(cfg.requestTimeoutTicks).toBe(100);
    expect(cfg.progressTimeoutTicks).toBe(50);
    expect(cfg.viewChangeTimeoutTicks).toBe(200);
    expect(cfg.viewChangeBackoffDoublingsMax).toBe(6);
    expect(cfg.retransmitTicks).toBe(100);
    expect(cfg.throughputWindowTicks).toBe(100);
    expect(cfg.throughputGraceTicks).toBe(500);
    expect(cfg.throughputRequiredPercent).toBe(90);
    expect(cfg.throughputStepPercent).toBe(0);
    expect(cfg.fairnessMultiplier).toBe(2);
    expect(cfg.clientQuarantineTicks).toBe(6_000);
    expect(cfg.floodThreshold).toBe(20);
    expect(cfg.externalBarrier).toBe(false);
    expect(DEFAULT_PARAMETERS.logWindow as number).toBe(2 * DEFAULT_PARAMETERS.checkpointInterval);
  });

  test("inconsistent configurations are refused", () => {
    const base = { id: 0, n: 4, f: 1, mode: "bft" as const, clusterId: "c" };
    expect(() => makeConfig({ ...base, n: 3 })).toThrow(/3f\+1/);
    const cft = { ...base, mode: "cft" as const };
    expect(() => makeConfig(cft, { batchRequestsMax: 4096, externalBarrier: true })).toThrow(/within 4096/);
    expect(makeConfig(cft, { batchRequestsMax: 4095, externalBarrier: true }).batchRequestsMax).toBe(4095);
    // A barrier suspends suspicion of the leader: a BFT instance never carries one.
    expect(() => makeConfig(base, { externalBarrier: true })).toThrow(/needs mode cft/);
    expect(() => makeConfig({ ...base, id: 4 })).toThrow(/id/);
    expect(() => makeConfig(base, { pipelineDepth: 300 })).toThrow(/pipelineDepth/);
    expect(() => makeConfig(base, { logWindow: 128 })).toThrow(/logWindow/);
    // One interval past K is not enough: a checkpoint missed at a restart must be followed by one inside the window.
    expect(() => makeConfig(base, { logWindow: 255 })).toThrow(/at least twice/);
    expect(makeConfig(base, { logWindow: 256 }).logWindow).toBe(256);
    expect(() => makeConfig(base, { batchRequestsMax: 0 })).toThrow(/batchRequestsMax/);
    expect(() => makeConfig(base, { requestTimeoutTicks: 1.5 })).toThrow(/requestTimeoutTicks/);
    expect(() => checkConfig({ ...makeConfig(base), mode: "paxos" as "bft" })).toThrow(/mode/);
  });
});

describe("src/core stays sans-IO", () => {
  const FORBIDDEN = [
    /Date\.now/,
    /\bsetTimeout\b/,
    /\bsetInterval\b/,
    /Math\.random/,
    /performance\.now/,
    /from\s+["']node:/,
    /import\(\s*["']node:/,
    /from\s+["']bun/,
    /\bBun\./,
    /\brequire\(/,
    /\bprocess\./,
  ];

  function sources(dir: string): string[] {
    const out: string[] = [];
    for (const name of readdirSync(dir)) {
      const p = join(dir, name);
      if (statSync(p).isDirectory()) out.push(...sources(p));
      else if (p.endsWith(".ts") && !p.endsWith(".test.ts")) out.push(p);
    }
    return out;
  }

  test("no clock, timer, randomness, Node or Bun API in any core source", () => {
    const files = sources(join(import.meta.dir, "../../src/core"));
    expect(files.length).toBeGreaterThan(0);
    const hits: string[] = [];
    for (const file of files) {
      const lines = readFileSync(file, "utf8").split("\n");
      lines.forEach((line, i) => {
        for (const pattern of FORBIDDEN) if (pattern.test(line)) hits.push(`${file}:${i + 1}: ${line.trim()}`);
      });
    }
    expect(hits).toEqual([]);
  });

  test("the ordering core imports only itself, the canonical encoding, the byte helpers and the protocol's constants", () => {
    const dir = join(import.meta.dir, "../../src/core/ordering");
    for (const file of sources(dir)) {
      const text = readFileSync(file, "utf8");
      for (const m of text.matchAll(/from\s+["']([^"']+)["']/g)) {
        const spec = m[1] as string;
        expect(
          spec.startsWith("./") || ["../../../wire/canonical.ts", "../../../wire/bytes.ts", "../../../wire/types.ts"].includes(spec),
        ).toBe(true);
      }
    }
  });

  test("the check would catch a forbidden import", () => {
    const line = 'import { randomBytes } from "node:crypto";';
    expect(FORBIDDEN.some((p) => p.test(line))).toBe(true);
    expect(FORBIDDEN.some((p) => p.test("const t = Date.now();"))).toBe(true);
  });
});
