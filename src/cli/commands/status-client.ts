/**
 * The client side of `fitb admin status` and `fitb top`: they talk to whichever replicas
 * answer, so they do not wait for a quorum of sessions first. They wait until each
 * replica is up or has failed once (a refused connection fails at once), ask those that
 * are up, and report every replica, with why the others are down.
 */
import { type ClusterStatus, FitbClient, summarizeStatus } from "../../client/client.ts";
import { loadClientSetup } from "../../client/setup.ts";
import type { CommandIo } from "../command.ts";
import { type ClientFlags, withClientErrors } from "./pub.ts";
import { assessStatus, type StatusReport } from "./status-report.ts";

/** How often the sessions are looked at while they settle. */
const SETTLE_POLL_MS = 10;

/** A started client (no session wait); the caller closes it. */
export function openStatusClient(flags: ClientFlags, io: CommandIo, name: string): FitbClient {
  const setup = loadClientSetup(flags.configPath, flags.keyPath);
  for (const warning of setup.warnings) io.err(`fitb ${name}: warning: ${warning}`);
  const client = new FitbClient({
    config: setup.config,
    key: setup.key,
    timeouts: { connectMs: flags.connectTimeoutMs, requestMs: flags.timeoutMs, queryMs: flags.timeoutMs },
  });
  client.start();
  return client;
}

/** Every replica's status answer (or none), once each session is up or has failed (bounded by `connectMs`). */
export async function readClusterStatus(client: FitbClient, connectMs: number): Promise<ClusterStatus> {
  const deadline = Date.now() + connectMs;
  while (Date.now() < deadline) {
    if (client.replicaStates().every((r) => r.state === "ready" || r.lastError !== null)) break;
    await Bun.sleep(SETTLE_POLL_MS);
  }
  if (client.readyReplicas().length === 0) {
    const connections = client.replicaStates().map((r) => ({ id: r.id, address: r.address, isReady: false }));
    return summarizeStatus(client.f, new Map(), connections);
  }
  return withClientErrors(() => client.status());
}

/** Why each replica is not up, as the client saw it (its address is in the row already). */
export function downReasons(client: FitbClient): Map<number, string> {
  return new Map(
    client
      .replicaStates()
      .map((r) => [r.id, r.lastError?.replace(/^replica \d+ \([^)]*\) /, "") ?? (r.state === "ready" ? "no answer" : r.state)]),
  );
}

export async function readStatusReport(client: FitbClient, connectMs: number): Promise<StatusReport> {
  const status = await readClusterStatus(client, connectMs);
  return assessStatus({ name: client.config.name, n: client.n, f: client.f }, status, downReasons(client));
}
