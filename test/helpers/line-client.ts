/**
 * A client of the relay's line protocol for tests: it connects over TCP or the Unix
 * socket, sends text, and keeps every line the relay sends, so a test waits for the lines
 * it expects (never for a time).
 */
import type { Socket } from "bun";
import { waitFor } from "./wait.ts";

/** Where the relay listens: a TCP port on loopback, or a Unix socket. */
/** The complete lines of `text` (what precedes its last newline), each without its newline. */
export function completeLines(text: string): string[] {
  return text
    .slice(0, text.lastIndexOf("\n") + 1)
    .split("\n")
    .slice(0, -1);
}

export type LineClientTarget = number | { readonly unix: string };

export class LineClient {
  readonly lines: string[] = [];
  /** The relay closed the connection. */
  closed = false;
  private rest = "";
  private socket: Socket<undefined> | null = null;

  /** Connects; `cleanups` gets the function that ends the connection when the test is done. */
  static async connect(to: LineClientTarget, cleanups: (() => void | Promise<void>)[], host = "127.0.0.1"): Promise<LineClient> {
    const client = new LineClient();
    const handler = {
      data: (_socket: Socket<undefined>, chunk: Uint8Array) => client.onData(chunk),
      close: () => {
        client.closed = true;
      },
    };
    client.socket =
      typeof to === "number"
        ? await Bun.connect({ hostname: host, port: to, socket: handler })
        : await Bun.connect({ unix: to.unix, socket: handler });
    cleanups.push(() => {
      client.socket?.end();
    });
    return client;
  }

  send(text: string): void {
    this.socket?.write(text);
  }

  /** The next `count` lines, once they have arrived. */
  async nextLines(count: number): Promise<string[]> {
    await waitFor(
      `${count} lines`,
      () => this.lines.length >= count,
      undefined,
      () => JSON.stringify(this.lines),
    );
    return this.lines.splice(0, count);
  }

  private onData(chunk: Uint8Array): void {
    this.rest += new TextDecoder().decode(chunk);
    const parts = this.rest.split("\n");
    this.rest = parts.pop() as string;
    this.lines.push(...parts);
  }
}
