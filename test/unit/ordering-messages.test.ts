// Peer messages (core/ordering/PROTOCOL.md §3): the boundary check rebuilds exactly the known shape or
// refuses, every message survives canonical CBOR, and a signature covers domain, cluster
// and every signed field.
import { describe, expect, test } from "bun:test";
import { type Canonical, decodeCanonical, encodeCanonical } from "../../wire/canonical.ts";
import {
  type Checkpoint,
  type ClientRequest,
  DOMAIN,
  type Prepare,
  type PrePrepare,
  type ViewChange,
  NULL_DIGEST,
  type PeerMessage,
  signingBytes,
  validatePeerMessage,
} from "../../src/core/ordering/index.ts";

const d32 = (b: number) => new Uint8Array(32).fill(b);
const s64 = (b: number) => new Uint8Array(64).fill(b);
const req: ClientRequest = { client: "ab".repeat(32), seq: 3, span: 2, body: new Uint8Array([1, 2, 3]), sig: s64(9) };

const prepare: Prepare = { t: "PREPARE", view: 2, seq: 7, digest: d32(1), replica: 3, sig: s64(2) };
const checkpoint: Checkpoint = { t: "CHECKPOINT", seq: 8, digest: d32(4), replica: 1, sig: s64(5) };
const header: PrePrepare = { t: "PRE_PREPARE", view: 1, seq: 6, digest: d32(7), ts: 1_764_000_000_000, batch: null, sig: s64(8) };
const viewChange: ViewChange = {
  t: "VIEW_CHANGE",
  newView: 3,
  stableSeq: 8,
  stableDigest: d32(4),
  stableProof: [checkpoint],
  prepared: [{ view: 1, seq: 9, digest: d32(7), prePrepare: header, prepares: [prepare], batch: null }],
  replica: 2,
  sig: s64(3),
};

const SAMPLES: PeerMessage[] = [
  { ...header, batch: [req] },
  header,
  prepare,
  { ...prepare, t: "COMMIT" },
  checkpoint,
  viewChange,
  { t: "NEW_VIEW", view: 3, viewChanges: [viewChange], minS: 8, maxS: 9, o: [header], sig: s64(6) },
  { t: "FORWARD", requests: [req, { ...req, seq: 5 }] },
  { t: "STATE_REQUEST", kind: "decided", seq: 9, toSeq: 20, digest: null, nonce: 4 },
  { t: "STATE_REQUEST", kind: "batch", seq: 9, toSeq: 9, digest: d32(1), nonce: 5 },
  {
    t: "STATE_RESPONSE",
    kind: "decided",
    nonce: 4,
    items: [{ view: 1, seq: 9, batch: [req], commits: [{ ...prepare, t: "COMMIT" }], votes: [prepare, { ...prepare, t: "COMMIT" }] }],
    stable: { seq: 8, digest: d32(4), proof: [checkpoint] },
    lastExecuted: 12,
  },
  { t: "SUSPECT", view: 4 },
  { t: "EVIDENCE", a: header, b: { ...header, digest: d32(9) }, prepares: [] },
  { t: "EVIDENCE", a: header, b: null, prepares: [prepare, { ...prepare, replica: 0 }] },
];

