/**
 * Checkpoint snapshots of the channel state machine: kept in memory for serving state
 * transfer, and written to disk as the base a restart replays from.
 *
 * At every checkpoint (a `takeCheckpoint` from the core, after executing seq % K == 0)
 * the machine's state is captured: `exportSnapshot()` records references to the retained
 * batches (immutable), not copies, so a capture costs one pointer per batch and the bytes
 * are encoded only as parts are read out. The capture itself is never read: each transfer
 * served and each base written reads a new reader of it (`reopen()`), so a state can be
 * served any number of times, bounded only by the per-peer bound on transfers opened
 * (state-transfer.ts SERVE_OPENS_PER_PEER_MAX). Captures below the stable checkpoint are
 * dropped, unless pinned as an epoch's switch point (`pin`): a new transfer is not opened
 * on them, but a peer whose transfer was under way when the stable checkpoint passed it
 * goes on being served from its open cursor (PartSource.outlivesDrop).
 *
 * Base snapshots: restart replays the decided log from the newest base, so a new base is
 * written (one part per tick in the background of normal work, one every
 * BASE_URGENT_TICKS_PER_PART while urgent requests arrive) once the log since the
 * old one has grown as large as the base itself (amortized: each byte of state is
 * written at most about twice per its lifetime in the log) or past a row bound (so that
 * restart replays a bounded number of decisions). Completing a base deletes the old base
 * and the decided rows it covers, in one transaction.
 */
import type { ChannelMachine } from "../../core/channels/machine.ts";
import type { SnapshotExport } from "../../core/channels/snapshot.ts";
import type { ClientTableExport } from "../../core/ordering/clients.ts";
import type { Checkpoint } from "../../core/ordering/messages.ts";
import { bytesEqual } from "../../crypto/encoding.ts";
import type { Log } from "../log.ts";
import type { Metrics } from "../metrics.ts";
import { checkpointStateDigest } from "./digest.ts";
import type { ReplicaStorage } from "./index.ts";
import type { SnapshotHead } from "./records.ts";
import { encodeStreamMeta, PartCutter } from "./stream.ts";

/** Checkpoint captures kept at most (the stable one and those after it). */
export const CAPTURES_MAX = 4;
/** A new base is written once the decided log since the last one holds at least this many bytes... */
export const BASE_REWRITE_MIN_BYTES = 4 * 1024 * 1024;
/** ...and at least as many bytes as the base itself, or once it holds this many decisions. */
export const BASE_REWRITE_ROWS_MAX = 16_384;
/**
 * Parts of a base written per tick (10 ms): one part (256 KiB with the default frame limit,
 * about 25 MiB/s), so the base goes to disk in the background without taking the event
 * loop. Every replica starts its base at the same stable checkpoint; at four parts a tick
 * the four replicas of one host spent most of their event loops on it for a few hundred
 * milliseconds, and an ordered publish at 2,000 ev/s waited up to 363-385 ms (p99 311-315
 * ms in a run with a 13 MB base) against 67-126 ms (p99 44-78 ms) at one part a tick.
 */
export const BASE_PARTS_PER_TICK = 1;
/**
 * Ticks a base should take at most (60 s), whatever its size. A base holds its capture,
 * and with it the batches retention drops meanwhile, until it is written; at one part a
 * tick a state of gigabytes would hold them for many minutes. Past
 * BASE_PARTS_PER_TICK × BASE_WRITE_TICKS_TARGET parts (1.5 GiB with 256 KiB parts) more
 * parts go per tick (basePartsPerTick).
 */
export const BASE_WRITE_TICKS_TARGET = 6000;

/**
 * Parts a base is written at per tick, for a base expected to hold `expectedBytes` (the
 * previous base's size, or the captured state's retained batches if larger: the new one is
 * of the same state, later).
 */
export function basePartsPerTick(expectedBytes: number, partBytes: number): number {
  return Math.max(BASE_PARTS_PER_TICK, Math.ceil(expectedBytes / partBytes / BASE_WRITE_TICKS_TARGET));
}

