// `fitb admin status` as a monitoring check (issue 15, item 2): every replica's line
// whatever answered, the same reason in the table and the JSON, flags for a dead or
// disputed leader, replicas in another view and lagging ones, and the exit codes; a
// cluster file that lists the group otherwise is a warning.
import { describe, expect, test } from "bun:test";
import { type ClusterStatus, summarizeStatus } from "../../src/client/client.ts";
import type { FileComparison } from "../../src/client/membership-follow.ts";
import type { EachAnswer, ReplicaStatusAnswer } from "../../src/client/queries.ts";
import {
  assessStatus,
  fileDiffersWarning,
  judgePeerLinks,
  LAG_SEQS_DEFAULT,
  STATUS_DEGRADED,
  STATUS_NO_QUORUM,
  STATUS_OK,
  statusJsonReport,
  statusTable,
} from "../../src/cli/commands/status-report.ts";
import { formatPublicKey, SigningKey } from "../../src/crypto/keys.ts";

const CLUSTER = { name: "unit", n: 4, f: 1 };
const ADDRESSES = [0, 1, 2, 3].map((id) => ({ id, address: `127.0.0.1:710${id}`, isReady: true }));

type Answer = Partial<ReplicaStatusAnswer> | null;

/** Status as the client folds it, from each replica's answer (null: it did not answer). */
function statusOf(answers: Answer[]): ClusterStatus {
  const map = new Map<number, EachAnswer<ReplicaStatusAnswer>>();
  answers.forEach((answer, id) => {
    if (answer !== null) map.set(id, { ok: true, value: { replica: id, view: 0, leader: 0, lastDecided: 10, channels: 2, ...answer } });
  });
  return summarizeStatus(1, map, ADDRESSES);
}

const REFUSED = new Map([0, 1, 2, 3].map((id) => [id, "connection refused (ECONNREFUSED)"]));

