/**
 * Encoding of the ordering core's persisted records and of snapshot heads as canonical
 * CBOR (the records are canonical values by contract, src/core/ordering/types.ts), and
 * the checks applied when they are read back. A record is trusted once its row checksum
 * matched, but it must still have the shape the core expects: a record written by a
 * different build, or damaged in a way the checksum cannot see, is refused rather than
 * handed to the core.
 *
 * Batches are written once (store format 2, src/README.md §5). The `accept`, `prepared`
 * and `decided` records of one seq carry the same batch; each is stored as a reference
 * `{v: 2, b: digest, r: record}` where `r` is the record with its batch left out (empty
 * arrays in its place), and the batch itself is one row of the batch table keyed by that
 * digest, its bytes those the digest is computed over (`batchBytes`). Reading a reference
 * puts the batch back; a reference whose batch is missing, damaged or does not hash to
 * the digest is refused like a malformed record. A record without a batch (or with an
 * empty one), and every record of a format 1 store, is the record itself.
 */
import { type Canonical, decodeCanonical, encodeCanonical } from "../../../wire/canonical.ts";
import type { ClientTableExport } from "../../core/ordering/clients.ts";
import {
  batchBytes,
  type Checkpoint,
  type ClientRequest,
  validateCheckpointProof,
  validateClientRows,
  validatePersistedRecord,
} from "../../core/ordering/messages.ts";
import type { PersistedRecord } from "../../core/ordering/types.ts";
import { bytesEqual } from "../../crypto/encoding.ts";
import { sha256 } from "../../crypto/hash.ts";

export type DecidedRecord = Extract<PersistedRecord, { t: "decided" }>;

/**
 * Rows of a client table in a record or snapshot head at most: more than a snapshot's
 * 64 MiB of metadata can hold (every row takes more than 64 bytes), so only a damaged or
 * hostile record reaches it.
 */
export const RECORD_CLIENT_ROWS_MAX = 1 << 20;

/** The version tag of a record stored by reference to its batch. */
const REF_VERSION = 2;

/** The batch a record carries and the digest it is stored under; null when it carries none (or an empty one). */
export function recordBatch(record: PersistedRecord): { readonly digest: Uint8Array; readonly batch: ClientRequest[] } | null {
  switch (record.t) {
    case "accept": {
      const batch = record.prePrepare.batch;
      return batch !== null && batch.length > 0 ? { digest: record.prePrepare.digest, batch } : null;
    }
    case "prepared":
      // In crash mode the certificate carries the body too; it is the same array.
      if (record.cert.batch !== null && record.cert.batch !== record.batch) return null;
      return record.batch.length > 0 ? { digest: record.cert.digest, batch: record.batch } : null;
    case "decided":
      return record.batch.length > 0 ? { digest: record.digest, batch: record.batch } : null;
    default:
      return null;
  }
}

/** The bytes of a batch row: the bytes its digest is computed over. */
export function encodeBatch(batch: readonly ClientRequest[]): Uint8Array {
  return batchBytes(batch);
}

/**
 * A stored batch decoded, or null when `data` does not hash to `digest` or is not a list
 * of requests (each request is checked again with the record that names it).
 */
export function decodeBatch(digest: Uint8Array, data: Uint8Array): ClientRequest[] | null {
  if (!bytesEqual(sha256(data), digest)) return null;
  let value: Canonical;
  try {
    value = decodeCanonical(data);
  } catch {
    return null;
  }
  if (!Array.isArray(value) || value.length === 0) return null;
  const batch: ClientRequest[] = [];
  for (const fields of value) {
    if (!Array.isArray(fields) || fields.length !== 5) return null;
    const [client, seq, span, body, sig] = fields;
    batch.push({ client, seq, span, body, sig } as unknown as ClientRequest);
  }
  return batch;
}

/**
 * Encodes a record. With `byRef` its batch (recordBatch) is left out and named by digest:
 * the caller stores the batch row in the same transaction or an earlier one.
 */
