/**
 * The lost-records fence with real processes (core/ordering/PROTOCOL.md §2, "A store that
 * lost records"; storage/index.ts LOST_VOTES_META): a replica whose store was cut and moved
 * aside votes on no proposal in any view until a view change it takes part in. Killed
 * (SIGKILL) before that view change, it starts fenced again, not only behind the ordinary
 * restart fence; once the view change ends the fence, a later restart is not fenced.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { statSync, truncateSync } from "node:fs";
import { join } from "node:path";
import type { FitbClient } from "../../src/client/index.ts";
import { loadPublicKeyFile } from "../../src/crypto/keys.ts";
import { STORE_FILE } from "../../src/replica/storage/store.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, createChannels } from "./client-util.ts";
import { dataDirOf, killAndWait, logLines, waitConverged } from "./durability-history.ts";
import { startCluster, type TestCluster } from "./harness.ts";

const CONVERGE_MS = 60_000;
const LOST =
  "records were lost (now or in a run that ended before its fence did): votes fenced in every view until a view change this replica takes part in";
const ENDED = "the lost-records fence ended: this replica votes again";
const ORDINARY = "restarted without a clean stop: votes fenced";

describe("a replica whose store lost records", () => {
  let cluster: TestCluster;
  let admin: FitbClient;
  let publisher: FitbClient;

  beforeAll(async () => {
    cluster = await startCluster();
    admin = clientFor(cluster, cluster.adminKey);
    publisher = clientFor(cluster, cluster.clientKey);
    await createChannels(admin, loadPublicKeyFile(`${cluster.clientKey}.pub`));
  }, 120_000);

  afterAll(async () => {
    for (const client of [admin, publisher]) client?.close();
    await cluster?.stop();
  });

  const encoder = new TextEncoder();
  const publish = (text: string) => publisher.publish("sec.alerts", [encoder.encode(text)]);

  /** Publishes `text`, asking again while the group cannot order (a view change under way). */
  async function publishEventually(text: string): Promise<void> {
    const deadline = Date.now() + CONVERGE_MS;
    for (;;) {
      try {
        await publish(text);
        return;
      } catch (error) {
        if (Date.now() > deadline) throw error;
      }
    }
  }

  /** Starts replica `id` and waits for its "replica started" line (the fence is logged before it). */
  async function restart(id: number): Promise<void> {
    const startsBefore = logLines(cluster, id, "replica started").length;
    cluster.start(id);
    await waitFor(`replica ${id} to start again`, () => logLines(cluster, id, "replica started").length > startsBefore, 30_000);
  }

  /** Replica `id`'s status answer: fenced at all, and fenced for lost records. */
  async function fencedFlags(id: number): Promise<{ votes: boolean | undefined; lost: boolean | undefined }> {
    const answer = (await admin.status()).replicas.find((replica) => replica.id === id)?.answer;
    if (answer?.ok !== true) throw new Error(`replica ${id} gave no status: ${JSON.stringify(answer)}`);
    return { votes: answer.value.votesFenced, lost: answer.value.lostRecordsFenced };
  }

  test("stays fenced across a kill -9 until a view change it takes part in, and starts unfenced after it", async () => {
    for (let i = 0; i < 5; i++) await publish(`before ${i}`);
    const leader = (await admin.status()).leader as number;
    // Neither the leader nor the next one: the view change away from the leader needs its VIEW_CHANGE.
    const id = (leader + 2) % cluster.n;
    const proc = cluster.procs[id];
    if (proc === null || proc === undefined) throw new Error(`replica ${id} is not running`);
    cluster.kill(id, "SIGTERM");
    expect(await proc.exited).toBe(0);
    // A clean stop folded the write-ahead log into the file: cut it in half, and the next open moves it aside.
    const file = join(dataDirOf(cluster, id), STORE_FILE);
    truncateSync(file, Math.floor(statSync(file).size / 2));

    await restart(id);
    expect(logLines(cluster, id, LOST).length).toBe(1);
    await waitConverged(admin, [0, 1, 2, 3], CONVERGE_MS);
    // Fenced, unless a view change (a slow host's request timers) has already ended it, which it logs.
    const fenced = await fencedFlags(id);
    if (fenced.lost === true) expect(fenced.votes).toBe(true);
    else await waitFor(`replica ${id} to log the end of its fence`, () => logLines(cluster, id, ENDED).length > 0, 30_000);

    // Killed before any view change: the fence is still asked for by its store.
    const endedBeforeKill = logLines(cluster, id, ENDED).length;
    await killAndWait(cluster, id);
    await restart(id);
    expect(logLines(cluster, id, LOST).length).toBe(endedBeforeKill === 0 ? 2 : 1);
    await publish("after the second start");
    await waitConverged(admin, [0, 1, 2, 3], CONVERGE_MS);

    // The leader stops: the other three change view, with this replica's VIEW_CHANGE in the NEW_VIEW.
    const leaderProc = cluster.procs[leader];
    cluster.kill(leader, "SIGTERM");
    expect(await leaderProc?.exited).toBe(0);
    await publishEventually("during the view change");
    await waitFor(`replica ${id} to end its fence`, () => logLines(cluster, id, ENDED).length > endedBeforeKill, CONVERGE_MS);
    const others = [0, 1, 2, 3].filter((other) => other !== leader);
    await waitConverged(admin, others, CONVERGE_MS);
    expect(await fencedFlags(id)).toEqual({ votes: false, lost: false });

    // The end of the fence went to its store with the next commit; after one more, a kill -9 starts it unfenced.
    await publish("after the view change");
    await waitConverged(admin, others, CONVERGE_MS);
    const ordinaryBefore = logLines(cluster, id, ORDINARY).length;
    const lostBefore = logLines(cluster, id, LOST).length;
    await killAndWait(cluster, id);
    await restart(id);
    // The ordinary restart fence of a kill -9 (the view it was in, up to its window's top), not the lost-records one.
    expect(logLines(cluster, id, LOST).length).toBe(lostBefore);
    expect(logLines(cluster, id, ORDINARY).length).toBe(ordinaryBefore + 1);
    cluster.start(leader);
    await waitConverged(admin, [0, 1, 2, 3], CONVERGE_MS);
  }, 240_000);
});
