// A replica whose data directory is removed while it runs (an operator's `rm -rf`, a
// restore unpacked over it) stops within a second or so with EX_IOERR, saying why: it was
// writing to a file no later start would read, and every acknowledgement from then on
// would have rested on nothing. Before, it went on silently and even stopped with status 0.
import { afterAll, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { EXIT_STORAGE_FAILED } from "../../src/replica/storage/index.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, encode, startClusterWithChannels } from "./client-util.ts";
import { logTail, type TestCluster } from "./harness.ts";

let cluster: TestCluster | null = null;

afterAll(async () => {
  await cluster?.stop();
});

test("a replica whose data directory is removed under it stops with EX_IOERR, naming the file; the others go on", async () => {
  const running = await startClusterWithChannels();
  cluster = running;
  const client = clientFor(running, running.clientKey);
  try {
    await client.publish("sec.alerts", [encode("before")]);
    const proc = running.procs[3];
    rmSync(join(running.dir, "data", "replica-3"), { recursive: true, force: true });
    expect(await proc?.exited).toBe(EXIT_STORAGE_FAILED);
    await waitFor("the reason in its log", () => logTail(running, 3, 50).includes("removed or replaced under the running replica"));
    await client.publish("sec.alerts", [encode("after")]);
  } finally {
    client.close();
  }
}, 120_000);
