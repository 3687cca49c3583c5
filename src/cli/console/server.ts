/**
 * The web console's HTTP server (`fitb console`, and inside `fitb demo`): the page, the
 * embedded uPlot, `/api/status` (the cluster as `fitb top` sees it, sampled every
 * SAMPLE_INTERVAL_MS), `/api/tail?tag=T` (a channel's new events as server-sent events,
 * each with the replicas that sent it, counted live: tail.ts) and, only when the console
 * holds an admin key, `POST /api/admin`.
 *
 * Who may use it, checked in this order on every request:
 * - the Host header must name this console (host-allowlist.ts), so a web page elsewhere
 *   cannot reach it through DNS rebinding;
 * - a browser's request must not come from another origin's page (Sec-Fetch-Site), so a
 *   page on another port of this host cannot make the browser use the session;
 * - the request must carry the session cookie that the printed login URL set (login.ts):
 *   reaching the port (any local account can, and with --allow-remote the network) is not
 *   enough. Without it only a page saying to open that URL is served;
 * - a POST must also carry the random token the page was served with, and the console's
 *   own Origin: another site's page cannot make the console act with the admin key.
 */
import { randomBytes } from "node:crypto";
import type { FitbClient } from "../../client/client.ts";
import { describeError } from "../../client/errors.ts";
import { adminCmdSchema, tagSchema } from "../../../wire/schemas.ts";
import { readStatusReport } from "../commands/status-client.ts";
import { statusJsonReport } from "../commands/status-report.ts";
import { channelRates, intervalLatency, LATENCY_KINDS, type TopSample } from "../commands/top-view.ts";
import { ASSETS } from "./assets.ts";
import { HostAllowlist } from "./host-allowlist.ts";
import { ConsoleLogin, LOGIN_PARAM, secretsEqual } from "./login.ts";
import { consolePage, loggedInPage, loginNeededPage } from "./page.ts";
import { ConsoleTail, TAIL_HEARTBEAT_MS } from "./tail.ts";

/** How often the console asks the replicas for their status. */
export const SAMPLE_INTERVAL_MS = 2_000;
/** Live tails open at once (each is a subscription to the cluster). */
export const TAILS_MAX = 8;
/**
 * Bytes one tail holds for a page that reads slowly (tail-buffer.ts); past that its events
 * are dropped and counted. With TAILS_MAX tails the console holds at most 8 MiB for them.
 */
export const TAIL_HELD_BYTES_MAX = 1_048_576;
/** A tail whose page read nothing for this long while bytes waited is ended (tail.ts). */
export const TAIL_STALL_MS = 30_000;
/**
 * The largest request body the console accepts (Bun refuses a larger one before the
 * console reads it): an admin command's JSON, the only body it takes.
 */
export const REQUEST_BODY_BYTES_MAX = 4_096;
/** Bytes of randomness in the page's token for POSTs. */
const PAGE_TOKEN_BYTES = 24;
/** What a browser says of where a request comes from (Sec-Fetch-Site) when it is this console's own page, or the operator's typing. */
const OWN_FETCH_SITES: ReadonlySet<string> = new Set(["same-origin", "none"]);

export interface ConsoleOptions {
  readonly client: FitbClient;
  /** Whether the client's key is an admin key: then the page may create and destroy channels. */
  readonly admin: boolean;
  readonly hostname: string;
  readonly port: number;
  /** Names besides its address that the console answers to (`--host-name`), say for a wildcard listen. */
  readonly hostNames?: readonly string[];
  readonly version: string;
  /** How long the first status read waits for sessions. */
  readonly connectMs: number;
  /** TAIL_STALL_MS unless a test asks for less. */
  readonly tailStallMs?: number;
  /** TAIL_HEARTBEAT_MS unless a test asks for less. */
  readonly tailHeartbeatMs?: number;
}

/** What the open tails hold, for tests and the curious: the byte budget at work. */
export interface TailStats {
  readonly open: number;
  readonly heldBytes: number;
  /** The most bytes any open tail held at once. */
  readonly heldBytesPeak: number;
  readonly eventsDropped: number;
}

export class ConsoleServer {
  private readonly server: ReturnType<typeof Bun.serve>;
  private readonly hosts: HostAllowlist;
  private readonly login: ConsoleLogin;
  private readonly token = randomBytes(PAGE_TOKEN_BYTES).toString("hex");
  /** Reserved when a tail is asked for, before anything is awaited: TAILS_MAX holds under concurrent requests. */
  private readonly tails = new Set<ConsoleTail>();
  private latest: { sample: TopSample; json: Record<string, unknown> } | null = null;
  private sampling: Promise<void> | null = null;
  private timer: ReturnType<typeof setInterval> | null = null;
  private stopped = false;

