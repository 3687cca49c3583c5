/**
 * The gate in front of client signature verification: what a key or a source address may
 * make this replica verify, and who may not connect for a while.
 *
 * - **Budgets.** Every request that would be verified is first charged to its client key
 *   and to the session's remote address (token buckets: KEY_VERIFICATIONS_PER_SECOND_MAX,
 *   burst two seconds' worth; ADDRESS_VERIFICATIONS_PER_SECOND_MAX likewise). One over
 *   either budget is refused RATE_LIMITED with a reason naming the budget, before its
 *   signature costs anything; the caller also pauses the session's reads for
 *   OVER_BUDGET_PAUSE_MS, doubling while it stays over (up to OVER_BUDGET_PAUSE_MS_MAX), so
 *   a key writing at full speed is slowed by TCP instead of costing a refusal per request.
 *   A correct client's requests carry up to batch_events_max events each, far under these
 *   rates.
 * - **Blacklist.** A session whose request signature does not verify, or that sends a frame
 *   that does not decode or is over the size limit, proves its sender hostile or broken: its
 *   key is blacklisted for KEY_BLACKLIST_MS and its remote address for ADDRESS_BLACKLIST_MS
 *   (shorter: an address may be shared). Connections from a blacklisted address, and
 *   sessions of a blacklisted key, are refused at the handshake with UNAUTHORIZED and a
 *   reason saying why and for how long (server.ts answers an address at most once a
 *   second and holds its other connections open and unread in the tarpit, tarpit.ts).
 *
 * Every map is bounded (the oldest entry goes first). The replica calls `beforeVerify` at
 * one point, just before a request's signature is verified, and nothing here depends on
 * how verification is done.
 */
import { fromHex } from "../../wire/bytes.ts";
import { formatPublicKey } from "../crypto/keys.ts";
import { RateLimiter } from "./rate.ts";

export const KEY_VERIFICATIONS_PER_SECOND_MAX = 2_000;
export const ADDRESS_VERIFICATIONS_PER_SECOND_MAX = 10_000;
/** Budgets allow a burst of this many seconds' worth. */
export const VERIFICATION_BURST_SECONDS = 2;
/**
 * A session over a budget is not read for this long; twice as long each time it is over
 * again before a request of it passes, up to OVER_BUDGET_PAUSE_MS_MAX.
 */
export const OVER_BUDGET_PAUSE_MS = 100;
export const OVER_BUDGET_PAUSE_MS_MAX = 5_000;
/**
 * Refusals before verification one client key's sessions may draw without being paused: a
 * burst of REFUSALS_BURST (room for a client's whole window of requests in flight refused
 * at once, say behind a gap), refilled at REFUSALS_PER_SECOND.
 */
export const REFUSALS_PER_SECOND = 100;
export const REFUSALS_BURST = 1_024;
/**
 * A refused request counts one refusal per this many bytes of its body (at least one): it
 * was decoded whole before it was refused, and a 4 MiB one costs some 13 ms. 4.75 GB of
 * refused 4 MiB requests from 8 sessions took two thirds of a core; at 64 KiB a unit a key
 * draws 64 MiB in a burst, then 6.4 MiB a second.
 */
export const REFUSAL_BYTES_PER_UNIT = 64 * 1024;
/** One address's allowance of refusals, whatever the keys, is this many keys' (keys cost nothing to make). */
export const REFUSALS_PER_ADDRESS_FACTOR = 4;
/**
 * Queries (status, list-channels, channel-info, ...) answered a second per client key, and
 * per remote address whatever the keys, past bursts: `fitb top`, consoles and clients
 * following the group ask a few a second, a relay whose users subscribe to many tags at
 * once a channel-info each; past these a query is answered OVERLOADED (the client library
 * asks again later). 8 sessions asking `status` as fast as they could (19,000 a second) took
 * two thirds of a leader's core; one address now gets at most a tenth of that.
 */
export const QUERIES_PER_KEY_PER_SECOND = 500;
export const QUERIES_PER_KEY_BURST = 2_000;
export const QUERIES_PER_ADDRESS_PER_SECOND = 2_000;
export const QUERIES_PER_ADDRESS_BURST = 10_000;
export const KEY_BLACKLIST_MS = 10 * 60_000;
export const ADDRESS_BLACKLIST_MS = 60_000;
/** Keys and addresses blacklisted at once, each; past it the oldest entry is forgotten. */
export const BLACKLIST_ENTRIES_MAX = 100_000;

export interface AdmissionLimits {
  readonly keyVerificationsPerSecondMax: number;
  readonly addressVerificationsPerSecondMax: number;
  readonly keyBlacklistMs: number;
  readonly addressBlacklistMs: number;
}

export const ADMISSION_LIMITS_DEFAULT: AdmissionLimits = {
  keyVerificationsPerSecondMax: KEY_VERIFICATIONS_PER_SECOND_MAX,
  addressVerificationsPerSecondMax: ADDRESS_VERIFICATIONS_PER_SECOND_MAX,
  keyBlacklistMs: KEY_BLACKLIST_MS,
  addressBlacklistMs: ADDRESS_BLACKLIST_MS,
};

