/**
 * A total-order subscription served by f+1 replicas (src/client/narrowing.ts), on a real
 * group: once started it keeps two of the four replicas serving it, and when one of those
 * is stopped (SIGSTOP: its session stays up but it sends nothing) the copies of the other
 * wait for a vote, the subscription goes back to every replica from the next undelivered
 * seq, and every event is delivered once, in order.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { SubscriptionSignal } from "../../src/client/index.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, encode, startClusterWithChannels } from "./client-util.ts";
import type { TestCluster } from "./harness.ts";

const TAG = "sec.alerts";
const EVENTS = 5;

let cluster: TestCluster;

beforeAll(async () => {
  cluster = await startClusterWithChannels();
}, 120_000);

afterAll(async () => {
  for (const proc of cluster?.procs ?? []) proc?.kill("SIGCONT");
  await cluster?.stop();
});

test("two replicas serve the subscription; one stopped, it widens to every replica and loses nothing", async () => {
  const subscriber = clientFor(cluster, cluster.clientKey);
  const publisher = clientFor(cluster, cluster.clientKey);
  const received: string[] = [];
  const signals: SubscriptionSignal[] = [];
  let stopped: number | undefined;
  try {
    await waitFor("sessions with every replica", () => subscriber.replicaStates().every((replica) => replica.state === "ready"));
    // sec.alerts is critical: by default read from every replica, for latency; narrowed on request.
    const subscription = await subscriber.subscribe(TAG, { sources: "quorum", onSignal: (signal) => signals.push(signal) }, (batch) => {
      for (const event of batch.events) received.push(new TextDecoder().decode(event));
    });
    expect(subscription.stats().servingReplicas).toHaveLength(2);
    // By default, or asked to, a subscription of a critical channel keeps every replica.
    for (const sources of ["auto", "all"] as const) {
      const everywhere = await subscriber.subscribe(TAG, { sources }, () => undefined);
      expect(everywhere.stats().servingReplicas).toBeNull();
      await everywhere.close();
    }
    const sent: string[] = [];
    for (let i = 0; i < EVENTS; i++) {
      sent.push(`before ${i}`);
      await publisher.publish(TAG, [encode(`before ${i}`)]);
    }
    await waitFor(`${EVENTS} events`, () => received.length >= EVENTS, 30_000);
    // Narrowed (again, if a busy host made a copy wait long enough to widen meanwhile).
    await waitFor("two serving replicas", () => subscription.stats().servingReplicas !== null, 90_000);
    const serving = subscription.stats().servingReplicas as readonly number[];
    const widenings = subscription.stats().widenings;
    const signalsBefore = signals.length;
    // A serving replica other than replica 0 (the first view's leader, so ordering goes on).
    const target = serving.find((replica) => replica !== 0) as number;
    stopped = cluster.procs[target]?.pid;
    if (stopped === undefined) throw new Error(`replica ${target} is not running`);
    process.kill(stopped, "SIGSTOP");
    for (let i = 0; i < EVENTS; i++) {
      sent.push(`during ${i}`);
      await publisher.publish(TAG, [encode(`during ${i}`)]);
    }
    await waitFor(`all ${2 * EVENTS} events, the last ones after a widening`, () => received.length >= 2 * EVENTS, 60_000);
    expect(received).toEqual(sent);
    expect(subscription.stats().widenings).toBeGreaterThan(widenings);
    // After the stop, the stopped replica is the suspect (its copy missing, or its session timed out).
    const widened = signals.slice(signalsBefore).filter((signal) => signal.t === "widened");
    expect(widened.some((signal) => signal.suspects.includes(target))).toBe(true);
    await subscription.close();
  } finally {
    if (stopped !== undefined) process.kill(stopped, "SIGCONT");
    subscriber.close();
    publisher.close();
  }
}, 120_000);
