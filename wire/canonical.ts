/**
 * Canonical CBOR: the one encoding of everything fitb signs or hashes.
 *
 * This is the "core deterministic encoding" of RFC 8949 §4.2.1 restricted to the value
 * model fitb needs: integers (JavaScript safe integers only), byte strings, UTF-8 text
 * strings, arrays, maps with text keys, booleans and null. No floats, no tags, no
 * indefinite lengths, no undefined. Every integer and length uses its shortest form and
 * map keys are sorted by the bytewise order of their encodings (§4.2.1).
 *
 * The decoder is strict: it accepts exactly the byte strings the encoder produces, so
 * `encodeCanonical(decodeCanonical(b))` equals `b` for every `b` it accepts. That property
 * is what lets a replica verify a signature over bytes it received and then reason about
 * the decoded value without a second, differently-encoded view of the same data.
 *
 * The codec is hand-written rather than configured out of a general CBOR library because
 * it is small, it is on the hot path, and it is the thing signatures cover: every rule
 * above is visible in this file.
 */

/** A value that has exactly one canonical encoding. Numbers must be safe integers. */
export type Canonical = null | boolean | number | string | Uint8Array | Canonical[] | { [key: string]: Canonical };

/** Nesting deeper than this is refused, so hostile input cannot exhaust the stack. */
export const CANONICAL_DEPTH_MAX = 64;

/** Why an encoding or decoding was refused; stable strings, safe to match on. */
export type CanonicalErrorCode =
  | "truncated" // the input ends inside an item
  | "trailing-bytes" // bytes remain after the top-level item
  | "non-shortest" // an integer, length or count not in its shortest form
  | "indefinite-length" // additional info 31 (streaming strings, arrays, maps, break)
  | "float-or-simple" // major type 7 other than false, true, null
  | "tag" // major type 6
  | "reserved-info" // additional info 28..30
  | "int-out-of-range" // an integer outside the JavaScript safe range
  | "invalid-utf8" // a text string that is not well-formed UTF-8
  | "key-not-text" // a map key that is not a text string
  | "keys-unsorted" // map keys not in bytewise order of their encodings
  | "duplicate-key" // the same map key twice
  | "depth-exceeded" // nesting deeper than CANONICAL_DEPTH_MAX
  | "items-exceeded" // more values than the caller's itemsMax
  | "unencodable"; // encode side: a value outside the Canonical model

/** Thrown by `encodeCanonical` and `decodeCanonical`; `offset` is where decoding stopped. */
export class CanonicalError extends Error {
  override readonly name = "CanonicalError";
  readonly code: CanonicalErrorCode;
  readonly offset: number;

  constructor(code: CanonicalErrorCode, message: string, offset = -1) {
    super(message);
    this.code = code;
    this.offset = offset;
  }
}

// CBOR major types (RFC 8949 §3.1), already shifted into the top three bits.
const MAJOR_UINT = 0x00;
const MAJOR_NEGINT = 0x20;
const MAJOR_BYTES = 0x40;
const MAJOR_TEXT = 0x60;
const MAJOR_ARRAY = 0x80;
const MAJOR_MAP = 0xa0;
const MAJOR_TAG = 0xc0;
const MAJOR_SIMPLE = 0xe0;

const SIMPLE_FALSE = 0xf4;
const SIMPLE_TRUE = 0xf5;
const SIMPLE_NULL = 0xf6;

// Additional-info values (RFC 8949 §3): the argument is in the next 1, 2, 4 or 8 bytes.
const INFO_DIRECT_MAX = 23;
const INFO_U8 = 24;
const INFO_U16 = 25;
const INFO_U32 = 26;
const INFO_U64 = 27;
const INFO_INDEFINITE = 31;

const TWO_POW_32 = 0x1_0000_0000;

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

const textEncoder = new TextEncoder();

/**
 * Encoded map keys, cached because the protocol uses a small fixed set of field names and
 * sorting needs their encodings. The cache stops growing at a bound so that arbitrary
 * query results cannot turn it into a leak.
 */
