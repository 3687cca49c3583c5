/**
 * Request tracking: every signed request in flight, sent to every replica and settled by
 * voting on the replies with the quorum the channel's CLASS needs (src/core/voting,
 * src/README.md §3). Replicas that have not answered get the same signed bytes again after a
 * timeout and whenever their session comes back; the request fails with TIMEOUT at its
 * deadline.
 *
 * Read-your-writes (PROTOCOL.md 6.3): a refusal a replica judged on its own state
 * carries `at`, the decided seq it had executed, and is not a vote until it is fresh and
 * enough replicas have answered (judgeLocalRefusals).
 */
import type { Canonical } from "../../wire/canonical.ts";
import type { Reply, ReplyResult } from "../../wire/schemas.ts";
import { type ErrorCode, PRIORITY_SHEDDING_REASON_PREFIX } from "../../wire/types.ts";
import { byzantineQuorum, vouchQuorum, type ReplyKind } from "../core/voting/quorum.ts";
import { ReplyVoter } from "../core/voting/reply-voter.ts";
import { toHex } from "../crypto/encoding.ts";
import { framePayloadDigest, withMacRoom } from "../crypto/session.ts";
import type { ReplicaConnection } from "./connection.ts";
import { type ClientError, NoQuorumError, RequestRejectedError } from "./errors.ts";
import type { TrackingContext } from "./replica-group.ts";
import { requestFrame, type BuiltRequest } from "./request.ts";

/**
 * Refusals that say "not now" rather than "no": the replica is catching up, shedding
 * load, rate-limiting, or still waiting for an earlier request of ours. They are not
 * votes; the request goes to that replica again at the next resend, or sooner after
 * priority shedding (retrySoon).
 */
