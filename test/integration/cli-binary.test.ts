/**
 * The compiled executable, built with the flags `npm run build` uses, run from a
 * directory with no node_modules: proof that it stands alone.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { FTL_ENV, FTL_RESTARTED_ENV } from "../../src/cli/jit.ts";
import { environOf, envWithout } from "../helpers/environ.ts";
import { NotifySocket } from "../helpers/notify-socket.ts";
import { collectOutput } from "../helpers/output.ts";
import { waitFor } from "../helpers/wait.ts";
import { freePortRange } from "./harness.ts";

const ROOT = resolve(import.meta.dir, "../..");
const directory = mkdtempSync(join(tmpdir(), "fitb-binary-"));
afterAll(() => rmSync(directory, { recursive: true, force: true }));

/** Compiling embeds the Bun runtime (about 100 MB written); a slow disk needs the room. */
const COMPILE_TEST_TIMEOUT_MS = 120_000;

/** `npm run build`'s command line (package.json), writing to `outfile` instead of dist/fitb. */
function buildArgs(outfile: string): string[] {
  const script = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { scripts: { build: string } }).scripts.build;
  const words = script.split(/\s+/);
  expect(words.slice(0, 2)).toEqual(["bun", "build"]);
  const out = words.indexOf("--outfile");
  expect(out).toBeGreaterThan(0);
  return [...words.slice(1, out), "--outfile", outfile, ...words.slice(out + 2)];
}

