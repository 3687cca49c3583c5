/**
 * Read-your-writes (PROTOCOL.md 6.3): the floor is a decided seq this client knows some
 * correct replica has executed: from its own admin commands, and the (f+1)-th highest
 * `at` of any answer. Requests, queries and subscriptions send it as `after`, so that a
 * replica behind it waits instead of answering from older state.
 */
import { vouchQuorum } from "../core/voting/quorum.ts";

export class ExecutedFloor {
  private seq = 0;

  /**
   * `f` is read at every count: the f of the group the client follows now, which may exceed
   * the cluster file's once the group raised it (with the file's f, f_file+1 faulty replicas
   * of a group tolerating more could set the floor).
   */
  constructor(private readonly f: () => number) {}

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

  /** The (f+1)-th highest of several replicas' `at`: reached by at least one correct replica. */
  observeAts(ats: ReadonlyMap<number, number>): void {
    const f = this.f();
    if (ats.size < vouchQuorum(f)) return;
    const sorted = [...ats.values()].sort((a, b) => b - a);
    this.observe(sorted[f] as number);
  }
}
