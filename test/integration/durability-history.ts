/**
 * What the durability tests publish and how they judge the outcome: publish streams that
 * record every acknowledged event, bounded waits on the replicas' own status, and a
 * history checker over everything acknowledged and delivered.
 *
 * The checker's rules, for a total-order channel:
 *   1. The history read from seq 1 is gap-free: seqs 1, 2, 3, ... with no repeat.
 *   2. No payload appears twice (no event was executed twice).
 *   3. Every acknowledged event is in the history, at the channel seq its ack named.
 *   4. Every event in the history was published by the test (nothing invented).
 *   5. Each stream's events appear in the order they were published (per-publisher FIFO).
 *   6. What a live subscriber received is exactly the history at those seqs, gap-free.
 * For an unordered channel: every acknowledged event is delivered, none twice, none invented.
 */
import { jsonLogLines } from "../helpers/log-lines.ts";
import type { FitbClient } from "../../src/client/index.ts";
import { requireClusterConfig } from "../../src/config/cluster.ts";
import { collect, type Delivered, encode, waitForCount } from "./client-util.ts";
import { waitFor } from "../helpers/wait.ts";
import { logTail, type TestCluster, waitListening } from "./harness.ts";

export interface Acked {
  readonly payload: string;
  /** The channel seq of the event (total order), or null (unordered). */
  readonly seq: number | null;
}

export interface Stream {
  readonly tag: string;
  readonly prefix: string;
  readonly acked: Acked[];
  /** Payloads whose publish was attempted (acknowledged or not). */
  readonly attempted: Set<string>;
  failures: number;
}

/**
 * Payload of event `index` of request `request` of a stream: `prefix-request.index`,
 * padded with spaces and filler to `bytes` when asked for larger events.
 */
export function payloadOf(prefix: string, request: number, index: number, bytes = 0): string {
  const name = `${prefix}-${request}.${index}`;
  return name.length + 1 >= bytes ? name : `${name} ${"x".repeat(bytes - name.length - 1)}`;
}

/**
 * Publishes `requests` requests of `eventsPerRequest` events each, one at a time, and
 * records each acknowledged event. A publish that fails (a quorum was unreachable during
 * a crash) is counted; its events may or may not have been ordered, never twice.
 * `requests` may instead be a predicate asked before each request (its index): the
 * stream goes on while it answers true.
 */
export async function publishStream(
  client: FitbClient,
  tag: string,
  prefix: string,
  requests: number | ((request: number) => boolean),
  eventsPerRequest: number,
  onRequest: (request: number) => void | Promise<void> = () => undefined,
  eventBytes = 0,
): Promise<Stream> {
  const stream: Stream = { tag, prefix, acked: [], attempted: new Set(), failures: 0 };
  const more = typeof requests === "number" ? (r: number) => r < requests : requests;
  for (let r = 0; more(r); r++) {
    await onRequest(r);
    const payloads = Array.from({ length: eventsPerRequest }, (_, i) => payloadOf(prefix, r, i, eventBytes));
    for (const p of payloads) stream.attempted.add(p);
    try {
      const ack = await client.publish(tag, payloads.map(encode));
      payloads.forEach((payload, i) => stream.acked.push({ payload, seq: ack.channelSeq === null ? null : ack.channelSeq + i }));
    } catch {
      stream.failures++;
    }
  }
  return stream;
}

/**
 * Reads `tag`'s whole history from seq 1, once it holds as many events as `streams`
 * acknowledged, and returns what the history checker finds against those streams.
 */
export async function historyProblems(client: FitbClient, tag: string, streams: readonly Stream[]): Promise<string[]> {
  const acked = streams.reduce((sum, stream) => sum + stream.acked.length, 0);
  const history = await collect(client, tag, 1);
  await waitFor("the history to be read", () => history.events.length >= acked, 60_000);
  await history.close();
  return checkTotalOrder(streams, history.events);
}

