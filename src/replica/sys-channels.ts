/**
 * The replicas' system channels (wire/PROTOCOL.md 2.1): `$sys.replica.<id>`, where replica
 * <id> publishes its own health every SYS_HEALTH_INTERVAL_MS, and `$sys.events`, where each
 * replica reports what it sees happen to the group (views installed, view changes, leaders
 * suspected, peers up and down).
 *
 * They are not in the replicated channel state: every replica knows them by name, serves
 * them to its own subscribers, live only, and signs what it publishes with its own key,
 * as a pub request on a crash/none channel. A health report is one replica's word, and is
 * delivered as such. A `$sys.events` report is one vote: subscribers deliver a group event
 * once f+1 replicas reported the same kind and agreed fields (src/core/voting/group-events.ts),
 * so a report carries the agreed fields as they are for every replica (the view, the
 * leader, the peer) and keeps what is this replica's own to `ts`, `replica` and `reason`.
 * The publisher seq starts from the clock in ms, so it keeps increasing across restarts
 * and a long-lived subscriber's dedupe never mistakes a new report for an old one.
 *
 * Which `$sys.replica.<id>` channels exist, and whose key publishes each, follow the
 * replicated membership (core/channels/membership.ts): a replica added by add-replica has
 * one from the decision that makes its epoch current, a removed replica's is retired at
 * the same decision (its subscribers are ended, DESTROYED), and a rotated key publishes
 * from then on. Every replica switches at the same seq, as it does for its peer links.
 */
import { encodeRequestBody, type Frame } from "../../wire/schemas.ts";
import { requestSigningInput } from "../../wire/session.ts";
import { FrameType, type SubEndCode, SYS_TAG_PREFIX } from "../../wire/types.ts";
import { sign } from "../crypto/ed25519.ts";
import { SYS_EVENTS_TAG } from "../core/voting/group-events.ts";
import type { SigningKey } from "../crypto/keys.ts";
import type { ClientSession } from "./server.ts";

export const SYS_HEALTH_INTERVAL_MS = 5_000;
/** System subscriptions one connection may hold, and all of them together. */
export const SYS_SUBSCRIPTIONS_PER_SESSION_MAX = 16;
export const SYS_SUBSCRIPTIONS_MAX = 4_096;
/**
 * System subscriptions the connections of one remote address may hold together: a
 * sixteenth of all, so one host opening sessions under throwaway keys cannot take every
 * slot and leave the operators' consoles refused (LIMIT). Loopback is one address, as for
 * the connection caps: a relay or consoles on the replica's own host share it.
 */
export const SYS_SUBSCRIPTIONS_PER_ADDRESS_MAX = SYS_SUBSCRIPTIONS_MAX / 16;

export function isSysTag(tag: string): boolean {
  return tag.startsWith(SYS_TAG_PREFIX);
}

/** A member of the group as the system channels know it: its id and the key that signs its reports. */
export interface SysMember {
  readonly id: number;
  readonly key: Uint8Array;
}

export interface SysChannelsOptions {
  readonly self: number;
  /** The group now (the replicated membership): the publishers of the system channels. */
  readonly members: () => readonly SysMember[];
  readonly key: SigningKey;
  /** This replica's health now, as one JSON object. */
  readonly health: () => Record<string, unknown>;
  readonly now?: () => number;
}

interface SysSubscription {
  readonly session: ClientSession;
  readonly sub: number;
  readonly tag: string;
}

export class SysChannels {
  /** Subscriptions by tag, then by "session/sub". */
  private readonly byTag = new Map<string, Map<string, SysSubscription>>();
  private readonly bySession = new Map<number, Map<number, SysSubscription>>();
  private total = 0;
  /** Subscriptions held by the connections of each remote address (absent: none). */
  private readonly byAddress = new Map<string, number>();
  private lastSeq = 0;
  private lastHealth: { body: Uint8Array; sig: Uint8Array; seq: number } | null = null;
  private timer: ReturnType<typeof setInterval> | null = null;
  private readonly now: () => number;
  readonly ownTag: string;

  constructor(private readonly options: SysChannelsOptions) {
    this.now = options.now ?? Date.now;
    this.ownTag = `${SYS_TAG_PREFIX}replica.${options.self}`;
  }

  /** The channel-info answer for a system tag, or null when there is no such channel. */
  info(tag: string): { [key: string]: string | number | boolean } | null {
    if (!this.exists(tag)) return null;
    return { tag, fault: "crash", order: "none", priority: "low", public: true, next: 0, oldest: 0 };
  }

