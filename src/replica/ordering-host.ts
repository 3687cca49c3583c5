/**
 * Where the ordering core runs: on the event loop (`InlineCoreHost`) or on an ordering
 * thread of its own (`ThreadCoreHost`, with ordering-worker.ts). The driver
 * (src/replica/ordering-driver.ts) hands either one its inputs and gets each input's
 * `Ready` back, in input order; what it does with a Ready (records to the group commit,
 * effects after they are durable) is the same for both.
 *
 * On the thread, the core checks the signatures of peer messages and of the requests it
 * was not handed verified (forwards, proposals), and signs its own messages, off the event
 * loop. The event loop hands the thread a turn's inputs together, in one message, and
 * gets back the Readies of that batch in one message (never one event per message).
 *
 * What the driver reads of the core between steps (its status, each client's last
 * executed seq) is, on the thread, a mirror kept by the main thread from the answers: the
 * status after each step, and the last executed seq of every client a decided batch names
 * (read from the core right after that step). So the driver sees the core as of the last
 * Ready it handled, which is the state whose effects it is acting on. A new core (an
 * epoch switch) and the start are built on the main thread first, from the same records,
 * for the mirror's starting point; the core is deterministic, so the thread's copy built
 * from them is the same.
 */
import { OrderingCore } from "../core/ordering/core.ts";
import type { CoreConfig } from "../core/ordering/config.ts";
import type { Checkpoint } from "../core/ordering/messages.ts";
import type { ProposalPolicy } from "../core/ordering/priority.ts";
import type { CoreCrypto, CoreInput, CoreStatus, PersistedRecord, Ready } from "../core/ordering/types.ts";
import type { Priority } from "../core/channels/types.ts";
import { AnswerWatch, THREAD_ANSWER_MS_MAX } from "../threads/answer-watch.ts";
import { workerEntry } from "../threads/entry.ts";

/** The ordering thread's name in `top -H`, `ps -L` and /proc/PID/task/TID/comm (Linux). */
export const ORDERING_THREAD_NAME = "fitb-ordering";

/** A request the runtime verified before submitting it: the cache key and stamp the core's check would compute. */
export interface VerifiedMark {
  readonly cacheKey: string;
  readonly stamp: number;
}

/** What one step gave: its Ready, called in input order. */
export type ReadyHandler = (ready: Ready) => void;

/** A fetched state the runtime is about to install: its checkpoint and what vouched for it. */
export interface ClaimedState {
  readonly seq: number;
  readonly stateDigest: Uint8Array;
  readonly proof: readonly Checkpoint[];
}

export interface CoreHost {
  /**
   * Runs `input` on the core; `handle` gets its Ready (inline: before step returns; on the
   * thread: later, in input order). False: the input was not handed over (the thread is
   * THREAD_STEPS_IN_FLIGHT_MAX steps behind) and `handle` never runs.
   */
  step(input: CoreInput, handle: ReadyHandler, verified?: VerifiedMark): boolean;
  /** The core's status (on the thread: as of the last Ready handed back). */
  status(): CoreStatus;
  /** A client's last executed seq (on the thread: as of the last Ready handed back). */
  lastExecutedOf(client: string): number;
  /** Replaces the core by one built from `restored` (an epoch switch); later inputs go to it. */
  replace(cfg: CoreConfig, restored: readonly PersistedRecord[], keys: readonly Uint8Array[]): void;
  /**
   * A fetched state for checkpoint `state.seq` is ready to install: `answer(true)` if the
   * core would install it (its target, or an older state its proof vouches for:
   * OrderingCore.acceptsSnapshot), and then the core takes no other input until the
   * `snapshotInstalled` step for that seq (or `releaseTransfer`), so the answer still
   * holds when the machine has installed it. Inline, at once.
   */
  claimTransfer(state: ClaimedState, answer: (wanted: boolean) => void): void;
  /** The claimed state did not install after all: the core goes on with its other inputs. */
  releaseTransfer(): void;
  /** Whether the core needs `setPriorities` (on the thread); inline, its policy reads the channel machine itself. */
  readonly followsPriorities: boolean;
  /** The channels' priorities changed (the leader's batch fill reads them). */
  setPriorities(priorities: readonly (readonly [string, Priority])[]): void;
  /** Stops; nothing more is handed back. */
  stop(): void;
}

/**
 * A byte view whose buffer is larger than this (twice the view, plus 4 KiB) is copied out
 * before it crosses to or from the thread: a structured clone copies a view's whole buffer,
 * and a 32-byte digest decoded from a socket read is a view into that read's buffer.
 */
function oversized(view: Uint8Array): boolean {
  return view.buffer.byteLength > view.byteLength * 2 + 4096;
}

