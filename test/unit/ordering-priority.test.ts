/**
 * Batch fill by urgency (core/ordering/priority.ts, PROTOCOL.md §4 "Batch fill and
 * priority"): the most urgent requests go first, the less urgent keep a share of every
 * batch, urgent requests may take pipeline slots past pipelineDepth, and a leader that
 * serves by urgency is not suspected of unfairness by backups.
 */
import { describe, expect, test } from "bun:test";
import { OrderingCore, type PeerMessage, type PrePrepare } from "../../src/core/ordering/index.ts";
import { requestBytes } from "../../src/core/ordering/messages.ts";
import { buildBatch, lessUrgentRequests, poolLimitFor, type ProposalPolicy, urgencyOf } from "../../src/core/ordering/priority.ts";
import { ManualCluster } from "../../src/sim/cluster.ts";
import { SimKeyring } from "../../src/sim/crypto.ts";
import type { CoreState } from "../../src/core/ordering/state.ts";

const LOW = 0;
const CRITICAL = 3;

/** Client 0 is low, client 1 critical (and the clients in `alsoCritical`), the others normal. */
function clusterWithUrgency(
  params: Record<string, number> = {},
  alsoCritical: readonly number[] = [],
): { c: ManualCluster; low: number; critical: number } {
  const keyring = new SimKeyring("fast", 4, 4);
  const urgency = new Map<string, number>([
    [keyring.clients[0]?.publicHex as string, LOW],
    [keyring.clients[1]?.publicHex as string, CRITICAL],
    ...alsoCritical.map((i): [string, number] => [keyring.clients[i]?.publicHex as string, CRITICAL]),
  ]);
  const policy: ProposalPolicy = { urgencyOf: (client) => urgency.get(client) ?? 1 };
  const c = new ManualCluster({
    crypto: "fast",
    params,
    factory: (cfg, crypto, restored) => new OrderingCore(cfg, crypto, restored, policy),
  });
  return { c, low: 0, critical: 1 };
}

function proposals(c: ManualCluster): PrePrepare[] {
  return c
    .allEffects(0)
    .flatMap((o) => (o.kind === "send" && o.msg.t === "PRE_PREPARE" ? [o.msg as PrePrepare] : []))
    .filter((m: PeerMessage): m is PrePrepare => m.t === "PRE_PREPARE");
}

