/**
 * The real entry point, run as a subprocess: exit codes, which stream output goes
 * to, and files on disk.
 */
import { afterAll, describe, expect, test } from "bun:test";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import packageJson from "../../package.json" with { type: "json" };
import { parsePublicKey } from "../../src/crypto/keys.ts";

const ROOT = resolve(import.meta.dir, "../..");
const MAIN = join(ROOT, "src/cli/main.ts");
const directory = mkdtempSync(join(tmpdir(), "fitb-cli-"));
afterAll(() => rmSync(directory, { recursive: true, force: true }));

interface Outcome {
  code: number;
  stdout: string;
  stderr: string;
}

async function fitb(...args: string[]): Promise<Outcome> {
  const child = Bun.spawn([process.execPath, MAIN, ...args], {
    cwd: directory,
    env: { ...process.env, FITB_DEBUG: "" },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  return { code, stdout, stderr };
}

function lines(text: string): string[] {
  return text.split("\n").filter((line) => line !== "");
}

describe("fitb (source entry point)", () => {
  test("--help lists the commands on stdout and exits 0", async () => {
    const result = await fitb("--help");
    expect(result.code).toBe(0);
    expect(result.stdout).toContain("keygen");
    expect(result.stdout).toContain("cluster init");
    expect(result.stdout).toContain("config check");
    expect(result.stderr).toBe("");
  });

  test("a service command's --help into a pipe whose reader is gone (| head -1) ends quietly with 0, not as a service that lost its log", async () => {
    for (const command of ["replica", "relay"]) {
      // The reader exits at once; the command starts writing half a second later, into a pipe nobody reads.
      const rc = join(directory, `${command}-help.rc`);
      const shell = Bun.spawn(
        ["bash", "-c", `(sleep 0.5; "${process.execPath}" "${MAIN}" ${command} --help; echo $? > "${rc}") 2>"${rc}.err" | true`],
        { stdout: "ignore", stderr: "pipe" },
      );
      expect(await shell.exited).toBe(0);
      expect(readFileSync(rc, "utf8").trim()).toBe("0");
      expect(readFileSync(`${rc}.err`, "utf8")).not.toContain("standard output is gone");
    }
  });

  test("--version prints the package version", async () => {
    expect(await fitb("--version")).toEqual({ code: 0, stdout: `fitb ${packageJson.version}\n`, stderr: "" });
  });

  test("an unknown command exits 2 with a one-line reason and the usage, no stack", async () => {
    const result = await fitb("publishh");
    expect(result.code).toBe(2);
    expect(result.stdout).toBe("");
    expect(lines(result.stderr)[0]).toBe("fitb: unknown command 'publishh'");
    expect(result.stderr).toContain("Usage: fitb <command>");
    expect(result.stderr).not.toContain("    at ");
  });

  test("a bad flag exits 2 with the command's usage", async () => {
    const result = await fitb("keygen", "--out", join(directory, "unused.key"), "--bogus");
    expect(result.code).toBe(2);
    expect(lines(result.stderr)).toEqual([
      "fitb keygen: unknown flag --bogus",
      "Usage: fitb keygen --out FILE [--force]",
      "Run 'fitb keygen --help' for details.",
    ]);
  });

  test("a missing flag value exits 2", async () => {
    const result = await fitb("keygen", "--out");
    expect(result.code).toBe(2);
    expect(lines(result.stderr)[0]).toBe("fitb keygen: --out needs a value (FILE)");
  });

  test("keygen writes the pair, prints the public key, and refuses to overwrite without --force", async () => {
    const path = join(directory, "probe.key");
    const first = await fitb("keygen", "--out", path);
    expect(first.code).toBe(0);
    const printed = first.stdout.trim();
    expect(printed).toMatch(/^ed25519:[A-Za-z0-9_-]{43}$/);
    expect(parsePublicKey(printed).byteLength).toBe(32);
    expect(readFileSync(`${path}.pub`, "utf8")).toBe(`${printed}\n`);
    expect(statSync(path).mode & 0o777).toBe(0o600);

    const again = await fitb("keygen", "--out", path);
    expect(again.code).toBe(1);
    expect(again.stderr).toBe(`fitb keygen: ${path} already exists; pass --force to replace it (the old key is lost)\n`);
    expect(readFileSync(`${path}.pub`, "utf8")).toBe(`${printed}\n`);

    const forced = await fitb("keygen", "--out", path, "--force");
    expect(forced.code).toBe(0);
    expect(forced.stdout.trim()).not.toBe(printed);
  });

  test("keygen --out a directory is refused at once, with or without --force, and writes nothing", async () => {
    const dir = join(directory, "keys-dir");
    mkdirSync(dir);
    for (const force of [[], ["--force"]]) {
      const result = await fitb("keygen", "--out", dir, ...force);
      expect(result.code).toBe(2);
      expect(lines(result.stderr)[0]).toBe(
        `fitb keygen: --out ${dir} is a directory; --out takes the secret key file to write, e.g. --out ${join(dir, "probe.key")}`,
      );
      expect(result.stdout).toBe("");
    }
    expect(readdirSync(dir)).toEqual([]);
    expect(existsSync(`${dir}.pub`)).toBe(false);
  });

  test("a public key or a cluster file given as --key is named as such before its mode is looked at", async () => {
    const dir = join(directory, "told");
    expect((await fitb("cluster", "init", "--replicas", "4", "--dir", dir)).code).toBe(0);
    const config = join(dir, "cluster.toml");
    const admin = join(dir, "admin.key");
    // Both files are 0644: the mode is not what is wrong with them.
    const pub = await fitb("admin", "--config", config, "--key", `${admin}.pub`, "status");
    expect(pub).toEqual({
      code: 1,
      stdout: "",
      stderr: `fitb admin: ${admin}.pub is a public key file; --key takes the secret key, ${admin}\n`,
    });
    const cluster = await fitb("admin", "--config", config, "--key", config, "status");
    expect(cluster.code).toBe(1);
    expect(cluster.stderr).toBe(
      `fitb admin: ${config} is a cluster file, not a secret key; --config takes it, --key the secret key file\n`,
    );
  });

  test("cluster init then config check is clean, and --id checks a replica's key", async () => {
    const dir = join(directory, "cluster");
    const init = await fitb("cluster", "init", "--replicas", "4", "--dir", dir);
    expect(init.code).toBe(0);
    expect(lines(init.stdout)[0]).toBe(`wrote ${join(dir, "cluster.toml")}: cluster local, n=4, f=1`);

    const check = await fitb("config", "check", join(dir, "cluster.toml"));
    expect(check).toEqual({ code: 0, stdout: "ok: cluster local, n=4, f=1, 4 replicas\n", stderr: "" });
    // --config names it as every other command takes it; two different files are refused.
    expect(await fitb("config", "check", "--config", join(dir, "cluster.toml"))).toEqual(check);
    const two = await fitb("config", "check", join(dir, "cluster.toml"), "--config", join(dir, "other.toml"));
    expect(two.code).toBe(2);
    expect(two.stderr).toContain(`two cluster files: ${join(dir, "cluster.toml")} and --config ${join(dir, "other.toml")}`);

    const withKey = await fitb("config", "check", join(dir, "cluster.toml"), "--id", "2");
    expect(withKey.code).toBe(0);
    expect(lines(withKey.stdout)[1]).toBe(`ok: replica 2 key ${join(dir, "replica-2.key")} matches`);

    // --key checks the file `fitb replica --key` would be given instead.
    const moved = join(directory, "elsewhere-2.key");
    copyFileSync(join(dir, "replica-2.key"), moved);
    chmodSync(moved, 0o600);
    const named = await fitb("config", "check", join(dir, "cluster.toml"), "--id", "2", "--key", moved);
    expect(named.code).toBe(0);
    expect(lines(named.stdout)[1]).toBe(`ok: replica 2 key ${moved} matches`);
    const wrong = await fitb("config", "check", join(dir, "cluster.toml"), "--id", "1", "--key", moved);
    expect(wrong.code).toBe(1);
    // Nothing says "ok" when the check failed.
    expect(wrong.stdout).toBe("");
    expect(wrong.stderr).toContain(`${moved} holds ed25519:`);
    expect(wrong.stderr).toContain("but the cluster file lists for replica 1");
    const alone = await fitb("config", "check", join(dir, "cluster.toml"), "--key", moved);
    expect(alone.code).toBe(2);
    expect(alone.stderr).toContain("--key names replica N's secret key file: give --id N too");

    chmodSync(join(dir, "replica-2.key"), 0o640);
    const loose = await fitb("config", "check", join(dir, "cluster.toml"), "--id", "2");
    expect(loose.code).toBe(1);
    expect(loose.stderr).toContain("accessible by group or others (mode 640)");
    expect(loose.stderr).toContain("chmod 600");
    chmodSync(join(dir, "replica-2.key"), 0o600);

    const outOfRange = await fitb("config", "check", join(dir, "cluster.toml"), "--id", "9");
    expect(outOfRange.code).toBe(1);
    expect(outOfRange.stderr).toBe(
      'fitb config check: --id 9: the cluster file lists replicas 0..3, not 9: either replica 9 was removed from the group (fitb admin members shows the group now), or it was added to the running group (admin add-replica) after this file was made: then start it as README, Deployment, "Growing the group", says (it learns the group from the listed replicas)\n',
    );

    const refused = await fitb("cluster", "init", "--replicas", "4", "--dir", dir);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain("refusing to overwrite existing files");
    expect(refused.stderr).toContain("pass --force");
  });

  test("config check reports each problem with its field and exits 1", async () => {
    const dir = join(directory, "broken");
    expect((await fitb("cluster", "init", "--replicas", "4", "--dir", dir)).code).toBe(0);
    const path = join(dir, "cluster.toml");
    const text = readFileSync(path, "utf8");
    writeFileSync(
      path,
      text
        .replace("port = 7101", "port = 0")
        .replace(/key = "ed25519:[^"]+"\n# key_file = "replica-3/, 'key = "ed25519:xyz"\n# key_file = "replica-3'),
    );
    const result = await fitb("config", "check", path);
    expect(result.code).toBe(1);
    expect(result.stdout).toBe("");
    expect(lines(result.stderr)).toEqual([
      `${path}: replicas[1].port: expected a port number in 1..65535, got 0`,
      `${path}: replicas[3].key: expected "ed25519:<43 base64url chars>", got 3 chars after "ed25519:"`,
      `${path}: 2 problems`,
    ]);
  });

  test("cluster init refuses fewer than 4 replicas with exit 2", async () => {
    const result = await fitb("cluster", "init", "--replicas", "3", "--dir", join(directory, "small"));
    expect(result.code).toBe(2);
    expect(lines(result.stderr)[0]).toBe("fitb cluster init: --replicas: a group needs at least 4 replicas (n >= 3f+1 with f >= 1), got 3");
  });

  test("config check of a missing file names it", async () => {
    const path = join(directory, "absent.toml");
    const result = await fitb("config", "check", path);
    expect(result.code).toBe(1);
    expect(lines(result.stderr)[0]).toBe(`cannot read ${path}: no such file or directory`);
  });
});
