/**
 * Subscriber-side delivery voting for one subscription (src/README.md §3, "subscriber delivers
 * when"):
 *
 * - byzantine/total: the batch at channel seq s is delivered only when f+1 distinct
 *   replicas sent the same (s, decided timestamp, digest of the signed request). At
 *   least one of them is correct, so f lying replicas can neither forge nor alter a batch.
 * - crash/total: the first copy that covers the next seq.
 * - crash/none: the first copy of each publisher seq range.
 * - byzantine/none: the first copy of each publisher seq range, once the publisher key
 *   is vouched for: f+1 distinct replicas have each sent a copy validly signed by it.
 *   Correct replicas store and forward only the events of publishers registered on the
 *   channel, and at least one of f+1 replicas is correct, so a key that f lying replicas
 *   made up themselves is never delivered. Copies of a key not yet vouched for are held
 *   and delivered (deduplicated, in arrival order) when it is.
 *
 * Every copy's publisher signature is checked through the injected `verify` before it
 * can be delivered or vouch for a key (end-to-end authenticity; on byzantine/total once
 * per distinct copy). Invalid copies are dropped and counted per replica. On
 * byzantine/none a copy of a key not yet vouched for is held unchecked until f+1 replicas
 * hold copies of the key: then one copy of each is checked, and the others as they are
 * delivered (after dedupe). Keys that only f replicas send, the ones they may make up,
 * never cost a check, however often their copies come round.
 *
 * An optional publisher filter (`acceptPublisher`) says whether a key is registered on the
 * channel; the client uses it on crash channels, where one replica's copy is delivered on
 * its own. A key the filter does not know yet ("unknown") is neither delivered nor
 * dropped: its copies are held per replica, within a bound, an "unknown-publisher"
 * output asks the caller to learn the registry again, and `recheckHeld` feeds them back.
 *
 * Total-order channels are delivered in seq order with no gap and no duplicate,
 * starting at `fromSeq` (a resume point may fall inside a batch: the events before it
 * are cut off). Copies that arrive ahead of the next seq wait in per-replica buffers with
 * a named bound; past it the copy is dropped and an "overflow" output tells the caller to
 * re-read from `nextSeq` later, instead of memory growing. Unordered channels keep a
 * bounded dedupe window per vouched publisher, and hold the evidence for keys not yet
 * vouched for per replica, within that replica's own allowance: a Byzantine replica that
 * floods made-up keys evicts only its own evidence, never a correct replica's. A window
 * at its bound forgets its lowest range only once f+1 replicas' copies have reached it
 * (one replica far ahead of the others cannot make it forget what they have yet to send),
 * and a copy below a forgotten range is reported ("stale"), never dropped silently; so
 * is a held copy dropped at a hold bound ("held-dropped"). On byzantine/none a key that
 * some replicas go on sending copies of, but fewer than f+1, lapses (`lapseVouches`).
 *
 * Pure: outputs are returned, nothing is sent or printed here.
 *
 * Why one file of more than 600 lines: the four rules share the per-replica buffers and
 * their byte bounds, the counts, and the decode-and-verify step, and the byzantine/none
 * vouching is the part most worth reading in one place next to the rules it serves.
 */
import { assert } from "../../../wire/assert.ts";
import { BoundedMap } from "../../../wire/bounded-map.ts";
import { bytesEqual, toHex } from "../../../wire/bytes.ts";
import { decodeCanonical, type Canonical } from "../../../wire/canonical.ts";

import { KEYS_PER_CHANNEL_MAX, REQUEST_BYTES_MAX } from "../channels/constants.ts";
import { parsePubRequest, signedRequestDigest } from "../channels/request.ts";
import { SeqRangeWindow } from "../channels/seq-window.ts";
import type { ChannelClass, HashFn, PubRequest, SignedRequest } from "../channels/types.ts";
import { checkGroup, replyKindOf, vouchQuorum } from "./quorum.ts";

/** Buffered copies (ahead of the next seq) one replica may hold in a subscription. */
export const DELIVERY_BUFFERED_BATCHES_PER_REPLICA_MAX = 256;
/** Copies of keys the publisher filter does not know yet that one replica may have held at once. */
export const DELIVERY_UNKNOWN_PUBLISHER_COPIES_PER_REPLICA_MAX = 64;
/** Bytes (body + signature) of such copies one replica may have held: two of the largest requests. */
export const DELIVERY_UNKNOWN_PUBLISHER_BYTES_PER_REPLICA_MAX = 2 * REQUEST_BYTES_MAX;
/** Bytes of buffered copies (body + signature) one replica may hold in a subscription. */
export const DELIVERY_BUFFERED_BYTES_PER_REPLICA_MAX = 8 * 1024 * 1024;
/** Distinct vouched publishers an unordered subscription tracks (publishers must be registered). */
export const DELIVERY_PUBLISHERS_MAX = KEYS_PER_CHANNEL_MAX;
/**
 * Publisher keys not yet vouched for that one replica may have sent copies of at once
 * (byzantine/none). Past it, that replica's oldest such key loses this replica's evidence.
 */
export const DELIVERY_UNVOUCHED_PUBLISHERS_PER_REPLICA_MAX = 64;
/** Copies one replica may have held for one publisher key not yet vouched for. */
export const DELIVERY_HELD_COPIES_PER_PUBLISHER_MAX = 64;
/** Bytes (body + signature) one replica may have held for one key not yet vouched for: two of the largest requests. */
export const DELIVERY_HELD_BYTES_PER_PUBLISHER_MAX = 2 * REQUEST_BYTES_MAX;
/** Seq ranges remembered per publisher on unordered subscriptions (see SeqRangeWindow). */
export const DELIVERY_DEDUPE_RANGES_PER_PUBLISHER_MAX = 1024;
/**
 * Unordered: a publisher's most recently delivered ranges whose signatures are kept, so
 * that a copy of one of them signed otherwise (another event under the same numbers: two
 * processes publishing with one key) is told from a copy of the same event. Recent ones
 * only: two writers collide at the head of the numbering.
 */
export const DELIVERY_SIGNED_RANGES_PER_PUBLISHER_MAX = 16;
/** Events delivered under one range's numbers at most (the first and the others' conflicting ones). */
const SIGNED_RANGE_VERSIONS_MAX = 4;
/** Why a held copy is dropped at the bounds of one key's evidence. */
const HELD_PER_KEY_REASON = `more than ${DELIVERY_HELD_COPIES_PER_PUBLISHER_MAX} copies or ${DELIVERY_HELD_BYTES_PER_PUBLISHER_MAX} bytes held from one replica for one publisher key not yet vouched for`;
/** Why a key's held copies are evicted at the bounds of one replica's evidence. */
const HELD_PER_REPLICA_REASON = `more than ${DELIVERY_UNVOUCHED_PUBLISHERS_PER_REPLICA_MAX} publisher keys not yet vouched for, or ${DELIVERY_BUFFERED_BYTES_PER_REPLICA_MAX} bytes, held from one replica`;
/** Why a replica's held copies of a key are dropped when its first one does not verify. */
const HELD_WITH_BAD_COPY_REASON = "held with a copy of the same publisher key whose signature does not verify";
/** Delivered batch starts remembered, to recognise late copies that contradict them. */
export const DELIVERED_HISTORY_MAX = 1024;
/** What a CopyKeys remembers at most: copies, and bytes of their bodies (oldest forgotten first). */
export const COPY_KEYS_MAX = 1024;
export const COPY_KEYS_BYTES_MAX = 8 * 1024 * 1024;

