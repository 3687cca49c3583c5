// The relay in front of a real 4-replica cluster, driven with raw TCP bytes as nc would
// drive it (wire/PROTOCOL.md section 11): publish and subscribe on every CLASS, every line
// form, errors, bounds, clients that misbehave, and a replica killed with SIGKILL while
// publishing, after which every acknowledged event is still there.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Socket, SocketHandler } from "bun";
import { FitbClient } from "../../src/client/client.ts";
import { requireClusterConfig, type ClusterConfig } from "../../src/config/cluster.ts";
import { formatPublicKey, loadSigningKeyFile, type SigningKey } from "../../src/crypto/keys.ts";
import { RelayServer } from "../../src/relay/server.ts";
import { clearStaleSocket, socketPathProblem } from "../../src/relay/unix-socket.ts";
import { existsSync, lstatSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EVENT_BYTES_MAX, RELAY_LINE_BYTES_MAX } from "../../wire/types.ts";
import { completeLines } from "../helpers/line-client.ts";
import { waitFor } from "../helpers/wait.ts";
import { BUN, freePortRange, relayArgv, MAIN, startCluster, type TestCluster } from "./harness.ts";

const WAIT_MS = 15_000;
const enc = new TextEncoder();
const dec = new TextDecoder();

const CHANNELS = [
  { tag: "net.links", fault: "crash", order: "none", priority: "normal" },
  { tag: "storage.disks", fault: "crash", order: "total", priority: "high" },
  { tag: "sec.ids", fault: "byzantine", order: "none", priority: "high" },
  { tag: "sec.alerts", fault: "byzantine", order: "total", priority: "critical" },
] as const;

/** A TCP client that sends bytes and keeps everything it receives, as nc does. */
class RawClient {
  private received = new Uint8Array(0);
  private outbox: Uint8Array[] = [];
  private closedFlag = false;
  private socket!: Socket<undefined>;

