/**
 * The compiled executable, built with the flags `npm run build` uses, run from a
 * directory with no node_modules: proof that it stands alone.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const ROOT = resolve(import.meta.dir, "../..");
const directory = mkdtempSync(join(tmpdir(), "fitb-binary-"));
afterAll(() => rmSync(directory, { recursive: true, force: true }));

/** Compiling embeds the Bun runtime (about 100 MB written); a slow disk needs the room. */
const COMPILE_TEST_TIMEOUT_MS = 120_000;

async function runIn(cwd: string, argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = Bun.spawn(argv, { cwd, stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  return { code, stdout, stderr };
}

test(
  "bun build --compile produces a fitb that runs --help and keygen on its own",
  async () => {
    const binary = join(directory, "fitb");
    const build = await runIn(ROOT, [
      process.execPath,
      "build",
      "--compile",
      "--minify",
      "--sourcemap",
      "src/cli/main.ts",
      "--outfile",
      binary,
    ]);
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
