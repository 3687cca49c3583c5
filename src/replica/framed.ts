/**
 * A framed TCP connection on the replica side: cuts incoming bytes into frames with the
 * wire's FrameDecoder and writes outgoing frames through a bounded queue that honours
 * the socket's backpressure (src/net/write-queue.ts, the same queue the client uses).
 * Bun's socket.write may take only part of a buffer; what it does not take waits there
 * until `drain`. The queue is bounded in bytes so that a peer or client that stops
 * reading cannot make the replica grow memory: at the bound the caller decides (drop a
 * consensus message, end a slow subscription, or close).
 *
 * A client session's frames are coalesced (`coalesceWrites`): the frames sent in one
 * event-loop turn (a fan-out sends one EVENTS frame per subscription, and a connection may
 * carry many) are gathered and written with one socket write when the turn's synchronous
 * work is done, in a microtask, so the replica makes one system call per connection and
 * turn rather than one per frame. Gathered bytes count against the same bounds as queued
 * ones.
 */
import type { Socket } from "bun";
import { type DecodeResult, FrameDecoder } from "../../wire/frame.ts";
import { encodeTypedFrame, encodeTypedFrameWithTrailer, type Frame } from "../../wire/schemas.ts";
import { FRAME_BYTES_MAX, FRAME_HEADER_BYTES, FRAME_LENGTH_BYTES } from "../../wire/types.ts";
import { CLIENT_FRAME_MAC_BYTES, type SessionFraming, type SharedPayloadPrefix } from "../crypto/session.ts";
import { WriteQueue, type ByteSink, type EnqueueResult } from "../net/write-queue.ts";

/** Default bound of bytes waiting to be written to one connection. */
export const OUTBOUND_BYTES_MAX_DEFAULT = 16 * 1024 * 1024;

/**
 * One buffer, reused, that a turn's gathered frames are copied into for their socket write
 * (the write copies them into the kernel at once); a fresh one per turn would cost the
 * allocation and, for large fan-outs, the page faults of new memory. When the socket does
 * not take all of it the queue keeps the rest, and the buffer is the queue's from then on.
 */
let gatherScratch: Uint8Array | null = null;
const GATHER_SCRATCH_BYTES_MIN = 64 * 1024;
/** Larger turns get a buffer of their own rather than a scratch buffer this large kept for good. */
const GATHER_SCRATCH_BYTES_MAX = 4 * 1024 * 1024;

function gatherBuffer(bytes: number): Uint8Array {
  if (bytes > GATHER_SCRATCH_BYTES_MAX) return new Uint8Array(bytes);
  if (gatherScratch === null || gatherScratch.length < bytes) {
    gatherScratch = new Uint8Array(Math.max(GATHER_SCRATCH_BYTES_MIN, 2 ** Math.ceil(Math.log2(bytes))));
  }
  return gatherScratch.subarray(0, bytes);
}

/**
 * A bound on the bytes waiting in many connections' queues together (the replica's
 * client connections): each connection's own bound times the number of connections is
 * far more memory than a replica has.
 */
export class OutputBudget {
  private used = 0;

  constructor(readonly bytesMax: number) {
    if (!Number.isSafeInteger(bytesMax) || bytesMax < 1) throw new RangeError(`bytesMax must be a positive integer, got ${bytesMax}`);
  }

  get usedBytes(): number {
    return this.used;
  }

  hasRoomFor(bytes: number): boolean {
    return this.used + bytes <= this.bytesMax;
  }

