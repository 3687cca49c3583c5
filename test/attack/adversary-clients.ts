/**
 * Hostile clients for the attack harness (run on purpose; never part of the shipped binary):
 *
 *   bun test/attack/adversary-clients.ts --config C --attack NAME --tag T [--key FILE] [--seconds S]
 *
 * Each attack speaks the real client protocol over raw TCP to every replica of the cluster
 * file, as fast as the replicas read, until S seconds have passed (default 600), standard
 * input closes, or SIGTERM. It prints one JSON line `{"engaged": ...}` on stdout once the
 * attack runs, then its counters every second on stderr.
 *
 * - `flood-valid`: keys nobody registered send validly signed publish requests to T at full
 *   speed (each one costs every replica a signature check before it is refused).
 * - `bad-signatures`: sessions that complete the handshake, then send requests whose
 *   signature does not verify (the replica closes them); reconnects at once.
 * - `malformed`: connections whose first frame does not decode (unknown type, payload that
 *   is no CBOR, CBOR of the wrong shape); reconnects at once.
 * - `oversize`: connections whose first frame header claims more than the frame limit,
 *   followed by bytes until the replica closes; reconnects at once.
 * - `gapped-seqs`: the key in --key (registered on T, a compromised probe) sends validly
 *   signed requests whose sequence numbers skip the next one, so nothing of it can
 *   execute and every request waits in the pool until it expires; at full speed.
 * - `idle`: thousands of sessions (fresh keys, from 127.0.0.2..127.0.0.9 so as not to take
 *   the correct clients' per-address share) that complete the handshake and then say
 *   nothing; any the replica closes is opened again.
 *
 * The other attacks connect from ATTACKER_ADDRESS, not from the correct clients' 127.0.0.1:
 * an attacker is another host, and a replica's per-address budgets and blacklist
 * (src/replica/admission.ts) can only tell hosts apart by address.
 */
import { randomBytes } from "node:crypto";
import net from "node:net";
import { buildRequest, requestFrame } from "../../src/client/request.ts";
import { type ClusterConfig, requireClusterConfig } from "../../src/config/cluster.ts";
import type { SessionFraming } from "../../src/crypto/session.ts";
import { loadSigningKeyFile, SigningKey } from "../../src/crypto/keys.ts";
import { FrameDecoder } from "../../wire/frame.ts";
import { encodeTypedFrame, type Frame } from "../../wire/schemas.ts";
import { FRAME_HEADER_BYTES, FrameType } from "../../wire/types.ts";
import { decodeSessionFrame, rawClientAuth, rawClientHello } from "../helpers/client-session.ts";

export const CLIENT_ATTACKS = ["flood-valid", "bad-signatures", "malformed", "oversize", "gapped-seqs", "idle"] as const;
export type ClientAttackName = (typeof CLIENT_ATTACKS)[number];

/** The address the hostile clients connect from (idle: ATTACKER_ADDRESS and the next seven). */
export const ATTACKER_ADDRESS = "127.0.0.2";

/** Bytes of each event the attackers publish (the workload's size). */
const EVENT_BYTES = 200;
/** Signed requests prepared per flooding key, then sent round and round. */
const FLOOD_REQUESTS_PER_KEY = 2_000;
/** Flooding keys, each with one session to every replica. */
const FLOOD_KEYS = 4;
/** Connections per replica that reconnect as soon as they are closed (bad signatures, malformed, oversize). */
const CHURN_CONNECTIONS_PER_REPLICA = 8;
/** Bad-signature requests written behind each handshake. */
const BAD_REQUESTS_PER_SESSION = 32;
/** Idle sessions in all, spread over the replicas and the source addresses. */
const IDLE_SESSIONS = 2_000;
const IDLE_SOURCE_ADDRESSES = 8;
/** Idle handshakes in flight at once per source address (under the replica's per-address bound). */
const IDLE_OPENING_PER_ADDRESS = 16;
/** A handshake step that takes longer than this is abandoned. */
const STEP_MS_MAX = 10_000;
/** A closed churn connection is opened again after this pause (no busy loop if the replica refuses at once). */
const REOPEN_PAUSE_MS = 5;
const REPORT_INTERVAL_MS = 1_000;
const SECONDS_DEFAULT = 600;

export interface Counters {
  opened: number;
  closedByReplica: number;
  framesSent: number;
  bytesSent: number;
  repliesReceived: number;
  errors: number;
}

