/**
 * A replica joining a running group (src/replica/ordering-driver.ts `recoveredEpoch`) stores
 * the join epoch's start before its core can vote there, so a restart resumes that epoch
 * from its own records (or, when it stopped before it got the state, refuses to run an
 * older epoch's group on them); restarted with the same join before it got the state, it
 * keeps the votes it sent there. A replica stopped between a switch checkpoint and its
 * stored switch is told which case it is in. A real driver, core and store (not started).
 */
import { Database } from "bun:sqlite";
import { afterAll, expect, test } from "bun:test";
import { cpSync } from "node:fs";
import { join } from "node:path";
import { channelsConfigFrom, type ClusterConfig } from "../../src/config/cluster.ts";
import { initCluster } from "../../src/config/init.ts";
import { ChannelMachine } from "../../src/core/channels/machine.ts";
import type { Checkpoint, ClientRequest, PeerMessage, Prepare, PrePrepare } from "../../src/core/ordering/messages.ts";
import { signingBytes, validatePeerMessage } from "../../src/core/ordering/messages.ts";
import { EMPTY_SIG } from "../../src/core/ordering/state.ts";
import { sign } from "../../src/crypto/ed25519.ts";
import { toHex } from "../../src/crypto/encoding.ts";
import { sha256 } from "../../src/crypto/hash.ts";
import { loadSigningKeyFile, type SigningKey } from "../../src/crypto/keys.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import { genesisMembership } from "../../src/replica/epochs.ts";
import { coreConfigFor, type JoinEpoch, OrderingDriver } from "../../src/replica/ordering-driver.ts";
import { encodeEnvelope, readEnvelope } from "../../src/replica/peer-messages.ts";
import { type EpochStart, ReplicaStorage, readJoined } from "../../src/replica/storage/index.ts";
import { STORE_FILE } from "../../src/replica/storage/store.ts";
import type { Canonical } from "../../wire/canonical.ts";
import { type AdminCmd, decodeRequestBody } from "../../wire/schemas.ts";
import { driverFixture } from "./driver-fixture.ts";
import { batchDigest, TestClient, type TestLog, tempDir, testLog } from "./storage-fixtures.ts";

const temp = tempDir("fitb-join-epoch-");
afterAll(() => temp.remove());

test("a joining replica stores its epoch's start; restarted without the group before it got the state, it refuses to run the genesis group", () => {
  const first = driverFixture(temp.dir, 42_000, { membership: true });
  const joinEpoch: JoinEpoch = {
    membership: { ...genesisMembership(first.config), epoch: 3 },
    start: { seq: 4 * coreConfigFor(first.config, 0).checkpointInterval, digest: new Uint8Array(32).fill(7) },
  };
  first.close();

  // Started as a joiner of epoch 3 on this (older) data directory.
  const joiner = driverFixture(temp.dir, 42_000, { membership: true, join: joinEpoch, overwrite: true });
  expect(joiner.driver.epoch.epoch).toBe(3);
  expect(joiner.log.lines.some((l) => l.msg === "joining the group: starting in its current epoch, fetching the state")).toBe(true);
  joiner.close();

  const storage = ReplicaStorage.open({
    dir: join(temp.dir, "data"),
    sync: "normal",
    cluster: joiner.config.name,
    replica: 0,
    log: testLog(),
    metrics: new Metrics(),
  });
  try {
    expect(storage.epochStart()).toEqual({ epoch: 3, ...joinEpoch.start });
  } finally {
    storage.close();
  }

  // Its machine is still at genesis: started without the join (from the file alone), it must not run epoch 0's core.
  expect(() => driverFixture(temp.dir, 42_000, { membership: true, overwrite: true })).toThrow(
    "the data directory stopped while joining epoch 3 before it got the state",
  );
});

// ---------------------------------------------------------------------------------------
// A joiner restarted before it got the state keeps its votes in the join epoch, and a
// replica stopped in the middle of an epoch switch is told which case it is in.
// ---------------------------------------------------------------------------------------

/** The epoch the joiner of these tests joins, and its cluster id (what its signatures bind). */
const JOIN_EPOCH = 3;
const JOIN_CLUSTER_ID = `unit/e${JOIN_EPOCH}`;
/** A backup of view 0 in the join epoch (rank 1: replica 0 leads view 0). */
const JOINER = 1;
const LEADER = 0;

/** A 4-replica cluster written once: restarts reuse its file and keys (driverFixture writes new ones). */
function writeCluster(dir: string, basePort: number): { config: ClusterConfig; keys: SigningKey[] } {
  const init = initCluster({ dir, replicas: 4, host: "127.0.0.1", basePort, name: "unit", overwrite: true });
  return { config: init.config, keys: init.replicaKeyFiles.map((file) => loadSigningKeyFile(file).key) };
}

