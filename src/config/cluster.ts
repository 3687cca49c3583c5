/**
 * The cluster file: which replicas form the group, where they listen, which keys
 * they and the admins hold, and the limits every replica enforces.
 *
 * The file is TOML (parsed by Bun.TOML.parse) and validated with zod. Every error
 * names the field by its path in the file (`replicas[2].key`) and the form it
 * expected, because the reader is an operator editing the file by hand.
 *
 * Layout (snake_case in the file, camelCase in the typed config):
 *   name = "prod-east"            cluster name
 *   f = 1                         replicas that may be faulty at once; n >= 3f+1
 *   admin_keys = ["ed25519:..."]  at least one
 *   client_keys = ["ed25519:..."] optional allow-list of client sessions (empty: any key)
 *   epoch = 3, first_group_digest = "..."
 *                 optional, together: the file lists the group of a later epoch (written by
 *                 `fitb cluster export`), and the digest of the group the cluster started
 *                 with, which replicas compare at the handshake (config/digest.ts)
 *   [[replicas]]  id, host, port, key, optional peer_port, hosts, key_file and data_dir
 *                 (peer_port: the other replicas' listener, apart from clients; hosts:
 *                 further addresses of a multi-homed replica, same ports, tried in order
 *                 after host); ids are unique, in any order, and may have gaps (a replica
 *                 keeps its id across add-replica and remove-replica: 0, 2, 3, 4)
 *   [limits]      optional, each field has a default
 *   [retention]   optional: every channel's retention, fixed for the cluster's life
 * Relative paths (key_file, data_dir) are relative to the directory of the file.
 */
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { isIP, isIPv4 } from "node:net";
import { dirname, resolve } from "node:path";
import { z } from "zod";
import { tomlErrorPosition } from "./toml-position.ts";
import { bytesEqual } from "../crypto/encoding.ts";
import { describeIoError, formatPublicKey, PUBLIC_KEY_FORM, SECRET_KEY_PREFIX, tryParsePublicKey } from "../crypto/keys.ts";
import {
  checkChannelsConfig,
  DEFAULT_CHANNELS_CONFIG,
  REQUEST_BYTES_MAX,
  RETAINED_BYTES_PER_CHANNEL_MAX,
  RETAINED_BYTES_TOTAL_MAX,
  RETAINED_EVENTS_PER_CHANNEL_MAX,
  type ChannelsConfig,
} from "../core/channels/index.ts";
import { DEFAULT_PARAMETERS, quorum } from "../core/ordering/config.ts";
import { SIGNED_VOTE_BYTES_MAX } from "../core/ordering/messages.ts";
import { EVENT_BYTES_MAX, FRAME_BYTES_MAX, REPLICAS_MAX, REQUEST_EVENTS_MAX } from "../../wire/types.ts";

/** The cluster file is a few KiB even for a large group; the bound stops a wrong path (a log, a disk image) from being read whole. */
export const CONFIG_FILE_BYTES_MAX = 1024 * 1024;
export const CLUSTER_NAME_CHARS_MAX = 64;
export const ADMIN_KEYS_MAX = 64;
export const CLIENT_KEYS_MAX = 100_000;
export const PORT_MIN = 1;
export const PORT_MAX = 65_535;
export const HOST_CHARS_MAX = 253;
/** Further addresses one replica may list besides `host` (a management and a data network, say). */
export const REPLICA_HOSTS_MAX = 8;
const PATH_CHARS_MAX = 4096;

/** One bound per limit: [default, least allowed, most allowed]. */
interface LimitBound {
  readonly defaultValue: number;
  readonly min: number;
  readonly max: number;
}

const KIB = 1024;
const MIB = 1024 * KIB;
const _GIB = 1024 * MIB;
const SECONDS_PER_DAY = 86_400;

/**
 * Limits that every replica enforces. Where the wire protocol fixes a maximum
 * (wire/types.ts), a deployment may only lower it; the other maxima are sanity
 * bounds (a typo of three extra zeros is caught), not performance advice.
 */
export const LIMIT_BOUNDS = {
  frame_bytes_max: { defaultValue: FRAME_BYTES_MAX, min: 4 * KIB, max: FRAME_BYTES_MAX },
  event_bytes_max: { defaultValue: 64 * KIB, min: 1, max: EVENT_BYTES_MAX },
  batch_events_max: { defaultValue: 1024, min: 1, max: REQUEST_EVENTS_MAX },
  client_inflight_requests_max: { defaultValue: 64, min: 1, max: 65_536 },
  connection_subscriptions_max: { defaultValue: 256, min: 1, max: 65_536 },
  client_events_per_second_max: { defaultValue: 100_000, min: 1, max: 10_000_000 },
  client_burst_events_max: { defaultValue: 200_000, min: 1, max: 100_000_000 },
} as const satisfies Record<string, LimitBound>;

