/**
 * The membership part of `fitb admin`: add-replica, remove-replica, rotate-replica-key,
 * set-f (ordered admin commands; src/core/channels/membership.ts) and `members`, the
 * group f+1 replicas agree on.
 *
 * The replica's public key is given with `--replica-key`, since `--key` is the admin's
 * own secret key file that signs the command.
 */
import type { AdminCmd } from "../../../wire/schemas.ts";
import { REPLICAS_MAX } from "../../../wire/types.ts";
import type { ChannelListing } from "../../client/channel-listing.ts";
import type { GroupListing, MembersListing } from "../../client/queries.ts";
import { hostProblem } from "../../config/cluster.ts";
import { quorum } from "../../core/ordering/config.ts";
import { toHex } from "../../crypto/encoding.ts";
import { formatPublicKey, tryParsePublicKey } from "../../crypto/keys.ts";
import type { FitbClient } from "../../client/client.ts";
import type { ParsedArgs } from "../args.ts";
import type { CommandIo } from "../command.ts";
import { CommandError, UsageError } from "../errors.ts";

export const MEMBERSHIP_SUBCOMMANDS = ["add-replica", "remove-replica", "rotate-replica-key", "set-f"] as const;
export type MembershipSubcommand = (typeof MEMBERSHIP_SUBCOMMANDS)[number];

/** Flags of the membership subcommands (beside the common ones). */
export const MEMBERSHIP_FLAGS = {
  "add-replica": ["id", "host", "port", "peer-port", "replica-key", "yes"],
  "remove-replica": ["id", "yes"],
  "rotate-replica-key": ["id", "replica-key"],
  "set-f": ["yes"],
  members: ["json"],
} as const;

export const MEMBERSHIP_FLAG_SPECS = [
  { name: "id", kind: "string", valueName: "N", description: "add-replica, remove-replica, rotate-replica-key: the replica id" },
  { name: "host", kind: "string", valueName: "HOST", description: "add-replica: the address peers and clients dial" },
  { name: "port", kind: "string", valueName: "PORT", description: "add-replica: the replica's client (and peer) port" },
  { name: "peer-port", kind: "string", valueName: "PORT", description: "add-replica: a separate port for peers" },
  {
    name: "replica-key",
    kind: "string",
    valueName: "PUBKEY",
    description: "add-replica, rotate-replica-key: the replica's public key (ed25519:...)",
  },
] as const;

export const MEMBERSHIP_HELP = [
  "  add-replica --id N --host H --port P [--peer-port P] --replica-key PUBKEY [--yes]",
  "      Adds a replica to the group; it takes effect at the next checkpoint boundary as a new epoch.",
  "  remove-replica --id N [--yes] Removes a replica (refused if n would drop below 3f+1).",
  "      Both ask for --yes when fewer of the resulting group's members run now than its quorum",
  "      (ordering would stop until more start).",
  "  rotate-replica-key --id N --replica-key PUBKEY",
  "      Gives the replica a new key; its old key is worth nothing from the new epoch on.",
  "  set-f F [--yes]              Faults tolerated (refused unless n >= 3F+1). Lowering f (an F below the",
  "                               group's f, or a pending change's) asks for --yes.",
  "  members [--json]             The group f+1 replicas agree on: epoch, f, members, digest, pending change",
];

/** The admin command of a membership subcommand; every problem is a UsageError. */
export function membershipCmd(subcommand: MembershipSubcommand, positional: string | undefined, args: ParsedArgs): AdminCmd {
  if (subcommand === "set-f") {
    if (positional === undefined) throw new UsageError("set-f needs F, the number of faults to tolerate");
    if (!/^[0-9]+$/.test(positional)) throw new UsageError(`F must be a whole number, got ${JSON.stringify(positional)}`);
    const f = Number(positional);
    const fMax = Math.floor((REPLICAS_MAX - 1) / 3);
    if (f > fMax) throw new UsageError(`F must be 0..${fMax}`);
    return { t: "set-f", f };
  }
  if (positional !== undefined) throw new UsageError(`${subcommand} takes no positional argument, got ${JSON.stringify(positional)}`);
  const id = args.integer("id", 0, REPLICAS_MAX - 1);
  if (id === undefined) throw new UsageError(`${subcommand} needs --id N`);
  switch (subcommand) {
    case "remove-replica":
      return { t: "remove-replica", id };
    case "rotate-replica-key":
      return { t: "rotate-replica-key", id, key: replicaKey(args) };
    case "add-replica": {
      const host = args.string("host");
      if (host === undefined || host.length === 0) throw new UsageError("add-replica needs --host HOST");
      // The cluster file's rule, checked here: the replicas check the shape only (membership.ts,
      // a replicated rule that stays as it is), and an address the file refuses (10.0.1.256)
      // would make every later `fitb cluster export` fail.
      const problem = hostProblem(host);
      if (problem !== null) throw new UsageError(`--host: ${problem}`);
      const port = args.integer("port", 1, 65_535);
      if (port === undefined) throw new UsageError("add-replica needs --port PORT");
      const peerPort = args.integer("peer-port", 1, 65_535);
      // The replicas would refuse it (membership.ts): the new replica could not open both listeners.
      if (peerPort === port) {
        throw new UsageError(`--peer-port ${peerPort} is --port: peers need a port of their own (omit --peer-port to let them use --port)`);
      }
      return { t: "add-replica", id, host, port, ...(peerPort === undefined ? {} : { peerPort }), key: replicaKey(args) };
    }
    default: {
      const unreachable: never = subcommand;
      throw new UsageError(`unknown membership command ${String(unreachable)}`);
    }
  }
}