function newCounters(): Counters {
  return { opened: 0, closedByReplica: 0, framesSent: 0, bytesSent: 0, repliesReceived: 0, errors: 0 };
}

// ---------------------------------------------------------------------------------------
// A raw client connection
// ---------------------------------------------------------------------------------------

/** One TCP connection speaking the client protocol by hand. */
class RawSession {
  readonly socket: net.Socket;
  closed = false;
  private readonly decoder = new FrameDecoder({ copyPayloads: true });
  private readonly waiters: { type: number; resolve: (frame: Frame | null) => void }[] = [];
  private closedWaiters: (() => void)[] = [];
  /** The session's MAC keys once AUTH is sent; null before. */
  private framing: SessionFraming | null = null;

  constructor(
    port: number,
    localAddress: string,
    private readonly counters: Counters,
  ) {
    this.socket = net.createConnection({ host: "127.0.0.1", port, localAddress });
    this.socket.setNoDelay(true);
    this.socket.on("data", (chunk: Buffer) => this.onData(chunk));
    this.socket.on("close", () => this.onClosed());
    this.socket.on("error", () => this.onClosed());
  }

  async connected(): Promise<boolean> {
    if (this.socket.readyState === "open") return true;
    return await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), STEP_MS_MAX);
      this.socket.once("connect", () => {
        clearTimeout(timer);
        this.counters.opened++;
        resolve(true);
      });
      this.closedWaiters.push(() => {
        clearTimeout(timer);
        resolve(false);
      });
    });
  }

  /**
   * HELLO, HELLO_ACK, AUTH; true once the replica took the session (a PING is answered).
   * Every frame after AUTH is sealed with the session's MAC (wire/PROTOCOL.md 5.2), in both
   * directions, as a real client's.
   */
  async handshake(key: SigningKey): Promise<boolean> {
    if (!(await this.connected())) return false;
    const state = rawClientHello(key);
    const ackWait = this.next(FrameType.HELLO_ACK);
    this.write(encodeTypedFrame({ type: FrameType.HELLO, body: state.hello }));
    const ack = await ackWait;
    if (ack?.type !== FrameType.HELLO_ACK) return false;
    const { auth, framing } = rawClientAuth(key, state, ack.body);
    const pongWait = this.next(FrameType.PONG);
    this.write(encodeTypedFrame(auth));
    this.framing = framing;
    this.write(encodeTypedFrame({ type: FrameType.PING, body: { n: 1 } }));
    return (await pongWait) !== null;
  }

  /** Writes (sealed once the handshake is done); false when the kernel buffer is full (wait for drained()). */
  write(frame: Uint8Array): boolean {
    if (this.closed) return false;
    const bytes = this.framing === null ? frame : this.framing.sealer.seal(frame);
    this.counters.framesSent++;
    this.counters.bytesSent += bytes.byteLength;
    return this.socket.write(bytes);
  }

  async drained(): Promise<void> {
    if (this.closed) return;
    await new Promise<void>((resolve) => {
      this.socket.once("drain", resolve);
      this.closedWaiters.push(resolve);
    });
  }

  async untilClosed(): Promise<void> {
    if (this.closed) return;
    await new Promise<void>((resolve) => this.closedWaiters.push(resolve));
  }

  destroy(): void {
    this.socket.destroy();
  }

  private next(type: number): Promise<Frame | null> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(null), STEP_MS_MAX);
      this.waiters.push({
        type,
        resolve: (frame) => {
          clearTimeout(timer);
          resolve(frame);
        },
      });
    });
  }

  private onData(chunk: Buffer): void {
    for (const result of this.decoder.push(new Uint8Array(chunk))) {
      if (!result.ok) continue;
      const decoded = decodeSessionFrame({ type: result.type, payload: result.payload }, this.framing);
      if (!decoded.ok) continue;
      const frame = decoded.frame;
      if (frame.type === FrameType.REPLY) this.counters.repliesReceived++;
      if (frame.type === FrameType.ERROR) this.counters.errors++;
      const index = this.waiters.findIndex((w) => w.type === frame.type);
      if (index >= 0) this.waiters.splice(index, 1)[0]?.resolve(frame);
    }
  }

  private onClosed(): void {
    if (this.closed) return;
    this.closed = true;
    this.counters.closedByReplica++;
    for (const waiter of this.waiters.splice(0)) waiter.resolve(null);
    for (const resolve of this.closedWaiters.splice(0)) resolve();
  }
}

