/**
 * `fitb demo [--dir DIR] [--base-port 7100] [--relay-port 7400] [--console-port 7500]` (what `npm start`
 * runs): a whole local cluster from one command. It writes a cluster directory on the
 * first run (4 replicas on 127.0.0.1, f=1, keys for the replicas, an admin and a client)
 * and reuses it later; starts the 4 replicas as child processes of this same executable;
 * creates one example channel per CLASS and a low-priority bulk one; runs the relay in this process; and prints how
 * to publish and subscribe with nc and with fitb. SIGINT (Ctrl-C) or SIGTERM stops
 * everything, and so does SIGHUP, its terminal closing (main.ts makes it a SIGTERM): the
 * children get SIGTERM, then SIGKILL if they outlast a bound.
 *
 * Nothing outlives the demo (lifetime.ts): each replica's standard input is a pipe from
 * the demo and the replica stops when it ends, so even `kill -9` of the demo stops the
 * replicas; and the demo stops as on SIGTERM when its own parent goes (`npm start`
 * stopped by a signal leaves its shell's child behind otherwise).
 *
 * Progress goes to standard error; the instructions, ending with the line "fitb demo:
 * ready", to standard output.
 */
import { closeSync, existsSync, openSync, readFileSync } from "node:fs";
import { isAbsolute, join, relative, resolve } from "node:path";
import type { Subprocess } from "bun";
import type { AdminCmd } from "../../../wire/schemas.ts";
import { FitbClient } from "../../client/client.ts";
import { describeError } from "../../client/errors.ts";
import { loadClientSetup } from "../../client/setup.ts";
import { formatAddress, PORT_MAX, requireClusterConfig, type ClusterConfig } from "../../config/cluster.ts";
import { ADMIN_KEY_FILE_NAME, CLIENT_KEY_FILE_NAME, CLUSTER_FILE_NAME, initCluster } from "../../config/init.ts";
import { vouchQuorum } from "../../core/voting/quorum.ts";
import { DEFAULT_RELAY_PORT } from "../../relay/listen.ts";
import { listenFailure, RelayListenError, RelayServer } from "../../relay/server.ts";
import { URGENT_DELAY_TARGET_MS_SUGGESTED } from "../../replica/shedding.ts";
import { clearStaleSocket, RELAY_SOCKET_NAME, SocketPathError, socketPathProblem } from "../../relay/unix-socket.ts";
import type { ParsedArgs } from "../args.ts";
import type { Command, CommandIo } from "../command.ts";
import { ConsoleServer } from "../console/server.ts";
import { CommandError, EXIT_OK } from "../errors.ts";
import { VERSION } from "../run.ts";
import { untilParentChanges } from "../lifetime.ts";
import { portHolderNote } from "../port-holder.ts";
import { FTL_DEFAULT, ftlEnvironment } from "../jit.ts";
import { runningFromSource, selfCommand } from "../self.ts";
import { DEFAULT_BASE_PORT, DEFAULT_HOST } from "./cluster-init.ts";
import { adminConsolePort, replicaExitWarning } from "./demo-notes.ts";

export const DEFAULT_DEMO_DIR = ".fitb-demo";
/** Where the demo's web console listens (on 127.0.0.1), as `fitb console` by default. */
export const DEFAULT_CONSOLE_PORT = 7500;
/** n = 3f+1 with f = 1: the smallest group that tolerates a Byzantine replica. */
export const DEMO_REPLICAS = 4;
export const DEMO_CLUSTER_NAME = "demo";
/** Replicas start in well under a second; the bound is for slow machines and CI. */
export const DEMO_START_TIMEOUT_MS = 30_000;
/** Admin commands and queries while setting up the channels. */
export const DEMO_REQUEST_TIMEOUT_MS = 15_000;
/** Children get this long after SIGTERM before SIGKILL. */
export const DEMO_STOP_GRACE_MS = 5_000;
/** And this long after SIGKILL to be reaped. */
export const DEMO_KILL_WAIT_MS = 2_000;
/** The relay's connections get this long to receive their last answers. */
export const DEMO_RELAY_STOP_GRACE_MS = 2_000;
/** How often the start-up checks on the replicas. */
const DEMO_POLL_MS = 100;
/** Bytes read from the end of a replica's log to explain why it exited. */
const LOG_TAIL_BYTES = 2_048;
export const DEMO_READY_LINE = "fitb demo: ready";

