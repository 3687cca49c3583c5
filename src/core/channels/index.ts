/** The channel state machine: the replicated registry and logs, and their snapshot. */
export * from "./types.ts";
export * from "./constants.ts";
export { checkChannelsConfig, checkRetention, DEFAULT_CHANNELS_CONFIG, type ChannelsConfig } from "./config.ts";
export { isValidTag } from "./tag.ts";
export { parsePubRequest, REQUEST_SIGNATURE_DOMAIN, signedRequestDigest } from "./request.ts";
export { SeqRangeWindow, type RangeCheck } from "./seq-window.ts";
export { ChannelMachine, type ChannelMachineOptions } from "./machine.ts";
export {
  SnapshotExport,
  SnapshotImport,
  snapshotBytesBound,
  type SnapshotError,
  type SnapshotResult,
} from "./snapshot.ts";
