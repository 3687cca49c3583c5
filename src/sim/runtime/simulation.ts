/**
 * The runtime under simulation: n replicas, each the real replica runtime below its
 * listeners (the OrderingDriver over the ordering core, the ChannelMachine, the storage in
 * SQLite over a simulated disk, state transfer), driven by a simulated clock and network
 * from one seed. Clients publish to channels of every CLASS (crash and byzantine, total
 * and none) after an admin created them and registered the publishers; replicas crash
 * (at the end of a turn, or in the middle of one before its commit) and restart by
 * recovering from what their disk kept; up to f replicas get disk faults (disk.ts): torn
 * writes, lost and failing fsyncs, bits flipped at rest. A replica that finds its data unusable stops
 * with a fatal error, and the simulated operator then wipes its data directory and starts
 * it again (it comes back by state transfer).
 *
 * Durability: each seed draws (or `fsync` forces) how commits become durable, inside the
 * commit or overlapped (disk.ts: the disk offers walSync, as the real one does, and an
 * fsync completes up to a drawn number of ticks after it starts, at a drawn place between
 * the deliveries of its tick). A crash is a power loss: in overlapped mode the writes no
 * completed fsync covered are dropped (or a prefix of them kept). A failing fsync is a
 * disk fault of its own.
 *
 * Checkers: every replica executes the same requests at every decided seq, with the same
 * result; at the end the live replicas have executed the same seq and hold the same
 * channel state (ChannelMachine.digest); every acknowledged event is there (total order:
 * in every replica's state; none: in the store of every replica without a disk fault that
 * acknowledged it); no unordered publish is acknowledged before the disk reported the
 * transaction holding it durable; a replica whose fsync failed stops in that turn; no
 * replica without a disk fault ever stops; and after the faults heal every request is
 * acknowledged and every replica catches up, within a bounded number of ticks.
 *
 * Randomness: stream 11 draws the scenario, 12 the network, 13 the disk faults, 14 the
 * clients, 15 the durability mode, the fsync delays' bound and the failing fsyncs, 16 each
 * fsync's delay and place, all from the seed (prng.ts), apart from the streams of the
 * ordering-core simulator, so a seed of either mode draws what it drew before.
 */
import type { ClusterConfig, ReplicaEntry } from "../../config/cluster.ts";
import { channelsConfigFrom, LIMIT_BOUNDS, RETENTION_BOUNDS } from "../../config/cluster.ts";
import { adminOp, buildRequest, pubOp } from "../../client/request.ts";
import { ChannelMachine } from "../../core/channels/machine.ts";
import type { ClientRequest } from "../../core/ordering/messages.ts";
import type { CoreCrypto } from "../../core/ordering/types.ts";
import { sign, verify } from "../../crypto/ed25519.ts";
import { bytesEqual, toHex } from "../../crypto/encoding.ts";
import { sha256, sha256Parts } from "../../crypto/hash.ts";
import { SigningKey } from "../../crypto/keys.ts";
import { FatalError } from "../../replica/fatal.ts";
import type { Log } from "../../replica/log.ts";
import { Metrics } from "../../replica/metrics.ts";
import { OrderingDriver, TICK_MS } from "../../replica/ordering-driver.ts";
import type { Clock, PeerTransport } from "../../replica/ports.ts";
import { admitRequest, bodyDigestOf, clockSkewProblem, stampOf } from "../../replica/requests.ts";
import { ReplicaStorage } from "../../replica/storage/index.ts";
import { STORE_FILE } from "../../replica/storage/store.ts";
import type { AdminCmd } from "../../../wire/schemas.ts";
import { decodeRequestBody } from "../../../wire/schemas.ts";
import { FRAME_BYTES_MAX } from "../../../wire/types.ts";
import { Prng } from "../prng.ts";
import { type FaultNote, type PendingSync, SimDisk } from "./disk.ts";

/** The wall clock of tick 0 (a fixed date, so timestamps are the same in every run). */
const EPOCH_MS = 1_760_000_000_000;
/** Ticks after heal within which every request must be acknowledged and every replica caught up. */
export const LIVENESS_TICKS = 2_500;
/** Ticks the run goes on once everything is done (stragglers must not break anything). */
const TAIL_TICKS = 30;
/** A request not acknowledged within this many ticks is sent again to every replica. */
const CLIENT_RETRY_TICKS = 60;
/** Ticks between a fatal stop of a replica with a damaged disk and the operator starting it on an empty directory. */
const OPERATOR_TICKS = 40;
/** The ordering core's checkpoint interval and log window here: short, so a replica down a while needs state transfer. */
const CHECKPOINT_INTERVAL = 8;
const LOG_WINDOW = 16;

export type DiskFaultKind = "torn" | "lost-fsync" | "bitflip" | "fsync-error";
export const DISK_FAULT_KINDS: readonly DiskFaultKind[] = ["torn", "lost-fsync", "bitflip", "fsync-error"];

/**
 * How commits become durable (disk.ts): `in-commit` (SQLite fsyncs inside the commit) or
 * `overlapped` (the disk offers walSync, and the group commit fsyncs off the loop while
 * later turns keep writing).
 */
export type FsyncMode = "in-commit" | "overlapped";
export const FSYNC_MODES: readonly FsyncMode[] = ["in-commit", "overlapped"];
/** The longest an overlapped fsync takes, in ticks, drawn per seed from these. */
const SYNC_DELAY_MAX: readonly number[] = [0, 1, 2, 4, 10];

/** The channels of the run: one per CLASS. */
const CHANNELS: readonly { tag: string; fault: "crash" | "byzantine"; order: "none" | "total" }[] = [
  { tag: "c.total", fault: "crash", order: "total" },
  { tag: "b.total", fault: "byzantine", order: "total" },
  { tag: "c.none", fault: "crash", order: "none" },
  { tag: "b.none", fault: "byzantine", order: "none" },
];

/** Signatures of peer messages: real ed25519 (verifications remembered across replicas), or keyed SHA-256 tags. */
export type RuntimeCrypto = "ed25519" | "fast";

/** Verifications remembered per run before the memo is cleared. */
const VERIFY_MEMO_MAX = 200_000;

