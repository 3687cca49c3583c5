import { describe, expect, test } from "bun:test";
import type { Canonical } from "../../wire/canonical.ts";
import {
  DUPLICATE_WINDOW_MS,
  EXECUTED_PASS_MS,
  forwardAllExecuted,
  PeerFilter,
  type PeerFilterOptions,
  peekPeerMessage,
  peekTransferPart,
  provesFaulty,
} from "../../src/replica/peer-filter.ts";
import { encodeEnvelope, encodeTransferMessage } from "../../src/replica/peer-messages.ts";

const ordering = (m: Record<string, unknown>): Uint8Array => encodeEnvelope("ordering", m as unknown as Canonical);
const bytes = (n: number, fill = 0): Uint8Array => new Uint8Array(n).fill(fill);
const request = (seq: number) => ({ client: `${"ab".repeat(32)}:t`, seq, span: 1, body: bytes(3000, seq), sig: bytes(64) });
const prePrepare = (seq: number) =>
  ordering({ t: "PRE_PREPARE", view: 1, seq, ts: 5, digest: bytes(32), batch: [request(1), request(2)], sig: bytes(64) });
const vote = (t: string, seq: number, replica: number) => ordering({ t, view: 1, seq, digest: bytes(32), replica, sig: bytes(64) });
const forward = (seqs: number[]) => ordering({ t: "FORWARD", requests: seqs.map(request) });
const filterWith = (options: Partial<PeerFilterOptions>) =>
  new PeerFilter({ lastExecuted: () => 0, lastExecutedOf: () => 0, forwardBytesMax: 1 << 20, ...options });

describe("peekPeerMessage", () => {
  test("reads the kind, type, seq and signer without decoding the batch", () => {
    expect(peekPeerMessage(prePrepare(77))).toEqual({ kind: "ordering", t: "PRE_PREPARE", seq: 77, replica: null });
    expect(peekPeerMessage(vote("COMMIT", 300, 2))).toEqual({ kind: "ordering", t: "COMMIT", seq: 300, replica: 2 });
    expect(peekPeerMessage(forward([1]))).toEqual({ kind: "ordering", t: "FORWARD", seq: null, replica: null });
    const transfer = encodeTransferMessage({ t: "none", seq: 4, nonce: 1, reason: "x" });
    expect(peekPeerMessage(transfer)).toEqual({ kind: "state-transfer", t: null, seq: null, replica: null });
  });

  test("a state transfer part's seq and nonce are read in place; any other message is no part", () => {
    const part = encodeTransferMessage({ t: "part", seq: 400, nonce: 1_700_000_000_123, part: 3, data: bytes(70_000, 7), end: false });
    expect(peekTransferPart(part)).toEqual({ seq: 400, nonce: 1_700_000_000_123 });
    expect(peekTransferPart(encodeTransferMessage({ t: "none", seq: 4, nonce: 1, reason: "x" }))).toBeNull();
    expect(peekTransferPart(encodeTransferMessage({ t: "get", seq: 4, nonce: 1, digest: bytes(32), part: 0, count: 4 }))).toBeNull();
    expect(peekTransferPart(prePrepare(3))).toBeNull();
    // What merely starts like a state transfer envelope is not spared the byte budget.
    expect(peekTransferPart(encodeEnvelope("state-transfer", [[], []]))).toBeNull();
    for (let end = 0; end < part.length; end += 997) expect(peekTransferPart(part.subarray(0, end))).toBeNull();
  });

  test("what it cannot read is null (the full path judges it), never a throw", () => {
    expect(peekPeerMessage(new Uint8Array([0xff, 0x00, 0x13]))).toBeNull();
    expect(peekPeerMessage(new Uint8Array(0))).toBeNull();
    const cut = prePrepare(5);
    for (let end = 0; end < 60; end++) expect(() => peekPeerMessage(cut.subarray(0, end))).not.toThrow();
  });

  test("an envelope of a known kind whose message is not a map is what no correct replica sends: dropped before decoding, as proof", () => {
    // The decode amplification of the review: four million empty arrays cost a full decode a second or so; here one head byte.
    const bomb = encodeEnvelope("ordering", new Array<Canonical>(100_000).fill([]));
    for (const m of [bomb, encodeEnvelope("ordering", "text" as Canonical), encodeEnvelope("state-transfer", 5)]) {
      const peek = peekPeerMessage(m);
      expect(peek?.notMap).toBe(true);
      const reason = filterWith({}).check(1, m, peek);
      expect(reason).toBe("not-a-map");
      expect(provesFaulty(reason as string)).toBe(true);
    }
    const transfer = encodeTransferMessage({ t: "none", seq: 4, nonce: 1, reason: "x" });
    expect(filterWith({}).check(1, transfer, peekPeerMessage(transfer))).toBeNull();
  });
});