/** The example channels: one per CLASS (fault x order), and a low-priority bulk one. */
type CreateChannelCmd = Extract<AdminCmd, { t: "create-channel" }>;

export const DEMO_CHANNELS: readonly (CreateChannelCmd & { readonly example: string })[] = [
  { t: "create-channel", tag: "net.links", fault: "crash", order: "none", priority: "normal", public: true, example: "eth0 down" },
  {
    t: "create-channel",
    tag: "storage.disks",
    fault: "crash",
    order: "total",
    priority: "high",
    example: "sda reallocated sectors 12",
    public: true,
  },
  {
    t: "create-channel",
    tag: "sec.ids",
    fault: "byzantine",
    order: "none",
    priority: "high",
    example: "ssh brute force from 10.0.0.7",
    public: true,
  },
  {
    t: "create-channel",
    tag: "sec.alerts",
    fault: "byzantine",
    order: "total",
    priority: "critical",
    example: "root login on db1",
    public: true,
  },
  {
    // Bulk telemetry on the same CLASS as the alerts, at the lowest priority: what
    // `fitb bench --mix bulk.metrics` saturates while sec.alerts is measured.
    t: "create-channel",
    tag: "bulk.metrics",
    fault: "byzantine",
    order: "total",
    priority: "low",
    example: "db1 cpu 0.73",
    public: true,
  },
];

export const demoCommand: Command = {
  path: ["demo"],
  summary: "Run a local 4-replica cluster with a relay and example channels (npm start)",
  description: [
    "Starts a complete fitb on this machine: 4 replicas (f=1) on 127.0.0.1, the relay on",
    "127.0.0.1, and one example channel per CLASS (net.links crash/none, storage.disks",
    "crash/total, sec.ids byzantine/none, sec.alerts byzantine/total critical), and",
    "bulk.metrics (byzantine/total, low) for 'fitb bench --mix'. The first run",
    "writes DIR (cluster file and keys); later runs reuse it. Replica logs go to",
    "DIR/replica-N.log. Prints how to publish and subscribe with nc and with fitb.",
    "The replicas shed priority as a host dedicated to fitb with a critical channel",
    `should (fitb replica --urgent-delay-target-ms ${URGENT_DELAY_TARGET_MS_SUGGESTED}): while high or critical events`,
    "arrive (sec.alerts), a share of low publishes (bulk.metrics), then of normal ones,",
    `is refused OVERLOADED (clients retry them) whenever a replica's event loop runs more`,
    `than ${URGENT_DELAY_TARGET_MS_SUGGESTED} ms late. Ctrl-C stops everything.`,
  ],
  flags: [
    {
      name: "dir",
      kind: "string",
      valueName: "DIR",
      defaultValue: DEFAULT_DEMO_DIR,
      description: "The cluster directory (created on the first run)",
    },
    {
      name: "base-port",
      kind: "string",
      valueName: "PORT",
      description: `Port of replica 0 when DIR is created; replica i uses PORT+i (default ${DEFAULT_BASE_PORT}; later runs use DIR's)`,
    },
    {
      name: "relay-port",
      kind: "string",
      valueName: "PORT",
      defaultValue: String(DEFAULT_RELAY_PORT),
      description: "Port of the relay on 127.0.0.1",
    },
    {
      name: "console-port",
      kind: "string",
      valueName: "PORT",
      defaultValue: String(DEFAULT_CONSOLE_PORT),
      description: "Port of the read-only web console on 127.0.0.1 (0: none; in use: the demo goes on without it)",
    },
  ],
  positionals: [],
  examples: ["fitb demo", "fitb demo --dir /tmp/fitb-demo --base-port 17100 --relay-port 17400"],
  run: runDemo,
};

/** One port the demo needs, and what for (named in the error when it is taken). */
export interface NeededPort {
  readonly host: string;
  readonly port: number;
  readonly what: string;
  readonly flag: string;
}

