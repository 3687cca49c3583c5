/**
 * Join benchmark (run on purpose: `npm run bench:join -- [--events N] [--size B]`, not part
 * of `npm test`). Four real replicas on 127.0.0.1 take a state of N events (default
 * 1,000,000) of B bytes (default 200) on a byzantine/total channel whose retention keeps
 * them all; then `fitb admin add-replica --id 4`, replica 4 is started (the cluster file
 * does not list it), and the program times, from the moment add-replica is issued:
 *
 *   add-replica acked     the change is ordered (the command's ok);
 *   epoch 1 started       every old replica switched to n = 5 at the next checkpoint;
 *   learned the group     replica 4 had f+1 matching `members` answers;
 *   state transfer        started / completed (bytes, parts, MB/s from its log);
 *   snapshot installed    the state is its own;
 *   caught up             its decided seq reached the group's;
 *   first vote counted    a non-leader old replica is stopped: with five members a quorum
 *                         is four, so the next acknowledged publish was ordered with
 *                         replica 4's votes; time from that stop to the ack.
 *
 * It also prints each replica's peak RSS (VmHWM) so a memory-hungry transfer shows. A
 * trickle of publishes runs from add-replica on, as in production: the change takes
 * effect at a checkpoint boundary, and the joiner learns how far behind it is from live
 * checkpoints. Figures are printed, never judged (src/README.md §9, rule 12). Every wait is
 * bounded; every process is killed at the end.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Subprocess } from "bun";
import type { FitbClient } from "../../src/client/index.ts";
import { formatPublicKey, loadPublicKeyFile, loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { jsonLogLines } from "../helpers/log-lines.ts";
import { waitFor } from "../helpers/wait.ts";
import { lastDecided, logLines, trickle, waitConverged } from "../integration/durability-history.ts";
import { BUN, freePortRange, MAIN, startCluster, type TestCluster } from "../integration/harness.ts";
import { benchClient, EVENTS_PER_REQUEST, fillChannel, fillLimits, positiveFlag } from "./state-fill.ts";

const USAGE = "usage: npm run bench:join -- [--events N] [--size BYTES] [--publishers P] [--joiner-log FILE]";

const flag = (name: string, fallback: number): number => positiveFlag(name, fallback, USAGE);

if (process.argv.includes("--help")) {
  console.log(USAGE);
  process.exit(0);
}
const EVENTS = flag("events", 1_000_000);
const EVENT_BYTES = flag("size", 200);
const PUBLISHERS = flag("publishers", 4);
/** Where to write replica 4's whole log (and replica i's to FILE.i), for a closer look (--joiner-log FILE). */
const JOINER_LOG_FILE = process.argv.includes("--joiner-log") ? process.argv[process.argv.indexOf("--joiner-log") + 1] : undefined;
const LIMITS = fillLimits(EVENTS);
const STEP_MS_MAX = 600_000;
const TAG = "bench.join";
const JOINER = 4;

const client = benchClient;

async function fill(publisher: FitbClient): Promise<void> {
  await fillChannel(publisher, TAG, EVENTS, EVENT_BYTES, PUBLISHERS);
}

/** Peak resident memory of a process (VmHWM), in MiB, or null once it is gone. */
function peakRssMib(pid: number | undefined): number | null {
  if (pid === undefined) return null;
  try {
    const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return match === null ? null : Math.round(Number(match[1]) / 1024);
  } catch {
    return null;
  }
}

function spawnJoiner(cluster: TestCluster, args: string[], log: string[]): Subprocess {
  const proc = Bun.spawn([BUN, MAIN, "replica", "--config", cluster.configPath, ...args], {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, FITB_LOG: process.env.FITB_LOG ?? "info" },
  });
  for (const output of [proc.stdout, proc.stderr]) {
    void (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of output as ReadableStream<Uint8Array>) {
        log.push(decoder.decode(chunk));
        if (log.length > 10_000) log.splice(0, 5_000);
      }
    })();
  }
  return proc;
}

const tail = (log: readonly string[]): string => log.join("").split("\n").slice(-20).join("\n");
const logTime = (line: Record<string, unknown> | undefined): number | null =>
  line === undefined || typeof line["ts"] !== "string" ? null : Date.parse(line["ts"]);

