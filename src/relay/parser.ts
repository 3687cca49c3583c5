/**
 * The relay's line protocol parser (wire/PROTOCOL.md section 11): a pure, incremental,
 * byte-level state machine in the manner of nats.js's parser. `push(bytes)` takes
 * whatever the socket delivered, split anywhere, and returns the commands and the
 * refusals it completed, in stream order. It never touches a socket or a clock, so the
 * same bytes give the same results however they are split.
 *
 * Every bound holds at every byte: a line is kept only up to RELAY_LINE_BYTES_MAX, a
 * PUBB payload only up to the payload bound, and the bytes of an oversized line or an
 * oversized PUBB payload are counted and dropped, never stored. A refused command does
 * not stop the parser: the next line is read as if nothing had happened. A line that is
 * no relay command at all does: it is what another protocol looks like (a browser's
 * `POST / HTTP/1.1` and headers, whose text/plain body could otherwise carry PUB lines
 * that the relay would sign), so it is refused with `closes` and every later byte of the
 * stream is dropped unread.
 */
import { isPattern, patternProblem } from "../client/pattern.ts";
import { EVENT_BYTES_MAX, RELAY_LINE_BYTES_MAX, TAG_BYTES_MAX, TAG_PATTERN, type ErrorCode } from "../../wire/types.ts";

const LF = 0x0a;
const CR = 0x0d;
const SPACE = 0x20;
/** The refusal of a command the end of the input cut short (wire/PROTOCOL.md 11.1). */
export const INPUT_ENDED_INSIDE_COMMAND = "input ended inside a command; not run";
/** Characters of a refused line shown back in a reason: enough to recognise it. */
const SHOWN_CHARS_MAX = 40;
/** The largest number a line may carry (section 11.1): 2^53-1. */
const LINE_NUMBER_MAX = Number.MAX_SAFE_INTEGER;
const NUMBER_PATTERN = /^(?:0|[1-9][0-9]*)$/;

/** A command the relay carries out. PUB and PUBB both become `pub`. */
export type RelayCommand =
  | { readonly t: "pub"; readonly tag: string; readonly payload: Uint8Array; readonly form: "PUB" | "PUBB" }
  | { readonly t: "sub"; readonly tag: string; readonly from: number | null }
  | { readonly t: "unsub"; readonly tag: string }
  | { readonly t: "ping" }
  | { readonly t: "quit" };

/** One result of parsing: a command, or the `-ERR` answer a refused line gets. */
export type RelayInput =
  | { readonly t: "command"; readonly command: RelayCommand }
  | { readonly t: "refused"; readonly code: ErrorCode; readonly reason: string; readonly closes?: true };

export interface RelayParserOptions {
  /** The longest line, terminator included (default and protocol maximum: RELAY_LINE_BYTES_MAX). */
  readonly lineBytesMax?: number;
  /** The largest PUBB payload (default and protocol maximum: EVENT_BYTES_MAX). */
  readonly payloadBytesMax?: number;
}

type ParserState =
  /** Reading a command line. */
  | { readonly t: "line" }
  /** Dropping the rest of an oversized line, up to its LF. */
  | { readonly t: "discard-line" }
  /** Collecting the `need` payload bytes of a PUBB. */
  | { readonly t: "payload"; readonly tag: string; readonly need: number }
  /** Dropping the `left` payload bytes of a refused PUBB. */
  | { readonly t: "discard-payload"; left: number }
  /** A line was not a relay command: nothing more of this stream is read. */
  | { readonly t: "closed" };

export class RelayLineParser {
  readonly lineBytesMax: number;
  readonly payloadBytesMax: number;
  private state: ParserState = { t: "line" };
  /** Bytes of the line or payload being collected, in the pieces they came in. */
  private parts: Uint8Array[] = [];
  private partBytes = 0;

  constructor(options: RelayParserOptions = {}) {
    this.lineBytesMax = boundOption("lineBytesMax", options.lineBytesMax ?? RELAY_LINE_BYTES_MAX, RELAY_LINE_BYTES_MAX);
    this.payloadBytesMax = boundOption("payloadBytesMax", options.payloadBytesMax ?? EVENT_BYTES_MAX, EVENT_BYTES_MAX);
  }

  /** Bytes held for an unfinished line or payload (bounded by the two limits). */
  get bufferedBytes(): number {
    return this.partBytes;
  }

  /** Whether the stream stopped inside a line or a PUBB payload. */
  get inMiddle(): boolean {
    return (this.state.t !== "line" && this.state.t !== "closed") || this.partBytes > 0;
  }

  /** Whether a line that was no relay command ended the stream. */
  get closed(): boolean {
    return this.state.t === "closed";
  }

