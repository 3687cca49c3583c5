/**
 * `fitb service unit replica|relay --config C [--id N] [--user fitb] [--binary PATH]
 * [--data DIR] [--sync full|normal] [--listen HOST:PORT ...] [--allow-remote]
 * [--metrics HOST:PORT [--metrics-host-name NAME[:PORT] ...]]`: prints a systemd unit for running a replica or a relay as a
 * service. The operator redirects it into /etc/systemd/system/ and enables it.
 *
 * A relay unit listens on its Unix socket only (`--listen none`) unless `--listen` asks
 * for a TCP port as well: every local account can connect to a loopback port and publish
 * with the probe's key, only the relay's user to the socket.
 *
 * A replica unit is `Type=notify`: the replica tells systemd READY=1 once it has joined
 * its group, so units ordered After= it start once it can serve; WatchdogSec= has it
 * send WATCHDOG=1 from its event loop, and a replica whose loop is stuck is restarted.
 * Because joining needs 2f other replicas, the first start of a new cluster waits for
 * them (TimeoutStartSec=infinity; `systemctl enable --now --no-block` returns at once).
 */
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { PORT_MAX, PORT_MIN } from "../../config/cluster.ts";
import { parseListenAddress, RELAY_LISTEN_NONE, remoteListenRefusal } from "../../relay/listen.ts";
import { RELAY_SOCKET_NAME } from "../../relay/unix-socket.ts";
import type { ParsedArgs } from "../args.ts";
import type { Command, CommandIo } from "../command.ts";
import { EXIT_OK, UsageError } from "../errors.ts";
import { checkMetricsHostNames, METRICS_HOST_NAME_FLAG } from "../metrics-flags.ts";
import { FTL_DEFAULT, ftlEnvironment } from "../jit.ts";
import { parseMembersDigest } from "../members-digest.ts";
import { REPLICAS_MAX } from "../../../wire/types.ts";

export const DEFAULT_BINARY = "/usr/local/bin/fitb";
export const DEFAULT_USER = "fitb";
/** A relay unit's default: no TCP port, the socket in its RuntimeDirectory only. */
export const RELAY_UNIT_LISTEN_DEFAULT = RELAY_LISTEN_NONE;
/** The relay unit's RuntimeDirectory (fitb-relay) and the socket in it, which probes use. */
const RELAY_UNIT_RUNTIME_DIRECTORY = "fitb-relay";
export const RELAY_UNIT_SOCKET = `/run/${RELAY_UNIT_RUNTIME_DIRECTORY}/${RELAY_SOCKET_NAME}`;
/** Where systemd's StateDirectory=fitb puts the replica's data. */
const STATE_ROOT = "/var/lib/fitb";
/**
 * Trees the unit's sandbox hides from the service (renderUnit): PrivateTmp=yes gives it an
 * empty /tmp and /var/tmp of its own, ProtectHome=yes makes the home directories
 * inaccessible. A path there in a unit is a config the service cannot read, a key it
 * cannot load, a binary it cannot run, or data written to a throw-away /tmp.
 */
export const SANDBOX_HIDDEN = [
  { root: "/tmp", why: "PrivateTmp=yes gives the service an empty /tmp of its own" },
  { root: "/var/tmp", why: "PrivateTmp=yes gives the service an empty /var/tmp of its own" },
  { root: "/home", why: "ProtectHome=yes hides it from the service" },
  { root: "/root", why: "ProtectHome=yes hides it from the service" },
  { root: "/run/user", why: "ProtectHome=yes hides it from the service" },
] as const;

/** A stuck event loop is noticed within this (the replica notifies at half of it). */
const WATCHDOG_SEC = 30;
/** User names systemd accepts (a conservative subset of POSIX names). */
const USER_PATTERN = /^[a-z_][a-z0-9_-]{0,31}$/;
/** `--metrics HOST:PORT`, as the replica and the relay split it (metrics-server.ts). */
const METRICS_LISTEN_PATTERN = /^(\S+):(\d{1,5})$/;
/** Flags only a replica takes: a relay unit given one refuses it rather than drop it. */
const REPLICA_ONLY_FLAGS = ["id", "data", "sync"] as const;