describe("validatePeerMessage", () => {
  test("accepts every kind and rebuilds it field for field", () => {
    for (const m of SAMPLES) expect(validatePeerMessage(m)).toEqual(m);
  });

  test("every kind survives canonical CBOR and validates again", () => {
    for (const m of SAMPLES) {
      const back = decodeCanonical(encodeCanonical(m));
      expect(validatePeerMessage(back)).toEqual(m);
    }
  });

  test("a vote or checkpoint decoded from a padded message keeps its own bytes, not the message's", () => {
    const padding = new Uint8Array(1024 * 1024);
    for (const m of [prepare, { ...prepare, t: "COMMIT" }, checkpoint]) {
      const back = decodeCanonical(encodeCanonical({ ...m, padding } as unknown as Canonical));
      const v = validatePeerMessage(back) as Prepare | Checkpoint;
      expect(v).toEqual(m as Prepare | Checkpoint);
      expect(v.digest.buffer.byteLength).toBe(32);
      expect(v.sig.buffer.byteLength).toBe(64);
    }
  });

  test("unknown fields are dropped, not carried", () => {
    const v = validatePeerMessage({ ...prepare, extra: "x" });
    expect(v).toEqual(prepare);
    expect(v !== null && "extra" in v).toBe(false);
  });

  test("refuses wrong types, lengths, ranges and shapes without throwing", () => {
    const junk: unknown[] = [
      null,
      undefined,
      42,
      "PREPARE",
      [prepare],
      new Uint8Array(10),
      { t: "NOPE" },
      { ...prepare, view: -1 },
      { ...prepare, view: 1.5 },
      { ...prepare, view: 2 ** 60 },
      { ...prepare, seq: 0 },
      { ...prepare, digest: new Uint8Array(31) },
      { ...prepare, sig: new Uint8Array(63) },
      { ...prepare, replica: 256 },
      { ...prepare, replica: "1" },
      { ...header, batch: [{ ...req, client: "AB".repeat(32) }] },
      { ...header, batch: [{ ...req, span: 0 }] },
      { ...header, batch: [{ ...req, body: "bytes" }] },
      { ...header, batch: new Array(4097).fill(req) },
      { ...viewChange, prepared: [{ ...viewChange.prepared[0], prePrepare: prepare }] },
      { ...viewChange, stableProof: [prepare] },
      { t: "STATE_REQUEST", kind: "snapshot", seq: 1, toSeq: 1, digest: null, nonce: 0 },
      { t: "FORWARD", requests: "all" },
      { t: "SUSPECT", view: -1 },
      { t: "EVIDENCE", a: { ...header, batch: [req] }, b: null, prepares: [] },
      { t: "EVIDENCE", a: header, b: prepare, prepares: [] },
      { t: "EVIDENCE", a: header, b: null, prepares: [header] },
      Object.assign(Object.create({ inherited: true }), prepare),
      new Map([["t", "PREPARE"]]),
    ];
    for (const x of junk) expect(validatePeerMessage(x)).toBeNull();
  });

  test("a hostile getter is junk, not an exception", () => {
    const evil = { ...prepare };
    Object.defineProperty(evil, "view", {
      enumerable: true,
      get() {
        throw new Error("boom");
      },
    });
    expect(validatePeerMessage(evil)).toBeNull();
  });
});

describe("signingBytes", () => {
  test("starts with the kind's domain tag and a zero byte", () => {
    const b = signingBytes(prepare, "c1");
    const tag = new TextEncoder().encode(DOMAIN.PREPARE);
    expect(b.subarray(0, tag.length)).toEqual(tag);
    expect(b[tag.length]).toBe(0);
  });

  test("differs by kind, by cluster and by every signed field", () => {
    const base = signingBytes(prepare, "c1");
    const differ = (x: Uint8Array) => expect(Buffer.from(x).equals(Buffer.from(base))).toBe(false);
    differ(signingBytes({ ...prepare, t: "COMMIT" }, "c1"));
    differ(signingBytes(prepare, "c2"));
    differ(signingBytes({ ...prepare, view: 3 }, "c1"));
    differ(signingBytes({ ...prepare, seq: 8 }, "c1"));
    differ(signingBytes({ ...prepare, digest: d32(2) }, "c1"));
    differ(signingBytes({ ...prepare, replica: 0 }, "c1"));
  });

  test("ignores the signature itself and, for a proposal, the body", () => {
    expect(signingBytes({ ...prepare, sig: s64(0) }, "c")).toEqual(signingBytes(prepare, "c"));
    expect(signingBytes({ ...header, batch: [req] }, "c")).toEqual(signingBytes(header, "c"));
  });

  test("the null digest is 32 zero bytes", () => {
    expect(NULL_DIGEST).toEqual(new Uint8Array(32));
  });
});

describe("persisted records", () => {
  test("are canonical values: they survive canonical CBOR unchanged", async () => {
    const { ManualCluster } = await import("../../src/sim/cluster.ts");
    const c = new ManualCluster({ crypto: "fast" });
    for (let s = 1; s <= 5; s++) {
      c.submit(0, c.request(0, s));
      c.tick();
      c.deliverAll();
    }
    const records = c.records[1] ?? [];
    expect(new Set(records.map((r) => r.t))).toEqual(new Set(["view", "accept", "prepared", "decided", "checkpoint", "stable"]));
    for (const r of records) expect(decodeCanonical(encodeCanonical(r))).toEqual(r);
  });
});
