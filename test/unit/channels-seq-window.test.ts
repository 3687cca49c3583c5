// SeqRangeWindow: bounded dedupe of publisher seq ranges, checked against an exact model.
import { describe, expect, test } from "bun:test";
import { SeqRangeWindow } from "../../src/core/channels/seq-window.ts";

describe("SeqRangeWindow", () => {
  test("new, duplicate and overlap", () => {
    const w = new SeqRangeWindow(8);
    expect(w.check(5, 7)).toBe("new");
    w.add(5, 7);
    expect(w.check(5, 7)).toBe("duplicate");
    expect(w.check(6, 6)).toBe("duplicate");
    expect(w.check(7, 8)).toBe("overlap");
    expect(w.check(3, 5)).toBe("overlap");
    expect(w.check(8, 9)).toBe("new");
    expect(w.check(1, 4)).toBe("new");
    expect(w.highestSeq).toBe(7);
    w.add(1, 4);
    expect(w.highestSeq).toBe(7);
    expect(w.rangeCount).toBe(0);
  });

  test("a contiguous stream folds into the floor and holds no ranges", () => {
    const w = new SeqRangeWindow(2);
    for (let seq = 1; seq <= 100; seq += 4) {
      expect(w.check(seq, seq + 3)).toBe("new");
      w.add(seq, seq + 3);
    }
    expect(w.rangeCount).toBe(0);
    expect(w.floorSeq).toBe(100);
    expect(w.check(1, 100)).toBe("duplicate");
    expect(w.check(99, 101)).toBe("overlap");
  });

  test("adjacent ranges merge, and filling the gap to the floor folds everything", () => {
    const w = new SeqRangeWindow(8);
    w.add(10, 12);
    w.add(13, 15);
    w.add(20, 20);
    expect(w.rangeCount).toBe(2);
    expect(w.check(11, 14)).toBe("duplicate");
    w.add(16, 19);
    expect(w.rangeCount).toBe(1);
    w.add(1, 9);
    expect(w.rangeCount).toBe(0);
    expect(w.floorSeq).toBe(20);
  });

  test("past the bound the lowest range is forgotten; its gap becomes stale, its seqs stay duplicates", () => {
    const w = new SeqRangeWindow(3);
    for (const seq of [10, 20, 30, 40]) w.add(seq, seq);
    expect(w.rangeCount).toBe(3);
    expect(w.floorSeq).toBe(10);
    expect(w.check(5, 5)).toBe("stale");
    expect(w.check(10, 10)).toBe("duplicate");
    expect(w.check(15, 15)).toBe("new");
    expect(w.check(9, 11)).toBe("stale");
  });

  test("forgetThrough refuses everything up to its seq as stale and keeps what lies above", () => {
    const w = new SeqRangeWindow(8);
    for (const [start, end] of [
      [3, 4],
      [8, 12],
      [20, 20],
    ] as const)
      w.add(start, end);
    w.forgetThrough(10);
    // A range reaching past the seq keeps its upper part as seen, and folds into the floor.
    expect(w.floorSeq).toBe(12);
    expect(w.highestSeq).toBe(20);
    for (const seq of [1, 3, 6, 10]) expect(w.check(seq, seq)).toBe("stale");
    expect(w.check(11, 12)).toBe("duplicate");
    expect(w.check(13, 19)).toBe("new");
    expect(w.check(20, 20)).toBe("duplicate");
    // A lower seq changes nothing.
    w.forgetThrough(5);
    expect(w.floorSeq).toBe(12);
    expect(w.check(11, 11)).toBe("duplicate");
    // An empty window: the seq becomes the floor (a restart of a channel retention emptied).
    const empty = new SeqRangeWindow(8);
    empty.forgetThrough(7);
    expect(empty.highestSeq).toBe(7);
    expect(empty.check(7, 7)).toBe("stale");
    expect(empty.check(8, 8)).toBe("new");
  });

  test("agrees with an exact set while no range has been forgotten", () => {
    let state = 12345;
    const rand = (n: number): number => {
      state = (state * 1103515245 + 12345) & 0x7fffffff;
      return state % n;
    };
    const w = new SeqRangeWindow(10_000);
    const seen = new Set<number>();
    for (let i = 0; i < 3000; i++) {
      const start = 1 + rand(2000);
      const end = start + rand(4);
      let hits = 0;
      for (let s = start; s <= end; s++) if (seen.has(s)) hits++;
      const expected = hits === 0 ? "new" : hits === end - start + 1 ? "duplicate" : "overlap";
      const got = w.check(start, end);
      // Adjacent ranges merge, so every maximal run of seen seqs is one range and an
      // all-seen candidate is always inside one: the answer is exact.
      expect(got).toBe(expected);
      if (got === "new") {
        w.add(start, end);
        for (let s = start; s <= end; s++) seen.add(s);
      }
    }
  });

  test("refuses a non-positive bound", () => {
    expect(() => new SeqRangeWindow(0)).toThrow(RangeError);
  });
});
