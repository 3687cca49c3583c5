/**
 * Memory under a slow-subscriber attack (run on purpose, not part of `npm test`):
 *
 *   bun test/bench/memory-attack.ts [--sessions N] [--history-mib M] [--source-addresses K]
 *                                   [--observe-seconds S] [--json]
 *
 * Four real replicas on 127.0.0.1. A public byzantine/total channel is filled with M MiB
 * of history (default 64; 1 KiB events, 256 per request). Then N attacker sessions
 * (default 1,000), each with a fresh ed25519 key, connect over raw TCP to ONE replica,
 * complete the client handshake (HELLO, HELLO_ACK, AUTH, and a PING to learn whether the
 * session was accepted), send one SUBSCRIBE {sub: 1, tag, from: 1} and never read again
 * (the socket is paused), so that the kernel buffers fill and the replica's queues fill.
 *
 * Measured: the RSS of every replica process (/proc/PID/status VmRSS, every 500 ms) before,
 * during and after the attack; the attacked replica's metrics (client_output_bytes,
 * client_connections, clients_stuck_closed_total, ...); and whether a correct client can
 * still publish 100 events and receive them on a subscription while the attack holds.
 * Sampling goes on for up to 60 s once the attacker sessions are open, and ends earlier
 * once the stuck-session deadline has passed and the attacked replica's RSS has stopped
 * growing; `--observe-seconds S` observes exactly S seconds instead (to see the idle
 * deadline, for one).
 *
 * The attacker sessions come from 127.0.0.1 by default, the address the correct client
 * uses too, so both share the replica's per-address session cap. `--source-addresses K`
 * (K >= 1) moves them to the loopback source addresses 127.0.0.2..127.0.0.(K+1), still to
 * 127.0.0.1, as an attacker with K addresses of its own would: past the per-address cap,
 * and apart from the correct client.
 *
 * Figures are printed, never judged: benchmarks are programs (src/README.md §9, rule 12).
 * Everything is bounded in time; the cluster is torn down on exit and on SIGINT.
 */
import { readFileSync } from "node:fs";
import net from "node:net";
import type { FitbClient, ReceivedBatch } from "../../src/client/index.ts";
import { loadPublicKeyFile, SigningKey } from "../../src/crypto/keys.ts";
import { CLIENT_CONNECTIONS_PER_ADDRESS_MAX, CLIENT_OUTPUT_BYTES_MAX, CLIENT_STUCK_MS_MAX } from "../../src/replica/server.ts";
import { FrameDecoder } from "../../wire/frame.ts";
import type { SessionFraming } from "../../src/crypto/session.ts";
import { decodeFrameBody, type Frame } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";
import { decodeSessionFrame, encodeSessionFrame, rawClientAuth, rawClientHello } from "../helpers/client-session.ts";
import { clientFor } from "../integration/client-util.ts";
import { freePortRange, startCluster, type TestCluster } from "../integration/harness.ts";

// ---------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------

const MIB = 1024 * 1024;
const HISTORY_TAG = "atk.history";
const PROBE_TAG = "atk.probe";
const EVENT_BYTES = 1024;
const EVENTS_PER_REQUEST = 256;
/** Publish requests in flight while the history is built. */
const FILL_REQUESTS_IN_FLIGHT = 4;
const SAMPLE_MS = 500;
/** The attacked replica's RSS, queued bytes and sessions are printed this often from the attack's start. */
const TIMELINE_STEP_MS = 5_000;
/** Attacker handshakes in flight at once: under the replica's 32 handshakes per address. */
const OPEN_IN_FLIGHT = 16;
/** One attacker handshake step (connect, HELLO_ACK, PONG) may take this long. */
const ATTACK_STEP_MS_MAX = 15_000;
/** The probe: events a correct client publishes (one per request) and the bound on the whole check. */
const PROBE_EVENTS = 100;
const PROBE_MS_MAX = 45_000;
/** RSS counts as no longer growing when it rose by less than this over the window. */
const PLATEAU_WINDOW_MS = 10_000;
const PLATEAU_GROWTH_MAX = 0.02;
/** The whole run is cut short (cluster torn down, exit 1) past this. */
const RUN_MS_MAX = 8 * 60_000;
/** The replica the attacker sessions go to. */
const ATTACKED = 1;

interface Options {
  readonly sessions: number;
  readonly historyMib: number;
  readonly sourceAddresses: number;
  readonly observeSeconds: number;
  /** False when --observe-seconds was given: observe all of it. */
  readonly observeEndsEarly: boolean;
  readonly json: boolean;
}

const USAGE =
  "usage: bun test/bench/memory-attack.ts [--sessions N] [--history-mib M] [--source-addresses K] [--observe-seconds S] [--json]";