/** The history checker for a total-order channel; returns every violation found. */
export function checkTotalOrder(streams: readonly Stream[], history: readonly Delivered[], live: readonly Delivered[] = []): string[] {
  const problems: string[] = [];
  history.forEach((event, i) => {
    if (event.seq !== i + 1) problems.push(`history position ${i} has seq ${event.seq}, expected ${i + 1} (gap or repeat)`);
  });
  const bySeq = new Map<number, string>();
  const seen = new Set<string>();
  for (const event of history) {
    if (seen.has(event.payload)) problems.push(`${event.payload} appears twice`);
    seen.add(event.payload);
    bySeq.set(event.seq, event.payload);
  }
  const attempted = new Set(streams.flatMap((s) => [...s.attempted]));
  for (const payload of seen) if (!attempted.has(payload)) problems.push(`${payload} was never published`);
  for (const stream of streams) {
    for (const ack of stream.acked) {
      const at = ack.seq === null ? undefined : bySeq.get(ack.seq);
      if (at !== ack.payload) problems.push(`acknowledged ${ack.payload} at seq ${ack.seq} but the history has ${at ?? "nothing"} there`);
    }
    problems.push(
      ...fifoProblems(
        stream.prefix,
        history.map((e) => e.payload),
      ),
    );
  }
  live.forEach((event, i) => {
    const first = live[0] as Delivered;
    if (event.seq !== first.seq + i) problems.push(`live delivery ${i} has seq ${event.seq}, expected ${first.seq + i}`);
    if (bySeq.get(event.seq) !== event.payload)
      problems.push(`live delivered ${event.payload} at ${event.seq}, history has ${bySeq.get(event.seq)}`);
  });
  return problems;
}

/** The history checker for an unordered channel. */
export function checkUnordered(streams: readonly Stream[], delivered: readonly Delivered[]): string[] {
  const problems: string[] = [];
  const seen = new Set<string>();
  for (const event of delivered) {
    if (seen.has(event.payload)) problems.push(`${event.payload} delivered twice`);
    seen.add(event.payload);
  }
  const attempted = new Set(streams.flatMap((s) => [...s.attempted]));
  for (const payload of seen) if (!attempted.has(payload)) problems.push(`${payload} was never published`);
  for (const stream of streams)
    for (const ack of stream.acked) if (!seen.has(ack.payload)) problems.push(`acknowledged ${ack.payload} was not delivered`);
  return problems;
}

/** Events of one stream must appear in publish order. */
function fifoProblems(prefix: string, payloads: readonly string[]): string[] {
  let last = -1;
  const problems: string[] = [];
  for (const payload of payloads) {
    if (!payload.startsWith(`${prefix}-`)) continue;
    const name = payload.split(" ")[0] as string;
    const [request, index] = name
      .slice(prefix.length + 1)
      .split(".")
      .map(Number) as [number, number];
    const order = request * 1_000_000 + index;
    if (order <= last) problems.push(`${payload} is out of publish order`);
    last = order;
  }
  return problems;
}

/** Each replica's last decided seq from its own status answer (null: no answer). */
export async function lastDecided(client: FitbClient): Promise<(number | null)[]> {
  const status = await client.status();
  // By replica id: the client lists only the members it follows, so a removed replica leaves a gap.
  const seqs: (number | null)[] = [];
  for (const r of status.replicas) {
    while (seqs.length < r.id) seqs.push(null);
    seqs[r.id] = r.answer?.ok === true ? r.answer.value.lastDecided : null;
  }
  return seqs;
}

/** Waits until the replicas in `ids` all answer and report the same last decided seq. */
export async function waitConverged(client: FitbClient, ids: readonly number[], timeoutMs: number): Promise<number> {
  let at = -1;
  let seen: (number | null)[] = [];
  await waitFor(
    `replicas ${ids.join(",")} to reach the same decided seq`,
    async () => {
      const seqs = await lastDecided(client).catch(() => []);
      const mine = ids.map((id) => seqs[id] ?? null);
      seen = mine;
      if (mine.some((s) => s === null)) return false;
      at = mine[0] as number;
      return mine.every((s) => s === at);
    },
    timeoutMs,
    () => `decided seqs ${JSON.stringify(seen)} (null: no answer)`,
  );
  return at;
}

