/**
 * Request tracking: every signed request in flight, sent to the replicas and settled by
 * voting on the replies with the quorum the channel's CLASS needs (src/core/voting,
 * src/README.md §3). A crash/none publish goes to f+1 replicas first (quorumTargets), every
 * other request to every replica. Replicas that have not answered get the same signed bytes
 * again after a timeout and whenever their session comes back; the request fails with
 * TIMEOUT at its deadline, or with RATE_LIMITED / OVERLOADED when replicas refusing it so
 * ("not now", retried) kept it from its quorum (deadlineError).
 *
 * Read-your-writes (PROTOCOL.md 6.3): a refusal a replica judged on its own state
 * carries `at`, the decided seq it had executed, and is not a vote until it is fresh and
 * enough replicas have answered (judgeLocalRefusals). Freshness is judged against the
 * `at` of the replicas that accepted the request, the seq one of them claims worth one
 * wait per replica, the seq f+1 confirm any number.
 */
import type { Canonical } from "../../wire/canonical.ts";
import type { Reply, ReplyResult } from "../../wire/schemas.ts";
import { type ErrorCode, PRIORITY_SHEDDING_REASON_PREFIX } from "../../wire/types.ts";
import { byzantineQuorum, vouchQuorum, type ReplyKind } from "../core/voting/quorum.ts";
import { ReplyVoter } from "../core/voting/reply-voter.ts";
import { toHex } from "../crypto/encoding.ts";
import { framePayloadDigest, withMacRoom } from "../crypto/session.ts";
import type { ReplicaConnection } from "./connection.ts";
import { type ClientError, NoQuorumError, RequestRejectedError, RetriedRefusalError, type RetriedRefusalCode } from "./errors.ts";
import type { TrackingContext } from "./replica-group.ts";
import { requestFrame, type BuiltRequest } from "./request.ts";
import { pickLastSeq } from "./seq.ts";

/**
 * Refusals that say "not now" rather than "no": the replica is catching up, shedding
 * load, rate-limiting, or still waiting for an earlier request of ours. They are not
 * votes; the request goes to that replica again at the next resend, or sooner after
 * priority shedding (retrySoon). At the deadline, the last of them each replica gave is
 * what the error reports for it.
 */
const TRANSIENT_REFUSALS: ReadonlySet<ErrorCode> = new Set(["OUT_OF_ORDER", "NOT_READY", "OVERLOADED", "RATE_LIMITED", "TIMEOUT"]);

/**
 * The "not now" refusals a request that misses its deadline reports as its code when they
 * kept it from its quorum (deadlineError): the client's rate, a replica shedding load. The
 * others (OUT_OF_ORDER, NOT_READY, TIMEOUT) say a replica or the client's numbering is
 * behind, which a TIMEOUT naming each replica's last answer describes.
 */
const REPORTED_REFUSALS: ReadonlyMap<ErrorCode, { readonly code: RetriedRefusalCode; readonly why: string }> = new Map([
  ["RATE_LIMITED", { code: "RATE_LIMITED", why: "for its rate" }],
  ["OVERLOADED", { code: "OVERLOADED", why: "for their load" }],
]);

/**
 * Whether a refusal is priority shedding's (wire/PROTOCOL.md 6.2): refused before its
 * signature was verified, and a share of such publishes is admitted, so a later try gets
 * in. A publisher's requests are ordered one after another, so one request waiting out
 * the resend timeout (2 s) at the leader would stall every request behind it; a shed
 * publisher must slow down, not stop. The other "not now" refusals say the replica is
 * behind (a full pending pool, catching up) or the client over a budget (its rate, a
 * sequence gap), and wait for the resend: asked sooner, a replica that is behind would
 * check more signatures, and a session refused too often is paused.
 */
function retriedSoon(code: ErrorCode, reason: string): boolean {
  return code === "OVERLOADED" && reason.startsWith(PRIORITY_SHEDDING_REASON_PREFIX);
}

/** The first such retry's delay (ms); each further refusal of the same request by the same replica doubles it, up to RETRY_SOON_MS_MAX. */
export const RETRY_SOON_MS_MIN = 10;
/**
 * The longest delay between two such retries (ms). At a 15% share a shed request is
 * refused about 6 times on average, and every request of the publisher behind it waits
 * for it: doubled up to the resend timeout, the delay stalled publishers for seconds. A
 * shorter bound asks more often, and since a replica admits a share of what it is asked,
 * more of the flood gets in and urgent traffic waits longer (README, Performance,
 * "Priority shedding in fitb demo", compares 80 ms, 320 ms and the resend timeout).
 */
export const RETRY_SOON_MS_MAX = 320;

/**
 * Where a crash/none publish goes. "quorum": to f+1 replicas with a session up, the same
 * ones for a tag while their sessions stay up (quorumTargets), and to every other replica
 * as soon as one of them refuses it (other than RATE_LIMITED), its session drops or its
 * connection has no room, or one of them has not answered by the hedge delay (hedgeDue).
 * "all": to every replica at once. Either way it is acknowledged once
 * f+1 replicas stored it; "quorum" spares the other replicas the copy (their signature
 * check, store and fan-out) and every subscriber the extra copies of each event.
 */
