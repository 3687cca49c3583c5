/**
 * A test-only compromised replica: it holds a real replica's key and speaks the real
 * client protocol on that replica's port, but serves forged events. It is not part of the
 * shipped binary; it exists to show that subscribers of Byzantine channels cannot be
 * fooled by up to f such replicas.
 */
import type { Socket, TCPSocketListener } from "bun";
import type { SigningKey } from "../../src/crypto/keys.ts";
import type { SessionFraming } from "../../src/crypto/session.ts";
import { FrameDecoder } from "../../wire/frame.ts";
import type { Frame, SignedRequest } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";
import { decodeSessionFrame, encodeSessionFrame, replicaSessionKeys } from "../helpers/client-session.ts";

export interface ForgedBatch {
  /** Channel seq (total order) or publisher seq (unordered) the forgery claims. */
  readonly seq: number;
  readonly req: SignedRequest;
}

export interface EvilReplica {
  readonly subscriptions: number;
  /** Shared EVENTS frames sent (`subs`: every sub id the connection opened, and one it did not). */
  readonly sharedFrames: number;
  stop(): void;
}

/** A sub id no client opened: a shared frame names it too. */
const MADE_UP_SUB = 999_999_999;

/**
 * Starts the evil replica. For every SUBSCRIBE it answers SUB_OK and then sends each of
 * `forgeries()` as an EVENTS frame, claiming the channel's next seqs.
 */
export function startEvilReplica(options: {
  readonly id: number;
  readonly port: number;
  readonly key: SigningKey;
  readonly forgeries: () => readonly ForgedBatch[];
  readonly next: () => number;
}): EvilReplica {
  let subscriptions = 0;
  let sharedFrames = 0;
  // It holds the replica's key, so it completes the session handshake and MACs its frames
  // like the real one: the MAC proves which replica sent a frame, not that it is honest.
  type State = { decoder: FrameDecoder; pending: SessionFraming | null; framing: SessionFraming | null; subs: number[] };
  const listener: TCPSocketListener<State> = Bun.listen({
    hostname: "127.0.0.1",
    port: options.port,
    data: { decoder: new FrameDecoder(), pending: null, framing: null, subs: [] },
    socket: {
      open(socket) {
        socket.data = { decoder: new FrameDecoder({ copyPayloads: true }), pending: null, framing: null, subs: [] };
      },
      data(socket, chunk) {
        for (const result of socket.data.decoder.push(chunk)) {
          if (!result.ok) return void socket.end();
          const decoded = decodeSessionFrame(result, socket.data.framing);
          if (!decoded.ok) return void socket.end();
          onFrame(socket as Socket<State>, decoded.frame);
        }
      },
    },
  });

  function send(socket: Socket<State>, frame: Frame): void {
    socket.write(encodeSessionFrame(frame, socket.data.framing));
  }

  function onFrame(socket: Socket<State>, frame: Frame): void {
    switch (frame.type) {
      case FrameType.HELLO: {
        if (frame.body.role !== "client") return void socket.end();
        const { ack, framing } = replicaSessionKeys(options.key, options.id, frame.body);
        send(socket, { type: FrameType.HELLO_ACK, body: ack });
        socket.data.pending = framing;
        return;
      }
      case FrameType.AUTH:
        // The signature is not checked: this replica lies, it does not guard anything.
        socket.data.framing = socket.data.pending;
        return;
      case FrameType.SUBSCRIBE: {
        subscriptions++;
        const { sub, tag } = frame.body;
        send(socket, { type: FrameType.SUB_OK, body: { sub, replica: options.id, next: options.next() } });
        for (const forged of options.forgeries()) {
          send(socket, { type: FrameType.EVENTS, body: { sub, tag, seq: forged.seq, req: forged.req, replica: options.id } });
        }
        // And once more in shared frames naming every subscription of this connection
        // (of any channel, shared or not) and one that does not exist.
        socket.data.subs.push(sub);
        const subs = [...new Set([...socket.data.subs, MADE_UP_SUB])].sort((a, b) => a - b);
        for (const forged of options.forgeries()) {
          send(socket, { type: FrameType.EVENTS, body: { subs, tag, seq: forged.seq, req: forged.req, replica: options.id } });
          sharedFrames++;
        }
        return;
      }
      case FrameType.QUERY: {
        // Lies about everything it is asked; voting must see through it.
        send(socket, {
          type: FrameType.QUERY_REPLY,
          body: { id: frame.body.id, replica: options.id, ok: false, code: "INTERNAL", reason: "evil" },
        });
        return;
      }
      case FrameType.PING:
        send(socket, { type: FrameType.PONG, body: { n: frame.body.n } });
        return;
      default:
        return;
    }
  }

  return {
    get subscriptions() {
      return subscriptions;
    },
    get sharedFrames() {
      return sharedFrames;
    },
    stop() {
      listener.stop(true);
    },
  };
}
