/**
 * Writes the test vectors in wire/vectors/. Run once after a deliberate protocol change:
 *   bun tools/gen-vectors.ts
 * The tests never regenerate them: they decode every vector and re-encode it, so a change
 * to the encoding that was not meant shows up as a failing test rather than new vectors.
 *
 * Keys are derived from fixed, published seeds: they are test keys and must never be used
 * for anything else. Signatures are real ed25519 signatures (deterministic, RFC 8032),
 * peer session keys come from a real X25519 agreement, so another implementation can
 * check its cryptography against the same bytes.
 */
import { createPrivateKey, createPublicKey, diffieHellman } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as ed from "@noble/ed25519";
import { hkdf } from "@noble/hashes/hkdf.js";
import { hmac } from "@noble/hashes/hmac.js";
import { sha256, sha512 } from "@noble/hashes/sha2.js";
import { type Canonical, encodeCanonical } from "../wire/canonical.ts";
import { encodeFrame } from "../wire/frame.ts";
import { type Frame, type Hello, type HelloAck, type Request, encodeRequestBody, encodeTypedFrame } from "../wire/schemas.ts";
import { clientMacInput, peerMacInput, requestSigningInput, sessionTranscript, signingInput } from "../wire/session.ts";
import {
  DOMAIN_CLIENT_KEY_I2R,
  DOMAIN_CLIENT_KEY_R2I,
  DOMAIN_PEER_KEY_I2R,
  DOMAIN_PEER_KEY_R2I,
  DOMAIN_REQUEST_DIGEST,
  DOMAIN_SESSION_INITIATOR,
  DOMAIN_SESSION_RESPONDER,
  FrameType,
  frameTypeName,
} from "../wire/types.ts";
import { type VectorJson, fromHex, toHex, toVectorJson } from "../wire/vector-json.ts";

ed.hashes.sha512 = sha512;

const utf8 = new TextEncoder();

/** A 32-byte secret from a label: SHA-256(label). Public test material only. */
export function testSeed(label: string): Uint8Array {
  return sha256(utf8.encode(label));
}

export const TEST_LABELS = {
  clientKey: "fitb test vector: client ed25519 seed",
  replicaKey: "fitb test vector: replica 0 ed25519 seed",
  peerKey: "fitb test vector: replica 1 ed25519 seed",
  peerEph: "fitb test vector: replica 1 x25519 ephemeral",
  replicaEph: "fitb test vector: replica 0 x25519 ephemeral",
  clientEph: "fitb test vector: client x25519 ephemeral",
  clientNonce: "fitb test vector: client nonce",
  replicaNonce: "fitb test vector: replica nonce",
  peerNonce: "fitb test vector: replica 1 nonce",
} as const;

/** X25519 via node:crypto from a raw 32-byte private key (PKCS#8 with a fixed prefix). */
const X25519_PKCS8_PREFIX = fromHex("302e020100300506032b656e04220420");

function x25519KeyPair(seed: Uint8Array): { priv: ReturnType<typeof createPrivateKey>; pub: Uint8Array } {
  const der = new Uint8Array(X25519_PKCS8_PREFIX.length + seed.length);
  der.set(X25519_PKCS8_PREFIX);
  der.set(seed, X25519_PKCS8_PREFIX.length);
  const priv = createPrivateKey({ key: Buffer.from(der), format: "der", type: "pkcs8" });
  const spki = createPublicKey(priv).export({ format: "der", type: "spki" });
  return { priv, pub: new Uint8Array(spki.subarray(spki.length - 32)) };
}

function sign(seed: Uint8Array, message: Uint8Array): Uint8Array {
  return ed.sign(message, seed);
}

interface FrameVector {
  name: string;
  type: number;
  typeName: string;
  hex: string;
  body: VectorJson;
}

function frameVector(name: string, frame: Frame): FrameVector {
  return {
    name,
    type: frame.type,
    typeName: frameTypeName(frame.type) ?? "?",
    hex: toHex(encodeTypedFrame(frame)),
    body: toVectorJson(frame.body as unknown as Canonical),
  };
}

function bytesOf(length: number, start: number): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (start + i) & 0xff);
}

