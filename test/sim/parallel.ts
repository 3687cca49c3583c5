/**
 * Runs a range of simulator seeds on worker threads (the machine's cores), and renders
 * failures so that a failing test prints every failing seed with its replay command.
 */
import type { BatchSpec } from "../../src/sim/batch.ts";
import type { SimCryptoKind } from "../../src/sim/crypto.ts";
import type { FaultMix } from "../../src/sim/scenario.ts";
import type { SeedResult } from "../../src/sim/simulator.ts";
import { RunStats } from "../../src/sim/stats.ts";

/** Two workers: the CI machine has two cores. */
export const SIM_WORKERS = 2;

export async function runSeeds(mix: FaultMix, crypto: SimCryptoKind, start: number, count: number): Promise<RunStats> {
  const stats = new RunStats();
  const end = start + count;
  const workers = Math.min(SIM_WORKERS, count);
  await Promise.all(
    Array.from({ length: workers }, (_, w) => {
      const spec: BatchSpec = { mix, crypto, start: start + w, end, stride: workers };
      return new Promise<void>((resolve, reject) => {
        const worker = new Worker(new URL("../../src/sim/worker.ts", import.meta.url).href);
        worker.onmessage = (e: MessageEvent<SeedResult | null>) => {
          if (e.data === null) {
            worker.terminate();
            resolve();
          } else {
            stats.add(e.data);
          }
        };
        worker.onerror = (e) => {
          worker.terminate();
          reject(new Error(e.message));
        };
        worker.postMessage(spec);
      });
    }),
  );
  return stats;
}

/** One line per failing seed, with the command that replays it. */
export function failures(stats: RunStats, mix: FaultMix, crypto: SimCryptoKind): string[] {
  return stats.failures.map(
    (f) =>
      `seed ${f.seed} [${mix}] ${f.summary}: ${f.violations.join(" | ")} -- replay: bun src/sim/run.ts --faults ${mix} --crypto ${crypto} --seed ${f.seed} --trace`,
  );
}
