/**
 * `fitb admin status` as a monitoring check: every replica's line, whether or not it
 * answered, and what is wrong with the group, in a table and in JSON that say the same.
 *
 * Exit codes (README "Status"): 0 ok; 1 degraded (a replica down, in another view,
 * lagging, isolated from its peers, or the leader dead or disputed) while 2f+1 replicas
 * answer; 2 no quorum (fewer than 2f+1 answer: admin commands and total-order channels
 * cannot be ordered). Warnings (a replica that reaches some of its peers but not all) are
 * printed and leave the exit code as it is, as the command's other warnings do (a key
 * file's on stderr, a shedding note).
 *
 * The group judged is the one the replicas agree on (status-client.ts reads it first), not
 * the cluster file's, which may predate a membership change. When it could not be read,
 * the report judges the file's replicas and says so, and is at best degraded (1): a check
 * that could not see the group must not say ok.
 *
 * The cluster file given is compared with the group read (membership-follow.ts
 * compareWithFile): a replica whose key it lists otherwise, one it lists that the group no
 * longer has or lacks, or another f, is a warning that names each and says to export the
 * group's file. The group itself is as healthy either way, so the exit code stays; but a
 * client started from that file goes by it until f+1 of its replicas give it the group,
 * and with a wrong key refuses that replica until then, or for good with too few up.
 *
 * Up to f replicas may answer anything, so no figure rests on one answer: how far behind
 * a replica is counts from the last decided seq f+1 replicas have reached, and whatever a
 * replica sent as text is printed without control characters. Which peers a replica
 * reaches is its own claim (its status answer's `peers`): a faulty replica can misjudge
 * only itself by it (be called isolated, or hide that it is), never another replica.
 */
import type { ClusterStatus } from "../../client/client.ts";
import type { FileComparison, ListedReplica } from "../../client/membership-follow.ts";
import type { ReplicaStatusAnswer } from "../../client/queries.ts";
import { formatAddress } from "../../config/cluster.ts";
import { quorum as orderingQuorum } from "../../core/ordering/config.ts";
import { byzantineQuorum, vouchQuorum } from "../../core/voting/quorum.ts";
import { formatPublicKey } from "../../crypto/keys.ts";

export const STATUS_OK = 0;
export const STATUS_DEGRADED = 1;
export const STATUS_NO_QUORUM = 2;

/**
 * The epoch most answering replicas say they order in (the highest of those tied), or null
 * when none says: a replica in another one (restored from an old copy, say) is flagged.
 */
function commonEpoch(answers: readonly (ReplicaStatusAnswer | null)[]): number | null {
  const counts = new Map<number, number>();
  for (const answer of answers) if (answer?.epoch !== undefined) counts.set(answer.epoch, (counts.get(answer.epoch) ?? 0) + 1);
  let best: number | null = null;
  for (const [epoch, count] of counts) {
    const bestCount = best === null ? 0 : (counts.get(best) ?? 0);
    if (count > bestCount || (count === bestCount && best !== null && epoch > best)) best = epoch;
  }
  return best;
}

/** A replica this many decided seqs behind the (f+1)-th highest (ClusterStatus.lastDecided) is flagged as lagging. */
export const LAG_SEQS_DEFAULT = 100;

export type Health = "ok" | "degraded" | "no-quorum";

export interface ReplicaRow {
  readonly id: number;
  readonly address: string;
  readonly up: boolean;
  /** Why it is not up (connection refused, no answer, an error answer); null when up. */
  readonly reason: string | null;
  readonly view: number | null;
  readonly leader: number | null;
  readonly lastDecided: number | null;
  /** Decided seqs behind the last decided seq f+1 replicas reached (0 when ahead of it); null when down. */
  readonly behind: number | null;
  /**
   * "other-epoch" (it orders in another membership epoch than most: a problem, or a
   * warning when one epoch behind, as during a switch),
   * "other-view", "lagging", "leader-down" (it names a leader that does not answer),
   * "isolated" (it reaches fewer peers than a quorum needs: a problem), "peers-unreached"
   * (it reaches enough of them, not all: a warning), "votes-fenced" (restarted without a
   * clean stop, it votes on no new proposal until past its fence: a warning),
   * "records-lost" (its store lost records: it votes in no view until a view change it
   * takes part in, which a quiet group never makes: a problem, with the way to end it).
   */
  readonly flags: readonly string[];
  /** The group's other members whose peer links this replica says are up; null when down or when its answer does not say. */
  readonly peersUp: readonly number[] | null;
  /** The group's other members it says it does not reach (empty when it reaches all, or does not say). */
  readonly peersUnreached: readonly number[];
  /** Priority shedding, when the replica runs it: its target and the percent of low and normal publishes it admits now. */
  readonly shedding: NonNullable<ReplicaStatusAnswer["shedding"]> | null;
  /** The membership epoch it orders in (views start again at 0 in each); null when down or when its answer does not say. */
  readonly epoch: number | null;
}

