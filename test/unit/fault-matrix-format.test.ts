// The fault matrix's table and its list of faults (the rows themselves run in
// test/fault/matrix.test.ts and `npm run faults`).
import { describe, expect, test } from "bun:test";
import { FAULTS, faultNamed, formatRows } from "../fault/matrix.ts";

describe("fault matrix", () => {
  test("every fault has a unique name, a description and a hold time", () => {
    expect(new Set(FAULTS.map((f) => f.name)).size).toBe(FAULTS.length);
    for (const f of FAULTS) {
      expect(f.what.length).toBeGreaterThan(10);
      expect(f.holdMs).toBeGreaterThan(0);
    }
  });

  test("an unknown fault is refused with the known names", () => {
    expect(() => faultNamed("nope")).toThrow(/kill-leader/);
  });

  test("the table has one header, one rule and one line per row, columns aligned", () => {
    const row = {
      fault: "kill-all",
      acked: 12,
      ackedDuringFault: 4,
      delivered: 12,
      lost: 0,
      duplicated: 0,
      reordered: 0,
      forged: 0,
      longestStallMs: 3100,
      recoveryMs: 2000,
      backOnPreferredMs: null,
      problems: [],
      notes: [],
    };
    const lines = formatRows([row, { ...row, fault: "split-2-2", acked: 1234 }]).split("\n");
    expect(lines.length).toBe(4);
    expect(lines[0]).toContain("| fault ");
    expect(lines[2]).toContain("| 3.1 s ");
    expect(new Set(lines.map((l) => l.length)).size).toBe(1);
  });
});