/** Retention applied to a channel that does not set its own. */
export const RETENTION_BOUNDS = {
  events_max: { defaultValue: 1_000_000, min: 1, max: RETAINED_EVENTS_PER_CHANNEL_MAX },
  bytes_max: { defaultValue: 64 * MIB, min: 1 * KIB, max: RETAINED_BYTES_PER_CHANNEL_MAX },
  age_seconds_max: { defaultValue: 7 * SECONDS_PER_DAY, min: 1, max: 3650 * SECONDS_PER_DAY },
} as const satisfies Record<string, LimitBound>;

export interface ClusterLimits {
  readonly frameBytesMax: number;
  readonly eventBytesMax: number;
  readonly batchEventsMax: number;
  readonly clientInflightRequestsMax: number;
  readonly connectionSubscriptionsMax: number;
  readonly clientEventsPerSecondMax: number;
  readonly clientBurstEventsMax: number;
}

export interface RetentionDefaults {
  readonly eventsMax: number;
  readonly bytesMax: number;
  readonly ageSecondsMax: number;
}

export interface ReplicaEntry {
  readonly id: number;
  /** The preferred address: peers and clients dial it first and go back to it when it works. */
  readonly host: string;
  /** Further addresses of a multi-homed replica, same port, tried in this order after `host`; often empty. */
  readonly hosts: readonly string[];
  readonly port: number;
  /**
   * The port the replica takes its peers on, apart from its clients (separate listener,
   * separate bounds); null: peers and clients share `port`.
   */
  readonly peerPort: number | null;
  /** The replica's ed25519 public key, 32 raw bytes. */
  readonly publicKey: Uint8Array;
  /** The same key in its `ed25519:...` text form, as written in the file. */
  readonly publicKeyText: string;
  /** Absolute path of the replica's secret key file (used only on that replica's host). */
  readonly keyFile: string;
  /** Absolute path of the replica's data directory. */
  readonly dataDir: string;
}

export interface ClusterConfig {
  readonly name: string;
  readonly f: number;
  /** The number of replicas. Ids need not be 0..n-1: look a replica up by id (replicaById), never by index. */
  readonly n: number;
  /** In ascending id order. */
  readonly replicas: readonly ReplicaEntry[];
  /**
   * The membership epoch whose group the file lists: 0 for the group the cluster started
   * with (what `fitb cluster init` writes), more for a file `fitb cluster export` wrote
   * after a change.
   */
  readonly epoch: number;
  /**
   * For a file of a later epoch, the digest of the group the cluster started with (the
   * `group` section of config/digest.ts): what its replicas compare at the handshake with
   * replicas started from older files. Null for a file of epoch 0, whose own group it is.
   */
  readonly firstGroupDigest: Uint8Array | null;
  readonly adminKeys: readonly Uint8Array[];
  readonly clientKeys: readonly Uint8Array[];
  readonly limits: ClusterLimits;
  readonly retention: RetentionDefaults;
  /** The directory relative paths were resolved against. */
  readonly baseDir: string;
}

/** One problem in a cluster file: the field's path (`replicas[2].key`, "" for the file) and what is wrong. */
export interface ConfigIssue {
  readonly path: string;
  readonly message: string;
}

export type ClusterConfigResult =
  | { readonly ok: true; readonly config: ClusterConfig }
  | { readonly ok: false; readonly errors: readonly ConfigIssue[] };

/** Thrown by `requireClusterConfig`; the message lists every issue, one a line. */
export class ClusterConfigError extends Error {
  override name = "ClusterConfigError";
  constructor(
    readonly sourceName: string,
    readonly issues: readonly ConfigIssue[],
  ) {
    super(`${sourceName}: invalid cluster config\n${issues.map((issue) => `  ${formatConfigIssue(issue)}`).join("\n")}`);
  }
}

/** `path: message`, or just the message for file-level problems. */
export function formatConfigIssue(issue: ConfigIssue): string {
  return issue.path === "" ? issue.message : `${issue.path}: ${issue.message}`;
}

// ---------------------------------------------------------------------------
// Schema. Each leaf carries its own expected form so that zod's issues can be
// turned into operator-facing messages without a lookup table.

/** Builds the error callback for a field whose valid form is described by `form`. */
function expected(form: string): (issue: { input?: unknown }) => string {
  return (issue) => (issue.input === undefined ? `missing, expected ${form}` : `expected ${form}, got ${describeValue(issue.input)}`);
}

function describeValue(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value.length > 60 ? `${value.slice(0, 57)}...` : value);
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  if (Array.isArray(value)) return value.length === 0 ? "an empty array" : `an array of ${value.length}`;
  if (value === null) return "null";
  if (typeof value === "object") return "a table or date";
  return typeof value;
}

