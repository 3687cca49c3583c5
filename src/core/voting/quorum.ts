/**
 * The one place that says how many replicas a client needs (DESIGN §3, per-CLASS table).
 * Counts are always of distinct replicas, never of messages.
 */
import type { ChannelClass } from "../channels/types.ts";

/** What a reply is for: a publish on a channel of some class, or an admin command. */
export type ReplyKind = "crash/none" | "crash/total" | "byzantine/none" | "byzantine/total" | "admin";

export const REPLY_KINDS: readonly ReplyKind[] = ["crash/none", "crash/total", "byzantine/none", "byzantine/total", "admin"];

/** Upper bound on the replica group size a voter accepts (ids are 0..n-1). */
export const REPLICAS_MAX = 256;

export function replyKindOf(cls: Pick<ChannelClass, "fault" | "order">): ReplyKind {
  return `${cls.fault}/${cls.order}`;
}

/**
 * Distinct matching replies that acknowledge a request of this kind:
 * - crash/none: f+1 replicas stored it (at least one survives f crashes);
 * - byzantine/none: 2f+1 stored it (f+1 correct ones hold it even if f lie);
 * - crash/total, byzantine/total, admin: f+1 matching results (at least one correct
 *   replica executed it, and correct replicas execute identically).
 */
export function ackQuorum(kind: ReplyKind, f: number): number {
  return kind === "byzantine/none" ? 2 * f + 1 : f + 1;
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
