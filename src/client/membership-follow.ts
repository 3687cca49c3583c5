/**
 * Following the replica group: the client starts from the cluster file's replicas, keys
 * and f, and moves to the group the replicas have since agreed on (add-replica,
 * remove-replica, rotate-replica-key, set-f take effect as a new epoch,
 * src/core/channels/membership.ts) without a restart.
 *
 * The group is read with the `members` query. A group is taken only when f+1 replicas of
 * the group the client trusts now sent the same epoch, f, members and digest (at least
 * one of them is correct), and only if it is newer than what the client has: a higher
 * epoch, or, before the client has learned any epoch, a group other than the file's
 * (a cluster file written before a change) of at least the file's epoch (never an older
 * group, which f+1 replicas behind the file, one faulty, could agree on). A replica that claims another group alone,
 * or with fewer than f+1, moves nothing; its answer is counted and logged as refused.
 *
 * When: once the client has started, every `membershipRefreshMs`, and soon after a
 * member's session goes down, a member's EPOCH notice names a newer epoch than the one
 * taken (its group just switched: wire/PROTOCOL.md 4.14), or an answer does (at most once
 * per MEMBERSHIP_REFRESH_MIN_MS). One read in flight at a time; each holds at most one
 * answer per member. A notice only asks for a read: one replica, correct or not, can make
 * the client read the group at most once a second, never take a group.
 */
import type { Canonical } from "../../wire/canonical.ts";
import { encodeCanonical } from "../../wire/canonical.ts";
import type { QueryReply } from "../../wire/schemas.ts";
import { type ClusterConfig, replicaById } from "../config/cluster.ts";
import { bytesEqual, toHex } from "../crypto/encoding.ts";
import { vouchQuorum } from "../core/voting/quorum.ts";
import { NoQuorumError } from "./errors.ts";
import { type GroupListing, membersListing, parseMembers, type QueryOutcome, type QueryRule } from "./queries.ts";

/** The soonest a read follows the previous one, whatever asks for it. */
export const MEMBERSHIP_REFRESH_MIN_MS = 1_000;

/** A group f+1 replicas agreed on, with the replicas that said something else (or nothing usable). */
export interface AgreedGroup {
  readonly group: GroupListing;
  /** Replicas whose answer differed from the agreed group, with the epoch they named (null: malformed or refused). */
  readonly dissent: ReadonlyMap<number, number | null>;
}

/** The part of a `members` answer the replicas must agree on: not the pending change, which a replica may not have executed yet. */
function agreedPart(res: Canonical): { key: string; group: GroupListing } | null {
  if (parseMembers(res) === null) return null;
  const listing = membersListing(res);
  const group: GroupListing = { epoch: listing.epoch, f: listing.f, members: listing.members, digest: listing.digest };
  const canonical: Canonical = {
    epoch: group.epoch,
    f: group.f,
    digest: group.digest,
    members: group.members.map((member) => ({
      id: member.id,
      host: member.host,
      port: member.port,
      peerPort: member.peerPort ?? -1,
      key: member.key,
    })),
  };
  return { key: toHex(encodeCanonical(canonical)), group };
}

/**
 * The rule for one read of the group: settles as soon as f+1 replicas (of `members`, the
 * group trusted now) sent the same group; answers from others are ignored; at the
 * deadline, without such a group, a NoQuorumError.
 */
export function membershipRule(f: number, members: ReadonlySet<number>): QueryRule<AgreedGroup> {
  const byReplica = new Map<number, { key: string | null; epoch: number | null }>();
  const groups = new Map<string, { group: GroupListing; replicas: Set<number> }>();
  const agreed = (): QueryOutcome<AgreedGroup> => {
    for (const [key, entry] of groups) {
      if (entry.replicas.size < vouchQuorum(f)) continue;
      const dissent = new Map<number, number | null>();
      for (const [replica, answer] of byReplica) if (answer.key !== key) dissent.set(replica, answer.epoch);
      return { ok: true, value: { group: entry.group, dissent } };
    }
    return null;
  };
  return {
    add(replica: number, reply: QueryReply) {
      if (!members.has(replica) || byReplica.has(replica)) return agreed();
      const part = reply.ok ? agreedPart(reply.res) : null;
      byReplica.set(replica, { key: part?.key ?? null, epoch: part?.group.epoch ?? null });
      if (part !== null) {
        const entry = groups.get(part.key) ?? { group: part.group, replicas: new Set<number>() };
        entry.replicas.add(replica);
        groups.set(part.key, entry);
      }
      return agreed();
    },
    atDeadline(describeMissing) {
      return (
        agreed() ?? {
          ok: false,
          error: new NoQuorumError(
            `no quorum for members: fewer than ${vouchQuorum(f)} replicas of the group sent the same group (${describeMissing()})`,
          ),
        }
      );
    },
  };
}

