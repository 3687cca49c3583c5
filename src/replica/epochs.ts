/**
 * The replica group's membership in the runtime: the cluster file's group as epoch 0
 * (what every replica's channel machine starts from), the `members` query answer, and
 * the log line when a decided change takes effect.
 *
 * The membership itself is replicated state (src/core/channels/membership.ts): changed
 * only by decided admin commands, covered by checkpoints and state transfer.
 */
import { sha256 } from "../crypto/hash.ts";
import { formatPublicKey } from "../crypto/keys.ts";
import type { ClusterConfig } from "../config/cluster.ts";
import { type Membership, membershipValue, type PendingMembership } from "../core/channels/membership.ts";
import { type Canonical, encodeCanonical } from "../../wire/canonical.ts";

/** The cluster file's group: epoch 0, the same at every replica of the cluster. */
export function genesisMembership(config: ClusterConfig): Membership {
  return {
    epoch: 0,
    f: config.f,
    members: config.replicas.map((replica) => ({
      id: replica.id,
      host: replica.host,
      port: replica.port,
      peerPort: replica.peerPort,
      key: replica.publicKey,
    })),
  };
}

/** The digest of a membership: what `fitb admin members` shows every replica agrees on. */
export function membershipDigest(membership: Membership): Uint8Array {
  return sha256(encodeCanonical({ k: "fitb/v1/membership", ...membershipValue(membership) }));
}

/** One member in a `members` answer; `peerPort` only when the replica has one. */
function memberAnswer(member: Membership["members"][number]): { [key: string]: Canonical } {
  return {
    id: member.id,
    host: member.host,
    port: member.port,
    ...(member.peerPort === null ? {} : { peerPort: member.peerPort }),
    key: member.key,
  };
}

function groupAnswer(membership: Membership): { [key: string]: Canonical } {
  return {
    epoch: membership.epoch,
    f: membership.f,
    members: membership.members.map(memberAnswer),
    digest: membershipDigest(membership),
  };
}

/**
 * The `members` query answer (wire/PROTOCOL.md section 8): the current group with its
 * digest, and the decided change waiting for its checkpoint boundary (or null).
 * Replicated state: equal at every replica that executed the same seqs.
 */
export function membersAnswer(current: Membership, pending: PendingMembership | null): Canonical {
  return {
    ...groupAnswer(current),
    pending: pending === null ? null : { ...groupAnswer(pending.next), from: pending.from },
  };
}

/** The fields of the log line that says a new epoch took effect. */
export function epochLogFields(previous: Membership, next: Membership, seq: number): Record<string, unknown> {
  const before = new Map(previous.members.map((member) => [member.id, member]));
  const after = new Map(next.members.map((member) => [member.id, member]));
  const added = next.members.filter((member) => !before.has(member.id)).map((member) => member.id);
  const removed = previous.members.filter((member) => !after.has(member.id)).map((member) => member.id);
  const rekeyed = next.members
    .filter((member) => {
      const old = before.get(member.id);
      return old !== undefined && formatPublicKey(old.key) !== formatPublicKey(member.key);
    })
    .map((member) => member.id);
  return {
    epoch: next.epoch,
    seq,
    n: next.members.length,
    f: next.f,
    members: next.members.map((member) => member.id),
    added,
    removed,
    rekeyed,
  };
}
