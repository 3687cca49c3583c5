/**
 * One line-protocol connection of the relay: it parses the client's bytes, runs each
 * command against the shared client library, and writes the answers in command order
 * (wire/PROTOCOL.md section 11.2) with EVENT / EVENTB / END lines in between.
 *
 * Everything a connection holds is bounded:
 * - commands whose answer is not yet written: `pendingAnswersMax`; past it the
 *   connection stops reading (the bytes already received wait, unparsed, and the socket
 *   is paused, so TCP pushes back on the client); input is parsed a slice at a time, so
 *   the parsed commands waiting to run are few whatever arrives at once;
 * - bytes not yet taken by the socket: event lines (of every subscription of the
 *   connection, those waiting for a SUB's `+OK` included) stop at `eventOutboundBytesMax`,
 *   and the subscription output of all connections together at `relayOutboundBytesMax`;
 *   there the subscription that overflowed is ended with `END <tag> SLOW` (a reader that
 *   does not keep up loses its subscription, not the relay its memory). Answers end no
 *   subscription: they stop the running of commands (and so the reading) once the
 *   connection's output passes `readPauseOutboundBytes`, checked before every command, or
 *   once the answers of all connections pass `relayAnswerOutboundBytesMax` while this one
 *   has output waiting; a hard bound above all of them ends the connection;
 * - the event loop: input is run a slice at a time with a turn of the event loop between
 *   two slices, so one pipelining connection cannot keep the others waiting;
 * - time: output that waits `outputStallTimeoutMs` without the client reading any of it
 *   ends the connection, so a reader that stopped for good gives its memory back;
 * - subscriptions: `subscriptionsPerConnectionMax`;
 * - event bytes of its publishes: each tag's publisher bounds its own queue, and the
 *   connection its own unanswered bytes (`connectionPublishBytesMax`); at either a PUB
 *   waits, which pauses reading. The relay-wide `publishBytes` budget bounds every
 *   connection's publishes together (past it a PUB is refused with `-ERR OVERLOADED`,
 *   since waiting on the others' publishes would stall every client).
 *
 * Why one file of more than 600 lines: every bound above acts on the same ordered stream
 * of answers and event lines, and the order of answers is easiest to check with the
 * whole pipeline (parse, run, answer, write) in view.
 */
import { concatByteList } from "../crypto/encoding.ts";
import { ClientClosedError, ClientError, describeError, SubscriptionEndedError } from "../client/errors.ts";
import { isPattern } from "../client/pattern.ts";
import { InOrder, type Settled } from "../client/in-order.ts";
import type { EventAck, Publisher } from "../client/publisher.ts";
import {
  eventSeq,
  type BatchHandler,
  type ReceivedBatch,
  type SubscribeOptions,
  type SubscriptionHandle,
  type SubscriptionSignal,
} from "../client/subscription.ts";
import { formatPublicKey } from "../crypto/keys.ts";
import { WriteQueue } from "../net/write-queue.ts";
import { SUB_END_CODES, type ErrorCode, type SubEndCode } from "../../wire/types.ts";
import { ackLine, endLine, errLine, eventBytes, OK_LINE, PONG_LINE } from "./format.ts";
import { RelayLineParser, type RelayCommand, type RelayInput } from "./parser.ts";
import type { ResolvedRelayLimits } from "./limits.ts";
import type { RelayMetrics } from "./metrics.ts";
import { type RelayOutputBytes, OutputRuns } from "./output-bytes.ts";
import type { PublishBytesBudget } from "./publish-bytes.ts";

const encoder = new TextEncoder();
/**
 * Input is parsed this much at a time, and the commands of one slice run before the next
 * is parsed: what a burst of input costs in parsed commands stays small. Between two
 * slices the event loop takes a turn (nextTurn), so other connections are read and
 * answered while one works through a long pipeline.
 */
export const RELAY_PARSE_SLICE_BYTES = 16 * 1024;

/**
 * Resolves after the event loop's next turn, I/O included. Every other await of the pump
 * waits on a promise that is often already settled, which only runs the microtask queue:
 * without this the pump would work through a connection's whole input in one turn.
 */
function nextTurn(): Promise<void> {
  return new Promise<void>((resolve) => setImmediate(resolve));
}

/** The socket as a connection uses it (Bun's TCP socket, or a test double). */
export interface LineSocket {
  /** Writes what the kernel takes now; returns the count, or -1 once closed. */
  write(data: Uint8Array): number;
  /** Stops (and restarts) reading, so that TCP flow control slows the client down. */
  pause(): void;
  resume(): void;
  /** Closes after what was written so far (FIN). */
  end(): void;
  /** Closes at once (RST). */
  terminate(): void;
}

