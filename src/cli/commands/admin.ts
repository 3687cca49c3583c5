/**
 * `fitb admin --config C --key ADMINKEY <command> ...`: channel administration and
 * cluster status.
 *
 *   create-channel TAG --fault crash|byzantine --order none|total --priority low|normal|high|critical [--public]
 *   destroy-channel TAG [--yes]
 *   set-f F [--yes]  (--yes to lower f)
 *   register TAG --publisher PUBKEY | --subscriber PUBKEY
 *   unregister TAG --publisher PUBKEY | --subscriber PUBKEY
 *   set-quota PUBKEY [--events-per-second N] [--bytes-per-second N] [--subscriptions N]
 *   list-channels [TAG|PATTERN] [--json]
 *   list-quotas [--json]
 *   status [--json]
 *   add-replica | remove-replica | rotate-replica-key | set-f | members (admin-members.ts)
 *
 * Commands that change state are signed by the admin key and go through Byzantine total
 * order at the replicas; they succeed on f+1 matching replies. The command word comes
 * after the common flags in the documented form, so this is one command that reads its
 * subcommand as the first argument, rather than one command per word.
 */
import type { AdminCmd } from "../../../wire/schemas.ts";
import { SYS_TAG_PREFIX } from "../../../wire/types.ts";
import { ClientError } from "../../client/errors.ts";
import { isPattern, matchesPattern, patternProblem } from "../../client/pattern.ts";
import type { FitbClient } from "../../client/client.ts";
import { loadClientSetup } from "../../client/setup.ts";
import { bytesEqual } from "../../crypto/encoding.ts";
import { formatPublicKey, tryParsePublicKey } from "../../crypto/keys.ts";
import type { ParsedArgs } from "../args.ts";
import type { Command, CommandIo } from "../command.ts";
import { CommandError, EXIT_OK, UsageError } from "../errors.ts";
import { checkDestroy, printChannels, printQuotas } from "./admin-channels.ts";
import {
  checkMembershipQuorum,
  checkSetF,
  unorderedCopiesWarning,
  describeMembershipChange,
  MEMBERSHIP_FLAG_SPECS,
  MEMBERSHIP_FLAGS,
  MEMBERSHIP_HELP,
  MEMBERSHIP_SUBCOMMANDS,
  membershipCmd,
  printMembers,
} from "./admin-members.ts";
import { openStatusClient, readStatusReport } from "./status-client.ts";
import { statusJsonReport, statusTable } from "./status-report.ts";
import {
  CONFIG_FLAG,
  keyFlag,
  keyNoteOf,
  openClient,
  readClientFlags,
  requireTag,
  TIMEOUT_FLAGS,
  withClientErrors,
  type ClientFlags,
} from "./pub.ts";

const SUBCOMMANDS = [
  "create-channel",
  "destroy-channel",
  "register",
  "unregister",
  "set-quota",
  "list-channels",
  "list-quotas",
  "status",
  ...MEMBERSHIP_SUBCOMMANDS,
  "members",
] as const;
type Subcommand = (typeof SUBCOMMANDS)[number];

const FAULTS = ["crash", "byzantine"] as const;
const ORDERS = ["none", "total"] as const;
const PRIORITIES = ["low", "normal", "high", "critical"] as const;
const DEFAULT_PRIORITY = "normal";

/** Flags each subcommand accepts besides the common ones; any other is a usage error. */
const SUBCOMMAND_FLAGS: Readonly<Record<Subcommand, readonly string[]>> = {
  "create-channel": ["fault", "order", "priority", "public"],
  "destroy-channel": ["yes"],
  register: ["publisher", "subscriber"],
  unregister: ["publisher", "subscriber"],
  "set-quota": ["events-per-second", "bytes-per-second", "subscriptions"],
  "list-channels": ["json"],
  "list-quotas": ["json"],
  status: ["json"],
  ...MEMBERSHIP_FLAGS,
};
const SPECIFIC_FLAGS = [
  "fault",
  "order",
  "priority",
  "public",
  "publisher",
  "subscriber",
  "json",
  "yes",
  "events-per-second",
  "bytes-per-second",
  "subscriptions",
  "id",
  "host",
  "port",
  "peer-port",
  "replica-key",
] as const;
const BOOLEAN_FLAGS: ReadonlySet<string> = new Set(["public", "json", "yes"]);

