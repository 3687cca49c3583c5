// Revoking and inspecting keys with real replica processes and the `fitb` command:
// `admin unregister` makes every replica refuse the revoked publisher's later publishes,
// ends a revoked subscriber's live subscription to a private channel, `list-channels`
// shows the CLASS, key counts, last seq and retention use (the keys with --json), and
// `destroy-channel` asks for --yes when events are stored, also on a crash/none channel,
// where only the f+1 replicas a publish went to store it.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { formatPublicKey, loadSigningKeyFile } from "../../src/crypto/keys.ts";
import type { Frame } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, encode, fitbOk, publishFrame, rawSession } from "./client-util.ts";
import { BUN, MAIN, startCluster, type TestCluster } from "./harness.ts";

let cluster: TestCluster;
let A: string[];
let C: string[];
let probe: string;
let subKeyPath: string;
let subscriber: string;

function ok(args: string[]): Promise<string> {
  return fitbOk(cluster, args);
}

beforeAll(async () => {
  cluster = await startCluster();
  A = ["--config", cluster.configPath, "--key", cluster.adminKey];
  C = ["--config", cluster.configPath, "--key", cluster.clientKey];
  probe = formatPublicKey(loadSigningKeyFile(cluster.clientKey).key.publicKey);
  subKeyPath = join(cluster.dir, "console.key");
  await ok(["keygen", "--out", subKeyPath]);
  subscriber = formatPublicKey(loadSigningKeyFile(subKeyPath).key.publicKey);
  await ok(["admin", ...A, "create-channel", "sec.alerts", "--fault", "byzantine", "--order", "total", "--priority", "critical"]);
  await ok(["admin", ...A, "create-channel", "net.links", "--fault", "crash", "--order", "none", "--public"]);
  for (const tag of ["sec.alerts", "net.links"]) await ok(["admin", ...A, "register", tag, "--publisher", probe]);
  await ok(["admin", ...A, "register", "sec.alerts", "--subscriber", subscriber]);
}, 60_000);

afterAll(async () => {
  await cluster.stop();
});

describe("admin unregister", () => {
  test("a revoked publisher's later publishes are refused by every replica, on both paths", async () => {
    expect(await ok(["pub", ...C, "sec.alerts", "before"])).toBe("+OK sec.alerts 1\n");
    expect(await ok(["pub", ...C, "net.links", "before"])).toMatch(/^\+OK net\.links \d+\n$/);
    let at = 0;
    for (const tag of ["sec.alerts", "net.links"]) {
      const out = await ok(["admin", ...A, "unregister", tag, "--publisher", probe]);
      expect(out).toContain(`ok: unregistered ${probe} as publisher of ${tag}`);
      at = Number(/executed at decided seq (\d+)/.exec(out)?.[1]);
    }
    // Each replica on its own, judged once it has executed the revocations (`after`).
    const key = loadSigningKeyFile(cluster.clientKey).key;
    for (let id = 0; id < cluster.n; id++) {
      const frames: Frame[] = [];
      const session = rawSession(cluster, id, key, frames);
      session.start();
      try {
        await waitFor(`a session with replica ${id}`, () => session.isReady);
        session.send(publishFrame(key, 2, "sec.alerts", "after", at));
        session.send(publishFrame(key, 1_000, "net.links", "after", at));
        const replies = () => frames.flatMap((frame) => (frame.type === FrameType.REPLY ? [frame.body] : []));
        await waitFor(`two replies from replica ${id}`, () => replies().length === 2);
        for (const reply of replies()) {
          expect(reply.ok ? "ok" : `${reply.code} ${reply.reason}`).toMatch(
            /^UNAUTHORIZED publisher is not registered on (sec\.alerts|net\.links)$/,
          );
        }
      } finally {
        session.close();
      }
    }
    const refused = await cluster.fitb(["pub", ...C, "sec.alerts", "after"]);
    expect(refused.code).toBe(1);
    expect(refused.stdout + refused.stderr).toContain("UNAUTHORIZED");
    // Registered again, the key publishes again (its sequence space went on).
    await ok(["admin", ...A, "register", "sec.alerts", "--publisher", probe]);
    expect(await ok(["pub", ...C, "sec.alerts", "again"])).toBe("+OK sec.alerts 2\n");
  }, 60_000);

  test("a revoked subscriber's live subscription to a private channel ends, and `fitb sub` says why", async () => {
    const sub = Bun.spawn([BUN, MAIN, "sub", "--config", cluster.configPath, "--key", subKeyPath, "sec.alerts", "--from", "1"], {
      stdout: "pipe",
      stderr: "pipe",
    });
    const out: string[] = [];
    const err: string[] = [];
    void (async () => {
      for await (const chunk of sub.stdout) out.push(new TextDecoder().decode(chunk));
    })();
    void (async () => {
      for await (const chunk of sub.stderr) err.push(new TextDecoder().decode(chunk));
    })();
    try {
      await waitFor(
        "the subscriber's first event",
        () => out.join("").includes("before"),
        20_000,
        () => out.join("") + err.join(""),
      );
      await ok(["admin", ...A, "unregister", "sec.alerts", "--subscriber", subscriber]);
      expect(await sub.exited).toBe(1);
      expect(err.join("")).toMatch(/UNAUTHORIZED.*the subscriber key was unregistered from sec\.alerts/);
    } finally {
      sub.kill("SIGKILL");
    }
    const again = await cluster.fitb(["sub", "--config", cluster.configPath, "--key", subKeyPath, "sec.alerts", "--from", "1"]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/UNAUTHORIZED.*subscriber is not registered on sec\.alerts/);
  }, 60_000);

  test("unregistering a key that is not registered is refused, naming the key", async () => {
    const run = await cluster.fitb(["admin", ...A, "unregister", "sec.alerts", "--subscriber", probe]);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain("the key is not a registered subscriber of sec.alerts");
  }, 30_000);
});

