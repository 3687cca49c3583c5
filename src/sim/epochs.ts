/**
 * A hand-driven replica group of real ordering cores across membership epochs, as the
 * replica runtime runs them (src/replica/epochs.ts, src/core/ordering/PROTOCOL.md §13):
 *
 * - a change scheduled at checkpoint seq `c` takes effect at each replica once it has
 *   executed `c` and `c` is stable in the old epoch (Q old members signed it);
 * - decisions of the old epoch above `c` are never executed;
 * - each member of the new epoch then runs a new core: ranks are the new members in id
 *   order, the cluster id names the epoch (so old signatures fail), and the core starts
 *   from the checkpoint at `c` (`epochStart`): members that executed `c` restore it,
 *   new members fetch it from the others before they vote;
 * - requests that were pending at the switch are submitted to the new core again;
 * - a message of another epoch is refused, with its epoch and the receiver's.
 *
 * Messages wait in a queue until the script delivers them, and time moves only when the
 * script ticks, as in cluster.ts. The application is the hash chain of checkers.ts.
 *
 * A member may be Byzantine (`makeByzantine`): in each epoch it runs a real core wrapped
 * in the simulator's ByzantineReplica (byzantine.ts), which lies on the way out with its
 * own key of that epoch, and it may also replay what it saw in earlier epochs into the
 * current one under the current epoch's label. A rotated-away key may be held by an
 * attacker (`holdOldKey`) that signs copies of its former owner's messages with it in the
 * new epoch, over a link opened with that key (`linkKey`). Both must be refused: an old
 * epoch's messages by the signatures' epoch-bound cluster id, the old key's copies at
 * delivery, whose link key is not the epoch's for that replica (a COMMIT carries no
 * signature: only the link says who sent it).
 */
import {
  type ClientRequest,
  type ClientTableExport,
  type CoreInput,
  type CoreParameters,
  type Effect,
  makeConfig,
  OrderingCore,
  type PeerMessage,
  type PersistedRecord,
  type Ready,
} from "../core/ordering/index.ts";
import { validatePeerMessage } from "../core/ordering/messages.ts";
import { signingBytes } from "../core/ordering/index.ts";
import { type ByzContext, ByzantineReplica } from "./byzantine.ts";
import { CLUSTER_PARAMETERS } from "./cluster.ts";
import { dedupe, nextChain } from "./checkers.ts";
import { answerFromRecords } from "./decided-log.ts";
import { requestBody, type SimKeyring } from "./crypto.ts";
import type { Prng } from "./prng.ts";
import type { ByzBehaviour } from "./scenario.ts";

/** A member of an epoch: its id and the index of its key in the keyring (rotation changes the key). */
export interface EpochMember {
  readonly id: number;
  readonly key: number;
}

export interface EpochSpec {
  readonly f: number;
  /** Ascending ids: a member's rank in the core is its index here. */
  readonly members: readonly EpochMember[];
}

export interface EpochMessage {
  readonly from: number;
  readonly to: number;
  readonly epoch: number;
  /** What the sender put on the wire: a Byzantine sender's may be malformed (checked on delivery). */
  readonly msg: PeerMessage;
  /**
   * The key the sender's link was opened with, when it is not the sender's key in `epoch`
   * (the holder of a rotated-away key: the runtime's mesh takes both keys of a replica
   * while its rotation waits for the switch). Delivery refuses a message whose link key
   * is not the epoch's key for its sender, as the runtime does (ordering-driver.ts): a
   * COMMIT carries no signature, so only the link says who sent it.
   */
  readonly linkKey?: number;
}

/** Messages a Byzantine member keeps from earlier epochs to replay into the current one. */
const OLD_EPOCH_MESSAGES_MAX = 256;
/** Old-epoch messages it replays per tick, and old-key copies an attacker sends per tick. */
const REPLAYS_PER_TICK = 2;