export interface StatusReport {
  readonly cluster: string;
  readonly n: number;
  readonly f: number;
  /** Whether n, f and the replicas are the group f+1 replicas agree on (false: the cluster file's). */
  readonly groupConfirmed: boolean;
  /** The cluster file against the group read; null when no group was read (groupConfirmed false). */
  readonly clusterFile: FileComparison | null;
  readonly answered: number;
  readonly view: number | null;
  readonly leader: number | null;
  readonly agreed: boolean;
  readonly lastDecided: number | null;
  readonly channels: number | null;
  readonly health: Health;
  readonly exitCode: number;
  /** Each problem in one sentence, most serious first. */
  readonly problems: readonly string[];
  /** What is not right but does not make the group degraded (the exit code stays): each in one sentence. */
  readonly warnings: readonly string[];
  readonly replicas: readonly ReplicaRow[];
  /** The answers the report was made from. */
  readonly status: ClusterStatus;
}

/** Why a replica that did not answer is down, as the client saw it. */
export type DownReasons = ReadonlyMap<number, string>;

/**
 * The cluster judged: its name, and the group's n and f. `groupUnread`: why the group the
 * replicas agree on could not be read, so that n, f and the replicas are the cluster
 * file's (status-client.ts groupUnread); null or absent when they are the group's.
 */
export interface JudgedCluster {
  readonly name: string;
  readonly n: number;
  readonly f: number;
  readonly groupUnread?: string | null;
  /** The cluster file against the group read (null or absent: no group read, nothing to compare). */
  readonly clusterFile?: FileComparison | null;
}

