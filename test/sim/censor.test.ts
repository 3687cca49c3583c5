// A leader that ignores forwarded requests (the simulator's "censor" behaviour) is
// replaced, and every request of a correct client is ordered, however few replicas the
// client reached: with lazy forwarding (core/ordering/PROTOCOL.md §5) a backup forwards a
// request only when the leader fails to propose it, and the expectations judge the leader
// from that forward on. The simulator's clients send each request to a random subset of
// the replicas (about one request in five reaches a single backup only), and its liveness
// check requires every correct request decided at every correct replica after heal.
import { describe, expect, test } from "bun:test";
import { runSeed } from "../../src/sim/simulator.ts";

const SEEDS = 20;
const TEST_TIMEOUT_MS = 120_000;

describe("a censoring leader (drops every FORWARD it receives)", () => {
  test(
    `seeds 1..${SEEDS}: no violation, every correct request ordered, and the censor loses the lead`,
    () => {
      for (let seed = 1; seed <= SEEDS; seed++) {
        const r = runSeed(seed, { mix: "byzantine", crypto: "fast", trace: true, scenario: { byzantine: ["censor"], byzantineId: 0 } });
        expect({ seed, violations: r.violations }).toEqual({ seed, violations: [] });
        expect({ seed, recovered: r.recoveryTicks !== null }).toEqual({ seed, recovered: true });
        // Replica 0 leads view 0: some correct replica must install a later view.
        const installed = r.trace.filter((line) => /: [1-9]\d* installed view [1-9]/.test(line));
        expect({ seed, replaced: installed.length > 0 }).toEqual({ seed, replaced: true });
      }
    },
    TEST_TIMEOUT_MS,
  );
});