/** What a Byzantine member does: the simulator's behaviours in every epoch, and replays across epochs. */
export interface EpochByzantine {
  readonly behaviours: readonly ByzBehaviour[];
  readonly rng: Prng;
  /** Replays messages of earlier epochs into the current one, labelled with the current epoch. */
  readonly replayOldEpochs: boolean;
}

/** The application state at a checkpoint, as a state transfer hands it over. */
interface HeldState {
  readonly chain: Uint8Array;
  readonly clientLast: Map<string, number>;
  readonly appDigest: Uint8Array;
  readonly clients: ClientTableExport;
}

/** One replica process: its epoch, core, application state and what it decided. */
interface Node {
  epoch: number;
  core: OrderingCore | null;
  records: PersistedRecord[];
  chain: Uint8Array;
  clientLast: Map<string, number>;
  executed: number;
  /** Checkpoints taken or installed here, by seq (served to peers that fetch them). */
  held: Map<number, HeldState>;
  /** (seq, executed requests) in execution order, over every epoch. */
  decided: { seq: number; epoch: number; execute: ClientRequest[] }[];
  /** Requests submitted here that have not executed: submitted again after a switch. */
  submitted: Map<string, ClientRequest>;
  /** Old-epoch decisions above the switch point that were dropped, never executed. */
  droppedAboveSwitch: number;
  /** The old epoch's stable proof of each switch point, by old epoch: sent to a peer still there. */
  switchProofs: Map<number, Extract<PersistedRecord, { t: "stable" }>>;
  removed: boolean;
  /** Set for a Byzantine member: its behaviours, and the liar wrapped around its current core. */
  byzantine: EpochByzantine | null;
  byz: ByzantineReplica | null;
  /** A Byzantine member's record of the messages it sent and received, by epoch, for replays into later epochs. */
  oldEpochs: { epoch: number; msg: PeerMessage }[];
  /** The last epoch in which it sent its burst of old-epoch messages for seqs past the switch point. */
  burstEpoch: number;
}

export class EpochGroup {
  readonly specs: EpochSpec[] = [];
  /** Where each epoch after the first starts: (seq, state digest at it). */
  readonly starts: ({ seq: number; digest: Uint8Array } | null)[] = [null];
  readonly nodes = new Map<number, Node>();
  queue: EpochMessage[] = [];
  /** Messages refused because sender and receiver were in different epochs. */
  readonly refused: { from: number; to: number; reason: string }[] = [];
  /** Messages refused before the core because they were malformed (a Byzantine sender's). */
  malformed = 0;
  /** Messages sent by Byzantine members and by the holder of a rotated-away key (what the attacks tried). */
  readonly attacks = { byzantine: 0, oldEpochReplays: 0, oldKeyCopies: 0 };
  /** The simulated time, in ticks (what a Byzantine member's timing attacks read). */
  now = 0;
  /** Messages a Byzantine member sent with a delay: released when their tick comes. */
  private delayed: { at: number; m: EpochMessage }[] = [];
  /** An attacker holding a member's rotated-away key: signs copies of that member's messages with it. */
  private oldKey: { id: number; key: number; rng: Prng } | null = null;
  /** A change waiting for its checkpoint: the next epoch's group and the seq it starts after. */
  private scheduled: { spec: EpochSpec; at: number } | null = null;
  private readonly params: Partial<CoreParameters>;

  constructor(
    readonly keyring: SimKeyring,
    first: EpochSpec,
    params: Partial<CoreParameters> = {},
    readonly name = "epoch-test",
  ) {
    this.params = { ...CLUSTER_PARAMETERS, ...params };
    this.specs.push(first);
    for (const member of first.members) this.nodes.set(member.id, this.newNode(0));
    for (const member of first.members) this.startCore(member.id, 0, undefined);
  }

  get checkpointInterval(): number {
    return this.params.checkpointInterval ?? 4;
  }

  private newNode(epoch: number): Node {
    return {
      epoch,
      core: null,
      records: [],
      chain: new Uint8Array(32),
      clientLast: new Map(),
      executed: 0,
      held: new Map(),
      decided: [],
      submitted: new Map(),
      droppedAboveSwitch: 0,
      switchProofs: new Map(),
      removed: false,
      byzantine: null,
      byz: null,
      oldEpochs: [],
      burstEpoch: 0,
    };
  }

