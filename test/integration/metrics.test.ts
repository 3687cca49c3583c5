/**
 * Issue 15, item 1: a real cluster of four replicas and a relay, each with --metrics,
 * scraped before and after traffic. Every family has HELP and TYPE from the start; the
 * per-channel, per-peer, latency and process series are there; `promtool check metrics`
 * passes on both outputs when promtool is installed (Debian package `prometheus`).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Subprocess } from "bun";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, createChannels, encode } from "./client-util.ts";
import { freePortRange, relayArgv, logTail, startCluster, type TestCluster } from "./harness.ts";

const PROMTOOL = Bun.which("promtool");

let cluster: TestCluster;
let metricsBase: number;
let relayPort: number;
let relay: Subprocess | null = null;
const relayLog: string[] = [];

async function scrape(port: number): Promise<string> {
  const response = await fetch(`http://127.0.0.1:${port}/metrics`);
  expect(response.status).toBe(200);
  return response.text();
}

async function scrapeWhenUp(port: number): Promise<string> {
  let text = "";
  await waitFor(`metrics on port ${port}`, async () => {
    text = await scrape(port).catch(() => "");
    return text !== "";
  });
  return text;
}

/** Each sample's value by its full series name (`name{labels}`). */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const cut = line.lastIndexOf(" ");
    out.set(line.slice(0, cut), Number(line.slice(cut + 1)));
  }
  return out;
}

/** Families whose samples appear without a HELP or TYPE line before them. */
function familiesWithoutHelp(text: string): string[] {
  const help = new Set<string>();
  const type = new Set<string>();
  const missing = new Set<string>();
  for (const line of text.split("\n")) {
    const meta = /^# (HELP|TYPE) (\S+)/.exec(line);
    if (meta !== null) (meta[1] === "HELP" ? help : type).add(meta[2] as string);
    else if (line !== "" && !line.startsWith("#")) {
      const name = (/^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line) as RegExpExecArray)[0];
      const family = name.replace(/_(bucket|sum|count)$/, "");
      if (!(help.has(name) || help.has(family)) || !(type.has(name) || type.has(family))) missing.add(name);
    }
  }
  return [...missing];
}

