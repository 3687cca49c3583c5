/**
 * `fitb bench --config C --key K --channel TAG [--events N] [--size BYTES]
 * [--publishers P] [--subscribers S[,S...]] [--rate R[,R...]] [--json]`: a throughput and latency
 * figure against a running cluster, measured the way a user sees it: events published
 * through the client library's batching Publisher with acks, and counted when
 * subscribers actually deliver them (voted and signature-checked like any subscriber).
 *
 * Each event carries a run id, its publisher and index, and its send time, so a
 * subscriber counts only this run's events and measures publish-to-delivery latency.
 * Latencies go into a log-bucketed histogram (bounded memory whatever N is).
 *
 * A benchmark is a program, not a test: it prints figures and never judges them. It
 * exits 1 only if events failed to publish or were acknowledged but not delivered.
 */
import { plural } from "../words.ts";
import { randomBytes } from "node:crypto";
import type { FitbClient } from "../../client/client.ts";
import { describeError } from "../../client/errors.ts";
import { Publisher } from "../../client/publisher.ts";
import { loadClientSetup, type ClientSetup } from "../../client/setup.ts";
import type { ReceivedBatch, Subscription, SubscriptionSignal, SubscriptionSources } from "../../client/subscription.ts";
import type { ParsedArgs } from "../args.ts";
import type { Command, CommandIo } from "../command.ts";
import { CommandError, EXIT_FAILURE, EXIT_OK, UsageError } from "../errors.ts";
import { workerEntry } from "../../threads/entry.ts";
import type { FloodCounts, FloodIn, FloodOut, FloodPlan } from "./bench-flood.ts";
import {
  CONFIG_FLAG,
  CRASH_NONE_TARGETS_FLAG,
  keyFlag,
  openClient,
  readClientFlags,
  readCrashNoneTargets,
  readSources,
  requireTag,
  SOURCES_FLAG,
  TIMEOUT_FLAGS,
  withClientErrors,
  type ClientFlags,
} from "./pub.ts";

/** Run id (8) + publisher index (4) + event index (4) + send time in µs (8). */
export const BENCH_HEADER_BYTES = 24;
export const BENCH_EVENTS_MAX = 100_000_000;
export const BENCH_PUBLISHERS_MAX = 64;
export const BENCH_SUBSCRIBERS_MAX = 128;
/**
 * Subscribers share at most this many client connections (round robin), so that a run with
 * more subscribers stays within the replicas' connections per key (64); each subscription
 * is still its own subscription at every replica.
 */
export const BENCH_SUBSCRIBER_CLIENTS_MAX = 32;
export const BENCH_RATE_MAX = 10_000_000;
/** The slowest `--rate`: one event every 100 s. */
export const BENCH_RATE_MIN = 0.01;
export const BENCH_SWEEP_RATES_MAX = 32;
const DEFAULT_EVENTS = 10_000;
const DEFAULT_MIX_PUBLISHERS = 4;
/** The measured channel's rate in a --mix run when --rate is not given (the issue's alert rate). */
const DEFAULT_MIX_RATE = 1_000;
const DEFAULT_SIZE = 100;
/** Progress lines go to stderr this often once a run takes longer than it. */
const PROGRESS_INTERVAL_MS = 1_000;
/** A paced publisher sleeps at least this long between bursts (timer granularity). */
const PACING_SLEEP_MS = 1;
const RUN_ID_BYTES = 8;
const MICROS_PER_MS = 1_000;
const MS_PER_SECOND = 1_000;

