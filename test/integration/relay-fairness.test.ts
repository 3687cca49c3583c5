/**
 * Fairness between the relay's connections, over real sockets with a client the test
 * plays (no cluster): one connection that pipelines a long stream of commands (`yes PING |
 * nc`) must not keep the others waiting. Every await of a connection's command loop may
 * wait on a promise already settled, which runs only the microtask queue; the loop lets
 * the event loop take a turn between two slices of input (src/relay/connection.ts), so
 * the Unix socket's probe is read and answered while the flood is still being worked
 * through, and the flood's answers still come all, in order.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Socket } from "bun";
import type { FitbClient, PublishAck } from "../../src/client/client.ts";
import { RelayServer } from "../../src/relay/server.ts";
import { LineClient } from "../helpers/line-client.ts";
import { waitFor } from "../helpers/wait.ts";

const HOST = "127.0.0.1";
const cleanups: (() => Promise<void> | void)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** The part of FitbClient the relay uses for PING and PUB; nothing here subscribes. */
class PlayedClient {
  readonly config = { limits: { connectionSubscriptionsMax: 64 } };
  /** The relay names its key in refusals of it. */
  readonly publicKey = new Uint8Array(32);
  readonly limits = { subscriptionsMax: 256 };

  publishLimits() {
    return { batchEventsMax: 100, eventBytesMax: 64 * 1024, frameBytesMax: 4 * 1024 * 1024, inflightRequestsMax: 64 };
  }

  publish(tag: string, events: readonly Uint8Array[]): Promise<PublishAck> {
    return Promise.resolve({ tag, span: events.length, pubSeq: 1, channelSeq: 1, firstSeq: 1, replicas: [0, 1] });
  }

  async listChannelClasses(): Promise<never[]> {
    return [];
  }
}

/** A client that sends `data` as fast as the relay takes it, and counts what comes back. */
class Flood {
  received: Uint8Array[] = [];
  receivedBytes = 0;
  private sent = 0;
  private socket: Socket<undefined> | null = null;

  constructor(private readonly data: Uint8Array) {}

  async start(port: number): Promise<void> {
    this.socket = await Bun.connect({
      hostname: HOST,
      port,
      socket: {
        data: (_socket, chunk) => {
          this.received.push(chunk.slice());
          this.receivedBytes += chunk.byteLength;
        },
        drain: () => this.push(),
      },
    });
    cleanups.push(() => {
      this.socket?.end();
    });
    this.push();
  }

  get text(): string {
    return Buffer.concat(this.received).toString("latin1");
  }

  private push(): void {
    while (this.socket !== null && this.sent < this.data.byteLength) {
      const written = this.socket.write(this.data.subarray(this.sent));
      if (written <= 0) return;
      this.sent += written;
    }
  }
}

function socketDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "fitb-relay-fairness-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

describe("one pipelining connection does not hold up the others", () => {
  test("a probe on the Unix socket is answered while a TCP flood of PINGs is still being answered; the flood gets every answer, in order", async () => {
    const socketPath = join(socketDir(), "relay.sock");
    const relay = RelayServer.listen({ client: new PlayedClient() as unknown as FitbClient, hostname: HOST, port: 0, socketPath });
    cleanups.push(() => relay.stop(100));
    // 4 MiB of PING lines: over 800,000 commands, written as fast as the relay reads them.
    const count = 800_000;
    const flood = new Flood(new TextEncoder().encode("PING\n".repeat(count)));
    await flood.start(relay.port);
    await waitFor("the flood's first answers", () => flood.receivedBytes > 0);
    const probe = await LineClient.connect({ unix: socketPath }, cleanups);
    probe.send("PING\n");
    await waitFor("the probe's PONG", () => probe.lines.length > 0);
    const floodAnsweredAtPong = flood.receivedBytes / "PONG\n".length;
    expect(probe.lines).toEqual(["PONG"]);
    await waitFor(
      "every answer of the flood",
      () => flood.receivedBytes >= count * "PONG\n".length,
      60_000,
      () => `${flood.receivedBytes} bytes`,
    );
    expect(flood.text).toBe("PONG\n".repeat(count));
    // Answered within a few slices of the flood's input, not after most of it.
    expect(floodAnsweredAtPong).toBeLessThan(count / 4);
  }, 60_000);
});
