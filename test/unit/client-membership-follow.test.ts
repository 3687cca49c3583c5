/**
 * Following the replica group (src/client/membership-follow.ts, replica-group.ts): the
 * rule that takes a group only from f+1 matching answers of the members trusted now, when
 * an agreed group replaces the client's, and how the client's connections change with it.
 */
import { describe, expect, test } from "bun:test";
import type { Canonical } from "../../wire/canonical.ts";
import type { Frame, QueryReply } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";
import { DEFAULT_BACKOFF } from "../../src/client/backoff.ts";
import { FitbClient } from "../../src/client/client.ts";
import { NoQuorumError } from "../../src/client/errors.ts";
import {
  type AgreedGroup,
  compareWithFile,
  fileEntryOf,
  groupProblem,
  isNewer,
  MEMBERSHIP_REFRESH_MIN_MS,
  membershipRule,
  noticeAsksRead,
  sameAsFile,
} from "../../src/client/membership-follow.ts";
import type { GroupListing } from "../../src/client/queries.ts";
import type { ClientLogEntry } from "../../src/client/options.ts";
import { ReplicaGroup } from "../../src/client/replica-group.ts";
import type { ClusterConfig } from "../../src/config/cluster.ts";
import { parseClusterConfig } from "../../src/config/cluster.ts";
import { renderClusterToml } from "../../src/config/init.ts";
import { SigningKey } from "../../src/crypto/keys.ts";

const keys = Array.from({ length: 6 }, () => SigningKey.generate().publicKey);
const digest = (byte: number): Uint8Array => new Uint8Array(32).fill(byte);

function members(ids: readonly number[]): Canonical[] {
  return ids.map((id) => ({ id, host: "127.0.0.1", port: 7100 + id, key: keys[id] as Uint8Array }));
}

function answer(replica: number, epoch: number, ids: readonly number[], pending: Canonical = null): QueryReply {
  return { id: 1, replica, ok: true, res: { epoch, f: 1, members: members(ids), digest: digest(epoch), pending } };
}

const FOUR = new Set([0, 1, 2, 3]);

describe("membership rule: f+1 matching answers of the trusted group", () => {
  test("a lone replica naming another group settles nothing, and is listed as dissent once f+1 agree", () => {
    const rule = membershipRule(1, FOUR);
    expect(rule.add(3, answer(3, 7, [3, 4, 5]))).toBeNull();
    expect(rule.add(0, answer(0, 1, [0, 1, 2, 3]))).toBeNull();
    const outcome = rule.add(1, answer(1, 1, [0, 1, 2, 3]));
    expect(outcome?.ok).toBe(true);
    if (outcome?.ok !== true) throw new Error("not agreed");
    expect(outcome.value.group.epoch).toBe(1);
    expect(outcome.value.group.members.map((member) => member.id)).toEqual([0, 1, 2, 3]);
    expect([...outcome.value.dissent]).toEqual([[3, 7]]);
  });

  test("f+1 matching answers move it", () => {
    const rule = membershipRule(1, FOUR);
    expect(rule.add(2, answer(2, 2, [0, 1, 2]))).toBeNull();
    const outcome = rule.add(3, answer(3, 2, [0, 1, 2]));
    expect(outcome?.ok === true && outcome.value.group.epoch).toBe(2);
  });

  test("answers from replicas outside the trusted group do not count, nor a second answer from the same replica", () => {
    const rule = membershipRule(1, FOUR);
    // Replica 5 is not trusted; replica 3 answering twice is one answer.
    expect(rule.add(5, answer(5, 9, [3, 4, 5]))).toBeNull();
    expect(rule.add(3, answer(3, 9, [3, 4, 5]))).toBeNull();
    expect(rule.add(3, answer(3, 9, [3, 4, 5]))).toBeNull();
    const outcome = rule.atDeadline(() => "replica 0: no answer");
    expect(outcome.ok).toBe(false);
    if (outcome.ok) throw new Error("agreed");
    expect(outcome.error).toBeInstanceOf(NoQuorumError);
    expect(outcome.error.message).toContain("fewer than 2 replicas of the group sent the same group");
  });

  test("a pending change one replica has executed and another not does not stand in the way", () => {
    const rule = membershipRule(1, FOUR);
    const pending = { epoch: 2, f: 1, members: members([0, 1, 2]), digest: digest(2), from: 256 };
    expect(rule.add(0, answer(0, 1, [0, 1, 2, 3], pending))).toBeNull();
    expect(rule.add(1, answer(1, 1, [0, 1, 2, 3]))?.ok).toBe(true);
  });

  test("malformed answers and refusals match nothing", () => {
    const rule = membershipRule(1, FOUR);
    expect(rule.add(0, { id: 1, replica: 0, ok: true, res: { epoch: 1 } })).toBeNull();
    expect(rule.add(1, { id: 1, replica: 1, ok: false, code: "BAD_REQUEST", reason: "no" })).toBeNull();
    expect(rule.add(2, answer(2, 1, [0, 1, 2, 3]))).toBeNull();
    expect(rule.atDeadline(() => "").ok).toBe(false);
  });
});

