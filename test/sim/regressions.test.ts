// Every seed that ever failed in a long simulator run, replayed on every test run. Each
// entry says what went wrong at the time; all must pass now. (Seeds found before the
// scenario generator took its present form are covered by targeted unit tests in
// test/unit/ordering-core.test.ts instead, since their numbers no longer name the same run.)
// All of these were recorded before the attack behaviours (ATTACK_BEHAVIOURS in
// src/sim/scenario.ts) entered the random mix, so they replay without them.
import { describe, expect, test } from "bun:test";
import type { FaultMix } from "../../src/sim/scenario.ts";
import { runSeed } from "../../src/sim/simulator.ts";

interface Regression {
  mix: FaultMix;
  seed: number;
  what: string;
}

const REGRESSIONS: Regression[] = [
  {
    mix: "all",
    seed: 301377,
    what: "bounds: a view-0 leader restarted with nothing on disk caught up to seq 8, then proposed again from seq 1, keeping prepared certificates below h (crash mode)",
  },
  {
    mix: "all",
    seed: 1237,
    what: "liveness: a replica timed out past view 1 and only resent VIEW_CHANGE(2); view 1 never formed (VIEW_CHANGEs for higher views now count toward lower ones)",
  },
  { mix: "all", seed: 2062, what: "liveness: the same view-change deadlock, after a crash and restart of the old leader" },
  {
    mix: "all",
    seed: 4325,
    what: "bounds: a leader built a NEW_VIEW whose stable checkpoint it had not reached and kept prepared entries beyond h+L (h now moves to minS and the state is fetched)",
  },
  {
    mix: "all",
    seed: 932,
    what: "h above lastExecuted after a NEW_VIEW ahead of the replica, with a Byzantine leader proposing bad batches",
  },
  { mix: "all", seed: 919, what: "h above lastExecuted in crash mode under loss and leader isolation" },
  { mix: "all", seed: 1013, what: "h above lastExecuted after a long split" },
  { mix: "all", seed: 1326, what: "h above lastExecuted with n = 7" },
  { mix: "all", seed: 1532, what: "h above lastExecuted with crashes in the middle of a step" },
  { mix: "all", seed: 2392, what: "h above lastExecuted with a forgetful NEW_VIEW forger" },
  { mix: "all", seed: 3555, what: "a stable checkpoint further ahead replaced the transfer target set by a NEW_VIEW" },
  { mix: "all", seed: 4297, what: "h above lastExecuted in crash mode with n = 7" },
  { mix: "all", seed: 4408, what: "h above lastExecuted with faulty clients and partitions" },
  { mix: "all", seed: 6108, what: "h above lastExecuted with a flooding, stuffing NEW_VIEW forger" },
  {
    mix: "all",
    seed: 12560,
    what: "liveness: CHECKPOINTs lost before heal left both checkpoints unstable and the window full for good (own CHECKPOINTs are now resent while execution stalls)",
  },
];

/** Regressions replay with the keyed-hash crypto: the schedule is the same as with ed25519. */
const TEST_TIMEOUT_MS = 30_000;

describe("seeds that once failed", () => {
  for (const r of REGRESSIONS) {
    test(
      `${r.mix} seed ${r.seed}: ${r.what}`,
      () => {
        const result = runSeed(r.seed, { mix: r.mix, crypto: "fast", scenario: { attackBehaviours: false } });
        expect(result.violations).toEqual([]);
        expect(result.recoveryTicks).not.toBeNull();
      },
      TEST_TIMEOUT_MS,
    );
  }
});

/** Seeds that failed with the attack behaviours in the mix (they replay with them). */
const ATTACK_REGRESSIONS: Regression[] = [
  {
    mix: "all",
    seed: 1020,
    what: "liveness: COMMITs unsigned, one correct replica had decided seqs the two others had prepared and not committed (their COMMITs lost); a decided batch needs f+1 reports, and the decided replica answered their resent votes only with the batch (its reports now carry its own votes)",
  },
  {
    mix: "all",
    seed: 24978,
    what: "liveness: two replicas restarted as the fenced leaders of views 0 and 1, the third changing to view 2, the fourth down: no backup of either view was left to suspect its leader (a fenced leader's own request timers now suspect it)",
  },
  ...[20431, 25177, 32194, 33492].map((seed) => ({
    mix: "all" as const,
    seed,
    what: "checkpoint divergence in crash mode: a replica restarted from its records counted the barrier markers of its replayed decisions as a client's executed requests, so its client table (and its CHECKPOINT digest) differed from the others'",
  })),
];

describe("seeds that once failed, with the attack behaviours", () => {
  for (const r of ATTACK_REGRESSIONS) {
    test(
      `${r.mix} seed ${r.seed}: ${r.what}`,
      () => {
        const result = runSeed(r.seed, { mix: r.mix, crypto: "fast" });
        expect(result.violations).toEqual([]);
        expect(result.recoveryTicks).not.toBeNull();
      },
      TEST_TIMEOUT_MS,
    );
  }
});
