/**
 * What a joining replica takes from the group's answer (src/cli/join.ts, core/ordering
 * PROTOCOL.md §13): f+1 matching answers of the cluster file's replicas prove the group
 * only if their senders are members of it under the keys their sessions authenticated
 * with, and the group tolerates no more faults than the file says; with the digest the
 * operator read from `fitb admin members`, the group must hash to it, and f+1 of its own
 * members must vouch whatever the file's f. A voucher under a key the group no longer
 * names, or too few of them, is asked again for JOIN_UNPROVEN_WAIT_MS. The replicas'
 * answers are given by hand (`ask`), and so is the clock (`now`: each ask is a second).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { initCluster } from "../../src/config/init.ts";
import { answerProblem, type GroupAnswer, JOIN_UNPROVEN_WAIT_MS, JoinRefused, learnGroup } from "../../src/cli/join.ts";
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

/** How many times the last `join` asked the group. */
let asks = 0;

/** learnGroup with the group answering `replies` in turn (the last one again and again), one second a reply. */
async function join(replies: GroupAnswer | readonly GroupAnswer[], membersDigest?: Uint8Array) {
  const queue = Array.isArray(replies) ? replies : [replies];
  let clockMs = 0;
  asks = 0;
  return learnGroup({
    config,
    id: 4,
    key: joiner,
    keyFile: "replica-4.key",
    dataDir: temp.dir,
    log: testLog(),
    pollMs: 0,
    now: () => clockMs,
    ask: async () => {
      const reply = queue[Math.min(asks, queue.length - 1)] as GroupAnswer;
      asks++;
      clockMs += 1_000;
      return reply;
    },
    ...(membersDigest === undefined ? {} : { membersDigest }),
  });
}

/** The digest `fitb admin members` prints for `members`. */
function digestOf(members: MembersListing): Uint8Array {
  return membershipDigest({ epoch: members.epoch, f: members.f, members: members.members.map((m) => ({ ...m })) });
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

  test("a voucher whose key the group names differently (rotated away) is refused the same way, once asking again for JOIN_UNPROVEN_WAIT_MS did not change it", async () => {
    const rotated = listing([{ ...fileMember(1), key: SigningKey.generate().publicKey }, fileMember(2), fileMember(3), newcomer]);
    const problem = answerProblem(answer(rotated, [1, 2]), config, null);
    expect(problem?.why).toMatch(/^the cluster file is out of date: replica 1, .* names another key for it/);
    expect(problem?.final).toBe(false);
    const refusal = join(answer(rotated, [1, 2]));
    await expect(refusal).rejects.toThrow(/a key rotation may still be switching.*still so after asking again for 60 s$/);
    expect(asks).toBe(JOIN_UNPROVEN_WAIT_MS / 1_000 + 1);
  });

  test("a rotation still switching is waited for: once the rotated replica answers under its new key, the answer is taken", async () => {
    const rotatedKey = SigningKey.generate().publicKey;
    const rotated = listing([{ ...fileMember(1), key: rotatedKey }, fileMember(2), fileMember(3), newcomer]);
    const switched: GroupAnswer = {
      ...answer(rotated, [2]),
      vouchers: [
        { id: 1, key: rotatedKey },
        { id: 2, key: fileMember(2).key },
      ],
    };
    const joined = await join([answer(rotated, [1, 2]), answer(rotated, [1, 2]), switched]);
    expect(joined.epoch.membership.members.map((m) => m.id)).toEqual([1, 2, 3, 4]);
    expect(asks).toBe(3);
  });

  test("a group that tolerates more faults than the file's f is refused: f_file+1 answers do not prove it", async () => {
    const wider = listing([fileMember(1), fileMember(2), fileMember(3), newcomer, ...[5, 6, 7].map((id) => ({ ...newcomer, id }))], 2, 2);
    expect(answerProblem(answer(wider, [1, 2]), config, null)).toEqual({
      why: expect.stringMatching(/tolerates f=2, more than the file's f=1/),
      final: true,
    });
    await expect(join(answer(wider, [1, 2]))).rejects.toThrow(/tolerates f=2, more than the file's f=1.*--members-digest/);
    expect(asks).toBe(1);
  });

  test("with --members-digest, a group that raised f (n=7, f=2) is taken from an f=1 file once f+1=3 of its members vouch, over several asks", async () => {
    const extra = [5, 6].map((id) => ({ ...newcomer, id, key: SigningKey.generate().publicKey }));
    const wider = listing([fileMember(0), fileMember(1), fileMember(2), fileMember(3), newcomer, ...extra], 3, 2);
    const digest = digestOf(wider);
    // Two vouchers are the file's f+1 but not the group's: not yet proof, asked again.
    expect(answerProblem(answer(wider, [1, 2]), config, digest)).toEqual({
      why: expect.stringMatching(/^only 2 of the replicas .* it needs 3$/),
      final: false,
    });
    const joined = await join([answer(wider, [1, 2]), answer(wider, [2, 3])], digest);
    expect(joined.epoch.membership.f).toBe(2);
    expect(joined.epoch.membership.members).toHaveLength(7);
    expect(asks).toBe(2);
  });

  test("with --members-digest, vouchers the group does not name under their keys do not count, and too few are refused after JOIN_UNPROVEN_WAIT_MS", async () => {
    const rotatedKey = SigningKey.generate().publicKey;
    const extra = [5, 6].map((id) => ({ ...newcomer, id, key: SigningKey.generate().publicKey }));
    // 0 was removed, 1 rotated (still answering under its old key): only 2 and 3 count.
    const wider = listing([{ ...fileMember(1), key: rotatedKey }, fileMember(2), fileMember(3), newcomer, ...extra], 3, 2);
    const refusal = join(answer(wider, [0, 1, 2, 3]), digestOf(wider));
    await expect(refusal).rejects.toThrow(
      /^only 2 of the replicas .* it needs 3 \(replicas 1 answered under another key .*a key rotation may still be switching.*\); still so after asking again for 60 s$/,
    );
    expect(asks).toBe(JOIN_UNPROVEN_WAIT_MS / 1_000 + 1);
  });

  test("with --members-digest, a forgery that names its senders as members is refused; the real group is taken", async () => {
    const digest = digestOf(current);
    // The removed replica 0 and member 3 list themselves: the membership checks alone cannot tell.
    const forged = listing([fileMember(0), fileMember(3), newcomer, { ...newcomer, id: 5, key: SigningKey.generate().publicKey }]);
    expect(answerProblem(answer(forged, [0, 3]), config, null)).toBeNull();
    await expect(join(answer(forged, [0, 3]), digest)).rejects.toThrow(/is not the one given with --members-digest/);
    expect(asks).toBe(1);
    // The digest is recomputed from the members listed, never taken from the answer.
    const copied = { ...forged, digest };
    expect(answerProblem(answer(copied, [0, 3]), config, digest)?.why).toMatch(/is not the one given with --members-digest/);
    expect((await join(answer(current, [1, 2]), digest)).epoch.membership.epoch).toBe(2);
  });
});