  node(id: number): Node {
    const node = this.nodes.get(id);
    if (node === undefined) throw new Error(`no replica ${id}`);
    return node;
  }

  /** The cluster id of an epoch: the name, then `/e<epoch>` from epoch 1 on (what every signature binds). */
  clusterIdOf(epoch: number): string {
    return epoch === 0 ? this.name : `${this.name}/e${epoch}`;
  }

  private startCore(id: number, epoch: number, restored: PersistedRecord[] | undefined): void {
    const spec = this.specs[epoch] as EpochSpec;
    const rank = spec.members.findIndex((member) => member.id === id);
    if (rank < 0) throw new Error(`replica ${id} is not a member of epoch ${epoch}`);
    const start = this.starts[epoch] ?? undefined;
    const cfg = makeConfig(
      {
        id: rank,
        n: spec.members.length,
        f: spec.f,
        mode: "bft",
        clusterId: this.clusterIdOf(epoch),
        ...(start === undefined ? {} : { epochStart: start }),
      },
      this.params,
    );
    const node = this.node(id);
    const keyIndex = (spec.members[rank] as EpochMember).key;
    const crypto = this.keyring.cryptoForMembers(
      keyIndex,
      spec.members.map((member) => member.key),
    );
    node.epoch = epoch;
    node.core = new OrderingCore(cfg, crypto, restored);
    node.byz =
      node.byzantine === null
        ? null
        : new ByzantineReplica(
            this.byzContext(id, epoch, rank, keyIndex, cfg),
            node.byzantine.behaviours,
            node.byzantine.rng.fork(epoch),
            0,
          );
  }

  /** What a Byzantine member's liar may do in `epoch`: send as its rank there, sign with its key of that epoch. */
  private byzContext(id: number, epoch: number, rank: number, keyIndex: number, cfg: ReturnType<typeof makeConfig>): ByzContext {
    const spec = this.specs[epoch] as EpochSpec;
    return {
      id: rank,
      n: spec.members.length,
      clusterId: this.clusterIdOf(epoch),
      signAsSelf: (bytes) => this.keyring.signAsReplica(keyIndex, bytes),
      now: () => this.now,
      send: (toRank, msg, extraDelay = 0) => {
        const to = spec.members[toRank]?.id;
        if (to === undefined || to === id) return;
        this.attacks.byzantine++;
        const m: EpochMessage = { from: id, to, epoch, msg: msg as PeerMessage };
        if (extraDelay > 0) this.delayed.push({ at: this.now + extraDelay, m });
        else this.queue.push(m);
      },
      executed: () => [...this.nodes.values()].flatMap((node) => node.decided.flatMap((d) => d.execute)).slice(-64),
      params: cfg,
    };
  }

  /**
   * Makes member `id` Byzantine from now on (in this epoch and every later one it is a
   * member of). Its decisions are not checked: a faulty replica may execute anything.
   */
  makeByzantine(id: number, byzantine: EpochByzantine): void {
    const node = this.node(id);
    node.byzantine = byzantine;
    const spec = this.specs[node.epoch] as EpochSpec;
    const rank = spec.members.findIndex((member) => member.id === id);
    if (node.core !== null && rank >= 0) {
      const keyIndex = (spec.members[rank] as EpochMember).key;
      const cfg = makeConfig(
        { id: rank, n: spec.members.length, f: spec.f, mode: "bft", clusterId: this.clusterIdOf(node.epoch) },
        this.params,
      );
      node.byz = new ByzantineReplica(
        this.byzContext(id, node.epoch, rank, keyIndex, cfg),
        byzantine.behaviours,
        byzantine.rng.fork(node.epoch),
        0,
      );
    }
  }