export interface RuntimeOptions {
  /** Peer-message signatures (default ed25519; client request signatures are always ed25519). */
  crypto?: RuntimeCrypto;
  /** Collects a readable log of the run. */
  trace?: boolean;
  /** Only these disk faults (default: all of them). */
  diskFaults?: readonly DiskFaultKind[];
  /** Force the number of replicas with disk faults (default: drawn, 0..f). */
  faultyDisks?: number;
  /** How commits become durable (default: drawn per seed, half each). */
  fsync?: FsyncMode;
  /**
   * Targeted (overlapped): each planned crash waits for its replica to have an
   * acknowledgment out whose write is not durable yet (which a correct group commit never
   * allows), or else an fsync in flight; the crash keeps none of the writes no completed
   * fsync covered.
   */
  crashInFlight?: boolean;
}

/** The longest crashInFlight postpones a planned crash, in ticks; and how long it waits for an acknowledgment not durable yet. */
const CRASH_IN_FLIGHT_WAIT_TICKS = 80;
const CRASH_EXPOSED_WAIT_TICKS = 40;
/** crashInFlight: the most crashes a run adds at moments an acknowledgment is out before its write is durable. */
const EXPOSED_CRASHES_MAX = 4;

export interface RuntimeFigures {
  crashes: number;
  midTurnCrashes: number;
  torn: number;
  lostFsync: number;
  bitflipFile: number;
  bitflipRow: number;
  /** Rows found damaged by their checksum (at open or at read). */
  corruptRows: number;
  /** Starts that found the database unreadable and moved it aside. */
  quarantined: number;
  /** Replicas stopped by a fatal error (at start or while running), then wiped by the operator. */
  fatalStops: number;
  snapshotsInstalled: number;
  decided: number;
  acked: number;
  commits: number;
  /** 1 if the run used overlapped fsyncs (summed over seeds: how many did). */
  overlapped: number;
  /** Overlapped fsyncs started, completed, and failed by the failing-fsync fault. */
  syncs: number;
  syncsCompleted: number;
  syncFailures: number;
  /** Commits failed by the failing-fsync fault (in-commit mode). */
  commitFailures: number;
  /** Transactions written while an overlapped fsync of the same replica was in flight. */
  writesDuringSync: number;
  /** Effects (peer messages sent, decisions executed, unordered publishes acknowledged) that ran only once an fsync in flight completed. */
  effectsAfterSync: number;
  /** Crashes with an overlapped fsync in flight; transactions written and not covered at a crash, and those that survived it. */
  crashesSyncInFlight: number;
  unsyncedAtCrash: number;
  unsyncedKept: number;
  /**
   * Decisions a replica executed whose `decided` record a crash then lost (it executes
   * them again after the restart): execution does not wait for that record's fsync (core
   * PROTOCOL.md §2, "Decided records do not hold back execution").
   */
  executedThenLost: number;
}

export interface RuntimeSeedResult {
  seed: number;
  summary: string;
  violations: string[];
  ticks: number;
  figures: RuntimeFigures;
  trace: string[];
}

interface PlannedCrash {
  at: number;
  /** `at` as drawn (crashInFlight may postpone `at`). */
  plannedAt: number;
  restartAt: number;
  midTurn: boolean;
  fault: DiskFaultKind | null;
  /** lost-fsync: when the disk starts lying; torn: when the tear is armed. */
  faultAt: number;
}

interface Scenario {
  seed: number;
  n: number;
  f: number;
  healAt: number;
  issueUntil: number;
  dropRate: number;
  dupRate: number;
  maxDelayPre: number;
  diskFaulty: Set<number>;
  crashes: PlannedCrash[][];
  publishers: number;
  eventsMax: number;
  fsync: FsyncMode;
  syncDelayMax: number;
}

function drawScenario(seed: number, options: RuntimeOptions): Scenario {
  const rng = new Prng(seed, 11);
  // Stream 15: what came with the overlapped fsync, so the draws of stream 11 stay as they were.
  const syncRng = new Prng(seed, 15);
  const fsync = options.fsync ?? (syncRng.chance(0.5) ? "overlapped" : "in-commit");
  const syncDelayMax = syncRng.pick(SYNC_DELAY_MAX);
  const earlierKinds = kindsBefore(options.diskFaults ?? DISK_FAULT_KINDS);
  const n = rng.chance(0.93) ? 4 : 7;
  const f = Math.floor((n - 1) / 3);
  const healAt = rng.int(150, 400);
  const kinds = options.diskFaults ?? DISK_FAULT_KINDS;
  const faultyCount = Math.min(f, options.faultyDisks ?? (rng.chance(0.8) ? f : rng.int(0, f)));
  const diskFaulty = new Set(rng.shuffle([...Array(n).keys()]).slice(0, faultyCount));
  const crashes: PlannedCrash[][] = [];
  for (let id = 0; id < n; id++) {
    const list: PlannedCrash[] = [];
    const count = diskFaulty.has(id) ? rng.int(1, 2) : rng.chance(0.5) ? rng.int(1, 2) : 0;
    let from = 20;
    for (let i = 0; i < count && from < healAt - 40; i++) {
      const at = rng.int(from, Math.min(healAt - 30, from + 250));
      const restartAt = Math.min(healAt - 1, at + (rng.chance(0.3) ? rng.int(100, 300) : rng.int(3, 60)));
      let fault: DiskFaultKind | null = null;
      if (diskFaulty.has(id) && kinds.length > 0) {
        fault = earlierKinds.length > 0 ? rng.pick(earlierKinds) : "fsync-error";
        if (kinds.includes("fsync-error") && earlierKinds.length > 0 && syncRng.chance(0.25)) fault = "fsync-error";
      }
      list.push({ at, plannedAt: at, restartAt, midTurn: rng.chance(0.5), fault, faultAt: Math.max(1, at - rng.int(1, 60)) });
      from = restartAt + 5;
    }
    crashes.push(list);
  }
  return {
    seed,
    n,
    f,
    healAt,
    issueUntil: healAt + rng.int(20, 80),
    dropRate: rng.pick([0, 0, 0.02, 0.1]),
    dupRate: rng.pick([0, 0.02]),
    maxDelayPre: rng.int(1, 20),
    diskFaulty,
    crashes,
    publishers: rng.int(1, 2),
    eventsMax: rng.int(1, 4),
    fsync,
    syncDelayMax,
  };
}

/** The fault kinds drawn from stream 11, as before the failing fsync was added (it is drawn from stream 15). */
function kindsBefore(kinds: readonly DiskFaultKind[]): DiskFaultKind[] {
  return kinds.filter((k) => k !== "fsync-error");
}

/** A message in flight: bytes between two replicas. */
interface Delivery {
  from: number;
  to: number;
  bytes: Uint8Array;
}

