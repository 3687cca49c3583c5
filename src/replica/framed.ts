/**
 * A framed TCP connection on the replica side: cuts incoming bytes into frames with the
 * wire's FrameDecoder and writes outgoing frames through a bounded queue that honours
 * the socket's backpressure. Bun's socket.write may take only part of a buffer; what it
 * does not take waits here until `drain`. The queue is bounded in bytes so that a peer or
 * client that stops reading cannot make the replica grow memory: at the bound the caller
 * decides (drop a consensus message, end a slow subscription, or close).
 */
import type { Socket } from "bun";
import { type DecodeResult, encodeFrame, FrameDecoder } from "../../wire/frame.ts";
import { encodeFrameBody, type Frame } from "../../wire/schemas.ts";

/** Default bound of bytes waiting to be written to one connection. */
export const OUTBOUND_BYTES_MAX_DEFAULT = 16 * 1024 * 1024;

export interface FramedHandlers {
  onFrames(conn: FramedConn, results: DecodeResult[]): void;
  onClose(conn: FramedConn): void;
}

export class FramedConn {
  readonly decoder: FrameDecoder;
  private queue: Uint8Array[] = [];
  private queuedBytes = 0;
  private closed = false;
  /** Opaque per-connection state owned by whoever handles the frames. */
  state: unknown = null;

  constructor(
    private readonly socket: Socket<unknown>,
    frameBytesMax: number,
    private readonly outboundBytesMax: number = OUTBOUND_BYTES_MAX_DEFAULT,
    readonly remote: string = socket.remoteAddress,
  ) {
    this.decoder = new FrameDecoder({ frameBytesMax, copyPayloads: true });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  get pendingBytes(): number {
    return this.queuedBytes;
  }

  /** True if `bytes` more would stay within the outbound bound. */
  hasRoomFor(bytes: number): boolean {
    return this.queuedBytes + bytes <= this.outboundBytesMax;
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
    if (this.queue.length === 0) {
      const written = this.socket.write(bytes);
      if (written === bytes.length) return true;
      const rest = bytes.subarray(Math.max(written, 0));
      this.queue.push(rest);
      this.queuedBytes += rest.length;
      return true;
    }
    this.queue.push(bytes);
    this.queuedBytes += bytes.length;
    return true;
  }

  /** Called from the socket's drain handler: writes what waits, in order. */
  drain(): void {
    while (this.queue.length > 0 && !this.closed) {
      const head = this.queue[0] as Uint8Array;
      const written = this.socket.write(head);
      if (written <= 0) return;
      this.queuedBytes -= written;
      if (written < head.length) {
        this.queue[0] = head.subarray(written);
        return;
      }
      this.queue.shift();
    }
  }

  /** Ends the connection after flushing what the kernel accepts now. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.queue = [];
    this.queuedBytes = 0;
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