/** The clock and timers a connection uses: the real ones, or a test's hand-driven clock. */
export interface RelayTimers {
  now(): number;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const REAL_RELAY_TIMERS: RelayTimers = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/** What a connection needs from the relay around it. */
export interface RelayBackend {
  readonly limits: ResolvedRelayLimits;
  /** Counts publishes, acks and deliveries (metrics.ts); null: not counted. */
  readonly metrics: RelayMetrics | null;
  /** Event bytes of publishes not yet answered, shared by every connection. */
  readonly publishBytes: PublishBytesBudget;
  /** Output bytes waiting for readers, summed over every connection. */
  readonly outputBytes: RelayOutputBytes;
  readonly timers: RelayTimers;
  /** The shared publisher of `tag`: publishes of every connection to a tag batch together. */
  publisherFor(tag: string): Publisher;
  /** `tag` may be a pattern (net.*, net.>): one subscription that follows every matching channel. */
  subscribe(tag: string, options: SubscribeOptions, onBatch: BatchHandler): Promise<SubscriptionHandle>;
  log(message: string): void;
  /** A subscription ended SLOW: logged, at most one line per SLOW_LOG_INTERVAL_MS with a count of the others (server.ts). */
  logSlow(message: string): void;
  /** Added to a refusal of the relay's key: ` (key ed25519:... of this relay)`; empty: nothing added. */
  readonly keyNote?: string;
}

/**
 * What written bytes are: an answer to a command (`+OK`, `-ERR`, `PONG`), or the output of
 * a subscription (EVENT, EVENTB and END lines). They are bounded apart: a subscription's
 * reader that falls behind is ended SLOW, commands whose answers are not read wait.
 */
type OutputKind = "answer" | "subscription";

/** An answer line, and what to do once it is written (a SUB's events may follow only then). */
interface Answer {
  readonly line: string;
  readonly after?: () => void;
}

/**
 * Where a subscription's reader stopped: the channel, and the seq of the first event it
 * was not sent (null on `order: none` channels, which cannot resume from a seq).
 */
interface ResumePoint {
  readonly channel: string;
  readonly seq: number | null;
}

/** One `SUB` of this connection. */
interface RelaySub {
  readonly tag: string;
  /** A pattern (net.*): it follows many channels and takes no from-seq. */
  readonly pattern: boolean;
  subscription: SubscriptionHandle | null;
  /** Set by UNSUB, by an end, or when the connection goes: nothing more is written for it. */
  closed: boolean;
  /** Whether the SUB's `+OK` is written; event (and a pattern's END) lines before it wait in `held`. */
  answered: boolean;
  held: Uint8Array[];
  heldBytes: number;
  /** The first event held, where a reader resumes if the held events are dropped. */
  firstHeld: ResumePoint | null;
  /** An END line that must wait for the `+OK`. */
  pendingEnd: string | null;
  /** Where a trimmed history starts, as the subscription reported it. */
  trimmedOldest: number | null;
}

type FinishState = "open" | "closing" | "closed";

export class RelayConnection {
  private readonly parser = new RelayLineParser();
  private readonly answers: InOrder<Answer>;
  private readonly outbound: WriteQueue;
  /** Commands parsed from the current slice; those from `backlogAt` on have not run yet. */
  private backlog: RelayInput[] = [];
  private backlogAt = 0;
  /** Bytes received and not yet parsed. */
  private inbox: Uint8Array[] = [];
  private inboxBytes = 0;
  private readonly subs = new Map<string, RelaySub>();
  /** Bytes held for every SUB whose `+OK` is not yet written (the sum of their heldBytes). */
  private heldBytes = 0;
  private readonly roomWaiters: (() => void)[] = [];
  /** The pump, waiting for the client to read its output (outputWaits). */
  private readonly outputWaiters: (() => void)[] = [];
  /** Event bytes of this connection's publishes not yet answered. */
  private publishBytesHeld = 0;
  /** PUBs waiting for this connection's own publishes to be answered. */
  private readonly publishWaiters: (() => void)[] = [];
  private pendingWrites: Uint8Array[] = [];
  private pendingWriteBytes = 0;
  /** Which queued bytes (pendingWrites, then outbound) are answers. */
  private readonly queuedRuns = new OutputRuns();
  /** Answer and subscription bytes last counted in the relay-wide totals (backend.outputBytes). */
  private reportedAnswerBytes = 0;
  private reportedSubscriptionBytes = 0;
  /** When output last went out, or began to wait: the stall timeout runs from here. */
  private outputProgressAt = 0;
  private stallTimer: unknown = null;
  private flushScheduled = false;
  private pumping = false;
  private paused = false;
  /** QUIT was read, or the relay is stopping: no further command runs. */
  private quitting = false;
  /** The client sent FIN: no more commands will come. */
  private inputEnded = false;
  /** After the FIN, the parser was told the input ended (finishInput). */
  private inputFinished = false;
  private state: FinishState = "open";
  /** FIN sent: nothing more is written. */
  private endSent = false;
  private closeTimer: unknown = null;

  constructor(
    private readonly socket: LineSocket,
    private readonly backend: RelayBackend,
    /** Called once, when the connection is gone. */
    private readonly onGone: (connection: RelayConnection) => void,
  ) {
    const limits = backend.limits;
    this.answers = new InOrder<Answer>((outcome) => this.emitAnswer(outcome), limits.pendingAnswersMax);
    this.outbound = new WriteQueue(limits.outboundBytesMax);
  }

  get isClosed(): boolean {
    return this.state === "closed";
  }

  /** Subscriptions open on this connection. */
  get subscriptionCount(): number {
    return this.subs.size;
  }

