// `fitb demo` (what `npm start` runs) as its own process: it brings up 4 replicas and the
// relay, an event published through the relay with raw TCP reaches a SUB connection,
// SIGINT stops every child, a second start reuses the directory, no replica outlives the
// demo (kill -9 of the demo, or of the shell `npm start` runs it in), a replica that exits
// is reported with how to start it again (and, past f, that the quorum for ordering is
// lost), and ports in use are reported, with the process holding them, before anything starts.
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Socket, Subprocess } from "bun";
import { URGENT_DELAY_TARGET_MS_SUGGESTED } from "../../src/replica/shedding.ts";
import { FTL_ENV, FTL_RESTARTED_ENV } from "../../src/cli/jit.ts";
import { environOf } from "../helpers/environ.ts";
import { waitFor } from "../helpers/wait.ts";
import { BUN, freePortRange, MAIN } from "./harness.ts";

const READY_MS = 30_000;
const STOP_MS = 15_000;
const LINE_MS = 15_000;
const READY_LINE = "fitb demo: ready";
const dec = new TextDecoder();

const dir = join(mkdtempSync(join(tmpdir(), "fitb-demo-it-")), "demo");
const running: Subprocess[] = [];

afterAll(async () => {
  for (const proc of running) proc.kill("SIGKILL");
  await Promise.all(running.map((proc) => proc.exited));
  if (process.env.FITB_KEEP_TEST_DIRS === undefined) rmSync(join(dir, ".."), { recursive: true, force: true });
});

/** A running `fitb demo` and everything it printed so far. */
interface DemoRun {
  readonly proc: Subprocess<"ignore", "pipe", "pipe">;
  readonly output: { stdout: string; stderr: string };
  /** Settles once both output streams have ended: everything the demo printed is in `output`. */
  readonly drained: Promise<void>;
}

