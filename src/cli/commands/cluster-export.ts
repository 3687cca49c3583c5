/**
 * `fitb cluster export --config C --key K [--out FILE]`: the cluster file as the running
 * group is now. The members, their addresses and keys, and f come from the `members`
 * query (f+1 matching answers, like `fitb admin members`); everything else (name, admin
 * and client keys, limits, retention, each kept replica's further addresses, key_file
 * and data_dir) is kept from C. For a new host, or to bring C up to date after
 * add-replica, remove-replica, rotate-replica-key or set-f.
 *
 * The ids are written as the group has them, gaps and all (a replica keeps its id for
 * life). A file of a later epoch than 0 says so (`epoch`) and carries the digest of the
 * group the cluster started with (`first_group_digest`, config/digest.ts), so replicas
 * started from it and from older files accept each other.
 */
import { renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, isAbsolute, relative, resolve } from "node:path";
import type { MembersListing } from "../../client/queries.ts";
import {
  type ClusterConfig,
  defaultReplicaDataDir,
  defaultReplicaKeyFile,
  formatConfigIssue,
  LIMIT_BOUNDS,
  parseClusterConfig,
  replicaById,
  RETENTION_BOUNDS,
} from "../../config/cluster.ts";
import { firstGroupDigest } from "../../config/digest.ts";
import { type ClusterTomlReplica, renderClusterToml } from "../../config/init.ts";
import type { ParsedArgs } from "../args.ts";
import type { Command, CommandIo } from "../command.ts";
import { CommandError, EXIT_OK } from "../errors.ts";
import { CONFIG_FLAG, keyFlag, keyNoteOf, openClient, readClientFlags, TIMEOUT_FLAGS, withClientErrors } from "./pub.ts";

export const clusterExportCommand: Command = {
  path: ["cluster", "export"],
  summary: "Write the cluster file of the running group (members, keys, f) for new hosts",
  description: [
    "Reads the replica group from the running replicas (f+1 matching answers, as 'fitb admin",
    "members' does) and writes a cluster file with its members, their addresses and keys,",
    "and its f. Everything else is kept from --config: name, admin and client keys, limits,",
    "retention, and for replicas still in the group their further addresses (hosts),",
    "key_file and data_dir. A replica added since gets the default key_file and data_dir.",
    "Without --out the file goes to standard output. A change decided but not yet in effect",
    "(see 'fitb admin members') is not in the file; a warning says so. The ids are the",
    "group's, with any gaps removals left. After a change the file names its epoch and the",
    "digest of the group the cluster started with, which the replicas compare when they connect.",
  ],
  flags: [
    CONFIG_FLAG,
    keyFlag("Any key the replicas accept a session from"),
    { name: "out", kind: "string", valueName: "FILE", description: "Write here (replaced in one step) instead of standard output" },
    ...TIMEOUT_FLAGS,
  ],
  positionals: [],
  examples: [
    "fitb cluster export --config cluster.toml --key admin.key --out cluster.toml.new",
    "fitb cluster export --config /etc/fitb/cluster.toml --key client.key > cluster.toml",
  ],
  run: runClusterExport,
};

const camel = (snake: string): string => snake.replace(/_([a-z])/g, (_, letter: string) => letter.toUpperCase());

/** `path` as the written file at `outDir` should name it: relative when under outDir. */
function pathFor(outDir: string, path: string): string {
  const rel = relative(outDir, path);
  return rel.startsWith("..") || isAbsolute(rel) ? path : rel;
}

/**
 * The text of the cluster file for `listing`, keeping what the group does not decide from
 * `config`; `outDir` is the directory the file is for (relative paths are from there).
 */