export type CrashNoneTargets = "quorum" | "all";

/** The shortest hedge delay (ms): a crash/none publish waits this long for its f+1 replicas before it goes to the others. */
export const HEDGE_MS_MIN = 50;
/**
 * The hedge delay is this many times the recent time a replica takes to answer a
 * crash/none publish (from its send to that replica's answer, an average weighted to the
 * last few dozen answers), at least HEDGE_MS_MIN and at most the resend timeout. A load
 * that makes every answer slower raises it, so it does not send every publish everywhere;
 * a replica that does not answer adds nothing to it, so it does not raise it either.
 */
export const HEDGE_ACK_MULTIPLE = 4;
/** The hedge delay before any replica answered a crash/none publish (ms): nothing is known of the group's pace yet. */
export const HEDGE_MS_INITIAL = 250;
/** Weight of the newest answer time in that average. */
const HEDGE_EWMA_WEIGHT = 0.05;
/**
 * A replica that was one of a publish's f+1 and did not answer it by the hedge delay is
 * passed over by quorumTargets for this long (ms), or until it answers anything: while a
 * replica's session is up but it is stopped, every publish of its tags would otherwise
 * wait the hedge delay.
 */
export const SUSPECT_MS = 5_000;
/** Tags whose replica order is remembered (quorumTargets); past this the memo starts again. */
const TARGET_ORDERS_MAX = 1024;

export type RequestOutcome =
  | { readonly ok: true; readonly res: ReplyResult; readonly replicas: readonly number[] }
  | { readonly ok: false; readonly error: ClientError };

interface PendingRequest {
  readonly built: BuiltRequest;
  /** The REQUEST frame as sent now: built.frame, or again with a higher `after`. */
  frame: Uint8Array;
  /** `frame` with room for a MAC and its framePayloadDigest, made at its first send for every replica's session (sendShared). */
  shared: { readonly bytes: Uint8Array; readonly digest: Uint8Array } | null;
  frameAfter: number;
  /**
   * Refusals judged on one replica's own state (they carry `at`): not votes until they
   * are fresh and enough replicas answered (judgeLocalRefusals).
   */
  readonly local: Map<number, LocalRefusal>;
  /** Every `at` a replica reported for this request (members only: onLeft drops those that left). */
  readonly ats: Map<number, number>;
  /** The f of the group the request was sent to: the floor counts with at least this f. */
  readonly fAtSend: number;
  /**
   * The `at` of each positive answer (stored or ordered): a replica that accepted the
   * request at that seq shows that refusals judged before it may be stale. One replica's
   * word only claims it; f+1 confirm it (judgeLocalRefusals).
   */
  readonly accepted: Map<number, number>;
  readonly what: string;
  readonly voter: ReplyVoter;
  /** Replicas that have the request on their current session. */
  readonly sentTo: Set<number>;
  /** The `after` each replica was last sent the request with: a stale refusal asks it again only for a higher one. */
  readonly sentAfter: Map<number, number>;
  /** Replicas already asked to wait for a seq only fewer than f+1 accepting replicas claim: never asked so twice. */
  readonly askedClaimed: Set<number>;
  /** One reason text per refusal code, for the error message. */
  readonly reasons: Map<string, string>;
  /** The last transient refusal per replica (not a vote). */
  readonly transient: Map<number, string>;
  /**
   * The replicas whose last answer was a transient refusal, with its code and reason, in
   * the order of those answers (the latest last): what the deadline reports (deadlineError).
   */
  readonly notNow: Map<number, { readonly code: ErrorCode; readonly reason: string }>;
  /** Replicas to ask again soon (retriedSoon): when, and how many times they refused so far. */
  readonly retries: Map<number, { dueAt: number; refusals: number }>;
  /**
   * The replicas a crash/none publish was sent to first (quorumTargets), or null once it
   * goes to every replica (and for every other request).
   */
  targets: ReadonlySet<number> | null;
  /** When a request with targets goes to every replica if one of them has not answered (hedgeDue). */
  hedgeAt: number;
  readonly kind: ReplyKind;
  /** When each replica was last sent the request. */
  readonly sentAt: Map<number, number>;
  /** Replicas that answered since they were last sent the request. */
  readonly heard: Set<number>;
  lastSendAt: number;
  readonly deadline: number;
  readonly settle: (outcome: RequestOutcome) => void;
}

/** A refusal a replica judged on its own state. */
interface LocalRefusal {
  readonly code: ErrorCode;
  readonly reason: string;
  readonly at: number;
  /** Whether the replica had been asked to wait for a claimed seq (askedClaimed) before it refused. */
  readonly waited: boolean;
}

/**
 * How a refusal judged on a replica's own state counts (judgeLocalRefusals): "fresh", one
 * of f+1; "unconfirmed", one of 2f+1 only; "stale", not at all (the replica is asked again).
 */
type RefusalStanding = "fresh" | "unconfirmed" | "stale";

/** The decided seqs that replicas' positive answers vouch for (judgeLocalRefusals). */
interface AcceptedSeqs {
  /** Executed by a correct replica: the client's floor, or the (f+1)-th highest accepted `at`. */
  readonly confirmed: number;
  /** The highest any accepted `at` claims (no less than `confirmed`): maybe a lie. */
  readonly claimed: number;
}

