/**
 * Test helpers for a replica's client connections on sealed sessions (src/replica/framed.ts,
 * wire/PROTOCOL.md 5.2): a FramedConn over a socket that records its writes and takes only
 * what a test lets it, and the client's side of the stream (cut, open with the real
 * FrameOpener, decode).
 */
import type { Socket } from "bun";
import { toHex } from "../../src/crypto/encoding.ts";
import {
  CLIENT_FRAME_MAC_BYTES,
  deriveSessionKeys,
  type FrameOpener,
  generateEphemeralKeyPair,
  type SessionKeys,
  sessionFraming,
  x25519SharedSecret,
} from "../../src/crypto/session.ts";
import { FramedConn } from "../../src/replica/framed.ts";
import type { ClientSession } from "../../src/replica/server.ts";
import { FrameDecoder } from "../../wire/frame.ts";
import { decodeFrameBody, type Frame } from "../../wire/schemas.ts";
import { FRAME_BYTES_MAX } from "../../wire/types.ts";

/** Both sides' keys of one client session, from a fresh X25519 exchange. */
export function sessionKeys(label: string): { client: SessionKeys; replica: SessionKeys } {
  const shared = x25519SharedSecret(generateEphemeralKeyPair(), generateEphemeralKeyPair().publicKey);
  const transcript = new TextEncoder().encode(label);
  return {
    client: deriveSessionKeys(shared, transcript, "initiator", "client"),
    replica: deriveSessionKeys(shared, transcript, "responder", "client"),
  };
}

export interface Wire {
  readonly session: ClientSession;
  readonly conn: FramedConn;
  /** Every socket write, in order (what the socket took of it). */
  readonly writes: Uint8Array[];
  readonly keys: { client: SessionKeys; replica: SessionKeys };
  /** Whether the socket takes bytes (a reader that stopped takes none). */
  reading: boolean;
  /** At most this many bytes per socket write. */
  takeMax: number;
  /** Bytes the socket takes before it is full (the kernel's buffer); each write uses some up. */
  room: number;
  /** What was written before `writes` was cleared (the SUB_OK frames): the client opens it first. */
  preamble: Uint8Array;
}

/**
 * A replica-side client connection, sealed and coalescing as after AUTH, over a socket
 * that records its writes. `onOvertakes` is what the server counts egress_overtakes_total with.
 */
export function wire(id: number, outboundBytesMax = 16 * 1024 * 1024, onOvertakes: ((frames: number) => void) | null = null): Wire {
  const writes: Uint8Array[] = [];
  let result: Wire | null = null;
  const socket = {
    remoteAddress: "127.0.0.1",
    write: (bytes: Uint8Array) => {
      const self = result as Wire;
      if (!self.reading) return 0;
      const taken = bytes.subarray(0, Math.min(bytes.length, self.takeMax, self.room));
      self.room -= taken.length;
      if (taken.length > 0) writes.push(Uint8Array.from(taken));
      return taken.length;
    },
    end() {},
    flush() {},
  };
  const conn = new FramedConn(socket as unknown as Socket<unknown>, FRAME_BYTES_MAX, outboundBytesMax);
  const keys = sessionKeys(`session ${id}`);
  conn.framing = sessionFraming(keys.replica);
  conn.coalesceWrites(onOvertakes);
  const key = new Uint8Array(32).fill(id);
  result = {
    session: { conn, key, keyHex: toHex(key), id, version: 4 },
    conn,
    writes,
    keys,
    reading: true,
    takeMax: Number.POSITIVE_INFINITY,
    room: Number.POSITIVE_INFINITY,
    preamble: new Uint8Array(0),
  };
  return result;
}

/** What the client does with a byte stream: cut, open, decode; null marks the frame its MAC check refused (the last one read). */
export function receive(opener: FrameOpener, bytes: Uint8Array): (Frame | null)[] {
  const out: (Frame | null)[] = [];
  for (const item of new FrameDecoder({ frameBytesMax: FRAME_BYTES_MAX + CLIENT_FRAME_MAC_BYTES }).push(bytes)) {
    if (!item.ok) throw new Error(item.error.reason);
    const payload = opener.open(item.type, item.payload);
    if (payload === null) {
      out.push(null);
      return out;
    }
    const decoded = decodeFrameBody(item.type, payload);
    if (!decoded.ok) throw new Error(decoded.error.reason);
    out.push(decoded.frame);
  }
  return out;
}

/** The sealed frames of a byte stream, each whole (length field to MAC). */
export function split(bytes: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  let at = 0;
  while (at < bytes.length) {
    const length = new DataView(bytes.buffer, bytes.byteOffset + at).getUint32(0);
    out.push(bytes.subarray(at, at + 4 + length));
    at += 4 + length;
  }
  return out;
}

export const concat = (parts: readonly Uint8Array[]): Uint8Array => Uint8Array.from(Buffer.concat(parts));

/** Lets the microtasks of the current turn run (the coalesced writes). */
export const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
