/**
 * What one live tail holds for its page, in bytes: server-sent event messages queued here,
 * and the chunk written to the socket that the socket has not taken yet (the page has not
 * read it). No I/O: tail.ts writes what `take` returns and calls `drained` once the socket
 * took it.
 *
 * Why bytes, and why here: Bun pulls a response's stream into its own socket buffer
 * whether or not the client reads, so a bound on a stream's queue bounds nothing. The tail
 * writes one chunk at a time and waits for it to drain; meanwhile events queue here up to
 * `bytesMax`, and past it they are dropped and counted, and the page is told how many.
 */

/** Room kept in the budget for the few messages that are never dropped (ready, end, a drop notice). */
export const TAIL_NOTICES_MAX = 4;
/** Bytes of one notice at most: reasons are cut to fit. */
export const TAIL_NOTICE_BYTES_MAX = 512;
/** Characters of a reason shown in a notice; with its JSON escapes it stays under TAIL_NOTICE_BYTES_MAX. */
const NOTICE_REASON_CHARS_MAX = 60;

/** One server-sent event message: JSON keeps the data on one line. */
export function sseMessage(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

/** A reason short enough for a notice. */
export function noticeReason(reason: string): string {
  return reason.length <= NOTICE_REASON_CHARS_MAX ? reason : `${reason.slice(0, NOTICE_REASON_CHARS_MAX - 3)}...`;
}

export class TailBuffer {
  private queued: string[] = [];
  private queuedBytes = 0;
  private inFlightBytes = 0;
  private droppedSinceNotice = 0;
  /** Events dropped since the tail started. */
  droppedEvents = 0;
  /** The most bytes held at once since the tail started. */
  heldBytesPeak = 0;

  constructor(readonly bytesMax: number) {
    if (bytesMax <= TAIL_NOTICES_MAX * TAIL_NOTICE_BYTES_MAX)
      throw new Error(`a tail's byte budget (${bytesMax}) must exceed its notices' room`);
  }

  /** Bytes queued plus bytes written and not yet taken by the socket: never above bytesMax. */
  get heldBytes(): number {
    return this.queuedBytes + this.inFlightBytes;
  }

  /** Whether a chunk is written and not drained yet. */
  get inFlight(): boolean {
    return this.inFlightBytes > 0;
  }

  /**
   * Queues an "event" or "vouch" message, or drops it when it would leave no room for the
   * notices. A dropped event is counted for the page; a dropped vouch only leaves a row's
   * count behind, which the next vouch for that batch corrects.
   */
  offer(kind: "event" | "vouch", message: string): boolean {
    const bytes = Buffer.byteLength(message);
    if (this.heldBytes + bytes > this.bytesMax - TAIL_NOTICES_MAX * TAIL_NOTICE_BYTES_MAX) {
      if (kind === "event") {
        this.droppedEvents++;
        this.droppedSinceNotice++;
      }
      return false;
    }
    this.push(message, bytes);
    return true;
  }

  /** Queues a message that is never dropped ("ready", "end"); at most TAIL_NOTICE_BYTES_MAX. */
  offerNotice(message: string): void {
    const bytes = Buffer.byteLength(message);
    if (bytes > TAIL_NOTICE_BYTES_MAX) throw new Error(`a tail notice of ${bytes} bytes exceeds ${TAIL_NOTICE_BYTES_MAX}`);
    this.push(message, bytes);
  }

  /**
   * Everything queued as one chunk, now in flight, ending with a notice of the events
   * dropped since the last one; null when nothing waits. Only one chunk is in flight.
   */
  take(): string | null {
    if (this.inFlight) throw new Error("a tail chunk is taken while the last one is in flight");
    if (this.droppedSinceNotice > 0) {
      const dropped = this.droppedSinceNotice;
      this.droppedSinceNotice = 0;
      this.offerNotice(sseMessage("dropped", { count: dropped, reason: `${dropped} events dropped: the page did not keep up` }));
    }
    if (this.queued.length === 0) return null;
    const chunk = this.queued.join("");
    this.inFlightBytes = this.queuedBytes;
    this.queued = [];
    this.queuedBytes = 0;
    return chunk;
  }

  /** The chunk taken last has been taken by the socket. */
  drained(): void {
    this.inFlightBytes = 0;
  }

  private push(message: string, bytes: number): void {
    this.queued.push(message);
    this.queuedBytes += bytes;
    this.heldBytesPeak = Math.max(this.heldBytesPeak, this.heldBytes);
    if (this.heldBytes > this.bytesMax) throw new Error(`a tail holds ${this.heldBytes} bytes, over its budget of ${this.bytesMax}`);
  }
}
