// The open-file limit a replica says at start is too low (src/cli/open-files.ts).
import { expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { openFileLimit, openFileLimitProblem, openFilesNeeded } from "../../src/cli/open-files.ts";

const LIMITS = (soft: string, hard: string): string =>
  [
    "Limit                     Soft Limit           Hard Limit           Units     ",
    "Max processes             63229                63229                processes ",
    `Max open files            ${soft.padEnd(20)} ${hard.padEnd(20)} files     `,
  ].join("\n");

test("the soft limit is read from /proc/self/limits' text; unlimited or absent is no limit", () => {
  expect(openFileLimit(LIMITS("1024", "524288"))).toBe(1024);
  expect(openFileLimit(LIMITS("unlimited", "unlimited"))).toBeNull();
  expect(openFileLimit("nothing here")).toBeNull();
});

test("a limit under what the connection bounds can hold open is named, with how to raise it; 65536 is enough", () => {
  const needed = openFilesNeeded(4);
  expect(needed).toBeGreaterThan(4096);
  expect(openFileLimitProblem(4, () => LIMITS("1024", "1024"))).toBe(
    `the open file limit is 1024, below the ${needed} this replica's connection bounds can hold open: past it new connections fail (EMFILE) and the listener spins; raise it (LimitNOFILE= in the systemd unit, ulimit -n)`,
  );
  expect(openFileLimitProblem(4, () => LIMITS("65536", "65536"))).toBeNull();
  expect(openFileLimitProblem(4, () => LIMITS(String(needed), String(needed)))).toBeNull();
  // Off Linux (no /proc): nothing to say.
  expect(
    openFileLimitProblem(4, () => {
      throw new Error("ENOENT");
    }),
  ).toBeNull();
});

const noPrlimit = spawnSync("prlimit", ["--version"]).status !== 0;
if (noPrlimit) console.warn("skipping the prlimit case: prlimit (util-linux) is not installed");

test.skipIf(noPrlimit)("a process started under prlimit --nofile=512 reads its own limit as too low", () => {
  const module = join(import.meta.dir, "../../src/cli/open-files.ts");
  const run = spawnSync(
    "prlimit",
    [
      "--nofile=512:512",
      process.execPath,
      "-e",
      `import { openFileLimitProblem } from ${JSON.stringify(module)}; console.log(openFileLimitProblem(4));`,
    ],
    { encoding: "utf8" },
  );
  expect(run.stdout).toStartWith("the open file limit is 512, below the");
});
