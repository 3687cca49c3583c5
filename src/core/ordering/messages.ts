/**
 * Peer messages of the ordering protocol (core/ordering/PROTOCOL.md §3), their structural validation and
 * the exact bytes each signature covers.
 *
 * Every message is a plain object of canonical values (null, booleans, safe integers,
 * strings, byte strings, arrays, string-keyed objects) so the runtime can encode it with
 * `encodeCanonical` and decode it back. `validatePeerMessage` is the boundary check: it
 * rebuilds a message from unknown input, keeping only known fields and enforcing every
 * structural bound, and returns null on anything else. It never throws.
 *
 * A signature covers utf8(domain) || 0x00 || encodeCanonical({c: clusterId, ...fields}),
 * where the domain names the message kind: a signature made for one kind or one cluster is
 * worthless as another.
 */
import { DIGEST_BYTES, FRAME_BYTES_MAX, REPLICAS_MAX, SIGNATURE_BYTES } from "../../../wire/types.ts";
import type { PersistedRecord } from "./types.ts";
import { encodeCanonical, withCanonical } from "../../../wire/canonical.ts";
import type { ReplicaId } from "./config.ts";

/**
 * One client request as the core sees it; `body` is what the client signed. (A type alias
 * rather than an interface, so that every message holding requests is assignable to
 * `Canonical` and goes to `encodeCanonical` as it is.)
 */
export type ClientRequest = {
  /** Lowercase hex of the client's 32-byte ed25519 public key, optionally ":<space>" (see CLIENT_ID_PATTERN). */
  client: string;
  /** First client sequence number this request uses. */
  seq: number;
  /** Sequence numbers used: seq .. seq+span-1. */
  span: number;
  body: Uint8Array;
  sig: Uint8Array;
};

/**
 * Signed by leader(view) over (view, seq, digest, ts); `batch` travels beside the header.
 * `ts` is the leader's clock when it proposed (ms since the epoch, never decreasing in its
 * log): the time the batch's requests are judged against (core/ordering/PROTOCOL.md §4,
 * check 5), so that every correct replica judges them the same way.
 */
export type PrePrepare = {
  t: "PRE_PREPARE";
  view: number;
  seq: number;
  digest: Uint8Array;
  ts: number;
  batch: ClientRequest[] | null;
  sig: Uint8Array;
};

export type Prepare = { t: "PREPARE"; view: number; seq: number; digest: Uint8Array; replica: ReplicaId; sig: Uint8Array };
export type Commit = { t: "COMMIT"; view: number; seq: number; digest: Uint8Array; replica: ReplicaId; sig: Uint8Array };
export type Checkpoint = { t: "CHECKPOINT"; seq: number; digest: Uint8Array; replica: ReplicaId; sig: Uint8Array };

/**
 * Proof that (view, seq, digest) prepared: the leader's signed header (batch null) and
 * Q-1 PREPAREs from distinct replicas other than the leader. In crash mode there is no
 * PREPARE phase: `prepares` is empty and `batch` carries the accepted body, because the
 * only replica holding it may be the one that reports it.
 */
export type PreparedCert = {
  view: number;
  seq: number;
  digest: Uint8Array;
  prePrepare: PrePrepare;
  prepares: Prepare[];
  batch: ClientRequest[] | null;
};

export type ViewChange = {
  t: "VIEW_CHANGE";
  newView: number;
  stableSeq: number;
  stableDigest: Uint8Array;
  stableProof: Checkpoint[];
  prepared: PreparedCert[];
  replica: ReplicaId;
  sig: Uint8Array;
};

/** `o` holds the signed headers of sequence numbers minS+1 .. maxS, in order. */
export type NewView = {
  t: "NEW_VIEW";
  view: number;
  viewChanges: ViewChange[];
  minS: number;
  maxS: number;
  o: PrePrepare[];
  sig: Uint8Array;
};

