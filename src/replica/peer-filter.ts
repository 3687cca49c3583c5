/**
 * Cheap checks on a peer message before it costs a full decode, validation or signature
 * check: what cannot matter is dropped here, counted by the caller.
 *
 * `peekPeerMessage` reads only the head of the canonical CBOR envelope (peer-messages.ts):
 * its kind, and for an ordering message the few small fields the checks need (`t`, `seq`,
 * `replica`), walking over the others without copying them. Canonical CBOR sorts map keys
 * shortest first, so `t` and `seq` come before a PRE_PREPARE's batch. Anything it cannot
 * read goes on to the full path unjudged: the peek never refuses what it does not
 * understand, so it changes only the cost of a message, never whether a valid one counts.
 * The one shape it refuses is an envelope of a kind it knows whose message is not a map:
 * every message of both kinds is one, so no correct replica sends it, and the full path
 * would decode all of it (an array of four million empty arrays) only to refuse it.
 *
 * What `PeerFilter` drops, each something the ordering core would ignore anyway:
 * - a PRE_PREPARE for a seq this replica has executed (replayed or late: the seq is
 *   decided here) beyond one per peer per EXECUTED_PASS_MS, which still lets the core see
 *   an executed seq's second header now and then (evidence of equivocation). Votes for
 *   executed seqs are not dropped: the core answers a lagging voter with the decisions;
 * - a PREPARE, COMMIT, CHECKPOINT or VIEW_CHANGE naming a signer other than the peer that
 *   sent it (the core refuses those: votes travel only from their signers);
 * - a FORWARD larger than any a correct replica sends (the core cuts its forwards into
 *   chunks of one batch, or one request), or whose every request this replica has
 *   executed, or byte-identical to one the same peer sent in the last DUPLICATE_WINDOW_MS
 *   (its requests are in this replica's pool or executed; a client's own retransmission
 *   still reaches the leader through its own session and its replicas' later forwards).
 * - an envelope of a known kind whose message is not a map (no correct replica sends one).
 * Dropping a peer message is always safe (the network may lose any); each rule is bounded
 * in time or by what this replica has executed, so a correct peer's message that matters
 * is never refused for good.
 */
import { sha256 } from "../crypto/hash.ts";
import { toHex } from "../../wire/bytes.ts";

/** A FORWARD equal to one the same peer sent within this many ms is dropped. */
export const DUPLICATE_WINDOW_MS = 10_000;
/** FORWARD digests remembered per peer (the oldest is forgotten first). */
export const DUPLICATES_REMEMBERED_MAX = 1024;
/**
 * A FORWARD is recognised by its length and the SHA-256 of its last bytes, which hold its
 * last request's signature: hashing whole forwards would cost every correct one as much
 * as a flood. Two different FORWARDs that share both are dropped as one (the client's
 * retransmission brings the other), never one that was not sent.
 */
export const FORWARD_FINGERPRINT_BYTES = 512;

/** What the peek read: the envelope's kind and, for an ordering message, its type and small fields. */
export interface PeerPeek {
  readonly kind: "ordering" | "state-transfer";
  readonly t: string | null;
  readonly seq: number | null;
  readonly replica: number | null;
  /** The membership epoch the envelope names (absent or 0: epoch 0). */
  readonly epoch?: number;
  /** Set when the envelope's message is not a map: what no correct replica sends. */
  readonly notMap?: true;
}

/** An executed seq's PRE_PREPARE from one peer is let through at most this often. */
export const EXECUTED_PASS_MS = 1_000;

/** Why a message was dropped cheaply: the `reason` label of fitb_peer_messages_dropped_total. */
export type DropReason = "executed" | "another-signer" | "duplicate" | "oversize" | "not-a-map";

/**
 * The reasons no correct replica ever gives: the core cuts its forwards into chunks of at
 * most one batch, a replica sends only votes it signed, and every peer message is a map.
 * A peer that sends one is muted.
 */
export function provesFaulty(reason: string): boolean {
  return reason === "oversize" || reason === "another-signer" || reason === "not-a-map";
}

const UTF8 = new TextDecoder();

class Reader {
  pos = 0;
  constructor(private readonly bytes: Uint8Array) {}

  /** A head (major type and argument); null past the end or for an indefinite length. */
  head(): { major: number; arg: number } | null {
    const b = this.bytes;
    if (this.pos >= b.length) return null;
    const initial = b[this.pos++] as number;
    const major = initial >> 5;
    const info = initial & 0x1f;
    if (info < 24) return { major, arg: info };
    const width = info === 24 ? 1 : info === 25 ? 2 : info === 26 ? 4 : info === 27 ? 8 : 0;
    if (width === 0 || this.pos + width > b.length) return null;
    let arg = 0;
    for (let i = 0; i < width; i++) arg = arg * 256 + (b[this.pos++] as number);
    return Number.isSafeInteger(arg) ? { major, arg } : null;
  }