describe("admin status report", () => {
  test("all four up and in step: ok, exit 0, no problems", () => {
    const report = assessStatus(CLUSTER, statusOf([{}, {}, {}, {}]), REFUSED);
    expect(report.health).toBe("ok");
    expect(report.exitCode).toBe(STATUS_OK);
    expect(report.problems).toEqual([]);
    expect(statusTable(report)).toHaveLength(3 + 4);
  });

  test("no replica answers: every row is printed, up false, with the reason in the table and the JSON; exit 2", () => {
    const report = assessStatus(CLUSTER, statusOf([null, null, null, null]), REFUSED);
    expect(report.exitCode).toBe(STATUS_NO_QUORUM);
    const table = statusTable(report);
    for (const id of [0, 1, 2, 3]) {
      const row = table.find((line) => line.startsWith(`${id} `)) as string;
      expect(row).toContain("false");
      expect(row).toContain("connection refused (ECONNREFUSED)");
    }
    const json = statusJsonReport(report) as { replicas: { up: boolean; reason: string }[]; health: string };
    expect(json.health).toBe("no-quorum");
    expect(json.replicas.map((r) => [r.up, r.reason])).toEqual([0, 1, 2, 3].map(() => [false, "connection refused (ECONNREFUSED)"]));
    expect(table.some((line) => line.startsWith("NO QUORUM: 0 of 4 replicas answered, 3 are needed"))).toBe(true);
  });

  test("a replica in another membership epoch (restored from an old copy) is flagged other-epoch, a problem; the JSON has each one's epoch", () => {
    const report = assessStatus(CLUSTER, statusOf([{ epoch: 10 }, { epoch: 10 }, { epoch: 10 }, { epoch: 5 }]), REFUSED);
    expect(report.replicas[3]?.flags).toContain("other-epoch");
    expect(report.replicas[0]?.flags).not.toContain("other-epoch");
    expect(report.problems).toContain("replica 3 orders in epoch 5, not epoch 10 as the others do (views and seqs are its own epoch's)");
    expect(report.exitCode).not.toBe(STATUS_OK);
    const json = statusJsonReport(report) as { replicas: { epoch: number }[] };
    expect(json.replicas.map((r) => r.epoch)).toEqual([10, 10, 10, 5]);
    // An answer that does not say its epoch (an older replica) is not flagged.
    expect(assessStatus(CLUSTER, statusOf([{ epoch: 10 }, { epoch: 10 }, {}, {}]), REFUSED).problems).toEqual([]);
    // One epoch behind, during a switch, in another view: a warning, and not also other-view.
    const switching = assessStatus(CLUSTER, statusOf([{ epoch: 10 }, { epoch: 10 }, { epoch: 10 }, { epoch: 9, view: 3 }]), REFUSED);
    expect(switching.replicas[3]?.flags).toEqual(["other-epoch"]);
    expect(switching.problems).toEqual([]);
    expect(switching.warnings).toContain(
      "replica 3 orders in epoch 9, not epoch 10 as the others do (views and seqs are its own epoch's); it switches once it executes the checkpoint that ends it",
    );
  });

  test("a replica whose votes are fenced after a restart without a clean stop is flagged votes-fenced, a warning", () => {
    const report = assessStatus(CLUSTER, statusOf([{}, { votesFenced: true }, {}, {}]), REFUSED);
    expect(report.replicas[1]?.flags).toEqual(["votes-fenced"]);
    expect(report.problems).toEqual([]);
    expect(report.warnings.some((w) => w.startsWith("replica 1 restarted without a clean stop and votes on no new proposal"))).toBe(true);
    expect(statusTable(report).find((line) => line.startsWith("1 "))).toContain("votes-fenced");
  });

  test("a replica fenced because its store lost records is flagged records-lost, a problem (exit 1) that says how to end it, not also votes-fenced", () => {
    const report = assessStatus(CLUSTER, statusOf([{}, {}, { votesFenced: true, lostRecordsFenced: true }, {}]), REFUSED);
    expect(report.replicas[2]?.flags).toEqual(["records-lost"]);
    expect(report.exitCode).toBe(STATUS_DEGRADED);
    expect(report.warnings).toEqual([]);
    expect(report.problems).toHaveLength(1);
    expect(report.problems[0]).toStartWith("replica 2 lost records (its store was damaged or moved aside) and votes in no view");
    expect(report.problems[0]).toContain("stop the leader, publish an event");
    expect(statusTable(report).find((line) => line.startsWith("2 "))).toContain("records-lost");
  });

  test("one replica answers: the table is still printed, exit 2", () => {
    const report = assessStatus(CLUSTER, statusOf([{}, null, null, null]), REFUSED);
    expect(report.exitCode).toBe(STATUS_NO_QUORUM);
    expect(report.replicas.map((r) => r.up)).toEqual([true, false, false, false]);
  });

  test("priority shedding: a replica shedding now is noted with its shares, not a flag or a problem; the JSON has every replica's", () => {
    const on = { targetMs: 2, low: 100, normal: 100 };
    const report = assessStatus(CLUSTER, statusOf([{ shedding: { ...on, low: 15 } }, { shedding: on }, {}, {}]), REFUSED);
    expect(report.health).toBe("ok");
    expect(report.replicas.map((r) => r.flags)).toEqual([[], [], [], []]);
    const table = statusTable(report);
    expect(table.find((line) => line.startsWith("0 "))).toEndWith("shedding(low=15%;normal=100%)");
    expect(table.find((line) => line.startsWith("1 "))).not.toContain("shedding");
    const json = statusJsonReport(report) as { replicas: { shedding: unknown }[] };
    expect(json.replicas.map((r) => r.shedding)).toEqual([
      { target_ms: 2, low_admitted_pct: 15, normal_admitted_pct: 100 },
      { target_ms: 2, low_admitted_pct: 100, normal_admitted_pct: 100 },
      null,
      null,
    ]);
  });

  test("a down replica that is not the leader: degraded, exit 1, the reason named", () => {
    const report = assessStatus(CLUSTER, statusOf([{}, {}, {}, null]), REFUSED);
    expect(report.exitCode).toBe(STATUS_DEGRADED);
    expect(report.problems).toEqual(["replica 3 is down: connection refused (ECONNREFUSED)"]);
  });

  test("the leader does not answer: flagged, and each replica that names it says so", () => {
    const answers = [null, { view: 4, leader: 0 }, { view: 4, leader: 0 }, { view: 4, leader: 0 }];
    const report = assessStatus(CLUSTER, statusOf(answers), REFUSED);
    expect(report.exitCode).toBe(STATUS_DEGRADED);
    expect(report.problems[0]).toBe("leader 0 (view 4) does not answer");
    expect(report.replicas[1]?.flags).toEqual(["leader-down"]);
  });

  test("a restarted replica in an old view is not healthy: other-view, with its view", () => {
    const answers = [
      { view: 5, leader: 1 },
      { view: 5, leader: 1 },
      { view: 5, leader: 1 },
      { view: 0, leader: 0 },
    ];
    const report = assessStatus(CLUSTER, statusOf(answers), REFUSED);
    expect(report.exitCode).toBe(STATUS_DEGRADED);
    expect(report.replicas[3]?.flags).toContain("other-view");
    expect(report.problems).toContain("replica 3 is in view 0 (leader 0), not view 5");
    expect(statusTable(report).find((line) => line.startsWith("3 "))).toContain("other-view");
  });

  test("no view and leader that f+1 agree on: the leader is disputed", () => {
    const answers = [{ view: 1, leader: 1 }, { view: 2, leader: 2 }, { view: 3, leader: 3 }, null];
    const report = assessStatus(CLUSTER, statusOf(answers), REFUSED);
    expect(report.agreed).toBe(false);
    expect(report.problems.some((p) => p.startsWith("leader disputed"))).toBe(true);
    expect(statusJsonReport(report).agreed).toBe(false);
  });

  test("a lagging replica says how far behind it is", () => {
    const behind = LAG_SEQS_DEFAULT + 50;
    const answers = [{ lastDecided: 500 }, { lastDecided: 500 }, { lastDecided: 499 }, { lastDecided: 500 - behind }];
    const report = assessStatus(CLUSTER, statusOf(answers), REFUSED);
    expect(report.exitCode).toBe(STATUS_DEGRADED);
    expect(report.replicas.map((r) => r.behind)).toEqual([0, 0, 1, behind]);
    expect(report.replicas[3]?.flags).toEqual(["lagging"]);
    expect(report.replicas[2]?.flags).toEqual([]);
    expect(report.problems).toEqual([`replica 3 is ${behind} decided seqs behind`]);
  });

  test("one replica claiming a huge last decided seq makes no correct replica lag: behind counts from the (f+1)-th highest", () => {
    const answers = [{ lastDecided: 10 ** 12 }, { lastDecided: 500 }, { lastDecided: 500 }, { lastDecided: 499 }];
    const report = assessStatus(CLUSTER, statusOf(answers), REFUSED);
    expect(report.lastDecided).toBe(500);
    expect(report.replicas.map((r) => r.behind)).toEqual([0, 0, 0, 1]);
    expect(report.replicas.flatMap((r) => r.flags)).toEqual([]);
    expect(report.exitCode).toBe(STATUS_OK);
  });

  test("an error answer's reason is printed without control characters, in the table and the JSON", () => {
    const status = statusOf([{}, {}, {}, null]);
    const forged: ClusterStatus = {
      ...status,
      replicas: status.replicas.map((r) =>
        r.id === 3 ? { ...r, answer: { ok: false, reason: "BAD_REQUEST \x1b]0;owned\x07\x1b[2J\u009b31mno\x7f\nway" } } : r,
      ),
    };
    const report = assessStatus(CLUSTER, forged, REFUSED);
    expect(report.replicas[3]?.reason).toBe("BAD_REQUEST ]0;owned[2J31mnoway");
    const printed = [...statusTable(report), JSON.stringify(statusJsonReport(report))].join("");
    expect(printed).toContain("]0;owned[2J31mnoway");
    const controls = [...printed].filter((char) => {
      const code = char.codePointAt(0) as number;
      return code < 0x20 || (code >= 0x7f && code <= 0x9f);
    });
    expect(controls).toEqual([]);
  });

  test("the group could not be read: judged on the file's replicas and said so, never ok (exit 1), still 2 without a quorum", () => {
    const unread = { ...CLUSTER, groupUnread: "no member list within 5000 ms" };
    const report = assessStatus(unread, statusOf([{}, {}, {}, {}]), REFUSED);
    expect(report.health).toBe("degraded");
    expect(report.exitCode).toBe(STATUS_DEGRADED);
    expect(report.groupConfirmed).toBe(false);
    expect(report.problems).toEqual([
      "replica group not read (no member list within 5000 ms): judged on the cluster file's 4 replicas, which may predate a membership change",
    ]);
    expect(statusJsonReport(report).group_confirmed).toBe(false);
    expect(assessStatus(unread, statusOf([{}, null, null, null]), REFUSED).exitCode).toBe(STATUS_NO_QUORUM);
    expect(statusJsonReport(assessStatus(CLUSTER, statusOf([{}, {}, {}, {}]), REFUSED)).group_confirmed).toBe(true);
  });
});