class SimNetwork {
  private readonly buckets = new Map<number, Delivery[]>();
  sent = 0;

  constructor(
    private readonly scenario: Scenario,
    private readonly rng: Prng,
  ) {}

  send(now: number, d: Delivery): void {
    this.sent++;
    const healed = now >= this.scenario.healAt;
    if (!healed && this.rng.chance(this.scenario.dropRate)) return;
    this.enqueue(now + this.delay(healed), d);
    if (!healed && this.rng.chance(this.scenario.dupRate)) this.enqueue(now + this.delay(healed), d);
  }

  private delay(healed: boolean): number {
    if (healed) return this.rng.int(1, 3);
    return this.rng.chance(0.8) ? this.rng.int(1, Math.min(4, this.scenario.maxDelayPre)) : this.rng.int(1, this.scenario.maxDelayPre);
  }

  private enqueue(at: number, d: Delivery): void {
    const bucket = this.buckets.get(at);
    if (bucket === undefined) this.buckets.set(at, [d]);
    else bucket.push(d);
  }

  take(now: number): Delivery[] {
    const bucket = this.buckets.get(now);
    if (bucket === undefined) return [];
    this.buckets.delete(now);
    return this.rng.shuffle(bucket);
  }
}

interface Timer {
  every: number;
  next: number;
  run: () => void;
  live: boolean;
}

/** One replica: its identity, its disk file, and the runtime of its current life (null while down). */
class SimReplica {
  life = 0;
  driver: OrderingDriver | null = null;
  machine: ChannelMachine | null = null;
  storage: ReplicaStorage | null = null;
  metrics: Metrics | null = null;
  readonly turn: (() => void)[] = [];
  timers: Timer[] = [];
  /** Down until this tick (a crash or a fatal stop); null while up. */
  downUntil: number | null = 0;
  /** Stopped by a fatal error: the operator wipes the directory before the next start. */
  wipe = false;
  /** Crash at the end of the next call into the runtime, before its commit, and restart at this tick. */
  midTurnRestartAt: number | null = null;
  /** The highest transaction of its file an acknowledgment of this life depended on. */
  ackedTransaction = 0;
  /** The results this replica gave, by request (space#seq). */
  readonly results = new Map<string, string>();
  /** The highest seq this life executed, and the one the last crash ended at. */
  executedMax = 0;
  executedAtCrash = 0;

  constructor(
    readonly id: number,
    readonly key: SigningKey,
    readonly diskFaulty: boolean,
  ) {}

  get dir(): string {
    return `/sim/replica-${this.id}`;
  }

  get file(): string {
    return `${this.dir}/${STORE_FILE}`;
  }

  get up(): boolean {
    return this.driver !== null;
  }
}

interface OpenRequest {
  key: string;
  req: ClientRequest;
  ordered: boolean;
  fault: "crash" | "byzantine" | null;
  tag: string | null;
  publisherHex: string;
  pubSeq: number;
  issuedAt: number;
  sentAt: number;
  ackedAt: number | null;
  /** Replicas that answered, by the result they gave (ordered) or that stored it durably (unordered). */
  answers: Map<number, string>;
  /** The signature check, done once (each replica would do it on its own verification threads). */
  verified: { stamp: number; bodyDigest: Uint8Array } | null;
}

class RuntimeSimulation {
  readonly scenario: Scenario;
  private readonly netRng: Prng;
  private readonly diskRng: Prng;
  private readonly clientRng: Prng;
  /** Stream 16: the overlapped fsyncs' delays and where between the tick's turns each completes. */
  private readonly syncRng: Prng;
  private readonly net: SimNetwork;
  readonly disk: SimDisk;
  /** The replica whose turn runs because an fsync of it completed (effects then counted as waiting for it). */
  private releasing: number | null = null;
  readonly replicas: SimReplica[] = [];
  readonly config: ClusterConfig;
  private readonly adminKey: SigningKey;
  private readonly publisherKeys: SigningKey[] = [];
  readonly violations: string[] = [];
  readonly trace: string[] = [];
  now = 0;
  private readonly requests: OpenRequest[] = [];
  /** Decided seq -> digest of what was executed there (the first replica to execute it). */
  private readonly executedAt = new Map<number, string>();
  /** Per publisher and channel: the next publisher seq, and whether a request is out. */
  private readonly streams: { key: SigningKey; tag: string; next: number; busy: boolean; nextAt: number }[] = [];
  private adminDone = false;
  readonly figures: RuntimeFigures = {
    crashes: 0,
    midTurnCrashes: 0,
    torn: 0,
    lostFsync: 0,
    bitflipFile: 0,
    bitflipRow: 0,
    corruptRows: 0,
    quarantined: 0,
    fatalStops: 0,
    snapshotsInstalled: 0,
    decided: 0,
    acked: 0,
    commits: 0,
    overlapped: 0,
    syncs: 0,
    syncsCompleted: 0,
    syncFailures: 0,
    commitFailures: 0,
    writesDuringSync: 0,
    effectsAfterSync: 0,
    crashesSyncInFlight: 0,
    unsyncedAtCrash: 0,
    unsyncedKept: 0,
    executedThenLost: 0,
  };

