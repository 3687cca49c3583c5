/**
 * The bodies of shared EVENTS frames a client received, and what its subscriptions made
 * of them. One shared frame hands the same batch, the very same array, to several
 * subscriptions of one channel (a relay serving many `nc` subscribers, a collector), and
 * each subscription's voter reads the body and checks its publisher signature (for a body
 * of version 1 an ed25519 check over the whole body, the largest cost of such a client;
 * for version 2 a SHA-256 of it and a check over that). This remembers both, by
 * that array (weakly held: what is remembered goes with its frame), so a batch is read and
 * checked once for all of them. Exact: a shared body is never a handler's (a subscription
 * hands its handler a copy of a shared batch: `has`), so its bytes stay those that were
 * read and checked. Any other array is read and checked as before.
 */
import { bytesEqual } from "../../wire/bytes.ts";
import { REQUEST_BODY_ITEMS_MAX } from "../../wire/schemas.ts";
import { requestSignedBytes } from "../../wire/session.ts";
import { type ParsedBody, parseBody, type VerifyRequest } from "../core/voting/delivery-voter.ts";
import { verify } from "../crypto/ed25519.ts";
import { sha256 } from "../crypto/hash.ts";

/** A publisher's signature check, of either body version (wire/session.ts requestSignedParts). */
export const checkRequestSignature: VerifyRequest = (body, sig, publisher, version) =>
  verify(
    publisher,
    requestSignedBytes(version, body, () => sha256(body)),
    sig,
  );

/**
 * The voters' parseBody, decoding at most the values a valid body holds (REQUEST_BODY_ITEMS_MAX,
 * the bound replicas read a request with, so every body a correct replica stores fits). A
 * copy comes from one replica and is read before its signature is checked: without the
 * bound a faulty replica's body of two million empty arrays (2 MiB) would cost the client
 * two million allocations per copy before it is found invalid.
 */
export function readBody(body: Uint8Array): ParsedBody {
  return parseBody(body, REQUEST_BODY_ITEMS_MAX);
}

export class SharedBodies {
  private readonly bodies = new WeakSet<Uint8Array>();
  private readonly checks = new WeakMap<
    Uint8Array,
    { readonly sig: Uint8Array; readonly publisher: Uint8Array; readonly version: number; readonly ok: boolean }
  >();
  private readonly reads = new WeakMap<Uint8Array, ParsedBody>();
  private checked = 0;
  private read = 0;

  /** `check`: the signature check itself. */
  constructor(private readonly check: VerifyRequest) {}

  /** `body` came in a shared frame: several subscriptions are handed this array. */
  mark(body: Uint8Array): void {
    this.bodies.add(body);
  }

  has(body: Uint8Array): boolean {
    return this.bodies.has(body);
  }

  /** A VerifyRequest: `check`'s answer, remembered for a shared body. */
  readonly verify: VerifyRequest = (body, sig, publisher, version) => {
    if (!this.bodies.has(body)) return this.check(body, sig, publisher, version);
    const known = this.checks.get(body);
    if (known !== undefined && known.version === version && bytesEqual(known.sig, sig) && bytesEqual(known.publisher, publisher)) {
      return known.ok;
    }
    this.checked++;
    const ok = this.check(body, sig, publisher, version);
    // Copies: the signature and key arrays are views a handler may be given.
    this.checks.set(body, { sig: sig.slice(), publisher: publisher.slice(), version, ok });
    return ok;
  };

  /** The voters' body reader: readBody's answer, remembered for a shared body. Voters only read it. */
  readonly parse = (body: Uint8Array): ParsedBody => {
    if (!this.bodies.has(body)) return readBody(body);
    const known = this.reads.get(body);
    if (known !== undefined) return known;
    this.read++;
    const parsed = readBody(body);
    this.reads.set(body, parsed);
    return parsed;
  };

  /** Signatures of shared bodies checked, and shared bodies read (not answered from memory). */
  get counts(): { readonly checked: number; readonly read: number } {
    return { checked: this.checked, read: this.read };
  }
}
