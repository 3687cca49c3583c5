/**
 * The web console's HTTP server (`fitb console`, and inside `fitb demo`): the page, the
 * embedded uPlot, `/api/status` (the cluster as `fitb top` sees it, sampled every
 * SAMPLE_INTERVAL_MS), `/api/tail?tag=T` (a channel's new events as server-sent events,
 * each with the replicas that sent it, counted live: vouches.ts) and, only when the
 * console holds an admin key, `POST /api/admin`.
 *
 * Who may use it: it listens on loopback unless told otherwise (the caller checks), and
 * it answers only requests whose Host header names the address it listens on, so a web
 * page elsewhere cannot reach it through DNS rebinding. A POST must carry the random
 * token the page was served with, and an Origin, when sent, must be the console's own:
 * another site's page cannot make the console act with the admin key.
 */
import { randomBytes } from "node:crypto";
import type { FitbClient } from "../../client/client.ts";
import { describeError } from "../../client/errors.ts";
import type { ReceivedBatch, Subscription } from "../../client/subscription.ts";
import { SYS_EVENTS_TAG } from "../../core/voting/group-events.ts";
import { vouchQuorum } from "../../core/voting/quorum.ts";
import { formatPublicKey } from "../../crypto/keys.ts";
import { isLineSafe } from "../../relay/format.ts";
import { adminCmdSchema } from "../../../wire/schemas.ts";
import { readStatusReport } from "../commands/status-client.ts";
import { statusJsonReport } from "../commands/status-report.ts";
import { channelRates, intervalLatency, LATENCY_KINDS, type TopSample } from "../commands/top-view.ts";
import { ASSETS } from "./assets.ts";
import { consolePage } from "./page.ts";
import { VouchCounter } from "./vouches.ts";

/** How often the console asks the replicas for their status. */
export const SAMPLE_INTERVAL_MS = 2_000;
/** Live tails open at once (each is a subscription to the cluster). */
export const TAILS_MAX = 8;
/** Events a tail holds for a browser that does not read; past that they are dropped and counted. */
export const TAIL_QUEUE_EVENTS_MAX = 1_000;
/** Bytes of a payload shown in the tail. */
const TAIL_PAYLOAD_BYTES_MAX = 1_024;
const ADMIN_BODY_BYTES_MAX = 4_096;

export interface ConsoleOptions {
  readonly client: FitbClient;
  /** Whether the client's key is an admin key: then the page may create and destroy channels. */
  readonly admin: boolean;
  readonly hostname: string;
  readonly port: number;
  readonly version: string;
  /** How long the first status read waits for sessions. */
  readonly connectMs: number;
}

export class ConsoleServer {
  private readonly server: ReturnType<typeof Bun.serve>;
  private readonly token = randomBytes(24).toString("hex");
  private readonly tails = new Set<Subscription>();
  private latest: { sample: TopSample; json: Record<string, unknown> } | null = null;
  private sampling: Promise<void> | null = null;
  private timer: ReturnType<typeof setInterval> | null = null;
  private stopped = false;

  private constructor(private readonly options: ConsoleOptions) {
    this.server = Bun.serve({
      hostname: options.hostname,
      port: options.port,
      idleTimeout: 0,
      fetch: (request) => this.route(request),
    });
    this.timer = setInterval(() => void this.sample(), SAMPLE_INTERVAL_MS);
    void this.sample();
  }

  /** Starts listening; throws when the address cannot be used. */
  static start(options: ConsoleOptions): ConsoleServer {
    return new ConsoleServer(options);
  }