/**
 * Byte views of at least this many bytes cross to and from the thread in shared memory:
 * copied once into a SharedArrayBuffer of their own on the side that hands them over, after
 * which `postMessage` passes a reference, and every later crossing of the same bytes (a
 * request body handed over, then back in the proposal, its accept record and its decision)
 * is free. A structured clone instead copies the bytes into the message and out again on
 * the other side, at every crossing. Below this a clone costs less than a shared buffer's
 * allocation (README, Performance, "The ordering thread").
 */
export const SHARED_BYTES_MIN = 2048;

/**
 * How a byte view crosses to or from the thread: one that has a shared buffer of about its
 * own size as it is (a reference); a large one copied into shared memory (once per call of
 * `compacted`, however often the value names it); an oversized view into a larger buffer,
 * shared or not, copied out (a reference would keep the whole buffer alive on the other
 * side); any other as it is (cloned).
 */
function crossing(view: Uint8Array, copies: Map<Uint8Array, Uint8Array>): Uint8Array {
  const big = oversized(view);
  if (view.buffer instanceof SharedArrayBuffer && !big) return view;
  if (view.byteLength >= SHARED_BYTES_MIN) {
    const copied = copies.get(view);
    if (copied !== undefined) return copied;
    const shared = new Uint8Array(new SharedArrayBuffer(view.byteLength));
    shared.set(view);
    copies.set(view, shared);
    return shared;
  }
  return big ? view.slice() : view;
}

/**
 * `value` ready to cross to or from the thread: every byte view as `crossing` says, sharing
 * every part that has none that changed (objects and arrays are copied only on the way to a
 * view that changed; the caller's are never written). Plain data only: what crosses to the
 * thread is. The bytes are never written after they are handed over, on either side: a
 * request body, a message or a record is immutable once built. An object named twice that
 * holds a copied view (a large request in a proposal, its record and its decision) arrives
 * as two equal objects over one shared body: nothing relies on their identity, and looking
 * each object up to keep it would cost every step, most of which copy nothing.
 */
export function compacted<T>(value: T): T {
  return walk(value, new Map());
}

function walk<T>(value: T, copies: Map<Uint8Array, Uint8Array>): T {
  if (value instanceof Uint8Array) return crossing(value, copies) as T;
  if (Array.isArray(value)) {
    let out: unknown[] | null = null;
    for (let i = 0; i < value.length; i++) {
      const item = walk(value[i] as unknown, copies);
      if (item !== value[i]) {
        out ??= value.slice();
        out[i] = item;
      }
    }
    return (out ?? value) as T;
  }
  if (value !== null && typeof value === "object" && !(value instanceof Map) && !(value instanceof Set)) {
    let out: Record<string, unknown> | null = null;
    for (const key of Object.keys(value)) {
      const field = (value as Record<string, unknown>)[key];
      const item = walk(field, copies);
      if (item !== field) {
        out ??= { ...(value as Record<string, unknown>) };
        out[key] = item;
      }
    }
    return (out ?? value) as T;
  }
  return value;
}

/** The core threw in a step (an assertion): the replica's state can no longer be trusted. */
export class CoreStepFailed extends Error {}

/** The core on the event loop: every call is the core's own, synchronously. */
export class InlineCoreHost implements CoreHost {
  constructor(
    private core: OrderingCore,
    private readonly crypto: CoreCrypto,
    private readonly policy: ProposalPolicy,
  ) {}

  step(input: CoreInput, handle: ReadyHandler): boolean {
    let ready: Ready;
    try {
      ready = this.core.step(input);
    } catch (error) {
      throw new CoreStepFailed((error as Error).message);
    }
    handle(ready);
    return true;
  }

  status(): CoreStatus {
    return this.core.status();
  }

  lastExecutedOf(client: string): number {
    return this.core.lastExecutedOf(client);
  }

  replace(cfg: CoreConfig, restored: readonly PersistedRecord[]): void {
    this.core = new OrderingCore(cfg, this.crypto, restored, this.policy);
  }

  claimTransfer(state: ClaimedState, answer: (wanted: boolean) => void): void {
    answer(this.core.acceptsSnapshot(state.seq, state.stateDigest, state.proof));
  }

  releaseTransfer(): void {}

  readonly followsPriorities = false;

  setPriorities(): void {}

  stop(): void {}
}

// ---------------------------------------------------------------------------------------
// The ordering thread
// ---------------------------------------------------------------------------------------