describe("batch fill by urgency", () => {
  test("critical requests go into a batch before low ones that arrived first", () => {
    // A partial batch waits a tick, so the low requests are pending when the critical one comes.
    const { c, low, critical } = clusterWithUrgency({ batchDelayTicks: 1 });
    const lowHex = c.keyring.clients[low]?.publicHex as string;
    const criticalHex = c.keyring.clients[critical]?.publicHex as string;
    for (let seq = 1; seq <= 3; seq++) c.submit(0, c.request(low, seq));
    expect(proposals(c)).toEqual([]);
    // The fourth request fills a batch (batchRequestsMax 4): it goes out at once, critical first.
    c.submit(0, c.request(critical, 1));
    expect(proposals(c)[0]?.batch?.map((r) => r.client)).toEqual([criticalHex, lowHex, lowHex, lowHex]);
    c.runUntil(() => c.lastExecuted(3) >= 1, 50);
    const decided = (c.decided[3] ?? []).flatMap((d) => d.execute.map((r) => `${r.client === criticalHex ? "c" : "l"}${r.seq}`));
    expect(decided).toEqual(["c1", "l1", "l2", "l3"]);
  });

  test("with every client equally urgent the fill is round robin (the order before priorities)", () => {
    const c = new ManualCluster({ crypto: "fast", params: { batchDelayTicks: 1 } });
    for (let seq = 1; seq <= 2; seq++) {
      c.submit(0, c.request(0, seq));
      c.submit(0, c.request(1, seq));
    }
    const clients = proposals(c)[0]?.batch?.map((r) => r.client) ?? [];
    expect(new Set(clients.slice(0, 2)).size).toBe(2);
    expect(new Set(clients.slice(2, 4)).size).toBe(2);
  });

  test("a proposal goes out as soon as a request arrives (batchDelayTicks 0, no tick needed)", () => {
    const { c, low } = clusterWithUrgency();
    c.submit(0, c.request(low, 1));
    expect(proposals(c).length).toBe(1);
  });

  test("with the pipeline full, a critical request takes a slot kept for urgent requests; a low one waits", () => {
    const { c, low, critical } = clusterWithUrgency({ batchRequestsMax: 1, clientWindow: 4 });
    // Four low requests fill pipelineDepth 4 (nothing is delivered, so nothing executes).
    for (let seq = 1; seq <= 4; seq++) c.submit(0, c.request(low, seq));
    expect(proposals(c).map((p) => p.seq)).toEqual([1, 2, 3, 4]);
    c.submit(0, c.request(2, 1)); // a normal client: waits for the pipeline
    expect(proposals(c).length).toBe(4);
    c.submit(0, c.request(critical, 1));
    const all = proposals(c);
    expect(all.length).toBe(5);
    expect(all[4]?.seq).toBe(5);
    expect(all[4]?.batch?.[0]?.client).toBe(c.keyring.clients[critical]?.publicHex);
    // Once decisions free the pipeline, the normal request is proposed too.
    c.runUntil(() => proposals(c).some((p) => p.batch?.[0]?.client === c.keyring.clients[2]?.publicHex), 50);
  });

  test("urgency out of range is clamped; a non-integer counts as the least urgent", () => {
    const policy: ProposalPolicy = { urgencyOf: (client) => ({ a: 9, b: -2, c: 1.5 })[client] ?? 2 };
    expect([urgencyOf(policy, "a"), urgencyOf(policy, "b"), urgencyOf(policy, "c"), urgencyOf(policy, "d")]).toEqual([3, 0, 0, 2]);
  });
});

describe("the less urgent are never locked out", () => {
  test("a steady trickle of critical requests keeps the urgent slots busy, and low requests still go into ordinary proposals", () => {
    // 7 critical clients and 1 low one, pipelineDepth 1: before urgent slots were counted
    // apart, the critical requests kept the pipeline full and the low client starved.
    const keyring = new SimKeyring("fast", 4, 8);
    const urgency = new Map(keyring.clients.map((key, i): [string, number] => [key.publicHex, i === 0 ? LOW : CRITICAL]));
    const policy: ProposalPolicy = { urgencyOf: (client) => urgency.get(client) ?? 0 };
    const c = new ManualCluster({
      crypto: "fast",
      clients: 8,
      params: { pipelineDepth: 1, clientWindow: 4 },
      factory: (cfg, crypto, restored) => new OrderingCore(cfg, crypto, restored, policy),
    });
    const hex = (i: number): string => c.keyring.clients[i]?.publicHex as string;
    const next = (i: number): number => c.core(3).lastExecutedOf(hex(i)) + 1;
    for (let round = 0; round < 60; round++) {
      for (let client = 0; client < 8; client++) {
        const seq = next(client);
        for (const id of [0, 1, 2, 3]) c.submit(id, c.request(client, seq));
      }
      c.tick();
      // One delivery round per tick: the critical load never drains completely.
      c.deliverAll(() => true, 1);
    }
    const low = next(0) - 1;
    const critical = Math.min(...[1, 2, 3, 4, 5, 6, 7].map(next)) - 1;
    expect(low).toBeGreaterThanOrEqual(8);
    expect(critical).toBeGreaterThanOrEqual(8);
    for (const id of [1, 2, 3]) {
      const reasons = c.allEffects(id).flatMap((o) => (o.kind === "leaderSuspected" || o.kind === "suspect" ? [o.reason] : []));
      expect(reasons).toEqual([]);
    }
  });

  test("with critical, normal and low waiting, normal and low each keep a share of the batch", () => {
    const keyring = new SimKeyring("fast", 4, 4);
    // Clients 0-1 critical, 2 normal, 3 low.
    const urgency = new Map(keyring.clients.map((key, i): [string, number] => [key.publicHex, i < 2 ? CRITICAL : i === 2 ? 1 : LOW]));
    const policy: ProposalPolicy = { urgencyOf: (client) => urgency.get(client) ?? 0 };
    const c = new ManualCluster({
      crypto: "fast",
      params: { batchRequestsMax: 10, clientWindow: 8, keyPendingMax: 64 },
      factory: (cfg, crypto, restored) => new OrderingCore(cfg, crypto, restored, policy),
    });
    // 16 critical, 8 normal, 8 low pending at a backup (which proposes nothing), then its
    // batch fill is asked what it would propose.
    for (let seq = 1; seq <= 8; seq++) for (const client of [3, 2, 1, 0]) c.submit(1, c.request(client, seq));
    const state = (c.core(1) as unknown as { state: CoreState }).state;
    const urgencies = (buildBatch(state, false) ?? []).map((r) => urgency.get(r.client));
    expect(urgencies).toEqual([3, 3, 3, 3, 3, 3, 3, 3, 1, 0]);
  });
});

