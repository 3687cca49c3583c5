/**
 * A replica frozen with SIGSTOP while the others go through many checkpoints, then
 * resumed (BFT-SMaRt issue #27, ORDERING.md §9 bug 8): it must jump ahead by state
 * transfer rather than replay a backlog, and its memory must stay bounded by what its
 * peers could queue for it, not grow with how far behind it was.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { loadPublicKeyFile } from "../../src/crypto/keys.ts";
import { PEER_OUTBOUND_BYTES_MAX } from "../../src/replica/peers.ts";
import { clientFor, createChannels } from "../integration/client-util.ts";
import { catchUpUnderTraffic, logLines, publishStream, waitConverged } from "../integration/durability-history.ts";
import { startCluster } from "../integration/harness.ts";

/** Checkpoint interval of the ordering core (ORDERING.md §10). */
const K = 128;
/** Events per request and bytes per event while the replica is frozen. */
const EVENTS_PER_REQUEST = 64;
const EVENT_BYTES = 1000;
/**
 * Requests published while the replica is frozen: more bytes than a peer may queue for
 * it (PEER_OUTBOUND_BYTES_MAX), so the backlog cannot simply be replayed, and so many
 * decisions that the group passes several checkpoints.
 */
const REQUESTS = Math.ceil((1.25 * PEER_OUTBOUND_BYTES_MAX) / (EVENTS_PER_REQUEST * EVENT_BYTES));
/** Concurrent publish streams carrying them. */
const STREAMS = 4;
// Generous: catching up competes for 2 cores with 3 busy replicas; the test bounds, it does not time.
const CONVERGE_MS = 75_000;
/** Slack for the runtime's own allocation noise (GC timing, buffers) on top of the queued bytes. */
const MEMORY_SLACK_BYTES = 64 * 1024 * 1024;

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
    const cluster = await startCluster({ replicaArgs: () => ["--sync", "normal"] });
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
      proc.kill("SIGSTOP");
      const frozenStreams = await Promise.all(
        Array.from({ length: STREAMS }, (_, s) =>
          publishStream(publisher, "sec.alerts", `frozen${s}`, Math.ceil(REQUESTS / STREAMS), EVENTS_PER_REQUEST, () => undefined, EVENT_BYTES),
        ),
      );
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
  }, 180_000);
});