  /** Parses the next bytes of the stream; returns what they completed, in order. */
  push(chunk: Uint8Array): RelayInput[] {
    const out: RelayInput[] = [];
    let at = 0;
    while (at < chunk.byteLength) {
      switch (this.state.t) {
        case "line":
          at = this.readLine(chunk, at, out);
          break;
        case "discard-line":
          at = this.discardLine(chunk, at);
          break;
        case "payload":
          at = this.readPayload(this.state, chunk, at, out);
          break;
        case "discard-payload":
          at = this.discardPayload(this.state, chunk, at);
          break;
        case "closed":
          return out;
        default: {
          const unreachable: never = this.state;
          throw new Error(`unknown parser state ${String(unreachable)}`);
        }
      }
    }
    return out;
  }

  /**
   * The stream ended. An unfinished line or PUBB payload is not run: it may be a command
   * cut short, and publishing a truncated event would be worse than publishing none. It is
   * refused, so that `printf 'PUB t x' | nc -N` says why nothing happened; the rest of an
   * oversized line or payload, already refused, and a line that is no more than a CR (an
   * empty line) get nothing.
   */
  finish(): RelayInput[] {
    const state = this.state;
    if (state.t === "closed") return [];
    const unfinished = state.t === "payload" || (state.t === "line" && !this.partIsEmptyLine());
    this.state = { t: "line" };
    this.clearParts();
    return unfinished ? [refused("BAD_REQUEST", INPUT_ENDED_INSIDE_COMMAND)] : [];
  }

  /** Whether the unfinished line would be an empty line: nothing, or a lone CR. */
  private partIsEmptyLine(): boolean {
    return this.partBytes === 0 || (this.partBytes === 1 && this.parts[0]?.[0] === CR);
  }

  // -------------------------------------------------------------------------------------
  // States
  // -------------------------------------------------------------------------------------

  private readLine(chunk: Uint8Array, at: number, out: RelayInput[]): number {
    const lf = chunk.indexOf(LF, at);
    const end = lf < 0 ? chunk.byteLength : lf;
    // The LF counts toward the bound: a line that cannot end within it is refused as
    // soon as that is certain, without waiting for (or storing) the rest.
    if (this.partBytes + (end - at) + 1 > this.lineBytesMax) {
      this.clearParts();
      out.push(
        refused(
          "TOO_LARGE",
          `line exceeds ${this.lineBytesMax} bytes (the command and tag count too: PUBB TAG N then N bytes carries an event of up to event_bytes_max)`,
        ),
      );
      if (lf < 0) {
        this.state = { t: "discard-line" };
        return chunk.byteLength;
      }
      return lf + 1;
    }
    if (lf < 0) {
      this.keep(chunk.subarray(at));
      return chunk.byteLength;
    }
    const line = this.takeParts(chunk.subarray(at, lf));
    this.onLine(line, out);
    return lf + 1;
  }

  private discardLine(chunk: Uint8Array, at: number): number {
    const lf = chunk.indexOf(LF, at);
    if (lf < 0) return chunk.byteLength;
    this.state = { t: "line" };
    return lf + 1;
  }

  private readPayload(state: { tag: string; need: number }, chunk: Uint8Array, at: number, out: RelayInput[]): number {
    const take = Math.min(state.need - this.partBytes, chunk.byteLength - at);
    const piece = chunk.subarray(at, at + take);
    if (this.partBytes + take < state.need) {
      this.keep(piece);
      return at + take;
    }
    const payload = this.takeParts(piece);
    this.state = { t: "line" };
    out.push(command({ t: "pub", tag: state.tag, payload: payload.slice(), form: "PUBB" }));
    return at + take;
  }

  private discardPayload(state: { left: number }, chunk: Uint8Array, at: number): number {
    const take = Math.min(state.left, chunk.byteLength - at);
    state.left -= take;
    if (state.left === 0) this.state = { t: "line" };
    return at + take;
  }

  // -------------------------------------------------------------------------------------
  // Lines
  // -------------------------------------------------------------------------------------

  /** A complete line without its LF. */
  private onLine(raw: Uint8Array, out: RelayInput[]): void {
    const line = raw.byteLength > 0 && raw[raw.byteLength - 1] === CR ? raw.subarray(0, raw.byteLength - 1) : raw;
    if (line.byteLength === 0) return;
    const space = line.indexOf(SPACE);
    const word = asciiUpper(space < 0 ? line : line.subarray(0, space));
    const rest = space < 0 ? null : line.subarray(space + 1);
    switch (word) {
      case "PUB":
        out.push(parsePub(rest));
        return;
      case "PUBB":
        this.onPubb(rest, out);
        return;
      case "SUB":
        out.push(parseSub(rest));
        return;
      case "UNSUB":
        out.push(parseUnsub(rest));
        return;
      case "PING":
        out.push(rest === null ? command({ t: "ping" }) : refused("BAD_REQUEST", "PING takes no arguments"));
        return;
      case "QUIT":
        out.push(rest === null ? command({ t: "quit" }) : refused("BAD_REQUEST", "QUIT takes no arguments"));
        return;
      default:
        this.closeWith(
          `unknown command ${shown(space < 0 ? line : line.subarray(0, space))}; expected PUB, PUBB, SUB, UNSUB, PING or QUIT; closing`,
          out,
        );
    }
  }

