/**
 * Client-side voting on the replies to one request (the "voting on client side" step of
 * BFT-SMaRt's ServiceProxy; src/README.md §3 table for the quorum per CLASS).
 *
 * Replies are grouped by the canonical bytes of the whole result, and a group counts
 * distinct replicas: a replica is counted once, with its first reply. A second,
 * different reply from the same replica is equivocation and is reported, not counted,
 * once per replica: a replica that answers again and again, each time otherwise, costs one
 * record, not one per reply.
 * The request is decided when one group reaches the kind's quorum, and failed when no
 * group can reach it any more with the replicas that have not answered.
 *
 * For deterministic kinds (ordered publishes and admin commands) a replica whose result
 * differs from the decided one is reported as wrong: the decided result is backed by at
 * least one correct replica, and correct replicas execute identically.
 *
 * A replica that leaves the group while the request is out (removed, or its key or address
 * replaced) has its answer taken back (`withdraw`), and what is still pending is judged
 * again with the larger of the f the voter started with and the group's f now.
 */
import { assert } from "../../../wire/assert.ts";
import { toHex } from "../../../wire/bytes.ts";
import { encodeCanonical, type Canonical } from "../../../wire/canonical.ts";

import { ackQuorum, checkGroup, isDeterministic, type ReplyKind } from "./quorum.ts";

export type ReplyVoterOptions = {
  /** Replicas in the group. */
  readonly n: number;
  /**
   * Their ids, when they are not 0..n-1 (a replica keeps its id for life, so after a
   * removal the ids have gaps): n distinct ids. Absent: 0..n-1.
   */
  readonly ids?: readonly number[];
  /** Faults tolerated. */
  readonly f: number;
  readonly kind: ReplyKind;
};

export type ReplyGroup = { readonly result: Canonical; readonly replicas: readonly number[] };

export type ReplyStatus =
  | { readonly state: "pending"; readonly answered: number; readonly quorum: number }
  | { readonly state: "decided"; readonly result: Canonical; readonly replicas: readonly number[] }
  | { readonly state: "failed"; readonly reason: string; readonly groups: readonly ReplyGroup[] };

/** Evidence that a replica misbehaved (or, for split-quorum, that more than f did). */
export type ReplyConflict =
  | { readonly kind: "equivocation"; readonly replica: number; readonly first: Canonical; readonly second: Canonical }
  | { readonly kind: "wrong-result"; readonly replica: number; readonly result: Canonical; readonly decided: Canonical }
  | { readonly kind: "split-quorum"; readonly results: readonly Canonical[] };

/** What became of one reply. */
export type ReplyOutcome =
  | "counted"
  | "duplicate" // the same replica sent the same result again
  | "equivocation" // the same replica sent a different result
  | "unknown-replica" // an id not in the group
  | "unencodable"; // not a canonical value: cannot be compared, so not counted

export type ReplyAdd = {
  readonly outcome: ReplyOutcome;
  readonly status: ReplyStatus;
  /** Conflicts this reply revealed (already included in `conflicts()`). */
  readonly conflicts: readonly ReplyConflict[];
};

type Group = { readonly result: Canonical; readonly replicas: number[] };

export class ReplyVoter {
  private readonly n: number;
  /** The faults the quorum is counted for: the f at the start, raised (never lowered) by `withdraw`. */
  private f: number;
  private quorumNow: number;
  /** The group's ids, ascending. */
  private readonly ids: readonly number[];
  private readonly idSet: ReadonlySet<number>;
  private readonly kind: ReplyKind;
  /** Result key (hex of canonical bytes) per replica that answered. */
  private readonly answers = new Map<number, string>();
  /** Groups in order of first appearance, so ties resolve the same way every time. */
  private readonly groups = new Map<string, Group>();
  private decidedKey: string | null = null;
  private readonly found: ReplyConflict[] = [];
  /** Replicas whose equivocation is on record: one record each (see `add`). */
  private readonly equivocated = new Set<number>();
  private splitReported = false;

  constructor(options: ReplyVoterOptions) {
    checkGroup(options.kind, options.n, options.f);
    this.n = options.n;
    this.ids = options.ids === undefined ? Array.from({ length: options.n }, (_, id) => id) : [...options.ids].sort((a, b) => a - b);
    this.idSet = new Set(this.ids);
    if (this.idSet.size !== this.n) throw new RangeError(`reply voter: ${this.n} replicas need ${this.n} distinct ids`);
    for (const id of this.ids) if (!Number.isSafeInteger(id) || id < 0) throw new RangeError(`reply voter: bad replica id ${id}`);
    this.kind = options.kind;
    this.f = options.f;
    this.quorumNow = ackQuorum(options.kind, options.f);
  }

  /** Matching replies from distinct replicas a decision needs now. */
  get quorum(): number {
    return this.quorumNow;
  }

