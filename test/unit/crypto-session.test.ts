import { describe, expect, test } from "bun:test";
import { hkdf } from "@noble/hashes/hkdf.js";
import { hmac } from "@noble/hashes/hmac.js";
import { sha256 as nobleSha256 } from "@noble/hashes/sha2.js";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { concatBytes, fromHex, nativeBytesEqual, toHex } from "../../src/crypto/encoding.ts";
import { domainMessage } from "../../src/crypto/ed25519.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import {
  CLIENT_FRAME_MAC_BYTES,
  checkMac,
  deriveSessionKeys,
  FrameOpener,
  FrameSealer,
  framePayloadDigest,
  withMacRoom,
  PrefixDigests,
  SHARED_PREFIX_PAYLOAD_BYTES_MIN,
  SHARED_PREFIXES_MAX,
  SHARED_PREFIX_BYTES_MAX,
  sessionFraming,
  ephemeralKeyPairFromSecret,
  generateEphemeralKeyPair,
  MAC_BYTES,
  macFrame,
  ReplayGuard,
  SendSequence,
  PEER_FRAME_SEQ_MAX,
  SessionCryptoError,
  signHandshake,
  transcriptHash,
  verifyHandshake,
  x25519SharedSecret,
} from "../../src/crypto/session.ts";
import { encodeTypedFrame, encodeTypedFrameWithTrailer, type Frame } from "../../wire/schemas.ts";
import { clientMacInput, peerMacInput, signingInput } from "../../wire/session.ts";
import { receive, sessionKeys } from "./sealed-wire.ts";
import {
  DOMAIN_CLIENT_KEY_I2R,
  DOMAIN_CLIENT_KEY_R2I,
  DOMAIN_PEER_KEY_I2R,
  DOMAIN_PEER_KEY_R2I,
  DOMAIN_SESSION_INITIATOR,
  DOMAIN_SESSION_RESPONDER,
  FrameType,
} from "../../wire/types.ts";

