/**
 * The relay's listeners and its client-wide refusals, over real sockets with a client the
 * test plays (no cluster): a relay on its Unix socket only (`--listen none`), a connection
 * bound per listener (the TCP port full leaves the socket usable), the subscriptions kept
 * for the socket (the TCP port's connections hold three quarters at most), a SUB refused at the
 * relay's subscription bound in words that say it is the relay's, a pattern's channels
 * that are refused or end (`END <channel> <code>`, the pattern going on), and `nc -N`, the
 * fast way to publish, whose last line without LF is refused, not run (wire/PROTOCOL.md 11).
 */
import { afterEach, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { CommandIo } from "../../src/cli/command.ts";
import { EXIT_USAGE } from "../../src/cli/errors.ts";
import { runCli } from "../../src/cli/run.ts";
import type { FitbClient, PublishAck } from "../../src/client/client.ts";
import { QueueFullError, SubscriptionEndedError } from "../../src/client/errors.ts";
import type { ChannelInfo } from "../../src/client/queries.ts";
import type { SubscriptionHandle } from "../../src/client/subscription.ts";
import { RelayListenError, RelayServer } from "../../src/relay/server.ts";
import { LineClient } from "../helpers/line-client.ts";
import { waitFor } from "../helpers/wait.ts";

const HOST = "127.0.0.1";
const NC = "/usr/bin/nc";
const cleanups: (() => Promise<void> | void)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A subscription the played client made: the test ends it. */
interface PlayedSubscription {
  readonly tag: string;
  end(error: Error): void;
}

/** The part of FitbClient the relay uses, played by the test. */
class PlayedClient {
  readonly config = { limits: { connectionSubscriptionsMax: 64 } };
  /** The relay names its key in refusals of it. */
  readonly publicKey = new Uint8Array(32);
  readonly limits: { readonly subscriptionsMax: number };
  readonly subscriptions: PlayedSubscription[] = [];
  channels: ChannelInfo[] = [];
  /** Tags whose subscribe is refused with this error. */
  readonly refusals = new Map<string, Error>();
  /** Subscriptions not yet closed: at subscriptionsMax a subscribe is refused, as FitbClient's is. */
  open = 0;

  constructor(subscriptionsMax = 256) {
    this.limits = { subscriptionsMax };
  }

  publishLimits() {
    return { batchEventsMax: 100, eventBytesMax: 64 * 1024, frameBytesMax: 4 * 1024 * 1024, inflightRequestsMax: 64 };
  }

  publish(tag: string, events: readonly Uint8Array[]): Promise<PublishAck> {
    return Promise.resolve({ tag, span: events.length, pubSeq: 1, channelSeq: 1, firstSeq: 1, replicas: [0, 1] });
  }

  async listChannelClasses(): Promise<ChannelInfo[]> {
    return [...this.channels];
  }

  async subscribe(tag: string): Promise<SubscriptionHandle> {
    const refusal = this.refusals.get(tag);
    if (refusal !== undefined) throw refusal;
    if (this.open >= this.limits.subscriptionsMax) {
      throw new QueueFullError(`${this.open} subscriptions open; at most ${this.limits.subscriptionsMax}`);
    }
    this.open++;
    let closed = false;
    let end: (error: Error) => void = () => undefined;
    const done = new Promise<void>((_resolve, reject) => {
      end = reject;
    });
    done.catch(() => undefined);
    this.subscriptions.push({ tag, end });
    const close = async (): Promise<void> => {
      if (!closed) this.open--;
      closed = true;
    };
    return { tag, done, close };
  }
}

function socketDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "fitb-relay-listeners-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function startRelay(options: Omit<Parameters<typeof RelayServer.listen>[0], "client" | "hostname">, client = new PlayedClient()) {
  const relay = RelayServer.listen({ client: client as unknown as FitbClient, hostname: HOST, ...options });
  cleanups.push(() => relay.stop(100));
  return { relay, client };
}

const info = (tag: string): ChannelInfo => ({ tag, fault: "crash", order: "total", priority: "normal", public: true });

