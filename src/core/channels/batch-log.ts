/**
 * The stored batches of one channel: a queue with consecutive sequence numbers, trimmed
 * from the front by retention, read from any retained seq.
 *
 * On total-order channels the log is also a hash chain: each record carries
 * `chainAfter = hash(canonical([chainBefore, firstSeq, count, tsMs, publisher, pubSeq,
 * requestDigest]))`. The chain head therefore commits to the whole history of the
 * channel, and a state digest needs only the head, not a pass over every retained batch.
 * `baseChain` is the chain value just before the oldest retained batch; a snapshot
 * carries it so that a restored replica can recompute the head from the batches.
 */
import { encodeCanonical } from "../../../wire/canonical.ts";
import type { HashFn, RetentionLimits, StoredBatch } from "./types.ts";

/** A stored batch plus what the log needs to chain and account for it. */
export type BatchRecord = StoredBatch & {
  /** Stored bytes counted by retention: body + signature. */
  readonly bytes: number;
  /** The chain value after this batch; empty on unordered channels. */
  readonly chainAfter: Uint8Array;
};

/** The chain value before the first batch a channel ever stored. */
export const CHAIN_GENESIS = new Uint8Array(32);

/** Computes the chain value after appending a batch (total-order channels only). */
export function chainNext(
  hash: HashFn,
  chainBefore: Uint8Array,
  batch: Omit<StoredBatch, "body" | "sig">,
  requestDigest: Uint8Array,
): Uint8Array {
  return hash(encodeCanonical([chainBefore, batch.firstSeq, batch.count, batch.tsMs, batch.publisher, batch.pubSeq, requestDigest]));
}

/** The trigger of a trim: a new batch (count and bytes) and, if given, a point in time. */
type TrimCause = { readonly nowMs: number | null };

export class BatchLog {
  private items: BatchRecord[] = [];
  /** Index of the oldest retained record in `items` (front removal without shifting). */
  private head = 0;
  private eventCount = 0;
  private byteCount = 0;

  /**
   * @param nextSeq the seq the next batch receives
   * @param baseChain the chain value before the oldest retained batch (total order)
   */
  constructor(
    private next: number,
    private base: Uint8Array,
  ) {}

  get nextSeq(): number {
    return this.next;
  }

  /** The oldest retained seq; equals nextSeq when nothing is retained. */
  get oldestSeq(): number {
    return this.items[this.head]?.firstSeq ?? this.next;
  }

  get baseChain(): Uint8Array {
    return this.base;
  }

  /** The chain value after the newest batch, whether or not it is still retained. */
  get headChain(): Uint8Array {
    return this.items[this.items.length - 1]?.chainAfter ?? this.base;
  }

  get batchCount(): number {
    return this.items.length - this.head;
  }

  get events(): number {
    return this.eventCount;
  }

  get bytes(): number {
    return this.byteCount;
  }

  /** Appends a record whose firstSeq must be nextSeq. */
  append(record: BatchRecord): void {
    if (record.firstSeq !== this.next) throw new Error(`append at ${record.firstSeq}, expected ${this.next}`);
    if (record.count < 1) throw new Error("a batch holds at least one event");
    this.items.push(record);
    this.next = record.firstSeq + record.count;
    this.eventCount += record.count;
    this.byteCount += record.bytes;
  }

  /** The newest retained record, among the last `maxScan`, that `match` accepts; null if none. */
  findRecent(match: (record: BatchRecord) => boolean, maxScan: number): BatchRecord | null {
    const stop = Math.max(this.head, this.items.length - maxScan);
    for (let i = this.items.length - 1; i >= stop; i--) {
      const record = this.items[i] as BatchRecord;
      if (match(record)) return record;
    }
    return null;
  }

  /** The retained records, oldest first (a copy of the references). */
  records(): BatchRecord[] {
    return this.items.slice(this.head);
  }

  /**
   * Removes the oldest batches until the log fits the limits. Count and bytes never
   * remove the newest batch, so what a publish stored stays readable; configuration
   * guarantees one request fits the limits anyway. Age removes every batch whose
   * timestamp is at or before `nowMs - ageMs`, scanning from the front and stopping at
   * the first younger one (the same stopping point at every replica). `onRemoved` sees
   * each removed record, oldest first.
   */
  trim(limits: RetentionLimits, cause: TrimCause, onRemoved?: (record: BatchRecord) => void): number {
    let removed = 0;
    while (this.batchCount > 1 && (this.eventCount > limits.events || this.byteCount > limits.bytes)) {
      const record = this.removeOldest();
      onRemoved?.(record);
      removed++;
    }
    if (cause.nowMs !== null && limits.ageMs > 0) {
      const cutoffMs = cause.nowMs - limits.ageMs;
      while (this.batchCount > 0 && (this.items[this.head] as BatchRecord).tsMs <= cutoffMs) {
        const record = this.removeOldest();
        onRemoved?.(record);
        removed++;
      }
    }
    this.compact();
    return removed;
  }

  /**
   * Up to `maxBatches` records from the one holding `fromSeq` on. The caller has checked
   * oldestSeq <= fromSeq; a fromSeq at or past nextSeq yields nothing.
   */
  readFrom(fromSeq: number, maxBatches: number): BatchRecord[] {
    if (fromSeq >= this.next) return [];
    const start = this.indexHolding(fromSeq);
    return this.items.slice(start, Math.min(start + maxBatches, this.items.length));
  }

  /** Binary search for the record holding seq (oldestSeq <= seq < nextSeq). */
  private indexHolding(seq: number): number {
    let lo = this.head;
    let hi = this.items.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if ((this.items[mid] as BatchRecord).firstSeq <= seq) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  private removeOldest(): BatchRecord {
    const oldest = this.items[this.head] as BatchRecord;
    this.head++;
    this.eventCount -= oldest.count;
    this.byteCount -= oldest.bytes;
    this.base = oldest.chainAfter;
    return oldest;
  }

  /** Drops removed slots once they are the larger part of the array (amortized O(1)). */
  private compact(): void {
    if (this.head > 0 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
  }
}
