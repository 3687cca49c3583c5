/**
 * State transfer (core/ordering/PROTOCOL.md §7, src/README.md §5): a replica behind the stable checkpoint
 * (new, wiped, repaired after corruption, or away too long) fetches the channel state at
 * that checkpoint from its peers, checks it against the digest f+1 replicas signed, and
 * installs it; the ordering core then catches up on the decisions after it.
 *
 * Protocol, inside the runtime's peer envelope {kind: "state-transfer", message} (authenticated and MACed by
 * the peer mesh like every peer message):
 *   get  {seq, digest, part, count, nonce}   send parts part .. part+count-1 of the state
 *                                            at seq whose state digest is `digest`
 *   part {seq, nonce, part, data, end}       one part of the stream (storage/stream.ts)
 *   none {seq, nonce, reason}                this replica cannot serve that state
 *
 * The stream is cut into equal parts by byte offset, and equal states give equal bytes,
 * so a transfer resumes at any part with any replica, and one that a restart interrupted
 * resumes from the parts already on disk. The fetcher keeps a window of parts in flight
 * from one source at a time, writes each part to disk as an incoming snapshot, and feeds
 * it to the state machine's importer: memory stays at the state being built plus a few
 * parts. A source that stops answering is replaced by the next one (the signers of the
 * target first, then the other members, in turn); one that cannot serve (`none`), or
 * cannot be reached (no link to it, say, under a key this replica's epoch does not
 * accept), has its turn like the others, and once every source had its turn they are all
 * asked again after the part timeout (at once while none could be reached yet), since a
 * source that could not serve a moment ago may serve now. A completed state is fetched
 * again only if its install is declined: a request the core made before the install, run
 * after it, would otherwise start over on the parts that are becoming the base. When the finished state's digest
 * differs from the signed one and one source sent it all, that source is distrusted for
 * this target and the transfer starts over with the others; when several did (or parts
 * came back from disk), who lied cannot be told, so from then on every attempt takes one
 * source's whole stream: a Byzantine source is detected and another asked, and one that
 * lies in a few parts and falls silent cannot make an honest one share its blame.
 *
 * A newer target (the group made a later checkpoint stable: ordered traffic does every 128
 * seqs) does not restart a fetch whose parts still come: it waits, and is fetched only if
 * that one stalls or its source no longer holds the state (core/ordering/PROTOCOL.md §7,
 * "An older state"); the core installs the older state and catches up from the peers'
 * decided logs. A source serves a peer's open cursor on a capture to its end even after
 * its own stable checkpoint passed it.
 *
 * Every part but the last is exactly partBytes and none is empty (a stream opens with its
 * meta record), and a stream is at most streamBytesBound long: a source that sends a
 * part no valid stream has, no new part for PART_TIMEOUT_MS, or new parts slower than
 * SOURCE_PROGRESS_BYTES_PER_SECOND_MIN over a SOURCE_PROGRESS_WINDOW_MS, is distrusted for
 * this target and the next one asked (the parts it sent kept), so a Byzantine source cannot
 * keep a transfer going without delivering the state, nor by delivering it a drop at a time. When the last part arrives, the incoming head records
 * the part count; a restart that finds the whole stream on disk installs it from there,
 * since no replica sends anything past the last part.
 *
 * The server side reads parts from a checkpoint capture or the stored base (see
 * storage/snapshots.ts), one cursor per peer, with the last few parts cached for
 * retransmission: memory per peer is a few parts. What one peer is sent is bounded, since
 * a get of a hundred bytes asks for a window of parts: by a budget of bytes a second
 * (SERVE_BYTES_PER_SECOND_MAX), a cached part at most once per SERVE_RESEND_INTERVAL_MS,
 * and nothing for a moment after its link was found full. A get past those is dropped
 * unanswered (counted, logged), never answered later; the fetcher asks again.
 */
import { encodeTransferMessage, STREAM_PARTS_MAX, TRANSFER_WINDOW_PARTS, type TransferMessage } from "./peer-messages.ts";
import type { ChannelsConfig } from "../core/channels/config.ts";
import type { ChannelMachine } from "../core/channels/machine.ts";
import { type SnapshotImport, snapshotBytesBound } from "../core/channels/snapshot.ts";
import type { Checkpoint } from "../core/ordering/messages.ts";
import { bytesEqual } from "../crypto/encoding.ts";
import type { Log } from "./log.ts";
import type { Metrics } from "./metrics.ts";
import { RateLimiter } from "./rate.ts";
import { checkpointStateDigest } from "./storage/digest.ts";
import type { ReplicaStorage, SnapshotHead } from "./storage/index.ts";
import { type PartSource, type SnapshotKeeper, SourceError } from "./storage/snapshots.ts";
import { STREAM_META_BYTES_MAX, STREAM_META_PREFIX_BYTES, StreamReader } from "./storage/stream.ts";

export {
  encodeTransferMessage,
  STREAM_PARTS_MAX,
  TRANSFER_WINDOW_PARTS,
  type TransferMessage,
  validateTransferMessage,
} from "./peer-messages.ts";

/** Parts a server keeps per peer for retransmission. */
export const SERVE_CACHE_PARTS = 2 * TRANSFER_WINDOW_PARTS;
/** A source that delivered no new part for this long is distrusted for the target and replaced. */
export const PART_TIMEOUT_MS = 3_000;
/**
 * An ask that could not be sent (no link to the source yet: a replica that just started
 * asks before its links are up; or the link's queue full) is sent again to the same
 * source after this long, and when that fails too the next source is asked, instead of
 * waiting out PART_TIMEOUT_MS for an answer to a message that never left. Parts are
 * asked for only by asks that went out, so one that could not leave leaves no hole.
 */
export const UNSENT_ASK_RETRY_MS = 100;
/**
 * When no new part came from the source for this long, it is asked again for a window
 * from the next part expected (until PART_TIMEOUT_MS replaces the source). A source's
 * parts go over its own link to the fetcher, which may not be up yet when the fetcher's
 * link to it is (a replica that just joined: the others dial it again only after their
 * redial backoff, up to about 2 s) or may be full, and a part the source could not send
 * is lost, not queued. A repeated ask is served from the source's cache of its last
 * parts; it repeats at most a window of parts, a few times per PART_TIMEOUT_MS.
 */
export const REASK_MS = 500;
/** A serving cursor idle for this long is dropped (its capture with it). */
export const CURSOR_IDLE_MS = 30_000;