export const adminCommand: Command = {
  path: ["admin"],
  summary: "Create, destroy and list channels, register and revoke keys, show cluster status",
  description: [
    "Commands:",
    "  create-channel TAG --fault crash|byzantine --order none|total [--priority P] [--public]",
    `      Creates channel TAG with its CLASS (priority: ${PRIORITIES.join("|")}, default ${DEFAULT_PRIORITY}).`,
    "      --public lets any authenticated client subscribe; publishers must always be registered.",
    "  destroy-channel TAG [--yes]",
    "      Deletes the channel and its stored events; asks for --yes when any replica says it",
    "      holds events (or none says how many).",
    "  register TAG --publisher PUBKEY | --subscriber PUBKEY",
    "      Allows the key (ed25519:...) to publish to, or subscribe to, channel TAG.",
    "  unregister TAG --publisher PUBKEY | --subscriber PUBKEY",
    "      Revokes it: the key's later publishes are refused by every replica; a revoked",
    "      subscriber's live subscriptions to a private channel end.",
    "  set-quota PUBKEY [--events-per-second N] [--bytes-per-second N] [--subscriptions N]",
    "      Limits of one client key at every replica, overriding the cluster's [limits]",
    "      defaults; a limit not given keeps the default; no limit at all removes the quota.",
    "      A refused request or subscription names the limit it met.",
    "  list-channels [TAG] [--json] Channels: CLASS, registered keys, last seq, retention use",
    "                               (--json: one object per channel, with the keys); TAG or a",
    "                               pattern (net.*, net.>) lists only those. LAST-SEQ and",
    "                               RETAINED: on a crash channel the highest any replica gives",
    "                               (order none: the most one replica holds); on a byzantine one",
    "                               the (f+1)-th highest, which f faulty replicas cannot raise",
    "                               above what a correct replica holds",
    "  list-quotas [--json]         Keys with a quota of their own (set-quota) and their limits;",
    "                               'default': the cluster's [limits]; 'none': no bytes/s limit",
    "                               (--json: one object per key, null for a default)",
    "  status [--json]              Every replica: up or why not, view, leader, last decided seq and",
    "                               how far behind; flags a dead or disputed leader, replicas in",
    "                               another view, lagging ones and isolated ones (reaching fewer",
    "                               peers than a quorum needs); warns of a replica that does not",
    "                               reach all its peers, and of a --config file that lists the",
    "                               group otherwise than the replicas (exit unchanged; re-export",
    "                               it with 'fitb cluster export'). Exit 0 ok, 1 degraded,",
    "                               2 no quorum (fewer than 2f+1 replicas answered, or fewer than an",
    "                               ordering quorum answer and reach enough peers)",
    ...MEMBERSHIP_HELP,
    "create-channel, destroy-channel, register, unregister, set-quota and the membership changes must be signed by an admin key of the",
    "cluster file; they are ordered through Byzantine agreement and acknowledged by f+1",
    "matching replies. list-channels and list-quotas take f+1 matching answers; status shows every replica.",
  ],
  flags: [
    CONFIG_FLAG,
    keyFlag("The secret key file to sign with (an admin key for changes)"),
    { name: "fault", kind: "string", valueName: FAULTS.join("|"), description: "create-channel: the fault model" },
    { name: "order", kind: "string", valueName: ORDERS.join("|"), description: "create-channel: the ordering" },
    {
      name: "priority",
      kind: "string",
      valueName: PRIORITIES.join("|"),
      description: `create-channel: the priority (default ${DEFAULT_PRIORITY})`,
    },
    { name: "public", kind: "boolean", description: "create-channel: any authenticated client may subscribe" },
    { name: "publisher", kind: "string", valueName: "PUBKEY", description: "register, unregister: the publisher key" },
    { name: "subscriber", kind: "string", valueName: "PUBKEY", description: "register, unregister: the subscriber key" },
    {
      name: "yes",
      kind: "boolean",
      description:
        "destroy-channel: destroy even though the channel holds events; set-f: lower f (fewer faults tolerated); add-replica, remove-replica: though fewer of the new group's members run than its quorum",
    },
    {
      name: "events-per-second",
      kind: "string",
      valueName: "N",
      description:
        "set-quota: the key's events per second (burst: one second's worth; a larger request passes while the key owes nothing, and the key then owes the rest)",
    },
    {
      name: "bytes-per-second",
      kind: "string",
      valueName: "N",
      description: "set-quota: the key's request bytes per second (burst and larger requests as for events)",
    },
    { name: "subscriptions", kind: "string", valueName: "N", description: "set-quota: the key's open subscriptions at each replica" },
    ...MEMBERSHIP_FLAG_SPECS,
    { name: "json", kind: "boolean", description: "list-channels, list-quotas, status, members: print JSON, one object per line" },
    ...TIMEOUT_FLAGS,
  ],
  positionals: [
    { name: "COMMAND", description: SUBCOMMANDS.join(" | "), required: true },
    {
      name: "TAG",
      description: "The channel (create-channel, destroy-channel, register, unregister); set-quota: the key; set-f: F",
      required: false,
    },
  ],
  examples: [
    "fitb admin --config cluster.toml --key admin.key create-channel sec.alerts --fault byzantine --order total --priority critical",
    "fitb admin --config cluster.toml --key admin.key register sec.alerts --publisher ed25519:...",
    "fitb admin --config cluster.toml --key admin.key unregister sec.alerts --publisher ed25519:...",
    "fitb admin --config cluster.toml --key admin.key status --json",
    "fitb admin --config cluster.toml --key admin.key add-replica --id 4 --host 10.0.0.5 --port 7000 --replica-key ed25519:...",
    "fitb admin --config cluster.toml --key admin.key members --json",
  ],
  run: runAdmin,
};

