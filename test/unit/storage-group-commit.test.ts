// Group commit (src/replica/storage/group-commit.ts): the persist-before-effect rule of
// the ordering core's contract, with one transaction per turn.
import { describe, expect, test } from "bun:test";
import { DEFERRED_EFFECTS_MAX, GroupCommit, type StagedWrite } from "../../src/replica/storage/group-commit.ts";

/** A group commit whose flushes run only when the test says so, recording every event. */
function harness(options: { failOnCommit?: boolean } = {}) {
  const events: string[] = [];
  const pending: (() => void)[] = [];
  const commits: number[] = [];
  const gc = new GroupCommit({
    commit: (writes: readonly StagedWrite[]) => {
      if (options.failOnCommit === true) throw new Error("disk full");
      for (const write of writes) write();
      commits.push(writes.length);
      events.push(`commit(${writes.length})`);
    },
    onFailure: (error) => {
      events.push(`failure: ${(error as Error).message}`);
      throw new Error("stopped");
    },
    schedule: (run) => void pending.push(run),
  });
  const turn = (): void => {
    for (const run of pending.splice(0)) run();
  };
  return { gc, events, commits, turn, pending };
}

describe("GroupCommit", () => {
  test("an effect with nothing staged before it runs at once", () => {
    const { gc, events } = harness();
    gc.defer(() => events.push("send"));
    expect(events).toEqual(["send"]);
  });

  test("an effect waits for the commit of every write staged before it", () => {
    const { gc, events, turn } = harness();
    gc.stage(() => events.push("write A"));
    gc.defer(() => events.push("send after A"));
    expect(events).toEqual([]);
    turn();
    expect(events).toEqual(["write A", "commit(1)", "send after A"]);
  });

  test("the writes of one turn share one transaction, and effects keep their order", () => {
    const { gc, events, commits, turn } = harness();
    gc.stage(() => events.push("w1"));
    gc.defer(() => events.push("e1"));
    gc.stage(() => events.push("w2"));
    gc.defer(() => events.push("e2"));
    gc.defer(() => events.push("e3"));
    turn();
    expect(commits).toEqual([2]);
    expect(events).toEqual(["w1", "w2", "commit(2)", "e1", "e2", "e3"]);
  });

  test("a later effect without writes still waits behind an earlier one (order is kept)", () => {
    const { gc, events, turn } = harness();
    gc.stage(() => events.push("w"));
    gc.defer(() => events.push("e1"));
    gc.defer(() => events.push("e2"));
    expect(events).toEqual([]);
    turn();
    expect(events).toEqual(["w", "commit(1)", "e1", "e2"]);
  });

  test("writes staged by an effect commit before the effects deferred after them", () => {
    const { gc, events, turn } = harness();
    gc.stage(() => events.push("w1"));
    gc.defer(() => {
      events.push("e1 (stages w2)");
      gc.stage(() => events.push("w2"));
      gc.defer(() => events.push("e3 after w2"));
    });
    gc.defer(() => events.push("e2"));
    turn();
    expect(events).toEqual(["w1", "commit(1)", "e1 (stages w2)", "e2", "w2", "commit(1)", "e3 after w2"]);
  });

  test("writes with no dependent effect are committed in the same turn", () => {
    const { gc, commits, turn } = harness();
    gc.stage(() => undefined);
    gc.stage(() => undefined);
    turn();
    expect(commits).toEqual([2]);
    expect(gc.pendingWrites).toBe(0);
  });

  test("a failed commit runs no dependent effect", () => {
    const { gc, events, turn } = harness({ failOnCommit: true });
    gc.stage(() => events.push("w"));
    gc.defer(() => events.push("reply"));
    expect(() => turn()).toThrow("stopped");
    expect(events).toEqual(["failure: disk full"]);
  });

  test("at the bound of deferred effects a flush runs inline", () => {
    const { gc, commits } = harness();
    gc.stage(() => undefined);
    let ran = 0;
    for (let i = 0; i <= DEFERRED_EFFECTS_MAX; i++) gc.defer(() => void ran++);
    expect(commits).toEqual([1]);
    expect(ran).toBe(DEFERRED_EFFECTS_MAX + 1);
    expect(gc.pendingEffects).toBe(0);
  });
});

/**
 * A group commit in overlapped mode: `commit` only writes, and each fsync is a promise the
 * test resolves (or rejects) by hand, so which effect may run when is exact.
 */
