/**
 * Membership changes as simulator inputs: each seed runs a group of real ordering cores
 * (src/sim/epochs.ts) through one change (add replicas, remove one, rotate a key, or
 * change f) under a request stream, with one replica crashing before or after the change
 * or Byzantine throughout (the simulator's behaviours in every epoch, and replays of
 * earlier epochs' messages into the current one), a rotated-away key sometimes in an
 * attacker's hands, messages dropped and delivered out of order, and checks that every
 * correct replica executed the same requests at every seq, none twice, and that every
 * request executed at every live correct member of the final epoch.
 *
 *   bun src/sim/epochs-run.ts --seeds 10000 [--start S] [--crypto fast|ed25519]
 *
 * Prints every failing seed with its violations and, at the end, seeds/s and the count
 * of violations. Exits 1 if any seed violated a check.
 */
import { SimKeyring, type SimCryptoKind } from "./crypto.ts";
import { type EpochMessage, type EpochSpec, EpochGroup } from "./epochs.ts";
import { Prng } from "./prng.ts";
import { BYZ_BEHAVIOURS } from "./scenario.ts";

const K = 4;
const REQUESTS = 12;
const MAX_TICKS = 6000;

export interface EpochSeedResult {
  readonly seed: number;
  readonly change: string;
  readonly violations: string[];
  readonly ticks: number;
  /** What the attacks sent: the Byzantine member's messages, its old-epoch replays, old-key copies; malformed ones dropped. */
  readonly attacks: { byzantine: number; oldEpochReplays: number; oldKeyCopies: number; malformed: number };
}

function specOf(f: number, ids: readonly number[], keys: Map<number, number>): EpochSpec {
  return { f, members: [...ids].sort((a, b) => a - b).map((id) => ({ id, key: keys.get(id) ?? id })) };
}

