/**
 * `fitb cluster init`: writes a ready-to-run cluster directory (cluster file and
 * keys for every replica, an admin and a client) for loopback, editable for real hosts.
 */
import { formatAddress, PORT_MAX, type ClusterConfig } from "../../config/cluster.ts";
import { REPLICAS_MAX } from "../../../wire/types.ts";
import { assembleCluster, ClusterInitError, INIT_REPLICAS_MAX, INIT_REPLICAS_MIN, initCluster } from "../../config/init.ts";
import { formatPublicKey, loadSigningKeyFile } from "../../crypto/keys.ts";
import type { ParsedArgs } from "../args.ts";
import type { Command, CommandIo } from "../command.ts";
import { CommandError, EXIT_OK, UsageError } from "../errors.ts";

export const DEFAULT_HOST = "127.0.0.1";
export const DEFAULT_BASE_PORT = 7100;
export const DEFAULT_CLUSTER_NAME = "local";

export const clusterInitCommand: Command = {
  path: ["cluster", "init"],
  summary: "Write a cluster file and keys for a new group of replicas",
  description: [
    "Writes DIR/cluster.toml and a key pair for each replica (DIR/replica-<id>.key),",
    "an admin (DIR/admin.key) and a client (DIR/client.key), each with its .pub.",
    "f is the largest the group tolerates: f = floor((N-1)/3), except where a leader change",
    "(a NEW_VIEW, whose quorums grow with N) would not fit the default 4 MiB frames at that f:",
    `then the largest f that fits (14 replicas get f = 3, 15 get 2, 16 get 1; ${INIT_REPLICAS_MAX} replicas at most).`,
    "Replica i listens on HOST:(BASE_PORT+i). Edit host and port in the file for real hosts;",
    "--host takes one host for every replica or a comma-separated list, one per replica; each",
    "--hosts adds a further address per replica (a second network: multi-homed replicas).",
    "each host then needs only cluster.toml and its own key file.",
    "For production, make each replica's key on its own host instead, so that no one",
    "place ever holds more than one replica key: run 'fitb keygen --out replica-<id>.key'",
    "on host <id> and 'fitb keygen --out admin.key' where the admin works, collect the",
    ".pub files in one directory, and pass it as --keys-from: only cluster.toml is written.",
  ],
  flags: [
    {
      name: "replicas",
      kind: "string",
      valueName: "N",
      required: true,
      description: `Number of replicas, ${INIT_REPLICAS_MIN}..${INIT_REPLICAS_MAX}`,
    },
    { name: "dir", kind: "string", valueName: "DIR", required: true, description: "Directory to write (created if missing)" },
    {
      name: "host",
      kind: "string",
      valueName: "HOST[,HOST...]",
      defaultValue: DEFAULT_HOST,
      description: "Host of every replica, or one per replica (comma-separated, in id order)",
    },
    {
      name: "hosts",
      kind: "string",
      valueName: "HOST[,HOST...]",
      repeated: true,
      description:
        "A further address of every replica, or one per replica (comma-separated, in id order), same port: the file's hosts; repeat for each further network",
    },
    {
      name: "base-port",
      kind: "string",
      valueName: "PORT",
      defaultValue: String(DEFAULT_BASE_PORT),
      description:
        "Port of replica 0; replica i uses PORT+i (its clients), and PORT+1000+i for the other replicas (peer_port), or PORT-1000+i when those would pass 65535",
    },
    {
      name: "peer-base-port",
      kind: "string",
      valueName: "PORT",
      description: "Peer port of replica 0 instead (replica i uses PORT+i); 0: no peer_port, peers and clients share each replica's port",
    },
    { name: "name", kind: "string", valueName: "NAME", defaultValue: DEFAULT_CLUSTER_NAME, description: "Cluster name" },
    { name: "force", kind: "boolean", description: "Replace existing files in DIR" },
    {
      name: "keys-from",
      kind: "string",
      valueName: "PUBDIR",
      description: "Build cluster.toml from replica-<id>.key.pub and admin*.pub in PUBDIR; write no secret keys",
    },
  ],
  positionals: [],
  examples: [
    "fitb cluster init --replicas 4 --dir ./cluster",
    "fitb cluster init --replicas 4 --dir ./prod --name prod --keys-from ./collected-pubs",
    "fitb config check ./cluster/cluster.toml",
  ],
  run: runClusterInit,
};

