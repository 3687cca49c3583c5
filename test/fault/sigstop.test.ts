/**
 * A replica frozen with SIGSTOP while the others go through many checkpoints, then
 * resumed (BFT-SMaRt issue #27, core/ordering/PROTOCOL.md §9 bug 8): it must jump ahead by state
 * transfer rather than replay a backlog, and its memory must stay bounded by what its
 * peers could queue for it, not grow with how far behind it was.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { loadPublicKeyFile } from "../../src/crypto/keys.ts";
import { PEER_OUTBOUND_BYTES_MAX } from "../../src/replica/peers.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, createChannels } from "../integration/client-util.ts";
import { catchUpUnderTraffic, logLines, publishStream, waitConverged } from "../integration/durability-history.ts";
import { freePortRange, startCluster } from "../integration/harness.ts";

/** Checkpoint interval of the ordering core (core/ordering/PROTOCOL.md §10). */
const K = 128;
/** Events per request and bytes per event while the replica is frozen. */
const EVENTS_PER_REQUEST = 64;
const EVENT_BYTES = 1000;
/**
 * Requests published at least while the replica is frozen: more bytes than a peer may
 * queue for it (PEER_OUTBOUND_BYTES_MAX), so the backlog cannot simply be replayed.
 * Publishing goes on past them until the others have passed enough checkpoints: how many
 * decisions a request makes depends on batching, hence on the machine's speed.
 */
const REQUESTS = Math.ceil((1.25 * PEER_OUTBOUND_BYTES_MAX) / (EVENTS_PER_REQUEST * EVENT_BYTES));
/** Concurrent publish streams carrying them. */
const STREAMS = 4;
// Generous: catching up competes for 2 cores with 3 busy replicas; the test bounds, it does not time.
const CONVERGE_MS = 75_000;
/** Bound on driving the others past the target checkpoint while one is frozen (a bound, not a timing). */
const DRIVE_MS = 120_000;
/** Slack for the runtime's own allocation noise (GC timing, buffers) on top of the queued bytes. */
const MEMORY_SLACK_BYTES = 64 * 1024 * 1024;

/** Replica `id`'s stable checkpoint from its status page (null: no answer). */
async function stableCheckpointOf(metricsBase: number, id: number): Promise<number | null> {
  const response = await fetch(`http://127.0.0.1:${metricsBase + id}/status`).catch(() => null);
  if (response?.ok !== true) return null;
  const status = (await response.json().catch(() => null)) as { stableCheckpoint?: unknown } | null;
  return typeof status?.stableCheckpoint === "number" ? status.stableCheckpoint : null;
}

/** Resident and peak resident bytes of a process (Linux /proc). */
function memoryOf(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN) * 1024;
  return { rss: field("VmRSS"), peak: field("VmHWM") };
}

describe("a replica resumed after SIGSTOP", () => {
  test("catches up by state transfer after many checkpoints, with bounded memory", async () => {
    // This test is about catching up, not about fsync: the lighter sync policy lets the
    // group reach its checkpoints sooner.
    // Each replica serves its status page, where the test reads its stable checkpoint.
    const metricsBase = freePortRange(4);
    const cluster = await startCluster({ replicaArgs: (id) => ["--sync", "normal", "--metrics", `127.0.0.1:${metricsBase + id}`] });
    const admin = clientFor(cluster, cluster.adminKey);
    const publisher = clientFor(cluster, cluster.clientKey);
    try {
      await createChannels(admin, loadPublicKeyFile(`${cluster.clientKey}.pub`));
      const leader = (await admin.status()).leader as number;
      const frozen = (leader + 1) % cluster.n;
      const others = [0, 1, 2, 3].filter((id) => id !== frozen);
      await publishStream(publisher, "sec.alerts", "warmup", 20, 1);
      const start = await waitConverged(admin, [0, 1, 2, 3], CONVERGE_MS);
      const proc = cluster.procs[frozen];
      if (proc === null || proc === undefined) throw new Error("no process");
      // The first checkpoint beyond the frozen replica's log window (L = 2K): once the
      // others made it stable, they hold no decision at or below it, so the frozen replica
      // can only get past it by state transfer to it or a later checkpoint.
      const target = (Math.floor((start + 2 * K) / K) + 1) * K;
      proc.kill("SIGSTOP");
      // Publish until every other replica reports the target checkpoint stable, and at
      // least REQUESTS requests in all.
      let stables: (number | null)[] = [];
      let driving = true;
      const moved = waitFor(
        `replicas ${others.join(",")} to make checkpoint ${target} stable (start ${start})`,
        async () => {
          stables = await Promise.all(others.map((id) => stableCheckpointOf(metricsBase, id)));
          return stables.every((seq) => seq !== null && seq >= target);
        },
        DRIVE_MS,
        () => `stable checkpoints of ${others.join(",")}: ${JSON.stringify(stables)}`,
      ).finally(() => {
        driving = false;
      });
      const perStream = Math.ceil(REQUESTS / STREAMS);
      const frozenStreams = await Promise.all(
        Array.from({ length: STREAMS }, (_, s) =>
          publishStream(
            publisher,
            "sec.alerts",
            `frozen${s}`,
            (r) => r < perStream || driving,
            EVENTS_PER_REQUEST,
            () => undefined,
            EVENT_BYTES,
          ),
        ),
      );
      await moved;
      // Three replicas are a quorum: everything was acknowledged while one was frozen.
      expect(frozenStreams.map((stream) => stream.failures)).toEqual(new Array(STREAMS).fill(0));
      proc.kill("SIGCONT");
      await catchUpUnderTraffic(cluster, admin, publisher, "sec.alerts", [frozen], CONVERGE_MS);
      // It jumped past its log window (L = 2K) by state transfer instead of replaying.
      const transfers = logLines(cluster, frozen, "state transfer completed");
      expect(transfers.length).toBeGreaterThanOrEqual(1);
      expect((transfers.at(-1)?.seq as number) - start).toBeGreaterThan(2 * K);
      // The frozen replica needs no more memory than one that never stopped (it holds the
      // same state), plus what its peers could queue for it (one bounded queue each),
      // whatever the length of the stop.
      const peakOfOthers = Math.max(...others.map((id) => memoryOf(cluster.procs[id]?.pid ?? -1).peak));
      const after = memoryOf(proc.pid);
      expect(after.peak).toBeLessThan(peakOfOthers + (cluster.n - 1) * PEER_OUTBOUND_BYTES_MAX + MEMORY_SLACK_BYTES);
    } finally {
      admin.close();
      publisher.close();
      await cluster.stop();
    }
  }, 300_000);
});
