import { describe, expect, test } from "bun:test";
import * as noble from "@noble/ed25519";
import { sha512 } from "@noble/hashes/sha2.js";
import {
  domainMessage,
  PUBLIC_KEY_CACHE_ENTRIES_MAX,
  publicKeyCacheSize,
  sign,
  signDomain,
  verify,
  verifyDomain,
} from "../../src/crypto/ed25519.ts";
import { fromHex, toHex } from "../../src/crypto/encoding.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { signingInput } from "../../wire/session.ts";
import { DOMAIN_REQUEST } from "../../wire/types.ts";
import sessionVectors from "../../wire/vectors/session.json" with { type: "json" };

// @noble/ed25519's synchronous API needs a SHA-512; it is the independent implementation here.
noble.hashes.sha512 = sha512;

/** splitmix32: a seeded generator, so a failing case names its seed and replays exactly. */
function seededBytes(seed: number): (length: number) => Uint8Array {
  let state = seed >>> 0;
  const next = (): number => {
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x21f0aaad);
    z = Math.imul(z ^ (z >>> 15), 0x735a2d97);
    return (z ^ (z >>> 15)) >>> 0;
  };
  return (length) => Uint8Array.from({ length }, () => next() & 0xff);
}

const CROSS_CHECK_SEED = 20_240_601;
const CROSS_CHECK_CASES = 64;
const MESSAGE_BYTES_MAX = 300;

// RFC 8032 §7.1, tests 1 and 2.
const RFC_VECTORS = [
  {
    seed: "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
    message: "",
    signature:
      "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
  },
  {
    seed: "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
    message: "72",
    signature:
      "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
  },
];

describe("native ed25519", () => {
  for (const [index, vector] of RFC_VECTORS.entries()) {
    test(`produces the RFC 8032 signature (test ${index + 1}) and verifies it`, () => {
      const key = SigningKey.fromSeed(fromHex(vector.seed));
      const message = fromHex(vector.message);
      const signature = sign(key, message);
      expect(toHex(signature)).toBe(vector.signature);
      expect(verify(key.publicKey, message, signature)).toBe(true);
    });
  }

  test("malformed input does not verify and does not throw", () => {
    const key = SigningKey.generate();
    const message = new TextEncoder().encode("m");
    const signature = sign(key, message);
    expect(verify(key.publicKey, message, signature.subarray(0, 63))).toBe(false);
    expect(verify(key.publicKey, message, new Uint8Array(65))).toBe(false);
    expect(verify(key.publicKey.subarray(0, 31), message, signature)).toBe(false);
    expect(verify(new Uint8Array(32), message, signature)).toBe(false);
    expect(verify(key.publicKey, message, new Uint8Array(64))).toBe(false);
  });

  test("the public key cache stays within its bound", () => {
    const message = new Uint8Array(1);
    const signature = new Uint8Array(64);
    const random = seededBytes(7);
    for (let i = 0; i < PUBLIC_KEY_CACHE_ENTRIES_MAX + 10; i += 1) verify(random(32), message, signature);
    expect(publicKeyCacheSize()).toBeLessThanOrEqual(PUBLIC_KEY_CACHE_ENTRIES_MAX);
  });
});

describe("cross-check against @noble/ed25519", () => {
  const random = seededBytes(CROSS_CHECK_SEED);
  for (let round = 0; round < CROSS_CHECK_CASES; round += 1) {
    const seed = random(32);
    const lengthBytes = random(2);
    const message = random(((lengthBytes[0]! << 8) | lengthBytes[1]!) % (MESSAGE_BYTES_MAX + 1));
    const flip = random(2);
    test(`case ${round} (seed ${CROSS_CHECK_SEED}, ${message.byteLength} byte message)`, () => {
      const key = SigningKey.fromSeed(seed);
      expect(key.publicKey).toEqual(noble.getPublicKey(seed));

      const nativeSignature = sign(key, message);
      const nobleSignature = noble.sign(message, seed);
      // ed25519 signing is deterministic, so both must produce the very same bytes.
      expect(nativeSignature).toEqual(nobleSignature);
      expect(noble.verify(nativeSignature, message, key.publicKey)).toBe(true);
      expect(verify(key.publicKey, message, nobleSignature)).toBe(true);

      const tampered = Uint8Array.from(message.byteLength === 0 ? [0] : message);
      if (message.byteLength > 0) tampered[flip[0]! % tampered.byteLength]! ^= 1 << (flip[1]! % 8);
      expect(verify(key.publicKey, tampered, nobleSignature)).toBe(false);
      expect(noble.verify(nativeSignature, tampered, key.publicKey)).toBe(false);

      const badSignature = Uint8Array.from(nativeSignature);
      badSignature[flip[0]! % 64]! ^= 1 << (flip[1]! % 8);
      expect(verify(key.publicKey, message, badSignature)).toBe(false);
      expect(noble.verify(badSignature, message, key.publicKey)).toBe(false);
    });
  }
});

describe("domain-separated signatures", () => {
  const key = SigningKey.generate();
  const bytes = new TextEncoder().encode("payload");

  test("the signed bytes are utf8(domain) || 0x00 || bytes", () => {
    expect(toHex(domainMessage("ab", Uint8Array.from([1, 2])))).toBe("6162000102");
    const signature = signDomain(key, "fitb/v1/request", bytes);
    expect(verify(key.publicKey, domainMessage("fitb/v1/request", bytes), signature)).toBe(true);
    expect(noble.verify(signature, domainMessage("fitb/v1/request", bytes), key.publicKey)).toBe(true);
  });

  test("a signature verifies only under its own domain", () => {
    const signature = signDomain(key, "fitb/v1/request", bytes);
    expect(verifyDomain(key.publicKey, "fitb/v1/request", bytes, signature)).toBe(true);
    expect(verifyDomain(key.publicKey, "fitb/v1/checkpoint", bytes, signature)).toBe(false);
    expect(verify(key.publicKey, bytes, signature)).toBe(false);
  });

  test("moving bytes across the separator changes the message", () => {
    // Without the NUL, ("a", "b...") and ("ab", "...") would sign the same bytes.
    expect(domainMessage("a", Uint8Array.from([0x62]))).not.toEqual(domainMessage("ab", new Uint8Array(0)));
  });

  test("rejects empty, NUL-containing and oversized domains", () => {
    expect(() => signDomain(key, "", bytes)).toThrow(/empty/);
    expect(() => signDomain(key, "a\u0000b", bytes)).toThrow(/NUL/);
    expect(() => signDomain(key, "x".repeat(129), bytes)).toThrow(/longer than 128/);
  });
});

describe("agreement with the wire protocol", () => {
  test("domainMessage is the wire's signingInput", () => {
    const bytes = Uint8Array.from([9, 8, 7]);
    expect(domainMessage(DOMAIN_REQUEST, bytes)).toEqual(signingInput(DOMAIN_REQUEST, bytes));
  });

  test("the request vector in wire/vectors/session.json signs and verifies", () => {
    const client = SigningKey.fromSeed(fromHex(sessionVectors.keys.clientSecret));
    const body = fromHex(sessionVectors.request.body);
    const signature = fromHex(sessionVectors.request.sig);
    expect(domainMessage(DOMAIN_REQUEST, body)).toEqual(fromHex(sessionVectors.request.signingInput));
    expect(signDomain(client, DOMAIN_REQUEST, body)).toEqual(signature);
    expect(verifyDomain(client.publicKey, DOMAIN_REQUEST, body, signature)).toBe(true);
  });
});
