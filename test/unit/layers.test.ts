// One direction of imports (src/README.md §2): cli -> relay / replica / client -> core /
// crypto -> wire. Every relative import of every source file is checked against the rooms
// it may reach; a new edge that runs back up fails here with the file and the import.
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";

const REPO = resolve(import.meta.dir, "..", "..");

/** The rooms each room may import from (itself always). */
const ALLOWED: Record<string, readonly string[]> = {
  wire: [],
  "src/net": [],
  "src/crypto": ["wire"],
  "src/core": ["wire"],
  "src/config": ["wire", "src/core", "src/crypto"],
  "src/sim": ["wire", "src/core", "src/crypto", "src/sim/runtime"],
  // The runtime under simulation: the real replica runtime on a simulated clock, network and disk.
  "src/sim/runtime": ["wire", "src/core", "src/crypto", "src/config", "src/client", "src/replica", "src/sim"],
  "src/client": ["wire", "src/core", "src/crypto", "src/config", "src/net"],
  "src/metrics": [],
  "src/threads": ["wire", "src/crypto"],
  "src/replica": ["wire", "src/core", "src/crypto", "src/config", "src/net", "src/metrics", "src/threads"],
  "src/relay": ["wire", "src/core", "src/crypto", "src/config", "src/net", "src/client", "src/metrics"],
  "src/cli": [
    "wire",
    "src/core",
    "src/crypto",
    "src/config",
    "src/net",
    "src/client",
    "src/replica",
    "src/relay",
    "src/sim",
    "src/sim/runtime",
    "src/metrics",
    "src/threads",
  ],
};

function roomOf(path: string): string | null {
  const rel = relative(REPO, path);
  for (const room of Object.keys(ALLOWED).sort((a, b) => b.length - a.length)) {
    if (rel === room || rel.startsWith(`${room}/`)) return room;
  }
  return null;
}

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) {
      if (name !== "vectors") out.push(...sources(path));
    } else if (name.endsWith(".ts")) {
      out.push(path);
    }
  }
  return out;
}

const IMPORT = /(?:^|\n)\s*(?:import|export)\s[^;]*?from\s+"(\.[^"]+)"/g;

describe("imports run one way", () => {
  const files = [...sources(join(REPO, "src")), ...sources(join(REPO, "wire"))];

  test("every source file belongs to a room", () => {
    expect(files.filter((file) => roomOf(file) === null).map((file) => relative(REPO, file))).toEqual([]);
  });

  test("no relative import reaches a room its room may not use", () => {
    const wrong: string[] = [];
    for (const file of files) {
      const from = roomOf(file) as string;
      for (const match of readFileSync(file, "utf8").matchAll(IMPORT)) {
        const target = roomOf(resolve(dirname(file), match[1] as string));
        if (target === null || target === from) continue;
        if (!(ALLOWED[from] as readonly string[]).includes(target))
          wrong.push(`${relative(REPO, file)} (${from}) imports ${match[1]} (${target})`);
      }
    }
    expect(wrong).toEqual([]);
  });
});
