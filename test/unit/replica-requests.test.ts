/**
 * Request admission rules of the replica (src/replica/requests.ts): the bound on a
 * publish's signed timestamp, the validity check the ordering core relies on for
 * forwarded and proposed requests, and the key under which a valid request is remembered.
 */
import { describe, expect, test } from "bun:test";
import { sign } from "../../src/crypto/ed25519.ts";
import { toHex } from "../../src/crypto/encoding.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import type { ClientRequest } from "../../src/core/ordering/messages.ts";
import { sha256 } from "../../src/crypto/hash.ts";
import {
  admitRequest,
  bodyDigestOf,
  CLIENT_CLOCK_SKEW_MS_MAX,
  clientRequestValid,
  clockSkewProblem,
  DECODED_EVENT_BYTES,
  DecodedRequests,
  PROPOSED_FUTURE_MS_MAX,
  stampWithinBound,
  verifiedCacheKey,
  verifiedStamp,
} from "../../src/replica/requests.ts";
import { encodeRequestBody, type Request } from "../../wire/schemas.ts";
import { requestSignedBytes, requestSigningInput } from "../../wire/session.ts";

const NOW = 1_800_000_000_000;
const key = SigningKey.generate();
const other = SigningKey.generate();
const utf8 = (text: string): Uint8Array => new TextEncoder().encode(text);

function pub(ts: number, seq = 1, text = "eth0 down"): Request {
  return { v: 1, client: key.publicKey, seq, span: 1, ts, op: { t: "pub", tag: "sec.alerts", events: [utf8(text)] } };
}

function signed(request: Request, signer: SigningKey = key): ClientRequest {
  const body = encodeRequestBody(request);
  const tag = request.op.t === "pub" ? request.op.tag : "!admin";
  return {
    client: `${toHex(request.client)}:${tag}`,
    seq: request.seq,
    span: request.span,
    body,
    sig: sign(signer, requestSigningInput(body)),
  };
}

describe("the clock bound at the client's replica", () => {
  test("a publish within the bound either way passes", () => {
    expect(clockSkewProblem(pub(NOW), NOW)).toBeNull();
    expect(clockSkewProblem(pub(NOW + CLIENT_CLOCK_SKEW_MS_MAX), NOW)).toBeNull();
    expect(clockSkewProblem(pub(NOW - CLIENT_CLOCK_SKEW_MS_MAX), NOW)).toBeNull();
  });

  test("a publish stamped too far ahead or behind is refused with a reason naming the clock", () => {
    expect(clockSkewProblem(pub(NOW + CLIENT_CLOCK_SKEW_MS_MAX + 1_000), NOW)).toMatch(
      /301 s ahead of this replica's clock .* check the publishing host's clock/,
    );
    expect(clockSkewProblem(pub(NOW - 3_600_000), NOW)).toMatch(/3600 s behind/);
  });

  test("admin commands are not bound: their timestamp drives nothing", () => {
    const admin: Request = {
      v: 1,
      client: key.publicKey,
      seq: 1,
      span: 1,
      ts: 0,
      op: { t: "admin", cmd: { t: "destroy-channel", tag: "x" } },
    };
    expect(clockSkewProblem(admin, NOW)).toBeNull();
    expect(clientRequestValid(signed(admin), 0)).toBe(true);
  });
});

