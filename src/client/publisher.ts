/**
 * Publisher: batches the events published to one tag into signed requests. A request
 * carries many events under one signature (src/README.md §3: signatures are per frame, so a
 * gateway batches), which is what lets a small number of replicas take tens of
 * thousands of events a second.
 *
 * Batches form by themselves: an event waits only while a request of the publisher that
 * is not full is in flight (or its pipeline is full), and the next request takes
 * everything that waited, up to the batch bounds. An idle publisher therefore sends each
 * event at once (lowest latency), and a busy one sends large batches (highest
 * throughput), without a timer to tune.
 *
 * Only one request that is not full is in flight at a time (`inflightPartialBatchesMax`,
 * like Nagle's rule for TCP segments); full ones pipeline up to `inflightBatchesMax`. Each
 * request costs every replica a signature check and its share of an ordering round
 * whatever it carries, so a steady publisher that sent each event the moment a pipeline
 * slot was free made the replicas' CPU, not its rate, set the latency: at 2,000 ev/s on
 * 4 local replicas, one partial request in flight instead of four took the publish-to-
 * delivery p50 from 10.6-12.5 ms to 5.8-7.2 ms (README, Performance). A publisher faster
 * than one full request per round trip still fills the pipeline with full requests.
 *
 * Acks resolve in the order `publish` was called, even when a later request is
 * acknowledged first, so a caller that answers line by line (the relay, `fitb pub`)
 * never reorders its answers. Queued events are bounded in count and bytes; past the
 * bound `publish` refuses with QueueFullError (OVERLOADED) and `waitForRoom` lets a
 * reader that can wait (stdin) pause instead.
 */
import { REQUEST_EVENTS_MAX } from "../../wire/types.ts";
import { REQUEST_BYTES_MAX } from "../core/channels/constants.ts";
import type { PublishAck } from "./client.ts";
import { ClientClosedError, InvalidInputError, QueueFullError } from "./errors.ts";
import { checkTag, EVENT_OVERHEAD_BYTES, REQUEST_FIXED_OVERHEAD_BYTES } from "./request.ts";

/** What a Publisher publishes through: FitbClient, or anything with the same contract. */
export interface PublishTarget {
  publish(tag: string, events: readonly Uint8Array[]): Promise<PublishAck>;
  publishLimits(): { batchEventsMax: number; eventBytesMax: number; frameBytesMax: number; inflightRequestsMax: number };
}

/** The acknowledgement of one event: the SEQ commands print (`+OK TAG SEQ`). */
export interface EventAck {
  readonly tag: string;
  readonly seq: number;
}

export interface PublisherOptions {
  /** Events per request (default and ceiling: the cluster's batch_events_max). */
  readonly batchEventsMax?: number;
  /** Bytes per request counted as the events plus EVENT_OVERHEAD_BYTES each (default and ceiling: what fits in a frame). */
  readonly batchBytesMax?: number;
  /** Requests of this publisher in flight at once. */
  readonly inflightBatchesMax?: number;
  /** Of those, requests that are not full (at most inflightBatchesMax; default 1: see above). */
  readonly inflightPartialBatchesMax?: number;
  /** Events waiting to be sent, beyond which `publish` refuses. */
  readonly queueEventsMax?: number;
  /** Bytes of events waiting to be sent, beyond which `publish` refuses. */
  readonly queueBytesMax?: number;
}

/** Pipelining a few requests hides the round trip without taking the whole client window. */
export const PUBLISHER_INFLIGHT_BATCHES_DEFAULT = 4;
/** Requests that are not full in flight at once: one, so events that arrive meanwhile travel together. */
export const PUBLISHER_INFLIGHT_PARTIAL_BATCHES_DEFAULT = 1;
/** Waiting events: a few full batches' worth. */
export const PUBLISHER_QUEUE_BATCHES_DEFAULT = 4;
/** Waiting bytes: enough for bursts, small enough for a gateway with many tags. */
export const PUBLISHER_QUEUE_BYTES_DEFAULT = 64 * 1024 * 1024;

interface Entry {
  readonly event: Uint8Array;
  readonly resolve: (ack: EventAck) => void;
  readonly reject: (error: Error) => void;
}

interface Batch {
  readonly entries: readonly Entry[];
  /** Sent with fewer events than the batch bounds allow. */
  readonly partial: boolean;
  outcome: { ok: true; ack: PublishAck } | { ok: false; error: Error } | null;
}