interface Started {
  readonly driver: OrderingDriver;
  readonly storage: ReplicaStorage;
  readonly log: TestLog;
  readonly metrics: Metrics;
  /** The ordering messages the driver sent, in order. */
  readonly sent: PeerMessage[];
  /** Stops as kill -9 does once what is staged is durable: no clean-stop marker (loseAcceptRecords takes what a pending fsync would lose). */
  crash(): void;
  /** A clean stop (every record durable, the marker written). */
  close(): void;
}

/** Decided admin commands change the group as the replica's execution does (replica.ts executeDecided); nothing else runs. */
function executeMembership(machine: ChannelMachine, requests: readonly ClientRequest[], seq: number): void {
  for (const req of requests) {
    const decoded = decodeRequestBody(req.body);
    if (decoded.ok && decoded.request.op.t === "admin") machine.applyAdmin(decoded.request.op.cmd, seq);
  }
  machine.endOfDecision(seq);
}

/** Replica `id`'s driver on `dir`'s data directory, its peer messages captured rather than sent. */
function startReplica(
  dir: string,
  cluster: { config: ClusterConfig; keys: SigningKey[] },
  id: number,
  joinEpoch?: JoinEpoch,
  onSend?: (msg: PeerMessage, storage: ReplicaStorage) => void,
  /** Every envelope the driver sends, with its destination (state transfer included). */
  onEnvelope?: (to: number, bytes: Uint8Array) => void,
): Started {
  const { config, keys } = cluster;
  const log = testLog();
  const metrics = new Metrics();
  const checkpointInterval = coreConfigFor(config, id).checkpointInterval;
  const machine = new ChannelMachine({
    hash: sha256,
    config: channelsConfigFrom(config.limits, config.retention),
    membership: { genesis: genesisMembership(config), checkpointInterval },
  });
  const storage = ReplicaStorage.open({ dir: join(dir, `data-${id}`), sync: "normal", cluster: config.name, replica: id, log, metrics });
  const sent: PeerMessage[] = [];
  const capture = (bytes: Uint8Array): void => {
    const read = readEnvelope(bytes);
    const msg = read.ok && read.envelope.kind === "ordering" ? validatePeerMessage(read.envelope.message) : null;
    if (msg === null) return;
    sent.push(msg);
    onSend?.(msg, storage);
  };
  const mesh = {
    send: (to: number, bytes: Uint8Array) => {
      onEnvelope?.(to, bytes);
      capture(bytes);
      return true;
    },
    broadcast: capture,
  };
  let driver: OrderingDriver;
  try {
    driver = new OrderingDriver({
      config,
      id,
      key: keys[id] as SigningKey,
      log,
      metrics,
      mesh,
      machine,
      storage,
      onDecided: (requests, seq) => {
        executeMembership(machine, requests, seq);
        return 0;
      },
      onResendReply: () => {},
      onRefused: () => {},
      ...(joinEpoch === undefined ? {} : { join: joinEpoch }),
    });
  } catch (error) {
    storage.close();
    throw error;
  }
  return {
    driver,
    storage,
    log,
    metrics,
    sent,
    crash() {
      driver.stop();
      storage.commits.flush(true);
      storage.store.close();
    },
    close() {
      driver.stop();
      storage.close();
    },
  };
}

/** The join epoch's group (the file's replicas and keys) and its start at the 4th checkpoint. */
function joinEpochOf(config: ClusterConfig): JoinEpoch {
  return {
    membership: { ...genesisMembership(config), epoch: JOIN_EPOCH },
    start: { seq: 4 * coreConfigFor(config, 0).checkpointInterval, digest: new Uint8Array(32).fill(7) },
  };
}

/** The join epoch leader's PRE_PREPARE for `seq` in view 0, proposing one publish of `payload`. */
function proposal(leaderKey: SigningKey, client: TestClient, seq: number, payload: string): Uint8Array {
  const batch = [client.pub("a.b", [payload])];
  const header: PrePrepare = { t: "PRE_PREPARE", view: 0, seq, digest: batchDigest(batch), ts: 1_700_000_000_000, batch, sig: EMPTY_SIG };
  const signed = { ...header, sig: sign(leaderKey, signingBytes(header, JOIN_CLUSTER_ID)) };
  return encodeEnvelope("ordering", signed as unknown as Canonical, JOIN_EPOCH);
}

/** The digests of the PREPAREs `started` sent for `seq`. */
function preparesAt(started: Started, seq: number): string[] {
  return started.sent.filter((m): m is Prepare => m.t === "PREPARE" && m.seq === seq).map((m) => toHex(m.digest));
}

/**
 * Deletes replica `id`'s `accept` records: a kill -9 whose PREPARE left before its accept
 * record's fsync (only the view record, which the PREPARE waits for, is sure to be on disk).
 */