const TRANSIENT_REFUSALS: ReadonlySet<ErrorCode> = new Set(["OUT_OF_ORDER", "NOT_READY", "OVERLOADED", "RATE_LIMITED", "TIMEOUT"]);

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
   * are fresh and enough replicas answered (localRefusal below).
   */
  readonly local: Map<number, { readonly code: ErrorCode; readonly reason: string; readonly at: number }>;
  /** Every `at` a replica reported for this request (members only: onLeft drops those that left). */
  readonly ats: Map<number, number>;
  /** The f of the group the request was sent to: the floor counts with at least this f. */
  readonly fAtSend: number;
  /**
   * The `at` of each positive answer (stored or ordered): a replica that accepted the
   * request at that seq shows that refusals judged before it may be stale.
   */
  readonly accepted: Map<number, number>;
  readonly what: string;
  readonly voter: ReplyVoter;
  /** Replicas that have the request on their current session. */
  readonly sentTo: Set<number>;
  /** The `after` each replica was last sent the request with: a stale refusal asks it again only for a higher one. */
  readonly sentAfter: Map<number, number>;
  /** One reason text per refusal code, for the error message. */
  readonly reasons: Map<string, string>;
  /** The last transient refusal per replica (not a vote). */
  readonly transient: Map<number, string>;
  /** Replicas to ask again soon (retriedSoon): when, and how many times they refused so far. */
  readonly retries: Map<number, { dueAt: number; refusals: number }>;
  lastSendAt: number;
  readonly deadline: number;
  readonly settle: (outcome: RequestOutcome) => void;
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

  constructor(
    private readonly ctx: TrackingContext,
    private readonly timing: RequestTiming,
  ) {}

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

  /** Sends a built request to every replica and resolves with its outcome (never rejects). */
  track(built: BuiltRequest, kind: ReplyKind, what: string): Promise<RequestOutcome> {
    const { group, floor } = this.ctx;
    return new Promise<RequestOutcome>((resolve) => {
      const now = this.ctx.now();
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
        reasons: new Map(),
        transient: new Map(),
        retries: new Map(),
        lastSendAt: now,
        deadline: now + this.timing.requestMs,
        settle: (outcome) => {
          this.requests.delete(built.digestHex);
          floor.observeAts(pending.ats, pending.fAtSend);
          resolve(outcome);
        },
      };
      this.requests.set(built.digestHex, pending);
      for (const connection of group.connections) this.sendRequest(pending, connection);
    });
  }

  private sendRequest(pending: PendingRequest, connection: ReplicaConnection): void {
    if (pending.sentTo.has(connection.id)) return;
    if (pending.shared === null) {
      const bytes = withMacRoom(pending.frame);
      pending.shared = { bytes, digest: framePayloadDigest(bytes) };
    }
    if (!connection.sendShared(pending.shared.bytes, pending.shared.digest)) return;
    pending.sentTo.add(connection.id);
    // Whatever the path (a re-ask, a reconnect, the resend timer), the replica now holds the request with this `after`.
    pending.sentAfter.set(connection.id, pending.frameAfter);
  }

  onReply(replica: number, body: Reply): void {
    const pending = this.requests.get(toHex(body.d));
    if (pending === undefined) return;
    if (body.seq !== pending.built.request.seq) {
      this.ctx.log("warn", `replica ${replica} answered ${pending.what} with seq ${body.seq}; ignored`, replica);
      return;
    }
    if (body.at !== undefined) pending.ats.set(replica, body.at);
    if (body.ok && body.at !== undefined) pending.accepted.set(replica, body.at);
    if (!body.ok && TRANSIENT_REFUSALS.has(body.code)) {
      this.transientCounts.set(body.code, (this.transientCounts.get(body.code) ?? 0) + 1);
      // A replica that already voted keeps its vote: nothing to ask it again.
      if (!pending.voter.missing().includes(replica)) return;
      pending.transient.set(replica, `${body.code} ${body.reason}`);
      pending.sentTo.delete(replica);
      if (retriedSoon(body.code, body.reason)) this.retrySoon(pending, replica);
      return;
    }
    if (!body.ok && body.at !== undefined) {
      pending.local.set(replica, { code: body.code, reason: body.reason, at: body.at });
      this.judgeLocalRefusals(pending);
      return;
    }
    pending.local.delete(replica);
    if (!body.ok) pending.reasons.set(body.code, body.reason);
    const vote: Canonical = body.ok ? { ok: true, res: body.res as unknown as Canonical } : { ok: false, code: body.code };
    const added = pending.voter.add(replica, vote);
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
   * were made, so that a replica gets a publisher's requests in their sequence order.
   * Returns when the next retry is due (Infinity: none).
   */
  retryDue(now: number): number {
    let next = Number.POSITIVE_INFINITY;
    for (const pending of this.requests.values()) {
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
   * against the ordered history. One is stale when its `at` is below the freshest
   * decided seq known: this client's floor, or the `at` of a replica that accepted the
   * request (refusals do not raise it: in a busy cluster each replica reports a later
   * seq, and a bar that every refusal raised would never be met). A stale replica is
   * asked again with `after` = that seq and waits until it has executed it. The fresh
   * ones refuse the request once f+1 agree and at least 2f+1 replicas (or every reachable
   * one) have answered, so that a replica that did execute the decision had its say.
   */
  private judgeLocalRefusals(pending: PendingRequest): void {
    const { group } = this.ctx;
    const fresh = Math.max(this.ctx.floor.value, ...pending.accepted.values());
    const counts = new Map<ErrorCode, number>();
    for (const [replica, refusal] of pending.local) {
      if (refusal.at < fresh) {
        pending.transient.set(
          replica,
          `${refusal.code} ${refusal.reason} (as of decided seq ${refusal.at}; asked again to wait for ${fresh})`,
        );
        // Asked again once per freshness: a later refusal from another replica does not send it again.
        if ((pending.sentAfter.get(replica) ?? 0) < fresh) pending.sentTo.delete(replica);
        continue;
      }
      counts.set(refusal.code, (counts.get(refusal.code) ?? 0) + 1);
    }
    if (fresh > pending.frameAfter) {
      pending.frame = requestFrame(pending.built.body, pending.built.sig, fresh, this.ctx.frameBytesMax);
      pending.shared = null;
      pending.frameAfter = fresh;
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
    for (const [code, count] of counts) {
      if (count < vouchQuorum(group.f)) continue;
      const reason = [...pending.local.values()].find((refusal) => refusal.code === code)?.reason ?? code;
      pending.settle({ ok: false, error: new RequestRejectedError(code, reason) });
      return;
    }
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
      if (pending.voter.missing().includes(connection.id)) this.sendRequest(pending, connection);
    }
  }

  /** A session went down: what was sent on it is gone with it. */
  onDown(id: number): void {
    for (const pending of this.requests.values()) pending.sentTo.delete(id);
  }

  /**
   * Replica `id` left the group (removed, or its key or address replaced): its answers so
   * far are dropped, so that a replica the change removed (a faulty one, maybe) neither
   * raises the floor nor makes other replicas' refusals look stale.
   */
  onLeft(id: number): void {
    for (const pending of this.requests.values()) {
      pending.sentTo.delete(id);
      pending.sentAfter.delete(id);
      pending.ats.delete(id);
      pending.accepted.delete(id);
      pending.local.delete(id);
      pending.transient.delete(id);
      pending.retries.delete(id);
    }
  }

  /** Fails requests past their deadline and resends the others where due. */
  tick(now: number): void {
    for (const pending of [...this.requests.values()]) this.tickRequest(pending, now);
  }

  private tickRequest(pending: PendingRequest, now: number): void {
    const { group } = this.ctx;
    if (now >= pending.deadline) {
      const answered = new Set(group.connections.map((c) => c.id).filter((id) => !pending.voter.missing().includes(id)));
      const quorum = pending.voter.quorum;
      pending.settle({
        ok: false,
        error: new NoQuorumError(
          `no quorum for ${pending.what}: ${answered.size} of ${group.n} replicas answered within ${this.timing.requestMs} ms, ${quorum} matching needed (${group.describeReplicas(answered, pending.transient)})`,
        ),
      });
      return;
    }
    if (now - pending.lastSendAt < this.timing.resendMs) return;
    pending.lastSendAt = now;
    for (const retry of pending.retries.values()) retry.dueAt = Number.POSITIVE_INFINITY;
    // The same signed bytes again, to every replica that has not answered.
    for (const id of pending.voter.missing()) {
      pending.sentTo.delete(id);
      const connection = group.connection(id);
      if (connection !== undefined) this.sendRequest(pending, connection);
    }
  }

  /** Settles every request in flight with `error` (the client is closing). */
  failAll(error: ClientError): void {
    for (const pending of [...this.requests.values()]) pending.settle({ ok: false, error });
  }
}

/** One vote as a short phrase for an error message: "ok" or the refusal code. */
function describeVote(result: Canonical): string {
  const vote = result as { ok?: boolean; code?: string };
  return vote.ok === true ? "ok" : String(vote.code ?? "?");
}