/** Everything the vectors need, computed once from the fixed seeds. */
function material() {
  const clientSeed = testSeed(TEST_LABELS.clientKey);
  const replicaSeed = testSeed(TEST_LABELS.replicaKey);
  const peerSeed = testSeed(TEST_LABELS.peerKey);
  return {
    clientSeed,
    replicaSeed,
    peerSeed,
    clientKey: ed.getPublicKey(clientSeed),
    replicaKey: ed.getPublicKey(replicaSeed),
    peerKey: ed.getPublicKey(peerSeed),
    clientNonce: testSeed(TEST_LABELS.clientNonce),
    replicaNonce: testSeed(TEST_LABELS.replicaNonce),
    peerNonce: testSeed(TEST_LABELS.peerNonce),
    peerEph: x25519KeyPair(testSeed(TEST_LABELS.peerEph)),
    replicaEph: x25519KeyPair(testSeed(TEST_LABELS.replicaEph)),
    clientEph: x25519KeyPair(testSeed(TEST_LABELS.clientEph)),
  };
}

const TS_MS = 1_767_225_600_000; // 2026-01-01T00:00:00Z

function buildRequests(m: ReturnType<typeof material>) {
  const pub: Request = {
    v: 1,
    client: m.clientKey,
    seq: 41,
    span: 2,
    ts: TS_MS,
    op: { t: "pub", tag: "net.links", events: [utf8.encode("eth0 down"), utf8.encode("eth1 up\n")] },
  };
  const admin: Request = {
    v: 1,
    client: m.clientKey,
    seq: 43,
    span: 1,
    ts: TS_MS + 1,
    op: {
      t: "admin",
      cmd: {
        t: "create-channel",
        tag: "sec.alerts",
        fault: "byzantine",
        order: "total",
        priority: "critical",
        public: false,
      },
    },
  };
  const register: Request = {
    v: 1,
    client: m.clientKey,
    seq: 44,
    span: 1,
    ts: TS_MS + 2,
    op: { t: "admin", cmd: { t: "register", tag: "net.links", role: "publisher", key: m.peerKey } },
  };
  const destroy: Request = {
    v: 1,
    client: m.clientKey,
    seq: 45,
    span: 1,
    ts: TS_MS + 3,
    op: { t: "admin", cmd: { t: "destroy-channel", tag: "sec.alerts" } },
  };
  return { pub, admin, register, destroy };
}

function signed(m: ReturnType<typeof material>, request: Request) {
  const body = encodeRequestBody(request);
  return { body, sig: sign(m.clientSeed, requestSigningInput(body)) };
}

function buildSession(m: ReturnType<typeof material>) {
  const clientHello: Hello = { v: 3, role: "client", key: m.clientKey, nonce: m.clientNonce, eph: m.clientEph.pub };
  const clientAckUnsigned = { v: 3 as const, replica: 0, key: m.replicaKey, nonce: m.replicaNonce, eph: m.replicaEph.pub };
  const clientT = sessionTranscript(clientHello, clientAckUnsigned);
  const clientAck: HelloAck = { ...clientAckUnsigned, sig: sign(m.replicaSeed, signingInput(DOMAIN_SESSION_RESPONDER, clientT)) };
  const clientAuth = { sig: sign(m.clientSeed, signingInput(DOMAIN_SESSION_INITIATOR, clientT)) };
  const clientShared = new Uint8Array(diffieHellman({ privateKey: m.clientEph.priv, publicKey: createPublicKey(m.replicaEph.priv) }));
  const clientSalt = sha256(clientT);
  const clientKI2R = hkdf(sha256, clientShared, clientSalt, utf8.encode(DOMAIN_CLIENT_KEY_I2R), 32);
  const clientKR2I = hkdf(sha256, clientShared, clientSalt, utf8.encode(DOMAIN_CLIENT_KEY_R2I), 32);
  // The client's first frame after AUTH: PING {n: 7}, frame counter 1, MACed under K_i2r.
  const clientPing = encodeTypedFrame({ type: FrameType.PING, body: { n: 7 } });
  const clientPingPayload = clientPing.subarray(5);
  const clientPingMac = hmac(sha256, clientKI2R, clientMacInput(1, FrameType.PING, sha256(clientPingPayload)));
  const clientPingSealed = new Uint8Array(clientPing.length + 32);
  clientPingSealed.set(clientPing);
  clientPingSealed.set(clientPingMac, clientPing.length);
  new DataView(clientPingSealed.buffer).setUint32(0, clientPingSealed.length - 4);

  // Replica 1 connects to replica 0: replica 1 is the initiator.
  const peerHello: Hello = { v: 3, role: "replica", replica: 1, key: m.peerKey, nonce: m.peerNonce, eph: m.peerEph.pub };
  const peerAckUnsigned = { v: 3 as const, replica: 0, key: m.replicaKey, nonce: m.replicaNonce, eph: m.replicaEph.pub };
  const peerT = sessionTranscript(peerHello, peerAckUnsigned);
  const peerAck: HelloAck = { ...peerAckUnsigned, sig: sign(m.replicaSeed, signingInput(DOMAIN_SESSION_RESPONDER, peerT)) };
  const peerAuth = { sig: sign(m.peerSeed, signingInput(DOMAIN_SESSION_INITIATOR, peerT)) };
  const shared = new Uint8Array(diffieHellman({ privateKey: m.peerEph.priv, publicKey: createPublicKey(m.replicaEph.priv) }));
  const salt = sha256(peerT);
  const kI2R = hkdf(sha256, shared, salt, utf8.encode(DOMAIN_PEER_KEY_I2R), 32);
  const kR2I = hkdf(sha256, shared, salt, utf8.encode(DOMAIN_PEER_KEY_R2I), 32);
  const peerMsg = encodeCanonical({ t: "write", view: 0, seq: 7, digest: bytesOf(32, 0xa0) });
  const peerMac = hmac(sha256, kI2R, peerMacInput(FrameType.PEER, 1, peerMsg));
  return {
    clientHello,
    clientAck,
    clientAuth,
    clientT,
    clientShared,
    clientSalt,
    clientKI2R,
    clientKR2I,
    clientPingPayload,
    clientPingMac,
    clientPingSealed,
    peerHello,
    peerAck,
    peerAuth,
    peerT,
    shared,
    salt,
    kI2R,
    kR2I,
    peerMsg,
    peerMac,
  };
}