  /**
   * `PUBB <tag> <n>`. Once `n` is readable the n bytes that follow belong to this
   * command whatever else is wrong with it, so they are consumed (and dropped when the
   * command is refused): otherwise payload bytes would be read as commands.
   */
  private onPubb(rest: Uint8Array | null, out: RelayInput[]): void {
    const fields = splitFields(rest);
    if (fields === null || fields.length !== 2) {
      this.closeOnPubb("usage: PUBB <tag> <n>, then n bytes", out);
      return;
    }
    const [tagBytes, countBytes] = fields as [Uint8Array, Uint8Array];
    const count = parseNumber(countBytes);
    if (count === null) {
      this.closeOnPubb(`PUBB: ${shown(countBytes)} is not a byte count`, out);
      return;
    }
    if (count > this.payloadBytesMax) {
      out.push(refused("TOO_LARGE", `payload of ${count} bytes; at most ${this.payloadBytesMax}`));
      this.skipPayload(count);
      return;
    }
    const tagError = tagProblem(tagBytes);
    if (tagError !== null) {
      out.push(refused("BAD_REQUEST", tagError));
      this.skipPayload(count);
      return;
    }
    const tag = latin1(tagBytes);
    if (count === 0) {
      out.push(command({ t: "pub", tag, payload: new Uint8Array(0), form: "PUBB" }));
      return;
    }
    this.state = { t: "payload", tag, need: count };
  }

  /**
   * A PUBB whose `n` cannot be read: where its payload ends is unknown, and reading the
   * bytes that follow as lines would run a payload as commands (`PUB ...` inside it), so
   * the stream ends here, as for an unknown command.
   */
  private closeOnPubb(why: string, out: RelayInput[]): void {
    this.closeWith(`${why}; the bytes after it cannot be told from commands: closing`, out);
  }

  /** Refuses with BAD_REQUEST and ends the stream: nothing after this is read. */
  private closeWith(reason: string, out: RelayInput[]): void {
    this.clearParts();
    this.state = { t: "closed" };
    out.push({ t: "refused", code: "BAD_REQUEST", reason, closes: true });
  }

  private skipPayload(count: number): void {
    if (count > 0) this.state = { t: "discard-payload", left: count };
  }

  // -------------------------------------------------------------------------------------
  // Buffer of the line or payload being collected
  // -------------------------------------------------------------------------------------

  private keep(piece: Uint8Array): void {
    if (piece.byteLength === 0) return;
    // A copy: the caller may reuse the chunk's memory once push returns.
    this.parts.push(piece.slice());
    this.partBytes += piece.byteLength;
  }

  /** The collected bytes followed by `last`, as one array; the buffer is emptied. */
  private takeParts(last: Uint8Array): Uint8Array {
    if (this.parts.length === 0) return last;
    const whole = new Uint8Array(this.partBytes + last.byteLength);
    let offset = 0;
    for (const part of this.parts) {
      whole.set(part, offset);
      offset += part.byteLength;
    }
    whole.set(last, offset);
    this.clearParts();
    return whole;
  }

  private clearParts(): void {
    this.parts = [];
    this.partBytes = 0;
  }
}

// ---------------------------------------------------------------------------------------
// One function per command word
// ---------------------------------------------------------------------------------------

/** `PUB <tag> <payload>`: the payload is every byte after the space that follows the tag. */
function parsePub(rest: Uint8Array | null): RelayInput {
  if (rest === null) return refused("BAD_REQUEST", "usage: PUB <tag> <payload>");
  const space = rest.indexOf(SPACE);
  const tagBytes = space < 0 ? rest : rest.subarray(0, space);
  const tagError = tagProblem(tagBytes);
  if (tagError !== null) return refused("BAD_REQUEST", tagError);
  const payload = space < 0 ? new Uint8Array(0) : rest.slice(space + 1);
  return command({ t: "pub", tag: latin1(tagBytes), payload, form: "PUB" });
}

