/**
 * list-channels with what an operator checks (PROTOCOL.md section 8): per channel its
 * CLASS and access, the number of registered keys and the retention it uses; and the
 * registered keys of one channel (channel-info with `keys`).
 *
 * The replicated part of each channel (CLASS, access, key counts, retention limits) is
 * identical on every correct replica that executed the same decisions, so it is taken
 * from f+1 matching answers (queries.ts, matchingRule). The rest differs legitimately
 * between correct replicas (a replica that executed less has a lower next seq; each
 * replica keeps its own store of an unordered channel, and a crash/none publish reaches
 * only f+1 of them), so the listing hears out every replica with a session (or waits for
 * the deadline) and takes each figure from the replicas whose replicated part matched, by
 * the channel's fault model (pickFigure): on a crash channel the highest, on a byzantine
 * channel the (f+1)-th highest. Beside them it keeps the most events any answering
 * replica reported, whatever else it said: what destroy-channel asks --yes for.
 */
import { z } from "zod";
import type { Canonical } from "../../wire/canonical.ts";
import { channelClassFields, keySchema, type QueryReply, tagSchema } from "../../wire/schemas.ts";
import type { ChannelInfo, QueryOutcome, QueryRule } from "./queries.ts";
import { vouchQuorum } from "../core/voting/quorum.ts";
import { matchingRule } from "./queries.ts";
import { pickLastSeq } from "./seq.ts";

const count = z.int().min(0);

const listedChannelSchema = z.object({
  tag: tagSchema,
  ...channelClassFields,
  public: z.boolean(),
  // Optional so that a replica that lists only the CLASS is still understood.
  publishers: count.optional(),
  subscribers: count.optional(),
  retention: z.object({ events: count, bytes: count, ageMs: count }).optional(),
  next: count.optional(),
  oldest: count.optional(),
  events: count.optional(),
  bytes: count.optional(),
});
type ListedChannel = z.infer<typeof listedChannelSchema>;

const listingSchema = z.object({ channels: z.array(listedChannelSchema) });

/** The replicated part: what f+1 replicas must agree on. */
export type ChannelSummary = ChannelInfo & {
  readonly publishers: number | null;
  readonly subscribers: number | null;
  readonly retention: { readonly events: number; readonly bytes: number; readonly ageMs: number } | null;
};

/** One channel of list-channels. Figures are null when fewer than f+1 replicas gave them. */
export type ChannelListing = ChannelSummary & {
  /** The channel seq of the last stored event (order total only; 0: none yet). */
  readonly lastSeq: number | null;
  /**
   * Events and bytes (signed bodies and signatures) retained, by pickFigure: on a crash
   * channel the most any replica holds, on a byzantine channel the (f+1)-th highest.
   */
  readonly retainedEvents: number | null;
  readonly retainedBytes: number | null;
  /**
   * The most events, and the most bytes, that any answering replica said it holds, its
   * replicated part matching or not; null when none said. Taken at its word: a faulty
   * replica can raise it, but none can lower it below what another replica reported.
   */
  readonly reportedEventsMax: number | null;
  readonly reportedBytesMax: number | null;
};

/** A channel's registered keys (channel-info with `keys`), each list in bytewise order. */
export type ChannelKeys = {
  readonly tag: string;
  readonly publisherKeys: readonly Uint8Array[];
  readonly subscriberKeys: readonly Uint8Array[];
};

const channelKeysSchema = z.object({ tag: tagSchema, publisherKeys: z.array(keySchema), subscriberKeys: z.array(keySchema) });

function parseListing(res: Canonical): ListedChannel[] | null {
  const parsed = listingSchema.safeParse(res);
  if (!parsed.success) return null;
  return [...parsed.data.channels].sort((a, b) => (a.tag < b.tag ? -1 : a.tag > b.tag ? 1 : 0));
}

function summary(channel: ListedChannel): ChannelSummary {
  return {
    tag: channel.tag,
    fault: channel.fault,
    order: channel.order,
    priority: channel.priority,
    public: channel.public,
    publishers: channel.publishers ?? null,
    subscribers: channel.subscribers ?? null,
    retention: channel.retention === undefined ? null : { ...channel.retention },
  };
}

/** The projection replicas vote on. */
function summaries(res: Canonical): Canonical | null {
  const listing = parseListing(res);
  return listing === null ? null : (listing.map(summary) as Canonical);
}

/**
 * list-channels: f+1 matching summaries decide the list; the figures come from the
 * replicas whose summaries matched. With `everyReplica` (the default) it settles only once
 * every replica with a session has answered, or at the deadline: a crash/none channel's
 * events are on the f+1 replicas its publishes went to, which the first f+1 answers need
 * not include. Without it, at the first f+1 matching answers (a reader of tags and
 * CLASSes only, such as the wildcard watch).
 */