function boundedInteger(form: string, min: number, max: number) {
  const error = expected(form);
  return z.number({ error }).int({ error }).min(min, { error }).max(max, { error });
}

function limitField(bound: LimitBound) {
  return boundedInteger(`an integer in ${bound.min}..${bound.max}`, bound.min, bound.max).default(bound.defaultValue);
}

const publicKeySchema = z.string({ error: expected(PUBLIC_KEY_FORM) }).transform((text, context) => {
  const parsed = tryParsePublicKey(text);
  if (parsed.ok) return parsed.key;
  context.issues.push({ code: "custom", input: text, message: parsed.reason });
  return z.NEVER;
});

const HOSTNAME_PATTERN = /^(?=.{1,253}$)[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$/;
const DOTTED_NUMBERS_PATTERN = /^[0-9.]+$/;
const HOST_FORM = "a hostname, an IPv4 address or an IPv6 address (without brackets)";

/** Hostnames per RFC 1123, or IP literals; all-numeric names must be real IPv4 addresses. */
function isValidHost(host: string): boolean {
  if (isIP(host) !== 0) return true;
  if (DOTTED_NUMBERS_PATTERN.test(host)) return isIPv4(host);
  return HOSTNAME_PATTERN.test(host);
}

const hostSchema = z
  .string({ error: expected(HOST_FORM) })
  .max(HOST_CHARS_MAX, { error: expected(HOST_FORM) })
  .refine(isValidHost, { error: expected(HOST_FORM) });

/**
 * Why the cluster file would refuse `host` as a replica's address, or null when it takes
 * it. For commands that put an address into the group by other ways than the file
 * (`fitb admin add-replica --host`): an address the file refuses would make every later
 * `fitb cluster export` fail.
 */
export function hostProblem(host: string): string | null {
  const parsed = hostSchema.safeParse(host);
  return parsed.success ? null : (parsed.error.issues[0]?.message ?? `expected ${HOST_FORM}`);
}

const CLUSTER_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const CLUSTER_NAME_FORM = `a name of 1..${CLUSTER_NAME_CHARS_MAX} chars from [A-Za-z0-9._-], starting with a letter or digit`;
const clusterNameSchema = z
  .string({ error: expected(CLUSTER_NAME_FORM) })
  .max(CLUSTER_NAME_CHARS_MAX, { error: expected(CLUSTER_NAME_FORM) })
  .regex(CLUSTER_NAME_PATTERN, { error: expected(CLUSTER_NAME_FORM) });

const PATH_FORM = `a non-empty path of at most ${PATH_CHARS_MAX} chars`;
const pathSchema = z
  .string({ error: expected(PATH_FORM) })
  .min(1, { error: expected(PATH_FORM) })
  .max(PATH_CHARS_MAX, { error: expected(PATH_FORM) });

const replicaSchema = z.strictObject(
  {
    id: boundedInteger(`an integer in 0..${REPLICAS_MAX - 1}`, 0, REPLICAS_MAX - 1),
    host: hostSchema,
    hosts: z
      .array(hostSchema, { error: expected(`an array of at most ${REPLICA_HOSTS_MAX} further addresses, each ${HOST_FORM}`) })
      .max(REPLICA_HOSTS_MAX, { error: expected(`an array of at most ${REPLICA_HOSTS_MAX} further addresses, each ${HOST_FORM}`) })
      .optional(),
    port: boundedInteger(`a port number in ${PORT_MIN}..${PORT_MAX}`, PORT_MIN, PORT_MAX),
    peer_port: boundedInteger(`a port number in ${PORT_MIN}..${PORT_MAX}`, PORT_MIN, PORT_MAX).optional(),
    key: publicKeySchema,
    key_file: pathSchema.optional(),
    data_dir: pathSchema.optional(),
  },
  { error: expected("a [[replicas]] table") },
);

function keyList(what: string, min: number, max: number) {
  const form = `an array of ${min}..${max} ${what} keys, each ${PUBLIC_KEY_FORM}`;
  return z
    .array(publicKeySchema, { error: expected(form) })
    .min(min, { error: expected(form) })
    .max(max, { error: expected(form) });
}

const limitsSchema = z.strictObject(
  {
    frame_bytes_max: limitField(LIMIT_BOUNDS.frame_bytes_max),
    event_bytes_max: limitField(LIMIT_BOUNDS.event_bytes_max),
    batch_events_max: limitField(LIMIT_BOUNDS.batch_events_max),
    client_inflight_requests_max: limitField(LIMIT_BOUNDS.client_inflight_requests_max),
    connection_subscriptions_max: limitField(LIMIT_BOUNDS.connection_subscriptions_max),
    client_events_per_second_max: limitField(LIMIT_BOUNDS.client_events_per_second_max),
    client_burst_events_max: limitField(LIMIT_BOUNDS.client_burst_events_max),
  },
  { error: expected("a [limits] table") },
);

const retentionSchema = z.strictObject(
  {
    events_max: limitField(RETENTION_BOUNDS.events_max),
    bytes_max: limitField(RETENTION_BOUNDS.bytes_max),
    age_seconds_max: limitField(RETENTION_BOUNDS.age_seconds_max),
  },
  { error: expected("a [retention] table") },
);

const REPLICAS_FORM = `an array of 1..${REPLICAS_MAX} [[replicas]] tables`;

/** The digest form of `first_group_digest`: 32 bytes, as `fitb cluster export` writes them. */
const DIGEST_HEX_PATTERN = /^[0-9a-f]{64}$/;
const DIGEST_FORM = "64 lowercase hex digits (the digest `fitb cluster export` writes)";
const digestSchema = z
  .string({ error: expected(DIGEST_FORM) })
  .regex(DIGEST_HEX_PATTERN, { error: expected(DIGEST_FORM) })
  .transform((hex) => Uint8Array.from(Buffer.from(hex, "hex")));

const clusterFileSchema = z.strictObject({
  name: clusterNameSchema,
  epoch: boundedInteger(`an integer in 0..${Number.MAX_SAFE_INTEGER}`, 0, Number.MAX_SAFE_INTEGER).default(0),
  first_group_digest: digestSchema.optional(),
  f: boundedInteger(`an integer in 0..${Math.floor((REPLICAS_MAX - 1) / 3)}`, 0, Math.floor((REPLICAS_MAX - 1) / 3)),
  replicas: z
    .array(replicaSchema, { error: expected(REPLICAS_FORM) })
    .min(1, { error: expected(REPLICAS_FORM) })
    .max(REPLICAS_MAX, { error: expected(REPLICAS_FORM) }),
  admin_keys: keyList("admin", 1, ADMIN_KEYS_MAX),
  client_keys: keyList("client", 0, CLIENT_KEYS_MAX).default([]),
  limits: limitsSchema.default(() => limitsSchema.parse({})),
  retention: retentionSchema.default(() => retentionSchema.parse({})),
});

type ClusterFile = z.output<typeof clusterFileSchema>;

// ---------------------------------------------------------------------------
// Parsing.

export interface ParseClusterConfigOptions {
  /** Directory for relative paths; defaults to the directory of `sourceName`. */
  readonly baseDir?: string;
}

/** Parses and validates cluster file text. `sourceName` names the file in messages. */
export function parseClusterConfig(text: string, sourceName: string, options: ParseClusterConfigOptions = {}): ClusterConfigResult {
  const baseDir = resolve(options.baseDir ?? dirname(sourceName));
  const secret = secretKeyProblem(text, sourceName);
  if (secret !== null) return { ok: false, errors: [{ path: "", message: secret }] };
  let document: unknown;
  try {
    document = Bun.TOML.parse(text);
  } catch (error) {
    return { ok: false, errors: [{ path: "", message: describeTomlError(error, sourceName, text) }] };
  }
  const parsed = clusterFileSchema.safeParse(document);
  if (!parsed.success) return { ok: false, errors: parsed.error.issues.flatMap(issueFromZod) };
  const errors = checkCrossFieldRules(parsed.data);
  if (errors.length > 0) return { ok: false, errors };
  return { ok: true, config: buildConfig(parsed.data, baseDir) };
}

/** A secret key as a key file holds it: the prefix and the 32-byte seed in base64url. */
const SECRET_KEY_TEXT = new RegExp(`${SECRET_KEY_PREFIX}[A-Za-z0-9_-]{43}`);

/**
 * A cluster file names public keys only. Text holding a secret key (a key file given as
 * --config, or a secret pasted where a public key belongs) is refused before it is parsed,
 * naming the line but never quoting it: the TOML and field errors quote what they found,
 * and those lines go to terminals, the journal and CI logs.
 */
function secretKeyProblem(text: string, sourceName: string): string | null {
  const found = SECRET_KEY_TEXT.exec(text);
  if (found === null) return null;
  const at = found.index;
  const line = text.slice(0, at).split("\n").length;
  const keyFile = text.trimStart().startsWith(SECRET_KEY_PREFIX)
    ? ` ${sourceName} looks like a key file (what fitb keygen writes): --config takes the cluster file (cluster.toml), --key the secret key file.`
    : " Put the replica's or client's public key (ed25519:..., in the .pub file beside the key file) there instead.";
  return `${sourceName}: line ${line} holds a secret key (${SECRET_KEY_PREFIX}...), not shown here; a cluster file names public keys only.${keyFile}`;
}

/** Reads and validates a cluster file. I/O problems come back as issues too. */
export function loadClusterConfig(path: string): ClusterConfigResult {
  const read = readConfigFile(path);
  if (!read.ok) return { ok: false, errors: [{ path: "", message: read.message }] };
  return parseClusterConfig(read.text, path);
}

/**
 * The text of the file at `path`, read up to one byte past CONFIG_FILE_BYTES_MAX and no
 * further. The size is not asked of stat(): a device or a FIFO reports 0 however much it
 * holds (`fitb config check /dev/zero` would read forever), while a bounded read stops at
 * the limit whatever the file is, and still reads a pipe (`<(...)`) that fits.
 */
function readConfigFile(path: string): { readonly ok: true; readonly text: string } | { readonly ok: false; readonly message: string } {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (error) {
    return { ok: false, message: `cannot read ${path}: ${describeIoError(error)}` };
  }
  try {
    const buffer = Buffer.alloc(CONFIG_FILE_BYTES_MAX + 1);
    let length = 0;
    while (length < buffer.length) {
      const count = readSync(fd, buffer, length, buffer.length - length, null);
      if (count === 0) break;
      length += count;
    }
    if (length > CONFIG_FILE_BYTES_MAX) {
      // A regular file's size is worth naming; a device or a pipe has none to give.
      const stats = fstatSync(fd);
      const size = stats.isFile() ? `${stats.size} bytes` : `more than ${CONFIG_FILE_BYTES_MAX} bytes`;
      return { ok: false, message: `${path} is ${size}; a cluster file is at most ${CONFIG_FILE_BYTES_MAX}` };
    }
    return { ok: true, text: buffer.toString("utf8", 0, length) };
  } catch (error) {
    return { ok: false, message: `cannot read ${path}: ${describeIoError(error)}` };
  } finally {
    closeSync(fd);
  }
}

/** Like `loadClusterConfig`, for callers that cannot go on without a valid file. */
export function requireClusterConfig(path: string): ClusterConfig {
  const result = loadClusterConfig(path);
  if (!result.ok) throw new ClusterConfigError(path, result.errors);
  return result.config;
}

/**
 * `FILE:LINE:COLUMN: not valid TOML: ...`. Bun's TOML errors carry no position within
 * the TOML text (their `line` is the JavaScript caller's), so toml-position.ts finds it;
 * the offending line is quoted after the message.
 */
function describeTomlError(error: unknown, sourceName: string, text: string): string {
  const message = error instanceof Error ? error.message.replace(/^TOML Parse error: /, "") : String(error);
  const position = tomlErrorPosition(text);
  if (position === null) return `${sourceName}: not valid TOML: ${message}`;
  const line = (text.split("\n")[position.line - 1] ?? "").replace(/\r$/, "");
  return `${sourceName}:${position.line}:${position.column}: not valid TOML: ${message} (line ${position.line}: ${JSON.stringify(line)})`;
}

/** Turns one zod issue into issues with file paths; unknown keys become one issue each. */
function issueFromZod(issue: z.core.$ZodIssue): ConfigIssue[] {
  if (issue.code === "unrecognized_keys") {
    return issue.keys.map((key) => ({
      path: formatPath([...issue.path, key]),
      message: "unknown field (check the spelling; see `fitb cluster init` for a complete file)",
    }));
  }
  return [{ path: formatPath(issue.path), message: issue.message }];
}

/** ["replicas", 2, "key"] -> "replicas[2].key" */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const segment of path) {
    if (typeof segment === "number") out += `[${segment}]`;
    else out += out === "" ? String(segment) : `.${String(segment)}`;
  }
  return out;
}

