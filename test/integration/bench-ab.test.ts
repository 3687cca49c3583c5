/**
 * `npm run bench:ab` for real: two "builds" (the same source behind two launcher scripts),
 * each run on a fresh `fitb demo` of its own, or both against one demo with
 * --same-replicas; every run's figures and the comparison table come out, and no demo or
 * directory is left behind.
 */
import { afterAll, expect, test } from "bun:test";
import { chmodSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BUN, freePortRange, MAIN, REPO } from "./harness.ts";

const AB = join(REPO, "test/bench/ab.ts");
const dir = mkdtempSync(join(tmpdir(), "fitb-ab-it-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A fitb executable: a script that runs the source, as a compiled build would be run. */
function launcher(name: string): string {
  const path = join(dir, name);
  writeFileSync(path, `#!/bin/sh\nexec "${BUN}" "${MAIN}" "$@"\n`);
  chmodSync(path, 0o755);
  return path;
}

const A = launcher("fitb-a");
const B = launcher("fitb-b");

function abDirs(): string[] {
  return readdirSync(tmpdir()).filter((name) => name.startsWith("fitb-ab-") && !dir.endsWith(name));
}

async function ab(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const base = freePortRange(4);
  const relay = freePortRange(1);
  const argv = [BUN, AB, "--a", A, "--b", B, "--base-port", String(base), "--relay-port", String(relay), ...args];
  const proc = Bun.spawn(argv, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => proc.kill("SIGKILL"), 170_000);
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  clearTimeout(timer);
  return { code, stdout, stderr };
}

function tableRow(stdout: string, figure: string): string[] {
  const row = stdout.split("\n").find((line) => line.startsWith(`| ${figure} |`));
  if (row === undefined) throw new Error(`no "${figure}" row in:\n${stdout}`);
  return row.split("|").map((cell) => cell.trim());
}

test("a fresh demo per run: one round prints A's and B's figures and their ratios", async () => {
  const before = abDirs();
  const run = await ab(["--rounds", "1", "--", "--channel", "net.links", "--events", "300", "--size", "200"]);
  expect(run.code, run.stderr).toBe(0);
  expect(run.stdout).toContain("(a fresh demo per run)");
  expect(run.stdout).toMatch(/round 1 \([AB] first\): A: [\d,]+ ev\/s, p50 [\d.]+ ms/);
  expect(run.stdout).toMatch(/ {19}B: [\d,]+ ev\/s/);
  const [, , pairs, a, b, min, median, max, won] = tableRow(run.stdout, "delivered ev/s");
  expect(pairs).toBe("1");
  expect(Number(a?.replaceAll(",", ""))).toBeGreaterThan(0);
  expect(Number(b?.replaceAll(",", ""))).toBeGreaterThan(0);
  expect(min).toBe(median);
  expect(median).toBe(max);
  expect(won).toMatch(/^[01] of 1$/);
  // Each run's demo started and stopped: its directory is gone.
  expect(abDirs()).toEqual(before);
}, 180_000);

test("--same-replicas --json: one demo for both runs, every run's figures in one object", async () => {
  const run = await ab(["--rounds", "1", "--same-replicas", "--json", "--", "--channel", "sec.alerts", "--events", "200", "--size", "200"]);
  expect(run.code, run.stderr).toBe(0);
  expect(run.stderr).toContain("one demo of A for every run");
  const result = JSON.parse(run.stdout) as {
    rounds: { first: string; a: { delivered_per_s: number }; b: { delivered_per_s: number } }[];
    comparisons: { figure: string; pairs: number }[];
  };
  expect(result.rounds).toHaveLength(1);
  expect(["a", "b"]).toContain(result.rounds[0]?.first as string);
  expect(result.rounds[0]?.a.delivered_per_s).toBeGreaterThan(0);
  expect(result.rounds[0]?.b.delivered_per_s).toBeGreaterThan(0);
  expect(result.comparisons.find((c) => c.figure === "p99 ms")?.pairs).toBe(1);
}, 180_000);

test("bench:ab refuses a bad argument with its usage", async () => {
  const run = await ab(["--", "--events", "10"]);
  expect(run.code).toBe(2);
  expect(run.stderr).toContain("must name --channel");
  expect(run.stderr).toContain("usage: npm run bench:ab");
});
