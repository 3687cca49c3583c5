/**
 * What replicas say to each other inside an authenticated, MACed peer link (peers.ts):
 * an envelope `{kind, message}` whose kind names the part of the runtime the message is
 * for, and the state transfer messages (state-transfer.ts). The ordering core's messages
 * are validated by the core (core/ordering/messages.ts, validatePeerMessage).
 */
import { type Canonical, encodeCanonical, tryDecodeCanonical } from "../../wire/canonical.ts";
import { DIGEST_BYTES } from "../../wire/types.ts";

/** Parts in flight from a state transfer source at once. */
export const TRANSFER_WINDOW_PARTS = 4;
/** Parts in one stream at most: far beyond any state retention allows, a bound on hostile input. */
export const STREAM_PARTS_MAX = 2 ** 32;
/** A `none` message's reason is at most this long. */
const REASON_CHARS_MAX = 256;

export type EnvelopeKind = "ordering" | "state-transfer";

/**
 * One peer message: who it is for, the message as a canonical value, and the membership
 * epoch of the ordering core that sent it (`epoch`, present from epoch 1 on; src/replica/epochs.ts).
 */
export function encodeEnvelope(kind: EnvelopeKind, message: Canonical, epoch = 0): Uint8Array {
  return encodeCanonical(epoch === 0 ? { kind, message } : { kind, message, epoch });
}

/**
 * Bytes each value (decodeCanonical's items) of a valid peer message takes at least, on
 * average over any part of it that repeats. The densest part a correct replica sends is a
 * STATE_RESPONSE item for an empty batch without COMMITs (`bodyItem` in the core's
 * checkpoints.ts): a map of five fields, each an integer or an empty array, 6 values in 35
 * bytes, 5.8 bytes a value. Everything else is sparser: a client request holds 6 values in
 * at least 161 bytes (its 64-character client name and 64-byte signature), a vote 7 in at
 * least 140, a checkpoint 6 in 139, a proposal header 8 in 147, a prepared certificate 15
 * in 229, a VIEW_CHANGE 9 in 184 besides its proofs, a state transfer part 7 around one
 * byte string. So 4 leaves room, and a message of 4 MiB may hold a million values where
 * the same bytes of empty arrays hold four million.
 */
export const PEER_MESSAGE_BYTES_PER_ITEM_MIN = 4;
/** The envelope and a message's own fields: values allowed beyond PEER_MESSAGE_BYTES_PER_ITEM_MIN's share (a SUSPECT in its envelope is 5 values in 40 bytes). */
export const PEER_MESSAGE_ITEMS_SLACK = 64;

/** The values a valid peer message of `bytes` bytes holds at most: the decoder stops past it. */
export function peerMessageItemsMax(bytes: number): number {
  return Math.floor(bytes / PEER_MESSAGE_BYTES_PER_ITEM_MIN) + PEER_MESSAGE_ITEMS_SLACK;
}

export interface Envelope {
  readonly kind: EnvelopeKind;
  readonly message: unknown;
  readonly epoch: number;
}

/**
 * An envelope read from a peer, or why not: `proves` when no correct replica of this
 * version or another sends such bytes (they are not canonical CBOR, hold more values than
 * any valid message of their size, or are not an envelope's map), not when it names a kind
 * this version does not know (a later version's).
 */
export type EnvelopeRead =
  | { readonly ok: true; readonly envelope: Envelope }
  | { readonly ok: false; readonly reason: string; readonly proves: boolean };

/** Reads the envelope in `bytes`, decoding at most peerMessageItemsMax of its values. */
export function readEnvelope(bytes: Uint8Array): EnvelopeRead {
  const decoded = tryDecodeCanonical(bytes, peerMessageItemsMax(bytes.length));
  if (!decoded.ok) return { ok: false, reason: "an envelope that does not decode", proves: true };
  const value = decoded.value as { kind?: unknown; message?: unknown; epoch?: unknown } | null;
  if (value === null || typeof value !== "object" || value instanceof Uint8Array || Array.isArray(value)) {
    return { ok: false, reason: "an envelope that is not a map", proves: true };
  }
  if (value.kind !== "ordering" && value.kind !== "state-transfer") {
    return { ok: false, reason: "an envelope of an unknown kind", proves: false };
  }
  const epoch = value.epoch ?? 0;
  if (typeof epoch !== "number" || !Number.isSafeInteger(epoch) || epoch < 0) {
    return { ok: false, reason: "an envelope whose epoch is not a count", proves: true };
  }
  return { ok: true, envelope: { kind: value.kind, message: value.message, epoch } };
}

/** The envelope in `bytes`, or null when it is none (the caller counts and drops it). */
export function decodeEnvelope(bytes: Uint8Array): Envelope | null {
  const read = readEnvelope(bytes);
  return read.ok ? read.envelope : null;
}

export type TransferMessage =
  | { t: "get"; seq: number; digest: Uint8Array; part: number; count: number; nonce: number }
  | { t: "part"; seq: number; nonce: number; part: number; data: Uint8Array; end: boolean }
  | { t: "none"; seq: number; nonce: number; reason: string };

export function encodeTransferMessage(m: TransferMessage): Uint8Array {
  return encodeEnvelope("state-transfer", m as unknown as Canonical);
}

function isInt(x: unknown, min: number, max: number): x is number {
  return typeof x === "number" && Number.isSafeInteger(x) && x >= min && x <= max;
}

/** The state transfer message forms this version knows (validateTransferMessage refuses others). */
export const TRANSFER_MESSAGE_KINDS: ReadonlySet<string> = new Set(["get", "part", "none"]);

/** Checks a decoded `m` field against the message forms above; null when it is none of them. */
export function validateTransferMessage(m: unknown, partBytesMax: number): TransferMessage | null {
  if (m === null || typeof m !== "object") return null;
  const x = m as Record<string, unknown>;
  if (!isInt(x.seq, 1, Number.MAX_SAFE_INTEGER) || !isInt(x.nonce, 0, Number.MAX_SAFE_INTEGER)) return null;
  switch (x.t) {
    case "get":
      if (!(x.digest instanceof Uint8Array) || x.digest.length !== DIGEST_BYTES) return null;
      if (!isInt(x.part, 0, STREAM_PARTS_MAX) || !isInt(x.count, 1, TRANSFER_WINDOW_PARTS)) return null;
      return { t: "get", seq: x.seq, digest: x.digest, part: x.part, count: x.count, nonce: x.nonce };
    case "part":
      if (!isInt(x.part, 0, STREAM_PARTS_MAX) || typeof x.end !== "boolean") return null;
      if (!(x.data instanceof Uint8Array) || x.data.length > partBytesMax) return null;
      return { t: "part", seq: x.seq, nonce: x.nonce, part: x.part, data: x.data, end: x.end };
    case "none":
      if (typeof x.reason !== "string" || x.reason.length > REASON_CHARS_MAX) return null;
      return { t: "none", seq: x.seq, nonce: x.nonce, reason: x.reason };
    default:
      return null;
  }
}
