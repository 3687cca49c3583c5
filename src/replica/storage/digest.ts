/**
 * The checkpoint state digest D = hash(seq, appDigest, hash(clients)) of ORDERING.md §7,
 * computed the way the ordering core computes it (OrderingCore.stateDigest). The runtime
 * needs it before it hands a snapshot to the core: a fetched snapshot is checked against
 * the digest f+1 replicas signed before it replaces the channel state, and a stored base
 * is checked against the digest recorded with it. A unit test holds the two in step.
 */
import { type Canonical, encodeCanonical } from "../../../wire/canonical.ts";
import type { ClientTableExport } from "../../core/ordering/clients.ts";
import { sha256 } from "../../crypto/hash.ts";

export function checkpointStateDigest(seq: number, appDigest: Uint8Array, clients: ClientTableExport): Uint8Array {
  const clientsHash = sha256(encodeCanonical(clients as unknown as Canonical));
  return sha256(encodeCanonical({ seq, app: appDigest, clients: clientsHash }));
}