/** The vector files, by file name. */
export function buildVectors(): Record<string, VectorJson> {
  const m = material();
  const r = buildRequests(m);
  const s = buildSession(m);
  const pubSigned = signed(m, r.pub);
  const adminSigned = signed(m, r.admin);
  return {
    "canonical.json": canonicalVectors(),
    "frames.json": frameVectors(m, s, pubSigned, adminSigned),
    "invalid-frames.json": invalidFrameVectors(),
    "requests.json": requestVectors(m, r),
    "session.json": sessionVectors(m, s, pubSigned),
  };
}

function canonicalVectors(): VectorJson {
  const valid: Array<[string, Canonical]> = [
    ["zero", 0],
    ["largest direct uint", 23],
    ["smallest 1-byte uint", 24],
    ["largest 1-byte uint", 255],
    ["smallest 2-byte uint", 256],
    ["largest 2-byte uint", 65535],
    ["smallest 4-byte uint", 65536],
    ["largest 4-byte uint", 4294967295],
    ["smallest 8-byte uint", 4294967296],
    ["largest safe integer", Number.MAX_SAFE_INTEGER],
    ["minus one", -1],
    ["smallest direct negative", -24],
    ["largest 1-byte negative", -25],
    ["smallest safe integer", -Number.MAX_SAFE_INTEGER],
    ["false", false],
    ["true", true],
    ["null", null],
    ["empty bytes", new Uint8Array(0)],
    ["four bytes", bytesOf(4, 1)],
    ["24 bytes (1-byte length)", bytesOf(24, 0)],
    ["empty text", ""],
    ["ascii text", "net.links"],
    ["non-ascii text", "d\u00e9j\u00e0 \u6c34 \u{1f600}"],
    ["text starting with a byte-order mark", "\ufeffx"],
    ["empty array", []],
    ["nested array", [1, [2, 3], [4, [5]]]],
    ["empty map", {}],
    ["map keys sorted by encoded bytes: shorter first", { seq: 1, v: 1, tag: "a", client: 2 }],
    ["map keys of equal length sorted bytewise", { b: 2, a: 1, c: 3 }],
    ["map with nested values", { op: { t: "pub", events: [bytesOf(2, 0xfe)] }, ok: true }],
  ];
  const invalid: Array<[string, string, string]> = [
    ["1-byte uint below 24", "1817", "non-shortest"],
    ["2-byte uint below 256", "1900ff", "non-shortest"],
    ["4-byte uint below 65536", "1a0000ffff", "non-shortest"],
    ["8-byte uint below 2^32", "1b00000000ffffffff", "non-shortest"],
    ["uint above 2^53-1", "1b0020000000000000", "int-out-of-range"],
    ["non-shortest byte string length", "580101", "non-shortest"],
    ["indefinite-length byte string", "5f4101ff", "indefinite-length"],
    ["indefinite-length array", "9f01ff", "indefinite-length"],
    ["indefinite-length map", "bf616101ff", "indefinite-length"],
    ["half-precision float", "f93c00", "float-or-simple"],
    ["double-precision float", "fb3ff8000000000000", "float-or-simple"],
    ["undefined", "f7", "float-or-simple"],
    ["tag 1 (epoch time)", "c11a514b67b0", "tag"],
    ["reserved additional info 28", "1c", "reserved-info"],
    ["invalid UTF-8", "62c328", "invalid-utf8"],
    ["integer map key", "a10102", "key-not-text"],
    ["unsorted map keys", "a2616201616101", "keys-unsorted"],
    ["longer key before shorter key", "a262616101616202", "keys-unsorted"],
    ["duplicate map key", "a2616101616102", "duplicate-key"],
    ["truncated byte string", "4401", "truncated"],
    ["empty input", "", "truncated"],
    ["trailing bytes after the item", "0000", "trailing-bytes"],
  ];
  return {
    description:
      "Canonical CBOR (RFC 8949 §4.2.1 core deterministic, fitb subset). valid: decode(hex) == value and encode(value) == hex. invalid: decode(hex) fails with error.",
    valid: valid.map(([name, value]) => ({ name, hex: toHex(encodeCanonical(value)), value: toVectorJson(value) })),
    invalid: invalid.map(([name, hex, error]) => ({ name, hex, error })),
  };
}

