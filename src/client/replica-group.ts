/**
 * The client's connections to the n replicas of a cluster, one ReplicaConnection each,
 * and what the rest of the client asks about them as a group: which have a session up,
 * each one's state, and why the ones that did not answer something did not.
 */
import type { ClusterConfig } from "../config/cluster.ts";
import type { SigningKey } from "../crypto/keys.ts";
import { ReplicaConnection, type ConnectionEvents, type ConnectionOptions, type ReplicaEndpoint } from "./connection.ts";
import type { ExecutedFloor } from "./executed-floor.ts";

export class ReplicaGroup {
  readonly n: number;
  readonly f: number;
  /** Indexed by replica id. */
  readonly connections: readonly ReplicaConnection[];

  constructor(config: ClusterConfig, key: SigningKey, events: ConnectionEvents, options: ConnectionOptions) {
    this.n = config.n;
    this.f = config.f;
    this.connections = config.replicas.map((replica) => {
      const endpoint: ReplicaEndpoint = {
        id: replica.id,
        host: replica.host,
        hosts: replica.hosts,
        port: replica.port,
        publicKey: replica.publicKey,
      };
      return new ReplicaConnection(endpoint, key, events, options);
    });
  }

  /** The connection to replica `id`, if the cluster has one. */
  connection(id: number): ReplicaConnection | undefined {
    return this.connections[id];
  }

  start(): void {
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

/** What request and query tracking need from the client: the replicas, the floor, the cluster's frame bound, the clock and the log. */
export interface TrackingContext {
  readonly group: ReplicaGroup;
  readonly floor: ExecutedFloor;
  readonly frameBytesMax: number;
  now(): number;
  log(level: "info" | "warn", message: string, replica?: number): void;
}