describe("which agreed group replaces the client's", () => {
  const group = (epoch: number, ids: number[], f = 1): GroupListing => ({
    epoch,
    f,
    members: ids.map((id) => ({ id, host: "h", port: 1, peerPort: null, key: keys[id] as Uint8Array })),
    digest: digest(epoch),
  });
  test("a newer epoch does; the same or an older one does not", () => {
    const current = { epoch: 3, ids: [0, 1, 2, 3] };
    expect(isNewer(group(4, [0, 1, 2, 3]), current, false, 0)).toBe(true);
    expect(isNewer(group(3, [0, 1, 2, 4]), current, false, 0)).toBe(false);
    expect(isNewer(group(2, [0, 1, 2, 4]), current, false, 0)).toBe(false);
  });
  test("before any epoch is known, the first group does when it differs from the cluster file, at the file's epoch or later", () => {
    const fromFile = { epoch: null, ids: [0, 1, 2, 3] };
    expect(isNewer(group(0, [0, 1, 2, 3, 4]), fromFile, false, 0)).toBe(true);
    expect(isNewer(group(5, [0, 1, 2, 3]), fromFile, true, 0)).toBe(false);
    expect(isNewer(group(3, [0, 1, 2, 3, 4]), fromFile, false, 3)).toBe(true);
  });
  test("a new client never steps back to a group older than its cluster file's epoch", () => {
    // A file exported at epoch 3; f+1 replicas (one lagging, one faulty) agree on epoch 2.
    const fromFile = { epoch: null, ids: [0, 1, 2, 3] };
    expect(isNewer(group(2, [0, 1, 2, 4]), fromFile, false, 3)).toBe(false);
    expect(isNewer(group(0, [0, 1, 2, 3, 4]), fromFile, false, 3)).toBe(false);
  });
  test("the group the replicas' own file makes is the client's file's group even where the client reaches replicas at other addresses; a new key or id is not", () => {
    const text = renderClusterToml({
      name: "t",
      f: 1,
      // The client reaches the replicas by a public name and forwarded ports.
      replicas: [0, 1, 2, 3].map((id) => ({ id, host: "bus.example.net", port: 9100 + id, publicKey: keys[id] as Uint8Array })),
      adminKeys: [keys[5] as Uint8Array],
      clientKeys: [],
    });
    const parsed = parseClusterConfig(text, "/nonexistent/cluster.toml");
    if (!parsed.ok) throw new Error(JSON.stringify(parsed.errors));
    const file = parsed.config;
    // What the replicas list: their private addresses (group() above: host "h", port 1).
    expect(sameAsFile(group(0, [0, 1, 2, 3]), file)).toBe(true);
    expect(sameAsFile(group(0, [0, 1, 2, 4]), file)).toBe(false);
    expect(sameAsFile(group(0, [0, 1, 2, 3], 0), file)).toBe(false);
    const rotated = {
      ...group(1, [0, 1, 2, 3]),
      members: group(1, [0, 1, 2, 3]).members.map((m) => (m.id === 2 ? { ...m, key: keys[4] as Uint8Array } : m)),
    };
    expect(sameAsFile(rotated, file)).toBe(false);
    // A member the file lists with the same key is dialled where the file says; a new one, or a new key, where the group says.
    expect(fileEntryOf(file, { id: 1, key: keys[1] as Uint8Array })?.host).toBe("bus.example.net");
    expect(fileEntryOf(file, { id: 1, key: keys[1] as Uint8Array })?.port).toBe(9101);
    expect(fileEntryOf(file, { id: 2, key: keys[4] as Uint8Array })).toBeUndefined();
    expect(fileEntryOf(file, { id: 4, key: keys[4] as Uint8Array })).toBeUndefined();
  });
  test("a group the client cannot vote with is named", () => {
    expect(groupProblem(group(1, [0, 1, 2], 1))).toBe("n=3 is below 3f+1 for f=1");
    expect(groupProblem(group(1, [0, 1, 1, 2], 0))).toBe("a replica id is listed twice");
    expect(groupProblem(group(1, [0, 1, 2, 4], 1))).toBeNull();
  });
});

