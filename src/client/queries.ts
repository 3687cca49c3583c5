/**
 * Answers to QUERY frames, and the rule that turns the answers of several replicas into
 * one result. Three rules, one per kind of question:
 *
 * - matching: the answer f+1 replicas give identically (at least one of them is
 *   correct). Used for list-channels, channel-info and quotas; fields that legitimately differ
 *   between correct replicas (a channel's next seq, list order) are projected away
 *   before comparing.
 * - rank: the (f+1)-th highest of the numbers the replicas report (client-seq, see seq.ts).
 * - each: every replica's own answer (status), for the operator to read side by side;
 *   once n-f answered, the rest get a short grace (EACH_ANSWER_GRACE_MS).
 * - listed: the keys at least f+1 replicas list (publishers): a replica that has not yet
 *   executed a registration does not veto it, and f liars cannot add a key.
 *
 * The result shapes are open in the wire schema (`res` is any canonical value), so they
 * are validated here before use: a replica that sends a malformed result is treated as
 * having sent a wrong one.
 */
import { z } from "zod";
import { type Canonical, encodeCanonical } from "../../wire/canonical.ts";
import { channelClassFields, isMap, mapGuard, tagSchema, type QueryReply } from "../../wire/schemas.ts";
import { type ErrorCode, KEY_BYTES, REPLICAS_MAX } from "../../wire/types.ts";
import { KEYS_PER_CHANNEL_MAX, QUOTAS_MAX } from "../core/channels/constants.ts";
import { toHex } from "../crypto/encoding.ts";
import { byzantineQuorum, liveQuorum, vouchQuorum } from "../core/voting/quorum.ts";
import { ReplyVoter } from "../core/voting/reply-voter.ts";
import { NoQuorumError, RequestRejectedError, type ClientError } from "./errors.ts";
import { pickLastSeq } from "./seq.ts";

/** A channel as the replicas describe it (QUERY channel-info, list-channels). */
export type ChannelInfo = {
  readonly tag: string;
  readonly fault: "crash" | "byzantine";
  readonly order: "none" | "total";
  readonly priority: "low" | "normal" | "high" | "critical";
  readonly public: boolean;
};

const channelInfoSchema = z.object({
  tag: tagSchema,
  ...channelClassFields,
  public: z.boolean(),
});

const listChannelsSchema = z.object({ channels: z.array(channelInfoSchema) });

const clientSeqSchema = z.object({ last: z.int().min(0) });

const publishersSchema = z.object({
  publishers: z.array(z.instanceof(Uint8Array).refine((key) => key.length === KEY_BYTES)).max(KEYS_PER_CHANNEL_MAX),
});
/** A client key's own limits (set-quota); a limit left out is the cluster's default. */
export type KeyQuotaListing = {
  readonly key: Uint8Array;
  readonly eventsPerSecond: number | null;
  readonly bytesPerSecond: number | null;
  readonly subscriptions: number | null;
};

const quotaLimitSchema = z.int().min(1).max(Number.MAX_SAFE_INTEGER).optional();
const quotaSchema = z.strictObject({
  key: z.instanceof(Uint8Array).refine((key) => key.length === KEY_BYTES),
  eventsPerSecond: quotaLimitSchema,
  bytesPerSecond: quotaLimitSchema,
  subscriptions: quotaLimitSchema,
});
const quotasSchema = z.object({
  quotas: z.array(mapGuard<z.input<typeof quotaSchema>>().pipe(quotaSchema)).max(QUOTAS_MAX),
});

/** The quotas of a `quotas` answer, as the replica sent them (canonical, for voting); null when malformed. */
export function parseQuotas(res: Canonical): Canonical | null {
  return isMap(res) && quotasSchema.safeParse(res).success ? res : null;
}

/** The voted `quotas` answer as listings, in the replicas' (ascending key) order. */
export function quotaListings(res: Canonical): KeyQuotaListing[] {
  return quotasSchema.parse(res).quotas.map((quota) => ({
    key: quota.key,
    eventsPerSecond: quota.eventsPerSecond ?? null,
    bytesPerSecond: quota.bytesPerSecond ?? null,
    subscriptions: quota.subscriptions ?? null,
  }));
}

