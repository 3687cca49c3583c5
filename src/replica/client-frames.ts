/**
 * The scheduler between client frames and the rest of the replica (Aardvark's separate
 * queues): client and peer connections share one event loop, and a client that writes
 * frames as fast as TCP carries them must not delay the peers' votes.
 *
 * - A client connection's frames, once read and cut, wait in that connection's own queue
 *   instead of being worked on in the read callback. A queue over queueBytesMax pauses the
 *   connection's reads (TCP backpressure), resumed once it is down to half: what a
 *   connection holds here is bounded by queueBytesMax plus one read. Past totalBytesMax
 *   for all connections together, a connection that sends more while it holds more than a
 *   sixteenth of queueBytesMax is paused too (so all together hold at most totalBytesMax
 *   plus a sixteenth of queueBytesMax per connection), resumed once it holds half that:
 *   those that hold little, as a correct client's queue does between turns, go on.
 * - A drain turn first lets the peer inbox take a turn (`peersFirst`, peer-inbox.ts), then
 *   takes one frame of each connection in turn (round robin), at most CLIENT_TURN_FRAMES_MAX
 *   frames or CLIENT_TURN_MS, then yields to the event loop (timers, peer reads, commits)
 *   and goes on. So between two peer turns the client work is bounded, however many
 *   clients write and however fast.
 * - A connection that recently sent an urgent request (a high or critical channel's
 *   publish, or an admin command: `markUrgent`, for URGENT_CONNECTION_MS) goes first in
 *   each turn: up to URGENT_TURN_FRAMES_MAX of its frames before the round robin, so an
 *   alert does not wait behind a rotation over every busy connection. The cap keeps what
 *   an urgent publisher's flood can take from the others bounded.
 * - A connection whose reads its owner paused (a session over its verification budget,
 *   replica.ts) is not worked on until it is resumed: its queue waits, unprocessed.
 *
 * Nothing is dropped here: a connection closed with frames queued loses them, as it would
 * have lost the bytes in its socket.
 */

/** Frames worked on in one drain turn at most, and its time, before the loop gets a turn. */
export const CLIENT_TURN_FRAMES_MAX = 256;
export const CLIENT_TURN_MS = 10;
/** How long a connection counts as urgent after its last urgent request, and its frames a turn may take first. */
export const URGENT_CONNECTION_MS = 1_000;
export const URGENT_TURN_FRAMES_MAX = 64;
/** Bytes one connection may have waiting here before its reads are paused. */
export const CLIENT_QUEUE_BYTES_MAX = 1024 * 1024;
/**
 * Bytes all connections together may have waiting here: past it, a connection that sends
 * more while it has more than a sixteenth of its own bound waiting is paused too.
 */
export const CLIENT_QUEUES_BYTES_MAX = 64 * 1024 * 1024;
/** What a queued frame counts for besides its payload (so that empty frames are bounded too). */
export const CLIENT_FRAME_OVERHEAD_BYTES = 64;

/** The part of a connection the scheduler uses (FramedConn). */
export interface ScheduledConn {
  readonly isClosed: boolean;
  /** Reads paused by the connection's owner: its frames wait. */
  readonly readPaused: boolean;
  /** Runs `work` when the owner resumes reads. */
  holdUntilResumed(work: () => void): void;
  /** Pauses or resumes the socket's reads for the scheduler's own bound. */
  setBackpressure(on: boolean): void;
}

export interface ClientFramesOptions<C extends ScheduledConn, F> {
  /** Works on one frame of `conn`, in the order they were read. */
  readonly process: (conn: C, frame: F) => void;
  /** The peer inbox's turn, taken before each client turn. */
  readonly peersFirst?: () => void;
  /** A connection's reads were paused because its queue is full: count it. */
  readonly onBackpressure?: (conn: C) => void;
  readonly queueBytesMax?: number;
  readonly totalBytesMax?: number;
  /** How the next drain turn is scheduled (tests); setImmediate by default. */
  readonly schedule?: (run: () => void) => void;
}

interface Queue<F> {
  readonly frames: F[];
  readonly sizes: number[];
  head: number;
  bytes: number;
  backpressured: boolean;
  /** Waiting for the owner's resume (not in the ready set). */
  parked: boolean;
}

export class ClientFrames<C extends ScheduledConn, F> {
  private readonly queues = new Map<C, Queue<F>>();
  /** Connections with frames to work on, in round-robin order (insertion order of the Set). */
  private readonly ready = new Set<C>();
  private scheduled = false;
  private stopped = false;
  /** Connections whose reads the scheduler paused. */
  private readonly blocked = new Set<C>();
  private readonly queueBytesMax: number;
  private readonly totalBytesMax: number;
  /** What a connection may hold while the total is over totalBytesMax. */
  private readonly shareBytesMax: number;
  private totalBytes = 0;
  /** Connections that sent an urgent request lately, and until when they go first (performance.now ms). */
  private readonly urgent = new Map<C, number>();

  constructor(private readonly options: ClientFramesOptions<C, F>) {
    this.queueBytesMax = options.queueBytesMax ?? CLIENT_QUEUE_BYTES_MAX;
    this.totalBytesMax = options.totalBytesMax ?? CLIENT_QUEUES_BYTES_MAX;
    this.shareBytesMax = Math.floor(this.queueBytesMax / 16);
  }

