/**
 * Snapshot and digest of the replicated channel state (checkpoints, state transfer).
 *
 * Format: a sequence of records, each framed as a 4-byte big-endian length followed by
 * the record's canonical CBOR encoding:
 *
 *   header   { k: "header", v: 1, generation, channels: <number of channel records>,
 *              quotas?: [{ key, eventsPerSecond?, bytesPerSecond?, subscriptions? }...] }
 *   channel  { k: "channel", tag, generation, fault, order, priority, public,
 *              publishers: [key...], subscribers: [key...], retention: {events, bytes, ageMs},
 *              log: null | { nextSeq, baseChain, batches: <number of batch records> } }
 *   batch    { k: "batch", firstSeq, count, tsMs, publisher, pubSeq, body, sig }
 *
 * `quotas` (set-quota) is present only when some key has one, in ascending key order, so
 * a state without quotas has the bytes and digest it had before quotas existed. The
 * header's `membership` ({ current, pending }, membership.ts) is present, and in the
 * digest, only once the replica group changed or a change is pending; before that the
 * group is the cluster file's.
 * Channels come in ascending tag order, keys in ascending byte order, each channel
 * followed by its retained batches oldest first; so equal states give equal bytes.
 * Unordered channels carry `log: null`: their stores are per replica, not replicated.
 *
 * Framed records let an export be cut into chunks at record boundaries and let an
 * import parse chunks of any size as they arrive, with memory bounded by one record.
 * A record is decoded with a bound on its values derived from its size
 * (snapshotRecordItemsMax), as peer messages are (wire/canonical.ts itemsMax): a snapshot
 * comes from a peer by state transfer, checked against its digest only once whole.
 *
 * Size bound (snapshotBytesBound): a header, then per channel at most one channel
 * record (CHANNEL_RECORD_BYTES_MAX) plus its retained batches, which retention keeps at
 * or below `retention.bytes` of body+signature and `retention.events` records, each
 * with BATCH_RECORD_OVERHEAD_BYTES_MAX of framing and fields.
 *
 * Digest (stateDigest): SHA-256 of the canonical encoding of, per channel in tag order,
 * the digest of its metadata and, for total-order channels, { nextSeq, oldestSeq, head }
 * where head is the chain value over the channel's whole history (batch-log.ts). It
 * commits to every retained batch without reading them.
 */
import { REQUEST_EVENTS_MAX } from "../../../wire/types.ts";
import { toHex, writeUint32BE } from "../../../wire/bytes.ts";
import {
  CanonicalError,
  decodeCanonical,
  encodeCanonical,
  encodeCanonicalAfter,
  withCanonical,
  type Canonical,
} from "../../../wire/canonical.ts";
import { BatchLog, CHAIN_GENESIS, chainNext, type BatchRecord } from "./batch-log.ts";

import { Channel, type KeySet } from "./channel.ts";
import type { ChannelsConfig } from "./config.ts";
import {
  BATCH_RECORD_OVERHEAD_BYTES_MAX,
  CHANNEL_RECORD_BYTES_MAX,
  DIGEST_BYTES,
  KEYS_PER_CHANNEL_MAX,
  MEMBERSHIP_RECORD_BYTES_MAX,
  PUBLIC_KEY_BYTES,
  QUOTA_RECORD_BYTES_MAX,
  QUOTAS_MAX,
  REQUEST_BYTES_MAX,
  RETAINED_BYTES_PER_CHANNEL_MAX,
  RETAINED_BYTES_TOTAL_MAX,
  RETAINED_EVENTS_PER_CHANNEL_MAX,
  SNAPSHOT_CHUNK_BYTES_DEFAULT,
  SNAPSHOT_CHUNK_BYTES_MAX,
  SNAPSHOT_FORMAT_VERSION,
  SNAPSHOT_FRAME_HEADER_BYTES,
  SNAPSHOT_RECORD_BYTES_MAX,
} from "./constants.ts";
import { readRecord } from "./membership.ts";
import { signedRequestDigest } from "./request.ts";
import { isValidTag } from "./tag.ts";
import { FAULT_MODELS, ORDER_MODES, PRIORITIES, type ChannelClass, type HashFn, type KeyQuota, type RetentionLimits } from "./types.ts";

