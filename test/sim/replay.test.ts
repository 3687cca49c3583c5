// A seed is a complete description of a run: replaying it gives the same events, and the
// crypto scheme does not change the schedule (signatures are opaque bytes to it).
import { expect, test } from "bun:test";
import { runSeed } from "../../src/sim/simulator.ts";

test("the same seed replays the same run, event for event", () => {
  for (const seed of [3, 17]) {
    const a = runSeed(seed, { mix: "all", crypto: "fast", trace: true });
    const b = runSeed(seed, { mix: "all", crypto: "fast", trace: true });
    expect(a.trace.length).toBeGreaterThan(10);
    expect(b.trace).toEqual(a.trace);
    expect(b.latencies).toEqual(a.latencies);
  }
}, 30_000);

test("ed25519 and the keyed-hash scheme give the same schedule", () => {
  const a = runSeed(5, { mix: "byzantine", crypto: "ed25519", trace: true });
  const b = runSeed(5, { mix: "byzantine", crypto: "fast", trace: true });
  expect(b.trace).toEqual(a.trace);
}, 30_000);

test("different seeds give different runs", () => {
  const a = runSeed(1, { mix: "network", crypto: "fast", trace: true });
  const b = runSeed(2, { mix: "network", crypto: "fast", trace: true });
  expect(b.trace).not.toEqual(a.trace);
}, 30_000);