export function encodeRecord(record: PersistedRecord, byRef = false): Uint8Array {
  if (!byRef) return encodeCanonical(record as unknown as Canonical);
  const carried = recordBatch(record);
  if (carried === null) throw new RangeError(`a ${record.t} record without a batch cannot be stored by reference`);
  return encodeCanonical({ v: REF_VERSION, b: carried.digest, r: withBatch(record, []) as unknown as Canonical });
}

/** The batch digest an accept, prepared or decided record names (null for the others). */
function digestNamed(record: PersistedRecord): Uint8Array | null {
  switch (record.t) {
    case "accept":
      return record.prePrepare.digest;
    case "prepared":
      return record.cert.digest;
    case "decided":
      return record.digest;
    default:
      return null;
  }
}

/** `record` with `batch` in the place of the batch it carries (recordBatch's). */
function withBatch(record: PersistedRecord, batch: ClientRequest[]): PersistedRecord {
  switch (record.t) {
    case "accept":
      return { ...record, prePrepare: { ...record.prePrepare, batch } };
    case "prepared":
      return { ...record, cert: record.cert.batch === null ? record.cert : { ...record.cert, batch }, batch };
    case "decided":
      return { ...record, batch };
    default:
      return record;
  }
}

type CanonicalMap = { [key: string]: Canonical };

function isMap(x: Canonical | undefined): x is CanonicalMap {
  return x !== null && typeof x === "object" && !Array.isArray(x) && !(x instanceof Uint8Array);
}

/** A stored reference record, as decoded, with `batch` in the places withBatch emptied. */
function withStoredBatch(r: CanonicalMap, batch: Canonical): CanonicalMap {
  switch (r["t"]) {
    case "accept": {
      const pp = r["prePrepare"];
      return isMap(pp) ? { ...r, prePrepare: { ...pp, batch } } : r;
    }
    case "prepared": {
      const cert = r["cert"];
      return { ...r, cert: isMap(cert) && cert["batch"] !== null ? { ...cert, batch } : (cert as Canonical), batch };
    }
    default:
      return { ...r, batch };
  }
}

/** Where a referenced batch is looked up when a record is read: the decoded batch, or why not. */
export type BatchLookup = (digest: Uint8Array) => ClientRequest[] | string;

/** A record read back, or why it was refused ("malformed record", or what its batch lookup said). */
export type RecordRead = { readonly ok: true; readonly record: PersistedRecord } | { readonly ok: false; readonly reason: string };

const NO_BATCHES: BatchLookup = () => "batch missing";

/** Reads a stored record, putting back a batch stored apart (`batches`), field by field. */
export function readRecord(bytes: Uint8Array, batches: BatchLookup = NO_BATCHES): RecordRead {
  let value: Canonical;
  try {
    value = decodeCanonical(bytes);
  } catch {
    return MALFORMED;
  }
  const ref = value;
  if (isMap(ref) && "v" in ref) {
    const stripped = ref["r"];
    if (ref["v"] !== REF_VERSION || !(ref["b"] instanceof Uint8Array) || !isMap(stripped)) return MALFORMED;
    if (stripped["t"] !== "accept" && stripped["t"] !== "prepared" && stripped["t"] !== "decided") return MALFORMED;
    const batch = batches(ref["b"]);
    if (typeof batch === "string") return { ok: false, reason: batch };
    // The whole record, batch put back, is checked field by field once.
    const record = validatePersistedRecord(withStoredBatch(stripped, batch as unknown as Canonical), RECORD_CLIENT_ROWS_MAX);
    // The record must name its batch by the digest it was stored under.
    const named = record === null ? null : digestNamed(record);
    if (record === null || named === null || !bytesEqual(named, ref["b"])) return MALFORMED;
    return { ok: true, record };
  }
  const record = validatePersistedRecord(value, RECORD_CLIENT_ROWS_MAX);
  return record === null ? MALFORMED : { ok: true, record };
}

const MALFORMED: RecordRead = { ok: false, reason: "malformed record" };