/** `SUB <tag> [<from>]`; the tag may be a pattern (`net.*`, `net.>`). */
function parseSub(rest: Uint8Array | null): RelayInput {
  const fields = splitFields(rest);
  if (fields === null || fields.length > 2) return refused("BAD_REQUEST", "usage: SUB <tag> [<from-seq>]");
  const [tagBytes, fromBytes] = fields as [Uint8Array, Uint8Array | undefined];
  const tagError = tagOrPatternProblem(tagBytes);
  if (tagError !== null) return refused("BAD_REQUEST", tagError);
  if (fromBytes === undefined) return command({ t: "sub", tag: latin1(tagBytes), from: null });
  const from = parseNumber(fromBytes);
  if (from === null) return refused("BAD_REQUEST", `SUB: ${shown(fromBytes)} is not a sequence number`);
  return command({ t: "sub", tag: latin1(tagBytes), from });
}

/** `UNSUB <tag>`. */
function parseUnsub(rest: Uint8Array | null): RelayInput {
  const fields = splitFields(rest);
  if (fields === null || fields.length !== 1) return refused("BAD_REQUEST", "usage: UNSUB <tag>");
  const tagBytes = fields[0] as Uint8Array;
  const tagError = tagOrPatternProblem(tagBytes);
  if (tagError !== null) return refused("BAD_REQUEST", tagError);
  return command({ t: "unsub", tag: latin1(tagBytes) });
}

// ---------------------------------------------------------------------------------------
// Fields
// ---------------------------------------------------------------------------------------

/**
 * The fields after the command word, separated by exactly one space. Null when there
 * are none, or when one is empty (two spaces in a row, or a trailing space), since the
 * protocol has no empty fields outside a PUB payload.
 */
function splitFields(rest: Uint8Array | null): Uint8Array[] | null {
  if (rest === null) return null;
  const fields: Uint8Array[] = [];
  let start = 0;
  for (let space = rest.indexOf(SPACE); space >= 0; space = rest.indexOf(SPACE, start)) {
    fields.push(rest.subarray(start, space));
    start = space + 1;
  }
  fields.push(rest.subarray(start));
  return fields.some((field) => field.byteLength === 0) ? null : fields;
}

/** A decimal number: digits only, no sign, no leading zero (but `0`), at most 2^53-1. */
function parseNumber(bytes: Uint8Array): number | null {
  // 2^53-1 has sixteen digits, so a longer string is refused before it is converted.
  if (bytes.byteLength === 0 || bytes.byteLength > 16) return null;
  const text = latin1(bytes);
  if (!NUMBER_PATTERN.test(text)) return null;
  const value = Number(text);
  return value <= LINE_NUMBER_MAX ? value : null;
}

/** Why the bytes are not a tag (section 2.1), or null. */
function tagProblem(bytes: Uint8Array): string | null {
  if (bytes.byteLength === 0) return "a tag must not be empty";
  if (bytes.byteLength > TAG_BYTES_MAX) return `tag is ${bytes.byteLength} bytes; at most ${TAG_BYTES_MAX}`;
  if (!TAG_PATTERN.test(latin1(bytes))) return `tag ${shown(bytes)} is not dot-separated segments of [a-z0-9_-]+`;
  return null;
}

/** A tag, or a wildcard pattern of tags (SUB and UNSUB only). */
function tagOrPatternProblem(bytes: Uint8Array): string | null {
  const text = latin1(bytes);
  return isPattern(text) ? patternProblem(text) : tagProblem(bytes);
}

/** One byte per character: exact for ASCII, and never throws on other bytes. */
function latin1(bytes: Uint8Array): string {
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte);
  return text;
}

/** Upper-cased ASCII, or "" when the bytes hold anything else (no command matches ""). */
function asciiUpper(bytes: Uint8Array): string {
  if (bytes.byteLength > SHOWN_CHARS_MAX) return "";
  for (const byte of bytes) if (byte >= 0x80) return "";
  return latin1(bytes).toUpperCase();
}

/** A printable, quoted, shortened rendering of untrusted bytes, for a reason text. */
function shown(bytes: Uint8Array): string {
  let text = "";
  for (const byte of bytes.subarray(0, SHOWN_CHARS_MAX))
    text += byte >= 0x20 && byte < 0x7f && byte !== 0x22 && byte !== 0x5c ? String.fromCharCode(byte) : "?";
  return `"${text}${bytes.byteLength > SHOWN_CHARS_MAX ? "..." : ""}"`;
}

function command(command: RelayCommand): RelayInput {
  return { t: "command", command };
}

function refused(code: ErrorCode, reason: string): RelayInput {
  return { t: "refused", code, reason };
}

function boundOption(name: string, value: number, max: number): number {
  if (!Number.isSafeInteger(value) || value < 1 || value > max)
    throw new RangeError(`${name} must be an integer in 1..${max}, got ${value}`);
  return value;
}
