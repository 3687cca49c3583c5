/**
 * The replica group as replicated state: who the replicas are (id, address, key), how
 * many faults the group tolerates (f), and its epoch. It starts as the cluster file's
 * group (epoch 0) and changes only through the ordered admin commands add-replica,
 * remove-replica, rotate-replica-key and set-f, applied in decided order like every other
 * admin command, so every correct replica holds the same membership at every seq.
 *
 * A decided change does not act at once: it becomes *pending* and takes effect at the
 * next checkpoint boundary, the first seq `c` that is a multiple of the checkpoint
 * interval K with `c >= s` for the seq `s` that decided it. Executing `c` promotes the
 * pending membership to current with the epoch one higher (`endOfDecision`), before the
 * checkpoint digest at `c` is taken, so that checkpoint (signed by the old epoch's
 * members) certifies the new membership, and seqs after `c` are ordered by the new epoch
 * (src/core/ordering/PROTOCOL.md §13). Several changes decided before the same boundary
 * make one epoch together.
 *
 * Every command is checked against the membership it would produce, deterministically:
 * ids are unique and in 0..REPLICAS_MAX-1, keys and addresses are unique (a new key also
 * against the current epoch's group, whose keys the peer mesh still accepts while the
 * change is pending), a replica's peer port is not its client port, the group keeps
 * n >= 3f+1, and (given the frame limit, the same at every replica) the NEW_VIEW a leader
 * change of the new group (its n and f) may need fits one peer frame. A refused command
 * changes nothing and says why.
 *
 * Every check depends only on replicated state and the cluster file's fixed limits. A
 * replica executing its history again (a restart replays the decided seqs after its last
 * snapshot) judges every command the way it was judged the first time only if the rules
 * are the same: a rule added later refuses on replay what was taken before, and that
 * replica's state then differs from the group's. So a new rule may only refuse what could
 * never work (a group that cannot change leaders, a replica that cannot listen) or a
 * change whose pending window is unsafe, and a record stored under the old rules is still
 * read (readMembership).
 *
 * Pure: no clock, no I/O; the decided seq and K come in as arguments.
 */
import { REPLICAS_MAX } from "../../../wire/types.ts";
import { bytesEqual } from "../../../wire/bytes.ts";
import type { Canonical } from "../../../wire/canonical.ts";
import { PUBLIC_KEY_BYTES } from "./constants.ts";

/** One replica of an epoch. `id` is its stable name; its place in the ordering core is its rank (`coreIndexOf`). */
export type Member = {
  readonly id: number;
  /** The address peers and clients dial first. */
  readonly host: string;
  /** The client port (and the peer port when `peerPort` is null). */
  readonly port: number;
  readonly peerPort: number | null;
  /** Ed25519 public key, 32 bytes. */
  readonly key: Uint8Array;
};

/** A group of replicas: members in ascending id order, n = members.length >= 3f+1. */
export type Membership = {
  readonly epoch: number;
  readonly f: number;
  readonly members: readonly Member[];
};

/** A decided change waiting for its checkpoint boundary: `next` becomes current once seq `from` has executed. */
export type PendingMembership = { readonly next: Membership; readonly from: number };

export type AddReplicaCmd = {
  readonly t: "add-replica";
  readonly id: number;
  readonly host: string;
  readonly port: number;
  readonly peerPort?: number;
  readonly key: Uint8Array;
};
export type RemoveReplicaCmd = { readonly t: "remove-replica"; readonly id: number };
export type RotateReplicaKeyCmd = { readonly t: "rotate-replica-key"; readonly id: number; readonly key: Uint8Array };
export type SetFCmd = { readonly t: "set-f"; readonly f: number };
export type MembershipCmd = AddReplicaCmd | RemoveReplicaCmd | RotateReplicaKeyCmd | SetFCmd;

export const MEMBERSHIP_CMDS: readonly MembershipCmd["t"][] = ["add-replica", "remove-replica", "rotate-replica-key", "set-f"];

