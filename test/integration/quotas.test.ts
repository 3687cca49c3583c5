// Per-key quotas with real replica processes and the `fitb` command: `admin set-quota`
// overrides the cluster's defaults for one key at every replica (events/s, bytes/s, open
// subscriptions), refusals name the limit, and a quota with no limits is removed.
import { chargeEveryReplica } from "./client-util.ts";
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { formatPublicKey, loadSigningKeyFile, type SigningKey, tryParsePublicKey } from "../../src/crypto/keys.ts";
import { waitFor } from "../helpers/wait.ts";
import { BUN, MAIN, startCluster, type TestCluster } from "./harness.ts";

let cluster: TestCluster;
let A: string[];
let C: string[];
let probe: string;
const running: Subprocess[] = [];

function loadKeyBytes(text: string): Buffer {
  const parsed = tryParsePublicKey(text);
  if (!parsed.ok) throw new Error(parsed.reason);
  return Buffer.from(parsed.key);
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
}

async function ok(args: string[]): Promise<string> {
  const run = await cluster.fitb(args);
  if (run.code !== 0) throw new Error(`fitb ${args.join(" ")} exited ${run.code}: ${run.stderr}${run.stdout}`);
  return run.stdout;
}

/** A new key (its file in the cluster's directory) registered as a publisher on sec.alerts. */
async function freshPublisher(name: string): Promise<{ path: string; key: SigningKey; text: string }> {
  const path = join(cluster.dir, name);
  await ok(["keygen", "--out", path]);
  const key = loadSigningKeyFile(path).key;
  const text = formatPublicKey(key.publicKey);
  await ok(["admin", ...A, "register", "sec.alerts", "--publisher", text]);
  return { path, key, text };
}

/** Runs set-quota and waits until every replica has executed it (each applies it on its own). */
async function setQuota(key: string, limits: string[]): Promise<string> {
  const out = await ok(["admin", ...A, "set-quota", key, ...limits]);
  const at = Number(/executed at decided seq (\d+)/.exec(out)?.[1]);
  await waitFor(`every replica at decided seq ${at}`, async () => {
    const status = JSON.parse((await cluster.fitb(["admin", ...A, "status", "--json"])).stdout || "{}");
    return (status.replicas ?? []).every((replica: { last_decided?: number }) => (replica.last_decided ?? 0) >= at);
  });
  return out;
}

beforeAll(async () => {
  cluster = await startCluster();
  A = ["--config", cluster.configPath, "--key", cluster.adminKey];
  C = ["--config", cluster.configPath, "--key", cluster.clientKey];
  probe = formatPublicKey(loadSigningKeyFile(cluster.clientKey).key.publicKey);
  for (const tag of ["sec.alerts", "sec.audit"]) {
    await ok(["admin", ...A, "create-channel", tag, "--fault", "byzantine", "--order", "total", "--public"]);
    await ok(["admin", ...A, "register", tag, "--publisher", probe]);
  }
}, 60_000);

afterAll(async () => {
  for (const proc of running) proc.kill("SIGKILL");
  await Promise.all(running.map((proc) => proc.exited));
  await cluster.stop();
});

