/** The channel state machine: the replicated registry and logs, and their snapshot. */
export * from "./types.ts";
export * from "./constants.ts";
export { checkChannelsConfig, checkRetention, DEFAULT_CHANNELS_CONFIG, type ChannelsConfig } from "./config.ts";
export { isValidTag } from "./tag.ts";
export { parsePubRequest, REQUEST_SIGNATURE_DOMAIN, signedRequestDigest } from "./request.ts";
export { SeqRangeWindow, type RangeCheck } from "./seq-window.ts";
export { ChannelMachine, type ChannelMachineOptions, STORED_VIEW_MIN_BYTES } from "./machine.ts";
export {
  SnapshotExport,
  SnapshotImport,
  snapshotBytesBound,
  type SnapshotError,
  type SnapshotResult,
} from "./snapshot.ts";
export {
  boundaryAfter,
  checkMembership,
  coreIndexOf,
  memberOf,
  MEMBERSHIP_CMDS,
  membershipValue,
  readMembership,
  type AddReplicaCmd,
  type Member,
  type Membership,
  type MembershipCmd,
  type MembershipOk,
  type PendingMembership,
  type RemoveReplicaCmd,
  type RotateReplicaKeyCmd,
  type SetFCmd,
} from "./membership.ts";
