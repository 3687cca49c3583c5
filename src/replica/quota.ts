/**
 * A client key's limits at this replica: the cluster's defaults (`[limits]`
 * client_events_per_second_max and client_burst_events_max, subscriptions per
 * connection), overridden per key by an admin's set-quota, which is replicated state
 * (the channel machine holds it) so every replica applies the same quota. A quota's
 * rates allow a burst of one second's worth. Refusals name the limit, its value, and
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

  /** Null when a request of `events` events and `bytes` bytes may pass now; else why not. */
  admit(keyHex: string, events: number, bytes: number, nowMs: number): string | null {
    const quota = this.quotaOf(keyHex);
    const eventsPerSecond = quota?.eventsPerSecond ?? null;
    if (eventsPerSecond === null) {
      if (!this.events.take(keyHex, events, nowMs)) {
        return `key ${keyText(keyHex)} is over the cluster's limit of ${this.defaults.eventsPerSecond} events/s (client_events_per_second_max, burst ${this.defaults.burstEvents}); retry later`;
      }
    } else if (!this.events.take(keyHex, events, nowMs, eventsPerSecond, eventsPerSecond)) {
      return `key ${keyText(keyHex)} is over its quota of ${eventsPerSecond} events/s (set-quota); retry later`;
    }
    const bytesPerSecond = quota?.bytesPerSecond ?? null;
    if (bytesPerSecond !== null && !this.bytes.take(keyHex, bytes, nowMs, bytesPerSecond, bytesPerSecond)) {
      return `key ${keyText(keyHex)} is over its quota of ${bytesPerSecond} bytes/s (set-quota; a request of ${bytes} bytes); retry later`;
    }
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
