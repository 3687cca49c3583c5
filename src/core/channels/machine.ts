/**
 * The replicated channel state machine (src/README.md §1 "replicated state", §3 per-CLASS paths).
 *
 * Replicated part — identical on every correct replica because it changes only through
 * byzantine/total-ordered inputs, applied in decided order, and depends on nothing else:
 * the channels, their CLASS and access lists, and the stored batches and sequence numbers
 * of total-order channels. It is what `snapshot()` and `digest()` cover.
 *
 * Local part — each replica's own store of unordered channels (crash/none and
 * byzantine/none take no agreement: each replica stores and forwards what reaches it).
 * It lives here because it is checked against the replicated registry, but it is outside
 * the snapshot and the digest, since correct replicas legitimately differ in it.
 *
 * Pure and deterministic: time enters as arguments (the decided timestamp for ordered
 * channels, never a local clock), hashing through the injected `hash`. The caller has
 * already verified the request signature (and the admin signature for admin commands)
 * and passes the decoded request that `signed.body` encodes.
 */
import { bytesEqual, toHex } from "../../../wire/bytes.ts";
import { chainNext, type BatchRecord } from "./batch-log.ts";

import { Channel, sortedKeys } from "./channel.ts";
import { checkChannelsConfig, DEFAULT_CHANNELS_CONFIG, type ChannelsConfig } from "./config.ts";
import {
  DIGEST_BYTES,
  KEYS_PER_CHANNEL_MAX,
  PUBLIC_KEY_BYTES,
  QUOTAS_MAX,
  READ_BATCHES_MAX,
  UNORDERED_RETRY_SCAN_MAX,
} from "./constants.ts";
import {
  MEMBERSHIP_CMDS,
  MembershipRegistry,
  type Membership,
  type MembershipCmd,
  type PendingMembership,
  type ViewChangeBound,
} from "./membership.ts";
import { signedRequestDigest } from "./request.ts";
import { exportState, type SnapshotExport, SnapshotImport, stateDigest, type ChannelsState, type SnapshotResult } from "./snapshot.ts";
import { isValidTag } from "./tag.ts";
import {
  FAULT_MODELS,
  ORDER_MODES,
  PRIORITIES,
  type AdminCmd,
  type AdminResult,
  type ChannelError,
  type ChannelErrorCode,
  type ChannelInfo,
  type CreateChannelCmd,
  type HashFn,
  type OrderedPublishOutcome,
  type OrderMode,
  type Priority,
  type PubRequest,
  type ReadResult,
  type RegisterCmd,
  type Request,
  type SignedRequest,
  type StoredBatch,
  type TrimReport,
  type UnorderedPublishOutcome,
  type UnregisterCmd,
  type SetQuotaCmd,
  type KeyQuota,
} from "./types.ts";

export type ChannelMachineOptions = {
  /** SHA-256. */
  readonly hash: HashFn;
  /** Defaults to DEFAULT_CHANNELS_CONFIG. Must be equal on every replica. */
  readonly config?: ChannelsConfig;
  /**
   * The replica group as replicated state (membership.ts): the cluster file's group and
   * the ordering core's checkpoint interval, equal on every replica. Without it the
   * membership commands are refused.
   */
  readonly membership?: {
    readonly genesis: Membership;
    readonly checkpointInterval: number;
    readonly admitsNewReplicas?: boolean;
    readonly admitsLargerF?: boolean;
    /** The frame limit and NEW_VIEW bound set-f is held to (membership.ts ViewChangeBound). */
    readonly viewChange?: ViewChangeBound;
  };
};

function refuse(code: Exclude<ChannelErrorCode, "trimmed">, reason: string): ChannelError {
  return { ok: false, code, reason };
}

/**
 * The smallest view stored where it is (owned); a smaller one is copied, which costs
 * little. A larger one is kept if its buffer's unused bytes are at most a sixteenth of it.
 */
export const STORED_VIEW_MIN_BYTES = 2048;

/**
 * A view kept as it is when its buffer holds little else (a request body read out of its
 * own frame: the frame's few other bytes, at most a sixteenth more, ride along), else
 * copied out, so that retention never keeps a large buffer (a proposal of many requests)
 * alive for a small part of it, and a small value (a key, a signature, a short body) is
 * always copied. Either way the stored bytes are never written to: the caller hands them
 * over and must not change the buffer afterwards.
 */