async function main(): Promise<void> {
  console.log(
    `join benchmark: ${EVENTS} events of ${EVENT_BYTES} bytes, ${EVENTS_PER_REQUEST} per request, 4 replicas on 127.0.0.1, then replica ${JOINER} added`,
  );
  const cluster = await startCluster({ limits: LIMITS });
  const admin = client(cluster, cluster.adminKey);
  const publisher = client(cluster, cluster.clientKey);
  let joiner: Subprocess | null = null;
  const joinerLog: string[] = [];
  const step = (what: string): void => {
    process.stderr.write(`  ${what}\n`);
  };
  try {
    await admin.admin({ t: "create-channel", tag: TAG, fault: "byzantine", order: "total", priority: "normal", public: true });
    await admin.admin({ t: "register", tag: TAG, role: "publisher", key: loadPublicKeyFile(`${cluster.clientKey}.pub`) });
    await fill(publisher);
    const decided = await waitConverged(admin, [0, 1, 2, 3], STEP_MS_MAX);
    console.log(`group at decided seq ${decided}`);

    const keyPath = join(cluster.dir, `replica-${JOINER}.key`);
    const keygen = await cluster.fitb(["keygen", "--out", keyPath]);
    if (keygen.code !== 0) throw new Error(`keygen: ${keygen.stderr}`);
    const keyText = formatPublicKey(loadSigningKeyFile(keyPath).key.publicKey);
    const [port, metricsPort] = [freePortRange(1), freePortRange(1)];

    const peaksBefore = [0, 1, 2, 3].map((id) => peakRssMib(cluster.procs[id]?.pid));
    // The change takes effect at the next checkpoint: live traffic gets the group there.
    const traffic = trickle(publisher, TAG, "join-trickle", 50);
    const t0 = Date.now();
    step("add-replica");
    const add = await cluster.fitb(
      [
        "admin",
        "--config",
        cluster.configPath,
        "--key",
        cluster.adminKey,
        "add-replica",
        "--id",
        String(JOINER),
        "--host",
        "127.0.0.1",
        "--port",
        String(port),
        "--replica-key",
        keyText,
      ],
      { timeoutMs: 120_000 },
    );
    if (add.code !== 0) throw new Error(`add-replica: ${add.stdout}${add.stderr}`);
    const addedMs = Date.now() - t0;

    step("start replica 4");
    const spawnedMs = Date.now() - t0;
    joiner = spawnJoiner(
      cluster,
      ["--id", String(JOINER), "--key", keyPath, "--data", join(cluster.dir, `data-${JOINER}`), "--metrics", `127.0.0.1:${metricsPort}`],
      joinerLog,
    );
    const joinerDecided = async (): Promise<number | null> => {
      try {
        const res = await fetch(`http://127.0.0.1:${metricsPort}/status`);
        return ((await res.json()) as { lastDecided: number }).lastDecided;
      } catch {
        return null;
      }
    };
    const peakJoiner = { mib: 0 };
    const sample = setInterval(() => {
      peakJoiner.mib = Math.max(peakJoiner.mib, peakRssMib(joiner?.pid) ?? 0);
    }, 200);

    await waitFor(
      "epoch 1 to start at the four old replicas",
      () => [0, 1, 2, 3].every((id) => logLines(cluster, id, "epoch started").some((line) => line["epoch"] === 1)),
      STEP_MS_MAX,
    );
    const epochMs =
      Math.max(...[0, 1, 2, 3].map((id) => logTime(logLines(cluster, id, "epoch started").find((l) => l["epoch"] === 1)) ?? 0)) - t0;
    step("epoch 1 started");
    await waitFor(
      "replica 4 to learn the group",
      () => jsonLogLines(joinerLog, "learned the group from its replicas").length > 0,
      STEP_MS_MAX,
      () => tail(joinerLog),
    );
    step("learned the group; state transfer");
    await waitFor(
      "replica 4 to install the snapshot",
      () => jsonLogLines(joinerLog, "snapshot installed").length > 0,
      STEP_MS_MAX,
      () => tail(joinerLog),
    );
    step("snapshot installed; catching up");
    let target: number | null = null;
    await waitFor(
      "replica 4 to catch up with the group",
      async () => {
        const seqs = (await lastDecided(admin).catch(() => [])).slice(0, 4);
        const others = seqs.filter((seq): seq is number => seq !== null);
        if (target === null && others.length > 0) target = Math.max(...others);
        const mine = await joinerDecided();
        return target !== null && mine !== null && mine >= target;
      },
      STEP_MS_MAX,
      () => `target ${target}\n${tail(joinerLog)}`,
    );
    const caughtUpMs = Date.now() - t0;
    await traffic.stop();
    step("caught up; stopping a non-leader old replica");

    const peaks = [0, 1, 2, 3].map((id) => peakRssMib(cluster.procs[id]?.pid));
    const leader = (await admin.status()).leader as number;
    const victim = [1, 2, 3, 0].find((id) => id !== leader) as number;
    const stopped = cluster.procs[victim];
    const stopAt = Date.now();
    cluster.kill(victim);
    await stopped?.exited;
    // With five members and one stopped, the quorum of four needs replica 4.
    const ack = await publisher.publish(TAG, [new TextEncoder().encode("needs replica 4".padEnd(EVENT_BYTES, "."))]);
    const ackedAt = Date.now();
    const voteMs = ackedAt - t0;
    clearInterval(sample);
    peakJoiner.mib = Math.max(peakJoiner.mib, peakRssMib(joiner.pid) ?? 0);

    const learned = jsonLogLines(joinerLog, "learned the group from its replicas")[0];
    const tStarted = jsonLogLines(joinerLog, "state transfer started")[0];
    const tDone = jsonLogLines(joinerLog, "state transfer completed").at(-1);
    const installed = jsonLogLines(joinerLog, "snapshot installed")[0];
    const at = (line: Record<string, unknown> | undefined): string => {
      const t = logTime(line);
      return t === null ? "-" : `${((t - t0) / 1000).toFixed(1)} s`;
    };
    console.log(`\nreplica ${JOINER} joining a state of ${EVENTS} events (from add-replica issued, wall clock):`);
    const rows: [string, string, string][] = [
      ["add-replica acknowledged", `${(addedMs / 1000).toFixed(1)} s`, ""],
      ["epoch 1 started (all 4 old replicas)", `${(epochMs / 1000).toFixed(1)} s`, ""],
      ["replica 4 spawned", `${(spawnedMs / 1000).toFixed(1)} s`, ""],
      [
        "learned the group (f+1 members answers)",
        at(learned),
        `epoch ${learned?.["epoch"]}, n ${learned?.["n"]}, from seq ${learned?.["from"]}`,
      ],
      ["state transfer started", at(tStarted), `checkpoint ${tStarted?.["seq"]}`],
      [
        "state transfer completed",
        at(tDone),
        `${tDone?.["bytes"]} bytes in ${tDone?.["parts"]} parts, ${tDone?.["ms"]} ms = ${tDone?.["mbPerSecond"]} MB/s from ${String(tDone?.["sources"])}`,
      ],
      ["snapshot installed", at(installed), `seq ${installed?.["seq"]}`],
      ["caught up with the group", `${(caughtUpMs / 1000).toFixed(1)} s`, `seq ${target}`],
      [
        "first ack needing replica 4's vote",
        `${(voteMs / 1000).toFixed(1)} s`,
        `replica ${victim} stopped, channel seq ${ack.channelSeq} acked ${ackedAt - stopAt} ms after (replies from ${ack.replicas.join(",")})`,
      ],
    ];
    const width = Math.max(...rows.map((r) => r[0].length));
    for (const [what, when, detail] of rows) console.log(`  ${what.padEnd(width)}  ${when.padStart(8)}  ${detail}`);
    // Anything that slowed the transfer: a source that could not serve, was dropped or timed out.
    for (const msg of [
      "state transfer could not ask a source: no link to it; asking the next",
      "state transfer source cannot serve",
      "state transfer dropped a source",
      "state transfer source timed out: asking the next",
      "state transfer abandoned",
    ]) {
      for (const line of jsonLogLines(joinerLog, msg)) console.log(`  replica ${JOINER} at ${at(line)}: ${msg} ${JSON.stringify(line)}`);
    }
    const mib = (list: (number | null)[]): string => list.map((m) => `${m ?? "?"} MiB`).join(", ");
    console.log(
      `\npeak RSS: replica ${JOINER} ${peakJoiner.mib} MiB; replicas 0-3 ${mib(peaksBefore)} before add-replica, ${mib(peaks)} once it caught up`,
    );
  } finally {
    if (JOINER_LOG_FILE !== undefined) {
      writeFileSync(JOINER_LOG_FILE, joinerLog.join(""));
      for (const id of [0, 1, 2, 3]) writeFileSync(`${JOINER_LOG_FILE}.${id}`, (cluster.logs[id] ?? []).join(""));
    }
    admin.close();
    publisher.close();
    joiner?.kill("SIGKILL");
    await joiner?.exited;
    await cluster.stop();
  }
}

await main();