export class Publisher {
  readonly tag: string;
  readonly batchEventsMax: number;
  readonly batchBytesMax: number;
  readonly inflightBatchesMax: number;
  readonly inflightPartialBatchesMax: number;
  readonly queueEventsMax: number;
  readonly queueBytesMax: number;
  private readonly target: PublishTarget;
  private readonly eventBytesMax: number;
  private readonly queue: Entry[] = [];
  private queueBytes = 0;
  /** Batches sent and not yet answered to the caller, in send order. */
  private readonly inflight: Batch[] = [];
  /** Partial batches sent and not yet answered by the replicas. */
  private partialInflight = 0;
  private dispatchScheduled = false;
  private closed = false;
  private readonly roomWaiters: (() => void)[] = [];
  private readonly idleWaiters: (() => void)[] = [];

  constructor(target: PublishTarget, tag: string, options: PublisherOptions = {}) {
    checkTag(tag);
    const limits = target.publishLimits();
    const eventsCeiling = Math.min(limits.batchEventsMax, REQUEST_EVENTS_MAX);
    // A request is one frame, and replicas take at most REQUEST_BYTES_MAX of it (cluster.ts,
    // channelsConfigFrom): a larger batch would only be refused.
    const bytesCeiling = Math.min(limits.frameBytesMax, REQUEST_BYTES_MAX) - REQUEST_FIXED_OVERHEAD_BYTES - tag.length;
    this.tag = tag;
    this.target = target;
    this.eventBytesMax = limits.eventBytesMax;
    this.batchEventsMax = bounded("batchEventsMax", options.batchEventsMax ?? eventsCeiling, 1, eventsCeiling);
    this.batchBytesMax = bounded("batchBytesMax", options.batchBytesMax ?? bytesCeiling, 1, bytesCeiling);
    this.inflightBatchesMax = bounded(
      "inflightBatchesMax",
      options.inflightBatchesMax ?? Math.min(PUBLISHER_INFLIGHT_BATCHES_DEFAULT, limits.inflightRequestsMax),
      1,
      limits.inflightRequestsMax,
    );
    this.inflightPartialBatchesMax = bounded(
      "inflightPartialBatchesMax",
      options.inflightPartialBatchesMax ?? Math.min(PUBLISHER_INFLIGHT_PARTIAL_BATCHES_DEFAULT, this.inflightBatchesMax),
      1,
      this.inflightBatchesMax,
    );
    this.queueEventsMax = bounded(
      "queueEventsMax",
      options.queueEventsMax ?? PUBLISHER_QUEUE_BATCHES_DEFAULT * this.batchEventsMax,
      1,
      Number.MAX_SAFE_INTEGER,
    );
    this.queueBytesMax = bounded("queueBytesMax", options.queueBytesMax ?? PUBLISHER_QUEUE_BYTES_DEFAULT, 1, Number.MAX_SAFE_INTEGER);
  }

  get queuedEvents(): number {
    return this.queue.length;
  }

  get queuedBytes(): number {
    return this.queueBytes;
  }

  /**
   * Requests sent and not yet answered to the caller. A request acknowledged before an
   * older one still counts until the older one is answered: acks go out in order, so
   * letting later ones pile up would only grow memory while the oldest is stuck.
   */
  get inflightBatches(): number {
    return this.inflight.length;
  }

  /** Whether an event of `bytes` would be queued now. */
  hasRoom(bytes = 0): boolean {
    return this.queue.length < this.queueEventsMax && this.queueBytes + bytes <= this.queueBytesMax;
  }