/** The request timeouts tracking applies (ClientTimeouts). */
export interface RequestTiming {
  readonly requestMs: number;
  readonly resendMs: number;
}

/** The delay before asking a replica again after its `refusals`-th refusal of a request (retriedSoon), at most RETRY_SOON_MS_MAX and `resendMs`. */
export function retrySoonDelayMs(refusals: number, resendMs: number): number {
  return Math.min(resendMs, RETRY_SOON_MS_MAX, RETRY_SOON_MS_MIN * 2 ** Math.min(16, Math.max(0, refusals - 1)));
}

export class RequestTracker {
  /** By request digest (hex). */
  private readonly requests = new Map<string, PendingRequest>();
  /** Transient refusals received since the client started, by code (a closed set of five). */
  private readonly transientCounts = new Map<ErrorCode, number>();
  /** Recent time a replica took to answer a crash/none publish (ms), weighted average, and how many answers it is of. */
  private answerMsAverage = 0;
  private answers = 0;
  /** Replicas passed over by quorumTargets until then (SUSPECT_MS). */
  private readonly suspectUntil = new Map<number, number>();
  /** crash/none publishes that went to every replica after going to f+1 first. */
  private widenedCount = 0;
  /** Per tag, the replica ids in the order quorumTargets takes them, and the group (its ids) that order is of. */
  private readonly targetOrders = new Map<string, { readonly of: string; readonly order: readonly number[] }>();

  constructor(
    private readonly ctx: TrackingContext,
    private readonly timing: RequestTiming,
    private readonly crashNoneTargets: CrashNoneTargets = "quorum",
  ) {}

  /** How many crash/none publishes went to every replica after f+1 of them first did not acknowledge them in time (or refused, or dropped). */
  get widened(): number {
    return this.widenedCount;
  }

  /** The hedge delay now (HEDGE_ACK_MULTIPLE). */
  hedgeDelayMs(): number {
    const delay = this.answers === 0 ? HEDGE_MS_INITIAL : Math.max(HEDGE_MS_MIN, Math.ceil(HEDGE_ACK_MULTIPLE * this.answerMsAverage));
    return Math.min(this.timing.resendMs, delay);
  }

  /** Requests in flight now. */
  get size(): number {
    return this.requests.size;
  }

  /**
   * How many "not now" refusals (RATE_LIMITED, OVERLOADED, ...) replicas answered since the
   * client started, by code. They are retried, not failures, so a caller that measures
   * throughput reads them here to tell a broker's limit from a rate limit.
   */
  get transientRefusals(): ReadonlyMap<ErrorCode, number> {
    return this.transientCounts;
  }

  /** Sends a built request to the replicas (every one, or a crash/none publish's f+1: quorumTargets) and resolves with its outcome (never rejects). */
  track(built: BuiltRequest, kind: ReplyKind, what: string): Promise<RequestOutcome> {
    const { group, floor } = this.ctx;
    return new Promise<RequestOutcome>((resolve) => {
      const now = this.ctx.now();
      const targets = kind === "crash/none" && this.crashNoneTargets === "quorum" ? this.quorumTargets(built) : null;
      const pending: PendingRequest = {
        built,
        frame: built.frame,
        shared: null,
        frameAfter: floor.value,
        local: new Map(),
        ats: new Map(),
        fAtSend: group.f,
        accepted: new Map(),
        what,
        voter: new ReplyVoter({ n: group.slots, f: group.f, kind }),
        sentTo: new Set(),
        sentAfter: new Map(),
        askedClaimed: new Set(),
        reasons: new Map(),
        transient: new Map(),
        notNow: new Map(),
        retries: new Map(),
        targets,
        hedgeAt: targets === null ? Number.POSITIVE_INFINITY : now + this.hedgeDelayMs(),
        kind,
        sentAt: new Map(),
        heard: new Set(),
        lastSendAt: now,
        deadline: now + this.timing.requestMs,
        settle: (outcome) => {
          this.requests.delete(built.digestHex);
          floor.observeAts(pending.ats, pending.fAtSend);
          resolve(outcome);
        },
      };
      this.requests.set(built.digestHex, pending);
      for (const connection of group.connections) if (isTarget(pending, connection.id)) this.sendRequest(pending, connection);
      // A target whose connection had no room for it: the others at once, not at the hedge delay.
      if (targets !== null && [...targets].some((id) => !pending.sentTo.has(id))) this.widen(pending);
      if (targets !== null) this.ctx.wakeAt?.(pending.hedgeAt);
    });
  }

