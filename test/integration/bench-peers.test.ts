/**
 * `npm run bench:peers` without nats-server: it says how to install it and still measures
 * fitb's four CLASSes with the real `fitb bench`, one table row each.
 */
import { expect, test } from "bun:test";
import { join } from "node:path";
import { FITB_CLASSES, INSTALL_HINT } from "../bench/peers.ts";
import { BUN, REPO } from "./harness.ts";

const PEERS = join(REPO, "test/bench/peers.ts");

async function peers(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const proc = Bun.spawn([BUN, PEERS, ...args], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => proc.kill("SIGKILL"), 170_000);
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  clearTimeout(timer);
  return { code, stdout, stderr };
}

test("without nats-server, bench:peers says how to install it and prints fitb's four CLASSes measured", async () => {
  const run = await peers(["--events", "300", "--nats-server", join(REPO, "no-such-dir/nats-server")]);
  expect(run.code, run.stderr).toBe(0);
  expect(run.stderr).toContain(INSTALL_HINT);
  expect(run.stdout).toContain("nats-server not installed");
  const rows = run.stdout.split("\n").filter((line) => line.startsWith("| fitb"));
  expect(rows.map((row) => row.split("|")[2]?.trim())).toEqual([...FITB_CLASSES]);
  for (const row of rows) {
    const [, , , perSecond, p50, p99, cpu, clientCpu, note] = row.split("|").map((cell) => cell.trim());
    expect(Number(perSecond)).toBeGreaterThan(0);
    expect(Number(p99)).toBeGreaterThanOrEqual(Number(p50));
    expect(cpu).toMatch(/^[\d.]+ \(4 processes\)$/);
    expect(Number(clientCpu)).toBeGreaterThan(0);
    expect(note).toBe("");
  }
  expect(run.stdout).not.toContain("| NATS");
}, 180_000);

test("bench:peers refuses a bad argument with its usage", async () => {
  const run = await peers(["--events", "12"]);
  expect(run.code).toBe(2);
  expect(run.stderr).toContain("--events: an integer in 100..");
  expect(run.stderr).toContain("usage: npm run bench:peers");
});
