/** The execution lane over a real group commit in overlapped mode, each fsync held until the test settles it. */
import { describe, expect, test } from "bun:test";
import { ExecutionLane } from "../../src/replica/execution-lane.ts";
import { GroupCommit, type StagedWrite } from "../../src/replica/storage/group-commit.ts";

function harness() {
  const events: string[] = [];
  const pending: (() => void)[] = [];
  const syncs: (() => void)[] = [];
  const gc = new GroupCommit({
    commit: (writes: readonly StagedWrite[]) => {
      for (const write of writes) write();
      events.push(`write(${writes.length})`);
    },
    onFailure: (error) => {
      throw error;
    },
    schedule: (run) => void pending.push(run),
    sync: {
      later: () => {
        events.push(`fsync ${syncs.length + 1} started`);
        return new Promise<void>((resolve) => void syncs.push(resolve));
      },
      now: () => void events.push("fsync in place"),
    },
  });
  const storage = {
    isDurable: (mark: number) => gc.isDurable(mark),
    afterDurable: (effect: () => void, mark: number) => gc.defer(effect, mark),
    get pendingEffects() {
      return gc.pendingEffects;
    },
  };
  let ahead = 0;
  const lane = new ExecutionLane(storage, () => ahead++);
  const turn = (): void => {
    for (const run of pending.splice(0)) run();
  };
  const settle = async (n: number): Promise<void> => {
    const resolve = syncs[n - 1];
    if (resolve === undefined) throw new Error(`fsync ${n} was never started`);
    resolve();
    await Promise.resolve();
    await Promise.resolve();
  };
  return { gc, lane, events, turn, settle, aheadCount: () => ahead };
}

describe("ExecutionLane", () => {
  test("a decision runs at once, ahead of a COMMIT waiting for the fsync of the records staged before it", async () => {
    const { gc, lane, events, turn, settle, aheadCount } = harness();
    // The view record, durable.
    gc.stage(() => events.push("view 0"));
    const fence = gc.stagedCount;
    gc.defer(() => events.push("view installed"));
    turn();
    await settle(1);
    turn();
    // Seq 2's prepared record and its COMMIT, waiting for fsync 2; then seq 1 is decided.
    gc.stage(() => events.push("prepared seq 2"));
    gc.defer(() => events.push("COMMIT seq 2"));
    lane.run(() => events.push("execute seq 1"), gc.stagedCount, true, fence);
    expect(events.at(-1)).toBe("execute seq 1");
    expect(aheadCount()).toBe(1);
    expect(lane.waiting).toBe(0);
    turn();
    await settle(2);
    turn();
    expect(events.slice(events.indexOf("execute seq 1") + 1)).toEqual(["prepared seq 2", "write(1)", "fsync 2 started", "COMMIT seq 2"]);
  });

  test("while the fence is not durable a decision waits in order, and the decisions after it wait behind it", async () => {
    const { gc, lane, events, turn, settle, aheadCount } = harness();
    gc.stage(() => events.push("view 1"));
    const fence = gc.stagedCount;
    lane.run(() => events.push("execute seq 1"), gc.stagedCount, true, fence);
    expect(lane.waiting).toBe(1);
    turn();
    // The fence is durable once fsync 1 returns, but seq 1 still waits in the queue:
    // seq 2, decided meanwhile, must not go ahead of it.
    await settle(1);
    lane.run(() => events.push("execute seq 2"), gc.stagedCount, true, fence);
    expect(events.includes("execute seq 2")).toBe(false);
    expect(lane.waiting).toBe(2);
    turn();
    expect(events.filter((e) => e.startsWith("execute"))).toEqual(["execute seq 1", "execute seq 2"]);
    expect(aheadCount()).toBe(0);
    expect(lane.waiting).toBe(0);
  });

  test("an install or a switch never goes ahead, and what follows it waits for it", async () => {
    const { gc, lane, events, turn, settle } = harness();
    gc.stage(() => events.push("view 0"));
    const fence = gc.stagedCount;
    gc.defer(() => events.push("view installed"));
    turn();
    await settle(1);
    turn();
    gc.stage(() => events.push("snapshot parts"));
    lane.run(() => events.push("install snapshot"), gc.stagedCount, false, 0);
    lane.run(() => events.push("execute seq 9"), gc.stagedCount, true, fence);
    expect(events.includes("install snapshot")).toBe(false);
    expect(events.includes("execute seq 9")).toBe(false);
    turn();
    await settle(2);
    turn();
    expect(events.slice(-2)).toEqual(["install snapshot", "execute seq 9"]);
  });

  test("an execution effect deferred while another runs is not run inside it", async () => {
    const { gc, lane, events, turn, settle } = harness();
    gc.stage(() => events.push("view 0"));
    const fence = gc.stagedCount;
    gc.defer(() => events.push("view installed"));
    turn();
    await settle(1);
    turn();
    gc.stage(() => events.push("prepared seq 3"));
    gc.defer(() => events.push("COMMIT seq 3"));
    lane.run(
      () => {
        events.push("checkpoint at seq 2 begins");
        lane.run(() => events.push("resent reply"), gc.stagedCount, true, fence);
        events.push("checkpoint at seq 2 ends");
      },
      gc.stagedCount,
      true,
      fence,
    );
    expect(events.slice(-2)).toEqual(["checkpoint at seq 2 begins", "checkpoint at seq 2 ends"]);
    expect(lane.waiting).toBe(1);
    turn();
    await settle(2);
    turn();
    expect(events.slice(-2)).toEqual(["COMMIT seq 3", "resent reply"]);
  });
});
