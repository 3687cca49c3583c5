/**
 * Smoke tests of two of the attack harness's compromised replicas
 * (test/attack/adversary-replica.ts), each in a cluster of four, attacking from the start:
 *
 * - `mute` as the leader of view 0 sends its peers nothing: the correct replicas replace
 *   it (their view moves past 0) and still order commands; it counts what it held back.
 * - `replayer` as a backup re-sends the validly signed ordering messages it sent and
 *   received: the correct replicas drop what it replays (counted per peer and reason) and
 *   still order commands; it counts what it replayed.
 *
 * `npm run attack` measures throughput under them; these only check that each adversary
 * really attacks and that the cluster stays live, so that a change to either cannot
 * silently turn the harness's rows into fault-free runs.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { FitbClient } from "../../src/client/index.ts";
import { type Adversary, startWithAdversary } from "../helpers/adversary.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor } from "../integration/client-util.ts";
import { freePortRange, startCluster, type TestCluster } from "../integration/harness.ts";

/** Sum of the metric lines of `port`'s /metrics that start with `prefix` (0 when it does not answer). */
async function metricSum(port: number, prefix: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`).catch(() => null))?.text();
  if (text === undefined) return 0;
  let sum = 0;
  for (const line of text.split("\n")) if (line.startsWith(prefix)) sum += Number(line.slice(line.lastIndexOf(" ") + 1));
  return sum;
}

/** The largest `field` of the adversary's JSON lines whose msg is `msg`, or 0. */
function reported(adversary: Adversary, msg: string, field: string): number {
  let best = 0;
  for (const line of adversary.output.join("").split("\n")) {
    if (!line.includes(`"msg":"${msg}"`)) continue;
    const value = Number((JSON.parse(line) as Record<string, unknown>)[field]);
    if (Number.isFinite(value)) best = Math.max(best, value);
  }
  return best;
}

let cluster: TestCluster | null = null;
let adversary: Adversary | null = null;
let admin: FitbClient | null = null;

afterEach(async () => {
  admin?.close();
  await adversary?.stop();
  await cluster?.stop();
  admin = null;
  adversary = null;
  cluster = null;
});

async function start(id: number, behaviour: string): Promise<{ c: TestCluster; a: Adversary; client: FitbClient; metricsBase: number }> {
  const metricsBase = freePortRange(4);
  const c = await startCluster({ start: false, replicaArgs: (r) => ["--metrics", `127.0.0.1:${metricsBase + r}`] });
  cluster = c;
  const a = await startWithAdversary(c, id, behaviour);
  adversary = a;
  const client = clientFor(c, c.adminKey);
  admin = client;
  return { c, a, client, metricsBase };
}

const createChannel = (client: FitbClient, tag: string) =>
  client.admin({ t: "create-channel", tag, fault: "byzantine", order: "total", priority: "normal", public: true });

describe("compromised replicas of the attack harness", () => {
  test("a mute leader: the correct replicas replace it and order commands; it held back messages", async () => {
    const MUTE = 0;
    const { c, a, client, metricsBase } = await start(MUTE, "mute");
    const reply = await createChannel(client, "mute.ok");
    expect(reply.cmd).toBe("create-channel");
    const correct = [1, 2, 3];
    await waitFor(
      "every correct replica in a view past 0",
      async () => (await Promise.all(correct.map((r) => metricSum(metricsBase + r, "fitb_view ")))).every((v) => v >= 1),
      45_000,
      () => correct.map((r) => `replica ${r}: ${c.logs[r]?.join("").slice(-400)}`).join("\n"),
    );
    await waitFor(
      "the adversary to report messages it held back",
      () => reported(a, "adversary muted", "droppedTotal") > 0,
      20_000,
      () => a.output.join("").slice(-1_000),
    );
    expect((await createChannel(client, "mute.again")).cmd).toBe("create-channel");
  }, 90_000);

  test("a replaying backup: the correct replicas drop what it replays and order commands; it replayed messages", async () => {
    const REPLAYER = 3;
    const { c, a, client, metricsBase } = await start(REPLAYER, "replayer");
    // Ordering traffic for it to record, then to replay.
    expect((await createChannel(client, "replay.one")).cmd).toBe("create-channel");
    await waitFor(
      "the adversary to report messages it replayed",
      () => reported(a, "adversary replayed", "sentTotal") > 0,
      30_000,
      () => a.output.join("").slice(-1_000),
    );
    const correct = [0, 1, 2];
    const dropped = `fitb_peer_messages_dropped_total{peer="${REPLAYER}"`;
    const muted = `fitb_peer_muted_total{peer="${REPLAYER}"`;
    await waitFor(
      "every correct replica to drop or mute the replays",
      async () =>
        (
          await Promise.all(
            correct.map(async (r) => (await metricSum(metricsBase + r, dropped)) + (await metricSum(metricsBase + r, muted))),
          )
        ).every((n) => n >= 1),
      45_000,
      () => correct.map((r) => `replica ${r}: ${c.logs[r]?.join("").slice(-400)}`).join("\n"),
    );
    expect((await createChannel(client, "replay.two")).cmd).toBe("create-channel");
  }, 90_000);
});
