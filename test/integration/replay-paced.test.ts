/**
 * A subscriber asking for a long history reads it at its own pace. Replica 0 holds some
 * 12.8 MB of one unordered channel (net.links, every publish sent to every replica); a
 * client session subscribes there from 0 with its socket paused, so it reads nothing while
 * the replica replays. The replay must wait for it (subscriptions_replay_waiting) rather
 * than fill the connection past its 8 MiB bound and cut the subscriber off as slow: on an
 * unordered channel a client cut off resubscribes live (there is no common seq to resume
 * from), so the rest of the history would never come. Once the session reads again, it
 * gets every batch, in order, and no SUB_END.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { FrameType } from "../../wire/types.ts";
import { HandSession } from "../helpers/hand-session.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, encode, startClusterWithChannels } from "./client-util.ts";
import { freePortRange, metricValue, type TestCluster } from "./harness.ts";

/** Events of 1 KiB, 32 a request: 400 requests hold about 12.8 MB, over a connection's 8 MiB bound. */
const EVENT_BYTES = 1024;
const EVENTS_PER_REQUEST = 32;
const REQUESTS = 400;

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

test("a replay waits for a subscriber that does not read, and then sends it the whole history", async () => {
  const publisher = clientFor(cluster, cluster.clientKey, { crashNoneTargets: "all" });
  try {
    const filler = "x".repeat(EVENT_BYTES - 16);
    for (let r = 0; r < REQUESTS; r++) {
      await publisher.publish(
        "net.links",
        Array.from({ length: EVENTS_PER_REQUEST }, (_, i) => encode(`e${r}.${i} ${filler}`)),
      );
    }
  } finally {
    publisher.close();
  }
  const stored = 'fitb_channel_events_stored_total{tag="net.links",class="crash/none",priority="normal"}';
  await waitFor("replica 0 to hold the whole channel", async () => (await metric(stored)) >= REQUESTS * EVENTS_PER_REQUEST);

  const session = new HandSession(cluster.basePort, loadSigningKeyFile(cluster.clientKey).key);
  try {
    await session.handshake();
    session.pauseReading();
    session.send({ type: FrameType.SUBSCRIBE, body: { sub: 1, tag: "net.links", from: 0 } });
    // The replay filled what it may of the connection and waits (nothing is read meanwhile).
    await waitFor("the replay to wait for the session", async () => (await metric("fitb_subscriptions_replay_waiting")) === 1, 30_000);
    expect(await metric("fitb_subscriptions_replaying")).toBe(1);
    session.resumeReading();
    const batches = () => session.frames.filter((f) => f.type === FrameType.EVENTS);
    await waitFor(`all ${REQUESTS} batches (${batches().length} so far)`, () => batches().length >= REQUESTS, 60_000);
    await waitFor("the replay to end", async () => (await metric("fitb_subscriptions_replaying")) === 0);
    expect(session.frames.some((f) => f.type === FrameType.SUB_END || f.type === FrameType.ERROR)).toBe(false);
    expect(batches().length).toBe(REQUESTS);
    expect(await metric("fitb_subscribers_dropped_slow_total")).toBe(0);
  } finally {
    session.destroy();
  }
}, 300_000);
