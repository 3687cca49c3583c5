/**
 * `fitb admin add-replica` (src/cli/commands/admin-members.ts) checks --host as the cluster
 * file does before it sends anything: the replicas check an address's shape only, and one
 * the file refuses (10.0.1.256) made every later `fitb cluster export` fail.
 */
import { describe, expect, test } from "bun:test";
import { parseArgs } from "../../src/cli/args.ts";
import { MEMBERSHIP_FLAG_SPECS, membershipCmd, withFirstGroup } from "../../src/cli/commands/admin-members.ts";
import { adminCmdSchema } from "../../wire/schemas.ts";
import { UsageError } from "../../src/cli/errors.ts";
import { formatPublicKey, SigningKey } from "../../src/crypto/keys.ts";

const replicaKey = formatPublicKey(SigningKey.generate().publicKey);

function addReplica(host: string) {
  const args = parseArgs(["--id", "4", "--host", host, "--port", "7104", "--replica-key", replicaKey], {
    flags: MEMBERSHIP_FLAG_SPECS,
    positionals: [],
  });
  return membershipCmd("add-replica", undefined, args);
}

describe("admin add-replica --host", () => {
  test("takes what a cluster file takes", () => {
    for (const host of ["10.0.1.255", "replica-4.example.net", "fd00::4"]) {
      expect(addReplica(host)).toMatchObject({ t: "add-replica", id: 4, host, port: 7104 });
    }
  });

  test("refuses what a cluster file refuses, before anything is sent", () => {
    for (const host of ["10.0.1.256", "[fd00::4]", "two words", "-leading-dash"]) {
      expect(() => addReplica(host)).toThrow(UsageError);
    }
    expect(() => addReplica("10.0.1.256")).toThrow(
      '--host: expected a hostname, an IPv4 address or an IPv6 address (without brackets), got "10.0.1.256"',
    );
  });
});

describe("the first group's addresses go with a membership command from a file of epoch 0", () => {
  const replicas = [
    { id: 0, host: "10.0.0.1", port: 7000, peerPort: 7010 },
    { id: 1, host: "r1.internal", port: 7001, peerPort: null },
  ];

  test("an epoch 0 file: `first` lists its replicas' ids and addresses", () => {
    const cmd = withFirstGroup(addReplica("10.0.1.4"), { epoch: 0, replicas });
    expect(cmd).toMatchObject({
      t: "add-replica",
      first: [
        { id: 0, host: "10.0.0.1", port: 7000, peerPort: 7010 },
        { id: 1, host: "r1.internal", port: 7001 },
      ],
    });
    // And the wire takes it, as every replica of this version decodes it.
    expect(adminCmdSchema.safeParse(cmd).success).toBe(true);
  });

  test("a file exported at a later epoch sends none; channel commands never carry it", () => {
    const later = { epoch: 2, replicas };
    expect("first" in withFirstGroup(addReplica("10.0.1.4"), later)).toBe(false);
    const create = { t: "create-channel", tag: "a.b", fault: "crash", order: "none", priority: "low", public: true } as const;
    expect(withFirstGroup(create, { epoch: 0, replicas })).toBe(create);
  });
});
