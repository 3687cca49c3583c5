/**
 * The bounded write queue of one TCP connection, shared by both ends of the wire: the
 * client's connection to a replica (src/client/connection.ts), the relay's connection to
 * its local user (src/relay/connection.ts) and the replica's connections to clients and
 * peers (src/replica/framed.ts).
 *
 * Bun's socket.write is unbuffered: it takes what the kernel accepts and returns the
 * count. The rest waits here until the socket's `drain` callback, and the queue has a
 * byte bound, so a peer that stops reading (slow, or hostile) costs a bounded amount of
 * memory instead of all of it. At the bound the caller decides what to do (drop the
 * frame, end a slow subscription, or close).
 *
 * It knows nothing about sockets or frames: the caller passes the write function (a
 * ByteSink) to each call. Importable from src/client and src/replica alike (it imports
 * nothing), so neither layer imports the other.
 */

/** Where bytes go: returns how many were taken, or -1 when the socket is closed. */
export type ByteSink = (data: Uint8Array) => number;

export type EnqueueResult =
  | "sent" // all bytes were written now
  | "queued" // part or all waits for the socket to drain
  | "full" // refused: the queue is at its bound; nothing was written
  | "closed"; // the socket is closed; nothing was written (by enqueueParts: nothing after the parts it took before)

export class WriteQueue {
  private readonly chunks: Uint8Array[] = [];
  /** Bytes already written of chunks[0]. */
  private headOffset = 0;
  private queued = 0;

  constructor(readonly bytesMax: number) {
    if (!Number.isSafeInteger(bytesMax) || bytesMax < 1) throw new RangeError(`bytesMax must be a positive integer, got ${bytesMax}`);
  }

  /** Bytes waiting to be written. */
  get bufferedBytes(): number {
    return this.queued;
  }

  /** Whether `bytes` more would be accepted now. */
  hasRoomFor(bytes: number): boolean {
    return this.queued === 0 || this.queued + bytes <= this.bytesMax;
  }

  /**
   * Writes `data` now if nothing is queued, else queues it if the bound allows. An empty
   * queue always accepts (the frame itself is bounded by the frame size limit), so one
   * frame larger than the bound can still go out on an idle connection.
   *
   * `borrowed`: the caller writes over `data` once this returns (a client seals one
   * request's bytes for each replica in turn), so what waits here is a copy; what the
   * socket took at once is not copied at all.
   */
  enqueue(sink: ByteSink, data: Uint8Array, borrowed = false): EnqueueResult {
    if (this.queued > 0) {
      if (this.queued + data.byteLength > this.bytesMax) return "full";
      this.push(borrowed ? data.slice() : data);
      return "queued";
    }
    const written = sink(data);
    if (written < 0) return "closed";
    if (written >= data.byteLength) return "sent";
    this.push(borrowed ? data.slice(written) : data.subarray(written));
    return "queued";
  }

  /**
   * `enqueue` for data given as parts written one after another (a frame's head, a large
   * message many frames share, its tail): each part goes to the socket as it is, without
   * being copied into one buffer first. The bound counts all the parts.
   */
  enqueueParts(sink: ByteSink, parts: readonly Uint8Array[]): EnqueueResult {
    let total = 0;
    for (const part of parts) total += part.byteLength;
    if (this.queued > 0) {
      if (this.queued + total > this.bytesMax) return "full";
      for (const part of parts) if (part.byteLength > 0) this.push(part);
      return "queued";
    }
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i] as Uint8Array;
      if (part.byteLength === 0) continue;
      const written = sink(part);
      if (written < 0) return "closed";
      if (written < part.byteLength) {
        this.push(part.subarray(written));
        for (const rest of parts.slice(i + 1)) if (rest.byteLength > 0) this.push(rest);
        return "queued";
      }
    }
    return "sent";
  }

  /** Writes queued bytes until the socket pushes back; true when the queue is empty. */
  flush(sink: ByteSink): boolean {
    while (this.chunks.length > 0) {
      const head = this.chunks[0] as Uint8Array;
      const rest = this.headOffset === 0 ? head : head.subarray(this.headOffset);
      const written = sink(rest);
      if (written < 0) return false;
      this.queued -= written;
      if (written < rest.byteLength) {
        this.headOffset += written;
        return false;
      }
      this.chunks.shift();
      this.headOffset = 0;
    }
    return true;
  }

  /** Drops everything queued: the connection is gone (a client re-sends its requests on the next one). */
  clear(): void {
    this.chunks.length = 0;
    this.headOffset = 0;
    this.queued = 0;
  }

  private push(data: Uint8Array): void {
    this.chunks.push(data);
    this.queued += data.byteLength;
  }
}