/** Requests relayed to the leader (or to all); each keeps its client signature. */
export type Forward = { t: "FORWARD"; requests: ClientRequest[] };

/**
 * `decided`: batches seq..toSeq with their commit certificates (catch-up inside the window).
 * `batch`: the body of the batch with `digest` at `seq` (bodies named by a NEW_VIEW).
 */
export type StateRequest = {
  t: "STATE_REQUEST";
  kind: "decided" | "batch";
  seq: number;
  toSeq: number;
  digest: Uint8Array | null;
  nonce: number;
};

/** A decided batch as a peer reports it, with the Q matching COMMITs it decided on (link-authenticated: the report is the peer's word). */
export type DecidedItem = {
  view: number;
  seq: number;
  batch: ClientRequest[];
  commits: Commit[];
  /** The sender's own PREPARE and COMMIT for the seq, while it holds them (absent from older senders: empty). */
  votes: Array<Prepare | Commit>;
};

/** A stable checkpoint and its Q signed CHECKPOINTs. */
export type StableProof = { seq: number; digest: Uint8Array; proof: Checkpoint[] };

export type StateResponse = {
  t: "STATE_RESPONSE";
  kind: "decided" | "batch";
  nonce: number;
  items: DecidedItem[];
  stable: StableProof | null;
  lastExecuted: number;
};

/**
 * A non-binding suspicion of leader(view) (core/ordering/PROTOCOL.md §6, "Suspicion"): the
 * sender stays in the view; f+1 of them make every replica start a view change. Unsigned:
 * it proves nothing to a third replica, only the authenticated link says who sent it.
 */
export type Suspect = { t: "SUSPECT"; view: number };

/**
 * Proof that leader(view) signed two proposals for one (view, seq): its header `a` and
 * either a second header `b` with another digest, or f+1 PREPAREs from distinct replicas
 * other than the leader for another digest (at least one of them correct, and a correct
 * replica prepares only what the leader signed). Headers travel without their batches.
 */
export type Evidence = { t: "EVIDENCE"; a: PrePrepare; b: PrePrepare | null; prepares: Prepare[] };

export type PeerMessage =
  | PrePrepare
  | Prepare
  | Commit
  | Checkpoint
  | ViewChange
  | NewView
  | Forward
  | StateRequest
  | StateResponse
  | Suspect
  | Evidence;

export type PeerMessageKind = PeerMessage["t"];

/**
 * Every kind this version knows (validatePeerMessage checks each): a message of another
 * kind is a later version's, one of these that does not validate no correct replica's.
 */
export const PEER_MESSAGE_KINDS: ReadonlySet<string> = new Set<PeerMessageKind>([
  "PRE_PREPARE",
  "PREPARE",
  "COMMIT",
  "CHECKPOINT",
  "VIEW_CHANGE",
  "NEW_VIEW",
  "FORWARD",
  "STATE_REQUEST",
  "STATE_RESPONSE",
  "SUSPECT",
  "EVIDENCE",
]);

/** Digest length (SHA-256) and signature length (ed25519), as the wire defines them. */
export { DIGEST_BYTES, SIGNATURE_BYTES } from "../../../wire/types.ts";
/** The O entry of a sequence number no replica had prepared: decides as an empty batch. */
export const NULL_DIGEST: Uint8Array = new Uint8Array(DIGEST_BYTES);

/** Structural bounds checked at the boundary; the configuration narrows them further. */
export const VIEW_MAX = 2 ** 48;
/** Consensus instance numbers (decided seqs), not to be confused with a peer session's frame counter. */
export const INSTANCE_SEQ_MAX = 2 ** 48;
export const NONCE_MAX = 2 ** 48;
/** A proposal's timestamp, ms since the epoch: any safe integer (dates far beyond this century are still refused by the clock check). */
export const TIMESTAMP_MS_MAX = Number.MAX_SAFE_INTEGER;
export const BATCH_REQUESTS_MAX = 4096;
/**
 * A request body's structural bound: one frame, whatever the configuration. It must never
 * refuse a request the configured `requestBytesMax` admits (checkConfig holds that): a
 * request the leader proposed, under this bound, made every backup drop the PRE_PREPARE as
 * invalid and mute its sender, and read back from the log at a restart as corruption.
 */
