/**
 * Read-your-writes (PROTOCOL.md 6.3): the floor is a decided seq this client knows some
 * correct replica has executed: from its own admin commands, and the (f+1)-th highest
 * `at` of any answer. Requests, queries and subscriptions send it as `after`, so that a
 * replica behind it waits instead of answering from older state.
 */
import { vouchQuorum } from "../core/voting/quorum.ts";

export class ExecutedFloor {
  private seq = 0;

  constructor(private readonly f: number) {}

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
    if (ats.size < vouchQuorum(this.f)) return;
    const sorted = [...ats.values()].sort((a, b) => b - a);
    this.observe(sorted[this.f] as number);
  }
}
