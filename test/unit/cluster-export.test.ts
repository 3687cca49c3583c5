/**
 * `fitb cluster export` (src/cli/commands/cluster-export.ts): the group the replicas agree
 * on, written in the cluster file format, keeping everything else from the file it
 * started from; what it writes parses back to the same group and settings.
 */
import { describe, expect, test } from "bun:test";
import { exportClusterToml } from "../../src/cli/commands/cluster-export.ts";
import type { MembersListing } from "../../src/client/queries.ts";
import { type ClusterConfig, parseClusterConfig } from "../../src/config/cluster.ts";
import { configDigests, fileGroupDigest, withoutAddresses } from "../../src/config/digest.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { formatPublicKey } from "../../src/crypto/keys.ts";

const keys = Array.from({ length: 9 }, () => SigningKey.generate().publicKey);
const DIR = "/srv/fitb";

function parse(text: string, dir = DIR): ClusterConfig {
  const parsed = parseClusterConfig(text, `${dir}/cluster.toml`);
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.errors));
  return parsed.config;
}

/** A hand-written file with non-default limits, retention, paths, further addresses and client keys. */
const original = parse(
  [
    'name = "prod"',
    "f = 1",
    `admin_keys = ["${formatPublicKey(keys[6] as Uint8Array)}"]`,
    `client_keys = ["${formatPublicKey(keys[7] as Uint8Array)}"]`,
    ...[0, 1, 2, 3].flatMap((id) => [
      "[[replicas]]",
      `id = ${id}`,
      `host = "10.0.0.${id + 1}"`,
      ...(id === 0 ? ['hosts = ["10.1.0.1"]'] : []),
      "port = 7100",
      "peer_port = 7200",
      `key = "${formatPublicKey(keys[id] as Uint8Array)}"`,
      ...(id === 1 ? ['key_file = "secrets/r1.key"', 'data_dir = "/var/lib/fitb/r1"'] : []),
    ]),
    "[limits]",
    "event_bytes_max = 4096",
    "client_inflight_requests_max = 7",
    "[retention]",
    "events_max = 1234",
  ].join("\n"),
);

const member = (id: number, host: string, key = keys[id] as Uint8Array) => ({ id, host, port: 7100, peerPort: 7200, key });

function listing(members: MembersListing["members"], f = 1): MembersListing {
  return { epoch: 3, f, members, digest: new Uint8Array(32), pending: null };
}

describe("cluster export", () => {
  test("the group's members, keys and f; the file's name, keys, limits, retention, paths and further addresses", () => {
    // Replica 2 got a new key, replica 3 moved, replica 4 was added.
    const group = listing([
      member(0, "10.0.0.1"),
      member(1, "10.0.0.2"),
      member(2, "10.0.0.3", keys[5]),
      member(3, "10.0.0.9"),
      member(4, "10.0.0.5", keys[4]),
    ]);
    const text = exportClusterToml(original, group, DIR);
    expect(text).toStartWith("# Exported from the running group: epoch 3, n=5, f=1.");
    const exported = parse(text);
    expect(exported.replicas.map((r) => [r.id, r.host, r.port, r.peerPort, r.publicKeyText])).toEqual(
      group.members.map((m) => [m.id, m.host, 7100, 7200, formatPublicKey(m.key)]),
    );
    expect(exported.replicas[0]?.hosts).toEqual(["10.1.0.1"]);
    expect(exported.replicas[3]?.hosts).toEqual([]);
    expect(exported.replicas[1]?.keyFile).toBe(`${DIR}/secrets/r1.key`);
    expect(exported.replicas[1]?.dataDir).toBe("/var/lib/fitb/r1");
    expect(exported.replicas[4]?.keyFile).toBe(`${DIR}/replica-4.key`);
    expect({ ...exported, replicas: [], n: 0, epoch: 0, firstGroupDigest: null as Uint8Array | null }).toEqual({
      ...original,
      replicas: [],
      n: 0,
    });
    // A file of epoch 3: it says so, and names the group the cluster started with.
    expect(exported.epoch).toBe(3);
    expect(exported.firstGroupDigest).toEqual(fileGroupDigest(original));
    // Written for another directory, the paths under the first stay the same files.
    const elsewhere = parse(exportClusterToml(original, group, "/etc/fitb"), "/etc/fitb");
    expect(elsewhere.replicas[1]?.keyFile).toBe(`${DIR}/secrets/r1.key`);
    // And exporting the exported file gives the same text.
    expect(exportClusterToml(exported, group, DIR)).toBe(text);
  });

  test("a new f is written", () => {
    const group = listing(
      [0, 1, 2, 3, 4, 5, 6].map((id) => member(id, `10.0.0.${id + 1}`, keys[id === 6 ? 8 : id])),
      2,
    );
    expect(parse(exportClusterToml(original, group, DIR)).f).toBe(2);
  });

  test("a group with a gap in its ids (a replaced host) is written with its ids; it parses back, and its replicas send the first group's digest", () => {
    // Replica 4 added, replica 1 removed: ids 0, 2, 3, 4.
    const group = listing([member(0, "10.0.0.1"), member(2, "10.0.0.3"), member(3, "10.0.0.4"), member(4, "10.0.0.5", keys[4])]);
    const text = exportClusterToml(original, group, DIR);
    expect(text).toContain("\nepoch = 3\n");
    const exported = parse(text);
    expect(exported.replicas.map((r) => r.id)).toEqual([0, 2, 3, 4]);
    expect(exported.n).toBe(4);
    expect(exported.replicas.map((r) => r.publicKeyText)).toEqual([0, 2, 3, 4].map((id) => formatPublicKey(keys[id] as Uint8Array)));
    // Kept paths follow the id, not the place in the list.
    expect(exported.replicas[1]?.keyFile).toBe(`${DIR}/replica-2.key`);
    // The handshake's group section is the cluster's first group, whichever file a replica runs with.
    expect(configDigests(exported)).toEqual(withoutAddresses(configDigests(original)));
    // Exported again from the exported file (the group moved on to epoch 5): the same first group.
    const again = parse(exportClusterToml(exported, { ...group, epoch: 5 }, DIR));
    expect(again.epoch).toBe(5);
    expect(configDigests(again)).toEqual(withoutAddresses(configDigests(original)));
    expect(exportClusterToml(exported, group, DIR)).toBe(text);
  });

  test("at epoch 0 (nothing changed yet) the file is the first group's: no epoch lines, the same digests", () => {
    const group = { ...listing([0, 1, 2, 3].map((id) => member(id, `10.0.0.${id + 1}`))), epoch: 0 };
    const text = exportClusterToml(original, group, DIR);
    expect(text).not.toContain("epoch =");
    expect(text).not.toContain("first_group_digest");
    const exported = parse(text);
    expect([exported.epoch, exported.firstGroupDigest]).toEqual([0, null]);
    expect(configDigests(exported)).toEqual(configDigests(original));
  });
});
