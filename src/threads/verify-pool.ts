/**
 * Client signatures verified off the event loop (src/README.md §4): a small pool of
 * worker threads (verify-worker.ts) takes the ed25519 checks of client requests, so the
 * thread that owns the sockets, the ordering core and storage does not spend most of its
 * time in them, and a replica uses more than one core.
 *
 * Batches, never single checks: every check asked for in one event-loop turn goes out at
 * the end of the turn (setImmediate), split over the threads by how much each has in
 * hand, one message per thread. Answers come back per batch.
 *
 * Order: checks asked on one lane (a client session) are answered on that lane in the
 * order they were asked, whatever thread finished first, so a client's requests reach
 * the replica in the order it sent them, exactly as without threads.
 *
 * Urgency: checks go out most urgent first, and an urgent check (a high or critical
 * channel's request from a key allowed to send it, or an admin command) whose lane has
 * nothing else pending is verified inline at once, not behind a flood's checks on the
 * threads' queues, up to URGENT_INLINE_PER_WINDOW a window.
 *
 * Bounds: at most CHECKS_IN_FLIGHT_MAX checks (CHECK_BYTES_IN_FLIGHT_MAX signed bytes) are
 * out at once, and at most LANE_CHECKS_MAX of one lane; past any of them a check runs inline (it costs the loop, which
 * then reads that session no faster than it verifies, but nothing waits without bound and
 * nothing is dropped).
 *
 * A batch travels as one ArrayBuffer, transferred, not cloned (`packBatch`): the keys,
 * signatures and messages are copied into it once, at most BATCH_BYTES_MAX of them, and the
 * thread reads them in place. Structured cloning arrays of byte arrays instead cost the
 * event loop about 2.5 times as much for 200 kB requests (and each view into a frame's
 * buffer would have carried the whole buffer).
 * `threads: 0` runs every check inline, synchronously (small hosts; the tests compare).
 *
 * A thread that fails (throws, exits, answers its start probe wrong, or answers nothing
 * for THREAD_ANSWER_MS_MAX with a batch in hand: answer-watch.ts) cannot be trusted to
 * answer: the pool calls `onFailure`, which stops the replica (fatal.ts); systemd restarts
 * it. The probe is answered within moments of the start; requests that arrive
 * before it wait on the threads like any other.
 */
import { sign, verify } from "../crypto/ed25519.ts";
import { concatBytes } from "../crypto/encoding.ts";
import { SigningKey } from "../crypto/keys.ts";
import { AnswerWatch, THREAD_ANSWER_MS_MAX } from "./answer-watch.ts";
import { workerEntry } from "./entry.ts";
import { BATCH_BYTES_MAX, KEY_BYTES, packBatch, SIG_BYTES, signedLength } from "./verify-batch.ts";

/** A batch to a thread: the checks packed into one transferable buffer (verify-batch.ts). */
export interface VerifyBatch {
  readonly id: number;
  readonly packed: ArrayBuffer;
}

/** A thread's answer: one byte per item, 1 when the signature verifies. */
export interface VerifyResults {
  readonly id: number;
  readonly results: Uint8Array;
}

/** Checks sent to threads and not yet answered, over all threads. */
export const CHECKS_IN_FLIGHT_MAX = 16_384;
/**
 * Signed bytes queued for or out on the threads, over all checks: each batch is a copy of
 * them. By count alone, 16,384 version 1 requests of 2 MiB would be 32 GiB of copies; a
 * replica's checks are small (version 2 requests are signed over a 32-byte digest), so this
 * binds only large version 1 bodies, which then run inline.
 */
export const CHECK_BYTES_IN_FLIGHT_MAX = 64 * 1024 * 1024;
/** Checks of one lane (one client session) out on threads at once. */
export const LANE_CHECKS_MAX = 256;
/** Most checks in one message to a thread. */
export const CHECKS_PER_BATCH_MAX = 1_024;
/**
 * Urgent checks verified inline at most, per window: 200 per 100 ms is about a tenth of
 * the event loop at ~50 us a check. Past it an alert storm (or a publisher of an urgent
 * channel flooding) goes to the threads like any other check.
 */