/** One key's quota, with the key itself. */
export type QuotaEntry = KeyQuota & { readonly key: Uint8Array };

/** The replicated state: the channel registry, the logs of total-order channels, and the keys' quotas. */
export type ChannelsState = {
  /** Channels created so far; a new channel's generation is this plus one. */
  generation: number;
  channels: Map<string, Channel>;
  /** By lowercase hex of the key. */
  quotas: Map<string, QuotaEntry>;
  /** The replica group's record (membership.ts `record()`); null: the cluster file's group, unchanged. */
  membership: Canonical | null;
};

/** The quotas as canonical values in key order; null when there are none (see the file header). */
function quotasValue(state: ChannelsState): Canonical[] | null {
  if (state.quotas.size === 0) return null;
  return [...state.quotas.keys()].sort().map((hex) => {
    const entry = state.quotas.get(hex) as QuotaEntry;
    const value: { [key: string]: Canonical } = { key: entry.key };
    if (entry.eventsPerSecond !== null) value["eventsPerSecond"] = entry.eventsPerSecond;
    if (entry.bytesPerSecond !== null) value["bytesPerSecond"] = entry.bytesPerSecond;
    if (entry.subscriptions !== null) value["subscriptions"] = entry.subscriptions;
    return value;
  });
}

export type SnapshotError = { readonly ok: false; readonly reason: string };
export type SnapshotResult = { readonly ok: true } | SnapshotError;

const STATE_DIGEST_KIND = "fitb/v1/channels-state";

/** Upper bound on the snapshot bytes of any state reachable under `config`. */
export function snapshotBytesBound(config: ChannelsConfig): number {
  const header = SNAPSHOT_FRAME_HEADER_BYTES + 64 + QUOTAS_MAX * QUOTA_RECORD_BYTES_MAX + MEMBERSHIP_RECORD_BYTES_MAX;
  const batches = config.retention.bytes + config.retention.events * BATCH_RECORD_OVERHEAD_BYTES_MAX;
  return header + config.channelsMax * (SNAPSHOT_FRAME_HEADER_BYTES + CHANNEL_RECORD_BYTES_MAX + batches);
}

function sortedChannels(state: ChannelsState): Channel[] {
  return [...state.channels.keys()].sort().map((tag) => state.channels.get(tag) as Channel);
}

/** The digest every replica with the same replicated state computes (see file header). */
export function stateDigest(hash: HashFn, state: ChannelsState): Uint8Array {
  const channels = sortedChannels(state).map((channel) => ({
    meta: channel.metaDigest(hash),
    log: channel.isOrdered ? { nextSeq: channel.log.nextSeq, oldestSeq: channel.log.oldestSeq, head: channel.log.headChain } : null,
  }));
  const quotas = quotasValue(state);
  const value: { [key: string]: Canonical } = { k: STATE_DIGEST_KIND, v: SNAPSHOT_FORMAT_VERSION, generation: state.generation, channels };
  if (quotas !== null) value["quotas"] = quotas;
  if (state.membership !== null) value["membership"] = state.membership;
  return hash(encodeCanonical(value));
}

// -------------------------------------------------------------------------------------
// Export
// -------------------------------------------------------------------------------------

type ChannelCapture = {
  readonly meta: { [key: string]: Canonical };
  readonly log: { readonly nextSeq: number; readonly baseChain: Uint8Array; readonly records: BatchRecord[] } | null;
};

/** A record framed: its length, then its canonical bytes, encoded behind the header. */
function frame(value: Canonical): Uint8Array {
  const framed = encodeCanonicalAfter(SNAPSHOT_FRAME_HEADER_BYTES, value);
  writeUint32BE(framed, 0, framed.length - SNAPSHOT_FRAME_HEADER_BYTES);
  return framed;
}

