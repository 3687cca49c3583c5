/**
 * `fitb replica --config cluster.toml --id N [--key FILE] [--data DIR] [--sync full|normal]`:
 * runs one replica in the foreground until SIGTERM or SIGINT, logging JSON lines on
 * standard output. Its state lives in the data directory and survives kill -9.
 */
import { URGENT_DELAY_TARGET_MS_DEFAULT, URGENT_DELAY_TARGET_MS_MAX } from "../../replica/shedding.ts";
import { defaultThreads, THREADS_MAX } from "../../threads/verify-pool.ts";
import { mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { bytesEqual } from "../../crypto/encoding.ts";
import { KeyFileError, loadSigningKeyFile } from "../../crypto/keys.ts";
import { formatAddress, replicaById, requireClusterConfig } from "../../config/cluster.ts";
import { createLog, type Log, parseLogLevel } from "../../replica/log.ts";
import { type ListenAddress, parseListenAddress } from "../../relay/listen.ts";
import { listenFailure } from "../../relay/server.ts";
import { fileIsAheadOfData, type Joined, JoinRefused, joinedBefore, learnGroup } from "../join.ts";
import { Replica } from "../../replica/replica.ts";
import { REPLICAS_MAX } from "../../../wire/types.ts";
import { DEFAULT_SYNC_POLICY, StoreIdentityError, SYNC_POLICIES, type SyncPolicy } from "../../replica/storage/index.ts";
import type { ParsedArgs } from "../args.ts";
import { METRICS_HOST_NAME_FLAG } from "../metrics-flags.ts";
import { type MetricsServer, startMetricsServer } from "../metrics-server.ts";
import type { Command } from "../command.ts";
import { CONFIG_DEFAULT_TEXT, resolveConfigPath } from "../defaults.ts";
import { CommandError, EXIT_OK, UsageError } from "../errors.ts";
import { untilStdinEnds } from "../lifetime.ts";
import { ensureFtl, FTL_DEFAULT, FTL_RESTARTED_ENV, type FtlSetting, ftlActive } from "../jit.ts";
import { openFileLimitProblem } from "../open-files.ts";
import { portHolderNote } from "../port-holder.ts";
import { restartCommand } from "../self.ts";
import { SystemdNotifier, watchdogIntervalMs } from "../sd-notify.ts";
import { parseMembersDigest } from "../members-digest.ts";

export const replicaCommand: Command = {
  path: ["replica"],
  summary: "Run one replica of the cluster (foreground; JSON logs on stdout)",
  description: [
    "Runs replica N of the cluster described by the config file: it listens on the",
    "replica's host:port for peers and clients, joins the authenticated peer mesh, and",
    "orders, stores and delivers events. SIGTERM, SIGINT or SIGHUP stops it cleanly.",
    "The secret key defaults to replica-N.key beside the config, the data directory to",
    "the replica's data_dir in the config (data/replica-N beside it). Everything acknowledged",
    "is on disk there first; after kill -9 or power loss the replica restarts from it,",
    "and a replica that is behind or has lost its data fetches the state from its peers.",
    "Logs are JSON lines on standard output (FITB_LOG=debug for more).",
    "Under systemd (Type=notify, $NOTIFY_SOCKET) it reports READY=1 once it has joined its",
    "group (2f peers up in a normal view), WATCHDOG=1 when the unit sets WatchdogSec=, and",
    "STOPPING=1 on SIGTERM; 'joined the group' is logged either way.",
    "A replica added with 'fitb admin add-replica' starts with the same cluster file, which",
    "does not list it: give --id, --key and --data; it learns its group from f+1 matching",
    "answers of the file's replicas and fetches the state. So does a replica restarted with",
    "a key the group rotated to (rotate-replica-key). Once it has the state, its data",
    "directory holds the group it joined: later starts resume from there without asking.",
    "It refuses to start when a replica whose answer counted is not in the group it",
    "describes under its key, or the group's f is above the file's: the file is out of",
    "date. --members-digest (the digest 'fitb admin members' prints for the group that",
    "names it) makes it check the group too, so an out of date file cannot mislead it;",
    "a group that hashes to it needs f+1 of its own members' answers, whatever the",
    "file's f. A voucher under a key the group no longer names (a rotation still",
    "switching), or too few members' answers, is asked again for up to 60 s first.",
  ],
  flags: [
    { name: "config", kind: "string", valueName: "FILE", description: `The cluster file (${CONFIG_DEFAULT_TEXT})` },
    {
      name: "id",
      kind: "string",
      valueName: "N",
      required: true,
      description: "This replica's id (in the cluster file, or given by add-replica)",
    },
    { name: "key", kind: "string", valueName: "FILE", description: "This replica's secret key (default: replica-N.key beside the config)" },
    { name: "data", kind: "string", valueName: "DIR", description: "Data directory (default: the replica's data_dir in the config)" },
    {
      name: "sync",
      kind: "string",
      valueName: "POLICY",
      defaultValue: DEFAULT_SYNC_POLICY,
      description:
        "full: fsync every commit before anything depending on it is sent (survives power loss); normal: fsync at WAL checkpoints only (survives a killed process)",
    },
    {
      name: "metrics",
      kind: "string",
      valueName: "HOST:PORT",
      description: "Serve Prometheus metrics at http://HOST:PORT/metrics and JSON status at /status (off by default)",
    },
    METRICS_HOST_NAME_FLAG,
    {
      name: "listen",
      kind: "string",
      valueName: "HOST:PORT",
      repeated: true,
      description:
        "Listen here instead of the replica's host:port and its further hosts in the config (behind NAT, a load balancer or a proxy; 0.0.0.0:PORT for every interface; repeat for several addresses); peers and clients still use the config's addresses",
    },
    {
      name: "threads",
      kind: "string",
      valueName: "N",
      description: `Threads verifying client signatures beside the event loop (default: the cores but one, at least 1, at most 8; here ${defaultThreads()}); 0: everything on one thread, for small hosts`,
    },
    {
      name: "ordering-thread",
      kind: "string",
      valueName: "on|off",
      defaultValue: "off",
      description:
        "on: the ordering core (PBFT, and the signatures of peer messages) runs on a thread of its own beside the event loop, which then does about a fifth less per event at moderate load; each step is handed over by copy, which at saturation costs the event loop more than it saves, and on hosts without a core to spare it raises latency (README, Performance). Needs --threads 1 or more",
    },
    {
      name: "urgent-delay-target-ms",
      kind: "string",
      valueName: "MS",
      defaultValue: String(URGENT_DELAY_TARGET_MS_DEFAULT),
      description:
        "Priority shedding: while high/critical publishes arrive, refuse a growing share of low (then normal) publishes OVERLOADED whenever the event loop runs more than MS late, down to a guaranteed floor; 0 (the default): off; 2 suits a host dedicated to fitb that carries critical channels",
    },
    {
      name: "ftl",
      kind: "string",
      valueName: "on|off",
      defaultValue: FTL_DEFAULT,
      description:
        "The JavaScript runtime's top compiler tier (FTL). off (the default): a replica's work is mostly native code that FTL does not speed up, and without it the compiler takes a quarter of the CPU while the replica warms up, with no difference measured once warm (README, Performance); the replica restarts itself in place at start with BUN_JSC_useFTLJIT set, unless its environment already has the value asked for",
    },
    {
      name: "members-digest",
      kind: "string",
      valueName: "HEX",
      description:
        "When the replica joins the group (the cluster file does not list it, or lists another key): the digest 'fitb admin members' prints for the group that names it (pending or current); the group the replicas answer must hash to it, or the replica refuses to start",
    },
    {
      name: "with-parent",
      kind: "boolean",
      description:
        "Stop, as on SIGTERM, when standard input ends: for a parent that holds a pipe to it (fitb demo), so that the replica dies with it",
    },
  ],
  positionals: [],
  examples: ["fitb replica --config /etc/fitb/cluster.toml --id 0 --key /etc/fitb/replica-0.key --data /var/lib/fitb/replica-0"],
  run: runReplica,
};

async function runReplica(args: ParsedArgs): Promise<number> {
  const level = parseLogLevel(process.env.FITB_LOG);
  if (!level.ok) throw new UsageError(level.reason);
  // First, before anything is opened: this may replace the process (jit.ts).
  const ftl: FtlSetting = parseOnOff("ftl", args.string("ftl") ?? FTL_DEFAULT) ? "on" : "off";
  const ftlFailure = ensureFtl(ftl, restartCommand(), process.argv.slice(2));
  // Read: nothing this process starts takes it along.
  delete process.env[FTL_RESTARTED_ENV];
  const configPath = resolveConfigPath(args.string("config"));
  const config = requireClusterConfig(configPath);
  const id = args.requiredInteger("id", 0, REPLICAS_MAX - 1);
  // A replica the file does not list joins the group that add-replica made it a member of (join.ts).
  const entry = replicaById(config, id);
  const keyPath = args.string("key") ?? entry?.keyFile ?? join(dirname(configPath), `replica-${id}.key`);
  let loaded: ReturnType<typeof loadSigningKeyFile>;
  try {
    loaded = loadSigningKeyFile(keyPath);
  } catch (error) {
    if (error instanceof KeyFileError) throw new CommandError(error.message);
    throw error;
  }
  const key = loaded.key;
  // Not in the file, or a key the file does not name (rotate-replica-key): the group says whether it is this replica's.
  const learns = entry === undefined || !bytesEqual(key.publicKey, entry.publicKey);
  const dataArg = args.string("data");
  if (entry === undefined && dataArg === undefined) {
    throw new CommandError(`replica ${id} is not in ${configPath}: give its data directory (--data) to join the group`);
  }
  const dataDir = dataArg ?? (entry as { dataDir: string }).dataDir;
  const sync = parseSync(args.string("sync") ?? DEFAULT_SYNC_POLICY);
  const listens = args.strings("listen").map(parseListen);
  const listen = listens[0];
  const threads = args.integer("threads", 0, THREADS_MAX) ?? defaultThreads();
  const orderingThread = parseOrderingThread(args.string("ordering-thread") ?? "off", threads);
  const urgentDelayTargetMs = args.integer("urgent-delay-target-ms", 0, URGENT_DELAY_TARGET_MS_MAX) ?? URGENT_DELAY_TARGET_MS_DEFAULT;
  const membersDigest = parseMembersDigest(args.string("members-digest"));
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const log = createLog({ replica: id }, level.level);
  for (const warning of loaded.warnings) log.warn(warning);
  const fileLimit = openFileLimitProblem(config.n);
  if (fileLimit !== null) log.warn(fileLimit);
  if (ftlFailure !== null) {
    log.warn("could not restart with the runtime option --ftl asks for; running as started", { reason: ftlFailure, ftl: ftlActive() });
  }
  let joining: Joined | undefined;
  let behind = false;
  try {
    if (learns) joining = joinedBefore({ config, id, key, keyFile: keyPath, dataDir, log }) ?? undefined;
    // A file of a later epoch (exported) and a data directory of epoch 0 or none: the group says where to start.
    else behind = fileIsAheadOfData({ config, id, dataDir, log });
    if (behind) joining = joinedBefore({ config, id, key, keyFile: keyPath, dataDir, log }) ?? undefined;
  } catch (error) {
    if (error instanceof StoreIdentityError) throw new CommandError(error.message);
    throw error;
  }
  if (joining !== undefined) {
    log.info("joined the group before: starting from the data directory", { epoch: joining.epoch.membership.epoch });
  } else if (learns || behind) {
    if (behind) {
      log.info("the cluster file lists the group of a later epoch and the data directory holds none: asking the group", {
        fileEpoch: config.epoch,
      });
    } else {
      log.info("the cluster file does not name this replica with this key: asking the group", {
        file: entry === undefined ? "no such replica" : "another key",
      });
    }
    try {
      joining = await learnGroup({
        config,
        id,
        key,
        keyFile: keyPath,
        dataDir,
        log,
        ...(membersDigest === undefined ? {} : { membersDigest }),
      });
    } catch (error) {
      if (error instanceof JoinRefused) throw new CommandError(`${keyPath}: ${error.message}`);
      throw new CommandError(`replica ${id} could not learn its group from the replicas of ${configPath}: ${(error as Error).message}`);
    }
  }
  // Listened for from here, well before the replica starts and says so ("replica started"):
  // a stop asked while it opens its store and starts is kept, and done once it runs. (Had
  // the listeners come after start, a SIGTERM sent on seeing that line could still find
  // none and end the process by the signal, with no "replica stopped".)
  const stopAsked = stopSignals();
  let replica: Replica;
  try {
    replica = new Replica({
      config,
      id,
      key,
      log,
      dataDir,
      sync,
      listenHost: listen?.host,
      listenPort: listen?.port,
      threads,
      orderingThread,
      ftl: ftlActive(),
      urgentDelayTargetMs,
      listenAlso: listens.slice(1),
      ...(joining === undefined ? {} : { joining }),
      // The replica logged why; its exit status says what kind of stop it is (systemd restarts it).
      onFatal: (error) => process.exit(error.exitCode),
      // A membership change removed it (it said so in its log): a clean stop.
      onRemoved: () => process.exit(0),
    });
  } catch (error) {
    if (error instanceof StoreIdentityError) throw new CommandError(error.message);
    throw new CommandError(`cannot start replica ${id} on data directory ${dataDir}: ${(error as Error).message}`);
  }
  // The metrics address is checked before the replica joins the group, so a bad one
  // stops the start instead of a running replica.
  let metricsServer: MetricsServer | null;
  try {
    metricsServer = startMetricsServer(
      args.string("metrics"),
      { registry: replica.metrics.registry, status: () => replica.statusJson() },
      args.strings("metrics-host-name"),
    );
  } catch (error) {
    replica.stop();
    throw error;
  }
  try {
    replica.start();
  } catch (error) {
    metricsServer?.stop(true);
    replica.stop();
    // With several addresses (further hosts, repeated --listen), the server names the one that failed.
    const failed = (error as { listenAddress?: unknown } | null)?.listenAddress;
    const self = joining?.self ?? (entry as NonNullable<typeof entry>);
    const address = typeof failed === "string" ? failed : formatAddress(listen?.host ?? self.host, listen?.port ?? self.port);
    // Bun's own message names neither the port nor why; the error code does.
    const problem = listenFailure(address, error, "replica");
    // The port that failed (the peer port, a --listen one), not always the client port.
    const failedPort = Number(/:(\d+)$/.exec(address)?.[1] ?? self.port);
    const holder = problem.includes("already in use") ? portHolderNote(failedPort) : "";
    throw new CommandError(problem.startsWith("cannot listen") ? `cannot start replica ${id}: ${problem}` : `${problem}${holder}`);
  }
  if (metricsServer !== null) log.info("metrics listening", { url: `http://${metricsServer.hostname}:${metricsServer.port}/metrics` });
  const supervisor = superviseWithSystemd(replica, log);
  await new Promise<void>((resolve) => {
    let stopped = false;
    const stop = (): void => {
      if (stopped) return;
      stopped = true;
      supervisor.stopping();
      metricsServer?.stop(true);
      replica.stop();
      resolve();
    };
    void stopAsked.then(stop);
    if (args.boolean("with-parent")) {
      void untilStdinEnds().then(() => {
        if (!stopped) log.info("standard input ended: the parent process is gone; stopping");
        stop();
      });
    }
  });
  return EXIT_OK;
}

/** Resolves at the first SIGTERM or SIGINT from now on. */
function stopSignals(): Promise<void> {
  return new Promise<void>((resolve) => {
    process.once("SIGTERM", () => resolve());
    process.once("SIGINT", () => resolve());
  });
}

function parseListen(text: string): ListenAddress {
  const parsed = parseListenAddress(text);
  if (!parsed.ok) throw new UsageError(`--listen: ${parsed.reason}`);
  return parsed.address;
}

/** How often readiness is looked at until the replica has joined its group. */
const JOIN_POLL_MS = 100;

/**
 * Readiness for systemd (`Type=notify`, sd-notify.ts) and the log: the replica has joined
 * its group once it reaches 2f peers (with itself, the 2f+1 that order) in a normal
 * view. Then READY=1; WATCHDOG=1 at half the interval systemd asks for, from the event
 * loop (a stuck loop stops them, and systemd restarts the replica); STOPPING=1 on stop.
 */
function superviseWithSystemd(replica: Replica, log: Log): { stopping(): void } {
  const notifier = new SystemdNotifier();
  let warned = false;
  const notify = (message: string): void => {
    try {
      notifier.notify(message);
    } catch (error) {
      if (!warned) log.warn("cannot notify systemd", { error: (error as Error).message });
      warned = true;
    }
  };
  const joinTimer = setInterval(() => {
    const status = replica.status() as { f?: number; mode?: string; peers?: { up: boolean }[] };
    const peersUp = (status.peers ?? []).filter((peer) => peer.up).length;
    if (status.mode !== "normal" || peersUp < 2 * (status.f ?? 0)) return;
    clearInterval(joinTimer);
    log.info("joined the group", { peersUp });
    notify(`READY=1\nSTATUS=joined the group (${peersUp} peers up)`);
  }, JOIN_POLL_MS);
  const watchdogMs = notifier.enabled ? watchdogIntervalMs() : null;
  const watchdogTimer = watchdogMs === null ? null : setInterval(() => notify("WATCHDOG=1"), Math.max(1, Math.floor(watchdogMs / 2)));
  return {
    stopping() {
      clearInterval(joinTimer);
      if (watchdogTimer !== null) clearInterval(watchdogTimer);
      notify("STOPPING=1");
      notifier.close();
    },
  };
}

function parseSync(text: string): SyncPolicy {
  const policy = SYNC_POLICIES.find((p) => p === text);
  if (policy === undefined) throw new UsageError(`--sync: expected one of ${SYNC_POLICIES.join(", ")}, got ${JSON.stringify(text)}`);
  return policy;
}

/** An on|off flag's value; a UsageError naming the flag for anything else. */
function parseOnOff(flag: string, text: string): boolean {
  if (text === "on") return true;
  if (text === "off") return false;
  throw new UsageError(`--${flag}: expected on or off, got ${JSON.stringify(text)}`);
}

/** `--ordering-thread`: on or off; on and `--threads 0` (everything on one thread) contradict each other. */
function parseOrderingThread(text: string, threads: number): boolean {
  const on = parseOnOff("ordering-thread", text);
  if (on && threads === 0) {
    throw new UsageError(
      "--ordering-thread on: --threads 0 runs everything on one thread; give --threads 1 or more, or leave --ordering-thread off",
    );
  }
  return on;
}