async function runDemo(args: ParsedArgs, io: CommandIo): Promise<number> {
  const dir = resolve(args.requiredString("dir"));
  const relayPort = args.requiredInteger("relay-port", 1, PORT_MAX);
  const consolePort = args.requiredInteger("console-port", 0, PORT_MAX);
  const basePortFlag = args.integer("base-port", 1, PORT_MAX - DEMO_REPLICAS + 1);
  const configPath = join(dir, CLUSTER_FILE_NAME);
  const existing = existsSync(configPath) ? requireClusterConfig(configPath) : null;
  const replicaPorts =
    existing === null ? plannedReplicaPorts(basePortFlag ?? DEFAULT_BASE_PORT) : existingReplicaPorts(existing, basePortFlag, dir);
  // Every port is checked before anything is written or started: that no two of the
  // demo's own listeners want the same one (the relay cannot take a replica's, say, once
  // the replicas run), and that nothing else holds them.
  const needed = [...replicaPorts, { host: DEFAULT_HOST, port: relayPort, what: "the relay", flag: "--relay-port" }];
  const consoleNeeds: NeededPort[] =
    consolePort === 0 ? [] : [{ host: DEFAULT_HOST, port: consolePort, what: "the web console", flag: "--console-port" }];
  const clash = portClashMessage([...needed, ...consoleNeeds]);
  if (clash !== null) throw new CommandError(clash);
  for (const port of needed) if (!portIsFree(port.host, port.port)) throw new CommandError(portInUseMessage(port));

  const demo = new Demo(io, dir);
  const stopRequested = demo.watchSignals();
  try {
    const config = existing ?? demo.createClusterDir(replicaPorts[0]?.port ?? DEFAULT_BASE_PORT);
    if (existing !== null) io.err(`fitb demo: reusing ${displayPath(dir)}`);
    demo.startReplicas(config, configPath);
    await demo.untilStopOr(demo.waitForReplicas(config, configPath));
    await demo.untilStopOr(demo.ensureChannels());
    await demo.untilStopOr(demo.startRelay(config, configPath, relayPort));
    const consoleUrl = consolePort === 0 ? null : demo.startConsole(consolePort);
    printInstructions(io, dir, config, { relay: relayPort, console: consolePort }, consoleUrl);
    await stopRequested;
  } catch (error) {
    if (!(error instanceof StopRequested)) {
      await demo.stop();
      throw error;
    }
  }
  await demo.stop();
  return EXIT_OK;
}

/** Thrown out of the start-up when SIGINT or SIGTERM arrives; not an error. */
class StopRequested extends Error {
  override name = "StopRequested";
}

interface Child {
  readonly id: number;
  readonly proc: Subprocess;
  readonly logPath: string;
  /** How the operator starts this replica again by hand, copy-pasteable (replicaRestartCommand). */
  readonly restart: string;
}

/** The running demo: its children, its clients and its relay, and how to stop them. */
class Demo {
  private readonly children: Child[] = [];
  /** The replicas that exited while the demo ran, in the order they went. */
  private readonly exitedIds: number[] = [];
  /** The group's f, once the replicas are started (what one more exit is measured against). */
  private f = 0;
  private admin: FitbClient | null = null;
  private relayClient: FitbClient | null = null;
  private relay: RelayServer | null = null;
  private console: ConsoleServer | null = null;
  private stopping: Promise<void> | null = null;
  private stopSignal: Promise<void>;
  private signalled!: () => void;
  private signalCount = 0;
  private readonly onSignal = (): void => this.handleSignal();

  constructor(
    private readonly io: CommandIo,
    private readonly dir: string,
  ) {
    this.stopSignal = new Promise<void>((resolve) => {
      this.signalled = resolve;
    });
  }

  /**
   * Resolves on the first SIGINT or SIGTERM, or when this process's parent is gone; a
   * second signal kills the children at once.
   */
  watchSignals(): Promise<void> {
    process.on("SIGINT", this.onSignal);
    process.on("SIGTERM", this.onSignal);
    untilParentChanges(() => {
      if (this.signalCount > 0) return;
      this.io.err("fitb demo: the parent process is gone; stopping");
      this.handleSignal();
    });
    return this.stopSignal;
  }

  private handleSignal(): void {
    this.signalCount++;
    if (this.signalCount === 1) {
      this.signalled();
      return;
    }
    this.io.err("fitb demo: stopping now");
    for (const child of this.children) child.proc.kill("SIGKILL");
  }

  /** Runs a step of the start-up, abandoning it when a stop is requested. */
  async untilStopOr<T>(step: Promise<T>): Promise<T> {
    const stop = this.stopSignal.then(() => {
      throw new StopRequested();
    });
    return Promise.race([step, stop]);
  }

