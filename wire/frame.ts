/**
 * Framing: `u32 big-endian length | u8 frame type | payload`, where length counts the type
 * byte plus the payload. This layer knows nothing about payload contents (decodeFrameBody
 * in schemas.ts does); it only cuts a byte stream into frames, incrementally, with a hard
 * bound on what it buffers.
 *
 * Modelled on the nats.js parser: a pure byte-level state machine that never touches a
 * socket, fed by whatever transport delivers the bytes.
 */
import { assert } from "./assert.ts";
import { FRAME_BYTES_MAX, FRAME_HEADER_BYTES, FRAME_LENGTH_BYTES, type WireError, wireError } from "./types.ts";

/** A frame as cut from the stream: its type byte and its (still encoded) payload. */
export interface RawFrame {
  readonly type: number;
  readonly payload: Uint8Array;
}

/** One item out of FrameDecoder.push: a frame, or an error that replaces it. */
export type DecodeResult = ({ readonly ok: true } & RawFrame) | { readonly ok: false; readonly error: WireError };

/** The largest value a u32 length field can hold. */
const LENGTH_FIELD_MAX = 0xffff_ffff;
const TYPE_BYTE_MAX = 0xff;

/**
 * Encodes one frame. Throws RangeError on a type outside 0..255 or a frame whose length
 * field would exceed `frameBytesMax`: a sender must never emit what receivers refuse.
 */
export function encodeFrame(type: number, payload: Uint8Array, frameBytesMax: number = FRAME_BYTES_MAX): Uint8Array {
  const frame = new Uint8Array(FRAME_HEADER_BYTES + payload.length);
  frame.set(payload, FRAME_HEADER_BYTES);
  writeFrameHeader(frame, type, frameBytesMax);
  return frame;
}

/**
 * Fills in the 5-byte header of `frame`, whose payload already follows it. Throws like
 * encodeFrame. Lets an encoder write the payload in place behind a reserved header.
 */
export function writeFrameHeader(frame: Uint8Array, type: number, frameBytesMax: number = FRAME_BYTES_MAX): void {
  if (!Number.isInteger(type) || type < 0 || type > TYPE_BYTE_MAX) {
    throw new RangeError(`frame type ${type} is not a byte`);
  }
  const length = frame.length - FRAME_LENGTH_BYTES;
  if (length < 1 || length > frameBytesMax) {
    throw new RangeError(`frame of ${length} bytes is outside 1..${frameBytesMax}`);
  }
  writeU32(frame, 0, length);
  frame[FRAME_LENGTH_BYTES] = type;
}