/**
 * Total order: what a copy votes for is its first seq's position, its timestamp and the
 * digest of its signed request. Correct replicas send the same bytes, so this remembers
 * the first copy keyed at each (tag, first seq), as a copy of its bytes, and a later copy
 * equal to it byte for byte takes its key by a comparison instead of hashing the batch
 * again; any other copy is hashed. The key is a function of those bytes, so the answer is
 * the one hashing gives. One per client, shared by its subscriptions' voters, so that its
 * bound (COPY_KEYS_MAX, COPY_KEYS_BYTES_MAX) holds however many it has.
 */
export class CopyKeys {
  private readonly known = new BoundedMap<
    string,
    { readonly tsMs: number; readonly body: Uint8Array; readonly sig: Uint8Array; readonly key: string }
  >(COPY_KEYS_MAX, COPY_KEYS_BYTES_MAX);

  /**
   * `hash`: the voters' hash, the one every key of this memo is made with; `sameBytes`: the
   * runtime's native comparison in the client, this loop by default.
   */
  constructor(
    private readonly hash: HashFn,
    private readonly sameBytes: (a: Uint8Array, b: Uint8Array) => boolean = bytesEqual,
  ) {}

  /** Forgets every copy (a client with no subscriptions left holds none). */
  clear(): void {
    this.known.clear();
  }

  keyOf(tag: string, copy: BatchCopy): string {
    const at = `${tag}\u0000${copy.firstSeq}`;
    const known = this.known.get(at);
    if (known !== undefined && known.tsMs === copy.tsMs && this.sameBytes(known.body, copy.body) && this.sameBytes(known.sig, copy.sig)) {
      return known.key;
    }
    const key = `${copy.tsMs}/${toHex(signedRequestDigest(this.hash, copy))}`;
    // A copy of the bytes: the events delivered are views into a copy's own, and a handler
    // that writes over them must not change what later copies are compared with.
    if (known === undefined) this.known.set(at, { tsMs: copy.tsMs, body: copy.body.slice(), sig: copy.sig.slice(), key }, copy.body.length);
    return key;
  }
}

/** A copy's body read as a publish request, or why it is not one. */
export type ParsedBody = PubRequest | "undecodable" | "malformed";

/**
 * Reads a copy's body (what every voter does unless given another reader, `parseBody`),
 * decoding at most `itemsMax` values: a copy is read before its signature is checked.
 */
export function parseBody(body: Uint8Array, itemsMax?: number): ParsedBody {
  let value: Canonical;
  try {
    value = decodeCanonical(body, itemsMax);
  } catch {
    return "undecodable";
  }
  return parsePubRequest(value) ?? "malformed";
}

/**
 * Verifies a publisher signature of a request of body version `version` (the body's `v`):
 * over `utf8("fitb/v1/request") || 0x00 || body` (1) or over
 * `utf8("fitb/v1/request-digest") || 0x00 || sha256(body)` (2; wire/session.ts requestSignedParts).
 */
export type VerifyRequest = (body: Uint8Array, sig: Uint8Array, publisher: Uint8Array, version: number) => boolean;

export type DeliveryVoterOptions = {
  readonly tag: string;
  readonly cls: Pick<ChannelClass, "fault" | "order">;
  readonly n: number;
  readonly f: number;
  /** Total order: the first channel seq to deliver (a resume point). Default 1. */
  readonly fromSeq?: number;
  readonly hash: HashFn;
  /** Total order: the client's memo of copy keys, shared by its voters, which makes the keys with its own hash (default: one of this voter's own, with `hash`). */
  readonly copyKeys?: CopyKeys;
  readonly verify: VerifyRequest;
  /** Reads a copy's body (default parseBody); the client's remembers what it read of a body its subscriptions share. The answer is read, never written. */
  readonly parseBody?: (body: Uint8Array) => ParsedBody;
  /**
   * Optional filter, e.g. the channel's registered publishers; default accepts all.
   * "unknown": the caller does not know yet; the copy is held until `recheckHeld`.
   */
  readonly acceptPublisher?: (publisher: Uint8Array) => PublisherVerdict;
  /**
   * Unordered: copies of requests signed before this time (the publisher's `ts`) are
   * dropped as stale. A live subscription sets it a little before it started, so a
   * replica cannot replay old events to it as if they were new.
   */
  readonly notBeforeMs?: number;
};

/** What the publisher filter says of a key: registered, not registered, or not known yet. */
export type PublisherVerdict = boolean | "unknown";

/** A stored batch as a replica sends it to a subscriber. */
export type BatchCopy = {
  readonly firstSeq: number;
  readonly tsMs: number;
  readonly body: Uint8Array;
  readonly sig: Uint8Array;
};

export type DeliveredBatch = {
  readonly tag: string;
  /** Channel seq of events[0] on total-order channels; null on unordered ones. */
  readonly seq: number | null;
  readonly publisher: Uint8Array;
  /** Publisher seq of events[0]. */
  readonly pubSeq: number;
  readonly tsMs: number;
  readonly events: readonly Uint8Array[];
  /** The whole signed request, for end-to-end re-verification or archiving. */
  readonly request: PubRequest;
  readonly signed: SignedRequest;
};

export type DeliveryOutput =
  | { readonly t: "deliver"; readonly batch: DeliveredBatch }
  /**
   * A copy failed its checks and was dropped. Replicas check publisher signatures before
   * they store, so on Byzantine channels this is evidence against the sender.
   */
  | { readonly t: "invalid"; readonly replica: number; readonly reason: InvalidReason }
  /** A replica sent a copy that contradicts another copy it sent or what was delivered. */
  | { readonly t: "conflict"; readonly replica: number; readonly seq: number; readonly reason: string }
  /** A copy was dropped at a buffer bound; re-read from `nextSeq` once deliveries resume. */
  | { readonly t: "overflow"; readonly replica: number; readonly nextSeq: number; readonly reason: string }
  /**
   * Unordered: a publisher was vouched for but the subscription already tracks
   * DELIVERY_PUBLISHERS_MAX publishers, so its copies were dropped. `droppedEvents`
   * counts the distinct events among the copies dropped now; they are lost here.
   */
  | { readonly t: "publishers-full"; readonly publisher: Uint8Array; readonly droppedEvents: number; readonly reason: string }
  /**
   * Unordered: a copy at or below a range the publisher's dedupe window had to forget (at
   * DELIVERY_DEDUPE_RANGES_PER_PUBLISHER_MAX): it cannot be told from a delivered one, so it
   * was dropped, and its `events` may never have been delivered.
   */
  | { readonly t: "stale"; readonly replica: number; readonly publisher: Uint8Array; readonly events: number }
  /**
   * Unordered: copies from `replica` held until their key is vouched for (or known to the
   * publisher filter) were dropped at a hold bound, or evicted with the replica's oldest
   * key. No replica sends an unordered channel's copies again, so their `events` are lost
   * unless another replica's copy of them is delivered.
   */
  | { readonly t: "held-dropped"; readonly replica: number; readonly events: number; readonly reason: string }
  /** Enough replicas say `nextSeq` is no longer retained; `oldestSeq` is where to go on. */
  | { readonly t: "trimmed"; readonly nextSeq: number; readonly oldestSeq: number }
  /**
   * A copy signed by a key the publisher filter does not know yet is held: learn the
   * registry again, then call `recheckHeld`.
   */
  | { readonly t: "unknown-publisher"; readonly replica: number; readonly publisher: Uint8Array };

/** Why a copy was dropped as invalid. */
export type InvalidReason =
  | "bad-position" // firstSeq or tsMs not a valid integer
  | "undecodable" // the body is not canonical CBOR
  | "malformed" // the body is not a pub request
  | "wrong-tag" // a pub request for another channel
  | "publisher-refused" // the acceptPublisher filter said no
  | "bad-signature"; // the publisher signature does not verify

