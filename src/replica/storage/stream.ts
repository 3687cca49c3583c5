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
import { type Canonical, decodeCanonical, encodeCanonical } from "../../../wire/canonical.ts";
import type { SnapshotExport, SnapshotImport } from "../../core/channels/snapshot.ts";
import type { ClientTableExport } from "../../core/ordering/clients.ts";

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
    try {
      const value = decodeCanonical(bytes) as { v?: unknown; seq?: unknown; clients?: unknown };
      const meta = parseMeta(value);
      if (meta === null) this.fail("malformed meta record");
      else this.decoded = meta;
    } catch (error) {
      this.fail(`meta record does not decode: ${(error as Error).message}`);
    }
  }

  private fail(reason: string): StreamResult {
    this.failure = { ok: false, reason };
    return this.failure;
  }
}

function parseMeta(value: { v?: unknown; seq?: unknown; clients?: unknown }): StreamMeta | null {
  if (value === null || typeof value !== "object" || value.v !== STREAM_FORMAT_VERSION) return null;
  if (typeof value.seq !== "number" || !Number.isSafeInteger(value.seq) || value.seq < 1) return null;
  if (!Array.isArray(value.clients)) return null;
  let previous = "";
  for (const row of value.clients) {
    if (!Array.isArray(row) || row.length !== 2) return null;
    const [client, last] = row as [unknown, unknown];
    if (typeof client !== "string" || typeof last !== "number" || !Number.isSafeInteger(last) || last < 1) return null;
    // The table is canonical: sorted by client, no repeats (the digest covers this order).
    if (client <= previous) return null;
    previous = client;
  }
  return { seq: value.seq, clients: value.clients as ClientTableExport };
}