function owned(bytes: Uint8Array): Uint8Array {
  if (bytes.byteLength < STORED_VIEW_MIN_BYTES) return bytes.byteLength === bytes.buffer.byteLength ? bytes : bytes.slice();
  return bytes.buffer.byteLength - bytes.byteLength <= bytes.byteLength >>> 4 ? bytes : bytes.slice();
}

/**
 * Where an unordered publish was stored: its channel's tag and generation. A stored request
 * belongs to that channel only; one created again under the same tag is another channel.
 */
export type UnorderedStoredAt = { readonly tag: string; readonly generation: number };

/** A pub request whose span matches its events (what makes its stored seqs mean anything); null when it is one. */
function checkPubShape(request: Request): ChannelError | null {
  const op = request.op;
  if (op.t !== "pub") return refuse("bad-request", "not a pub request");
  if (request.span !== op.events.length) return refuse("bad-request", "span must equal the number of events");
  if (request.span < 1) return refuse("bad-request", "a pub request carries at least one event");
  return null;
}

function assertTimestamp(ms: number, what: string): void {
  if (!Number.isSafeInteger(ms) || ms < 0) throw new RangeError(`${what} must be a non-negative integer of ms`);
}

export class ChannelMachine {
  readonly config: ChannelsConfig;
  private readonly hash: HashFn;
  private state: ChannelsState = { generation: 0, channels: new Map(), quotas: new Map(), membership: null };
  private readonly members: MembershipRegistry | null;
  /** Tags in ascending order, rebuilt only after a create, destroy or restore. */
  private tagOrder: string[] | null = null;

  constructor(options: ChannelMachineOptions) {
    this.config = options.config ?? DEFAULT_CHANNELS_CONFIG;
    const problem = checkChannelsConfig(this.config);
    if (problem !== null) throw new RangeError(`invalid channels config: ${problem}`);
    this.hash = options.hash;
    if (this.hash(new Uint8Array(0)).length !== DIGEST_BYTES) throw new RangeError("hash must return 32 bytes");
    this.members =
      options.membership === undefined
        ? null
        : new MembershipRegistry(
            options.membership.genesis,
            options.membership.checkpointInterval,
            options.membership.admitsNewReplicas,
            options.membership.admitsLargerF ?? options.membership.admitsNewReplicas,
            options.membership.viewChange ?? null,
          );
  }

  get channelCount(): number {
    return this.state.channels.size;
  }

  /**
   * The generation of the last channel created (0: none yet). Generations count every
   * create-channel of the group's history, so a channel stored under a higher one was made
   * past the state this machine holds.
   */
  get lastGeneration(): number {
    return this.state.generation;
  }

  // ---------------------------------------------------------------------------------
  // Admin commands (always decided through byzantine total order)
  // ---------------------------------------------------------------------------------

  /**
   * Applies an admin command whose admin signature the caller has checked. `decidedSeq`,
   * the seq that decided it, is needed by the membership commands only (a change takes
   * effect at the checkpoint boundary after it).
   */
  applyAdmin(cmd: AdminCmd, decidedSeq?: number): AdminResult {
    if ((MEMBERSHIP_CMDS as readonly string[]).includes(cmd.t)) return this.changeMembership(cmd as MembershipCmd, decidedSeq);
    switch (cmd.t) {
      case "create-channel":
        return this.createChannel(cmd);
      case "destroy-channel":
        return this.destroyChannel(cmd.tag);
      case "register":
        return this.register(cmd);
      case "unregister":
        return this.unregister(cmd);
      case "set-quota":
        return this.setQuota(cmd);
      default:
        return refuse("bad-request", `unknown admin command ${String((cmd as { t: unknown }).t)}`);
    }
  }

