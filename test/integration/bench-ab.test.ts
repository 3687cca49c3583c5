/**
 * `npm run bench:ab` for real: two "builds" (the same source behind two launcher scripts
 * that note each call), each run on a fresh `fitb demo` of its own, or both against one
 * demo of A with --same-replicas; every run's figures and the comparison table come out,
 * each side's executable ran what it should, and no demo, port or directory is left.
 */
import { afterAll, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { listening } from "../bench/ab.ts";
import { BUN, freePortRange, MAIN, REPO } from "./harness.ts";

const AB = join(REPO, "test/bench/ab.ts");
const dir = mkdtempSync(join(tmpdir(), "fitb-ab-it-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const CALLS = join(dir, "calls.log");
/** Where the program under test makes its demos' directories (its TMPDIR), watched by the tests. */
const work = join(dir, "work");

/** A fitb executable: a script that notes "NAME SUBCOMMAND" and runs the source, as a compiled build would be run. */
function launcher(name: string): string {
  const path = join(dir, `fitb-${name}`);
  writeFileSync(path, `#!/bin/sh\necho "${name} $1" >> "${CALLS}"\nexec "${BUN}" "${MAIN}" "$@"\n`);
  chmodSync(path, 0o755);
  return path;
}

const A = launcher("a");
const B = launcher("b");

/** The launchers' calls since the last look, sorted. */
function calls(): string[] {
  const seen = existsSync(CALLS)
    ? readFileSync(CALLS, "utf8")
        .trim()
        .split("\n")
        .filter((line) => line !== "")
    : [];
  rmSync(CALLS, { force: true });
  return seen.sort();
}

async function ab(args: string[]): Promise<{ code: number; stdout: string; stderr: string; ports: number[] }> {
  const base = freePortRange(5);
  const ports = [base, base + 1, base + 2, base + 3, base + 4];
  const argv = [BUN, AB, "--a", A, "--b", B, "--base-port", String(base), "--relay-port", String(base + 4), ...args];
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work);
  calls();
  const proc = Bun.spawn(argv, { stdin: "ignore", stdout: "pipe", stderr: "pipe", env: { ...process.env, TMPDIR: work } });
  const timer = setTimeout(() => proc.kill("SIGKILL"), 170_000);
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  clearTimeout(timer);
  return { code, stdout, stderr, ports };
}

/** Nothing the run started is left: no directory in its TMPDIR, nothing on its ports. */
async function expectNothingLeft(ports: readonly number[]): Promise<void> {
  expect(readdirSync(work)).toEqual([]);
  for (const port of ports) expect(await listening(port)).toBe(false);
}

function tableRow(stdout: string, figure: string): string[] {
  const row = stdout.split("\n").find((line) => line.startsWith(`| ${figure} |`));
  if (row === undefined) throw new Error(`no "${figure}" row in:\n${stdout}`);
  return row.split("|").map((cell) => cell.trim());
}

test("a fresh demo per run: one round prints A's and B's figures and their ratios", async () => {
  const run = await ab(["--rounds", "1", "--unlimited", "--", "--channel", "net.links", "--events", "300", "--size", "200"]);
  expect(run.code, run.stderr).toBe(0);
  // Each side started its own demo, twice with --unlimited (the second on the rewritten cluster file), and ran the bench once.
  expect(calls()).toEqual(["a bench", "a demo", "a demo", "b bench", "b demo", "b demo"]);
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
  await expectNothingLeft(run.ports);
}, 180_000);

test("--same-replicas --json: one demo for both runs, every run's figures in one object", async () => {
  const run = await ab(["--rounds", "1", "--same-replicas", "--json", "--", "--channel", "sec.alerts", "--events", "200", "--size", "200"]);
  expect(run.code, run.stderr).toBe(0);
  expect(run.stderr).toContain("one demo of A for every run");
  // One demo, A's; both benches ran against it.
  expect(calls()).toEqual(["a bench", "a demo", "b bench"]);
  const result = JSON.parse(run.stdout) as {
    rounds: { first: string; a: { delivered_per_s: number }; b: { delivered_per_s: number } }[];
    comparisons: { figure: string; pairs: number }[];
  };
  expect(result.rounds).toHaveLength(1);
  expect(["a", "b"]).toContain(result.rounds[0]?.first as string);
  expect(result.rounds[0]?.a.delivered_per_s).toBeGreaterThan(0);
  expect(result.rounds[0]?.b.delivered_per_s).toBeGreaterThan(0);
  expect(result.comparisons.find((c) => c.figure === "p99 ms")?.pairs).toBe(1);
  await expectNothingLeft(run.ports);
}, 180_000);

test("bench:ab refuses a bad argument with its usage", async () => {
  const run = await ab(["--", "--events", "10"]);
  expect(run.code).toBe(2);
  expect(run.stderr).toContain("must name --channel");
  expect(run.stderr).toContain("usage: npm run bench:ab");
});
