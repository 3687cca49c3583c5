/**
 * `fitb config check FILE [--id N [--key KEYFILE]]`: validates a cluster file, printing
 * each problem with the field it concerns. With --id it also checks, on a replica's host,
 * that the replica's secret key file (the one `fitb replica --id N` would read, or the
 * one `--key` names, as given to `fitb replica --key`) is there and matches the key the
 * file lists.
 */
import { formatConfigIssue, loadClusterConfig, replicaById, type ClusterConfig } from "../../config/cluster.ts";
import { REPLICAS_MAX } from "../../../wire/types.ts";
import { bytesEqual } from "../../crypto/encoding.ts";
import { formatPublicKey, loadSigningKeyFile } from "../../crypto/keys.ts";
import type { ParsedArgs } from "../args.ts";
import type { Command, CommandIo } from "../command.ts";
import { CONFIG_DEFAULT_TEXT, resolveConfigPath } from "../defaults.ts";
import { CommandError, EXIT_FAILURE, EXIT_OK, UsageError } from "../errors.ts";

export const configCheckCommand: Command = {
  path: ["config", "check"],
  summary: "Validate a cluster file (and, with --id, a replica's key)",
  description: [
    "Reads FILE and checks every field: names, addresses, keys, limits, unique ids",
    "(gaps allowed: a replica keeps its id after others are removed), and n >= 3f+1.",
    "Prints 'ok: ...' on success, or one line per problem naming the field and the",
    "expected form, and exits 1.",
  ],
  flags: [
    {
      name: "config",
      kind: "string",
      valueName: "FILE",
      description: `The cluster file, when FILE is not given (${CONFIG_DEFAULT_TEXT})`,
    },
    {
      name: "id",
      kind: "string",
      valueName: "N",
      description: "Also check replica N's secret key file exists and matches its listed key",
    },
    {
      name: "key",
      kind: "string",
      valueName: "KEYFILE",
      description: "With --id: check this secret key file (what `fitb replica --key` is given) instead of the cluster file's",
    },
  ],
  positionals: [
    { name: "FILE", description: "The cluster file (cluster.toml); else --config, or where the other commands look", required: false },
  ],
  examples: [
    "fitb config check cluster.toml",
    "fitb config check --config /etc/fitb/cluster.toml",
    "fitb config check /etc/fitb/cluster.toml --id 2",
    "fitb config check /etc/fitb/cluster.toml --id 2 --key /etc/fitb/replica-2.key",
  ],
  run: runConfigCheck,
};

function runConfigCheck(args: ParsedArgs, io: CommandIo): number {
  const given = args.positional("FILE");
  const flag = args.string("config");
  if (given !== undefined && flag !== undefined && given !== flag)
    throw new UsageError(`two cluster files: ${given} and --config ${flag}; give one`);
  const path = given ?? resolveConfigPath(flag);
  const id = args.integer("id", 0, REPLICAS_MAX - 1);
  const keyFile = args.string("key");
  if (keyFile !== undefined && id === undefined) throw new UsageError("--key names replica N's secret key file: give --id N too");
  const result = loadClusterConfig(path);
  if (!result.ok) {
    for (const issue of result.errors) io.err(issue.path === "" ? issue.message : `${path}: ${formatConfigIssue(issue)}`);
    io.err(`${path}: ${result.errors.length} problem${result.errors.length === 1 ? "" : "s"}`);
    return EXIT_FAILURE;
  }
  const { config } = result;
  // The key first: a script that looks for "ok:" must not find one when the check failed.
  const keyOk = id === undefined ? null : checkReplicaKey(config, id, keyFile, io);
  const ids = config.replicas.map((replica) => replica.id);
  const contiguous = ids.every((replicaId, index) => replicaId === index);
  const epoch = config.epoch === 0 ? "" : ` (the group of epoch ${config.epoch})`;
  io.out(
    `ok: cluster ${config.name}, n=${config.n}, f=${config.f}, ${config.replicas.length} replicas${contiguous ? "" : ` (ids ${ids.join(", ")})`}${epoch}`,
  );
  if (keyOk !== null) io.out(keyOk);
  return EXIT_OK;
}

/** Checks replica `id`'s key file against the cluster file; returns the line that says it matches, or throws. */
function checkReplicaKey(config: ClusterConfig, id: number, keyFile: string | undefined, io: CommandIo): string {
  const replica = replicaById(config, id);
  if (replica === undefined) {
    throw new CommandError(
      `--id ${id}: the cluster file lists replicas ${describeIds(config)}, not ${id}: either replica ${id} was removed from the group (fitb admin members shows the group now), or it was added to the running group (admin add-replica) after this file was made: then start it as README, Deployment, "Growing the group", says (it learns the group from the listed replicas)`,
    );
  }
  const path = keyFile ?? replica.keyFile;
  const loaded = loadSigningKeyFile(path);
  for (const warning of loaded.warnings) io.err(`warning: ${warning}`);
  if (!bytesEqual(loaded.key.publicKey, replica.publicKey)) {
    throw new CommandError(
      `${path} holds ${formatPublicKey(loaded.key.publicKey)}, but the cluster file lists for replica ${id} ${replica.publicKeyText}`,
    );
  }
  return `ok: replica ${id} key ${path} matches`;
}

/** "0..3" for contiguous ids, else "0, 2, 3, 4". */
function describeIds(config: ClusterConfig): string {
  const ids = config.replicas.map((replica) => replica.id);
  return ids.every((id, index) => id === index) ? `0..${ids.length - 1}` : ids.join(", ");
}
