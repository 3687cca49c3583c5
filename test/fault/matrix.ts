/**
 * The fault matrix: a fresh group of real replicas, each on its own host (a network
 * namespace, netns.ts), a steady publish stream on a byzantine/total channel and a live
 * subscriber; one fault is applied, held, healed; then the history checker judges
 * everything the clients saw (test/integration/durability-history.ts): acknowledged events
 * never lost, none twice, none invented, one order with no gap for every reader, each
 * publisher's events in publish order.
 *
 * Faults come from outside the replica, never from a flag of the shipped binary: network
 * namespaces and routes, a TCP proxy, signals, a tmpfs, a copy of the data directory put
 * back after kill -9 (writes lost before an fsync), and libfaketime for a skewed wall
 * clock (faketime.ts).
 *
 * `runFault` is used by `npm run faults` (test/fault/run-matrix.ts) and by the fast rows
 * of `npm test` (matrix.test.ts). Waits are on conditions (acknowledgements, status
 * answers); the only fixed time is how long a fault is held, which is the schedule.
 */
import { jsonLogLines } from "../helpers/log-lines.ts";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { FitbClient } from "../../src/client/index.ts";
import { loadClientSetup } from "../../src/client/setup.ts";
import { initCluster } from "../../src/config/init.ts";
import { collect, type Delivered, encode, waitForCount } from "../integration/client-util.ts";
import { checkTotalOrder, payloadOf, type Stream, waitConverged } from "../integration/durability-history.ts";
import { waitFor } from "../helpers/wait.ts";
import { faketimeLibrary, skewedClockEnv, writeOffset } from "./faketime.ts";
import { TestNetwork } from "./netns.ts";

const TAG = "sec.alerts";
const PORT = 7400;
/** Every replica's peer_port (each on its own host): the proxied rows put a proxy in front of it too. */
const PEER_PORT = 8400;
/** Each replica's status page (--metrics), on its host's address: clock rows read its clock there. */
const STATUS_PORT = 7409;
const REPLICAS = 4;
/** Events per publish: small requests, so a stall shows at once. */
const EVENTS_PER_REQUEST = 4;
/** Acknowledged requests before the fault and after healing. */
const REQUESTS_BEFORE = 20;
const REQUESTS_AFTER = 20;
const REQUEST_TIMEOUT_MS = 20_000;
/** Pause after a publish that failed, before the next. */
const RETRY_PAUSE_MS = 50;
/** Bound on every wait of a row (only reached when the row fails). */
const WAIT_MS = 90_000;

/**
 * The longest stall the cut-network row allows: a silent session is given up after 3 s
 * (clients; 2.5 s for peer links), then the next address is dialled at once. Well under
 * the row's 10 s hold, which is the stall without failover.
 */
export const CUT_NETWORK_STALL_MS_MAX = 8_000;

/** What a fault does to the group: `apply` starts it, `heal` ends it; `holdMs` between. */
export interface Fault {
  readonly name: string;
  readonly what: string;
  readonly holdMs: number;
  /** Each replica listens behind a TCP proxy of its own (proxy.ts) that the fault commands. */
  readonly proxied?: boolean;
  /** Each replica keeps its data on a tmpfs of its own that the fault can shrink (disk full). */
  readonly smallDisks?: boolean;
  /** Networks every host is on (default 1); with more, each replica lists its further addresses (`hosts`). */
  readonly networks?: number;
  /** Each replica's wall clock can be moved (libfaketime, faketime.ts), read back on its status page. */
  readonly skewableClocks?: boolean;
  /** Every replica runs `--sync normal`: its last commits are not yet fsynced, and may be lost. */
  readonly syncNormal?: boolean;
  apply(group: FaultGroup): Promise<void> | void;
  heal(group: FaultGroup): Promise<void> | void;
  /** Once every replica has caught up after the heal: notes on how (FaultRow.notes). */
  settled?(group: FaultGroup): void;
}

export interface FaultRow {
  readonly fault: string;
  readonly acked: number;
  /** Events acknowledged while the fault was in force (between apply and heal). */
  readonly ackedDuringFault: number;
  readonly delivered: number;
  readonly lost: number;
  readonly duplicated: number;
  readonly reordered: number;
  readonly forged: number;
  readonly longestStallMs: number;
  readonly recoveryMs: number;
  /** Multi-network rows: from the heal until every peer link and the admin client's sessions are back on network 0. */
  readonly backOnPreferredMs: number | null;
  readonly problems: readonly string[];
  /** What the fault did, in words, where the row's numbers do not say it (a leader replaced, seqs lost). */
  readonly notes: readonly string[];
}