/** Rules that involve more than one field; run only once every field is well formed. */
function checkCrossFieldRules(file: ClusterFile): ConfigIssue[] {
  return [
    ...checkReplicaCount(file),
    ...checkReplicaIds(file),
    ...checkEpoch(file),
    ...checkReplicaAddresses(file),
    ...checkDistinctKeys(file),
    ...checkLimitRelations(file),
  ];
}

function checkReplicaCount(file: ClusterFile): ConfigIssue[] {
  const n = file.replicas.length;
  const needed = 3 * file.f + 1;
  if (n >= needed) return [];
  return [
    {
      path: "f",
      message: `f = ${file.f} needs n >= 3f+1 = ${needed} replicas, but the file lists n = ${n}; add replicas or lower f to ${Math.floor((n - 1) / 3)}`,
    },
  ];
}

/**
 * Ids must be unique; they need not be 0..n-1. A replica keeps its id for life (add-replica
 * names a new one, remove-replica leaves a gap), and the runtime maps ids to the ordering
 * core's ranks per epoch (src/replica/epochs.ts).
 */
function checkReplicaIds(file: ClusterFile): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const firstIndexOfId = new Map<number, number>();
  file.replicas.forEach((replica, index) => {
    const previous = firstIndexOfId.get(replica.id);
    if (previous !== undefined) {
      issues.push({ path: `replicas[${index}].id`, message: `duplicate id ${replica.id} (also replicas[${previous}].id)` });
      return;
    }
    firstIndexOfId.set(replica.id, index);
  });
  return issues;
}

