/**
 * The replica group as replicated state (src/core/channels/membership.ts): membership
 * commands validated deterministically, a decided change pending until its checkpoint
 * boundary, the membership in the snapshot and digest, and the admin command line.
 */
import { describe, expect, test } from "bun:test";
import { sha256 } from "@noble/hashes/sha2.js";
import { ChannelMachine } from "../../src/core/channels/machine.ts";
import {
  boundaryAfter,
  checkMembership,
  coreIndexOf,
  type Membership,
  MembershipRegistry,
  membershipValue,
  NOT_ADMITTED,
  readRecord,
} from "../../src/core/channels/membership.ts";
import type { AdminCmd, AdminResult } from "../../src/core/channels/types.ts";
import { parseArgs } from "../../src/cli/args.ts";
import { adminCommand, parseAction } from "../../src/cli/commands/admin.ts";
import { UsageError } from "../../src/cli/errors.ts";
import { formatPublicKey } from "../../src/crypto/keys.ts";
import { newViewBytesBound } from "../../src/config/cluster.ts";
import { FRAME_BYTES_MAX } from "../../wire/types.ts";

const hash = (bytes: Uint8Array): Uint8Array => sha256(bytes);
const K = 128;

function key(n: number): Uint8Array {
  return new Uint8Array(32).fill(n + 1);
}

function genesis(n = 4, f = 1): Membership {
  return {
    epoch: 0,
    f,
    members: Array.from({ length: n }, (_, id) => ({ id, host: "127.0.0.1", port: 7000 + id, peerPort: null, key: key(id) })),
  };
}

function machine(): ChannelMachine {
  return new ChannelMachine({ hash, membership: { genesis: genesis(), checkpointInterval: K, admitsNewReplicas: true } });
}

/** A machine as the replica runtime builds it: new replicas admitted, held to the NEW_VIEW bound of `frameBytesMax`. */
function runtime(frameBytesMax: number, group = genesis(4, 1)): ChannelMachine {
  return new ChannelMachine({
    hash,
    membership: {
      genesis: group,
      checkpointInterval: K,
      admitsNewReplicas: true,
      viewChange: { frameBytesMax, newViewBytes: newViewBytesBound },
    },
  });
}

function add(id: number): AdminCmd {
  return { t: "add-replica", id, host: "127.0.0.1", port: 7000 + id, key: key(id) };
}

function refusal(result: AdminResult): string {
  if (result.ok) throw new Error(`expected a refusal, got ${JSON.stringify(result)}`);
  return result.reason;
}