export const REQUEST_BODY_BYTES_MAX = FRAME_BYTES_MAX;
export const REQUEST_SPAN_MAX = 65_536;
export const PREPARED_CERTS_MAX = 4096;
export const TRANSFER_ITEMS_MAX = 256;
/**
 * Bytes one signed vote (PREPARE, COMMIT, CHECKPOINT or a proposal header) takes in a
 * message at most: kind, view and seq up to 2^48, a replica id, a 32-byte digest, a
 * proposal's timestamp and a 64-byte signature in canonical CBOR (the largest, a proposal
 * header with the largest timestamp, is exactly this;
 * test/unit/peer-message-size.test.ts checks it). Byte bounds of certificates, decided
 * batches and NEW_VIEWs count each vote as this.
 */
export const SIGNED_VOTE_BYTES_MAX = 172;
export const FORWARD_REQUESTS_MAX = 4096;
/**
 * A client id names a client's sequence space: the hex of its public key, optionally
 * followed by ":" and a space name (the runtime counts a client's publishes per tag and
 * its admin commands apart: "<hex>:net.links", "<hex>:!admin").
 */
const CLIENT_ID_PATTERN = /^[0-9a-f]{64}(?::!?[a-z0-9_.-]{1,128})?$/;

/** Domain tags of the signed kinds. */
export const DOMAIN = {
  PRE_PREPARE: "fitb/v1/ord/pre-prepare",
  PREPARE: "fitb/v1/ord/prepare",
  COMMIT: "fitb/v1/ord/commit",
  CHECKPOINT: "fitb/v1/ord/checkpoint",
  VIEW_CHANGE: "fitb/v1/ord/view-change",
  NEW_VIEW: "fitb/v1/ord/new-view",
} as const;

const textEncoder = new TextEncoder();
const domainPrefixes = new Map<string, Uint8Array>();

function domainPrefix(domain: string): Uint8Array {
  let prefix = domainPrefixes.get(domain);
  if (prefix === undefined) {
    const tag = textEncoder.encode(domain);
    prefix = new Uint8Array(tag.length + 1);
    prefix.set(tag);
    domainPrefixes.set(domain, prefix);
  }
  return prefix;
}

function withDomain(domain: string, body: Uint8Array): Uint8Array {
  const prefix = domainPrefix(domain);
  const out = new Uint8Array(prefix.length + body.length);
  out.set(prefix);
  out.set(body, prefix.length);
  return out;
}

type Canon = Parameters<typeof encodeCanonical>[0];

function requestFields(r: ClientRequest): Canon {
  return [r.client, r.seq, r.span, r.body, r.sig];
}

/** The bytes hashed into a batch digest: every field of every request, in order. */
export function batchBytes(batch: readonly ClientRequest[]): Uint8Array {
  return encodeCanonical(batch.map(requestFields));
}

/** `use(batchBytes(batch))` with the bytes lent from the encoder (wire/canonical.ts withCanonical), valid only during the call. */
export function withBatchEncoding<T>(batch: readonly ClientRequest[], use: (bytes: Uint8Array) => T): T {
  return withCanonical(batch.map(requestFields), use);
}

function headerFields(m: PrePrepare): Canon {
  return { view: m.view, seq: m.seq, digest: m.digest, ts: m.ts };
}

function prePrepareFields(m: PrePrepare): Canon {
  return {
    t: m.t,
    view: m.view,
    seq: m.seq,
    digest: m.digest,
    ts: m.ts,
    batch: m.batch === null ? null : m.batch.map(requestFields),
    sig: m.sig,
  };
}

