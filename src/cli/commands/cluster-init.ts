/**
 * `fitb cluster init`: writes a ready-to-run cluster directory (cluster file and
 * keys for every replica, an admin and a client) for loopback, editable for real hosts.
 */
import { formatAddress, PORT_MAX, REPLICAS_MAX } from "../../config/cluster.ts";
import { ClusterInitError, initCluster, INIT_REPLICAS_MIN } from "../../config/init.ts";
import { formatPublicKey } from "../../crypto/keys.ts";
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
    "f is the largest the group tolerates: f = floor((N-1)/3).",
    "Replica i listens on HOST:(BASE_PORT+i). Edit host and port in the file for real hosts;",
    "each host then needs only cluster.toml and its own key file.",
  ],
  flags: [
    { name: "replicas", kind: "string", valueName: "N", required: true, description: `Number of replicas, ${INIT_REPLICAS_MIN}..${REPLICAS_MAX}` },
    { name: "dir", kind: "string", valueName: "DIR", required: true, description: "Directory to write (created if missing)" },
    { name: "host", kind: "string", valueName: "HOST", defaultValue: DEFAULT_HOST, description: "Host of every replica" },
    { name: "base-port", kind: "string", valueName: "PORT", defaultValue: String(DEFAULT_BASE_PORT), description: "Port of replica 0; replica i uses PORT+i" },
    { name: "name", kind: "string", valueName: "NAME", defaultValue: DEFAULT_CLUSTER_NAME, description: "Cluster name" },
    { name: "force", kind: "boolean", description: "Replace existing files in DIR" },
  ],
  positionals: [],
  examples: ["fitb cluster init --replicas 4 --dir ./cluster", "fitb config check ./cluster/cluster.toml"],
  run: runClusterInit,
};

function runClusterInit(args: ParsedArgs, io: CommandIo): number {
  const replicas = args.requiredInteger("replicas", 1, REPLICAS_MAX);
  if (replicas < INIT_REPLICAS_MIN) {
    throw new UsageError(`--replicas: a group needs at least ${INIT_REPLICAS_MIN} replicas (n >= 3f+1 with f >= 1), got ${replicas}`);
  }
  const basePort = args.requiredInteger("base-port", 1, PORT_MAX);
  let result;
  try {
    result = initCluster({
      dir: args.requiredString("dir"),
      replicas,
      host: args.requiredString("host"),
      basePort,
      name: args.requiredString("name"),
      overwrite: args.boolean("force"),
    });
  } catch (error) {
    if (error instanceof ClusterInitError && error.reason === "exists") throw new CommandError(`${error.message}; pass --force to replace them`);
    throw error;
  }
  const { config } = result;
  io.out(`wrote ${result.configPath}: cluster ${config.name}, n=${config.n}, f=${config.f}`);
  for (const replica of config.replicas) {
    io.out(`  replica ${replica.id}  ${formatAddress(replica.host, replica.port)}  ${replica.publicKeyText}  ${replica.keyFile}`);
  }
  io.out(`  admin      ${formatPublicKey(config.adminKeys[0]!)}  ${result.adminKeyFile}`);
  io.out(`  client     ${formatPublicKey(config.clientKeys[0]!)}  ${result.clientKeyFile}`);
  io.out(`check it after editing with: fitb config check ${result.configPath}`);
  return EXIT_OK;
}
