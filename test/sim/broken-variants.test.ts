// The checkers can fail: each deliberately broken core (broken-variants.ts, reachable only
// from tests) is caught by the simulator within a small seed budget, under the adversary
// that exploits it, while the correct core passes the very same seeds.
import { describe, expect, test } from "bun:test";
import type { ScenarioOptions } from "../../src/sim/scenario.ts";
import { type CoreFactory, defaultCoreFactory, runSeed } from "../../src/sim/simulator.ts";
import { BROKEN_VARIANTS } from "./broken-variants.ts";

/** Seeds tried per variant before the test gives up; each variant is caught far sooner. */
const SEED_BUDGET = 30;
const TEST_TIMEOUT_MS = 180_000;

type Attack = Omit<ScenarioOptions, "mix">;

/** An equivocating leader that also reflects each replica's own votes back at it. */
const EQUIVOCATION: Attack = { byzantine: ["equivocate"] };
/**
 * An equivocating leader and a second Byzantine replica (f = 2) that send each of their
 * own votes several times. (Reflecting another replica's vote no longer reaches a core: a
 * vote that names another signer than the peer it came from is dropped on arrival, so
 * the counting bug needs two liars' repeated votes to show.)
 */
const EQUIVOCATION_STUFFING: Attack = { f: 2, byzantine: ["equivocate", "stuff"], byzantineId: 0, byzantineCount: 2 };
/** The next leader forges its NEW_VIEW's O; the current leader is cut off to make it lead. */
const FORGED_NEW_VIEW: Attack = { byzantine: ["nvforge"], byzantineId: 1, isolateLeaderAt: 60 };

/** A replica that reports decisions never made, with certificates of unsigned COMMITs. */
const FAKE_DECISIONS: Attack = { byzantine: ["fakedecision"] };

const CASES: Array<{ name: keyof typeof BROKEN_VARIANTS; bug: string; attack: Attack }> = [
  { name: "quorumTwoF", bug: "quorum of 2f instead of 2f+1", attack: EQUIVOCATION },
  { name: "countsMessages", bug: "counting vote messages instead of distinct signers", attack: EQUIVOCATION_STUFFING },
  { name: "digestBlind", bug: "matching votes on (view, seq) without the digest", attack: EQUIVOCATION },
  { name: "trustsNewView", bug: "installing a NEW_VIEW without recomputing O", attack: FORGED_NEW_VIEW },
  { name: "trustsOneReport", bug: "taking a decision in catch-up from one peer's report", attack: FAKE_DECISIONS },
];

/** The first seed in the budget whose run reports a violation, or null. */
function firstCaught(factory: CoreFactory, attack: Attack): { seed: number; violation: string } | null {
  for (let seed = 1; seed <= SEED_BUDGET; seed++) {
    const r = runSeed(seed, { mix: "byzantine", crypto: "fast", coreFactory: factory, scenario: attack });
    if (r.violationCount > 0) return { seed, violation: r.violations[0] ?? "" };
  }
  return null;
}

describe("deliberately broken cores are caught", () => {
  for (const { name, bug, attack } of CASES) {
    test(
      `${bug} (${name})`,
      () => {
        const caught = firstCaught(BROKEN_VARIANTS[name], attack);
        expect(caught).not.toBeNull();
        // The correct core survives the seed that exposed the broken one.
        const seed = caught?.seed ?? 1;
        const r = runSeed(seed, { mix: "byzantine", crypto: "fast", coreFactory: defaultCoreFactory, scenario: attack });
        expect(r.violations).toEqual([]);
      },
      TEST_TIMEOUT_MS,
    );
  }

  test(
    "the plain byzantine mix of the CI suite catches the vote-counting bugs too",
    () => {
      for (const name of ["quorumTwoF", "countsMessages", "digestBlind"] as const) {
        let seed = 0;
        for (let s = 1; s <= SEED_BUDGET && seed === 0; s++) {
          if (runSeed(s, { mix: "byzantine", crypto: "fast", coreFactory: BROKEN_VARIANTS[name] }).violationCount > 0) seed = s;
        }
        expect({ name, caught: seed > 0 }).toEqual({ name, caught: true });
      }
    },
    TEST_TIMEOUT_MS,
  );
});