export type DeliveryStats = {
  readonly deliveredBatches: number;
  readonly deliveredEvents: number;
  /** Per replica id. */
  readonly invalid: readonly number[];
  readonly duplicates: readonly number[];
  readonly conflicts: readonly number[];
  /** Copies dropped at a bound (unordered: also a range that would push a lower one out of the dedupe window before f+1 replicas reached it). */
  readonly overflows: readonly number[];
  /** Copies below the window (unordered: forgotten ranges or partial overlaps). */
  readonly stale: readonly number[];
  readonly unknownReplica: number;
  /** Copies currently buffered, all replicas together. */
  readonly buffered: number;
  /**
   * Unordered: copies of a publisher key not yet vouched for that were dropped, at a hold
   * bound or with an eviction, per replica.
   */
  readonly heldDropped: readonly number[];
  /** Unordered: keys not yet vouched for whose evidence from this replica was evicted to keep within its allowance. */
  readonly evictions: readonly number[];
  /** Unordered: copies held until their publisher key is vouched for, all replicas together. */
  readonly held: number;
  /** Copies held until the publisher filter knows their key, all replicas together. */
  readonly heldUnknown: number;
};

/** One distinct copy waiting at a seq, with the replicas that sent it. */
type Group = {
  readonly key: string;
  readonly firstSeq: number;
  readonly tsMs: number;
  readonly end: number;
  readonly request: PubRequest;
  readonly signed: SignedRequest;
  readonly bytes: number;
  readonly voters: Set<number>;
};

/** A copy of a publisher key not yet vouched for, held until it is. */
type HeldCopy = {
  /** Arrival order across replicas, so held copies are delivered as they came. */
  readonly arrival: number;
  readonly replica: number;
  readonly request: PubRequest;
  readonly copy: BatchCopy;
  /** Whether its signature was checked and verifies: checked once its key has evidence from `threshold` replicas (confirmEvidence), or as it is delivered. */
  verified: boolean;
};

/**
 * One replica's evidence for one key not yet vouched for: the copies it sent, unchecked
 * until the key has evidence from `threshold` replicas (then its first copy, if it
 * verifies, stands for it: confirmEvidence).
 */
type Evidence = { readonly held: HeldCopy[]; bytes: number };

/** Unordered: what is kept of a publisher key once it has been vouched for. */
type Vouched = {
  /** The publisher seq ranges delivered; kept when the key lapses, so that nothing is delivered twice. */
  readonly window: SeqRangeWindow;
  /** Per replica: the highest publisher seq its copies of the key reached (see pushesOutLower). */
  readonly reached: Map<number, number>;
  /** Replicas that sent a copy of the key since the last `lapseVouches`. */
  copiedBy: Set<number>;
  /** False once the key lapsed (byzantine/none): its copies need f+1 replicas' evidence again. */
  vouched: boolean;
  /**
   * The latest DELIVERY_SIGNED_RANGES_PER_PUBLISHER_MAX ranges delivered, a ring written at
   * `signedNext`, each with the signatures of the events delivered under it: a duplicate
   * range signed otherwise is another event (sameRangeOtherEvent).
   */
  readonly signed: SignedRange[];
  signedNext: number;
};

/**
 * A delivered range and what tells its events apart: the first 8 bytes of each one's
 * signature, as two numbers (an ed25519 signature begins with its nonce point, so two
 * events share them by chance with odds of 2^-64; kept as numbers, a copy costs no
 * allocation and keeps no view of its frame alive).
 */
type SignedRange = { start: number; end: number; readonly sigHeads: number[] };

/** Four bytes of a signature from `at` as one 32-bit number (signed, the same way wherever it is read). */
function sigWord(sig: Uint8Array, at: number): number {
  return ((sig[at] as number) << 24) | ((sig[at + 1] as number) << 16) | ((sig[at + 2] as number) << 8) | (sig[at + 3] as number);
}

/** The first 8 bytes of a signature as two numbers, pushed onto `into`. */
function pushSigHead(into: number[], sig: Uint8Array): void {
  into.push(sigWord(sig, 0), sigWord(sig, 4));
}

/**
 * The delivered range among the publisher's latest whose numbers `request` has and whose
 * events it is not (its signature's head is not among theirs), with room for one more
 * version; null when the copy is one of them, or its range is not kept (a duplicate).
 */
function otherEventRange(entry: Vouched, request: PubRequest, copy: BatchCopy): SignedRange | null {
  if (copy.sig.length < 8) return null;
  const end = request.seq + request.span - 1;
  for (const range of entry.signed) {
    if (range.start !== request.seq || range.end !== end) continue;
    return hasSigHead(range.sigHeads, copy.sig) || range.sigHeads.length >= 2 * SIGNED_RANGE_VERSIONS_MAX ? null : range;
  }
  return null;
}

/** Whether `heads` (pairs) hold the first 8 bytes of `sig`. */
function hasSigHead(heads: readonly number[], sig: Uint8Array): boolean {
  const hi = sigWord(sig, 0);
  const lo = sigWord(sig, 4);
  for (let i = 0; i < heads.length; i += 2) if (heads[i] === hi && heads[i + 1] === lo) return true;
  return false;
}

type CountName = "invalid" | "duplicates" | "conflicts" | "overflows" | "stale" | "heldDropped" | "evictions";

type Opened = { readonly request: PubRequest } | { readonly invalid: InvalidReason } | { readonly unknown: PubRequest };

/** A copy held until the publisher filter knows its key, with how many events it carries. */
type UnknownCopy = { readonly arrival: number; readonly copy: BatchCopy; readonly bytes: number; readonly events: number };

export class DeliveryVoter {
  private readonly tag: string;
  private readonly ordered: boolean;
  private readonly byzantine: boolean;
  private threshold: number;
  /** One more than the highest replica id copies are taken from (per-replica arrays are this long). */
  private n: number;
  /** The replicas whose copies count; null: every id below n (no regroup yet). */
  private members: ReadonlySet<number> | null = null;
  private readonly hash: HashFn;
  private readonly verify: VerifyRequest;
  private readonly parseBody: (body: Uint8Array) => ParsedBody;
  private readonly notBeforeMs: number;
  private readonly acceptPublisher: (publisher: Uint8Array) => PublisherVerdict;
  /** Per replica: copies whose key the publisher filter does not know yet, oldest first. */
  private readonly unknownHeld: UnknownCopy[][];
  private unknownHeldBytes: number[];
  private next: number;

  // Total order: copies waiting, by first seq, then by copy key.
  private readonly pending = new Map<number, Map<string, Group>>();
  /** Per replica: the key it voted for at each first seq still pending. */
  private readonly votes: Map<number, string>[];
  private bufferedBytes: number[];
  private readonly history = new Map<number, string>();
  private readonly copyKeys: CopyKeys;
  private readonly trimNotices = new Map<number, number>();
  /**
   * Whether a pending copy may start before the next seq yet cover it (a resume point
   * inside a batch). Only then must finding the ready copy look beyond `pending[next]`.
   */
  private straddlers = false;
  private trimReportedAt = 0;

  // Unordered: seen publisher seq ranges, per publisher vouched for (now or before it lapsed).
  private readonly seen = new Map<string, Vouched>();
  /**
   * Unordered, per replica: its evidence for each publisher key not yet vouched for, by
   * key hex, oldest first. A key is vouched for once `threshold` replicas hold evidence
   * that verifies (confirmEvidence). Its held bytes count in `bufferedBytes`.
   */
  private readonly unvouched: Map<string, Evidence>[];
  private arrivals = 0;

  private deliveredBatches = 0;
  private deliveredEvents = 0;
  private readonly counts: Record<CountName, number[]>;
  private unknownReplica = 0;

