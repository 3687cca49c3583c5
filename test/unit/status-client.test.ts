// `fitb admin status` and `fitb top` judge the replica group the replicas agree on, not the
// cluster file's (src/cli/commands/status-client.ts): the first report waits for the
// client's first read of the group; when no group can be read, the report judges the
// file's replicas and says so; when the group read differs from the cluster file, a
// warning says how. Driven against a fake client.
import { describe, expect, test } from "bun:test";
import { type ClusterStatus, type MembershipState, summarizeStatus } from "../../src/client/client.ts";
import { DEFAULT_TIMEOUTS } from "../../src/client/options.ts";
import type { EachAnswer, GroupListing, ReplicaStatusAnswer } from "../../src/client/queries.ts";
import {
  beginGroupRead,
  downReasons,
  groupReadProblem,
  groupUnread,
  readStatusReport,
  type StatusSource,
} from "../../src/cli/commands/status-client.ts";
import { STATUS_DEGRADED, STATUS_NO_QUORUM, STATUS_OK, statusJsonReport } from "../../src/cli/commands/status-report.ts";
import { type ClusterConfig, parseClusterConfig } from "../../src/config/cluster.ts";
import { renderClusterToml } from "../../src/config/init.ts";
import { formatPublicKey, SigningKey } from "../../src/crypto/keys.ts";

/** A client of a cluster file listing replicas 0..3 (f=1), whose read of the group runs `onRead`. */
class FakeClient implements StatusSource {
  config = { name: "unit" } as ClusterConfig;
  readonly timeouts = { ...DEFAULT_TIMEOUTS, queryMs: 60_000 };
  ids = [0, 1, 2, 3];
  f = 1;
  epoch: number | null = null;
  /** The group read, as the client keeps it (MembershipState.group). */
  group: GroupListing | null = null;
  failedReads = 0;
  /** Replicas with a session up (the others refused the connection). */
  up = new Set([0, 1, 2, 3]);
  /** Replicas with a session that answer a status query. */
  answering = new Set([0, 1, 2, 3]);
  reads = 0;

  constructor(private readonly onRead: (fake: FakeClient) => Promise<void>) {}

  get n(): number {
    return this.ids.length;
  }

  get membership(): MembershipState {
    return {
      epoch: this.epoch,
      ids: this.ids,
      f: this.f,
      group: this.group,
      changes: 0,
      refused: 0,
      failedReads: this.failedReads,
      staleFile: false,
      staleFileWarnings: 0,
      notices: 0,
    };
  }

  replicaStates(): { id: number; address: string; state: string; lastError: string | null }[] {
    return this.ids.map((id) => ({
      id,
      address: `127.0.0.1:710${id}`,
      state: this.up.has(id) ? "ready" : "backoff",
      lastError: this.up.has(id) ? null : `replica ${id} (127.0.0.1:710${id}) unreachable: connection refused`,
    }));
  }

  readyReplicas(): number[] {
    return this.ids.filter((id) => this.up.has(id));
  }

  async status(): Promise<ClusterStatus> {
    const answers = new Map<number, EachAnswer<ReplicaStatusAnswer>>();
    for (const id of this.readyReplicas()) {
      if (this.answering.has(id)) answers.set(id, { ok: true, value: { replica: id, view: 0, leader: 0, lastDecided: 9, channels: 1 } });
    }
    const connections = this.replicaStates().map((r) => ({ id: r.id, address: r.address, isReady: r.state === "ready" }));
    return summarizeStatus(this.f, answers, connections);
  }

  refreshMembership(): Promise<void> {
    this.reads++;
    return this.onRead(this);
  }
}

/** After a turn of the event loop, the replicas agree on a group of six: 4 and 5 were added and never started. */
async function addedTwo(fake: FakeClient): Promise<void> {
  await Bun.sleep(0);
  fake.ids = [0, 1, 2, 3, 4, 5];
  fake.epoch = 1;
}

