/**
 * `fitb replica --ftl on|off` (src/cli/jit.ts): which environment the replica restarts
 * with, and when it restarts at all.
 */
import { describe, expect, test } from "bun:test";
import { ensureFtl, environmentFor, FTL_ENV, FTL_RESTARTED_ENV, ftlActive, ftlEnvironment } from "../../src/cli/jit.ts";

const PID = 4242;

describe("environmentFor", () => {
  test("asks for a restart with the variable set, and marked with the process id, when the runtime would run the other way", () => {
    const env = { PATH: "/bin", NOTIFY_SOCKET: "/run/notify", GONE: undefined };
    const marked = { [FTL_RESTARTED_ENV]: "4242" };
    expect(environmentFor("off", env, PID)).toEqual({ PATH: "/bin", NOTIFY_SOCKET: "/run/notify", [FTL_ENV]: "false", ...marked });
    expect(environmentFor("off", { [FTL_ENV]: "true" }, PID)).toEqual({ [FTL_ENV]: "false", ...marked });
    expect(environmentFor("on", { [FTL_ENV]: "0" }, PID)).toEqual({ [FTL_ENV]: "true", ...marked });
  });

  test("asks for nothing when the runtime already runs as asked, whatever the spelling", () => {
    for (const value of ["false", "FALSE", "no", "0"]) expect(environmentFor("off", { [FTL_ENV]: value }, PID)).toBeNull();
    // The tier is on by default: --ftl on needs no restart.
    expect(environmentFor("on", {}, PID)).toBeNull();
    expect(environmentFor("on", { [FTL_ENV]: "true" }, PID)).toBeNull();
  });

  test("never asks twice in one process; a mark another process left does not count", () => {
    expect(environmentFor("off", { [FTL_RESTARTED_ENV]: "4242" }, PID)).toBeNull();
    expect(environmentFor("off", { [FTL_RESTARTED_ENV]: "99" }, PID)).toEqual({ [FTL_ENV]: "false", [FTL_RESTARTED_ENV]: "4242" });
  });
});

test("ftlActive reads the variable as the runtime does: off for false, no or 0 in any case", () => {
  expect(ftlActive({})).toBe(true);
  expect(ftlActive({ [FTL_ENV]: "true" })).toBe(true);
  expect(ftlActive({ [FTL_ENV]: "yes" })).toBe(true);
  for (const value of ["false", "FALSE", "No", "0"]) expect(ftlActive({ [FTL_ENV]: value })).toBe(false);
  expect(ftlActive(ftlEnvironment("off"))).toBe(false);
  expect(ftlActive(ftlEnvironment("on"))).toBe(true);
});

describe("ensureFtl", () => {
  test("replaces the process with the same command, its arguments and the variable set", () => {
    const calls: { file: string; args: string[]; env: Record<string, string> }[] = [];
    const execve = (file: string, args: string[], env: Record<string, string>): never => {
      calls.push({ file, args, env });
      throw new Error("execve stand-in: a real one does not return");
    };
    const command = ["/usr/bin/bun", "--cpu-prof", "/src/cli/main.ts"];
    const failure = ensureFtl("off", command, ["replica", "--id", "2"], { HOME: "/root" }, execve, PID);
    expect(calls).toEqual([
      {
        file: "/usr/bin/bun",
        args: ["/usr/bin/bun", "--cpu-prof", "/src/cli/main.ts", "replica", "--id", "2"],
        env: { HOME: "/root", [FTL_ENV]: "false", [FTL_RESTARTED_ENV]: "4242" },
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