export const serviceUnitCommand: Command = {
  path: ["service", "unit"],
  summary: "Print a systemd unit for a replica or a relay",
  description: [
    "Prints a systemd service unit on standard output. KIND is replica or relay.",
    "The unit runs the binary as an unprivileged user with a hardened sandbox",
    "(NoNewPrivileges, ProtectSystem=strict, PrivateTmp, ...); replica data lives under",
    "/var/lib/fitb (StateDirectory), and the service restarts on failure.",
    "A replica unit is Type=notify: started means joined its group (2f peers up), and",
    "WatchdogSec=30s restarts a replica whose event loop is stuck. --data, --sync, --listen",
    "and --metrics are passed to the replica (a --data outside /var/lib/fitb is made writable",
    "with ReadWritePaths=, and made at start, the user's and mode 0700, when it is missing).",
    "A relay unit listens on its Unix socket only (/run/fitb-relay/relay.sock, the relay's",
    "user only); --listen HOST:PORT adds a TCP port, to which every local account can",
    "connect and publish with the key (beyond loopback it also needs --allow-remote).",
    "Install: fitb service unit replica --config /etc/fitb/cluster.toml --id 0 \\",
    "  > /etc/systemd/system/fitb-replica.service && systemctl daemon-reload &&",
    "  systemctl enable --now --no-block fitb-replica",
  ],
  flags: [
    {
      name: "config",
      kind: "string",
      valueName: "FILE",
      required: true,
      description:
        "The cluster file on the host (a relative path is made absolute; not under /tmp or a home directory, which the sandbox hides)",
    },
    { name: "id", kind: "string", valueName: "N", description: "Replica id (replica units: required)" },
    {
      name: "key",
      kind: "string",
      valueName: "FILE",
      description: "Secret key file (relay units: required; replica default: replica-N.key beside the config)",
    },
    { name: "user", kind: "string", valueName: "NAME", description: `User to run as (default ${DEFAULT_USER})` },
    { name: "binary", kind: "string", valueName: "PATH", description: `Where fitb is installed (default ${DEFAULT_BINARY})` },
    {
      name: "listen",
      kind: "string",
      valueName: "HOST:PORT",
      repeated: true,
      description: `Replica: --listen of the replica (repeatable). Relay: a TCP port as well as the socket (default ${RELAY_UNIT_LISTEN_DEFAULT}: the socket only)`,
    },
    {
      name: "allow-remote",
      kind: "boolean",
      description: "Relay units: pass --allow-remote, for a --listen address beyond loopback (whoever connects publishes with the key)",
    },
    { name: "data", kind: "string", valueName: "DIR", description: `Replica data directory (default ${STATE_ROOT}/replica-N)` },
    { name: "sync", kind: "string", valueName: "POLICY", description: "Replica --sync: full (default) or normal" },
    {
      name: "members-digest",
      kind: "string",
      valueName: "HEX",
      description:
        "Replica --members-digest: for a replica joining the group, the digest 'fitb admin members' prints for the group that names it",
    },
    {
      name: "metrics",
      kind: "string",
      valueName: "HOST:PORT",
      description: "Serve Prometheus metrics there (--metrics of the replica or relay; the replica's /status too)",
    },
    { ...METRICS_HOST_NAME_FLAG, description: `${METRICS_HOST_NAME_FLAG.description} (passed on; repeatable)` },
  ],
  positionals: [{ name: "KIND", required: true, description: "replica or relay" }],
  examples: [
    "fitb service unit replica --config /etc/fitb/cluster.toml --id 0 > /etc/systemd/system/fitb-replica.service",
    "fitb service unit relay --config /etc/fitb/cluster.toml --key /etc/fitb/probe.key > /etc/systemd/system/fitb-relay.service",
  ],
  run: runServiceUnit,
};

/**
 * `path` (absolute) as the unit may name it: refused when the sandbox hides it, and a
 * relative `given` is said on standard error as what it resolved to (the unit cannot
 * follow the working directory it was written in).
 */
