// Honest command-line failures, with real replica processes and the `fitb` command: a
// closed output pipe ends `fitb sub` quietly, refusals name the key used, plain `fitb sub`
// lines can show time and publisher, a cluster with nothing listening fails at once, and
// a publish that timed out says it may still be ordered, why, and how to check.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { formatPublicKey, loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { BUN, freePortRange, MAIN, startCluster, type TestCluster } from "./harness.ts";
import { fitbOk } from "./client-util.ts";

let cluster: TestCluster;
let A: string[];
let C: string[];
let probe: string;

function ok(args: string[]): Promise<string> {
  return fitbOk(cluster, args);
}

beforeAll(async () => {
  cluster = await startCluster();
  A = ["--config", cluster.configPath, "--key", cluster.adminKey];
  C = ["--config", cluster.configPath, "--key", cluster.clientKey];
  probe = formatPublicKey(loadSigningKeyFile(cluster.clientKey).key.publicKey);
  await ok(["admin", ...A, "create-channel", "sec.alerts", "--fault", "byzantine", "--order", "total", "--public"]);
  await ok(["admin", ...A, "register", "sec.alerts", "--publisher", probe]);
  await ok(["pub", ...C, "sec.alerts", "first"]);
}, 60_000);

afterAll(async () => {
  await cluster.stop();
});

