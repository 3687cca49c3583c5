/**
 * Query tracking: every QUERY in flight, sent to every replica and settled by the rule
 * its kind takes (queries.ts): at once when the rule concludes, when every replica with
 * a session has answered (rules that ask for it), or at the deadline. A replica whose
 * answer the rule finds stale (read-your-writes, PROTOCOL.md 6.3) is asked again with
 * `after`, and waits until it has executed that seq: at once the first time, then at the
 * first tick after a growing delay (QUERY_REASK_BACKOFF), so that a replica that answers
 * stale at once (its wait queue full) is not asked in a loop until the deadline.
 */
import { encodeTypedFrame, type Query, type QueryReply } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";
import { backoffBaseDelayMs, type BackoffPolicy } from "./backoff.ts";
import type { ReplicaConnection } from "./connection.ts";
import type { ClientError } from "./errors.ts";
import type { QueryRule } from "./queries.ts";
import type { TrackingContext } from "./replica-group.ts";

/** The delay before a replica is asked again a second time within one query, doubling after. */
export const QUERY_REASK_BACKOFF: BackoffPolicy = { initialDelayMs: 100, maxDelayMs: 1_000, multiplier: 2, jitterRatio: 0 };

interface PendingQuery {
  readonly id: number;
  readonly body: Query;
  frame: Uint8Array;
  /** Every `at` a replica reported for this query (members only: onLeft drops those that left). */
  readonly ats: Map<number, number>;
  /** The f of the group the query was sent to: the floor counts with at least this f. */
  readonly fAtSend: number;
  readonly rule: QueryRule<unknown>;
  readonly sentTo: Set<number>;
  readonly answered: Set<number>;
  /** Per replica asked again: how many times, and when it may be sent (QUERY_REASK_BACKOFF). */
  readonly reasks: Map<number, { count: number; dueAt: number }>;
  readonly deadline: number;
  readonly settle: (outcome: { ok: true; value: unknown } | { ok: false; error: ClientError }) => void;
}

export class QueryTracker {
  private readonly queries = new Map<number, PendingQuery>();
  private queryCounter = 0;

  constructor(
    private readonly ctx: TrackingContext,
    private readonly queryMs: number,
  ) {}

  /** Sends `body` (its id replaced by a fresh one) to every replica and settles by `rule`. */
  run<T>(body: Query, rule: QueryRule<T>): Promise<T> {
    const id = ++this.queryCounter;
    const frame = encodeTypedFrame({ type: FrameType.QUERY, body: { ...body, id } as Query }, this.ctx.frameBytesMax);
    return new Promise<T>((resolve, reject) => {
      const pending: PendingQuery = {
        id,
        body: { ...body, id } as Query,
        frame,
        ats: new Map(),
        fAtSend: this.ctx.group.f,
        rule: rule as QueryRule<unknown>,
        sentTo: new Set(),
        answered: new Set(),
        reasks: new Map(),
        deadline: this.ctx.now() + this.queryMs,
        settle: (outcome) => {
          this.queries.delete(id);
          this.ctx.floor.observeAts(pending.ats, pending.fAtSend);
          if (outcome.ok) resolve(outcome.value as T);
          else reject(outcome.error);
        },
      };
      this.queries.set(id, pending);
      for (const connection of this.ctx.group.connections) this.sendQuery(pending, connection);
    });
  }

  private sendQuery(pending: PendingQuery, connection: ReplicaConnection): void {
    if (pending.sentTo.has(connection.id) || pending.answered.has(connection.id)) return;
    if ((pending.reasks.get(connection.id)?.dueAt ?? 0) > this.ctx.now()) return;
    if (connection.sendEncoded(pending.frame)) pending.sentTo.add(connection.id);
  }

  onQueryReply(replica: number, body: QueryReply): void {
    const pending = this.queries.get(body.id);
    if (pending === undefined || pending.answered.has(replica)) return;
    if (!body.ok && body.code === "OVERLOADED") return this.askLater(pending, replica);
    pending.answered.add(replica);
    if (body.at !== undefined) pending.ats.set(replica, body.at);
    const outcome = pending.rule.add(replica, body);
    if (outcome !== null) pending.settle(outcome);
    else this.askStaleAgain(pending);
    if (this.queries.get(pending.id) === pending) this.settleIfReachableAnswered(pending);
  }

