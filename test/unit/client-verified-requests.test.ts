/**
 * The client's memo of checked publisher signatures of shared batches
 * (src/client/verified-requests.ts): a body handed to several subscriptions is checked
 * once, and every answer is the one the check itself gives.
 */
import { describe, expect, test } from "bun:test";
import { VerifiedRequests } from "../../src/client/verified-requests.ts";
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

  test("one body handed to many subscriptions is checked once", () => {
    const { memo, calls } = counting();
    const req = signedRequest(key, "net.links", 1, ["a", "b"]);
    // Each subscription's voter decodes the publisher key anew: an equal key in another array.
    for (let i = 0; i < 100; i++) expect(memo.verifyShared(req.body, req.sig, key.publicKey.slice())).toBe(true);
    expect(calls()).toBe(1);
    expect(memo.checked).toBe(1);
  });

  test("another signature or key over the same body is checked, with the check's own answer", () => {
    const { memo, calls } = counting();
    const req = signedRequest(key, "net.links", 1, ["a"]);
    expect(memo.verifyShared(req.body, req.sig, key.publicKey)).toBe(true);
    expect(memo.verifyShared(req.body, req.sig, other.publicKey)).toBe(false);
    const badSig = req.sig.slice();
    badSig[0] = (badSig[0] as number) ^ 1;
    expect(memo.verifyShared(req.body, badSig, key.publicKey)).toBe(false);
    expect(calls()).toBe(3);
    // A bad answer remembered is still the check's answer for those bytes, and the good one too.
    expect(memo.verifyShared(req.body, badSig, key.publicKey)).toBe(false);
    expect(memo.verifyShared(req.body, req.sig, key.publicKey)).toBe(true);
  });

  test("another array, even of equal bytes, is checked: the memo is of the array the subscriptions share", () => {
    const { memo, calls } = counting();
    const req = signedRequest(key, "net.links", 1, ["a"]);
    memo.verifyShared(req.body, req.sig, key.publicKey);
    const altered = req.body.slice();
    altered[altered.length - 1] = (altered.at(-1) as number) ^ 1;
    expect(memo.verifyShared(altered, req.sig, key.publicKey)).toBe(false);
    expect(memo.verifyShared(req.body.slice(), req.sig, key.publicKey)).toBe(true);
    expect(calls()).toBe(3);
  });

  test("the signature is remembered as a copy: one written over afterwards is checked again", () => {
    const { memo, calls } = counting();
    const req = signedRequest(key, "net.links", 1, ["a"]);
    const sig = req.sig.slice();
    expect(memo.verifyShared(req.body, sig, key.publicKey)).toBe(true);
    sig[0] = (sig[0] as number) ^ 1;
    expect(memo.verifyShared(req.body, sig, key.publicKey)).toBe(false);
    expect(calls()).toBe(2);
  });
});
