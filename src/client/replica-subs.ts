/**
 * The per-replica side of one subscription: where our SUBSCRIBE stands at each replica
 * (none, pending, active, or to be retried at some time), subscribing and resubscribing
 * there through the SubscriptionHost, and the refusals replicas end it with.
 *
 * A refusal ends the subscription only once f+1 replicas agree on it, and a refusal a
 * replica judged on its own state (it carries `at`) only while it is fresh: one older
 * than a decided seq a correct replica is known to have executed is asked again, waiting
 * for that seq (see refused); at once the first time, after RESUBSCRIBE_AFTER_REFUSAL_MS
 * once the replica refused a SUBSCRIBE that already asked it to wait for that seq (it
 * answered past its hold bound). A seq fewer than f+1 replicas claim is worth one such
 * wait per refusing replica, never more, and a refusal below it after that wait counts
 * only as one of 2f+1 refusals: one lying replica cannot keep a subscription from ending,
 * nor can two lagging replicas end one to a channel that another created moments ago.
 *
 * A replica that sends a copy failing its checks is unsubscribed and asked again later,
 * each time later (RESUBSCRIBE_AFTER_INVALID), so that its bad copies cost no more than
 * one signature check per wait.
 */
import type { SubEnd, SubOk } from "../../wire/schemas.ts";
import type { ErrorCode } from "../../wire/types.ts";
import { byzantineQuorum, vouchQuorum } from "../core/voting/quorum.ts";
import { backoffBaseDelayMs, type BackoffPolicy } from "./backoff.ts";
import { SubscriptionEndedError } from "./errors.ts";
import { pickLastSeq } from "./seq.ts";
import type { ClientSubscription, SubscriptionHost, SubscriptionSignal } from "./subscription.ts";

/** A replica whose copies overflowed the voter's buffer is asked again after this long. */
export const RESUBSCRIBE_AFTER_OVERFLOW_MS = 250;
/**
 * A replica whose SUBSCRIBE could not be sent (its outbound queue full, or not connected)
 * is asked again after this long, or as soon as it connects.
 */
export const RESUBSCRIBE_AFTER_SEND_FAILURE_MS = 250;
/** A replica that ended the subscription for a reason not yet confirmed by f+1 is asked again after this long. */
export const RESUBSCRIBE_AFTER_REFUSAL_MS = 1_000;
/**
 * A replica that sent a copy failing its checks is asked again after the first delay,
 * doubled at each further such copy, up to the cap (no jitter: one subscription's own wait).
 */
export const RESUBSCRIBE_AFTER_INVALID: BackoffPolicy = { initialDelayMs: 1_000, maxDelayMs: 60_000, multiplier: 2, jitterRatio: 0 };

/** SUB_END codes that f+1 replicas must agree on before the subscription fails. */
const FATAL_END_CODES: ReadonlySet<string> = new Set(["UNKNOWN_CHANNEL", "UNAUTHORIZED", "DESTROYED", "LIMIT", "BAD_REQUEST"]);

type ReplicaSubState =
  | { readonly t: "none" }
  | { readonly t: "pending"; readonly subId: number; readonly from: number | undefined }
  | { readonly t: "active"; readonly subId: number; readonly from: number | undefined; readonly next: number | undefined }
  | { readonly t: "retry"; readonly at: number; readonly endCode: string | null };

/** What the per-replica state needs from the subscription it belongs to. */
export interface ReplicaSubsOwner {
  readonly tag: string;
  /** Where a (re)subscription at one replica starts. */
  resumePoint(): number | undefined;
  /** Whether delivery is paused for a slow handler. */
  isPaused(): boolean;
  /** Whether the replica is on standby (narrowing.ts): it is not subscribed until a widening. */
  isStandby(replica: number): boolean;
  signal(signal: SubscriptionSignal): void;
  /** f+1 replicas refused the subscription: it ends with `error`. */
  fail(error: Error): void;
  /** Whether the subscription had started (its end is then no refusal: a destroy, an unregister). */
  hasStarted(): boolean;
}

