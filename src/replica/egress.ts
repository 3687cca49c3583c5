/**
 * The order in which a client session's frames leave the replica: strict priority by
 * egress class with a guaranteed share for the less urgent (DESIGN: "strict priority with
 * anti-starvation at every queue", here the last one, egress to subscribers). Pure: it
 * holds frames and says which goes next; src/replica/framed.ts seals and writes them.
 *
 * Classes, least urgent first:
 *   - EGRESS_LOW .. EGRESS_CRITICAL (0..3): a subscription's frames (SUB_OK, EVENTS,
 *     SUB_END) in its channel's priority, the urgency the rest of the replica gives the
 *     channel (requests.ts urgencyOfSpace). All frames of one subscription share a class
 *     (a channel's priority is fixed when it is created), so they keep their order: SUB_OK
 *     before its EVENTS, EVENTS in seq order, SUB_END after the last EVENTS.
 *   - EGRESS_CONTROL (4): REPLY, QUERY_REPLY, ERROR, PONG, EPOCH. Each answers something
 *     this same client sent (or tells it how the session stands), so a client can only put
 *     its own deliveries behind them; all are small; and a client waits on each: a
 *     publisher's window waits on its REPLY, and a PONG that waits behind a backlog of
 *     deliveries makes the client think the replica is gone and fail over. So they go
 *     first, even before critical deliveries; the share below keeps the deliveries going
 *     should a client ask without pause.
 *
 * Anti-starvation: each class counts the frames of more urgent classes written while it
 * waited; once a class has been passed over EGRESS_PASSED_MAX times in a row it takes the
 * next frame (the most urgent such class first). So a class with frames waiting gets at
 * least one frame in every EGRESS_PASSED_MAX + EGRESS_CLASSES - 1 frames written, however
 * steady the flow above it.
 *
 * A frame is taken only when the socket will be offered it; a write the socket takes only
 * part of gives the frames it did not start back (`giveBack`), with the scheduler's state as
 * it was before they were taken, so they go out later as if never taken.
 */
import { PRIORITIES, type Priority } from "../core/channels/types.ts";
import type { SharedPayloadPrefix } from "../crypto/session.ts";
import { FrameType } from "../../wire/types.ts";

export const EGRESS_LOW = 0;
export const EGRESS_NORMAL = 1;
export const EGRESS_HIGH = 2;
export const EGRESS_CRITICAL = 3;
export const EGRESS_CONTROL = 4;
export const EGRESS_CLASSES = 5;
/** Frames of more urgent classes that may go ahead of a waiting class in a row before it takes one. */
export const EGRESS_PASSED_MAX = 8;

/**
 * Bytes a waiting frame is counted for besides its wire bytes: what its bookkeeping takes
 * in memory (the frame and queue records, its parts and header), so that the connection's
 * byte bound also bounds the memory of many small frames (a client that sends PINGs and
 * never reads) to a small multiple of it.
 */
export const EGRESS_FRAME_OVERHEAD_BYTES = 256;

/** The egress class of a subscription's frames: its channel's priority (normal for a channel not known). */
export function egressOfPriority(priority: Priority | null): number {
  const index = priority === null ? -1 : PRIORITIES.indexOf(priority);
  return index < 0 ? EGRESS_NORMAL : index;
}

/** The class of a frame sent without one: subscription frames normal, every other one control. */
export function egressOfType(type: number): number {
  return type === FrameType.EVENTS || type === FrameType.SUB_OK || type === FrameType.SUB_END ? EGRESS_NORMAL : EGRESS_CONTROL;
}

/**
 * One frame waiting to be written, not yet sealed. On the wire: the 4-byte length (which
 * counts the MAC when there is one), the type, the payload (a fan-out frame's `shared`
 * prefix, then `payload`), then the MAC on a sealed session. One object per frame: a
 * fan-out writes one to every subscription of every batch.
 */
export interface EgressFrame {
  readonly type: number;
  /** The payload, or a fan-out frame's part after its shared prefix. */
  readonly payload: Uint8Array;
  /** A fan-out frame's shared payload prefix, whose hash the payload digest continues from. */
  readonly shared: SharedPayloadPrefix | null;
  /** Bytes on the wire: length field, type, payload and MAC. */
  readonly bytes: number;
  /** Whether a MAC follows the payload (a sealed session). */
  readonly sealed: boolean;
  /** SHA-256 of the payload, once computed (a frame given back is sealed again without rehashing). */
  digest: Uint8Array | null;
  /** Arrival order on the connection, to tell an overtake (set by EgressQueues.push). */
  order: number;
}

/** A FIFO of one class that can take back what was just taken from its front. */
class ClassQueue {
  private items: (EgressFrame | undefined)[] = [];
  private head = 0;

  get size(): number {
    return this.items.length - this.head;
  }

  /** The oldest waiting frame's arrival order (the queue must not be empty). */
  get headOrder(): number {
    return (this.items[this.head] as EgressFrame).order;
  }

