/** The soak program's fault schedule (test/fault/soak.ts): seeded, and never more than f replicas out at once. */
import { expect, test } from "bun:test";
import { liveUnorderedProblems, parseOptions, planChaos } from "../fault/soak.ts";

test("the same seed gives the same schedule, another seed another", () => {
  expect(planChaos(7, 120_000, 4, 1)).toEqual(planChaos(7, 120_000, 4, 1));
  expect(planChaos(8, 120_000, 4, 1)).not.toEqual(planChaos(7, 120_000, 4, 1));
});

test("at no moment does the plan hold more than f replicas out, and it keeps faulting to its end", () => {
  for (const [n, f] of [
    [4, 1],
    [7, 2],
  ] as const) {
    for (let seed = 0; seed < 50; seed++) {
      const plan = planChaos(seed, 300_000, n, f);
      expect(plan.length).toBeGreaterThan(30);
      expect((plan.at(-1)?.atMs ?? 0) > 250_000).toBe(true);
      for (const action of plan) {
        expect(action.target).toBeGreaterThanOrEqual(0);
        expect(action.target).toBeLessThan(n);
        // Out at the moment this action starts: every fault started earlier that is not over, and this one.
        const out = plan.filter((other) => other.atMs <= action.atMs && other.atMs + other.holdMs > action.atMs);
        expect(out.length).toBeLessThanOrEqual(f);
        expect(new Set(out.map((other) => other.target)).size).toBe(out.length);
      }
    }
  }
});

test("the options: defaults, bounds and refusals", () => {
  const defaults = parseOptions([]);
  expect(typeof defaults).toBe("object");
  expect(defaults).toMatchObject({ minutes: 5, replicas: 4, json: false });
  expect(parseOptions(["--minutes", "0"])).toContain("--minutes");
  expect(parseOptions(["--replicas", "5"])).toBe("--replicas: 4 or 7, got 5");
  expect(parseOptions(["--seed", "12", "--replicas", "7", "--json"])).toMatchObject({ seed: 12, replicas: 7, json: true });
  expect(parseOptions(["--fast"])).toBe("unknown argument --fast");
});

test("a run of minutes plans key rotations among the other faults", () => {
  const kinds = new Set(planChaos(3, 300_000, 4, 1).map((action) => action.kind));
  expect([...kinds].sort()).toEqual(["kill", "pause", "rotate", "stop"]);
});

test("a live unordered subscription is judged for repeats and inventions, not for what it missed", () => {
  const stream = { tag: "net.links", prefix: "n", acked: [], attempted: new Set(["n-0.0", "n-1.0", "n-2.0"]), failures: 0 };
  expect(
    liveUnorderedProblems(
      [stream],
      [
        { seq: 1, payload: "n-0.0" },
        { seq: 3, payload: "n-2.0" },
      ],
    ),
  ).toEqual([]);
  expect(
    liveUnorderedProblems(
      [stream],
      [
        { seq: 1, payload: "n-0.0" },
        { seq: 2, payload: "n-0.0" },
        { seq: 3, payload: "x-9.0" },
      ],
    ),
  ).toEqual(["live: n-0.0 delivered twice", "live: x-9.0 was never published"]);
});