/** A fully validated invocation: what to do, decided before any file is read. */
type AdminAction =
  | { readonly t: "change"; readonly cmd: AdminCmd; readonly yes: boolean }
  /** `only`: a tag or a pattern (net.*, net.>) the listing is narrowed to; null: every channel. */
  | { readonly t: "list-channels"; readonly json: boolean; readonly only: string | null }
  | { readonly t: "list-quotas"; readonly json: boolean }
  | { readonly t: "members"; readonly json: boolean }
  | { readonly t: "status"; readonly json: boolean };

async function runAdmin(args: ParsedArgs, io: CommandIo): Promise<number> {
  const flags = readClientFlags(args);
  const action = parseAction(args);
  if (action.t === "change") checkAdminKey(flags);
  if (action.t === "status") return runStatus(flags, action.json, io);
  const client = await openClient(flags, io, "admin");
  try {
    return await withClientErrors(() => perform(client, action, io), keyNoteOf(client, flags.keyPath));
  } finally {
    client.close();
  }
}

/** Validates the subcommand, its TAG and its flags; every problem is a UsageError. */
export function parseAction(args: ParsedArgs): AdminAction {
  const word = args.requiredPositional("COMMAND");
  const subcommand = SUBCOMMANDS.find((candidate) => candidate === word);
  if (subcommand === undefined)
    throw new UsageError(`unknown admin command ${JSON.stringify(word)}; expected one of ${SUBCOMMANDS.join(", ")}`);
  checkFlagsFor(subcommand, args);
  const tagText = args.positional("TAG");
  switch (subcommand) {
    case "list-channels": {
      if (tagText === undefined) return { t: subcommand, json: args.boolean("json"), only: null };
      const problem = isPattern(tagText) ? patternProblem(tagText) : null;
      if (problem !== null) throw new UsageError(`TAG: ${problem}`);
      return { t: subcommand, json: args.boolean("json"), only: isPattern(tagText) ? tagText : requireTag(tagText) };
    }
    case "list-quotas":
    case "members":
    case "status":
      if (tagText !== undefined) throw new UsageError(`${subcommand} takes no TAG, got ${JSON.stringify(tagText)}`);
      return { t: subcommand, json: args.boolean("json") };
    case "create-channel":
      return { t: "change", cmd: createChannelCmd(requireChannelTag(requiredTag(tagText, subcommand)), args), yes: false };
    case "destroy-channel":
      return {
        t: "change",
        cmd: { t: "destroy-channel", tag: requireChannelTag(requiredTag(tagText, subcommand)) },
        yes: args.boolean("yes"),
      };
    case "register":
    case "unregister":
      return { t: "change", cmd: keyCmd(subcommand, requireChannelTag(requiredTag(tagText, subcommand)), args), yes: false };
    case "set-quota":
      return { t: "change", cmd: setQuotaCmd(tagText, args), yes: false };
    case "rotate-replica-key":
      return { t: "change", cmd: membershipCmd(subcommand, tagText, args), yes: false };
    case "add-replica":
    case "remove-replica":
    case "set-f":
      return { t: "change", cmd: membershipCmd(subcommand, tagText, args), yes: args.boolean("yes") };
    default: {
      const unreachable: never = subcommand;
      throw new UsageError(`unknown admin command ${String(unreachable)}`);
    }
  }
}

