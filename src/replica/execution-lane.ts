/**
 * The execution lane: a decided batch runs as soon as it is decided, not behind the disk
 * syncs of the effects deferred before it (core/ordering/PROTOCOL.md §2, "Execution does
 * not wait for other seqs' records").
 *
 * The group commit runs every effect after the writes staged before it are durable, in
 * the order the effects were deferred. A `decide` effect was therefore held behind the
 * fsync of whatever was staged before it: under load, the `accept` and `prepared` records
 * of later seqs (a flood's megabyte batches among them) and the COMMITs waiting for them.
 * Traced on a critical channel beside a saturated bulk one, the wait from a decision to
 * its execution was 1.4 ms at p90 and 8.6 ms at p99 at the leader (README, Performance).
 *
 * Executing a decided batch needs none of the records of *other* seqs to be durable. Its
 * decision rests on Q COMMITs, each sent only once its sender's `prepared` record (in crash
 * mode its `accept`) was durable; this replica's own COMMIT is among them when the
 * decision's certificate names it (the core takes it only when Q others are not there),
 * and it was counted as soon as this replica prepared, so the execution then waits for this
 * replica's own vote records of that seq (the `fence` the driver passes: ordering-driver.ts
 * keeps the mark of the last `accept` or `prepared` record staged for each seq), and always
 * for its `view`, `stable` and `snapshot` records (the marks its votes wait for too). A crash after it then loses nothing the
 * group cannot decide again identically: the argument that already lets execution go
 * without its own `decided` record. What the execution must keep is its order: decisions,
 * the checkpoints they take, replies resent for executed requests, snapshot installs and
 * epoch switches run in the order the core and the runtime produced them, and every effect
 * deferred after one of them still runs after it. So an execution effect goes at once
 * ("ahead") only when no execution effect is waiting or running and its fence is durable
 * (never after an fsync failed); otherwise it is deferred in order behind everything staged
 * before it, exactly as before, and those that follow wait behind it.
 */

/** What the lane needs of the group commit (storage/index.ts). */
export interface LaneStorage {
  /** Whether the first `mark` writes ever staged are durable. */
  isDurable(mark: number): boolean;
  /** Runs `effect` once the first `mark` writes are durable, after the effects deferred before it. */
  afterDurable(effect: () => void, mark: number): void;
  /** Effects deferred and still waiting: what an effect run at once goes ahead of. */
  readonly pendingEffects: number;
}

export class ExecutionLane {
  /** Execution effects deferred and not yet run. */
  private queued = 0;
  private running = false;
  /** Execution effects that ran at once while other effects still waited for the disk (for metrics and tests). */
  ranAhead = 0;

  /** `onAhead`: called for each effect that went ahead (a metric). */
  constructor(
    private readonly storage: LaneStorage,
    private readonly onAhead: () => void = () => {},
  ) {}

  /** Execution effects deferred and not yet run. */
  get waiting(): number {
    return this.queued;
  }

  /**
   * Runs `effect` in the lane's order: at once when `ahead` allows it and the first `fence`
   * writes (the records it depends on) are durable, else once the first `mark` writes are
   * durable, in the group commit's order. `ahead` false (a snapshot install, an epoch
   * switch) always defers, and every execution effect after it waits for it.
   */
  run(effect: () => void, mark: number, ahead: boolean, fence: number): void {
    if (ahead && this.queued === 0 && !this.running && this.storage.isDurable(fence)) {
      if (this.storage.pendingEffects > 0) {
        this.ranAhead++;
        this.onAhead();
      }
      this.guarded(effect);
      return;
    }
    this.queued++;
    this.storage.afterDurable(() => {
      this.queued--;
      this.guarded(effect);
    }, mark);
  }

  /** An execution effect that makes another (a checkpoint taken defers its own) never runs that one inside itself. */
  private guarded(effect: () => void): void {
    const outer = this.running;
    this.running = true;
    try {
      effect();
    } finally {
      this.running = outer;
    }
  }
}
