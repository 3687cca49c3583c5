// The snapshot stream (src/replica/storage/stream.ts) and the checkpoint digest
// (storage/digest.ts): equal states cut into equal parts, any part boundary reads back to
// the same state, damage is refused, and the digest is the one the ordering core signs.
import { describe, expect, test } from "bun:test";
import { makeConfig } from "../../src/core/ordering/config.ts";
import { OrderingCore } from "../../src/core/ordering/core.ts";
import type { CoreCrypto, Ready } from "../../src/core/ordering/types.ts";
import { sign, verify } from "../../src/crypto/ed25519.ts";
import { sha256 } from "../../src/crypto/hash.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { admitRequest } from "../../src/replica/requests.ts";
import { checkpointStateDigest } from "../../src/replica/storage/digest.ts";
import {
  decodeStreamMeta,
  encodeStreamMeta,
  PartCutter,
  partBytesFor,
  STREAM_CLIENT_NAME_BYTES_MAX,
  STREAM_PART_BYTES_MAX,
  StreamReader,
} from "../../src/replica/storage/stream.ts";
import { decodeCanonical, encodeCanonical, withCanonical } from "../../wire/canonical.ts";
import { execute, newMachine, payloads, TestClient } from "./storage-fixtures.ts";

const CLIENTS: [string, number][] = [
  ["aa:x", 3],
  ["bb:y", 10],
];

function populatedMachine(events: number) {
  const machine = newMachine();
  const admin = new TestClient();
  const publisher = new TestClient();
  execute(machine, [
    admin.admin({ t: "create-channel", tag: "sec.alerts", fault: "byzantine", order: "total", priority: "high", public: true }),
    admin.admin({ t: "register", tag: "sec.alerts", role: "publisher", key: publisher.key.publicKey }),
  ]);
  for (let i = 0; i < events; i += 3) execute(machine, [publisher.pub("sec.alerts", [`e${i}`, `e${i + 1}`, `e${i + 2}`])]);
  return machine;
}

/** Events per record of bigRecordsMachine's batches, after its two small ones. */
const BIG_RECORD_COUNTS = [1, 6, 3, 30, 2];

/** Two small batches, then records of 900-byte events (the fixture's limit is 1,024), several larger than 1,000 bytes. */
function bigRecordsMachine() {
  const machine = populatedMachine(6);
  const publisher = new TestClient();
  execute(machine, [new TestClient().admin({ t: "register", tag: "sec.alerts", role: "publisher", key: publisher.key.publicKey })]);
  for (const count of BIG_RECORD_COUNTS) {
    execute(machine, [
      publisher.pub(
        "sec.alerts",
        Array.from({ length: count }, (_, i) => `${i}`.padEnd(900, "x")),
      ),
    ]);
  }
  return machine;
}

function cut(machine: ReturnType<typeof newMachine>, partBytes: number, seq = 128): Uint8Array[] {
  const cutter = new PartCutter(encodeStreamMeta({ seq, clients: CLIENTS }), machine.exportSnapshot(), partBytes);
  const parts: Uint8Array[] = [];
  for (let part = cutter.next(); part !== null; part = cutter.next()) parts.push(part);
  return parts;
}