// ---------------------------------------------------------------------------------------
// The attacks
// ---------------------------------------------------------------------------------------

interface AttackContext {
  readonly config: ClusterConfig;
  readonly tag: string;
  readonly key: SigningKey | null;
  readonly counters: Counters;
  /** False once the attack must end. */
  readonly running: () => boolean;
  /** Called once the attack is under way. */
  readonly engaged: (detail: Record<string, unknown>) => void;
}

function ports(ctx: AttackContext): number[] {
  return ctx.config.replicas.map((r) => r.port);
}

function eventBytes(): Uint8Array {
  return new Uint8Array(EVENT_BYTES).fill(0x61);
}

/** Signed REQUEST frames of `key` for the given seqs (one 200-byte event each). */
function signedFrames(ctx: AttackContext, key: SigningKey, seqs: readonly number[]): Uint8Array[] {
  const ts = Date.now();
  return seqs.map(
    (seq) => buildRequest(key, { seq, ts, op: { t: "pub", tag: ctx.tag, events: [eventBytes()] } }, ctx.config.limits.frameBytesMax).frame,
  );
}

/** Writes `frames` round and round on `session` as fast as it drains, until the attack ends or the session closes. */
async function pour(ctx: AttackContext, session: RawSession, frames: readonly Uint8Array[]): Promise<void> {
  let i = 0;
  while (ctx.running() && !session.closed) {
    if (!session.write(frames[i++ % frames.length] as Uint8Array)) await session.drained();
  }
}

/** Validly signed requests from keys nobody registered, to every replica, at full speed. */
async function floodValid(ctx: AttackContext): Promise<void> {
  const streams: Promise<void>[] = [];
  const keys = Array.from({ length: FLOOD_KEYS }, () => SigningKey.generate());
  const prepared = keys.map((key) =>
    signedFrames(
      ctx,
      key,
      Array.from({ length: FLOOD_REQUESTS_PER_KEY }, (_, i) => i + 1),
    ),
  );
  const sessions: { session: RawSession; frames: Uint8Array[] }[] = [];
  for (const [k, key] of keys.entries()) {
    for (const port of ports(ctx)) {
      const session = new RawSession(port, ATTACKER_ADDRESS, ctx.counters);
      if (await session.handshake(key)) sessions.push({ session, frames: prepared[k] as Uint8Array[] });
    }
  }
  ctx.engaged({ keys: FLOOD_KEYS, sessions: sessions.length, requestsPerKey: FLOOD_REQUESTS_PER_KEY });
  for (const { session, frames } of sessions) streams.push(pour(ctx, session, frames));
  await Promise.all(streams);
  for (const { session } of sessions) session.destroy();
}

/** The registered key's requests behind a gap: seqs 2.. of every space it has, at full speed. */
async function gappedSeqs(ctx: AttackContext): Promise<void> {
  if (ctx.key === null) throw new Error("gapped-seqs needs --key (a key registered on --tag)");
  const key = ctx.key;
  // Seq 1 is never sent: every later request waits for it, in every replica's pool.
  const frames = signedFrames(
    ctx,
    key,
    Array.from({ length: 256 }, (_, i) => i + 2),
  );
  const sessions: RawSession[] = [];
  for (const port of ports(ctx)) {
    const session = new RawSession(port, ATTACKER_ADDRESS, ctx.counters);
    if (await session.handshake(key)) sessions.push(session);
  }
  ctx.engaged({ sessions: sessions.length, seqs: "2..257, round and round" });
  await Promise.all(sessions.map((session) => pour(ctx, session, frames)));
  for (const session of sessions) session.destroy();
}

/** Runs `cycle` on CHURN_CONNECTIONS_PER_REPLICA connections per replica, each opened again once closed. */
async function churn(ctx: AttackContext, detail: Record<string, unknown>, cycle: (port: number) => Promise<void>): Promise<void> {
  ctx.engaged({ connectionsPerReplica: CHURN_CONNECTIONS_PER_REPLICA, ...detail });
  const loops: Promise<void>[] = [];
  for (const port of ports(ctx)) {
    for (let i = 0; i < CHURN_CONNECTIONS_PER_REPLICA; i++) {
      loops.push(
        (async () => {
          while (ctx.running()) {
            await cycle(port);
            await Bun.sleep(REOPEN_PAUSE_MS);
          }
        })(),
      );
    }
  }
  await Promise.all(loops);
}