export function listChannelsRule(replicas: number | readonly number[], f: number, everyReplica = true): QueryRule<ChannelListing[]> {
  const n = typeof replicas === "number" ? replicas : replicas.length;
  const voted = matchingRule(replicas, f, "list-channels", summaries);
  const answers = new Map<number, ListingAnswer>();
  const heard = new Set<number>();
  // The vote's outcome once decided; a decided vote stays so (ReplyVoter).
  let decided: QueryOutcome<Canonical> = null;
  const withFigures = (outcome: QueryOutcome<Canonical>): QueryOutcome<ChannelListing[]> => {
    if (outcome === null || !outcome.ok) return outcome;
    const agreed = outcome.value as ChannelSummary[];
    const key = JSON.stringify(agreed);
    const every = [...answers.values()];
    const matching = every.filter((answer) => answer.key === key).map((answer) => answer.channels);
    return {
      ok: true,
      value: agreed.map((channel, index) =>
        listing(
          channel,
          matching.map((channels) => channels[index]),
          every.map((answer) => answer.byTag.get(channel.tag)),
          f,
        ),
      ),
    };
  };
  return {
    settleWhenReachableAnswered: everyReplica,
    enoughToSettleEarly: () => decided !== null,
    add(replica: number, reply: QueryReply) {
      heard.add(replica);
      if (reply.ok) {
        const channels = parseListing(reply.res);
        if (channels !== null) {
          const byTag = new Map(channels.map((channel) => [channel.tag, channel]));
          answers.set(replica, { key: JSON.stringify(channels.map(summary)), channels, byTag });
        }
      }
      decided = voted.add(replica, reply) ?? decided;
      return everyReplica && heard.size < n ? null : withFigures(decided);
    },
    atDeadline(describeMissing) {
      return withFigures(voted.atDeadline(describeMissing)) as QueryOutcome<ChannelListing[]> & object;
    },
  };
}

/** One replica's readable answer: its channels in tag order, by tag, and the summary it votes for. */
type ListingAnswer = { readonly key: string; readonly channels: ListedChannel[]; readonly byTag: ReadonlyMap<string, ListedChannel> };

/**
 * `copies`: the channel as each replica whose summary matched lists it; `reports`: as every
 * answering replica does (undefined where one does not list it).
 */
function listing(
  channel: ChannelSummary,
  copies: readonly (ListedChannel | undefined)[],
  reports: readonly (ListedChannel | undefined)[],
  f: number,
): ChannelListing {
  const figure = (read: (copy: ListedChannel) => number | undefined): number | null =>
    pickFigure(channel.fault, definedValues(copies, read), f);
  const reported = (read: (copy: ListedChannel) => number | undefined): number | null => {
    const values = definedValues(reports, read);
    return values.length === 0 ? null : Math.max(...values);
  };
  const next = figure((copy) => copy.next);
  return {
    ...channel,
    lastSeq: channel.order === "total" && next !== null ? Math.max(0, next - 1) : null,
    retainedEvents: figure((copy) => copy.events),
    retainedBytes: figure((copy) => copy.bytes),
    reportedEventsMax: reported((copy) => copy.events),
    reportedBytesMax: reported((copy) => copy.bytes),
  };
}

function definedValues(copies: readonly (ListedChannel | undefined)[], read: (copy: ListedChannel) => number | undefined): number[] {
  return copies.map((copy) => (copy === undefined ? undefined : read(copy))).filter((value): value is number => value !== undefined);
}

/**
 * One figure (next seq, events, bytes) from the answers of the replicas whose replicated
 * part matched, null when fewer than f+1 gave it. On a crash channel the highest: a crash
 * replica does not lie, and on crash/none only the f+1 replicas a publish went to store
 * it, so any lower pick can miss them (the (f+1)-th highest of f+1 answers is their
 * least). On a byzantine channel the (f+1)-th highest, which f faulty replicas cannot
 * raise above what a correct one reported: every correct replica executes the same
 * total-order log, and every acknowledged byzantine/none publish was stored by 2f+1
 * replicas, so by f+1 correct ones.
 */
export function pickFigure(fault: ChannelSummary["fault"], answers: readonly number[], f: number): number | null {
  if (fault === "byzantine") return pickLastSeq(answers, f);
  const usable = answers.filter((answer) => Number.isSafeInteger(answer) && answer >= 0);
  return usable.length < vouchQuorum(f) ? null : Math.max(...usable);
}

/** The keys of a channel-info answer asked with `keys`; null when malformed. */
export function parseChannelKeys(res: Canonical): ChannelKeys | null {
  const parsed = channelKeysSchema.safeParse(res);
  if (!parsed.success) return null;
  return { tag: parsed.data.tag, publisherKeys: parsed.data.publisherKeys, subscriberKeys: parsed.data.subscriberKeys };
}
