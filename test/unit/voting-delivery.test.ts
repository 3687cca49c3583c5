// Subscriber-side delivery voting (src/README.md §3 "subscriber delivers when"): f+1 matching
// (seq, digest) on byzantine/total, first valid copy elsewhere (on byzantine/none once f+1
// replicas vouch for the publisher key), in order with no gap and no duplicate, resume,
// bounded buffers, and per-replica accounting of bad copies. Publisher signatures are real
// ed25519 signatures under the request domain.
import { describe, expect, test } from "bun:test";
import { sha256 } from "@noble/hashes/sha2.js";
import { createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from "node:crypto";
import { toHex } from "../../wire/bytes.ts";
import { encodeCanonical } from "../../wire/canonical.ts";
import { nativeBytesEqual } from "../../src/crypto/encoding.ts";
import { REQUEST_SIGNATURE_DOMAIN, type FaultModel, type OrderMode } from "../../src/core/channels/index.ts";
import {
  COPY_KEYS_BYTES_MAX,
  COPY_KEYS_MAX,
  CopyKeys,
  DELIVERED_HISTORY_MAX,
  DELIVERY_BUFFERED_BATCHES_PER_REPLICA_MAX,
  DELIVERY_BUFFERED_BYTES_PER_REPLICA_MAX,
  DELIVERY_DEDUPE_RANGES_PER_PUBLISHER_MAX,
  DELIVERY_HELD_BYTES_PER_PUBLISHER_MAX,
  DELIVERY_HELD_COPIES_PER_PUBLISHER_MAX,
  DELIVERY_PUBLISHERS_MAX,
  DELIVERY_SIGNED_RANGES_PER_PUBLISHER_MAX,
  DELIVERY_UNKNOWN_PUBLISHER_COPIES_PER_REPLICA_MAX,
  DELIVERY_UNVOUCHED_PUBLISHERS_PER_REPLICA_MAX,
  DeliveryVoter,
  type BatchCopy,
  type DeliveryOutput,
  type DeliveryVoterOptions,
} from "../../src/core/voting/index.ts";

const hash = (bytes: Uint8Array): Uint8Array => sha256(bytes);
const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);
const text = (b: Uint8Array): string => new TextDecoder().decode(b);
const SPKI_ED25519_PREFIX = Buffer.from("302a300506032b6570032100", "hex");
const TAG = "sec.ids";

type Publisher = { key: Uint8Array; secret: KeyObject };

function publisher(): Publisher {
  const { publicKey, privateKey } = generateKeyPairSync("ed25519");
  const der = publicKey.export({ type: "spki", format: "der" });
  return { key: new Uint8Array(der.subarray(der.length - 32)), secret: privateKey };
}

function domainMessage(body: Uint8Array): Uint8Array {
  return new Uint8Array(Buffer.concat([Buffer.from(REQUEST_SIGNATURE_DOMAIN), Buffer.from([0]), body]));
}

const verifySignature = (body: Uint8Array, sig: Uint8Array, key: Uint8Array): boolean => {
  const publicKey = createPublicKey({ key: Buffer.concat([SPKI_ED25519_PREFIX, key]), format: "der", type: "spki" });
  return verify(null, domainMessage(body), publicKey, sig);
};

const ALICE = publisher();
const BOB = publisher();

/** A signed pub request of `events` with publisher seqs seq.. */
function signed(p: Publisher, seq: number, events: string[], tag = TAG, ts = 77, v = 1): { body: Uint8Array; sig: Uint8Array } {
  const evs = events.map(utf8);
  // The signature here is always over the body itself: these voters' check ignores the version.
  const body = encodeCanonical({ v, client: p.key, seq, span: evs.length, ts, op: { t: "pub", tag, events: evs } });
  return { body, sig: new Uint8Array(sign(null, domainMessage(body), p.secret)) };
}

function copy(firstSeq: number, s: { body: Uint8Array; sig: Uint8Array }, tsMs = 1000): BatchCopy {
  return { firstSeq, tsMs, ...s };
}

function voter(fault: FaultModel, order: OrderMode, extra: Partial<DeliveryVoterOptions> = {}): DeliveryVoter {
  return new DeliveryVoter({ tag: TAG, cls: { fault, order }, n: 4, f: 1, hash, verify: verifySignature, ...extra });
}

const delivered = (outputs: DeliveryOutput[]): Array<[number | null, string[]]> =>
  outputs.flatMap((o) => (o.t === "deliver" ? [[o.batch.seq, o.batch.events.map(text)] as [number | null, string[]]] : []));

const others = (outputs: DeliveryOutput[]): DeliveryOutput[] => outputs.filter((o) => o.t !== "deliver");

// A small channel history: three batches at channel seqs 1, 3 and 4.
const B1 = signed(ALICE, 1, ["a1", "a2"]);
const B3 = signed(BOB, 1, ["b1"]);
const B4 = signed(ALICE, 3, ["a3", "a4", "a5"]);

describe("the body's version reaches the signature check", () => {
  // Every rule checks signatures through `verify`, which must be told the version of the
  // body it checks (1: signed whole; 2: signed through its SHA-256): the one in the body.
  for (const [fault, order] of [
    ["byzantine", "total"],
    ["crash", "total"],
    ["byzantine", "none"],
    ["crash", "none"],
  ] as const) {
    test(`${fault}/${order}: each copy is checked with its own body's version`, () => {
      const seen: number[] = [];
      const v = voter(fault, order, {
        verify: (body, sig, key, version) => {
          seen.push(version);
          return verifySignature(body, sig, key);
        },
      });
      const v2 = signed(ALICE, 1, ["x"], TAG, 77, 2);
      for (const replica of [0, 1, 2]) v.onBatch(replica, copy(1, v2));
      expect(seen.length).toBeGreaterThan(0);
      expect(new Set(seen)).toEqual(new Set([2]));
    });
  }
});

