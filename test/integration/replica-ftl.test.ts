/**
 * `fitb replica --ftl on|off` (src/cli/jit.ts): a replica started without the runtime
 * option in its environment restarts itself in place with it (the same process id, so its
 * parent still holds it), says so in its start line, and works as a member of its group.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { FTL_ENV } from "../../src/cli/jit.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, encode, startClusterWithChannels } from "./client-util.ts";
import type { TestCluster } from "./harness.ts";

let cluster: TestCluster;

beforeAll(async () => {
  // The test runner's environment does not set the option; replica 3 asks for the tier on.
  expect(process.env[FTL_ENV]).toBeUndefined();
  cluster = await startClusterWithChannels({ replicaArgs: (id) => (id === 3 ? ["--ftl", "on"] : []) });
});

afterAll(async () => {
  await cluster?.stop();
});

/** The environment of process `pid` as the kernel holds it (after an execve, the new one). */
function environOf(pid: number): Map<string, string> {
  const entries = readFileSync(`/proc/${pid}/environ`, "latin1").split("\0").filter(Boolean);
  return new Map(entries.map((entry) => [entry.slice(0, entry.indexOf("=")), entry.slice(entry.indexOf("=") + 1)]));
}

/** The fields of replica `id`'s "replica started" line, once it is logged. */
async function startLine(id: number): Promise<Record<string, unknown>> {
  const find = () => (cluster.logs[id] ?? []).find((line) => line.includes('"replica started"'));
  await waitFor(`replica ${id} to log that it started`, () => find() !== undefined);
  return JSON.parse(find() as string) as Record<string, unknown>;
}

test("replicas restart in place with the top tier off by default, or on with --ftl on, and serve as one group", async () => {
  for (const id of [0, 1, 2]) {
    expect(await startLine(id)).toMatchObject({ ftl: false });
    expect(environOf(cluster.procs[id]?.pid as number).get(FTL_ENV)).toBe("false");
  }
  expect(await startLine(3)).toMatchObject({ ftl: true });
  expect(environOf(cluster.procs[3]?.pid as number).get(FTL_ENV)).toBe("true");
  // The process the harness started is the one running (execve keeps the id), and it answers.
  const client = clientFor(cluster, cluster.clientKey);
  try {
    const ack = await client.publish("sec.alerts", [encode("after the restart in place")]);
    expect(ack.replicas.length).toBeGreaterThanOrEqual(2);
  } finally {
    client.close();
  }
  for (const proc of cluster.procs) expect(proc?.exitCode).toBeNull();
}, 120_000);

test("a value other than on or off is refused before anything starts", async () => {
  const run = await cluster.fitb(["replica", "--config", cluster.configPath, "--id", "0", "--ftl", "fast"]);
  expect(run.code).toBe(2);
  expect(run.stderr).toContain("--ftl: expected on or off");
});