describe("snapshot stream", () => {
  test("parts are exactly partBytes long (the last may be shorter) and equal states give equal parts", () => {
    const a = populatedMachine(300);
    const parts = cut(a, 500);
    expect(parts.length).toBeGreaterThan(3);
    for (const part of parts.slice(0, -1)) expect(part.length).toBe(500);
    expect((parts.at(-1) as Uint8Array).length).toBeLessThanOrEqual(500);
    expect(cut(a, 500)).toEqual(parts);
  });

  test("the parts are the meta record and the whole export, byte for byte, at any part size", () => {
    const machine = populatedMachine(120);
    const whole = [...encodeStreamMeta({ seq: 128, clients: CLIENTS }), ...machine.snapshot()];
    const meta = encodeStreamMeta({ seq: 128, clients: CLIENTS }).length;
    // Sizes that cut inside the meta, inside a frame's 4-byte length, exactly at the end, and past it.
    for (const partBytes of [1, 3, 4, 5, 7, meta, meta + 2, 333, whole.length - 1, whole.length, whole.length + 1, whole.length / 2]) {
      if (!Number.isInteger(partBytes)) continue;
      const parts = cut(machine, partBytes);
      expect(parts.length).toBe(Math.ceil(whole.length / partBytes));
      for (const part of parts.slice(0, -1)) expect(part.length).toBe(partBytes);
      expect(Buffer.concat(parts).equals(Buffer.from(whole))).toBe(true);
    }
  });

  test("records larger than a part, of growing sizes, cut the same as the whole export", () => {
    const machine = bigRecordsMachine();
    const whole = Buffer.from([...encodeStreamMeta({ seq: 128, clients: CLIENTS }), ...machine.snapshot()]);
    expect(whole.length).toBeGreaterThan(900 * BIG_RECORD_COUNTS.reduce((a, b) => a + b));
    for (const partBytes of [1_000, 4_096, 9_999]) expect(Buffer.concat(cut(machine, partBytes)).equals(whole)).toBe(true);
  });

  test("the parts are length-prefixed canonical records: a header, the channel, then every batch", () => {
    const machine = bigRecordsMachine();
    const meta = encodeStreamMeta({ seq: 128, clients: CLIENTS });
    const bytes = Buffer.concat(cut(machine, 1_000)).subarray(meta.length);
    const kinds: string[] = [];
    for (let at = 0; at < bytes.length; ) {
      const length = bytes.readUInt32BE(at);
      const record = bytes.subarray(at + 4, at + 4 + length);
      expect(record.length).toBe(length);
      const value = decodeCanonical(record) as { k: string };
      expect(Buffer.from(encodeCanonical(value)).equals(record)).toBe(true);
      kinds.push(value.k);
      at += 4 + length;
    }
    expect(kinds).toEqual(["header", "channel", ...Array.from({ length: 2 + BIG_RECORD_COUNTS.length }, () => "batch")]);
  });

  test("cutters read in turn, with other encodes between their parts, cut what each reads alone", () => {
    const machine = bigRecordsMachine();
    // Two part sizes, so the two are at different places of the stream at each turn.
    const sizes = [1_000, 777];
    const capture = machine.exportSnapshot();
    const meta = encodeStreamMeta({ seq: 128, clients: CLIENTS });
    const cutters = sizes.map((size) => new PartCutter(meta, capture.reopen(), size));
    const parts: Uint8Array[][] = [[], []];
    const junk = { junk: new Uint8Array(64 * 1024).fill(0xee) };
    for (let done = 0; done < 2; ) {
      done = 0;
      for (const [i, cutter] of cutters.entries()) {
        const part = cutter.next();
        // An encode in the lent buffer between parts, as a commit's batch row or a digest makes.
        withCanonical(junk, (bytes) => bytes.length);
        if (part === null) done++;
        else parts[i]?.push(part);
      }
    }
    expect(parts[0]).toEqual(cut(machine, 1_000));
    expect(parts[1]).toEqual(cut(machine, 777));
  });

  test("an export is read by chunks or by bytes, not both", () => {
    const exported = populatedMachine(30).exportSnapshot();
    exported.read(new Uint8Array(10), 0);
    expect(() => exported.next()).toThrow("either by chunks or by bytes");
    const other = populatedMachine(30).exportSnapshot();
    other.next(64);
    expect(() => other.read(new Uint8Array(10), 0)).toThrow("either by chunks or by bytes");
  });

  test("skipping k parts yields part k (a transfer resumes mid-stream)", () => {
    const machine = populatedMachine(300);
    const parts = cut(machine, 300);
    const cutter = new PartCutter(encodeStreamMeta({ seq: 128, clients: CLIENTS }), machine.exportSnapshot(), 300);
    cutter.skip(5);
    expect(cutter.next()).toEqual(parts[5] as Uint8Array);
  });

  for (const partBytes of [1, 7, 64, 4096]) {
    test(`read back part by part at ${partBytes} bytes per part, the state and meta are identical`, () => {
      const source = populatedMachine(90);
      const target = newMachine();
      const importer = target.beginRestore();
      const reader = new StreamReader(importer);
      for (const part of cut(source, partBytes)) expect(reader.push(part)).toEqual({ ok: true });
      expect(reader.finish()).toEqual({ ok: true });
      expect(reader.meta).toEqual({ seq: 128, clients: CLIENTS });
      expect(importer.digest()).toEqual(source.digest());
      expect(target.installSnapshot(importer)).toEqual({ ok: true });
      expect(payloads(target, "sec.alerts")).toEqual(payloads(source, "sec.alerts"));
    });
  }

  test("a truncated stream is refused at finish", () => {
    const parts = cut(populatedMachine(60), 200);
    const reader = new StreamReader(newMachine().beginRestore());
    for (const part of parts.slice(0, -1)) reader.push(part);
    expect(reader.finish().ok).toBe(false);
  });

  test("a damaged meta record is refused", () => {
    const parts = cut(populatedMachine(30), 4096);
    const first = Uint8Array.from(parts[0] as Uint8Array);
    first[6] = 0xff;
    const reader = new StreamReader(newMachine().beginRestore());
    const pushed = reader.push(first);
    expect(pushed.ok).toBe(false);
  });

  test("an oversized meta length is refused before anything is buffered", () => {
    const reader = new StreamReader(newMachine().beginRestore());
    expect(reader.push(new Uint8Array([0xff, 0xff, 0xff, 0xff])).ok).toBe(false);
  });

  test("the meta record is read in exactly its one shape, so hostile bytes cost no more than the rows they hold", () => {
    const meta = { seq: 42, clients: CLIENTS };
    const body = (framed: Uint8Array): Uint8Array => framed.subarray(4);
    expect(decodeStreamMeta(body(encodeStreamMeta(meta)))).toEqual(meta);
    expect(decodeStreamMeta(encodeCanonical({ v: 1, seq: 42, clients: [] }))).toEqual({ seq: 42, clients: [] });
    // What a general decoder would turn into millions of arrays: refused at its first item.
    const emptyArrays = new Uint8Array(4 * 1024 * 1024).fill(0x80);
    emptyArrays.set([0x9a, 0x00, 0x3f, 0xff, 0xfb]);
    expect(decodeStreamMeta(emptyArrays)).toContain("unexpected item type");
    // The right keys around rows that are not [name, seq] pairs, or more rows than the bytes hold.
    const head = encodeCanonical({ v: 1, seq: 42, clients: [] }).slice(0, -1);
    const rows = (count: number[], items: number[]): Uint8Array => Uint8Array.from([...head, ...count, ...items]);
    expect(decodeStreamMeta(rows([0x98, 100], new Array(400).fill(0x80)))).toBe("client row 0 is not a pair");
    expect(decodeStreamMeta(rows([0x9a, 0x00, 0x10, 0x00, 0x00], []))).toContain("client rows do not fit");
    // Anything but the canonical form: keys in another order, a number not in its shortest form, unsorted rows.
    expect(decodeStreamMeta(encodeCanonical({ v: 1, clients: [], seq: 42 }).reverse())).toBeTypeOf("string");
    expect(decodeStreamMeta(rows([0x81, 0x82, 0x61, 0x61, 0x18, 0x07], []))).toContain("shortest form");
    expect(
      decodeStreamMeta(
        encodeCanonical({
          v: 1,
          seq: 42,
          clients: [
            ["b", 1],
            ["a", 2],
          ],
        }),
      ),
    ).toContain("out of order");
    expect(decodeStreamMeta(encodeCanonical({ v: 2, seq: 42, clients: [] }))).toContain("format version 2");
    expect(decodeStreamMeta(encodeCanonical({ v: 1, seq: 42, clients: [["x".repeat(STREAM_CLIENT_NAME_BYTES_MAX + 1), 1]] }))).toContain(
      "at most",
    );
  });

  test("the part size leaves room for the envelope in a frame and is capped", () => {
    expect(partBytesFor(4 * 1024 * 1024)).toBe(STREAM_PART_BYTES_MAX);
    expect(partBytesFor(8192)).toBe(8192 - 1024);
  });
});