  /**
   * f+1 replicas for a crash/none publish, or null (every replica) when no more than f+1
   * sessions are up. Each tag has its own order of the replica ids, a rotation picked by a
   * hash of the tag and this client's key, and the first f+1 replicas in it whose session
   * is up are taken: while they stay up, a publisher's stream goes to the same replicas in
   * sequence order (each replica's store sees few gaps in it), and different publishers
   * and tags spread over the group.
   */
  private quorumTargets(built: BuiltRequest): ReadonlySet<number> | null {
    const { group } = this.ctx;
    const need = vouchQuorum(group.f);
    const ready = new Set(group.readyReplicas());
    if (ready.size <= need) return null;
    const op = built.request.op;
    const tag = op.t === "pub" ? op.tag : "";
    const ids = group.connections.map((connection) => connection.id);
    let remembered = this.targetOrders.get(tag);
    // Made again when the group changed (a member added, removed or replaced).
    if (remembered === undefined || remembered.of !== ids.join()) {
      const start = spreadHash(tag, built.request.client) % ids.length;
      remembered = { of: ids.join(), order: [...ids.slice(start), ...ids.slice(0, start)] };
      if (this.targetOrders.size >= TARGET_ORDERS_MAX) this.targetOrders.clear();
      this.targetOrders.set(tag, remembered);
    }
    const now = this.ctx.now();
    const trusted = (id: number): boolean => (this.suspectUntil.get(id) ?? 0) <= now;
    const chosen = new Set<number>();
    // Replicas passed over (SUSPECT_MS) are taken last, only if too few others are up.
    for (const pass of [true, false]) {
      for (const id of remembered.order) {
        if (ready.has(id) && trusted(id) === pass) chosen.add(id);
        if (chosen.size === need) return chosen;
      }
    }
    return null;
  }

  /**
   * A crash/none publish that f+1 replicas did not acknowledge goes to every replica that
   * has not answered (`send` false: the caller sends it).
   */
  private widen(pending: PendingRequest, send = true): void {
    if (pending.targets === null) return;
    pending.targets = null;
    pending.hedgeAt = Number.POSITIVE_INFINITY;
    this.widenedCount++;
    if (!send) return;
    const missing = new Set(pending.voter.missing());
    for (const connection of this.ctx.group.connections) {
      // A replica that refused it "not now" gets it again at the resend (or its retrySoon), as before.
      if (missing.has(connection.id) && !pending.transient.has(connection.id)) this.sendRequest(pending, connection);
    }
  }

  private observeAnswer(ms: number): void {
    const sample = Math.max(0, ms);
    this.answerMsAverage = this.answers === 0 ? sample : this.answerMsAverage + HEDGE_EWMA_WEIGHT * (sample - this.answerMsAverage);
    this.answers++;
  }

  /** Targets of a request that have not answered since it was last sent (or offered) to them: a fault, unlike a refusal. */
  private silentTargets(pending: PendingRequest): number[] {
    if (pending.targets === null) return [];
    const missing = new Set(pending.voter.missing());
    return [...pending.targets].filter((id) => missing.has(id) && !pending.heard.has(id));
  }

  /**
   * At the hedge delay (or the resend): a request one of whose f+1 replicas has not
   * answered goes to every replica, and that replica is passed over for a while
   * (SUSPECT_MS). One whose replicas all answered, refusing it RATE_LIMITED (the key's
   * budget: taken elsewhere, it would get around it), stays with them. Returns whether it
   * was widened.
   */
  private hedgeDue(pending: PendingRequest, now: number, send: boolean): boolean {
    const silent = this.silentTargets(pending);
    pending.hedgeAt = Number.POSITIVE_INFINITY;
    if (silent.length === 0) return false;
    for (const id of silent) this.suspectUntil.set(id, now + SUSPECT_MS);
    this.widen(pending, send);
    return true;
  }

  private sendRequest(pending: PendingRequest, connection: ReplicaConnection): void {
    if (pending.sentTo.has(connection.id)) return;
    if (pending.shared === null) {
      const bytes = withMacRoom(pending.frame);
      pending.shared = { bytes, digest: framePayloadDigest(bytes) };
    }
    if (!connection.sendShared(pending.shared.bytes, pending.shared.digest)) return;
    pending.sentTo.add(connection.id);
    pending.sentAt.set(connection.id, this.ctx.now());
    pending.heard.delete(connection.id);
    // Whatever the path (a re-ask, a reconnect, the resend timer), the replica now holds the request with this `after`.
    pending.sentAfter.set(connection.id, pending.frameAfter);
  }

