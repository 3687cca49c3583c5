/**
 * `fitb relay --config C --key K [--listen 127.0.0.1:7400|none] [--socket PATH|none] [--allow-remote]`:
 * the netcat gateway. It holds a probe's key, keeps sessions with the replicas, and offers the text
 * line protocol of wire/PROTOCOL.md section 11 until SIGTERM or SIGINT.
 *
 * Every local account can connect to a loopback TCP port, and so publish with the key;
 * only the relay's user can connect to its Unix socket. `--listen none` turns the port off.
 */
import { FitbClient } from "../../client/client.ts";
import { loadClientSetup } from "../../client/setup.ts";
import { vouchQuorum } from "../../core/voting/quorum.ts";
import { formatPublicKey } from "../../crypto/keys.ts";
import {
  DEFAULT_RELAY_LISTEN,
  parseListenAddress,
  RELAY_LISTEN_NONE,
  remoteListenRefusal,
  type ListenAddress,
} from "../../relay/listen.ts";
import { RelayListenError, RelayServer } from "../../relay/server.ts";
import { portHolderNote } from "../port-holder.ts";
import { clearStaleSocket, defaultRelaySocketPath, RELAY_SOCKET_NAME, SocketPathError } from "../../relay/unix-socket.ts";
import type { ParsedArgs } from "../args.ts";
import { METRICS_HOST_NAME_FLAG } from "../metrics-flags.ts";
import { type MetricsServer, startMetricsServer } from "../metrics-server.ts";
import { RelayMetrics } from "../../relay/metrics.ts";
import type { Command, CommandIo } from "../command.ts";
import { CommandError, EXIT_OK, UsageError } from "../errors.ts";
import {
  CONFIG_FLAG,
  CRASH_NONE_TARGETS_FLAG,
  keyFlag,
  readClientFlags,
  readCrashNoneTargets,
  TIMEOUT_FLAGS,
  type ClientFlags,
} from "./pub.ts";

export const relayCommand: Command = {
  path: ["relay"],
  summary: "Run the netcat gateway: publish and subscribe with text lines over TCP",
  description: [
    "Listens for the relay's text line protocol (one command per line) and serves",
    "it through sessions with the replicas, signing every publish with --key:",
    "  PUB <tag> <payload>          -> +OK <tag> <seq> once the channel's quorum has it",
    "  PUBB <tag> <n>, then n bytes -> the same, for payloads of any bytes",
    "  SUB <tag> [<from-seq>]       -> +OK, then EVENT (or EVENTB) lines as events arrive",
    "  SUB net.* / SUB net.>        -> the same for every matching channel, also those created later",
    "  UNSUB <tag>, PING, QUIT",
    "Errors are '-ERR <code> <reason>'; the connection goes on after them, except after a",
    "line that is no command at all (a browser's 'POST / HTTP/1.1'), which closes it.",
    "Publishes of all connections to a tag are batched into signed requests.",
    "The relay signs for whoever connects. Probes should use its Unix socket (mode 0600:",
    `the relay's user only; 'nc -U PATH'), by default ${RELAY_SOCKET_NAME} in the unit's`,
    "RuntimeDirectory ($RUNTIME_DIRECTORY) or fitb-relay.sock in $XDG_RUNTIME_DIR. Every local",
    "account can connect to the TCP port and publish with the key: '--listen none' turns it",
    "off (the socket only). The port listens on loopback only unless --allow-remote is given.",
    "SIGTERM, SIGINT or SIGHUP stops it cleanly.",
  ],
  flags: [
    CONFIG_FLAG,
    keyFlag("The key the relay signs with (register it as publisher of the channels)"),
    {
      name: "listen",
      kind: "string",
      valueName: "HOST:PORT",
      defaultValue: DEFAULT_RELAY_LISTEN,
      description: `TCP address to listen on; '${RELAY_LISTEN_NONE}': no TCP port, the Unix socket only`,
    },
    {
      name: "socket",
      kind: "string",
      valueName: "PATH",
      description: "Unix socket to listen on, mode 0600 (default: see above; 'none': no socket)",
    },
    {
      name: "allow-remote",
      kind: "boolean",
      description: "Allow a --listen address other than loopback (whoever connects publishes with the key)",
    },
    {
      name: "metrics",
      kind: "string",
      valueName: "HOST:PORT",
      description: "Serve Prometheus metrics at http://HOST:PORT/metrics (off by default)",
    },
    METRICS_HOST_NAME_FLAG,
    ...TIMEOUT_FLAGS,
    CRASH_NONE_TARGETS_FLAG,
  ],
  positionals: [],
  examples: [
    "fitb relay --config /etc/fitb/cluster.toml --key /etc/fitb/probe.key",
    "fitb relay --config /etc/fitb/cluster.toml --key /etc/fitb/probe.key --listen none",
    "printf 'PUB net.links eth0 down\\n' | sudo -u fitb nc -N -U /run/fitb-relay/relay.sock   # the socket is the relay user's (0600)",
    "printf 'PUB net.links eth0 down\\n' | nc -N 127.0.0.1 7400",
    "printf 'SUB net.links\\n' | nc 127.0.0.1 7400",
  ],
  run: runRelay,
};

