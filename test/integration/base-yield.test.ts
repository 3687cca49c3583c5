/**
 * A base snapshot gives way to urgent traffic (src/replica/storage/snapshots.ts,
 * BASE_URGENT_TICKS_PER_PART): real replicas, a publisher on the critical channel
 * `sec.alerts` until each replica has its first base (written, or taken by state transfer
 * when it fell behind); every replica that wrote one reports the ticks it gave up to the
 * critical requests arriving meanwhile.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { FitbClient } from "../../src/client/client.ts";
import { clientFor, encode, startClusterWithChannels } from "./client-util.ts";
import { logTail, type TestCluster } from "./harness.ts";

/** Publishes at most: the first base comes at the first stable checkpoint, 128 seqs in. */
const PUBLISHES_MAX = 5_000;
const WRITTEN = '"msg":"base snapshot written"';
const INSTALLED = '"msg":"snapshot installed"';
const IDS = [0, 1, 2, 3];

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

/** Replica `id`'s whole log lines holding `marker`, parsed (a line still being read, or interleaved with standard error, is skipped). */
function logLines(id: number, marker: string): Record<string, unknown>[] {
  const found: Record<string, unknown>[] = [];
  for (const text of (cluster.logs[id] ?? []).join("").split("\n")) {
    if (!text.includes(marker)) continue;
    try {
      found.push(JSON.parse(text) as Record<string, unknown>);
    } catch {
      // Not a whole line.
    }
  }
  return found;
}

test("while critical publishes arrive, a replica's base snapshot yields ticks to them and still completes", async () => {
  const settled = (id: number): boolean => logLines(id, WRITTEN).length > 0 || logLines(id, INSTALLED).length > 0;
  let published = 0;
  // One publish at a time, each acknowledged: critical requests keep arriving at every replica until each has its base.
  while (!IDS.every(settled) && published < PUBLISHES_MAX) {
    await client.publish("sec.alerts", [encode(`alert ${published}`)]);
    published++;
  }
  const wrote = IDS.flatMap((id) =>
    logLines(id, WRITTEN)
      .slice(0, 1)
      .map((line) => ({ id, line })),
  );
  // A replica that fell behind takes its base by state transfer instead of writing one; a quorum wrote theirs.
  const logs = IDS.map((id) => `replica ${id}:\n${logTail(cluster, id, 5)}`).join("\n");
  expect(wrote.length, `bases written after ${published} critical publishes:\n${logs}`).toBeGreaterThanOrEqual(3);
  for (const { id, line } of wrote) {
    // Ticks given up between parts: the replica saw the urgent requests and its base writer gave way.
    expect(line.yieldedTicks, `replica ${id}: ${JSON.stringify(line)}`).toBeGreaterThan(0);
  }
}, 180_000);