function loseAcceptRecords(dir: string, id: number): void {
  onStore(dir, id, "DELETE FROM core WHERE kind = 'accept'");
}

/** Runs `statement` on replica `id`'s store in `dir` (the replica down): what its disk lost or damaged. */
function onStore(dir: string, id: number, statement: string): void {
  const db = new Database(join(dir, `data-${id}`, STORE_FILE));
  try {
    db.run(statement);
  } finally {
    db.close();
  }
}

/**
 * A joiner votes while it fetches its state (PROTOCOL.md §13: nothing stops a PREPARE
 * before the state is installed), then stops (`stop`: a kill -9 that lost the vote's
 * record, or a clean stop) and starts with the same join: offered a conflicting proposal
 * for the same view and seq, it must not prepare it.
 */
function voteStopAndOfferConflict(stop: "crash" | "clean", basePort: number): { restarted: Started; first: string; seq: number } {
  const dir = join(temp.dir, `vote-${stop}`);
  const cluster = writeCluster(dir, basePort);
  const epoch = joinEpochOf(cluster.config);
  const seq = epoch.start.seq + 1;
  const client = new TestClient();
  const leaderKey = cluster.keys[LEADER] as SigningKey;
  const leaderPub = cluster.config.replicas[LEADER]?.publicKey as Uint8Array;

  const joiner = startReplica(dir, cluster, JOINER, epoch);
  joiner.driver.onPeerMessage(LEADER, proposal(leaderKey, client, seq, "first"), leaderPub);
  joiner.storage.commits.flush(true);
  const first = preparesAt(joiner, seq);
  expect(first.length).toBeGreaterThan(0);
  if (stop === "crash") {
    joiner.crash();
    loseAcceptRecords(dir, JOINER);
  } else joiner.close();

  const restarted = startReplica(dir, cluster, JOINER, epoch);
  restarted.driver.onPeerMessage(LEADER, proposal(leaderKey, client, seq, "second"), leaderPub);
  restarted.storage.commits.flush(true);
  return { restarted, first: first[0] as string, seq };
}

test("a joiner killed after voting (its vote's record lost) before it got its state is fenced in that view when it joins again, and prepares no other proposal there", () => {
  const { restarted, first, seq } = voteStopAndOfferConflict("crash", 42_100);
  try {
    expect(preparesAt(restarted, seq).filter((digest) => digest !== first)).toEqual([]);
    expect(restarted.log.lines.some((l) => l.msg === "restarted without a clean stop: votes fenced")).toBe(true);
  } finally {
    restarted.close();
  }
});

test("a joiner stopped cleanly after voting keeps its vote when it joins again (no fence, its accept record restored)", () => {
  const { restarted, first, seq } = voteStopAndOfferConflict("clean", 42_200);
  try {
    expect(preparesAt(restarted, seq).filter((digest) => digest !== first)).toEqual([]);
  } finally {
    restarted.close();
  }
});

// What a start from the middle of a switch relies on (ordering-driver.ts joinsFromSwitchGap):
// a core's first vote in an epoch waits for its view record, staged after the epoch's start.
test("a joiner's first vote in its epoch goes out only once the record of its join is on disk", () => {
  const dir = join(temp.dir, "vote-after-join-record");
  const cluster = writeCluster(dir, 42_700);
  const epoch = joinEpochOf(cluster.config);
  const seq = epoch.start.seq + 1;
  const joiner = startReplica(dir, cluster, JOINER, epoch);
  try {
    joiner.driver.onPeerMessage(
      LEADER,
      proposal(cluster.keys[LEADER] as SigningKey, new TestClient(), seq, "first"),
      cluster.config.replicas[LEADER]?.publicKey as Uint8Array,
    );
    // A PREPARE sent before the join's record could be followed, after a crash that lost
    // it, by a start that no longer knows it joined, and another PREPARE for the same seq.
    expect(preparesAt(joiner, seq)).toEqual([]);
    joiner.storage.commits.flush(true);
    expect(joiner.storage.epochStart()).toEqual({ epoch: JOIN_EPOCH, ...epoch.start });
    expect(preparesAt(joiner, seq).length).toBeGreaterThan(0);
  } finally {
    joiner.close();
  }
});

