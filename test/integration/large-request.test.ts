// The largest publish a replica admits goes through ordering and survives a restart. The
// sizes once disagreed: a client packed up to a frame (4 MiB) into one request, the channel
// machine and the ordering core took 2 MiB, and the check of peers' messages and of records
// read back took 1 MiB. A 1.2 MB request from `fitb pub` was proposed, every backup dropped
// the PRE_PREPARE as invalid and muted its leader, views changed for ever, and after a
// restart every replica read its log as corrupt: the group never ordered again.
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { FitbClient } from "../../src/client/index.ts";
import { REQUEST_BYTES_MAX } from "../../src/core/channels/constants.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, collect, encode, startClusterWithChannels } from "./client-util.ts";
import { waitCaughtUp } from "./durability-history.ts";
import { logTail, type TestCluster } from "./harness.ts";

let cluster: TestCluster;
let publisher: FitbClient;

beforeAll(async () => {
  cluster = await startClusterWithChannels();
  publisher = clientFor(cluster, cluster.clientKey);
}, 120_000);

afterAll(async () => {
  publisher?.close();
  await cluster.stop();
});

/** `count` events of `bytes` bytes each, numbered. */
function events(count: number, bytes: number): Uint8Array[] {
  return Array.from({ length: count }, (_, i) => {
    const event = new Uint8Array(bytes).fill(0x61);
    event.set(encode(`event ${i} `));
    return event;
  });
}

test("a publish of nearly REQUEST_BYTES_MAX in one request is ordered on a byzantine/total channel, and ordering goes on", async () => {
  // 480 events of 4,000 bytes: 1.92 MB, one request (client.publish sends one).
  const big = events(480, 4_000);
  expect(big.length * 4_000).toBeGreaterThan(REQUEST_BYTES_MAX * 0.9);
  const ack = await publisher.publish("sec.alerts", big);
  expect(ack.span).toBe(480);
  const next = await publisher.publish("sec.alerts", [encode("after the large one")]);
  expect(next.channelSeq).toBe((ack.channelSeq as number) + 480);
  const read = await collect(publisher, "sec.alerts", 1);
  await waitFor("every event to be delivered", () => read.events.length >= 481, 60_000);
  await read.close();
  for (let id = 0; id < cluster.n; id++) expect(logTail(cluster, id, 400)).not.toContain("misbehaving");
}, 120_000);

test("a replica stopped and started again reads the large request back from its log and catches up", async () => {
  const proc = cluster.procs[2];
  cluster.kill(2, "SIGTERM");
  expect(await proc?.exited).toBe(0);
  cluster.start(2);
  await waitCaughtUp(publisher, 2, 60_000);
  await publisher.publish("sec.alerts", [encode("after the restart")]);
  const log = logTail(cluster, 2, 400);
  expect(log).not.toContain("storage corruption");
  expect(log).not.toContain("malformed record");
}, 120_000);