  /** Resolves when an event of `bytes` would be queued (at once if it would now). */
  waitForRoom(bytes = 0): Promise<void> {
    if (this.closed || this.hasRoom(bytes)) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const check = (): void => {
        if (this.closed || this.hasRoom(bytes)) resolve();
        else this.roomWaiters.push(check);
      };
      this.roomWaiters.push(check);
    });
  }

  /**
   * Queues one event; resolves with its SEQ once the CLASS's quorum acknowledged the
   * request that carried it. Rejects at once with InvalidInputError for an event no
   * request could carry, QueueFullError past the queue bound, ClientClosedError after close.
   */
  publish(event: Uint8Array): Promise<EventAck> {
    if (this.closed) return Promise.reject(new ClientClosedError(`publisher for ${this.tag} is closed`));
    const tooLarge = this.sizeProblem(event);
    if (tooLarge !== null) return Promise.reject(new InvalidInputError("TOO_LARGE", tooLarge));
    if (!this.hasRoom(event.byteLength)) {
      return Promise.reject(
        new QueueFullError(
          `publisher for ${this.tag} has ${this.queue.length} events (${this.queueBytes} bytes) waiting; at most ${this.queueEventsMax} (${this.queueBytesMax} bytes)`,
        ),
      );
    }
    return new Promise<EventAck>((resolve, reject) => {
      this.queue.push({ event, resolve, reject });
      this.queueBytes += event.byteLength;
      this.scheduleDispatch();
    });
  }

  /** Resolves once every event published so far has been answered. */
  flush(): Promise<void> {
    if (this.isIdle()) return Promise.resolve();
    return new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  /** Refuses new events and resolves once the queued ones have been answered. */
  close(): Promise<void> {
    this.closed = true;
    for (const wake of this.roomWaiters.splice(0)) wake();
    return this.flush();
  }

  private sizeProblem(event: Uint8Array): string | null {
    const bytesMax = Math.min(this.eventBytesMax, this.batchBytesMax - EVENT_OVERHEAD_BYTES);
    if (event.byteLength > bytesMax) return `event is ${event.byteLength} bytes; at most ${bytesMax}`;
    return null;
  }

  /** Dispatch after the current task, so events published together travel together. */
  private scheduleDispatch(): void {
    if (this.dispatchScheduled) return;
    this.dispatchScheduled = true;
    queueMicrotask(() => {
      this.dispatchScheduled = false;
      this.dispatch();
    });
  }

  private dispatch(): void {
    while (this.queue.length > 0 && this.inflightBatches < this.inflightBatchesMax) {
      // A partial batch waits for the partial one in flight: what arrives meanwhile joins
      // it. Decided without walking the queue, which each publish would do again.
      const full = this.queueHoldsFullBatch();
      if (!full && this.partialInflight >= this.inflightPartialBatchesMax) return;
      this.send(this.takeBatch(), !full);
    }
  }

  /**
   * Whether the next batch is full (a bound cuts the queue: no event more would fit), from
   * the queue's totals. The first event always fits (publish refuses one that does not).
   */
  private queueHoldsFullBatch(): boolean {
    return this.queue.length >= this.batchEventsMax || this.queueBytes + this.queue.length * EVENT_OVERHEAD_BYTES > this.batchBytesMax;
  }

  /** The longest prefix of the queue within the batch bounds (at least one event). */
  private takeBatch(): Entry[] {
    let count = 0;
    let bytes = 0;
    let cost = 0;
    while (count < this.queue.length && count < this.batchEventsMax) {
      const size = (this.queue[count] as Entry).event.byteLength;
      if (count > 0 && cost + size + EVENT_OVERHEAD_BYTES > this.batchBytesMax) break;
      bytes += size;
      cost += size + EVENT_OVERHEAD_BYTES;
      count++;
    }
    const entries = this.queue.splice(0, count);
    this.queueBytes -= bytes;
    for (const wake of this.roomWaiters.splice(0)) wake();
    return entries;
  }

  private send(entries: Entry[], partial: boolean): void {
    const batch: Batch = { entries, partial, outcome: null };
    if (partial) this.partialInflight++;
    this.inflight.push(batch);
    this.target
      .publish(
        this.tag,
        entries.map((entry) => entry.event),
      )
      .then(
        (ack) => this.onBatchDone(batch, { ok: true, ack }),
        (error: unknown) => this.onBatchDone(batch, { ok: false, error: error instanceof Error ? error : new Error(String(error)) }),
      );
  }

  /** Answers finished batches from the oldest on, so acks come out in publish order. */
  private onBatchDone(batch: Batch, outcome: NonNullable<Batch["outcome"]>): void {
    batch.outcome = outcome;
    if (batch.partial) this.partialInflight--;
    while (this.inflight.length > 0 && (this.inflight[0] as Batch).outcome !== null) {
      answer(this.inflight.shift() as Batch, this.tag);
    }
    this.dispatch();
    if (this.isIdle()) for (const wake of this.idleWaiters.splice(0)) wake();
  }

  private isIdle(): boolean {
    return this.queue.length === 0 && this.inflight.length === 0;
  }
}

function answer(batch: Batch, tag: string): void {
  const outcome = batch.outcome as NonNullable<Batch["outcome"]>;
  batch.entries.forEach((entry, index) => {
    if (outcome.ok) entry.resolve({ tag, seq: outcome.ack.firstSeq + index });
    else entry.reject(outcome.error);
  });
}

function bounded(name: string, value: number, min: number, max: number): number {
  if (!Number.isSafeInteger(value) || value < min || value > max)
    throw new RangeError(`${name} must be an integer in ${min}..${max}, got ${value}`);
  return value;
}
