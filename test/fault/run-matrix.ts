/**
 * `npm run faults`: the fault matrix (matrix.ts) on real replicas in network namespaces,
 * one fresh group per fault, and one table. Run on purpose (it takes minutes, needs root);
 * every row is bounded in time and the whole run stops by itself.
 *
 *   npm run faults                      every fault, dist/fitb (built first)
 *   npm run faults -- --fault kill-all  one row
 *   npm run faults -- --json            one JSON object per row on stdout
 *   npm run faults -- --source          run replicas from src/ with bun instead of dist/fitb
 */
import { join } from "node:path";
import { FAULTS, type FaultRow, faultNamed, formatRows, runFault } from "./matrix.ts";
import { faketimeLibrary } from "./faketime.ts";
import { netnsUnavailable } from "./netns.ts";

const REPO = join(import.meta.dir, "..", "..");
const USAGE = `usage: npm run faults -- [--fault NAME] [--json] [--source] [--list]

Runs each fault on a fresh group of 4 replicas, each in its own network namespace,
during a steady publish stream and a live subscriber, and prints:
fault | events acked | delivered | lost | duplicated | reordered | forged | longest stall | recovery
Needs root (network namespaces). Faults: ${FAULTS.map((f) => f.name).join(", ")}.`;

function parse(argv: string[]): { fault: string | null; json: boolean; source: boolean; list: boolean } {
  const out = { fault: null as string | null, json: false, source: false, list: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--fault") out.fault = argv[++i] ?? null;
    else if (arg === "--json") out.json = true;
    else if (arg === "--source") out.source = true;
    else if (arg === "--list") out.list = true;
    else if (arg === "--help" || arg === "-h") {
      console.log(USAGE);
      process.exit(0);
    } else {
      console.error(`unknown argument ${arg}\n${USAGE}`);
      process.exit(2);
    }
  }
  return out;
}

async function replicaCommand(source: boolean): Promise<string[]> {
  if (source) return [process.execPath, join(REPO, "src/cli/main.ts")];
  // Built every time (about a second): a stale binary would speak an older protocol than
  // the clients of this run.
  console.error("building dist/fitb (npm run build)");
  const build = Bun.spawnSync(["npm", "run", "build"], { cwd: REPO, stdout: "ignore", stderr: "inherit" });
  if (build.exitCode !== 0) throw new Error("npm run build failed");
  return [join(REPO, "dist/fitb")];
}

async function main(): Promise<void> {
  const args = parse(process.argv.slice(2));
  if (args.list) {
    for (const f of FAULTS) console.log(`${f.name.padEnd(18)} ${f.what}`);
    return;
  }
  const why = netnsUnavailable();
  if (why !== null) {
    console.error(`npm run faults: ${why}`);
    process.exit(2);
  }
  let faults = args.fault === null ? FAULTS : [faultNamed(args.fault)];
  if (faults.some((f) => f.skewableClocks === true)) {
    // Installed with apt-get when missing and this runs as root on Debian, as .ci/run does.
    const faketime = faketimeLibrary(true);
    if ("why" in faketime) {
      console.error(
        `skipping ${faults
          .filter((f) => f.skewableClocks === true)
          .map((f) => f.name)
          .join(", ")}: ${faketime.why}`,
      );
      faults = faults.filter((f) => f.skewableClocks !== true);
    }
  }
  const command = await replicaCommand(args.source);
  const rows: FaultRow[] = [];
  const started = Date.now();
  let failed = 0;
  for (const [i, fault] of faults.entries()) {
    const t0 = Date.now();
    console.error(`[${i + 1}/${faults.length}] ${fault.name}: ${fault.what}`);
    try {
      const row = await runFault(fault, command, (line) => console.error(`  ${line}`));
      rows.push(row);
      if (args.json) console.log(JSON.stringify(row));
      if (row.problems.length > 0) {
        failed++;
        for (const p of row.problems.slice(0, 20)) console.error(`  PROBLEM ${p}`);
      }
    } catch (error) {
      failed++;
      console.error(`  FAILED ${(error as Error).message}`);
    }
    console.error(`  (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
  }
  if (!args.json) console.log(formatRows(rows));
  console.error(`${rows.length} rows in ${((Date.now() - started) / 1000).toFixed(0)} s; ${failed} with problems or failures`);
  process.exit(failed === 0 ? 0 : 1);
}

await main();
