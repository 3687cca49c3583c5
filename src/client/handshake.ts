/**
 * The client side of the session handshake, as pure functions (no socket here, so the
 * checks can be tested one by one):
 *
 *   client  -> HELLO     {v, role: "client", key, nonce, eph}
 *   replica -> HELLO_ACK {v, replica, key, nonce, eph, sig}
 *   client  -> AUTH      {sig}
 *
 * The client accepts the replica only if `replica` is the id it dialled, `key` is the
 * key the cluster file (or the replica group the client follows) lists for that id, and `sig` verifies over the transcript
 * (wire/session.ts sessionTranscript) under DOMAIN_SESSION_RESPONDER. Its own AUTH
 * signs the same transcript under DOMAIN_SESSION_INITIATOR. Both nonces are in the
 * transcript, so neither signature can be replayed into another session.
 *
 * Both sides also send an ephemeral X25519 key; the shared secret and the transcript give
 * the two session keys (src/crypto/session.ts) under which every later frame is MACed
 * (wire/PROTOCOL.md 5.2). The ephemeral keys are in the signed transcript, so a man in
 * the middle who swaps them cannot sign for the swap, and the keys die with the session.
 */
import { randomBytes } from "node:crypto";
import type { Auth, Hello, HelloAck } from "../../wire/schemas.ts";
import { sessionTranscript } from "../../wire/session.ts";
import { DOMAIN_SESSION_INITIATOR, DOMAIN_SESSION_RESPONDER, type ErrorCode, NONCE_BYTES, PROTOCOL_VERSION } from "../../wire/types.ts";
import { signDomain, verifyDomain } from "../crypto/ed25519.ts";
import { asUint8Array, bytesEqual } from "../crypto/encoding.ts";
import { formatPublicKey, type SigningKey } from "../crypto/keys.ts";
import {
  deriveSessionKeys,
  type EphemeralKeyPair,
  generateEphemeralKeyPair,
  SessionCryptoError,
  type SessionKeys,
  x25519SharedSecret,
} from "../crypto/session.ts";

/** Who the client expects at the other end: the cluster file's entry for the replica, or the followed group's. */
export interface ExpectedReplica {
  readonly id: number;
  readonly publicKey: Uint8Array;
  /**
   * Where `publicKey` comes from: the cluster file ("file", and when absent), or the
   * replica group of a later epoch the client follows (membership-follow.ts), for a
   * member dialled as that group lists it.
   */
  readonly keySource?: ExpectedKeySource;
}

/** Where the key the client expects of a replica comes from (ExpectedReplica.keySource). */
export type ExpectedKeySource = "file" | { readonly epoch: number };

/**
 * Why a replica's HELLO_ACK key is not the one expected, naming each key for what it is
 * (the one the replica presented, the one the file or the group lists) and what to do.
 * After `rotate-replica-key` the group lists the new key: a client whose cluster file
 * still lists the old one sees the new key presented, and needs the current file
 * (`fitb cluster export`); a client that followed the group while the replica still runs
 * with its old key sees the old key presented, and the replica needs restarting with the
 * new one.
 */
export function keyMismatchReason(expected: ExpectedReplica, presented: Uint8Array): string {
  const id = expected.id;
  const got = formatPublicKey(presented);
  const listed = formatPublicKey(expected.publicKey);
  const reexport = "re-export it with `fitb cluster export` and give it to the clients";
  const source = expected.keySource ?? "file";
  if (source === "file") {
    return (
      `presented key ${got}, but the cluster file lists ${listed} for replica ${id}: if its key was rotated ` +
      `(rotate-replica-key), the file is out of date: ${reexport}; otherwise this is not replica ${id}'s key`
    );
  }
  return (
    `presented key ${got}, but the replica group of epoch ${source.epoch} (which this client follows) lists ${listed} ` +
    `for replica ${id}: if its key was rotated (rotate-replica-key), restart replica ${id} with the new key file; ` +
    `otherwise this is not replica ${id}'s key`
  );
}

export type HelloAckCheck =
  | { readonly ok: true; readonly auth: Auth; readonly keys: SessionKeys }
  | { readonly ok: false; readonly code: ErrorCode; readonly reason: string };

/** A fresh random nonce for one HELLO. */
export function freshNonce(): Uint8Array {
  return asUint8Array(randomBytes(NONCE_BYTES));
}

/** The HELLO that opens a client session, and the ephemeral key pair it announces. */
export interface ClientHandshake {
  readonly hello: Hello;
  readonly eph: EphemeralKeyPair;
}

/** A fresh HELLO for one connection: a new nonce and a new ephemeral key pair. */
export function clientHello(key: SigningKey, nonce: Uint8Array = freshNonce(), eph = generateEphemeralKeyPair()): ClientHandshake {
  return { hello: { v: PROTOCOL_VERSION, role: "client", key: key.publicKey, nonce, eph: eph.publicKey }, eph };
}

/**
 * Checks the replica's HELLO_ACK against the HELLO sent and the replica expected, and
 * on success returns the AUTH to send. Every failure names what did not match.
 */
export function checkHelloAck(handshake: ClientHandshake, ack: HelloAck, expected: ExpectedReplica, key: SigningKey): HelloAckCheck {
  const { hello } = handshake;
  if (ack.v !== hello.v) {
    return { ok: false, code: "BAD_VERSION", reason: `answered in protocol version ${ack.v}, the HELLO was version ${hello.v}` };
  }
  if (ack.replica !== expected.id) {
    return { ok: false, code: "UNAUTHORIZED", reason: `answered as replica ${ack.replica}, expected replica ${expected.id}` };
  }
  if (!bytesEqual(ack.key, expected.publicKey)) {
    return { ok: false, code: "UNAUTHORIZED", reason: keyMismatchReason(expected, ack.key) };
  }
  const transcript = sessionTranscript(hello, ack);
  if (!verifyDomain(expected.publicKey, DOMAIN_SESSION_RESPONDER, transcript, ack.sig)) {
    return { ok: false, code: "BAD_SIGNATURE", reason: "HELLO_ACK signature does not verify under the listed key" };
  }
  let keys: SessionKeys;
  try {
    keys = deriveSessionKeys(x25519SharedSecret(handshake.eph, ack.eph), transcript, "initiator", "client");
  } catch (error) {
    if (!(error instanceof SessionCryptoError)) throw error;
    return { ok: false, code: "UNAUTHORIZED", reason: error.message };
  }
  return { ok: true, auth: { sig: signDomain(key, DOMAIN_SESSION_INITIATOR, transcript) }, keys };
}