describe("the bound at every replica that accepts a proposal", () => {
  test("only the future is bounded, wider than at the client's replica", () => {
    expect(PROPOSED_FUTURE_MS_MAX).toBeGreaterThan(CLIENT_CLOCK_SKEW_MS_MAX);
    expect(stampWithinBound(NOW + PROPOSED_FUTURE_MS_MAX, NOW)).toBe(true);
    expect(stampWithinBound(NOW + PROPOSED_FUTURE_MS_MAX + 1, NOW)).toBe(false);
    expect(stampWithinBound(0, NOW)).toBe(true);
  });

  test("a request valid now stays valid later; one from the future becomes valid once its time is near", () => {
    const good = signed(pub(NOW));
    expect(clientRequestValid(good, NOW)).toBe(true);
    expect(clientRequestValid(good, NOW + 86_400_000)).toBe(true);
    const ahead = signed(pub(NOW + 3_600_000));
    expect(clientRequestValid(ahead, NOW)).toBe(false);
    expect(clientRequestValid(ahead, NOW + 3_600_000)).toBe(true);
  });

  test("a wrong signer, a swapped body or a header that is not the body's is invalid", () => {
    const good = signed(pub(NOW));
    expect(clientRequestValid(signed(pub(NOW), other), NOW)).toBe(false);
    const swapped: ClientRequest = { ...good, body: encodeRequestBody(pub(NOW, 1, "FORGED")) };
    expect(clientRequestValid(swapped, NOW)).toBe(false);
    expect(clientRequestValid({ ...good, seq: 2 }, NOW)).toBe(false);
    expect(clientRequestValid({ ...good, span: 2 }, NOW)).toBe(false);
    expect(clientRequestValid({ ...good, client: `${toHex(key.publicKey)}:net.links` }, NOW)).toBe(false);
  });

  test("the memo key covers header, body and signature, so a swapped body never hits it", () => {
    const good = signed(pub(NOW));
    const swapped: ClientRequest = { ...good, body: encodeRequestBody(pub(NOW, 1, "FORGED")) };
    const keys = [good, swapped, { ...good, seq: 2 }, { ...good, span: 2 }, { ...good, sig: signed(pub(NOW), other).sig }].map((r) =>
      verifiedCacheKey(r),
    );
    expect(new Set(keys).size).toBe(keys.length);
    expect(verifiedCacheKey({ ...good })).toBe(verifiedCacheKey(good));
  });
});

describe("what a request's signature covers: the body (version 1) or its SHA-256 (version 2)", () => {
  /** A request of body version `v` signed in the form of version `form`. */
  function signedAs(v: 1 | 2, form: 1 | 2, signer: SigningKey = key): ClientRequest {
    const request = { ...pub(NOW), v };
    const body = encodeRequestBody(request);
    return {
      ...signed(request, signer),
      sig: sign(
        signer,
        requestSignedBytes(form, body, () => sha256(body)),
      ),
    };
  }

  test("each version's own form passes admission, the ordering core's check and the stamp", () => {
    for (const v of [1, 2] as const) {
      const req = signedAs(v, v);
      expect(admitRequest({ body: req.body, sig: req.sig }).ok).toBe(true);
      expect(clientRequestValid(req, NOW)).toBe(true);
      expect(verifiedStamp(req)).toBe(NOW);
    }
  });

  test("the other version's form, or another key, is refused everywhere", () => {
    for (const req of [signedAs(1, 2), signedAs(2, 1), signedAs(2, 2, other)]) {
      expect(admitRequest({ body: req.body, sig: req.sig })).toMatchObject({ ok: false, code: "BAD_SIGNATURE" });
      expect(clientRequestValid(req, NOW)).toBe(false);
      expect(verifiedStamp(req)).toBeNull();
    }
  });

  test("a version 2 signature over the digest of other bytes does not pass for this body", () => {
    const req = signedAs(2, 2);
    const altered = encodeRequestBody({ ...pub(NOW, 1, "eth0 up"), v: 2 });
    expect(admitRequest({ body: altered, sig: req.sig })).toMatchObject({ ok: false, code: "BAD_SIGNATURE" });
  });

  test("no third form: a version the schemas never accept is a bug, not a signature check", () => {
    expect(() => requestSignedBytes(3, new Uint8Array(1), () => new Uint8Array(32))).toThrow(RangeError);
  });
});