  constructor(
    seed: number,
    private readonly options: RuntimeOptions,
  ) {
    this.scenario = drawScenario(seed, options);
    const s = this.scenario;
    this.netRng = new Prng(seed, 12);
    this.diskRng = new Prng(seed, 13);
    this.clientRng = new Prng(seed, 14);
    this.syncRng = new Prng(seed, 16);
    this.disk = new SimDisk(
      s.fsync === "overlapped"
        ? { rng: this.syncRng, delayMax: s.syncDelayMax, now: () => this.now, keepUnsynced: options.crashInFlight !== true }
        : null,
    );
    if (s.fsync === "overlapped") this.figures.overlapped = 1;
    this.net = new SimNetwork(s, this.netRng);
    const keyRng = this.clientRng.fork(1);
    const keys = [...Array(s.n)].map(() => SigningKey.fromSeed(keyRng.bytes(32)));
    this.adminKey = SigningKey.fromSeed(keyRng.bytes(32));
    for (let p = 0; p < s.publishers; p++) this.publisherKeys.push(SigningKey.fromSeed(keyRng.bytes(32)));
    const replicas: ReplicaEntry[] = keys.map((key, id) => ({
      id,
      host: `10.0.0.${id + 1}`,
      hosts: [],
      port: 7000,
      peerPort: null,
      publicKey: key.publicKey,
      publicKeyText: "",
      keyFile: "",
      dataDir: `/sim/replica-${id}`,
    }));
    const limit = <K extends keyof typeof LIMIT_BOUNDS>(k: K): number => LIMIT_BOUNDS[k].defaultValue;
    this.config = {
      name: `simrt-${seed}`,
      f: s.f,
      n: s.n,
      replicas,
      epoch: 0,
      firstGroupDigest: null,
      adminKeys: [this.adminKey.publicKey],
      clientKeys: [],
      limits: {
        frameBytesMax: limit("frame_bytes_max"),
        eventBytesMax: limit("event_bytes_max"),
        batchEventsMax: limit("batch_events_max"),
        clientInflightRequestsMax: limit("client_inflight_requests_max"),
        connectionSubscriptionsMax: limit("connection_subscriptions_max"),
        clientEventsPerSecondMax: limit("client_events_per_second_max"),
        clientBurstEventsMax: limit("client_burst_events_max"),
      },
      retention: {
        eventsMax: RETENTION_BOUNDS.events_max.defaultValue,
        bytesMax: RETENTION_BOUNDS.bytes_max.defaultValue,
        ageSecondsMax: RETENTION_BOUNDS.age_seconds_max.defaultValue,
      },
      baseDir: "/sim",
    };
    for (let id = 0; id < s.n; id++) this.replicas.push(new SimReplica(id, keys[id] as SigningKey, s.diskFaulty.has(id)));
    for (const key of this.publisherKeys)
      for (const ch of CHANNELS) this.streams.push({ key, tag: ch.tag, next: 1, busy: false, nextAt: 0 });
  }

  log(line: string): void {
    if (this.options.trace) this.trace.push(`${this.now}: ${line}`);
  }

  violation(text: string): void {
    this.violations.push(`tick ${this.now}: ${text}`);
    this.log(`VIOLATION ${text}`);
  }

  // -------------------------------------------------------------------------------------
  // Replica lifecycle
  // -------------------------------------------------------------------------------------

  private replicaLog(r: SimReplica): Log {
    const write = (level: string) => (msg: string, fields?: Record<string, unknown>) => {
      if (msg === "snapshot installed") this.figures.snapshotsInstalled++;
      if (level !== "debug" && level !== "info") this.log(`replica ${r.id} ${level}: ${msg} ${JSON.stringify(fields ?? {}, bigintSafe)}`);
      else if (msg === "snapshot installed" || msg === "recovered from the data directory")
        this.log(`replica ${r.id}: ${msg} ${JSON.stringify(fields ?? {}, bigintSafe)}`);
    };
    return { debug: () => {}, info: write("info"), warn: write("warn"), error: write("error") };
  }

  private clockOf(r: SimReplica, life: number): Clock {
    return {
      now: () => EPOCH_MS + this.now * TICK_MS,
      monotonic: () => this.now * TICK_MS,
      every: (ms, run) => {
        const every = Math.max(1, Math.round(ms / TICK_MS));
        const timer: Timer = { every, next: this.now + every, run, live: true };
        if (r.life === life) r.timers.push(timer);
        return {
          cancel: () => {
            timer.live = false;
          },
        };
      },
      afterTurn: (run) => {
        if (r.life === life) r.turn.push(run);
      },
    };
  }

  private transportOf(r: SimReplica, life: number): PeerTransport {
    const up = (): boolean => r.life === life && r.downUntil === null;
    return {
      send: (to, bytes) => {
        if (up() && to !== r.id) {
          this.countEffect(r);
          this.net.send(this.now, { from: r.id, to, bytes });
        }
        return true;
      },
      broadcast: (bytes) => {
        if (!up()) return;
        this.countEffect(r);
        for (let to = 0; to < this.scenario.n; to++) if (to !== r.id) this.net.send(this.now, { from: r.id, to, bytes });
      },
    };
  }

  private start(r: SimReplica): void {
    r.life++;
    const life = r.life;
    r.turn.length = 0;
    r.timers = [];
    r.midTurnRestartAt = null;
    r.ackedTransaction = 0;
    if (r.wipe) {
      this.disk.removeTree(r.dir);
      this.log(`operator wipes replica ${r.id}'s data directory`);
      r.wipe = false;
      r.executedAtCrash = 0;
    }
    const log = this.replicaLog(r);
    const metrics = new Metrics();
    const machine = new ChannelMachine({ hash: sha256, config: channelsConfigFrom(this.config.limits, this.config.retention) });
    r.downUntil = null;
    this.log(`start replica ${r.id} (life ${life})`);
    try {
      const storage = ReplicaStorage.open({
        dir: r.dir,
        sync: "full",
        cluster: this.config.name,
        replica: r.id,
        log,
        metrics,
        disk: this.disk,
        afterTurn: (run) => {
          if (r.life === life) r.turn.push(run);
        },
        now: () => EPOCH_MS + this.now * TICK_MS,
      });
      r.storage = storage;
      if (storage.quarantined) this.figures.quarantined++;
      r.metrics = metrics;
      r.machine = machine;
      const driver = new OrderingDriver({
        config: this.config,
        id: r.id,
        key: r.key,
        log,
        metrics,
        mesh: this.transportOf(r, life),
        clock: this.clockOf(r, life),
        peerSignatures: this.peerSignatures(r),
        coreParameters: { checkpointInterval: CHECKPOINT_INTERVAL, logWindow: LOG_WINDOW },
        machine,
        storage,
        onDecided: (requests, seq) => this.execute(r, requests, seq),
        onResendReply: () => {},
        onRefused: () => {},
      });
      r.driver = driver;
      // What the crash before this start lost of what that life had executed.
      const recovered = driver.status().lastExecuted;
      if (r.executedAtCrash > recovered) this.figures.executedThenLost += r.executedAtCrash - recovered;
      r.executedAtCrash = 0;
      r.executedMax = recovered;
      driver.start();
      this.endTurn(r);
    } catch (error) {
      this.stopped(r, error, "start");
    }
  }

