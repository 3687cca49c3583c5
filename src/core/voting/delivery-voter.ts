/**
 * Subscriber-side delivery voting for one subscription (DESIGN §3, "subscriber delivers
 * when"):
 *
 * - byzantine/total: the batch at channel seq s is delivered only when f+1 distinct
 *   replicas sent the same (s, decided timestamp, digest of the signed request). At
 *   least one of them is correct, so f lying replicas can neither forge nor alter a batch.
 * - crash/total: the first copy that covers the next seq.
 * - crash/none, byzantine/none: the first copy of each publisher seq range.
 *
 * Every copy's publisher signature is checked through the injected `verify` before it
 * can be delivered (end-to-end authenticity; on byzantine/total once per distinct copy).
 * Invalid copies are dropped and counted per replica.
 *
 * Total-order channels are delivered in seq order with no gap and no duplicate,
 * starting at `fromSeq` (a resume point may fall inside a batch: the events before it
 * are cut off). Copies that arrive ahead of the next seq wait in per-replica buffers with
 * a named bound; past it the copy is dropped and an "overflow" output tells the caller to
 * re-read from `nextSeq` later, instead of memory growing. Unordered channels keep a
 * bounded dedupe window per publisher.
 *
 * Pure: outputs are returned, nothing is sent or printed here.
 */
import { decodeCanonical, type Canonical } from "../../../wire/canonical.ts";
import { toHex } from "../channels/bytes.ts";
import { KEYS_PER_CHANNEL_MAX } from "../channels/constants.ts";
import { parsePubRequest, signedRequestDigest } from "../channels/request.ts";
import { SeqRangeWindow } from "../channels/seq-window.ts";
import type { ChannelClass, HashFn, PubRequest, SignedRequest } from "../channels/types.ts";
import { checkGroup, replyKindOf } from "./quorum.ts";

/** Buffered copies (ahead of the next seq) one replica may hold in a subscription. */
export const DELIVERY_BUFFERED_BATCHES_PER_REPLICA_MAX = 256;
/** Bytes of buffered copies (body + signature) one replica may hold in a subscription. */
export const DELIVERY_BUFFERED_BYTES_PER_REPLICA_MAX = 8 * 1024 * 1024;
/** Distinct publishers an unordered subscription tracks (publishers must be registered). */
export const DELIVERY_PUBLISHERS_MAX = KEYS_PER_CHANNEL_MAX;
/** Seq ranges remembered per publisher on unordered subscriptions (see SeqRangeWindow). */
export const DELIVERY_DEDUPE_RANGES_PER_PUBLISHER_MAX = 1024;
/** Delivered batch starts remembered, to recognise late copies that contradict them. */
export const DELIVERED_HISTORY_MAX = 1024;

/** Verifies a publisher signature over `utf8("fitb/v1/request") || 0x00 || body`. */
export type VerifyRequest = (body: Uint8Array, sig: Uint8Array, publisher: Uint8Array) => boolean;

export type DeliveryVoterOptions = {
  readonly tag: string;
  readonly cls: Pick<ChannelClass, "fault" | "order">;
  readonly n: number;
  readonly f: number;
  /** Total order: the first channel seq to deliver (a resume point). Default 1. */
  readonly fromSeq?: number;
  readonly hash: HashFn;
  readonly verify: VerifyRequest;
  /** Optional filter, e.g. the channel's registered publishers; default accepts all. */
  readonly acceptPublisher?: (publisher: Uint8Array) => boolean;
};

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
  /** Enough replicas say `nextSeq` is no longer retained; `oldestSeq` is where to go on. */
  | { readonly t: "trimmed"; readonly nextSeq: number; readonly oldestSeq: number };

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
  readonly overflows: readonly number[];
  /** Copies below the window (unordered: forgotten ranges or partial overlaps). */
  readonly stale: readonly number[];
  readonly unknownReplica: number;
  /** Copies currently buffered, all replicas together. */
  readonly buffered: number;
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

type CountName = "invalid" | "duplicates" | "conflicts" | "overflows" | "stale";

type Opened = { readonly request: PubRequest } | { readonly invalid: InvalidReason };

export class DeliveryVoter {
  private readonly tag: string;
  private readonly ordered: boolean;
  private readonly threshold: number;
  private readonly n: number;
  private readonly hash: HashFn;
  private readonly verify: VerifyRequest;
  private readonly acceptPublisher: (publisher: Uint8Array) => boolean;
  private next: number;

  // Total order: copies waiting, by first seq, then by copy key.
  private readonly pending = new Map<number, Map<string, Group>>();
  /** Per replica: the key it voted for at each first seq still pending. */
  private readonly votes: Map<number, string>[];
  private readonly bufferedBytes: number[];
  private readonly history = new Map<number, string>();
  private readonly trimNotices = new Map<number, number>();
  /**
   * Whether a pending copy may start before the next seq yet cover it (a resume point
   * inside a batch). Only then must finding the ready copy look beyond `pending[next]`.
   */
  private straddlers = false;
  private trimReportedAt = 0;

