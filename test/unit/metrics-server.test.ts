// `--metrics` (src/cli/metrics-server.ts) answers scrapers only: GET and HEAD, with a Host
// header that names this server; a web page that rebinds its own name to this host is
// refused. Scraping by IP:PORT works on a loopback and on a wildcard listen. What anyone
// who reaches the port costs the replica is bounded: page builds, connections, requests
// per connection, answers per second, and how long a request or an unread answer may take.
import { afterEach, describe, expect, test } from "bun:test";
import * as net from "node:net";
import {
  METRICS_PAGE_BUILD_INTERVAL_MS,
  METRICS_PAGE_BUILDS_BURST,
  METRICS_REQUEST_BODY_BYTES_MAX,
  METRICS_REQUEST_HEAD_BYTES_MAX,
  type MetricsServer,
  type MetricsServerOptions,
  PageCache,
  startMetricsServer,
} from "../../src/cli/metrics-server.ts";
import { CommandError, UsageError } from "../../src/cli/errors.ts";
import { MetricsRegistry } from "../../src/metrics/registry.ts";
import { waitFor } from "../helpers/wait.ts";
import { addressGroup } from "../../src/net/address.ts";

const servers: MetricsServer[] = [];
const sockets: net.Socket[] = [];

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.destroy();
  for (const server of servers.splice(0)) await server.stop(true);
});

function start(listen: string, hostNames: readonly string[] = []): { base: string; port: number } {
  const server = startMetricsServer(
    listen,
    { registry: new MetricsRegistry("t_"), status: () => ({ up: true }) },
    hostNames,
  ) as MetricsServer;
  servers.push(server);
  return { base: `http://127.0.0.1:${server.port}`, port: server.port as number };
}

/**
 * A server on loopback whose page builds are counted (`builds`, `statusBuilds`), on a clock
 * the test moves; its answer budget is wide unless a test narrows it, so that pacing does
 * not slow the tests about something else.
 */
function counted(options: MetricsServerOptions = {}, registry = new MetricsRegistry("t_")) {
  const state = { builds: 0, statusBuilds: 0, clockMs: 0 };
  registry.onScrape(() => state.builds++);
  const server = startMetricsServer(
    "127.0.0.1:0",
    {
      registry,
      status: () => {
        state.statusBuilds++;
        return { up: true, build: state.statusBuilds };
      },
    },
    [],
    { nowMs: () => state.clockMs, ...options, limits: { answersPerSecond: 1_000, ...options.limits } },
  ) as MetricsServer;
  servers.push(server);
  return { server, state, port: server.port };
}

interface RawAnswer {
  readonly status: number;
  readonly headers: Map<string, string>;
  readonly body: string;
  readonly atMs: number;
}

/** An HTTP/1.1 client on a bare socket: pipelines what it is given, parses the answers (none to HEAD), sees the close. */
class RawHttp {
  readonly socket: net.Socket;
  readonly answers: RawAnswer[] = [];
  closed = false;
  private input = Buffer.alloc(0);

  constructor(port: number, localAddress = "127.0.0.1", options: { paused?: boolean; allowHalfOpen?: boolean } = {}) {
    this.socket = net.connect({ host: "127.0.0.1", port, localAddress, allowHalfOpen: options.allowHalfOpen ?? false });
    sockets.push(this.socket);
    if (options.paused === true) this.socket.pause();
    this.socket.on("data", (chunk: Buffer) => this.onData(chunk));
    this.socket.on("close", () => {
      this.closed = true;
    });
    this.socket.on("error", () => undefined);
  }