/** One replica of the group, as the `members` answer lists it. */
export type MemberListing = {
  readonly id: number;
  readonly host: string;
  readonly port: number;
  readonly peerPort: number | null;
  readonly key: Uint8Array;
};
/** The replica group: the `members` answer that f+1 replicas sent alike. */
export type GroupListing = {
  readonly epoch: number;
  readonly f: number;
  readonly members: readonly MemberListing[];
  /** What every replica that executed the same seqs computes over the group (epochs.ts membershipDigest). */
  readonly digest: Uint8Array;
};
export type MembersListing = GroupListing & {
  /** A decided change waiting for its checkpoint boundary: it takes effect once seq `from` has executed. */
  readonly pending: (GroupListing & { readonly from: number }) | null;
};

const memberSchema = z.strictObject({
  id: z
    .int()
    .min(0)
    .max(REPLICAS_MAX - 1),
  host: z.string().min(1).max(253),
  port: z.int().min(1).max(65_535),
  peerPort: z.int().min(1).max(65_535).optional(),
  key: z.instanceof(Uint8Array).refine((key) => key.length === KEY_BYTES),
});
const groupFields = {
  epoch: z.int().min(0),
  f: z.int().min(0),
  // Each map is checked to be one before its strict schema walks it (wire/schemas.ts isMap).
  members: z.array(mapGuard<z.input<typeof memberSchema>>().pipe(memberSchema)).min(1).max(REPLICAS_MAX),
  digest: z.instanceof(Uint8Array).refine((digest) => digest.length === 32),
};
const pendingSchema = z.strictObject({ ...groupFields, from: z.int().min(1) });
const membersSchema = z.strictObject({
  ...groupFields,
  pending: mapGuard<z.input<typeof pendingSchema>>().pipe(pendingSchema).nullable(),
});

/** A `members` answer as the replica sent it (canonical, for voting); null when malformed. */
export function parseMembers(res: Canonical): Canonical | null {
  return isMap(res) && membersSchema.safeParse(res).success ? res : null;
}

const startSchema = z.strictObject({ seq: z.int().min(1), digest: z.instanceof(Uint8Array).refine((digest) => digest.length === 32) });
/** A `members` answer asked with `start` (what a joining replica reads): the group and the current epoch's starting checkpoint. */
const membersWithStartSchema = z.strictObject({
  ...membersSchema.shape,
  start: mapGuard<z.input<typeof startSchema>>().pipe(startSchema).nullable(),
});

/** A `members` answer with `start`, as the replica sent it (for voting); null when malformed. */
export function parseMembersWithStart(res: Canonical): Canonical | null {
  return isMap(res) && membersWithStartSchema.safeParse(res).success ? res : null;
}

/** The voted `members` answer with `start`: the listing, and the checkpoint the current epoch started from (null: epoch 0, or not known yet). */
export function membersWithStart(res: Canonical): { members: MembersListing; start: { seq: number; digest: Uint8Array } | null } {
  const { start, ...rest } = membersWithStartSchema.parse(res);
  return { members: membersListing(rest as unknown as Canonical), start };
}

/** The voted `members` answer as a listing. */
export function membersListing(res: Canonical): MembersListing {
  const parsed = membersSchema.parse(res);
  const group = (value: z.infer<typeof membersSchema> | NonNullable<z.infer<typeof membersSchema>["pending"]>): GroupListing => ({
    epoch: value.epoch,
    f: value.f,
    members: value.members.map((member) => ({ ...member, peerPort: member.peerPort ?? null })),
    digest: value.digest,
  });
  return { ...group(parsed), pending: parsed.pending === null ? null : { ...group(parsed.pending), from: parsed.pending.from } };
}

/** The class label of a traffic row: the channel's fault and order (replica/channel-metrics.ts classOf). */
const TRAFFIC_CLASSES = ["crash/none", "crash/total", "byzantine/none", "byzantine/total"] as const;

const latencyHistogramSchema = z.object({ counts: z.array(z.int().min(0)), sumUs: z.int().min(0) });

