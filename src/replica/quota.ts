/**
 * A client key's limits at this replica: the cluster's defaults (`[limits]`
 * client_events_per_second_max and client_burst_events_max, subscriptions per
 * connection), overridden per key by an admin's set-quota, which is replicated state
 * (the channel machine holds it) so every replica applies the same quota. A quota's
 * rates allow a burst of one second's worth, and a request larger than that while the key
 * owes nothing (it then owes the rest). Refusals name the limit, its value, and
 * whether it is the key's quota or the cluster's default.
 */
import type { KeyQuota } from "../core/channels/types.ts";
import { fromHex } from "../../wire/bytes.ts";
import { formatPublicKey } from "../crypto/keys.ts";
import { RateLimiter } from "./rate.ts";

export interface DefaultLimits {
  readonly eventsPerSecond: number;
  readonly burstEvents: number;
}

export class ClientLimits {
  private readonly events: RateLimiter;
  /** Only keys with a bytes-per-second quota are metered; the default is no limit. */
  private readonly bytes = new RateLimiter(1, 1);

  constructor(
    private readonly defaults: DefaultLimits,
    private readonly quotaOf: (keyHex: string) => KeyQuota | null,
  ) {
    this.events = new RateLimiter(defaults.eventsPerSecond, defaults.burstEvents);
  }

  /**
   * Null when a request of `events` events and `bytes` bytes may pass now (and then it is
   * counted against both rates); else why not, and nothing is counted. A key's quota may be
   * smaller than one request (a client batches up to `batch_events_max` events, and a
   * request's bytes are more than its events'): such a request passes while the key owes
   * nothing, and the key then waits until its rate has paid for it (RateLimiter `owe`), so
   * a quota slows a key down to its rate but never refuses a request for good.
   */
  admit(keyHex: string, events: number, bytes: number, nowMs: number): string | null {
    const quota = this.quotaOf(keyHex);
    const eventsPerSecond = quota?.eventsPerSecond ?? null;
    const bytesPerSecond = quota?.bytesPerSecond ?? null;
    // With one rate to meet (every key without a bytes/s quota, the usual case), take at once;
    // with two, take from neither unless both have room.
    const take = bytesPerSecond === null;
    if (eventsPerSecond === null) {
      if (!(take ? this.events.take(keyHex, events, nowMs) : this.events.fits(keyHex, events, nowMs))) {
        return `key ${keyText(keyHex)} is over the cluster's limit of ${this.defaults.eventsPerSecond} events/s (client_events_per_second_max, burst ${this.defaults.burstEvents}); retry later`;
      }
    } else if (
      !(take
        ? this.events.take(keyHex, events, nowMs, eventsPerSecond, eventsPerSecond, true)
        : this.events.fits(keyHex, events, nowMs, eventsPerSecond, eventsPerSecond, true))
    ) {
      const owed = this.events.owed(keyHex);
      return `key ${keyText(keyHex)} is over its quota of ${eventsPerSecond} events/s (set-quota; a request of ${counted(events, "event")}${oweNote(events, eventsPerSecond, owed, "event")}); retry later`;
    }
    if (take) return null;
    if (!this.bytes.fits(keyHex, bytes, nowMs, bytesPerSecond, bytesPerSecond, true)) {
      const owed = this.bytes.owed(keyHex);
      return `key ${keyText(keyHex)} is over its quota of ${bytesPerSecond} bytes/s (set-quota; a request of ${counted(bytes, "byte")}${oweNote(bytes, bytesPerSecond, owed, "byte")}); retry later`;
    }
    if (eventsPerSecond === null) this.events.take(keyHex, events, nowMs);
    else this.events.take(keyHex, events, nowMs, eventsPerSecond, eventsPerSecond, true);
    this.bytes.take(keyHex, bytes, nowMs, bytesPerSecond, bytesPerSecond, true);
    return null;
  }

  /** The key's subscription quota at this replica, or null: only the per-connection bound applies. */
  subscriptionsOf(keyHex: string): number | null {
    return this.quotaOf(keyHex)?.subscriptions ?? null;
  }
}

export function keyText(keyHex: string): string {
  return formatPublicKey(fromHex(keyHex));
}

/** What a refusal adds: that the key owes (from an earlier, larger request), and when a request larger than a second's worth passes. */
function oweNote(amount: number, perSecond: number, owed: number, unit: string): string {
  const owing = owed > 0 ? `; the key owes ${counted(Math.ceil(owed), unit)} from a larger request` : "";
  const larger = amount > perSecond ? ", more than a second's worth, passes only once the key owes nothing" : "";
  return `${larger}${owing}`;
}

function counted(count: number, unit: string): string {
  return `${count} ${unit}${count === 1 ? "" : "s"}`;
}