function overlapped() {
  const events: string[] = [];
  const pending: (() => void)[] = [];
  const syncs: { resolve: () => void; reject: (error: Error) => void }[] = [];
  const gc = new GroupCommit({
    commit: (writes: readonly StagedWrite[]) => {
      for (const write of writes) write();
      events.push(`write(${writes.length})`);
    },
    onFailure: (error) => {
      events.push(`failure: ${(error as Error).message}`);
      throw new Error("stopped");
    },
    schedule: (run) => void pending.push(run),
    sync: {
      later: () => {
        events.push(`fsync ${syncs.length + 1} started`);
        return new Promise<void>((resolve, reject) => void syncs.push({ resolve, reject }));
      },
      now: () => void events.push("fsync in place"),
    },
  });
  const turn = (): void => {
    for (const run of pending.splice(0)) run();
  };
  /** Settles fsync `n` (1-based) and lets its continuation run (it schedules the flush of the next turn). */
  const settle = async (n: number, error?: Error): Promise<void> => {
    const sync = syncs[n - 1];
    if (sync === undefined) throw new Error(`fsync ${n} was never started`);
    if (error === undefined) sync.resolve();
    else sync.reject(error);
    await Promise.resolve();
    await Promise.resolve();
  };
  return { gc, events, turn, settle, pending };
}