/** The fields of a status answer this client reads; replicas may add more. */
const statusSchema = z.object({
  replica: z.int().min(0),
  /** The membership epoch it orders in: its view, leader and seqs are that epoch's. */
  epoch: z.int().min(0).optional(),
  /** Restarted without a clean stop, it votes on no new proposal until past its fence (core PROTOCOL.md §2). */
  votesFenced: z.boolean().optional(),
  /** Its store lost records: it votes in no view until a view change it takes part in (core PROTOCOL.md §2). */
  lostRecordsFenced: z.boolean().optional(),
  view: z.int().min(0),
  leader: z.int().min(0),
  lastDecided: z.int().min(0),
  /** The last checkpoint 2f+1 replicas signed the same state digest for (this replica's among them). */
  stableCheckpoint: z.int().min(0).optional(),
  channels: z.int().min(0),
  /** Answers held until the replica has executed what the client saw (read-your-writes). */
  heldForExecution: z.int().min(0).optional(),
  /** The replica's links to its peers; `address`: where it reaches that peer (multi-homed peers have several). */
  peers: z
    .array(
      z.object({
        id: z.int().min(0),
        up: z.boolean(),
        lag: z.int().min(0).optional(),
        address: z.string().max(300).optional(),
        /** Why the link is down, as the replica's own dialler last saw it (a refused handshake's reason). */
        reason: z.string().max(600).optional().catch(undefined),
      }),
    )
    .optional(),
  /** The replica process's CPU time (µs, user + system) since it started. */
  cpuUs: z.int().min(0).optional(),
  /** Priority shedding, present when it is on: its lag target (ms), and the percent of low and normal publishes admitted now. */
  shedding: z
    .object({ targetMs: z.number().min(0), low: z.int().min(0).max(100), normal: z.int().min(0).max(100) })
    .optional()
    // A shape this client does not know (a later replica's) is left out, not taken for a malformed answer.
    .catch(undefined),
  /**
   * Per-channel counters since the replica started (`fitb top` turns them into rates). The
   * tag, class and priority are printed, so they must be what a channel can have: a list
   * with anything else (a forged tag carrying terminal escapes, a class this client does
   * not know) is left out, as an unknown `shedding` is, and the rest of the answer stands.
   */
  traffic: z
    .array(
      z.object({
        tag: tagSchema,
        class: z.enum(TRAFFIC_CLASSES),
        priority: channelClassFields.priority,
        published: z.int().min(0),
        stored: z.int().min(0),
        delivered: z.int().min(0),
        shed: z.int().min(0),
      }),
    )
    .optional()
    .catch(undefined),
  /** Latency histograms since the replica started: bucket bounds (µs), counts per bucket (+Inf last), sum (µs). */
  latency: z
    .object({
      boundsUs: z.array(z.int().min(0)),
      publishAck: latencyHistogramSchema,
      ordering: latencyHistogramSchema,
      storageCommit: latencyHistogramSchema,
      delivery: latencyHistogramSchema,
    })
    .optional(),
});

export type ReplicaStatusAnswer = z.infer<typeof statusSchema>;

/** Only the class fields: `next` and anything else a replica adds differ legitimately. */
export function parseChannelInfo(res: Canonical): ChannelInfo | null {
  const parsed = channelInfoSchema.safeParse(res);
  if (!parsed.success) return null;
  const { tag, fault, order, priority } = parsed.data;
  return { tag, fault, order, priority, public: parsed.data.public };
}

/** The channel list sorted by tag, so replicas that list in another order still match. */
export function parseChannelList(res: Canonical): ChannelInfo[] | null {
  const parsed = listChannelsSchema.safeParse(res);
  if (!parsed.success) return null;
  return parsed.data.channels
    .map(({ tag, fault, order, priority, public: isPublic }) => ({ tag, fault, order, priority, public: isPublic }))
    .sort((a, b) => (a.tag < b.tag ? -1 : a.tag > b.tag ? 1 : 0));
}

export function parseClientSeq(res: Canonical): number | null {
  const parsed = clientSeqSchema.safeParse(res);
  return parsed.success ? parsed.data.last : null;
}

/** A publishers answer: the registered keys, or null when malformed. */
export function parsePublishers(res: Canonical): readonly Uint8Array[] | null {
  const parsed = publishersSchema.safeParse(res);
  return parsed.success ? parsed.data.publishers : null;
}

export function parseStatus(res: Canonical): ReplicaStatusAnswer | null {
  const parsed = statusSchema.safeParse(res);
  return parsed.success ? parsed.data : null;
}

/** What a query rule concluded: a value, an error, or nothing yet. */
export type QueryOutcome<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: ClientError } | null;

