/**
 * How `fitb cluster export --out FILE` writes (replaceFile, src/cli/commands/cluster-export.ts):
 * in one step, and a failed write (--out naming a directory) leaves no temporary file behind.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { replaceFile } from "../../src/cli/commands/cluster-export.ts";
import { CommandError } from "../../src/cli/errors.ts";

const directory = mkdtempSync(join(tmpdir(), "fitb-export-write-"));
afterAll(() => rmSync(directory, { recursive: true, force: true }));

describe("replaceFile", () => {
  test("writes the file, with nothing else left beside it", () => {
    const dir = join(directory, "ok");
    mkdirSync(dir);
    replaceFile(join(dir, "cluster.toml"), 'name = "x"\n');
    expect(readFileSync(join(dir, "cluster.toml"), "utf8")).toBe('name = "x"\n');
    expect(readdirSync(dir)).toEqual(["cluster.toml"]);
  });

  test("a path that is a directory fails naming it, and removes its temporary file", () => {
    const dir = join(directory, "failing");
    const out = join(dir, "out");
    mkdirSync(out, { recursive: true });
    expect(() => replaceFile(out, 'name = "x"\n')).toThrow(CommandError);
    expect(() => replaceFile(out, 'name = "x"\n')).toThrow(`cannot write ${out}: `);
    expect(readdirSync(dir)).toEqual(["out"]);
  });

  test("a directory that does not exist is named as the reason", () => {
    const out = join(directory, "no-such-dir", "cluster.toml");
    expect(() => replaceFile(out, 'name = "x"\n')).toThrow(
      `cannot write ${out}: the directory ${join(directory, "no-such-dir")} does not exist`,
    );
  });
});
