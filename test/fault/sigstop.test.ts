/**
 * A replica frozen with SIGSTOP while the others go through many checkpoints, then
 * resumed (BFT-SMaRt issue #27, core/ordering/PROTOCOL.md §9 bug 8): it must jump ahead by state
 * transfer rather than replay a backlog, and its memory must stay bounded by what its
 * peers could queue for it, not grow with how far behind it was.
 *
 * What a frozen replica finds when it resumes is what its peers queued for it: up to
 * PEER_OUTBOUND_BYTES_MAX each, plus what the kernel's socket buffers hold (a few MB,
 * depending on the machine). While the leader's queue still has room, every PRE_PREPARE
 * reaches it, and a resumed replica that has them all executes the backlog in order and
 * needs no state transfer, however many checkpoints the others made stable meanwhile:
 * correct, but not the case this test is about. So the test publishes until the leader
 * drops a message for the frozen replica (its queue is full: a positive signal that part
 * of the backlog is lost), and then until the others make stable a checkpoint past every
 * PRE_PREPARE that may have been lost. Nobody holds those decisions in memory any more,
 * so the frozen replica can only get past them by state transfer, or from the decisions
 * its peers read from their decided logs on disk (core/ordering/PROTOCOL.md §7, "An older
 * state"), whichever comes first; not from what was queued for it.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { loadPublicKeyFile } from "../../src/crypto/keys.ts";
import { PEER_OUTBOUND_BYTES_MAX } from "../../src/replica/peers.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, createChannels } from "../integration/client-util.ts";
import { catchUpUnderTraffic, logLines, publishStream, waitConverged } from "../integration/durability-history.ts";
import { freePortRange, logTail, metricValue, startCluster, type TestCluster } from "../integration/harness.ts";

/** Checkpoint interval of the ordering core (core/ordering/PROTOCOL.md §10). */
const K = 128;
/** Log window of the ordering core: the leader proposes no seq above its stable checkpoint + L. */
const L = 2 * K;
/** Events per request and bytes per event while the replica is frozen. */
const EVENTS_PER_REQUEST = 64;
const EVENT_BYTES = 1000;
/** Concurrent publish streams. */
const STREAMS = 4;
// Generous: catching up competes for 2 cores with 3 busy replicas; the test bounds, it does not time.
const CONVERGE_MS = 75_000;
/**
 * Bound on driving the others past the target checkpoint while one is frozen (a bound,
 * not a timing): some 70 MB of events through three replicas on a loaded machine.
 */
const DRIVE_MS = 240_000;
/** Slack for the runtime's own allocation noise (GC timing, buffers) on top of the queued bytes. */
const MEMORY_SLACK_BYTES = 64 * 1024 * 1024;

/** What the test reads on a replica's status page. */
interface Progress {
  readonly leader: number;
  readonly lastDecided: number;
  readonly stableCheckpoint: number;
  /** Peer messages it did not send: a link down or a peer's queue full (peer_send_dropped_total). */
  readonly dropped: number;
}

/** Replica `id`'s progress from its status page (null: no answer). */
async function progressOf(metricsBase: number, id: number): Promise<Progress | null> {
  const response = await fetch(`http://127.0.0.1:${metricsBase + id}/status`).catch(() => null);
  if (response?.ok !== true) return null;
  const status = (await response.json().catch(() => null)) as {
    leader?: unknown;
    lastDecided?: unknown;
    stableCheckpoint?: unknown;
    metrics?: { peer_send_dropped_total?: unknown };
  } | null;
  const leader = status?.leader;
  const lastDecided = status?.lastDecided;
  const stableCheckpoint = status?.stableCheckpoint;
  const dropped = status?.metrics?.peer_send_dropped_total;
  if (typeof leader !== "number" || typeof lastDecided !== "number" || typeof stableCheckpoint !== "number" || typeof dropped !== "number")
    return null;
  return { leader, lastDecided, stableCheckpoint, dropped };
}

