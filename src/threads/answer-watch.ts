/**
 * A thread that stops answering stops the replica. A worker that throws or exits is seen
 * by its `error` and `close` events, but one that is alive and answers nothing (an endless
 * loop, a deadlock in native code) fires neither: without this, every request waiting on
 * it would wait for good while systemd sees a running process and never restarts it.
 *
 * The owner tells the watch what it sent to one thread (`sent`, by the message's id) and
 * what came back (`answered`); a timer looks at the oldest unanswered message, and once
 * the thread has left it unanswered and answered nothing else for longer than the
 * deadline, `onOverdue` runs once and the watch stops. A thread that answers, however far
 * behind, is working; one silent that long with work in hand is as good as gone (the
 * deadline is far above any honest message: a batch is at most a few thousand signature
 * checks, a step one input of the ordering core).
 *
 * An answer can only be taken while the owner's event loop runs. When the timer itself
 * fires late (the loop was busy for a long synchronous task, or the host starved the
 * process), the thread may well have answered meanwhile, unread: the waits then start
 * again from that moment rather than blame the thread for the loop's stall.
 */

/** How long a thread may leave a message unanswered before the replica stops. */
export const THREAD_ANSWER_MS_MAX = 20_000;
/** How often the oldest unanswered message is looked at, at most (a quarter of a shorter deadline). */
const WATCH_INTERVAL_MS_MAX = 1_000;
/** A look this much later than its interval means the event loop itself was held: the waits start again. */
const LOOP_HELD_MS = 500;

export interface AnswerWatchOptions {
  /** How long an unanswered message may wait (THREAD_ANSWER_MS_MAX in a replica). */
  readonly deadlineMs: number;
  /** The thread has been silent `waitedMs` with a message in hand, over the deadline; called once. */
  readonly onOverdue: (waitedMs: number) => void;
}

export class AnswerWatch {
  /** Send times of the unanswered messages by id, oldest first (a Map keeps insertion order). */
  private readonly sentAt = new Map<number, number>();
  private timer: ReturnType<typeof setInterval> | null = null;
  private intervalMs = WATCH_INTERVAL_MS_MAX;
  private lastLookAt = 0;
  /** Waits count from here at the earliest: the last time the event loop was found held. */
  private restartAt = 0;
  /** When the thread last answered anything: a thread that answers is behind, not stuck. */
  private answeredAt = 0;
  private stopped = false;

  constructor(private readonly options: AnswerWatchOptions) {
    if (!(options.deadlineMs > 0)) throw new RangeError(`deadlineMs must be positive, got ${options.deadlineMs}`);
  }

  /** Message `id` went to the thread now. */
  sent(id: number): void {
    if (this.stopped) return;
    this.sentAt.set(id, performance.now());
    if (this.timer !== null) return;
    this.intervalMs = Math.min(WATCH_INTERVAL_MS_MAX, Math.max(1, Math.floor(this.options.deadlineMs / 4)));
    this.lastLookAt = performance.now();
    this.timer = setInterval(() => this.check(), this.intervalMs);
    // The watch never keeps a process alive by itself.
    (this.timer as { unref?: () => void }).unref?.();
  }

  /** The thread answered message `id`. */
  answered(id: number): void {
    this.sentAt.delete(id);
    this.answeredAt = performance.now();
  }

  /** Messages sent and not answered. */
  get unanswered(): number {
    return this.sentAt.size;
  }

  stop(): void {
    this.stopped = true;
    this.sentAt.clear();
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  private check(): void {
    const now = performance.now();
    const held = now - this.lastLookAt > this.intervalMs + LOOP_HELD_MS;
    this.lastLookAt = now;
    if (held) {
      this.restartAt = now;
      return;
    }
    const oldest = this.sentAt.values().next();
    if (oldest.done === true) return;
    const waitedMs = now - Math.max(oldest.value, this.restartAt, this.answeredAt);
    if (waitedMs <= this.options.deadlineMs) return;
    this.stop();
    this.options.onOverdue(waitedMs);
  }
}