/**
 * Bytes of parts one peer is served per second at most (a token bucket, refilled at this
 * rate), whatever it asks. A get is about 100 bytes and its answer up to a window of parts
 * (1 MiB at the largest part size), so without a bound one peer's gets would make this
 * replica encode, MAC and send a thousand times what they cost it. An honest fetcher asks
 * for one part per part it receives (a window in flight), and again for a window every
 * REASK_MS without progress: its asks go as fast as the parts come. The fastest transfer
 * measured (`npm run bench:join`, README) took 40 to 50 MB/s from one source; 64 MiB/s
 * is above that, and a peer flooding gets costs this replica at most that much serving
 * (about 64 ms of a second's loop at the 1 ms per MiB a cached part's encoding and MAC take).
 */
export const SERVE_BYTES_PER_SECOND_MAX = 64 * 1024 * 1024;
/**
 * The bucket's depth: a second's worth, as the peer inbox's budgets. A get the budget
 * refuses is dropped, and the fetcher takes parts in order only, so a transfer that
 * reaches the rate loses the rest of its window and waits REASK_MS for its re-ask; the
 * bucket refills meanwhile, and a deep one lets it go on at the rate instead of a few
 * parts per re-ask. A flood gets this once more than the rate, in its first second.
 */
export const SERVE_BYTES_BURST_MAX = SERVE_BYTES_PER_SECOND_MAX;
/**
 * A part of a peer's cursor cache is sent to it again at most once per this long. An
 * honest fetcher asks again for what it already asked only after REASK_MS without
 * progress, so its re-asks always pass; a flood of gets for the same window gets each
 * cached part at most four times a second (SERVE_CACHE_PARTS parts, 8 MiB/s at the
 * largest part size) instead of as often as it asks.
 */
export const SERVE_RESEND_INTERVAL_MS = REASK_MS / 2;
/**
 * After a part could not be sent to a peer (its link full, or down), the peer's gets are
 * dropped unanswered for this long, before anything is read or encoded: each would
 * encode a part for a send the link refuses. Short beside REASK_MS, after which an honest
 * fetcher asks again.
 */
export const SERVE_LINK_FULL_BACKOFF_MS = 100;
/** Gets dropped unanswered (budget, re-sent too soon, link full) are logged at most once per this long per peer, with the count since. */
export const SERVE_DROP_LOG_MS = 10_000;

/**
 * A source must deliver new parts at this rate at least, over each
 * SOURCE_PROGRESS_WINDOW_MS from when it was asked, or it is replaced like one that timed
 * out. PART_TIMEOUT_MS alone replaces only a silent source: one that sends a part every
 * few seconds would keep the transfer for hours. An honest source, even loaded, delivers
 * tens of MB/s (40 to 50 MB/s measured while serving a 202 MB state, README); one MiB a
 * second is far below that, and a transfer that keeps being moved on from sources this
 * slow still completes, since the parts fetched are kept (below; except once a stream of
 * several sources failed its digest, when each attempt takes one source's whole stream).
 */
export const SOURCE_PROGRESS_BYTES_PER_SECOND_MIN = 1024 * 1024;
/**
 * The slowest round trip the least progress allows an honest source: with a window of
 * TRANSFER_WINDOW_PARTS parts in flight, a source on a link this slow delivers a window
 * each such time, so the least progress is at most that (smaller parts, with a smaller
 * frame_bytes_max, lower it; a long link to a distant replica is not mistaken for a liar).
 */
export const SOURCE_ROUND_TRIP_MS_MAX = 2_000;
/** The least progress a fetcher asks of a source by default, for parts of `partBytes` (tooSlow). */
export function leastProgressBytesPerSecond(partBytes: number): number {
  return Math.min(SOURCE_PROGRESS_BYTES_PER_SECOND_MIN, (partBytes * TRANSFER_WINDOW_PARTS * 1000) / SOURCE_ROUND_TRIP_MS_MAX);
}

/**
 * The window over which a source's progress is measured: long beside PART_TIMEOUT_MS and
 * REASK_MS, so that a pause of an honest source (a collection, a commit, its link full
 * for a moment) and the re-ask after it average out.
 */
export const SOURCE_PROGRESS_WINDOW_MS = 10_000;

/**
 * Bytes of a valid snapshot stream at most under a channel config: the meta record's
 * length prefix, the largest meta record the stream reader accepts, and the largest
 * snapshot a machine with this config can reach. A longer stream is no valid state.
 * Every channel takes its retention from the config when it is created, and every
 * replica runs the same config (core/channels/config.ts), so the bound is the cluster's.
 */
export function streamBytesBound(config: ChannelsConfig): number {
  return STREAM_META_PREFIX_BYTES + STREAM_META_BYTES_MAX + snapshotBytesBound(config);
}

/** Parts of a stream of at most `streamBytesMax` bytes: all but the last are exactly `partBytes`. */
export function streamPartsBound(streamBytesMax: number, partBytes: number): number {
  return Math.min(STREAM_PARTS_MAX, Math.ceil(streamBytesMax / partBytes));
}

/** What the fetcher wants: the core's `fetchState`. */
export interface TransferTarget {
  readonly seq: number;
  readonly stateDigest: Uint8Array;
  readonly from: readonly number[];
  readonly proof: Checkpoint[];
}

export interface StateTransferOptions {
  readonly self: number;
  readonly send: (to: number, bytes: Uint8Array) => boolean;
  readonly keeper: SnapshotKeeper;
  readonly storage: ReplicaStorage;
  readonly machine: ChannelMachine;
  readonly partBytes: number;
  /** The longest stream a transfer accepts; streamBytesBound(machine.config) when not set. */
  readonly streamBytesMax?: number;
  readonly log: Log;
  readonly metrics: Metrics;
  readonly now: () => number;
  /** Installs a verified state; the caller hands it to the machine and the core. */
  readonly install: (importer: SnapshotImport, head: SnapshotHead) => void;
  /** The per-peer budget of bytes served (tests); SERVE_BYTES_PER_SECOND_MAX and SERVE_BYTES_BURST_MAX when not set. */
  readonly serveBudget?: { readonly bytesPerSecond: number; readonly burstBytes: number };
  /** The least progress a source must make (tests); SOURCE_PROGRESS_BYTES_PER_SECOND_MIN when not set. */
  readonly sourceBytesPerSecondMin?: number;
}

export class StateTransfer {
  private readonly server: TransferServer;
  private readonly fetcher: TransferFetcher;

