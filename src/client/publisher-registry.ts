/**
 * The publishers registered on one channel, as a subscriber of a crash-fault channel
 * knows them. There a single replica's copy of a batch is delivered on its own (no vote),
 * so without this filter one compromised replica, or an attacker who could inject frames,
 * could deliver any batch validly signed by any key at all. With it, a copy is delivered
 * only if its publisher is a key that f+1 replicas list as registered (QUERY
 * "publishers", queries.ts `publishersRule`): at least one of them is correct.
 *
 * Registrations happen while a subscription runs, and replicas execute them at different
 * moments, so a key not in the set is not refused at once: it is "unknown", its copies
 * are held (delivery-voter.ts), and the set is learnt again. A key still missing
 * UNKNOWN_PUBLISHER_WAIT_MS after it first appeared is refused, and stays refused for
 * REFUSED_PUBLISHER_MS before it may cause another look. Refreshes are at most one at a
 * time and REFRESH_INTERVAL_MS apart, so made-up keys cost the replicas a bounded trickle
 * of queries, and every map here is bounded.
 *
 * Registrations are also revoked while a subscription runs (`unregister`): the set is
 * learnt again every PUBLISHERS_REFRESH_INTERVAL_MS even when no unknown key asks for it,
 * and a key that f+1 replicas no longer list leaves it, so a revoked (say, stolen) key's
 * new batches, forwarded by a faulty replica, stop being delivered within that interval.
 * It leaves only on a listing at least as fresh as the freshest that listed it (their `at`,
 * PublisherListing): the periodic query asks for the client's own floor only, so f+1
 * replicas that have yet to execute a registration made moments ago may answer it, and
 * their silence about the key says nothing. That `at` is one f+1 replicas reached, so a
 * faulty replica cannot keep a key from ever leaving by claiming a huge one.
 *
 * Pure bookkeeping: the caller runs the queries and passes the clock.
 */
import { toHex } from "../crypto/encoding.ts";
import { KEYS_PER_CHANNEL_MAX } from "../core/channels/constants.ts";
import type { PublisherVerdict } from "../core/voting/delivery-voter.ts";
import type { PublisherListing } from "./queries.ts";

/** Least time between two refreshes of one subscription's set. */
export const REFRESH_INTERVAL_MS = 500;
/** Most time between two refreshes: a key unregistered since the last stops being delivered after at most this long. */
export const PUBLISHERS_REFRESH_INTERVAL_MS = 30_000;
/** How long a key may stay unknown (its copies held) before it is refused. */
export const UNKNOWN_PUBLISHER_WAIT_MS = 5_000;
/** How long a refused key stays refused before its copies cause another look. */
export const REFUSED_PUBLISHER_MS = 30_000;
/**
 * Unknown keys waiting for a refresh at once. Past it the one waiting longest makes room:
 * it only loses its place in the wait (its copies stay held, and it is looked at again
 * with them), so a flood of made-up keys cannot get a newly registered key refused.
 */
export const UNKNOWN_PUBLISHERS_MAX = 64;
/** Refused keys remembered; past it the oldest is forgotten (and may cause a look again). */
export const REFUSED_PUBLISHERS_MAX = 1024;

export class PublisherRegistry {
  /** Keys in the set, by hex: the highest `at` of a listing that listed each. */
  private known: ReadonlyMap<string, number>;
  /** Unknown keys, by hex: when each was first seen. */
  private readonly unknown = new Map<string, number>();
  /** Refused keys, by hex: when each was refused. Oldest first. */
  private readonly refused = new Map<string, number>();
  private inFlight = false;
  private wanted = false;
  private lastStartMs = Number.NEGATIVE_INFINITY;
  /** When the set was last asked for (or given): the periodic refresh counts from here. */
  private lastAskedMs: number;
  private refreshes = 0;

