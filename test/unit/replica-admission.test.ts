import { describe, expect, test } from "bun:test";
import {
  ADMISSION_LIMITS_DEFAULT,
  BLACKLIST_ENTRIES_MAX,
  ClientAdmission,
  VERIFICATION_BURST_SECONDS,
} from "../../src/replica/admission.ts";

const KEY_A = "aa".repeat(32);
const KEY_B = "bb".repeat(32);

function clock(): { now: () => number; advance: (ms: number) => void } {
  let t = 1_000_000;
  return { now: () => t, advance: (ms) => (t += ms) };
}

describe("ClientAdmission: verification budgets", () => {
  test("a key over its budget is refused RATE_LIMITED naming the budget, other keys are not, and the budget refills", () => {
    const c = clock();
    const gate = new ClientAdmission({ keyVerificationsPerSecondMax: 10, addressVerificationsPerSecondMax: 1_000 }, c.now);
    for (let i = 0; i < 10 * VERIFICATION_BURST_SECONDS; i++) expect(gate.beforeVerify(KEY_A, "10.0.0.1")).toBeNull();
    const refused = gate.beforeVerify(KEY_A, "10.0.0.1");
    expect(refused).toMatchObject({ code: "RATE_LIMITED", budget: "key" });
    expect(refused?.reason).toMatch(/^key ed25519:\S+ is over this replica's budget of 10 signed requests a second per key; retry later$/);
    expect(gate.beforeVerify(KEY_B, "10.0.0.1")).toBeNull();
    c.advance(100);
    expect(gate.beforeVerify(KEY_A, "10.0.0.1")).toBeNull();
    expect(gate.beforeVerify(KEY_A, "10.0.0.1")).not.toBeNull();
  });

  test("an address over its budget is refused whatever keys it uses (a key costs nothing to make)", () => {
    const c = clock();
    const gate = new ClientAdmission({ keyVerificationsPerSecondMax: 1_000, addressVerificationsPerSecondMax: 5 }, c.now);
    for (let i = 0; i < 5 * VERIFICATION_BURST_SECONDS; i++) {
      expect(gate.beforeVerify(i.toString(16).padStart(64, "0"), "10.0.0.9")).toBeNull();
    }
    const refused = gate.beforeVerify(KEY_B, "10.0.0.9");
    expect(refused).toMatchObject({ code: "RATE_LIMITED", budget: "address" });
    expect(refused?.reason).toContain("address 10.0.0.9 is over this replica's budget of 5 signed requests a second from one address");
    expect(gate.beforeVerify(KEY_B, "10.0.0.10")).toBeNull();
  });

  test("with the defaults a key may send a whole second of its budget at once", () => {
    const gate = new ClientAdmission({}, clock().now);
    let passed = 0;
    for (let i = 0; i < ADMISSION_LIMITS_DEFAULT.keyVerificationsPerSecondMax; i++) if (gate.beforeVerify(KEY_A, "h") === null) passed++;
    expect(passed).toBe(ADMISSION_LIMITS_DEFAULT.keyVerificationsPerSecondMax);
  });

  test("limits must be positive integers", () => {
    expect(() => new ClientAdmission({ keyBlacklistMs: 0 })).toThrow(/keyBlacklistMs must be a positive integer/);
  });
});

describe("ClientAdmission: blacklist", () => {
  test("a blacklisted key and address are refused with why and for how long, until their periods end", () => {
    const c = clock();
    const gate = new ClientAdmission({ keyBlacklistMs: 600_000, addressBlacklistMs: 60_000 }, c.now);
    expect(gate.keyRefusal(KEY_A)).toBeNull();
    expect(gate.addressRefusal("10.0.0.7")).toBeNull();
    gate.blacklist(KEY_A, "10.0.0.7", "a request signature that does not verify");
    expect(gate.keyRefusal(KEY_A)).toMatch(
      /^key ed25519:\S+ is blacklisted for 600 s after a request signature that does not verify \(600 s left\)$/,
    );
    expect(gate.addressRefusal("10.0.0.7")).toBe(
      "address 10.0.0.7 is blacklisted for 60 s after a request signature that does not verify (60 s left)",
    );
    expect(gate.keyRefusal(KEY_B)).toBeNull();
    expect(gate.addressRefusal("10.0.0.8")).toBeNull();
    c.advance(60_000);
    expect(gate.addressRefusal("10.0.0.7")).toBeNull();
    expect(gate.keyRefusal(KEY_A)).toContain("(540 s left)");
    c.advance(540_000);
    expect(gate.keyRefusal(KEY_A)).toBeNull();
  });

  test("an address alone can be blacklisted (a frame that does not decode, before any key)", () => {
    const gate = new ClientAdmission({}, clock().now);
    gate.blacklist(null, "10.0.0.3", "a frame that does not decode");
    expect(gate.addressRefusal("10.0.0.3")).toContain("after a frame that does not decode");
    expect(gate.blacklisted).toEqual({ keys: 0, addresses: 1 });
  });

  test("the blacklists are bounded: the oldest entry goes first", () => {
    const gate = new ClientAdmission({}, clock().now);
    for (let i = 0; i < BLACKLIST_ENTRIES_MAX + 5; i++) gate.blacklist(null, `a${i}`, "x");
    expect(gate.blacklisted.addresses).toBe(BLACKLIST_ENTRIES_MAX);
    expect(gate.addressRefusal("a0")).toBeNull();
    expect(gate.addressRefusal(`a${BLACKLIST_ENTRIES_MAX + 4}`)).not.toBeNull();
  });
});
