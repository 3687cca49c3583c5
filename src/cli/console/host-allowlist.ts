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
 * - names the operator gave (`fitb console --host-name NAME`), trusted as theirs.
 *
 * The port must be the one listened on too: a page on another port of this host is
 * another origin, and an Origin check built on this list must refuse it.
 */
import { networkInterfaces } from "node:os";
import { isLoopbackHost } from "../../relay/listen.ts";

/** HTTP's default port, meant by a Host header without one. */
const HTTP_DEFAULT_PORT = 80;
/**
 * A Host header's shape, checked before the URL parser reads it: a name or IPv4 literal,
 * or a bracketed IPv6 literal, and an optional port. Anything else (user info, a path, a
 * zone id) is refused rather than parsed.
 */
const HOST_HEADER = /^(?:\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::[0-9]{1,5})?$/i;
const LOOPBACK_NAMES: readonly string[] = ["localhost", "127.0.0.1", "[::1]"];
const WILDCARD_ADDRESSES: ReadonlySet<string> = new Set(["0.0.0.0", "[::]"]);

export interface HostAllowlistOptions {
  /** The address listened on, as given to Bun.serve: an IP literal (IPv6 unbracketed), a name, or a wildcard. */
  readonly listenHost: string;
  /** Names the operator says reach this server (`--host-name`). */
  readonly names?: readonly string[];
  /** This host's interface addresses; tests pass their own. */
  readonly interfaceAddresses?: () => readonly string[];
}

export class HostAllowlist {
  private readonly fixed = new Set<string>();
  private readonly wildcard: boolean;
  private readonly interfaceAddresses: () => readonly string[];

  constructor(options: HostAllowlistOptions) {
    const listen = canonicalHost(options.listenHost);
    if (listen === null) throw new Error(`cannot check Host headers for listen address ${JSON.stringify(options.listenHost)}`);
    this.wildcard = WILDCARD_ADDRESSES.has(listen);
    if (!this.wildcard) this.fixed.add(listen);
    if (this.wildcard || isLoopbackHost(options.listenHost)) for (const name of LOOPBACK_NAMES) this.fixed.add(name);
    for (const name of options.names ?? []) {
      const canonical = canonicalHost(name);
      if (canonical === null) throw new Error(`not a host name or IP address: ${JSON.stringify(name)}`);
      this.fixed.add(canonical);
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
    if ((url.port === "" ? HTTP_DEFAULT_PORT : Number(url.port)) !== port) return false;
    if (this.fixed.has(url.hostname)) return true;
    return this.wildcard && this.interfaceAddresses().some((address) => canonicalHost(address) === url.hostname);
  }
}

/** Whether `text` can be given as a `--host-name`: a DNS name or an IP literal. */
export function isHostName(text: string): boolean {
  return canonicalHost(text) !== null;
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