/** What the main thread asks of the ordering thread, in order, several per message. */
export type HostOp =
  | {
      readonly k: "init";
      readonly cfg: CoreConfig;
      readonly restored: readonly PersistedRecord[];
      /** This replica's signing seed (its peer messages are signed on the thread). */
      readonly seed: Uint8Array;
      /** The epoch's public keys, by rank. */
      readonly keys: readonly Uint8Array[];
      readonly priorities: readonly (readonly [string, Priority])[];
    }
  | { readonly k: "step"; readonly id: number; readonly input: CoreInput; readonly verified?: VerifiedMark }
  /** claimTransfer: answered `claim`; if wanted, the thread holds every step but the install's until it comes (or `release`). */
  | { readonly k: "claim"; readonly id: number; readonly state: ClaimedState }
  | { readonly k: "release" }
  | {
      readonly k: "replace";
      readonly cfg: CoreConfig;
      readonly restored: readonly PersistedRecord[];
      readonly keys: readonly Uint8Array[];
    }
  | { readonly k: "priorities"; readonly priorities: readonly (readonly [string, Priority])[] };

/** What the ordering thread answers: one per `step` op (in order, but for a claimed transfer's install, which overtakes the steps held behind the claim), or the failure that stops it. */
export type HostAnswer =
  /** The thread built its first core. */
  | { readonly k: "started" }
  | { readonly k: "claim"; readonly id: number; readonly wanted: boolean }
  | {
      readonly k: "ready";
      /** The step's id: a claimed transfer lets the install's step overtake those held behind it. */
      readonly id: number;
      /** Which core answered: 0 for the first, one more at each `replace`. */
      readonly gen: number;
      readonly ready: Ready;
      /** `clients` is the core's whole client table (after an installed snapshot), not only what moved. */
      readonly allClients: boolean;
      readonly status: CoreStatus;
      /** The last executed seq, after this step, of every client its decided batches name. */
      readonly clients: readonly (readonly [string, number])[];
    }
  | { readonly k: "failed"; readonly reason: string };

export interface ThreadCoreHostOptions {
  /** The core the driver restored on the main thread from `restored`: the mirror starts from it (it is not kept). */
  readonly initial: OrderingCore;
  readonly cfg: CoreConfig;
  readonly restored: readonly PersistedRecord[];
  readonly seed: Uint8Array;
  readonly keys: readonly Uint8Array[];
  readonly priorities: readonly (readonly [string, Priority])[];
  /** A new epoch's core is built on the main thread too, for the mirror's starting point (`crypto` and `policy` as the driver's). */
  readonly crypto: CoreCrypto;
  readonly policy: ProposalPolicy;
  /** The thread failed (threw, exited, answered out of turn, answered nothing too long with a step in hand, or its core asserted): the replica must stop. */
  readonly onFailure: (reason: string) => void;
  /** The thread built its core. */
  readonly onReady?: () => void;
  /** A peer message or client request not handed over: THREAD_STEPS_IN_FLIGHT_MAX steps were unanswered. */
  readonly onDropped?: () => void;
  /** How long the thread may answer nothing with a step in hand before `onFailure` (THREAD_ANSWER_MS_MAX by default; tests shorten it). */
  readonly answerDeadlineMs?: number;
  /** The thread's code (`new Worker`'s specifier): ordering-worker.ts by default; tests give a thread that misbehaves. */
  readonly workerEntry?: string;
}

/**
 * Steps handed to the thread and not answered yet, at most: past it, peer messages and
 * client requests are not handed over (`onDropped`; peers retransmit; a client's request is
 * answered OVERLOADED by the driver, and sent again), while ticks and the runtime's own
 * answers always are. A thread that far behind for long is stopped by the answer watch.
 */
export const THREAD_STEPS_IN_FLIGHT_MAX = 65_536;

/** The core on an ordering thread (ordering-worker.ts), with the mirror the driver reads. */
export class ThreadCoreHost implements CoreHost {
  private readonly worker: Worker;
  private mirrorStatus: CoreStatus;
  private readonly mirrorClients = new Map<string, number>();
  /** Ops of this turn, sent together at its end. */
  private ops: HostOp[] = [];
  private scheduled = false;
  /** The handlers of steps (and claims) sent and not answered, by id. */
  private readonly waiting = new Map<number, ReadyHandler>();
  private readonly claims = new Map<number, (wanted: boolean) => void>();
  private nextId = 0;
  private stopped = false;
  /** The current core: answers of an older one (sent before a replace) leave the mirror alone. */
  private generation = 0;
  /** Steps and claims sent and not answered: a thread that answers none for too long stops the replica. */
  private readonly watch: AnswerWatch;