const utf8 = (text: string) => new TextEncoder().encode(text);
const TRANSCRIPT = utf8("transcript bytes as wire/PROTOCOL.md lays them out");
const PEER = FrameType.PEER;

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

  // RFC 7748 §6.1.
  test("matches the RFC 7748 Diffie-Hellman example", () => {
    const alice = ephemeralKeyPairFromSecret(fromHex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"));
    const bob = ephemeralKeyPairFromSecret(fromHex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"));
    expect(alice.publicKey).toEqual(fromHex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"));
    expect(bob.publicKey).toEqual(fromHex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"));
    const shared = fromHex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
    expect(x25519SharedSecret(alice, bob.publicKey)).toEqual(shared);
    expect(x25519SharedSecret(bob, alice.publicKey)).toEqual(shared);
    expect(() => ephemeralKeyPairFromSecret(new Uint8Array(31))).toThrow(SessionCryptoError);
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
    const initiatorToResponder = hkdf(nobleSha256, secret, salt, utf8(DOMAIN_PEER_KEY_I2R), 32);
    const responderToInitiator = hkdf(nobleSha256, secret, salt, utf8(DOMAIN_PEER_KEY_R2I), 32);
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
    expect(checkMac(responderKeys.receiveKey, PEER, 1, frame, macFrame(initiatorKeys.sendKey, PEER, 1, frame))).toBe(true);
  });
});

describe("handshake signatures", () => {
  const key = SigningKey.generate();

  test("cover utf8(role domain) || 0x00 || T, as wire/session.ts defines", () => {
    const signature = signHandshake(key, "initiator", TRANSCRIPT);
    expect(domainMessage(DOMAIN_SESSION_INITIATOR, TRANSCRIPT)).toEqual(signingInput(DOMAIN_SESSION_INITIATOR, TRANSCRIPT));
    expect(signature).toEqual(signHandshake(key, "initiator", TRANSCRIPT));
    expect(verifyHandshake(key.publicKey, "initiator", TRANSCRIPT, signature)).toBe(true);
    expect(verifyHandshake(key.publicKey, "responder", TRANSCRIPT, signHandshake(key, "responder", TRANSCRIPT))).toBe(true);
  });

  test("verify for the signer's role and transcript only", () => {
    const signature = signHandshake(key, "initiator", TRANSCRIPT);
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

  test("are HMAC-SHA-256 over the wire's peer MAC input", () => {
    const seq = 0x0102030405;
    const expected = hmac(nobleSha256, key, peerMacInput(PEER, seq, frame));
    expect(macFrame(key, PEER, seq, frame)).toEqual(expected);
    expect(peerMacInput(PEER, seq, frame)).toEqual(concatBytes(utf8("fitb/v1/peer-mac\u0000"), fromHex("400000000102030405"), frame));
    expect(macFrame(key, PEER, seq, frame).byteLength).toBe(MAC_BYTES);
  });

  test("check passes only for the same key, type, seq and bytes", () => {
    const mac = macFrame(key, PEER, 7, frame);
    expect(checkMac(key, PEER, 7, frame, mac)).toBe(true);
    expect(checkMac(key, PEER, 8, frame, mac)).toBe(false);
    expect(checkMac(key, PEER + 1, 7, frame, mac)).toBe(false);
    expect(checkMac(key, PEER, 7, utf8("a frame bodY"), mac)).toBe(false);
    expect(
      checkMac(
        Uint8Array.from(key, (byte) => byte ^ 1),
        PEER,
        7,
        frame,
        mac,
      ),
    ).toBe(false);
    const flipped = Uint8Array.from(mac);
    flipped[31]! ^= 0x80;
    expect(checkMac(key, PEER, 7, frame, flipped)).toBe(false);
  });

  test("malformed MACs, seqs and types fail the check without throwing", () => {
    const mac = macFrame(key, PEER, 7, frame);
    expect(checkMac(key, PEER, 7, frame, mac.subarray(0, 16))).toBe(false);
    expect(checkMac(key, PEER, 0, frame, mac)).toBe(false);
    expect(checkMac(key, PEER, -1, frame, mac)).toBe(false);
    expect(checkMac(key, PEER, 1.5, frame, mac)).toBe(false);
    expect(checkMac(key, PEER, PEER_FRAME_SEQ_MAX + 1, frame, mac)).toBe(false);
    expect(checkMac(key, FrameType.REQUEST, 7, frame, mac)).toBe(false);
  });

  test("making a MAC for a non-peer type or seq 0 is a programming error", () => {
    expect(() => macFrame(key, PEER, 0, frame)).toThrow(RangeError);
    expect(() => macFrame(key, FrameType.HELLO, 1, frame)).toThrow(RangeError);
  });
});

describe("wire/vectors/session.json", () => {
  const vectors = JSON.parse(readFileSync(join(import.meta.dir, "../../wire/vectors/session.json"), "utf8"));
  const replica0 = SigningKey.fromSeed(fromHex(vectors.keys.replica0Secret));
  const replica1 = SigningKey.fromSeed(fromHex(vectors.keys.replica1Secret));
  const client = SigningKey.fromSeed(fromHex(vectors.keys.clientSecret));
  const peerTranscript = fromHex(vectors.peer.transcript);
  const clientTranscript = fromHex(vectors.client.transcript);

  test("static keys derive the listed public keys", () => {
    expect(replica0.publicKey).toEqual(fromHex(vectors.keys.replica0));
    expect(replica1.publicKey).toEqual(fromHex(vectors.keys.replica1));
    expect(client.publicKey).toEqual(fromHex(vectors.keys.client));
  });

  test("handshake signatures match byte for byte and verify", () => {
    // Replica 1 initiates the peer session to replica 0; a client initiates its session.
    expect(signHandshake(replica0, "responder", peerTranscript)).toEqual(fromHex(vectors.peer.responderSig));
    expect(signHandshake(replica1, "initiator", peerTranscript)).toEqual(fromHex(vectors.peer.initiatorSig));
    expect(signHandshake(replica0, "responder", clientTranscript)).toEqual(fromHex(vectors.client.responderSig));
    expect(signHandshake(client, "initiator", clientTranscript)).toEqual(fromHex(vectors.client.initiatorSig));
    expect(verifyHandshake(replica1.publicKey, "initiator", peerTranscript, fromHex(vectors.peer.initiatorSig))).toBe(true);
    expect(verifyHandshake(replica0.publicKey, "responder", clientTranscript, fromHex(vectors.client.responderSig))).toBe(true);
    expect(DOMAIN_SESSION_RESPONDER).toBe("fitb/v1/session/responder");
  });

  test("ephemeral keys and the X25519 shared secret match", () => {
    const initiator = ephemeralKeyPairFromSecret(fromHex(vectors.keys.replica1EphSecret));
    const responder = ephemeralKeyPairFromSecret(fromHex(vectors.keys.replica0EphSecret));
    expect(initiator.publicKey).toEqual(fromHex(vectors.keys.replica1Eph));
    expect(responder.publicKey).toEqual(fromHex(vectors.keys.replica0Eph));
    expect(x25519SharedSecret(initiator, responder.publicKey)).toEqual(fromHex(vectors.peer.sharedSecret));
    expect(x25519SharedSecret(responder, initiator.publicKey)).toEqual(fromHex(vectors.peer.sharedSecret));
  });

  test("client session keys and the sealed client frame match", () => {
    const client = ephemeralKeyPairFromSecret(fromHex(vectors.keys.clientEphSecret));
    const replica = ephemeralKeyPairFromSecret(fromHex(vectors.keys.replica0EphSecret));
    expect(client.publicKey).toEqual(fromHex(vectors.keys.clientEph));
    const shared = x25519SharedSecret(client, replica.publicKey);
    expect(shared).toEqual(fromHex(vectors.client.sharedSecret));
    const keys = deriveSessionKeys(shared, clientTranscript, "initiator", "client");
    expect(keys.sendKey).toEqual(fromHex(vectors.client.keyInitiatorToResponder));
    expect(keys.receiveKey).toEqual(fromHex(vectors.client.keyResponderToInitiator));
    const payload = fromHex(vectors.client.macPayload);
    expect<Uint8Array>(nobleSha256(payload)).toEqual(fromHex(vectors.client.macPayloadDigest));
    expect(clientMacInput(vectors.client.macSeq, vectors.client.macType, nobleSha256(payload))).toEqual(fromHex(vectors.client.macInput));
    const sealed = new FrameSealer(keys.sendKey).seal(encodeTypedFrame({ type: FrameType.PING, body: { n: 7 } }));
    expect(sealed).toEqual(fromHex(vectors.client.sealedFrame));
    expect(sealed.subarray(sealed.length - CLIENT_FRAME_MAC_BYTES)).toEqual(fromHex(vectors.client.mac));
  });

  test("session keys and the peer MAC match", () => {
    const shared = fromHex(vectors.peer.sharedSecret);
    expect(transcriptHash(peerTranscript)).toEqual(fromHex(vectors.peer.salt));
    const initiator = deriveSessionKeys(shared, peerTranscript, "initiator");
    expect(initiator.sendKey).toEqual(fromHex(vectors.peer.keyInitiatorToResponder));
    expect(initiator.receiveKey).toEqual(fromHex(vectors.peer.keyResponderToInitiator));
    const msg = fromHex(vectors.peer.macMsg);
    expect(macFrame(initiator.sendKey, vectors.peer.macType, vectors.peer.macSeq, msg)).toEqual(fromHex(vectors.peer.mac));
    expect(checkMac(initiator.sendKey, vectors.peer.macType, vectors.peer.macSeq, msg, fromHex(vectors.peer.mac))).toBe(true);
  });
});

describe("ReplayGuard", () => {
  test("contiguous mode (the default) accepts exactly 1, 2, 3, ...", () => {
    const guard = new ReplayGuard();
    expect(guard.accept(0)).toBe(false); // peer seqs start at 1
    expect(guard.accept(1)).toBe(true);
    expect(guard.accept(2)).toBe(true);
    expect(guard.accept(2)).toBe(false); // replay
    expect(guard.accept(1)).toBe(false); // older replay
    expect(guard.accept(4)).toBe(false); // gap: a frame was removed
    expect(guard.accept(3)).toBe(true); // a refused seq is not recorded
    expect(guard.nextSeq).toBe(4);
  });

  test("increasing mode accepts gaps but never a seq at or below the last", () => {
    const guard = new ReplayGuard({ contiguous: false, firstSeq: 1 });
    expect(guard.accept(0)).toBe(false);
    expect(guard.accept(5)).toBe(true);
    expect(guard.accept(5)).toBe(false);
    expect(guard.accept(4)).toBe(false);
    expect(guard.accept(9)).toBe(true);
  });

  test("rejects invalid seqs and stops after PEER_FRAME_SEQ_MAX", () => {
    const guard = new ReplayGuard({ contiguous: false });
    expect(guard.accept(-1)).toBe(false);
    expect(guard.accept(2.5)).toBe(false);
    expect(guard.accept(Number.NaN)).toBe(false);
    expect(guard.accept(PEER_FRAME_SEQ_MAX)).toBe(true);
    expect(guard.accept(PEER_FRAME_SEQ_MAX + 1)).toBe(false);
    expect(() => new ReplayGuard({ firstSeq: -1 })).toThrow(RangeError);
  });
});

describe("SendSequence", () => {
  test("counts up from 1 by default, from firstSeq if given, and refuses to wrap", () => {
    expect(new SendSequence().next()).toBe(1);
    const sequence = new SendSequence(5);
    expect([sequence.next(), sequence.next(), sequence.next()]).toEqual([5, 6, 7]);
    const last = new SendSequence(PEER_FRAME_SEQ_MAX);
    expect(last.next()).toBe(PEER_FRAME_SEQ_MAX);
    expect(() => last.next()).toThrow(/exhausted/);
  });

  test("matches what a contiguous ReplayGuard expects", () => {
    const sender = new SendSequence();
    const receiver = new ReplayGuard();
    for (let i = 0; i < 100; i += 1) expect(receiver.accept(sender.next())).toBe(true);
  });
});

describe("client session frames (wire/PROTOCOL.md 5.2)", () => {
  const shared = x25519SharedSecret(generateEphemeralKeyPair(), generateEphemeralKeyPair().publicKey);
  const clientKeys = deriveSessionKeys(shared, TRANSCRIPT, "initiator", "client");
  const replicaKeys = deriveSessionKeys(shared, TRANSCRIPT, "responder", "client");
  const frames: Frame[] = [
    { type: FrameType.PING, body: { n: 1 } },
    { type: FrameType.QUERY, body: { id: 2, q: "list-channels" } },
    { type: FrameType.PING, body: { n: 3 } },
  ];

  function sealAll(sealer: FrameSealer): Uint8Array[] {
    return frames.map((frame) => sealer.seal(encodeTypedFrame(frame)));
  }

  test("client keys are their own pair, apart from the peer keys of the same secret and transcript", () => {
    const peer = deriveSessionKeys(shared, TRANSCRIPT, "initiator", "peer");
    expect(clientKeys.sendKey).not.toEqual(peer.sendKey);
    expect(clientKeys.sendKey).toEqual(replicaKeys.receiveKey);
    expect(clientKeys.receiveKey).toEqual(replicaKeys.sendKey);
    expect(clientKeys.sendKey).not.toEqual(clientKeys.receiveKey);
    expect(DOMAIN_CLIENT_KEY_I2R).not.toBe(DOMAIN_CLIENT_KEY_R2I);
  });

  test("frames sealed in order open in order, as the frames sent; sealed in place or by copy, the same bytes", () => {
    const sealed = sealAll(new FrameSealer(clientKeys.sendKey));
    expect(receive(new FrameOpener(replicaKeys.receiveKey), Buffer.concat(sealed))).toEqual(frames);
    const inPlace = new FrameSealer(clientKeys.sendKey);
    frames.forEach((frame, i) =>
      expect(inPlace.sealInPlace(encodeTypedFrameWithTrailer(frame, CLIENT_FRAME_MAC_BYTES))).toEqual(sealed[i] as Uint8Array),
    );
    // The MAC is counted in the length field: a frame is 32 bytes longer than unsealed.
    expect(sealed[0]?.length).toBe(encodeTypedFrame(frames[0] as Frame).length + CLIENT_FRAME_MAC_BYTES);
  });

  test("one frame sealed in place for several sessions (a request to every replica) is each session's frame sealed plainly", () => {
    const sealers = [new FrameSealer(clientKeys.sendKey), new FrameSealer(replicaKeys.sendKey)];
    const plain = [sealAll(new FrameSealer(clientKeys.sendKey)), sealAll(new FrameSealer(replicaKeys.sendKey))];
    frames.forEach((frame, i) => {
      const shared = withMacRoom(encodeTypedFrame(frame));
      const digest = framePayloadDigest(shared);
      sealers.forEach((sealer, s) => {
        expect(sealer.sealInPlace(shared, digest)).toEqual(plain[s]?.[i] as Uint8Array);
      });
    });
    // A digest of other bytes gives a MAC the replica refuses.
    const other = withMacRoom(encodeTypedFrame(frames[1] as Frame));
    const wrong = new FrameSealer(clientKeys.sendKey).sealInPlace(
      withMacRoom(encodeTypedFrame(frames[0] as Frame)),
      framePayloadDigest(other),
    );
    expect(receive(new FrameOpener(replicaKeys.receiveKey), wrong)).toEqual([null]);
  });

  describe("PrefixDigests: the payload one client receives from every replica is hashed about once", () => {
    const sha = (bytes: Uint8Array): string => createHash("sha256").update(bytes).digest("hex");
    const batch = (seed: number, length: number): Uint8Array => {
      const bytes = new Uint8Array(length);
      for (let i = 0; i < length; i++) bytes[i] = (i * 31 + seed) & 0xff;
      return bytes;
    };
    /** A replica's copy: the shared batch, then a tail of its own (subscription, tag, replica). */
    const copyFrom = (shared: Uint8Array, replica: number, tailBytes = 40): Uint8Array => {
      const out = new Uint8Array(shared.length + tailBytes);
      out.set(shared);
      out.fill(replica + 1, shared.length);
      return out;
    };

    test("every digest is the SHA-256 of its own payload; copies after the first continue from the shared prefix", () => {
      const digests = new PrefixDigests(nativeBytesEqual);
      const shared = batch(1, 100_000);
      for (let replica = 0; replica < 4; replica++) {
        const payload = copyFrom(shared, replica, 40 + replica);
        expect(toHex(digests.digest(payload))).toBe(sha(payload));
      }
      expect([digests.hashed, digests.reused]).toEqual([1, 3]);
    });

    test("a copy that differs before the cut, or is short, is hashed whole, and still right", () => {
      const digests = new PrefixDigests(nativeBytesEqual);
      const shared = batch(2, 50_000);
      expect(toHex(digests.digest(copyFrom(shared, 0)))).toBe(sha(copyFrom(shared, 0)));
      const altered = copyFrom(shared, 1);
      altered[10] = (altered[10] as number) ^ 1;
      expect(toHex(digests.digest(altered))).toBe(sha(altered));
      const small = batch(3, SHARED_PREFIX_PAYLOAD_BYTES_MIN - 1);
      expect(toHex(digests.digest(small))).toBe(sha(small));
      expect([digests.hashed, digests.reused]).toEqual([2, 0]);
      // Both are remembered: a copy of either continues from its own prefix.
      expect(toHex(digests.digest(copyFrom(altered.subarray(0, shared.length), 2)))).toBe(
        sha(copyFrom(altered.subarray(0, shared.length), 2)),
      );
      expect(toHex(digests.digest(copyFrom(shared, 3)))).toBe(sha(copyFrom(shared, 3)));
      expect([digests.hashed, digests.reused]).toEqual([2, 2]);
    });

    test("replicas a few batches apart still find their prefixes: each batch is hashed whole once", () => {
      const digests = new PrefixDigests(nativeBytesEqual);
      // Same-sized batches (as at saturation), so every one is cut at the same place.
      const batches = Array.from({ length: 12 }, (_, i) => batch(10 + i, 30_000));
      const lags = [0, 1, 3, 5];
      for (let step = 0; step < batches.length + 5; step++) {
        lags.forEach((lag, replica) => {
          const b = batches[step - lag];
          if (b === undefined) return;
          const payload = copyFrom(b, replica);
          expect(toHex(digests.digest(payload))).toBe(sha(payload));
        });
      }
      expect([digests.hashed, digests.reused]).toEqual([12, 36]);
    });

    test("what it remembers is a copy: bytes changed after they were hashed change nothing", () => {
      const digests = new PrefixDigests(nativeBytesEqual);
      const shared = batch(5, 40_000);
      const first = copyFrom(shared, 0);
      digests.digest(first);
      first.fill(0, 0, 1000);
      const second = copyFrom(shared, 1);
      expect(toHex(digests.digest(second))).toBe(sha(second));
      expect(toHex(digests.digest(first))).toBe(sha(first));
      expect([digests.hashed, digests.reused]).toEqual([2, 1]);
    });

    test("the prefixes it holds are bounded in bytes too: past SHARED_PREFIX_BYTES_MAX the oldest is forgotten", () => {
      const digests = new PrefixDigests(nativeBytesEqual);
      const size = 2 * 1024 * 1024;
      const count = Math.floor(SHARED_PREFIX_BYTES_MAX / (size - 4096)) + 1;
      expect(count).toBeLessThan(SHARED_PREFIXES_MAX);
      const batches = Array.from({ length: count }, (_, i) => batch(20 + i, size));
      for (const b of batches) digests.digest(copyFrom(b, 0));
      digests.digest(copyFrom(batches.at(-1) as Uint8Array, 1));
      expect(digests.reused).toBe(1);
      digests.digest(copyFrom(batches[0] as Uint8Array, 1));
      expect([digests.hashed, digests.reused]).toEqual([count + 1, 1]);
    });

    test("at most SHARED_PREFIXES_MAX prefixes are remembered, oldest forgotten first", () => {
      const digests = new PrefixDigests(nativeBytesEqual);
      const batches = Array.from({ length: SHARED_PREFIXES_MAX + 1 }, (_, i) => batch(i, 10_000));
      expect((SHARED_PREFIXES_MAX + 1) * 10_000).toBeLessThan(SHARED_PREFIX_BYTES_MAX);
      for (const b of batches) digests.digest(copyFrom(b, 0));
      digests.digest(copyFrom(batches.at(-1) as Uint8Array, 1));
      expect(digests.reused).toBe(1);
      const first = copyFrom(batches[0] as Uint8Array, 1);
      expect(toHex(digests.digest(first))).toBe(sha(first));
      expect([digests.hashed, digests.reused]).toEqual([SHARED_PREFIXES_MAX + 2, 1]);
    });

    test("openers sharing one memo open every replica's copy, and refuse a copy altered in the shared prefix", () => {
      const digests = new PrefixDigests(nativeBytesEqual);
      const shared = batch(4, 70_000);
      const type = FrameType.EVENTS;
      const sealedCopy = (keys: ReturnType<typeof sessionKeys>, payload: Uint8Array): Uint8Array =>
        concatBytes(payload, new FrameSealer(keys.replica.sendKey).macDigest(type, createHash("sha256").update(payload).digest()));
      for (let replica = 0; replica < 3; replica++) {
        const keys = sessionKeys(`replica ${replica}`);
        const payload = copyFrom(shared, replica);
        expect(new FrameOpener(keys.client.receiveKey, digests).open(type, sealedCopy(keys, payload))).toEqual(payload);
      }
      expect([digests.hashed, digests.reused]).toEqual([1, 2]);
      const keys = sessionKeys("replica 3");
      const sealed = sealedCopy(keys, copyFrom(shared, 3));
      sealed[100] = (sealed[100] as number) ^ 1;
      expect(new FrameOpener(keys.client.receiveKey, digests).open(type, sealed)).toBeNull();
    });
  });

  test("a tampered byte anywhere after the length field (type, payload or MAC) is refused", () => {
    const [first] = sealAll(new FrameSealer(clientKeys.sendKey));
    if (first === undefined) throw new Error("no frame");
    for (let at = 4; at < first.length; at++) {
      const tampered = Uint8Array.from(first);
      tampered[at] = (tampered[at] as number) ^ 0x01;
      const opener = new FrameOpener(replicaKeys.receiveKey);
      const type = tampered[4] as number;
      expect(opener.open(type, tampered.subarray(5))).toBeNull();
      expect(opener.opened).toBe(0);
    }
  });

  test("a replayed frame is refused: the receiver expects the next counter", () => {
    const [first, second] = sealAll(new FrameSealer(clientKeys.sendKey));
    if (first === undefined || second === undefined) throw new Error("no frames");
    expect(receive(new FrameOpener(replicaKeys.receiveKey), Buffer.concat([first, first]))).toEqual([frames[0] as Frame, null]);
    // A frame of an earlier session is refused by a new one, even as its first frame.
    const otherKeys = deriveSessionKeys(shared, utf8("another session's transcript"), "responder", "client");
    expect(receive(new FrameOpener(otherKeys.receiveKey), first)).toEqual([null]);
  });

  test("reordered or dropped frames are refused", () => {
    const [first, second, third] = sealAll(new FrameSealer(clientKeys.sendKey));
    if (first === undefined || second === undefined || third === undefined) throw new Error("no frames");
    expect(receive(new FrameOpener(replicaKeys.receiveKey), Buffer.concat([second, first]))).toEqual([null]);
    expect(receive(new FrameOpener(replicaKeys.receiveKey), Buffer.concat([first, third]))).toEqual([frames[0] as Frame, null]);
  });

  test("a frame is not accepted in the other direction (reflected back to its sender)", () => {
    const [first] = sealAll(new FrameSealer(clientKeys.sendKey));
    if (first === undefined) throw new Error("no frame");
    expect(receive(new FrameOpener(clientKeys.receiveKey), first)).toEqual([null]);
  });

  test("a refusal does not advance the counter, and a frame too short to hold a MAC is refused without a throw", () => {
    const framing = sessionFraming(replicaKeys);
    expect(framing.opener.open(FrameType.PING, new Uint8Array(CLIENT_FRAME_MAC_BYTES - 1))).toBeNull();
    expect(framing.opener.open(FrameType.PING, new Uint8Array(CLIENT_FRAME_MAC_BYTES))).toBeNull();
    const [first] = sealAll(new FrameSealer(clientKeys.sendKey));
    expect(receive(framing.opener, first as Uint8Array)).toEqual([frames[0] as Frame]);
    expect(framing.opener.opened).toBe(1);
  });

  test("the MAC covers the domain, the u64 counter, the type and the SHA-256 of the payload (clientMacInput)", () => {
    const frame = encodeTypedFrame({ type: FrameType.PING, body: { n: 9 } });
    const sealed = new FrameSealer(clientKeys.sendKey).seal(frame);
    const expected = hmac(nobleSha256, clientKeys.sendKey, clientMacInput(1, FrameType.PING, nobleSha256(frame.subarray(5))));
    expect(sealed.subarray(frame.length)).toEqual(expected);
    const digest = new Uint8Array(32).fill(0xee);
    expect(clientMacInput(2 ** 32 + 5, 0x05, digest)).toEqual(
      concatBytes(utf8("fitb/v1/client-mac/payload-sha256"), Uint8Array.of(0, 0, 0, 0, 1, 0, 0, 0, 5, 0x05), digest),
    );
    expect(() => clientMacInput(1, 0x05, Uint8Array.of(0xee))).toThrow(RangeError);
  });
});
