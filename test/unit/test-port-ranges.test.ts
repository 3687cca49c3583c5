// The integration harness's port ranges: a range is found free and bound only later (a
// cluster's replica ports, its peer ports, a replica's metrics port are all taken before
// the first replica starts), so ranges taken one after another must not overlap though
// none of them is bound yet.

import { expect, test } from "bun:test";
import { freePortRange } from "../integration/harness.ts";

test("ranges taken before any is bound never overlap, nor leave the test port space", () => {
  const ranges: { base: number; count: number }[] = [];
  for (let i = 0; i < 64; i++) {
    const count = 1 + (i % 8);
    ranges.push({ base: freePortRange(count), count });
  }
  for (const range of ranges) {
    expect(range.base).toBeGreaterThanOrEqual(12_000);
    expect(range.base + range.count).toBeLessThanOrEqual(32_000);
  }
  const overlapping = ranges.flatMap((a, i) =>
    ranges
      .slice(i + 1)
      .filter((b) => a.base < b.base + b.count && b.base < a.base + a.count)
      .map((b) => [a, b]),
  );
  expect(overlapping).toEqual([]);
});