  createClusterDir(basePort: number): ClusterConfig {
    const result = initCluster({
      dir: this.dir,
      replicas: DEMO_REPLICAS,
      host: DEFAULT_HOST,
      basePort,
      // One port per replica keeps the demo's port plan short; production files split them.
      peerBasePort: null,
      name: DEMO_CLUSTER_NAME,
      overwrite: false,
    });
    this.io.err(`fitb demo: created ${displayPath(this.dir)} (cluster file, keys for ${DEMO_REPLICAS} replicas, an admin and a client)`);
    return result.config;
  }

  /** Starts every replica as a child process of this same executable. */
  startReplicas(config: ClusterConfig, configPath: string): void {
    this.f = config.f;
    for (const replica of config.replicas) {
      const logPath = join(this.dir, `replica-${replica.id}.log`);
      const log = openSync(logPath, "w", 0o600);
      try {
        // stdin: a pipe this process holds and never writes; it closes when this process
        // dies, however it dies, and --with-parent makes the replica stop then.
        const argv = [...selfCommand(), ...demoReplicaArgs(configPath, replica.id), "--with-parent"];
        const proc = Bun.spawn(argv, {
          // What --ftl's default asks for, so the replica need not restart itself for it (jit.ts).
          env: { ...process.env, ...ftlEnvironment(FTL_DEFAULT) },
          stdin: "pipe",
          stdout: log,
          stderr: log,
        });
        const child: Child = { id: replica.id, proc, logPath, restart: replicaRestartCommand(configPath, replica.id) };
        this.children.push(child);
        void proc.exited.then(() => this.onChildExit(child, config.n));
        this.io.err(
          `fitb demo: replica ${replica.id} on ${formatAddress(replica.host, replica.port)} (pid ${proc.pid}), log ${displayPath(logPath)}`,
        );
      } finally {
        closeSync(log);
      }
    }
  }

  private onChildExit(child: Child, n: number): void {
    if (this.stopping !== null || this.signalCount > 0) return;
    this.exitedIds.push(child.id);
    const how = child.proc.signalCode === null ? `exited with code ${child.proc.exitCode}` : `was stopped by ${child.proc.signalCode}`;
    this.io.err(
      replicaExitWarning({
        id: child.id,
        how,
        log: displayPath(child.logPath),
        exited: this.exitedIds,
        n,
        f: this.f,
        restart: child.restart,
      }),
    );
  }

  /** Waits until every replica accepts an authenticated session, or one exits. */
  async waitForReplicas(config: ClusterConfig, configPath: string): Promise<void> {
    const setup = loadClientSetup(configPath, join(this.dir, ADMIN_KEY_FILE_NAME));
    const admin = new FitbClient({ config: setup.config, key: setup.key, timeouts: demoTimeouts() });
    this.admin = admin;
    admin.start();
    const deadline = Date.now() + DEMO_START_TIMEOUT_MS;
    while (admin.readyReplicas().length < config.n) {
      const exited = this.children.find((child) => child.proc.exitCode !== null);
      if (exited !== undefined) throw new CommandError(exitedMessage(exited));
      if (Date.now() >= deadline) {
        const ready = new Set(admin.readyReplicas());
        const missing = config.replicas.filter((replica) => !ready.has(replica.id)).map((replica) => replica.id);
        throw new CommandError(
          `replicas ${missing.join(", ")} did not answer within ${DEMO_START_TIMEOUT_MS} ms; see their logs in ${displayPath(this.dir)}`,
        );
      }
      await Bun.sleep(DEMO_POLL_MS);
    }
    this.io.err(`fitb demo: ${config.n} replicas up (n=${config.n}, f=${config.f})`);
  }

  /**
   * Creates the example channels that do not exist yet and registers the client key as
   * their publisher (registering is idempotent, so a run cut short is completed).
   */
  async ensureChannels(): Promise<void> {
    const admin = this.admin as FitbClient;
    const clientKey = loadClientSetup(join(this.dir, CLUSTER_FILE_NAME), join(this.dir, CLIENT_KEY_FILE_NAME)).key.publicKey;
    const existing = new Set((await admin.listChannels()).map((channel) => channel.tag));
    for (const channel of DEMO_CHANNELS) {
      if (!existing.has(channel.tag)) {
        await admin.admin(createChannelCmd(channel));
        this.io.err(`fitb demo: created channel ${channel.tag} (${channel.fault}/${channel.order}, ${channel.priority})`);
      }
      await admin.admin({ t: "register", tag: channel.tag, role: "publisher", key: clientKey });
    }
  }