/** What a decided membership command answers (the same bytes at every replica). */
export type MembershipOk = {
  readonly ok: true;
  readonly cmd: MembershipCmd["t"];
  /** The epoch the change belongs to. */
  readonly epoch: number;
  /** It takes effect once this seq has executed (a checkpoint boundary). */
  readonly from: number;
};
export type MembershipRefusal = { readonly ok: false; readonly code: "bad-request"; readonly reason: string };
export type MembershipResult = MembershipOk | MembershipRefusal;

/** Host names: what a cluster file allows (hostname, IPv4, IPv6 without brackets), checked by shape only. */
const HOST_PATTERN = /^[A-Za-z0-9:][A-Za-z0-9.:-]{0,252}$/;
const PORT_MAX = 65_535;

function refuse(reason: string): MembershipRefusal {
  return { ok: false, code: "bad-request", reason };
}

function isIntIn(value: unknown, min: number, max: number): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= min && value <= max;
}

function isKey(value: unknown): value is Uint8Array {
  return value instanceof Uint8Array && value.length === PUBLIC_KEY_BYTES;
}

/**
 * Why a membership is not a valid group, or null: every rule, including those added since
 * groups were first replicated (peerPortProblem). The runtime checks the cluster file's
 * with it too.
 */
export function checkMembership(membership: Membership): string | null {
  return recordedMembershipProblem(membership) ?? peerPortProblem(membership);
}

/**
 * A replica whose peer port is its client port cannot start: it would open two listeners
 * on one port. Not in recordedMembershipProblem: a group that took such a replica before
 * this rule keeps loading its snapshots (and may still remove it).
 */
function peerPortProblem(membership: Membership): string | null {
  const clash = membership.members.find((member) => member.peerPort === member.port);
  return clash === undefined ? null : `replica ${clash.id}: its peer port is its client port (${clash.port})`;
}

/** Why a membership is not a valid group by the rules every stored record was written under, or null. */
function recordedMembershipProblem(membership: Membership): string | null {
  const { members, f, epoch } = membership;
  if (!isIntIn(epoch, 0, Number.MAX_SAFE_INTEGER)) return "epoch must be a non-negative integer";
  if (!isIntIn(f, 0, Math.floor((REPLICAS_MAX - 1) / 3))) return "f out of range";
  if (members.length < 1 || members.length > REPLICAS_MAX) return `n must be 1..${REPLICAS_MAX}`;
  if (members.length < 3 * f + 1) return `n = ${members.length} is below 3f+1 = ${3 * f + 1}`;
  for (let i = 0; i < members.length; i++) {
    const member = members[i] as Member;
    if (!isIntIn(member.id, 0, REPLICAS_MAX - 1)) return `replica id must be 0..${REPLICAS_MAX - 1}`;
    if (i > 0 && member.id <= (members[i - 1] as Member).id) return "replica ids must be unique and ascending";
    if (typeof member.host !== "string" || !HOST_PATTERN.test(member.host)) return `replica ${member.id}: bad host`;
    if (!isIntIn(member.port, 1, PORT_MAX)) return `replica ${member.id}: bad port`;
    if (member.peerPort !== null && !isIntIn(member.peerPort, 1, PORT_MAX)) return `replica ${member.id}: bad peer port`;
    if (!isKey(member.key)) return `replica ${member.id}: key must be ${PUBLIC_KEY_BYTES} bytes`;
    for (let j = 0; j < i; j++) {
      const other = members[j] as Member;
      if (bytesEqual(other.key, member.key)) return `replicas ${other.id} and ${member.id} have the same key`;
      const addresses = (m: Member): string[] => [
        addressOf(m.host, m.port),
        ...(m.peerPort === null ? [] : [addressOf(m.host, m.peerPort)]),
      ];
      const theirs = addresses(other);
      const clash = addresses(member).find((address) => theirs.includes(address));
      if (clash !== undefined) return `replicas ${other.id} and ${member.id} both use ${clash}`;
    }
  }
  return null;
}

