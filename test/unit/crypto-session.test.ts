import { describe, expect, test } from "bun:test";
import { hkdf } from "@noble/hashes/hkdf.js";
import { hmac } from "@noble/hashes/hmac.js";
import { sha256 as nobleSha256 } from "@noble/hashes/sha2.js";
import { concatBytes, fromHex } from "../../src/crypto/encoding.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import {
  checkMac,
  deriveSessionKeys,
  generateEphemeralKeyPair,
  HKDF_INFO_INITIATOR_TO_RESPONDER,
  HKDF_INFO_RESPONDER_TO_INITIATOR,
  MAC_BYTES,
  macFrame,
  ReplayGuard,
  SendSequence,
  SEQ_MAX,
  SessionCryptoError,
  signHandshake,
  transcriptHash,
  verifyHandshake,
  x25519SharedSecret,
} from "../../src/crypto/session.ts";

const utf8 = (text: string) => new TextEncoder().encode(text);
const TRANSCRIPT = utf8("transcript bytes as wire/PROTOCOL.md lays them out");

describe("X25519 key agreement", () => {
  test("both sides reach the same 32-byte secret; a third party does not", () => {
    const initiator = generateEphemeralKeyPair();
    const responder = generateEphemeralKeyPair();
    const stranger = generateEphemeralKeyPair();
    expect(initiator.publicKey.byteLength).toBe(32);
    const secretA = x25519SharedSecret(initiator, responder.publicKey);
    const secretB = x25519SharedSecret(responder, initiator.publicKey);
    expect(secretA.byteLength).toBe(32);
    expect(secretA).toEqual(secretB);
    expect(x25519SharedSecret(stranger, responder.publicKey)).not.toEqual(secretA);
  });

  test("rejects peer keys of the wrong length", () => {
    expect(() => x25519SharedSecret(generateEphemeralKeyPair(), new Uint8Array(31))).toThrow(SessionCryptoError);
  });

  // RFC 7748 §6.1 requires rejecting keys whose shared secret is all zeros: these are low-order points.
  const lowOrderPoints = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
  ];
  for (const point of lowOrderPoints) {
    test(`rejects the low-order peer key ${point.slice(0, 8)}...`, () => {
      expect(() => x25519SharedSecret(generateEphemeralKeyPair(), fromHex(point))).toThrow(SessionCryptoError);
    });
  }
});

describe("session key derivation", () => {
  const secret = Uint8Array.from({ length: 32 }, (_, i) => i + 1);

  test("is HKDF-SHA-256 salted with the transcript hash, one key per direction", () => {
    const salt = nobleSha256(TRANSCRIPT);
    const initiatorToResponder = hkdf(nobleSha256, secret, salt, utf8(HKDF_INFO_INITIATOR_TO_RESPONDER), 32);
    const responderToInitiator = hkdf(nobleSha256, secret, salt, utf8(HKDF_INFO_RESPONDER_TO_INITIATOR), 32);
    expect(deriveSessionKeys(secret, TRANSCRIPT, "initiator")).toEqual({ sendKey: initiatorToResponder, receiveKey: responderToInitiator });
    expect(deriveSessionKeys(secret, TRANSCRIPT, "responder")).toEqual({ sendKey: responderToInitiator, receiveKey: initiatorToResponder });
    expect(initiatorToResponder).not.toEqual(responderToInitiator);
  });

  test("a different transcript gives different keys", () => {
    const a = deriveSessionKeys(secret, TRANSCRIPT, "initiator");
    const b = deriveSessionKeys(secret, concatBytes(TRANSCRIPT, Uint8Array.from([0])), "initiator");
    expect(a.sendKey).not.toEqual(b.sendKey);
  });

  test("refuses a shared secret of the wrong length", () => {
    expect(() => deriveSessionKeys(new Uint8Array(16), TRANSCRIPT, "initiator")).toThrow(SessionCryptoError);
  });

  test("end to end: two parties derive matching keys from a real exchange", () => {
    const initiator = generateEphemeralKeyPair();
    const responder = generateEphemeralKeyPair();
    const initiatorKeys = deriveSessionKeys(x25519SharedSecret(initiator, responder.publicKey), TRANSCRIPT, "initiator");
    const responderKeys = deriveSessionKeys(x25519SharedSecret(responder, initiator.publicKey), TRANSCRIPT, "responder");
    expect(initiatorKeys.sendKey).toEqual(responderKeys.receiveKey);
    expect(initiatorKeys.receiveKey).toEqual(responderKeys.sendKey);
    const frame = utf8("frame");
    expect(checkMac(responderKeys.receiveKey, 0, frame, macFrame(initiatorKeys.sendKey, 0, frame))).toBe(true);
  });
});