describe("byzantine/total", () => {
  test("delivers only when f+1 distinct replicas sent the same (seq, digest)", () => {
    const v = voter("byzantine", "total");
    expect(v.onBatch(0, copy(1, B1))).toEqual([]);
    const out = v.onBatch(2, copy(1, B1));
    expect(delivered(out)).toEqual([[1, ["a1", "a2"]]]);
    const batch = out[0]?.t === "deliver" ? out[0].batch : null;
    expect(batch).toMatchObject({ tag: TAG, seq: 1, pubSeq: 1, tsMs: 1000, publisher: ALICE.key });
    expect(v.nextSeq).toBe(3);
    expect(v.onBatch(1, copy(1, B1))).toEqual([]);
    expect(v.stats()).toMatchObject({ deliveredBatches: 1, deliveredEvents: 2, duplicates: [0, 1, 0, 0], buffered: 0 });
  });

  test("duplicates from one replica never count twice", () => {
    const v = voter("byzantine", "total");
    for (let i = 0; i < 10; i++) expect(v.onBatch(3, copy(1, B1))).toEqual([]);
    expect(v.stats()).toMatchObject({ deliveredBatches: 0, duplicates: [0, 0, 0, 9], buffered: 1 });
  });

  test("f lying replicas cannot make a forged batch deliver", () => {
    const v = new DeliveryVoter({ tag: TAG, cls: { fault: "byzantine", order: "total" }, n: 7, f: 2, hash, verify: verifySignature });
    // Liars 5 and 6 agree on a validly signed request placed at the wrong seq, on an
    // altered timestamp, and on a body whose signature they cannot make.
    const altered = { body: B4.body.slice(), sig: B4.sig };
    altered.body[altered.body.length - 1] = (altered.body.at(-1) as number) ^ 1;
    for (const liar of [5, 6]) {
      expect(v.onBatch(liar, copy(1, B4))).toEqual([]);
      expect(v.onBatch(liar, copy(3, B3, 999))).toEqual([]);
      expect(v.onBatch(liar, copy(4, altered))).toEqual([{ t: "invalid", replica: liar, reason: "bad-signature" }]);
    }
    expect(v.stats()).toMatchObject({ deliveredBatches: 0, invalid: [0, 0, 0, 0, 0, 1, 1] });
    // The honest history still needs f+1 = 3 honest copies per batch.
    v.onBatch(0, copy(1, B1));
    v.onBatch(1, copy(1, B1));
    const out = v.onBatch(2, copy(1, B1));
    expect(delivered(out)).toEqual([[1, ["a1", "a2"]]]);
    // Delivering seq 1 exposes both liars' copies that contradicted it.
    expect(others(out)).toEqual([
      { t: "conflict", replica: 5, seq: 1, reason: "contradicts the batch delivered at this seq" },
      { t: "conflict", replica: 6, seq: 1, reason: "contradicts the batch delivered at this seq" },
    ]);
    for (const r of [0, 1]) v.onBatch(r, copy(3, B3));
    expect(delivered(v.onBatch(2, copy(3, B3)))).toEqual([[3, ["b1"]]]);
    expect(v.stats().conflicts).toEqual([0, 0, 0, 0, 0, 2, 2]);
  });

  test("conflicting digests at one seq: the f+1 side wins and the other sender is reported", () => {
    const v = voter("byzantine", "total");
    const forged = signed(ALICE, 1, ["a1", "FORGED"]);
    v.onBatch(0, copy(1, B1));
    v.onBatch(3, copy(1, forged));
    const out = v.onBatch(1, copy(1, B1));
    expect(delivered(out)).toEqual([[1, ["a1", "a2"]]]);
    expect(others(out)).toEqual([{ t: "conflict", replica: 3, seq: 1, reason: "contradicts the batch delivered at this seq" }]);
    // A late contradicting copy is reported too; a late matching one is a duplicate.
    expect(v.onBatch(2, copy(1, forged))).toEqual([
      { t: "conflict", replica: 2, seq: 1, reason: "contradicts the batch delivered at this seq" },
    ]);
    expect(v.onBatch(2, copy(1, B1))).toEqual([]);
  });

  test("a replica that sends two different batches at one seq is reported at once", () => {
    const v = voter("byzantine", "total");
    v.onBatch(1, copy(1, B1));
    expect(v.onBatch(1, copy(1, B1, 2000))).toEqual([
      { t: "conflict", replica: 1, seq: 1, reason: "sent two different batches at one seq" },
    ]);
  });

  test("out-of-order arrival is delivered in seq order with no gap and no duplicate", () => {
    const v = voter("byzantine", "total");
    expect(v.onBatch(0, copy(4, B4))).toEqual([]);
    expect(v.onBatch(1, copy(4, B4))).toEqual([]); // ready, but seq 1..3 are missing
    expect(v.onBatch(1, copy(3, B3))).toEqual([]);
    expect(v.onBatch(2, copy(3, B3))).toEqual([]);
    expect(v.onBatch(3, copy(1, B1))).toEqual([]);
    const out = v.onBatch(2, copy(1, B1));
    expect(delivered(out)).toEqual([
      [1, ["a1", "a2"]],
      [3, ["b1"]],
      [4, ["a3", "a4", "a5"]],
    ]);
    expect(v.nextSeq).toBe(7);
    expect(v.stats().buffered).toBe(0);
  });

  test("resume from a seq inside a batch delivers only the rest of it", () => {
    const v = voter("byzantine", "total", { fromSeq: 5 });
    v.onBatch(0, copy(1, B1)); // wholly before the resume point
    v.onBatch(0, copy(4, B4));
    const out = v.onBatch(3, copy(4, B4));
    expect(delivered(out)).toEqual([[5, ["a4", "a5"]]]);
    const batch = out[0]?.t === "deliver" ? out[0].batch : null;
    expect(batch?.pubSeq).toBe(4);
    expect(v.nextSeq).toBe(7);
    expect(v.stats()).toMatchObject({ duplicates: [1, 0, 0, 0], deliveredEvents: 2 });
  });

  test("the publisher signature is checked once per distinct copy, never for copies behind the resume point", () => {
    let checks = 0;
    const counting = (body: Uint8Array, sig: Uint8Array, key: Uint8Array): boolean => {
      checks++;
      return verifySignature(body, sig, key);
    };
    const v = voter("byzantine", "total", { fromSeq: 3, verify: counting });
    for (let r = 0; r < 4; r++) v.onBatch(r, copy(1, B1)); // ends before 3
    expect(checks).toBe(0);
    for (let r = 0; r < 4; r++) v.onBatch(r, copy(3, B3));
    expect(checks).toBe(1);
    // Late copies of seq 1 from everyone, and of seq 3 from the two after its delivery.
    expect(v.stats()).toMatchObject({ deliveredBatches: 1, duplicates: [1, 1, 2, 2] });
  });

  test("copies that are not valid are dropped and counted per replica", () => {
    const v = voter("byzantine", "total", { acceptPublisher: (k) => Buffer.from(k).equals(Buffer.from(ALICE.key)) });
    const wrongTag = signed(ALICE, 1, ["x"], "other.tag");
    const badSig = { body: B1.body, sig: B3.sig };
    const reasons = [
      v.onBatch(0, copy(1, wrongTag)),
      v.onBatch(1, copy(1, badSig)),
      v.onBatch(2, copy(1, { body: new Uint8Array([0xff]), sig: B1.sig })),
      v.onBatch(2, copy(1, { body: encodeCanonical({ v: 2 }), sig: B1.sig })),
      v.onBatch(3, copy(0, B1)),
      v.onBatch(3, copy(3, B3)), // Bob is not accepted by the filter
    ].map((out) => (out[0]?.t === "invalid" ? out[0].reason : "none"));
    expect(reasons).toEqual(["wrong-tag", "bad-signature", "undecodable", "malformed", "bad-position", "publisher-refused"]);
    expect(v.onBatch(9, copy(1, B1))).toEqual([]);
    expect(v.stats()).toMatchObject({ invalid: [1, 1, 2, 2], unknownReplica: 1, deliveredBatches: 0, buffered: 0 });
  });

  test("a replica's buffer is bounded; overflow is reported and other replicas go on", () => {
    const v = voter("byzantine", "total");
    const far = (i: number): BatchCopy => copy(1000 + 10 * i, B3);
    for (let i = 0; i < DELIVERY_BUFFERED_BATCHES_PER_REPLICA_MAX; i++) expect(v.onBatch(3, far(i))).toEqual([]);
    expect(v.onBatch(3, far(DELIVERY_BUFFERED_BATCHES_PER_REPLICA_MAX))).toEqual([
      { t: "overflow", replica: 3, nextSeq: 1, reason: `more than ${DELIVERY_BUFFERED_BATCHES_PER_REPLICA_MAX} batches buffered` },
    ]);
    expect(v.stats()).toMatchObject({ buffered: DELIVERY_BUFFERED_BATCHES_PER_REPLICA_MAX, overflows: [0, 0, 0, 1] });
    v.onBatch(0, copy(1, B1));
    expect(delivered(v.onBatch(1, copy(1, B1)))).toEqual([[1, ["a1", "a2"]]]);
  });

  test("buffered bytes per replica are bounded too", () => {
    const v = voter("byzantine", "total");
    const big = signed(ALICE, 1, ["x".repeat(1024 * 1024)]);
    const perCopy = big.body.length + big.sig.length;
    const fits = Math.floor(DELIVERY_BUFFERED_BYTES_PER_REPLICA_MAX / perCopy);
    for (let i = 0; i < fits; i++) expect(v.onBatch(2, copy(100 + i, big))).toEqual([]);
    expect(v.onBatch(2, copy(100 + fits, big))).toEqual([
      { t: "overflow", replica: 2, nextSeq: 1, reason: `more than ${DELIVERY_BUFFERED_BYTES_PER_REPLICA_MAX} bytes buffered` },
    ]);
  });

  test("delivery frees buffer space", () => {
    const v = voter("byzantine", "total");
    let seq = 1;
    for (let i = 0; i < DELIVERY_BUFFERED_BATCHES_PER_REPLICA_MAX * 3; i++) {
      const b = signed(ALICE, seq, ["e"]);
      expect(v.onBatch(0, copy(seq, b))).toEqual([]);
      expect(delivered(v.onBatch(1, copy(seq, b)))).toEqual([[seq, ["e"]]]);
      seq++;
    }
    expect(v.stats()).toMatchObject({ buffered: 0, overflows: [0, 0, 0, 0] });
  });

  test("trimmed needs f+1 replicas, names the smallest oldest seq, and skipTo resumes there", () => {
    const v = voter("byzantine", "total");
    expect(v.onTrimmed(3, 1_000_000)).toEqual([]); // one liar cannot invent a gap
    expect(v.onTrimmed(0, 1)).toEqual([]); // not beyond the next seq: no gap
    expect(v.onTrimmed(1, 4)).toEqual([{ t: "trimmed", nextSeq: 1, oldestSeq: 4 }]);
    expect(v.onTrimmed(2, 4)).toEqual([]); // reported once per position
    expect(v.nextSeq).toBe(1); // nothing skipped without the caller's consent
    v.onBatch(0, copy(4, B4));
    expect(delivered(v.skipTo(4))).toEqual([]);
    expect(delivered(v.onBatch(1, copy(4, B4)))).toEqual([[4, ["a3", "a4", "a5"]]]);
    expect(v.skipTo(2)).toEqual([]); // never backwards
    expect(v.nextSeq).toBe(7);
  });

  test("skipTo keeps a buffered batch that straddles the new position", () => {
    const v = voter("byzantine", "total");
    v.onBatch(0, copy(4, B4));
    v.onBatch(1, copy(4, B4));
    v.onBatch(2, copy(1, B1)); // ends before 5: freed by the skip
    const out = v.skipTo(5);
    expect(delivered(out)).toEqual([[5, ["a4", "a5"]]]);
    expect(v.stats().buffered).toBe(0);
  });

  test("late copies older than the remembered history are dropped as duplicates", () => {
    const v = voter("byzantine", "total");
    let seq = 1;
    const first = signed(ALICE, 1, ["e"]);
    for (let i = 0; i <= DELIVERED_HISTORY_MAX; i++) {
      const b = i === 0 ? first : signed(ALICE, seq, ["e"]);
      v.onBatch(0, copy(seq, b));
      v.onBatch(1, copy(seq, b));
      seq++;
    }
    expect(v.onBatch(2, copy(1, first))).toEqual([]);
    expect(v.stats().duplicates[2]).toBe(1);
  });

  describe("a copy equal byte for byte to one already keyed is not hashed again", () => {
    /** The voter's hash, counting the batches it hashes. */
    function counted(): { hashes: number; options: Partial<DeliveryVoterOptions> } {
      const state = { hashes: 0, options: {} as Partial<DeliveryVoterOptions> };
      state.options = {
        hash: (bytes: Uint8Array) => {
          state.hashes++;
          return hash(bytes);
        },
      };
      return state;
    }
    /** A byzantine/total voter on `tag` keying its copies through a memo shared with others (a client's). */
    const sharingVoter = (tag: string, shared: CopyKeys, hashFn: DeliveryVoterOptions["hash"]): DeliveryVoter =>
      new DeliveryVoter({
        tag,
        cls: { fault: "byzantine", order: "total" },
        n: 4,
        f: 1,
        hash: hashFn,
        verify: () => true,
        copyKeys: shared,
      });
    /** Copies in fresh buffers, as each replica's frame is. */
    const fresh = (firstSeq: number, s: { body: Uint8Array; sig: Uint8Array }, tsMs = 1000): BatchCopy =>
      copy(firstSeq, { body: s.body.slice(), sig: s.sig.slice() }, tsMs);

    test("every replica's copy of one batch, before and after delivery, costs one hash", () => {
      const count = counted();
      const v = voter("byzantine", "total", count.options);
      v.onBatch(0, fresh(1, B1));
      expect(delivered(v.onBatch(1, fresh(1, B1)))).toEqual([[1, ["a1", "a2"]]]);
      expect(v.onBatch(2, fresh(1, B1))).toEqual([]);
      expect(v.onBatch(3, fresh(1, B1))).toEqual([]);
      expect(count.hashes).toBe(1);
      expect(v.stats()).toMatchObject({ duplicates: [0, 0, 1, 1], conflicts: [0, 0, 0, 0] });
    });

    test("a copy that differs in a byte of its body or signature, or in its timestamp, is hashed and votes apart", () => {
      const count = counted();
      const acceptAll = () => true;
      const v = voter("byzantine", "total", { ...count.options, verify: acceptAll });
      const body = B1.body.slice();
      body[body.length - 1] = (body.at(-1) as number) ^ 1;
      const sig = B1.sig.slice();
      sig[0] = (sig[0] as number) ^ 1;
      expect(v.onBatch(0, fresh(1, B1))).toEqual([]);
      expect(v.onBatch(1, copy(1, { body, sig: B1.sig }))).toEqual([]);
      expect(v.onBatch(2, copy(1, { body: B1.body.slice(), sig }))).toEqual([]);
      expect(v.onBatch(3, fresh(1, B1, 999))).toEqual([]);
      expect(count.hashes).toBe(4);
      expect(v.stats()).toMatchObject({ deliveredBatches: 0, buffered: 4 });
    });

    test("a bad copy keyed first at a seq does not stand in for the good copies after it", () => {
      const v = voter("byzantine", "total");
      const body = B1.body.slice();
      body[body.length - 1] = (body.at(-1) as number) ^ 1;
      expect(v.onBatch(0, copy(1, { body, sig: B1.sig }))).toEqual([{ t: "invalid", replica: 0, reason: "bad-signature" }]);
      expect(v.onBatch(1, fresh(1, B1))).toEqual([]);
      expect(delivered(v.onBatch(2, fresh(1, B1)))).toEqual([[1, ["a1", "a2"]]]);
    });

    test("with the client's native comparison too; and a handler writing over delivered events changes no later key", () => {
      const count = counted();
      const v = voter("byzantine", "total", {
        copyKeys: new CopyKeys(count.options.hash as DeliveryVoterOptions["hash"], nativeBytesEqual),
      });
      v.onBatch(0, fresh(1, B1));
      const out = v.onBatch(1, fresh(1, B1));
      expect(delivered(out)).toEqual([[1, ["a1", "a2"]]]);
      // The handler scribbles over what it was given (views into replica 1's copy).
      if (out[0]?.t === "deliver") for (const event of out[0].batch.events) event.fill(0x58);
      expect(v.onBatch(2, fresh(1, B1))).toEqual([]);
      expect(count.hashes).toBe(1);
      expect(v.stats()).toMatchObject({ duplicates: [0, 0, 1, 0], conflicts: [0, 0, 0, 0] });
    });

    test("the memo is bounded in bytes: past COPY_KEYS_BYTES_MAX the oldest seq is hashed again", () => {
      const count = counted();
      const v = voter("byzantine", "total", { ...count.options, verify: () => true });
      const big = (seq: number) => signed(ALICE, seq, ["x".repeat(600_000)]);
      const perBatch = big(1).body.length;
      const batches = Math.floor(COPY_KEYS_BYTES_MAX / perBatch) + 1;
      expect(batches).toBeLessThan(COPY_KEYS_MAX);
      const first = big(1);
      for (let seq = 1; seq <= batches; seq++) {
        const b = seq === 1 ? first : big(seq);
        v.onBatch(0, fresh(seq, b));
        v.onBatch(1, fresh(seq, b));
      }
      expect(count.hashes).toBe(batches);
      v.onBatch(2, fresh(batches, big(batches)));
      expect(count.hashes).toBe(batches);
      v.onBatch(2, fresh(1, first));
      expect(count.hashes).toBe(batches + 1);
    });

    test("one memo shared by a client's voters: the same seq on two channels never takes the other's key", () => {
      const count = counted();
      const shared = new CopyKeys(count.options.hash as DeliveryVoterOptions["hash"], nativeBytesEqual);
      const hashFn = count.options.hash as DeliveryVoterOptions["hash"];
      const a = sharingVoter("a.one", shared, hashFn);
      const b = sharingVoter("b.two", shared, hashFn);
      const onA = signed(ALICE, 1, ["x"], "a.one");
      const onB = signed(ALICE, 1, ["y"], "b.two");
      a.onBatch(0, fresh(1, onA));
      b.onBatch(0, fresh(1, onB));
      expect(delivered(a.onBatch(1, fresh(1, onA)))).toEqual([[1, ["x"]]]);
      expect(delivered(b.onBatch(1, fresh(1, onB)))).toEqual([[1, ["y"]]]);
      expect(count.hashes).toBe(2);
    });

    test("a memo shared by two voters holds its bound across both: one voter's copies push out the other's oldest", () => {
      const count = counted();
      const hashFn = count.options.hash as DeliveryVoterOptions["hash"];
      const shared = new CopyKeys(hashFn, nativeBytesEqual);
      const a = sharingVoter("a.one", shared, hashFn);
      const b = sharingVoter("b.two", shared, hashFn);
      const first = signed(ALICE, 1, ["e"], "a.one");
      for (let seq = 1; seq <= COPY_KEYS_MAX; seq++) {
        const batch = seq === 1 ? first : signed(ALICE, seq, ["e"], "a.one");
        a.onBatch(0, fresh(seq, batch));
        a.onBatch(1, fresh(seq, batch));
      }
      // A late copy of a's first seq still takes its key...
      a.onBatch(2, fresh(1, first));
      expect(count.hashes).toBe(COPY_KEYS_MAX);
      // ...until one copy on b's channel takes the memo's last place.
      b.onBatch(0, fresh(1, signed(BOB, 1, ["f"], "b.two")));
      a.onBatch(3, fresh(1, first));
      expect(count.hashes).toBe(COPY_KEYS_MAX + 2);
    });

    test("the memo is bounded: a seq keyed more than COPY_KEYS_MAX seqs ago is hashed again", () => {
      const count = counted();
      const v = voter("byzantine", "total", count.options);
      const first = signed(ALICE, 1, ["e"]);
      for (let seq = 1; seq <= COPY_KEYS_MAX + 1; seq++) {
        const b = seq === 1 ? first : signed(ALICE, seq, ["e"]);
        v.onBatch(0, fresh(seq, b));
        v.onBatch(1, fresh(seq, b));
      }
      expect(count.hashes).toBe(COPY_KEYS_MAX + 1);
      expect(v.onBatch(2, fresh(1, first))).toEqual([]);
      expect(count.hashes).toBe(COPY_KEYS_MAX + 2);
      expect(v.stats().duplicates[2]).toBe(1);
    });
  });
});

