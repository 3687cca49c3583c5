/**
 * Encoding of the ordering core's persisted records and of snapshot heads as canonical
 * CBOR (the records are canonical values by contract, src/core/ordering/types.ts), and
 * the checks applied when they are read back. A record is trusted once its row checksum
 * matched, but it must still have the shape the core expects: a record written by a
 * different build, or damaged in a way the checksum cannot see, is refused rather than
 * handed to the core.
 */
import { type Canonical, decodeCanonical, encodeCanonical } from "../../../wire/canonical.ts";
import type { ClientTableExport } from "../../core/ordering/clients.ts";
import { type Checkpoint, validateCheckpointProof, validateClientRows, validatePersistedRecord } from "../../core/ordering/messages.ts";
import type { PersistedRecord } from "../../core/ordering/types.ts";

export type DecidedRecord = Extract<PersistedRecord, { t: "decided" }>;

/**
 * Rows of a client table in a record or snapshot head at most: more than a snapshot's
 * 64 MiB of metadata can hold (every row takes more than 64 bytes), so only a damaged or
 * hostile record reaches it.
 */
export const RECORD_CLIENT_ROWS_MAX = 1 << 20;

export function encodeRecord(record: PersistedRecord): Uint8Array {
  return encodeCanonical(record as unknown as Canonical);
}

/** The record in `bytes`, or null when it is not a record of the core, field by field. */
export function decodeRecord(bytes: Uint8Array): PersistedRecord | null {
  let value: Canonical;
  try {
    value = decodeCanonical(bytes);
  } catch {
    return null;
  }
  return validatePersistedRecord(value, RECORD_CLIENT_ROWS_MAX);
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
export function decodeDecided(bytes: Uint8Array, seq: number): DecidedRecord | null {
  const record = decodeRecord(bytes);
  if (record === null || record.t !== "decided" || record.seq !== seq) return null;
  return record;
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