function parseOptions(argv: readonly string[]): Options {
  const values: Record<string, number> = { sessions: 1_000, "history-mib": 64, "source-addresses": 0, "observe-seconds": 60 };
  const bounds: Record<string, [number, number]> = {
    sessions: [1, 4_000],
    "history-mib": [1, 512],
    "source-addresses": [0, 250],
    "observe-seconds": [5, 120],
  };
  let json = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (arg === "--json") {
      json = true;
      continue;
    }
    if (arg === "--help" || arg === "-h") {
      console.log(USAGE);
      process.exit(0);
    }
    const name = arg.startsWith("--") ? arg.slice(2) : "";
    const bound = bounds[name];
    const value = Number(argv[++i]);
    if (bound === undefined || !Number.isInteger(value) || value < bound[0] || value > bound[1]) {
      console.error(bound === undefined ? `unknown argument ${arg}` : `${arg}: expected an integer in ${bound[0]}..${bound[1]}`);
      console.error(USAGE);
      process.exit(2);
    }
    values[name] = value;
  }
  return {
    sessions: values.sessions as number,
    historyMib: values["history-mib"] as number,
    sourceAddresses: values["source-addresses"] as number,
    observeSeconds: values["observe-seconds"] as number,
    observeEndsEarly: !argv.includes("--observe-seconds"),
    json,
  };
}

function progress(text: string): void {
  process.stderr.write(`${text}\n`);
}

// ---------------------------------------------------------------------------------------
// RSS and metrics sampling
// ---------------------------------------------------------------------------------------

/** VmRSS of a process in bytes, or null once it is gone. */
function rssBytes(pid: number | undefined): number | null {
  if (pid === undefined) return null;
  try {
    const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return match === null ? null : Number(match[1]) * 1024;
  } catch {
    return null;
  }
}

/** Linux TCP states as /proc/net/tcp writes them (hex). */
const TCP_STATES: Record<string, string> = {
  "01": "established",
  "04": "fin-wait-1",
  "05": "fin-wait-2",
  "06": "time-wait",
  "07": "close",
  "08": "close-wait",
  "09": "last-ack",
  "0B": "closing",
};

/**
 * The kernel's view of the connections accepted on `port` (IPv4, /proc/net/tcp): how many
 * in each state. It shows the connections the replica ended but whose peer never read
 * what was queued ahead of the FIN.
 */
function tcpStatesOnPort(port: number): Record<string, number> {
  const counts: Record<string, number> = {};
  const hexPort = port.toString(16).toUpperCase().padStart(4, "0");
  try {
    for (const line of readFileSync("/proc/net/tcp", "utf8").split("\n").slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields.length < 4 || !fields[1]?.endsWith(`:${hexPort}`) || fields[3] === "0A") continue;
      const state = TCP_STATES[fields[3] as string] ?? `state ${fields[3]}`;
      counts[state] = (counts[state] ?? 0) + 1;
    }
  } catch {
    // Not Linux, or /proc not mounted: nothing to report.
  }
  return counts;
}

/** The attacked replica's metrics this program reports (Prometheus names without the `fitb_` prefix). */
const METRICS = [
  "client_output_bytes",
  "client_connections",
  "clients_stuck_closed_total",
  "clients_idle_closed_total",
  "clients_refused_total",
  "subscribers_dropped_slow_total",
  "handshakes_refused_total",
  "handshakes_evicted_total",
  "handshake_timeouts_total",
] as const;
type MetricName = (typeof METRICS)[number];
type MetricValues = Partial<Record<MetricName, number>>;

async function fetchMetrics(port: number): Promise<MetricValues | null> {
  try {
    const response = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(2_000) });
    const text = await response.text();
    const values: MetricValues = {};
    for (const name of METRICS) {
      // A counter never incremented is not listed yet: it reads as 0.
      const match = new RegExp(`^fitb_${name} (\\S+)$`, "m").exec(text);
      values[name] = match === null ? 0 : Number(match[1]);
    }
    return values;
  } catch {
    return null;
  }
}

interface TimelinePoint {
  readonly tSeconds: number;
  readonly rssMib: number;
  readonly clientOutputMib: number;
  readonly clientConnections: number;
}

interface Sample {
  readonly tMs: number;
  readonly phase: string;
  readonly rss: readonly (number | null)[];
}

/** Samples every replica's RSS, and the attacked replica's metrics, every SAMPLE_MS. */
class Sampler {
  readonly samples: Sample[] = [];
  /** Attacked replica's metrics over time, and the largest value each reached. */
  readonly metricsSeries: { tMs: number; values: MetricValues }[] = [];
  readonly metricsMax: MetricValues = {};
  latestMetrics: MetricValues = {};
  metricsFailures = 0;
  phase = "start";
  private timer: ReturnType<typeof setInterval> | null = null;
  private fetching = false;
  private readonly started = performance.now();