  /** The replica's process is gone: its runtime objects are dropped and the disk keeps what was durable. */
  private crash(r: SimReplica, restartAt: number): void {
    this.figures.crashes++;
    r.executedAtCrash = r.executedMax;
    this.figures.corruptRows += r.metrics?.get("storage_corrupt_rows_total") ?? 0;
    r.driver?.stop();
    r.driver = null;
    r.machine = null;
    r.storage = null;
    r.metrics = null;
    r.turn.length = 0;
    r.timers = [];
    r.life++;
    r.downUntil = restartAt;
    const note = this.disk.crash(r.file, this.diskRng);
    this.noteFault(r, note);
    if ((note.syncsInFlight ?? 0) > 0) this.figures.crashesSyncInFlight++;
    this.figures.unsyncedAtCrash += note.unsynced ?? 0;
    this.figures.unsyncedKept += note.unsyncedKept ?? 0;
    const unsynced =
      note.unsynced === undefined
        ? ""
        : `, ${note.unsynced} transactions unsynced (${note.unsyncedKept ?? 0} kept), ${note.syncsInFlight ?? 0} fsyncs in flight`;
    this.log(`crash replica ${r.id}${note.kind === "none" ? "" : ` (${note.kind}: ${note.detail})`}${unsynced}`);
  }

  /** An effect of replica `r` ran: counted when it ran because an fsync in flight completed. */
  private countEffect(r: SimReplica): void {
    if (this.releasing === r.id) this.figures.effectsAfterSync++;
  }

  /**
   * An overlapped fsync completes between two turns of its replica: the group commit's
   * callback runs, and the effects it made durable run in the turn that follows.
   */
  private completeSync(p: PendingSync): void {
    // Its replica crashed earlier in this tick: the fsync went down with it.
    if (!this.disk.inFlight(p)) return;
    const r = this.replicas.find((x) => x.file === p.path);
    if (r === undefined || !r.up) throw new Error(`an fsync completed for ${p.path}, whose replica is down`);
    this.releasing = r.id;
    try {
      this.call(r, "an fsync completion", () => this.disk.complete(p));
    } finally {
      this.releasing = null;
    }
  }

  /** A failed fsync (or commit) must stop its replica in the turn it is reported. */
  private checkStoppedAfterFailure(r: SimReplica, life: number): void {
    const failures = this.disk.syncs.failed + this.disk.syncs.commitsFailed;
    if (failures === this.failuresSeen) return;
    this.failuresSeen = failures;
    this.log(`replica ${r.id}'s fsync failed`);
    if (r.life === life && r.up) this.violation(`replica ${r.id} kept running after its fsync failed`);
  }

  private failuresSeen = 0;

  private noteFault(r: SimReplica, note: FaultNote): void {
    if (note.kind !== "none" && !r.diskFaulty) this.violation(`a disk fault hit replica ${r.id}, which is not one of the faulty`);
    if (note.kind === "torn") this.figures.torn++;
    if (note.kind === "lost-fsync") this.figures.lostFsync++;
    if (note.kind === "bitflip-file") this.figures.bitflipFile++;
    if (note.kind === "bitflip-row") this.figures.bitflipRow++;
  }

  /** The runtime threw: a FatalError (it refuses to go on) or anything else (a bug). */
  private stopped(r: SimReplica, error: unknown, during: string): void {
    const fatal = error instanceof FatalError;
    const text = `${fatal ? `fatal error (exit ${(error as FatalError).exitCode})` : "error"} during ${during}: ${(error as Error).message}`;
    this.log(`replica ${r.id} stopped: ${text}`);
    if (!r.diskFaulty) this.violation(`replica ${r.id}, whose disk is sound, stopped: ${text}`);
    else if (!fatal && !isStorageError(error)) this.violation(`replica ${r.id} failed on a damaged disk with no clear error: ${text}`);
    this.figures.fatalStops++;
    this.crash(r, this.now + OPERATOR_TICKS);
    this.figures.crashes--;
    r.wipe = true;
  }

  /** Runs what the runtime left for the end of the turn (the group commit and its effects). */
  private endTurn(r: SimReplica): void {
    if (r.midTurnRestartAt !== null) {
      // The process dies before the end-of-turn commit: what was staged never reaches the disk.
      this.figures.midTurnCrashes++;
      this.crash(r, r.midTurnRestartAt);
      r.midTurnRestartAt = null;
      return;
    }
    const life = r.life;
    try {
      while (r.turn.length > 0 && r.life === life) (r.turn.shift() as () => void)();
    } catch (error) {
      if (r.life === life) this.stopped(r, error, "a turn");
    }
  }

  /** Calls into a live replica, then ends its turn. */
  private call(r: SimReplica, what: string, fn: () => void): void {
    if (!r.up) return;
    const life = r.life;
    try {
      fn();
    } catch (error) {
      if (r.life === life) this.stopped(r, error, what);
      this.checkStoppedAfterFailure(r, life);
      return;
    }
    if (r.life === life) this.endTurn(r);
    this.checkStoppedAfterFailure(r, life);
  }

  // -------------------------------------------------------------------------------------
  // Execution (as the replica executes decided requests) and the agreement checker
  // -------------------------------------------------------------------------------------

  /** Returns clients' first requests refused, as the replica does (ordering-driver.ts RefusedFirstRequests). */
  private execute(r: SimReplica, requests: readonly ClientRequest[], seq: number): number {
    let refusedFirst = 0;
    const digest = toHex(sha256Parts(requests.flatMap((q) => [new TextEncoder().encode(`${q.client}#${q.seq}#${q.span}`), q.body, q.sig])));
    this.countEffect(r);
    const seen = this.executedAt.get(seq);
    if (seen === undefined) this.executedAt.set(seq, digest);
    else if (seen !== digest) this.violation(`replica ${r.id} executed other requests at seq ${seq}`);
    if (seq > this.figures.decided) this.figures.decided = seq;
    if (seq > r.executedMax) r.executedMax = seq;
    const m = r.machine;
    if (m === null) throw new Error("execution without a machine");
    for (const req of requests) {
      const decoded = decodeRequestBody(req.body);
      if (!decoded.ok) throw new Error(`decided request does not decode: ${decoded.error.reason}`);
      const request = decoded.request;
      let result: string;
      if (request.op.t === "admin") {
        if (toHex(request.client) !== toHex(this.adminKey.publicKey)) result = "UNAUTHORIZED";
        else {
          const applied = m.applyAdmin(request.op.cmd);
          result = applied.ok ? `ok@${seq}` : `refused ${applied.code}`;
        }
      } else {
        const outcome = m.applyOrderedPublish({ body: req.body, sig: req.sig }, request, request.ts);
        result = outcome.result.ok ? `ok ${outcome.result.firstSeq}` : `refused ${outcome.result.code}`;
      }
      const key = `${req.client}#${req.seq}`;
      const before = r.results.get(key);
      if (before !== undefined && before !== result) this.violation(`replica ${r.id} executed ${key} again with another result`);
      r.results.set(key, result);
      this.answer(r.id, key, result);
      if (!result.startsWith("ok") && req.seq === 1) refusedFirst++;
    }
    return refusedFirst;
  }

