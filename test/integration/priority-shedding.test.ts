/**
 * Priority shedding (src/replica/shedding.ts) in a running cluster: while critical
 * publishes arrive, a replica whose event loop ran late (it is stopped for a moment with
 * SIGSTOP, a lag no load can fake away) refuses a low publish OVERLOADED with a reason
 * naming the policy, counts it as shed (reason="priority") and logs the key and tag; with
 * no urgent traffic the same stall sheds nothing, nor after a critical publish from a key
 * that may not publish there. A client whose publish was shed asks
 * that replica again soon, long before its resend timeout.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { Frame, Reply } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";
import { FitbClient } from "../../src/client/client.ts";
import { loadClientSetup } from "../../src/client/setup.ts";
import { loadSigningKeyFile, SigningKey } from "../../src/crypto/keys.ts";
import { waitFor } from "../helpers/wait.ts";
import { addLowChannel, publishFrame, rawSession, startClusterWithLowChannel } from "./client-util.ts";
import { freePortRange, type TestCluster } from "./harness.ts";

const TARGET_MS = 5;
/** How long replica 0 is stopped: its lag probe then fires this late, far over TARGET_MS. */
const STALL_MS = 200;
const ATTEMPTS = 30;

let cluster: TestCluster;
let metricsPort: number;

beforeAll(async () => {
  metricsPort = freePortRange(1);
  cluster = await startClusterWithLowChannel({
    replicaArgs: (id) => (id === 0 ? ["--metrics", `127.0.0.1:${metricsPort}`, "--urgent-delay-target-ms", String(TARGET_MS)] : []),
  });
});

afterAll(async () => {
  await cluster?.stop();
});

/** Client REQUEST frames replica 0 received (its metrics). */
async function requestsReceived(): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith("fitb_requests_total "));
  if (line === undefined) throw new Error("fitb_requests_total is not in replica 0's metrics");
  return Number(line.split(" ").at(-1));
}

/** Stops replica 0's process for STALL_MS: its event loop runs that late afterwards. */
async function stallReplica0(): Promise<void> {
  const pid = cluster.procs[0]?.pid;
  if (pid === undefined) throw new Error("replica 0 is not running");
  process.kill(pid, "SIGSTOP");
  try {
    await Bun.sleep(STALL_MS); // the stall itself, not a wait for a result
  } finally {
    process.kill(pid, "SIGCONT");
  }
}

