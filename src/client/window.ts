/**
 * A bounded window of requests in flight, with a bounded FIFO of waiters. Replicas
 * refuse a client with more than their configured in-flight requests, so the client
 * keeps itself under that bound instead of finding out from errors. Waiters are served
 * in arrival order, which keeps the sequence numbers a client allocates in the order
 * its callers asked.
 */
import { ClientClosedError, QueueFullError } from "./errors.ts";

interface Waiter {
  readonly resolve: () => void;
  readonly reject: (error: Error) => void;
}

export class InflightWindow {
  private used = 0;
  private readonly waiters: Waiter[] = [];
  private closedError: Error | null = null;

  constructor(
    readonly size: number,
    readonly waitersMax: number,
  ) {
    if (!Number.isSafeInteger(size) || size < 1) throw new RangeError(`window size must be a positive integer, got ${size}`);
    if (!Number.isSafeInteger(waitersMax) || waitersMax < 0)
      throw new RangeError(`waitersMax must be a non-negative integer, got ${waitersMax}`);
  }

  get inUse(): number {
    return this.used;
  }

  get waiting(): number {
    return this.waiters.length;
  }

  /** Takes a slot now if one is free and nobody waits before us. */
  tryAcquire(): boolean {
    if (this.closedError !== null) return false;
    if (this.used >= this.size || this.waiters.length > 0) return false;
    this.used++;
    return true;
  }

  /** Resolves when a slot is ours; rejects with QueueFullError when too many already wait. */
  acquire(): Promise<void> {
    if (this.closedError !== null) return Promise.reject(this.closedError);
    if (this.tryAcquire()) return Promise.resolve();
    if (this.waiters.length >= this.waitersMax) {
      return Promise.reject(new QueueFullError(`${this.size} requests in flight and ${this.waitersMax} waiting; slow down`));
    }
    return new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** Returns a slot; the longest waiter gets it. */
  release(): void {
    if (this.used <= 0) throw new Error("InflightWindow.release without a matching acquire");
    const next = this.waiters.shift();
    if (next !== undefined) {
      next.resolve();
      return;
    }
    this.used--;
  }

  /** Rejects every waiter and every later acquire. */
  close(error: Error = new ClientClosedError()): void {
    if (this.closedError !== null) return;
    this.closedError = error;
    for (const waiter of this.waiters.splice(0)) waiter.reject(error);
  }
}
