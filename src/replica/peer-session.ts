/**
 * The crypto of one authenticated peer session (DESIGN §3 "Peer channels"), following
 * wire/PROTOCOL.md: both static keys sign the handshake transcript, an X25519 exchange of
 * ephemeral keys gives a shared secret, HKDF-SHA-256 (salt = sha256(transcript)) derives
 * one MAC key per direction, and every PEER frame carries HMAC-SHA-256 over
 * peerMacInput(type, seq, msg) with a strictly increasing seq.
 */
import { createHmac, hkdfSync, timingSafeEqual } from "node:crypto";
import { sha256 } from "../crypto/hash.ts";
import { DOMAIN_PEER_KEY_I2R, DOMAIN_PEER_KEY_R2I, FrameType, MAC_BYTES } from "../../wire/types.ts";
import { peerMacInput } from "../../wire/session.ts";

export const PEER_KEY_BYTES = 32;

export interface PeerDirectionKeys {
  /** Key of the frames this side sends. */
  readonly send: Uint8Array;
  /** Key of the frames this side receives. */
  readonly receive: Uint8Array;
}

/** Derives the two directional MAC keys; `initiator` tells which side we are. */
export function derivePeerKeys(sharedSecret: Uint8Array, transcript: Uint8Array, initiator: boolean): PeerDirectionKeys {
  const salt = sha256(transcript);
  const i2r = new Uint8Array(hkdfSync("sha256", sharedSecret, salt, DOMAIN_PEER_KEY_I2R, PEER_KEY_BYTES));
  const r2i = new Uint8Array(hkdfSync("sha256", sharedSecret, salt, DOMAIN_PEER_KEY_R2I, PEER_KEY_BYTES));
  return initiator ? { send: i2r, receive: r2i } : { send: r2i, receive: i2r };
}

export function peerMac(key: Uint8Array, seq: number, msg: Uint8Array): Uint8Array {
  return new Uint8Array(createHmac("sha256", key).update(peerMacInput(FrameType.PEER, seq, msg)).digest());
}

export function checkPeerMac(key: Uint8Array, seq: number, msg: Uint8Array, mac: Uint8Array): boolean {
  if (mac.length !== MAC_BYTES) return false;
  return timingSafeEqual(peerMac(key, seq, msg), mac);
}
