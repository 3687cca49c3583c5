/**
 * A framed TCP connection on the replica side: cuts incoming bytes into frames with the
 * wire's FrameDecoder and writes outgoing frames through a bounded queue that honours
 * the socket's backpressure (src/net/write-queue.ts, the same queue the client uses).
 * Bun's socket.write may take only part of a buffer; what it does not take waits there
 * until `drain`. The queue is bounded in bytes so that a peer or client that stops
 * reading cannot make the replica grow memory: at the bound the caller decides (drop a
 * consensus message, end a slow subscription, or close).
 */
import type { Socket } from "bun";
import { type DecodeResult, encodeFrame, FrameDecoder } from "../../wire/frame.ts";
import { encodeFrameBody, type Frame } from "../../wire/schemas.ts";
import { WriteQueue, type ByteSink } from "../net/write-queue.ts";

/** Default bound of bytes waiting to be written to one connection. */
export const OUTBOUND_BYTES_MAX_DEFAULT = 16 * 1024 * 1024;

export interface FramedHandlers {
  onFrames(conn: FramedConn, results: DecodeResult[]): void;
  onClose(conn: FramedConn): void;
}

export class FramedConn {
  readonly decoder: FrameDecoder;
  private readonly queue: WriteQueue;
  /**
   * Writes to the socket. A write refused because the socket is already closing (-1)
   * counts as nothing taken: the bytes wait in the queue until the close handler drops
   * the connection, and the caller is not told otherwise.
   */
  private readonly sink: ByteSink;
  private closed = false;
  /** Opaque per-connection state owned by whoever handles the frames. */
  state: unknown = null;

  constructor(
    private readonly socket: Socket<unknown>,
    frameBytesMax: number,
    outboundBytesMax: number = OUTBOUND_BYTES_MAX_DEFAULT,
    readonly remote: string = socket.remoteAddress,
  ) {
    this.decoder = new FrameDecoder({ frameBytesMax, copyPayloads: true });
    this.queue = new WriteQueue(outboundBytesMax);
    this.sink = (data) => Math.max(this.socket.write(data), 0);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  get pendingBytes(): number {
    return this.queue.bufferedBytes;
  }

  /**
   * True if `bytes` more would stay within the outbound bound. Stricter than the queue's
   * own check: on the replica side even an idle connection takes no frame over the bound.
   */
  hasRoomFor(bytes: number): boolean {
    return this.queue.bufferedBytes + bytes <= this.queue.bytesMax;
  }

  /** Sends a typed frame. Returns false (and sends nothing) when the queue is full or closed. */
  /** Sends one frame; false (never a throw) if the connection is closed, full, or the frame cannot be encoded within the frame limit. */
  send(frame: Frame): boolean {
    let bytes: Uint8Array;
    try {
      bytes = encodeFrame(frame.type, encodeFrameBody(frame));
    } catch {
      return false;
    }
    return this.sendRaw(bytes);
  }

  /** Sends already-encoded frame bytes (used to fan one encoding out to many subscribers). */
  sendRaw(bytes: Uint8Array): boolean {
    if (this.closed) return false;
    if (!this.hasRoomFor(bytes.length)) return false;
    const result = this.queue.enqueue(this.sink, bytes);
    return result === "sent" || result === "queued";
  }

  /** Called from the socket's drain handler: writes what waits, in order. */
  drain(): void {
    if (this.closed) return;
    this.queue.flush(this.sink);
  }

  /** Ends the connection after flushing what the kernel accepts now. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.queue.clear();
    this.socket.end();
  }

  /** Sends one last frame (an ERROR, typically) and closes. */
  closeWith(frame: Frame): void {
    if (this.closed) return;
    this.send(frame);
    this.socket.flush();
    this.close();
  }
}