  get(path: string, port: number, count = 1, extra = ""): void {
    this.socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n${extra}\r\n`.repeat(count));
  }

  async answered(count: number): Promise<RawAnswer[]> {
    await waitFor(`${count} answers (${this.answers.length} so far)`, () => this.answers.length >= count || this.closed);
    return this.answers;
  }

  async close(): Promise<void> {
    await waitFor("the server to close the connection", () => this.closed);
  }

  private onData(chunk: Buffer): void {
    this.input = Buffer.concat([this.input, chunk]);
    for (;;) {
      const end = this.input.indexOf("\r\n\r\n");
      if (end < 0) return;
      const [statusLine = "", ...fields] = this.input.toString("latin1", 0, end).split("\r\n");
      const headers = new Map(
        fields.map((field) => [field.slice(0, field.indexOf(":")).toLowerCase(), field.slice(field.indexOf(":") + 1).trim()]),
      );
      const length = Number(headers.get("content-length") ?? 0);
      if (this.input.length < end + 4 + length) return;
      const body = this.input.toString("utf8", end + 4, end + 4 + length);
      this.answers.push({ status: Number(statusLine.split(" ")[1]), headers, body, atMs: performance.now() });
      this.input = this.input.subarray(end + 4 + length);
    }
  }
}

describe("metrics endpoint", () => {
  test("a scrape by IP:PORT is answered; HEAD too", async () => {
    const { base } = start("127.0.0.1:0");
    const scrape = await fetch(`${base}/metrics`);
    expect(scrape.status).toBe(200);
    expect(await scrape.text()).toContain("t_build_info");
    expect((await fetch(`${base}/metrics`, { method: "HEAD" })).status).toBe(200);
    expect(await (await fetch(`${base}/status`)).json()).toEqual({ up: true });
  });

  test("another Host (DNS rebinding) is refused; localhost on a loopback listen is not", async () => {
    const { base, port } = start("127.0.0.1:0");
    expect((await fetch(`${base}/metrics`, { headers: { host: `attacker.example:${port}` } })).status).toBe(403);
    expect((await fetch(`${base}/status`, { headers: { host: `attacker.example:${port}` } })).status).toBe(403);
    expect((await fetch(`${base}/metrics`, { headers: { host: `localhost:${port}` } })).status).toBe(200);
  });

  test("a wildcard listen answers this host's addresses, not names", async () => {
    const { base, port } = start("0.0.0.0:0");
    expect((await fetch(`${base}/metrics`)).status).toBe(200);
    expect((await fetch(`${base}/metrics`, { headers: { host: `attacker.example:${port}` } })).status).toBe(403);
  });

  test("--metrics-host-name: a scrape by a name given is answered, at the listen port or at the port it names", async () => {
    const { base, port } = start("0.0.0.0:0", ["metrics.example.net", "proxy.example.net:9000"]);
    expect((await fetch(`${base}/metrics`, { headers: { host: `metrics.example.net:${port}` } })).status).toBe(200);
    expect((await fetch(`${base}/metrics`, { headers: { host: "proxy.example.net:9000" } })).status).toBe(200);
    // A name given with a port is that port's only; other names stay refused.
    expect((await fetch(`${base}/metrics`, { headers: { host: `proxy.example.net:${port}` } })).status).toBe(403);
    expect((await fetch(`${base}/metrics`, { headers: { host: `attacker.example:${port}` } })).status).toBe(403);
  });

  test("--metrics-host-name: a bad name, or names without --metrics, are usage errors", () => {
    const registry = new MetricsRegistry("t_");
    expect(() => startMetricsServer("127.0.0.1:0", { registry }, ["bad/name"])).toThrow(UsageError);
    expect(() => startMetricsServer("127.0.0.1:0", { registry }, ["host:99999"])).toThrow(UsageError);
    expect(() => startMetricsServer(undefined, { registry }, ["metrics.example.net"])).toThrow(
      "--metrics-host-name needs --metrics HOST:PORT",
    );
  });

  test("anything but GET and HEAD is 405; a body over the bound is refused", async () => {
    const { base } = start("127.0.0.1:0");
    for (const method of ["POST", "PUT", "DELETE", "OPTIONS"]) {
      const answer = await fetch(`${base}/metrics`, { method });
      expect(answer.status).toBe(405);
      expect(answer.headers.get("allow")).toBe("GET, HEAD");
    }
    expect((await fetch(`${base}/metrics`, { method: "POST", body: "x".repeat(METRICS_REQUEST_BODY_BYTES_MAX + 1) })).status).toBe(413);
  });

  test("a listen address that is no host is a usage error", () => {
    expect(() => startMetricsServer("a/b:9464", { registry: new MetricsRegistry("t_") })).toThrow(UsageError);
  });

  test("a host name with underscores (a compose service's) is a host: it gets as far as listening", () => {
    // No such name resolves here: the listen fails (CommandError), after the Host check took the name.
    let thrown: unknown = null;
    try {
      const server = startMetricsServer("fitb_replica_1:0", { registry: new MetricsRegistry("t_") });
      if (server !== null) servers.push(server);
    } catch (error) {
      thrown = error;
    }
    expect(thrown === null || thrown instanceof CommandError).toBe(true);
  });
});

describe("page builds", () => {
  test("pipelined and concurrent scrapes build the page a few times, then once per interval, and all get the same bytes", async () => {
    const { state, port } = counted();
    const connections = Array.from({ length: 4 }, () => new RawHttp(port));
    for (const connection of connections) connection.get("/metrics", port, 25);
    for (const connection of connections) await connection.answered(25);
    expect(connections.flatMap((c) => c.answers.map((a) => a.status))).toEqual(new Array(100).fill(200));
    // 100 scrapes within one instant of the clock: the burst's builds, no more.
    expect(state.builds).toBe(METRICS_PAGE_BUILDS_BURST);
    const last = connections.map((c) => (c.answers.at(-1) as RawAnswer).body);
    expect(new Set(last).size).toBe(1);
    // A scrape an interval later sees a new build; the others in that interval reuse it.
    state.clockMs += METRICS_PAGE_BUILD_INTERVAL_MS;
    connections[0]?.get("/metrics", port, 10);
    await connections[0]?.answered(35);
    expect(state.builds).toBe(METRICS_PAGE_BUILDS_BURST + 1);
  });

  test("/status is built the same way; HEAD takes the same page", async () => {
    const { state, port } = counted();
    const connection = new RawHttp(port);
    connection.get("/status", port, 10);
    const answers = await connection.answered(10);
    expect(state.statusBuilds).toBe(METRICS_PAGE_BUILDS_BURST);
    expect(answers.map((a) => JSON.parse(a.body).build)).toEqual([1, 2, 3, 4, 4, 4, 4, 4, 4, 4]);
    expect(answers[9]?.headers.get("content-type")).toBe("application/json;charset=utf-8");
    const head = await fetch(`http://127.0.0.1:${port}/status`, { method: "HEAD" });
    expect(head.headers.get("content-length")).toBe(answers[9]?.headers.get("content-length") as string);
    expect(state.statusBuilds).toBe(METRICS_PAGE_BUILDS_BURST);
  });

  test("PageCache: requests during a build share it; the bytes are the text's UTF-8; a build due is made at most once per interval", async () => {
    const clock = { ms: 0 };
    let builds = 0;
    const text = (n: number) => `t_caf\u00e9{tag="na\u00efve"} ${n}\n`;
    const cache = new PageCache(
      () => text(++builds),
      () => clock.ms,
      1_000,
      2,
    );
    const shared = await Promise.all(Array.from({ length: 10 }, () => cache.get()));
    expect(builds).toBe(1);
    expect(new Set(shared).size).toBe(1);
    expect(Buffer.from(shared[0] as Uint8Array)).toEqual(Buffer.from(text(1), "utf8"));
    expect(new TextDecoder().decode(await cache.get())).toBe(text(2));
    expect(new TextDecoder().decode(await cache.get())).toBe(text(2));
    clock.ms += 500;
    expect(builds).toBe(2);
    expect(new TextDecoder().decode(await cache.get())).toBe(text(2));
    clock.ms += 500;
    expect(new TextDecoder().decode(await cache.get())).toBe(text(3));
  });

  test("a build that fails answers 500, and is not tried again on every request", async () => {
    const registry = new MetricsRegistry("t_");
    let tries = 0;
    registry.onScrape(() => {
      tries++;
      throw new Error("broken gauge");
    });
    const { port } = counted({}, registry);
    const connection = new RawHttp(port);
    connection.get("/metrics", port, 10);
    const answers = await connection.answered(10);
    expect(answers.map((a) => a.status)).toEqual(new Array(10).fill(500));
    expect(answers[0]?.body).toBe("the page could not be built: broken gauge\n");
    expect(tries).toBe(METRICS_PAGE_BUILDS_BURST);
  });
});

