/**
 * One live tail of the console (`GET /api/tail?tag=T`): a subscription to the channel,
 * sent to the page as server-sent events: "ready", then one "event" per delivered event,
 * with `batch` (the tail's id of its batch) and `vouchers` (the replicas that sent that
 * batch so far), "vouch" (`batch`, `vouchers`) as more of them do, "dropped" (`count`,
 * `reason`) when the page did not keep up, and "end" (`reason`) last.
 *
 * The response body is a direct stream: the tail writes a chunk, waits until the socket
 * took it, and holds what comes meanwhile in a TailBuffer, within a byte budget. A page
 * that reads nothing at all for `stallMs` while bytes wait is gone or stuck: its connection
 * is reset, which ends the tail and frees its slot.
 *
 * A quiet channel sends nothing, and a tail's connection has no idle timeout: a page that
 * vanished without a FIN (a laptop closed, a network gone) would hold its slot for ever.
 * So a tail that has had nothing to write for `heartbeatMs` writes an SSE comment (which
 * EventSource ignores) the same way as an event: the bytes that the vanished page never
 * acknowledges make TCP give up on the connection, or stall it by the rule above, and the
 * tail ends.
 */
import type { FitbClient } from "../../client/client.ts";
import { describeError } from "../../client/errors.ts";
import type { ReceivedBatch, Subscription } from "../../client/subscription.ts";
import { SYS_EVENTS_TAG } from "../../core/voting/group-events.ts";
import { vouchQuorum } from "../../core/voting/quorum.ts";
import { formatPublicKey } from "../../crypto/keys.ts";
import { isLineSafe } from "../../relay/format.ts";
import { noticeReason, sseMessage, TailBuffer } from "./tail-buffer.ts";
import { VouchCounter } from "./vouches.ts";

/** Bytes of a payload shown in the tail. */
const TAIL_PAYLOAD_BYTES_MAX = 1_024;
/** The first bytes of every tail, an SSE comment: the page sees the response at once, before the subscription is up. */
const TAIL_OPENING = ": fitb console tail\n\n";
/** How long a tail with nothing to write waits before it writes TAIL_HEARTBEAT (far below the stall rule's TAIL_STALL_MS). */
export const TAIL_HEARTBEAT_MS = 15_000;
/** What a tail writes when it had nothing to write for heartbeatMs: an SSE comment, ignored by EventSource. */
export const TAIL_HEARTBEAT = ": heartbeat\n\n";

export interface TailOptions {
  readonly client: FitbClient;
  readonly tag: string;
  /** Bytes the tail may hold for a page that reads slowly (TailBuffer). */
  readonly bytesMax: number;
  /** How long a written chunk may wait for the page before the tail is ended. */
  readonly stallMs: number;
  /** How long the tail waits with nothing to write before it writes TAIL_HEARTBEAT (TAIL_HEARTBEAT_MS). */
  readonly heartbeatMs: number;
  /** Called once, when the tail ends for whatever reason: the server frees its slot. */
  readonly onClose: () => void;
}

export class ConsoleTail {
  readonly buffer: TailBuffer;
  private subscription: Subscription | null = null;
  /** The end notice is queued: the pump writes what is left and ends the response. */
  private ending = false;
  private closed = false;
  private wake: PromiseWithResolvers<void> | null = null;

  constructor(private readonly options: TailOptions) {
    this.buffer = new TailBuffer(options.bytesMax);
    this.subscribe();
  }

  /** The response that streams this tail; cancelling it (the page went away) closes the tail. */
  response(headers: Record<string, string>): Response {
    const stream = new ReadableStream({
      type: "direct",
      pull: (controller) => this.pump(controller),
      cancel: () => this.close(),
    });
    return new Response(stream, { headers: { "content-type": "text/event-stream", "cache-control": "no-store", ...headers } });
  }