  /** Replicas whose answer predates what another replica executed are asked again, waiting for it. */
  private askStaleAgain(pending: PendingQuery): void {
    const stale = pending.rule.stale?.() ?? null;
    if (stale === null || stale.replicas.length === 0) return;
    const body = { ...pending.body, after: stale.after } as Query;
    pending.frame = encodeTypedFrame({ type: FrameType.QUERY, body }, this.ctx.frameBytesMax);
    const now = this.ctx.now();
    for (const replica of stale.replicas) {
      pending.answered.delete(replica);
      pending.sentTo.delete(replica);
      const count = pending.reasks.get(replica)?.count ?? 0;
      const dueAt = count === 0 ? now : now + backoffBaseDelayMs(count - 1, QUERY_REASK_BACKOFF);
      pending.reasks.set(replica, { count: count + 1, dueAt });
      const connection = this.ctx.group.connection(replica);
      if (connection !== undefined) this.sendQuery(pending, connection);
    }
  }

  /**
   * The replica is over its budget of queries for this client or its address (OVERLOADED):
   * not an answer. It is asked again once a growing delay is over (QUERY_REASK_BACKOFF,
   * never at once), until the query's deadline.
   */
  private askLater(pending: PendingQuery, replica: number): void {
    pending.sentTo.delete(replica);
    const count = pending.reasks.get(replica)?.count ?? 0;
    pending.reasks.set(replica, { count: count + 1, dueAt: this.ctx.now() + backoffBaseDelayMs(count, QUERY_REASK_BACKOFF) });
  }

  /** Sends the re-asks whose delay is over. */
  private sendDueReasks(pending: PendingQuery, now: number): void {
    for (const [replica, reask] of pending.reasks) {
      if (reask.dueAt > now) continue;
      const connection = this.ctx.group.connection(replica);
      if (connection !== undefined) this.sendQuery(pending, connection);
    }
  }

  private settleIfReachableAnswered(pending: PendingQuery): void {
    if (pending.rule.settleWhenReachableAnswered !== true || pending.answered.size === 0) return;
    if (pending.rule.enoughToSettleEarly !== undefined && !pending.rule.enoughToSettleEarly()) return;
    if (!this.ctx.group.readyReplicas().every((id) => pending.answered.has(id))) return;
    pending.settle(pending.rule.atDeadline(() => this.ctx.group.describeReplicas(pending.answered)));
  }

  /** A session came up: every query in flight goes to it (unless it already answered). */
  onReady(connection: ReplicaConnection): void {
    for (const pending of this.queries.values()) this.sendQuery(pending, connection);
  }

  /** A session went down: what was sent on it is gone with it. */
  onDown(id: number): void {
    for (const pending of this.queries.values()) pending.sentTo.delete(id);
  }

  /**
   * Replica `id` left the group (removed, or its key or address replaced): its `at` no
   * longer counts toward the floor (the query's rule judges answers as it always did).
   */
  onLeft(id: number): void {
    for (const pending of this.queries.values()) {
      pending.sentTo.delete(id);
      pending.ats.delete(id);
    }
  }

  /** Settles queries past their deadline, and those whose reachable replicas have all answered; sends re-asks due. */
  tick(now: number): void {
    for (const pending of [...this.queries.values()]) {
      if (now >= pending.deadline) pending.settle(pending.rule.atDeadline(() => this.ctx.group.describeReplicas(pending.answered)));
      else {
        // A rule that settles on time before the deadline (eachRule's grace after n-f answers).
        const onTime = pending.rule.settleOnTick?.(now) ?? null;
        if (onTime !== null) {
          pending.settle(onTime);
          continue;
        }
        this.sendDueReasks(pending, now);
        this.settleIfReachableAnswered(pending);
      }
    }
  }

  /** Rejects every query in flight with `error` (the client is closing). */
  failAll(error: ClientError): void {
    for (const pending of [...this.queries.values()]) pending.settle({ ok: false, error });
  }
}