/**
 * Waits until replica `id` has decided at least as far as the most advanced replica had
 * when the wait began: it caught up, even while traffic keeps the others moving.
 */
export async function waitCaughtUp(client: FitbClient, id: number, timeoutMs: number): Promise<number> {
  let target: number | null = null;
  let seen: (number | null)[] = [];
  await waitFor(
    `replica ${id} to catch up with the others`,
    async () => {
      const seqs: (number | null)[] = await lastDecided(client).catch(() => []);
      seen = seqs;
      const answered = seqs.filter((s): s is number => s !== null);
      if (target === null && answered.length > 0) target = Math.max(...answered);
      const mine = seqs[id] ?? null;
      return target !== null && mine !== null && mine >= target;
    },
    timeoutMs,
    () => `target ${target}, decided seqs ${JSON.stringify(seen)} (null: no answer)`,
  );
  return target ?? 0;
}

/**
 * Lets the `lagging` replicas catch up: a trickle of events on `tag` keeps the group
 * deciding (so a lagging replica learns how far behind it is) until each of them reached
 * where the others were; then the traffic stops and all four must agree on the last
 * decided seq. A timeout names the seqs last seen and the lagging replicas' log tails.
 * Returns the trickle's stream (its acknowledged events belong to the history).
 */
export async function catchUpUnderTraffic(
  cluster: TestCluster,
  admin: FitbClient,
  publisher: FitbClient,
  tag: string,
  lagging: readonly number[],
  timeoutMs: number,
): Promise<Stream> {
  const traffic = trickle(publisher, tag, "trickle", 50);
  const withLogs = (err: Error): never => {
    const tails = lagging.map((id) => `replica ${id} log:\n${logTail(cluster, id)}`).join("\n");
    throw new Error(`${err.message}\n${tails}`);
  };
  try {
    for (const id of lagging) await waitCaughtUp(admin, id, timeoutMs).catch(withLogs);
  } finally {
    await traffic.stop();
  }
  await waitConverged(admin, [...cluster.procs.keys()], timeoutMs).catch(withLogs);
  return traffic.stream;
}

/**
 * Reads `count` events of `tag` from seq 1 with the `fitb sub` command (--json), as an
 * operator would with only some replicas up (from `configPath`, by default the cluster's
 * file); fails the test if the command does not exit 0. Returns the events in the order
 * printed.
 */
export async function historyByCli(
  cluster: TestCluster,
  tag: string,
  count: number,
  configPath = cluster.configPath,
): Promise<Delivered[]> {
  const sub = await cluster.fitb(
    [
      "sub",
      "--config",
      configPath,
      "--key",
      cluster.clientKey,
      tag,
      "--from",
      "1",
      "--count",
      String(count),
      "--json",
      "--connect-timeout",
      "1000",
    ],
    { timeoutMs: 30_000 },
  );
  if (sub.code !== 0) throw new Error(`fitb sub exited ${sub.code}: ${sub.stderr.trim()}`);
  return sub.stdout
    .trim()
    .split("\n")
    .map((line) => JSON.parse(line) as Delivered);
}

/** The JSON log lines of replica `id` whose msg is `msg`. */
export function logLines(cluster: TestCluster, id: number, msg: string): Record<string, unknown>[] {
  return jsonLogLines(cluster.logs[id], msg);
}