function batchRecordValue(record: BatchRecord): Canonical {
  return {
    k: "batch",
    firstSeq: record.firstSeq,
    count: record.count,
    tsMs: record.tsMs,
    publisher: record.publisher,
    pubSeq: record.pubSeq,
    body: record.body,
    sig: record.sig,
  };
}

function channelRecordValue(capture: ChannelCapture): Canonical {
  const log = capture.log;
  return {
    ...capture.meta,
    k: "channel",
    log: log === null ? null : { nextSeq: log.nextSeq, baseChain: log.baseChain, batches: log.records.length },
  };
}

/** Captures the state now; later changes to the machine do not affect the export. */
export function exportState(hash: HashFn, state: ChannelsState): SnapshotExport {
  const captures = sortedChannels(state).map((channel) => ({
    meta: channel.metaValue(),
    log: channel.isOrdered ? { nextSeq: channel.log.nextSeq, baseChain: channel.log.baseChain, records: channel.log.records() } : null,
  }));
  return new SnapshotExport(state.generation, captures, stateDigest(hash, state), quotasValue(state), state.membership);
}

/**
 * A snapshot being read out in chunks. The captured state costs one reference per
 * retained batch; records are encoded only as chunks are taken.
 */
export class SnapshotExport {
  private readonly records: Generator<Canonical, void, undefined>;
  /** A frame taken from the generator that did not fit the previous chunk. */
  private carried: Uint8Array | null = null;
  /** What `read` took of the stream's bytes and did not yet hand out: a frame's tail. */
  private tail: Uint8Array | null = null;
  /** `read`'s frame header and the buffer a frame's tail waits in (see `place`). */
  private readonly head = new Uint8Array(SNAPSHOT_FRAME_HEADER_BYTES);
  private scratch = new Uint8Array(0);
  /** How the export is being read, `next` (whole frames) or `read` (bytes); one way only. */
  private mode: "frames" | "bytes" | null = null;
  private finished = false;
  private retained: number | null = null;

  constructor(
    private readonly generation: number,
    private readonly captures: readonly ChannelCapture[],
    /** The digest of the captured state. */
    readonly digest: Uint8Array,
    private readonly quotas: Canonical[] | null = null,
    private readonly membership: Canonical | null = null,
  ) {
    this.records = this.generateRecords();
  }

  get done(): boolean {
    return this.finished;
  }

  /**
   * Another reader of the same captured state, from its start. The captured values are
   * never changed (fresh metadata objects, a copy of the batch references, immutable
   * batch records), so any number of readers may be made, now or much later.
   */
  reopen(): SnapshotExport {
    return new SnapshotExport(this.generation, this.captures, this.digest, this.quotas, this.membership);
  }

  /** Body and signature bytes of the retained batches the capture refers to (counted once, on first use). */
  get retainedBytes(): number {
    if (this.retained === null) {
      this.retained = 0;
      for (const capture of this.captures) for (const record of capture.log?.records ?? []) this.retained += record.bytes;
    }
    return this.retained;
  }

  private *generateRecords(): Generator<Canonical, void, undefined> {
    const header: { [key: string]: Canonical } = {
      k: "header",
      v: SNAPSHOT_FORMAT_VERSION,
      generation: this.generation,
      channels: this.captures.length,
    };
    if (this.quotas !== null) header["quotas"] = this.quotas;
    if (this.membership !== null) header["membership"] = this.membership;
    yield header;
    for (const capture of this.captures) {
      yield channelRecordValue(capture);
      for (const record of capture.log?.records ?? []) yield batchRecordValue(record);
    }
  }

  private readAs(mode: "frames" | "bytes"): void {
    if (this.mode !== null && this.mode !== mode) throw new Error("a snapshot export is read either by chunks or by bytes, not both");
    this.mode = mode;
  }

  private takeFrame(): Uint8Array | null {
    if (this.carried !== null) {
      const carried = this.carried;
      this.carried = null;
      return carried;
    }
    const step = this.records.next();
    return step.done === true ? null : frame(step.value);
  }