function frameVectors(
  m: ReturnType<typeof material>,
  s: ReturnType<typeof buildSession>,
  pubSigned: { body: Uint8Array; sig: Uint8Array },
  adminSigned: { body: Uint8Array; sig: Uint8Array },
): VectorJson {
  const F = FrameType;
  const frames: FrameVector[] = [
    frameVector("HELLO from a client", { type: F.HELLO, body: s.clientHello }),
    frameVector("HELLO_ACK to a client", { type: F.HELLO_ACK, body: s.clientAck }),
    frameVector("AUTH from a client", { type: F.AUTH, body: s.clientAuth }),
    frameVector("HELLO from replica 1 to replica 0", { type: F.HELLO, body: s.peerHello }),
    frameVector("HELLO_ACK from replica 0 to replica 1", { type: F.HELLO_ACK, body: s.peerAck }),
    frameVector("AUTH from replica 1", { type: F.AUTH, body: s.peerAuth }),
    frameVector("ERROR with a reference", {
      type: F.ERROR,
      body: { code: "BAD_SIGNATURE", reason: "request 41: signature does not verify", ref: 41 },
    }),
    frameVector("ERROR without a reference", { type: F.ERROR, body: { code: "TOO_LARGE", reason: "frame of 5000000 bytes" } }),
    frameVector("PING", { type: F.PING, body: { n: 7 } }),
    frameVector("PONG", { type: F.PONG, body: { n: 7 } }),
    frameVector("REQUEST publishing two events", { type: F.REQUEST, body: pubSigned }),
    frameVector("REQUEST creating a channel", { type: F.REQUEST, body: adminSigned }),
    frameVector("REPLY to a publish on a total-order channel", {
      type: F.REPLY,
      body: { seq: 41, replica: 2, d: bytesOf(32, 0xd1), ok: true, res: { t: "pub", tag: "net.links", span: 2, first: 1000 } },
    }),
    frameVector("REPLY to a publish on an unordered channel", {
      type: F.REPLY,
      body: { seq: 41, replica: 2, d: bytesOf(32, 0xd2), ok: true, res: { t: "pub", tag: "net.links", span: 2 } },
    }),
    frameVector("REPLY to an admin command", {
      type: F.REPLY,
      body: { seq: 43, replica: 0, d: bytesOf(32, 0xd3), ok: true, res: { t: "admin", cmd: "create-channel" } },
    }),
    frameVector("REPLY refusing a request", {
      type: F.REPLY,
      body: { seq: 43, replica: 1, d: bytesOf(32, 0xd4), ok: false, code: "UNAUTHORIZED", reason: "not an admin key" },
    }),
    frameVector("QUERY status", { type: F.QUERY, body: { id: 1, q: "status" } }),
    frameVector("QUERY client-seq of a publish space", { type: F.QUERY, body: { id: 4, q: "client-seq", tag: "net.links" } }),
    frameVector("QUERY channel-info", { type: F.QUERY, body: { id: 2, q: "channel-info", tag: "sec.alerts" } }),
    frameVector("QUERY_REPLY with a result", {
      type: F.QUERY_REPLY,
      body: { id: 3, replica: 0, ok: true, res: { channels: ["net.links", "sec.alerts"], next: 12 } },
    }),
    frameVector("QUERY_REPLY with an error", {
      type: F.QUERY_REPLY,
      body: { id: 2, replica: 0, ok: false, code: "UNKNOWN_CHANNEL", reason: "no channel sec.alerts" },
    }),
    frameVector("EPOCH: the replica's group entered epoch 2", { type: F.EPOCH, body: { replica: 3, epoch: 2 } }),
    frameVector("SUBSCRIBE from a channel sequence number", { type: F.SUBSCRIBE, body: { sub: 1, tag: "sec.alerts", from: 1000 } }),
    frameVector("SUBSCRIBE to new events only", { type: F.SUBSCRIBE, body: { sub: 2, tag: "net.links" } }),
    frameVector("SUBSCRIBE shared (version 4: live batches may come in one frame with other subscriptions)", {
      type: F.SUBSCRIBE,
      body: { sub: 3, tag: "net.links", shared: true },
    }),
    frameVector("UNSUBSCRIBE", { type: F.UNSUBSCRIBE, body: { sub: 1 } }),
    frameVector("SUB_OK", { type: F.SUB_OK, body: { sub: 1, replica: 0, next: 1000 } }),
    frameVector("EVENTS delivering one published batch", {
      type: F.EVENTS,
      body: { sub: 1, tag: "net.links", seq: 1000, req: pubSigned, replica: 0 },
    }),
    frameVector("EVENTS delivering one batch to two shared subscriptions (version 4)", {
      type: F.EVENTS,
      body: { subs: [2, 3], tag: "net.links", seq: 1000, req: pubSigned, replica: 0 },
    }),
    frameVector("SUB_END after trimmed history", {
      type: F.SUB_END,
      body: { sub: 1, replica: 0, code: "TRIMMED", reason: "history starts at 1200", oldest: 1200 },
    }),
    frameVector("PEER carrying an ordering message, MAC under K_i2r", {
      type: F.PEER,
      body: { seq: 1, msg: s.peerMsg, mac: s.peerMac },
    }),
  ];
  return {
    description:
      "One valid frame of each type (and variants). hex is the whole frame: u32 length, type byte, canonical CBOR payload. body is the payload's meaning.",
    frames: frames as unknown as VectorJson,
    keys: { client: toVectorJson(m.clientKey), replica0: toVectorJson(m.replicaKey), replica1: toVectorJson(m.peerKey) },
  };
}