export function assessStatus(
  cluster: JudgedCluster,
  status: ClusterStatus,
  downReasons: DownReasons,
  lagSeqsMax = LAG_SEQS_DEFAULT,
): StatusReport {
  const { n, f } = cluster;
  const groupUnread = cluster.groupUnread ?? null;
  const answers = status.replicas.map((r) => (r.answer?.ok === true ? r.answer.value : null));
  const answered = answers.filter((a) => a !== null).length;
  // Not the highest answer: one replica claiming a huge seq would make every correct one lag.
  const reached = status.lastDecided ?? 0;
  const upIds = new Set(status.replicas.filter((_, i) => answers[i] !== null).map((r) => r.id));
  const problems: string[] = [];
  const quorum = byzantineQuorum(f);
  if (answered < quorum)
    problems.push(
      `NO QUORUM: ${answered} of ${n} replicas answered, ${quorum} are needed to order admin commands and total-order channels`,
    );
  if (groupUnread !== null)
    problems.push(
      `replica group not read (${printable(groupUnread)}): judged on the cluster file's ${n} replicas, which may predate a membership change`,
    );
  if (answered > 0 && !status.agreed) problems.push(`leader disputed: fewer than ${vouchQuorum(f)} replicas agree on a view and leader`);
  const leaderDown = status.leader !== null && !upIds.has(status.leader);
  if (leaderDown) problems.push(`leader ${status.leader} (view ${status.view}) does not answer`);
  const warnings: string[] = [];
  const epoch = commonEpoch(answers);
  const groupIds = status.replicas.map((r) => r.id);
  const rows = status.replicas.map((replica, i): ReplicaRow => {
    const answer = answers[i] ?? null;
    if (answer === null) {
      const reason = printable(replica.answer?.ok === false ? replica.answer.reason : (downReasons.get(replica.id) ?? "no answer"));
      problems.push(`replica ${replica.id} is down: ${reason}`);
      return {
        id: replica.id,
        address: printable(replica.address),
        up: false,
        reason,
        view: null,
        leader: null,
        lastDecided: null,
        behind: null,
        flags: [],
        peersUp: null,
        peersUnreached: [],
        shedding: null,
        epoch: null,
      };
    }
    const flags: string[] = [];
    const behind = Math.max(0, reached - answer.lastDecided);
    const otherEpoch = epoch !== null && answer.epoch !== undefined && answer.epoch !== epoch;
    if (otherEpoch) {
      // Its view, leader and seqs count in another group: they are not comparable with the others'.
      flags.push("other-epoch");
      const said = `replica ${replica.id} orders in epoch ${answer.epoch}, not epoch ${epoch} as the others do (views and seqs are its own epoch's)`;
      // One behind: the switch at a checkpoint it has not executed yet, as during any
      // membership change. Further behind, or ahead: restored from an old copy, say.
      if (answer.epoch === epoch - 1) warnings.push(`${said}; it switches once it executes the checkpoint that ends it`);
      else problems.push(said);
    }
    if (!otherEpoch && status.view !== null && answer.view !== status.view) {
      flags.push("other-view");
      problems.push(`replica ${replica.id} is in view ${answer.view} (leader ${answer.leader}), not view ${status.view}`);
    }
    if (behind > lagSeqsMax) {
      flags.push("lagging");
      problems.push(`replica ${replica.id} is ${behind} decided seqs behind`);
    }
    if (!upIds.has(answer.leader)) flags.push("leader-down");
    const links = judgePeerLinks(replica.id, answer, groupIds, n, f);
    if (links.isolated) {
      flags.push("isolated");
      problems.push(
        `replica ${replica.id} is isolated from its peers: it reaches ${links.up.length} of ${links.others} ` +
          `(no link to ${idList(links.unreached)}), fewer than the ${links.needed} it needs to take part in a quorum of ${links.needed + 1}` +
          linkReasons(answer, links.unreached),
      );
    } else {
      // A peer that does not answer is a problem of its own already (down): no warning for it.
      const news = links.unreached.filter((id) => upIds.has(id));
      if (news.length > 0) {
        flags.push("peers-unreached");
        warnings.push(
          `replica ${replica.id} does not reach ${idList(news)} (it reaches ${links.up.length} of its ${links.others} peers; ` +
            `a quorum of ${links.needed + 1} needs ${links.needed})`,
        );
      }
    }
    if (answer.lostRecordsFenced === true) {
      flags.push("records-lost");
      problems.push(
        `replica ${replica.id} lost records (its store was damaged or moved aside) and votes in no view until a view change it takes part in: ` +
          "meanwhile it counts in no quorum; a quiet group never changes view, so stop the leader, publish an event (the group changes view to order it) and start the leader again",
      );
    } else if (answer.votesFenced === true) {
      flags.push("votes-fenced");
      warnings.push(
        `replica ${replica.id} restarted without a clean stop and votes on no new proposal until it passes its fence ` +
          "(or a view change): meanwhile it counts in no quorum, so one more replica down stops ordering until the view changes",
      );
    }
    return {
      id: replica.id,
      address: printable(replica.address),
      up: true,
      reason: null,
      view: answer.view,
      leader: answer.leader,
      lastDecided: answer.lastDecided,
      behind,
      flags,
      peersUp: links.claimed ? links.up : null,
      peersUnreached: links.unreached,
      shedding: answer.shedding ?? null,
      epoch: answer.epoch ?? null,
    };
  });
  // Replicas that answer but reach too few peers take part in no quorum: a group split
  // 2|2, each half answering, orders nothing.
  const linked = rows.filter((row) => row.up && !row.flags.includes("isolated")).length;
  const ordering = orderingQuorum(n, f, "bft");
  const linkedTooFew = answered >= quorum && linked < ordering;
  if (linkedTooFew) {
    problems.unshift(
      `NO QUORUM: ${linked} of ${n} replicas answer and reach enough peers, ${ordering} are needed to order admin commands and total-order channels`,
    );
  }
  const clusterFile = cluster.clusterFile ?? null;
  if (clusterFile !== null && !clusterFile.matches) warnings.push(fileDiffersWarning(clusterFile));
  const health: Health = answered < quorum || linkedTooFew ? "no-quorum" : problems.length > 0 ? "degraded" : "ok";
  return {
    cluster: cluster.name,
    n,
    f,
    groupConfirmed: groupUnread === null,
    clusterFile,
    answered,
    view: status.view,
    leader: status.leader,
    agreed: status.agreed,
    lastDecided: status.lastDecided,
    channels: status.channels,
    health,
    exitCode: health === "ok" ? STATUS_OK : health === "degraded" ? STATUS_DEGRADED : STATUS_NO_QUORUM,
    problems,
    warnings,
    replicas: rows,
    status,
  };
}

/**
 * The warning for a cluster file that lists the group otherwise: each difference, what it
 * does to whoever starts from the file, and the fix. Addresses are given only where they
 * differ, or for a replica one side alone lists.
 */
