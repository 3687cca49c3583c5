/**
 * Which replicas serve a subscription to a total-order channel.
 *
 * Every replica executes every batch of a total-order channel, and a subscriber needs
 * f+1 matching copies (one on a crash-fault channel). Subscribed at all n replicas, each
 * replica encodes, seals and writes every batch to every subscriber, and the subscriber
 * reads, authenticates and votes on n copies where f+1 decide: on four replicas, half of
 * the fan-out on both sides is spent on copies no delivery needs. So once a subscription
 * has started (at every replica, so that its start is the one f+1 correct replicas
 * vouch for), it keeps f+1 replicas serving it and leaves the others on standby
 * (unsubscribed, subscribed again from the next undelivered seq when needed). Among f+1
 * replicas at least one is correct, so a fault always shows: a correct serving replica's
 * copies wait for a vote that does not come, or a serving replica contradicts, sends a
 * copy that fails its checks, refuses, or drops the connection. Any of these widens the
 * subscription back to every replica at once; nothing is lost, since the standby replicas
 * are asked from the next seq not yet delivered. A stall is timed per copy: the copy that
 * covers the next seq to deliver, waiting NARROW_STALL_MS for its vote (counted from the
 * narrowing if it came before), so a faulty serving replica that releases one batch now
 * and then cannot hold the others back by more than that.
 *
 * A widened subscription narrows again NARROW_AGAIN_AFTER_MS after the widening (doubling
 * with each widening up to NARROW_AGAIN_AFTER_MS_MAX, back to the first after
 * NARROW_CALM_RESET_MS narrowed without trouble), leaving out the suspects for twice that
 * spell: a serving replica that had sent no copy of the batch that waited, any replica
 * that contradicted or sent a copy that failed its checks, and one that ended the
 * subscription or dropped its session while serving or while wide. A stall is judged at a
 * client tick that came on time, or after NARROW_STALL_BUSY_MS at any tick: a client whose
 * event loop is too busy to read its sockets (the copy it waits for may be there, unread)
 * does not widen for that alone.
 *
 * What a faulty serving replica can still do: send each copy just under NARROW_STALL_MS
 * after the other's, delaying every delivery by up to that (plus a tick) for as long as it
 * serves; or stay silent while the other serving replica, correct, lags behind the group,
 * so that nothing waits and the subscriber follows the lagging replica. Neither changes
 * what is delivered, and it is why `high` and `critical` channels do not narrow by default. A replica that sends too far
 * ahead of the other (the voter's buffer for it full) is asked again later, without
 * widening: that is flow control, and a copy left waiting still widens. Every replica is
 * served by subscribers in turn (each client starts its choice at an offset of its own),
 * so the fan-out is spread over the group.
 *
 * By default only `low` and `normal` channels narrow (subscription.ts `sourcesOf`): a
 * delivery then waits for the slower of f+1 replicas instead of the (f+1)-th fastest of n,
 * which `high` and `critical` channels are not made to pay.
 *
 * Pure: it takes times as arguments; the subscription acts on what it returns.
 */

/** The copy covering the next seq waiting this long for its vote widens a narrowed subscription. */
export const NARROW_STALL_MS = 500;
/** A widened subscription narrows again this long after the widening (the first time). */
export const NARROW_AGAIN_AFTER_MS = 30_000;
/** The spell doubles with each widening up to this. */
export const NARROW_AGAIN_AFTER_MS_MAX = 3_600_000;
/** Narrowed this long without trouble, the spell is back to NARROW_AGAIN_AFTER_MS. */
export const NARROW_CALM_RESET_MS = 600_000;
/** First seqs timed at once (the voter buffers at most 256 batches per replica). */
const ARRIVALS_MAX = 2048;
/** A tick more than twice the client's tick period plus this after the one before found its event loop busy. */
const LATE_TICK_SLACK_MS = 50;
/** A stall is judged at a late tick too once the copy has waited this long (a client busy for good). */
export const NARROW_STALL_BUSY_MS = 10 * NARROW_STALL_MS;

export class ReplicaNarrowing {
  /** The replicas serving the subscription while narrowed; null while every replica does. */
  private serving: ReadonlySet<number> | null = null;
  private narrowedAt = 0;
  /** While wide: not narrowed again before this time. */
  private narrowAt: number;
  private spellMs = NARROW_AGAIN_AFTER_MS;
  private readonly suspectUntil = new Map<number, number>();
  /** When the first copy at each first seq not yet delivered arrived, and which replicas sent one. */
  private readonly arrivals = new Map<number, { readonly at: number; readonly from: Set<number> }>();
  private arrivalsNext = 0;
  private widenCount = 0;
  private lastTickAt: number | null = null;

  /** `offset`: where this client starts its choice among the members (spreads the fan-out). */
  constructor(
    private readonly offset: number,
    now: number,
  ) {
    this.narrowAt = now;
  }

  /** The serving replicas, or null while every replica serves. */
  get servingReplicas(): readonly number[] | null {
    return this.serving === null ? null : [...this.serving].sort((a, b) => a - b);
  }

  /** Times the subscription went back to every replica. */
  get widenings(): number {
    return this.widenCount;
  }

  /** Whether the replica is left out while narrowed (never subscribed there until a widening). */
  isStandby(replica: number): boolean {
    return this.serving !== null && !this.serving.has(replica);
  }

  isServing(replica: number): boolean {
    return this.serving?.has(replica) === true;
  }

  /** Whether f+1 replicas serve now (false while every replica does). */
  get narrowed(): boolean {
    return this.serving !== null;
  }

