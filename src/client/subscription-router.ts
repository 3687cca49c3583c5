/**
 * Subscription routing: the client's open subscriptions, and which of them each sub id
 * belongs to. Every SUBSCRIBE goes out under a fresh sub id at one replica; SUB_OK,
 * EVENTS and SUB_END are routed back by (replica, sub id), so a replica can only speak
 * for the subscriptions it was asked for. This is the SubscriptionHost a
 * ClientSubscription sees: sending, routing, the clock.
 *
 * Every SUBSCRIBE says `shared` (protocol version 4): a replica may then send one EVENTS
 * frame naming several of this client's subscriptions of a channel (`subs`), routed here to
 * each of them with the same bytes. Those bytes are never a handler's: a subscription
 * hands its handler a copy of a shared batch (`sharedBytes`), so no handler can write over
 * another's events, and a shared batch is read and its signature checked once for all of
 * them (SharedBodies) over the bytes that were received.
 */
import type { EventsFrame, SubEnd, SubOk } from "../../wire/schemas.ts";
import { randomInt } from "node:crypto";
import { FrameType } from "../../wire/types.ts";
import { CopyKeys, type VerifyRequest } from "../core/voting/delivery-voter.ts";
import { nativeBytesEqual } from "../crypto/encoding.ts";
import { sha256 } from "../crypto/hash.ts";
import type { ExecutedFloor } from "./executed-floor.ts";
import type { PublisherListing } from "./queries.ts";
import type { ReplicaGroup } from "./replica-group.ts";
import type { ClientSubscription, SubscriptionHost } from "./subscription.ts";
import { checkRequestSignature, SharedBodies } from "./shared-bodies.ts";

interface SubRoute {
  readonly sub: ClientSubscription;
  readonly replica: number;
}

/** Offsets are drawn below this (any multiple of the group sizes spreads evenly enough). */
const SOURCE_OFFSET_RANGE = 1 << 30;

export class SubscriptionRouter implements SubscriptionHost {
  /** One per client: its voters' memo of copy keys, bounded whatever the number of subscriptions. */
  readonly copyKeys = new CopyKeys(sha256, nativeBytesEqual);
  /** Where this client's subscriptions start choosing their serving replicas (narrowing.ts): drawn per client, so clients spread the fan-out. */
  readonly sourceOffset = randomInt(SOURCE_OFFSET_RANGE);
  /** One per client: the bodies of shared EVENTS frames, read and checked once for all the subscriptions they reach. */
  readonly shared = new SharedBodies(checkRequestSignature);
  readonly verifyRequest: VerifyRequest = this.shared.verify;
  readonly parseBody = this.shared.parse;
  private readonly subscriptions = new Set<ClientSubscription>();
  private readonly subRoutes = new Map<number, SubRoute>();
  private subCounter = 0;

  constructor(
    private readonly group: ReplicaGroup,
    private readonly floor: ExecutedFloor,
    private readonly clock: () => number,
    private readonly queryPublishers: (tag: string) => Promise<PublisherListing>,
    /** The period of the client's ticks (SubscriptionHost.tickMs). */
    readonly tickMs?: number,
  ) {}

  /** Members of the group the client follows now (it changes: onGroupChange). */
  get n(): number {
    return this.group.n;
  }

  get f(): number {
    return this.group.f;
  }

  members(): readonly number[] {
    return this.group.connections.map((connection) => connection.id);
  }

  /** Subscriptions open now. */
  get size(): number {
    return this.subscriptions.size;
  }

  add(sub: ClientSubscription): void {
    this.subscriptions.add(sub);
  }

  // ---------------------------------------------------------------------------------
  // The host side a subscription sees
  // ---------------------------------------------------------------------------------

  readyReplicas(): readonly number[] {
    return this.group.readyReplicas();
  }

  executedFloor(): number {
    return this.floor.value;
  }

  subscribeAt(sub: ClientSubscription, replica: number, from: number | undefined, after: number): number | null {
    const connection = this.group.connection(replica);
    if (connection === undefined || !connection.isReady) return null;
    const subId = ++this.subCounter;
    const body: { sub: number; tag: string; from?: number; after?: number; shared: true } = { sub: subId, tag: sub.tag, shared: true };
    if (from !== undefined) body.from = from;
    if (after > 0) body.after = after;
    if (!connection.send({ type: FrameType.SUBSCRIBE, body })) return null;
    this.subRoutes.set(subId, { sub, replica });
    return subId;
  }

  unsubscribeAt(replica: number, subId: number): void {
    this.subRoutes.delete(subId);
    this.group.connection(replica)?.send({ type: FrameType.UNSUBSCRIBE, body: { sub: subId } });
  }

  releaseSubId(subId: number): void {
    this.subRoutes.delete(subId);
  }

  forget(sub: ClientSubscription): void {
    this.subscriptions.delete(sub);
    for (const [subId, route] of this.subRoutes) if (route.sub === sub) this.subRoutes.delete(subId);
    if (this.subscriptions.size === 0) this.copyKeys.clear();
  }

  now(): number {
    return this.clock();
  }

  publishers(tag: string): Promise<PublisherListing> {
    return this.queryPublishers(tag);
  }

  // ---------------------------------------------------------------------------------
  // Frames and connection events from the client
  // ---------------------------------------------------------------------------------

  private route(replica: number, subId: number): SubRoute | null {
    const route = this.subRoutes.get(subId);
    return route !== undefined && route.replica === replica ? route : null;
  }

  onSubOk(replica: number, body: SubOk): void {
    this.route(replica, body.sub)?.sub.onSubOk(replica, body.sub, body);
  }

  onEvents(replica: number, body: EventsFrame): void {
    if (body.subs === undefined) {
      this.route(replica, body.sub)?.sub.onEvents(replica, body.sub, body);
      return;
    }
    this.shared.mark(body.req.body);
    for (const subId of body.subs) {
      const route = this.route(replica, subId);
      if (route !== null)
        route.sub.onEvents(replica, subId, { sub: subId, tag: body.tag, seq: body.seq, req: body.req, replica: body.replica });
    }
  }

  sharedBytes(body: Uint8Array): boolean {
    return this.shared.has(body);
  }

  onSubEnd(replica: number, body: SubEnd): void {
    this.route(replica, body.sub)?.sub.onSubEnd(replica, body.sub, body);
  }

  onReady(replica: number): void {
    for (const sub of this.subscriptions) sub.onReplicaReady(replica);
  }

  /** The replica's connection dropped: its sub ids are gone with it. */
  onDown(replica: number): void {
    for (const [subId, route] of this.subRoutes) if (route.replica === replica) this.subRoutes.delete(subId);
    for (const sub of this.subscriptions) sub.onReplicaDown(replica);
  }

  /**
   * The client moved to another group: `left` are the members removed or replaced (their
   * sub ids went with their connections: onDown). Every subscription votes with the new
   * group from now on.
   */
  onGroupChange(left: readonly number[]): void {
    for (const [subId, route] of this.subRoutes) if (left.includes(route.replica)) this.subRoutes.delete(subId);
    const keys = new Map(this.group.connections.map((connection) => [connection.id, connection.endpoint.publicKey]));
    for (const sub of [...this.subscriptions]) sub.onGroupChange(left, keys);
  }

  tick(now: number): void {
    for (const sub of [...this.subscriptions]) sub.tick(now);
  }

  /** Ends every subscription as closed by the caller (the client is closing). */
  endAll(): void {
    for (const sub of [...this.subscriptions]) sub.end(null);
  }
}