/**
 * `set-f F` without --yes: refused when F is below the group's f (the one f+1 replicas
 * agree on) or below a pending change's, which set-f would undo: fewer faults tolerated
 * is a loss the operator confirms, as destroy-channel's deleted events are. Raising f or
 * keeping it asks nothing (the replicas refuse an F equal to the group's).
 */
export async function checkSetF(client: Pick<FitbClient, "members">, f: number, yes: boolean): Promise<void> {
  if (yes) return;
  const refusal = lowerFRefusal(await client.members(), f);
  if (refusal !== null) throw new CommandError(refusal);
}

/** Why `set-f F` needs --yes with this group listing: what is lost and how to go on; null when F lowers nothing. */
export function lowerFRefusal(listing: Pick<MembersListing, "f" | "pending">, f: number): string | null {
  const current = listing.f;
  const pending = listing.pending?.f ?? null;
  const faults = (count: number): string => `${count} ${count === 1 ? "fault" : "faults"}`;
  const proceed = `Run again with --yes to lower f (set-f ${f} --yes)`;
  // Clients accept what f+1 matching replicas say (core/voting/quorum.ts vouchQuorum).
  const trust = (from: number): string =>
    `clients would accept what ${f + 1} matching ${f === 0 ? "replica says" : "replicas say"} instead of ${from + 1}`;
  if (f < current) {
    const later = pending !== null && pending !== current ? `; a pending change sets f = ${pending}` : "";
    return `set-f ${f} lowers f: the group would tolerate ${faults(f)} instead of ${current} (${trust(current)}${later}). ${proceed}`;
  }
  if (pending !== null && f < pending) {
    return (
      `set-f ${f} lowers the f of the pending change (effective after seq ${listing.pending?.from}): the group would tolerate ` +
      `${faults(f)} instead of ${pending} once it takes effect (${trust(pending)}). ${proceed}`
    );
  }
  return null;
}

/** How long the check below waits for sessions to members that are up but not connected yet. */
const RUNNING_WAIT_MS = 3_000;

/**
 * `add-replica` and `remove-replica` without --yes: refused when the group they make (on
 * top of a pending change) would have fewer of its members running now than its quorum,
 * so that ordering would stop until more of them start: a removal while the replicas added
 * before it have not started, say. "Running" is what this client reaches.
 */
export async function checkMembershipQuorum(
  client: Pick<FitbClient, "members" | "readyReplicas" | "waitForSessions">,
  cmd: AdminCmd,
  yes: boolean,
): Promise<void> {
  if (yes || (cmd.t !== "add-replica" && cmd.t !== "remove-replica")) return;
  const listing = await client.members();
  const refusal = quorumRefusal(listing, cmd, await runningMembers(client, listing, cmd));
  if (refusal !== null) throw new CommandError(refusal);
}

/**
 * The members this client reaches: the current group's by their sessions; replicas added
 * since (a pending change's, the one being added) by whether their client port takes a
 * TCP connection, since the client opens no session to a replica not yet in the group.
 */
async function runningMembers(
  client: Pick<FitbClient, "readyReplicas" | "waitForSessions">,
  listing: MembersListing,
  cmd: Extract<AdminCmd, { t: "add-replica" } | { t: "remove-replica" }>,
): Promise<number[]> {
  await client.waitForSessions(listing.members.length, 1, RUNNING_WAIT_MS).catch(() => undefined);
  const current = new Set(listing.members.map((member) => member.id));
  const newer = [
    ...(listing.pending?.members ?? []).filter((member) => !current.has(member.id)),
    ...(cmd.t === "add-replica" ? [{ id: cmd.id, host: cmd.host, port: cmd.port }] : []),
  ];
  const probed = await Promise.all(newer.map(async (member) => ((await listens(member.host, member.port)) ? [member.id] : [])));
  return [...client.readyReplicas(), ...probed.flat()];
}

/** Whether something takes a TCP connection at host:port within RUNNING_WAIT_MS; closed at once. */
async function listens(host: string, port: number): Promise<boolean> {
  const attempt = Bun.connect({ hostname: host, port, socket: { data: () => undefined } }).then(
    (socket) => {
      socket.end();
      return true;
    },
    () => false,
  );
  const timeout = new Promise<boolean>((resolve) => setTimeout(() => resolve(false), RUNNING_WAIT_MS).unref());
  return Promise.race([attempt, timeout]);
}

