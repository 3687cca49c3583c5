import { describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { CommandIo } from "../../src/cli/command.ts";
import { serviceUnitCommand } from "../../src/cli/commands/service.ts";
import { EXIT_OK, EXIT_USAGE } from "../../src/cli/errors.ts";
import { runCli } from "../../src/cli/run.ts";

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const io: CommandIo = { out: (line) => out.push(line), err: (line) => err.push(line) };
  const code = await runCli(argv, { io, env: {}, commands: [serviceUnitCommand] });
  return { code, out: out.join("\n"), err: err.join("\n") };
}

/** Directives every unit must carry (systemd.service(5), systemd.exec(5)). */
const REQUIRED = ["Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "WantedBy=multi-user.target"];

describe("fitb service unit", () => {
  test("a replica unit runs the replica with its id and keeps data under /var/lib/fitb", async () => {
    const result = await run(["service", "unit", "replica", "--config", "/etc/fitb/cluster.toml", "--id", "2"]);
    expect(result.code).toBe(EXIT_OK);
    for (const directive of REQUIRED) expect(result.out).toContain(directive);
    expect(result.out).toContain(
      "ExecStart=/usr/local/bin/fitb replica --config /etc/fitb/cluster.toml --id 2 --data /var/lib/fitb/replica-2\n",
    );
    expect(result.out).toContain("StateDirectory=fitb");
    expect(result.out).toContain("User=fitb");
    // Started means joined: the replica sends READY=1 then, and WATCHDOG=1 from its event loop.
    for (const directive of ["Type=notify", "NotifyAccess=main", "WatchdogSec=30s", "TimeoutStartSec=infinity"]) {
      expect(result.out).toContain(`${directive}\n`);
    }
    expect(result.out).not.toContain("ReadWritePaths=");
    expect(result.out).not.toContain("ExecStartPre=");
    // The runtime's top tier off from the start, so the replica need not restart itself for --ftl.
    expect(result.out).toContain("Environment=BUN_JSC_useFTLJIT=false\n");
  });

  test("--data, --sync and --metrics reach the replica; a data directory elsewhere is made writable", async () => {
    const argv = ["service", "unit", "replica", "--config", "/etc/fitb/cluster.toml", "--id", "1"];
    const result = await run([...argv, "--data", "/srv/fitb/r1", "--sync", "normal", "--metrics", "127.0.0.1:9464"]);
    expect(result.code).toBe(EXIT_OK);
    expect(result.out).toContain(
      "ExecStart=/usr/local/bin/fitb replica --config /etc/fitb/cluster.toml --id 1 --data /srv/fitb/r1 --sync normal --metrics 127.0.0.1:9464\n",
    );
    expect(result.out).toContain("ReadWritePaths=/srv/fitb/r1\n");
    // Made at start when missing, before the sandbox needs it.
    const makeLine = result.out.split("\n").find((line) => line.startsWith("ExecStartPre=+"));
    expect(makeLine).toBe(
      `ExecStartPre=+/bin/sh -c 'test -e "$$1" || install -d -m 0700 -o "$$2" -g "$$2" "$$1"' fitb-make-data /srv/fitb/r1 fitb`,
    );
    expect(result.out.indexOf("ExecStartPre=")).toBeLessThan(result.out.indexOf("ExecStart="));
    // It starts only once its directory's mount is up (not into an empty directory under a mount that failed).
    expect(result.out).toContain("RequiresMountsFor=/srv/fitb/r1\n");
    // A newline in a path would begin a directive of its own: refused.
    const injected = await run([...argv, "--data", "/srv/fitb/r1\nExecStartPost=+/bin/touch /tmp/x"]);
    expect(injected.code).toBe(EXIT_USAGE);
    expect(injected.err).toContain("--data: a path with a control character (a newline, say) cannot go in a unit");
    expect((await run([...argv, "--sync", "sometimes"])).code).toBe(EXIT_USAGE);
    expect((await run([...argv, "--metrics", "9464"])).code).toBe(EXIT_USAGE);
  });

  test("a relay unit needs a key and listens on its Unix socket only by default (no TCP port every local account could use)", async () => {
    expect((await run(["service", "unit", "relay", "--config", "/etc/fitb/cluster.toml"])).code).toBe(EXIT_USAGE);
    const result = await run(["service", "unit", "relay", "--config", "/etc/fitb/cluster.toml", "--key", "/etc/fitb/probe.key"]);
    expect(result.code).toBe(EXIT_OK);
    expect(result.out).toContain(
      "ExecStart=/usr/local/bin/fitb relay --config /etc/fitb/cluster.toml --key /etc/fitb/probe.key --listen none --socket /run/fitb-relay/relay.sock\n",
    );
    expect(result.out).toContain("RuntimeDirectory=fitb-relay\n");
    expect(result.out).not.toContain("StateDirectory");
    expect(result.out).toContain("Type=simple\n");
    expect(result.out).not.toContain("Environment=");
  });

  test("--metrics HOST:PORT is passed to the replica and the relay", async () => {
    const replica = await run([
      "service",
      "unit",
      "replica",
      "--config",
      "/etc/fitb/cluster.toml",
      "--id",
      "1",
      "--metrics",
      "127.0.0.1:9464",
    ]);
    expect(replica.out).toContain("--data /var/lib/fitb/replica-1 --metrics 127.0.0.1:9464\n");
    const relay = await run([
      "service",
      "unit",
      "relay",
      "--config",
      "/etc/fitb/cluster.toml",
      "--key",
      "/etc/fitb/probe.key",
      "--metrics",
      "127.0.0.1:9465",
    ]);
    expect(relay.out).toContain("--listen none --socket /run/fitb-relay/relay.sock --metrics 127.0.0.1:9465\n");
    expect((await run(["service", "unit", "relay", "--config", "c", "--key", "/k", "--metrics", "9465"])).code).toBe(EXIT_USAGE);
  });

  test("--metrics-host-name is passed on after --metrics; a bad name or one without --metrics is a usage error", async () => {
    const argv = ["service", "unit", "replica", "--config", "/etc/fitb/cluster.toml", "--id", "1"];
    const named = await run([
      ...argv,
      "--metrics",
      "0.0.0.0:9464",
      "--metrics-host-name",
      "r1.example.net",
      "--metrics-host-name",
      "[::1]:9000",
    ]);
    expect(named.code).toBe(EXIT_OK);
    expect(named.out).toContain("--metrics 0.0.0.0:9464 --metrics-host-name r1.example.net --metrics-host-name [::1]:9000\n");
    expect((await run([...argv, "--metrics-host-name", "r1.example.net"])).code).toBe(EXIT_USAGE);
    expect((await run([...argv, "--metrics", "0.0.0.0:9464", "--metrics-host-name", "bad name"])).code).toBe(EXIT_USAGE);
  });

  test("a relay unit gets a TCP port only when --listen asks; beyond loopback only with --allow-remote, passed through", async () => {
    const argv = ["service", "unit", "relay", "--config", "/etc/fitb/cluster.toml", "--key", "/etc/fitb/probe.key"];
    const loopback = await run([...argv, "--listen", "127.0.0.1:7400"]);
    expect(loopback.code).toBe(EXIT_OK);
    expect(loopback.out).toContain("--key /etc/fitb/probe.key --listen 127.0.0.1:7400 --socket /run/fitb-relay/relay.sock\n");
    expect((await run([...argv, "--listen", "none"])).out).toContain("--listen none --socket /run/fitb-relay/relay.sock\n");

    // The relay would refuse to start with this: the unit is refused, with the relay's reason.
    const remote = await run([...argv, "--listen", "0.0.0.0:7400"]);
    expect(remote.code).toBe(EXIT_USAGE);
    expect(remote.err).toContain("--listen 0.0.0.0:7400 is not a loopback address");
    expect(remote.err).toContain("--allow-remote");
    const allowed = await run([...argv, "--listen", "0.0.0.0:7400", "--allow-remote"]);
    expect(allowed.code).toBe(EXIT_OK);
    expect(allowed.out).toContain("--listen 0.0.0.0:7400 --socket /run/fitb-relay/relay.sock --allow-remote\n");

    expect((await run([...argv, "--listen", "7400"])).code).toBe(EXIT_USAGE);
    expect((await run([...argv, "--listen", "127.0.0.1:7400", "--listen", "127.0.0.1:7401"])).code).toBe(EXIT_USAGE);
  });

  test("a --listen with characters systemd would split is refused, and its % is escaped", async () => {
    const argv = ["service", "unit", "relay", "--config", "/etc/fitb/cluster.toml", "--key", "/etc/fitb/probe.key"];
    for (const listen of ["local host:7400", '"127.0.0.1":7400']) {
      const result = await run([...argv, "--listen", listen]);
      expect(result.code).toBe(EXIT_USAGE);
    }
    // A link-local zone's '%' is escaped for systemd, not refused.
    const zoned = await run([...argv, "--listen", "[fe80::1%eth0]:7400", "--allow-remote"]);
    expect(zoned.code).toBe(EXIT_OK);
    expect(zoned.out).toContain("--listen [fe80::1%%eth0]:7400 ");
  });

  test("--listen reaches the replica's ExecStart, each one given; --allow-remote is refused for a replica", async () => {
    const argv = ["service", "unit", "replica", "--config", "/etc/fitb/cluster.toml", "--id", "3"];
    const result = await run([...argv, "--listen", "0.0.0.0:7103", "--listen", "[::]:7103"]);
    expect(result.code).toBe(EXIT_OK);
    expect(result.out).toContain("--id 3 --data /var/lib/fitb/replica-3 --listen 0.0.0.0:7103 --listen [::]:7103\n");
    expect((await run([...argv, "--listen", "none"])).code).toBe(EXIT_USAGE);
    expect((await run([...argv, "--allow-remote"])).code).toBe(EXIT_USAGE);
  });

  test("bad input is a usage error", async () => {
    expect((await run(["service", "unit", "broker", "--config", "c"])).code).toBe(EXIT_USAGE);
    expect((await run(["service", "unit", "replica", "--config", "c"])).code).toBe(EXIT_USAGE);
    expect((await run(["service", "unit", "replica", "--config", "c", "--id", "0", "--user", "Root Admin"])).code).toBe(EXIT_USAGE);
    expect((await run(["service", "unit", "replica", "--config", "c", "--id", "0", "--binary", "fitb"])).code).toBe(EXIT_USAGE);
  });

  test("systemd-analyze verify accepts the units", async () => {
    if (!existsSync("/usr/bin/systemd-analyze")) {
      // Without systemd the directive check above is the whole check.
      expect(existsSync("/usr/bin/systemd-analyze")).toBe(false);
      return;
    }
    const dir = mkdtempSync(join(tmpdir(), "fitb-unit-"));
    try {
      // ExecStart must name an executable that exists for verify to pass, outside the trees the sandbox hides (/tmp, homes).
      const binary = "/bin/sh";
      const replicaUnit = (id: string, ...more: string[]): string[] => [
        "service",
        "unit",
        "replica",
        "--config",
        "/etc/fitb/cluster.toml",
        "--id",
        id,
        "--binary",
        binary,
        ...more,
      ];
      for (const [name, argv] of [
        ["fitb-replica.service", replicaUnit("0")],
        // A data directory elsewhere, its path with a space, then with a quote.
        ["fitb-replica-srv.service", replicaUnit("1", "--data", "/srv/fitb data/r1")],
        ["fitb-replica-quote.service", replicaUnit("2", "--data", "/srv/it's/r2")],
        [
          "fitb-relay.service",
          ["service", "unit", "relay", "--config", "/etc/fitb/cluster.toml", "--key", "/etc/fitb/p.key", "--binary", binary],
        ],
      ] as const) {
        const result = await run([...argv]);
        expect(result.code).toBe(EXIT_OK);
        const path = join(dir, name);
        writeFileSync(path, `${result.out}\n`);
        const proc = Bun.spawnSync(["systemd-analyze", "verify", "--man=no", path], { stderr: "pipe", stdout: "pipe" });
        const stderr = proc.stderr.toString();
        // Complaints about the sandboxed build host (no running systemd, missing users) are not
        // about the unit file; anything naming an unknown directive or a bad value is.
        expect(stderr).not.toMatch(/Unknown (key|section)|Failed to parse|Invalid|Unbalanced|fatal/i);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("systemd-analyze security", () => {
  test("both units score an exposure of at most 2.0 (OK)", async () => {
    if (!existsSync("/usr/bin/systemd-analyze")) {
      expect(existsSync("/usr/bin/systemd-analyze")).toBe(false);
      return;
    }
    const dir = mkdtempSync(join(tmpdir(), "fitb-unit-security-"));
    try {
      for (const [name, argv] of [
        ["fitb-replica.service", ["service", "unit", "replica", "--config", "/etc/fitb/cluster.toml", "--id", "0"]],
        ["fitb-relay.service", ["service", "unit", "relay", "--config", "/etc/fitb/cluster.toml", "--key", "/etc/fitb/p.key"]],
      ] as const) {
        const path = join(dir, name);
        writeFileSync(path, `${(await run([...argv])).out}\n`);
        const proc = Bun.spawnSync(["systemd-analyze", "security", "--offline=true", "--no-pager", path], {
          stdout: "pipe",
          stderr: "pipe",
        });
        const output = `${proc.stdout.toString()}${proc.stderr.toString()}`;
        const score = Number(/Overall exposure level for \S+: (\d+\.\d+)/.exec(output)?.[1]);
        expect(score).toBeGreaterThan(0);
        expect(score).toBeLessThanOrEqual(2.0);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