describe("handshake signatures", () => {
  const key = SigningKey.generate();

  test("verify for the signer's role and transcript only", () => {
    const signature = signHandshake(key, "initiator", TRANSCRIPT);
    expect(verifyHandshake(key.publicKey, "initiator", TRANSCRIPT, signature)).toBe(true);
    // A reflected signature (claimed for the other role) must fail.
    expect(verifyHandshake(key.publicKey, "responder", TRANSCRIPT, signature)).toBe(false);
    expect(verifyHandshake(key.publicKey, "initiator", utf8("other transcript"), signature)).toBe(false);
    expect(verifyHandshake(SigningKey.generate().publicKey, "initiator", TRANSCRIPT, signature)).toBe(false);
  });

  test("the transcript hash is SHA-256", () => {
    expect(transcriptHash(TRANSCRIPT)).toEqual(nobleSha256(TRANSCRIPT));
  });
});

describe("frame MACs", () => {
  const key = Uint8Array.from({ length: 32 }, (_, i) => 255 - i);
  const frame = utf8("a frame body");

  test("are HMAC-SHA-256 over u64be(seq) || bytes", () => {
    const seq = 0x0102030405;
    const expected = hmac(nobleSha256, key, concatBytes(fromHex("0000000102030405"), frame));
    expect(macFrame(key, seq, frame)).toEqual(expected);
    expect(macFrame(key, seq, frame).byteLength).toBe(MAC_BYTES);
  });

  test("check passes only for the same key, seq and bytes", () => {
    const mac = macFrame(key, 7, frame);
    expect(checkMac(key, 7, frame, mac)).toBe(true);
    expect(checkMac(key, 8, frame, mac)).toBe(false);
    expect(checkMac(key, 7, utf8("a frame bodY"), mac)).toBe(false);
    expect(checkMac(Uint8Array.from(key, (byte) => byte ^ 1), 7, frame, mac)).toBe(false);
    const flipped = Uint8Array.from(mac);
    flipped[31]! ^= 0x80;
    expect(checkMac(key, 7, frame, flipped)).toBe(false);
  });

  test("malformed MACs and seqs fail without throwing", () => {
    const mac = macFrame(key, 7, frame);
    expect(checkMac(key, 7, frame, mac.subarray(0, 16))).toBe(false);
    expect(checkMac(key, -1, frame, mac)).toBe(false);
    expect(checkMac(key, 1.5, frame, mac)).toBe(false);
    expect(checkMac(key, SEQ_MAX + 1, frame, mac)).toBe(false);
    expect(() => macFrame(key, -1, frame)).toThrow(RangeError);
  });
});

describe("ReplayGuard", () => {
  test("contiguous mode (the default) accepts exactly firstSeq, firstSeq+1, ...", () => {
    const guard = new ReplayGuard();
    expect(guard.accept(0)).toBe(true);
    expect(guard.accept(1)).toBe(true);
    expect(guard.accept(1)).toBe(false); // replay
    expect(guard.accept(0)).toBe(false); // older replay
    expect(guard.accept(3)).toBe(false); // gap: a frame was removed
    expect(guard.accept(2)).toBe(true); // a refused seq is not recorded
    expect(guard.nextSeq).toBe(3);
  });

  test("increasing mode accepts gaps but never a seq at or below the last", () => {
    const guard = new ReplayGuard({ contiguous: false, firstSeq: 1 });
    expect(guard.accept(0)).toBe(false);
    expect(guard.accept(5)).toBe(true);
    expect(guard.accept(5)).toBe(false);
    expect(guard.accept(4)).toBe(false);
    expect(guard.accept(9)).toBe(true);
  });

  test("rejects invalid seqs and stops after SEQ_MAX", () => {
    const guard = new ReplayGuard({ contiguous: false });
    expect(guard.accept(-1)).toBe(false);
    expect(guard.accept(2.5)).toBe(false);
    expect(guard.accept(Number.NaN)).toBe(false);
    expect(guard.accept(SEQ_MAX)).toBe(true);
    expect(guard.accept(SEQ_MAX + 1)).toBe(false);
    expect(() => new ReplayGuard({ firstSeq: -1 })).toThrow(RangeError);
  });
});

describe("SendSequence", () => {
  test("counts up from firstSeq and refuses to wrap", () => {
    const sequence = new SendSequence(5);
    expect([sequence.next(), sequence.next(), sequence.next()]).toEqual([5, 6, 7]);
    const last = new SendSequence(SEQ_MAX);
    expect(last.next()).toBe(SEQ_MAX);
    expect(() => last.next()).toThrow(/exhausted/);
  });

  test("matches what a contiguous ReplayGuard expects", () => {
    const sender = new SendSequence();
    const receiver = new ReplayGuard();
    for (let i = 0; i < 100; i += 1) expect(receiver.accept(sender.next())).toBe(true);
  });
});