function voteFields(m: Prepare | Commit): Canon {
  return { t: m.t, view: m.view, seq: m.seq, digest: m.digest, replica: m.replica, sig: m.sig };
}

function checkpointFields(m: Checkpoint): Canon {
  return { t: m.t, seq: m.seq, digest: m.digest, replica: m.replica, sig: m.sig };
}

function certFields(c: PreparedCert): Canon {
  return {
    view: c.view,
    seq: c.seq,
    digest: c.digest,
    prePrepare: prePrepareFields(c.prePrepare),
    prepares: c.prepares.map(voteFields),
    batch: c.batch === null ? null : c.batch.map(requestFields),
  };
}

function viewChangeBody(m: ViewChange): Canon {
  return {
    newView: m.newView,
    stableSeq: m.stableSeq,
    stableDigest: m.stableDigest,
    stableProof: m.stableProof.map(checkpointFields),
    prepared: m.prepared.map(certFields),
    replica: m.replica,
  };
}

function viewChangeFields(m: ViewChange): Canon {
  return { t: m.t, ...(viewChangeBody(m) as Record<string, Canon>), sig: m.sig };
}

/** A signed message kind: the ones whose authenticity the core checks itself. */
export type SignedMessage = PrePrepare | Prepare | Commit | Checkpoint | ViewChange | NewView;

/** The exact bytes a signature on `m` covers (domain tag, cluster id, canonical fields). */
export function signingBytes(m: SignedMessage, clusterId: string): Uint8Array {
  switch (m.t) {
    case "PRE_PREPARE":
      return withDomain(DOMAIN.PRE_PREPARE, encodeCanonical({ c: clusterId, ...(headerFields(m) as Record<string, Canon>) }));
    case "PREPARE":
    case "COMMIT":
      return withDomain(DOMAIN[m.t], encodeCanonical({ c: clusterId, view: m.view, seq: m.seq, digest: m.digest, replica: m.replica }));
    case "CHECKPOINT":
      return withDomain(DOMAIN.CHECKPOINT, encodeCanonical({ c: clusterId, seq: m.seq, digest: m.digest, replica: m.replica }));
    case "VIEW_CHANGE":
      return withDomain(DOMAIN.VIEW_CHANGE, encodeCanonical({ c: clusterId, ...(viewChangeBody(m) as Record<string, Canon>) }));
    case "NEW_VIEW":
      return withDomain(
        DOMAIN.NEW_VIEW,
        encodeCanonical({
          c: clusterId,
          view: m.view,
          minS: m.minS,
          maxS: m.maxS,
          o: m.o.map(prePrepareFields),
          viewChanges: m.viewChanges.map(viewChangeFields),
        }),
      );
  }
}

/** Who must have signed `m`: the replica field, or leader(view) for proposals and new views. */
export function signerOf(m: SignedMessage, n: number): ReplicaId {
  switch (m.t) {
    case "PRE_PREPARE":
      return m.view % n;
    case "NEW_VIEW":
      return m.view % n;
    default:
      return m.replica;
  }
}

// ---------------------------------------------------------------------------------------
// Structural validation. Each function returns a freshly built value or null.
// ---------------------------------------------------------------------------------------

type Rec = Record<string, unknown>;

function isRecord(x: unknown): x is Rec {
  if (typeof x !== "object" || x === null || Array.isArray(x) || x instanceof Uint8Array) return false;
  const proto: unknown = Object.getPrototypeOf(x);
  return proto === Object.prototype || proto === null;
}

function nat(x: unknown, max: number): number | null {
  return typeof x === "number" && Number.isSafeInteger(x) && x >= 0 && x <= max ? x : null;
}

function bytesOf(x: unknown, len: number): Uint8Array | null {
  return x instanceof Uint8Array && x.length === len ? x : null;
}