describe("crash/total", () => {
  test("the first copy covering the next seq is delivered, in order", () => {
    const v = voter("crash", "total");
    expect(v.onBatch(2, copy(3, B3))).toEqual([]);
    expect(delivered(v.onBatch(1, copy(1, B1)))).toEqual([
      [1, ["a1", "a2"]],
      [3, ["b1"]],
    ]);
    expect(v.onBatch(0, copy(1, B1))).toEqual([]);
    expect(v.onBatch(0, copy(3, B3, 5))).toEqual([
      { t: "conflict", replica: 0, seq: 3, reason: "contradicts the batch delivered at this seq" },
    ]);
  });

  test("an invalid first copy is dropped and the next valid one delivered", () => {
    const v = voter("crash", "total");
    expect(v.onBatch(0, copy(1, { body: B1.body, sig: B4.sig }))).toEqual([{ t: "invalid", replica: 0, reason: "bad-signature" }]);
    expect(delivered(v.onBatch(1, copy(1, B1)))).toEqual([[1, ["a1", "a2"]]]);
    expect(v.stats().invalid).toEqual([1, 0, 0, 0]);
  });

  test("one replica's trimmed notice is enough", () => {
    const v = voter("crash", "total");
    expect(v.onTrimmed(2, 10)).toEqual([{ t: "trimmed", nextSeq: 1, oldestSeq: 10 }]);
  });
});