  /** Unsubscribes and frees the tail's slot; idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.wakePump();
    if (this.subscription !== null) void this.subscription.close();
    this.options.onClose();
  }

  private subscribe(): void {
    const { client, tag } = this.options;
    let rule = "";
    let batches = 0;
    const vouches = new VouchCounter(Date.now, (batch, vouchers) => this.send("vouch", sseMessage("vouch", { batch, vouchers })));
    const onBatch = (batch: ReceivedBatch): void => {
      const id = ++batches;
      const vouchers = batch.copyKey === undefined ? [] : vouches.delivered(batch.copyKey, id);
      batch.events.forEach((payload, i) => {
        const event = {
          tag: batch.tag,
          seq: (batch.seq ?? batch.pubSeq) + i,
          publisher: formatPublicKey(batch.publisher),
          ts: batch.ts,
          batch: id,
          vouchers,
          of: client.n,
          rule,
          payload: showPayload(payload),
        };
        this.send("event", sseMessage("event", event));
      });
    };
    client
      .channelInfo(tag)
      .then((info) => {
        rule = deliveryRule(tag, client.f, info.fault, info.order);
        return client.subscribe(tag, { skipTrimmed: true, onCopy: (copy) => vouches.copy(copy.replica, copy.key) }, onBatch);
      })
      .then((started) => {
        if (this.closed) {
          void started.close();
          return;
        }
        this.subscription = started;
        this.notice(sseMessage("ready", { tag }));
        started.done.then(
          () => this.end("subscription closed"),
          (error: unknown) => this.end(describeError(error)),
        );
      })
      .catch((error: unknown) => this.end(describeError(error)));
  }

  private send(kind: "event" | "vouch", message: string): void {
    if (this.closed || this.ending) return;
    if (this.buffer.offer(kind, message)) this.wakePump();
  }

  private notice(message: string): void {
    if (this.closed || this.ending) return;
    this.buffer.offerNotice(message);
    this.wakePump();
  }

  /** The last message: the pump writes it and ends the response. */
  private end(reason: string): void {
    this.notice(sseMessage("end", { reason: noticeReason(reason) }));
    this.ending = true;
  }

  /** Bun calls it once and keeps the response open until it settles. */
  private async pump(controller: ReadableStreamDirectController): Promise<void> {
    try {
      if (!(await this.write(controller, TAIL_OPENING))) return;
      while (!this.closed) {
        const chunk = this.buffer.take();
        if (chunk === null) {
          if (this.ending) return;
          if ((await this.nextMessageOrHeartbeat()) === "message") continue;
          // Through the stall rule like any chunk: a page that does not take it is gone.
          if (!(await this.write(controller, TAIL_HEARTBEAT))) return;
          continue;
        }
        if (!(await this.write(controller, chunk))) return;
        this.buffer.drained();
      }
    } finally {
      this.close();
    }
  }

  /**
   * Writes a chunk and waits until the socket took it; false when the page went away or
   * read nothing for stallMs (then the connection is reset: closing the stream with an
   * error drops what Bun still holds for it).
   */
  private async write(controller: ReadableStreamDirectController, chunk: string): Promise<boolean> {
    controller.write(chunk);
    const drained = controller.flush(true);
    if (typeof drained === "number") return !this.closed;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const stalled = new Promise<"stalled">((resolve) => {
      timer = setTimeout(() => resolve("stalled"), this.options.stallMs);
    });
    try {
      const outcome = await Promise.race([drained, stalled]);
      if (outcome !== "stalled") return !this.closed;
    } finally {
      // Also when `drained` rejects (the socket failed): the timer must not outlive the write.
      clearTimeout(timer);
    }
    controller.close(new Error(`the page read nothing for ${this.options.stallMs} ms`));
    return false;
  }

  /**
   * Waits for a message to write (or the tail's end), or heartbeatMs, whichever comes
   * first. Each wait has its own wake, so a quiet tail's heartbeats do not pile handlers on
   * one that never resolves; nothing is missed, since the pump looks at the buffer first.
   */
  private async nextMessageOrHeartbeat(): Promise<"message" | "heartbeat"> {
    this.wake = Promise.withResolvers<void>();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const beat = new Promise<"heartbeat">((resolve) => {
      timer = setTimeout(() => resolve("heartbeat"), this.options.heartbeatMs);
    });
    try {
      return await Promise.race([this.wake.promise.then(() => "message" as const), beat]);
    } finally {
      clearTimeout(timer);
    }
  }

  private wakePump(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.resolve();
  }
}

/**
 * When this client delivers an event of the channel (src/README.md §3), shown beside the
 * count of replicas that actually sent it: byzantine/total, once f+1 replicas sent the
 * same batch; byzantine/none, once f+1 replicas sent events of its publisher; crash, the
 * first copy; `$sys.events`, once f+1 replicas reported the same group event.
 */
function deliveryRule(tag: string, f: number, fault: string, order: string): string {
  if (tag === SYS_EVENTS_TAG) return `delivered once ${vouchQuorum(f)} replicas reported the same event`;
  if (fault === "crash") return "delivered on the first copy (crash channel)";
  return order === "total"
    ? `delivered once ${vouchQuorum(f)} replicas sent the same batch`
    : `delivered once ${vouchQuorum(f)} replicas sent events of its publisher`;
}

function showPayload(payload: Uint8Array): string {
  const cut = payload.subarray(0, TAIL_PAYLOAD_BYTES_MAX);
  // The relay's rule for an EVENT line: printable UTF-8 is shown as text, the rest as base64.
  const shown = isLineSafe(cut) ? new TextDecoder().decode(cut) : `base64:${Buffer.from(cut).toString("base64")}`;
  return payload.length > TAIL_PAYLOAD_BYTES_MAX ? `${shown}... (${payload.length} bytes)` : shown;
}
