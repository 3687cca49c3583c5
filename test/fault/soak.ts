/**
 * `npm run soak`: faults one after another, for minutes, on one group that keeps running.
 * The fault matrix (matrix.ts) gives each fault a fresh group and heals it before judging;
 * here a seeded schedule (planChaos) keeps hitting the same group: replicas killed with
 * SIGKILL or stopped with SIGTERM and started again after a while, replicas paused with
 * SIGSTOP, replicas' keys rotated (a membership epoch each, the replica restarted with its
 * new key as the README says), the leader picked out often, never more than f replicas
 * out at once, and a replica may be hit again while it is still catching up. Meanwhile one publisher
 * writes to a channel of each CLASS and a live subscriber reads each. At the end every
 * replica is back, the group converges, and the history checker
 * (test/integration/durability-history.ts) judges everything the clients saw: on the
 * total-order channels nothing acknowledged lost, nothing twice, nothing invented, one
 * gap-free order, each publisher's order kept, and the live subscribers saw that same
 * order; on the unordered ones every acknowledged event delivered once. A replica that
 * exits by itself, or a stream that acknowledges nothing for STALL_MS_MAX, is a problem too.
 *
 * Run on purpose (not part of `npm test`); replicas run from src/ on 127.0.0.1, and the whole
 * program stops itself past --minutes plus SETTLE_MS_MAX. The seed is printed: the same seed
 * gives the same schedule (what the replicas do in between still depends on timing).
 *
 *   npm run soak -- [--minutes M] [--seed S] [--replicas 4|7] [--json] [--keep] [--help]
 */