export class ReplicaSubs {
  /** By replica id; a replica with no entry is "none" (a member added later starts so). */
  private readonly replicas = new Map<number, ReplicaSubState>();
  /** The last fatal SUB_END per replica; f+1 agreeing (and fresh, see refused) end the subscription. */
  private readonly fatalEnds = new Map<number, { code: string; reason: string; at: number | undefined }>();
  /** Replicas that answered a SUBSCRIBE at least once (SUB_OK or SUB_END). */
  private readonly answered = new Set<number>();
  /** The highest `at` of each replica's SUB_OKs (refusals do not count: see refused). */
  private readonly acceptedAts = new Map<number, number>();
  /** Replicas already asked to wait for a seq that fewer than f+1 replicas claim: never asked so twice. */
  private readonly askedClaimed = new Set<number>();
  /** Copies that failed their checks per replica, each of which unsubscribed it (sentInvalid). */
  private readonly invalidStrikes = new Map<number, number>();
  /** The `after` our last SUBSCRIBE to each replica carried (what it was asked to have executed). */
  private readonly lastAfter = new Map<number, number>();
  /** Stale refusals from replicas that had already been asked to wait for that seq: asked again only after a pause. */
  private staleHeld = 0;
  /**
   * Replicas signalled as behind (a stale refusal) and not heard otherwise since: their
   * later stale refusals, one a second while they catch up (a new member fetching the
   * state can take minutes), are not signalled again until they serve or refuse otherwise.
   */
  private readonly behindSignalled = new Set<number>();

  constructor(
    private readonly host: SubscriptionHost,
    private readonly sub: ClientSubscription,
    private readonly owner: ReplicaSubsOwner,
  ) {}

  /**
   * Stale refusals answered to a SUBSCRIBE that already carried the freshness they were
   * behind (a replica past its hold bound, e.g. a new member still fetching the state):
   * each is asked again after RESUBSCRIBE_AFTER_REFUSAL_MS, not at once.
   */
  get staleRefusalsHeld(): number {
    return this.staleHeld;
  }

  /** The replicas that answered SUB_OK, and the `next` each reported. */
  activeReplicas(): { replica: number; next: number | undefined }[] {
    const active: { replica: number; next: number | undefined }[] = [];
    for (const [replica, state] of [...this.replicas].sort((a, b) => a[0] - b[0])) {
      if (state.t === "active") active.push({ replica, next: state.next });
    }
    return active;
  }

  isActive(replica: number): boolean {
    return this.replicas.get(replica)?.t === "active";
  }

  // ---------------------------------------------------------------------------------
  // Subscribing at one replica
  // ---------------------------------------------------------------------------------

  /** `after`: the decided seq the replica is asked to have executed (default: the confirmed one). */
  subscribeAt(replica: number, after: number = this.confirmedAt()): void {
    if (this.owner.isStandby(replica)) {
      this.standby(replica);
      return;
    }
    const from = this.owner.resumePoint();
    const subId = this.host.subscribeAt(this.sub, replica, from, after);
    if (subId === null) {
      // Not sent (queue full or not connected): tick asks again once the replica is ready.
      this.replicas.set(replica, { t: "retry", at: this.host.now() + RESUBSCRIBE_AFTER_SEND_FAILURE_MS, endCode: null });
      return;
    }
    this.replicas.set(replica, { t: "pending", subId, from });
    this.lastAfter.set(replica, after);
  }

  resubscribe(replica: number): void {
    const state = this.replicas.get(replica);
    if (state !== undefined && (state.t === "active" || state.t === "pending")) this.host.unsubscribeAt(replica, state.subId);
    this.subscribeAt(replica);
  }

  retryLater(replica: number, delayMs: number, endCode: string | null): void {
    const state = this.replicas.get(replica);
    if (state !== undefined && (state.t === "active" || state.t === "pending")) this.host.unsubscribeAt(replica, state.subId);
    this.replicas.set(replica, { t: "retry", at: this.host.now() + delayMs, endCode });
  }

  /**
   * The replica sent a copy that failed its checks. Correct replicas check what they store
   * and forward, so it is faulty: it is unsubscribed, so that its further copies are dropped
   * before any check, and asked again after RESUBSCRIBE_AFTER_INVALID, longer at each such
   * copy. The others cover what it would have sent. One already waiting keeps its wait.
   */
  sentInvalid(replica: number): void {
    const state = this.replicas.get(replica);
    if (state === undefined || (state.t !== "active" && state.t !== "pending")) return;
    const strikes = this.invalidStrikes.get(replica) ?? 0;
    this.invalidStrikes.set(replica, strikes + 1);
    this.retryLater(replica, backoffBaseDelayMs(strikes, RESUBSCRIBE_AFTER_INVALID), null);
  }