  /**
   * Copies the export's next bytes into `out` from `at` until `out` is full or the export
   * ends, and returns where it stopped. The bytes are those `next` hands out, cut at any
   * byte instead of at records. Each record is encoded once and copied from the encoder's
   * buffer straight into `out`; only the tail of a record that does not fit is copied
   * aside, for the next call. This is what a base snapshot's and a state transfer's parts
   * are made of (src/replica/storage/stream.ts), so a retained batch is copied twice on
   * its way into a part (three times if it crosses into the next part), where `next` and
   * the cutter built on it copied it five times.
   */
  read(out: Uint8Array, at: number): number {
    this.readAs("bytes");
    let pos = at;
    while (pos < out.length && !this.finished) {
      if (this.tail !== null) {
        const take = Math.min(this.tail.length, out.length - pos);
        out.set(this.tail.subarray(0, take), pos);
        pos += take;
        this.tail = take === this.tail.length ? null : this.tail.subarray(take);
        continue;
      }
      const step = this.records.next();
      if (step.done === true) {
        this.finished = true;
        this.scratch = new Uint8Array(0);
        break;
      }
      pos = withCanonical(step.value, (bytes) => this.place(bytes, out, pos));
    }
    return pos;
  }

  /**
   * Writes one record's frame (its 4-byte length, then `bytes`) into `out` at `pos`; what
   * does not fit is copied into this export's scratch buffer, reused from record to record
   * (a fresh one per record cost more than the copies: large allocations are zeroed and
   * bring on collections), and handed out by the next calls before any other record.
   */
  private place(bytes: Uint8Array, out: Uint8Array, pos: number): number {
    const head = this.head;
    writeUint32BE(head, 0, bytes.length);
    const total = head.length + bytes.length;
    const room = out.length - pos;
    const fits = Math.min(room, total);
    copyFrameRange(head, bytes, 0, fits, out, pos);
    if (fits === total) return pos + total;
    const rest = total - fits;
    if (this.scratch.length < rest) {
      // Doubling, but never past the largest frame: the buffer holds one record's tail.
      const largest = SNAPSHOT_FRAME_HEADER_BYTES + SNAPSHOT_RECORD_BYTES_MAX;
      this.scratch = new Uint8Array(Math.max(rest, Math.min(this.scratch.length * 2, largest)));
    }
    copyFrameRange(head, bytes, fits, rest, this.scratch, 0);
    this.tail = this.scratch.subarray(0, rest);
    return out.length;
  }

  /**
   * The next chunk: whole records, at most `maxBytes` unless a single record is larger
   * (then that record alone). Null once everything has been read.
   */
  next(maxBytes: number = SNAPSHOT_CHUNK_BYTES_DEFAULT): Uint8Array | null {
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 1 || maxBytes > SNAPSHOT_CHUNK_BYTES_MAX) {
      throw new RangeError(`maxBytes must be 1..${SNAPSHOT_CHUNK_BYTES_MAX}`);
    }
    this.readAs("frames");
    const parts: Uint8Array[] = [];
    let size = 0;
    for (let f = this.takeFrame(); f !== null; f = this.takeFrame()) {
      if (parts.length > 0 && size + f.length > maxBytes) {
        this.carried = f;
        break;
      }
      parts.push(f);
      size += f.length;
    }
    if (parts.length === 0) {
      this.finished = true;
      return null;
    }
    return concat(parts, size);
  }

  /** Everything not yet read, in one buffer. */
  all(): Uint8Array {
    this.readAs("frames");
    const parts: Uint8Array[] = [];
    let size = 0;
    for (let f = this.takeFrame(); f !== null; f = this.takeFrame()) {
      parts.push(f);
      size += f.length;
    }
    this.finished = true;
    return concat(parts, size);
  }
}

