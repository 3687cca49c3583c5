/**
 * What `fitb pub` says after a publish timed out. A timeout is not a refusal: the
 * replicas that did not answer in time may still store or order the event (a request
 * reached the leader, the group decides it after a view change, a slow replica catches
 * up). So the operator is told that, which quorum was missing, and the command that
 * shows whether the event made it. Replicas that refused publishes "not now" for a rate
 * limit or load (retried, not failures) are counted too: a timeout among such refusals
 * is the operator's limit as much as the group's reach.
 */
import type { FitbClient } from "../../client/client.ts";
import type { ErrorCode } from "../../../wire/types.ts";
import { byzantineQuorum, vouchQuorum } from "../../core/voting/quorum.ts";
import { formatPublicKey } from "../../crypto/keys.ts";
import type { ClientFlags } from "./pub.ts";

export interface TimeoutContext {
  readonly client: Pick<FitbClient, "f" | "n" | "readyReplicas" | "publicKey" | "transientRefusals">;
  readonly flags: Pick<ClientFlags, "configPath" | "keyPath">;
  readonly tag: string;
  readonly timedOut: number;
  /** The channel's next seq before this run published (total order); null: unordered; undefined: unknown. */
  readonly startSeq: number | null | undefined;
}

/** Lines for standard error. */
export function timeoutHint(context: TimeoutContext): string[] {
  const { client, flags, tag, timedOut, startSeq } = context;
  const f = client.f;
  const reachable = client.readyReplicas().length;
  const events = timedOut === 1 ? "1 event" : `${timedOut} events`;
  const from = startSeq === null ? "0" : startSeq === undefined ? "N" : String(startSeq);
  const sub = `fitb sub --config ${flags.configPath} --key ${flags.keyPath} ${tag} --from ${from} --format '{seq} {time} {publisher} {payload}'`;
  const quorums = `a total-order channel is ordered only while ${byzantineQuorum(f)} (2f+1) agree, and every publish is acknowledged by at least ${vouchQuorum(f)} (f+1) matching replies (2f+1 on byzantine/none)`;
  const reachability =
    reachable >= client.n
      ? `all ${client.n} replicas were reachable at the end, so those that did not acknowledge were slow, refused "not now" or answered otherwise (each -ERR line names every replica that did not answer and its last answer)`
      : `${reachable} of ${client.n} replicas were reachable at the end`;
  const lines = [
    `${events} timed out without the acknowledgement the channel needs; ${timedOut === 1 ? "it" : "they"} may still be stored or ordered.`,
    `Why: ${reachability}; ${quorums}.`,
  ];
  const refusals = notNowRefusals(client.transientRefusals);
  if (refusals !== null) lines.push(`Meanwhile: ${refusals}.`);
  lines.push(
    `Check: ${sub}`,
    `  lists what the channel holds${startSeq === null ? " (unordered: every retained event)" : " from where this run began"}; this publisher is ${formatPublicKey(client.publicKey)}` +
      " (on a channel that is not public, give --key a key registered to subscribe to it).",
  );
  if (startSeq === undefined) lines.push("  N: the channel's LAST-SEQ before this publish (fitb admin ... list-channels shows it).");
  return lines;
}

/**
 * The "not now" refusals that are the operator's to act on (a rate limit, load) the
 * replicas answered since the client started, retried rather than failed: a publish they
 * kept out to its deadline fails with their code (-ERR RATE_LIMITED, -ERR OVERLOADED), but
 * one that timed out may have met them too. Null: none.
 */
function notNowRefusals(counts: ReadonlyMap<ErrorCode, number>): string | null {
  const parts: string[] = [];
  const times = (count: number): string => (count === 1 ? "once" : `${count} times`);
  const rateLimited = counts.get("RATE_LIMITED") ?? 0;
  if (rateLimited > 0) {
    parts.push(
      `RATE_LIMITED ${times(rateLimited)} (over a rate limit: the key's quota, 'fitb admin ... list-quotas', or the cluster's limits)`,
    );
  }
  const overloaded = counts.get("OVERLOADED") ?? 0;
  if (overloaded > 0) parts.push(`OVERLOADED ${times(overloaded)} (replicas shedding load)`);
  if (parts.length === 0) return null;
  return `replicas refused publishes ${parts.join(" and ")}, which the client retried until each publish's deadline`;
}