/** One seed: a random group, one random change, a crash, a lossy network; returns what went wrong. */
export function runEpochSeed(seed: number, crypto: SimCryptoKind = "fast"): EpochSeedResult {
  const rng = new Prng(seed);
  const n0 = rng.int(4, 7);
  const f0 = 1;
  const ids0 = Array.from({ length: n0 }, (_, id) => id);
  const keys = new Map<number, number>();
  const keyring = new SimKeyring(crypto, 16, 1);
  const group = new EpochGroup(keyring, specOf(f0, ids0, keys), { checkpointInterval: K, logWindow: 2 * K });
  // The change.
  const kind = (["add", "remove", "rotate", "set-f"] as const)[rng.int(0, 3)] as "add" | "remove" | "rotate" | "set-f";
  let ids1 = [...ids0];
  let f1 = f0;
  const keys1 = new Map(keys);
  const added: number[] = [];
  if (kind === "add") {
    const count = rng.int(1, 3);
    for (let i = 0; i < count; i++) added.push(n0 + i);
    ids1 = [...ids0, ...added];
    f1 = rng.chance(0.5) ? Math.max(1, Math.floor((ids1.length - 1) / 3)) : 1;
  } else if (kind === "remove") {
    const gone = rng.int(0, n0 - 1);
    ids1 = ids0.filter((id) => id !== gone);
    f1 = ids1.length >= 4 ? 1 : 0;
  } else if (kind === "rotate") {
    keys1.set(rng.int(0, n0 - 1), 8 + rng.int(0, 7));
  } else {
    f1 = n0 >= 7 && rng.chance(0.5) ? 2 : 1;
    if (f1 === f0) f1 = n0 >= 7 ? 2 : 1;
  }
  const next = specOf(f1, ids1, keys1);
  // One faulty replica among those the fault budget of both epochs allows (never one that
  // joins): it crashes, or it is Byzantine from the start (the simulator's behaviours in
  // every epoch, and replays of earlier epochs' messages into the current one).
  const budget = Math.min(f0, f1);
  const crashable = ids0.filter((id) => !added.includes(id));
  const faultRoll = rng.float();
  const faultyId = budget > 0 && faultRoll < 0.8 ? (crashable[rng.int(0, crashable.length - 1)] as number) : null;
  const crashId = faultyId !== null && faultRoll < 0.35 ? faultyId : null;
  const byzId = faultyId !== null && crashId === null ? faultyId : null;
  let byzDescription = "";
  if (byzId !== null) {
    const behaviours = rng.shuffle(BYZ_BEHAVIOURS.filter((b) => b !== "twins" && b !== "forget")).slice(0, rng.int(1, 3));
    const replayOldEpochs = rng.chance(0.5);
    group.makeByzantine(byzId, { behaviours, rng: rng.fork(1000 + byzId), replayOldEpochs });
    byzDescription = ` byzantine ${byzId} [${behaviours.join(",")}${replayOldEpochs ? ",epoch-replay" : ""}]`;
  }
  // A rotated-away key in an attacker's hands: it signs as its former owner in the new epoch.
  let oldKeyDescription = "";
  if (kind === "rotate" && rng.chance(0.5)) {
    const rotated = [...keys1].find(([id, key]) => (keys.get(id) ?? id) !== key);
    if (rotated !== undefined) {
      group.holdOldKey(rotated[0], keys.get(rotated[0]) ?? rotated[0], rng.fork(2000));
      oldKeyDescription = ` old-key ${rotated[0]}`;
    }
  }
  const crashAtRequest = rng.int(0, REQUESTS - 1);
  // The network: some loss and reordering.
  const dropRate = rng.chance(0.5) ? rng.float() * 0.05 : 0;
  const order = (batch: EpochMessage[]): EpochMessage[] => {
    for (let i = batch.length - 1; i > 0; i--) {
      const j = rng.int(0, i);
      [batch[i], batch[j]] = [batch[j] as EpochMessage, batch[i] as EpochMessage];
    }
    return batch;
  };
  const keep = (): boolean => !rng.chance(dropRate);
  const violations: string[] = [];
  const scheduleAfter = rng.int(2, 6);
  let ticks = 0;
  let crashed = false;
  const running = (): number => Math.max(...[...group.nodes.values()].map((node) => node.executed));
  try {
    for (let r = 1; r <= REQUESTS; r++) {
      if (r === scheduleAfter) group.schedule(next, (Math.floor(running() / K) + 1 + rng.int(0, 1)) * K);
      if (crashId !== null && !crashed && r === crashAtRequest) {
        group.crash(crashId);
        crashed = true;
      }
      group.submitAll(group.request(0, r, `r${r}`));
      // Bursts: up to three requests go out before time moves, so proposals pile up across the switch point.
      if (r < REQUESTS && rng.chance(0.6)) continue;
      for (let t = 0; t < 15; t++) {
        group.tick();
        group.deliverAll(keep, 50, order);
        ticks++;
        for (const id of added) if (!group.nodes.has(id) && group.starts[1] !== null && group.starts[1] !== undefined) group.join(id);
      }
    }
    // Liveness: every live member of the final epoch executes every request (the network is
    // now reliable). A client stream goes on until the change took effect: a pending change
    // waits for traffic to reach its checkpoint.
    const finalEpoch = group.specs.length - 1;
    let total = REQUESTS;
    const done = (): boolean => {
      for (const id of added) if (!group.nodes.has(id) && group.starts[1] !== null && group.starts[1] !== undefined) group.join(id);
      const members = (group.specs[finalEpoch] as EpochSpec).members
        .map((m) => m.id)
        .filter((id) => group.nodes.get(id)?.core !== null && group.nodes.has(id) && group.correct(id));
      return members.length > 0 && members.every((id) => group.node(id).epoch === finalEpoch && executedAll(group, id, total));
    };
    for (let t = 0; !done(); t++) {
      if (t >= MAX_TICKS) throw new Error(`not every member of epoch ${finalEpoch} executed all ${total} requests in ${MAX_TICKS} ticks`);
      if (group.starts[finalEpoch] === null && t % 20 === 0) group.submitAll(group.request(0, ++total, `r${total}`));
      // The client retransmits what it has no answer for yet, as a real one does after its timeout.
      if (t % 100 === 99) retransmit(group, total);
      group.tick();
      group.deliverAll();
      ticks++;
    }
  } catch (error) {
    violations.push(`liveness or harness: ${(error as Error).message}`);
  }
  violations.push(...safetyViolations(group));
  return {
    seed,
    change: `${kind} n=${n0}->${ids1.length} f=${f0}->${f1}${crashId === null ? "" : ` crash ${crashId}`}${byzDescription}${oldKeyDescription} drop=${dropRate.toFixed(3)}`,
    violations,
    ticks,
    attacks: { ...group.attacks, malformed: group.malformed },
  };
}

/** Submits again to every live replica the requests not yet executed everywhere (same bytes: signing is deterministic). */
function retransmit(group: EpochGroup, total: number): void {
  const floor = Math.min(
    ...[...group.nodes.entries()]
      .filter(([id, node]) => node.core !== null && group.correct(id))
      .map(([, node]) => Math.max(0, ...node.clientLast.values())),
  );
  for (let seq = floor + 1; seq <= total; seq++) group.submitAll(group.request(0, seq, `r${seq}`));
}

/** The member's application state has executed the last request (a joiner got the first ones in its state). */
function executedAll(group: EpochGroup, id: number, total: number): boolean {
  return [...group.node(id).clientLast.values()].some((last) => last >= total);
}