export const benchCommand: Command = {
  path: ["bench"],
  summary: "Measure delivered events/s and publish-to-delivery latency",
  description: [
    "Subscribes S clients to channel TAG, then publishes N events of BYTES bytes from P",
    "concurrent publishers (sharing the key, each batching its own stream), at R events/s",
    "in total or as fast as acknowledgements allow. Counts the events the subscribers",
    "deliver (after voting and signature checks) and prints delivered events/s and the",
    "p50/p99/max latency from publish to delivery. 'delivered' counts every subscriber's",
    "deliveries, so a complete run delivers N*S. It reads every replica's CPU time from its",
    "status answer before and after the run and prints each replica's CPU seconds and CPU",
    "µs per delivered event (and per published event with S > 1; other traffic at the same",
    "time counts too), and its own CPU over the same span, every thread (bench_cpu_s, and",
    "bench_cpu_us_per_event in --json, null with --mix whose flood it includes): on a host",
    "shared with replicas the bench's clients take from their cores. It says when replicas",
    "refused publishes RATE_LIMITED (the key's rate limit, not the broker, then set the",
    "figure). Subscribers have a client connection each, up to 32, and share them round",
    "robin past 32 or --subscriber-connections C; the subscriptions of one connection get",
    "each batch in one frame naming them all (shared subscriptions). --json prints one",
    'object: {"events","warmup","delivered","seconds",',
    '"delivered_per_s","p50_ms","p99_ms","max_ms","cpu_s","cpu_us_per_event",',
    '"cpu_us_per_published_event","bench_cpu_s","bench_cpu_us_per_event","rate_limited",',
    '"widened","slow_cutoffs","dropped_events","subscriptions_widened"};',
    "the cpu lists are by replica id, null where a replica did not report. It says when a",
    "replica cut a subscriber off for reading too slowly (slow_cutoffs). A crash/none publish",
    "goes to f+1 replicas, and to every replica only when they refuse, drop or are slow:",
    "'widened' counts those. On a low or normal total-order channel f+1 replicas serve each",
    "subscription once started, until a fault shows (--sources auto, the default; quorum",
    "does so on any channel, all never); subscriptions_widened counts the times one went",
    "back to every replica (warm-up included).",
    "The key must be allowed to publish to the channel and to subscribe to it.",
    "Progress goes to standard error. Exits 1 if events failed or were not delivered.",
    "",
    "--rate R1,R2,... sweeps: the same run at each rate in turn, then one table (or a JSON",
    "array) of delivered events/s and p50/p99/max latency against the offered load.",
    "--subscribers S1,S2,... sweeps the number of subscribers the same way (each step with",
    "subscribers of its own, at the same --rate) and prints what each count costs: published",
    "and delivered events/s, p50/p99, and the replicas' CPU per published event (the mean",
    "over the replicas) against the first count's. Give a --rate the slowest step keeps up",
    "with: saturated, a step with more subscribers publishes less, and the replicas' fixed",
    "costs per second are then spread over fewer events.",
    "",
    "--warmup W publishes W events first, delivered to the same subscribers, and starts",
    "measuring (latency, events/s, CPU) only once all W were delivered: the replicas'",
    "JavaScript engine compiles their hot code during the first seconds of load, on threads",
    "of their own, which a short run otherwise counts in the broker's CPU per event and",
    "latency. In a sweep, only the first step (rate or subscriber count) is preceded by the",
    "warm-up.",
    "",
    "--mix LOWTAG measures priority: first LOWTAG alone, saturated by --mix-publishers",
    "publishers (as fast as acks allow, in a thread of their own) for 1 s of warm-up and",
    "then as long as the measured run will take; then the measured run on TAG at --rate (default 1000 ev/s)",
    "while LOWTAG stays saturated. A rate under 1 (--rate 0.5 --events 10: an event every",
    "2 s) measures alerts that each arrive alone into the flood, after a quiet spell, as",
    "most alerts do. It prints TAG's p50/p99/max, LOWTAG's acknowledged",
    "events/s alone and during the run, and how many OVERLOADED answers replicas gave",
    "LOWTAG's publish requests during the run (one per replica and refusal: shed by",
    "priority shedding or a full pending pool; each was asked again, nothing is lost).",
    '--json adds {"mix":{"low_solo_per_s","low_mixed_per_s",',
    '"low_retained_pct","low_shed","low_failed"}}. Make TAG critical and LOWTAG low to',
    "see priorities at work; both must accept the key.",
  ],
  flags: [
    CONFIG_FLAG,
    keyFlag("The secret key file to publish and subscribe with"),
    { name: "channel", kind: "string", valueName: "TAG", required: true, description: "The channel to publish to" },
    { name: "events", kind: "string", valueName: "N", defaultValue: String(DEFAULT_EVENTS), description: "Events to publish" },
    {
      name: "size",
      kind: "string",
      valueName: "BYTES",
      defaultValue: String(DEFAULT_SIZE),
      description: `Bytes per event (at least ${BENCH_HEADER_BYTES})`,
    },
    { name: "publishers", kind: "string", valueName: "P", defaultValue: "1", description: "Concurrent publishers" },
    {
      name: "warmup",
      kind: "string",
      valueName: "W",
      defaultValue: "0",
      description: "Events published and delivered before the measured run starts (not counted)",
    },
    {
      name: "subscribers",
      kind: "string",
      valueName: "S[,S...]",
      defaultValue: "1",
      description: `Subscribing clients, 1 to ${BENCH_SUBSCRIBERS_MAX}; a list sweeps the counts and prints what each costs the replicas`,
    },
    {
      name: "subscriber-connections",
      kind: "string",
      valueName: "C",
      description: `Client connections the subscribers share, round robin (default: one each, at most ${BENCH_SUBSCRIBER_CLIENTS_MAX}); 1 is a relay's case`,
    },
    {
      name: "rate",
      kind: "string",
      valueName: "R[,R...]",
      description: `Events per second in total, ${BENCH_RATE_MIN} to ${BENCH_RATE_MAX} (default: as fast as acks allow); a list sweeps the rates and prints latency against load`,
    },
    {
      name: "mix",
      kind: "string",
      valueName: "LOWTAG",
      description: "Priority run: saturate LOWTAG alone, then measure TAG at --rate (default 1000) while LOWTAG stays saturated",
    },
    {
      name: "mix-publishers",
      kind: "string",
      valueName: "N",
      defaultValue: String(DEFAULT_MIX_PUBLISHERS),
      description: "Publishers saturating LOWTAG in a --mix run",
    },
    { name: "json", kind: "boolean", description: "Print one JSON object with the figures (a sweep: an array, one per step)" },
    ...TIMEOUT_FLAGS,
    CRASH_NONE_TARGETS_FLAG,
    SOURCES_FLAG,
  ],
  positionals: [],
  examples: [
    "fitb bench --config cluster.toml --key bench.key --channel bench.crash --events 100000 --size 200",
    "fitb bench --config cluster.toml --key bench.key --channel bench.bft --publishers 4 --subscribers 2 --json",
    "fitb bench --config cluster.toml --key bench.key --channel sec.alerts --rate 1000 --events 5000 --mix bulk.metrics",
    "fitb bench --config cluster.toml --key bench.key --channel sec.alerts --events 20000 --rate 1000,5000,20000",
  ],
  run: runBench,
};

export interface BenchPlan {
  readonly tag: string;
  readonly events: number;
  readonly size: number;
  readonly publishers: number;
  readonly subscribers: number;
  /** More subscriber counts to run after `subscribers` (a sweep: `--subscribers 1,10,100`). */
  readonly subscriberSweep: readonly number[];
  /** Client connections the subscribers share, round robin (in a sweep: at most this many, at most one each). */
  readonly subscriberConnections: number;
  /** Which replicas serve the subscriptions on a total-order channel (--sources). */
  readonly sources: SubscriptionSources;
  /** Events per second in total, or null for as fast as acks allow. */
  readonly rate: number | null;
  /** More rates to run after `rate` (a sweep: `--rate 1000,5000,20000`). */
  readonly sweep: readonly number[];
  readonly json: boolean;
  /** A --mix run: the channel saturated meanwhile, and by how many publishers. */
  readonly mix: { readonly tag: string; readonly publishers: number } | null;
  /** Events published, and delivered to every subscriber, before measuring (not counted). */
  readonly warmup: number;
}

/** Validates every flag (UsageError, exit 2) before anything is opened. */
export function readBenchPlan(args: ParsedArgs): BenchPlan {
  const tag = requireTag(args.requiredString("channel"), "--channel");
  const events = args.requiredInteger("events", 1, BENCH_EVENTS_MAX);
  const size = args.requiredInteger("size", 1, Number.MAX_SAFE_INTEGER);
  if (size < BENCH_HEADER_BYTES)
    throw new UsageError(`--size: at least ${BENCH_HEADER_BYTES} bytes (the run id, indexes and send time), got ${size}`);
  const publishers = args.requiredInteger("publishers", 1, BENCH_PUBLISHERS_MAX);
  if (publishers > events)
    throw new UsageError(`--publishers: ${publishers} publishers for ${events} events; at most one publisher per event`);
  const counts = parseSubscriberCounts(args.requiredString("subscribers"));
  const subscribers = counts[0] as number;
  // In a sweep, a ceiling each step takes at most one connection per subscriber of (by
  // default BENCH_SUBSCRIBER_CLIENTS_MAX: one each, up to that).
  const subscriberConnections =
    args.string("subscriber-connections") === undefined
      ? Math.min(counts.length > 1 ? Math.max(...counts) : subscribers, BENCH_SUBSCRIBER_CLIENTS_MAX)
      : args.requiredInteger("subscriber-connections", 1, BENCH_SUBSCRIBER_CLIENTS_MAX);
  const most = Math.max(...counts);
  if (subscriberConnections > most) {
    throw new UsageError(`--subscriber-connections: ${subscriberConnections} connections for ${most} subscribers; at most one each`);
  }
  const mixTag = args.string("mix");
  const mix =
    mixTag === undefined
      ? null
      : { tag: requireTag(mixTag, "--mix"), publishers: args.requiredInteger("mix-publishers", 1, BENCH_PUBLISHERS_MAX) };
  if (mix !== null && mix.tag === tag) throw new UsageError("--mix: the saturated channel must differ from --channel");
  const rates = parseRates(args.string("rate"));
  if (rates.length > 1 && mix !== null) throw new UsageError("--rate: a sweep of rates does not combine with --mix");
  if (counts.length > 1 && mix !== null) throw new UsageError("--subscribers: a sweep of subscriber counts does not combine with --mix");
  if (counts.length > 1 && rates.length > 1) throw new UsageError("--subscribers: sweep subscribers or rates, not both at once");
  const rate = rates[0] ?? (mix === null ? null : DEFAULT_MIX_RATE);
  const warmup = args.requiredInteger("warmup", 0, BENCH_EVENTS_MAX);
  const paced = rate === null ? [] : rates.length > 0 ? rates : [rate];
  const pacedSeconds = pacedRunSeconds(events, warmup, pacedSteps(paced, counts.length), mix !== null);
  // A rate under 1 is for alerts seconds apart: a day-long run is then a mistyped --events.
  if (paced.some((r) => r < 1) && pacedSeconds > BENCH_SLOW_RUN_SECONDS_MAX) {
    throw new UsageError(
      `--rate: ${events} events${warmup > 0 ? ` and a warm-up of ${warmup}` : ""} at ${paced.length > 1 ? "these rates" : "this rate"}${mix !== null ? ", after --mix's solo phase as long," : ""} take about ${formatDuration(pacedSeconds)}; with a rate under 1 a run may take at most 24 h (fewer --events, or a higher --rate)`,
    );
  }
  return {
    tag,
    events,
    size,
    publishers,
    subscribers,
    subscriberSweep: counts.slice(1),
    subscriberConnections,
    sources: readSources(args),
    rate,
    sweep: rates.slice(1),
    json: args.boolean("json"),
    mix,
    warmup,
  };
}