function invalidFrameVectors(): VectorJson {
  const hexFrame = (type: number, payload: Canonical | Uint8Array, raw = false): string =>
    toHex(encodeFrame(type, raw ? (payload as Uint8Array) : encodeCanonical(payload as Canonical)));
  const cases: Array<[string, string, string, boolean]> = [
    ["length field above 4 MiB", "00400001" + "23", "oversized", true],
    ["length field of zero", "00000000", "empty-frame", true],
    ["stream ends inside a frame", "0000000a1001", "truncated", false],
    ["unassigned type 0x00", hexFrame(0x00, { n: 1 }), "unknown-type", false],
    ["unassigned type 0x7f", hexFrame(0x7f, { n: 1 }), "unknown-type", false],
    ["payload not CBOR (truncated item)", hexFrame(FrameType.PING, fromHex("a1616e"), true), "malformed-cbor", false],
    [
      "payload not canonical (unsorted keys)",
      hexFrame(FrameType.ERROR, fromHex(`a266726561736f6e6064636f646569${toHex(utf8.encode("BAD_FRAME"))}`), true),
      "malformed-cbor",
      false,
    ],
    ["payload with a float", hexFrame(FrameType.PING, fromHex("a1616efb3ff8000000000000"), true), "malformed-cbor", false],
    ["payload with trailing bytes", hexFrame(FrameType.PING, fromHex("a1616e0700"), true), "trailing-bytes", false],
    ["PING with a negative n", hexFrame(FrameType.PING, { n: -1 }), "schema", false],
    ["PING with an unknown field", hexFrame(FrameType.PING, { n: 1, x: 1 }), "schema", false],
    ["SUBSCRIBE with a bad tag", hexFrame(FrameType.SUBSCRIBE, { sub: 1, tag: "Net..Links" }), "schema", false],
    ["AUTH with a short signature", hexFrame(FrameType.AUTH, { sig: bytesOf(63, 0) }), "schema", false],
    ["ERROR with an unknown code", hexFrame(FrameType.ERROR, { code: "OOPS", reason: "" }), "schema", false],
    ["HELLO of protocol version 1 (no MACs on client frames)", hexFrame(FrameType.HELLO, { v: 1, role: "client" }), "bad-version", false],
    ["HELLO of protocol version 5", hexFrame(FrameType.HELLO, { v: 5, role: "client" }), "bad-version", false],
    [
      "HELLO of protocol version 2 (before MACs covered the payload digest)",
      hexFrame(FrameType.HELLO, { v: 2, role: "client" }),
      "bad-version",
      false,
    ],
  ];
  return {
    description:
      "Byte streams that must be refused. error is the WireError kind; fatal means the decoder is poisoned (FrameDecoder) rather than the frame alone being refused (decodeFrameBody). 'truncated' is reported by FrameDecoder.finish() at end of stream.",
    invalid: cases.map(([name, hex, error, fatal]) => ({ name, hex, error, fatal })),
  };
}

