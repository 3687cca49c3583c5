/**
 * The data model of the channel state machine: channel classes, the client request it
 * executes, the results it returns and the batches it stores.
 *
 * Request types mirror the shared wire model (a client signs `encodeCanonical(Request)`:
 * version 1 bodies whole under "fitb/v1/request", version 2 through their SHA-256 under
 * "fitb/v1/request-digest"). They are written here structurally, with readonly
 * fields, so that the decoded value produced by the wire schemas is assignable to them
 * without the core importing the schemas.
 *
 * Every result type is a `type` alias of plain canonical values (no `undefined`, no
 * floats), because replicas send results to clients and clients vote on their canonical
 * bytes (src/core/voting/reply-voter.ts).
 */
import type { MembershipCmd, MembershipOk } from "./membership.ts";

/** `crash` tolerates f crashed replicas; `byzantine` tolerates f arbitrary ones (n >= 3f+1). */
export type FaultModel = "crash" | "byzantine";
/** `total`: every subscriber sees one sequence; `none`: any order, no agreement. */
export type OrderMode = "none" | "total";
export type Priority = "low" | "normal" | "high" | "critical";

export const FAULT_MODELS: readonly FaultModel[] = ["crash", "byzantine"];
export const ORDER_MODES: readonly OrderMode[] = ["none", "total"];
export const PRIORITIES: readonly Priority[] = ["low", "normal", "high", "critical"];

/** A channel's quality of service and protection. Many channels may share one class. */
export type ChannelClass = {
  readonly fault: FaultModel;
  readonly order: OrderMode;
  readonly priority: Priority;
};

/**
 * How much of a channel is kept. A channel is trimmed oldest batch first until it holds
 * at most `events` events and `bytes` stored bytes (signed body + signature), and no
 * batch older than `ageMs` (0 disables the age limit; the other two always apply).
 */
export type RetentionLimits = {
  readonly events: number;
  readonly bytes: number;
  readonly ageMs: number;
};

/** The bytes a client signed and its signature (wire/session.ts requestSignedParts says over what). */
export type SignedRequest = {
  readonly body: Uint8Array;
  readonly sig: Uint8Array;
};

export type PubOp = {
  readonly t: "pub";
  readonly tag: string;
  readonly events: readonly Uint8Array[];
};

export type CreateChannelCmd = {
  readonly t: "create-channel";
  readonly tag: string;
  readonly fault: FaultModel;
  readonly order: OrderMode;
  readonly priority: Priority;
  readonly public: boolean;
};
export type DestroyChannelCmd = { readonly t: "destroy-channel"; readonly tag: string };
export type RegisterRole = "publisher" | "subscriber";
export type RegisterCmd = {
  readonly t: "register";
  readonly tag: string;
  readonly role: RegisterRole;
  readonly key: Uint8Array;
};
/** Revokes a key's registration: a compromised probe key is removed without destroying the channel. */
export type UnregisterCmd = {
  readonly t: "unregister";
  readonly tag: string;
  readonly role: RegisterRole;
  readonly key: Uint8Array;
};
/**
 * Sets a client key's own limits, overriding the cluster's defaults at every replica;
 * a limit left out keeps the default, and a command with none removes the key's quota.
 */
export type SetQuotaCmd = {
  readonly t: "set-quota";
  readonly key: Uint8Array;
  readonly eventsPerSecond?: number;
  readonly bytesPerSecond?: number;
  readonly subscriptions?: number;
};
export type AdminCmd = CreateChannelCmd | DestroyChannelCmd | RegisterCmd | UnregisterCmd | SetQuotaCmd | MembershipCmd;

/** A key's quota; null: the cluster's default for that limit (bytes per second: none). */
export type KeyQuota = {
  readonly eventsPerSecond: number | null;
  readonly bytesPerSecond: number | null;
  readonly subscriptions: number | null;
};
export type AdminOp = { readonly t: "admin"; readonly cmd: AdminCmd };

/** What a client signs. A pub request's events carry publisher seqs seq .. seq+span-1. */
export type Request = {
  /** 1: the signature covers the body; 2: the body's SHA-256 (wire PROTOCOL.md 6.1). */
  readonly v: 1 | 2;
  readonly client: Uint8Array;
  readonly seq: number;
  readonly span: number;
  readonly ts: number;
  readonly op: PubOp | AdminOp;
};

/** A pub request, as the channel state machine and the subscriber both need it. */
export type PubRequest = Request & { readonly op: PubOp };

/**
 * One stored publish request: the unit of storage, replication, retention and delivery
 * (one record per batch, never per event). Events `firstSeq .. firstSeq+count-1` are the
 * request's events in order. On total-order channels `firstSeq` is the channel sequence
 * number every replica agrees on and `tsMs` the decided timestamp; on unordered channels
 * `firstSeq` is this replica's local arrival index (meaningless elsewhere) and `tsMs` the
 * local arrival time.
 */
export type StoredBatch = {
  readonly firstSeq: number;
  readonly count: number;
  readonly tsMs: number;
  readonly publisher: Uint8Array;
  readonly pubSeq: number;
  readonly body: Uint8Array;
  readonly sig: Uint8Array;
};

