/**
 * How many replicas vouched for each event of a live tail, counted as their copies arrive:
 * the subscription's observer (`onCopy`, src/client/subscription.ts) reports every copy a
 * replica sent under a key (the channel seq and digest of the signed request; on
 * `$sys.events` the group event's kind and agreed fields), and a delivered batch carries
 * the key of its copies. The distinct replicas seen under a delivered batch's key are the
 * ones that sent that same batch: copies before the delivery (the ones the vote needed)
 * and after it, which update the row in the page.
 *
 * Bounded in memory and time: at most VOUCH_KEYS_MAX keys (the oldest go first), and a key
 * is counted for VOUCH_WINDOW_MS after its first copy; a copy later than that is not shown.
 */

/** Keys (batches delivered or waiting) one tail counts copies for. */
export const VOUCH_KEYS_MAX = 1_024;
/** How long after a batch's first copy the copies of it are counted. */
export const VOUCH_WINDOW_MS = 30_000;

interface Entry {
  readonly replicas: Set<number>;
  readonly firstMs: number;
  /** The tail's id of the delivered batch with this key; null until it is delivered. */
  batch: number | null;
}

export class VouchCounter {
  /** By key, in the order of first copies (so the oldest and expired come first). */
  private readonly entries = new Map<string, Entry>();

  constructor(
    private readonly now: () => number,
    /** A delivered batch was sent by one more replica: all of them now. */
    private readonly onUpdate: (batch: number, replicas: readonly number[]) => void,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  /** A replica's copy under `key`. */
  copy(replica: number, key: string): void {
    const entry = this.entry(key);
    if (entry.replicas.has(replica)) return;
    entry.replicas.add(replica);
    if (entry.batch !== null) this.onUpdate(entry.batch, sorted(entry.replicas));
  }

  /** The batch the tail calls `batch` was delivered with `key`: the replicas that sent it so far. */
  delivered(key: string, batch: number): readonly number[] {
    const entry = this.entry(key);
    entry.batch = batch;
    return sorted(entry.replicas);
  }

  private entry(key: string): Entry {
    const nowMs = this.now();
    for (const [old, entry] of this.entries) {
      if (nowMs - entry.firstMs < VOUCH_WINDOW_MS) break;
      this.entries.delete(old);
    }
    const found = this.entries.get(key);
    if (found !== undefined) return found;
    while (this.entries.size >= VOUCH_KEYS_MAX) this.entries.delete(this.entries.keys().next().value as string);
    const entry: Entry = { replicas: new Set(), firstMs: nowMs, batch: null };
    this.entries.set(key, entry);
    return entry;
  }
}

function sorted(replicas: ReadonlySet<number>): number[] {
  return [...replicas].sort((a, b) => a - b);
}