/** Copies bytes [from, from + count) of `head` followed by `body` into `dest` at `at`. */
function copyFrameRange(head: Uint8Array, body: Uint8Array, from: number, count: number, dest: Uint8Array, at: number): void {
  let source = from;
  let to = at;
  let left = count;
  if (source < head.length && left > 0) {
    const n = Math.min(head.length - source, left);
    dest.set(head.subarray(source, source + n), to);
    source += n;
    to += n;
    left -= n;
  }
  if (left > 0) dest.set(body.subarray(source - head.length, source - head.length + left), to);
}

function concat(parts: readonly Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

// -------------------------------------------------------------------------------------
// Import
// -------------------------------------------------------------------------------------

type CanonicalMap = { [key: string]: Canonical };

function isMap(value: Canonical | undefined): value is CanonicalMap {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array);
}

function intIn(value: Canonical | undefined, min: number, max: number): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= min && value <= max;
}

function bytesOf(value: Canonical | undefined, length: number): value is Uint8Array {
  return value instanceof Uint8Array && value.length === length;
}

/**
 * Bytes each value (decodeCanonical's items) of a valid snapshot record takes at least, on
 * average over any part of it that repeats. The densest part a valid record holds is a
 * member of a membership group in the header (membership.ts): a map of five fields (id,
 * host, port, peerPort, key), 6 values in at least 66 bytes (a one-character host, a
 * 34-byte key), 11 bytes a value. Everything else is sparser: a quota is 3 values in at
 * least 54 bytes, a key of a channel's lists 1 in 34, a batch record 9 in well over 100
 * (its 64-byte signature). So 8 leaves room, and a record of 2 MiB may hold 262,144
 * values where the same bytes of empty arrays hold two million.
 */
export const SNAPSHOT_RECORD_BYTES_PER_ITEM_MIN = 8;
/** A record's own fixed fields (a header's, a channel's, a log's): values allowed beyond SNAPSHOT_RECORD_BYTES_PER_ITEM_MIN's share. */
export const SNAPSHOT_RECORD_ITEMS_SLACK = 64;

/**
 * The values a valid snapshot record of `bytes` bytes holds at most: the decoder stops
 * past it, so a record of empty arrays costs no more than a valid one of its size.
 */
export function snapshotRecordItemsMax(bytes: number): number {
  return Math.floor(bytes / SNAPSHOT_RECORD_BYTES_PER_ITEM_MIN) + SNAPSHOT_RECORD_ITEMS_SLACK;
}

/** Thrown inside the importer and turned into a SnapshotError at its boundary. */
class InvalidSnapshot extends Error {}

function invalid(reason: string): never {
  throw new InvalidSnapshot(reason);
}

/** A channel whose batch records are still arriving. */
type OpenChannel = {
  readonly channel: Channel;
  readonly declaredNextSeq: number;
  readonly baseChain: Uint8Array;
  remainingBatches: number;
  log: BatchLog | null;
};

/**
 * An incremental snapshot reader: push chunks cut anywhere, then finish. It checks the
 * structure and every bound as records arrive, recomputes each log's hash chain, and
 * holds at most one partial record besides the state it builds. It does not judge
 * whether the state is the right one: compare `digest()` with the certified checkpoint
 * digest before installing it.
 */
export class SnapshotImport {
  private pending = new Uint8Array(0);
  private failure: SnapshotError | null = null;
  private phase: "header" | "channel" | "batch" | "done" = "header";
  private channelsRemaining = 0;
  private headerGeneration = 0;
  private previousTag = "";
  private open: OpenChannel | null = null;
  private retainedBytesTotal = 0;
  private readonly built: ChannelsState = { generation: 0, channels: new Map(), quotas: new Map(), membership: null };
  private completed = false;
  private taken = false;

  constructor(
    private readonly hash: HashFn,
    private readonly config: ChannelsConfig,
  ) {}

  /** Feeds the next bytes of the snapshot. After a failure every call returns it again. */
  push(chunk: Uint8Array): SnapshotResult {
    if (this.failure !== null) return this.failure;
    try {
      this.consume(chunk);
      return { ok: true };
    } catch (e) {
      if (!(e instanceof InvalidSnapshot) && !(e instanceof CanonicalError)) throw e;
      this.failure = { ok: false, reason: `invalid snapshot: ${e.message}` };
      return this.failure;
    }
  }