  constructor(options: DeliveryVoterOptions) {
    const kind = replyKindOf(options.cls);
    checkGroup(kind, options.n, options.f);
    const fromSeq = options.fromSeq ?? 1;
    if (!Number.isSafeInteger(fromSeq) || fromSeq < 1) throw new RangeError("fromSeq must be a positive integer");
    this.tag = options.tag;
    this.ordered = options.cls.order === "total";
    // Byzantine channels need f+1 replicas to agree: on the copy at a seq (total order),
    // or that a publisher key is one they forward (unordered). Crash replicas do not lie,
    // so one is enough there.
    this.byzantine = options.cls.fault === "byzantine";
    this.threshold = this.byzantine ? vouchQuorum(options.f) : 1;
    this.n = options.n;
    this.hash = options.hash;
    this.copyKeys = options.copyKeys ?? new CopyKeys(options.hash);
    this.verify = options.verify;
    this.parseBody = options.parseBody ?? parseBody;
    this.acceptPublisher = options.acceptPublisher ?? (() => true);
    this.notBeforeMs = options.notBeforeMs ?? 0;
    this.next = fromSeq;
    this.votes = Array.from({ length: options.n }, () => new Map<number, string>());
    this.unvouched = Array.from({ length: options.n }, () => new Map<string, Evidence>());
    this.unknownHeld = Array.from({ length: options.n }, (): UnknownCopy[] => []);
    this.unknownHeldBytes = new Array<number>(options.n).fill(0);
    this.bufferedBytes = new Array<number>(options.n).fill(0);
    const zeros = (): number[] => new Array<number>(options.n).fill(0);
    this.counts = {
      invalid: zeros(),
      duplicates: zeros(),
      conflicts: zeros(),
      overflows: zeros(),
      stale: zeros(),
      heldDropped: zeros(),
      evictions: zeros(),
    };
  }

  /** Total order: the next seq to deliver, i.e. where to resume after a disconnect. */
  get nextSeq(): number {
    return this.next;
  }

  /**
   * Total order: the first seq of a copy waiting that covers the next seq (one that starts
   * there, or a straddler that starts before it), or null if no copy covers it yet.
   */
  headFirstSeq(): number | null {
    if (this.pending.has(this.next)) return this.next;
    if (!this.straddlers) return null;
    for (const [firstSeq, groups] of this.pending) {
      if (firstSeq >= this.next) continue;
      for (const group of groups.values()) if (group.end > this.next) return firstSeq;
    }
    return null;
  }

  /** Takes one copy from `replica` and returns what it caused, in order. */
  onBatch(replica: number, copy: BatchCopy): DeliveryOutput[] {
    if (!this.isMember(replica)) {
      this.unknownReplica++;
      return [];
    }
    return this.ordered ? this.onOrderedCopy(replica, copy) : this.onUnorderedCopy(replica, copy);
  }

  /**
   * A replica reports that `nextSeq` is below its oldest retained seq. Reported as
   * "trimmed" once as many replicas as a delivery needs agree that it is (f+1 on
   * byzantine/total, so f liars cannot invent a gap), naming the smallest of their
   * oldest seqs: the least the subscriber must skip. Nothing is skipped until `skipTo`.
   */
  onTrimmed(replica: number, oldestSeq: number): DeliveryOutput[] {
    if (!this.ordered || !this.isMember(replica)) return [];
    if (!Number.isSafeInteger(oldestSeq) || oldestSeq <= this.next) return [];
    this.trimNotices.set(replica, oldestSeq);
    if (this.trimNotices.size < this.threshold || this.trimReportedAt === this.next) return [];
    this.trimReportedAt = this.next;
    return [{ t: "trimmed", nextSeq: this.next, oldestSeq: Math.min(...this.trimNotices.values()) }];
  }

  /** Accepts a gap (after "trimmed"): continues at `seq`, dropping what lies before it. */
  skipTo(seq: number): DeliveryOutput[] {
    if (!this.ordered || !Number.isSafeInteger(seq) || seq <= this.next) return [];
    this.next = seq;
    this.trimNotices.clear();
    this.dropBehind();
    return this.deliverReady();
  }

  /** Matching copies from distinct replicas a delivery needs now: f+1 of the group's f on Byzantine channels, 1 otherwise (regroup changes it). */
  get quorum(): number {
    return this.threshold;
  }

  /**
   * The group the subscriber follows changed (membership-follow.ts): from now on only
   * copies of `members` count, and a delivery needs f+1 of them for the new `f`. The rule
   * at the switch: every vote of a replica that is no longer a member, or whose key was
   * replaced (`withdrawn`), is taken back, and each batch still waiting is judged again
   * against the new threshold with the votes that remain. So a batch that had f_old+1
   * copies but fewer than f_new+1 waits for more copies of current members; a batch that
   * now reaches a lower threshold is delivered at once. Nothing delivered is taken back
   * and nothing is delivered twice: the next seq and, on unordered channels, the dedupe
   * windows of vouched publishers stay (a key vouched for under the earlier group stays
   * vouched until it lapses: its events still carry the publisher's verified signature).
   */
  regroup(members: readonly number[], f: number, withdrawn: readonly number[] = []): DeliveryOutput[] {
    checkGroup(replyKindOf({ fault: this.byzantine ? "byzantine" : "crash", order: this.ordered ? "total" : "none" }), members.length, f);
    for (const id of members) {
      if (!Number.isSafeInteger(id) || id < 0) throw new RangeError(`replica id ${id} is not a non-negative integer`);
    }
    const top = Math.max(this.n, ...members.map((id) => id + 1));
    const grow = <T>(list: T[], make: () => T): void => {
      while (list.length < top) list.push(make());
    };
    grow(this.votes, () => new Map<number, string>());
    grow(this.unvouched, () => new Map<string, Evidence>());
    grow(this.unknownHeld, (): UnknownCopy[] => []);
    grow(this.unknownHeldBytes, () => 0);
    grow(this.bufferedBytes, () => 0);
    for (const name of Object.keys(this.counts) as CountName[]) grow(this.counts[name], () => 0);
    this.n = top;
    const next = new Set(members);
    this.members = next;
    this.threshold = this.byzantine ? vouchQuorum(f) : 1;
    const gone = new Set(withdrawn);
    for (let id = 0; id < this.n; id++) if (!next.has(id)) gone.add(id);
    for (const replica of gone) this.withdraw(replica);
    if (this.ordered) return this.deliverReady();
    const outputs: DeliveryOutput[] = [];
    const keys = new Set<string>();
    for (const evidence of this.unvouched) for (const key of evidence.keys()) keys.add(key);
    for (const publisherHex of keys) {
      if (this.vouchersOf(publisherHex) < this.threshold) continue;
      outputs.push(...this.confirmEvidence(publisherHex));
      if (this.vouchersOf(publisherHex) < this.threshold) continue;
      const held = this.takeHeld(publisherHex);
      const first = held[0];
      if (first !== undefined) outputs.push(...this.admit(publisherHex, first.request.client, held));
    }
    return outputs;
  }

  /** Takes back every vote, held copy and trim notice of `replica`. */
  private withdraw(replica: number): void {
    if (replica >= this.n) return;
    for (const [firstSeq, key] of [...(this.votes[replica] as Map<number, string>)]) {
      const groups = this.pending.get(firstSeq);
      const group = groups?.get(key);
      if (groups === undefined || group === undefined) continue;
      group.voters.delete(replica);
      this.unvote(replica, group);
      if (group.voters.size === 0) groups.delete(key);
      if (groups.size === 0) this.pending.delete(firstSeq);
    }
    (this.votes[replica] as Map<number, string>).clear();
    const evidence = this.unvouched[replica] as Map<string, Evidence>;
    evidence.clear();
    for (const entry of this.seen.values()) {
      entry.reached.delete(replica);
      entry.copiedBy.delete(replica);
    }
    (this.unknownHeld[replica] as UnknownCopy[]).length = 0;
    this.unknownHeldBytes[replica] = 0;
    this.bufferedBytes[replica] = 0;
    this.trimNotices.delete(replica);
  }