  /**
   * Unsubscribes at the replica, which is not asked again until `subscribeAt` (a replica on
   * standby). One waiting to be asked again keeps its wait (`retryDue` finds it on standby).
   */
  standby(replica: number): void {
    const state = this.replicas.get(replica);
    if (state?.t === "retry") return;
    if (state !== undefined && (state.t === "active" || state.t === "pending")) this.host.unsubscribeAt(replica, state.subId);
    this.replicas.set(replica, { t: "none" });
  }

  /** Subscribes at every ready member with no SUBSCRIBE pending, active or waiting to be retried (after a widening). */
  wake(): void {
    for (const replica of this.host.members()) {
      const state = this.replicas.get(replica);
      if ((state === undefined || state.t === "none") && this.host.readyReplicas().includes(replica)) this.subscribeAt(replica);
    }
  }

  /** The replica's session is up: subscribes there unless a SUBSCRIBE is pending or active. */
  subscribeIfIdle(replica: number): void {
    const state = this.replicas.get(replica);
    if (state !== undefined && (state.t === "pending" || state.t === "active")) return;
    this.subscribeAt(replica);
  }

  /** The replica's connection dropped: its subscription is gone with it. False if it had none pending or active. */
  dropped(replica: number): boolean {
    const state = this.replicas.get(replica);
    if (state === undefined || state.t === "none" || state.t === "retry") return false;
    this.replicas.set(replica, { t: "none" });
    return true;
  }

  /**
   * The replica left the group (or its key was replaced): our SUBSCRIBE there is ended and
   * everything it said to this subscription (answers, refusals) is forgotten.
   */
  forget(replica: number): void {
    const state = this.replicas.get(replica);
    if (state !== undefined && (state.t === "active" || state.t === "pending")) this.host.unsubscribeAt(replica, state.subId);
    this.replicas.delete(replica);
    this.fatalEnds.delete(replica);
    this.answered.delete(replica);
    this.lastAfter.delete(replica);
    this.acceptedAts.delete(replica);
    this.askedClaimed.delete(replica);
    this.invalidStrikes.delete(replica);
    this.behindSignalled.delete(replica);
  }

  /** Subscribes again at every replica that is retrying or subscribed (after a skip). */
  resubscribeAll(): void {
    for (const [replica, state] of [...this.replicas]) {
      if (state.t === "retry" || state.t === "active" || state.t === "pending") this.resubscribe(replica);
    }
  }

  /** Unsubscribes everywhere; no replica is asked again until subscribeAt. */
  unsubscribeAll(): void {
    for (const [replica, state] of [...this.replicas]) {
      if (state.t === "active" || state.t === "pending") this.host.unsubscribeAt(replica, state.subId);
      this.replicas.set(replica, { t: "none" });
    }
  }

  /** Retries refused or overflowed replicas and unsent SUBSCRIBEs whose time has come. */
  retryDue(now: number): void {
    for (const [replica, state] of [...this.replicas]) {
      if (state.t === "retry" && now >= state.at && this.host.readyReplicas().includes(replica)) this.subscribeAt(replica);
    }
  }

  // ---------------------------------------------------------------------------------
  // Answers from one replica
  // ---------------------------------------------------------------------------------

  /** SUB_OK: the pending SUBSCRIBE `subId` is active. Its `from`, or null if it answers no pending SUBSCRIBE of ours. */
  accepted(replica: number, subId: number, body: SubOk): { readonly from: number | undefined } | null {
    const state = this.replicas.get(replica);
    if (state === undefined || state.t !== "pending" || state.subId !== subId) return null;
    this.replicas.set(replica, { t: "active", subId, from: state.from, next: body.next });
    this.fatalEnds.delete(replica);
    this.behindSignalled.delete(replica);
    this.answered.add(replica);
    if (body.at !== undefined && body.at > (this.acceptedAts.get(replica) ?? 0)) {
      this.acceptedAts.set(replica, body.at);
      this.askStaleAgain();
    }
    return { from: state.from };
  }

  /** Whether `subId` is our SUBSCRIBE at `replica`, pending or active (copies under it count). */
  carries(replica: number, subId: number): boolean {
    const state = this.replicas.get(replica);
    return state !== undefined && (state.t === "active" || state.t === "pending") && state.subId === subId;
  }

