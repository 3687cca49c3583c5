// Wildcard subscriptions with real replica processes: `fitb sub 'net.*'` follows the
// channels one segment below net and no others, `fitb sub 'net.>'` also follows a channel
// created after it started, from that channel's first event, and the relay's `SUB net.*`
// streams EVENT lines of every matching channel.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Subprocess } from "bun";
import { formatPublicKey, loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { collectOutput } from "../helpers/output.ts";
import { waitFor } from "../helpers/wait.ts";
import { BUN, freePortRange, MAIN, startCluster, type TestCluster } from "./harness.ts";

let cluster: TestCluster;
let A: string[];
let C: string[];
const running: Subprocess[] = [];

async function ok(args: string[]): Promise<string> {
  const run = await cluster.fitb(args);
  if (run.code !== 0) throw new Error(`fitb ${args.join(" ")} exited ${run.code}: ${run.stderr}${run.stdout}`);
  return run.stdout;
}

async function channel(tag: string, fault: string, order: string): Promise<void> {
  await ok(["admin", ...A, "create-channel", tag, "--fault", fault, "--order", order, "--public"]);
  await ok(["admin", ...A, "register", tag, "--publisher", formatPublicKey(loadSigningKeyFile(cluster.clientKey).key.publicKey)]);
}

/** A running process and what it printed so far. */
function spawn(args: string[]): { proc: Subprocess<"ignore", "pipe", "pipe">; out: () => string; err: () => string } {
  const proc = Bun.spawn([BUN, MAIN, ...args], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  running.push(proc);
  return { proc, ...collectOutput(proc) };
}

beforeAll(async () => {
  cluster = await startCluster();
  A = ["--config", cluster.configPath, "--key", cluster.adminKey];
  C = ["--config", cluster.configPath, "--key", cluster.clientKey];
  await channel("net.links", "crash", "none");
  await channel("net.routes", "byzantine", "total");
  await channel("net.links.eth0", "crash", "total");
  await channel("sec.alerts", "byzantine", "total");
}, 60_000);

afterAll(async () => {
  for (const proc of running) proc.kill("SIGKILL");
  await Promise.all(running.map((proc) => proc.exited));
  await cluster.stop();
});

describe("fitb sub with a pattern", () => {
  test("net.* follows net.links and net.routes, each with its own seqs, and nothing deeper or elsewhere", async () => {
    const sub = spawn(["sub", ...C, "net.*"]);
    await waitFor(
      "both channels followed",
      () => /following net\.links\n/.test(sub.err()) && /following net\.routes\n/.test(sub.err()),
      20_000,
      sub.err,
    );
    expect(sub.err()).not.toContain("following net.links.eth0");
    expect(sub.err()).not.toContain("following sec.alerts");
    await ok(["pub", ...C, "net.routes", "route to 10.0.0.0/8 withdrawn"]);
    await ok(["pub", ...C, "net.links", "eth0 down"]);
    await waitFor("both events", () => sub.out().includes("net.routes 1 route") && sub.out().includes("eth0 down"), 20_000, sub.out);
    expect(sub.out()).toMatch(/^net\.links \d+ eth0 down$/m);
    sub.proc.kill("SIGTERM");
  }, 60_000);

  test("net.> also follows a channel created after it started, from that channel's first event", async () => {
    const sub = spawn(["sub", ...C, "net.>", "--format", "{tag} {seq} {payload}"]);
    await waitFor("the existing channels followed", () => sub.err().includes("following net.links.eth0\n"), 20_000, sub.err);
    // Created and published to before the subscription's watch can have seen it.
    await channel("net.links.eth1", "byzantine", "total");
    await ok(["pub", ...C, "net.links.eth1", "carrier lost"]);
    // Standard output and standard error are two pipes, read apart: the note may come in
    // after the event line it was written before.
    await waitFor(
      "the new channel's first event, and the note that it is followed",
      () =>
        sub.out().includes("net.links.eth1 1 carrier lost\n") &&
        sub.err().includes("following net.links.eth1 (created since; from its first retained event)"),
      20_000,
      () => sub.out() + sub.err(),
    );
    sub.proc.kill("SIGTERM");
  }, 60_000);

  test("--from with a pattern, and a malformed pattern, are usage errors", async () => {
    const from = await cluster.fitb(["sub", ...C, "net.*", "--from", "1"]);
    expect(from.code).toBe(2);
    expect(from.stderr).toContain("a pattern subscription is live");
    const bad = await cluster.fitb(["sub", ...C, "net.>.x"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("'>' may only be the last segment");
  }, 30_000);
});

describe("the relay's SUB with a pattern", () => {
  test("SUB sec.* streams EVENT lines of every matching channel", async () => {
    const port = freePortRange(1);
    const relay = spawn(["relay", ...C, "--listen", `127.0.0.1:${port}`, "--socket", "none"]);
    await waitFor("the relay to listen", () => relay.err().includes("listening on"), 20_000, relay.err);
    // It says why it has no Unix socket: it was asked for none (not that none could be found).
    await waitFor("the relay's socket line", () => relay.err().includes("no Unix socket"), 20_000, relay.err);
    expect(relay.err()).toContain("fitb relay: no Unix socket (--socket none)\n");
    let received = "";
    const socket = await Bun.connect({
      hostname: "127.0.0.1",
      port,
      socket: {
        data: (_socket, chunk) => {
          received += new TextDecoder().decode(chunk);
        },
      },
    });
    socket.write("SUB sec.*\n");
    await waitFor(
      "+OK to SUB sec.*",
      () => received.startsWith("+OK\n"),
      20_000,
      () => received,
    );
    socket.write("PUB sec.alerts root login on db1\n");
    await waitFor(
      "the EVENT line",
      () => /EVENT sec\.alerts 1 ed25519:\S+ \d+ root login on db1\n/.test(received),
      20_000,
      () => received,
    );
    socket.end();
    relay.proc.kill("SIGTERM");
  }, 60_000);
});
