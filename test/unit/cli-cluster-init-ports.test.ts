// `fitb cluster init` peer ports: PORT+1000+i by default, PORT-1000+i when those would pass
// 65535 (as --help says), or --peer-base-port (0: none, peers share the client port).
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { requireClusterConfig } from "../../src/config/cluster.ts";
import { runCli } from "../../src/cli/run.ts";

const dirs: string[] = [];
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

async function init(args: string[]): Promise<{ code: number; err: string; peers: (number | null)[] }> {
  const dir = mkdtempSync(join(tmpdir(), "fitb-init-ports-"));
  dirs.push(dir);
  const err: string[] = [];
  const code = await runCli(["cluster", "init", "--replicas", "4", "--dir", dir, ...args], {
    io: { out: () => {}, err: (line) => err.push(line) },
    env: {},
  });
  if (code !== 0) return { code, err: err.join("\n"), peers: [] };
  return { code, err: "", peers: requireClusterConfig(join(dir, "cluster.toml")).replicas.map((r) => r.peerPort) };
}

test("peer ports default to PORT+1000+i, or PORT-1000+i near the top of the range", async () => {
  expect((await init(["--base-port", "34100"])).peers).toEqual([35100, 35101, 35102, 35103]);
  expect((await init(["--base-port", "65000"])).peers).toEqual([64000, 64001, 64002, 64003]);
});

test("--peer-base-port sets them, 0 writes none; overlapping or past 65535 is refused", async () => {
  expect((await init(["--base-port", "34100", "--peer-base-port", "34200"])).peers).toEqual([34200, 34201, 34202, 34203]);
  expect((await init(["--base-port", "34100", "--peer-base-port", "0"])).peers).toEqual([null, null, null, null]);
  const overlap = await init(["--base-port", "34100", "--peer-base-port", "34102"]);
  expect(overlap.code).toBe(2);
  expect(overlap.err).toContain("--peer-base-port: ports 34102..34105 overlap the client ports 34100..34103");
  const past = await init(["--base-port", "34100", "--peer-base-port", "65533"]);
  expect(past.err).toContain("--peer-base-port: 4 replicas need ports 65533..65536, past 65535");
});
