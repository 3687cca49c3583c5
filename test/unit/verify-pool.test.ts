/**
 * The signature-verification threads (src/threads/verify-pool.ts): the same answers as
 * verifying inline, in ask order per lane whatever thread finished first, batches not
 * single checks, a bound past which checks run inline, and a dead thread reported.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { sign } from "../../src/crypto/ed25519.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { BATCH_BYTES_MAX, packBatch, unpackBatch } from "../../src/threads/verify-batch.ts";
import { URGENT } from "../../src/core/ordering/priority.ts";
import {
  CHECK_BYTES_IN_FLIGHT_MAX,
  LANE_CHECKS_MAX,
  URGENT_CHECK,
  URGENT_INLINE_BYTES_MAX,
  VerifyPool,
} from "../../src/threads/verify-pool.ts";
import { signingInput, signingPrefix } from "../../wire/session.ts";
import { DOMAIN_REQUEST } from "../../wire/types.ts";
import { waitFor } from "../helpers/wait.ts";

const pools: VerifyPool[] = [];
afterEach(() => {
  for (const pool of pools.splice(0)) pool.stop();
});

function pool(threads: number, onFailure: (reason: string) => void = () => {}): VerifyPool {
  const p = new VerifyPool({ threads, onFailure });
  pools.push(p);
  return p;
}

/** Checks of which every third is forged; sizes vary so threads finish out of order. */
function checks(count: number): { key: Uint8Array; message: Uint8Array; sig: Uint8Array; valid: boolean }[] {
  const key = SigningKey.generate();
  return Array.from({ length: count }, (_, i) => {
    const message = new Uint8Array(32 + ((i * 7919) % 20_000)).fill(i % 251);
    const sig = sign(key, message);
    const valid = i % 3 !== 0;
    if (!valid) sig[0] = (sig[0] as number) ^ 1;
    return { key: key.publicKey, message, sig, valid };
  });
}