  // -------------------------------------------------------------------------------------
  // Socket events
  // -------------------------------------------------------------------------------------

  onData(chunk: Uint8Array): void {
    if (this.state !== "open" || this.quitting) return;
    // A copy: the socket may reuse its buffer once this callback returns.
    this.inbox.push(chunk.slice());
    this.inboxBytes += chunk.byteLength;
    void this.pump();
    // Reading pauses while input waits, so only what was in flight can pile up here.
    const inboxBytesMax = this.backend.limits.inboxBytesMax;
    if (this.inboxBytes > inboxBytesMax) {
      this.abort("OVERLOADED", `more than ${inboxBytesMax} bytes of commands arrived before the earlier ones could run`);
      return;
    }
    this.updateFlow();
  }

  /** The client closed its sending side; answer what was received, then close. */
  onEnd(): void {
    this.inputEnded = true;
    // The pump answers an unfinished last command once everything before it has run.
    void this.pump();
    this.maybeFinish();
  }

  onDrain(): void {
    const before = this.outbound.bufferedBytes;
    this.outbound.flush((data) => this.socket.write(data));
    this.watchOutput(before);
    this.syncOutputBytes();
    this.wakeOutputWaiters();
    this.updateFlow();
    this.maybeEnd();
  }

  /**
   * The socket is closed (by either side). Commands already running complete (a PUB
   * handed to its publisher is published, unseen); those parsed but not yet started are
   * dropped, never answered and never published.
   */
  onClose(): void {
    if (this.state === "closed") return;
    this.state = "closed";
    const timers = this.backend.timers;
    if (this.closeTimer !== null) timers.clearTimeout(this.closeTimer);
    this.closeTimer = null;
    if (this.stallTimer !== null) timers.clearTimeout(this.stallTimer);
    this.stallTimer = null;
    this.dropInput();
    this.pendingWrites = [];
    this.pendingWriteBytes = 0;
    this.outbound.clear();
    for (const sub of [...this.subs.values()]) this.dropSub(sub);
    this.syncOutputBytes();
    for (const wake of this.roomWaiters.splice(0)) wake();
    this.wakeOutputWaiters();
    this.onGone(this);
  }

  /**
   * The relay is stopping: no new commands, every subscription ends with `END <tag>
   * SHUTDOWN`, answers still due are written as they come, then the connection closes
   * (at the latest after closeFlushTimeoutMs).
   */
  shutdown(): void {
    if (this.state !== "open") return;
    this.quitting = true;
    this.dropInput();
    this.wakeOutputWaiters();
    for (const sub of [...this.subs.values()]) this.endSub(sub, "SHUTDOWN", "the relay is stopping");
    this.maybeFinish();
    this.armCloseTimer();
  }

  // -------------------------------------------------------------------------------------
  // Running commands, in order
  // -------------------------------------------------------------------------------------

