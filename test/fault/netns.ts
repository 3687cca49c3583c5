/**
 * Hosts in network namespaces for fault tests: n namespaces, each with one interface
 * (eth0) on a bridge that lives in a namespace of its own, and a veth from the test's own
 * namespace onto the same bridge so the test process (clients, admin) reaches every host
 * directly. Addresses are a private /24 chosen at random per network, so parallel runs do
 * not collide. With several networks (multi-homed hosts) each has its own bridge, /24 and
 * test leg, and host interface ethK is on network K.
 *
 * Faults, without netem or iptables (this kernel has neither): a host cut off (its link
 * down), a one-way cut (a blackhole route on the sender for the receiver's address), a
 * split into two sides (blackhole routes both ways), a bandwidth limit (the tbf qdisc), and
 * a whole network cut (its bridge down: no frame crosses it, nothing is reset).
 *
 * Everything is torn down by `destroy()`, on exit and on SIGINT/SIGTERM; and namespaces
 * left behind by a test process that died (named `fitb-<pid>-...`, for a pid that is no
 * longer running) are removed when the next network is created.
 */
import { spawnSync } from "node:child_process";

const NAME_PREFIX = "fitb-";

/** Why namespaces cannot be used here, or null if they can. */
export function netnsUnavailable(): string | null {
  if (process.platform !== "linux") return "network namespaces need Linux";
  if (process.getuid?.() !== 0) return "network namespaces need root (run as root to include these fault tests)";
  const ip = spawnSync("ip", ["-V"], { encoding: "utf8" });
  if (ip.status !== 0) return "the `ip` command (Debian package iproute2) is not installed";
  return null;
}

function run(args: readonly string[], allowFailure = false): string {
  const r = spawnSync(args[0] as string, args.slice(1), { encoding: "utf8" });
  if (r.status !== 0 && !allowFailure) throw new Error(`${args.join(" ")} failed: ${(r.stderr || r.stdout).trim()}`);
  return r.stdout;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Removes namespaces a dead test process left behind. */
function sweepStale(): void {
  for (const line of run(["ip", "netns", "list"], true).split("\n")) {
    const name = line.split(" ")[0] ?? "";
    if (!name.startsWith(NAME_PREFIX)) continue;
    const pid = Number(name.slice(NAME_PREFIX.length).split("-")[0]);
    if (Number.isInteger(pid) && pid > 0 && !pidAlive(pid)) run(["ip", "netns", "delete", name], true);
  }
}

export interface NetHost {
  readonly id: number;
  /** The namespace the host's processes run in. */
  readonly ns: string;
  /** Its address on network 0. */
  readonly address: string;
  /** Its address on each network, network 0 first. */
  readonly addresses: readonly string[];
}

const live = new Set<TestNetwork>();
let hooked = false;

function hookExit(): void {
  if (hooked) return;
  hooked = true;
  const cleanup = (): void => {
    for (const net of [...live]) net.destroy();
  };
  process.on("exit", cleanup);
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.on(signal, () => {
      cleanup();
      process.exit(130);
    });
  }
}

export class TestNetwork {
  readonly hosts: NetHost[] = [];
  /** The test process's own address on the bridge of network 0. */
  readonly localAddress: string;
  private readonly hubs: string[] = [];
  private readonly tag: string;
  private readonly subnets: string[] = [];
  private readonly limited = new Set<number>();
  private destroyed = false;

  private constructor(n: number, networks: number) {
    this.tag = Math.random().toString(16).slice(2, 8);
    const a = 200 + Math.floor(Math.random() * 50);
    const b = Math.floor(Math.random() * (256 - networks));
    for (let k = 0; k < networks; k++) {
      this.subnets.push(`10.${a}.${b + k}`);
      this.hubs.push(`${NAME_PREFIX}${process.pid}-${this.tag}-hub${k === 0 ? "" : k}`);
    }
    this.localAddress = `${this.subnets[0]}.254`;
    for (let id = 0; id < n; id++) {
      const addresses = this.subnets.map((subnet) => `${subnet}.${id + 1}`);
      this.hosts.push({ id, ns: `${NAME_PREFIX}${process.pid}-${this.tag}-h${id}`, address: addresses[0] as string, addresses });
    }
  }

  /** Creates n hosts, each on `networks` bridges (default one). Throws with the failing command if the kernel refuses. */
  static create(n: number, networks = 1): TestNetwork {
    sweepStale();
    hookExit();
    const net = new TestNetwork(n, networks);
    live.add(net);
    try {
      net.build();
    } catch (error) {
      net.destroy();
      throw error;
    }
    return net;
  }