  /** Takes one reply from `replica`. */
  add(replica: number, result: Canonical): ReplyAdd {
    if (!this.idSet.has(replica)) return this.outcome("unknown-replica", []);
    let key: string;
    try {
      key = toHex(encodeCanonical(result));
    } catch {
      return this.outcome("unencodable", []);
    }
    const previous = this.answers.get(replica);
    if (previous === key) return this.outcome("duplicate", []);
    if (previous !== undefined) {
      // One record per replica: the first proves the fault, and a replica answering again
      // and again, each time otherwise, would grow the record (and the caller's warnings)
      // with every reply for as long as the request is out.
      if (this.equivocated.has(replica)) return this.outcome("equivocation", []);
      this.equivocated.add(replica);
      const first = (this.groups.get(previous) as Group).result;
      return this.outcome("equivocation", this.record([{ kind: "equivocation", replica, first, second: result }]));
    }
    this.answers.set(replica, key);
    const group = this.groupFor(key, result);
    // A replica counts once: it is in no group yet (quorums count distinct replicas).
    assert(!group.replicas.includes(replica), `reply voter: replica ${replica} counted twice`);
    group.replicas.push(replica);
    assert(group.replicas.length <= this.n, "reply voter: a group larger than the cluster");
    return this.outcome("counted", this.record(this.afterCount(key, replica)));
  }

  /**
   * Takes back `replica`'s answer: it left the group, or its key or address was replaced
   * (membership-follow.ts), so its word no longer stands for a member's. It counts as not
   * having answered (a replaced replica may answer again on its new session, and its
   * equivocation record goes with the old one), and what is pending is judged again with
   * the quorum of the larger of `f` (the group's now) and the f counted so far: a change
   * never lowers what a result needs, as DeliveryVoter.regroup judges what waits. A
   * decision already made stands, with the answers that made it.
   */
  withdraw(replica: number, f: number): ReplyStatus {
    if (!Number.isSafeInteger(f) || f < 0) throw new RangeError(`reply voter: bad f ${f}`);
    this.f = Math.max(this.f, f);
    this.quorumNow = ackQuorum(this.kind, this.f);
    if (this.decidedKey !== null) return this.status();
    this.equivocated.delete(replica);
    const key = this.answers.get(replica);
    if (key === undefined) return this.status();
    this.answers.delete(replica);
    const group = this.groups.get(key) as Group;
    group.replicas.splice(group.replicas.indexOf(replica), 1);
    if (group.replicas.length === 0) this.groups.delete(key);
    return this.status();
  }

  status(): ReplyStatus {
    if (this.decidedKey !== null) {
      const group = this.groups.get(this.decidedKey) as Group;
      return { state: "decided", result: group.result, replicas: [...group.replicas] };
    }
    const unanswered = this.n - this.answers.size;
    let largest = 0;
    for (const group of this.groups.values()) largest = Math.max(largest, group.replicas.length);
    if (largest + unanswered < this.quorumNow) {
      const reason = `no result can reach ${this.quorumNow} matching replies`;
      const groups = [...this.groups.values()].map((g) => ({ result: g.result, replicas: [...g.replicas] }));
      return { state: "failed", reason, groups };
    }
    return { state: "pending", answered: this.answers.size, quorum: this.quorumNow };
  }

  /** Every conflict seen so far, in order of discovery. */
  conflicts(): readonly ReplyConflict[] {
    return this.found;
  }

  /** Replicas that have not answered (to retransmit to, or to time out). */
  missing(): number[] {
    const ids: number[] = [];
    for (const id of this.ids) if (!this.answers.has(id)) ids.push(id);
    return ids;
  }

  private outcome(outcome: ReplyOutcome, conflicts: readonly ReplyConflict[]): ReplyAdd {
    return { outcome, status: this.status(), conflicts };
  }

  private record(conflicts: ReplyConflict[]): ReplyConflict[] {
    this.found.push(...conflicts);
    return conflicts;
  }

  private groupFor(key: string, result: Canonical): Group {
    let group = this.groups.get(key);
    if (group === undefined) {
      group = { result, replicas: [] };
      this.groups.set(key, group);
    }
    return group;
  }

  /** Decides, and finds the conflicts a newly counted reply reveals. */
  private afterCount(key: string, replica: number): ReplyConflict[] {
    const group = this.groups.get(key) as Group;
    if (this.decidedKey === null) {
      if (group.replicas.length < this.quorumNow) return [];
      this.decidedKey = key;
      return this.wrongResultsAgainst(key);
    }
    if (key === this.decidedKey || !isDeterministic(this.kind)) return [];
    const decided = (this.groups.get(this.decidedKey) as Group).result;
    const conflicts: ReplyConflict[] = [{ kind: "wrong-result", replica, result: group.result, decided }];
    if (group.replicas.length >= this.quorumNow && !this.splitReported) {
      // Two results each backed by a quorum: more than f replicas are faulty.
      this.splitReported = true;
      conflicts.push({ kind: "split-quorum", results: [decided, group.result] });
    }
    return conflicts;
  }

  /** At the moment of decision: every replica that had answered differently was wrong. */
  private wrongResultsAgainst(decidedKey: string): ReplyConflict[] {
    if (!isDeterministic(this.kind)) return [];
    const decided = (this.groups.get(decidedKey) as Group).result;
    const conflicts: ReplyConflict[] = [];
    for (const [key, group] of this.groups) {
      if (key === decidedKey) continue;
      for (const replica of group.replicas) conflicts.push({ kind: "wrong-result", replica, result: group.result, decided });
    }
    return conflicts;
  }
}