/** What the client knows about the group it follows. */
export interface FollowedGroup {
  /** The epoch taken last; null while the client runs on the cluster file's group. */
  readonly epoch: number | null;
  /** The members' ids now. */
  readonly ids: readonly number[];
}

/**
 * Whether an agreed group should replace the one the client has: a newer epoch, or the
 * first group learned when it differs from the cluster file's and is not older than the
 * file's epoch `fileEpoch` (a file exported at epoch 3 already is the group of epoch 3; an
 * epoch-0 file may predate every change).
 */
export function isNewer(group: GroupListing, current: FollowedGroup, sameAsFile: boolean, fileEpoch: number): boolean {
  if (current.epoch === null) return !sameAsFile && group.epoch >= fileEpoch;
  return group.epoch > current.epoch;
}

/**
 * Whether an EPOCH notice asks for a read of the group: it comes from a member of the
 * group followed and names a newer epoch than the one taken (any epoch before the first
 * read). It never moves the client by itself.
 */
export function noticeAsksRead(noticeEpoch: number, followedEpoch: number | null, fromMember: boolean): boolean {
  return fromMember && (followedEpoch === null || noticeEpoch > followedEpoch);
}

/** Whether a group is one the client can vote with: n >= 3f+1, distinct ids. */
export function groupProblem(group: GroupListing): string | null {
  const ids = new Set(group.members.map((member) => member.id));
  if (ids.size !== group.members.length) return "a replica id is listed twice";
  if (group.members.length < 3 * group.f + 1) return `n=${group.members.length} is below 3f+1 for f=${group.f}`;
  return null;
}

/** Where a replica is and which key it holds, as the cluster file or the group lists it. */
export interface ListedReplica {
  readonly host: string;
  readonly port: number;
  readonly key: Uint8Array;
}

/** One replica the cluster file lists otherwise than the group: another key, or only one of them lists it. */
export interface FileDifference {
  readonly id: number;
  /** The file's entry; null when the file does not list the replica (added since). */
  readonly file: ListedReplica | null;
  /** The group's member; null when the group does not have it (removed since). */
  readonly group: ListedReplica | null;
}

/** The cluster file against a group f+1 replicas agreed on. */
export interface FileComparison {
  /** The group's epoch. */
  readonly epoch: number;
  readonly fileF: number;
  readonly groupF: number;
  /** The replicas listed otherwise, ascending by id. */
  readonly replicas: readonly FileDifference[];
  /** Same f, ids and keys (sameAsFile). */
  readonly matches: boolean;
}

/**
 * How the cluster file differs from `group`: its f, and each replica whose key differs or
 * that only one of them lists. An address alone is no difference (sameAsFile says why);
 * both are given, for a replica that differs otherwise, to be shown where they differ.
 */
export function compareWithFile(group: GroupListing, config: ClusterConfig): FileComparison {
  const ids = [...new Set([...group.members.map((member) => member.id), ...config.replicas.map((replica) => replica.id)])];
  const replicas: FileDifference[] = [];
  for (const id of ids.sort((a, b) => a - b)) {
    const member = group.members.find((candidate) => candidate.id === id);
    const entry = replicaById(config, id);
    if (member !== undefined && entry !== undefined && bytesEqual(member.key, entry.publicKey)) continue;
    replicas.push({
      id,
      file: entry === undefined ? null : { host: entry.host, port: entry.port, key: entry.publicKey },
      group: member === undefined ? null : { host: member.host, port: member.port, key: member.key },
    });
  }
  return { epoch: group.epoch, fileF: config.f, groupF: group.f, replicas, matches: group.f === config.f && replicas.length === 0 };
}

/**
 * Whether a group is the one the cluster file lists: same f, ids and keys. Addresses do
 * not count: a client may reach a replica by another name or port than the replicas'
 * own file gives (NAT, a public name), as peers may (config/digest.ts).
 */
export function sameAsFile(group: GroupListing, config: ClusterConfig): boolean {
  return compareWithFile(group, config).matches;
}

/** The cluster file's entry for a member with the same id and key, if the file lists it so. */
export function fileEntryOf(config: ClusterConfig, member: { id: number; key: Uint8Array }): ClusterConfig["replicas"][number] | undefined {
  const entry = config.replicas.find((replica) => replica.id === member.id);
  return entry !== undefined && bytesEqual(entry.publicKey, member.key) ? entry : undefined;
}
