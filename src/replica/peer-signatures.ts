/**
 * Peer signatures checked on the verification threads (src/threads/verify-pool.ts) before
 * the ordering core sees the message, so that a busy replica's event loop does not spend
 * its turns on ed25519 (about 50 µs a check; a replica checks five or six votes per
 * ordered seq, more around checkpoints).
 *
 * The core stays the judge. A PRE_PREPARE, PREPARE, COMMIT or CHECKPOINT from a peer may
 * be held while a thread checks its signature over exactly the bytes the core would check
 * (`signingBytes` of the current epoch's cluster id, under the key of the rank that must
 * have signed it). The answer is remembered with those bytes, and the core's own check
 * (`verifiedBefore`) takes it: a signature that verified is not verified again, and a
 * forgery is refused without a second check. Other messages (FORWARD, VIEW_CHANGE,
 * NEW_VIEW, ...) carry no such single signature and are checked by the core on the loop,
 * as before; so are the messages the core would drop unchecked (another view, a seq
 * outside its window, a checkpoint already stable: `worthChecking`).
 *
 * Order: a peer's messages reach the core in the order they arrived from it (one lane per
 * peer: a message behind a check waits for it, checked or not). Messages of different
 * peers may pass each other, as they may on the network, and a peer's state-transfer
 * messages, which do not go through the core, may pass its ordering messages.
 *
 * When to use a thread. An idle replica hands the message to the core at once (a thread's
 * round trip would only add to the seq's path); a busy one (a second signed message in
 * one event-loop turn, as the peer inbox drains many per turn under load, or peer checks
 * already out) sends it to a thread, but only while the threads' backlog is short: peer
 * checks must never wait behind a client flood's checks there, or votes would come late
 * enough for backups to suspect a correct leader. With a long backlog the core checks
 * them on the loop, as without threads.
 */
import type { FaultMode } from "../core/ordering/config.ts";
import type { PeerMessage } from "../core/ordering/messages.ts";
import { signerOf, signingBytes } from "../core/ordering/messages.ts";
import type { Lane, VerifyPool } from "../threads/verify-pool.ts";
import { FatalError } from "./fatal.ts";

/**
 * Answers remembered until the core checks them, in all; each signer has an equal share
 * (oldest dropped first past it), so one peer signing or relaying many messages cannot
 * push the others' answers out.
 */
export const PEER_VERIFIED_REMEMBERED_MAX = 4_096;
/** Checks waiting on the threads (clients' and peers') per thread, past which peer signatures are checked on the loop. */
export const PEER_OFFLOAD_BACKLOG_PER_THREAD_MAX = 32;
/**
 * A peer's messages waiting in its lane at most, by count and by bytes (those of the
 * peer inbox's own queue, peer-inbox.ts); past either its further messages are dropped,
 * counted and logged, as on a lossy network: the protocol sends again what matters. With
 * checks going to threads only while their backlog is short, a lane holds a few messages.
 */
export const PEER_LANE_WAITING_MAX = 1_024;

export interface PeerSignatureOptions {
  /** The verification threads. */
  readonly pool: VerifyPool;
  /** The public key of a rank in the current epoch, or null. */
  readonly keyOfRank: (rank: number) => Uint8Array | null;
  /** The current epoch's cluster id (what every signature in it covers). */
  readonly clusterId: () => string;
  /** The number of replicas in the current epoch. */
  readonly n: () => number;
  /** The core's fault mode: in crash mode PREPAREs are not used and COMMITs are not signed. */
  readonly mode: () => FaultMode;
  /** Whether the core would check this message's signature now (and not drop it unchecked). */
  readonly worthChecking: (msg: PeerMessage) => boolean;
  /** Bytes a peer's lane may hold (the peer inbox's queue bound). */
  readonly laneBytesMax: number;
  /** A message dropped because its peer's lane was full: count and log it. */
  readonly onDropped: (peer: number) => void;
  /** A signature went to a thread (counted in peer_signatures_threaded_total). */
  readonly onThreaded?: () => void;
  /** Delivering a message that waited threw something other than a FatalError: the replica cannot go on. */
  readonly onDeliverError: (error: unknown) => void;
}

type CheckedKind = "PRE_PREPARE" | "PREPARE" | "COMMIT" | "CHECKPOINT";
type Checked = Extract<PeerMessage, { t: CheckedKind }>;

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function sigKey(sig: Uint8Array): string {
  return Buffer.from(sig.buffer, sig.byteOffset, sig.byteLength).toString("hex");
}

interface PeerLane {
  readonly lane: Lane;
  bytes: number;
}

export class PeerSignatures {
  private readonly lanes = new Map<number, PeerLane>();
  /** Checks out on the threads for peers now. */
  private outstanding = 0;
  /** Signed peer messages admitted in this event-loop turn (reset at its end). */
  private signedThisTurn = 0;
  /** By signer rank, by signature (hex): the bytes checked and the answer. */
  private readonly answers = new Map<number, Map<string, { bytes: Uint8Array; ok: boolean }>>();
  /** Signatures checked on a thread, and messages dropped (full lane). */
  onThreads = 0;
  dropped = 0;