/** A cluster file of replicas 0-3 on 127.0.0.1:7100-7103 (f = 1). */
function fourReplicaFile(): ClusterConfig {
  const text = renderClusterToml({
    name: "t",
    f: 1,
    replicas: [0, 1, 2, 3].map((id) => ({ id, host: "127.0.0.1", port: 7100 + id, publicKey: keys[id] as Uint8Array })),
    adminKeys: [keys[5] as Uint8Array],
    clientKeys: [],
  });
  const parsed = parseClusterConfig(text, "/nonexistent/cluster.toml");
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.errors));
  return parsed.config;
}

describe("the client's connections follow the group", () => {
  const config = fourReplicaFile;
  const none = { onReady() {}, onFrame() {}, onDown() {}, onBadFrame() {} };
  const options = {
    frameBytesMax: 1 << 20,
    outboundBytesMax: 1 << 20,
    sessionTimeoutMs: 1_000,
    pingIntervalMs: 1_000,
    idleTimeoutMs: 5_000,
    failover: { silenceMs: 1_000, preferredRetryMsMin: 1_000, preferredRetryMsMax: 2_000 },
    backoff: DEFAULT_BACKOFF,
    random: () => 0.5,
    now: () => Date.now(),
  };
  const endpoint = (id: number, key = keys[id] as Uint8Array, port = 7100 + id) => ({ id, host: "127.0.0.1", port, publicKey: key });

  test("removed members are closed, new ones added, a changed key or address replaces the connection; n, f and the id space follow", () => {
    const group = new ReplicaGroup(config(), SigningKey.generate(), none, options);
    const before = new Map(group.connections.map((connection) => [connection.id, connection]));
    const change = group.apply(1, 1, [endpoint(0), endpoint(1, keys[4]), endpoint(2, keys[2], 7200), endpoint(4)]);
    expect(change).toEqual({ added: [4], removed: [3], replaced: [1, 2] });
    expect(group.connections.map((connection) => connection.id)).toEqual([0, 1, 2, 4]);
    expect(group.connection(0)).toBe(before.get(0));
    expect(before.get(3)?.state).toBe("closed");
    expect(before.get(1)?.state).toBe("closed");
    expect(group.connection(2)?.address).toBe("127.0.0.1:7200");
    expect(group.connection(3)).toBeUndefined();
    expect([group.n, group.f, group.epoch, group.slots]).toEqual([4, 1, 1, 5]);
    // A member dialled as the group lists it expects the group's key, and a mismatch says so.
    expect(group.connection(4)?.endpoint).toMatchObject({ keySource: { epoch: 1 } });
    expect(group.connection(0)?.endpoint).not.toHaveProperty("keySource");
    group.close();
  });
});

