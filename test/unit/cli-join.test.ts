/**
 * What a joining replica takes from the group's answer (src/cli/join.ts, core/ordering
 * PROTOCOL.md §13): f+1 matching answers of the cluster file's replicas prove the group
 * only if their senders are members of it under the keys their sessions authenticated
 * with, and the group tolerates no more faults than the file says; with the digest the
 * operator read from `fitb admin members`, the group must hash to it. The replicas'
 * answers are given by hand (`ask`).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { initCluster } from "../../src/config/init.ts";
import { answerProblem, type GroupAnswer, JoinRefused, learnGroup } from "../../src/cli/join.ts";
import type { MemberListing, MembersListing } from "../../src/client/queries.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { membershipDigest } from "../../src/replica/epochs.ts";
import { tempDir, testLog } from "./storage-fixtures.ts";

const temp = tempDir("fitb-join-");
afterAll(() => temp.remove());

// Replicas 0..3 with f = 1: the file a replica joining as 4 starts from.
const { config } = initCluster({ dir: temp.dir, replicas: 4, host: "127.0.0.1", basePort: 43_000, name: "join", overwrite: false });
const joiner = SigningKey.generate();
const fileMember = (id: number): MemberListing => {
  const entry = config.replicas[id];
  if (entry === undefined) throw new Error(`no replica ${id}`);
  return { id, host: entry.host, port: entry.port, peerPort: entry.peerPort, key: entry.publicKey };
};
const newcomer: MemberListing = { id: 4, host: "127.0.0.1", port: 43_004, peerPort: null, key: joiner.publicKey };
const start = { seq: 128, digest: new Uint8Array(32).fill(9) };

function listing(members: readonly MemberListing[], epoch = 2, f = 1): MembersListing {
  const digest = membershipDigest({ epoch, f, members: members.map((m) => ({ ...m })) });
  return { epoch, f, members, digest, pending: null };
}

/** The group's answer to the joiner, vouched for by `vouchers` (ids with the keys the cluster file gives them). */
function answer(members: MembersListing, vouchers: readonly number[]): GroupAnswer {
  return { members, start, vouchers: vouchers.map((id) => ({ id, key: fileMember(id).key })) };
}

async function join(reply: GroupAnswer, membersDigest?: Uint8Array) {
  return learnGroup({
    config,
    id: 4,
    key: joiner,
    keyFile: "replica-4.key",
    dataDir: temp.dir,
    log: testLog(),
    ask: async () => reply,
    ...(membersDigest === undefined ? {} : { membersDigest }),
  });
}

describe("a joining replica and the group's answer", () => {
  // Replica 0 was removed (epoch 1) and 4 added (epoch 2): the file still lists 0.
  const current = listing([fileMember(1), fileMember(2), fileMember(3), newcomer]);

  test("an answer vouched for by members of the group it names, under their keys, is taken", async () => {
    const joined = await join(answer(current, [1, 2]));
    expect(joined.epoch.membership.members.map((m) => m.id)).toEqual([1, 2, 3, 4]);
    expect(joined.epoch.start).toEqual(start);
  });

  test("a group made up by a removed replica (its retired key) and one member, which leaves the removed one out, is refused: the file is out of date", async () => {
    const forged = listing([fileMember(1), fileMember(3), newcomer, { ...newcomer, id: 5, key: SigningKey.generate().publicKey }], 3, 1);
    const refusal = join(answer(forged, [0, 3]));
    await expect(refusal).rejects.toBeInstanceOf(JoinRefused);
    await expect(refusal).rejects.toThrow(/^the cluster file is out of date: replica 0, whose answer counted, .* does not list it/);
    await expect(refusal).rejects.toThrow(/fitb cluster export.*fitb admin members.*--members-digest/);
  });

  test("a voucher whose key the group names differently (rotated away) is refused the same way", () => {
    const rotated = listing([{ ...fileMember(1), key: SigningKey.generate().publicKey }, fileMember(2), fileMember(3), newcomer]);
    expect(answerProblem(answer(rotated, [1, 2]), config, null)).toMatch(
      /^the cluster file is out of date: replica 1, .* names another key for it/,
    );
  });

  test("a group that tolerates more faults than the file's f is refused: f_file+1 answers do not prove it", () => {
    const wider = listing([fileMember(1), fileMember(2), fileMember(3), newcomer, ...[5, 6, 7].map((id) => ({ ...newcomer, id }))], 2, 2);
    expect(answerProblem(answer(wider, [1, 2]), config, null)).toMatch(/tolerates f=2, more than the file's f=1/);
  });

  test("with --members-digest, a forgery that names its senders as members is refused; the real group is taken", async () => {
    const digest = membershipDigest({ epoch: current.epoch, f: current.f, members: current.members.map((m) => ({ ...m })) });
    // The removed replica 0 and member 3 list themselves: the membership checks alone cannot tell.
    const forged = listing([fileMember(0), fileMember(3), newcomer, { ...newcomer, id: 5, key: SigningKey.generate().publicKey }]);
    expect(answerProblem(answer(forged, [0, 3]), config, null)).toBeNull();
    await expect(join(answer(forged, [0, 3]), digest)).rejects.toThrow(/is not the one given with --members-digest/);
    // The digest is recomputed from the members listed, never taken from the answer.
    const copied = { ...forged, digest };
    expect(answerProblem(answer(copied, [0, 3]), config, digest)).toMatch(/is not the one given with --members-digest/);
    expect((await join(answer(current, [1, 2]), digest)).epoch.membership.epoch).toBe(2);
  });
});
