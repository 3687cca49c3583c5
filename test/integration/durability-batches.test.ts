/**
 * Batches written once, on real processes (src/README.md §5, store format 2): after a
 * stream on a four-replica cluster, a replica killed with SIGKILL holds each recent event
 * once, in the batch table, its accept, prepared and decided records naming the batch by
 * digest; restarted, it replays those records. A second replica killed with SIGKILL loses
 * one batch row that records still name: the missing batch is reported at restart, never
 * replayed, and what depends on it comes back from the peers. The proof that both serve
 * correct data: with the other two stopped, these two alone (f+1) give every acknowledged
 * event at its seq.
 */
import { describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { join } from "node:path";
import { loadPublicKeyFile } from "../../src/crypto/keys.ts";
import { STORE_FILE } from "../../src/replica/storage/store.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, createChannels } from "./client-util.ts";
import {
  catchUpUnderTraffic,
  checkTotalOrder,
  dataDirOf,
  historyByCli,
  killAndWait,
  logLines,
  publishStream,
  waitConverged,
} from "./durability-history.ts";
import { startCluster, type TestCluster } from "./harness.ts";

const CONVERGE_MS = 60_000;
/** Requests published before the kills: fewer than a checkpoint interval (128), so nothing is pruned yet. */
const REQUESTS = 60;

function storeOf(cluster: TestCluster, id: number): string {
  return join(dataDirOf(cluster, id), STORE_FILE);
}

interface Copies {
  /** Batch rows holding the payload. */
  readonly batches: number;
  /** Core and decided rows holding it. */
  readonly records: number;
  /** Accept, prepared and decided rows that name the batch holding it. */
  readonly naming: number;
}

/** Where the bytes of `payload` are stored in a stopped replica's database (the WAL included). */
function copiesOf(dbPath: string, payload: string): Copies {
  const db = new Database(dbPath, { readonly: true });
  try {
    const needle = new TextEncoder().encode(payload);
    const count = (sql: string, ...params: Uint8Array[]): number => (db.query(sql).get(...params) as { n: number }).n;
    const batch = db.query("SELECT digest FROM batch WHERE instr(data, ?) > 0").all(needle) as { digest: Uint8Array }[];
    const digest = batch[0]?.digest ?? new Uint8Array(32);
    return {
      batches: batch.length,
      records:
        count("SELECT COUNT(*) AS n FROM core WHERE instr(rec, ?) > 0", needle) +
        count("SELECT COUNT(*) AS n FROM decided WHERE instr(rec, ?) > 0", needle),
      naming:
        count("SELECT COUNT(*) AS n FROM core WHERE kind IN ('accept', 'prepared') AND instr(rec, ?) > 0", digest) +
        count("SELECT COUNT(*) AS n FROM decided WHERE instr(rec, ?) > 0", digest),
    };
  } finally {
    db.close();
  }
}

describe("batches written once, on real replicas", () => {
  test("kill -9: the records name their batches and are replayed; a missing batch is reported and repaired from peers", async () => {
    const cluster = await startCluster();
    const admin = clientFor(cluster, cluster.adminKey);
    const publisher = clientFor(cluster, cluster.clientKey);
    try {
      await createChannels(admin, loadPublicKeyFile(`${cluster.clientKey}.pub`));
      const leader = (await admin.status()).leader as number;
      const [intact, damaged] = [(leader + 1) % cluster.n, (leader + 2) % cluster.n] as [number, number];
      const stream = await publishStream(publisher, "sec.alerts", "alert", REQUESTS, 1);
      expect(stream.acked.length).toBe(REQUESTS);
      await waitConverged(admin, [0, 1, 2, 3], CONVERGE_MS);
      const recent = (stream.acked.at(-5) as { payload: string }).payload;

      await killAndWait(cluster, intact);
      // Each event once, in its batch row; the accept, prepared and decided records name it.
      expect(copiesOf(storeOf(cluster, intact), recent)).toEqual({ batches: 1, records: 0, naming: 3 });
      cluster.start(intact);

      await killAndWait(cluster, damaged);
      const path = storeOf(cluster, damaged);
      expect(copiesOf(path, recent).naming).toBe(3);
      const db = new Database(path);
      const lost = db.query("DELETE FROM batch WHERE instr(data, ?) > 0").run(new TextEncoder().encode(recent)).changes;
      db.close();
      expect(lost).toBe(1);
      cluster.start(damaged);

      const trickled = await catchUpUnderTraffic(cluster, admin, publisher, "sec.alerts", [intact, damaged], CONVERGE_MS);
      // The intact replica replayed its records, every batch found.
      const intactRecovery = logLines(cluster, intact, "recovered from the data directory").at(-1);
      expect(intactRecovery?.lastDecided as number).toBeGreaterThan(0);
      expect(logLines(cluster, intact, "storage corruption detected")).toEqual([]);
      // The damaged one cut its log at the missing batch, and said so.
      await waitFor("the missing batch to be reported", () => logLines(cluster, damaged, "storage corruption detected").length > 0, 10_000);
      const reasons = logLines(cluster, damaged, "storage corruption detected").map((line) => `${line.table} ${line.reason}`);
      expect(reasons).toContain("decided batch missing");
      const damagedRecovery = logLines(cluster, damaged, "recovered from the data directory").at(-1);
      expect(damagedRecovery?.lastDecided as number).toBeLessThan(intactRecovery?.lastDecided as number);

      // Only these two up (f+1): they alone must give the whole history.
      for (let id = 0; id < cluster.n; id++) if (id !== intact && id !== damaged) cluster.kill(id);
      const streams = [stream, trickled];
      const total = streams.reduce((n, s) => n + s.acked.length, 0);
      const history = await historyByCli(cluster, "sec.alerts", total);
      expect(checkTotalOrder(streams, history)).toEqual([]);
    } finally {
      admin.close();
      publisher.close();
      await cluster.stop();
    }
  }, 180_000);
});