/** A group of replicas on namespaced hosts, with the handles faults need. */
export class FaultGroup {
  readonly procs: (Subprocess | null)[] = new Array(REPLICAS).fill(null);
  readonly logs: string[][] = Array.from({ length: REPLICAS }, () => []);
  readonly proxies: (TcpProxy | null)[] = new Array(REPLICAS).fill(null);
  leader = 0;
  /** Repeats a fault action during the hold (proxy-reset); cleared at heal. */
  repeat: ReturnType<typeof setInterval> | null = null;
  /** The admin client of the run: faults ask it for the group's status. */
  admin: FitbClient | null = null;
  /** What the fault did, for the row (FaultRow.notes). */
  readonly notes: string[] = [];
  /** When each replica was last started (this process's clock): its real uptime. */
  private readonly startedAt: number[] = new Array(REPLICAS).fill(0);
  /** libfaketime, when the fault moves clocks (skewableClocks). */
  private faketime: string | null = null;

  constructor(
    readonly net: TestNetwork,
    readonly configPath: string,
    private readonly replicaCommand: readonly string[],
    private readonly fault: Fault,
    private readonly dir: string,
  ) {}

  private get proxied(): boolean {
    return this.fault.proxied === true;
  }

  /** Starts every replica, each behind its proxy when the fault needs one. */
  async startAll(): Promise<void> {
    const dir = this.dir;
    if (this.fault.skewableClocks === true) {
      const found = faketimeLibrary(false);
      if ("why" in found) throw new Error(found.why);
      this.faketime = found.path;
      for (let id = 0; id < REPLICAS; id++) writeOffset(this.clockFile(id), "+0");
    }
    for (let id = 0; id < REPLICAS; id++) this.dataDirs[id] = join(dir, `data-${id}`);
    if (this.fault.smallDisks === true) {
      for (let id = 0; id < REPLICAS; id++) {
        const disk = join(dir, `disk-${id}`);
        mkdirSync(disk);
        mountTmpfs(disk, DISK_ROOMY);
        this.disks[id] = disk;
      }
    }
    if (this.proxied) {
      for (let id = 0; id < REPLICAS; id++) this.proxies[id] = await TcpProxy.start(this.net, id);
    }
    for (let id = 0; id < REPLICAS; id++) this.start(id);
  }

  proxy(id: number): TcpProxy {
    const proxy = this.proxies[id];
    if (proxy === null || proxy === undefined) throw new Error(`replica ${id} has no proxy`);
    return proxy;
  }

  /** The tmpfs data directory of each replica (smallDisks faults), mounted by startAll. */
  readonly disks: (string | null)[] = new Array(REPLICAS).fill(null);
  /** Each replica's data directory (its tmpfs for smallDisks faults). */
  readonly dataDirs: string[] = new Array(REPLICAS).fill("");

  start(id: number): void {
    // Behind its proxies a replica listens on loopback: clients at PORT + 1, peers at 127.0.0.1:PEER_PORT.
    const args = this.proxied ? ["--listen", `127.0.0.1:${PORT + 1}`] : [];
    args.push("--data", this.disks[id] ?? (this.dataDirs[id] as string));
    if (this.fault.syncNormal === true) args.push("--sync", "normal");
    const clock: Record<string, string> = {};
    if (this.faketime !== null) {
      args.push("--metrics", `${this.net.host(id).address}:${STATUS_PORT}`);
      Object.assign(clock, skewedClockEnv(this.faketime, this.clockFile(id)));
    }
    const proc = Bun.spawn(
      [...this.net.exec(id), ...this.replicaCommand, "replica", "--config", this.configPath, "--id", String(id), ...args],
      {
        stdout: "pipe",
        stderr: "pipe",
        env: { ...process.env, FITB_LOG: process.env.FITB_LOG ?? "info", ...clock },
      },
    );
    this.procs[id] = proc;
    this.startedAt[id] = Date.now();
    void drain(proc.stdout, this.logs[id] as string[]);
    void drain(proc.stderr, this.logs[id] as string[]);
  }

  async kill(id: number): Promise<void> {
    const proc = this.procs[id];
    proc?.kill("SIGKILL");
    await proc?.exited;
    this.procs[id] = null;
  }

  signal(id: number, signal: "SIGSTOP" | "SIGCONT"): void {
    // `ip netns exec` execs the program, so the process spawned is the replica itself.
    this.procs[id]?.kill(signal);
  }

  async stop(): Promise<void> {
    if (this.repeat !== null) clearInterval(this.repeat);
    for (const proc of this.procs) {
      proc?.kill("SIGCONT");
      proc?.kill("SIGKILL");
    }
    for (const proxy of this.proxies) proxy?.stop();
    await Promise.all([...this.procs.map((proc) => proc?.exited), ...this.proxies.map((proxy) => proxy?.exited)]);
    for (const disk of this.disks) if (disk !== null) spawnSync("umount", ["-l", disk]);
  }

