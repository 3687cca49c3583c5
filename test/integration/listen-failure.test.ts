/** Listening failures name the address and the reason, for the relay, a replica and --metrics. */
import { describe, expect, test } from "bun:test";
import { listenFailure } from "../../src/relay/server.ts";

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