export function exportClusterToml(config: ClusterConfig, listing: MembersListing, outDir: string): string {
  const replicas: ClusterTomlReplica[] = listing.members.map((member) => {
    const kept = replicaById(config, member.id);
    const sameAddress = kept !== undefined && kept.host === member.host && kept.port === member.port;
    const keyFile = kept?.keyFile;
    const dataDir = kept?.dataDir;
    return {
      id: member.id,
      host: member.host,
      hosts: sameAddress ? kept.hosts : [],
      port: member.port,
      peerPort: member.peerPort,
      publicKey: member.key,
      ...(keyFile === undefined || keyFile === resolve(config.baseDir, defaultReplicaKeyFile(member.id))
        ? {}
        : { keyFile: pathFor(outDir, keyFile) }),
      ...(dataDir === undefined || dataDir === resolve(config.baseDir, defaultReplicaDataDir(member.id))
        ? {}
        : { dataDir: pathFor(outDir, dataDir) }),
    };
  });
  const limits = Object.fromEntries(
    Object.keys(LIMIT_BOUNDS).map((key) => [key, (config.limits as unknown as Record<string, number>)[camel(key)]]),
  );
  const retention = Object.fromEntries(
    Object.keys(RETENTION_BOUNDS).map((key) => [key, (config.retention as unknown as Record<string, number>)[camel(key)]]),
  );
  const header = `# Exported from the running group: epoch ${listing.epoch}, n=${listing.members.length}, f=${listing.f}.\n`;
  return (
    header +
    renderClusterToml({
      name: config.name,
      f: listing.f,
      replicas,
      adminKeys: config.adminKeys,
      clientKeys: config.clientKeys,
      limits,
      retention,
      ...laterEpoch(config, listing.epoch),
    })
  );
}

/**
 * The epoch lines of the file: none for epoch 0, whose group is the one the cluster
 * started with (the file's own group digest is then the first group's), else the epoch
 * and the first group's digest, computed from `config` or kept from it.
 */
function laterEpoch(config: ClusterConfig, epoch: number): { later?: { epoch: number; firstGroupDigest: Uint8Array } } {
  return epoch === 0 ? {} : { later: { epoch, firstGroupDigest: firstGroupDigest(config) } };
}

async function runClusterExport(args: ParsedArgs, io: CommandIo): Promise<number> {
  const flags = readClientFlags(args);
  const out = args.string("out");
  if (out !== undefined && out.length === 0) throw new CommandError("--out: an empty file name");
  const client = await openClient(flags, io, "cluster export");
  let listing: MembersListing;
  try {
    listing = await withClientErrors(() => client.members(), keyNoteOf(client, flags.keyPath));
  } finally {
    client.close();
  }
  const outPath = out === undefined ? null : resolve(out);
  const outDir = outPath === null ? client.config.baseDir : dirname(outPath);
  const text = exportClusterToml(client.config, listing, outDir);
  // What the replicas agreed on must make a file every replica accepts; if not, say so rather than write it.
  const check = parseClusterConfig(text, outPath ?? "(exported)", { baseDir: outDir });
  if (!check.ok) {
    throw new CommandError(
      `the group the replicas report does not make a valid cluster file: ${check.errors.map(formatConfigIssue).join("; ")}`,
    );
  }
  if (listing.pending !== null) {
    io.err(
      `fitb cluster export: warning: a change to epoch ${listing.pending.epoch} takes effect after seq ${listing.pending.from} and is not in this file; export again once it has (fitb admin members)`,
    );
  }
  if (outPath === null) {
    io.out(text.trimEnd());
    return EXIT_OK;
  }
  replaceFile(outPath, text);
  io.err(`wrote ${outPath}: cluster ${client.config.name}, epoch ${listing.epoch}, n=${listing.members.length}, f=${listing.f}`);
  return EXIT_OK;
}

/**
 * Writes `text` to `path` in one step: into a temporary file beside it, renamed over it. On
 * failure (`path` a directory, a full disk) the temporary file is removed, so that a
 * failed export leaves nothing behind, and the error names `path`.
 */
export function replaceFile(path: string, text: string): void {
  const temporary = `${path}.tmp-${process.pid}`;
  try {
    writeFileSync(temporary, text, { mode: 0o644 });
    renameSync(temporary, path);
  } catch (error) {
    try {
      rmSync(temporary, { force: true });
    } catch {
      // Not a file this wrote (a directory of that name): left as it was; the error below says what failed.
    }
    const code = (error as NodeJS.ErrnoException).code;
    const why = code === "ENOENT" ? `the directory ${dirname(path)} does not exist` : (error as Error).message;
    throw new CommandError(`cannot write ${path}: ${why}`);
  }
}
