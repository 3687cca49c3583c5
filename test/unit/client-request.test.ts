import { describe, expect, test } from "bun:test";
import { decodeFrameBody, decodeRequestBody } from "../../wire/schemas.ts";
import { requestSignedBytes, requestSigningInput, signingInput } from "../../wire/session.ts";
import { DOMAIN_REQUEST, DOMAIN_REQUEST_DIGEST, FRAME_HEADER_BYTES, FrameType, TAG_BYTES_MAX } from "../../wire/types.ts";
import { InvalidInputError } from "../../src/client/errors.ts";
import {
  adminOp,
  buildRequest,
  checkEvents,
  checkTag,
  pubOp,
  REQUEST_FIXED_OVERHEAD_BYTES,
  EVENT_OVERHEAD_BYTES,
  tagProblem,
} from "../../src/client/request.ts";
import { verify, verifyDomain } from "../../src/crypto/ed25519.ts";
import { toHex } from "../../src/crypto/encoding.ts";
import { sha256 } from "../../src/crypto/hash.ts";
import { SigningKey } from "../../src/crypto/keys.ts";

const utf8 = (text: string) => new TextEncoder().encode(text);
const key = SigningKey.fromSeed(new Uint8Array(32).fill(7));
const FRAME_MAX = 1024 * 1024;

function frameBody(frame: Uint8Array) {
  const decoded = decodeFrameBody(frame[4] as number, frame.subarray(FRAME_HEADER_BYTES));
  if (!decoded.ok) throw new Error(decoded.error.reason);
  return decoded.frame;
}

describe("building a publish request", () => {
  const events = [utf8("eth0 down"), utf8("eth1 up"), new Uint8Array([0, 255, 10])];
  const built = buildRequest(key, { seq: 41, ts: 1_700_000_000_000, op: pubOp("net.links", events) }, FRAME_MAX);

  test("the body is the canonical Request with span = number of events", () => {
    const decoded = decodeRequestBody(built.body);
    expect(decoded.ok).toBe(true);
    if (!decoded.ok) return;
    expect(decoded.request.v).toBe(2);
    expect(decoded.request.client).toEqual(key.publicKey);
    expect(decoded.request.seq).toBe(41);
    expect(decoded.request.span).toBe(3);
    expect(decoded.request.ts).toBe(1_700_000_000_000);
    expect(decoded.request.op).toEqual({ t: "pub", tag: "net.links", events });
  });

  test("the signature (body version 2) covers utf8(digest domain) || 0x00 || sha256(body) under the client's key, and nothing else", () => {
    expect(verifyDomain(key.publicKey, DOMAIN_REQUEST_DIGEST, sha256(built.body), built.sig)).toBe(true);
    expect(
      verify(
        key.publicKey,
        requestSignedBytes(2, built.body, () => sha256(built.body)),
        built.sig,
      ),
    ).toBe(true);
    const other = SigningKey.fromSeed(new Uint8Array(32).fill(8));
    expect(verifyDomain(other.publicKey, DOMAIN_REQUEST_DIGEST, sha256(built.body), built.sig)).toBe(false);
    // Not a signature of the body itself, nor of the digest under the body's domain: the domains keep the forms apart.
    expect(verifyDomain(key.publicKey, DOMAIN_REQUEST, built.body, built.sig)).toBe(false);
    expect(verify(key.publicKey, requestSigningInput(built.body), built.sig)).toBe(false);
    expect(verifyDomain(key.publicKey, DOMAIN_REQUEST, sha256(built.body), built.sig)).toBe(false);
  });

  test("requestSignedBytes: version 1 covers the body under DOMAIN_REQUEST, version 2 the digest under DOMAIN_REQUEST_DIGEST", () => {
    const body = new Uint8Array([1, 2, 3]);
    expect(requestSignedBytes(1, body, () => sha256(body))).toEqual(requestSigningInput(body));
    expect(requestSignedBytes(2, body, () => sha256(body))).toEqual(signingInput(DOMAIN_REQUEST_DIGEST, sha256(body)));
  });

  test("the digest is sha256(body), the d a REPLY echoes", () => {
    expect(built.digest).toEqual(sha256(built.body));
    expect(built.digestHex).toBe(toHex(sha256(built.body)));
  });

  test("the frame is a REQUEST carrying exactly body and sig", () => {
    const frame = frameBody(built.frame);
    expect(frame.type).toBe(FrameType.REQUEST);
    if (frame.type !== FrameType.REQUEST) return;
    expect(frame.body.body).toEqual(built.body);
    expect(frame.body.sig).toEqual(built.sig);
  });

  test("the overhead bound holds for a request near the limits", () => {
    const tag = "a".repeat(TAG_BYTES_MAX);
    const many = Array.from({ length: 300 }, (_, i) => new Uint8Array(i * 3));
    const large = buildRequest(key, { seq: Number.MAX_SAFE_INTEGER - 300, ts: Number.MAX_SAFE_INTEGER, op: pubOp(tag, many) }, FRAME_MAX);
    const eventBytes = many.reduce((sum, event) => sum + event.byteLength, 0);
    expect(large.frame.byteLength).toBeLessThanOrEqual(
      REQUEST_FIXED_OVERHEAD_BYTES + tag.length + eventBytes + many.length * EVENT_OVERHEAD_BYTES,
    );
  });

  test("a request that cannot fit in a frame is refused with TOO_LARGE before sending", () => {
    const big = [new Uint8Array(5000)];
    expect(() => buildRequest(key, { seq: 1, ts: 0, op: pubOp("t", big) }, 4096)).toThrow(InvalidInputError);
    try {
      buildRequest(key, { seq: 1, ts: 0, op: pubOp("t", big) }, 4096);
    } catch (error) {
      expect((error as InvalidInputError).code).toBe("TOO_LARGE");
    }
  });
});

