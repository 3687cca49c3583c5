/**
 * Configuration of the channel state machine. Every replica of a cluster must run with
 * the same values: they decide which publishes are refused as oversized, and the default
 * retention copied into each channel when it is created.
 */
import { REQUEST_EVENTS_MAX } from "../../../wire/types.ts";
import {
  CHANNELS_MAX,
  REQUEST_BYTES_MAX,
  RETAINED_BYTES_PER_CHANNEL_MAX,
  RETAINED_BYTES_TOTAL_MAX,
  RETAINED_EVENTS_PER_CHANNEL_MAX,
} from "./constants.ts";
import type { RetentionLimits } from "./types.ts";

export type ChannelsConfig = {
  /** Channels that may exist at once (at most CHANNELS_MAX). */
  readonly channelsMax: number;
  /** Largest single event payload. */
  readonly eventBytesMax: number;
  /** Largest signed request: body + signature bytes. */
  readonly requestBytesMax: number;
  /** Most events in one pub request. */
  readonly requestEventsMax: number;
  /** Retention given to every new channel. */
  readonly retention: RetentionLimits;
};

const MS_PER_DAY = 24 * 60 * 60 * 1000;

export const DEFAULT_CHANNELS_CONFIG: ChannelsConfig = {
  channelsMax: 256,
  eventBytesMax: 16 * 1024,
  requestBytesMax: 64 * 1024,
  requestEventsMax: 256,
  // 256 channels × 64 MiB stays within RETAINED_BYTES_TOTAL_MAX; a million events per
  // channel is the state size the recovery figures are measured on.
  retention: { events: 1_000_000, bytes: 64 * 1024 * 1024, ageMs: 7 * MS_PER_DAY },
};

function isIntIn(value: number, min: number, max: number): boolean {
  return Number.isSafeInteger(value) && value >= min && value <= max;
}

/**
 * Returns why the configuration is unusable, or null. The retention floor (a whole
 * request must fit) guarantees that the batch a publish just stored is never trimmed by
 * the same publish, so an acknowledged event is always readable at least once.
 */
export function checkChannelsConfig(config: ChannelsConfig): string | null {
  if (!isIntIn(config.channelsMax, 1, CHANNELS_MAX)) return `channelsMax must be 1..${CHANNELS_MAX}`;
  if (!isIntIn(config.requestBytesMax, 1, REQUEST_BYTES_MAX)) return `requestBytesMax must be 1..${REQUEST_BYTES_MAX}`;
  if (!isIntIn(config.eventBytesMax, 1, config.requestBytesMax)) return "eventBytesMax must be 1..requestBytesMax";
  if (!isIntIn(config.requestEventsMax, 1, REQUEST_EVENTS_MAX)) return `requestEventsMax must be 1..${REQUEST_EVENTS_MAX}`;
  return checkRetention(config.retention, config);
}

/** Checks retention limits against the request bounds they must be able to hold. */
export function checkRetention(
  retention: RetentionLimits,
  config: Pick<ChannelsConfig, "requestEventsMax" | "requestBytesMax" | "channelsMax">,
): string | null {
  if (!isIntIn(retention.events, config.requestEventsMax, RETAINED_EVENTS_PER_CHANNEL_MAX)) {
    return `retention.events must be requestEventsMax..${RETAINED_EVENTS_PER_CHANNEL_MAX}`;
  }
  if (!isIntIn(retention.bytes, config.requestBytesMax, RETAINED_BYTES_PER_CHANNEL_MAX)) {
    return `retention.bytes must be requestBytesMax..${RETAINED_BYTES_PER_CHANNEL_MAX}`;
  }
  if (!isIntIn(retention.ageMs, 0, Number.MAX_SAFE_INTEGER)) return "retention.ageMs must be a non-negative integer";
  if (config.channelsMax * retention.bytes > RETAINED_BYTES_TOTAL_MAX) {
    return `channelsMax × retention.bytes must be at most ${RETAINED_BYTES_TOTAL_MAX}`;
  }
  return null;
}