describe("connection bounds", () => {
  test("connections past the bound from one address, or in all, are answered 503 and closed", async () => {
    const { server, port } = counted({ limits: { addressConnectionsMax: 2, connectionsMax: 3 } });
    const held = [new RawHttp(port), new RawHttp(port)];
    await waitFor("two connections counted", () => server.connectionCount === 2);
    const sameAddress = new RawHttp(port);
    await sameAddress.close();
    expect(sameAddress.answers[0]?.status).toBe(503);
    expect(sameAddress.answers[0]?.body).toBe("too many connections: 2 connections are open from 127.0.0.1; at most 2\n");
    const other = new RawHttp(port, "127.0.0.2");
    other.get("/metrics", port);
    expect((await other.answered(1))[0]?.status).toBe(200);
    const pastAll = new RawHttp(port, "127.0.0.3");
    await pastAll.close();
    expect(pastAll.answers[0]?.body).toBe("too many connections: 3 connections are open to this metrics endpoint; at most 3\n");
    // A connection closed makes room.
    held[0]?.socket.destroy();
    await waitFor("the closed connection uncounted", () => server.connectionCount === 2);
    const again = new RawHttp(port, "127.0.0.3");
    again.get("/metrics", port);
    expect((await again.answered(1))[0]?.status).toBe(200);
  });

  test("a connection is answered its bound of requests, the last saying connection: close, then closed", async () => {
    const { server, port } = counted({ limits: { connectionRequestsMax: 3 } });
    const connection = new RawHttp(port);
    connection.get("/metrics", port, 5);
    await connection.close();
    expect(connection.answers.map((a) => [a.status, a.headers.get("connection")])).toEqual([
      [200, undefined],
      [200, undefined],
      [200, "close"],
    ]);
    await waitFor("the connection uncounted", () => server.connectionCount === 0);
  });

  test("a client that does not read its answers is cut at the write deadline", async () => {
    // About 1 MB a page: 40 of them are far more than the kernel's socket buffers hold.
    const registry = new MetricsRegistry("t_");
    const wide = registry.gauge("wide", "many series", ["n"]);
    for (let i = 0; i < 20_000; i++) wide.with(`series-${i}`).set(i);
    const { server, state, port } = counted({ limits: { responseWriteMs: 300 } }, registry);
    const connection = new RawHttp(port, "127.0.0.1", { paused: true });
    connection.get("/metrics", port, 40);
    await waitFor("the unread connection cut", () => server.connectionCount === 0 && connection.closed);
    // The clock stood still: the burst's builds at most, whatever was asked.
    expect(state.builds).toBeLessThanOrEqual(METRICS_PAGE_BUILDS_BURST);
  });

  test("a request that does not arrive whole in time ends its connection: idle, or sent a little at a time", async () => {
    const { server, port } = counted({ limits: { requestWaitMs: 200 } });
    const idle = new RawHttp(port);
    const slow = new RawHttp(port);
    slow.socket.write("GET /metrics HTTP/1.1\r\nHo");
    const keepAlive = new RawHttp(port);
    keepAlive.get("/metrics", port);
    await keepAlive.answered(1);
    for (const connection of [idle, slow, keepAlive]) await connection.close();
    expect(slow.answers).toEqual([]);
    expect(server.connectionCount).toBe(0);
  });

  test("answers past the budget wait their turn rather than being refused", async () => {
    const { port } = counted({ limits: { answersPerSecond: 2 } });
    const connection = new RawHttp(port);
    const askedMs = performance.now();
    connection.get("/metrics", port, 4);
    const answers = await connection.answered(4);
    expect(answers.map((a) => a.status)).toEqual([200, 200, 200, 200]);
    // Two at once, then one each half second: the fourth no sooner than about a second
    // after the requests were sent. Measured from the send, not from the first answer,
    // whose arrival a busy host may delay more than the fourth's.
    expect((answers[3] as RawAnswer).atMs - askedMs).toBeGreaterThanOrEqual(900);
  });

  test("a client that sends FIN after its request still gets the answer", async () => {
    const { port } = counted();
    const connection = new RawHttp(port, "127.0.0.1", { allowHalfOpen: true });
    connection.socket.end(`GET /status HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
    await connection.close();
    expect(connection.answers.map((a) => a.status)).toEqual([200]);
  });
});

describe("bad requests", () => {
  test("a malformed request, an oversize head, another HTTP version, or HTTP/1.1 without Host: an error, then the close", async () => {
    const { port } = counted();
    const cases: [string, number][] = [
      ["garbage\r\n\r\n", 400],
      [`GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nX-Big: ${"a".repeat(METRICS_REQUEST_HEAD_BYTES_MAX)}\r\n\r\n`, 431],
      [`GET /metrics HTTP/2.0\r\nHost: 127.0.0.1:${port}\r\n\r\n`, 505],
      ["GET /metrics HTTP/1.1\r\n\r\n", 400],
      [`GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nHost: 127.0.0.1:${port}\r\n\r\n`, 400],
      [`GET http://127.0.0.1:${port}/metrics HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`, 400],
      [`GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n`, 400],
      [`POST /metrics HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Length: ${METRICS_REQUEST_BODY_BYTES_MAX + 1}\r\n\r\n`, 413],
    ];
    for (const [request, status] of cases) {
      const connection = new RawHttp(port);
      connection.socket.write(request);
      await connection.close();
      expect([request.slice(0, 40), connection.answers.map((a) => [a.status, a.headers.get("connection")])]).toEqual([
        request.slice(0, 40),
        [[status, "close"]],
      ]);
    }
  });

  test("a small body is read past, and the connection goes on; HTTP/1.0 is answered and closed", async () => {
    const { port } = counted();
    const connection = new RawHttp(port);
    connection.socket.write(`POST /metrics HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Length: 5\r\n\r\nhello`);
    connection.get("/status", port);
    expect((await connection.answered(2)).map((a) => a.status)).toEqual([405, 200]);
    const old = new RawHttp(port);
    old.socket.write("GET /status HTTP/1.0\r\n\r\n");
    await old.close();
    // No Host: HTTP/1.0 may omit it, and the allowlist refuses it.
    expect(old.answers.map((a) => [a.status, a.headers.get("connection")])).toEqual([[403, "close"]]);
  });
});

describe("what the per-address bound counts by", () => {
  test("an IPv4 address as it is (mapped or not); an IPv6 address by its /64, however it is written", () => {
    expect(addressGroup("10.0.0.7")).toBe("10.0.0.7");
    expect(addressGroup("::ffff:10.0.0.7")).toBe("10.0.0.7");
    const group = addressGroup("2001:db8:1:2::1");
    expect(group).toBe("2001:db8:1:2::/64");
    for (const same of ["2001:db8:1:2:ffff:ffff:ffff:fffe", "2001:0db8:0001:0002::abcd", "2001:DB8:1:2:0:0:0:9%eth0"]) {
      expect(addressGroup(same)).toBe(group);
    }
    expect(addressGroup("2001:db8:1:3::1")).not.toBe(group);
    expect(addressGroup("::1")).toBe("0:0:0:0::/64");
    // Not an address: counted as it is.
    expect(addressGroup("not::an::address")).toBe("not::an::address");
  });
});