describe("admin list-channels and destroy-channel", () => {
  test("list-channels shows CLASS, key counts, last seq and retention use; --json the keys", async () => {
    const table = (await ok(["admin", ...A, "list-channels"])).trimEnd().split("\n");
    expect(table[0]).toMatch(/^TAG\s+FAULT\s+ORDER\s+PRIORITY\s+SUBSCRIBE\s+PUBLISHERS\s+SUBSCRIBERS\s+LAST-SEQ\s+RETAINED$/);
    const row = (tag: string) => (table.find((line) => line.startsWith(`${tag} `)) ?? "").split(/\s{2,}/);
    expect(row("sec.alerts").slice(0, 8)).toEqual(["sec.alerts", "byzantine", "total", "critical", "registered", "1", "0", "2"]);
    expect(row("sec.alerts")[8]).toMatch(/^2 events, \d+ B \(0% of /);
    expect(row("net.links").slice(0, 8)).toEqual(["net.links", "crash", "none", "normal", "public", "0", "0", "-"]);
    const json = (await ok(["admin", ...A, "list-channels", "--json"]))
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line));
    const alerts = json.find((channel) => channel.tag === "sec.alerts");
    expect(alerts).toMatchObject({ fault: "byzantine", order: "total", publishers: 1, subscribers: 0, lastSeq: 2, retainedEvents: 2 });
    expect(alerts.publisherKeys).toEqual([probe]);
    expect(alerts.subscriberKeys).toEqual([]);
    // A TAG or a pattern narrows the listing; one that names nothing fails, saying so.
    const one = (await ok(["admin", ...A, "list-channels", "sec.alerts"])).trimEnd().split("\n");
    expect(one.map((line) => line.split(/\s+/)[0])).toEqual(["TAG", "sec.alerts"]);
    const tags = (text: string) =>
      text
        .trim()
        .split("\n")
        .map((line) => JSON.parse(line).tag);
    expect(tags(await ok(["admin", ...A, "list-channels", "sec.*", "--json"]))).toContain("sec.alerts");
    expect(tags(await ok(["admin", ...A, "list-channels", "sec.*", "--json"]))).not.toContain("net.links");
    const none = await cluster.fitb(["admin", ...A, "list-channels", "no.such"]);
    expect(none.code).toBe(1);
    expect(none.stderr).toContain("no channel no.such");
    expect((await cluster.fitb(["admin", ...A, "list-channels", "net.>.x"])).code).toBe(2);
  }, 30_000);

  test("destroy-channel asks for --yes when the channel holds events", async () => {
    const refused = await cluster.fitb(["admin", ...A, "destroy-channel", "sec.alerts"]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/channel sec\.alerts holds 2 events \(\d+ B\), last seq 2; .*--yes/);
    expect(await ok(["admin", ...A, "list-channels"])).toContain("sec.alerts");
    expect(await ok(["admin", ...A, "destroy-channel", "sec.alerts", "--yes"])).toContain("ok: destroyed channel sec.alerts");
    await ok(["admin", ...A, "create-channel", "empty.one", "--fault", "crash", "--order", "total"]);
    expect(await ok(["admin", ...A, "destroy-channel", "empty.one"])).toContain("ok: destroyed channel empty.one");
  }, 30_000);

  test("a crash/none channel's events, on the f+1 replicas its publishes went to, show in list-channels and make destroy-channel ask", async () => {
    await ok(["admin", ...A, "create-channel", "trial.crash", "--fault", "crash", "--order", "none", "--public"]);
    const registered = await ok(["admin", ...A, "register", "trial.crash", "--publisher", probe]);
    const registeredAt = Number(/executed at decided seq (\d+)/.exec(registered)?.[1]);
    const publisher = clientFor(cluster, cluster.clientKey);
    try {
      // One request: each replica that stored it holds all 20 events, whichever f+1 the client chose.
      const ack = await publisher.publish(
        "trial.crash",
        Array.from({ length: 20 }, (_, i) => encode(`ev ${i + 1}`)),
      );
      expect(ack.replicas.length).toBeGreaterThanOrEqual(2);
      // Every replica lists the same keys (the listing's figures come from matching answers).
      await waitFor(`every replica to execute decided seq ${registeredAt}`, async () => {
        const status = await publisher.status();
        return status.replicas.every((replica) => replica.answer?.ok === true && replica.answer.value.lastDecided >= registeredAt);
      });
    } finally {
      publisher.close();
    }
    const table = (await ok(["admin", ...A, "list-channels"])).split("\n");
    expect((table.find((line) => line.startsWith("trial.crash ")) ?? "").split(/\s{2,}/)[8]).toMatch(/^20 events, \d+ B \(0% of /);
    const listed = (await ok(["admin", ...A, "list-channels", "--json"]))
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line))
      .find((channel) => channel.tag === "trial.crash");
    expect(listed).toMatchObject({ fault: "crash", order: "none", lastSeq: null, retainedEvents: 20, reportedEventsMax: 20 });
    const refused = await cluster.fitb(["admin", ...A, "destroy-channel", "trial.crash"]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/channel trial\.crash holds 20 events \(\d+ B\); .*--yes/);
    expect(await ok(["admin", ...A, "list-channels"])).toContain("trial.crash");
    expect(await ok(["admin", ...A, "destroy-channel", "trial.crash", "--yes"])).toContain("ok: destroyed channel trial.crash");
  }, 60_000);
});