function startDemo(basePort: number, relayPort: number, underShell = false): DemoRun {
  const argv = [BUN, MAIN, "demo", "--dir", dir, "--base-port", String(basePort), "--relay-port", String(relayPort)];
  // The console on the port after the relay's (freePortRange below keeps it free).
  argv.push("--console-port", String(relayPort + 1));
  // As `npm start` runs it: a shell that waits for the demo (the `; true` keeps sh from exec'ing it).
  const command = underShell ? ["sh", "-c", `${argv.map((word) => `'${word}'`).join(" ")}; true`] : argv;
  const proc = Bun.spawn(command, {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  running.push(proc);
  const output = { stdout: "", stderr: "" };
  const drained = Promise.all([
    (async () => {
      for await (const chunk of proc.stdout) output.stdout += dec.decode(chunk);
    })(),
    (async () => {
      for await (const chunk of proc.stderr) output.stderr += dec.decode(chunk);
    })(),
  ]).then(() => undefined);
  return { proc, output, drained };
}

async function ready(run: DemoRun): Promise<void> {
  await waitFor(
    `the demo's ready line (stderr so far: ${JSON.stringify(run.output.stderr.slice(-500))})`,
    () => run.output.stdout.includes(READY_LINE) || run.proc.exitCode !== null,
    READY_MS,
  );
  expect(run.proc.exitCode).toBeNull();
}

/** The child pids the demo reported ("(pid N)" in its progress lines). */
function childPids(run: DemoRun): number[] {
  return [...run.output.stderr.matchAll(/\(pid (\d+)\)/g)].map((match) => Number(match[1]));
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function stopWith(run: DemoRun, signal: "SIGINT" | "SIGTERM"): Promise<number> {
  run.proc.kill(signal);
  const timer = setTimeout(() => run.proc.kill("SIGKILL"), STOP_MS);
  const code = await run.proc.exited;
  clearTimeout(timer);
  return code;
}

/** A raw TCP connection, as nc makes: send lines, collect what comes back. */
async function connect(port: number): Promise<{ socket: Socket<undefined>; received: () => string }> {
  let text = "";
  const socket = await Bun.connect({
    hostname: "127.0.0.1",
    port,
    socket: {
      data: (_socket, chunk) => {
        text += dec.decode(chunk);
      },
    },
  });
  return { socket, received: () => text };
}

describe("fitb demo", () => {
  const base = freePortRange(7);
  const relayPort = base + 4;
  const consolePort = relayPort + 1;

  test("starts 4 replicas and the relay; nc-style PUB reaches a SUB; SIGINT stops every child", async () => {
    const run = startDemo(base, relayPort);
    await ready(run);
    const pids = childPids(run);
    expect(pids).toHaveLength(4);
    expect(run.output.stdout).toContain(`printf 'PUB net.links eth0 down\\n' | nc -N 127.0.0.1 ${relayPort}`);
    expect(run.output.stdout).toContain(`printf 'SUB net.links\\n' | nc 127.0.0.1 ${relayPort}`);
    expect(run.output.stdout).toMatch(/ pub --config \S+cluster\.toml --key \S+client\.key /);
    for (const tag of ["net.links", "storage.disks", "sec.ids", "sec.alerts"])
      expect(run.output.stderr).toContain(`created channel ${tag}`);
    // Its replicas shed priority as a dedicated host should (--urgent-delay-target-ms 2), and
    // run without the runtime's top compiler tier.
    for (let id = 0; id < 4; id++) {
      const log = join(dir, `replica-${id}.log`);
      await waitFor(
        `replica ${id}'s start line`,
        () => existsSync(log) && readFileSync(log, "utf8").includes('"replica started"'),
        LINE_MS,
      );
      const started = readFileSync(log, "utf8")
        .split("\n")
        .find((line) => line.includes('"replica started"')) as string;
      const fields = JSON.parse(started) as { urgentDelayTargetMs?: number; ftl?: boolean };
      expect(fields.urgentDelayTargetMs).toBe(URGENT_DELAY_TARGET_MS_SUGGESTED);
      expect(fields.ftl).toBe(false);
    }
    // The demo starts them with the runtime's top tier off already (--ftl's default): none
    // had to restart itself for it.
    for (const pid of pids) {
      const environ = environOf(pid);
      expect(environ.get(FTL_ENV)).toBe("false");
      expect(environ.has(FTL_RESTARTED_ENV)).toBe(false);
    }

    const sub = await connect(relayPort);
    sub.socket.write("SUB net.links\n");
    await waitFor("+OK to SUB", () => sub.received() === "+OK\n", LINE_MS);
    const pub = await connect(relayPort);
    pub.socket.write("PUB net.links eth0 down\n");
    await waitFor("+OK to PUB", () => /^\+OK net\.links \d+\n$/.test(pub.received()), LINE_MS);
    const seq = pub.received().trim().split(" ")[2];
    await waitFor("the EVENT line", () => sub.received().includes("eth0 down\n"), LINE_MS);
    expect(sub.received()).toMatch(new RegExp(`^\\+OK\\nEVENT net\\.links ${seq} ed25519:\\S+ \\d+ eth0 down\\n$`));
    pub.socket.end();

    expect(await stopWith(run, "SIGINT")).toBe(0);
    expect(run.output.stderr).toContain("fitb demo: stopped");
    // The subscriber was told, then the relay closed its connection.
    await waitFor("END SHUTDOWN", () => sub.received().includes("END net.links SHUTDOWN"), LINE_MS);
    for (const pid of pids) expect(isAlive(pid)).toBe(false);
  }, 60_000);

  test("a second start reuses the directory; SIGTERM stops it too", async () => {
    expect(existsSync(join(dir, "cluster.toml"))).toBe(true);
    const run = startDemo(base, relayPort);
    await ready(run);
    expect(run.output.stderr).toContain("reusing");
    expect(run.output.stderr).not.toContain("(cluster file, keys");
    const pids = childPids(run);
    const client = await connect(relayPort);
    client.socket.write("PING\n");
    await waitFor("PONG", () => client.received() === "PONG\n", LINE_MS);
    expect(await stopWith(run, "SIGTERM")).toBe(0);
    for (const pid of pids) expect(isAlive(pid)).toBe(false);
  }, 60_000);

  test("kill -9 of the demo leaves no replica behind", async () => {
    const run = startDemo(base, relayPort);
    await ready(run);
    const pids = childPids(run);
    expect(pids).toHaveLength(4);
    run.proc.kill("SIGKILL");
    await run.proc.exited;
    // Each replica reads end of file on the pipe the demo held, and stops.
    await waitFor("every replica to exit", () => pids.every((pid) => !isAlive(pid)), STOP_MS);
  }, 60_000);

  test("when the shell that runs it dies (npm start stopped by a signal), the demo stops and its replicas too", async () => {
    const run = startDemo(base, relayPort, true);
    await ready(run);
    const pids = childPids(run);
    expect(pids).toHaveLength(4);
    run.proc.kill("SIGKILL");
    await run.proc.exited;
    await waitFor("the demo to stop", () => run.output.stderr.includes("fitb demo: stopped"), STOP_MS);
    expect(run.output.stderr).toContain("fitb demo: the parent process is gone; stopping");
    await waitFor("every replica to exit", () => pids.every((pid) => !isAlive(pid)), STOP_MS);
  }, 60_000);

  test("a replica's exit warns with how to start it again; a second one says the quorum for ordering is lost", async () => {
    const run = startDemo(base, relayPort);
    await ready(run);
    // The admin console's port follows the ports given, beside the demo's own console.
    // With the console's one-time login secret: the URL logs one browser in (src/cli/console/login.ts).
    expect(run.output.stdout).toMatch(
      new RegExp(`Web console \\(read-only\\): http://127\\.0\\.0\\.1:${consolePort}/\\?login=[A-Za-z0-9_-]{43} `),
    );
    expect(run.output.stdout).toMatch(
      new RegExp(` console --config \\S+ --key \\S+admin\\.key --listen 127\\.0\\.0\\.1:${consolePort + 1}\n`),
    );
    const pids = childPids(run);
    const warnings = (): string[] => run.output.stderr.split("\n").filter((line) => line.startsWith("fitb demo: warning: replica "));
    process.kill(pids[2] as number, "SIGKILL");
    await waitFor("the warning about replica 2", () => warnings().length === 1, LINE_MS);
    process.kill(pids[3] as number, "SIGKILL");
    await waitFor("the warning about replica 3", () => warnings().length === 2, LINE_MS);
    const [first, second] = warnings() as [string, string];
    expect(first).toStartWith("fitb demo: warning: replica 2 was stopped by SIGKILL (see ");
    expect(first).toContain("the cluster tolerates 1 failed replica (f=1) and goes on with 3 of 4");
    expect(first).toMatch(
      /start it again in another shell \(it rejoins the group; the demo does not follow it then, and Ctrl-C here does not stop it\): .* replica --config \S+cluster\.toml --id 2 --urgent-delay-target-ms 2$/,
    );
    expect(second).toStartWith("fitb demo: warning: replica 3 was stopped by SIGKILL (see ");
    expect(second).toContain(
      "replicas 2, 3 have exited since the demo started, more than the cluster tolerates (f=1): unless one was started again by hand, it has lost its quorum for ordering",
    );
    expect(second).not.toContain("goes on");
    expect(second).toMatch(/ replica --config \S+cluster\.toml --id 3 --urgent-delay-target-ms 2$/);
    expect(await stopWith(run, "SIGINT")).toBe(0);
    for (const pid of pids) expect(isAlive(pid)).toBe(false);
  }, 60_000);

  test("a port in use is one clear line naming it and who holds it, before anything starts", async () => {
    const blocker = Bun.listen({ hostname: "127.0.0.1", port: relayPort, socket: { data() {} } });
    try {
      const run = startDemo(base, relayPort);
      const code = await run.proc.exited;
      await run.drained;
      expect(code).toBe(1);
      const line = run.output.stderr.trim();
      expect(line).toStartWith(`fitb demo: port ${relayPort} on 127.0.0.1 is already in use (held by pid ${process.pid}: `);
      expect(line).toEndWith("(needed for the relay); stop what uses it (an earlier demo?) or pass --relay-port");
      expect(childPids(run)).toEqual([]);
    } finally {
      blocker.stop(true);
    }
  }, 30_000);
});
