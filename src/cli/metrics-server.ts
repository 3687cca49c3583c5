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
 */
import type { MetricsRegistry } from "../metrics/registry.ts";
import { listenFailure } from "../relay/server.ts";
import { HostAllowlist } from "./console/host-allowlist.ts";
import { CommandError, UsageError } from "./errors.ts";
import { checkMetricsHostNames } from "./metrics-flags.ts";
import { VERSION } from "./run.ts";

/** A scrape has no body; Bun refuses a larger one before it is read. */
export const METRICS_REQUEST_BODY_BYTES_MAX = 1_024;
const READ_METHODS: ReadonlySet<string> = new Set(["GET", "HEAD"]);

export interface MetricsEndpoint {
  readonly registry: MetricsRegistry;
  /** The JSON status page; absent: /status is 404. */
  readonly status?: () => unknown;
}

export type MetricsServer = ReturnType<typeof Bun.serve>;

/**
 * Starts the endpoint when `listen` is given; a bad or busy address is the command's error.
 * `hostNames` are the `--metrics-host-name` values: given without `--metrics`, they are a
 * usage error rather than silently unused.
 */
export function startMetricsServer(
  listen: string | undefined,
  endpoint: MetricsEndpoint,
  hostNames: readonly string[] = [],
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
  try {
    return Bun.serve({
      hostname,
      port,
      development: false,
      maxRequestBodySize: METRICS_REQUEST_BODY_BYTES_MAX,
      async fetch(request, server) {
        if (!hosts.allows(request.headers.get("host"), server.port as number))
          return new Response("forbidden: this endpoint answers only to its own address\n", { status: 403 });
        if (!READ_METHODS.has(request.method))
          return new Response("method not allowed\n", { status: 405, headers: { allow: "GET, HEAD" } });
        const path = new URL(request.url).pathname;
        if (path === "/metrics") return new Response(await registry.text(), { headers: { "content-type": registry.contentType } });
        if (path === "/status" && status !== undefined) return Response.json(status());
        return new Response(`not found: try /metrics${status === undefined ? "" : " or /status"}\n`, { status: 404 });
      },
    });
  } catch (error) {
    throw new CommandError(`--metrics: ${listenFailure(listen, error, "")}`);
  }
}
