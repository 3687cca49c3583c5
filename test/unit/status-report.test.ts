// `fitb admin status` as a monitoring check (issue 15, item 2): every replica's line
// whatever answered, the same reason in the table and the JSON, flags for a dead or
// disputed leader, replicas in another view and lagging ones, and the exit codes.
import { describe, expect, test } from "bun:test";
import { type ClusterStatus, summarizeStatus } from "../../src/client/client.ts";
import type { EachAnswer, ReplicaStatusAnswer } from "../../src/client/queries.ts";
import {
  assessStatus,
  LAG_SEQS_DEFAULT,
  STATUS_DEGRADED,
  STATUS_NO_QUORUM,
  STATUS_OK,
  statusJsonReport,
  statusTable,
} from "../../src/cli/commands/status-report.ts";

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