/**
 * While urgent (high or critical) requests arrive at this replica, a base being written
 * yields to them: it writes a part only every this many ticks (about 2.5 MiB/s with 256
 * KiB parts instead of 25), unless it is behind the pace that finishes it within
 * BASE_WRITE_TICKS_TARGET ticks. Every replica writes its base at the same stable
 * checkpoint; under a bulk flood, the four replicas of one host writing theirs at full
 * pace held a critical channel's p50 at 100-300 ms for the seconds it took, against 5-30
 * ms before and after (README, Performance, "A base gives way to urgent requests"). The
 * price: under steady urgent traffic a base takes up to ten times as many ticks (a 74 MB
 * one up to about 2,800 instead of 280; never past the pace's 6,000), holding its capture,
 * and the batches retention drops meanwhile, that much longer.
 */
export const BASE_URGENT_TICKS_PER_PART = 10;

/** Where parts of a snapshot stream come from, one at a time. */
export interface PartSource {
  readonly seq: number;
  /**
   * Whether it reads on after the keeper let go of its state: a capture's reader encodes
   * the capture's own immutable batches, so a transfer under way keeps its state after the
   * stable checkpoint moved past it; a stored base's parts go with the base.
   */
  readonly outlivesDrop: boolean;
  /** The next part; null at the end. Throws SourceError when a stored part is damaged. */
  next(): Uint8Array | null;
  skip(count: number): void;
}

export class SourceError extends Error {
  override readonly name = "SourceError";
}

interface Capture {
  readonly seq: number;
  readonly stateDigest: Uint8Array;
  readonly appDigest: Uint8Array;
  readonly clients: ClientTableExport;
  readonly meta: Uint8Array;
  /** The captured state; never read itself, only reopened. */
  readonly state: SnapshotExport;
}

interface BaseWriting {
  readonly capture: Capture;
  readonly proof: Checkpoint[];
  readonly cutter: PartCutter;
  /** basePartsPerTick at the start. */
  readonly partsPerTick: number;
  /** The parts the base is expected to take (from the previous base's size, or the state's): its pace while yielding. */
  readonly expectedParts: number;
  parts: number;
  bytes: number;
  /** Ticks since it started, the tick of its last part, and the ticks it gave up to urgent traffic. */
  ticks: number;
  lastPartTick: number;
  yielded: number;
}

export interface SnapshotKeeperOptions {
  readonly storage: ReplicaStorage;
  readonly machine: ChannelMachine;
  readonly partBytes: number;
  readonly log: Log;
  readonly metrics: Metrics;
}

export class SnapshotKeeper {
  private readonly captures = new Map<number, Capture>();
  private writing: BaseWriting | null = null;
  /** Bases found damaged while serving: replaced (and deleted) by the next base written. */
  private readonly damaged: number[] = [];

  constructor(
    private readonly options: SnapshotKeeperOptions,
    /** The base on disk now (null: none). */
    private base: SnapshotHead | null,
  ) {
    options.metrics.gauge("snapshot_base_seq", () => this.base?.seq ?? 0);
    options.metrics.gauge("snapshot_base_bytes", () => this.base?.bytes ?? 0);
    options.metrics.gauge("snapshot_pinned_states", () => this.pinnedHeld().length);
    options.metrics.gauge("snapshot_pinned_bytes", () => this.pinnedHeld().reduce((sum, capture) => sum + capture.state.retainedBytes, 0));
  }

  get baseHead(): SnapshotHead | null {
    return this.base;
  }

  /**
   * Keeps the capture at `seq` (an epoch's switch point, src/replica/epochs.ts) while
   * later checkpoints become stable, so a replica still in the ended epoch can fetch that
   * state, any number of times. The last `keep` switch points stay pinned (a replica
   * several epochs behind fetches each in turn).
   */
  pin(seq: number, keep: number): void {
    if (!this.pinned.includes(seq)) this.pinned.push(seq);
    while (this.pinned.length > keep) {
      const unpinned = this.pinned.shift() as number;
      if (unpinned < (this.stableSeq ?? 0)) this.captures.delete(unpinned);
    }
  }