describe("unordered channels", () => {
  test("crash/none delivers the first valid copy of each publisher range once", () => {
    const v = voter("crash", "none");
    const a5 = signed(ALICE, 5, ["late"]);
    expect(delivered(v.onBatch(0, copy(17, a5)))).toEqual([[null, ["late"]]]);
    expect(delivered(v.onBatch(1, copy(2, B1)))).toEqual([[null, ["a1", "a2"]]]);
    expect(v.onBatch(2, copy(99, B1))).toEqual([]);
    expect(delivered(v.onBatch(2, copy(1, B3)))).toEqual([[null, ["b1"]]]);
    expect(v.onTrimmed(0, 50)).toEqual([]);
    expect(v.stats()).toMatchObject({ deliveredBatches: 3, duplicates: [0, 0, 1, 0], held: 0 });
  });

  test("byzantine/none delivers each publisher range once, from the copy that makes f+1 replicas vouch for the key", () => {
    const v = voter("byzantine", "none");
    const a5 = signed(ALICE, 5, ["late"]);
    expect(v.onBatch(0, copy(17, a5))).toEqual([]);
    expect(delivered(v.onBatch(1, copy(2, a5)))).toEqual([[null, ["late"]]]);
    // Alice is vouched for now: her other ranges need one copy each.
    expect(delivered(v.onBatch(1, copy(2, B1)))).toEqual([[null, ["a1", "a2"]]]);
    expect(v.onBatch(2, copy(99, B1))).toEqual([]);
    expect(v.onBatch(2, copy(1, B3))).toEqual([]);
    expect(delivered(v.onBatch(3, copy(1, B3)))).toEqual([[null, ["b1"]]]);
    // The held copy is delivered; the one that completed the vouch is its duplicate.
    expect(v.stats()).toMatchObject({ deliveredBatches: 3, duplicates: [0, 1, 1, 1], held: 0 });
  });

  test("a forged copy is dropped, counted, vouches for nothing, and does not block the genuine one", () => {
    const v = voter("byzantine", "none");
    const forged = { body: signed(ALICE, 1, ["FORGED"]).body, sig: B1.sig };
    // Held unchecked while no other replica sent a copy of Alice's key...
    expect(v.onBatch(3, copy(1, forged))).toEqual([]);
    // ...checked when a second replica's copy would make f+1: it does not count as replica 3's vouch.
    expect(v.onBatch(0, copy(1, B1))).toEqual([{ t: "invalid", replica: 3, reason: "bad-signature" }]);
    expect(delivered(v.onBatch(2, copy(1, B1)))).toEqual([[null, ["a1", "a2"]]]);
    expect(v.stats().invalid).toEqual([0, 0, 0, 1]);
  });

  test("another event under delivered numbers, signed by the same key (two processes sharing it), is delivered as well and reported; copies of either again are duplicates", () => {
    for (const fault of ["crash", "byzantine"] as const) {
      const v = voter(fault, "none");
      const theOther = signed(ALICE, 1, ["other 1", "other 2"]); // Alice 1..2, as B1
      v.onBatch(0, copy(1, B1));
      if (fault === "byzantine") v.onBatch(3, copy(1, B1)); // f+1 vouch for Alice
      const out = v.onBatch(1, copy(1, theOther));
      expect(delivered(out)).toEqual([[null, ["other 1", "other 2"]]]);
      expect(others(out)).toEqual([
        {
          t: "conflict",
          replica: 1,
          seq: 1,
          reason: `another event under publisher ${toHex(ALICE.key).slice(0, 16)}...'s seq 1..2 than the one delivered, signed by the same key (two processes publishing with one key to this channel); delivered as well`,
        },
      ]);
      expect(v.onBatch(2, copy(1, theOther))).toEqual([]);
      expect(v.onBatch(2, copy(1, B1))).toEqual([]);
      expect(v.stats().conflicts).toEqual([0, 1, 0, 0]);
    }
  });

  test("a forged other event under delivered numbers is invalid; one under numbers whose signature is no longer kept is a duplicate", () => {
    const v = voter("crash", "none");
    v.onBatch(0, copy(1, B1));
    const forged = { body: signed(ALICE, 1, ["forged", "too"]).body, sig: B4.sig };
    expect(v.onBatch(1, copy(1, forged))).toEqual([{ t: "invalid", replica: 1, reason: "bad-signature" }]);
    for (let i = 0; i < DELIVERY_SIGNED_RANGES_PER_PUBLISHER_MAX; i++) v.onBatch(0, copy(1, signed(ALICE, 3 + i, [`later ${i}`])));
    expect(v.onBatch(1, copy(1, signed(ALICE, 1, ["too", "late"])))).toEqual([]);
    expect(v.stats().conflicts).toEqual([0, 0, 0, 0]);
  });

  test("other events: the publisher's 16 latest ranges are kept and the 17th is not; up to 4 events per range, a 5th is a duplicate and costs no check", () => {
    let verifies = 0;
    const counting = (body: Uint8Array, sig: Uint8Array, key: Uint8Array): boolean => {
      verifies++;
      return verifySignature(body, sig, key);
    };
    const v = voter("crash", "none", { verify: counting });
    for (let seq = 1; seq <= DELIVERY_SIGNED_RANGES_PER_PUBLISHER_MAX + 1; seq++) v.onBatch(0, copy(1, signed(ALICE, seq, [`e${seq}`])));
    // Ranges 2..17 are the 16 latest: range 2 still tells another event apart, range 1 no longer does.
    expect(delivered(v.onBatch(1, copy(1, signed(ALICE, 2, ["other 2"]))))).toEqual([[null, ["other 2"]]]);
    expect(v.onBatch(1, copy(1, signed(ALICE, 1, ["other 1"])))).toEqual([]);
    // Range 3: its first event and three others are delivered; a fifth is a duplicate, unchecked.
    for (const k of [1, 2, 3])
      expect(delivered(v.onBatch(2, copy(1, signed(ALICE, 3, [`other 3.${k}`]))))).toEqual([[null, [`other 3.${k}`]]]);
    const before = verifies;
    expect(v.onBatch(2, copy(1, signed(ALICE, 3, ["other 3.4"])))).toEqual([]);
    expect(verifies).toBe(before);
    expect(v.stats().conflicts).toEqual([0, 1, 3, 0]);
  });

  test("other events: a slot of the ring written over starts empty; a forged copy never takes a version, even with the head of a real one", () => {
    const v = voter("crash", "none");
    v.onBatch(0, copy(1, signed(ALICE, 1, ["e1"])));
    for (const k of [1, 2, 3]) v.onBatch(1, copy(1, signed(ALICE, 1, [`other 1.${k}`])));
    // Range 1's slot (4 versions) is written over by range 17.
    for (let seq = 2; seq <= DELIVERY_SIGNED_RANGES_PER_PUBLISHER_MAX + 1; seq++) v.onBatch(0, copy(1, signed(ALICE, seq, [`e${seq}`])));
    const last = DELIVERY_SIGNED_RANGES_PER_PUBLISHER_MAX + 1;
    expect(delivered(v.onBatch(1, copy(1, signed(ALICE, last, ["other last"]))))).toEqual([[null, ["other last"]]]);
    // A forged copy at range 16 carrying the head (first 8 bytes) of a real other event: invalid, and the real one still goes through.
    const real = signed(ALICE, last - 1, ["real other"]);
    const forgedSig = real.sig.slice();
    forgedSig[40] = (forgedSig[40] as number) ^ 0xff;
    expect(v.onBatch(3, copy(1, { body: real.body, sig: forgedSig }))).toEqual([{ t: "invalid", replica: 3, reason: "bad-signature" }]);
    expect(delivered(v.onBatch(2, copy(1, real)))).toEqual([[null, ["real other"]]]);
    // One sharing only the first 4 bytes of a delivered event's head is checked (and fails), not taken for that event.
    const delivered16 = signed(ALICE, last - 1, [`e${last - 1}`]);
    const halfHead = signed(ALICE, last - 1, ["half"]);
    const mixed = halfHead.sig.slice();
    mixed.set(delivered16.sig.subarray(0, 4), 0);
    expect(v.onBatch(2, copy(1, { body: halfHead.body, sig: mixed }))).toEqual([{ t: "invalid", replica: 2, reason: "bad-signature" }]);
  });

  test("a range that partly overlaps a delivered one is dropped as stale", () => {
    const v = voter("crash", "none");
    v.onBatch(0, copy(1, B1)); // Alice 1..2
    expect(v.onBatch(1, copy(1, signed(ALICE, 2, ["x", "y"])))).toEqual([]);
    expect(v.stats().stale).toEqual([0, 1, 0, 0]);
  });

  test("the publishers tracked per subscription are bounded, and the drop is reported", () => {
    const v = voter("crash", "none");
    for (let i = 0; i < DELIVERY_PUBLISHERS_MAX; i++) {
      expect(delivered(v.onBatch(0, copy(1, signed(publisher(), 1, ["e"]))))).toHaveLength(1);
    }
    const extra = publisher();
    expect(v.onBatch(1, copy(1, signed(extra, 1, ["e", "f"])))).toEqual([
      {
        t: "publishers-full",
        publisher: extra.key,
        droppedEvents: 2,
        reason: `more than ${DELIVERY_PUBLISHERS_MAX} publishers on one subscription`,
      },
    ]);
    expect(v.stats().overflows).toEqual([0, 1, 0, 0]);
  });
});