  /**
   * The publishers answer for a system tag (QUERY "publishers"), or null when there is no
   * such channel: replica <id>'s key for `$sys.replica.<id>`, every replica's for
   * `$sys.events`. Subscribers of crash channels deliver only registered publishers' events.
   */
  publishers(tag: string): readonly Uint8Array[] | null {
    if (!this.exists(tag)) return null;
    const members = this.options.members();
    if (tag === SYS_EVENTS_TAG) return members.map((member) => member.key);
    const key = members.find((member) => member.id === replicaOf(tag))?.key;
    return key === undefined ? null : [key];
  }

  /**
   * The membership changed (called once the decision that changed it executed): the
   * subscriptions to a removed replica's `$sys.replica.<id>` are ended, DESTROYED.
   */
  followMembers(): void {
    for (const tag of [...this.byTag.keys()]) {
      if (this.exists(tag)) continue;
      for (const subscription of [...(this.byTag.get(tag)?.values() ?? [])]) {
        this.remove(subscription);
        this.end(subscription.session, subscription.sub, "DESTROYED", `replica ${replicaOf(tag)} was removed from the group`);
      }
    }
  }

  start(): void {
    this.publishHealth();
    this.timer = setInterval(() => this.publishHealth(), SYS_HEALTH_INTERVAL_MS);
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    for (const subs of this.bySession.values()) for (const s of subs.values()) this.end(s.session, s.sub, "SHUTDOWN", "replica stopping");
    this.byTag.clear();
    this.bySession.clear();
    this.byAddress.clear();
    this.total = 0;
  }

  get count(): number {
    return this.total;
  }

  subscribe(session: ClientSession, sub: number, tag: string): void {
    if (!this.exists(tag)) {
      const ids = this.options
        .members()
        .map((member) => member.id)
        .join(",");
      this.end(session, sub, "UNKNOWN_CHANNEL", `no system channel ${tag}: $sys.events or $sys.replica.<id> for a member (${ids})`);
      return;
    }
    if (this.refuseDuplicate(session, sub)) return;
    const mine = this.bySession.get(session.id) ?? new Map<number, SysSubscription>();
    if (mine.size >= SYS_SUBSCRIPTIONS_PER_SESSION_MAX) {
      this.end(session, sub, "LIMIT", `at most ${SYS_SUBSCRIPTIONS_PER_SESSION_MAX} system subscriptions per connection`);
      return;
    }
    const address = session.conn.remote;
    if ((this.byAddress.get(address) ?? 0) >= SYS_SUBSCRIPTIONS_PER_ADDRESS_MAX) {
      this.end(session, sub, "LIMIT", `at most ${SYS_SUBSCRIPTIONS_PER_ADDRESS_MAX} system subscriptions per remote address (${address})`);
      return;
    }
    if (this.total >= SYS_SUBSCRIPTIONS_MAX) {
      this.end(session, sub, "LIMIT", `at most ${SYS_SUBSCRIPTIONS_MAX} system subscriptions at this replica`);
      return;
    }
    const subscription: SysSubscription = { session, sub, tag };
    // A SUB_OK the connection has no room for is a frame it cannot take, as a report would
    // be: the subscription is not opened, and ends as a slow one does.
    if (!this.send(session, { type: FrameType.SUB_OK, body: { sub, replica: this.options.self, next: 0 } })) {
      this.endSlow(subscription);
      return;
    }
    mine.set(sub, subscription);
    this.bySession.set(session.id, mine);
    const tagSubs = this.byTag.get(tag) ?? new Map<string, SysSubscription>();
    tagSubs.set(`${session.id}/${sub}`, subscription);
    this.byTag.set(tag, tagSubs);
    this.total++;
    this.byAddress.set(address, (this.byAddress.get(address) ?? 0) + 1);
    // A new subscriber of this replica's health gets the latest report at once.
    if (tag === this.ownTag && this.lastHealth !== null) this.deliver(subscription, this.lastHealth);
  }

  /** Whether `sub` is the id of a system subscription of this session. */
  has(session: ClientSession, sub: number): boolean {
    return this.bySession.get(session.id)?.has(sub) === true;
  }

  /** Refuses a SUBSCRIBE whose id a system subscription of this session has (BAD_REQUEST); false when the id is free here. */
  refuseDuplicate(session: ClientSession, sub: number): boolean {
    if (!this.has(session, sub)) return false;
    this.end(session, sub, "BAD_REQUEST", `subscription id ${sub} is already in use`);
    return true;
  }

