/**
 * A framed TCP connection on the replica side: cuts incoming bytes into frames with the
 * wire's FrameDecoder and writes outgoing frames through a bounded queue that honours
 * the socket's backpressure (src/net/write-queue.ts, the same queue the client uses).
 * Bun's socket.write may take only part of a buffer; what it does not take waits there
 * until `drain`. The queue is bounded in bytes so that a peer or client that stops
 * reading cannot make the replica grow memory: at the bound the caller decides (drop a
 * consensus message, end a slow subscription, or close).
 *
 * A client session's frames are coalesced and prioritized (`coalesceWrites`): the frames
 * sent in one event-loop turn (a fan-out sends one EVENTS frame per subscription, and a
 * connection may carry many) wait, not yet sealed, in per-class queues (egress.ts) and are
 * written with one socket write when the turn's synchronous work is done, in a microtask,
 * so the replica makes one system call per connection and turn rather than one per frame.
 * Each write takes the most urgent waiting frames first (a critical channel's EVENTS before
 * a low one's, replies before both, with a share kept for the less urgent) and seals each
 * as it goes into the write, so the session's MAC counter follows the order on the wire.
 * When the socket takes only part of a write, the frame it stopped in finishes first and
 * the frames it did not start go back to their queues, their counters given back: a
 * critical frame that arrives behind a backlog is the next frame written. Waiting bytes
 * count against the connection's bound, each waiting frame with EGRESS_FRAME_OVERHEAD_BYTES
 * more for its bookkeeping.
 *
 * A peer link coalesces the same way once its handshake is done (peers.ts), unsealed (its
 * frames carry their own MAC) and all in the control class, so in the order sent. A large
 * message given in parts (sendEncodedParts) goes out after what waits, from where it is;
 * only while the socket pushes back is it copied, to wait behind what waits already.
 */
import { writeUint32BE } from "../../wire/bytes.ts";
import type { Socket } from "bun";
import { assert } from "../../wire/assert.ts";
import { concatByteList } from "../crypto/encoding.ts";
import { type DecodeResult, FrameDecoder } from "../../wire/frame.ts";
import { encodeTypedFrame, encodeTypedFrameWithTrailer, type Frame } from "../../wire/schemas.ts";
import { FRAME_BYTES_MAX, FRAME_HEADER_BYTES, FRAME_LENGTH_BYTES } from "../../wire/types.ts";
import { CLIENT_FRAME_MAC_BYTES, payloadDigest, type SessionFraming, type SharedPayloadPrefix } from "../crypto/session.ts";
import { type ByteSink, type EnqueueResult, WriteQueue } from "../net/write-queue.ts";
import { EGRESS_CONTROL, EGRESS_HIGH, EGRESS_NORMAL, type EgressFrame, EgressQueues, egressOfType } from "./egress.ts";

/** Default bound of bytes waiting to be written to one connection. */
export const OUTBOUND_BYTES_MAX_DEFAULT = 16 * 1024 * 1024;

/**
 * One buffer, reused, that a write's frames are copied into for their socket write (the
 * write copies them into the kernel at once); a fresh one per turn would cost the
 * allocation and, for large fan-outs, the page faults of new memory. When the socket does
 * not take all of it the rest of the frame it stopped in is copied out, and the frames it
 * did not start go back to their queues.
 */
let gatherScratch: Uint8Array | null = null;
const GATHER_SCRATCH_BYTES_MIN = 64 * 1024;
/** Larger writes get a buffer of their own rather than a scratch buffer this large kept for good. */
const GATHER_SCRATCH_BYTES_MAX = 4 * 1024 * 1024;
/**
 * At most this many bytes of frames go into one socket write while nothing pushes back (a
 * turn's frames, most often all of them in one write), and while the socket pushes back
 * (the kernel's buffer is full: frames the socket does not take are sealed in vain, then
 * again on the next write, so a write offers little more than a drain takes).
 */
const WRITE_BYTES_MAX = GATHER_SCRATCH_BYTES_MAX;
const BACKLOG_WRITE_BYTES_MAX = 64 * 1024;
/** The share of a client session's byte bound, and of the output budget, that frames of the low and normal classes may fill (hasRoomFor). */
export const LESS_URGENT_BOUND_PERCENT = 75;

