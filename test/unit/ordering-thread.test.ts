/**
 * The ordering core on its own thread (src/replica/ordering-host.ts, ordering-worker.ts):
 * the same inputs give byte for byte the same Readies as on the event loop, the mirror the
 * driver reads (status, clients' last executed seqs) follows the answers, and a thread
 * that dies or whose core throws stops its host with a reason (the replica stops on it).
 */
import { afterEach, describe, expect, test } from "bun:test";
import { makeConfig } from "../../src/core/ordering/config.ts";
import { OrderingCore } from "../../src/core/ordering/core.ts";
import { clientTableHash, stateDigestOf } from "../../src/core/ordering/checkpoints.ts";
import {
  type Checkpoint,
  type ClientRequest,
  type Commit,
  type Prepare,
  type PrePrepare,
  signingBytes,
} from "../../src/core/ordering/messages.ts";
import type { CoreCrypto, CoreInput, PeerMessage, Ready } from "../../src/core/ordering/index.ts";
import { sign, verify } from "../../src/crypto/ed25519.ts";
import { sha256 } from "../../src/crypto/hash.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { urgencyOfSpace, VerifiedRequests } from "../../src/replica/requests.ts";
import {
  type CoreHost,
  compacted,
  InlineCoreHost,
  SHARED_BYTES_MIN,
  THREAD_STEPS_IN_FLIGHT_MAX,
  ThreadCoreHost,
  type ThreadCoreHostOptions,
} from "../../src/replica/ordering-host.ts";
import { waitFor } from "../helpers/wait.ts";
import { TestClient } from "./storage-fixtures.ts";

const CLUSTER = "ordering-thread-test";
const keys = [0, 1, 2, 3].map(() => SigningKey.generate());
const publicKeys = keys.map((key) => key.publicKey);
const cfg = makeConfig({ id: 0, n: 4, f: 1, mode: "bft", clusterId: CLUSTER });
const TAG = "ops.thread";
/** A thread that answers nothing (hung-thread-fixture.ts), and how long the tests let a step wait for it. */
const HUNG_THREAD = new URL("./hung-thread-fixture.ts", import.meta.url).href;
const HUNG_DEADLINE_MS = 200;

/** What the ordering thread builds for itself, on this thread: the same keys, checks and priorities. */
function mainCrypto(): { crypto: CoreCrypto; policy: { urgencyOf: (client: string) => number } } {
  const verified = new VerifiedRequests();
  return {
    crypto: {
      hash: sha256,
      sign: (bytes) => sign(keys[0] as SigningKey, bytes),
      verify: (rank, bytes, sig) => publicKeys[rank] !== undefined && verify(publicKeys[rank] as Uint8Array, bytes, sig),
      verifyRequest: (req, atMs) => verified.check(req, atMs, Date.now),
    },
    policy: { urgencyOf: (client) => urgencyOfSpace(client, (tag) => (tag === TAG ? "normal" : null)) },
  };
}

const hosts: CoreHost[] = [];
afterEach(() => {
  for (const host of hosts.splice(0)) host.stop();
});

/** `more`: the host's other options (a thread that misbehaves, its deadline, onDropped). */
function threadHost(
  onFailure: (reason: string) => void = () => {},
  more: Pick<ThreadCoreHostOptions, "answerDeadlineMs" | "workerEntry" | "onDropped"> = {},
): ThreadCoreHost {
  const { crypto, policy } = mainCrypto();
  const host = new ThreadCoreHost({
    initial: new OrderingCore(cfg, crypto, [], policy),
    cfg,
    restored: [],
    seed: (keys[0] as SigningKey).exportSeed(),
    keys: publicKeys,
    priorities: [[TAG, "normal"]],
    crypto,
    policy,
    onFailure,
    ...more,
  });
  hosts.push(host);
  return host;
}

