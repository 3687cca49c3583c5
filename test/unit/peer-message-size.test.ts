/**
 * Every message the ordering core sends fits one peer frame, whatever the requests: the
 * runtime sizes the core's request and batch bounds from the cluster's frame limit
 * (coreConfigFor), and the core bounds FORWARDs and STATE_RESPONSEs in bytes like a batch.
 * A message over the limit would be refused by the receiving replica's decoder and tear
 * the link down, and a client could trigger it with two large publishes.
 */
import { encodeEnvelope, PEER_MESSAGE_BYTES_PER_ITEM_MIN, peerMessageItemsMax, readEnvelope } from "../../src/replica/peer-messages.ts";
import { describe, expect, test } from "bun:test";
import type { Socket } from "bun";
import { largestGroupSize, largestViewChangeF, newViewBytesBound, parseClusterConfig } from "../../src/config/cluster.ts";
import { formatPublicKey, SigningKey } from "../../src/crypto/keys.ts";
import {
  type ClientRequest,
  INSTANCE_SEQ_MAX,
  PREPARED_CERTS_MAX,
  REQUEST_BODY_BYTES_MAX,
  REQUEST_FIELDS_BYTES,
  REQUEST_SPAN_MAX,
  requestBytes,
  SIGNED_VOTE_BYTES_MAX,
  TIMESTAMP_MS_MAX,
  TRANSFER_ITEMS_MAX,
  VIEW_MAX,
} from "../../src/core/ordering/messages.ts";
import { DEFAULT_PARAMETERS, quorum } from "../../src/core/ordering/config.ts";
import { REPLICAS_MAX } from "../../wire/types.ts";
import { FramedConn } from "../../src/replica/framed.ts";
import { coreConfigFor, peerEnvelopeBytes } from "../../src/replica/ordering-driver.ts";
import { REQUEST_BYTES_MAX, TAG_BYTES_MAX } from "../../src/core/channels/constants.ts";
import { PEER_FRAME_OVERHEAD_BYTES } from "../../src/replica/peers.ts";
import { CLUSTER_PARAMETERS, ManualCluster, type QueuedMessage } from "../../src/sim/cluster.ts";
import { REQUEST_HEADER_BYTES } from "../../src/sim/crypto.ts";
import { type Canonical, decodeCanonical, encodeCanonical } from "../../wire/canonical.ts";
import { FRAME_BYTES_MAX, FrameType } from "../../wire/types.ts";

const KIB = 1024;
const SIG_BYTES = 64;
const CLIENT_NAME_BYTES = 64;

const keys = Array.from({ length: 5 }, () => formatPublicKey(SigningKey.generate().publicKey));

function clusterWithFrames(frameBytesMax: number) {
  const replicas = [0, 1, 2, 3]
    .map((id) => `[[replicas]]\nid = ${id}\nhost = "127.0.0.1"\nport = ${7100 + id}\nkey = "${keys[id]}"\n`)
    .join("\n");
  const eventBytes = Math.min(Math.floor(frameBytesMax / 2), 1024 * KIB);
  const text = `name = "size-test"\nf = 1\nadmin_keys = ["${keys[4]}"]\n\n${replicas}\n[limits]\nframe_bytes_max = ${frameBytesMax}\nevent_bytes_max = ${eventBytes}\n`;
  const parsed = parseClusterConfig(text, "/virtual/cluster.toml");
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.errors));
  return parsed.config;
}

/** Bytes of `msg` in a PEER frame, as the mesh sends it. */
function frameBytes(msg: QueuedMessage["msg"]): number {
  return encodeEnvelope("ordering", msg as unknown as Canonical).length + PEER_FRAME_OVERHEAD_BYTES;
}