import { join } from "node:path";
import type { FitbClient } from "../../src/client/index.ts";
import { loadPublicKeyFile, loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { bytesEqual } from "../../wire/bytes.ts";
import { rng } from "../unit/seeded-rng.ts";
import { integerArgument, optionsOrExit, stopOnSignalsAndDeadline } from "../helpers/program.ts";
import { waitFor } from "../helpers/wait.ts";
import { CLASSES, clientFor, collect, createChannels, type Delivered, encode } from "../integration/client-util.ts";
import {
  acked,
  catchUpUnderTraffic,
  checkTotalOrder,
  checkUnordered,
  lastDecided,
  logLines,
  payloadOf,
  readHistory,
  type Stream,
} from "../integration/durability-history.ts";
import { logTail, startCluster, type TestCluster, waitListening } from "../integration/harness.ts";

const MINUTES_DEFAULT = 5;
const MINUTES_MAX = 120;
/** No fault in the first seconds: the group forms and every stream gets going. */
const QUIET_START_MS = 3_000;
/** Between one planned fault and the next. */
const GAP_MS_MIN = 500;
const GAP_MS_MAX = 4_000;
/**
 * A key rotation (rotate-replica-key, then the replica restarted with its new key, as
 * README "Changing a replica's key" says) takes the replica out for about this long: the
 * plan keeps its other faults clear of it; the runner waits for the real end.
 */
const ROTATE_MS_PLANNED = 10_000;
/** Share of the faults that rotate a replica's key (a membership epoch each). */
const ROTATE_SHARE = 0.08;
/** A rotation's change must take effect within this. */
const EPOCH_MS_MAX = 120_000;
/** How long a killed or stopped replica stays down, and a paused one paused. */
const DOWN_MS_MIN = 500;
const DOWN_MS_MAX = 8_000;
const PAUSE_MS_MIN = 200;
const PAUSE_MS_MAX = 4_000;
/** Share of the faults aimed at the leader of the moment. */
const LEADER_SHARE = 0.4;
/** A stream that acknowledges nothing for this long, with at most f replicas out, is a problem. */
const STALL_MS_MAX = 60_000;
/** A restarted replica must answer its status within this. */
const BACK_MS_MAX = 60_000;
/** After the faults: every replica back, caught up and the histories read, within this. */
const SETTLE_MS_MAX = 5 * 60_000;
const PROGRESS_MS = 10_000;
/** Retention of the soak's channels ([retention] at its bounds): a run of the longest --minutes keeps everything it published. */
const SOAK_RETAINED_EVENTS = 10_000_000;
const SOAK_RETAINED_BYTES = 1024 * 1024 * 1024;
/** Events per request on the total-order channels (one on the unordered ones). */
const EVENTS_PER_REQUEST = 2;

export type ChaosKind = "kill" | "stop" | "pause" | "rotate";

/** One planned fault: at `atMs` from the start, on `target` (or the leader of the moment), for `holdMs`. */
export interface ChaosAction {
  readonly atMs: number;
  readonly kind: ChaosKind;
  readonly leader: boolean;
  readonly target: number;
  readonly holdMs: number;
}

/**
 * The faults of a run of `durationMs` on `n` replicas: a key rotation (8%), kill -9 (37%),
 * SIGTERM (20%) or SIGSTOP (35%), each held a random while, one every GAP_MS_MIN..GAP_MS_MAX, a share aimed
 * at the leader. The plan keeps at most `f` replicas out at any moment by its own clock;
 * the runner enforces the same bound against what really happened (a restart takes longer
 * than planned), so an action may run later than planned, never beside more than f others.
 */
export function planChaos(seed: number, durationMs: number, n: number, f: number): ChaosAction[] {
  const random = rng(seed);
  const between = (min: number, max: number): number => Math.round(min + random() * (max - min));
  const outUntil: number[] = new Array(n).fill(0);
  const actions: ChaosAction[] = [];
  let at = QUIET_START_MS;
  for (;;) {
    at += between(GAP_MS_MIN, GAP_MS_MAX);
    if (at >= durationMs) return actions;
    const out = outUntil.filter((until) => until > at).length;
    if (out >= f) {
      at = Math.min(...outUntil.filter((until) => until > at));
      continue;
    }
    const roll = random();
    const kind: ChaosKind = roll < ROTATE_SHARE ? "rotate" : roll < 0.45 ? "kill" : roll < 0.65 ? "stop" : "pause";
    const holdMs =
      kind === "rotate" ? ROTATE_MS_PLANNED : kind === "pause" ? between(PAUSE_MS_MIN, PAUSE_MS_MAX) : between(DOWN_MS_MIN, DOWN_MS_MAX);
    const candidates = [...outUntil.keys()].filter((id) => (outUntil[id] as number) <= at);
    const target = candidates[Math.floor(random() * candidates.length)] as number;
    outUntil[target] = at + holdMs;
    actions.push({ atMs: at, kind, leader: random() < LEADER_SHARE, target, holdMs });
  }
}

interface Options {
  readonly minutes: number;
  readonly seed: number;
  readonly replicas: number;
  readonly json: boolean;
  readonly keep: boolean;
  readonly help: boolean;
}

const USAGE = `usage: npm run soak -- [--minutes M] [--seed S] [--replicas 4|7] [--json] [--keep] [--help]

Runs a group of replicas (from src/, on 127.0.0.1) for M minutes (default ${MINUTES_DEFAULT}, at most
${MINUTES_MAX}) while a seeded schedule kills them (SIGKILL), stops them (SIGTERM), pauses them
(SIGSTOP) and rotates their keys (rotate-replica-key, then a restart with the new key), the
leader often, never more than f at once, and one publisher and one live
subscriber use a channel of each CLASS. Then every replica comes back, the group converges,
and the history checker judges what the clients saw. Prints the faults applied and one row
per channel; exits 1 on any problem (a lost, repeated, invented or reordered event, a
replica that exited by itself, a stream stalled for ${STALL_MS_MAX / 1000} s), 0 otherwise.
  --seed S       the schedule's seed (default: a random one, printed)
  --replicas N   4 (f = 1) or 7 (f = 2) (default 4)
  --json         one JSON object on standard output instead of the table
  --keep         keep the cluster directory (replica logs, data) and print where it is; kept
                 anyway when a problem was found`;

export function parseOptions(argv: readonly string[]): Options | string {
  let minutes = MINUTES_DEFAULT;
  let seed = Math.floor(Math.random() * 1_000_000);
  let replicas = 4;
  let json = false;
  let keep = false;
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = (): number | string =>
      arg === "--minutes"
        ? integerArgument(arg, argv[++i], 1, MINUTES_MAX)
        : arg === "--seed"
          ? integerArgument(arg, argv[++i], 0, 2 ** 31 - 1)
          : integerArgument(arg as string, argv[++i], 4, 7);
    if (arg === "--minutes" || arg === "--seed" || arg === "--replicas") {
      const v = value();
      if (typeof v === "string") return v;
      if (arg === "--minutes") minutes = v;
      else if (arg === "--seed") seed = v;
      else if (v !== 4 && v !== 7) return `--replicas: 4 or 7, got ${v}`;
      else replicas = v;
    } else if (arg === "--json") json = true;
    else if (arg === "--keep") keep = true;
    else if (arg === "--help" || arg === "-h") help = true;
    else return `unknown argument ${arg}`;
  }
  return { minutes, seed, replicas, json, keep, help };
}

