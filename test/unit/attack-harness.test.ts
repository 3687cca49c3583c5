/**
 * The attack harness (test/attack/run.ts) and its adversaries, without running them: the
 * arguments, the table and its findings, how the time to replace a leader and the rate
 * after it are read, that the malformed frames really do not decode, and that the
 * equivocating leader really signs two different proposals for one seq. No timing.
 */
import { describe, expect, test } from "bun:test";
import { type PrePrepare, signingBytes } from "../../src/core/ordering/messages.ts";
import { verify } from "../../src/crypto/ed25519.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { createLog } from "../../src/replica/log.ts";
import { encodeEnvelope } from "../../src/replica/peer-messages.ts";
import type { Canonical } from "../../wire/canonical.ts";
import { FrameDecoder } from "../../wire/frame.ts";
import { decodeFrameBody } from "../../wire/schemas.ts";
import { CLIENT_ATTACKS, malformedFrames, parseClientAttackArgs } from "../attack/adversary-clients.ts";
import {
  type AdversaryContext,
  EquivocatingLeader,
  orderingMessage,
  parseAdversaryArgs,
  SLOW_LEADER_DELAY_MS_DEFAULT,
} from "../attack/adversary-replica.ts";
import { parseHogArgs } from "../attack/cpu-hog.ts";
import {
  ATTACKS,
  afterReplacementPercent,
  type BenchFigures,
  CONTROL_CPU_PERCENT_MIN,
  cpuMatchedPercent,
  EVENTS_DEFAULT,
  formatFindings,
  formatTable,
  hogShares,
  parseOptions,
  type RowResult,
  rateAfter,
  replacementMs,
} from "../attack/run.ts";

function figures(eventsPerSecond: number, p99Ms: number, samples: BenchFigures["samples"] = [], endMs = 0): BenchFigures {
  return { eventsPerSecond, p99Ms, delivered: 0, seconds: 1, exitCode: 0, problem: null, samples, endMs };
}

function row(attack: string, faultFree: number, underAttack: number, extra: Partial<RowResult> = {}): RowResult {
  return {
    attack,
    what: "",
    faultFree: figures(faultFree, 10),
    underAttack: figures(underAttack, 123.4),
    viewChanges: 0,
    replaceLeaderMs: null,
    afterReplacementEventsPerSecond: null,
    leaderAttack: false,
    adversaryReport: null,
    error: null,
    ...extra,
  };
}

/** The context of an adversary that leads view 0 of a 4-replica group and sends nowhere. */
function leaderContext(key: SigningKey): AdversaryContext {
  return { id: 0, n: 4, clusterId: "it", key, log: createLog({}, "error"), send: () => true, status: () => ({ view: 0, lastDecided: 0 }) };
}

