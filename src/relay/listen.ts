/**
 * The relay's listen address: `HOST:PORT` or `[IPV6]:PORT`, and whether it is loopback.
 * The relay signs with its key for whoever connects, so anything but loopback must be
 * asked for explicitly (`--allow-remote`).
 */
import { isIP } from "node:net";

export const DEFAULT_RELAY_HOST = "127.0.0.1";
export const DEFAULT_RELAY_PORT = 7400;
export const DEFAULT_RELAY_LISTEN = `${DEFAULT_RELAY_HOST}:${DEFAULT_RELAY_PORT}`;
/**
 * `--listen none`: no TCP port, the Unix socket only. Every local account of the host can
 * connect to a loopback port and publish with the relay's key; only the relay's own user
 * can connect to the socket (mode 0600).
 */
export const RELAY_LISTEN_NONE = "none";
const PORT_MIN = 1;
const PORT_MAX = 65_535;
const IPV4_LOOPBACK_PREFIX = "127.";
const IPV4_MAPPED_LOOPBACK_PREFIX = "::ffff:127.";
const LOOPBACK_NAMES: ReadonlySet<string> = new Set(["localhost", "::1", "0:0:0:0:0:0:0:1"]);
const HOST_PORT = /^(?:\[([^\]]+)\]|([^:[\]]+)):([0-9]{1,5})$/;

export interface ListenAddress {
  readonly host: string;
  readonly port: number;
}

export type ListenParse = { readonly ok: true; readonly address: ListenAddress } | { readonly ok: false; readonly reason: string };

export function parseListenAddress(text: string): ListenParse {
  const match = HOST_PORT.exec(text);
  if (match === null) return { ok: false, reason: `expected HOST:PORT or [IPV6]:PORT, got ${JSON.stringify(text)}` };
  const host = (match[1] ?? match[2]) as string;
  const port = Number(match[3]);
  if (match[1] !== undefined && isIP(host) !== 6)
    return { ok: false, reason: `${JSON.stringify(host)} in brackets is not an IPv6 address` };
  if (port < PORT_MIN || port > PORT_MAX) return { ok: false, reason: `port must be in ${PORT_MIN}..${PORT_MAX}, got ${port}` };
  return { ok: true, address: { host, port } };
}

/** Loopback: 127.0.0.0/8, ::1 (and 127.x mapped into IPv6), or the name localhost. */
export function isLoopbackHost(host: string): boolean {
  const lower = host.toLowerCase();
  if (LOOPBACK_NAMES.has(lower)) return true;
  if (isIP(lower) === 4) return lower.startsWith(IPV4_LOOPBACK_PREFIX);
  return isIP(lower) === 6 && lower.startsWith(IPV4_MAPPED_LOOPBACK_PREFIX);
}

/**
 * Why `--listen text` (a valid address) is refused without --allow-remote, or null when
 * it is loopback. One text for `fitb relay` and `fitb service unit relay`, which would
 * otherwise write a unit whose relay refuses to start.
 */
export function remoteListenRefusal(text: string, address: ListenAddress): string | null {
  if (isLoopbackHost(address.host)) return null;
  return (
    `--listen ${text} is not a loopback address; the relay signs with its key for whoever connects, ` +
    "so listening beyond this host needs --allow-remote (and a firewall that admits only your probes)"
  );
}