  /**
   * Runs the received commands one after another, in order. Before each command it waits
   * while the answers pending or the output waiting are at their bounds; between two slices
   * of input it lets the event loop take a turn. One pump runs per connection at a time.
   */
  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      let slices = 0;
      while (this.state === "open" && !this.quitting) {
        if (this.backlogAt === this.backlog.length) {
          if (this.inbox.length === 0) {
            if (this.finishInput()) continue;
            break;
          }
          // The first slice runs at once (a short command is answered without delay); each
          // later one after a turn, in which other connections are read and written.
          if (slices++ > 0) await nextTurn();
          this.parseNextSlice();
          continue;
        }
        if (this.answers.isFull) {
          await this.answerRoom();
          continue;
        }
        if (this.outputWaits()) {
          await this.outputRoom();
          continue;
        }
        await this.run(this.backlog[this.backlogAt++] as RelayInput);
      }
    } catch (error) {
      this.backend.log(`relay connection failed: ${describeError(error)}`);
      this.abort("INTERNAL", "the relay failed; see its log");
    } finally {
      this.pumping = false;
    }
    if (this.quitting) this.dropInput();
    this.updateFlow();
    this.maybeFinish();
  }

  /** Parses the next slice of received bytes into the backlog; false when none is left. */
  private parseNextSlice(): boolean {
    const head = this.inbox[0];
    if (head === undefined) return false;
    const slice = head.byteLength > RELAY_PARSE_SLICE_BYTES ? head.subarray(0, RELAY_PARSE_SLICE_BYTES) : head;
    if (slice === head) this.inbox.shift();
    else this.inbox[0] = head.subarray(RELAY_PARSE_SLICE_BYTES);
    this.inboxBytes -= slice.byteLength;
    this.backlog = this.parser.push(slice);
    this.backlogAt = 0;
    return true;
  }

  /**
   * After the client's FIN, once every byte it sent is parsed and run: an unfinished last
   * command is not run, and its refusal becomes the backlog (answered after every earlier
   * answer). True when there is such a refusal to run.
   */
  private finishInput(): boolean {
    if (!this.inputEnded || this.inputFinished || this.inboxBytes > 0) return false;
    this.inputFinished = true;
    this.backlog = this.parser.finish();
    this.backlogAt = 0;
    return this.backlog.length > 0;
  }

  private dropInput(): void {
    this.backlog = [];
    this.backlogAt = 0;
    this.inbox = [];
    this.inboxBytes = 0;
  }

  private answerRoom(): Promise<void> {
    return new Promise<void>((resolve) => this.roomWaiters.push(resolve));
  }

  /**
   * Whether the next command waits for the client to read: its answer would add to output
   * past the read-pause bound, or to the relay's answers past their bound. Checked before
   * every command, not once per read, so a read full of cheap commands (`SUB A` answered by
   * a 70-byte `-ERR`) cannot queue ten times its size in answers. A connection with nothing
   * waiting always runs its next command: a client that reads is never held up by others.
   */
  private outputWaits(): boolean {
    const queued = this.queuedBytes();
    if (queued === 0) return false;
    return queued > this.backend.limits.readPauseOutboundBytes || this.backend.outputBytes.answersOver;
  }

  private outputRoom(): Promise<void> {
    return new Promise<void>((resolve) => this.outputWaiters.push(resolve));
  }

  /** Output moved, or the connection stops: a pump waiting on outputWaits looks again. */
  private wakeOutputWaiters(): void {
    for (const wake of this.outputWaiters.splice(0)) wake();
  }

  private async run(input: RelayInput): Promise<void> {
    if (input.t === "refused") {
      if (input.closes === true) {
        // Not a relay command: perhaps another protocol (relay/parser.ts). Answers of
        // earlier commands go out first, then this one, then the connection closes.
        this.quitting = true;
        this.backend.log(`relay connection closed: ${input.reason}`);
        if (this.backend.metrics !== null) this.backend.metrics.connectionsClosedBadInput.inc();
        this.answer({ line: errLine(input.code, input.reason), after: () => this.closeAfterFlush() });
        return;
      }
      this.answer({ line: errLine(input.code, input.reason) });
      return;
    }
    const command: RelayCommand = input.command;
    switch (command.t) {
      case "pub":
        await this.runPub(command.tag, command.payload);
        return;
      case "sub":
        this.runSub(command.tag, command.from);
        return;
      case "unsub":
        this.runUnsub(command.tag);
        return;
      case "ping":
        this.answer({ line: PONG_LINE });
        return;
      case "quit":
        this.quitting = true;
        this.answer({ line: OK_LINE, after: () => this.closeAfterFlush() });
        return;
      default: {
        const unreachable: never = command;
        throw new Error(`unknown relay command ${String(unreachable)}`);
      }
    }
  }

  private answer(answer: Answer): void {
    this.answers.push(Promise.resolve(answer));
  }

  /**
   * Hands the event to the tag's shared publisher. When its queue is full, or this
   * connection holds `connectionPublishBytesMax` of unanswered events, the command waits
   * (and with it every later command of this connection, whose answers must come after
   * this one anyway), which pauses reading from this client. When the relay as a whole
   * holds `publishBytesMax` of unanswered events it is refused instead.
   */
  private async runPub(tag: string, payload: Uint8Array): Promise<void> {
    const bytes = payload.byteLength;
    await this.ownPublishRoom(bytes);
    // Waiting PUBs of several connections are woken together when room frees, perhaps
    // room for one: each looks again, and waits again if another took it, so that a PUB
    // to a full queue waits and is never refused for it. No await may come between the
    // look that finds room and the publish that takes it.
    let publisher = this.publisherFor(tag);
    while (publisher !== null && !publisher.hasRoom(bytes)) {
      await publisher.waitForRoom(bytes);
      // Asked anew: the relay may have retired an idle publisher meanwhile.
      publisher = this.publisherFor(tag);
    }
    if (publisher === null) return;
    const budget = this.backend.publishBytes;
    const metrics = this.backend.metrics;
    const refusal = budget.take(bytes);
    if (refusal !== null) {
      metrics?.refusedWith("OVERLOADED");
      this.answer({ line: errLine("OVERLOADED", refusal) });
      return;
    }
    this.publishBytesHeld += bytes;
    const startedMs = performance.now();
    this.answers.push(
      publisher.publish(payload).then(
        (ack: EventAck): Answer => {
          this.releasePublishBytes(bytes);
          if (metrics !== null) {
            // Acknowledged: the channel exists, and its tag may have series of its own.
            const cells = metrics.tag(tag);
            cells.published.inc();
            cells.acked.inc();
            metrics.publishAck.observe((performance.now() - startedMs) / 1000);
          }
          return { line: ackLine(ack.tag, ack.seq) };
        },
        (error: unknown): Answer => {
          this.releasePublishBytes(bytes);
          const code = error instanceof ClientError ? error.code : "INTERNAL";
          // UNAUTHORIZED (the key is not registered on it) comes only for a channel the replicas hold.
          if (metrics !== null) (code === "UNAUTHORIZED" ? metrics.tag(tag) : metrics.refusedTag(tag)).published.inc();
          metrics?.refusedWith(code);
          return { line: errorLine(error, this.backend.keyNote) };
        },
      ),
    );
  }

  /**
   * Waits while this connection's own unanswered publishes hold its share of the budget.
   * Like the budget, a connection with nothing held always takes one event, however large.
   */
  private async ownPublishRoom(bytes: number): Promise<void> {
    const bytesMax = this.backend.limits.connectionPublishBytesMax;
    while (this.publishBytesHeld > 0 && this.publishBytesHeld + bytes > bytesMax) {
      await new Promise<void>((resolve) => this.publishWaiters.push(resolve));
    }
  }

  private releasePublishBytes(bytes: number): void {
    this.backend.publishBytes.release(bytes);
    this.publishBytesHeld -= bytes;
    for (const wake of this.publishWaiters.splice(0)) wake();
  }

  private publisherFor(tag: string): Publisher | null {
    try {
      return this.backend.publisherFor(tag);
    } catch (error) {
      this.answer({ line: errorLine(error) });
      return null;
    }
  }

  private runSub(tag: string, from: number | null): void {
    if (this.subs.has(tag)) {
      this.answer({ line: errLine("BAD_REQUEST", `already subscribed to ${tag}`) });
      return;
    }
    const subsMax = this.backend.limits.subscriptionsPerConnectionMax;
    if (this.subs.size >= subsMax) {
      this.answer({ line: errLine("OVERLOADED", `${this.subs.size} subscriptions open on this connection; at most ${subsMax}`) });
      return;
    }
    const sub: RelaySub = {
      tag,
      pattern: isPattern(tag),
      subscription: null,
      closed: false,
      answered: false,
      held: [],
      heldBytes: 0,
      firstHeld: null,
      pendingEnd: null,
      trimmedOldest: null,
    };
    this.subs.set(tag, sub);
    const onSignal = (signal: SubscriptionSignal): void => this.onSignal(sub, signal);
    const options: SubscribeOptions = from === null ? { onSignal } : { from, onSignal };
    let started: Promise<SubscriptionHandle>;
    try {
      started = this.backend.subscribe(tag, options, (batch) => this.onBatch(sub, batch));
    } catch (error) {
      started = Promise.reject(error);
    }
    this.answers.push(
      started.then(
        (subscription) => this.onSubStarted(sub, subscription),
        (error: unknown) => this.onSubRefused(sub, error),
      ),
    );
  }

  private onSubStarted(sub: RelaySub, subscription: SubscriptionHandle): Answer {
    sub.subscription = subscription;
    if (sub.closed) {
      // UNSUB, an end (SLOW) or a close came while the subscription was starting; an
      // END line that waited for this answer follows it.
      void subscription.close();
      return { line: OK_LINE, after: () => this.onSubAnswered(sub) };
    }
    subscription.done.then(
      () => undefined,
      (error: unknown) => this.onSubEnded(sub, error),
    );
    return { line: OK_LINE, after: () => this.onSubAnswered(sub) };
  }

  private onSubRefused(sub: RelaySub, error: unknown): Answer {
    if (this.subs.get(sub.tag) === sub) this.subs.delete(sub.tag);
    sub.closed = true;
    if (error instanceof SubscriptionEndedError && error.endCode === "TRIMMED" && sub.trimmedOldest !== null) {
      // `from` is older than the retained history: answered the way a trim during the
      // subscription is, so a script reads the oldest seq from one place.
      const end = endLine(sub.tag, "TRIMMED", `oldest ${sub.trimmedOldest}`);
      return { line: OK_LINE, after: () => this.write(end, "subscription") };
    }
    return { line: errorLine(error, this.backend.keyNote) };
  }

  /** The `+OK` of a SUB is out: the event lines that waited for it follow, then any END. */
  private onSubAnswered(sub: RelaySub): void {
    sub.answered = true;
    const held = sub.held;
    this.releaseHeld(sub);
    if (!sub.closed) for (const bytes of held) this.write(bytes, "subscription");
    if (sub.pendingEnd !== null) this.write(sub.pendingEnd, "subscription");
    sub.pendingEnd = null;
  }

  private runUnsub(tag: string): void {
    const sub = this.subs.get(tag);
    if (sub === undefined) {
      this.answer({ line: errLine("BAD_REQUEST", `not subscribed to ${tag}`) });
      return;
    }
    this.dropSub(sub);
    this.answer({ line: OK_LINE });
  }

  // -------------------------------------------------------------------------------------
  // Subscriptions: events and ends
  // -------------------------------------------------------------------------------------

  private onBatch(sub: RelaySub, batch: ReceivedBatch): void {
    if (sub.closed || this.state !== "open") return;
    const metrics = this.backend.metrics;
    if (metrics !== null) {
      metrics.tag(sub.tag).delivered.inc(batch.events.length);
      metrics.delivery.observe(Math.max(0, Date.now() - batch.ts) / 1000);
    }
    const bytes = batchBytes(batch);
    const behind = this.fallenBehind(bytes.byteLength);
    if (behind !== null) {
      // Events held for the `+OK` are dropped with the subscription: the reader resumes at the first of them.
      const reason = slowReason(sub, sub.firstHeld ?? resumePointOf(batch), behind);
      metrics?.subscriptionsEndedSlow.inc();
      this.backend.logSlow(`subscription to ${sub.tag} ended SLOW: ${reason}`);
      this.endSub(sub, "SLOW", reason);
      return;
    }
    if (!sub.answered) {
      sub.firstHeld ??= resumePointOf(batch);
      this.hold(sub, bytes);
      return;
    }
    this.write(bytes, "subscription");
  }

  /**
   * Why `bytes` more of event lines may not be queued on this connection (its reader is
   * behind), or null. Everything the connection holds counts, its own answers too: what the
   * socket has not taken, and the events of every SUB still waiting for its `+OK`. An idle connection
   * always takes one batch, however large: the bound is on what piles up behind a reader
   * that does not keep up, not on a batch.
   */
  private fallenBehind(bytes: number): string | null {
    const waiting = this.queuedBytes() + this.heldBytes;
    if (waiting === 0) return null;
    if (waiting + bytes > this.backend.limits.eventOutboundBytesMax) return `the client fell behind (${waiting} bytes not yet read)`;
    // Across the relay only subscription output counts: answers the other connections do
    // not read have their own bound (outputWaits), and must not end this reader's subscription.
    const relay = this.backend.outputBytes;
    if (relay.wouldExceed(bytes)) {
      return (
        `the client fell behind (${waiting} bytes not yet read) while the relay holds ${relay.subscriptionBytes} bytes of ` +
        `subscription output not yet read across its connections; at most ${relay.bytesMax}`
      );
    }
    return null;
  }

  /** Keeps bytes of `sub` until its `+OK` is written. */
  private hold(sub: RelaySub, bytes: Uint8Array): void {
    sub.held.push(bytes);
    sub.heldBytes += bytes.byteLength;
    this.heldBytes += bytes.byteLength;
    this.syncOutputBytes();
  }

  private releaseHeld(sub: RelaySub): void {
    this.heldBytes -= sub.heldBytes;
    sub.held = [];
    sub.heldBytes = 0;
    sub.firstHeld = null;
    this.syncOutputBytes();
  }

  private onSignal(sub: RelaySub, signal: SubscriptionSignal): void {
    switch (signal.t) {
      case "trimmed":
        sub.trimmedOldest = signal.oldestSeq;
        return;
      case "overflow": {
        const why = signal.source === "local" ? "delivery queue full" : signal.reason;
        this.backend.log(`subscription to ${sub.tag}: ${signal.droppedEvents} events dropped (${why})`);
        return;
      }
      case "channel":
        this.onChannelSignal(sub, signal);
        return;
      case "conflict":
        // Another event under delivered numbers comes as a second EVENT line with the same publisher and seq: said why here.
        this.backend.log(`subscription to ${sub.tag}: replica ${signal.replica} at seq ${signal.seq}: ${signal.reason}`);
        return;
      default:
        return;
    }
  }

  /**
   * A pattern began or stopped following a channel. One it stops following (left out at
   * its bound, refused, ended) gets `END <channel> <code> <reason>`, and the pattern
   * goes on with the others: otherwise its events would stop without a word.
   */
  private onChannelSignal(sub: RelaySub, signal: Extract<SubscriptionSignal, { t: "channel" }>): void {
    if (signal.event === "added") return;
    if (signal.event === "list-failed") {
      this.backend.log(`subscription to ${sub.tag}: cannot read the channel list (${signal.reason})`);
      return;
    }
    if (sub.closed || this.state !== "open") return;
    const end =
      signal.event === "skipped" ? { code: "LIMIT" as const, reason: signal.reason } : endFor(signal.cause ?? signal.reason, null);
    const line = encoder.encode(endLine(signal.tag, end.code, `${end.reason}; ${sub.tag} goes on without it`));
    if (sub.answered) this.write(line, "subscription");
    else this.hold(sub, line);
  }

  /** The library ended the subscription (not on our request). */
  private onSubEnded(sub: RelaySub, error: unknown): void {
    if (sub.closed) return;
    const end = endFor(error, sub.trimmedOldest);
    this.endSub(sub, end.code, end.reason);
  }

  /** Ends a subscription and tells the client with an END line. */
  private endSub(sub: RelaySub, code: SubEndCode, reason: string): void {
    if (sub.closed) return;
    this.dropSub(sub);
    const line = endLine(sub.tag, code, reason);
    if (sub.answered) this.write(line, "subscription");
    else sub.pendingEnd = line;
    this.maybeFinish();
  }

  /** Forgets a subscription and closes it in the library; writes nothing. */
  private dropSub(sub: RelaySub): void {
    sub.closed = true;
    this.releaseHeld(sub);
    if (this.subs.get(sub.tag) === sub) this.subs.delete(sub.tag);
    void sub.subscription?.close();
  }

  // -------------------------------------------------------------------------------------
  // Writing
  // -------------------------------------------------------------------------------------

  private emitAnswer(outcome: Settled<Answer>): void {
    // Answers are built to never reject; a rejection here is a bug, reported as one.
    const answer: Answer = outcome.ok ? outcome.value : { line: errLine("INTERNAL", describeError(outcome.error)) };
    // Only an aborted connection closes with answers still due; its last line is the abort's.
    if (this.state === "open") {
      this.write(answer.line, "answer");
      answer.after?.();
    }
    for (const wake of this.roomWaiters.splice(0)) wake();
    this.maybeFinish();
  }

  /**
   * Queues bytes for the socket. Writes of one turn of the event loop leave in one
   * socket write, since each write is a system call.
   */
  private write(data: Uint8Array | string, kind: OutputKind): void {
    if (this.state === "closed") return;
    const bytes = typeof data === "string" ? encoder.encode(data) : data;
    this.pendingWrites.push(bytes);
    this.pendingWriteBytes += bytes.byteLength;
    this.queuedRuns.add(kind === "answer", bytes.byteLength);
    this.syncOutputBytes();
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    queueMicrotask(() => this.flushWrites());
  }

  private flushWrites(): void {
    this.flushScheduled = false;
    if (this.state === "closed" || this.pendingWrites.length === 0) return;
    const data = this.pendingWrites.length === 1 ? (this.pendingWrites[0] as Uint8Array) : concatByteList(this.pendingWrites);
    this.pendingWrites = [];
    this.pendingWriteBytes = 0;
    const before = this.outbound.bufferedBytes;
    const result = this.outbound.enqueue((chunk) => this.socket.write(chunk), data);
    this.syncOutputBytes();
    if (result === "full") {
      this.backend.log(`relay connection dropped: more than ${this.outbound.bytesMax} bytes of output not read by the client`);
      this.state = "closing";
      this.socket.terminate();
      return;
    }
    this.watchOutput(before);
    this.wakeOutputWaiters();
    this.updateFlow();
    this.maybeEnd();
  }

  /** Bytes written by the connection and not yet taken by the socket. */
  private queuedBytes(): number {
    return this.pendingWriteBytes + this.outbound.bufferedBytes;
  }

  /**
   * Brings this connection's shares of the relay-wide output totals up to date: its
   * answers, and its subscriptions' output (what the socket has not taken, and the events
   * held for a SUB's `+OK`). Bytes leave the queue in the order they were written, so the
   * runs tell how many of those still waiting are answers.
   */
  private syncOutputBytes(): void {
    const queued = this.state === "closed" ? 0 : this.queuedBytes();
    this.queuedRuns.trimTo(queued);
    const answers = this.queuedRuns.answerBytes;
    const subscriptions = this.state === "closed" ? 0 : queued - answers + this.heldBytes;
    if (answers === this.reportedAnswerBytes && subscriptions === this.reportedSubscriptionBytes) return;
    this.backend.outputBytes.update(this.reportedAnswerBytes, this.reportedSubscriptionBytes, answers, subscriptions);
    this.reportedAnswerBytes = answers;
    this.reportedSubscriptionBytes = subscriptions;
  }

  // -------------------------------------------------------------------------------------
  // The stall timeout
  // -------------------------------------------------------------------------------------

  /**
   * After output was queued or drained (`before`: the bytes waiting before): output that
   * began to wait, or went partly out, restarts the stall clock; none waiting stops it.
   */
  private watchOutput(before: number): void {
    const waiting = this.outbound.bufferedBytes;
    const timers = this.backend.timers;
    if (waiting === 0) {
      if (this.stallTimer !== null) timers.clearTimeout(this.stallTimer);
      this.stallTimer = null;
      return;
    }
    if (before === 0 || waiting < before) this.outputProgressAt = timers.now();
    this.armStallTimer();
  }

  /** One timer per connection, re-armed at its expiry if output moved meanwhile. */
  private armStallTimer(): void {
    if (this.stallTimer !== null || this.state === "closed") return;
    const timers = this.backend.timers;
    const dueInMs = Math.max(0, this.outputProgressAt + this.backend.limits.outputStallTimeoutMs - timers.now());
    this.stallTimer = timers.setTimeout(() => this.onStallTimer(), dueInMs);
  }

  private onStallTimer(): void {
    this.stallTimer = null;
    if (this.state === "closed" || this.outbound.bufferedBytes === 0) return;
    const timeoutMs = this.backend.limits.outputStallTimeoutMs;
    if (this.backend.timers.now() - this.outputProgressAt < timeoutMs) {
      this.armStallTimer();
      return;
    }
    this.backend.log(
      `relay connection dropped: the client read none of its ${this.outbound.bufferedBytes} bytes of output for ${timeoutMs} ms`,
    );
    this.state = "closing";
    this.socket.terminate();
  }

  // -------------------------------------------------------------------------------------
  // Flow control and closing
  // -------------------------------------------------------------------------------------

  /** Reads while commands can run and the client reads its answers; pauses otherwise. */
  private updateFlow(): void {
    if (this.state === "closed") return;
    const pause =
      this.inboxBytes > 0 || this.backlogAt < this.backlog.length || this.queuedBytes() > this.backend.limits.readPauseOutboundBytes;
    if (pause === this.paused) return;
    this.paused = pause;
    if (pause) this.socket.pause();
    else this.socket.resume();
  }

  /**
   * Closes once nothing more will be written: after QUIT, after shutdown, or after the
   * client's FIN once every answer is out (a subscription keeps a half-closed
   * connection open, since `printf 'SUB t\n' | nc -N` still reads).
   */
  private maybeFinish(): void {
    if (this.state !== "open") return;
    if (!this.quitting && !this.inputEnded) return;
    if (this.pumping || this.inboxBytes > 0 || this.backlogAt < this.backlog.length || this.answers.pending > 0) return;
    // The pump has yet to answer an unfinished last command (finishInput).
    if (!this.quitting && !this.inputFinished) return;
    if (!this.quitting && this.subs.size > 0) return;
    this.closeAfterFlush();
  }

  private closeAfterFlush(): void {
    if (this.state !== "open") return;
    this.state = "closing";
    this.quitting = true;
    this.wakeOutputWaiters();
    for (const sub of [...this.subs.values()]) this.dropSub(sub);
    this.armCloseTimer();
    this.maybeEnd();
  }

  private maybeEnd(): void {
    if (this.state !== "closing" || this.endSent || this.queuedBytes() > 0 || this.flushScheduled) return;
    this.endSent = true;
    this.socket.end();
  }

  /** A client that never reads what is left cannot hold the connection open for ever. */
  private armCloseTimer(): void {
    if (this.closeTimer !== null) return;
    this.closeTimer = this.backend.timers.setTimeout(() => {
      this.closeTimer = null;
      if (this.state !== "closed") this.socket.terminate();
    }, this.backend.limits.closeFlushTimeoutMs);
  }

  /** Refuses the connection's input for good: one last `-ERR` line, then close. */
  private abort(code: ErrorCode, reason: string): void {
    if (this.state !== "open") return;
    this.dropInput();
    this.quitting = true;
    this.write(errLine(code, reason), "answer");
    this.closeAfterFlush();
  }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/** `-ERR <code> <reason>` for anything a command's promise rejected with. */