/** A file of a later epoch names the cluster's first group by its digest; a file of epoch 0 is that group. */
function checkEpoch(file: ClusterFile): ConfigIssue[] {
  if (file.epoch > 0 && file.first_group_digest === undefined) {
    return [
      {
        path: "first_group_digest",
        message: `missing: a file of epoch ${file.epoch} names the digest of the group the cluster started with (write the file with fitb cluster export)`,
      },
    ];
  }
  if (file.epoch === 0 && file.first_group_digest !== undefined) {
    return [
      {
        path: "first_group_digest",
        message: "only for a file of a later epoch (epoch >= 1), and this file sets no epoch: remove it, or set epoch",
      },
    ];
  }
  return [];
}

function checkReplicaAddresses(file: ClusterFile): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const firstIndexOfAddress = new Map<string, number>();
  file.replicas.forEach((replica, index) => {
    const ports: [string, number][] = [["port", replica.port]];
    if (replica.peer_port !== undefined) ports.push(["peer_port", replica.peer_port]);
    for (const [field, port] of ports) {
      const address = formatAddress(replica.host.toLowerCase(), port);
      const previous = firstIndexOfAddress.get(address);
      if (previous !== undefined) {
        issues.push({ path: `replicas[${index}].${field}`, message: `address ${address} is already used by replicas[${previous}]` });
        continue;
      }
      firstIndexOfAddress.set(address, index);
    }
  });
  // A multi-homed replica's further addresses (same port) may be no other address of any replica, nor repeat its own.
  file.replicas.forEach((replica, index) => {
    (replica.hosts ?? []).forEach((host, position) => {
      const address = formatAddress(host.toLowerCase(), replica.port);
      const previous = firstIndexOfAddress.get(address);
      if (previous !== undefined) {
        const whose = previous === index ? "this replica" : `replicas[${previous}]`;
        issues.push({ path: `replicas[${index}].hosts[${position}]`, message: `address ${address} is already used by ${whose}` });
        return;
      }
      firstIndexOfAddress.set(address, index);
    });
  });
  return issues;
}