  constructor(options: StateTransferOptions, resumable: { head: SnapshotHead; parts: number } | null) {
    this.server = new TransferServer(options);
    this.fetcher = new TransferFetcher(options, resumable);
  }

  onMessage(from: number, m: TransferMessage): void {
    if (m.t === "get") this.server.onGet(from, m);
    else this.fetcher.onMessage(from, m);
  }

  /** The core asked for state (`fetchState`). */
  fetch(target: TransferTarget): void {
    this.fetcher.fetch(target);
  }

  /** The core's target is `seq` and it executed up to `executed`: a fetch it no longer takes is dropped (TransferFetcher.cancelUnless). */
  cancelUnless(seq: number | null, executed: number): void {
    this.fetcher.cancelUnless(seq, executed);
  }

  /** The state a transfer completed at `seq` was not installed (no longer wanted, or it did not install): the core may ask for it again. */
  installDeclined(seq: number): void {
    this.fetcher.installDeclined(seq);
  }

  get fetching(): number | null {
    return this.fetcher.targetSeq;
  }

  /** Whether the fetch under way takes parts of `seq` and `nonce` from `from` now. */
  awaitsPart(from: number, seq: number, nonce: number): boolean {
    return this.fetcher.awaitsPart(from, seq, nonce);
  }

  tick(): void {
    this.server.tick();
    this.fetcher.tick();
  }
}

// -------------------------------------------------------------------------------------
// Serving
// -------------------------------------------------------------------------------------

interface Served {
  readonly data: Uint8Array;
  readonly end: boolean;
  /** When this part was last sent to the cursor's peer (-Infinity: not yet). */
  sentAtMs: number;
}

interface Cursor {
  readonly seq: number;
  readonly digest: Uint8Array;
  readonly source: PartSource;
  /** The part the source produces next. */
  next: number;
  /** The part after `next`, read ahead to know whether `next` is the last; undefined until read. */
  lookahead: Uint8Array | null | undefined;
  readonly cache: Map<number, Served>;
  lastUsedMs: number;
  /** When a part was last read from the source (not the cache): a cursor on a dropped capture lives on only while its peer takes new parts. */
  lastReadMs: number;
  /** Bytes read from the source so far. */
  bytesRead: number;
  /** When this replica was first seen no longer holding the cursor's state, and bytesRead then (null while it holds it). */
  dropped: { readonly atMs: number; readonly bytesRead: number } | null;
}

/**
 * Serving cursors one peer may open within CURSOR_IDLE_MS, whatever states it asks for.
 * Each open reads the state from its start (encoding it, or reading the stored base),
 * so a peer asking again and again from part 0, or alternating between states, would
 * otherwise make this replica do that work without bound.
 */
export const SERVE_OPENS_PER_PEER_MAX = 4;

class TransferServer {
  private readonly cursors = new Map<number, Cursor>();
  /** Per peer: cursors opened since `sinceMs`, whatever state each was for. */
  private readonly opens = new Map<number, { count: number; sinceMs: number }>();
  /** Parts of the longest valid stream: a get beyond it asks for what no state has. */
  private readonly partsMax: number;
  /** Bytes served, per peer (SERVE_BYTES_PER_SECOND_MAX). */
  private readonly served: RateLimiter;
  private readonly bytesPerSecond: number;
  /** Per peer: when a part could not be sent to it (its link full or down). */
  private readonly linkFullAtMs = new Map<number, number>();
  /** Per peer: when a dropped get was last logged, and the drops since. */
  private readonly dropsLogged = new Map<number, { atMs: number; since: number }>();

  constructor(private readonly options: StateTransferOptions) {
    this.partsMax = streamPartsBound(options.streamBytesMax ?? streamBytesBound(options.machine.config), options.partBytes);
    const budget = options.serveBudget ?? { bytesPerSecond: SERVE_BYTES_PER_SECOND_MAX, burstBytes: SERVE_BYTES_BURST_MAX };
    this.bytesPerSecond = budget.bytesPerSecond;
    this.served = new RateLimiter(budget.bytesPerSecond, budget.burstBytes);
  }

  onGet(from: number, m: Extract<TransferMessage, { t: "get" }>): void {
    const { options } = this;
    options.metrics.inc("state_transfer_serve_requests_total");
    const now = options.now();
    const fullAtMs = this.linkFullAtMs.get(from);
    if (fullAtMs !== undefined && now - fullAtMs < SERVE_LINK_FULL_BACKOFF_MS) {
      return this.drop(from, m, "its link was full or down a moment ago");
    }
    if (m.part + m.count > this.partsMax) {
      // Serving it would read (and skip) the whole stored state for nothing.
      options.metrics.inc("state_transfer_serve_refused_total");
      options.send(
        from,
        encodeTransferMessage({ t: "none", seq: m.seq, nonce: m.nonce, reason: `parts beyond ${this.partsMax}, the most any state has` }),
      );
      return;
    }
    const held = this.cursors.get(from);
    // A cursor on a superseded base is not used again (its parts went with it): the state
    // is asked of the keeper afresh. One on a capture reads on after the capture was
    // dropped, so a transfer that the group's stable checkpoint overtook still completes
    // (the fetcher keeps it while its parts come, and catches up from the decided logs);
    // it holds that state's batches until it ends or CURSOR_IDLE_MS pass, one per peer.
    const reusable =
      held !== undefined &&
      held.seq === m.seq &&
      bytesEqual(held.digest, m.digest) &&
      (m.part >= held.next || held.cache.has(m.part)) &&
      (options.keeper.holds(held.seq, held.digest) || this.readsOn(held, now));
    const cursor = reusable ? held : this.open(from, m);
    if (cursor === null) return;
    cursor.lastUsedMs = now;
    for (let part = m.part; part < m.part + m.count; part++) {
      // A part not served is a hole: the fetcher takes parts in order only, so the rest of
      // the window is dropped with it, and asked again by the fetcher's re-ask.
      const cached = cursor.cache.get(part);
      if (cached !== undefined && now - cached.sentAtMs < SERVE_RESEND_INTERVAL_MS) {
        return this.drop(from, m, `part ${part} was sent less than ${SERVE_RESEND_INTERVAL_MS} ms ago`);
      }
      // Charged before the part is read or encoded; every part but the last is partBytes.
      if (!this.served.take(String(from), options.partBytes, now)) {
        return this.drop(from, m, `over its budget of ${this.bytesPerSecond} bytes served a second`);
      }
      let served: Served | null;
      try {
        served = this.serve(cursor, part);
      } catch (error) {
        if (!(error instanceof SourceError)) throw error;
        this.cursors.delete(from);
        // Damage only if the part is missing from the current base: a superseded base's
        // parts are deleted with it, which is no damage to anything still held.
        const damaged = options.keeper.isBase(cursor.seq, cursor.digest);
        if (damaged) {
          options.keeper.baseDamaged();
          options.storage.reportCorrupt([{ table: "snap_part", ids: [m.seq], key: `base ${m.seq}`, reason: error.message }]);
        }
        const reason = damaged ? "stored snapshot damaged" : "state not held here";
        options.send(from, encodeTransferMessage({ t: "none", seq: m.seq, nonce: m.nonce, reason }));
        return;
      }
      if (served === null) return;
      const sent = options.send(
        from,
        encodeTransferMessage({ t: "part", seq: m.seq, nonce: m.nonce, part, data: served.data, end: served.end }),
      );
      if (!sent) {
        // Counted by the mesh (peer_send_dropped_total); the gets of the next moment are
        // dropped before anything is encoded for them.
        this.linkFullAtMs.set(from, now);
        return;
      }
      served.sentAtMs = now;
      options.metrics.inc("state_transfer_served_bytes_total", served.data.length);
      if (served.end) return;
    }
  }