  onReply(replica: number, body: Reply): void {
    // Any answer, even to a request already settled, shows the replica is not stopped.
    this.suspectUntil.delete(replica);
    const pending = this.requests.get(toHex(body.d));
    if (pending === undefined) return;
    if (body.seq !== pending.built.request.seq) {
      this.ctx.log("warn", `replica ${replica} answered ${pending.what} with seq ${body.seq}; ignored`, replica);
      return;
    }
    if (body.at !== undefined) pending.ats.set(replica, body.at);
    if (body.ok && body.at !== undefined) pending.accepted.set(replica, body.at);
    pending.heard.add(replica);
    // Only stores are timed: a quick refusal (a key over its budget) says nothing of how
    // long a replica takes to store, and would pull the hedge delay down.
    if (pending.kind === "crash/none" && body.ok) {
      const sentAt = pending.sentAt.get(replica);
      if (sentAt !== undefined) this.observeAnswer(this.ctx.now() - sentAt);
    }
    // A refusal from one of the f+1 replicas: the others are asked too, so that f+1 store
    // it, or enough answer for a refusal to stand (judgeLocalRefusals). Except RATE_LIMITED:
    // that is the key's budget at that replica, not a fault, and asking other replicas would
    // get around it; such a request goes to the others only if one of its replicas is
    // silent (hedgeDue), and otherwise waits for its resend to the same replicas.
    if (!body.ok && body.code !== "RATE_LIMITED") this.widen(pending);
    if (!body.ok && TRANSIENT_REFUSALS.has(body.code)) {
      this.transientCounts.set(body.code, (this.transientCounts.get(body.code) ?? 0) + 1);
      // A replica that already voted keeps its vote: nothing to ask it again.
      if (!pending.voter.missing().includes(replica)) return;
      pending.transient.set(replica, `${body.code} ${body.reason}`);
      // Moved to the end: the latest such answer is the last one.
      pending.notNow.delete(replica);
      pending.notNow.set(replica, { code: body.code, reason: body.reason });
      pending.sentTo.delete(replica);
      if (retriedSoon(body.code, body.reason)) this.retrySoon(pending, replica);
      return;
    }
    // Any other answer replaces the replica's "not now".
    pending.notNow.delete(replica);
    if (!body.ok && body.at !== undefined) {
      const waited = pending.askedClaimed.has(replica);
      pending.local.set(replica, { code: body.code, reason: body.reason, at: body.at, waited });
      // Said at the deadline as what the replica answered (a stale one is asked again, and
      // says so instead: askAgain), not as "no answer": a REPLAY from one replica of a
      // crash/none publish is another process publishing with this key to this tag.
      pending.transient.set(
        replica,
        `${body.code} ${body.reason} (one replica's refusal; it stands once ${vouchQuorum(this.ctx.group.f)} give it and ${byzantineQuorum(this.ctx.group.f)} have answered)`,
      );
      this.judgeLocalRefusals(pending);
      return;
    }
    pending.local.delete(replica);
    if (!body.ok) pending.reasons.set(body.code, body.reason);
    const vote: Canonical = body.ok ? { ok: true, res: body.res as unknown as Canonical } : { ok: false, code: body.code };
    const added = pending.voter.add(replica, vote);
    // The voter reports one equivocation per replica, so a replica answering again and
    // again, each time otherwise, is warned of once.
    for (const conflict of added.conflicts) {
      this.ctx.log("warn", `${pending.what}: replica ${"replica" in conflict ? conflict.replica : "?"} ${conflict.kind}`, replica);
    }
    this.settleIfDone(pending);
    if (this.requests.get(pending.built.digestHex) === pending && pending.local.size > 0) this.judgeLocalRefusals(pending);
  }

  /** Schedules asking `replica` again soon (retriedSoon), later after each refusal. */
  private retrySoon(pending: PendingRequest, replica: number): void {
    const refusals = (pending.retries.get(replica)?.refusals ?? 0) + 1;
    const dueAt = this.ctx.now() + retrySoonDelayMs(refusals, this.timing.resendMs);
    pending.retries.set(replica, { dueAt, refusals });
    this.ctx.wakeAt?.(dueAt);
  }

  /**
   * Asks again the replicas whose retry (retrySoon) is due, requests in the order they
   * were made, so that a replica gets a publisher's requests in their sequence order, and
   * sends the crash/none publishes whose hedge delay passed to every replica (widen).
   * Returns when the next of either is due (Infinity: none).
   */
  retryDue(now: number): number {
    let next = Number.POSITIVE_INFINITY;
    for (const pending of this.requests.values()) {
      if (pending.targets !== null && pending.hedgeAt !== Number.POSITIVE_INFINITY) {
        if (pending.hedgeAt <= now) this.hedgeDue(pending, now, true);
        else next = Math.min(next, pending.hedgeAt);
      }
      for (const [replica, retry] of pending.retries) {
        if (retry.dueAt > now) {
          next = Math.min(next, retry.dueAt);
          continue;
        }
        // Kept (with its count) until the replica answers again or the resend goes to everyone.
        retry.dueAt = Number.POSITIVE_INFINITY;
        const connection = this.ctx.group.connection(replica);
        if (connection === undefined || pending.sentTo.has(replica) || !pending.voter.missing().includes(replica)) continue;
        this.sendRequest(pending, connection);
        // Sent, or the session is down (its return sends what it has not answered: onReady).
        if (pending.sentTo.has(replica) || !connection.isReady) continue;
        // The connection had no room: try again after the same delay.
        retry.dueAt = now + retrySoonDelayMs(retry.refusals, this.timing.resendMs);
        next = Math.min(next, retry.dueAt);
      }
    }
    return next;
  }