  /** Frames read from `conn`, in order, with each one's payload size. */
  push(conn: C, frames: readonly F[], sizeOf: (frame: F) => number): void {
    if (this.stopped || conn.isClosed || frames.length === 0) return;
    let q = this.queues.get(conn);
    if (q === undefined) {
      q = { frames: [], sizes: [], head: 0, bytes: 0, backpressured: false, parked: false };
      this.queues.set(conn, q);
    }
    for (const frame of frames) {
      const size = sizeOf(frame) + CLIENT_FRAME_OVERHEAD_BYTES;
      q.frames.push(frame);
      q.sizes.push(size);
      q.bytes += size;
      this.totalBytes += size;
    }
    const over = q.bytes > this.queueBytesMax || (this.totalBytes > this.totalBytesMax && q.bytes > this.shareBytesMax);
    if (over && !q.backpressured) {
      q.backpressured = true;
      this.blocked.add(conn);
      conn.setBackpressure(true);
      this.options.onBackpressure?.(conn);
    }
    if (!q.parked) this.ready.add(conn);
    this.schedule();
  }

  /** `conn` sent an urgent request: its frames go first for URGENT_CONNECTION_MS. */
  markUrgent(conn: C, nowMs = performance.now()): void {
    if (!this.stopped && !conn.isClosed) this.urgent.set(conn, nowMs + URGENT_CONNECTION_MS);
  }

  /** Bytes waiting for `conn` (tests). */
  queuedBytes(conn: C): number {
    return this.queues.get(conn)?.bytes ?? 0;
  }

  /** Bytes waiting, all connections together (tests). */
  get queuedBytesTotal(): number {
    return this.totalBytes;
  }

  /** Frames waiting, all connections together (tests, status). */
  get queuedFrames(): number {
    let n = 0;
    for (const q of this.queues.values()) n += q.frames.length - q.head;
    return n;
  }

  /** The connection closed: what it had queued is dropped. */
  forget(conn: C): void {
    const q = this.queues.get(conn);
    if (q !== undefined) this.totalBytes -= q.bytes;
    this.queues.delete(conn);
    this.ready.delete(conn);
    this.blocked.delete(conn);
    this.urgent.delete(conn);
    this.release();
  }

  stop(): void {
    this.stopped = true;
    this.queues.clear();
    this.ready.clear();
    this.blocked.clear();
    this.urgent.clear();
    this.totalBytes = 0;
  }

  /** Resumes the reads of paused connections down to half their bound (half their share while the total is over half its own). */
  private release(): void {
    if (this.blocked.size === 0) return;
    const bound = this.totalBytes > this.totalBytesMax / 2 ? this.shareBytesMax / 2 : this.queueBytesMax / 2;
    for (const conn of this.blocked) {
      const q = this.queues.get(conn);
      if (q !== undefined && q.bytes > bound) continue;
      this.blocked.delete(conn);
      if (q !== undefined) q.backpressured = false;
      conn.setBackpressure(false);
    }
  }

  private schedule(): void {
    if (this.scheduled || this.ready.size === 0) return;
    this.scheduled = true;
    (this.options.schedule ?? ((run: () => void) => void setImmediate(run)))(() => this.drain());
  }

  /** One turn: the peers' turn, urgent connections' frames, then one frame per client connection in turn, within the turn's bounds. */
  drain(): void {
    this.scheduled = false;
    if (this.stopped) return;
    this.options.peersFirst?.();
    const started = performance.now();
    let processed = this.urgentFirst(started);
    if (this.stopped) return;
    while (processed < CLIENT_TURN_FRAMES_MAX && this.ready.size > 0) {
      for (const conn of this.ready) {
        if (!this.workOnNext(conn)) continue;
        processed++;
        if (this.stopped) return;
        if (processed >= CLIENT_TURN_FRAMES_MAX || performance.now() - started > CLIENT_TURN_MS) break;
      }
      if (performance.now() - started > CLIENT_TURN_MS) break;
    }
    this.release();
    this.schedule();
  }

  /** The urgent connections' frames, up to URGENT_TURN_FRAMES_MAX, before the round robin; returns how many. */
  private urgentFirst(now: number): number {
    let processed = 0;
    for (const [conn, until] of this.urgent) {
      if (until < now || conn.isClosed) {
        this.urgent.delete(conn);
        continue;
      }
      while (processed < URGENT_TURN_FRAMES_MAX && this.ready.has(conn) && this.workOnNext(conn)) {
        processed++;
        if (this.stopped) return processed;
      }
      if (processed >= URGENT_TURN_FRAMES_MAX) break;
    }
    return processed;
  }

  /**
   * Works on the next frame of `conn`, which then goes to the back of the round robin;
   * false when there was none to work on (closed: forgotten; paused by its owner: parked).
   */
  private workOnNext(conn: C): boolean {
    const q = this.queues.get(conn);
    if (q === undefined || conn.isClosed) {
      this.forget(conn);
      return false;
    }
    if (conn.readPaused) {
      this.ready.delete(conn);
      q.parked = true;
      conn.holdUntilResumed(() => this.unpark(conn));
      return false;
    }
    const frame = q.frames[q.head] as F;
    const size = q.sizes[q.head] as number;
    q.frames[q.head] = undefined as F;
    q.head++;
    q.bytes -= size;
    this.totalBytes -= size;
    this.ready.delete(conn);
    if (q.head >= q.frames.length) {
      q.frames.length = 0;
      q.sizes.length = 0;
      q.head = 0;
    } else {
      if (q.head > 1024 && q.head * 2 > q.frames.length) {
        q.frames.splice(0, q.head);
        q.sizes.splice(0, q.head);
        q.head = 0;
      }
      this.ready.add(conn);
    }
    this.options.process(conn, frame);
    return true;
  }

  private unpark(conn: C): void {
    const q = this.queues.get(conn);
    if (q === undefined || !q.parked) return;
    q.parked = false;
    if (q.head < q.frames.length) this.ready.add(conn);
    this.schedule();
  }
}
