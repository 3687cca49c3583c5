/**
 * Helpers over client requests shared by the replica-side state machine and the
 * subscriber-side voter: the digest that identifies a signed request, and a structural
 * reading of a decoded pub request for code (the subscriber) that receives raw bodies.
 */
import { type Canonical, withCanonical } from "../../../wire/canonical.ts";
import { DOMAIN_REQUEST } from "../../../wire/types.ts";
import { PUBLIC_KEY_BYTES } from "./constants.ts";
import type { FaultModel, HashFn, PubRequest, SignedRequest } from "./types.ts";

/** The domain tag version 1 request signatures are made under (the wire's DOMAIN_REQUEST; version 2: DOMAIN_REQUEST_DIGEST over the body's SHA-256). */
export const REQUEST_SIGNATURE_DOMAIN: string = DOMAIN_REQUEST;

/**
 * The digest of a signed request: SHA-256 of `encodeCanonical({ body, sig })`. It binds
 * the body and its signature, so two copies with equal digests are the same bytes; the
 * subscriber votes on it and the channel log chains it.
 */
export function signedRequestDigest(hash: HashFn, signed: SignedRequest): Uint8Array {
  return withCanonical({ body: signed.body, sig: signed.sig }, hash);
}

function isPlainMap(value: Canonical | undefined): value is { [key: string]: Canonical } {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array);
}

function isSafeIntAtLeast(value: Canonical | undefined, min: number): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= min;
}

function readEvents(value: Canonical | undefined, span: number): Uint8Array[] | null {
  if (!Array.isArray(value) || value.length !== span) return null;
  const events: Uint8Array[] = [];
  for (const event of value) {
    if (!(event instanceof Uint8Array)) return null;
    events.push(event);
  }
  return events;
}

/**
 * Reads a decoded request body as a pub request, or null when it is anything else or
 * malformed (wrong version, key length, span not matching the events, a publisher seq
 * range past the safe integers). Fields beyond the model are ignored: the signature, not
 * this reading, is what makes the body authentic.
 */
export function parsePubRequest(value: Canonical): PubRequest | null {
  if (!isPlainMap(value)) return null;
  const { v, client, seq, span, ts, op } = value;
  if (v !== 1 && v !== 2) return null;
  if (!(client instanceof Uint8Array) || client.length !== PUBLIC_KEY_BYTES) return null;
  if (!isSafeIntAtLeast(seq, 1) || !isSafeIntAtLeast(span, 1) || !isSafeIntAtLeast(ts, 0)) return null;
  if (!Number.isSafeInteger(seq + span - 1)) return null;
  if (!isPlainMap(op) || op["t"] !== "pub") return null;
  const tag = op["tag"];
  if (typeof tag !== "string") return null;
  const events = readEvents(op["events"], span);
  if (events === null) return null;
  return { v, client, seq, span, ts, op: { t: "pub", tag, events } };
}

/**
 * Why a subscription from `from` on an unordered channel is refused, or null when it is
 * not: there only 0 (every retained event) or no `from` (live) has a meaning, since each
 * replica numbers its own store (wire/PROTOCOL.md 4.10). The client and the replica say it
 * in the same words.
 */
export function unorderedFromProblem(tag: string, fault: FaultModel, from: number | undefined): string | null {
  if (from === undefined || from <= 0) return null;
  return `from ${from} on ${tag}, an unordered channel (${fault}/none): there only from 0 (every retained event) or no from (live) has a meaning, since each replica numbers its own store`;
}
