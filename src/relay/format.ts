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
 * control byte other than TAB and no DEL. Such a line is safe to print on a terminal and
 * to read with `read -r` in a shell, and the payload cannot contain the LF that ends it.
 */
export function isLineSafe(payload: Uint8Array): boolean {
  let ascii = true;
  for (const byte of payload) {
    if (byte < FIRST_PRINTABLE && byte !== TAB) return false;
    if (byte === DEL) return false;
    if (byte >= FIRST_NON_ASCII) ascii = false;
  }
  return ascii || isUtf8(payload);
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

/**
 * A reason on one line: line breaks and other control characters become spaces, and
 * the text is cut to REASON_BYTES_MAX bytes of UTF-8 (at a character boundary).
 */
export function oneLineReason(reason: string): string {
  // C0 controls and DEL would break the line, or do things to the reader's terminal.
  // biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
  const flat = reason.replace(/[\u0000-\u001f\u007f]+/g, " ").trim();
  return clipUtf8(flat, REASON_BYTES_MAX);
}