/** Replica `id`'s `peers` claim: each of `ids` but itself, up when in `up`. */
/** `reason(peer)`: why the link to a peer that is not up went down, as the replica says (none by default). */
function peersOf(
  id: number,
  ids: readonly number[],
  up: readonly number[],
  reason: (peer: number) => string | undefined = () => undefined,
): ReplicaStatusAnswer["peers"] {
  return ids
    .filter((peer) => peer !== id)
    .map((peer) => {
      const why = up.includes(peer) ? undefined : reason(peer);
      return { id: peer, up: up.includes(peer), lag: 0, address: `127.0.0.1:720${peer}`, ...(why === undefined ? {} : { reason: why }) };
    });
}

/** Every replica of 0..n-1 answers (f's status fold), each with the peers `links(id)` says it reaches. */
function linkedStatus(
  n: number,
  f: number,
  links: (id: number) => readonly number[] | null,
  down: readonly number[] = [],
  reason: (id: number, peer: number) => string | undefined = () => undefined,
): ClusterStatus {
  const ids = Array.from({ length: n }, (_, id) => id);
  const map = new Map<number, EachAnswer<ReplicaStatusAnswer>>();
  for (const id of ids) {
    if (down.includes(id)) continue;
    const up = links(id);
    const value: ReplicaStatusAnswer = { replica: id, view: 0, leader: 0, lastDecided: 10, channels: 2 };
    map.set(id, { ok: true, value: up === null ? value : { ...value, peers: peersOf(id, ids, up, (peer) => reason(id, peer)) } });
  }
  return summarizeStatus(
    f,
    map,
    ids.map((id) => ({ id, address: `127.0.0.1:71${String(id).padStart(2, "0")}`, isReady: !down.includes(id) })),
  );
}

