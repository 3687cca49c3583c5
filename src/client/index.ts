/**
 * The fitb client library: connect to the replica group, publish with acks, run admin
 * commands and queries, subscribe with delivery voting and resume. `fitb pub`, `fitb
 * sub`, `fitb admin`, `fitb bench` and the relay are all built on it.
 */
export { FitbClient, type AdminAck, type PublishAck, type QueryResult } from "./client.ts";
export { summarizeStatus, type ClusterStatus, type ReplicaStatus } from "./cluster-status.ts";
export { Publisher, type EventAck, type PublisherOptions, type PublishTarget } from "./publisher.ts";
export { InOrder, type Settled } from "./in-order.ts";
export {
  eventSeq,
  type BatchHandler,
  type CopySeen,
  type ReceivedBatch,
  type SubscribeOptions,
  type Subscription,
  type SubscriptionSignal,
  type SubscriptionStats,
} from "./subscription.ts";
export type { ChannelInfo, EachAnswer, KeyQuotaListing, ReplicaStatusAnswer } from "./queries.ts";
export type { ChannelKeys, ChannelListing } from "./channel-listing.ts";
export {
  ClientClosedError,
  ClientError,
  describeError,
  HandshakeError,
  InvalidInputError,
  NoQuorumError,
  QueueFullError,
  ReplicaUnreachableError,
  RequestRejectedError,
  SubscriptionEndedError,
} from "./errors.ts";
export { DEFAULT_TIMEOUTS, type ClientLimits, type ClientLogEntry, type ClientTimeouts, type FitbClientOptions } from "./options.ts";
export { DEFAULT_BACKOFF, backoffDelayMs, type BackoffPolicy } from "./backoff.ts";
export {
  ReplicaConnection,
  type ConnectionEvents,
  type ConnectionOptions,
  type ConnectionState,
  type ReplicaEndpoint,
} from "./connection.ts";
export { tagProblem } from "./request.ts";
export { loadClientSetup, type ClientSetup } from "./setup.ts";