/** One rule: fed each replica's answer, asked once more at the deadline. */
export interface QueryRule<T> {
  /**
   * Settle as soon as every replica with a session up has answered, instead of waiting
   * for the deadline on behalf of replicas that are down (for `each`: a status report
   * should not take the full timeout because one replica is down).
   */
  readonly settleWhenReachableAnswered?: boolean;
  /**
   * Whether the answers so far are enough to settle early that way (default: any answer);
   * if not, the query waits for the deadline, by which more replicas may have sessions.
   */
  readonly enoughToSettleEarly?: () => boolean;
  add(replica: number, reply: QueryReply): QueryOutcome<T>;
  /**
   * Asked at every tick of the query's client (`now` in ms) by a tracker that supports it:
   * a rule that settles on time before the deadline (eachRule: a grace after n-f answers)
   * says so here; null goes on waiting.
   */
  settleOnTick?(now: number): QueryOutcome<T>;
  atDeadline(describeMissing: () => string): QueryOutcome<T> & object;
  /**
   * Replicas whose answers are too old to count, to be asked again with `after` (they
   * wait until they have executed it); null or empty: none.
   */
  stale?(): { readonly replicas: readonly number[]; readonly after: number } | null;
}

/**
 * channel-info, read-your-writes (PROTOCOL.md 6.3): f+1 matching descriptions settle at
 * once. "No such channel" is judged by each replica on its own state, which may predate
 * a create-channel another replica has executed. A refusal counts as one of f+1 when it is
 * as fresh as every description seen (its `at` at least the highest `at` of any replica
 * that described the channel; refusals do not raise the bar, so a busy cluster settles)
 * and the client's own floor, and only once 2f+1 replicas, or every reachable one, have
 * answered, so that a replica that executed the create had its say. Older refusals are
 * asked again, to be judged after the replica has executed that seq.
 *
 * A seq that fewer than f+1 descriptions claim (one replica's `at`: the create may be that
 * fresh, or the replica lies) is worth one such wait per replica. A refusal below it from a
 * replica that waited for it (past its hold bound, or its wait queue full) is "unconfirmed":
 * it counts only as one of 2f+1 refusals, at least f+1 of them correct, which settle "no
 * such channel" whatever one replica claims; with fewer, a channel created moments ago is
 * not denied, and the deadline answers NoQuorumError. A refusal below the (f+1)-th highest
 * `at` (or the floor), which a correct replica has executed, never counts: it is asked
 * again, however often. A refusal whose replica was asked again and has not answered yet
 * never counts, at the deadline neither. So one replica reporting a huge `at` delays the
 * answer by a replica's hold bound at most, when 2f+1 refuse.
 */
