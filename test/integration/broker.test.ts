/**
 * The broker end to end: four real `fitb replica` processes on 127.0.0.1, the real client
 * library, every CLASS (src/README.md §3), and replica crashes under f = 1.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { FitbClient } from "../../src/client/index.ts";
import { loadClientSetup } from "../../src/client/setup.ts";
import { sign } from "../../src/crypto/ed25519.ts";
import { loadPublicKeyFile, loadSigningKeyFile, SigningKey } from "../../src/crypto/keys.ts";
import { encodeRequestBody, type Frame } from "../../wire/schemas.ts";
import { requestSigningInput } from "../../wire/session.ts";
import { FrameType } from "../../wire/types.ts";
import { CLASSES, clientFor, collect, createChannels, encode, rawSession, waitForCount } from "./client-util.ts";
import { waitFor } from "../helpers/wait.ts";
import { logLines } from "./durability-history.ts";
import { freePortRange, startCluster, type TestCluster } from "./harness.ts";

const EVENTS_PER_CLASS = 60;

describe("a four-replica cluster", () => {
  let cluster: TestCluster;
  let admin: FitbClient;
  let publisher: FitbClient;
  const others: FitbClient[] = [];

  beforeAll(async () => {
    cluster = await startCluster();
    admin = clientFor(cluster, cluster.adminKey);
    publisher = clientFor(cluster, cluster.clientKey);
    await createChannels(admin, loadPublicKeyFile(`${cluster.clientKey}.pub`));
  }, 60_000);

  afterAll(async () => {
    for (const client of [admin, publisher, ...others]) client?.close();
    await cluster?.stop();
  });

  for (const c of CLASSES) {
    test(`${c.fault}/${c.order} delivers every acknowledged event, once`, async () => {
      const subscriber = clientFor(cluster, cluster.clientKey);
      others.push(subscriber);
      const received = await collect(subscriber, c.tag);
      const acks = [];
      for (let batch = 0; batch < EVENTS_PER_CLASS / 10; batch++) {
        const events = Array.from({ length: 10 }, (_, i) => encode(`${c.tag} event ${batch * 10 + i}`));
        acks.push(await publisher.publish(c.tag, events));
      }
      await waitForCount(received.events, EVENTS_PER_CLASS, c.tag);
      // A last event published after the others: once it is delivered, the subscription
      // has handled what came before it, and nothing more may have come.
      await publisher.publish(c.tag, [encode(`${c.tag} end`)]);
      await waitFor(`${c.tag}: the end marker`, () => received.events.some((e) => e.payload === `${c.tag} end`));
      const payloads = received.events.map((e) => e.payload).filter((p) => p !== `${c.tag} end`);
      expect(received.events.length).toBe(EVENTS_PER_CLASS + 1);
      if (c.order === "total") {
        expect(payloads).toEqual(Array.from({ length: EVENTS_PER_CLASS }, (_, i) => `${c.tag} event ${i}`));
        const seqs = received.events.slice(0, EVENTS_PER_CLASS).map((e) => e.seq);
        expect(seqs).toEqual(Array.from({ length: EVENTS_PER_CLASS }, (_, i) => (seqs[0] as number) + i));
        expect(acks.map((a) => a.channelSeq)).toEqual(Array.from({ length: acks.length }, (_, i) => (seqs[0] as number) + i * 10));
      } else {
        expect(new Set(payloads).size).toBe(EVENTS_PER_CLASS);
        expect([...payloads].sort()).toEqual(Array.from({ length: EVENTS_PER_CLASS }, (_, i) => `${c.tag} event ${i}`).sort());
      }
      await received.close();
    }, 60_000);
  }

  test("QUERY publishers: the registered keys f+1 replicas list; an unknown channel is refused", async () => {
    const publisherKey = loadPublicKeyFile(`${cluster.clientKey}.pub`);
    expect(await admin.publishers("net.links")).toEqual([publisherKey]);
    const error = await admin.publishers("no.such").then(
      () => null,
      (e: Error & { code?: string }) => e,
    );
    expect(error?.code).toBe("UNKNOWN_CHANNEL");
  }, 30_000);

  test("two subscribers of a total-order channel see identical sequences under concurrent publishers", async () => {
    const subA = clientFor(cluster, cluster.clientKey);
    const subB = clientFor(cluster, cluster.adminKey);
    const second = clientFor(cluster, cluster.adminKey);
    others.push(subA, subB, second);
    await admin.admin({ t: "register", tag: "sec.alerts", role: "publisher", key: loadPublicKeyFile(`${cluster.adminKey}.pub`) });
    const a = await collect(subA, "sec.alerts");
    const b = await collect(subB, "sec.alerts");
    const rounds = 20;
    await Promise.all([
      (async () => {
        for (let i = 0; i < rounds; i++) await publisher.publish("sec.alerts", [encode(`p1-${i}`), encode(`p1-${i}b`)]);
      })(),
      (async () => {
        for (let i = 0; i < rounds; i++) await second.publish("sec.alerts", [encode(`p2-${i}`)]);
      })(),
    ]);
    await waitForCount(a.events, rounds * 3, "subscriber A");
    await waitForCount(b.events, rounds * 3, "subscriber B");
    expect(a.events).toEqual(b.events);
    // Each publisher's own events stay in its order (per-publisher FIFO).
    const p1 = a.events.map((e) => e.payload).filter((p) => p.startsWith("p1-"));
    expect(p1).toEqual(Array.from({ length: rounds }, (_, i) => [`p1-${i}`, `p1-${i}b`]).flat());
    await a.close();
    await b.close();
  }, 60_000);

  test("bad input gets a clear refusal and the cluster goes on", async () => {
    await expect(publisher.publish("no.such.channel", [encode("x")])).rejects.toThrow(/UNKNOWN_CHANNEL|no channel/);
    // An admin command signed by a key that is not an admin key is refused by every replica.
    await expect(publisher.admin({ t: "destroy-channel", tag: "net.links" })).rejects.toThrow(/UNAUTHORIZED|admin/);
    const ack = await publisher.publish("net.links", [encode("still fine")]);
    expect(ack.span).toBe(1);
  }, 60_000);

  test("a publisher whose clock is off is refused with a reason naming the clock; with its clock right it goes on with no gap", async () => {
    // Its signed timestamp becomes the event's stored time and the "now" of age retention:
    // a probe must not be able to stamp the future (aging out everyone's events) or the
    // far past (its own acknowledged events trimmed at once).
    const adminPub = loadPublicKeyFile(`${cluster.adminKey}.pub`);
    await admin.admin({ t: "register", tag: "sec.alerts", role: "publisher", key: adminPub });
    let offsetMs = 10 * 60_000;
    const setup = loadClientSetup(cluster.configPath, cluster.adminKey);
    const probe = new FitbClient({
      config: setup.config,
      key: setup.key,
      timeouts: { requestMs: 20_000 },
      now: () => Date.now() + offsetMs,
    });
    probe.start();
    others.push(probe);
    const refusal = (payload: string) =>
      probe.publish("sec.alerts", [encode(payload)]).then(
        () => null,
        (error: Error & { code?: string }) => error,
      );
    const future = await refusal("from the future");
    expect(future?.code).toBe("BAD_REQUEST");
    expect(future?.message).toMatch(/600 s ahead of this replica's clock/);
    // Unordered channels too: live subscribers tell a replayed old event by its time.
    await admin.admin({ t: "register", tag: "net.links", role: "publisher", key: adminPub });
    const unordered = await probe.publish("net.links", [encode("from the future")]).then(
      () => null,
      (error: Error & { code?: string }) => error,
    );
    expect(unordered?.code).toBe("BAD_REQUEST");
    offsetMs = -60 * 60_000;
    const past = await refusal("from the past");
    expect(past?.code).toBe("BAD_REQUEST");
    expect(past?.message).toMatch(/3600 s behind this replica's clock/);
    offsetMs = 0;
    const first = await probe.publish("sec.alerts", [encode("clock fixed 1")]);
    const second = await probe.publish("sec.alerts", [encode("clock fixed 2")]);
    expect(second.channelSeq).toBe((first.channelSeq as number) + 1);
    const history = await collect(publisher, "sec.alerts", 1);
    await waitFor("the history up to the fixed publishes", () => history.events.some((e) => e.payload === "clock fixed 2"), 20_000);
    await history.close();
    const payloads = history.events.map((e) => e.payload);
    expect(payloads).not.toContain("from the future");
    expect(payloads).not.toContain("from the past");
    expect(history.events.map((e) => e.seq)).toEqual(history.events.map((_, i) => i + 1));
  }, 60_000);

  test("an unregistered key's publish to a total-order channel is refused", async () => {
    const setup = loadClientSetup(cluster.configPath, cluster.adminKey);
    const stranger = new FitbClient({ config: setup.config, key: SigningKey.generate(), timeouts: { requestMs: 20_000 } });
    stranger.start();
    others.push(stranger);
    const error = await stranger.publish("storage.disks", [encode("not mine to say")]).then(
      () => null,
      (e: Error & { code?: string }) => e,
    );
    expect(error?.code).toBe("UNAUTHORIZED");
    expect(error?.message).toMatch(/not registered on storage\.disks/);
  }, 30_000);

  test("a retransmitted request that executed a while ago gets its own reply again, not REPLAY", async () => {
    // A client with requests in flight whose replies were lost sends them again; calling
    // an executed request REPLAY would make it publish the same events under new numbers.
    const key = loadSigningKeyFile(cluster.adminKey).key;
    const registered = await admin.admin({ t: "register", tag: "storage.disks", role: "publisher", key: key.publicKey });
    // Sent to one replica directly, so with `after`: that replica judges the requests only
    // once it has executed the registration (PROTOCOL.md 6.3).
    const after = registered.at as number;
    const frames: Frame[] = [];
    const connection = rawSession(cluster, 1, key, frames);
    connection.start();
    try {
      await waitFor("the session", () => connection.isReady);
      const requests = [1, 2, 3].map((seq) => {
        const body = encodeRequestBody({
          v: 1,
          client: key.publicKey,
          seq,
          span: 1,
          ts: Date.now(),
          op: { t: "pub", tag: "storage.disks", events: [encode(`retransmit ${seq}`)] },
        });
        return { type: FrameType.REQUEST, body: { body, sig: sign(key, requestSigningInput(body)), after } } as const;
      });
      const replies = (seq: number) => frames.filter((f) => f.type === FrameType.REPLY && f.body.seq === seq);
      for (const [i, request] of requests.entries()) {
        connection.send(request);
        await waitFor(`the reply to seq ${i + 1}`, () => replies(i + 1).length === 1);
      }
      const first = replies(1)[0];
      expect(first?.type === FrameType.REPLY && first.body.ok).toBe(true);
      connection.send(requests[0] as (typeof requests)[number]);
      await waitFor("the second reply to seq 1", () => replies(1).length === 2);
      expect(replies(1)[1]).toEqual(first as Frame);
    } finally {
      connection.close();
    }
  }, 30_000);

  test("a session may only send requests signed by the key it authenticated with", async () => {
    const sessionKey = loadSigningKeyFile(cluster.clientKey).key;
    const otherKey = loadSigningKeyFile(cluster.adminKey).key;
    const frames: Frame[] = [];
    const connection = rawSession(cluster, 0, sessionKey, frames);
    connection.start();
    try {
      await waitFor("the session", () => connection.isReady);
      const body = encodeRequestBody({
        v: 1,
        client: otherKey.publicKey,
        seq: 1,
        span: 1,
        ts: Date.now(),
        op: { t: "pub", tag: "net.links", events: [encode("x")] },
      });
      connection.send({ type: FrameType.REQUEST, body: { body, sig: sign(otherKey, requestSigningInput(body)) } });
      await waitFor("a REPLY", () => frames.some((f) => f.type === FrameType.REPLY));
      const reply = frames.find((f) => f.type === FrameType.REPLY);
      expect(reply?.type === FrameType.REPLY && !reply.body.ok ? reply.body.code : "ok").toBe("UNAUTHORIZED");
    } finally {
      connection.close();
    }
  }, 30_000);
  test("a publish by a key that is not a registered publisher is refused before its signature is checked", async () => {
    // A key nobody registered, with a session of its own: its request carries a signature
    // that does not verify. Checked first, it would be BAD_SIGNATURE and the session
    // closed; refused first for what it is, it costs the replica no verification.
    const key = SigningKey.generate();
    const frames: Frame[] = [];
    const connection = rawSession(cluster, 0, key, frames);
    connection.start();
    try {
      await waitFor("the session", () => connection.isReady);
      const body = encodeRequestBody({
        v: 1,
        client: key.publicKey,
        seq: 1,
        span: 1,
        ts: Date.now(),
        op: { t: "pub", tag: "sec.alerts", events: [encode("x")] },
      });
      connection.send({ type: FrameType.REQUEST, body: { body, sig: new Uint8Array(64) } });
      await waitFor("a REPLY", () => frames.some((f) => f.type === FrameType.REPLY));
      const reply = frames.find((f) => f.type === FrameType.REPLY);
      expect(reply?.type === FrameType.REPLY && !reply.body.ok ? reply.body.code : "ok").toBe("UNAUTHORIZED");
      expect(reply?.type === FrameType.REPLY && typeof reply.body.at).toBe("number");
      expect(frames.some((f) => f.type === FrameType.ERROR)).toBe(false);
      expect(connection.isReady).toBe(true);
    } finally {
      connection.close();
    }
  }, 30_000);
});

/** Publishes `count` single-event requests to `tag`, one at a time, returning the acked payloads with their seqs. */
async function publishStream(
  client: FitbClient,
  tag: string,
  prefix: string,
  count: number,
  onHalf?: () => void,
): Promise<Map<string, number>> {
  const acked = new Map<string, number>();
  for (let i = 0; i < count; i++) {
    if (i === Math.floor(count / 2)) onHalf?.();
    const payload = `${prefix}-${i}`;
    const ack = await client.publish(tag, [encode(payload)]);
    acked.set(payload, ack.firstSeq);
  }
  return acked;
}

