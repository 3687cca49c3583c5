// `--metrics` (src/cli/metrics-server.ts) answers scrapers only: GET and HEAD, with a Host
// header that names this server; a web page that rebinds its own name to this host is
// refused. Scraping by IP:PORT works on a loopback and on a wildcard listen.
import { afterEach, describe, expect, test } from "bun:test";
import { METRICS_REQUEST_BODY_BYTES_MAX, type MetricsServer, startMetricsServer } from "../../src/cli/metrics-server.ts";
import { CommandError, UsageError } from "../../src/cli/errors.ts";
import { MetricsRegistry } from "../../src/metrics/registry.ts";

const servers: MetricsServer[] = [];

afterEach(async () => {
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