  /**
   * A get (the rest of its window) dropped unanswered: counted, and logged at most once per
   * SERVE_DROP_LOG_MS per peer. Nothing is kept to answer it later: the fetcher asks again.
   */
  private drop(from: number, m: Extract<TransferMessage, { t: "get" }>, why: string): void {
    const { options } = this;
    options.metrics.inc("state_transfer_serve_refused_total");
    const now = options.now();
    const logged = this.dropsLogged.get(from);
    if (logged !== undefined && now - logged.atMs < SERVE_DROP_LOG_MS) {
      logged.since++;
      return;
    }
    this.dropsLogged.set(from, { atMs: now, since: 0 });
    options.log.warn("state transfer get dropped unanswered", {
      peer: from,
      seq: m.seq,
      part: m.part,
      why,
      alsoSinceLastLine: logged?.since ?? 0,
    });
  }

  private open(from: number, m: Extract<TransferMessage, { t: "get" }>): Cursor | null {
    const now = this.options.now();
    const last = this.opens.get(from);
    const opens = last !== undefined && now - last.sinceMs < CURSOR_IDLE_MS ? last : { count: 0, sinceMs: now };
    if (opens.count >= SERVE_OPENS_PER_PEER_MAX) {
      this.options.metrics.inc("state_transfer_serve_refused_total");
      this.options.send(
        from,
        encodeTransferMessage({ t: "none", seq: m.seq, nonce: m.nonce, reason: "too many restarts of this transfer; ask another replica" }),
      );
      return null;
    }
    opens.count++;
    this.opens.set(from, opens);
    const source = this.options.keeper.openSource(m.seq, m.digest);
    if (source === null) {
      // Counted here; the fetcher logs the reason ("state transfer source cannot serve").
      this.options.metrics.inc("state_transfer_serve_refused_total");
      this.cursors.delete(from);
      this.options.send(from, encodeTransferMessage({ t: "none", seq: m.seq, nonce: m.nonce, reason: "state not held here" }));
      return null;
    }
    const cursor: Cursor = {
      seq: m.seq,
      digest: m.digest,
      source,
      next: 0,
      lookahead: undefined,
      cache: new Map(),
      lastUsedMs: this.options.now(),
      lastReadMs: this.options.now(),
      bytesRead: 0,
      dropped: null,
    };
    this.cursors.set(from, cursor);
    return cursor;
  }

  /** Part `part` from the cache or the source; null past the end of the stream. */
  private serve(cursor: Cursor, part: number): Served | null {
    const cached = cursor.cache.get(part);
    if (cached !== undefined) return cached;
    if (part > cursor.next) this.skip(cursor, part - cursor.next);
    const data = cursor.lookahead !== undefined ? cursor.lookahead : cursor.source.next();
    if (data === null) return null;
    cursor.lastReadMs = this.options.now();
    cursor.bytesRead += data.length;
    cursor.lookahead = cursor.source.next();
    cursor.next = part + 1;
    const served: Served = { data, end: cursor.lookahead === null, sentAtMs: Number.NEGATIVE_INFINITY };
    cursor.cache.set(part, served);
    if (cursor.cache.size > SERVE_CACHE_PARTS) cursor.cache.delete(cursor.cache.keys().next().value as number);
    return served;
  }

  private skip(cursor: Cursor, count: number): void {
    let left = count;
    if (cursor.lookahead !== undefined) {
      cursor.lookahead = undefined;
      left--;
    }
    cursor.source.skip(left);
    cursor.next += count;
  }

  /**
   * Drops idle cursors (with the capture they keep in memory), and cursors on a superseded
   * base. One on a dropped capture stays only while its peer takes new parts from it (a
   * new one within PART_TIMEOUT_MS): a transfer the stable checkpoint overtook completes
   * from it (onGet), but a peer asking for the parts it has again and again cannot keep an
   * old state in memory.
   */
  tick(): void {
    const now = this.options.now();
    for (const [peer, cursor] of this.cursors) {
      const held = this.options.keeper.holds(cursor.seq, cursor.digest);
      if (!held && cursor.dropped === null) cursor.dropped = { atMs: now, bytesRead: cursor.bytesRead };
      if (now - cursor.lastUsedMs > CURSOR_IDLE_MS || !(held || this.readsOn(cursor, now))) this.cursors.delete(peer);
    }
  }

  /**
   * Whether a cursor on a dropped capture may go on: its peer took a new part within
   * PART_TIMEOUT_MS, and since the drop (after a PART_TIMEOUT_MS of grace) at half the
   * least progress a fetcher asks of a source. An honest transfer reads far faster; a
   * peer taking a part now and then cannot keep an old state in memory for long.
   */
  private readsOn(cursor: Cursor, now: number): boolean {
    if (!cursor.source.outlivesDrop || now - cursor.lastReadMs >= PART_TIMEOUT_MS) return false;
    const since = cursor.dropped;
    if (since === null) return true;
    const owedMs = Math.max(0, now - since.atMs - PART_TIMEOUT_MS);
    const bytesPerSecondMin = leastProgressBytesPerSecond(this.options.partBytes) / 2;
    return cursor.bytesRead - since.bytesRead >= (owedMs * bytesPerSecondMin) / 1000;
  }
}

