/**
 * Request admission on the replica: decoding a REQUEST frame's signed body, checking the
 * client's signature, and naming the request's sequence space.
 *
 * A client's sequence numbers are per space: one space per (client key, tag) for
 * publishes and one per client key for admin commands. Separate spaces keep a publisher
 * of several channels, some ordered and some not, from leaving gaps in any one ordered
 * stream (the ordering core executes each space's requests with no gap).
 */
import { PRIORITIES, type Priority } from "../core/channels/types.ts";
import type { ClientRequest } from "../core/ordering/messages.ts";
import { URGENCY_MAX } from "../core/ordering/priority.ts";
import { verify } from "../crypto/ed25519.ts";
import { toHex } from "../crypto/encoding.ts";
import { sha256 } from "../crypto/hash.ts";
import { BoundedMap } from "../../wire/bounded-map.ts";
import { decodeRequestBody, type Request, type SignedRequest } from "../../wire/schemas.ts";
import { CLIENT_CLOCK_SKEW_MS_MAX } from "../../wire/types.ts";
import { requestSignedBytes } from "../../wire/session.ts";

/**
 * How far a publish's signed timestamp may be from the clock of the replica that takes it
 * from the client, either way (CLIENT_CLOCK_SKEW_MS_MAX). On a total-order channel that
 * timestamp is the event's stored time and the "now" of age retention on every replica,
 * so a publisher free to choose it could stamp a request far in the future and age out
 * everyone's events, or far in the past and have its own acknowledged events trimmed at
 * once; on any channel, live subscribers use it to refuse old events replayed to them.
 */
export { CLIENT_CLOCK_SKEW_MS_MAX };

/**
 * The bound every replica applies to requests it did not take from the client itself
 * (forwarded, or inside a leader's proposal): no more than this far in the future. Wider
 * than CLIENT_CLOCK_SKEW_MS_MAX by what correct replicas' clocks may differ. Once met it
 * stays met as time passes, so a request that waited in a queue is never refused later.
 * The past needs no bound there: an old timestamp only ages out its own events.
 */
export const PROPOSED_FUTURE_MS_MAX = CLIENT_CLOCK_SKEW_MS_MAX + 60_000;

/** Why a publish's timestamp is refused at the client's replica, or null if it is within bounds. */
export function clockSkewProblem(request: Request, nowMs: number): string | null {
  if (request.op.t !== "pub") return null;
  const aheadMs = request.ts - nowMs;
  if (Math.abs(aheadMs) <= CLIENT_CLOCK_SKEW_MS_MAX) return null;
  const seconds = Math.round(Math.abs(aheadMs) / 1000);
  const direction = aheadMs > 0 ? "ahead of" : "behind";
  return `the request's timestamp is ${seconds} s ${direction} this replica's clock (at most ${CLIENT_CLOCK_SKEW_MS_MAX / 1000} s allowed); check the publishing host's clock`;
}

/** The space name of admin commands; '!' never appears in a tag. */
export const ADMIN_SPACE = "!admin";

export function spaceOf(clientHex: string, request: Request): string {
  return request.op.t === "admin" ? `${clientHex}:${ADMIN_SPACE}` : `${clientHex}:${request.op.tag}`;
}

/**
 * How urgent a client space's requests are, for the leader's batch fill (core/ordering
 * priority.ts): its channel's priority (low 0 .. critical 3); admin commands are the most
 * urgent (revoking a key during an attack must not wait behind the attack).
 */
export function urgencyOfSpace(space: string, priorityOf: (tag: string) => Priority | null): number {
  const tag = space.slice(space.indexOf(":") + 1);
  if (tag === ADMIN_SPACE) return URGENCY_MAX;
  const priority = priorityOf(tag);
  return priority === null ? 0 : PRIORITIES.indexOf(priority);
}

/** A request refused at admission, and why. */
export type Refused = {
  readonly ok: false;
  readonly code: "BAD_REQUEST" | "BAD_SIGNATURE" | "BAD_VERSION" | "UNAUTHORIZED" | "RATE_LIMITED" | "OUT_OF_ORDER";
  readonly reason: string;
  /** The request's seq, when it was decoded before the refusal. */
  readonly seq?: number;
  /** Judged on this replica's channel state (its reply carries `at`, PROTOCOL.md 6.3), and the channel's tag. */
  readonly local?: { readonly seq: number; readonly tag: string };
};

export type Admission = { readonly ok: true; readonly request: Request; readonly clientHex: string; readonly space: string } | Refused;

