/**
 * `fitb admin status` against real processes (issue 15, item 2): with no replica running
 * it prints every row with up false and returns without waiting out the connect timeout;
 * with one replica stopped it exits 1 (degraded) and names it in the table and the JSON.
 * A replica started with a cluster file whose [limits] differ answers clients but is
 * refused by its peers at the handshake: status calls it isolated (exit 1), and top too.
 * Run with a cluster file that lists another key for one replica, status follows the
 * group (which has the right key) and warns that the file differs, naming the replica,
 * both keys and `fitb cluster export`, whose file then matches.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseClusterConfig } from "../../src/config/cluster.ts";
import { formatPublicKey, SigningKey } from "../../src/crypto/keys.ts";
import { waitFor } from "../helpers/wait.ts";
import { BUN, MAIN, startCluster, type TestCluster } from "./harness.ts";

let cluster: TestCluster;
/** A replica started from a cluster file of its own (`path`), and which. */
let drifted: { id: number; path: string } | null = null;

interface ListedReplica {
  host: string;
  port: number;
  key: string;
}

interface JsonReport {
  health: string;
  exit_code: number;
  leader: number | null;
  problems: string[];
  warnings: string[];
  cluster_file: {
    matches_group: boolean;
    group_epoch: number;
    f: { file: number; group: number };
    replicas: { id: number; file: ListedReplica | null; group: ListedReplica | null }[];
  } | null;
  replicas: { id: number; up: boolean; reason?: string; flags: string[]; peers_up?: number[] | null; peers_unreached?: number[] }[];
}

function status(json: boolean, configPath = cluster.configPath): Promise<{ code: number; stdout: string; stderr: string }> {
  const args = ["admin", "--config", configPath, "--key", cluster.adminKey, "status", "--connect-timeout", "30000"];
  return cluster.fitb(json ? [...args, "--json"] : args, { timeoutMs: 60_000 });
}

beforeAll(async () => {
  cluster = await startCluster({ start: false, replicaConfig: (id) => (drifted?.id === id ? drifted.path : undefined) });
});

afterAll(async () => {
  await cluster.stop();
});