describe("PeerFilter", () => {
  test("drops PRE_PREPAREs for seqs this replica executed, but one per peer per EXECUTED_PASS_MS; votes are left to the core", () => {
    let executed = 100;
    let t = 0;
    const filter = filterWith({ lastExecuted: () => executed, now: () => t });
    const check = (m: Uint8Array, from = 1) => filter.check(from, m, peekPeerMessage(m));
    expect(check(prePrepare(100))).toBeNull();
    expect(check(prePrepare(100))).toBe("executed");
    expect(check(prePrepare(7))).toBe("executed");
    expect(check(prePrepare(7), 2)).toBeNull();
    t += EXECUTED_PASS_MS;
    expect(check(prePrepare(7))).toBeNull();
    expect(check(prePrepare(101))).toBeNull();
    // A lagging voter's votes are answered by the core with the decisions: not dropped.
    expect(check(vote("PREPARE", 99, 1))).toBeNull();
    expect(check(vote("COMMIT", 1, 1))).toBeNull();
    executed = 200;
    expect(check(prePrepare(101))).toBe("executed");
  });

  test("drops votes naming a signer other than the peer that sent them", () => {
    const filter = filterWith({});
    const check = (m: Uint8Array, from: number) => filter.check(from, m, peekPeerMessage(m));
    expect(check(vote("PREPARE", 5, 2), 3)).toBe("another-signer");
    expect(check(ordering({ t: "CHECKPOINT", seq: 50, digest: bytes(32), replica: 2, sig: bytes(64) }), 3)).toBe("another-signer");
    expect(check(vote("PREPARE", 5, 3), 3)).toBeNull();
  });

  test("drops a FORWARD larger than a correct replica sends", () => {
    const filter = filterWith({ forwardBytesMax: 10_000 });
    const check = (m: Uint8Array) => filter.check(1, m, peekPeerMessage(m));
    expect(check(forward([1, 2]))).toBeNull();
    expect(check(forward([1, 2, 3, 4]))).toBe("oversize");
  });

  test("drops a FORWARD whose every request executed here; one with a request still to execute goes on", () => {
    let executed = 2;
    const filter = filterWith({ lastExecutedOf: (space) => (space === `${"ab".repeat(32)}:t` ? executed : 0) });
    const check = (m: Uint8Array) => filter.check(1, m, peekPeerMessage(m));
    expect(forwardAllExecuted(forward([1, 2]), () => 2)).toBe(true);
    expect(forwardAllExecuted(forward([1, 2, 3]), () => 2)).toBe(false);
    expect(forwardAllExecuted(prePrepare(1), () => 99)).toBe(false);
    expect(check(forward([1, 2]))).toBe("executed");
    expect(check(forward([2, 3]))).toBeNull();
    executed = 3;
    expect(check(forward([3]))).toBe("executed");
  });

  test("drops a FORWARD the same peer sent within the window; another peer's copy, or a later one, passes", () => {
    let t = 0;
    const filter = filterWith({ now: () => t });
    const check = (m: Uint8Array, from: number) => filter.check(from, m, peekPeerMessage(m));
    const f = forward([1, 2, 3]);
    expect(check(f, 3)).toBeNull();
    expect(check(f, 3)).toBe("duplicate");
    expect(check(forward([1, 2]), 3)).toBeNull();
    expect(check(f, 2)).toBeNull();
    t += DUPLICATE_WINDOW_MS;
    expect(check(f, 3)).toBeNull();
    expect(check(f, 3)).toBe("duplicate");
  });
});

describe("membership epochs", () => {
  test("the envelope's epoch is read, and a vote's signer is judged against the peer's rank in that epoch only", () => {
    const vote = (epoch: number, replica: number): Uint8Array =>
      encodeEnvelope("ordering", { t: "COMMIT", view: 0, seq: 5, digest: bytes(32), replica, sig: bytes(64) }, epoch);
    // Epoch 1 after replica 0 left: replica 3 is rank 2.
    const filter = filterWith({ rankOf: (id, epoch) => (epoch === 1 ? ([-1, 0, 1, 2, 3][id] ?? -1) : -1) });
    expect(peekPeerMessage(vote(1, 2))).toMatchObject({ kind: "ordering", t: "COMMIT", replica: 2, epoch: 1 });
    expect(filter.check(3, vote(1, 2), peekPeerMessage(vote(1, 2)))).toBeNull();
    expect(filter.check(3, vote(1, 3), peekPeerMessage(vote(1, 3)))).toBe("another-signer");
    // A message of another epoch is not judged here: the driver refuses it with its reason.
    expect(filter.check(3, vote(0, 3), peekPeerMessage(vote(0, 3)))).toBeNull();
  });
});