describe("peer messages fit one frame", () => {
  // The cluster file has f = 1; set-f may raise the group's f up to the largest whose
  // NEW_VIEW fits a frame (4 at 4 MiB), and a decided batch then carries 2f+1 = 9 COMMITs.
  const cases = [
    { frameBytesMax: 512 * KIB, f: 1 },
    { frameBytesMax: 1024 * KIB, f: 1 },
    { frameBytesMax: 4096 * KIB, f: 1 },
    // Frames of 2 MiB bound the largest request (the room is under REQUEST_BYTES_MAX).
    { frameBytesMax: 2048 * KIB, f: largestViewChangeF(2048 * KIB) },
    { frameBytesMax: 4096 * KIB, f: largestViewChangeF(4096 * KIB) },
  ];
  for (const { frameBytesMax, f } of cases) {
    test(`frame limit ${frameBytesMax / KIB} KiB, group f = ${f}: forwards of the largest requests, their batches and a lagging replica's catch-up`, () => {
      const cfg = coreConfigFor(clusterWithFrames(frameBytesMax), 0);
      const lagging = 3 * f;
      const c = new ManualCluster({
        f,
        clients: 5,
        params: {
          ...CLUSTER_PARAMETERS,
          requestBytesMax: cfg.requestBytesMax,
          batchBytesMax: cfg.batchBytesMax,
          batchRequestsMax: cfg.batchRequestsMax,
          checkpointInterval: 64,
          logWindow: 128,
          // As many decided batches per answer as the runtime sends.
          transferItemsMax: cfg.transferItemsMax,
        },
      });
      let largest = 0;
      let messages = 0;
      /** Messages whose envelope the receiving runtime would not read within peerMessageItemsMax. */
      let unread = 0;
      const measure =
        (cutOff: number | null) =>
        (m: QueuedMessage): boolean => {
          largest = Math.max(largest, frameBytes(m.msg));
          if (!readEnvelope(encodeEnvelope("ordering", m.msg as unknown as Canonical)).ok) unread++;
          messages++;
          return cutOff === null || (m.from !== cutOff && m.to !== cutOff);
        };
      // Requests as large as the core admits, from three clients at once, all given to a
      // backup (so they travel in FORWARDs), while the last replica hears nothing.
      const payload = "x".repeat(cfg.requestBytesMax - REQUEST_HEADER_BYTES - SIG_BYTES - CLIENT_NAME_BYTES - REQUEST_FIELDS_BYTES);
      for (let round = 1; round <= 2; round++) {
        for (let client = 0; client < 3; client++) c.submit(1, c.request(client, round, 1, payload));
        c.runUntil(() => c.lastExecuted(0) >= round * 3 || c.lastExecuted(0) >= round * 2, 200, measure(lagging));
      }
      // Many small ones too, so count bounds and byte bounds both come into play.
      for (let seq = 3; seq <= 40; seq++) c.submit(1, c.request(3, seq - 2, 1, "y".repeat(200)));
      c.runUntil(() => c.lastExecuted(0) === c.lastExecuted(1) && c.core(1).status().pending === 0, 400, measure(lagging));
      // Medium ones, each decided alone, so that one catch-up answer holds many items close
      // to its byte bound: each item's votes and fields count, not only its batch.
      const medium = "z".repeat(Math.floor(cfg.batchBytesMax / 24));
      for (let seq = 1; seq <= 30; seq++) {
        c.submit(1, c.request(4, seq, 1, medium));
        c.runUntil(() => c.core(1).status().pending === 0 && c.lastExecuted(0) === c.lastExecuted(1), 200, measure(lagging));
      }
      const target = c.lastExecuted(0);
      expect(target).toBeGreaterThanOrEqual(4);
      // Replica 3 comes back and catches up from decided batches (STATE_RESPONSEs).
      c.runUntil(() => c.lastExecuted(lagging) === target, 400, measure(null));
      expect(messages).toBeGreaterThan(0);
      expect(unread).toBe(0);
      expect(largest).toBeLessThanOrEqual(frameBytesMax);
      // The bound is used, not avoided: the largest message is a good part of a frame.
      expect(largest).toBeGreaterThan(cfg.requestBytesMax);
      // A fixed amount of work (2.4 s for f = 4 on an idle host here): bun's default of 5 s
      // would fail it on a busy one.
    }, 60_000);
  }
});

describe("the room a request and a batch get", () => {
  test("leaves a frame room for the COMMITs of the largest f set-f can give the group, not only the cluster file's f", () => {
    const frameBytesMax = 2048 * KIB;
    const config = clusterWithFrames(frameBytesMax);
    const groupF = largestViewChangeF(frameBytesMax);
    expect(groupF).toBeGreaterThan(config.f);
    const cfg = coreConfigFor(config, 0);
    expect(cfg.batchBytesMax).toBeLessThan(REQUEST_BYTES_MAX);
    expect(cfg.batchBytesMax + peerEnvelopeBytes(frameBytesMax, groupF)).toBeLessThanOrEqual(frameBytesMax);
    expect(cfg.requestBytesMax + peerEnvelopeBytes(frameBytesMax, groupF)).toBeLessThanOrEqual(frameBytesMax);
  });
});

