/**
 * `npm run bench:ab` (test/bench/ab.ts): its arguments, and how it compares two builds'
 * figures pair by pair. The program itself runs in test/integration/bench-ab.test.ts.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type BenchFigures, compare, drawOrders, type Options, parseOptions, ROUNDS_MAX } from "../bench/ab.ts";

const dir = mkdtempSync(join(tmpdir(), "fitb-ab-unit-"));
const A = join(dir, "a");
const B = join(dir, "b");
const PLAIN = join(dir, "plain");
for (const path of [A, B, PLAIN]) writeFileSync(path, "#!/bin/sh\n");
chmodSync(A, 0o755);
chmodSync(B, 0o755);
chmodSync(PLAIN, 0o644);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const WORKLOAD = ["--", "--channel", "sec.alerts", "--events", "1000"];

function parsed(argv: string[]): Options {
  const options = parseOptions(argv);
  if (typeof options === "string") throw new Error(options);
  return options;
}

describe("bench:ab arguments", () => {
  test("the two executables and fitb bench's arguments after --", () => {
    const options = parsed(["--a", A, "--b", B, "--rounds", "5", "--unlimited", ...WORKLOAD]);
    expect(options).toMatchObject({ a: A, b: B, rounds: 5, unlimited: true, sameReplicas: false, json: false });
    expect(options.bench).toEqual(["--channel", "sec.alerts", "--events", "1000"]);
    expect(options.relayPort).toBe(options.basePort + 300);
  });

  test("refusals say what is wrong", () => {
    expect(parseOptions(["--a", A, ...WORKLOAD])).toContain("--a and --b are both needed");
    expect(parseOptions(["--a", A, "--b", join(dir, "missing"), ...WORKLOAD])).toContain("is not a file");
    expect(parseOptions(["--a", A, "--b", PLAIN, ...WORKLOAD])).toContain("is not executable");
    expect(parseOptions(["--a", A, "--b", B, "--", "--events", "10"])).toContain("must name --channel");
    expect(parseOptions(["--a", A, "--b", B, "--", "--channel", "x", "--json"])).toContain("must not name --json");
    expect(parseOptions(["--a", A, "--b", B, "--", "--channel=x", "--config=c.toml"])).toContain("must not name --config");
    expect(parseOptions(["--a", A, "--b", B, "--", "--channel", "x", "--rate", "100,200"])).toContain("--rate: one rate");
    expect(parseOptions(["--a", A, "--b", B, "--", "--channel", "x", "--rate=100,200"])).toContain("--rate: one rate");
    expect(typeof parseOptions(["--a", A, "--b", B, "--", "--channel=x", "--rate=100"])).toBe("object");
    expect(parseOptions(["--a", A, "--b", B, "--rounds", String(ROUNDS_MAX + 1), ...WORKLOAD])).toContain(
      `--rounds: an integer in 1..${ROUNDS_MAX}`,
    );
    expect(parseOptions(["--a", A, "--b", B, "--base-port", "20000", "--relay-port", "20002", ...WORKLOAD])).toContain(
      "one of the replicas' ports",
    );
    expect(parseOptions(["--a", A, "--b", B, "--channel", "x"])).toContain("fitb bench's arguments go after --");
  });

  test("--help needs nothing else", () => {
    expect(parsed(["--help"]).help).toBe(true);
  });
});

function figures(deliveredPerS: number, p99Ms: number, cpu: (number | null)[] | undefined, lowPerS?: number): BenchFigures {
  return {
    delivered_per_s: deliveredPerS,
    p50_ms: 1,
    p99_ms: p99Ms,
    max_ms: p99Ms,
    ...(cpu === undefined ? {} : { cpu_us_per_event: cpu }),
    bench_cpu_us_per_event: null,
    ...(lowPerS === undefined ? {} : { mix: { low_mixed_per_s: lowPerS } }),
  };
}

describe("bench:ab comparison", () => {
  test("each figure: both sides' ranges, B/A per pair (min, median, max), and the pairs B won, higher or lower as the figure reads", () => {
    const pairs = [
      { a: figures(100, 10, [2, 2]), b: figures(110, 12, [1, 1]) },
      { a: figures(200, 10, [2, null]), b: figures(180, 8, [1, 3]) },
      { a: figures(100, 20, [null, null]), b: figures(150, 10, [1, 1]) },
      // A build from before the CPU figures: no cpu_us_per_event at all.
      { a: figures(100, 20, undefined), b: figures(100, 20, [1, 1]) },
    ];
    const byFigure = new Map(compare(pairs).map((c) => [c.figure, c]));
    const delivered = byFigure.get("delivered ev/s");
    expect(delivered).toMatchObject({ pairs: 4, a: { min: 100, max: 200 }, b: { min: 100, max: 180 }, bBetter: 2 });
    expect(delivered?.ratio.min).toBeCloseTo(0.9);
    expect(delivered?.ratio.median).toBeCloseTo((1 + 1.1) / 2);
    expect(delivered?.ratio.max).toBeCloseTo(1.5);
    // Lower is better for latency: B lower in two pairs, equal in one.
    expect(byFigure.get("p99 ms")).toMatchObject({ pairs: 4, bBetter: 2 });
    // Replica CPU over the replicas both runs of a pair reported: pair 2 compares replica 0
    // alone (2 against 1, not 2 against the mean of 1 and 3); pairs 3 and 4 have none in common.
    const cpu = byFigure.get("replica CPU µs/event (mean)");
    expect(cpu).toMatchObject({ pairs: 2, bBetter: 2, a: { min: 2, max: 2 }, b: { min: 1, max: 1 } });
    expect(cpu?.ratio.median).toBeCloseTo(0.5);
    // No run gave the bench's CPU or a --mix figure: no row for them.
    expect(byFigure.has("bench CPU µs/event")).toBe(false);
    expect(byFigure.has("--mix low ev/s during the run")).toBe(false);
  });

  test("--mix runs compare the low channel's rate during the run", () => {
    const [low] = compare([{ a: figures(1000, 5, [1], 50_000), b: figures(1000, 5, [1], 60_000) }]).filter((c) =>
      c.figure.startsWith("--mix"),
    );
    expect(low).toMatchObject({ pairs: 1, bBetter: 1 });
    expect(low?.ratio.median).toBeCloseTo(1.2);
  });

  test("A goes first in half the rounds and B in the other half, shuffled; an odd round's extra is drawn", () => {
    let seed = 1;
    const random = (): number => {
      seed = (seed * 16_807) % 2_147_483_647;
      return seed / 2_147_483_647;
    };
    for (const rounds of [1, 2, 3, 6, 7, 20]) {
      for (let draw = 0; draw < 20; draw++) {
        const orders = drawOrders(rounds, random);
        expect(orders).toHaveLength(rounds);
        const aFirst = orders.filter((order) => order[0] === "a").length;
        expect(Math.abs(aFirst - (rounds - aFirst))).toBeLessThanOrEqual(rounds % 2);
        for (const order of orders) expect([...order].sort()).toEqual(["a", "b"]);
      }
    }
    // Shuffled: over many draws of 6 rounds, the first round is sometimes A first and sometimes B first.
    const firsts = new Set(Array.from({ length: 40 }, () => drawOrders(6, random)[0]?.[0]));
    expect(firsts).toEqual(new Set(["a", "b"]));
  });
});
