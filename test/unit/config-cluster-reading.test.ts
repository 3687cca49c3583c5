/**
 * Reading a cluster file stays bounded whatever the path names (a device, a FIFO, a huge
 * file), a syntax error in a large file is placed without parsing every prefix, and the
 * file's host rule is there for commands that take a host elsewhere (admin add-replica).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CONFIG_FILE_BYTES_MAX, formatConfigIssue, hostProblem, loadClusterConfig } from "../../src/config/cluster.ts";
import { tomlErrorPosition } from "../../src/config/toml-position.ts";

const directory = mkdtempSync(join(tmpdir(), "fitb-config-reading-"));
afterAll(() => rmSync(directory, { recursive: true, force: true }));

function onlyError(path: string): string {
  const result = loadClusterConfig(path);
  if (result.ok) throw new Error(`${path} was accepted`);
  expect(result.errors).toHaveLength(1);
  return formatConfigIssue(result.errors[0]!);
}

describe("the cluster file's size bound", () => {
  test("a device that never ends is read up to the bound, not forever (stat gives it size 0)", () => {
    expect(onlyError("/dev/zero")).toBe(
      `/dev/zero is more than ${CONFIG_FILE_BYTES_MAX} bytes; a cluster file is at most ${CONFIG_FILE_BYTES_MAX}`,
    );
  });

  test("a regular file over the bound is refused with its size", () => {
    const path = join(directory, "big.toml");
    writeFileSync(path, "#".repeat(CONFIG_FILE_BYTES_MAX + 10));
    expect(onlyError(path)).toBe(`${path} is ${CONFIG_FILE_BYTES_MAX + 10} bytes; a cluster file is at most ${CONFIG_FILE_BYTES_MAX}`);
  });

  test("a file of exactly the bound is read (and judged on its content)", () => {
    const path = join(directory, "full.toml");
    writeFileSync(path, "#".repeat(CONFIG_FILE_BYTES_MAX));
    const result = loadClusterConfig(path);
    expect(result.ok).toBe(false);
    if (!result.ok)
      expect(result.errors.map(formatConfigIssue)).toContain(
        "name: missing, expected a name of 1..64 chars from [A-Za-z0-9._-], starting with a letter or digit",
      );
  });

  test("a directory is a read error naming the path", () => {
    expect(onlyError(directory)).toBe(`cannot read ${directory}: is a directory`);
  });
});

describe("placing a TOML syntax error", () => {
  test("in a file of about 1 MB, by bisection (a parse of every prefix took half a minute)", () => {
    // Comments: the parser's own time grows with the keys of a table, and this is about the search.
    const lines = Array.from({ length: 30_000 }, (_, index) => `# line ${index} of a long comment, ${"-".repeat(20)}`);
    lines.push("broken = 1 2");
    const text = `${lines.join("\n")}\n`;
    expect(text.length).toBeGreaterThan(CONFIG_FILE_BYTES_MAX);
    expect(tomlErrorPosition(text)).toEqual({ line: 30_001, column: 12 });
    // One line of a megabyte: the column is bisected too.
    expect(tomlErrorPosition(`a = "${"x".repeat(1_000_000)}" 2\n`)).toEqual({ line: 1, column: 1_000_008 });
  });

  test("the same place as a parse of every prefix finds, where the error is the first bad character", () => {
    expect(tomlErrorPosition("a = 1\nb = 1 2\nc = 3\n")).toEqual({ line: 2, column: 7 });
    expect(tomlErrorPosition('name = "x"\n[limits\nfoo = 1\n')).toEqual({ line: 2, column: 8 });
    expect(tomlErrorPosition("arr = [1,\n2,,\n3]\n")).toEqual({ line: 2, column: 3 });
    expect(tomlErrorPosition("x = tru")).toEqual({ line: 1, column: 7 });
  });
});

describe("hostProblem: the cluster file's rule for a replica's host", () => {
  test("accepts what the file accepts", () => {
    for (const host of ["10.0.1.255", "db1.example.net", "::1", "fe80::1", "localhost"]) expect(hostProblem(host)).toBeNull();
  });

  test("refuses what the file refuses, saying what it expected", () => {
    for (const host of ["10.0.1.256", "1.2.3", "[::1]", "bad host", "-x.example", "", "a".repeat(254)]) {
      expect(hostProblem(host)).toStartWith("expected a hostname, an IPv4 address or an IPv6 address (without brackets), got ");
    }
  });
});