  constructor(private readonly options: PeerSignatureOptions) {}

  /**
   * Runs `deliverNow` once `msg` from `peer` (rank `rank`, `bytes` long on the wire) may go
   * to the core, in the order of that peer's messages: at once, or after its signature
   * was checked on a thread. Not run if the replica stops first, or if the peer's lane is
   * full (the message is dropped and counted).
   */
  admit(peer: number, rank: number, msg: PeerMessage, bytes: number, deliverNow: () => void): void {
    const waiting = this.lanes.get(peer);
    const signed = this.threadable(rank, msg);
    const busy = this.outstanding > 0 || this.signedThisTurn > 0;
    if (signed !== null) this.countThisTurn();
    const offload = signed !== null && busy && this.options.pool.backlog < this.backlogMax();
    if ((waiting === undefined || waiting.lane.pending === 0) && !offload) {
      deliverNow();
      return;
    }
    const peerLane = waiting ?? this.newLane(peer);
    if (peerLane.lane.pending >= PEER_LANE_WAITING_MAX || peerLane.bytes + bytes > this.options.laneBytesMax) {
      this.dropped++;
      this.options.onDropped(peer);
      return;
    }
    peerLane.bytes += bytes;
    // Delivered from a thread's answer, perhaps with other answers behind it: a failure
    // must neither stop those nor be swallowed by the pool's loop.
    const deliver = (): void => {
      peerLane.bytes -= bytes;
      try {
        deliverNow();
      } catch (error) {
        if (error instanceof FatalError) {
          // Out of band, as an uncaught error, exactly as if the core had thrown on the loop.
          queueMicrotask(() => {
            throw error;
          });
        } else this.options.onDeliverError(error);
      }
    };
    if (offload && signed !== null) this.check(signed.signer, signed.msg, peerLane.lane, deliver);
    else peerLane.lane.answer(peerLane.lane.ask(), deliver);
  }

  /**
   * The core's signature check, first: true or false when a thread checked `sig` by
   * `rank` over exactly `bytes`; null when unknown here (the core verifies it).
   */
  checkedBefore(rank: number, bytes: Uint8Array, sig: Uint8Array): boolean | null {
    const answer = this.answers.get(rank)?.get(sigKey(sig));
    if (answer === undefined || !sameBytes(answer.bytes, bytes)) return null;
    return answer.ok;
  }

  /** A new epoch's core: ranks and keys change, so nothing remembered applies any more. */
  reset(): void {
    this.answers.clear();
  }

  /** The message and its signer, when its signature is one a thread may check for the core now. */
  private threadable(rank: number, msg: PeerMessage): { msg: Checked; signer: number } | null {
    if (msg.t !== "PRE_PREPARE" && msg.t !== "PREPARE" && msg.t !== "COMMIT" && msg.t !== "CHECKPOINT") return null;
    // Crash mode: PREPAREs are not used and COMMITs come on the link's word (core PROTOCOL.md §3).
    if (this.options.mode() === "cft" && (msg.t === "PREPARE" || msg.t === "COMMIT")) return null;
    const n = this.options.n();
    const signer = signerOf(msg, n);
    // Another signer than the peer, or a rank not in the group: the core refuses it unchecked.
    if (signer < 0 || signer >= n || (msg.t !== "PRE_PREPARE" && signer !== rank)) return null;
    if (!this.options.worthChecking(msg)) return null;
    return { msg, signer };
  }

  private remember(signer: number, sig: Uint8Array, bytes: Uint8Array, ok: boolean): void {
    let mine = this.answers.get(signer);
    if (mine === undefined) {
      mine = new Map();
      this.answers.set(signer, mine);
    }
    mine.set(sigKey(sig), { bytes, ok });
    const share = Math.max(1, Math.floor(PEER_VERIFIED_REMEMBERED_MAX / Math.max(1, this.options.n())));
    while (mine.size > share) mine.delete(mine.keys().next().value as string);
  }

  private backlogMax(): number {
    return this.options.pool.threadCount * PEER_OFFLOAD_BACKLOG_PER_THREAD_MAX;
  }

  private countThisTurn(): void {
    if (this.signedThisTurn++ === 0) queueMicrotask(() => (this.signedThisTurn = 0));
  }

  private newLane(peer: number): PeerLane {
    const peerLane = { lane: this.options.pool.lane(), bytes: 0 };
    this.lanes.set(peer, peerLane);
    return peerLane;
  }

  /** Checks `msg`'s signature on a thread, remembers the answer, then `deliver` in lane order. */
  private check(signer: number, msg: Checked, lane: Lane, deliver: () => void): void {
    const key = this.options.keyOfRank(signer);
    if (key === null) {
      lane.answer(lane.ask(), deliver);
      return;
    }
    const bytes = signingBytes(msg, this.options.clusterId());
    this.onThreads++;
    this.options.onThreaded?.();
    this.outstanding++;
    this.options.pool.verify(
      key,
      bytes,
      msg.sig,
      (ok) => {
        this.outstanding--;
        this.remember(signer, msg.sig, bytes, ok);
        deliver();
      },
      lane,
    );
  }
}
