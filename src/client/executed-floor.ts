/**
 * Read-your-writes (PROTOCOL.md 6.3): the floor is a decided seq this client knows some
 * correct replica has executed: from its own admin commands, and the (f+1)-th highest
 * `at` of any answer. Requests, queries and subscriptions send it as `after`, so that a
 * replica behind it waits instead of answering from older state.
 */
import { vouchQuorum } from "../core/voting/quorum.ts";

/** What the floor reads of the group the client follows now (ReplicaGroup). */
export interface FloorGroup {
  /** Faults the group tolerates now. */
  readonly f: number;
  /** Whether replica `id` is a member now. */
  has(id: number): boolean;
}

export class ExecutedFloor {
  private seq = 0;

  /**
   * The group is read at every count: its f now, which may exceed the cluster file's once
   * the group raised it (with the file's f, f_file+1 faulty replicas of a group tolerating
   * more could set the floor), and its members now.
   */
  constructor(private readonly group: FloorGroup) {}

  /** The decided seq replicas are asked to have executed before they answer. */
  get value(): number {
    return this.seq;
  }

  /**
   * Raises the floor to a decided seq learned elsewhere (an admin command's `at`, or a
   * seq printed by `fitb admin` in another process): later calls wait for replicas to reach it.
   */
  observe(seq: number): void {
    if (Number.isSafeInteger(seq) && seq > this.seq) this.seq = seq;
  }

  /**
   * The (f+1)-th highest of several replicas' `at`: reached by at least one correct replica.
   * Only members of the group followed now count (a request sent before a regroup may hold
   * answers of replicas removed since: faulty ones, maybe, that the change meant to be rid
   * of), and f is the larger of the group's now and `fAtSend`, the f when the answers were
   * asked for (a change that lowered f must not lower the bar for answers given before it).
   */
  observeAts(ats: ReadonlyMap<number, number>, fAtSend = 0): void {
    const f = Math.max(fAtSend, this.group.f);
    const members: number[] = [];
    for (const [replica, at] of ats) if (this.group.has(replica)) members.push(at);
    if (members.length < vouchQuorum(f)) return;
    members.sort((a, b) => b - a);
    this.observe(members[f] as number);
  }
}