/** A plain Uint8Array view of the same bytes (no copy) when given a subclass such as Buffer. */
export function asPlainBytes(bytes: Uint8Array): Uint8Array {
  if (bytes.constructor === Uint8Array) return bytes;
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function writeU32(target: Uint8Array, at: number, v: number): void {
  target[at] = (v >>> 24) & 0xff;
  target[at + 1] = (v >>> 16) & 0xff;
  target[at + 2] = (v >>> 8) & 0xff;
  target[at + 3] = v & 0xff;
}

function readU32(source: Uint8Array, at: number): number {
  return (
    (source[at] as number) * 0x100_0000 +
    (((source[at + 1] as number) << 16) | ((source[at + 2] as number) << 8) | (source[at + 3] as number))
  );
}

export interface FrameDecoderOptions {
  /** Maximum length field (type byte + payload); default FRAME_BYTES_MAX. */
  readonly frameBytesMax?: number;
  /**
   * Copy every payload out of the pushed chunk. By default a frame that lies entirely
   * inside one pushed chunk is returned as a view of that chunk (zero copy), which is
   * only safe when the caller never reuses or modifies a chunk after pushing it.
   */
  readonly copyPayloads?: boolean;
}

/**
 * Incremental frame decoder. `push` never throws and always consumes the whole chunk.
 * It buffers at most one partial frame (at most frameBytesMax + 4 bytes), in a buffer that
 * grows with what arrived (`reservedBytes`), not with what the length field claims.
 *
 * A length field above the maximum, or equal to zero, is fatal: the stream can no longer
 * be cut into frames, so the decoder is poisoned and answers every later push with a
 * `poisoned` error, discarding the bytes. The caller should send ERROR and close.
 */
/**
 * First buffer for a frame that arrives in pieces; it grows with the bytes that arrive:
 * thousands of connections that each send a length field alone hold little (at 64 KiB,
 * 4,096 of them held 256 MiB for 16 KiB sent).
 */
const PARTIAL_INITIAL_BYTES = 16 * 1024;
/**
 * A growing frame buffer is sized to this many times the bytes received so far: a
 * connection's partly sent frame holds at most twice what it sent (at four times, 128
 * connections that each sent 1.4 MiB of a 4 MiB frame held 512 MiB).
 */
const GROWTH_FACTOR = 2;

export class FrameDecoder {
  readonly frameBytesMax: number;
  private readonly copyPayloads: boolean;
  /** Bytes of a length field split across chunks. */
  private readonly lengthBytes = new Uint8Array(FRAME_LENGTH_BYTES);
  private lengthFilled = 0;
  /**
   * The partial frame (type byte + payload) being assembled, or null between frames. Its
   * buffer grows as bytes arrive, up to the declared `partialLength`: a declared length
   * costs memory only once its bytes come, so four bytes cannot make the decoder reserve
   * a whole frame.
   */
  private partial: Uint8Array | null = null;
  private partialLength = 0;
  private partialFilled = 0;
  private partialCount = 0;
  private poisonReason: string | null = null;

  constructor(options: FrameDecoderOptions = {}) {
    const max = options.frameBytesMax ?? FRAME_BYTES_MAX;
    if (!Number.isInteger(max) || max < 1 || max > LENGTH_FIELD_MAX) {
      throw new RangeError(`frameBytesMax must be an integer in 1..${LENGTH_FIELD_MAX}, got ${max}`);
    }
    this.frameBytesMax = max;
    this.copyPayloads = options.copyPayloads ?? false;
  }

  /** True after a fatal framing error; every later push reports `poisoned`. */
  get poisoned(): boolean {
    return this.poisonReason !== null;
  }

  /**
   * Bytes of an incomplete frame consumed so far, length field included (for metrics and
   * tests of the buffering bound: never more than frameBytesMax + 4).
   */
  get bufferedBytes(): number {
    if (this.partial !== null) return FRAME_LENGTH_BYTES + this.partialFilled;
    return this.lengthFilled;
  }

  /** Bytes the decoder holds allocated for the frame being assembled (grows with what arrived). */
  get reservedBytes(): number {
    return this.partial?.length ?? 0;
  }

  /** Bytes of the frame being assembled that arrived so far (0 when none is). */
  get partialBytes(): number {
    return this.partial === null ? 0 : this.partialFilled;
  }

  /** Frames begun that did not arrive whole in one chunk: tells one frame being assembled from the next. */
  get partialsBegun(): number {
    return this.partialCount;
  }

  /**
   * Feeds bytes; returns the frames (and errors) completed by them, in stream order.
   * A Buffer (what sockets deliver) is viewed as a plain Uint8Array, so payloads and the
   * byte strings decoded from them always have one type.
   */
  push(input: Uint8Array): DecodeResult[] {
    const chunk = asPlainBytes(input);
    const results: DecodeResult[] = [];
    if (this.poisonReason !== null) {
      results.push({ ok: false, error: wireError("poisoned", `stream poisoned earlier: ${this.poisonReason}`, true) });
      return results;
    }
    let at = 0;
    while (at < chunk.length && this.poisonReason === null) {
      if (this.partial !== null) at = this.fillPartial(chunk, at, results);
      else if (this.lengthFilled > 0 || chunk.length - at < FRAME_LENGTH_BYTES) at = this.fillLength(chunk, at, results);
      else at = this.takeWhole(chunk, at, results);
    }
    return results;
  }

  /**
   * Call at end of stream. Returns a `truncated` error if the stream stopped inside a
   * frame, else null. The decoder is reset either way (unless poisoned).
   */
  finish(): WireError | null {
    if (this.poisonReason !== null) return wireError("poisoned", `stream poisoned earlier: ${this.poisonReason}`, true);
    const pending = this.bufferedBytes;
    this.lengthFilled = 0;
    this.partial = null;
    this.partialFilled = 0;
    if (pending === 0) return null;
    return wireError("truncated", `stream ended with ${pending} bytes of an incomplete frame`);
  }

  /** Fast path: the length field is wholly in this chunk; the frame may be too. */
  private takeWhole(chunk: Uint8Array, at: number, results: DecodeResult[]): number {
    const length = readU32(chunk, at);
    if (!this.acceptLength(length, results)) return chunk.length;
    const start = at + FRAME_LENGTH_BYTES;
    const stop = start + length;
    if (stop <= chunk.length) {
      const type = chunk[start] as number;
      const payload = this.copyPayloads ? chunk.slice(start + 1, stop) : chunk.subarray(start + 1, stop);
      results.push({ ok: true, type, payload });
      return stop;
    }
    this.beginPartial(length);
    return start;
  }

  /** Slow path: collect a length field split across chunks. */
  private fillLength(chunk: Uint8Array, at: number, results: DecodeResult[]): number {
    while (this.lengthFilled < FRAME_LENGTH_BYTES && at < chunk.length) {
      this.lengthBytes[this.lengthFilled++] = chunk[at++] as number;
    }
    if (this.lengthFilled < FRAME_LENGTH_BYTES) return at;
    this.lengthFilled = 0;
    const length = readU32(this.lengthBytes, 0);
    if (!this.acceptLength(length, results)) return chunk.length;
    this.beginPartial(length);
    return at;
  }

  private beginPartial(length: number): void {
    assert(length >= 1 && length <= this.frameBytesMax, "frame decoder: a partial frame of a length not accepted");
    this.partialCount++;
    this.partial = new Uint8Array(Math.min(length, PARTIAL_INITIAL_BYTES));
    this.partialLength = length;
    this.partialFilled = 0;
  }

  private fillPartial(chunk: Uint8Array, at: number, results: DecodeResult[]): number {
    const take = Math.min(this.partialLength - this.partialFilled, chunk.length - at);
    let partial = this.partial as Uint8Array;
    if (this.partialFilled + take > partial.length) {
      // Grow to four times what arrived (few copies, and memory stays within a small
      // multiple of what the peer really sent), never past the frame.
      const needed = this.partialFilled + take;
      const grown = new Uint8Array(Math.min(this.partialLength, Math.max(partial.length * 2, needed * GROWTH_FACTOR)));
      grown.set(partial.subarray(0, this.partialFilled));
      partial = grown;
      this.partial = grown;
    }
    assert(this.partialFilled + take <= partial.length, "frame decoder: a partial frame outgrew its buffer");
    partial.set(chunk.subarray(at, at + take), this.partialFilled);
    this.partialFilled += take;
    assert(this.partialFilled <= this.partialLength, "frame decoder: more bytes than the frame's length");
    if (this.partialFilled === this.partialLength) {
      // The assembled buffer belongs to this frame alone, so a view of it is safe to hand out.
      results.push({ ok: true, type: partial[0] as number, payload: partial.subarray(1) });
      this.partial = null;
      this.partialFilled = 0;
    }
    return at + take;
  }

  /** Checks a length field; on a fatal value poisons the decoder and reports why. */
  private acceptLength(length: number, results: DecodeResult[]): boolean {
    if (length === 0) {
      this.poison(results, wireError("empty-frame", "length field is 0: a frame needs at least its type byte", true));
      return false;
    }
    if (length > this.frameBytesMax) {
      this.poison(results, wireError("oversized", `frame of ${length} bytes exceeds the maximum of ${this.frameBytesMax}`, true));
      return false;
    }
    return true;
  }

  private poison(results: DecodeResult[], error: WireError): void {
    this.poisonReason = error.reason;
    this.partial = null;
    this.partialFilled = 0;
    this.lengthFilled = 0;
    results.push({ ok: false, error });
  }
}
