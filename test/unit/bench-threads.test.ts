/**
 * test/bench/threads.ts without running a cluster: its arguments, how a /proc stat line is
 * read, and how threads are counted by role between two readings.
 */
import { describe, expect, test } from "bun:test";
import { cpuByRole, parseOptions, statSeconds, threadsOf } from "../bench/threads.ts";

describe("bench/threads.ts", () => {
  test("arguments: defaults, each flag, and a reason for each bad one", () => {
    expect(parseOptions([])).toEqual({
      events: 100_000,
      rate: null,
      threads: null,
      orderingThread: null,
      ftl: null,
      className: "byzantine/total",
      json: false,
      help: false,
    });
    expect(
      parseOptions([
        "--events",
        "5000",
        "--rate",
        "2000",
        "--threads",
        "0",
        "--ordering-thread",
        "on",
        "--ftl",
        "on",
        "--class",
        "crash/none",
        "--json",
      ]),
    ).toEqual({
      events: 5000,
      rate: 2000,
      threads: 0,
      orderingThread: "on",
      ftl: "on",
      className: "crash/none",
      json: true,
      help: false,
    });
    expect(parseOptions(["--events", "10"])).toContain("--events");
    expect(parseOptions(["--threads", "9"])).toContain("--threads");
    expect(parseOptions(["--rate", "0"])).toContain("--rate");
    expect(parseOptions(["--class", "crash"])).toContain("--class");
    expect(parseOptions(["--ordering-thread", "auto"])).toContain("--ordering-thread");
    expect(parseOptions(["--ftl", "yes"])).toContain("--ftl");
    expect(parseOptions(["--fast"])).toBe("unknown argument --fast");
  });

  test("a stat line's user and system ticks, with a thread name holding spaces and parentheses", () => {
    const rest = ["S", ...Array.from({ length: 10 }, () => "0"), "250", "50", "0", "0"].join(" ");
    expect(statSeconds(`1234 (Bun Pool (0)) ${rest}`)).toBe(3);
  });

  test("CPU by role: the first thread is main, Workers verify, the rest is the runtime's; new threads count from zero", () => {
    const before = [
      { tid: 10, name: "bun.exe", seconds: 5 },
      { tid: 11, name: "Worker", seconds: 1 },
      { tid: 12, name: "JITWorker", seconds: 2 },
      { tid: 14, name: "fitb-ordering", seconds: 1 },
    ];
    const after = [
      { tid: 10, name: "bun.exe", seconds: 9 },
      { tid: 11, name: "Worker", seconds: 2 },
      { tid: 12, name: "JITWorker", seconds: 2.5 },
      { tid: 13, name: "Worker", seconds: 3 },
      { tid: 14, name: "fitb-ordering", seconds: 2.5 },
    ];
    expect(cpuByRole(before, after, 10)).toEqual({
      main: 4,
      ordering: 1.5,
      verify: 4,
      runtime: 0.5,
      verifyThreads: [1, 3],
      runtimeByName: { JITWorker: 0.5 },
    });
  });

  test("this process's own threads are read from /proc, its first thread among them", () => {
    const threads = threadsOf(process.pid);
    expect(threads.some((t) => t.tid === process.pid)).toBe(true);
    expect(threadsOf(0x7fff_fff0)).toEqual([]);
  });
});
