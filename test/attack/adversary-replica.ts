/**
 * A test-only compromised replica that speaks the real peer protocol (run on purpose by
 * the attack harness and one smoke test; never part of the shipped binary):
 *
 *   bun test/attack/adversary-replica.ts --config C --id N --behaviour B [--delay-ms D] [--active]
 *
 * It runs the real replica runtime (`Replica`, with its real key, store, listener and peer
 * mesh) and taps it where peer messages leave and arrive: every outgoing peer message
 * (the mesh's `send`, which `broadcast` goes through too) and every incoming one (the
 * ordering driver's `onPeerMessage`). The tap replaces those two methods on this one
 * instance; nothing in the runtime knows about it. Everything it sends is authenticated
 * and MACed by the real mesh, and everything it signs is signed with the replica's own key,
 * as an attacker holding that host would.
 *
 * It starts honest, so that the harness can measure the same cluster fault-free first;
 * the line `attack` on standard input (or `--active`) turns the behaviour on, the line
 * `peace` off again (the harness measures fault-free once more after the attack):
 *
 * - `slow-leader`: holds each of its PRE_PREPAREs for D ms before sending it (default 90%
 *   of the ordering core's progress timeout, so just under the heartbeat and well under the
 *   request timeouts): only the throughput and starvation expectations can catch it.
 * - `equivocating-leader`: signs two batches for each sequence number: the real one to the
 *   lowest other replica, the same batch less its last request to the others (a one-request
 *   batch goes to the lowest other replica only), so that no batch gathers a quorum.
 * - `flooding`: sends, as fast as its links drain, a round robin of FORWARDs of real client
 *   requests it has seen, STATE_REQUESTs for the whole log window, PREPAREs with bad
 *   signatures for the current view, and envelopes that do not decode.
 * - `mute`: sends nothing to its peers (it keeps serving its clients).
 * - `replayer`: keeps the last ordering messages it sent and received (all validly signed)
 *   and re-sends them to every peer, oldest first, as fast as its links drain.
 *
 * It logs like a replica (JSON lines on stdout) and adds lines whose msg starts with
 * "adversary": what it turned on, each proposal it delayed or split, and, every second,
 * what it flooded or dropped.
 */
import { randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { requireClusterConfig } from "../../src/config/cluster.ts";
import { DEFAULT_PARAMETERS } from "../../src/core/ordering/config.ts";
import {
  batchBytes,
  type ClientRequest,
  type PeerMessage,
  type PrePrepare,
  signingBytes,
  validatePeerMessage,
} from "../../src/core/ordering/messages.ts";
import { sign } from "../../src/crypto/ed25519.ts";
import { sha256 } from "../../src/crypto/hash.ts";
import { loadSigningKeyFile, type SigningKey } from "../../src/crypto/keys.ts";
import { createLog, type Log } from "../../src/replica/log.ts";
import { TICK_MS } from "../../src/replica/ordering-driver.ts";
import { decodeEnvelope, encodeEnvelope } from "../../src/replica/peer-messages.ts";
import { Replica } from "../../src/replica/replica.ts";
import type { Canonical } from "../../wire/canonical.ts";

export const BEHAVIOURS = ["slow-leader", "equivocating-leader", "flooding", "mute", "replayer"] as const;
export type BehaviourName = (typeof BEHAVIOURS)[number];

/** Just under the heartbeat: 90% of the ordering core's progress timeout (450 ms by default). */
export const SLOW_LEADER_DELAY_MS_DEFAULT = Math.floor(0.9 * DEFAULT_PARAMETERS.progressTimeoutTicks * TICK_MS);
/** Messages one flood or replay turn sends to each peer at most, so that the replica's own work still runs. */
const FLOOD_MESSAGES_PER_TURN_MAX = 64;
/** Ordering messages the replayer keeps. */
const REPLAY_MESSAGES_MAX = 4096;
/** Client requests the flooder keeps to forward again. */
const FLOOD_REQUESTS_MAX = 256;
/** Requests in one flooded FORWARD. */
const FLOOD_FORWARD_REQUESTS = 16;
/** Counters are logged this often while the attack is on. */
const REPORT_INTERVAL_MS = 1_000;
/** Seqs remembered per adversary (split proposals, delayed ones logged): a retransmission repeats the same split. */
const SEQS_REMEMBERED_MAX = 1024;

/** Sends an envelope to one peer for real; false when the link dropped it (down or full). */
type SendFn = (to: number, bytes: Uint8Array) => boolean;

/** What an adversary does with the peer messages of the replica it holds. */
export interface Behaviour {
  /** Turns the attack on. */
  start(): void;
  /** An outgoing peer message (envelope bytes) while the attack is on; `send` sends it for real. */
  outgoing(to: number, bytes: Uint8Array, send: SendFn): boolean;
  /** An incoming peer message, seen before the replica processes it (always, on or off). */
  incoming(from: number, bytes: Uint8Array): void;
  stop(): void;
}

export interface AdversaryContext {
  readonly id: number;
  readonly n: number;
  readonly clusterId: string;
  readonly key: SigningKey;
  readonly log: Log;
  /** Sends for real (not through the tap). */
  readonly send: SendFn;
  /** The replica's view and last decided seq now. */
  readonly status: () => { view: number; lastDecided: number };
}

/** The ordering message inside a peer envelope, or null for anything else. */
export function orderingMessage(bytes: Uint8Array): PeerMessage | null {
  const envelope = decodeEnvelope(bytes);
  if (envelope === null || envelope.kind !== "ordering") return null;
  return validatePeerMessage(envelope.message);
}

function envelopeOf(msg: PeerMessage): Uint8Array {
  return encodeEnvelope("ordering", msg as unknown as Canonical);
}

function peersOf(ctx: AdversaryContext): number[] {
  return Array.from({ length: ctx.n }, (_, id) => id).filter((id) => id !== ctx.id);
}

// ---------------------------------------------------------------------------------------
// Slow leader
// ---------------------------------------------------------------------------------------

/** Holds every PRE_PREPARE `delayMs` after the core sent it; everything else goes at once. */
export class SlowLeader implements Behaviour {
  private readonly held: { due: number; to: number; seq: number; bytes: Uint8Array; send: SendFn }[] = [];
  private timer: ReturnType<typeof setInterval> | null = null;
  private readonly loggedSeqs = new Set<number>();

  constructor(
    private readonly ctx: AdversaryContext,
    private readonly delayMs: number,
  ) {}

  start(): void {
    this.ctx.log.info("adversary attack on", { behaviour: "slow-leader", delayMs: this.delayMs });
    this.timer = setInterval(() => this.release(), TICK_MS / 2);
  }

  outgoing(to: number, bytes: Uint8Array, send: SendFn): boolean {
    const msg = orderingMessage(bytes);
    if (msg?.t !== "PRE_PREPARE") return send(to, bytes);
    this.held.push({ due: performance.now() + this.delayMs, to, seq: msg.seq, bytes, send });
    return true;
  }

  incoming(): void {}

  /** Stops holding: what is held goes out now, so that nothing the core sent is lost. */
  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    for (const item of this.held.splice(0)) item.send(item.to, item.bytes);
  }

  private release(): void {
    const now = performance.now();
    while (this.held.length > 0 && (this.held[0]?.due ?? Number.POSITIVE_INFINITY) <= now) {
      const item = this.held.shift() as (typeof this.held)[number];
      item.send(item.to, item.bytes);
      if (!this.loggedSeqs.has(item.seq)) {
        this.loggedSeqs.add(item.seq);
        if (this.loggedSeqs.size > SEQS_REMEMBERED_MAX) this.loggedSeqs.delete(this.loggedSeqs.values().next().value as number);
        this.ctx.log.info("adversary proposal delayed", { seq: item.seq, heldMs: Math.round(now - (item.due - this.delayMs)) });
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Equivocating leader
// ---------------------------------------------------------------------------------------

/** Sends one signed batch per seq to the lowest other replica and another signed batch to the rest. */
export class EquivocatingLeader implements Behaviour {
  /** seq -> the view split and its second proposal (null: withheld from the second group). */
  private readonly splits = new Map<number, { view: number; other: PrePrepare | null }>();
  private readonly groupA: number;

  constructor(private readonly ctx: AdversaryContext) {
    this.groupA = peersOf(ctx)[0] as number;
  }

  start(): void {
    this.ctx.log.info("adversary attack on", { behaviour: "equivocating-leader", firstGroup: [this.groupA] });
  }

  outgoing(to: number, bytes: Uint8Array, send: SendFn): boolean {
    const msg = orderingMessage(bytes);
    if (msg?.t !== "PRE_PREPARE" || msg.batch === null || msg.view % this.ctx.n !== this.ctx.id) return send(to, bytes);
    if (to === this.groupA) return send(to, bytes);
    const other = this.secondProposal(msg, msg.batch);
    return other === null ? true : send(to, envelopeOf(other));
  }

  incoming(): void {}

  stop(): void {}

  private secondProposal(m: PrePrepare, batch: ClientRequest[]): PrePrepare | null {
    const known = this.splits.get(m.seq);
    if (known !== undefined && known.view === m.view) return known.other;
    let other: PrePrepare | null = null;
    if (batch.length >= 2) {
      const shorter = batch.slice(0, -1);
      const unsigned: PrePrepare = { ...m, batch: null, digest: sha256(batchBytes(shorter)), sig: new Uint8Array(64) };
      unsigned.sig = sign(this.ctx.key, signingBytes(unsigned, this.ctx.clusterId));
      other = { ...unsigned, batch: shorter };
    }
    this.splits.set(m.seq, { view: m.view, other });
    if (this.splits.size > SEQS_REMEMBERED_MAX) this.splits.delete(this.splits.keys().next().value as number);
    this.ctx.log.info("adversary proposal split", {
      view: m.view,
      seq: m.seq,
      requests: batch.length,
      second: other === null ? "withheld" : `${batch.length - 1} requests`,
    });
    return other;
  }
}

// ---------------------------------------------------------------------------------------
// Mute
// ---------------------------------------------------------------------------------------

export class Mute implements Behaviour {
  private dropped = 0;
  private timer: ReturnType<typeof setInterval> | null = null;

  constructor(private readonly ctx: AdversaryContext) {}

  start(): void {
    this.ctx.log.info("adversary attack on", { behaviour: "mute" });
    this.timer = setInterval(() => this.ctx.log.info("adversary muted", { droppedTotal: this.dropped }), REPORT_INTERVAL_MS);
  }

  outgoing(): boolean {
    this.dropped++;
    return false;
  }

  incoming(): void {}

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }
}

// ---------------------------------------------------------------------------------------
// Flooding and replaying: a pump that sends as fast as the links drain
// ---------------------------------------------------------------------------------------

/**
 * Calls `next(peer)` for each peer and sends what it returns, up to
 * FLOOD_MESSAGES_PER_TURN_MAX per peer per turn or until the link refuses (its queue is
 * full); then yields to the event loop and goes on.
 */
class Pump {
  sent = 0;
  refused = 0;
  private running = false;

  constructor(
    private readonly ctx: AdversaryContext,
    private readonly next: (peer: number) => Uint8Array | null,
  ) {}

  start(): void {
    this.running = true;
    this.turn();
  }

  stop(): void {
    this.running = false;
  }

  private turn(): void {
    if (!this.running) return;
    for (const peer of peersOf(this.ctx)) {
      for (let i = 0; i < FLOOD_MESSAGES_PER_TURN_MAX; i++) {
        const bytes = this.next(peer);
        if (bytes === null) break;
        if (!this.ctx.send(peer, bytes)) {
          this.refused++;
          break;
        }
        this.sent++;
      }
    }
    setImmediate(() => this.turn());
  }
}

/** FORWARD, STATE_REQUEST, bad-signature PREPARE and undecodable envelopes, round robin. */
export class Flooding implements Behaviour {
  private readonly requests: ClientRequest[] = [];
  private readonly pump: Pump;
  private readonly kinds = ["forward", "state-request", "bad-prepare", "garbage"] as const;
  private readonly counts = { forward: 0, "state-request": 0, "bad-prepare": 0, garbage: 0 };
  private turn = 0;
  private nonce = 1;
  private timer: ReturnType<typeof setInterval> | null = null;

  constructor(private readonly ctx: AdversaryContext) {
    this.pump = new Pump(ctx, () => this.nextMessage());
  }

  start(): void {
    this.ctx.log.info("adversary attack on", { behaviour: "flooding", kinds: [...this.kinds] });
    this.pump.start();
    this.timer = setInterval(
      () => this.ctx.log.info("adversary flooded", { sentTotal: this.pump.sent, refusedTotal: this.pump.refused, ...this.counts }),
      REPORT_INTERVAL_MS,
    );
  }

  outgoing(to: number, bytes: Uint8Array, send: SendFn): boolean {
    this.keepRequests(orderingMessage(bytes));
    return send(to, bytes);
  }

  incoming(_from: number, bytes: Uint8Array): void {
    this.keepRequests(orderingMessage(bytes));
  }

  stop(): void {
    this.pump.stop();
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  /** Real, validly signed client requests, from FORWARDs and proposals seen. */
  private keepRequests(msg: PeerMessage | null): void {
    const found = msg?.t === "FORWARD" ? msg.requests : msg?.t === "PRE_PREPARE" && msg.batch !== null ? msg.batch : [];
    for (const request of found) {
      this.requests.push(request);
      if (this.requests.length > FLOOD_REQUESTS_MAX) this.requests.shift();
    }
  }

  private nextMessage(): Uint8Array {
    const kind = this.kinds[this.turn++ % this.kinds.length] as (typeof this.kinds)[number];
    const { view, lastDecided } = this.ctx.status();
    switch (kind) {
      case "forward": {
        if (this.requests.length === 0) return this.garbage();
        const start = this.turn % this.requests.length;
        const requests = [...this.requests.slice(start), ...this.requests.slice(0, start)].slice(0, FLOOD_FORWARD_REQUESTS);
        this.counts.forward++;
        return envelopeOf({ t: "FORWARD", requests });
      }
      case "state-request":
        this.counts["state-request"]++;
        return envelopeOf({
          t: "STATE_REQUEST",
          kind: "decided",
          seq: Math.max(1, lastDecided - DEFAULT_PARAMETERS.logWindow + 1),
          toSeq: lastDecided + DEFAULT_PARAMETERS.logWindow,
          digest: null,
          nonce: this.nonce++,
        });
      case "bad-prepare":
        this.counts["bad-prepare"]++;
        return envelopeOf({
          t: "PREPARE",
          view,
          seq: lastDecided + 1 + (this.turn % DEFAULT_PARAMETERS.pipelineDepth),
          digest: new Uint8Array(randomBytes(32)),
          replica: this.ctx.id,
          sig: new Uint8Array(randomBytes(64)),
        });
      case "garbage":
        return this.garbage();
    }
  }

  private garbage(): Uint8Array {
    this.counts.garbage++;
    return new Uint8Array(randomBytes(200));
  }
}

/** Re-sends recorded ordering messages (its own and its peers', all validly signed), oldest first. */
export class Replayer implements Behaviour {
  private readonly recorded: Uint8Array[] = [];
  private readonly pump: Pump;
  private cursor = 0;
  private timer: ReturnType<typeof setInterval> | null = null;

  constructor(private readonly ctx: AdversaryContext) {
    this.pump = new Pump(ctx, () => this.nextMessage());
  }

  start(): void {
    this.ctx.log.info("adversary attack on", { behaviour: "replayer", recorded: this.recorded.length });
    this.pump.start();
    this.timer = setInterval(
      () =>
        this.ctx.log.info("adversary replayed", { sentTotal: this.pump.sent, refusedTotal: this.pump.refused, kept: this.recorded.length }),
      REPORT_INTERVAL_MS,
    );
  }

  outgoing(to: number, bytes: Uint8Array, send: SendFn): boolean {
    this.record(bytes);
    return send(to, bytes);
  }

  incoming(_from: number, bytes: Uint8Array): void {
    this.record(bytes);
  }

  stop(): void {
    this.pump.stop();
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  private record(bytes: Uint8Array): void {
    if (orderingMessage(bytes) === null) return;
    this.recorded.push(bytes.slice());
    if (this.recorded.length > REPLAY_MESSAGES_MAX) this.recorded.shift();
  }

  private nextMessage(): Uint8Array | null {
    if (this.recorded.length === 0) return null;
    this.cursor = (this.cursor + 1) % this.recorded.length;
    return this.recorded[this.cursor] as Uint8Array;
  }
}

export function makeBehaviour(name: BehaviourName, ctx: AdversaryContext, delayMs: number): Behaviour {
  switch (name) {
    case "slow-leader":
      return new SlowLeader(ctx, delayMs);
    case "equivocating-leader":
      return new EquivocatingLeader(ctx);
    case "flooding":
      return new Flooding(ctx);
    case "mute":
      return new Mute(ctx);
    case "replayer":
      return new Replayer(ctx);
  }
}

// ---------------------------------------------------------------------------------------
// The tap and the program
// ---------------------------------------------------------------------------------------

/**
 * Puts `behaviour` between the replica and its peers. It reaches into two private members
 * of this one instance (a type check fails if they are renamed): the mesh's `send`, which
 * every outgoing peer message goes through (`broadcast` calls it per peer), and the
 * ordering driver's `onPeerMessage`, which the mesh hands every incoming one to.
 */
export function tapReplica(
  replica: Replica,
  makeFor: (send: SendFn) => Behaviour,
): { activate: () => void; deactivate: () => void; behaviour: Behaviour } {
  const mesh = replica["mesh"];
  const ordering = replica["ordering"];
  const realSend: SendFn = mesh.send.bind(mesh);
  const realOnPeer = ordering.onPeerMessage.bind(ordering);
  const behaviour = makeFor(realSend);
  let active = false;
  mesh.send = (to: number, bytes: Uint8Array): boolean => (active ? behaviour.outgoing(to, bytes, realSend) : realSend(to, bytes));
  ordering.onPeerMessage = (from: number, bytes: Uint8Array, key: Uint8Array): void => {
    behaviour.incoming(from, bytes);
    realOnPeer(from, bytes, key);
  };
  return {
    behaviour,
    activate: () => {
      if (active) return;
      active = true;
      behaviour.start();
    },
    deactivate: () => {
      if (!active) return;
      active = false;
      behaviour.stop();
    },
  };
}

interface Options {
  readonly config: string;
  readonly id: number;
  readonly behaviour: BehaviourName;
  readonly delayMs: number;
  readonly active: boolean;
}

const USAGE = `usage: bun test/attack/adversary-replica.ts --config C --id N --behaviour ${BEHAVIOURS.join("|")} [--delay-ms D] [--active]`;

export function parseAdversaryArgs(argv: readonly string[]): Options | string {
  let config: string | null = null;
  let id: number | null = null;
  let behaviour: BehaviourName | null = null;
  let delayMs = SLOW_LEADER_DELAY_MS_DEFAULT;
  let active = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = argv[i + 1];
    if (arg === "--active") {
      active = true;
      continue;
    }
    if (value === undefined) return `${arg}: a value is missing`;
    i++;
    if (arg === "--config") config = value;
    else if (arg === "--id" && /^\d+$/.test(value)) id = Number(value);
    else if (arg === "--delay-ms" && /^\d+$/.test(value)) delayMs = Number(value);
    else if (arg === "--behaviour" && (BEHAVIOURS as readonly string[]).includes(value)) behaviour = value as BehaviourName;
    else return `unknown argument or bad value: ${arg} ${value}`;
  }
  if (config === null || id === null || behaviour === null) return "--config, --id and --behaviour are required";
  return { config, id, behaviour, delayMs, active };
}

async function main(): Promise<void> {
  const options = parseAdversaryArgs(process.argv.slice(2));
  if (typeof options === "string") {
    console.error(options);
    console.error(USAGE);
    process.exit(2);
  }
  const config = requireClusterConfig(options.config);
  const entry = config.replicas[options.id];
  if (entry === undefined) throw new Error(`replica ${options.id} is not in ${options.config}`);
  const key = loadSigningKeyFile(entry.keyFile ?? join(dirname(options.config), `replica-${options.id}.key`)).key;
  mkdirSync(entry.dataDir, { recursive: true, mode: 0o700 });
  const log = createLog({ replica: options.id, adversary: options.behaviour }, "info");
  const replica = new Replica({ config, id: options.id, key, log, dataDir: entry.dataDir });
  const tap = tapReplica(replica, (send) =>
    makeBehaviour(
      options.behaviour,
      {
        id: options.id,
        n: config.n,
        clusterId: config.name,
        key,
        log,
        send,
        status: () => {
          const s = replica.status();
          return { view: s.view as number, lastDecided: s.lastDecided as number };
        },
      },
      options.delayMs,
    ),
  );
  replica.start();
  if (options.active) tap.activate();
  const stop = (): void => {
    tap.behaviour.stop();
    replica.stop();
    process.exit(0);
  };
  process.once("SIGTERM", stop);
  process.once("SIGINT", stop);
  // One command a line on standard input; its end stops nothing (the harness kills us).
  let buffered = "";
  for await (const chunk of process.stdin) {
    buffered += String(chunk);
    let newline = buffered.indexOf("\n");
    while (newline >= 0) {
      const line = buffered.slice(0, newline).trim();
      buffered = buffered.slice(newline + 1);
      if (line === "attack") tap.activate();
      if (line === "peace") {
        tap.deactivate();
        log.info("adversary attack off", { behaviour: options.behaviour });
      }
      newline = buffered.indexOf("\n");
    }
  }
}

if (import.meta.main) await main();