export const URGENT_INLINE_PER_WINDOW = 200;
export const URGENT_INLINE_WINDOW_MS = 100;
/**
 * The largest urgent check verified inline. An alert is a few events; a signed message of
 * hundreds of KiB (a version 1 bulk publish on an urgent channel) takes the event loop most
 * of a millisecond to hash and verify, and a copy to join its domain prefix: it goes to the
 * threads like any other check. A version 2 request's check is over 32 bytes of digest and
 * always small.
 */
export const URGENT_INLINE_BYTES_MAX = 16 * 1024;
/**
 * The urgency from which a check is urgent: high and critical, the ordering core's URGENT
 * (threads do not import the core; a test keeps the two equal).
 */
export const URGENT_CHECK = 2;
/** Most threads a replica starts (`--threads`). */
export const THREADS_MAX = 64;

export interface VerifyPoolOptions {
  /** Threads to start; 0: verify inline on the calling thread. */
  readonly threads: number;
  /** A thread failed: the replica cannot go on. Must not return normally in production. */
  readonly onFailure: (reason: string) => void;
  /** Every thread answered a first check correctly (at once with 0 threads). */
  readonly onReady?: () => void;
  /** A continuation threw (a bug in the caller): reported, and the other answers still run. */
  readonly onCallbackError?: (error: unknown) => void;
  /** How long a thread may answer nothing with a batch in hand before `onFailure` (THREAD_ANSWER_MS_MAX by default; tests shorten it). */
  readonly answerDeadlineMs?: number;
  /** The threads' code (`new Worker`'s specifier): verify-worker.ts by default; tests give a thread that misbehaves. */
  readonly workerEntry?: string;
}

/** A check's continuation: called once with whether the signature verifies. */
export type Verified = (ok: boolean) => void;

/**
 * What a signature covers: bytes as they are, or `prefix || body` (a domain tag before a
 * request body: wire/session.ts signingPrefix), joined only where it is verified, so a
 * body of megabytes is not copied first to be copied again into a thread's batch.
 */
export type SignedMessage = Uint8Array | { readonly prefix: Uint8Array; readonly body: Uint8Array };

interface Check {
  readonly key: Uint8Array;
  readonly prefix: Uint8Array | undefined;
  readonly message: Uint8Array;
  readonly sig: Uint8Array;
  readonly lane: Lane | null;
  /** The check's place in its lane's line (-1 without a lane). */
  readonly position: number;
  readonly done: Verified;
  /** Higher goes out first (the request's channel priority). */
  readonly urgency: number;
}

interface Thread {
  readonly worker: Worker;
  /** Checks sent to this thread and not answered. */
  inHand: number;
  /** Its batches sent and not answered: silent too long with one in hand, it stops the replica. */
  readonly watch: AnswerWatch;
}

/** The default thread count: the cores but one (the event loop's), at least 1, at most 8. */
export function defaultThreads(): number {
  const cores = typeof navigator !== "undefined" ? navigator.hardwareConcurrency : 1;
  return Math.max(1, Math.min(8, cores - 1));
}

export class VerifyPool {
  private readonly threads: Thread[] = [];
  private queued: Check[] = [];
  private scheduled = false;
  private nextId = 1;
  private inFlight = 0;
  /** Signed bytes of the checks queued and out on threads. */
  private bytesInFlight = 0;
  private readonly sent = new Map<number, { thread: Thread; checks: Check[] }>();
  private stopped = false;
  /** Checks verified on a thread, and inline (no threads, or the pool was full). */
  verifiedOnThreads = 0;
  verifiedInline = 0;
  private urgentWindowStart = Number.NEGATIVE_INFINITY;
  private urgentInlineInWindow = 0;
  /** Messages sent to threads (one per batch). */
  batchesSent = 0;

  constructor(private readonly options: VerifyPoolOptions) {
    if (!Number.isInteger(options.threads) || options.threads < 0 || options.threads > THREADS_MAX) {
      throw new RangeError(`threads must be an integer in 0..${THREADS_MAX}, got ${options.threads}`);
    }
    for (let i = 0; i < options.threads; i++) this.threads.push(this.startThread(i));
    this.probe();
  }