function gatherBuffer(bytes: number): Uint8Array {
  if (bytes > GATHER_SCRATCH_BYTES_MAX) return new Uint8Array(bytes);
  if (gatherScratch === null || gatherScratch.length < bytes) {
    gatherScratch = new Uint8Array(Math.max(GATHER_SCRATCH_BYTES_MIN, 2 ** Math.ceil(Math.log2(bytes))));
  }
  return gatherScratch.subarray(0, bytes);
}

/**
 * What of a byte bound a frame may fill: frames below high priority (`lessUrgent`) at most
 * LESS_URGENT_BOUND_PERCENT of it, the rest being kept for the high and critical ones and
 * the control frames (egress.ts).
 */
function boundFor(bytesMax: number, lessUrgent: boolean): number {
  return lessUrgent ? Math.floor((bytesMax * LESS_URGENT_BOUND_PERCENT) / 100) : bytesMax;
}

/**
 * A bound on the bytes waiting in many connections' queues together (the replica's
 * client connections): each connection's own bound times the number of connections is
 * far more memory than a replica has. Like a connection's bound, frames below high
 * priority fill at most LESS_URGENT_BOUND_PERCENT of it, so that stalled bulk readers
 * leave room for every other client's replies, PONGs and critical deliveries; and the
 * connections of one remote address hold at most `perAddressBytesMax` of it (the same
 * share rule applies there), so that one address's stalled readers cannot take it from
 * the others.
 */
export class OutputBudget {
  private used = 0;
  /** Bytes waiting per remote address; an address leaves the map at zero, so it holds only addresses with bytes waiting. */
  private readonly byAddress = new Map<string, number>();
  readonly perAddressBytesMax: number;

  constructor(
    readonly bytesMax: number,
    perAddressBytesMax: number = bytesMax,
  ) {
    if (!Number.isSafeInteger(bytesMax) || bytesMax < 1) throw new RangeError(`bytesMax must be a positive integer, got ${bytesMax}`);
    if (!Number.isSafeInteger(perAddressBytesMax) || perAddressBytesMax < 1) {
      throw new RangeError(`perAddressBytesMax must be a positive integer, got ${perAddressBytesMax}`);
    }
    this.perAddressBytesMax = Math.min(perAddressBytesMax, bytesMax);
  }

  get usedBytes(): number {
    return this.used;
  }

  /** Bytes waiting on the connections of `address`. */
  usedBy(address: string): number {
    return this.byAddress.get(address) ?? 0;
  }

  /** True if `bytes` more for a connection of `address` stay within the budget and the address's share; `lessUrgent`: a frame below high priority. */
  hasRoomFor(bytes: number, address: string, lessUrgent = false): boolean {
    return (
      this.used + bytes <= boundFor(this.bytesMax, lessUrgent) &&
      this.usedBy(address) + bytes <= boundFor(this.perAddressBytesMax, lessUrgent)
    );
  }

