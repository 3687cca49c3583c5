/**
 * A TCP proxy for fault tests, run as its own process in a host's namespace in front of a
 * replica: `bun test/fault/proxy.ts LISTEN_HOST:PORT TARGET_HOST:PORT`. It prints `ready`
 * once it listens, then takes one command per line on standard input and answers each
 * with `ok <command>` once it is in force:
 *
 *   pass        forward everything as it comes (the start)
 *   delay MS    hold every chunk MS milliseconds before forwarding it (order kept)
 *   stall       forward nothing; what arrives waits (at most 64 MiB per connection, then
 *               that connection is reset) until the next `pass` or `delay`
 *   reset       close every open connection at once (both sides; new ones are accepted)
 *
 * It exits when standard input closes.
 */
import type { Socket } from "bun";

const STALL_BYTES_MAX = 64 * 1024 * 1024;

type Mode = { kind: "pass" } | { kind: "delay"; ms: number } | { kind: "stall" };

interface Side {
  socket: Socket<Link> | null;
  /** Chunks waiting to be written to this side (peer not connected yet, stalled, or backpressure). */
  queue: Uint8Array[];
  queued: number;
  /** When the last chunk bound for this side is due: later chunks never overtake it. */
  lastDue: number;
}

interface Link {
  client: Side;
  server: Side;
  closed: boolean;
}

function parseHostPort(text: string | undefined): { host: string; port: number } {
  const match = text === undefined ? null : /^(.+):(\d+)$/.exec(text);
  if (match === null) {
    console.error("usage: bun test/fault/proxy.ts LISTEN_HOST:PORT TARGET_HOST:PORT");
    process.exit(2);
  }
  return { host: match[1] as string, port: Number(match[2]) };
}

const listenAt = parseHostPort(process.argv[2]);
const target = parseHostPort(process.argv[3]);
let mode: Mode = { kind: "pass" };
const links = new Set<Link>();

function close(link: Link): void {
  if (link.closed) return;
  link.closed = true;
  links.delete(link);
  link.client.socket?.end();
  link.server.socket?.end();
}

/** Writes what `to` has queued, as far as the socket takes it now. */
function flush(link: Link, to: Side): void {
  const socket = to.socket;
  if (socket === null || link.closed) return;
  while (to.queue.length > 0) {
    const chunk = to.queue[0] as Uint8Array;
    const written = socket.write(chunk);
    if (written < chunk.length) {
      to.queue[0] = chunk.subarray(written);
      to.queued -= written;
      return;
    }
    to.queue.shift();
    to.queued -= chunk.length;
  }
}

function forward(link: Link, to: Side, data: Uint8Array): void {
  const chunk = new Uint8Array(data);
  const deliver = (): void => {
    to.queue.push(chunk);
    to.queued += chunk.length;
    if (mode.kind !== "stall") flush(link, to);
    else if (to.queued > STALL_BYTES_MAX) close(link);
  };
  const now = Date.now();
  const due = Math.max(mode.kind === "delay" ? now + mode.ms : now, to.lastDue);
  to.lastDue = due;
  if (due > now) setTimeout(deliver, due - now);
  else deliver();
}

Bun.listen<Link>({
  hostname: listenAt.host,
  port: listenAt.port,
  socket: {
    open(socket) {
      const link: Link = {
        client: { socket, queue: [], queued: 0, lastDue: 0 },
        server: { socket: null, queue: [], queued: 0, lastDue: 0 },
        closed: false,
      };
      socket.data = link;
      links.add(link);
      Bun.connect<Link>({
        hostname: target.host,
        port: target.port,
        data: link,
        socket: {
          open(server) {
            link.server.socket = server;
            if (mode.kind !== "stall") flush(link, link.server);
          },
          data(_server, data) {
            forward(link, link.client, data);
          },
          drain() {
            flush(link, link.server);
          },
          close() {
            close(link);
          },
          error() {
            close(link);
          },
        },
      }).catch(() => close(link));
    },
    data(socket, data) {
      forward(socket.data, socket.data.server, data);
    },
    drain(socket) {
      flush(socket.data, socket.data.client);
    },
    close(socket) {
      close(socket.data);
    },
    error(socket) {
      close(socket.data);
    },
  },
});
console.log("ready");

function apply(line: string): void {
  const [command, arg] = line.trim().split(/\s+/);
  if (command === "pass") mode = { kind: "pass" };
  else if (command === "delay" && Number(arg) >= 0) mode = { kind: "delay", ms: Number(arg) };
  else if (command === "stall") mode = { kind: "stall" };
  else if (command === "reset") for (const link of [...links]) close(link);
  else {
    console.log(`error unknown command ${JSON.stringify(line.trim())}`);
    return;
  }
  if (mode.kind !== "stall") {
    for (const link of links) {
      flush(link, link.client);
      flush(link, link.server);
    }
  }
  console.log(`ok ${line.trim()}`);
}

let buffered = "";
for await (const chunk of Bun.stdin.stream()) {
  buffered += new TextDecoder().decode(chunk);
  let newline = buffered.indexOf("\n");
  while (newline >= 0) {
    const line = buffered.slice(0, newline);
    buffered = buffered.slice(newline + 1);
    if (line.trim() !== "") apply(line);
    newline = buffered.indexOf("\n");
  }
}
process.exit(0);