/** The largest values every signed vote, header and checkpoint may carry: the worst case for their encoded size. */
const WORST = { digest: new Uint8Array(32).fill(0xff), sig: new Uint8Array(SIG_BYTES).fill(0xff), seq: INSTANCE_SEQ_MAX };
const worstVote = (t: "PREPARE" | "COMMIT", rank: number) => ({
  t,
  view: VIEW_MAX,
  seq: WORST.seq,
  digest: WORST.digest,
  replica: REPLICAS_MAX - 1 - rank,
  sig: WORST.sig,
});
const worstHeader = () => ({
  t: "PRE_PREPARE",
  view: VIEW_MAX,
  seq: WORST.seq,
  digest: WORST.digest,
  ts: TIMESTAMP_MS_MAX,
  batch: null,
  sig: WORST.sig,
});
const worstCheckpoint = (rank: number) => ({
  t: "CHECKPOINT",
  seq: WORST.seq,
  digest: WORST.digest,
  replica: REPLICAS_MAX - 1 - rank,
  sig: WORST.sig,
});
const EPOCH_MAX = Number.MAX_SAFE_INTEGER;

/**
 * The largest NEW_VIEW a correct leader of n replicas tolerating f builds (view-change.ts
 * buildNewView): Q VIEW_CHANGEs, each with a stable proof of n CHECKPOINTs (adopted from a
 * peer: up to n) and a prepared certificate (header and Q-1 PREPAREs) for each seq of the
 * log window, and a header per seq; in a PEER frame of the largest epoch.
 */
function worstNewViewFrameBytes(n: number, f: number): number {
  const q = quorum(n, f, "bft");
  const window = DEFAULT_PARAMETERS.logWindow;
  const viewChange = (rank: number) => ({
    t: "VIEW_CHANGE",
    newView: VIEW_MAX,
    stableSeq: WORST.seq,
    stableDigest: WORST.digest,
    stableProof: Array.from({ length: n }, (_, i) => worstCheckpoint(i)),
    prepared: Array.from({ length: window }, () => ({
      view: VIEW_MAX,
      seq: WORST.seq,
      digest: WORST.digest,
      prePrepare: worstHeader(),
      prepares: Array.from({ length: q - 1 }, (_, i) => worstVote("PREPARE", i)),
      batch: null,
    })),
    replica: REPLICAS_MAX - 1 - rank,
    sig: WORST.sig,
  });
  const newView = {
    t: "NEW_VIEW",
    view: VIEW_MAX,
    viewChanges: Array.from({ length: q }, (_, rank) => viewChange(rank)),
    minS: WORST.seq,
    maxS: WORST.seq,
    o: Array.from({ length: window }, () => worstHeader()),
    sig: WORST.sig,
  };
  return encodeEnvelope("ordering", newView as unknown as Canonical, EPOCH_MAX).length + PEER_FRAME_OVERHEAD_BYTES;
}

describe("newViewBytesBound", () => {
  // [n, f]: n = 3f+1 (Q = 2f+1), and larger groups, whose Q = ceil((n+f+1)/2) is above 2f+1.
  const groups: [number, number][] = [
    [4, 1],
    [7, 2],
    [13, 4],
    [14, 4],
    [16, 1],
    [17, 0],
    [18, 0],
  ];
  for (const [n, f] of groups) {
    test(`n = ${n}, f = ${f} (Q = ${quorum(n, f, "bft")}): holds the largest NEW_VIEW a leader builds, with a few percent to spare`, () => {
      const measured = worstNewViewFrameBytes(n, f);
      const bound = newViewBytesBound(n, f);
      expect(measured).toBeLessThanOrEqual(bound);
      expect(bound).toBeLessThan(measured * 1.1);
    });
  }

  test("a group whose f fits the largest frames with n = 3f+1 may not fit with more replicas: 13 replicas with f = 4 do, 14 do not", () => {
    expect(worstNewViewFrameBytes(13, 4)).toBeLessThanOrEqual(FRAME_BYTES_MAX);
    expect(worstNewViewFrameBytes(14, 4)).toBeGreaterThan(FRAME_BYTES_MAX);
    expect(newViewBytesBound(14, 4)).toBeGreaterThan(FRAME_BYTES_MAX);
    expect(largestViewChangeF(FRAME_BYTES_MAX)).toBe(4);
    expect(largestGroupSize(FRAME_BYTES_MAX)).toBe(17);
  });
});

