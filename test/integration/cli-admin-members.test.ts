/**
 * `fitb admin set-f` against real replicas: an F below the group's f (or a pending
 * change's) is refused by the command itself unless --yes is given, saying what is lost
 * and how to go on, and nothing is sent (no pending change); raising f asks nothing. An
 * ordered change takes effect with nothing published (the leader pads to its checkpoint);
 * the refusal below a pending change's f is tested on a listing (unit tests), since a
 * pending change no longer lasts on an idle group.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { waitFor } from "../helpers/wait.ts";
import { startCluster, type TestCluster } from "./harness.ts";

let cluster: TestCluster;
let A: string[];

type MembersJson = { epoch: number; f: number; n: number; pending: { f: number; from: number } | null };

async function members(): Promise<MembersJson> {
  const run = await cluster.fitb(["admin", ...A, "members", "--json"]);
  if (run.code !== 0) throw new Error(`admin members exited ${run.code}: ${run.stderr}${run.stdout}`);
  return JSON.parse(run.stdout) as MembersJson;
}

async function admin(args: string[]): Promise<{ code: number; text: string }> {
  const run = await cluster.fitb(["admin", ...A, ...args], { timeoutMs: 60_000 });
  return { code: run.code, text: `${run.stdout}${run.stderr}` };
}

beforeAll(async () => {
  cluster = await startCluster();
  A = ["--config", cluster.configPath, "--key", cluster.adminKey];
}, 120_000);

afterAll(async () => {
  await cluster.stop();
});

describe("fitb admin set-f", () => {
  test("lowering f without --yes is refused before anything is sent, naming what is lost and how to go on", async () => {
    expect(await members()).toMatchObject({ epoch: 0, f: 1, n: 4, pending: null });
    const lowered = await admin(["set-f", "0"]);
    expect(lowered.code).toBe(1);
    expect(lowered.text).toContain("set-f 0 lowers f: the group would tolerate 0 faults instead of 1");
    expect(lowered.text).toContain("Run again with --yes to lower f (set-f 0 --yes)");
    expect(lowered.text).not.toContain("ok:");
    expect((await members()).pending).toBeNull();
  }, 90_000);

  test("raising f asks nothing: the replicas judge it (here n = 4 is too few for f = 2)", async () => {
    const raised = await admin(["set-f", "2"]);
    expect(raised.code).not.toBe(0);
    expect(raised.text).toContain("f = 2 needs n >= 3f+1 = 7");
    expect(raised.text).not.toContain("--yes");
  }, 90_000);

  test("with --yes the lower f is ordered and takes effect (the idle group is padded to its checkpoint); raising it back asks nothing, and lowering again asks once more", async () => {
    const lowered = await admin(["set-f", "0", "--yes"]);
    expect(lowered.code).toBe(0);
    expect(lowered.text).toContain("ok: f becomes 0");
    // Nothing is published: the leader pads to the checkpoint where the change takes effect.
    await waitFor("f = 0 in effect", async () => (await members()).f === 0, 60_000);
    expect(await members()).toMatchObject({ epoch: 1, f: 0, pending: null });
    const raised = await admin(["set-f", "1"]);
    expect(raised.code).toBe(0);
    expect(raised.text).toContain("ok: f becomes 1");
    await waitFor("f = 1 in effect", async () => (await members()).f === 1, 60_000);
    expect(await members()).toMatchObject({ epoch: 2, f: 1, pending: null });
    const again = await admin(["set-f", "0"]);
    expect(again.code).toBe(1);
    expect(again.text).toContain("the group would tolerate 0 faults instead of 1");
    expect(await members()).toMatchObject({ epoch: 2, f: 1, pending: null });
  }, 180_000);
});
