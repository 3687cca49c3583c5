// Per-key quotas with real replica processes and the `fitb` command: `admin set-quota`
// overrides the cluster's defaults for one key at every replica (events/s, bytes/s, open
// subscriptions), refusals name the limit, and a quota with no limits is removed.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { formatPublicKey, loadSigningKeyFile, tryParsePublicKey } from "../../src/crypto/keys.ts";
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
  test("events per second: a request larger than the quota passes once, the next is refused while the key owes, naming the quota; removed, it passes", async () => {
    expect(await setQuota(probe, ["--events-per-second", "1"])).toContain(`ok: set the quota of ${probe}: 1 events/s`);
    // Ten lines go out as one request of 10 events, more than 1 event/s allows at once: it
    // passes (the key's second's worth was unused) and the key owes 9 events, 10 s of its rate.
    const lines = Array.from({ length: 10 }, (_, i) => `burst ${i}`).join("\n");
    const first = await cluster.fitb(["pub", ...C, "sec.alerts"], { stdin: `${lines}\n` });
    expect(first.code).toBe(0);
    expect(first.stdout.trim().split("\n")).toHaveLength(10);
    const refused = await cluster.fitb(["pub", ...C, "sec.alerts", "--timeout", "1500"], { stdin: `${lines}\n` });
    expect(refused.code).toBe(1);
    expect(refused.stdout).toContain(
      `RATE_LIMITED key ${probe} is over its quota of 1 events/s (set-quota; a request of 10 events, more than a second's worth, passes only once the key has a full second's worth unused)`,
    );
    expect(await setQuota(probe, [])).toContain(`ok: removed the quota of ${probe} (the cluster's defaults apply)`);
    const passed = await cluster.fitb(["pub", ...C, "sec.alerts"], { stdin: `${lines}\n` });
    expect(passed.code).toBe(0);
    expect(passed.stdout.trim().split("\n")).toHaveLength(10);
  }, 60_000);

  test("bytes per second: a request larger than the quota passes once, the next is refused while the key owes, naming it", async () => {
    await setQuota(probe, ["--bytes-per-second", "100"]);
    // 2,000 bytes against 100 a second: it passes, and the key owes 20 s of its rate.
    expect(await ok(["pub", ...C, "sec.alerts", "x".repeat(2000)])).toMatch(/^\+OK sec\.alerts \d+\n$/);
    const refused = await cluster.fitb(["pub", ...C, "sec.alerts", "small", "--timeout", "1500"]);
    expect(refused.code).toBe(1);
    expect(refused.stdout).toContain("is over its quota of 100 bytes/s");
    await setQuota(probe, []);
    expect(await ok(["pub", ...C, "sec.alerts", "small"])).toMatch(/^\+OK sec\.alerts \d+\n$/);
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
