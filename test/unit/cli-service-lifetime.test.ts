/**
 * How a service command (here `fitb replica`, run from source as the executable runs it:
 * src/cli/main.ts) ends when its surroundings go: SIGHUP stops it as SIGTERM does; a
 * standard output whose reader went (EPIPE) stops it with status 74 (EX_IOERR) and a line
 * on standard error, where `fitb sub | head` ends quietly with 0, since systemd's
 * Restart=on-failure restarts only the former; and a NOTIFY_SOCKET that names no socket
 * is a warning, never the end of the replica. Each waits for a log line, never the clock.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { FTL_DEFAULT, ftlEnvironment } from "../../src/cli/jit.ts";
import { hangupIgnored } from "../../src/cli/lifetime.ts";
import { initCluster } from "../../src/config/init.ts";
import { freePortRange } from "../integration/harness.ts";

const MAIN = join(import.meta.dir, "../../src/cli/main.ts");
/**
 * The line after which the replica has its signal handlers: it logs "replica started" just
 * before it installs them, so a signal right after that line may still find none.
 */
const RUNNING_LINE = '"msg":"verification threads ready"';
/** Bounds a failing wait only; a passing test waits for what it awaits. */
const WAIT_MS = 4_000;
const EXIT_OUTPUT_LOST = 74;

const directory = mkdtempSync(join(tmpdir(), "fitb-service-lifetime-"));
let configPath = "";
afterAll(() => rmSync(directory, { recursive: true, force: true }));

beforeAll(() => {
  // Ports nothing listens on now, below the range outgoing connections take theirs from
  // (another test file's may run beside this one), for replica 0, the only one started.
  const basePort = freePortRange(4);
  configPath = initCluster({
    dir: directory,
    replicas: 4,
    host: "127.0.0.1",
    basePort,
    peerBasePort: null,
    name: "t",
    overwrite: true,
  }).configPath;
});

type Replica = Subprocess<"pipe", "pipe", "pipe">;
/** What `readUntil` needs of a standard output's reader. */
type Reader = { read(): Promise<{ done: boolean; value?: Uint8Array }> };

function startReplica(env: Record<string, string> = {}): Replica {
  return Bun.spawn([process.execPath, MAIN, "replica", "--config", configPath, "--id", "0"], {
    // Without it the replica would restart itself in place for --ftl (jit.ts).
    env: { ...process.env, ...ftlEnvironment(FTL_DEFAULT), ...env },
    stdin: "pipe",
    stdout: "pipe",
    stderr: "pipe",
  });
}

/** `promise`'s value, or "timeout" once the time left before `deadline` has passed. */
async function within<T>(promise: Promise<T>, deadline: number): Promise<T | "timeout"> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<"timeout">((resolve) => {
    timer = setTimeout(() => resolve("timeout"), Math.max(0, deadline - Date.now()));
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Reads until the text so far contains `needle`; fails if the output ends first, or after WAIT_MS. */
async function readUntil(reader: Reader, needle: string): Promise<string> {
  let text = "";
  const decoder = new TextDecoder();
  const deadline = Date.now() + WAIT_MS;
  while (!text.includes(needle)) {
    const next = await within(reader.read(), deadline);
    if (next === "timeout") throw new Error(`no ${JSON.stringify(needle)} within ${WAIT_MS} ms; output so far: ${text}`);
    if (next.done) throw new Error(`output ended without ${JSON.stringify(needle)}: ${text}`);
    text += decoder.decode(next.value, { stream: true });
  }
  return text;
}

async function exitCode(proc: Replica): Promise<number> {
  const code = await within(proc.exited, Date.now() + WAIT_MS);
  if (code === "timeout") {
    proc.kill("SIGKILL");
    throw new Error(`the replica did not exit within ${WAIT_MS} ms`);
  }
  return code;
}

describe("a service command's end", () => {
  test("SIGHUP stops a replica as SIGTERM does: it logs its stop and exits 0", async () => {
    const proc = startReplica();
    const reader = proc.stdout.getReader();
    await readUntil(reader, RUNNING_LINE);
    proc.kill("SIGHUP");
    await readUntil(reader, '"msg":"replica stopped"');
    expect(await exitCode(proc)).toBe(0);
    expect(proc.signalCode).toBeNull();
  });

  test("a standard output whose reader went stops the replica with status 74 and says so on standard error", async () => {
    const proc = startReplica();
    // The reader goes before the replica writes its first line.
    await proc.stdout.cancel();
    expect(await exitCode(proc)).toBe(EXIT_OUTPUT_LOST);
    const err = await new Response(proc.stderr).text();
    expect(err).toContain("fitb replica: standard output is gone (EPIPE); stopping with status 74 (EX_IOERR)");
  });

  test("... also when it goes while the replica runs: the replica stops as on SIGTERM", async () => {
    const proc = startReplica();
    const reader = proc.stdout.getReader();
    await readUntil(reader, RUNNING_LINE);
    await reader.cancel();
    // Its stop is logged into the closed pipe: a write that fails as any would.
    proc.kill("SIGTERM");
    const code = await exitCode(proc);
    expect(code).toBe(EXIT_OUTPUT_LOST);
    expect(await new Response(proc.stderr).text()).toContain("standard output is gone (EPIPE)");
  });

  test("a NOTIFY_SOCKET too long for a socket address is one warning; the replica runs on", async () => {
    const proc = startReplica({ NOTIFY_SOCKET: `/run/${"x".repeat(200)}/notify`, WATCHDOG_USEC: "200000" });
    const reader = proc.stdout.getReader();
    // The first watchdog ping finds the name unusable.
    await readUntil(reader, '"msg":"cannot notify systemd"');
    proc.kill("SIGTERM");
    await readUntil(reader, '"msg":"replica stopped"');
    expect(await exitCode(proc)).toBe(0);
  });

  test("`fitb sub | head` still ends quietly with 0 when its reader goes", async () => {
    // Any command but a service one; --version writes one line, into a pipe already closed.
    const proc = Bun.spawn([process.execPath, MAIN, "--version"], { stdout: "pipe", stderr: "pipe" });
    await proc.stdout.cancel();
    expect(await proc.exited).toBe(0);
    expect(await new Response(proc.stderr).text()).toBe("");
  });
});

describe("SIGHUP ignored at start (nohup)", () => {
  test("hangupIgnored reads the lowest bit of the kernel's ignored-signal mask", () => {
    expect(hangupIgnored(() => "Name:\tfitb\nSigIgn:\t0000000001001001\nSigCgt:\t0\n")).toBe(true);
    expect(hangupIgnored(() => "Name:\tfitb\nSigIgn:\t0000000001001000\n")).toBe(false);
    expect(
      hangupIgnored(() => {
        throw new Error("no /proc");
      }),
    ).toBe(false);
  });

  test("a process started under nohup has SIGHUP ignored, and keeps it so", async () => {
    const probe = "import { hangupIgnored } from './src/cli/lifetime.ts'; console.log(hangupIgnored());";
    const run = (argv: string[]) => Bun.spawn(argv, { cwd: join(import.meta.dir, "../.."), stdout: "pipe", stderr: "pipe" });
    const plain = run([process.execPath, "-e", probe]);
    expect((await new Response(plain.stdout).text()).trim()).toBe("false");
    const nohup = run(["nohup", process.execPath, "-e", probe]);
    expect((await new Response(nohup.stdout).text()).trim()).toBe("true");
  });
});