  /** Whether `seq` is a pinned switch point (a start captures it while replaying its log through it). */
  isPinned(seq: number): boolean {
    return this.pinned.includes(seq);
  }

  /**
   * The checkpoint at `seq` is where the current epoch ends (a membership change took
   * effect there): no base is started there by the usual rule (onStable) until the switch
   * is stored. A base there whose adoption reached the disk before the switch's record
   * would leave a directory whose base is in the new epoch and whose epoch record is the
   * old one, which no start can resume.
   */
  switchPending(seq: number): void {
    this.pendingSwitchSeq = seq;
  }

  /**
   * The switch at `seq` (stable, with `proof`) is staged: a base is written there now,
   * whatever the log since the last one holds, so that a replica that restarts after the
   * switch still holds the state a replica left in the ended epoch must fetch (from its
   * base until the next one replaces it; a start before that base is written captures it
   * while replaying its log through it, as a pinned switch point). A base of an earlier
   * checkpoint being written gives way (its parts go at the next adoption). False when
   * there is no capture of that state here to write.
   */
  baseAtSwitch(seq: number, proof: Checkpoint[]): boolean {
    if (this.pendingSwitchSeq === seq) this.pendingSwitchSeq = null;
    if (this.base?.seq === seq || this.writing?.capture.seq === seq) return true;
    const capture = this.captures.get(seq);
    if (capture === undefined || (this.base !== null && this.base.seq > seq)) return false;
    if (this.writing !== null) this.damaged.push(...this.abandonWriting());
    this.startBase(capture, proof);
    return true;
  }

  /** The checkpoint where the current epoch ends, while its switch is not stored yet (switchPending). */
  private pendingSwitchSeq: number | null = null;

  /** Pinned switch points whose state is held (a pin made before its capture, or after a restart, holds none). */
  private pinnedHeld(): Capture[] {
    return this.pinned.flatMap((seq) => this.captures.get(seq) ?? []);
  }

  private readonly pinned: number[] = [];
  /** The last stable checkpoint (captures below it are kept only when pinned). */
  private stableSeq: number | null = null;

  private drop(seq: number): void {
    if (!this.pinned.includes(seq)) this.captures.delete(seq);
  }

  /** Captures the machine as it is now, which must be its state right after `seq`. */
  capture(seq: number, clients: ClientTableExport): void {
    const state = this.options.machine.exportSnapshot();
    const appDigest = state.digest;
    const stateDigest = checkpointStateDigest(seq, appDigest, clients);
    this.captures.set(seq, { seq, stateDigest, appDigest, clients, meta: encodeStreamMeta({ seq, clients }), state });
    while (this.captures.size > CAPTURES_MAX + this.pinnedHeld().length) {
      const oldest = [...this.captures.keys()].find((s) => !this.pinned.includes(s));
      if (oldest === undefined) break;
      this.captures.delete(oldest);
    }
  }

  /**
   * The core's own checkpoint record for `seq`: the capture must carry the same state
   * digest (digest.ts recomputes the core's formula). A mismatch would make this replica
   * serve, and accept, states under the wrong name, so the capture is dropped and loudly
   * reported.
   */
  checkCheckpoint(seq: number, stateDigest: Uint8Array): void {
    const capture = this.captures.get(seq);
    if (capture === undefined || bytesEqual(capture.stateDigest, stateDigest)) return;
    this.captures.delete(seq);
    this.options.metrics.inc("snapshot_digest_mismatches_total");
    this.options.log.error("checkpoint digest differs from the core's", { seq });
  }

  /** A stable checkpoint: older captures go, and a new base may start. */
  onStable(seq: number, digest: Uint8Array, proof: Checkpoint[]): void {
    this.stableSeq = Math.max(this.stableSeq ?? 0, seq);
    for (const s of [...this.captures.keys()]) if (s < seq) this.drop(s);
    const capture = this.captures.get(seq);
    if (capture === undefined || !bytesEqual(capture.stateDigest, digest) || this.writing !== null) return;
    if (seq === this.pendingSwitchSeq || !this.baseDue()) return;
    this.startBase(capture, proof);
  }