  get url(): string {
    const host = this.server.hostname ?? this.options.hostname;
    return `http://${host.includes(":") ? `[${host}]` : host}:${this.server.port}/`;
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer !== null) clearInterval(this.timer);
    for (const tail of this.tails) void tail.close();
    this.tails.clear();
    this.server.stop(true);
  }

  private async route(request: Request): Promise<Response> {
    const url = new URL(request.url);
    if (!this.hostAllowed(request.headers.get("host"))) return text(403, "forbidden: this console answers only to its own address\n");
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
      return new Response(page, { headers: { "content-type": "text/html; charset=utf-8", ...SECURITY_HEADERS } });
    }
    const asset = ASSETS.get(url.pathname);
    if (asset !== undefined)
      return new Response(asset.body, { headers: { "content-type": asset.contentType, "cache-control": "max-age=3600" } });
    if (url.pathname === "/api/status") return this.onStatus();
    if (url.pathname === "/favicon.ico") return new Response(null, { status: 204 });
    if (url.pathname === "/api/tail") return this.onTail(url.searchParams.get("tag") ?? "");
    return text(404, "not found\n");
  }

  /** DNS rebinding: the Host must be the address listened on (or localhost when that is loopback). */
  private hostAllowed(host: string | null): boolean {
    if (host === null) return false;
    const port = String(this.server.port);
    const listened = this.options.hostname;
    const names = new Set([listened, `[${listened}]`]);
    if (listened === "127.0.0.1" || listened === "::1" || listened === "localhost") {
      for (const name of ["localhost", "127.0.0.1", "[::1]"]) names.add(name);
    }
    if (listened === "0.0.0.0" || listened === "::") return true;
    // "name:port", "[v6]:port", or a bare name when the port is HTTP's default.
    const match = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(host);
    if (match === null) return false;
    return (match[2] ?? "80") === port && names.has(match[1] as string);
  }

  /** No Origin (not a browser's cross-site request), or this console's own. */
  private sameOrigin(origin: string | null): boolean {
    if (origin === null) return true;
    try {
      const url = new URL(origin);
      return url.protocol === "http:" && this.hostAllowed(url.host);
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
      const json = { ...statusJsonReport(report), atMs: current.atMs, traffic: channelRates(previous, current), latency };
      this.latest = { sample: current, json };
    } catch {
      // The next sample tries again; the page keeps showing the last one meanwhile.
    }
  }

  /**
   * Server-sent events: "ready", then one "event" per delivered event, with `batch` (the
   * tail's id of its batch) and `vouchers` (the replicas that sent that batch so far),
   * and "vouch" (`batch`, `vouchers`) as more of them do; "dropped" and "end" say why
   * things stop.
   */
  private onTail(tag: string): Response {
    if (this.tails.size >= TAILS_MAX) return text(429, `at most ${TAILS_MAX} tails at once\n`);
    const client = this.options.client;
    let subscription: Subscription | null = null;
    let closed = false;
    let dropped = 0;
    const encoder = new TextEncoder();
    const stream = new ReadableStream<Uint8Array>(
      {
        start: (controller) => {
          const send = (event: string, data: unknown): boolean => {
            if (closed) return false;
            if ((controller.desiredSize ?? 1) <= 0 && (event === "event" || event === "vouch")) {
              if (event === "event") dropped++;
              return false;
            }
            controller.enqueue(encoder.encode(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`));
            return true;
          };
          let rule = "";
          let batches = 0;
          const vouches = new VouchCounter(Date.now, (batch, vouchers) => send("vouch", { batch, vouchers }));
          const onBatch = (batch: ReceivedBatch): void => {
            if (dropped > 0 && send("dropped", { reason: `${dropped} events dropped: the page did not keep up` })) dropped = 0;
            const id = ++batches;
            const vouchers = batch.copyKey === undefined ? [] : vouches.delivered(batch.copyKey, id);
            batch.events.forEach((payload, i) => {
              send("event", {
                tag: batch.tag,
                seq: (batch.seq ?? batch.pubSeq) + i,
                publisher: formatPublicKey(batch.publisher),
                ts: batch.ts,
                batch: id,
                vouchers,
                of: client.n,
                rule,
                payload: showPayload(payload),
              });
            });
          };
          client
            .channelInfo(tag)
            .then((info) => {
              rule = deliveryRule(tag, client.f, info.fault, info.order);
              return client.subscribe(tag, { skipTrimmed: true, onCopy: (copy) => vouches.copy(copy.replica, copy.key) }, onBatch);
            })
            .then((started) => {
              subscription = started;
              if (closed) {
                void started.close();
                return;
              }
              this.tails.add(started);
              send("ready", { tag });
              started.done.then(
                () => send("end", { reason: "subscription closed" }),
                (error: unknown) => send("end", { reason: describeError(error) }),
              );
            })
            .catch((error: unknown) => {
              send("end", { reason: describeError(error) });
              closed = true;
              controller.close();
            });
        },
        cancel: () => {
          closed = true;
          if (subscription !== null) {
            this.tails.delete(subscription);
            void subscription.close();
          }
        },
      },
      { highWaterMark: TAIL_QUEUE_EVENTS_MAX, size: () => 1 },
    );
    return new Response(stream, { headers: { "content-type": "text/event-stream", "cache-control": "no-store", ...SECURITY_HEADERS } });
  }

  private async onAdmin(request: Request): Promise<Response> {
    if (request.headers.get("x-fitb-console-token") !== this.token)
      return json(403, { ok: false, error: "missing or wrong console token" });
    if (!this.sameOrigin(request.headers.get("origin"))) return json(403, { ok: false, error: "cross-origin request refused" });
    if (!this.options.admin) return json(403, { ok: false, error: "read-only console: start it with an admin key to change channels" });
    const body = await request.text();
    if (body.length > ADMIN_BODY_BYTES_MAX) return json(413, { ok: false, error: "request too large" });
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
  "content-security-policy":
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
};

function text(status: number, body: string): Response {
  return new Response(body, { status, headers: { "content-type": "text/plain; charset=utf-8" } });
}

function json(status: number, body: unknown): Response {
  return Response.json(body, { status });
}

/**
 * When this client delivers an event of the channel (src/README.md §3), shown beside the
 * count of replicas that actually sent it: byzantine/total, once f+1 replicas sent the
 * same batch; byzantine/none, once f+1 replicas sent events of its publisher; crash, the
 * first copy; `$sys.events`, once f+1 replicas reported the same group event.
 */
function deliveryRule(tag: string, f: number, fault: string, order: string): string {
  if (tag === SYS_EVENTS_TAG) return `delivered once ${vouchQuorum(f)} replicas reported the same event`;
  if (fault === "crash") return "delivered on the first copy (crash channel)";
  return order === "total"
    ? `delivered once ${vouchQuorum(f)} replicas sent the same batch`
    : `delivered once ${vouchQuorum(f)} replicas sent events of its publisher`;
}

function showPayload(payload: Uint8Array): string {
  const cut = payload.subarray(0, TAIL_PAYLOAD_BYTES_MAX);
  // The relay's rule for an EVENT line: printable UTF-8 is shown as text, the rest as base64.
  const shown = isLineSafe(cut) ? new TextDecoder().decode(cut) : `base64:${Buffer.from(cut).toString("base64")}`;
  return payload.length > TAIL_PAYLOAD_BYTES_MAX ? `${shown}... (${payload.length} bytes)` : shown;
}
