/**
 * Runs a range of seeds and aggregates the results; shared by the CLI, its workers and
 * the tests.
 */
import type { SimCryptoKind } from "./crypto.ts";
import type { FaultMix } from "./scenario.ts";
import { type CoreFactory, runSeed, type SeedResult } from "./simulator.ts";
import { RunStats } from "./stats.ts";

export interface BatchSpec {
  mix: FaultMix;
  crypto: SimCryptoKind;
  /** Seeds start, start+stride, start+2*stride, ... below end. */
  start: number;
  end: number;
  stride: number;
}

export function runBatch(spec: BatchSpec, coreFactory?: CoreFactory, onResult?: (r: SeedResult) => void): RunStats {
  const stats = new RunStats();
  for (let seed = spec.start; seed < spec.end; seed += spec.stride) {
    const r = runSeed(
      seed,
      coreFactory === undefined ? { mix: spec.mix, crypto: spec.crypto } : { mix: spec.mix, crypto: spec.crypto, coreFactory },
    );
    stats.add(r);
    onResult?.(r);
  }
  return stats;
}
