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
import { type Member, type Membership, membershipValue, type PendingMembership } from "../core/channels/membership.ts";
import { checkConfig, type CoreConfig } from "../core/ordering/config.ts";
import { type Canonical, encodeCanonical } from "../../wire/canonical.ts";

/**
 * The group one ordering core runs with: an epoch's members by rank (ascending id), its
 * f, its cluster id and the checkpoint it starts from. Ranks are what the core calls
 * replicas; ids are what peers, logs and clients call them.
 */
export class EpochView {
  private readonly rankById: Map<number, number>;

  constructor(
    readonly epoch: number,
    readonly f: number,
    readonly members: readonly Member[],
    /** The checkpoint the epoch starts from; null for epoch 0. */
    readonly start: { readonly seq: number; readonly digest: Uint8Array } | null,
    readonly clusterName: string,
  ) {
    this.rankById = new Map(members.map((member, rank) => [member.id, rank]));
  }

  static of(membership: Membership, start: EpochView["start"], clusterName: string): EpochView {
    return new EpochView(membership.epoch, membership.f, membership.members, start, clusterName);
  }

  get n(): number {
    return this.members.length;
  }

  /** Bound into every signature of the epoch's core: the cluster's name, then `/e<epoch>` from epoch 1 on. */
  get clusterId(): string {
    return this.epoch === 0 ? this.clusterName : `${this.clusterName}/e${this.epoch}`;
  }

  /** The core's rank of replica `id`, or -1 when it is not a member of this epoch. */
  rankOf(id: number): number {
    return this.rankById.get(id) ?? -1;
  }

  /** The replica id of a core rank (the rank itself if out of range, for logs). */
  idOf(rank: number): number {
    return this.members[rank]?.id ?? rank;
  }

  keyOfRank(rank: number): Uint8Array | null {
    return this.members[rank]?.key ?? null;
  }

  /** The core's configuration for replica `id` in this epoch (from the cluster's own), or null when it is no member. */
  coreConfig(base: CoreConfig, id: number): CoreConfig | null {
    const rank = this.rankOf(id);
    if (rank < 0) return null;
    const cfg: CoreConfig = {
      ...base,
      id: rank,
      n: this.n,
      f: this.f,
      clusterId: this.clusterId,
      ...(this.start === null ? {} : { epochStart: this.start }),
    };
    checkConfig(cfg);
    return cfg;
  }
}

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
