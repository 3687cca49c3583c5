/**
 * Retention on an unordered channel, with real replicas: an idle channel is trimmed by age
 * (nobody publishes to it any more), and what retention deleted stays refused after a
 * restart: the replica keeps each publisher's floor beside its rows, so a signed request
 * replayed to it then is not stored and delivered again (src/replica/storage/store.ts,
 * unordered_floor).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { FitbClient } from "../../src/client/client.ts";
import { loadSigningKeyFile } from "../../src/crypto/keys.ts";
import type { Frame } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, publishFrame, rawSession } from "./client-util.ts";
import { freePortRange, logTail, startCluster, type TestCluster } from "./harness.ts";

/** The channels' age limit: the smallest a cluster file takes. */
const AGE_SECONDS = 1;
const TAG = "net.links";
/** The replica that stores the event (the only one it is sent to) and is restarted. */
const REPLICA = 0;

let cluster: TestCluster;
let admin: FitbClient;
/** REPLICA's metrics port: its storage says when what it staged is durable. */
let metricsPort = 0;
/** The decided seq of the registration: the first publish names it (`after`), so a replica that has not executed it yet waits (read-your-writes). */
let registeredAt = 0;

beforeAll(async () => {
  metricsPort = freePortRange(1);
  cluster = await startCluster({
    limits: { age_seconds_max: AGE_SECONDS },
    replicaArgs: (id) => (id === REPLICA ? ["--metrics", `127.0.0.1:${metricsPort}`] : []),
  });
  admin = clientFor(cluster, cluster.adminKey);
  const key = loadSigningKeyFile(cluster.clientKey).key;
  await admin.admin({ t: "create-channel", tag: TAG, fault: "crash", order: "none", priority: "normal", public: true });
  registeredAt = (await admin.admin({ t: "register", tag: TAG, role: "publisher", key: key.publicKey })).at ?? 0;
}, 60_000);

afterAll(async () => {
  admin?.close();
  await cluster?.stop();
});

/** The most events any replica says it holds on TAG. */
async function heldMost(): Promise<number | null> {
  const listed = (await admin.listChannels()).find((channel) => channel.tag === TAG);
  return listed?.reportedEventsMax ?? null;
}

/** REPLICA's records staged and not yet durable; null while its metrics lack the series (so a renamed one fails, not passes). */
async function pendingWrites(): Promise<number | null> {
  const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith("fitb_storage_pending_writes "));
  return line === undefined ? null : Number(line.slice("fitb_storage_pending_writes ".length));
}

/** Sends `frame` to REPLICA on a session of its own and returns its one answer. */
async function answerOf(frame: Frame): Promise<{ ok: boolean; code?: string }> {
  const key = loadSigningKeyFile(cluster.clientKey).key;
  const frames: Frame[] = [];
  const session = rawSession(cluster, REPLICA, key, frames);
  session.start();
  try {
    await waitFor(`a session with replica ${REPLICA}`, () => session.isReady, 30_000);
    session.send(frame);
    const replies = () => frames.flatMap((f) => (f.type === FrameType.REPLY ? [f.body] : []));
    await waitFor(`replica ${REPLICA}'s answer`, () => replies().length > 0, 30_000);
    const reply = replies()[0];
    return reply?.ok === true ? { ok: true } : { ok: false, code: reply?.code };
  } finally {
    session.close();
  }
}

test("an idle unordered channel is trimmed by age, and the trimmed request replayed after a restart is refused", async () => {
  const key = loadSigningKeyFile(cluster.clientKey).key;
  // Under load the replica may not have executed the registration yet: `after` makes it wait.
  const first = publishFrame(key, 1, TAG, "eth0 down", registeredAt);
  expect(await answerOf(first)).toEqual({ ok: true });
  // Stored (the positive signal), then gone with no publish after it: the age sweep ran.
  await waitFor("the event stored", async () => (await heldMost()) === 1, 30_000);
  await waitFor("the idle channel trimmed by age", async () => (await heldMost()) === 0, 30_000);
  // The trim is staged in the same turn and written with the next commit, which waits for
  // the fsync in flight: killed before it, the replica would come back with the event.
  await waitFor("the trim durable", async () => (await pendingWrites()) === 0, 30_000);

  cluster.kill(REPLICA);
  cluster.start(REPLICA);
  const replayed = await answerOf(first);
  expect(replayed, logTail(cluster, REPLICA)).toEqual({ ok: false, code: "REPLAY" });
  expect(await heldMost()).toBe(0);
  // The publisher's next seq is taken: the replica is up and judging, not refusing all.
  expect(await answerOf(publishFrame(key, 2, TAG, "eth0 up"))).toEqual({ ok: true });
}, 120_000);
