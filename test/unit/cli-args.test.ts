import { describe, expect, test } from "bun:test";
import { argsSynopsis, editDistance, parseArgs, type ArgsSpec } from "../../src/cli/args.ts";
import { UsageError } from "../../src/cli/errors.ts";

const SPEC: ArgsSpec = {
  flags: [
    { name: "out", kind: "string", valueName: "FILE", required: true, description: "output" },
    { name: "port", kind: "string", valueName: "PORT", defaultValue: "7100", description: "port" },
    { name: "peer", kind: "string", valueName: "ADDR", repeated: true, description: "peers" },
    { name: "force", kind: "boolean", description: "force" },
  ],
  positionals: [
    { name: "FIRST", required: true, description: "first" },
    { name: "SECOND", required: false, description: "second" },
  ],
};

function usageError(argv: string[]): string {
  try {
    parseArgs(argv, SPEC);
  } catch (error) {
    if (error instanceof UsageError) return error.message;
    throw error;
  }
  throw new Error(`expected a usage error for ${argv.join(" ")}`);
}

describe("parseArgs", () => {
  test("reads --x v, --x=v, booleans, repeated flags and positionals in any order", () => {
    const args = parseArgs(["a", "--out", "k", "--peer=h1:1", "--force", "--peer", "h2:2", "b"], SPEC);
    expect(args.requiredString("out")).toBe("k");
    expect(args.strings("peer")).toEqual(["h1:1", "h2:2"]);
    expect(args.boolean("force")).toBe(true);
    expect(args.positional("FIRST")).toBe("a");
    expect(args.positional("SECOND")).toBe("b");
  });

  test("absent flags: defaults, false, empty list, undefined positional", () => {
    const args = parseArgs(["--out", "k", "a"], SPEC);
    expect(args.string("port")).toBe("7100");
    expect(args.integer("port", 1, 65_535)).toBe(7100);
    expect(args.boolean("force")).toBe(false);
    expect(args.strings("peer")).toEqual([]);
    expect(args.positional("SECOND")).toBeUndefined();
  });

  test("--x= gives an empty value, and values may start with a single dash", () => {
    const args = parseArgs(["--out=", "a", "--port", "-1"], SPEC);
    expect(args.string("out")).toBe("");
    expect(args.string("port")).toBe("-1");
    expect(() => args.integer("port", 1, 65_535)).toThrow('--port: expected an integer in 1..65535, got "-1"');
  });

  test("everything after -- is positional", () => {
    const args = parseArgs(["--out", "k", "--", "--force"], SPEC);
    expect(args.positional("FIRST")).toBe("--force");
    expect(args.boolean("force")).toBe(false);
  });

  test("a lone - is a positional (conventionally standard input)", () => {
    expect(parseArgs(["--out", "k", "-"], SPEC).positional("FIRST")).toBe("-");
  });

  test("user mistakes are usage errors with a one-line reason", () => {
    expect(usageError(["--out", "k", "a", "--bogus"])).toBe("unknown flag --bogus");
    expect(usageError(["--out", "k", "a", "--forse"])).toBe("unknown flag --forse (did you mean --force?)");
    expect(usageError(["--out", "k", "a", "-f"])).toBe("unknown flag -f");
    expect(usageError(["a", "--out"])).toBe("--out needs a value (FILE)");
    expect(usageError(["a", "--out", "--force"])).toBe("--out needs a value (FILE)");
    expect(usageError(["a", "--out", "k", "--out", "j"])).toBe("--out given more than once");
    expect(usageError(["a", "--out", "k", "--force", "--force"])).toBe("--force given more than once");
    expect(usageError(["a", "--out", "k", "--force=yes"])).toBe("--force does not take a value");
    expect(usageError(["a"])).toBe("missing required flag --out FILE");
    expect(usageError(["--out", "k"])).toBe("missing argument FIRST");
    expect(usageError(["--out", "k", "a", "b", "c"])).toBe('unexpected argument "c"');
    // The shell split a message with spaces (fitb pub net.links eth0 down): the hint says how to give it.
    const textSpec = { ...SPEC, positionals: [SPEC.positionals[0], { name: "MESSAGE", description: "m", required: false, text: true }] };
    expect(() => parseArgs(["--out", "k", "a", "eth0", "down"], textSpec as typeof SPEC)).toThrow(
      'unexpected argument "down" (MESSAGE is one argument: quote a value with spaces)',
    );
  });

  test("integers are decimal, whole and in range", () => {
    for (const bad of ["", "1.5", "0x10", "1e3", " 7", "99999999999999999999", "70000"]) {
      expect(() => parseArgs(["--out", "k", "a", "--port", bad], SPEC).integer("port", 1, 65_535)).toThrow(UsageError);
    }
  });

  test("reading an undeclared flag is a programming error, not a usage error", () => {
    const args = parseArgs(["--out", "k", "a"], SPEC);
    expect(() => args.string("nope")).toThrow(/not declared/);
    expect(() => args.boolean("out")).toThrow(/not declared/);
    expect(() => args.string("nope")).not.toThrow(UsageError);
  });
});

test("argsSynopsis marks optional parts and repeats", () => {
  expect(argsSynopsis(SPEC)).toBe("--out FILE [--port PORT] [--peer ADDR ...] [--force] FIRST [SECOND]");
});

test("editDistance", () => {
  expect(editDistance("force", "forse")).toBe(1);
  expect(editDistance("", "abc")).toBe(3);
  expect(editDistance("keygen", "keygen")).toBe(0);
});
