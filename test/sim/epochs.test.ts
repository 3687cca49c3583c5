/**
 * Membership changes as simulator inputs (src/sim/epochs-run.ts): seeds with a change
 * (add, remove, rotate a key, set f), a crash, loss and reordering, checked for agreement,
 * integrity and liveness. The long run is `bun src/sim/epochs-run.ts --seeds 10000`.
 */
import { describe, expect, test } from "bun:test";
import { runEpochSeed } from "../../src/sim/epochs-run.ts";

describe("membership changes in the simulator", () => {
  test("100 seeds: no violation, and every kind of change is exercised", () => {
    const kinds = new Set<string>();
    const failing: string[] = [];
    for (let seed = 1; seed <= 100; seed++) {
      const result = runEpochSeed(seed);
      kinds.add(result.change.split(" ")[0] as string);
      if (result.violations.length > 0) failing.push(`seed ${seed} (${result.change}): ${result.violations.join("; ")}`);
    }
    expect(failing).toEqual([]);
    expect([...kinds].sort()).toEqual(["add", "remove", "rotate", "set-f"]);
  });
});