/**
 * Decodes and verifies a signed request. Pure apart from the signature check. With
 * `sessionKeyHex` (a client session's own key), a request of another key is refused
 * before its signature costs a verification: a session speaks only for its own key, and
 * a subscriber replaying a publisher's signed bodies must not cost the replica a verify
 * each, nor use up that publisher's rate.
 */
export function admitRequest(
  signed: SignedRequest,
  sessionKeyHex?: string,
  beforeVerify?: (request: Request) => Refused | null,
): Admission {
  const admitted = admitUnverified(signed, sessionKeyHex, beforeVerify);
  if (!admitted.ok) return admitted;
  const covered = requestSignedBytes(admitted.request.v, signed.body, () => bodyDigestOf(signed.body));
  if (!verify(admitted.request.client, covered, signed.sig)) return BAD_SIGNATURE;
  return admitted;
}

/** The refusal of a request whose signature does not verify. */
export const BAD_SIGNATURE: Refused = {
  ok: false,
  code: "BAD_SIGNATURE",
  reason: "the request signature does not verify for its client key",
};

/**
 * Everything admitRequest checks but the signature: the caller verifies it (on a
 * verification thread, src/threads/verify-pool.ts) before acting on the request.
 */
export function admitUnverified(
  signed: SignedRequest,
  sessionKeyHex?: string,
  beforeVerify?: (request: Request) => Refused | null,
): Admission {
  const decoded = decodeRequestBody(signed.body);
  if (!decoded.ok) {
    const code = decoded.error.kind === "bad-version" ? "BAD_VERSION" : "BAD_REQUEST";
    return { ok: false, code, reason: decoded.error.reason };
  }
  const request = decoded.request;
  if (sessionKeyHex !== undefined && toHex(request.client) !== sessionKeyHex) {
    return { ok: false, code: "UNAUTHORIZED", reason: "requests must be signed by the key this session authenticated with" };
  }
  // What the session's own key may not do is refused before its signature costs a
  // verification (the session is authenticated as that key: a refusal says nothing the
  // signature would change), so a key flooding requests it may not make costs little.
  const early = sessionKeyHex === undefined ? null : (beforeVerify?.(request) ?? null);
  if (early !== null) return early;
  const clientHex = toHex(request.client);
  return { ok: true, request, clientHex, space: spaceOf(clientHex, request) };
}

/**
 * Checks a request the ordering core holds (from a client, a peer's forward or a proposal):
 * the client's signature verifies over the body and the header's space, seq and span are
 * the body's. Returns the time the request stamps (a publish's `ts`; -Infinity for an
 * admin command, which stamps none), or null if it is not valid. The stamp is judged
 * apart (`stampWithinBound`), against the time the core names.
 */
export function verifiedStamp(req: ClientRequest): number | null {
  const admitted = admitRequest({ body: req.body, sig: req.sig });
  if (!admitted.ok) return null;
  if (admitted.space !== req.client || admitted.request.seq !== req.seq || admitted.request.span !== req.span) return null;
  return stampOf(admitted.request);
}

/**
 * Whether a request stamped `stampMs` may be ordered at `atMs`: the timestamp of the
 * proposal that carries it (so every correct replica judges it the same way, whatever its
 * own clock says), or this replica's clock for a request it takes into its own pool. No
 * more than PROPOSED_FUTURE_MS_MAX ahead; monotonic in `atMs`, so a request that waited in
 * a queue is never refused later.
 */
export function stampWithinBound(stampMs: number, atMs: number): boolean {
  return stampMs <= atMs + PROPOSED_FUTURE_MS_MAX;
}

/** Whether a request the ordering core holds is valid at `atMs` (verifiedStamp, then stampWithinBound). */
export function clientRequestValid(req: ClientRequest, atMs: number): boolean {
  const stamp = verifiedStamp(req);
  return stamp !== null && stampWithinBound(stamp, atMs);
}

/**
 * sha256 of request bodies, by body object. A body is hashed when its request arrives
 * (the reply names it), for the verified-signature cache when the core admits it and
 * when a proposal carrying it is checked, and again when it executes; the same bytes
 * object travels that whole way on the replica that received it, and from the proposal
 * to execution on the others. Bodies are views into received frames that are never
 * written again (wire/canonical.ts), so a hit is the digest of the same bytes.
 */
const bodyDigests = new WeakMap<Uint8Array, Uint8Array>();

/** sha256 of a request body, computed once per body object. */
export function bodyDigestOf(body: Uint8Array): Uint8Array {
  let digest = bodyDigests.get(body);
  if (digest === undefined) {
    digest = sha256(body);
    bodyDigests.set(body, digest);
  }
  return digest;
}

