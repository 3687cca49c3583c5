/**
 * The simulated network: every message gets a delivery tick drawn from the scenario's
 * delay distribution, may be dropped or duplicated before heal, and is blocked by active
 * partitions at send time. Deliveries of one tick are shuffled, so equal delays still
 * reorder.
 */
import type { PeerMessage, ReplicaId } from "../core/ordering/index.ts";
import type { Prng } from "./prng.ts";
import { DELAY_POST_MAX, DELAY_POST_MIN, type Scenario } from "./scenario.ts";

export interface Delivery {
  from: ReplicaId;
  to: ReplicaId;
  /** A message object, or arbitrary junk from a Byzantine sender (checked at delivery). */
  msg: PeerMessage | unknown;
}

/** An active partition with its sides resolved. */
export interface ActivePartition {
  kind: "split" | "oneway" | "isolateLeader";
  end: number;
  sideA: Set<ReplicaId>;
}

export class Network {
  private readonly buckets = new Map<number, Delivery[]>();
  readonly active: ActivePartition[] = [];
  sent = 0;
  dropped = 0;
  inFlight = 0;

  constructor(
    private readonly scenario: Scenario,
    private readonly rng: Prng,
  ) {}

  healed(now: number): boolean {
    return now >= this.scenario.healAt;
  }

  blocked(from: ReplicaId, to: ReplicaId): boolean {
    for (const p of this.active) {
      const a = p.sideA.has(from);
      const b = p.sideA.has(to);
      if (p.kind === "oneway" ? a && !b : a !== b) return true;
    }
    return false;
  }

  delay(now: number): number {
    if (this.healed(now)) return this.rng.int(DELAY_POST_MIN, DELAY_POST_MAX);
    // Mostly short delays with a long tail, as on a congested network.
    return this.rng.chance(0.8) ? this.rng.int(1, Math.min(5, this.scenario.maxDelayPre)) : this.rng.int(1, this.scenario.maxDelayPre);
  }

  send(now: number, d: Delivery, extraDelay = 0): void {
    this.sent++;
    const healed = this.healed(now);
    if (!healed && this.blocked(d.from, d.to)) {
      this.dropped++;
      return;
    }
    if (!healed && this.rng.chance(this.scenario.dropRate)) {
      this.dropped++;
      return;
    }
    this.enqueue(now + this.delay(now) + extraDelay, d);
    if (this.rng.chance(healed ? this.scenario.dupRate / 4 : this.scenario.dupRate)) this.enqueue(now + this.delay(now) + extraDelay, d);
  }

  private enqueue(at: number, d: Delivery): void {
    let bucket = this.buckets.get(at);
    if (bucket === undefined) {
      bucket = [];
      this.buckets.set(at, bucket);
    }
    bucket.push(d);
    this.inFlight++;
  }

  take(now: number): Delivery[] {
    const bucket = this.buckets.get(now);
    if (bucket === undefined) return [];
    this.buckets.delete(now);
    this.inFlight -= bucket.length;
    return this.rng.shuffle(bucket);
  }
}