describe("membership commands", () => {
  test("a decided change is pending until the checkpoint boundary after it, then becomes the next epoch", () => {
    const m = machine();
    const result = m.applyAdmin(add(4), 130);
    expect(result).toEqual({ ok: true, cmd: "add-replica", epoch: 1, from: 256 });
    expect(m.membership()?.members.length).toBe(4);
    expect(m.pendingMembership()?.from).toBe(256);
    expect(m.endOfDecision(255)).toBeNull();
    expect(m.membership()?.epoch).toBe(0);
    const next = m.endOfDecision(256);
    expect(next?.epoch).toBe(1);
    expect(next?.members.map((member) => member.id)).toEqual([0, 1, 2, 3, 4]);
    expect(m.pendingMembership()).toBeNull();
    expect(m.endOfDecision(257)).toBeNull();
  });

  test("a change decided at a boundary takes effect at that boundary", () => {
    expect(boundaryAfter(128, K)).toBe(128);
    expect(boundaryAfter(129, K)).toBe(256);
    const m = machine();
    expect(m.applyAdmin(add(4), 128)).toMatchObject({ ok: true, from: 128 });
    expect(m.endOfDecision(128)?.epoch).toBe(1);
  });

  test("changes decided before one boundary make one epoch, each checked against the group the previous ones give", () => {
    const m = machine();
    for (const id of [4, 5, 6]) expect(m.applyAdmin(add(id), 10 + id)).toMatchObject({ ok: true, epoch: 1, from: 128 });
    expect(m.applyAdmin({ t: "set-f", f: 2 }, 20)).toMatchObject({ ok: true, epoch: 1, from: 128 });
    const grown = m.endOfDecision(128) as Membership;
    expect(grown).toMatchObject({ epoch: 1, f: 2 });
    expect(grown.members).toHaveLength(7);
    // Shrinking back: f first, then the replicas, one epoch each.
    expect(refusal(m.applyAdmin({ t: "remove-replica", id: 6 }, 130))).toContain("below 3f+1 = 7");
    expect(m.applyAdmin({ t: "set-f", f: 1 }, 131)).toMatchObject({ ok: true, epoch: 2, from: 256 });
    expect(m.applyAdmin({ t: "remove-replica", id: 6 }, 132)).toMatchObject({ ok: true, epoch: 2 });
    expect(m.applyAdmin({ t: "remove-replica", id: 0 }, 133)).toMatchObject({ ok: true, epoch: 2 });
    const shrunk = m.endOfDecision(256) as Membership;
    expect(shrunk.members.map((member) => member.id)).toEqual([1, 2, 3, 4, 5]);
    // Ranks, not ids, are places in the ordering core.
    expect(coreIndexOf(shrunk, 1)).toBe(0);
    expect(coreIndexOf(shrunk, 0)).toBe(-1);
  });

  test("every unsafe or malformed change is refused with its reason, and changes nothing", () => {
    const m = machine();
    const before = m.digest();
    expect(refusal(m.applyAdmin(add(2), 5))).toBe("replica 2 is already a member");
    expect(refusal(m.applyAdmin({ ...add(9), key: key(1) } as AdminCmd, 5))).toBe("the key is replica 1's");
    expect(refusal(m.applyAdmin({ ...add(9), port: 7001 } as AdminCmd, 5))).toContain("both use 127.0.0.1/7001");
    expect(refusal(m.applyAdmin({ ...add(9), host: "bad host" } as AdminCmd, 5))).toContain("host");
    expect(refusal(m.applyAdmin({ ...add(9), port: 0 } as AdminCmd, 5))).toContain("port");
    expect(refusal(m.applyAdmin({ ...add(64) } as AdminCmd, 5))).toContain("0..63");
    expect(refusal(m.applyAdmin({ t: "remove-replica", id: 3 }, 5))).toContain("leaves n = 3, below 3f+1 = 4");
    expect(refusal(m.applyAdmin({ t: "remove-replica", id: 9 }, 5))).toBe("replica 9 is not a member");
    expect(refusal(m.applyAdmin({ t: "set-f", f: 2 }, 5))).toContain("needs n >= 3f+1 = 7");
    expect(refusal(m.applyAdmin({ t: "set-f", f: 1 }, 5))).toBe("f is already 1");
    expect(refusal(m.applyAdmin({ t: "rotate-replica-key", id: 1, key: key(1) }, 5))).toBe("that is replica 1's key already");
    expect(refusal(m.applyAdmin({ t: "rotate-replica-key", id: 1, key: key(2) }, 5))).toBe("the key is replica 2's");
    expect(refusal(m.applyAdmin({ t: "rotate-replica-key", id: 7, key: key(20) }, 5))).toBe("replica 7 is not a member");
    expect(refusal(m.applyAdmin(add(4)))).toContain("needs the seq");
    expect(m.pendingMembership()).toBeNull();
    expect(m.digest()).toEqual(before);
  });

  test("set-f to the f a pending change already sets is refused, saying it is pending", () => {
    const m = machine();
    for (const id of [4, 5, 6]) expect(m.applyAdmin(add(id), 5).ok).toBe(true);
    expect(m.applyAdmin({ t: "set-f", f: 2 }, 5).ok).toBe(true);
    expect(refusal(m.applyAdmin({ t: "set-f", f: 2 }, 6))).toBe("a pending change already sets f = 2 (it takes effect at a checkpoint)");
    // The current f stays a value a change may set again (the pending one back to it).
    expect(m.applyAdmin({ t: "set-f", f: 1 }, 6).ok).toBe(true);
  });

  test("a rotated key replaces the old one in the next epoch", () => {
    const m = machine();
    expect(m.applyAdmin({ t: "rotate-replica-key", id: 2, key: key(40) }, 3)).toMatchObject({ ok: true, cmd: "rotate-replica-key" });
    const rotated = m.endOfDecision(128) as Membership;
    expect(rotated.members[2]?.key).toEqual(key(40));
    expect(rotated.members.some((member) => member.key.every((byte, i) => byte === key(2)[i]))).toBe(false);
  });

  test("as the replica runtime builds it, the machine takes add-replica, rotate-replica-key and an f above the cluster file's once n >= 3f+1", () => {
    const m = new ChannelMachine({
      hash,
      membership: { genesis: genesis(4, 1), checkpointInterval: K, admitsNewReplicas: true },
    });
    expect(refusal(m.applyAdmin({ t: "set-f", f: 2 }, 5))).toContain("needs n >= 3f+1 = 7");
    for (const id of [4, 5, 6]) expect(m.applyAdmin(add(id), 5).ok).toBe(true);
    expect(m.applyAdmin({ t: "rotate-replica-key", id: 1, key: key(40) }, 5).ok).toBe(true);
    // n = 7 allows f = 2: clients and subscriptions vote with the group's f.
    expect(m.applyAdmin({ t: "set-f", f: 2 }, 6).ok).toBe(true);
    // The checks stay: a key or an id already taken.
    expect(refusal(m.applyAdmin({ ...add(7), key: key(5) } as AdminCmd, 6))).toBe("the key is replica 5's");
    expect(refusal(m.applyAdmin(add(4), 6))).toBe("replica 4 is already a member");
    expect(m.endOfDecision(128)?.members.map((member) => member.id)).toEqual([0, 1, 2, 3, 4, 5, 6]);
  });

  test("a machine built without admitsNewReplicas refuses add-replica, rotate-replica-key and an f above the cluster file's", () => {
    const m = new ChannelMachine({ hash, membership: { genesis: genesis(7, 1), checkpointInterval: K } });
    const before = m.digest();
    expect(refusal(m.applyAdmin(add(9), 5))).toBe(NOT_ADMITTED);
    expect(refusal(m.applyAdmin({ t: "rotate-replica-key", id: 1, key: key(40) }, 5))).toBe(NOT_ADMITTED);
    expect(refusal(m.applyAdmin({ t: "set-f", f: 2 }, 5))).toContain("above the cluster file's f = 1");
    expect(m.digest()).toEqual(before);
    // Lowering f, and removing a replica, are taken.
    expect(m.applyAdmin({ t: "remove-replica", id: 6 }, 5).ok).toBe(true);
    expect(m.applyAdmin({ t: "set-f", f: 0 }, 6).ok).toBe(true);
  });

  test("set-f is refused for an f whose NEW_VIEW would not fit a frame (the bound `fitb config check` holds the file's n and f to)", () => {
    // Largest frames: f = 5 needs at least 16 replicas, whose quorums of 11 make a NEW_VIEW of about 5.6 MB.
    const m = runtime(FRAME_BYTES_MAX);
    for (let id = 4; id < 13; id++) expect(m.applyAdmin(add(id), 5).ok).toBe(true);
    const before = m.digest();
    expect(newViewBytesBound(16, 5)).toBeGreaterThan(FRAME_BYTES_MAX);
    expect(refusal(m.applyAdmin({ t: "set-f", f: 5 }, 6))).toBe(
      `f = 5: with n = 16 and f = 5, a leader change may need a NEW_VIEW message of up to ${newViewBytesBound(16, 5)} bytes, more than limits.frame_bytes_max (${FRAME_BYTES_MAX}), so the group could never change leaders; choose a smaller f, or remove replicas first (limits.frame_bytes_max is fixed for a cluster's life: replicas executing their history again under another bound would judge this command differently; a larger bound needs a new cluster, every data directory replaced)`,
    );
    expect(m.digest()).toEqual(before);
    expect(m.applyAdmin({ t: "set-f", f: 4 }, 6)).toMatchObject({ ok: true, epoch: 1 });
    expect(m.endOfDecision(K)).toMatchObject({ f: 4 });
    // Frames of 1 MiB: already f = 2 does not fit (7 replicas, quorums of 5), and the reason comes before n's.
    const small = runtime(1024 * 1024);
    expect(refusal(small.applyAdmin({ t: "set-f", f: 2 }, 5))).toContain(
      `with n = 7 and f = 2, a leader change may need a NEW_VIEW message of up to ${newViewBytesBound(7, 2)} bytes, more than limits.frame_bytes_max (1048576)`,
    );
    for (const id of [4, 5]) expect(small.applyAdmin(add(id), 5).ok).toBe(true);
    expect(refusal(small.applyAdmin({ t: "set-f", f: 2 }, 6))).toContain("NEW_VIEW");
    // Lowering f is always taken.
    expect(small.applyAdmin({ t: "set-f", f: 0 }, 7).ok).toBe(true);
  });

  test("the NEW_VIEW bound follows the quorum ceil((n+f+1)/2), which grows with n: add-replica and set-f are held to it", () => {
    // 13 replicas with f = 4 (quorums of 9) fit the largest frames; a 14th would make quorums of 10.
    const m = runtime(FRAME_BYTES_MAX, genesis(13, 4));
    expect(newViewBytesBound(13, 4)).toBeLessThanOrEqual(FRAME_BYTES_MAX);
    expect(newViewBytesBound(14, 4)).toBeGreaterThan(FRAME_BYTES_MAX);
    const before = m.digest();
    expect(refusal(m.applyAdmin(add(13), 5))).toBe(
      `adding replica 13: with n = 14 and f = 4, a leader change may need a NEW_VIEW message of up to ${newViewBytesBound(14, 4)} bytes, more than limits.frame_bytes_max (${FRAME_BYTES_MAX}), so the group could never change leaders; lower f first (set-f), or remove a replica (limits.frame_bytes_max is fixed for a cluster's life: replicas executing their history again under another bound would judge this command differently; a larger bound needs a new cluster, every data directory replaced)`,
    );
    expect(m.digest()).toEqual(before);
    // With f lowered in the same pending change, the 14th fits (quorums of 9).
    expect(m.applyAdmin({ t: "set-f", f: 3 }, 6).ok).toBe(true);
    expect(m.applyAdmin(add(13), 7)).toMatchObject({ ok: true, epoch: 1 });
    // And f cannot go back up over 14 replicas.
    expect(refusal(m.applyAdmin({ t: "set-f", f: 4 }, 8))).toContain("with n = 14 and f = 4, a leader change may need");
    expect(m.endOfDecision(K)).toMatchObject({ f: 3 });
    // 16 replicas with f = 1 fit; raising f to 2 (quorums of 10) does not, though 2f+1 = 5.
    const wide = runtime(FRAME_BYTES_MAX, genesis(16, 1));
    expect(refusal(wide.applyAdmin({ t: "set-f", f: 2 }, 5))).toContain("with n = 16 and f = 2, a leader change may need");
    expect(refusal(wide.applyAdmin(add(16), 5))).toContain("adding replica 16: with n = 17 and f = 1");
    expect(wide.applyAdmin({ t: "set-f", f: 0 }, 6).ok).toBe(true);
    expect(wide.applyAdmin(add(16), 7).ok).toBe(true);
  });

  test("a group already over the bound (taken before add-replica was held to it) may still shrink: lowering f and removing replicas are taken", () => {
    const m = runtime(FRAME_BYTES_MAX, genesis(14, 4));
    expect(m.applyAdmin({ t: "remove-replica", id: 13 }, 5).ok).toBe(true);
    expect(runtime(FRAME_BYTES_MAX, genesis(14, 4)).applyAdmin({ t: "set-f", f: 3 }, 5).ok).toBe(true);
  });

  test("a machine that does not manage membership refuses the commands", () => {
    const m = new ChannelMachine({ hash });
    expect(refusal(m.applyAdmin(add(4), 1))).toContain("not managed");
    expect(m.endOfDecision(128)).toBeNull();
  });

  test("a key a member of the current epoch holds is refused for another id while a change is pending, whatever the pending group says", () => {
    const m = machine();
    // Replica 1 rotates away from key(1); until the switch the mesh still accepts key(1) for replica 1.
    expect(m.applyAdmin({ t: "rotate-replica-key", id: 1, key: key(60) }, 5).ok).toBe(true);
    const before = m.digest();
    const heldNow = "the key is replica 1's in epoch 0 until the pending change takes effect";
    expect(refusal(m.applyAdmin({ t: "rotate-replica-key", id: 2, key: key(1) }, 6))).toBe(heldNow);
    expect(refusal(m.applyAdmin({ ...add(9), key: key(1) } as AdminCmd, 6))).toBe(heldNow);
    // A removed replica's key too: replica 3 is a member until the switch.
    expect(m.applyAdmin(add(4), 7).ok).toBe(true);
    expect(m.applyAdmin({ t: "remove-replica", id: 3 }, 7).ok).toBe(true);
    expect(refusal(m.applyAdmin({ ...add(9), key: key(3) } as AdminCmd, 8))).toBe(
      "the key is replica 3's in epoch 0 until the pending change takes effect",
    );
    expect(m.pendingMembership()?.next.members.map((member) => member.id)).toEqual([0, 1, 2, 4]);
    // The same id may take its own current key back (undoing a pending rotation): no other id holds it.
    expect(m.applyAdmin({ t: "rotate-replica-key", id: 1, key: key(1) }, 9).ok).toBe(true);
    expect(m.digest()).not.toEqual(before);
  });

  test("add-replica is refused when the peer port is the client port: the replica could not listen on both", () => {
    const m = machine();
    const before = m.digest();
    expect(refusal(m.applyAdmin({ ...add(9), peerPort: 7009 } as AdminCmd, 5))).toBe(
      "the peer port must differ from the client port (7009); omit it to share the port",
    );
    expect(m.digest()).toEqual(before);
    expect(m.applyAdmin({ ...add(9), peerPort: 8009 } as AdminCmd, 5).ok).toBe(true);
  });

  test("checkMembership refuses a member whose peer port is its client port; a record stored before that rule still loads and changes", () => {
    const group = genesis();
    const legacy: Membership = {
      ...group,
      members: group.members.map((member) => (member.id === 2 ? { ...member, peerPort: member.port } : member)),
    };
    expect(checkMembership(legacy)).toBe("replica 2: its peer port is its client port (7002)");
    const record = { current: membershipValue({ ...legacy, epoch: 1 }), pending: null };
    expect(readRecord(record).current.members[2]?.peerPort).toBe(7002);
    const registry = new MembershipRegistry(group, K, true);
    registry.install(record);
    expect(registry.apply({ t: "rotate-replica-key", id: 0, key: key(40) }, 5).ok).toBe(true);
    expect(registry.apply({ t: "set-f", f: 0 }, 6).ok).toBe(true);
    expect(registry.apply({ t: "remove-replica", id: 2 }, 7).ok).toBe(true);
  });

  test("checkMembership holds the cluster file's rules", () => {
    expect(checkMembership(genesis())).toBeNull();
    expect(checkMembership(genesis(3, 1))).toContain("below 3f+1");
    const twin = genesis();
    expect(
      checkMembership({ ...twin, members: [twin.members[0], { ...twin.members[1], key: key(0) }] as Membership["members"], f: 0 }),
    ).toContain("same key");
  });
});