  constructor(
    private readonly cluster: TestCluster,
    private readonly metricsPort: number,
  ) {}

  start(): void {
    this.sample();
    this.timer = setInterval(() => this.sample(), SAMPLE_MS);
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  sample(): Sample {
    const tMs = performance.now() - this.started;
    const sample = { tMs, phase: this.phase, rss: this.cluster.procs.map((proc) => rssBytes(proc?.pid)) };
    this.samples.push(sample);
    if (!this.fetching) {
      this.fetching = true;
      void fetchMetrics(this.metricsPort).then((values) => {
        this.fetching = false;
        if (values === null) {
          this.metricsFailures++;
          return;
        }
        this.latestMetrics = values;
        this.metricsSeries.push({ tMs, values });
        for (const name of METRICS) {
          const value = values[name];
          if (value !== undefined) this.metricsMax[name] = Math.max(this.metricsMax[name] ?? 0, value);
        }
      });
    }
    return sample;
  }

  /** Largest RSS of replica `id` over samples of the given phases. */
  maxRss(id: number, phases: readonly string[]): number {
    let max = 0;
    for (const s of this.samples) if (phases.includes(s.phase)) max = Math.max(max, s.rss[id] ?? 0);
    return max;
  }

  lastRss(id: number): number {
    return this.samples.at(-1)?.rss[id] ?? 0;
  }

  elapsedMs(): number {
    return performance.now() - this.started;
  }

  /** Time (ms since `fromMs`) of replica `id`'s largest RSS sample after `fromMs`. */
  peakAtMs(id: number, fromMs: number): number {
    let best: Sample | null = null;
    for (const s of this.samples) if (s.tMs >= fromMs && (best === null || (s.rss[id] ?? 0) > (best.rss[id] ?? 0))) best = s;
    return best === null ? 0 : best.tMs - fromMs;
  }

  /**
   * Every `stepMs` from `fromMs`: replica `id`'s RSS (the first sample at or after that
   * time) and the attacked replica's queued client bytes and sessions (the last scrape
   * at or before it).
   */
  timeline(id: number, fromMs: number, stepMs: number): TimelinePoint[] {
    const points: TimelinePoint[] = [];
    const lastMs = this.samples.at(-1)?.tMs ?? 0;
    for (let t = fromMs; t <= lastMs; t += stepMs) {
      const sample = this.samples.find((s) => s.tMs >= t);
      const scrape = this.metricsSeries.findLast((m) => m.tMs <= t);
      points.push({
        tSeconds: Math.round((t - fromMs) / 1000),
        rssMib: mib(sample?.rss[id] ?? 0),
        clientOutputMib: mib(scrape?.values.client_output_bytes ?? 0),
        clientConnections: scrape?.values.client_connections ?? 0,
      });
    }
    return points;
  }

  /** True if replica `id`'s RSS rose by less than PLATEAU_GROWTH_MAX over the last PLATEAU_WINDOW_MS. */
  plateaued(id: number): boolean {
    const last = this.samples.at(-1);
    if (last === undefined) return false;
    const window = this.samples.filter((s) => s.tMs >= last.tMs - PLATEAU_WINDOW_MS);
    if (window.length < PLATEAU_WINDOW_MS / SAMPLE_MS - 2) return false;
    const first = window[0]?.rss[id] ?? 0;
    const max = Math.max(...window.map((s) => s.rss[id] ?? 0));
    return first > 0 && max <= first * (1 + PLATEAU_GROWTH_MAX);
  }
}

// ---------------------------------------------------------------------------------------
// The attacker: a raw client session that subscribes from seq 1 and then never reads
// ---------------------------------------------------------------------------------------

type AttackOutcome = { readonly kind: "subscribed" } | { readonly kind: "refused" | "failed"; readonly reason: string };

class AttackerSession {
  private readonly frames: Frame[] = [];
  private readonly decoder = new FrameDecoder({ copyPayloads: true });
  /** The session's MACs once AUTH is sent (wire/PROTOCOL.md 5.2). */
  private framing: SessionFraming | null = null;
  private closed = false;
  private wake: (() => void) | null = null;
  private readonly socket: net.Socket;

  constructor(port: number, localAddress: string) {
    this.socket = net.createConnection({ host: "127.0.0.1", port, localAddress });
    this.socket.setNoDelay(true);
    this.socket.on("data", (chunk: Buffer) => this.onData(chunk));
    this.socket.on("close", () => this.onClosed());
    this.socket.on("end", () => this.onClosed());
    this.socket.on("error", () => this.onClosed());
  }

