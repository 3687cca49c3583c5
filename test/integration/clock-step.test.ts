// A step of one replica's wall clock (NTP, an operator's `date -s`) must not end its client
// sessions: the server times idle sessions, stuck readers, handshakes and the tarpit on a
// clock that does not step. Before, a +600 s step had the next sweep close every session as
// idle for ten minutes. Replica 1's wall clock is moved with libfaketime (test/fault/faketime.ts,
// the monotonic clock left alone, as a step leaves it); the Debian package is installed by
// the test when it runs as root with apt, as CI does, and the test is skipped saying why
// otherwise.
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { FitbClient } from "../../src/client/index.ts";
import { faketimeLibrary, skewedClockEnv, writeOffset } from "../fault/faketime.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, createChannels, encode } from "./client-util.ts";
import { freePortRange, logTail, startCluster, type TestCluster } from "./harness.ts";

const library = faketimeLibrary(true);
const why = "why" in library ? library.why : null;
if (why !== null) console.warn(`skipping the wall clock step test: ${why}`);

const STEP_S = 600;
let cluster: TestCluster | null = null;
let client: FitbClient | null = null;

afterAll(async () => {
  client?.close();
  await cluster?.stop();
});

test.skipIf(why !== null)(
  "a replica whose wall clock steps 10 minutes ahead keeps its client sessions",
  async () => {
    const offsetFile = join(mkdtempSync(join(tmpdir(), "fitb-clock-")), "offset");
    writeOffset(offsetFile, "+0");
    const metricsPort = freePortRange(1);
    const path = (library as { path: string }).path;
    const running = await startCluster({
      replicaArgs: (id) => (id === 1 ? ["--metrics", `127.0.0.1:${metricsPort}`] : []),
      replicaEnv: (id): Record<string, string> => (id === 1 ? skewedClockEnv(path, offsetFile) : {}),
    });
    cluster = running;
    const admin = clientFor(running, running.adminKey);
    client = clientFor(running, running.clientKey);
    await createChannels(admin, client.publicKey);
    admin.close();
    await client.publish("net.links", [encode("before the step")]);
    /** How far replica 1's wall clock is from this process's, from its uptime (counted on its wall clock). */
    const startedAt = Date.now();
    const uptimeMs = async (): Promise<number> => {
      const page = (await (await fetch(`http://127.0.0.1:${metricsPort}/status`)).json()) as { uptimeMs: number };
      return page.uptimeMs;
    };
    const base = (await uptimeMs()) - (Date.now() - startedAt);
    writeOffset(offsetFile, `+${STEP_S}s`);
    let stepped = 0;
    await waitFor("replica 1's wall clock to step", async () => {
      stepped = await uptimeMs();
      return stepped - (Date.now() - startedAt) - base > (STEP_S - 10) * 1000;
    });
    // Three seconds more of its own time: its sweep of client sessions runs every second.
    await waitFor("replica 1 to run 3 s past the step", async () => (await uptimeMs()) > stepped + 3_000);
    expect(logTail(running, 1, 400)).not.toContain("client closed: idle");
    await client.publish("net.links", [encode("after the step")]);
    expect(logTail(running, 1, 400)).not.toContain("client closed: idle");
  },
  180_000,
);