describe("a cluster file whose f is below the group's is stale: warned once per epoch and counted", () => {
  const sevenKeys = Array.from({ length: 7 }, () => SigningKey.generate().publicKey);
  const fileOf = (f: number, ids: readonly number[]): ClusterConfig => {
    const text = renderClusterToml({
      name: "t",
      f,
      replicas: ids.map((id) => ({ id, host: "127.0.0.1", port: 7100 + id, publicKey: sevenKeys[id] as Uint8Array })),
      adminKeys: [keys[5] as Uint8Array],
      clientKeys: [],
    });
    const parsed = parseClusterConfig(text, "/nonexistent/cluster.toml");
    if (!parsed.ok) throw new Error(JSON.stringify(parsed.errors));
    return parsed.config;
  };
  const agreed = (epoch: number, f: number): AgreedGroup => ({
    group: {
      epoch,
      f,
      members: sevenKeys.map((key, id) => ({ id, host: "127.0.0.1", port: 7100 + id, peerPort: null, key })),
      digest: digest(epoch),
    },
    dissent: new Map(),
  });
  // The path a `members` read takes (refreshMembership -> takeGroup), without connections started.
  const take = (client: FitbClient, group: AgreedGroup): void =>
    (client as unknown as { takeGroup(agreed: AgreedGroup): void }).takeGroup(group);
  const staleWarnings = (logs: readonly ClientLogEntry[]): ClientLogEntry[] =>
    logs.filter((entry) => entry.level === "warn" && entry.message.includes("the cluster file is stale"));

  test("a client on the f=1 file that follows the group to f=2 warns once per epoch and reports it", () => {
    const logs: ClientLogEntry[] = [];
    const client = new FitbClient({ config: fileOf(1, [0, 1, 2, 3]), key: SigningKey.generate(), onLog: (entry) => logs.push(entry) });
    try {
      take(client, agreed(2, 1));
      expect(client.membership).toMatchObject({ epoch: 2, f: 1, staleFile: false, staleFileWarnings: 0 });
      expect(staleWarnings(logs)).toEqual([]);
      take(client, agreed(3, 2));
      expect(client.membership).toMatchObject({ epoch: 3, f: 2, staleFile: true, staleFileWarnings: 1 });
      const [warning] = staleWarnings(logs);
      expect(warning?.message).toContain("it says f=1, the replica group (epoch 3) tolerates f=2");
      expect(warning?.message).toContain("fitb cluster export");
      // The same epoch read again: counted once.
      take(client, agreed(3, 2));
      expect(staleWarnings(logs)).toHaveLength(1);
      take(client, agreed(4, 2));
      expect(client.membership).toMatchObject({ epoch: 4, staleFileWarnings: 2 });
      expect(staleWarnings(logs)).toHaveLength(2);
      // Back to f=1: the file is no longer stale.
      take(client, agreed(5, 1));
      expect(client.membership).toMatchObject({ epoch: 5, staleFile: false, staleFileWarnings: 2 });
    } finally {
      client.close();
    }
  });

  test("a client started from a file of epoch 3 takes no older group f+1 replicas agree on, and goes on to a newer one", () => {
    const file: ClusterConfig = { ...fileOf(1, [0, 1, 2, 3]), epoch: 3, firstGroupDigest: digest(0) };
    const client = new FitbClient({ config: file, key: SigningKey.generate() });
    try {
      // A lagging replica and a faulty one agree on epoch 1, then epoch 2: neither is taken.
      take(client, agreed(1, 1));
      take(client, agreed(2, 1));
      expect(client.membership).toMatchObject({ epoch: null, ids: [0, 1, 2, 3], changes: 0 });
      take(client, agreed(4, 1));
      expect(client.membership).toMatchObject({ epoch: 4, ids: [0, 1, 2, 3, 4, 5, 6], changes: 1 });
    } finally {
      client.close();
    }
  });

  test("a client started from a file as recent as the group reads it first without a warning", () => {
    const logs: ClientLogEntry[] = [];
    const client = new FitbClient({
      config: fileOf(2, [0, 1, 2, 3, 4, 5, 6]),
      key: SigningKey.generate(),
      onLog: (entry) => logs.push(entry),
    });
    try {
      take(client, agreed(3, 2));
      expect(client.membership).toMatchObject({ epoch: 3, f: 2, staleFile: false, staleFileWarnings: 0 });
      expect(staleWarnings(logs)).toEqual([]);
    } finally {
      client.close();
    }
  });
});

describe("an EPOCH notice asks for a read of the group, and changes nothing by itself", () => {
  const file = fourReplicaFile;
  const notice = (replica: number, epoch: number): Frame => ({ type: FrameType.EPOCH, body: { replica, epoch } });

  test("the rule: a member's notice of a newer epoch than the one followed (or any, before the first read)", () => {
    expect(noticeAsksRead(4, 3, true)).toBe(true);
    expect(noticeAsksRead(3, 3, true)).toBe(false);
    expect(noticeAsksRead(2, 3, true)).toBe(false);
    expect(noticeAsksRead(0, null, true)).toBe(true);
    expect(noticeAsksRead(9, 3, false)).toBe(false);
  });

  test("a lone replica's notice of epoch 9: the group, f and epoch stay; one read is due a second after the last, however many notices come", () => {
    const now = 50_000;
    const client = new FitbClient({
      config: file(),
      key: SigningKey.generate(),
      timeouts: { membershipRefreshMs: 3_600_000 },
      now: () => now,
    });
    // The client as it is right after a read of the group at `now` (a periodic one an hour away).
    const internals = client as unknown as {
      onFrame(connection: { id: number }, frame: Frame): void;
      follow: { lastAt: number; dueAt: number };
    };
    internals.follow.lastAt = now;
    internals.follow.dueAt = now + 3_600_000;
    try {
      internals.onFrame({ id: 3 }, notice(3, 9));
      expect(client.membership).toMatchObject({ epoch: null, ids: [0, 1, 2, 3], f: 1, changes: 0, refused: 0, notices: 1 });
      expect(client.n).toBe(4);
      expect(internals.follow.dueAt).toBe(now + MEMBERSHIP_REFRESH_MIN_MS);
      // More notices, from the same replica or another: still one read, no sooner.
      internals.onFrame({ id: 3 }, notice(3, 10));
      internals.onFrame({ id: 0 }, notice(0, 9));
      expect(internals.follow.dueAt).toBe(now + MEMBERSHIP_REFRESH_MIN_MS);
      expect(client.membership).toMatchObject({ epoch: null, ids: [0, 1, 2, 3], f: 1, changes: 0, notices: 3 });
      // A replica that is not a member of the group followed is not listened to.
      internals.follow.dueAt = now + 3_600_000;
      internals.onFrame({ id: 7 }, notice(7, 11));
      expect(internals.follow.dueAt).toBe(now + 3_600_000);
      expect(client.membership.notices).toBe(3);
    } finally {
      client.close();
    }
  });
});

