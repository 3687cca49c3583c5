/**
 * `--metrics HOST:PORT` on the replica and the relay: Prometheus text at /metrics and,
 * where there is one, a JSON status page at /status. The process metrics (CPU, RSS, file
 * descriptors) and `fitb_build_info` are added to the registry served here.
 *
 * It needs no key, so it answers only what a scraper asks: GET and HEAD, with a Host
 * header that names this server (console/host-allowlist.ts: its listen address, the
 * loopback names on loopback, this host's interface addresses on 0.0.0.0 or ::, and the
 * names given with `--metrics-host-name`). A web page that rebinds its own name to this
 * host cannot read it; Prometheus scraping by IP:PORT, by the name listened on, or by a
 * name the operator gave, can.
 *
 * Anyone who reaches the port can ask, and it runs on the replica's event loop, so what
 * one asker costs is bounded (src/README.md §9, "Bound everything"):
 * - a page is built at most METRICS_PAGE_BUILDS_BURST times at once and then once per
 *   METRICS_PAGE_BUILD_INTERVAL_MS, every other request getting the last build (PageCache);
 * - connections, in all and per remote address, and requests per connection are bounded;
 * - answers are paced, METRICS_ANSWERS_PER_SECOND in all, first come first served
 *   (AnswerPacer): serving even a cached page to a flood of readers took half a core;
 * - a connection is answered one request at a time: while its answer waits for the
 *   client to read it, its further requests are not parsed and the socket is not read;
 * - a request must arrive whole, and an answer be read whole, within a deadline.
 *
 * It is HTTP/1.1 over Bun.listen rather than Bun.serve because Bun.serve (1.4) offers
 * none of the connection bounds: no open or close hook to count connections by, no
 * bound on output a client leaves unread, and its idleTimeout (and server.timeout) does
 * not close a connection whose answers wait unread; such a connection held its file
 * descriptor for as long as the client liked. The HTTP here is the little a scraper
 * speaks: a request line in origin form, header fields, a Content-Length body of at most
 * METRICS_REQUEST_BODY_BYTES_MAX; anything else is answered 400 and the connection closed.
 */
import type { Socket, SocketHandler, TCPSocketListener } from "bun";
import type { MetricsRegistry } from "../metrics/registry.ts";
import { listenFailure } from "../relay/server.ts";
import { RateLimiter } from "../replica/rate.ts";
import { HostAllowlist } from "./console/host-allowlist.ts";
import { CommandError, UsageError } from "./errors.ts";
import { checkMetricsHostNames } from "./metrics-flags.ts";
import { VERSION } from "./run.ts";
import { addressGroup } from "../net/address.ts";

/** A scrape has no body; a larger one is refused (413) before it is read. */
export const METRICS_REQUEST_BODY_BYTES_MAX = 1_024;
/** A request line and its header fields; a scraper's are a few hundred bytes. Past it: 431. */
export const METRICS_REQUEST_HEAD_BYTES_MAX = 8 * 1_024;
/**
 * Bytes received and not yet answered on one connection (requests pipelined ahead of
 * their answers); past it the connection is closed. Holds the requests of a pipelining
 * client up to METRICS_CONNECTION_REQUESTS_MAX.
 */
export const METRICS_INPUT_BYTES_MAX = 32 * 1_024;
/**
 * Open connections in all. A scraper keeps one; a Prometheus pair, an agent and an
 * operator's curl fit many times over, and a flood of connections holds at most this
 * many file descriptors (past it, each is answered 503 and closed at once).
 */
export const METRICS_CONNECTIONS_MAX = 64;
/** Open connections from one remote address, so that one host cannot take them all. */
export const METRICS_ADDRESS_CONNECTIONS_MAX = 8;
/**
 * Requests answered on one connection; the last answer says `connection: close` and the
 * connection is closed after it. A scraper every 15 s reconnects every 25 minutes.
 */
export const METRICS_CONNECTION_REQUESTS_MAX = 100;
/**
 * From the moment a connection can send a request (it opened, or its last answer was
 * read), the whole request must arrive within this, or the connection is closed: an idle
 * keep-alive connection, and one that sends its request a byte at a time, both end.
 * Bun.serve's idle timeout, which scrapers met before, was 10 s too.
 */
export const METRICS_REQUEST_WAIT_MS = 10_000;
/**
 * An answer must be read whole within this, or the connection is cut: Prometheus gives
 * up on a scrape after 10 s by default (scrape_timeout), so a slower reader is no scraper.
 */