/** A live unordered subscription's problems: an event delivered twice, or one never published. */
export function liveUnorderedProblems(streams: readonly Stream[], live: readonly Delivered[]): string[] {
  const attempted = new Set(streams.flatMap((stream) => [...stream.attempted]));
  const seen = new Set<string>();
  const problems: string[] = [];
  for (const event of live) {
    if (seen.has(event.payload)) problems.push(`live: ${event.payload} delivered twice`);
    else if (!attempted.has(event.payload)) problems.push(`live: ${event.payload} was never published`);
    seen.add(event.payload);
  }
  return problems;
}

/** What happened to the group: faults applied, and the problems seen while it ran. */
class Chaos {
  readonly out = new Set<number>();
  readonly applied: Record<ChaosKind, number> = { kill: 0, stop: 0, pause: 0, rotate: 0 };
  leaderHits = 0;
  /** Actions run later than planned because f replicas were still out. */
  delayed = 0;
  readonly problems: string[] = [];

  /** A problem, said at once (the run goes on, and the report lists it again). */
  problem(text: string): void {
    this.problems.push(text);
    this.say(`PROBLEM ${text}`);
  }

  private readonly expectedExits = new Set<unknown>();
  private readonly heals: Promise<void>[] = [];

  constructor(
    private readonly cluster: TestCluster,
    private readonly admin: FitbClient,
    private readonly f: number,
    private readonly say: (line: string) => void,
    /** Each rotated replica's key file, which it is started with from then on. */
    private readonly keys: Map<number, string>,
    /** Each rotated replica's cluster file (exported before its rotation), which it is started with from then on. */
    private readonly configs: Map<number, string>,
  ) {}

  /** The newest cluster file exported from the group (fitb cluster export), or the one it was made with. */
  private currentFile = "";

  /** When the schedule's clock started (this process's clock): set once the group and the streams are up. */
  startedAt = Date.now();

  /** Starts replica `id` and watches its process: an exit nobody asked for is a problem. */
  start(id: number): void {
    this.cluster.start(id);
    const proc = this.cluster.procs[id];
    void proc?.exited.then((code) => {
      if (this.expectedExits.has(proc)) return;
      this.problem(`replica ${id} exited by itself (status ${code}); its log ends:\n${logTail(this.cluster, id, 15)}`);
    });
  }

  /** Runs the plan until `endAt` (this process's clock), each action no earlier than planned. */
  async run(plan: readonly ChaosAction[], endAt: number): Promise<void> {
    for (const action of plan) {
      const due = this.startedAt + action.atMs;
      if (due > Date.now()) await Bun.sleep(due - Date.now());
      let waited = false;
      while (this.out.size >= this.f && Date.now() < endAt) {
        waited = true;
        await Bun.sleep(100);
      }
      if (Date.now() >= endAt) break;
      if (waited) this.delayed++;
      await this.apply(action);
    }
  }

  /** Every replica is about to be stopped by the program: their exits are no problem. */
  stopping(): void {
    for (const proc of this.cluster.procs) this.expectedExits.add(proc);
  }

  /** Waits until every fault is healed and every replica answers. */
  async healed(): Promise<void> {
    await Promise.all(this.heals);
  }