  /**
   * Byzantine/none: a key that some replicas go on sending copies of, but fewer than f+1,
   * lapses. The caller calls this at a fixed interval (the core has no clock; the client's
   * VOUCH_LAPSE_INTERVAL_MS): a key that at least one replica, and fewer than f+1, sent a
   * copy of since the call before lapses, and its copies are held as evidence again until
   * f+1 replicas have sent one. Correct replicas refuse a key unregistered from the channel,
   * so a key that only f replicas go on forwarding (a compromised key) stops being
   * delivered. A quiet key (no copy from anyone) stays vouched for: lapsing it would make
   * its next batch wait for a second replica's copy, and when many quiet publishers publish
   * together, the evidence each replica may hold
   * (DELIVERY_UNVOUCHED_PUBLISHERS_PER_REPLICA_MAX keys) would be evicted before the
   * second copy came, losing their batches. The key's dedupe window stays: nothing
   * delivered before is delivered again once it is vouched for anew.
   */
  lapseVouches(): void {
    if (this.ordered || !this.byzantine) return;
    for (const entry of this.seen.values()) {
      if (entry.copiedBy.size > 0 && entry.copiedBy.size < this.threshold) entry.vouched = false;
      entry.copiedBy = new Set();
    }
  }

  private isMember(replica: number): boolean {
    if (!Number.isSafeInteger(replica) || replica < 0 || replica >= this.n) return false;
    return this.members === null || this.members.has(replica);
  }

  stats(): DeliveryStats {
    let buffered = 0;
    for (const groups of this.pending.values()) for (const group of groups.values()) buffered += group.voters.size;
    let held = 0;
    for (const evidence of this.unvouched) for (const own of evidence.values()) held += own.held.length;
    let heldUnknown = 0;
    for (const copies of this.unknownHeld) heldUnknown += copies.length;
    return {
      deliveredBatches: this.deliveredBatches,
      deliveredEvents: this.deliveredEvents,
      invalid: [...this.counts.invalid],
      duplicates: [...this.counts.duplicates],
      conflicts: [...this.counts.conflicts],
      overflows: [...this.counts.overflows],
      stale: [...this.counts.stale],
      unknownReplica: this.unknownReplica,
      buffered,
      heldDropped: [...this.counts.heldDropped],
      evictions: [...this.counts.evictions],
      held,
      heldUnknown,
    };
  }

  // ---------------------------------------------------------------------------------
  // Opening a copy: decode, check, verify
  // ---------------------------------------------------------------------------------

  private decode(body: Uint8Array): Opened {
    const request = this.parseBody(body);
    if (request === "undecodable" || request === "malformed") return { invalid: request };
    if (request.op.tag !== this.tag) return { invalid: "wrong-tag" };
    const verdict = this.acceptPublisher(request.client);
    if (verdict === "unknown") return { unknown: request };
    if (!verdict) return { invalid: "publisher-refused" };
    return { request };
  }

  /**
   * Holds a copy whose key the publisher filter does not know yet, within the sender's
   * own allowance (a replica that floods made-up keys pushes out only its own copies).
   * On a total-order channel a copy pushed out is asked for again (overflow: re-read
   * from the next seq), so nothing is skipped; on an unordered one it is reported
   * ("held-dropped").
   */
  private holdUnknown(replica: number, copy: BatchCopy, request: PubRequest): DeliveryOutput[] {
    const held = this.unknownHeld[replica] as UnknownCopy[];
    const bytes = copy.body.length + copy.sig.length;
    const outputs: DeliveryOutput[] = [];
    let pushedOut = 0;
    let pushedOutEvents = 0;
    while (
      held.length > 0 &&
      (held.length >= DELIVERY_UNKNOWN_PUBLISHER_COPIES_PER_REPLICA_MAX ||
        (this.unknownHeldBytes[replica] as number) + bytes > DELIVERY_UNKNOWN_PUBLISHER_BYTES_PER_REPLICA_MAX)
    ) {
      const oldest = held.shift() as UnknownCopy;
      this.unknownHeldBytes[replica] = (this.unknownHeldBytes[replica] as number) - oldest.bytes;
      pushedOut++;
      pushedOutEvents += oldest.events;
    }
    if (bytes > DELIVERY_UNKNOWN_PUBLISHER_BYTES_PER_REPLICA_MAX) {
      pushedOut++;
      pushedOutEvents += request.span;
    } else {
      held.push({ arrival: this.arrivals++, copy, bytes, events: request.span });
      this.unknownHeldBytes[replica] = (this.unknownHeldBytes[replica] as number) + bytes;
    }
    if (pushedOut > 0) {
      const reason = `more than ${DELIVERY_UNKNOWN_PUBLISHER_COPIES_PER_REPLICA_MAX} copies of unknown publishers held`;
      const dropped = this.dropHeld(replica, pushedOut, pushedOutEvents, reason);
      outputs.push(...(this.ordered ? this.overflow(replica, reason) : dropped));
    }
    outputs.push({ t: "unknown-publisher", replica, publisher: request.client });
    return outputs;
  }

  /**
   * The publisher filter has learnt more: every held copy of a key it did not know goes
   * through again, in arrival order (delivered, refused, or held again if still unknown).
   */
  recheckHeld(): DeliveryOutput[] {
    const copies: { arrival: number; replica: number; copy: BatchCopy }[] = [];
    this.unknownHeld.forEach((held, replica) => {
      for (const entry of held) copies.push({ arrival: entry.arrival, replica, copy: entry.copy });
      held.length = 0;
      this.unknownHeldBytes[replica] = 0;
    });
    copies.sort((a, b) => a.arrival - b.arrival);
    const outputs: DeliveryOutput[] = [];
    for (const entry of copies) outputs.push(...this.onBatch(entry.replica, entry.copy));
    return outputs;
  }

  private count(what: CountName, replica: number): void {
    (this.counts[what][replica] as number)++;
  }

  // ---------------------------------------------------------------------------------
  // Unordered channels
  // ---------------------------------------------------------------------------------

  private onUnorderedCopy(replica: number, copy: BatchCopy): DeliveryOutput[] {
    const decoded = this.decode(copy.body);
    if ("invalid" in decoded) return this.invalidCopy(replica, decoded.invalid);
    if ("unknown" in decoded) return this.holdUnknown(replica, copy, decoded.unknown);
    const request = decoded.request;
    if (request.ts < this.notBeforeMs) {
      this.count("stale", replica);
      return [];
    }
    const publisherHex = toHex(request.client);
    const entry = this.seen.get(publisherHex);
    if (entry?.vouched === true) return this.onVouchedCopy(replica, entry, request, copy);
    return this.onUnvouchedCopy(replica, publisherHex, request, copy);
  }

  /**
   * Dedupe happens before the signature check, so copies of delivered events cost no
   * verify, nor do ranges refused for now (pushesOutLower).
   */
  private onVouchedCopy(replica: number, entry: Vouched, request: PubRequest, copy: BatchCopy): DeliveryOutput[] {
    this.noteCopy(entry, replica, request);
    const dropped = this.checkRange(replica, entry, request, copy);
    if (dropped !== null) return dropped;
    if (!this.verify(copy.body, copy.sig, request.client, request.v)) return this.invalidCopy(replica, "bad-signature");
    return [this.deliverUnordered(entry, request, copy)];
  }