  /**
   * Fills replica `id`'s disk: the tmpfs is shrunk to a little more than it uses (it cannot
   * shrink below what is in use, which grows meanwhile) and the rest taken by a ballast
   * file, so every further allocation fails with ENOSPC.
   */
  fillDisk(id: number): void {
    const disk = this.disks[id] as string;
    const used = spawnSync("df", ["--output=used", "-k", disk], { encoding: "utf8" }).stdout.trim().split("\n").at(-1)?.trim();
    mountTmpfs(disk, `${Math.max(Number(used), 1) + DISK_MARGIN_KB}k`, true);
    spawnSync("dd", ["if=/dev/zero", `of=${join(disk, "ballast")}`, "bs=4k"], { stdio: "ignore" });
  }

  /** Gives replica `id` room again, and restarts it if the full disk stopped it. */
  async freeDisk(id: number): Promise<void> {
    rmSync(join(this.disks[id] as string, "ballast"), { force: true });
    mountTmpfs(this.disks[id] as string, DISK_ROOMY, true);
    // The full disk stopped it (or it was never running): start it again.
    const proc = this.procs[id];
    if (proc === null || proc === undefined || proc.exitCode !== null) this.start(id);
  }

  private clockFile(id: number): string {
    return join(this.dir, `clock-${id}`);
  }

  /**
   * Moves replica `id`'s wall clock to `seconds` from the true time and waits until the
   * replica's own clock says so (its status page's uptime, counted from the true time it
   * started, is off by that much).
   */
  async skewClock(id: number, seconds: number): Promise<void> {
    writeOffset(this.clockFile(id), `${seconds >= 0 ? "+" : ""}${seconds}s`);
    let seen = "no answer";
    await waitFor(
      `replica ${id}'s clock to be ${seconds} s off`,
      async () => {
        try {
          const page = (await (await fetch(`http://${this.net.host(id).address}:${STATUS_PORT}/status`)).json()) as { uptimeMs: number };
          const offMs = page.uptimeMs - (Date.now() - (this.startedAt[id] as number));
          seen = `${Math.round(offMs / 1000)} s off`;
          return Math.abs(offMs - seconds * 1000) < CLOCK_TOLERANCE_MS;
        } catch (error) {
          seen = (error as Error).message;
          return false;
        }
      },
      WAIT_MS,
      () => seen,
    );
  }

  /** Waits until f+1 replicas agree on a leader other than `old`, and notes it. */
  async leaderReplaced(old: number, why: string): Promise<void> {
    const admin = this.admin as FitbClient;
    let now: number | null = old;
    await waitFor(
      `the group to replace leader ${old}`,
      async () => {
        const status = await admin.status().catch(() => null);
        now = status?.agreed === true ? status.leader : old;
        return now !== old;
      },
      WAIT_MS,
    );
    this.notes.push(`leader ${old} ${why}, replaced by ${now}`);
  }

  /** The group's last decided seq as f+1 replicas report it. */
  async lastDecided(): Promise<number> {
    return (await (this.admin as FitbClient).status()).lastDecided ?? 0;
  }

  /**
   * What replica `id`'s disk holds now, set aside (the process is stopped while it is
   * copied, so the copy is what a crash at this moment would leave): `rollBackDisk` puts it
   * back, losing every write since.
   */
  keepDiskAsIs(id: number): void {
    this.signal(id, "SIGSTOP");
    try {
      const copy = spawnSync("cp", ["-a", this.dataDirs[id] as string, `${this.dataDirs[id]}.kept`], { encoding: "utf8" });
      if (copy.status !== 0) throw new Error(`copying the data directory of replica ${id} failed: ${copy.stderr.trim()}`);
    } finally {
      this.signal(id, "SIGCONT");
    }
  }

  /** Replica `id`'s data directory goes back to what keepDiskAsIs set aside (the replica must be down). */
  rollBackDisk(id: number): void {
    const dataDir = this.dataDirs[id] as string;
    rmSync(dataDir, { recursive: true, force: true });
    renameSync(`${dataDir}.kept`, dataDir);
  }

  /** The JSON log lines of replica `id` whose msg is `msg`. */
  logLines(id: number, msg: string): Record<string, unknown>[] {
    return jsonLogLines(this.logs[id], msg);
  }