test("a joiner refuses an answer that contradicts the join its data directory began: an older epoch, or the same one from another start", () => {
  const dir = join(temp.dir, "contradicting");
  const cluster = writeCluster(dir, 42_300);
  const epoch = joinEpochOf(cluster.config);
  startReplica(dir, cluster, JOINER, epoch).close();

  const older: JoinEpoch = { ...epoch, membership: { ...epoch.membership, epoch: JOIN_EPOCH - 1 } };
  expect(() => startReplica(dir, cluster, JOINER, older)).toThrow(`this data directory began joining epoch ${JOIN_EPOCH}`);
  const elsewhere: JoinEpoch = { ...epoch, start: { ...epoch.start, digest: new Uint8Array(32).fill(8) } };
  expect(() => startReplica(dir, cluster, JOINER, elsewhere)).toThrow(`another start of epoch ${JOIN_EPOCH}`);
  // The epoch's start and the votes' rows are as the first start left them.
  const resumed = startReplica(dir, cluster, JOINER, epoch);
  try {
    expect(resumed.storage.epochStart()).toEqual({ epoch: JOIN_EPOCH, ...epoch.start });
  } finally {
    resumed.close();
  }
});

/**
 * Replica `id`'s (0 by default) decided log up to `upTo`: `set-f` commands at the given seqs (each takes
 * effect at the next checkpoint), publishes elsewhere; and `epochRow` as its epoch record.
 */
function decidedLog(
  dir: string,
  cluster: { config: ClusterConfig },
  setF: ReadonlyMap<number, number | AdminCmd>,
  upTo: number,
  epochRow?: { epoch: number; seq: number; digest: Uint8Array },
  id = 0,
): void {
  const storage = ReplicaStorage.open({
    dir: join(dir, `data-${id}`),
    sync: "normal",
    cluster: cluster.config.name,
    replica: id,
    log: testLog(),
    metrics: new Metrics(),
  });
  const admin = new TestClient();
  const publisher = new TestClient();
  for (let seq = 1; seq <= upTo; seq++) {
    const change = setF.get(seq);
    const batch =
      change === undefined
        ? [publisher.pub("a.b", [`event ${seq}`])]
        : [admin.admin(typeof change === "number" ? { t: "set-f", f: change } : change)];
    storage.persist({ t: "decided", seq, view: 0, digest: batchDigest(batch), batch, commits: [] });
  }
  storage.commits.flush(true);
  if (epochRow !== undefined) storage.store.putMeta("epoch", epochRow);
  storage.close();
}

/** Breaks the checksum of replica 0's epoch record, as damage on disk does. */
function damageEpochRow(dir: string): void {
  onStore(dir, 0, "UPDATE meta SET sum = zeroblob(length(sum)) WHERE k = 'epoch'");
}

test("a replica stopped after executing a switch checkpoint and before storing the switch is told so, with the checkpoint", () => {
  const dir = join(temp.dir, "switch-gap");
  const cluster = writeCluster(dir, 42_400);
  const k = coreConfigFor(cluster.config, 0).checkpointInterval;
  // set-f 0 decided at seq 1 takes effect at the first checkpoint: epoch 1 from k on; no switch stored.
  decidedLog(dir, cluster, new Map([[1, 0]]), k);
  expect(() => startReplica(dir, cluster, 0)).toThrow(
    `the data directory stopped in the middle of the switch to epoch 1: it executed checkpoint ${k}`,
  );
});

/** A replica joining from the middle of its switch whose own state at the checkpoint is not the answer's says so (ordering-driver.ts compareOwnState). */
const OWN_STATE_DIFFERS = "this replica's own state at the epoch's start differs from the group's; the group's replaces it";