  /** HELLO, HELLO_ACK, AUTH, PING, PONG, then SUBSCRIBE from seq 1 and pause for good. */
  async attack(key: SigningKey, tag: string): Promise<AttackOutcome> {
    try {
      await this.until("the connection", () => this.socket.readyState === "open");
      const state = rawClientHello(key);
      this.send({ type: FrameType.HELLO, body: state.hello });
      await this.until("HELLO_ACK", () => this.has(FrameType.HELLO_ACK));
      const ack = this.frames.find((f) => f.type === FrameType.HELLO_ACK);
      if (ack?.type !== FrameType.HELLO_ACK) return this.refusal();
      const { auth, framing } = rawClientAuth(key, state, ack.body);
      this.send(auth);
      this.framing = framing;
      this.send({ type: FrameType.PING, body: { n: 1 } });
      await this.until("PONG", () => this.has(FrameType.PONG));
      if (!this.has(FrameType.PONG)) return this.refusal();
      this.send({ type: FrameType.SUBSCRIBE, body: { sub: 1, tag, from: 1 } });
      // From here on nothing is read: what the replica sends fills the kernel's buffers,
      // then the replica's queue for this connection.
      this.socket.pause();
      this.socket.removeAllListeners("data");
      return { kind: "subscribed" };
    } catch (error) {
      return { kind: "failed", reason: error instanceof Error ? error.message : String(error) };
    }
  }

  destroy(): void {
    this.socket.destroy();
  }

  private send(frame: Frame): void {
    this.socket.write(encodeSessionFrame(frame, this.framing));
  }

  private has(type: number): boolean {
    return this.frames.some((f) => f.type === type);
  }

  private refusal(): AttackOutcome {
    const error = this.frames.find((f) => f.type === FrameType.ERROR);
    if (error?.type === FrameType.ERROR) return { kind: "refused", reason: `${error.body.code} ${error.body.reason}` };
    return { kind: "failed", reason: "closed without an ERROR" };
  }

  /** Waits until `check` holds or the connection closes; throws after ATTACK_STEP_MS_MAX. */
  private async until(what: string, check: () => boolean): Promise<void> {
    const deadline = performance.now() + ATTACK_STEP_MS_MAX;
    while (!check() && !this.closed) {
      const left = deadline - performance.now();
      if (left <= 0) throw new Error(`no ${what} within ${ATTACK_STEP_MS_MAX} ms`);
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, Math.min(left, 250));
      });
    }
  }

  private onData(chunk: Buffer): void {
    for (const result of this.decoder.push(new Uint8Array(chunk))) {
      if (!result.ok) continue;
      let decoded = decodeSessionFrame(result, this.framing);
      // A refusal of AUTH (an ERROR) comes before the session's MACs begin.
      if (!decoded.ok && "mac" in decoded) decoded = decodeFrameBody(result.type, result.payload);
      if (decoded.ok) this.frames.push(decoded.frame);
    }
    this.wake?.();
  }

  private onClosed(): void {
    this.closed = true;
    this.wake?.();
  }
}

interface AttackResult {
  readonly sessions: AttackerSession[];
  readonly subscribed: number;
  readonly refused: Map<string, number>;
  readonly failed: Map<string, number>;
  readonly openMs: number;
}

/** Attacker `i`'s source address: 127.0.0.1 when `sourceAddresses` is 0, else one of 127.0.0.2..127.0.0.(K+1). */
function attackerAddress(i: number, sourceAddresses: number): string {
  return sourceAddresses === 0 ? "127.0.0.1" : `127.0.0.${2 + (i % sourceAddresses)}`;
}

function describeSources(sourceAddresses: number): string {
  return sourceAddresses === 0 ? "127.0.0.1 (shared with the correct client)" : `127.0.0.2..127.0.0.${sourceAddresses + 1}`;
}

async function openAttackers(port: number, count: number, sourceAddresses: number): Promise<AttackResult> {
  const sessions: AttackerSession[] = [];
  const refused = new Map<string, number>();
  const failed = new Map<string, number>();
  let subscribed = 0;
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: Math.min(OPEN_IN_FLIGHT, count) }, async () => {
      for (let i = next++; i < count; i = next++) {
        const session = new AttackerSession(port, attackerAddress(i, sourceAddresses));
        sessions.push(session);
        const outcome = await session.attack(SigningKey.generate(), HISTORY_TAG);
        if (outcome.kind === "subscribed") subscribed++;
        else {
          const into = outcome.kind === "refused" ? refused : failed;
          into.set(outcome.reason, (into.get(outcome.reason) ?? 0) + 1);
        }
        const done = subscribed + [...refused.values(), ...failed.values()].reduce((a, b) => a + b, 0);
        if (done % 100 === 0 || done === count) progress(`  attacker sessions: ${done}/${count} done, ${subscribed} subscribed and paused`);
      }
    }),
  );
  return { sessions, subscribed, refused, failed, openMs: performance.now() - started };
}