  /** A connection's queue grew (positive) or shrank (negative) by `delta` bytes. */
  change(delta: number): void {
    this.used += delta;
    if (this.used < 0) throw new Error(`output budget below zero (${this.used})`);
  }
}

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
  private paused = false;
  /** Reads paused because the frames read wait in the client scheduler (client-frames.ts). */
  private backpressured = false;
  /** Work held while reads are paused (holdUntilResumed). */
  private readonly held: (() => void)[] = [];
  private budget: OutputBudget | null = null;
  /** When the queue last wrote something or was empty: a reader that takes nothing is stuck. */
  private progressMs: number;
  /** Opaque per-connection state owned by whoever handles the frames. */
  state: unknown = null;
  /**
   * A client session's MAC state, set once its AUTH has verified: from then on every
   * frame sent is sealed, and the owner opens every frame received (PROTOCOL.md 5.2).
   */
  framing: SessionFraming | null = null;
  /** Frames of this turn waiting for the microtask that writes them together (coalesceWrites). */
  private gathered: Uint8Array[] = [];
  private gatheredBytes = 0;
  private coalescing = false;

  constructor(
    private readonly socket: Socket<unknown>,
    frameBytesMax: number,
    outboundBytesMax: number = OUTBOUND_BYTES_MAX_DEFAULT,
    readonly remote: string = socket.remoteAddress,
    private readonly now: () => number = Date.now,
  ) {
    // A client session frame's length counts its MAC, which the frame limit does not.
    this.decoder = new FrameDecoder({ frameBytesMax: frameBytesMax + CLIENT_FRAME_MAC_BYTES, copyPayloads: true });
    this.queue = new WriteQueue(outboundBytesMax);
    this.sink = (data) => Math.max(this.socket.write(data), 0);
    this.progressMs = now();
  }

  /**
   * From now on frames sent in one event-loop turn are written together at the end of it
   * (one socket write instead of one per frame). Order is kept: every later frame goes
   * through the same gathering, and close() writes what was gathered first.
   */
  coalesceWrites(): void {
    this.coalescing = true;
  }

  /** Stops reading from the socket (the other side sees TCP backpressure); frames already read may still arrive. */
  pauseReading(): void {
    if (this.closed) return;
    this.paused = true;
    this.socket.pause();
  }

  resumeReading(): void {
    if (this.closed) return;
    this.paused = false;
    // What was held runs first, in order, until it is done or the connection is paused again.
    while (this.held.length > 0 && !this.paused && !this.closed) (this.held.shift() as () => void)();
    if (!this.paused && !this.closed && !this.backpressured) this.socket.resume();
  }

  /** Pauses or resumes the socket's reads for the scheduler's bound, apart from pauseReading's. */
  setBackpressure(on: boolean): void {
    if (this.closed || this.backpressured === on) return;
    this.backpressured = on;
    if (on) this.socket.pause();
    else if (!this.paused) this.socket.resume();
  }

  get readPaused(): boolean {
    return this.paused;
  }

  /** Whether work read before a pause still waits for the resume. */
  get holding(): boolean {
    return this.held.length > 0;
  }

  /** Work on frames already read, to run when reads resume (in order); dropped if the connection closes. */
  holdUntilResumed(work: () => void): void {
    if (!this.closed) this.held.push(work);
  }

  /** Counts this connection's queued bytes against `budget` from now on (once). */
  useBudget(budget: OutputBudget): void {
    if (this.budget !== null) throw new Error("FramedConn: budget already set");
    this.budget = budget;
    budget.change(this.pendingBytes);
  }

  /** How long bytes have waited without the peer taking any (0 when nothing waits). */
  stalledMs(): number {
    return this.pendingBytes === 0 ? 0 : this.now() - this.progressMs;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Bytes waiting to be written: queued for the socket, or gathered in this turn. */
  get pendingBytes(): number {
    return this.queue.bufferedBytes + this.gatheredBytes;
  }

  /**
   * True if `bytes` more would stay within the outbound bound. Stricter than the queue's
   * own check: on the replica side even an idle connection takes no frame over the bound.
   */
  hasRoomFor(bytes: number): boolean {
    if (this.budget !== null && !this.budget.hasRoomFor(bytes)) return false;
    return this.pendingBytes + bytes <= this.queue.bytesMax;
  }

  /** Why send() may have returned false, for a log line: closed, or how full the queue and the budget are. */
  describeNoRoom(): string {
    if (this.closed) return "the connection is closed";
    const own = `${this.pendingBytes} of ${this.queue.bytesMax} bytes wait on the connection`;
    return this.budget === null ? own : `${own}, ${this.budget.usedBytes} of ${this.budget.bytesMax} for all clients`;
  }

  /** Sends one frame; false (never a throw) if the connection is closed, full, or the frame cannot be encoded within the frame limit. */
  send(frame: Frame): boolean {
    let bytes: Uint8Array;
    try {
      bytes = this.framing === null ? encodeTypedFrame(frame) : encodeTypedFrameWithTrailer(frame, CLIENT_FRAME_MAC_BYTES);
    } catch {
      return false;
    }
    if (this.closed || !this.hasRoomFor(bytes.length)) return false;
    // Sealed only once it is sure to be queued: the other side expects every frame counter.
    return this.write(this.framing === null ? bytes : this.framing.sealer.sealInPlace(bytes));
  }

  /**
   * Sends a frame of `type` whose payload is shared.bytes || rest: an EVENTS frame of a
   * fan-out (wire/hot.ts eventsPrefix, eventsRest), the batch shared by every subscriber.
   * On a client session its MAC hashes only `rest` (FrameSealer.macShared). The shared
   * bytes are not copied per frame: only into the turn's socket write (coalesceWrites).
   * False (never a throw) if the connection is closed or full, or the frame is over the
   * frame limit.
   */
  sendShared(type: number, shared: SharedPayloadPrefix, rest: Uint8Array): boolean {
    const length = 1 + shared.length + rest.length;
    if (length > FRAME_BYTES_MAX) return false;
    const trailer = this.framing === null ? 0 : CLIENT_FRAME_MAC_BYTES;
    const total = FRAME_LENGTH_BYTES + length + trailer;
    if (this.closed || !this.hasRoomFor(total)) return false;
    const head = new Uint8Array(FRAME_HEADER_BYTES);
    new DataView(head.buffer).setUint32(0, length + trailer, false);
    head[FRAME_LENGTH_BYTES] = type;
    const mac = this.framing === null ? null : this.framing.sealer.macShared(type, shared, rest);
    const parts = mac === null ? [head, shared.bytes, rest] : [head, shared.bytes, rest, mac];
    if (this.coalescing) return this.gather(parts, total);
    const frame = new Uint8Array(total);
    let at = 0;
    for (const part of parts) {
      frame.set(part, at);
      at += part.length;
    }
    return this.enqueue(frame);
  }

  /** Sends already-encoded frame bytes, sealing a copy first on a client session. */
  sendRaw(bytes: Uint8Array): boolean {
    const length = this.framing === null ? bytes.length : bytes.length + CLIENT_FRAME_MAC_BYTES;
    if (this.closed || !this.hasRoomFor(length)) return false;
    return this.write(this.framing === null ? bytes : this.framing.sealer.seal(bytes));
  }

  private write(bytes: Uint8Array): boolean {
    return this.coalescing ? this.gather([bytes], bytes.length) : this.enqueue(bytes);
  }

  /**
   * Adds the parts of one frame (`bytes` in all) to this turn's write. The caller checked
   * the room (hasRoomFor counts gathered bytes), so the queue takes them when they are written.
   */
  private gather(parts: readonly Uint8Array[], bytes: number): boolean {
    const before = this.pendingBytes;
    if (this.gathered.length === 0) queueMicrotask(this.writeGathered);
    for (const part of parts) this.gathered.push(part);
    this.gatheredBytes += bytes;
    if (before === 0) this.progressMs = this.now();
    this.accountSince(before);
    return true;
  }

  private enqueue(bytes: Uint8Array): boolean {
    const before = this.pendingBytes;
    const result = this.queue.enqueue(this.sink, bytes);
    if (before === 0) this.progressMs = this.now();
    this.accountSince(before);
    return result === "sent" || result === "queued";
  }

  /** The end of a turn: its gathered frames go to the socket. */
  private readonly writeGathered = (): void => {
    if (this.closed) return;
    // Frames are sealed: dropping some would break the session's frame counter, so a
    // refusal (which hasRoomFor, checked before each frame was gathered, rules out) ends
    // the connection.
    if (this.flushGathered() === "full") this.close();
  };

  /** Writes the gathered frames as one buffer (the queue keeps what the socket does not take). */
  private flushGathered(): EnqueueResult | null {
    if (this.gathered.length === 0) return null;
    const parts = this.gathered;
    const total = this.gatheredBytes;
    const before = this.pendingBytes;
    this.gathered = [];
    this.gatheredBytes = 0;
    let bytes: Uint8Array;
    if (parts.length === 1) bytes = parts[0] as Uint8Array;
    else {
      bytes = gatherBuffer(total);
      let at = 0;
      for (const part of parts) {
        bytes.set(part, at);
        at += part.length;
      }
    }
    const result = this.queue.enqueue(this.sink, bytes);
    // The queue holds what the socket did not take: that buffer is no longer scratch.
    if (result !== "sent" && gatherScratch !== null && bytes.buffer === gatherScratch.buffer) gatherScratch = null;
    this.accountSince(before);
    return result;
  }

  /** Called from the socket's drain handler: writes what waits, in order. */
  drain(): void {
    if (this.closed) return;
    const queuedBefore = this.queue.bufferedBytes;
    const before = this.pendingBytes;
    this.queue.flush(this.sink);
    if (this.queue.bufferedBytes < queuedBefore) this.progressMs = this.now();
    this.accountSince(before);
  }

  /** Ends the connection after flushing what the kernel accepts now. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    // What this turn gathered goes to the socket first, as it would have without gathering.
    this.flushGathered();
    this.held.length = 0;
    const before = this.pendingBytes;
    this.queue.clear();
    this.accountSince(before);
    this.socket.end();
  }

  /** The socket is gone (closed by either side): what waited is dropped and uncounted. */
  release(): void {
    this.closed = true;
    this.held.length = 0;
    const before = this.pendingBytes;
    this.queue.clear();
    this.gathered = [];
    this.gatheredBytes = 0;
    this.accountSince(before);
  }

  /**
   * Ends the connection without closing its socket: what waited is dropped and nothing
   * more is written or worked on, the socket's reads are paused, and the socket is the
   * caller's from now on (the server's tarpit, tarpit.ts, holds it and closes it).
   */
  detach(): Socket<unknown> {
    this.release();
    this.socket.pause();
    return this.socket;
  }

  /** Tells the budget how much the pending bytes changed since they were `before`. */
  private accountSince(before: number): void {
    if (this.budget !== null) this.budget.change(this.pendingBytes - before);
  }

  /** Sends one last frame (an ERROR, typically) and closes. */
  closeWith(frame: Frame): void {
    if (this.closed) return;
    this.send(frame);
    this.flushGathered();
    this.socket.flush();
    this.close();
  }
}