  push(item: EgressFrame): void {
    if (this.head === this.items.length) {
      // Empty: start the array again. Here and not in shift(), so that frames a write takes
      // and gives back (unshift) go back into their slots, never through Array.unshift.
      this.items.length = 0;
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.items.length) {
      // Drops the taken slots once they are most of the array, so memory follows what waits.
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    this.items.push(item);
  }

  shift(): EgressFrame {
    const item = this.items[this.head] as EgressFrame;
    this.items[this.head] = undefined;
    this.head++;
    return item;
  }

  unshift(item: EgressFrame): void {
    if (this.head > 0) this.items[--this.head] = item;
    else this.items.unshift(item);
  }

  clear(): void {
    this.items = [];
    this.head = 0;
  }
}

/** Scheduler state saved before each take of a write: the passed-over counts, then whether the take overtook. */
const TRAIL_STRIDE = EGRESS_CLASSES + 1;

export class EgressQueues {
  private readonly queues = Array.from({ length: EGRESS_CLASSES }, () => new ClassQueue());
  /** Per class: frames of more urgent classes written since it last took one while it waited. */
  private readonly passed: number[] = new Array(EGRESS_CLASSES).fill(0);
  private arrivals = 0;
  private bytes = 0;
  private frames = 0;
  /** What the takes of the current write took, in order, to give back what the socket did not start. */
  private readonly takenItems: EgressFrame[] = [];
  private readonly takenClasses: number[] = [];
  private readonly trail: number[] = [];

  /** Bytes waiting, MACs included, and EGRESS_FRAME_OVERHEAD_BYTES for each frame. */
  get waitingBytes(): number {
    return this.bytes;
  }

  get waitingFrames(): number {
    return this.frames;
  }

  /** Frames waiting in one class. */
  waitingIn(cls: number): number {
    return (this.queues[cls] as ClassQueue).size;
  }

  push(cls: number, frame: EgressFrame): void {
    if (!Number.isInteger(cls) || cls < 0 || cls >= EGRESS_CLASSES)
      throw new RangeError(`egress class must be 0..${EGRESS_CLASSES - 1}, got ${cls}`);
    frame.order = this.arrivals++;
    (this.queues[cls] as ClassQueue).push(frame);
    this.bytes += frame.bytes + EGRESS_FRAME_OVERHEAD_BYTES;
    this.frames++;
  }

  /** Starts a write: the takes from here on may be given back (giveBack) until the next begin. */
  begin(): void {
    this.takenItems.length = 0;
    this.takenClasses.length = 0;
    this.trail.length = 0;
  }

  /** The next frame to write, or null when none waits. */
  take(): EgressFrame | null {
    if (this.frames === 0) return null;
    const cls = this.nextClass();
    const queue = this.queues[cls] as ClassQueue;
    const item = queue.shift();
    for (let c = 0; c < EGRESS_CLASSES; c++) this.trail.push(this.passed[c] as number);
    let overtook = 0;
    for (let lower = 0; lower < cls; lower++) {
      const waiting = this.queues[lower] as ClassQueue;
      if (waiting.size === 0) continue;
      this.passed[lower] = (this.passed[lower] as number) + 1;
      if (waiting.headOrder < item.order) overtook = 1;
    }
    this.trail.push(overtook);
    this.passed[cls] = 0;
    this.takenItems.push(item);
    this.takenClasses.push(cls);
    this.bytes -= item.bytes + EGRESS_FRAME_OVERHEAD_BYTES;
    this.frames--;
    return item;
  }

  /**
   * Ends a write of which the socket started only the first `kept` frames taken since
   * begin(): the others go back to the front of their queues, and the scheduler's state to
   * what it was before they were taken. Returns how many of the kept frames overtook a
   * less urgent frame that had been waiting longer.
   */
  end(kept: number): number {
    const taken = this.takenItems.length;
    if (kept < 0 || kept > taken) throw new RangeError(`kept ${kept} of ${taken} frames taken`);
    let overtakes = 0;
    for (let i = 0; i < kept; i++) overtakes += this.trail[i * TRAIL_STRIDE + EGRESS_CLASSES] as number;
    if (kept < taken) {
      for (let c = 0; c < EGRESS_CLASSES; c++) this.passed[c] = this.trail[kept * TRAIL_STRIDE + c] as number;
      for (let i = taken - 1; i >= kept; i--) {
        const item = this.takenItems[i] as EgressFrame;
        (this.queues[this.takenClasses[i] as number] as ClassQueue).unshift(item);
        this.bytes += item.bytes + EGRESS_FRAME_OVERHEAD_BYTES;
        this.frames++;
      }
    }
    this.takenItems.length = 0;
    this.takenClasses.length = 0;
    this.trail.length = 0;
    return overtakes;
  }

  /** Drops everything waiting (the connection is gone). */
  clear(): void {
    for (const queue of this.queues) queue.clear();
    this.passed.fill(0);
    this.bytes = 0;
    this.frames = 0;
    this.takenItems.length = 0;
    this.takenClasses.length = 0;
    this.trail.length = 0;
  }

  /** The most urgent class passed over its share, else the most urgent class with a frame. */
  private nextClass(): number {
    for (let cls = EGRESS_CLASSES - 1; cls >= 0; cls--) {
      if ((this.passed[cls] as number) >= EGRESS_PASSED_MAX && (this.queues[cls] as ClassQueue).size > 0) return cls;
    }
    for (let cls = EGRESS_CLASSES - 1; cls >= 0; cls--) if ((this.queues[cls] as ClassQueue).size > 0) return cls;
    throw new Error("EgressQueues: no frame waits");
  }
}