  /** Connects to the relay's TCP `port`, or to its Unix socket `{ unix: path }`. */
  static async open(port: number | { unix: string }): Promise<RawClient> {
    const client = new RawClient();
    const socket: SocketHandler<undefined> = {
      data: (_socket, chunk) => client.onData(chunk),
      drain: () => client.flush(),
      close: () => {
        client.closedFlag = true;
      },
      error: () => {
        client.closedFlag = true;
      },
    };
    client.socket =
      typeof port === "number"
        ? await Bun.connect({ hostname: "127.0.0.1", port, allowHalfOpen: true, socket })
        : await Bun.connect({ unix: port.unix, allowHalfOpen: true, socket });
    return client;
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  get bytes(): Uint8Array {
    return this.received;
  }

  get text(): string {
    return dec.decode(this.received);
  }

  /** Complete lines received so far. */
  get lines(): string[] {
    return completeLines(this.text);
  }

  send(data: string | Uint8Array): void {
    this.outbox.push(typeof data === "string" ? enc.encode(data) : data);
    this.flush();
  }

  /** Sends FIN: no more commands (as `nc -N` does at the end of its input). */
  halfClose(): void {
    this.socket.shutdown();
  }

  close(): void {
    this.socket.end();
  }

  /** Stops reading, so the relay's output piles up (a reader that does not keep up). */
  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  async until(what: string, check: (client: RawClient) => boolean, timeoutMs = WAIT_MS): Promise<void> {
    await waitFor(`${what} (received so far: ${JSON.stringify(this.text.slice(-300))})`, () => check(this), timeoutMs);
  }

  /** Waits for `count` complete lines, and returns them. */
  async lineCount(count: number, timeoutMs = WAIT_MS): Promise<string[]> {
    await this.until(`${count} lines`, (client) => client.lines.length >= count, timeoutMs);
    return this.lines;
  }

  private onData(chunk: Uint8Array): void {
    const next = new Uint8Array(this.received.byteLength + chunk.byteLength);
    next.set(this.received);
    next.set(chunk, this.received.byteLength);
    this.received = next;
  }

  private flush(): void {
    while (this.outbox.length > 0) {
      const head = this.outbox[0] as Uint8Array;
      const written = this.socket.write(head);
      if (written < 0) return;
      if (written < head.byteLength) {
        this.outbox[0] = head.subarray(written);
        return;
      }
      this.outbox.shift();
    }
  }
}

let cluster: TestCluster;
let config: ClusterConfig;
let adminClient: FitbClient;
let relayClient: FitbClient;
let relay: RelayServer;
let clientKey: SigningKey;
let publisherText: string;
const opened: RawClient[] = [];

async function open(port: number | { unix: string } = relay.port): Promise<RawClient> {
  const client = await RawClient.open(port);
  opened.push(client);
  return client;
}

/** Opens a connection, subscribes to `tag` and waits for the `+OK`. */
async function subscribed(tag: string, from?: number): Promise<RawClient> {
  const client = await open();
  client.send(from === undefined ? `SUB ${tag}\n` : `SUB ${tag} ${from}\n`);
  expect((await client.lineCount(1))[0]).toBe("+OK");
  return client;
}

/** Finds an EVENTB line starting with `prefix` and its payload, once all of it has arrived. */
function eventB(bytes: Uint8Array, prefix: string): { header: string; payload: Uint8Array; after: number | undefined } | null {
  const start = indexOfBytes(bytes, enc.encode(prefix));
  if (start < 0) return null;
  const lineEnd = bytes.indexOf(0x0a, start);
  if (lineEnd < 0) return null;
  const header = dec.decode(bytes.subarray(start, lineEnd));
  const count = Number(header.split(" ").at(-1));
  if (bytes.byteLength < lineEnd + 1 + count + 1) return null;
  return { header, payload: bytes.subarray(lineEnd + 1, lineEnd + 1 + count), after: bytes[lineEnd + 1 + count] };
}

function indexOfBytes(haystack: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.byteLength <= haystack.byteLength; i++) {
    for (let j = 0; j < needle.byteLength; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

/** Publishes one event on a fresh connection and returns its seq. */
async function published(tag: string, payload: string): Promise<number> {
  const client = await open();
  client.send(`PUB ${tag} ${payload}\n`);
  const [line] = await client.lineCount(1);
  const match = new RegExp(`^\\+OK ${tag.replace(".", "\\.")} (\\d+)$`).exec(line ?? "");
  if (match === null) throw new Error(`PUB ${tag} answered ${JSON.stringify(line)}`);
  client.close();
  return Number(match[1]);
}

beforeAll(async () => {
  cluster = await startCluster();
  config = requireClusterConfig(cluster.configPath);
  clientKey = loadSigningKeyFile(cluster.clientKey).key;
  publisherText = formatPublicKey(clientKey.publicKey);
  adminClient = await FitbClient.connect({ config, key: loadSigningKeyFile(cluster.adminKey).key, timeouts: { connectMs: WAIT_MS } });
  for (const channel of CHANNELS) {
    await adminClient.admin({ t: "create-channel", ...channel, public: true });
    await adminClient.admin({ t: "register", tag: channel.tag, role: "publisher", key: clientKey.publicKey });
  }
  relayClient = await FitbClient.connect({ config, key: clientKey, timeouts: { connectMs: WAIT_MS } });
  await relayClient.waitForSessions(config.n, config.n, WAIT_MS);
  relay = RelayServer.listen({ client: relayClient, hostname: "127.0.0.1", port: 0 });
});

afterAll(async () => {
  for (const client of opened) if (!client.closed) client.close();
  await relay?.stop(1_000);
  relayClient?.close();
  adminClient?.close();
  await cluster?.stop();
});

describe("relay: publish and subscribe", () => {
  for (const channel of CHANNELS) {
    test(`PUB is acknowledged and a SUB receives it as an EVENT line: ${channel.tag} (${channel.fault}/${channel.order})`, async () => {
      const sub = await subscribed(channel.tag);
      const seq = await published(channel.tag, "eth0 down, link lost");
      const lines = await sub.lineCount(2);
      const event = /^EVENT (\S+) (\d+) (\S+) (\d+) (.*)$/.exec(lines[1] ?? "");
      expect(event).not.toBeNull();
      const [, tag, eventSeq, publisher, ts, payload] = event as RegExpExecArray;
      expect(tag).toBe(channel.tag);
      expect(Number(eventSeq)).toBe(seq);
      expect(publisher).toBe(publisherText);
      expect(Math.abs(Number(ts) - Date.now())).toBeLessThan(60_000);
      expect(payload).toBe("eth0 down, link lost");
      sub.close();
    });
  }

  test("SUB <tag> <from> on a total-order channel replays from that seq", async () => {
    const first = await published("storage.disks", "replay-one");
    await published("storage.disks", "replay-two");
    const sub = await subscribed("storage.disks", first);
    const lines = await sub.lineCount(3);
    expect(lines[1]).toEndWith(" replay-one");
    expect(lines[2]).toEndWith(" replay-two");
    expect(lines[1]?.split(" ")[2]).toBe(String(first));
    expect(lines[2]?.split(" ")[2]).toBe(String(first + 1));
  });

  test("PUBB carries any bytes; a subscriber gets them as EVENTB, byte for byte", async () => {
    const sub = await subscribed("sec.alerts");
    const payload = Uint8Array.from([0x6c, 0x69, 0x6e, 0x65, 0x0a, 0x0d, 0x00, 0xff, 0xfe, 0x0a]);
    const pub = await open();
    pub.send(`PUBB sec.alerts ${payload.byteLength}\n`);
    pub.send(payload);
    pub.send("\n");
    const [ack] = await pub.lineCount(1);
    expect(ack).toMatch(/^\+OK sec\.alerts \d+$/);
    const seq = Number(ack?.split(" ")[2]);
    let found: { header: string; payload: Uint8Array; after: number | undefined } | null = null;
    await sub.until("the EVENTB line and its payload", (client) => {
      found = eventB(client.bytes, `EVENTB sec.alerts ${seq} `);
      return found !== null;
    });
    const { header, payload: received, after } = found as unknown as { header: string; payload: Uint8Array; after: number | undefined };
    expect(header).toBe(`EVENTB sec.alerts ${seq} ${publisherText} ${header.split(" ")[4]} ${payload.byteLength}`);
    expect([...received]).toEqual([...payload]);
    expect(after).toBe(0x0a);
  });

  test("a PUBB payload that is line-safe arrives as an EVENT line; an empty PUB as an empty payload", async () => {
    const sub = await subscribed("storage.disks");
    const pub = await open();
    const text = enc.encode("café été");
    pub.send(`PUBB storage.disks ${text.byteLength}\n`);
    pub.send(text);
    pub.send("\nPUB storage.disks\n");
    const acks = await pub.lineCount(2);
    expect(acks[0]).toMatch(/^\+OK storage\.disks \d+$/);
    expect(acks[1]).toMatch(/^\+OK storage\.disks \d+$/);
    const lines = await sub.lineCount(3);
    expect(lines[1]).toEndWith(" café été");
    expect(lines[1]).toStartWith("EVENT storage.disks ");
    expect(lines[2]).toMatch(/^EVENT storage\.disks \d+ \S+ \d+ $/);
  });
});

describe("relay: the other commands", () => {
  test("PING answers PONG; answers come in command order across tags and errors", async () => {
    const client = await open();
    const commands: string[] = [];
    const expected: RegExp[] = [];
    for (let i = 0; i < 60; i++) {
      const kind = i % 4;
      if (kind === 0) {
        commands.push(`PUB net.links order-${i}`);
        expected.push(/^\+OK net\.links \d+$/);
      } else if (kind === 1) {
        commands.push(`PUB sec.alerts order-${i}`);
        expected.push(/^\+OK sec\.alerts \d+$/);
      } else if (kind === 2) {
        commands.push("PING");
        expected.push(/^PONG$/);
      } else {
        commands.push("PUB Bad.Tag x");
        expected.push(/^-ERR BAD_REQUEST /);
      }
    }
    client.send(`${commands.join("\n")}\n`);
    const lines = await client.lineCount(expected.length);
    expect(lines).toHaveLength(expected.length);
    lines.forEach((line, index) => expect(line).toMatch(expected[index] as RegExp));
    // Within a tag the seqs rise by one, in the order the lines were sent.
    for (const tag of ["net.links", "sec.alerts"]) {
      const seqs = lines.filter((line) => line.startsWith(`+OK ${tag} `)).map((line) => Number(line.split(" ")[2]));
      seqs.forEach((seq, index) => expect(seq).toBe((seqs[0] as number) + index));
    }
  });

  test("QUIT answers +OK and closes; what follows it is not run", async () => {
    const sub = await subscribed("storage.disks");
    const client = await open();
    client.send("PING\nQUIT\nPUB storage.disks after-quit\nPING\n");
    await client.until("the relay to close the connection", (c) => c.closed);
    expect(client.lines).toEqual(["PONG", "+OK"]);
    // A later event arrives with nothing before it: after-quit was never published.
    await published("storage.disks", "marker-after-quit");
    await sub.until("the marker", (c) => c.text.includes("marker-after-quit"));
    expect(sub.text).not.toContain(" after-quit\n");
  });

  test("UNSUB stops the events; SUB twice and UNSUB of a tag not subscribed are refused", async () => {
    const watcher = await subscribed("net.links");
    const client = await subscribed("net.links");
    client.send("SUB net.links\nUNSUB net.links\nUNSUB net.links\nUNSUB sec.ids\n");
    const lines = await client.lineCount(5);
    expect(lines.slice(1)).toEqual([
      "-ERR BAD_REQUEST already subscribed to net.links",
      "+OK",
      "-ERR BAD_REQUEST not subscribed to net.links",
      "-ERR BAD_REQUEST not subscribed to sec.ids",
    ]);
    await published("net.links", "after-unsub");
    await watcher.until("the event at a subscribed connection", (c) => c.text.includes("after-unsub"));
    client.send("PING\n");
    expect((await client.lineCount(6)).at(-1)).toBe("PONG");
    expect(client.text).not.toContain("EVENT");
  });

  test("a client that sends FIN after its commands still gets every answer, then the relay closes", async () => {
    const client = await open();
    client.send("PUB net.links half-closed\nPING\n");
    client.halfClose();
    await client.until("the relay to close", (c) => c.closed);
    expect(client.lines).toHaveLength(2);
    expect(client.lines[0]).toMatch(/^\+OK net\.links \d+$/);
    expect(client.lines[1]).toBe("PONG");
  });
});

describe("relay: bad input gets -ERR and the connection goes on (a line that is no command at all closes it)", () => {
  test("malformed lines, each with its code, then a working PING", async () => {
    const client = await open();
    client.send(
      `${[
        "PUB",
        "PUB Net.Links x",
        "PUB no.such.channel x",
        "SUB",
        "SUB net.links 01",
        "SUB no.such.channel",
        "UNSUB",
        "PING now",
        "",
        "PING",
      ].join("\r\n")}\r\n`,
    );
    const lines = await client.lineCount(9);
    expect(lines.map((line) => line.split(" ").slice(0, 2).join(" "))).toEqual([
      "-ERR BAD_REQUEST",
      "-ERR BAD_REQUEST",
      "-ERR UNKNOWN_CHANNEL",
      "-ERR BAD_REQUEST",
      "-ERR BAD_REQUEST",
      "-ERR UNKNOWN_CHANNEL",
      "-ERR BAD_REQUEST",
      "-ERR BAD_REQUEST",
      "PONG",
    ]);
  });

  test("a PUBB whose byte count cannot be read closes the connection: its payload is never run as commands", async () => {
    const sub = await subscribed("storage.disks");
    const client = await open();
    client.send("PING\nPUBB storage.disks 5x\nPUB storage.disks injected-from-payload\nPING\n");
    await client.until("the relay to close the connection", (c) => c.closed);
    expect(client.lines).toHaveLength(2);
    expect(client.lines[0]).toBe("PONG");
    expect(client.lines[1]).toStartWith('-ERR BAD_REQUEST PUBB: "5x" is not a byte count');
    expect(client.lines[1]).toEndWith("closing");
    // A later event arrives with nothing before it: the payload's PUB line was never published.
    await published("storage.disks", "marker-after-bad-pubb");
    await sub.until("the marker", (c) => c.text.includes("marker-after-bad-pubb"));
    expect(sub.text).not.toContain("injected-from-payload");
  });

  test("a very long line: -ERR TOO_LARGE, the rest of it is dropped, the next line works", async () => {
    const client = await open();
    client.send(`PUB net.links ${"x".repeat(3 * RELAY_LINE_BYTES_MAX)}`);
    client.send(`${"y".repeat(RELAY_LINE_BYTES_MAX)}\nPING\n`);
    expect(await client.lineCount(2)).toEqual([
      `-ERR TOO_LARGE line exceeds ${RELAY_LINE_BYTES_MAX} bytes (the command and tag count too: PUBB TAG N then N bytes carries an event of up to event_bytes_max)`,
      "PONG",
    ]);
  });

  test("PUBB over the protocol bound is skipped; over the cluster's event size it is refused by the publisher", async () => {
    const client = await open();
    const tooLargeForProtocol = EVENT_BYTES_MAX + 1;
    client.send(`PUBB net.links ${tooLargeForProtocol}\n`);
    client.send(new Uint8Array(tooLargeForProtocol).fill(0x0a));
    const overCluster = config.limits.eventBytesMax + 1;
    client.send(`PUBB net.links ${overCluster}\n`);
    client.send(new Uint8Array(overCluster).fill(0x61));
    client.send("PING\n");
    const lines = await client.lineCount(3);
    expect(lines[0]).toBe(`-ERR TOO_LARGE payload of ${tooLargeForProtocol} bytes; at most ${EVENT_BYTES_MAX}`);
    expect(lines[1]).toStartWith("-ERR TOO_LARGE event is");
    expect(lines[2]).toBe("PONG");
  });

  test("a line that is no relay command (a web page's POST): -ERR, the connection closes, its body is never published", async () => {
    const sub = await subscribed("storage.disks");
    const client = await open();
    const body = "PUB storage.disks from-a-web-page\n";
    client.send(
      `POST / HTTP/1.1\r\nHost: 127.0.0.1:${relay.port}\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
    );
    const [line] = await client.lineCount(1);
    expect(line).toStartWith('-ERR BAD_REQUEST unknown command "POST"');
    await client.until("the relay to close the connection", (c) => c.closed);
    expect(client.lines).toHaveLength(1);
    await published("storage.disks", "marker-after-post");
    await sub.until("the marker", (c) => c.text.includes("marker-after-post"));
    expect(sub.text).not.toContain("from-a-web-page");
  });

  test("a client that disconnects mid-line publishes nothing, and the relay carries on", async () => {
    const sub = await subscribed("storage.disks");
    const before = relay.connectionCount;
    const client = await open();
    await waitFor("the relay to see the connection", () => relay.connectionCount === before + 1, WAIT_MS);
    client.send("PING\nPUB storage.disks cut-off-in-the-mi");
    await client.lineCount(1);
    client.close();
    await waitFor("the relay to drop the connection", () => relay.connectionCount === before, WAIT_MS);
    await published("storage.disks", "marker-after-cut");
    await sub.until("the marker", (c) => c.text.includes("marker-after-cut"));
    expect(sub.text).not.toContain("cut-off");
  });

  test("non-loopback --listen without --allow-remote is refused with the reason", async () => {
    const proc = Bun.spawn([BUN, MAIN, "relay", "--config", cluster.configPath, "--key", cluster.clientKey, "--listen", "0.0.0.0:7400"], {
      stdout: "pipe",
      stderr: "pipe",
    });
    const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
    expect(code).toBe(2);
    expect(stderr).toContain("--listen 0.0.0.0:7400 is not a loopback address");
    expect(stderr).toContain("--allow-remote");
  });
});

describe("relay: bounds", () => {
  test("a subscriber that does not read is ended with END <tag> SLOW, not buffered without bound", async () => {
    const eventOutboundBytesMax = 64 * 1024;
    const slowRelay = RelayServer.listen({
      client: relayClient,
      hostname: "127.0.0.1",
      port: 0,
      limits: { eventOutboundBytesMax, readPauseOutboundBytes: 16 * 1024 },
    });
    try {
      const sub = await open(slowRelay.port);
      sub.send("SUB storage.disks\n");
      await sub.lineCount(1);
      sub.pause();
      const pub = await open();
      const payload = new Uint8Array(config.limits.eventBytesMax - 1024).fill(0x7a);
      const roundsMax = 100;
      const perRound = 8;
      let acked = 0;
      // Publish until the relay ends the subscription that nobody reads.
      for (let round = 0; round < roundsMax && slowRelay.subscriptionCount > 0; round++) {
        for (let i = 0; i < perRound; i++) {
          pub.send(`PUBB storage.disks ${payload.byteLength}\n`);
          pub.send(payload);
        }
        acked = (await pub.lineCount((round + 1) * perRound)).length;
      }
      expect(slowRelay.subscriptionCount).toBe(0);
      sub.resume();
      await sub.until("END storage.disks SLOW", (c) => c.text.includes("END storage.disks SLOW"));
      const end = sub.lines.find((line) => line.startsWith("END "));
      expect(end).toMatch(
        /^END storage\.disks SLOW the client fell behind \(\d+ bytes not yet read\); resume with SUB storage\.disks \d+$/,
      );
      // Some events were never queued for it: the relay dropped the subscription, not its bound.
      const events = sub.lines.filter((line) => line.startsWith("EVENT storage.disks ")).length;
      expect(events).toBeLessThan(acked);
      // The connection itself goes on.
      sub.send("PING\n");
      await sub.until("PONG", (c) => c.text.endsWith("PONG\n"));
    } finally {
      await slowRelay.stop(1_000);
    }
    // Up to 800 events of nearly 64 KiB each, every frame MACed on the way in and out:
    // about 4 s on a quiet machine, so the default 5 s left no room on a busy one.
  }, 60_000);
});

describe("relay: bounds at their limit", () => {
  /** A second relay on the same client, with the given limits, stopped after `body`. */
  async function withRelay(
    limits: Parameters<typeof RelayServer.listen>[0]["limits"],
    body: (port: number) => Promise<void>,
  ): Promise<void> {
    const small = RelayServer.listen({ client: relayClient, hostname: "127.0.0.1", port: 0, limits });
    try {
      await body(small.port);
    } finally {
      await small.stop(1_000);
    }
  }

  test("the Unix socket: mode 0600, PUB and SUB on it; a stale socket file is replaced, one in use is refused, stop removes it", async () => {
    const dir = mkdtempSync(join(tmpdir(), "fitb-relay-sock-"));
    const socketPath = join(dir, "relay.sock");
    try {
      writeFileSync(socketPath, "not a socket");
      await expect(clearStaleSocket(socketPath)).rejects.toThrow("is not a socket");
      rmSync(socketPath);
      // A socket in a directory that is not there: said before listening, which would say only that it failed.
      expect(socketPathProblem(join(dir, "nodir", "relay.sock"))).toBe(
        `${join(dir, "nodir")} does not exist: make the directory for the socket ${join(dir, "nodir", "relay.sock")} first`,
      );
      expect(socketPathProblem(socketPath)).toBeNull();
      // A socket file left by a process killed with -9: nobody answers on it.
      const holder = Bun.spawn(
        [
          BUN,
          "-e",
          `Bun.listen({ unix: ${JSON.stringify(socketPath)}, socket: { data() {} } }); console.log("up"); setInterval(() => {}, 1000);`,
        ],
        {
          stdout: "pipe",
        },
      );
      const reader = holder.stdout.getReader();
      expect(new TextDecoder().decode((await reader.read()).value)).toContain("up");
      holder.kill("SIGKILL");
      await holder.exited;
      expect(lstatSync(socketPath).isSocket()).toBe(true);
      await clearStaleSocket(socketPath);
      const onSocket = RelayServer.listen({ client: relayClient, hostname: "127.0.0.1", port: 0, socketPath });
      try {
        expect(lstatSync(socketPath).mode & 0o777).toBe(0o600);
        await expect(clearStaleSocket(socketPath)).rejects.toThrow("is in use");
        const sub = await open({ unix: socketPath });
        sub.send("SUB net.links\n");
        expect((await sub.lineCount(1))[0]).toBe("+OK");
        const pub = await open({ unix: socketPath });
        pub.send("PUB net.links over-the-unix-socket\n");
        expect((await pub.lineCount(1))[0]).toMatch(/^\+OK net\.links \d+$/);
        await sub.until("the event", (c) => c.text.includes("over-the-unix-socket"));
      } finally {
        await onSocket.stop(1_000);
      }
      expect(existsSync(socketPath)).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("more commands than pendingAnswersMax: reading pauses, and every answer still comes, in order", async () => {
    await withRelay({ pendingAnswersMax: 3 }, async (port) => {
      const client = await open(port);
      const count = 120;
      client.send(Array.from({ length: count }, (_, i) => (i % 3 === 2 ? "PING\n" : `PUB net.links pending-${i}\n`)).join(""));
      const lines = await client.lineCount(count);
      lines.forEach((line, i) => expect(line).toMatch(i % 3 === 2 ? /^PONG$/ : /^\+OK net\.links \d+$/));
    });
  });

  test("more input at once than inboxBytesMax: one -ERR OVERLOADED line, then the relay closes", async () => {
    const inboxBytesMax = 32 * 1024;
    await withRelay({ pendingAnswersMax: 1, inboxBytesMax }, async (port) => {
      const client = await open(port);
      client.send("PING\n".repeat(40_000));
      await client.until("the relay to close", (c) => c.closed);
      expect(client.lines.at(-1)).toBe(
        `-ERR OVERLOADED more than ${inboxBytesMax} bytes of commands arrived before the earlier ones could run`,
      );
    });
  });

  test("subscriptionsPerConnectionMax: one SUB more is -ERR OVERLOADED; the others go on", async () => {
    await withRelay({ subscriptionsPerConnectionMax: 1 }, async (port) => {
      const client = await open(port);
      client.send("SUB net.links\nSUB sec.ids\nPING\n");
      expect(await client.lineCount(3)).toEqual(["+OK", "-ERR OVERLOADED 1 subscriptions open on this connection; at most 1", "PONG"]);
    });
  });

  test("connectionsMax: one connection more gets -ERR OVERLOADED and is closed", async () => {
    await withRelay({ connectionsMax: 1 }, async (port) => {
      const first = await open(port);
      first.send("PING\n");
      await first.lineCount(1);
      const second = await open(port);
      await second.until("the relay to close the extra connection", (c) => c.closed);
      expect(second.lines).toEqual(["-ERR OVERLOADED 1 connections open on the TCP port; at most 1"]);
      first.send("PING\n");
      expect(await first.lineCount(2)).toEqual(["PONG", "PONG"]);
    });
  });
});

describe("relay: `fitb relay` as its own process", () => {
  test("publishes, refuses a port in use, and stops cleanly on SIGTERM", async () => {
    const port = freePortRange(1);
    const proc = Bun.spawn(relayArgv(cluster.configPath, cluster.clientKey, port), {
      stdout: "pipe",
      stderr: "pipe",
    });
    let stderr = "";
    void (async () => {
      for await (const chunk of proc.stderr) stderr += dec.decode(chunk);
    })();
    try {
      await waitFor("fitb relay to listen", () => stderr.includes("listening on"), WAIT_MS);
      const client = await open(port);
      client.send("PUB net.links from-the-binary\nPING\n");
      const lines = await client.lineCount(2);
      expect(lines[0]).toMatch(/^\+OK net\.links \d+$/);
      expect(lines[1]).toBe("PONG");

      const second = Bun.spawn(relayArgv(cluster.configPath, cluster.clientKey, port), {
        stdout: "pipe",
        stderr: "pipe",
      });
      const [secondErr, secondCode] = await Promise.all([new Response(second.stderr).text(), second.exited]);
      expect(secondCode).toBe(1);
      expect(secondErr).toContain(`127.0.0.1:${port} is already in use`);
    } finally {
      proc.kill("SIGTERM");
    }
    expect(await proc.exited).toBe(0);
    expect(stderr).toContain("stopping");
  });
});

describe("relay: `fitb relay --listen none`", () => {
  test("listens on its Unix socket only: no TCP port any local account could publish through", async () => {
    const dir = mkdtempSync(join(tmpdir(), "fitb-relay-none-"));
    const socketPath = join(dir, "relay.sock");
    const proc = Bun.spawn(
      [BUN, MAIN, "relay", "--config", cluster.configPath, "--key", cluster.clientKey, "--listen", "none", "--socket", socketPath],
      { stdout: "pipe", stderr: "pipe" },
    );
    let stderr = "";
    void (async () => {
      for await (const chunk of proc.stderr) stderr += dec.decode(chunk);
    })();
    try {
      await waitFor("fitb relay to listen", () => stderr.includes("listening on"), WAIT_MS);
      // The socket and nothing else (with a TCP port the line names its address too).
      expect(stderr).toContain(`listening on ${socketPath}, signing as`);
      const client = await open({ unix: socketPath });
      client.send("PUB net.links over-the-socket-only\nPING\n");
      const lines = await client.lineCount(2);
      expect(lines[0]).toMatch(/^\+OK net\.links \d+$/);
      expect(lines[1]).toBe("PONG");
    } finally {
      proc.kill("SIGTERM");
      rmSync(dir, { recursive: true, force: true });
    }
    expect(await proc.exited).toBe(0);
  });
});

// Last: it leaves replica 0 dead.
describe("relay: a replica killed while publishing", () => {
  test("kill -9 of the leader loses no acknowledged event", async () => {
    const total = 300;
    const client = await open();
    const sent: string[] = [];
    for (let i = 0; i < total; i++) {
      sent.push(`kill-test-${i}`);
      client.send(`PUB sec.alerts kill-test-${i}\n`);
      if (i === total / 3) {
        await client.lineCount(50);
        cluster.kill(0, "SIGKILL");
      }
      if (i % 20 === 19) await Bun.sleep(5);
    }
    const answers = await client.lineCount(total, 60_000);
    const acked = new Map<number, string>();
    answers.forEach((line, index) => {
      const match = /^\+OK sec\.alerts (\d+)$/.exec(line);
      if (match !== null) acked.set(Number(match[1]), sent[index] as string);
    });
    // With 3 of 4 replicas up every publish has its quorum.
    expect(acked.size).toBe(total);
    const first = Math.min(...acked.keys());
    const last = Math.max(...acked.keys());
    const reader = await subscribed("sec.alerts", first);
    await reader.until("every acknowledged event", (c) => c.text.includes(` ${acked.get(last)}\n`), 60_000);
    const delivered = new Map<number, string>();
    for (const line of reader.lines.slice(1)) {
      const match = /^EVENT sec\.alerts (\d+) \S+ \d+ (.*)$/.exec(line);
      if (match !== null) delivered.set(Number(match[1]), match[2] as string);
    }
    for (const [seq, payload] of acked) expect(delivered.get(seq)).toBe(payload);
  }, 90_000);
});
