/**
 * The snapshot stream: what a stored base snapshot holds and what state transfer sends.
 *
 *   [4-byte big-endian length L][L bytes: canonical { v, seq, clients }][channel snapshot]
 *
 * `clients` is the ordering core's client table at `seq` (it is part of the checkpoint
 * digest, so that deduplication survives state transfer); the channel snapshot is the
 * state machine's own chunked export (src/core/channels/snapshot.ts). The stream is cut
 * into parts of exactly `partBytes` bytes (the last one shorter). Equal states give equal
 * bytes, and the cut depends only on `partBytes`, so a transfer interrupted at part p can
 * go on from p with any other replica, and a stored base is served part by part.
 *
 * Both ends hold little beside the state itself: the cutter has the export write each
 * part in place (a record's tail that does not fit waits in the export's buffer, at most
 * one record), and the reader feeds the importer as parts arrive.
 */
import { writeUint32BE } from "../../../wire/bytes.ts";
import { type Canonical, encodeCanonical } from "../../../wire/canonical.ts";
import { TAG_BYTES_MAX } from "../../../wire/types.ts";
import type { SnapshotExport, SnapshotImport } from "../../core/channels/snapshot.ts";
import type { ClientTableExport } from "../../core/ordering/clients.ts";
import { RECORD_CLIENT_ROWS_MAX } from "./records.ts";

export const STREAM_FORMAT_VERSION = 1;
/** Bytes of the length prefix in front of the meta record. */
export const STREAM_META_PREFIX_BYTES = 4;
/** Largest meta record accepted (the client table of a very large deployment). */
export const STREAM_META_BYTES_MAX = 64 * 1024 * 1024;
/** Largest part; the actual size is derived from the cluster's frame limit (partBytesFor). */
export const STREAM_PART_BYTES_MAX = 256 * 1024;
/** Room left in a peer frame for the envelope around one part. */
export const STREAM_PART_FRAME_OVERHEAD_BYTES = 1024;

export interface StreamMeta {
  readonly seq: number;
  readonly clients: ClientTableExport;
}

/** The part size every replica of a cluster uses: the same config gives the same cut. */
export function partBytesFor(frameBytesMax: number): number {
  return Math.max(1, Math.min(STREAM_PART_BYTES_MAX, frameBytesMax - STREAM_PART_FRAME_OVERHEAD_BYTES));
}

/** The framed meta record that opens a stream. */
export function encodeStreamMeta(meta: StreamMeta): Uint8Array {
  const body = encodeCanonical({ v: STREAM_FORMAT_VERSION, seq: meta.seq, clients: meta.clients as unknown as Canonical });
  const framed = new Uint8Array(STREAM_META_PREFIX_BYTES + body.length);
  writeUint32BE(framed, 0, body.length);
  framed.set(body, STREAM_META_PREFIX_BYTES);
  return framed;
}

/**
 * Cuts meta + export into parts of exactly `partBytes` bytes (the last may be shorter).
 * Each part is one fresh array the export writes its records into (`SnapshotExport.read`).
 */
export class PartCutter {
  /** What is left of the meta record, which goes first. */
  private meta: Uint8Array | null;
  private exhausted = false;
  private produced = 0;

  constructor(
    meta: Uint8Array,
    private readonly source: SnapshotExport,
    private readonly partBytes: number,
  ) {
    this.meta = meta.length > 0 ? meta : null;
  }

  /** Parts handed out so far. */
  get partsProduced(): number {
    return this.produced;
  }

  /** The next part, or null when the stream is exhausted. */
  next(): Uint8Array | null {
    if (this.exhausted) return null;
    const part = new Uint8Array(this.partBytes);
    let at = 0;
    if (this.meta !== null) {
      at = Math.min(this.meta.length, part.length);
      part.set(this.meta.subarray(0, at));
      this.meta = at === this.meta.length ? null : this.meta.subarray(at);
    }
    if (at < part.length) at = this.source.read(part, at);
    if (at < part.length) this.exhausted = true;
    if (at === 0) return null;
    this.produced++;
    // The last part, shorter: its own array, so it does not keep a whole part's memory.
    return at === part.length ? part : part.slice(0, at);
  }