  private createChannel(cmd: CreateChannelCmd): AdminResult {
    if (!isValidTag(cmd.tag)) return refuse("bad-tag", "tag must be dot-separated [a-z0-9_-]+ segments, at most 128 bytes");
    if (!FAULT_MODELS.includes(cmd.fault)) return refuse("bad-request", "fault must be crash or byzantine");
    if (!ORDER_MODES.includes(cmd.order)) return refuse("bad-request", "order must be none or total");
    if (!PRIORITIES.includes(cmd.priority)) return refuse("bad-request", "priority must be low, normal, high or critical");
    if (typeof cmd.public !== "boolean") return refuse("bad-request", "public must be a boolean");
    if (this.state.channels.has(cmd.tag)) return refuse("channel-exists", `channel ${cmd.tag} already exists`);
    if (this.state.channels.size >= this.config.channelsMax) {
      return refuse("channels-full", `at most ${this.config.channelsMax} channels may exist`);
    }
    const generation = this.state.generation + 1;
    const cls = { fault: cmd.fault, order: cmd.order, priority: cmd.priority };
    this.state.generation = generation;
    this.state.channels.set(cmd.tag, Channel.create(cmd.tag, generation, cls, cmd.public, { ...this.config.retention }));
    this.tagOrder = null;
    return { ok: true, cmd: "create-channel", tag: cmd.tag, generation };
  }

  private destroyChannel(tag: string): AdminResult {
    if (!this.state.channels.delete(tag)) return refuse("unknown-channel", `no channel ${tag}`);
    this.tagOrder = null;
    return { ok: true, cmd: "destroy-channel", tag };
  }

  private register(cmd: RegisterCmd): AdminResult {
    const channel = this.keyCommandChannel(cmd);
    if (!(channel instanceof Channel)) return channel;
    const keys = channel.keys(cmd.role);
    if (!keys.has(toHex(cmd.key)) && keys.size >= KEYS_PER_CHANNEL_MAX) {
      return refuse("keys-full", `at most ${KEYS_PER_CHANNEL_MAX} ${cmd.role}s per channel`);
    }
    const added = channel.register(cmd.role, cmd.key);
    return { ok: true, cmd: "register", tag: cmd.tag, role: cmd.role, added };
  }

  /**
   * Revokes a key. Refused when the key is not registered in that role, so that a typo
   * in the key is reported rather than taken for a revocation. From the next decided
   * input on, a revoked publisher's requests are refused (`checkPublish`) and a revoked
   * subscriber may no longer read a private channel; the runtime ends its live
   * subscriptions there.
   */
  private unregister(cmd: UnregisterCmd): AdminResult {
    const channel = this.keyCommandChannel(cmd);
    if (!(channel instanceof Channel)) return channel;
    if (!channel.unregister(cmd.role, cmd.key)) {
      return refuse("bad-request", `the key is not a registered ${cmd.role} of ${cmd.tag}`);
    }
    return { ok: true, cmd: "unregister", tag: cmd.tag, role: cmd.role };
  }

  /**
   * Sets, changes or (with no limit given) removes a key's quota. The runtime applies
   * it to the key's requests and subscriptions at every replica (src/replica/quota.ts).
   */
  private setQuota(cmd: SetQuotaCmd): AdminResult {
    if (!(cmd.key instanceof Uint8Array) || cmd.key.length !== PUBLIC_KEY_BYTES) {
      return refuse("bad-request", `key must be ${PUBLIC_KEY_BYTES} bytes`);
    }
    for (const name of ["eventsPerSecond", "bytesPerSecond", "subscriptions"] as const) {
      const limit = cmd[name];
      if (limit !== undefined && !(Number.isSafeInteger(limit) && limit >= 1))
        return refuse("bad-request", `${name} must be a positive integer`);
    }
    const hex = toHex(cmd.key);
    const entry = {
      key: cmd.key.slice(),
      eventsPerSecond: cmd.eventsPerSecond ?? null,
      bytesPerSecond: cmd.bytesPerSecond ?? null,
      subscriptions: cmd.subscriptions ?? null,
    };
    if (entry.eventsPerSecond === null && entry.bytesPerSecond === null && entry.subscriptions === null) {
      this.state.quotas.delete(hex);
      return { ok: true, cmd: "set-quota", key: entry.key, cleared: true };
    }
    if (!this.state.quotas.has(hex) && this.state.quotas.size >= QUOTAS_MAX) {
      return refuse("quotas-full", `at most ${QUOTAS_MAX} keys may have a quota`);
    }
    this.state.quotas.set(hex, entry);
    return { ok: true, cmd: "set-quota", key: entry.key, cleared: false };
  }

