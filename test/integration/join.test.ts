// A replica joins a running group, with real processes. Four replicas (f = 1) take
// `admin add-replica --id 4` under a publish stream; the change takes effect at the next
// checkpoint as epoch 1 with n = 5. Replica 4 is then started with the same cluster file
// (which does not list it), its own key and a data directory: it learns the group from
// f+1 matching `members` answers, starts in epoch 1, fetches the state and catches up.
// Then replica 3 is stopped: a group of five needs four for a quorum, so the events
// acknowledged after that were ordered with replica 4's votes. Replica 4 restarted
// resumes its epoch from its data directory. The history checker finds
// no acknowledged event lost, none twice, one order. Last, rotate-replica-key for
// replica 2: once the epoch that rotates it starts, its old key can no longer connect
// (refused as rotated, counted), and replica 2 restarted with the new key takes part again.
// Then a cold restart: every replica stopped, replicas 4 and 2 start from their data
// directories (they stored the group they joined) while no replica of the file runs.
// Replica 4's own `$sys.replica.4` exists from the epoch that adds it (every replica
// answers for it with its key) and is retired by remove-replica: its subscribers are
// ended, DESTROYED, at every remaining replica.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Subprocess } from "bun";
import { join } from "node:path";
import { FitbClient } from "../../src/client/index.ts";
import { loadClientSetup } from "../../src/client/setup.ts";
import type { ReceivedBatch } from "../../src/client/subscription.ts";
import { formatPublicKey, loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, startClusterWithChannels } from "./client-util.ts";
import { jsonLogLines } from "../helpers/log-lines.ts";
import { killAndWait, lastDecided, logLines, publishStream, type Stream, trickle, historyProblems } from "./durability-history.ts";
import { BUN, freePortRange, logTail, MAIN, type TestCluster, waitListening } from "./harness.ts";

let cluster: TestCluster;
let publisher: FitbClient;
let A: string[];
const streams: Stream[] = [];
/** Replica 4, which the cluster file does not list: its process, log and metrics port. */
let joiner: Subprocess | null = null;
const joinerLog: string[] = [];
let joinerMetricsPort = 0;

const startedEpoch = (id: number, epoch: number): boolean => logLines(cluster, id, "epoch started").some((line) => line["epoch"] === epoch);

async function keygen(name: string): Promise<{ path: string; text: string }> {
  const path = join(cluster.dir, name);
  const run = await cluster.fitb(["keygen", "--out", path]);
  if (run.code !== 0) throw new Error(`keygen: ${run.stderr}`);
  return { path, text: formatPublicKey(loadSigningKeyFile(path).key.publicKey) };
}

/**
 * With replica 3 down, 20 publishes are all acknowledged (a quorum of five then needs every
 * other replica's votes); replica 3 comes back, and the whole history of every stream so
 * far is read back and checked: nothing lost, nothing twice, one order.
 */
async function orderedWithoutReplica3(prefix: string): Promise<void> {
  await killAndWait(cluster, 3);
  const q = await publishStream(publisher, "sec.alerts", prefix, 20, 1);
  streams.push(q);
  expect(q.acked.length).toBe(20);
  cluster.start(3);
  await waitListening(cluster, [3]);
  expect(await historyProblems(publisher, "sec.alerts", streams)).toEqual([]);
}

/** Runs `fitb replica ARGS` with its output collected into `log`. */
function spawnReplica(args: string[], log: string[]): Subprocess {
  const proc = Bun.spawn([BUN, MAIN, "replica", "--config", cluster.configPath, ...args], {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, FITB_LOG: process.env.FITB_LOG ?? "info" },
  });
  for (const output of [proc.stdout, proc.stderr]) {
    void (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of output as ReadableStream<Uint8Array>) log.push(decoder.decode(chunk));
    })();
  }
  return proc;
}

const tail = (log: readonly string[]) => log.join("").split("\n").slice(-30).join("\n");

async function joinerDecided(): Promise<number | null> {
  try {
    const res = await fetch(`http://127.0.0.1:${joinerMetricsPort}/status`);
    return ((await res.json()) as { lastDecided: number }).lastDecided;
  } catch {
    return null;
  }
}

beforeAll(async () => {
  cluster = await startClusterWithChannels({ replicas: 4 });
  publisher = clientFor(cluster, cluster.clientKey);
  A = ["--config", cluster.configPath, "--key", cluster.adminKey];
}, 120_000);

afterAll(async () => {
  publisher?.close();
  joiner?.kill("SIGKILL");
  await joiner?.exited;
  await cluster.stop();
});