  /** Checks that the snapshot is complete. */
  finish(): SnapshotResult {
    if (this.failure !== null) return this.failure;
    if (this.phase !== "done" || this.pending.length > 0) {
      this.failure = { ok: false, reason: "invalid snapshot: truncated" };
      return this.failure;
    }
    this.completed = true;
    return { ok: true };
  }

  /** The digest of the imported state; only after a successful finish. */
  digest(): Uint8Array {
    return stateDigest(this.hash, this.state());
  }

  /** The imported state; only after a successful finish. */
  state(): ChannelsState {
    if (!this.completed) throw new Error("snapshot import is not finished");
    if (this.taken) throw new Error("snapshot import was already installed");
    return this.built;
  }

  /** Hands the state over for installation; an import installs at most once. */
  take(): ChannelsState {
    const state = this.state();
    this.taken = true;
    return state;
  }

  private consume(chunk: Uint8Array): void {
    let bytes = chunk;
    if (this.pending.length > 0) {
      bytes = concat([this.pending, chunk], this.pending.length + chunk.length);
    }
    let at = 0;
    while (bytes.length - at >= SNAPSHOT_FRAME_HEADER_BYTES) {
      const length = new DataView(bytes.buffer, bytes.byteOffset + at, SNAPSHOT_FRAME_HEADER_BYTES).getUint32(0);
      if (length > SNAPSHOT_RECORD_BYTES_MAX) invalid(`record of ${length} bytes exceeds ${SNAPSHOT_RECORD_BYTES_MAX}`);
      const end = at + SNAPSHOT_FRAME_HEADER_BYTES + length;
      if (end > bytes.length) break;
      // A record holding more values than any valid record of its size is refused as it is
      // decoded (a CanonicalError: invalid), not built first.
      this.onRecord(decodeCanonical(bytes.subarray(at + SNAPSHOT_FRAME_HEADER_BYTES, end), snapshotRecordItemsMax(length)));
      at = end;
    }
    this.pending = bytes.slice(at);
  }

  private onRecord(value: Canonical): void {
    if (!isMap(value)) invalid("a record is not a map");
    switch (this.phase) {
      case "header":
        return this.onHeader(value);
      case "channel":
        return this.onChannel(value);
      case "batch":
        return this.onBatch(value);
      case "done":
        return invalid("records after the last channel");
    }
  }

  private onHeader(record: CanonicalMap): void {
    if (record["k"] !== "header") invalid("the first record is not the header");
    if (record["v"] !== SNAPSHOT_FORMAT_VERSION) invalid(`unsupported snapshot version ${String(record["v"])}`);
    if (!intIn(record["generation"], 0, Number.MAX_SAFE_INTEGER)) invalid("bad generation");
    if (!intIn(record["channels"], 0, this.config.channelsMax)) invalid(`more than ${this.config.channelsMax} channels`);
    this.headerGeneration = record["generation"];
    this.built.generation = record["generation"];
    if (record["quotas"] !== undefined) this.built.quotas = readQuotas(record["quotas"]);
    if (record["membership"] !== undefined) this.built.membership = checkedMembership(record["membership"]);
    this.channelsRemaining = record["channels"];
    this.phase = this.channelsRemaining === 0 ? "done" : "channel";
  }