describe("fitb admin status", () => {
  test("no replica running: every row up false with its reason, in the table and the JSON, fast, exit 2", async () => {
    const startedMs = Date.now();
    const table = await status(false);
    // Every connection is refused at once: far less than the 30 s connect timeout.
    expect(Date.now() - startedMs).toBeLessThan(15_000);
    expect(table.code).toBe(2);
    const json = await status(true);
    expect(json.code).toBe(2);
    const report = JSON.parse(json.stdout) as JsonReport;
    expect(report.health).toBe("no-quorum");
    expect(report.replicas.map((r) => r.up)).toEqual([false, false, false, false]);
    for (const replica of report.replicas) {
      expect(replica.reason).toBeTruthy();
      const row = table.stdout.split("\n").find((line) => line.startsWith(`${replica.id} `)) as string;
      expect(row).toContain(replica.reason as string);
    }
    expect(table.stdout).toContain("NO QUORUM: 0 of 4 replicas answered, 3 are needed");
  }, 90_000);

  test("all up: exit 0 when nothing is wrong; one backup stopped: exit 1, named down in both forms", async () => {
    for (let id = 0; id < cluster.n; id++) cluster.start(id);
    let report: JsonReport | null = null;
    let code = -1;
    // Up, and linked to each other: a replica that answers while its peer links are still
    // being made reaches too few peers, and status says NO QUORUM (exit 2), rightly.
    await waitFor(
      "status to see all four replicas up and linked",
      async () => {
        const result = await status(true);
        report = result.stdout === "" ? null : (JSON.parse(result.stdout) as JsonReport);
        code = result.code;
        return report?.replicas.every((r) => r.up) === true && report.health !== "no-quorum";
      },
      60_000,
      () => JSON.stringify(report),
    );
    // Usually "ok"; on a loaded machine a replica may have suspected the leader alone and
    // sit in another view, which is "degraded" and named: the exit code follows the problems.
    const seen = report as unknown as JsonReport;
    expect(code).toBe(seen.problems.length === 0 ? 0 : 1);
    expect(seen.health).toBe(seen.problems.length === 0 ? "ok" : "degraded");
    const leader = (report as unknown as JsonReport).leader as number;
    const victim = (leader + 1) % cluster.n;
    const proc = cluster.procs[victim];
    cluster.kill(victim);
    await proc?.exited;
    const json = await status(true);
    expect(json.code).toBe(1);
    const degraded = JSON.parse(json.stdout) as JsonReport;
    expect(degraded.health).toBe("degraded");
    const row = degraded.replicas[victim] as JsonReport["replicas"][number];
    expect(row.up).toBe(false);
    expect(degraded.problems).toContain(`replica ${victim} is down: ${row.reason}`);
    const table = await status(false);
    expect(table.code).toBe(1);
    expect(table.stdout).toContain(`replica ${victim} is down:`);
    cluster.start(victim);
  }, 120_000);

  test("fitb top: a replica that keeps its session but answers nothing (SIGSTOP) shows without an answer after a short grace, not at the query timeout", async () => {
    await waitFor(
      "status to see all four replicas up again",
      async () => {
        const result = await status(true);
        return result.stdout !== "" && (JSON.parse(result.stdout) as JsonReport).replicas.every((r) => r.up);
      },
      60_000,
    );
    const stopped = cluster.n - 1;
    // The query timeout is far above what the test waits: only the grace can end a refresh.
    const args = [
      "top",
      "--config",
      cluster.configPath,
      "--key",
      cluster.adminKey,
      "--interval",
      "0.5",
      "--count",
      "4",
      "--timeout",
      "600000",
    ];
    const top = Bun.spawn([BUN, MAIN, ...args], { stdout: "pipe", stderr: "pipe" });
    const output: string[] = [];
    void (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of top.stdout as ReadableStream<Uint8Array>) output.push(decoder.decode(chunk));
    })();
    const victim = cluster.procs[stopped];
    try {
      // Its sessions are up once the first block is out: then the replica stops answering.
      await waitFor("top's first block", () => output.join("").includes("LATENCY"), 60_000);
      victim?.kill("SIGSTOP");
      await waitFor("top to finish its refreshes", () => top.exitCode !== null, 60_000);
      const last = output.join("").trimEnd().split("\n\nfitb top").at(-1) as string;
      expect(last).toMatch(new RegExp(`\\n${stopped} +127\\.0\\.0\\.1:\\d+ +false .*no answer`));
    } finally {
      victim?.kill("SIGCONT");
      top.kill();
    }
  }, 120_000);

  test("a replica stopped with SIGSTOP keeps its connections, yet its peers report it not up once their PINGs go unanswered, and up again after SIGCONT", async () => {
    const stopped = cluster.n - 1;
    const others = [0, 1, 2];
    let report: JsonReport | null = null;
    const peersSee = async (up: boolean): Promise<boolean> => {
      const result = await status(true);
      report = result.stdout === "" ? null : (JSON.parse(result.stdout) as JsonReport);
      const rows = report?.replicas.filter((r) => others.includes(r.id)) ?? [];
      return rows.length === others.length && rows.every((r) => r.up && (r.peers_up ?? []).includes(stopped) === up);
    };
    await waitFor(
      "every peer to see replica 3 up",
      () => peersSee(true),
      60_000,
      () => JSON.stringify(report),
    );
    const victim = cluster.procs[stopped];
    victim?.kill("SIGSTOP");
    try {
      await waitFor(
        "every peer to report replica 3 not up",
        () => peersSee(false),
        60_000,
        () => JSON.stringify(report),
      );
    } finally {
      victim?.kill("SIGCONT");
    }
    await waitFor(
      "every peer to see replica 3 up again",
      () => peersSee(true),
      60_000,
      () => JSON.stringify(report),
    );
  }, 180_000);

  test("a cluster file that lists another key for one replica: a warning naming it, both keys and `fitb cluster export`; the exit code is the group's", async () => {
    let report: JsonReport | null = null;
    await waitFor(
      "status to see all four replicas up and linked again",
      async () => {
        const result = await status(true);
        report = result.stdout === "" ? null : (JSON.parse(result.stdout) as JsonReport);
        return report?.replicas.every((r) => r.up) === true && report.health !== "no-quorum";
      },
      60_000,
      () => JSON.stringify(report),
    );
    expect((report as unknown as JsonReport).cluster_file).toEqual({
      matches_group: true,
      group_epoch: 0,
      f: { file: 1, group: 1 },
      replicas: [],
    });
    const victim = 3;
    const text = readFileSync(cluster.configPath, "utf8");
    const parsed = parseClusterConfig(text, cluster.configPath);
    if (!parsed.ok) throw new Error(JSON.stringify(parsed.errors));
    const right = parsed.config.replicas.find((replica) => replica.id === victim)?.publicKeyText as string;
    const wrong = formatPublicKey(SigningKey.generate().publicKey);
    const path = join(cluster.dir, "wrong-key.toml");
    writeFileSync(path, text.replace(`key = "${right}"`, `key = "${wrong}"`));
    expect(readFileSync(path, "utf8")).toContain(wrong);

    // The client reads the group, dials replica 3 with the group's key, and so sees every replica up.
    let code = -1;
    await waitFor(
      "status from the wrong file to see all four replicas up",
      async () => {
        const result = await status(true, path);
        code = result.code;
        report = result.stdout === "" ? null : (JSON.parse(result.stdout) as JsonReport);
        return report?.replicas.every((r) => r.up) === true && report.health !== "no-quorum";
      },
      60_000,
      () => `exit ${code}: ${JSON.stringify(report)}`,
    );
    const seen = report as unknown as JsonReport;
    // A warning: the group is as healthy as it was, so the exit code follows the problems alone.
    expect(code).toBe(seen.problems.length === 0 ? 0 : 1);
    const address = { host: "127.0.0.1", port: cluster.basePort + victim };
    expect(seen.cluster_file).toEqual({
      matches_group: false,
      group_epoch: 0,
      f: { file: 1, group: 1 },
      replicas: [{ id: victim, file: { ...address, key: wrong }, group: { ...address, key: right } }],
    });
    const warning = seen.warnings.find((w) => w.startsWith("the cluster file differs from the replica group (epoch 0): "));
    expect(warning).toContain(`the file lists replica ${victim} with key ${wrong}, the group with key ${right};`);
    expect(warning).toContain(
      `a client or relay started from this file refuses replica ${victim} at the handshake until 2 of the file's replicas have given it the group`,
    );
    expect(warning).toContain("re-export it with `fitb cluster export --config FILE --key ADMINKEY --out NEWFILE`");
    const table = await status(false, path);
    expect(table.code).toBe(code);
    expect(table.stdout).toContain(`\nwarning: ${warning}`);

    // What the warning says to do: the exported file matches the group.
    const fixed = join(cluster.dir, "exported.toml");
    const exported = await cluster.fitb(["cluster", "export", "--config", path, "--key", cluster.adminKey, "--out", fixed]);
    expect(exported.code).toBe(0);
    const after = await status(true, fixed);
    const fixedReport = JSON.parse(after.stdout) as JsonReport;
    expect(fixedReport.cluster_file?.matches_group).toBe(true);
    expect(fixedReport.warnings.filter((w) => w.startsWith("the cluster file differs"))).toEqual([]);
  }, 150_000);

  test("a replica whose cluster file's [limits] differ answers, but its peers refuse it: isolated, exit 1, in status and top", async () => {
    let report: JsonReport | null = null;
    await waitFor(
      "status to see all four replicas up again",
      async () => {
        const result = await status(true);
        report = result.stdout === "" ? null : (JSON.parse(result.stdout) as JsonReport);
        return report?.replicas.every((r) => r.up) === true;
      },
      60_000,
    );
    const leader = (report as unknown as JsonReport).leader ?? 0;
    const victim = (leader + 2) % cluster.n;
    // A limit that only bounds sessions (not one a data directory records): the replica
    // starts, and only the handshake with its peers tells the files apart.
    const path = join(cluster.dir, "drifted.toml");
    const text = readFileSync(cluster.configPath, "utf8");
    const changed = text.replace(/^client_inflight_requests_max = \d+/m, "client_inflight_requests_max = 7");
    expect(changed).not.toBe(text);
    writeFileSync(path, changed);
    const proc = cluster.procs[victim];
    cluster.kill(victim);
    await proc?.exited;
    drifted = { id: victim, path };
    cluster.start(victim);
    await waitFor(`replica ${victim} to report its peers' refusal`, () =>
      (cluster.logs[victim] ?? []).join("").includes("cluster file differs from replica"),
    );
    const peers = [0, 1, 2, 3].filter((id) => id !== victim);
    let code = -1;
    await waitFor(
      `status to call replica ${victim} isolated`,
      async () => {
        const result = await status(true);
        code = result.code;
        report = result.stdout === "" ? null : (JSON.parse(result.stdout) as JsonReport);
        return report?.replicas[victim]?.up === true && report.replicas[victim]?.flags.includes("isolated") === true;
      },
      60_000,
      () => `exit ${code}: ${JSON.stringify(report)}`,
    );
    const seen = report as unknown as JsonReport;
    expect(code).toBe(1);
    expect(seen.health).toBe("degraded");
    expect(seen.replicas.every((r) => r.up)).toBe(true);
    expect(seen.replicas[victim]?.peers_up).toEqual([]);
    const isolated = seen.problems.find((problem) => problem.startsWith(`replica ${victim} is isolated from its peers`));
    expect(isolated).toStartWith(
      `replica ${victim} is isolated from its peers: it reaches 0 of 3 (no link to replicas ${peers.join(", ")}), fewer than the 2 it needs to take part in a quorum of 3; it says its links fail: `,
    );
    // Why, as its peers refused it: the section of the cluster file that differs.
    expect(isolated).toContain("[limits]");
    const table = await status(false);
    expect(table.code).toBe(1);
    expect(table.stdout).toContain(`replica ${victim} is isolated from its peers`);
    expect(table.stdout).toMatch(new RegExp(`\\n${victim} +127\\.0\\.0\\.1:\\d+ +true .*isolated`));
    // The others' links to it are down too: warnings, which leave the exit code to the problems.
    await waitFor("the others to report no link to it", async () => {
      const result = await status(true);
      const now = JSON.parse(result.stdout) as JsonReport;
      return peers.every((id) => now.warnings.some((w) => w.startsWith(`replica ${id} does not reach replica ${victim} `)));
    });
    const args = ["top", "--config", cluster.configPath, "--key", cluster.adminKey, "--interval", "0.5", "--count", "1"];
    const top = await cluster.fitb(args, { timeoutMs: 60_000 });
    expect(top.stdout).toContain(" degraded ");
    expect(top.stdout).toMatch(new RegExp(`\\n${victim} +127\\.0\\.0\\.1:\\d+ +true .*isolated`));
    expect(top.stdout).toContain(`! replica ${victim} is isolated from its peers`);
  }, 150_000);
});
