/**
 * A replica that is not in its cluster file (added by add-replica), or whose key the
 * group rotated, learns the group it belongs to from the running replicas before it
 * starts: the current membership and the checkpoint the current epoch started from, from
 * f+1 matching `members` answers (the same query `fitb admin members` reads, asked with
 * `start`), over client sessions with its own key. It then starts its ordering core in
 * that epoch and fetches the state there by state transfer (ordering-driver.ts `join`);
 * it votes there meanwhile, and a restart before the state came keeps those votes.
 *
 * It waits while the change that adds it (or rotates its key) is pending, and refuses to
 * start, saying why, when the group does not name it with this key.
 *
 * f+1 matching answers prove the group only if at most f of the replicas that sent them
 * can be faulty, and the fault budget covers the members of the current group, not the
 * cluster file's: a replica removed since (or a key rotated away), whose retired key is
 * no longer kept safe, and one faulty member could otherwise hand the newcomer a group and
 * a start they made up, and it would become a second faulty replica. So the answer is
 * taken only when every replica whose answer counted is a member of the group it names,
 * under the key its session authenticated with, and that group tolerates no more faults
 * than the file's f (answerProblem); otherwise the cluster file is out of date and the
 * replica refuses to start, saying how to get the current one. Those checks stop an out
 * of date file and a forgery that leaves its senders out; one that names its senders as
 * members is stopped by the digest the operator may give (`--members-digest`, what `fitb
 * admin members` prints for the group that names the replica), which the named group's
 * members must hash to. A group the digest pins is the real one whatever the file's f:
 * its own f+1 members, under their keys, must then vouch for the start (the group may
 * have raised f since the file was written), and the file's f is not compared.
 *
 * A voucher whose session key is not the one the group names may be a rotation still
 * switching (the rotated replica runs on its old key until restarted with the new one),
 * and too few vouchers may be answers still to come: the replica asks again for up to
 * JOIN_UNPROVEN_WAIT_MS before it refuses.
 */
import { type ClusterConfig, type ReplicaEntry, replicaById } from "../config/cluster.ts";
import { FitbClient } from "../client/client.ts";
import type { MembersListing, Voucher } from "../client/queries.ts";
import { formatPublicKey, type SigningKey } from "../crypto/keys.ts";
import { bytesEqual, toHex } from "../crypto/encoding.ts";
import { membershipDigest } from "../replica/epochs.ts";
import type { Log } from "../replica/log.ts";
import type { JoinEpoch } from "../replica/ordering-driver.ts";
import { readEpochStart, readJoined, StoreIdentityError } from "../replica/storage/index.ts";
import type { Member, Membership } from "../core/channels/membership.ts";

/** Pause between two asks while the change that names this replica is pending. */
export const JOIN_POLL_MS = 1_000;

/**
 * How long a joining replica keeps asking while the group's answer is not yet proof but
 * could become proof (answerProblem, not final): a voucher's key rotation still switching,
 * or fewer of the digest-pinned group's members vouching than its f+1. Long enough to
 * restart a rotated replica with its new key; then it refuses, saying what it waited for.
 */
export const JOIN_UNPROVEN_WAIT_MS = 60_000;

/** The group does not name this replica with this key: it must not start. */
export class JoinRefused extends Error {
  override name = "JoinRefused";
}

export interface Joined {
  /** This replica as the group names it (the cluster file's further addresses and paths kept when it lists the id). */
  readonly self: ReplicaEntry;
  readonly epoch: JoinEpoch;
}

/**
 * Whether a replica the file lists with its key must still ask the group: the file lists
 * a later epoch's group (`fitb cluster export` after a change) and the data directory
 * holds no epoch after 0 (new, or stopped before the first change took effect). Its
 * state must then come from the group, as a new replica's does: the file's group is
 * not the one the cluster started with, so it cannot start from it (nor replay epoch 0
 * under it). A directory that holds a later epoch resumes from there, without asking, so
 * a cold restart of a group whose every file is exported needs nobody's answer.
 */
