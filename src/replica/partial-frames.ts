/**
 * Memory held in client frames still arriving. A session may send a frame of up to
 * frameBytesMax (4 MiB by default) in as many pieces, as slowly, as it likes, and the
 * connection's decoder keeps what arrived (wire/frame.ts, at most twice that) until the
 * frame is whole. Alone that is bounded by the frame; across sessions it was not: 1,024
 * sessions each sending most of a 4 MiB frame and then a byte now and then held 4.5 GiB
 * in a replica and got its view changed. Here every client connection's unfinished frame
 * is counted, in all and by remote address, and:
 *
 * - past `perAddressBytesMax` for one address (an IPv6 /64 counts as one, net/address.ts),
 *   that address's frames arriving slowest (bytes that arrived over the time since the
 *   frame began) are cut, their connections closed, until it is back under; past
 *   `bytesMax` in all, the slowest frames of any address: a sender that stalls holds the
 *   least rate, and a frame coming at the link's speed is the last to go. (Cutting from
 *   the address holding the most instead let senders spread thin over many addresses
 *   make an honest fast sender that address.) To push out an honest frame, senders must
 *   keep theirs coming faster than it;
 * - while the frames held pass a quarter of `bytesMax` (someone is filling it), a frame
 *   that over `graceMs` got less than `bytesPerSecondMin` on average is cut (a byte every
 *   25 s kept the idle timeout from ever firing). Below that, a frame may come as slowly
 *   as its link allows: a client sends each request to every replica, so a probe on a
 *   2 Mbit/s uplink sends each of four replicas about 60 KB/s.
 *
 * A connection whose reads this replica paused (its frames wait in the client scheduler,
 * or its client is over its budget) cannot make progress, so it is neither chosen nor
 * judged slow while paused: its bytes cannot grow meanwhile, and its window of `graceMs`
 * starts again. Nothing waits for room (an earlier version paused reads, and frames
 * paused halfway had nothing left to resume them): the bound acts by choosing whom to close.
 */

import { addressGroup } from "../net/address.ts";

/** Bytes held in unfinished client frames, in all: 64 whole frames of the default 4 MiB. */
export const PARTIAL_FRAME_BYTES_MAX = 256 * 1024 * 1024;
/** Of PARTIAL_FRAME_BYTES_MAX, what the connections of one remote address may hold: a quarter. */
export const PARTIAL_FRAME_BYTES_PER_ADDRESS_MAX = PARTIAL_FRAME_BYTES_MAX / 4;
/** A frame still arriving after this long must come at PARTIAL_FRAME_BYTES_PER_SECOND_MIN at least. */
export const PARTIAL_FRAME_GRACE_MS = 10_000;
/** 16 KiB/s while the frames held pass a quarter of the bound: a 2 MiB publish in about two minutes. */
export const PARTIAL_FRAME_BYTES_PER_SECOND_MIN = 16 * 1024;

export interface PartialFrameLimits {
  readonly bytesMax: number;
  readonly perAddressBytesMax: number;
  readonly graceMs: number;
  readonly bytesPerSecondMin: number;
}

export const DEFAULT_PARTIAL_FRAME_LIMITS: PartialFrameLimits = {
  bytesMax: PARTIAL_FRAME_BYTES_MAX,
  perAddressBytesMax: PARTIAL_FRAME_BYTES_PER_ADDRESS_MAX,
  graceMs: PARTIAL_FRAME_GRACE_MS,
  bytesPerSecondMin: PARTIAL_FRAME_BYTES_PER_SECOND_MIN,
};

/** What the count reads of a connection's decoder after each chunk. */
export interface PartialFrameState {
  /** Bytes allocated for the frame being assembled (0: none is). */
  readonly reservedBytes: number;
  /** Bytes of it that arrived. */
  readonly partialBytes: number;
  /** Frames begun so far: a change means another frame. */
  readonly partialsBegun: number;
}

interface Unfinished {
  readonly address: string;
  readonly frame: number;
  readonly startedMs: number;
  reserved: number;
  arrived: number;
  /** The slowness rule's window: when it began and what had arrived then. */
  windowMs: number;
  windowArrived: number;
}

/** A connection whose frame is cut, and why (for its refusal and the log). */
export interface CutFrame<C> {
  readonly conn: C;
  readonly reason: string;
}

export class PartialFrames<C> {
  private readonly unfinished = new Map<C, Unfinished>();
  private readonly byAddress = new Map<string, number>();
  private total = 0;

  constructor(
    /** Whether this replica paused `conn`'s reads: it cannot send more meanwhile. */
    private readonly paused: (conn: C) => boolean,
    private readonly limits: PartialFrameLimits = DEFAULT_PARTIAL_FRAME_LIMITS,
  ) {}

  /** Bytes held in unfinished frames, in all. */
  get heldBytes(): number {
    return this.total;
  }

  /** Bytes held by `address`'s connections. */
  heldBy(address: string): number {
    return this.byAddress.get(address) ?? 0;
  }