  /**
   * `listing`: the set as learnt when subscribing (a bare list counts as learnt at seq 0);
   * `learntAtMs`: when (the next periodic refresh is PUBLISHERS_REFRESH_INTERVAL_MS later).
   */
  constructor(listing: PublisherListing | readonly Uint8Array[], learntAtMs = 0) {
    const { publishers, at } = "publishers" in listing ? listing : { publishers: listing, at: 0 };
    this.known = new Map(publishers.map((key) => [toHex(key), at]));
    this.lastAskedMs = learntAtMs;
  }

  /** Keys in the set now. */
  get size(): number {
    return this.known.size;
  }

  /** Completed refreshes (for tests and diagnostics). */
  get refreshCount(): number {
    return this.refreshes;
  }

  /** Registered (true), refused (false), or not known yet ("unknown": hold its copies, refresh). */
  check(publisher: Uint8Array, nowMs: number): PublisherVerdict {
    const hex = toHex(publisher);
    if (this.known.has(hex)) return true;
    const refusedAt = this.refused.get(hex);
    if (refusedAt !== undefined) {
      if (nowMs - refusedAt < REFUSED_PUBLISHER_MS) return false;
      this.refused.delete(hex);
    }
    if (!this.unknown.has(hex)) {
      if (this.unknown.size >= UNKNOWN_PUBLISHERS_MAX) this.unknown.delete(this.unknown.keys().next().value as string);
      this.unknown.set(hex, nowMs);
    }
    this.wanted = true;
    return "unknown";
  }

  /**
   * Whether a refresh should start now: none runs, the last began long enough ago, and one
   * is wanted (an unknown key waits) or the periodic one is due.
   */
  shouldRefresh(nowMs: number): boolean {
    if (this.inFlight || nowMs - this.lastStartMs < REFRESH_INTERVAL_MS) return false;
    return this.wanted || nowMs - this.lastAskedMs >= PUBLISHERS_REFRESH_INTERVAL_MS;
  }

  /** A refresh has started. */
  begin(nowMs: number): void {
    this.inFlight = true;
    this.wanted = false;
    this.lastStartMs = nowMs;
    this.lastAskedMs = nowMs;
  }

  /**
   * A refresh answered: the set is replaced (a destroyed and re-created channel may have
   * dropped keys), but for keys listed in a listing fresher than this one (see the top of
   * this file), which stay until one at least as fresh leaves them out. Unknown keys
   * now in it are known; those still missing after UNKNOWN_PUBLISHER_WAIT_MS are refused;
   * the others wait for another refresh.
   */
  update(listing: PublisherListing, nowMs: number): void {
    this.inFlight = false;
    this.refreshes++;
    const known = new Map<string, number>();
    for (const key of listing.publishers) {
      const hex = toHex(key);
      known.set(hex, Math.max(this.known.get(hex) ?? 0, listing.at));
    }
    // Bounded like a channel's registrations: a listing holds at most KEYS_PER_CHANNEL_MAX.
    for (const [hex, learntAt] of this.known) {
      if (known.size >= KEYS_PER_CHANNEL_MAX) break;
      if (!known.has(hex) && learntAt > listing.at) known.set(hex, learntAt);
    }
    this.known = known;
    for (const [hex, firstSeenMs] of this.unknown) {
      if (this.known.has(hex)) this.unknown.delete(hex);
      else if (nowMs - firstSeenMs >= UNKNOWN_PUBLISHER_WAIT_MS) {
        this.unknown.delete(hex);
        this.refuse(hex, nowMs);
      }
    }
    if (this.unknown.size > 0) this.wanted = true;
  }

  /** A refresh failed (no quorum in time): unknown keys wait for the next one, or are refused once they waited too long. */
  failed(nowMs: number): void {
    this.inFlight = false;
    for (const [hex, firstSeenMs] of this.unknown) {
      if (nowMs - firstSeenMs < UNKNOWN_PUBLISHER_WAIT_MS) continue;
      this.unknown.delete(hex);
      this.refuse(hex, nowMs);
    }
    if (this.unknown.size > 0) this.wanted = true;
  }

  private refuse(hex: string, nowMs: number): void {
    if (this.refused.size >= REFUSED_PUBLISHERS_MAX) this.refused.delete(this.refused.keys().next().value as string);
    this.refused.set(hex, nowMs);
  }
}