  /**
   * Refusals a replica judged on its own state (no such channel, key not registered) may
   * predate a decision another replica has executed: such an answer is never a vote
   * against the ordered history. One below the `at` of every replica that accepted the
   * request (and the client's floor) is stale and asked again with `after` = that seq,
   * and the replica waits until it has executed it (refusals do not raise the bar: in a
   * busy cluster each replica reports a later seq, and a bar that every refusal raised
   * would never be met). Fresh refusals refuse the request once f+1 agree and at least
   * 2f+1 replicas (or every reachable one) have answered, so that a replica that did
   * execute the decision had its say.
   *
   * A seq only fewer than f+1 accepting replicas claim (one replica's `at`: the decision
   * may be that fresh, or the replica lies) is worth one such wait per replica, as for a
   * channel description (queries.ts) and a subscription (replica-subs.ts): a refusal
   * below it from a replica that was asked to wait for a claimed seq (and waited out its
   * hold bound, or could not wait) is "unconfirmed", one of 2f+1 agreeing refusals (at
   * least f+1 of them correct, which settle it whatever one replica claims), and the
   * replica is not asked to wait for a claim again. So one replica accepting at 2^53-1
   * delays a refusal by a replica's hold bound, not to the deadline, and two replicas
   * behind a channel created moments ago do not refuse a publish to it after their wait
   * either. A refusal below the (f+1)-th highest accepted `at` or the floor, which a
   * correct replica has executed, never counts.
   */
  private judgeLocalRefusals(pending: PendingRequest): void {
    const { group } = this.ctx;
    const seqs = this.acceptedSeqs(pending);
    const counts = new Map<ErrorCode, { fresh: number; unconfirmed: number; reason: string }>();
    let after = pending.frameAfter;
    for (const [replica, refusal] of pending.local) {
      const standing = judgeRefusal(refusal, seqs);
      if (standing === "stale") {
        after = Math.max(after, this.askAgain(pending, replica, refusal, seqs));
        continue;
      }
      const entry = counts.get(refusal.code) ?? { fresh: 0, unconfirmed: 0, reason: refusal.reason };
      entry[standing]++;
      counts.set(refusal.code, entry);
    }
    if (after > pending.frameAfter) {
      pending.frame = requestFrame(pending.built.body, pending.built.sig, after, this.ctx.frameBytesMax);
      pending.shared = null;
      pending.frameAfter = after;
    }
    for (const replica of pending.local.keys()) {
      const connection = group.connection(replica);
      if (!pending.sentTo.has(replica) && connection !== undefined) this.sendRequest(pending, connection);
    }
    const answered = new Set([...pending.ats.keys(), ...pending.local.keys()]);
    const missing = new Set(pending.voter.missing());
    for (const connection of group.connections) if (!missing.has(connection.id)) answered.add(connection.id);
    const everyReachable = group.readyReplicas().every((id) => answered.has(id));
    if (answered.size < byzantineQuorum(group.f) && !everyReachable) return;
    for (const [code, entry] of counts) {
      if (entry.fresh < vouchQuorum(group.f) && entry.fresh + entry.unconfirmed < byzantineQuorum(group.f)) continue;
      pending.settle({ ok: false, error: new RequestRejectedError(code, entry.reason) });
      return;
    }
  }

  /**
   * The seqs the accepting replicas vouch for: confirmed by f+1 of them (as
   * ExecutedFloor.observeAts counts, with the larger of the f now and at the send), or
   * claimed by one. Only members count: onLeft drops the answers of those that left.
   */
  private acceptedSeqs(pending: PendingRequest): AcceptedSeqs {
    const f = Math.max(pending.fAtSend, this.ctx.group.f);
    const confirmed = Math.max(this.ctx.floor.value, pickLastSeq([...pending.accepted.values()], f) ?? 0);
    return { confirmed, claimed: Math.max(confirmed, ...pending.accepted.values()) };
  }

  /**
   * A stale refusal: the replica is asked to wait for the claimed seq the first time, for
   * the confirmed one after that; once per such seq (a later refusal from another replica
   * does not send it again). Returns the `after` it is to be sent.
   */
  private askAgain(pending: PendingRequest, replica: number, refusal: LocalRefusal, seqs: AcceptedSeqs): number {
    const after = pending.askedClaimed.has(replica) ? seqs.confirmed : seqs.claimed;
    if (after > seqs.confirmed) pending.askedClaimed.add(replica);
    pending.transient.set(replica, `${refusal.code} ${refusal.reason} (as of decided seq ${refusal.at}; asked again to wait for ${after})`);
    if ((pending.sentAfter.get(replica) ?? 0) < after) pending.sentTo.delete(replica);
    return after;
  }

  private settleIfDone(pending: PendingRequest): void {
    const status = pending.voter.status();
    if (status.state === "pending") return;
    if (status.state === "decided") {
      const result = status.result as { ok: boolean; res?: ReplyResult; code?: ErrorCode };
      if (result.ok) pending.settle({ ok: true, res: result.res as ReplyResult, replicas: status.replicas });
      else pending.settle({ ok: false, error: this.refusal(result.code as ErrorCode, pending) });
      return;
    }
    pending.settle({ ok: false, error: this.disagreement(pending, status.groups) });
  }

  private refusal(code: ErrorCode, pending: PendingRequest): RequestRejectedError {
    return new RequestRejectedError(code, pending.reasons.get(code) ?? code);
  }

