import { describe, expect, test } from "bun:test";
import { BoundedMap } from "../../wire/bounded-map.ts";

describe("BoundedMap", () => {
  test("past its entries bound the oldest go first; touch makes an entry the newest", () => {
    const map = new BoundedMap<string, number>(3, 1_000);
    for (const [key, value] of [
      ["a", 1],
      ["b", 2],
      ["c", 3],
    ] as const)
      map.set(key, value, 10);
    map.touch("a");
    map.set("d", 4, 10);
    expect([...map]).toEqual([
      ["c", 3],
      ["a", 1],
      ["d", 4],
    ]);
    expect([map.size, map.heldBytes]).toEqual([3, 30]);
  });

  test("past its bytes bound the oldest go until it holds; a value larger than the bound is not kept", () => {
    const map = new BoundedMap<number, string>(100, 100);
    map.set(1, "one", 40);
    map.set(2, "two", 40);
    map.set(3, "three", 40);
    expect([...map].map(([key]) => key)).toEqual([2, 3]);
    expect(map.heldBytes).toBe(80);
    map.set(4, "huge", 101);
    expect(map.get(4)).toBeUndefined();
    expect(map.heldBytes).toBe(80);
  });

  test("set replaces and recounts, delete and clear give the bytes back", () => {
    const map = new BoundedMap<string, string>(10, 100);
    map.set("k", "first", 30);
    map.set("k", "second", 50);
    expect([map.get("k"), map.size, map.heldBytes]).toEqual(["second", 1, 50]);
    expect(map.delete("k")).toBe(true);
    expect(map.delete("k")).toBe(false);
    expect(map.heldBytes).toBe(0);
    map.set("a", "x", 5);
    map.clear();
    expect([map.size, map.heldBytes, map.get("a")]).toEqual([0, 0, undefined]);
  });

  test("find names the oldest entry a predicate accepts", () => {
    const map = new BoundedMap<string, number>(10, 100);
    map.set("a", 1, 1);
    map.set("b", 2, 1);
    map.set("c", 2, 1);
    expect(map.find((value) => value === 2)).toBe("b");
    expect(map.find((value) => value === 9)).toBeUndefined();
  });

  test("bounds must be whole numbers", () => {
    expect(() => new BoundedMap(0, 10)).toThrow(RangeError);
    expect(() => new BoundedMap(1, -1)).toThrow(RangeError);
  });
});
