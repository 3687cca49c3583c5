/**
 * A Map bounded in entries and in bytes, the oldest forgotten first: the memos every layer
 * keeps of something it would otherwise compute again (decoded requests in the replica,
 * copy keys in the subscriber's voting, hash states of shared prefixes in the client). Here
 * beside the byte helpers so that the sans-IO core may use it too. The bytes are what the
 * caller counts for each value; the order is insertion order, and `touch` makes an entry
 * the newest (least recently used first).
 */
export class BoundedMap<K, V> {
  private readonly entries = new Map<K, { readonly value: V; readonly bytes: number }>();
  private held = 0;

  constructor(
    readonly entriesMax: number,
    readonly bytesMax: number,
  ) {
    if (!Number.isSafeInteger(entriesMax) || entriesMax < 1)
      throw new RangeError(`entriesMax must be a positive integer, got ${entriesMax}`);
    if (!Number.isSafeInteger(bytesMax) || bytesMax < 0) throw new RangeError(`bytesMax must be a non-negative integer, got ${bytesMax}`);
  }

  get size(): number {
    return this.entries.size;
  }

  /** The bytes counted for the values kept. */
  get heldBytes(): number {
    return this.held;
  }

  get(key: K): V | undefined {
    return this.entries.get(key)?.value;
  }

  /**
   * Keeps `value` under `key` (replacing one there), counted as `bytes`, then forgets the
   * oldest until both bounds hold. A value larger than `bytesMax` on its own is not kept.
   */
  set(key: K, value: V, bytes: number): void {
    this.delete(key);
    if (bytes > this.bytesMax) return;
    this.entries.set(key, { value, bytes });
    this.held += bytes;
    for (const oldest of this.entries.keys()) {
      if (this.entries.size <= this.entriesMax && this.held <= this.bytesMax) break;
      this.delete(oldest);
    }
  }

  /** Makes the entry under `key` the newest, the last to be forgotten. */
  touch(key: K): void {
    const entry = this.entries.get(key);
    if (entry === undefined) return;
    this.entries.delete(key);
    this.entries.set(key, entry);
  }

  delete(key: K): boolean {
    const entry = this.entries.get(key);
    if (entry === undefined) return false;
    this.entries.delete(key);
    this.held -= entry.bytes;
    return true;
  }

  clear(): void {
    this.entries.clear();
    this.held = 0;
  }

  /** The key of the oldest entry whose value `match` accepts (without allocating per entry, for hot paths). */
  find(match: (value: V) => boolean): K | undefined {
    for (const [key, entry] of this.entries) if (match(entry.value)) return key;
    return undefined;
  }

  /** Keys and values, oldest first. */
  *[Symbol.iterator](): IterableIterator<[K, V]> {
    for (const [key, entry] of this.entries) yield [key, entry.value];
  }
}