const KEY_CACHE_ENTRIES_MAX = 4096;
const keyCache = new Map<string, Uint8Array>();

/** The encoder writes into one growing scratch buffer and copies the result out. */
const SCRATCH_BYTES_INITIAL = 64 * 1024;
let out = new Uint8Array(SCRATCH_BYTES_INITIAL);
let outLen = 0;
let encodeDepth = 0;
/**
 * withCanonical's own buffer, swapped in while it encodes, so that what it lends is not
 * overwritten by an encode inside its callback. Null while lent.
 */
let lendable: Uint8Array<ArrayBuffer> | null = new Uint8Array(SCRATCH_BYTES_INITIAL);

/** Encodes a value canonically. Throws `CanonicalError("unencodable")` outside the model. */
export function encodeCanonical(value: Canonical): Uint8Array {
  return encodeCanonicalAfter(0, value);
}

/**
 * Encodes a value canonically behind `prefixBytes` zero bytes that the caller fills in
 * (the frame encoder puts its header there), saving a copy of the whole payload, and
 * before `suffixBytes` zero bytes (a session MAC written in place).
 */
export function encodeCanonicalAfter(prefixBytes: number, value: Canonical, suffixBytes = 0): Uint8Array {
  outLen = 0;
  encodeDepth = 0;
  ensure(prefixBytes);
  out.fill(0, 0, prefixBytes);
  outLen = prefixBytes;
  writeValue(value);
  if (suffixBytes === 0) return out.slice(0, outLen);
  // A suffix (a session MAC) is reserved as zero bytes after the item.
  const bytes = new Uint8Array(outLen + suffixBytes);
  bytes.set(out.subarray(0, outLen));
  return bytes;
}

/**
 * Encodes `value` canonically and hands `use` a view of the bytes in a buffer of the
 * encoder's, valid only during the call. For bytes that are hashed or copied once and
 * then dropped (a digest, a row written to the store), this saves allocating and filling
 * a buffer of their size, which for a batch of a megabyte costs more than the copy (fresh
 * pages, and the collections they bring on). `use` must not keep the view; it may encode
 * (into the other buffer), but not call withCanonical again: that throws.
 */
export function withCanonical<T>(value: Canonical, use: (bytes: Uint8Array) => T): T {
  if (lendable === null) throw new Error("withCanonical called inside withCanonical: its buffer is lent");
  const own = out;
  out = lendable;
  outLen = 0;
  encodeDepth = 0;
  try {
    writeValue(value);
  } catch (error) {
    lendable = out;
    out = own;
    throw error;
  }
  const lent = out;
  const length = outLen;
  out = own;
  lendable = null;
  try {
    return use(lent.subarray(0, length));
  } finally {
    // `ensure` may have grown it: the grown one is kept.
    lendable = lent;
  }
}

function ensure(extraBytes: number): void {
  const needed = outLen + extraBytes;
  if (needed <= out.length) return;
  let size = out.length * 2;
  while (size < needed) size *= 2;
  const bigger = new Uint8Array(size);
  bigger.set(out.subarray(0, outLen));
  out = bigger;
}

/** Writes a major type with its argument in shortest form (RFC 8949 §4.2.1, first rule). */
function writeHead(major: number, arg: number): void {
  ensure(9);
  if (arg <= INFO_DIRECT_MAX) {
    out[outLen++] = major | arg;
  } else if (arg <= 0xff) {
    out[outLen++] = major | INFO_U8;
    out[outLen++] = arg;
  } else if (arg <= 0xffff) {
    out[outLen++] = major | INFO_U16;
    out[outLen++] = arg >>> 8;
    out[outLen++] = arg & 0xff;
  } else if (arg < TWO_POW_32) {
    out[outLen++] = major | INFO_U32;
    writeU32(arg);
  } else {
    out[outLen++] = major | INFO_U64;
    writeU32(Math.floor(arg / TWO_POW_32));
    writeU32(arg >>> 0);
  }
}

