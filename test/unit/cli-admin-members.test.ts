/**
 * `fitb admin add-replica` (src/cli/commands/admin-members.ts) checks --host as the cluster
 * file does before it sends anything: the replicas check an address's shape only, and one
 * the file refuses (10.0.1.256) made every later `fitb cluster export` fail.
 */
import { describe, expect, test } from "bun:test";
import { parseArgs } from "../../src/cli/args.ts";
import { MEMBERSHIP_FLAG_SPECS, membershipCmd } from "../../src/cli/commands/admin-members.ts";
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