describe("checkpoint state digest", () => {
  test("equals the digest the ordering core persists and signs at a checkpoint", () => {
    const key = SigningKey.generate();
    const crypto: CoreCrypto = {
      hash: sha256,
      sign: (bytes) => sign(key, bytes),
      verify: (replica, bytes, sig) => replica === 0 && verify(key.publicKey, bytes, sig),
      verifyRequest: (req) => {
        const admitted = admitRequest({ body: req.body, sig: req.sig });
        return admitted.ok && admitted.space === req.client && admitted.request.seq === req.seq && admitted.request.span === req.span;
      },
    };
    // A group of one (f = 0) decides alone, so the core reaches a checkpoint by itself.
    const core = new OrderingCore(
      makeConfig({ id: 0, n: 1, f: 0, mode: "bft", clusterId: "unit" }, { checkpointInterval: 2, logWindow: 4, pipelineDepth: 2 }),
      crypto,
    );
    const client = new TestClient();
    const appDigest = sha256(new TextEncoder().encode("application state"));
    const checkpoints: { seq: number; stateDigest: Uint8Array; clients: [string, number][] }[] = [];
    const run = (ready: Ready): void => {
      for (const r of ready.persist) if (r.t === "checkpoint") checkpoints.push(r);
      for (const o of ready.effects) if (o.kind === "takeCheckpoint") run(core.step({ kind: "checkpointReady", seq: o.seq, appDigest }));
    };
    for (let i = 0; i < 4 && checkpoints.length === 0; i++) {
      run(core.step({ kind: "request", req: client.pub("a.b", [`event ${i}`]), authenticated: true }));
      for (let t = 0; t < 3; t++) run(core.step({ kind: "tick" }));
    }
    const checkpoint = checkpoints[0];
    if (checkpoint === undefined) throw new Error("the core took no checkpoint");
    expect(checkpoint.clients.length).toBe(1);
    expect(checkpointStateDigest(checkpoint.seq, appDigest, checkpoint.clients)).toEqual(checkpoint.stateDigest);
  });
});
