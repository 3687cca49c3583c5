/**
 * Strict priority at egress to subscribers on a real replica group (src/replica/egress.ts):
 * one client session subscribed to a low and a critical channel stops reading while a flood
 * of low events is published, until the replica holds a backlog for it (fitb_client_output_bytes);
 * then one critical event is published and handed to the session (its channel's
 * delivered counter). Once the session reads again, the critical event arrives before the
 * low events that waited in the replica, and every frame opens under the session's MACs.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { loadSigningKeyFile } from "../../src/crypto/keys.ts";
import type { FitbClient } from "../../src/client/index.ts";
import { FrameType } from "../../wire/types.ts";
import { HandSession } from "../helpers/hand-session.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor } from "./client-util.ts";
import { freePortRange, metricValue, startCluster, type TestCluster } from "./harness.ts";

const LOW_TAG = "bulk.logs";
const CRITICAL_TAG = "sec.page";
/** Bytes the replica must hold for the session (past the kernel's buffers) before the critical event. */
const BACKLOG_BYTES_MIN = 1024 * 1024;
const EVENT_BYTES = 16 * 1024;
const EVENTS_PER_PUBLISH = 16;
/** A bound on the flood: the kernel's socket buffers on loopback hold a few MiB. */
const FLOOD_BYTES_MAX = 96 * 1024 * 1024;

let cluster: TestCluster;
let metricsPort: number;
let publisher: FitbClient;

/** One gauge or counter (no labels) of replica 0, or a labelled series given in full. */
const metric = (series: string): Promise<number> => metricValue(metricsPort, series);

beforeAll(async () => {
  metricsPort = freePortRange(1);
  cluster = await startCluster({ replicaArgs: (id) => (id === 0 ? ["--metrics", `127.0.0.1:${metricsPort}`] : []) });
  const admin = clientFor(cluster, cluster.adminKey);
  const key = loadSigningKeyFile(cluster.clientKey).key.publicKey;
  for (const [tag, priority] of [
    [LOW_TAG, "low"],
    [CRITICAL_TAG, "critical"],
  ] as const) {
    await admin.admin({ t: "create-channel", tag, fault: "crash", order: "none", priority, public: true });
    await admin.admin({ t: "register", tag, role: "publisher", key });
  }
  admin.close();
  // Every replica stores each low publish, so that replica 0, the one watched, holds a backlog.
  publisher = clientFor(cluster, cluster.clientKey, { crashNoneTargets: "all" });
}, 120_000);

afterAll(async () => {
  publisher?.close();
  await cluster?.stop();
});

describe("egress priority on a replica's client session", () => {
  test("a critical event overtakes the low backlog waiting for a subscriber that reads slowly", async () => {
    const session = new HandSession(cluster.basePort, loadSigningKeyFile(cluster.clientKey).key);
    await session.handshake();
    session.send({ type: FrameType.SUBSCRIBE, body: { sub: 1, tag: LOW_TAG } });
    session.send({ type: FrameType.SUBSCRIBE, body: { sub: 2, tag: CRITICAL_TAG } });
    await waitFor("both SUB_OKs", () => session.frames.filter((f) => f.type === FrameType.SUB_OK).length === 2, 20_000);
    session.pauseReading();

    // Low events until the replica holds a backlog for the session beyond the kernel's buffers.
    const event = new Uint8Array(EVENT_BYTES).fill(0x6c);
    let published = 0;
    while ((await metric("fitb_client_output_bytes")) < BACKLOG_BYTES_MIN) {
      expect(published).toBeLessThan(FLOOD_BYTES_MAX);
      await Promise.all(
        Array.from({ length: 4 }, () =>
          publisher.publish(
            LOW_TAG,
            Array.from({ length: EVENTS_PER_PUBLISH }, () => event),
          ),
        ),
      );
      published += 4 * EVENTS_PER_PUBLISH * EVENT_BYTES;
    }
    const backlog = await metric("fitb_client_output_bytes");
    const delivered = `fitb_channel_events_delivered_total{tag="${CRITICAL_TAG}",class="crash/none",priority="critical"}`;
    await publisher.publish(CRITICAL_TAG, [new TextEncoder().encode("page")]);
    // Replica 0 handed the critical event to the session (it is the only subscriber there).
    await waitFor("the critical event handed to the session", async () => (await metric(delivered)) >= 1, 20_000);

    session.resumeReading();
    await waitFor(
      "the critical event, then the backlog",
      async () =>
        session.frames.some((f) => f.type === FrameType.EVENTS && f.body.sub === 2) && (await metric("fitb_client_output_bytes")) === 0,
      30_000,
    );
    const events = session.frames.filter((f) => f.type === FrameType.EVENTS);
    const critical = events.findIndex((f) => f.type === FrameType.EVENTS && f.body.sub === 2);
    const lowAfter = events.slice(critical + 1).filter((f) => f.type === FrameType.EVENTS && f.body.sub === 1).length;
    // What waited in the replica (at least BACKLOG_BYTES_MIN, less the frame in progress) came after the critical event.
    expect(lowAfter * EVENTS_PER_PUBLISH * EVENT_BYTES, `backlog ${backlog} bytes, ${published} bytes published`).toBeGreaterThanOrEqual(
      backlog - 2 * EVENTS_PER_PUBLISH * EVENT_BYTES,
    );
    expect(session.frames.some((f) => f.type === FrameType.ERROR)).toBe(false);
    expect(await metric("fitb_egress_overtakes_total")).toBeGreaterThanOrEqual(1);
    session.destroy();
  }, 120_000);
});
