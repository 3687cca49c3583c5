/**
 * Catch-up benchmark (run on purpose: `npm run bench:catch-up -- [--events N] [--size B]
 * [--publishers P] [--interval MS] [--seconds S]`, not part of `npm test`). Four real
 * replicas on 127.0.0.1 take a state of N events (default 200,000) of B bytes (default
 * 200) on a byzantine/total channel whose retention keeps them all. Replica 3 is then
 * killed, its data directory deleted (a lost disk), and started again while P publishers
 * (default 4, streams of one client) each publish one event every MS milliseconds (default 5) on the same
 * channel, so the group's stable checkpoint moves on while replica 3 fetches the state.
 * The program prints how long replica 3 took to reach the group's decided seq under that
 * traffic, or that it did not within S seconds (default 120), and what its log says of
 * its transfers: started, abandoned for a newer target, completed, and the decisions its
 * peers sent it from their decided logs (`fitb_state_decided_served_from_log_total`).
 * Figures are printed, never judged; every wait is bounded; every process is killed at the end.
 */
import { rmSync } from "node:fs";
import { FitbClient } from "../../src/client/index.ts";
import { loadClientSetup } from "../../src/client/setup.ts";
import { loadPublicKeyFile } from "../../src/crypto/keys.ts";
import { dataDirOf, killAndWait, lastDecided, logLines, trickle, waitConverged } from "../integration/durability-history.ts";
import { startCluster, type TestCluster } from "../integration/harness.ts";

const USAGE = "usage: npm run bench:catch-up -- [--events N] [--size BYTES] [--publishers P] [--interval MS] [--seconds S]";

function flag(name: string, fallback: number): number {
  const at = process.argv.indexOf(`--${name}`);
  if (at < 0) return fallback;
  const value = Number(process.argv[at + 1]);
  if (!Number.isInteger(value) || value <= 0) {
    console.error(`--${name} takes a positive integer\n${USAGE}`);
    process.exit(2);
  }
  return value;
}

if (process.argv.includes("--help")) {
  console.log(USAGE);
  process.exit(0);
}
const EVENTS = flag("events", 200_000);
const EVENT_BYTES = flag("size", 200);
const PUBLISHERS = flag("publishers", 4);
const INTERVAL_MS = flag("interval", 5);
const SECONDS = flag("seconds", 120);
/** Events per request while filling: the cluster's default batch_events_max. */
const EVENTS_PER_REQUEST = 1024;
const LIMITS = {
  events_max: Math.max(1_000_000, 2 * EVENTS),
  bytes_max: 1024 * 1024 * 1024,
  client_events_per_second_max: 10_000_000,
  client_burst_events_max: 100_000_000,
};
const TAG = "bench.catchup";
const LAGGING = 3;

function client(cluster: TestCluster, key: string): FitbClient {
  const setup = loadClientSetup(cluster.configPath, key);
  const c = new FitbClient({ config: setup.config, key: setup.key, timeouts: { requestMs: 60_000 } });
  c.start();
  return c;
}

async function fill(publisher: FitbClient): Promise<void> {
  const requests = Math.ceil(EVENTS / EVENTS_PER_REQUEST);
  const payload = (r: number, i: number): Uint8Array => new TextEncoder().encode(`r${r}e${i} `.padEnd(EVENT_BYTES, "."));
  let next = 0;
  let published = 0;
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      for (let r = next++; r < requests; r = next++) {
        const count = Math.min(EVENTS_PER_REQUEST, EVENTS - r * EVENTS_PER_REQUEST);
        await publisher.publish(
          TAG,
          Array.from({ length: count }, (_, i) => payload(r, i)),
        );
        published += count;
        if (r % 50 === 0) process.stderr.write(`\r  published ${published} events`);
      }
    }),
  );
  process.stderr.write("\n");
}

async function main(): Promise<void> {
  console.log(
    `catch-up benchmark: ${EVENTS} events of ${EVENT_BYTES} bytes; replica ${LAGGING} wiped and started while ${PUBLISHERS} publishers publish an event every ${INTERVAL_MS} ms each`,
  );
  const cluster = await startCluster({ limits: LIMITS });
  const admin = client(cluster, cluster.adminKey);
  // One client: a key's requests share one sequence space, so concurrent streams go through one client.
  const publisher = client(cluster, cluster.clientKey);
  const traffic: ReturnType<typeof trickle>[] = [];
  try {
    await admin.admin({ t: "create-channel", tag: TAG, fault: "byzantine", order: "total", priority: "normal", public: true });
    await admin.admin({ t: "register", tag: TAG, role: "publisher", key: loadPublicKeyFile(`${cluster.clientKey}.pub`) });
    await fill(publisher);
    const decided = await waitConverged(admin, [0, 1, 2, 3], 600_000);
    console.log(`state built: group at decided seq ${decided}`);
    await killAndWait(cluster, LAGGING);
    rmSync(dataDirOf(cluster, LAGGING), { recursive: true, force: true });
    for (let i = 0; i < PUBLISHERS; i++) traffic.push(trickle(publisher, TAG, `t${i}`, INTERVAL_MS));
    const before = ((await lastDecided(admin)).filter((s): s is number => s !== null) as number[]).reduce((a, b) => Math.max(a, b), 0);
    const t0 = Date.now();
    cluster.start(LAGGING);
    let caughtUpMs: number | null = null;
    let last = "";
    while (Date.now() - t0 < SECONDS * 1000) {
      const seqs = await lastDecided(admin).catch(() => [] as (number | null)[]);
      const others = seqs.filter((s, id): s is number => id !== LAGGING && s !== null);
      const mine = seqs[LAGGING] ?? null;
      last = `decided seqs ${JSON.stringify(seqs)}`;
      if (others.length > 0 && mine !== null && mine >= Math.min(...others)) {
        caughtUpMs = Date.now() - t0;
        break;
      }
      await Bun.sleep(250);
    }
    const seqs = await lastDecided(admin).catch(() => [] as (number | null)[]);
    const count = (msg: string): number => logLines(cluster, LAGGING, msg).length;
    const acked = traffic.reduce((sum, t) => sum + t.stream.acked.length, 0);
    const seconds = (Date.now() - t0) / 1000;
    console.log(
      caughtUpMs === null
        ? `replica ${LAGGING} did NOT catch up within ${SECONDS} s (${last})`
        : `replica ${LAGGING} caught up in ${(caughtUpMs / 1000).toFixed(1)} s`,
    );
    console.log(
      `traffic: ${acked} events acknowledged in ${seconds.toFixed(1)} s; decided seq ${before} at the start, now ${JSON.stringify(seqs)}`,
    );
    const completed = logLines(cluster, LAGGING, "state transfer completed");
    console.log(
      `replica ${LAGGING}'s transfers: ${count("state transfer started")} started, ${count("state transfer abandoned")} abandoned, ${completed.length} completed ${JSON.stringify(completed.map((l) => ({ seq: l["seq"], bytes: l["bytes"], ms: l["ms"] })))}, ${count("state transfer goes on at its target while its parts come; a newer one waits")} kept past a newer target`,
    );
    if (caughtUpMs === null || process.argv.includes("--verbose")) {
      const lines = (cluster.logs[LAGGING] ?? [])
        .join("")
        .split("\n")
        .filter((l) => /transfer|fetched|snapshot/.test(l));
      console.log(`replica ${LAGGING}'s transfer log lines (last 80 of ${lines.length}):\n${lines.slice(-80).join("\n")}`);
    }
  } finally {
    for (const t of traffic) await t.stop();
    for (const c of [admin, publisher]) c.close();
    await cluster.stop();
  }
}

await main();