/** The frozen replica's log lines about how it caught up, for a failure message. */
function catchUpLog(cluster: TestCluster, id: number): string {
  const about = /state transfer|snapshot|checkpoint|view|recovered/;
  const lines = (cluster.logs[id] ?? []).join("").split("\n");
  return lines.filter((line) => about.test(line)).join("\n") || logTail(cluster, id);
}

/** Resident and peak resident bytes of a process (Linux /proc). */
function memoryOf(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN) * 1024;
  return { rss: field("VmRSS"), peak: field("VmHWM") };
}

describe("a replica resumed after SIGSTOP", () => {
  test("catches up past many checkpoints (by state transfer or from its peers' decided logs), with bounded memory", async () => {
    // This test is about catching up, not about fsync: the lighter sync policy lets the
    // group reach its checkpoints sooner.
    // Each replica serves its status page, where the test reads its progress.
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
      // Peer messages each of the others had dropped before the freeze (links coming up).
      const before = await Promise.all(others.map((id) => progressOf(metricsBase, id)));
      if (before.some((p) => p === null)) throw new Error(`no status from replicas ${others.join(",")}: ${JSON.stringify(before)}`);
      proc.kill("SIGSTOP");
      // Publish until the leader dropped a message for the frozen replica, then until every
      // other replica reports `target` stable. Once a message was dropped, the leader's
      // queue for the frozen replica has no room for the next PRE_PREPARE (the frozen
      // replica reads nothing, and a PRE_PREPARE of this traffic, at least one 64 KB request,
      // is bigger than any vote or checkpoint): it is lost. Its seq is at most the leader's
      // stable checkpoint at the drop + L + 1 (the leader proposes nothing beyond its
      // window), so `target` is the first checkpoint past that and past the frozen
      // replica's own window (start + L). When the others made `target` stable, they hold
      // no decision at or below it, and the frozen replica can only get past it by state
      // transfer to it or a later checkpoint.
      const beyondWindow = (Math.floor((start + L) / K) + 1) * K;
      let target: number | null = null;
      let seen: (Progress | null)[] = [];
      let driving = true;
      const moved = waitFor(
        () =>
          `the leader to drop a message for replica ${frozen}, then replicas ${others.join(",")} to make checkpoint ${target ?? "(past the drop)"} stable`,
        async () => {
          seen = await Promise.all(others.map((id) => progressOf(metricsBase, id)));
          // The replica that reports itself leader: its links to the others are live, so a
          // drop it counted after the freeze is a message for the frozen replica.
          const at = others.findIndex((id, i) => seen[i]?.leader === id);
          const lead = seen[at];
          if (target === null && lead !== undefined && lead !== null && lead.dropped > (before[at] as Progress).dropped)
            target = Math.max(beyondWindow, lead.stableCheckpoint + L + K);
          const reached = target;
          return reached !== null && seen.every((p) => p !== null && p.stableCheckpoint >= reached);
        },
        DRIVE_MS,
        () => `start ${start}, progress of ${others.join(",")}: ${JSON.stringify(seen)}, before the freeze: ${JSON.stringify(before)}`,
      ).finally(() => {
        driving = false;
      });
      const frozenStreams = await Promise.all(
        Array.from({ length: STREAMS }, (_, s) =>
          publishStream(
            publisher,
            "sec.alerts",
            `frozen${s}`,
            () => driving,
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
      // It got past the lost PRE_PREPARE and its own log window by state transfer, or from
      // the decisions its peers read from their decided logs on disk.
      const transfers = logLines(cluster, frozen, "state transfer completed");
      const transferred = transfers.length > 0 && (transfers.at(-1)?.seq as number) - start > L;
      let fromLogs = 0;
      for (const id of others) fromLogs += await metricValue(metricsBase + id, "fitb_state_decided_served_from_log_total");
      const why = `start ${start}, target ${target}, ${fromLogs} decisions served from the others' logs; replica ${frozen}'s log on catching up:\n${catchUpLog(cluster, frozen)}`;
      expect(transferred || fromLogs > 0, why).toBe(true);
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
  }, 540_000);
});
