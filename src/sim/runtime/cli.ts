/**
 * `bun src/sim/run.ts --runtime ...`: the runtime under simulation (simulation.ts) from the
 * command line. Runs seeds one after the other in this process (run two processes on two
 * ranges to use two cores), prints every failing seed with the command that replays it,
 * progress on stderr, and at the end the seeds, violations and fault counts.
 */
import {
  DISK_FAULT_KINDS,
  type DiskFaultKind,
  FSYNC_MODES,
  type FsyncMode,
  type RuntimeCrypto,
  type RuntimeFigures,
  runRuntimeSeed,
} from "./simulation.ts";

export const RUNTIME_USAGE = [
  "       bun src/sim/run.ts --runtime [--seeds N] [--start S] [--crypto ed25519|fast] [--disk-faults torn,lost-fsync,bitflip,fsync-error]",
  "                                    [--fsync overlapped|in-commit (default: drawn per seed, half each)]",
  "       bun src/sim/run.ts --runtime --seed N [--trace]                     replay one seed of the runtime simulation",
  "           the replica runtime (ordering driver, channel machine, storage on a simulated disk, state transfer)",
  "           under crashes, torn writes, lost and failing fsyncs and bitflips, with the group commit's fsync overlapped",
  "           (walSync, completing ticks later) or inside the commit; one process, seeds in order",
].join("\n");

export interface RuntimeArgs {
  readonly seeds: number;
  readonly start: number;
  readonly seed: number | null;
  readonly trace: boolean;
  readonly crypto: RuntimeCrypto;
  readonly diskFaults: readonly DiskFaultKind[];
  /** Forced for every seed, or null: drawn per seed. */
  readonly fsync: FsyncMode | null;
}

/** Parses --fsync. */
export function parseFsyncMode(text: string): FsyncMode {
  if (!(FSYNC_MODES as readonly string[]).includes(text))
    throw new Error(`unknown fsync mode ${text}: expected ${FSYNC_MODES.join(" or ")}`);
  return text as FsyncMode;
}

/** Parses --disk-faults: a comma-separated list of DISK_FAULT_KINDS (or "none"). */
export function parseDiskFaults(text: string): DiskFaultKind[] {
  if (text === "none") return [];
  const kinds = text.split(",").map((k) => k.trim());
  const unknown = kinds.filter((k) => !(DISK_FAULT_KINDS as readonly string[]).includes(k));
  if (unknown.length > 0) throw new Error(`unknown disk fault ${unknown.join(",")}: expected ${DISK_FAULT_KINDS.join(",")} or none`);
  return kinds as DiskFaultKind[];
}

function replayCommand(args: RuntimeArgs, seed: number): string {
  const crypto = args.crypto === "ed25519" ? "" : ` --crypto ${args.crypto}`;
  const faults = args.diskFaults.length === DISK_FAULT_KINDS.length ? "" : ` --disk-faults ${args.diskFaults.join(",") || "none"}`;
  const fsync = args.fsync === null ? "" : ` --fsync ${args.fsync}`;
  return `bun src/sim/run.ts --runtime${crypto}${faults}${fsync} --seed ${seed} --trace`;
}

/** Runs the seeds (or replays one); returns the exit code: 1 if any seed violated a check. */
export function runRuntimeCli(args: RuntimeArgs): number {
  const options = { crypto: args.crypto, diskFaults: args.diskFaults, ...(args.fsync === null ? {} : { fsync: args.fsync }) };
  if (args.seed !== null) {
    const r = runRuntimeSeed(args.seed, { ...options, trace: args.trace });
    console.log(`seed ${r.seed} [runtime] ${r.summary}`);
    if (args.trace) for (const line of r.trace) console.log(`  ${line}`);
    console.log(`ticks ${r.ticks}, ${r.violations.length === 0 ? "no violations" : `${r.violations.length} violations`}`);
    for (const v of r.violations) console.log(`  ${v}`);
    return r.violations.length === 0 ? 0 : 1;
  }
  const totals: Record<string, number> = {};
  let failed = 0;
  let lastProgress = performance.now();
  const t0 = lastProgress;
  for (let seed = args.start; seed < args.start + args.seeds; seed++) {
    const r = runRuntimeSeed(seed, options);
    for (const [k, v] of Object.entries(r.figures) as [keyof RuntimeFigures, number][]) totals[k] = (totals[k] ?? 0) + v;
    if (r.violations.length > 0) {
      failed++;
      console.log(`FAIL seed ${seed} [runtime] ${r.summary}`);
      for (const v of r.violations) console.log(`  ${v}`);
      console.log(`  replay: ${replayCommand(args, seed)}`);
    }
    const now = performance.now();
    if (now - lastProgress >= 10_000) {
      lastProgress = now;
      const done = seed - args.start + 1;
      console.error(`[sim runtime] ${done}/${args.seeds} seeds, ${(done / ((now - t0) / 1000)).toFixed(2)} seeds/s, ${failed} failing`);
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  console.log(
    `runtime, crypto ${args.crypto}, disk faults ${args.diskFaults.join(",") || "none"}, fsync ${args.fsync ?? "drawn"}, seeds ${args.start}..${args.start + args.seeds - 1}: ` +
      `${failed} failing seeds, ${seconds.toFixed(0)} s`,
  );
  console.log(
    `totals: ${Object.entries(totals)
      .map(([k, v]) => `${k}=${v}`)
      .join(" ")}`,
  );
  return failed === 0 ? 0 : 1;
}