// -------------------------------------------------------------------------------------
// Fetching
// -------------------------------------------------------------------------------------

interface Fetch {
  /** The core's target; its sources widen when the core asks again for the same state (fetch). */
  target: TransferTarget;
  readonly nonce: number;
  readonly startedMs: number;
  reader: StreamReader;
  importer: SnapshotImport;
  /** The next part expected, and the highest part asked for plus one. */
  nextPart: number;
  askedUpTo: number;
  bytes: number;
  /** Replicas that supplied a part of this attempt, and those distrusted for this target. */
  contributors: Set<number>;
  /** The attempt holds parts read back from disk after a restart, whose sources are not known. */
  fromDisk: boolean;
  /**
   * Set once a stream of this target whose parts came from more than one source (or from
   * disk) failed its checks: which source lied cannot be told then, so from that point
   * every attempt takes its whole stream from one source, starting over when the source
   * changes, and a rejection blames exactly that source. Without it, a faulty source that
   * sent a few bad parts and then fell silent would get every honest source that finished
   * its stream distrusted with it, round after round.
   */
  singleSource: boolean;
  /** The source asked last: the next one is taken after it in the target's order, round after round. */
  lastAsked: number;
  readonly distrusted: Set<number>;
  /** Replicas that said they cannot serve the target (asked again only after a timeout). */
  readonly unable: Set<number>;
  /**
   * Replicas moved on from because no ask could be sent to them (no link, or its queue
   * full), since every source last had its turn: asked again at once when only such
   * replicas are left, after a timeout with the unable and distrusted ones otherwise.
   */
  readonly unreachable: Set<number>;
  source: number;
  /** When the last new part arrived (-Infinity before the first): a fetch whose parts still come is kept past a newer target. */
  lastPartMs: number;
  lastProgressMs: number;
  /** When an ask to `source` could not be sent (its link down or full), or null: the last one went out. */
  unsentSinceMs: number | null;
  /** When `source` is asked again from `nextPart` if no new part came by then. */
  reaskAtMs: number;
  /** When the current SOURCE_PROGRESS_WINDOW_MS of `source` began, and the bytes of new parts it sent since. */
  progressSinceMs: number;
  progressBytes: number;
}

class TransferFetcher {
  private active: Fetch | null = null;
  /**
   * The last target a transfer completed, handed to `install`. A request for it that the
   * core made before the install and that runs after it (effects wait for the disk) must
   * not start the transfer again: a fresh start deletes the parts of its seq, which are the
   * new base's once it is installed. Forgotten when its install is declined.
   */
  private completed: { readonly seq: number; readonly stateDigest: Uint8Array } | null = null;
  /**
   * The newest target the core asked for while the active fetch, of an older one, still
   * receives parts: fetched once that one stalls (or its source no longer holds the
   * state). Starting over at every newer stable checkpoint never ended while ordered
   * traffic moved it faster than a transfer took; the core installs the older state and
   * catches up from its peers' decided logs (core/ordering/PROTOCOL.md §7, "An older state").
   */
  private newer: TransferTarget | null = null;
  private nonceCounter: number;
  private resumable: { head: SnapshotHead; parts: number } | null;
  /** Parts of the longest valid stream: a source that sends more is lying. */
  private readonly partsMax: number;

  constructor(
    private readonly options: StateTransferOptions,
    resumable: { head: SnapshotHead; parts: number } | null,
  ) {
    this.resumable = resumable;
    // Distinct from the nonces of an earlier run of this replica, whose answers may still arrive.
    this.nonceCounter = options.now();
    this.partsMax = streamPartsBound(options.streamBytesMax ?? streamBytesBound(options.machine.config), options.partBytes);
  }

  get targetSeq(): number | null {
    return this.active?.target.seq ?? null;
  }

  fetch(target: TransferTarget): void {
    const completed = this.completed;
    if (completed !== null && completed.seq === target.seq && bytesEqual(completed.stateDigest, target.stateDigest)) return;
    // Nor is this replica's own base fetched again over its own rows (the same seq and digest).
    if (this.options.keeper.isBase(target.seq, target.stateDigest)) return;
    const active = this.active;
    if (active !== null && active.target.seq === target.seq && bytesEqual(active.target.stateDigest, target.stateDigest)) {
      // The core asks again (with its preferred source rotated, or a proof with more
      // signers): the sources it names join the ones already known, in its new order.
      const from = [...new Set([...target.from, ...active.target.from])];
      if (from.length !== active.target.from.length || from.some((peer, i) => peer !== active.target.from[i])) {
        active.target = { ...active.target, from };
      }
      return;
    }
    // Kept while its parts come, or while it waits for its first ones: starting over at
    // every newer target opens a new cursor at the sources each time, and they refuse a
    // peer that does so too often (SERVE_OPENS_PER_PEER_MAX).
    const sinceProgressMs = this.options.now() - Math.max(active?.lastPartMs ?? 0, active?.startedMs ?? 0);
    if (active !== null && target.seq > active.target.seq && sinceProgressMs < PART_TIMEOUT_MS) {
      if (this.newer === null) {
        this.options.log.info("state transfer goes on at its target while its parts come; a newer one waits", {
          seq: active.target.seq,
          newer: target.seq,
          partsReceived: active.nextPart,
        });
      }
      if (this.newer === null || target.seq >= this.newer.seq) this.newer = target;
      return;
    }
    if (active !== null) this.abandon(active, "a newer target");
    this.start(target);
  }

  /**
   * The core's target is now `seq` (null: none) and it executed up to `executed`: a fetch
   * it no longer takes is dropped. An older target than the core's is kept while it is
   * still ahead of what the core executed: the core installs it (OrderingCore.acceptsSnapshot).
   */
  cancelUnless(seq: number | null, executed: number): void {
    const newer = this.newer;
    if (newer !== null && (seq === null || newer.seq <= executed)) this.newer = null;
    const active = this.active;
    if (active !== null && (seq === null || active.target.seq > seq || active.target.seq <= executed)) {
      this.abandon(active, "no longer needed");
    }
  }

  /** Drops the active fetch for the newer target waiting behind it. */
  private moveToNewer(fetch: Fetch, why: string): void {
    const newer = this.newer;
    if (newer === null) return;
    this.newer = null;
    this.abandon(fetch, why);
    this.start(newer);
  }

