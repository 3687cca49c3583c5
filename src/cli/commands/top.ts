/**
 * `fitb top --config C --key K [--interval SECONDS] [--count N]`: a refreshing view of the
 * cluster: every replica (up or why not, view, leader, how far behind), what is wrong,
 * each channel's rates and the latency of the last interval. On a terminal it redraws
 * the screen; otherwise (a pipe, a log) it prints one plain block per refresh.
 */
import type { ParsedArgs } from "../args.ts";
import type { Command, CommandIo } from "../command.ts";
import { EXIT_OK, UsageError } from "../errors.ts";
import { CONFIG_FLAG, keyFlag, readClientFlags, TIMEOUT_FLAGS } from "./pub.ts";
import { stopSignal } from "./relay.ts";
import { openStatusClient, readStatusReport } from "./status-client.ts";
import { renderTop, type TopSample } from "./top-view.ts";

/** Refresh interval bounds, in tenths of a second (0.1 s .. 1 h). */
const INTERVAL_TENTHS_MIN = 1;
const INTERVAL_TENTHS_MAX = 36_000;
/** ANSI: cursor home, clear the screen. */
const CLEAR_SCREEN = "\x1b[H\x1b[2J";

export const topCommand: Command = {
  path: ["top"],
  summary: "A refreshing view of replicas, leader, view, lag, channel rates and latency",
  description: [
    "Asks every replica for its status every interval and shows the replicas (up or why",
    "not, view, leader, decided seq and how far behind), what is wrong (as admin status),",
    "each channel's published, stored, delivered and shed events per second (the",
    "(f+1)-th highest the replicas count, so f faulty replicas cannot inflate it) and the",
    "publish-ack, ordering, storage-commit and delivery latency of the last interval.",
    "The replicas are the group's now, read first, not only the cluster file's.",
    "On a terminal the screen is redrawn; when",
    "standard output is not a terminal, each refresh is printed as a plain block.",
    "Any key of the cluster can read status; ctrl-C stops.",
  ],
  flags: [
    CONFIG_FLAG,
    keyFlag("A key of the cluster (any client key can read status)"),
    { name: "interval", kind: "string", valueName: "SECONDS", defaultValue: "2", description: "Time between refreshes (0.1..3600)" },
    { name: "count", kind: "string", valueName: "N", description: "Stop after N refreshes (default: until ctrl-C)" },
    ...TIMEOUT_FLAGS,
  ],
  positionals: [],
  examples: [
    "fitb top --config cluster.toml --key client.key",
    "fitb top --config cluster.toml --key client.key --count 1 | mail -s fitb ops",
  ],
  run: runTop,
};

async function runTop(args: ParsedArgs, io: CommandIo): Promise<number> {
  const flags = readClientFlags(args);
  const intervalMs = readIntervalMs(args.string("interval") ?? "2");
  const count = args.integer("count", 1, 1_000_000_000) ?? Number.POSITIVE_INFINITY;
  const terminal = process.stdout.isTTY === true;
  const client = openStatusClient(flags, io, "top");
  const stopped = stopSignal();
  let stop = false;
  void stopped.promise.then(() => {
    stop = true;
  });
  let previous: TopSample | null = null;
  try {
    for (let shown = 0; shown < count && !stop; shown++) {
      if (shown > 0) await Promise.race([Bun.sleep(intervalMs), stopped.promise]);
      if (stop) break;
      const report = await readStatusReport(client, flags.connectTimeoutMs);
      // The status answers behind the report: rates and latency come from their counters.
      const current: TopSample = { atMs: Date.now(), status: report.status };
      const lines = renderTop(report, previous, current, new Date().toISOString().slice(11, 19));
      if (terminal) io.out(CLEAR_SCREEN + lines.join("\n"));
      else {
        if (shown > 0) io.out("");
        for (const line of lines) io.out(line);
      }
      previous = current;
    }
  } finally {
    stopped.dispose();
    client.close();
  }
  return EXIT_OK;
}

function readIntervalMs(text: string): number {
  const seconds = Number(text);
  const tenths = Math.round(seconds * 10);
  if (!/^\d+(\.\d+)?$/.test(text) || tenths < INTERVAL_TENTHS_MIN || tenths > INTERVAL_TENTHS_MAX) {
    throw new UsageError(`--interval: expected seconds between 0.1 and 3600, got ${JSON.stringify(text)}`);
  }
  return tenths * 100;
}
