/**
 * `fitb service unit` (src/cli/commands/service.ts) refuses what would make a unit that
 * cannot start, or that does other than asked: an id the replica refuses, a metrics port
 * out of range, flags a relay has not; and it quotes a binary path with spaces as
 * ExecStart needs. (What the units hold otherwise: test/integration/cli-service.test.ts.)
 */
import { describe, expect, test } from "bun:test";
import type { CommandIo } from "../../src/cli/command.ts";
import { SANDBOX_HIDDEN, serviceUnitCommand } from "../../src/cli/commands/service.ts";
import { EXIT_OK, EXIT_USAGE } from "../../src/cli/errors.ts";
import { runCli } from "../../src/cli/run.ts";
import { REPLICAS_MAX } from "../../wire/types.ts";

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const io: CommandIo = { out: (line) => out.push(line), err: (line) => err.push(line) };
  const code = await runCli(["service", "unit", ...argv], { io, env: {}, commands: [serviceUnitCommand] });
  return { code, out: out.join("\n"), err: err.join("\n") };
}

const REPLICA = ["replica", "--config", "/etc/fitb/cluster.toml"];
const RELAY = ["relay", "--config", "/etc/fitb/cluster.toml", "--key", "/etc/fitb/probe.key"];

describe("fitb service unit refuses what the unit's process would refuse or drop", () => {
  test("--id: the replica's own range, 0..REPLICAS_MAX-1", async () => {
    expect((await run([...REPLICA, "--id", String(REPLICAS_MAX - 1)])).code).toBe(EXIT_OK);
    const refused = await run([...REPLICA, "--id", String(REPLICAS_MAX)]);
    expect(refused.code).toBe(EXIT_USAGE);
    expect(refused.err).toContain(`--id: expected an integer in 0..${REPLICAS_MAX - 1}, got "${REPLICAS_MAX}"`);
    expect((await run([...REPLICA, "--id", "100"])).code).toBe(EXIT_USAGE);
  });

  test("--metrics: a port in 1..65535", async () => {
    for (const metrics of ["127.0.0.1:99999", "127.0.0.1:65536", "127.0.0.1:0"]) {
      const refused = await run([...REPLICA, "--id", "0", "--metrics", metrics]);
      expect(refused.code).toBe(EXIT_USAGE);
      expect(refused.err).toContain(`--metrics: the port must be in 1..65535, got "${metrics}"`);
      expect((await run([...RELAY, "--metrics", metrics])).code).toBe(EXIT_USAGE);
    }
    expect((await run([...REPLICA, "--id", "0", "--metrics", "127.0.0.1:65535"])).code).toBe(EXIT_OK);
  });

  test("--members-digest goes into a joining replica's ExecStart, checked as the replica checks it; a relay unit refuses it", async () => {
    const digest = "3F9A".padEnd(64, "0");
    const unit = await run([...REPLICA, "--id", "4", "--members-digest", digest]);
    expect(unit.code).toBe(EXIT_OK);
    expect(unit.out).toContain(` --members-digest ${digest.toLowerCase()}`);
    const bad = await run([...REPLICA, "--id", "4", "--members-digest", "3f9a"]);
    expect(bad.code).toBe(EXIT_USAGE);
    expect(bad.err).toContain("--members-digest must be the 64 hex digits fitb admin members prints");
    const relay = await run([...RELAY, "--members-digest", digest]);
    expect(relay.code).toBe(EXIT_USAGE);
    expect(relay.err).toContain("--members-digest is for replica units");
  });

  test("a relay unit refuses --id, --data and --sync rather than drop them", async () => {
    for (const [flag, value] of [
      ["--id", "0"],
      ["--data", "/srv/fitb"],
      ["--sync", "normal"],
    ] as const) {
      const refused = await run([...RELAY, flag, value]);
      expect(refused.code).toBe(EXIT_USAGE);
      expect(refused.err).toContain(`${flag} is for replica units; a relay has no such flag`);
    }
  });

  test("a --binary path with spaces is quoted in ExecStart, as systemd splits words", async () => {
    const replica = await run([...REPLICA, "--id", "0", "--binary", "/opt/my fitb/fitb"]);
    expect(replica.code).toBe(EXIT_OK);
    expect(replica.out).toContain('ExecStart="/opt/my fitb/fitb" replica --config /etc/fitb/cluster.toml --id 0 ');
    const relay = await run([...RELAY, "--binary", "/opt/my fitb/fitb"]);
    expect(relay.out).toContain('ExecStart="/opt/my fitb/fitb" relay --config ');
    // A plain path stays as it was.
    expect((await run([...REPLICA, "--id", "0"])).out).toContain("ExecStart=/usr/local/bin/fitb replica ");
  });

  test("a path the unit's sandbox hides (PrivateTmp, ProtectHome) is refused, saying why and where to put it", async () => {
    for (const [argv, flag, path, why] of [
      [["replica", "--config", "/tmp/w/cluster.toml", "--id", "0"], "config", "/tmp/w/cluster.toml", "PrivateTmp=yes"],
      [[...REPLICA, "--id", "0", "--data", "/home/ops/fitb-data"], "data", "/home/ops/fitb-data", "ProtectHome=yes"],
      [[...REPLICA, "--id", "0", "--key", "/root/replica-0.key"], "key", "/root/replica-0.key", "ProtectHome=yes"],
      [["relay", "--config", "/etc/fitb/cluster.toml", "--key", "/var/tmp/probe.key"], "key", "/var/tmp/probe.key", "PrivateTmp=yes"],
      [[...REPLICA, "--id", "0", "--binary", "/home/ops/fitb"], "binary", "/home/ops/fitb", "ProtectHome=yes"],
    ] as const) {
      const refused = await run([...argv]);
      expect(refused.code).toBe(EXIT_USAGE);
      expect(refused.err).toContain(`--${flag}: ${path} is under `);
      expect(refused.err).toContain(why);
      expect(refused.out).toBe("");
    }
    // /tmpdata is not /tmp.
    expect((await run([...REPLICA, "--id", "0", "--data", "/tmpdata/r0"])).code).toBe(EXIT_OK);
  });

  test("a relative path is made absolute, and standard error says what the unit names", async () => {
    const unit = await run(["replica", "--config", "etc/cluster.toml", "--id", "0"]);
    const absolute = `${process.cwd()}/etc/cluster.toml`;
    if (SANDBOX_HIDDEN.some(({ root }) => absolute.startsWith(`${root}/`))) {
      // Run from a checkout the sandbox hides: refused as above, which says so.
      expect(unit.code).toBe(EXIT_USAGE);
      expect(unit.err).toContain(`--config: ${absolute} is under `);
      return;
    }
    expect(unit.code).toBe(EXIT_OK);
    expect(unit.out).toContain(` --config ${absolute} `);
    expect(unit.err).toContain(`fitb service unit: --config etc/cluster.toml is ${absolute} in the unit`);
    expect(unit.err).toContain(
      `fitb service unit: --config ${absolute} does not exist on this host; the service will not start until it does`,
    );
  });
});
