/**
 * Reading a replica's frames on the client's side: the wire's decodeFrameBody, but a
 * QUERY_REPLY, whose `res` is open (wire/PROTOCOL.md 4.9), decoded with a bound of its
 * own. Up to f replicas may be compromised, and the wire layer bounds such a frame by its
 * size alone: one replica could have a client decode a frame of four million empty arrays
 * (4 MiB) in answer to every query, four million allocations each. The bound is what the
 * largest answer a correct replica gives holds, from the limits that replicas enforce;
 * a frame past it is that replica's fault, dropped and counted like any frame that does
 * not decode (connection.ts, onUndecodable), and the query settles on the other replicas.
 */
import { decodeFrameBody, FRAME_ITEMS_MAX, type FrameResult } from "../../wire/schemas.ts";
import { FrameType, REPLICAS_MAX } from "../../wire/types.ts";
import { CHANNELS_MAX, KEYS_PER_CHANNEL_MAX, QUOTAS_MAX } from "../core/channels/constants.ts";

/**
 * Values (decodeCanonical's items: every CBOR item but a map key) one channel map of a
 * list-channels or channel-info answer may hold: 16 now (the map, its 12 fields, and
 * `retention`'s 3: PROTOCOL.md section 8), twice that for fields a later version adds (a
 * result map MAY carry more).
 */
export const LISTED_CHANNEL_ITEMS_MAX = 32;
/** One entry of a quotas answer: 5 now (the map, `key` and three limits), doubled likewise. */
export const QUOTA_ITEMS_MAX = 10;
/** One member of a members answer: 6 now (the map, `id`, `host`, `port`, `peerPort`, `key`), doubled likewise. */
export const MEMBER_ITEMS_MAX = 12;

/**
 * The most values a correct replica's `res` holds: the largest of list-channels with
 * CHANNELS_MAX channels (131,072: far the largest), quotas with QUOTAS_MAX keys, a
 * channel-info with both key lists full, and members with a pending change (two groups of
 * REPLICAS_MAX). client-seq is one number, and status a few thousand at most (REPLICAS_MAX
 * peers, a row per channel with metrics of its own, capped at 200 by the replica).
 */
export const QUERY_RESULT_ITEMS_MAX = Math.max(
  CHANNELS_MAX * LISTED_CHANNEL_ITEMS_MAX,
  QUOTAS_MAX * QUOTA_ITEMS_MAX,
  2 * KEYS_PER_CHANNEL_MAX + LISTED_CHANNEL_ITEMS_MAX,
  2 * REPLICAS_MAX * MEMBER_ITEMS_MAX,
);
/** A QUERY_REPLY: its own fixed fields (FRAME_ITEMS_MAX, as for any frame) and its `res`. */
export const QUERY_REPLY_ITEMS_MAX = QUERY_RESULT_ITEMS_MAX + FRAME_ITEMS_MAX;

/**
 * Decodes and validates one frame payload from a replica, as decodeFrameBody does. Never
 * throws. A QUERY_REPLY stops at QUERY_REPLY_ITEMS_MAX values (`malformed-cbor`,
 * "items-exceeded"); every other frame type has its bound in the wire layer (frameItemsMax).
 */
export function decodeReplicaFrame(type: number, payload: Uint8Array): FrameResult {
  return decodeFrameBody(type, payload, type === FrameType.QUERY_REPLY ? QUERY_REPLY_ITEMS_MAX : undefined);
}