// ---------------------------------------------------------------------------------------
// The history and the correct client's probe
// ---------------------------------------------------------------------------------------

async function fillHistory(publisher: FitbClient, mib: number): Promise<{ events: number; seconds: number }> {
  const requests = Math.ceil((mib * MIB) / (EVENT_BYTES * EVENTS_PER_REQUEST));
  const event = (r: number, i: number): Uint8Array => new TextEncoder().encode(`r${r}e${i}:`.padEnd(EVENT_BYTES, "x"));
  let next = 0;
  let done = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: FILL_REQUESTS_IN_FLIGHT }, async () => {
      for (let r = next++; r < requests; r = next++) {
        await publisher.publish(
          HISTORY_TAG,
          Array.from({ length: EVENTS_PER_REQUEST }, (_, i) => event(r, i)),
        );
        done++;
        if (done % 16 === 0 || done === requests) {
          progress(`  history: ${((done * EVENTS_PER_REQUEST * EVENT_BYTES) / MIB).toFixed(0)}/${mib} MiB (${done}/${requests} requests)`);
        }
      }
    }),
  );
  return { events: requests * EVENTS_PER_REQUEST, seconds: (performance.now() - started) / 1000 };
}

interface ProbeResult {
  readonly published: number;
  readonly delivered: number;
  readonly subscribeMs: number | null;
  readonly ackMs: Percentiles | null;
  readonly deliveryMs: Percentiles | null;
  /** Acks whose quorum included the attacked replica. */
  readonly acksWithAttacked: number;
  /** The publisher's session to the attacked replica at the end of the probe: state and last error. */
  readonly attackedSession: string;
  readonly error: string | null;
}

interface Percentiles {
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
}

function percentiles(values: readonly number[]): Percentiles | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] as number;
  return { p50: at(0.5), p99: at(0.99), max: sorted.at(-1) as number };
}

/**
 * A correct client's check, with fresh connections to all four replicas: a subscriber
 * (the admin key) on the probe channel from `from`, and a publisher (the client key)
 * publishing PROBE_EVENTS events one request at a time.
 */
async function probe(cluster: TestCluster, from: number): Promise<ProbeResult> {
  const publisher = clientFor(cluster, cluster.clientKey);
  const subscriber = clientFor(cluster, cluster.adminKey);
  const sentAt = new Map<number, number>();
  const deliveredAt = new Map<number, number>();
  const ackMs: number[] = [];
  let acksWithAttacked = 0;
  let subscribeMs: number | null = null;
  const started = performance.now();
  const work = async (): Promise<void> => {
    const subscription = await subscriber.subscribe(PROBE_TAG, { from }, (batch: ReceivedBatch) => {
      const now = performance.now();
      batch.events.forEach((_, index) => deliveredAt.set((batch.seq ?? batch.pubSeq) + index, now));
    });
    subscribeMs = performance.now() - started;
    try {
      for (let i = 0; i < PROBE_EVENTS; i++) {
        const t0 = performance.now();
        const ack = await publisher.publish(PROBE_TAG, [new TextEncoder().encode(`probe ${from + i}`)]);
        ackMs.push(performance.now() - t0);
        sentAt.set(ack.firstSeq, t0);
        if (ack.replicas.includes(ATTACKED)) acksWithAttacked++;
      }
      const deadline = performance.now() + 15_000;
      while (deliveredAt.size < PROBE_EVENTS && performance.now() < deadline) await Bun.sleep(20);
    } finally {
      await subscription.close();
    }
  };
  let error: string | null = null;
  let attackedSession = "?";
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      work(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`probe not finished within ${PROBE_MS_MAX} ms`)), PROBE_MS_MAX);
      }),
    ]);
  } catch (e) {
    error = e instanceof Error ? e.message : String(e);
  } finally {
    clearTimeout(timer);
    const state = publisher.replicaStates().find((r) => r.id === ATTACKED);
    if (state !== undefined) attackedSession = state.lastError === null ? state.state : `${state.state} (${state.lastError})`;
    publisher.close();
    subscriber.close();
  }
  const delivery: number[] = [];
  for (const [seq, t0] of sentAt) {
    const t1 = deliveredAt.get(seq);
    if (t1 !== undefined) delivery.push(t1 - t0);
  }
  return {
    published: ackMs.length,
    delivered: delivery.length,
    subscribeMs,
    ackMs: percentiles(ackMs),
    deliveryMs: percentiles(delivery),
    acksWithAttacked,
    attackedSession,
    error,
  };
}

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

