/**
 * What `FitbClient.status()` reports: every replica's own status answer side by side,
 * folded into one view of the cluster (the view and leader f+1 replicas agree on, the
 * last decided seq at least one correct replica has reached). Printing it is the CLI's
 * job (src/cli/commands/admin.ts).
 */
import { vouchQuorum } from "../core/voting/quorum.ts";
import type { EachAnswer, ReplicaStatusAnswer } from "./queries.ts";

/** One replica's line in ClusterStatus. */
export interface ReplicaStatus {
  readonly id: number;
  readonly address: string;
  /** Whether the client holds a session with it right now. */
  readonly connected: boolean;
  /** Its own status answer, or why there is none. */
  readonly answer: EachAnswer<ReplicaStatusAnswer> | null;
}

/** What `status()` reports. */
export interface ClusterStatus {
  /** The view f+1 replicas agree on, or the one most replicas report if none has f+1; null if none answered. */
  readonly view: number | null;
  readonly leader: number | null;
  /** Whether `view` and `leader` are backed by f+1 matching answers. */
  readonly agreed: boolean;
  /** The (f+1)-th highest last decided seq: reached by at least one correct replica. */
  readonly lastDecided: number | null;
  readonly channels: number | null;
  readonly replicas: readonly ReplicaStatus[];
}

/** Folds every replica's status answer into one view of the cluster. */
export function summarizeStatus(
  f: number,
  answers: ReadonlyMap<number, EachAnswer<ReplicaStatusAnswer>>,
  connections: readonly { id: number; address: string; isReady: boolean }[],
): ClusterStatus {
  const good: ReplicaStatusAnswer[] = [];
  for (const answer of answers.values()) if (answer.ok) good.push(answer.value);
  const byViewLeader = new Map<string, { view: number; leader: number; count: number }>();
  for (const answer of good) {
    const key = `${answer.view}/${answer.leader}`;
    const entry = byViewLeader.get(key) ?? { view: answer.view, leader: answer.leader, count: 0 };
    entry.count++;
    byViewLeader.set(key, entry);
  }
  let best: { view: number; leader: number; count: number } | null = null;
  for (const entry of byViewLeader.values()) {
    if (best === null || entry.count > best.count || (entry.count === best.count && entry.view > best.view)) best = entry;
  }
  const rank = (values: number[]): number | null => {
    if (values.length === 0) return null;
    values.sort((a, b) => b - a);
    return values[Math.min(f, values.length - 1)] as number;
  };
  return {
    view: best?.view ?? null,
    leader: best?.leader ?? null,
    agreed: best !== null && best.count >= vouchQuorum(f),
    lastDecided: rank(good.map((answer) => answer.lastDecided)),
    channels: rank(good.map((answer) => answer.channels)),
    replicas: connections.map((connection) => ({
      id: connection.id,
      address: connection.address,
      connected: connection.isReady,
      answer: answers.get(connection.id) ?? null,
    })),
  };
}