  private answer(replica: number, key: string, result: string): void {
    const open = this.byKey.get(key);
    if (open === undefined || open.ackedAt !== null) return;
    open.answers.set(replica, result);
    const needed = !open.ordered && open.fault === "byzantine" ? 2 * this.scenario.f + 1 : this.scenario.f + 1;
    const counts = new Map<string, number>();
    for (const v of open.answers.values()) counts.set(v, (counts.get(v) ?? 0) + 1);
    for (const [value, count] of counts) {
      if (count < needed) continue;
      open.ackedAt = this.now;
      this.figures.acked++;
      if (open.ordered && open.tag !== null && !value.startsWith("ok")) this.violation(`publish ${key} was refused: ${value}`);
      if (open.tag === null) this.adminAcked();
      else this.streamOf(open.publisherHex, open.tag).busy = false;
      this.log(`acknowledged ${key}: ${value}`);
      return;
    }
  }

  private readonly byKey = new Map<string, OpenRequest>();
  private readonly verifyMemo = new Map<string, boolean>();

  /**
   * The peer signatures of replica `r`. ed25519: the replica's own key, and each
   * verification done once per run (a pure function of key, bytes and signature; a
   * broadcast is otherwise verified by every receiver). fast: SHA-256 over a secret of
   * the signer and the bytes, 64 bytes like a signature.
   */
  private peerSignatures(r: SimReplica): Pick<CoreCrypto, "sign" | "verify"> {
    if ((this.options.crypto ?? "ed25519") === "fast") {
      const tag = (id: number, bytes: Uint8Array): Uint8Array => {
        const secret = (this.replicas[id] as SimReplica).key.publicKey;
        const a = sha256Parts([secret, bytes]);
        const out = new Uint8Array(64);
        out.set(a);
        out.set(sha256(a), 32);
        return out;
      };
      return {
        sign: (bytes) => tag(r.id, bytes),
        verify: (id, bytes, sig) => id >= 0 && id < this.scenario.n && bytesEqual(tag(id, bytes), sig),
      };
    }
    return {
      sign: (bytes) => sign(r.key, bytes),
      verify: (id, bytes, sig) => {
        const key = (this.replicas[id] as SimReplica | undefined)?.key.publicKey;
        if (key === undefined) return false;
        const memoKey = `${id}:${toHex(sig)}:${toHex(sha256(bytes))}`;
        let ok = this.verifyMemo.get(memoKey);
        if (ok === undefined) {
          ok = verify(key, bytes, sig);
          if (this.verifyMemo.size >= VERIFY_MEMO_MAX) this.verifyMemo.clear();
          this.verifyMemo.set(memoKey, ok);
        }
        return ok;
      },
    };
  }

  // -------------------------------------------------------------------------------------
  // Clients
  // -------------------------------------------------------------------------------------

  private build(key: SigningKey, space: string, seq: number, op: Parameters<typeof buildRequest>[1]["op"], span: number): ClientRequest {
    const built = buildRequest(key, { seq, ts: EPOCH_MS + this.now * TICK_MS, op }, FRAME_BYTES_MAX);
    return { client: `${toHex(key.publicKey)}:${space}`, seq, span, body: built.body, sig: built.sig };
  }

  private issueAdmin(): void {
    const cmds: AdminCmd[] = [];
    for (const ch of CHANNELS)
      cmds.push({ t: "create-channel", tag: ch.tag, fault: ch.fault, order: ch.order, priority: "normal", public: true });
    for (const key of this.publisherKeys)
      for (const ch of CHANNELS) cmds.push({ t: "register", tag: ch.tag, role: "publisher", key: key.publicKey });
    cmds.forEach((cmd, i) => {
      const req = this.build(this.adminKey, "!admin", i + 1, adminOp(cmd), 1);
      this.track({ req, ordered: true, fault: null, tag: null, publisherHex: toHex(this.adminKey.publicKey), pubSeq: i + 1 });
    });
  }

  private adminAcked(): void {
    if (this.adminDone || this.requests.some((q) => q.tag === null && q.ackedAt === null)) return;
    this.adminDone = true;
    this.log("channels created and publishers registered");
  }

  private streamOf(publisherHex: string, tag: string) {
    return this.streams.find((s) => s.tag === tag && toHex(s.key.publicKey) === publisherHex) as RuntimeSimulation["streams"][number];
  }

  private issuePublishes(): void {
    if (!this.adminDone || this.now >= this.scenario.issueUntil) return;
    for (const stream of this.streams) {
      if (stream.busy || this.now < stream.nextAt) continue;
      const ch = CHANNELS.find((c) => c.tag === stream.tag) as (typeof CHANNELS)[number];
      const span = this.clientRng.int(1, this.scenario.eventsMax);
      const events = [...Array(span)].map((_, i) => new TextEncoder().encode(`${stream.tag}/${stream.next + i}`));
      const req = this.build(stream.key, stream.tag, stream.next, pubOp(stream.tag, events), span);
      this.track({
        req,
        ordered: ch.order === "total",
        fault: ch.fault,
        tag: stream.tag,
        publisherHex: toHex(stream.key.publicKey),
        pubSeq: stream.next,
      });
      stream.next += span;
      stream.busy = true;
      stream.nextAt = this.now + this.clientRng.int(5, 40);
    }
  }

  private track(q: Omit<OpenRequest, "key" | "issuedAt" | "sentAt" | "ackedAt" | "answers" | "verified">): void {
    const open: OpenRequest = {
      ...q,
      key: `${q.req.client}#${q.req.seq}`,
      issuedAt: this.now,
      sentAt: this.now,
      ackedAt: null,
      answers: new Map(),
      verified: null,
    };
    this.requests.push(open);
    this.byKey.set(open.key, open);
    this.sendRequest(open);
  }

  /** The client sends a request to every replica (the ones down miss it). */
  private sendRequest(q: OpenRequest): void {
    q.sentAt = this.now;
    for (const r of this.replicas) {
      if (!r.up) continue;
      // As a replica does: the signature is checked once on arrival (verify-pool.ts), and
      // the driver told, so the core does not check it again.
      if (q.ordered) this.call(r, "a request", () => r.driver?.submit(q.req, this.verifiedOnce(q)));
      else this.call(r, "an unordered publish", () => this.storeUnordered(r, q));
    }
  }