describe("GroupCommit with an overlapped fsync", () => {
  test("under steady load (an fsync always in flight, an effect always waiting) the effects run are let go", async () => {
    const { gc, turn, settle } = overlapped();
    let ran = 0;
    let fsyncs = 0;
    for (let round = 0; round < 3_000; round++) {
      // Each turn stages a write and defers five effects on it; the fsync of the turn
      // before settles, so the queue never empties.
      gc.stage(() => {});
      for (let i = 0; i < 5; i++) gc.defer(() => void ran++);
      turn();
      if (round > 0) {
        fsyncs++;
        await settle(fsyncs);
      }
      expect(gc.pendingEffects).toBeGreaterThan(0);
    }
    expect(ran).toBeGreaterThan(10_000);
    // Before: every entry ever deferred stayed in the queue (15,000 here).
    expect(gc.heldEffects).toBeLessThan(2 * 1_024 + 20);
  });

  test("the next turn's transaction is written while the previous one's fsync is in flight", async () => {
    const { gc, events, turn, settle } = overlapped();
    gc.stage(() => events.push("accept seq 1"));
    gc.defer(() => events.push("PREPARE seq 1"));
    turn();
    // Written, not durable: the vote waits, and the event loop is free.
    expect(events).toEqual(["accept seq 1", "write(1)", "fsync 1 started"]);
    gc.stage(() => events.push("accept seq 2"));
    gc.defer(() => events.push("PREPARE seq 2"));
    turn();
    // Seq 2's log write did not wait for seq 1's fsync; one fsync at a time.
    expect(events.slice(3)).toEqual(["accept seq 2", "write(1)"]);
    expect(gc.pendingEffects).toBe(2);
    await settle(1);
    turn();
    // Fsync 1 covered seq 1 only: its vote goes, seq 2's waits for the next fsync.
    expect(events.slice(5)).toEqual(["PREPARE seq 1", "fsync 2 started"]);
    await settle(2);
    turn();
    expect(events.slice(7)).toEqual(["PREPARE seq 2"]);
    expect(gc.pendingWrites).toBe(0);
    expect(gc.pendingEffects).toBe(0);
  });

  test("an effect deferred at an earlier mark runs once the writes up to it are durable, not the ones staged after the mark", async () => {
    const { gc, events, turn, settle } = overlapped();
    gc.stage(() => events.push("prepared seq 1"));
    gc.defer(() => events.push("COMMIT seq 1"));
    turn();
    expect(events).toEqual(["prepared seq 1", "write(1)", "fsync 1 started"]);
    // The next step: its vote record, then a decided record the execution need not wait for.
    gc.stage(() => events.push("prepared seq 2"));
    const mark = gc.stagedCount;
    gc.stage(() => events.push("decided seq 1"));
    gc.defer(() => events.push("execute seq 1"), mark);
    gc.defer(() => events.push("COMMIT seq 2"), mark);
    turn();
    expect(events.slice(3)).toEqual(["prepared seq 2", "decided seq 1", "write(2)"]);
    await settle(1);
    turn();
    // Fsync 1 covered the first write only: both later effects wait for fsync 2 (the mark is past it).
    expect(events.slice(6)).toEqual(["COMMIT seq 1", "fsync 2 started"]);
    await settle(2);
    turn();
    expect(events.slice(8)).toEqual(["execute seq 1", "COMMIT seq 2"]);
    // With nothing waiting, an effect whose mark is durable runs at once, though a later write is not.
    const before = gc.stagedCount;
    gc.stage(() => events.push("decided seq 2"));
    gc.defer(() => events.push("execute seq 2"), before);
    expect(events.at(-1)).toBe("execute seq 2");
    expect(gc.pendingWrites).toBe(1);
  });

  test("deferAhead: a vote whose mark is durable goes at once, ahead of effects waiting for an fsync; one whose mark is not waits behind them", async () => {
    const { gc, events, turn, settle } = overlapped();
    gc.stage(() => events.push("view 0"));
    const fence = gc.stagedCount;
    gc.defer(() => events.push("view 0 installed"));
    turn();
    await settle(1);
    turn();
    // Seq 1: its prepared record and the COMMIT behind it wait for fsync 2.
    gc.stage(() => events.push("prepared seq 1"));
    gc.defer(() => events.push("COMMIT seq 1"));
    // Seq 2: its accept record is staged, but its PREPARE waits only for the view record.
    gc.stage(() => events.push("accept seq 2"));
    gc.deferAhead(() => events.push("PREPARE seq 2"), fence);
    expect(events.at(-1)).toBe("PREPARE seq 2");
    expect(gc.pendingEffects).toBe(1);
    // A new view record, not yet durable: the PREPARE after it waits, in order, behind the COMMIT.
    gc.stage(() => events.push("view 1"));
    gc.deferAhead(() => events.push("PREPARE seq 3"), gc.stagedCount);
    expect(events.includes("PREPARE seq 3")).toBe(false);
    turn();
    await settle(2);
    turn();
    expect(events.slice(events.indexOf("PREPARE seq 2") + 1)).toEqual([
      "prepared seq 1",
      "accept seq 2",
      "view 1",
      "write(3)",
      "fsync 2 started",
      "COMMIT seq 1",
      "PREPARE seq 3",
    ]);
  });

  test("a write no effect waits for is written but not synced; the next fsync an effect needs covers it", async () => {
    const { gc, events, turn, settle } = overlapped();
    // A vote's own record, its vote sent ahead: nothing waits for it.
    gc.stage(() => events.push("accept seq 1"));
    turn();
    expect(events).toEqual(["accept seq 1", "write(1)"]);
    expect(gc.pendingWrites).toBe(1);
    // The next step's record has a COMMIT behind it: one fsync covers both.
    gc.stage(() => events.push("prepared seq 1"));
    gc.defer(() => events.push("COMMIT seq 1"));
    turn();
    expect(events.slice(2)).toEqual(["prepared seq 1", "write(1)", "fsync 1 started"]);
    await settle(1);
    turn();
    expect(events.slice(5)).toEqual(["COMMIT seq 1"]);
    expect(gc.pendingWrites).toBe(0);
  });

  test("syncIdle makes durable, within two calls, writes that no effect waited for, and never ones younger than a call", async () => {
    const { gc, events, turn, settle } = overlapped();
    gc.stage(() => events.push("accept seq 1"));
    turn();
    // Committed since the previous call (there was none): not yet.
    gc.syncIdle();
    expect(events).toEqual(["accept seq 1", "write(1)"]);
    // Still not durable at the next call: synced now.
    gc.syncIdle();
    expect(events).toEqual(["accept seq 1", "write(1)", "fsync 1 started"]);
    // A write committed while that fsync is in flight is not covered by it.
    gc.stage(() => events.push("accept seq 2"));
    turn();
    await settle(1);
    turn();
    expect(gc.pendingWrites).toBe(1);
    expect(events.at(-1)).toBe("write(1)");
    gc.syncIdle();
    expect(events.at(-1)).toBe("write(1)");
    gc.syncIdle();
    expect(events.at(-1)).toBe("fsync 2 started");
    await settle(2);
    turn();
    expect(gc.pendingWrites).toBe(0);
    // With everything durable a call starts nothing.
    gc.syncIdle();
    gc.syncIdle();
    expect(events.filter((e) => e.startsWith("fsync"))).toEqual(["fsync 1 started", "fsync 2 started"]);
  });

  test("a syncIdle that finds due writes while an fsync that does not cover them is in flight gets them synced when it returns", async () => {
    const { gc, events, turn, settle } = overlapped();
    gc.stage(() => events.push("prepared seq 1"));
    gc.defer(() => events.push("COMMIT seq 1"));
    turn();
    expect(events.at(-1)).toBe("fsync 1 started");
    // Written while fsync 1 is in flight, and nothing waits for it.
    gc.stage(() => events.push("accept seq 2"));
    turn();
    gc.syncIdle();
    // Due at this call, with fsync 1 still in flight: no second fsync at once.
    gc.syncIdle();
    expect(events.filter((e) => e.startsWith("fsync"))).toEqual(["fsync 1 started"]);
    await settle(1);
    turn();
    // Fsync 1's return runs the COMMIT and starts the fsync the second call asked for.
    expect(events.slice(-2)).toEqual(["COMMIT seq 1", "fsync 2 started"]);
    await settle(2);
    turn();
    expect(gc.pendingWrites).toBe(0);
  });

  test("an effect with nothing staged before it still runs at once", () => {
    const { gc, events } = overlapped();
    gc.defer(() => events.push("send"));
    expect(events).toEqual(["send"]);
  });

  test("writes staged by an effect are written and synced before the effects deferred after them", async () => {
    const { gc, events, turn, settle } = overlapped();
    gc.stage(() => events.push("decided"));
    gc.defer(() => {
      events.push("execute (stages a checkpoint)");
      gc.stage(() => events.push("checkpoint"));
      gc.defer(() => events.push("CHECKPOINT sent"));
    });
    turn();
    await settle(1);
    turn();
    expect(events).toEqual([
      "decided",
      "write(1)",
      "fsync 1 started",
      "execute (stages a checkpoint)",
      "checkpoint",
      "write(1)",
      "fsync 2 started",
    ]);
    await settle(2);
    turn();
    expect(events.at(-1)).toBe("CHECKPOINT sent");
  });

  test("a failed fsync runs no dependent effect and no other fsync starts after it", async () => {
    const { gc, events, turn, settle, pending } = overlapped();
    gc.stage(() => events.push("w1"));
    gc.defer(() => events.push("e1"));
    turn();
    gc.stage(() => events.push("w2"));
    gc.defer(() => events.push("e2"));
    turn();
    await settle(1, new Error("EIO"));
    // The failure is reported at the end of the turn, as a failed commit is.
    expect(pending.length).toBeGreaterThan(0);
    expect(() => turn()).toThrow("stopped");
    expect(events).toContain("failure: EIO");
    expect(events).not.toContain("e1");
    expect(events).not.toContain("e2");
    expect(events).not.toContain("fsync 2 started");
  });

  test("close syncs in place and runs every waiting effect", () => {
    const { gc, events } = overlapped();
    gc.stage(() => events.push("w"));
    gc.defer(() => events.push("reply"));
    gc.close();
    expect(events).toEqual(["w", "write(1)", "fsync in place", "reply"]);
  });

  test("a close while an fsync is in flight syncs in place; a rejection of the in-flight fsync after close is fatal", async () => {
    const { gc, events, turn, settle, pending } = overlapped();
    gc.stage(() => events.push("w"));
    gc.defer(() => events.push("reply"));
    turn();
    gc.close();
    expect(events).toEqual(["w", "write(1)", "fsync 1 started", "fsync in place", "reply"]);
    await settle(1, new Error("EIO"));
    // Pages written before that fsync may be lost although the sync in place said not:
    // the replica stops (at the end of the turn, as any failed commit does).
    expect(pending.length).toBe(1);
    expect(() => turn()).toThrow("stopped");
    expect(events.at(-1)).toBe("failure: EIO");
  });

  test("at the bound of deferred effects, with an fsync in flight, the flush syncs in place and that fsync's failure is still fatal", async () => {
    const { gc, events, turn, settle } = overlapped();
    gc.stage(() => undefined);
    gc.defer(() => undefined);
    turn();
    expect(events).toEqual(["write(1)", "fsync 1 started"]);
    for (let i = 0; i < DEFERRED_EFFECTS_MAX; i++) gc.defer(() => undefined);
    expect(events).toEqual(["write(1)", "fsync 1 started", "fsync in place"]);
    expect(gc.pendingEffects).toBe(0);
    gc.stage(() => undefined);
    gc.defer(() => events.push("later effect"));
    await settle(1, new Error("EIO"));
    expect(() => turn()).toThrow("stopped");
    expect(events).toContain("failure: EIO");
    expect(events).not.toContain("later effect");
  });

  test("at the bound of deferred effects the flush syncs in place", () => {
    const { gc, events } = overlapped();
    gc.stage(() => undefined);
    let ran = 0;
    for (let i = 0; i <= DEFERRED_EFFECTS_MAX; i++) gc.defer(() => void ran++);
    expect(events).toEqual(["write(1)", "fsync in place"]);
    expect(ran).toBe(DEFERRED_EFFECTS_MAX + 1);
    expect(gc.pendingEffects).toBe(0);
  });
});
