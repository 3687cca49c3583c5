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
 *
 * Overlapped fsync (`sync` given): a commit then only writes its transaction (to the
 * operating system), and durability comes from an fsync run off the event loop. While
 * one fsync is in flight the loop goes on: later turns write their transactions, and one
 * more fsync starts when the first returns if something waits for them, covering all of
 * them. An effect still runs only once every write staged before it is covered by a
 * completed fsync, so the rule is the same; what changes is that the log writes of
 * consecutive sequence numbers no longer wait for each other's fsync, and the event loop
 * is not blocked while the disk syncs.
 *
 * An fsync starts only when an effect waits for it. Writes no effect waits for (a vote's
 * own `accept` record, sent ahead of its fsync; a `decided` record) are covered by the
 * next fsync that an effect needs, or by `syncIdle` (called on a timer) if none comes:
 * syncing them at once cost each ordered seq two or three fsyncs where one is needed,
 * and queued the fsync its COMMIT waits for behind one that nothing waited for.
 */

/** A write, run inside the next transaction. */
export type StagedWrite = () => void;

/** Effects deferred at once; past this a flush runs inline to bound memory. */
export const DEFERRED_EFFECTS_MAX = 65_536;
/** Run effects at the head of the queue past which it is cut (dropDone). */
const DONE_PREFIX_CUT = 1_024;

export interface GroupCommitOptions {
  /** Runs every staged write in one transaction and returns once it is durable. */
  readonly commit: (writes: readonly StagedWrite[]) => void;
  /** A commit failed: nothing that depends on it may happen. Must not return normally. */
  readonly onFailure: (error: unknown) => never;
  /** Schedules the end-of-turn flush; setImmediate by default. */
  readonly schedule?: (run: () => void) => void;
  /** Called after each commit with the number of writes and the time it took. */
  readonly onCommit?: (writes: number, ms: number) => void;
  /**
   * Present when `commit` only writes (not durable yet): makes every transaction committed
   * so far durable, `later` off the event loop, `now` before returning. Absent: `commit`
   * itself returns once durable.
   */
  readonly sync?: {
    readonly later: () => PromiseLike<void>;
    readonly now: () => void;
  };
}

interface Deferred {
  readonly effect: () => void;
  /** The writes staged before this effect: all must be committed before it runs. */
  readonly after: number;
}

/** What an entry becomes once run, so its closure (a message, a batch) is let go at once. */
const DONE: Deferred = { effect: () => {}, after: 0 };

export class GroupCommit {
  private staged: StagedWrite[] = [];
  /**
   * Writes staged ever, committed (written) ever, and made durable ever: an effect waits
   * for `after <= durable`. Without `sync`, committed and durable move together.
   */
  private stagedTotal = 0;
  private committedTotal = 0;
  private durableTotal = 0;
  /** An fsync in flight (overlapped mode). */
  private syncing = false;
  /** `committedTotal` at the previous `syncIdle`: what the next one makes durable if nothing did. */
  private committedAtIdle = 0;
  /** Writes a `syncIdle` found due: an fsync is started for them as soon as none is in flight. */
  private idleDue = 0;
  /** An fsync failed: nothing is durable past it, whatever a later fsync says (its pages may be lost). */
  private failed = false;
  private deferred: Deferred[] = [];
  private deferredHead = 0;
  private scheduled = false;
  private flushing = false;
  private closed = false;

  constructor(private readonly options: GroupCommitOptions) {}

  /** Writes staged and not yet durable. */
  get pendingWrites(): number {
    return this.stagedTotal - this.durableTotal;
  }

  /** Effects waiting for a commit. */
  get pendingEffects(): number {
    return this.deferred.length - this.deferredHead;
  }

  /** Entries the queue holds, run or not (tests: the run ones are let go). */
  get heldEffects(): number {
    return this.deferred.length;
  }