  private verifiedOnce(q: OpenRequest): { stamp: number; bodyDigest: Uint8Array } {
    if (q.verified === null) {
      const admitted = admitRequest({ body: q.req.body, sig: q.req.sig });
      if (!admitted.ok) throw new Error(`the simulated client's request was refused: ${admitted.reason}`);
      q.verified = { stamp: stampOf(admitted.request), bodyDigest: sha256(q.req.body) };
    }
    return q.verified;
  }

  /** An unordered publish at one replica, as the replica takes it (replica.ts publishUnordered). */
  private storeUnordered(r: SimReplica, q: OpenRequest): void {
    const machine = r.machine as ChannelMachine;
    const storage = r.storage as ReplicaStorage;
    const signed = { body: q.req.body, sig: q.req.sig };
    const admitted = admitRequest(signed);
    if (!admitted.ok) throw new Error(`the simulated client's request was refused: ${admitted.reason}`);
    const nowMs = EPOCH_MS + this.now * TICK_MS;
    if (clockSkewProblem(admitted.request, nowMs) !== null) return;
    const outcome = machine.acceptUnorderedPublish(signed, admitted.request, nowMs);
    if (!outcome.result.ok) {
      this.log(`replica ${r.id} refused ${q.key}: ${outcome.result.code}`);
      return;
    }
    const generation = machine.channelInfo(outcome.result.tag)?.generation ?? 0;
    if (outcome.stored !== null)
      storage.recordUnordered(outcome.result.tag, generation, outcome.stored.tsMs, signed.body, signed.sig, bodyDigestOf(signed.body));
    if (outcome.trimmed !== null)
      storage.trimUnordered(outcome.result.tag, generation, outcome.trimmed.batchesRemoved, outcome.trimmed.floors);
    const life = r.life;
    // The rows staged here (if any: a publish already stored stages nothing) go to disk in
    // the next transaction of this file: the acknowledgment may go out only once the disk
    // has reported that one durable.
    const transaction = outcome.stored === null && outcome.trimmed === null ? 0 : this.disk.writtenCount(r.file) + 1;
    storage.afterDurable(() => {
      if (r.life !== life) return;
      this.countEffect(r);
      r.ackedTransaction = Math.max(r.ackedTransaction, transaction);
      const durable = this.disk.reportedDurable(r.file);
      if (durable < transaction)
        this.violation(
          `replica ${r.id} acknowledged ${q.key} before its write was durable (transaction ${transaction}, durable up to ${durable})`,
        );
      this.answer(r.id, q.key, "stored");
    });
  }

  private retries(): void {
    for (const q of this.requests) {
      if (q.ackedAt === null && this.now - q.sentAt >= CLIENT_RETRY_TICKS) this.sendRequest(q);
    }
  }

  // -------------------------------------------------------------------------------------
  // The run
  // -------------------------------------------------------------------------------------

  run(): number {
    const s = this.scenario;
    const bound = s.healAt + LIVENESS_TICKS;
    for (const r of this.replicas) this.start(r);
    this.issueAdmin();
    let doneAt: number | null = null;
    for (this.now = 1; this.now <= bound; this.now++) {
      this.faults();
      // Overlapped fsyncs due now complete between the deliveries, each at a drawn place.
      const deliveries = this.net.take(this.now);
      const completions = this.disk.due(this.now).map((p) => ({ p, before: this.syncRng.int(0, deliveries.length) }));
      for (let i = 0; i <= deliveries.length; i++) {
        for (const c of completions) if (c.before === i) this.completeSync(c.p);
        const d = deliveries[i];
        if (d === undefined) continue;
        const r = this.replicas[d.to] as SimReplica;
        // Each replica keeps its one key: the link is opened with it.
        const linkKey = (this.replicas[d.from] as SimReplica).key.publicKey;
        this.call(r, "a peer message", () => r.driver?.onPeerMessage(d.from, d.bytes, linkKey));
      }
      this.issuePublishes();
      this.retries();
      for (const r of this.replicas) {
        if (!r.up) continue;
        for (const timer of [...r.timers]) {
          if (!timer.live || this.now < timer.next || !r.up) continue;
          timer.next = this.now + timer.every;
          this.call(r, "a timer", timer.run);
        }
        if (r.up && r.midTurnRestartAt !== null) this.endTurn(r);
      }
      // Those started this tick that take no tick complete at its end.
      for (const p of this.disk.due(this.now)) this.completeSync(p);
      if (doneAt === null && this.done()) doneAt = this.now;
      if (doneAt !== null && this.now >= doneAt + TAIL_TICKS) break;
    }
    const ticks = Math.min(this.now, bound);
    this.finalChecks(doneAt);
    for (const r of this.replicas) this.figures.corruptRows += r.metrics?.get("storage_corrupt_rows_total") ?? 0;
    this.figures.commits = this.disk.commits;
    this.figures.syncs = this.disk.syncs.started;
    this.figures.syncsCompleted = this.disk.syncs.completed;
    this.figures.syncFailures = this.disk.syncs.failed;
    this.figures.commitFailures = this.disk.syncs.commitsFailed;
    this.figures.writesDuringSync = this.disk.syncs.writesDuringSync;
    this.disk.closeAll();
    return ticks;
  }

