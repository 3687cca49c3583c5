// A request goes to every replica from one buffer (src/client/request-tracker.ts,
// ReplicaConnection.sendShared): each connection seals it in place with its own MAC. These
// tests drive the tracker with connections that record what they were handed: the bytes
// and digest they get are the request as it is now, also after it is built again with a
// higher `after` for replicas whose refusal was stale.
import { describe, expect, test } from "bun:test";
import { buildRequest } from "../../src/client/request.ts";
import { toHex } from "../../src/crypto/encoding.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { framePayloadDigest } from "../../src/crypto/session.ts";
import type { Reply } from "../../wire/schemas.ts";
import { trackerFixture } from "./tracker-fixture.ts";

interface Handed {
  readonly replica: number;
  readonly after: number;
  readonly digestMatches: boolean;
}

function fixture() {
  const handed: Handed[] = [];
  const { tracker, floor } = trackerFixture({
    timing: { requestMs: 60_000, resendMs: 1_000 },
    onSent: (replica, frame, bytes, digest) =>
      handed.push({ replica, after: frame.after ?? 0, digestMatches: toHex(digest) === toHex(framePayloadDigest(bytes)) }),
  });
  return { handed, tracker, floor };
}

describe("a request handed to every replica's connection from one buffer", () => {
  test("each connection gets the request with its digest; built again with a higher after, the new bytes and digest", () => {
    const { handed, tracker, floor } = fixture();
    const built = buildRequest(
      SigningKey.generate(),
      { seq: 1, ts: 1, op: { t: "pub", tag: "net.links", events: [new Uint8Array([1])] } },
      1 << 20,
    );
    tracker.track(built, "byzantine/none", "publish to net.links");
    expect(handed).toEqual([0, 1, 2, 3].map((replica) => ({ replica, after: 0, digestMatches: true })));
    // Replica 0 stored it as of decided seq 9; replicas 1 and 2 refused as of seq 5: stale, asked again waiting for 9.
    const reply = (replica: number, ok: boolean, at: number): Reply =>
      (ok
        ? { seq: 1, replica, d: built.digest, ok: true, res: { t: "pub", tag: "net.links", span: 1, first: 1 }, at }
        : { seq: 1, replica, d: built.digest, ok: false, code: "UNKNOWN_CHANNEL", reason: "no such channel", at }) as Reply;
    tracker.onReply(0, reply(0, true, 9));
    tracker.onReply(1, reply(1, false, 5));
    tracker.onReply(2, reply(2, false, 5));
    const again = handed.slice(4);
    // Each stale replica is asked again once, not again at every later refusal.
    expect(again.map((h) => h.replica).sort()).toEqual([1, 2]);
    expect(again.every((h) => h.after === 9 && h.digestMatches)).toBe(true);
    // Replica 3 stored it as of seq 12: two replicas now vouch for 9, only one for 12, and
    // the stale ones were asked to wait for one replica's word once already: not again.
    tracker.onReply(3, reply(3, true, 12));
    expect(handed).toHaveLength(6);
    // The client learns that seq 15 executed (its floor): replica 1's next refusal, behind
    // it, has both stale ones asked again, now to wait for 15.
    floor.observe(15);
    tracker.onReply(1, reply(1, false, 9));
    const later = handed.slice(6);
    expect(later.map((h) => h.replica).sort()).toEqual([1, 2]);
    expect(later.every((h) => h.after === 15 && h.digestMatches)).toBe(true);
  });
});