  /**
   * Narrows when due: f+1 of the `active` replicas (those that accepted the subscription),
   * in the member order rotated by this client's offset, none of them suspected. Returns
   * the replicas to put on standby, or null if the subscription stays as it is.
   */
  narrow(now: number, members: readonly number[], active: readonly number[], f: number): readonly number[] | null {
    if (this.serving !== null || now < this.narrowAt) return null;
    const count = f + 1;
    if (members.length <= count) return null;
    const sorted = [...members].sort((a, b) => a - b);
    const start = this.offset % sorted.length;
    const order = [...sorted.slice(start), ...sorted.slice(0, start)];
    const chosen = order.filter((replica) => active.includes(replica) && (this.suspectUntil.get(replica) ?? 0) <= now).slice(0, count);
    if (chosen.length < count) return null;
    this.serving = new Set(chosen);
    this.narrowedAt = now;
    return sorted.filter((replica) => !chosen.includes(replica));
  }

  /**
   * A copy at `firstSeq` from `replica` that the voter took (not one it refused or had no
   * room for) was fed to it; `nextSeq` and `headFirstSeq` are the voter's after it. At most
   * ARRIVALS_MAX first seqs are timed; past that the highest gives way to a lower one, so
   * copies sent far ahead cannot keep the seqs near the head from being timed.
   */
  observe(now: number, replica: number, firstSeq: number, nextSeq: number, headFirstSeq: number | null): void {
    this.prune(nextSeq, headFirstSeq);
    if (firstSeq < nextSeq && firstSeq !== headFirstSeq) return;
    let entry = this.arrivals.get(firstSeq);
    if (entry === undefined) {
      if (this.arrivals.size >= ARRIVALS_MAX && !this.evictAbove(firstSeq)) return;
      entry = { at: now, from: new Set() };
      this.arrivals.set(firstSeq, entry);
    }
    entry.from.add(replica);
  }

  /**
   * A client tick at `now`, `tickMs` after the one before if on time: false if it came
   * later than twice that plus LATE_TICK_SLACK_MS (the client's event loop was busy, and
   * copies may be waiting unread in its sockets). A clock that steps back makes no tick late.
   */
  onTick(now: number, tickMs: number): boolean {
    const gap = this.lastTickAt === null ? 0 : now - this.lastTickAt;
    this.lastTickAt = now;
    return gap <= 2 * tickMs + LATE_TICK_SLACK_MS;
  }

  /** The voter started afresh (a resume after a pause): nothing is timed. */
  restart(): void {
    this.arrivals.clear();
    this.arrivalsNext = 0;
  }

  /**
   * While narrowed: null unless the copy covering the next seq (`headFirstSeq`, the
   * voter's) has waited NARROW_STALL_MS, counted from the narrowing if it came before, at
   * a tick on time (`onTime`), or NARROW_STALL_BUSY_MS at any tick; then the serving
   * replicas that sent no copy at that seq (the suspects).
   */
  stalled(now: number, headFirstSeq: number | null, nextSeq: number, onTime: boolean): readonly number[] | null {
    this.prune(nextSeq, headFirstSeq);
    if (this.serving === null || headFirstSeq === null) return null;
    let head = this.arrivals.get(headFirstSeq);
    if (head === undefined) {
      if (this.arrivals.size >= ARRIVALS_MAX) this.evictAbove(headFirstSeq);
      head = { at: now, from: new Set() };
      this.arrivals.set(headFirstSeq, head);
    }
    const waited = now - Math.max(head.at, this.narrowedAt);
    if (waited < (onTime ? NARROW_STALL_MS : NARROW_STALL_BUSY_MS)) return null;
    const from = head.from;
    return [...this.serving].filter((replica) => !from.has(replica));
  }

  /** Left out of narrowings for twice the spell (a replica that refused or dropped its session while wide). */
  suspect(now: number, replicas: readonly number[]): void {
    for (const [replica, until] of [...this.suspectUntil]) if (until <= now) this.suspectUntil.delete(replica);
    for (const replica of replicas) this.suspectUntil.set(replica, Math.max(this.suspectUntil.get(replica) ?? 0, now + 2 * this.spellMs));
  }

  /**
   * Back to every replica; `suspects` are left out of narrowings for twice the spell,
   * also when the subscription is already wide. False if it was not narrowed.
   */
  widen(now: number, suspects: readonly number[]): boolean {
    if (this.serving !== null && now - this.narrowedAt >= NARROW_CALM_RESET_MS) this.spellMs = NARROW_AGAIN_AFTER_MS;
    this.suspect(now, suspects);
    if (this.serving === null) return false;
    this.serving = null;
    this.widenCount++;
    this.narrowAt = now + this.spellMs;
    this.spellMs = Math.min(2 * this.spellMs, NARROW_AGAIN_AFTER_MS_MAX);
    return true;
  }

  /** Makes room by forgetting the highest timed first seq if it is above `firstSeq`; false if none is. */
  private evictAbove(firstSeq: number): boolean {
    let highest = Number.NEGATIVE_INFINITY;
    for (const seq of this.arrivals.keys()) if (seq > highest) highest = seq;
    if (highest <= firstSeq) return false;
    this.arrivals.delete(highest);
    return true;
  }

  /**
   * Forgets the times of seqs behind the next one, but the head's (a straddler), once per
   * move of the next seq: nothing falls behind while it stays where it is.
   */
  private prune(nextSeq: number, keep: number | null): void {
    if (nextSeq === this.arrivalsNext) return;
    this.arrivalsNext = nextSeq;
    for (const firstSeq of this.arrivals.keys()) if (firstSeq < nextSeq && firstSeq !== keep) this.arrivals.delete(firstSeq);
  }
}
