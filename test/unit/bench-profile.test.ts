/**
 * test/bench/profile.ts's summary of a .cpuprofile: a native leaf counts for the fitb code
 * that called it, SQLite's COMMIT (run from Database.transaction) is apart from other
 * storage writes, and only the samples inside the window count.
 */
import { expect, test } from "bun:test";
import { type CpuProfile, summarize } from "../bench/profile.ts";

const ROOT = "/repo";

function frame(functionName: string, url: string, lineNumber = 0) {
  return { functionName, url, lineNumber };
}

// root -> transaction (store.ts) -> run (native): the commit
//      -> insertCore (store.ts) -> run (native): an append
//      -> sha256 (hash.ts) -> update (native): hashing
//      -> (program) with no fitb frame
const profile: CpuProfile = {
  nodes: [
    { id: 1, callFrame: frame("(root)", ""), children: [2, 4, 6, 8] },
    { id: 2, callFrame: frame("transaction", `${ROOT}/src/replica/storage/store.ts`, 231), children: [3] },
    { id: 3, callFrame: frame("run", "") },
    { id: 4, callFrame: frame("insertCore", `${ROOT}/src/replica/storage/store.ts`, 246), children: [5] },
    { id: 5, callFrame: frame("run", "") },
    { id: 6, callFrame: frame("sha256", `${ROOT}/src/crypto/hash.ts`, 10), children: [7] },
    { id: 7, callFrame: frame("update", "") },
    { id: 8, callFrame: frame("setTimeout", "") },
  ],
  // One sample a millisecond from t = 1,000,000 µs: commit x4, append x2, hashing x3, runtime x1, then 5 commits after the window.
  samples: [3, 3, 3, 3, 5, 5, 7, 7, 7, 8, 3, 3, 3, 3, 3],
  timeDeltas: new Array(15).fill(1_000),
  startTime: 999_000,
  endTime: 1_015_000,
};

test("samples are grouped by the code that called each native function, inside the window", () => {
  const summary = summarize(profile, 3, 1_000_000, 1_009_500);
  expect(summary.samples).toBe(10);
  expect(summary.samplesAll).toBe(15);
  expect(summary.groups.map((g) => [g.group, g.samples])).toEqual([
    ["storage commit (fsync)", 4],
    ["hashing", 3],
    ["storage append", 2],
    ["runtime (no fitb frame on the stack)", 1],
  ]);
  expect(summary.groups[0]?.share).toBeCloseTo(0.4);
  expect(summary.groups[0]?.speedupMax).toBeCloseTo(1 / 0.6);
  expect(summary.functions.map((f) => `${f.fn} ${f.where}`)).toEqual([
    "run in transaction src/replica/storage/store.ts:232",
    "update in sha256 src/crypto/hash.ts:11",
    "run in insertCore src/replica/storage/store.ts:247",
  ]);
});

test("without a window every sample counts", () => {
  const summary = summarize(profile, 10);
  expect(summary.samples).toBe(15);
  expect(summary.groups[0]).toMatchObject({ group: "storage commit (fsync)", samples: 9 });
});