  /**
   * An attacker keeps member `id`'s key `key` after it was rotated away: from the epoch in
   * which `id` no longer has that key, it signs copies of `id`'s messages (some altered)
   * with it, as if it were `id`.
   */
  holdOldKey(id: number, key: number, rng: Prng): void {
    this.oldKey = { id, key, rng };
  }

  /** Whether member `id` is correct (its decisions are checked). */
  correct(id: number): boolean {
    return this.node(id).byzantine === null;
  }

  /** A request of client `client`, signed by it. */
  request(client: number, seq: number, payload = "x"): ClientRequest {
    const key = this.keyring.clients[client];
    if (key === undefined) throw new Error(`no client ${client}`);
    const body = requestBody(key, seq, 1, new TextEncoder().encode(payload));
    return { client: key.publicHex, seq, span: 1, body, sig: this.keyring.signRequest(key, body) };
  }

  /** Submits a request to every replica that runs a core (a client sends to all). */
  submitAll(req: ClientRequest): void {
    for (const [id, node] of this.nodes) {
      if (node.core === null) continue;
      node.submitted.set(`${req.client}:${req.seq}`, req);
      this.step(id, { kind: "request", req, authenticated: true });
    }
  }

  /**
   * Decides the next epoch's group: it takes effect at the checkpoint `at` (a multiple of
   * K above what any replica executed), as a decided admin command would make it.
   */
  schedule(spec: EpochSpec, at: number): void {
    if (this.scheduled !== null) throw new Error("a change is already scheduled");
    if (at % this.checkpointInterval !== 0) throw new Error("a change takes effect at a checkpoint");
    for (const node of this.nodes.values()) if (node.executed >= at) throw new Error(`replicas already executed ${at}`);
    this.scheduled = { spec, at };
    this.specs.push(spec);
    this.starts.push(null);
  }

  /**
   * Starts a replica that is new in the current epoch: it knows the epoch's group and
   * starting checkpoint (in the runtime: from f+1 matching answers) and fetches the state.
   */
  join(id: number): void {
    const epoch = this.specs.length - 1;
    if (this.starts[epoch] === null) throw new Error(`epoch ${epoch} has not started yet`);
    if (!this.nodes.has(id)) this.nodes.set(id, this.newNode(epoch));
    this.startCore(id, epoch, undefined);
  }

  crash(id: number): void {
    this.node(id).core = null;
    this.queue = this.queue.filter((m) => m.to !== id);
  }

  step(id: number, input: CoreInput): Ready {
    const node = this.node(id);
    const core = node.core;
    if (core === null) return { persist: [], effects: [] };
    const epoch = node.epoch;
    const ready = core.step(input);
    node.records.push(...ready.persist);
    for (const effect of ready.effects) {
      if (node.core !== core) break; // switched epoch meanwhile: the old core's effects are moot
      this.perform(id, node, epoch, effect);
    }
    for (const record of ready.persist) {
      if (record.t === "stable" && node.core === core) this.maybeSwitch(id, node, record);
    }
    return ready;
  }

  private perform(id: number, node: Node, epoch: number, effect: Effect): void {
    const spec = this.specs[epoch] as EpochSpec;
    switch (effect.kind) {
      case "send": {
        if (node.byz !== null) {
          if (node.byzantine?.replayOldEpochs) this.recordForReplay(node, epoch, effect.msg);
          node.byz.outgoing(effect.to, effect.msg);
          return;
        }
        const targets =
          effect.to === "all"
            ? spec.members.map((member) => member.id).filter((other) => other !== id)
            : [(spec.members[effect.to] as EpochMember).id];
        for (const to of targets) this.queue.push({ from: id, to, epoch, msg: effect.msg });
        return;
      }
      case "decide": {
        const switchAt = this.switchPoint(epoch);
        if (switchAt !== null && effect.seq > switchAt) {
          node.droppedAboveSwitch++;
          return;
        }
        if (effect.seq <= node.executed) return;
        const execute = dedupe(effect.batch, node.clientLast);
        node.chain = nextChain(node.chain, effect.seq, execute);
        node.executed = effect.seq;
        node.decided.push({ seq: effect.seq, epoch, execute });
        for (const req of effect.execute) node.submitted.delete(`${req.client}:${req.seq}`);
        return;
      }
      case "takeCheckpoint": {
        if (effect.seq !== node.executed) return;
        this.hold(node, effect.seq, effect.clients);
        this.step(id, { kind: "checkpointReady", seq: effect.seq, appDigest: node.chain });
        return;
      }
      case "fetchState":
        this.serveState(id, node, effect.seq, effect.stateDigest, effect.from);
        return;
      case "serveDecided":
        // From this epoch's records only (a switch starts them afresh), as the runtime
        // serves only decisions after its epoch's start.
        if (node.byz !== null) return;
        this.queue.push({ from: id, to: (spec.members[effect.to] as EpochMember).id, epoch, msg: answerFromRecords(node.records, effect) });
        return;
      default:
        return;
    }
  }