  /** A connection of `address` had its queue grow (positive) or shrink (negative) by `delta` bytes. */
  change(delta: number, address: string): void {
    if (delta === 0) return;
    this.used += delta;
    if (this.used < 0) throw new Error(`output budget below zero (${this.used})`);
    const left = this.usedBy(address) + delta;
    if (left < 0) throw new Error(`output budget of ${address} below zero (${left})`);
    if (left === 0) this.byAddress.delete(address);
    else this.byAddress.set(address, left);
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
  /** Frames waiting for the socket, unsealed, by egress class (coalesceWrites); null until then. */
  private egress: EgressQueues | null = null;
  /** The rest of a sealed frame the socket took part of: it goes before any other. */
  private inProgress: Uint8Array | null = null;
  /** A microtask will write what waits (the end of the turn). */
  private writeScheduled = false;
  /** The socket took less than it was offered: the next write waits for `drain`. */
  private backlogged = false;
  /** Counts frames written ahead of less urgent ones that waited longer (egress_overtakes_total). */
  private onOvertakes: ((frames: number) => void) | null = null;
  /** Counts socket writes (peer_socket_writes_total on peer links). */
  private onWrite: (() => void) | null = null;

  constructor(
    private readonly socket: Socket<unknown>,
    frameBytesMax: number,
    outboundBytesMax: number = OUTBOUND_BYTES_MAX_DEFAULT,
    readonly remote: string = socket.remoteAddress,
    /** For durations only (how long queued bytes sat untouched): performance.now unless the owner gives its own. */
    private readonly now: () => number = performance.now.bind(performance),
  ) {
    // A client session frame's length counts its MAC, which the frame limit does not.
    this.decoder = new FrameDecoder({ frameBytesMax: frameBytesMax + CLIENT_FRAME_MAC_BYTES, copyPayloads: true });
    this.queue = new WriteQueue(outboundBytesMax);
    this.sink = (data) => {
      this.onWrite?.();
      return Math.max(this.socket.write(data), 0);
    };
    this.progressMs = now();
  }

  /**
   * From now on frames wait in per-class queues and are written, most urgent first, at the
   * end of the turn they were sent in (one socket write for them instead of one per frame)
   * or when the socket drains. Within a class the order is kept; close() writes what the
   * socket takes first. `onOvertakes` counts frames written ahead of less urgent frames
   * that waited longer.
   */
  coalesceWrites(onOvertakes: ((frames: number) => void) | null = null): void {
    if (this.egress !== null) return;
    this.egress = new EgressQueues();
    this.onOvertakes = onOvertakes;
  }

  /** Calls `onWrite` at each socket write from now on. */
  countWrites(onWrite: () => void): void {
    this.onWrite = onWrite;
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

  /** Whether reads are paused for either reason (pauseReading, or the scheduler's backpressure). */
  get readsHeld(): boolean {
    return this.paused || this.backpressured;
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
    budget.change(this.pendingBytes, this.remote);
  }

  /** How long bytes have waited without the peer taking any (0 when nothing waits). */
  stalledMs(): number {
    return this.pendingBytes === 0 ? 0 : this.now() - this.progressMs;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Bytes waiting to be written: queued for the socket, in progress, or waiting in the class queues. */
  get pendingBytes(): number {
    if (this.egress === null) return this.queue.bufferedBytes;
    return this.queue.bufferedBytes + (this.inProgress?.length ?? 0) + this.egress.waitingBytes;
  }

  /**
   * True if `bytes` more would stay within the outbound bound. Stricter than the queue's
   * own check: on the replica side even an idle connection takes no frame over the bound.
   * On a client session (coalesceWrites) frames of the low and normal classes fill at most
   * LESS_URGENT_BOUND_PERCENT of it: a backlog of bulk deliveries that gets a slow
   * subscription of it ended leaves room for the critical ones and the replies behind it.
   * The same goes for the output budget shared with other connections (OutputBudget).
   */
  hasRoomFor(bytes: number, urgency: number = EGRESS_CONTROL): boolean {
    const lessUrgent = this.egress !== null && urgency < EGRESS_HIGH;
    if (this.budget !== null && !this.budget.hasRoomFor(bytes, this.remote, lessUrgent)) return false;
    return this.pendingBytes + bytes <= boundFor(this.queue.bytesMax, lessUrgent);
  }

  /** Why send() may have returned false, for a log line: closed, or how full the queue, the budget and the address's share are. */
  describeNoRoom(): string {
    if (this.closed) return "the connection is closed";
    const own = `${this.pendingBytes} of ${this.queue.bytesMax} bytes wait on the connection`;
    const budget = this.budget;
    if (budget === null) return own;
    const all = `${own}, ${budget.usedBytes} of ${budget.bytesMax} for all clients`;
    // A share as large as the budget is no bound of its own.
    if (budget.perAddressBytesMax >= budget.bytesMax) return all;
    return `${all}, ${budget.usedBy(this.remote)} of ${budget.perAddressBytesMax} for its address`;
  }

  /**
   * Sends one frame; false (never a throw) if the connection is closed, full, or the frame
   * cannot be encoded within the frame limit. `urgency`: its egress class on a client
   * session (egress.ts); by default subscription frames are normal and the others control.
   */
  send(frame: Frame, urgency: number = egressOfType(frame.type)): boolean {
    let bytes: Uint8Array;
    try {
      bytes = this.framing === null ? encodeTypedFrame(frame) : encodeTypedFrameWithTrailer(frame, CLIENT_FRAME_MAC_BYTES);
    } catch {
      return false;
    }
    if (this.closed || !this.hasRoomFor(bytes.length, urgency)) return false;
    if (this.egress !== null) {
      const payloadEnd = this.framing === null ? bytes.length : bytes.length - CLIENT_FRAME_MAC_BYTES;
      return this.wait(urgency, {
        type: frame.type,
        payload: bytes.subarray(FRAME_HEADER_BYTES, payloadEnd),
        shared: null,
        bytes: bytes.length,
        sealed: this.framing !== null,
        digest: null,
        order: 0,
      });
    }
    // Sealed only once it is sure to be queued: the other side expects every frame counter.
    return this.enqueue(this.framing === null ? bytes : this.framing.sealer.sealInPlace(bytes));
  }

  /**
   * Sends a frame encoded whole already (header and payload: wire/hot.ts encodePeerFrame),
   * on a connection without session framing, which would need to seal it. False (never a
   * throw) if the connection is closed or full.
   */
  sendEncoded(bytes: Uint8Array, urgency: number = EGRESS_CONTROL): boolean {
    assert(this.framing === null, "sendEncoded on a session-framed connection: its frames are sealed by send");
    if (this.closed || !this.hasRoomFor(bytes.length, urgency)) return false;
    if (this.egress !== null) {
      return this.wait(urgency, {
        type: bytes[FRAME_LENGTH_BYTES] as number,
        payload: bytes.subarray(FRAME_HEADER_BYTES),
        shared: null,
        bytes: bytes.length,
        sealed: false,
        digest: null,
        order: 0,
      });
    }
    return this.enqueue(bytes);
  }

  /**
   * sendEncoded for a frame given as parts written one after another (wire/hot.ts
   * peerFrameParts): a large message that frames to several peers share is written to
   * each socket from where it is, not copied into each frame first.
   */
  sendEncodedParts(parts: readonly Uint8Array[], urgency: number = EGRESS_CONTROL): boolean {
    assert(this.framing === null, "sendEncodedParts on a session-framed connection: its frames are sealed by send");
    let total = 0;
    for (const part of parts) total += part.length;
    if (this.closed || !this.hasRoomFor(total, urgency)) return false;
    if (this.egress !== null) {
      // The frames this turn sent before it go first: written now, so that the parts can
      // follow them from where they are. Only while the socket pushes back do the parts
      // wait, copied into one frame, behind what waits already.
      if (this.pendingBytes > 0 && !this.backlogged) this.writeWaiting();
      // A write that failed there ended the connection.
      if (this.closed) return false;
      if (this.pendingBytes > 0) return this.sendEncoded(concatByteList(parts), urgency);
    }
    return this.accounted(() => this.queue.enqueueParts(this.sink, parts));
  }

  /**
   * Sends a frame of `type` whose payload is the shared parts || rest: an EVENTS frame of a
   * fan-out (wire/hot.ts eventsPrefix, eventsRest), the batch shared by every subscriber.
   * On a client session its MAC hashes only `rest` (FrameSealer.macShared). The shared
   * bytes are not copied per frame: only into the turn's socket write (coalesceWrites).
   * False (never a throw) if the connection is closed or full, or the frame is over the
   * frame limit.
   */
  sendShared(type: number, shared: SharedPayloadPrefix, rest: Uint8Array, urgency: number = EGRESS_NORMAL): boolean {
    const length = 1 + shared.length + rest.length;
    if (length > FRAME_BYTES_MAX) return false;
    const trailer = this.framing === null ? 0 : CLIENT_FRAME_MAC_BYTES;
    const total = FRAME_LENGTH_BYTES + length + trailer;
    if (this.closed || !this.hasRoomFor(total, urgency)) return false;
    if (this.egress !== null) {
      return this.wait(urgency, { type, payload: rest, shared, bytes: total, sealed: trailer > 0, digest: null, order: 0 });
    }
    const head = new Uint8Array(FRAME_HEADER_BYTES);
    writeUint32BE(head, 0, length + trailer);
    head[FRAME_LENGTH_BYTES] = type;
    const mac = this.framing === null ? null : this.framing.sealer.macShared(type, shared, rest);
    const frame = new Uint8Array(total);
    frame.set(head, 0);
    let at = shared.copyInto(frame, head.length);
    frame.set(rest, at);
    at += rest.length;
    if (mac !== null) frame.set(mac, at);
    return this.enqueue(frame);
  }

  /**
   * Puts one frame in its class queue, to be written at the end of the turn or at the next
   * drain. The caller checked the room (hasRoomFor counts waiting bytes).
   */
  private wait(urgency: number, frame: EgressFrame): boolean {
    const egress = this.egress as EgressQueues;
    const before = this.pendingBytes;
    egress.push(urgency, frame);
    if (before === 0) this.progressMs = this.now();
    this.accountSince(before);
    // While the socket pushes back, its drain writes what waits.
    if (!this.writeScheduled && !this.backlogged) {
      this.writeScheduled = true;
      queueMicrotask(this.writeAtTurnEnd);
    }
    return true;
  }

  private enqueue(bytes: Uint8Array): boolean {
    return this.accounted(() => this.queue.enqueue(this.sink, bytes));
  }

  private accounted(write: () => EnqueueResult): boolean {
    const before = this.pendingBytes;
    const result = write();
    if (before === 0) this.progressMs = this.now();
    this.accountSince(before);
    return result === "sent" || result === "queued";
  }

  /** The end of a turn: what its frames wait for goes to the socket. */
  private readonly writeAtTurnEnd = (): void => {
    this.writeScheduled = false;
    if (!this.closed) this.writeWaiting();
  };

  /**
   * Writes what waits, until the socket pushes back or nothing is left: the rest of the
   * frame in progress, then the waiting frames most urgent first (egress.ts), sealed as
   * they are copied into each write. Of a write the socket took only part of, the frame it
   * stopped in becomes the frame in progress, and the frames it did not start go back to
   * their queues with their counters (FrameSealer.giveBack): the next write starts with
   * the most urgent frame waiting then.
   */
  private writeWaiting(): void {
    const egress = this.egress as EgressQueues;
    const before = this.pendingBytes;
    let progressed = false;
    // After a push back the socket has room for about what one drain frees: offer it a
    // small write, and twice as much after each write it took whole. Offered at once, the
    // frames it does not start would each be sealed and copied for nothing (and given back).
    let offer = this.backlogged ? BACKLOG_WRITE_BYTES_MAX : WRITE_BYTES_MAX;
    for (;;) {
      if (this.queue.bufferedBytes > 0) {
        // Frames written before the session coalesced (its handshake) still go first.
        const queuedBefore = this.queue.bufferedBytes;
        const flushed = this.queue.flush(this.sink);
        progressed ||= this.queue.bufferedBytes < queuedBefore;
        if (!flushed) {
          this.backlogged = true;
          break;
        }
      }
      if (this.inProgress !== null) {
        const rest = this.inProgress;
        const written = this.sink(rest);
        progressed ||= written > 0;
        if (written < rest.length) {
          this.inProgress = rest.subarray(written);
          this.backlogged = true;
          break;
        }
        this.inProgress = null;
      }
      if (egress.waitingFrames === 0) {
        this.backlogged = false;
        break;
      }
      const offered = this.writeFrames(egress, offer);
      if (offered.failed) {
        this.accountSince(before);
        this.release();
        this.socket.end();
        return;
      }
      progressed ||= offered.written > 0;
      if (!offered.all) {
        this.backlogged = true;
        break;
      }
      this.backlogged = false;
      offer = Math.min(offer * 2, WRITE_BYTES_MAX);
    }
    if (progressed) this.progressMs = this.now();
    this.accountSince(before);
  }

  /**
   * One socket write of waiting frames, most urgent first, up to `bytesMax` (at least one
   * frame), each sealed as it is copied. What the socket does not take is put back as
   * writeWaiting says. `all`: the socket took the whole write.
   */
  private writeFrames(egress: EgressQueues, bytesMax: number): { written: number; all: boolean; failed: boolean } {
    const frames = this.writeBatch;
    frames.length = 0;
    egress.begin();
    let total = 0;
    while (total < bytesMax) {
      const frame = egress.take();
      if (frame === null) break;
      frames.push(frame);
      total += frame.bytes;
    }
    const bytes = gatherBuffer(total);
    let written: number;
    try {
      let at = 0;
      for (const frame of frames) at = this.sealInto(bytes, at, frame);
      written = this.sink(bytes);
    } catch {
      // Sealing or the socket failed: counters are used up and some bytes may be gone, so
      // the session cannot go on (writeWaiting ends it; nothing more is written on it).
      egress.end(0);
      frames.length = 0;
      return { written: 0, all: false, failed: true };
    }
    let kept = frames.length;
    if (written < total) {
      // The frames the socket took all of, and the one it stopped in (if it started it).
      let end = 0;
      kept = 0;
      while (kept < frames.length && end < written) end += (frames[kept++] as EgressFrame).bytes;
      if (end > written) this.inProgress = bytes.slice(written, end);
      if (this.framing !== null) this.framing.sealer.giveBack(countSealed(frames, kept));
    }
    const overtakes = egress.end(kept);
    if (overtakes > 0) this.onOvertakes?.(overtakes);
    frames.length = 0;
    return { written, all: written >= total, failed: false };
  }

  /** The frames of the write in progress (reused). */
  private readonly writeBatch: EgressFrame[] = [];

  /** Copies `frame` into `bytes` at `at` with its MAC under the session's next counter; returns the offset after it. */
  private sealInto(bytes: Uint8Array, at: number, frame: EgressFrame): number {
    // The header: the length field (type, payload and MAC), then the type.
    const length = frame.bytes - FRAME_LENGTH_BYTES;
    bytes[at] = length >>> 24;
    bytes[at + 1] = (length >>> 16) & 0xff;
    bytes[at + 2] = (length >>> 8) & 0xff;
    bytes[at + 3] = length & 0xff;
    bytes[at + FRAME_LENGTH_BYTES] = frame.type;
    let offset = at + FRAME_HEADER_BYTES;
    if (frame.shared !== null) {
      offset = frame.shared.copyInto(bytes, offset);
    }
    bytes.set(frame.payload, offset);
    offset += frame.payload.length;
    if (!frame.sealed) return offset;
    const framing = this.framing;
    if (framing === null) throw new Error("FramedConn: a sealed frame waits on a connection without a session");
    frame.digest ??= frame.shared === null ? payloadDigest(frame.payload) : frame.shared.digestWith(frame.payload);
    bytes.set(framing.sealer.macDigest(frame.type, frame.digest), offset);
    return offset + CLIENT_FRAME_MAC_BYTES;
  }

  /** Called from the socket's drain handler: writes what waits, in order. */
  drain(): void {
    if (this.closed) return;
    if (this.egress !== null) {
      this.writeWaiting();
      return;
    }
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
    // What waits goes to the socket first, as far as it takes it now, most urgent first.
    if (this.egress !== null) this.writeWaiting();
    this.held.length = 0;
    this.dropWaiting();
    this.socket.end();
  }

  /** The socket is gone (closed by either side): what waited is dropped and uncounted. */
  release(): void {
    this.closed = true;
    this.held.length = 0;
    this.dropWaiting();
  }

  /** Drops and uncounts every byte waiting. */
  private dropWaiting(): void {
    const before = this.pendingBytes;
    this.queue.clear();
    this.egress?.clear();
    this.inProgress = null;
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
    if (this.budget !== null) this.budget.change(this.pendingBytes - before, this.remote);
  }

  /**
   * Writes `bytes` as they are, not a frame (an answer in another protocol to a client that
   * spoke one, server.ts answerOtherProtocol), and closes. Only before session framing and write
   * coalescing start, where the bytes go to the socket in the order given.
   */
  closeWithRaw(bytes: Uint8Array): void {
    assert(this.framing === null && this.egress === null, "closeWithRaw on a session: its frames are sealed and queued by class");
    if (this.closed) return;
    this.enqueue(bytes);
    this.socket.flush();
    this.close();
  }

  /** Sends one last frame (an ERROR, typically) and closes. */
  closeWith(frame: Frame): void {
    if (this.closed) return;
    this.send(frame);
    if (this.egress !== null) this.writeWaiting();
    this.socket.flush();
    this.close();
  }
}

/** How many of a write's frames after the first `kept` (those the socket did not start) were sealed: their counters go back. */
function countSealed(frames: readonly EgressFrame[], kept: number): number {
  let sealed = 0;
  for (let i = kept; i < frames.length; i++) if ((frames[i] as EgressFrame).sealed) sealed++;
  return sealed;
}