function requestVectors(m: ReturnType<typeof material>, r: ReturnType<typeof buildRequests>): VectorJson {
  const valid = Object.entries(r).map(([name, request]) => ({
    name,
    hex: toHex(encodeRequestBody(request)),
    request: toVectorJson(request as unknown as Canonical),
  }));
  const base = { v: 1, client: m.clientKey, seq: 1, ts: TS_MS };
  const invalidCases: Array<[string, Canonical, string]> = [
    ["span does not match the number of events", { ...base, span: 3, op: { t: "pub", tag: "a", events: [bytesOf(1, 0)] } }, "schema"],
    ["admin command with span 2", { ...base, span: 2, op: { t: "admin", cmd: { t: "destroy-channel", tag: "a" } } }, "schema"],
    ["publish with no events", { ...base, span: 0, op: { t: "pub", tag: "a", events: [] } }, "schema"],
    ["seq 0", { ...base, seq: 0, span: 1, op: { t: "pub", tag: "a", events: [bytesOf(1, 0)] } }, "schema"],
    ["tag with an upper-case letter", { ...base, span: 1, op: { t: "pub", tag: "Net", events: [bytesOf(1, 0)] } }, "schema"],
    ["tag with an empty segment", { ...base, span: 1, op: { t: "pub", tag: "a..b", events: [bytesOf(1, 0)] } }, "schema"],
    ["tag of 129 bytes", { ...base, span: 1, op: { t: "pub", tag: "a".repeat(129), events: [bytesOf(1, 0)] } }, "schema"],
    ["client key of 31 bytes", { ...base, client: bytesOf(31, 0), span: 1, op: { t: "pub", tag: "a", events: [bytesOf(1, 0)] } }, "schema"],
    [
      "last sequence number above 2^53-1",
      { ...base, seq: Number.MAX_SAFE_INTEGER, span: 2, op: { t: "pub", tag: "a", events: [bytesOf(1, 0), bytesOf(1, 0)] } },
      "schema",
    ],
    ["unknown admin command", { ...base, span: 1, op: { t: "admin", cmd: { t: "reboot" } } }, "schema"],
    ["version 3", { ...base, v: 3, span: 1, op: { t: "pub", tag: "a", events: [bytesOf(1, 0)] } }, "bad-version"],
  ];
  return {
    description:
      "Request bodies (what a client signs, REQUEST.body). valid: decodeRequestBody(hex) == request and encodeRequestBody(request) == hex. invalid: decodeRequestBody(hex) fails with error.",
    valid: valid as unknown as VectorJson,
    invalid: invalidCases.map(([name, value, error]) => ({ name, hex: toHex(encodeCanonical(value)), error })),
  };
}