/** `-ERR CODE reason`; a refusal of the relay's key (UNAUTHORIZED) names it (`keyNote`), so the reader knows which key to register. */
export function errorLine(error: unknown, keyNote = ""): string {
  if (error instanceof ClientError) return errLine(error.code, `${describeError(error)}${error.code === "UNAUTHORIZED" ? keyNote : ""}`);
  return errLine("INTERNAL", describeError(error));
}

/** The event lines of one delivered batch, as one array (one socket write). */
function batchBytes(batch: ReceivedBatch): Uint8Array {
  const publisher = formatPublicKey(batch.publisher);
  const lines = batch.events.map((payload, index) =>
    eventBytes({ tag: batch.tag, seq: eventSeq(batch, index), publisher, tsMs: batch.ts }, payload),
  );
  return lines.length === 1 ? (lines[0] as Uint8Array) : concatByteList(lines);
}

/** Where a reader resumes to get `batch` again: its channel and first seq (null: unordered). */
function resumePointOf(batch: ReceivedBatch): ResumePoint {
  return { channel: batch.tag, seq: batch.seq === null ? null : eventSeq(batch, 0) };
}

/**
 * The reason of a SLOW end: why, and what the reader does next. A tag resumes from the
 * first event it was not sent (`order: total`); a pattern takes no from-seq, so it is
 * subscribed again (live), and the reason names the channel and seq it stopped at, which
 * `SUB <channel> <seq>` can still fetch.
 */