export function fileIsAheadOfData(options: Pick<JoinOptions, "config" | "id" | "dataDir" | "log">): boolean {
  if (options.config.epoch === 0) return false;
  let stored: ReturnType<typeof readEpochStart>;
  try {
    stored = readEpochStart(options.dataDir, options.config.name, options.id);
  } catch (error) {
    if (error instanceof StoreIdentityError) throw error;
    options.log.warn("cannot read the epoch from the data directory: asking the group", {
      dir: options.dataDir,
      error: (error as Error).message,
    });
    return true;
  }
  return stored === null;
}

/** This replica as the group names it, with the cluster file's further addresses when the file lists it at the same host. */
function selfEntry(config: ClusterConfig, member: Member, key: SigningKey, keyFile: string, dataDir: string): ReplicaEntry {
  const file = replicaById(config, member.id);
  return {
    id: member.id,
    host: member.host,
    hosts: file !== undefined && file.host === member.host ? file.hosts : [],
    port: member.port,
    peerPort: member.peerPort,
    publicKey: key.publicKey,
    publicKeyText: formatPublicKey(key.publicKey),
    keyFile,
    dataDir,
  };
}

/** Who is starting: the replica's id, key (and its file) and data directory, under the cluster file. */
export interface JoinOptions {
  readonly config: ClusterConfig;
  readonly id: number;
  readonly key: SigningKey;
  readonly keyFile: string;
  readonly dataDir: string;
  readonly log: Log;
}

/**
 * The group this replica joined before, from its data directory (stored once it got its
 * state there: ordering-driver.ts), when that group names it with `key`; null otherwise
 * (it then asks the group: learnGroup). A replica that has joined starts from its own
 * records like one the file lists, so a cold restart of the group needs no other
 * replica's answer. It catches up from there (a newer epoch's members send it the proof
 * that ended its epoch).
 */
export function joinedBefore(options: JoinOptions): Joined | null {
  let stored: ReturnType<typeof readJoined>;
  try {
    stored = readJoined(options.dataDir, options.config.name, options.id);
  } catch (error) {
    if (error instanceof StoreIdentityError) throw error;
    // Opening the store for the replica checks and repairs it (and says what it found); until then, ask the group.
    options.log.warn("cannot read the group this replica joined from its data directory: asking the group", {
      dir: options.dataDir,
      error: (error as Error).message,
    });
    return null;
  }
  const member = stored?.membership.members.find((m) => m.id === options.id);
  if (stored === null || member === undefined || !bytesEqual(member.key, options.key.publicKey)) return null;
  return { self: selfEntry(options.config, member, options.key, options.keyFile, options.dataDir), epoch: stored };
}

/** What the group's replicas answered a joining replica: the group and its start, and who vouched for them. */
export interface GroupAnswer {
  readonly members: MembersListing;
  readonly start: { readonly seq: number; readonly digest: Uint8Array } | null;
  /** The replicas whose matching answers settled it, with the keys their sessions authenticated with. */
  readonly vouchers: readonly Voucher[];
}

/** The membership a `members` answer lists (its digest is recomputed from it, never taken from the answer). */
function membershipOf(members: MembersListing): Membership {
  return {
    epoch: members.epoch,
    f: members.f,
    members: members.members.map((m) => ({ id: m.id, host: m.host, port: m.port, peerPort: m.peerPort, key: m.key })),
  };
}

/** How an operator gets what a joining replica needs when the cluster file is out of date. */
const CURRENT_FILE_HINT =
  "get the current cluster file (fitb cluster export, on a host whose client follows the group) or check the group with fitb admin members and pass its digest with --members-digest";

/** What a rotation still switching looks like from the joining replica, said when it refuses. */
const ROTATION_HINT =
  "a key rotation may still be switching: the rotated replica runs on its old key until it is restarted with the new one";

/** Why a joining replica does not take a group answer; `final`: asking again cannot change it (else JOIN_UNPROVEN_WAIT_MS applies). */
export interface AnswerProblem {
  readonly why: string;
  readonly final: boolean;
}

/**
 * Why a joining replica must not take the group `answer` names, or null. Without
 * `expectedDigest`, each replica whose answer counted must be a member of that group under
 * the key its session authenticated with, and the group may tolerate no more faults than
 * the file's f: then at most f of the f_file+1 vouchers are faulty (if the group is the
 * real one) and one is correct. With `expectedDigest` (the operator's, from `fitb admin
 * members`), the group's members must hash to it, which makes it the real one; f+1 of its
 * members under their keys must then be among the vouchers (groupVouchers), whatever the
 * file's f, and a voucher the group does not name (a removed replica) is not counted.
 */