/**
 * A TAG an admin command may create, destroy or register on: a valid tag outside `$sys.`,
 * whose channels the replicas keep themselves (sys-channels.ts) and no admin changes.
 */
function requireChannelTag(text: string): string {
  const tag = requireTag(text);
  if (tag.startsWith(SYS_TAG_PREFIX)) {
    throw new UsageError(
      `TAG: ${tag} is a system channel name: ${SYS_TAG_PREFIX}* channels are reserved to the replicas (subscribe to read them); choose a tag without "$"`,
    );
  }
  return tag;
}

function requiredTag(tag: string | undefined, subcommand: Subcommand): string {
  if (tag === undefined) throw new UsageError(`${subcommand} needs a TAG`);
  return tag;
}

function checkFlagsFor(subcommand: Subcommand, args: ParsedArgs): void {
  const allowed = SUBCOMMAND_FLAGS[subcommand];
  for (const name of SPECIFIC_FLAGS) {
    const given = BOOLEAN_FLAGS.has(name) ? args.boolean(name) : args.string(name) !== undefined;
    if (given && !allowed.includes(name)) throw new UsageError(`--${name} does not apply to ${subcommand}`);
  }
}

function oneOf<T extends string>(flag: string, value: string | undefined, choices: readonly T[], fallback?: T): T {
  if (value === undefined) {
    if (fallback !== undefined) return fallback;
    throw new UsageError(`create-channel needs --${flag} ${choices.join("|")}`);
  }
  const choice = choices.find((candidate) => candidate === value);
  if (choice === undefined) throw new UsageError(`--${flag}: expected one of ${choices.join(", ")}, got ${JSON.stringify(value)}`);
  return choice;
}

function createChannelCmd(tag: string, args: ParsedArgs): AdminCmd {
  return {
    t: "create-channel",
    tag,
    fault: oneOf("fault", args.string("fault"), FAULTS),
    order: oneOf("order", args.string("order"), ORDERS),
    priority: oneOf("priority", args.string("priority"), PRIORITIES, DEFAULT_PRIORITY),
    public: args.boolean("public"),
  };
}

function keyCmd(t: "register" | "unregister", tag: string, args: ParsedArgs): AdminCmd {
  const publisher = args.string("publisher");
  const subscriber = args.string("subscriber");
  if ((publisher === undefined) === (subscriber === undefined)) {
    throw new UsageError(`${t} needs exactly one of --publisher PUBKEY or --subscriber PUBKEY`);
  }
  const role = publisher !== undefined ? "publisher" : "subscriber";
  const text = (publisher ?? subscriber) as string;
  const parsed = tryParsePublicKey(text);
  if (!parsed.ok) throw new UsageError(`--${role}: ${parsed.reason}`);
  return { t, tag, role, key: parsed.key };
}

/** Quota limits are positive whole numbers; this bound keeps them safe integers. */
const QUOTA_LIMIT_MAX = 1_000_000_000_000;

function setQuotaCmd(keyText: string | undefined, args: ParsedArgs): AdminCmd {
  if (keyText === undefined) throw new UsageError("set-quota needs the PUBKEY (ed25519:...) of the client key");
  const parsed = tryParsePublicKey(keyText);
  if (!parsed.ok) throw new UsageError(`PUBKEY: ${parsed.reason}`);
  const eventsPerSecond = args.integer("events-per-second", 1, QUOTA_LIMIT_MAX);
  const bytesPerSecond = args.integer("bytes-per-second", 1, QUOTA_LIMIT_MAX);
  const subscriptions = args.integer("subscriptions", 1, QUOTA_LIMIT_MAX);
  return {
    t: "set-quota",
    key: parsed.key,
    ...(eventsPerSecond === undefined ? {} : { eventsPerSecond }),
    ...(bytesPerSecond === undefined ? {} : { bytesPerSecond }),
    ...(subscriptions === undefined ? {} : { subscriptions }),
  };
}

/** Changes need an admin key; saying so here beats an UNAUTHORIZED from every replica. */
function checkAdminKey(flags: ClientFlags): void {
  const setup = loadClientSetup(flags.configPath, flags.keyPath);
  if (!setup.config.adminKeys.some((key) => bytesEqual(key, setup.key.publicKey))) {
    throw new CommandError(
      `${flags.keyPath} holds ${formatPublicKey(setup.key.publicKey)}, which is not one of the admin_keys in ${flags.configPath}`,
    );
  }
}