  /** Skips `count` parts (a resumed transfer that starts past part 0). */
  skip(count: number): void {
    for (let i = 0; i < count; i++) if (this.next() === null) return;
  }
}

export type StreamResult = { readonly ok: true } | { readonly ok: false; readonly reason: string };

/** Reads a stream part by part: the meta record first, the rest into the snapshot importer. */
export class StreamReader {
  private prefix = new Uint8Array(0);
  private metaLength = -1;
  private metaParts: Uint8Array[] = [];
  private metaBytes = 0;
  private decoded: StreamMeta | null = null;
  private failure: StreamResult | null = null;
  private totalBytes = 0;

  constructor(private readonly importer: SnapshotImport) {}

  /** The meta record, once it has arrived whole. */
  get meta(): StreamMeta | null {
    return this.decoded;
  }

  get bytes(): number {
    return this.totalBytes;
  }

  push(part: Uint8Array): StreamResult {
    if (this.failure !== null) return this.failure;
    this.totalBytes += part.length;
    let rest = part;
    if (this.decoded === null) {
      rest = this.takeMeta(part);
      if (this.failure !== null) return this.failure;
    }
    if (rest.length === 0) return { ok: true };
    const pushed = this.importer.push(rest);
    if (!pushed.ok) this.failure = { ok: false, reason: pushed.reason };
    return this.failure ?? { ok: true };
  }

  /** Checks that the stream is complete; the importer then holds the state. */
  finish(): StreamResult {
    if (this.failure !== null) return this.failure;
    if (this.decoded === null) return this.fail("stream ends inside its meta record");
    const finished = this.importer.finish();
    return finished.ok ? { ok: true } : this.fail(finished.reason);
  }

  /** Consumes meta bytes from the front of `part`; returns what follows the meta record. */
  private takeMeta(part: Uint8Array): Uint8Array {
    let rest = part;
    if (this.metaLength < 0) {
      const need = STREAM_META_PREFIX_BYTES - this.prefix.length;
      const joined = new Uint8Array(this.prefix.length + Math.min(need, rest.length));
      joined.set(this.prefix);
      joined.set(rest.subarray(0, need), this.prefix.length);
      this.prefix = joined;
      rest = rest.subarray(Math.min(need, rest.length));
      if (this.prefix.length < STREAM_META_PREFIX_BYTES) return rest;
      this.metaLength = new DataView(this.prefix.buffer).getUint32(0);
      if (this.metaLength > STREAM_META_BYTES_MAX) {
        this.fail(`meta record of ${this.metaLength} bytes exceeds ${STREAM_META_BYTES_MAX}`);
        return new Uint8Array(0);
      }
    }
    const take = Math.min(this.metaLength - this.metaBytes, rest.length);
    this.metaParts.push(rest.subarray(0, take));
    this.metaBytes += take;
    rest = rest.subarray(take);
    if (this.metaBytes === this.metaLength) this.decodeMeta();
    return rest;
  }

  private decodeMeta(): void {
    const bytes = new Uint8Array(this.metaLength);
    let at = 0;
    for (const piece of this.metaParts) {
      bytes.set(piece, at);
      at += piece.length;
    }
    this.metaParts = [];
    const meta = decodeStreamMeta(bytes);
    if (typeof meta === "string") this.fail(`malformed meta record: ${meta}`);
    else this.decoded = meta;
  }

  private fail(reason: string): StreamResult {
    this.failure = { ok: false, reason };
    return this.failure;
  }
}

/**
 * The client space names a client table holds: a key's 64 hex digits, ':' and a tag (or
 * the admin space, shorter than any tag bound).
 */
export const STREAM_CLIENT_NAME_BYTES_MAX = 64 + 1 + TAG_BYTES_MAX;

