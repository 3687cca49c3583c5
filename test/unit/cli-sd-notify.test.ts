// sd_notify (src/cli/sd-notify.ts): messages reach $NOTIFY_SOCKET as datagrams, nothing
// happens without it, and a supervisor that does not read never blocks the sender.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SystemdNotifier, sockaddrUn, watchdogIntervalMs } from "../../src/cli/sd-notify.ts";
import { NotifySocket } from "../helpers/notify-socket.ts";

const dir = mkdtempSync(join(tmpdir(), "fitb-sd-notify-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("SystemdNotifier", () => {
  test("sends each message as one datagram", () => {
    const socket = NotifySocket.open(join(dir, "a.sock"));
    const notifier = new SystemdNotifier(socket.path);
    notifier.notify("READY=1\nSTATUS=joined");
    notifier.notify("WATCHDOG=1");
    expect(socket.messages()).toEqual(["READY=1\nSTATUS=joined", "WATCHDOG=1"]);
    notifier.close();
    socket.close();
  });

  test("without NOTIFY_SOCKET it is disabled and does nothing", () => {
    const notifier = new SystemdNotifier("");
    expect(notifier.enabled).toBe(false);
    notifier.notify("READY=1");
  });

  test("a supervisor that does not read makes sends fail, never block", () => {
    const socket = NotifySocket.open(join(dir, "b.sock"));
    const notifier = new SystemdNotifier(socket.path);
    let failures = 0;
    // More than any datagram queue holds (net.unix.max_dgram_qlen is 10 to 512).
    for (let i = 0; i < 2_000; i++) {
      try {
        notifier.notify("WATCHDOG=1");
      } catch {
        failures++;
      }
    }
    expect(failures).toBeGreaterThan(0);
    notifier.close();
    socket.close();
  });

  test("a NOTIFY_SOCKET that names no socket address fails the first notify only, never the constructor", () => {
    // Longer than sockaddr_un's 108-byte path: the replica once logged "replica started", then died here.
    const notifier = new SystemdNotifier(`/run/${"x".repeat(200)}/notify`);
    expect(notifier.enabled).toBe(true);
    expect(() => notifier.notify("READY=1")).toThrow(/is not a usable socket name/);
    notifier.notify("WATCHDOG=1");
    notifier.notify("STOPPING=1");
    notifier.close();
  });

  test("abstract socket names and the watchdog interval", () => {
    expect(sockaddrUn("@systemd/notify")[2]).toBe(0);
    expect(watchdogIntervalMs({ WATCHDOG_USEC: "30000000" })).toBe(30_000);
    expect(watchdogIntervalMs({ WATCHDOG_USEC: "30000000", WATCHDOG_PID: "1" })).toBeNull();
    expect(watchdogIntervalMs({})).toBeNull();
  });
});