/**
 * A pub request of one event for a voter that takes every signature (`trusting`): the
 * dedupe window tests need thousands of copies, and their signatures are not the point.
 */
function unsigned(p: Publisher, seq: number): BatchCopy {
  const body = encodeCanonical({ v: 1, client: p.key, seq, span: 1, ts: 77, op: { t: "pub", tag: TAG, events: [utf8(`e${seq}`)] } });
  return copy(seq, { body, sig: new Uint8Array(64) });
}

const trusting = (fault: FaultModel): DeliveryVoter => voter(fault, "none", { verify: () => true });

const pubSeqs = (outputs: DeliveryOutput[]): number[] => outputs.flatMap((o) => (o.t === "deliver" ? [o.batch.pubSeq] : []));

describe(`unordered dedupe windows at their bound (${DELIVERY_DEDUPE_RANGES_PER_PUBLISHER_MAX} ranges per publisher)`, () => {
  test("one replica sending a publisher's requests far ahead cannot make the window forget what the correct replicas have yet to send", () => {
    const v = trusting("byzantine");
    const F = 3;
    const got = new Set<number>();
    const take = (outputs: DeliveryOutput[]): void => {
      for (const seq of pubSeqs(outputs)) got.add(seq);
    };
    // Alice's key is vouched for: a correct replica's copy of seq 1, and F's.
    take(v.onBatch(0, unsigned(ALICE, 1)));
    take(v.onBatch(F, unsigned(ALICE, 1)));
    // F sends 1,100 of her real requests, spaced far ahead: each would be a range of its own.
    for (let i = 0; i < 1_100; i++) take(v.onBatch(F, unsigned(ALICE, 5_000 + 2 * i)));
    // Past the bound, a range only F has reached is dropped for now, pushing nothing out.
    expect(v.stats().overflows).toEqual([0, 0, 0, 1_100 - DELIVERY_DEDUPE_RANGES_PER_PUBLISHER_MAX]);
    // The correct replicas send 1..8000 in order: every one of them is delivered, none stale.
    for (let seq = 1; seq <= 8_000; seq++) for (const replica of [0, 1, 2]) take(v.onBatch(replica, unsigned(ALICE, seq)));
    expect(got.size).toBe(8_000);
    expect(v.stats().stale).toEqual([0, 0, 0, 0]);
    expect(v.stats().deliveredBatches).toBe(8_000);
  });

  test("when f+1 replicas are past its lowest range the window forgets it, and a copy below it is reported stale, not dropped silently", () => {
    const v = trusting("byzantine");
    // A publisher that also publishes on other channels: its seqs here have gaps, each a range.
    const odd = Array.from({ length: DELIVERY_DEDUPE_RANGES_PER_PUBLISHER_MAX + 10 }, (_, i) => 2 * i + 1);
    const got: number[] = [];
    for (const seq of odd) for (const replica of [0, 1]) got.push(...pubSeqs(v.onBatch(replica, unsigned(ALICE, seq))));
    expect(got).toEqual(odd);
    expect(v.stats().overflows).toEqual([0, 0, 0, 0]);
    // A slow replica's copy below what the window forgot cannot be told from a delivered one.
    expect(v.onBatch(2, unsigned(ALICE, 3))).toEqual([{ t: "stale", replica: 2, publisher: ALICE.key, events: 1 }]);
    expect(v.stats().stale).toEqual([0, 0, 1, 0]);
  });

  test("crash/none: one replica's copy is enough to reach a range, so nothing is held back", () => {
    const v = trusting("crash");
    const seqs = Array.from({ length: DELIVERY_DEDUPE_RANGES_PER_PUBLISHER_MAX + 10 }, (_, i) => 1 + 4 * (i + 1));
    const got = seqs.flatMap((seq) => pubSeqs(v.onBatch(0, unsigned(ALICE, seq))));
    expect(got).toEqual(seqs);
  });
});

