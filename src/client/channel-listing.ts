/**
 * list-channels with what an operator checks (PROTOCOL.md section 8): per channel its
 * CLASS and access, the number of registered keys and the retention it uses; and the
 * registered keys of one channel (channel-info with `keys`).
 *
 * The replicated part of each channel (CLASS, access, key counts, retention limits) is
 * identical on every correct replica that executed the same decisions, so it is taken
 * from f+1 matching answers (queries.ts, matchingRule). The rest differs legitimately
 * between correct replicas (a replica that executed less has a lower next seq; each
 * replica keeps its own store of an unordered channel), so each figure is the (f+1)-th
 * highest among the replicas whose replicated part matched: at least one correct replica
 * reported that much or more.
 */
import { z } from "zod";
import type { Canonical } from "../../wire/canonical.ts";
import { channelClassFields, keySchema, type QueryReply, tagSchema } from "../../wire/schemas.ts";
import type { ChannelInfo, QueryOutcome, QueryRule } from "./queries.ts";
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
  /** Events and bytes (signed bodies and signatures) retained. */
  readonly retainedEvents: number | null;
  readonly retainedBytes: number | null;
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
 * replicas whose summaries matched.
 */
export function listChannelsRule(replicas: number | readonly number[], f: number): QueryRule<ChannelListing[]> {
  const voted = matchingRule(replicas, f, "list-channels", summaries);
  const answers = new Map<number, { key: string; channels: ListedChannel[] }>();
  const withFigures = (outcome: QueryOutcome<Canonical>): QueryOutcome<ChannelListing[]> => {
    if (outcome === null || !outcome.ok) return outcome;
    const agreed = outcome.value as ChannelSummary[];
    const key = JSON.stringify(agreed);
    const matching = [...answers.values()].filter((answer) => answer.key === key).map((answer) => answer.channels);
    return {
      ok: true,
      value: agreed.map((channel, index) =>
        listing(
          channel,
          matching.map((channels) => channels[index]),
          f,
        ),
      ),
    };
  };
  return {
    add(replica: number, reply: QueryReply) {
      if (reply.ok) {
        const channels = parseListing(reply.res);
        if (channels !== null) answers.set(replica, { key: JSON.stringify(channels.map(summary)), channels });
      }
      return withFigures(voted.add(replica, reply));
    },
    atDeadline(describeMissing) {
      return withFigures(voted.atDeadline(describeMissing)) as QueryOutcome<ChannelListing[]> & object;
    },
  };
}

function listing(channel: ChannelSummary, copies: readonly (ListedChannel | undefined)[], f: number): ChannelListing {
  const figure = (read: (copy: ListedChannel) => number | undefined): number | null =>
    pickLastSeq(
      copies.map((copy) => (copy === undefined ? undefined : read(copy))).filter((value): value is number => value !== undefined),
      f,
    );
  const next = figure((copy) => copy.next);
  return {
    ...channel,
    lastSeq: channel.order === "total" && next !== null ? Math.max(0, next - 1) : null,
    retainedEvents: figure((copy) => copy.events),
    retainedBytes: figure((copy) => copy.bytes),
  };
}

/** The keys of a channel-info answer asked with `keys`; null when malformed. */
export function parseChannelKeys(res: Canonical): ChannelKeys | null {
  const parsed = channelKeysSchema.safeParse(res);
  if (!parsed.success) return null;
  return { tag: parsed.data.tag, publisherKeys: parsed.data.publisherKeys, subscriberKeys: parsed.data.subscriberKeys };
}
