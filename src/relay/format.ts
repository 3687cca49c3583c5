/**
 * The lines the relay writes (wire/PROTOCOL.md sections 11.2 and 11.3): answers, event
 * lines and subscription ends. Pure functions from values to bytes, so the exact form of
 * every line is tested without a socket.
 */
import { isUtf8 } from "node:buffer";
import { clipUtf8, REASON_BYTES_MAX, type ErrorCode, type SubEndCode } from "../../wire/types.ts";

const encoder = new TextEncoder();
const LF = 0x0a;
const TAB = 0x09;
const FIRST_PRINTABLE = 0x20;
const DEL = 0x7f;
const FIRST_NON_ASCII = 0x80;
/** C1 controls, U+0080-U+009F, are 0xC2 0x80-0x9F in UTF-8. */
const C1_LEAD = 0xc2;
const C1_LAST = 0x9f;
/** U+2000-U+207F are 0xE2 0x80-0x81 then one byte; the line and bidi controls are among them. */
const GENERAL_PUNCTUATION_LEAD = 0xe2;
/** U+061C ARABIC LETTER MARK, a bidi control: 0xD8 0x9C. */
const ALM_LEAD = 0xd8;
const ALM_LAST = 0x9c;

export const PONG_LINE = "PONG\n";
export const OK_LINE = "+OK\n";

/** `+OK <tag> <seq>`: a publish acknowledged by its CLASS's quorum. */
export function ackLine(tag: string, seq: number): string {
  return `+OK ${tag} ${seq}\n`;
}

/** `-ERR <code> <reason>`, the reason on one line and within REASON_BYTES_MAX. */
export function errLine(code: ErrorCode, reason: string): string {
  return `-ERR ${code} ${oneLineReason(reason)}\n`;
}

/** `END <tag> <code> <reason>`: a subscription ended without being asked to. */
export function endLine(tag: string, code: SubEndCode, reason: string): string {
  return `END ${tag} ${code} ${oneLineReason(reason)}\n`;
}

/**
 * Whether a payload can travel as the rest of an EVENT line: well-formed UTF-8 with no
 * control character other than TAB: no C0 control, no DEL, no C1 control (U+0080-U+009F:
 * NEL ends a line for some readers, CSI drives a terminal), no line or paragraph separator
 * (U+2028, U+2029: Python's splitlines() and JavaScript's line terminators end a line
 * there) and no bidi control (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069, which
 * make a terminal show text in another order than it has). Such a line is safe to print on
 * a terminal and to read line by line in a shell or a script, and the payload cannot
 * contain what would end it or make part of it look like another line; any other payload
 * goes as EVENTB.
 */
export function isLineSafe(payload: Uint8Array): boolean {
  let ascii = true;
  for (const byte of payload) {
    if (byte < FIRST_PRINTABLE && byte !== TAB) return false;
    if (byte === DEL) return false;
    if (byte >= FIRST_NON_ASCII) ascii = false;
  }
  return ascii || (isUtf8(payload) && !hasUnsafeCharacter(payload));
}

/**
 * Whether well-formed UTF-8 holds a C1 control, a line or paragraph separator or a bidi
 * control. Read on the bytes: in UTF-8 a lead byte never occurs inside another character.
 */
function hasUnsafeCharacter(utf8: Uint8Array): boolean {
  for (let at = 0; at < utf8.byteLength; at++) {
    const lead = utf8[at] as number;
    if (lead === C1_LEAD && (utf8[at + 1] as number) <= C1_LAST) return true;
    if (lead === ALM_LEAD && utf8[at + 1] === ALM_LAST) return true;
    if (lead === GENERAL_PUNCTUATION_LEAD && isUnsafePunctuation(utf8[at + 1] as number, utf8[at + 2] as number)) return true;
  }
  return false;
}

/** U+200E-U+200F, U+2028-U+202E and U+2066-U+2069, as the two bytes after 0xE2. */
function isUnsafePunctuation(second: number, third: number): boolean {
  if (second === 0x80) return third === 0x8e || third === 0x8f || (third >= 0xa8 && third <= 0xae);
  if (second === 0x81) return third >= 0xa6 && third <= 0xa9;
  return false;
}

/** What an event line says besides the payload. */
export interface EventHeader {
  readonly tag: string;
  readonly seq: number;
  /** `ed25519:<base64url>`. */
  readonly publisher: string;
  readonly tsMs: number;
}

/**
 * `EVENT <tag> <seq> <publisher> <ts-ms> <payload>\n` for a line-safe payload, else
 * `EVENTB <tag> <seq> <publisher> <ts-ms> <n>\n<n bytes>\n`. No escaping in either form:
 * the subscriber gets the payload byte for byte.
 */
export function eventBytes(header: EventHeader, payload: Uint8Array): Uint8Array {
  const fields = `${header.tag} ${header.seq} ${header.publisher} ${header.tsMs}`;
  const binary = !isLineSafe(payload);
  const head = encoder.encode(binary ? `EVENTB ${fields} ${payload.byteLength}\n` : `EVENT ${fields} `);
  const out = new Uint8Array(head.byteLength + payload.byteLength + 1);
  out.set(head, 0);
  out.set(payload, head.byteLength);
  out[out.byteLength - 1] = LF;
  return out;
}

/** What oneLineReason replaces with a space: the characters isLineSafe keeps out of an EVENT line, TAB too. */
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
const NOT_ONE_LINE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]+/g;

/**
 * A reason on one line: line breaks and other control characters become spaces, and
 * the text is cut to REASON_BYTES_MAX bytes of UTF-8 (at a character boundary).
 */
export function oneLineReason(reason: string): string {
  // Control characters (C0, DEL, C1), line and paragraph separators and bidi controls would
  // break the line, or do things to the reader's terminal (isLineSafe); a reason may quote
  // text from a replica.
  const flat = reason.replace(NOT_ONE_LINE, " ").trim();
  return clipUtf8(flat, REASON_BYTES_MAX);
}
