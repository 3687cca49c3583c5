/**
 * A compromised replica cannot have a client decode a CBOR "bomb" (src/client/replica-frames.ts):
 * a QUERY_REPLY, whose `res` is open, is decoded up to the values the largest answer of a
 * correct replica holds, and one past that is dropped and counted like any frame that does
 * not decode, the session going on; an EVENTS copy's body up to what a valid request holds
 * (shared-bodies.ts, readBody). The largest legitimate answers still decode.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { Socket, TCPSocketListener } from "bun";
import { parseChannelKeys } from "../../src/client/channel-listing.ts";
import { ReplicaConnection } from "../../src/client/connection.ts";
import { parseChannelList, parseMembers, parseQuotas } from "../../src/client/queries.ts";
import { decodeReplicaFrame, QUERY_REPLY_ITEMS_MAX } from "../../src/client/replica-frames.ts";
import { buildRequest } from "../../src/client/request.ts";
import { readBody } from "../../src/client/shared-bodies.ts";
import { CHANNELS_MAX, KEYS_PER_CHANNEL_MAX, QUOTAS_MAX, TAG_BYTES_MAX } from "../../src/core/channels/constants.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import type { SessionFraming } from "../../src/crypto/session.ts";
import { type Canonical, decodeCanonical, encodeCanonical } from "../../wire/canonical.ts";
import { FrameDecoder } from "../../wire/frame.ts";
import { type Frame, REQUEST_BODY_ITEMS_MAX } from "../../wire/schemas.ts";
import { FRAME_BYTES_MAX, FrameType, REPLICAS_MAX, REQUEST_EVENTS_MAX } from "../../wire/types.ts";
import { decodeSessionFrame, encodeSessionFrame, replicaSessionKeys, testConnectionOptions } from "../helpers/client-session.ts";
import { waitFor } from "../helpers/wait.ts";

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
});

/** `count` empty arrays: one value each, one byte each on the wire. */
function emptyArrays(count: number): Canonical[] {
  return Array.from({ length: count }, () => []);
}

/** A QUERY_REPLY frame's payload (no framing) answering query 1 with `res`. */
function queryReplyPayload(res: Canonical): Uint8Array {
  return encodeCanonical({ id: 1, replica: 3, ok: true, res, at: Number.MAX_SAFE_INTEGER });
}

/** A tag of TAG_BYTES_MAX characters ending in `n`: the longest a channel has. */
function longTag(n: number): string {
  const suffix = `.${n}`;
  return `${"t".repeat(TAG_BYTES_MAX - suffix.length)}${suffix}`;
}

/** A channel as list-channels and channel-info describe it (PROTOCOL.md section 8), every figure at its largest. */
function channelMap(n: number): { [key: string]: Canonical } {
  const big = Number.MAX_SAFE_INTEGER;
  return {
    tag: longTag(n),
    fault: "byzantine",
    order: "total",
    priority: "critical",
    public: false,
    publishers: KEYS_PER_CHANNEL_MAX,
    subscribers: KEYS_PER_CHANNEL_MAX,
    retention: { events: big, bytes: big, ageMs: big },
    next: big,
    oldest: big,
    events: big,
    bytes: big,
  };
}

function key32(n: number): Uint8Array {
  const key = new Uint8Array(32);
  new DataView(key.buffer).setUint32(0, n);
  return key;
}

function group(epoch: number): { [key: string]: Canonical } {
  const members = Array.from({ length: REPLICAS_MAX }, (_, id) => ({
    id,
    host: "h".repeat(253),
    port: 65_535,
    peerPort: 65_535,
    key: key32(id),
  }));
  return { epoch, f: 21, members, digest: key32(epoch) };
}

