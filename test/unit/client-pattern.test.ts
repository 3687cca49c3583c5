// Wildcard tag patterns (src/client/pattern.ts), NATS semantics: `*` is exactly one
// segment, a last `>` one or more.
import { describe, expect, test } from "bun:test";
import { isPattern, matchesPattern, patternProblem } from "../../src/client/pattern.ts";
import { RelayLineParser } from "../../src/relay/parser.ts";

describe("matchesPattern", () => {
  test("* matches exactly one segment", () => {
    expect(matchesPattern("net.*", "net.links")).toBe(true);
    expect(matchesPattern("net.*", "net")).toBe(false);
    expect(matchesPattern("net.*", "net.links.eth0")).toBe(false);
    expect(matchesPattern("*.links", "net.links")).toBe(true);
    expect(matchesPattern("*.*", "net.links")).toBe(true);
    expect(matchesPattern("net.*", "storage.disks")).toBe(false);
  });

  test("a last > matches one or more segments, never none", () => {
    expect(matchesPattern("net.>", "net.links")).toBe(true);
    expect(matchesPattern("net.>", "net.links.eth0")).toBe(true);
    expect(matchesPattern("net.>", "net")).toBe(false);
    expect(matchesPattern(">", "net")).toBe(true);
    expect(matchesPattern("net.*.>", "net.links")).toBe(false);
    expect(matchesPattern("net.*.>", "net.links.eth0.rx")).toBe(true);
  });

  test("a plain tag matches only itself", () => {
    expect(matchesPattern("net.links", "net.links")).toBe(true);
    expect(matchesPattern("net.links", "net.links.eth0")).toBe(false);
  });
});

describe("patternProblem and isPattern", () => {
  test("valid patterns", () => {
    for (const pattern of ["net.*", "net.>", "*", ">", "*.links", "a.*.b.>"]) {
      expect(isPattern(pattern)).toBe(true);
      expect(patternProblem(pattern)).toBeNull();
    }
    expect(isPattern("net.links")).toBe(false);
  });

  test("> only last; no partial wildcards; no empty segments", () => {
    expect(patternProblem("net.>.x")).toContain("'>' may only be the last segment");
    expect(patternProblem("net.li*")).toContain("is not dot-separated segments");
    expect(patternProblem("net..*")).toContain("is not dot-separated segments");
    expect(patternProblem("")).toBe("a pattern must not be empty");
  });
});

describe("the relay's SUB and UNSUB take patterns, PUB does not", () => {
  const parse = (line: string) => new RelayLineParser().push(new TextEncoder().encode(line));
  test("SUB net.* and UNSUB net.> parse; PUB net.* is refused", () => {
    expect(parse("SUB net.*\n")).toEqual([{ t: "command", command: { t: "sub", tag: "net.*", from: null } }] as never);
    expect(parse("UNSUB net.>\n")).toEqual([{ t: "command", command: { t: "unsub", tag: "net.>" } }] as never);
    expect(JSON.stringify(parse("SUB net.>.x\n"))).toContain("may only be the last segment");
    expect(JSON.stringify(parse("PUB net.* x\n"))).toContain("BAD_REQUEST");
  });
});
