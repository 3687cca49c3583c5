/**
 * A test-only compromised replica: it holds a real replica's key and speaks the real
 * client protocol on that replica's port, but serves forged events. It is not part of the
 * shipped binary; it exists to show that subscribers of Byzantine channels cannot be
 * fooled by up to f such replicas.
 */
import { randomBytes } from "node:crypto";
import type { Socket, TCPSocketListener } from "bun";
import { signDomain } from "../../src/crypto/ed25519.ts";
import type { SigningKey } from "../../src/crypto/keys.ts";
import { encodeFrame, FrameDecoder } from "../../wire/frame.ts";
import { decodeFrameBody, encodeFrameBody, type Frame, type Hello, type SignedRequest } from "../../wire/schemas.ts";
import { sessionTranscript } from "../../wire/session.ts";
import { DOMAIN_SESSION_RESPONDER, FrameType, PROTOCOL_VERSION } from "../../wire/types.ts";

export interface ForgedBatch {
  /** Channel seq (total order) or publisher seq (unordered) the forgery claims. */
  readonly seq: number;
  readonly req: SignedRequest;
}

export interface EvilReplica {
  readonly subscriptions: number;
  stop(): void;
}

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
  const listener: TCPSocketListener<{ decoder: FrameDecoder; hello: Hello | null }> = Bun.listen({
    hostname: "127.0.0.1",
    port: options.port,
    data: { decoder: new FrameDecoder(), hello: null },
    socket: {
      open(socket) {
        socket.data = { decoder: new FrameDecoder(), hello: null };
      },
      data(socket, chunk) {
        for (const result of socket.data.decoder.push(chunk)) {
          if (!result.ok) return void socket.end();
          const decoded = decodeFrameBody(result.type, result.payload);
          if (!decoded.ok) return void socket.end();
          onFrame(socket as Socket<{ decoder: FrameDecoder; hello: Hello | null }>, decoded.frame);
        }
      },
    },
  });

  function send(socket: Socket<unknown>, frame: Frame): void {
    socket.write(encodeFrame(frame.type, encodeFrameBody(frame)));
  }

  function onFrame(socket: Socket<{ decoder: FrameDecoder; hello: Hello | null }>, frame: Frame): void {
    switch (frame.type) {
      case FrameType.HELLO: {
        if (frame.body.role !== "client") return void socket.end();
        const unsigned = {
          v: PROTOCOL_VERSION,
          replica: options.id,
          key: options.key.publicKey,
          nonce: new Uint8Array(randomBytes(32)),
        } as const;
        const transcript = sessionTranscript(frame.body, unsigned);
        send(socket, {
          type: FrameType.HELLO_ACK,
          body: { ...unsigned, sig: signDomain(options.key, DOMAIN_SESSION_RESPONDER, transcript) },
        });
        return;
      }
      case FrameType.SUBSCRIBE: {
        subscriptions++;
        const { sub, tag } = frame.body;
        send(socket, { type: FrameType.SUB_OK, body: { sub, replica: options.id, next: options.next() } });
        for (const forged of options.forgeries()) {
          send(socket, { type: FrameType.EVENTS, body: { sub, tag, seq: forged.seq, req: forged.req, replica: options.id } });
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
    stop() {
      listener.stop(true);
    },
  };
}