  /** Notes why replica `id` said `msg` the first time (its `reason` field), or that it never did. */
  noteReason(id: number, msg: string): void {
    const line = this.logLines(id, msg)[0];
    this.notes.push(line === undefined ? `replica ${id} never logged "${msg}"` : `replica ${id}: ${msg} (${String(line.reason)})`);
  }

  tail(id: number, lines = 20): string {
    return (this.logs[id] ?? []).join("").split("\n").slice(-lines).join("\n");
  }
}

/** One proxy.ts process: LISTEN_HOST:port in the host's namespace forwarded to 127.0.0.1:target. */
class ProxyProcess {
  readonly lines: string[] = [];

  constructor(private readonly proc: Subprocess<"pipe", "pipe", "pipe">) {
    void (async () => {
      const decoder = new TextDecoder();
      let rest = "";
      for await (const chunk of proc.stdout) {
        rest += decoder.decode(chunk);
        const parts = rest.split("\n");
        rest = parts.pop() ?? "";
        this.lines.push(...parts);
      }
    })();
  }

  get exited(): Promise<number> {
    return this.proc.exited;
  }

  async command(line: string): Promise<void> {
    const answer = `ok ${line}`;
    const seen = this.lines.filter((l) => l === answer).length;
    this.proc.stdin.write(`${line}\n`);
    this.proc.stdin.flush();
    await waitFor(`the proxy to apply "${line}"`, () => this.lines.filter((l) => l === answer).length > seen, WAIT_MS);
  }

  stop(): void {
    this.proc.stdin.end();
    this.proc.kill("SIGKILL");
  }
}

/**
 * The proxies in front of one replica, in that replica's namespace: one for its client port
 * and one for its peer port (the replicas' links use peer_port), commanded together.
 */
export class TcpProxy {
  private constructor(private readonly procs: readonly ProxyProcess[]) {}

  static async start(net: TestNetwork, id: number): Promise<TcpProxy> {
    const script = join(import.meta.dir, "proxy.ts");
    const procs = [
      [PORT, PORT + 1],
      [PEER_PORT, PEER_PORT],
    ].map(
      ([listen, target]) =>
        new ProxyProcess(
          Bun.spawn([...net.exec(id), process.execPath, script, `${net.host(id).address}:${listen}`, `127.0.0.1:${target}`], {
            stdin: "pipe",
            stdout: "pipe",
            stderr: "pipe",
          }),
        ),
    );
    for (const proc of procs) await waitFor(`the proxies of replica ${id} to listen`, () => proc.lines.includes("ready"), WAIT_MS);
    return new TcpProxy(procs);
  }

  get exited(): Promise<number> {
    return Promise.race(this.procs.map((proc) => proc.exited));
  }

  /** Sends a command (pass, delay MS, stall, reset) to both proxies and waits until each says it is in force. */
  async command(line: string): Promise<void> {
    await Promise.all(this.procs.map((proc) => proc.command(line)));
  }

  stop(): void {
    for (const proc of this.procs) proc.stop();
  }
}

const DISK_ROOMY = "256m";
/** How close a replica's clock must come to the offset asked for (the status page is read over the network). */
const CLOCK_TOLERANCE_MS = 30_000;
/** How far a clock-skew row moves a clock: past every bound the protocol sets (60 s for proposals, 300 s for requests). */
const SKEW_S = 600;
/**
 * Decisions the group makes after the lost-unsynced-writes row sets the leader's disk
 * aside: past two checkpoints (K = 128) and the log window (L = 2K), so the replica
 * cannot replay what it lost from its peers' logs.
 */
const LOST_SEQS = 400;
/** Room left above what a disk uses when it is shrunk; the ballast file then takes it. */
const DISK_MARGIN_KB = 1024;

function mountTmpfs(path: string, size: string, remount = false): void {
  const options = remount ? `remount,size=${size}` : `size=${size}`;
  const r = spawnSync("mount", ["-t", "tmpfs", "-o", options, "tmpfs", path], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`mount ${options} ${path} failed: ${r.stderr.trim()}`);
}

async function drain(stream: ReadableStream<Uint8Array>, into: string[]): Promise<void> {
  const decoder = new TextDecoder();
  for await (const chunk of stream) {
    into.push(decoder.decode(chunk));
    if (into.length > 10_000) into.splice(0, 5_000);
  }
}

