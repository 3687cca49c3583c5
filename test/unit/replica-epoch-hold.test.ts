/**
 * Messages of the next membership epoch are held at a replica only while its own switch is
 * pending (src/replica/ordering-driver.ts): otherwise a member could fill every correct
 * replica's memory with messages for an epoch that is not coming. A real driver, core,
 * store and mesh (not started), fed peer messages by hand.
 */
import { afterAll, expect, test } from "bun:test";
import { join } from "node:path";
import { channelsConfigFrom } from "../../src/config/cluster.ts";
import { initCluster } from "../../src/config/init.ts";
import { ChannelMachine } from "../../src/core/channels/machine.ts";
import { genesisMembership } from "../../src/replica/epochs.ts";
import { sha256 } from "../../src/crypto/hash.ts";
import { loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import { coreConfigFor, OrderingDriver } from "../../src/replica/ordering-driver.ts";
import { encodeEnvelope } from "../../src/replica/peer-messages.ts";
import { PeerMesh } from "../../src/replica/peers.ts";
import { ReplicaStorage } from "../../src/replica/storage/index.ts";
import { tempDir, testLog } from "./storage-fixtures.ts";

const temp = tempDir("fitb-epoch-hold-");
afterAll(() => temp.remove());

test("with no switch pending, next-epoch messages are refused and counted, not held", () => {
  const init = initCluster({ dir: temp.dir, replicas: 4, host: "127.0.0.1", basePort: 41_000, name: "unit", overwrite: false });
  const config = init.config;
  const key = loadSigningKeyFile(init.replicaKeyFiles[0] as string).key;
  const log = testLog();
  const metrics = new Metrics();
  const machine = new ChannelMachine({
    hash: sha256,
    config: channelsConfigFrom(config.limits, config.retention),
    membership: { genesis: genesisMembership(config), checkpointInterval: coreConfigFor(config, 0).checkpointInterval },
  });
  const storage = ReplicaStorage.open({ dir: join(temp.dir, "data"), sync: "normal", cluster: config.name, replica: 0, log, metrics });
  const mesh = new PeerMesh({
    self: 0,
    key,
    replicas: config.replicas,
    frameBytesMax: config.limits.frameBytesMax,
    log,
    metrics,
    onMessage: () => {},
  });
  const driver = new OrderingDriver({
    config,
    id: 0,
    key,
    log,
    metrics,
    mesh,
    machine,
    storage,
    onDecided: () => {},
    onResendReply: () => {},
    onRefused: () => {},
  });
  try {
    // Replica 3 sends large messages tagged with the next epoch while no change is decided.
    const junk = encodeEnvelope("ordering", new Uint8Array(64 * 1024), 1);
    for (let i = 0; i < 100; i++) driver.onPeerMessage(3, junk);
    expect(metrics.get("peer_messages_other_epoch_total")).toBe(100);
    expect(log.lines.some((l) => l.msg === "peer message of another epoch refused")).toBe(true);
  } finally {
    driver.stop();
    mesh.stop();
    storage.close();
  }
});