export const METRICS_RESPONSE_WRITE_MS = 10_000;
/**
 * A page is built again at most once per interval once its burst is spent: a flood of
 * scrapes costs one build a second (a replica with many channels takes a few ms per
 * build, on its event loop), while a scraper every 15 s always sees fresh numbers.
 */
export const METRICS_PAGE_BUILD_INTERVAL_MS = 1_000;
/**
 * Builds allowed back to back before the interval applies, so that a few reads in a row
 * (before and after an action, a curl after a scrape) each see fresh numbers.
 */
export const METRICS_PAGE_BUILDS_BURST = 4;
/**
 * Answers per second in all (and a burst of as many); a request past them waits its turn.
 * Each connection waits with at most one request, so a scraper that holds a connection
 * is answered within METRICS_CONNECTIONS_MAX / METRICS_ANSWERS_PER_SECOND s (1.3 s), well
 * inside its timeout, while a flood gets 50 pages a second (11 MB/s of a 220 KB page).
 */
export const METRICS_ANSWERS_PER_SECOND = 50;

const READ_METHODS: ReadonlySet<string> = new Set(["GET", "HEAD"]);
const TEXT_TYPE = "text/plain;charset=utf-8";
const JSON_TYPE = "application/json;charset=utf-8";
const ENCODER = new TextEncoder();
const HEAD_END = Buffer.from("\r\n\r\n");

const STATUS_TEXTS: Readonly<Record<number, string>> = {
  200: "OK",
  400: "Bad Request",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  413: "Content Too Large",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  503: "Service Unavailable",
  505: "HTTP Version Not Supported",
};

export interface MetricsEndpoint {
  readonly registry: MetricsRegistry;
  /** The JSON status page; absent: /status is 404. */
  readonly status?: () => unknown;
}

/** The bounds above, as one value (tests narrow them). */
export interface MetricsServerLimits {
  readonly connectionsMax: number;
  readonly addressConnectionsMax: number;
  readonly connectionRequestsMax: number;
  readonly requestWaitMs: number;
  readonly responseWriteMs: number;
  readonly answersPerSecond: number;
}

export const METRICS_SERVER_LIMITS: MetricsServerLimits = {
  connectionsMax: METRICS_CONNECTIONS_MAX,
  addressConnectionsMax: METRICS_ADDRESS_CONNECTIONS_MAX,
  connectionRequestsMax: METRICS_CONNECTION_REQUESTS_MAX,
  requestWaitMs: METRICS_REQUEST_WAIT_MS,
  responseWriteMs: METRICS_RESPONSE_WRITE_MS,
  answersPerSecond: METRICS_ANSWERS_PER_SECOND,
};

export interface MetricsServerOptions {
  readonly limits?: Partial<MetricsServerLimits>;
  /** The clock the page builds are spaced by (ms, monotonic); tests drive it by hand. */
  readonly nowMs?: () => number;
}

export interface MetricsServer {
  /** The address listened on, as Bun reports it. */
  readonly hostname: string;
  /** The port listened on (the one chosen when 0 was asked for). */
  readonly port: number;
  /** Connections open now. */
  readonly connectionCount: number;
  /** Stops listening; with `closeActiveConnections`, closes the open connections too. */
  stop(closeActiveConnections?: boolean): Promise<void>;
}

/**
 * Starts the endpoint when `listen` is given; a bad or busy address is the command's error.
 * `hostNames` are the `--metrics-host-name` values: given without `--metrics`, they are a
 * usage error rather than silently unused.
 */
export function startMetricsServer(
  listen: string | undefined,
  endpoint: MetricsEndpoint,
  hostNames: readonly string[] = [],
  options: MetricsServerOptions = {},
): MetricsServer | null {
  checkMetricsHostNames(listen, hostNames);
  if (listen === undefined) return null;
  const match = /^(.+):(\d{1,5})$/.exec(listen);
  const port = match === null ? NaN : Number(match[2]);
  if (match === null || !(port >= 0 && port <= 65_535))
    throw new UsageError(`--metrics: expected HOST:PORT, got ${JSON.stringify(listen)}`);
  const hostname = (match[1] as string).replace(/^\[(.*)\]$/, "$1");
  let hosts: HostAllowlist;
  try {
    hosts = new HostAllowlist({ listenHost: hostname, names: hostNames });
  } catch {
    throw new UsageError(`--metrics: ${JSON.stringify(match[1])} is not a host name or IP address`);
  }
  const { registry, status } = endpoint;
  registry.withProcessMetrics();
  registry.buildInfo(VERSION, `bun ${Bun.version}`);
  const nowMs = options.nowMs ?? (() => performance.now());
  const pages: MetricsPages = {
    hosts,
    metrics: new PageCache(() => registry.text(), nowMs),
    metricsType: registry.contentType,
    status: status === undefined ? null : new PageCache(() => JSON.stringify(status()), nowMs),
  };
  try {
    return new MetricsHttpServer(hostname, port, pages, { ...METRICS_SERVER_LIMITS, ...options.limits });
  } catch (error) {
    throw new CommandError(`--metrics: ${listenFailure(listen, error, "")}`);
  }
}

