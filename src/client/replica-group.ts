/**
 * The client's connections to the n replicas of a cluster, one ReplicaConnection each,
 * and what the rest of the client asks about them as a group: which have a session up,
 * each one's state, and why the ones that did not answer something did not.
 */
import type { ClusterConfig } from "../config/cluster.ts";
import { bytesEqual, nativeBytesEqual } from "../crypto/encoding.ts";
import type { SigningKey } from "../crypto/keys.ts";
import { PrefixDigests } from "../crypto/session.ts";
import { ReplicaConnection, type ConnectionEvents, type ConnectionOptions, type ReplicaEndpoint } from "./connection.ts";
import type { ExecutedFloor } from "./executed-floor.ts";

/** A member of the group as the client dials it. */
export type GroupMember = ReplicaEndpoint;

/** What `ReplicaGroup.apply` changed. */
export interface GroupChange {
  readonly added: readonly number[];
  readonly removed: readonly number[];
  /** Members whose key or address changed: their connection was replaced. */
  readonly replaced: readonly number[];
}

export class ReplicaGroup {
  /** Members now. */
  n: number;
  /** Faults the group tolerates now. */
  f: number;
  /** The membership epoch this view is of: 0 for the cluster file's group. */
  epoch: number;
  private readonly byId = new Map<number, ReplicaConnection>();
  private started = false;

  constructor(
    config: ClusterConfig,
    private readonly key: SigningKey,
    private readonly events: ConnectionEvents,
    private readonly options: ConnectionOptions,
  ) {
    this.options = { ...options, payloadDigests: options.payloadDigests ?? new PrefixDigests(nativeBytesEqual) };
    this.n = config.n;
    this.f = config.f;
    this.epoch = 0;
    for (const replica of config.replicas) {
      const endpoint: ReplicaEndpoint = {
        id: replica.id,
        host: replica.host,
        hosts: replica.hosts,
        port: replica.port,
        publicKey: replica.publicKey,
      };
      this.byId.set(replica.id, new ReplicaConnection(endpoint, key, events, this.options));
    }
  }

  /** The connections to the members, in ascending id order. */
  get connections(): readonly ReplicaConnection[] {
    return [...this.byId.values()].sort((a, b) => a.id - b.id);
  }

  /** The members' ids, ascending. Ids stay with a replica across changes, so after a removal they need not be 0..n-1. */
  get ids(): number[] {
    return [...this.byId.keys()].sort((a, b) => a - b);
  }

  /**
   * One more than the highest member id: the id space a request's reply voter counts in
   * (a member added while the request is out may answer it too).
   */
  get slots(): number {
    let max = -1;
    for (const id of this.byId.keys()) max = Math.max(max, id);
    return max + 1;
  }

  /** Whether replica `id` is a member now. */
  has(id: number): boolean {
    return this.byId.has(id);
  }

  /**
   * Moves to another group (an epoch f+1 replicas agreed on): connects to new members,
   * closes the connections to removed ones, and replaces those whose key or address
   * changed. Callers vouch for `members`; this only applies it.
   */
  apply(epoch: number, f: number, members: readonly GroupMember[]): GroupChange {
    const added: number[] = [];
    const removed: number[] = [];
    const replaced: number[] = [];
    const wanted = new Map(members.map((member) => [member.id, member]));
    for (const [id, connection] of [...this.byId]) {
      if (wanted.has(id)) continue;
      this.byId.delete(id);
      connection.close();
      removed.push(id);
    }
    for (const member of members) {
      const current = this.byId.get(member.id);
      if (current !== undefined && sameEndpoint(current.endpoint, member)) continue;
      if (current !== undefined) {
        current.close();
        replaced.push(member.id);
      } else {
        added.push(member.id);
      }
      // Past epoch 0 the key expected is the group's, which a mismatch then names (handshake.ts keyMismatchReason).
      const expected = epoch > 0 ? { ...member, keySource: { epoch } } : member;
      const connection = new ReplicaConnection(expected, this.key, this.events, this.options);
      this.byId.set(member.id, connection);
      if (this.started) connection.start();
    }
    this.epoch = epoch;
    this.f = f;
    this.n = members.length;
    return { added, removed, replaced };
  }

  /** The connection to replica `id`, if the cluster has one. */
  connection(id: number): ReplicaConnection | undefined {
    return this.byId.get(id);
  }

  start(): void {
    this.started = true;
    for (const connection of this.connections) connection.start();
  }

  close(): void {
    for (const connection of this.connections) connection.close();
  }

  /** Ids of the replicas with a session up now. */
  readyReplicas(): number[] {
    return this.connections.filter((connection) => connection.isReady).map((connection) => connection.id);
  }

  /** Each replica's connection state and last error, for diagnostics. */
  replicaStates(): { id: number; address: string; state: string; lastError: string | null }[] {
    return this.connections.map((connection) => ({
      id: connection.id,
      address: connection.address,
      state: connection.state,
      lastError: connection.lastError?.message ?? null,
    }));
  }

  /** "replica 2 (127.0.0.1:7002): connection refused; replica 3: no answer" for those not in `answered`. */
  describeReplicas(answered: ReadonlySet<number>, notes: ReadonlyMap<number, string> = new Map()): string {
    const parts: string[] = [];
    for (const connection of this.connections) {
      if (answered.has(connection.id)) continue;
      const note = notes.get(connection.id);
      const why =
        note ??
        (connection.isReady ? "no answer" : (connection.lastError?.message.replace(/^replica \d+ \([^)]*\) /, "") ?? "not connected"));
      parts.push(`replica ${connection.id} (${connection.address}): ${why}`);
    }
    return parts.length === 0 ? "every replica answered" : parts.join("; ");
  }
}

function sameEndpoint(a: ReplicaEndpoint, b: ReplicaEndpoint): boolean {
  const hostsA = a.hosts ?? [];
  const hostsB = b.hosts ?? [];
  return (
    a.host === b.host &&
    a.port === b.port &&
    hostsA.length === hostsB.length &&
    hostsA.every((host, i) => host === hostsB[i]) &&
    bytesEqual(a.publicKey, b.publicKey)
  );
}

/** What request and query tracking need from the client: the replicas, the floor, the cluster's frame bound, the clock and the log. */
export interface TrackingContext {
  readonly group: ReplicaGroup;
  readonly floor: ExecutedFloor;
  readonly frameBytesMax: number;
  now(): number;
  log(level: "info" | "warn", message: string, replica?: number): void;
  /** Something is due at `atMs` (the `now()` clock): call the tracker's retryDue then. Absent: the resend tick only. */
  wakeAt?(atMs: number): void;
}