/** The longest a run with a rate under 1 may take (s): `--rate 0.1` with the default 10,000 events would take 28 hours. */
export const BENCH_SLOW_RUN_SECONDS_MAX = 24 * 60 * 60;

/**
 * How long publishing takes at the given rates (s): the warm-up at the first rate, each
 * rate's events, and with `--mix` the saturated channel's solo phase as long as the run.
 */
export function pacedRunSeconds(events: number, warmup: number, rates: readonly number[], mix: boolean): number {
  const first = rates[0];
  if (first === undefined) return 0;
  const run = rates.reduce((sum, rate) => sum + events / rate, 0);
  return warmup / first + (mix ? 2 * run : run);
}

/** The rate of each step a run publishes at: a sweep of subscriber counts runs every count at the one rate. */
export function pacedSteps(rates: readonly number[], subscriberCounts: number): number[] {
  return rates.length === 1 && subscriberCounts > 1 ? Array.from({ length: subscriberCounts }, () => rates[0] as number) : [...rates];
}

/** `--subscribers S` or `--subscribers S1,S2,...` (a sweep), each from 1 to BENCH_SUBSCRIBERS_MAX, each once. */
function parseSubscriberCounts(text: string): number[] {
  const parts = text.split(",").map((part) => part.trim());
  if (parts.length > BENCH_SWEEP_RATES_MAX) throw new UsageError(`--subscribers: at most ${BENCH_SWEEP_RATES_MAX} counts in a sweep`);
  const counts = parts.map((part) => {
    const count = /^[0-9]+$/.test(part) ? Number(part) : Number.NaN;
    if (!Number.isSafeInteger(count) || count < 1 || count > BENCH_SUBSCRIBERS_MAX) {
      throw new UsageError(
        `--subscribers: expected a whole number from 1 to ${BENCH_SUBSCRIBERS_MAX} (or a comma-separated list), got ${JSON.stringify(part)}`,
      );
    }
    return count;
  });
  if (new Set(counts).size !== counts.length) throw new UsageError("--subscribers: a count appears twice in the sweep");
  return counts;
}

