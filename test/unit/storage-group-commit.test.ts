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