/**
 * `bytesOf`, copied out of the received message: for the fields of what a replica keeps
 * per signer for a window (votes, checkpoints), so that 96 bytes kept do not hold a whole
 * frame in memory (a faulty peer could pad each vote to a frame's size).
 */
function ownBytesOf(x: unknown, len: number): Uint8Array | null {
  const bytes = bytesOf(x, len);
  return bytes === null ? null : bytes.slice();
}

function arrayOf<T>(x: unknown, max: number, item: (v: unknown) => T | null): T[] | null {
  if (!Array.isArray(x) || x.length > max) return null;
  const out: T[] = [];
  for (const v of x) {
    const r = item(v);
    if (r === null) return null;
    out.push(r);
  }
  return out;
}

/** Structural check of one client request (signature not checked here). */
export function validateClientRequest(x: unknown): ClientRequest | null {
  if (!isRecord(x)) return null;
  const client = x.client;
  if (typeof client !== "string" || !CLIENT_ID_PATTERN.test(client)) return null;
  const seq = nat(x.seq, INSTANCE_SEQ_MAX);
  const span = nat(x.span, REQUEST_SPAN_MAX);
  if (seq === null || seq < 1 || span === null || span < 1) return null;
  const body = x.body;
  if (!(body instanceof Uint8Array) || body.length > REQUEST_BODY_BYTES_MAX) return null;
  const sig = bytesOf(x.sig, SIGNATURE_BYTES);
  if (sig === null) return null;
  return { client, seq, span, body, sig };
}

function validateBatch(x: unknown): ClientRequest[] | null {
  return arrayOf(x, BATCH_REQUESTS_MAX, validateClientRequest);
}

function validatePrePrepare(x: Rec): PrePrepare | null {
  const view = nat(x.view, VIEW_MAX);
  const seq = nat(x.seq, INSTANCE_SEQ_MAX);
  const digest = bytesOf(x.digest, DIGEST_BYTES);
  const ts = nat(x.ts, TIMESTAMP_MS_MAX);
  const sig = bytesOf(x.sig, SIGNATURE_BYTES);
  if (view === null || seq === null || seq < 1 || digest === null || ts === null || sig === null) return null;
  let batch: ClientRequest[] | null = null;
  if (x.batch !== null) {
    batch = validateBatch(x.batch);
    if (batch === null) return null;
  }
  return { t: "PRE_PREPARE", view, seq, digest, ts, batch, sig };
}

function validateVote<K extends "PREPARE" | "COMMIT">(t: K, x: Rec): ({ t: K } & Omit<Prepare, "t">) | null {
  const view = nat(x.view, VIEW_MAX);
  const seq = nat(x.seq, INSTANCE_SEQ_MAX);
  const digest = ownBytesOf(x.digest, DIGEST_BYTES);
  const replica = nat(x.replica, REPLICAS_MAX - 1);
  const sig = ownBytesOf(x.sig, SIGNATURE_BYTES);
  if (view === null || seq === null || seq < 1 || digest === null || replica === null || sig === null) return null;
  return { t, view, seq, digest, replica, sig };
}

function validateCheckpoint(x: Rec): Checkpoint | null {
  const seq = nat(x.seq, INSTANCE_SEQ_MAX);
  const digest = ownBytesOf(x.digest, DIGEST_BYTES);
  const replica = nat(x.replica, REPLICAS_MAX - 1);
  const sig = ownBytesOf(x.sig, SIGNATURE_BYTES);
  if (seq === null || seq < 1 || digest === null || replica === null || sig === null) return null;
  return { t: "CHECKPOINT", seq, digest, replica, sig };
}

function nested<T>(t: string, build: (x: Rec) => T | null): (v: unknown) => T | null {
  return (v) => (isRecord(v) && v.t === t ? build(v) : null);
}

