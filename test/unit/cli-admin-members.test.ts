/**
 * `fitb admin add-replica` (src/cli/commands/admin-members.ts) checks --host as the cluster
 * file does before it sends anything: the replicas check an address's shape only, and one
 * the file refuses (10.0.1.256) made every later `fitb cluster export` fail. `set-f` with
 * an F below the group's f (or a pending change's) asks for --yes, as destroy-channel does.
 */
import { describe, expect, test } from "bun:test";
import type { MembersListing } from "../../src/client/queries.ts";
import { parseArgs } from "../../src/cli/args.ts";
import { adminCommand, parseAction } from "../../src/cli/commands/admin.ts";
import {
  checkMembershipQuorum,
  checkSetF,
  lowerFRefusal,
  MEMBERSHIP_FLAG_SPECS,
  MEMBERSHIP_HELP,
  membershipCmd,
  quorumRefusal,
  unorderedCopiesWarning,
} from "../../src/cli/commands/admin-members.ts";
import { CommandError, UsageError } from "../../src/cli/errors.ts";
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

/** A members listing of n=4 replicas with this f, and a pending change's f when given. */
function listing(f: number, pendingF: number | null = null): MembersListing {
  const group = { epoch: 0, f, members: [], digest: new Uint8Array(32) };
  return { ...group, pending: pendingF === null ? null : { ...group, epoch: 1, f: pendingF, from: 128 } };
}

describe("admin set-f: lowering f asks for --yes", () => {
  const parse = (argv: string[]) => parseAction(parseArgs(["--config", "c.toml", "--key", "a.key", ...argv], adminCommand));

  test("set-f, add-replica and remove-replica take --yes; rotate-replica-key does not", () => {
    expect(parse(["set-f", "0", "--yes"])).toEqual({ t: "change", cmd: { t: "set-f", f: 0 }, yes: true });
    expect(parse(["set-f", "0"])).toEqual({ t: "change", cmd: { t: "set-f", f: 0 }, yes: false });
    expect(parse(["remove-replica", "--id", "3", "--yes"])).toEqual({ t: "change", cmd: { t: "remove-replica", id: 3 }, yes: true });
    expect(() => parse(["rotate-replica-key", "--id", "3", "--replica-key", replicaKey, "--yes"])).toThrow(
      "--yes does not apply to rotate-replica-key",
    );
  });

  test("an F below the group's f is refused, saying what is lost and how to go on", () => {
    expect(lowerFRefusal(listing(1), 0)).toBe(
      "set-f 0 lowers f: the group would tolerate 0 faults instead of 1 (clients would accept what 1 matching replica says instead of 2). Run again with --yes to lower f (set-f 0 --yes)",
    );
    expect(lowerFRefusal(listing(2), 1)).toContain("the group would tolerate 1 fault instead of 2");
    // Below the current f with a pending change: both are said.
    expect(lowerFRefusal(listing(1, 0), 0)).toContain(
      "instead of 1 (clients would accept what 1 matching replica says instead of 2; a pending change sets f = 0)",
    );
  });

  test("an F below a pending change's f would undo it: refused too", () => {
    expect(lowerFRefusal(listing(1, 2), 1)).toBe(
      "set-f 1 lowers the f of the pending change (effective after seq 128): the group would tolerate 1 fault instead of 2 once it takes effect (clients would accept what 2 matching replicas say instead of 3). Run again with --yes to lower f (set-f 1 --yes)",
    );
  });

  test("raising f or keeping it asks nothing", () => {
    expect(lowerFRefusal(listing(1), 1)).toBeNull();
    expect(lowerFRefusal(listing(1), 2)).toBeNull();
    expect(lowerFRefusal(listing(0, 1), 1)).toBeNull();
    expect(lowerFRefusal(listing(1, 2), 2)).toBeNull();
  });

  test("checkSetF reads the group the replicas agree on, and with --yes asks nothing at all", async () => {
    let reads = 0;
    const client = {
      members: async (): Promise<MembersListing> => {
        reads++;
        return listing(1);
      },
    };
    await expect(checkSetF(client, 0, false)).rejects.toThrow(CommandError);
    await expect(checkSetF(client, 0, false)).rejects.toThrow("Run again with --yes");
    expect(reads).toBe(2);
    await checkSetF(client, 2, false);
    expect(reads).toBe(3);
    await checkSetF(client, 0, true);
    expect(reads).toBe(3);
  });

  test("the help says lowering f needs --yes", () => {
    expect(MEMBERSHIP_HELP.join("\n")).toContain(
      "Lowering f (an F below the\n                               group's f, or a pending change's) asks for --yes.",
    );
    expect(adminCommand.flags.find((flag) => flag.name === "yes")?.description).toContain("set-f: lower f");
  });
});

/** A group of these member ids with f = 1 (and a pending group of other ids when given). */
function group(ids: number[], pendingIds: number[] | null = null): MembersListing {
  const members = (list: number[]) =>
    list.map((id) => ({ id, host: "127.0.0.1", port: 7100 + id, peerPort: null, key: new Uint8Array(32) }));
  const base = { epoch: 3, f: 1, members: members(ids), digest: new Uint8Array(32) };
  return { ...base, pending: pendingIds === null ? null : { ...base, epoch: 4, members: members(pendingIds), from: 512 } };
}

