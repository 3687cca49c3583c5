/**
 * The one place that says how many replicas a client needs (src/README.md §3, per-CLASS table).
 * Counts are always of distinct replicas, never of messages.
 */
import { REPLICAS_MAX } from "../../../wire/types.ts";
import type { ChannelClass } from "../channels/types.ts";

/** What a reply is for: a publish on a channel of some class, or an admin command. */
export type ReplyKind = "crash/none" | "crash/total" | "byzantine/none" | "byzantine/total" | "admin";

export const REPLY_KINDS: readonly ReplyKind[] = ["crash/none", "crash/total", "byzantine/none", "byzantine/total", "admin"];

export function replyKindOf(cls: Pick<ChannelClass, "fault" | "order">): ReplyKind {
  return `${cls.fault}/${cls.order}`;
}

/**
 * f+1 distinct replicas: at least one of them is correct, whatever the f faulty ones
 * say. The fewest whose agreement vouches for a fact (a result, a refusal, a channel's
 * description, a publisher's batch), and the (f+1)-th highest of their numbers is one a
 * correct replica has reached, so f liars cannot inflate it.
 */
export function vouchQuorum(f: number): number {
  return f + 1;
}

/**
 * 2f+1 distinct replicas: at least f+1 of them are correct, so the correct ones
 * outnumber the f that may lie, and (with n = 3f+1) any two such groups share a correct
 * replica. What a byzantine/none publish must be stored by, and how many answers a client
 * hears out before it judges a question that f liars or a stale minority must not decide
 * (where sequence numbers continue, whether a refusal stands).
 */
export function byzantineQuorum(f: number): number {
  return 2 * f + 1;
}

/**
 * n-f: the most replicas a client can wait for, since f of them may be down and never
 * answer.
 */
export function liveQuorum(n: number, f: number): number {
  return n - f;
}

/**
 * Distinct matching replies that acknowledge a request of this kind:
 * - crash/none: f+1 replicas stored it (at least one survives f crashes);
 * - byzantine/none: 2f+1 stored it (f+1 correct ones hold it even if f lie);
 * - crash/total, byzantine/total, admin: f+1 matching results (at least one correct
 *   replica executed it, and correct replicas execute identically).
 */
export function ackQuorum(kind: ReplyKind, f: number): number {
  return kind === "byzantine/none" ? byzantineQuorum(f) : vouchQuorum(f);
}

/** Whether a replica may lie under this kind (admin always runs Byzantine ordering). */
export function isByzantine(kind: ReplyKind): boolean {
  return kind !== "crash/none" && kind !== "crash/total";
}

/**
 * Whether every correct replica computes the same result: true for ordered execution,
 * where a different result proves a fault. Unordered stores may differ legitimately (a
 * replica that has not yet applied a channel's creation refuses what others store).
 */
export function isDeterministic(kind: ReplyKind): boolean {
  return kind !== "crash/none" && kind !== "byzantine/none";
}

/** Smallest group that tolerates f faults of the kind: 3f+1 Byzantine, 2f+1 crash. */
export function minReplicas(kind: ReplyKind, f: number): number {
  return isByzantine(kind) ? 3 * f + 1 : 2 * f + 1;
}

/** Throws on a group size the kind cannot work with; a configuration error. */
export function checkGroup(kind: ReplyKind, n: number, f: number): void {
  if (!Number.isSafeInteger(f) || f < 0) throw new RangeError("f must be a non-negative integer");
  if (!Number.isSafeInteger(n) || n < minReplicas(kind, f) || n > REPLICAS_MAX) {
    throw new RangeError(`${kind} needs ${minReplicas(kind, f)}..${REPLICAS_MAX} replicas for f=${f}, got ${n}`);
  }
}
