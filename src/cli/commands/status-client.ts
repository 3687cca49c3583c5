/**
 * The client side of `fitb admin status` and `fitb top`: they talk to whichever replicas
 * answer, so they do not wait for a quorum of sessions first. They first read the replica
 * group (the cluster file may predate a membership change: a replica added since is one
 * the file does not list, and its absence must count), then wait until each replica of
 * that group is up or has failed once (a refused connection fails at once), ask those that
 * are up, and report every replica, with why the others are down.
 *
 * The group read is bounded (the client's query timeout, and no longer than it takes to
 * see that fewer than f+1 replicas can answer); when it finds no group f+1 replicas agree
 * on, the report judges the file's replicas and says so (status-report.ts: at best
 * degraded, exit 1).
 */
import { type ClusterStatus, FitbClient, summarizeStatus } from "../../client/client.ts";
import { compareWithFile } from "../../client/membership-follow.ts";
import { loadClientSetup } from "../../client/setup.ts";
import { EACH_ANSWER_GRACE_MS } from "../../client/queries.ts";
import { vouchQuorum } from "../../core/voting/quorum.ts";
import type { CommandIo } from "../command.ts";
import { type ClientFlags, withClientErrors } from "./pub.ts";
import { assessStatus, type StatusReport } from "./status-report.ts";

/** How often the sessions and the group read are looked at while they settle. */
const SETTLE_POLL_MS = 10;

/** What status and top use of a client (FitbClient; a fake in tests). */
export type StatusSource = Pick<
  FitbClient,
  "config" | "n" | "f" | "membership" | "timeouts" | "replicaStates" | "readyReplicas" | "status" | "refreshMembership"
>;

/** A read of the group this module started and has not yet seen finish. */
interface GroupRead {
  finished: boolean;
}

/** Each client's pending read of the group, started by beginGroupRead (at most one per client). */
const groupReads = new WeakMap<StatusSource, GroupRead>();

/** A started client (no session wait) whose first read of the group is under way; the caller closes it. */
export function openStatusClient(flags: ClientFlags, io: CommandIo, name: string): FitbClient {
  const setup = loadClientSetup(flags.configPath, flags.keyPath);
  for (const warning of setup.warnings) io.err(`fitb ${name}: warning: ${warning}`);
  const client = new FitbClient({
    config: setup.config,
    key: setup.key,
    timeouts: { connectMs: flags.connectTimeoutMs, requestMs: flags.timeoutMs, queryMs: flags.timeoutMs },
  });
  client.start();
  // At once, before the client's first tick would start one of its own: this read is the
  // one the first report waits for.
  beginGroupRead(client);
  return client;
}

/**
 * Starts a read of the group (FitbClient.refreshMembership) and remembers it, so that the
 * next report waits for it. Call it right after `start()`: a read already in flight (one
 * the client's tick started) is not this one, and would be taken as finished at once.
 */
export function beginGroupRead(client: StatusSource): void {
  const read: GroupRead = { finished: false };
  groupReads.set(client, read);
  // refreshMembership never rejects: a failed read is counted in membership.failedReads.
  void client.refreshMembership().then(() => {
    read.finished = true;
  });
}

/**
 * Waits (bounded) for the group read under way, and says why the group the client follows
 * is not one f+1 replicas agreed on; null when it is. A read is started when the client
 * has neither read the group nor tried yet; after a failed read, reports do not wait (the
 * client reads again in the background), so a `top` refresh is not held by it.
 */