/** Runs `input` on `host` and resolves with its Ready (in input order). */
function stepOf(host: CoreHost, input: CoreInput): Promise<Ready> {
  return new Promise((resolve) => host.step(input, resolve));
}

function vote<T extends "PREPARE" | "COMMIT">(t: T, from: number, pp: PrePrepare): T extends "PREPARE" ? Prepare : Commit {
  const unsigned = { t, view: pp.view, seq: pp.seq, digest: pp.digest, replica: from, sig: new Uint8Array(64) } as Prepare | Commit;
  return { ...unsigned, sig: sign(keys[from] as SigningKey, signingBytes(unsigned, CLUSTER)) } as T extends "PREPARE" ? Prepare : Commit;
}

/** The leader's path of one seq: requests, a tick (the proposal), then PREPAREs and COMMITs of replicas 1 and 2. */
async function leaderRun(host: CoreHost, requests: readonly ClientRequest[]): Promise<Ready[]> {
  const readies: Ready[] = [];
  readies.push(await stepOf(host, { kind: "tick", nowMs: 1_800_000_000_000 }));
  for (const req of requests) readies.push(await stepOf(host, { kind: "request", req, authenticated: true }));
  readies.push(await stepOf(host, { kind: "tick", nowMs: 1_800_000_000_010 }));
  const proposal = readies
    .flatMap((ready) => ready.effects)
    .find((effect): effect is { kind: "send"; to: "all"; msg: PrePrepare } => effect.kind === "send" && effect.msg.t === "PRE_PREPARE");
  if (proposal === undefined) throw new Error("the leader proposed nothing");
  const pp = proposal.msg;
  for (const t of ["PREPARE", "COMMIT"] as const) {
    for (const from of [1, 2]) readies.push(await stepOf(host, { kind: "message", from, msg: vote(t, from, pp) as PeerMessage }));
  }
  return readies;
}