test("a replica stopped in the middle of its switch, started with the group's answer naming that epoch from that checkpoint, joins it and fetches the state; an answer from another checkpoint is refused as before", () => {
  const dir = join(temp.dir, "switch-gap-join");
  const cluster = writeCluster(dir, 42_800);
  const k = coreConfigFor(cluster.config, 0).checkpointInterval;
  decidedLog(dir, cluster, new Map([[1, 0]]), k);
  // The same data directory, kept for a join answered with the state it makes.
  const same = join(temp.dir, "switch-gap-join-same");
  cpSync(join(dir, "data-0"), join(same, "data-0"), { recursive: true });
  // The group's answer to a replica restarted with a rotated key (src/cli/join.ts): epoch 1, f = 0 after the set-f.
  const answer = (seq: number): JoinEpoch => ({
    membership: { ...genesisMembership(cluster.config), epoch: 1, f: 0 },
    start: { seq, digest: new Uint8Array(32).fill(7) },
  });
  expect(() => startReplica(dir, cluster, 0, answer(2 * k))).toThrow(
    `the data directory stopped in the middle of the switch to epoch 1: it executed checkpoint ${k}`,
  );
  const joined = startReplica(dir, cluster, 0, answer(k));
  let ownDigest = "";
  try {
    expect(joined.driver.epoch.epoch).toBe(1);
    const said = joined.log.lines.map((l) => l.msg);
    expect(said).toContain("the data directory stopped in the middle of an epoch switch: joining that epoch from the group's answer");
    expect(said).toContain("joining the group: starting in its current epoch, fetching the state");
    // Its own state at the checkpoint is not the one the answer names (all 7s): it is told, and counted.
    const differs = joined.log.lines.find((l) => l.msg === OWN_STATE_DIFFERS);
    expect(differs?.fields).toEqual({ seq: k, own: expect.stringMatching(/^[0-9a-f]{64}$/), group: "07".repeat(32) });
    expect(joined.metrics.get("snapshot_digest_mismatches_total")).toBe(1);
    ownDigest = differs?.fields["own"] as string;
    joined.storage.commits.flush(true);
    expect(joined.storage.epochStart()).toEqual({ epoch: 1, seq: k, digest: new Uint8Array(32).fill(7) });
    // Its core has no state in the epoch: it asks for the one at the epoch's start.
    joined.driver.start();
    expect(joined.driver.status().transferring).toBe(k);
  } finally {
    joined.close();
  }
  // Stopped again before the state came, it joins again (its machine still replays into the
  // epoch by itself): it does not resume the epoch from its own state as a switched replica does.
  const again = startReplica(dir, cluster, 0, answer(k));
  try {
    const said = again.log.lines.map((l) => l.msg);
    expect(said).toContain("joining the group again: restarted before it got the state, it keeps its votes in the epoch");
    expect(said).not.toContain("resuming the epoch from the data directory");
  } finally {
    again.close();
  }
  // The copy of the data directory, answered with the state it makes: nothing to tell.
  const matched = startReplica(same, cluster, 0, {
    ...answer(k),
    start: { seq: k, digest: Uint8Array.from(Buffer.from(ownDigest, "hex")) },
  });
  try {
    expect(matched.log.lines.map((l) => l.msg)).toContain("joining the group: starting in its current epoch, fetching the state");
    expect(matched.log.lines.some((l) => l.msg === OWN_STATE_DIFFERS)).toBe(false);
    expect(matched.metrics.get("snapshot_digest_mismatches_total")).toBe(0);
  } finally {
    matched.close();
  }
});

/** A vote of replica `from` (rank and id alike here) in `clusterId`, as its link delivers it. */
function vote(cluster: { keys: SigningKey[] }, msg: PeerMessage, from: number, clusterId: string, epoch: number): Uint8Array {
  const signed =
    msg.t === "COMMIT" ? msg : { ...msg, sig: sign(cluster.keys[from] as SigningKey, signingBytes(msg as Prepare, clusterId)) };
  return encodeEnvelope("ordering", signed as unknown as Canonical, epoch);
}

/** Replica 1's data directory (dir/data-1) records that it joined the group: the file's group, epoch 0. */
function seedJoined(dir: string, config: ClusterConfig): void {
  const seeded = ReplicaStorage.open({
    dir: join(dir, "data-1"),
    sync: "normal",
    cluster: "unit",
    replica: 1,
    log: testLog(),
    metrics: new Metrics(),
  });
  seeded.stageJoined({ membership: genesisMembership(config), start: { seq: 0, digest: new Uint8Array(32) } });
  seeded.close();
}

/**
 * Replica 1 (a backup in view 0 of epoch 0) decides seq k (its first checkpoint, where a
 * change decided earlier takes effect) from the leader's proposal, two PREPAREs and three
 * COMMITs, then the checkpoint becomes stable by two more CHECKPOINTs and the switch
 * follows; `beforeStable` runs just before those. Returns the state digest at k.
 */
function switchAtFirstCheckpoint(
  started: Started,
  cluster: { config: ClusterConfig; keys: SigningKey[] },
  k: number,
  client: TestClient,
  beforeStable: () => void = () => {},
): Uint8Array {
  const keyOf = (id: number): Uint8Array => cluster.config.replicas[id]?.publicKey as Uint8Array;
  const feed = (from: number, bytes: Uint8Array): void => started.driver.onPeerMessage(from, bytes, keyOf(from));
  const batch = [client.pub("a.b", ["at the switch"])];
  const digest = batchDigest(batch);
  feed(0, proposalIn(cluster, { t: "PRE_PREPARE", view: 0, seq: k, digest, ts: 1_700_000_000_000, batch, sig: EMPTY_SIG }, "unit", 0));
  for (const from of [2, 3])
    feed(from, vote(cluster, { t: "PREPARE", view: 0, seq: k, digest, replica: from, sig: EMPTY_SIG }, from, "unit", 0));
  started.storage.commits.flush(true);
  for (const from of [0, 2, 3])
    feed(from, vote(cluster, { t: "COMMIT", view: 0, seq: k, digest, replica: from, sig: EMPTY_SIG }, from, "unit", 0));
  started.storage.commits.flush(true);
  const own = started.sent.find((m): m is Checkpoint => m.t === "CHECKPOINT" && m.seq === k);
  expect(own).toBeDefined();
  const state = (own as Checkpoint).digest;
  beforeStable();
  for (const from of [0, 2])
    feed(from, vote(cluster, { t: "CHECKPOINT", seq: k, digest: state, replica: from, sig: EMPTY_SIG }, from, "unit", 0));
  started.storage.commits.flush(true);
  return state;
}

