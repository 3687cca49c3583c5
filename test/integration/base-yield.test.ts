/**
 * A base snapshot gives way to urgent traffic (src/replica/storage/snapshots.ts,
 * BASE_URGENT_TICKS_PER_PART): real replicas, a publisher on the critical channel
 * `sec.alerts` until every replica has written its first base, which each then reports
 * with the ticks it gave up to the critical requests arriving meanwhile.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { FitbClient } from "../../src/client/client.ts";
import { clientFor, encode, startClusterWithChannels } from "./client-util.ts";
import { logTail, type TestCluster } from "./harness.ts";

/** Publishes at most: the first base comes at the first stable checkpoint, 128 seqs in. */
const PUBLISHES_MAX = 5_000;
const WRITTEN = '"msg":"base snapshot written"';

let cluster: TestCluster;
let client: FitbClient;

beforeAll(async () => {
  cluster = await startClusterWithChannels();
  client = clientFor(cluster, cluster.clientKey);
});

afterAll(async () => {
  client?.close();
  await cluster?.stop();
});

/** Replica `id`'s first "base snapshot written" line, parsed; null before it (lines cut between chunks are skipped). */
function baseWritten(id: number): { parts: number; ticks: number; yieldedTicks: number } | null {
  for (const text of (cluster.logs[id] ?? []).join("").split("\n")) {
    if (!text.includes(WRITTEN)) continue;
    try {
      return JSON.parse(text) as { parts: number; ticks: number; yieldedTicks: number };
    } catch {
      // Not a whole line: its other half was read into the next chunk.
    }
  }
  return null;
}

test("while critical publishes arrive, each replica's base snapshot yields ticks to them and still completes", async () => {
  const written = () => [0, 1, 2, 3].map(baseWritten);
  let published = 0;
  // One publish at a time, each acknowledged: critical requests keep arriving at every replica until the bases are written.
  while (written().some((line) => line === null) && published < PUBLISHES_MAX) {
    await client.publish("sec.alerts", [encode(`alert ${published}`)]);
    published++;
  }
  const lines = written();
  // A replica that fell behind takes its base by state transfer instead of writing one; a quorum wrote theirs.
  const wrote = lines.flatMap((line, id) => (line === null ? [] : [{ id, line }]));
  expect(wrote.length, `bases written after ${published} critical publishes:\n${logTail(cluster, 0)}`).toBeGreaterThanOrEqual(3);
  for (const { id, line } of wrote) {
    // Ticks given up between parts: the replica saw the urgent requests and its base writer gave way.
    expect(line.yieldedTicks, `replica ${id}: ${JSON.stringify(line)}`).toBeGreaterThan(0);
  }
}, 180_000);