describe("byzantine/none: a key stays vouched for only while f+1 replicas keep sending it (lapseVouches)", () => {
  test("a key only f replicas go on sending lapses; its copies need f+1 replicas again; nothing is delivered twice", () => {
    const v = trusting("byzantine");
    const F = 3;
    v.onBatch(0, unsigned(BOB, 1));
    expect(pubSeqs(v.onBatch(F, unsigned(BOB, 1)))).toEqual([1]);
    // Both sent copies since the last look: the key stays vouched for, one copy delivers.
    v.lapseVouches();
    expect(pubSeqs(v.onBatch(F, unsigned(BOB, 2)))).toEqual([2]);
    // Since then only F sent a copy (the key was unregistered; correct replicas stopped).
    v.lapseVouches();
    expect(v.onBatch(F, unsigned(BOB, 3))).toEqual([]);
    expect(v.onBatch(F, unsigned(BOB, 4))).toEqual([]);
    expect(v.stats().held).toBe(2);
    // A correct replica's copy of what was delivered is a duplicate, and vouches for nothing.
    expect(v.onBatch(0, unsigned(BOB, 2))).toEqual([]);
    expect(v.stats().held).toBe(2);
    // A correct replica sends the key again (registered anew): held copies go out, once each.
    expect(pubSeqs(v.onBatch(0, unsigned(BOB, 3)))).toEqual([3, 4]);
    expect(pubSeqs(v.onBatch(1, unsigned(BOB, 4)))).toEqual([]);
    expect(v.stats().deliveredBatches).toBe(4);
  });

  test("another event under delivered numbers that arrives while the key is lapsed is held, not dropped, and delivered once f+1 replicas vouch again", () => {
    const v = voter("byzantine", "none");
    const first = signed(BOB, 1, ["first"]);
    v.onBatch(0, copy(1, first));
    expect(delivered(v.onBatch(3, copy(1, first)))).toEqual([[null, ["first"]]]);
    v.lapseVouches();
    v.onBatch(3, copy(1, signed(BOB, 2, ["second"])));
    v.lapseVouches(); // only replica 3 went on: Bob lapses
    const other = signed(BOB, 1, ["other first"]);
    expect(v.onBatch(1, copy(1, other))).toEqual([]);
    expect(v.stats().held).toBeGreaterThan(0);
    const out = v.onBatch(2, copy(1, other));
    expect(delivered(out)).toContainEqual([null, ["other first"]]);
    expect(others(out).some((o) => o.t === "conflict")).toBe(true);
  });

  test("a quiet key stays vouched for: 500 publishers quiet for an interval, then publishing as the replicas stream one after another, are all delivered", () => {
    const v = trusting("byzantine");
    const publishers = Array.from({ length: 500 }, () => publisher());
    for (const p of publishers) for (const replica of [0, 1, 2, 3]) v.onBatch(replica, unsigned(p, 1));
    expect(v.stats().deliveredBatches).toBe(publishers.length);
    // Every replica sent every key in the first interval; no replica sent any in the second.
    v.lapseVouches();
    v.lapseVouches();
    // They all publish again: each replica's stream reaches the subscriber one after another.
    // Had the quiet keys lapsed, each replica could hold evidence for only
    // DELIVERY_UNVOUCHED_PUBLISHERS_PER_REPLICA_MAX of them: most batches would be lost.
    const outputs = [0, 1, 2, 3].flatMap((replica) => publishers.flatMap((p) => v.onBatch(replica, unsigned(p, 2))));
    expect(pubSeqs(outputs)).toEqual(publishers.map(() => 2));
    expect(others(outputs)).toEqual([]);
    expect(v.stats()).toMatchObject({ deliveredBatches: 2 * publishers.length, held: 0, evictions: [0, 0, 0, 0] });
  });

  test("crash channels trust one replica per copy: nothing lapses there", () => {
    const v = trusting("crash");
    expect(pubSeqs(v.onBatch(0, unsigned(BOB, 1)))).toEqual([1]);
    v.lapseVouches();
    v.lapseVouches();
    expect(pubSeqs(v.onBatch(0, unsigned(BOB, 2)))).toEqual([2]);
  });
});

/** Copies that `count` freshly made-up keys signed, one each, as a lying replica would mint them. */
function minted(count: number): { body: Uint8Array; sig: Uint8Array }[] {
  return Array.from({ length: count }, () => signed(publisher(), 1, ["eth0 up"]));
}

describe("byzantine/none: publisher keys are vouched for by f+1 replicas", () => {
  test("a key only one replica sends is never delivered; a second replica's copy delivers it", () => {
    const v = voter("byzantine", "none");
    const mallory = publisher();
    const copies = [1, 2, 3].map((seq) => signed(mallory, seq, [`eth0 up ${seq}`]));
    // Replica 3 alone, however often: one voucher, counted once.
    for (let round = 0; round < 3; round++) for (const c of copies) expect(v.onBatch(3, copy(1, c))).toEqual([]);
    expect(v.stats()).toMatchObject({ deliveredBatches: 0, held: 9 });
    // A second replica sends one copy: the key is vouched for, and replica 3's held copies go through.
    expect(delivered(v.onBatch(1, copy(1, copies[1]!)))).toEqual([
      [null, ["eth0 up 1"]],
      [null, ["eth0 up 2"]],
      [null, ["eth0 up 3"]],
    ]);
    expect(v.stats()).toMatchObject({ deliveredBatches: 3, held: 0, duplicates: [0, 1, 0, 6] });
  });

  test("held copies are delivered in arrival order and deduplicated once the key is vouched for", () => {
    const v = voter("byzantine", "none");
    const overlap = signed(ALICE, 5, ["x", "y"]);
    expect(v.onBatch(0, copy(1, B4))).toEqual([]); // Alice 3..5
    expect(v.onBatch(0, copy(1, B1))).toEqual([]); // Alice 1..2
    expect(v.onBatch(0, copy(1, B4))).toEqual([]); // again
    expect(v.onBatch(0, copy(1, overlap))).toEqual([]); // 5..6: partly delivered
    const out = v.onBatch(2, copy(1, B1));
    expect(delivered(out)).toEqual([
      [null, ["a3", "a4", "a5"]],
      [null, ["a1", "a2"]],
    ]);
    expect(others(out)).toEqual([]);
    expect(v.stats()).toMatchObject({ deliveredBatches: 2, duplicates: [1, 0, 1, 0], stale: [1, 0, 0, 0], held: 0 });
    // From now on Alice's copies take the usual path.
    expect(v.onBatch(3, copy(1, B4))).toEqual([]);
    expect(delivered(v.onBatch(3, copy(1, signed(ALICE, 6, ["a6"]))))).toEqual([[null, ["a6"]]]);
  });

  test("f Byzantine replicas minting thousands of keys get nothing delivered and do not stop a real publisher", () => {
    const f = 2;
    const v = new DeliveryVoter({ tag: TAG, cls: { fault: "byzantine", order: "none" }, n: 7, f, hash, verify: verifySignature });
    // A correct replica forwards Alice's batch before the flood.
    v.onBatch(0, copy(1, B1));
    // The two liars agree on every key they make up: f vouchers, one short.
    const flood = minted(DELIVERY_PUBLISHERS_MAX + 500);
    const reported = [0, 0, 0, 0, 0, 0, 0];
    for (const c of flood) {
      for (const replica of [5, 6]) {
        const out = v.onBatch(replica, copy(1, c));
        expect(delivered(out)).toEqual([]);
        for (const o of out)
          if (o.t === "held-dropped" && o.replica === replica && o.events === 1) reported[replica] = (reported[replica] ?? 0) + 1;
      }
    }
    const afterFlood = v.stats();
    expect(afterFlood.deliveredBatches).toBe(0);
    const evicted = flood.length - DELIVERY_UNVOUCHED_PUBLISHERS_PER_REPLICA_MAX;
    expect(afterFlood.evictions).toEqual([0, 0, 0, 0, 0, evicted, evicted]);
    // Each eviction is reported (the caller rate-limits the signals), never silent.
    expect(reported).toEqual([...afterFlood.evictions]);
    expect(afterFlood.held).toBe(1 + 2 * DELIVERY_UNVOUCHED_PUBLISHERS_PER_REPLICA_MAX);
    // Replica 0's evidence survived: two more correct replicas make f+1.
    expect(v.onBatch(1, copy(1, B1))).toEqual([]);
    expect(delivered(v.onBatch(2, copy(1, B1)))).toEqual([[null, ["a1", "a2"]]]);
    // A publisher first seen after the flood is not refused: the liars filled no table.
    for (const r of [0, 3]) expect(v.onBatch(r, copy(1, B3))).toEqual([]);
    expect(delivered(v.onBatch(4, copy(1, B3)))).toEqual([[null, ["b1"]]]);
    expect(v.stats()).toMatchObject({ deliveredBatches: 2, overflows: [0, 0, 0, 0, 0, 0, 0] });
  });

  test("a replica past its allowance of keys loses its own oldest evidence, never another replica's", () => {
    const v = voter("byzantine", "none");
    const registered = Array.from({ length: DELIVERY_UNVOUCHED_PUBLISHERS_PER_REPLICA_MAX }, () => publisher());
    for (const p of registered) expect(v.onBatch(0, copy(1, signed(p, 1, ["real"])))).toEqual([]);
    // Replica 3 floods its own keys (one copy with a bad signature among them, held
    // unchecked like the others: no other replica sent a copy of its key).
    expect(v.onBatch(3, copy(1, { body: signed(publisher(), 1, ["x"]).body, sig: B1.sig }))).toEqual([]);
    expect(v.stats().evictions).toEqual([0, 0, 0, 0]);
    for (const c of minted(3 * DELIVERY_UNVOUCHED_PUBLISHERS_PER_REPLICA_MAX)) v.onBatch(3, copy(1, c));
    expect(v.stats().evictions).toEqual([0, 0, 0, 2 * DELIVERY_UNVOUCHED_PUBLISHERS_PER_REPLICA_MAX + 1]);
    expect(v.stats().heldDropped).toEqual([0, 0, 0, 2 * DELIVERY_UNVOUCHED_PUBLISHERS_PER_REPLICA_MAX + 1]);
    // Replica 0 goes past its own allowance by one key: its oldest, registered[0], is evicted, and that is reported.
    const late = publisher();
    expect(v.onBatch(0, copy(1, signed(late, 1, ["late"])))).toEqual([
      { t: "held-dropped", replica: 0, events: 1, reason: expect.stringContaining("publisher keys not yet vouched for") },
    ]);
    expect(v.stats().evictions).toEqual([1, 0, 0, 2 * DELIVERY_UNVOUCHED_PUBLISHERS_PER_REPLICA_MAX + 1]);
    expect(v.onBatch(1, copy(1, signed(registered[0]!, 1, ["real"])))).toEqual([]);
    for (const p of registered.slice(1)) expect(delivered(v.onBatch(1, copy(1, signed(p, 1, ["real"]))))).toEqual([[null, ["real"]]]);
    expect(delivered(v.onBatch(2, copy(1, signed(late, 1, ["late"]))))).toEqual([[null, ["late"]]]);
  });

  test("held copies are bounded per key in count and bytes, and per replica in bytes", () => {
    const v = voter("byzantine", "none");
    const mallory = publisher();
    const dropped: DeliveryOutput[] = [];
    for (let seq = 1; seq <= DELIVERY_HELD_COPIES_PER_PUBLISHER_MAX + 5; seq++)
      dropped.push(...v.onBatch(3, copy(1, signed(mallory, seq, ["e"]))));
    expect(v.stats()).toMatchObject({ held: DELIVERY_HELD_COPIES_PER_PUBLISHER_MAX, heldDropped: [0, 0, 0, 5] });
    // Every copy dropped at the bound is reported: an unordered channel's copies are not sent again.
    expect(dropped.map((o) => (o.t === "held-dropped" ? `${o.replica}/${o.events}` : o.t))).toEqual(Array(5).fill("3/1"));

    const big = (p: Publisher, seq: number) => signed(p, seq, ["x".repeat(1024 * 1024)]);
    const perCopy = big(ALICE, 1).body.length + big(ALICE, 1).sig.length;
    const perKey = Math.floor(DELIVERY_HELD_BYTES_PER_PUBLISHER_MAX / perCopy);
    const w = voter("byzantine", "none");
    for (let seq = 1; seq <= perKey + 1; seq++) w.onBatch(2, copy(1, big(ALICE, seq)));
    expect(w.stats()).toMatchObject({ held: perKey, heldDropped: [0, 0, 1, 0], evictions: [0, 0, 0, 0] });
    // Across keys, the replica's bytes stay within its buffer bound by evicting its oldest key.
    const keys = Math.ceil(DELIVERY_BUFFERED_BYTES_PER_REPLICA_MAX / (perKey * perCopy)) + 1;
    for (let k = 0; k < keys; k++) {
      const p = publisher();
      for (let seq = 1; seq <= perKey; seq++) w.onBatch(1, copy(1, big(p, seq)));
    }
    const stats = w.stats();
    expect(stats.evictions[1]).toBeGreaterThan(0);
    expect(stats.evictions[2]).toBe(0);
    expect((stats.held - perKey) * perCopy).toBeLessThanOrEqual(DELIVERY_BUFFERED_BYTES_PER_REPLICA_MAX);
    // Replica 2's evidence for Alice is intact.
    expect(delivered(w.onBatch(0, copy(1, big(ALICE, 1))))).toHaveLength(perKey);
  });
});