/** A leader's proposal signed under `clusterId`, in an envelope of `epoch`. */
function proposalIn(cluster: { keys: SigningKey[] }, header: PrePrepare, clusterId: string, epoch: number): Uint8Array {
  const signed = { ...header, sig: sign(cluster.keys[0] as SigningKey, signingBytes(header, clusterId)) };
  return encodeEnvelope("ordering", signed as unknown as Canonical, epoch);
}

// The switch's side of what a start from the middle of a switch relies on (joinsFromSwitchGap):
// the new epoch's core casts its first vote only once the epoch's start is stored.
test("after a switch, the new epoch's first PREPARE goes out only once the epoch's start is stored", () => {
  const dir = join(temp.dir, "switch-first-vote");
  const cluster = writeCluster(dir, 42_950);
  const k = coreConfigFor(cluster.config, 1).checkpointInterval;
  // Replica 1 decided a set-f at seq 1, which takes effect at checkpoint k.
  decidedLog(dir, cluster, new Map([[1, 0]]), k - 1, undefined, 1);
  // It was started as a joining replica: its data directory holds the group it joined.
  seedJoined(dir, cluster.config);
  const startsAtVote: (EpochStart | null)[] = [];
  const started = startReplica(dir, cluster, 1, undefined, (msg, storage) => {
    if (msg.t === "PREPARE" && msg.seq === k + 1) startsAtVote.push(storage.epochStart());
  });
  let state: Uint8Array = new Uint8Array(0);
  try {
    const client = new TestClient();
    // The new epoch's leader's proposal for k+1 arrives before the switch: it is held until then.
    const next = [client.pub("a.b", ["after the switch"])];
    const header: PrePrepare = {
      t: "PRE_PREPARE",
      view: 0,
      seq: k + 1,
      digest: batchDigest(next),
      ts: 1_700_000_000_001,
      batch: next,
      sig: EMPTY_SIG,
    };
    state = switchAtFirstCheckpoint(started, cluster, k, client, () =>
      started.driver.onPeerMessage(0, proposalIn(cluster, header, "unit/e1", 1), cluster.config.replicas[0]?.publicKey as Uint8Array),
    );
    expect(started.driver.epoch.epoch).toBe(1);
    expect(started.log.lines.map((l) => l.msg)).toContain("epoch started");
    // Its PREPARE for k+1 went out, and the epoch's start was stored by then.
    expect(startsAtVote.length).toBeGreaterThan(0);
    expect(startsAtVote[0]).toEqual({ epoch: 1, seq: k, digest: state });
    // The group it joined is now the one it switched to: a start whose state comes back
    // short rejoins epoch 1 from it, not the file's group (an older epoch's).
    const joined = started.storage.store.meta("joined") as { epoch: number; f: number; seq: number; digest: Uint8Array };
    expect({ epoch: joined.epoch, f: joined.f, seq: joined.seq, digest: joined.digest }).toEqual({ epoch: 1, f: 0, seq: k, digest: state });
  } finally {
    started.close();
  }
  // Its ordered state lost while it was down (what a start that finds it damaged drops):
  // started with the group its directory holds (fitb replica's joinedBefore), it joins
  // epoch 1 again and fetches the state, where it used to stop on an older epoch's group.
  onStore(dir, 1, "DELETE FROM decided");
  const record = readJoined(join(dir, "data-1"), "unit", 1);
  expect(record?.membership.epoch).toBe(1);
  const again = startReplica(dir, cluster, 1, record as JoinEpoch);
  try {
    expect(again.driver.epoch.epoch).toBe(1);
    expect(again.log.lines.map((l) => l.msg)).toContain(
      "joining the group again: restarted before it got the state, it keeps its votes in the epoch",
    );
  } finally {
    again.close();
  }
});

