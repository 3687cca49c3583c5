/**
 * Destroying an unordered channel frees its store at once, with real replicas: every
 * replica deletes the channel's rows (a slice per commit) and its publishers' floors while
 * it runs, not at its next start, and leaves every other channel's rows alone. A replica
 * that was down while the channel was destroyed, and comes back by state transfer, deletes
 * them as soon as it installs the state without the channel.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { join } from "node:path";
import type { FitbClient } from "../../src/client/client.ts";
import { loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { TRIM_ROWS_PER_COMMIT } from "../../src/replica/storage/index.ts";
import { STORE_FILE } from "../../src/replica/storage/store.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, encode, startClusterWithChannels } from "./client-util.ts";
import { dataDirOf, killAndWait, logLines, publishStream, startUntilLogged } from "./durability-history.ts";
import { logTail, type TestCluster, waitListening } from "./harness.ts";

/** The log line a replica writes once a gone channel's rows and floors are deleted. */
const DELETED = "stored events of a channel that no longer exists deleted";
const IDS = [0, 1, 2, 3];

let cluster: TestCluster;
let admin: FitbClient;
let publisher: FitbClient;

beforeAll(async () => {
  cluster = await startClusterWithChannels();
  admin = clientFor(cluster, cluster.adminKey);
  publisher = clientFor(cluster, cluster.clientKey, { crashNoneTargets: "all" });
}, 120_000);

afterAll(async () => {
  publisher?.close();
  admin?.close();
  await cluster?.stop();
});

/** Replica `id`'s stored rows and floors of `tag` (any generation); the replica must be down (it holds its store locked). */
function storedOf(id: number, tag: string): { rows: number; floors: number } {
  const db = new Database(join(dataDirOf(cluster, id), STORE_FILE), { readonly: true });
  try {
    const count = (table: string): number => (db.query(`SELECT COUNT(*) AS c FROM ${table} WHERE tag = ?`).get(tag) as { c: number }).c;
    return { rows: count("unordered"), floors: count("unordered_floor") };
  } finally {
    db.close();
  }
}

/**
 * Makes an unordered channel, registers the client key on it, and publishes `requests`
 * requests of one event to every replica: each is acknowledged once f+1 stored it (a
 * replica whose connection had no room when one went out may miss it).
 */
async function filledChannel(tag: string, requests: number): Promise<void> {
  // After the replicas' restart in the test before, the publisher's sessions come back one
  // by one: a replica it had none to yet would store none of these.
  await waitFor("the publisher's session to every replica", () => publisher.readyReplicas().length === IDS.length, 60_000);
  await admin.admin({ t: "create-channel", tag, fault: "crash", order: "none", priority: "low", public: true });
  await admin.admin({ t: "register", tag, role: "publisher", key: loadSigningKeyFile(cluster.clientKey).key.publicKey });
  for (let i = 0; i < requests; i++) await publisher.publish(tag, [encode(`${tag} ${i}`)]);
}

/** Waits until replica `id` logged the deletion of `tag`'s rows; returns the line. */
async function deletedAt(id: number, tag: string): Promise<Record<string, unknown>> {
  const line = (): Record<string, unknown> | undefined => logLines(cluster, id, DELETED).find((fields) => fields["tag"] === tag);
  await waitFor(
    `replica ${id} to delete ${tag}'s rows`,
    () => line() !== undefined,
    60_000,
    () => logTail(cluster, id),
  );
  return line() as Record<string, unknown>;
}

test("a destroyed unordered channel's stored events are deleted at every running replica, and only its own", async () => {
  // More than one slice's worth, so the deletion takes several commits where all are stored.
  const requests = TRIM_ROWS_PER_COMMIT + 22;
  await publisher.publish("net.links", [encode("kept")]);
  await filledChannel("net.scratch", requests);

  await admin.admin({ t: "destroy-channel", tag: "net.scratch" });
  const deleted: number[] = [];
  for (const id of IDS) deleted.push((await deletedAt(id, "net.scratch"))["batches"] as number);
  // Each request was stored by f+1 replicas at least, and each replica stored some.
  expect(deleted.every((batches) => batches > 0 && batches <= requests)).toBe(true);
  expect(deleted.reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(2 * requests);
  // The line is logged once the deletion is durable: a SIGKILL keeps it.
  for (const id of IDS) await killAndWait(cluster, id);
  for (const id of IDS) expect(storedOf(id, "net.scratch")).toEqual({ rows: 0, floors: 0 });
  // Another unordered channel's rows stay: its one event, stored by f+1 replicas at least.
  expect(IDS.filter((id) => storedOf(id, "net.links").rows === 1).length).toBeGreaterThanOrEqual(2);
  for (const id of IDS) cluster.start(id);
  await waitListening(cluster, IDS);
}, 180_000);

test("a replica that was down while an unordered channel was destroyed deletes its events once a state transfer brings the state without it", async () => {
  await filledChannel("net.brief", 40);
  await killAndWait(cluster, 1);
  const stored = storedOf(1, "net.brief").rows;
  expect(stored).toBeGreaterThan(0);
  await admin.admin({ t: "destroy-channel", tag: "net.brief" });
  // Far past replica 1's log window (256 seqs): it can only catch up by state transfer.
  await publishStream(publisher, "sec.alerts", "gap", 600, 1);
  await startUntilLogged(cluster, 1, "snapshot installed");
  // Its start put the channel's rows back (its own log still has the channel); the state it installed has not.
  expect((await deletedAt(1, "net.brief"))["batches"]).toBe(stored);
  await killAndWait(cluster, 1);
  expect(storedOf(1, "net.brief")).toEqual({ rows: 0, floors: 0 });
}, 300_000);
