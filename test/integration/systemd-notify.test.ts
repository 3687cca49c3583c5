// `fitb replica` under a systemd-like supervisor (Type=notify): READY=1 only once the
// replica has joined its group (2f peers up), WATCHDOG=1 at half of $WATCHDOG_USEC, and
// STOPPING=1 on SIGTERM, sent to the datagram socket named by $NOTIFY_SOCKET.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { NotifySocket } from "../helpers/notify-socket.ts";
import { waitFor } from "../helpers/wait.ts";
import { BUN, MAIN, startCluster, type TestCluster } from "./harness.ts";

let cluster: TestCluster;
const sockets: NotifySocket[] = [];
const procs: Subprocess[] = [];
const logs: string[] = [];

/** Starts replica `id` with its own notify socket (and a 1 s watchdog for replica 0). */
function startReplica(id: number): void {
  const env: Record<string, string> = { ...(process.env as Record<string, string>), NOTIFY_SOCKET: (sockets[id] as NotifySocket).path };
  if (id === 0) env.WATCHDOG_USEC = "1000000";
  const proc = Bun.spawn([BUN, MAIN, "replica", "--config", cluster.configPath, "--id", String(id)], {
    env,
    stdout: "pipe",
    stderr: "pipe",
  });
  procs[id] = proc;
  logs[id] = "";
  void (async () => {
    for await (const chunk of proc.stdout) logs[id] += new TextDecoder().decode(chunk);
  })();
}

beforeAll(async () => {
  cluster = await startCluster({ start: false });
  for (let id = 0; id < cluster.n; id++) sockets.push(NotifySocket.open(join(cluster.dir, `notify-${id}.sock`)));
});

afterAll(async () => {
  for (const proc of procs) proc?.kill("SIGKILL");
  await Promise.all(procs.map((proc) => proc?.exited));
  for (const socket of sockets) socket.close();
  await cluster.stop();
});

describe("sd_notify", () => {
  test("READY=1 once the replica has joined its group, not before", async () => {
    startReplica(0);
    startReplica(1);
    // Replica 0 sees replica 1, but 1 peer of 2f = 2 is not a group that can order.
    await waitFor(
      "replica 0's link to replica 1",
      () => logs[0]?.includes('"msg":"peer link up","replica":0,"peer":1') ?? false,
      20_000,
      () => logs[0] ?? "",
    );
    expect((sockets[0] as NotifySocket).messages().some((message) => message.startsWith("READY=1"))).toBe(false);
    startReplica(2);
    for (const id of [0, 1, 2]) {
      await waitFor(
        `READY=1 from replica ${id}`,
        () => (sockets[id] as NotifySocket).messages().some((m) => m.startsWith("READY=1")),
        20_000,
      );
    }
    expect((sockets[0] as NotifySocket).messages().find((m) => m.startsWith("READY=1"))).toMatch(
      /^READY=1\nSTATUS=joined the group \(\d+ peers up\)$/,
    );
    expect(logs[0]).toContain('"msg":"joined the group"');
    startReplica(3);
    await waitFor("READY=1 from replica 3", () => (sockets[3] as NotifySocket).messages().some((m) => m.startsWith("READY=1")), 20_000);
  }, 60_000);

  test("WATCHDOG=1 while running, STOPPING=1 on SIGTERM", async () => {
    const socket = sockets[0] as NotifySocket;
    await waitFor("two WATCHDOG=1", () => socket.messages().filter((m) => m === "WATCHDOG=1").length >= 2, 20_000);
    // Only replica 0 was given a watchdog interval.
    expect((sockets[1] as NotifySocket).messages()).not.toContain("WATCHDOG=1");
    procs[0]?.kill("SIGTERM");
    expect(await procs[0]?.exited).toBe(0);
    expect(socket.messages().at(-1)).toBe("STOPPING=1");
  }, 60_000);
});
