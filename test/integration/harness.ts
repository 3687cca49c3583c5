/**
 * Starts real `fitb replica` processes on 127.0.0.1 for integration tests: a fresh
 * cluster directory with keys, free ports, and helpers to kill, restart and wait.
 * Every wait is bounded; every process is killed by `stop()`.
 */
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Subprocess } from "bun";
import { initCluster } from "../../src/config/init.ts";
import { WAIT_MS_DEFAULT, waitFor } from "../helpers/wait.ts";

export const REPO = resolve(import.meta.dir, "../..");
export const MAIN = join(REPO, "src/cli/main.ts");
export const BUN = process.execPath;

/**
 * Ports tests listen on: below Linux's default ephemeral range (32768-60999), so that no
 * outgoing connection is given a port a replica is about to bind, or to bind again after
 * a restart.
 */
const TEST_PORT_MIN = 12_000;
const TEST_PORT_MAX = 32_000;

/**
 * One series of a replica's metrics (`--metrics 127.0.0.1:PORT`): `series` is a family
 * name without labels, or a labelled series written in full; 0 when it is not there.
 */
export async function metricValue(port: number, series: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  for (const line of text.split("\n")) if (line.startsWith(`${series} `)) return Number(line.slice(series.length + 1));
  return 0;
}

/**
 * Test processes running at once (`npm test` runs two files at a time, and another suite
 * may run beside it) each take their ports from a lane of their own, so that a port one
 * found free and is about to bind, or to bind again after a restart, is never found free
 * by another. A lane is claimed with a file naming the claiming process, and taken over
 * once that process is gone (the files stay: `bun test` runs no exit handler of a test file).
 */
const PORT_LANES = 8;
const PORT_LANE_DIR = join(tmpdir(), "fitb-test-port-lanes");

/** Whether a process `pid` exists (one of another user counts as existing). */
function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as { code?: string }).code === "EPERM";
  }
}

/** The lane held by this process (claimed at the first call); null when every lane is another live process's. */
export function portLane(): number | null {
  mkdirSync(PORT_LANE_DIR, { recursive: true });
  const own = String(process.pid);
  for (let lane = 0; lane < PORT_LANES; lane++) {
    const path = join(PORT_LANE_DIR, String(lane));
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        writeFileSync(path, own, { flag: "wx" });
        return lane;
      } catch {
        let holder = "";
        try {
          holder = readFileSync(path, "utf8").trim();
        } catch {
          continue; // Released meanwhile: claim it again.
        }
        if (holder === own) return lane;
        if (!/^\d+$/.test(holder) || processExists(Number(holder))) break;
        try {
          unlinkSync(path);
        } catch {
          // Another process took it over first.
        }
      }
    }
  }
  return null;
}

/**
 * The last ranges this process handed out. A range is free when handed out but bound only
 * later (a cluster's replicas start after its peer ports and a metrics port are taken too),
 * so a range found free meanwhile may overlap it; none handed out is given again while it
 * is among these. Bounded: ranges are a few ports, a lane 2,500.
 */
const RECENT_RANGES_MAX = 64;
const recentRanges: { base: number; count: number }[] = [];

/** Finds `count` consecutive free TCP ports on 127.0.0.1, starting at a random base in this process's lane, overlapping none of its recent ranges. */
export function freePortRange(count: number): number {
  const lane = portLane();
  const lanePorts = Math.floor((TEST_PORT_MAX - TEST_PORT_MIN) / PORT_LANES);
  const [min, max] =
    lane === null ? [TEST_PORT_MIN, TEST_PORT_MAX] : [TEST_PORT_MIN + lane * lanePorts, TEST_PORT_MIN + (lane + 1) * lanePorts];
  for (let attempt = 0; attempt < 200; attempt++) {
    const base = min + Math.floor(Math.random() * (max - min - count));
    if (recentRanges.some((range) => base < range.base + range.count && range.base < base + count)) continue;
    const listeners = [];
    let ok = true;
    for (let i = 0; i < count; i++) {
      try {
        listeners.push(Bun.listen({ hostname: "127.0.0.1", port: base + i, socket: { data() {} } }));
      } catch {
        ok = false;
        break;
      }
    }
    for (const listener of listeners) listener.stop(true);
    if (!ok) continue;
    recentRanges.push({ base, count });
    if (recentRanges.length > RECENT_RANGES_MAX) recentRanges.shift();
    return base;
  }
  throw new Error("no free port range found");
}

/**
 * `fitb relay` (from source) with `configPath` and `keyPath` on 127.0.0.1:`port`, and no
 * Unix socket: its default path ($XDG_RUNTIME_DIR) is one for every relay, another test
 * file's too. `more` follows.
 */
export function relayArgv(configPath: string, keyPath: string, port: number, ...more: string[]): string[] {
  return [BUN, MAIN, "relay", "--config", configPath, "--key", keyPath, "--listen", `127.0.0.1:${port}`, "--socket", "none", ...more];
}

/** `fitb bench` (from source) on `tag` of `cluster`: `events` events of `bytes` bytes, one JSON result line. */
export function benchArgv(cluster: TestCluster, tag: string, events: number, bytes: number): string[] {
  return [
    BUN,
    MAIN,
    "bench",
    "--config",
    cluster.configPath,
    "--key",
    cluster.clientKey,
    "--channel",
    tag,
    "--events",
    String(events),
    "--size",
    String(bytes),
    "--json",
  ];
}

