// The simulator over many seeds of each fault mix (src/sim/scenario.ts): zero violations
// of agreement, total order, validity, integrity, state, bounds and liveness after heal.
// For each mix the first 100 seeds use real ed25519; the rest use the keyed-hash scheme,
// which gives the same schedule (signatures are opaque to it) at a third of the cost.
// Each test runs its seeds on the worker threads of parallel.ts (the machine's cores).
import { expect, test } from "bun:test";
import type { FaultMix } from "../../src/sim/scenario.ts";
import { failures, runSeeds } from "./parallel.ts";

const ED25519_SEEDS = 100;
/** Generous: the seeds are deterministic work, and a loaded machine may run them several times slower. */
const TEST_TIMEOUT_MS = 180_000;

/**
 * Per mix: the last seed run, and the keyed-hash seeds per test, sized so that no test
 * takes more than about 30 s on two cores.
 */
const MIXES: readonly { mix: FaultMix; lastSeed: number; fastSeedsPerTest: number }[] = [
  { mix: "all", lastSeed: 500, fastSeedsPerTest: 100 },
  { mix: "byzantine", lastSeed: 500, fastSeedsPerTest: 100 },
  { mix: "clients", lastSeed: 300, fastSeedsPerTest: 100 },
  { mix: "crash", lastSeed: 400, fastSeedsPerTest: 150 },
  { mix: "network", lastSeed: 400, fastSeedsPerTest: 150 },
];

for (const { mix, lastSeed, fastSeedsPerTest } of MIXES) {
  test(
    `${mix}: seeds 1..${ED25519_SEEDS} with ed25519`,
    async () => {
      const stats = await runSeeds(mix, "ed25519", 1, ED25519_SEEDS);
      expect(failures(stats, mix, "ed25519")).toEqual([]);
      expect(stats.seeds).toBe(ED25519_SEEDS);
    },
    TEST_TIMEOUT_MS,
  );

  for (let first = ED25519_SEEDS + 1; first <= lastSeed; first += fastSeedsPerTest) {
    const count = Math.min(fastSeedsPerTest, lastSeed - first + 1);
    test(
      `${mix}: seeds ${first}..${first + count - 1}`,
      async () => {
        const stats = await runSeeds(mix, "fast", first, count);
        expect(failures(stats, mix, "fast")).toEqual([]);
        expect(stats.seeds).toBe(count);
      },
      TEST_TIMEOUT_MS,
    );
  }
}
