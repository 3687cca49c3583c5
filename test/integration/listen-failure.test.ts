/** Listening failures name the address and the reason, for the relay, a replica and --metrics. */
import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { findPortHolder } from "../../src/cli/port-holder.ts";
import { initCluster } from "../../src/config/init.ts";
import { listenFailure } from "../../src/relay/server.ts";
import { BUN, MAIN, freePortRange } from "./harness.ts";

describe("listenFailure", () => {
  test("a port in use, as Bun really reports it, is named with its address", () => {
    const first = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    try {
      let failure: unknown = null;
      try {
        Bun.listen({ hostname: "127.0.0.1", port: first.port, socket: { data() {} } }).stop(true);
      } catch (error) {
        failure = error;
      }
      expect(failure).not.toBeNull();
      expect(listenFailure(`127.0.0.1:${first.port}`, failure, "replica")).toBe(
        `127.0.0.1:${first.port} is already in use (another replica or program is listening there)`,
      );
      expect(listenFailure(`127.0.0.1:${first.port}`, failure, "")).toBe(
        `127.0.0.1:${first.port} is already in use (another program is listening there)`,
      );
    } finally {
      first.stop(true);
    }
  });

  test("other failures keep the address and the system's words", () => {
    expect(listenFailure("10.9.9.9:7100", { code: "EADDRNOTAVAIL", message: "x" })).toBe("10.9.9.9:7100 is not an address of this host");
    expect(listenFailure("127.0.0.1:80", { code: "EACCES", message: "x" })).toMatch(/^127\.0\.0\.1:80: permission denied/);
  });
});

describe("who holds a port", () => {
  test("findPortHolder names the listening process; a free port has none", () => {
    const listener = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const port = listener.port;
    try {
      expect(findPortHolder(port)?.pid).toBe(process.pid);
    } finally {
      listener.stop(true);
    }
    expect(findPortHolder(port)).toBeNull();
  });

  test("a replica whose port is taken says which process holds it", async () => {
    const listener = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const dir = mkdtempSync(join(tmpdir(), "fitb-port-holder-"));
    try {
      const init = initCluster({ dir, replicas: 4, host: "127.0.0.1", basePort: listener.port, name: "held", overwrite: false });
      const proc = Bun.spawn([BUN, MAIN, "replica", "--config", init.configPath, "--id", "0"], { stdout: "pipe", stderr: "pipe" });
      const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
      expect(code).toBe(1);
      expect(stderr).toContain(
        `127.0.0.1:${listener.port} is already in use (another replica or program is listening there) (held by pid ${process.pid}: `,
      );
    } finally {
      listener.stop(true);
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);

  test("a replica whose peer port is taken says which process holds that port, not who holds its client port", async () => {
    const listener = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const dir = mkdtempSync(join(tmpdir(), "fitb-peer-port-holder-"));
    try {
      const basePort = freePort();
      const init = initCluster({
        dir,
        replicas: 4,
        host: "127.0.0.1",
        basePort,
        peerBasePort: listener.port,
        name: "held",
        overwrite: false,
      });
      const proc = Bun.spawn([BUN, MAIN, "replica", "--config", init.configPath, "--id", "0"], { stdout: "pipe", stderr: "pipe" });
      const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
      expect(code).toBe(1);
      expect(stderr).toContain(`127.0.0.1:${listener.port} is already in use`);
      expect(stderr).toContain(`(held by pid ${process.pid}: `);
    } finally {
      listener.stop(true);
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);
});

/** A port nothing listens on now, in this test process's lane (harness.ts). */
function freePort(): number {
  return freePortRange(1);
}
