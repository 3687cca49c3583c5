import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE } from "../../src/cli/errors.ts";
import { runCli } from "../../src/cli/run.ts";
import { initCluster } from "../../src/config/init.ts";

interface Run {
  readonly code: number;
  readonly out: string[];
  readonly err: string[];
}

async function run(argv: readonly string[]): Promise<Run> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runCli(argv, { io: { out: (line) => out.push(line), err: (line) => err.push(line) }, env: {} });
  return { code, out, err };
}

/** Paths that do not exist: argument errors must be found before any file is opened. */
const NO_FILES = ["--config", "/nonexistent/cluster.toml", "--key", "/nonexistent/client.key"];
const PUBKEY = "ed25519:O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik";

describe("every client command has --help", () => {
  for (const command of [["pub"], ["sub"], ["admin"], ["bench"], ["admin", "create-channel"]]) {
    test(`fitb ${command.join(" ")} --help`, async () => {
      const result = await run([...command, "--help"]);
      expect(result.code).toBe(EXIT_OK);
      expect(result.out[0]).toStartWith(`Usage: fitb ${command[0]}`);
      expect(result.out.join("\n")).toContain("--config FILE");
      expect(result.out.join("\n")).toContain("--timeout MS");
    });
  }
});

/** Each case: argv after the command word, and a fragment of the one-line reason. */
const USAGE_CASES: Record<string, readonly (readonly [readonly string[], string])[]> = {
  pub: [
    [[...NO_FILES, "--crash-none-targets", "every", "net.links", "x"], "--crash-none-targets: expected quorum or all, got 'every'"],
    [["--config", "c", "net.links"], "no key file: pass --key FILE or set FITB_KEY"],
    [[...NO_FILES], "missing argument TAG"],
    [[...NO_FILES, "Net.Links"], "TAG: tag"],
    [[...NO_FILES, "net..links"], "TAG: tag"],
    [[...NO_FILES, "a".repeat(129)], "at most 128"],
    [[...NO_FILES, "net.links", "msg", "extra"], "unexpected argument"],
    [[...NO_FILES, "--timeout", "0", "net.links"], "--timeout: expected an integer"],
    [[...NO_FILES, "--connect-timeout", "soon", "net.links"], "--connect-timeout: expected an integer"],
    [[...NO_FILES, "--tiemout", "5", "net.links"], "did you mean --timeout"],
  ],
  sub: [
    [[...NO_FILES], "missing argument TAG"],
    [[...NO_FILES, "BAD"], "TAG: tag"],
    [[...NO_FILES, "net.links", "--from", "-1"], "--from: expected an integer"],
    [[...NO_FILES, "net.links", "--from", "x"], "--from: expected an integer"],
    [[...NO_FILES, "net.links", "--count", "0"], "--count: expected an integer"],
    [[...NO_FILES, "net.links", "--json=yes"], "--json does not take a value"],
    [[...NO_FILES, "sec.alerts", "--sources", "some"], "--sources: expected auto, quorum or all, got 'some'"],
  ],
  admin: [
    [[...NO_FILES], "missing argument COMMAND"],
    [[...NO_FILES, "create"], "unknown admin command"],
    [[...NO_FILES, "create-channel", "net.links", "--order", "none"], "needs --fault"],
    [[...NO_FILES, "create-channel", "net.links", "--fault", "crash"], "needs --order"],
    [[...NO_FILES, "create-channel", "net.links", "--fault", "omission", "--order", "none"], "--fault: expected one of crash, byzantine"],
    [[...NO_FILES, "create-channel", "net.links", "--fault", "crash", "--order", "fifo"], "--order: expected one of none, total"],
    [
      [...NO_FILES, "create-channel", "net.links", "--fault", "crash", "--order", "none", "--priority", "urgent"],
      "--priority: expected one of",
    ],
    [[...NO_FILES, "create-channel", "--fault", "crash", "--order", "none"], "create-channel needs a TAG"],
    [[...NO_FILES, "create-channel", "NET", "--fault", "crash", "--order", "none"], "TAG: tag"],
    // The replicas' own channels: refused as a usage error like any other bad TAG, saying why.
    [[...NO_FILES, "create-channel", "$sys.x", "--fault", "crash", "--order", "none"], "TAG: $sys.x is a system channel name"],
    [[...NO_FILES, "destroy-channel", "$sys.events"], "reserved to the replicas"],
    [[...NO_FILES, "register", "$sys.events", "--publisher", PUBKEY], "reserved to the replicas"],
    [
      [...NO_FILES, "create-channel", "net.links", "--fault", "crash", "--order", "none", "--json"],
      "--json does not apply to create-channel",
    ],
    [[...NO_FILES, "destroy-channel"], "destroy-channel needs a TAG"],
    [[...NO_FILES, "destroy-channel", "net.links", "--public"], "--public does not apply to destroy-channel"],
    [[...NO_FILES, "register", "net.links"], "exactly one of --publisher"],
    [[...NO_FILES, "register", "net.links", "--publisher", PUBKEY, "--subscriber", PUBKEY], "exactly one of --publisher"],
    [[...NO_FILES, "register", "net.links", "--publisher", "ed25519:short"], "--publisher: expected"],
    [[...NO_FILES, "register", "net.links", "--subscriber", "0123abcd"], "--subscriber: expected"],
    [[...NO_FILES, "unregister", "net.links"], "unregister needs exactly one of --publisher"],
    [[...NO_FILES, "unregister", "net.links", "--publisher", "ed25519:short"], "--publisher: expected"],
    [[...NO_FILES, "unregister", "--publisher", PUBKEY], "unregister needs a TAG"],
    [[...NO_FILES, "register", "net.links", "--publisher", PUBKEY, "--yes"], "--yes does not apply to register"],
    [[...NO_FILES, "list-quotas", "net.links"], "list-quotas takes no TAG"],
    [[...NO_FILES, "list-channels", "Net.Links"], "TAG: "],
    [[...NO_FILES, "list-channels", "net.>.x"], "TAG: pattern"],
    [[...NO_FILES, "status", "--fault", "crash"], "--fault does not apply to status"],
    [[...NO_FILES, "status", "--timeout", "-5"], "--timeout"],
  ],
  bench: [
    [[...NO_FILES], "missing required flag --channel"],
    [[...NO_FILES, "--channel", "Bad"], "--channel: tag"],
    [[...NO_FILES, "--channel", "b.x", "--events", "0"], "--events: expected an integer"],
    [[...NO_FILES, "--channel", "b.x", "--size", "10"], "--size: at least 24"],
    [[...NO_FILES, "--channel", "b.x", "--publishers", "0"], "--publishers: expected an integer"],
    [[...NO_FILES, "--channel", "b.x", "--publishers", "65"], "--publishers: expected an integer"],
    [[...NO_FILES, "--channel", "b.x", "--events", "3", "--publishers", "4"], "at most one publisher per event"],
    [[...NO_FILES, "--channel", "b.x", "--subscribers", "0"], "--subscribers: expected a whole number from 1 to 128"],
    [[...NO_FILES, "--channel", "b.x", "--rate", "0"], "--rate: expected a number from 0.01"],
    [[...NO_FILES, "--channel", "b.x", "--rate", "0.005"], "--rate: expected a number from 0.01 to 10000000 with at most two decimals"],
    [[...NO_FILES, "--channel", "b.x", "--rate", "1.5e3"], 'got "1.5e3"'],
    [
      [...NO_FILES, "--channel", "b.x", "--rate", "100,x"],
      '--rate: expected a number from 0.01 to 10000000 with at most two decimals (or a comma-separated list), got "x"',
    ],
    [[...NO_FILES, "--channel", "b.x", "--rate", "100,200", "--mix", "b.y"], "--rate: a sweep of rates does not combine with --mix"],
    [[...NO_FILES, "--channel", "b.x", "extra"], "unexpected argument"],
    [[...NO_FILES, "--channel", "b.x", "--crash-none-targets", "some"], "--crash-none-targets: expected quorum or all, got 'some'"],
  ],
};

