/**
 * How a verification batch travels to a thread (verify-pool.ts, verify-worker.ts): one
 * ArrayBuffer, transferred, holding u32 count, then per item its u32 message length, then
 * every item's 32-byte key, 64-byte signature and message, item after item. The sender
 * copies each part once into it; the thread reads them in place.
 */

export const KEY_BYTES = 32;
export const SIG_BYTES = 64;
const LENGTH_FIELD_BYTES = 4;

/** Message bytes in one batch to a thread; a batch holds at least one check whatever its size. */
export const BATCH_BYTES_MAX = 4 * 1024 * 1024;

/**
 * One check to pack: the signed message is `prefix || message` (the prefix a domain tag,
 * wire/session.ts signingPrefix; empty when absent), joined only here, in the batch.
 */
export interface PackedCheck {
  readonly key: Uint8Array;
  readonly sig: Uint8Array;
  readonly prefix?: Uint8Array;
  readonly message: Uint8Array;
}

/** Bytes of the signed message of a check. */
export function signedLength(item: PackedCheck): number {
  return (item.prefix?.length ?? 0) + item.message.length;
}

/** The checks in one transferable buffer (see VerifyBatch). */
export function packBatch(items: readonly PackedCheck[]): ArrayBuffer {
  let total = LENGTH_FIELD_BYTES * (1 + items.length);
  for (const item of items) total += KEY_BYTES + SIG_BYTES + signedLength(item);
  const packed = new ArrayBuffer(total);
  const bytes = new Uint8Array(packed);
  const view = new DataView(packed);
  view.setUint32(0, items.length);
  let at = LENGTH_FIELD_BYTES * (1 + items.length);
  items.forEach((item, i) => {
    if (item.key.length !== KEY_BYTES || item.sig.length !== SIG_BYTES) {
      throw new RangeError(`packBatch: a key must be ${KEY_BYTES} bytes and a signature ${SIG_BYTES}`);
    }
    const prefixBytes = item.prefix?.length ?? 0;
    view.setUint32(LENGTH_FIELD_BYTES * (1 + i), prefixBytes + item.message.length);
    bytes.set(item.key, at);
    bytes.set(item.sig, at + KEY_BYTES);
    if (item.prefix !== undefined) bytes.set(item.prefix, at + KEY_BYTES + SIG_BYTES);
    bytes.set(item.message, at + KEY_BYTES + SIG_BYTES + prefixBytes);
    at += KEY_BYTES + SIG_BYTES + prefixBytes + item.message.length;
  });
  return packed;
}

/** The triples of a packed batch, as views into it (no copy). */
export function unpackBatch(packed: ArrayBuffer): { key: Uint8Array; sig: Uint8Array; message: Uint8Array }[] {
  const view = new DataView(packed);
  const count = view.getUint32(0);
  const items: { key: Uint8Array; sig: Uint8Array; message: Uint8Array }[] = [];
  let at = LENGTH_FIELD_BYTES * (1 + count);
  for (let i = 0; i < count; i++) {
    const length = view.getUint32(LENGTH_FIELD_BYTES * (1 + i));
    items.push({
      key: new Uint8Array(packed, at, KEY_BYTES),
      sig: new Uint8Array(packed, at + KEY_BYTES, SIG_BYTES),
      message: new Uint8Array(packed, at + KEY_BYTES + SIG_BYTES, length),
    });
    at += KEY_BYTES + SIG_BYTES + length;
  }
  return items;
}