  constructor(private readonly options: ThreadCoreHostOptions) {
    const { cfg, restored } = options;
    this.mirrorStatus = this.mirrorFrom(options.initial);
    const deadlineMs = options.answerDeadlineMs ?? THREAD_ANSWER_MS_MAX;
    this.watch = new AnswerWatch({
      deadlineMs,
      onOverdue: (waitedMs) =>
        this.fail(
          `the ordering thread answered nothing for ${(waitedMs / 1000).toFixed(1)} s with a step in hand (the bound is ${deadlineMs / 1000} s)`,
        ),
    });
    this.worker = new Worker(options.workerEntry ?? workerEntry("replica/ordering-worker.ts"));
    this.worker.onmessage = (event: MessageEvent<readonly HostAnswer[]>) => this.onAnswers(event.data);
    this.worker.onerror = (event) => this.fail(`the ordering thread failed: ${event.message}`);
    this.worker.addEventListener("close", () => this.fail("the ordering thread exited"));
    this.push({ k: "init", cfg, restored: compacted(restored), seed: options.seed, keys: options.keys, priorities: options.priorities });
  }

  /** Steps handed to the thread and not answered yet. */
  get inFlight(): number {
    return this.waiting.size;
  }

  step(input: CoreInput, handle: ReadyHandler, verified?: VerifiedMark): boolean {
    // Stopping: the replica is going down, and nothing more is answered either way.
    if (this.stopped) return true;
    if (this.inFlight >= THREAD_STEPS_IN_FLIGHT_MAX && (input.kind === "message" || input.kind === "request")) {
      this.options.onDropped?.();
      return false;
    }
    const id = this.nextId++;
    this.waiting.set(id, handle);
    this.watch.sent(id);
    const sent = compacted(input);
    this.push(verified === undefined ? { k: "step", id, input: sent } : { k: "step", id, input: sent, verified });
    return true;
  }

  status(): CoreStatus {
    return this.mirrorStatus;
  }

  lastExecutedOf(client: string): number {
    return this.mirrorClients.get(client) ?? 0;
  }

  replace(cfg: CoreConfig, restored: readonly PersistedRecord[], keys: readonly Uint8Array[]): void {
    if (this.stopped) return;
    this.generation++;
    this.mirrorClients.clear();
    this.mirrorStatus = this.mirrorFrom(new OrderingCore(cfg, this.options.crypto, restored, this.options.policy));
    this.push({ k: "replace", cfg, restored: compacted(restored), keys });
  }

  claimTransfer(state: ClaimedState, answer: (wanted: boolean) => void): void {
    if (this.stopped) return;
    const id = this.nextId++;
    this.claims.set(id, answer);
    this.watch.sent(id);
    this.push({ k: "claim", id, state: { seq: state.seq, stateDigest: state.stateDigest, proof: [...state.proof] } });
  }

  releaseTransfer(): void {
    this.push({ k: "release" });
  }

  readonly followsPriorities = true;

  setPriorities(priorities: readonly (readonly [string, Priority])[]): void {
    this.push({ k: "priorities", priorities });
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.ops = [];
    this.watch.stop();
    void this.worker.terminate();
  }

  /** For tests: ends the thread as a crash would (the replica must stop, with a reason). */
  terminateForTest(): void {
    void this.worker.terminate();
  }

  private mirrorFrom(core: OrderingCore): CoreStatus {
    for (const [client, seq] of core.exportClients()) this.mirrorClients.set(client, seq);
    return core.status();
  }

  private push(op: HostOp): void {
    this.ops.push(op);
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => this.flush());
  }

  private flush(): void {
    this.scheduled = false;
    if (this.stopped || this.ops.length === 0) return;
    const ops = this.ops;
    this.ops = [];
    this.worker.postMessage(ops);
  }

  private onAnswers(answers: readonly HostAnswer[]): void {
    if (this.stopped) return;
    for (const answer of answers) {
      if (answer.k === "failed") {
        this.fail(answer.reason);
        return;
      }
      if (answer.k === "started") {
        this.options.onReady?.();
        continue;
      }
      if (answer.k === "claim") {
        const claimed = this.claims.get(answer.id);
        this.claims.delete(answer.id);
        this.watch.answered(answer.id);
        if (claimed === undefined) {
          this.fail("the ordering thread answered a claim it was not given");
          return;
        }
        claimed(answer.wanted);
        if (this.stopped) return;
        continue;
      }
      const handle = this.waiting.get(answer.id);
      if (handle === undefined) {
        this.fail("the ordering thread answered a step it was not given");
        return;
      }
      this.waiting.delete(answer.id);
      this.watch.answered(answer.id);
      if (answer.gen === this.generation) {
        if (answer.allClients) this.mirrorClients.clear();
        this.mirrorStatus = answer.status;
        for (const [client, seq] of answer.clients) this.mirrorClients.set(client, seq);
      }
      handle(answer.ready);
      if (this.stopped) return;
    }
  }

  private fail(reason: string): void {
    if (this.stopped) return;
    this.stop();
    this.options.onFailure(reason);
  }
}
