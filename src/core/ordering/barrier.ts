/**
 * The external barrier a batch carries (core/ordering/PROTOCOL.md §12), with
 * `externalBarrier` on: the first element of every proposed batch is a marker, not a
 * client's request, whose `seq` is one more than the external number its leader had
 * reached when it proposed. Carried inside the batch, the barrier is covered by the
 * batch digest, so it travels with the body through every certificate, decision, state
 * answer and durable record, and no replica can execute a batch under another barrier.
 *
 * The marker's client name has the form of a sequence space of the all-zero key, which no
 * client can use: admission refuses it (clients.ts), and no signature verifies under it.
 */
import { bytesEqual } from "../../../wire/bytes.ts";
import type { ClientRequest } from "./messages.ts";

export const BARRIER_CLIENT = `${"0".repeat(64)}:!after`;
const SIGNATURE_BYTES = 64;
const EMPTY = new Uint8Array(0);
const ZERO_SIG = new Uint8Array(SIGNATURE_BYTES);

/** The marker for a batch proposed once the external order had executed through `after`. */
export function barrierRequest(after: number): ClientRequest {
  return { client: BARRIER_CLIENT, seq: after + 1, span: 1, body: EMPTY, sig: ZERO_SIG };
}

export function isBarrier(r: ClientRequest): boolean {
  return r.client === BARRIER_CLIENT;
}

/** Whether `r` is a well-formed marker (nothing but its number may vary). */
export function isWellFormedBarrier(r: ClientRequest): boolean {
  return r.client === BARRIER_CLIENT && r.seq >= 1 && r.span === 1 && r.body.length === 0 && bytesEqual(r.sig, ZERO_SIG);
}

/** The barrier of a decided batch: the marker's number, 0 for a batch without one (the empty batch of a NEW_VIEW). */
export function barrierOf(batch: readonly ClientRequest[]): number {
  const first = batch[0];
  return first !== undefined && isBarrier(first) ? first.seq - 1 : 0;
}