/** One host for every replica, or a comma-separated list with one per replica. */
function perReplica(flag: string, text: string, replicas: number): string[] {
  const hosts = text.split(",").map((host) => host.trim());
  if (hosts.some((host) => host === "")) throw new UsageError(`--${flag}: an empty host in ${JSON.stringify(text)}`);
  if (hosts.length === 1) return new Array<string>(replicas).fill(hosts[0] as string);
  if (hosts.length !== replicas) {
    throw new UsageError(`--${flag}: expected one host or ${replicas} (one per replica), got ${hosts.length} in ${JSON.stringify(text)}`);
  }
  return hosts;
}

/** --peer-base-port: the peer ports asked for (null: none), checked against the client ports; nothing when absent. */
function peerBasePortOption(args: ParsedArgs, basePort: number, replicas: number): { peerBasePort?: number | null } {
  if (args.string("peer-base-port") === undefined) return {};
  const peerBase = args.requiredInteger("peer-base-port", 0, PORT_MAX);
  if (peerBase === 0) return { peerBasePort: null };
  if (peerBase + replicas - 1 > PORT_MAX) {
    throw new UsageError(`--peer-base-port: ${replicas} replicas need ports ${peerBase}..${peerBase + replicas - 1}, past ${PORT_MAX}`);
  }
  if (peerBase < basePort + replicas && basePort < peerBase + replicas) {
    throw new UsageError(
      `--peer-base-port: ports ${peerBase}..${peerBase + replicas - 1} overlap the client ports ${basePort}..${basePort + replicas - 1}`,
    );
  }
  return { peerBasePort: peerBase };
}

function runClusterInit(args: ParsedArgs, io: CommandIo): number {
  const replicas = args.requiredInteger("replicas", 1, REPLICAS_MAX);
  if (replicas < INIT_REPLICAS_MIN) {
    throw new UsageError(`--replicas: a group needs at least ${INIT_REPLICAS_MIN} replicas (n >= 3f+1 with f >= 1), got ${replicas}`);
  }
  const basePort = args.requiredInteger("base-port", 1, PORT_MAX);
  const preferred = perReplica("host", args.requiredString("host"), replicas);
  const further = args.strings("hosts").map((list) => perReplica("hosts", list, replicas));
  const options = {
    dir: args.requiredString("dir"),
    replicas,
    host: preferred[0] as string,
    addresses: preferred.map((host, id) => ({ host, hosts: further.map((network) => network[id] as string) })),
    basePort,
    ...peerBasePortOption(args, basePort, replicas),
    name: args.requiredString("name"),
    overwrite: args.boolean("force"),
  };
  const keysFrom = args.string("keys-from");
  let result: {
    configPath: string;
    config: ClusterConfig;
    replicaKeyFiles?: readonly string[];
    adminKeyFile?: string;
    clientKeyFile?: string;
  };
  try {
    result = keysFrom === undefined ? initCluster(options) : assembleCluster(options, keysFrom);
  } catch (error) {
    if (error instanceof ClusterInitError && error.reason === "exists")
      throw new CommandError(`${error.message}; pass --force to replace them`);
    if (error instanceof ClusterInitError) throw new CommandError(error.message);
    throw error;
  }
  const { config } = result;
  io.out(`wrote ${result.configPath}: cluster ${config.name}, n=${config.n}, f=${config.f}`);
  const secrets = result.replicaKeyFiles !== undefined;
  for (const replica of config.replicas) {
    io.out(
      `  replica ${replica.id}  ${[replica.host, ...replica.hosts].map((host) => formatAddress(host, replica.port)).join(" ")}  ${replica.publicKeyText}${secrets ? `  ${replica.keyFile}` : ""}`,
    );
  }
  for (const adminKey of config.adminKeys)
    io.out(`  admin      ${formatPublicKey(adminKey)}${result.adminKeyFile === undefined ? "" : `  ${result.adminKeyFile}`}`);
  if (result.clientKeyFile !== undefined)
    io.out(`  client     ${formatPublicKey(loadSigningKeyFile(result.clientKeyFile).key.publicKey)}  ${result.clientKeyFile}`);
  if (secrets) io.out(`this directory holds every replica's secret key: for production, see --keys-from in 'fitb cluster init --help'`);
  io.out(`check it after editing with: fitb config check ${result.configPath}`);
  return EXIT_OK;
}