/**
 * One page (the exposition text, the status JSON), built at most `burst` times back to
 * back and then once per `intervalMs` (a token bucket); between builds every request gets
 * the bytes of the last one, and requests that come while a build runs share it. What the
 * registry writes is served byte for byte.
 */
export class PageCache {
  private page: Uint8Array | null = null;
  private building: Promise<Uint8Array> | null = null;
  /** One bucket, "build": `burst` builds, refilled one per `intervalMs`. */
  private readonly builds: RateLimiter;

  constructor(
    private readonly build: () => string | Promise<string>,
    private readonly nowMs: () => number,
    intervalMs = METRICS_PAGE_BUILD_INTERVAL_MS,
    burst = METRICS_PAGE_BUILDS_BURST,
  ) {
    this.builds = new RateLimiter(1_000 / intervalMs, burst);
  }

  /** The page: the last build while no build is due, else a new one. */
  get(): Promise<Uint8Array> {
    if (this.building !== null) return this.building;
    if (!this.builds.take("build", 1, this.nowMs())) {
      // No build is due: the last page, or, if every build so far failed, a refusal
      // (a failing build must not run on every request either).
      return this.page === null ? Promise.reject(new Error("the page is not ready; retry in a second")) : Promise.resolve(this.page);
    }
    const building = Promise.resolve()
      .then(this.build)
      .then((text) => {
        this.page = ENCODER.encode(text);
        return this.page;
      });
    const done = (): void => {
      this.building = null;
    };
    building.then(done, done);
    this.building = building;
    return building;
  }
}

/**
 * The answers' budget: `perSecond` a second and a burst of as many, on the real clock,
 * given in the order asked for. Whoever waits is keyed by its connection, which cancels
 * on close, so the queue is never longer than the connections open.
 */
class AnswerPacer {
  /** One bucket, "answers": `perSecond` a second, a burst of as many. */
  private readonly budget: RateLimiter;
  private readonly waiting = new Map<object, () => void>();
  private timer: ReturnType<typeof setTimeout> | null = null;

  constructor(private readonly perSecond: number) {
    this.budget = new RateLimiter(perSecond, perSecond);
  }

  /** Runs `go` now if nobody waits and the budget allows, else in its turn. */
  take(key: object, go: () => void): void {
    this.waiting.set(key, go);
    this.serve();
  }

  cancel(key: object): void {
    this.waiting.delete(key);
  }