describe("npm run attack: arguments", () => {
  test("no arguments: every attack, the default event count, a table", () => {
    expect(parseOptions([])).toEqual({ attacks: ATTACKS, events: EVENTS_DEFAULT, json: false, help: false, logsDir: null });
  });

  test("--attack NAME runs one row; --events and --json are read", () => {
    const options = parseOptions(["--attack", "slow-leader", "--events", "5000", "--json", "--logs", "out"]);
    if (typeof options === "string") throw new Error(options);
    expect(options.logsDir).toBe("out");
    expect(options.attacks.map((a) => a.name)).toEqual(["slow-leader"]);
    expect(options.events).toBe(5000);
    expect(options.json).toBe(true);
  });

  test("--help is recognised", () => {
    const options = parseOptions(["--help"]);
    expect(typeof options === "string" ? options : options.help).toBe(true);
  });

  test("an unknown attack, a bad count or an unknown flag is refused with a reason", () => {
    expect(parseOptions(["--attack", "nope"])).toContain("--attack: expected one of slow-leader");
    expect(parseOptions(["--attack"])).toContain("got nothing");
    expect(parseOptions(["--events", "12.5"])).toContain("--events");
    expect(parseOptions(["--events", "10"])).toContain("--events");
    expect(parseOptions(["--fast"])).toBe("unknown argument --fast");
    expect(parseOptions(["--logs"])).toBe("--logs: a directory is missing");
  });

  test("every attack has a unique name; leader attacks take replica 0, the leader of view 0", () => {
    expect(new Set(ATTACKS.map((a) => a.name)).size).toBe(ATTACKS.length);
    for (const attack of ATTACKS) {
      if (attack.kind === "replica" && attack.name.endsWith("-leader")) expect(attack.adversary).toBe(0);
      if (attack.kind === "clients") expect(CLIENT_ATTACKS).toContain(attack.attack);
    }
  });

  test("the adversary programs read their own arguments", () => {
    expect(parseAdversaryArgs(["--config", "c.toml", "--id", "0", "--behaviour", "slow-leader"])).toEqual({
      config: "c.toml",
      id: 0,
      behaviour: "slow-leader",
      delayMs: SLOW_LEADER_DELAY_MS_DEFAULT,
      active: false,
    });
    expect(parseAdversaryArgs(["--config", "c.toml", "--id", "0", "--behaviour", "nice"])).toContain("unknown argument");
    expect(parseClientAttackArgs(["--config", "c.toml", "--attack", "idle", "--tag", "t"])).toEqual({
      config: "c.toml",
      attack: "idle",
      tag: "t",
      key: null,
      seconds: 600,
    });
    expect(parseClientAttackArgs(["--config", "c.toml", "--attack", "ddos", "--tag", "t"])).toContain("--attack");
  });

  test("the slow leader holds each proposal just under the 500 ms progress timeout", () => {
    expect(SLOW_LEADER_DELAY_MS_DEFAULT).toBe(450);
  });
});