describe("the relay's listeners", () => {
  test("--listen none: the Unix socket only; no TCP port is opened", async () => {
    const socketPath = join(socketDir(), "relay.sock");
    const { relay } = startRelay({ port: null, socketPath });
    expect(relay.listensOnTcp).toBe(false);
    expect(() => relay.port).toThrow("the relay listens on no TCP port (--listen none)");
    const client = await LineClient.connect({ unix: socketPath }, cleanups);
    client.send("PING\n");
    expect(await client.nextLines(1)).toEqual(["PONG"]);
  });

  test("neither a TCP port nor a socket is refused", () => {
    expect(() => RelayServer.listen({ client: new PlayedClient() as unknown as FitbClient, hostname: HOST, port: null })).toThrow(
      RelayListenError,
    );
  });

  test("fitb relay --listen none with no socket is a usage error that says what to give", async () => {
    const err: string[] = [];
    const io: CommandIo = { out: () => undefined, err: (line) => err.push(line) };
    const argv = [
      "relay",
      "--config",
      "/nonexistent/cluster.toml",
      "--key",
      "/nonexistent/probe.key",
      "--listen",
      "none",
      "--socket",
      "none",
    ];
    expect(await runCli(argv, { io, env: {} })).toBe(EXIT_USAGE);
    expect(err.join("\n")).toContain("--listen none leaves no TCP port, and there is no Unix socket either");
    expect(err.join("\n")).toContain("give --socket PATH, or a --listen address");
  });

  test("each listener has its own connection bound: a full TCP port leaves the socket usable", async () => {
    const socketPath = join(socketDir(), "relay.sock");
    const { relay } = startRelay({ port: 0, socketPath, limits: { connectionsMax: 1 } });
    const first = await LineClient.connect(relay.port, cleanups);
    first.send("PING\n");
    await first.nextLines(1);
    const second = await LineClient.connect(relay.port, cleanups);
    expect(await second.nextLines(1)).toEqual(["-ERR OVERLOADED 1 connections open on the TCP port; at most 1"]);
    await waitFor("the relay to close the extra connection", () => second.closed);
    const probe = await LineClient.connect({ unix: socketPath }, cleanups);
    probe.send("PING\n");
    expect(await probe.nextLines(1)).toEqual(["PONG"]);
    const secondProbe = await LineClient.connect({ unix: socketPath }, cleanups);
    expect(await secondProbe.nextLines(1)).toEqual(["-ERR OVERLOADED 1 connections open on the Unix socket; at most 1"]);
  });
});

describe("refusals that are the relay's, not the connection's", () => {
  test("a SUB at the relay's subscription bound says it is the relay's total across connections", async () => {
    const client = new PlayedClient();
    client.refusals.set("t.full", new QueueFullError("256 subscriptions open; at most 256"));
    const { relay } = startRelay({ port: 0 }, client);
    const reader = await LineClient.connect(relay.port, cleanups);
    reader.send("SUB t.full\nPING\n");
    expect(await reader.nextLines(2)).toEqual([
      "-ERR OVERLOADED the relay has 256 subscriptions open across all its connections; at most 256 " +
        "(the cluster's connection_subscriptions_max; a pattern SUB takes one per channel it follows)",
      "PONG",
    ]);
  });

  test("a pattern's channel that is refused or ends gets END <channel> <code>; the pattern goes on", async () => {
    const client = new PlayedClient();
    client.channels = [info("net.a"), info("net.b"), info("net.c"), info("sys.x")];
    client.refusals.set("net.b", new QueueFullError("256 subscriptions open; at most 256"));
    const { relay } = startRelay({ port: 0 }, client);
    const reader = await LineClient.connect(relay.port, cleanups);
    reader.send("SUB net.* 5\nSUB net.*\n");
    expect(await reader.nextLines(3)).toEqual([
      "-ERR BAD_REQUEST a pattern SUB is live and takes no <from-seq> (channel seqs differ between channels)",
      "+OK",
      "END net.b LIMIT the relay has 256 subscriptions open across all its connections; at most 256 " +
        "(the cluster's connection_subscriptions_max; a pattern SUB takes one per channel it follows); net.* goes on without it",
    ]);
    expect(client.subscriptions.map((sub) => sub.tag).sort()).toEqual(["net.a", "net.c"]);
    const netC = client.subscriptions.find((sub) => sub.tag === "net.c") as PlayedSubscription;
    netC.end(new SubscriptionEndedError("UNKNOWN_CHANNEL", "DESTROYED", "channel net.c was destroyed"));
    expect(await reader.nextLines(1)).toEqual(["END net.c DESTROYED channel net.c was destroyed; net.* goes on without it"]);
    expect(relay.subscriptionCount).toBe(1);
    reader.send("UNSUB net.*\n");
    expect(await reader.nextLines(1)).toEqual(["+OK"]);
  });
});