describe("kill -9 of one replica (f = 1)", () => {
  for (const victim of ["a follower", "the leader"] as const) {
    test(`loses no acknowledged event when ${victim} dies mid-stream`, async () => {
      const cluster = await startCluster();
      const admin = clientFor(cluster, cluster.adminKey);
      const publisher = clientFor(cluster, cluster.clientKey);
      const reader = clientFor(cluster, cluster.clientKey);
      try {
        await createChannels(admin, loadPublicKeyFile(`${cluster.clientKey}.pub`));
        const status = await admin.status();
        const leader = status.leader as number;
        const target = victim === "the leader" ? leader : (leader + 1) % cluster.n;
        const live = await collect(reader, "sec.alerts");
        const total = 40;
        const [alerts, disks] = await Promise.all([
          publishStream(publisher, "sec.alerts", "alert", total, () => cluster.kill(target)),
          publishStream(publisher, "storage.disks", "disk", total),
        ]);
        expect(alerts.size).toBe(total);
        expect(disks.size).toBe(total);
        // Live delivery went on through the crash.
        await waitForCount(live.events, total, "live subscriber after the crash");
        // Everything acknowledged is readable from the survivors, at its acknowledged seq, once.
        for (const [tag, acked] of [
          ["sec.alerts", alerts],
          ["storage.disks", disks],
        ] as const) {
          const history = await collect(reader, tag, 1);
          await waitForCount(history.events, total, `history of ${tag}`);
          const bySeq = new Map(history.events.map((e) => [e.seq, e.payload]));
          expect(bySeq.size).toBe(history.events.length);
          for (const [payload, seq] of acked) expect(bySeq.get(seq)).toBe(payload);
          await history.close();
        }
        if (victim === "the leader") {
          await waitFor("a new leader", async () => (await admin.status()).leader !== leader, 20_000);
        }
        await live.close();
      } finally {
        for (const client of [admin, publisher, reader]) client.close();
        await cluster.stop();
      }
    }, 90_000);
  }
});