  private changeMembership(cmd: MembershipCmd, decidedSeq: number | undefined): AdminResult {
    if (this.members === null) return refuse("bad-request", "this replica group's membership is not managed by the replicas");
    if (decidedSeq === undefined) return refuse("bad-request", "a membership change needs the seq that decided it");
    const result = this.members.apply(cmd, decidedSeq);
    this.state.membership = this.members.record();
    return result;
  }

  /**
   * Called once every decided seq has executed, in order (also when a restart replays
   * decisions). At a change's checkpoint boundary the pending membership becomes current
   * and is returned, before the checkpoint digest of that seq is taken; otherwise null.
   */
  endOfDecision(seq: number): Membership | null {
    if (this.members === null) return null;
    const changed = this.members.endOfDecision(seq);
    if (changed !== null) this.state.membership = this.members.record();
    return changed;
  }

  /** The group now (the cluster file's at epoch 0); null when membership is not managed. */
  membership(): Membership | null {
    return this.members?.current ?? null;
  }

  /** A decided change waiting for its checkpoint boundary, or null. */
  pendingMembership(): PendingMembership | null {
    return this.members?.pending ?? null;
  }

  /** Every key the replicated state names, in hex: registered on a channel to publish or to read, or given a quota. */
  namedKeys(): Set<string> {
    const keys = new Set<string>(this.state.quotas.keys());
    for (const channel of this.state.channels.values()) {
      for (const key of channel.publishers.keys()) keys.add(key);
      for (const key of channel.subscribers.keys()) keys.add(key);
    }
    return keys;
  }

  /** A key's quota (lowercase hex of the key), or null: the cluster's defaults apply. */
  quotaOf(keyHex: string): KeyQuota | null {
    return this.state.quotas.get(keyHex) ?? null;
  }