export interface TestCluster {
  readonly dir: string;
  readonly configPath: string;
  readonly adminKey: string;
  readonly clientKey: string;
  readonly basePort: number;
  readonly n: number;
  readonly procs: (Subprocess | null)[];
  readonly logs: string[][];
  start(id: number): void;
  kill(id: number, signal?: NodeJS.Signals | number): void;
  stop(): Promise<void>;
  /** Runs `fitb ARGS` to completion (bounded), returning exit code and output. */
  fitb(args: string[], options?: { stdin?: string; timeoutMs?: number }): Promise<{ code: number; stdout: string; stderr: string }>;
}

export async function startCluster(
  options: {
    replicas?: number;
    start?: boolean;
    limits?: Record<string, number>;
    replicaArgs?: (id: number) => string[];
    /** The cluster file replica `id` starts from (asked at each start); undefined: the one the cluster was made with. */
    replicaConfig?: (id: number) => string | undefined;
    /** No peer_port: peers and clients share each replica's port. */
    sharedPort?: boolean;
    /** More environment for replica `id`'s process (a preloaded libfaketime, say). */
    replicaEnv?: (id: number) => Record<string, string>;
    /** Each replica's output also goes, whole, to replica-N.log in the cluster directory (the in-memory logs keep the last part). */
    logFiles?: boolean;
  } = {},
): Promise<TestCluster> {
  const n = options.replicas ?? 4;
  const dir = mkdtempSync(join(tmpdir(), "fitb-it-"));
  const basePort = freePortRange(n);
  // Never overlapping basePort's range: freePortRange skips the ranges it handed out last.
  const peerBasePort = options.sharedPort === true ? null : freePortRange(n);
  const init = initCluster({ dir, replicas: n, host: "127.0.0.1", basePort, peerBasePort, name: "it", overwrite: false });
  if (options.limits !== undefined) patchLimits(init.configPath, options.limits);
  const procs: (Subprocess | null)[] = new Array(n).fill(null);
  const logs: string[][] = Array.from({ length: n }, () => []);
  const cluster: TestCluster = {
    dir,
    configPath: init.configPath,
    adminKey: init.adminKeyFile,
    clientKey: init.clientKeyFile,
    basePort,
    n,
    procs,
    logs,
    start(id) {
      const extra = options.replicaArgs?.(id) ?? [];
      const config = options.replicaConfig?.(id) ?? init.configPath;
      const proc = Bun.spawn([BUN, MAIN, "replica", "--config", config, "--id", String(id), ...extra], {
        stdout: "pipe",
        stderr: "pipe",
        env: { ...process.env, FITB_LOG: process.env.FITB_LOG ?? "info", ...(options.replicaEnv?.(id) ?? {}) },
      });
      procs[id] = proc;
      const file = options.logFiles === true ? join(dir, `replica-${id}.log`) : null;
      collect(proc.stdout, logs[id] as string[], file);
      collect(proc.stderr, logs[id] as string[], file);
    },
    kill(id, signal = "SIGKILL") {
      procs[id]?.kill(signal);
      procs[id] = null;
    },
    async stop() {
      for (let id = 0; id < n; id++) procs[id]?.kill("SIGKILL");
      await Promise.all(procs.map((proc) => proc?.exited));
      if (process.env.FITB_KEEP_TEST_DIRS === undefined) rmSync(dir, { recursive: true, force: true });
    },
    async fitb(args, opts = {}) {
      const proc = Bun.spawn([BUN, MAIN, ...args], {
        stdin: opts.stdin === undefined ? "ignore" : new Blob([opts.stdin]),
        stdout: "pipe",
        stderr: "pipe",
      });
      const timer = setTimeout(() => proc.kill("SIGKILL"), opts.timeoutMs ?? 30_000);
      const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
      clearTimeout(timer);
      return { code, stdout, stderr };
    },
  };
  if (options.start !== false) {
    for (let id = 0; id < n; id++) cluster.start(id);
    await waitListening(cluster, [...procs.keys()]);
  }
  return cluster;
}

/**
 * Waits until each replica in `ids` (started with `cluster.start`) listens: its log says
 * "replica started". Clients and one-shot commands give up at once when nothing listens
 * at the replicas' addresses (fitb pub/sub/admin), so a test that starts replicas itself
 * waits for this before its first request.
 */
export async function waitListening(cluster: TestCluster, ids: readonly number[]): Promise<void> {
  const text = (id: number): string => (cluster.logs[id] ?? []).join("");
  await waitFor(
    `replicas ${ids.join(",")} to listen`,
    () => ids.every((id) => text(id).includes('"msg":"replica started"')),
    WAIT_MS_DEFAULT,
    () => ids.map((id) => `replica ${id}: ${text(id).slice(-300)}`).join("\n"),
  );
}

/** Rewrites `key = value` lines of the cluster file's [limits] section. */
function patchLimits(configPath: string, limits: Record<string, number>): void {
  let text = readFileSync(configPath, "utf8");
  for (const [key, value] of Object.entries(limits)) {
    const pattern = new RegExp(`^${key} = \\d+`, "m");
    if (!pattern.test(text)) throw new Error(`${key} is not in ${configPath}`);
    text = text.replace(pattern, `${key} = ${value}`);
  }
  writeFileSync(configPath, text);
}

async function collect(stream: ReadableStream<Uint8Array>, into: string[], file: string | null = null): Promise<void> {
  const decoder = new TextDecoder();
  for await (const chunk of stream) {
    const text = decoder.decode(chunk);
    into.push(text);
    if (file !== null) appendFileSync(file, text);
    if (into.length > 10_000) into.splice(0, 5_000);
  }
}

/** The last `lines` lines of replica `id`'s output, for a failure message. */
export function logTail(cluster: TestCluster, id: number, lines = 30): string {
  return (cluster.logs[id] ?? []).join("").split("\n").slice(-lines).join("\n");
}
