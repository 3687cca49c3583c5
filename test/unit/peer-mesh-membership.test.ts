/**
 * The peer mesh follows the replicated membership (PeerMesh.setGroup), over real loopback
 * TCP: a replica the cluster file does not list is dialled and accepted once the group
 * names it; a rotated key is refused with its reason (counted), while the new key is
 * accepted; a removed replica's links are closed and its handshakes refused.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { ReplicaEntry } from "../../src/config/cluster.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import type { AcceptedKey } from "../../src/replica/peers.ts";
import { waitFor } from "../helpers/wait.ts";
import { entry, freePort, got, type MeshNode, send, startNode as startMeshNode, up } from "./peer-mesh-fixture.ts";

const cleanups: (() => void)[] = [];

afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
});

/** startNode, stopped after the test. */
function startNode(
  self: number,
  key: SigningKey,
  port: number,
  replicas: readonly ReplicaEntry[],
  more: Parameters<typeof startMeshNode>[4] = {},
): MeshNode {
  const node = startMeshNode(self, key, port, replicas, more);
  cleanups.push(node.stop);
  return node;
}

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
    // The group replica 0 follows from its start (the runtime sets it from its state), then the change.
    a.mesh.setGroup(file, accepting(file));
    const rest = file.filter((e) => e.id !== 2);
    a.mesh.setGroup(rest, accepting(rest));
    expect(a.mesh.status().some((link) => link.id === 2)).toBe(false);
    await waitFor("replica 2's handshakes refused as removed", () => a.metrics.get("peer_handshake_retired_key_total") > 0);
    expect(up(c, 0)).toBe(false);
  }, 60_000);

  test("a replica whose key its peers refuse as retired says so once per peer, then once f+1 did, an error; a key only the file named is not called retired", async () => {
    const keys = [0, 1, 2, 3].map(() => SigningKey.generate());
    const ports = [freePort(), freePort(), freePort(), freePort()];
    const file = keys.map((key, id) => entry(id, key, ports[id] as number));
    const rest = file.filter((e) => e.id !== 2);
    const nodes = [0, 1, 3].map((id) => startNode(id, keys[id] as SigningKey, ports[id] as number, file));
    const [a, , d] = nodes as [MeshNode, MeshNode, MeshNode];
    // Replicas 0 and 3 followed a group with replica 2 in it and then one without: it was
    // removed. Replica 1 only ever had the file's word for replica 2 (it may be behind).
    for (const node of [a, d]) node.mesh.setGroup(file, accepting(file));
    for (const node of nodes) node.mesh.setGroup(rest, accepting(rest));
    // Replica 2, down during the removal, starts again: f+1 = 2 peers refuse it as removed.
    const c = startNode(2, keys[2] as SigningKey, ports[2] as number, file, { retiredQuorum: 2 });
    const error = "peers refuse this replica's key: the group removed this replica or rotated its key";
    await waitFor("replica 2 to say its peers refuse it", () => c.logged.some((line) => line["msg"] === error));
    await waitFor("replica 1's refusal", () =>
      c.logged.some(
        (line) =>
          line["msg"] === "peer link failed" && line["peer"] === 1 && String(line["reason"]).includes("key not in this replica's group"),
      ),
    );
    const refusals = c.logged.filter((line) => line["msg"] === "a peer refuses this replica's key: it no longer accepts it");
    expect(Object.fromEntries(refusals.map((line) => [line["peer"], line["reason"]]))).toEqual({
      0: "replica 2 was removed from the group",
      3: "replica 2 was removed from the group",
    });
    expect(c.logged.filter((line) => line["msg"] === error)).toHaveLength(1);
    expect(c.logged.find((line) => line["msg"] === error)).toMatchObject({ level: "error", peers: [0, 3] });
    // Each retired refusal is said once, not as a failed link each time it is dialled.
    expect(c.logged.filter((line) => line["msg"] === "peer link failed" && line["peer"] !== 1)).toEqual([]);
  }, 60_000);
});