describe("fitb sub", () => {
  test("| head -n 1 ends it quietly, with status 0, at its next write", async () => {
    const sub = `${BUN} ${MAIN} sub ${C.join(" ")} sec.alerts --from 1`;
    const rcFile = join(cluster.dir, "sub.rc");
    const shell = Bun.spawn(["bash", "-c", `${sub} 2>"${rcFile}.err" | head -n 1; echo "\${PIPESTATUS[0]}" > "${rcFile}"`], {
      stdout: "pipe",
      stderr: "pipe",
    });
    // The first line, read as it comes (the whole output ends only when the pipeline does).
    const reader = shell.stdout.getReader();
    let seen = "";
    while (!seen.includes("\n")) {
      const chunk = await reader.read();
      if (chunk.done) break;
      seen += new TextDecoder().decode(chunk.value);
    }
    expect(seen).toBe("sec.alerts 1 first\n");
    // head has exited; the subscription notices at its next write: publish until it does.
    let published = 0;
    while (shell.exitCode === null && published < 50) {
      await ok(["pub", ...C, "sec.alerts", `more ${published++}`]);
    }
    expect(await shell.exited).toBe(0);
    expect(readFileSync(rcFile, "utf8").trim()).toBe("0");
    expect(readFileSync(`${rcFile}.err`, "utf8")).toBe("");
  }, 60_000);

  test("--format shows time and publisher; an unknown field is a usage error", async () => {
    const out = await ok(["sub", ...C, "sec.alerts", "--from", "1", "--count", "1", "--format", "{seq} {time} {publisher} {payload}"]);
    expect(out).toMatch(new RegExp(`^1 \\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z ${probe} first\\n$`));
    const bad = await cluster.fitb(["sub", ...C, "sec.alerts", "--format", "{seq} {when}"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--format: unknown field {when}");
  }, 30_000);

  test("--from other than 0 on an unordered channel is refused before anything is asked of a replica, saying why", async () => {
    await ok(["admin", ...A, "create-channel", "u.ids", "--fault", "byzantine", "--order", "none", "--public"]);
    const refused = await cluster.fitb(["sub", ...C, "u.ids", "--from", "5"]);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain(
      "from 5 on u.ids, an unordered channel (byzantine/none): there only from 0 (every retained event) or no from (live) has a meaning",
    );
    // The client refused it: no replica was asked, so none ended a subscription.
    expect(refused.stderr).not.toContain("ended the subscription");
  }, 30_000);
});

describe("refusals", () => {
  test("a refused publish and a refused subscription name the key used", async () => {
    const stranger = join(cluster.dir, "stranger.key");
    await ok(["keygen", "--out", stranger]);
    const strangerKey = formatPublicKey(loadSigningKeyFile(stranger).key.publicKey);
    const pub = await cluster.fitb(["pub", "--config", cluster.configPath, "--key", stranger, "sec.alerts", "x"]);
    expect(pub.code).toBe(1);
    expect(pub.stdout).toBe(`-ERR UNAUTHORIZED publisher is not registered on sec.alerts (key ${strangerKey} from ${stranger})\n`);
    await ok(["admin", ...A, "create-channel", "private.ch", "--fault", "crash", "--order", "total"]);
    const sub = await cluster.fitb(["sub", "--config", cluster.configPath, "--key", stranger, "private.ch"]);
    expect(sub.code).toBe(1);
    expect(sub.stderr).toContain(`(key ${strangerKey} from ${stranger})`);
  }, 30_000);

  test("with nothing listening at any replica address, commands fail at once, not after --connect-timeout", async () => {
    const dead = join(cluster.dir, "dead.toml");
    // Four ports found free just now: nothing listens there (refused at once).
    const free = freePortRange(4);
    let index = 0;
    writeFileSync(
      dead,
      readFileSync(cluster.configPath, "utf8").replace(/^port = \d+$/gm, () => `port = ${free + index++}`),
    );
    for (const args of [
      ["pub", "--config", dead, "--key", cluster.clientKey, "sec.alerts", "x"],
      ["sub", "--config", dead, "--key", cluster.clientKey, "sec.alerts"],
      ["admin", "--config", dead, "--key", cluster.adminKey, "list-channels"],
    ]) {
      const startedMs = Date.now();
      const run = await cluster.fitb([...args, "--connect-timeout", "120000"], { timeoutMs: 60_000 });
      expect(run.code).toBe(1);
      expect(run.stderr).toContain("replicas refused the connection for 1000 ms (nothing listens there)");
      // The bound only catches a wait for the 120 s connect timeout; it never decides a pass.
      expect(Date.now() - startedMs).toBeLessThan(60_000);
    }
  }, 200_000);
});

describe("defaults", () => {
  /** Runs fitb with extra environment and a working directory; no --config or --key. */
  async function fitbWith(args: string[], env: Record<string, string>, cwd: string): Promise<{ code: number; out: string; err: string }> {
    const clean = Object.fromEntries(Object.entries(process.env).filter(([name]) => name !== "FITB_CONFIG" && name !== "FITB_KEY"));
    const proc = Bun.spawn([BUN, MAIN, ...args], { env: { ...clean, ...env }, cwd, stdout: "pipe", stderr: "pipe" });
    const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    return { code, out, err };
  }

  test("FITB_CONFIG and FITB_KEY stand in for --config and --key; ./cluster.toml is found", async () => {
    const env = { FITB_CONFIG: cluster.configPath, FITB_KEY: cluster.clientKey };
    const pub = await fitbWith(["pub", "sec.alerts", "from the environment"], env, "/");
    expect(pub.err).toBe("");
    expect(pub.out).toMatch(/^\+OK sec\.alerts \d+\n$/);
    const seq = pub.out.trim().split(" ")[2] as string;
    // Only FITB_KEY: the cluster file is ./cluster.toml (unless this host has /etc/fitb/cluster.toml, which comes first).
    const cwdConfig = !existsSync("/etc/fitb/cluster.toml");
    const sub = await fitbWith(
      ["sub", "sec.alerts", "--from", seq, "--count", "1"],
      cwdConfig ? { FITB_KEY: cluster.clientKey } : env,
      cluster.dir,
    );
    expect(sub.out).toBe(`sec.alerts ${seq} from the environment\n`);
    const none = await fitbWith(["pub", "sec.alerts", "x"], {}, cluster.dir);
    expect(none.code).toBe(2);
    expect(none.err).toContain("no key file: pass --key FILE or set FITB_KEY");
  }, 30_000);

  test("a TOML syntax error names the file, line and column", async () => {
    const broken = join(cluster.dir, "broken.toml");
    writeFileSync(broken, readFileSync(cluster.configPath, "utf8").replace("[limits]", "[limits"));
    const line = readFileSync(broken, "utf8").split("\n").indexOf("[limits") + 1;
    const run = await cluster.fitb(["pub", "--config", broken, "--key", cluster.clientKey, "sec.alerts", "x"]);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain(`${broken}:${line}:8: not valid TOML: Expected ']' to close a table header`);
    const check = await cluster.fitb(["config", "check", broken]);
    expect(check.stdout + check.stderr).toContain(`${broken}:${line}:8: not valid TOML`);
  }, 30_000);
});

describe("a publish that timed out", () => {
  test("says it may still be ordered, which quorum was missing, and how to check", async () => {
    // Two of four replicas: enough to connect (f+1) but not to order (2f+1).
    cluster.kill(2);
    cluster.kill(3);
    const run = await cluster.fitb(["pub", ...C, "sec.alerts", "in doubt", "--timeout", "1500"]);
    expect(run.code).toBe(1);
    expect(run.stdout).toMatch(
      /^-ERR TIMEOUT no quorum for publish to sec\.alerts \(seq \d+\): 2 matching answers needed within \d+ ms, \d+ of 4 replicas gave a final answer/,
    );
    expect(run.stderr).toContain(
      "fitb pub: 1 event timed out without the acknowledgement the channel needs; it may still be stored or ordered.",
    );
    expect(run.stderr).toContain("2 of 4 replicas were reachable at the end; a total-order channel is ordered only while 3 (2f+1) agree");
    const next = Number(/--from (\d+) --format/.exec(run.stderr)?.[1]);
    expect(next).toBeGreaterThan(1);
    expect(run.stderr).toContain(`Check: fitb sub ${C.join(" ")} sec.alerts --from ${next} --format '{seq} {time} {publisher} {payload}'`);
    expect(run.stderr).toContain(`this publisher is ${probe}`);
  }, 60_000);
});
