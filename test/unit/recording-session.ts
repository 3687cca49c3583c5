/**
 * A client session for subscription tests: its connection takes every frame and records
 * it, EVENTS decoded back from their shared prefix and rest (wire/hot.ts), so a test sees
 * what a client would.
 */
import { toHex } from "../../src/crypto/encoding.ts";
import type { SharedPayloadPrefix } from "../../src/crypto/session.ts";
import type { FramedConn } from "../../src/replica/framed.ts";
import type { ClientSession } from "../../src/replica/server.ts";
import { decodeFrameBody, type Frame } from "../../wire/schemas.ts";

export function recordingSession(id: number, frames: Frame[], remote = "127.0.0.1"): ClientSession {
  const key = new Uint8Array(32).fill(id);
  const conn = {
    remote,
    // It takes every frame at once: nothing waits on it, and there is always room.
    pendingBytes: 0,
    hasRoomFor: () => true,
    send: (frame: Frame) => {
      frames.push(frame);
      return true;
    },
    sendShared: (type: number, shared: SharedPayloadPrefix, rest: Uint8Array) => {
      const decoded = decodeFrameBody(type, Uint8Array.from(Buffer.concat([...shared.parts, rest])));
      if (!decoded.ok) throw new Error(decoded.error.reason);
      frames.push(decoded.frame);
      return true;
    },
    close() {},
  } as unknown as FramedConn;
  return { conn, key, keyHex: toHex(key), id, version: 4 };
}