describe("a QUERY_REPLY from a replica is decoded within the largest legitimate answer", () => {
  test("one holding more values than any correct replica's answer is refused, not decoded to the end", () => {
    const bomb = queryReplyPayload(emptyArrays(QUERY_REPLY_ITEMS_MAX));
    const decoded = decodeReplicaFrame(FrameType.QUERY_REPLY, bomb);
    expect(decoded.ok).toBe(false);
    if (!decoded.ok) {
      expect(decoded.error.kind).toBe("malformed-cbor");
      expect(decoded.error.reason).toContain("items-exceeded");
      expect(decoded.error.fatal).toBe(false);
    }
  });

  test("list-channels with the most channels a cluster may have, every field at its longest, decodes", () => {
    const channels = Array.from({ length: CHANNELS_MAX }, (_, n) => channelMap(n));
    const decoded = decodeReplicaFrame(FrameType.QUERY_REPLY, queryReplyPayload({ channels }));
    expect(decoded.ok).toBe(true);
    if (decoded.ok && decoded.frame.type === FrameType.QUERY_REPLY && decoded.frame.body.ok) {
      expect(parseChannelList(decoded.frame.body.res)).toHaveLength(CHANNELS_MAX);
    }
  });

  test("the other largest answers decode: channel-info with both key lists full, quotas, members with a pending change", () => {
    const keys = Array.from({ length: KEYS_PER_CHANNEL_MAX }, (_, n) => key32(n));
    const info = { ...channelMap(0), publisherKeys: keys, subscriberKeys: keys };
    const quotas = {
      quotas: Array.from({ length: QUOTAS_MAX }, (_, n) => ({
        key: key32(n),
        eventsPerSecond: Number.MAX_SAFE_INTEGER,
        bytesPerSecond: Number.MAX_SAFE_INTEGER,
        subscriptions: Number.MAX_SAFE_INTEGER,
      })),
    };
    const members = { ...group(7), pending: { ...group(8), from: Number.MAX_SAFE_INTEGER } };
    for (const [res, read] of [
      [info, parseChannelKeys],
      [quotas, parseQuotas],
      [members, parseMembers],
    ] as const) {
      const decoded = decodeReplicaFrame(FrameType.QUERY_REPLY, queryReplyPayload(res));
      expect(decoded.ok).toBe(true);
      if (decoded.ok && decoded.frame.type === FrameType.QUERY_REPLY && decoded.frame.body.ok) {
        expect(read(decoded.frame.body.res)).not.toBeNull();
      }
    }
  });

  test("a refusal, and other frame types, decode as the wire layer decodes them", () => {
    const refusal = encodeCanonical({ id: 1, replica: 0, ok: false, code: "UNKNOWN_CHANNEL", reason: "no channel x", at: 5 });
    const decoded = decodeReplicaFrame(FrameType.QUERY_REPLY, refusal);
    expect(decoded.ok && decoded.frame.type === FrameType.QUERY_REPLY && !decoded.frame.body.ok && decoded.frame.body.at).toBe(5);
    const badSchema = decodeReplicaFrame(FrameType.QUERY_REPLY, encodeCanonical({ id: 1, replica: 0, ok: "yes" }));
    expect(badSchema.ok ? null : badSchema.error.kind).toBe("schema");
    const pong = decodeReplicaFrame(FrameType.PONG, encodeCanonical({ n: 4 }));
    expect(pong.ok && pong.frame.type === FrameType.PONG && pong.frame.body.n).toBe(4);
  });
});

/**
 * A fake replica on loopback holding replica `id`'s key: it completes the session
 * handshake, then sends `afterAuth`'s frames, sealed, in order.
 */