describe("verification threads", () => {
  test("answers match inline verification, and each lane's answers come in ask order", async () => {
    const p = pool(3);
    const lanes = [p.lane(), p.lane(), p.lane()];
    const items = checks(600);
    const answers: [number, boolean][][] = [[], [], []];
    items.forEach((c, i) => p.verify(c.key, c.message, c.sig, (ok) => answers[i % 3]?.push([i, ok]), lanes[i % 3]));
    await waitFor("every answer", () => answers.every((lane) => lane.length === 200), 30_000);
    for (let l = 0; l < 3; l++) {
      const asked = items.map((c, i) => ({ i, valid: c.valid })).filter(({ i }) => i % 3 === l);
      expect(answers[l]?.map(([i]) => i)).toEqual(asked.map(({ i }) => i));
      expect(answers[l]?.map(([, ok]) => ok)).toEqual(asked.map(({ valid }) => valid));
    }
    // Each thread also answered the start probe (a good and a forged signature); no lane
    // passed LANE_CHECKS_MAX, so nothing ran inline.
    expect(p.verifiedOnThreads).toBe(600 + 2 * 3);
    expect(p.verifiedInline).toBe(0);
  });

  test("checks asked in one turn go out most urgent first", async () => {
    const p = pool(1);
    await waitFor("ready", () => p.verifiedOnThreads === 2, 30_000);
    const items = checks(6);
    const order: string[] = [];
    // Separate lanes (one per session): only urgency orders them (normal over low; urgent
    // checks do not queue at all, next test).
    items.forEach((c, i) => p.verify(c.key, c.message, c.sig, () => order.push(i < 3 ? `low${i}` : `normal${i}`), p.lane(), i < 3 ? 0 : 1));
    await waitFor("every answer", () => order.length === 6, 30_000);
    expect(order).toEqual(["normal3", "normal4", "normal5", "low0", "low1", "low2"]);
  });

  test("an urgent check with nothing pending on its lane is answered at once, not behind the threads' queue", async () => {
    expect(URGENT_CHECK).toBe(URGENT);
    const p = pool(1);
    await waitFor("ready", () => p.verifiedOnThreads === 2, 30_000);
    const [a, b, c, d] = checks(4);
    if (a === undefined || b === undefined || c === undefined || d === undefined) throw new Error("checks");
    const answered: string[] = [];
    const flood = p.lane();
    p.verify(a.key, a.message, a.sig, () => answered.push("low"), flood, 0);
    const urgent = p.lane();
    p.verify(b.key, b.message, b.sig, (ok) => answered.push(`critical ${ok}`), urgent, 3);
    // Answered before verify returned; the low check waits for its thread.
    expect(answered).toEqual([`critical ${b.valid}`]);
    expect(p.verifiedInline).toBe(1);
    // An urgent check behind a pending one on its own lane keeps the lane's order.
    p.verify(c.key, c.message, c.sig, () => answered.push("high behind low"), flood, 2);
    expect(answered.length).toBe(1);
    p.verify(d.key, d.message, d.sig, () => answered.push("high alone"), null, 2);
    expect(answered).toEqual([`critical ${b.valid}`, "high alone"]);
    await waitFor("every answer", () => answered.length === 4, 30_000);
    expect(answered.slice(2)).toEqual(["low", "high behind low"]);
  });

  test("threads 0 verifies inline, at once, with the same answers", () => {
    const p = pool(0);
    const items = checks(30);
    const answers: boolean[] = [];
    for (const c of items) p.verify(c.key, c.message, c.sig, (ok) => answers.push(ok), p.lane());
    expect(answers).toEqual(items.map((c) => c.valid));
    expect(p.verifiedInline).toBe(30);
  });

  test("a closed lane drops the answers still due", async () => {
    const p = pool(1);
    const lane = p.lane();
    const other = p.lane();
    const items = checks(4);
    const seen: string[] = [];
    for (const c of items) p.verify(c.key, c.message, c.sig, () => seen.push("closed lane"), lane);
    lane.close();
    p.verify(
      items[1]?.key as Uint8Array,
      items[1]?.message as Uint8Array,
      items[1]?.sig as Uint8Array,
      () => seen.push("open lane"),
      other,
    );
    // The open lane's answer comes after the closed lane's checks were answered (one thread, in order).
    await waitFor("the open lane's answer", () => seen.includes("open lane"), 30_000);
    expect(seen).toEqual(["open lane"]);
  });

  test("a thread that dies is reported, and the pool takes no more checks", async () => {
    const failures: string[] = [];
    const p = pool(2, (reason) => failures.push(reason));
    const threads = (p as unknown as { threads: { worker: Worker }[] }).threads;
    void threads[1]?.worker.terminate();
    await waitFor("the failure", () => failures.length > 0, 30_000);
    expect(failures[0]).toContain("verification thread 1");
    const c = checks(1)[0] as { key: Uint8Array; message: Uint8Array; sig: Uint8Array };
    let answered = false;
    p.verify(c.key, c.message, c.sig, () => {
      answered = true;
    });
    expect(answered).toBe(false);
    expect(failures.length).toBe(1);
  });

  test("every thread answers a good and a forged probe at start before the pool says it is ready", async () => {
    let ready = false;
    const p = new VerifyPool({ threads: 2, onFailure: () => {}, onReady: () => (ready = true) });
    pools.push(p);
    expect(ready).toBe(false);
    await waitFor("ready", () => ready, 30_000);
    expect(p.verifiedOnThreads).toBe(4);
    let inlineReady = false;
    pools.push(new VerifyPool({ threads: 0, onFailure: () => {}, onReady: () => (inlineReady = true) }));
    expect(inlineReady).toBe(true);
  });

  test("past LANE_CHECKS_MAX checks out on one lane, the rest run inline, still answered in order", async () => {
    const p = pool(1);
    const lane = p.lane();
    const items = checks(LANE_CHECKS_MAX + 40);
    const answers: number[] = [];
    items.forEach((c, i) => p.verify(c.key, c.message, c.sig, () => answers.push(i), lane));
    expect(p.verifiedInline).toBe(40);
    await waitFor("every answer", () => answers.length === items.length, 30_000);
    expect(answers).toEqual(items.map((_, i) => i));
  });

  test("a continuation that throws is reported and the other answers of its batch still run", async () => {
    const errors: unknown[] = [];
    const p = new VerifyPool({ threads: 1, onFailure: () => {}, onCallbackError: (error) => errors.push(error) });
    pools.push(p);
    const items = checks(5);
    const answered: number[] = [];
    items.forEach((c, i) =>
      p.verify(c.key, c.message, c.sig, () => {
        if (i === 1) throw new Error("boom");
        answered.push(i);
      }),
    );
    await waitFor("the other answers", () => answered.length === 4, 30_000);
    expect(answered).toEqual([0, 2, 3, 4]);
    expect(String(errors[0])).toContain("boom");
  });

  test("an urgent check over URGENT_INLINE_BYTES_MAX goes to the threads; one at the bound is answered at once", async () => {
    const p = pool(1);
    await waitFor("ready", () => p.verifiedOnThreads === 2, 30_000);
    const key = SigningKey.generate();
    const prefix = signingPrefix(DOMAIN_REQUEST);
    const atBound = new Uint8Array(URGENT_INLINE_BYTES_MAX - prefix.length).fill(1);
    const over = new Uint8Array(URGENT_INLINE_BYTES_MAX - prefix.length + 1).fill(2);
    const answered: string[] = [];
    p.verify(
      key.publicKey,
      { prefix, body: over },
      sign(key, signingInput(DOMAIN_REQUEST, over)),
      (ok) => answered.push(`over ${ok}`),
      null,
      3,
    );
    expect(answered).toEqual([]);
    p.verify(
      key.publicKey,
      { prefix, body: atBound },
      sign(key, signingInput(DOMAIN_REQUEST, atBound)),
      (ok) => answered.push(`at ${ok}`),
      null,
      3,
    );
    expect(answered).toEqual(["at true"]);
    await waitFor("the large check's answer", () => answered.length === 2, 30_000);
    expect(answered).toEqual(["at true", "over true"]);
    expect(p.verifiedInline).toBe(1);
    expect(p.verifiedOnThreads).toBe(3);
  });

  test("a message given as a domain prefix and a body verifies as their concatenation, on a thread and inline", async () => {
    const key = SigningKey.generate();
    const prefix = signingPrefix(DOMAIN_REQUEST);
    const body = new Uint8Array(70_000).fill(5);
    const good = sign(key, signingInput(DOMAIN_REQUEST, body));
    // Signed over the body alone: the prefix must be part of what is checked.
    const bodyOnly = sign(key, body);
    for (const threads of [1, 0]) {
      const p = pool(threads);
      if (threads > 0) await waitFor("the start probe answered", () => p.verifiedOnThreads === 2);
      const answers: boolean[] = [];
      p.verify(key.publicKey, { prefix, body }, good, (ok) => answers.push(ok));
      p.verify(key.publicKey, { prefix, body }, bodyOnly, (ok) => answers.push(ok));
      p.verify(key.publicKey, body, bodyOnly, (ok) => answers.push(ok));
      await waitFor("three answers", () => answers.length === 3, 30_000);
      expect(answers).toEqual([true, false, true]);
      expect(threads === 0 ? p.verifiedInline : p.verifiedOnThreads - 2).toBe(3);
    }
    const packed = unpackBatch(packBatch([{ key: key.publicKey, sig: good, prefix, message: body }]));
    expect(packed[0]?.message).toEqual(signingInput(DOMAIN_REQUEST, body));
  });

  test("a batch packs into one buffer and reads back the same triples, an empty message included", () => {
    const items = checks(5).map(({ key, message, sig }) => ({ key, message, sig }));
    items.push({ key: items[0]?.key as Uint8Array, message: new Uint8Array(0), sig: new Uint8Array(64).fill(9) });
    const back = unpackBatch(packBatch(items));
    expect(back.map((b) => [b.key, b.sig, b.message])).toEqual(items.map((i) => [i.key, i.sig, i.message]));
    expect(() => packBatch([{ key: new Uint8Array(31), sig: new Uint8Array(64), message: new Uint8Array(1) }])).toThrow(RangeError);
  });

  test("a turn's checks go out in batches of at most BATCH_BYTES_MAX message bytes, each check in one", async () => {
    const p = pool(1);
    await waitFor("the start probe answered", () => p.verifiedOnThreads === 2);
    const key = SigningKey.generate();
    const big = Math.floor(BATCH_BYTES_MAX * 0.6);
    const items = [0, 1, 2].map((i) => {
      const message = new Uint8Array(big).fill(i);
      return { message, sig: sign(key, message) };
    });
    const before = p.batchesSent;
    const answers: boolean[] = [];
    for (const item of items) p.verify(key.publicKey, item.message, item.sig, (ok) => answers.push(ok));
    await waitFor("three answers", () => answers.length === 3, 30_000);
    expect(answers).toEqual([true, true, true]);
    // Two of them would pass the bound together: three batches, one check each.
    expect(p.batchesSent - before).toBe(3);
  });

  test("a key or signature of the wrong size is answered false inline, and the pool goes on", async () => {
    const p = pool(1);
    const [good] = checks(2).filter((c) => c.valid);
    const answers: boolean[] = [];
    p.verify(new Uint8Array(31), new Uint8Array(8), new Uint8Array(64), (ok) => answers.push(ok));
    p.verify(good?.key as Uint8Array, good?.message as Uint8Array, new Uint8Array(63), (ok) => answers.push(ok));
    expect(answers).toEqual([false, false]);
    expect(p.verifiedInline).toBe(2);
    p.verify(good?.key as Uint8Array, good?.message as Uint8Array, good?.sig as Uint8Array, (ok) => answers.push(ok));
    await waitFor("the good check answered by the thread", () => answers.length === 3);
    expect(answers[2]).toBe(true);
  });

  test("a thread that stops answering stops the pool, with the reason, once a batch waited past the bound", async () => {
    let reason = "";
    const p = new VerifyPool({
      threads: 1,
      onFailure: (why) => {
        reason = why;
      },
      answerDeadlineMs: 200,
      workerEntry: new URL("./hung-thread-fixture.ts", import.meta.url).href,
    });
    pools.push(p);
    // The start probe is the first batch it leaves unanswered.
    await waitFor("the pool to report the silent thread", () => reason !== "", 10_000);
    expect(reason).toMatch(/^verification thread 0 answered nothing for [\d.]+ s with a batch of checks in hand \(the bound is 0.2 s\)$/);
  });

  test("past CHECK_BYTES_IN_FLIGHT_MAX signed bytes out on the threads, a check runs inline, and the room comes back with the answers", async () => {
    let ready = false;
    const p = new VerifyPool({ threads: 1, onFailure: () => {}, onReady: () => (ready = true) });
    pools.push(p);
    // The start probe's checks are out on the thread until it answers them.
    await waitFor("the thread's start probe answered", () => ready);
    const key = SigningKey.generate();
    const message = new Uint8Array(2 * 1024 * 1024);
    const sig = sign(key, message);
    const fit = CHECK_BYTES_IN_FLIGHT_MAX / message.length;
    const onThreadsBefore = p.verifiedOnThreads;
    let answered = 0;
    let valid = 0;
    const done = (ok: boolean): void => {
      answered++;
      if (ok) valid++;
    };
    for (let i = 0; i < fit + 8; i++) p.verify(key.publicKey, message, sig, done);
    expect(p.verifiedInline).toBe(8);
    await waitFor("every check answered", () => answered === fit + 8, 60_000);
    expect(valid).toBe(fit + 8);
    expect(p.verifiedOnThreads - onThreadsBefore).toBe(fit);
    // The answers gave the room back: the next check goes to the thread again.
    p.verify(key.publicKey, message, sig, done);
    await waitFor("the next check answered", () => answered === fit + 9, 60_000);
    expect(p.verifiedOnThreads - onThreadsBefore).toBe(fit + 1);
  });

  test("a thread count out of range is refused", () => {
    expect(() => new VerifyPool({ threads: -1, onFailure: () => {} })).toThrow("threads must be an integer");
    expect(() => new VerifyPool({ threads: 65, onFailure: () => {} })).toThrow("threads must be an integer");
  });
});
