/**
 * The peer mesh follows the replicated membership (PeerMesh.setGroup), over real loopback
 * TCP: a replica the cluster file does not list is dialled and accepted once the group
 * names it; a rotated key is refused with its reason (counted), while the new key is
 * accepted; a removed replica's links are closed and its handshakes refused.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { TCPSocketListener } from "bun";
import type { ReplicaEntry } from "../../src/config/cluster.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { createLog } from "../../src/replica/log.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import { type AcceptedKey, PeerMesh } from "../../src/replica/peers.ts";
import { ReplicaServer } from "../../src/replica/server.ts";
import { FRAME_BYTES_MAX } from "../../wire/types.ts";
import { waitFor } from "../helpers/wait.ts";

const HOST = "127.0.0.1";
const cleanups: (() => void)[] = [];

afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
});

function freePort(): number {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 20_000);
    let listener: TCPSocketListener<undefined> | null = null;
    try {
      listener = Bun.listen({ hostname: HOST, port, socket: { data() {} } });
      return port;
    } catch {
      // taken: another one
    } finally {
      listener?.stop(true);
    }
  }
  throw new Error("no free port");
}

function entry(id: number, key: SigningKey, port: number): ReplicaEntry {
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

interface Node {
  readonly mesh: PeerMesh;
  readonly metrics: Metrics;
  readonly received: { from: number; text: string }[];
  stop(): void;
}

/** A replica's mesh and listener: `self` with `key`, starting from the group `replicas`. */
function startNode(self: number, key: SigningKey, port: number, replicas: readonly ReplicaEntry[]): Node {
  const metrics = new Metrics();
  const received: { from: number; text: string }[] = [];
  const log = createLog({ replica: self }, "error", () => {});
  const mesh = new PeerMesh({
    self,
    key,
    replicas,
    frameBytesMax: FRAME_BYTES_MAX,
    log,
    metrics,
    onMessage: (from, msg) => received.push({ from, text: new TextDecoder().decode(msg) }),
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
  const stop = () => {
    if (stopped) return;
    stopped = true;
    mesh.stop();
    server.stop();
  };
  cleanups.push(stop);
  return { mesh, metrics, received, stop };
}

const up = (node: Node, peer: number) => node.mesh.status().find((link) => link.id === peer)?.up === true;
const send = (node: Node, to: number, text: string) => node.mesh.send(to, new TextEncoder().encode(text));
const got = (node: Node, from: number, text: string) => node.received.some((m) => m.from === from && m.text === text);
const accepting = (entries: readonly ReplicaEntry[]): AcceptedKey[] => entries.map((e) => ({ id: e.id, key: e.publicKey }));

describe("the peer mesh follows the membership", () => {
  test("a replica added to the group is dialled and accepted with the key the group names", async () => {
    const keys = [SigningKey.generate(), SigningKey.generate(), SigningKey.generate()];
    const ports = [freePort(), freePort(), freePort()];
    const file = [entry(0, keys[0] as SigningKey, ports[0] as number), entry(1, keys[1] as SigningKey, ports[1] as number)];
    const added = entry(2, keys[2] as SigningKey, ports[2] as number);
    const a = startNode(0, keys[0] as SigningKey, ports[0] as number, file);
    const b = startNode(1, keys[1] as SigningKey, ports[1] as number, file);
    const c = startNode(2, keys[2] as SigningKey, ports[2] as number, [...file, added]);
    await waitFor("0 and 1 linked", () => up(a, 1) && up(b, 0));
    // The group without replica 2: its handshakes are refused as not a replica.
    await waitFor("replica 2's handshakes refused", () => a.metrics.get("peer_handshake_failed_total") > 0);
    expect(up(c, 0)).toBe(false);
    expect(a.mesh.status().some((link) => link.id === 2)).toBe(false);

    // add-replica took effect: 0 and 1 dial replica 2 and accept it.
    for (const node of [a, b]) node.mesh.setGroup([...file, added], accepting([...file, added]));
    await waitFor("links between 2 and the others, both ways", () => up(a, 2) && up(b, 2) && up(c, 0) && up(c, 1));
    send(a, 2, "to the new one");
    send(c, 0, "from the new one");
    await waitFor("messages both ways", () => got(c, 0, "to the new one") && got(a, 2, "from the new one"));
    expect(a.metrics.get("peer_handshake_retired_key_total")).toBe(0);
  }, 60_000);

  test("a rotated key: the old one is refused with its reason and counted, the new one accepted", async () => {
    const keys = [SigningKey.generate(), SigningKey.generate()];
    const rotated = SigningKey.generate();
    const ports = [freePort(), freePort()];
    const file = [entry(0, keys[0] as SigningKey, ports[0] as number), entry(1, keys[1] as SigningKey, ports[1] as number)];
    const a = startNode(0, keys[0] as SigningKey, ports[0] as number, file);
    const b = startNode(1, keys[1] as SigningKey, ports[1] as number, file);
    await waitFor("0 and 1 linked", () => up(a, 1) && up(b, 0));

    const next = [file[0] as ReplicaEntry, entry(1, rotated, ports[1] as number)];
    // While the change is pending both keys are accepted: nothing is dropped.
    a.mesh.setGroup(next, [...accepting(file), ...accepting(next)]);
    send(b, 0, "still the old key while pending");
    await waitFor("the old key's session still open while the change is pending", () => got(a, 1, "still the old key while pending"));
    expect(a.metrics.get("peer_handshake_retired_key_total")).toBe(0);

    // The new epoch started: only the new key. The old key's session is closed and its
    // reconnections refused with the reason.
    a.mesh.setGroup(next, accepting(next));
    await waitFor("the old key refused as rotated", () => a.metrics.get("peer_handshake_retired_key_total") > 0);
    expect(up(b, 0)).toBe(false);
    // And replica 0 does not keep a link to the old key's holder.
    expect(up(a, 1)).toBe(false);

    // Replica 1 restarted with its new key: linked again both ways.
    b.stop();
    const b2 = startNode(1, rotated, ports[1] as number, next);
    await waitFor("0 and 1 linked with the new key", () => up(a, 1) && up(b2, 0));
    send(b2, 0, "new key");
    await waitFor("a message under the new key", () => got(a, 1, "new key"));
  }, 60_000);

  test("a removed replica's links are closed, it is no longer dialled, and its handshakes are refused as removed", async () => {
    const keys = [SigningKey.generate(), SigningKey.generate(), SigningKey.generate()];
    const ports = [freePort(), freePort(), freePort()];
    const file = keys.map((key, id) => entry(id, key, ports[id] as number));
    const a = startNode(0, keys[0] as SigningKey, ports[0] as number, file);
    const c = startNode(2, keys[2] as SigningKey, ports[2] as number, file);
    await waitFor("0 and 2 linked", () => up(a, 2) && up(c, 0));
    const rest = file.filter((e) => e.id !== 2);
    a.mesh.setGroup(rest, accepting(rest));
    expect(a.mesh.status().some((link) => link.id === 2)).toBe(false);
    await waitFor("replica 2's handshakes refused as removed", () => a.metrics.get("peer_handshake_retired_key_total") > 0);
    expect(up(c, 0)).toBe(false);
  }, 60_000);
});
