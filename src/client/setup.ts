/**
 * Loading what a client process needs from disk: the cluster file and the secret key.
 * Shared by the commands and the relay so that they report the same errors in the same
 * words (the loaders' errors name the file and the field).
 */
import { requireClusterConfig, type ClusterConfig } from "../config/cluster.ts";
import { loadSigningKeyFile, type SigningKey } from "../crypto/keys.ts";

export interface ClientSetup {
  readonly config: ClusterConfig;
  readonly key: SigningKey;
  /** Problems worth telling the operator that do not stop the client (key file mode, ...). */
  readonly warnings: readonly string[];
}

/** Throws ClusterConfigError or KeyFileError, whose messages are written for the operator. */
export function loadClientSetup(configPath: string, keyPath: string): ClientSetup {
  const config = requireClusterConfig(configPath);
  const loaded = loadSigningKeyFile(keyPath);
  return { config, key: loaded.key, warnings: loaded.warnings };
}