async function runRelay(args: ParsedArgs, io: CommandIo): Promise<number> {
  const flags = readClientFlags(args);
  const listen = readListen(args);
  const socketPath = readSocket(args);
  if (listen === null && socketPath === null) {
    throw new UsageError(
      `--listen ${RELAY_LISTEN_NONE} leaves no TCP port, and there is no Unix socket either ` +
        "(--socket none, or neither $RUNTIME_DIRECTORY nor $XDG_RUNTIME_DIR is set): give --socket PATH, or a --listen address",
    );
  }
  const crashNoneTargets = readCrashNoneTargets(args);
  const setup = loadClientSetup(flags.configPath, flags.keyPath);
  for (const warning of setup.warnings) io.err(`fitb relay: warning: ${warning}`);
  const client = new FitbClient({
    config: setup.config,
    key: setup.key,
    timeouts: clientTimeouts(flags),
    crashNoneTargets,
    onLog: (entry) => io.err(`fitb relay: ${entry.level === "warn" ? "warning: " : ""}${entry.message}`),
  });
  let relay: RelayServer | null = null;
  const metrics = new RelayMetrics(() => ({
    connections: relay?.connectionCount ?? 0,
    subscriptions: relay?.subscriptionCount ?? 0,
    publishers: relay?.publisherCount ?? 0,
    publishBytesHeld: relay?.publishBytesHeld ?? 0,
    replicas: client.replicaStates(),
    membership: client.membership,
  }));
  let metricsServer: MetricsServer | null = null;
  try {
    metricsServer = startMetricsServer(args.string("metrics"), { registry: metrics.registry }, args.strings("metrics-host-name"));
    if (socketPath !== null) await clearStaleSocket(socketPath);
    relay = RelayServer.listen({
      client,
      hostname: listen?.host ?? "",
      port: listen?.port ?? null,
      ...(socketPath === null ? {} : { socketPath }),
      log: (message) => io.err(`fitb relay: ${message}`),
      metrics,
    });
  } catch (error) {
    metricsServer?.stop(true);
    client.close();
    if (error instanceof RelayListenError) {
      const holder = listen !== null && error.message.includes("already in use") ? portHolderNote(listen.port) : "";
      throw new CommandError(`${error.message}${holder}`);
    }
    if (error instanceof SocketPathError) throw new CommandError(error.message);
    throw error;
  }
  const stopped = stopSignal();
  client.start();
  const where = [relay.socketPath, relay.listensOnTcp ? relay.address : null].filter((part) => part !== null).join(" and ");
  io.err(`fitb relay: listening on ${where}, signing as ${formatPublicKey(setup.key.publicKey)} (cluster ${setup.config.name})`);
  if (metricsServer !== null) io.err(`fitb relay: metrics at http://${metricsServer.hostname}:${metricsServer.port}/metrics`);
  if (relay.socketPath === null) {
    io.err(
      args.string("socket") === "none"
        ? "fitb relay: no Unix socket (--socket none)"
        : "fitb relay: no Unix socket (no $RUNTIME_DIRECTORY or $XDG_RUNTIME_DIR; --socket PATH gives one)",
    );
  }
  if (relay.listensOnTcp) {
    io.err(`fitb relay: every local account can publish through ${relay.address}; --listen ${RELAY_LISTEN_NONE} serves the socket only`);
  }
  await reportSessions(client, flags.connectTimeoutMs, io, stopped.promise);
  await stopped.promise;
  io.err("fitb relay: stopping");
  await relay.stop();
  metricsServer?.stop(true);
  client.close();
  stopped.dispose();
  return EXIT_OK;
}

/** --socket: a path, 'none', or the default for where the relay runs (null: none). */
function readSocket(args: ParsedArgs): string | null {
  const given = args.string("socket");
  if (given === "none") return null;
  if (given !== undefined) {
    if (given === "") throw new UsageError("--socket: give a path, or 'none' for no Unix socket");
    return given;
  }
  return defaultRelaySocketPath();
}

/** --listen: an address (refused beyond loopback without --allow-remote), or null for 'none'. */
function readListen(args: ParsedArgs): ListenAddress | null {
  const text = args.requiredString("listen");
  if (text === RELAY_LISTEN_NONE) return null;
  const parsed = parseListenAddress(text);
  if (!parsed.ok) throw new UsageError(`--listen: ${parsed.reason}; or '${RELAY_LISTEN_NONE}' for no TCP port`);
  const refusal = remoteListenRefusal(text, parsed.address);
  if (refusal !== null && !args.boolean("allow-remote")) throw new UsageError(refusal);
  return parsed.address;
}

export function clientTimeouts(flags: ClientFlags): { connectMs: number; requestMs: number; queryMs: number } {
  return { connectMs: flags.connectTimeoutMs, requestMs: flags.timeoutMs, queryMs: flags.timeoutMs };
}

/**
 * Says how many replicas answered. The relay keeps running with fewer than a quorum
 * (under systemd the replicas may start after it); commands fail with TIMEOUT until
 * enough are up, and the client keeps dialling the rest.
 */
async function reportSessions(client: FitbClient, connectMs: number, io: CommandIo, stopped: Promise<void>): Promise<void> {
  const waited = client.waitForSessions(client.n, vouchQuorum(client.f), connectMs).then(
    () => null,
    (error: unknown) => error,
  );
  const outcome = await Promise.race([waited, stopped.then(() => "stopped" as const)]);
  if (outcome === "stopped") return;
  const ready = client.readyReplicas().length;
  if (outcome === null) io.err(`fitb relay: connected to ${ready} of ${client.n} replicas`);
  else
    io.err(
      `fitb relay: warning: connected to ${ready} of ${client.n} replicas; commands fail with TIMEOUT until ${vouchQuorum(client.f)} are up`,
    );
}

/** Resolves on the first SIGTERM or SIGINT. */
export function stopSignal(): { promise: Promise<void>; dispose: () => void } {
  let onSignal: () => void = () => undefined;
  const promise = new Promise<void>((resolve) => {
    onSignal = () => resolve();
  });
  process.once("SIGTERM", onSignal);
  process.once("SIGINT", onSignal);
  return {
    promise,
    dispose: () => {
      process.off("SIGTERM", onSignal);
      process.off("SIGINT", onSignal);
    },
  };
}
