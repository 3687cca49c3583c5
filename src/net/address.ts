/**
 * Remote addresses grouped as one host usually holds them: an IPv6 /64 (SLAAC, privacy
 * addresses, a container host), and an IPv4-mapped IPv6 address as its IPv4 address. The
 * metrics port counts connections per group; the replica's client server keeps exact
 * addresses for its per-address bounds (cloud subnets put many hosts in one /64) and uses
 * the group only where one host must not count many times (its reserve of handshakes for
 * quiet addresses).
 */
/** What a per-address bound counts `remote` as: an IPv4 address, or an IPv6 address's /64. */
export function addressGroup(remote: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(remote);
  if (mapped !== null) return mapped[1] as string;
  if (!remote.includes(":")) return remote;
  const groups = ipv6Groups(remote);
  return groups === null ? remote : `${groups.slice(0, 4).join(":")}::/64`;
}

/** The eight 16-bit groups of a textual IPv6 address (zone and embedded IPv4 allowed), lowercase without leading zeros; null if it is not one. */
function ipv6Groups(text: string): string[] | null {
  const address = text.split("%")[0] as string;
  const [head, tail, ...more] = address.split("::");
  if (more.length > 0 || head === undefined) return null;
  const parts = (part: string | undefined): string[] | null => {
    if (part === undefined || part === "") return [];
    const out: string[] = [];
    for (const piece of part.split(":")) {
      const v4 = /^(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(piece);
      if (v4 !== null) {
        const [a, b, c, d] = v4.slice(1).map(Number) as [number, number, number, number];
        out.push(((a << 8) | b).toString(16), ((c << 8) | d).toString(16));
      } else if (/^[0-9a-f]{1,4}$/i.test(piece)) out.push(Number.parseInt(piece, 16).toString(16));
      else return null;
    }
    return out;
  };
  const left = parts(head);
  const right = parts(tail);
  if (left === null || right === null) return null;
  if (tail === undefined) return left.length === 8 ? left : null;
  const missing = 8 - left.length - right.length;
  return missing < 1 ? null : [...left, ...new Array<string>(missing).fill("0"), ...right];
}
