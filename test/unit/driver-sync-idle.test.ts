// The ordering driver's tick makes durable the writes that no effect waits for
// (GroupCommit.syncIdle): under `--sync full` nothing else would ever fsync them.
import { afterAll, expect, test } from "bun:test";
import { driverFixture } from "./driver-fixture.ts";
import { decidedRecord, TestClient, tempDir } from "./storage-fixtures.ts";

const temp = tempDir("fitb-driver-sync-idle-");
afterAll(() => temp.remove());

test("under sync full, a write no effect waits for is made durable by the driver's tick", async () => {
  const { driver, storage, log, close } = driverFixture(temp.dir, 44_000, { sync: "full" });
  try {
    expect(storage.store.walSync).not.toBeNull();
    storage.persist(decidedRecord(new TestClient(), 1));
    storage.commits.flush();
    // Written, and nothing waits for it: no fsync started.
    expect(storage.commits.pendingWrites).toBeGreaterThan(0);
    driver.start();
    const deadline = Date.now() + 10_000;
    while (storage.commits.pendingWrites > 0 && Date.now() < deadline) await Bun.sleep(5);
    expect(storage.commits.pendingWrites).toBe(0);
    // Synced by the tick, not by an effect: the only other fsync here comes with the
    // core's first message (a leader alone sends one after some hundreds of ticks), which
    // this mesh without links logs as not sent once that fsync returned.
    expect(log.lines.filter((line) => line.msg === "peer message not sent")).toEqual([]);
  } finally {
    close();
  }
});
