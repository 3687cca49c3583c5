/**
 * The states at the last epoch switch points stay servable (src/replica/storage/snapshots.ts
 * `pin`): a replica several epochs behind fetches each switch point's state in turn, long
 * after later checkpoints became stable here. A real keeper, machine and store.
 */
import { afterEach, expect, test } from "bun:test";
import type { ClientTableExport } from "../../src/core/ordering/index.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import { checkpointStateDigest } from "../../src/replica/storage/digest.ts";
import { CAPTURES_MAX, SnapshotKeeper } from "../../src/replica/storage/snapshots.ts";
import { execute, newMachine, openStorage, tempDir, TestClient, testLog } from "./storage-fixtures.ts";

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
});

const INTERVAL = 128;
const KEEP = 4;
const CLIENTS: ClientTableExport = [["ab:cd", 7]];

test("the last switch points pinned stay servable after later stable checkpoints; an older one is let go", () => {
  const t = tempDir();
  cleanups.push(t.remove);
  const metrics = new Metrics();
  const storage = openStorage(t.dir, testLog(), metrics);
  cleanups.push(() => storage.close());
  const machine = newMachine();
  const admin = new TestClient();
  const publisher = new TestClient();
  execute(machine, [
    admin.admin({ t: "create-channel", tag: "sec.alerts", fault: "byzantine", order: "total", priority: "high", public: true }),
    admin.admin({ t: "register", tag: "sec.alerts", role: "publisher", key: publisher.key.publicKey }),
  ]);
  let applied = 0;
  const keeper = new SnapshotKeeper({ storage, machine, partBytes: 512, log: testLog(), metrics, appliedSeq: () => applied }, null);
  const digests = new Map<number, Uint8Array>();
  // Five switch points, each followed by more stable checkpoints than the keeper keeps captures of.
  const switches: number[] = [];
  for (let checkpoint = 1; checkpoint <= 5 * (CAPTURES_MAX + 2); checkpoint++) {
    execute(machine, [publisher.pub("sec.alerts", [`alert ${checkpoint}`])]);
    const seq = checkpoint * INTERVAL;
    applied = seq;
    keeper.capture(seq, CLIENTS);
    const digest = checkpointStateDigest(seq, machine.digest(), CLIENTS);
    digests.set(seq, digest);
    keeper.onStable(seq, digest, []);
    if (checkpoint % (CAPTURES_MAX + 2) === 1) {
      keeper.pin(seq, KEEP);
      switches.push(seq);
    }
  }
  applied = Number.MAX_SAFE_INTEGER;
  expect(switches.length).toBe(KEEP + 1);
  const servable = (seq: number) => keeper.openSource(seq, digests.get(seq) as Uint8Array) !== null;
  // The oldest switch point is past the kept ones: let go.
  expect(servable(switches[0] as number)).toBe(false);
  for (const seq of switches.slice(1)) expect(servable(seq)).toBe(true);
  // An unpinned checkpoint between them was dropped as usual.
  expect(servable((switches[1] as number) + INTERVAL)).toBe(false);
});