describe("shedding under overload", () => {
  test("with the pending pool 70% full a low request is refused as overloaded; a critical one is admitted up to the whole pool", () => {
    const { c, low, critical } = clusterWithUrgency(
      { pendingRequestsMax: 20, clientWindow: 16, keyPendingMax: 64, batchDelayTicks: 1 },
      [2, 3],
    );
    expect(poolLimitFor(20, 0)).toBe(14);
    expect(poolLimitFor(20, 3)).toBe(20);
    // Replica 1 (a backup: it proposes nothing, so its pool only fills) takes 14 critical requests.
    for (let seq = 1; seq <= 14; seq++) c.submit(1, c.request(2 + (seq % 2), Math.ceil(seq / 2)));
    expect(c.core(1).status().pending).toBe(14);
    const refusedLow = c.submit(1, c.request(low, 1)).effects.filter((e) => e.kind === "refused");
    expect(refusedLow.map((e) => (e as { reason: string }).reason)).toEqual(["overloaded"]);
    for (let seq = 1; seq <= 6; seq++) c.submit(1, c.request(critical, seq));
    expect(c.core(1).status().pending).toBe(20);
    const refusedCritical = c.submit(1, c.request(critical, 7)).effects.filter((e) => e.kind === "refused");
    expect(refusedCritical.map((e) => (e as { reason: string }).reason)).toEqual(["overloaded"]);
  });
});

describe("fairness expectation with priorities (timers.ts)", () => {
  test("backups do not suspect a leader that serves saturating critical clients first while low gets its share", () => {
    // Clients 1-3 critical, each with a full window always waiting: more than the pipeline carries.
    const { c, low } = clusterWithUrgency({ batchRequestsMax: 4, clientWindow: 4, pipelineDepth: 1, fairnessMultiplier: 1 }, [2, 3]);
    const hex = (i: number): string => c.keyring.clients[i]?.publicHex as string;
    const next = (i: number): number => c.core(3).lastExecutedOf(hex(i)) + 1;
    for (let round = 0; round < 40; round++) {
      for (const client of [1, 2, 3, low]) {
        const from = next(client);
        for (const id of [0, 1, 2, 3]) for (let k = 0; k < 4; k++) c.submit(id, c.request(client, from + k));
      }
      c.tick();
      c.deliverAll();
    }
    // The low client progressed, and every batch that carried critical requests while
    // low ones waited kept at most the low share (one of four).
    expect(next(low) - 1).toBeGreaterThan(10);
    const lowHex = hex(low);
    const mixed = (c.decided[3] ?? []).filter((d) => d.batch.some((r) => r.client !== lowHex));
    expect(mixed.length).toBeGreaterThan(10);
    for (const d of mixed) {
      const lows = d.batch.filter((r) => r.client === lowHex).length;
      if (d.batch.length === 4) expect(lows).toBeLessThanOrEqual(lessUrgentRequests(4));
    }
    for (const id of [1, 2, 3]) {
      const reasons = c.allEffects(id).flatMap((o) => (o.kind === "leaderSuspected" || o.kind === "suspect" ? [o.reason] : []));
      expect(reasons).toEqual([]);
    }
  });
});

