/**
 * Where a client's request sequence numbers continue. A client has one sequence space
 * per (key, tag) for publishes and one per key for admin commands; the replicas answer
 * QUERY client-seq with the last number each has executed or stored.
 *
 * The client continues after the (f+1)-th highest answer. Up to f answers may be lies:
 * f inflated answers are all above it, so at least one correct replica has reached
 * the chosen value, and the client never skips numbers that no correct replica will
 * see (which would stall total-order channels). A lagging correct replica can make the
 * choice too low; the request then draws REPLAY and the client asks again.
 *
 * Answers to wait for before choosing: 2f+1 (byzantineQuorum), of which at least f+1 are
 * correct. The fewest answers a choice may rest on: f+1 (vouchQuorum), so at least one is
 * correct.
 */
import { vouchQuorum } from "../core/voting/quorum.ts";

/** The name of the admin sequence space; `#` cannot occur in a tag, so no tag collides with it. */
export const ADMIN_SPACE = "#admin";

/** The space a publish to `tag` (or, with null, an admin command) uses. */
export function spaceName(tag: string | null): string {
  return tag === null ? ADMIN_SPACE : tag;
}

/**
 * The last used sequence number to continue after: the (f+1)-th highest answer, or
 * null when fewer than f+1 replicas answered. Answers that are not non-negative safe
 * integers are ignored (a replica that sends them is faulty).
 */
export function pickLastSeq(answers: readonly number[], f: number): number | null {
  const usable = answers.filter((answer) => Number.isSafeInteger(answer) && answer >= 0);
  if (usable.length < vouchQuorum(f)) return null;
  usable.sort((a, b) => b - a);
  return usable[f] as number;
}

/**
 * The counter of one sequence space once learned. A long-lived client keeps counting
 * on its own; `reset` is for after a REPLAY, when the group's answer is learned again.
 */
export class SeqCounter {
  private nextSeq: number;
  /** Bumped by every reset, so a request can tell whether its numbers are still current. */
  private epochValue = 0;

  constructor(lastUsed: number) {
    this.nextSeq = checkedNext(lastUsed);
  }

  get next(): number {
    return this.nextSeq;
  }

  get epoch(): number {
    return this.epochValue;
  }

  /** Takes `span` consecutive numbers and returns the first. */
  allocate(span: number): number {
    if (!Number.isSafeInteger(span) || span < 1) throw new RangeError(`span must be a positive integer, got ${span}`);
    const seq = this.nextSeq;
    // Compared as a difference: seq + span would round above 2^53 and hide the overflow.
    if (span - 1 > Number.MAX_SAFE_INTEGER - seq) throw new RangeError("sequence numbers exhausted for this key");
    this.nextSeq = seq + span;
    return seq;
  }

  /** Continues after `lastUsed`, as learned again from the group. */
  reset(lastUsed: number): void {
    this.nextSeq = checkedNext(lastUsed);
    this.epochValue++;
  }
}

function checkedNext(lastUsed: number): number {
  if (!Number.isSafeInteger(lastUsed) || lastUsed < 0 || lastUsed >= Number.MAX_SAFE_INTEGER) {
    throw new RangeError(`last used sequence number must be a non-negative safe integer, got ${lastUsed}`);
  }
  return lastUsed + 1;
}