test("a low publish is refused OVERLOADED, counted and logged while critical traffic waits; without it a stall sheds nothing", async () => {
  const key: SigningKey = loadSigningKeyFile(cluster.clientKey).key;
  const frames: Frame[] = [];
  const session = rawSession(cluster, 0, key, frames);
  session.start();
  const replyTo = async (seq: number, tag: string): Promise<Reply> => {
    const find = (): Reply | undefined =>
      frames
        .flatMap((frame) => (frame.type === FrameType.REPLY ? [frame.body] : []))
        .find((reply) => reply.seq === seq && (reply.ok ? reply.res?.t === "pub" && "tag" in reply.res && reply.res.tag === tag : true));
    await waitFor(`a reply to ${tag} seq ${seq}`, () => find() !== undefined, 60_000);
    const reply = find() as Reply;
    frames.length = 0;
    return reply;
  };
  try {
    await waitFor("a session with replica 0", () => session.isReady);
    // No urgent traffic: a stalled replica admits low publishes all the same.
    await stallReplica0();
    let low = 1;
    session.send(publishFrame(key, low, "bulk.metrics", "calm"));
    const calm = await replyTo(low, "bulk.metrics");
    expect(calm.ok ? "ok" : `${calm.code} ${calm.reason}`).toBe("ok");
    // A key that may not publish to the critical channel does not make urgent traffic: its
    // "alert" (with a far `after`, so it is not refused before the shedding check) reaches
    // replica 0 (its request counter says so), and the stall after it still sheds nothing.
    const stranger = SigningKey.generate();
    const strangerSession = rawSession(cluster, 0, stranger, []);
    strangerSession.start();
    try {
      await waitFor("a stranger's session with replica 0", () => strangerSession.isReady);
      const received = await requestsReceived();
      strangerSession.send(publishFrame(stranger, 1, "sec.alerts", "not an alert", 1_000_000_000));
      await waitFor("replica 0 received the stranger's request", async () => (await requestsReceived()) > received, 60_000);
      await stallReplica0();
      low++;
      session.send(publishFrame(key, low, "bulk.metrics", "after a stranger's alert"));
      const admitted = await replyTo(low, "bulk.metrics");
      expect(admitted.ok ? "ok" : `${admitted.code} ${admitted.reason}`).toBe("ok");
    } finally {
      strangerSession.close();
    }
    // Critical traffic, then a stall: the next low publish is shed (the share halves per
    // late probe; a loaded machine may need another round for the stall to fall inside
    // the urgent window).
    let critical = 0;
    let shed: Reply | null = null;
    for (let attempt = 0; attempt < ATTEMPTS && shed === null; attempt++) {
      critical++;
      session.send(publishFrame(key, critical, "sec.alerts", `alert ${critical}`));
      const urgent = await replyTo(critical, "sec.alerts");
      expect(urgent.ok ? "ok" : `${urgent.code} ${urgent.reason}`).toBe("ok");
      await stallReplica0();
      low++;
      session.send(publishFrame(key, low, "bulk.metrics", `flood ${low}`));
      const reply = await replyTo(low, "bulk.metrics");
      if (!reply.ok) shed = reply;
    }
    expect(shed === null ? "never shed" : `${shed.ok ? "" : shed.code}`).toBe("OVERLOADED");
    if (shed === null || shed.ok) throw new Error("unreachable");
    expect(shed.reason).toMatch(
      new RegExp(
        `^priority shedding: urgent traffic is waiting \\(event loop lag [\\d.]+ ms, target ${TARGET_MS} ms\\); \\d+% of low publishes are admitted; retry later$`,
      ),
    );
    const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    const shedLine = text
      .split("\n")
      .find((line) => line.startsWith('fitb_channel_events_shed_total{tag="bulk.metrics"') && line.includes('reason="priority"'));
    expect(Number(shedLine?.split(" ").at(-1))).toBeGreaterThanOrEqual(1);
    const audit = cluster.logs[0]
      ?.join("")
      .split("\n")
      .find((line) => line.includes("priority shedding") && line.includes('"tag":"bulk.metrics"'));
    expect(audit).toBeDefined();
    expect(audit).toContain('"audit":"request-refused"');
    expect(audit).toContain('"key":');
  } finally {
    session.close();
  }
}, 180_000);

test("a client asks a replica that shed its publish again soon, not at its resend timeout", async () => {
  // A low byzantine/none channel: a publish is acknowledged by 2f+1 replicas that stored
  // it, each on its own (no ordering, no replica forwards it to another).
  await addLowChannel(cluster, "bulk.ids", "none");
  const setup = loadClientSetup(cluster.configPath, cluster.clientKey);
  // A resend timeout longer than the request's: only the soon retry can ask replica 0
  // again, and without it the publish fails (TIMEOUT) instead of being acknowledged.
  const client = new FitbClient({ config: setup.config, key: setup.key, timeouts: { requestMs: 30_000, resendMs: 600_000 } });
  client.start();
  const replica3 = cluster.procs[3]?.pid;
  if (replica3 === undefined) throw new Error("replica 3 is not running");
  try {
    await waitFor("sessions with every replica", () => client.replicaStates().every((replica) => replica.state === "ready"));
    // The status query (fitb admin status) says which replica runs shedding, with what target.
    const status = await client.status();
    const shedding = status.replicas.map((replica) =>
      replica.answer?.ok === true ? (replica.answer.value.shedding ?? null) : "no answer",
    );
    expect(shedding[0]).toMatchObject({ targetMs: TARGET_MS });
    expect(shedding.slice(1)).toEqual([null, null, null]);
    // With replica 3 stopped, a publish is acknowledged only once replica 0 stored it,
    // and replica 0 stores a publish it shed only if it is asked again.
    process.kill(replica3, "SIGSTOP");
    const shed = (): number => client.transientRefusals.get("OVERLOADED") ?? 0;
    for (let attempt = 0; attempt < ATTEMPTS && shed() === 0; attempt++) {
      await client.publish("sec.alerts", [new TextEncoder().encode(`alert ${attempt}`)]);
      await stallReplica0();
      await client.publish("bulk.ids", [new TextEncoder().encode(`flood ${attempt}`)]);
    }
    expect(shed()).toBeGreaterThanOrEqual(1);
  } finally {
    process.kill(replica3, "SIGCONT");
    client.close();
  }
}, 180_000);