function addressOf(host: string, port: number): string {
  return `${host.toLowerCase()}/${port}`;
}

/** The rank of replica `id` in the epoch: its index in the ordering core (leader(v) = v mod n over ranks); -1 if not a member. */
export function coreIndexOf(membership: Membership, id: number): number {
  return membership.members.findIndex((member) => member.id === id);
}

export function memberOf(membership: Membership, id: number): Member | null {
  return membership.members.find((member) => member.id === id) ?? null;
}

/** The first checkpoint boundary at or after `seq`. */
export function boundaryAfter(seq: number, checkpointInterval: number): number {
  return Math.ceil(seq / checkpointInterval) * checkpointInterval;
}

/**
 * The membership of a replica group and its pending change. `record()` is what the
 * snapshot and digest carry; it is null while the group is still the cluster file's
 * epoch 0 with nothing pending, so a group that never changed keeps the snapshot bytes
 * and digest it had before membership was replicated.
 */
/** Why add-replica and rotate-replica-key are refused by a registry built without `admitsNewReplicas`. */
export const NOT_ADMITTED =
  "this group does not admit a replica or key that the cluster file does not name " +
  "(its peers dial and check only the cluster file's replicas); to add a replica or change a key, stop the replicas, " +
  "give every host the new cluster.toml and start them again (README: Changing the replica group)";

/**
 * The largest peer frame and the worst-case NEW_VIEW size of a group of n replicas
 * tolerating f (the runtime passes its cluster's frame_bytes_max and newViewBytesBound,
 * the figures `fitb config check` holds the cluster file's n and f to). A NEW_VIEW over
 * the frame is never delivered, so such a group could not change leaders.
 */
export type ViewChangeBound = {
  readonly frameBytesMax: number;
  /** The worst-case NEW_VIEW of a group of n replicas tolerating f (its quorum grows with both). */
  readonly newViewBytes: (n: number, f: number) => number;
};

/** Why a NEW_VIEW over the frame limit is refused, and why the limit cannot simply be raised. */
const FRAME_LIMIT_FIXED =
  "(limits.frame_bytes_max is fixed for a cluster's life: replicas executing their history again " +
  "under another bound would judge this command differently; a larger bound needs a new cluster, every data directory replaced)";

export class MembershipRegistry {
  private currentValue: Membership;
  private pendingValue: PendingMembership | null = null;

  constructor(
    /** The cluster file's group (epoch 0): the same at every replica. */
    readonly genesis: Membership,
    /** K of the ordering core: changes take effect at multiples of it. */
    readonly checkpointInterval: number,
    /**
     * Whether add-replica and rotate-replica-key are taken: the replica runtime takes them
     * (its peer mesh follows the membership, and a new replica joins by state transfer:
     * src/cli/join.ts); a registry built without it refuses them with NOT_ADMITTED.
     */
    readonly admitsNewReplicas = false,
    /**
     * Whether set-f may raise f above the cluster file's. Only safe where clients vote
     * with the group's f rather than the file's: the replica runtime admits it (clients,
     * relays and their subscriptions follow the group, src/client/membership-follow.ts);
     * a registry built without admitsNewReplicas refuses it.
     */
    readonly admitsLargerF = admitsNewReplicas,
    /** When given, set-f and add-replica are refused for a group whose NEW_VIEW would not fit a frame. */
    readonly viewChange: ViewChangeBound | null = null,
  ) {
    const problem = checkMembership(genesis);
    if (problem !== null) throw new RangeError(`invalid membership: ${problem}`);
    if (genesis.epoch !== 0) throw new RangeError("the cluster file's membership is epoch 0");
    if (!isIntIn(checkpointInterval, 1, Number.MAX_SAFE_INTEGER)) throw new RangeError("checkpointInterval must be positive");
    this.currentValue = genesis;
  }

  get current(): Membership {
    return this.currentValue;
  }