export function channelInfoRule(
  n: number,
  f: number,
  what: string,
  floor: number,
  reachable: () => readonly number[],
): QueryRule<ChannelInfo> {
  const described = new Map<number, string>();
  const infos = new Map<string, ChannelInfo>();
  const refused = new Map<number, { code: ErrorCode; reason: string; at: number | undefined }>();
  const answeredOnce = new Set<number>();
  /** The highest `at` of each replica's description. */
  const describedAts = new Map<number, number>();
  /** Replicas already asked to wait for a seq only fewer than f+1 descriptions claim. */
  const askedClaimed = new Set<number>();
  /** Replicas asked again whose new answer has not come: their refusal does not count. */
  const awaiting = new Set<number>();
  const confirmed = (): number => Math.max(floor, pickLastSeq([...describedAts.values()], f) ?? 0);
  const claimed = (): number => Math.max(confirmed(), ...describedAts.values());
  const judge = (replica: number, at: number | undefined): "fresh" | "unconfirmed" | "stale" => {
    if (at === undefined || at >= claimed()) return "fresh";
    if (at >= confirmed() && askedClaimed.has(replica)) return "unconfirmed";
    return "stale";
  };
  const refusal = (): QueryOutcome<ChannelInfo> => {
    const counts = new Map<ErrorCode, { fresh: number; unconfirmed: number; reason: string }>();
    for (const [replica, answer] of refused) {
      if (awaiting.has(replica)) continue;
      const judged = judge(replica, answer.at);
      if (judged === "stale") continue;
      const entry = counts.get(answer.code) ?? { fresh: 0, unconfirmed: 0, reason: answer.reason };
      entry[judged]++;
      counts.set(answer.code, entry);
    }
    for (const [code, entry] of counts) {
      if (entry.fresh >= vouchQuorum(f) || entry.fresh + entry.unconfirmed >= byzantineQuorum(f)) {
        return { ok: false, error: new RequestRejectedError(code, entry.reason) };
      }
    }
    return null;
  };
  const agreedDescription = (): QueryOutcome<ChannelInfo> => {
    const counts = new Map<string, number>();
    for (const key of described.values()) {
      const count = (counts.get(key) ?? 0) + 1;
      if (count >= vouchQuorum(f)) return { ok: true, value: infos.get(key) as ChannelInfo };
      counts.set(key, count);
    }
    return null;
  };
  const enoughAnswered = (): boolean =>
    answeredOnce.size >= Math.min(n, byzantineQuorum(f)) || reachable().every((replica) => answeredOnce.has(replica));
  return {
    add(replica, reply) {
      answeredOnce.add(replica);
      awaiting.delete(replica);
      if (reply.ok && reply.at !== undefined) describedAts.set(replica, Math.max(describedAts.get(replica) ?? 0, reply.at));
      described.delete(replica);
      refused.delete(replica);
      if (reply.ok) {
        const info = parseChannelInfo(reply.res);
        const key = info === null ? `malformed ${replica}` : JSON.stringify(info);
        if (info !== null) infos.set(key, info);
        described.set(replica, key);
      } else {
        refused.set(replica, { code: reply.code, reason: reply.reason, at: reply.at });
      }
      return agreedDescription() ?? (enoughAnswered() ? refusal() : null);
    },
    stale() {
      const replicas = [...refused]
        .filter(([replica, answer]) => !awaiting.has(replica) && judge(replica, answer.at) === "stale")
        .map(([replica]) => replica);
      for (const replica of replicas) awaiting.add(replica);
      // The claimed seq while some of them were not yet asked to wait for it; then the confirmed one.
      const after = replicas.every((replica) => askedClaimed.has(replica)) ? confirmed() : claimed();
      if (after > confirmed()) for (const replica of replicas) askedClaimed.add(replica);
      return { replicas, after };
    },
    atDeadline(describeMissing) {
      return (
        agreedDescription() ??
        refusal() ?? {
          ok: false,
          error: new NoQuorumError(`no quorum for ${what}: fewer than ${vouchQuorum(f)} matching answers (${describeMissing()})`),
        }
      );
    },
  };
}

/**
 * f+1 identical answers after `project`, from the replicas of the group (`replicas`: the
 * ids of its members, or n for ids 0..n-1). An answer that `project` cannot read counts as
 * a distinct (wrong) answer. Refusals vote as {ok: false, code}, so f+1 replicas that
 * say UNKNOWN_CHANNEL settle the question as firmly as f+1 that describe the channel.
 */
export function matchingRule<T extends Canonical>(
  replicas: number | readonly number[],
  f: number,
  what: string,
  project: (res: Canonical) => T | null,
): QueryRule<T> {
  // byzantine/total is the voter's kind for "f+1 matching, deterministic": what a query
  // about replicated state needs, whatever the class of the channel it is about.
  const voter = new ReplyVoter({ ...groupOf(replicas), f, kind: "byzantine/total" });
  const reasons = new Map<string, string>();
  const settle = (): QueryOutcome<T> => {
    const status = voter.status();
    if (status.state === "pending") return null;
    if (status.state === "failed") return { ok: false, error: new NoQuorumError(`no quorum for ${what}: the replicas disagree`) };
    return fromVote(status.result as Canonical, reasons);
  };
  return {
    add(replica, reply) {
      if (reply.ok) {
        const projected = project(reply.res);
        voter.add(replica, projected === null ? { ok: true, malformed: replica } : { ok: true, res: projected });
      } else {
        reasons.set(reply.code, reply.reason);
        voter.add(replica, { ok: false, code: reply.code });
      }
      return settle();
    },
    atDeadline(describeMissing) {
      return (
        settle() ?? {
          ok: false,
          error: new NoQuorumError(`no quorum for ${what}: fewer than ${vouchQuorum(f)} matching answers (${describeMissing()})`),
        }
      );
    },
  };
}