  private startBase(capture: Capture, proof: Checkpoint[]): void {
    const { partBytes } = this.options;
    // The previous base's size, or the state's retained batches if larger (a state that grew, or the first base).
    const expectedBytes = Math.max(this.base?.bytes ?? 0, capture.state.retainedBytes);
    this.writing = {
      capture,
      proof,
      cutter: new PartCutter(capture.meta, capture.state.reopen(), partBytes),
      partsPerTick: basePartsPerTick(expectedBytes, partBytes),
      expectedParts: Math.ceil(expectedBytes / partBytes),
      parts: 0,
      bytes: 0,
      ticks: 0,
      lastPartTick: 0,
      yielded: 0,
    };
    this.options.log.info("writing a base snapshot", { seq: capture.seq });
  }

  private baseDue(): boolean {
    const since = this.options.storage.sinceBase;
    if (this.base === null) return since.rows > 0;
    if (since.rows >= BASE_REWRITE_ROWS_MAX) return true;
    return since.bytes >= Math.max(BASE_REWRITE_MIN_BYTES, this.base.bytes);
  }

  /**
   * Background work: a few parts of the base being written, or, while `urgent` requests
   * arrive here, one part every BASE_URGENT_TICKS_PER_PART ticks unless the base is behind
   * the pace that finishes it within BASE_WRITE_TICKS_TARGET ticks.
   */
  tick(urgent = false): void {
    const w = this.writing;
    if (w === null) return;
    w.ticks++;
    if (urgent && !behindPace(w.parts, w.expectedParts, w.ticks) && w.ticks - w.lastPartTick < BASE_URGENT_TICKS_PER_PART) {
      w.yielded++;
      this.options.metrics.inc("snapshot_base_ticks_yielded_total");
      return;
    }
    w.lastPartTick = w.ticks;
    const { storage } = this.options;
    for (let i = 0; i < w.partsPerTick; i++) {
      const part = w.cutter.next();
      if (part === null) return this.finishBase(w);
      storage.stagePart(w.capture.seq, w.parts, part);
      w.parts++;
      w.bytes += part.length;
    }
  }

  private finishBase(w: BaseWriting): void {
    this.writing = null;
    const head: SnapshotHead = {
      status: "complete",
      seq: w.capture.seq,
      stateDigest: w.capture.stateDigest,
      appDigest: w.capture.appDigest,
      clients: w.capture.clients,
      proof: w.proof,
      parts: w.parts,
      bytes: w.bytes,
      partBytes: this.options.partBytes,
    };
    const previous = [...this.damaged.splice(0), ...(this.base === null ? [] : [this.base.seq])];
    this.options.storage.stageAdoptBase(head, previous);
    this.base = head;
    this.options.metrics.inc("snapshot_bases_written_total");
    this.options.log.info("base snapshot written", {
      seq: head.seq,
      bytes: head.bytes,
      parts: head.parts,
      ticks: w.ticks,
      yieldedTicks: w.yielded,
    });
  }

  /**
   * A part of the stored base failed its checksum while being served: the base is no
   * longer served, and a new one is written at the next stable checkpoint (which also
   * deletes the damaged one). Until then a restart drops it and recovers by transfer.
   */
  baseDamaged(): void {
    if (this.base === null) return;
    this.damaged.push(this.base.seq);
    this.base = null;
  }

  /** The base recovery installed, or one installed by state transfer (stored by its caller). */
  setBase(head: SnapshotHead | null): void {
    this.base = head;
  }

