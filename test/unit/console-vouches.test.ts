// The console tail's live count of the replicas that sent each delivered batch
// (src/cli/console/vouches.ts): copies before the delivery count, later ones update the
// row, a replica counts once, and the counting is bounded in keys and in time.
import { describe, expect, test } from "bun:test";
import { VOUCH_KEYS_MAX, VOUCH_WINDOW_MS, VouchCounter } from "../../src/cli/console/vouches.ts";

function counter() {
  let nowMs = 0;
  const updates: { batch: number; replicas: readonly number[] }[] = [];
  const vouches = new VouchCounter(
    () => nowMs,
    (batch, replicas) => updates.push({ batch, replicas }),
  );
  return { vouches, updates, advance: (ms: number) => (nowMs += ms) };
}

describe("tail vouch counter", () => {
  test("copies before the delivery count; each later replica updates the row once", () => {
    const { vouches, updates } = counter();
    vouches.copy(2, "7/ab");
    vouches.copy(0, "7/ab");
    vouches.copy(1, "7/cd"); // another batch at that seq: not the same copy
    expect(vouches.delivered("7/ab", 1)).toEqual([0, 2]);
    expect(updates).toEqual([]);
    vouches.copy(3, "7/ab");
    vouches.copy(3, "7/ab");
    vouches.copy(1, "7/ab");
    expect(updates).toEqual([
      { batch: 1, replicas: [0, 2, 3] },
      { batch: 1, replicas: [0, 1, 2, 3] },
    ]);
  });

  test("a batch is counted for a bounded time after its first copy", () => {
    const { vouches, updates, advance } = counter();
    vouches.copy(0, "k");
    vouches.delivered("k", 1);
    advance(VOUCH_WINDOW_MS - 1);
    vouches.copy(1, "k");
    advance(1);
    vouches.copy(2, "k");
    expect(updates).toEqual([{ batch: 1, replicas: [0, 1] }]);
    expect(vouches.size).toBe(1); // the late copy opened a new key, which expires in turn
  });

  test("at most VOUCH_KEYS_MAX keys: the oldest go first", () => {
    const { vouches, updates } = counter();
    vouches.copy(0, "first");
    vouches.delivered("first", 1);
    for (let i = 0; i < VOUCH_KEYS_MAX; i++) vouches.copy(0, `flood-${i}`);
    expect(vouches.size).toBe(VOUCH_KEYS_MAX);
    vouches.copy(1, "first");
    expect(updates).toEqual([]);
  });
});