describe("byzantine/none: copies of a key not yet vouched for are checked only once f+1 replicas sent one", () => {
  /** A byzantine/none voter whose signature checks are counted; n=4, f=1 unless given. */
  function counted(extra: Partial<DeliveryVoterOptions> = {}) {
    const count = { checks: 0 };
    const v = voter("byzantine", "none", {
      verify: (body, sig, key) => {
        count.checks++;
        return verifySignature(body, sig, key);
      },
      ...extra,
    });
    return { v, count };
  }

  test("one replica replaying copies of keys of its own making round its allowance costs no check, for ever", () => {
    const { v, count } = counted();
    // One key more than the replica's allowance: each copy evicts the oldest, which then comes back as new.
    const pool = minted(DELIVERY_UNVOUCHED_PUBLISHERS_PER_REPLICA_MAX + 1);
    for (let round = 0; round < 20; round++) for (const c of pool) expect(delivered(v.onBatch(3, copy(1, c)))).toEqual([]);
    expect(count.checks).toBe(0);
    expect(v.stats().held).toBe(DELIVERY_UNVOUCHED_PUBLISHERS_PER_REPLICA_MAX);
    // A real publisher is still vouched for by two correct replicas, with a check each.
    expect(v.onBatch(0, copy(1, B1))).toEqual([]);
    expect(delivered(v.onBatch(1, copy(1, B1)))).toEqual([[null, ["a1", "a2"]]]);
    expect(count.checks).toBe(2);
  });

  test("the f+1-th replica's copy checks one copy of each; the rest are checked as delivered, duplicates never", () => {
    const { v, count } = counted();
    for (let seq = 1; seq <= 5; seq++) expect(v.onBatch(0, copy(1, signed(ALICE, seq, [`a${seq}`])))).toEqual([]);
    expect(count.checks).toBe(0);
    // Replica 1's copy of seq 1 makes f+1: it and replica 0's first are checked, 0's others as they are delivered.
    expect(delivered(v.onBatch(1, copy(1, signed(ALICE, 1, ["a1"]))))).toEqual([1, 2, 3, 4, 5].map((seq) => [null, [`a${seq}`]]));
    expect(count.checks).toBe(6);
    // Vouched for: a copy of what was delivered costs nothing.
    expect(v.onBatch(2, copy(1, signed(ALICE, 3, ["a3"])))).toEqual([]);
    expect(count.checks).toBe(6);
  });

  test("a faulty replica's held copies that do not verify are reported when checked, and vouch for nothing", () => {
    const { v, count } = counted();
    const bad = (p: Publisher, seq: number) => ({ body: signed(p, seq, ["FORGED"]).body, sig: B1.sig });
    // Replica 3's first copy does not verify: checked when replica 0's copy would make f+1,
    // it is reported, the rest of 3's evidence for the key dropped unchecked, and 3 vouches for nothing.
    v.onBatch(3, copy(1, bad(ALICE, 1)));
    v.onBatch(3, copy(1, signed(ALICE, 2, ["a2"])));
    v.onBatch(3, copy(1, bad(ALICE, 3)));
    expect(v.onBatch(0, copy(1, signed(ALICE, 1, ["a1"])))).toEqual([
      { t: "invalid", replica: 3, reason: "bad-signature" },
      { t: "held-dropped", replica: 3, events: 2, reason: expect.stringContaining("does not verify") },
    ]);
    expect(count.checks).toBe(2);
    expect(v.stats()).toMatchObject({ held: 1, invalid: [0, 0, 0, 1], heldDropped: [0, 0, 0, 2] });
    // A second correct replica vouches; replica 0's copy, checked already, is not checked again.
    expect(delivered(v.onBatch(1, copy(1, signed(ALICE, 1, ["a1"]))))).toEqual([[null, ["a1"]]]);
    expect(count.checks).toBe(3);
    // A replica whose first copy verifies vouches; a later copy of its that does not is
    // reported as it would be delivered, and the genuine one is delivered after it.
    const w = counted().v;
    w.onBatch(3, copy(1, signed(BOB, 1, ["b1"])));
    w.onBatch(3, copy(1, bad(BOB, 2)));
    const outputs = w.onBatch(0, copy(1, signed(BOB, 2, ["b2"])));
    expect(others(outputs)).toEqual([{ t: "invalid", replica: 3, reason: "bad-signature" }]);
    expect(delivered(outputs)).toEqual([
      [null, ["b1"]],
      [null, ["b2"]],
    ]);
  });

  test("a regroup that lowers f checks the evidence before it vouches", () => {
    const { v } = counted({ n: 7, f: 2 });
    v.onBatch(5, copy(1, { body: signed(ALICE, 1, ["FORGED"]).body, sig: B1.sig }));
    v.onBatch(0, copy(1, B1));
    // f=1 over five members: two vouchers would do, but replica 5's copy does not verify.
    const outputs = v.regroup([0, 1, 2, 3, 5], 1);
    expect(outputs).toEqual([{ t: "invalid", replica: 5, reason: "bad-signature" }]);
    expect(delivered(v.onBatch(1, copy(1, B1)))).toEqual([[null, ["a1", "a2"]]]);
  });
});

describe("configuration", () => {
  test("group sizes and resume points are checked", () => {
    expect(
      () => new DeliveryVoter({ tag: TAG, cls: { fault: "byzantine", order: "total" }, n: 3, f: 1, hash, verify: verifySignature }),
    ).toThrow(RangeError);
    expect(() => voter("crash", "total", { fromSeq: 0 })).toThrow(RangeError);
  });
});