  installDeclined(seq: number): void {
    if (this.completed?.seq === seq) this.completed = null;
  }

  private start(target: TransferTarget): void {
    const { options } = this;
    const importer = options.machine.beginRestore();
    const fetch: Fetch = {
      target,
      nonce: this.nonceCounter++,
      startedMs: options.now(),
      reader: new StreamReader(importer),
      importer,
      nextPart: 0,
      askedUpTo: 0,
      bytes: 0,
      contributors: new Set(),
      fromDisk: false,
      singleSource: false,
      lastAsked: -1,
      distrusted: new Set(),
      unable: new Set(),
      unreachable: new Set(),
      source: -1,
      lastPartMs: Number.NEGATIVE_INFINITY,
      lastProgressMs: options.now(),
      unsentSinceMs: null,
      reaskAtMs: 0,
      progressSinceMs: options.now(),
      progressBytes: 0,
    };
    this.active = fetch;
    if (this.newer !== null && this.newer.seq <= target.seq) this.newer = null;
    options.metrics.inc("state_transfer_started_total");
    const resumed = this.resumeFromDisk(fetch);
    if (resumed === "fresh") {
      // Parts of an earlier attempt at this seq (another digest) must not mix with these.
      options.storage.stageDropPartsFrom(target.seq, 0);
      options.storage.stageHead(incomingHead(target, options.partBytes));
      if (this.resumable !== null && this.resumable.head.seq !== target.seq) options.storage.stageDropSnapshot(this.resumable.head.seq);
    }
    this.resumable = null;
    // The sources it may ask: the checkpoint's signers but itself (nextSource leaves it out too).
    const from = target.from.filter((peer) => peer !== options.self);
    options.log.info("state transfer started", { seq: target.seq, from, resumeAtPart: fetch.nextPart });
    // No replica sends a part after the last one: a stream whole on disk is finished here.
    if (resumed === "ended") return this.complete(fetch);
    this.nextSource(fetch);
  }

  /**
   * Feeds the parts an interrupted transfer left on disk: "fresh" when there is none for
   * this target, "ended" when they hold the whole stream (it arrived, but a restart came
   * before the install), "resumed" otherwise (a damaged or malformed stored part restarts
   * the attempt from part 0).
   */
  private resumeFromDisk(fetch: Fetch): "fresh" | "resumed" | "ended" {
    const stored = this.resumable;
    if (stored === null || stored.head.seq !== fetch.target.seq || !bytesEqual(stored.head.stateDigest, fetch.target.stateDigest))
      return "fresh";
    let last: Uint8Array | null = null;
    for (let part = 0; part < stored.parts; part++) {
      const data = this.options.storage.readPart(stored.head.seq, part);
      const fits =
        data !== null &&
        (last === null || last.length === this.options.partBytes) &&
        partProblem(part, data, true, this.options.partBytes, this.partsMax) === null;
      if (!fits || !fetch.reader.push(data).ok) {
        this.restartAttempt(fetch);
        return "resumed";
      }
      fetch.nextPart = part + 1;
      fetch.bytes += data.length;
      fetch.fromDisk = true;
      last = data;
    }
    if (last === null) return "resumed";
    // The head records the part count once the last part arrived; a head written before
    // it did so still shows the end by a last part shorter than the others.
    const ended = stored.head.parts === stored.parts || last.length < this.options.partBytes;
    return ended ? "ended" : "resumed";
  }

  /** Whether the active fetch asked `from` for parts of `seq` with `nonce` (what onMessage takes). */
  awaitsPart(from: number, seq: number, nonce: number): boolean {
    const fetch = this.active;
    return fetch !== null && fetch.source === from && fetch.target.seq === seq && fetch.nonce === nonce;
  }

  onMessage(from: number, m: Exclude<TransferMessage, { t: "get" }>): void {
    const fetch = this.active;
    if (fetch === null || m.seq !== fetch.target.seq || m.nonce !== fetch.nonce || from !== fetch.source) return;
    if (m.t === "none") {
      this.options.log.info("state transfer source cannot serve", { seq: m.seq, source: from, reason: m.reason });
      // Its source no longer holds this older state, and the others moved on with it.
      if (this.newer !== null) return this.moveToNewer(fetch, "its source no longer serves it; a newer target");
      fetch.unable.add(from);
      this.nextSource(fetch);
      return;
    }
    if (m.part !== fetch.nextPart) return;
    const problem = partProblem(m.part, m.data, m.end, this.options.partBytes, this.partsMax);
    if (problem !== null) return this.dropSource(fetch, from, problem);
    this.onPart(fetch, from, m.data, m.end);
  }

  private onPart(fetch: Fetch, from: number, data: Uint8Array, end: boolean): void {
    const { options } = this;
    const pushed = fetch.reader.push(data);
    fetch.contributors.add(from);
    if (!pushed.ok) return this.reject(fetch, pushed.reason);
    options.storage.stagePart(fetch.target.seq, fetch.nextPart, data);
    fetch.nextPart++;
    fetch.bytes += data.length;
    fetch.lastProgressMs = options.now();
    fetch.lastPartMs = fetch.lastProgressMs;
    fetch.reaskAtMs = fetch.lastProgressMs + REASK_MS;
    fetch.progressBytes += data.length;
    options.metrics.inc("state_transfer_received_bytes_total", data.length);
    if (end) {
      // Written with the last part, so that a restart before the install finds the stream ended.
      options.storage.stageHead(incomingHead(fetch.target, options.partBytes, fetch.nextPart, fetch.bytes));
      return this.complete(fetch);
    }
    // Keeps a window of parts asked for; after an ask that could not leave, this asks its parts again.
    const windowEnd = fetch.nextPart + TRANSFER_WINDOW_PARTS;
    if (fetch.askedUpTo < windowEnd) this.ask(fetch, fetch.askedUpTo, windowEnd - fetch.askedUpTo);
  }