  /**
   * No result can reach its quorum: report the largest refusal that at least f+1 replicas
   * gave (so at least one correct replica stands behind it), or else the split. A refusal
   * from f replicas or fewer may be a lie, and what the client does next depends on the
   * code: REPLAY makes it publish the same events again under new numbers, so one lying
   * replica answering REPLAY could otherwise have events stored twice.
   */
  private disagreement(pending: PendingRequest, groups: readonly { result: Canonical; replicas: readonly number[] }[]): ClientError {
    let largestRefusal: { code: ErrorCode; count: number } | null = null;
    for (const group of groups) {
      const result = group.result as { ok: boolean; code?: ErrorCode };
      if (result.ok || group.replicas.length < vouchQuorum(this.ctx.group.f)) continue;
      if (largestRefusal === null || group.replicas.length > largestRefusal.count) {
        largestRefusal = { code: result.code as ErrorCode, count: group.replicas.length };
      }
    }
    if (largestRefusal !== null) return this.refusal(largestRefusal.code, pending);
    const answers = groups.map((group) => `${describeVote(group.result)} from ${group.replicas.length}`).join(", ");
    return new NoQuorumError(`no quorum for ${pending.what}: the replicas answered differently (${answers})`);
  }

  /** A session came up: the requests this replica has not answered go to it, in creation order (number order within each space). */
  onReady(connection: ReplicaConnection): void {
    for (const pending of this.requests.values()) {
      if (isTarget(pending, connection.id) && pending.voter.missing().includes(connection.id)) this.sendRequest(pending, connection);
    }
  }

  /** A session went down: what was sent on it is gone with it, and a crash/none publish it was one of the f+1 replicas of goes to every replica. */
  onDown(id: number): void {
    for (const pending of this.requests.values()) {
      pending.sentTo.delete(id);
      if (pending.targets?.has(id) === true && pending.voter.missing().includes(id)) this.widen(pending);
    }
  }

  /**
   * Replica `id` left the group (removed, or its key or address replaced): its answers so
   * far are dropped, so that a replica the change removed (a faulty one, maybe) neither
   * raises the floor nor makes other replicas' refusals look stale, nor counts towards a
   * result: its vote is taken back (ReplyVoter.withdraw) and the request judged again with
   * the larger of the f it was sent under and the group's f now (a replaced replica answers
   * again on its new session).
   */
  onLeft(id: number): void {
    for (const pending of [...this.requests.values()]) {
      if (pending.targets?.has(id) === true) this.widen(pending);
      pending.sentTo.delete(id);
      pending.sentAfter.delete(id);
      pending.askedClaimed.delete(id);
      pending.ats.delete(id);
      pending.accepted.delete(id);
      pending.local.delete(id);
      pending.transient.delete(id);
      pending.notNow.delete(id);
      pending.retries.delete(id);
      pending.voter.withdraw(id, Math.max(pending.fAtSend, this.ctx.group.f));
      this.settleIfDone(pending);
    }
  }

  /** Fails requests past their deadline and resends the others where due. */
  tick(now: number): void {
    for (const pending of [...this.requests.values()]) this.tickRequest(pending, now);
  }

  private tickRequest(pending: PendingRequest, now: number): void {
    const { group } = this.ctx;
    if (now >= pending.deadline) {
      pending.settle({ ok: false, error: this.deadlineError(pending) });
      return;
    }
    if (now - pending.lastSendAt < this.timing.resendMs) return;
    pending.lastSendAt = now;
    // The hedge delay is at most the resend timeout: the resend below goes to every
    // replica if one of the f+1 has not answered; if they all refused it RATE_LIMITED, to
    // them again, with the hedge armed again.
    if (pending.targets !== null && !this.hedgeDue(pending, now, false)) {
      pending.hedgeAt = now + this.hedgeDelayMs();
      this.ctx.wakeAt?.(pending.hedgeAt);
    }
    for (const retry of pending.retries.values()) retry.dueAt = Number.POSITIVE_INFINITY;
    // The same signed bytes again, to every replica that has not answered (of its f+1, while it has them).
    for (const id of pending.voter.missing()) {
      if (!isTarget(pending, id)) continue;
      pending.sentTo.delete(id);
      // Not heard since this resend, even if its connection has no room for it now: then
      // it counts as silent at the hedge delay armed above.
      pending.heard.delete(id);
      const connection = group.connection(id);
      if (connection !== undefined) this.sendRequest(pending, connection);
    }
  }

