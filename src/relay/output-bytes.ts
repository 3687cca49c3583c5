/**
 * The relay's count of output bytes waiting for readers, across every connection, in two
 * totals bounded apart:
 *
 * - subscription output (EVENT, EVENTB and END lines, those held for a SUB's `+OK`
 *   included). Each connection bounds its own (`eventOutboundBytesMax`), but 2,048
 *   connections at that bound would hold gigabytes; this total lets a connection see that
 *   the relay as a whole holds too much (`relayOutboundBytesMax`) and end a subscription
 *   whose reader is already behind, instead of queueing more for it.
 * - answers to commands (`+OK`, `-ERR`, `PONG`). Past `answerBytesMax` a connection with
 *   output waiting runs no more commands until its client has read it all. Answers are
 *   kept out of the first total: clients that send commands and never read their answers
 *   (`SUB A` is answered by a 70-byte `-ERR`) would otherwise fill it and get the
 *   subscriptions of readers who merely lag ended `SLOW`.
 *
 * Each connection reports what it holds now (`update`); the totals are the sums of the
 * latest reports, so a connection that goes reports 0 and its bytes leave the totals.
 */
export class RelayOutputBytes {
  private answers = 0;
  private subscriptions = 0;

  constructor(
    /** Bound on subscription output across the relay. */
    readonly bytesMax: number,
    /** Bound on answers across the relay. */
    readonly answerBytesMax: number,
  ) {
    requirePositive("relay output bytes bound", bytesMax);
    requirePositive("relay answer bytes bound", answerBytesMax);
  }

  /** Output bytes waiting across every connection, answers and subscription output together. */
  get usedBytes(): number {
    return this.answers + this.subscriptions;
  }

  /** Subscription output waiting across every connection. */
  get subscriptionBytes(): number {
    return this.subscriptions;
  }

  /** Answers waiting across every connection. */
  get answerBytes(): number {
    return this.answers;
  }

  /** Whether `bytes` more of subscription output would take its total past the bound. */
  wouldExceed(bytes: number): boolean {
    return this.subscriptions + bytes > this.bytesMax;
  }

  /** Whether the answers waiting are past their bound: connections with output waiting run no command. */
  get answersOver(): boolean {
    return this.answers > this.answerBytesMax;
  }

  /** One connection's holding went from `before` to `after` bytes, of answers and of subscription output. */
  update(answersBefore: number, subscriptionsBefore: number, answersAfter: number, subscriptionsAfter: number): void {
    if (answersBefore > this.answers || subscriptionsBefore > this.subscriptions) {
      throw new Error(
        `a connection reported ${answersBefore} + ${subscriptionsBefore} output bytes of only ${this.answers} + ${this.subscriptions} held`,
      );
    }
    this.answers += answersAfter - answersBefore;
    this.subscriptions += subscriptionsAfter - subscriptionsBefore;
  }
}

/**
 * Which of one connection's queued output bytes are answers. Bytes leave the queue in the
 * order they were written, so a list of runs (so many answer bytes, then so many others,
 * ...) tells, as the socket takes bytes from the front, how many answer bytes still wait.
 * Adjacent runs of one kind are merged: the runs alternate, and there are at most as many
 * as writes waiting.
 */
export class OutputRuns {
  /** Byte counts of the runs, oldest first from `head`; `answer` says which are answers. */
  private bytes: number[] = [];
  private answer: boolean[] = [];
  private head = 0;
  private totalBytes = 0;
  private answers = 0;

  /** Answer bytes among those queued. */
  get answerBytes(): number {
    return this.answers;
  }

  /** `bytes` more were queued. */
  add(answer: boolean, bytes: number): void {
    if (bytes === 0) return;
    this.totalBytes += bytes;
    if (answer) this.answers += bytes;
    const last = this.bytes.length - 1;
    if (last >= this.head && this.answer[last] === answer) {
      this.bytes[last] = (this.bytes[last] as number) + bytes;
      return;
    }
    this.bytes.push(bytes);
    this.answer.push(answer);
  }

  /** The queue now holds `queued` bytes: what left it left from the front. */
  trimTo(queued: number): void {
    let gone = this.totalBytes - Math.max(0, queued);
    while (gone > 0 && this.head < this.bytes.length) {
      const run = this.bytes[this.head] as number;
      const taken = Math.min(run, gone);
      gone -= taken;
      this.totalBytes -= taken;
      if (this.answer[this.head] === true) this.answers -= taken;
      if (taken < run) this.bytes[this.head] = run - taken;
      else this.head++;
    }
    if (this.head === this.bytes.length) {
      this.bytes = [];
      this.answer = [];
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.bytes.length) {
      this.bytes = this.bytes.slice(this.head);
      this.answer = this.answer.slice(this.head);
      this.head = 0;
    }
  }
}

function requirePositive(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 1) throw new RangeError(`${name} must be a positive integer, got ${value}`);
}