  /** True when `sub` was a system subscription of this session (then it is ended). */
  unsubscribe(session: ClientSession, sub: number): boolean {
    const subscription = this.bySession.get(session.id)?.get(sub);
    if (subscription === undefined) return false;
    this.remove(subscription);
    this.end(session, sub, "UNSUBSCRIBED", "unsubscribed");
    return true;
  }

  dropSession(session: ClientSession): void {
    const mine = this.bySession.get(session.id);
    if (mine === undefined) return;
    for (const subscription of [...mine.values()]) this.remove(subscription);
  }

  /**
   * Reports one event to `$sys.events`: `kind` and its fields, with this replica's id.
   * Every field but `reason` must be one all correct replicas report alike, or their
   * reports never agree (GROUP_REPORT_OWN_FIELDS).
   */
  event(kind: string, fields: Record<string, unknown> = {}): void {
    if (!this.byTag.has(SYS_EVENTS_TAG)) return;
    this.publish(SYS_EVENTS_TAG, { ...fields, kind, replica: this.options.self });
  }

  private publishHealth(): void {
    this.lastHealth = this.signed(this.ownTag, { kind: "health", replica: this.options.self, ...this.options.health() });
    for (const subscription of this.byTag.get(this.ownTag)?.values() ?? []) this.deliver(subscription, this.lastHealth);
  }

  private publish(tag: string, payload: Record<string, unknown>): void {
    const signed = this.signed(tag, payload);
    for (const subscription of [...(this.byTag.get(tag)?.values() ?? [])]) this.deliver(subscription, signed);
  }

  private signed(tag: string, payload: Record<string, unknown>): { body: Uint8Array; sig: Uint8Array; seq: number } {
    const ts = this.now();
    this.lastSeq = Math.max(this.lastSeq + 1, ts);
    const event = new TextEncoder().encode(JSON.stringify({ ts, ...payload }));
    const body = encodeRequestBody({
      v: 1,
      client: this.options.key.publicKey,
      seq: this.lastSeq,
      span: 1,
      ts,
      op: { t: "pub", tag, events: [event] },
    });
    return { body, sig: sign(this.options.key, requestSigningInput(body)), seq: this.lastSeq };
  }

  /** Sends one report; a connection too full to take it loses the subscription (SLOW), as on any channel. */
  private deliver(subscription: SysSubscription, signed: { body: Uint8Array; sig: Uint8Array; seq: number }): void {
    const frame: Frame = {
      type: FrameType.EVENTS,
      body: {
        sub: subscription.sub,
        tag: subscription.tag,
        seq: signed.seq,
        req: { body: signed.body, sig: signed.sig },
        replica: this.options.self,
      },
    };
    if (this.send(subscription.session, frame)) return;
    this.remove(subscription);
    this.endSlow(subscription);
  }

  /** Ends a subscription whose frame did not fit its connection as SLOW, or closes the connection when SUB_END does not fit either. */
  private endSlow(subscription: SysSubscription): void {
    if (!this.end(subscription.session, subscription.sub, "SLOW", "subscriber fell behind; subscribe again"))
      subscription.session.conn.close();
  }

  private exists(tag: string): boolean {
    if (tag === SYS_EVENTS_TAG) return true;
    const id = replicaOf(tag);
    return id !== null && this.options.members().some((member) => member.id === id);
  }

  private remove(subscription: SysSubscription): void {
    const mine = this.bySession.get(subscription.session.id);
    if (mine?.delete(subscription.sub) !== true) return;
    if (mine.size === 0) this.bySession.delete(subscription.session.id);
    const tagSubs = this.byTag.get(subscription.tag);
    tagSubs?.delete(`${subscription.session.id}/${subscription.sub}`);
    if (tagSubs !== undefined && tagSubs.size === 0) this.byTag.delete(subscription.tag);
    this.total--;
    const address = subscription.session.conn.remote;
    const held = (this.byAddress.get(address) ?? 0) - 1;
    if (held > 0) this.byAddress.set(address, held);
    else this.byAddress.delete(address);
  }

  private end(session: ClientSession, sub: number, code: SubEndCode, reason: string): boolean {
    return this.send(session, { type: FrameType.SUB_END, body: { sub, replica: this.options.self, code, reason } });
  }

  private send(session: ClientSession, frame: Frame): boolean {
    return session.conn.send(frame);
  }
}

/** The id in `$sys.replica.<id>`, or null for any other tag. */
function replicaOf(tag: string): number | null {
  const match = /^\$sys\.replica\.(0|[1-9]\d{0,3})$/.exec(tag);
  return match === null ? null : Number(match[1]);
}
