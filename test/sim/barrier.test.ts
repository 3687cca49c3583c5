// Crash-mode seeds run behind an external barrier (core/ordering/PROTOCOL.md §12): each
// replica's external order lags the clock by 0, 5 or 10 ticks (src/sim/simulator.ts), so
// batches proposed by a leader ahead of a backup must wait there. This checks that they do
// wait in these runs (the checkers then hold with the barrier in play), so the seeds keep
// exercising it.
import { expect, test } from "bun:test";
import { OrderingCore } from "../../src/core/ordering/core.ts";
import type { CoreFactory } from "../../src/sim/simulator.ts";
import { makeScenario } from "../../src/sim/scenario.ts";
import { runSeed } from "../../src/sim/simulator.ts";

const SEEDS_MAX = 60;
const CFT_SEEDS_WANTED = 10;

test("crash-mode seeds: batches wait for their barrier at lagging replicas, and every checker holds", () => {
  let cftSeeds = 0;
  let seedsThatWaited = 0;
  let decidedBehindBarrier = 0;
  for (let seed = 1; seed <= SEEDS_MAX && cftSeeds < CFT_SEEDS_WANTED; seed++) {
    if (makeScenario(seed, { mix: "crash" }).mode !== "cft") continue;
    cftSeeds++;
    let waited = false;
    const coreFactory: CoreFactory = (cfg, crypto, restored, policy) => {
      const core = new OrderingCore(cfg, crypto, restored, policy);
      const step = core.step.bind(core);
      core.step = (input) => {
        const ready = step(input);
        // A decided batch that waits leaves a committed entry unexecuted: the core reports
        // it executing later, with the barrier it was decided with.
        for (const effect of ready.effects) if (effect.kind === "decide" && effect.after > 0) decidedBehindBarrier++;
        if (input.kind === "external" && ready.effects.some((effect) => effect.kind === "decide")) waited = true;
        return ready;
      };
      return core;
    };
    const result = runSeed(seed, { mix: "crash", crypto: "fast", coreFactory });
    expect(result.violations).toEqual([]);
    if (waited) seedsThatWaited++;
  }
  expect(cftSeeds).toBe(CFT_SEEDS_WANTED);
  expect(decidedBehindBarrier).toBeGreaterThan(0);
  // Most crash-mode runs have a batch held until the replica's own external order moved.
  expect(seedsThatWaited).toBeGreaterThanOrEqual(CFT_SEEDS_WANTED / 2);
}, 180_000);
