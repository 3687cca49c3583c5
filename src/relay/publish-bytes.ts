/**
 * The relay's byte bound on publishes, shared by every connection: each tag's Publisher
 * bounds its own queue, and this bounds all of them together. A publish takes its event's
 * bytes when it is handed to a publisher and gives them back once it is answered (acked
 * or failed), so what counts is everything the relay holds for publishes, queued or in
 * flight to the replicas.
 */
export class PublishBytesBudget {
  private heldBytes = 0;

  constructor(readonly bytesMax: number) {
    if (!Number.isSafeInteger(bytesMax) || bytesMax < 1)
      throw new RangeError(`publish bytes bound must be a positive integer, got ${bytesMax}`);
  }

  /** Event bytes of publishes not yet answered. */
  get usedBytes(): number {
    return this.heldBytes;
  }

  /**
   * Takes `bytes` for one publish, or returns why not. An idle relay always takes one
   * event, however large: the bound is on what piles up, and refusing an event that is
   * alone over it would refuse it for ever.
   */
  take(bytes: number): string | null {
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw new RangeError(`publish of ${bytes} bytes`);
    if (this.heldBytes > 0 && this.heldBytes + bytes > this.bytesMax) {
      return `the relay holds ${this.heldBytes} bytes of events not yet acknowledged; at most ${this.bytesMax}`;
    }
    this.heldBytes += bytes;
    return null;
  }

  /** Gives back what `take` took, once the publish is answered. */
  release(bytes: number): void {
    if (bytes > this.heldBytes) throw new Error(`releasing ${bytes} publish bytes with only ${this.heldBytes} held`);
    this.heldBytes -= bytes;
  }
}
