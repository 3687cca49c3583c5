/**
 * The relay's bounds (src/README.md §9, rule 9: a limit on everything). Each is a named default
 * that `fitb relay` uses as it is and tests may lower to reach the bound quickly.
 */
import { FRAME_BYTES_MAX, REASON_BYTES_MAX } from "../../wire/types.ts";

export interface RelayLimits {
  /**
   * Open line-protocol connections on each listener (the TCP port and the Unix socket
   * count apart, so local accounts that fill the port cannot lock the probes out of the
   * socket); one more is answered `-ERR OVERLOADED` and closed.
   */
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
  /**
   * Output bytes waiting beyond which the connection runs no more commands (and so reads
   * none) until its client reads; checked before every command.
   */
  readonly readPauseOutboundBytes: number;
  /**
   * Subscription output (event and END lines) waiting across every connection beyond
   * which a subscription whose connection already has output waiting ends with `END <tag>
   * SLOW`: the per-connection bound times the connections would be gigabytes. Answers do
   * not count here (relayAnswerOutboundBytesMax).
   */
  readonly relayOutboundBytesMax: number;
  /**
   * Answers waiting across every connection beyond which a connection with any output
   * waiting runs no more commands until its client has read it all: the read-pause bound
   * times the connections would be gigabytes, and clients that never read must not make the
   * subscriptions of those that do end SLOW.
   */
  readonly relayAnswerOutboundBytesMax: number;
  /**
   * How long output may wait without the client reading any of it before the connection
   * is closed: a reader that stopped reading would otherwise hold its output for ever.
   */
  readonly outputStallTimeoutMs: number;
  /** Tags with a publisher at once; an idle one is retired to make room for a new tag. */
  readonly publishersMax: number;
  /**
   * Event bytes of publishes not yet answered, across every connection and tag (queued in
   * a publisher or in flight to the replicas); past it a new publish is refused with
   * `-ERR OVERLOADED` instead of queued.
   */
  readonly publishBytesMax: number;
  /**
   * Event bytes of one connection's publishes not yet answered; past it that connection's
   * next publish waits for its own acknowledgements (its reading pauses, as at a full tag
   * queue), so that one busy script cannot take the whole `publishBytesMax` from the others.
   */
  readonly connectionPublishBytesMax: number;
  /** After QUIT or at shutdown, how long a client has to read what is left. */
  readonly closeFlushTimeoutMs: number;
}

/** A thousand scripts and consoles on one host (per listener) is far more than a probe host runs. */
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
/**
 * Thirty-two stalled readers' worth of RELAY_EVENT_OUTBOUND_BYTES_MAX: without it the
 * connections of both listeners at their per-connection bound would hold about 2048 x 8 MiB.
 */
export const RELAY_OUTBOUND_BYTES_MAX = 256 * 1024 * 1024;
/**
 * Thirty-two non-reading connections at RELAY_READ_PAUSE_OUTBOUND_BYTES: answers are a few
 * bytes a command, so honest clients that read hold little of them at any time.
 */
export const RELAY_ANSWER_OUTBOUND_BYTES_MAX = 32 * 1024 * 1024;
/**
 * A reader that takes nothing for a minute has stopped (a suspended `nc`, a script stuck
 * elsewhere); one that is merely slow takes some bytes now and then and is never cut off.
 */
export const RELAY_OUTPUT_STALL_TIMEOUT_MS = 60_000;
export const RELAY_PUBLISHERS_MAX = 1024;
/**
 * Each publisher bounds its own queue (PUBLISHER_QUEUE_BYTES_DEFAULT, 64 MiB), but a
 * thousand busy tags would add up to 64 GiB; this caps them together at four tags' worth.
 */
export const RELAY_PUBLISH_BYTES_MAX = 256 * 1024 * 1024;
/** How many connections at their own bound it takes to fill RELAY_PUBLISH_BYTES_MAX. */
export const RELAY_PUBLISH_BYTES_SHARES = 4;
/** A quarter of the relay's publish budget: a busy script still has 64 MiB in flight. */
export const RELAY_CONNECTION_PUBLISH_BYTES_MAX = RELAY_PUBLISH_BYTES_MAX / RELAY_PUBLISH_BYTES_SHARES;
export const RELAY_CLOSE_FLUSH_TIMEOUT_MS = 10_000;
/**
 * The relay's client holds the cluster's `connection_subscriptions_max` subscriptions at
 * most, across both listeners; with a Unix socket one in this many of them is kept for the
 * socket, so that local accounts subscribing through the TCP port cannot lock the probes
 * out (a pattern takes one per channel, so a few `SUB *.*` would take them all).
 */
export const RELAY_UNIX_SUBSCRIPTIONS_RESERVE_SHARE = 4;

/** How many of the client's `subscriptionsMax` the TCP port's connections may hold when there is a Unix socket too. */
export function tcpSubscriptionsMax(subscriptionsMax: number): number {
  return subscriptionsMax - Math.floor(subscriptionsMax / RELAY_UNIX_SUBSCRIPTIONS_RESERVE_SHARE);
}
/** An answer or END line: the fixed words, a tag, numbers and a reason of at most REASON_BYTES_MAX. */
export const RELAY_ANSWER_LINE_BYTES_MAX = REASON_BYTES_MAX + 256;

export const DEFAULT_RELAY_LIMITS: RelayLimits = {
  connectionsMax: RELAY_CONNECTIONS_MAX,
  pendingAnswersMax: RELAY_PENDING_ANSWERS_MAX,
  inboxBytesMax: RELAY_INBOX_BYTES_MAX,
  subscriptionsPerConnectionMax: RELAY_SUBSCRIPTIONS_PER_CONNECTION_MAX,
  eventOutboundBytesMax: RELAY_EVENT_OUTBOUND_BYTES_MAX,
  readPauseOutboundBytes: RELAY_READ_PAUSE_OUTBOUND_BYTES,
  relayOutboundBytesMax: RELAY_OUTBOUND_BYTES_MAX,
  relayAnswerOutboundBytesMax: RELAY_ANSWER_OUTBOUND_BYTES_MAX,
  outputStallTimeoutMs: RELAY_OUTPUT_STALL_TIMEOUT_MS,
  publishersMax: RELAY_PUBLISHERS_MAX,
  publishBytesMax: RELAY_PUBLISH_BYTES_MAX,
  connectionPublishBytesMax: RELAY_CONNECTION_PUBLISH_BYTES_MAX,
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
  const publishBytesMax = overrides.publishBytesMax ?? DEFAULT_RELAY_LIMITS.publishBytesMax;
  // A lowered relay-wide budget lowers each connection's share with it, unless given.
  const connectionPublishBytesMax = Math.max(1, Math.floor(publishBytesMax / RELAY_PUBLISH_BYTES_SHARES));
  const limits: RelayLimits = { ...DEFAULT_RELAY_LIMITS, connectionPublishBytesMax, ...overrides };
  for (const [name, value] of Object.entries(limits)) {
    if (!Number.isSafeInteger(value) || value < 1) throw new RangeError(`relay limit ${name} must be a positive integer, got ${value}`);
  }
  const answerSlack = (limits.pendingAnswersMax + limits.subscriptionsPerConnectionMax + 1) * RELAY_ANSWER_LINE_BYTES_MAX;
  const batchSlack = 2 * FRAME_BYTES_MAX;
  return { ...limits, outboundBytesMax: limits.eventOutboundBytesMax + limits.readPauseOutboundBytes + batchSlack + answerSlack };
}