/** The faults, alone and combined. `leader` is read from the group's status when the fault starts. */
export const FAULTS: readonly Fault[] = [
  {
    name: "kill-follower",
    what: "kill -9 of one follower (f = 1), restarted",
    holdMs: 3_000,
    apply: (g) => g.kill((g.leader + 1) % REPLICAS),
    heal: (g) => g.start((g.leader + 1) % REPLICAS),
  },
  {
    name: "kill-leader",
    what: "kill -9 of the leader, restarted",
    holdMs: 3_000,
    apply: (g) => g.kill(g.leader),
    heal: (g) => g.start(g.leader),
  },
  {
    name: "kill-all",
    what: "kill -9 of all four replicas, then all restarted",
    holdMs: 1_000,
    apply: async (g) => {
      for (let id = 0; id < REPLICAS; id++) await g.kill(id);
    },
    heal: (g) => {
      for (let id = 0; id < REPLICAS; id++) g.start(id);
    },
  },
  {
    name: "pause-leader",
    what: "SIGSTOP of the leader, SIGCONT later",
    holdMs: 5_000,
    apply: (g) => g.signal(g.leader, "SIGSTOP"),
    heal: (g) => g.signal(g.leader, "SIGCONT"),
  },
  {
    name: "pause-follower",
    what: "SIGSTOP of one follower, SIGCONT later",
    holdMs: 5_000,
    apply: (g) => g.signal((g.leader + 1) % REPLICAS, "SIGSTOP"),
    heal: (g) => g.signal((g.leader + 1) % REPLICAS, "SIGCONT"),
  },
  {
    name: "isolate-leader",
    what: "the leader's link down (no packet in or out)",
    holdMs: 5_000,
    apply: (g) => g.net.isolate(g.leader),
    heal: (g) => g.net.reconnect(g.leader),
  },
  {
    name: "one-way-cut",
    what: "packets from the leader to one follower dropped",
    holdMs: 5_000,
    apply: (g) => g.net.cut(g.leader, (g.leader + 1) % REPLICAS),
    heal: (g) => g.net.heal(),
  },
  {
    name: "split-2-2",
    what: "two halves that cannot reach each other (no quorum: no progress), then healed",
    holdMs: 5_000,
    apply: (g) => g.net.split([g.leader, (g.leader + 1) % REPLICAS], [(g.leader + 2) % REPLICAS, (g.leader + 3) % REPLICAS]),
    heal: (g) => g.net.heal(),
  },
  {
    name: "slow-leader-link",
    what: "the leader's outgoing bandwidth limited to 2 Mbit/s (tbf)",
    holdMs: 5_000,
    apply: (g) => g.net.limit(g.leader, "2mbit"),
    heal: (g) => g.net.unlimit(g.leader),
  },
  {
    name: "proxy-delay",
    what: "everything to and from the leader delayed 200 ms (TCP proxy)",
    holdMs: 5_000,
    proxied: true,
    apply: (g) => g.proxy(g.leader).command("delay 200"),
    heal: (g) => g.proxy(g.leader).command("pass"),
  },
  {
    name: "proxy-stall",
    what: "the leader's connections stall (bytes held, not dropped), then flow again",
    holdMs: 5_000,
    proxied: true,
    apply: (g) => g.proxy(g.leader).command("stall"),
    heal: (g) => g.proxy(g.leader).command("pass"),
  },
  {
    name: "proxy-reset",
    what: "every connection to the leader reset, every 500 ms",
    holdMs: 5_000,
    proxied: true,
    apply: (g) => {
      g.repeat = setInterval(() => void g.proxy(g.leader).command("reset"), 500);
    },
    heal: (g) => {
      if (g.repeat !== null) clearInterval(g.repeat);
      g.repeat = null;
    },
  },
  {
    name: "disk-full",
    what: "a follower's disk full (tmpfs shrunk to what it uses), then room again",
    holdMs: 5_000,
    smallDisks: true,
    apply: async (g) => {
      const id = (g.leader + 1) % REPLICAS;
      g.fillDisk(id);
      // The fault is in force once the replica has met it: it stopped, or said so.
      await waitFor(
        `replica ${id} to meet its full disk`,
        () => g.procs[id]?.exitCode !== null || g.tail(id, 50).includes("storage commit failed"),
        WAIT_MS,
      );
    },
    heal: (g) => g.freeDisk((g.leader + 1) % REPLICAS),
  },
  {
    name: "cut-network",
    what: "replicas on two networks; the preferred one (clients' too) goes dark, then comes back",
    holdMs: 10_000,
    networks: 2,
    apply: (g) => g.net.cutNetwork(0),
    heal: (g) => g.net.restoreNetwork(0),
  },
  {
    name: "pause-and-kill",
    what: "the leader paused while a follower is killed (two faults at once; f = 1 is exceeded, so no progress until healed)",
    holdMs: 4_000,
    apply: async (g) => {
      g.signal(g.leader, "SIGSTOP");
      await g.kill((g.leader + 1) % REPLICAS);
    },
    heal: (g) => {
      g.start((g.leader + 1) % REPLICAS);
      g.signal(g.leader, "SIGCONT");
    },
  },
  {
    name: "clock-ahead-leader",
    what: `the leader's wall clock jumps ${SKEW_S / 60} min ahead (libfaketime), past the 60 s bound on proposals; set right later`,
    holdMs: 5_000,
    skewableClocks: true,
    apply: async (g) => {
      await g.skewClock(g.leader, SKEW_S);
      await g.leaderReplaced(g.leader, `${SKEW_S} s ahead`);
    },
    heal: (g) => g.skewClock(g.leader, 0),
    settled: (g) => {
      g.noteReason((g.leader + 1) % REPLICAS, "suspecting the leader");
      g.noteReason((g.leader + 1) % REPLICAS, "leaving the view");
    },
  },
  {
    name: "clock-behind-leader",
    what: `the leader's wall clock jumps ${SKEW_S / 60} min back (libfaketime), past the 300 s bound on request timestamps; set right later`,
    holdMs: 5_000,
    skewableClocks: true,
    apply: async (g) => {
      await g.skewClock(g.leader, -SKEW_S);
      await g.leaderReplaced(g.leader, `${SKEW_S} s behind`);
    },
    heal: (g) => g.skewClock(g.leader, 0),
    settled: (g) => {
      g.noteReason((g.leader + 1) % REPLICAS, "suspecting the leader");
      g.noteReason((g.leader + 1) % REPLICAS, "leaving the view");
    },
  },
  {
    name: "clock-ahead-follower",
    what: `a follower's wall clock jumps ${SKEW_S / 60} min ahead (libfaketime); set right later`,
    holdMs: 5_000,
    skewableClocks: true,
    apply: (g) => g.skewClock((g.leader + 1) % REPLICAS, SKEW_S),
    heal: (g) => g.skewClock((g.leader + 1) % REPLICAS, 0),
    settled: (g) => g.noteReason((g.leader + 1) % REPLICAS, "suspecting the leader"),
  },
  {
    name: "clock-behind-follower",
    what: `a follower's wall clock jumps ${SKEW_S / 60} min back (libfaketime), so every proposal looks far ahead to it; set right later`,
    holdMs: 5_000,
    skewableClocks: true,
    apply: (g) => g.skewClock((g.leader + 1) % REPLICAS, -SKEW_S),
    heal: (g) => g.skewClock((g.leader + 1) % REPLICAS, 0),
    settled: (g) => g.noteReason((g.leader + 1) % REPLICAS, "suspecting the leader"),
  },
  {
    name: "lost-unsynced-writes",
    what: `--sync normal; the leader is killed -9 and its disk keeps only what it held ${LOST_SEQS} decisions earlier (the writes not yet fsynced are lost)`,
    holdMs: 1_000,
    syncNormal: true,
    apply: async (g) => {
      g.keepDiskAsIs(g.leader);
      // Held until the group has decided past the log window the replica could replay
      // from its peers' memory: what it lost comes back by state transfer, or from the
      // decisions its peers read from their decided logs on disk (core/ordering/PROTOCOL.md
      // §7, "An older state").
      const kept = await g.lastDecided();
      await waitFor(`the group to decide ${LOST_SEQS} more seqs`, async () => (await g.lastDecided()) >= kept + LOST_SEQS, WAIT_MS);
    },
    heal: async (g) => {
      const id = g.leader;
      await g.kill(id);
      const decided = await g.lastDecided();
      g.rollBackDisk(id);
      const before = g.logLines(id, "recovered from the data directory").length;
      g.start(id);
      await waitFor(
        `replica ${id} to recover from its disk`,
        () => g.logLines(id, "recovered from the data directory").length > before,
        WAIT_MS,
      );
      const recovered = g.logLines(id, "recovered from the data directory").at(-1)?.lastDecided as number;
      // The fault is real only if the replica came back knowing less than it had decided.
      if (!(recovered < decided))
        throw new Error(`replica ${id} recovered at seq ${recovered}, not behind seq ${decided}: nothing was lost`);
      g.notes.push(`replica ${id} came back from its disk at seq ${recovered}, ${decided - recovered} decided seqs lost`);
    },
    settled: (g) => {
      const id = g.leader;
      const transfers = g.logLines(id, "state transfer completed").length;
      g.notes.push(
        `replica ${id} caught up ${transfers > 0 ? "by state transfer" : "from its peers' decided logs, with no state transfer"}`,
      );
    },
  },
];

