import { describe, expect, test } from "bun:test";
import type { Command, CommandIo } from "../../src/cli/command.ts";
import { CommandError, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError } from "../../src/cli/errors.ts";
import { COMMANDS } from "../../src/cli/registry.ts";
import { runCli, VERSION } from "../../src/cli/run.ts";
import packageJson from "../../package.json" with { type: "json" };

interface Captured {
  code: number;
  out: string[];
  err: string[];
}

async function run(argv: string[], options: { commands?: readonly Command[]; env?: Record<string, string> } = {}): Promise<Captured> {
  const out: string[] = [];
  const err: string[] = [];
  const io: CommandIo = { out: (line) => out.push(line), err: (line) => err.push(line) };
  const code = await runCli(argv, {
    io,
    env: options.env ?? {},
    ...(options.commands === undefined ? {} : { commands: options.commands }),
  });
  return { code, out, err };
}

/** A command for exercising the dispatcher: it throws whatever its --mode asks for. */
const thrower: Command = {
  path: ["probe", "throw"],
  summary: "throws on request",
  description: ["Throws."],
  flags: [{ name: "mode", kind: "string", valueName: "MODE", required: true, description: "what to throw" }],
  positionals: [],
  examples: [],
  run(args) {
    const mode = args.requiredString("mode");
    if (mode === "usage") throw new UsageError("bad usage inside run");
    if (mode === "user") throw new CommandError("the file is\nbroken in two places");
    if (mode === "internal") throw new TypeError("x is not a function\nsecond line");
    if (mode === "async") return Promise.reject(new Error("async failure"));
    return 3;
  },
};

describe("top level", () => {
  test("--help lists every registered command and nothing else", async () => {
    const result = await run(["--help"]);
    expect(result.code).toBe(EXIT_OK);
    const listed = result.out.filter((line) => /^ {2}[a-z]/.test(line)).map((line) => line.trim().split(/\s{2,}/)[0]);
    expect(listed).toEqual(COMMANDS.map((command) => command.path.join(" ")));
    expect(result.err).toEqual([]);
  });

  test("-h and `help` are the same as --help", async () => {
    const help = await run(["--help"]);
    expect((await run(["-h"])).out).toEqual(help.out);
    expect((await run(["help"])).out).toEqual(help.out);
  });

  test("--version prints the package.json version", async () => {
    expect(VERSION).toBe(packageJson.version);
    expect(await run(["--version"])).toEqual({ code: EXIT_OK, out: [`fitb ${packageJson.version}`], err: [] });
  });

  test("no arguments prints help to stderr and exits 2", async () => {
    const result = await run([]);
    expect(result.code).toBe(EXIT_USAGE);
    expect(result.out).toEqual([]);
    expect(result.err.join("\n")).toContain("Commands:");
  });

  test("an unknown command or top-level flag exits 2 with a reason and the usage", async () => {
    const unknown = await run(["frobnicate"]);
    expect(unknown.code).toBe(EXIT_USAGE);
    expect(unknown.err[0]).toBe("fitb: unknown command 'frobnicate'");
    expect(unknown.err[1]).toBe("Usage: fitb <command> [flags]");
    expect((await run(["keygn"])).err[0]).toBe("fitb: unknown command 'keygn' (did you mean 'keygen'?)");
    const flag = await run(["--bogus"]);
    expect(flag.code).toBe(EXIT_USAGE);
    expect(flag.err[0]).toBe("fitb: unknown flag --bogus");
  });
});

describe("command groups", () => {
  test("`fitb cluster` alone names the missing subcommand and lists the group", async () => {
    const result = await run(["cluster"]);
    expect(result.code).toBe(EXIT_USAGE);
    expect(result.err[0]).toBe("fitb: 'cluster' needs a subcommand");
    expect(result.err.join("\n")).toContain("cluster init");
  });

  test("`fitb cluster --help` and `fitb help cluster` list the group", async () => {
    for (const argv of [
      ["cluster", "--help"],
      ["help", "cluster"],
    ]) {
      const result = await run(argv);
      expect(result.code).toBe(EXIT_OK);
      expect(result.out.join("\n")).toContain("cluster init");
    }
  });

  test("an unknown subcommand exits 2", async () => {
    const result = await run(["cluster", "explode"]);
    expect(result.code).toBe(EXIT_USAGE);
    expect(result.err[0]).toBe("fitb: unknown command 'cluster explode'");
  });
});