describe("membership in the snapshot and the digest", () => {
  test("a group that never changed keeps the digest a machine without membership has", () => {
    expect(machine().digest()).toEqual(new ChannelMachine({ hash }).digest());
    expect(machine().snapshot()).toEqual(new ChannelMachine({ hash }).snapshot());
  });

  test("a pending and an effective change are in the digest, and equal inputs give equal digests", () => {
    const a = machine();
    const b = machine();
    const base = a.digest();
    a.applyAdmin(add(4), 7);
    b.applyAdmin(add(4), 7);
    expect(a.digest()).not.toEqual(base);
    expect(a.digest()).toEqual(b.digest());
    const pendingDigest = a.digest();
    a.endOfDecision(128);
    expect(a.digest()).not.toEqual(pendingDigest);
    const c = machine();
    c.applyAdmin(add(5), 7);
    expect(c.digest()).not.toEqual(pendingDigest);
  });

  test("state transfer carries the membership and its pending change", () => {
    const source = machine();
    source.applyAdmin(add(4), 7);
    source.endOfDecision(128);
    source.applyAdmin({ t: "remove-replica", id: 0 }, 200);
    const target = machine();
    const restored = target.restore(source.snapshot());
    expect(restored).toEqual({ ok: true });
    expect(target.digest()).toEqual(source.digest());
    expect(target.membership()).toEqual(source.membership());
    expect(target.pendingMembership()).toEqual(source.pendingMembership());
    expect(target.endOfDecision(256)?.members.map((member) => member.id)).toEqual([1, 2, 3, 4]);
    // And back to an unchanged group: a snapshot without membership resets to the cluster file's.
    expect(target.restore(machine().snapshot())).toEqual({ ok: true });
    expect(target.membership()?.epoch).toBe(0);
    expect(target.pendingMembership()).toBeNull();
  });

  test("a machine that does not manage membership refuses a snapshot that carries one", () => {
    const source = machine();
    source.applyAdmin(add(4), 7);
    const restored = new ChannelMachine({ hash }).restore(source.snapshot());
    expect(restored.ok).toBe(false);
  });
});