  private constructor(private readonly options: ConsoleOptions) {
    this.hosts = new HostAllowlist({ listenHost: options.hostname, names: options.hostNames });
    // Bun's default idle timeout stays for every connection but a live tail's (onTail),
    // and Bun offers no bound on connections: an idle one is closed after that timeout.
    this.server = Bun.serve({
      hostname: options.hostname,
      port: options.port,
      development: false,
      // Bun.serve shares a port with another listener by default outside development
      // (SO_REUSEPORT): a second console would start on the first one's port, each taking
      // some of the connections. Refused instead, as every other fitb listener is.
      reusePort: false,
      maxRequestBodySize: REQUEST_BODY_BYTES_MAX,
      fetch: (request) => this.route(request),
      // A tail reset for stalling (tail.ts) ends here too; nothing is said about the server.
      error: () => text(500, "internal error\n"),
    });
    this.login = new ConsoleLogin(this.server.port as number);
    this.timer = setInterval(() => void this.sample(), SAMPLE_INTERVAL_MS);
    void this.sample();
  }

  /** Starts listening; throws when the address cannot be used. */
  static start(options: ConsoleOptions): ConsoleServer {
    return new ConsoleServer(options);
  }

  /** The console's address, without the login secret. A wildcard listen is shown by its loopback address. */
  get url(): string {
    const listened = this.server.hostname ?? this.options.hostname;
    const host = listened === "0.0.0.0" ? "127.0.0.1" : listened === "::" ? "::1" : listened;
    return `http://${host.includes(":") ? `[${host}]` : host}:${this.server.port}/`;
  }

  /** The URL to print: it logs one browser in (login.ts). */
  get loginUrl(): string {
    return `${this.url}?${LOGIN_PARAM}=${this.login.printedSecret}`;
  }