  /** The seq after which epoch `epoch` ends (its successor's start), or null while it is the last. */
  private switchPoint(epoch: number): number | null {
    if (epoch === this.specs.length - 1) return null;
    if (this.scheduled !== null && epoch === this.specs.length - 2) return this.scheduled.at;
    return (this.starts[epoch + 1] as { seq: number }).seq;
  }

  private hold(node: Node, seq: number, clients: ClientTableExport): void {
    node.held.set(seq, { chain: node.chain, clientLast: new Map(node.clientLast), appDigest: node.chain, clients });
  }

  /** Hands over the state at `seq` from the first listed replica that holds it (rank order). */
  private serveState(id: number, node: Node, seq: number, stateDigest: Uint8Array, from: readonly number[]): void {
    const spec = this.specs[node.epoch] as EpochSpec;
    for (const rank of from) {
      const source = this.nodes.get((spec.members[rank] as EpochMember).id);
      const held = source?.core === null ? undefined : source?.held.get(seq);
      if (held === undefined) continue;
      node.chain = held.chain;
      node.clientLast = new Map(held.clientLast);
      node.executed = seq;
      node.held.set(seq, held);
      this.step(id, { kind: "snapshotInstalled", seq, stateDigest, appDigest: held.appDigest, clients: held.clients });
      return;
    }
  }

  /** At the stable checkpoint that ends its epoch, a replica moves to the next one (or stops, if removed). */
  private maybeSwitch(id: number, node: Node, stable: Extract<PersistedRecord, { t: "stable" }>): void {
    const at = this.switchPoint(node.epoch);
    if (at === null || stable.seq !== at || node.executed !== at) return;
    node.switchProofs.set(node.epoch, stable);
    const own = [...node.records].reverse().find((r) => (r.t === "checkpoint" || r.t === "snapshot") && r.seq === at);
    if (own === undefined || (own.t !== "checkpoint" && own.t !== "snapshot")) throw new Error(`replica ${id} has no checkpoint at ${at}`);
    const next = node.epoch + 1;
    if (this.scheduled !== null && next === this.specs.length - 1) {
      this.starts[next] = { seq: at, digest: own.stateDigest };
      this.scheduled = null;
    }
    const start = this.starts[next] as { seq: number; digest: Uint8Array };
    if (start.seq !== at || !bytesSame(start.digest, own.stateDigest)) throw new Error(`replica ${id} diverged at the switch point ${at}`);
    const spec = this.specs[next] as EpochSpec;
    if (!spec.members.some((member) => member.id === id)) {
      node.core = null;
      node.removed = true;
      node.epoch = next;
      return;
    }
    const snapshot: PersistedRecord = {
      t: "snapshot",
      seq: at,
      stateDigest: own.stateDigest,
      appDigest: own.appDigest,
      clients: own.clients,
      proof: [],
    };
    node.records = [snapshot];
    this.startCore(id, next, [snapshot]);
    for (const req of node.submitted.values()) this.step(id, { kind: "request", req, authenticated: true });
  }