/** A request refused at the gate: RATE_LIMITED, and why. */
export interface GateRefusal {
  readonly code: "RATE_LIMITED";
  readonly reason: string;
  /** Which budget: the `budget` label of fitb_client_verifications_refused_total. */
  readonly budget: "key" | "address";
}

/** What a blacklist entry says: why, and until when (ms). */
interface Entry {
  readonly why: string;
  readonly untilMs: number;
}

class Blacklist {
  private readonly entries = new Map<string, Entry>();

  add(id: string, why: string, untilMs: number): void {
    this.entries.delete(id);
    this.entries.set(id, { why, untilMs });
    while (this.entries.size > BLACKLIST_ENTRIES_MAX) this.entries.delete(this.entries.keys().next().value as string);
  }

  /** The entry for `id` if it is still on, else null (an expired one is removed). */
  get(id: string, nowMs: number): Entry | null {
    const entry = this.entries.get(id);
    if (entry === undefined) return null;
    if (entry.untilMs > nowMs) return entry;
    this.entries.delete(id);
    return null;
  }

  get size(): number {
    return this.entries.size;
  }
}

export class ClientAdmission {
  readonly limits: AdmissionLimits;
  private readonly byKey: RateLimiter;
  private readonly byAddress: RateLimiter;
  private readonly keys = new Blacklist();
  private readonly addresses = new Blacklist();

  constructor(
    limits: Partial<AdmissionLimits> = {},
    /** Durations only (budgets, blacklist times): performance.now, which a wall-clock step does not move. */
    private readonly now: () => number = () => performance.now(),
  ) {
    this.limits = { ...ADMISSION_LIMITS_DEFAULT, ...limits };
    for (const [name, value] of Object.entries(this.limits)) {
      if (!Number.isSafeInteger(value) || value < 1)
        throw new RangeError(`admission limit ${name} must be a positive integer, got ${value}`);
    }
    const { keyVerificationsPerSecondMax: perKey, addressVerificationsPerSecondMax: perAddress } = this.limits;
    this.byKey = new RateLimiter(perKey, perKey * VERIFICATION_BURST_SECONDS);
    this.byAddress = new RateLimiter(perAddress, perAddress * VERIFICATION_BURST_SECONDS);
  }

  /** Null when a request of `keyHex` from `address` may be verified now; else the refusal. Charges both budgets. */
  beforeVerify(keyHex: string, address: string): GateRefusal | null {
    const now = this.now();
    const { keyVerificationsPerSecondMax, addressVerificationsPerSecondMax } = this.limits;
    if (!this.byAddress.take(address, 1, now)) {
      return {
        code: "RATE_LIMITED",
        budget: "address",
        reason: `address ${address} is over this replica's budget of ${addressVerificationsPerSecondMax} signed requests a second from one address; retry later`,
      };
    }
    if (!this.byKey.take(keyHex, 1, now)) {
      return {
        code: "RATE_LIMITED",
        budget: "key",
        reason: `key ${keyText(keyHex)} is over this replica's budget of ${keyVerificationsPerSecondMax} signed requests a second per key; retry later`,
      };
    }
    return null;
  }

  /** A session of `keyHex` from `address` proved hostile (`why`): both are blacklisted. */
  blacklist(keyHex: string | null, address: string, why: string): void {
    const now = this.now();
    if (keyHex !== null) this.keys.add(keyHex, why, now + this.limits.keyBlacklistMs);
    this.addresses.add(address, why, now + this.limits.addressBlacklistMs);
  }

  /** Whether a connection from `address` is refused now (addressRefusal without making the reason). */
  isAddressBlacklisted(address: string): boolean {
    return this.addresses.get(address, this.now()) !== null;
  }

  /** Why a connection from `address` is refused now, or null. */
  addressRefusal(address: string): string | null {
    const now = this.now();
    const entry = this.addresses.get(address, now);
    if (entry === null) return null;
    return `address ${address} is blacklisted for ${seconds(this.limits.addressBlacklistMs)} s after ${entry.why} (${seconds(entry.untilMs - now)} s left)`;
  }

  /** Why a session of `keyHex` is refused now, or null. */
  keyRefusal(keyHex: string): string | null {
    const now = this.now();
    const entry = this.keys.get(keyHex, now);
    if (entry === null) return null;
    return `key ${keyText(keyHex)} is blacklisted for ${seconds(this.limits.keyBlacklistMs)} s after ${entry.why} (${seconds(entry.untilMs - now)} s left)`;
  }

  /** Entries on the blacklists (some may have expired unseen). */
  get blacklisted(): { keys: number; addresses: number } {
    return { keys: this.keys.size, addresses: this.addresses.size };
  }
}

function seconds(ms: number): number {
  return Math.max(1, Math.ceil(ms / 1000));
}

function keyText(keyHex: string): string {
  return /^[0-9a-f]{64}$/.test(keyHex) ? formatPublicKey(fromHex(keyHex)) : keyHex;
}