export function answerProblem(answer: GroupAnswer, config: ClusterConfig, expectedDigest: Uint8Array | null): AnswerProblem | null {
  if (expectedDigest === null) return fileAnchoredProblem(answer, config);
  const { members } = answer;
  const digest = membershipDigest(membershipOf(members));
  if (!bytesEqual(digest, expectedDigest)) {
    return {
      why: `the group the replicas describe (epoch ${members.epoch}, digest ${toHex(digest)}) is not the one given with --members-digest (${toHex(expectedDigest)}): check the group with fitb admin members (a change since then gives it another digest)`,
      final: true,
    };
  }
  const vouching = groupVouchers(answer);
  if (vouching.length >= members.f + 1) return null;
  const rotated = rotatedVouchers(answer);
  const rotating =
    rotated.length === 0 ? "" : ` (replicas ${rotated.join(", ")} answered under another key than the group names: ${ROTATION_HINT})`;
  return {
    why: `only ${vouching.length} of the replicas whose answers match the group given with --members-digest (epoch ${members.epoch}, f=${members.f}) are its members under the keys their sessions authenticated with, and it needs ${members.f + 1}${rotating}`,
    final: false,
  };
}

/** answerProblem without a digest: the cluster file's f and its replicas' answers are all the proof there is. */
function fileAnchoredProblem(answer: GroupAnswer, config: ClusterConfig): AnswerProblem | null {
  const { members } = answer;
  for (const voucher of answer.vouchers) {
    const member = members.members.find((m) => m.id === voucher.id);
    if (member !== undefined && bytesEqual(member.key, voucher.key)) continue;
    const why = member === undefined ? "does not list it" : `names another key for it (${formatPublicKey(member.key)})`;
    return {
      why: `the cluster file is out of date: replica ${voucher.id}, whose answer counted, authenticated with key ${formatPublicKey(voucher.key)}, but the group it describes (epoch ${members.epoch}) ${why}, so the file's f+1 answers prove nothing; ${CURRENT_FILE_HINT}${member === undefined ? "" : ` (or ${ROTATION_HINT})`}`,
      // A member under another key may be a rotation still switching; a replica the group does not list stays out.
      final: member === undefined,
    };
  }
  if (members.f > config.f) {
    return {
      why: `the cluster file is out of date: the group (epoch ${members.epoch}) tolerates f=${members.f}, more than the file's f=${config.f}, so ${config.f + 1} matching answers prove nothing; ${CURRENT_FILE_HINT}`,
      final: true,
    };
  }
  return null;
}

/** The distinct replicas among `answer`'s vouchers that the answered group names under the key their session authenticated with. */
function groupVouchers(answer: GroupAnswer): readonly number[] {
  const ids = new Set<number>();
  for (const voucher of answer.vouchers) {
    const member = answer.members.members.find((m) => m.id === voucher.id);
    if (member !== undefined && bytesEqual(member.key, voucher.key)) ids.add(voucher.id);
  }
  return [...ids].sort((a, b) => a - b);
}

/** The vouchers the answered group names under another key than their session's, and never under theirs. */
function rotatedVouchers(answer: GroupAnswer): readonly number[] {
  const vouching = new Set(groupVouchers(answer));
  const ids = new Set<number>();
  for (const voucher of answer.vouchers) {
    if (vouching.has(voucher.id)) continue;
    if (answer.members.members.some((m) => m.id === voucher.id)) ids.add(voucher.id);
  }
  return [...ids].sort((a, b) => a - b);
}

/**
 * The vouchers of successive asks, for the same group and start: each of them
 * authenticated and sent that same answer, so they count together (a digest-pinned group
 * may need more of its members than one ask's f_file+1 answers bring). Another group or
 * start begins the count again. Bounded by the distinct (id, key) pairs the replicas of
 * the client's group can authenticate with.
 */
class VoucherPool {
  private identity = "";
  private readonly vouchers = new Map<string, Voucher>();

