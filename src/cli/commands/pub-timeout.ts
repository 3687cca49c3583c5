/**
 * What `fitb pub` says after a publish timed out. A timeout is not a refusal: the
 * replicas that did not answer in time may still store or order the event (a request
 * reached the leader, the group decides it after a view change, a slow replica catches
 * up). So the operator is told that, which quorum was missing, and the command that
 * shows whether the event made it.
 */
import type { FitbClient } from "../../client/client.ts";
import { byzantineQuorum, vouchQuorum } from "../../core/voting/quorum.ts";
import { formatPublicKey } from "../../crypto/keys.ts";
import type { ClientFlags } from "./pub.ts";

export interface TimeoutContext {
  readonly client: FitbClient;
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
  const lines = [
    `${events} timed out without the acknowledgement the channel needs; ${timedOut === 1 ? "it" : "they"} may still be stored or ordered.`,
    `Why: ${reachable} of ${client.n} replicas were reachable at the end; a total-order channel is ordered only while ${byzantineQuorum(f)} (2f+1) agree, and every publish is acknowledged by at least ${vouchQuorum(f)} (f+1) matching replies (2f+1 on byzantine/none).`,
    `Check: ${sub}`,
    `  lists what the channel holds${startSeq === null ? " (unordered: every retained event)" : " from where this run began"}; this publisher is ${formatPublicKey(client.publicKey)}.`,
  ];
  if (startSeq === undefined) lines.push("  N: the channel's LAST-SEQ before this publish (fitb admin ... list-channels shows it).");
  return lines;
}