export function faultNamed(name: string): Fault {
  const fault = FAULTS.find((f) => f.name === name);
  if (fault === undefined) throw new Error(`no fault named ${name}; known: ${FAULTS.map((f) => f.name).join(", ")}`);
  return fault;
}

/** Writes the group's cluster file with each replica on its own host (and its further addresses on further networks). */
function clusterFiles(net: TestNetwork, dir: string): { configPath: string; adminKey: string; clientKey: string } {
  const init = initCluster({
    dir,
    replicas: REPLICAS,
    host: "127.0.0.1",
    addresses: net.hosts.map((host) => ({ host: host.address, hosts: host.addresses.slice(1) })),
    basePort: PORT,
    name: "faults",
    overwrite: false,
  });
  let text = readFileSync(init.configPath, "utf8");
  text = text.replace(/^port = \d+$/gm, `port = ${PORT}`).replace(/^peer_port = \d+$/gm, `peer_port = ${PEER_PORT}`);
  writeFileSync(init.configPath, text);
  return { configPath: init.configPath, adminKey: init.adminKeyFile, clientKey: init.clientKeyFile };
}

function client(configPath: string, keyPath: string): FitbClient {
  const setup = loadClientSetup(configPath, keyPath);
  const c = new FitbClient({ config: setup.config, key: setup.key, timeouts: { requestMs: REQUEST_TIMEOUT_MS } });
  c.start();
  return c;
}

