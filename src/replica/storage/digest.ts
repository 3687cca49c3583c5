/**
 * The checkpoint state digest D = hash(seq, appDigest, hash(clients)) of core/ordering/PROTOCOL.md §7,
 * computed with the ordering core's own formula (stateDigestOf). The runtime
 * needs it before it hands a snapshot to the core: a fetched snapshot is checked against
 * the digest f+1 replicas signed before it replaces the channel state, and a stored base
 * is checked against the digest recorded with it.
 */
import type { ClientTableExport } from "../../core/ordering/clients.ts";
import { clientTableHash, stateDigestOf } from "../../core/ordering/checkpoints.ts";
import { sha256 } from "../../crypto/hash.ts";

export function checkpointStateDigest(seq: number, appDigest: Uint8Array, clients: ClientTableExport): Uint8Array {
  return stateDigestOf(sha256, seq, appDigest, clientTableHash(sha256, clients));
}