describe("fitb admin membership commands", () => {
  const parse = (argv: string[]) => parseAction(parseArgs(["--config", "c.toml", "--key", "a.key", ...argv], adminCommand));
  const replicaKey = formatPublicKey(key(9));

  test("add-replica, remove-replica, rotate-replica-key and set-f build their commands", () => {
    expect(parse(["add-replica", "--id", "4", "--host", "10.0.0.5", "--port", "7004", "--replica-key", replicaKey])).toEqual({
      t: "change",
      cmd: { t: "add-replica", id: 4, host: "10.0.0.5", port: 7004, key: key(9) },
      yes: false,
    });
    expect(parse(["remove-replica", "--id", "2"])).toMatchObject({ cmd: { t: "remove-replica", id: 2 } });
    expect(parse(["rotate-replica-key", "--id", "2", "--replica-key", replicaKey])).toMatchObject({
      cmd: { t: "rotate-replica-key", id: 2, key: key(9) },
    });
    expect(parse(["set-f", "2"])).toMatchObject({ cmd: { t: "set-f", f: 2 } });
    expect(parse(["members", "--json"])).toEqual({ t: "members", json: true });
  });

  test("a missing or wrong argument is a usage error", () => {
    expect(() => parse(["add-replica", "--id", "4", "--host", "h", "--replica-key", replicaKey])).toThrow(UsageError);
    expect(() => parse(["add-replica", "--id", "4", "--host", "h", "--port", "1", "--replica-key", "nope"])).toThrow(UsageError);
    expect(() =>
      parse(["add-replica", "--id", "4", "--host", "h", "--port", "7004", "--peer-port", "7004", "--replica-key", replicaKey]),
    ).toThrow("--peer-port 7004 is --port: peers need a port of their own (omit --peer-port to let them use --port)");
    expect(() => parse(["remove-replica"])).toThrow(UsageError);
    expect(() => parse(["remove-replica", "--id", "2", "--host", "h"])).toThrow(UsageError);
    expect(() => parse(["set-f"])).toThrow(UsageError);
    expect(() => parse(["set-f", "x"])).toThrow(UsageError);
    expect(() => parse(["members", "extra"])).toThrow(UsageError);
  });
});