/** A session whose requests carry signatures that do not verify. */
async function badSignatures(ctx: AttackContext): Promise<void> {
  await churn(ctx, { requestsPerSession: BAD_REQUESTS_PER_SESSION }, async (port) => {
    const key = SigningKey.generate();
    const session = new RawSession(port, ATTACKER_ADDRESS, ctx.counters);
    if (await session.handshake(key)) {
      const ts = Date.now();
      for (let seq = 1; seq <= BAD_REQUESTS_PER_SESSION; seq++) {
        const built = buildRequest(
          key,
          { seq, ts, op: { t: "pub", tag: ctx.tag, events: [eventBytes()] } },
          ctx.config.limits.frameBytesMax,
        );
        // The key's own body under a signature that does not verify.
        session.write(requestFrame(built.body, new Uint8Array(randomBytes(64)), 0, ctx.config.limits.frameBytesMax));
      }
    }
    await session.untilClosed();
  });
}

/** First frames that do not decode: an unknown type, a payload that is no CBOR, CBOR of the wrong shape. */
export function malformedFrames(): Uint8Array[] {
  const frame = (type: number, payload: Uint8Array): Uint8Array => {
    const bytes = new Uint8Array(FRAME_HEADER_BYTES + payload.length);
    new DataView(bytes.buffer).setUint32(0, payload.length + 1);
    bytes[4] = type;
    bytes.set(payload, FRAME_HEADER_BYTES);
    return bytes;
  };
  return [
    frame(0xee, new Uint8Array([0xa0])),
    frame(FrameType.HELLO, new Uint8Array([0xff, 0xff, 0xff, 0x00, 0x13])),
    frame(FrameType.HELLO, new Uint8Array([0xa1, 0x61, 0x76, 0x63, 0x61, 0x62, 0x63])),
  ];
}

async function malformed(ctx: AttackContext): Promise<void> {
  const frames = malformedFrames();
  let next = 0;
  await churn(ctx, { kinds: frames.length }, async (port) => {
    const session = new RawSession(port, ATTACKER_ADDRESS, ctx.counters);
    if (await session.connected()) session.write(frames[next++ % frames.length] as Uint8Array);
    await session.untilClosed();
  });
}

/** A frame header that claims `claimedBytes`, then bytes that never end. */
async function oversize(ctx: AttackContext): Promise<void> {
  const claimed = ctx.config.limits.frameBytesMax + 1;
  const header = new Uint8Array(FRAME_HEADER_BYTES);
  new DataView(header.buffer).setUint32(0, claimed);
  header[4] = FrameType.REQUEST;
  const filler = new Uint8Array(64 * 1024).fill(0x41);
  await churn(ctx, { claimedBytes: claimed }, async (port) => {
    const session = new RawSession(port, ATTACKER_ADDRESS, ctx.counters);
    if (await session.connected()) {
      session.write(header);
      let sent = 0;
      while (ctx.running() && !session.closed && sent < claimed) {
        sent += filler.length;
        if (!session.write(filler)) await session.drained();
      }
    }
    session.destroy();
  });
}

/** Thousands of handshaken sessions that say nothing; any that closes is opened again. */
async function idle(ctx: AttackContext): Promise<void> {
  const replicaPorts = ports(ctx);
  const perAddress = Math.ceil(IDLE_SESSIONS / IDLE_SOURCE_ADDRESSES);
  let open = 0;
  const holders: Promise<void>[] = [];
  let reported = false;
  for (let a = 0; a < IDLE_SOURCE_ADDRESSES; a++) {
    const address = `127.0.0.${2 + a}`;
    for (let lane = 0; lane < IDLE_OPENING_PER_ADDRESS; lane++) {
      holders.push(
        (async () => {
          const sessions: RawSession[] = [];
          for (let i = lane; i < perAddress && ctx.running(); i += IDLE_OPENING_PER_ADDRESS) {
            const session = new RawSession(replicaPorts[(a * perAddress + i) % replicaPorts.length] as number, address, ctx.counters);
            sessions.push(session);
            if (await session.handshake(SigningKey.generate())) open++;
          }
          if (!reported && open >= IDLE_SESSIONS * 0.9) {
            reported = true;
            ctx.engaged({ sessions: open, sourceAddresses: IDLE_SOURCE_ADDRESSES });
          }
          // Hold them; reopen what the replica closed, one at a time.
          while (ctx.running()) {
            const closedAt = sessions.findIndex((s) => s.closed);
            if (closedAt < 0) {
              await Promise.race([...sessions.map((s) => s.untilClosed()), Bun.sleep(1_000)]);
              continue;
            }
            const port = replicaPorts[closedAt % replicaPorts.length] as number;
            const again = new RawSession(port, address, ctx.counters);
            sessions[closedAt] = again;
            await again.handshake(SigningKey.generate());
            await Bun.sleep(REOPEN_PAUSE_MS);
          }
          for (const session of sessions) session.destroy();
        })(),
      );
    }
  }
  await Bun.sleep(0);
  // However many opened, say so once every lane has had its chance.
  await Promise.race([Promise.all(holders), Bun.sleep(STEP_MS_MAX * 3)]);
  if (!reported) {
    reported = true;
    ctx.engaged({ sessions: open, sourceAddresses: IDLE_SOURCE_ADDRESSES, note: "fewer than 90% of the sessions opened" });
  }
  await Promise.all(holders);
}

