/**
 * The slow-leader adversary of the attack harness (test/attack/adversary-replica.ts) really
 * delays its proposals: replica 0, the leader of view 0, holds each PRE_PREPARE just under
 * the progress timeout, says so in its log, and the group still orders an admin command.
 * A smoke test of the adversary, not of the defence: the harness (`npm run attack`)
 * measures that.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { FitbClient } from "../../src/client/index.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor } from "../integration/client-util.ts";
import { startCluster, type TestCluster } from "../integration/harness.ts";
import { type Adversary, startWithAdversary } from "../helpers/adversary.ts";
import { SLOW_LEADER_DELAY_MS_DEFAULT } from "../attack/adversary-replica.ts";

const ADVERSARY = 0;

describe("the slow-leader adversary", () => {
  let cluster: TestCluster;
  let adversary: Adversary;
  let admin: FitbClient;

  beforeAll(async () => {
    cluster = await startCluster({ start: false });
    adversary = await startWithAdversary(cluster, ADVERSARY, "slow-leader");
    admin = clientFor(cluster, cluster.adminKey);
  }, 60_000);

  afterAll(async () => {
    admin?.close();
    await adversary?.stop();
    await cluster?.stop();
  });

  test("holds each proposal just under the progress timeout, and the command is still ordered", async () => {
    const reply = await admin.admin({
      t: "create-channel",
      tag: "slow.leader",
      fault: "byzantine",
      order: "total",
      priority: "normal",
      public: true,
    });
    expect(reply.cmd).toBe("create-channel");
    const delayed = (): { seq: number; heldMs: number }[] =>
      adversary.output
        .join("")
        .split("\n")
        .filter((line) => line.includes('"adversary proposal delayed"'))
        .map((line) => JSON.parse(line) as { seq: number; heldMs: number });
    await waitFor(
      "a delayed proposal in the adversary's log",
      () => delayed().length > 0,
      15_000,
      () => adversary.output.join("").slice(-2_000),
    );
    expect(adversary.output.join("")).toContain('"adversary attack on"');
    for (const line of delayed()) expect(line.heldMs).toBeGreaterThanOrEqual(SLOW_LEADER_DELAY_MS_DEFAULT);
  }, 20_000);
});