describe("npm run attack: the table", () => {
  test("one Markdown row per attack, fault-free the mean of the runs around the attack; rows below 90% retained are marked", () => {
    const table = formatTable([
      row("slow-leader", 20_000, 19_000, {
        viewChanges: 1,
        replaceLeaderMs: 1_400,
        leaderAttack: true,
        afterReplacementEventsPerSecond: 19_800,
      }),
      row("client-idle", 20_000, 9_000, { faultFreeAfter: figures(16_000, 1) }),
      { ...row("mute-leader", 0, 0), faultFree: null, underAttack: null, viewChanges: null, leaderAttack: true, error: "boom" },
      row("client-oversize", 20_000, 15_000, { underAttack: figures(15_000, Number.NaN), cpuMatched: figures(16_000, 1) }),
    ]);
    expect(table).toBe(
      [
        "| attack          | fault-free ev/s | under attack ev/s | retained % | after replacement % | CPU-matched ev/s | vs CPU-matched % | p99 ms | view changes | time to replace the leader |",
        "|-----------------|----------------:|------------------:|-----------:|--------------------:|-----------------:|-----------------:|-------:|-------------:|---------------------------:|",
        "| slow-leader     |           20000 |             19000 |         95 |                  99 |                - |                - |    123 |            1 |                      1.4 s |",
        "| client-idle     |           18000 |              9000 |      50 ** |                   - |                - |                - |    123 |            0 |                          - |",
        "| mute-leader     |               - |                 - |          - |                   - |                - |                - |      - |            ? |               not replaced |",
        "| client-oversize |           20000 |             15000 |      75 ** |                   - |            16000 |               94 |      - |            0 |                          - |",
      ].join("\n"),
    );
  });

  test("the CPU-matched control: one hog per started core of what the adversary used, none below the minimum", () => {
    expect(hogShares(null)).toEqual([]);
    expect(hogShares(CONTROL_CPU_PERCENT_MIN - 1)).toEqual([]);
    expect(hogShares(40)).toEqual([40]);
    expect(hogShares(100)).toEqual([100]);
    expect(hogShares(150)).toEqual([75, 75]);
    expect(cpuMatchedPercent(row("x", 20_000, 9_000, { cpuMatched: figures(10_000, 1) }))).toBe(90);
    expect(cpuMatchedPercent(row("x", 20_000, 9_000))).toBeNull();
    expect(afterReplacementPercent(row("x", 20_000, 9_000, { afterReplacementEventsPerSecond: 19_000 }))).toBe(95);
    expect(parseHogArgs(["--percent", "40"])).toEqual({ percent: 40, seconds: 600 });
    expect(parseHogArgs(["--percent", "0"])).toContain("--percent");
    expect(parseHogArgs(["--percent", "101"])).toContain("--percent");
    expect(parseHogArgs([])).toBe("--percent is missing");
    expect(parseHogArgs(["--percent", "5", "--seconds", "0"])).toContain("--seconds");
  });

  test("the hog takes no more CPU than it is asked for, and some", async () => {
    const hog = Bun.spawn([process.execPath, "test/attack/cpu-hog.ts", "--percent", "20", "--seconds", "1"], { stdout: "pipe" });
    const lines = (await new Response(hog.stdout).text()).trim().split("\n");
    expect(await hog.exited).toBe(0);
    const done = JSON.parse(lines.at(-1) as string) as { msg: string; wallMs: number; cpuMs: number };
    expect(done.msg).toBe("hog done");
    expect(done.cpuMs).toBeGreaterThan(0);
    // It spins only while behind its share, at most one 5 ms slot at a time (the runtime's own threads add a little).
    expect(done.cpuMs).toBeLessThanOrEqual((done.wallMs * 20) / 100 + 50);
  });

  test("findings name each row below the bar or with a problem, and why", () => {
    const findings = formatFindings([
      row("slow-leader", 20_000, 19_000, { viewChanges: 1, replaceLeaderMs: 1_400, leaderAttack: true }),
      row("equivocating-leader", 20_000, 10_000, {
        viewChanges: 1,
        replaceLeaderMs: 3_000,
        leaderAttack: true,
        afterReplacementEventsPerSecond: 19_000,
      }),
      row("flooding-replica", 20_000, 2_000, { viewChanges: 21, faultFreeAfter: figures(20_000, 1), adversaryCpuPercent: 97.4 }),
      { ...row("mute-leader", 0, 0), faultFree: null, underAttack: null, leaderAttack: true, error: "boom" },
      row("mute-leader", 20_000, 20_000, { viewChanges: 1, replaceLeaderMs: 900, leaderAttack: true, retries: ["the view moved"] }),
      row("client-oversize", 20_000, 19_000, { viewChanges: null, viewsDisagree: "replica 3: viewChange to view 1" }),
    ]);
    expect(findings).toEqual([
      "equivocating-leader: retained 50% < 90% over the whole run, 95% once the leader was replaced",
      "flooding-replica: retained 10% < 90% (the adversary's process used 97% of a core meanwhile); fault-free 20000 ev/s before, 20000 after; 21 view changes",
      "mute-leader: no figures: boom; the leader was not replaced",
      "mute-leader: 1 earlier attempt(s) not kept: the view moved",
      "client-oversize: the correct replicas did not agree on a view 30 s after the attack (replica 3: viewChange to view 1)",
    ]);
  });

  test("the leader counts as replaced when every correct replica installed a view with a correct leader", () => {
    const installed = [
      { replica: 1, view: 1, leader: 1, atMs: 1_500 },
      { replica: 2, view: 1, leader: 1, atMs: 1_700 },
      { replica: 3, view: 4, leader: 0, atMs: 1_100 },
      { replica: 3, view: 5, leader: 1, atMs: 1_900 },
      { replica: 1, view: 1, leader: 1, atMs: 500 },
    ];
    expect(replacementMs(installed, [1, 2, 3], 0, 1_000)).toBe(900);
    expect(replacementMs(installed.slice(0, 3), [1, 2, 3], 0, 1_000)).toBeNull();
  });

  test("the rate after a replacement runs from the first progress line after it to the end", () => {
    const samples = [
      { atMs: 1_000, delivered: 1_000 },
      { atMs: 2_000, delivered: 2_000 },
      { atMs: 3_000, delivered: 12_000 },
    ];
    const run = { ...figures(5_000, 1, samples, 5_000), delivered: 32_000 };
    expect(rateAfter(run, 1_500)).toBe(10_000);
    expect(rateAfter(run, 2_500)).toBe(10_000);
    expect(rateAfter(run, 3_500)).toBeNull();
  });
});

