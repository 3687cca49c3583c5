/**
 * Who waits for which ordered request, and the replies kept for retransmissions. A
 * client's ordered request waits here from ingress until it executes (or the core
 * refuses it); the reply then goes to every session that sent it, and is kept so that a
 * retransmission after a lost reply gets it again instead of REPLAY (which would make the
 * client publish the same events again under new numbers). Both are bounded.
 */
import { bytesEqual } from "../../wire/bytes.ts";
import type { Reply } from "../../wire/schemas.ts";
import type { ClientSession } from "./server.ts";

/** Requests of one client connection waiting for their decision; more are refused. */
export const WAITING_PER_SESSION_MAX = 4096;
/**
 * Replies kept for answering duplicates of executed requests: the latest of each space,
 * enough to cover a client's requests in flight, and a bound on all of them together.
 */
export const REPLIES_PER_SPACE_MAX = 64;
export const REPLY_CACHE_ENTRIES_MAX = 200_000;

interface CachedReply {
  readonly seq: number;
  readonly digest: Uint8Array;
  readonly reply: Reply;
}

/** What a request just received should get: its cached reply, REPLAY, or a place in line. */
export type Arrival =
  | { readonly t: "cached"; readonly reply: Reply }
  | { readonly t: "replay" }
  | { readonly t: "too-many" }
  | { readonly t: "waiting" };

export class WaitingRequests {
  /** Sessions waiting for a decided request's reply, by `space#seq`. */
  private readonly waiting = new Map<string, Set<ClientSession>>();
  private readonly bySession = new Map<number, Set<string>>();
  /** sha256 of each waiting request's body, to answer a refusal with the digest the client matches on. */
  private readonly digests = new Map<string, Uint8Array>();
  /** When each waiting request first arrived (ms, the caller's clock), for the publish-to-ack histogram. */
  private readonly arrivals = new Map<string, number>();
  /** Per space, its latest replies by seq, in execution order; spaces in least-recent order. */
  private readonly replies = new Map<string, Map<number, CachedReply>>();
  private cachedReplies = 0;

  /** Records that `session` waits for (space, seq), unless it executed already or the session is at its bound. */
  arrive(session: ClientSession, space: string, seq: number, digest: Uint8Array, nowMs = 0): Arrival {
    const recent = this.replies.get(space);
    const latest = recent === undefined ? 0 : (Array.from(recent.keys()).at(-1) ?? 0);
    if (seq <= latest) {
      const cached = recent?.get(seq);
      return cached !== undefined && bytesEqual(cached.digest, digest) ? { t: "cached", reply: cached.reply } : { t: "replay" };
    }
    const key = keyOf(space, seq);
    const mine = this.bySession.get(session.id) ?? new Set<string>();
    if (mine.size >= WAITING_PER_SESSION_MAX && !mine.has(key)) return { t: "too-many" };
    mine.add(key);
    this.bySession.set(session.id, mine);
    const set = this.waiting.get(key) ?? new Set<ClientSession>();
    set.add(session);
    this.waiting.set(key, set);
    this.digests.set(key, digest);
    if (!this.arrivals.has(key)) this.arrivals.set(key, nowMs);
    return { t: "waiting" };
  }

  /** The request executed: keeps its reply, and returns the sessions that wait for it and when it arrived (null: none waits). */
  executed(space: string, seq: number, digest: Uint8Array, reply: Reply): { sessions: readonly ClientSession[]; arrivedMs: number | null } {
    this.cache(space, { seq, digest, reply });
    const key = keyOf(space, seq);
    const arrivedMs = this.arrivals.get(key) ?? null;
    return { sessions: this.take(key), arrivedMs };
  }

  /** The reply kept for (space, seq), if any. */
  cached(space: string, seq: number): Reply | null {
    return this.replies.get(space)?.get(seq)?.reply ?? null;
  }

  /** Stops waiting for (space, seq): the sessions that waited, and the digest they sent. */
  take(key: string): ClientSession[] {
    const sessions = this.waiting.get(key);
    if (sessions === undefined) return [];
    this.waiting.delete(key);
    this.digests.delete(key);
    this.arrivals.delete(key);
    for (const session of sessions) this.bySession.get(session.id)?.delete(key);
    return [...sessions];
  }

  /** The digest of the waiting request (space, seq), or null if none waits. */
  digestOf(space: string, seq: number): Uint8Array | null {
    return this.digests.get(keyOf(space, seq)) ?? null;
  }

  /** The session closed: it waits for nothing any more. */
  dropSession(session: ClientSession): void {
    const keys = this.bySession.get(session.id);
    if (keys === undefined) return;
    for (const key of keys) {
      const set = this.waiting.get(key);
      set?.delete(session);
      if (set !== undefined && set.size === 0) {
        this.waiting.delete(key);
        this.digests.delete(key);
        this.arrivals.delete(key);
      }
    }
    this.bySession.delete(session.id);
  }

  private cache(space: string, cached: CachedReply): void {
    let recent = this.replies.get(space);
    if (recent === undefined) recent = new Map();
    else this.replies.delete(space);
    this.replies.set(space, recent);
    if (!recent.has(cached.seq)) this.cachedReplies++;
    recent.set(cached.seq, cached);
    if (recent.size > REPLIES_PER_SPACE_MAX) {
      recent.delete(recent.keys().next().value as number);
      this.cachedReplies--;
    }
    while (this.cachedReplies > REPLY_CACHE_ENTRIES_MAX) {
      const oldest = this.replies.keys().next().value as string;
      this.cachedReplies -= this.replies.get(oldest)?.size ?? 0;
      this.replies.delete(oldest);
    }
  }
}

export function keyOf(space: string, seq: number): string {
  return `${space}#${seq}`;
}