/** The record in `bytes`, or null when it is not a record of the core, field by field (or its batch is not in `batches`). */
export function decodeRecord(bytes: Uint8Array, batches: BatchLookup = NO_BATCHES): PersistedRecord | null {
  const read = readRecord(bytes, batches);
  return read.ok ? read.record : null;
}

/** The sequence number a record is about, used to prune records below a stable checkpoint. */
export function recordSeq(record: PersistedRecord): number {
  switch (record.t) {
    case "view":
      return record.view;
    case "accept":
      return record.prePrepare.seq;
    case "prepared":
      return record.cert.seq;
    case "decided":
    case "checkpoint":
    case "stable":
    case "snapshot":
      return record.seq;
    default: {
      const unreachable: never = record;
      return unreachable;
    }
  }
}

/** A decided record read back: it must be one, for the seq of its row, with a batch. */
export function decodeDecided(bytes: Uint8Array, seq: number, batches: BatchLookup = NO_BATCHES): DecidedRecord | null {
  const read = readDecided(bytes, seq, batches);
  return read.ok ? read.record : null;
}

/** Like decodeDecided, with the reason when the row cannot be read. */
export function readDecided(
  bytes: Uint8Array,
  seq: number,
  batches: BatchLookup = NO_BATCHES,
): { readonly ok: true; readonly record: DecidedRecord } | { readonly ok: false; readonly reason: string } {
  const read = readRecord(bytes, batches);
  if (!read.ok) return { ok: false, reason: read.reason };
  if (read.record.t !== "decided" || read.record.seq !== seq) return { ok: false, reason: "malformed record" };
  return { ok: true, record: read.record };
}

/**
 * What a stored snapshot is. `complete` snapshots are bases the replica can restart from
 * (and serve); an `incoming` one is a state transfer in progress, kept so that a restart
 * can resume it. appDigest and clients are known only once a snapshot is complete.
 */
export interface SnapshotHead {
  readonly status: "complete" | "incoming";
  readonly seq: number;
  readonly stateDigest: Uint8Array;
  readonly appDigest: Uint8Array | null;
  readonly clients: ClientTableExport | null;
  readonly proof: Checkpoint[];
  readonly parts: number;
  readonly bytes: number;
  readonly partBytes: number;
}

export function encodeHead(head: SnapshotHead): Uint8Array {
  return encodeCanonical({
    v: 1,
    status: head.status,
    seq: head.seq,
    stateDigest: head.stateDigest,
    appDigest: head.appDigest,
    clients: head.clients as unknown as Canonical,
    proof: head.proof as unknown as Canonical,
    parts: head.parts,
    bytes: head.bytes,
    partBytes: head.partBytes,
  });
}

export function decodeHead(bytes: Uint8Array): SnapshotHead | null {
  let value: Canonical;
  try {
    value = decodeCanonical(bytes);
  } catch {
    return null;
  }
  const h = value as { [key: string]: Canonical } | null;
  if (h === null || typeof h !== "object" || h["v"] !== 1) return null;
  const status = h["status"];
  if (status !== "complete" && status !== "incoming") return null;
  const ints = [h["seq"], h["parts"], h["bytes"], h["partBytes"]];
  if (!ints.every((x) => typeof x === "number" && Number.isSafeInteger(x) && x >= 0)) return null;
  if (!(h["stateDigest"] instanceof Uint8Array)) return null;
  const proof = validateCheckpointProof(h["proof"]);
  const clients = h["clients"] === null || h["clients"] === undefined ? null : validateClientRows(h["clients"], RECORD_CLIENT_ROWS_MAX);
  if (proof === null || (clients === null && h["clients"] !== null && h["clients"] !== undefined)) return null;
  if (status === "complete" && (!(h["appDigest"] instanceof Uint8Array) || clients === null)) return null;
  return {
    status,
    seq: h["seq"] as number,
    stateDigest: h["stateDigest"],
    appDigest: h["appDigest"] instanceof Uint8Array ? h["appDigest"] : null,
    clients: clients as ClientTableExport | null,
    proof,
    parts: h["parts"] as number,
    bytes: h["bytes"] as number,
    partBytes: h["partBytes"] as number,
  };
}
