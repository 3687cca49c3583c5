// The simulator over many seeds of the "byzantine" fault mix (src/sim/scenario.ts): zero
// violations of agreement, total order, validity, integrity, state, bounds and liveness
// after heal. The first 100 seeds use real ed25519; the rest use the keyed-hash scheme,
// which gives the same schedule (signatures are opaque to it) at a third of the cost.
import { expect, test } from "bun:test";
import { failures, runSeeds } from "./parallel.ts";

/** Seeds per test: sized so that no test takes more than about 30 s on two cores. */
const ED25519_SEEDS = 100;
const FAST_SEEDS_PER_TEST = 100;
const TEST_TIMEOUT_MS = 55_000;

test("byzantine: seeds 1..100 with ed25519", async () => {
  const stats = await runSeeds("byzantine", "ed25519", 1, ED25519_SEEDS);
  expect(failures(stats, "byzantine", "ed25519")).toEqual([]);
  expect(stats.seeds).toBe(ED25519_SEEDS);
}, TEST_TIMEOUT_MS);

test("byzantine: seeds 101..200", async () => {
  const stats = await runSeeds("byzantine", "fast", 101, FAST_SEEDS_PER_TEST);
  expect(failures(stats, "byzantine", "fast")).toEqual([]);
  expect(stats.seeds).toBe(FAST_SEEDS_PER_TEST);
}, TEST_TIMEOUT_MS);

test("byzantine: seeds 201..300", async () => {
  const stats = await runSeeds("byzantine", "fast", 201, FAST_SEEDS_PER_TEST);
  expect(failures(stats, "byzantine", "fast")).toEqual([]);
  expect(stats.seeds).toBe(FAST_SEEDS_PER_TEST);
}, TEST_TIMEOUT_MS);

test("byzantine: seeds 301..400", async () => {
  const stats = await runSeeds("byzantine", "fast", 301, FAST_SEEDS_PER_TEST);
  expect(failures(stats, "byzantine", "fast")).toEqual([]);
  expect(stats.seeds).toBe(FAST_SEEDS_PER_TEST);
}, TEST_TIMEOUT_MS);

test("byzantine: seeds 401..500", async () => {
  const stats = await runSeeds("byzantine", "fast", 401, FAST_SEEDS_PER_TEST);
  expect(failures(stats, "byzantine", "fast")).toEqual([]);
  expect(stats.seeds).toBe(FAST_SEEDS_PER_TEST);
}, TEST_TIMEOUT_MS);
