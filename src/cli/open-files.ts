/**
 * The open-file limit a replica needs. Every connection is a file descriptor: the client
 * sessions (server.ts CLIENT_CONNECTIONS_MAX), the handshakes in flight (HANDSHAKES_MAX),
 * the tarpit's held connections (tarpit.ts), the metrics port's (metrics-server.ts), the
 * peer links (two per peer at most: one dialled, one accepted), and the database, its
 * write-ahead log and the process's own. Under a lower limit the listener's accept fails
 * with EMFILE, over and over: measured at 99% of a core and 38,000 failing accept calls a
 * second, with peers unable to link again until connections closed. So the replica says
 * at start when the limit is below what its bounds can use (the shipped systemd unit sets
 * LimitNOFILE=65536).
 */
import { readFileSync } from "node:fs";
import { CLIENT_CONNECTIONS_MAX, HANDSHAKES_MAX } from "../replica/server.ts";
import { TARPIT_CONNECTIONS_MAX } from "../replica/tarpit.ts";
import { METRICS_CONNECTIONS_MAX } from "./metrics-server.ts";

/** Descriptors besides connections: database, write-ahead log, its sync handles, logs, threads' pipes, the runtime's own. */
const OTHER_FILES = 128;

/** What the replica's bounds can hold open at once in a group of `n` replicas. */
export function openFilesNeeded(n: number): number {
  // Handshakes twice: the client listener's and, with a peer_port, the peer listener's own.
  return CLIENT_CONNECTIONS_MAX + 2 * HANDSHAKES_MAX + TARPIT_CONNECTIONS_MAX + METRICS_CONNECTIONS_MAX + 2 * n + OTHER_FILES;
}

/** The soft "Max open files" of /proc/self/limits' text; null when it is not there or unlimited. */
export function openFileLimit(limits: string): number | null {
  const match = /^Max open files\s+(\d+|unlimited)\s+/m.exec(limits);
  if (match === null || match[1] === "unlimited") return null;
  return Number(match[1]);
}

/** Why this process's open-file limit is too low for a replica of `n`, or null (fine, or unknown off Linux). */
export function openFileLimitProblem(n: number, limitsText: () => string = () => readFileSync("/proc/self/limits", "utf8")): string | null {
  let limit: number | null;
  try {
    limit = openFileLimit(limitsText());
  } catch {
    return null;
  }
  const needed = openFilesNeeded(n);
  if (limit === null || limit >= needed) return null;
  return (
    `the open file limit is ${limit}, below the ${needed} this replica's connection bounds can hold open: ` +
    "past it new connections fail (EMFILE) and the listener spins; raise it (LimitNOFILE= in the systemd unit, ulimit -n)"
  );
}
