/**
 * What `fitb demo` tells the operator about its running cluster, apart from the demo's
 * processes (demo.ts) so that it is tested on its own: the port suggested for an admin
 * console beside the demo's, and the warning when a replica exits.
 */
import { PORT_MAX } from "../../config/cluster.ts";
import { byzantineQuorum } from "../../core/voting/quorum.ts";

/**
 * The port suggested for an admin `fitb console` beside the demo's read-only one: the
 * first above the demo's console port (below it at the top of the range) that the demo
 * itself does not listen on, so the printed command works as given with any --console-port.
 */
export function adminConsolePort(consolePort: number, taken: readonly number[]): number {
  const used = new Set([consolePort, ...taken]);
  for (let port = consolePort + 1; port <= PORT_MAX; port++) if (!used.has(port)) return port;
  for (let port = consolePort - 1; port >= 1; port--) if (!used.has(port)) return port;
  throw new Error(`no port left for the admin console beside ${consolePort}`);
}

/** What a replica's exit means to the demo's group, for the warning line. */
export interface ReplicaExit {
  readonly id: number;
  /** "exited with code 1" or "was stopped by SIGKILL". */
  readonly how: string;
  /** Its log file, as shown to the operator. */
  readonly log: string;
  /** Every replica of the demo that exited so far, this one last. */
  readonly exited: readonly number[];
  readonly n: number;
  readonly f: number;
  /** The command line that starts it again (replicaRestartCommand). */
  readonly restart: string;
}

/**
 * The warning when a replica exits while the demo runs: whether the group still orders,
 * and how to start the replica again. Up to f exits the group goes on; beyond f (with
 * n = 3f+1) fewer than the 2f+1 that order remain, so total-order channels and admin
 * commands stop, and byzantine/none publishes too (2f+1 must store them).
 */
export function replicaExitWarning(exit: ReplicaExit): string {
  const head = `fitb demo: warning: replica ${exit.id} ${exit.how} (see ${exit.log})`;
  const down = exit.exited.length;
  const again =
    `start it again in another shell (it rejoins the group; the demo does not follow it then, and Ctrl-C here does not stop it): ` +
    exit.restart;
  if (down <= exit.f) {
    const plural = exit.f === 1 ? "" : "s";
    return `${head}; the cluster tolerates ${exit.f} failed replica${plural} (f=${exit.f}) and goes on with ${exit.n - down} of ${exit.n}; ${again}`;
  }
  const quorum = byzantineQuorum(exit.f);
  const needed = Math.max(1, quorum - (exit.n - down));
  const which = needed === 1 ? "one of them runs" : `${needed} of them run`;
  return (
    `${head}; replicas ${exit.exited.join(", ")} have exited since the demo started, more than the cluster tolerates (f=${exit.f}): ` +
    `unless one was started again by hand, it has lost its ` +
    `quorum for ordering (${quorum} of ${exit.n} replicas), so total-order channels and admin commands stop, and so do ` +
    `byzantine/none publishes (${quorum} replicas must store each), until ${which} again; ${again}`
  );
}