async function promtool(text: string): Promise<{ code: number; output: string }> {
  const proc = Bun.spawn([PROMTOOL as string, "check", "metrics"], { stdin: new Blob([text]), stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  return { code, output: out + err };
}

beforeAll(async () => {
  const ports = freePortRange(6);
  metricsBase = ports;
  relayPort = ports + 4;
  const relayMetricsPort = ports + 5;
  cluster = await startCluster({ replicaArgs: (id) => ["--metrics", `127.0.0.1:${metricsBase + id}`] });
  relay = Bun.spawn(relayArgv(cluster.configPath, cluster.clientKey, relayPort, "--metrics", `127.0.0.1:${relayMetricsPort}`), {
    stdout: "pipe",
    stderr: "pipe",
  });
  (async () => {
    for await (const chunk of relay.stderr as ReadableStream<Uint8Array>) relayLog.push(new TextDecoder().decode(chunk));
  })();
}, 60_000);

afterAll(async () => {
  relay?.kill("SIGKILL");
  await relay?.exited;
  await cluster.stop();
});

describe("metrics on a running cluster", () => {
  let before: string;
  let relayBefore: string;

  test("every family has HELP and TYPE from the start, before any traffic", async () => {
    before = await scrapeWhenUp(metricsBase);
    expect(familiesWithoutHelp(before)).toEqual([]);
    const values = samples(before);
    for (const series of [
      "fitb_requests_total",
      "fitb_events_stored_total",
      'fitb_requests_refused_total{reason="UNAUTHORIZED"}',
      'fitb_requests_refused_total{reason="RATE_LIMITED"}',
      'fitb_mode{mode="normal"}',
      "fitb_ordering_seconds_count",
      "fitb_storage_commit_seconds_count",
      'fitb_publish_ack_seconds_count{class="byzantine/total"}',
      'fitb_delivery_seconds_count{class="crash/none"}',
      "fitb_view",
      "fitb_epoch",
      "fitb_membership_change_pending",
      "fitb_leader",
      "fitb_is_leader",
      "process_resident_memory_bytes",
      "process_cpu_seconds_total",
      "process_open_fds",
    ]) {
      expect(values.has(series), `${series} in the first scrape`).toBe(true);
    }
    expect([...values.keys()].some((key) => key.startsWith("fitb_build_info{"))).toBe(true);
    expect(values.get("fitb_epoch")).toBe(0);
    expect(values.get("fitb_membership_change_pending")).toBe(0);
    relayBefore = await scrapeWhenUp(metricsBase + 5);
    expect(familiesWithoutHelp(relayBefore)).toEqual([]);
    expect(samples(relayBefore).get("fitb_relay_events_published_total")).toBeUndefined();
    expect(samples(relayBefore).has("fitb_relay_publish_ack_seconds_count")).toBe(true);
  }, 60_000);

  test("after traffic: per-channel counters, latency histograms, peers, the relay's series", async () => {
    const admin = clientFor(cluster, cluster.adminKey);
    // To every replica: the crash/none counters are read from replica 0.
    const publisher = clientFor(cluster, cluster.clientKey, { crashNoneTargets: "all" });
    try {
      await createChannels(admin, publisher.publicKey);
      const received: number[] = [];
      const sub = await publisher.subscribe("sec.alerts", {}, (batch) => {
        received.push(batch.events.length);
      });
      for (let i = 0; i < 5; i++) await publisher.publish("sec.alerts", [encode(`alert ${i}`)]);
      await publisher.publish("net.links", [encode("eth0 down")]);
      await waitFor("5 events delivered", () => received.reduce((a, b) => a + b, 0) >= 5);
      await sub.close();
      // Through the relay, once its sessions are up.
      await waitFor(
        "the relay to answer a PUB",
        async () => (await relayLine("PUB net.links relay says hi\n")).startsWith("+OK"),
        30_000,
        () => relayLog.join("").slice(-500),
      );
    } finally {
      admin.close();
      publisher.close();
    }
    const alerts = 'tag="sec.alerts",class="byzantine/total",priority="critical"';
    let values = new Map<string, number>();
    await waitFor(
      "replica 0 to count the stored and delivered events, and its acknowledgements of them",
      async () => {
        values = samples(await scrape(metricsBase));
        // The client's own copy of a publish may reach replica 0 after it executed a
        // forwarded one; its acknowledgement (counted too) then comes later.
        return (
          (values.get(`fitb_channel_events_delivered_total{${alerts}}`) ?? 0) >= 5 &&
          (values.get('fitb_publish_ack_seconds_count{class="byzantine/total"}') ?? 0) >= 5
        );
      },
      20_000,
      () => logTail(cluster, 0),
    );
    expect(values.get(`fitb_channel_events_published_total{${alerts}}`)).toBeGreaterThanOrEqual(5);
    expect(values.get(`fitb_channel_events_stored_total{${alerts}}`)).toBe(5);
    expect(values.get(`fitb_channel_last_seq{${alerts}}`)).toBe(5);
    expect(values.get(`fitb_channel_retained_events{${alerts}}`)).toBe(5);
    expect(values.get(`fitb_channel_retention_used_ratio{${alerts}}`)).toBeGreaterThan(0);
    expect(values.get('fitb_channel_events_stored_total{tag="net.links",class="crash/none",priority="normal"}')).toBeGreaterThanOrEqual(1);
    expect(values.get("fitb_ordering_seconds_count")).toBeGreaterThan(0);
    expect(values.get("fitb_storage_commit_seconds_count")).toBeGreaterThan(0);
    expect(values.get('fitb_publish_ack_seconds_count{class="byzantine/total"}')).toBeGreaterThanOrEqual(5);
    expect(values.get('fitb_delivery_seconds_count{class="byzantine/total"}')).toBeGreaterThanOrEqual(1);
    for (const peer of [1, 2, 3]) expect(values.get(`fitb_peer_up{peer="${peer}"}`)).toBe(1);
    // One mode at a time; each replica's is_leader agrees with the leader it names (a
    // replica of a loaded machine may sit alone in another view, so no one view is assumed).
    expect(["normal", "viewChange", "stateTransfer"].map((mode) => values.get(`fitb_mode{mode="${mode}"}`)).sort()).toEqual([0, 0, 1]);
    for (const id of [0, 1, 2, 3]) {
      const own = samples(await scrape(metricsBase + id));
      expect(own.get("fitb_is_leader")).toBe(own.get("fitb_leader") === id ? 1 : 0);
    }
    const relayValues = samples(await scrape(metricsBase + 5));
    expect(relayValues.get('fitb_relay_events_acked_total{tag="net.links"}')).toBeGreaterThanOrEqual(1);
    expect(relayValues.get("fitb_relay_publish_ack_seconds_count")).toBeGreaterThanOrEqual(1);
    expect(relayValues.get('fitb_relay_replica_up{replica="0"}')).toBe(1);
  }, 90_000);

  test.skipIf(PROMTOOL === null)(
    "promtool check metrics passes on replica and relay output",
    async () => {
      for (const port of [metricsBase, metricsBase + 1, metricsBase + 5]) {
        const result = await promtool(await scrape(port));
        expect(result.output).toBe("");
        expect(result.code).toBe(0);
      }
      const first = await promtool(before);
      expect(first.code).toBe(0);
      expect((await promtool(relayBefore)).code).toBe(0);
    },
    30_000,
  );

  if (PROMTOOL === null) {
    test("promtool is not installed: the promtool check is skipped (apt-get install prometheus)", () => {
      console.warn("metrics.test.ts: promtool not on PATH, so `promtool check metrics` was not run (Debian package: prometheus)");
    });
  }
});

/** Sends one line to the relay and returns its first answer line. */
async function relayLine(line: string): Promise<string> {
  let answer = "";
  const done = Promise.withResolvers<void>();
  const socket = await Bun.connect({
    hostname: "127.0.0.1",
    port: relayPort,
    socket: {
      data(_socket, data) {
        answer += new TextDecoder().decode(data);
        if (answer.includes("\n")) done.resolve();
      },
      close() {
        done.resolve();
      },
      error() {
        done.resolve();
      },
    },
  }).catch(() => null);
  if (socket === null) return "";
  socket.write(line);
  const timer = setTimeout(() => done.resolve(), 10_000);
  await done.promise;
  clearTimeout(timer);
  socket.end();
  return answer.split("\n")[0] ?? "";
}