  /** The relay runs in this process, signing with the client key. */
  async startRelay(config: ClusterConfig, configPath: string, port: number): Promise<void> {
    const setup = loadClientSetup(configPath, join(this.dir, CLIENT_KEY_FILE_NAME));
    const client = new FitbClient({
      config,
      key: setup.key,
      timeouts: demoTimeouts(),
      onLog: (entry) => {
        // After a signal the replicas go too (Ctrl-C reaches the whole process group): not news.
        if (entry.level === "warn" && this.stopping === null && this.signalCount === 0)
          this.io.err(`fitb demo: relay: warning: ${entry.message}`);
      },
    });
    this.relayClient = client;
    const socketPath = join(this.dir, RELAY_SOCKET_NAME);
    try {
      await clearStaleSocket(socketPath);
      this.relay = RelayServer.listen({
        client,
        hostname: DEFAULT_HOST,
        port,
        ...(socketPathProblem(socketPath) === null ? { socketPath } : {}),
        log: (message) => this.io.err(`fitb demo: relay: ${message}`),
      });
    } catch (error) {
      if (error instanceof RelayListenError) throw new CommandError(`${error.message}; pass --relay-port`);
      if (error instanceof SocketPathError) throw new CommandError(error.message);
      throw error;
    }
    client.start();
    await client.waitForSessions(config.n, vouchQuorum(config.f), DEMO_START_TIMEOUT_MS);
    this.io.err(`fitb demo: relay on ${this.relay.socketPath === null ? "" : `${this.relay.socketPath} and `}${this.relay.address}`);
  }

  /**
   * The web console runs in this process too, read-only, on the relay's client. It is a
   * convenience: a port in use is a warning, not a reason to stop the demo. Returns its
   * login URL (with the one-time secret that logs a browser in: src/cli/console/login.ts).
   */
  startConsole(port: number): string | null {
    if (this.relayClient === null) return null;
    try {
      this.console = ConsoleServer.start({
        client: this.relayClient,
        admin: false,
        hostname: DEFAULT_HOST,
        port,
        version: VERSION,
        connectMs: DEMO_START_TIMEOUT_MS,
      });
    } catch (error) {
      this.io.err(`fitb demo: warning: no web console: ${listenFailure(`${DEFAULT_HOST}:${port}`, error, "console")}; pass --console-port`);
      return null;
    }
    return this.console.loginUrl;
  }