  /** Every key with a quota of its own, in ascending bytewise order of the key (at most QUOTAS_MAX). */
  listQuotas(): (KeyQuota & { readonly key: Uint8Array })[] {
    return [...this.state.quotas.entries()]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([, quota]) => ({
        key: quota.key.slice(),
        eventsPerSecond: quota.eventsPerSecond,
        bytesPerSecond: quota.bytesPerSecond,
        subscriptions: quota.subscriptions,
      }));
  }

  /** The checks register and unregister share; returns the channel when they pass. */
  private keyCommandChannel(cmd: RegisterCmd | UnregisterCmd): Channel | ChannelError {
    if (cmd.role !== "publisher" && cmd.role !== "subscriber") {
      return refuse("bad-request", "role must be publisher or subscriber");
    }
    if (!(cmd.key instanceof Uint8Array) || cmd.key.length !== PUBLIC_KEY_BYTES) {
      return refuse("bad-request", `key must be ${PUBLIC_KEY_BYTES} bytes`);
    }
    return this.state.channels.get(cmd.tag) ?? refuse("unknown-channel", `no channel ${cmd.tag}`);
  }

  // ---------------------------------------------------------------------------------
  // Publishing
  // ---------------------------------------------------------------------------------

  /**
   * Executes a decided pub request on a total-order channel: its events receive the next
   * consecutive channel seqs, the batch is stored as one record, and retention trims
   * with `decidedTsMs` as "now". The ordering core has already removed duplicates
   * (each client seq executes once), so none is done here.
   *
   * `decidedTsMs` must be the same at every replica and must not be the publisher's free
   * choice: it becomes the batch's stored time and drives age trimming, so a publisher
   * able to stamp a request far in the future could age out the whole channel on every
   * replica. The replica passes the request's signed `ts`, which is part of the decided
   * bytes, and bounds it before ordering: within CLIENT_CLOCK_SKEW_MS_MAX of the clock of
   * the replica the client spoke to, and no further ahead than PROPOSED_FUTURE_MS_MAX at
   * every replica that accepts a proposal carrying it (src/replica/requests.ts).
   *
   * The stored batch may refer to `signed`'s bytes where they are (`owned`): the caller
   * must not change them afterwards.
   */
  applyOrderedPublish(signed: SignedRequest, request: Request, decidedTsMs: number): OrderedPublishOutcome {
    assertTimestamp(decidedTsMs, "decidedTsMs");
    const checked = this.checkPublish(signed, request, "total");
    if (!(checked instanceof Channel)) return { result: checked, stored: null, trimmed: null };
    const pub = request as PubRequest;
    const log = checked.log;
    const base = {
      firstSeq: log.nextSeq,
      count: pub.span,
      tsMs: decidedTsMs,
      publisher: owned(pub.client),
      pubSeq: pub.seq,
    };
    const chainAfter = chainNext(this.hash, log.headChain, base, signedRequestDigest(this.hash, signed));
    const record = this.record(base, signed, chainAfter);
    log.append(record);
    const trimmed = this.trim(checked, decidedTsMs);
    return { result: { ok: true, tag: checked.tag, firstSeq: record.firstSeq, count: record.count }, stored: record, trimmed };
  }

  /**
   * Stores a publish on an unordered channel as it reaches this replica (no agreement).
   * Copies are deduplicated by publisher + publisher seq range: a copy already stored is
   * acknowledged again (the publisher may be retrying) but not stored or forwarded twice.
   * `receivedTsMs` is this replica's clock, used for the age of unordered batches only.
   * As for applyOrderedPublish, the caller must not change `signed`'s bytes afterwards.
   */
  acceptUnorderedPublish(signed: SignedRequest, request: Request, receivedTsMs: number): UnorderedPublishOutcome {
    assertTimestamp(receivedTsMs, "receivedTsMs");
    const checked = this.checkPublish(signed, request, "none");
    if (!(checked instanceof Channel)) return { result: checked, stored: null, trimmed: null };
    return this.storeUnordered(checked, signed, request as PubRequest, receivedTsMs);
  }

  /**
   * Puts back, at restart (src/replica/storage/recovery.ts), a publish this replica stored
   * and acknowledged on the unordered channel `stored` names. Only what the stored request
   * needs to still mean something is checked: it is a well-formed pub of that tag, and the
   * channel still exists under the same generation (so with the same class) and is
   * unordered; a destroyed or re-created channel took its local store with it. The
   * admission checks of publish time (registration, size limits) are not repeated: they
   * held when the event was acknowledged, and a running replica keeps such an event when
   * its publisher is unregistered later, so a restart must not drop it either. Duplicates
   * and retention are handled as on arrival, so the store comes back as it was kept.
   */
  restoreUnorderedPublish(
    signed: SignedRequest,
    request: Request,
    stored: UnorderedStoredAt,
    receivedTsMs: number,
  ): UnorderedPublishOutcome {
    assertTimestamp(receivedTsMs, "receivedTsMs");
    const checked = this.checkRestore(request, stored);
    if (!(checked instanceof Channel)) return { result: checked, stored: null, trimmed: null };
    return this.storeUnordered(checked, signed, request as PubRequest, receivedTsMs);
  }

  /** restoreUnorderedPublish's checks; returns the channel when they pass. */
  private checkRestore(request: Request, stored: UnorderedStoredAt): Channel | ChannelError {
    const shape = checkPubShape(request);
    if (shape !== null) return shape;
    const tag = (request as PubRequest).op.tag;
    if (tag !== stored.tag) return refuse("bad-request", `the request publishes to ${tag}, stored under ${stored.tag}`);
    const channel = this.state.channels.get(tag);
    if (channel === undefined) return refuse("unknown-channel", `no channel ${tag}`);
    if (channel.generation !== stored.generation) {
      return refuse("unknown-channel", `channel ${tag} of generation ${stored.generation} was destroyed`);
    }
    if (channel.cls.order !== "none") return refuse("class-mismatch", `channel ${tag} has order ${channel.cls.order}`);
    return channel;
  }

  /**
   * Stores a checked publish on an unordered channel, deduplicated by publisher seq range,
   * and trims by retention (shared by arrival and restore).
   */
  private storeUnordered(checked: Channel, signed: SignedRequest, pub: PubRequest, receivedTsMs: number): UnorderedPublishOutcome {
    const ok = { ok: true as const, tag: checked.tag, pubSeq: pub.seq, count: pub.span };
    const window = checked.dedupeWindow(toHex(pub.client));
    const lastSeq = pub.seq + pub.span - 1;
    const seen = window.check(pub.seq, lastSeq);
    if (seen === "duplicate") {
      // Acknowledged again only if it is the same request (a retry): a different body
      // under used numbers (another process with the same key) would otherwise be
      // acknowledged and never stored.
      const stored = checked.log.findRecent(
        (r) => r.pubSeq === pub.seq && r.count === pub.span && bytesEqual(r.publisher, pub.client),
        UNORDERED_RETRY_SCAN_MAX,
      );
      if (stored !== null && bytesEqual(stored.body, signed.body)) return { result: ok, stored: null, trimmed: null };
      const replayed = refuse("replayed", `publisher seqs ${pub.seq}..${lastSeq} were already used by another request`);
      return { result: replayed, stored: null, trimmed: null };
    }
    if (seen !== "new") {
      const replayed = refuse("replayed", `publisher seqs ${pub.seq}..${lastSeq} were partly seen or are too old`);
      return { result: replayed, stored: null, trimmed: null };
    }
    window.add(pub.seq, lastSeq);
    const base = {
      firstSeq: checked.log.nextSeq,
      count: pub.span,
      tsMs: receivedTsMs,
      publisher: owned(pub.client),
      pubSeq: pub.seq,
    };
    const record = this.record(base, signed, new Uint8Array(0));
    checked.log.append(record);
    const trimmed = this.trim(checked, receivedTsMs);
    return { result: ok, stored: record, trimmed };
  }

  private record(base: Omit<StoredBatch, "body" | "sig">, signed: SignedRequest, chainAfter: Uint8Array): BatchRecord {
    const body = owned(signed.body);
    const sig = owned(signed.sig);
    return { ...base, body, sig, bytes: body.length + sig.length, chainAfter };
  }

  /**
   * The checks shared by both publish paths, in a fixed order so that every replica
   * gives the same refusal for the same input. Returns the channel when all pass.
   */
  private checkPublish(signed: SignedRequest, request: Request, path: OrderMode): Channel | ChannelError {
    const shape = checkPubShape(request);
    if (shape !== null) return shape;
    const op = (request as PubRequest).op;
    if (request.span > this.config.requestEventsMax) {
      return refuse("oversized", `more than ${this.config.requestEventsMax} events in one request`);
    }
    const channel = this.state.channels.get(op.tag);
    if (channel === undefined) return refuse("unknown-channel", `no channel ${op.tag}`);
    if (channel.cls.order !== path) {
      return refuse("class-mismatch", `channel ${op.tag} has order ${channel.cls.order}, the request took the ${path} path`);
    }
    if (!channel.isPublisher(request.client)) return refuse("not-registered", `publisher is not registered on ${op.tag}`);
    if (signed.body.length + signed.sig.length > this.config.requestBytesMax) {
      return refuse("oversized", `request larger than ${this.config.requestBytesMax} bytes`);
    }
    for (const event of op.events) {
      if (event.length > this.config.eventBytesMax) {
        return refuse("oversized", `event larger than ${this.config.eventBytesMax} bytes`);
      }
    }
    return channel;
  }

  // ---------------------------------------------------------------------------------
  // Retention by age
  // ---------------------------------------------------------------------------------

  /**
   * Trims every total-order channel by age against a decided timestamp. Call it at the
   * same point of the decided sequence on every replica (for example after each decided
   * batch) so that all replicas trim identically.
   */
  trimOrderedByAge(decidedTsMs: number): TrimReport[] {
    assertTimestamp(decidedTsMs, "decidedTsMs");
    return this.trimByAge("total", decidedTsMs);
  }

  /** Trims every unordered channel by age against this replica's clock. */
  trimUnorderedByAge(nowMs: number): TrimReport[] {
    assertTimestamp(nowMs, "nowMs");
    return this.trimByAge("none", nowMs);
  }

  private trimByAge(order: OrderMode, nowMs: number): TrimReport[] {
    const reports: TrimReport[] = [];
    for (const tag of this.sortedTags()) {
      const channel = this.state.channels.get(tag) as Channel;
      if (channel.cls.order !== order) continue;
      const report = this.trim(channel, nowMs);
      if (report !== null) reports.push(report);
    }
    return reports;
  }

  /** Trims a channel by its retention at `nowMs`; on an unordered channel, notes the publishers' floors of what went. */
  private trim(channel: Channel, nowMs: number): TrimReport | null {
    if (channel.isOrdered) {
      const batchesRemoved = channel.log.trim(channel.retention, { nowMs });
      return batchesRemoved === 0 ? null : { tag: channel.tag, oldestSeq: channel.log.oldestSeq, batchesRemoved, floors: [] };
    }
    // One map and callback for every trim: an unordered publish trims (most often nothing) each time.
    const floors = this.trimFloors;
    floors.clear();
    const batchesRemoved = channel.log.trim(channel.retention, { nowMs }, this.noteTrimFloor);
    if (batchesRemoved === 0) return null;
    return { tag: channel.tag, oldestSeq: channel.log.oldestSeq, batchesRemoved, floors: [...floors.values()] };
  }

  /** The publishers' floors of the unordered trim under way (trim), by key hex. */
  private readonly trimFloors = new Map<string, { publisher: Uint8Array; through: number }>();

  private readonly noteTrimFloor = (record: BatchRecord): void => {
    const through = record.pubSeq + record.count - 1;
    const hex = toHex(record.publisher);
    const known = this.trimFloors.get(hex);
    if (known === undefined) this.trimFloors.set(hex, { publisher: record.publisher, through });
    else if (through > known.through) known.through = through;
  };

  /**
   * Puts back, at restart (src/replica/storage/recovery.ts), that a publisher's seqs through
   * `through` were stored on the unordered channel `stored` names and removed by retention
   * since: they stay refused, and `lastUnorderedSeq` knows them. False when that channel is
   * gone (destroyed, re-created or not unordered): the floor means nothing any more.
   */
  restoreUnorderedFloor(stored: UnorderedStoredAt, publisher: Uint8Array, through: number): boolean {
    const channel = this.state.channels.get(stored.tag);
    if (channel === undefined || channel.generation !== stored.generation || channel.isOrdered) return false;
    if (publisher.length !== PUBLIC_KEY_BYTES || !Number.isSafeInteger(through) || through < 1) return false;
    channel.dedupeWindow(toHex(publisher)).forgetThrough(through);
    return true;
  }

  // ---------------------------------------------------------------------------------
  // Reads
  // ---------------------------------------------------------------------------------

  /**
   * Stored batches from the one holding `fromSeq` on (at most `maxBatches`, clamped to
   * READ_BATCHES_MAX), for a subscriber's `--from` resume. Below the oldest retained seq
   * the answer is a "trimmed" error naming that seq. On unordered channels seqs are this
   * replica's local arrival indexes.
   */
  readFrom(tag: string, fromSeq: number, maxBatches: number): ReadResult {
    const channel = this.state.channels.get(tag);
    if (channel === undefined) return refuse("unknown-channel", `no channel ${tag}`);
    if (!Number.isSafeInteger(fromSeq) || fromSeq < 1) return refuse("bad-request", "fromSeq must be a positive integer");
    if (!Number.isSafeInteger(maxBatches) || maxBatches < 1) {
      return refuse("bad-request", "maxBatches must be a positive integer");
    }
    const log = channel.log;
    if (fromSeq < log.oldestSeq) {
      const reason = `seq ${fromSeq} of ${tag} is no longer retained; the oldest available is ${log.oldestSeq}`;
      return { ok: false, code: "trimmed", reason, oldestSeq: log.oldestSeq };
    }
    const batches = log.readFrom(fromSeq, Math.min(maxBatches, READ_BATCHES_MAX));
    return { ok: true, tag, generation: channel.generation, batches, nextSeq: log.nextSeq, oldestSeq: log.oldestSeq };
  }

  /** Whether `key` may subscribe: the channel is public or the key is a registered subscriber. */
  checkSubscribe(tag: string, key: Uint8Array): { readonly ok: true } | ChannelError {
    const channel = this.state.channels.get(tag);
    if (channel === undefined) return refuse("unknown-channel", `no channel ${tag}`);
    if (!channel.mayRead(key)) return refuse("not-registered", `subscriber is not registered on ${tag}`);
    return { ok: true };
  }

  canSubscribe(tag: string, key: Uint8Array): boolean {
    return this.checkSubscribe(tag, key).ok;
  }

  isPublisher(tag: string, key: Uint8Array): boolean {
    return this.state.channels.get(tag)?.isPublisher(key) ?? false;
  }

  /** A channel's registered keys, each list in ascending bytewise order; null: no channel. */
  channelKeys(tag: string): { readonly publishers: Uint8Array[]; readonly subscribers: Uint8Array[] } | null {
    const channel = this.state.channels.get(tag);
    if (channel === undefined) return null;
    return { publishers: sortedKeys(channel.publishers), subscribers: sortedKeys(channel.subscribers) };
  }

  /** isPublisher for a key in lowercase hex. */
  isPublisherHex(tag: string, keyHex: string): boolean {
    return this.state.channels.get(tag)?.isPublisherHex(keyHex) ?? false;
  }

  /**
   * The highest publisher seq this replica stored from `publisherHex` (lowercase hex of
   * the key) on an unordered channel; 0 when none or when the channel is not unordered.
   * Local knowledge: other replicas may have seen more or less.
   */
  lastUnorderedSeq(tag: string, publisherHex: string): number {
    const channel = this.state.channels.get(tag);
    if (channel === undefined || channel.isOrdered) return 0;
    return channel.dedupe.get(publisherHex)?.highestSeq ?? 0;
  }

  /** A channel's ordering, or null when there is no such channel (read per request before verification; no info object built). */
  orderOf(tag: string): OrderMode | null {
    return this.state.channels.get(tag)?.cls.order ?? null;
  }

  /** A channel's priority, or null when there is no such channel (the leader's batch fill reads it per request). */
  priorityOf(tag: string): Priority | null {
    return this.state.channels.get(tag)?.cls.priority ?? null;
  }

  channelInfo(tag: string): ChannelInfo | null {
    return this.state.channels.get(tag)?.info() ?? null;
  }

  /**
   * The publisher keys registered on a channel, in ascending bytewise order (equal
   * registries give equal lists), or null when there is no such channel. What subscribers
   * of crash-fault channels filter deliveries by (QUERY "publishers").
   */
  registeredPublishers(tag: string): Uint8Array[] | null {
    const channel = this.state.channels.get(tag);
    return channel === undefined ? null : sortedKeys(channel.publishers);
  }

  /** Every channel, in tag order. */
  listChannels(): ChannelInfo[] {
    return this.sortedTags().map((tag) => (this.state.channels.get(tag) as Channel).info());
  }

  private sortedTags(): readonly string[] {
    if (this.tagOrder === null) this.tagOrder = [...this.state.channels.keys()].sort();
    return this.tagOrder;
  }

  // ---------------------------------------------------------------------------------
  // Snapshot and digest (replicated part only)
  // ---------------------------------------------------------------------------------

  /**
   * The digest of the replicated state: equal on every replica that applied the same
   * decided inputs. O(channels): each total-order log contributes its chain head, and
   * channel metadata digests are cached until the metadata changes.
   */
  digest(): Uint8Array {
    return stateDigest(this.hash, this.state);
  }

  /** A chunked, canonical export of the replicated state as it is now. */
  exportSnapshot(): SnapshotExport {
    return exportState(this.hash, this.state);
  }

  /** The whole snapshot in one buffer (see snapshotBytesBound for its size). */
  snapshot(): Uint8Array {
    return this.exportSnapshot().all();
  }

  /** Starts an incremental restore; feed it chunks, then pass it to `installSnapshot`. */
  beginRestore(): SnapshotImport {
    return new SnapshotImport(this.hash, this.config);
  }

  /**
   * Replaces the replicated state with a completed import. The caller checks the
   * imported digest against the certified checkpoint digest first. Unordered channels
   * keep their local store when the same channel (tag and generation) survives.
   */
  installSnapshot(imported: SnapshotImport): SnapshotResult {
    const finished = imported.finish();
    if (!finished.ok) return finished;
    const membership = imported.state().membership;
    if (membership !== null && this.members === null)
      return { ok: false, reason: "invalid snapshot: it carries a membership this machine does not manage" };
    const next = imported.take();
    this.members?.install(membership);
    for (const [tag, channel] of next.channels) {
      const previous = this.state.channels.get(tag);
      if (channel.isOrdered || previous === undefined || previous.generation !== channel.generation) continue;
      channel.log = previous.log;
      for (const [publisher, window] of previous.dedupe) channel.dedupe.set(publisher, window);
    }
    this.state = next;
    this.tagOrder = null;
    return { ok: true };
  }

  /** Restores from a whole snapshot; on failure the current state is left unchanged. */
  restore(bytes: Uint8Array): SnapshotResult {
    const importer = this.beginRestore();
    const pushed = importer.push(bytes);
    if (!pushed.ok) return pushed;
    return this.installSnapshot(importer);
  }
}
