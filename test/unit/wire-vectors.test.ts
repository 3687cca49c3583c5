// The published test vectors (wire/vectors/*.json): every hex decodes to its stated meaning
// and re-encodes to the same hex; every invalid vector fails with its stated error; the
// signatures, keys and MAC of the session vectors check out with node:crypto, independently
// of the @noble code that generated them.
import { describe, expect, test } from "bun:test";
import { createHash, createHmac, createPrivateKey, createPublicKey, diffieHellman, hkdfSync, verify } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import {
  type Canonical,
  DOMAIN_PEER_KEY_I2R,
  DOMAIN_PEER_KEY_R2I,
  DOMAIN_SESSION_INITIATOR,
  DOMAIN_SESSION_RESPONDER,
  type Frame,
  FrameDecoder,
  FrameType,
  type Hello,
  type HelloAck,
  type WireError,
  decodeCanonical,
  decodeFrameBody,
  decodeRequestBody,
  encodeCanonical,
  encodeRequestBody,
  encodeTypedFrame,
  frameTypeName,
  peerMacInput,
  requestSignedBytes,
  requestSigningInput,
  sessionTranscript,
  signingInput,
  tryDecodeCanonical,
} from "../../wire/index.ts";
import { type VectorJson, fromHex, fromVectorJson, toHex } from "../../wire/vector-json.ts";

const VECTOR_DIR = join(import.meta.dir, "..", "..", "wire", "vectors");

// Vector files are JSON of a known, published shape; each test reads the fields it checks.
// biome-ignore lint/suspicious/noExplicitAny: the vectors' JSON is read field by field by each test
function load(file: string): any {
  return JSON.parse(readFileSync(join(VECTOR_DIR, file), "utf8"));
}

interface ValidVector {
  name: string;
  hex: string;
  value: VectorJson;
}
interface InvalidVector {
  name: string;
  hex: string;
  error: string;
  fatal?: boolean;
}
interface FrameVector {
  name: string;
  type: number;
  typeName: string;
  hex: string;
  body: VectorJson;
}

describe("vectors: canonical.json", () => {
  const v = load("canonical.json") as { valid: ValidVector[]; invalid: InvalidVector[] };

  test("has both kinds", () => {
    expect(v.valid.length).toBeGreaterThan(20);
    expect(v.invalid.length).toBeGreaterThan(15);
  });

  for (const vec of v.valid) {
    test(`valid: ${vec.name}`, () => {
      const value = fromVectorJson(vec.value);
      expect(decodeCanonical(fromHex(vec.hex))).toEqual(value);
      expect(toHex(encodeCanonical(value))).toBe(vec.hex);
    });
  }
  for (const vec of v.invalid) {
    test(`invalid: ${vec.name} -> ${vec.error}`, () => {
      const r = tryDecodeCanonical(fromHex(vec.hex));
      expect(r.ok).toBe(false);
      if (!r.ok) expect(r.error.code as string).toBe(vec.error);
    });
  }
});

/** Decodes a whole-frame hex through the streaming decoder and the schemas. */
function decodeFrameHex(hexFrame: string): { frame?: Frame; error?: WireError } {
  const decoder = new FrameDecoder();
  const results = decoder.push(fromHex(hexFrame));
  const end = decoder.finish();
  if (results.length === 0) return end === null ? {} : { error: end };
  expect(results.length).toBe(1);
  const [raw] = results;
  if (raw === undefined) return {};
  if (!raw.ok) return { error: raw.error };
  expect(end).toBeNull();
  const r = decodeFrameBody(raw.type, raw.payload);
  return r.ok ? { frame: r.frame } : { error: r.error };
}

describe("vectors: frames.json", () => {
  const v = load("frames.json") as { frames: FrameVector[] };

  test("covers every frame type", () => {
    const covered = new Set(v.frames.map((f) => f.type));
    for (const code of Object.values(FrameType)) expect(covered.has(code)).toBe(true);
  });

  for (const vec of v.frames) {
    test(`${vec.typeName}: ${vec.name}`, () => {
      expect(frameTypeName(vec.type)).toBe(vec.typeName as ReturnType<typeof frameTypeName>);
      const { frame, error } = decodeFrameHex(vec.hex);
      expect(error).toBeUndefined();
      expect(frame?.type).toBe(vec.type as Frame["type"]);
      expect(frame?.body as unknown).toEqual(fromVectorJson(vec.body));
      if (frame !== undefined) expect(toHex(encodeTypedFrame(frame))).toBe(vec.hex);
    });
  }
});