describe("per-command help", () => {
  for (const command of COMMANDS) {
    const name = command.path.join(" ");
    test(`fitb ${name} --help shows its usage and every flag`, async () => {
      const result = await run([...command.path, "--help"]);
      expect(result.code).toBe(EXIT_OK);
      expect(result.out[0]).toStartWith(`Usage: fitb ${name}`);
      for (const flag of command.flags) expect(result.out.join("\n")).toContain(`--${flag.name}`);
      expect((await run(["help", ...command.path])).out).toEqual(result.out);
    });
  }

  test("--help wins over otherwise bad arguments, but not after --", async () => {
    expect((await run(["keygen", "--bogus", "--help"])).code).toBe(EXIT_OK);
    expect((await run(["keygen", "--", "--help"])).code).toBe(EXIT_USAGE);
  });
});

describe("errors from commands", () => {
  const commands = [thrower];

  test("a usage error exits 2 with the reason, the synopsis and a pointer to --help", async () => {
    const result = await run(["probe", "throw", "--mode", "usage"], { commands });
    expect(result).toEqual({
      code: EXIT_USAGE,
      out: [],
      err: ["fitb probe throw: bad usage inside run", "Usage: fitb probe throw --mode MODE", "Run 'fitb probe throw --help' for details."],
    });
    expect((await run(["probe", "throw"], { commands })).err[0]).toBe("fitb probe throw: missing required flag --mode MODE");
  });

  test("a usage error of a command with many flags folds its optional ones into [flags]; --help still lists them", async () => {
    const many: Command = {
      ...thrower,
      path: ["probe", "many"],
      flags: [
        ...thrower.flags,
        ...Array.from({ length: 12 }, (_, i) => ({
          name: `option-${i}`,
          kind: "string" as const,
          valueName: "VALUE",
          description: `option ${i}`,
        })),
      ],
      positionals: [{ name: "TAG", required: false, description: "a tag" }],
    };
    const result = await run(["probe", "many", "--mode", "usage"], { commands: [many] });
    expect(result.code).toBe(EXIT_USAGE);
    expect(result.err[1]).toBe("Usage: fitb probe many --mode MODE [flags] [TAG]");
    const help = await run(["probe", "many", "--help"], { commands: [many] });
    expect(help.out[0]).toContain("[--option-11 VALUE] [TAG]");
    expect(help.out.filter((line) => line.includes("--option-"))).toHaveLength(13);
    // Every registered command's error synopsis fits a terminal line.
    for (const command of COMMANDS) {
      const bad = await run([...command.path, "--no-such-flag"]);
      expect(bad.err.find((line) => line.startsWith("Usage: "))?.length ?? 0).toBeLessThanOrEqual(107);
    }
  });

  test("a user error exits 1 with its message and no stack", async () => {
    const result = await run(["probe", "throw", "--mode", "user"], { commands });
    expect(result).toEqual({ code: EXIT_FAILURE, out: [], err: ["fitb probe throw: the file is", "broken in two places"] });
  });

  test("an internal error is one line and exit 1; the stack only with FITB_DEBUG=1", async () => {
    const quiet = await run(["probe", "throw", "--mode", "internal"], { commands });
    expect(quiet).toEqual({
      code: EXIT_FAILURE,
      out: [],
      err: ["fitb probe throw: internal error: x is not a function (set FITB_DEBUG=1 for details)"],
    });
    const loud = await run(["probe", "throw", "--mode", "internal"], { commands, env: { FITB_DEBUG: "1" } });
    expect(loud.err[0]).toBe("fitb probe throw: internal error: x is not a function");
    expect(loud.err.some((line) => line.includes("cli-run.test.ts"))).toBe(true);
  });

  test("rejected promises are caught like thrown errors", async () => {
    const result = await run(["probe", "throw", "--mode", "async"], { commands });
    expect(result.code).toBe(EXIT_FAILURE);
    expect(result.err).toEqual(["fitb probe throw: internal error: async failure (set FITB_DEBUG=1 for details)"]);
  });

  test("the command's own exit code is passed through", async () => {
    expect((await run(["probe", "throw", "--mode", "none"], { commands })).code).toBe(3);
  });
});