  tick(ticks = 1): void {
    for (let t = 0; t < ticks; t++) {
      this.now++;
      for (const id of [...this.nodes.keys()]) this.step(id, { kind: "tick" });
      this.attackTick();
    }
  }

  /** A Byzantine member remembers what it sent and received; it replays them once the epoch has moved on. */
  private recordForReplay(node: Node, epoch: number, msg: PeerMessage): void {
    node.oldEpochs.push({ epoch, msg });
    if (node.oldEpochs.length > OLD_EPOCH_MESSAGES_MAX * 2) node.oldEpochs.splice(0, OLD_EPOCH_MESSAGES_MAX);
  }

  /** The attacks that are not the liar's: delayed sends, old-epoch replays, old-key copies. */
  private attackTick(): void {
    const due = this.delayed.filter((d) => d.at <= this.now);
    if (due.length > 0) {
      this.delayed = this.delayed.filter((d) => d.at > this.now);
      for (const d of due) this.queue.push(d.m);
    }
    for (const [id, node] of this.nodes) {
      if (node.byz === null || node.core === null) continue;
      node.byz.tick();
      const byzantine = node.byzantine as EpochByzantine;
      if (!byzantine.replayOldEpochs || node.epoch === 0) continue;
      // Messages of an earlier epoch were signed under that epoch's cluster id: labelled with
      // the current epoch, their signatures must fail.
      const old = node.oldEpochs.filter((o) => o.epoch < node.epoch);
      const spec = this.specs[node.epoch] as EpochSpec;
      // Once per epoch, at once: every old message about a seq past the switch point (the
      // old epoch's decisions there were dropped, and the new epoch orders those seqs
      // again), to every member: with the signatures bound to the epoch, none counts.
      if (node.burstEpoch !== node.epoch) {
        node.burstEpoch = node.epoch;
        const from = (this.starts[node.epoch] as { seq: number }).seq;
        for (const { msg } of old) {
          if (!("seq" in msg) || typeof msg.seq !== "number" || msg.seq <= from) continue;
          for (const member of spec.members) {
            if (member.id === id) continue;
            this.attacks.oldEpochReplays++;
            this.queue.push({ from: id, to: member.id, epoch: node.epoch, msg });
          }
        }
      }
      for (let i = 0; i < REPLAYS_PER_TICK && old.length > 0; i++) {
        const msg = (old[byzantine.rng.int(0, old.length - 1)] as { msg: PeerMessage }).msg;
        const to = spec.members[byzantine.rng.int(0, spec.members.length - 1)]?.id;
        if (to === undefined || to === id) continue;
        this.attacks.oldEpochReplays++;
        this.queue.push({ from: id, to, epoch: node.epoch, msg });
      }
    }
    this.oldKeyTick();
  }

  /**
   * The holder of a rotated-away key: once its former owner's current epoch names another
   * key, copies of the owner's queued messages (votes with another digest) go out signed
   * with the old key under the current epoch's cluster id.
   */
  private oldKeyTick(): void {
    const attacker = this.oldKey;
    if (attacker === null) return;
    const owner = this.nodes.get(attacker.id);
    if (owner === undefined || owner.core === null) return;
    const spec = this.specs[owner.epoch] as EpochSpec;
    const rank = spec.members.findIndex((member) => member.id === attacker.id);
    if (rank < 0 || (spec.members[rank] as EpochMember).key === attacker.key) return;
    // The owner may itself be Byzantine and queue anything: only well-formed signed messages are copied.
    const mine = this.queue.filter(
      (m) => m.from === attacker.id && m.epoch === owner.epoch && validatePeerMessage(m.msg) !== null && SIGNED.has(m.msg.t),
    );
    for (let i = 0; i < REPLAYS_PER_TICK && mine.length > 0; i++) {
      const original = mine[attacker.rng.int(0, mine.length - 1)] as EpochMessage;
      const copy = { ...original.msg } as PeerMessage & { sig: Uint8Array };
      if ((copy.t === "PREPARE" || copy.t === "COMMIT" || copy.t === "CHECKPOINT") && attacker.rng.chance(0.5)) {
        copy.digest = attacker.rng.bytes(32);
      }
      copy.sig = this.keyring.signAsReplica(
        attacker.key,
        signingBytes(copy as Parameters<typeof signingBytes>[0], this.clusterIdOf(owner.epoch)),
      );
      const to = spec.members[attacker.rng.int(0, spec.members.length - 1)]?.id;
      if (to === undefined || to === attacker.id) continue;
      this.attacks.oldKeyCopies++;
      this.queue.push({ from: attacker.id, to, epoch: owner.epoch, msg: copy, linkKey: attacker.key });
    }
  }