  // Unordered: seen publisher seq ranges, per publisher.
  private readonly seen = new Map<string, SeqRangeWindow>();

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
    // Only byzantine/total needs agreement among copies; every other class takes the
    // first valid one (crash replicas do not lie; unordered copies are self-certifying).
    this.threshold = kind === "byzantine/total" ? options.f + 1 : 1;
    this.n = options.n;
    this.hash = options.hash;
    this.verify = options.verify;
    this.acceptPublisher = options.acceptPublisher ?? (() => true);
    this.next = fromSeq;
    this.votes = Array.from({ length: options.n }, () => new Map<number, string>());
    this.bufferedBytes = new Array<number>(options.n).fill(0);
    const zeros = (): number[] => new Array<number>(options.n).fill(0);
    this.counts = { invalid: zeros(), duplicates: zeros(), conflicts: zeros(), overflows: zeros(), stale: zeros() };
  }

  /** Total order: the next seq to deliver, i.e. where to resume after a disconnect. */
  get nextSeq(): number {
    return this.next;
  }

  /** Takes one copy from `replica` and returns what it caused, in order. */
  onBatch(replica: number, copy: BatchCopy): DeliveryOutput[] {
    if (!Number.isSafeInteger(replica) || replica < 0 || replica >= this.n) {
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
    if (!this.ordered || !Number.isSafeInteger(replica) || replica < 0 || replica >= this.n) return [];
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

  stats(): DeliveryStats {
    let buffered = 0;
    for (const groups of this.pending.values()) for (const group of groups.values()) buffered += group.voters.size;
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
    };
  }

  // ---------------------------------------------------------------------------------
  // Opening a copy: decode, check, verify
  // ---------------------------------------------------------------------------------

  private decode(body: Uint8Array): Opened {
    let value: Canonical;
    try {
      value = decodeCanonical(body);
    } catch {
      return { invalid: "undecodable" };
    }
    const request = parsePubRequest(value);
    if (request === null) return { invalid: "malformed" };
    if (request.op.tag !== this.tag) return { invalid: "wrong-tag" };
    if (!this.acceptPublisher(request.client)) return { invalid: "publisher-refused" };
    return { request };
  }

  private count(what: CountName, replica: number): void {
    (this.counts[what][replica] as number)++;
  }

  // ---------------------------------------------------------------------------------
  // Unordered channels
  // ---------------------------------------------------------------------------------

  /** Dedupe happens before the signature check, so copies of delivered events cost no verify. */
  private onUnorderedCopy(replica: number, copy: BatchCopy): DeliveryOutput[] {
    const decoded = this.decode(copy.body);
    if ("invalid" in decoded) return this.invalidCopy(replica, decoded.invalid);
    const request = decoded.request;
    const publisherHex = toHex(request.client);
    let window = this.seen.get(publisherHex);
    if (window === undefined) {
      if (this.seen.size >= DELIVERY_PUBLISHERS_MAX) {
        return this.overflow(replica, `more than ${DELIVERY_PUBLISHERS_MAX} publishers on one subscription`);
      }
      window = new SeqRangeWindow(DELIVERY_DEDUPE_RANGES_PER_PUBLISHER_MAX);
    }
    const lastSeq = request.seq + request.span - 1;
    const seen = window.check(request.seq, lastSeq);
    if (seen === "duplicate") {
      this.count("duplicates", replica);
      return [];
    }
    if (seen !== "new") {
      this.count("stale", replica);
      return [];
    }
    if (!this.verify(copy.body, copy.sig, request.client)) return this.invalidCopy(replica, "bad-signature");
    this.seen.set(publisherHex, window);
    window.add(request.seq, lastSeq);
    return [this.deliver(request, copy, copy.tsMs, null, 0)];
  }

  // ---------------------------------------------------------------------------------
  // Total-order channels
  // ---------------------------------------------------------------------------------

  private onOrderedCopy(replica: number, copy: BatchCopy): DeliveryOutput[] {
    if (!Number.isSafeInteger(copy.firstSeq) || copy.firstSeq < 1 || !Number.isSafeInteger(copy.tsMs) || copy.tsMs < 0) {
      return this.invalidCopy(replica, "bad-position");
    }
    const key = `${copy.tsMs}/${toHex(signedRequestDigest(this.hash, copy))}`;
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
  private openGroup(copy: BatchCopy, key: string): Group | { readonly invalid: InvalidReason } | { readonly late: true } {
    const decoded = this.decode(copy.body);
    if ("invalid" in decoded) return decoded;
    const request = decoded.request;
    const end = copy.firstSeq + request.span;
    if (end <= this.next) return { late: true };
    if (!this.verify(copy.body, copy.sig, request.client)) return { invalid: "bad-signature" };
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
}
