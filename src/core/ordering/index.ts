/**
 * The ordering core of fitb: BFT (and crash-mode) total order as a sans-IO state machine.
 *
 * HOW THE RUNTIME USES IT
 *
 *   const core = new OrderingCore(makeConfig({ id, n, f, mode, clusterId }), crypto, records);
 *   for each input:
 *     const ready = core.step(input);
 *     for (const r of ready.persist) append(r);  fsync;    // every record durable first,
 *     for (const e of ready.effects) perform(e);            // then the effects, in order
 *
 * Inputs (`CoreInput`):
 *   - {kind:'message', from, msg}   a peer message; `msg` passed `validatePeerMessage` and
 *                                   `from` is the peer the authenticated channel belongs to.
 *   - {kind:'request', req, authenticated?}   a client request (ClientRequest).
 *   - {kind:'tick'}                 one tick of time (10 ms); the core has no other clock.
 *   - {kind:'checkpointReady', seq, appDigest}   answer to `takeCheckpoint`.
 *   - {kind:'snapshotInstalled', seq, stateDigest, appDigest, clients, proof}   answer to `fetchState`
 *                                   (the target's, or an older one's that `proof` vouches for).
 *
 * Output: one `Ready` per step, `{persist, effects}`. CONTRACT: every record of `persist`
 * completes (fsync) before any effect; a crash may lose a suffix of the records (and then
 * every effect) or a suffix of the effects, never a middle part. Same configuration,
 * crypto and inputs give the same Ready, byte for byte.
 *   persist: PersistedRecord[]      append to durable storage (see `compactRecords`).
 *   effects: Effect[], in order:
 *   - send {to: id | 'all', msg}    'all' is every other replica.
 *   - decide {seq, view, batch, execute}   apply `execute` (the batch after per-client dedupe).
 *   - takeCheckpoint {seq, clients} store the app snapshot with the client table, then
 *                                   input checkpointReady(seq, appDigest).
 *   - resendReply {client, seq}     the request already executed: resend the cached reply.
 *   - refused {client, seq, reason} the request was not admitted: tell the client.
 *   - fetchState {seq, stateDigest, from, proof}   fetch + install a snapshot, then input
 *                                   snapshotInstalled.
 *   - serveDecided {to, seq, toSeq, bytesMax, nonce, stable, lastExecuted}   send `to` the
 *                                   decisions seq..toSeq from the decided log on disk.
 *   - suspect {view, reason} / viewInstalled {view, leader} / peerFlooding {peer} /
 *     divergence {seq, own, stable}   status and alarms.
 *
 * The core has no timer to set: the runtime ticks it steadily (every 10 ms), and the
 * simulator every simulated tick.
 *
 * Restart: construct with every record persisted so far (or `compactRecords` of them);
 * the runtime restores its application from the base snapshot record and replays the
 * `decided` records after it.
 *
 * Status: `core.status()` gives view, installedView, leader, status, lastExecuted,
 * stableSeq (h), pending, transferTo; `core.sizes()` the size of every bounded structure;
 * `core.exportClients()` the client table (lastExecutedSeq per client), which also
 * travels in every snapshot so that deduplication survives state transfer.
 *
 * Modes: 'bft' uses quorums of 2f+1 of n = 3f+1 with PREPARE and COMMIT phases; 'cft' runs
 * on the same group with majority quorums floor(n/2)+1 and no PREPARE phase. `quorum(n, f,
 * mode)` is the one quorum helper. PROTOCOL.md beside this file is the protocol reference,
 * with every departure from the textbook protocol (its §11).
 *
 * Test seams: OrderingCore has protected methods (quorumSize, voteKey, voteMatches,
 * recomputesNewView) that only test subclasses override, to build deliberately broken
 * cores the simulator must catch. Production code constructs OrderingCore itself.
 *
 * Layout: core.ts holds `step`, the dispatch and the normal case; state.ts the state all
 * parts share and a map of the modules that implement the rest.
 *
 * Per-client integrity: a client's requests execute in order with no gap
 * (next.seq == prev.seq + prev.span); `lastExecutedSeq[client]` is seq+span-1 of the last
 * executed one. Requests at or below it are answered again (`resendReply`), never run twice.
 */
export { BARRIER_CLIENT, barrierOf, barrierRequest, isBarrier } from "./barrier.ts";
export { CLIENT_PENDING_WINDOWS, ClientTable, type ClientTableExport, PendingPool, requestKey } from "./clients.ts";
export {
  type CoreConfig,
  type CoreParameters,
  checkConfig,
  DEFAULT_PARAMETERS,
  type FaultMode,
  leaderOf,
  makeConfig,
  quorum,
  type ReplicaId,
  weakQuorum,
} from "./config.ts";
export { CoreAssertionError, OrderingCore } from "./core.ts";
export { decidedItemBytes } from "./checkpoints.ts";
export {
  bodyMatches,
  type CertContext,
  digestOfBatch,
  planNewView,
  validCheckpointProof,
  wellFormedDecisionCert,
  validPreparedCert,
  validViewChange,
  verifySigned,
} from "./certs.ts";
export {
  batchBytes,
  type Checkpoint,
  type ClientRequest,
  type Commit,
  type DecidedItem,
  DIGEST_BYTES,
  DOMAIN,
  type Forward,
  type NewView,
  NULL_DIGEST,
  SIGNED_VOTE_BYTES_MAX,
  type PeerMessage,
  type PeerMessageKind,
  type Prepare,
  type PreparedCert,
  type PrePrepare,
  SIGNATURE_BYTES,
  type SignedMessage,
  signerOf,
  signingBytes,
  type StableProof,
  type StateRequest,
  type StateResponse,
  validateClientRequest,
  validatePeerMessage,
  type ViewChange,
} from "./messages.ts";
export { compactRecords } from "./persist.ts";
export type { CoreCrypto, CoreInput, CoreSizes, CoreStatus, Effect, PersistedRecord, Ready, Refusal, SuspectReason } from "./types.ts";