  private onChannel(record: CanonicalMap): void {
    if (record["k"] !== "channel") invalid("expected a channel record");
    const tag = record["tag"];
    if (typeof tag !== "string" || !isValidTag(tag)) invalid("bad tag");
    if (tag <= this.previousTag) invalid("channels out of tag order");
    this.previousTag = tag;
    const generation = record["generation"];
    if (!intIn(generation, 1, this.headerGeneration)) invalid(`bad generation for ${tag}`);
    const cls = readClass(record);
    if (typeof record["public"] !== "boolean") invalid(`bad public flag for ${tag}`);
    const retention = readRetention(record["retention"]);
    const publishers = readKeys(record["publishers"]);
    const subscribers = readKeys(record["subscribers"]);
    // An unordered channel's log is this replica's own; a total-order log is replaced
    // by the one its batch records rebuild.
    const log = new BatchLog(1, CHAIN_GENESIS);
    const channel = new Channel(tag, generation, cls, record["public"], retention, publishers, subscribers, log);
    this.built.channels.set(tag, channel);
    this.channelsRemaining--;
    this.openLog(channel, record["log"]);
  }

  private openLog(channel: Channel, log: Canonical | undefined): void {
    if (!channel.isOrdered) {
      if (log !== null) invalid(`unordered channel ${channel.tag} carries a log`);
      return this.closeChannel();
    }
    if (!isMap(log)) invalid(`total-order channel ${channel.tag} has no log`);
    if (!intIn(log["nextSeq"], 1, Number.MAX_SAFE_INTEGER)) invalid("bad nextSeq");
    if (!bytesOf(log["baseChain"], DIGEST_BYTES)) invalid("bad baseChain");
    if (!intIn(log["batches"], 0, RETAINED_EVENTS_PER_CHANNEL_MAX + 1)) invalid("bad batch count");
    this.open = {
      channel,
      declaredNextSeq: log["nextSeq"],
      baseChain: log["baseChain"].slice(),
      remainingBatches: log["batches"],
      log: null,
    };
    if (log["batches"] === 0) {
      channel.log = new BatchLog(log["nextSeq"], this.open.baseChain);
      return this.closeChannel();
    }
    this.phase = "batch";
  }

  private onBatch(record: CanonicalMap): void {
    const open = this.open as OpenChannel;
    if (record["k"] !== "batch") invalid("expected a batch record");
    const { firstSeq, count, tsMs, publisher, pubSeq, body, sig } = record;
    if (!intIn(firstSeq, 1, Number.MAX_SAFE_INTEGER) || !intIn(count, 1, REQUEST_EVENTS_MAX)) invalid("bad batch range");
    if (!intIn(tsMs, 0, Number.MAX_SAFE_INTEGER) || !intIn(pubSeq, 1, Number.MAX_SAFE_INTEGER)) invalid("bad batch fields");
    if (!bytesOf(publisher, PUBLIC_KEY_BYTES)) invalid("bad batch publisher");
    if (!(body instanceof Uint8Array) || !(sig instanceof Uint8Array)) invalid("bad batch body");
    if (body.length + sig.length > REQUEST_BYTES_MAX) invalid("batch larger than any request");
    if (open.log === null) open.log = new BatchLog(firstSeq, open.baseChain);
    if (firstSeq !== open.log.nextSeq) invalid(`batch at ${firstSeq}, expected ${open.log.nextSeq}`);
    const signed = { body: body.slice(), sig: sig.slice() };
    const base = { firstSeq, count, tsMs, publisher: publisher.slice(), pubSeq };
    const chainAfter = chainNext(this.hash, open.log.headChain, base, signedRequestDigest(this.hash, signed));
    const bytes = body.length + sig.length;
    open.log.append({ ...base, ...signed, bytes, chainAfter });
    this.checkRetained(open.channel.retention, open.log, bytes);
    if (--open.remainingBatches === 0) this.finishLog(open);
  }

  /** Bounds memory before the digest check: a hostile sender cannot make us hold more. */
  private checkRetained(retention: RetentionLimits, log: BatchLog, addedBytes: number): void {
    if (log.events > retention.events + REQUEST_EVENTS_MAX) invalid("more events than retention allows");
    if (log.bytes > retention.bytes + REQUEST_BYTES_MAX) invalid("more bytes than retention allows");
    this.retainedBytesTotal += addedBytes;
    if (this.retainedBytesTotal > RETAINED_BYTES_TOTAL_MAX + this.config.channelsMax * REQUEST_BYTES_MAX) {
      invalid("more bytes than any state allows");
    }
  }