const ALL = [0, 1, 2, 3];
/** Replica 2 refused by its peers at the handshake (a cluster file that differs): no link either way. */
const CUT_OFF_2 = (id: number): number[] => (id === 2 ? [] : ALL.filter((peer) => peer !== 2));

describe("admin status: a replica's links to its peers", () => {
  test("a group split 2|2, every replica answering: each is isolated and no quorum can form, exit 2", () => {
    const halves = (id: number): number[] => (id < 2 ? [0, 1] : [2, 3]).filter((peer) => peer !== id);
    const report = assessStatus({ name: "unit", n: 4, f: 1 }, linkedStatus(4, 1, halves), new Map());
    expect(report.exitCode).toBe(STATUS_NO_QUORUM);
    expect(report.health).toBe("no-quorum");
    expect(report.problems[0]).toBe(
      "NO QUORUM: 0 of 4 replicas answer and reach enough peers, 3 are needed to order admin commands and total-order channels",
    );
  });

  test("a replica that answers but reaches none of its peers is isolated: a problem naming it and the peers, exit 1", () => {
    const report = assessStatus(CLUSTER, linkedStatus(4, 1, CUT_OFF_2), REFUSED);
    expect(report.answered).toBe(4);
    expect(report.health).toBe("degraded");
    expect(report.exitCode).toBe(STATUS_DEGRADED);
    expect(report.problems).toEqual([
      "replica 2 is isolated from its peers: it reaches 0 of 3 (no link to replicas 0, 1, 3), fewer than the 2 it needs to take part in a quorum of 3",
    ]);
    expect(report.replicas[2]?.flags).toEqual(["isolated"]);
    expect(report.replicas[2]?.peersUp).toEqual([]);
    expect(report.replicas[2]?.peersUnreached).toEqual([0, 1, 3]);
    // The others say they do not reach it: warnings, which corroborate (or not) its claim.
    expect(report.warnings).toEqual(
      [0, 1, 3].map((id) => `replica ${id} does not reach replica 2 (it reaches 2 of its 3 peers; a quorum of 3 needs 2)`),
    );
    const table = statusTable(report);
    expect(table.find((line) => line.startsWith("2 "))).toEndWith("isolated");
    expect(table).toContain(report.problems[0] as string);
    expect(table).toContain(`warning: ${report.warnings[0]}`);
    const json = statusJsonReport(report) as {
      health: string;
      problems: string[];
      warnings: string[];
      replicas: { flags: string[]; peers_up: number[] | null; peers_unreached: number[] }[];
    };
    expect(json.health).toBe("degraded");
    expect(json.problems).toEqual(report.problems as string[]);
    expect(json.warnings).toEqual(report.warnings as string[]);
    expect(json.replicas[2]).toMatchObject({ flags: ["isolated"], peers_up: [], peers_unreached: [0, 1, 3] });
    expect(json.replicas[0]).toMatchObject({ flags: ["peers-unreached"], peers_up: [1, 3], peers_unreached: [2] });
  });

  test("an isolated replica's problem says why it says its links fail: one reason when they agree, each peer's otherwise, control characters taken out", () => {
    const withReasons = (reasons: (peer: number) => string): ClusterStatus =>
      linkedStatus(4, 1, CUT_OFF_2, [], (id, peer) => (id === 2 ? reasons(peer) : undefined));
    const differs = "peer refused: BAD_CONFIG cluster file differs from replica 0's in: [limits]";
    const same = assessStatus(
      CLUSTER,
      withReasons(() => differs),
      REFUSED,
    );
    expect(same.problems[0]).toBe(
      "replica 2 is isolated from its peers: it reaches 0 of 3 (no link to replicas 0, 1, 3), fewer than the 2 it needs to take part in a quorum of 3" +
        `; it says its links fail: ${differs}`,
    );
    const each = assessStatus(
      CLUSTER,
      withReasons((peer) => (peer === 3 ? "connection refused\x1b[2J" : differs)),
      REFUSED,
    );
    expect(each.problems[0]).toEndWith(`; it says its links fail: to 0: ${differs}; to 1: ${differs}; to 3: connection refused[2J`);
  });

  test("fewer peers up than quorum - 1 is isolated; quorum - 1 or more but not all is a warning with exit 0", () => {
    // n=4, f=1: a quorum of ceil(6/2) = 3, so a replica needs 2 peers.
    const one = assessStatus(
      CLUSTER,
      linkedStatus(4, 1, (id) => (id === 0 ? [1] : ALL)),
      REFUSED,
    );
    expect(one.exitCode).toBe(STATUS_DEGRADED);
    expect(one.problems).toEqual([
      "replica 0 is isolated from its peers: it reaches 1 of 3 (no link to replicas 2, 3), fewer than the 2 it needs to take part in a quorum of 3",
    ]);
    const two = assessStatus(
      CLUSTER,
      linkedStatus(4, 1, (id) => (id === 0 ? [1, 2] : ALL)),
      REFUSED,
    );
    expect(two.health).toBe("ok");
    expect(two.exitCode).toBe(STATUS_OK);
    expect(two.problems).toEqual([]);
    expect(two.warnings).toEqual(["replica 0 does not reach replica 3 (it reaches 2 of its 3 peers; a quorum of 3 needs 2)"]);
    expect(two.replicas[0]?.flags).toEqual(["peers-unreached"]);
    expect(statusTable(two).at(-1)).toBe(`warning: ${two.warnings[0]}`);
    const all = assessStatus(
      CLUSTER,
      linkedStatus(4, 1, () => ALL),
      REFUSED,
    );
    expect(all.exitCode).toBe(STATUS_OK);
    expect(all.warnings).toEqual([]);
    expect(all.replicas.map((r) => r.peersUp)).toEqual([
      [1, 2, 3],
      [0, 2, 3],
      [0, 1, 3],
      [0, 1, 2],
    ]);
  });

  test("n and the quorum are the judged group's: n=7 f=2 needs 4 of 6 peers (a quorum of 5); ids outside the group do not count", () => {
    const seven = { name: "unit", n: 7, f: 2 };
    const ids = [0, 1, 2, 3, 4, 5, 6];
    const links = (id: number): number[] => (id === 0 ? [1, 2, 3] : id === 1 ? [0, 2, 3, 4] : ids);
    const report = assessStatus(seven, linkedStatus(7, 2, links), new Map());
    expect(report.problems).toEqual([
      "replica 0 is isolated from its peers: it reaches 3 of 6 (no link to replicas 4, 5, 6), fewer than the 4 it needs to take part in a quorum of 5",
    ]);
    expect(report.warnings).toEqual(["replica 1 does not reach replicas 5, 6 (it reaches 4 of its 6 peers; a quorum of 5 needs 4)"]);
    expect(report.exitCode).toBe(STATUS_DEGRADED);
    // A replica listing peers the group does not have (another group's, or made up) reaches no more of this one.
    const foreign = judgePeerLinks(0, { peers: [7, 8, 9, 10, 1].map((id) => ({ id, up: true })) }, ids, 7, 2);
    expect(foreign).toMatchObject({ claimed: true, up: [1], unreached: [2, 3, 4, 5, 6], needed: 4, isolated: true });
    // A group member it does not list at all (it follows an older group) is not reached.
    expect(judgePeerLinks(0, { peers: [1, 2].map((id) => ({ id, up: true })) }, [0, 1, 2, 3], 4, 1).unreached).toEqual([3]);
  });

  test("links to a replica that is down are no warning (it is down already); an answer without peers is not judged", () => {
    const down = assessStatus(
      CLUSTER,
      linkedStatus(4, 1, (id) => ALL.filter((peer) => peer !== id && peer !== 3), [3]),
      REFUSED,
    );
    expect(down.problems).toEqual(["replica 3 is down: connection refused (ECONNREFUSED)"]);
    expect(down.warnings).toEqual([]);
    expect(down.replicas[0]?.flags).toEqual([]);
    expect(down.replicas[0]?.peersUnreached).toEqual([3]);
    // Two down: each of the other two reaches one peer, fewer than a quorum needs.
    const two = assessStatus(
      CLUSTER,
      linkedStatus(4, 1, (id) => (id === 0 ? [1] : [0]), [2, 3]),
      REFUSED,
    );
    expect(two.exitCode).toBe(STATUS_NO_QUORUM);
    expect(two.replicas.slice(0, 2).map((r) => r.flags)).toEqual([["isolated"], ["isolated"]]);
    const silent = assessStatus(
      CLUSTER,
      linkedStatus(4, 1, () => null),
      REFUSED,
    );
    expect(silent.exitCode).toBe(STATUS_OK);
    expect(silent.replicas.map((r) => r.peersUp)).toEqual([null, null, null, null]);
    expect((statusJsonReport(silent).replicas as { peers_up: unknown }[])[0]?.peers_up).toBeNull();
  });

  test("the links are each replica's own claim: a replica lying about its links misjudges only itself", () => {
    // Replica 3 claims it reaches nobody; the others reach it and each other.
    const claimsCutOff = assessStatus(
      CLUSTER,
      linkedStatus(4, 1, (id) => (id === 3 ? [] : ALL)),
      REFUSED,
    );
    expect(claimsCutOff.problems).toHaveLength(1);
    expect(claimsCutOff.problems[0]).toStartWith("replica 3 is isolated");
    expect(claimsCutOff.replicas.slice(0, 3).map((r) => r.flags)).toEqual([[], [], []]);
    expect(claimsCutOff.warnings).toEqual([]);
    // Replica 2, cut off, claims every link up: only its own line is wrong; the others still say they do not reach it.
    const hides = assessStatus(
      CLUSTER,
      linkedStatus(4, 1, (id) => (id === 2 ? ALL : CUT_OFF_2(id))),
      REFUSED,
    );
    expect(hides.problems).toEqual([]);
    expect(hides.warnings).toHaveLength(3);
    expect(hides.warnings.every((warning) => warning.includes("does not reach replica 2"))).toBe(true);
  });
});

