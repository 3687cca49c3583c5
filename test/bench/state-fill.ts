/**
 * What the programs that build a large state and then watch a replica get it share
 * (join-time.ts, catch-up.ts): their integer flags, the cluster limits that let one
 * channel keep the whole state, a client with a long request timeout, and the fill.
 */
import { FitbClient } from "../../src/client/index.ts";
import { loadClientSetup } from "../../src/client/setup.ts";
import type { TestCluster } from "../integration/harness.ts";

/** Events per request while filling: the cluster's default batch_events_max. */
export const EVENTS_PER_REQUEST = 1024;

/** `--name N` from the command line (a positive integer), or `fallback`; exits 2 with `usage` on anything else. */
export function positiveFlag(name: string, fallback: number, usage: string): number {
  const at = process.argv.indexOf(`--${name}`);
  if (at < 0) return fallback;
  const value = Number(process.argv[at + 1]);
  if (!Number.isInteger(value) || value <= 0) {
    console.error(`--${name} takes a positive integer\n${usage}`);
    process.exit(2);
  }
  return value;
}

/** Retention (cluster defaults, so the channel keeps them all) and client rate limits lifted for a fill of `events`. */
export function fillLimits(events: number): Record<string, number> {
  return {
    events_max: Math.max(1_000_000, 2 * events),
    bytes_max: 1024 * 1024 * 1024,
    client_events_per_second_max: 10_000_000,
    client_burst_events_max: 100_000_000,
  };
}

/** A started client of `cluster` under `key`, with a request timeout long enough for a loaded host. */
export function benchClient(cluster: TestCluster, key: string): FitbClient {
  const setup = loadClientSetup(cluster.configPath, key);
  const c = new FitbClient({ config: setup.config, key: setup.key, timeouts: { requestMs: 60_000 } });
  c.start();
  return c;
}

/**
 * Publishes `events` events of `bytes` bytes to `tag`, EVENTS_PER_REQUEST per request,
 * `streams` requests in flight, with progress on stderr; prints the state built.
 */
export async function fillChannel(publisher: FitbClient, tag: string, events: number, bytes: number, streams: number): Promise<void> {
  const requests = Math.ceil(events / EVENTS_PER_REQUEST);
  const payload = (r: number, i: number): Uint8Array => new TextEncoder().encode(`r${r}e${i} `.padEnd(bytes, "."));
  let next = 0;
  let published = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: streams }, async () => {
      for (let r = next++; r < requests; r = next++) {
        const count = Math.min(EVENTS_PER_REQUEST, events - r * EVENTS_PER_REQUEST);
        await publisher.publish(
          tag,
          Array.from({ length: count }, (_, i) => payload(r, i)),
        );
        published += count;
        if (r % 50 === 0) process.stderr.write(`\r  published ${published} events`);
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  process.stderr.write("\n");
  console.log(
    `state: ${published} events of ${bytes} bytes, built in ${seconds.toFixed(1)} s (${Math.round(published / seconds)} events/s)`,
  );
}