describe("argument validation exits 2 with a one-line reason, before opening any file", () => {
  for (const [command, cases] of Object.entries(USAGE_CASES)) {
    for (const [argv, reason] of cases) {
      test(`fitb ${command} ${argv.filter((a) => !NO_FILES.includes(a)).join(" ")}`, async () => {
        const result = await run([command, ...argv]);
        expect(result.code).toBe(EXIT_USAGE);
        expect(result.err[0]).toStartWith(`fitb ${command}: `);
        expect(result.err[0]).toContain(reason);
        expect(result.err[1]).toStartWith(`Usage: fitb ${command}`);
        expect(result.out).toEqual([]);
      });
    }
  }
});

describe("valid arguments reach the files and the network", () => {
  let dir = "";
  let configPath = "";
  let clientKey = "";
  let adminKey = "";

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "fitb-client-cli-"));
    // Replicas on ports 1..4 of loopback: nothing listens there, so every connect is refused at once.
    const result = initCluster({ dir, replicas: 4, host: "127.0.0.1", basePort: 1, name: "refused", overwrite: false });
    configPath = result.configPath;
    clientKey = result.clientKeyFile;
    adminKey = result.adminKeyFile;
  });

  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  test("a missing cluster file is reported as such (not as an internal error), exit 1", async () => {
    const result = await run(["pub", ...NO_FILES, "net.links", "hello"]);
    expect(result.code).toBe(EXIT_FAILURE);
    expect(result.err.join("\n")).toContain("cannot read /nonexistent/cluster.toml");
    expect(result.err[0]).not.toContain("internal error");
  });

  test("no reachable replica: one clear line naming the quorum and each replica, exit 1", async () => {
    const result = await run(["pub", "--config", configPath, "--key", clientKey, "--connect-timeout", "60000", "net.links", "hello"]);
    expect(result.code).toBe(EXIT_FAILURE);
    expect(result.out).toEqual([]);
    const last = result.err.at(-1) as string;
    // Nothing listens at ports 1-4: refused for a second, so the command does not wait out the 60 s timeout.
    expect(last).toMatch(
      /^fitb pub: no quorum: [34] of 4 replicas refused the connection for 1000 ms \(nothing listens there\), so fewer than the 2 needed/,
    );
    expect(last).toContain("replica 0 (127.0.0.1:1): unreachable: connection refused");
    expect(last).toContain("replica 3 (127.0.0.1:4)");
  });

  test("replicas that accept but do not answer are waited for until --connect-timeout", async () => {
    // Listeners that accept and never answer: not a refusal, so the client waits.
    const silent = [0, 1, 2, 3].map(() => Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } }));
    try {
      let index = 0;
      const text = readFileSync(configPath, "utf8").replace(/^port = \d+$/gm, () => `port = ${silent[index++]?.port}`);
      const silentConfig = join(dir, "silent.toml");
      writeFileSync(silentConfig, text);
      const result = await run(["pub", "--config", silentConfig, "--key", clientKey, "--connect-timeout", "300", "net.links", "x"]);
      expect(result.code).toBe(EXIT_FAILURE);
      expect(result.err.at(-1)).toStartWith("fitb pub: no quorum: 0 of 4 replicas reachable within 300 ms, 2 needed");
    } finally {
      for (const listener of silent) listener.stop(true);
    }
  });

  for (const argv of [
    ["sub", "net.links"],
    ["admin", "list-channels", "--json"],
    ["bench", "--channel", "net.links", "--events", "10"],
  ]) {
    test(`fitb ${argv.join(" ")} without replicas fails with the same kind of line`, async () => {
      const result = await run([argv[0]!, "--config", configPath, "--key", clientKey, "--connect-timeout", "60000", ...argv.slice(1)]);
      expect(result.code).toBe(EXIT_FAILURE);
      expect(result.err.at(-1)).toMatch(/no quorum: [34] of 4 replicas refused the connection for 1000 ms/);
    });
  }

  test("fitb admin status without replicas still prints every replica, up false with the reason, exit 2 (no quorum)", async () => {
    const result = await run(["admin", "--config", configPath, "--key", clientKey, "--connect-timeout", "200", "status"]);
    expect(result.code).toBe(2);
    expect(result.out.filter((line) => /^\d+ +127\.0\.0\.1:\d+ +false /.test(line))).toHaveLength(4);
    expect(result.out).toContain("NO QUORUM: 0 of 4 replicas answered, 3 are needed to order admin commands and total-order channels");
  });

  test("admin changes need an admin key, checked before connecting", async () => {
    const args = ["admin", "--config", configPath, "--connect-timeout", "200", "destroy-channel", "net.links"];
    const refused = await run([...args, "--key", clientKey]);
    expect(refused.code).toBe(EXIT_FAILURE);
    expect(refused.err[0]).toContain("which is not one of the admin_keys");
    const admin = await run([...args, "--key", adminKey]);
    expect(admin.code).toBe(EXIT_FAILURE);
    expect(admin.err.at(-1)).toContain("no quorum");
  });
});