  /**
   * A good and a forged signature to every thread at start: a thread that cannot load, or
   * answers wrong, stops the replica before it takes a client, not at its first request.
   */
  private probe(): void {
    const key = SigningKey.generate();
    const message = new TextEncoder().encode("fitb verification thread probe");
    const good = sign(key, message);
    const forged = good.slice();
    forged[0] = (forged[0] as number) ^ 1;
    let waiting = this.threads.length * 2;
    if (waiting === 0) {
      this.options.onReady?.();
      return;
    }
    const expect = (want: boolean) => (ok: boolean) => {
      if (ok !== want) return this.fail(`a verification thread answered ${ok} for a ${want ? "good" : "forged"} signature`);
      if (--waiting === 0) this.options.onReady?.();
    };
    for (const thread of this.threads) {
      this.bytesInFlight += 2 * message.length;
      this.send(thread, [
        { key: key.publicKey, prefix: undefined, message, sig: good, lane: null, position: -1, done: expect(true), urgency: 0 },
        { key: key.publicKey, prefix: undefined, message, sig: forged, lane: null, position: -1, done: expect(false), urgency: 0 },
      ]);
    }
  }

  get threadCount(): number {
    return this.threads.length;
  }

  /** A lane whose answers come back in the order its checks were asked (one per client session). */
  lane(): Lane {
    return new Lane();
  }

  /**
   * Verifies `sig` over `message` for `key`; `done` runs once with the outcome (at once
   * when inline). Checks of higher `urgency` (a channel's priority) go out first in the
   * turn's batches.
   */
  verify(key: Uint8Array, signed: SignedMessage, sig: Uint8Array, done: Verified, lane: Lane | null = null, urgency = 0): void {
    if (this.stopped) return;
    const laneFull = lane !== null && lane.pending >= LANE_CHECKS_MAX;
    // A key or signature of the wrong size cannot be packed; it fails inline, at once.
    const misshapen = key.length !== KEY_BYTES || sig.length !== SIG_BYTES;
    // A small urgent check with nothing ahead of it on its lane is answered at once: about 50 us
    // of the loop, where the threads' queue may hold tens of milliseconds of a flood's checks.
    const [prefix, message] = signed instanceof Uint8Array ? [undefined, signed] : [signed.prefix, signed.body];
    const bytes = (prefix?.length ?? 0) + message.length;
    const small = bytes <= URGENT_INLINE_BYTES_MAX;
    const urgentAlone = urgency >= URGENT_CHECK && small && (lane === null || lane.pending === 0) && this.takeUrgentInline();
    const check: Check = { key, prefix, message, sig, lane, position: lane === null ? -1 : lane.ask(), done, urgency };
    const poolFull = this.inFlight + this.queued.length >= CHECKS_IN_FLIGHT_MAX || this.bytesInFlight + bytes > CHECK_BYTES_IN_FLIGHT_MAX;
    if (this.threads.length === 0 || laneFull || misshapen || urgentAlone || poolFull) {
      this.verifiedInline++;
      this.answer(check, verify(key, prefix === undefined ? message : concatBytes(prefix, message), sig));
      return;
    }
    this.queued.push(check);
    this.bytesInFlight += bytes;
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
  }

  /** Whether one more urgent check may run inline now: at most URGENT_INLINE_PER_WINDOW per URGENT_INLINE_WINDOW_MS. */
  private takeUrgentInline(): boolean {
    const now = performance.now();
    if (now - this.urgentWindowStart >= URGENT_INLINE_WINDOW_MS) {
      this.urgentWindowStart = now;
      this.urgentInlineInWindow = 0;
    }
    if (this.urgentInlineInWindow >= URGENT_INLINE_PER_WINDOW) return false;
    this.urgentInlineInWindow++;
    return true;
  }

  /** Stops every thread; checks not answered are dropped (the replica is stopping). */
  stop(): void {
    this.stopped = true;
    for (const thread of this.threads) {
      thread.watch.stop();
      void thread.worker.terminate();
    }
    this.sent.clear();
    this.queued = [];
  }

  private startThread(index: number): Thread {
    const worker = new Worker(this.options.workerEntry ?? workerEntry("threads/verify-worker.ts"));
    const deadlineMs = this.options.answerDeadlineMs ?? THREAD_ANSWER_MS_MAX;
    const watch = new AnswerWatch({
      deadlineMs,
      onOverdue: (waitedMs) =>
        this.fail(
          `verification thread ${index} answered nothing for ${(waitedMs / 1000).toFixed(1)} s with a batch of checks in hand (the bound is ${deadlineMs / 1000} s)`,
        ),
    });
    const thread: Thread = { worker, inHand: 0, watch };
    worker.onmessage = (event: MessageEvent<VerifyResults>) => this.onResults(event.data);
    worker.onerror = (event) => this.fail(`verification thread ${index} failed: ${event.message}`);
    worker.addEventListener("close", () => this.fail(`verification thread ${index} exited`));
    return thread;
  }