describe("the ordering core on its own thread", () => {
  test("the same inputs give the same Readies as on the event loop, and the mirror follows the thread's core", async () => {
    const { crypto, policy } = mainCrypto();
    const inline = new InlineCoreHost(new OrderingCore(cfg, crypto, [], policy), crypto, policy);
    const onThread = threadHost();
    const client = new TestClient();
    const requests = [0, 1, 2].map((i) => client.pub(TAG, [`event ${i}`]));
    const expected = await leaderRun(inline, requests);
    const got = await leaderRun(onThread, requests);
    // The run decided its seq: a test that compares two empty runs would prove nothing.
    const decided = expected.flatMap((ready) => ready.effects).filter((effect) => effect.kind === "decide");
    expect(decided.length).toBe(1);
    expect(got).toEqual(expected);
    expect(onThread.status()).toEqual(inline.status());
    expect(onThread.status().lastExecuted).toBe(1);
    const decide = decided[0] as Extract<(typeof decided)[number], { kind: "decide" }>;
    for (const req of decide.batch) {
      expect(onThread.lastExecutedOf(req.client)).toBe(inline.lastExecutedOf(req.client));
      expect(onThread.lastExecutedOf(req.client)).toBeGreaterThan(0);
    }
  });

  test("a fetched state: the thread's core is claimed, takes it, and the mirror then holds its whole client table", async () => {
    // Replicas 1-3 sign a stable checkpoint far ahead of this replica: its core fetches that state.
    const seq = cfg.checkpointInterval;
    const rows: [string, number][] = [
      [`${"a".repeat(64)}:ops.thread`, 7],
      [`${"b".repeat(64)}:!admin`, 2],
    ];
    const appDigest = sha256(new TextEncoder().encode("the channels' state"));
    const digest = stateDigestOf(sha256, seq, appDigest, clientTableHash(sha256, rows));
    const checkpoint = (from: number): Checkpoint => {
      const unsigned: Checkpoint = { t: "CHECKPOINT", seq, digest, replica: from, sig: new Uint8Array(64) };
      return { ...unsigned, sig: sign(keys[from] as SigningKey, signingBytes(unsigned, CLUSTER)) };
    };
    const { crypto, policy } = mainCrypto();
    const inline = new InlineCoreHost(new OrderingCore(cfg, crypto, [], policy), crypto, policy);
    const onThread = threadHost();
    for (const host of [inline, onThread]) {
      await stepOf(host, { kind: "tick", nowMs: 1_800_000_000_000 });
      for (const from of [1, 2, 3]) await stepOf(host, { kind: "message", from, msg: checkpoint(from) });
      expect(host.status().transferTo).toBe(seq);
      const proof = [1, 2, 3].map(checkpoint);
      const wanted = await new Promise<boolean>((resolve) => host.claimTransfer({ seq, stateDigest: digest, proof }, resolve));
      expect(wanted).toBe(true);
      await stepOf(host, { kind: "snapshotInstalled", seq, stateDigest: digest, appDigest, clients: rows });
      expect(host.status().lastExecuted).toBe(seq);
      expect(host.status().transferTo).toBe(null);
      for (const [client, executed] of rows) expect(host.lastExecutedOf(client)).toBe(executed);
    }
    // Not fetching any more: a second claim is refused, and the core goes on (a tick is answered).
    const proof = [1, 2, 3].map(checkpoint);
    expect(await new Promise<boolean>((resolve) => onThread.claimTransfer({ seq, stateDigest: digest, proof }, resolve))).toBe(false);
    await stepOf(onThread, { kind: "tick", nowMs: 1_800_000_000_010 });
  });

  test("a thread that exits stops its host, with the reason", async () => {
    let reason = "";
    const host = threadHost((why) => {
      reason = why;
    });
    // Running first: one step answered.
    await stepOf(host, { kind: "tick", nowMs: 1_800_000_000_000 });
    host.terminateForTest();
    await waitFor("the host to report the exit", () => reason !== "", 10_000);
    expect(reason).toBe("the ordering thread exited");
  });

  test("a thread that stops answering stops its host, with the reason, once a step waited past the bound", async () => {
    let reason = "";
    const host = threadHost(
      (why) => {
        reason = why;
      },
      { answerDeadlineMs: HUNG_DEADLINE_MS, workerEntry: HUNG_THREAD },
    );
    host.step({ kind: "tick", nowMs: 1_800_000_000_000 }, () => {
      throw new Error("a thread that answers nothing answered a step");
    });
    await waitFor("the host to report the silent thread", () => reason !== "", 10_000);
    expect(reason).toMatch(/^the ordering thread answered nothing for [\d.]+ s with a step in hand \(the bound is 0.2 s\)$/);
  });

  test("past THREAD_STEPS_IN_FLIGHT_MAX unanswered steps a request or peer message is not handed over, and step says so", () => {
    let dropped = 0;
    const host = threadHost(() => {}, { onDropped: () => dropped++, workerEntry: HUNG_THREAD });
    const never = (): void => {
      throw new Error("a thread that answers nothing answered a step");
    };
    for (let i = 0; i < THREAD_STEPS_IN_FLIGHT_MAX; i++)
      expect(host.step({ kind: "tick", nowMs: 1_800_000_000_000 + i }, never)).toBe(true);
    const req: ClientRequest = new TestClient().pub(TAG, ["x"]);
    expect(host.step({ kind: "request", req, authenticated: true }, never)).toBe(false);
    // Ticks still go: the core's clock never stops because its inbox is full.
    expect(host.step({ kind: "tick", nowMs: 1_800_000_100_000 }, never)).toBe(true);
    expect(dropped).toBe(1);
  });

  test("a step that throws on the thread stops its host as a core assertion would", async () => {
    let reason = "";
    const host = threadHost((why) => {
      reason = why;
    });
    // Not a message validatePeerMessage passes: the core's dispatch throws on it.
    host.step({ kind: "message", from: 1, msg: null as unknown as PeerMessage }, () => {
      throw new Error("a step that threw must not be answered");
    });
    await waitFor("the host to report the failure", () => reason !== "", 10_000);
    expect(reason).toStartWith("ordering core assertion failed:");
  });
});