function validateCert(x: unknown): PreparedCert | null {
  if (!isRecord(x)) return null;
  const view = nat(x.view, VIEW_MAX);
  const seq = nat(x.seq, INSTANCE_SEQ_MAX);
  const digest = bytesOf(x.digest, DIGEST_BYTES);
  const prePrepare = nested("PRE_PREPARE", validatePrePrepare)(x.prePrepare);
  const prepares = arrayOf(
    x.prepares,
    REPLICAS_MAX,
    nested("PREPARE", (v) => validateVote("PREPARE", v)),
  );
  if (view === null || seq === null || seq < 1 || digest === null || prePrepare === null || prepares === null) return null;
  let batch: ClientRequest[] | null = null;
  if (x.batch !== null) {
    batch = validateBatch(x.batch);
    if (batch === null) return null;
  }
  return { view, seq, digest, prePrepare, prepares, batch };
}

function validateViewChange(x: Rec): ViewChange | null {
  const newView = nat(x.newView, VIEW_MAX);
  const stableSeq = nat(x.stableSeq, INSTANCE_SEQ_MAX);
  const stableDigest = bytesOf(x.stableDigest, DIGEST_BYTES);
  const stableProof = arrayOf(x.stableProof, REPLICAS_MAX, nested("CHECKPOINT", validateCheckpoint));
  const prepared = arrayOf(x.prepared, PREPARED_CERTS_MAX, validateCert);
  const replica = nat(x.replica, REPLICAS_MAX - 1);
  const sig = bytesOf(x.sig, SIGNATURE_BYTES);
  if (newView === null || stableSeq === null || stableDigest === null || stableProof === null) return null;
  if (prepared === null || replica === null || sig === null) return null;
  return { t: "VIEW_CHANGE", newView, stableSeq, stableDigest, stableProof, prepared, replica, sig };
}

function validateNewView(x: Rec): NewView | null {
  const view = nat(x.view, VIEW_MAX);
  const viewChanges = arrayOf(x.viewChanges, REPLICAS_MAX, nested("VIEW_CHANGE", validateViewChange));
  const minS = nat(x.minS, INSTANCE_SEQ_MAX);
  const maxS = nat(x.maxS, INSTANCE_SEQ_MAX);
  const o = arrayOf(x.o, PREPARED_CERTS_MAX, nested("PRE_PREPARE", validatePrePrepare));
  const sig = bytesOf(x.sig, SIGNATURE_BYTES);
  if (view === null || viewChanges === null || minS === null || maxS === null || o === null || sig === null) return null;
  return { t: "NEW_VIEW", view, viewChanges, minS, maxS, o, sig };
}

function validateForward(x: Rec): Forward | null {
  const requests = arrayOf(x.requests, FORWARD_REQUESTS_MAX, validateClientRequest);
  return requests === null ? null : { t: "FORWARD", requests };
}

function validateSuspect(x: Rec): Suspect | null {
  const view = nat(x.view, VIEW_MAX);
  return view === null ? null : { t: "SUSPECT", view };
}

function validateEvidence(x: Rec): Evidence | null {
  const header = nested("PRE_PREPARE", validatePrePrepare);
  const a = header(x.a);
  const b = x.b === null ? null : header(x.b);
  const prepares = arrayOf(
    x.prepares,
    REPLICAS_MAX,
    nested("PREPARE", (v) => validateVote("PREPARE", v)),
  );
  if (a === null || a.batch !== null || prepares === null) return null;
  if (x.b !== null && (b === null || b.batch !== null)) return null;
  return { t: "EVIDENCE", a, b, prepares };
}

function validateStateRequest(x: Rec): StateRequest | null {
  const kind = x.kind === "decided" || x.kind === "batch" ? x.kind : null;
  const seq = nat(x.seq, INSTANCE_SEQ_MAX);
  const toSeq = nat(x.toSeq, INSTANCE_SEQ_MAX);
  const nonce = nat(x.nonce, NONCE_MAX);
  if (kind === null || seq === null || toSeq === null || nonce === null) return null;
  let digest: Uint8Array | null = null;
  if (x.digest !== null) {
    digest = bytesOf(x.digest, DIGEST_BYTES);
    if (digest === null) return null;
  }
  return { t: "STATE_REQUEST", kind, seq, toSeq, digest, nonce };
}