  /** Delivers queued messages until none is left (or `maxRounds`); one of another epoch is refused. */
  deliverAll(keep: (m: EpochMessage) => boolean = () => true, maxRounds = 50, order?: (batch: EpochMessage[]) => EpochMessage[]): void {
    for (let round = 0; round < maxRounds && this.queue.length > 0; round++) {
      const batch = order === undefined ? this.queue : order(this.queue);
      this.queue = [];
      for (const m of batch) {
        if (!keep(m)) continue;
        const node = this.nodes.get(m.to);
        if (node === undefined || node.core === null) continue;
        if (node.epoch !== m.epoch) {
          this.refused.push({ from: m.from, to: m.to, reason: `a message of epoch ${m.epoch}; this replica is in epoch ${node.epoch}` });
          // A peer still in an epoch this replica left gets the proof that ended it, as the runtime sends it.
          const proof = node.switchProofs.get(m.epoch);
          if (proof !== undefined) {
            const stable = { seq: proof.seq, digest: proof.digest, proof: proof.proof };
            const msg: PeerMessage = { t: "STATE_RESPONSE", kind: "decided", nonce: 0, items: [], stable, lastExecuted: proof.seq };
            this.queue.push({ from: m.to, to: m.from, epoch: m.epoch, msg });
          }
          continue;
        }
        const members = (this.specs[m.epoch] as EpochSpec).members;
        const rank = members.findIndex((member) => member.id === m.from);
        if (rank < 0) {
          this.refused.push({ from: m.from, to: m.to, reason: `replica ${m.from} is not a member of epoch ${m.epoch}` });
          continue;
        }
        if (m.linkKey !== undefined && m.linkKey !== (members[rank] as EpochMember).key) {
          this.refused.push({
            from: m.from,
            to: m.to,
            reason: `a link opened with a key that is not replica ${m.from}'s in epoch ${m.epoch}`,
          });
          continue;
        }
        const msg = validatePeerMessage(m.msg);
        if (msg === null) {
          this.malformed++;
          continue;
        }
        this.step(m.to, { kind: "message", from: rank, msg });
        if (node.byz !== null && node.core !== null && node.epoch === m.epoch) {
          if (node.byzantine?.replayOldEpochs) this.recordForReplay(node, m.epoch, msg);
          node.byz.incoming(rank, msg);
        }
      }
    }
  }

  runUntil(done: () => boolean, maxTicks = 2000, keep?: (m: EpochMessage) => boolean): number {
    for (let t = 0; t < maxTicks; t++) {
      if (done()) return t;
      this.tick();
      this.deliverAll(keep);
    }
    if (!done()) throw new Error(`condition not reached in ${maxTicks} ticks`);
    return maxTicks;
  }

  /** Feeds a message to a replica as if from `fromRank` of its current epoch, bypassing the epoch check (tests). */
  inject(to: number, fromRank: number, msg: PeerMessage): Ready {
    return this.step(to, { kind: "message", from: fromRank, msg });
  }
}

/** Messages that carry a replica's signature (what an old key can be used to sign). */
const SIGNED: ReadonlySet<string> = new Set(["PRE_PREPARE", "PREPARE", "COMMIT", "CHECKPOINT", "VIEW_CHANGE", "NEW_VIEW"]);

function bytesSame(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}