describe("urgent pacing (priority.ts pacingUrgent, timers.ts)", () => {
  /** Low requests 1..count at the leader, nothing delivered, so nothing executes: what goes out is what the pipeline allows. */
  function lowBacklog(c: ManualCluster, low: number, count: number): void {
    for (let seq = 1; seq <= count; seq++) c.submit(0, c.request(low, seq));
    c.tick(2, [0]);
  }

  test("without urgent requests a low backlog fills the pipeline; after one, a single ordinary proposal is in flight", () => {
    const params = { batchRequestsMax: 4, clientWindow: 16, keyPendingMax: 64 };
    const plain = clusterWithUrgency(params);
    lowBacklog(plain.c, plain.low, 16);
    expect(proposals(plain.c).length).toBe(4); // pipelineDepth 4

    const paced = clusterWithUrgency(params);
    paced.c.submit(0, paced.c.request(paced.critical, 1));
    expect(proposals(paced.c).length).toBe(1); // the critical request, alone, in an ordinary slot
    lowBacklog(paced.c, paced.low, 16);
    expect(proposals(paced.c).length).toBe(1);
    // A second critical request does not wait: it takes an urgent slot.
    paced.c.submit(0, paced.c.request(paced.critical, 2));
    expect(proposals(paced.c).length).toBe(2);
    expect(proposals(paced.c)[1]?.batch?.map((r) => r.client)).toEqual([paced.c.keyring.clients[paced.critical]?.publicHex as string]);
  });

  test("paced batches carry less urgent requests past each client's head only up to pacedBatchBytesMax; urgent ones uncapped", () => {
    const probe = clusterWithUrgency();
    const oneRequest = requestBytes(probe.c.request(probe.low, 1, 1, "y".repeat(200)));
    const params = { batchRequestsMax: 8, clientWindow: 16, keyPendingMax: 64, pacedBatchBytesMax: Math.floor(oneRequest * 2.5) };
    const { c, low, critical } = clusterWithUrgency(params);
    const lowHex = c.keyring.clients[low]?.publicHex as string;
    const normalHex = c.keyring.clients[2]?.publicHex as string;
    c.submit(0, c.request(critical, 1, 1, "y".repeat(200)));
    for (let seq = 1; seq <= 12; seq++) c.submit(0, c.request(low, seq, 1, "y".repeat(200)));
    c.runUntil(() => c.core(3).lastExecutedOf(lowHex) >= 12, 200);
    const lowOnly = (c.decided[3] ?? []).filter((d) => d.batch.every((r) => r.client === lowHex));
    expect(lowOnly.length).toBeGreaterThan(2);
    for (const d of lowOnly) expect(d.batch.length).toBeLessThanOrEqual(2);
    // Every waiting client's head goes in whatever the paced bytes: two normal clients and low, three heads.
    c.submit(0, c.request(critical, 2, 1, "y".repeat(200)));
    for (let seq = 1; seq <= 4; seq++) {
      c.submit(0, c.request(2, seq, 1, "y".repeat(200)));
      c.submit(0, c.request(3, seq, 1, "y".repeat(200)));
      c.submit(0, c.request(low, 12 + seq, 1, "y".repeat(200)));
    }
    c.runUntil(() => c.core(3).lastExecutedOf(normalHex) >= 4 && c.core(3).lastExecutedOf(lowHex) >= 16, 200);
    const heads = (c.decided[3] ?? []).filter((d) => new Set(d.batch.map((r) => r.client)).size >= 3);
    expect(heads.length).toBeGreaterThan(0);
    // Unpaced, the same backlog goes in batches of up to 8.
    const plain = clusterWithUrgency(params);
    for (let seq = 1; seq <= 12; seq++) plain.c.submit(0, plain.c.request(plain.low, seq, 1, "y".repeat(200)));
    plain.c.runUntil(() => plain.c.core(3).lastExecutedOf(lowHex) >= 12, 200);
    expect(Math.max(...(plain.c.decided[3] ?? []).map((d) => d.batch.length))).toBeGreaterThan(2);
    // Eight critical requests at once are not capped by the paced bytes.
    const criticalHex = c.keyring.clients[critical]?.publicHex as string;
    for (let seq = 3; seq <= 10; seq++) c.submit(0, c.request(critical, seq, 1, "y".repeat(200)));
    c.runUntil(() => c.core(3).lastExecutedOf(criticalHex) >= 10, 200);
    const criticalSizes = (c.decided[3] ?? []).map((d) => d.batch.filter((r) => r.client === criticalHex).length);
    expect(Math.max(...criticalSizes)).toBeGreaterThan(2);
  });

  test("pacing ends urgentPacingTicks after the last urgent request: the pipeline fills again", () => {
    const { c, low, critical } = clusterWithUrgency({ batchRequestsMax: 1, clientWindow: 16, keyPendingMax: 64, urgentPacingTicks: 10 });
    c.submit(0, c.request(critical, 1));
    lowBacklog(c, low, 12);
    expect(proposals(c).length).toBe(1);
    c.tick(12, [0]);
    // (A stalled proposal is also resent: count seqs.)
    expect(new Set(proposals(c).map((p) => p.seq)).size).toBe(4);
  });

  test("urgentPacingTicks 0 turns pacing off", () => {
    const { c, low, critical } = clusterWithUrgency({ batchRequestsMax: 1, clientWindow: 16, keyPendingMax: 64, urgentPacingTicks: 0 });
    c.submit(0, c.request(critical, 1));
    lowBacklog(c, low, 12);
    expect(proposals(c).length).toBe(4);
  });

  test("backups judge a paced leader against the paced pipeline and do not suspect it", () => {
    // Client 0 critical, 1-7 low. A critical request every ten ticks keeps the leader paced
    // (one ordinary proposal in flight); batches of two leave most low heads waiting outside
    // any proposal; one delivery pass every third tick makes each instance take about nine
    // ticks. Judged against the unpaced pipeline (pipelineDepth 4), backups would count
    // nearly every tick as starved and suspect the leader.
    const keyring = new SimKeyring("fast", 4, 8);
    const urgency = new Map(keyring.clients.map((key, i): [string, number] => [key.publicHex, i === 0 ? CRITICAL : LOW]));
    const policy: ProposalPolicy = { urgencyOf: (client) => urgency.get(client) ?? 0 };
    const c = new ManualCluster({
      crypto: "fast",
      clients: 8,
      params: { batchRequestsMax: 2, clientWindow: 4, requestTimeoutTicks: 1_000 },
      factory: (cfg, crypto, restored) => new OrderingCore(cfg, crypto, restored, policy),
    });
    const hex = (i: number): string => c.keyring.clients[i]?.publicHex as string;
    const next = (i: number): number => c.core(3).lastExecutedOf(hex(i)) + 1;
    const lowClients = [1, 2, 3, 4, 5, 6, 7];
    for (let round = 0; round < 300; round++) {
      if (round % 10 === 0) {
        const seq = next(0);
        for (const id of [0, 1, 2, 3]) c.submit(id, c.request(0, seq));
      }
      for (const client of lowClients) {
        const seq = next(client);
        for (const id of [0, 1, 2, 3]) c.submit(id, c.request(client, seq));
      }
      c.tick();
      if (round % 3 === 0) c.deliverAll(() => true, 1);
    }
    for (const client of lowClients) expect(next(client)).toBeGreaterThan(2);
    for (const id of [1, 2, 3]) {
      const reasons = c.allEffects(id).flatMap((o) => (o.kind === "leaderSuspected" || o.kind === "suspect" ? [o.reason] : []));
      expect(reasons).toEqual([]);
    }
  });
});