export function runClientAttack(name: ClientAttackName, ctx: AttackContext): Promise<void> {
  switch (name) {
    case "flood-valid":
      return floodValid(ctx);
    case "bad-signatures":
      return badSignatures(ctx);
    case "malformed":
      return malformed(ctx);
    case "oversize":
      return oversize(ctx);
    case "gapped-seqs":
      return gappedSeqs(ctx);
    case "idle":
      return idle(ctx);
  }
}

// ---------------------------------------------------------------------------------------
// The program
// ---------------------------------------------------------------------------------------

interface Options {
  readonly config: string;
  readonly attack: ClientAttackName;
  readonly tag: string;
  readonly key: string | null;
  readonly seconds: number;
}

const USAGE = `usage: bun test/attack/adversary-clients.ts --config C --attack ${CLIENT_ATTACKS.join("|")} --tag T [--key FILE] [--seconds S]`;

export function parseClientAttackArgs(argv: readonly string[]): Options | string {
  const values = new Map<string, string>();
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i] ?? "";
    const value = argv[i + 1];
    if (!["--config", "--attack", "--tag", "--key", "--seconds"].includes(name)) return `unknown argument ${name}`;
    if (value === undefined) return `${name}: a value is missing`;
    values.set(name, value);
  }
  const attack = values.get("--attack");
  if (attack === undefined || !(CLIENT_ATTACKS as readonly string[]).includes(attack))
    return `--attack: one of ${CLIENT_ATTACKS.join(", ")}`;
  const config = values.get("--config");
  const tag = values.get("--tag");
  if (config === undefined || tag === undefined) return "--config and --tag are required";
  const seconds = Number(values.get("--seconds") ?? SECONDS_DEFAULT);
  if (!Number.isInteger(seconds) || seconds < 1 || seconds > 3_600) return "--seconds: an integer in 1..3600";
  return { config, attack: attack as ClientAttackName, tag, key: values.get("--key") ?? null, seconds };
}

async function main(): Promise<void> {
  const options = parseClientAttackArgs(process.argv.slice(2));
  if (typeof options === "string") {
    console.error(options);
    console.error(USAGE);
    process.exit(2);
  }
  const config = requireClusterConfig(options.config);
  const counters = newCounters();
  let running = true;
  const end = (): void => {
    running = false;
  };
  const deadline = setTimeout(end, options.seconds * 1_000);
  process.once("SIGTERM", end);
  process.once("SIGINT", end);
  // The harness holds our standard input open; its end ends the attack.
  void (async () => {
    for await (const _ of process.stdin) {
      // Nothing is read from it but its end.
    }
    end();
  })();
  const started = performance.now();
  const report = setInterval(() => {
    const seconds = ((performance.now() - started) / 1_000).toFixed(0);
    console.error(`adversary-clients ${options.attack}: ${seconds} s: ${JSON.stringify(counters)}`);
  }, REPORT_INTERVAL_MS);
  await runClientAttack(options.attack, {
    config,
    tag: options.tag,
    key: options.key === null ? null : loadSigningKeyFile(options.key).key,
    counters,
    running: () => running,
    engaged: (detail) => console.log(JSON.stringify({ engaged: options.attack, ...detail })),
  });
  clearTimeout(deadline);
  clearInterval(report);
  console.error(`adversary-clients ${options.attack}: ended: ${JSON.stringify(counters)}`);
  process.exit(0);
}

if (import.meta.main) await main();