  tailStats(): TailStats {
    let heldBytes = 0;
    let heldBytesPeak = 0;
    let eventsDropped = 0;
    for (const tail of this.tails) {
      heldBytes += tail.buffer.heldBytes;
      heldBytesPeak = Math.max(heldBytesPeak, tail.buffer.heldBytesPeak);
      eventsDropped += tail.buffer.droppedEvents;
    }
    return { open: this.tails.size, heldBytes, heldBytesPeak, eventsDropped };
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer !== null) clearInterval(this.timer);
    for (const tail of [...this.tails]) tail.close();
    this.server.stop(true);
  }

  private async route(request: Request): Promise<Response> {
    if (!this.hosts.allows(request.headers.get("host"), this.server.port as number))
      return text(403, "forbidden: this console answers only to its own address\n");
    const url = new URL(request.url);
    const loginSecret = url.searchParams.get(LOGIN_PARAM);
    if (request.method === "GET" && url.pathname === "/" && loginSecret !== null) return this.onLogin(request, loginSecret);
    if (!OWN_FETCH_SITES.has(request.headers.get("sec-fetch-site") ?? "none"))
      return text(403, "forbidden: a request from another site's page; open the console by its address or a bookmark\n");
    if (!this.login.hasSession(request.headers.get("cookie"))) return this.loginNeeded(url.pathname);
    if (request.method === "POST") {
      if (url.pathname !== "/api/admin") return text(404, "not found\n");
      return this.onAdmin(request);
    }
    if (request.method !== "GET") return text(405, "method not allowed\n");
    if (url.pathname === "/") {
      const page = consolePage({
        cluster: this.options.client.config.name,
        token: this.token,
        admin: this.options.admin,
        version: this.options.version,
      });
      return html(200, page);
    }
    const asset = ASSETS.get(url.pathname);
    if (asset !== undefined)
      return new Response(asset.body, { headers: { "content-type": asset.contentType, "cache-control": "private, max-age=3600" } });
    if (url.pathname === "/api/status") return this.onStatus();
    if (url.pathname === "/favicon.ico") return new Response(null, { status: 204 });
    if (url.pathname === "/api/tail") return this.onTail(request, url.searchParams.get("tag") ?? "");
    return text(404, "not found\n");
  }

  /**
   * The printed URL: takes the one-time secret and sets the session cookie. A browser that
   * has the session already (the link opened twice) is simply sent on to the console.
   */
  private onLogin(request: Request, secret: string): Response {
    const headers = { "cache-control": "no-store" };
    if (this.login.hasSession(request.headers.get("cookie"))) return html(200, loggedInPage(), headers);
    const cookie = this.login.redeem(secret);
    if (cookie === null) {
      const reason = this.login.used
        ? "This login URL was used already: one browser is logged in with it."
        : "This is not the login URL this console printed.";
      return html(403, loginNeededPage(reason), headers);
    }
    return html(200, loggedInPage(), { ...headers, "set-cookie": cookie });
  }

  private loginNeeded(pathname: string): Response {
    if (pathname === "/") return html(401, loginNeededPage("This browser is not logged in to this console."));
    return text(401, "not logged in: open the URL fitb console printed when it started (it ends in /?login=...)\n");
  }

  /** The console's own page: an Origin is required, and must be this console's. */
  private sameOrigin(origin: string | null): boolean {
    if (origin === null) return false;
    try {
      const url = new URL(origin);
      return url.protocol === "http:" && this.hosts.allows(url.host, this.server.port as number);
    } catch {
      return false; // "null" (a sandboxed frame) or garbage
    }
  }

  private async onStatus(): Promise<Response> {
    if (this.latest === null) await this.sample();
    if (this.latest === null) return text(503, "no status yet\n");
    return Response.json(this.latest.json, { headers: { "cache-control": "no-store" } });
  }

  /** One status read at a time; the page reads the latest. */
  private sample(): Promise<void> {
    this.sampling ??= this.readSample().finally(() => {
      this.sampling = null;
    });
    return this.sampling;
  }

  private async readSample(): Promise<void> {
    if (this.stopped) return;
    try {
      const report = await readStatusReport(this.options.client, this.options.connectMs);
      const current: TopSample = { atMs: Date.now(), status: report.status };
      const previous = this.latest?.sample ?? null;
      const latency: Record<string, unknown> = {};
      for (const kind of LATENCY_KINDS) latency[kind] = intervalLatency(previous, current, kind);
      const json = { ...statusJsonReport(report), atMs: current.atMs, traffic: channelRates(previous, current, report.f), latency };
      this.latest = { sample: current, json };
    } catch {
      // The next sample tries again; the page keeps showing the last one meanwhile.
    }
  }

  /**
   * A live tail (tail.ts). Its slot is taken here, synchronously, and given back when the
   * tail ends however it ends (the page leaves, the subscription fails or ends, the console
   * stops). A tail may be quiet for long, so its connection has no idle timeout; its
   * heartbeats (tail.ts) find a page that vanished without closing the connection.
   */
  private onTail(request: Request, tag: string): Response {
    if (!tagSchema.safeParse(tag).success) return text(400, "expected ?tag=TAG, a channel's tag\n");
    if (this.tails.size >= TAILS_MAX) return text(429, `at most ${TAILS_MAX} tails at once\n`);
    const tail: ConsoleTail = new ConsoleTail({
      client: this.options.client,
      tag,
      bytesMax: TAIL_HELD_BYTES_MAX,
      stallMs: this.options.tailStallMs ?? TAIL_STALL_MS,
      heartbeatMs: this.options.tailHeartbeatMs ?? TAIL_HEARTBEAT_MS,
      onClose: () => this.tails.delete(tail),
    });
    this.tails.add(tail);
    if (request.signal.aborted) tail.close();
    else request.signal.addEventListener("abort", () => tail.close(), { once: true });
    this.server.timeout(request, 0);
    return tail.response(SECURITY_HEADERS);
  }

  private async onAdmin(request: Request): Promise<Response> {
    if (!secretsEqual(request.headers.get("x-fitb-console-token") ?? "", this.token))
      return json(403, { ok: false, error: "missing or wrong console token" });
    if (!this.sameOrigin(request.headers.get("origin"))) return json(403, { ok: false, error: "cross-origin request refused" });
    if (!this.options.admin) return json(403, { ok: false, error: "read-only console: start it with an admin key to change channels" });
    const body = await request.text();
    if (body.length > REQUEST_BODY_BYTES_MAX) return json(413, { ok: false, error: "request too large" });
    let parsed: unknown;
    try {
      parsed = JSON.parse(body);
    } catch {
      return json(400, { ok: false, error: "not JSON" });
    }
    const cmd = adminCmdSchema.safeParse(parsed);
    if (!cmd.success || (cmd.data.t !== "create-channel" && cmd.data.t !== "destroy-channel"))
      return json(400, { ok: false, error: "expected create-channel (tag, fault, order, priority, public) or destroy-channel (tag)" });
    try {
      const ack = await this.options.client.admin(cmd.data);
      void this.sample();
      return json(200, { ok: true, message: `${cmd.data.t} ${cmd.data.tag}, executed at decided seq ${ack.at ?? "?"}` });
    } catch (error) {
      return json(409, { ok: false, error: describeError(error) });
    }
  }
}

const SECURITY_HEADERS = {
  "x-content-type-options": "nosniff",
  "x-frame-options": "DENY",
  // The login URL's secret must not leave in a Referer, whatever the page links to.
  "referrer-policy": "no-referrer",
  "content-security-policy":
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
};

function text(status: number, body: string): Response {
  return new Response(body, { status, headers: { "content-type": "text/plain; charset=utf-8" } });
}

function html(status: number, body: string, headers: Record<string, string> = {}): Response {
  return new Response(body, { status, headers: { "content-type": "text/html; charset=utf-8", ...SECURITY_HEADERS, ...headers } });
}

function json(status: number, body: unknown): Response {
  return Response.json(body, { status });
}
