/**
 * `fitb console --config C --key K [--listen 127.0.0.1:7500] [--allow-remote] [--host-name
 * NAME[:PORT] ...]`: the web console (src/cli/console/): live charts of event rates and latency,
 * the replicas and what is wrong, each channel's rates, a live tail of a channel.
 * Read-only unless the key is an admin key (then channels can be created and destroyed
 * from the page). Listens on loopback unless --allow-remote. It prints a URL with a
 * one-time login secret: reaching the port is not enough to use the console's key.
 */
import { bytesEqual } from "../../crypto/encoding.ts";
import { loadClientSetup } from "../../client/setup.ts";
import { isLoopbackHost, parseListenAddress } from "../../relay/listen.ts";
import { listenFailure } from "../../relay/server.ts";
import type { ParsedArgs } from "../args.ts";
import type { Command, CommandIo } from "../command.ts";
import { isHostName } from "../console/host-allowlist.ts";
import { ConsoleServer } from "../console/server.ts";
import { CommandError, EXIT_OK, UsageError } from "../errors.ts";
import { VERSION } from "../run.ts";
import { CONFIG_FLAG, keyFlag, readClientFlags, TIMEOUT_FLAGS } from "./pub.ts";
import { stopSignal } from "./relay.ts";
import { openStatusClient } from "./status-client.ts";

export const DEFAULT_CONSOLE_LISTEN = "127.0.0.1:7500";

export const consoleCommand: Command = {
  path: ["console"],
  summary: "A web console: live charts, replicas, channels, a live tail (read-only unless an admin key)",
  description: [
    "Serves a web page with live charts of event rates and latency, every replica's state",
    "(up or why not, view, leader, how far behind) and what is wrong, each channel's rates,",
    "and a live tail of a channel with each event's publisher and how many replicas",
    "vouched for it. Everything it shows is read from the replicas with KEY; with an admin",
    "key the page can also create and destroy channels. It listens on loopback only unless",
    "--allow-remote, and answers only requests addressed to it (no DNS rebinding): its",
    "address, this host's interface addresses when it listens on 0.0.0.0 or ::, and the",
    "names given with --host-name (a cloud host's public IP is not an interface address:",
    "give it there). A name with a port is taken at that port: the browser's, through an",
    "SSH tunnel to another local port (--host-name localhost:8080) or a reverse proxy.",
    "",
    "It prints a URL with a one-time login secret (http://127.0.0.1:7500/?login=...):",
    "opening it logs that browser in (a session cookie); without it the console serves",
    "nothing but a page saying so. Another browser needs a restart, which prints a new URL.",
  ],
  flags: [
    CONFIG_FLAG,
    keyFlag("A key of the cluster: any client key (read-only) or an admin key"),
    {
      name: "listen",
      kind: "string",
      valueName: "HOST:PORT",
      defaultValue: DEFAULT_CONSOLE_LISTEN,
      description: "Address to serve the console on",
    },
    { name: "allow-remote", kind: "boolean", description: "Allow a --listen address other than loopback" },
    {
      name: "host-name",
      kind: "string",
      valueName: "NAME[:PORT]",
      repeated: true,
      description:
        "A name the browser uses to reach the console (its Host header), besides its addresses; with a port, at that port instead of the console's (IPv6: [ADDR]:PORT)",
    },
    ...TIMEOUT_FLAGS,
  ],
  positionals: [],
  examples: [
    "fitb console --config cluster.toml --key client.key",
    "fitb console --config cluster.toml --key admin.key --listen 127.0.0.1:7501",
    "fitb console --config cluster.toml --key client.key --listen 0.0.0.0:7500 --allow-remote --host-name ops-1.example.net",
  ],
  run: runConsole,
};

async function runConsole(args: ParsedArgs, io: CommandIo): Promise<number> {
  const flags = readClientFlags(args);
  const listenText = args.requiredString("listen");
  const parsed = parseListenAddress(listenText);
  if (!parsed.ok) throw new UsageError(`--listen: ${parsed.reason}`);
  const listen = parsed.address;
  if (!isLoopbackHost(listen.host) && !args.boolean("allow-remote")) {
    throw new UsageError(
      `--listen ${listenText} is not a loopback address; the console shows the cluster (and with an admin key changes it), so listening beyond this host needs --allow-remote`,
    );
  }
  const hostNames = args.strings("host-name");
  const badName = hostNames.find((name) => !isHostName(name));
  if (badName !== undefined)
    throw new UsageError(`--host-name: ${JSON.stringify(badName)} is not a host name or IP address, with an optional :PORT`);
  const setup = loadClientSetup(flags.configPath, flags.keyPath);
  const admin = setup.config.adminKeys.some((key) => bytesEqual(key, setup.key.publicKey));
  const client = openStatusClient(flags, io, "console");
  let server: ConsoleServer;
  try {
    server = ConsoleServer.start({
      client,
      admin,
      hostname: listen.host,
      port: listen.port,
      hostNames,
      version: VERSION,
      connectMs: flags.connectTimeoutMs,
    });
  } catch (error) {
    client.close();
    throw new CommandError(listenFailure(listenText, error, "console"));
  }
  const stopped = stopSignal();
  // The URL holds the login secret: whoever reads this output can log in once (login.ts).
  io.out(`fitb console: ${server.loginUrl} (${admin ? "admin" : "read-only"}, cluster ${setup.config.name}; the URL logs one browser in)`);
  await stopped.promise;
  stopped.dispose();
  server.stop();
  client.close();
  return EXIT_OK;
}