  /**
   * A snapshot installed by state transfer becomes the base: its parts are on disk
   * already (the transfer wrote them), so adopting it stages only the complete head and
   * the removal of what it supersedes: the old base, damaged ones, and the parts of a base
   * this keeper was still writing, which no head names and would otherwise stay on disk
   * until the next start. (A base being written at the installed seq itself shares its
   * rows; stageAdoptBase never deletes the head's own seq.)
   */
  adoptInstalled(head: SnapshotHead): void {
    const abandoned = this.abandonWriting();
    const previous = [...this.damaged.splice(0), ...(this.base === null ? [] : [this.base.seq]), ...abandoned];
    this.options.storage.stageAdoptBase(head, previous);
    this.base = head;
    for (const s of [...this.captures.keys()]) if (s < head.seq) this.drop(s);
  }

  /** Stops the base being written, if any; the seq whose parts it had staged (empty: none). */
  private abandonWriting(): number[] {
    const w = this.writing;
    this.writing = null;
    return w === null ? [] : [w.capture.seq];
  }

  /**
   * Whether the state at `seq` with state digest `digest` can still be served from here (a
   * capture of it, or the stored base). A serving cursor opened on a state that is no
   * longer held is dropped (state-transfer.ts): it would hold a dropped capture in memory,
   * or read parts of a superseded base that the base's replacement deleted.
   */
  holds(seq: number, digest: Uint8Array): boolean {
    const capture = this.captures.get(seq);
    if (capture !== undefined && bytesEqual(capture.stateDigest, digest)) return true;
    return this.isBase(seq, digest);
  }

  /** The state digest of this replica's own capture at `seq` (taken live or while replaying its log), or null. */
  capturedDigest(seq: number): Uint8Array | null {
    return this.captures.get(seq)?.stateDigest ?? null;
  }

  /** Whether the stored base is the state at `seq` with state digest `digest`. */
  isBase(seq: number, digest: Uint8Array): boolean {
    const base = this.base;
    return base !== null && base.seq === seq && bytesEqual(base.stateDigest, digest);
  }

  /**
   * Whether the snapshot rows at `seq` are this keeper's: its base, or the base it is
   * writing. A transfer to the same seq (one the replica then reached by executing) shares
   * those rows, and must leave them when it is dropped.
   */
  owns(seq: number): boolean {
    return this.base?.seq === seq || this.writing?.capture.seq === seq;
  }

  /**
   * A source for the stream of the state at `seq` with state digest `digest`: a new
   * reader of its capture, or the stored base. Null when this replica cannot serve it.
   */
  openSource(seq: number, digest: Uint8Array): PartSource | null {
    const capture = this.captures.get(seq);
    if (capture !== undefined && bytesEqual(capture.stateDigest, digest)) {
      return cutterSource(seq, new PartCutter(capture.meta, capture.state.reopen(), this.options.partBytes));
    }
    const base = this.base;
    if (base !== null && this.isBase(seq, digest) && base.partBytes === this.options.partBytes) {
      return new DiskSource(this.options.storage, base);
    }
    return null;
  }
}

/** Fewer parts written after `ticks` than the pace that writes `expectedParts` in BASE_WRITE_TICKS_TARGET ticks has reached. */
export function behindPace(parts: number, expectedParts: number, ticks: number): boolean {
  return parts * BASE_WRITE_TICKS_TARGET < expectedParts * ticks;
}

function cutterSource(seq: number, cutter: PartCutter): PartSource {
  return { seq, outlivesDrop: true, next: () => cutter.next(), skip: (count) => cutter.skip(count) };
}

/** Parts of a stored base, read and checked one at a time. */
class DiskSource implements PartSource {
  readonly outlivesDrop = false;
  private index = 0;

  constructor(
    private readonly storage: ReplicaStorage,
    private readonly head: SnapshotHead,
  ) {}

  get seq(): number {
    return this.head.seq;
  }

  next(): Uint8Array | null {
    if (this.index >= this.head.parts) return null;
    const part = this.storage.readPart(this.head.seq, this.index);
    if (part === null) throw new SourceError(`part ${this.index} of the base at ${this.head.seq} is missing or damaged`);
    this.index++;
    return part;
  }

  skip(count: number): void {
    this.index = Math.min(this.head.parts, this.index + count);
  }
}