  private complete(fetch: Fetch): void {
    const { options } = this;
    const finished = fetch.reader.finish();
    if (!finished.ok) return this.reject(fetch, finished.reason);
    const meta = fetch.reader.meta;
    if (meta === null || meta.seq !== fetch.target.seq) return this.reject(fetch, "the stream names another seq");
    const appDigest = fetch.importer.digest();
    const digest = checkpointStateDigest(meta.seq, appDigest, meta.clients);
    if (!bytesEqual(digest, fetch.target.stateDigest)) return this.reject(fetch, "state digest differs from the signed checkpoint digest");
    this.active = null;
    // The core asks for a newer state again if the decisions after this one do not come.
    this.newer = null;
    this.completed = { seq: fetch.target.seq, stateDigest: fetch.target.stateDigest };
    const head: SnapshotHead = {
      status: "complete",
      seq: meta.seq,
      stateDigest: digest,
      appDigest,
      clients: meta.clients,
      proof: fetch.target.proof,
      parts: fetch.nextPart,
      bytes: fetch.bytes,
      partBytes: options.partBytes,
    };
    const ms = Math.max(1, options.now() - fetch.startedMs);
    options.metrics.inc("state_transfer_completed_total");
    options.log.info("state transfer completed", {
      seq: meta.seq,
      bytes: fetch.bytes,
      parts: fetch.nextPart,
      ms,
      mbPerSecond: Math.round((fetch.bytes / 1e6 / (ms / 1000)) * 10) / 10,
      sources: [...fetch.contributors],
    });
    options.install(fetch.importer, head);
  }

  /**
   * The stream was malformed or its digest wrong: some contributor lied. All of them are
   * distrusted for this target and the transfer starts over from part 0 with the others.
   */
  private reject(fetch: Fetch, reason: string): void {
    const { options } = this;
    options.metrics.inc("state_transfer_rejected_total");
    // One source's whole stream: that source lied. Parts of several (or read back from
    // disk): any of them may have, so nobody is blamed, and the attempts that follow take
    // one source's whole stream each (singleSource).
    const mixed = fetch.fromDisk || fetch.contributors.size > 1;
    options.log.warn("state transfer rejected a snapshot", {
      seq: fetch.target.seq,
      reason,
      sources: [...fetch.contributors],
      ...(fetch.fromDisk ? { partsFromDisk: true } : {}),
      ...(mixed ? { next: "one source's whole stream at a time" } : {}),
    });
    if (mixed) fetch.singleSource = true;
    else for (const peer of fetch.contributors) fetch.distrusted.add(peer);
    // Starting this older state over from its first part is no better than the newer one.
    if (this.newer !== null) return this.moveToNewer(fetch, "its stream was rejected; a newer target");
    this.restartAttempt(fetch);
    this.nextSource(fetch);
  }

  /**
   * The source sent a part that no valid stream has: it lied, so it is distrusted for this
   * target and the next source asked. The parts so far are kept unless it supplied some
   * of them or they already reach the bound (then no valid stream can go on from them).
   */
  private dropSource(fetch: Fetch, from: number, reason: string): void {
    const { options } = this;
    options.metrics.inc("state_transfer_sources_dropped_total");
    options.log.warn("state transfer dropped a source", { seq: fetch.target.seq, source: from, part: fetch.nextPart, reason });
    fetch.distrusted.add(from);
    // The others may not hold this older state any more (their stable checkpoint passed it).
    if (this.newer !== null) return this.moveToNewer(fetch, "its source was dropped; a newer target");
    if (fetch.contributors.has(from) || fetch.nextPart >= this.partsMax) this.restartAttempt(fetch);
    this.nextSource(fetch);
  }

  private restartAttempt(fetch: Fetch): void {
    fetch.importer = this.options.machine.beginRestore();
    fetch.reader = new StreamReader(fetch.importer);
    fetch.nextPart = 0;
    fetch.askedUpTo = 0;
    fetch.bytes = 0;
    fetch.contributors = new Set();
    fetch.fromDisk = false;
    this.options.storage.stageDropPartsFrom(fetch.target.seq, 0);
    // The head may record where the dropped stream ended; this attempt has not ended.
    this.options.storage.stageHead(incomingHead(fetch.target, this.options.partBytes));
  }

  /**
   * Moves to the next trusted source after the last one asked, in the target's order, and
   * asks it from nextPart (from part 0 when streams must come from one source and the
   * parts held came from another).
   */
  private nextSource(fetch: Fetch): void {
    const order = fetch.target.from.filter((peer) => peer !== this.options.self);
    const eligible = (peer: number): boolean => !fetch.distrusted.has(peer) && !fetch.unable.has(peer) && !fetch.unreachable.has(peer);
    const pick = (): number => {
      const after = order.indexOf(fetch.lastAsked);
      for (let k = 1; k <= order.length; k++) {
        const peer = order[(after + k) % order.length] as number;
        if (eligible(peer)) return peer;
      }
      return -1;
    };
    let next = pick();
    if (next < 0 && fetch.distrusted.size === 0 && fetch.unable.size === 0 && fetch.unreachable.size > 0) {
      // No source could be reached yet (no link anywhere): the asks go round, and the
      // first link up serves.
      fetch.unreachable.clear();
      next = pick();
    }
    if (next < 0) {
      // Every source lied, cannot serve, is silent or cannot be reached: after the next
      // timeout all are asked again (with at most f liars that is the way on, and the core
      // moves the target once the peers have moved on). A source that cannot be reached
      // is not asked again and again meanwhile, ahead of the others: one that could not
      // serve a moment ago (its state not captured yet, its serving bound for this peer
      // reached) may serve now.
      fetch.distrusted.clear();
      fetch.unable.clear();
      fetch.unreachable.clear();
      fetch.source = -1;
      fetch.unsentSinceMs = null;
      fetch.lastProgressMs = this.options.now();
      return;
    }
    if (fetch.singleSource && (fetch.fromDisk || [...fetch.contributors].some((peer) => peer !== next))) this.restartAttempt(fetch);
    fetch.source = next;
    fetch.lastAsked = next;
    fetch.askedUpTo = fetch.nextPart;
    fetch.lastProgressMs = this.options.now();
    fetch.reaskAtMs = fetch.lastProgressMs + REASK_MS;
    fetch.progressSinceMs = fetch.lastProgressMs;
    fetch.progressBytes = 0;
    this.ask(fetch, fetch.nextPart, TRANSFER_WINDOW_PARTS);
  }