  /**
   * Notes `conn`'s decoder after a chunk; returns the connections to close, this one or
   * others, when a bound is passed (their entries are gone already).
   */
  update(conn: C, remote: string, decoder: PartialFrameState, nowMs: number): CutFrame<C>[] {
    const known = this.unfinished.get(conn);
    // Most chunks end with no frame half-arrived: a lookup, nothing more.
    if (decoder.reservedBytes === 0) {
      if (known !== undefined) this.forget(conn, known);
      return [];
    }
    let entry = known;
    if (entry === undefined || entry.frame !== decoder.partialsBegun) {
      if (entry !== undefined) this.forget(conn, entry);
      entry = {
        address: addressGroup(remote),
        frame: decoder.partialsBegun,
        startedMs: nowMs,
        reserved: 0,
        arrived: 0,
        windowMs: nowMs,
        windowArrived: 0,
      };
      this.unfinished.set(conn, entry);
    }
    this.change(entry, decoder.reservedBytes - entry.reserved);
    entry.reserved = decoder.reservedBytes;
    entry.arrived = decoder.partialBytes;
    return this.overBounds(entry.address, nowMs);
  }

  /** The connection closed (or its frame is no longer counted). */
  remove(conn: C): void {
    const entry = this.unfinished.get(conn);
    if (entry !== undefined) this.forget(conn, entry);
  }

  /**
   * Called every second or so: frames that got less than the minimum rate over a whole
   * window of `graceMs` with reads open; their entries are gone.
   */
  slow(nowMs: number): CutFrame<C>[] {
    const cut: CutFrame<C>[] = [];
    const { graceMs, bytesPerSecondMin, bytesMax } = this.limits;
    const judged = this.total > bytesMax / 4;
    for (const [conn, entry] of this.unfinished) {
      if (this.paused(conn) || !judged) {
        entry.windowMs = nowMs;
        entry.windowArrived = entry.arrived;
        continue;
      }
      const windowMs = nowMs - entry.windowMs;
      if (windowMs < graceMs) continue;
      const rate = ((entry.arrived - entry.windowArrived) * 1000) / windowMs;
      entry.windowMs = nowMs;
      entry.windowArrived = entry.arrived;
      if (rate >= bytesPerSecondMin) continue;
      this.forget(conn, entry);
      cut.push({
        conn,
        reason: `a frame arriving at ${Math.floor(rate)} bytes/s over ${windowMs} ms (at least ${bytesPerSecondMin} bytes/s; send smaller frames on a slow link)`,
      });
    }
    return cut;
  }

  private overBounds(address: string, nowMs: number): CutFrame<C>[] {
    const cut: CutFrame<C>[] = [];
    const { bytesMax, perAddressBytesMax } = this.limits;
    while (this.heldBy(address) > perAddressBytesMax) {
      const slowest = this.slowest(nowMs, address);
      if (slowest === null) break;
      cut.push(
        this.cut(slowest, nowMs, `its address holds ${this.heldBy(address)} bytes of frames still arriving, over ${perAddressBytesMax}`),
      );
    }
    while (this.total > bytesMax) {
      const slowest = this.slowest(nowMs, null);
      if (slowest === null) break;
      cut.push(this.cut(slowest, nowMs, `this replica holds ${this.total} bytes of client frames still arriving, over ${bytesMax}`));
    }
    return cut;
  }

  private cut(conn: C, nowMs: number, why: string): CutFrame<C> {
    const entry = this.unfinished.get(conn) as Unfinished;
    const rate = Math.floor(rateOf(entry, nowMs));
    this.forget(conn, entry);
    return { conn, reason: `${why}; the frame arriving slowest is cut (${rate} bytes/s)` };
  }

  /** The unfinished frame with the lowest rate, of `address` or of all; null when none. */
  private slowest(nowMs: number, address: string | null): C | null {
    let found: C | null = null;
    let lowest = Number.POSITIVE_INFINITY;
    for (const [conn, entry] of this.unfinished) {
      if (address !== null && entry.address !== address) continue;
      // Paused, it cannot grow what it holds; what arrives comes on the others.
      if (this.paused(conn)) continue;
      const rate = rateOf(entry, nowMs);
      if (rate < lowest) {
        lowest = rate;
        found = conn;
      }
    }
    return found;
  }

  private forget(conn: C, entry: Unfinished): void {
    this.change(entry, -entry.reserved);
    this.unfinished.delete(conn);
  }

  private change(entry: Unfinished, delta: number): void {
    if (delta === 0) return;
    this.total += delta;
    const held = (this.byAddress.get(entry.address) ?? 0) + delta;
    if (held <= 0) this.byAddress.delete(entry.address);
    else this.byAddress.set(entry.address, held);
  }
}

/** Bytes a second since the frame began (a frame just begun counts as arriving fast). */
function rateOf(entry: Unfinished, nowMs: number): number {
  const seconds = Math.max(nowMs - entry.startedMs, 1) / 1000;
  return entry.arrived / seconds;
}