function fakeReplica(key: SigningKey, id: number, afterAuth: () => readonly Frame[]): number {
  type State = { decoder: FrameDecoder; pending: SessionFraming | null; framing: SessionFraming | null };
  const send = (socket: Socket<State>, frame: Frame): void => {
    socket.write(encodeSessionFrame(frame, socket.data.framing));
  };
  const listener: TCPSocketListener<State> = Bun.listen<State>({
    hostname: "127.0.0.1",
    port: 0,
    data: { decoder: new FrameDecoder(), pending: null, framing: null },
    socket: {
      open(socket) {
        socket.data = { decoder: new FrameDecoder({ copyPayloads: true }), pending: null, framing: null };
      },
      data(socket, chunk) {
        for (const result of socket.data.decoder.push(chunk)) {
          if (!result.ok) return void socket.end();
          const decoded = decodeSessionFrame(result, socket.data.framing);
          if (!decoded.ok) return void socket.end();
          const frame = decoded.frame;
          if (frame.type === FrameType.HELLO && frame.body.role === "client") {
            const { ack, framing } = replicaSessionKeys(key, id, frame.body);
            send(socket, { type: FrameType.HELLO_ACK, body: ack });
            socket.data.pending = framing;
          } else if (frame.type === FrameType.AUTH) {
            socket.data.framing = socket.data.pending;
            for (const reply of afterAuth()) send(socket, reply);
          }
        }
      },
    },
  });
  cleanups.push(() => listener.stop(true));
  return listener.port;
}

describe("a client connection given a CBOR bomb by a replica", () => {
  test("drops and counts that frame, stays up, and hands on the replica's next frame", async () => {
    const replicaKey = SigningKey.generate();
    const bomb: Frame = {
      type: FrameType.QUERY_REPLY,
      body: { id: 1, replica: 1, ok: true, res: emptyArrays(2 * QUERY_REPLY_ITEMS_MAX), at: 1 },
    };
    const answer: Frame = { type: FrameType.QUERY_REPLY, body: { id: 2, replica: 1, ok: true, res: { last: 7 }, at: 1 } };
    const port = fakeReplica(replicaKey, 1, () => [bomb, answer]);
    const frames: Frame[] = [];
    const bad: string[] = [];
    const downs: string[] = [];
    const connection = new ReplicaConnection(
      { id: 1, host: "127.0.0.1", port, publicKey: replicaKey.publicKey },
      SigningKey.generate(),
      {
        onReady() {},
        onFrame: (_connection, frame) => frames.push(frame),
        onDown: (_connection, error) => downs.push(error.message),
        onBadFrame: (_connection, reason) => bad.push(reason),
      },
      testConnectionOptions(FRAME_BYTES_MAX),
    );
    cleanups.push(() => connection.close());
    connection.start();
    await waitFor("the frame after the bomb", () => frames.length > 0 || downs.length > 0, 10_000);
    expect(downs).toEqual([]);
    expect(connection.isReady).toBe(true);
    expect(frames).toEqual([answer]);
    expect(connection.droppedFrames).toBe(1);
    expect(bad).toHaveLength(1);
    expect(bad[0]).toContain("items-exceeded");
  });
});

describe("an EVENTS copy's body is read within what a valid request holds", () => {
  const key = SigningKey.generate();
  const request = (events: number) => ({
    seq: 1,
    ts: 1,
    op: { t: "pub" as const, tag: "sec.alerts", events: Array.from({ length: events }, () => new Uint8Array([1])) },
  });

  test("a body with the most events a request may carry is read", () => {
    const built = buildRequest(key, request(REQUEST_EVENTS_MAX), 1 << 20);
    const parsed = readBody(built.body);
    expect(typeof parsed === "string" ? parsed : parsed.op.events.length).toBe(REQUEST_EVENTS_MAX);
  });

  test("a body padded with more values than a valid request holds is undecodable, not read to the end", () => {
    const body = decodeCanonical(buildRequest(key, request(1), 1 << 20).body) as { [key: string]: Canonical };
    // Fields beyond the model are ignored, so without the bound this is read as a publish (and only its signature fails).
    const padded = encodeCanonical({ ...body, pad: emptyArrays(REQUEST_BODY_ITEMS_MAX) });
    expect(readBody(padded)).toBe("undecodable");
  });
});