function unitPath(flag: string, given: string, io: CommandIo): string {
  // A newline would end the directive and begin another one of the path's choosing.
  if ([...given].some((char) => char < " " || char === "\x7f"))
    throw new UsageError(`--${flag}: a path with a control character (a newline, say) cannot go in a unit`);
  const path = resolve(given);
  const hidden = SANDBOX_HIDDEN.find(({ root }) => path === root || path.startsWith(`${root}/`));
  if (hidden !== undefined) {
    throw new UsageError(
      `--${flag}: ${path} is under ${hidden.root}, which the unit cannot use (${hidden.why}); put it under /etc/fitb, /var/lib/fitb or /opt`,
    );
  }
  if (!given.startsWith("/")) io.err(`fitb service unit: --${flag} ${given} is ${path} in the unit`);
  return path;
}

/** A file the service reads at every start: said on standard error when it is not there (the unit may be meant for another host). */
function noteMissing(flag: string, path: string, io: CommandIo): string {
  if (!existsSync(path))
    io.err(`fitb service unit: --${flag} ${path} does not exist on this host; the service will not start until it does`);
  return path;
}

function runServiceUnit(args: ParsedArgs, io: CommandIo): number {
  const kind = args.requiredPositional("KIND");
  const config = noteMissing("config", unitPath("config", args.requiredString("config"), io), io);
  const user = args.string("user") ?? DEFAULT_USER;
  if (!USER_PATTERN.test(user)) throw new UsageError(`--user: ${JSON.stringify(user)} is not a valid user name`);
  const binaryPath = args.string("binary") ?? DEFAULT_BINARY;
  if (!binaryPath.startsWith("/")) throw new UsageError("--binary: must be an absolute path (systemd requires one)");
  unitPath("binary", binaryPath, io);
  // Quoted as ExecStart's first word needs when it holds spaces (/opt/my fitb/fitb).
  const binary = quote(binaryPath);
  const metrics = args.string("metrics");
  checkMetricsListen(metrics);
  const metricsHostNames = args.strings("metrics-host-name");
  checkMetricsHostNames(metrics, metricsHostNames);
  const metricsArg =
    metrics === undefined
      ? ""
      : ` --metrics ${systemdEscape(metrics)}${metricsHostNames.map((name) => ` --metrics-host-name ${systemdEscape(name)}`).join("")}`;
  let unit: string;
  if (kind === "replica") {
    // The replica's own bound (replica.ts): a unit for an id it refuses would fail at every start.
    const id = args.requiredInteger("id", 0, REPLICAS_MAX - 1);
    const key = args.string("key");
    const keyArg = key === undefined ? "" : ` --key ${quote(noteMissing("key", unitPath("key", key, io), io))}`;
    const data = unitPath("data", args.string("data") ?? `${STATE_ROOT}/replica-${id}`, io);
    const sync = args.string("sync");
    if (sync !== undefined && sync !== "full" && sync !== "normal")
      throw new UsageError(`--sync: expected full or normal, got ${JSON.stringify(sync)}`);
    // A replica has no such flag: it serves peers and clients that authenticate, anywhere.
    if (args.boolean("allow-remote")) throw new UsageError("--allow-remote is for relay units; a replica listens where --listen says");
    const listenArgs = readListens(args).map((listen) => ` --listen ${listen}`);
    const digest = args.string("members-digest");
    // Checked as the replica checks it; written as 64 lowercase hex digits.
    const digestArg =
      digest === undefined ? "" : ` --members-digest ${Buffer.from(parseMembersDigest(digest) as Uint8Array).toString("hex")}`;
    const extra = `${sync === undefined ? "" : ` --sync ${sync}`}${digestArg}${listenArgs.join("")}${metricsArg}`;
    unit = renderUnit({
      description: `fitb replica ${id}`,
      exec: `${binary} replica --config ${quote(config)} --id ${id}${keyArg} --data ${quote(data)}${extra}`,
      user,
      stateDirectory: true,
      runtimeDirectory: null,
      notify: true,
      // What --ftl's default asks for, so the replica need not restart itself for it (jit.ts).
      environment: ftlEnvironment(FTL_DEFAULT),
      readWritePaths: data === STATE_ROOT || data.startsWith(`${STATE_ROOT}/`) ? [] : [data],
    });
  } else if (kind === "relay") {
    if (args.string("members-digest") !== undefined)
      throw new UsageError("--members-digest is for replica units (a replica joining the group)");
    for (const flag of REPLICA_ONLY_FLAGS) {
      if (args.string(flag) !== undefined) throw new UsageError(`--${flag} is for replica units; a relay has no such flag`);
    }
    const key = args.string("key");
    if (key === undefined) throw new UsageError("relay units need --key FILE (the probe key the relay signs with)");
    const listen = readRelayListen(args);
    const remote = args.boolean("allow-remote") ? " --allow-remote" : "";
    unit = renderUnit({
      description: "fitb relay (netcat gateway)",
      // The socket named, not left to $RUNTIME_DIRECTORY: systemd sets that from version 240
      // on, and a socket-only relay without it would not start.
      exec: `${binary} relay --config ${quote(config)} --key ${quote(noteMissing("key", unitPath("key", key, io), io))} --listen ${listen} --socket ${RELAY_UNIT_SOCKET}${remote}${metricsArg}`,
      user,
      stateDirectory: false,
      // $RUNTIME_DIRECTORY/relay.sock, the relay's default Unix socket for probes.
      runtimeDirectory: RELAY_UNIT_RUNTIME_DIRECTORY,
      notify: false,
      environment: {},
      readWritePaths: [],
    });
  } else {
    throw new UsageError(`KIND must be replica or relay, got ${JSON.stringify(kind)}`);
  }
  io.out(unit);
  return EXIT_OK;
}

