/**
 * Client-side helpers for integration tests: clients built from a test cluster's files,
 * channel setup through real admin commands, and bounded collection of deliveries.
 */
import { loadClientSetup } from "../../src/client/setup.ts";
import type { CrashNoneTargets } from "../../src/client/request-tracker.ts";
import { FitbClient, ReplicaConnection, type ReceivedBatch, type SubscribeOptions, type Subscription } from "../../src/client/index.ts";
import { requireClusterConfig } from "../../src/config/cluster.ts";
import { sign } from "../../src/crypto/ed25519.ts";
import type { SigningKey } from "../../src/crypto/keys.ts";
import { type AdminCmd, encodeRequestBody, type Frame } from "../../wire/schemas.ts";
import { requestSigningInput } from "../../wire/session.ts";
import { FrameType } from "../../wire/types.ts";
import { testConnectionOptions } from "../helpers/client-session.ts";
import { waitFor } from "../helpers/wait.ts";
import { loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { startCluster, type TestCluster } from "./harness.ts";

/**
 * A started client of the cluster. `crashNoneTargets: "all"` for a test that watches one
 * replica's handling of crash/none publishes: by default a crash/none publish goes to f+1
 * replicas, which need not include the one watched.
 */
export function clientFor(cluster: TestCluster, keyPath: string, options: { crashNoneTargets?: CrashNoneTargets } = {}): FitbClient {
  const setup = loadClientSetup(cluster.configPath, keyPath);
  const client = new FitbClient({ config: setup.config, key: setup.key, timeouts: { requestMs: 20_000 }, ...options });
  client.start();
  return client;
}

export const CLASSES = [
  { tag: "net.links", fault: "crash", order: "none", priority: "normal" },
  { tag: "storage.disks", fault: "crash", order: "total", priority: "high" },
  { tag: "sec.ids", fault: "byzantine", order: "none", priority: "high" },
  { tag: "sec.alerts", fault: "byzantine", order: "total", priority: "critical" },
] as const;

/** Creates the four example channels (public) and registers `publisher` on each; returns the seq of the last command. */
export async function createChannels(admin: FitbClient, publisher: Uint8Array): Promise<number> {
  let at = 0;
  for (const c of CLASSES) {
    const create: AdminCmd = { t: "create-channel", tag: c.tag, fault: c.fault, order: c.order, priority: c.priority, public: true };
    await admin.admin(create);
    const registered = await admin.admin({ t: "register", tag: c.tag, role: "publisher", key: publisher });
    at = Math.max(at, registered.at ?? 0);
  }
  return at;
}

/**
 * Waits until every replica of `cluster` with a running process has decided seq `at` and
 * holds as many channels as the most advanced one. An admin command is answered once a
 * quorum executed it: a replica that was slower to join the group (it catches up from its
 * peers' log a moment later) would otherwise refuse a test's first publishes to an
 * unordered channel, or its first SUBSCRIBE, with UNKNOWN_CHANNEL.
 */
export async function waitChannelsEverywhere(cluster: TestCluster, admin: FitbClient, at: number): Promise<void> {
  const running = cluster.procs.flatMap((proc, id) => (proc === null ? [] : [id]));
  let seen = "no status yet";
  await waitFor(
    `replicas ${running.join(",")} to execute the channels' setup (seq ${at})`,
    async () => {
      const status = await admin.status().catch(() => null);
      if (status === null) return false;
      const answers = new Map(status.replicas.map((r) => [r.id, r.answer?.ok === true ? r.answer.value : null]));
      const most = Math.max(...[...answers.values()].map((a) => a?.channels ?? 0));
      seen = JSON.stringify(running.map((id) => ({ id, lastDecided: answers.get(id)?.lastDecided, channels: answers.get(id)?.channels })));
      return running.every((id) => {
        const answer = answers.get(id);
        return answer !== null && answer !== undefined && answer.lastDecided >= at && answer.channels === most;
      });
    },
    60_000,
    () => seen,
  );
}

/** A started test cluster with the four example channels, the cluster's client key registered on each, and every running replica past their setup. */
export async function startClusterWithChannels(options: Parameters<typeof startCluster>[0] = {}): Promise<TestCluster> {
  const cluster = await startCluster(options);
  const admin = clientFor(cluster, cluster.adminKey);
  try {
    const at = await createChannels(admin, loadSigningKeyFile(cluster.clientKey).key.publicKey);
    await waitChannelsEverywhere(cluster, admin, at);
  } finally {
    admin.close();
  }
  return cluster;
}

/** startClusterWithChannels, plus `bulk.metrics` (byzantine/total, low priority) with the client key registered: a channel to saturate. */
export async function startClusterWithLowChannel(options: Parameters<typeof startCluster>[0] = {}): Promise<TestCluster> {
  const cluster = await startClusterWithChannels(options);
  await addLowChannel(cluster, "bulk.metrics", "total");
  return cluster;
}

/** Creates a byzantine, low-priority, public channel `tag` and registers the cluster's client key as its publisher. */
export async function addLowChannel(cluster: TestCluster, tag: string, order: "none" | "total"): Promise<void> {
  const admin = clientFor(cluster, cluster.adminKey);
  try {
    const key = loadSigningKeyFile(cluster.clientKey).key.publicKey;
    await admin.admin({ t: "create-channel", tag, fault: "byzantine", order, priority: "low", public: true });
    await admin.admin({ t: "register", tag, role: "publisher", key });
  } finally {
    admin.close();
  }
}

export interface Delivered {
  readonly seq: number;
  readonly payload: string;
}

/** Subscribes and collects delivered events (seq per event, payload as text). */
export async function collect(
  client: FitbClient,
  tag: string,
  from?: number,
  options: SubscribeOptions = {},
): Promise<{ events: Delivered[]; close: () => Promise<void>; subscription: Subscription }> {
  const events: Delivered[] = [];
  const decoder = new TextDecoder();
  const subscription = await client.subscribe(tag, from === undefined ? options : { ...options, from }, (batch: ReceivedBatch) => {
    batch.events.forEach((event, index) => events.push({ seq: (batch.seq ?? batch.pubSeq) + index, payload: decoder.decode(event) }));
  });
  return { events, close: () => subscription.close(), subscription };
}

export async function waitForCount(events: readonly unknown[], count: number, what: string, timeoutMs = 30_000): Promise<void> {
  await waitFor(`${what}: ${count} events (have ${events.length})`, () => events.length >= count, timeoutMs);
}

export function encode(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

/** One raw session to one replica of the cluster, collecting every frame it sends (no voting, no resends). */
export function rawSession(cluster: TestCluster, id: number, key: SigningKey, frames: Frame[]): ReplicaConnection {
  const replica = requireClusterConfig(cluster.configPath).replicas[id];
  if (replica === undefined) throw new Error(`no replica ${id}`);
  return new ReplicaConnection(
    { id, host: replica.host, port: replica.port, publicKey: replica.publicKey },
    key,
    { onReady() {}, onFrame: (_c, frame) => frames.push(frame), onDown() {} },
    testConnectionOptions(1 << 20),
  );
}

/** A signed publish REQUEST frame of one event (or of each of `text`'s), `after` set for read-your-writes. */
export function publishFrame(key: SigningKey, seq: number, tag: string, text: string | readonly string[], after?: number): Frame {
  const events = typeof text === "string" ? [text] : text;
  const body = encodeRequestBody({
    v: 1,
    client: key.publicKey,
    seq,
    span: events.length,
    ts: Date.now(),
    op: { t: "pub", tag, events: events.map(encode) },
  });
  const sig = sign(key, requestSigningInput(body));
  return { type: FrameType.REQUEST, body: after === undefined ? { body, sig } : { body, sig, after } };
}

/** Runs `fitb ARGS` against the cluster; its standard output, or an error with everything it printed if it failed. */
export async function fitbOk(cluster: TestCluster, args: string[]): Promise<string> {
  const run = await cluster.fitb(args);
  if (run.code !== 0) throw new Error(`fitb ${args.join(" ")} exited ${run.code}: ${run.stderr}${run.stdout}`);
  return run.stdout;
}

/**
 * Makes `key` owe its quota at every replica: one publish request of `events` (its `seq`
 * on `tag`, the first for a fresh key) goes to each replica on a session of its own, and
 * each one's reply is waited for. A replica replies only to a request it admitted, and
 * admitting it charged the key's rate there; so afterwards every replica has charged it,
 * whatever order later sessions reach them in. (Sent by a client, a replica whose session
 * came up after the request was acknowledged would never see it: its bucket would stay
 * full, and it would admit and forward what the others refuse.)
 */
export async function chargeEveryReplica(
  cluster: TestCluster,
  key: SigningKey,
  tag: string,
  seq: number,
  events: readonly string[],
): Promise<void> {
  const request = publishFrame(key, seq, tag, events);
  const sessions = requireClusterConfig(cluster.configPath).replicas.map((replica) => {
    const frames: Frame[] = [];
    const connection = rawSession(cluster, replica.id, key, frames);
    connection.start();
    return { id: replica.id, connection, frames };
  });
  try {
    await Promise.all(
      sessions.map(async ({ id, connection, frames }) => {
        await waitFor(`the session to replica ${id}`, () => connection.isReady);
        connection.send(request);
        await waitFor(`replica ${id}'s reply to seq ${seq}`, () =>
          frames.some((frame) => frame.type === FrameType.REPLY && frame.body.seq === seq),
        );
        const reply = frames.find((frame) => frame.type === FrameType.REPLY && frame.body.seq === seq);
        if (reply?.type !== FrameType.REPLY || !reply.body.ok)
          throw new Error(`replica ${id} refused seq ${seq}: ${JSON.stringify(reply?.body)}`);
      }),
    );
  } finally {
    for (const { connection } of sessions) connection.close();
  }
}

/** A started client of `configPath` with `keyPath` that reads the replica group every second (membership tests). */
export function groupFollower(configPath: string, keyPath: string): FitbClient {
  const setup = loadClientSetup(configPath, keyPath);
  const client = new FitbClient({
    config: setup.config,
    key: setup.key,
    timeouts: { requestMs: 20_000, queryMs: 20_000, membershipRefreshMs: 1_000 },
  });
  client.start();
  return client;
}

/** `fitb admin ARGS` with the cluster's file and admin key; throws unless it printed `ok:`. */
export async function adminOk(cluster: TestCluster, args: string[]): Promise<void> {
  const run = await cluster.fitb(["admin", "--config", cluster.configPath, "--key", cluster.adminKey, ...args]);
  if (run.code !== 0 || !run.stdout.includes("ok:")) throw new Error(`admin ${args.join(" ")}: ${run.code} ${run.stdout}${run.stderr}`);
}