async function runIn(cwd: string, argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = Bun.spawn(argv, { cwd, stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  return { code, stdout, stderr };
}

test(
  "bun build --compile produces a fitb that runs --help and keygen on its own",
  async () => {
    const binary = join(directory, "fitb");
    const build = await runIn(ROOT, [process.execPath, ...buildArgs(binary)]);
    expect(build.code).toBe(0);

    const help = await runIn(directory, [binary, "--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("keygen");
    expect(help.stdout).toContain("cluster init");

    const keyPath = join(directory, "k");
    const keygen = await runIn(directory, [binary, "keygen", "--out", keyPath]);
    expect(keygen.code).toBe(0);
    expect(keygen.stdout).toMatch(/^ed25519:[A-Za-z0-9_-]{43}\n$/);
    expect(readFileSync(`${keyPath}.pub`, "utf8")).toBe(keygen.stdout);
    expect(statSync(keyPath).mode & 0o777).toBe(0o600);

    const bad = await runIn(directory, [binary, "keygen", "--bogus"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr.split("\n")[0]).toBe("fitb keygen: unknown flag --bogus");
  },
  COMPILE_TEST_TIMEOUT_MS,
);

test(
  "the compiled fitb: a demo whose replicas notify READY and verify on threads, bench --mix, unregister, list-channels, set-quota, sub 'sec.*' | head, and kill -9 of the demo leaves no replica",
  async () => {
    const binary = join(directory, "fitb");
    expect(statSync(binary).isFile()).toBe(true);
    const base = freePortRange(5);
    const dir = join(directory, "demo");
    const notify = NotifySocket.open(join(directory, "notify.sock"));
    // No web console: the default port (7500) may be another file's or an operator's.
    const demo = Bun.spawn(
      [binary, "demo", "--dir", dir, "--base-port", String(base), "--relay-port", String(base + 4), "--console-port", "0"],
      {
        cwd: directory,
        env: { ...process.env, NOTIFY_SOCKET: notify.path },
        stdout: "pipe",
        stderr: "pipe",
      },
    );
    const { out, err } = collectOutput(demo);
    try {
      await waitFor("the demo's ready line", () => out().includes("fitb demo: ready") || demo.exitCode !== null, 60_000, err);
      const pids = [...err().matchAll(/\(pid (\d+)\)/g)].map((match) => Number(match[1]));
      expect(pids).toHaveLength(4);
      // Each replica (a child inheriting NOTIFY_SOCKET) said it joined its group.
      await waitFor("READY=1 from the 4 replicas", () => notify.messages().filter((m) => m.startsWith("READY=1")).length === 4, 30_000);
      // The verification threads' code is in the executable (package.json's build lists it).
      for (let id = 0; id < 4; id++) {
        await waitFor(`replica ${id}'s verification threads`, () =>
          readFileSync(join(dir, `replica-${id}.log`), "utf8").includes('"msg":"verification threads ready"'),
        );
      }
      const A = ["--config", join(dir, "cluster.toml"), "--key", join(dir, "admin.key")];
      const C = ["--config", join(dir, "cluster.toml"), "--key", join(dir, "client.key")];
      const client = readFileSync(join(dir, "client.key.pub"), "utf8").trim();
      expect((await runIn(directory, [binary, "pub", ...C, "sec.alerts", "one"])).stdout).toBe("+OK sec.alerts 1\n");
      const listed = await runIn(directory, [binary, "admin", ...A, "list-channels"]);
      expect(listed.stdout).toMatch(/^sec\.alerts\s+byzantine\s+total\s+critical\s+public\s+1\s+0\s+1\s+1 event,/m);
      // A live wildcard subscription into `head -n 1`: the first event ends head, the next write ends fitb sub, quietly.
      const rc = join(directory, "sub.rc");
      const shell = Bun.spawn([
        "bash",
        "-c",
        `"${binary}" sub ${C.join(" ")} 'sec.*' 2>"${rc}.err" | head -n 1 >/dev/null; echo "\${PIPESTATUS[0]}" > "${rc}"`,
      ]);
      for (let i = 0; shell.exitCode === null && i < 60; i++) await runIn(directory, [binary, "pub", ...C, "sec.alerts", `pipe ${i}`]);
      expect(await shell.exited).toBe(0);
      expect(readFileSync(rc, "utf8").trim()).toBe("0");
      expect(readFileSync(`${rc}.err`, "utf8")).not.toContain("EPIPE");
      // bench --mix runs its flood in a thread: its code is in the executable too.
      const mix = await runIn(directory, [
        binary,
        "bench",
        ...C,
        "--channel",
        "sec.alerts",
        "--events",
        "200",
        "--rate",
        "200",
        "--mix",
        "bulk.metrics",
        "--mix-publishers",
        "1",
        "--json",
      ]);
      expect(mix.code, mix.stderr).toBe(0);
      expect((JSON.parse(mix.stdout) as { mix: { low_solo_per_s: number } }).mix.low_solo_per_s).toBeGreaterThan(0);
      const quota = await runIn(directory, [binary, "admin", ...A, "set-quota", client, "--subscriptions", "2"]);
      expect(quota.stdout).toContain(`ok: set the quota of ${client}: 2 subscriptions`);
      const revoked = await runIn(directory, [binary, "admin", ...A, "unregister", "sec.alerts", "--publisher", client]);
      expect(revoked.stdout).toContain(`ok: unregistered ${client} as publisher of sec.alerts`);
      const refused = await runIn(directory, [binary, "pub", ...C, "sec.alerts", "two"]);
      expect(refused.stdout).toContain(`-ERR UNAUTHORIZED publisher is not registered on sec.alerts (key ${client} from `);
      demo.kill("SIGKILL");
      await demo.exited;
      await waitFor("every replica to exit after the demo's kill -9", () => pids.every((pid) => !isAlive(pid)), 20_000);
    } finally {
      demo.kill("SIGKILL");
      notify.close();
    }
  },
  COMPILE_TEST_TIMEOUT_MS,
);

test(
  "the compiled fitb replica restarts itself in place with the runtime's top tier off, and its start line says so",
  async () => {
    const binary = join(directory, "fitb");
    expect(statSync(binary).isFile()).toBe(true);
    const dir = join(directory, "ftl");
    const init = await runIn(directory, [
      binary,
      "cluster",
      "init",
      "--dir",
      dir,
      "--replicas",
      "4",
      "--base-port",
      String(freePortRange(4)),
    ]);
    expect(init.code, init.stderr).toBe(0);
    // Whatever this test's own environment says of the option must not decide it.
    const replica = Bun.spawn([binary, "replica", "--config", join(dir, "cluster.toml"), "--id", "0"], {
      cwd: directory,
      env: envWithout(process.env, [FTL_ENV, FTL_RESTARTED_ENV]),
      stdout: "pipe",
      stderr: "pipe",
    });
    const { out, err } = collectOutput(replica);
    try {
      const started = () =>
        out()
          .split("\n")
          .find((line) => line.includes('"replica started"') && line.endsWith("}"));
      await waitFor(
        "the replica's start line",
        () => started() !== undefined || replica.exitCode !== null,
        30_000,
        () => out() + err(),
      );
      expect(started(), out() + err()).toBeDefined();
      expect(JSON.parse(started() as string)).toMatchObject({ ftl: false });
      const environ = environOf(replica.pid);
      expect(environ.get(FTL_ENV)).toBe("false");
      expect(environ.get(FTL_RESTARTED_ENV)).toBe(String(replica.pid));
      expect(out()).not.toContain("could not restart");
      // A restart that worked says nothing on standard error (no "experimental" warning).
      expect(err()).toBe("");
    } finally {
      replica.kill("SIGTERM");
      await replica.exited;
    }
  },
  COMPILE_TEST_TIMEOUT_MS,
);

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
