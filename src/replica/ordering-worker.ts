/**
 * The ordering thread (ordering-host.ts `ThreadCoreHost`): holds the replica's ordering
 * core, runs the steps the event loop hands it in order, and answers each with its Ready,
 * the core's status and the clients its decided batches moved. It signs this replica's
 * peer messages and checks the signatures of its peers' and of the client requests it was
 * not handed verified. No I/O: records, sends and execution stay with the event loop.
 *
 * A step that throws (a core assertion) is answered `failed` and the thread takes nothing
 * more: the replica stops, as it does when the core asserts on the event loop.
 */
import { writeFileSync } from "node:fs";
import type { Priority } from "../core/channels/types.ts";
import { OrderingCore } from "../core/ordering/core.ts";
import type { CoreCrypto } from "../core/ordering/types.ts";
import { sign, verify } from "../crypto/ed25519.ts";
import { nativeBytesEqual } from "../crypto/encoding.ts";
import { sha256 } from "../crypto/hash.ts";
import { SigningKey } from "../crypto/keys.ts";
import { urgencyOfSpace, VerifiedRequests } from "./requests.ts";
import { compacted, type HostAnswer, type HostOp, ORDERING_THREAD_NAME } from "./ordering-host.ts";

declare const self: Worker;

// Named for `top -H`, `ps -L` and /proc (Linux; elsewhere it keeps the runtime's name).
try {
  writeFileSync("/proc/thread-self/comm", ORDERING_THREAD_NAME);
} catch {
  // Not Linux, or /proc is not mounted: only the name is lost.
}

let core: OrderingCore | null = null;
let generation = -1;
let key: SigningKey | null = null;
let keys: readonly Uint8Array[] = [];
let failed = false;
/** The checkpoint of a claimed transfer: steps other than its install wait in `held` (ordering-host.ts claimTransfer). */
let claimed: number | null = null;
let held: HostOp[] = [];
const priorities = new Map<string, Priority>();
const verified = new VerifiedRequests();

const crypto: CoreCrypto = {
  hash: sha256,
  sign: (bytes) => sign(key as SigningKey, bytes),
  verify: (rank, bytes, sig) => {
    const pub = keys[rank];
    return pub !== undefined && verify(pub, bytes, sig);
  },
  verifyRequest: (req, atMs) => verified.check(req, atMs, Date.now),
  sameBytes: nativeBytesEqual,
};
const policy = { urgencyOf: (client: string) => urgencyOfSpace(client, (tag) => priorities.get(tag) ?? null) };

function setPriorities(entries: readonly (readonly [string, Priority])[]): void {
  priorities.clear();
  for (const [tag, priority] of entries) priorities.set(tag, priority);
}

/** Runs the ops held behind a claimed transfer, in their order (they may claim again). */
function releaseHeld(answers: HostAnswer[]): void {
  claimed = null;
  const waiting = held;
  held = [];
  for (const op of waiting) run(op, answers);
}

function run(op: HostOp, answers: HostAnswer[]): void {
  if (claimed !== null && op.k !== "release" && !(op.k === "step" && op.input.kind === "snapshotInstalled" && op.input.seq === claimed)) {
    held.push(op);
    return;
  }
  switch (op.k) {
    case "init":
      key = SigningKey.fromSeed(op.seed);
      keys = op.keys;
      setPriorities(op.priorities);
      core = new OrderingCore(op.cfg, crypto, op.restored, policy);
      generation = 0;
      answers.push({ k: "started" });
      return;
    case "claim": {
      if (core === null) throw new Error("a claim before the core was built");
      const wanted = core.acceptsSnapshot(op.state.seq, op.state.stateDigest, op.state.proof);
      if (wanted) claimed = op.state.seq;
      answers.push({ k: "claim", id: op.id, wanted });
      return;
    }
    case "release":
      if (claimed !== null) releaseHeld(answers);
      return;
    case "replace":
      keys = op.keys;
      core = new OrderingCore(op.cfg, crypto, op.restored, policy);
      generation++;
      return;
    case "priorities":
      setPriorities(op.priorities);
      return;
    case "step": {
      if (core === null) throw new Error("a step before the core was built");
      if (op.verified !== undefined) verified.remember(op.verified.cacheKey, op.verified.stamp);
      let ready: ReturnType<OrderingCore["step"]>;
      try {
        ready = core.step(op.input);
      } catch (error) {
        throw new Error(`ordering core assertion failed: ${(error as Error).message}`);
      }
      // An installed snapshot replaces the client table: all of it; otherwise who moved.
      const allClients = op.input.kind === "snapshotInstalled";
      const clients: (readonly [string, number])[] = allClients ? core.exportClients() : [];
      if (!allClients) {
        for (const effect of ready.effects) {
          if (effect.kind !== "decide") continue;
          for (const req of effect.batch) clients.push([req.client, core.lastExecutedOf(req.client)]);
        }
      }
      answers.push({ k: "ready", id: op.id, gen: generation, ready: compacted(ready), status: core.status(), clients, allClients });
      if (claimed !== null && op.input.kind === "snapshotInstalled") releaseHeld(answers);
      return;
    }
    default: {
      const unreachable: never = op;
      return unreachable;
    }
  }
}

self.onmessage = (message: MessageEvent<readonly HostOp[]>) => {
  if (failed) return;
  const answers: HostAnswer[] = [];
  try {
    for (const op of message.data) run(op, answers);
  } catch (error) {
    failed = true;
    answers.push({ k: "failed", reason: (error as Error).message });
  }
  self.postMessage(answers);
};