  get pending(): PendingMembership | null {
    return this.pendingValue;
  }

  /** Applies a decided membership command executed at `decidedSeq`; refused commands change nothing. */
  apply(cmd: MembershipCmd, decidedSeq: number): MembershipResult {
    if (!isIntIn(decidedSeq, 1, Number.MAX_SAFE_INTEGER)) return refuse("a membership change needs the decided seq");
    const base = this.pendingValue?.next ?? this.currentValue;
    const changed = this.changed(base, cmd);
    if ("reason" in changed) return refuse(changed.reason);
    const next: Membership = { epoch: this.currentValue.epoch + 1, f: changed.f, members: changed.members };
    // The rules of stored records only: a member taken under older rules (a peer port that
    // is its client port) must not block every later change; `changed` holds a new member
    // to every rule.
    const problem = recordedMembershipProblem(next);
    if (problem !== null) return refuse(problem);
    const from = this.pendingValue?.from ?? boundaryAfter(decidedSeq, this.checkpointInterval);
    this.pendingValue = { next, from };
    return { ok: true, cmd: cmd.t, epoch: next.epoch, from };
  }

  /**
   * Called after every decided seq has executed, in order (and after a restart's replay).
   * Returns the membership that took effect, or null when none did.
   */
  endOfDecision(seq: number): Membership | null {
    const pending = this.pendingValue;
    if (pending === null || seq < pending.from) return null;
    this.currentValue = pending.next;
    this.pendingValue = null;
    return this.currentValue;
  }

  /**
   * Why a group of n replicas tolerating f could never change leaders over these frames
   * (its NEW_VIEW does not fit one; its quorum, ceil((n+f+1)/2), grows with n and f), or
   * null. Refusing it is safe for replayed history: no group with it could ever have
   * survived a leader change.
   */
  private newViewTooLarge(what: string, n: number, f: number, remedy: string): string | null {
    if (this.viewChange === null) return null;
    const bytes = this.viewChange.newViewBytes(n, f);
    if (bytes <= this.viewChange.frameBytesMax) return null;
    return (
      `${what}: with n = ${n} and f = ${f}, a leader change may need a NEW_VIEW message of up to ${bytes} bytes, ` +
      `more than limits.frame_bytes_max (${this.viewChange.frameBytesMax}), so the group could never change leaders; ` +
      `${remedy} ${FRAME_LIMIT_FIXED}`
    );
  }

  /**
   * Why `key` may not become replica `id`'s: a member of the current epoch other than `id`
   * holds it, or null. The pending group alone is not enough: until the change takes
   * effect the peer mesh accepts the keys of both groups, so a key rotated away (or a
   * removed replica's) that another id takes in the same pending change would be accepted
   * for two ids. Keys retired in earlier epochs are not tracked here (that set only grows);
   * the mesh refuses them by its own record.
   */
  private currentKeyHolder(key: Uint8Array, id: number): string | null {
    const holder = this.currentValue.members.find((member) => member.id !== id && bytesEqual(member.key, key));
    return holder === undefined
      ? null
      : `the key is replica ${holder.id}'s in epoch ${this.currentValue.epoch} until the pending change takes effect`;
  }