  private async apply(action: ChaosAction): Promise<void> {
    const target = await this.targetOf(action);
    const proc = this.cluster.procs[target];
    if (proc === null || proc === undefined) return;
    this.out.add(target);
    this.applied[action.kind]++;
    const leader = action.leader && target === (await this.leaderNow());
    if (leader) this.leaderHits++;
    const who = `replica ${target}${leader ? " (the leader)" : ""}`;
    const at = `${((Date.now() - this.startedAt) / 1000).toFixed(1)} s`;
    if (action.kind === "rotate") {
      this.heals.push(this.rotate(target, who, at));
      return;
    }
    if (action.kind === "pause") {
      this.say(`${at}: SIGSTOP ${who} for ${(action.holdMs / 1000).toFixed(1)} s`);
      proc.kill("SIGSTOP");
      this.heals.push(
        (async () => {
          await Bun.sleep(action.holdMs);
          proc.kill("SIGCONT");
          this.out.delete(target);
        })(),
      );
      return;
    }
    this.expectedExits.add(proc);
    this.say(`${at}: ${action.kind === "kill" ? "SIGKILL" : "SIGTERM"} ${who}, started again in ${(action.holdMs / 1000).toFixed(1)} s`);
    this.cluster.kill(target, action.kind === "kill" ? "SIGKILL" : "SIGTERM");
    this.heals.push(
      (async () => {
        const [code] = await Promise.all([proc.exited, Bun.sleep(action.holdMs)]);
        if (action.kind === "stop" && code !== 0) this.problem(`replica ${target} stopped by SIGTERM exited with status ${code}`);
        this.start(target);
        await this.answers(target);
        this.out.delete(target);
      })(),
    );
  }

  /**
   * README "Changing a replica's key": a new key made, rotate-replica-key, and once the
   * change took effect at the replica, the replica stopped and started with the new key;
   * it is out from the command until it answers again.
   */
  private async rotate(target: number, who: string, at: string): Promise<void> {
    const fail = (why: string): void => {
      this.problem(`rotating ${who}'s key: ${why}; its log ends:\n${logTail(this.cluster, target, 15)}`);
    };
    // Named before the first await: rotations may overlap (f > 1), and each needs its own files.
    const nth = this.applied.rotate;
    try {
      const path = join(this.cluster.dir, `replica-${target}.rotated-${nth}.key`);
      const made = await this.cluster.fitb(["keygen", "--out", path]);
      if (made.code !== 0) return fail(`fitb keygen: ${made.stderr.trim()}`);
      const newKey = loadSigningKeyFile(path).key.publicKey;
      // The group's file as it is now, with the old key: the replica restarted with its new
      // key asks the replicas this file names (README "Changing a replica's key"), and after
      // other rotations the file the cluster was made with names too few of them rightly.
      const file = join(this.cluster.dir, `cluster.before-rotation-${nth}.toml`);
      const exported = await this.cluster.fitb(
        ["cluster", "export", "--config", this.currentFile || this.cluster.configPath, "--key", this.cluster.adminKey, "--out", file],
        { timeoutMs: EPOCH_MS_MAX },
      );
      if (exported.code !== 0) return fail(`fitb cluster export exited ${exported.code}: ${exported.stderr.trim()}`);
      this.currentFile = file;
      this.say(`${at}: rotate-replica-key ${who}, then a restart with its new key once the group has it`);
      const admin = ["admin", "--config", file, "--key", this.cluster.adminKey];
      const asked = Date.now();
      const run = await this.cluster.fitb([...admin, "rotate-replica-key", "--id", String(target), "--replica-key", made.stdout.trim()], {
        timeoutMs: EPOCH_MS_MAX,
      });
      if (run.code !== 0) return fail(`rotate-replica-key exited ${run.code}: ${run.stderr.trim()}`);
      // The epoch in which the group has the new key (not members()+1 as asked: another
      // change may take effect first), then the replica's own switch to it.
      let epoch = -1;
      await waitFor(
        `the group to list replica ${target} with its new key`,
        async () => {
          const group = await this.admin.members().catch(() => null);
          const member = group?.members.find((m) => m.id === target);
          if (group === null || member === undefined || !bytesEqual(member.key, newKey)) return false;
          epoch = group.epoch;
          return true;
        },
        EPOCH_MS_MAX,
      );
      // Its own switch, unless it lags behind the switch point: the others then refuse its
      // old key before it gets there, and the restart with the new key (which asks the
      // group, and fetches the state in the new epoch) is what brings it back.
      let lagged = false;
      await waitFor(
        `replica ${target} to start epoch ${epoch} or be refused its old key`,
        () => {
          if (logLines(this.cluster, target, "epoch started").some((line) => (line["epoch"] as number) >= epoch)) return true;
          lagged = refusedItsOldKey(this.cluster, target, asked);
          return lagged;
        },
        EPOCH_MS_MAX,
      );
      // Refused before its own "epoch started": it lagged, or the others merely switched first.
      if (lagged)
        this.say(`${at}: ${who} was refused its old key before it logged its switch to epoch ${epoch}: restarted with its new key`);
      const proc = this.cluster.procs[target];
      this.expectedExits.add(proc);
      this.cluster.kill(target, "SIGTERM");
      const code = await proc?.exited;
      if (code !== 0) this.problem(`replica ${target} stopped by SIGTERM after its key rotation exited with status ${code}`);
      this.keys.set(target, path);
      this.configs.set(target, file);
      this.start(target);
      await this.answers(target);
    } catch (error) {
      fail((error as Error).message);
    } finally {
      this.out.delete(target);
    }
  }

