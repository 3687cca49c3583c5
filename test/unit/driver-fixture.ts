/**
 * One replica's ordering runtime for unit tests: a real OrderingDriver with its core,
 * channel machine, store and peer mesh (not started: no link is up), for tests that feed
 * it peer messages by hand. The mesh hands what it receives to the driver and mutes a
 * peer the core finds flooding, or the driver finds sending what no correct replica sends,
 * as the replica does.
 */
import { join } from "node:path";
import { channelsConfigFrom, type ClusterConfig } from "../../src/config/cluster.ts";
import { initCluster } from "../../src/config/init.ts";
import { ChannelMachine } from "../../src/core/channels/machine.ts";
import { sha256 } from "../../src/crypto/hash.ts";
import { loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { genesisMembership } from "../../src/replica/epochs.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import { coreConfigFor, type JoinEpoch, OrderingDriver } from "../../src/replica/ordering-driver.ts";
import { PeerMesh } from "../../src/replica/peers.ts";
import { ReplicaStorage, type SyncPolicy } from "../../src/replica/storage/index.ts";
import { type TestLog, testLog } from "./storage-fixtures.ts";

export interface DriverFixture {
  readonly config: ClusterConfig;
  /** The public key replica `id`'s sessions authenticate with (what the mesh hands the driver with each message). */
  readonly keyOf: (id: number) => Uint8Array;
  readonly driver: OrderingDriver;
  readonly mesh: PeerMesh;
  readonly metrics: Metrics;
  readonly log: TestLog;
  readonly storage: ReplicaStorage;
  /** Stops the driver and the mesh and closes the store. */
  close(): void;
}

/**
 * Replica 0 of a 4-replica cluster written to `dir` (reused when it is there: a restart);
 * `membership`: its machine manages the group; `join`: it starts as a replica joining that epoch.
 */
export function driverFixture(
  dir: string,
  basePort: number,
  options: { membership?: boolean; join?: JoinEpoch; overwrite?: boolean; sync?: SyncPolicy } = {},
): DriverFixture {
  const init = initCluster({ dir, replicas: 4, host: "127.0.0.1", basePort, name: "unit", overwrite: options.overwrite ?? false });
  const config = init.config;
  const key = loadSigningKeyFile(init.replicaKeyFiles[0] as string).key;
  const log = testLog();
  const metrics = new Metrics();
  const machine = new ChannelMachine({
    hash: sha256,
    config: channelsConfigFrom(config.limits, config.retention),
    ...(options.membership === true
      ? { membership: { genesis: genesisMembership(config), checkpointInterval: coreConfigFor(config, 0).checkpointInterval } }
      : {}),
  });
  const storage = ReplicaStorage.open({
    dir: join(dir, "data"),
    sync: options.sync ?? "normal",
    cluster: config.name,
    replica: 0,
    log,
    metrics,
  });
  let driver: OrderingDriver | null = null;
  const mesh = new PeerMesh({
    self: 0,
    key,
    replicas: config.replicas,
    frameBytesMax: config.limits.frameBytesMax,
    log,
    metrics,
    onMessage: (from, msg, key) => driver?.onPeerMessage(from, msg, key),
  });
  driver = new OrderingDriver({
    config,
    id: 0,
    key,
    log,
    metrics,
    mesh,
    machine,
    storage,
    onDecided: () => 0,
    onResendReply: () => {},
    onRefused: () => {},
    onPeerFlooding: (peer) => mesh.muteFlooding(peer),
    onPeerFaulty: (peer, reason) => mesh.muteMisbehaving(peer, reason),
    ...(options.join === undefined ? {} : { join: options.join }),
  });
  const started = driver;
  const keyOf = (id: number): Uint8Array => {
    const replica = config.replicas.find((r) => r.id === id);
    if (replica === undefined) throw new Error(`no replica ${id} in the fixture's cluster`);
    return replica.publicKey;
  };
  return {
    config,
    keyOf,
    driver: started,
    mesh,
    metrics,
    log,
    storage,
    close() {
      started.stop();
      mesh.stop();
      storage.close();
    },
  };
}