export function fileDiffersWarning(file: FileComparison): string {
  const at = (replica: ListedReplica): string => printable(formatAddress(replica.host, replica.port));
  const key = (replica: ListedReplica): string => formatPublicKey(replica.key);
  const differences: string[] = [];
  if (file.fileF !== file.groupF) differences.push(`the file says f=${file.fileF}, the group f=${file.groupF}`);
  const refused: number[] = [];
  for (const { id, file: listed, group: member } of file.replicas) {
    if (listed === null && member !== null) {
      differences.push(`replica ${id} is a member (at ${at(member)}, key ${key(member)}) the file does not list`);
    } else if (member === null && listed !== null) {
      differences.push(`the file lists replica ${id} (at ${at(listed)}), which is not a member`);
    } else if (listed !== null && member !== null) {
      refused.push(id);
      const moved = at(listed) !== at(member);
      differences.push(
        `the file lists replica ${id} with key ${key(listed)}${moved ? ` at ${at(listed)}` : ""}, ` +
          `the group with key ${key(member)}${moved ? ` at ${at(member)}` : ""}`,
      );
    }
  }
  const asked = `until ${vouchQuorum(file.fileF)} of the file's replicas have given it the group`;
  let effect =
    refused.length > 0
      ? `a client or relay started from this file refuses ${idList(refused)} at the handshake ${asked}`
      : `a client or relay started from this file goes by it ${asked}`;
  // The stale file of README "A cluster file's f is its trust anchor": the client's own warning says the same.
  if (file.groupF > file.fileF) effect += `, which faulty replicas of a group with f=${file.groupF} can give it`;
  return (
    `the cluster file differs from the replica group (epoch ${file.epoch}): ${differences.join("; ")}; ${effect}: ` +
    "re-export it with `fitb cluster export --config FILE --key ADMINKEY --out NEWFILE` and give the new file to clients, relays and hosts"
  );
}

/** What a replica says of its links to the group's other members, judged for the group's quorum. */
export interface PeerLinks {
  /** Whether its answer says anything of its peers (`peers`); when not, nothing is judged. */
  readonly claimed: boolean;
  /** The group's other members it says it reaches, ascending. */
  readonly up: readonly number[];
  /** The group's other members it does not say it reaches (a link down, or not listed), ascending; empty when unclaimed. */
  readonly unreached: readonly number[];
  /** How many other members the group has (n - 1). */
  readonly others: number;
  /** Peers it must reach to take part in a quorum: ceil((n+f+1)/2) - 1, itself the last of the quorum. */
  readonly needed: number;
  /** Fewer than `needed` peers reached: it cannot take part in any quorum. */
  readonly isolated: boolean;
}

/**
 * A replica's peer links from its status answer (`peers[].up`, its outbound links) against
 * `groupIds`, the group f+1 replicas agree on: members it does not list count as not
 * reached (it may follow another group), ids outside the group are left out. An answer
 * without `peers` (a replica that does not say) is not judged.
 */
export function judgePeerLinks(
  id: number,
  answer: Pick<ReplicaStatusAnswer, "peers">,
  groupIds: readonly number[],
  n: number,
  f: number,
): PeerLinks {
  const others = groupIds.filter((other) => other !== id);
  const needed = Math.max(0, orderingQuorum(n, f, "bft") - 1);
  if (answer.peers === undefined) return { claimed: false, up: [], unreached: [], others: others.length, needed, isolated: false };
  const reached = new Set(answer.peers.filter((peer) => peer.up).map((peer) => peer.id));
  const sorted = [...others].sort((a, b) => a - b);
  const up = sorted.filter((other) => reached.has(other));
  const unreached = sorted.filter((other) => !reached.has(other));
  return { claimed: true, up, unreached, others: others.length, needed, isolated: up.length < needed };
}

/**
 * Why a replica says its links to `ids` are down (`peers[].reason`, its own dialler's last
 * failure: a refused handshake says why, such as a cluster file that differs in [limits]),
 * one reason for all when they agree; empty when it gives none. Its own word, made printable.
 */
function linkReasons(answer: Pick<ReplicaStatusAnswer, "peers">, ids: readonly number[]): string {
  const reasons = new Map<number, string>();
  for (const peer of answer.peers ?? []) {
    if (ids.includes(peer.id) && !peer.up && peer.reason !== undefined) reasons.set(peer.id, printable(peer.reason));
  }
  if (reasons.size === 0) return "";
  const distinct = new Set(reasons.values());
  if (distinct.size === 1) return `; it says its links fail: ${[...distinct][0]}`;
  return `; it says its links fail: ${[...reasons].map(([id, reason]) => `to ${id}: ${reason}`).join("; ")}`;
}

/** "replica 3" or "replicas 0, 1, 3". */
function idList(ids: readonly number[]): string {
  return ids.length === 1 ? `replica ${ids[0]}` : `replicas ${ids.join(", ")}`;
}

