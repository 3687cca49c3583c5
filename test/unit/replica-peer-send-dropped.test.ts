/**
 * A peer message the mesh does not send (its link down, or its queue full) is counted by
 * peer and reason and logged, at most once per interval per peer and reason: nothing is
 * dropped silently. A real mesh, not started (no link is up).
 */
import { afterAll, expect, test } from "bun:test";
import { initCluster } from "../../src/config/init.ts";
import { loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import { PeerMesh } from "../../src/replica/peers.ts";
import { tempDir, testLog } from "./storage-fixtures.ts";

const temp = tempDir("fitb-send-dropped-");
afterAll(() => temp.remove());

test("sends to a peer whose link is down are counted by peer and reason, and logged once per interval", () => {
  const init = initCluster({ dir: temp.dir, replicas: 4, host: "127.0.0.1", basePort: 42_000, name: "unit", overwrite: false });
  const config = init.config;
  const log = testLog();
  const metrics = new Metrics();
  const key = loadSigningKeyFile(init.replicaKeyFiles[0] as string).key;
  const mesh = new PeerMesh({
    self: 0,
    key,
    replicas: config.replicas,
    frameBytesMax: config.limits.frameBytesMax,
    log,
    metrics,
    onMessage: () => {},
  });
  try {
    const msg = new Uint8Array(16);
    for (let i = 0; i < 5; i++) expect(mesh.send(2, msg)).toBe(false);
    expect(mesh.send(3, msg)).toBe(false);
    expect(metrics.peerSendDropped.with("2", "link-down").value).toBe(5);
    expect(metrics.peerSendDropped.with("3", "link-down").value).toBe(1);
    expect(metrics.get("peer_send_dropped_total")).toBe(6);
    const lines = log.lines.filter((l) => l.msg === "peer message not sent");
    expect(lines.map((l) => l.fields)).toEqual([
      { peer: 2, reason: "link-down", alsoSinceLastLine: 0 },
      { peer: 3, reason: "link-down", alsoSinceLastLine: 0 },
    ]);
  } finally {
    mesh.stop();
  }
});