/** A replica whose answer counted towards a result, with the key its session authenticated with when it answered. */
export interface Voucher {
  readonly id: number;
  readonly key: Uint8Array;
}

/** A result and the replicas whose answers settled it. */
export interface Vouched<T> {
  readonly value: T;
  readonly vouchers: readonly Voucher[];
}

/**
 * matchingRule, saying also who vouched for the result: the replicas of the group whose
 * (projected) answer was the one that settled it, each with the key its session
 * authenticated with when it answered (`keyOf`; null: no session, not counted). f+1
 * matching answers prove a result only if at most f of those who sent them can be
 * faulty; a joining replica checks that the vouchers are members of the group the answer
 * names, under those keys (src/cli/join.ts).
 */
export function vouchedRule<T extends Canonical>(
  replicas: readonly number[],
  f: number,
  what: string,
  project: (res: Canonical) => T | null,
  keyOf: (replica: number) => Uint8Array | null,
): QueryRule<Vouched<T>> {
  const inner = matchingRule(replicas, f, what, project);
  const group = new Set(replicas);
  /** Each replica's first readable answer (as the voter counts its first), canonical hex, with its session's key. */
  const answers = new Map<number, { answer: string; key: Uint8Array }>();
  const vouched = (outcome: QueryOutcome<T>): QueryOutcome<Vouched<T>> => {
    if (outcome === null || !outcome.ok) return outcome;
    const settled = toHex(encodeCanonical(outcome.value));
    const vouchers = [...answers].filter(([, entry]) => entry.answer === settled).map(([id, entry]) => ({ id, key: entry.key }));
    return { ok: true, value: { value: outcome.value, vouchers } };
  };
  return {
    add(replica, reply) {
      const key = keyOf(replica);
      const projected = reply.ok ? project(reply.res) : null;
      if (group.has(replica) && !answers.has(replica) && key !== null && projected !== null) {
        answers.set(replica, { answer: toHex(encodeCanonical(projected)), key });
      }
      return vouched(inner.add(replica, reply));
    },
    atDeadline(describeMissing) {
      return vouched(inner.atDeadline(describeMissing)) as QueryOutcome<Vouched<T>> & object;
    },
  };
}

/** A group given by its size (ids 0..n-1) or by its ids (which may have gaps after a removal). */
function groupOf(replicas: number | readonly number[]): { n: number; ids?: readonly number[] } {
  return typeof replicas === "number" ? { n: replicas } : { n: replicas.length, ids: replicas };
}

function fromVote<T>(result: Canonical, reasons: ReadonlyMap<string, string>): QueryOutcome<T> {
  const vote = result as { ok: boolean; res?: T; code?: ErrorCode };
  if (vote.ok) return { ok: true, value: vote.res as T };
  const code = vote.code as ErrorCode;
  return { ok: false, error: new RequestRejectedError(code, reasons.get(code) ?? code) };
}

/**
 * Answers above this are not taken by highestRule: no publisher reaches it (2^52 events,
 * over a century at a million a second), and a faulty replica answering near 2^53 would
 * otherwise use up the key's numbers on that tag for good.
 */
export const HIGHEST_ANSWER_MAX = 2 ** 52;

/**
 * The highest number: where a crash/none space continues. A crash/none publish is
 * normally stored by f+1 replicas only (request-tracker.ts quorumTargets), so with one of
 * those down the (f+1)-th highest (rankRule) could fall below numbers already used, and
 * the client would sign a second body under one of them; while at most f replicas are
 * missing, the answers include one of those f+1. It takes the replicas at their word, as
 * the crash CLASS does (up to HIGHEST_ANSWER_MAX). Waits for every replica with a session,
 * at least f+1 (or the deadline), as rankRule does, so that crash/none publishing goes on
 * with only f+1 replicas up; refusals are kept for the error message.
 */
export function highestRule(n: number, f: number, what: string, read: (res: Canonical) => number | null): QueryRule<number> {
  const needed = vouchQuorum(f);
  return numberRule(f, what, read, {
    wanted: n,
    needed,
    pick: (answers) => {
      const usable = answers.filter((answer) => Number.isSafeInteger(answer) && answer >= 0 && answer <= HIGHEST_ANSWER_MAX);
      return usable.length < needed ? null : Math.max(...usable);
    },
  });
}