/**
 * Runs one fault from a fresh group and returns its row. `replicaCommand` is how a replica
 * is started (`dist/fitb`, or bun with src/cli/main.ts); `progress` gets a line per phase.
 */
export async function runFault(
  fault: Fault,
  replicaCommand: readonly string[],
  progress: (line: string) => void = () => {},
): Promise<FaultRow> {
  const net = TestNetwork.create(REPLICAS, fault.networks ?? 1);
  const dir = mkdtempSync(join(tmpdir(), "fitb-faults-"));
  const files = clusterFiles(net, dir);
  const group = new FaultGroup(net, files.configPath, replicaCommand, fault, dir);
  const clients: FitbClient[] = [];
  let running = true;
  const stopPublishing = (): void => {
    running = false;
  };
  try {
    await group.startAll();
    const admin = client(files.configPath, files.adminKey);
    clients.push(admin);
    group.admin = admin;
    const publisherKey = loadClientSetup(files.configPath, files.clientKey).key.publicKey;
    await waitFor(
      "the group to order an admin command",
      async () => {
        try {
          await admin.admin({ t: "create-channel", tag: TAG, fault: "byzantine", order: "total", priority: "critical", public: true });
          return true;
        } catch {
          return false;
        }
      },
      WAIT_MS,
    );
    await admin.admin({ t: "register", tag: TAG, role: "publisher", key: publisherKey });
    const publisher = client(files.configPath, files.clientKey);
    const reader = client(files.configPath, files.clientKey);
    clients.push(publisher, reader);
    const live = await collect(reader, TAG, 1);
    progress(`${fault.name}: group up, publishing`);

    const stream: Stream = { tag: TAG, prefix: "ev", acked: [], attempted: new Set(), failures: 0 };
    const starts: number[] = [];
    const publishing = (async () => {
      for (let r = 0; running; r++) {
        starts.push(Date.now());
        const payloads = Array.from({ length: EVENTS_PER_REQUEST }, (_, i) => payloadOf(stream.prefix, r, i));
        for (const p of payloads) stream.attempted.add(p);
        try {
          const ack = await publisher.publish(TAG, payloads.map(encode));
          payloads.forEach((payload, i) => stream.acked.push({ payload, seq: ack.channelSeq === null ? null : ack.channelSeq + i }));
        } catch {
          stream.failures++;
          // A refused publish can fail at once: let timers and I/O run before the next one.
          await Bun.sleep(RETRY_PAUSE_MS);
        }
      }
      starts.push(Date.now());
    })();
    const ackedRequests = (): number => stream.acked.length / EVENTS_PER_REQUEST;

    await waitFor("acknowledged publishes before the fault", () => ackedRequests() >= REQUESTS_BEFORE, WAIT_MS);
    group.leader = (await admin.status()).leader ?? 0;
    progress(`${fault.name}: applying (${fault.what}; leader is replica ${group.leader})`);
    await fault.apply(group);
    const ackedAtFault = stream.acked.length;
    await Bun.sleep(fault.holdMs);
    const ackedDuringFault = stream.acked.length - ackedAtFault;
    const beforeHeal = ackedRequests();
    await fault.heal(group);
    const healedAt = Date.now();
    progress(`${fault.name}: healed; waiting for ${REQUESTS_AFTER} more acknowledged publishes`);
    await waitFor("publishes to be acknowledged again after healing", () => ackedRequests() > beforeHeal, WAIT_MS);
    const recoveryMs = Date.now() - healedAt;
    let backOnPreferredMs: number | null = null;
    if (net.networks > 1) {
      await waitFor("every peer link and client session back on the preferred network", () => onPreferredNetwork(admin, net), WAIT_MS);
      backOnPreferredMs = Date.now() - healedAt;
      progress(`${fault.name}: every link back on the preferred network ${(backOnPreferredMs / 1000).toFixed(1)} s after the heal`);
    }
    await waitFor("acknowledged publishes after healing", () => ackedRequests() >= beforeHeal + REQUESTS_AFTER, WAIT_MS);
    running = false;
    await publishing;

    await waitConverged(admin, [0, 1, 2, 3], WAIT_MS);
    fault.settled?.(group);
    // A last event marks the end: its seq is the channel's last, and everything before it
    // is settled at every replica.
    const marker = payloadOf("end", 0, 0);
    stream.attempted.add(marker);
    const endAck = await publisher.publish(TAG, [encode(marker)]);
    const last = endAck.channelSeq as number;
    stream.acked.push({ payload: marker, seq: last });
    await waitForCount(live.events, last, "the live subscriber", WAIT_MS);
    await live.close();
    const history = await readHistory(reader, last);
    const problems = checkTotalOrder([stream], history, live.events);
    const count = (pattern: RegExp): number => problems.filter((p) => pattern.test(p)).length;
    let longestStallMs = 0;
    for (let i = 1; i < starts.length; i++) longestStallMs = Math.max(longestStallMs, (starts[i] as number) - (starts[i - 1] as number));
    for (const note of group.notes) progress(`${fault.name}: ${note}`);
    progress(`${fault.name}: done, ${problems.length} problems`);
    return {
      fault: fault.name,
      acked: stream.acked.length,
      ackedDuringFault,
      delivered: live.events.length,
      lost: count(/^acknowledged /),
      duplicated: count(/appears twice/),
      reordered: count(/out of publish order|gap or repeat|live delivery/),
      forged: count(/never published|live delivered/),
      longestStallMs,
      recoveryMs,
      backOnPreferredMs,
      problems,
      notes: group.notes,
    };
  } catch (error) {
    stopPublishing();
    const tails = [0, 1, 2, 3].map((id) => `replica ${id}:\n${group.tail(id)}`).join("\n");
    throw new Error(`${fault.name}: ${(error as Error).message}\n${tails}`);
  } finally {
    stopPublishing();
    for (const c of clients) c.close();
    await group.stop();
    net.destroy();
    if (process.env.FITB_KEEP_TEST_DIRS === undefined) rmSync(dir, { recursive: true, force: true });
  }
}

