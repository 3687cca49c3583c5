/**
 * Read-your-writes after admin commands (wire/PROTOCOL.md 6.3), on four real replica
 * processes: a channel can be used right after it is created or a key registered, from
 * the client that made the change and from any other, while replicas lag behind.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { FitbClient } from "../../src/client/index.ts";
import { loadPublicKeyFile, SigningKey, writeKeyPairFiles } from "../../src/crypto/keys.ts";
import { join } from "node:path";
import { CLASSES, clientFor, collect, encode, waitForCount } from "./client-util.ts";
import { waitFor } from "../helpers/wait.ts";
import { startCluster, type TestCluster } from "./harness.ts";

const ROUNDS = 8;

describe("read-your-writes after admin commands", () => {
  let cluster: TestCluster;
  let admin: FitbClient;
  const clients: FitbClient[] = [];

  beforeAll(async () => {
    cluster = await startCluster();
    admin = clientFor(cluster, cluster.adminKey);
  }, 60_000);

  afterAll(async () => {
    for (const client of [admin, ...clients]) client?.close();
    await cluster?.stop();
  });

  function client(keyPath: string): FitbClient {
    const made = clientFor(cluster, keyPath);
    clients.push(made);
    return made;
  }

  /** Waits until every replica reports at least `count` answers held for a later decision. */
  async function heldEverywhere(count: number): Promise<void> {
    await waitFor(`${count} answers held at every replica`, async () => {
      const status = await admin.status();
      return status.replicas.every((replica) => replica.answer?.ok === true && (replica.answer.value.heldForExecution ?? 0) >= count);
    });
  }

  test("a replica behind the client's floor holds its answer until it has executed it (channel-info, subscribe, unordered publish)", async () => {
    const base = await admin.admin({
      t: "create-channel",
      tag: "rw.base",
      fault: "crash",
      order: "none",
      priority: "normal",
      public: true,
    });
    expect(base.at).toBeGreaterThan(0);
    const at = base.at as number;
    // A client that knows of decisions up to at + 2 (as if another process had printed
    // them) asks about a channel that does not exist yet, and subscribes to it.
    const probeKeyPath = join(cluster.dir, "late-probe.key");
    const probeKey = SigningKey.generate();
    writeKeyPairFiles(probeKeyPath, probeKey, { overwrite: false });
    const reader = client(cluster.clientKey);
    reader.observeExecuted(at + 1);
    const info = reader.channelInfo("rw.late");
    await heldEverywhere(1);
    await admin.admin({ t: "create-channel", tag: "rw.late", fault: "byzantine", order: "total", priority: "high", public: true });
    expect((await info).tag).toBe("rw.late");

    // A subscription to a private channel by a key not yet registered as its subscriber.
    const created = await admin.admin({
      t: "create-channel",
      tag: "rw.private",
      fault: "crash",
      order: "total",
      priority: "normal",
      public: false,
    });
    const subscriber = client(cluster.clientKey);
    // The two registrations below will be the next two decisions.
    subscriber.observeExecuted((created.at as number) + 2);
    const subscribing = collect(subscriber, "rw.private", 1);
    await heldEverywhere(1);
    const clientKey = loadPublicKeyFile(`${cluster.clientKey}.pub`);
    await admin.admin({ t: "register", tag: "rw.private", role: "subscriber", key: clientKey });
    await admin.admin({ t: "register", tag: "rw.private", role: "publisher", key: clientKey });
    const received = await subscribing;
    await reader.publish("rw.private", [encode("for registered eyes")]);
    await waitForCount(received.events, 1, "rw.private");
    await received.close();

    // Publish by a key that is not registered yet: the replicas hold the refusal.
    const probe = client(probeKeyPath);
    await probe.channelInfo("rw.base");
    // The registration below will be the next decision.
    const last = (await admin.status()).lastDecided as number;
    probe.observeExecuted(last + 1);
    const published = probe.publish("rw.base", [encode("held until registered")]);
    await heldEverywhere(1);
    await admin.admin({ t: "register", tag: "rw.base", role: "publisher", key: probeKey.publicKey });
    const ack = await published;
    expect(ack.tag).toBe("rw.base");
  }, 60_000);

  test(`create, register, then subscribe and publish at once from other clients, with replicas paused, ${ROUNDS} rounds: never refused`, async () => {
    const publisherKey = loadPublicKeyFile(`${cluster.clientKey}.pub`);
    for (let round = 0; round < ROUNDS; round++) {
      const c = CLASSES[round % CLASSES.length] as (typeof CLASSES)[number];
      const tag = `rw.r${round}`;
      const paused = round % cluster.n;
      const alsoPaused = (round + 1) % cluster.n;
      // One replica misses the admin commands entirely...
      cluster.procs[paused]?.kill("SIGSTOP");
      await admin.admin({ t: "create-channel", tag, fault: c.fault, order: c.order, priority: c.priority, public: round % 2 === 0 });
      await admin.admin({ t: "register", tag, role: "publisher", key: publisherKey });
      if (round % 2 === 1) await admin.admin({ t: "register", tag, role: "subscriber", key: publisherKey });
      // ...then comes back behind, while another stops for a moment: clients that never
      // saw the admin commands use the channel at once.
      cluster.procs[alsoPaused]?.kill("SIGSTOP");
      cluster.procs[paused]?.kill("SIGCONT");
      const subscriber = client(cluster.clientKey);
      const publisher = client(cluster.clientKey);
      const subscribing = collect(subscriber, tag, c.order === "total" ? 1 : 0);
      const publishing = publisher.publish(tag, [encode(`${tag} a`), encode(`${tag} b`)]);
      cluster.procs[alsoPaused]?.kill("SIGCONT");
      const received = await subscribing;
      const ack = await publishing;
      expect(ack.span).toBe(2);
      await waitForCount(received.events, 2, tag);
      expect(received.events.map((e) => e.payload).sort()).toEqual([`${tag} a`, `${tag} b`]);
      await received.close();
      subscriber.close();
      publisher.close();
    }
  }, 240_000);
});
