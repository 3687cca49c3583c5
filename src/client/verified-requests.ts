/**
 * A client's memo of the publisher signatures its subscriptions checked. A client with
 * several subscriptions of one channel (a relay serving many `nc` subscribers, a collector)
 * gets every batch once per subscription, and each subscription's voter checks the
 * batch's signature: an ed25519 check over the whole body, the largest cost of such a
 * client. This remembers each check's answer by signature, with copies of the body and
 * key it was made over, and answers a later check of the same bytes by comparing them,
 * which gives exactly the answer the check would. Bounded in entries and bytes, the oldest
 * forgotten first: a replica that sends made-up copies can only make it forget, which
 * costs a check, as without it.
 */
import { BoundedMap } from "../../wire/bounded-map.ts";
import { bytesEqual, toHex } from "../../wire/bytes.ts";
import type { VerifyRequest } from "../core/voting/delivery-voter.ts";

/** Checks remembered at most, and bytes of the bodies they were made over. */
export const VERIFIED_REQUESTS_MAX = 1024;
export const VERIFIED_REQUESTS_BYTES_MAX = 8 * 1024 * 1024;

export class VerifiedRequests {
  private readonly known = new BoundedMap<string, { readonly body: Uint8Array; readonly publisher: Uint8Array; readonly ok: boolean }>(
    VERIFIED_REQUESTS_MAX,
    VERIFIED_REQUESTS_BYTES_MAX,
  );
  private checks = 0;

  /** `check`: the signature check itself; `sameBytes`: the runtime's native comparison, this loop by default. */
  constructor(
    private readonly check: VerifyRequest,
    private readonly sameBytes: (a: Uint8Array, b: Uint8Array) => boolean = bytesEqual,
  ) {}

  /** A VerifyRequest: `check`'s answer for these bytes. */
  readonly verify: VerifyRequest = (body, sig, publisher) => {
    const at = toHex(sig);
    const known = this.known.get(at);
    if (known !== undefined && this.sameBytes(known.publisher, publisher) && this.sameBytes(known.body, body)) return known.ok;
    this.checks++;
    const ok = this.check(body, sig, publisher);
    // Copies: the bytes checked may be views a handler is given and writes over.
    this.known.set(at, { body: body.slice(), publisher: publisher.slice(), ok }, body.length);
    return ok;
  };

  /** Signatures actually checked (not answered from the memo). */
  get checked(): number {
    return this.checks;
  }

  /** Forgets every answer (a client with no subscriptions left keeps none). */
  clear(): void {
    this.known.clear();
  }
}
