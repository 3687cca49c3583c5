/**
 * What `fitb admin` shows and checks about channels: the list-channels table (CLASS,
 * registered keys, last seq, retention use), its JSON form with the keys themselves, the
 * check that makes destroy-channel ask for --yes when events are stored, and the
 * list-quotas table of the keys with limits of their own.
 */
import { plural } from "../words.ts";
import type { ChannelListing } from "../../client/channel-listing.ts";
import type { FitbClient } from "../../client/client.ts";
import type { KeyQuotaListing } from "../../client/queries.ts";
import { formatPublicKey } from "../../crypto/keys.ts";
import type { CommandIo } from "../command.ts";
import { CommandError } from "../errors.ts";

/** Prints the channels: a table, or with `json` one object per line with the registered keys. */
export async function printChannels(client: FitbClient, channels: readonly ChannelListing[], json: boolean, io: CommandIo): Promise<void> {
  if (json) {
    for (const channel of channels) {
      const keys = await client.channelKeys(channel.tag);
      io.out(
        JSON.stringify({
          ...channel,
          publisherKeys: keys.publisherKeys.map(formatPublicKey),
          subscriberKeys: keys.subscriberKeys.map(formatPublicKey),
        }),
      );
    }
    return;
  }
  if (channels.length === 0) {
    io.out("no channels");
    return;
  }
  const rows = channels.map((channel) => [
    channel.tag,
    channel.fault,
    channel.order,
    channel.priority,
    channel.public ? "public" : "registered",
    figure(channel.publishers),
    figure(channel.subscribers),
    channel.order === "total" ? figure(channel.lastSeq) : "-",
    retentionUse(channel),
  ]);
  const header = ["TAG", "FAULT", "ORDER", "PRIORITY", "SUBSCRIBE", "PUBLISHERS", "SUBSCRIBERS", "LAST-SEQ", "RETAINED"];
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => (row[column] as string).length)));
  for (const row of [header, ...rows])
    io.out(
      row
        .map((cell, column) => cell.padEnd(widths[column] as number))
        .join("  ")
        .trimEnd(),
    );
}

/** Prints the keys with a quota: a table, or with `json` one object per line (null: the cluster's default). */
export function printQuotas(quotas: readonly KeyQuotaListing[], json: boolean, io: CommandIo): void {
  if (json) {
    for (const quota of quotas) io.out(JSON.stringify({ ...quota, key: formatPublicKey(quota.key) }));
    return;
  }
  if (quotas.length === 0) {
    io.out("no quotas (every key has the cluster's [limits] defaults)");
    return;
  }
  // Without a quota of its own a key has the cluster's events/s and subscriptions, and no bytes/s limit.
  const limit = (value: number | null, otherwise: string): string => (value === null ? otherwise : String(value));
  const rows = quotas.map((quota) => [
    formatPublicKey(quota.key),
    limit(quota.eventsPerSecond, "default"),
    limit(quota.bytesPerSecond, "none"),
    limit(quota.subscriptions, "default"),
  ]);
  const header = ["KEY", "EVENTS/S", "BYTES/S", "SUBSCRIPTIONS"];
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => (row[column] as string).length)));
  for (const row of [header, ...rows])
    io.out(
      row
        .map((cell, column) => cell.padEnd(widths[column] as number))
        .join("  ")
        .trimEnd(),
    );
}

function figure(value: number | null): string {
  return value === null ? "?" : String(value);
}

/** "120 events, 24.1 KiB (1% of 1.0 GiB)": what is stored against the tighter of the two limits. */
function retentionUse(channel: ChannelListing): string {
  if (channel.retainedEvents === null || channel.retainedBytes === null) return "?";
  const stored = `${plural(channel.retainedEvents, "event")}, ${formatBytes(channel.retainedBytes)}`;
  const limits = channel.retention;
  if (limits === null) return stored;
  const eventShare = limits.events > 0 ? channel.retainedEvents / limits.events : 0;
  const byteShare = limits.bytes > 0 ? channel.retainedBytes / limits.bytes : 0;
  const share = Math.max(eventShare, byteShare);
  const limit = eventShare >= byteShare ? plural(limits.events, "event") : formatBytes(limits.bytes);
  return `${stored} (${Math.floor(share * 100)}% of ${limit})`;
}

export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}

/**
 * destroy-channel deletes the channel's stored events on every replica, for good: without
 * --yes it is refused when any answering replica says the channel holds events, or when
 * the replicas do not say. One replica is enough: erring towards asking is safe, and so
 * neither a crash/none channel, whose events are on the f+1 replicas its publishes went
 * to, nor a faulty replica answering 0 can hide events from the check.
 */
export async function checkDestroy(client: FitbClient, tag: string, yes: boolean): Promise<void> {
  if (yes) return;
  const channel = (await client.listChannels()).find((candidate) => candidate.tag === tag);
  // An unknown channel is left to the replicas, whose refusal says so.
  if (channel === undefined) return;
  const listed = channel.retainedEvents;
  const reported = channel.reportedEventsMax ?? 0;
  if (listed === 0 && reported === 0) return;
  throw new CommandError(
    `channel ${tag} ${heldEvents(channel, reported)}; destroying it deletes them on every replica. Run again with --yes to destroy it`,
  );
}

/** What destroy-channel says the channel holds: the listed figure, or what one replica reports beyond it. */
function heldEvents(channel: ChannelListing, reported: number): string {
  const listed = channel.retainedEvents;
  if (listed !== null && listed >= reported) {
    return `holds ${plural(listed, "event")} (${formatBytes(channel.retainedBytes ?? 0)})${channel.lastSeq === null ? "" : `, last seq ${channel.lastSeq}`}`;
  }
  if (reported === 0) return "may hold events (the replicas did not say how many)";
  const most = `a replica reports ${plural(reported, "event")} (${formatBytes(channel.reportedBytesMax ?? 0)})`;
  return listed === null ? `may hold events: ${most}` : `may hold events: ${most}, the listing ${listed}`;
}