/**
 * The (f+1)-th highest number: decided once 2f+1 replicas answered, or at the deadline
 * if at least f+1 did. Refusals are kept for the error message.
 *
 * `everyReplica` waits for every replica that has a session (or the deadline) instead of
 * the first 2f+1. An unordered space needs it: there a correct replica that was away holds
 * a lower number than the others (nothing brings it up to date), and among only 2f+1
 * answers it and f liars could pull the pick below numbers already used, so the client
 * would sign a second body under a used number.
 */
export function rankRule(
  n: number,
  f: number,
  what: string,
  read: (res: Canonical) => number | null,
  everyReplica = false,
): QueryRule<number> {
  return numberRule(f, what, read, {
    wanted: everyReplica ? n : Math.min(byzantineQuorum(f), n),
    needed: vouchQuorum(f),
    pick: (answers) => pickLastSeq(answers, f),
  });
}

/**
 * A number picked from the replicas' answers: once `wanted` answered (if `pick` finds
 * enough usable ones there), or once every replica with a session did and `needed`
 * answered, or at the deadline; f+1 refusals settle it as a refusal.
 */
function numberRule(
  f: number,
  what: string,
  read: (res: Canonical) => number | null,
  how: { readonly wanted: number; readonly needed: number; readonly pick: (answers: number[]) => number | null },
): QueryRule<number> {
  const numbers = new Map<number, number>();
  const refusals = new Map<number, { code: ErrorCode; reason: string }>();
  const refusedByQuorum = (): QueryOutcome<number> => {
    if (refusals.size < vouchQuorum(f)) return null;
    const first = refusals.values().next().value as { code: ErrorCode; reason: string };
    return { ok: false, error: new RequestRejectedError(first.code, first.reason) };
  };
  const picked = (): QueryOutcome<number> => {
    const value = how.pick([...numbers.values()]);
    return value === null ? null : { ok: true, value };
  };
  return {
    // Replicas without a session cannot answer: once every reachable one has, waiting for
    // the deadline would only delay the same pick.
    settleWhenReachableAnswered: true,
    enoughToSettleEarly: () => numbers.size >= how.needed,
    add(replica, reply) {
      if (numbers.has(replica) || refusals.has(replica)) return null;
      const value = reply.ok ? read(reply.res) : null;
      if (reply.ok && value !== null) numbers.set(replica, value);
      else if (!reply.ok) refusals.set(replica, { code: reply.code, reason: reply.reason });
      return (numbers.size >= how.wanted ? picked() : null) ?? refusedByQuorum();
    },
    atDeadline(describeMissing) {
      return (
        picked() ??
        refusedByQuorum() ?? {
          ok: false,
          error: new NoQuorumError(`no quorum for ${what}: ${numbers.size} usable answers, ${how.needed} needed (${describeMissing()})`),
        }
      );
    },
  };
}

/** A publishers answer, and how fresh it is known to be. */
export interface PublisherListing {
  /** The keys at least f+1 replicas list, in ascending hex order. */
  readonly publishers: readonly Uint8Array[];
  /**
   * The (f+1)-th highest `at` of the replicas that listed keys (0 if fewer said one): a
   * decided seq that f+1 of them, so at least one correct replica, had executed when they
   * answered (publisher-registry.ts drops a key only on a listing at least this fresh).
   */
  readonly at: number;
}

/**
 * publishers: the keys at least f+1 replicas list, in ascending hex order. Settles once
 * 2f+1 replicas (or every reachable one, at least f+1) have answered, or at the deadline
 * with at least f+1 answers. A replica that says the channel does not exist lists nothing;
 * f+1 that say so settle it as UNKNOWN_CHANNEL. Each replica counts once, however many
 * keys it lists, and a malformed answer lists nothing.
 */
export function publishersRule(n: number, f: number, what: string): QueryRule<readonly Uint8Array[]> {
  const inner = publisherListingRule(n, f, what);
  const keysOf = (outcome: QueryOutcome<PublisherListing>): QueryOutcome<readonly Uint8Array[]> =>
    outcome === null || !outcome.ok ? outcome : { ok: true, value: outcome.value.publishers };
  return {
    settleWhenReachableAnswered: true,
    enoughToSettleEarly: inner.enoughToSettleEarly as () => boolean,
    add: (replica, reply) => keysOf(inner.add(replica, reply)),
    atDeadline: (describeMissing) => keysOf(inner.atDeadline(describeMissing)) as QueryOutcome<readonly Uint8Array[]> & object,
  };
}