/** Why the change needs --yes, given the replicas running now; null when enough of the new group's members run. */
export function quorumRefusal(
  listing: Pick<MembersListing, "f" | "members" | "pending">,
  cmd: Extract<AdminCmd, { t: "add-replica" } | { t: "remove-replica" }>,
  running: readonly number[],
): string | null {
  const base = listing.pending ?? listing;
  const ids = new Set(base.members.map((member) => member.id));
  if (cmd.t === "remove-replica") ids.delete(cmd.id);
  else ids.add(cmd.id);
  const members = [...ids].sort((a, b) => a - b);
  const needed = quorum(members.length, base.f, "bft");
  const up = members.filter((id) => running.includes(id));
  if (up.length >= needed) return null;
  const down = members.filter((id) => !running.includes(id));
  const change = cmd.t === "remove-replica" ? `removing replica ${cmd.id}` : `adding replica ${cmd.id}`;
  const onPending = listing.pending === null ? "" : ` (on top of the pending change)`;
  return (
    `${change}${onPending} makes a group of n=${members.length}, f=${base.f}, whose quorum is ${needed} replicas, ` +
    `and ${up.length} of its members run now (${up.join(", ") || "none"}; not reached: ${down.join(", ")}): ` +
    `ordering would stop until ${needed - up.length} more of them start. Start them first, or run again with --yes`
  );
}

/**
 * What `remove-replica` says on standard error when unordered channels hold events: a
 * replica's copies of them are not passed to the replicas that stay (src/README.md §5),
 * and each such event is kept only by the replicas it was published to, so removing its
 * holders one after another, as replacing hosts does, loses it. Null when none holds any.
 */
export function unorderedCopiesWarning(
  channels: readonly Pick<ChannelListing, "tag" | "fault" | "order" | "reportedEventsMax">[],
  id: number,
): string | null {
  const held = channels.filter((channel) => channel.order === "none" && (channel.reportedEventsMax ?? 0) > 0);
  if (held.length === 0) return null;
  const shown = held.slice(0, UNORDERED_SHOWN_MAX).map((channel) => `${channel.tag} (${channel.fault}/none)`);
  const more = held.length > UNORDERED_SHOWN_MAX ? ` and ${held.length - UNORDERED_SHOWN_MAX} more` : "";
  return (
    `warning: the events of unordered channels (${shown.join(", ")}${more}) that replica ${id} stores are not copied to the ` +
    "replicas that stay: each such event is kept only by the replicas it was published to (f+1 for crash/none by default), so " +
    "removing those replicas one after another, as replacing hosts does, loses it. Between such removals, wait until " +
    "retention has dropped what only the removed replicas held, or publish what must outlive them on total-order channels " +
    '(README, Deployment, "Replacing a host")'
  );
}

/** Unordered channels named in that warning; the rest are counted. */
const UNORDERED_SHOWN_MAX = 5;

function replicaKey(args: ParsedArgs): Uint8Array {
  const text = args.string("replica-key");
  if (text === undefined) throw new UsageError("needs --replica-key PUBKEY (ed25519:...), the replica's public key");
  const parsed = tryParsePublicKey(text);
  if (!parsed.ok) throw new UsageError(`--replica-key: ${parsed.reason}`);
  return parsed.key;
}

/** What `fitb admin` prints once a membership command was acknowledged. */
export function describeMembershipChange(cmd: AdminCmd, by: string): string | null {
  const when = "; it takes effect at the next checkpoint boundary as a new epoch (see admin members)";
  switch (cmd.t) {
    case "add-replica":
      return `ok: adding replica ${cmd.id} at ${cmd.host}:${cmd.port} with key ${formatPublicKey(cmd.key)}${when} ${by}`;
    case "remove-replica":
      return `ok: removing replica ${cmd.id}${when} ${by}`;
    case "rotate-replica-key":
      return `ok: replica ${cmd.id}'s key becomes ${formatPublicKey(cmd.key)}${when} ${by}`;
    case "set-f":
      return `ok: f becomes ${cmd.f}${when} ${by}`;
    default:
      return null;
  }
}

function groupJson(group: GroupListing): Record<string, unknown> {
  return {
    epoch: group.epoch,
    f: group.f,
    n: group.members.length,
    digest: toHex(group.digest),
    members: group.members.map((member) => ({
      id: member.id,
      host: member.host,
      port: member.port,
      peerPort: member.peerPort,
      key: formatPublicKey(member.key),
    })),
  };
}

/** `admin members`: one JSON object, or a table per group. */
export function printMembers(listing: MembersListing, json: boolean, io: CommandIo): void {
  if (json) {
    io.out(
      JSON.stringify({
        ...groupJson(listing),
        pending: listing.pending === null ? null : { ...groupJson(listing.pending), from: listing.pending.from },
      }),
    );
    return;
  }
  const table = (group: GroupListing): void => {
    io.out(`epoch ${group.epoch}: n=${group.members.length} f=${group.f} digest ${toHex(group.digest)}`);
    for (const member of group.members) {
      const peer = member.peerPort === null ? "" : ` (peers: ${member.peerPort})`;
      io.out(`  replica ${member.id}  ${member.host}:${member.port}${peer}  ${formatPublicKey(member.key)}`);
    }
  };
  table(listing);
  if (listing.pending === null) return;
  io.out(`pending, effective after seq ${listing.pending.from}:`);
  table(listing.pending);
}