describe("limits from the cluster file", () => {
  // "all": every replica gets (and refuses) the flood. "quorum" (the default): the f+1
  // replicas the publish went to refuse it, and the client does not take it to the
  // others, whose budgets the burst did not touch: that would get around the key's rate
  // limit there.
  test.each(["all", "quorum"] as const)(
    "a flooding publisher is rate limited and other clients are not held up (crash/none to %s)",
    async (targets) => {
      // One event a second refills the burst in 100 s: however slowly this machine runs,
      // the second request cannot have earned its tokens within the test.
      const cluster = await startCluster({
        limits: { client_events_per_second_max: 1, client_burst_events_max: 100, batch_events_max: 100 },
      });
      const admin = clientFor(cluster, cluster.adminKey);
      const flooder = clientFor(cluster, cluster.clientKey, { crashNoneTargets: targets });
      try {
        await createChannels(admin, loadPublicKeyFile(`${cluster.clientKey}.pub`));
        await admin.admin({ t: "register", tag: "net.links", role: "publisher", key: loadPublicKeyFile(`${cluster.adminKey}.pub`) });
        // Every session up first, so that the burst and the refused publish go to the same replicas.
        await waitFor("the flooder's sessions with every replica", () => flooder.replicaStates().every((r) => r.state === "ready"));
        // The burst passes; a request beyond it is refused with RATE_LIMITED, not queued.
        await flooder.publish(
          "net.links",
          Array.from({ length: 100 }, (_, i) => encode(`flood ${i}`)),
        );
        // The burst itself may have gone to every replica: on a loaded host one of its f+1 can
        // take longer than the first hedge delay (250 ms before any answer) to answer it. What
        // is checked below is that the refused request is not taken elsewhere.
        const widenedBefore = flooder.crashNoneWidened;
        const refused = flooder.publish(
          "net.links",
          Array.from({ length: 100 }, (_, i) => encode(`more ${i}`)),
        );
        let outcome = "pending";
        refused.then(
          () => {
            outcome = "acked";
          },
          (e: Error) => {
            outcome = e.message;
          },
        );
        // Every replica it went to has judged the request, and refused it: no quorum can ack
        // it before the burst refills (100 s).
        const refusing = () => [0, 1, 2, 3].filter((id) => logLines(cluster, id, "request rate-limited").length > 0).length;
        const expected = targets === "all" ? 4 : 2;
        await waitFor(`${targets === "all" ? "every replica" : "f+1 replicas"} to refuse the flood`, () => refusing() >= expected);
        // ... and the client has handled those refusals (a replica logs before it answers).
        await waitFor("the client to hear the refusals", () => (flooder.transientRefusals.get("RATE_LIMITED") ?? 0) >= expected);
        expect(outcome).not.toBe("acked");
        // Refused, it was not taken to the other replicas (that happens in the reply's handler, before this).
        expect(flooder.crashNoneWidened).toBe(widenedBefore);
        // Another key publishes at once.
        const ack = await admin.publish("net.links", [encode("from another key")]);
        expect(ack.span).toBe(1);
        refused.catch(() => undefined);
      } finally {
        admin.close();
        flooder.close();
        await cluster.stop();
      }
    },
    60_000,
  );
});