describe("admin status: the cluster file against the group read", () => {
  const [groupKey, fileKey, addedKey] = [0, 1, 2].map(() => SigningKey.generate().publicKey) as [Uint8Array, Uint8Array, Uint8Array];
  const at = (host: string, port: number, key: Uint8Array) => ({ host, port, key });
  const comparison = (replicas: FileComparison["replicas"], fileF = 1, groupF = 1): FileComparison => ({
    epoch: 0,
    fileF,
    groupF,
    replicas,
    matches: replicas.length === 0 && fileF === groupF,
  });

  test("a file listing another key for replica 3: a warning naming it, both keys and the fix; health and exit code stay (0)", () => {
    const file = comparison([{ id: 3, file: at("127.0.0.1", 7103, fileKey), group: at("127.0.0.1", 7103, groupKey) }]);
    const report = assessStatus({ ...CLUSTER, clusterFile: file }, statusOf([{}, {}, {}, {}]), REFUSED);
    expect(report.health).toBe("ok");
    expect(report.exitCode).toBe(STATUS_OK);
    expect(report.problems).toEqual([]);
    const warning =
      `the cluster file differs from the replica group (epoch 0): the file lists replica 3 with key ${formatPublicKey(fileKey)}, ` +
      `the group with key ${formatPublicKey(groupKey)}; a client or relay started from this file refuses replica 3 at the handshake ` +
      "until 2 of the file's replicas have given it the group: re-export it with " +
      "`fitb cluster export --config FILE --key ADMINKEY --out NEWFILE` and give the new file to clients, relays and hosts";
    expect(report.warnings).toEqual([warning]);
    expect(statusTable(report).at(-1)).toBe(`warning: ${warning}`);
    expect(statusJsonReport(report).cluster_file).toEqual({
      matches_group: false,
      group_epoch: 0,
      f: { file: 1, group: 1 },
      replicas: [
        {
          id: 3,
          file: { host: "127.0.0.1", port: 7103, key: formatPublicKey(fileKey) },
          group: { host: "127.0.0.1", port: 7103, key: formatPublicKey(groupKey) },
        },
      ],
    });
  });

  test("a file that matches: no warning, cluster_file says so; no group read: cluster_file null", () => {
    const report = assessStatus({ ...CLUSTER, clusterFile: comparison([]) }, statusOf([{}, {}, {}, {}]), REFUSED);
    expect(report.warnings).toEqual([]);
    expect(statusJsonReport(report).cluster_file).toEqual({ matches_group: true, group_epoch: 0, f: { file: 1, group: 1 }, replicas: [] });
    expect(statusJsonReport(assessStatus(CLUSTER, statusOf([{}, {}, {}, {}]), REFUSED)).cluster_file).toBeNull();
  });

  test("addresses are given where they differ; a member the file lacks, one it lists that left, and a raised f are each named", () => {
    const moved = fileDiffersWarning(comparison([{ id: 2, file: at("10.0.0.9", 7102, fileKey), group: at("::1", 7102, groupKey) }]));
    expect(moved).toContain(
      `the file lists replica 2 with key ${formatPublicKey(fileKey)} at 10.0.0.9:7102, the group with key ${formatPublicKey(groupKey)} at [::1]:7102`,
    );
    const changed = fileDiffersWarning(
      comparison(
        [
          { id: 3, file: at("127.0.0.1", 7103, fileKey), group: null },
          { id: 4, file: null, group: at("127.0.0.1", 7104, addedKey) },
        ],
        1,
        2,
      ),
    );
    expect(changed).toStartWith(
      "the cluster file differs from the replica group (epoch 0): the file says f=1, the group f=2; " +
        "the file lists replica 3 (at 127.0.0.1:7103), which is not a member; " +
        `replica 4 is a member (at 127.0.0.1:7104, key ${formatPublicKey(addedKey)}) the file does not list; ` +
        "a client or relay started from this file goes by it until 2 of the file's replicas have given it the group, " +
        "which faulty replicas of a group with f=2 can give it: re-export it with `fitb cluster export",
    );
  });
});
