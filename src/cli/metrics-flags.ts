/**
 * `--metrics-host-name`, shared by the replica, the relay and their systemd units. Apart
 * from metrics-server.ts so that the commands' flag tables can name it without an import
 * cycle through the command registry.
 */
import type { FlagSpec } from "./args.ts";
import { isHostName } from "./console/host-allowlist.ts";
import { UsageError } from "./errors.ts";

/** `--metrics-host-name`, on the replica, the relay and their units. */
export const METRICS_HOST_NAME_FLAG: FlagSpec = {
  name: "metrics-host-name",
  kind: "string",
  valueName: "NAME[:PORT]",
  repeated: true,
  description:
    "A name scrapers use to reach --metrics (their Host header), besides its addresses: a DNS name of a 0.0.0.0 listen, or a proxy's; with a port, at that port instead (IPv6: [ADDR]:PORT)",
};

/** Each `--metrics-host-name` a host name with an optional port, and none without `--metrics`. */
export function checkMetricsHostNames(listen: string | undefined, hostNames: readonly string[]): void {
  const badName = hostNames.find((name) => !isHostName(name));
  if (badName !== undefined)
    throw new UsageError(`--metrics-host-name: ${JSON.stringify(badName)} is not a host name or IP address, with an optional :PORT`);
  if (listen === undefined && hostNames.length > 0) throw new UsageError("--metrics-host-name needs --metrics HOST:PORT");
}