describe("status client: the group judged", () => {
  test("after add-replica of two replicas never started, the report is on n=6: 4 of 6 answered, degraded, exit 1", async () => {
    const fake = new FakeClient(addedTwo);
    beginGroupRead(fake);
    const report = await readStatusReport(fake, 5_000);
    expect(report.n).toBe(6);
    expect(report.groupConfirmed).toBe(true);
    expect(report.answered).toBe(4);
    expect(report.exitCode).toBe(STATUS_DEGRADED);
    expect(report.replicas.filter((r) => !r.up).map((r) => [r.id, r.reason])).toEqual([
      [4, "unreachable: connection refused"],
      [5, "unreachable: connection refused"],
    ]);
    expect(fake.reads).toBe(1);
  });

  test("a client no read was started for reads the group before its first report", async () => {
    const fake = new FakeClient(addedTwo);
    const report = await readStatusReport(fake, 5_000);
    expect(report.n).toBe(6);
    expect(fake.reads).toBe(1);
    // The group known, later reports do not read it again (the client follows it).
    await readStatusReport(fake, 5_000);
    expect(fake.reads).toBe(1);
  });

  test("no group f+1 replicas agree on: judged on the file's replicas, said so, exit 1 though all four answer", async () => {
    const fake = new FakeClient(async (f) => {
      await Bun.sleep(0);
      f.failedReads = 1;
    });
    beginGroupRead(fake);
    const report = await readStatusReport(fake, 5_000);
    expect(report.n).toBe(4);
    expect(report.answered).toBe(4);
    expect(report.groupConfirmed).toBe(false);
    expect(report.exitCode).toBe(STATUS_DEGRADED);
    expect(report.problems[0]).toStartWith(
      "replica group not read (fewer than f+1 replicas of the cluster file sent the same member list): judged on the cluster file's 4 replicas",
    );
    // After a failed read, a report does not wait for (or start) another: the client reads again in the background.
    await readStatusReport(fake, 5_000);
    expect(fake.reads).toBe(1);
  });

  test("fewer than f+1 replicas up: the wait for the group ends without its bound (a read that never ends), no quorum", async () => {
    const fake = new FakeClient(() => new Promise<void>(() => undefined));
    fake.up = new Set([0]);
    beginGroupRead(fake);
    expect(await groupUnread(fake)).toBe("fewer than f+1 replicas are up to send the member list");
    const report = await readStatusReport(fake, 5_000);
    expect(report.exitCode).toBe(STATUS_NO_QUORUM);
    expect(report.groupConfirmed).toBe(false);
  });

  test("why the group is unread, from the membership state", () => {
    expect(groupReadProblem({ epoch: 3, failedReads: 2 }, "timeout", 5_000)).toBeNull();
    expect(groupReadProblem({ epoch: null, failedReads: 0 }, "timeout", 5_000)).toBe("no member list within 5000 ms");
    expect(groupReadProblem({ epoch: null, failedReads: 0 }, "finished", 5_000)).toStartWith(
      "the member list the replicas agree on was not taken",
    );
  });

  test("a cluster file that lists another key for replica 3 than the group read: a warning naming both keys and the fix, exit 0", async () => {
    const keys = [0, 1, 2, 3].map(() => SigningKey.generate().publicKey);
    const wrong = SigningKey.generate().publicKey;
    const fileKeys = keys.map((key, id) => (id === 3 ? wrong : key));
    const text = renderClusterToml({
      name: "unit",
      f: 1,
      replicas: fileKeys.map((publicKey, id) => ({ id, host: "127.0.0.1", port: 7100 + id, publicKey })),
      adminKeys: [SigningKey.generate().publicKey],
      clientKeys: [],
    });
    const parsed = parseClusterConfig(text, "/nonexistent/cluster.toml");
    if (!parsed.ok) throw new Error(JSON.stringify(parsed.errors));
    const members = keys.map((key, id) => ({ id, host: "127.0.0.1", port: 7100 + id, peerPort: null, key }));
    const fake = new FakeClient(async (f) => {
      await Bun.sleep(0);
      f.epoch = 0;
      f.group = { epoch: 0, f: 1, members, digest: new Uint8Array(32) };
    });
    fake.config = parsed.config;
    beginGroupRead(fake);
    const report = await readStatusReport(fake, 5_000);
    expect(report.exitCode).toBe(STATUS_OK);
    expect(report.problems).toEqual([]);
    expect(report.clusterFile?.replicas.map((r) => r.id)).toEqual([3]);
    expect(report.warnings).toHaveLength(1);
    expect(report.warnings[0]).toContain(
      `the file lists replica 3 with key ${formatPublicKey(wrong)}, the group with key ${formatPublicKey(keys[3] as Uint8Array)}`,
    );
    expect(report.warnings[0]).toContain("fitb cluster export");
    expect(statusJsonReport(report).cluster_file).toMatchObject({ matches_group: false, replicas: [{ id: 3 }] });

    // The group unread: nothing to compare the file with (the problem says why already).
    const unread = new FakeClient(async (f) => {
      await Bun.sleep(0);
      f.failedReads = 1;
    });
    unread.config = parsed.config;
    beginGroupRead(unread);
    const judged = await readStatusReport(unread, 5_000);
    expect(judged.clusterFile).toBeNull();
    expect(judged.warnings).toEqual([]);
    expect(statusJsonReport(judged).cluster_file).toBeNull();
  });

  test("a replica with a session that did not answer is 'no answer', whatever its session failed with before", () => {
    const fake = new FakeClient(addedTwo);
    const states = fake.replicaStates();
    const stale = { ...fake, replicaStates: () => states.map((r) => (r.id === 2 ? { ...r, lastError: "replica 2 (x) idle timeout" } : r)) };
    fake.up.delete(3);
    expect(downReasons(stale).get(2)).toBe("no answer");
    expect(downReasons(fake).get(3)).toBe("unreachable: connection refused");
  });
});