/**
 * Text a replica sent (an error answer's reason, a tag), fit to print: without C0 and C1
 * control characters or DEL, so that a faulty replica cannot move the cursor, clear the
 * screen or set the terminal's title through `admin status` or `top`.
 */
export function printable(text: string): string {
  let out = "";
  for (const char of text) {
    const code = char.codePointAt(0) as number;
    if (code < 0x20 || (code >= 0x7f && code <= 0x9f)) continue;
    out += char;
  }
  return out;
}

/** The table: a header line, one line per replica, then the problems. */
export function statusTable(report: StatusReport): string[] {
  const lines: string[] = [];
  const agreement = report.agreed ? `agreed by at least ${vouchQuorum(report.f)}` : `NOT agreed by ${vouchQuorum(report.f)} replicas`;
  lines.push(
    `cluster ${report.cluster}: n=${report.n} f=${report.f}, ${report.answered} of ${report.n} replicas answered: ${report.health}`,
  );
  if (report.view !== null)
    lines.push(
      `view ${report.view} leader ${report.leader} (${agreement}); last decided ${report.lastDecided}; channels ${report.channels}`,
    );
  const width = Math.max(7, ...report.replicas.map((r) => r.address.length));
  lines.push(`REPLICA  ${"ADDRESS".padEnd(width)}  UP     VIEW  LEADER  DECIDED  BEHIND  NOTE`);
  for (const r of report.replicas) {
    const cell = (value: number | null, size: number): string => (value === null ? "-" : String(value)).padEnd(size);
    const note = r.up ? [...r.flags, ...sheddingNote(r)].join(",") : r.reason;
    lines.push(
      `${String(r.id).padEnd(7)}  ${r.address.padEnd(width)}  ${(r.up ? "true" : "false").padEnd(5)}  ${cell(r.view, 4)}  ${cell(r.leader, 6)}  ` +
        `${cell(r.lastDecided, 7)}  ${cell(r.behind, 6)}  ${note ?? ""}`.trimEnd(),
    );
  }
  for (const problem of report.problems) lines.push(problem);
  for (const warning of report.warnings) lines.push(`warning: ${warning}`);
  return lines;
}

/**
 * A replica shedding less urgent publishes now, as the table notes it (one word: the NOTE
 * column is split on commas). Not a flag: it is the policy at work while urgent
 * publishes wait there, not a problem.
 */
function sheddingNote(r: ReplicaRow): string[] {
  const shedding = r.shedding;
  if (shedding === null || (shedding.low >= 100 && shedding.normal >= 100)) return [];
  return [`shedding(low=${shedding.low}%;normal=${shedding.normal}%)`];
}

/** The JSON form: the same facts and reasons as the table, snake_case. */
export function statusJsonReport(report: StatusReport): Record<string, unknown> {
  return {
    cluster: report.cluster,
    n: report.n,
    f: report.f,
    group_confirmed: report.groupConfirmed,
    cluster_file: report.clusterFile === null ? null : clusterFileJson(report.clusterFile),
    answered: report.answered,
    view: report.view,
    leader: report.leader,
    agreed: report.agreed,
    last_decided: report.lastDecided,
    channels: report.channels,
    health: report.health,
    exit_code: report.exitCode,
    problems: report.problems,
    warnings: report.warnings,
    replicas: report.replicas.map((r) =>
      r.up
        ? {
            id: r.id,
            address: r.address,
            up: true,
            epoch: r.epoch,
            view: r.view,
            leader: r.leader,
            last_decided: r.lastDecided,
            behind: r.behind,
            flags: r.flags,
            peers_up: r.peersUp,
            peers_unreached: r.peersUnreached,
            shedding:
              r.shedding === null
                ? null
                : { target_ms: r.shedding.targetMs, low_admitted_pct: r.shedding.low, normal_admitted_pct: r.shedding.normal },
          }
        : { id: r.id, address: r.address, up: false, reason: r.reason, flags: r.flags },
    ),
  };
}

/** The file comparison in the JSON form: whether it matches, and each replica it lists otherwise (null: that side does not list it). */
function clusterFileJson(file: FileComparison): Record<string, unknown> {
  const listed = (replica: ListedReplica | null): Record<string, unknown> | null =>
    replica === null ? null : { host: printable(replica.host), port: replica.port, key: formatPublicKey(replica.key) };
  return {
    matches_group: file.matches,
    group_epoch: file.epoch,
    f: { file: file.fileF, group: file.groupF },
    replicas: file.replicas.map((r) => ({ id: r.id, file: listed(r.file), group: listed(r.group) })),
  };
}
