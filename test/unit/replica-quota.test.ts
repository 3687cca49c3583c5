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
    expect(l.admit(KEY, 1, 10, 0)).toMatch(/^key ed25519:\S+ is over its quota of 5 events\/s \(set-quota\); retry later$/);
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
});