  /** The action's replica: the leader of the moment when it aims there and the leader is in, else its planned one, else any in. */
  private async targetOf(action: ChaosAction): Promise<number> {
    const leader = action.leader ? await this.leaderNow() : null;
    if (leader !== null && !this.out.has(leader)) return leader;
    if (!this.out.has(action.target)) return action.target;
    return [...this.cluster.procs.keys()].find((id) => !this.out.has(id)) as number;
  }

  private async leaderNow(): Promise<number | null> {
    try {
      return (await this.admin.status()).leader;
    } catch {
      return null;
    }
  }

  /** Waits until replica `id` answers its status (it listens, recovered its data directory). */
  private async answers(id: number): Promise<void> {
    try {
      await waitFor(
        `replica ${id} to answer after its restart`,
        async () => ((await lastDecided(this.admin).catch(() => []))[id] ?? null) !== null,
        BACK_MS_MAX,
      );
    } catch (error) {
      this.problem(`${(error as Error).message}; its log ends:\n${logTail(this.cluster, id, 15)}`);
    }
  }
}

/**
 * Publishes requests of `eventsPerRequest` events to `stream`'s channel, one at a time,
 * while `running()` holds, recording each acknowledged event (as publishStream does) and
 * when the last acknowledgement came: a failed publish (no quorum in time) is no progress.
 */
class Publishing {
  readonly stream: Stream;
  private lastAckAt = Date.now();
  /** The longest wait from one acknowledgement to the next. */
  longestMs = 0;
  readonly done: Promise<void>;

  constructor(client: FitbClient, tag: string, prefix: string, eventsPerRequest: number, running: () => boolean) {
    this.stream = { tag, prefix, acked: [], attempted: new Set(), failures: 0 };
    this.done = this.loop(client, eventsPerRequest, running);
  }

  /** Since the last acknowledgement. */
  get waitingMs(): number {
    return Date.now() - this.lastAckAt;
  }

  private async loop(client: FitbClient, eventsPerRequest: number, running: () => boolean): Promise<void> {
    for (let r = 0; running(); r++) {
      const payloads = Array.from({ length: eventsPerRequest }, (_, i) => payloadOf(this.stream.prefix, r, i));
      for (const payload of payloads) this.stream.attempted.add(payload);
      try {
        const ack = await client.publish(this.stream.tag, payloads.map(encode));
        payloads.forEach((payload, i) => this.stream.acked.push({ payload, seq: ack.channelSeq === null ? null : ack.channelSeq + i }));
        this.longestMs = Math.max(this.longestMs, this.waitingMs);
        this.lastAckAt = Date.now();
      } catch {
        this.stream.failures++;
      }
    }
  }
}

interface ChannelRow {
  readonly tag: string;
  readonly class: string;
  readonly acked: number;
  readonly failedPublishes: number;
  readonly history: number;
  readonly live: number;
  readonly longestStallS: number;
  readonly problems: readonly string[];
}