/** Whether every replica reaches every peer, and `client` reaches every replica, at its network-0 address. */
async function onPreferredNetwork(client: FitbClient, net: TestNetwork): Promise<boolean> {
  const status = await client.status().catch(() => null);
  if (status === null) return false;
  const preferred = (id: number): string => `${net.host(id).address}:${PORT}`;
  return status.replicas.every((replica) => {
    const answer = replica.answer;
    if (!replica.connected || replica.address !== preferred(replica.id) || answer === null || !answer.ok) return false;
    const peers = answer.value.peers ?? [];
    // Peer links may use the replica's peer_port: the host is what says which network.
    return (
      peers.length === REPLICAS - 1 && peers.every((peer) => peer.up && peer.address?.startsWith(`${net.host(peer.id).address}:`) === true)
    );
  });
}

/** The channel's history from seq 1 to `last`, read by a fresh subscription. */
async function readHistory(reader: FitbClient, last: number): Promise<Delivered[]> {
  const all = await collect(reader, TAG, 1);
  try {
    await waitForCount(all.events, last, "the history from seq 1", WAIT_MS);
  } finally {
    await all.close();
  }
  return all.events.slice(0, last);
}

/** The table `npm run faults` prints. */
export function formatRows(rows: readonly FaultRow[]): string {
  const header = ["fault", "events acked", "delivered", "lost", "duplicated", "reordered", "forged", "longest stall", "recovery"];
  const lines = rows.map((r) => [
    r.fault,
    String(r.acked),
    String(r.delivered),
    String(r.lost),
    String(r.duplicated),
    String(r.reordered),
    String(r.forged),
    `${(r.longestStallMs / 1000).toFixed(1)} s`,
    `${(r.recoveryMs / 1000).toFixed(1)} s`,
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => (l[i] as string).length)));
  const fmt = (cells: string[]): string => `| ${cells.map((c, i) => c.padEnd(widths[i] as number)).join(" | ")} |`;
  return [fmt(header), `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`, ...lines.map(fmt)].join("\n");
}
