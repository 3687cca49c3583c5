/**
 * Peer signatures checked on the verification threads (src/threads/verify-pool.ts) before
 * the ordering core sees the message, so that a busy replica's event loop does not spend
 * its turns on ed25519 (about 50 µs a check; a replica checks five or six votes per
 * ordered seq, more around checkpoints).
 *
 * The core stays the judge. A PRE_PREPARE, PREPARE, COMMIT or CHECKPOINT from a peer is
 * held while a thread checks its signature over exactly the bytes the core would check
 * (`signingBytes` of the current epoch's cluster id, under the key of the rank that must
 * have signed it). A signature that verified is remembered with those bytes, and the
 * core's own check (`verifiedBefore`) takes it without verifying again; one that did not
 * is not remembered, so the core verifies it itself and refuses it as it always did. Other
 * messages (FORWARD, VIEW_CHANGE, NEW_VIEW, ...) carry no such single signature and are
 * checked by the core on the loop, as before.
 *
 * Order: a peer's messages reach the core in the order they arrived from it (one lane per
 * peer: a message behind a check waits for it, checked or not). Messages of different
 * peers may pass each other, as they may on the network.
 *
 * When the replica is idle the message goes to the core at once and the core checks it: a
 * hand-off to a thread and back would only add its round trip to the seq's path. Checks
 * go to the threads when the replica is busy: a second signed message in one event-loop
 * turn (the peer inbox drains many per turn under load), or peer checks already out on
 * the threads.
 */
import type { PeerMessage } from "../core/ordering/messages.ts";
import { signerOf, signingBytes } from "../core/ordering/messages.ts";
import type { Lane, VerifyPool } from "../threads/verify-pool.ts";

/** Signatures a thread verified, remembered until the core checks them (oldest dropped first past this). */
export const PEER_VERIFIED_REMEMBERED_MAX = 4_096;
/**
 * A peer's messages waiting for checks at most; past this its further messages are
 * dropped (counted), as on a lossy network: the protocol sends again what matters. The
 * peer inbox lets a peer's messages in at 20,000 a second at most (peer-inbox.ts); a
 * correct peer's votes wait here a few at a time.
 */
export const PEER_LANE_WAITING_MAX = 1_024;

export interface PeerSignatureOptions {
  /** The verification threads; with none, everything is checked by the core, inline. */
  readonly pool: VerifyPool;
  /** The public key of a rank in the current epoch, or null. */
  readonly keyOfRank: (rank: number) => Uint8Array | null;
  /** The current epoch's cluster id (what every signature in it covers). */
  readonly clusterId: () => string;
  /** The number of replicas in the current epoch. */
  readonly n: () => number;
  /** A message dropped because its peer's lane was full (peer_messages_dropped_total, reason verify-backlog). */
  readonly onDropped: (peer: number) => void;
  /** A signature went to a thread (counted in peer_signatures_threaded_total). */
  readonly onThreaded?: () => void;
  /** Delivering a message that waited threw (the core failed): the replica cannot go on. */
  readonly onDeliverError: (error: unknown) => void;
}

type CheckedKind = "PRE_PREPARE" | "PREPARE" | "COMMIT" | "CHECKPOINT";