describe("admin add-replica and remove-replica: a group without a running quorum asks for --yes", () => {
  test("the operator trial's sequence: two added replicas not started yet, then a removal, is refused at the removal", () => {
    const running = [0, 2, 3, 4];
    // Adding 1 to 0, 2, 3, 4: n=5, quorum 4, 4 run.
    expect(
      quorumRefusal(group([0, 2, 3, 4]), { t: "add-replica", id: 1, host: "h", port: 1, key: new Uint8Array(32) }, running),
    ).toBeNull();
    // Adding 6 on top of that pending group: n=6, quorum 4, 4 run.
    expect(
      quorumRefusal(
        group([0, 2, 3, 4], [0, 1, 2, 3, 4]),
        { t: "add-replica", id: 6, host: "h", port: 1, key: new Uint8Array(32) },
        running,
      ),
    ).toBeNull();
    // Removing 4 on top of that: n=5, quorum 4, and only 0, 2, 3 run.
    expect(quorumRefusal(group([0, 2, 3, 4], [0, 1, 2, 3, 4, 6]), { t: "remove-replica", id: 4 }, running)).toBe(
      "removing replica 4 (on top of the pending change) makes a group of n=5, f=1, whose quorum is 4 replicas, and 3 of its members run now (0, 2, 3; not reached: 1, 6): ordering would stop until 1 more of them start. Start them first, or run again with --yes",
    );
  });

  test("checkMembershipQuorum asks the group, refuses without --yes, and asks nothing with it or for other commands", async () => {
    let reads = 0;
    const client = {
      members: async (): Promise<MembersListing> => {
        reads++;
        return group([0, 1, 2, 3]);
      },
      waitForSessions: async (): Promise<void> => undefined,
      readyReplicas: (): number[] => [0, 1],
    };
    await expect(checkMembershipQuorum(client, { t: "remove-replica", id: 3 }, false)).rejects.toThrow(CommandError);
    expect(reads).toBeGreaterThan(0);
    const before = reads;
    await checkMembershipQuorum(client, { t: "remove-replica", id: 3 }, true);
    await checkMembershipQuorum(client, { t: "set-f", f: 1 }, false);
    expect(reads).toBe(before);
  });

  test("a replica added by a pending change, or the one being added, counts as running when its port takes a connection", async () => {
    const listener = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data: () => undefined } });
    try {
      const members = (list: { id: number; port: number }[]) =>
        list.map(({ id, port }) => ({ id, host: "127.0.0.1", port, peerPort: null, key: new Uint8Array(32) }));
      const current = members([0, 1, 2, 3].map((id) => ({ id, port: 1 })));
      // Replica 4, added by the pending change, runs (its port listens); 0 and 1 are reached by session, 2 and 3 not.
      const pending = [...current, ...members([{ id: 4, port: listener.port }])];
      const client = {
        members: async (): Promise<MembersListing> => ({
          epoch: 1,
          f: 1,
          members: current,
          digest: new Uint8Array(32),
          pending: { epoch: 2, f: 1, members: pending, digest: new Uint8Array(32), from: 256 },
        }),
        waitForSessions: async (): Promise<void> => undefined,
        readyReplicas: (): number[] => [0, 1, 2],
      };
      // Removing 3 from 0..4: n=4, quorum 3; 0, 1, 2 by session and 4 by its port.
      await checkMembershipQuorum(client, { t: "remove-replica", id: 3 }, false);
      // Adding 5 whose port listens too: n=6, quorum 4; 0, 1, 2, 4, 5.
      await checkMembershipQuorum(
        client,
        { t: "add-replica", id: 5, host: "127.0.0.1", port: listener.port, key: new Uint8Array(32) },
        false,
      );
      // With nothing on 4's and 5's ports (port 1), they are not counted: adding 5 is refused.
      const closed = { ...client, members: async (): Promise<MembersListing> => ({ ...(await client.members()), pending: null }) };
      await expect(
        checkMembershipQuorum(
          { ...closed, readyReplicas: () => [0, 1] },
          { t: "add-replica", id: 5, host: "127.0.0.1", port: 1, key: new Uint8Array(32) },
          false,
        ),
      ).rejects.toThrow("not reached: 2, 3, 5");
    } finally {
      listener.stop(true);
    }
  });
});

describe("admin remove-replica: unordered channels' events are not copied to the replicas that stay", () => {
  test("warned of when an unordered channel holds events, naming it; not for total-order channels or empty ones", () => {
    const channel = (tag: string, order: "none" | "total", events: number | null) => ({
      tag,
      fault: "crash" as const,
      order,
      reportedEventsMax: events,
    });
    expect(
      unorderedCopiesWarning([channel("sec.alerts", "total", 500), channel("net.empty", "none", 0), channel("net.x", "none", null)], 2),
    ).toBeNull();
    const warning = unorderedCopiesWarning([channel("net.links", "none", 40), channel("sec.alerts", "total", 500)], 2);
    expect(warning).toStartWith("warning: the events of unordered channels (net.links (crash/none)) that replica 2 stores are not copied");
    expect(warning).toContain("removing those replicas one after another, as replacing hosts does, loses it");
    const many = Array.from({ length: 7 }, (_, i) => channel(`u.${i}`, "none", 1));
    expect(unorderedCopiesWarning(many, 0)).toContain("u.4 (crash/none) and 2 more)");
  });
});