  /** SUB_END: the replica ended our SUBSCRIBE `subId`, whose id is released. False if it is not ours. */
  release(replica: number, subId: number): boolean {
    if (!this.carries(replica, subId)) return false;
    this.host.releaseSubId(subId);
    this.replicas.set(replica, { t: "none" });
    return true;
  }

  /**
   * A refusal a replica judged on its own state (it carries `at`) may predate a decision
   * another replica executed (a create-channel or register just made): it is never a vote
   * against that decision. One older than a decided seq a correct replica executed (the
   * client's floor, or the (f+1)-th highest `at` of the replicas that accepted the
   * subscription; refusals do not raise it) is asked again at once with `after` = that
   * seq, and the replica answers once it has executed it. One older only than a seq fewer
   * than f+1 replicas claim (a single replica's `at`: the create may be that fresh, or the
   * replica lies) is asked so once, with `after` = the claimed seq; its next refusal, if
   * it is not behind the confirmed seq, is "unconfirmed": it counts only as one of 2f+1
   * refusals (at least f+1 of them correct, which settle it whatever one replica claims),
   * and the replica is asked again after RESUBSCRIBE_AFTER_REFUSAL_MS meanwhile. If it
   * refused behind the `after` the SUBSCRIBE it refused already carried (it waited up to
   * its hold bound, or its wait queue was full, and is still behind, like a new member
   * fetching the state), it is counted, signalled, and asked again only after
   * RESUBSCRIBE_AFTER_REFUSAL_MS, whatever the floor is now: a replica that answers at
   * once cannot make the client ask it in a loop, not even while the client's floor rises
   * between each SUBSCRIBE and its refusal (a publishing client, a relay). Fresh refusals
   * end the subscription once f+1 agree and 2f+1 replicas, or every reachable one, have
   * answered; fresh and unconfirmed ones once 2f+1 agree.
   */
  refused(replica: number, body: SubEnd): void {
    this.answered.add(replica);
    const judged = this.judge(replica, body.at);
    if (body.at !== undefined && (judged === "behind" || judged === "claimed")) {
      this.fatalEnds.delete(replica);
      const askedAfter = this.lastAfter.get(replica) ?? 0;
      if (judged === "behind" && body.at < askedAfter) {
        this.staleHeld++;
        if (!this.behindSignalled.has(replica)) {
          this.behindSignalled.add(replica);
          this.owner.signal({
            t: "replica-ended",
            replica,
            code: body.code,
            reason: `${body.reason}: it is behind (it has executed seq ${body.at}, short of seq ${askedAfter} it was asked to wait for: new, restarted or fetching the state); asked again every ${RESUBSCRIBE_AFTER_REFUSAL_MS} ms, and not reported again until it serves or refuses otherwise`,
          });
        }
        this.replicas.set(replica, { t: "retry", at: this.host.now() + RESUBSCRIBE_AFTER_REFUSAL_MS, endCode: body.code });
        return;
      }
      this.behindSignalled.delete(replica);
      this.replicas.set(replica, { t: "retry", at: this.host.now(), endCode: body.code });
      if (!this.owner.isPaused() && this.host.readyReplicas().includes(replica)) this.askAgain(replica);
      return;
    }
    this.behindSignalled.delete(replica);
    this.owner.signal({ t: "replica-ended", replica, code: body.code, reason: body.reason });
    if (FATAL_END_CODES.has(body.code)) this.fatalEnds.set(replica, { code: body.code, reason: body.reason, at: body.at });
    this.askStaleAgain();
    const agreed = this.agreedFatalEnd();
    if (agreed !== null) {
      this.owner.fail(
        new SubscriptionEndedError(
          subEndErrorCode(agreed.code),
          agreed.code,
          `subscription to ${this.owner.tag} ${this.owner.hasStarted() ? "ended" : "refused"}: ${agreed.code} ${agreed.reason}`,
        ),
      );
      return;
    }
    this.replicas.set(replica, { t: "retry", at: this.host.now() + RESUBSCRIBE_AFTER_REFUSAL_MS, endCode: body.code });
  }