describe("building an admin request", () => {
  test("span is 1 and the command is carried as is", () => {
    const cmd = {
      t: "create-channel",
      tag: "sec.alerts",
      fault: "byzantine",
      order: "total",
      priority: "critical",
      public: false,
    } as const;
    const built = buildRequest(key, { seq: 1, ts: 5, op: adminOp(cmd) }, FRAME_MAX);
    const decoded = decodeRequestBody(built.body);
    expect(decoded.ok).toBe(true);
    if (!decoded.ok) return;
    expect(decoded.request.span).toBe(1);
    expect(decoded.request.op).toEqual({ t: "admin", cmd });
  });
});

describe("input checks", () => {
  test("tags follow the shared pattern and length", () => {
    expect(tagProblem("net.links")).toBeNull();
    expect(tagProblem("a_b-c.d0")).toBeNull();
    expect(tagProblem("a".repeat(TAG_BYTES_MAX))).toBeNull();
    for (const bad of ["", "Net.links", "net..links", ".net", "net.", "net links", "a".repeat(TAG_BYTES_MAX + 1), "#admin"]) {
      expect(tagProblem(bad)).not.toBeNull();
      expect(() => checkTag(bad)).toThrow(InvalidInputError);
    }
  });

  test("events: at least one, at most the batch bound, each within the event bound", () => {
    const limits = { eventBytesMax: 10, batchEventsMax: 3 };
    expect(() => checkEvents([], limits)).toThrow("at least one event");
    expect(() => checkEvents([new Uint8Array(1), new Uint8Array(1), new Uint8Array(1), new Uint8Array(1)], limits)).toThrow("at most 3");
    expect(() => checkEvents([new Uint8Array(10), new Uint8Array(11)], limits)).toThrow("event 1 is 11 bytes");
    expect(() => checkEvents([new Uint8Array(0), new Uint8Array(10)], limits)).not.toThrow();
  });
});
