// A publisher over its key's quota (admin set-quota) with real replica processes: once a
// request larger than the quota passed at every replica and the key owes it there, every
// replica refuses its publishes RATE_LIMITED, the client retries them ("not now") until the
// deadline, and the publish then fails -ERR RATE_LIMITED naming the replicas' refusal, not
// -ERR TIMEOUT "no quorum" (src/client/request-tracker.ts, deadlineError). The deadline is
// 5 s: every replica's last answer must be that refusal, which a replica stalled that long
// under load would not give (the publish would then rightly be a TIMEOUT). Afterwards the
// same client publishes again as soon as the quota allows it.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { FitbClient } from "../../src/client/index.ts";
import type { ClientError } from "../../src/client/errors.ts";
import { loadClientSetup } from "../../src/client/setup.ts";
import { formatPublicKey, loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { join } from "node:path";
import { waitFor } from "../helpers/wait.ts";
import type { TestCluster } from "./harness.ts";
import { chargeEveryReplica, startClusterWithChannels } from "./client-util.ts";

let cluster: TestCluster;
let admin: FitbClient;
let probeKey: Uint8Array;

/** Sets (or with no limit, removes) a key's quota (the probe key's by default) and waits until every replica executed it. */
async function setQuota(eventsPerSecond: number | undefined, key: Uint8Array = probeKey): Promise<void> {
  const ack = await admin.admin({ t: "set-quota", key, ...(eventsPerSecond === undefined ? {} : { eventsPerSecond }) });
  const at = ack.at ?? 0;
  await waitFor(`every replica at decided seq ${at}`, async () => {
    const status = JSON.parse(
      (await cluster.fitb(["admin", "--config", cluster.configPath, "--key", cluster.adminKey, "status", "--json"])).stdout || "{}",
    );
    return (status.replicas ?? []).every((replica: { last_decided?: number }) => (replica.last_decided ?? 0) >= at);
  });
}

beforeAll(async () => {
  cluster = await startClusterWithChannels();
  const setup = loadClientSetup(cluster.configPath, cluster.adminKey);
  admin = new FitbClient({ config: setup.config, key: setup.key, timeouts: { requestMs: 20_000 } });
  admin.start();
  probeKey = loadSigningKeyFile(cluster.clientKey).key.publicKey;
}, 60_000);

afterAll(async () => {
  admin?.close();
  await cluster?.stop();
});

describe("publishes over the key's quota until the deadline", () => {
  test("fitb pub: every line -ERR RATE_LIMITED naming the replicas' refusal, no timeout hint", async () => {
    // A key of its own, registered on sec.alerts, with a quota of 1 event/s.
    const keyPath = join(cluster.dir, "owing.key");
    expect((await cluster.fitb(["keygen", "--out", keyPath])).code).toBe(0);
    const owing = loadSigningKeyFile(keyPath).key;
    const owingText = formatPublicKey(owing.publicKey);
    await admin.admin({ t: "register", tag: "sec.alerts", role: "publisher", key: owing.publicKey });
    await setQuota(1, owing.publicKey);
    const lines = Array.from({ length: 30 }, (_, i) => `line ${i}`);
    // One request of 30 events passes at every replica (the key owed nothing) and leaves it owing 29 s of its rate.
    await chargeEveryReplica(cluster, owing, "sec.alerts", 1, lines);
    const run = await cluster.fitb(["pub", "--config", cluster.configPath, "--key", keyPath, "sec.alerts", "--timeout", "5000"], {
      stdin: `${lines.join("\n")}\n`,
    });
    expect(run.code).toBe(1);
    const out = run.stdout.trim().split("\n");
    expect(out).toHaveLength(30);
    const pattern = new RegExp(
      "^-ERR RATE_LIMITED publish to sec\\.alerts \\(seq \\d+\\): 4 of 4 replicas refused it for its rate, retried until the deadline \\(5000 ms\\); " +
        `the last, replica \\d \\(127\\.0\\.0\\.1:\\d+\\): RATE_LIMITED key ${owingText.replace(/[.*+?^${}()|[\]\\/-]/g, "\\$&")} is over its quota of 1 events/s \\(set-quota; a request of \\d+ events?(, more than a second's worth, passes only once the key owes nothing)?; the key owes \\d+ events? from a larger request\\); retry later$`,
    );
    for (const line of out) expect(line).toMatch(pattern);
    expect(run.stdout).not.toContain("TIMEOUT");
    expect(run.stderr).not.toContain("timed out without the acknowledgement");
  }, 90_000);

  test("the client: RATE_LIMITED at the deadline, then the next publish passes once the quota allows it", async () => {
    const setup = loadClientSetup(cluster.configPath, cluster.clientKey);
    const client = new FitbClient({ config: setup.config, key: setup.key, timeouts: { requestMs: 5_000 } });
    client.start();
    try {
      await client.publish("sec.alerts", [new TextEncoder().encode("before")]);
      // Every session up: the requests below go to each replica, one after the other on its session.
      await waitFor("a session to every replica", () => client.readyReplicas().length === 4);
      await setQuota(1);
      const events = Array.from({ length: 10 }, (_, i) => new TextEncoder().encode(`burst ${i}`));
      // The first request of 10 events passes (the key owed nothing) and owes 9 s of its rate; the second waits for it.
      await client.publish("sec.alerts", events);
      const error = (await client.publish("sec.alerts", events).catch((e: unknown) => e)) as ClientError;
      expect(error.code).toBe("RATE_LIMITED");
      expect(error.message).toContain("4 of 4 replicas refused it for its rate");
      await setQuota(undefined);
      // The refused request's numbers were never used: the next one must not wait behind them.
      const ack = await client.publish("sec.alerts", [new TextEncoder().encode("after")]);
      expect(ack.channelSeq).not.toBeNull();
    } finally {
      client.close();
    }
  }, 90_000);
});
