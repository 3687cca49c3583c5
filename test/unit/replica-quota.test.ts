// A client key's limits at a replica (src/replica/quota.ts): the cluster's defaults, a
// key's quota overriding them, bytes per second only under a quota, and refusals that
// name the limit.
import { describe, expect, test } from "bun:test";
import type { KeyQuota } from "../../src/core/channels/types.ts";
import { ClientLimits, keyText } from "../../src/replica/quota.ts";

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
      /^key ed25519:\S+ is over its quota of 5 events\/s \(set-quota; a request of 1 event\); retry later$/,
    );
    expect(l.admit(KEY, 1, 10, 200)).toBeNull();
    expect(l.admit(OTHER, 150, 10, 0)).toBeNull();
  });

  test("bytes per second are metered only under a quota", () => {
    const l = limits({ [KEY]: { eventsPerSecond: null, bytesPerSecond: 100, subscriptions: 3 } });
    expect(l.admit(KEY, 1, 100, 0)).toBeNull();
    expect(l.admit(KEY, 1, 1, 0)).toContain("is over its quota of 100 bytes/s (set-quota; a request of 1 byte)");
    expect(l.admit(OTHER, 1, 1_000_000, 0)).toBeNull();
    expect(l.subscriptionsOf(KEY)).toBe(3);
    expect(l.subscriptionsOf(OTHER)).toBeNull();
  });

  test("a request larger than a second of its quota passes while the key owes nothing, and the key then owes the rest", () => {
    const l = limits({ [KEY]: { eventsPerSecond: 2, bytesPerSecond: null, subscriptions: null } });
    // A client batches: 6 events in one request against 2 events/s.
    expect(l.admit(KEY, 6, 10, 0)).toBeNull();
    // It owes 4 events, 2 s of its rate: a second later it still owes 2.
    expect(l.admit(KEY, 6, 10, 1_000)).toBe(
      `key ${keyText(KEY)} is over its quota of 2 events/s (set-quota; a request of 6 events, more than a second's worth, passes only once the key owes nothing; the key owes 2 events from a larger request); retry later`,
    );
    expect(l.admit(KEY, 1, 10, 1_000)).toBe(
      `key ${keyText(KEY)} is over its quota of 2 events/s (set-quota; a request of 1 event; the key owes 2 events from a larger request); retry later`,
    );
    // Paid at 2 s: the next 6 pass, and owe again.
    expect(l.admit(KEY, 6, 10, 2_000)).toBeNull();
    expect(l.admit(KEY, 1, 10, 2_000)).not.toBeNull();
  });

  test("bytes: a request larger than the quota passes once, the next waits for the debt; a refused request takes nothing", () => {
    const l = limits({ [KEY]: { eventsPerSecond: 100, bytesPerSecond: 100, subscriptions: null } });
    expect(l.admit(KEY, 5, 107, 0)).toBeNull();
    // Owing 7 bytes, nothing passes until 70 ms later.
    expect(l.admit(KEY, 5, 107, 50)).toContain(
      "is over its quota of 100 bytes/s (set-quota; a request of 107 bytes, more than a second's worth, passes only once the key owes nothing; the key owes 2 bytes from a larger request)",
    );
    // Refused on bytes, a request takes none of the key's events: 4 of 5 left, then owing 500 bytes.
    const l2 = limits({ [KEY]: { eventsPerSecond: 5, bytesPerSecond: 1000, subscriptions: null } });
    expect(l2.admit(KEY, 1, 1500, 0)).toBeNull();
    expect(l2.admit(KEY, 4, 10, 0)).toContain("is over its quota of 1000 bytes/s");
    // 600 ms later the bytes are paid and the events full (5): had the refused request taken its 4, 3 would be back.
    expect(l2.admit(KEY, 5, 10, 600)).toBeNull();
  });
});
