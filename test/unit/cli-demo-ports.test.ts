/**
 * `fitb demo` refuses, before it starts anything, ports its own listeners would share
 * (portClashMessage, src/cli/commands/demo.ts): a --relay-port on a replica's port once
 * started every replica and then failed.
 */
// The registry first: demo.ts reaches run.ts, whose registry imports demo.ts back.
import "../../src/cli/registry.ts";
import { describe, expect, test } from "bun:test";
import { portClashMessage } from "../../src/cli/commands/demo.ts";

describe("the demo's own ports", () => {
  const replicas = [7100, 7101, 7102, 7103].map((port, id) => ({ host: "127.0.0.1", port, what: `replica ${id}`, flag: "--base-port" }));
  const relay = (port: number) => ({ host: "127.0.0.1", port, what: "the relay", flag: "--relay-port" });
  const webConsole = (port: number) => ({ host: "127.0.0.1", port, what: "the web console", flag: "--console-port" });

  test("every port its own: no complaint", () => {
    expect(portClashMessage([...replicas, relay(7400), webConsole(7500)])).toBeNull();
  });

  test("the relay on a replica's port is refused before anything starts, naming both and the flag", () => {
    expect(portClashMessage([...replicas, relay(7102), webConsole(7500)])).toBe(
      "port 7102 is asked for both replica 2 and the relay; each needs its own: pass another --relay-port",
    );
  });

  test("the console on the relay's or a replica's port too", () => {
    expect(portClashMessage([...replicas, relay(7400), webConsole(7400)])).toBe(
      "port 7400 is asked for both the relay and the web console; each needs its own: pass another --console-port",
    );
    expect(portClashMessage([...replicas, relay(7400), webConsole(7100)])).toContain("replica 0 and the web console");
  });

  test("a replica's peer port counts too", () => {
    const peers = { host: "127.0.0.1", port: 8100, what: "replica 0's peers", flag: "a different --dir" };
    expect(portClashMessage([...replicas, peers, relay(8100)])).toBe(
      "port 8100 is asked for both replica 0's peers and the relay; each needs its own: pass another --relay-port",
    );
  });
});
