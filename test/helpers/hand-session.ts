/**
 * A client session spoken by hand over a raw socket, for tests that look at what a replica
 * does to one session: HELLO, AUTH, then signed requests written as the test says, the
 * frames received kept in order (wire/PROTOCOL.md 5.2).
 */
import net from "node:net";
import { buildRequest } from "../../src/client/request.ts";
import type { SigningKey } from "../../src/crypto/keys.ts";
import type { SessionFraming } from "../../src/crypto/session.ts";
import { FrameDecoder } from "../../wire/frame.ts";
import type { Frame, HelloAck, Op } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";
import { decodeSessionFrame, encodeSessionFrame, rawClientAuth, rawClientHello } from "./client-session.ts";
import { waitFor } from "./wait.ts";

export class HandSession {
  readonly frames: Frame[] = [];
  private readonly socket: net.Socket;
  private readonly decoder = new FrameDecoder({ copyPayloads: true });
  private framing: SessionFraming | null = null;
  /** The seq of the last request written. */
  seq = 0;

  constructor(
    port: number,
    private readonly key: SigningKey,
  ) {
    this.socket = net.createConnection({ host: "127.0.0.1", port });
    this.socket.on("data", (chunk: Buffer) => {
      for (const result of this.decoder.push(new Uint8Array(chunk))) {
        if (!result.ok) continue;
        const decoded = decodeSessionFrame(result, this.framing);
        if (decoded.ok) this.frames.push(decoded.frame);
      }
    });
    this.socket.on("error", () => {});
  }

  /** Takes the first frame of `type` received, waiting for it (or an ERROR) up to 20 s. */
  async next(type: Frame["type"], what: string): Promise<Frame> {
    await waitFor(what, () => this.frames.some((f) => f.type === type || f.type === FrameType.ERROR), 20_000);
    const index = this.frames.findIndex((f) => f.type === type);
    if (index < 0) throw new Error(`${what}: got ${JSON.stringify(this.frames)}`);
    return this.frames.splice(index, 1)[0] as Frame;
  }

  /** `version`: the protocol version of the HELLO (default: this one's); the HELLO_ACK is returned. */
  async handshake(version?: number): Promise<HelloAck> {
    const state = rawClientHello(this.key, version);
    this.socket.write(encodeSessionFrame({ type: FrameType.HELLO, body: state.hello }, null));
    const ack = await this.next(FrameType.HELLO_ACK, "HELLO_ACK");
    if (ack.type !== FrameType.HELLO_ACK) throw new Error("not a HELLO_ACK");
    const { auth, framing } = rawClientAuth(this.key, state, ack.body);
    this.socket.write(encodeSessionFrame(auth, null));
    this.framing = framing;
    return ack.body;
  }

  /** Signs each op as the session's next request and writes them all at once. */
  writeRequests(ops: readonly Op[]): void {
    const parts: Uint8Array[] = [];
    for (const op of ops) {
      this.seq++;
      const built = buildRequest(this.key, { seq: this.seq, ts: Date.now(), op }, 1 << 20);
      parts.push((this.framing as SessionFraming).sealer.seal(built.frame));
    }
    this.socket.write(Buffer.concat(parts));
  }

  /** Writes one frame of the session (sealed once the handshake is done). */
  send(frame: Frame): void {
    this.socket.write(encodeSessionFrame(frame, this.framing));
  }

  /** Stops reading the socket: the replica's writes fill the kernel's buffers, then wait in the replica. */
  pauseReading(): void {
    this.socket.pause();
  }

  resumeReading(): void {
    this.socket.resume();
  }

  destroy(): void {
    this.socket.destroy();
  }
}