  private fail(reason: string): void {
    if (this.stopped) return;
    this.stop();
    this.options.onFailure(reason);
  }

  /** Sends what this turn asked for, in batches, to the threads with least in hand. */
  private flush(): void {
    this.scheduled = false;
    if (this.stopped) return;
    const checks = this.queued;
    this.queued = [];
    // Most urgent first; the sort is stable, so each urgency keeps its arrival order.
    if (checks.some((c) => c.urgency !== (checks[0] as Check).urgency)) checks.sort((a, b) => b.urgency - a.urgency);
    for (let start = 0; start < checks.length; ) {
      // Spread a turn's checks over every thread: each gets an equal share, at most a batch
      // (CHECKS_PER_BATCH_MAX checks, BATCH_BYTES_MAX message bytes, at least one check).
      const share = Math.min(CHECKS_PER_BATCH_MAX, Math.ceil((checks.length - start) / this.threads.length));
      let end = start + 1;
      let bytes = signedLength(checks[start] as Check);
      while (end < start + share && bytes + signedLength(checks[end] as Check) <= BATCH_BYTES_MAX) {
        bytes += signedLength(checks[end] as Check);
        end++;
      }
      const batch = checks.slice(start, end);
      start = end;
      this.send(this.leastBusy(), batch);
    }
  }

  private leastBusy(): Thread {
    let best = this.threads[0] as Thread;
    for (const thread of this.threads) if (thread.inHand < best.inHand) best = thread;
    return best;
  }

  private send(thread: Thread, checks: Check[]): void {
    const id = this.nextId++;
    const batch: VerifyBatch = { id, packed: packBatch(checks) };
    this.sent.set(id, { thread, checks });
    thread.inHand += checks.length;
    this.inFlight += checks.length;
    this.batchesSent++;
    thread.watch.sent(id);
    thread.worker.postMessage(batch, [batch.packed]);
  }

  private onResults(answer: VerifyResults): void {
    const sent = this.sent.get(answer.id);
    if (sent === undefined) return;
    this.sent.delete(answer.id);
    sent.thread.watch.answered(answer.id);
    sent.thread.inHand -= sent.checks.length;
    this.inFlight -= sent.checks.length;
    for (const check of sent.checks) this.bytesInFlight -= signedLength(check);
    if (answer.results.length !== sent.checks.length) {
      this.fail(`a verification thread answered ${answer.results.length} checks for ${sent.checks.length}`);
      return;
    }
    this.verifiedOnThreads += sent.checks.length;
    sent.checks.forEach((check, i) => this.answer(check, answer.results[i] === 1));
  }

  private answer(check: Check, ok: boolean): void {
    if (check.lane === null) this.release(check.done, ok);
    else check.lane.answer(check.position, () => this.release(check.done, ok));
  }

  /** Runs a continuation; one that throws is reported and does not keep the others of its batch from running. */
  private release(done: Verified, ok: boolean): void {
    try {
      done(ok);
    } catch (error) {
      this.options.onCallbackError?.(error);
    }
  }
}

/**
 * Answers in the order asked: an answer that overtook an earlier one on the same lane
 * waits until that one is in.
 */
export class Lane {
  private nextAsked = 0;
  private nextReleased = 0;
  private readonly ready = new Map<number, () => void>();
  private closed = false;

  /** @internal The pool takes a place in line for a check. */
  ask(): number {
    return this.nextAsked++;
  }

  /** @internal The answer for place `position`: released once every earlier place is. */
  answer(position: number, release: () => void): void {
    if (this.closed) return;
    this.ready.set(position, release);
    for (;;) {
      const next = this.ready.get(this.nextReleased);
      if (next === undefined || this.closed) return;
      this.ready.delete(this.nextReleased);
      this.nextReleased++;
      next();
    }
  }

  /** The lane's session ended: answers still due are dropped. */
  close(): void {
    this.closed = true;
    this.ready.clear();
  }

  /** Checks asked and not yet answered. */
  get pending(): number {
    return this.nextAsked - this.nextReleased;
  }
}
