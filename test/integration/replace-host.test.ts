// Replacing a host, with real processes, under a steady publish stream and a live
// subscriber that started from the original four-replica cluster file: add-replica 4,
// start it and let it catch up, then remove-replica 1 (not the highest id), which stops
// and exits 0. The group's ids are now 0, 2, 3, 4. `fitb cluster export` writes them
// as they are, with the epoch and the digest of the group the cluster started with; from
// that file a new client, a relay (`fitb relay`) and `fitb sub` publish and deliver, and
// replica 2, restarted from it, is accepted by its peers (which run with the first file),
// resumes from its data directory and orders: with replica 3 stopped, a quorum of three
// needs it. Replica 3, moved to a new host with the exported file and an empty data
// directory, asks the group for its state; a further replica joins from the exported file.
// The history checker finds no acknowledged event lost, none twice, one order.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Subprocess } from "bun";
import { join } from "node:path";
import type { FitbClient } from "../../src/client/index.ts";
import { requireClusterConfig } from "../../src/config/cluster.ts";
import { configDigests, withoutAddresses } from "../../src/config/digest.ts";
import { formatPublicKey, loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { waitFor } from "../helpers/wait.ts";
import { adminOk, collect, groupFollower, startClusterWithChannels } from "./client-util.ts";
import {
  checkTotalOrder,
  historyByCli,
  killAndWait,
  logLines,
  payloadOf,
  publishStream,
  type Stream,
  waitCaughtUp,
} from "./durability-history.ts";
import { freePortRange, relayArgv, logTail, type TestCluster, waitListening } from "./harness.ts";

const TAG = "sec.alerts";
const WAIT_MS = 60_000;

let cluster: TestCluster;
let publisher: FitbClient;
let subscriber: FitbClient;
const others: FitbClient[] = [];
let relay: Subprocess | null = null;
/** The cluster file each replica starts from when not the first one (the exported file, once written). */
const configOf = new Map<number, string>();
/** Further arguments of `fitb replica` per replica: the added ones' keys and data directories. */
const argsOf = new Map<number, string[]>();
const keyPath = (id: number): string => join(cluster.dir, `replica-${id}.key`);

/** A client of `configPath` (with `keyPath`, by default the cluster's client key) that reads the group every second. */
const follower = (configPath: string, keyPath = cluster.clientKey): FitbClient => groupFollower(configPath, keyPath);

const admin = (args: string[]): Promise<void> => adminOk(cluster, args);

/** Waits until `replicas` started the epoch of `members`, and the live subscriber follows it. */
async function waitGroup(replicas: readonly number[], members: readonly number[]): Promise<void> {
  const started = (id: number): boolean =>
    logLines(cluster, id, "epoch started").some((line) => JSON.stringify(line["members"]) === JSON.stringify(members));
  await waitFor(
    `replicas ${replicas.join(",")} to start the epoch of members ${members.join(",")}`,
    () => replicas.every(started),
    WAIT_MS,
    () => replicas.map((id) => `replica ${id}: ${logTail(cluster, id, 5)}`).join("\n"),
  );
  await waitFor(
    `the subscriber to follow members ${members.join(",")}`,
    () => JSON.stringify(subscriber.membership.ids) === JSON.stringify(members),
    WAIT_MS,
    () => JSON.stringify(subscriber.membership),
  );
}

/** Makes replica `id`'s key with `fitb keygen`; returns its public key as add-replica takes it. */
async function replicaKey(id: number): Promise<string> {
  const run = await cluster.fitb(["keygen", "--out", keyPath(id)]);
  if (run.code !== 0) throw new Error(`keygen: ${run.stderr}`);
  return formatPublicKey(loadSigningKeyFile(keyPath(id)).key.publicKey);
}

/** Starts replica `id` again with a fresh log (waitListening reads it) and waits until it listens. */
async function restart(id: number): Promise<void> {
  (cluster.logs[id] as string[]).length = 0;
  cluster.start(id);
  await waitListening(cluster, [id]);
}

/** A new key made with `fitb keygen`, registered as a publisher on TAG by `admin` (a client of the exported file). */
async function publisherKey(admin: FitbClient, name: string): Promise<string> {
  const path = join(cluster.dir, name);
  const run = await cluster.fitb(["keygen", "--out", path]);
  if (run.code !== 0) throw new Error(`keygen: ${run.stderr}`);
  await admin.admin({ t: "register", tag: TAG, role: "publisher", key: loadSigningKeyFile(path).key.publicKey });
  return path;
}

/** `fitb relay` from `configPath` with `keyPath` on a free port; resolves once it listens. */
async function startRelay(configPath: string, keyPath: string): Promise<number> {
  const port = freePortRange(1);
  const proc = Bun.spawn(relayArgv(configPath, keyPath, port), {
    stdout: "pipe",
    stderr: "pipe",
  });
  relay = proc;
  let stderr = "";
  void (async () => {
    for await (const chunk of proc.stderr) stderr += new TextDecoder().decode(chunk);
  })();
  await waitFor(
    "fitb relay to listen",
    () => stderr.includes("listening on"),
    WAIT_MS,
    () => stderr,
  );
  return port;
}

/** Publishes `count` events through the relay's line protocol, one PUB at a time, as a stream. */
async function publishThroughRelay(port: number, prefix: string, count: number): Promise<Stream> {
  const stream: Stream = { tag: TAG, prefix, acked: [], attempted: new Set(), failures: 0 };
  let text = "";
  const socket = await Bun.connect({
    hostname: "127.0.0.1",
    port,
    socket: {
      data(_socket, chunk) {
        text += new TextDecoder().decode(chunk);
      },
    },
  });
  try {
    for (let r = 0; r < count; r++) {
      const payload = payloadOf(prefix, r, 0);
      stream.attempted.add(payload);
      socket.write(`PUB ${TAG} ${payload}\n`);
      await waitFor(
        `the relay to answer PUB ${r}`,
        () => text.split("\n").length > r + 1,
        WAIT_MS,
        () => text,
      );
      const answer = text.split("\n")[r] as string;
      const match = /^\+OK sec\.alerts (\d+)$/.exec(answer);
      if (match === null) stream.failures++;
      else stream.acked.push({ payload, seq: Number(match[1]) });
    }
  } finally {
    socket.end();
  }
  return stream;
}

beforeAll(async () => {
  cluster = await startClusterWithChannels({
    replicas: 4,
    replicaArgs: (id) => argsOf.get(id) ?? [],
    replicaConfig: (id) => configOf.get(id),
  });
  // Replicas 4 and 5 are not in the cluster file: their own keys and data directories.
  for (const id of [4, 5]) {
    cluster.logs[id] = [];
    cluster.procs[id] = null;
    argsOf.set(id, ["--key", keyPath(id), "--data", join(cluster.dir, `data-${id}`)]);
  }
  publisher = follower(cluster.configPath);
  subscriber = follower(cluster.configPath);
}, 120_000);

afterAll(async () => {
  relay?.kill("SIGKILL");
  await relay?.exited;
  for (const client of [publisher, subscriber, ...others]) client?.close();
  for (const id of [4, 5]) await killAndWait(cluster, id);
  await cluster.stop();
});

describe("replacing a host: ids 0, 2, 3, 4 after it, in the running group and in the exported file", () => {
  test("add 4, remove 1, export; new clients, a relay, fitb sub and replica 2 restarted use the exported file; nothing lost", async () => {
    const live = await collect(subscriber, TAG, 1);
    const streams: Stream[] = [];
    let running = true;
    const steady = publishStream(publisher, TAG, "s", () => running, 1);
    try {
      const key4 = await replicaKey(4);

      // The new host joins and catches up.
      await admin(["add-replica", "--id", "4", "--host", "127.0.0.1", "--port", String(freePortRange(1)), "--replica-key", key4]);
      await waitGroup([0, 1, 2, 3], [0, 1, 2, 3, 4]);
      cluster.start(4);
      await waitListening(cluster, [4]);
      await waitCaughtUp(subscriber, 4, WAIT_MS);

      // The old host leaves: it says so and exits 0.
      const old = cluster.procs[1];
      await admin(["remove-replica", "--id", "1"]);
      await waitGroup([0, 2, 3, 4], [0, 2, 3, 4]);
      expect(await old?.exited).toBe(0);
      cluster.procs[1] = null;
      expect(logLines(cluster, 1, "this replica was removed from the group: it stops ordering and serving clients")).toHaveLength(1);

      // The cluster file of the running group, gap and all.
      const path = join(cluster.dir, "exported.toml");
      const run = await cluster.fitb(["cluster", "export", "--config", cluster.configPath, "--key", cluster.adminKey, "--out", path]);
      expect(`${run.code} ${run.stderr}`).toStartWith("0 ");
      expect(run.stderr).toContain("epoch 2, n=4, f=1");
      const exported = requireClusterConfig(path);
      expect(exported.replicas.map((replica) => replica.id)).toEqual([0, 2, 3, 4]);
      expect(exported.replicas.map((replica) => replica.publicKeyText)[3]).toBe(key4);
      expect(exported.epoch).toBe(2);
      expect(configDigests(exported)).toEqual(withoutAddresses(configDigests(requireClusterConfig(cluster.configPath))));
      const check = await cluster.fitb(["config", "check", path]);
      expect(check.stdout).toBe("ok: cluster it, n=4, f=1, 4 replicas (ids 0, 2, 3, 4) (the group of epoch 2)\n");
      configOf.set(2, path);

      // An admin of the exported file registers two new publishers (each publisher key has its own seqs).
      const exportedAdmin = follower(path, cluster.adminKey);
      others.push(exportedAdmin);
      const freshKey = await publisherKey(exportedAdmin, "fresh.key");
      const relayKey = await publisherKey(exportedAdmin, "relay.key");

      // A new client of the exported file: it publishes and takes nothing new from the group.
      const fresh = follower(path, freshKey);
      others.push(fresh);
      const fromFresh = await publishStream(fresh, TAG, "n", 10, 1);
      streams.push(fromFresh);
      expect(fromFresh.acked.length).toBe(10);
      await waitFor("the new client to read the group", () => fresh.membership.epoch === 2, WAIT_MS);
      expect(fresh.membership).toMatchObject({ ids: [0, 2, 3, 4], changes: 0, refused: 0 });

      // A relay of the exported file.
      const relayStream = await publishThroughRelay(await startRelay(path, relayKey), "r", 10);
      streams.push(relayStream);
      expect(relayStream.acked.length).toBe(10);

      // Replica 2 restarted from the exported file: its peers (first file) accept it, it resumes its epoch and catches up.
      await killAndWait(cluster, 2);
      await restart(2);
      await waitCaughtUp(subscriber, 2, WAIT_MS);
      expect(logLines(cluster, 2, "resuming the epoch from the data directory")[0]).toMatchObject({ epoch: 2 });
      for (const id of [0, 2, 3, 4]) expect(logLines(cluster, id, "peer refused: its cluster file differs")).toEqual([]);

      // With replica 3 down, a quorum of three of 0, 2, 4 needs the replica started from the exported file.
      await killAndWait(cluster, 3);
      const down = await publishStream(publisher, TAG, "d", 20, 1);
      streams.push(down);
      expect(down.acked.length).toBe(20);
      await restart(3);

      // Replica 3 on a new host: the exported file lists it, its data directory is new. It
      // asks the group for its state, as an added replica does, rather than start the
      // file's group as epoch 0.
      await killAndWait(cluster, 3);
      configOf.set(3, path);
      argsOf.set(3, ["--data", join(cluster.dir, "data-3-new")]);
      await restart(3);
      await waitCaughtUp(subscriber, 3, WAIT_MS);
      expect(
        logLines(cluster, 3, "the cluster file lists the group of a later epoch and the data directory holds none: asking the group"),
      ).toHaveLength(1);
      expect(logLines(cluster, 3, "learned the group from its replicas")[0]).toMatchObject({ epoch: 2, n: 4 });

      // A further host joins from the exported file: it learns the group from the file's replicas (ids 0, 2, 3, 4).
      const key5 = await replicaKey(5);
      await admin(["add-replica", "--id", "5", "--host", "127.0.0.1", "--port", String(freePortRange(1)), "--replica-key", key5]);
      await waitGroup([0, 2, 3, 4], [0, 2, 3, 4, 5]);
      configOf.set(5, path);
      cluster.start(5);
      await waitListening(cluster, [5]);
      await waitCaughtUp(subscriber, 5, WAIT_MS);
      expect(logLines(cluster, 5, "learned the group from its replicas")[0]).toMatchObject({ epoch: 3, n: 5 });
    } finally {
      running = false;
      streams.push(await steady);
    }
    // `fitb sub` from the exported file reads the whole history; the live subscriber (first file) delivered it as it came.
    const last = Math.max(...streams.flatMap((stream) => stream.acked.map((ack) => ack.seq ?? 0)));
    await waitFor(`the live subscriber to deliver up to seq ${last}`, () => live.events.some((event) => event.seq >= last), WAIT_MS);
    await live.close();
    const history = await historyByCli(cluster, TAG, last, configOf.get(2) as string);
    expect(history).toHaveLength(last);
    expect(streams.at(-1)?.acked.length ?? 0).toBeGreaterThan(0);
    expect(checkTotalOrder(streams, history, live.events)).toEqual([]);
    console.log(
      `replace-host: ${history.length} events in the history, ${live.events.length} delivered live, steady stream failures ${streams.at(-1)?.failures}`,
    );
  }, 300_000);
});
