/**
 * Shared subscriptions (protocol version 4; src/replica/subscriptions.ts, the client's
 * SubscriptionRouter): several subscriptions of one channel on one connection get each
 * live batch in one EVENTS frame naming them all (`subs`), on a real group. A version 3
 * session is still served, one frame per subscription; every subscription of the client
 * library still gets every event, and each handler its own bytes.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { ReceivedBatch } from "../../src/client/index.ts";
import { loadSigningKeyFile } from "../../src/crypto/keys.ts";
import type { Frame } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";
import { HandSession } from "../helpers/hand-session.ts";
import { waitFor } from "../helpers/wait.ts";
import { CLASSES, clientFor, encode, startClusterWithChannels } from "./client-util.ts";
import { freePortRange, metricValue, type TestCluster } from "./harness.ts";

let cluster: TestCluster;
let metricsPort: number;

beforeAll(async () => {
  metricsPort = freePortRange(1);
  cluster = await startClusterWithChannels({ replicaArgs: (id) => (id === 0 ? ["--metrics", `127.0.0.1:${metricsPort}`] : []) });
}, 60_000);

afterAll(async () => {
  await cluster?.stop();
});

/** The EVENTS frames a hand session got, as [sub or subs, seq]. */
function events(session: HandSession): [number | number[] | undefined, number][] {
  return session.frames
    .filter((f): f is Extract<Frame, { type: typeof FrameType.EVENTS }> => f.type === FrameType.EVENTS)
    .map((f) => [f.body.sub ?? f.body.subs, f.body.seq]);
}

describe("one EVENTS frame for a connection's shared subscriptions of a channel", () => {
  test("version 4 with `shared`: one frame naming both; version 3, even with `shared`: a frame each", async () => {
    const key = loadSigningKeyFile(cluster.clientKey).key;
    const shared = new HandSession(cluster.basePort, key);
    const old = new HandSession(cluster.basePort, key);
    const publisher = clientFor(cluster, cluster.clientKey);
    try {
      expect((await shared.handshake()).v).toBe(4);
      // An older client's HELLO is answered in its own version, and it is served as before.
      expect((await old.handshake(3)).v).toBe(3);
      for (const sub of [7, 9]) shared.send({ type: FrameType.SUBSCRIBE, body: { sub, tag: "sec.alerts", shared: true } });
      // `shared` from a version 3 session (which knows no `subs`) is not honoured.
      for (const sub of [7, 9]) old.send({ type: FrameType.SUBSCRIBE, body: { sub, tag: "sec.alerts", shared: true } });
      for (const session of [shared, old]) {
        await waitFor("two SUB_OKs", () => session.frames.filter((f) => f.type === FrameType.SUB_OK).length === 2, 20_000);
      }
      const ack = await publisher.publish("sec.alerts", [encode("disk 1 failed"), encode("disk 2 failed")]);
      const seq = ack.channelSeq as number;
      await waitFor("the batch at both sessions", () => events(shared).length >= 1 && events(old).length >= 2, 20_000);
      await waitFor("the shared frame counted", async () => (await metricValue(metricsPort, "fitb_events_frames_shared_total")) >= 1);
      expect(events(shared)).toEqual([[[7, 9], seq]]);
      expect(events(old).sort()).toEqual([
        [7, seq],
        [9, seq],
      ]);
    } finally {
      shared.destroy();
      old.destroy();
      publisher.close();
    }
  }, 60_000);

  for (const c of CLASSES) {
    test(`${c.fault}/${c.order}: three subscriptions of one client each get every event, each handler its own bytes`, async () => {
      const subscriber = clientFor(cluster, cluster.clientKey);
      // To every replica: replica 0's shared frames are counted, crash/none's too.
      const publisher = clientFor(cluster, cluster.clientKey, { crashNoneTargets: "all" });
      // Nobody else subscribes in this file: once the earlier tests' subscriptions are gone, the count is ours.
      await waitFor(
        "replica 0 dropped the earlier subscriptions",
        async () => (await metricValue(metricsPort, "fitb_subscriptions")) === 0,
      );
      const before = await metricValue(metricsPort, "fitb_events_frames_shared_total");
      const open = 0;
      try {
        const got: { payloads: string[]; buffers: Map<string, ArrayBufferLike> }[] = [];
        const subscriptions = [];
        for (let i = 0; i < 3; i++) {
          const mine = { payloads: [] as string[], buffers: new Map<string, ArrayBufferLike>() };
          got.push(mine);
          subscriptions.push(
            // Served by every replica (no narrowing to f+1): replica 0 is the one measured.
            await subscriber.subscribe(c.tag, { sources: "all" }, (batch: ReceivedBatch) => {
              for (const event of batch.events) {
                const payload = new TextDecoder().decode(event);
                mine.payloads.push(payload);
                mine.buffers.set(payload, event.buffer);
                // A handler writing over its events must change no other subscription's.
                event.fill(0x21);
              }
            }),
          );
        }
        // Replica 0 (the one measured) holds all three before anything is published.
        await waitFor(
          "replica 0 holds the three subscriptions",
          async () => (await metricValue(metricsPort, "fitb_subscriptions")) >= open + 3,
        );
        const sent: string[] = [];
        for (let batch = 0; batch < 5; batch++) {
          const texts = [0, 1, 2].map((i) => `${c.tag} ${batch * 3 + i}`);
          sent.push(...texts);
          await publisher.publish(c.tag, texts.map(encode));
        }
        await waitFor(`${c.tag}: 15 events at each subscription`, () => got.every((g) => g.payloads.length >= sent.length), 30_000);
        for (const g of got) {
          if (c.order === "total") expect(g.payloads).toEqual(sent);
          else expect([...g.payloads].sort()).toEqual([...sent].sort());
        }
        // Each subscription's events are views into bytes of its own.
        for (const payload of sent) expect(new Set(got.map((g) => g.buffers.get(payload))).size).toBe(3);
        // And the replica sent them shared: one frame per batch for the three.
        await waitFor(
          "replica 0 sent the five batches in shared frames",
          async () => (await metricValue(metricsPort, "fitb_events_frames_shared_total")) >= before + 5,
        );
        for (const subscription of subscriptions) await subscription.close();
      } finally {
        subscriber.close();
        publisher.close();
      }
    }, 60_000);
  }
});
