/**
 * Drives the sans-IO ordering core with real time, real crypto and the peer mesh
 * (STYLE.md conventions 1-4): ticks from a timer, messages from the mesh, requests from
 * clients; its outputs become sends, decided batches and checkpoints.
 *
 * Effects are taken in the order the core lists them. A `persist` must complete before
 * any later `send` in the same list; this runtime keeps the core's records in memory
 * (durable storage is a separate layer), so the rule holds trivially here and the
 * ordering is kept so that a disk-backed store can slot in without reordering anything.
 */
import type { ClusterConfig } from "../config/cluster.ts";
import { sign, verify } from "../crypto/ed25519.ts";
import { sha256 } from "../crypto/hash.ts";
import type { SigningKey } from "../crypto/keys.ts";
import { REQUEST_BYTES_MAX } from "../core/channels/constants.ts";
import { DEFAULT_PARAMETERS, makeConfig } from "../core/ordering/config.ts";
import type { ClientRequest, PeerMessage } from "../core/ordering/messages.ts";
import { REQUEST_SPAN_MAX, validatePeerMessage } from "../core/ordering/messages.ts";
import { OrderingCore } from "../core/ordering/core.ts";
import type { CoreCrypto, CoreInput, CoreOutput } from "../core/ordering/types.ts";
import { type Canonical, encodeCanonical, tryDecodeCanonical } from "../../wire/canonical.ts";
import type { Log } from "./log.ts";
import type { Metrics } from "./metrics.ts";
import type { PeerMesh } from "./peers.ts";
import { admitRequest } from "./requests.ts";

/** One core tick in real time (ORDERING.md §10: 1 tick = 10 ms). */
export const TICK_MS = 10;
/** Verified request signatures remembered, so a request is verified once, not per proposal. */
export const VERIFIED_CACHE_MAX = 65_536;

export interface OrderingDriverOptions {
  readonly config: ClusterConfig;
  readonly id: number;
  readonly key: SigningKey;
  readonly log: Log;
  readonly metrics: Metrics;
  readonly mesh: PeerMesh;
  readonly onDecided: (requests: readonly ClientRequest[], decidedSeq: number) => void;
  readonly onResendReply: (space: string, seq: number) => void;
  readonly appDigest: () => Uint8Array;
}

export interface OrderingStatus {
  readonly view: number;
  readonly leader: number;
  readonly status: string;
  readonly lastExecuted: number;
  readonly stableCheckpoint: number;
}

export class OrderingDriver {
  private readonly core: OrderingCore;
  private readonly verified = new Map<string, true>();
  private timer: ReturnType<typeof setInterval> | null = null;

  constructor(private readonly options: OrderingDriverOptions) {
    const { config, id, key } = options;
    const replicaKeys = config.replicas.map((replica) => replica.publicKey);
    const crypto: CoreCrypto = {
      hash: sha256,
      sign: (bytes) => sign(key, bytes),
      verify: (replica, bytes, sig) => {
        const pub = replicaKeys[replica];
        return pub !== undefined && verify(pub, bytes, sig);
      },
      verifyRequest: (req) => this.verifyRequest(req),
    };
    this.core = new OrderingCore(
      makeConfig(
        { id, n: config.n, f: config.f, mode: "bft", clusterId: config.name },
        {
          // A request travels in one frame; a batch of requests must hold the largest one.
          maxRequestBytes: Math.min(config.limits.frameBytesMax, REQUEST_BYTES_MAX),
          maxBatchBytes: Math.max(DEFAULT_PARAMETERS.maxBatchBytes, Math.min(config.limits.frameBytesMax, REQUEST_BYTES_MAX)),
          maxRequestSpan: Math.min(config.limits.batchEventsMax, REQUEST_SPAN_MAX),
          // Clients may keep this many requests in flight; the core must admit them all or
          // a refused early request would leave a gap that later ones wait behind.
          clientWindow: Math.max(DEFAULT_PARAMETERS.clientWindow, config.limits.clientInflightRequestsMax),
        },
      ),
      crypto,
    );
  }

