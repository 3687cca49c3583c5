/**
 * Certificate checks and the NEW_VIEW computation (core/ordering/PROTOCOL.md §6, §7). Pure functions of
 * a context; every count is of distinct verified signers, never of messages, and every
 * part of a certificate must match every other part (the classic bugs 1, 6 and 7 of §9).
 */
import { bytesEqual } from "../../../wire/bytes.ts";
import type { FaultMode, ReplicaId } from "./config.ts";
import {
  type Checkpoint,
  type ClientRequest,
  type Commit,
  NULL_DIGEST,
  type PreparedCert,
  type SignedMessage,
  signerOf,
  signingBytes,
  type ViewChange,
  withBatchEncoding,
} from "./messages.ts";
import type { CoreCrypto } from "./types.ts";

export interface CertContext {
  readonly n: number;
  readonly f: number;
  readonly mode: FaultMode;
  /** Q: quorum size. */
  readonly quorumSize: number;
  readonly logWindow: number;
  readonly checkpointInterval: number;
  readonly clusterId: string;
  readonly crypto: CoreCrypto;
  /** The epoch's starting checkpoint, stable without signatures of this epoch (config.ts). */
  readonly epochStart?: { readonly seq: number; readonly digest: Uint8Array } | null;
}

/** Whether (seq, digest) with this proof is the epoch's starting checkpoint, which needs no proof. */
export function isEpochStart(context: CertContext, seq: number, digest: Uint8Array, proof: readonly unknown[]): boolean {
  const start = context.epochStart;
  return start !== undefined && start !== null && proof.length === 0 && seq === start.seq && bytesEqual(digest, start.digest);
}

export function isMember(context: CertContext, r: number): boolean {
  return Number.isSafeInteger(r) && r >= 0 && r < context.n;
}

/**
 * Checks the signature of `m` against the replica that must have made it. A COMMIT
 * carries none (core/ordering/PROTOCOL.md §3, "COMMITs on the link's word"): the peer
 * link's MAC authenticates it, and it is taken only from the replica it names.
 */
export function verifySigned(context: CertContext, m: SignedMessage): boolean {
  const signer = signerOf(m, context.n);
  if (!isMember(context, signer)) return false;
  if (isLinkAuthenticated(m)) return true;
  return context.crypto.verify(signer, signingBytes(m, context.clusterId), m.sig);
}

/** Whether `m` is authenticated by the peer link rather than signed: a COMMIT, in either mode. */
export function isLinkAuthenticated(m: SignedMessage): boolean {
  return m.t === "COMMIT";
}

/**
 * Digests already computed, by hash function and batch: a batch is hashed when it is
 * proposed or accepted and checked again before it executes, and the same array object
 * travels the whole way (in the simulator, from one replica to the others too). Batches
 * are never changed in place once built (a Byzantine variant in the simulator copies
 * before it alters), so a hit is the digest of the same bytes; arrays that are gone take
 * their entries with them.
 */
const batchDigests = new WeakMap<CoreCrypto["hash"], WeakMap<readonly ClientRequest[], Uint8Array>>();

export function digestOfBatch(crypto: CoreCrypto, batch: readonly ClientRequest[]): Uint8Array {
  // The empty batch (a NEW_VIEW's null entry, a leader's padding) is named by the null digest.
  if (batch.length === 0) return NULL_DIGEST;
  let known = batchDigests.get(crypto.hash);
  if (known === undefined) {
    known = new WeakMap();
    batchDigests.set(crypto.hash, known);
  }
  let digest = known.get(batch);
  if (digest === undefined) {
    // Hashed in the encoder's buffer: no copy of the batch is made.
    digest = withBatchEncoding(batch, crypto.hash);
    known.set(batch, digest);
  }
  return digest;
}

/** Whether `batch` is the body of `digest` (the null digest names the empty batch). */
export function bodyMatches(crypto: CoreCrypto, digest: Uint8Array, batch: readonly ClientRequest[]): boolean {
  if (bytesEqual(digest, NULL_DIGEST)) return batch.length === 0;
  return bytesEqual(digestOfBatch(crypto, batch), digest);
}

/**
 * `minSigners` distinct members signed CHECKPOINT(seq, digest). Extra or duplicate
 * entries make the proof invalid rather than being skipped, so a proof has one form.
 */
export function validCheckpointProof(
  context: CertContext,
  seq: number,
  digest: Uint8Array,
  proof: readonly Checkpoint[],
  minSigners: number,
): boolean {
  if (proof.length < minSigners || proof.length > context.n) return false;
  const seen = new Set<ReplicaId>();
  for (const c of proof) {
    // The kind too: a COMMIT carries no signature (verifySigned takes it on the link's word).
    if (c.t !== "CHECKPOINT" || c.seq !== seq || !bytesEqual(c.digest, digest)) return false;
    if (!isMember(context, c.replica) || seen.has(c.replica)) return false;
    seen.add(c.replica);
  }
  for (const c of proof) if (!verifySigned(context, c)) return false;
  return true;
}

/**
 * A prepared certificate is valid when its header is leader(view)'s signature on exactly
 * (view, seq, digest) and, in BFT mode, it carries exactly Q-1 PREPAREs for the same
 * triple from distinct members other than the leader. In CFT mode it carries no PREPAREs
 * and its body must hash to the digest.
 */