describe("a decided batch in a STATE_RESPONSE, with the COMMITs and stable proof of the largest group the frames allow", () => {
  /** Requests whose sizes, as the core counts them, add up to `bytes` exactly. */
  function requestsOf(bytes: number): ClientRequest[] {
    const requests: ClientRequest[] = [];
    const client = `${"ab".repeat(32)}:!${"t".repeat(TAG_BYTES_MAX)}`;
    const request = (body: number): ClientRequest => ({
      client,
      seq: INSTANCE_SEQ_MAX,
      span: REQUEST_SPAN_MAX,
      body: new Uint8Array(body),
      sig: new Uint8Array(SIG_BYTES),
    });
    const empty = requestBytes(request(0));
    let left = bytes;
    while (left > 0) {
      const body = Math.min(REQUEST_BODY_BYTES_MAX, left - empty);
      requests.push(request(body));
      left -= requestBytes(request(body));
    }
    expect(left).toBe(0);
    return requests;
  }

  for (const frameBytesMax of [512 * KIB, 1024 * KIB, 1536 * KIB, 2048 * KIB, 4096 * KIB]) {
    test(`frame limit ${frameBytesMax / KIB} KiB: a batch of batchBytesMax, n COMMITs, the sender's two votes and n CHECKPOINTs fit one frame`, () => {
      const cfg = coreConfigFor(clusterWithFrames(frameBytesMax), 0);
      const n = largestGroupSize(frameBytesMax);
      const response = {
        t: "STATE_RESPONSE",
        kind: "decided",
        nonce: Number.MAX_SAFE_INTEGER,
        items: [
          {
            view: VIEW_MAX,
            seq: INSTANCE_SEQ_MAX,
            batch: requestsOf(cfg.batchBytesMax),
            commits: Array.from({ length: n }, (_, i) => worstVote("COMMIT", i)),
            votes: [worstVote("PREPARE", 0), worstVote("COMMIT", 0)],
          },
        ],
        stable: { seq: INSTANCE_SEQ_MAX, digest: WORST.digest, proof: Array.from({ length: n }, (_, i) => worstCheckpoint(i)) },
        lastExecuted: INSTANCE_SEQ_MAX,
      };
      const bytes = encodeEnvelope("ordering", response as unknown as Canonical, EPOCH_MAX).length + PEER_FRAME_OVERHEAD_BYTES;
      expect(bytes).toBeLessThanOrEqual(frameBytesMax);
    });
  }
});

describe("a frame too large to encode", () => {
  test("is refused by FramedConn.send with false, never a throw, and nothing is written", () => {
    const written: Uint8Array[] = [];
    const socket = {
      remoteAddress: "127.0.0.1",
      write: (bytes: Uint8Array) => {
        written.push(bytes);
        return bytes.length;
      },
      end() {},
      flush() {},
    };
    const conn = new FramedConn(socket as unknown as Socket<unknown>, FRAME_BYTES_MAX, 64 * 1024 * 1024);
    const huge = new Uint8Array(FRAME_BYTES_MAX + 1);
    expect(conn.send({ type: FrameType.PEER, body: { seq: 1, msg: huge, mac: new Uint8Array(32) } })).toBe(false);
    expect(written).toEqual([]);
    expect(conn.send({ type: FrameType.PEER, body: { seq: 1, msg: new Uint8Array(10), mac: new Uint8Array(32) } })).toBe(true);
    expect(written.length).toBe(1);
  });
});

describe("SIGNED_VOTE_BYTES_MAX", () => {
  test("holds the largest signed vote of every kind: view and seq at their bounds, the last replica id", () => {
    const digest = new Uint8Array(32).fill(0xff);
    const sig = new Uint8Array(64).fill(0xff);
    const votes = [
      { t: "PREPARE", view: VIEW_MAX, seq: INSTANCE_SEQ_MAX, digest, replica: REPLICAS_MAX - 1, sig },
      { t: "COMMIT", view: VIEW_MAX, seq: INSTANCE_SEQ_MAX, digest, replica: REPLICAS_MAX - 1, sig },
      { t: "CHECKPOINT", seq: INSTANCE_SEQ_MAX, digest, replica: REPLICAS_MAX - 1, sig },
      { t: "PRE_PREPARE", view: VIEW_MAX, seq: INSTANCE_SEQ_MAX, digest, ts: TIMESTAMP_MS_MAX, batch: null, sig },
    ];
    const sizes = votes.map((vote) => encodeCanonical(vote as unknown as Canonical).length);
    for (const size of sizes) expect(size).toBeLessThanOrEqual(SIGNED_VOTE_BYTES_MAX);
    expect(Math.max(...sizes)).toBe(SIGNED_VOTE_BYTES_MAX);
  });
});