const CBOR_UINT = 0;
const CBOR_TEXT = 3;
const CBOR_ARRAY = 4;
const CBOR_MAP = 5;
const META_KEYS = ["v", "seq", "clients"] as const;
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/**
 * Decodes a meta record exactly in the shape encodeStreamMeta writes, canonical CBOR
 * `{v, seq, clients: [[name, seq], ...]}`, reading each row as it goes and refusing
 * anything else at its first byte. A meta record comes from a peer during state transfer,
 * so it is hostile input: a general decoder would build a JavaScript value for every
 * item of whatever arrived first (an array of 64 MiB of one-byte empty arrays took several
 * GiB and seconds of CPU), where this builds only rows of the one shape, at most
 * RECORD_CLIENT_ROWS_MAX of them, each name at most STREAM_CLIENT_NAME_BYTES_MAX bytes.
 * Answers the meta, or why it is malformed.
 */
export function decodeStreamMeta(bytes: Uint8Array): StreamMeta | string {
  let at = 0;
  /** The argument of the item at `at` if its major type is `major` (shortest form only), or a reason. */
  const head = (major: number, what: string): number | string => {
    if (at >= bytes.length) return `ends before ${what}`;
    const initial = bytes[at++] as number;
    if (initial >> 5 !== major) return `${what}: unexpected item type ${initial >> 5}`;
    const info = initial & 0x1f;
    if (info < 24) return info;
    const width = info === 24 ? 1 : info === 25 ? 2 : info === 26 ? 4 : info === 27 ? 8 : 0;
    if (width === 0 || at + width > bytes.length) return `${what}: bad length`;
    let value = 0;
    for (let i = 0; i < width; i++) value = value * 256 + (bytes[at++] as number);
    if (!Number.isSafeInteger(value)) return `${what}: out of range`;
    const shortest = width === 1 ? 24 : width === 2 ? 0x100 : width === 4 ? 0x1_0000 : 0x1_0000_0000;
    return value < shortest ? `${what}: not in its shortest form` : value;
  };
  const text = (bytesMax: number, what: string): string => {
    const length = head(CBOR_TEXT, what);
    if (typeof length === "string") throw new Error(length);
    if (length > bytesMax || at + length > bytes.length) throw new Error(`${what}: ${length} bytes, at most ${bytesMax}`);
    const value = utf8.decode(bytes.subarray(at, at + length));
    at += length;
    return value;
  };
  const uint = (what: string): number => {
    const value = head(CBOR_UINT, what);
    if (typeof value === "string") throw new Error(value);
    return value;
  };
  try {
    const entries = head(CBOR_MAP, "the record");
    if (typeof entries === "string") return entries;
    if (entries !== META_KEYS.length) return `a map of ${entries} entries, not ${META_KEYS.length}`;
    const fields: number[] = [];
    for (const key of META_KEYS.slice(0, 2)) {
      if (text(8, "a key") !== key) return `the keys are not v, seq, clients`;
      fields.push(uint(key));
    }
    if (text(8, "a key") !== "clients") return `the keys are not v, seq, clients`;
    const [version, seq] = fields as [number, number];
    if (version !== STREAM_FORMAT_VERSION) return `format version ${version}, not ${STREAM_FORMAT_VERSION}`;
    if (seq < 1) return "seq 0";
    const count = head(CBOR_ARRAY, "clients");
    if (typeof count === "string") return count;
    // Every row takes at least four bytes.
    if (count > RECORD_CLIENT_ROWS_MAX || count * 4 > bytes.length - at) return `${count} client rows do not fit`;
    const clients: ClientTableExport = [];
    let previous = "";
    for (let i = 0; i < count; i++) {
      if (head(CBOR_ARRAY, "a client row") !== 2) return `client row ${i} is not a pair`;
      const name = text(STREAM_CLIENT_NAME_BYTES_MAX, `client row ${i}`);
      const last = uint(`client row ${i}`);
      if (last < 1) return `client row ${i} has seq 0`;
      // The table is canonical: sorted by client, no repeats (the digest covers this order).
      if (name <= previous) return `client row ${i} is out of order`;
      previous = name;
      clients.push([name, last]);
    }
    if (at !== bytes.length) return `${bytes.length - at} bytes after the record`;
    return { seq, clients };
  } catch (error) {
    return (error as Error).message;
  }
}