function validateDecidedItem(x: unknown): DecidedItem | null {
  if (!isRecord(x)) return null;
  const view = nat(x.view, VIEW_MAX);
  const seq = nat(x.seq, INSTANCE_SEQ_MAX);
  const batch = validateBatch(x.batch);
  const commits = arrayOf(
    x.commits,
    REPLICAS_MAX,
    nested("COMMIT", (v) => validateVote("COMMIT", v)),
  );
  const votes =
    x.votes === undefined
      ? []
      : arrayOf(x.votes, 2, (v) => (isRecord(v) && (v.t === "PREPARE" || v.t === "COMMIT") ? validateVote(v.t, v) : null));
  if (view === null || seq === null || seq < 1 || batch === null || commits === null || votes === null) return null;
  return { view, seq, batch, commits, votes };
}

function validateStable(x: unknown): StableProof | null {
  if (!isRecord(x)) return null;
  const seq = nat(x.seq, INSTANCE_SEQ_MAX);
  const digest = bytesOf(x.digest, DIGEST_BYTES);
  const proof = arrayOf(x.proof, REPLICAS_MAX, nested("CHECKPOINT", validateCheckpoint));
  if (seq === null || digest === null || proof === null) return null;
  return { seq, digest, proof };
}

function validateStateResponse(x: Rec): StateResponse | null {
  const kind = x.kind === "decided" || x.kind === "batch" ? x.kind : null;
  const nonce = nat(x.nonce, NONCE_MAX);
  const items = arrayOf(x.items, TRANSFER_ITEMS_MAX, validateDecidedItem);
  const lastExecuted = nat(x.lastExecuted, INSTANCE_SEQ_MAX);
  if (kind === null || nonce === null || items === null || lastExecuted === null) return null;
  let stable: StableProof | null = null;
  if (x.stable !== null) {
    stable = validateStable(x.stable);
    if (stable === null) return null;
  }
  return { t: "STATE_RESPONSE", kind, nonce, items, stable, lastExecuted };
}

/** A stable checkpoint's proof: signed CHECKPOINTs (signatures not checked here). */
export function validateCheckpointProof(x: unknown): Checkpoint[] | null {
  return arrayOf(x, REPLICAS_MAX, nested("CHECKPOINT", validateCheckpoint));
}

/** A client table as exported with a checkpoint: [client space, last executed seq] rows. */
export function validateClientRows(x: unknown, rowsMax: number): Array<[string, number]> | null {
  return arrayOf(x, rowsMax, (row) => {
    if (!Array.isArray(row) || row.length !== 2) return null;
    const [client, last] = row as unknown[];
    if (typeof client !== "string" || !CLIENT_ID_PATTERN.test(client)) return null;
    const seq = nat(last, INSTANCE_SEQ_MAX);
    return seq === null ? null : ([client, seq] as [string, number]);
  });
}

/**
 * The persisted records of the ordering core (types.ts, PersistedRecord) rebuilt from what
 * the store read back, or null. A row's checksum proves the bytes are the ones written;
 * this proves they have the shape the core will trust (a record written by another build,
 * or damaged in a way a checksum cannot see, is refused, not handed to restore).
 */