  /**
   * Lets the effects already run go. Under steady load an fsync is always in flight and
   * some effect always waits for it, so the queue is never empty at the end of a flush:
   * its run prefix is cut once it is most of the queue (amortized O(1) per effect), not
   * only when nothing waits.
   */
  private dropDone(): void {
    if (this.pendingEffects === 0) {
      this.deferred = [];
      this.deferredHead = 0;
    } else if (this.deferredHead >= DONE_PREFIX_CUT && this.deferredHead * 2 >= this.deferred.length) {
      this.deferred = this.deferred.slice(this.deferredHead);
      this.deferredHead = 0;
    }
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

  /** Writes staged ever: a mark for `defer`. */
  get stagedCount(): number {
    return this.stagedTotal;
  }

  /**
   * Runs `effect` once every write staged so far (or the first `after` writes ever staged,
   * a mark taken earlier from `stagedCount`) is durable: at once if those are and no
   * earlier effect waits, else in order after the next commit. Marks must not decrease
   * from one deferred effect to the next.
   */
  defer(effect: () => void, after = this.stagedTotal): void {
    if (!this.flushing && this.pendingEffects === 0 && after <= this.durableTotal) {
      effect();
      return;
    }
    this.deferred.push({ effect, after });
    this.scheduleFlush();
    if (!this.flushing && this.pendingEffects > DEFERRED_EFFECTS_MAX) this.flush(true);
  }

  /**
   * Runs `effect` once the first `after` writes ever staged are durable, ahead of the
   * effects deferred in order: at once if they are, else after them. For an effect that
   * depends on those writes only (core/ordering/PROTOCOL.md §2, "Votes sent before their
   * fsync"), not on everything staged before it.
   */
  deferAhead(effect: () => void, after: number): void {
    if (after <= this.durableTotal) {
      effect();
      return;
    }
    this.defer(effect, Math.max(after, this.deferred[this.deferred.length - 1]?.after ?? 0));
  }

  /**
   * Commits what is staged and runs the effects that were waiting for it, until none is
   * left. In overlapped mode it runs the effects already durable and starts an fsync for
   * the rest (they run when it returns), unless `waitDurable`: then it fsyncs in place.
   */
  flush(waitDurable = false): void {
    if (this.flushing) return;
    this.flushing = true;
    try {
      while (this.pendingEffects > 0) {
        const next = this.deferred[this.deferredHead] as Deferred;
        if (next.after > this.committedTotal) this.commitStaged();
        if (next.after > this.durableTotal) {
          if (!waitDurable) break;
          this.syncNow();
        }
        this.deferred[this.deferredHead] = DONE;
        this.deferredHead++;
        next.effect();
      }
      this.dropDone();
      if (this.stagedTotal > this.committedTotal) this.commitStaged();
      if (this.committedTotal > this.durableTotal) {
        if (waitDurable) this.syncNow();
        else if (this.pendingEffects > 0 || this.durableTotal < this.idleDue) this.syncLater();
        // Else nothing waits for them: the next fsync an effect needs covers them, or syncIdle.
      }
    } finally {
      this.flushing = false;
    }
  }

  /**
   * For a timer (the ordering driver's tick): starts an fsync of everything committed if
   * writes committed before the previous call are still not durable, because no effect
   * waited for them; with an fsync in flight, the next starts when it returns. So a write
   * is durable within two calls and an fsync, and one younger than a call waits for the
   * fsync an effect will likely ask for soon (at moderate load the COMMIT of the next
   * step) instead of holding that fsync up behind its own.
   */
  syncIdle(): void {
    const due = this.committedAtIdle;
    this.committedAtIdle = this.committedTotal;
    if (this.closed || this.durableTotal >= due) return;
    this.idleDue = Math.max(this.idleDue, due);
    if (!this.flushing) this.syncLater();
  }

  /** Commits, makes everything durable, runs every effect, and stops accepting writes (a clean stop). */
  close(): void {
    this.flush(true);
    // Effects run by that flush may have staged more; it committed them, and synced them.
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
    if (this.options.sync === undefined) {
      this.durableTotal = this.committedTotal;
      this.options.onCommit?.(writes.length, performance.now() - started);
    } else {
      this.writtenUnsynced += writes.length;
    }
  }

  /** Writes committed and not yet covered by an fsync that started (overlapped mode; for onCommit). */
  private writtenUnsynced = 0;

  /** Makes every committed write durable before returning (overlapped mode). */
  private syncNow(): void {
    const sync = this.options.sync;
    if (sync === undefined || this.durableTotal >= this.committedTotal) return;
    if (this.failed) this.options.onFailure(new Error("an earlier fsync failed"));
    const target = this.committedTotal;
    const writes = this.writtenUnsynced;
    this.writtenUnsynced = 0;
    const started = performance.now();
    try {
      sync.now();
    } catch (error) {
      this.options.onFailure(error);
    }
    this.durableTotal = Math.max(this.durableTotal, target);
    this.options.onCommit?.(writes, performance.now() - started);
  }

  /**
   * Starts an fsync of everything committed so far, off the event loop, unless one is in
   * flight: then the flush its return schedules starts the next if an effect or syncIdle
   * still waits (one at a time, each covering all that was committed before it started).
   * The effects it covers run when it returns.
   */
  private syncLater(): void {
    const sync = this.options.sync;
    if (sync === undefined || this.syncing || this.failed || this.durableTotal >= this.committedTotal) return;
    this.syncing = true;
    const target = this.committedTotal;
    const writes = this.writtenUnsynced;
    this.writtenUnsynced = 0;
    const started = performance.now();
    sync.later().then(
      () => {
        this.syncing = false;
        if (this.failed) return;
        this.durableTotal = Math.max(this.durableTotal, target);
        this.options.onCommit?.(writes, performance.now() - started);
        // The effects run from the turn's flush, not inside a promise callback: an effect
        // that throws (a fatal error) then fails the turn as it does without the overlap.
        this.scheduleFlush();
      },
      (error: unknown) => {
        this.syncing = false;
        // Even after close(), which synced in place and ran the last effects: its fsync
        // went through a descriptor of its own (disk.ts), but this failure still says
        // pages written before it may be lost, and a reply may have gone out on them.
        this.failed = true;
        // Fails at the end of the turn like a commit that throws there, not as a rejected promise.
        this.schedule(() => this.options.onFailure(error));
      },
    );
  }

  /** Runs `run` after this event-loop turn, on the embedder's schedule (setImmediate by default). */
  schedule(run: () => void): void {
    (this.options.schedule ?? ((next: () => void) => void setImmediate(next)))(run);
  }

  private scheduleFlush(): void {
    if (this.scheduled || this.closed) return;
    this.scheduled = true;
    this.schedule(() => {
      this.scheduled = false;
      this.flush();
    });
  }
}