async function main(): Promise<void> {
  const options = optionsOrExit(parseOptions(process.argv.slice(2)), USAGE);
  const n = options.replicas;
  const f = Math.floor((n - 1) / 3);
  const durationMs = options.minutes * 60_000;
  const say = (line: string): void => console.error(`soak: ${line}`);
  if (options.keep) process.env.FITB_KEEP_TEST_DIRS = "1";
  const plan = planChaos(options.seed, durationMs, n, f);
  say(`seed ${options.seed}: ${n} replicas (f = ${f}), ${options.minutes} min, ${plan.length} faults planned`);
  const keys = new Map<number, string>();
  const configs = new Map<number, string>();
  const cluster = await startCluster({
    replicas: n,
    start: false,
    logFiles: true,
    // Every acknowledged event stays for the history read at the end, however long the run.
    limits: { events_max: SOAK_RETAINED_EVENTS, bytes_max: SOAK_RETAINED_BYTES },
    replicaArgs: (id) => (keys.has(id) ? ["--key", keys.get(id) as string] : []),
    replicaConfig: (id) => configs.get(id),
  });
  const clients: FitbClient[] = [];
  const stop = (code: number, why: string): never => {
    say(why);
    for (const client of clients) client.close();
    for (const proc of cluster.procs) proc?.kill("SIGKILL");
    process.exit(code);
  };
  const deadline = stopOnSignalsAndDeadline(stop, durationMs + SETTLE_MS_MAX, "the replicas");
  // Anything thrown past here stops the replicas too: none is left running behind the program.
  stopOnError = (error) => stop(1, `stopped by an error: ${(error as Error).stack ?? String(error)}`);
  const admin = clientFor(cluster, cluster.adminKey);
  clients.push(admin);
  const chaos = new Chaos(cluster, admin, f, say, keys, configs);
  for (let id = 0; id < n; id++) chaos.start(id);
  await waitListening(cluster, [...cluster.procs.keys()]);
  const publisher = clientFor(cluster, cluster.clientKey);
  const reader = clientFor(cluster, cluster.clientKey);
  clients.push(publisher, reader);
  await createChannels(admin, loadPublicKeyFile(`${cluster.clientKey}.pub`));
  const live = await Promise.all(CLASSES.map((c) => collect(reader, c.tag)));
  const startedAt = Date.now();
  chaos.startedAt = startedAt;
  const endAt = startedAt + durationMs;
  const running = (): boolean => Date.now() < endAt;
  const publishing = CLASSES.map(
    (c) => new Publishing(publisher, c.tag, c.tag.replace(".", "_"), c.order === "total" ? EVENTS_PER_REQUEST : 1, running),
  );
  const progress = setInterval(() => {
    const seconds = Math.round((Date.now() - startedAt) / 1000);
    const out = [...chaos.out].join(",") || "none";
    const acks = publishing.map((p) => `${p.stream.tag} ${acked([p.stream])}`).join(", ");
    say(
      `${seconds}/${durationMs / 1000} s: acknowledged ${acks}; faults SIGKILL ${chaos.applied.kill}, SIGTERM ${chaos.applied.stop}, SIGSTOP ${chaos.applied.pause}, key rotations ${chaos.applied.rotate}; out now: ${out}; problems ${chaos.problems.length}`,
    );
    for (const p of publishing) {
      const what = `${p.stream.tag} acknowledged nothing for`;
      if (p.waitingMs > STALL_MS_MAX && !chaos.problems.some((problem) => problem.startsWith(what))) {
        chaos.problem(`${what} ${Math.round(p.waitingMs / 1000)} s (out: ${out})`);
      }
    }
  }, PROGRESS_MS);
  await chaos.run(plan, endAt);
  await Promise.all(publishing.map((p) => p.done));
  const streams = publishing.map((p) => [p.stream]);
  clearInterval(progress);
  say("faults over: every replica back, then the group converges and the histories are read");
  /** Reads channel `c`'s history and judges it, with what its live subscriber got. */
  const judge = async (
    c: (typeof CLASSES)[number],
    channelStreams: Stream[],
    seen: { events: Delivered[] },
    i: number,
  ): Promise<ChannelRow> => {
    const total = c.order === "total";
    let history: Delivered[];
    try {
      history = await readHistory(reader, publisher, channelStreams, total ? 1 : 0);
    } catch (error) {
      // Still a problem, but read again once: whether it lasts tells a reader that could
      // not start for a while from a history that cannot be read.
      chaos.problem(`reading the history of ${c.tag} failed (read again once): ${(error as Error).message}`);
      history = await readHistory(reader, publisher, channelStreams, total ? 1 : 0);
    }
    let problems: string[];
    if (total) {
      const end = (history.at(-1) as Delivered).payload;
      await waitFor(`the live subscriber of ${c.tag} to get ${end}`, () => seen.events.some((e) => e.payload === end), 60_000);
      problems = checkTotalOrder(channelStreams, history, seen.events);
    } else {
      problems = checkUnordered(channelStreams, history);
      // Live, an unordered subscription may miss what only replicas down meanwhile stored
      // (it is taken up again live there), but never gets an event twice or one nobody sent.
      problems.push(...liveUnorderedProblems(channelStreams, seen.events));
    }
    return {
      tag: c.tag,
      class: `${c.fault}/${c.order}`,
      acked: acked(channelStreams),
      failedPublishes: channelStreams.reduce((sum, stream) => sum + stream.failures, 0),
      history: history.length,
      live: seen.events.length,
      longestStallS: Math.round((publishing[i] as Publishing).longestMs / 100) / 10,
      problems,
    };
  };
  await chaos.healed();
  const rows: ChannelRow[] = [];
  try {
    const ids = [...cluster.procs.keys()];
    const trickle = await catchUpUnderTraffic(cluster, admin, publisher, "sec.alerts", ids, SETTLE_MS_MAX / 2);
    streams[CLASSES.findIndex((c) => c.tag === "sec.alerts")]?.push(trickle);
    for (const [i, c] of CLASSES.entries()) rows.push(await judge(c, streams[i] as Stream[], live[i] as { events: Delivered[] }, i));
  } catch (error) {
    chaos.problem(`after the faults: ${(error as Error).message}`);
  }
  const view = await admin.status().then(
    (status) => status.view,
    () => null,
  );
  const epoch = await admin.members().then(
    (members) => members.epoch,
    () => null,
  );
  for (const subscription of live) await subscription.close();
  clearTimeout(deadline);
  const problems = [...chaos.problems, ...rows.flatMap((row) => row.problems.map((p) => `${row.tag}: ${p}`))];
  const report = {
    seed: options.seed,
    replicas: n,
    f,
    minutes: options.minutes,
    faults: { ...chaos.applied, leader: chaos.leaderHits, delayed: chaos.delayed },
    view,
    epoch,
    channels: rows,
    problems,
  };
  if (options.json) console.log(JSON.stringify(report));
  else {
    console.log(
      `seed ${options.seed}, ${n} replicas (f = ${f}), ${options.minutes} min: SIGKILL ${chaos.applied.kill}, SIGTERM ${chaos.applied.stop}, SIGSTOP ${chaos.applied.pause}, key rotations ${chaos.applied.rotate} (${chaos.leaderHits} on the leader of the moment); view ${view} and epoch ${epoch} at the end\n`,
    );
    console.log(
      "| channel | class | acknowledged | failed publishes | history read | live subscriber got | longest wait for an ack | problems |",
    );
    console.log("|---|---|--:|--:|--:|--:|--:|--:|");
    for (const row of rows) {
      console.log(
        `| ${row.tag} | ${row.class} | ${row.acked} | ${row.failedPublishes} | ${row.history} | ${row.live} | ${row.longestStallS} s | ${row.problems.length} |`,
      );
    }
    for (const problem of problems.slice(0, 40)) console.log(`PROBLEM ${problem}`);
  }
  // The replicas' logs (replica-N.log) and data stay for a look when something went wrong.
  if (problems.length > 0) process.env.FITB_KEEP_TEST_DIRS = "1";
  if (process.env.FITB_KEEP_TEST_DIRS !== undefined) console.error(`soak: cluster directory kept (replica logs, data): ${cluster.dir}`);
  for (const client of clients) client.close();
  chaos.stopping();
  await cluster.stop();
  process.exit(problems.length === 0 ? 0 : 1);
}

/** Stops what main started, once it has started it (an error thrown anywhere in main). */
let stopOnError: ((error: unknown) => never) | null = null;

if (import.meta.main) {
  await main().catch((error: unknown) => {
    if (stopOnError !== null) stopOnError(error);
    console.error(error);
    process.exit(1);
  });
}

/**
 * Whether the others refused replica `id`'s link because its key was rotated (peers.ts's
 * refusal, which the replica logs once per peer).
 */
function refusedItsOldKey(cluster: TestCluster, id: number, sinceMs: number): boolean {
  const refusal = `replica ${id}'s key was rotated`;
  return logLines(cluster, id, "a peer refuses this replica's key: it no longer accepts it").some(
    (line) => Date.parse(String(line["ts"])) >= sinceMs && String(line["reason"]).includes(refusal),
  );
}
