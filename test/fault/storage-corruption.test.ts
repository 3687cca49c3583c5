/**
 * Disk corruption on a real replica (src/README.md §5): a flipped byte inside a stored decision
 * and a database file cut in half. Each is detected at start, reported (a JSON log line
 * and a metric), never served, and repaired from the other replicas. The proof that the
 * repaired replicas serve correct data: with the two undamaged replicas stopped, the
 * two repaired ones alone (f+1) still give every acknowledged event at its seq.
 */
import { describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { readFileSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadPublicKeyFile } from "../../src/crypto/keys.ts";
import { STORE_FILE } from "../../src/replica/storage/store.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, createChannels } from "../integration/client-util.ts";
import {
  catchUpUnderTraffic,
  checkTotalOrder,
  dataDirOf,
  historyByCli,
  killAndWait,
  logLines,
  publishStream,
  waitConverged,
} from "../integration/durability-history.ts";
import { startCluster, type TestCluster } from "../integration/harness.ts";

const CONVERGE_MS = 60_000;
/** Bytes of a stored decision searched for in the file: long enough to be unique. */
const NEEDLE_BYTES = 48;

/** Folds the write-ahead log of a stopped replica into its database file (as a clean stop would). */
function foldWal(dbPath: string): void {
  const db = new Database(dbPath);
  db.exec("PRAGMA wal_checkpoint(TRUNCATE)");
  db.close();
}

/**
 * Flips one bit inside the stored decision at `seq`, in the database file itself: every
 * copy of a slice of its bytes is altered, so the live row is hit whatever free pages
 * still hold.
 */
function flipInsideDecision(dbPath: string, seq: number): number {
  const db = new Database(dbPath, { readonly: true });
  const row = db.query("SELECT rec FROM decided WHERE seq = ?").get(seq) as { rec: Uint8Array } | null;
  db.close();
  if (row === null) throw new Error(`no stored decision at ${seq}`);
  const middle = Math.floor(row.rec.length / 2);
  const needle = Buffer.from(row.rec.subarray(middle - NEEDLE_BYTES / 2, middle + NEEDLE_BYTES / 2));
  const bytes = readFileSync(dbPath);
  let flipped = 0;
  for (let at = bytes.indexOf(needle); at >= 0; at = bytes.indexOf(needle, at + 1)) {
    bytes[at + NEEDLE_BYTES / 2] = (bytes[at + NEEDLE_BYTES / 2] as number) ^ 0x10;
    flipped++;
  }
  writeFileSync(dbPath, bytes);
  return flipped;
}

function storeOf(cluster: TestCluster, id: number): string {
  return join(dataDirOf(cluster, id), STORE_FILE);
}

describe("a damaged store", () => {
  test("a flipped byte and a truncated file are detected, reported, repaired from peers and never served", async () => {
    const cluster = await startCluster();
    const admin = clientFor(cluster, cluster.adminKey);
    const publisher = clientFor(cluster, cluster.clientKey);
    try {
      await createChannels(admin, loadPublicKeyFile(`${cluster.clientKey}.pub`));
      const leader = (await admin.status()).leader as number;
      const [flipped, truncated] = [(leader + 1) % cluster.n, (leader + 2) % cluster.n] as [number, number];
      const stream = await publishStream(publisher, "sec.alerts", "alert", 300, 1);
      const decided = await waitConverged(admin, [0, 1, 2, 3], CONVERGE_MS);

      // A bit flip inside a recent decision.
      await killAndWait(cluster, flipped);
      foldWal(storeOf(cluster, flipped));
      expect(flipInsideDecision(storeOf(cluster, flipped), decided - 10)).toBeGreaterThanOrEqual(1);
      cluster.start(flipped);

      // The database file cut in half.
      await killAndWait(cluster, truncated);
      foldWal(storeOf(cluster, truncated));
      truncateSync(storeOf(cluster, truncated), Math.floor(statSync(storeOf(cluster, truncated)).size / 2));
      cluster.start(truncated);

      const trickled = await catchUpUnderTraffic(cluster, admin, publisher, "sec.alerts", [flipped, truncated], CONVERGE_MS);
      await waitFor(
        "the damage to be reported",
        () =>
          logLines(cluster, flipped, "storage corruption detected").length > 0 &&
          logLines(cluster, truncated, "storage corruption detected").length > 0,
        10_000,
      );
      expect(logLines(cluster, flipped, "storage corruption detected").map((line) => line.table)).toContain("decided");
      expect(logLines(cluster, truncated, "storage corruption detected")[0]?.reason).toMatch(/unreadable/);
      const recovered = logLines(cluster, truncated, "recovered from the data directory").at(-1);
      expect(recovered?.quarantined).toBe(true);
      expect(logLines(cluster, truncated, "state transfer completed").length).toBeGreaterThanOrEqual(1);

      // Only the two repaired replicas up (f+1): they alone must give the whole history.
      for (let id = 0; id < cluster.n; id++) if (id !== flipped && id !== truncated) cluster.kill(id);
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