  /**
   * The error of a request at its deadline. When no replica voted and every replica it was
   * sent to last refused it RATE_LIMITED or OVERLOADED ("not now": retried, not votes), the
   * error carries that code and says so (RetriedRefusalError), naming how many refused and
   * the last one's reason: no correct replica holds it. Otherwise it is a TIMEOUT naming
   * each replica that did not answer and why (its last "not now", no answer, not connected):
   * a replica that stored it, or one that is silent, may have it ordered or stored, so the
   * request is not said to be refused (a faulty replica cannot choose the code either).
   */
  private deadlineError(pending: PendingRequest): NoQuorumError {
    const { group } = this.ctx;
    const missing = new Set(pending.voter.missing());
    const answered = new Set(group.connections.map((c) => c.id).filter((id) => !missing.has(id)));
    const quorum = pending.voter.quorum;
    const refused = this.refusedUntilDeadline(pending, missing);
    const asked = group.connections.map((c) => c.id).filter((id) => isTarget(pending, id));
    const everyOneRefused =
      answered.size === 0 && asked.length > 0 && asked.every((id) => REPORTED_REFUSALS.has(pending.notNow.get(id)?.code ?? "TIMEOUT"));
    if (refused !== null && everyOneRefused) {
      const { code, why } = refused.reported;
      const k = refused.replicas.length;
      const last = group.connection(refused.last);
      const lastName = last === undefined ? `replica ${refused.last}` : `replica ${last.id} (${last.address})`;
      // The rest: how far the replicas that voted got, and why each other one did not answer.
      const heard = new Set([...answered, ...refused.replicas]);
      let rest = answered.size === 0 ? "" : `; ${answered.size} other${answered.size === 1 ? "" : "s"} answered, ${quorum} matching needed`;
      if (heard.size < group.n) {
        const notes = new Map(pending.transient);
        // A crash/none publish its f+1 replicas refused RATE_LIMITED stays with them (hedgeDue).
        for (const connection of group.connections) {
          if (!isTarget(pending, connection.id))
            notes.set(connection.id, "not asked (a crash/none publish stays with its f+1 replicas while they refuse it RATE_LIMITED)");
        }
        rest += `; ${group.describeReplicas(heard, notes)}`;
      }
      return new RetriedRefusalError(
        code,
        refused.replicas,
        refused.reason,
        `${pending.what}: ${k} of ${group.n} replica${group.n === 1 ? "" : "s"} refused it ${why}, retried until the deadline (${this.timing.requestMs} ms); the last, ${lastName}: ${code} ${refused.reason}${rest}`,
      );
    }
    return new NoQuorumError(
      // "Final": a refusal the client retries (OUT_OF_ORDER, RATE_LIMITED) is named below but is not an answer that counts.
      `no quorum for ${pending.what}: ${quorum} matching answers needed within ${this.timing.requestMs} ms, ${answered.size} of ${group.n} replicas gave a final answer (${group.describeReplicas(answered, pending.transient)})`,
    );
  }

  /**
   * The members that have not voted and whose last answer was a RATE_LIMITED or OVERLOADED
   * refusal, of the code more of them gave (at a tie, the code of the latest such answer):
   * the replicas, the latest of them, and its reason. Null: none.
   */
  private refusedUntilDeadline(
    pending: PendingRequest,
    missing: ReadonlySet<number>,
  ): { reported: { code: RetriedRefusalCode; why: string }; replicas: number[]; last: number; reason: string } | null {
    const byCode = new Map<ErrorCode, { replicas: number[]; last: number; reason: string }>();
    // In the order of the answers: each code's entry ends with its latest.
    for (const [replica, refusal] of pending.notNow) {
      if (!REPORTED_REFUSALS.has(refusal.code) || !missing.has(replica) || !this.ctx.group.has(replica)) continue;
      const entry = byCode.get(refusal.code) ?? { replicas: [], last: replica, reason: refusal.reason };
      entry.replicas.push(replica);
      entry.last = replica;
      entry.reason = refusal.reason;
      byCode.delete(refusal.code);
      byCode.set(refusal.code, entry);
    }
    let chosen: { code: ErrorCode; replicas: number[]; last: number; reason: string } | null = null;
    // byCode is ordered by each code's latest answer: at a tie, the later one wins.
    for (const [code, entry] of byCode) if (chosen === null || entry.replicas.length >= chosen.replicas.length) chosen = { code, ...entry };
    if (chosen === null) return null;
    const reported = REPORTED_REFUSALS.get(chosen.code) as { code: RetriedRefusalCode; why: string };
    return { reported, replicas: chosen.replicas.sort((a, b) => a - b), last: chosen.last, reason: chosen.reason };
  }

  /** Settles every request in flight with `error` (the client is closing). */
  failAll(error: ClientError): void {
    for (const pending of [...this.requests.values()]) pending.settle({ ok: false, error });
  }
}

/**
 * A refusal judged at `at`: "fresh" when no accepting replica claims a later seq; below
 * only a claimed seq, "unconfirmed" if the replica refused after it was asked to wait for
 * a claimed seq (it waited out its hold bound, or could not wait, or the claim rose
 * meanwhile), "stale" before; below the confirmed seq, "stale" however often it was asked.
 */
function judgeRefusal(refusal: LocalRefusal, seqs: AcceptedSeqs): RefusalStanding {
  if (refusal.at >= seqs.claimed) return "fresh";
  if (refusal.at >= seqs.confirmed && refusal.waited) return "unconfirmed";
  return "stale";
}

/** Whether a request goes to replica `id` now: every replica, or one of its f+1 (quorumTargets). */
function isTarget(pending: PendingRequest, id: number): boolean {
  return pending.targets === null || pending.targets.has(id);
}

/** FNV-1a over the tag and the client's key: where a tag's replica order starts (quorumTargets). */
function spreadHash(tag: string, client: Uint8Array): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < tag.length; i++) hash = Math.imul(hash ^ tag.charCodeAt(i), 0x01000193);
  for (const byte of client) hash = Math.imul(hash ^ byte, 0x01000193);
  return hash >>> 0;
}

/** One vote as a short phrase for an error message: "ok" or the refusal code. */
function describeVote(result: Canonical): string {
  const vote = result as { ok?: boolean; code?: string };
  return vote.ok === true ? "ok" : String(vote.code ?? "?");
}
