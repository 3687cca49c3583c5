/**
 * `--metrics HOST:PORT` on the replica and the relay: Prometheus text at /metrics and,
 * where there is one, a JSON status page at /status. The process metrics (CPU, RSS, file
 * descriptors) and `fitb_build_info` are added to the registry served here.
 */
import type { MetricsRegistry } from "../metrics/registry.ts";
import { listenFailure } from "../relay/server.ts";
import { CommandError, UsageError } from "./errors.ts";
import { VERSION } from "./run.ts";

export interface MetricsEndpoint {
  readonly registry: MetricsRegistry;
  /** The JSON status page; absent: /status is 404. */
  readonly status?: () => unknown;
}

export type MetricsServer = ReturnType<typeof Bun.serve>;

/** Starts the endpoint when `listen` is given; a bad or busy address is the command's error. */
export function startMetricsServer(listen: string | undefined, endpoint: MetricsEndpoint): MetricsServer | null {
  if (listen === undefined) return null;
  const match = /^(.+):(\d{1,5})$/.exec(listen);
  const port = match === null ? NaN : Number(match[2]);
  if (match === null || !(port >= 0 && port <= 65_535))
    throw new UsageError(`--metrics: expected HOST:PORT, got ${JSON.stringify(listen)}`);
  const { registry, status } = endpoint;
  registry.withProcessMetrics();
  registry.buildInfo(VERSION, `bun ${Bun.version}`);
  try {
    return Bun.serve({
      hostname: (match[1] as string).replace(/^\[(.*)\]$/, "$1"),
      port,
      async fetch(request) {
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
