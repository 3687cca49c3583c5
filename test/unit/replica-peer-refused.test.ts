/**
 * What the ordering runtime refuses of a peer before the core sees it (an envelope that
 * does not decode, a message that is not valid, forwarded requests of keys not registered
 * for them) is counted and logged with the peer, at most one line per peer and reason per
 * interval, each line saying how many were refused since the one before. A real driver,
 * core, store and mesh (not started), fed peer messages by hand.
 */
import { afterAll, expect, test } from "bun:test";
import { type Canonical, encodeCanonical, tryDecodeCanonical } from "../../wire/canonical.ts";
import { encodeEnvelope, peerMessageItemsMax } from "../../src/replica/peer-messages.ts";
import { toHex } from "../../wire/bytes.ts";
import { driverFixture } from "./driver-fixture.ts";
import { tempDir } from "./storage-fixtures.ts";

const temp = tempDir("fitb-peer-refused-");
const tempFaulty = tempDir("fitb-peer-faulty-");
const tempForward = tempDir("fitb-peer-forward-");
afterAll(() => {
  temp.remove();
  tempFaulty.remove();
  tempForward.remove();
});

test("refused peer messages and forwarded requests are counted and logged with the peer, once per interval per peer and reason", () => {
  const { driver, mesh, metrics, log, close, keyOf } = driverFixture(temp.dir, 41_000);
  driver.start();
  try {
    for (let i = 0; i < 3; i++) driver.onPeerMessage(2, Uint8Array.of(0xff, 0x00, i), keyOf(2));
    driver.onPeerMessage(1, encodeEnvelope("ordering", { t: "PREPARE" }), keyOf(1));
    const stranger = "cc".repeat(32);
    const request = { client: `${stranger}:net.links`, seq: 1, span: 1, body: new Uint8Array([1]), sig: new Uint8Array(64) };
    for (let i = 0; i < 2; i++)
      driver.onPeerMessage(3, encodeEnvelope("ordering", { t: "FORWARD", requests: [request, request] }), keyOf(3));
    // A COMMIT from replica 1 over a session opened with replica 2's key (as a rotated-away
    // key's holder would send it while the rotation waits): refused before the core, as
    // every ordering message is whose session key is not the epoch's for its sender.
    const commit = { t: "COMMIT", view: 0, seq: 1, digest: new Uint8Array(32), replica: 1, sig: new Uint8Array(64) };
    driver.onPeerMessage(1, encodeEnvelope("ordering", commit), keyOf(2));
    expect(metrics.get("peer_messages_other_key_total")).toBe(1);
    expect(metrics.get("peer_messages_rejected_total")).toBe(5);
    expect(metrics.get("forwarded_requests_dropped_total")).toBe(4);
    const lines = log.lines.filter((l) => l.msg === "peer message refused").map((l) => l.fields);
    expect(lines).toEqual([
      { peer: 2, reason: "an envelope that does not decode", count: 1, alsoSinceLastLine: 0 },
      { peer: 1, reason: "an ordering message that is not valid", count: 1, alsoSinceLastLine: 0 },
      { peer: 3, reason: "forwarded requests of keys not registered for them", count: 2, alsoSinceLastLine: 0 },
      {
        peer: 1,
        reason: `an ordering message over a session opened with key ${toHex(keyOf(2))}, not replica 1's key in epoch 0`,
        count: 1,
        alsoSinceLastLine: 0,
      },
    ]);
    // What no correct replica sends mutes its sender (bytes that do not decode, a PREPARE
    // without its fields); forwarded requests of unregistered keys and a COMMIT over another
    // replica's session prove nothing against the peer that relayed them.
    expect(mesh.isMuted(2)).toBe(true);
    expect(mesh.isMuted(1)).toBe(true);
    expect(mesh.isMuted(3)).toBe(false);
    expect(metrics.peerMuted.with("2", "misbehaving").value).toBe(1);
  } finally {
    close();
  }
});

test("a message that decodes but is not valid proves its sender faulty (muted); a kind this version does not know, a later version's, does not", () => {
  const { driver, mesh, metrics, close, keyOf } = driverFixture(tempFaulty.dir, 41_100);
  driver.start();
  try {
    // Replica 1: kinds a later version may add (an envelope kind, an ordering and a state transfer message kind).
    driver.onPeerMessage(1, encodeCanonical({ kind: "gossip", message: {} }), keyOf(1));
    driver.onPeerMessage(1, encodeEnvelope("ordering", { t: "PRE_VOTE", view: 3 }), keyOf(1));
    driver.onPeerMessage(1, encodeTransferMessageLoose({ t: "resume", seq: 4, nonce: 1 }), keyOf(1));
    expect(metrics.get("peer_messages_rejected_total")).toBe(3);
    expect(mesh.isMuted(1)).toBe(false);
    // Replica 2: a PREPARE padded with 200,000 empty arrays. The envelope's decoding stops
    // at what a valid message of its size holds, and the sender is muted.
    const bomb = encodeEnvelope("ordering", { t: "PREPARE", pad: new Array<Canonical>(200_000).fill([]) });
    const decoded = tryDecodeCanonical(bomb, peerMessageItemsMax(bomb.length));
    expect(decoded.ok ? null : decoded.error.code).toBe("items-exceeded");
    expect(decoded.ok ? 0 : decoded.error.offset).toBeLessThan(bomb.length / 3);
    driver.onPeerMessage(2, bomb, keyOf(2));
    expect(mesh.isMuted(2)).toBe(true);
    // Replica 3: a state transfer part without its data.
    driver.onPeerMessage(3, encodeTransferMessageLoose({ t: "part", seq: 4, nonce: 1, part: 0, end: true }), keyOf(3));
    expect(mesh.isMuted(3)).toBe(true);
    expect(metrics.peerMuted.with("3", "misbehaving").value).toBe(1);
    expect(metrics.get("peer_messages_rejected_total")).toBe(5);
  } finally {
    close();
  }
});

test("a FORWARD of a request whose signature fails, in a space the replica takes (an admin key's), mutes the peer that sent it", () => {
  const { driver, mesh, metrics, close, keyOf, config } = driverFixture(tempForward.dir, 41_200);
  driver.start();
  try {
    const admin = toHex(config.adminKeys[0] as Uint8Array);
    const forged = { client: `${admin}:!admin`, seq: 1, span: 1, body: new Uint8Array([1]), sig: new Uint8Array(64) };
    driver.onPeerMessage(3, encodeEnvelope("ordering", { t: "FORWARD", requests: [forged, { ...forged, seq: 2 }] }), keyOf(3));
    expect(metrics.get("peer_misbehaviour_total")).toBe(1);
    expect(mesh.isMuted(3)).toBe(true);
    expect(metrics.peerMuted.with("3", "misbehaving").value).toBe(1);
  } finally {
    close();
  }
});

/** A state transfer envelope around any map (encodeTransferMessage takes only valid ones). */
function encodeTransferMessageLoose(message: { [key: string]: Canonical }): Uint8Array {
  return encodeEnvelope("state-transfer", message);
}
