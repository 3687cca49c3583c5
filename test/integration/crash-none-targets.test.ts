/**
 * A crash/none publish goes to f+1 replicas (src/client/request-tracker.ts quorumTargets):
 * with real replicas, the same two acknowledge a tag's publishes, a subscriber gets every
 * event from them, and when one of the two is stopped (SIGSTOP: its session stays up but
 * it answers nothing) the publish goes to the others at the hedge delay and is
 * acknowledged by replicas that were not asked first.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { FitbClient } from "../../src/client/index.ts";
import { loadClientSetup } from "../../src/client/setup.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, encode, startClusterWithChannels } from "./client-util.ts";
import type { TestCluster } from "./harness.ts";

const TAG = "net.links";
const EVENTS = 20;

let cluster: TestCluster;

beforeAll(async () => {
  cluster = await startClusterWithChannels();
}, 120_000);

afterAll(async () => {
  await cluster?.stop();
});

test("a tag's crash/none publishes go to the same f+1 replicas, and a subscriber gets every event", async () => {
  const subscriber = clientFor(cluster, cluster.clientKey);
  const publisher = clientFor(cluster, cluster.clientKey);
  const received: string[] = [];
  try {
    await waitFor("sessions with every replica", () => publisher.replicaStates().every((replica) => replica.state === "ready"));
    const subscription = await subscriber.subscribe(TAG, {}, (batch) => {
      for (const event of batch.events) received.push(new TextDecoder().decode(event));
    });
    // The replicas that acknowledged each publish the client did not widen (a publish
    // slower than the hedge delay on a busy machine goes to every replica, and is left out).
    const ackedBy = new Set<string>();
    for (let i = 0; i < EVENTS; i++) {
      const widened = publisher.crashNoneWidened;
      const ack = await publisher.publish(TAG, [encode(`link ${i}`)]);
      if (publisher.crashNoneWidened === widened) ackedBy.add([...ack.replicas].sort().join());
    }
    // Two replicas, always the same two; unless a publish was widened, which passes over a
    // replica that did not answer in time for a few seconds (and a busy machine can be that
    // slow): each widening can move the tag to another pair and back.
    expect(ackedBy.size).toBeGreaterThanOrEqual(1);
    expect(ackedBy.size).toBeLessThanOrEqual(1 + 2 * publisher.crashNoneWidened);
    for (const pair of ackedBy) expect(pair.split(",")).toHaveLength(2);
    await waitFor(`the subscriber to deliver ${EVENTS} events`, () => received.length >= EVENTS, 20_000);
    expect(received.sort()).toEqual(Array.from({ length: EVENTS }, (_, i) => `link ${i}`).sort());
    await subscription.close();
  } finally {
    subscriber.close();
    publisher.close();
  }
}, 120_000);

test("with one of the two stopped, a publish goes to the others at the hedge delay and they acknowledge it", async () => {
  const setup = loadClientSetup(cluster.configPath, cluster.clientKey);
  // A resend timeout longer than the request's: only the hedge can take the publish to
  // the other replicas, and without it the publish fails at 30 s instead.
  const client = new FitbClient({ config: setup.config, key: setup.key, timeouts: { requestMs: 30_000, resendMs: 600_000 } });
  client.start();
  let stopped: number | undefined;
  try {
    await waitFor("sessions with every replica", () => client.replicaStates().every((replica) => replica.state === "ready"));
    // The tag's two replicas: those that acknowledged a publish the client did not widen.
    let pair: readonly number[] = [];
    for (let attempt = 0; attempt < 20 && pair.length === 0; attempt++) {
      const widened = client.crashNoneWidened;
      const ack = await client.publish(TAG, [encode(`before ${attempt}`)]);
      if (client.crashNoneWidened === widened) pair = ack.replicas;
    }
    const [target] = pair as [number, number];
    expect(pair).toHaveLength(2);
    const widenedBefore = client.crashNoneWidened;
    stopped = cluster.procs[target]?.pid;
    if (stopped === undefined) throw new Error(`replica ${target} is not running`);
    process.kill(stopped, "SIGSTOP");
    // Publishes until one was sent to the stopped replica (the tag's next publish, unless
    // earlier widenings on a busy machine moved the tag for a few seconds): that one can
    // only be acknowledged because the hedge took it to the others.
    for (let attempt = 0; attempt < 20 && client.crashNoneWidened === widenedBefore; attempt++) {
      const ack = await client.publish(TAG, [encode(`during ${attempt}`)]);
      // Acknowledged by f+1 = 2 replicas other than the stopped one.
      expect(ack.replicas).not.toContain(target);
      expect(ack.replicas).toHaveLength(2);
    }
    expect(client.crashNoneWidened).toBeGreaterThan(widenedBefore);
  } finally {
    if (stopped !== undefined) process.kill(stopped, "SIGCONT");
    client.close();
  }
}, 120_000);