function writeU32(v: number): void {
  out[outLen++] = (v >>> 24) & 0xff;
  out[outLen++] = (v >>> 16) & 0xff;
  out[outLen++] = (v >>> 8) & 0xff;
  out[outLen++] = v & 0xff;
}

function writeValue(value: Canonical): void {
  switch (typeof value) {
    case "number":
      writeInteger(value);
      return;
    case "string":
      writeText(value);
      return;
    case "boolean":
      ensure(1);
      out[outLen++] = value ? SIMPLE_TRUE : SIMPLE_FALSE;
      return;
    case "object":
      writeObject(value);
      return;
    default:
      throw new CanonicalError("unencodable", `cannot encode a value of type ${typeof value}`);
  }
}

function writeInteger(n: number): void {
  if (!Number.isSafeInteger(n)) {
    throw new CanonicalError("unencodable", `only safe integers are encodable, got ${n}`);
  }
  if (n >= 0) writeHead(MAJOR_UINT, n);
  else writeHead(MAJOR_NEGINT, -1 - n);
}

function writeText(s: string): void {
  // A lone surrogate would be replaced by U+FFFD on the way out, so the value would not
  // survive a round trip; refusing it keeps encode/decode a bijection.
  if (!s.isWellFormed()) {
    throw new CanonicalError("unencodable", "text contains a lone UTF-16 surrogate");
  }
  writeBytesItem(MAJOR_TEXT, textEncoder.encode(s));
}

function writeBytesItem(major: number, bytes: Uint8Array): void {
  writeHead(major, bytes.length);
  ensure(bytes.length);
  out.set(bytes, outLen);
  outLen += bytes.length;
}

function writeObject(value: Canonical[] | { [key: string]: Canonical } | Uint8Array | null): void {
  if (value === null) {
    ensure(1);
    out[outLen++] = SIMPLE_NULL;
  } else if (value instanceof Uint8Array) {
    writeBytesItem(MAJOR_BYTES, value);
  } else if (Array.isArray(value)) {
    enterContainer();
    writeHead(MAJOR_ARRAY, value.length);
    for (const item of value) writeValue(item);
    encodeDepth--;
  } else {
    writeMap(value);
  }
}

function enterContainer(): void {
  encodeDepth++;
  if (encodeDepth > CANONICAL_DEPTH_MAX) {
    throw new CanonicalError("unencodable", `nesting deeper than ${CANONICAL_DEPTH_MAX}`);
  }
}

function writeMap(value: { [key: string]: Canonical }): void {
  const proto: unknown = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) {
    throw new CanonicalError("unencodable", "only plain objects are encodable as maps");
  }
  enterContainer();
  // A property holding `undefined` is treated as absent, as JSON does, so that optional
  // fields can be written as `{ from: maybeFrom }`.
  const entries: Array<[Uint8Array, Canonical]> = [];
  for (const key of Object.keys(value)) {
    const item = value[key];
    if (item !== undefined) entries.push([encodedKey(key), item]);
  }
  entries.sort((a, b) => compareBytes(a[0], b[0]));
  writeHead(MAJOR_MAP, entries.length);
  for (const [key, item] of entries) {
    ensure(key.length);
    out.set(key, outLen);
    outLen += key.length;
    writeValue(item);
  }
  encodeDepth--;
}

function encodedKey(key: string): Uint8Array {
  const cached = keyCache.get(key);
  if (cached !== undefined) return cached;
  if (!key.isWellFormed()) {
    throw new CanonicalError("unencodable", "map key contains a lone UTF-16 surrogate");
  }
  const utf8 = textEncoder.encode(key);
  const head = headBytes(MAJOR_TEXT, utf8.length);
  const encoded = new Uint8Array(head.length + utf8.length);
  encoded.set(head);
  encoded.set(utf8, head.length);
  if (keyCache.size < KEY_CACHE_ENTRIES_MAX) keyCache.set(key, encoded);
  return encoded;
}

