// The count a replica holds against a view's leader for clients' first requests refused at
// execution (src/replica/ordering-driver.ts RefusedFirstRequests): past the bound in one
// view it says so once; a new view starts from nothing; the seqs a NEW_VIEW carried over
// from earlier views are not held against the new leader.
import { describe, expect, test } from "bun:test";
import { REFUSED_FIRST_REQUESTS_PER_VIEW_MAX, RefusedFirstRequests } from "../../src/replica/ordering-driver.ts";

describe("RefusedFirstRequests", () => {
  test("passing the bound in one view answers true once", () => {
    const counter = new RefusedFirstRequests();
    expect(counter.note(0, 1, 10, 20)).toBe(false);
    expect(counter.note(0, 2, 10, 20)).toBe(false);
    expect(counter.note(0, 3, 1, 20)).toBe(true);
    expect(counter.note(0, 4, 100, 20)).toBe(false);
    expect(counter.count).toBe(121);
  });

  test("each view counts on its own: what an earlier leader's decisions held is not held against the next", () => {
    const counter = new RefusedFirstRequests();
    expect(counter.note(0, 1, 15, 20)).toBe(false);
    expect(counter.note(1, 2, 15, 20)).toBe(false);
    expect(counter.count).toBe(15);
    expect(counter.note(1, 3, 6, 20)).toBe(true);
  });

  test("batches a NEW_VIEW re-proposes (up to its maxS) are decided in the new view but were not its leader's", () => {
    const counter = new RefusedFirstRequests();
    counter.installed(1, 40);
    for (let seq = 20; seq <= 40; seq++) expect(counter.note(1, seq, 100, 20)).toBe(false);
    expect(counter.count).toBe(0);
    expect(counter.note(1, 41, 21, 20)).toBe(true);
  });

  test("the default bound leaves room for a channel destroyed under many new publishers' first publishes", () => {
    const counter = new RefusedFirstRequests();
    expect(counter.note(3, 10, REFUSED_FIRST_REQUESTS_PER_VIEW_MAX)).toBe(false);
    expect(counter.note(3, 11, 1)).toBe(true);
  });
});
