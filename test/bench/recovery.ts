/**
 * Recovery benchmark (run on purpose: `bun test/bench/recovery.ts [EVENTS]`, not part of
 * `npm test`). Four real replicas on 127.0.0.1 take a state of EVENTS events (default
 * 1,000,000) on a byzantine/total channel; then:
 *
 *   restart    one replica is killed with SIGKILL and started again on its data
 *              directory: time to rebuild its state from disk (base snapshot + decided
 *              log replay) and to rejoin the group at the same decided seq;
 *   transfer   one replica's data directory is deleted and it is started again: the
 *              state comes from a peer by state transfer; time and throughput of the
 *              transfer, and time until it has caught up with the group.
 *
 * A light trickle of publishes runs during catch-up, as in production, so that a
 * replica learns how far behind it is from live traffic. Figures are printed, never
 * judged: benchmarks are programs, not timed tests (src/README.md §9, rule 12).
 */
import { rmSync } from "node:fs";
import { FitbClient } from "../../src/client/index.ts";
import { loadClientSetup } from "../../src/client/setup.ts";
import { loadPublicKeyFile } from "../../src/crypto/keys.ts";
import { dataDirOf, lastDecided, logLines, trickle, waitConverged } from "../integration/durability-history.ts";
import { waitFor } from "../helpers/wait.ts";
import { startCluster, type TestCluster } from "../integration/harness.ts";

const EVENTS = Number(process.argv[2] ?? 1_000_000);
/** Events per request (the cluster's default batch_events_max) and payload bytes per event. */
const EVENTS_PER_REQUEST = 1024;
const EVENT_BYTES = 48;
/** Concurrent publishers building the state. */
const PUBLISHERS = 4;
/** Retention large enough that none of the state is trimmed away. */
const RETENTION = { events_max: 4 * EVENTS, bytes_max: 1024 * 1024 * 1024 };
const CATCH_UP_MS_MAX = 300_000;
const TAG = "bench.recovery";

function client(cluster: TestCluster, key: string): FitbClient {
  const setup = loadClientSetup(cluster.configPath, key);
  const c = new FitbClient({ config: setup.config, key: setup.key, timeouts: { requestMs: 60_000 } });
  c.start();
  return c;
}

async function buildState(publisher: FitbClient): Promise<number> {
  const requests = Math.ceil(EVENTS / EVENTS_PER_REQUEST);
  const payload = (r: number, i: number): Uint8Array => new TextEncoder().encode(`r${r}e${i}`.padEnd(EVENT_BYTES, "."));
  let next = 0;
  let published = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: PUBLISHERS }, async () => {
      for (let r = next++; r < requests; r = next++) {
        await publisher.publish(
          TAG,
          Array.from({ length: EVENTS_PER_REQUEST }, (_, i) => payload(r, i)),
        );
        published += EVENTS_PER_REQUEST;
        if (r % 100 === 0) process.stderr.write(`\r  published ${published} events`);
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  process.stderr.write("\n");
  console.log(
    `state: ${published} events in ${requests} requests, built in ${seconds.toFixed(1)} s (${Math.round(published / seconds)} events/s)`,
  );
  return published;
}

/** Starts replica `id` and measures until it reports recovery and then matches the group. */
async function measureCatchUp(cluster: TestCluster, admin: FitbClient, publisher: FitbClient, id: number, what: string): Promise<void> {
  const others = [0, 1, 2, 3].filter((r) => r !== id);
  const traffic = trickle(publisher, TAG, `${what}-trickle`, 100);
  const recoveredBefore = logLines(cluster, id, "recovered from the data directory").length;
  const started = performance.now();
  cluster.start(id);
  await waitFor(
    "recovery from disk",
    () => logLines(cluster, id, "recovered from the data directory").length > recoveredBefore,
    CATCH_UP_MS_MAX,
  );
  const recoveredMs = performance.now() - started;
  await waitFor(
    "catch-up",
    async () => {
      const seqs = await lastDecided(admin).catch(() => []);
      const group = Math.max(...others.map((r) => seqs[r] ?? 0));
      return (seqs[id] ?? -1) >= group && group > 0;
    },
    CATCH_UP_MS_MAX,
  );
  const caughtUpMs = performance.now() - started;
  await traffic.stop();
  await waitConverged(admin, [0, 1, 2, 3], CATCH_UP_MS_MAX);
  const recovery = logLines(cluster, id, "recovered from the data directory").at(-1) ?? {};
  console.log(`\n${what}: replica ${id}`);
  console.log(
    `  rebuilt from disk in      ${recovery.ms} ms (base snapshot at ${recovery.baseSnapshot}, ${recovery.replayedDecisions} decisions replayed, ${recoveredMs.toFixed(0)} ms after spawn)`,
  );
  for (const t of logLines(cluster, id, "state transfer completed")) {
    console.log(
      `  state transfer            ${t.bytes} bytes in ${t.parts} parts, ${t.ms} ms = ${t.mbPerSecond} MB/s (checkpoint ${t.seq}, from replica ${String(t.sources)})`,
    );
  }
  console.log(`  caught up with the group  ${caughtUpMs.toFixed(0)} ms after spawn`);
}

async function main(): Promise<void> {
  console.log(`recovery benchmark: ${EVENTS} events of ${EVENT_BYTES} bytes, ${EVENTS_PER_REQUEST} per request, 4 replicas on 127.0.0.1`);
  const cluster = await startCluster({ limits: RETENTION });
  const admin = client(cluster, cluster.adminKey);
  const publisher = client(cluster, cluster.clientKey);
  try {
    await admin.admin({ t: "create-channel", tag: TAG, fault: "byzantine", order: "total", priority: "normal", public: true });
    await admin.admin({ t: "register", tag: TAG, role: "publisher", key: loadPublicKeyFile(`${cluster.clientKey}.pub`) });
    await buildState(publisher);
    const decided = await waitConverged(admin, [0, 1, 2, 3], CATCH_UP_MS_MAX);
    const leader = (await admin.status()).leader as number;
    const victim = (leader + 1) % cluster.n;
    console.log(`group at decided seq ${decided}, leader ${leader}`);

    const killed = cluster.procs[victim];
    cluster.kill(victim);
    await killed?.exited;
    await measureCatchUp(cluster, admin, publisher, victim, "restart after kill -9");

    const again = cluster.procs[victim];
    cluster.kill(victim);
    await again?.exited;
    rmSync(dataDirOf(cluster, victim), { recursive: true, force: true });
    await measureCatchUp(cluster, admin, publisher, victim, "wiped data directory (state transfer)");
  } finally {
    admin.close();
    publisher.close();
    await cluster.stop();
  }
}

await main();