  private faults(): void {
    const s = this.scenario;
    for (const r of this.replicas) {
      for (const c of s.crashes[r.id] as PlannedCrash[]) {
        if (c.faultAt === this.now && c.fault !== null && r.up) {
          if (c.fault === "lost-fsync" && this.disk.loseSyncs(r.file)) this.log(`replica ${r.id}'s disk stops syncing`);
          if (c.fault === "torn") this.disk.armTorn(r.file);
          if (c.fault === "fsync-error" && this.disk.failSyncs(r.file)) this.log(`replica ${r.id}'s disk starts failing fsyncs`);
        }
        if (c.at === this.now && r.up && this.options.crashInFlight === true && c.at < c.restartAt - 1) {
          // Targeted: the crash waits (a bounded while) for the worst moment: an
          // acknowledgment out whose write is not durable yet (never, if the group commit
          // keeps its rule), or else any moment with an fsync in flight.
          const exposed = r.ackedTransaction > this.disk.reportedDurable(r.file);
          const waited = this.now - c.plannedAt;
          const ready = exposed || (this.disk.syncing(r.file) && waited >= CRASH_EXPOSED_WAIT_TICKS);
          if (!ready && waited < CRASH_IN_FLIGHT_WAIT_TICKS) c.at++;
        }
        if (c.at === this.now && r.up) {
          if (c.midTurn) r.midTurnRestartAt = c.restartAt;
          else this.crash(r, c.restartAt);
          if (c.fault === "bitflip") this.pendingFlip.add(r.id);
        }
      }
      if (
        this.options.crashInFlight === true &&
        r.up &&
        r.ackedTransaction > this.disk.reportedDurable(r.file) &&
        this.exposedCrashes < EXPOSED_CRASHES_MAX
      ) {
        // The worst moment for a power loss: an acknowledgment is out and its write not durable.
        this.exposedCrashes++;
        this.log(`replica ${r.id} acknowledged a write not durable yet: power loss now`);
        this.crash(r, this.now + 3);
      }
      if (this.pendingFlip.has(r.id) && !r.up) {
        this.pendingFlip.delete(r.id);
        const note = this.disk.bitflip(r.file, this.diskRng, this.diskRng.chance(0.6));
        this.noteFault(r, note);
        this.log(`bitflip on replica ${r.id}'s disk: ${note.kind} ${note.detail}`);
      }
      if (!r.up && r.downUntil !== null) {
        if (this.now >= r.downUntil || (this.now >= s.healAt && !r.wipe)) this.start(r);
      }
    }
  }

  /** crashInFlight: crashes made at a moment an acknowledgment was out before its write was durable. */
  private exposedCrashes = 0;

  /** Replicas whose disk gets a flipped bit once they are down. */
  private readonly pendingFlip = new Set<number>();

  /** Every request acknowledged, no more to issue, and every replica up and at the same decided seq. */
  private done(): boolean {
    if (this.now < this.scenario.issueUntil || !this.adminDone) return false;
    if (this.requests.some((q) => q.ackedAt === null)) return false;
    const seqs = this.replicas.map((r) => (r.up ? (r.driver as OrderingDriver).status().lastExecuted : -1));
    return seqs.every((x) => x === seqs[0] && x >= 0);
  }

  private finalChecks(doneAt: number | null): void {
    const s = this.scenario;
    if (doneAt === null) {
      const open = this.requests.filter((q) => q.ackedAt === null);
      const status = this.replicas.map((r) => (r.up ? `${r.id}:${(r.driver as OrderingDriver).status().lastExecuted}` : `${r.id}:down`));
      this.violation(
        `no liveness ${LIVENESS_TICKS} ticks after heal: ${open.length} requests unacknowledged${open[0] === undefined ? "" : ` (first ${open[0].key})`}, replicas at ${status.join(" ")}`,
      );
    }
    const up = this.replicas.filter((r) => r.up);
    // Identical channel state at identical decided seqs.
    const bySeq = new Map<number, { id: number; digest: string }>();
    for (const r of up) {
      const seq = (r.driver as OrderingDriver).status().lastExecuted;
      const digest = toHex((r.machine as ChannelMachine).digest());
      const other = bySeq.get(seq);
      if (other === undefined) bySeq.set(seq, { id: r.id, digest });
      else if (other.digest !== digest) this.violation(`replicas ${other.id} and ${r.id} hold different channel state at seq ${seq}`);
    }
    // No acknowledged event lost.
    for (const q of this.requests) {
      if (q.ackedAt === null || q.tag === null) continue;
      for (const r of up) {
        if (!q.ordered && (r.diskFaulty || !q.answers.has(r.id))) continue;
        if (!holds(r.machine as ChannelMachine, q.tag, q.publisherHex, q.pubSeq))
          this.violation(`replica ${r.id} lost the acknowledged publish ${q.tag} ${q.publisherHex.slice(0, 8)} seq ${q.pubSeq}`);
      }
    }
    if (s.n !== this.replicas.length) throw new Error("replica count");
  }
}

/** Whether a channel of `machine` holds the publish (publisher, seq). */
function holds(machine: ChannelMachine, tag: string, publisherHex: string, pubSeq: number): boolean {
  let from = machine.channelInfo(tag)?.oldestSeq ?? 1;
  for (;;) {
    const read = machine.readFrom(tag, from, 1024);
    if (!read.ok || read.batches.length === 0) return false;
    for (const batch of read.batches) {
      if (batch.pubSeq === pubSeq && toHex(batch.publisher) === publisherHex) return true;
      from = batch.firstSeq + batch.count;
    }
  }
}

/** Errors SQLite raises about a damaged file: a clear error from the storage, not a crash of the runtime. */
function isStorageError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && code.startsWith("SQLITE_");
}

function bigintSafe(_key: string, value: unknown): unknown {
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Uint8Array) return toHex(value).slice(0, 16);
  return value;
}

export function runRuntimeSeed(seed: number, options: RuntimeOptions = {}): RuntimeSeedResult {
  const sim = new RuntimeSimulation(seed, options);
  const ticks = sim.run();
  const s = sim.scenario;
  const faulty = [...s.diskFaulty].sort((a, b) => a - b);
  const fig = sim.figures;
  const summary =
    `n=${s.n} f=${s.f} heal@${s.healAt} drop=${s.dropRate} disk-faulty=[${faulty.join(",")}] crashes=${fig.crashes} ` +
    `(mid-turn ${fig.midTurnCrashes}) torn=${fig.torn} lost-fsync=${fig.lostFsync} bitflip=${fig.bitflipFile}+${fig.bitflipRow}row ` +
    `corrupt-rows=${fig.corruptRows} quarantined=${fig.quarantined} fatal=${fig.fatalStops} transfers=${fig.snapshotsInstalled} ` +
    `decided=${fig.decided} acked=${fig.acked} fsync=${s.fsync}` +
    (s.fsync === "overlapped"
      ? ` (<=${s.syncDelayMax} ticks: syncs=${fig.syncs} writes-during-sync=${fig.writesDuringSync} effects-after-sync=${fig.effectsAfterSync} ` +
        `crashes-sync-in-flight=${fig.crashesSyncInFlight} unsynced-at-crash=${fig.unsyncedAtCrash} kept=${fig.unsyncedKept} executed-then-lost=${fig.executedThenLost})`
      : "") +
    (fig.syncFailures + fig.commitFailures > 0 ? ` fsync-failures=${fig.syncFailures + fig.commitFailures}` : "");
  return { seed, summary, violations: sim.violations, ticks, figures: fig, trace: sim.trace };
}