/** A key naming every byte clientRequestValid looked at: header, body and signature (`bodyDigest`: sha256 of the body, if already known). */
export function verifiedCacheKey(req: ClientRequest, bodyDigest: Uint8Array = bodyDigestOf(req.body)): string {
  return `${req.client}#${req.seq}#${req.span}#${toHex(bodyDigest)}#${toHex(req.sig)}`;
}

/** The stamp verifiedStamp gives a request already decoded and verified (a publish's `ts`; -Infinity for admin). */
export function stampOf(request: Request): number {
  return request.op.t === "pub" ? request.ts : Number.NEGATIVE_INFINITY;
}

/** Verified request signatures remembered, so a request is verified once, not per proposal. */
export const VERIFIED_CACHE_MAX = 65_536;

/**
 * The ordering core's request check (its `verifyRequest`), with the answers remembered
 * (bounded, oldest forgotten first), keyed by every byte the check looked at: a leader
 * that kept a verified signature and swapped the body must not hit the cache. The runtime
 * remembers what it verified itself before submitting (`remember`); the core's own check
 * covers forwarded and proposed requests. One per ordering core host: the event loop's
 * driver, or the ordering thread (src/replica/ordering-worker.ts).
 */
export class VerifiedRequests {
  private readonly stamps = new Map<string, number>();

  remember(cacheKey: string, stamp: number): void {
    this.stamps.set(cacheKey, stamp);
    if (this.stamps.size > VERIFIED_CACHE_MAX) this.stamps.delete(this.stamps.keys().next().value as string);
  }

  /** Whether `req` is valid at `atMs` (or at `nowMs` when the core names no time). */
  check(req: ClientRequest, atMs: number | null, nowMs: () => number): boolean {
    const cacheKey = verifiedCacheKey(req);
    let stamp = this.stamps.get(cacheKey);
    if (stamp === undefined) {
      const checked = verifiedStamp(req);
      if (checked === null) return false;
      stamp = checked;
      this.remember(cacheKey, stamp);
    }
    return stampWithinBound(stamp, atMs ?? nowMs());
  }
}

/** Entries DecodedRequests keeps at most. */
export const DECODED_ENTRIES_MAX = 4096;
/** Memory DecodedRequests keeps at most, counted as body bytes plus DECODED_EVENT_BYTES per event. */
export const DECODED_BYTES_MAX = 32 * 1024 * 1024;
/**
 * What one decoded event costs beyond its bytes in the body: its Uint8Array object
 * (about 73 bytes of heap measured on Bun, rounded up). An event may be empty, so
 * counting bodies alone would let 1 MB of bodies hold 70 MB of objects.
 */
export const DECODED_EVENT_BYTES = 96;

/**
 * Requests decoded at admission, by the digest of their body, for execution to take
 * instead of decoding the same bytes again: a publish of a thousand events takes a
 * fraction of a millisecond to decode and validate, at every replica, and a replica that
 * admitted it from the client has it decoded already. The digest is SHA-256 of the
 * bytes, so a hit is the decoding of the very bytes decided. Bounded in entries and in
 * memory (bodies and their events' objects): past either the oldest go, and execution
 * decodes as it would without them. A request the ordering core refuses is forgotten.
 */
export class DecodedRequests {
  private readonly byDigest: BoundedMap<string, Request>;

  constructor(entriesMax: number = DECODED_ENTRIES_MAX, bytesMax: number = DECODED_BYTES_MAX) {
    this.byDigest = new BoundedMap(entriesMax, bytesMax);
  }

  get entriesMax(): number {
    return this.byDigest.entriesMax;
  }

  get bytesMax(): number {
    return this.byDigest.bytesMax;
  }

  get size(): number {
    return this.byDigest.size;
  }

  /** Memory counted for what is kept (bodies and DECODED_EVENT_BYTES per event). */
  get keptBytes(): number {
    return this.byDigest.heldBytes;
  }

  /** Keeps `request`, the decoding of a body of `bodyBytes` bytes whose SHA-256 is `bodyDigest`. */
  keep(bodyDigest: Uint8Array, bodyBytes: number, request: Request): void {
    const events = request.op.t === "pub" ? request.op.events.length : 1;
    this.byDigest.set(toHex(bodyDigest), request, bodyBytes + events * DECODED_EVENT_BYTES);
  }

  /** The request kept for a body of this digest, removed; undefined when none is. */
  take(bodyDigest: Uint8Array): Request | undefined {
    const key = toHex(bodyDigest);
    const request = this.byDigest.get(key);
    this.byDigest.delete(key);
    return request;
  }

  /** Forgets the request kept for a body of this digest, if any (the core refused it). */
  forget(bodyDigest: Uint8Array): void {
    this.byDigest.delete(toHex(bodyDigest));
  }
}
