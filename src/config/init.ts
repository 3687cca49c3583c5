/**
 * Writes a cluster directory. Two ways:
 * - everything in one place (a local or test cluster): the cluster file and a key pair
 *   for every replica, one admin and one client;
 * - from public keys only (production): each replica host made its own key with
 *   `fitb keygen` and sent its `.pub`; the cluster file is assembled from those, so no
 *   host, and not the admin's workstation either, ever holds more than one replica's
 *   secret key.
 * The comments in the file say what to change for real hosts.
 */
import { existsSync, mkdirSync, readdirSync, renameSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { formatPublicKey, loadPublicKeyFile, publicKeyPathFor, SigningKey, writeKeyPairFiles } from "../crypto/keys.ts";
import {
  ClusterConfigError,
  defaultReplicaDataDir,
  defaultReplicaKeyFile,
  LIMIT_BOUNDS,
  largestViewChangeFOf,
  parseClusterConfig,
  PORT_MAX,
  RETENTION_BOUNDS,
  type ClusterConfig,
} from "./cluster.ts";
import { FRAME_BYTES_MAX, REPLICAS_MAX } from "../../wire/types.ts";

/** Byzantine tolerance needs n >= 3f+1 with f >= 1, so the smallest useful group is 4. */
export const INIT_REPLICAS_MIN = 4;
export const CLUSTER_FILE_NAME = "cluster.toml";
export const ADMIN_KEY_FILE_NAME = "admin.key";
export const CLIENT_KEY_FILE_NAME = "client.key";
/** The directory holds every replica's secret key, so only its owner may enter it. */
const CLUSTER_DIR_MODE = 0o700;
const CLUSTER_FILE_MODE = 0o644;

export interface ClusterInitOptions {
  readonly dir: string;
  readonly replicas: number;
  readonly host: string;
  readonly basePort: number;
  /**
   * Per replica (by id), its preferred host and further addresses (multi-homed replicas);
   * when absent every replica is on `host` with no further address.
   */
  readonly addresses?: readonly { readonly host: string; readonly hosts: readonly string[] }[];
  /**
   * The first peer port (replica i takes peers on it + i, apart from its clients); null:
   * no peer_port is written and peers share the client port. Default: peerBasePortFor.
   */
  readonly peerBasePort?: number | null;
  readonly name: string;
  /** Replace existing files; without it any existing target file is an error. */
  readonly overwrite: boolean;
}

export interface ClusterInitResult {
  readonly configPath: string;
  readonly config: ClusterConfig;
  readonly replicaKeyFiles: readonly string[];
  readonly adminKeyFile: string;
  readonly clientKeyFile: string;
}

/** Why `initCluster` refused before writing anything. */
export class ClusterInitError extends Error {
  override name = "ClusterInitError";
  constructor(
    readonly reason: "invalid-options" | "exists",
    message: string,
  ) {
    super(message);
  }
}

/** The largest fault count n replicas tolerate: f = floor((n - 1) / 3). */
/** How far above the client ports `cluster init` puts the peer ports by default (below, if they would not fit). */
export const PEER_PORT_OFFSET = 1000;

/** The first peer port `cluster init` writes for replicas on basePort.. (options.peerBasePort when given). */
export function peerBasePortFor(options: ClusterInitOptions): number | null {
  if (options.peerBasePort !== undefined) return options.peerBasePort;
  const above = options.basePort + PEER_PORT_OFFSET;
  return above + options.replicas - 1 <= PORT_MAX ? above : options.basePort - PEER_PORT_OFFSET;
}

function replicaPorts(options: ClusterInitOptions, id: number): { port: number; peerPort: number | null } {
  const peerBase = peerBasePortFor(options);
  return { port: options.basePort + id, peerPort: peerBase === null ? null : peerBase + id };
}

/**
 * The f a new cluster of `replicas` gets: the largest with n >= 3f+1 whose leader change
 * fits the default frames (a NEW_VIEW carries quorums that grow with n: 14 and 15 replicas
 * get f = 3, not 4), so that the file written passes its own check.
 */
export function faultToleranceFor(replicas: number): number {
  const byCount = Math.floor((replicas - 1) / 3);
  // No f at all fits (null): 0, which initCluster refuses.
  return Math.min(byCount, largestViewChangeFOf(replicas, FRAME_BYTES_MAX) ?? 0);
}

/** The largest group `cluster init` writes: the largest n whose leader change fits the default frames at some f >= 1 (16). */
export const INIT_REPLICAS_MAX = Array.from({ length: REPLICAS_MAX }, (_, i) => i + 1)
  .filter((n) => faultToleranceFor(n) >= 1)
  .reduce((largest, n) => Math.max(largest, n), 0);

/**
 * Generates keys, runs the cluster file text through the validator, then writes the
 * directory, so a file this function writes is known to be accepted.
 */
export function initCluster(options: ClusterInitOptions): ClusterInitResult {
  checkInitOptions(options);
  const dir = resolve(options.dir);
  const configPath = join(dir, CLUSTER_FILE_NAME);
  const replicaKeyFiles = Array.from({ length: options.replicas }, (_, id) => join(dir, defaultReplicaKeyFile(id)));
  const adminKeyFile = join(dir, ADMIN_KEY_FILE_NAME);
  const clientKeyFile = join(dir, CLIENT_KEY_FILE_NAME);
  const secretFiles = [...replicaKeyFiles, adminKeyFile, clientKeyFile];
  if (!options.overwrite) refuseExisting([configPath, ...secretFiles.flatMap((path) => [path, publicKeyPathFor(path)])]);

  const replicaKeys = replicaKeyFiles.map(() => SigningKey.generate());
  const adminKey = SigningKey.generate();
  const clientKey = SigningKey.generate();
  const text = renderClusterToml({
    name: options.name,
    f: faultToleranceFor(options.replicas),
    replicas: replicaKeys.map((key, id) => ({ id, ...addressesOf(options, id), ...replicaPorts(options, id), publicKey: key.publicKey })),
    adminKeys: [adminKey.publicKey],
    clientKeys: [],
  });
  // Validated before anything is written, so a bad --name or --host leaves no files behind.
  const config = readBack(text, configPath);

  if (!existsSync(dir)) mkdirSync(dir, { recursive: true, mode: CLUSTER_DIR_MODE });
  replicaKeyFiles.forEach((path, id) => writeKeyPairFiles(path, replicaKeys[id]!, { overwrite: true }));
  writeKeyPairFiles(adminKeyFile, adminKey, { overwrite: true });
  writeKeyPairFiles(clientKeyFile, clientKey, { overwrite: true });
  writeClusterFile(configPath, text);
  return { configPath, config, replicaKeyFiles, adminKeyFile, clientKeyFile };
}

/**
 * The cluster file from public keys alone: replica-<id>.key.pub for every replica and
 * admin*.pub (at least one) in `keysDir`. Writes nothing but the cluster file.
 */
export function assembleCluster(
  options: ClusterInitOptions,
  keysDir: string,
): { readonly configPath: string; readonly config: ClusterConfig } {
  checkInitOptions(options);
  const dir = resolve(options.dir);
  const configPath = join(dir, CLUSTER_FILE_NAME);
  if (!options.overwrite) refuseExisting([configPath]);
  const replicaKeys = Array.from({ length: options.replicas }, (_, id) => {
    const path = join(keysDir, `${defaultReplicaKeyFile(id)}.pub`);
    if (!existsSync(path)) {
      throw new ClusterInitError(
        "invalid-options",
        `${path} is missing: on replica ${id}'s host run 'fitb keygen --out ${defaultReplicaKeyFile(id)}' and copy its .pub here`,
      );
    }
    return loadPublicKeyFile(path);
  });
  const adminFiles = existsSync(keysDir)
    ? readdirSync(keysDir)
        .filter((name) => name.startsWith("admin") && name.endsWith(".pub"))
        .sort()
    : [];
  if (adminFiles.length === 0) {
    throw new ClusterInitError(
      "invalid-options",
      `no admin key in ${keysDir}: run 'fitb keygen --out admin.key' where the admin works and copy admin.key.pub here`,
    );
  }
  const adminKeys = adminFiles.map((name) => loadPublicKeyFile(join(keysDir, name)));
  const text = renderClusterToml({
    name: options.name,
    f: faultToleranceFor(options.replicas),
    replicas: replicaKeys.map((publicKey, id) => ({ id, ...addressesOf(options, id), ...replicaPorts(options, id), publicKey })),
    adminKeys,
    clientKeys: [],
  });
  const config = readBack(text, configPath);
  if (!existsSync(dir)) mkdirSync(dir, { recursive: true, mode: CLUSTER_DIR_MODE });
  writeClusterFile(configPath, text);
  return { configPath, config };
}

/** The cluster file goes last and by rename: its presence says the directory is complete. */
function writeClusterFile(configPath: string, text: string): void {
  const temporary = `${configPath}.tmp`;
  writeFileSync(temporary, text, { mode: CLUSTER_FILE_MODE });
  renameSync(temporary, configPath);
}

function addressesOf(options: ClusterInitOptions, id: number): { host: string; hosts: readonly string[] } {
  return options.addresses?.[id] ?? { host: options.host, hosts: [] };
}

function checkInitOptions(options: ClusterInitOptions): void {
  if (options.addresses !== undefined && options.addresses.length !== options.replicas) {
    throw new ClusterInitError(
      "invalid-options",
      `addresses are given for ${options.addresses.length} replicas, but there are ${options.replicas}`,
    );
  }
  if (!Number.isSafeInteger(options.replicas) || options.replicas < INIT_REPLICAS_MIN || options.replicas > REPLICAS_MAX) {
    throw new ClusterInitError(
      "invalid-options",
      `replicas must be an integer in ${INIT_REPLICAS_MIN}..${INIT_REPLICAS_MAX} (n >= 3f+1 with f >= 1), got ${options.replicas}`,
    );
  }
  if (faultToleranceFor(options.replicas) < 1) {
    throw new ClusterInitError(
      "invalid-options",
      `${options.replicas} replicas could not change leaders over the default frames at any f >= 1 (a NEW_VIEW carries quorums that grow with n): use at most ${INIT_REPLICAS_MAX} replicas`,
    );
  }
  const lastPort = options.basePort + options.replicas - 1;
  if (!Number.isSafeInteger(options.basePort) || options.basePort < 1 || lastPort > PORT_MAX) {
    throw new ClusterInitError(
      "invalid-options",
      `base port must leave room for ${options.replicas} consecutive ports within 1..${PORT_MAX}, got ${options.basePort}`,
    );
  }
  const peerBase = peerBasePortFor(options);
  if (peerBase === null) return;
  if (!Number.isSafeInteger(peerBase) || peerBase < 1 || peerBase + options.replicas - 1 > PORT_MAX) {
    throw new ClusterInitError(
      "invalid-options",
      `peer base port must leave room for ${options.replicas} consecutive ports within 1..${PORT_MAX}, got ${peerBase}`,
    );
  }
  if (peerBase <= lastPort && peerBase + options.replicas - 1 >= options.basePort) {
    throw new ClusterInitError("invalid-options", `peer ports ${peerBase}.. overlap the client ports ${options.basePort}..${lastPort}`);
  }
}

function refuseExisting(paths: readonly string[]): void {
  const existing = paths.filter((path) => existsSync(path));
  if (existing.length === 0) return;
  const shown = existing.length > 3 ? `${existing.slice(0, 3).join(", ")} and ${existing.length - 3} more` : existing.join(", ");
  throw new ClusterInitError("exists", `refusing to overwrite existing files: ${shown}`);
}

/** Validates the generated text; options the validator rejects (a bad name or host) surface here. */
function readBack(text: string, configPath: string): ClusterConfig {
  const result = parseClusterConfig(text, configPath);
  if (!result.ok) throw new ClusterConfigError(configPath, result.errors);
  return result.config;
}

export interface ClusterTomlReplica {
  readonly id: number;
  readonly host: string;
  /** Further addresses (multi-homed); none when absent or empty. */
  readonly hosts?: readonly string[];
  readonly port: number;
  readonly peerPort?: number | null;
  readonly publicKey: Uint8Array;
  /** key_file and data_dir as written (relative to the file); commented-out defaults when absent. */
  readonly keyFile?: string;
  readonly dataDir?: string;
}

export interface ClusterTomlSpec {
  readonly name: string;
  readonly f: number;
  readonly replicas: readonly ClusterTomlReplica[];
  readonly adminKeys: readonly Uint8Array[];
  readonly clientKeys: readonly Uint8Array[];
  /** [limits] and [retention] values by their file names; defaults where absent. */
  readonly limits?: Partial<Record<keyof typeof LIMIT_BOUNDS, number>>;
  readonly retention?: Partial<Record<keyof typeof RETENTION_BOUNDS, number>>;
  /** For a file of a later epoch (`fitb cluster export`): the epoch and the digest of the cluster's first group. */
  readonly later?: { readonly epoch: number; readonly firstGroupDigest: Uint8Array };
}

/** The text of a commented cluster file with every limit spelled out at its default. */
export function renderClusterToml(spec: ClusterTomlSpec): string {
  const n = spec.replicas.length;
  const lines: string[] = [
    "# fitb cluster file.",
    "#",
    "# Every replica host needs this file and its own replica-<id>.key; nothing else.",
    "# Check it after editing with: fitb config check cluster.toml",
    "",
    "# A name for this group, shown in logs and status.",
    `name = ${tomlString(spec.name)}`,
    "",
    ...laterEpochLines(spec.later),
    `# How many replicas may be faulty (crashed or compromised) at the same time.`,
    `# The group needs n >= 3f+1 replicas; this file lists n = ${n}.`,
    `f = ${spec.f}`,
    "",
    "# Keys allowed to administer channels (create, destroy, register). At least one.",
    `admin_keys = [${spec.adminKeys.map((key) => tomlString(formatPublicKey(key))).join(", ")}]`,
    "",
    "# Client keys that may connect (probes, relays, consoles), besides the admin keys.",
    "# Empty: any key may open a session (it may publish only to channels it is",
    "# registered for, and subscribe to public channels and those it is registered for).",
    "# Listed: only these keys and the admin keys may connect at all.",
    `client_keys = [${spec.clientKeys.map((key) => tomlString(formatPublicKey(key))).join(", ")}]`,
    "",
    "# The replicas, each with its own id: unique, and kept for life (add-replica gives a",
    "# new replica a new id, remove-replica leaves a gap). For real hosts, change host",
    "# (a hostname or an IP address the other replicas and the clients can reach), port",
    "# (clients) and peer_port (the other replicas; without it they share port); keep the keys.",
    "# A replica on several networks lists its further addresses (same ports) in",
    '# hosts = ["10.1.0.1", ...]: peers and clients dial host first, move to the next',
    "# address when one fails or goes silent, and come back to host when it works again.",
    "# Optional per replica, relative to this file:",
    '#   key_file = "replica-<id>.key"   the replica\'s secret key (only on its own host)',
    '#   data_dir = "data/replica-<id>"  where the replica keeps its log and checkpoints',
  ];
  for (const replica of spec.replicas) {
    lines.push(
      "",
      "[[replicas]]",
      `id = ${replica.id}`,
      `host = ${tomlString(replica.host)}`,
      ...((replica.hosts ?? []).length === 0 ? [] : [`hosts = [${(replica.hosts ?? []).map(tomlString).join(", ")}]`]),
      `port = ${replica.port}`,
      ...(replica.peerPort === undefined || replica.peerPort === null ? [] : [`peer_port = ${replica.peerPort}`]),
      `key = ${tomlString(formatPublicKey(replica.publicKey))}`,
      replica.keyFile === undefined
        ? `# key_file = ${tomlString(defaultReplicaKeyFile(replica.id))}`
        : `key_file = ${tomlString(replica.keyFile)}`,
      replica.dataDir === undefined
        ? `# data_dir = ${tomlString(defaultReplicaDataDir(replica.id))}`
        : `data_dir = ${tomlString(replica.dataDir)}`,
    );
  }
  lines.push("", "# Limits every replica enforces. Each line may be removed to use its default.", "[limits]");
  lines.push(...limitLines(LIMIT_BOUNDS, LIMIT_COMMENTS, spec.limits));
  lines.push(
    "",
    "# Retention of every channel (fixed for the cluster's life: a data directory keeps the values it was written under).",
    "[retention]",
  );
  lines.push(...limitLines(RETENTION_BOUNDS, RETENTION_COMMENTS, spec.retention));
  return `${lines.join("\n")}\n`;
}

/** The `epoch` and `first_group_digest` lines of a file of a later epoch; none for epoch 0. */
function laterEpochLines(later: ClusterTomlSpec["later"]): string[] {
  if (later === undefined || later.epoch === 0) return [];
  return [
    `# This file lists the group of membership epoch ${later.epoch}, not the one the cluster`,
    "# started with. The replicas compare the digest of that first group when they connect,",
    "# and a replica whose data directory holds no later epoch asks the running group for its",
    "# state (as a new one does) rather than start this group from scratch.",
    `epoch = ${later.epoch}`,
    `first_group_digest = ${tomlString(Buffer.from(later.firstGroupDigest).toString("hex"))}`,
    "",
  ];
}

const LIMIT_COMMENTS: Record<keyof typeof LIMIT_BOUNDS, string> = {
  frame_bytes_max: "largest frame accepted on any connection",
  event_bytes_max: "largest single event",
  batch_events_max: "most events in one publish request",
  client_inflight_requests_max: "requests a client may have unacknowledged",
  connection_subscriptions_max: "subscriptions open on one connection",
  client_events_per_second_max: "sustained publish rate per client",
  client_burst_events_max: "burst above the sustained rate per client",
};

const RETENTION_COMMENTS: Record<keyof typeof RETENTION_BOUNDS, string> = {
  events_max: "events kept per channel",
  bytes_max: "bytes kept per channel",
  age_seconds_max: "age after which events are dropped",
};

function limitLines<K extends string>(
  bounds: Record<K, { readonly defaultValue: number; readonly min: number; readonly max: number }>,
  comments: Record<K, string>,
  values: Partial<Record<K, number>> = {},
): string[] {
  return (Object.keys(bounds) as K[]).map((key) => {
    const bound = bounds[key];
    return `${key} = ${values[key] ?? bound.defaultValue}  # ${comments[key]} (${bound.min}..${bound.max})`;
  });
}

/** A TOML basic string; JSON string syntax is a subset TOML accepts for printable text. */
function tomlString(text: string): string {
  return JSON.stringify(text);
}