describe("the cluster file against the group f+1 replicas agreed on (compareWithFile: admin status warns with it)", () => {
  const file = fourReplicaFile;
  const other = SigningKey.generate().publicKey;
  const member = (id: number, key = keys[id] as Uint8Array, host = "127.0.0.1") => ({ id, host, port: 7100 + id, peerPort: null, key });
  const groupOf = (epoch: number, f: number, list: GroupListing["members"]): GroupListing => ({
    epoch,
    f,
    members: list,
    digest: digest(epoch),
  });
  const take = (client: FitbClient, group: GroupListing): void =>
    (client as unknown as { takeGroup(agreed: AgreedGroup): void }).takeGroup({ group, dissent: new Map() });

  test("the file's f, ids and keys match whatever the addresses (sameAsFile agrees)", () => {
    const group = groupOf(
      0,
      1,
      [0, 1, 2, 3].map((id) => member(id, keys[id], "10.9.9.9")),
    );
    expect(compareWithFile(group, file())).toEqual({ epoch: 0, fileF: 1, groupF: 1, replicas: [], matches: true });
    expect(sameAsFile(group, file())).toBe(true);
  });

  test("another key for replica 3: named with both keys and both addresses", () => {
    const group = groupOf(0, 1, [member(0), member(1), member(2), member(3, other, "10.0.0.3")]);
    const comparison = compareWithFile(group, file());
    expect(comparison.matches).toBe(false);
    expect(sameAsFile(group, file())).toBe(false);
    expect(comparison.replicas).toEqual([
      { id: 3, file: { host: "127.0.0.1", port: 7103, key: keys[3] as Uint8Array }, group: { host: "10.0.0.3", port: 7103, key: other } },
    ]);
  });

  test("a member the file does not list, one the group no longer has, and another f, ascending by id", () => {
    const comparison = compareWithFile(groupOf(2, 2, [member(0), member(1), member(2), member(4), member(5)]), file());
    expect(comparison).toMatchObject({ epoch: 2, fileF: 1, groupF: 2, matches: false });
    expect(comparison.replicas.map((r) => [r.id, r.file === null, r.group === null])).toEqual([
      [3, false, true],
      [4, true, false],
      [5, true, false],
    ]);
    expect(
      compareWithFile(
        groupOf(
          0,
          0,
          [0, 1, 2, 3].map((id) => member(id)),
        ),
        file(),
      ).matches,
    ).toBe(false);
  });

  test("the client keeps the group it follows (MembershipState.group): the file's own, or the one it moved to", () => {
    const matching = new FitbClient({ config: file(), key: SigningKey.generate() });
    const moved = new FitbClient({ config: file(), key: SigningKey.generate() });
    try {
      expect(matching.membership.group).toBeNull();
      const same = groupOf(
        0,
        1,
        [0, 1, 2, 3].map((id) => member(id)),
      );
      take(matching, same);
      expect(matching.membership).toMatchObject({ epoch: 0, changes: 0 });
      expect(matching.membership.group).toBe(same);
      const rekeyed = groupOf(0, 1, [member(0), member(1), member(2), member(3, other)]);
      take(moved, rekeyed);
      expect(moved.membership).toMatchObject({ epoch: 0, changes: 1 });
      expect(moved.membership.group).toBe(rekeyed);
      expect(compareWithFile(moved.membership.group as GroupListing, moved.config).replicas.map((r) => r.id)).toEqual([3]);
    } finally {
      matching.close();
      moved.close();
    }
  });
});