  stop(): void {
    this.waiting.clear();
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  private serve(): void {
    for (const [key, go] of this.waiting) {
      if (!this.budget.take("answers", 1, performance.now())) break;
      this.waiting.delete(key);
      go();
    }
    if (this.waiting.size === 0 || this.timer !== null) return;
    // The next answer's token is due within one refill.
    this.timer = setTimeout(
      () => {
        this.timer = null;
        this.serve();
      },
      Math.ceil(1_000 / this.perSecond),
    );
  }
}

/** What the server answers with: the allowed Host headers and the two pages. */
interface MetricsPages {
  readonly hosts: HostAllowlist;
  readonly metrics: PageCache;
  readonly metricsType: string;
  readonly status: PageCache | null;
}

/** A request read whole (its head, and its body when it has a Content-Length). */
export interface MetricsRequest {
  readonly method: string;
  /** The target's path, without its query. */
  readonly path: string;
  readonly host: string | null;
  /** The body's length (0 without one); a chunked body is not read: see `unframed`. */
  readonly bodyBytes: number;
  /** The body is not framed by Content-Length (Transfer-Encoding): the connection ends after the answer. */
  readonly unframed: boolean;
  /** The client asked to close after the answer (Connection: close, or HTTP/1.0). */
  readonly close: boolean;
  /** Bytes of the head, its final blank line included. */
  readonly headBytes: number;
}

/** A request that cannot be answered normally: its status and why; the connection ends after the answer. */
export interface MetricsBadRequest {
  readonly status: number;
  readonly reason: string;
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const REQUEST_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([\x21-\x7e]+) HTTP\/(\d)\.(\d)$/;
const HEADER_FIELD = /^([^:]*):[ \t]*(.*?)[ \t]*$/;

/**
 * The request head at the start of `input`: null while it is incomplete, a
 * MetricsBadRequest when it is malformed or too large. Empty lines before the request
 * line are the caller's to skip.
 */
export function parseMetricsRequestHead(input: Buffer): MetricsRequest | MetricsBadRequest | null {
  const end = input.indexOf(HEAD_END);
  const headBytes = end < 0 ? input.length : end + HEAD_END.length;
  if (headBytes > METRICS_REQUEST_HEAD_BYTES_MAX)
    return { status: 431, reason: `the request head is over ${METRICS_REQUEST_HEAD_BYTES_MAX} bytes` };
  if (end < 0) return null;
  const [requestLine = "", ...fields] = input.toString("latin1", 0, end).split("\r\n");
  const line = REQUEST_LINE.exec(requestLine);
  if (line === null) return { status: 400, reason: "not an HTTP/1.1 request line" };
  const [, method = "", target = "", major, minor] = line;
  if (major !== "1") return { status: 505, reason: "this endpoint speaks HTTP/1.1" };
  if (!target.startsWith("/")) return { status: 400, reason: "the request target is not a path" };
  let host: string | null = null;
  let hosts = 0;
  let length: string | null = null;
  let unframed = false;
  let close = minor === "0";
  for (const field of fields) {
    const parsed = HEADER_FIELD.exec(field);
    const name = parsed?.[1] ?? "";
    if (parsed === null || !TOKEN.test(name)) return { status: 400, reason: "a header field is malformed" };
    const value = parsed[2] as string;
    switch (name.toLowerCase()) {
      case "host":
        host = value;
        hosts++;
        break;
      case "content-length":
        if (!/^\d{1,15}$/.test(value) || (length !== null && length !== value))
          return { status: 400, reason: "the Content-Length is not one number" };
        length = value;
        break;
      case "transfer-encoding":
        unframed = true;
        break;
      case "connection":
        if (value.split(",").some((token) => token.trim().toLowerCase() === "close")) close = true;
        break;
    }
  }
  // RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host.
  if (hosts > 1 || (hosts === 0 && minor !== "0")) return { status: 400, reason: "a request has one Host header" };
  const bodyBytes = unframed || length === null ? 0 : Number(length);
  if (bodyBytes > METRICS_REQUEST_BODY_BYTES_MAX)
    return { status: 413, reason: `a request body is at most ${METRICS_REQUEST_BODY_BYTES_MAX} bytes` };
  const query = target.search(/[?#]/);
  return { method, path: query < 0 ? target : target.slice(0, query), host, bodyBytes, unframed, close, headBytes };
}

/** An answer: its status, content type and body (a page is built, or taken from its cache). */
interface Answer {
  readonly status: number;
  readonly type: string;
  readonly body: Uint8Array | Promise<Uint8Array>;
  readonly headers?: string;
}

function textAnswer(status: number, text: string, headers?: string): Answer {
  return { status, type: TEXT_TYPE, body: ENCODER.encode(text), ...(headers === undefined ? {} : { headers }) };
}

/** The answer to a request read whole, as the endpoint was before it was bounded. */
function answerOf(pages: MetricsPages, request: MetricsRequest, port: number): Answer {
  if (!pages.hosts.allows(request.host, port)) return textAnswer(403, "forbidden: this endpoint answers only to its own address\n");
  if (!READ_METHODS.has(request.method)) return textAnswer(405, "method not allowed\n", "allow: GET, HEAD\r\n");
  if (request.path === "/metrics") return { status: 200, type: pages.metricsType, body: pages.metrics.get() };
  if (request.path === "/status" && pages.status !== null) return { status: 200, type: JSON_TYPE, body: pages.status.get() };
  return textAnswer(404, `not found: try /metrics${pages.status === null ? "" : " or /status"}\n`);
}

/** The status line and header fields of an answer of `bodyBytes`. */
function responseHead(answer: Answer, bodyBytes: number, close: boolean): Uint8Array {
  return ENCODER.encode(
    `HTTP/1.1 ${answer.status} ${STATUS_TEXTS[answer.status] ?? ""}\r\n` +
      `content-type: ${answer.type}\r\ncontent-length: ${bodyBytes}\r\ndate: ${new Date().toUTCString()}\r\n` +
      `${answer.headers ?? ""}${close ? "connection: close\r\n" : ""}\r\n`,
  );
}

interface SocketData {
  connection: MetricsConnection | null;
}

/** The listener, and the connections it counts in all and by remote address. */
class MetricsHttpServer implements MetricsServer {
  private readonly listener: TCPSocketListener<SocketData>;
  private readonly connections = new Set<MetricsConnection>();
  private readonly byAddress = new Map<string, number>();
  readonly pacer: AnswerPacer;

  constructor(
    hostname: string,
    port: number,
    readonly pages: MetricsPages,
    readonly limits: MetricsServerLimits,
  ) {
    this.pacer = new AnswerPacer(limits.answersPerSecond);
    // Half-open: a client that sends FIN after its request (nc -N) still gets its answer.
    this.listener = Bun.listen<SocketData>({ hostname, port, allowHalfOpen: true, data: { connection: null }, socket: this.handlers() });
  }

  get hostname(): string {
    return this.listener.hostname;
  }

  get port(): number {
    return this.listener.port;
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  stop(closeActiveConnections = false): Promise<void> {
    this.listener.stop(closeActiveConnections);
    if (closeActiveConnections) {
      for (const connection of [...this.connections]) connection.terminate();
      this.pacer.stop();
    }
    return Promise.resolve();
  }

  /** A connection ended: it no longer counts. */
  gone(connection: MetricsConnection): void {
    this.pacer.cancel(connection);
    if (!this.connections.delete(connection)) return;
    const left = (this.byAddress.get(connection.address) ?? 1) - 1;
    if (left === 0) this.byAddress.delete(connection.address);
    else this.byAddress.set(connection.address, left);
  }

  private handlers(): SocketHandler<SocketData> {
    return {
      open: (socket) => this.onOpen(socket),
      data: (socket, chunk) => socket.data.connection?.onData(chunk),
      drain: (socket) => socket.data.connection?.onDrain(),
      end: (socket) => socket.data.connection?.onEnd(),
      close: (socket) => socket.data.connection?.onClose(),
      // The close that follows says all the server needs; nobody reads a scraper's socket errors.
      error: () => undefined,
    };
  }

  /** Counts the connection, or answers 503 and closes it at once past a bound. */
  private onOpen(socket: Socket<SocketData>): void {
    socket.data = { connection: null };
    const address = addressGroup(socket.remoteAddress);
    const fromAddress = this.byAddress.get(address) ?? 0;
    const refusal =
      this.connections.size >= this.limits.connectionsMax
        ? `${this.connections.size} connections are open to this metrics endpoint; at most ${this.limits.connectionsMax}`
        : fromAddress >= this.limits.addressConnectionsMax
          ? `${fromAddress} connections are open from ${address}; at most ${this.limits.addressConnectionsMax}`
          : null;
    if (refusal !== null) {
      // Before the request is read: the answer is best effort, the close is the point.
      const answer = textAnswer(503, `too many connections: ${refusal}\n`);
      const body = answer.body as Uint8Array;
      socket.write(responseHead(answer, body.length, true));
      socket.write(body);
      socket.end();
      return;
    }
    socket.setNoDelay(true);
    const connection = new MetricsConnection(socket, address, this);
    this.connections.add(connection);
    this.byAddress.set(address, fromAddress + 1);
    socket.data.connection = connection;
  }
}

/**
 * One client connection: its requests answered one at a time, in order. While an answer
 * is being built or waits for the client to read it, the next request is not parsed, and
 * while the kernel refuses more of the answer the socket is not read either; what is held
 * is the unread part of the answer, whose body is the page cache's bytes, shared.
 */
class MetricsConnection {
  private input: Buffer = Buffer.alloc(0);
  /** Answer bytes the kernel did not take yet. */
  private readonly output: Uint8Array[] = [];
  private answered = 0;
  /** A request is being answered (its page building, or its answer not yet read). */
  private busy = false;
  /** The connection ends once the answer in progress is read. */
  private closing = false;
  private peerEnded = false;
  private closed = false;
  private paused = false;
  private timer: ReturnType<typeof setTimeout> | null = null;

  constructor(
    private readonly socket: Socket<SocketData>,
    readonly address: string,
    private readonly server: MetricsHttpServer,
  ) {
    this.awaitRequest();
  }

  onData(chunk: Buffer): void {
    if (this.closing) return;
    // A copy: the chunk is Bun's to reuse once this returns.
    this.input = Buffer.concat([this.input, chunk]);
    if (this.input.length > METRICS_INPUT_BYTES_MAX) {
      // Requests far ahead of their answers: no scraper pipelines that much.
      this.terminate();
      return;
    }
    this.next();
  }

  onDrain(): void {
    if (this.flush()) this.answerRead();
  }

  onEnd(): void {
    this.peerEnded = true;
    if (!this.busy) this.next();
  }

  onClose(): void {
    this.closed = true;
    this.clearTimer();
    this.server.gone(this);
  }

  /** Cuts the connection (an answer left unread, a request that never came whole, the server stopping). */
  terminate(): void {
    if (this.closed) return;
    this.socket.terminate();
    this.onClose();
  }

  /** Answers the next request received whole, if no answer is in progress. */
  private next(): void {
    if (this.busy || this.closing || this.closed) return;
    // RFC 9112 §2.2: empty lines before a request line are ignored.
    let skip = 0;
    while (this.input[skip] === 0x0d && this.input[skip + 1] === 0x0a) skip += 2;
    if (skip > 0) this.input = this.input.subarray(skip);
    const head = parseMetricsRequestHead(this.input);
    if (head === null || ("headBytes" in head && this.input.length < head.headBytes + head.bodyBytes)) {
      // Nothing more will come after the client's FIN: done.
      if (this.peerEnded) this.end();
      return;
    }
    // The answer must be built and read whole within the bound, from here.
    this.arm(this.server.limits.responseWriteMs);
    this.busy = true;
    if (!("headBytes" in head)) {
      this.closing = true;
      const answer = textAnswer(head.status, `${STATUS_TEXTS[head.status]?.toLowerCase()}: ${head.reason}\n`);
      this.server.pacer.take(this, () => void this.send(answer, false));
      return;
    }
    this.input = this.input.subarray(head.headBytes + head.bodyBytes);
    this.answered++;
    // An unframed body is not read, so nothing after it can be taken for a request.
    this.closing = head.close || head.unframed || this.answered >= this.server.limits.connectionRequestsMax;
    // The page is asked for in the request's turn, so that a request that waited gets fresh numbers.
    this.server.pacer.take(this, () => void this.send(answerOf(this.server.pages, head, this.server.port), head.method === "HEAD"));
  }

  /** Writes the answer once its body is there; what the kernel does not take waits for `drain`. */
  private async send(answer: Answer, headOnly: boolean): Promise<void> {
    let body: Uint8Array;
    try {
      body = await answer.body;
    } catch (error) {
      answer = textAnswer(500, `the page could not be built: ${(error as Error).message}\n`);
      body = answer.body as Uint8Array;
    }
    if (this.closed) return;
    this.output.push(responseHead(answer, body.length, this.closing));
    if (!headOnly && body.length > 0) this.output.push(body);
    if (this.flush()) {
      this.answerRead();
      return;
    }
    // The client is not reading: neither is the server, until it does.
    this.paused = true;
    this.socket.pause();
  }

  /** Writes what waits; true when all of it was taken. */
  private flush(): boolean {
    while (this.output.length > 0) {
      const chunk = this.output[0] as Uint8Array;
      const written = Math.max(0, this.socket.write(chunk));
      if (written < chunk.length) {
        this.output[0] = chunk.subarray(written);
        return false;
      }
      this.output.shift();
    }
    return true;
  }

  /** The answer in progress was taken whole: the connection ends, or waits for its next request. */
  private answerRead(): void {
    if (!this.busy || this.closed) return;
    this.busy = false;
    if (this.closing) {
      this.end();
      return;
    }
    if (this.paused) this.socket.resume();
    this.paused = false;
    this.awaitRequest();
    this.next();
  }

  private awaitRequest(): void {
    this.arm(this.server.limits.requestWaitMs);
  }

  /** Sends FIN; a client that then keeps its side open is cut after the request wait. */
  private end(): void {
    if (this.closed) return;
    this.closing = true;
    this.socket.end();
    if (!this.closed) this.arm(this.server.limits.requestWaitMs);
  }

  private arm(ms: number): void {
    this.clearTimer();
    this.timer = setTimeout(() => this.terminate(), ms);
  }

  private clearTimer(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }
}