  text(): string | null {
    const h = this.head();
    if (h === null || h.major !== 3 || this.pos + h.arg > this.bytes.length) return null;
    const s = UTF8.decode(this.bytes.subarray(this.pos, this.pos + h.arg));
    this.pos += h.arg;
    return s;
  }

  /** Steps over one whole item; false when it cannot. Depth-bounded: canonical peer messages nest little. */
  skip(depth = 0): boolean {
    if (depth > 16) return false;
    const h = this.head();
    if (h === null) return false;
    switch (h.major) {
      case 0:
      case 1:
      case 7:
        return true;
      case 2:
      case 3:
        if (this.pos + h.arg > this.bytes.length) return false;
        this.pos += h.arg;
        return true;
      case 4:
        for (let i = 0; i < h.arg; i++) if (!this.skip(depth + 1)) return false;
        return true;
      case 5:
        for (let i = 0; i < 2 * h.arg; i++) if (!this.skip(depth + 1)) return false;
        return true;
      case 6:
        return this.skip(depth + 1);
      default:
        return false;
    }
  }
}

/** An envelope's head: its kind and epoch, and the reader left at its message. */
function readEnvelopeHead(r: Reader): { kind: PeerPeek["kind"]; epoch: number } | null {
  const envelope = r.head();
  if (envelope === null || envelope.major !== 5 || (envelope.arg !== 2 && envelope.arg !== 3)) return null;
  if (r.text() !== "kind") return null;
  const kind = r.text();
  if (kind !== "ordering" && kind !== "state-transfer") return null;
  let next = r.text();
  let envelopeEpoch = 0;
  // From epoch 1 on the envelope names its membership epoch (peer-messages.ts), between kind and message.
  if (envelope.arg === 3) {
    if (next !== "epoch") return null;
    const epoch = r.head();
    if (epoch === null || epoch.major !== 0) return null;
    envelopeEpoch = epoch.arg;
    next = r.text();
  }
  return next === "message" ? { kind, epoch: envelopeEpoch } : null;
}

/**
 * The seq and nonce of a state transfer `part` (state-transfer.ts), read in place, or null
 * when `bytes` is no such envelope: what a replica matches against the transfer it is
 * waiting for before it spares a message the byte budget. Its keys come in canonical
 * order, `t` `end` `seq` `data` `part` `nonce`; the data is stepped over, not read.
 */
export function peekTransferPart(bytes: Uint8Array): { seq: number; nonce: number } | null {
  const r = new Reader(bytes);
  const head = readEnvelopeHead(r);
  if (head === null || head.kind !== "state-transfer") return null;
  const map = r.head();
  if (map === null || map.major !== 5) return null;
  let t: string | null = null;
  let seq: number | null = null;
  let nonce: number | null = null;
  for (let i = 0; i < map.arg; i++) {
    const key = r.text();
    if (key === null) return null;
    if (key === "t") {
      t = r.text();
      if (t !== "part") return null;
    } else if (key === "seq" || key === "nonce") {
      const h = r.head();
      if (h === null || h.major !== 0) return null;
      if (key === "seq") seq = h.arg;
      else nonce = h.arg;
    } else if (!r.skip()) {
      return null;
    }
  }
  return t === "part" && seq !== null && nonce !== null ? { seq, nonce } : null;
}

/** The head of a peer envelope, or null when it is not one the peek can read. */
export function peekPeerMessage(bytes: Uint8Array): PeerPeek | null {
  const r = new Reader(bytes);
  const head = readEnvelopeHead(r);
  if (head === null) return null;
  const { kind } = head;
  const epochField = head.epoch === 0 ? {} : { epoch: head.epoch };
  const map = r.head();
  // Every message of both kinds is a map: anything else (readable or not) is no correct replica's.
  if (map === null || map.major !== 5) return { kind, t: null, seq: null, replica: null, ...epochField, notMap: true };
  if (kind === "state-transfer") return { kind, t: null, seq: null, replica: null, ...epochField };
  let t: string | null = null;
  let seq: number | null = null;
  let replica: number | null = null;
  for (let i = 0; i < map.arg; i++) {
    const key = r.text();
    if (key === null) return null;
    if (key === "t") {
      t = r.text();
      if (t === null) return null;
    } else if (key === "seq" || key === "replica") {
      const h = r.head();
      if (h === null) return null;
      if (h.major !== 0) continue;
      if (key === "seq") seq = h.arg;
      else replica = h.arg;
    } else if (!r.skip()) {
      return null;
    }
    if (t !== null && seq !== null && replica !== null) break;
  }
  return { kind, t, seq, replica, ...epochField };
}

/**
 * Whether every request of a FORWARD has executed here (`lastExecutedOf` a client space
 * is its last executed seq); false when it holds none or cannot be read.
 */