  /**
   * A copy signed by a key not yet vouched for: held as this replica's evidence for the
   * key, unchecked (a replica that sends many copies counts once). The copy that gives the
   * key evidence from `threshold` replicas is checked, and so is one copy of each of the
   * others (confirmEvidence): if `threshold` replicas still vouch, the key is, and
   * everything held for it goes through the normal path in arrival order, each copy checked
   * unless it was or is a duplicate. Checking on arrival instead would let one replica
   * that replays copies of keys of its own making (round the allowance, so that each
   * evicts the oldest and comes back as new) cost a check per copy, for ever.
   */
  private onUnvouchedCopy(replica: number, publisherHex: string, request: PubRequest, copy: BatchCopy): DeliveryOutput[] {
    // A key that lapsed keeps its window: a copy of what was delivered is dropped unverified,
    // unless it is another event under delivered numbers (sameRangeOtherEvent), which is held
    // like any copy and judged when the key is vouched for again.
    const lapsed = this.seen.get(publisherHex);
    if (
      lapsed !== undefined &&
      lapsed.window.check(request.seq, request.seq + request.span - 1) === "duplicate" &&
      otherEventRange(lapsed, request, copy) === null
    ) {
      this.count("duplicates", replica);
      return [];
    }
    const evidence = this.unvouched[replica] as Map<string, Evidence>;
    const own = evidence.get(publisherHex);
    const bytes = copy.body.length + copy.sig.length;
    // This replica already vouches for the key: a copy past its hold bound changes
    // nothing, so it is dropped.
    if (own !== undefined && !holdFits(own, bytes)) return this.dropHeld(replica, 1, request.span, HELD_PER_KEY_REASON);
    const held: HeldCopy = { arrival: this.arrivals++, replica, request, copy, verified: false };
    if (own !== undefined || this.vouchersOf(publisherHex) + 1 < this.threshold) return this.hold(held, publisherHex, bytes);
    if (!this.verify(copy.body, copy.sig, request.client, request.v)) return this.invalidCopy(replica, "bad-signature");
    held.verified = true;
    const outputs = this.confirmEvidence(publisherHex);
    if (this.vouchersOf(publisherHex) + 1 >= this.threshold) {
      outputs.push(...this.admit(publisherHex, request.client, [...this.takeHeld(publisherHex), held]));
    } else {
      outputs.push(...this.hold(held, publisherHex, bytes));
    }
    return outputs;
  }

  /**
   * Checks the first copy of the evidence each replica holds for a key (once: a copy
   * checked stays so). A replica whose copy does not verify is faulty (replicas check a
   * signature before they store), so that copy is reported against it and the rest of its
   * evidence for the key dropped unchecked ("held-dropped"): one check per replica and key
   * however many copies it held, and it vouches for nothing.
   */
  private confirmEvidence(publisherHex: string): DeliveryOutput[] {
    const outputs: DeliveryOutput[] = [];
    this.unvouched.forEach((evidence, replica) => {
      const own = evidence.get(publisherHex);
      const first = own?.held[0];
      if (own === undefined || first === undefined) return;
      if (first.verified || this.verify(first.copy.body, first.copy.sig, first.request.client, first.request.v)) {
        first.verified = true;
        return;
      }
      evidence.delete(publisherHex);
      this.bufferedBytes[replica] = (this.bufferedBytes[replica] as number) - own.bytes;
      outputs.push(...this.invalidCopy(replica, "bad-signature"));
      let events = 0;
      for (const held of own.held.slice(1)) events += held.request.span;
      outputs.push(...this.dropHeld(replica, own.held.length - 1, events, HELD_WITH_BAD_COPY_REASON));
    });
    return outputs;
  }

  /** Distinct replicas holding evidence for a key not yet vouched for. */
  private vouchersOf(publisherHex: string): number {
    let vouchers = 0;
    for (const evidence of this.unvouched) if (evidence.has(publisherHex)) vouchers++;
    return vouchers;
  }

  /**
   * Keeps a copy as its sender's evidence. Room within the sender's allowance
   * (keys, and bytes across its keys) is made by evicting the sender's own oldest key,
   * so a flood from one replica never costs another replica its evidence. What is dropped
   * to keep within it is reported ("held-dropped").
   */
  private hold(held: HeldCopy, publisherHex: string, bytes: number): DeliveryOutput[] {
    const replica = held.replica;
    const evidence = this.unvouched[replica] as Map<string, Evidence>;
    const outputs: DeliveryOutput[] = [];
    let own = evidence.get(publisherHex);
    if (own === undefined) {
      while (evidence.size >= DELIVERY_UNVOUCHED_PUBLISHERS_PER_REPLICA_MAX) {
        const evicted = this.evictOldest(replica, publisherHex);
        if (evicted === null) break;
        outputs.push(...evicted);
      }
      own = { held: [], bytes: 0 };
      evidence.set(publisherHex, own);
    }
    while ((this.bufferedBytes[replica] as number) + bytes > DELIVERY_BUFFERED_BYTES_PER_REPLICA_MAX) {
      const evicted = this.evictOldest(replica, publisherHex);
      if (evicted === null) break;
      outputs.push(...evicted);
    }
    // The key stays vouched for by this replica even when its copy cannot be kept.
    if (!holdFits(own, bytes) || (this.bufferedBytes[replica] as number) + bytes > DELIVERY_BUFFERED_BYTES_PER_REPLICA_MAX) {
      outputs.push(...this.dropHeld(replica, 1, held.request.span, HELD_PER_KEY_REASON));
      return outputs;
    }
    own.held.push(held);
    own.bytes += bytes;
    this.bufferedBytes[replica] = (this.bufferedBytes[replica] as number) + bytes;
    return outputs;
  }

  /** Drops the replica's oldest evidence other than for `keep`, and says so; null if there is none. */
  private evictOldest(replica: number, keep: string): DeliveryOutput[] | null {
    const evidence = this.unvouched[replica] as Map<string, Evidence>;
    for (const [publisherHex, own] of evidence) {
      if (publisherHex === keep) continue;
      evidence.delete(publisherHex);
      this.bufferedBytes[replica] = (this.bufferedBytes[replica] as number) - own.bytes;
      this.count("evictions", replica);
      let events = 0;
      for (const copy of own.held) events += copy.request.span;
      return this.dropHeld(replica, own.held.length, events, HELD_PER_REPLICA_REASON);
    }
    return null;
  }

  /** Takes every replica's held copies of a key, in arrival order, and frees the evidence. */
  private takeHeld(publisherHex: string): HeldCopy[] {
    const taken: HeldCopy[] = [];
    this.unvouched.forEach((evidence, replica) => {
      const own = evidence.get(publisherHex);
      if (own === undefined) return;
      evidence.delete(publisherHex);
      this.bufferedBytes[replica] = (this.bufferedBytes[replica] as number) - own.bytes;
      taken.push(...own.held);
    });
    return taken.sort((a, b) => a.arrival - b.arrival);
  }

  /**
   * A key is vouched for: it gets a dedupe window (or takes back the one it had before it
   * lapsed), and its copies are delivered once each, each checked first unless it was
   * (confirmEvidence): a held copy that does not verify is dropped and reported.
   */
  private admit(publisherHex: string, publisher: Uint8Array, copies: readonly HeldCopy[]): DeliveryOutput[] {
    let entry = this.seen.get(publisherHex);
    if (entry === undefined) {
      if (this.seen.size >= DELIVERY_PUBLISHERS_MAX) return this.publishersFull(publisher, copies);
      const window = new SeqRangeWindow(DELIVERY_DEDUPE_RANGES_PER_PUBLISHER_MAX);
      entry = { window, reached: new Map(), copiedBy: new Set(), vouched: true, signed: [], signedNext: 0 };
      this.seen.set(publisherHex, entry);
    }
    entry.vouched = true;
    const outputs: DeliveryOutput[] = [];
    for (const held of copies) {
      this.noteCopy(entry, held.replica, held.request);
      const dropped = this.checkRange(held.replica, entry, held.request, held.copy, held.verified);
      if (dropped !== null) outputs.push(...dropped);
      else if (!held.verified && !this.verify(held.copy.body, held.copy.sig, held.request.client, held.request.v))
        outputs.push(...this.invalidCopy(held.replica, "bad-signature"));
      else outputs.push(this.deliverUnordered(entry, held.request, held.copy));
    }
    return outputs;
  }