function headBytes(major: number, arg: number): Uint8Array {
  if (arg <= INFO_DIRECT_MAX) return Uint8Array.of(major | arg);
  if (arg <= 0xff) return Uint8Array.of(major | INFO_U8, arg);
  if (arg <= 0xffff) return Uint8Array.of(major | INFO_U16, arg >>> 8, arg & 0xff);
  return Uint8Array.of(major | INFO_U32, arg >>> 24, (arg >>> 16) & 0xff, (arg >>> 8) & 0xff, arg & 0xff);
}

/** Bytewise lexicographic order, the map-key order of RFC 8949 §4.2.1. */
export function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const d = (a[i] as number) - (b[i] as number);
    if (d !== 0) return d;
  }
  return a.length - b.length;
}

// ---------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------

const textDecoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Text strings up to this length that are pure ASCII skip the TextDecoder call. */
const ASCII_FAST_PATH_BYTES_MAX = 32;

/**
 * Decodes exactly one canonical item that fills `bytes`. Throws `CanonicalError` on any
 * malformed or non-canonical input.
 *
 * Byte strings in the result are views into `bytes` (zero copy): do not modify `bytes`
 * afterwards, and copy a byte string (`.slice()`) before keeping it long-term or posting
 * it to another thread, since a view keeps, and a structured clone copies, the whole
 * underlying buffer.
 *
 * `itemsMax` bounds the values decoded (every item but a map key: a container counts once,
 * and each of its elements or map values once more). Decoding costs about the same per item
 * whatever the item, and one byte can be an item (an empty array), so a frame of 4 MiB can
 * cost four million allocations although the messages it may carry hold a small fraction
 * of that: a caller that knows its largest valid value passes its count, and the decoder
 * stops with "items-exceeded" as soon as the input holds more (at an array's or map's head
 * when its count alone is past what is left, before anything is made for it). Unlimited by default
 * (stored records, whose client tables grow with the clients).
 */
export function decodeCanonical(input: Uint8Array, itemsMax: number = Number.POSITIVE_INFINITY): Canonical {
  // A Buffer is viewed as a plain Uint8Array so decoded byte strings always have one type.
  const bytes = input.constructor === Uint8Array ? input : new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
  const reader = new Reader(bytes, itemsMax);
  const value = reader.readValue(0);
  if (reader.pos !== bytes.length) {
    throw new CanonicalError("trailing-bytes", `${bytes.length - reader.pos} bytes after the item`, reader.pos);
  }
  return value;
}

/** One decoding pass over one input; a small object so the JIT keeps its fields in registers. */
class Reader {
  readonly src: Uint8Array;
  readonly end: number;
  pos = 0;
  /** Values the caller still allows (decodeCanonical's itemsMax). */
  itemsLeft: number;

  constructor(src: Uint8Array, itemsMax: number) {
    this.src = src;
    this.end = src.length;
    this.itemsLeft = itemsMax;
  }

  fail(code: CanonicalErrorCode, message: string, at: number = this.pos): never {
    throw new CanonicalError(code, message, at);
  }

  need(n: number): void {
    if (this.end - this.pos < n) this.fail("truncated", `need ${n} more bytes, have ${this.end - this.pos}`);
  }

  readValue(depth: number): Canonical {
    this.need(1);
    const start = this.pos;
    if (--this.itemsLeft < 0) this.fail("items-exceeded", "more items than the largest valid value holds", start);
    const initial = this.src[this.pos++] as number;
    const major = initial & 0xe0;
    if (major === MAJOR_SIMPLE) return this.readSimple(initial, start);
    if (major === MAJOR_TAG) this.fail("tag", "tags are not allowed", start);
    const arg = this.readArgument(initial & 0x1f, start);
    switch (major) {
      case MAJOR_UINT:
        return arg;
      case MAJOR_NEGINT:
        // -1 - arg must stay a safe integer: arg may be at most 2^53 - 2.
        if (arg > Number.MAX_SAFE_INTEGER - 1) this.fail("int-out-of-range", "negative below -(2^53 - 1)", start);
        return -1 - arg;
      case MAJOR_BYTES:
        return this.readBytes(arg);
      case MAJOR_TEXT:
        return this.readText(arg, start);
      case MAJOR_ARRAY:
        return this.readArray(arg, depth, start);
      default:
        return this.readMap(arg, depth, start);
    }
  }

