/**
 * The cluster file digests a replica sends in its peer HELLO (src/config/digest.ts): the
 * `group` section of a file of epoch 0 is what it has always been (a golden value, so a
 * running cluster's replicas keep accepting each other across an upgrade), and a file
 * `fitb cluster export` wrote at a later epoch sends the same section through its
 * `first_group_digest`, whatever its ids.
 */
import { describe, expect, test } from "bun:test";
import { type ClusterConfig, parseClusterConfig } from "../../src/config/cluster.ts";
import { configDifferences, configDigests, fileGroupDigest, withoutAddresses } from "../../src/config/digest.ts";
import { renderClusterToml } from "../../src/config/init.ts";
import { SigningKey } from "../../src/crypto/keys.ts";

/** Keys from fixed seeds: the same file at every run. */
const keys = Array.from({ length: 6 }, (_, i) => SigningKey.fromSeed(new Uint8Array(32).fill(i + 1)).publicKey);

function file(ids: readonly number[], later?: { epoch: number; firstGroupDigest: Uint8Array }): ClusterConfig {
  const text = renderClusterToml({
    name: "golden",
    f: 1,
    replicas: ids.map((id) => ({ id, host: "127.0.0.1", port: 7100 + id, publicKey: keys[id] as Uint8Array })),
    adminKeys: [keys[5] as Uint8Array],
    clientKeys: [],
    ...(later === undefined ? {} : { later }),
  });
  const parsed = parseClusterConfig(text, "/nonexistent/cluster.toml");
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.errors));
  return parsed.config;
}

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString("hex");

describe("config digests", () => {
  test("a file of ids 0..3 has the group digest it had before ids could have gaps", () => {
    expect(hex(configDigests(file([0, 1, 2, 3])).group)).toBe("6381a5282440f690824d211424b34c37cdba7fa2e0daa5beaf40d1dfb939582d");
    expect(hex(configDigests(file([0, 1, 2, 3])).admins)).toBe("77150030b92d16364d6c476ae53021ebc479c5ae02cf7bfcd6d49899749ddab7");
  });

  test("a file of a later epoch with a gap sends the first group's digest; without it, its own group differs", () => {
    const first = file([0, 1, 2, 3]);
    const gapped = file([0, 2, 3, 4], { epoch: 2, firstGroupDigest: fileGroupDigest(first) });
    // It names no first-group addresses (it does not list them): the handshake compares the rest.
    expect(configDigests(gapped)).toEqual(withoutAddresses(configDigests(first)));
    expect(configDifferences(configDigests(gapped), configDigests(first))).toEqual([]);
    expect(hex(fileGroupDigest(gapped))).not.toBe(hex(fileGroupDigest(first)));
    // A file of epoch 0 with a gap (a cluster that started so) is its own first group.
    expect(configDigests(file([0, 2, 3, 4])).group).toEqual(fileGroupDigest(gapped));
  });
});