  /** Stops the relay, the clients and the children; bounded in time. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= this.stopAll();
    return this.stopping;
  }

  private async stopAll(): Promise<void> {
    this.io.err("fitb demo: stopping");
    this.console?.stop();
    if (this.relay !== null)
      await this.relay.stop(DEMO_RELAY_STOP_GRACE_MS).catch((error: unknown) => this.io.err(`fitb demo: relay: ${describeError(error)}`));
    this.relayClient?.close();
    this.admin?.close();
    await this.stopChildren();
    process.off("SIGINT", this.onSignal);
    process.off("SIGTERM", this.onSignal);
    this.io.err("fitb demo: stopped");
  }

  private async stopChildren(): Promise<void> {
    const running = this.children.filter((child) => child.proc.exitCode === null && child.proc.signalCode === null);
    for (const child of running) child.proc.kill("SIGTERM");
    const exitedAll = Promise.all(running.map((child) => child.proc.exited));
    if (await finishesWithin(exitedAll, DEMO_STOP_GRACE_MS)) return;
    const stubborn = running.filter((child) => child.proc.exitCode === null && child.proc.signalCode === null);
    for (const child of stubborn) {
      this.io.err(`fitb demo: replica ${child.id} did not stop within ${DEMO_STOP_GRACE_MS} ms; killing it`);
      child.proc.kill("SIGKILL");
    }
    if (!(await finishesWithin(exitedAll, DEMO_KILL_WAIT_MS))) this.io.err("fitb demo: warning: some replicas could not be reaped");
  }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/** How the printed instructions invoke fitb: copy-pasteable from the current directory. */
function fitbInvocation(): string {
  if (runningFromSource()) {
    // In the project directory (where npm start runs) npx finds the project's own bun;
    // elsewhere it would fetch one, so the runtime is named by its path.
    const main = displayPath(Bun.main);
    return isAbsolute(main) ? `${shellQuote(process.execPath)} ${shellQuote(main)}` : `npx bun ${shellQuote(main)}`;
  }
  if (Bun.which("fitb") === process.execPath) return "fitb";
  // A shell looks a bare name up in PATH, so a path in the current directory needs "./".
  const path = displayPath(process.execPath);
  return shellQuote(path.includes("/") ? path : `./${path}`);
}

/**
 * The arguments the demo starts replica `id` with, after the executable. Priority shedding
 * as a host dedicated to fitb with a critical channel should run it.
 */
function demoReplicaArgs(configPath: string, id: number): string[] {
  return ["replica", "--config", configPath, "--id", String(id), "--urgent-delay-target-ms", String(URGENT_DELAY_TARGET_MS_SUGGESTED)];
}

/**
 * The demo's command line for replica `id` as the operator types it in another shell. It
 * leaves out --with-parent: that ties the replica to the demo's pipe on its standard input,
 * which a replica started from a shell does not have. The replica resumes from its data
 * directory (the cluster file names it) and rejoins the group.
 */
function replicaRestartCommand(configPath: string, id: number): string {
  const args = demoReplicaArgs(displayPath(configPath), id);
  return [fitbInvocation(), ...args.map(shellQuote)].join(" ");
}

function createChannelCmd(channel: CreateChannelCmd): CreateChannelCmd {
  return {
    t: "create-channel",
    tag: channel.tag,
    fault: channel.fault,
    order: channel.order,
    priority: channel.priority,
    public: channel.public,
  };
}

function plannedReplicaPorts(basePort: number): NeededPort[] {
  return Array.from({ length: DEMO_REPLICAS }, (_, id) => ({
    host: DEFAULT_HOST,
    port: basePort + id,
    what: `replica ${id}`,
    flag: "--base-port",
  }));
}

function existingReplicaPorts(config: ClusterConfig, basePortFlag: number | undefined, dir: string): NeededPort[] {
  const first = config.replicas[0];
  if (basePortFlag !== undefined && first !== undefined && first.port !== basePortFlag) {
    throw new CommandError(
      `${displayPath(dir)} was set up with base port ${first.port}; leave out --base-port, pass --base-port ${first.port}, or choose another --dir`,
    );
  }
  return config.replicas.flatMap((replica) => [
    { host: replica.host, port: replica.port, what: `replica ${replica.id}`, flag: "a different --dir" },
    // A file edited by hand (or from an older demo) may give peers a port of their own.
    ...(replica.peerPort === null
      ? []
      : [{ host: replica.host, port: replica.peerPort, what: `replica ${replica.id}'s peers`, flag: "a different --dir" }]),
  ]);
}

/**
 * The error when two of the demo's listeners want the same port, naming both and the flag
 * that moves the later one; null when every port is its own. Ports are compared alone,
 * whatever the host: the demo runs everything on this machine.
 */
export function portClashMessage(ports: readonly NeededPort[]): string | null {
  const firstByPort = new Map<number, NeededPort>();
  for (const port of ports) {
    const earlier = firstByPort.get(port.port);
    if (earlier !== undefined) {
      return `port ${port.port} is asked for both ${earlier.what} and ${port.what}; each needs its own: pass another ${port.flag}`;
    }
    firstByPort.set(port.port, port);
  }
  return null;
}

/** Whether nothing listens on host:port now (by trying to listen there). */
export function portIsFree(host: string, port: number): boolean {
  try {
    const listener = Bun.listen({ hostname: host, port, socket: { data() {} } });
    listener.stop(true);
    return true;
  } catch {
    return false;
  }
}

function portInUseMessage(port: NeededPort): string {
  return `port ${port.port} on ${port.host} is already in use${portHolderNote(port.port)} (needed for ${port.what}); stop what uses it (an earlier demo?) or pass ${port.flag}`;
}

function exitedMessage(child: Child): string {
  const tail = lastLogLine(child.logPath);
  const detail = tail === null ? "" : `; last log line: ${tail}`;
  return `replica ${child.id} exited with code ${child.proc.exitCode} while starting (see ${displayPath(child.logPath)})${detail}`;
}

function lastLogLine(path: string): string | null {
  try {
    const text = readFileSync(path, "utf8");
    const lines = text
      .slice(-LOG_TAIL_BYTES)
      .split("\n")
      .filter((line) => line.trim() !== "");
    return lines.at(-1) ?? null;
  } catch {
    return null;
  }
}

function demoTimeouts(): { connectMs: number; requestMs: number; queryMs: number } {
  return { connectMs: DEMO_START_TIMEOUT_MS, requestMs: DEMO_REQUEST_TIMEOUT_MS, queryMs: DEMO_REQUEST_TIMEOUT_MS };
}

async function finishesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  const result = await Promise.race([promise.then(() => true as const), timeout]);
  clearTimeout(timer);
  return result;
}