/**
 * `--metrics`: HOST:PORT with a port a scraper can be pointed at, 1..65535 (the replica
 * takes 0 too, for a port the system picks, which no scrape configuration can name).
 */
function checkMetricsListen(metrics: string | undefined): void {
  if (metrics === undefined) return;
  const match = METRICS_LISTEN_PATTERN.exec(metrics);
  if (match === null) throw new UsageError(`--metrics: expected HOST:PORT, got ${JSON.stringify(metrics)}`);
  const port = Number(match[2]);
  if (port < PORT_MIN || port > PORT_MAX)
    throw new UsageError(`--metrics: the port must be in ${PORT_MIN}..${PORT_MAX}, got ${JSON.stringify(metrics)}`);
}

/** Every --listen, each a valid HOST:PORT (as the replica and the relay would check it). */
function readListens(args: ParsedArgs): string[] {
  return args.strings("listen").map((text) => {
    const parsed = parseListenAddress(text);
    if (!parsed.ok) throw new UsageError(`--listen: ${parsed.reason}`);
    return unitSafeListen(text);
  });
}

/**
 * A --listen address as it goes into ExecStart: whitespace would split it (refused: no
 * address has any, nor quotes or backslashes), and '%' (a link-local address's zone,
 * fe80::1%eth0) and '$' are escaped, which systemd would read as a specifier and a variable.
 */