interface Report {
  readonly options: Options;
  readonly history: { mib: number; events: number; seconds: number };
  readonly attack: {
    attacked: number;
    attempted: number;
    subscribed: number;
    refused: Record<string, number>;
    failed: Record<string, number>;
    openSeconds: number;
    observedSeconds: number;
    endedBecause: string;
    /** Connections on the attacked replica's port by TCP state at the end (peer links included). */
    tcpStatesAtEnd: Record<string, number>;
    /** Seconds from the attack's start to the attacked replica's RSS peak. */
    peakAtSeconds: number;
    /** The attacked replica every TIMELINE_STEP_MS from the attack's start. */
    timeline: TimelinePoint[];
  };
  readonly rssMib: {
    attacked: { baseline: number; peak: number; end: number };
    othersMax: { baseline: number; peak: number; end: number };
    perReplica: { id: number; baseline: number; peak: number; end: number }[];
  };
  readonly metrics: { max: MetricValues; end: MetricValues; scrapeFailures: number };
  readonly limits: { clientOutputBytesMax: number; clientStuckMsMax: number; clientConnectionsPerAddressMax: number };
  readonly probeBefore: ProbeResult;
  readonly probeDuring: ProbeResult;
  readonly totalSeconds: number;
}

async function run(options: Options, onCluster: (cluster: TestCluster) => void): Promise<Report> {
  const runStarted = performance.now();
  const historyEvents = Math.ceil((options.historyMib * MIB) / (EVENT_BYTES * EVENTS_PER_REQUEST)) * EVENTS_PER_REQUEST;
  // Generous retention: none of the history is trimmed while the attack reads it.
  const retention = { events_max: Math.max(1_000_000, 2 * historyEvents), bytes_max: Math.max(64, 2 * options.historyMib) * MIB };
  const metricsBase = freePortRange(4);
  progress(`starting 4 replicas on 127.0.0.1 (metrics on ports ${metricsBase}..${metricsBase + 3})`);
  const cluster = await startCluster({ limits: retention, replicaArgs: (id) => ["--metrics", `127.0.0.1:${metricsBase + id}`] });
  onCluster(cluster);
  const sampler = new Sampler(cluster, metricsBase + ATTACKED);
  const admin = clientFor(cluster, cluster.adminKey);
  const filler = clientFor(cluster, cluster.clientKey);
  let attackers: AttackerSession[] = [];
  try {
    const clientKey = loadPublicKeyFile(`${cluster.clientKey}.pub`);
    for (const tag of [HISTORY_TAG, PROBE_TAG]) {
      await admin.admin({ t: "create-channel", tag, fault: "byzantine", order: "total", priority: "normal", public: true });
      await admin.admin({ t: "register", tag, role: "publisher", key: clientKey });
    }
    sampler.start();
    sampler.phase = "fill";
    progress(`filling ${HISTORY_TAG} with ${options.historyMib} MiB (${EVENT_BYTES} B events, ${EVENTS_PER_REQUEST} per request)`);
    const fill = await fillHistory(filler, options.historyMib);
    filler.close();

    progress("probe before the attack: a correct client publishes and subscribes");
    sampler.phase = "probe-before";
    const probeBefore = await probe(cluster, 1);
    sampler.phase = "settle";
    await Bun.sleep(3_000);
    sampler.phase = "baseline";
    for (let i = 0; i < 4; i++) {
      sampler.sample();
      await Bun.sleep(SAMPLE_MS);
    }

    const port = cluster.basePort + ATTACKED;
    progress(
      `attack: ${options.sessions} sessions to replica ${ATTACKED} (127.0.0.1:${port}) from ${describeSources(options.sourceAddresses)}`,
    );
    sampler.phase = "attack";
    const attackStartMs = sampler.elapsedMs();
    const attack = await openAttackers(port, options.sessions, options.sourceAddresses);
    attackers = attack.sessions;
    const observeStarted = performance.now();

    progress("probe during the attack");
    const probeDuring = await probe(cluster, 1 + PROBE_EVENTS);

    // Observe until the deadline, or until the stuck deadline has passed (plus two sweeps)
    // and the attacked replica's RSS stopped growing.
    const observeMsMax = options.observeSeconds * 1000;
    const stuckSeenMs = CLIENT_STUCK_MS_MAX + 5_000;
    let endedBecause = `${options.observeSeconds} s observed`;
    for (;;) {
      const observedMs = performance.now() - observeStarted;
      if (observedMs >= observeMsMax) break;
      if (options.observeEndsEarly && observedMs >= stuckSeenMs && sampler.plateaued(ATTACKED)) {
        endedBecause = `RSS flat for ${PLATEAU_WINDOW_MS / 1000} s after the ${CLIENT_STUCK_MS_MAX / 1000} s stuck deadline`;
        break;
      }
      if (Math.round(observedMs / 1000) % 5 === 0) {
        const m = sampler.latestMetrics;
        progress(
          `  t+${(observedMs / 1000).toFixed(0)} s: replica ${ATTACKED} RSS ${mib(sampler.lastRss(ATTACKED))} MiB, ` +
            `client_output_bytes ${mib(m.client_output_bytes ?? 0)} MiB, client_connections ${m.client_connections ?? "?"}, ` +
            `stuck closed ${m.clients_stuck_closed_total ?? "?"}`,
        );
      }
      await Bun.sleep(1_000);
    }
    sampler.sample();
    // One last scrape, awaited, for the end values.
    const endMetrics = (await fetchMetrics(metricsBase + ATTACKED)) ?? sampler.latestMetrics;
    const tcpStatesAtEnd = tcpStatesOnPort(port);
    sampler.stop();
    const observedSeconds = (performance.now() - observeStarted) / 1000;

    const perReplica = [0, 1, 2, 3].map((id) => ({
      id,
      baseline: mib(sampler.maxRss(id, ["baseline"])),
      peak: mib(sampler.maxRss(id, ["attack"])),
      end: mib(sampler.lastRss(id)),
    }));
    const others = perReplica.filter((r) => r.id !== ATTACKED);
    const attacked = perReplica[ATTACKED] as (typeof perReplica)[number];
    return {
      options,
      history: { mib: options.historyMib, events: fill.events, seconds: round1(fill.seconds) },
      attack: {
        attacked: ATTACKED,
        attempted: options.sessions,
        subscribed: attack.subscribed,
        refused: Object.fromEntries(attack.refused),
        failed: Object.fromEntries(attack.failed),
        openSeconds: round1(attack.openMs / 1000),
        observedSeconds: round1(observedSeconds),
        endedBecause,
        tcpStatesAtEnd,
        peakAtSeconds: round1(sampler.peakAtMs(ATTACKED, attackStartMs) / 1000),
        timeline: sampler.timeline(ATTACKED, attackStartMs, TIMELINE_STEP_MS),
      },
      rssMib: {
        attacked: { baseline: attacked.baseline, peak: attacked.peak, end: attacked.end },
        othersMax: {
          baseline: Math.max(...others.map((r) => r.baseline)),
          peak: Math.max(...others.map((r) => r.peak)),
          end: Math.max(...others.map((r) => r.end)),
        },
        perReplica,
      },
      metrics: { max: sampler.metricsMax, end: endMetrics, scrapeFailures: sampler.metricsFailures },
      limits: {
        clientOutputBytesMax: CLIENT_OUTPUT_BYTES_MAX,
        clientStuckMsMax: CLIENT_STUCK_MS_MAX,
        clientConnectionsPerAddressMax: CLIENT_CONNECTIONS_PER_ADDRESS_MAX,
      },
      probeBefore,
      probeDuring,
      totalSeconds: round1((performance.now() - runStarted) / 1000),
    };
  } finally {
    sampler.stop();
    for (const session of attackers) session.destroy();
    admin.close();
    filler.close();
    await cluster.stop();
  }
}

