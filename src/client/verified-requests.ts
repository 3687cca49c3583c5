/**
 * A client's memo of the publisher signatures its subscriptions checked in shared EVENTS
 * frames. One such frame hands the same batch to several subscriptions of one channel (a
 * relay serving many `nc` subscribers, a collector), and each subscription's voter checks
 * the batch's signature: an ed25519 check over the whole body, the largest cost of such a
 * client. This remembers each check's answer by the body it was made over, the very array
 * the frame's subscriptions share (weakly held: an answer goes with its frame), and answers
 * a later check of that array with the same signature and key from memory. Exact: the array
 * is never a handler's (a subscription hands its handler a copy of a shared batch), so its
 * bytes are those that were checked. Any other array is checked as before.
 */
import { bytesEqual } from "../../wire/bytes.ts";
import type { VerifyRequest } from "../core/voting/delivery-voter.ts";

export class VerifiedRequests {
  private readonly known = new WeakMap<Uint8Array, { readonly sig: Uint8Array; readonly publisher: Uint8Array; readonly ok: boolean }>();
  private checks = 0;

  /** `check`: the signature check itself. */
  constructor(private readonly check: VerifyRequest) {}

  /** `check`'s answer for a body shared by several subscriptions (remembered). */
  verifyShared(body: Uint8Array, sig: Uint8Array, publisher: Uint8Array): boolean {
    const known = this.known.get(body);
    if (known !== undefined && bytesEqual(known.sig, sig) && bytesEqual(known.publisher, publisher)) return known.ok;
    this.checks++;
    const ok = this.check(body, sig, publisher);
    this.known.set(body, { sig: sig.slice(), publisher: publisher.slice(), ok });
    return ok;
  }

  /** Signatures of shared bodies actually checked (not answered from memory). */
  get checked(): number {
    return this.checks;
  }
}
