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
 *
 * What `PeerFilter` drops, each something the ordering core would ignore anyway:
 * - a PRE_PREPARE, PREPARE or COMMIT for a seq this replica has executed (a replayed or
 *   late message: the seq is decided here, and a later vote for it adds nothing);
 * - a PREPARE, COMMIT, CHECKPOINT or VIEW_CHANGE naming a signer other than the peer that
 *   sent it (the core refuses those: votes travel only from their signers);
 * - a FORWARD byte-identical to one the same peer sent in the last DUPLICATE_WINDOW_MS
 *   (its requests are in this replica's pool or executed; a client's own retransmission
 *   still reaches the leader through its own session and its replicas' later forwards).
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

/** What the peek read: the envelope's kind and, for an ordering message, its type and small fields. */
export interface PeerPeek {
  readonly kind: "ordering" | "state-transfer";
  readonly t: string | null;
  readonly seq: number | null;
  readonly replica: number | null;
}

/** Why a message was dropped cheaply: the `reason` label of fitb_peer_messages_dropped_total. */
export type DropReason = "executed" | "another-signer" | "duplicate";

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
    const s = new TextDecoder().decode(this.bytes.subarray(this.pos, this.pos + h.arg));
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

/** The head of a peer envelope, or null when it is not one the peek can read. */
export function peekPeerMessage(bytes: Uint8Array): PeerPeek | null {
  const r = new Reader(bytes);
  const envelope = r.head();
  if (envelope === null || envelope.major !== 5 || envelope.arg !== 2) return null;
  if (r.text() !== "kind") return null;
  const kind = r.text();
  if (kind !== "ordering" && kind !== "state-transfer") return null;
  if (r.text() !== "message") return null;
  if (kind === "state-transfer") return { kind, t: null, seq: null, replica: null };
  const map = r.head();
  if (map === null || map.major !== 5) return null;
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
  return { kind, t, seq, replica };
}

const VOTES_WITH_SIGNER = new Set(["PREPARE", "COMMIT", "CHECKPOINT", "VIEW_CHANGE"]);
const FOR_ONE_SEQ = new Set(["PRE_PREPARE", "PREPARE", "COMMIT"]);

export class PeerFilter {
  /** Per peer, FORWARD digests (hex) and when each was taken, oldest first. */
  private readonly forwards = new Map<number, Map<string, number>>();

  constructor(
    /** The last seq this replica executed (the ordering core's). */
    private readonly lastExecuted: () => number,
    private readonly now: () => number = Date.now,
    private readonly windowMs = DUPLICATE_WINDOW_MS,
  ) {}

  /** Why `msg` from `from` can be dropped before it is decoded, or null: it goes on. */
  check(from: number, msg: Uint8Array, peek: PeerPeek | null): DropReason | null {
    if (peek === null || peek.kind !== "ordering" || peek.t === null) return null;
    if (VOTES_WITH_SIGNER.has(peek.t) && peek.replica !== null && peek.replica !== from) return "another-signer";
    if (FOR_ONE_SEQ.has(peek.t) && peek.seq !== null && peek.seq <= this.lastExecuted()) return "executed";
    if (peek.t === "FORWARD") return this.duplicateForward(from, msg) ? "duplicate" : null;
    return null;
  }

  private duplicateForward(from: number, msg: Uint8Array): boolean {
    const now = this.now();
    let seen = this.forwards.get(from);
    if (seen === undefined) {
      seen = new Map();
      this.forwards.set(from, seen);
    }
    const digest = toHex(sha256(msg));
    const at = seen.get(digest);
    if (at !== undefined && now - at < this.windowMs) return true;
    seen.delete(digest);
    seen.set(digest, now);
    while (seen.size > DUPLICATES_REMEMBERED_MAX) seen.delete(seen.keys().next().value as string);
    return false;
  }
}