/** Every address of a replica, the preferred one (`host`) first: what peers and clients dial, in order. */
export function replicaHosts(replica: Pick<ReplicaEntry, "host"> & { readonly hosts?: readonly string[] }): string[] {
  return [replica.host, ...(replica.hosts ?? [])];
}

/**
 * Every replica needs its own key, and no admin key may be a replica key: a
 * compromised replica would otherwise count twice toward a quorum, or hold admin
 * rights on top of its vote.
 */
function checkDistinctKeys(file: ClusterFile): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const seen: { path: string; key: Uint8Array }[] = [];
  const check = (path: string, key: Uint8Array): void => {
    const earlier = seen.find((entry) => bytesEqual(entry.key, key));
    if (earlier !== undefined) issues.push({ path, message: `the same key as ${earlier.path}; every replica and admin needs its own key` });
    else seen.push({ path, key });
  };
  file.replicas.forEach((replica, index) => check(`replicas[${index}].key`, replica.key));
  file.admin_keys.forEach((key, index) => check(`admin_keys[${index}]`, key));
  return issues;
}

function checkLimitRelations(file: ClusterFile): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const limits = file.limits;
  if (limits.event_bytes_max >= limits.frame_bytes_max) {
    issues.push({
      path: "limits.event_bytes_max",
      message: `expected less than limits.frame_bytes_max (${limits.frame_bytes_max}), since an event travels inside a frame; got ${limits.event_bytes_max}`,
    });
  }
  const viewChangeIssue = checkNewViewFits(file);
  if (viewChangeIssue !== null) issues.push(viewChangeIssue);
  const retention = file.retention;
  if (retention.events_max < limits.batch_events_max) {
    issues.push({
      path: "retention.events_max",
      message: `expected at least limits.batch_events_max (${limits.batch_events_max}), so a channel can hold the largest publish; got ${retention.events_max}`,
    });
  }
  const requestBytes = Math.min(limits.frame_bytes_max, REQUEST_BYTES_MAX);
  if (retention.bytes_max < requestBytes) {
    issues.push({
      path: "retention.bytes_max",
      message: `expected at least ${requestBytes} (the largest publish: limits.frame_bytes_max, at most ${REQUEST_BYTES_MAX}), so a channel can hold it; got ${retention.bytes_max}`,
    });
  }
  if (issues.length === 0) {
    // Whatever else the channel state machine refuses, the check refuses too: a file it
    // calls valid must start every replica.
    const problem = checkChannelsConfig(
      channelsConfigFrom(
        { frameBytesMax: limits.frame_bytes_max, eventBytesMax: limits.event_bytes_max, batchEventsMax: limits.batch_events_max },
        { eventsMax: retention.events_max, bytesMax: retention.bytes_max, ageSecondsMax: retention.age_seconds_max },
      ),
    );
    if (problem !== null) issues.push({ path: "retention", message: `the channel limits this file makes are refused: ${problem}` });
  }
  if (limits.client_burst_events_max < limits.batch_events_max) {
    issues.push({
      path: "limits.client_burst_events_max",
      message: `expected at least limits.batch_events_max (${limits.batch_events_max}), or a full batch could never be admitted; got ${limits.client_burst_events_max}`,
    });
  }
  return issues;
}

