/**
 * What a replica takes from a peer's FORWARD: only requests it would take from its own
 * clients, from registered publishers of the tag or from admin keys. A replica whose
 * channel state is behind a fresh 'register' drops a request it cannot judge yet; the
 * client's own replica, and the client's retransmissions, bring it again. Without this a
 * lying replica could fill the pending pool with requests of keys it made (a key costs
 * nothing), and every ordered publish would be refused OVERLOADED.
 */
import type { Forward } from "../core/ordering/messages.ts";
import { ADMIN_SPACE } from "./requests.ts";

/** The FORWARD with only the admissible requests (the same object when all are). */
export function admissibleForwards(
  msg: Forward,
  adminKeys: ReadonlySet<string>,
  isPublisher: (tag: string, keyHex: string) => boolean,
): Forward {
  const requests = msg.requests.filter((req) => {
    const colon = req.client.indexOf(":");
    // Every space the runtime makes is "<key hex>:<tag or !admin>" (requests.ts, spaceOf).
    if (colon !== 64) return false;
    const hex = req.client.slice(0, colon);
    const space = req.client.slice(colon + 1);
    if (space === ADMIN_SPACE) return adminKeys.has(hex);
    return isPublisher(space, hex);
  });
  return requests.length === msg.requests.length ? msg : { t: "FORWARD", requests };
}
