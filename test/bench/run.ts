/**
 * `npm run bench`: the project's micro-benchmarks, one after another, each in its own
 * process so one cannot warm or slow the next. Prints figures; judges nothing.
 * Throughput against a running cluster is `fitb bench` (see README).
 *
 *   bun test/bench/run.ts [crypto] [wire]
 */
import { resolve } from "node:path";

const ROOT = resolve(import.meta.dir, "../..");
const BENCHES: Record<string, string[]> = {
  crypto: ["test/bench/crypto.ts"],
  wire: ["test/bench/wire.ts"],
};

const wanted = process.argv.slice(2);
const unknown = wanted.filter((name) => !(name in BENCHES));
if (unknown.length > 0) {
  console.error(`unknown benchmark ${unknown.join(", ")}; choose from ${Object.keys(BENCHES).join(", ")}`);
  process.exit(2);
}
for (const name of wanted.length > 0 ? wanted : Object.keys(BENCHES)) {
  console.log(`== ${name}`);
  const proc = Bun.spawnSync([process.execPath, ...(BENCHES[name] as string[])], { cwd: ROOT, stdout: "inherit", stderr: "inherit" });
  if (proc.exitCode !== 0) process.exit(proc.exitCode ?? 1);
}
