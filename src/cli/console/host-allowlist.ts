/**
 * Which Host headers an HTTP surface of fitb answers (the console, and `--metrics` of the
 * replica and the relay): the defence against DNS rebinding. A web page at a name its
 * author controls can make that name resolve to this host, and the browser then lets the
 * page read what this server answers, as if it were the page's own origin. The request
 * still carries the attacker's name in its Host header, so a server that answers only to
 * names that cannot be rebound is out of reach:
 *
 * - its listen address itself (an IP literal or the name it was told to listen on);
 * - on loopback, the loopback names (`localhost`, `127.0.0.1`, `[::1]`), which browsers
 *   resolve to this host without asking DNS;
 * - on a wildcard address (`0.0.0.0`, `::`), the literal addresses of this host's
 *   interfaces, read at each request (DHCP may change them) and loopback;
 * - names the operator gave (`fitb console --host-name NAME[:PORT]`), trusted as theirs.
 *
 * The port must be the one listened on too: a page on another port of this host is
 * another origin, and an Origin check built on this list must refuse it. A name the
 * operator gave with a port is allowed at that port instead: the browser's port when it
 * reaches the console through an SSH tunnel to another local port or a reverse proxy.
 */
import { networkInterfaces } from "node:os";
import { isLoopbackHost } from "../../relay/listen.ts";

/** HTTP's default port, meant by a Host header without one. */
const HTTP_DEFAULT_PORT = 80;
/**
 * A Host header's shape, checked before the URL parser reads it: a name or IPv4 literal,
 * or a bracketed IPv6 literal, and an optional port. Anything else (user info, a path, a
 * zone id) is refused rather than parsed. Names may hold `_`, as container names do
 * (`fitb_replica_1`), which the URL parser keeps as they are.
 */
const HOST_HEADER = /^(?:\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::[0-9]{1,5})?$/i;
const PORT_MAX = 65_535;
const LOOPBACK_NAMES: readonly string[] = ["localhost", "127.0.0.1", "[::1]"];
const WILDCARD_ADDRESSES: ReadonlySet<string> = new Set(["0.0.0.0", "[::]"]);

export interface HostAllowlistOptions {
  /** The address listened on, as given to Bun.serve: an IP literal (IPv6 unbracketed), a name, or a wildcard. */
  readonly listenHost: string;
  /** Names the operator says reach this server (`--host-name`), each `NAME[:PORT]` (IPv6 with a port in brackets). */
  readonly names?: readonly string[];
  /** This host's interface addresses; tests pass their own. */
  readonly interfaceAddresses?: () => readonly string[];
}

export class HostAllowlist {
  /** Hosts allowed at the port listened on. */
  private readonly fixed = new Set<string>();
  /** Names the operator gave with a port, as `host port`: allowed at that port only. */
  private readonly namedWithPort = new Set<string>();
  private readonly wildcard: boolean;
  private readonly interfaceAddresses: () => readonly string[];

  constructor(options: HostAllowlistOptions) {
    const listen = canonicalHost(options.listenHost);
    if (listen === null) throw new Error(`cannot check Host headers for listen address ${JSON.stringify(options.listenHost)}`);
    this.wildcard = WILDCARD_ADDRESSES.has(listen);
    if (!this.wildcard) this.fixed.add(listen);
    if (this.wildcard || isLoopbackHost(options.listenHost)) for (const name of LOOPBACK_NAMES) this.fixed.add(name);
    for (const name of options.names ?? []) {
      const parsed = parseHostName(name);
      if (parsed === null) throw new Error(`not a host name or IP address, with an optional port: ${JSON.stringify(name)}`);
      if (parsed.port === null) this.fixed.add(parsed.host);
      else this.namedWithPort.add(`${parsed.host} ${parsed.port}`);
    }
    this.interfaceAddresses = options.interfaceAddresses ?? localInterfaceAddresses;
  }

  /** Whether a request with this Host header, to a server on `port`, is addressed to this server. */
  allows(hostHeader: string | null, port: number): boolean {
    if (hostHeader === null || !HOST_HEADER.test(hostHeader)) return false;
    let url: URL;
    try {
      url = new URL(`http://${hostHeader}/`);
    } catch {
      return false;
    }
    const headerPort = url.port === "" ? HTTP_DEFAULT_PORT : Number(url.port);
    if (this.namedWithPort.has(`${url.hostname} ${headerPort}`)) return true;
    if (headerPort !== port) return false;
    if (this.fixed.has(url.hostname)) return true;
    return this.wildcard && this.interfaceAddresses().some((address) => canonicalHost(address) === url.hostname);
  }
}

/** Whether `text` can be given as a `--host-name`: a DNS name or an IP literal, with an optional port (parseHostName). */
export function isHostName(text: string): boolean {
  return parseHostName(text) !== null;
}

/**
 * A `--host-name`: `NAME`, `NAME:PORT`, an IPv6 literal alone (`::1`) or bracketed with a
 * port (`[::1]:8080`); the host in its canonical form (canonicalHost) and the port, or
 * null without one. Null when it is none of these.
 */
function parseHostName(text: string): { readonly host: string; readonly port: number | null } | null {
  const ipv6Alone = !text.startsWith("[") && text.indexOf(":") !== text.lastIndexOf(":");
  if (ipv6Alone) {
    const host = canonicalHost(text);
    return host === null ? null : { host, port: null };
  }
  const match = /^(.*?)(?::([0-9]{1,5}))?$/.exec(text);
  const port = match?.[2] === undefined ? null : Number(match[2]);
  if (match === null || (port !== null && !(port >= 1 && port <= PORT_MAX))) return null;
  const host = canonicalHost(match[1] as string);
  return host === null ? null : { host, port };
}

/**
 * The form the URL parser gives a host (lower case, IPv4 in dotted decimal, IPv6
 * compressed in brackets), so that a Host header and an address compare equal however
 * each was written; null when it is neither a name nor an IP literal.
 */
function canonicalHost(host: string): string | null {
  const bracketed = host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
  if (!HOST_HEADER.test(bracketed) || bracketed.includes(":", bracketed.indexOf("]"))) return null;
  try {
    return new URL(`http://${bracketed}/`).hostname;
  } catch {
    return null;
  }
}

function localInterfaceAddresses(): string[] {
  return Object.values(networkInterfaces()).flatMap((entries) => (entries ?? []).map((entry) => entry.address));
}