describe("request body digests", () => {
  test("a body is hashed once however often its digest is asked for (arrival, verification, execution)", () => {
    const body = encodeRequestBody(pub(NOW));
    const digest = bodyDigestOf(body);
    expect(digest).toEqual(sha256(body));
    // The same object back: no second hash.
    expect(bodyDigestOf(body)).toBe(digest);
    // Another body with the same bytes is hashed on its own, to the same digest.
    const copy = body.slice();
    expect(bodyDigestOf(copy)).not.toBe(digest);
    expect(bodyDigestOf(copy)).toEqual(digest);
  });
});

describe("requests decoded at admission, kept for their execution (DecodedRequests)", () => {
  const entry = (seq: number, bytes = 100, events = 1): { digest: Uint8Array; request: Request; bytes: number } => {
    const base = pub(NOW, seq, `event ${seq}`);
    const request: Request = {
      ...base,
      span: events,
      op: { t: "pub", tag: "sec.alerts", events: Array.from({ length: events }, () => new Uint8Array(0)) },
    };
    return { digest: sha256(encodeRequestBody(request)), request, bytes };
  };
  const counted = (bytes: number, events = 1): number => bytes + events * DECODED_EVENT_BYTES;

  test("a kept request is taken once, by the digest of its body, and a digest never kept answers nothing", () => {
    const kept = new DecodedRequests();
    const a = entry(1);
    kept.keep(a.digest, a.bytes, a.request);
    expect(kept.take(entry(2).digest)).toBeUndefined();
    expect(kept.take(a.digest)).toBe(a.request);
    expect(kept.take(a.digest)).toBeUndefined();
    expect(kept.size).toBe(0);
    expect(kept.keptBytes).toBe(0);
  });

  test("past its entry bound or its memory bound the oldest go first; a request over the memory bound is not kept", () => {
    const byEntries = new DecodedRequests(3, 1_000_000);
    const entries = [1, 2, 3, 4, 5].map((seq) => entry(seq));
    for (const e of entries) byEntries.keep(e.digest, e.bytes, e.request);
    expect(byEntries.size).toBe(3);
    expect(entries.map((e) => byEntries.take(e.digest) !== undefined)).toEqual([false, false, true, true, true]);

    const byBytes = new DecodedRequests(100, 2 * counted(100) + 50);
    const sized = [1, 2, 3].map((seq) => entry(seq, 100));
    for (const e of sized) byBytes.keep(e.digest, e.bytes, e.request);
    expect(byBytes.keptBytes).toBe(2 * counted(100));
    expect(sized.map((e) => byBytes.take(e.digest) !== undefined)).toEqual([false, true, true]);
    const huge = entry(9, 2 * counted(100));
    byBytes.keep(huge.digest, huge.bytes, huge.request);
    expect(byBytes.take(huge.digest)).toBeUndefined();
    expect(byBytes.keptBytes).toBe(0);
  });

  test("each event counts DECODED_EVENT_BYTES, so requests of many empty events cannot hold many times the bound", () => {
    const kept = new DecodedRequests(100, 10_000);
    // 16 bytes of body, 1,000 empty events: about 96 KB of objects.
    const many = entry(1, 16, 1000);
    kept.keep(many.digest, many.bytes, many.request);
    expect(kept.take(many.digest)).toBeUndefined();
    const some = entry(2, 16, 50);
    kept.keep(some.digest, some.bytes, some.request);
    expect(kept.keptBytes).toBe(counted(16, 50));
  });

  test("the same body kept twice is one entry, counted once; a forgotten one is gone", () => {
    const kept = new DecodedRequests(10, 10_000);
    const a = entry(1, 300);
    kept.keep(a.digest, a.bytes, a.request);
    kept.keep(a.digest, a.bytes, a.request);
    expect(kept.size).toBe(1);
    expect(kept.keptBytes).toBe(counted(300));
    kept.forget(a.digest);
    expect(kept.take(a.digest)).toBeUndefined();
    expect(kept.keptBytes).toBe(0);
  });
});
