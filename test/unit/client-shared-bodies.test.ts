/**
 * What a client remembers of the bodies of shared EVENTS frames (src/client/shared-bodies.ts):
 * a body handed to several subscriptions is read and checked once, every answer is the one
 * reading and checking give, and a body that came in no shared frame is never remembered.
 */
import { describe, expect, test } from "bun:test";
import { checkRequestSignature, SharedBodies } from "../../src/client/shared-bodies.ts";
import { parseBody } from "../../src/core/voting/delivery-voter.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { encodeCanonical } from "../../wire/canonical.ts";
import { DOMAIN_REQUEST_DIGEST } from "../../wire/types.ts";
import { signDomain } from "../../src/crypto/ed25519.ts";
import { sha256 } from "../../src/crypto/hash.ts";
import { signedRequest } from "./subscription-host.ts";

const utf8 = (text: string): Uint8Array => new TextEncoder().encode(text);

function counting(): { shared: SharedBodies; calls: () => number } {
  let calls = 0;
  const shared = new SharedBodies((body, sig, publisher, version) => {
    calls++;
    return checkRequestSignature(body, sig, publisher, version);
  });
  return { shared, calls: () => calls };
}

describe("SharedBodies", () => {
  const key = SigningKey.generate();
  const other = SigningKey.generate();

  test("a shared body handed to many subscriptions is read and checked once", () => {
    const { shared, calls } = counting();
    const req = signedRequest(key, "net.links", 1, ["a", "b"]);
    shared.mark(req.body);
    const reads = new Set<unknown>();
    // Each subscription's voter decodes the publisher key anew: an equal key in another array.
    for (let i = 0; i < 100; i++) {
      expect(shared.verify(req.body, req.sig, key.publicKey.slice(), 1)).toBe(true);
      reads.add(shared.parse(req.body));
    }
    expect(calls()).toBe(1);
    expect(reads.size).toBe(1);
    expect(shared.counts).toEqual({ checked: 1, read: 1 });
    expect(shared.parse(req.body)).toEqual(parseBody(req.body));
  });

  test("a body that came in no shared frame is read and checked every time", () => {
    const { shared, calls } = counting();
    const req = signedRequest(key, "net.links", 1, ["a"]);
    for (let i = 0; i < 3; i++) {
      expect(shared.verify(req.body, req.sig, key.publicKey, 1)).toBe(true);
      shared.parse(req.body);
    }
    expect(calls()).toBe(3);
    expect(shared.counts).toEqual({ checked: 0, read: 0 });
    expect(shared.has(req.body)).toBe(false);
  });

  test("another signature or key over a shared body is checked, with the check's own answer", () => {
    const { shared, calls } = counting();
    const req = signedRequest(key, "net.links", 1, ["a"]);
    shared.mark(req.body);
    expect(shared.verify(req.body, req.sig, key.publicKey, 1)).toBe(true);
    expect(shared.verify(req.body, req.sig, other.publicKey, 1)).toBe(false);
    const badSig = req.sig.slice();
    badSig[0] = (badSig[0] as number) ^ 1;
    expect(shared.verify(req.body, badSig, key.publicKey, 1)).toBe(false);
    expect(calls()).toBe(3);
    expect(shared.verify(req.body, badSig, key.publicKey, 1)).toBe(false);
    expect(shared.verify(req.body, req.sig, key.publicKey, 1)).toBe(true);
  });

  test("the memory is of the array: another array of equal bytes, or an altered one, is read and checked itself", () => {
    const { shared, calls } = counting();
    const req = signedRequest(key, "net.links", 1, ["a"]);
    shared.mark(req.body);
    shared.verify(req.body, req.sig, key.publicKey, 1);
    const altered = req.body.slice();
    altered[altered.length - 1] = (altered.at(-1) as number) ^ 1;
    shared.mark(altered);
    expect(shared.verify(altered, req.sig, key.publicKey, 1)).toBe(false);
    expect(shared.verify(req.body.slice(), req.sig, key.publicKey, 1)).toBe(true);
    expect(calls()).toBe(3);
    // An undecodable shared body reads as undecodable, remembered as such.
    const junk = new Uint8Array([0xff, 0x00]);
    shared.mark(junk);
    expect(shared.parse(junk)).toBe("undecodable");
    expect(shared.parse(junk)).toBe("undecodable");
  });

  test("a version 2 body (signed through its SHA-256) is checked once too; asked as another version, checked again", () => {
    const { shared, calls } = counting();
    const body = encodeCanonical({
      v: 2,
      client: key.publicKey,
      seq: 1,
      span: 1,
      ts: 77,
      op: { t: "pub", tag: "net.links", events: [utf8("a")] },
    });
    const sig = signDomain(key, DOMAIN_REQUEST_DIGEST, sha256(body));
    shared.mark(body);
    for (let i = 0; i < 5; i++) expect(shared.verify(body, sig, key.publicKey, 2)).toBe(true);
    expect(calls()).toBe(1);
    // The same signature is no version 1 signature of the body.
    expect(shared.verify(body, sig, key.publicKey, 1)).toBe(false);
    expect(calls()).toBe(2);
  });

  test("a signature written over after its check is checked again", () => {
    const { shared, calls } = counting();
    const req = signedRequest(key, "net.links", 1, ["a"]);
    shared.mark(req.body);
    const sig = req.sig.slice();
    expect(shared.verify(req.body, sig, key.publicKey, 1)).toBe(true);
    sig[0] = (sig[0] as number) ^ 1;
    expect(shared.verify(req.body, sig, key.publicKey, 1)).toBe(false);
    expect(calls()).toBe(2);
  });
});
