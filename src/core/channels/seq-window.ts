/**
 * Which publisher seq ranges have been seen, in bounded memory. Used to deduplicate
 * unordered publishes at a replica and unordered deliveries at a subscriber, where events
 * are identified by publisher + publisher seq.
 *
 * Everything at or below `floor` counts as seen. Ranges that start at `floor + 1` fold
 * into it, so a publisher that uses only this channel costs no ranges at all. Ranges
 * above the floor are kept sorted and disjoint (adjacent ones merge). When more than
 * `rangesMax` remain, the lowest is forgotten: the floor jumps to its end, and any gap
 * below that becomes "stale" (cannot tell a late first copy from a duplicate any more).
 */

/** The answer for a candidate range: whether it is new, all seen, or unusable. */
export type RangeCheck =
  | "new" // no seq of the range was seen: accept it
  | "duplicate" // every seq of the range was seen: drop it as a copy
  | "overlap" // part was seen and part was not: a request cannot be split, so refuse it
  | "stale"; // at or below a forgotten range: cannot tell, so refuse it

type SeqRange = { start: number; end: number };

export class SeqRangeWindow {
  private floor = 0;
  /** Seqs at or below this were forgotten, not necessarily seen. */
  private forgottenThrough = 0;
  private readonly ranges: SeqRange[] = [];

  constructor(private readonly rangesMax: number) {
    if (!Number.isSafeInteger(rangesMax) || rangesMax < 1) throw new RangeError("rangesMax must be a positive integer");
  }

  /** Ranges held above the floor; never more than `rangesMax`. */
  get rangeCount(): number {
    return this.ranges.length;
  }

  get floorSeq(): number {
    return this.floor;
  }

  /** The highest seq seen (0 when none): where a publisher that lost its counter resumes. */
  get highestSeq(): number {
    return this.ranges[this.ranges.length - 1]?.end ?? this.floor;
  }

  /** Classifies the inclusive range [start, end] (start >= 1, end >= start). */
  check(start: number, end: number): RangeCheck {
    if (end <= this.floor) return start > this.forgottenThrough ? "duplicate" : "stale";
    if (start <= this.floor) return start > this.forgottenThrough ? "overlap" : "stale";
    const i = this.indexOfLastStartAtOrBelow(end);
    if (i < 0) return "new";
    const range = this.ranges[i] as SeqRange;
    if (range.end < start) return "new";
    return range.start <= start && end <= range.end ? "duplicate" : "overlap";
  }

  /** Records a range that `check` classified as "new". */
  add(start: number, end: number): void {
    const at = this.indexOfLastStartAtOrBelow(start) + 1;
    this.ranges.splice(at, 0, { start, end });
    this.mergeAround(at);
    this.foldIntoFloor();
    while (this.ranges.length > this.rangesMax) this.forgetLowest();
  }

  /**
   * Counts every seq at or below `seq` as forgotten: a range that reaches there is stale
   * (refused), whether it was seen or not. A restart puts back this way what retention
   * removed from the store (src/replica/storage/recovery.ts), so an old request replayed
   * to a restarted replica is still refused, and the publisher's highest seq is still known.
   */
  forgetThrough(seq: number): void {
    if (seq <= this.floor) return;
    while (this.ranges.length > 0 && (this.ranges[0] as SeqRange).end <= seq) this.ranges.shift();
    this.floor = seq;
    this.forgottenThrough = seq;
    const first = this.ranges[0];
    if (first !== undefined && first.start <= seq) {
      this.floor = first.end;
      this.ranges.shift();
    }
    this.foldIntoFloor();
  }

  /** Index of the last range whose start is <= seq, or -1. */
  private indexOfLastStartAtOrBelow(seq: number): number {
    let lo = 0;
    let hi = this.ranges.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.ranges[mid] as SeqRange).start <= seq) {
        found = mid;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    return found;
  }

  private mergeAround(at: number): void {
    const next = this.ranges[at + 1];
    const self = this.ranges[at] as SeqRange;
    if (next !== undefined && self.end + 1 === next.start) {
      self.end = next.end;
      this.ranges.splice(at + 1, 1);
    }
    const prev = this.ranges[at - 1];
    if (prev !== undefined && prev.end + 1 === self.start) {
      prev.end = self.end;
      this.ranges.splice(at, 1);
    }
  }

  private foldIntoFloor(): void {
    const first = this.ranges[0];
    if (first !== undefined && first.start === this.floor + 1) {
      this.floor = first.end;
      this.ranges.shift();
    }
  }

  private forgetLowest(): void {
    const lowest = this.ranges.shift() as SeqRange;
    this.floor = lowest.end;
    this.forgottenThrough = lowest.start - 1;
    this.foldIntoFloor();
  }
}