/** A duration for a person: seconds, minutes or hours. */
function formatDuration(seconds: number): string {
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

/**
 * `--rate R` or `--rate R1,R2,...` (a sweep), each from BENCH_RATE_MIN to BENCH_RATE_MAX
 * with at most two decimals: below 1 event/s, `--mix` measures alerts that each arrive
 * alone, seconds apart, into a flood (0.5: one every 2 s).
 */
function parseRates(text: string | undefined): number[] {
  if (text === undefined) return [];
  const rates = text.split(",").map((part) => part.trim());
  if (rates.length > BENCH_SWEEP_RATES_MAX) throw new UsageError(`--rate: at most ${BENCH_SWEEP_RATES_MAX} rates in a sweep`);
  return rates.map((part) => {
    const rate = /^[0-9]+(\.[0-9]{1,2})?$/.test(part) ? Number(part) : Number.NaN;
    if (!Number.isFinite(rate) || rate < BENCH_RATE_MIN || rate > BENCH_RATE_MAX) {
      throw new UsageError(
        `--rate: expected a number from ${BENCH_RATE_MIN} to ${BENCH_RATE_MAX} with at most two decimals (or a comma-separated list), got ${JSON.stringify(part)}`,
      );
    }
    return rate;
  });
}

async function runBench(args: ParsedArgs, io: CommandIo): Promise<number> {
  const flags = { ...readClientFlags(args), crashNoneTargets: readCrashNoneTargets(args) };
  const plan = readBenchPlan(args);
  const setup = loadClientSetup(flags.configPath, flags.keyPath);
  for (const warning of setup.warnings) io.err(`fitb bench: warning: ${warning}`);
  if (plan.rate !== null) {
    const steps = pacedSteps([plan.rate, ...plan.sweep], 1 + plan.subscriberSweep.length);
    const seconds = pacedRunSeconds(plan.events, plan.warmup, steps, plan.mix !== null);
    if (seconds >= 1) io.err(`fitb bench: paced: the run takes about ${formatDuration(seconds)}`);
  }
  if (plan.size > setup.config.limits.eventBytesMax) {
    throw new CommandError(`--size ${plan.size} exceeds the cluster's event_bytes_max of ${setup.config.limits.eventBytesMax}`);
  }
  const clients: FitbClient[] = [];
  const flood = plan.mix === null ? null : new Flood(plan, flags);
  try {
    let mix: MixFigures | null = null;
    let result: BenchResult;
    if (plan.sweep.length > 0) return await withClientErrors(() => runSweep(plan, flags, setup, clients, io));
    if (plan.subscriberSweep.length > 0) return await withClientErrors(() => runSubscriberSweep(plan, flags, setup, clients, io));
    if (flood === null) result = await withClientErrors(() => runPlan(plan, flags, setup, clients, io));
    else {
      const measured = await withClientErrors(() => runMix(plan, flags, setup, clients, io, flood));
      result = measured.result;
      mix = measured.mix;
    }
    printResult(plan, result, io, mix);
    return reportProblems(plan, result, io, mix);
  } finally {
    flood?.terminate();
    for (const client of clients) client.close();
  }
}

export interface BenchResult {
  readonly acked: number;
  readonly failed: number;
  readonly firstError: string | null;
  readonly delivered: number;
  readonly seconds: number;
  readonly latency: LatencyHistogram;
  /** Each replica's CPU seconds during the run, by replica id; null where it did not report them. */
  readonly replicaCpuSeconds: readonly (number | null)[];
  /** This process's CPU seconds over the same span, every thread (with --mix, the flood's too). */
  readonly benchCpuSeconds: number;
  /** RATE_LIMITED refusals the publishing client got (and retried) during the run. */
  readonly rateLimited: number;
  /** crash/none publishes of the run sent to every replica after their f+1 replicas refused, dropped or were slower than the hedge delay. */
  readonly widened: number;
  /** Times a replica cut a subscriber off for reading too slowly, and events dropped locally for it. */
  readonly slowCutoffs: number;
  readonly droppedEvents: number;
  /** Times a subscription went back from f+1 serving replicas to every replica (warm-up included). */
  readonly subscriptionsWidened: number;
}

/** Status queries for the replicas' CPU times: a replica whose session is still coming up is asked again. */
const CPU_READ_ATTEMPTS = 10;
const CPU_READ_RETRY_MS = 200;

/**
 * Each replica's process CPU time (µs) from its status answer, by replica id; null where
 * none came after every attempt, or where the replica answered without one (an older
 * replica, not asked again).
 */
async function replicaCpuMicros(client: FitbClient): Promise<(number | null)[]> {
  const cpu: (number | null)[] = [];
  const answered = new Set<number>();
  for (let attempt = 0; attempt < CPU_READ_ATTEMPTS; attempt++) {
    const status = await client.status();
    for (const replica of status.replicas) {
      if (answered.has(replica.id) || replica.answer?.ok !== true) continue;
      answered.add(replica.id);
      cpu[replica.id] = replica.answer.value.cpuUs ?? null;
    }
    if (answered.size === status.replicas.length) break;
    await Bun.sleep(CPU_READ_RETRY_MS);
  }
  // Indexed by id: after a removal the ids have gaps (null there), and the highest may exceed n-1.
  return Array.from({ length: Math.max(client.n, cpu.length) }, (_, id) => cpu[id] ?? null);
}

/** CPU seconds between two readings, per replica; null where either is missing or the replica restarted. */
export function cpuSecondsBetween(before: readonly (number | null)[], after: readonly (number | null)[]): (number | null)[] {
  return after.map((end, id) => {
    const start = before[id] ?? null;
    if (end === null || start === null || end < start) return null;
    return (end - start) / 1e6;
  });
}

async function runPlan(
  plan: BenchPlan,
  flags: ClientFlags,
  setup: ClientSetup,
  clients: FitbClient[],
  io: CommandIo,
): Promise<BenchResult> {
  const connect = async (): Promise<FitbClient> => {
    const client = await openClient(flags, io, "bench", setup);
    clients.push(client);
    return client;
  };
  const runId = new Uint8Array(randomBytes(RUN_ID_BYTES));
  const counter = new DeliveryCounter(runId);
  const warmupCounter = new DeliveryCounter(new Uint8Array(randomBytes(RUN_ID_BYTES)));
  const subscriptions: Subscription[] = [];
  const subscriberClients: FitbClient[] = [];
  const trouble = { slowCutoffs: 0, droppedEvents: 0, subscriptionsWidened: 0 };
  const onSignal = (signal: SubscriptionSignal): void => {
    if (signal.t === "widened") trouble.subscriptionsWidened++;
    if (signal.t === "slow" && signal.source === "replica") trouble.slowCutoffs++;
    else if (signal.t === "overflow") trouble.droppedEvents += signal.droppedEvents;
  };
  for (let i = 0; i < plan.subscribers; i++) {
    if (subscriberClients.length < plan.subscriberConnections) subscriberClients.push(await connect());
    const client = subscriberClients[i % subscriberClients.length] as FitbClient;
    subscriptions.push(
      await client.subscribe(plan.tag, { onSignal, sources: plan.sources }, (batch) => {
        counter.onBatch(batch);
        warmupCounter.onBatch(batch);
      }),
    );
  }
  const publishClient = await connect();
  if (plan.warmup > 0) await warmUp(plan, publishClient, warmupCounter, flags, io);
  const cpuBefore = await replicaCpuMicros(publishClient);
  const benchCpuBefore = process.cpuUsage();
  const rateLimitedBefore = publishClient.transientRefusals.get("RATE_LIMITED") ?? 0;
  const widenedBefore = publishClient.crashNoneWidened;
  const progress = new Progress(plan, counter, io);
  const started = performance.now();
  const published = await publishAll(plan, publishClient, runId, progress);
  const expected = published.acked * plan.subscribers;
  await counter.waitFor(expected, flags.timeoutMs);
  progress.stop();
  const benchCpu = process.cpuUsage(benchCpuBefore);
  const cpuAfter = await replicaCpuMicros(publishClient);
  for (const subscription of subscriptions) await subscription.close();
  const end = counter.lastDeliveryAt ?? performance.now();
  return {
    acked: published.acked,
    failed: published.failed,
    firstError: published.firstError,
    delivered: counter.delivered,
    seconds: Math.max(end - started, 0) / MS_PER_SECOND,
    latency: counter.latency,
    replicaCpuSeconds: cpuSecondsBetween(cpuBefore, cpuAfter),
    benchCpuSeconds: (benchCpu.user + benchCpu.system) / 1e6,
    rateLimited: (publishClient.transientRefusals.get("RATE_LIMITED") ?? 0) - rateLimitedBefore,
    widened: publishClient.crashNoneWidened - widenedBefore,
    ...trouble,
  };
}

/**
 * `--warmup W`: W events of their own run id, as the measured run publishes them, delivered
 * to every subscriber before the measured run starts. Fails the run if they do not all arrive.
 */
async function warmUp(plan: BenchPlan, client: FitbClient, counter: DeliveryCounter, flags: ClientFlags, io: CommandIo): Promise<void> {
  const warm: BenchPlan = { ...plan, events: plan.warmup, publishers: Math.min(plan.publishers, plan.warmup) };
  io.err(`fitb bench: warm-up: ${plan.warmup} events, not measured`);
  const progress = new Progress(warm, counter, io, "warm-up");
  try {
    const published = await publishAll(warm, client, counter.runId, progress);
    await counter.waitFor(published.acked * plan.subscribers, flags.timeoutMs);
    if (published.failed > 0 || counter.delivered < published.acked * plan.subscribers) {
      throw new CommandError(
        `warm-up: ${published.failed} of ${plan.warmup} events failed, ${counter.delivered} of ${published.acked * plan.subscribers} delivered${published.firstError === null ? "" : ` (${published.firstError})`}`,
      );
    }
  } finally {
    progress.stop();
  }
}

// ---------------------------------------------------------------------------------------
// --rate R1,R2,...: latency against load
// ---------------------------------------------------------------------------------------

/**
 * The steps of a sweep, one after the other, each on fresh clients, only the first after
 * the warm-up; each step's row is `extra(step, result)` then its figures, and the exit
 * status says whether any step had problems.
 */
async function runSteps<Row>(
  steps: readonly { readonly plan: BenchPlan; readonly label: string }[],
  row: (step: BenchPlan, result: BenchResult) => Row,
  flags: ClientFlags,
  setup: ClientSetup,
  clients: FitbClient[],
  io: CommandIo,
): Promise<{ rows: Row[]; status: number }> {
  const rows: Row[] = [];
  let status = EXIT_OK;
  for (const [index, { plan, label }] of steps.entries()) {
    const step: BenchPlan = { ...plan, sweep: [], subscriberSweep: [], warmup: index === 0 ? plan.warmup : 0 };
    io.err(`fitb bench: sweep: ${label}`);
    const result = await runPlan(step, flags, setup, clients, io);
    for (const client of clients.splice(0)) client.close();
    rows.push(row(step, result));
    if (reportProblems(step, result, io, null) !== EXIT_OK) status = EXIT_FAILURE;
  }
  return { rows, status };
}

/** The plan once per rate, one after the other on fresh clients; a table (or a JSON array) of the figures. */
async function runSweep(plan: BenchPlan, flags: ClientFlags, setup: ClientSetup, clients: FitbClient[], io: CommandIo): Promise<number> {
  const steps = [plan.rate as number, ...plan.sweep].map((rate) => ({ plan: { ...plan, rate }, label: `${rate} events/s offered` }));
  const { rows, status } = await runSteps(
    steps,
    (step, result): ReturnType<typeof resultJson> => ({ rate: step.rate, ...resultJson(step, result) }),
    flags,
    setup,
    clients,
    io,
  );
  if (plan.json) io.out(JSON.stringify(rows));
  else {
    io.out(
      `channel ${plan.tag}: ${plan.events} events of ${plan.size} bytes per rate, ${plan.publishers} publishers, ${plan.subscribers} subscribers`,
    );
    io.out("offered ev/s  delivered ev/s   p50 ms   p99 ms   max ms");
    for (const row of rows) {
      io.out(
        `${String(row.rate).padStart(12)}  ${String(row.delivered_per_s).padStart(14)}  ${String(row.p50_ms).padStart(7)}  ${String(row.p99_ms).padStart(7)}  ${String(row.max_ms).padStart(7)}`,
      );
    }
  }
  return status;
}

/**
 * `--subscribers S1,S2,...`: the same run with each count of subscribers in turn (fresh
 * subscribers per step), then one table (or a JSON array) of what each count costs the
 * replicas per published event, against the first count's.
 */
async function runSubscriberSweep(
  plan: BenchPlan,
  flags: ClientFlags,
  setup: ClientSetup,
  clients: FitbClient[],
  io: CommandIo,
): Promise<number> {
  const steps = [plan.subscribers, ...plan.subscriberSweep].map((subscribers) => ({
    plan: { ...plan, subscribers, subscriberConnections: Math.min(plan.subscriberConnections, subscribers) },
    label: plural(subscribers, "subscriber"),
  }));
  const { rows, status } = await runSteps(
    steps,
    (step, result): SubscriberSweepRow => ({
      subscribers: step.subscribers,
      subscriber_connections: step.subscriberConnections,
      rate: step.rate,
      published_per_s: result.seconds > 0 ? Math.round(result.acked / result.seconds) : 0,
      ...resultJson(step, result),
    }),
    flags,
    setup,
    clients,
    io,
  );
  if (plan.json) io.out(JSON.stringify(rows));
  else for (const line of subscriberSweepTable(plan, rows)) io.out(line);
  return status;
}

export type SubscriberSweepRow = {
  readonly subscribers: number;
  readonly subscriber_connections: number;
  readonly rate: number | null;
  readonly published_per_s: number;
} & ReturnType<typeof resultJson>;

/** The table a subscriber sweep prints: one line per count, its replicas' CPU against the first count's. */
export function subscriberSweepTable(plan: BenchPlan, rows: readonly SubscriberSweepRow[]): string[] {
  const offered = plan.rate === null ? "as fast as acks allow" : `${plan.rate} events/s offered`;
  const lines = [
    `channel ${plan.tag}: ${plan.events} events of ${plan.size} bytes per step, ${plural(plan.publishers, "publisher")}, ${offered}`,
    "subscribers  published ev/s  delivered ev/s   p50 ms   p99 ms  replica CPU µs per published event  vs the first",
  ];
  const first = meanOf(rows[0]?.cpu_us_per_published_event);
  for (const row of rows) {
    const cpu = meanOf(row.cpu_us_per_published_event);
    const ratio = cpu === null || first === null || first === 0 ? "-" : (cpu / first).toFixed(2);
    lines.push(
      `${String(row.subscribers).padStart(11)}  ${String(row.published_per_s).padStart(14)}  ${String(row.delivered_per_s).padStart(14)}  ${String(row.p50_ms).padStart(7)}  ${String(row.p99_ms).padStart(7)}  ${(cpu === null ? "-" : cpu.toFixed(1)).padStart(34)}  ${ratio.padStart(12)}`,
    );
  }
  return lines;
}

/** The mean of the replicas' figures that were reported, or null when none was. */
export function meanOf(values: number | null | (number | null)[] | undefined): number | null {
  if (!Array.isArray(values)) return null;
  const known = values.filter((value): value is number => value !== null);
  return known.length === 0 ? null : known.reduce((sum, value) => sum + value, 0) / known.length;
}

// ---------------------------------------------------------------------------------------
// --mix: the measured channel while another is saturated
// ---------------------------------------------------------------------------------------

export interface MixFigures {
  readonly lowSoloPerS: number;
  readonly lowMixedPerS: number;
  /** OVERLOADED answers to the flood's publish requests during the measured run, one per replica and refusal (each asked again). */
  readonly lowShed: number;
  readonly lowFailed: number;
  readonly lowFirstError: string | null;
}

/** The saturated channel runs this long before its solo rate is measured. */
const MIX_WARMUP_MS = 1_000;

/** How often the bench asks the flood thread for its counts while it waits for an acknowledgement. */
const FLOOD_POLL_MS = 50;
/** Answers of the flood thread are bounded by this, so a wedged thread fails the run instead of hanging it. */
const FLOOD_ANSWER_MS = 30_000;

/** What the flood thread is told: the --mix channel, with the bench's own client flags. */
export function floodPlanOf(plan: BenchPlan, flags: ClientFlags): FloodPlan {
  const mix = plan.mix;
  if (mix === null) throw new RangeError("floodPlanOf: not a --mix run");
  return {
    configPath: flags.configPath,
    keyPath: flags.keyPath,
    tag: mix.tag,
    size: plan.size,
    publishers: mix.publishers,
    connectTimeoutMs: flags.connectTimeoutMs,
    timeoutMs: flags.timeoutMs,
    crashNoneTargets: flags.crashNoneTargets,
  };
}

/** The flood thread (bench-flood.ts) and its answers. */
class Flood {
  private readonly worker: Worker;
  private readonly answers: FloodOut[] = [];
  private waiter: (() => void) | null = null;
  private failure: string | null = null;

  constructor(
    private readonly plan: BenchPlan,
    private readonly flags: ClientFlags,
  ) {
    this.worker = new Worker(workerEntry("cli/commands/bench-flood.ts"));
    this.worker.onmessage = (message: MessageEvent<FloodOut>) => {
      if (message.data.t === "failed") this.failure = message.data.error;
      else this.answers.push(message.data);
      this.waiter?.();
    };
    this.worker.onerror = (event) => {
      this.failure = event.message;
      this.waiter?.();
    };
  }

  async start(): Promise<void> {
    this.send({ t: "start", plan: floodPlanOf(this.plan, this.flags) });
    await this.next("ready");
  }

  async mark(): Promise<FloodCounts> {
    this.send({ t: "mark" });
    return (await this.next("counts")) as FloodCounts;
  }

  /** Waits until the flood has had more than `acked` events acknowledged (bounded by FLOOD_ANSWER_MS). */
  async acknowledged(acked: number): Promise<void> {
    const deadline = performance.now() + FLOOD_ANSWER_MS;
    for (;;) {
      const counts = await this.mark();
      if (counts.acked > acked) return;
      // Nothing ever acknowledged and publishes failing (a key the channel refuses, say): no
      // acknowledgement is coming. Failures after some were acknowledged (timeouts of a
      // saturated flood) are reported with the figures instead.
      if (counts.acked === 0 && counts.failed > 0) {
        throw new CommandError(`--mix: ${this.plan.mix?.tag}: ${counts.failed} events failed: ${counts.firstError ?? "no reason given"}`);
      }
      if (performance.now() >= deadline) {
        throw new CommandError(`--mix: ${this.plan.mix?.tag} had no event acknowledged within ${FLOOD_ANSWER_MS / 1000} s`);
      }
      await Bun.sleep(FLOOD_POLL_MS);
    }
  }

  async stop(): Promise<FloodCounts> {
    this.send({ t: "stop" });
    return (await this.next("counts")) as FloodCounts;
  }

  terminate(): void {
    void this.worker.terminate();
  }

  private send(message: FloodIn): void {
    this.worker.postMessage(message);
  }

  private async next(kind: FloodOut["t"]): Promise<FloodOut> {
    const deadline = performance.now() + FLOOD_ANSWER_MS;
    for (;;) {
      if (this.failure !== null) throw new CommandError(`--mix: the flood of ${this.plan.mix?.tag}: ${this.failure}`);
      const answer = this.answers.shift();
      if (answer !== undefined) {
        if (answer.t !== kind) throw new CommandError(`--mix: the flood thread answered ${answer.t}, expected ${kind}`);
        return answer;
      }
      const left = deadline - performance.now();
      if (left <= 0) throw new CommandError(`--mix: the flood thread did not answer within ${FLOOD_ANSWER_MS / 1000} s`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.waiter = null;
    }
  }
}

function perSecond(from: FloodCounts, to: FloodCounts): number {
  const seconds = (to.atMs - from.atMs) / MS_PER_SECOND;
  return seconds > 0 ? (to.acked - from.acked) / seconds : 0;
}

/**
 * The saturated channel alone for as long as the measured run will take (events / rate),
 * then the measured run with the saturation going on; the flood's acknowledged events/s
 * in both, and what was shed.
 */
async function runMix(
  plan: BenchPlan,
  flags: ClientFlags,
  setup: ClientSetup,
  clients: FitbClient[],
  io: CommandIo,
  flood: Flood,
): Promise<{ result: BenchResult; mix: MixFigures }> {
  const mix = plan.mix as NonNullable<BenchPlan["mix"]>;
  const soloMs = (plan.events / (plan.rate as number)) * MS_PER_SECOND;
  io.err(`fitb bench: --mix: ${mix.tag} alone, saturated by ${mix.publishers} publishers, for ${(soloMs / MS_PER_SECOND).toFixed(1)} s`);
  await flood.start();
  // The flood's first acknowledgement and first second fill the pipelines: measured from
  // after them, and over at least one more acknowledgement (a slow machine may take
  // longer than the planned window to give one), within FLOOD_ANSWER_MS.
  await flood.acknowledged(0);
  await Bun.sleep(MIX_WARMUP_MS);
  const soloStart = await flood.mark();
  await Bun.sleep(soloMs);
  await flood.acknowledged(soloStart.acked);
  const soloEnd = await flood.mark();
  io.err(`fitb bench: --mix: ${plan.tag} at ${plan.rate} events/s while ${mix.tag} stays saturated`);
  const result = await runPlan(plan, flags, setup, clients, io);
  const mixedEnd = await flood.stop();
  return {
    result,
    mix: {
      lowSoloPerS: perSecond(soloStart, soloEnd),
      lowMixedPerS: perSecond(soloEnd, mixedEnd),
      lowShed: mixedEnd.shed - soloEnd.shed,
      lowFailed: mixedEnd.failed,
      lowFirstError: mixedEnd.firstError,
    },
  };
}

// ---------------------------------------------------------------------------------------
// Publishing
// ---------------------------------------------------------------------------------------

interface PublishTally {
  acked: number;
  failed: number;
  firstError: string | null;
}

async function publishAll(plan: BenchPlan, client: FitbClient, runId: Uint8Array, progress: Progress): Promise<PublishTally> {
  const tally: PublishTally = { acked: 0, failed: 0, firstError: null };
  const share = (index: number): number => Math.floor(plan.events / plan.publishers) + (index < plan.events % plan.publishers ? 1 : 0);
  // One schedule for all publishers, interleaved: event i of publisher p is the run's
  // event i * P + p, due at (i * P + p) / rate, so at a rate under 1 the events still go
  // one at a time, seconds apart, not P together.
  const schedule = plan.rate === null ? null : { start: performance.now(), rate: plan.rate, publishers: plan.publishers };
  const tasks = Array.from({ length: plan.publishers }, (_, index) =>
    publishStream(new Publisher(client, plan.tag), index, share(index), plan.size, schedule, runId, tally, progress),
  );
  await Promise.all(tasks);
  return tally;
}

async function publishStream(
  publisher: Publisher,
  publisherIndex: number,
  count: number,
  size: number,
  schedule: { readonly start: number; readonly rate: number; readonly publishers: number } | null,
  runId: Uint8Array,
  tally: PublishTally,
  progress: Progress,
): Promise<void> {
  for (let index = 0; index < count; index++) {
    if (schedule !== null) await pace(schedule.start, runIndex(index, publisherIndex, schedule.publishers), schedule.rate);
    if (!publisher.hasRoom(size)) await publisher.waitForRoom(size);
    const event = benchEvent(runId, publisherIndex, index, size, performance.now());
    progress.published++;
    publisher.publish(event).then(
      () => {
        tally.acked++;
      },
      (error: unknown) => {
        tally.failed++;
        tally.firstError ??= describeError(error);
      },
    );
  }
  await publisher.close();
}

/** The run's event number of publisher `publisher`'s event `index`, with `publishers` interleaved: 0, P, 2P, ... for the first. */
export function runIndex(index: number, publisher: number, publishers: number): number {
  return index * publishers + publisher;
}

/** When the run's event `index` is due (ms), at `rate` events/s from `start`. */
export function dueAtMs(start: number, index: number, rate: number): number {
  return start + (index * MS_PER_SECOND) / rate;
}

/** Sleeps until event `index` is due at `rate` events/s from `start`. */
async function pace(start: number, index: number, rate: number): Promise<void> {
  const wait = dueAtMs(start, index, rate) - performance.now();
  if (wait >= PACING_SLEEP_MS) await Bun.sleep(wait);
}

/**
 * The 16 bytes after the run id (publisher index, event index, send time), written and read
 * through one DataView of its own: a DataView over each event would make the engine give
 * every event an ArrayBuffer of its own, which cost the bench process about a tenth of its
 * time at saturation (README, Performance, "What the client costs").
 */
const headerScratch = new Uint8Array(BENCH_HEADER_BYTES - RUN_ID_BYTES);
const headerView = new DataView(headerScratch.buffer);
/** The last event shape built: run id and padding, copied for each event of that run and size. */
let template: { readonly runId: Uint8Array; readonly bytes: Uint8Array } | null = null;

/** An event of `size` bytes: run id, publisher index, event index, send time (µs), padding. */
export function benchEvent(runId: Uint8Array, publisherIndex: number, index: number, size: number, sentAtMs: number): Uint8Array {
  if (template === null || template.runId !== runId || template.bytes.length !== size) {
    const bytes = new Uint8Array(size);
    bytes.set(runId, 0);
    bytes.fill(0x2e, BENCH_HEADER_BYTES);
    template = { runId, bytes };
  }
  const event = template.bytes.slice();
  headerView.setUint32(0, publisherIndex);
  headerView.setUint32(4, index);
  headerView.setFloat64(8, sentAtMs * MICROS_PER_MS);
  event.set(headerScratch, RUN_ID_BYTES);
  return event;
}

/** The send time (ms, performance.now clock) of one of this run's events, or null for any other event. */
export function benchSentAt(event: Uint8Array, runId: Uint8Array): number | null {
  if (event.byteLength < BENCH_HEADER_BYTES) return null;
  for (let i = 0; i < RUN_ID_BYTES; i++) if (event[i] !== runId[i]) return null;
  const at = RUN_ID_BYTES + 8;
  for (let i = 0; i < 8; i++) headerScratch[8 + i] = event[at + i] as number;
  return headerView.getFloat64(8) / MICROS_PER_MS;
}

// ---------------------------------------------------------------------------------------
// Counting deliveries
// ---------------------------------------------------------------------------------------

class DeliveryCounter {
  delivered = 0;
  lastDeliveryAt: number | null = null;
  readonly latency = new LatencyHistogram();
  private waiter: (() => void) | null = null;
  private target = Number.POSITIVE_INFINITY;

  constructor(readonly runId: Uint8Array) {}

  onBatch(batch: ReceivedBatch): void {
    const now = performance.now();
    for (const event of batch.events) {
      const sentAt = benchSentAt(event, this.runId);
      if (sentAt === null) continue;
      this.delivered++;
      this.latency.record(now - sentAt);
    }
    this.lastDeliveryAt = now;
    if (this.delivered >= this.target) this.waiter?.();
  }

  /** Resolves once `target` deliveries were counted, or after `idleMs` without a new one. */
  async waitFor(target: number, idleMs: number): Promise<void> {
    this.target = target;
    let seen = -1;
    while (this.delivered < target && this.delivered !== seen) {
      seen = this.delivered;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, idleMs);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.waiter = null;
    }
  }
}

/**
 * Latencies in a log-linear histogram: 64 sub-buckets per power of two of microseconds,
 * so a percentile is off by under 2%, in a few thousand counters whatever the run length.
 */
export class LatencyHistogram {
  static readonly SUB_BUCKETS = 64;
  static readonly POWERS = 40;
  private readonly counts = new Float64Array(LatencyHistogram.SUB_BUCKETS * LatencyHistogram.POWERS);
  private total = 0;
  private maxMs = 0;

  get count(): number {
    return this.total;
  }

  record(ms: number): void {
    const micros = Math.max(0, Math.round(ms * MICROS_PER_MS));
    const index = Math.min(LatencyHistogram.bucketOf(micros), this.counts.length - 1);
    this.counts[index] = (this.counts[index] as number) + 1;
    this.total++;
    if (ms > this.maxMs) this.maxMs = ms;
  }

  get max(): number {
    return this.maxMs;
  }

  /** The latency (ms) at or below which `p` percent of the samples fall; 0 when empty. */
  percentile(p: number): number {
    if (this.total === 0) return 0;
    const rank = Math.max(1, Math.ceil((p / 100) * this.total));
    let seen = 0;
    for (let index = 0; index < this.counts.length; index++) {
      seen += this.counts[index] as number;
      if (seen >= rank) return Math.min(LatencyHistogram.upperMicros(index) / MICROS_PER_MS, this.maxMs);
    }
    return this.maxMs;
  }

  private static bucketOf(micros: number): number {
    const sub = LatencyHistogram.SUB_BUCKETS;
    if (micros < sub) return micros;
    const power = Math.floor(Math.log2(micros / sub)) + 1;
    const width = 2 ** (power - 1);
    const offset = Math.floor((micros - sub * width) / width);
    return power * sub + Math.min(Math.max(offset, 0), sub - 1);
  }

  /** The largest value (µs) that falls in bucket `index`. */
  private static upperMicros(index: number): number {
    const sub = LatencyHistogram.SUB_BUCKETS;
    if (index < sub) return index;
    const power = Math.floor(index / sub);
    const width = 2 ** (power - 1);
    return sub * width + ((index % sub) + 1) * width - 1;
  }
}

// ---------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------

class Progress {
  published = 0;
  private readonly timer: ReturnType<typeof setInterval>;
  private readonly started = performance.now();

  constructor(
    private readonly plan: BenchPlan,
    private readonly counter: DeliveryCounter,
    private readonly io: CommandIo,
    private readonly phase = "",
  ) {
    this.timer = setInterval(() => this.report(), PROGRESS_INTERVAL_MS);
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private report(): void {
    const seconds = (performance.now() - this.started) / MS_PER_SECOND;
    const expected = this.plan.events * this.plan.subscribers;
    this.io.err(
      `fitb bench: ${this.phase === "" ? "" : `${this.phase}: `}${seconds.toFixed(0)} s: published ${this.published}/${this.plan.events}, delivered ${this.counter.delivered}/${expected}`,
    );
  }
}

/** Two decimals in ms: microsecond resolution, no spurious digits. */
function roundMs(ms: number): number {
  return Math.round(ms * 100) / 100;
}

export function mixJson(mix: MixFigures): Record<string, number> {
  return {
    low_solo_per_s: Math.round(mix.lowSoloPerS),
    low_mixed_per_s: Math.round(mix.lowMixedPerS),
    low_retained_pct: mix.lowSoloPerS > 0 ? Math.round((mix.lowMixedPerS / mix.lowSoloPerS) * 1000) / 10 : 0,
    low_shed: mix.lowShed,
    low_failed: mix.lowFailed,
  };
}

/** One decimal: CPU figures are noisy well above that. */
function roundTenth(value: number): number {
  return Math.round(value * 10) / 10;
}

/** What the replicas' CPU cost per event, by replica id (null where a replica did not report its CPU time). */
export interface CpuFigures {
  readonly cpu_s: (number | null)[];
  /** CPU µs per delivered event (every subscriber's deliveries counted). */
  readonly cpu_us_per_event: (number | null)[];
  /** CPU µs per acknowledged (published) event, whatever the number of subscribers. */
  readonly cpu_us_per_published_event: (number | null)[];
  /**
   * The bench process's own CPU seconds (its publishers, its subscribers and their checks
   * and voting, every thread), and per delivered event: null with --mix, whose flood
   * thread's CPU is not for the measured channel's deliveries.
   */
  readonly bench_cpu_s: number;
  readonly bench_cpu_us_per_event: number | null;
}

export function cpuFigures(plan: BenchPlan, result: BenchResult): CpuFigures {
  const per = (count: number) => (seconds: number | null) => (seconds === null || count === 0 ? null : roundTenth((seconds * 1e6) / count));
  return {
    cpu_s: result.replicaCpuSeconds.map((seconds) => (seconds === null ? null : Math.round(seconds * 1000) / 1000)),
    cpu_us_per_event: result.replicaCpuSeconds.map(per(result.delivered)),
    cpu_us_per_published_event: result.replicaCpuSeconds.map(per(result.acked)),
    bench_cpu_s: Math.round(result.benchCpuSeconds * 1000) / 1000,
    bench_cpu_us_per_event: plan.mix === null ? per(result.delivered)(result.benchCpuSeconds) : null,
  };
}

export function resultJson(plan: BenchPlan, result: BenchResult): Record<string, number | null | (number | null)[]> {
  const perSecond = result.seconds > 0 ? result.delivered / result.seconds : 0;
  return {
    events: plan.events,
    warmup: plan.warmup,
    delivered: result.delivered,
    seconds: Math.round(result.seconds * 1000) / 1000,
    // Two decimals under 100 ev/s: a paced run of alerts seconds apart delivers under 1.
    delivered_per_s: perSecond < 100 ? Math.round(perSecond * 100) / 100 : Math.round(perSecond),
    p50_ms: roundMs(result.latency.percentile(50)),
    p99_ms: roundMs(result.latency.percentile(99)),
    max_ms: roundMs(result.latency.max),
    ...cpuFigures(plan, result),
    rate_limited: result.rateLimited,
    widened: result.widened,
    slow_cutoffs: result.slowCutoffs,
    dropped_events: result.droppedEvents,
    subscriptions_widened: result.subscriptionsWidened,
  };
}

/** A list of per-replica figures as text: `r0 1.2, r1 1.3, r2 -` ("-": not reported). */
function perReplica(values: readonly (number | null)[]): string {
  return values.map((value, id) => `r${id} ${value === null ? "-" : value}`).join(", ");
}

function printResult(plan: BenchPlan, result: BenchResult, io: CommandIo, mix: MixFigures | null): void {
  const figures = resultJson(plan, result);
  if (plan.json) {
    io.out(JSON.stringify(mix === null ? figures : { ...figures, mix: mixJson(mix) }));
    return;
  }
  io.out(
    `channel ${plan.tag}: ${plan.events} events of ${plan.size} bytes, ${plan.publishers} publishers, ${plan.subscribers} subscribers${plan.rate === null ? "" : `, ${plan.rate} events/s offered`}`,
  );
  io.out(
    `acknowledged ${result.acked}, failed ${result.failed}, delivered ${result.delivered} of ${plan.events * plan.subscribers} in ${figures.seconds} s`,
  );
  io.out(`delivered ${figures.delivered_per_s} events/s`);
  io.out(`latency publish -> delivery: p50 ${figures.p50_ms} ms, p99 ${figures.p99_ms} ms, max ${figures.max_ms} ms`);
  const cpu = cpuFigures(plan, result);
  if (cpu.cpu_s.every((seconds) => seconds === null)) io.out("replica CPU: not reported by any replica (replicas older than this bench)");
  else {
    io.out(`replica CPU seconds during the run: ${perReplica(cpu.cpu_s)}`);
    io.out(`replica CPU µs per delivered event: ${perReplica(cpu.cpu_us_per_event)}`);
    if (plan.subscribers > 1) io.out(`replica CPU µs per published event: ${perReplica(cpu.cpu_us_per_published_event)}`);
  }
  io.out(
    `this bench's own CPU (its publishers, its subscribers and their checks and voting): ${cpu.bench_cpu_s} s` +
      (cpu.bench_cpu_us_per_event === null ? " with the --mix flood's" : `, ${cpu.bench_cpu_us_per_event} µs per delivered event`) +
      "; on a host shared with replicas it takes from theirs",
  );
  if (result.rateLimited > 0) io.out(rateLimitedLine(result.rateLimited));
  if (result.widened > 0) {
    io.out(
      `${result.widened} publish requests went to every replica after the f+1 replicas they were sent to refused, dropped or were slower than the hedge delay`,
    );
  }
  if (mix === null || plan.mix === null) return;
  const m = mixJson(mix);
  io.out(
    `saturated ${plan.mix.tag} (${plan.mix.publishers} publishers): ${m.low_solo_per_s} events/s acknowledged alone, ${m.low_mixed_per_s} during the run (${m.low_retained_pct}%), ${m.low_shed} OVERLOADED answers to its requests (asked again)`,
  );
}

/** Said in text and on standard error with --json: the figure is then the client's rate limit, not the broker's. */
function rateLimitedLine(refusals: number): string {
  return `RATE_LIMITED: replicas refused ${refusals} publish requests for the key's event rate (client_events_per_second_max, or its set-quota); they were retried, and delivered events/s shows that limit, not the broker's`;
}

function reportProblems(plan: BenchPlan, result: BenchResult, io: CommandIo, mix: MixFigures | null): number {
  let ok = true;
  if (plan.json && result.rateLimited > 0) io.err(`fitb bench: ${rateLimitedLine(result.rateLimited)}`);
  if (mix !== null && mix.lowFailed > 0) {
    io.err(`fitb bench: ${mix.lowFailed} events of ${plan.mix?.tag} failed (not shed); first error: ${mix.lowFirstError ?? "unknown"}`);
    ok = false;
  }
  if (result.failed > 0) {
    io.err(`fitb bench: ${result.failed} events failed to publish; first error: ${result.firstError ?? "unknown"}`);
    ok = false;
  }
  const expected = result.acked * plan.subscribers;
  if (result.delivered < expected) {
    io.err(`fitb bench: ${expected - result.delivered} acknowledged deliveries did not arrive (${result.delivered} of ${expected})`);
    ok = false;
  }
  if (result.slowCutoffs > 0 || result.droppedEvents > 0) {
    io.err(
      `fitb bench: the subscribers were cut off ${result.slowCutoffs} times by replicas for reading too slowly and dropped ${result.droppedEvents} events locally; ` +
        "a channel without total order does not re-send what a cut-off subscriber missed, so delivered events/s then understates the broker",
    );
  }
  return ok ? EXIT_OK : EXIT_FAILURE;
}
