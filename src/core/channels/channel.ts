/**
 * One channel: its TAG, CLASS, access lists, retention and stored batches. Plain data
 * with small accessors; the rules live in machine.ts.
 */
import { toHex } from "../../../wire/bytes.ts";
import { encodeCanonical, type Canonical } from "../../../wire/canonical.ts";
import { BatchLog, CHAIN_GENESIS } from "./batch-log.ts";

import { UNORDERED_DEDUPE_RANGES_MAX } from "./constants.ts";
import { SeqRangeWindow } from "./seq-window.ts";
import type { ChannelClass, ChannelInfo, HashFn, RegisterRole, RetentionLimits } from "./types.ts";

/** Registered keys of one role, keyed by lowercase hex so lookups are by value. */
export type KeySet = Map<string, Uint8Array>;

export class Channel {
  /** Per publisher (hex) seq ranges seen; only unordered channels use it. */
  readonly dedupe = new Map<string, SeqRangeWindow>();
  /** Digest of the canonical metadata, dropped whenever the metadata changes. */
  private metaDigestCache: Uint8Array | null = null;

  constructor(
    readonly tag: string,
    readonly generation: number,
    readonly cls: ChannelClass,
    readonly isPublic: boolean,
    readonly retention: RetentionLimits,
    readonly publishers: KeySet,
    readonly subscribers: KeySet,
    public log: BatchLog,
  ) {}

  static create(tag: string, generation: number, cls: ChannelClass, isPublic: boolean, retention: RetentionLimits): Channel {
    return new Channel(tag, generation, cls, isPublic, retention, new Map(), new Map(), new BatchLog(1, CHAIN_GENESIS));
  }

  get isOrdered(): boolean {
    return this.cls.order === "total";
  }

  keys(role: RegisterRole): KeySet {
    return role === "publisher" ? this.publishers : this.subscribers;
  }

  /** Adds a key; returns false when it was already registered. */
  register(role: RegisterRole, key: Uint8Array): boolean {
    const set = this.keys(role);
    const hex = toHex(key);
    if (set.has(hex)) return false;
    set.set(hex, key.slice());
    this.metaDigestCache = null;
    return true;
  }

  /** Removes a key; returns false when it was not registered. */
  unregister(role: RegisterRole, key: Uint8Array): boolean {
    if (!this.keys(role).delete(toHex(key))) return false;
    this.metaDigestCache = null;
    return true;
  }

  isPublisher(key: Uint8Array): boolean {
    return this.isPublisherHex(toHex(key));
  }

  /** The same, for a key already in hex (the runtime has it at hand per request). */
  isPublisherHex(keyHex: string): boolean {
    return this.publishers.has(keyHex);
  }

  mayRead(key: Uint8Array): boolean {
    return this.isPublic || this.subscribers.has(toHex(key));
  }

  /** The dedupe window of a publisher, created on first use. */
  dedupeWindow(publisherHex: string): SeqRangeWindow {
    let window = this.dedupe.get(publisherHex);
    if (window === undefined) {
      window = new SeqRangeWindow(UNORDERED_DEDUPE_RANGES_MAX);
      this.dedupe.set(publisherHex, window);
    }
    return window;
  }

  /**
   * The canonical metadata: everything but the log. Keys are listed in ascending hex
   * order (equal to bytewise order), so equal channels give equal bytes.
   */
  metaValue(): { [key: string]: Canonical } {
    return {
      tag: this.tag,
      generation: this.generation,
      fault: this.cls.fault,
      order: this.cls.order,
      priority: this.cls.priority,
      public: this.isPublic,
      publishers: sortedKeys(this.publishers),
      subscribers: sortedKeys(this.subscribers),
      retention: { events: this.retention.events, bytes: this.retention.bytes, ageMs: this.retention.ageMs },
    };
  }

  metaDigest(hash: HashFn): Uint8Array {
    if (this.metaDigestCache === null) this.metaDigestCache = hash(encodeCanonical(this.metaValue()));
    return this.metaDigestCache;
  }

  info(): ChannelInfo {
    return {
      tag: this.tag,
      generation: this.generation,
      fault: this.cls.fault,
      order: this.cls.order,
      priority: this.cls.priority,
      public: this.isPublic,
      publishers: this.publishers.size,
      subscribers: this.subscribers.size,
      retention: { ...this.retention },
      nextSeq: this.log.nextSeq,
      oldestSeq: this.log.oldestSeq,
      retainedEvents: this.log.events,
      retainedBytes: this.log.bytes,
    };
  }
}

export function sortedKeys(set: KeySet): Uint8Array[] {
  return [...set.keys()].sort().map((hex) => set.get(hex) as Uint8Array);
}
