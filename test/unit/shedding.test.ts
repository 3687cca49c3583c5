/**
 * Priority shedding's controller (src/replica/shedding.ts), driven by explicit times and
 * lags: over the target, low's admitted share falls to the floor, then normal's; under
 * it, normal recovers first, then low; without urgent traffic nothing is shed.
 */
import { describe, expect, test } from "bun:test";
import { UrgentShedder } from "../../src/replica/shedding.ts";

const OPTIONS = { targetMs: 5, floor: 0.2, urgentWindowMs: 1000, decrease: 0.5, increase: 0.1 };

/** Admits `count` publishes of `priority` at `nowMs`; how many were admitted. */
function admitted(shedder: UrgentShedder, priority: "low" | "normal", count: number, nowMs: number): number {
  let ok = 0;
  for (let i = 0; i < count; i++) if (shedder.admit(priority, nowMs) === null) ok++;
  return ok;
}

describe("UrgentShedder", () => {
  test("without urgent traffic a lagging event loop sheds nothing", () => {
    const shedder = new UrgentShedder(OPTIONS);
    for (let t = 0; t < 200; t += 10) shedder.observeLag(t, 500);
    expect(shedder.share("low", 200)).toBe(1);
    expect(admitted(shedder, "low", 100, 200)).toBe(100);
    expect(admitted(shedder, "normal", 100, 200)).toBe(100);
  });

  test("urgent traffic with the lag over the target: low falls to the floor first, then normal", () => {
    const shedder = new UrgentShedder(OPTIONS);
    expect(shedder.admit("critical", 0)).toBeNull();
    shedder.observeLag(10, 20);
    expect(shedder.share("low", 10)).toBe(0.5);
    expect(shedder.share("normal", 10)).toBe(1);
    shedder.observeLag(20, 20);
    shedder.observeLag(30, 20);
    expect(shedder.share("low", 30)).toBe(0.2);
    expect(shedder.share("normal", 30)).toBe(1);
    shedder.observeLag(40, 20);
    expect(shedder.share("normal", 40)).toBe(0.5);
    for (let t = 50; t < 200; t += 10) shedder.observeLag(t, 20);
    expect(shedder.share("low", 200)).toBe(0.2);
    expect(shedder.share("normal", 200)).toBe(0.2);
    // The floor flows, spread evenly; urgent classes are never shed.
    expect(admitted(shedder, "low", 100, 200)).toBe(20);
    expect(admitted(shedder, "normal", 100, 200)).toBe(20);
    expect(shedder.admit("high", 200)).toBeNull();
    expect(shedder.admit("critical", 200)).toBeNull();
  });

  test("describe: the target and the shares admitted now, in percent", () => {
    const shedder = new UrgentShedder(OPTIONS);
    expect(shedder.describe(0)).toEqual({ targetMs: 5, low: 100, normal: 100 });
    shedder.noteUrgent(0);
    shedder.observeLag(10, 50);
    expect(shedder.describe(10)).toEqual({ targetMs: 5, low: 50, normal: 100 });
  });

  test("a shed publish's reason names the policy, the lag, the target and the share", () => {
    const shedder = new UrgentShedder(OPTIONS);
    shedder.noteUrgent(0);
    shedder.observeLag(10, 12.34);
    // Half admitted, evenly: every other one (credit 0.5: refused, 1: admitted).
    const decisions = [0, 1, 2, 3].map(() => shedder.admit("low", 10));
    expect(decisions.map((d) => d === null)).toEqual([false, true, false, true]);
    expect(decisions[0]).toBe(
      "priority shedding: urgent traffic is waiting (event loop lag 12.3 ms, target 5 ms); 50% of low publishes are admitted; retry later",
    );
  });

  test("under the target the shares recover additively, normal first, then low", () => {
    const shedder = new UrgentShedder(OPTIONS);
    shedder.noteUrgent(0);
    for (let t = 10; t <= 100; t += 10) shedder.observeLag(t, 50);
    expect(shedder.share("normal", 100)).toBe(0.2);
    shedder.noteUrgent(100);
    shedder.observeLag(110, 1);
    expect(shedder.share("normal", 110)).toBeCloseTo(0.3, 9);
    expect(shedder.share("low", 110)).toBe(0.2);
    for (let t = 120; t <= 190; t += 10) shedder.observeLag(t, 1);
    expect(shedder.share("normal", 190)).toBe(1);
    expect(shedder.share("low", 190)).toBe(0.2);
    shedder.observeLag(200, 1);
    expect(shedder.share("low", 200)).toBeCloseTo(0.3, 9);
    for (let t = 210; t <= 290; t += 10) shedder.observeLag(t, 1);
    expect(shedder.share("low", 290)).toBe(1);
    expect(admitted(shedder, "low", 50, 290)).toBe(50);
  });

  test("once urgent traffic stops for the window, everything is admitted again", () => {
    const shedder = new UrgentShedder(OPTIONS);
    shedder.noteUrgent(0);
    for (let t = 10; t <= 100; t += 10) shedder.observeLag(t, 50);
    expect(admitted(shedder, "low", 10, 100)).toBe(2);
    expect(shedder.urgentActive(999)).toBe(true);
    expect(shedder.urgentActive(1000)).toBe(false);
    expect(admitted(shedder, "low", 10, 1000)).toBe(10);
    shedder.observeLag(1010, 50);
    expect(shedder.share("low", 1010)).toBe(1);
  });

  test("the same inputs give the same decisions", () => {
    const run = (): string => {
      const shedder = new UrgentShedder(OPTIONS);
      const out: string[] = [];
      for (let t = 0; t < 500; t += 5) {
        if (t % 50 === 0) shedder.admit("critical", t);
        if (t % 10 === 0) shedder.observeLag(t, (t * 7) % 13);
        out.push(shedder.admit(t % 15 === 0 ? "normal" : "low", t) === null ? "+" : "-");
      }
      return out.join("");
    };
    expect(run()).toBe(run());
    expect(run()).toContain("-");
  });

  test("bad options are refused with a clear error", () => {
    expect(() => new UrgentShedder({ targetMs: 0 })).toThrow("the target must be a positive number of ms, not 0");
    expect(() => new UrgentShedder({ floor: 0 })).toThrow("the floor must be in (0, 1], not 0");
    expect(() => new UrgentShedder({ decrease: 1 })).toThrow("the decrease must be in (0, 1), not 1");
  });
});
