/**
 * A replica's key rotated under traffic, as README "Changing a replica's key" says: a new
 * key made, `rotate-replica-key` sent while a stream publishes to sec.alerts, and once the
 * change took effect, the replica restarted with its new key (it asks its peers for the
 * group, its cluster file naming the old key).
 */
import { join } from "node:path";
import { expect } from "bun:test";
import type { FitbClient } from "../../src/client/index.ts";
import { formatPublicKey, loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { waitFor } from "../helpers/wait.ts";
import { killAndWait, logLines, publishStream, restartUnderTrickle, type Stream, waitCaughtUp } from "./durability-history.ts";
import { logTail, type TestCluster } from "./harness.ts";

/** Whether replica `id` logged that it started `epoch`. */
export function inEpoch(cluster: TestCluster, id: number, epoch: number): boolean {
  return logLines(cluster, id, "epoch started").some((line) => line["epoch"] === epoch);
}

/**
 * Rotates replica `id`'s key: publishes until the replicas in `until` started `epoch`
 * (bounded), then stops `id` and restarts it with its new key (set in `replicaArgs`, which the cluster
 * starts replicas with) and waits until it learned the group. Returns the stream, whose
 * acknowledged events belong to the history.
 */
export async function rotateUnderTraffic(
  cluster: TestCluster,
  publisher: FitbClient,
  options: {
    readonly id: number;
    readonly epoch: number;
    readonly until: readonly number[];
    readonly prefix: string;
    readonly replicaArgs: Map<number, string[]>;
    /** Runs once `id` is stopped and before it starts with its new key (to change its data directory, say). */
    readonly beforeRestart?: () => void | Promise<void>;
  },
): Promise<Stream> {
  const { id, epoch } = options;
  const path = join(cluster.dir, `replica-${id}-epoch-${epoch}.key`);
  const keygen = await cluster.fitb(["keygen", "--out", path]);
  expect(keygen.code).toBe(0);
  const key = formatPublicKey(loadSigningKeyFile(path).key.publicKey);
  let out = "";
  const stream = await publishStream(
    publisher,
    "sec.alerts",
    options.prefix,
    // Bounded: a group that never switched fails below instead of publishing forever.
    (r) => r < 600 && (r < 20 || !options.until.every((replica) => inEpoch(cluster, replica, epoch))),
    1,
    async (r) => {
      if (r !== 10) return;
      const admin = ["admin", "--config", cluster.configPath, "--key", cluster.adminKey];
      const run = await cluster.fitb([...admin, "rotate-replica-key", "--id", String(id), "--replica-key", key]);
      out = `${run.code} ${run.stdout}${run.stderr}`;
    },
  );
  expect(out).toContain("ok");
  for (const replica of options.until) expect(inEpoch(cluster, replica, epoch)).toBe(true);
  await killAndWait(cluster, id);
  await options.beforeRestart?.();
  options.replicaArgs.set(id, ["--key", path]);
  cluster.start(id);
  // Its new key is not the cluster file's: it asks its peers for the group.
  await waitFor(
    `replica ${id} to learn the group under its new key`,
    () => logLines(cluster, id, "learned the group from its replicas").length > 0,
    60_000,
    () => logTail(cluster, id),
  );
  return stream;
}

/**
 * Runs `fitb admin CHANGE` (a membership change: set-f, say) at request 10 of a stream
 * published to sec.alerts, and publishes until the replicas in `live` started `epoch`
 * (bounded), then 20 more. Returns the stream and the admin command's exit code and output.
 */
export async function changeUnderTraffic(
  cluster: TestCluster,
  publisher: FitbClient,
  options: { readonly live: readonly number[]; readonly epoch: number; readonly change: readonly string[]; readonly prefix: string },
): Promise<{ stream: Stream; out: string }> {
  const { live, epoch } = options;
  let out = "";
  let after = 0;
  const stream = await publishStream(
    publisher,
    "sec.alerts",
    options.prefix,
    // Bounded: a group that never switched fails below instead of publishing forever.
    (r) => r < 600 && (r < 20 || !live.every((id) => inEpoch(cluster, id, epoch)) || after++ < 20),
    1,
    async (r) => {
      if (r !== 10) return;
      const run = await cluster.fitb(["admin", "--config", cluster.configPath, "--key", cluster.adminKey, ...options.change]);
      out = `${run.code} ${run.stdout}${run.stderr}`;
    },
  );
  for (const id of live) expect(inEpoch(cluster, id, epoch)).toBe(true);
  return { stream, out };
}

/**
 * Starts replica `id` (down across one or more switches) under a trickle of publishes and
 * waits until it started `epoch` and caught up; the trickle joins `streams`.
 */
export async function rejoinUnderTrickle(
  cluster: TestCluster,
  publisher: FitbClient,
  options: { readonly id: number; readonly epoch: number; readonly prefix: string; readonly streams: Stream[] },
): Promise<void> {
  const { id, epoch } = options;
  await restartUnderTrickle(cluster, publisher, id, "sec.alerts", options.prefix, options.streams, async () => {
    await waitFor(
      `replica ${id} to reach epoch ${epoch}`,
      () => inEpoch(cluster, id, epoch),
      120_000,
      () => logTail(cluster, id),
    );
    await waitCaughtUp(publisher, id, 60_000);
  });
}

/** Stops replica `down` and publishes 20 events, each of which must be acknowledged: a quorum holds without it. */
export async function quorumWithout(cluster: TestCluster, publisher: FitbClient, down: number, prefix: string): Promise<Stream> {
  await killAndWait(cluster, down);
  const stream = await publishStream(publisher, "sec.alerts", prefix, 20, 1);
  expect(stream.failures).toBe(0);
  expect(stream.acked.length).toBe(20);
  return stream;
}
