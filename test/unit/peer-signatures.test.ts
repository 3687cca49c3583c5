/**
 * Peer signatures checked on the verification threads before the ordering core takes the
 * message (src/replica/peer-signatures.ts): a busy replica's checks go to a thread and
 * the core's own check then takes the remembered answer (a forgery's too); one peer's
 * messages reach the core in the order they came; an idle replica, a long backlog on the
 * threads, or a message the core would drop unchecked: the core checks it on the loop.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { Forward, PeerMessage, Prepare } from "../../src/core/ordering/messages.ts";
import { signingBytes } from "../../src/core/ordering/messages.ts";
import { sign } from "../../src/crypto/ed25519.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import {
  PEER_LANE_WAITING_MAX,
  PEER_OFFLOAD_BACKLOG_PER_THREAD_MAX,
  PeerSignatures,
  type PeerSignatureOptions,
} from "../../src/replica/peer-signatures.ts";
import { VerifyPool } from "../../src/threads/verify-pool.ts";
import { waitFor } from "../helpers/wait.ts";

const CLUSTER = "peer-signatures-test";
const keys = [SigningKey.generate(), SigningKey.generate(), SigningKey.generate(), SigningKey.generate()];
const pools: VerifyPool[] = [];
afterEach(() => {
  for (const pool of pools.splice(0)) pool.stop();
});

async function readyPool(threads: number): Promise<VerifyPool> {
  let ready = false;
  const pool = new VerifyPool({ threads, onFailure: (reason) => console.error(reason), onReady: () => (ready = true) });
  pools.push(pool);
  await waitFor("verification threads ready", () => ready, 30_000);
  return pool;
}

function checksOn(pool: VerifyPool, more: Partial<PeerSignatureOptions> = {}): PeerSignatures {
  return new PeerSignatures({
    pool,
    keyOfRank: (rank) => keys[rank]?.publicKey ?? null,
    clusterId: () => CLUSTER,
    n: () => keys.length,
    mode: () => "bft",
    worthChecking: () => true,
    laneBytesMax: 1024 * 1024,
    onDropped: () => {},
    onDeliverError: (error) => {
      throw error;
    },
    ...more,
  });
}

/** Bytes a message is taken to have on the wire. */
const BYTES = 200;

function prepare(replica: number, seq: number, forged = false): Prepare {
  const vote: Prepare = { t: "PREPARE", view: 0, seq, digest: new Uint8Array(32).fill(seq % 256), replica, sig: new Uint8Array(64) };
  const sig = sign(keys[replica] as SigningKey, signingBytes(vote, CLUSTER));
  if (forged) sig[0] = (sig[0] as number) ^ 1;
  return { ...vote, sig };
}

const forward: Forward = { t: "FORWARD", requests: [] };