describe("operations", () => {
  test("a replica serves Prometheus metrics and a status page, and SIGTERM stops it cleanly", async () => {
    const metricsPort = freePortRange(1);
    const cluster = await startCluster({ replicaArgs: (id) => (id === 0 ? ["--metrics", `127.0.0.1:${metricsPort}`] : []) });
    const admin = clientFor(cluster, cluster.adminKey);
    try {
      await createChannels(admin, loadPublicKeyFile(`${cluster.clientKey}.pub`));
      // Replica 0 may be the one replica whose acks the admin did not wait for, so it is
      // given time to execute the four create-channel commands.
      let text = "";
      await waitFor("replica 0's metrics to show 4 channels", async () => {
        const response = await fetch(`http://127.0.0.1:${metricsPort}/metrics`).catch(() => null);
        text = response?.ok === true ? await response.text() : "";
        return /^fitb_channels 4$/m.test(text);
      });
      expect(text).toMatch(/^# TYPE fitb_batches_decided_total counter$/m);
      expect(text).toMatch(/^fitb_batches_decided_total \d+$/m);
      const status = (await (await fetch(`http://127.0.0.1:${metricsPort}/status`)).json()) as { replica: number; channels: number };
      expect(status.replica).toBe(0);
      expect(status.channels).toBe(4);
      const proc = cluster.procs[0];
      proc?.kill("SIGTERM");
      expect(await proc?.exited).toBe(0);
      expect(cluster.logs[0]?.join("")).toContain('"msg":"replica stopped"');
    } finally {
      admin.close();
      await cluster.stop();
    }
  }, 60_000);
});