async function perform(client: FitbClient, action: AdminAction, io: CommandIo): Promise<number> {
  switch (action.t) {
    case "change":
      if (action.cmd.t === "destroy-channel") await checkDestroy(client, action.cmd.tag, action.yes);
      if (action.cmd.t === "set-f") await checkSetF(client, action.cmd.f, action.yes);
      await checkMembershipQuorum(client, action.cmd, action.yes);
      if (action.cmd.t === "remove-replica") {
        // A warning only: a listing that fails does not stop the removal.
        const channels = await client.listChannels().catch(() => null);
        const warning = channels === null ? null : unorderedCopiesWarning(channels, action.cmd.id);
        if (warning !== null) io.err(`fitb admin: ${warning}`);
      }
      io.out(describeChange(action.cmd, await client.admin(action.cmd).catch((error) => Promise.reject(namingKey(error, action.cmd)))));
      return EXIT_OK;
    case "list-channels": {
      const only = action.only;
      const channels = (await client.listChannels()).filter((channel) => only === null || matchesPattern(only, channel.tag));
      if (only !== null && channels.length === 0) {
        throw new CommandError(isPattern(only) ? `no channel matches ${only}` : `no channel ${only}`);
      }
      await printChannels(client, channels, action.json, io);
      return EXIT_OK;
    }
    case "list-quotas":
      printQuotas(await client.listQuotas(), action.json, io);
      return EXIT_OK;
    case "members":
      printMembers(await client.members(), action.json, io);
      return EXIT_OK;
    case "status":
      throw new Error("status runs without a connected client (runStatus)");
    default: {
      const unreachable: never = action;
      throw new Error(`unknown admin action ${String(unreachable)}`);
    }
  }
}

/** A refused register or unregister names the key it was about (the operator may have pasted the wrong one). */
function namingKey(error: unknown, cmd: AdminCmd): unknown {
  if (!(error instanceof ClientError) || (cmd.t !== "register" && cmd.t !== "unregister")) return error;
  return new CommandError(`${error.message} (${cmd.role} key ${formatPublicKey(cmd.key)})`);
}

function describeChange(cmd: AdminCmd, ack: { replicas: readonly number[]; at: number | null }): string {
  const at = ack.at === null ? "" : `; executed at decided seq ${ack.at}`;
  const by = `(acknowledged by replicas ${[...ack.replicas].sort((a, b) => a - b).join(", ")}${at})`;
  switch (cmd.t) {
    case "create-channel": {
      const access = cmd.public ? "public subscribe" : "registered subscribers only";
      return `ok: created channel ${cmd.tag}: fault=${cmd.fault} order=${cmd.order} priority=${cmd.priority}, ${access} ${by}`;
    }
    case "destroy-channel":
      return `ok: destroyed channel ${cmd.tag} ${by}`;
    case "register":
      return `ok: registered ${formatPublicKey(cmd.key)} as ${cmd.role} of ${cmd.tag} ${by}`;
    case "unregister":
      return `ok: unregistered ${formatPublicKey(cmd.key)} as ${cmd.role} of ${cmd.tag} ${by}`;
    case "set-quota": {
      const limits = [
        cmd.eventsPerSecond === undefined ? null : `${cmd.eventsPerSecond} events/s`,
        cmd.bytesPerSecond === undefined ? null : `${cmd.bytesPerSecond} bytes/s`,
        cmd.subscriptions === undefined ? null : `${cmd.subscriptions} subscriptions`,
      ].filter((limit) => limit !== null);
      const what = limits.length === 0 ? "removed the quota of" : `set the quota of`;
      const detail =
        limits.length === 0 ? " (the cluster's defaults apply)" : `: ${limits.join(", ")} (other limits: the cluster's defaults)`;
      return `ok: ${what} ${formatPublicKey(cmd.key)}${detail} ${by}`;
    }
    case "add-replica":
    case "remove-replica":
    case "rotate-replica-key":
    case "set-f":
      return describeMembershipChange(cmd, by) as string;
    default: {
      const unreachable: never = cmd;
      return String(unreachable);
    }
  }
}

/** `status`: every replica's row, without first waiting for a quorum of sessions (status-client.ts). */
async function runStatus(flags: ClientFlags, json: boolean, io: CommandIo): Promise<number> {
  const client = openStatusClient(flags, io, "admin");
  try {
    const report = await readStatusReport(client, flags.connectTimeoutMs);
    if (json) io.out(JSON.stringify(statusJsonReport(report)));
    else for (const line of statusTable(report)) io.out(line);
    return report.exitCode;
  } finally {
    client.close();
  }
}
