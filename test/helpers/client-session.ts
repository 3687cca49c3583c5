/**
 * The client side of a session, for tests that speak the wire by hand (raw sockets,
 * attackers, a fake replica): the HELLO with its ephemeral key, the AUTH and session keys
 * from a HELLO_ACK, and sealing and opening frames after the handshake
 * (wire/PROTOCOL.md 5.2). The replica side is `replicaSessionKeys`.
 */
import { randomBytes } from "node:crypto";
import { DEFAULT_BACKOFF } from "../../src/client/backoff.ts";
import type { ConnectionOptions } from "../../src/client/connection.ts";
import { signDomain } from "../../src/crypto/ed25519.ts";
import type { SigningKey } from "../../src/crypto/keys.ts";
import {
  deriveSessionKeys,
  type EphemeralKeyPair,
  generateEphemeralKeyPair,
  type SessionFraming,
  sessionFraming,
  x25519SharedSecret,
} from "../../src/crypto/session.ts";
import type { RawFrame } from "../../wire/frame.ts";
import { decodeFrameBody, encodeTypedFrame, type Frame, type FrameResult, type Hello, type HelloAck } from "../../wire/schemas.ts";
import { sessionTranscript } from "../../wire/session.ts";
import { DOMAIN_SESSION_INITIATOR, DOMAIN_SESSION_RESPONDER, FrameType, NONCE_BYTES, PROTOCOL_VERSION } from "../../wire/types.ts";

/** A client HELLO and the ephemeral key pair it announces. */
export interface ClientHelloState {
  readonly hello: Hello;
  readonly eph: EphemeralKeyPair;
}

/** `version`: the protocol version the HELLO speaks (an older client's, to see it still served). */
export function rawClientHello(key: SigningKey, version: number = PROTOCOL_VERSION): ClientHelloState {
  const eph = generateEphemeralKeyPair();
  const hello: Hello = {
    v: version,
    role: "client",
    key: key.publicKey,
    nonce: new Uint8Array(randomBytes(NONCE_BYTES)),
    eph: eph.publicKey,
  };
  return { hello, eph };
}

/** The AUTH frame for a HELLO_ACK, and the client's framing for the session that follows it. */
export function rawClientAuth(key: SigningKey, state: ClientHelloState, ack: HelloAck): { auth: Frame; framing: SessionFraming } {
  const transcript = sessionTranscript(state.hello, ack);
  const keys = deriveSessionKeys(x25519SharedSecret(state.eph, ack.eph), transcript, "initiator", "client");
  return {
    auth: { type: FrameType.AUTH, body: { sig: signDomain(key, DOMAIN_SESSION_INITIATOR, transcript) } },
    framing: sessionFraming(keys),
  };
}

/** A fake replica's answer to a client HELLO: the HELLO_ACK to send and its framing for the session. */
export function replicaSessionKeys(
  replicaKey: SigningKey,
  replicaId: number,
  hello: Hello,
): { ack: HelloAck; framing: SessionFraming; transcript: Uint8Array } {
  if (hello.role !== "client") throw new Error("replicaSessionKeys: not a client HELLO");
  const eph = generateEphemeralKeyPair();
  const unsigned = {
    v: PROTOCOL_VERSION,
    replica: replicaId,
    key: replicaKey.publicKey,
    nonce: new Uint8Array(randomBytes(NONCE_BYTES)),
    eph: eph.publicKey,
  } as const;
  const transcript = sessionTranscript(hello, unsigned);
  const keys = deriveSessionKeys(x25519SharedSecret(eph, hello.eph), transcript, "responder", "client");
  const ack: HelloAck = { ...unsigned, sig: signDomain(replicaKey, DOMAIN_SESSION_RESPONDER, transcript) };
  return { ack, framing: sessionFraming(keys), transcript };
}

/** A frame's bytes: sealed when `framing` is given (after the handshake), plain before. */
export function encodeSessionFrame(frame: Frame, framing: SessionFraming | null): Uint8Array {
  const bytes = encodeTypedFrame(frame);
  return framing === null ? bytes : framing.sealer.seal(bytes);
}

/** Decodes a received frame, first checking its MAC when `framing` is given. */
export function decodeSessionFrame(
  raw: RawFrame,
  framing: SessionFraming | null,
): FrameResult | { readonly ok: false; readonly mac: true } {
  if (framing === null) return decodeFrameBody(raw.type, raw.payload);
  const payload = framing.opener.open(raw.type, raw.payload);
  if (payload === null) return { ok: false, mac: true };
  return decodeFrameBody(raw.type, payload);
}

/** A ReplicaConnection's options for a test's one raw session: generous timeouts, frames up to `frameBytesMax`. */
export function testConnectionOptions(frameBytesMax: number): ConnectionOptions {
  return {
    frameBytesMax,
    outboundBytesMax: 1 << 20,
    sessionTimeoutMs: 5_000,
    pingIntervalMs: 5_000,
    idleTimeoutMs: 20_000,
    backoff: DEFAULT_BACKOFF,
    random: Math.random,
    now: Date.now,
  };
}