export async function groupUnread(client: StatusSource): Promise<string | null> {
  if (client.membership.epoch !== null) return null;
  let read = groupReads.get(client);
  if (read === undefined && client.membership.failedReads === 0) {
    beginGroupRead(client);
    read = groupReads.get(client) as GroupRead;
  }
  let outcome: GroupReadOutcome = "finished";
  if (read !== undefined) {
    // The read's own deadline is the query timeout; this bound only guards the wait.
    const deadline = Date.now() + client.timeouts.queryMs;
    while (!read.finished && !groupReadHopeless(client) && Date.now() < deadline) await Bun.sleep(SETTLE_POLL_MS);
    outcome = read.finished ? "finished" : groupReadHopeless(client) ? "hopeless" : "timeout";
    // One given up on stays, for the next report to wait for what is left of it.
    if (read.finished) groupReads.delete(client);
  }
  return groupReadProblem(client.membership, outcome, client.timeouts.queryMs);
}

/** How the wait for a group read ended: it finished, fewer than f+1 replicas can answer it, or the bound passed. */
export type GroupReadOutcome = "finished" | "hopeless" | "timeout";

/** Whether a group read cannot succeed now: every session is up or has failed, and fewer than f+1 are up. */
export function groupReadHopeless(client: Pick<StatusSource, "f" | "replicaStates" | "readyReplicas">): boolean {
  const settled = client.replicaStates().every((r) => r.state === "ready" || r.lastError !== null);
  return settled && client.readyReplicas().length < vouchQuorum(client.f);
}

/**
 * Why the group followed is not one f+1 replicas agreed on, from the client's membership
 * state once a read finished (or was given up on); null when the client follows a group
 * it read (an epoch taken).
 */
export function groupReadProblem(
  membership: Pick<StatusSource["membership"], "epoch" | "failedReads">,
  outcome: GroupReadOutcome,
  waitedMs: number,
): string | null {
  if (membership.epoch !== null) return null;
  if (membership.failedReads > 0) return "fewer than f+1 replicas of the cluster file sent the same member list";
  if (outcome === "hopeless") return "fewer than f+1 replicas are up to send the member list";
  if (outcome === "timeout") return `no member list within ${waitedMs} ms`;
  return "the member list the replicas agree on was not taken (older than the cluster file's epoch, or not one to vote with)";
}

/** Every replica's status answer (or none), once each session is up or has failed (bounded by `connectMs`). */
export async function readClusterStatus(client: StatusSource, connectMs: number): Promise<ClusterStatus> {
  const deadline = Date.now() + connectMs;
  while (Date.now() < deadline) {
    if (client.replicaStates().every((r) => r.state === "ready" || r.lastError !== null)) break;
    await Bun.sleep(SETTLE_POLL_MS);
  }
  if (client.readyReplicas().length === 0) {
    const connections = client.replicaStates().map((r) => ({ id: r.id, address: r.address, isReady: false }));
    return summarizeStatus(client.f, new Map(), connections);
  }
  return withClientErrors(() => client.status({ answerGraceMs: EACH_ANSWER_GRACE_MS }));
}

/**
 * Why each replica is not up, as the client saw it (its address is in the row already). A
 * replica with a session that did not answer (stopped, or slower than the grace after n-f
 * answers) says so, whatever its session failed with before.
 */
export function downReasons(client: Pick<StatusSource, "replicaStates">): Map<number, string> {
  return new Map(
    client
      .replicaStates()
      .map((r) => [r.id, r.state === "ready" ? "no answer" : (r.lastError?.replace(/^replica \d+ \([^)]*\) /, "") ?? r.state)]),
  );
}

/**
 * The report on the group the replicas agree on (or, when it could not be read, the cluster
 * file's, saying so), with the cluster file compared to that group: the client took the
 * group and dials it, so it sees no trouble with a file that lists a replica's key wrong,
 * while one started from the file before it read the group does.
 */
export async function readStatusReport(client: StatusSource, connectMs: number): Promise<StatusReport> {
  const unread = await groupUnread(client);
  const status = await readClusterStatus(client, connectMs);
  const group = client.membership.group;
  const clusterFile = unread === null && group !== null ? compareWithFile(group, client.config) : null;
  return assessStatus(
    { name: client.config.name, n: client.n, f: client.f, groupUnread: unread, clusterFile },
    status,
    downReasons(client),
  );
}
