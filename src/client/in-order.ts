/**
 * Answers in the order the questions were asked. A gateway connection (or `fitb pub`)
 * sends one line per event and must answer line by line in the same order, even when a
 * later event's outcome is known first: an event refused at once for its size, or one
 * published to another tag. InOrder takes the promises in order and hands their
 * outcomes to `emit` in that same order, with a bound on how many may be outstanding.
 */
import { QueueFullError } from "./errors.ts";

export type Settled<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: unknown };

interface Slot<T> {
  outcome: Settled<T> | null;
}

export class InOrder<T> {
  private readonly slots: Slot<T>[] = [];
  private readonly idleWaiters: (() => void)[] = [];

  constructor(
    private readonly emit: (outcome: Settled<T>) => void,
    readonly pendingMax: number,
  ) {
    if (!Number.isSafeInteger(pendingMax) || pendingMax < 1)
      throw new RangeError(`pendingMax must be a positive integer, got ${pendingMax}`);
  }

  /** Outcomes not yet emitted. */
  get pending(): number {
    return this.slots.length;
  }

  get isFull(): boolean {
    return this.slots.length >= this.pendingMax;
  }

  /** Takes the next promise; throws QueueFullError past the bound (check `isFull` first). */
  push(promise: Promise<T>): void {
    if (this.isFull) throw new QueueFullError(`${this.slots.length} answers outstanding; at most ${this.pendingMax}`);
    const slot: Slot<T> = { outcome: null };
    this.slots.push(slot);
    promise.then(
      (value) => this.settle(slot, { ok: true, value }),
      (error: unknown) => this.settle(slot, { ok: false, error }),
    );
  }

  /** Resolves once every outcome pushed so far has been emitted. */
  drained(): Promise<void> {
    if (this.slots.length === 0) return Promise.resolve();
    return new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  private settle(slot: Slot<T>, outcome: Settled<T>): void {
    slot.outcome = outcome;
    while (this.slots.length > 0 && (this.slots[0] as Slot<T>).outcome !== null) {
      this.emit((this.slots.shift() as Slot<T>).outcome as Settled<T>);
    }
    if (this.slots.length === 0) for (const wake of this.idleWaiters.splice(0)) wake();
  }
}