test("a replica that joined and is removed by a switch keeps the group it joined, not one without it", () => {
  const dir = join(temp.dir, "switch-removed");
  const cluster = writeCluster(dir, 42_970);
  const k = coreConfigFor(cluster.config, 1).checkpointInterval;
  // f lowered to 0, then replica 1 removed: both take effect at checkpoint k.
  decidedLog(
    dir,
    cluster,
    new Map<number, number | AdminCmd>([
      [1, 0],
      [2, { t: "remove-replica", id: 1 }],
    ]),
    k - 1,
    undefined,
    1,
  );
  seedJoined(dir, cluster.config);
  const started = startReplica(dir, cluster, 1);
  try {
    switchAtFirstCheckpoint(started, cluster, k, new TestClient());
    expect(started.log.lines.map((l) => l.msg)).toContain("this replica was removed from the group: it stops ordering and serving clients");
  } finally {
    started.close();
  }
  // The joined record still names it (fitb replica's joinedBefore finds it at the next start).
  const joined = readJoined(join(dir, "data-1"), "unit", 1);
  expect(joined?.membership.epoch).toBe(0);
  expect(joined?.membership.members.map((member) => member.id)).toContain(1);
});

test("a replica whose epoch record is damaged is told so, not that it stopped in a switch", () => {
  const dir = join(temp.dir, "epoch-row-damaged");
  const cluster = writeCluster(dir, 42_500);
  const k = coreConfigFor(cluster.config, 0).checkpointInterval;
  // Epoch 1 from k, epoch 2 from 2k, the switch to 2 stored; then its record was damaged.
  decidedLog(
    dir,
    cluster,
    new Map([
      [1, 0],
      [k + 1, 1],
    ]),
    2 * k + 2,
    { epoch: 2, seq: 2 * k, digest: new Uint8Array(32).fill(9) },
  );
  damageEpochRow(dir);
  expect(() => startReplica(dir, cluster, 0)).toThrow(
    "the data directory's epoch record is missing or damaged: it names no epoch, and the state is in epoch 2",
  );
});

test("a replica whose decisions go on past the switch it has no record of is told both cases the data leaves open", () => {
  const dir = join(temp.dir, "epoch-row-ambiguous");
  const cluster = writeCluster(dir, 42_600);
  const k = coreConfigFor(cluster.config, 0).checkpointInterval;
  decidedLog(dir, cluster, new Map([[1, 0]]), k + 2, { epoch: 1, seq: k, digest: new Uint8Array(32).fill(9) });
  damageEpochRow(dir);
  expect(() => startReplica(dir, cluster, 0)).toThrow(
    `its decisions switched to epoch 1 at checkpoint ${k} and go on to seq ${k + 2}: the record of the switch is missing or damaged, or it stopped during the switch`,
  );
});

/**
 * Watches `started`'s store after every commit: the first time a complete base at `seq`
 * sits under an epoch record of epoch 0, `onViolation` runs (with the directory as a kill
 * -9 right then would leave it) and the violation is recorded.
 */
function watchBaseUnderOldEpoch(started: Started, seq: number, onViolation: () => void = () => {}): string[] {
  const violations: string[] = [];
  const store = started.storage.store;
  const original = store.transactionWritten.bind(store);
  (store as unknown as { transactionWritten: typeof original }).transactionWritten = ((fn: () => void) => {
    const result = original(fn);
    const base = started.storage.heads().some((head) => head.status === "complete" && head.seq === seq);
    if (base && (started.storage.epochStart()?.epoch ?? 0) === 0 && violations.length === 0) {
      violations.push(`after a commit: a base at ${seq} under epoch 0's record`);
      onViolation();
    }
    return result;
  }) as typeof original;
  return violations;
}

const tickOf = (driver: OrderingDriver): void => (driver as unknown as { onTick(): void }).onTick();

test("a laggard that fetches the switch point's state adopts it as its base only with the epoch's start", () => {
  const dir = join(temp.dir, "install-at-switch");
  const cluster = writeCluster(dir, 43_100);
  const k = coreConfigFor(cluster.config, 1).checkpointInterval;
  const keyOf = (id: number): Uint8Array => cluster.config.replicas[id]?.publicKey as Uint8Array;
  // The source: replica 1, switched at k (set-f at 1). Transfer messages queue up between the two.
  decidedLog(dir, cluster, new Map([[1, 0]]), k - 1, undefined, 1);
  const queue: (() => void)[] = [];
  let laggard: Started | null = null;
  const source = startReplica(dir, cluster, 1, undefined, undefined, (_to, bytes) => {
    const read = readEnvelope(bytes);
    if (read.ok && read.envelope.kind === "state-transfer") queue.push(() => laggard?.driver.onPeerMessage(1, bytes, keyOf(1)));
  });
  const state = switchAtFirstCheckpoint(source, cluster, k, new TestClient());
  expect(source.driver.epoch.epoch).toBe(1);
  // The laggard: replica 3, an empty data directory in epoch 0; only replica 1 serves it.
  laggard = startReplica(dir, cluster, 3, undefined, undefined, (to, bytes) => {
    const read = readEnvelope(bytes);
    if (to === 1 && read.ok && read.envelope.kind === "state-transfer") queue.push(() => source.driver.onPeerMessage(3, bytes, keyOf(3)));
  });
  const lag = laggard;
  const violations = watchBaseUnderOldEpoch(lag, k, () => cpSync(join(dir, "data-3"), join(dir, "data-3-crash"), { recursive: true }));
  try {
    for (const from of [0, 1, 2]) {
      lag.driver.onPeerMessage(
        from,
        vote(cluster, { t: "CHECKPOINT", seq: k, digest: state, replica: from, sig: EMPTY_SIG }, from, "unit", 0),
        keyOf(from),
      );
    }
    for (let round = 0; round < 5000 && lag.driver.epoch.epoch !== 1; round++) {
      if (queue.length === 0) tickOf(lag.driver);
      lag.storage.commits.flush(true);
      source.storage.commits.flush(true);
      queue.shift()?.();
    }
    lag.storage.commits.flush(true);
    expect(lag.driver.epoch.epoch).toBe(1);
    expect(lag.driver.status().baseSnapshot).toBe(k);
  } finally {
    lag.close();
    source.close();
  }
  // Before, the base went to disk a commit ahead of the epoch's start: a kill -9 there left
  // a directory whose start stops ("the data directory's epoch record is missing or damaged").
  expect(violations).toEqual([]);
});

