/**
 * The relay's count of output bytes waiting for readers, across every connection. Each
 * connection bounds its own output (`eventOutboundBytesMax`), but 2,048 connections at
 * that bound would hold gigabytes; this total lets a connection see that the relay as a
 * whole holds too much (`relayOutboundBytesMax`) and end a subscription whose reader is
 * already behind, instead of queueing more for it.
 *
 * Each connection reports what it holds now (`update`); the total is the sum of the
 * latest reports, so a connection that goes reports 0 and its bytes leave the total.
 */
export class RelayOutputBytes {
  private heldBytes = 0;

  constructor(readonly bytesMax: number) {
    if (!Number.isSafeInteger(bytesMax) || bytesMax < 1)
      throw new RangeError(`relay output bytes bound must be a positive integer, got ${bytesMax}`);
  }

  /** Output bytes waiting across every connection. */
  get usedBytes(): number {
    return this.heldBytes;
  }

  /** Whether `bytes` more would take the total past the bound. */
  wouldExceed(bytes: number): boolean {
    return this.heldBytes + bytes > this.bytesMax;
  }

  /** One connection's holding went from `before` to `after` bytes. */
  update(before: number, after: number): void {
    if (before > this.heldBytes) throw new Error(`a connection reported ${before} output bytes of only ${this.heldBytes} held`);
    this.heldBytes += after - before;
  }
}