describe("joining a running group", () => {
  test("a replica that is not in the cluster file and not a member refuses to start, saying why", async () => {
    const key = await keygen("replica-5.key");
    const run = await cluster.fitb(
      ["replica", "--config", cluster.configPath, "--id", "5", "--key", key.path, "--data", join(cluster.dir, "data-5")],
      {
        timeoutMs: 60_000,
      },
    );
    expect(run.code).not.toBe(0);
    expect(`${run.stdout}${run.stderr}`).toContain(
      "replica 5 is not a member of the group (epoch 0): add it first (fitb admin add-replica)",
    );
  }, 120_000);

  test("add-replica under a publish stream; replica 4 starts from the cluster file, catches up, and is in the quorums once replica 3 stops", async () => {
    const key = await keygen("replica-4.key");
    const [port, metricsPort] = [freePortRange(1), freePortRange(1)];
    joinerMetricsPort = metricsPort as number;
    let addOut = "";
    let afterSwitch = 0;
    const live = [0, 1, 2, 3];
    const stream = await publishStream(
      publisher,
      "sec.alerts",
      "a",
      (r) => r < 600 && (r < 20 || !live.every((id) => startedEpoch(id, 1)) || afterSwitch++ < 20),
      1,
      async (r) => {
        if (r !== 10) return;
        const run = await cluster.fitb([
          "admin",
          ...A,
          "add-replica",
          "--id",
          "4",
          "--host",
          "127.0.0.1",
          "--port",
          String(port),
          "--replica-key",
          key.text,
        ]);
        addOut = `${run.code} ${run.stdout}${run.stderr}`;
      },
    );
    streams.push(stream);
    expect(addOut).toContain("ok:");
    for (const id of live) {
      expect(logLines(cluster, id, "epoch started").find((line) => line["epoch"] === 1)).toMatchObject({
        n: 5,
        f: 1,
        members: [0, 1, 2, 3, 4],
      });
    }

    const startedAt = Date.now();
    joiner = spawnReplica(
      ["--id", "4", "--key", key.path, "--data", join(cluster.dir, "data-4"), "--metrics", `127.0.0.1:${metricsPort}`],
      joinerLog,
    );
    const joinerTail = () => tail(joinerLog);
    // Traffic while it catches up: the others' checkpoints tell it how far behind it is.
    const traffic = trickle(publisher, "sec.alerts", "t", 20);
    let target: number | null = null;
    try {
      await waitFor(
        "replica 4 to learn the group from the replicas",
        () => jsonLogLines(joinerLog, "learned the group from its replicas").length > 0,
        60_000,
        joinerTail,
      );
      await waitFor(
        "replica 4 to catch up with the others",
        async () => {
          const seqs: (number | null)[] = await lastDecided(publisher).catch(() => []);
          const others = seqs.filter((seq): seq is number => seq !== null);
          if (target === null && others.length > 0) target = Math.max(...others);
          const mine = await joinerDecided();
          return target !== null && mine !== null && mine >= target;
        },
        120_000,
        () => `target ${target}, replica 4 at ${String(joinerLog.length)} log chunks\n${joinerTail()}`,
      );
    } finally {
      await traffic.stop();
      streams.push(traffic.stream);
    }
    const caughtUpMs = Date.now() - startedAt;
    const learned = jsonLogLines(joinerLog, "learned the group from its replicas")[0];
    expect(learned).toMatchObject({ epoch: 1, n: 5, f: 1 });
    expect(jsonLogLines(joinerLog, "joining the group: starting in its current epoch, fetching the state")).toHaveLength(1);
    expect(jsonLogLines(joinerLog, "snapshot installed").length).toBeGreaterThan(0);
    console.log(`replica 4: started to caught up at seq ${target}: ${caughtUpMs} ms`);

    // Quorum of five is four: with replica 3 down, every decision needs replica 4.
    await killAndWait(cluster, 3);
    const before = (await joinerDecided()) ?? 0;
    const withJoiner = await publishStream(publisher, "sec.alerts", "q", 30, 1);
    streams.push(withJoiner);
    expect(withJoiner.acked.length).toBe(30);
    await waitFor("replica 4 to execute past the events ordered without replica 3", async () => ((await joinerDecided()) ?? 0) > before);
    // Its status page reports the group it orders with (epoch 1, n = 5), not the cluster file's (n = 4).
    const page = (await (await fetch(`http://127.0.0.1:${joinerMetricsPort}/status`)).json()) as Record<string, unknown>;
    expect(page).toMatchObject({ epoch: 1, n: 5, f: 1 });

    cluster.start(3);
    await waitListening(cluster, [3]);

    // Restarted, replica 4 resumes its epoch from its data directory and catches up again.
    joiner.kill("SIGKILL");
    await joiner.exited;
    joinerLog.length = 0;
    joiner = spawnReplica(
      ["--id", "4", "--key", key.path, "--data", join(cluster.dir, "data-4"), "--metrics", `127.0.0.1:${metricsPort}`],
      joinerLog,
    );
    const again = trickle(publisher, "sec.alerts", "u", 20);
    let target2: number | null = null;
    try {
      await waitFor(
        "replica 4 to catch up after its restart",
        async () => {
          const seqs: (number | null)[] = await lastDecided(publisher).catch(() => []);
          const others = seqs.filter((seq): seq is number => seq !== null);
          if (target2 === null && others.length > 0) target2 = Math.max(...others);
          const mine = await joinerDecided();
          return target2 !== null && mine !== null && mine >= target2;
        },
        120_000,
        () => `target ${target2}\n${tail(joinerLog)}`,
      );
    } finally {
      await again.stop();
      streams.push(again.stream);
    }
    // It had stored the epoch it joined: it starts from its data directory without asking the group.
    expect(jsonLogLines(joinerLog, "joined the group before: starting from the data directory")).toHaveLength(1);
    expect(jsonLogLines(joinerLog, "learned the group from its replicas")).toEqual([]);
    expect(jsonLogLines(joinerLog, "resuming the epoch from the data directory")[0]).toMatchObject({ epoch: 1 });

    expect(await historyProblems(publisher, "sec.alerts", streams)).toEqual([]);
  }, 300_000);

  test("the joined replica has its $sys.replica.4: the replicas of the file list it with replica 4's key", async () => {
    const info = await publisher.channelInfo("$sys.replica.4");
    expect(info).toMatchObject({ tag: "$sys.replica.4", fault: "crash", order: "none", public: true });
    const publishers = await publisher.publishers("$sys.replica.4");
    expect(publishers.map(formatPublicKey)).toEqual([
      formatPublicKey(loadSigningKeyFile(join(cluster.dir, "replica-4.key")).key.publicKey),
    ]);
    // $sys.events: every member reports, replica 4 among them.
    expect((await publisher.publishers("$sys.events")).map(formatPublicKey)).toContain(formatPublicKey(publishers[0] as Uint8Array));
  }, 60_000);

  test("rotate-replica-key: once its epoch starts the old key can no longer connect; replica 2 restarted with the new key is in the quorums", async () => {
    const key = await keygen("replica-2-new.key");
    let rotateOut = "";
    let afterSwitch = 0;
    const others = [0, 1];
    const stream = await publishStream(
      publisher,
      "sec.alerts",
      "k",
      (r) => r < 600 && (r < 5 || !others.every((id) => startedEpoch(id, 2)) || afterSwitch++ < 10),
      1,
      async (r) => {
        if (r !== 2) return;
        const run = await cluster.fitb(["admin", ...A, "rotate-replica-key", "--id", "2", "--replica-key", key.text]);
        rotateOut = `${run.code} ${run.stdout}${run.stderr}`;
      },
    );
    streams.push(stream);
    expect(rotateOut).toContain("ok:");
    // Replica 2 still runs with its old key: once epoch 2 runs, the others refuse it, saying why.
    await waitFor(
      "replica 0 to refuse replica 2's old key as rotated",
      () =>
        logLines(cluster, 0, "peer handshake refused: the key is no longer accepted").some((line) =>
          String(line["reason"]).includes("replica 2's key was rotated"),
        ),
      60_000,
      () => logTail(cluster, 0),
    );
    await killAndWait(cluster, 2);
    // Started by mistake with replica 1's key, it asks the group too, and is refused, naming whose key it holds.
    const wrongLog: string[] = [];
    const wrong = spawnReplica(["--id", "2", "--key", join(cluster.dir, "replica-1.key")], wrongLog);
    expect(await wrong.exited).not.toBe(0);
    await waitFor(
      "the refusal of replica 1's key for replica 2",
      () => tail(wrongLog).includes("which is replica 1's"),
      10_000,
      () => tail(wrongLog),
    );
    expect(tail(wrongLog)).toContain("start replica 2 with its own key, or, to give it this one, run rotate-replica-key first");
    // Replica 2 with its new key: the cluster file names the old one, so it asks the group.
    const newLog: string[] = [];
    const renewed = spawnReplica(["--id", "2", "--key", key.path], newLog);
    try {
      await waitFor(
        "replica 2 to learn its new key from the group",
        () => jsonLogLines(newLog, "learned the group from its replicas").length > 0,
        60_000,
        () => tail(newLog),
      );
      await waitFor(
        "replica 2 to link with its peers under the new key",
        () => jsonLogLines(newLog, "peer link up").length >= 3,
        60_000,
        () => tail(newLog),
      );
      // With replica 3 down, a quorum of five needs replica 2's votes under the new key.
      await orderedWithoutReplica3("n");
    } finally {
      renewed.kill("SIGKILL");
      await renewed.exited;
    }
  }, 300_000);

  test("cold restart: replicas 4 (added) and 2 (new key) start from their data directories before any replica of the cluster file runs", async () => {
    for (const id of [0, 1, 3]) await killAndWait(cluster, id);
    joiner?.kill("SIGKILL");
    await joiner?.exited;
    // Only the replicas the cluster file does not name with their keys run: nobody can answer them.
    joinerLog.length = 0;
    joiner = spawnReplica(
      [
        "--id",
        "4",
        "--key",
        join(cluster.dir, "replica-4.key"),
        "--data",
        join(cluster.dir, "data-4"),
        "--metrics",
        `127.0.0.1:${joinerMetricsPort}`,
      ],
      joinerLog,
    );
    const log2: string[] = [];
    const second = spawnReplica(["--id", "2", "--key", join(cluster.dir, "replica-2-new.key")], log2);
    try {
      for (const [name, log] of [
        ["replica 4", joinerLog],
        ["replica 2", log2],
      ] as const) {
        await waitFor(
          `${name} to start from its data directory`,
          () => jsonLogLines(log, "joined the group before: starting from the data directory").length > 0,
          60_000,
          () => tail(log),
        );
      }
      await waitFor(
        "replica 4 to resume epoch 2 from its data directory",
        () => jsonLogLines(joinerLog, "resuming the epoch from the data directory").some((line) => line["epoch"] === 2),
        60_000,
        () => tail(joinerLog),
      );
      for (const id of [0, 1, 3]) cluster.start(id);
      await waitListening(cluster, [0, 1, 3]);
      // Five replicas, quorum four: the events are ordered with replicas 2 and 4.
      await orderedWithoutReplica3("c");
    } finally {
      second.kill("SIGKILL");
      await second.exited;
    }
  }, 300_000);

  test("remove-replica retires $sys.replica.4: a subscriber of replica 4's health is ended, DESTROYED, and the channel is gone", async () => {
    // A client of the running group's file (exported): it connects to replica 4 too.
    const grown = join(cluster.dir, "grown.toml");
    const exported = await cluster.fitb(["cluster", "export", "--config", cluster.configPath, "--key", cluster.adminKey, "--out", grown]);
    expect(exported.code).toBe(0);
    const setup = loadClientSetup(grown, cluster.clientKey);
    const watcher = new FitbClient({ config: setup.config, key: setup.key, timeouts: { requestMs: 20_000 } });
    watcher.start();
    const batches: ReceivedBatch[] = [];
    try {
      const health = await watcher.subscribe("$sys.replica.4", {}, (batch) => {
        batches.push(batch);
      });
      await waitFor("replica 4's health report", () => batches.length >= 1, 30_000);
      const report = JSON.parse(new TextDecoder().decode(batches[0]?.events[0])) as Record<string, unknown>;
      expect(report).toMatchObject({ kind: "health", replica: 4 });
      let removeOut = "";
      let afterSwitch = 0;
      const live = [0, 1, 3];
      const stream = await publishStream(
        publisher,
        "sec.alerts",
        "r",
        (r) => r < 600 && (r < 5 || !live.every((id) => startedEpoch(id, 3)) || afterSwitch++ < 10),
        1,
        async (r) => {
          if (r !== 2) return;
          const run = await cluster.fitb(["admin", ...A, "remove-replica", "--id", "4"]);
          removeOut = `${run.code} ${run.stdout}${run.stderr}`;
        },
      );
      streams.push(stream);
      expect(removeOut).toContain("ok:");
      const ended = await health.done.then(
        () => "closed",
        (error: Error) => error.message,
      );
      expect(ended).toContain("replica 4 was removed from the group");
      expect(await publisher.channelInfo("$sys.replica.4").catch((error: Error) => error.message)).toContain(
        "no system channel $sys.replica.4",
      );
      await waitFor(
        "replica 4 to stop, removed",
        () => jsonLogLines(joinerLog, "this replica was removed from the group: it stops ordering and serving clients").length > 0,
        60_000,
        () => tail(joinerLog),
      );
    } finally {
      watcher.close();
    }
  }, 300_000);
});
