/**
 * Subscribers asking for a long history read it at their own pace. Six client sessions
 * from one address subscribe at replica 0 to one unordered channel (net.links, every
 * publish sent to every replica) from 0, their sockets paused, so they read nothing while
 * the replica replays; history is published until every replay waits for its subscriber
 * (subscriptions_replay_waiting): each connection holds what its bound allows, and
 * together they hold more than one address's share of the replica's output budget, so
 * some wait for that share rather than their own bound. Before, a replay filled the
 * connection (or the share) and cut the subscriber off as slow, and on an unordered
 * channel a client cut off resubscribes live (there is no common seq to resume from), so
 * the rest of the history never came. Once the sessions read again, each gets every batch,
 * and none gets a SUB_END.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { FrameType } from "../../wire/types.ts";
import { HandSession } from "../helpers/hand-session.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, encode, startClusterWithChannels } from "./client-util.ts";
import { freePortRange, metricValue, type TestCluster } from "./harness.ts";

const SESSIONS = 14;
/** Events of 1 KiB, 32 a request: 32 KiB a batch. */
const EVENT_BYTES = 1024;
const EVENTS_PER_REQUEST = 32;
/** Requests published between two looks at the replays. */
const REQUESTS_PER_ROUND = 100;
/** Rounds of history before the sessions subscribe: 16 MB, more than a connection's bound and its socket buffers hold. */
const HISTORY_ROUNDS = 5;
/** A bound on the history published (the channel retains 64 MiB): far more than the sessions' connections and the kernel's buffers hold. */
const REQUESTS_MAX = 1_800;

let cluster: TestCluster;
let metricsPort: number;

/** One series of replica 0. */
const metric = (series: string): Promise<number> => metricValue(metricsPort, series);

beforeAll(async () => {
  metricsPort = freePortRange(1);
  cluster = await startClusterWithChannels({ replicaArgs: (id) => (id === 0 ? ["--metrics", `127.0.0.1:${metricsPort}`] : []) });
}, 120_000);

afterAll(async () => {
  await cluster?.stop();
});

test("replays wait for subscribers that do not read, and then send each of them the whole history", async () => {
  const key = loadSigningKeyFile(cluster.clientKey).key;
  // Each opened just before its handshake: a replica closes a connection that has not
  // finished its handshake within 10 s, and the history takes longer on a busy host.
  const sessions: HandSession[] = [];
  const publisher = clientFor(cluster, cluster.clientKey, { crashNoneTargets: "all" });
  const filler = "x".repeat(EVENT_BYTES - 16);
  let requests = 0;
  const publishRound = async (): Promise<void> => {
    for (let r = 0; r < REQUESTS_PER_ROUND; r++, requests++) {
      await publisher.publish(
        "net.links",
        Array.from({ length: EVENTS_PER_REQUEST }, (_, i) => encode(`e${requests}.${i} ${filler}`)),
      );
    }
  };
  try {
    // History first: a SUBSCRIBE from 0 with nothing to replay is live at once.
    for (let round = 0; round < HISTORY_ROUNDS; round++) await publishRound();
    for (let i = 0; i < SESSIONS; i++) {
      const session = new HandSession(cluster.basePort, key);
      sessions.push(session);
      await session.handshake();
      session.pauseReading();
      session.send({ type: FrameType.SUBSCRIBE, body: { sub: 1, tag: "net.links", from: 0 } });
    }
    await waitFor("every session's replay to start", async () => (await metric("fitb_subscriptions_replaying")) === SESSIONS);
    // More until every replay waits, on a host whose socket buffers hold more (a replay reads on through what is published meanwhile).
    while ((await metric("fitb_subscriptions_replay_waiting")) < SESSIONS) {
      expect(requests).toBeLessThan(REQUESTS_MAX);
      await publishRound();
    }
    expect(await metric("fitb_subscriptions_replaying")).toBe(SESSIONS);
    for (const session of sessions) session.resumeReading();
    const batches = (session: HandSession) => session.frames.filter((f) => f.type === FrameType.EVENTS).length;
    for (const [i, session] of sessions.entries()) {
      await waitFor(`session ${i}: all ${requests} batches (${batches(session)} so far)`, () => batches(session) >= requests, 60_000);
    }
    await waitFor("the replays to end", async () => (await metric("fitb_subscriptions_replaying")) === 0);
    for (const session of sessions) {
      expect(session.frames.some((f) => f.type === FrameType.SUB_END || f.type === FrameType.ERROR)).toBe(false);
      expect(batches(session)).toBe(requests);
    }
    expect(await metric("fitb_subscribers_dropped_slow_total")).toBe(0);
  } finally {
    publisher.close();
    for (const session of sessions) session.destroy();
  }
}, 300_000);
