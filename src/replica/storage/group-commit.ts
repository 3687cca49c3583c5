/**
 * Group commit: the writes of one event-loop turn go to disk in one transaction, and
 * every effect that depends on them (a peer message, a reply, an executed decision)
 * waits until that transaction is durable.
 *
 * The ordering core's contract (src/core/ordering/types.ts) is that a `persist` completes
 * before any effect that follows it in the core's output list. Committing once per
 * record would cost one fsync per record; here a write is only *staged*, and an effect is
 * *deferred* behind every write staged before it. At the end of the turn (setImmediate)
 * one transaction commits everything staged, and the deferred effects then run in the
 * order they were deferred. An effect with no write staged before it, and nothing
 * deferred ahead of it, runs at once.
 *
 * Effects may stage and defer more (executing a decision takes a checkpoint, which the
 * core then persists); those wait for the next commit within the same flush, so order
 * and the persist-before-effect rule hold across any depth of such chains.
 */

/** A write, run inside the next transaction. */
export type StagedWrite = () => void;

/** Effects deferred at once; past this a flush runs inline to bound memory. */
export const DEFERRED_EFFECTS_MAX = 65_536;

export interface GroupCommitOptions {
  /** Runs every staged write in one transaction and returns once it is durable. */
  readonly commit: (writes: readonly StagedWrite[]) => void;
  /** A commit failed: nothing that depends on it may happen. Must not return normally. */
  readonly onFailure: (error: unknown) => never;
  /** Schedules the end-of-turn flush; setImmediate by default. */
  readonly schedule?: (run: () => void) => void;
  /** Called after each commit with the number of writes and the time it took. */
  readonly onCommit?: (writes: number, ms: number) => void;
}

interface Deferred {
  readonly effect: () => void;
  /** The writes staged before this effect: all must be committed before it runs. */
  readonly after: number;
}

export class GroupCommit {
  private staged: StagedWrite[] = [];
  /** Writes staged ever, and writes committed ever: an effect waits for `after <= committed`. */
  private stagedTotal = 0;
  private committedTotal = 0;
  private deferred: Deferred[] = [];
  private deferredHead = 0;
  private scheduled = false;
  private flushing = false;
  private closed = false;

  constructor(private readonly options: GroupCommitOptions) {}

  /** Writes staged and not yet committed. */
  get pendingWrites(): number {
    return this.stagedTotal - this.committedTotal;
  }

  /** Effects waiting for a commit. */
  get pendingEffects(): number {
    return this.deferred.length - this.deferredHead;
  }

  /** Stages a write for the next transaction. */
  stage(write: StagedWrite): void {
    // After a clean stop nothing may reach the disk any more; a message still in flight
    // then is as good as one that arrived after the stop.
    if (this.closed) return;
    this.staged.push(write);
    this.stagedTotal++;
    this.scheduleFlush();
  }

  /**
   * Runs `effect` once every write staged so far is durable: at once if none is pending
   * and no earlier effect waits, else in order after the next commit.
   */
  defer(effect: () => void): void {
    if (!this.flushing && this.pendingEffects === 0 && this.pendingWrites === 0) {
      effect();
      return;
    }
    this.deferred.push({ effect, after: this.stagedTotal });
    this.scheduleFlush();
    if (!this.flushing && this.pendingEffects > DEFERRED_EFFECTS_MAX) this.flush();
  }

  /** Commits what is staged and runs the effects that were waiting for it, until none is left. */
  flush(): void {
    if (this.flushing) return;
    this.flushing = true;
    try {
      while (this.pendingEffects > 0) {
        const next = this.deferred[this.deferredHead] as Deferred;
        if (next.after > this.committedTotal) this.commitStaged();
        this.deferredHead++;
        next.effect();
      }
      this.deferred = [];
      this.deferredHead = 0;
      if (this.pendingWrites > 0) this.commitStaged();
    } finally {
      this.flushing = false;
    }
  }

  /** Commits and stops accepting writes (a clean stop). */
  close(): void {
    this.flush();
    this.closed = true;
  }

  private commitStaged(): void {
    const writes = this.staged;
    this.staged = [];
    const started = performance.now();
    try {
      this.options.commit(writes);
    } catch (error) {
      this.options.onFailure(error);
    }
    this.committedTotal += writes.length;
    this.options.onCommit?.(writes.length, performance.now() - started);
  }

  private scheduleFlush(): void {
    if (this.scheduled || this.closed) return;
    this.scheduled = true;
    const schedule = this.options.schedule ?? ((run: () => void) => void setImmediate(run));
    schedule(() => {
      this.scheduled = false;
      this.flush();
    });
  }
}