function sessionVectors(
  m: ReturnType<typeof material>,
  s: ReturnType<typeof buildSession>,
  pubSigned: { body: Uint8Array; sig: Uint8Array },
): VectorJson {
  return {
    description:
      "Handshake transcripts, signatures and session keys. Secret keys are SHA-256 of the labels (test keys only). T = transcript; responder signs 'fitb/v1/session/responder' 0x00 T, initiator signs 'fitb/v1/session/initiator' 0x00 T. Session keys: HKDF-SHA-256(ikm = X25519 shared secret, salt = SHA-256(T), info = domain, 32 bytes), with the fitb/v1/client-key/ domains for a client session and the fitb/v1/peer-key/ domains for a peer session. PEER mac = HMAC-SHA-256(K_i2r, 'fitb/v1/peer-mac' 0x00 type u64be(seq) msg). A client session frame after AUTH ends in HMAC-SHA-256(K_dir, 'fitb/v1/client-mac/payload-sha256' 0x00 u64be(seq) type SHA-256(payload)), seq counted from 1 per direction and not sent; its length field counts the MAC.",
    labels: TEST_LABELS as unknown as VectorJson,
    keys: {
      clientSecret: toHex(m.clientSeed),
      client: toHex(m.clientKey),
      replica0Secret: toHex(m.replicaSeed),
      replica0: toHex(m.replicaKey),
      replica1Secret: toHex(m.peerSeed),
      replica1: toHex(m.peerKey),
      replica1EphSecret: toHex(testSeed(TEST_LABELS.peerEph)),
      replica1Eph: toHex(m.peerEph.pub),
      replica0EphSecret: toHex(testSeed(TEST_LABELS.replicaEph)),
      replica0Eph: toHex(m.replicaEph.pub),
      clientEphSecret: toHex(testSeed(TEST_LABELS.clientEph)),
      clientEph: toHex(m.clientEph.pub),
    },
    client: {
      transcript: toHex(s.clientT),
      responderSig: toHex(s.clientAck.sig),
      initiatorSig: toHex(s.clientAuth.sig),
      sharedSecret: toHex(s.clientShared),
      salt: toHex(s.clientSalt),
      keyInitiatorToResponder: toHex(s.clientKI2R),
      keyResponderToInitiator: toHex(s.clientKR2I),
      macSeq: 1,
      macType: FrameType.PING,
      macPayload: toHex(s.clientPingPayload),
      macPayloadDigest: toHex(sha256(s.clientPingPayload)),
      macInput: toHex(clientMacInput(1, FrameType.PING, sha256(s.clientPingPayload))),
      mac: toHex(s.clientPingMac),
      sealedFrame: toHex(s.clientPingSealed),
    },
    peer: {
      transcript: toHex(s.peerT),
      responderSig: toHex(s.peerAck.sig),
      initiatorSig: toHex(s.peerAuth.sig),
      sharedSecret: toHex(s.shared),
      salt: toHex(s.salt),
      keyInitiatorToResponder: toHex(s.kI2R),
      keyResponderToInitiator: toHex(s.kR2I),
      macSeq: 1,
      macType: FrameType.PEER,
      macMsg: toHex(s.peerMsg),
      macInput: toHex(peerMacInput(FrameType.PEER, 1, s.peerMsg)),
      mac: toHex(s.peerMac),
    },
    request: {
      body: toHex(pubSigned.body),
      signingInput: toHex(requestSigningInput(pubSigned.body)),
      sig: toHex(pubSigned.sig),
    },
    requestV2: requestV2Vector(m),
  };
}

/** A version 2 publish body: its signature covers 'fitb/v1/request-digest' 0x00 SHA-256(body). */
function requestV2Vector(m: ReturnType<typeof material>): VectorJson {
  const body = encodeRequestBody({ ...buildRequests(m).pub, v: 2 });
  const digest = sha256(body);
  const input = signingInput(DOMAIN_REQUEST_DIGEST, digest);
  return { body: toHex(body), bodyDigest: toHex(digest), signingInput: toHex(input), sig: toHex(sign(m.clientSeed, input)) };
}

if (import.meta.main) {
  const dir = join(import.meta.dir, "..", "wire", "vectors");
  mkdirSync(dir, { recursive: true });
  for (const [file, content] of Object.entries(buildVectors())) {
    writeFileSync(join(dir, file), `${JSON.stringify(content, null, 2)}\n`);
    console.log(`wrote ${join("wire", "vectors", file)}`);
  }
}