/**
 * The file's group must be able to change leaders: its NEW_VIEW (newViewBytesBound, for
 * the file's n and f) fits a frame. A file whose n is below 3f+1 is sized as the fewest
 * replicas f needs (checkReplicaCount reports the count itself).
 */
function checkNewViewFits(file: ClusterFile): ConfigIssue | null {
  const frameBytes = file.limits.frame_bytes_max;
  const n = Math.max(file.replicas.length, 3 * file.f + 1);
  const viewChangeBytes = newViewBytesBound(n, file.f);
  if (viewChangeBytes <= frameBytes) return null;
  let fix: string;
  if (viewChangeBytes <= FRAME_BYTES_MAX) {
    fix = `raise limits.frame_bytes_max to at least ${viewChangeBytes}`;
  } else {
    const fLargest = largestViewChangeFOf(n, FRAME_BYTES_MAX);
    fix =
      fLargest === null
        ? `frames are at most ${FRAME_BYTES_MAX} bytes, and no f lets ${n} replicas change leaders over them: use at most ${largestGroupSize(FRAME_BYTES_MAX)} replicas`
        : `frames are at most ${FRAME_BYTES_MAX} bytes, so with ${n} replicas use at most f = ${fLargest}`;
  }
  return {
    path: "limits.frame_bytes_max",
    message:
      `with n = ${n} and f = ${file.f} (quorums of ${quorum(n, file.f, "bft")} replicas), a leader change may need a NEW_VIEW message ` +
      `of up to ${viewChangeBytes} bytes, more than limits.frame_bytes_max (${frameBytes}); ${fix}`,
  };
}

/** Slack for a prepared certificate's own fields (view, seq, digest, names): measured well under it. */
const PREPARED_CERT_FIELDS_BYTES = 64;
/** Slack for a VIEW_CHANGE's own fields (new view, stable seq and digest, replica, signature). */
const VIEW_CHANGE_FIELDS_BYTES = 1024;
/** Slack for a proposal header's fields in O beyond a signed vote. */
const NEW_VIEW_HEADER_EXTRA_BYTES = 64;
/** Slack for the NEW_VIEW's own fields, the peer envelope and the PEER frame around it. */
const NEW_VIEW_FIELDS_BYTES = 4096;

/**
 * Bytes a NEW_VIEW of a group of n replicas tolerating f can reach in the worst case, as
 * the core builds it (view-change.ts buildNewView): Q = ceil((n+f+1)/2) VIEW_CHANGEs (the
 * core's quorum, config.ts `quorum`: 2f+1 only for n = 3f+1, more for a larger n), each
 * carrying its stable checkpoint's proof (Q CHECKPOINTs, up to n when adopted from a
 * peer's STATE_RESPONSE: certs.ts validCheckpointProof) and a prepared certificate (the
 * signed proposal header and Q-1 PREPAREs) for every seq of the log window, plus the new
 * view's proposal headers. Each signed vote counts as SIGNED_VOTE_BYTES_MAX. Measured
 * (test/unit/peer-message-size.test.ts): Q = 9 needs about 3.6 MB, Q = 10 about 4.4 MB,
 * over the largest frame; this bound adds some 5% on top.
 */
export function newViewBytesBound(n: number, f: number): number {
  const window = DEFAULT_PARAMETERS.logWindow;
  const q = quorum(n, f, "bft");
  const certBytes = q * SIGNED_VOTE_BYTES_MAX + PREPARED_CERT_FIELDS_BYTES;
  const viewChangeBytes = window * certBytes + n * SIGNED_VOTE_BYTES_MAX + VIEW_CHANGE_FIELDS_BYTES;
  return q * viewChangeBytes + window * (SIGNED_VOTE_BYTES_MAX + NEW_VIEW_HEADER_EXTRA_BYTES) + NEW_VIEW_FIELDS_BYTES;
}