  start(): void {
    this.timer = setInterval(() => this.step({ kind: "tick" }), TICK_MS);
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  /** A request from an authenticated client session whose key signed it. */
  submit(req: ClientRequest): void {
    this.step({ kind: "request", req, authenticated: true });
  }

  onPeerMessage(from: number, bytes: Uint8Array): void {
    const decoded = tryDecodeCanonical(bytes);
    const envelope = decoded.ok ? (decoded.value as { k?: unknown; m?: unknown } | null) : null;
    if (envelope === null || typeof envelope !== "object" || envelope.k !== "ord") {
      this.options.metrics.inc("peer_messages_rejected_total");
      return;
    }
    const msg = validatePeerMessage(envelope.m);
    if (msg === null) {
      this.options.metrics.inc("peer_messages_rejected_total");
      return;
    }
    this.step({ kind: "message", from, msg });
  }

  /** The last executed seq of a client's sequence space (0 if none). Linear: queries are rare. */
  lastExecutedSeq(space: string): number {
    for (const [client, last] of this.core.exportClients()) if (client === space) return last;
    return 0;
  }

  status(): OrderingStatus {
    const s = this.core.status();
    return { view: s.view, leader: s.leader, status: s.status, lastExecuted: s.lastExecuted, stableCheckpoint: s.h };
  }

  private step(input: CoreInput): void {
    let outputs: CoreOutput[];
    try {
      outputs = this.core.step(input);
    } catch (error) {
      // A core assertion failed: this replica's state can no longer be trusted. Stopping
      // is what a crash-tolerant group expects of it; systemd restarts it.
      this.options.log.error("ordering core assertion failed", { error: (error as Error).message });
      process.exit(70);
    }
    for (const output of outputs) this.apply(output);
  }

  private apply(output: CoreOutput): void {
    switch (output.kind) {
      case "send": {
        const bytes = encodeCanonical({ k: "ord", m: output.msg as unknown as Canonical });
        if (output.to === "all") this.options.mesh.broadcast(bytes);
        else this.options.mesh.send(output.to, bytes);
        return;
      }
      case "decide":
        this.options.onDecided(output.execute, output.seq);
        return;
      case "resendReply":
        this.options.onResendReply(output.client, output.seq);
        return;
      case "takeCheckpoint":
        // Execution is synchronous, so the state machine is exactly at `seq` now.
        this.step({ kind: "checkpointReady", seq: output.seq, appDigest: this.options.appDigest() });
        return;
      case "suspect":
        this.options.log.warn("suspecting the leader", { view: output.view, reason: output.reason });
        return;
      case "viewInstalled":
        this.options.log.info("view installed", { view: output.view, leader: output.leader });
        return;
      case "peerFlooding":
        this.options.metrics.inc("peer_flooding_total");
        this.options.log.warn("peer flooding", { peer: output.peer });
        return;
      case "divergence":
        this.options.log.error("state diverged from the stable checkpoint", { seq: output.seq });
        process.exit(70);
        return;
      case "fetchState":
        // State transfer is served by the durability layer; until then a replica that is
        // behind the stable checkpoint stays behind, and says so.
        this.options.metrics.inc("state_transfer_needed_total");
        this.options.log.warn("state transfer needed", { seq: output.seq });
        return;
      case "persist":
      case "setTimer":
        return;
      default: {
        const unreachable: never = output;
        return unreachable;
      }
    }
  }

  /** Checks a request's client signature and that its header matches the signed body. */
  private verifyRequest(req: ClientRequest): boolean {
    const cacheKey = `${req.client}#${req.seq}#${Buffer.from(req.sig).toString("base64")}`;
    if (this.verified.has(cacheKey)) return true;
    const admitted = admitRequest({ body: req.body, sig: req.sig });
    if (!admitted.ok) return false;
    if (admitted.space !== req.client || admitted.request.seq !== req.seq || admitted.request.span !== req.span) return false;
    this.verified.set(cacheKey, true);
    if (this.verified.size > VERIFIED_CACHE_MAX) this.verified.delete(this.verified.keys().next().value as string);
    return true;
  }
}

export type { PeerMessage };