function unitSafeListen(text: string): string {
  if (/[\s"'\\]/.test(text)) throw new UsageError(`--listen ${JSON.stringify(text)}: an address has no spaces, quotes or backslashes`);
  return systemdEscape(text);
}

/** `%` and `$` as ExecStart takes them literally (`%%`, `$$`): systemd expands both. */
function systemdEscape(text: string): string {
  return text.replace(/%/g, "%%").replace(/\$/g, "$$$$");
}

/**
 * The relay's --listen: none by default; one address, refused beyond loopback without
 * --allow-remote here, so that the unit is not one whose relay refuses to start.
 */
function readRelayListen(args: ParsedArgs): string {
  const given = args.strings("listen");
  if (given.length > 1) throw new UsageError("--listen: a relay listens on one TCP address at most");
  const text = given[0];
  if (text === undefined || text === RELAY_LISTEN_NONE) return RELAY_UNIT_LISTEN_DEFAULT;
  const parsed = parseListenAddress(text);
  if (!parsed.ok) throw new UsageError(`--listen: ${parsed.reason}; or '${RELAY_LISTEN_NONE}' for no TCP port`);
  const refusal = remoteListenRefusal(text, parsed.address);
  if (refusal !== null && !args.boolean("allow-remote")) throw new UsageError(refusal);
  return unitSafeListen(text);
}

interface UnitSpec {
  readonly description: string;
  readonly exec: string;
  readonly user: string;
  readonly stateDirectory: boolean;
  /** A directory under /run for the unit (RuntimeDirectory=), or null. */
  readonly runtimeDirectory: string | null;
  /** Type=notify with a watchdog (the replica), or Type=simple. */
  readonly notify: boolean;
  /** Environment= of the service. */
  readonly environment: Readonly<Record<string, string>>;
  /** Directories the service writes besides its StateDirectory (ProtectSystem=strict makes the rest read-only). */
  readonly readWritePaths: readonly string[];
}

/** The directives are the ones documented in systemd.service(5) and systemd.exec(5). */
export function renderUnit(spec: UnitSpec): string {
  const lines = [
    "[Unit]",
    `Description=${spec.description}`,
    "After=network-online.target",
    "Wants=network-online.target",
    // A data directory on a mount of its own: the unit starts only once it is mounted, and
    // not at all if the mount failed (instead of making an empty directory under it below).
    ...(spec.readWritePaths.length > 0 ? [`RequiresMountsFor=${spec.readWritePaths.map(quote).join(" ")}`] : []),
    "",
    "[Service]",
    ...(spec.notify ? ["Type=notify", "NotifyAccess=main", `WatchdogSec=${WATCHDOG_SEC}s`, "TimeoutStartSec=infinity"] : ["Type=simple"]),
    ...Object.entries(spec.environment).map(([name, value]) => `Environment=${name}=${value}`),
    // A data directory outside StateDirectory= is made (owned by the service's user, 0700)
    // when it is missing, before the sandbox needs it (ReadWritePaths= of a missing path
    // fails the start); `+` runs it without the sandbox. An existing one is left as it is.
    ...spec.readWritePaths.map(
      (path) =>
        `ExecStartPre=+/bin/sh -c 'test -e "$$1" || install -d -m 0700 -o "$$2" -g "$$2" "$$1"' fitb-make-data ${quote(path)} ${spec.user}`,
    ),
    `ExecStart=${spec.exec}`,
    "Restart=on-failure",
    "RestartSec=1s",
    "KillSignal=SIGTERM",
    "TimeoutStopSec=15s",
    `User=${spec.user}`,
    `Group=${spec.user}`,
    ...(spec.stateDirectory ? ["StateDirectory=fitb", "StateDirectoryMode=0700"] : []),
    ...(spec.runtimeDirectory !== null ? [`RuntimeDirectory=${spec.runtimeDirectory}`, "RuntimeDirectoryMode=0750"] : []),
    ...(spec.readWritePaths.length > 0 ? [`ReadWritePaths=${spec.readWritePaths.map(quote).join(" ")}`] : []),
    "UMask=0077",
    "LimitNOFILE=65536",
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectControlGroups=yes",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces=yes",
    "LockPersonality=yes",
    "RestrictRealtime=yes",
    "SystemCallArchitectures=native",
    "CapabilityBoundingSet=",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectKernelLogs=yes",
    "ProtectProc=invisible",
    "RestrictSUIDSGID=yes",
    "RemoveIPC=yes",
    "PrivateIPC=yes",
    "PrivateMounts=yes",
    // A deny list of groups no part of fitb uses; denied calls fail with EPERM rather than
    // kill the process. (No MemoryDenyWriteExecute=: the JavaScript JIT needs it.)
    "SystemCallFilter=~@clock @cpu-emulation @debug @module @mount @obsolete @raw-io @reboot @swap",
    "SystemCallErrorNumber=EPERM",
    "",
    "[Install]",
    "WantedBy=multi-user.target",
  ];
  return lines.join("\n");
}

/** Quotes a path for ExecStart when it holds spaces (systemd's own quoting rules), with `%` and `$` escaped. */
function quote(path: string): string {
  const escaped = systemdEscape(path);
  return /[\s"'\\]/.test(escaped) ? `"${escaped.replace(/["\\]/g, "\\$&")}"` : escaped;
}