/** publishersRule, with the listing's `at` (PublisherListing). */
export function publisherListingRule(n: number, f: number, what: string): QueryRule<PublisherListing> {
  const lists = new Map<number, ReadonlyMap<string, Uint8Array>>();
  const ats: number[] = [];
  const refusals = new Map<number, { code: ErrorCode; reason: string }>();
  const answered = (): number => lists.size + refusals.size;
  const listed = (): QueryOutcome<PublisherListing> => {
    if (refusals.size >= vouchQuorum(f) && lists.size < vouchQuorum(f)) {
      const first = refusals.values().next().value as { code: ErrorCode; reason: string };
      return { ok: false, error: new RequestRejectedError(first.code, first.reason) };
    }
    const counts = new Map<string, { key: Uint8Array; count: number }>();
    for (const list of lists.values()) {
      for (const [hex, key] of list) {
        const entry = counts.get(hex) ?? { key, count: 0 };
        entry.count++;
        counts.set(hex, entry);
      }
    }
    const agreed = [...counts].filter(([, entry]) => entry.count >= vouchQuorum(f)).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return { ok: true, value: { publishers: agreed.map(([, entry]) => entry.key), at: pickLastSeq(ats, f) ?? 0 } };
  };
  return {
    settleWhenReachableAnswered: true,
    enoughToSettleEarly: () => answered() >= vouchQuorum(f),
    add(replica, reply) {
      if (lists.has(replica) || refusals.has(replica)) return null;
      if (reply.ok) {
        const keys = parsePublishers(reply.res) ?? [];
        lists.set(replica, new Map(keys.map((key) => [toHex(key), key])));
        if (reply.at !== undefined) ats.push(reply.at);
      } else {
        refusals.set(replica, { code: reply.code, reason: reply.reason });
      }
      return answered() >= Math.min(n, byzantineQuorum(f)) ? listed() : null;
    },
    atDeadline(describeMissing) {
      if (answered() >= vouchQuorum(f)) return listed() as QueryOutcome<PublisherListing> & object;
      return {
        ok: false,
        error: new NoQuorumError(`no quorum for ${what}: ${answered()} answers, ${vouchQuorum(f)} needed (${describeMissing()})`),
      };
    },
  };
}

/**
 * How long the `each` rule waits for the rest once n-f replicas answered: a replica that
 * holds its session but does not answer (stopped, wedged) would otherwise hold every
 * status read for the full query timeout. The rest are reported without an answer.
 */
export const EACH_ANSWER_GRACE_MS = 2_000;

/**
 * Every replica's answer, read by `read`: complete when all n answered; else, once n-f
 * did (`f`: the group's; by default the most n tolerates, which starts the grace no later),
 * EACH_ANSWER_GRACE_MS after the first tick that saw them (settleOnTick); else at the
 * deadline.
 */
export function eachRule<T>(
  n: number,
  read: (res: Canonical) => T | null,
  f = Math.floor((n - 1) / 3),
  graceMs = EACH_ANSWER_GRACE_MS,
): QueryRule<Map<number, EachAnswer<T>>> {
  const answers = new Map<number, EachAnswer<T>>();
  /** When a tick first saw n-f answers; null before. */
  let graceFromMs: number | null = null;
  return {
    settleWhenReachableAnswered: true,
    add(replica, reply) {
      if (!answers.has(replica)) answers.set(replica, readEach(reply, read));
      return answers.size >= n ? { ok: true, value: answers } : null;
    },
    settleOnTick(now) {
      if (answers.size < liveQuorum(n, f)) return null;
      graceFromMs ??= now;
      return now - graceFromMs >= graceMs ? { ok: true, value: answers } : null;
    },
    atDeadline() {
      return { ok: true, value: answers };
    },
  };
}

/** One replica's answer under the `each` rule. */
export type EachAnswer<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly reason: string };

function readEach<T>(reply: QueryReply, read: (res: Canonical) => T | null): EachAnswer<T> {
  if (!reply.ok) return { ok: false, reason: `${reply.code} ${reply.reason}` };
  const value = read(reply.res);
  return value === null ? { ok: false, reason: "malformed answer" } : { ok: true, value };
}