  private changed(base: Membership, cmd: MembershipCmd): { f: number; members: Member[] } | { reason: string } {
    if (!this.admitsNewReplicas && (cmd.t === "add-replica" || cmd.t === "rotate-replica-key")) return { reason: NOT_ADMITTED };
    const members = [...base.members];
    const n = members.length;
    switch (cmd.t) {
      case "add-replica": {
        if (!isIntIn(cmd.id, 0, REPLICAS_MAX - 1)) return { reason: `replica id must be 0..${REPLICAS_MAX - 1}` };
        if (memberOf(base, cmd.id) !== null) return { reason: `replica ${cmd.id} is already a member` };
        if (n >= REPLICAS_MAX) return { reason: `a group has at most ${REPLICAS_MAX} replicas` };
        if (typeof cmd.host !== "string" || !HOST_PATTERN.test(cmd.host)) return { reason: "host must be a hostname or an IP address" };
        if (!isIntIn(cmd.port, 1, PORT_MAX)) return { reason: `port must be 1..${PORT_MAX}` };
        if (cmd.peerPort !== undefined && !isIntIn(cmd.peerPort, 1, PORT_MAX)) return { reason: `peer port must be 1..${PORT_MAX}` };
        // Could never work: the replica would open its peer and client listeners on one port.
        if (cmd.peerPort === cmd.port)
          return { reason: `the peer port must differ from the client port (${cmd.port}); omit it to share the port` };
        if (!isKey(cmd.key)) return { reason: `key must be ${PUBLIC_KEY_BYTES} bytes` };
        const holder = members.find((member) => bytesEqual(member.key, cmd.key));
        if (holder !== undefined) return { reason: `the key is replica ${holder.id}'s` };
        const holderNow = this.currentKeyHolder(cmd.key, cmd.id);
        if (holderNow !== null) return { reason: holderNow };
        const tooLarge = this.newViewTooLarge(`adding replica ${cmd.id}`, n + 1, base.f, "lower f first (set-f), or remove a replica");
        if (tooLarge !== null) return { reason: tooLarge };
        const member: Member = { id: cmd.id, host: cmd.host, port: cmd.port, peerPort: cmd.peerPort ?? null, key: cmd.key.slice() };
        members.push(member);
        members.sort((a, b) => a.id - b.id);
        return { f: base.f, members };
      }
      case "remove-replica": {
        const at = members.findIndex((member) => member.id === cmd.id);
        if (at < 0) return { reason: `replica ${String(cmd.id)} is not a member` };
        if (n - 1 < 3 * base.f + 1) {
          return { reason: `removing replica ${cmd.id} leaves n = ${n - 1}, below 3f+1 = ${3 * base.f + 1}; lower f first (set-f)` };
        }
        members.splice(at, 1);
        return { f: base.f, members };
      }
      case "rotate-replica-key": {
        const at = members.findIndex((member) => member.id === cmd.id);
        if (at < 0) return { reason: `replica ${String(cmd.id)} is not a member` };
        if (!isKey(cmd.key)) return { reason: `key must be ${PUBLIC_KEY_BYTES} bytes` };
        const holder = members.find((member) => bytesEqual(member.key, cmd.key));
        if (holder !== undefined) {
          return { reason: holder.id === cmd.id ? `that is replica ${cmd.id}'s key already` : `the key is replica ${holder.id}'s` };
        }
        const holderNow = this.currentKeyHolder(cmd.key, cmd.id);
        if (holderNow !== null) return { reason: holderNow };
        members[at] = { ...(members[at] as Member), key: cmd.key.slice() };
        return { f: base.f, members };
      }
      case "set-f": {
        if (!isIntIn(cmd.f, 0, Math.floor((REPLICAS_MAX - 1) / 3))) return { reason: "f must be a non-negative integer" };
        if (cmd.f === base.f) {
          // A pending change may have set it already (one the operator asked for a moment ago, say).
          const pending = base !== this.currentValue && this.currentValue.f !== cmd.f;
          return {
            reason: pending ? `a pending change already sets f = ${cmd.f} (it takes effect at a checkpoint)` : `f is already ${cmd.f}`,
          };
        }
        // Only raising f grows the quorum; lowering it is always taken (it shrinks the NEW_VIEW).
        // Sized for at least the 3f+1 replicas f needs: if even the smallest group of this f
        // cannot change leaders, adding replicas will not help, so that reason comes before n's.
        if (cmd.f > base.f) {
          const tooLarge = this.newViewTooLarge(
            `f = ${cmd.f}`,
            Math.max(n, 3 * cmd.f + 1),
            cmd.f,
            "choose a smaller f, or remove replicas first",
          );
          if (tooLarge !== null) return { reason: tooLarge };
        }
        if (n < 3 * cmd.f + 1)
          return { reason: `f = ${cmd.f} needs n >= 3f+1 = ${3 * cmd.f + 1}, the group has n = ${n}; add replicas first` };
        if (!this.admitsLargerF && cmd.f > this.genesis.f) {
          return {
            reason: `f = ${cmd.f} is above the cluster file's f = ${this.genesis.f}, and this group does not admit a larger f`,
          };
        }
        return { f: cmd.f, members };
      }
      default:
        return { reason: `unknown membership command ${String((cmd as { t: unknown }).t)}` };
    }
  }