/** Agreement (the same requests at every seq, everywhere) and integrity (nothing twice at one replica). */
function safetyViolations(group: EpochGroup): string[] {
  const problems: string[] = [];
  const bySeq = new Map<number, { key: string; by: number }>();
  for (const [id, node] of group.nodes) {
    if (!group.correct(id)) continue; // a Byzantine member may execute anything
    const seen = new Set<string>();
    for (const d of node.decided) {
      const key = d.execute.map((r) => `${r.client.slice(0, 8)}:${r.seq}`).join(",");
      const other = bySeq.get(d.seq);
      if (other === undefined) bySeq.set(d.seq, { key, by: id });
      else if (other.key !== key) problems.push(`agreement: seq ${d.seq} executed [${key}] at ${id} but [${other.key}] at ${other.by}`);
      for (const r of d.execute) {
        const k = `${r.client}:${r.seq}`;
        if (seen.has(k)) problems.push(`integrity: ${k} executed twice at ${id}`);
        seen.add(k);
      }
    }
  }
  return problems;
}

const USAGE = [
  "usage: bun src/sim/epochs-run.ts [--seeds N] [--start S] [--crypto fast|ed25519] [--help]",
  "",
  "Runs N seeds (default 100) from S (default 1), each a group of real ordering cores through",
  "one membership change under a crashed or Byzantine replica, a rotated-away key in an",
  "attacker's hands, loss and reordering; prints failing seeds with a replay command, then",
  "seeds/s, the violations and what the attacks sent. Exits 1 if a seed violated a check.",
].join("\n");

/** The options, or why the arguments are wrong. */
export function parseEpochRunArgs(
  argv: readonly string[],
): { seeds: number; start: number; crypto: SimCryptoKind; help: boolean } | string {
  let seeds = 100;
  let start = 1;
  let crypto: SimCryptoKind = "fast";
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--help" || arg === "-h") help = true;
    else if (arg === "--seeds" || arg === "--start") {
      const value = Number(argv[++i]);
      if (!Number.isInteger(value) || value < (arg === "--seeds" ? 1 : 0))
        return `${arg}: a ${arg === "--seeds" ? "positive" : "non-negative"} integer`;
      if (arg === "--seeds") seeds = value;
      else start = value;
    } else if (arg === "--crypto") {
      const value = argv[++i];
      if (value !== "fast" && value !== "ed25519") return "--crypto: fast or ed25519";
      crypto = value;
    } else return `unknown argument ${arg}`;
  }
  return { seeds, start, crypto, help };
}

function main(argv: readonly string[]): number {
  const options = parseEpochRunArgs(argv);
  if (typeof options === "string") {
    console.error(options);
    console.error(USAGE);
    return 2;
  }
  if (options.help) {
    console.log(USAGE);
    return 0;
  }
  const { seeds, start, crypto } = options;
  const began = performance.now();
  let failed = 0;
  let violations = 0;
  const kinds = new Map<string, number>();
  const attacks = { byzantine: 0, oldEpochReplays: 0, oldKeyCopies: 0, malformed: 0, byzantineSeeds: 0, oldKeySeeds: 0 };
  for (let seed = start; seed < start + seeds; seed++) {
    const result = runEpochSeed(seed, crypto);
    const kind = result.change.split(" ")[0] as string;
    kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
    attacks.byzantine += result.attacks.byzantine;
    attacks.oldEpochReplays += result.attacks.oldEpochReplays;
    attacks.oldKeyCopies += result.attacks.oldKeyCopies;
    attacks.malformed += result.attacks.malformed;
    if (result.change.includes(" byzantine ")) attacks.byzantineSeeds++;
    if (result.change.includes(" old-key ")) attacks.oldKeySeeds++;
    if (result.violations.length > 0) {
      failed++;
      violations += result.violations.length;
      console.log(`seed ${seed} (${result.change}): ${result.violations.slice(0, 3).join("; ")}`);
      console.log(`  replay: bun src/sim/epochs-run.ts --seeds 1 --start ${seed} --crypto ${crypto}`);
    }
  }
  const seconds = (performance.now() - began) / 1000;
  console.log(
    `${seeds} seeds (${[...kinds].map(([k, c]) => `${k} ${c}`).join(", ")}) in ${seconds.toFixed(1)} s (${(seeds / seconds).toFixed(1)} seeds/s): ${failed} failing seeds, ${violations} violations`,
  );
  console.log(
    `attacks: ${attacks.byzantineSeeds} seeds with a Byzantine member (${attacks.byzantine} messages sent by it, ${attacks.malformed} malformed dropped, ${attacks.oldEpochReplays} replays of earlier epochs); ${attacks.oldKeySeeds} seeds with a rotated-away key in an attacker's hands (${attacks.oldKeyCopies} messages signed with it)`,
  );
  return failed === 0 ? 0 : 1;
}

if (import.meta.main) process.exit(main(process.argv.slice(2)));