  /** Asks `source` for parts part..part+count-1; true when the ask went out (only then do they count as asked). */
  private ask(fetch: Fetch, part: number, count: number): boolean {
    const m: TransferMessage = { t: "get", seq: fetch.target.seq, digest: fetch.target.stateDigest, part, count, nonce: fetch.nonce };
    if (this.options.send(fetch.source, encodeTransferMessage(m))) {
      fetch.unsentSinceMs = null;
      fetch.askedUpTo = Math.max(fetch.askedUpTo, part + count);
      return true;
    }
    this.options.metrics.inc("state_transfer_asks_unsent_total");
    if (fetch.unsentSinceMs === null) {
      fetch.unsentSinceMs = this.options.now();
      this.options.log.info("state transfer could not ask a source (no link to it, or its queue full): asking it again, then the next", {
        seq: fetch.target.seq,
        source: fetch.source,
        part,
      });
    }
    return false;
  }

  private abandon(fetch: Fetch, why: string): void {
    this.active = null;
    // Reached by executing, the seq may be the keeper's base (being written) by now: its rows stay.
    if (!this.options.keeper.owns(fetch.target.seq)) this.options.storage.stageDropSnapshot(fetch.target.seq);
    this.options.metrics.inc("state_transfer_abandoned_total");
    this.options.log.info("state transfer abandoned", { seq: fetch.target.seq, why, partsReceived: fetch.nextPart });
  }

  /**
   * Whether the source sent fewer bytes of new parts than the least progress allowed over
   * its last window (then it is distrusted, counted as timed out, and logged: at most once
   * per SOURCE_PROGRESS_WINDOW_MS). The parts it sent are kept: they are checked with the
   * rest against the signed digest, and one that lied is found by the rejection's rules.
   */
  private tooSlow(fetch: Fetch, now: number): boolean {
    const { options } = this;
    // One source's whole stream per attempt (singleSource): moving on restarts the stream
    // from its first part, so an honest but slow source must be let finish; unless a newer
    // target waits, which starts from its first part anyway (tick moves to it).
    if (fetch.singleSource && this.newer === null) return false;
    const bytesPerSecondMin = options.sourceBytesPerSecondMin ?? leastProgressBytesPerSecond(options.partBytes);
    const windowMs = now - fetch.progressSinceMs;
    if (fetch.progressBytes >= (bytesPerSecondMin * windowMs) / 1000) return false;
    options.metrics.inc("state_transfer_source_timeouts_total");
    options.log.info("state transfer source too slow: asking the next", {
      seq: fetch.target.seq,
      source: fetch.source,
      part: fetch.nextPart,
      bytes: fetch.progressBytes,
      ms: windowMs,
      bytesPerSecondMin,
    });
    fetch.distrusted.add(fetch.source);
    return true;
  }

  /**
   * A source that delivered no new part for PART_TIMEOUT_MS (silent, or sending only
   * parts already held), or fewer bytes than SOURCE_PROGRESS_BYTES_PER_SECOND_MIN over a
   * SOURCE_PROGRESS_WINDOW_MS, is distrusted for this target like a liar: it is asked
   * again only once every other source has had its turn.
   */
  tick(): void {
    const fetch = this.active;
    if (fetch === null) return;
    const now = this.options.now();
    if (this.newer !== null && now - Math.max(fetch.lastPartMs, fetch.startedMs) >= PART_TIMEOUT_MS) {
      return this.moveToNewer(fetch, "no part came for a while; a newer target");
    }
    // An ask never left: once more to this source (a full queue drains), else the next
    // source (no link yet), without distrusting this one.
    if (fetch.unsentSinceMs !== null && now - fetch.unsentSinceMs >= UNSENT_ASK_RETRY_MS) {
      fetch.unsentSinceMs = now;
      const windowEnd = fetch.nextPart + TRANSFER_WINDOW_PARTS;
      const from = Math.max(fetch.askedUpTo, fetch.nextPart);
      const again = from < windowEnd ? [from, windowEnd - from] : [fetch.nextPart, TRANSFER_WINDOW_PARTS];
      if (fetch.source >= 0 && this.ask(fetch, again[0] as number, again[1] as number)) return;
      if (fetch.source >= 0) fetch.unreachable.add(fetch.source);
      return this.nextSource(fetch);
    }
    // While an ask has not left, the source is not to blame for what it did not send.
    if (fetch.source >= 0 && fetch.unsentSinceMs === null && now - fetch.progressSinceMs >= SOURCE_PROGRESS_WINDOW_MS) {
      if (this.tooSlow(fetch, now)) {
        if (this.newer !== null) return this.moveToNewer(fetch, "its source was too slow; a newer target");
        return this.nextSource(fetch);
      }
      fetch.progressSinceMs = now;
      fetch.progressBytes = 0;
    }
    if (now - fetch.lastProgressMs < PART_TIMEOUT_MS) {
      // No new part from this source for a while: it may have had no link back to send
      // one on, or its queue was full and the part was lost.
      if (fetch.source >= 0 && now >= fetch.reaskAtMs) {
        fetch.reaskAtMs = now + REASK_MS;
        this.options.metrics.inc("state_transfer_asks_repeated_total");
        this.ask(fetch, fetch.nextPart, TRANSFER_WINDOW_PARTS);
      }
      return;
    }
    this.options.metrics.inc("state_transfer_source_timeouts_total");
    // At most once per PART_TIMEOUT_MS.
    this.options.log.info("state transfer source timed out: asking the next", {
      seq: fetch.target.seq,
      source: fetch.source,
      part: fetch.nextPart,
    });
    if (fetch.source >= 0) fetch.distrusted.add(fetch.source);
    this.nextSource(fetch);
  }
}

/**
 * Why `data` cannot be part `part` of a valid stream, or null when it can: no part is
 * empty (even the shortest stream holds its meta record), every part but the last is
 * exactly `partBytes`, and a stream has at most `partsMax` parts.
 */
function partProblem(part: number, data: Uint8Array, end: boolean, partBytes: number, partsMax: number): string | null {
  if (part >= partsMax) return `part ${part} is past the ${partsMax} parts of the largest valid state`;
  if (data.length === 0) return `part ${part} is empty`;
  if (data.length > partBytes) return `part ${part} has ${data.length} bytes, more than ${partBytes}`;
  if (!end && data.length !== partBytes) return `part ${part} has ${data.length} bytes but is not the last`;
  return null;
}

/** The head of a transfer in progress; `parts` and `bytes` are set once its last part arrived. */
function incomingHead(target: TransferTarget, partBytes: number, parts = 0, bytes = 0): SnapshotHead {
  return {
    status: "incoming",
    seq: target.seq,
    stateDigest: target.stateDigest,
    appDigest: null,
    clients: null,
    proof: target.proof,
    parts,
    bytes,
    partBytes,
  };
}