describe("what crosses to the thread", () => {
  test("views into much larger buffers are copied out, the rest is shared, and the caller's objects are never written", () => {
    const read = new Uint8Array(64 * 1024).map((_, i) => i & 0xff);
    const digest = read.subarray(100, 132);
    const own = new Uint8Array([1, 2, 3]);
    const input = { kind: "message", from: 1, msg: { t: "PREPARE", digest, sig: own, nested: [digest, own] } };
    const out = compacted(input);
    expect(out).toEqual(input);
    expect(out.msg.digest.buffer.byteLength).toBe(32);
    expect(out.msg.nested[0]?.buffer.byteLength).toBe(32);
    expect(out.msg.sig).toBe(own);
    expect(input.msg.digest).toBe(digest);
    expect(input.msg.digest.buffer.byteLength).toBe(64 * 1024);
    const plain = { kind: "tick", nowMs: 5, list: [own] };
    expect(compacted(plain)).toBe(plain);
  });

  test("large views cross in shared memory, copied once however often the value names them; shared ones as they are", () => {
    const body = new Uint8Array(SHARED_BYTES_MIN).map((_, i) => i & 0xff);
    const small = new Uint8Array(SHARED_BYTES_MIN - 1).fill(7);
    const shared = new Uint8Array(new SharedArrayBuffer(64)).fill(9);
    const req = { client: "c", seq: 1, span: 1, body, sig: small };
    const input = { kind: "message", msg: { batch: [req], again: req, body, shared } };
    const out = compacted(input);
    expect(out).toEqual(input);
    expect(out.msg.body.buffer).toBeInstanceOf(SharedArrayBuffer);
    // One copy: every place that named the view names the one shared copy.
    expect(out.msg.batch[0]?.body).toBe(out.msg.body);
    expect(out.msg.again.body).toBe(out.msg.body);
    expect(out.msg.batch[0]?.sig).toBe(small);
    expect(out.msg.shared).toBe(shared);
    // The request named twice arrives as two equal objects over the one shared body.
    expect(out.msg.again).toEqual(req);
    // A small view into a large shared buffer is copied out: a reference would keep the whole buffer alive.
    const slice = new Uint8Array(new SharedArrayBuffer(64 * 1024)).subarray(0, 32);
    const crossed = compacted({ slice }).slice;
    expect(crossed).toEqual(slice);
    expect(crossed.buffer.byteLength).toBe(32);
    // The caller's value is left as it was.
    expect(input.msg.body).toBe(body);
    expect(body.buffer).not.toBeInstanceOf(SharedArrayBuffer);
  });

  test("a large request body comes back from the thread in shared memory, in every effect that names it", async () => {
    const onThread = threadHost();
    const req = new TestClient().pub(TAG, ["x".repeat(SHARED_BYTES_MIN)]);
    expect(req.body.byteLength).toBeGreaterThanOrEqual(SHARED_BYTES_MIN);
    const effects = (await leaderRun(onThread, [req])).flatMap((ready) => ready.effects);
    const decide = effects.find((effect) => effect.kind === "decide");
    const proposal = effects.find((effect) => effect.kind === "send" && effect.msg.t === "PRE_PREPARE");
    if (decide?.kind !== "decide" || proposal?.kind !== "send" || proposal.msg.t !== "PRE_PREPARE")
      throw new Error("the seq was not decided");
    const decided = decide.batch[0] as ClientRequest;
    expect(decided.body).toEqual(req.body);
    expect(decided.body.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(proposal.msg.batch?.[0]?.body.buffer).toBeInstanceOf(SharedArrayBuffer);
  });
});
