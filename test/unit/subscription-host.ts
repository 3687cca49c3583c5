/**
 * Test helpers for ClientSubscription: a scripted host standing for the client side of n
 * replicas (what was sent to each, and whether sending works), and signed requests as a
 * replica forwards them.
 */
import { encodeCanonical } from "../../wire/canonical.ts";
import type { Events } from "../../wire/schemas.ts";
import { DOMAIN_REQUEST } from "../../wire/types.ts";
import type { ChannelInfo, PublisherListing } from "../../src/client/queries.ts";
import type { ClientSubscription, SubscriptionHost } from "../../src/client/subscription.ts";
import { signDomain } from "../../src/crypto/ed25519.ts";
import type { SigningKey } from "../../src/crypto/keys.ts";

/** The client side of n replicas: what was sent to each, and whether sending works. */
export class ScriptedHost implements SubscriptionHost {
  /** The group's members and f; a test changes them, then calls ClientSubscription.onGroupChange. */
  memberIds: number[] = [0, 1, 2, 3];
  f = 1;
  nowMs = 1_000;
  readonly ready = new Set([0, 1, 2, 3]);
  /** Replicas whose outbound queue is full: SUBSCRIBE cannot be sent. */
  readonly queueFull = new Set<number>();
  readonly subscribes: { replica: number; subId: number; from: number | undefined; after: number }[] = [];
  readonly unsubscribes: { replica: number; subId: number }[] = [];
  /** The client's read-your-writes floor, as a test sets it. */
  floor = 0;
  private lastSubId = 0;

  get n(): number {
    return this.memberIds.length;
  }

  members(): readonly number[] {
    return this.memberIds;
  }

  readyReplicas(): readonly number[] {
    return [...this.ready];
  }

  executedFloor(): number {
    return this.floor;
  }

  /** The registered publishers the host answers with, the `at` of that listing, and how often it was asked. */
  registered: Uint8Array[] = [];
  registeredAt = 0;
  publisherQueries = 0;
  /** Answers queued while set: the test releases them with `answerPublishers`. */
  holdPublisherQueries = false;
  private readonly heldPublisherQueries: (() => void)[] = [];

  publishers(_tag: string): Promise<PublisherListing> {
    this.publisherQueries++;
    return new Promise((resolve) => {
      const answer = () => resolve({ publishers: [...this.registered], at: this.registeredAt });
      if (this.holdPublisherQueries) this.heldPublisherQueries.push(answer);
      else answer();
    });
  }

  answerPublishers(): void {
    for (const answer of this.heldPublisherQueries.splice(0)) answer();
  }

  subscribeAt(_sub: ClientSubscription, replica: number, from: number | undefined, after: number): number | null {
    if (!this.ready.has(replica) || this.queueFull.has(replica)) return null;
    const subId = ++this.lastSubId;
    this.subscribes.push({ replica, subId, from, after });
    return subId;
  }

  unsubscribeAt(replica: number, subId: number): void {
    this.unsubscribes.push({ replica, subId });
  }

  releaseSubId(): void {}

  forget(): void {}

  now(): number {
    return this.nowMs;
  }

  /** The sub id of the latest SUBSCRIBE sent to `replica`. */
  subIdAt(replica: number): number {
    const last = this.subscribes.filter((s) => s.replica === replica).at(-1);
    if (last === undefined) throw new Error(`no SUBSCRIBE sent to replica ${replica}`);
    return last.subId;
  }

  subscribesTo(replica: number): number {
    return this.subscribes.filter((s) => s.replica === replica).length;
  }
}

export function channel(tag: string, fault: ChannelInfo["fault"], order: ChannelInfo["order"]): ChannelInfo {
  return { tag, fault, order, priority: "normal", public: true };
}

/** A pub request signed by `key`, as a replica forwards it. */
export function signedRequest(key: SigningKey, tag: string, seq: number, events: readonly (string | Uint8Array)[]): Events["req"] {
  const evs = events.map((e) => (typeof e === "string" ? new TextEncoder().encode(e) : e));
  const body = encodeCanonical({ v: 1, client: key.publicKey, seq, span: evs.length, ts: 77, op: { t: "pub", tag, events: evs } });
  return { body, sig: signDomain(key, DOMAIN_REQUEST, body) };
}

/** A subscription under test and the scripted host it runs on. */
export interface ScriptedSubscription {
  readonly host: ScriptedHost;
  readonly sub: ClientSubscription;
}

/** Replica `replica` answers the subscription's SUBSCRIBE (with its next seq on total-order channels). */
export function subOk(h: ScriptedSubscription, replica: number, next?: number): void {
  const subId = h.host.subIdAt(replica);
  h.sub.onSubOk(replica, subId, next === undefined ? { sub: subId, replica } : { sub: subId, replica, next });
}

/** Replica `replica` sends the subscription a copy of `req` at `seq`. */
export function send(h: ScriptedSubscription, replica: number, seq: number, req: Events["req"]): void {
  const subId = h.host.subIdAt(replica);
  h.sub.onEvents(replica, subId, { sub: subId, tag: h.sub.tag, seq, req, replica });
}
