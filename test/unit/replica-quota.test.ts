// A client key's limits at a replica (src/replica/quota.ts): the cluster's defaults, a
// key's quota overriding them, bytes per second only under a quota, and refusals that
// name the limit.
import { describe, expect, test } from "bun:test";
import type { KeyQuota } from "../../src/core/channels/types.ts";
import { ClientLimits } from "../../src/replica/quota.ts";

const KEY = "00".repeat(32);
const OTHER = "11".repeat(32);

function limits(quotas: Record<string, KeyQuota>): ClientLimits {
  return new ClientLimits({ eventsPerSecond: 100, burstEvents: 200 }, (hex) => quotas[hex] ?? null);
}

describe("ClientLimits", () => {
  test("without a quota, the cluster's default rate and burst apply, and the refusal says so", () => {
    const l = limits({});
    expect(l.admit(KEY, 200, 10, 0)).toBeNull();
    expect(l.admit(KEY, 1, 10, 0)).toMatch(
      /is over the cluster's limit of 100 events\/s \(client_events_per_second_max, burst 200\); retry later$/,
    );
  });

  test("a quota overrides the default for that key only, with a burst of one second's worth", () => {
    const l = limits({ [KEY]: { eventsPerSecond: 5, bytesPerSecond: null, subscriptions: null } });
    expect(l.admit(KEY, 5, 10, 0)).toBeNull();
    expect(l.admit(KEY, 1, 10, 0)).toMatch(
      /^key ed25519:\S+ is over its quota of 5 events\/s \(set-quota; a request of 1 events\); retry later$/,
    );
    expect(l.admit(KEY, 1, 10, 200)).toBeNull();
    expect(l.admit(OTHER, 150, 10, 0)).toBeNull();
  });

  test("bytes per second are metered only under a quota", () => {
    const l = limits({ [KEY]: { eventsPerSecond: null, bytesPerSecond: 100, subscriptions: 3 } });
    expect(l.admit(KEY, 1, 100, 0)).toBeNull();
    expect(l.admit(KEY, 1, 1, 0)).toContain("is over its quota of 100 bytes/s (set-quota; a request of 1 bytes)");
    expect(l.admit(OTHER, 1, 1_000_000, 0)).toBeNull();
    expect(l.subscriptionsOf(KEY)).toBe(3);
    expect(l.subscriptionsOf(OTHER)).toBeNull();
  });

  test("a request larger than a second of its quota passes once the key's bucket is full, and the key then owes the rest", () => {
    const l = limits({ [KEY]: { eventsPerSecond: 2, bytesPerSecond: null, subscriptions: null } });
    // A client batches: 6 events in one request against 2 events/s.
    expect(l.admit(KEY, 6, 10, 0)).toBeNull();
    // It owes 4 events: 2 s to pay them, 1 more to have a full second's worth (2) again.
    const refused = l.admit(KEY, 6, 10, 2_900);
    expect(refused).toMatch(
      /^key ed25519:\S+ is over its quota of 2 events\/s \(set-quota; a request of 6 events, more than a second's worth, passes only once the key has a full second's worth unused\); retry later$/,
    );
    expect(l.admit(KEY, 1, 10, 2_900)).toBeNull();
    // That one event owes half a second more: the 6 pass again from 3.5 s after the first request.
    expect(l.admit(KEY, 6, 10, 3_400)).not.toBeNull();
    expect(l.admit(KEY, 6, 10, 3_600)).toBeNull();
  });

  test("bytes: a request larger than the quota passes once, the next waits for the debt; a refused request takes nothing", () => {
    const l = limits({ [KEY]: { eventsPerSecond: 5, bytesPerSecond: 100, subscriptions: null } });
    expect(l.admit(KEY, 5, 107, 0)).toBeNull();
    // A second later the events are back, the bytes owe 7 short of a full second's worth.
    expect(l.admit(KEY, 5, 107, 1_000)).toContain(
      "is over its quota of 100 bytes/s (set-quota; a request of 107 bytes, more than a second's worth, passes only once the key has a full second's worth unused)",
    );
    // Refused on bytes, the request took none of the key's events: all 5 pass at once.
    expect(l.admit(KEY, 5, 0, 1_000)).toBeNull();
    expect(l.admit(KEY, 1, 107, 1_300)).toBeNull();
  });
});