describe("admin set-quota", () => {
  test("events per second: a request larger than the quota passes; while the key owes, the next is refused naming the quota; removed, it passes", async () => {
    const owing = await freshPublisher("owing-events.key");
    expect(await setQuota(owing.text, ["--events-per-second", "1"])).toContain(`ok: set the quota of ${owing.text}: 1 events/s`);
    // Thirty events in one request against 1 event/s: every replica admits it (the key owed
    // nothing) and charges it, so the key owes 29 s of its rate at each.
    const lines = Array.from({ length: 30 }, (_, i) => `burst ${i}`);
    await chargeEveryReplica(cluster, owing.key, "sec.alerts", 1, lines);
    const pub = ["pub", "--config", cluster.configPath, "--key", owing.path, "sec.alerts"];
    const refused = await cluster.fitb([...pub, "--timeout", "1500"], { stdin: `${lines.join("\n")}\n` });
    expect(refused.code).toBe(1);
    expect(refused.stdout).toContain(`RATE_LIMITED key ${owing.text} is over its quota of 1 events/s (set-quota; a request of `);
    expect(refused.stdout).toContain("; the key owes ");
    expect(await setQuota(owing.text, [])).toContain(`ok: removed the quota of ${owing.text} (the cluster's defaults apply)`);
    const passed = await cluster.fitb(pub, { stdin: `${lines.join("\n")}\n` });
    expect(passed.code).toBe(0);
    expect(passed.stdout.trim().split("\n")).toHaveLength(30);
  }, 60_000);

  test("bytes per second: a request larger than the quota passes; while the key owes, the next is refused naming it", async () => {
    const owing = await freshPublisher("owing-bytes.key");
    await setQuota(owing.text, ["--bytes-per-second", "100"]);
    // 2,000 bytes against 100 a second: admitted and charged at every replica, which the key then owes 20 s of.
    await chargeEveryReplica(cluster, owing.key, "sec.alerts", 1, ["x".repeat(2000)]);
    const pub = ["pub", "--config", cluster.configPath, "--key", owing.path, "sec.alerts"];
    const refused = await cluster.fitb([...pub, "small", "--timeout", "1500"]);
    expect(refused.code).toBe(1);
    expect(refused.stdout).toContain(`RATE_LIMITED key ${owing.text} is over its quota of 100 bytes/s (set-quota; a request of `);
    await setQuota(owing.text, []);
    expect(await ok([...pub, "small"])).toMatch(/^\+OK sec\.alerts \d+\n$/);
  }, 60_000);

  test("list-quotas shows every key's own limits as the replicas agree, and a removed quota is gone from it", async () => {
    const other = join(cluster.dir, "other.key");
    await ok(["keygen", "--out", other]);
    const otherKey = formatPublicKey(loadSigningKeyFile(other).key.publicKey);
    await setQuota(probe, ["--events-per-second", "500", "--subscriptions", "4"]);
    await setQuota(otherKey, ["--bytes-per-second", "9000"]);
    const json = (await ok(["admin", ...A, "list-quotas", "--json"]))
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line));
    expect(json).toEqual(
      [
        { key: probe, eventsPerSecond: 500, bytesPerSecond: null, subscriptions: 4 },
        { key: otherKey, eventsPerSecond: null, bytesPerSecond: 9000, subscriptions: null },
      ].sort((a, b) => Buffer.compare(loadKeyBytes(a.key), loadKeyBytes(b.key))),
    );
    const table = (await ok(["admin", ...C, "list-quotas"])).trim().split("\n");
    expect(table[0]).toMatch(/^KEY +EVENTS\/S +BYTES\/S +SUBSCRIPTIONS$/);
    expect(table).toContainEqual(expect.stringMatching(new RegExp(`^${escapeRegExp(probe)} +500 +none +4$`)));
    expect(table).toContainEqual(expect.stringMatching(new RegExp(`^${escapeRegExp(otherKey)} +default +9000 +default$`)));
    await setQuota(probe, []);
    await setQuota(otherKey, []);
    expect((await ok(["admin", ...A, "list-quotas"])).trim()).toBe("no quotas (every key has the cluster's [limits] defaults)");
  }, 60_000);

  test("subscriptions: past the key's quota a subscription is refused with LIMIT, naming it", async () => {
    const console = join(cluster.dir, "console.key");
    await ok(["keygen", "--out", console]);
    const consoleKey = formatPublicKey(loadSigningKeyFile(console).key.publicKey);
    await setQuota(consoleKey, ["--subscriptions", "1"]);
    const first = Bun.spawn([BUN, MAIN, "sub", "--config", cluster.configPath, "--key", console, "sec.alerts", "--from", "1"], {
      stdout: "pipe",
      stderr: "pipe",
    });
    running.push(first);
    const reader = first.stdout.getReader();
    const chunk = await reader.read();
    expect(new TextDecoder().decode(chunk.value)).toStartWith("sec.alerts 1 ");
    const second = await cluster.fitb(["sub", "--config", cluster.configPath, "--key", console, "sec.audit"]);
    expect(second.code).toBe(1);
    expect(second.stderr).toContain(`LIMIT key ${consoleKey} has 1 subscriptions open at this replica; its quota is 1 (set-quota)`);
    first.kill("SIGTERM");
    await first.exited;
  }, 60_000);
});
