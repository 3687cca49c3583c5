/**
 * Catch-up benchmark (run on purpose: `npm run bench:catch-up -- [--events N] [--size B]
 * [--publishers P] [--interval MS] [--seconds S]`, not part of `npm test`). Four real
 * replicas on 127.0.0.1 take a state of N events (default 200,000) of B bytes (default
 * 200) on a byzantine/total channel whose retention keeps them all. Replica 3 is then
 * killed, its data directory deleted (a lost disk), and started again while P publishers
 * (default 4, streams of one client) each publish one event every MS milliseconds
 * (default 5) on the same channel, so the group's stable checkpoint moves on while
 * replica 3 fetches the state. The program prints how long replica 3 took to reach the
 * group's decided seq under that traffic, or that it did not within S seconds (default
 * 120); the events acknowledged meanwhile; and what its log says of its transfers:
 * started, abandoned, completed (seq, bytes, ms), kept past a newer target. With
 * --verbose (and whenever it did not catch up) it also prints replica 3's log lines
 * about transfers and snapshots.
 * Figures are printed, never judged; every wait is bounded; every process is killed at the end.
 */
import { rmSync } from "node:fs";
import { loadPublicKeyFile } from "../../src/crypto/keys.ts";
import { dataDirOf, killAndWait, lastDecided, logLines, trickle, waitConverged } from "../integration/durability-history.ts";
import { startCluster } from "../integration/harness.ts";
import { benchClient, fillChannel, fillLimits, positiveFlag } from "./state-fill.ts";

const USAGE = "usage: npm run bench:catch-up -- [--events N] [--size BYTES] [--publishers P] [--interval MS] [--seconds S] [--verbose]";

const flag = (name: string, fallback: number): number => positiveFlag(name, fallback, USAGE);

if (process.argv.includes("--help")) {
  console.log(USAGE);
  process.exit(0);
}
const EVENTS = flag("events", 200_000);
const EVENT_BYTES = flag("size", 200);
const PUBLISHERS = flag("publishers", 4);
const INTERVAL_MS = flag("interval", 5);
const SECONDS = flag("seconds", 120);
const LIMITS = fillLimits(EVENTS);
const TAG = "bench.catchup";
const LAGGING = 3;

const client = benchClient;

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
    await fillChannel(publisher, TAG, EVENTS, EVENT_BYTES, 4);
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
