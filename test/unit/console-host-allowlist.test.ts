// Which Host headers the console and the metrics endpoint answer (src/cli/console/host-allowlist.ts):
// the defence against DNS rebinding. A name the attacker controls never passes; literal
// addresses of this host, loopback names on loopback, and names the operator gave do.
import { describe, expect, test } from "bun:test";
import { HostAllowlist, isHostName } from "../../src/cli/console/host-allowlist.ts";

const PORT = 7500;
const INTERFACES = ["127.0.0.1", "::1", "10.0.1.11", "fe80::a00:27ff:fe4e:66a1"];

describe("Host allowlist", () => {
  test("a loopback listen: its address and the loopback names, on its port only", () => {
    const hosts = new HostAllowlist({ listenHost: "127.0.0.1" });
    for (const host of ["127.0.0.1:7500", "localhost:7500", "LOCALHOST:7500", "[::1]:7500"]) expect(hosts.allows(host, PORT)).toBe(true);
    for (const host of ["127.0.0.1:7501", "127.0.0.1", "attacker.example:7500", "localhost.attacker.example:7500", "10.0.1.11:7500"])
      expect(hosts.allows(host, PORT)).toBe(false);
    expect(hosts.allows(null, PORT)).toBe(false);
    expect(hosts.allows("127.0.0.1", 80)).toBe(true);
  });

  test("a wildcard listen: this host's interface addresses and loopback, never a name", () => {
    for (const listenHost of ["0.0.0.0", "::"]) {
      const hosts = new HostAllowlist({ listenHost, interfaceAddresses: () => INTERFACES });
      for (const host of ["10.0.1.11:7500", "127.0.0.1:7500", "localhost:7500", "[::1]:7500", "[FE80::A00:27FF:FE4E:66A1]:7500"])
        expect(hosts.allows(host, PORT)).toBe(true);
      for (const host of ["10.0.1.12:7500", "attacker.example:7500", "0.0.0.0:7500", "[::]:7500", "10.0.1.11:7501"])
        expect(hosts.allows(host, PORT)).toBe(false);
    }
  });

  test("interface addresses are read at each request (an address may come and go)", () => {
    let addresses = ["10.0.1.11"];
    const hosts = new HostAllowlist({ listenHost: "0.0.0.0", interfaceAddresses: () => addresses });
    expect(hosts.allows("10.0.1.11:7500", PORT)).toBe(true);
    addresses = ["10.0.1.99"];
    expect(hosts.allows("10.0.1.11:7500", PORT)).toBe(false);
    expect(hosts.allows("10.0.1.99:7500", PORT)).toBe(true);
  });

  test("names the operator gave pass, in any case; a specific address passes alone", () => {
    const hosts = new HostAllowlist({ listenHost: "10.0.1.11", names: ["Ops-1.Example.NET"], interfaceAddresses: () => INTERFACES });
    expect(hosts.allows("ops-1.example.net:7500", PORT)).toBe(true);
    expect(hosts.allows("10.0.1.11:7500", PORT)).toBe(true);
    expect(hosts.allows("127.0.0.1:7500", PORT)).toBe(false);
    expect(hosts.allows("localhost:7500", PORT)).toBe(false);
  });

  test("an IPv6 listen address matches its Host however it is written", () => {
    const hosts = new HostAllowlist({ listenHost: "::1" });
    expect(hosts.allows("[0:0:0:0:0:0:0:1]:7500", PORT)).toBe(true);
    expect(hosts.allows("[::1]:7500", PORT)).toBe(true);
  });

  test("a Host header of another shape is refused, not parsed", () => {
    const hosts = new HostAllowlist({ listenHost: "127.0.0.1" });
    for (const host of [
      "attacker@127.0.0.1:7500",
      "127.0.0.1:7500/x",
      "127.0.0.1:7500?",
      "[::1%25eth0]:7500",
      "",
      " 127.0.0.1:7500",
      "127.0.0.1:",
    ])
      expect(hosts.allows(host, PORT)).toBe(false);
  });

  test("--host-name takes DNS names and IP literals, each with an optional port (IPv6 in brackets then)", () => {
    for (const name of ["ops-1.example.net", "localhost", "10.0.1.11", "::1", "fe80::1", "host:80", "[::1]:8080", "fitb_console:7500"])
      expect(isHostName(name)).toBe(true);
    for (const name of ["", "ops 1", "a/b", "user@host", "host:", "host:0", "host:65536", "[::1]:", "::1:80x"])
      expect(isHostName(name)).toBe(false);
    expect(() => new HostAllowlist({ listenHost: "127.0.0.1", names: ["a/b"] })).toThrow(
      'not a host name or IP address, with an optional port: "a/b"',
    );
  });

  test("a --host-name with a port is allowed at that port, not the listened one: an SSH tunnel to another local port, a reverse proxy", () => {
    const hosts = new HostAllowlist({ listenHost: "127.0.0.1", names: ["localhost:8080", "ops.example.net:80", "[::1]:8443"] });
    // ssh -L 8080:127.0.0.1:7500: the browser's Host is localhost:8080; a proxy on port 80 sends no port.
    for (const host of ["localhost:8080", "ops.example.net", "ops.example.net:80", "[::1]:8443", "localhost:7500"])
      expect(hosts.allows(host, PORT)).toBe(true);
    for (const host of ["127.0.0.1:8080", "localhost:8081", "ops.example.net:7500", "[::1]:8080", "attacker.example:8080"])
      expect(hosts.allows(host, PORT)).toBe(false);
  });

  test("names may hold underscores (a compose service's host name), as a listen address and as a Host header", () => {
    const hosts = new HostAllowlist({ listenHost: "fitb_replica_1" });
    expect(hosts.allows("fitb_replica_1:9464", 9464)).toBe(true);
    expect(hosts.allows("FITB_Replica_1:9464", 9464)).toBe(true);
    expect(hosts.allows("fitb_replica_2:9464", 9464)).toBe(false);
  });
});