  /** Reads the argument of the item starting at `start`, enforcing the shortest form. */
  readArgument(info: number, start: number): number {
    if (info <= INFO_DIRECT_MAX) return info;
    const src = this.src;
    switch (info) {
      case INFO_U8: {
        this.need(1);
        const v = src[this.pos++] as number;
        if (v <= INFO_DIRECT_MAX) this.fail("non-shortest", "1-byte argument below 24", start);
        return v;
      }
      case INFO_U16: {
        this.need(2);
        const v = ((src[this.pos] as number) << 8) | (src[this.pos + 1] as number);
        this.pos += 2;
        if (v <= 0xff) this.fail("non-shortest", "2-byte argument below 256", start);
        return v;
      }
      case INFO_U32: {
        this.need(4);
        const v = this.readU32();
        if (v <= 0xffff) this.fail("non-shortest", "4-byte argument below 65536", start);
        return v;
      }
      case INFO_U64: {
        this.need(8);
        const hi = this.readU32();
        const lo = this.readU32();
        if (hi === 0) this.fail("non-shortest", "8-byte argument below 2^32", start);
        if (hi > 0x1f_ffff) this.fail("int-out-of-range", "argument above 2^53 - 1", start);
        return hi * TWO_POW_32 + lo;
      }
      case INFO_INDEFINITE:
        return this.fail("indefinite-length", "indefinite lengths are not canonical", start);
      default:
        return this.fail("reserved-info", `reserved additional info ${info}`, start);
    }
  }

  readU32(): number {
    const src = this.src;
    const p = this.pos;
    this.pos = p + 4;
    return (src[p] as number) * 0x100_0000 + (((src[p + 1] as number) << 16) | ((src[p + 2] as number) << 8) | (src[p + 3] as number));
  }

  readSimple(initial: number, start: number): Canonical {
    if (initial === SIMPLE_FALSE) return false;
    if (initial === SIMPLE_TRUE) return true;
    if (initial === SIMPLE_NULL) return null;
    if ((initial & 0x1f) === INFO_INDEFINITE) this.fail("indefinite-length", "break outside an indefinite item", start);
    return this.fail("float-or-simple", `simple value or float 0x${initial.toString(16)} is not allowed`, start);
  }

  readBytes(length: number): Uint8Array {
    this.need(length);
    const from = this.pos;
    this.pos = from + length;
    return this.src.subarray(from, this.pos);
  }

  readText(length: number, start: number): string {
    this.need(length);
    const src = this.src;
    const from = this.pos;
    const to = from + length;
    this.pos = to;
    if (length <= ASCII_FAST_PATH_BYTES_MAX) {
      let s = "";
      let i = from;
      for (; i < to; i++) {
        const c = src[i] as number;
        if (c >= 0x80) break;
        s += String.fromCharCode(c);
      }
      if (i === to) return s;
    }
    try {
      return textDecoder.decode(src.subarray(from, to));
    } catch {
      return this.fail("invalid-utf8", "text string is not well-formed UTF-8", start);
    }
  }

  checkDepth(depth: number, start: number): void {
    if (depth >= CANONICAL_DEPTH_MAX) this.fail("depth-exceeded", `nesting deeper than ${CANONICAL_DEPTH_MAX}`, start);
  }

  readArray(count: number, depth: number, start: number): Canonical[] {
    this.checkDepth(depth, start);
    // Every item takes at least one byte: a count larger than what is left is truncated
    // input, caught here before anything is allocated for it; and a count past what the
    // caller allows is refused before an array of that length is made for it.
    this.need(count);
    if (count > this.itemsLeft) this.fail("items-exceeded", "more items than the largest valid value holds", start);
    const items: Canonical[] = new Array<Canonical>(count);
    for (let i = 0; i < count; i++) items[i] = this.readValue(depth + 1);
    return items;
  }