  /**
   * A decided seq some correct replica has executed: the client's floor, or the (f+1)-th
   * highest `at` of the members' SUB_OKs (as ExecutedFloor.observeAts counts them).
   */
  private confirmedAt(): number {
    const ats: number[] = [];
    for (const replica of this.host.members()) {
      const at = this.acceptedAts.get(replica);
      if (at !== undefined) ats.push(at);
    }
    return Math.max(this.host.executedFloor(), pickLastSeq(ats, this.host.f) ?? 0);
  }

  /** The highest seq a member's SUB_OK claims it executed (no less than the confirmed one). */
  private claimedAt(): number {
    let claimed = this.confirmedAt();
    for (const replica of this.host.members()) claimed = Math.max(claimed, this.acceptedAts.get(replica) ?? 0);
    return claimed;
  }

  /**
   * A refusal judged at `at`: "behind" a seq a correct replica executed; below a seq only
   * "claimed" (fewer than f+1 say so) that the replica was not yet asked to wait for
   * (both are asked again), or was ("unconfirmed": one of 2f+1); or "fresh" (one of f+1).
   */
  private judge(replica: number, at: number | undefined): "fresh" | "unconfirmed" | "behind" | "claimed" {
    if (at === undefined) return "fresh";
    if (at < this.confirmedAt()) return "behind";
    if (at >= this.claimedAt()) return "fresh";
    return this.askedClaimed.has(replica) ? "unconfirmed" : "claimed";
  }

  /** Asks a replica whose refusal was stale again: to wait for the claimed seq once, then for the confirmed one. */
  private askAgain(replica: number): void {
    const confirmed = this.confirmedAt();
    const after = this.askedClaimed.has(replica) ? confirmed : this.claimedAt();
    if (after > confirmed) this.askedClaimed.add(replica);
    this.subscribeAt(replica, after);
  }

  /** Refusals that a fresher answer has made stale are asked again, waiting for that seq. */
  private askStaleAgain(): void {
    for (const [replica, end] of [...this.fatalEnds]) {
      const judged = this.judge(replica, end.at);
      if (judged === "fresh" || judged === "unconfirmed") continue;
      this.fatalEnds.delete(replica);
      const state = this.replicas.get(replica);
      if (state !== undefined && state.t !== "active" && state.t !== "pending") this.askAgain(replica);
    }
  }

  /**
   * The fatal end code f+1 replicas agree on, if any, or 2f+1 counting unconfirmed ones
   * (see refused for ends that carry `at`).
   */
  private agreedFatalEnd(): { code: string; reason: string } | null {
    const byCode = new Map<string, { fresh: number; unconfirmed: number; reason: string; local: boolean }>();
    for (const [replica, end] of this.fatalEnds) {
      const judged = this.judge(replica, end.at);
      if (judged !== "fresh" && judged !== "unconfirmed") continue;
      const entry = byCode.get(end.code) ?? { fresh: 0, unconfirmed: 0, reason: end.reason, local: false };
      entry[judged]++;
      entry.local ||= end.at !== undefined;
      byCode.set(end.code, entry);
    }
    const f = this.host.f;
    const enoughAnswered =
      this.answered.size >= Math.min(this.host.n, byzantineQuorum(f)) ||
      this.host.readyReplicas().every((replica) => this.answered.has(replica));
    for (const [code, entry] of byCode) {
      if (entry.fresh + entry.unconfirmed >= byzantineQuorum(f)) return { code, reason: entry.reason };
      if (entry.fresh >= vouchQuorum(f) && (!entry.local || enoughAnswered)) return { code, reason: entry.reason };
    }
    return null;
  }

  /** " (replica 1: UNKNOWN_CHANNEL ...; ...)" for an error message, or "" when no replica refused. */
  describeRefusals(): string {
    if (this.fatalEnds.size === 0) return "";
    const parts = [...this.fatalEnds].map(([replica, end]) => `replica ${replica}: ${end.code} ${end.reason}`);
    return ` (${parts.join("; ")})`;
  }
}

/** The ERROR_CODES entry that stands for a SUB_END code. */
function subEndErrorCode(code: string): ErrorCode {
  switch (code) {
    case "UNKNOWN_CHANNEL":
    case "UNAUTHORIZED":
    case "BAD_REQUEST":
      return code;
    case "DESTROYED":
      return "UNKNOWN_CHANNEL";
    case "LIMIT":
      return "OVERLOADED";
    default:
      return "INTERNAL";
  }
}