/**
 * The largest f any group can have whose NEW_VIEW fits frames of `frameBytes`: sized for
 * the fewest replicas that f needs, 3f+1 (a larger group of the same f needs more).
 */
export function largestViewChangeF(frameBytes: number): number {
  let f = 0;
  while (3 * (f + 1) + 1 <= REPLICAS_MAX && newViewBytesBound(3 * (f + 1) + 1, f + 1) <= frameBytes) f++;
  return f;
}

/** The largest f a group of n replicas can have (n >= 3f+1) whose NEW_VIEW fits frames of `frameBytes`; null if none does. */
export function largestViewChangeFOf(n: number, frameBytes: number): number | null {
  let largest: number | null = null;
  for (let f = 0; 3 * f + 1 <= n; f++) if (newViewBytesBound(n, f) <= frameBytes) largest = f;
  return largest;
}

/**
 * The largest group (at most REPLICAS_MAX) whose NEW_VIEW fits frames of `frameBytes`,
 * with f = 0, the smallest quorum for its n; 0 if not even one replica's does. A decided
 * batch's certificate holds at most n COMMITs, so this bounds them in any epoch.
 */
export function largestGroupSize(frameBytes: number): number {
  let n = 0;
  while (n + 1 <= REPLICAS_MAX && newViewBytesBound(n + 1, 0) <= frameBytes) n++;
  return n;
}

/**
 * The channel state machine's configuration a cluster file makes: every replica builds
 * its machine from this, and the config check validates it, so the two cannot disagree.
 */
export function channelsConfigFrom(
  limits: Pick<ClusterLimits, "frameBytesMax" | "eventBytesMax" | "batchEventsMax">,
  retention: { readonly eventsMax: number; readonly bytesMax: number; readonly ageSecondsMax: number },
): ChannelsConfig {
  return {
    ...DEFAULT_CHANNELS_CONFIG,
    // Every channel may fill its retention; the total stays within what one host holds.
    channelsMax: Math.max(1, Math.min(DEFAULT_CHANNELS_CONFIG.channelsMax, Math.floor(RETAINED_BYTES_TOTAL_MAX / retention.bytesMax))),
    eventBytesMax: limits.eventBytesMax,
    requestEventsMax: Math.min(limits.batchEventsMax, REQUEST_EVENTS_MAX),
    requestBytesMax: Math.min(limits.frameBytesMax, REQUEST_BYTES_MAX),
    retention: { events: retention.eventsMax, bytes: retention.bytesMax, ageMs: retention.ageSecondsMax * 1000 },
  };
}

/** Replica `id` of the file, or undefined when the file does not list it (ids need not be 0..n-1). */
export function replicaById(config: Pick<ClusterConfig, "replicas">, id: number): ReplicaEntry | undefined {
  return config.replicas.find((replica) => replica.id === id);
}

/** `host:port`, with brackets around IPv6 literals. */
export function formatAddress(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

/** The default secret key file name of a replica, beside the cluster file. */
export function defaultReplicaKeyFile(id: number): string {
  return `replica-${id}.key`;
}

/** The default data directory of a replica, relative to the cluster file. */
export function defaultReplicaDataDir(id: number): string {
  return `data/replica-${id}`;
}

function buildConfig(file: ClusterFile, baseDir: string): ClusterConfig {
  const replicas = [...file.replicas]
    .sort((a, b) => a.id - b.id)
    .map(
      (replica): ReplicaEntry => ({
        id: replica.id,
        host: replica.host,
        hosts: replica.hosts ?? [],
        port: replica.port,
        peerPort: replica.peer_port ?? null,
        publicKey: replica.key,
        publicKeyText: formatPublicKey(replica.key),
        keyFile: resolve(baseDir, replica.key_file ?? defaultReplicaKeyFile(replica.id)),
        dataDir: resolve(baseDir, replica.data_dir ?? defaultReplicaDataDir(replica.id)),
      }),
    );
  return {
    name: file.name,
    f: file.f,
    n: replicas.length,
    replicas,
    epoch: file.epoch,
    firstGroupDigest: file.first_group_digest ?? null,
    adminKeys: file.admin_keys,
    clientKeys: file.client_keys,
    limits: {
      frameBytesMax: file.limits.frame_bytes_max,
      eventBytesMax: file.limits.event_bytes_max,
      batchEventsMax: file.limits.batch_events_max,
      clientInflightRequestsMax: file.limits.client_inflight_requests_max,
      connectionSubscriptionsMax: file.limits.connection_subscriptions_max,
      clientEventsPerSecondMax: file.limits.client_events_per_second_max,
      clientBurstEventsMax: file.limits.client_burst_events_max,
    },
    retention: {
      eventsMax: file.retention.events_max,
      bytesMax: file.retention.bytes_max,
      ageSecondsMax: file.retention.age_seconds_max,
    },
    baseDir,
  };
}