for (const stableFirst of [false, true]) {
  test(`a replica's own base at the switch point goes to disk only after the epoch's start${stableFirst ? " (its peers made the checkpoint stable before it executed it)" : ""}`, () => {
    const dir = join(temp.dir, `own-base-${stableFirst}`);
    const cluster = writeCluster(dir, stableFirst ? 43_300 : 43_200);
    const k = coreConfigFor(cluster.config, 1).checkpointInterval;
    const keyOf = (id: number): Uint8Array => cluster.config.replicas[id]?.publicKey as Uint8Array;
    decidedLog(dir, cluster, new Map([[1, 0]]), k - 1, undefined, 1);
    const client = new TestClient();
    const batch = [client.pub("a.b", ["at the switch"])];
    const digest = batchDigest(batch);
    /** Decides seq k at `s`; with `checkpoints`, the peers' CHECKPOINTs of that digest arrive before the COMMITs. */
    const decide = (s: Started, checkpoints: Uint8Array | null): Uint8Array | null => {
      const feed = (from: number, bytes: Uint8Array): void => s.driver.onPeerMessage(from, bytes, keyOf(from));
      feed(0, proposalIn(cluster, { t: "PRE_PREPARE", view: 0, seq: k, digest, ts: 1_700_000_000_000, batch, sig: EMPTY_SIG }, "unit", 0));
      for (const from of [2, 3])
        feed(from, vote(cluster, { t: "PREPARE", view: 0, seq: k, digest, replica: from, sig: EMPTY_SIG }, from, "unit", 0));
      s.storage.commits.flush(true);
      if (checkpoints !== null) {
        for (const from of [0, 2, 3])
          feed(from, vote(cluster, { t: "CHECKPOINT", seq: k, digest: checkpoints, replica: from, sig: EMPTY_SIG }, from, "unit", 0));
        s.storage.commits.flush(true);
      }
      for (const from of [0, 2, 3])
        feed(from, vote(cluster, { t: "COMMIT", view: 0, seq: k, digest, replica: from, sig: EMPTY_SIG }, from, "unit", 0));
      s.storage.commits.flush(true);
      return (s.sent.find((m): m is Checkpoint => m.t === "CHECKPOINT" && m.seq === k) as Checkpoint | undefined)?.digest ?? null;
    };
    // The state digest at k, from a copy of the same directory deciding the same batch.
    const twinDir = join(temp.dir, `own-base-twin-${stableFirst}`);
    cpSync(join(dir, "data-1"), join(twinDir, "data-1"), { recursive: true });
    const twin = startReplica(twinDir, cluster, 1);
    const state = decide(twin, null) as Uint8Array;
    twin.close();
    const started = startReplica(dir, cluster, 1);
    const violations = watchBaseUnderOldEpoch(started, k);
    try {
      if (stableFirst) decide(started, state);
      else {
        decide(started, null);
        for (const from of [0, 2]) {
          started.driver.onPeerMessage(
            from,
            vote(cluster, { t: "CHECKPOINT", seq: k, digest: state, replica: from, sig: EMPTY_SIG }, from, "unit", 0),
            keyOf(from),
          );
        }
        started.storage.commits.flush(true);
      }
      for (let t = 0; t < 2000 && started.driver.status().baseSnapshot !== k; t++) {
        tickOf(started.driver);
        started.storage.commits.flush(true);
      }
      expect(started.driver.epoch.epoch).toBe(1);
      expect(started.driver.status().baseSnapshot).toBe(k);
      expect(violations).toEqual([]);
    } finally {
      started.close();
    }
  });
}