export function validPreparedCert(context: CertContext, cert: PreparedCert): boolean {
  const header = cert.prePrepare;
  if (
    header.t !== "PRE_PREPARE" ||
    header.view !== cert.view ||
    header.seq !== cert.seq ||
    !bytesEqual(header.digest, cert.digest) ||
    header.batch !== null
  )
    return false;
  if (bytesEqual(cert.digest, NULL_DIGEST) && cert.batch !== null && cert.batch.length > 0) return false;
  if (context.mode === "cft") {
    if (cert.prepares.length !== 0 || cert.batch === null) return false;
    if (!bodyMatches(context.crypto, cert.digest, cert.batch)) return false;
  } else {
    if (cert.batch !== null || cert.prepares.length !== context.quorumSize - 1) return false;
    const leader = cert.view % context.n;
    const seen = new Set<ReplicaId>();
    for (const p of cert.prepares) {
      // The kind too: a COMMIT carries no signature (verifySigned takes it on the link's word).
      if (p.t !== "PREPARE" || p.view !== cert.view || p.seq !== cert.seq || !bytesEqual(p.digest, cert.digest)) return false;
      if (!isMember(context, p.replica) || p.replica === leader || seen.has(p.replica)) return false;
      seen.add(p.replica);
    }
    for (const p of cert.prepares) if (!verifySigned(context, p)) return false;
  }
  return verifySigned(context, header);
}

/**
 * VIEW_CHANGE validity (core/ordering/PROTOCOL.md §6): signed by a member; its stable checkpoint proven
 * by Q signed CHECKPOINTs (or the genesis state at 0); every prepared entry inside the
 * sender's window, one per seq, from a view below the new one, and itself valid.
 */
export function validViewChange(context: CertContext, vc: ViewChange): boolean {
  if (vc.t !== "VIEW_CHANGE" || !isMember(context, vc.replica)) return false;
  if (vc.stableSeq === 0) {
    if (!bytesEqual(vc.stableDigest, NULL_DIGEST) || vc.stableProof.length !== 0) return false;
  } else if (vc.stableSeq % context.checkpointInterval !== 0) {
    return false;
  }
  if (vc.prepared.length > context.logWindow) return false;
  const seqs = new Set<number>();
  for (const cert of vc.prepared) {
    if (cert.seq <= vc.stableSeq || cert.seq > vc.stableSeq + context.logWindow) return false;
    if (cert.view >= vc.newView || seqs.has(cert.seq)) return false;
    seqs.add(cert.seq);
  }
  if (!verifySigned(context, vc)) return false;
  if (
    vc.stableSeq > 0 &&
    !isEpochStart(context, vc.stableSeq, vc.stableDigest, vc.stableProof) &&
    !validCheckpointProof(context, vc.stableSeq, vc.stableDigest, vc.stableProof, context.quorumSize)
  )
    return false;
  for (const cert of vc.prepared) if (!validPreparedCert(context, cert)) return false;
  return true;
}

/** What a NEW_VIEW must say, recomputed from its VIEW_CHANGEs by every replica. */
export interface NewViewPlan {
  minS: number;
  maxS: number;
  /** O: the digest for each seq in minS+1 .. maxS (NULL_DIGEST where nothing prepared). */
  digests: Uint8Array[];
  /** Bodies known from CFT certificates, by seq. */
  bodies: Map<number, ClientRequest[]>;
  /** The stable checkpoint at minS and its proof (empty at genesis). */
  stableDigest: Uint8Array;
  stableProof: Checkpoint[];
}

/**
 * core/ordering/PROTOCOL.md §6: minS is the highest stable checkpoint in V, maxS the highest prepared
 * seq (at least minS), and O[s] the digest of the highest-view certificate for s. Two
 * certificates for one (view, seq) with different digests cannot both be valid with at
 * most f faults; if V holds such a pair, the plan is refused (null).
 */
export function planNewView(context: CertContext, vcs: readonly ViewChange[]): NewViewPlan | null {
  let minS = 0;
  let stableDigest = NULL_DIGEST;
  let stableProof: Checkpoint[] = [];
  for (const vc of vcs) {
    if (vc.stableSeq > minS) {
      minS = vc.stableSeq;
      stableDigest = vc.stableDigest;
      stableProof = vc.stableProof;
    }
  }
  const best = new Map<number, PreparedCert>();
  let maxS = minS;
  for (const vc of vcs) {
    for (const cert of vc.prepared) {
      if (cert.seq <= minS) continue;
      const prev = best.get(cert.seq);
      if (prev !== undefined && prev.view === cert.view && !bytesEqual(prev.digest, cert.digest)) return null;
      if (prev === undefined || cert.view > prev.view) best.set(cert.seq, cert);
      if (cert.seq > maxS) maxS = cert.seq;
    }
  }
  if (maxS - minS > context.logWindow) return null;
  const digests: Uint8Array[] = [];
  const bodies = new Map<number, ClientRequest[]>();
  for (let s = minS + 1; s <= maxS; s++) {
    const cert = best.get(s);
    digests.push(cert === undefined ? NULL_DIGEST : cert.digest);
    if (cert?.batch) bodies.set(s, cert.batch);
  }
  return { minS, maxS, digests, bodies, stableDigest, stableProof };
}

/**
 * The shape of a decision certificate: Q COMMITs for (view, seq, digest) naming distinct
 * members. COMMITs are authenticated by the link they came over, not signed, so a
 * certificate a peer relays is only that peer's report of a decision: catch-up takes a
 * decision once `decisionClaimsNeeded` distinct peers reported it (checkpoints.ts,
 * core/ordering/PROTOCOL.md §4, "Catch-up").
 */
export function wellFormedDecisionCert(
  context: CertContext,
  view: number,
  seq: number,
  digest: Uint8Array,
  commits: readonly Commit[],
): boolean {
  if (commits.length < context.quorumSize || commits.length > context.n) return false;
  const seen = new Set<ReplicaId>();
  for (const c of commits) {
    if (c.view !== view || c.seq !== seq || !bytesEqual(c.digest, digest)) return false;
    if (!isMember(context, c.replica) || seen.has(c.replica)) return false;
    seen.add(c.replica);
  }
  return true;
}
