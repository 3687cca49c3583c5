/**
 * The delivery queue of one subscription: the bounded queue between the delivery voter
 * and the caller's handler. Delivered batches wait here and are handed to the handler one
 * call at a time (the pump), each call awaited before the next.
 *
 * It is bounded in events and in bytes (a count alone would let a few thousand large
 * events take gigabytes). What happens past a bound is the subscription's call: a
 * total-order one pauses here (`pause`), and once the queue has drained the queue says
 * so (`resume`) with the seq to read again from, so nothing is lost; an unordered one
 * drops the batch and says how many events.
 */
import type { DeliveredBatch } from "../core/voting/delivery-voter.ts";

/** Default bound on delivered events waiting for the caller's handler. */
export const DELIVERY_QUEUE_EVENTS_MAX_DEFAULT = 65_536;
/**
 * Default bound on the payload bytes of delivered events waiting for the caller's handler:
 * 64 of the largest events (EVENT_BYTES_MAX is 1 MiB), far less than the count bound
 * would allow at that size.
 */
export const DELIVERY_QUEUE_BYTES_MAX_DEFAULT = 64 * 1024 * 1024;

/** What the queue hands batches to, and tells about its state: the subscription. */
export interface DeliveryTarget {
  /** Hands one batch to the caller's handler; the queue awaits it before the next. */
  deliver(batch: DeliveredBatch): void | Promise<void>;
  /** The handler threw (or rejected) with `error`. */
  failed(error: unknown): void;
  /** Whether the subscription has ended: nothing more is handed over. */
  ended(): boolean;
  /** The queue drained after a pause: read again from `from`. */
  resume(from: number): void;
  /** The pump stopped with the subscription ended: nothing is being handed over now. */
  stopped(): void;
}

export type DeliveryEnqueueResult =
  | "queued" // waits for (or is already with) the handler
  | "paused" // dropped: delivery is paused, and what the voter still delivers is read again after the pause
  | "full"; // refused: past a bound, with something already queued

export class DeliveryQueue {
  private readonly queue: DeliveredBatch[] = [];
  private queuedEventCount = 0;
  private queuedByteCount = 0;
  private pumping = false;
  /** Total order: set while paused for a slow handler; where delivery resumes. */
  private pausedAtSeq: number | null = null;

  constructor(
    private readonly target: DeliveryTarget,
    readonly eventsMax: number = DELIVERY_QUEUE_EVENTS_MAX_DEFAULT,
    readonly bytesMax: number = DELIVERY_QUEUE_BYTES_MAX_DEFAULT,
  ) {
    if (!Number.isSafeInteger(eventsMax) || eventsMax < 1) throw new RangeError("queueEventsMax must be a positive integer");
    if (!Number.isSafeInteger(bytesMax) || bytesMax < 1) throw new RangeError("queueBytesMax must be a positive integer");
  }

  get queuedEvents(): number {
    return this.queuedEventCount;
  }

  /** Payload bytes of the queued events. */
  get queuedBytes(): number {
    return this.queuedByteCount;
  }

  /** Whether a handler call may be in progress (the pump is running). */
  get isPumping(): boolean {
    return this.pumping;
  }

  /** Where delivery resumes after a pause; null when not paused. */
  get pausedAt(): number | null {
    return this.pausedAtSeq;
  }

  enqueue(batch: DeliveredBatch): DeliveryEnqueueResult {
    // While paused, what the old voter still delivers is read again after the pause.
    if (this.pausedAtSeq !== null) return "paused";
    const count = batch.events.length;
    const bytes = payloadBytes(batch);
    // A batch always fits an empty queue, however large: the bounds are on what piles up
    // behind a slow handler, and a batch over them alone could never be delivered.
    const over = this.queuedEventCount + count > this.eventsMax || this.queuedByteCount + bytes > this.bytesMax;
    if (over && this.queue.length > 0) return "full";
    this.queue.push(batch);
    this.queuedEventCount += count;
    this.queuedByteCount += bytes;
    if (!this.pumping) void this.pump();
    return "queued";
  }

  /** Stops taking batches; once the queue has drained, the target resumes from `seq`. */
  pause(seq: number): void {
    this.pausedAtSeq = seq;
  }

  /** Drops everything queued (the subscription has ended). */
  clear(): void {
    this.queue.length = 0;
    this.queuedEventCount = 0;
    this.queuedByteCount = 0;
  }

  private async pump(): Promise<void> {
    this.pumping = true;
    try {
      while (this.queue.length > 0 && !this.target.ended()) {
        const batch = this.queue.shift() as DeliveredBatch;
        this.queuedEventCount -= batch.events.length;
        this.queuedByteCount -= payloadBytes(batch);
        await this.target.deliver(batch);
      }
    } catch (error) {
      this.target.failed(error);
    } finally {
      this.pumping = false;
    }
    if (this.pausedAtSeq !== null && this.queue.length === 0) this.resumeAfterPause();
    if (this.target.ended()) this.target.stopped();
  }

  private resumeAfterPause(): void {
    const from = this.pausedAtSeq;
    if (from === null || this.target.ended()) return;
    this.pausedAtSeq = null;
    this.target.resume(from);
  }
}

/** What a batch adds to the delivery queue's byte bound: its events' payloads. */
function payloadBytes(batch: DeliveredBatch): number {
  let bytes = 0;
  for (const event of batch.events) bytes += event.byteLength;
  return bytes;
}
