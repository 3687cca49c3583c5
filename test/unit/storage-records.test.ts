// Records read back from disk are rebuilt field by field before the core sees them
// (src/replica/storage/records.ts): a row whose checksum matched but whose shape is not
// the core's is refused, never cast and handed on.
import { describe, expect, test } from "bun:test";
import { encodeCanonical, type Canonical } from "../../wire/canonical.ts";
import type { PersistedRecord } from "../../src/core/ordering/types.ts";
import { decodeDecided, decodeHead, decodeRecord, encodeHead, encodeRecord } from "../../src/replica/storage/records.ts";

const digest = new Uint8Array(32).fill(7);
const sig = new Uint8Array(64).fill(9);
const client = `${"ab".repeat(32)}:net.links`;
const request = { client, seq: 1, span: 1, body: new Uint8Array([1, 2, 3]), sig };
const commit = { t: "COMMIT" as const, view: 0, seq: 5, digest, replica: 2, sig };
const decided: PersistedRecord = { t: "decided", seq: 5, view: 0, digest, batch: [request], commits: [commit] };
const checkpoint = { t: "CHECKPOINT" as const, seq: 128, digest, replica: 1, sig };

function raw(value: object): Uint8Array {
  return encodeCanonical(value as unknown as Canonical);
}

describe("persisted records", () => {
  test("every kind the core writes reads back equal", () => {
    const records: PersistedRecord[] = [
      decided,
      { t: "view", view: 3, installedView: 2, status: "viewChange", viewChange: null, newView: null },
      { t: "accept", prePrepare: { t: "PRE_PREPARE", view: 1, seq: 6, digest, ts: 1_764_000_000_000, batch: [request], sig } },
      { t: "checkpoint", seq: 128, stateDigest: digest, appDigest: digest, clients: [[client, 4]] },
      { t: "stable", seq: 128, digest, proof: [checkpoint] },
      { t: "snapshot", seq: 128, stateDigest: digest, appDigest: digest, clients: [], proof: [checkpoint] },
    ];
    for (const record of records) expect(decodeRecord(encodeRecord(record))).toEqual(record);
    expect(decodeDecided(encodeRecord(decided), 5)).toEqual(decided as never);
  });

  const { digest: _dropped, ...withoutDigest } = decided as Extract<PersistedRecord, { t: "decided" }>;
  const damaged: [string, object][] = [
    ["an unknown kind", { t: "mystery", seq: 1 }],
    ["a decided record whose batch holds a number", { ...decided, batch: [42] }],
    ["a decided record whose commit has a short signature", { ...decided, commits: [{ ...commit, sig: new Uint8Array(10) }] }],
    ["a decided record without its digest", withoutDigest],
    ["a view record installed past its view", { t: "view", view: 1, installedView: 2, status: "normal", viewChange: null, newView: null }],
    ["a view record with an unknown status", { t: "view", view: 1, installedView: 1, status: "sideways", viewChange: null, newView: null }],
    [
      "a checkpoint whose client rows are not pairs",
      { t: "checkpoint", seq: 128, stateDigest: digest, appDigest: digest, clients: [[client]] },
    ],
    ["a stable proof with a foreign message", { t: "stable", seq: 128, digest, proof: [{ ...commit }] }],
  ];
  for (const [what, value] of damaged) {
    test(`refuses ${what}`, () => {
      expect(decodeRecord(raw(value))).toBeNull();
    });
  }

  test("a decided record for another seq than its row is refused", () => {
    expect(decodeDecided(encodeRecord(decided), 6)).toBeNull();
  });
});

describe("snapshot heads", () => {
  const head = {
    status: "complete" as const,
    seq: 128,
    stateDigest: digest,
    appDigest: digest,
    clients: [[client, 3]] as [string, number][],
    proof: [checkpoint],
    parts: 2,
    bytes: 100,
    partBytes: 64,
  };

  test("a head reads back equal", () => {
    expect(decodeHead(encodeHead(head))).toEqual(head);
  });

  test("a head whose client rows or proof have the wrong shape is refused", () => {
    expect(decodeHead(raw({ v: 1, ...head, clients: [[1, 2]] }))).toBeNull();
    expect(decodeHead(raw({ v: 1, ...head, proof: [{ t: "CHECKPOINT", seq: 1 }] }))).toBeNull();
  });
});
