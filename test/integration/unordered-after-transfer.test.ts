/**
 * A replica's own store of unordered events outlives a state transfer. Four real replicas;
 * replica 1 stores every event of an unordered channel (net.links, publishes sent to every
 * replica), is stopped while the group orders far past its log, and is started again: it
 * fetches the ordered state by state transfer. The unordered events it had stored before
 * must still be served from it (a subscription from 0 at replica 1 alone), and must still
 * be there after a further restart. And a replica whose ordered state comes back short at
 * a start (its decided log and snapshots lost while it was down) keeps its unordered events
 * in its store though no channel is there to judge them by, and serves them again as soon
 * as the state transfer brings their channel, without waiting for its next start; one
 * whose decided log merely ends before the seq that made an unordered channel serves its
 * events of it as soon as it executes that seq again, caught up from its peers' log.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { join } from "node:path";
import { DEFAULT_PARAMETERS } from "../../src/core/ordering/config.ts";
import { loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { STORE_FILE } from "../../src/replica/storage/store.ts";
import type { AdminCmd } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";
import type { FitbClient } from "../../src/client/index.ts";
import { HandSession } from "../helpers/hand-session.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, encode, startClusterWithChannels } from "./client-util.ts";
import { dataDirOf, killAndWait, logLines, publishStream, startUntilLogged, waitCaughtUp, waitConverged } from "./durability-history.ts";
import type { TestCluster } from "./harness.ts";

const UNORDERED = 50;
/** The replicas' checkpoint interval (core/ordering/PROTOCOL.md §10): a base snapshot may be taken at each multiple. */
const CHECKPOINT_INTERVAL = DEFAULT_PARAMETERS.checkpointInterval;

let cluster: TestCluster;

beforeAll(async () => {
  cluster = await startClusterWithChannels();
}, 120_000);

afterAll(async () => {
  await cluster?.stop();
});

/**
 * A client that publishes to every replica with a session up, once its session to every
 * replica is: an unordered publish is acknowledged by f+1 replicas, so one sent before its
 * session to replica 1 was up would never reach replica 1, and the counts below would be
 * one short.
 */
async function publisherToAll(): Promise<FitbClient> {
  const publisher = clientFor(cluster, cluster.clientKey, { crashNoneTargets: "all" });
  await waitFor("the publisher's sessions to every replica", () => publisher.readyReplicas().length === 4);
  return publisher;
}

/**
 * The batches replica 1 alone serves of `tag` (an unordered channel) from 0. `publisher`
 * (the client that published what is counted) then publishes a marker: its requests reach
 * replica 1 in the order it sent them on its one session, so once the marker arrives from
 * replica 1, everything it stored of that client before was sent too (a replay goes in
 * store order, then live). A marker from another client, on another session, could pass
 * the last of them on the way.
 */
async function servedByReplica1(publisher: FitbClient, tag = "net.links"): Promise<number> {
  const session = new HandSession(cluster.basePort + 1, loadSigningKeyFile(cluster.clientKey).key);
  try {
    await session.handshake();
    session.send({ type: FrameType.SUBSCRIBE, body: { sub: 1, tag, from: 0 } });
    await waitFor("SUB_OK", () => session.frames.some((f) => f.type === FrameType.SUB_OK || f.type === FrameType.SUB_END));
    const marker = `marker-${Date.now()}`;
    // Sent to every replica with a session up: replica 1's must be, or the marker is
    // acknowledged by the others before it ever reaches replica 1.
    await waitFor("the publisher's session to replica 1", () => publisher.readyReplicas().includes(1));
    await publisher.publish(tag, [encode(marker)]);
    await waitFor("the marker from replica 1", () =>
      session.frames.some((f) => f.type === FrameType.EVENTS && new TextDecoder().decode(f.body.req.body).includes(marker)),
    );
    return session.frames.filter((f) => f.type === FrameType.EVENTS).length - 1;
  } finally {
    session.destroy();
  }
}

/** Replica 1's log line when it put the unordered events its data directory kept back into its machine. */
const RESTORED = "unordered events kept in the data directory restored";

/** Runs `statements` on the store of replica 1, which is down: what its disk lost. */
function loseFromStore(...statements: string[]): void {
  const db = new Database(join(dataDirOf(cluster, 1), STORE_FILE));
  try {
    for (const statement of statements) db.run(statement);
  } finally {
    db.close();
  }
}

/** Starts replica 1 and waits until it logs one more `line`; returns this start's recovery line. */
async function startReplica1Until(line: string): Promise<Record<string, unknown> | undefined> {
  const recovered = logLines(cluster, 1, "recovered from the data directory").length;
  await startUntilLogged(cluster, 1, line);
  return logLines(cluster, 1, "recovered from the data directory")[recovered];
}

test("after a state transfer, and after a restart that follows, a replica still serves the unordered events it stored", async () => {
  const publisher = await publisherToAll();
  try {
    for (let i = 0; i < UNORDERED; i++) await publisher.publish("net.links", [encode(`u${i}`)]);
    expect(await servedByReplica1(publisher)).toBe(UNORDERED + 0);
    // The marker's row is committed at the end of the turn that stored it: an ordered seq
    // replica 1 decided after it shows that turn is over, so the kill cannot take it back
    // (it did once beside two busy loops, and the count below was one short).
    await publisher.publish("sec.alerts", [encode("after-the-marker")]);
    await waitCaughtUp(publisher, 1, 60_000);
    await killAndWait(cluster, 1);
    // Far past replica 1's log window (256 seqs): it can only catch up by state transfer.
    await publishStream(publisher, "sec.alerts", "a", 600, 1);
    await startReplica1Until("snapshot installed");
    await waitCaughtUp(publisher, 1, 60_000);
    // The first marker is one more event it stored.
    expect(await servedByReplica1(publisher)).toBeGreaterThanOrEqual(UNORDERED + 1);
    await killAndWait(cluster, 1);
    cluster.start(1);
    await waitCaughtUp(publisher, 1, 60_000);
    expect(await servedByReplica1(publisher)).toBeGreaterThanOrEqual(UNORDERED + 1);
  } finally {
    publisher.close();
  }
}, 300_000);