function slowReason(sub: RelaySub, resume: ResumePoint, behind: string): string {
  if (sub.pattern) {
    const where =
      resume.seq === null
        ? `events of ${resume.channel} were dropped`
        : `${resume.channel} stopped at seq ${resume.seq} (SUB ${resume.channel} ${resume.seq} fetches it)`;
    return `${behind}; ${where}; SUB ${sub.tag} again to go on (a pattern takes no from-seq)`;
  }
  if (resume.seq === null) return `${behind}; events were dropped`;
  return `${behind}; resume with SUB ${sub.tag} ${resume.seq}`;
}

const SUB_END_CODE_SET: ReadonlySet<string> = new Set(SUB_END_CODES);

/** The SUB_END code that names why `error` ended or refused a subscription, or null. */
function subEndCodeOf(error: unknown): SubEndCode | null {
  if (error instanceof SubscriptionEndedError && SUB_END_CODE_SET.has(error.endCode)) return error.endCode as SubEndCode;
  if (error instanceof ClientClosedError) return "SHUTDOWN";
  if (!(error instanceof ClientError)) return null;
  // A full subscription table (the relay's, across connections) is the LIMIT of 7.2.
  if (error.code === "OVERLOADED") return "LIMIT";
  // UNKNOWN_CHANNEL, UNAUTHORIZED and BAD_REQUEST are both error and SUB_END codes.
  return SUB_END_CODE_SET.has(error.code) ? (error.code as SubEndCode) : null;
}

/** The END code and reason for the error a subscription ended with. */
function endFor(error: unknown, trimmedOldest: number | null): { code: SubEndCode; reason: string } {
  if (error instanceof ClientClosedError) return { code: "SHUTDOWN", reason: "the relay is stopping" };
  const code = subEndCodeOf(error);
  if (code === "TRIMMED" && trimmedOldest !== null) return { code, reason: `oldest ${trimmedOldest}` };
  // No SUB_END code names an unexpected failure: SHUTDOWN, and the reason says what it was.
  return { code: code ?? "SHUTDOWN", reason: describeError(error) };
}
