/**
 * Read-your-writes on one replica (PROTOCOL.md section 6.3). A client that saw an admin
 * command execute at decided seq S sends `after: S` with what it does next. A replica
 * whose answer would be a refusal judged on its own state (no such channel, key not
 * registered) while it has executed less than S holds that answer here until it has
 * executed S, then judges again. Everything held is bounded: per session, in all, and
 * in time; at the bound the refusal goes out at once, carrying the seq it was judged at
 * (`at`), which the client does not count as a vote against a later decision.
 */
import { assert } from "../../wire/assert.ts";

/** How long one answer may wait for its replica to execute `after`. */
export const GATE_WAIT_MS_MAX = 5_000;
/** Answers held per client connection. */
export const GATE_HELD_PER_SESSION_MAX = 256;
/** Answers held in all. */
export const GATE_HELD_MAX = 16_384;

export interface GateLimits {
  readonly waitMsMax: number;
  readonly perSessionMax: number;
  readonly totalMax: number;
}

export const DEFAULT_GATE_LIMITS: GateLimits = {
  waitMsMax: GATE_WAIT_MS_MAX,
  perSessionMax: GATE_HELD_PER_SESSION_MAX,
  totalMax: GATE_HELD_MAX,
};

interface Held {
  readonly session: number;
  readonly after: number;
  readonly deadlineMs: number;
  /**
   * Judges again: the replica's state has reached `after` (false), or the wait is over
   * (true: answer as things are, do not hold again).
   */
  readonly retry: (expired: boolean) => void;
}

export class ExecutionGate {
  /** Held answers in order of `after`, then arrival. */
  private held: Held[] = [];
  private readonly perSession = new Map<number, number>();

  constructor(private readonly limits: GateLimits = DEFAULT_GATE_LIMITS) {}

  get size(): number {
    return this.held.length;
  }

  /**
   * Holds `retry` until `lastExecuted` reaches `after`. Returns false (the caller answers
   * now) when there is nothing to wait for or a bound is reached.
   */
  hold(session: number, after: number | undefined, lastExecuted: number, nowMs: number, retry: (expired: boolean) => void): boolean {
    if (after === undefined || after <= lastExecuted) return false;
    const mine = this.perSession.get(session) ?? 0;
    if (mine >= this.limits.perSessionMax || this.held.length >= this.limits.totalMax) return false;
    this.perSession.set(session, mine + 1);
    const entry: Held = { session, after, deadlineMs: nowMs + this.limits.waitMsMax, retry };
    let index = this.held.length;
    while (index > 0 && (this.held[index - 1] as Held).after > after) index--;
    this.held.splice(index, 0, entry);
    assert(index === 0 || (this.held[index - 1] as Held).after <= after, "execution gate: held answers out of order");
    return true;
  }

  /** The replica executed through `lastExecuted`: judge again everything that waited for it. */
  advance(lastExecuted: number): void {
    let ready = 0;
    while (ready < this.held.length && (this.held[ready] as Held).after <= lastExecuted) ready++;
    if (ready === 0) return;
    this.release(this.held.splice(0, ready), false);
  }

  /** Judges again, as they are, the answers whose wait is over. */
  expire(nowMs: number): void {
    const due = this.held.filter((entry) => entry.deadlineMs <= nowMs);
    if (due.length === 0) return;
    this.held = this.held.filter((entry) => entry.deadlineMs > nowMs);
    this.release(due, true);
  }

  /** The connection closed: nothing it waited for is answered. */
  dropSession(session: number): void {
    if (!this.perSession.has(session)) return;
    this.held = this.held.filter((entry) => entry.session !== session);
    this.perSession.delete(session);
  }

  /** Retries run after the bookkeeping, so a retry that holds again sees its own count right. */
  private release(entries: readonly Held[], expired: boolean): void {
    for (const entry of entries) {
      const count = this.perSession.get(entry.session);
      assert(count !== undefined && count >= 1, "execution gate: a held answer its session does not count");
      const left = count - 1;
      if (left <= 0) this.perSession.delete(entry.session);
      else this.perSession.set(entry.session, left);
    }
    for (const entry of entries) entry.retry(expired);
  }
}