  /** The canonical record of the snapshot and digest; null while nothing ever changed (see the class comment). */
  record(): Canonical | null {
    if (this.currentValue.epoch === 0 && this.pendingValue === null) return null;
    return {
      current: membershipValue(this.currentValue),
      pending: this.pendingValue === null ? null : { from: this.pendingValue.from, next: membershipValue(this.pendingValue.next) },
    };
  }

  /** Installs a snapshot's record (null: the genesis group); throws a RangeError on a malformed one. */
  install(record: Canonical | null): void {
    if (record === null) {
      this.currentValue = this.genesis;
      this.pendingValue = null;
      return;
    }
    const { current, pending } = readRecord(record);
    this.currentValue = current;
    this.pendingValue = pending;
  }
}

export function membershipValue(membership: Membership): { [key: string]: Canonical } {
  return {
    epoch: membership.epoch,
    f: membership.f,
    members: membership.members.map((member) => ({
      id: member.id,
      host: member.host,
      port: member.port,
      peerPort: member.peerPort,
      key: member.key,
    })),
  };
}

type CanonicalMap = { [key: string]: Canonical };

function isMap(value: Canonical | undefined): value is CanonicalMap {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array);
}

/** Reads and checks a membership record from a snapshot; throws a RangeError naming the problem. */
export function readRecord(record: Canonical): { current: Membership; pending: PendingMembership | null } {
  if (!isMap(record)) throw new RangeError("membership is not a map");
  const current = readMembership(record["current"]);
  const pendingValue = record["pending"];
  if (pendingValue === null || pendingValue === undefined) return { current, pending: null };
  if (!isMap(pendingValue) || !isIntIn(pendingValue["from"], 1, Number.MAX_SAFE_INTEGER)) throw new RangeError("bad pending membership");
  const next = readMembership(pendingValue["next"]);
  if (next.epoch !== current.epoch + 1) throw new RangeError("the pending membership is not the next epoch");
  return { current, pending: { next, from: pendingValue["from"] } };
}

export function readMembership(value: Canonical | undefined): Membership {
  if (!isMap(value)) throw new RangeError("membership is not a map");
  const { epoch, f, members } = value;
  if (!isIntIn(epoch, 0, Number.MAX_SAFE_INTEGER) || !isIntIn(f, 0, REPLICAS_MAX)) throw new RangeError("bad membership epoch or f");
  if (!Array.isArray(members) || members.length > REPLICAS_MAX) throw new RangeError("bad member list");
  const read = members.map((item): Member => {
    if (!isMap(item)) throw new RangeError("a member is not a map");
    const { id, host, port, peerPort, key } = item;
    if (!isIntIn(id, 0, REPLICAS_MAX - 1) || typeof host !== "string" || !isIntIn(port, 1, PORT_MAX)) throw new RangeError("bad member");
    if (peerPort !== null && !isIntIn(peerPort, 1, PORT_MAX)) throw new RangeError("bad member peer port");
    if (!isKey(key)) throw new RangeError("bad member key");
    return { id, host, port, peerPort: peerPort ?? null, key: key.slice() };
  });
  const membership = { epoch, f, members: read };
  // Records written under older rules load: a snapshot is certified state.
  const problem = recordedMembershipProblem(membership);
  if (problem !== null) throw new RangeError(`invalid membership: ${problem}`);
  return membership;
}