describe("vectors: invalid-frames.json", () => {
  const v = load("invalid-frames.json") as { invalid: InvalidVector[] };
  for (const vec of v.invalid) {
    test(`${vec.name} -> ${vec.error}`, () => {
      const { frame, error } = decodeFrameHex(vec.hex);
      expect(frame).toBeUndefined();
      expect(error?.kind).toBe(vec.error as WireError["kind"]);
      expect(error?.fatal).toBe(vec.fatal ?? false);
    });
  }
});

describe("vectors: requests.json", () => {
  const v = load("requests.json") as { valid: Array<{ name: string; hex: string; request: VectorJson }>; invalid: InvalidVector[] };
  for (const vec of v.valid) {
    test(`valid: ${vec.name}`, () => {
      const r = decodeRequestBody(fromHex(vec.hex));
      expect(r.ok).toBe(true);
      if (!r.ok) return;
      expect(r.request as unknown).toEqual(fromVectorJson(vec.request));
      expect(toHex(encodeRequestBody(r.request))).toBe(vec.hex);
    });
  }
  for (const vec of v.invalid) {
    test(`invalid: ${vec.name} -> ${vec.error}`, () => {
      const r = decodeRequestBody(fromHex(vec.hex));
      expect(r.ok).toBe(false);
      if (!r.ok) expect(r.error.kind).toBe(vec.error as WireError["kind"]);
    });
  }
});

// DER prefixes that wrap raw 32-byte keys for node:crypto (RFC 8410).
const ED25519_PKCS8 = "302e020100300506032b657004220420";
const ED25519_SPKI = "302a300506032b6570032100";
const X25519_PKCS8 = "302e020100300506032b656e04220420";
const X25519_SPKI = "302a300506032b656e032100";

const der = (prefix: string, raw: string) => Buffer.from(prefix + raw, "hex");
const edPublicFromSecret = (secret: string): string =>
  toHex(
    new Uint8Array(
      createPublicKey(createPrivateKey({ key: der(ED25519_PKCS8, secret), format: "der", type: "pkcs8" }))
        .export({ format: "der", type: "spki" })
        .subarray(12),
    ),
  );

function edVerify(publicHex: string, message: Uint8Array, sigHex: string): boolean {
  const key = createPublicKey({ key: der(ED25519_SPKI, publicHex), format: "der", type: "spki" });
  return verify(null, message, key, Buffer.from(sigHex, "hex"));
}

