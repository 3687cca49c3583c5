// The ordering driver's execution lane on a real store under `--sync full` (execution-lane.ts;
// core PROTOCOL.md §2, "Execution does not wait for other seqs' records"): a decision
// waits for this replica's own vote records of its seq, not for other seqs' records.
import { afterAll, expect, test } from "bun:test";
import type { ClientRequest, PersistedRecord, Ready } from "../../src/core/ordering/index.ts";
import { driverFixture } from "./driver-fixture.ts";
import { batchDigest, TestClient, tempDir } from "./storage-fixtures.ts";

const temp = tempDir("fitb-driver-execution-lane-");
afterAll(() => temp.remove());

const NO_SIG = new Uint8Array(64);

function prepared(seq: number, batch: ClientRequest[]): PersistedRecord {
  const digest = batchDigest(batch);
  return {
    t: "prepared",
    cert: {
      view: 0,
      seq,
      digest,
      prePrepare: { t: "PRE_PREPARE", view: 0, seq, digest, ts: 1_700_000_000_000, batch: null, sig: NO_SIG },
      prepares: [],
      batch: null,
    },
    batch,
  };
}

/** The `decided` record of a step, its certificate the COMMITs of replicas (ranks) `by`. */
function decidedBy(seq: number, batch: ClientRequest[], by: readonly number[]): PersistedRecord {
  const digest = batchDigest(batch);
  const commits = by.map((replica) => ({ t: "COMMIT" as const, view: 0, seq, digest, replica, sig: NO_SIG }));
  return { t: "decided", seq, view: 0, digest, batch, commits };
}

function decide(seq: number, batch: ClientRequest[]): Ready["effects"][number] {
  return { kind: "decide", seq, view: 0, batch, execute: batch, after: 0 };
}

async function until(condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!condition() && Date.now() < deadline) await Bun.sleep(2);
  expect(condition()).toBe(true);
}

test("a decision waits for its own seq's prepared record when its own COMMIT counts; otherwise it goes ahead of a COMMIT waiting for another seq's", async () => {
  const executed: number[] = [];
  const { driver, storage, metrics, close } = driverFixture(temp.dir, 44_200, {
    sync: "full",
    onDecided: (_requests, seq) => void executed.push(seq),
  });
  const handle = (ready: Ready): void => (driver as unknown as { handleReady(ready: Ready): void }).handleReady(ready);
  const client = new TestClient();
  try {
    expect(storage.store.walSync).not.toBeNull();
    // Seq 1 prepared and decided in one step (this replica the last to prepare): its own
    // COMMIT counts, so the execution waits for the prepared record's fsync.
    const b1 = [client.pub("a.b", ["one"])];
    handle({ persist: [prepared(1, b1)], effects: [decide(1, b1)] });
    expect(executed).toEqual([]);
    await until(() => executed.length === 1);
    expect(executed).toEqual([1]);
    // Seq 3 prepared, its COMMIT waiting for the fsync; seq 2, decided from its peers'
    // COMMITs (no vote of this replica on it), executes at once, ahead of that COMMIT.
    const b3 = [client.pub("a.b", ["three"])];
    const commit3 = { t: "COMMIT" as const, view: 0, seq: 3, digest: batchDigest(b3), replica: 0, sig: NO_SIG };
    handle({ persist: [prepared(3, b3)], effects: [{ kind: "send", to: 1, msg: commit3 }] });
    expect(storage.pendingEffects).toBe(1);
    const b2 = [client.pub("a.b", ["two"])];
    handle({ persist: [], effects: [decide(2, b2)] });
    expect(executed).toEqual([1, 2]);
    expect(storage.pendingEffects).toBe(1);
    const ahead = await metrics.registry.text();
    expect(ahead).toContain("fitb_executions_ahead_total 1");
    // Seq 3's decision waits for its own prepared record, staged before the COMMIT.
    handle({ persist: [], effects: [decide(3, b3)] });
    await until(() => executed.length === 3);
    expect(executed).toEqual([1, 2, 3]);
    await until(() => storage.pendingEffects === 0);
    // Prepared and decided in one step again, but decided by Q COMMITs of the others (the
    // certificate in the step's decided record does not name this replica, rank 0): it
    // goes at once; named in it, its execution waits for the prepared record.
    const b4 = [client.pub("a.b", ["four"])];
    handle({ persist: [prepared(4, b4), decidedBy(4, b4, [1, 2, 3])], effects: [decide(4, b4)] });
    expect(executed).toEqual([1, 2, 3, 4]);
    const b5 = [client.pub("a.b", ["five"])];
    handle({ persist: [prepared(5, b5), decidedBy(5, b5, [0, 1, 2])], effects: [decide(5, b5)] });
    expect(executed).toEqual([1, 2, 3, 4]);
    await until(() => executed.length === 5);
  } finally {
    close();
  }
});