describe("the relay's subscriptions, shared by both listeners", () => {
  /** A relay on a TCP port and a Unix socket, whose client holds at most `subscriptionsMax` subscriptions. */
  async function bothListeners(subscriptionsMax: number, client = new PlayedClient(subscriptionsMax)) {
    const socketPath = join(socketDir(), "relay.sock");
    const { relay } = startRelay({ port: 0, socketPath }, client);
    const tcp = await LineClient.connect(relay.port, cleanups);
    const unix = await LineClient.connect({ unix: socketPath }, cleanups);
    return { relay, client, tcp, unix };
  }

  const tcpFull = (tcpMax: number, subscriptionsMax: number): string =>
    `-ERR OVERLOADED connections on the TCP port hold ${tcpMax} of the relay's subscriptions; at most ${tcpMax} ` +
    `(the rest of the cluster's connection_subscriptions_max of ${subscriptionsMax} is kept for the Unix socket; ` +
    "a pattern SUB takes one per channel it follows)";

  test("the TCP port's connections take at most three quarters; the Unix socket keeps the rest", async () => {
    const { relay, client, tcp, unix } = await bothListeners(8);
    tcp.send(`${Array.from({ length: 7 }, (_, i) => `SUB t.t${i}`).join("\n")}\n`);
    expect(await tcp.nextLines(7)).toEqual([...Array<string>(6).fill("+OK"), tcpFull(6, 8)]);
    // The share is the port's, not one connection's.
    const other = await LineClient.connect(relay.port, cleanups);
    other.send("SUB t.other\n");
    expect(await other.nextLines(1)).toEqual([tcpFull(6, 8)]);
    unix.send("SUB u.a\nSUB u.b\nSUB u.c\n");
    expect(await unix.nextLines(3)).toEqual([
      "+OK",
      "+OK",
      "-ERR OVERLOADED the relay has 8 subscriptions open across all its connections; at most 8 " +
        "(the cluster's connection_subscriptions_max; a pattern SUB takes one per channel it follows)",
    ]);
    expect(client.open).toBe(8);
    // A TCP subscription that ends gives its place back to the port.
    tcp.send("UNSUB t.t0\nSUB t.t6\n");
    expect(await tcp.nextLines(2)).toEqual(["+OK", "+OK"]);
  });

  test("a pattern SUB on the TCP port follows channels up to the port's share only; the socket still subscribes", async () => {
    const client = new PlayedClient(8);
    client.channels = Array.from({ length: 10 }, (_, i) => info(`net.c${i}`));
    const { tcp, unix } = await bothListeners(8, client);
    tcp.send("SUB net.*\n");
    const lines = await tcp.nextLines(5);
    expect(lines[0]).toBe("+OK");
    // Ten channels match; six are followed, and each of the other four gets its END.
    for (const line of lines.slice(1)) {
      expect(line).toMatch(/^END net\.c\d LIMIT connections on the TCP port hold 6 of the relay's subscriptions; at most 6 /);
      expect(line).toEndWith("; net.* goes on without it");
    }
    expect(client.open).toBe(6);
    unix.send("SUB net.c0\nSUB sys.x\n");
    expect(await unix.nextLines(2)).toEqual(["+OK", "+OK"]);
    // The pattern's channels go back to the port's share when it ends.
    tcp.send("UNSUB net.*\nSUB t.a\n");
    expect(await tcp.nextLines(2)).toEqual(["+OK", "+OK"]);
    expect(client.open).toBe(3);
  });

  test("a relay on the TCP port alone keeps no reserve", async () => {
    const { relay } = startRelay({ port: 0 }, new PlayedClient(4));
    const tcp = await LineClient.connect(relay.port, cleanups);
    tcp.send("SUB t.a\nSUB t.b\nSUB t.c\nSUB t.d\n");
    expect(await tcp.nextLines(4)).toEqual(["+OK", "+OK", "+OK", "+OK"]);
  });
});

describe("nc -N, the fast way to publish", () => {
  /** Runs nc with `input` on its standard input and returns what it printed and its exit code. */
  async function nc(args: string[], input: string): Promise<{ out: string; code: number }> {
    const proc = Bun.spawn([NC, ...args], { stdin: new TextEncoder().encode(input), stdout: "pipe", stderr: "pipe" });
    const [out, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
    return { out, code };
  }

  test("nc -N sends its input, gets every answer, and exits once the relay closes; a last line without LF is refused, not run", async () => {
    if (!existsSync(NC)) {
      // Without netcat the claim is not checked here; the relay's half-close is (relay.test.ts).
      expect(existsSync(NC)).toBe(false);
      return;
    }
    const socketPath = join(socketDir(), "relay.sock");
    const { relay } = startRelay({ port: 0, socketPath });
    expect(await nc(["-N", HOST, String(relay.port)], "PUB net.links eth0 down\nPING\n")).toEqual({
      out: "+OK net.links 1\nPONG\n",
      code: 0,
    });
    expect(await nc(["-N", "-U", socketPath], "PING\n")).toEqual({ out: "PONG\n", code: 0 });
    // What follows the last LF may be a command cut short: it is never run, and the answer says so.
    expect(await nc(["-N", HOST, String(relay.port)], "PING\nPING")).toEqual({
      out: "PONG\n-ERR BAD_REQUEST input ended inside a command; not run\n",
      code: 0,
    });
    expect(await nc(["-N", "-U", socketPath], "PUB net.links no-newline")).toEqual({
      out: "-ERR BAD_REQUEST input ended inside a command; not run\n",
      code: 0,
    });
  });
});
