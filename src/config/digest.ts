/**
 * The digest of the part of the cluster file every replica must share. Replicas execute
 * the same decided requests with their own copy of the file: admin keys decide which admin
 * commands run, limits and retention decide what is stored and trimmed. Two replicas with
 * different files would diverge without a word. So a replica sends these digests in its
 * peer HELLO (signed into the handshake transcript) and a peer whose digests differ is
 * refused, the refusal naming the sections that differ.
 *
 * What is left out: key files and data directories (local paths), and hosts and ports but
 * in one case. The first group's hosts and ports (each replica's `host`, `port` and
 * `peer_port`) become part of the replicated group at the first membership change
 * (core/channels/membership.ts, built on genesisMembership from each replica's own file),
 * so files that differ there would make the replicas build different groups and stop as
 * diverged at the next checkpoint. A file of epoch 0 adds their digest (`addrs`), and
 * replicas compare it only while their group is still that first one with no change
 * decided (peers.ts, `firstGroupInUse`): from the first change on, the group's addresses
 * are replicated state, and a file may be edited (a host moved) or exported after a
 * change (first_group_digest), which no longer lists the first group's addresses.
 *
 * The `group` section is the group the cluster started with (epoch 0). A file that
 * `fitb cluster export` wrote after a membership change lists a later epoch's group and
 * carries that first group's digest (`first_group_digest`), so a replica started from it
 * and one started from the cluster's first file send the same section. Since the group
 * is replicated state from then on (src/core/channels/membership.ts), the replicas agree
 * on the current one through their checkpoints, not through their files.
 */
import { type Canonical, encodeCanonical } from "../../wire/canonical.ts";
import type { ConfigDigests } from "../../wire/schemas.ts";
import { bytesEqual } from "../crypto/encoding.ts";
import { sha256 } from "../crypto/hash.ts";
import type { ClusterConfig } from "./cluster.ts";

/** The sections, in the order a difference is reported, with the file's words for them. */
export const CONFIG_SECTIONS: readonly { readonly key: keyof ConfigDigests; readonly name: string }[] = [
  { key: "group", name: "name, f and the replicas' ids and keys of the group the cluster started with" },
  { key: "admins", name: "admin_keys" },
  { key: "clients", name: "client_keys" },
  { key: "limits", name: "[limits]" },
  { key: "retention", name: "[retention]" },
  {
    key: "addrs",
    name: "host, port and peer_port of the first group's replicas (they become the replicated group's at the first membership change)",
  },
];

/**
 * What execution reads of the file, by the file's names for it: what a data directory
 * records and checks at each start (storage/store.ts StoreIdentity.executionConfig), since
 * a replica executes its decided history again with the file it has then. The admin keys,
 * the three limits the channel machine and the membership checks judge commands by
 * (channelsConfigFrom, newViewBytesBound) and retention. The other limits bound clients'
 * sessions and rates at admission, not what a decided command does, so they may change
 * (peers still compare the whole section at the handshake); so may client_keys (who may
 * open a session); the group is replicated state from the start.
 */
export function executionConfigDigests(config: ClusterConfig): Record<string, Uint8Array> {
  const { admins, retention } = configDigests(config);
  const { frameBytesMax, eventBytesMax, batchEventsMax } = config.limits;
  return {
    admin_keys: admins,
    "[limits] frame_bytes_max, event_bytes_max and batch_events_max": sha256(
      encodeCanonical({ frameBytesMax, eventBytesMax, batchEventsMax }),
    ),
    "[retention]": retention,
  };
}

export function configDigests(config: ClusterConfig): ConfigDigests {
  const digest = (value: Canonical): Uint8Array => sha256(encodeCanonical(value));
  const { limits, retention } = config;
  return {
    group: firstGroupDigest(config),
    admins: digest(sortedKeys(config.adminKeys)),
    clients: digest(sortedKeys(config.clientKeys)),
    limits: digest({
      frameBytesMax: limits.frameBytesMax,
      eventBytesMax: limits.eventBytesMax,
      batchEventsMax: limits.batchEventsMax,
      clientInflightRequestsMax: limits.clientInflightRequestsMax,
      connectionSubscriptionsMax: limits.connectionSubscriptionsMax,
      clientEventsPerSecondMax: limits.clientEventsPerSecondMax,
      clientBurstEventsMax: limits.clientBurstEventsMax,
    }),
    retention: digest({ eventsMax: retention.eventsMax, bytesMax: retention.bytesMax, ageSecondsMax: retention.ageSecondsMax }),
    ...(config.firstGroupDigest === null ? { addrs: firstGroupAddressesDigest(config) } : {}),
  };
}

/** What genesisMembership (replica/epochs.ts) takes of a file of epoch 0 besides the ids and keys: each replica's addresses. */
export function firstGroupAddressesDigest(config: Pick<ClusterConfig, "replicas">): Uint8Array {
  return sha256(
    encodeCanonical(
      config.replicas.map((replica) => ({ id: replica.id, host: replica.host, port: replica.port, peerPort: replica.peerPort })),
    ),
  );
}

/** The digests without the first group's addresses: what a replica sends and compares once its group changed. */
export function withoutAddresses(digests: ConfigDigests): ConfigDigests {
  const { addrs: _, ...rest } = digests;
  return rest;
}

/**
 * The `group` digest of the group a file lists: name, f, and the replicas' ids and keys. For
 * a file of epoch 0 this is the cluster's first group digest (what `fitb cluster export`
 * writes as `first_group_digest` into the files of later epochs).
 */
export function fileGroupDigest(config: Pick<ClusterConfig, "name" | "f" | "replicas">): Uint8Array {
  return sha256(
    encodeCanonical({
      name: config.name,
      f: config.f,
      replicas: config.replicas.map((replica) => ({ id: replica.id, key: replica.publicKey })),
    }),
  );
}

/** The digest of the group the cluster started with: the file's own for epoch 0, the one it names for a later epoch. */
export function firstGroupDigest(config: ClusterConfig): Uint8Array {
  return config.firstGroupDigest ?? fileGroupDigest(config);
}

/**
 * The names of the sections whose digests differ; empty when the files agree. A section
 * only one side sends (`addrs`: a file of a later epoch, a group that changed, an earlier
 * version) is not compared.
 */
export function configDifferences(mine: ConfigDigests, theirs: ConfigDigests): string[] {
  return CONFIG_SECTIONS.filter((section) => {
    const a = mine[section.key];
    const b = theirs[section.key];
    return a !== undefined && b !== undefined && !bytesEqual(a, b);
  }).map((section) => section.name);
}

/** Key lists are sets: the order they are written in does not matter. */
function sortedKeys(keys: readonly Uint8Array[]): Uint8Array[] {
  return [...keys].sort((a, b) => Buffer.compare(a, b));
}
