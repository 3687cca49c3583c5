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

/** The envelope in `bytes`, or null when it is none (the caller counts and drops it). */
export function decodeEnvelope(
  bytes: Uint8Array,
): { readonly kind: EnvelopeKind; readonly message: unknown; readonly epoch: number } | null {
  const decoded = tryDecodeCanonical(bytes);
  if (!decoded.ok) return null;
  const value = decoded.value as { kind?: unknown; message?: unknown; epoch?: unknown } | null;
  if (value === null || typeof value !== "object" || value instanceof Uint8Array || Array.isArray(value)) return null;
  if (value.kind !== "ordering" && value.kind !== "state-transfer") return null;
  const epoch = value.epoch ?? 0;
  if (typeof epoch !== "number" || !Number.isSafeInteger(epoch) || epoch < 0) return null;
  return { kind: value.kind, message: value.message, epoch };
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