test("a replica that restarts short of its ordered state serves its kept unordered events once the state transfer brings their channel", async () => {
  const publisher = await publisherToAll();
  try {
    const before = await servedByReplica1(publisher);
    for (let i = 0; i < UNORDERED; i++) await publisher.publish("net.links", [encode(`k${i}`)]);
    await publishStream(publisher, "sec.alerts", "b", 300, 1);
    await waitCaughtUp(publisher, 1, 60_000);
    // Replica 1 stored every one of them (a publish is acknowledged by f+1 replicas).
    expect(await servedByReplica1(publisher)).toBeGreaterThanOrEqual(before + UNORDERED + 1);
    await killAndWait(cluster, 1);
    // Its decided log and snapshots are lost while it is down (its unordered store stays):
    // it comes back with no channel at all, and fetches the state by state transfer.
    loseFromStore("DELETE FROM decided", "DELETE FROM snap_part", "DELETE FROM snap_head");
    const start = await startReplica1Until("snapshot installed");
    // It came back with no channel, and kept its unordered events for the state.
    expect(start?.["lastDecided"]).toBe(0);
    expect(start?.["unorderedBatches"]).toBe(0);
    const put = logLines(cluster, 1, RESTORED);
    expect(put.length).toBe(1);
    expect(put[0]?.["batches"]).toBeGreaterThanOrEqual(before + UNORDERED + 1);
    // The channels rows went back into, not every unordered channel the transfer brought (sec.ids holds none of replica 1's).
    expect(put[0]?.["channels"]).toEqual(["net.links"]);
    await waitCaughtUp(publisher, 1, 60_000);
    // Served without a restart: every event it stored before (the earlier markers among them), and the new marker.
    expect(await servedByReplica1(publisher)).toBeGreaterThanOrEqual(before + UNORDERED + 2);
  } finally {
    publisher.close();
  }
}, 300_000);

test("a replica whose decided log ends before the seq that made an unordered channel serves its events of it once it executes that seq again", async () => {
  const publisher = await publisherToAll();
  const admin = clientFor(cluster, cluster.adminKey);
  try {
    // Just past a checkpoint, so that no base snapshot is taken past the log's new end
    // below: the replica must get the channel back by executing its seq again, not by a
    // state transfer (the other test).
    let last = await waitConverged(admin, [0, 1, 2, 3], 60_000);
    while (last % CHECKPOINT_INTERVAL === 0 || last % CHECKPOINT_INTERVAL > CHECKPOINT_INTERVAL / 2) {
      await publisher.publish("sec.alerts", [encode(`c${last}`)]);
      last = await waitConverged(admin, [0, 1, 2, 3], 60_000);
    }
    const create: AdminCmd = { t: "create-channel", tag: "net.late", fault: "crash", order: "none", priority: "normal", public: true };
    const created = await admin.admin(create);
    const registered = await admin.admin({
      t: "register",
      tag: "net.late",
      role: "publisher",
      key: loadSigningKeyFile(cluster.clientKey).key.publicKey,
    });
    // No checkpoint between the log's new end and the channel: no base past it.
    expect(Math.floor((registered.at ?? Number.POSITIVE_INFINITY) / CHECKPOINT_INTERVAL)).toBe(Math.floor(last / CHECKPOINT_INTERVAL));
    await waitConverged(admin, [0, 1, 2, 3], 60_000);
    for (let i = 0; i < UNORDERED; i++) await publisher.publish("net.late", [encode(`late${i}`)]);
    expect(await servedByReplica1(publisher, "net.late")).toBe(UNORDERED);
    // Replica 1 sent its marker; its row is committed at the end of that turn. Killed before
    // then (a busy host), it would come back with one batch less than counted below: an
    // ordered seq it executed after the marker shows that turn is over. One seq, so no
    // checkpoint comes between the log's new end and the channel.
    await publisher.publish("sec.alerts", [encode("after-the-marker")]);
    await waitConverged(admin, [0, 1, 2, 3], 60_000);
    await killAndWait(cluster, 1);
    // The writes of the channel's seq and after are lost: the log ends where it did before it.
    loseFromStore(`DELETE FROM decided WHERE seq > ${last}`);
    const installed = logLines(cluster, 1, "snapshot installed").length;
    const restored = logLines(cluster, 1, RESTORED).length;
    const start = await startReplica1Until(RESTORED);
    expect(start?.["lastDecided"]).toBe(last);
    const put = logLines(cluster, 1, RESTORED)[restored];
    // Put back by executing the channel's create-channel again.
    expect(put?.["seq"]).toBe(created.at);
    expect(put?.["channels"]).toEqual(["net.late"]);
    expect(put?.["batches"]).toBe(UNORDERED + 1);
    expect(logLines(cluster, 1, "snapshot installed").length).toBe(installed);
    await waitCaughtUp(publisher, 1, 60_000);
    expect(await servedByReplica1(publisher, "net.late")).toBe(UNORDERED + 1);
  } finally {
    publisher.close();
    admin.close();
  }
}, 300_000);
