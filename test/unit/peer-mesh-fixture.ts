/**
 * Test helpers for peer meshes over real loopback TCP: a replica's PeerMesh and listener
 * (ReplicaServer) on a free port, recording the messages it receives.
 */
import { freePortRange } from "../integration/harness.ts";
import type { ReplicaEntry } from "../../src/config/cluster.ts";
import type { SigningKey } from "../../src/crypto/keys.ts";
import { createLog } from "../../src/replica/log.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import { PeerMesh } from "../../src/replica/peers.ts";
import { ReplicaServer } from "../../src/replica/server.ts";
import { FRAME_BYTES_MAX } from "../../wire/types.ts";

const HOST = "127.0.0.1";

/** A port nothing listens on now, in this test process's lane (harness.ts freePortRange). */
export function freePort(): number {
  return freePortRange(1);
}

export function entry(id: number, key: SigningKey, port: number): ReplicaEntry {
  return {
    id,
    host: HOST,
    hosts: [],
    port,
    peerPort: null,
    publicKey: key.publicKey,
    publicKeyText: key.publicKeyText,
    keyFile: "",
    dataDir: "",
  };
}

export interface MeshNode {
  readonly mesh: PeerMesh;
  readonly metrics: Metrics;
  readonly received: { from: number; text: string }[];
  /** What the node logged at warn and error, parsed. */
  readonly logged: Record<string, unknown>[];
  stop(): void;
}

/**
 * A replica's mesh and listener: `self` with `key`, starting from the group `replicas`
 * (`retiredQuorum`: the mesh's option of that name). Stop it when done.
 */
export function startNode(
  self: number,
  key: SigningKey,
  port: number,
  replicas: readonly ReplicaEntry[],
  more: { readonly retiredQuorum?: number } = {},
): MeshNode {
  const metrics = new Metrics();
  const received: { from: number; text: string }[] = [];
  const logged: Record<string, unknown>[] = [];
  const log = createLog({ replica: self }, "warn", (line) => logged.push(JSON.parse(line) as Record<string, unknown>));
  const quorum = more.retiredQuorum;
  const mesh = new PeerMesh({
    self,
    key,
    replicas,
    frameBytesMax: FRAME_BYTES_MAX,
    log,
    metrics,
    onMessage: (from, msg) => received.push({ from, text: new TextDecoder().decode(msg) }),
    ...(quorum === undefined ? {} : { retiredQuorum: () => quorum }),
  });
  const server = new ReplicaServer({
    self,
    host: HOST,
    port,
    key,
    frameBytesMax: FRAME_BYTES_MAX,
    mesh,
    clients: { onClientFrame() {}, onClientClosed() {} },
    log,
    metrics,
  });
  server.listen();
  mesh.start();
  let stopped = false;
  return {
    mesh,
    metrics,
    received,
    logged,
    stop: () => {
      if (stopped) return;
      stopped = true;
      mesh.stop();
      server.stop();
    },
  };
}

export const up = (node: MeshNode, peer: number): boolean => node.mesh.status().find((link) => link.id === peer)?.up === true;
export const send = (node: MeshNode, to: number, text: string): boolean => node.mesh.send(to, new TextEncoder().encode(text));
export const got = (node: MeshNode, from: number, text: string): boolean => node.received.some((m) => m.from === from && m.text === text);
