/**
 * `fitb replica --ftl on|off` (src/cli/jit.ts): which environment the replica restarts
 * with, and when it restarts at all.
 */
import { describe, expect, test } from "bun:test";
import { ensureFtl, environmentFor, FTL_ENV, ftlActive } from "../../src/cli/jit.ts";

describe("environmentFor", () => {
  test("asks for a restart with the variable set when the environment does not say what the setting asks", () => {
    const env = { PATH: "/bin", NOTIFY_SOCKET: "/run/notify", GONE: undefined };
    expect(environmentFor("off", env)).toEqual({ PATH: "/bin", NOTIFY_SOCKET: "/run/notify", [FTL_ENV]: "false" });
    expect(environmentFor("on", env)).toEqual({ PATH: "/bin", NOTIFY_SOCKET: "/run/notify", [FTL_ENV]: "true" });
    expect(environmentFor("off", { [FTL_ENV]: "true" })).toEqual({ [FTL_ENV]: "false" });
  });

  test("asks for nothing once the environment has the value (the restarted process goes on)", () => {
    expect(environmentFor("off", { [FTL_ENV]: "false" })).toBeNull();
    expect(environmentFor("on", { [FTL_ENV]: "true" })).toBeNull();
  });
});

test("ftlActive reads the variable as the runtime does: off only when false or 0", () => {
  expect(ftlActive({})).toBe(true);
  expect(ftlActive({ [FTL_ENV]: "true" })).toBe(true);
  expect(ftlActive({ [FTL_ENV]: "false" })).toBe(false);
  expect(ftlActive({ [FTL_ENV]: "FALSE" })).toBe(false);
  expect(ftlActive({ [FTL_ENV]: "0" })).toBe(false);
});

describe("ensureFtl", () => {
  test("replaces the process with the same command, its arguments and the variable set", () => {
    const calls: { file: string; args: string[]; env: Record<string, string> }[] = [];
    const execve = (file: string, args: string[], env: Record<string, string>): never => {
      calls.push({ file, args, env });
      throw new Error("execve stand-in: a real one does not return");
    };
    const failure = ensureFtl("off", ["/usr/bin/bun", "/src/cli/main.ts"], ["replica", "--id", "2"], { HOME: "/root" }, execve);
    expect(calls).toEqual([
      {
        file: "/usr/bin/bun",
        args: ["/usr/bin/bun", "/src/cli/main.ts", "replica", "--id", "2"],
        env: { HOME: "/root", [FTL_ENV]: "false" },
      },
    ]);
    // A failed execve is reported, and the replica goes on as it is.
    expect(failure).toBe("execve stand-in: a real one does not return");
  });

  test("does nothing when the environment already has the value", () => {
    let called = false;
    const execve = (): never => {
      called = true;
      throw new Error("not expected");
    };
    expect(ensureFtl("off", ["/usr/local/bin/fitb"], ["replica"], { [FTL_ENV]: "false" }, execve)).toBeNull();
    expect(called).toBe(false);
  });

  test("a runtime without process.execve is reported, not fatal", () => {
    expect(ensureFtl("off", ["/usr/local/bin/fitb"], ["replica"], {}, null)).toContain("process.execve");
  });
});
