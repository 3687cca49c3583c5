/**
 * Membership changes as simulator inputs (src/sim/epochs-run.ts): seeds with a change
 * (add, remove, rotate a key, set f), a crashed or Byzantine replica, a rotated-away key
 * in an attacker's hands, loss and reordering, checked for agreement,
 * integrity and liveness. The long run is `bun src/sim/epochs-run.ts --seeds 10000`.
 */
import { describe, expect, test } from "bun:test";
import { parseEpochRunArgs, runEpochSeed } from "../../src/sim/epochs-run.ts";

describe("membership changes in the simulator", () => {
  test("100 seeds: no violation, every kind of change is exercised, and the attacks really sent", () => {
    const kinds = new Set<string>();
    const failing: string[] = [];
    const attacks = { byzantineSeeds: 0, byzantine: 0, oldEpochReplays: 0, oldKeyCopies: 0 };
    for (let seed = 1; seed <= 100; seed++) {
      const result = runEpochSeed(seed);
      kinds.add(result.change.split(" ")[0] as string);
      if (result.change.includes(" byzantine ")) attacks.byzantineSeeds++;
      attacks.byzantine += result.attacks.byzantine;
      attacks.oldEpochReplays += result.attacks.oldEpochReplays;
      attacks.oldKeyCopies += result.attacks.oldKeyCopies;
      if (result.violations.length > 0) failing.push(`seed ${seed} (${result.change}): ${result.violations.join("; ")}`);
    }
    expect(failing).toEqual([]);
    expect([...kinds].sort()).toEqual(["add", "remove", "rotate", "set-f"]);
    // A Byzantine member in a good share of the seeds, replaying earlier epochs' messages
    // into later ones, and an attacker signing with a rotated-away key in some.
    expect(attacks.byzantineSeeds).toBeGreaterThan(20);
    expect(attacks.byzantine).toBeGreaterThan(0);
    expect(attacks.oldEpochReplays).toBeGreaterThan(0);
    expect(attacks.oldKeyCopies).toBeGreaterThan(0);
  });
});

test("seed 153 (7 -> 9 replicas, f 1 -> 2, a mute member): a joining replica that knew only three peers ahead, one of them mute, asks every peer for the decisions it missed", () => {
  // COMMITs are unsigned, so a decided batch is taken from f+1 = 3 reports; the joiner
  // asked only the peers it knew to be ahead and never gathered three.
  expect(runEpochSeed(153).violations).toEqual([]);
});

test("epochs-run reads its arguments and refuses bad ones with a reason", () => {
  expect(parseEpochRunArgs([])).toEqual({ seeds: 100, start: 1, crypto: "fast", help: false });
  expect(parseEpochRunArgs(["--seeds", "5", "--start", "9", "--crypto", "ed25519"])).toEqual({
    seeds: 5,
    start: 9,
    crypto: "ed25519",
    help: false,
  });
  expect(parseEpochRunArgs(["--help"])).toMatchObject({ help: true });
  expect(parseEpochRunArgs(["--seeds", "0"])).toContain("--seeds");
  expect(parseEpochRunArgs(["--crypto", "rsa"])).toContain("--crypto");
  expect(parseEpochRunArgs(["--fast"])).toBe("unknown argument --fast");
});