describe("peer signatures on the verification threads", () => {
  test("a busy replica's checks go to a thread; the core's check then takes what verified, only over the same bytes", async () => {
    const pool = await readyPool(1);
    const checks = checksOn(pool);
    const delivered: number[] = [];
    // Two signed messages in one turn: the second finds the replica busy.
    const first = prepare(1, 1);
    const second = prepare(2, 2);
    checks.admit(1, 1, first, BYTES, () => delivered.push(1));
    checks.admit(2, 2, second, BYTES, () => delivered.push(2));
    expect(delivered).toEqual([1]);
    expect(checks.onThreads).toBe(1);
    await waitFor("the checked message delivered", () => delivered.length === 2, 30_000);
    expect(checks.checkedBefore(2, signingBytes(second, CLUSTER), second.sig)).toBe(true);
    // The same signature over other bytes, or claimed by another rank: the core verifies it.
    expect(checks.checkedBefore(2, signingBytes({ ...second, seq: 3 }, CLUSTER), second.sig)).toBeNull();
    expect(checks.checkedBefore(3, signingBytes(second, CLUSTER), second.sig)).toBeNull();
    // The first went to the core unchecked here (the core checked it): nothing remembered.
    expect(checks.checkedBefore(1, signingBytes(first, CLUSTER), first.sig)).toBeNull();
  });

  test("a forged signature is remembered as forged, and its message still goes to the core (which refuses it unchecked)", async () => {
    const pool = await readyPool(1);
    const checks = checksOn(pool);
    const delivered: number[] = [];
    const forged = prepare(2, 7, true);
    checks.admit(1, 1, prepare(1, 6), BYTES, () => delivered.push(6));
    checks.admit(2, 2, forged, BYTES, () => delivered.push(7));
    await waitFor("both delivered", () => delivered.length === 2, 30_000);
    expect(checks.onThreads).toBe(1);
    expect(checks.checkedBefore(2, signingBytes(forged, CLUSTER), forged.sig)).toBe(false);
    // A new epoch's core: nothing remembered applies.
    checks.reset();
    expect(checks.checkedBefore(2, signingBytes(forged, CLUSTER), forged.sig)).toBeNull();
  });

  test("the core checks on the loop what it would drop unchecked, crash-mode votes, and everything while the threads' backlog is long", async () => {
    const pool = await readyPool(1);
    // Not worth a thread: the core drops such a message before any check.
    const gated = checksOn(pool, { worthChecking: (msg) => msg.t !== "PREPARE" || msg.seq !== 2 });
    let delivered = 0;
    gated.admit(1, 1, prepare(1, 1), BYTES, () => delivered++);
    gated.admit(2, 2, prepare(2, 2), BYTES, () => delivered++);
    expect(delivered).toBe(2);
    expect(gated.onThreads).toBe(0);
    // Crash mode: PREPAREs are not used, COMMITs come on the link's word.
    const crash = checksOn(pool, { mode: () => "cft" });
    crash.admit(1, 1, prepare(1, 3), BYTES, () => delivered++);
    crash.admit(2, 2, prepare(2, 4), BYTES, () => delivered++);
    expect(delivered).toBe(4);
    expect(crash.onThreads).toBe(0);
    // A client flood's checks wait on the threads: peer checks do not queue behind them.
    const flood = SigningKey.generate();
    const message = new Uint8Array(64);
    const sig = sign(flood, message);
    let answered = 0;
    const floodChecks = PEER_OFFLOAD_BACKLOG_PER_THREAD_MAX * pool.threadCount;
    for (let i = 0; i < floodChecks; i++) pool.verify(flood.publicKey, message, sig, () => answered++);
    expect(pool.backlog).toBe(floodChecks);
    const busy = checksOn(pool);
    busy.admit(1, 1, prepare(1, 5), BYTES, () => delivered++);
    busy.admit(2, 2, prepare(2, 6), BYTES, () => delivered++);
    expect(delivered).toBe(6);
    expect(busy.onThreads).toBe(0);
    await waitFor("the flood's checks answered", () => answered === floodChecks, 30_000);
  });

  test("one peer's messages reach the core in the order they came, checked or not", async () => {
    const pool = await readyPool(2);
    const checks = checksOn(pool);
    const order: string[] = [];
    const messages: [number, PeerMessage, string][] = [];
    for (let i = 1; i <= 40; i++) {
      messages.push([1, prepare(1, i), `1:p${i}`]);
      if (i % 5 === 0) messages.push([1, forward, `1:f${i}`]);
      messages.push([3, prepare(3, i, i % 7 === 0), `3:p${i}`]);
    }
    for (const [peer, msg, name] of messages) checks.admit(peer, peer, msg, BYTES, () => order.push(name));
    await waitFor("every message delivered", () => order.length === messages.length, 30_000);
    for (const peer of [1, 3]) {
      const mine = (list: string[]) => list.filter((name) => name.startsWith(`${peer}:`));
      expect(mine(order)).toEqual(mine(messages.map(([, , name]) => name)));
    }
    expect(checks.onThreads).toBeGreaterThan(60);
  });

  test("a peer's lane holds a bounded number of messages and bytes: past either they are dropped and counted", async () => {
    const pool = await readyPool(1);
    let dropped = 0;
    const onDropped = (peer: number) => {
      expect(peer).toBe(1);
      dropped++;
    };
    const checks = checksOn(pool, { onDropped });
    let delivered = 0;
    const extra = 10;
    // One turn: the first goes to the core at once, the rest wait in the lane.
    for (let i = 0; i < PEER_LANE_WAITING_MAX + 1 + extra; i++) checks.admit(1, 1, prepare(1, i + 1), BYTES, () => delivered++);
    expect(dropped).toBe(extra);
    await waitFor("the lane drained", () => delivered === PEER_LANE_WAITING_MAX + 1, 60_000);
    expect(checks.dropped).toBe(extra);
    // By bytes: a lane of 1,000 bytes holds four messages of 200 behind the first.
    const small = checksOn(pool, { onDropped, laneBytesMax: 1_000 });
    dropped = 0;
    delivered = 0;
    for (let i = 0; i < 8; i++) small.admit(1, 1, prepare(1, 100 + i), BYTES, () => delivered++);
    expect(dropped).toBe(2);
    await waitFor("the small lane drained", () => delivered === 6, 30_000);
  });

  test("an idle replica hands each message to the core at once", async () => {
    const pool = await readyPool(1);
    const checks = checksOn(pool);
    let delivered = 0;
    checks.admit(1, 1, prepare(1, 1), BYTES, () => delivered++);
    expect(delivered).toBe(1);
    // The next turn: idle again.
    await new Promise((resolve) => setImmediate(resolve));
    checks.admit(2, 2, prepare(2, 2), BYTES, () => delivered++);
    expect(delivered).toBe(2);
    expect(checks.onThreads).toBe(0);
  });
});