  readMap(count: number, depth: number, start: number): { [key: string]: Canonical } {
    this.checkDepth(depth, start);
    this.need(count * 2);
    if (count > this.itemsLeft) this.fail("items-exceeded", "more items than the largest valid value holds", start);
    const result: { [key: string]: Canonical } = {};
    let prevKeyStart = -1;
    let prevKeyEnd = -1;
    for (let i = 0; i < count; i++) {
      const keyStart = this.pos;
      const key = this.readKey(keyStart);
      const keyEnd = this.pos;
      if (prevKeyStart >= 0) this.checkKeyOrder(prevKeyStart, prevKeyEnd, keyStart, keyEnd);
      prevKeyStart = keyStart;
      prevKeyEnd = keyEnd;
      setOwn(result, key, this.readValue(depth + 1));
    }
    return result;
  }

  /**
   * Reads a map key. Protocol field names repeat in every frame, so decoded keys are
   * interned: the same string object each time, which the engine has already hashed,
   * makes building the result object several times faster than fresh strings do.
   */
  readKey(start: number): string {
    const initial = this.src[start] as number;
    if ((initial & 0xe0) !== MAJOR_TEXT) this.fail("key-not-text", "map keys must be text strings", start);
    this.pos = start + 1;
    const length = this.readArgument(initial & 0x1f, start);
    this.need(length);
    if (length > INTERNED_KEY_BYTES_MAX) return this.readText(length, start);
    const src = this.src;
    const from = this.pos;
    let hash = FNV_OFFSET;
    for (let i = from; i < from + length; i++) hash = Math.imul(hash ^ (src[i] as number), FNV_PRIME);
    const cached = internedKeys.get(hash);
    if (cached !== undefined && sameBytes(cached.bytes, src, from, length)) {
      this.pos = from + length;
      return cached.key;
    }
    const key = this.readText(length, start);
    if (cached === undefined && internedKeys.size < KEY_CACHE_ENTRIES_MAX) {
      internedKeys.set(hash, { bytes: src.slice(from, from + length), key });
    }
    return key;
  }

  /** Keys must be strictly increasing in the bytewise order of their encodings (§4.2.1). */
  checkKeyOrder(aStart: number, aEnd: number, bStart: number, bEnd: number): void {
    const src = this.src;
    const aLength = aEnd - aStart;
    const bLength = bEnd - bStart;
    const n = Math.min(aLength, bLength);
    let order = 0;
    for (let i = 0; i < n && order === 0; i++) order = (src[aStart + i] as number) - (src[bStart + i] as number);
    if (order === 0) order = aLength - bLength;
    if (order === 0) this.fail("duplicate-key", "map key repeated", bStart);
    if (order > 0) this.fail("keys-unsorted", "map keys not in bytewise order of their encodings", bStart);
  }
}

/** Keys longer than this are decoded afresh each time; protocol field names are short. */
const INTERNED_KEY_BYTES_MAX = 32;
const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;
/** Interned map keys by FNV-1a hash of their UTF-8 bytes; bounded by KEY_CACHE_ENTRIES_MAX. */
const internedKeys = new Map<number, { bytes: Uint8Array; key: string }>();

function sameBytes(a: Uint8Array, src: Uint8Array, from: number, length: number): boolean {
  if (a.length !== length) return false;
  for (let i = 0; i < length; i++) if (a[i] !== src[from + i]) return false;
  return true;
}

/** Plain assignment of "__proto__" would change the prototype instead of adding a key. */
function setOwn(target: { [key: string]: Canonical }, key: string, value: Canonical): void {
  if (key === "__proto__") {
    Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
  } else {
    target[key] = value;
  }
}

/** Convenience for callers that must not throw: the value or the error (`itemsMax` as decodeCanonical's). */
export function tryDecodeCanonical(
  bytes: Uint8Array,
  itemsMax: number = Number.POSITIVE_INFINITY,
): { ok: true; value: Canonical } | { ok: false; error: CanonicalError } {
  try {
    return { ok: true, value: decodeCanonical(bytes, itemsMax) };
  } catch (e) {
    if (e instanceof CanonicalError) return { ok: false, error: e };
    throw e;
  }
}