  /** How far the replica's copies of a key reached, and that it still sends them. */
  private noteCopy(entry: Vouched, replica: number, request: PubRequest): void {
    const end = request.seq + request.span - 1;
    if (end > (entry.reached.get(replica) ?? 0)) entry.reached.set(replica, end);
    entry.copiedBy.add(replica);
  }

  /**
   * Null if the request's range may be delivered: no seq of it was delivered, and recording
   * it pushes no lower range out of the window too early. Otherwise the copy is dropped,
   * counted per sender, with what that reports.
   */
  private checkRange(replica: number, entry: Vouched, request: PubRequest, copy: BatchCopy, verified = false): DeliveryOutput[] | null {
    const start = request.seq;
    const end = request.seq + request.span - 1;
    const seen = entry.window.check(start, end);
    if (seen === "new") {
      if (!this.pushesOutLower(entry, start, end)) return null;
      this.count("overflows", replica);
      return [];
    }
    if (seen === "duplicate") return this.sameRangeOtherEvent(replica, entry, request, copy, verified);
    // Overlapping a delivered range, or below what the window forgot (reported).
    this.count("stale", replica);
    if (seen !== "stale") return [];
    return [{ t: "stale", replica, publisher: request.client, events: request.span }];
  }

  /**
   * A copy of a range already delivered: the same event again (dropped, counted as a
   * duplicate), or, when it is one of the publisher's latest ranges and signed otherwise, a
   * different event under the same numbers. A correct publisher never makes one; two
   * processes publishing with one key to one channel do (each numbering on its own), and on
   * an unordered channel, while replicas are down, the replicas a publish reaches may store
   * either under those numbers (README, "One writer per key and tag"). Dropping it would hide
   * an event the key holder published, perhaps the one that was acknowledged; so once its
   * signature verifies it is delivered as well, and reported as a conflict. Only the copy's
   * signature is compared (no hash): copies of the same event carry the same one.
   */
  private sameRangeOtherEvent(replica: number, entry: Vouched, request: PubRequest, copy: BatchCopy, verified = false): DeliveryOutput[] {
    const end = request.seq + request.span - 1;
    const known = otherEventRange(entry, request, copy);
    if (known === null) {
      this.count("duplicates", replica);
      return [];
    }
    // Recorded only once it verifies: a forged copy must not take one of the range's versions.
    if (!verified && !this.verify(copy.body, copy.sig, request.client, request.v)) return this.invalidCopy(replica, "bad-signature");
    pushSigHead(known.sigHeads, copy.sig);
    const reason =
      `another event under publisher ${toHex(request.client).slice(0, 16)}...'s seq ${request.seq}` +
      `${request.span > 1 ? `..${end}` : ""} than the one delivered, signed by the same key ` +
      "(two processes publishing with one key to this channel); delivered as well";
    return [this.conflict(replica, request.seq, reason), this.deliver(request, copy, copy.tsMs, null, 0)];
  }

  /**
   * Whether recording a new range [start, end] would make a full window forget its lowest
   * range (the new one joins no range seen, so it adds one) before f+1 replicas' copies
   * have reached that range. Forgetting makes every seq below it stale, so it waits until
   * a correct replica is past them: one replica sending a publisher's real requests far
   * ahead of the others could otherwise push the window up, range by range, until all the
   * copies the correct replicas have yet to send look stale. Such a range is dropped for
   * now (counted as an overflow); a correct replica sends it again when it gets there, in
   * order. Replicas that keep in step are past the lowest range long before, so a
   * publisher whose seqs have gaps here (it publishes on other channels too) loses nothing.
   */
  private pushesOutLower(entry: Vouched, start: number, end: number): boolean {
    const window = entry.window;
    if (window.rangeCount < DELIVERY_DEDUPE_RANGES_PER_PUBLISHER_MAX) return false;
    if (start - 1 <= window.floorSeq || window.check(start - 1, start - 1) === "duplicate") return false;
    if (window.check(end + 1, end + 1) === "duplicate") return false;
    // The range forgotten is the lowest one, or the new one if it lies below them all.
    const forgotten = Math.min(lowestRangeStart(window), start);
    let reached = 0;
    for (const seq of entry.reached.values()) if (seq >= forgotten) reached++;
    return reached < this.threshold;
  }

  private deliverUnordered(entry: Vouched, request: PubRequest, copy: BatchCopy): DeliveryOutput {
    const end = request.seq + request.span - 1;
    entry.window.add(request.seq, end);
    const at = entry.signedNext;
    entry.signedNext = (at + 1) % DELIVERY_SIGNED_RANGES_PER_PUBLISHER_MAX;
    // The ring's entries are written over in place once it is full: nothing allocated per delivery.
    let range = entry.signed[at];
    if (range === undefined) {
      range = { start: request.seq, end, sigHeads: [] };
      entry.signed.push(range);
    } else {
      range.start = request.seq;
      range.end = end;
      range.sigHeads.length = 0;
    }
    pushSigHead(range.sigHeads, copy.sig);
    return this.deliver(request, copy, copy.tsMs, null, 0);
  }

  /** Counts held copies dropped, and reports them: unordered channels send nothing again. */
  private dropHeld(replica: number, copies: number, events: number, reason: string): DeliveryOutput[] {
    (this.counts.heldDropped[replica] as number) += copies;
    if (copies === 0) return [];
    return [{ t: "held-dropped", replica, events, reason }];
  }

  // ---------------------------------------------------------------------------------
  // Total-order channels
  // ---------------------------------------------------------------------------------

  private onOrderedCopy(replica: number, copy: BatchCopy): DeliveryOutput[] {
    if (!Number.isSafeInteger(copy.firstSeq) || copy.firstSeq < 1 || !Number.isSafeInteger(copy.tsMs) || copy.tsMs < 0) {
      return this.invalidCopy(replica, "bad-position");
    }
    const key = this.copyKeys.keyOf(this.tag, copy);
    const delivered = this.history.get(copy.firstSeq);
    if (delivered !== undefined) return this.lateCopy(replica, copy.firstSeq, key === delivered);
    const earlier = this.votes[replica]?.get(copy.firstSeq);
    if (earlier === key) {
      this.count("duplicates", replica);
      return [];
    }
    if (earlier !== undefined) return [this.conflict(replica, copy.firstSeq, "sent two different batches at one seq")];
    const group = this.pending.get(copy.firstSeq)?.get(key) ?? this.openGroup(copy, key);
    if ("invalid" in group) return this.invalidCopy(replica, group.invalid);
    if ("unknown" in group) return this.holdUnknown(replica, copy, group.unknown);
    if ("late" in group) return this.lateCopy(replica, copy.firstSeq, true);
    const full = this.bufferFull(replica, group.bytes);
    if (full !== null) return this.overflow(replica, full);
    this.addVote(replica, group);
    return this.deliverReady();
  }

  /** A copy of something already delivered: a duplicate if it matches, else a conflict. */
  private lateCopy(replica: number, seq: number, matches: boolean): DeliveryOutput[] {
    if (!matches) return [this.conflict(replica, seq, "contradicts the batch delivered at this seq")];
    this.count("duplicates", replica);
    return [];
  }