export function forwardAllExecuted(bytes: Uint8Array, lastExecutedOf: (space: string) => number): boolean {
  const r = new Reader(bytes);
  const envelope = r.head();
  if (envelope === null || envelope.major !== 5 || envelope.arg !== 2) return false;
  if (r.text() !== "kind" || r.text() !== "ordering" || r.text() !== "message") return false;
  const map = r.head();
  if (map === null || map.major !== 5) return false;
  for (let i = 0; i < map.arg; i++) {
    const key = r.text();
    if (key === null) return false;
    if (key !== "requests") {
      if (!r.skip()) return false;
      continue;
    }
    const list = r.head();
    if (list === null || list.major !== 4 || list.arg === 0) return false;
    for (let j = 0; j < list.arg; j++) {
      const req = r.head();
      if (req === null || req.major !== 5) return false;
      let client: string | null = null;
      let seq: number | null = null;
      let span: number | null = null;
      for (let k = 0; k < req.arg; k++) {
        const field = r.text();
        if (field === "client") {
          client = r.text();
        } else if (field === "seq" || field === "span") {
          const h = r.head();
          if (h === null || h.major !== 0) return false;
          if (field === "seq") seq = h.arg;
          else span = h.arg;
        } else if (field === null || !r.skip()) {
          return false;
        }
      }
      if (client === null || seq === null || span === null || seq + span - 1 > lastExecutedOf(client)) return false;
    }
    return true;
  }
  return false;
}

const VOTES_WITH_SIGNER = new Set(["PREPARE", "COMMIT", "CHECKPOINT", "VIEW_CHANGE"]);

export interface PeerFilterOptions {
  /** The last seq this replica executed (the ordering core's). */
  readonly lastExecuted: () => number;
  /** A client space's last executed seq (the ordering core's). */
  readonly lastExecutedOf: (space: string) => number;
  /** The largest FORWARD a correct replica sends, in envelope bytes. */
  readonly forwardBytesMax: number;
  /**
   * The core's rank of a peer in membership epoch `epoch` (src/replica/epochs.ts): what a
   * vote's signer field holds; -1 when the epoch is not this replica's or the peer is no
   * member (the driver refuses those, with the reason). Default: the id itself.
   */
  readonly rankOf?: (id: number, epoch: number) => number;
  readonly now?: () => number;
  readonly windowMs?: number;
}

export class PeerFilter {
  /** Per peer, FORWARD digests (hex) and when each was taken, oldest first. */
  private readonly forwards = new Map<number, Map<string, number>>();
  /** Per peer, when an executed seq's PRE_PREPARE was last let through. */
  private readonly executedPassed = new Map<number, number>();

  constructor(private readonly options: PeerFilterOptions) {}

  /** Durations only (the FORWARD window, the pace of executed PRE_PREPAREs): a wall-clock step must not move them. */
  private now(): number {
    return this.options.now === undefined ? performance.now() : this.options.now();
  }

  /** Why `msg` from `from` can be dropped before it is decoded, or null: it goes on. */
  check(from: number, msg: Uint8Array, peek: PeerPeek | null): DropReason | null {
    if (peek?.notMap === true) return "not-a-map";
    if (peek === null || peek.kind !== "ordering" || peek.t === null) return null;
    // A peer that is no member of this epoch (rank -1) is refused by the driver, with its reason.
    const rank = this.options.rankOf?.(from, peek.epoch ?? 0) ?? from;
    if (VOTES_WITH_SIGNER.has(peek.t) && peek.replica !== null && rank >= 0 && peek.replica !== rank) return "another-signer";
    if (peek.t === "PRE_PREPARE" && peek.seq !== null && peek.seq <= this.options.lastExecuted()) {
      const now = this.now();
      if (now - (this.executedPassed.get(from) ?? Number.NEGATIVE_INFINITY) < EXECUTED_PASS_MS) return "executed";
      this.executedPassed.set(from, now);
      return null;
    }
    if (peek.t !== "FORWARD") return null;
    if (msg.length > this.options.forwardBytesMax) return "oversize";
    if (forwardAllExecuted(msg, this.options.lastExecutedOf)) return "executed";
    return this.duplicateForward(from, msg) ? "duplicate" : null;
  }

  private duplicateForward(from: number, msg: Uint8Array): boolean {
    const now = this.now();
    const windowMs = this.options.windowMs ?? DUPLICATE_WINDOW_MS;
    let seen = this.forwards.get(from);
    if (seen === undefined) {
      seen = new Map();
      this.forwards.set(from, seen);
    }
    const digest = `${msg.length}:${toHex(sha256(msg.subarray(Math.max(0, msg.length - FORWARD_FINGERPRINT_BYTES))))}`;
    const at = seen.get(digest);
    if (at !== undefined && now - at < windowMs) return true;
    seen.delete(digest);
    seen.set(digest, now);
    while (seen.size > DUPLICATES_REMEMBERED_MAX) seen.delete(seen.keys().next().value as string);
    return false;
  }
}