export type ChannelErrorCode =
  | "bad-tag" // the tag is not dot-separated [a-z0-9_-]+ segments of at most 128 bytes
  | "bad-request" // a field out of its domain (wrong op, span mismatch, key length, ...)
  | "channel-exists"
  | "unknown-channel"
  | "channels-full" // the configured channel count is reached
  | "keys-full" // KEYS_PER_CHANNEL_MAX keys of that role are registered
  | "quotas-full" // QUOTAS_MAX keys have a quota
  | "not-registered" // the publisher is not registered on the channel
  | "class-mismatch" // an ordered-path request for an unordered channel, or the reverse
  | "oversized" // an event, the request, or its event count is above the configured bound
  | "replayed" // an unordered publish whose seq range overlaps or precedes what was seen
  | "trimmed"; // a read below the oldest retained sequence

/** A deterministic refusal: the same input yields the same code and reason everywhere. */
export type ChannelError = {
  readonly ok: false;
  readonly code: Exclude<ChannelErrorCode, "trimmed">;
  readonly reason: string;
};

/** A read below what retention kept; `oldestSeq` is where the subscriber can resume. */
export type TrimmedError = {
  readonly ok: false;
  readonly code: "trimmed";
  readonly reason: string;
  readonly oldestSeq: number;
};

export type AdminOk =
  | { readonly ok: true; readonly cmd: "create-channel"; readonly tag: string; readonly generation: number }
  | { readonly ok: true; readonly cmd: "destroy-channel"; readonly tag: string }
  | {
      readonly ok: true;
      readonly cmd: "register";
      readonly tag: string;
      readonly role: RegisterRole;
      readonly added: boolean;
    }
  | { readonly ok: true; readonly cmd: "unregister"; readonly tag: string; readonly role: RegisterRole }
  | { readonly ok: true; readonly cmd: "set-quota"; readonly key: Uint8Array; readonly cleared: boolean }
  | MembershipOk;
export type AdminResult = AdminOk | ChannelError;

/** Acknowledgement of an ordered publish: the channel seqs its events received. */
export type OrderedPublishOk = {
  readonly ok: true;
  readonly tag: string;
  readonly firstSeq: number;
  readonly count: number;
};
export type OrderedPublishResult = OrderedPublishOk | ChannelError;

/**
 * Acknowledgement of an unordered publish. It names the publisher's own seqs, which are
 * the same at every replica, and deliberately not whether the copy was new here, so that
 * every replica that stored the batch sends the same bytes and the client can vote.
 */
export type UnorderedPublishOk = {
  readonly ok: true;
  readonly tag: string;
  readonly pubSeq: number;
  readonly count: number;
};
export type UnorderedPublishResult = UnorderedPublishOk | ChannelError;

/** A channel's retained range after a trim; storage deletes batches below `oldestSeq`. */
export type TrimReport = {
  readonly tag: string;
  readonly oldestSeq: number;
  readonly batchesRemoved: number;
  /**
   * On an unordered channel, per publisher of a removed batch, the highest publisher seq
   * removed: what the store keeps so that a restart still refuses those seqs (empty on a
   * total-order channel, whose dedupe is the ordering core's).
   */
  readonly floors: readonly PublisherFloor[];
};

/** A publisher's seqs through `through` are no longer in an unordered channel's store. */
export type PublisherFloor = { readonly publisher: Uint8Array; readonly through: number };

/** What the runtime needs after an ordered publish: reply, persist, forward, delete. */
export type OrderedPublishOutcome = {
  readonly result: OrderedPublishResult;
  /** The stored batch to persist and forward; null when the publish was refused. */
  readonly stored: StoredBatch | null;
  /** Set when retention removed batches as a consequence of this publish. */
  readonly trimmed: TrimReport | null;
};

export type UnorderedPublishOutcome = {
  readonly result: UnorderedPublishResult;
  /** The newly stored batch to persist and forward; null for duplicates and refusals. */
  readonly stored: StoredBatch | null;
  readonly trimmed: TrimReport | null;
};

export type ReadOk = {
  readonly ok: true;
  readonly tag: string;
  readonly generation: number;
  readonly batches: readonly StoredBatch[];
  /** One past the last stored seq: where a live stream continues. */
  readonly nextSeq: number;
  readonly oldestSeq: number;
};
export type ReadResult = ReadOk | ChannelError | TrimmedError;

/** The externally visible description of a channel (for `list-channels` and status). */
export type ChannelInfo = {
  readonly tag: string;
  readonly generation: number;
  readonly fault: FaultModel;
  readonly order: OrderMode;
  readonly priority: Priority;
  readonly public: boolean;
  readonly publishers: number;
  readonly subscribers: number;
  readonly retention: RetentionLimits;
  readonly nextSeq: number;
  readonly oldestSeq: number;
  readonly retainedEvents: number;
  readonly retainedBytes: number;
};

/** SHA-256, injected so that the core stays free of runtime modules. */
export type HashFn = (bytes: Uint8Array) => Uint8Array;