describe("live unordered subscriptions refuse old events replayed to them", () => {
  test("a copy signed before notBeforeMs is stale on every unordered class; one signed after it is delivered", () => {
    for (const fault of ["crash", "byzantine"] as const) {
      const v = voter(fault, "none", { notBeforeMs: 1_000_000 });
      const p = publisher();
      const old = signed(p, 1, ["eth0 down (last week)"], TAG, 999_999);
      const fresh = signed(p, 2, ["eth0 up"], TAG, 1_000_000);
      for (let replica = 0; replica < 4; replica++) expect(delivered(v.onBatch(replica, copy(1, old)))).toEqual([]);
      const out = [0, 1, 2, 3].flatMap((replica) => v.onBatch(replica, copy(2, fresh)));
      expect(delivered(out)).toEqual([[null, ["eth0 up"]]]);
      expect(v.stats().stale.reduce((a, b) => a + b, 0)).toBe(4);
    }
  });

  test("without notBeforeMs (a history read) old events are delivered", () => {
    const v = voter("crash", "none");
    const p = publisher();
    expect(delivered(v.onBatch(0, copy(1, signed(p, 1, ["old"], TAG, 5))))).toEqual([[null, ["old"]]]);
  });
});

describe("a publisher filter that does not know a key yet (crash channels)", () => {
  const known = new Set<string>([Buffer.from(ALICE.key).toString("hex")]);
  const filter = (publisher: Uint8Array) => (known.has(Buffer.from(publisher).toString("hex")) ? true : "unknown");

  test("its copies are held, not delivered nor dropped, and go through again once the key is known", () => {
    const v = voter("crash", "total", { acceptPublisher: filter });
    const bob = signed(BOB, 1, ["b1"]);
    const out = v.onBatch(0, copy(1, bob));
    expect(delivered(out)).toEqual([]);
    expect(others(out)).toEqual([{ t: "unknown-publisher", replica: 0, publisher: BOB.key }]);
    expect(v.stats().heldUnknown).toBe(1);
    // Nothing moves past seq 1 while it waits; ALICE's batch at seq 2 waits behind it.
    expect(delivered(v.onBatch(1, copy(2, signed(ALICE, 1, ["a1"]))))).toEqual([]);
    known.add(Buffer.from(BOB.key).toString("hex"));
    expect(delivered(v.recheckHeld())).toEqual([
      [1, ["b1"]],
      [2, ["a1"]],
    ]);
    expect(v.stats().heldUnknown).toBe(0);
  });

  test(`at most ${DELIVERY_UNKNOWN_PUBLISHER_COPIES_PER_REPLICA_MAX} held per replica: past it the sender's oldest is pushed out (re-read on total order)`, () => {
    const v = voter("crash", "total", { acceptPublisher: () => "unknown" });
    for (let seq = 1; seq <= DELIVERY_UNKNOWN_PUBLISHER_COPIES_PER_REPLICA_MAX; seq++) {
      expect(others(v.onBatch(3, copy(seq, signed(BOB, seq, ["x"])))).map((o) => o.t)).toEqual(["unknown-publisher"]);
    }
    const past = others(v.onBatch(3, copy(999, signed(BOB, 999, ["x"])))).map((o) => o.t);
    expect(past).toEqual(["overflow", "unknown-publisher"]);
    expect(v.stats().heldUnknown).toBe(DELIVERY_UNKNOWN_PUBLISHER_COPIES_PER_REPLICA_MAX);
    expect(v.stats().heldDropped[3]).toBe(1);
    // Another replica's allowance is its own.
    expect(others(v.onBatch(0, copy(1, signed(BOB, 1, ["x"])))).map((o) => o.t)).toEqual(["unknown-publisher"]);
  });

  test("unordered: a copy pushed out past the bound is reported (nothing sends it again)", () => {
    const v = voter("crash", "none", { acceptPublisher: () => "unknown" });
    for (let seq = 1; seq <= DELIVERY_UNKNOWN_PUBLISHER_COPIES_PER_REPLICA_MAX; seq++) {
      expect(others(v.onBatch(3, copy(1, signed(BOB, seq, ["x"])))).map((o) => o.t)).toEqual(["unknown-publisher"]);
    }
    expect(others(v.onBatch(3, copy(1, signed(BOB, 999, ["x", "y"]))))).toEqual([
      { t: "held-dropped", replica: 3, events: 1, reason: expect.stringContaining("unknown publishers") },
      { t: "unknown-publisher", replica: 3, publisher: BOB.key },
    ]);
    expect(v.stats().heldDropped[3]).toBe(1);
  });

  test("a key refused after the wait: its held copies are dropped as publisher-refused", () => {
    let verdict: boolean | "unknown" = "unknown";
    const v = voter("crash", "none", { acceptPublisher: () => verdict });
    v.onBatch(2, copy(0, signed(BOB, 1, ["forged"])));
    verdict = false;
    const out = v.recheckHeld();
    expect(delivered(out)).toEqual([]);
    expect(others(out)).toEqual([{ t: "invalid", replica: 2, reason: "publisher-refused" }]);
  });
});

describe("the group changes mid-stream (regroup)", () => {
  const seven = [0, 1, 2, 3, 4, 5, 6];

  test("f 1 -> 2: a batch with f_old+1 copies waits for f_new+1 copies of current members", () => {
    const v = voter("byzantine", "total");
    expect(v.onBatch(0, copy(1, B1))).toEqual([]);
    expect(v.regroup(seven, 2)).toEqual([]);
    // Two copies were enough for f=1; under f=2 they are not.
    expect(v.onBatch(4, copy(1, B1))).toEqual([]);
    expect(delivered(v.onBatch(5, copy(1, B1)))).toEqual([[1, ["a1", "a2"]]]);
    // The next batch needs three copies too, and one of a new member counts like any other.
    expect(v.onBatch(6, copy(3, B3))).toEqual([]);
    expect(v.onBatch(1, copy(3, B3))).toEqual([]);
    expect(delivered(v.onBatch(2, copy(3, B3)))).toEqual([[3, ["b1"]]]);
    expect(v.nextSeq).toBe(4);
  });

  test("f 2 -> 1 and members removed: a removed replica's votes are taken back, its later copies ignored", () => {
    const v = new DeliveryVoter({ tag: TAG, cls: { fault: "byzantine", order: "total" }, n: 7, f: 2, hash, verify: verifySignature });
    expect(v.onBatch(0, copy(1, B1))).toEqual([]);
    expect(v.onBatch(5, copy(1, B1))).toEqual([]);
    // Now 4 replicas, f=1: two copies would do, but replica 5 is no longer a member.
    expect(v.regroup([0, 1, 2, 3], 1)).toEqual([]);
    expect(v.onBatch(6, copy(1, B1))).toEqual([]);
    expect(v.stats().unknownReplica).toBe(1);
    expect(delivered(v.onBatch(1, copy(1, B1)))).toEqual([[1, ["a1", "a2"]]]);
  });

  test("a lower threshold delivers what already has enough copies of members at once, in order", () => {
    const v = new DeliveryVoter({ tag: TAG, cls: { fault: "byzantine", order: "total" }, n: 7, f: 2, hash, verify: verifySignature });
    for (const replica of [0, 1]) {
      expect(v.onBatch(replica, copy(1, B1))).toEqual([]);
      expect(v.onBatch(replica, copy(3, B3))).toEqual([]);
    }
    expect(delivered(v.regroup([0, 1, 2, 3], 1))).toEqual([
      [1, ["a1", "a2"]],
      [3, ["b1"]],
    ]);
    // Nothing is delivered twice: a late copy is a duplicate.
    expect(v.onBatch(2, copy(1, B1))).toEqual([]);
    expect(v.stats().duplicates[2]).toBe(1);
  });

  test("a member whose key was replaced has its votes taken back", () => {
    const v = voter("byzantine", "total");
    expect(v.onBatch(2, copy(1, B1))).toEqual([]);
    expect(v.regroup([0, 1, 2, 3], 1, [2])).toEqual([]);
    expect(v.onBatch(0, copy(1, B1))).toEqual([]);
    expect(delivered(v.onBatch(2, copy(1, B1)))).toEqual([[1, ["a1", "a2"]]]);
  });

  test("byzantine/none: a key needs f_new+1 vouching members after the switch", () => {
    const v = voter("byzantine", "none");
    const a = signed(ALICE, 1, ["x"]);
    expect(v.onBatch(0, copy(0, a))).toEqual([]);
    expect(v.regroup(seven, 2)).toEqual([]);
    expect(v.onBatch(4, copy(0, a))).toEqual([]);
    expect(delivered(v.onBatch(5, copy(0, a)))).toEqual([[null, ["x"]]]);
  });

  test("a group the class cannot vote with is refused", () => {
    const v = voter("byzantine", "total");
    expect(() => v.regroup([0, 1, 2, 3, 4], 2)).toThrow(RangeError);
  });
});
