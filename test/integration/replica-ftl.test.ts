/**
 * `fitb replica --ftl on|off` (src/cli/jit.ts): a replica started without the runtime
 * option in its environment restarts itself in place with it (the same process id, so its
 * parent still holds it), says so in its start line, and works as a member of its group;
 * one whose environment already runs the runtime as asked does not restart.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { FTL_ENV, FTL_RESTARTED_ENV } from "../../src/cli/jit.ts";
import { environOf } from "../helpers/environ.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, encode, startClusterWithChannels } from "./client-util.ts";
import type { TestCluster } from "./harness.ts";

let cluster: TestCluster;

beforeAll(async () => {
  // The harness hands the replicas this process's environment: whatever it says of the
  // option must not decide the test.
  const saved = [process.env[FTL_ENV], process.env[FTL_RESTARTED_ENV]] as const;
  delete process.env[FTL_ENV];
  delete process.env[FTL_RESTARTED_ENV];
  try {
    // Replica 3 asks for the tier on, which the runtime runs by default: no restart.
    cluster = await startClusterWithChannels({ replicaArgs: (id) => (id === 3 ? ["--ftl", "on"] : []) });
  } finally {
    if (saved[0] !== undefined) process.env[FTL_ENV] = saved[0];
    if (saved[1] !== undefined) process.env[FTL_RESTARTED_ENV] = saved[1];
  }
});

afterAll(async () => {
  await cluster?.stop();
});

/** The fields of replica `id`'s "replica started" line, once it is logged. */
async function startLine(id: number): Promise<Record<string, unknown>> {
  // The harness keeps output as it came (chunks, not lines).
  const find = () =>
    (cluster.logs[id] ?? [])
      .join("")
      .split("\n")
      .find((line) => line.includes('"replica started"'));
  await waitFor(`replica ${id} to log that it started`, () => find() !== undefined);
  return JSON.parse(find() as string) as Record<string, unknown>;
}

test("replicas restart once in place with the top tier off by default; --ftl on, the runtime's default, starts as is; all serve as one group", async () => {
  for (const id of [0, 1, 2]) {
    expect(await startLine(id)).toMatchObject({ ftl: false });
    const environ = environOf(cluster.procs[id]?.pid as number);
    expect(environ.get(FTL_ENV)).toBe("false");
    // The mark is the process id: the process the harness started is the one running.
    expect(environ.get(FTL_RESTARTED_ENV)).toBe(String(cluster.procs[id]?.pid));
  }
  expect(await startLine(3)).toMatchObject({ ftl: true });
  const environ = environOf(cluster.procs[3]?.pid as number);
  expect(environ.has(FTL_ENV)).toBe(false);
  expect(environ.has(FTL_RESTARTED_ENV)).toBe(false);
  for (const id of [0, 1, 2, 3]) {
    const log = (cluster.logs[id] ?? []).join("\n");
    expect(log).not.toContain("could not restart");
    expect(log).not.toContain("still runs the other way");
  }
  // The processes the harness started are the ones running (execve keeps the id), and they answer.
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
