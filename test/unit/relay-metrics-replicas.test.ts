// The relay's replica_up (src/relay/metrics.ts) follows the group its client follows: a
// replica removed from the group loses its series, one added gets its own.
import { describe, expect, test } from "bun:test";
import { RelayMetrics, type RelayState } from "../../src/relay/metrics.ts";

type Replicas = RelayState["replicas"];

function relayWith(replicas: () => Replicas): RelayMetrics {
  return new RelayMetrics(() => ({ connections: 0, subscriptions: 0, publishers: 0, publishBytesHeld: 0, replicas: replicas() }));
}

async function replicaUp(metrics: RelayMetrics): Promise<string[]> {
  const text = await metrics.registry.text();
  return text.split("\n").filter((line) => line.startsWith("fitb_relay_replica_up{"));
}

describe("relay replica_up", () => {
  test("a replica removed from the group loses its series; one added gets its own", async () => {
    let replicas: Replicas = [0, 1, 2, 3].map((id) => ({ id, state: "ready" }));
    const metrics = relayWith(() => replicas);
    expect(await replicaUp(metrics)).toEqual([
      'fitb_relay_replica_up{replica="0"} 1',
      'fitb_relay_replica_up{replica="1"} 1',
      'fitb_relay_replica_up{replica="2"} 1',
      'fitb_relay_replica_up{replica="3"} 1',
    ]);
    // remove-replica --id 1: the client's group no longer has it (its connection is closed).
    replicas = [0, 2, 3].map((id) => ({ id, state: "ready" }));
    expect(await replicaUp(metrics)).toEqual([
      'fitb_relay_replica_up{replica="0"} 1',
      'fitb_relay_replica_up{replica="2"} 1',
      'fitb_relay_replica_up{replica="3"} 1',
    ]);
    // add-replica: id 4 joins, its session not up yet; then up.
    replicas = [...replicas, { id: 4, state: "connecting" }];
    expect(await replicaUp(metrics)).toContain('fitb_relay_replica_up{replica="4"} 0');
    replicas = replicas.map((replica) => ({ id: replica.id, state: "ready" }));
    const after = await replicaUp(metrics);
    expect(after).toContain('fitb_relay_replica_up{replica="4"} 1');
    expect(after.some((line) => line.includes('replica="1"'))).toBe(false);
  });

  test("a member whose session is down stays, at 0; a removed id that comes back gets a series again", async () => {
    let replicas: Replicas = [
      { id: 0, state: "ready" },
      { id: 1, state: "waiting" },
    ];
    const metrics = relayWith(() => replicas);
    expect(await replicaUp(metrics)).toEqual(['fitb_relay_replica_up{replica="0"} 1', 'fitb_relay_replica_up{replica="1"} 0']);
    replicas = [{ id: 0, state: "ready" }];
    expect(await replicaUp(metrics)).toEqual(['fitb_relay_replica_up{replica="0"} 1']);
    // A replaced replica (new key or address) keeps its id: the group lists it again.
    replicas = [
      { id: 0, state: "ready" },
      { id: 1, state: "ready" },
    ];
    expect(await replicaUp(metrics)).toEqual(['fitb_relay_replica_up{replica="0"} 1', 'fitb_relay_replica_up{replica="1"} 1']);
  });
});