  /**
   * Opens a copy not seen before. A copy that ends before the next seq is late (a
   * resume point past it) and is not worth a signature check; others are verified.
   */
  private openGroup(
    copy: BatchCopy,
    key: string,
  ): Group | { readonly invalid: InvalidReason } | { readonly late: true } | { readonly unknown: PubRequest } {
    const decoded = this.decode(copy.body);
    if ("invalid" in decoded || "unknown" in decoded) return decoded;
    const request = decoded.request;
    const end = copy.firstSeq + request.span;
    if (end <= this.next) return { late: true };
    if (!this.verify(copy.body, copy.sig, request.client, request.v)) return { invalid: "bad-signature" };
    const signed = { body: copy.body, sig: copy.sig };
    const bytes = copy.body.length + copy.sig.length;
    return { key, firstSeq: copy.firstSeq, tsMs: copy.tsMs, end, request, signed, bytes, voters: new Set() };
  }

  private bufferFull(replica: number, bytes: number): string | null {
    if ((this.votes[replica] as Map<number, string>).size >= DELIVERY_BUFFERED_BATCHES_PER_REPLICA_MAX) {
      return `more than ${DELIVERY_BUFFERED_BATCHES_PER_REPLICA_MAX} batches buffered`;
    }
    if ((this.bufferedBytes[replica] as number) + bytes > DELIVERY_BUFFERED_BYTES_PER_REPLICA_MAX) {
      return `more than ${DELIVERY_BUFFERED_BYTES_PER_REPLICA_MAX} bytes buffered`;
    }
    return null;
  }

  private addVote(replica: number, group: Group): void {
    if (group.firstSeq < this.next) this.straddlers = true;
    let groups = this.pending.get(group.firstSeq);
    if (groups === undefined) {
      groups = new Map();
      this.pending.set(group.firstSeq, groups);
    }
    groups.set(group.key, group);
    group.voters.add(replica);
    (this.votes[replica] as Map<number, string>).set(group.firstSeq, group.key);
    this.bufferedBytes[replica] = (this.bufferedBytes[replica] as number) + group.bytes;
  }

  /** Delivers, in seq order, every batch that is ready at the next seq. */
  private deliverReady(): DeliveryOutput[] {
    const outputs: DeliveryOutput[] = [];
    for (let group = this.readyGroup(); group !== null; group = this.readyGroup()) {
      const from = this.next;
      // The group covers the next seq and ends past it: delivery moves forward, never back.
      assert(
        group.firstSeq <= from && group.end > from,
        `delivery voter: group ${group.firstSeq}..${group.end} does not cover seq ${from}`,
      );
      assert(group.voters.size >= this.threshold, "delivery voter: a group delivered below its threshold");
      outputs.push(this.deliver(group.request, group.signed, group.tsMs, from, from - group.firstSeq));
      this.remember(group.firstSeq, group.key);
      this.next = group.end;
      this.trimNotices.clear();
      outputs.push(...this.release(group));
    }
    return outputs;
  }

  /** The group covering the next seq with enough distinct voters, first arrived first. */
  private readyGroup(): Group | null {
    const exact = this.pending.get(this.next);
    if (exact !== undefined) {
      for (const group of exact.values()) if (group.voters.size >= this.threshold) return group;
    }
    if (!this.straddlers) return null;
    for (const [firstSeq, groups] of this.pending) {
      if (firstSeq >= this.next) continue;
      for (const group of groups.values()) {
        if (group.end > this.next && group.voters.size >= this.threshold) return group;
      }
    }
    return null;
  }

  /**
   * Frees every buffered copy now behind the next seq. Copies that started inside the
   * delivered batch but differ from it contradict it: their senders are reported.
   */
  private release(delivered: Group): DeliveryOutput[] {
    const outputs: DeliveryOutput[] = [];
    for (const [firstSeq, groups] of this.pending) {
      if (firstSeq >= this.next) continue;
      for (const group of groups.values()) {
        const contradicts = group.key !== delivered.key && firstSeq >= delivered.firstSeq;
        for (const replica of group.voters) {
          this.unvote(replica, group);
          if (contradicts) outputs.push(this.conflict(replica, firstSeq, "contradicts the batch delivered at this seq"));
        }
      }
      this.pending.delete(firstSeq);
    }
    this.straddlers = false;
    return outputs;
  }

  /** After a skip: frees copies that end before the new next seq; straddlers stay. */
  private dropBehind(): void {
    for (const [firstSeq, groups] of this.pending) {
      if (firstSeq >= this.next) continue;
      for (const [key, group] of groups) {
        if (group.end > this.next) continue;
        for (const replica of group.voters) this.unvote(replica, group);
        groups.delete(key);
      }
      if (groups.size === 0) this.pending.delete(firstSeq);
    }
    this.straddlers = true;
  }

  private unvote(replica: number, group: Group): void {
    (this.votes[replica] as Map<number, string>).delete(group.firstSeq);
    this.bufferedBytes[replica] = (this.bufferedBytes[replica] as number) - group.bytes;
  }

  private remember(firstSeq: number, key: string): void {
    this.history.set(firstSeq, key);
    if (this.history.size > DELIVERED_HISTORY_MAX) this.history.delete(this.history.keys().next().value as number);
  }

  // ---------------------------------------------------------------------------------
  // Outputs
  // ---------------------------------------------------------------------------------

  private deliver(request: PubRequest, signed: SignedRequest, tsMs: number, seq: number | null, skip: number): DeliveryOutput {
    const events = skip === 0 ? request.op.events : request.op.events.slice(skip);
    this.deliveredBatches++;
    this.deliveredEvents += events.length;
    const batch: DeliveredBatch = {
      tag: this.tag,
      seq,
      publisher: request.client,
      pubSeq: request.seq + skip,
      tsMs,
      events,
      request,
      signed: { body: signed.body, sig: signed.sig },
    };
    return { t: "deliver", batch };
  }

  private invalidCopy(replica: number, reason: InvalidReason): DeliveryOutput[] {
    this.count("invalid", replica);
    return [{ t: "invalid", replica, reason }];
  }

  private conflict(replica: number, seq: number, reason: string): DeliveryOutput {
    this.count("conflicts", replica);
    return { t: "conflict", replica, seq, reason };
  }

  private overflow(replica: number, reason: string): DeliveryOutput[] {
    this.count("overflows", replica);
    return [{ t: "overflow", replica, nextSeq: this.next, reason }];
  }

  /** Drops the copies of a vouched key that finds the publisher table full; counted per sender. */
  private publishersFull(publisher: Uint8Array, copies: readonly HeldCopy[]): DeliveryOutput[] {
    const ranges = new Map<number, number>();
    for (const held of copies) {
      this.count("overflows", held.replica);
      ranges.set(held.request.seq, Math.max(ranges.get(held.request.seq) ?? 0, held.request.span));
    }
    let droppedEvents = 0;
    for (const span of ranges.values()) droppedEvents += span;
    const reason = `more than ${DELIVERY_PUBLISHERS_MAX} publishers on one subscription`;
    return [{ t: "publishers-full", publisher, droppedEvents, reason }];
  }
}

/**
 * The first seq of the lowest range a window holds above its floor (it holds one). The
 * window keeps its ranges to itself (the replicas' dedupe shares it), so this asks `check`:
 * [floor+1, x] is "new" exactly while no range starts at or below x. About 53 checks, and
 * only when a full window would add a range.
 */
function lowestRangeStart(window: SeqRangeWindow): number {
  const from = window.floorSeq + 1;
  let lo = from;
  let hi = window.highestSeq;
  while (lo < hi) {
    const mid = lo + Math.floor((hi - lo) / 2);
    if (window.check(from, mid) === "new") lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Whether one more copy of `bytes` fits a replica's evidence for one key. */
function holdFits(own: Evidence, bytes: number): boolean {
  return own.held.length < DELIVERY_HELD_COPIES_PER_PUBLISHER_MAX && own.bytes + bytes <= DELIVERY_HELD_BYTES_PER_PUBLISHER_MAX;
}
