/**
 * The relay's bounds (src/README.md §9, rule 9: a limit on everything). Each is a named default
 * that `fitb relay` uses as it is and tests may lower to reach the bound quickly.
 */
import { FRAME_BYTES_MAX, REASON_BYTES_MAX } from "../../wire/types.ts";

export interface RelayLimits {
  /** Open line-protocol connections; one more is answered `-ERR OVERLOADED` and closed. */
  readonly connectionsMax: number;
  /** Commands of one connection whose answer is not yet written; past it reading pauses. */
  readonly pendingAnswersMax: number;
  /**
   * Bytes received on one connection and not yet parsed. Reading pauses while any wait,
   * so only what was already in flight arrives after that; more means the pause did not
   * hold, and the connection is cut off.
   */
  readonly inboxBytesMax: number;
  /** `SUB`s open on one connection. */
  readonly subscriptionsPerConnectionMax: number;
  /** Output bytes waiting for a slow reader beyond which its subscription ends with `END <tag> SLOW`. */
  readonly eventOutboundBytesMax: number;
  /** Output bytes waiting beyond which the relay stops reading the client's commands. */
  readonly readPauseOutboundBytes: number;
  /** Tags with a publisher at once; an idle one is retired to make room for a new tag. */
  readonly publishersMax: number;
  /**
   * Event bytes of publishes not yet answered, across every connection and tag (queued in
   * a publisher or in flight to the replicas); past it a new publish is refused with
   * `-ERR OVERLOADED` instead of queued.
   */
  readonly publishBytesMax: number;
  /** After QUIT or at shutdown, how long a client has to read what is left. */
  readonly closeFlushTimeoutMs: number;
}

/** A thousand scripts and consoles on one host is far more than a probe host runs. */
export const RELAY_CONNECTIONS_MAX = 1024;
/**
 * Enough for one pipelining connection to keep a publisher's requests in flight (four
 * full batches at the default batch_events_max of 1024); small enough to bound answers.
 */
export const RELAY_PENDING_ANSWERS_MAX = 4096;
/** Several socket reads' worth (a read takes at most a few hundred KiB). */
export const RELAY_INBOX_BYTES_MAX = 4 * 1024 * 1024;
export const RELAY_SUBSCRIPTIONS_PER_CONNECTION_MAX = 64;
/** A few seconds of a busy channel for a reader that stalls, then it resubscribes. */
export const RELAY_EVENT_OUTBOUND_BYTES_MAX = 8 * 1024 * 1024;
export const RELAY_READ_PAUSE_OUTBOUND_BYTES = 1024 * 1024;
export const RELAY_PUBLISHERS_MAX = 1024;
/**
 * Each publisher bounds its own queue (PUBLISHER_QUEUE_BYTES_DEFAULT, 64 MiB), but a
 * thousand busy tags would add up to 64 GiB; this caps them together at four tags' worth.
 */
export const RELAY_PUBLISH_BYTES_MAX = 256 * 1024 * 1024;
export const RELAY_CLOSE_FLUSH_TIMEOUT_MS = 10_000;
/** An answer or END line: the fixed words, a tag, numbers and a reason of at most REASON_BYTES_MAX. */
export const RELAY_ANSWER_LINE_BYTES_MAX = REASON_BYTES_MAX + 256;

export const DEFAULT_RELAY_LIMITS: RelayLimits = {
  connectionsMax: RELAY_CONNECTIONS_MAX,
  pendingAnswersMax: RELAY_PENDING_ANSWERS_MAX,
  inboxBytesMax: RELAY_INBOX_BYTES_MAX,
  subscriptionsPerConnectionMax: RELAY_SUBSCRIPTIONS_PER_CONNECTION_MAX,
  eventOutboundBytesMax: RELAY_EVENT_OUTBOUND_BYTES_MAX,
  readPauseOutboundBytes: RELAY_READ_PAUSE_OUTBOUND_BYTES,
  publishersMax: RELAY_PUBLISHERS_MAX,
  publishBytesMax: RELAY_PUBLISH_BYTES_MAX,
  closeFlushTimeoutMs: RELAY_CLOSE_FLUSH_TIMEOUT_MS,
};

/** The limits with the hard output bound derived from them. */
export interface ResolvedRelayLimits extends RelayLimits {
  /**
   * Output bytes one connection may hold at all: the event bound, plus one batch that
   * an idle connection always takes (a frame's worth), plus every answer and END line
   * that can still come once reading has paused. Past it the connection is dropped.
   */
  readonly outboundBytesMax: number;
}

export function resolveRelayLimits(overrides: Partial<RelayLimits> = {}): ResolvedRelayLimits {
  const limits: RelayLimits = { ...DEFAULT_RELAY_LIMITS, ...overrides };
  for (const [name, value] of Object.entries(limits)) {
    if (!Number.isSafeInteger(value) || value < 1) throw new RangeError(`relay limit ${name} must be a positive integer, got ${value}`);
  }
  const answerSlack = (limits.pendingAnswersMax + limits.subscriptionsPerConnectionMax + 1) * RELAY_ANSWER_LINE_BYTES_MAX;
  const batchSlack = 2 * FRAME_BYTES_MAX;
  return { ...limits, outboundBytesMax: limits.eventOutboundBytesMax + limits.readPauseOutboundBytes + batchSlack + answerSlack };
}
