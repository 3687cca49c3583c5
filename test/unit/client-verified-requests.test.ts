/**
 * The client's memo of checked publisher signatures (src/client/verified-requests.ts): a
 * batch handed to several subscriptions is checked once, and every answer is the one the
 * check itself gives, whatever was remembered.
 */
import { describe, expect, test } from "bun:test";
import { VERIFIED_REQUESTS_BYTES_MAX, VERIFIED_REQUESTS_MAX, VerifiedRequests } from "../../src/client/verified-requests.ts";
import { verifyDomain } from "../../src/crypto/ed25519.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { DOMAIN_REQUEST } from "../../wire/types.ts";
import { signedRequest } from "./subscription-host.ts";

function counting(): { memo: VerifiedRequests; calls: () => number } {
  let calls = 0;
  const memo = new VerifiedRequests((body, sig, publisher) => {
    calls++;
    return verifyDomain(publisher, DOMAIN_REQUEST, body, sig);
  });
  return { memo, calls: () => calls };
}

describe("VerifiedRequests", () => {
  const key = SigningKey.generate();
  const other = SigningKey.generate();

  test("the same bytes, handed to many subscriptions, are checked once", () => {
    const { memo, calls } = counting();
    const req = signedRequest(key, "net.links", 1, ["a", "b"]);
    for (let i = 0; i < 100; i++) expect(memo.verify(req.body.slice(), req.sig.slice(), key.publicKey)).toBe(true);
    expect(calls()).toBe(1);
    expect(memo.checked).toBe(1);
  });

  test("a body, key or signature that differs from what was checked is checked again, with the check's own answer", () => {
    const { memo, calls } = counting();
    const req = signedRequest(key, "net.links", 1, ["a"]);
    expect(memo.verify(req.body, req.sig, key.publicKey)).toBe(true);
    const altered = req.body.slice();
    altered[altered.length - 1] = (altered.at(-1) as number) ^ 1;
    expect(memo.verify(altered, req.sig, key.publicKey)).toBe(false);
    expect(memo.verify(req.body, req.sig, other.publicKey)).toBe(false);
    const badSig = req.sig.slice();
    badSig[0] = (badSig[0] as number) ^ 1;
    expect(memo.verify(req.body, badSig, key.publicKey)).toBe(false);
    expect(calls()).toBe(4);
    // The good copy is still answered right, by the check or the memo.
    expect(memo.verify(req.body, req.sig, key.publicKey)).toBe(true);
  });

  test("bytes written over after the check change no later answer", () => {
    const { memo } = counting();
    const req = signedRequest(key, "net.links", 1, ["a"]);
    const body = req.body.slice();
    expect(memo.verify(body, req.sig, key.publicKey)).toBe(true);
    body[body.length - 1] = (body.at(-1) as number) ^ 1;
    // The caller's array now holds other bytes: they do not verify, and the memo kept its own copy.
    expect(memo.verify(body, req.sig, key.publicKey)).toBe(false);
    expect(memo.verify(req.body, req.sig, key.publicKey)).toBe(true);
  });

  test("bounded in entries and bytes; clear forgets everything", () => {
    const { memo, calls } = counting();
    const first = signedRequest(key, "net.links", 1, ["x"]);
    memo.verify(first.body, first.sig, key.publicKey);
    for (let i = 2; i <= VERIFIED_REQUESTS_MAX + 1; i++) {
      const req = signedRequest(key, "net.links", i, ["x"]);
      memo.verify(req.body, req.sig, key.publicKey);
    }
    const before = calls();
    memo.verify(first.body, first.sig, key.publicKey);
    expect(calls()).toBe(before + 1);
    // A body larger than the byte bound is never kept.
    const { memo: big, calls: bigCalls } = counting();
    const large = signedRequest(key, "net.links", 1, [new Uint8Array(VERIFIED_REQUESTS_BYTES_MAX + 1)]);
    big.verify(large.body, large.sig, key.publicKey);
    big.verify(large.body, large.sig, key.publicKey);
    expect(bigCalls()).toBe(2);
    memo.clear();
    const after = calls();
    memo.verify(first.body, first.sig, key.publicKey);
    expect(calls()).toBe(after + 1);
  });
});