function mib(bytes: number): number {
  return Math.round((bytes / MIB) * 10) / 10;
}

function round1(x: number): number {
  return Math.round(x * 10) / 10;
}

// ---------------------------------------------------------------------------------------
// Printing
// ---------------------------------------------------------------------------------------

function printTable(r: Report): void {
  const row = (label: string, ...cells: (string | number)[]): string =>
    `${label.padEnd(44)}${cells.map((c) => String(c).padStart(12)).join("")}`;
  const ms = (p: Percentiles | null): string => (p === null ? "-" : `${p.p50.toFixed(0)} / ${p.p99.toFixed(0)} / ${p.max.toFixed(0)}`);
  const probeLine = (name: string, p: ProbeResult): string[] => [
    `${name}: ${p.published}/${PROBE_EVENTS} published, ${p.delivered}/${PROBE_EVENTS} delivered` +
      `${p.error === null ? "" : ` (error: ${p.error})`}; subscribed in ${p.subscribeMs === null ? "-" : p.subscribeMs.toFixed(0)} ms`,
    `    publish ack ms p50/p99/max ${ms(p.ackMs)}; publish-to-delivery ms p50/p99/max ${ms(p.deliveryMs)}; ` +
      `replica ${ATTACKED} in ${p.acksWithAttacked}/${p.published} ack quorums`,
    `    publisher's session to replica ${ATTACKED}: ${p.attackedSession}`,
  ];
  const a = r.attack;
  const lines = [
    `memory under a slow-subscriber attack: 4 replicas on 127.0.0.1, ${r.history.mib} MiB history ` +
      `(${r.history.events} events of ${EVENT_BYTES} B, built in ${r.history.seconds} s)`,
    `attack: ${a.attempted} sessions to replica ${a.attacked} from ${describeSources(r.options.sourceAddresses)}, ` +
      `SUBSCRIBE from 1 then never read; ${a.subscribed} subscribed and paused, opened in ${a.openSeconds} s`,
    ...Object.entries(a.refused).map(([reason, n]) => `    refused x${n}: ${reason}`),
    ...Object.entries(a.failed).map(([reason, n]) => `    failed x${n}: ${reason}`),
    `observed ${a.observedSeconds} s after the sessions were open (ended: ${a.endedBecause}); ` +
      `limits: client output ${mib(r.limits.clientOutputBytesMax)} MiB, stuck ${r.limits.clientStuckMsMax / 1000} s, ` +
      `${r.limits.clientConnectionsPerAddressMax} sessions per address`,
    `connections on replica ${a.attacked}'s port at the end, by TCP state (kernel; peer links included): ` +
      (Object.entries(a.tcpStatesAtEnd)
        .map(([state, n]) => `${n} ${state}`)
        .join(", ") || "none"),
    "",
    row("RSS (MiB)", "baseline", "peak", "end"),
    row(`  attacked replica ${a.attacked}`, r.rssMib.attacked.baseline, r.rssMib.attacked.peak, r.rssMib.attacked.end),
    row("  other replicas (max)", r.rssMib.othersMax.baseline, r.rssMib.othersMax.peak, r.rssMib.othersMax.end),
    ...r.rssMib.perReplica.map((p) => row(`    replica ${p.id}`, p.baseline, p.peak, p.end)),
    `  replica ${a.attacked}'s peak came ${a.peakAtSeconds} s after the attack began; every ${TIMELINE_STEP_MS / 1000} s from the attack's start:`,
    `    t (s)              ${a.timeline.map((p) => String(p.tSeconds).padStart(6)).join("")}`,
    `    RSS (MiB)          ${a.timeline.map((p) => p.rssMib.toFixed(0).padStart(6)).join("")}`,
    `    queued (MiB)       ${a.timeline.map((p) => p.clientOutputMib.toFixed(0).padStart(6)).join("")}`,
    `    sessions           ${a.timeline.map((p) => String(p.clientConnections).padStart(6)).join("")}`,
    "",
    row(`replica ${a.attacked} metrics`, "max", "end"),
    row("  client_output_bytes (MiB)", mib(r.metrics.max.client_output_bytes ?? 0), mib(r.metrics.end.client_output_bytes ?? 0)),
    ...METRICS.filter((name) => name !== "client_output_bytes").map((name) =>
      row(`  ${name}`, r.metrics.max[name] ?? "-", r.metrics.end[name] ?? "-"),
    ),
    `  (metrics scrapes that failed or timed out: ${r.metrics.scrapeFailures})`,
    "",
    "correct client (fresh connections to all 4 replicas, 100 publishes of one event, one subscriber):",
    ...probeLine("  before the attack", r.probeBefore),
    ...probeLine("  during the attack", r.probeDuring),
    "",
    `total ${r.totalSeconds} s`,
  ];
  console.log(lines.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Main: bounded, and the cluster is torn down on every way out
// ---------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  let cluster: TestCluster | null = null;
  let stopping = false;
  const teardown = async (code: number, why: string): Promise<never> => {
    if (!stopping) {
      stopping = true;
      progress(why);
      await cluster?.stop();
    }
    process.exit(code);
  };
  process.once("SIGINT", () => void teardown(130, "interrupted: stopping the cluster"));
  process.once("SIGTERM", () => void teardown(143, "terminated: stopping the cluster"));
  const deadline = setTimeout(() => void teardown(1, `run exceeded ${RUN_MS_MAX / 1000} s: stopping the cluster`), RUN_MS_MAX);
  try {
    const report = await run(options, (c) => {
      cluster = c;
    });
    stopping = true;
    if (options.json) console.log(JSON.stringify(report, null, 2));
    else printTable(report);
  } catch (error) {
    await teardown(1, `failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  } finally {
    clearTimeout(deadline);
  }
  process.exit(0);
}

await main();