function isChecked(msg: PeerMessage): msg is Extract<PeerMessage, { t: CheckedKind }> {
  return msg.t === "PRE_PREPARE" || msg.t === "PREPARE" || msg.t === "COMMIT" || msg.t === "CHECKPOINT";
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function allZero(bytes: Uint8Array): boolean {
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}

export class PeerSignatures {
  private readonly lanes = new Map<number, Lane>();
  /** Checks out on the threads for peers now. */
  private outstanding = 0;
  /** Signed peer messages admitted in this event-loop turn (reset at its end). */
  private signedThisTurn = 0;
  /** `${rank}:${signature hex}` -> the bytes it verified over. */
  private readonly verified = new Map<string, Uint8Array>();
  /** Signed messages checked on a thread, signed messages left to the core at once (idle), messages dropped (full lane). */
  onThreads = 0;
  inline = 0;
  dropped = 0;

  constructor(private readonly options: PeerSignatureOptions) {}

  /**
   * Runs `deliver` once `msg` from `peer` (rank `rank`) may go to the core: after its
   * signature was checked (on a thread when the replica is busy), in the order of that
   * peer's messages. `deliver` is called once, unless the replica stops first or the
   * peer's lane is full (the message is dropped and counted).
   */
  admit(peer: number, rank: number, msg: PeerMessage, deliverNow: () => void): void {
    const lane = this.laneOf(peer);
    const signed = isChecked(msg) && !(msg.t === "COMMIT" && allZero(msg.sig)) ? msg : null;
    // Busy: peer checks are out on the threads, or another signed message came this turn.
    const busy = this.outstanding > 0 || this.signedThisTurn > 0;
    if (signed !== null) this.countThisTurn();
    if (lane.pending === 0 && (signed === null || !busy || this.options.pool.threadCount === 0)) {
      // Nothing of this peer's waits, and the threads are not in use for peers: at once
      // (the core checks the signature itself).
      if (signed !== null) this.inline++;
      deliverNow();
      return;
    }
    // Delivered from a thread's answer, perhaps with other peers' answers behind it: a
    // failure goes to the handler instead of through the pool's loop.
    const deliver = (): void => {
      try {
        deliverNow();
      } catch (error) {
        this.options.onDeliverError(error);
      }
    };
    if (lane.pending >= PEER_LANE_WAITING_MAX) {
      this.dropped++;
      this.options.onDropped(peer);
      return;
    }
    if (signed === null) {
      lane.answer(lane.ask(), deliver);
      return;
    }
    this.onThreads++;
    this.options.onThreaded?.();
    this.check(rank, signed, lane, deliver);
  }

  /**
   * The core's signature check, first: true when a thread verified `sig` by `rank` over
   * exactly `bytes`; null when unknown here (the core verifies it).
   */
  verifiedBefore(rank: number, bytes: Uint8Array, sig: Uint8Array): true | null {
    const key = `${rank}:${Buffer.from(sig.buffer, sig.byteOffset, sig.byteLength).toString("hex")}`;
    const remembered = this.verified.get(key);
    if (remembered === undefined || !sameBytes(remembered, bytes)) return null;
    return true;
  }

  private countThisTurn(): void {
    if (this.signedThisTurn++ === 0) queueMicrotask(() => (this.signedThisTurn = 0));
  }

  private laneOf(peer: number): Lane {
    let lane = this.lanes.get(peer);
    if (lane === undefined) {
      lane = this.options.pool.lane();
      this.lanes.set(peer, lane);
    }
    return lane;
  }

  /** Checks `msg`'s signature on a thread, remembers it when it verifies, then `deliver` in lane order. */
  private check(rank: number, msg: Extract<PeerMessage, { t: CheckedKind }>, lane: Lane, deliver: () => void): void {
    const n = this.options.n();
    const signer = signerOf(msg, n);
    const key = signer >= 0 && signer < n ? this.options.keyOfRank(signer) : null;
    // A message of another signer than the peer, or an unknown rank: the core refuses it; nothing to check here.
    if (key === null || (msg.t !== "PRE_PREPARE" && signer !== rank)) {
      lane.answer(lane.ask(), deliver);
      return;
    }
    const bytes = signingBytes(msg, this.options.clusterId());
    const remember = (ok: boolean): void => {
      if (!ok) return;
      const name = `${signer}:${Buffer.from(msg.sig.buffer, msg.sig.byteOffset, msg.sig.byteLength).toString("hex")}`;
      this.verified.set(name, bytes);
      if (this.verified.size > PEER_VERIFIED_REMEMBERED_MAX) this.verified.delete(this.verified.keys().next().value as string);
    };
    this.outstanding++;
    this.options.pool.verify(
      key,
      bytes,
      msg.sig,
      (ok) => {
        this.outstanding--;
        remember(ok);
        deliver();
      },
      lane,
    );
  }
}