  private build(): void {
    for (const host of this.hosts) {
      run(["ip", "netns", "add", host.ns]);
      run(["ip", "-n", host.ns, "link", "set", "lo", "up"]);
    }
    this.hubs.forEach((hub, k) => {
      run(["ip", "netns", "add", hub]);
      run(["ip", "-n", hub, "link", "set", "lo", "up"]);
      run(["ip", "-n", hub, "link", "add", "br0", "type", "bridge"]);
      run(["ip", "-n", hub, "link", "set", "br0", "up"]);
      // Network 0 keeps the names of a single-network run.
      const net = k === 0 ? "" : `n${k}`;
      for (const host of this.hosts) {
        const inner = `fv${this.tag}${net}${host.id}`;
        const outer = `fw${this.tag}${net}${host.id}`;
        const eth = `eth${k}`;
        run(["ip", "link", "add", inner, "type", "veth", "peer", "name", outer]);
        run(["ip", "link", "set", inner, "netns", host.ns]);
        run(["ip", "link", "set", outer, "netns", hub]);
        run(["ip", "-n", host.ns, "link", "set", inner, "name", eth]);
        run(["ip", "-n", host.ns, "addr", "add", `${host.addresses[k]}/24`, "dev", eth]);
        run(["ip", "-n", host.ns, "link", "set", eth, "up"]);
        run(["ip", "-n", hub, "link", "set", outer, "master", "br0"]);
        run(["ip", "-n", hub, "link", "set", outer, "up"]);
      }
      // The test's own leg: deleting the hub namespace deletes this pair too.
      const local = `fr${this.tag}${net}`;
      const hubSide = `fs${this.tag}${net}`;
      run(["ip", "link", "add", local, "type", "veth", "peer", "name", hubSide]);
      run(["ip", "link", "set", hubSide, "netns", hub]);
      run(["ip", "-n", hub, "link", "set", hubSide, "master", "br0"]);
      run(["ip", "-n", hub, "link", "set", hubSide, "up"]);
      run(["ip", "addr", "add", `${this.subnets[k]}.254/24`, "dev", local]);
      run(["ip", "link", "set", local, "up"]);
    });
  }

  /** How many networks each host is on. */
  get networks(): number {
    return this.hubs.length;
  }

  private hub(k: number): string {
    const hub = this.hubs[k];
    if (hub === undefined) throw new Error(`no network ${k}`);
    return hub;
  }

  /**
   * Network `k` goes dark: every port of its bridge goes down, so no frame crosses it in
   * either direction and nothing is reset (connections on it just go silent). Hosts keep
   * their addresses on it.
   */
  cutNetwork(k: number): void {
    for (const port of this.bridgePorts(k)) run(["ip", "-n", this.hub(k), "link", "set", port, "down"]);
  }

  restoreNetwork(k: number): void {
    for (const port of this.bridgePorts(k)) run(["ip", "-n", this.hub(k), "link", "set", port, "up"]);
  }

  private bridgePorts(k: number): string[] {
    const net = k === 0 ? "" : `n${k}`;
    return [...this.hosts.map((host) => `fw${this.tag}${net}${host.id}`), `fs${this.tag}${net}`];
  }

  host(id: number): NetHost {
    const host = this.hosts[id];
    if (host === undefined) throw new Error(`no host ${id}`);
    return host;
  }

  /** The command prefix that runs a program on host `id`. */
  exec(id: number): string[] {
    return ["ip", "netns", "exec", this.host(id).ns];
  }

  /** Host `id`'s links go down: nothing reaches it, it reaches nothing. */
  isolate(id: number): void {
    for (let k = 0; k < this.networks; k++) run(["ip", "-n", this.host(id).ns, "link", "set", `eth${k}`, "down"]);
  }

  reconnect(id: number): void {
    for (let k = 0; k < this.networks; k++) run(["ip", "-n", this.host(id).ns, "link", "set", `eth${k}`, "up"]);
  }

  /** Packets from `from` to `to` are dropped (a blackhole route on `from`). */
  cut(from: number, to: number): void {
    run(["ip", "-n", this.host(from).ns, "route", "replace", "blackhole", `${this.host(to).address}/32`]);
  }

  uncut(from: number, to: number): void {
    run(["ip", "-n", this.host(from).ns, "route", "del", "blackhole", `${this.host(to).address}/32`], true);
  }

  /** No packet crosses between the two sides, either way. */
  split(sideA: readonly number[], sideB: readonly number[]): void {
    for (const a of sideA) {
      for (const b of sideB) {
        this.cut(a, b);
        this.cut(b, a);
      }
    }
  }

  /** Every cut and split is undone. */
  heal(): void {
    for (const from of this.hosts) for (const to of this.hosts) if (from.id !== to.id) this.uncut(from.id, to.id);
  }

  /** Host `id` sends at most `rate` (a tc rate, e.g. "1mbit"). */
  limit(id: number, rate: string): void {
    run([
      "tc",
      "-n",
      this.host(id).ns,
      "qdisc",
      "replace",
      "dev",
      "eth0",
      "root",
      "tbf",
      "rate",
      rate,
      "burst",
      "32kb",
      "latency",
      "400ms",
    ]);
    this.limited.add(id);
  }

  unlimit(id: number): void {
    run(["tc", "-n", this.host(id).ns, "qdisc", "del", "dev", "eth0", "root"], true);
    this.limited.delete(id);
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    live.delete(this);
    for (const host of this.hosts) run(["ip", "netns", "delete", host.ns], true);
    for (const hub of this.hubs) run(["ip", "netns", "delete", hub], true);
  }
}