/** A path relative to the current directory when it is inside it, else absolute. */
function displayPath(path: string): string {
  const rel = relative(process.cwd(), path);
  return rel !== "" && !rel.startsWith("..") && !isAbsolute(rel) ? rel : path;
}

/** Single-quotes a word for a POSIX shell when it needs it. */
function shellQuote(word: string): string {
  return /^[A-Za-z0-9_./:@%+=,-]+$/.test(word) ? word : `'${word.replace(/'/g, "'\\''")}'`;
}

/** Every port the demo listens on: its replicas' (client and peer), the relay's and the console's. */
function demoPorts(config: ClusterConfig, relayPort: number, consolePort: number): number[] {
  const replicaPorts = config.replicas.flatMap((replica) =>
    replica.peerPort === null ? [replica.port] : [replica.port, replica.peerPort],
  );
  return [...replicaPorts, relayPort, consolePort];
}

function printInstructions(
  io: CommandIo,
  dir: string,
  config: ClusterConfig,
  ports: { readonly relay: number; readonly console: number },
  consoleUrl: string | null,
): void {
  const fitb = fitbInvocation();
  const cfg = shellQuote(displayPath(join(dir, CLUSTER_FILE_NAME)));
  const clientKey = shellQuote(displayPath(join(dir, CLIENT_KEY_FILE_NAME)));
  const adminKey = shellQuote(displayPath(join(dir, ADMIN_KEY_FILE_NAME)));
  const first = config.replicas[0];
  const last = config.replicas[config.n - 1];
  const relayPort = ports.relay;
  const relay = `${DEFAULT_HOST} ${relayPort}`;
  const width = Math.max(...DEMO_CHANNELS.map((channel) => channel.tag.length));
  const lines = [
    "",
    `fitb demo: ${config.n} replicas (f=${config.f}) on ${first?.host}:${first?.port}-${last?.port}, relay on ${DEFAULT_HOST}:${relayPort}, data in ${displayPath(dir)}`,
    "",
    "Channels (one per CLASS):",
    ...DEMO_CHANNELS.map(
      (channel) => `  ${channel.tag.padEnd(width)}  ${`${channel.fault}/${channel.order}`.padEnd(15)}  ${channel.priority}`,
    ),
    "",
    "Subscribe with nc (in another shell; Ctrl-C to stop):",
    `  printf 'SUB net.links\\n' | nc ${relay}`,
    "Publish with nc:",
    `  printf 'PUB net.links eth0 down\\n' | nc -N ${relay}`,
    `  printf 'PUB net.links eth0 up\\n' | nc -N -U ${shellQuote(displayPath(join(dir, RELAY_SOCKET_NAME)))}      (the Unix socket: this user only)`,
    `  printf 'PUBB storage.disks 5\\nhello' | nc -N ${relay}      (PUBB: a length, then any bytes)`,
    "",
    "Publish and subscribe with fitb:",
    `  ${fitb} pub --config ${cfg} --key ${clientKey} sec.alerts '${DEMO_CHANNELS[3]?.example}'`,
    `  ${fitb} sub --config ${cfg} --key ${clientKey} sec.alerts --from 1`,
    `  ${fitb} admin --config ${cfg} --key ${adminKey} status`,
    `  ${fitb} top --config ${cfg} --key ${clientKey}`,
    "",
    ...(consoleUrl === null
      ? []
      : [
          `Web console (read-only): ${consoleUrl}   (logs one browser in)`,
          `  with the admin key: ${fitb} console --config ${cfg} --key ${adminKey} --listen ${DEFAULT_HOST}:${adminConsolePort(ports.console, demoPorts(config, ports.relay, ports.console))}`,
          "",
        ]),
    `Replica logs: ${displayPath(join(dir, "replica-N.log"))}. Ctrl-C stops everything; the next start reuses ${displayPath(dir)}.`,
    DEMO_READY_LINE,
  ];
  for (const line of lines) io.out(line);
}
