/**
 * Where a command finds the cluster file and its key when no flag names them, so that
 * a probe host's scripts can say `fitb pub net.links 'eth0 down'`:
 *
 * - the cluster file: `--config FILE`, else `$FITB_CONFIG`, else the first that exists
 *   of /etc/fitb/cluster.toml (an installed host) and ./cluster.toml (a working copy);
 * - the key: `--key FILE`, else `$FITB_KEY`.
 */
import { existsSync } from "node:fs";
import { UsageError } from "./errors.ts";

export const CONFIG_ENV = "FITB_CONFIG";
export const KEY_ENV = "FITB_KEY";
export const DEFAULT_CONFIG_PATHS: readonly string[] = ["/etc/fitb/cluster.toml", "./cluster.toml"];

/** What the defaults read: the environment and whether a file exists (injectable for tests). */
export interface DefaultsSource {
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly exists: (path: string) => boolean;
}

const PROCESS_SOURCE: DefaultsSource = { env: process.env, exists: existsSync };

/** The cluster file to use; a UsageError saying what was tried when there is none. */
export function resolveConfigPath(flag: string | undefined, source: DefaultsSource = PROCESS_SOURCE): string {
  if (flag !== undefined) return flag;
  const fromEnv = source.env[CONFIG_ENV];
  if (fromEnv !== undefined && fromEnv !== "") return fromEnv;
  const found = DEFAULT_CONFIG_PATHS.find((path) => source.exists(path));
  if (found !== undefined) return found;
  throw new UsageError(`no cluster file: pass --config FILE, set ${CONFIG_ENV}, or put it at ${DEFAULT_CONFIG_PATHS.join(" or ")}`);
}

/** The key file to use; a UsageError when neither --key nor $FITB_KEY names one. */
export function resolveKeyPath(flag: string | undefined, source: DefaultsSource = PROCESS_SOURCE): string {
  if (flag !== undefined) return flag;
  const fromEnv = source.env[KEY_ENV];
  if (fromEnv !== undefined && fromEnv !== "") return fromEnv;
  throw new UsageError(`no key file: pass --key FILE or set ${KEY_ENV}`);
}

export const CONFIG_DEFAULT_TEXT = `default: $${CONFIG_ENV}, else ${DEFAULT_CONFIG_PATHS.join(", else ")}`;
export const KEY_DEFAULT_TEXT = `default: $${KEY_ENV}`;