  /** `answer` with the vouchers of the earlier asks that gave the same group and start. */
  add(answer: GroupAnswer): GroupAnswer {
    const { start } = answer;
    const identity = `${toHex(membershipDigest(membershipOf(answer.members)))} ${start?.seq ?? "-"} ${start === null ? "-" : toHex(start.digest)}`;
    if (identity !== this.identity) {
      this.identity = identity;
      this.vouchers.clear();
    }
    for (const voucher of answer.vouchers) this.vouchers.set(`${voucher.id} ${toHex(voucher.key)}`, voucher);
    return { ...answer, vouchers: [...this.vouchers.values()] };
  }
}

/**
 * Asks the cluster file's replicas (f+1 matching answers) until the group's current
 * epoch names replica `id` with `key` and has started; throws JoinRefused when the group
 * does not (and no pending change will) name it, or when its answer is no proof
 * (answerProblem: at once when final, else once it stayed no proof for
 * JOIN_UNPROVEN_WAIT_MS). `ask` replaces the replicas' answers and `now` the clock (tests).
 */
export async function learnGroup(
  options: JoinOptions & {
    readonly pollMs?: number;
    /** The digest `fitb admin members` shows for the group that names this replica, if the operator gave it. */
    readonly membersDigest?: Uint8Array;
    readonly ask?: () => Promise<GroupAnswer>;
    readonly now?: () => number;
  },
): Promise<Joined> {
  const { config, id, key, log } = options;
  const now = options.now ?? Date.now;
  const client = options.ask === undefined ? await FitbClient.connect({ config, key }) : null;
  const ask = options.ask ?? (() => (client as FitbClient).membersWithStartVouched());
  const pool = new VoucherPool();
  let waitingFor = "";
  let unprovenSinceMs: number | null = null;
  try {
    for (;;) {
      const asked = await ask();
      // Only a digest-pinned group counts vouchers of several asks: without it, every voucher of this ask must be a member.
      const answer = options.membersDigest === undefined ? asked : pool.add(asked);
      const { members, start } = answer;
      const member = members.members.find((m) => m.id === id);
      const next = members.pending?.members.find((m) => m.id === id);
      const named = member !== undefined && bytesEqual(member.key, key.publicKey);
      let waiting: string;
      const problem = named && start !== null ? answerProblem(answer, config, options.membersDigest ?? null) : null;
      if (problem === null) unprovenSinceMs = null;
      if (problem !== null) {
        if (problem.final) throw new JoinRefused(problem.why);
        unprovenSinceMs ??= now();
        const waitedMs = now() - unprovenSinceMs;
        if (waitedMs >= JOIN_UNPROVEN_WAIT_MS)
          throw new JoinRefused(`${problem.why}; still so after asking again for ${Math.round(waitedMs / 1_000)} s`);
        waiting = `the answer is no proof yet: ${problem.why}`;
      } else if (named && start !== null) {
        const self = selfEntry(config, member, key, options.keyFile, options.dataDir);
        const membership = membershipOf(members);
        log.info("learned the group from its replicas", {
          epoch: members.epoch,
          n: membership.members.length,
          f: members.f,
          from: start.seq,
          digest: toHex(membershipDigest(membership)),
          vouchers: answer.vouchers.map((voucher) => voucher.id),
          digestChecked: options.membersDigest !== undefined,
        });
        return { self, epoch: { membership, start } };
      } else if (named) waiting = `epoch ${members.epoch} has not started at f+1 replicas yet`;
      else if (next !== undefined && bytesEqual(next.key, key.publicKey))
        waiting = `the change naming replica ${id} takes effect at seq ${members.pending?.from}`;
      else if (member !== undefined) {
        const holder = members.members.find((m) => bytesEqual(m.key, key.publicKey));
        throw new JoinRefused(
          `the group (epoch ${members.epoch}) names another key for replica ${id}: ${formatPublicKey(member.key)}, not ${formatPublicKey(key.publicKey)} (${options.keyFile})${holder === undefined ? "" : `, which is replica ${holder.id}'s`}: start replica ${id} with its own key, or, to give it this one, run rotate-replica-key first`,
        );
      } else
        throw new JoinRefused(`replica ${id} is not a member of the group (epoch ${members.epoch}): add it first (fitb admin add-replica)`);
      if (waiting !== waitingFor) {
        waitingFor = waiting;
        log.info("waiting to join the group", { reason: waiting });
      }
      await Bun.sleep(options.pollMs ?? JOIN_POLL_MS);
    }
  } finally {
    client?.close();
  }
}