export function validatePersistedRecord(x: unknown, clientRowsMax: number): PersistedRecord | null {
  if (!isRecord(x)) return null;
  switch (x.t) {
    case "view": {
      const view = nat(x.view, VIEW_MAX);
      const installedView = nat(x.installedView, VIEW_MAX);
      const status = x.status === "normal" || x.status === "viewChange" ? x.status : null;
      if (view === null || installedView === null || status === null || installedView > view) return null;
      const viewChange = x.viewChange === null ? null : nested("VIEW_CHANGE", validateViewChange)(x.viewChange);
      const newView = x.newView === null ? null : nested("NEW_VIEW", validateNewView)(x.newView);
      if ((x.viewChange !== null && viewChange === null) || (x.newView !== null && newView === null)) return null;
      return { t: "view", view, installedView, status, viewChange, newView };
    }
    case "accept": {
      const prePrepare = nested("PRE_PREPARE", validatePrePrepare)(x.prePrepare);
      return prePrepare === null ? null : { t: "accept", prePrepare };
    }
    case "prepared": {
      const cert = validateCert(x.cert);
      const batch = validateBatch(x.batch);
      return cert === null || batch === null ? null : { t: "prepared", cert, batch };
    }
    case "decided": {
      const item = validateDecidedItem(x);
      const digest = bytesOf(x.digest, DIGEST_BYTES);
      if (item === null || digest === null) return null;
      return { t: "decided", seq: item.seq, view: item.view, digest, batch: item.batch, commits: item.commits };
    }
    case "checkpoint":
    case "snapshot": {
      const seq = nat(x.seq, INSTANCE_SEQ_MAX);
      const stateDigest = bytesOf(x.stateDigest, DIGEST_BYTES);
      const appDigest = bytesOf(x.appDigest, DIGEST_BYTES);
      const clients = validateClientRows(x.clients, clientRowsMax);
      if (seq === null || stateDigest === null || appDigest === null || clients === null) return null;
      if (x.t === "checkpoint") return { t: "checkpoint", seq, stateDigest, appDigest, clients };
      const proof = arrayOf(x.proof, REPLICAS_MAX, nested("CHECKPOINT", validateCheckpoint));
      return proof === null ? null : { t: "snapshot", seq, stateDigest, appDigest, clients, proof };
    }
    case "stable": {
      const stable = validateStable(x);
      return stable === null ? null : { t: "stable", seq: stable.seq, digest: stable.digest, proof: stable.proof };
    }
    default:
      return null;
  }
}

/**
 * Rebuilds a peer message from untrusted input, or returns null. Checks shapes, types,
 * lengths and structural bounds only; signatures, membership and protocol rules are the
 * core's business. Never throws.
 */
export function validatePeerMessage(x: unknown): PeerMessage | null {
  try {
    if (!isRecord(x)) return null;
    switch (x.t) {
      case "PRE_PREPARE":
        return validatePrePrepare(x);
      case "PREPARE":
        return validateVote("PREPARE", x);
      case "COMMIT":
        return validateVote("COMMIT", x);
      case "CHECKPOINT":
        return validateCheckpoint(x);
      case "VIEW_CHANGE":
        return validateViewChange(x);
      case "NEW_VIEW":
        return validateNewView(x);
      case "FORWARD":
        return validateForward(x);
      case "STATE_REQUEST":
        return validateStateRequest(x);
      case "STATE_RESPONSE":
        return validateStateResponse(x);
      case "SUSPECT":
        return validateSuspect(x);
      case "EVIDENCE":
        return validateEvidence(x);
      default:
        return null;
    }
  } catch {
    // Getters or proxies on hostile input can throw; junk is junk.
    return null;
  }
}

/**
 * What a request's seq, span and encoding add to its body, signature and client name in a
 * message, at most: the map head and its five keys (26 bytes), seq and span at their
 * bounds, and the heads of the body, the client name and the signature
 * (test/unit/peer-message-size.test.ts checks it against the encoder).
 */
export const REQUEST_FIELDS_BYTES = 49;

/**
 * Bytes a request occupies in a message (body, signature, client name and fields), for the
 * byte bounds of requests, batches, FORWARDs and STATE_RESPONSEs: what is counted here is
 * what a message carries, so a bound on it bounds the message.
 */
export function requestBytes(r: ClientRequest): number {
  return r.body.length + r.sig.length + r.client.length + REQUEST_FIELDS_BYTES;
}