/** Publishes one small event every `intervalMs` until stopped: traffic that lets a lagging replica see how far behind it is. */
export function trickle(
  client: FitbClient,
  tag: string,
  prefix: string,
  intervalMs: number,
): { stream: Stream; stop: () => Promise<void> } {
  const stream: Stream = { tag, prefix, acked: [], attempted: new Set(), failures: 0 };
  let running = true;
  const done = (async () => {
    for (let r = 0; running; r++) {
      const payload = payloadOf(prefix, r, 0);
      stream.attempted.add(payload);
      try {
        const ack = await client.publish(tag, [encode(payload)]);
        stream.acked.push({ payload, seq: ack.channelSeq });
      } catch {
        stream.failures++;
      }
      await Bun.sleep(intervalMs);
    }
  })();
  return {
    stream,
    stop: async () => {
      running = false;
      await done;
    },
  };
}

/**
 * Starts replica `id` again and, while `during` runs, trickles events into `tag` so it
 * sees how far behind it is; the trickle's stream goes into `streams` (the history).
 */
export async function restartUnderTrickle(
  cluster: TestCluster,
  publisher: FitbClient,
  id: number,
  tag: string,
  prefix: string,
  streams: Stream[],
  during: () => Promise<void>,
): Promise<void> {
  cluster.start(id);
  await waitListening(cluster, [id]);
  const traffic = trickle(publisher, tag, prefix, 50);
  try {
    await during();
  } finally {
    await traffic.stop();
    streams.push(traffic.stream);
  }
}

/** The data directory of replica `id`, as its cluster file names it. */
export function dataDirOf(cluster: TestCluster, id: number): string {
  const entry = requireClusterConfig(cluster.configPath).replicas[id];
  if (entry === undefined) throw new Error(`no replica ${id}`);
  return entry.dataDir;
}

/** SIGKILLs replica `id` and waits until the process is gone (its files are then quiet). */
export async function killAndWait(cluster: TestCluster, id: number): Promise<void> {
  const proc = cluster.procs[id];
  cluster.kill(id, "SIGKILL");
  await proc?.exited;
}

/** Starts replica `id` and waits until it has logged `line` once more than before the start. */
export async function startUntilLogged(cluster: TestCluster, id: number, line: string, timeoutMs = 60_000): Promise<void> {
  const seen = logLines(cluster, id, line).length;
  cluster.start(id);
  await waitFor(
    `replica ${id} to log "${line}"`,
    () => logLines(cluster, id, line).length > seen,
    timeoutMs,
    () => logTail(cluster, id),
  );
}

/** End markers published so far by readHistory (each one names its own). */
let markers = 0;

/**
 * The history of `streams`' channel from `from`, read by a fresh subscription up to an end
 * marker published after everything else. The marker's delivery is the signal that the
 * subscription has passed every earlier event (a total-order channel delivers in seq
 * order), so no fixed wait decides when the history is complete; on an unordered channel
 * the read also waits for every acknowledged event. The marker joins `streams` (it was
 * acknowledged and belongs to the history from now on).
 */
export async function readHistory(client: FitbClient, publisher: FitbClient, streams: Stream[], from: number): Promise<Delivered[]> {
  const tag = (streams[0] as Stream).tag;
  const prefix = `end${++markers}`;
  const marker = payloadOf(prefix, 0, 0);
  const ack = await publisher.publish(tag, [encode(marker)]);
  streams.push({ tag, prefix, acked: [{ payload: marker, seq: ack.channelSeq }], attempted: new Set([marker]), failures: 0 });
  const history = await collect(client, tag, from);
  try {
    await waitFor(
      `the end marker of ${tag} (${history.events.length} events so far)`,
      () => history.events.some((e) => e.payload === marker),
      30_000,
    );
    await waitForCount(history.events, acked(streams), `history of ${tag}`, 30_000);
  } finally {
    await history.close();
  }
  if (ack.channelSeq === null) return history.events;
  return history.events.slice(0, history.events.findIndex((e) => e.payload === marker) + 1);
}

/** Events acknowledged over `streams`. */
export function acked(streams: readonly Stream[]): number {
  return streams.reduce((n, s) => n + s.acked.length, 0);
}