describe("vectors: session.json (checked with node:crypto)", () => {
  const s = load("session.json");
  const frames = (load("frames.json") as { frames: FrameVector[] }).frames;
  const body = (name: string): Canonical => {
    const vec = frames.find((f) => f.name === name);
    if (vec === undefined) throw new Error(`no frame vector ${name}`);
    return fromVectorJson(vec.body);
  };

  test("public keys derive from the published secrets", () => {
    expect(edPublicFromSecret(s.keys.clientSecret)).toBe(s.keys.client);
    expect(edPublicFromSecret(s.keys.replica0Secret)).toBe(s.keys.replica0);
    expect(edPublicFromSecret(s.keys.replica1Secret)).toBe(s.keys.replica1);
  });

  test("client handshake: transcript and both signatures", () => {
    const hello = body("HELLO from a client") as unknown as Hello;
    const ack = body("HELLO_ACK to a client") as unknown as HelloAck;
    const auth = body("AUTH from a client") as { sig: Uint8Array };
    const t = sessionTranscript(hello, ack);
    expect(toHex(t)).toBe(s.client.transcript);
    expect(toHex(ack.sig)).toBe(s.client.responderSig);
    expect(toHex(auth.sig)).toBe(s.client.initiatorSig);
    expect(edVerify(s.keys.replica0, signingInput(DOMAIN_SESSION_RESPONDER, t), s.client.responderSig)).toBe(true);
    expect(edVerify(s.keys.client, signingInput(DOMAIN_SESSION_INITIATOR, t), s.client.initiatorSig)).toBe(true);
    // The domain tags keep one side's signature from passing as the other's.
    expect(edVerify(s.keys.replica0, signingInput(DOMAIN_SESSION_INITIATOR, t), s.client.responderSig)).toBe(false);
  });

  test("peer handshake: transcript, signatures, X25519, HKDF keys and the PEER MAC", () => {
    const hello = body("HELLO from replica 1 to replica 0") as unknown as Hello;
    const ack = body("HELLO_ACK from replica 0 to replica 1") as unknown as HelloAck;
    const t = sessionTranscript(hello, ack);
    expect(toHex(t)).toBe(s.peer.transcript);
    expect(edVerify(s.keys.replica0, signingInput(DOMAIN_SESSION_RESPONDER, t), s.peer.responderSig)).toBe(true);
    expect(edVerify(s.keys.replica1, signingInput(DOMAIN_SESSION_INITIATOR, t), s.peer.initiatorSig)).toBe(true);

    const priv0 = createPrivateKey({ key: der(X25519_PKCS8, s.keys.replica0EphSecret), format: "der", type: "pkcs8" });
    const pub1 = createPublicKey({ key: der(X25519_SPKI, s.keys.replica1Eph), format: "der", type: "spki" });
    const shared = new Uint8Array(diffieHellman({ privateKey: priv0, publicKey: pub1 }));
    expect(toHex(shared)).toBe(s.peer.sharedSecret);

    const salt = new Uint8Array(Bun.SHA256.hash(t) as Uint8Array);
    expect(toHex(salt)).toBe(s.peer.salt);
    const k = (info: string) => toHex(new Uint8Array(hkdfSync("sha256", shared, salt, info, 32)));
    expect(k(DOMAIN_PEER_KEY_I2R)).toBe(s.peer.keyInitiatorToResponder);
    expect(k(DOMAIN_PEER_KEY_R2I)).toBe(s.peer.keyResponderToInitiator);

    const peer = body("PEER carrying an ordering message, MAC under K_i2r") as { seq: number; msg: Uint8Array; mac: Uint8Array };
    const input = peerMacInput(FrameType.PEER, peer.seq, peer.msg);
    expect(toHex(input)).toBe(s.peer.macInput);
    const mac = createHmac("sha256", fromHex(s.peer.keyInitiatorToResponder)).update(input).digest("hex");
    expect(mac).toBe(s.peer.mac);
    expect(toHex(peer.mac)).toBe(s.peer.mac);
  });

  test("request signature over the publish request body", () => {
    const req = body("REQUEST publishing two events") as { body: Uint8Array; sig: Uint8Array };
    expect(toHex(req.body)).toBe(s.request.body);
    expect(toHex(requestSigningInput(req.body))).toBe(s.request.signingInput);
    expect(edVerify(s.keys.client, requestSigningInput(req.body), s.request.sig)).toBe(true);
    expect(toHex(req.sig)).toBe(s.request.sig);
  });

  test("a version 2 request's signature covers its digest domain and the SHA-256 of the body", () => {
    const v2 = s.requestV2 as { body: string; bodyDigest: string; signingInput: string; sig: string };
    const reqBody = fromHex(v2.body);
    const decoded = decodeRequestBody(reqBody);
    expect(decoded.ok && decoded.request.v).toBe(2);
    const digest = new Uint8Array(createHash("sha256").update(reqBody).digest());
    expect(toHex(digest)).toBe(v2.bodyDigest);
    expect(toHex(requestSignedBytes(2, reqBody, () => digest))).toBe(v2.signingInput);
    expect(toHex(signingInput("fitb/v1/request-digest", digest))).toBe(v2.signingInput);
    expect(edVerify(s.keys.client, fromHex(v2.signingInput), v2.sig)).toBe(true);
    // Not valid as a signature of the body itself.
    expect(edVerify(s.keys.client, requestSigningInput(reqBody), v2.sig)).toBe(false);
  });
});