  private finishLog(open: OpenChannel): void {
    const log = open.log as BatchLog;
    if (log.nextSeq !== open.declaredNextSeq) invalid(`log ends at ${log.nextSeq}, declared ${open.declaredNextSeq}`);
    open.channel.log = log;
    this.open = null;
    this.closeChannel();
  }

  private closeChannel(): void {
    this.phase = this.channelsRemaining === 0 ? "done" : "channel";
  }
}

function readClass(record: CanonicalMap): ChannelClass {
  const { fault, order, priority } = record;
  if (!FAULT_MODELS.some((m) => m === fault)) invalid("bad fault model");
  if (!ORDER_MODES.some((m) => m === order)) invalid("bad order mode");
  if (!PRIORITIES.some((p) => p === priority)) invalid("bad priority");
  return { fault, order, priority } as ChannelClass;
}

function readRetention(value: Canonical | undefined): RetentionLimits {
  if (!isMap(value)) invalid("bad retention");
  const { events, bytes, ageMs } = value;
  if (!intIn(events, 1, RETAINED_EVENTS_PER_CHANNEL_MAX)) invalid("bad retention.events");
  if (!intIn(bytes, 1, RETAINED_BYTES_PER_CHANNEL_MAX)) invalid("bad retention.bytes");
  if (!intIn(ageMs, 0, Number.MAX_SAFE_INTEGER)) invalid("bad retention.ageMs");
  return { events, bytes, ageMs };
}

/** Quotas: at most QUOTAS_MAX, keys strictly ascending, each with at least one limit, every limit positive. */
function readQuotas(value: Canonical): Map<string, QuotaEntry> {
  if (!Array.isArray(value) || value.length === 0 || value.length > QUOTAS_MAX) invalid("bad quota list");
  const quotas = new Map<string, QuotaEntry>();
  let previous = "";
  for (const item of value) {
    if (!isMap(item) || !bytesOf(item["key"], PUBLIC_KEY_BYTES)) invalid("bad quota");
    const hex = toHex(item["key"]);
    if (hex <= previous) invalid("quotas out of order");
    previous = hex;
    const limit = (name: string): number | null => {
      const field = item[name];
      if (field === undefined) return null;
      if (!intIn(field, 1, Number.MAX_SAFE_INTEGER)) invalid(`bad quota ${name}`);
      return field;
    };
    const entry = {
      key: item["key"].slice(),
      eventsPerSecond: limit("eventsPerSecond"),
      bytesPerSecond: limit("bytesPerSecond"),
      subscriptions: limit("subscriptions"),
    };
    if (entry.eventsPerSecond === null && entry.bytesPerSecond === null && entry.subscriptions === null) invalid("empty quota");
    if (Object.keys(item).some((name) => !["key", "eventsPerSecond", "bytesPerSecond", "subscriptions"].includes(name))) {
      invalid("unknown quota field");
    }
    quotas.set(hex, entry);
  }
  return quotas;
}

/** A membership record as membership.ts reads it, kept as the canonical value it came in. */
function checkedMembership(value: Canonical): Canonical {
  try {
    readRecord(value);
  } catch (e) {
    if (e instanceof RangeError) invalid(`bad membership: ${e.message}`);
    throw e;
  }
  return value;
}

/** Keys must be 32 bytes each, strictly ascending (so unique), at most KEYS_PER_CHANNEL_MAX. */
function readKeys(value: Canonical | undefined): KeySet {
  if (!Array.isArray(value) || value.length > KEYS_PER_CHANNEL_MAX) invalid("bad key list");
  const keys: KeySet = new Map();
  let previous = "";
  for (const key of value) {
    if (!bytesOf(key, PUBLIC_KEY_BYTES)) invalid("bad key");
    const hex = toHex(key);
    if (hex <= previous) invalid("keys out of order");
    previous = hex;
    keys.set(hex, key.slice());
  }
  return keys;
}