describe("REQUEST_FIELDS_BYTES", () => {
  test("holds what a request's own fields take in a message: seq and span at their bounds, the longest client name, the largest body", () => {
    const client = `${"ab".repeat(32)}:!${"t".repeat(TAG_BYTES_MAX)}`;
    const body = new Uint8Array(REQUEST_BODY_BYTES_MAX);
    const sig = new Uint8Array(64);
    const largest = { client, seq: INSTANCE_SEQ_MAX, span: REQUEST_SPAN_MAX, body, sig };
    const smallest = { client: `${"ab".repeat(32)}:t`, seq: 1, span: 1, body: new Uint8Array(0), sig };
    for (const r of [largest, smallest]) {
      const fields = encodeCanonical(r as unknown as Canonical).length - r.body.length - r.sig.length - r.client.length;
      expect(fields).toBeLessThanOrEqual(REQUEST_FIELDS_BYTES);
    }
    const fields = encodeCanonical(largest as unknown as Canonical).length - body.length - sig.length - client.length;
    expect(fields).toBe(REQUEST_FIELDS_BYTES);
  });
});

/** Values (decodeCanonical's items: every item but a map key) in a canonical encoding. */
function valuesIn(value: Canonical): number {
  if (value === null || typeof value !== "object" || value instanceof Uint8Array) return 1;
  const inner = Array.isArray(value) ? value : Object.values(value);
  return 1 + inner.reduce((sum: number, item) => sum + valuesIn(item), 0);
}

describe("the values a peer message may hold (peerMessageItemsMax)", () => {
  const digest = new Uint8Array(32);
  const sig = new Uint8Array(SIG_BYTES);
  const vote = (t: string, replica: number) => ({ t, view: 0, seq: 1, digest, replica, sig });
  const header = { t: "PRE_PREPARE", view: 0, seq: 1, digest, ts: 1, batch: null, sig };
  const request = { client: "ab".repeat(32), seq: 1, span: 1, body: Uint8Array.of(1), sig };
  // The densest parts a correct replica sends, each as often as a message may hold it.
  const densest: [string, Record<string, Canonical>][] = [
    [
      "STATE_RESPONSE of empty bodies without COMMITs (bodyItem)",
      {
        t: "STATE_RESPONSE",
        kind: "batch",
        nonce: 0,
        items: Array.from({ length: TRANSFER_ITEMS_MAX }, (_, i) => ({ view: 0, seq: i + 1, batch: [], commits: [], votes: [] })),
        stable: null,
        lastExecuted: 0,
      },
    ],
    [
      "STATE_RESPONSE of empty batches with one COMMIT each",
      {
        t: "STATE_RESPONSE",
        kind: "decided",
        nonce: 0,
        items: Array.from({ length: TRANSFER_ITEMS_MAX }, (_, i) => ({
          view: 0,
          seq: i + 1,
          batch: [],
          commits: [vote("COMMIT", 0)],
          votes: [],
        })),
        stable: null,
        lastExecuted: 0,
      },
    ],
    [
      "VIEW_CHANGE of certificates without PREPAREs or batches",
      {
        t: "VIEW_CHANGE",
        newView: 1,
        stableSeq: 0,
        stableDigest: digest,
        stableProof: [],
        prepared: Array.from({ length: PREPARED_CERTS_MAX }, (_, i) => ({
          view: 0,
          seq: i + 1,
          digest,
          prePrepare: header,
          prepares: [],
          batch: null,
        })),
        replica: 0,
        sig,
      },
    ],
    ["FORWARD of the smallest requests", { t: "FORWARD", requests: Array.from({ length: 4096 }, () => request) }],
    ["SUSPECT", { t: "SUSPECT", view: 0 }],
    ["STATE_REQUEST", { t: "STATE_REQUEST", kind: "decided", seq: 1, toSeq: 2, digest: null, nonce: 0 }],
  ];
  for (const [name, message] of densest) {
    test(`${name}: read whole, its values within the bound`, () => {
      const bytes = encodeEnvelope("ordering", message, 7);
      const values = valuesIn(decodeCanonical(bytes));
      expect(values).toBeLessThanOrEqual(peerMessageItemsMax(bytes.length));
      expect(readEnvelope(bytes).ok).toBe(true);
    });
  }

  test(`the densest part a correct replica sends takes more than ${PEER_MESSAGE_BYTES_PER_ITEM_MIN} bytes a value`, () => {
    const empty = encodeCanonical({ view: 0, seq: 1, batch: [], commits: [], votes: [] });
    expect(empty.length / valuesIn(decodeCanonical(empty))).toBeGreaterThan(PEER_MESSAGE_BYTES_PER_ITEM_MIN);
  });

  test("an envelope of empty arrays is refused after a quarter of its values, as one that does not decode: proof of a faulty sender", () => {
    const bomb = encodeEnvelope("ordering", { t: "FORWARD", requests: new Array<Canonical>(400_000).fill([]) });
    expect(readEnvelope(bomb)).toEqual({ ok: false, reason: "an envelope that does not decode", proves: true });
  });
});
