/**
 * The client's timeouts and bounds, with their defaults. Cluster-wide limits (frame
 * size, event size, batch size, in-flight requests) come from the cluster file, which
 * every replica enforces; the client keeps under them rather than learn them from errors.
 */
import type { ClusterConfig } from "../config/cluster.ts";
import type { SigningKey } from "../crypto/keys.ts";
import { DEFAULT_BACKOFF, type BackoffPolicy } from "./backoff.ts";
import type { CrashNoneTargets } from "./request-tracker.ts";

export interface ClientTimeouts {
  /** `FitbClient.connect` waits this long for n-f sessions. */
  readonly connectMs: number;
  /** TCP connect plus handshake with one replica. */
  readonly sessionMs: number;
  /** A publish or admin command fails with TIMEOUT after this long without its quorum. */
  readonly requestMs: number;
  /** Replicas that have not answered a request are sent it again after this long. */
  readonly resendMs: number;
  /** A query (and the start of a subscription) fails after this long without its quorum. */
  readonly queryMs: number;
  /** Keepalive: a PING after this long without traffic. */
  readonly pingIntervalMs: number;
  /** A connection is dropped after this long without receiving anything. */
  readonly idleMs: number;
  /** A session to a multi-homed replica (several addresses) moves to its next address after this long without receiving anything. */
  readonly addressSilenceMs: number;
  /** While a multi-homed replica is reached at another address, its preferred address is probed after this long (doubling to 30 s while it fails). */
  readonly preferredRetryMs: number;
  /** The replica group is read again this often, to follow changes (membership-follow.ts). */
  readonly membershipRefreshMs: number;
}

export const DEFAULT_TIMEOUTS: ClientTimeouts = {
  connectMs: 5_000,
  sessionMs: 5_000,
  requestMs: 15_000,
  resendMs: 2_000,
  queryMs: 5_000,
  pingIntervalMs: 5_000,
  idleMs: 20_000,
  addressSilenceMs: 3_000,
  preferredRetryMs: 2_000,
  membershipRefreshMs: 10_000,
};

/** The longest wait between probes of a multi-homed replica's preferred address. */
export const PREFERRED_RETRY_MS_MAX = 30_000;

export interface ClientLimits {
  /** Requests in flight at once (default: the cluster's client_inflight_requests_max). */
  readonly inflightRequestsMax: number;
  /** Callers that may wait for an in-flight slot before publish rejects with OVERLOADED. */
  readonly waitersMax: number;
  /** Bytes that may wait in one connection's send queue. */
  readonly outboundBytesMax: number;
  /** Times a request is re-numbered and sent again after REPLAY before it fails. */
  readonly replayRetriesMax: number;
  /** Subscriptions open at once (default: the cluster's connection_subscriptions_max). */
  readonly subscriptionsMax: number;
}

/** Callers queued for an in-flight slot; past this, publishing is refused, not queued. */
export const WAITERS_MAX_DEFAULT = 65_536;
/** Re-numbering after REPLAY happens when two processes share a key; a few tries settle it or prove it. */
export const REPLAY_RETRIES_MAX_DEFAULT = 3;
/** The send queue holds at least this much, and at least two full frames. */
export const OUTBOUND_BYTES_MIN = 8 * 1024 * 1024;

export function defaultLimits(config: ClusterConfig): ClientLimits {
  return {
    inflightRequestsMax: config.limits.clientInflightRequestsMax,
    waitersMax: WAITERS_MAX_DEFAULT,
    outboundBytesMax: Math.max(OUTBOUND_BYTES_MIN, 2 * config.limits.frameBytesMax),
    replayRetriesMax: REPLAY_RETRIES_MAX_DEFAULT,
    subscriptionsMax: config.limits.connectionSubscriptionsMax,
  };
}

/** A diagnostic the client reports: a replica went down or came up, or misbehaved. */
export interface ClientLogEntry {
  readonly level: "info" | "warn";
  readonly message: string;
  readonly replica?: number;
}

export interface FitbClientOptions {
  readonly config: ClusterConfig;
  /** The key this client signs with and authenticates as. */
  readonly key: SigningKey;
  readonly timeouts?: Partial<ClientTimeouts>;
  readonly limits?: Partial<ClientLimits>;
  readonly backoff?: Partial<BackoffPolicy>;
  /** Jitter source in [0, 1); default Math.random. */
  readonly random?: () => number;
  /** Wall clock in ms since the epoch, for request timestamps and timers; default Date.now. */
  readonly now?: () => number;
  readonly onLog?: (entry: ClientLogEntry) => void;
  /**
   * Where a crash/none publish goes (request-tracker.ts CrashNoneTargets): "quorum" (the
   * default), f+1 replicas first and the others only when one of them refuses, drops or is
   * slower than the hedge delay; "all", every replica at once.
   */
  readonly crashNoneTargets?: CrashNoneTargets;
}

export interface ResolvedOptions {
  readonly config: ClusterConfig;
  readonly key: SigningKey;
  readonly timeouts: ClientTimeouts;
  readonly limits: ClientLimits;
  readonly backoff: BackoffPolicy;
  readonly random: () => number;
  readonly now: () => number;
  readonly log: (entry: ClientLogEntry) => void;
  readonly crashNoneTargets: CrashNoneTargets;
}

export function resolveOptions(options: FitbClientOptions): ResolvedOptions {
  const timeouts = { ...DEFAULT_TIMEOUTS, ...options.timeouts };
  for (const [name, value] of Object.entries(timeouts)) {
    if (!Number.isSafeInteger(value) || value < 1) throw new RangeError(`timeout ${name} must be a positive integer of ms, got ${value}`);
  }
  const limits = { ...defaultLimits(options.config), ...options.limits };
  for (const [name, value] of Object.entries(limits)) {
    if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`limit ${name} must be a non-negative integer, got ${value}`);
  }
  if (limits.inflightRequestsMax < 1) throw new RangeError("inflightRequestsMax must be at least 1");
  if (options.crashNoneTargets !== undefined && options.crashNoneTargets !== "quorum" && options.crashNoneTargets !== "all") {
    throw new RangeError(`crashNoneTargets must be "quorum" or "all", got ${String(options.crashNoneTargets)}`);
  }
  return {
    config: options.config,
    key: options.key,
    timeouts,
    limits,
    backoff: { ...DEFAULT_BACKOFF, ...options.backoff },
    random: options.random ?? Math.random,
    now: options.now ?? Date.now,
    log: options.onLog ?? (() => undefined),
    crashNoneTargets: options.crashNoneTargets ?? "quorum",
  };
}