describe("the adversaries", () => {
  test("every malformed first frame fails to decode at a replica", () => {
    for (const bytes of malformedFrames()) {
      const results = new FrameDecoder().push(bytes);
      expect(results).toHaveLength(1);
      const first = results[0];
      if (first === undefined || !first.ok) continue;
      expect(decodeFrameBody(first.type, first.payload).ok).toBe(false);
    }
  });

  test("the equivocating leader sends the real proposal to one backup and another validly signed one to the rest", () => {
    const key = SigningKey.generate();
    const ctx = leaderContext(key);
    const client = "ab".repeat(32);
    const batch = [1, 2, 3].map((seq) => ({ client, seq, span: 1, body: new Uint8Array([seq]), sig: new Uint8Array(64) }));
    const header = {
      t: "PRE_PREPARE",
      view: 0,
      seq: 7,
      digest: new Uint8Array(32).fill(9),
      ts: 1_764_000_000_000,
      batch: null,
      sig: new Uint8Array(64),
    } as PrePrepare;
    const real: PrePrepare = { ...header, batch };
    const bytes = encodeEnvelope("ordering", real as unknown as Canonical);
    const sent = new Map<number, Uint8Array>();
    const adversary = new EquivocatingLeader(ctx);
    for (const to of [1, 2, 3]) adversary.outgoing(to, bytes, (peer, out) => sent.set(peer, out) !== undefined);
    expect(sent.get(1)).toBe(bytes);
    const second = orderingMessage(sent.get(2) as Uint8Array);
    const third = orderingMessage(sent.get(3) as Uint8Array);
    if (second?.t !== "PRE_PREPARE" || third?.t !== "PRE_PREPARE") throw new Error("no second proposal");
    expect(second.seq).toBe(7);
    expect(second.batch?.map((r) => r.seq)).toEqual([1, 2]);
    expect(third.digest).toEqual(second.digest);
    expect(second.digest).not.toEqual(real.digest);
    expect(verify(key.publicKey, signingBytes(second, "it"), second.sig)).toBe(true);
  });

  test("the equivocating leader repeats its split on a retransmission and withholds a one-request batch from the second group", () => {
    const key = SigningKey.generate();
    const ctx = leaderContext(key);
    const client = "cd".repeat(32);
    const proposal = (seq: number, requests: number): Uint8Array => {
      const batch = Array.from({ length: requests }, (_, i) => ({
        client,
        seq: i + 1,
        span: 1,
        body: new Uint8Array([i]),
        sig: new Uint8Array(64),
      }));
      const message = { t: "PRE_PREPARE", view: 0, seq, digest: new Uint8Array(32), ts: 0, batch, sig: new Uint8Array(64) };
      return encodeEnvelope("ordering", message as unknown as Canonical);
    };
    const adversary = new EquivocatingLeader(ctx);
    const sent: [number, Uint8Array][] = [];
    const send = (peer: number, out: Uint8Array): boolean => sent.push([peer, out]) > 0;
    for (const to of [1, 2, 3]) adversary.outgoing(to, proposal(1, 1), send);
    expect(sent.map(([peer]) => peer)).toEqual([1]);
    sent.length = 0;
    for (let round = 0; round < 2; round++) for (const to of [2, 3]) adversary.outgoing(to, proposal(2, 2), send);
    expect(sent).toHaveLength(4);
    expect(new Set(sent.map(([, out]) => Buffer.from(out).toString("hex"))).size).toBe(1);
  });
});
