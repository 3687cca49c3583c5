/**
 * `fitb pub --config C --key K TAG [MESSAGE]`: publishes MESSAGE, or one event per line
 * of standard input until EOF (batched into signed requests by the client library's
 * Publisher). Prints `+OK TAG SEQ` per event once the channel's CLASS quorum
 * acknowledged it, or `-ERR CODE reason`, in input order; exits 1 if any failed.
 *
 * This file also holds what every client command shares: the common flags, opening a
 * client from them, and turning client errors into one-line command errors.
 */
import { FitbClient } from "../../client/client.ts";
import { ClientError, describeError } from "../../client/errors.ts";
import { InOrder, type Settled } from "../../client/in-order.ts";
import { DEFAULT_TIMEOUTS } from "../../client/options.ts";
import { Publisher, type EventAck } from "../../client/publisher.ts";
import { tagProblem } from "../../client/request.ts";
import type { CrashNoneTargets } from "../../client/request-tracker.ts";
import type { SubscriptionSources } from "../../client/subscription.ts";
import { formatPublicKey } from "../../crypto/keys.ts";
import { loadClientSetup, type ClientSetup } from "../../client/setup.ts";
import type { FlagSpec, ParsedArgs } from "../args.ts";
import type { Command, CommandIo } from "../command.ts";
import { CONFIG_DEFAULT_TEXT, KEY_DEFAULT_TEXT, resolveConfigPath, resolveKeyPath } from "../defaults.ts";
import { CommandError, EXIT_FAILURE, EXIT_OK, UsageError } from "../errors.ts";
import { timeoutHint } from "./pub-timeout.ts";

// ---------------------------------------------------------------------------------------
// Shared by pub, sub, admin and bench
// ---------------------------------------------------------------------------------------

/** Timeouts on the command line are whole ms in this range: long enough for a WAN, short enough to notice a typo. */
export const TIMEOUT_MS_MIN = 1;
export const TIMEOUT_MS_MAX = 3_600_000;

export const CONFIG_FLAG: FlagSpec = {
  name: "config",
  kind: "string",
  valueName: "FILE",
  description: `The cluster file (${CONFIG_DEFAULT_TEXT})`,
};

export function keyFlag(description: string): FlagSpec {
  return { name: "key", kind: "string", valueName: "FILE", description: `${description} (${KEY_DEFAULT_TEXT})` };
}

export const TIMEOUT_FLAGS: readonly FlagSpec[] = [
  {
    name: "timeout",
    kind: "string",
    valueName: "MS",
    defaultValue: String(DEFAULT_TIMEOUTS.requestMs),
    description: "Fail a request or query that has no quorum after this long",
  },
  {
    name: "connect-timeout",
    kind: "string",
    valueName: "MS",
    defaultValue: String(DEFAULT_TIMEOUTS.connectMs),
    description: "Fail if too few replicas accept a session within this long",
  },
];

export interface ClientFlags {
  readonly configPath: string;
  readonly keyPath: string;
  readonly timeoutMs: number;
  readonly connectTimeoutMs: number;
  /** --crash-none-targets, for the commands that take it (CRASH_NONE_TARGETS_FLAG). */
  readonly crashNoneTargets?: CrashNoneTargets;
}

/** Where a crash/none publish goes (src/client/request-tracker.ts CrashNoneTargets). */
export const CRASH_NONE_TARGETS_FLAG: FlagSpec = {
  name: "crash-none-targets",
  kind: "string",
  valueName: "quorum|all",
  defaultValue: "quorum",
  description:
    "Where a crash/none publish goes: quorum, f+1 replicas (the others too when one refuses other than RATE_LIMITED, drops or is slow); all, every replica (a copy on each)",
};

/** --crash-none-targets: a UsageError for anything but quorum or all. */
export function readCrashNoneTargets(args: ParsedArgs): CrashNoneTargets {
  const value = args.requiredString(CRASH_NONE_TARGETS_FLAG.name);
  if (value !== "quorum" && value !== "all") throw new UsageError(`--crash-none-targets: expected quorum or all, got '${value}'`);
  return value;
}

/** Which replicas serve a total-order subscription (src/client/narrowing.ts, SubscribeOptions.sources). */
export const SOURCES_FLAG: FlagSpec = {
  name: "sources",
  kind: "string",
  valueName: "auto|quorum|all",
  defaultValue: "auto",
  description:
    "Total-order channels: quorum, f+1 replicas serve a subscription once started (every replica when a fault shows); all, every replica; auto, all on high and critical channels, quorum on the others",
};

/** --sources: a UsageError for anything but auto, quorum or all. */
export function readSources(args: ParsedArgs): SubscriptionSources {
  const value = args.requiredString(SOURCES_FLAG.name);
  if (value !== "auto" && value !== "quorum" && value !== "all") {
    throw new UsageError(`--sources: expected auto, quorum or all, got '${value}'`);
  }
  return value;
}

/** Reads the common flags; every problem is a UsageError (exit 2) before any file is opened. */
export function readClientFlags(args: ParsedArgs): ClientFlags {
  return {
    configPath: resolveConfigPath(args.string("config")),
    keyPath: resolveKeyPath(args.string("key")),
    timeoutMs: args.requiredInteger("timeout", TIMEOUT_MS_MIN, TIMEOUT_MS_MAX),
    connectTimeoutMs: args.requiredInteger("connect-timeout", TIMEOUT_MS_MIN, TIMEOUT_MS_MAX),
  };
}

/** A TAG argument: a UsageError naming what is wrong with it. */
export function requireTag(text: string, label = "TAG"): string {
  const problem = tagProblem(text);
  if (problem !== null) throw new UsageError(`${label}: ${problem}`);
  return text;
}

/**
 * Loads the cluster file and key (unless given) and connects. Warnings (key file mode, replicas that
 * are down but not needed for a quorum) go to standard error, one line each.
 */
export async function openClient(flags: ClientFlags, io: CommandIo, name: string, loaded?: ClientSetup): Promise<FitbClient> {
  const setup = loaded ?? loadClientSetup(flags.configPath, flags.keyPath);
  if (loaded === undefined) for (const warning of setup.warnings) io.err(`fitb ${name}: warning: ${warning}`);
  // Warnings while connecting are held back: if no quorum is reached, the error line
  // already names every replica and why, and the same facts twice would be noise.
  let connected = false;
  const heldBack: { line: string; replica: number | undefined }[] = [];
  const client = await withClientErrors(() =>
    FitbClient.connect(
      {
        config: setup.config,
        key: setup.key,
        timeouts: { connectMs: flags.connectTimeoutMs, requestMs: flags.timeoutMs, queryMs: flags.timeoutMs },
        ...(flags.crashNoneTargets === undefined ? {} : { crashNoneTargets: flags.crashNoneTargets }),
        onLog: (entry) => {
          if (entry.level !== "warn") return;
          const line = `fitb ${name}: warning: ${entry.message}`;
          if (connected) io.err(line);
          else heldBack.push({ line, replica: entry.replica });
        },
      },
      // With every replica refusing connections (none running there), fail at once.
      { refusedFailsAtOnce: true },
    ),
  );
  connected = true;
  // What went wrong with a replica that has since come up (one started a moment ago) is not news.
  const ready = new Set(client.readyReplicas());
  for (const held of heldBack) if (held.replica === undefined || !ready.has(held.replica)) io.err(held.line);
  return client;
}

/**
 * Runs `action`, turning a ClientError into a CommandError: one line, exit 1. `keyNote`
 * (see keyNoteOf) is added to refusals of the key, so the operator sees which key was
 * refused, not only that one was.
 */
export async function withClientErrors<T>(action: () => Promise<T>, keyNote = ""): Promise<T> {
  try {
    return await action();
  } catch (error) {
    if (error instanceof ClientError) throw new CommandError(`${error.message}${error.code === "UNAUTHORIZED" ? keyNote : ""}`);
    throw error;
  }
}

/** " (key ed25519:... from FILE)": which key a refusal was about. */
export function keyNoteOf(client: FitbClient, keyPath: string): string {
  return ` (key ${formatPublicKey(client.publicKey)} from ${keyPath})`;
}

/** `-ERR CODE reason` for a failed event; refusals of the key name it (`keyNote`). */
export function errLine(error: unknown, keyNote = ""): string {
  const code = error instanceof ClientError ? error.code : "INTERNAL";
  return `-ERR ${code} ${describeError(error)}${code === "UNAUTHORIZED" ? keyNote : ""}`;
}

// ---------------------------------------------------------------------------------------
// Reading lines from standard input
// ---------------------------------------------------------------------------------------

const NEWLINE = 0x0a;
const CARRIAGE_RETURN = 0x0d;

/** One line out of LineSplitter: its bytes, or the length of a line too long to keep. */
export type SplitLine = { readonly ok: true; readonly bytes: Uint8Array } | { readonly ok: false; readonly length: number };

/**
 * Cuts a byte stream into lines (`\n` or `\r\n`), keeping bytes as they are: a payload is
 * not text to this command, only a line. A line longer than `lineBytesMax` is not kept
 * (memory stays bounded); it comes out as a refusal with its length.
 */
export class LineSplitter {
  private parts: Uint8Array[] = [];
  private partBytes = 0;
  private overflowLength = -1;

  constructor(readonly lineBytesMax: number) {}

  push(chunk: Uint8Array): SplitLine[] {
    const lines: SplitLine[] = [];
    let start = 0;
    for (let at = chunk.indexOf(NEWLINE); at >= 0; at = chunk.indexOf(NEWLINE, start)) {
      this.append(chunk.subarray(start, at));
      lines.push(this.takeLine());
      start = at + 1;
    }
    this.append(chunk.subarray(start));
    return lines;
  }

  /** At end of input: the last line if it had no newline. */
  finish(): SplitLine[] {
    if (this.partBytes === 0 && this.overflowLength < 0) return [];
    return [this.takeLine()];
  }

  private append(bytes: Uint8Array): void {
    if (bytes.byteLength === 0) return;
    if (this.overflowLength >= 0) {
      this.overflowLength += bytes.byteLength;
      return;
    }
    // One byte of slack for a '\r' that is dropped at the end of the line.
    if (this.partBytes + bytes.byteLength > this.lineBytesMax + 1) {
      this.overflowLength = this.partBytes + bytes.byteLength;
      this.parts = [];
      this.partBytes = 0;
      return;
    }
    this.parts.push(bytes.slice());
    this.partBytes += bytes.byteLength;
  }

  private takeLine(): SplitLine {
    if (this.overflowLength >= 0) {
      const length = this.overflowLength;
      this.overflowLength = -1;
      return { ok: false, length };
    }
    let line = concat(this.parts, this.partBytes);
    this.parts = [];
    this.partBytes = 0;
    if (line.byteLength > 0 && line[line.byteLength - 1] === CARRIAGE_RETURN) line = line.subarray(0, line.byteLength - 1);
    if (line.byteLength > this.lineBytesMax) return { ok: false, length: line.byteLength };
    return { ok: true, bytes: line };
  }
}

function concat(parts: readonly Uint8Array[], total: number): Uint8Array {
  if (parts.length === 1) return parts[0] as Uint8Array;
  const out = new Uint8Array(total);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------------------

/** Answers that may be outstanding before reading stdin pauses. */
export const PUB_PENDING_ANSWERS_MAX = 65_536;

export const pubCommand: Command = {
  path: ["pub"],
  summary: "Publish events to a channel (MESSAGE, or one per stdin line)",
  description: [
    "Publishes MESSAGE to channel TAG, or, without MESSAGE, one event per line of standard",
    "input until EOF (lines end in \\n or \\r\\n; the bytes are published as they are).",
    "An empty line is published as an empty event (the relay, by contrast, skips empty lines).",
    "Events are batched into signed requests. For each event, in input order, prints",
    "'+OK TAG SEQ' once the channel's quorum acknowledged it, or '-ERR CODE reason'.",
    "SEQ is the channel sequence number on total-order channels and the publisher's own",
    "sequence number on unordered ones. Exits 1 if any event failed.",
    "A publish that timed out (-ERR TIMEOUT) may still be ordered: the command then says",
    "on standard error which quorum was missing and how to check with 'fitb sub'.",
  ],
  flags: [CONFIG_FLAG, keyFlag("This publisher's secret key file"), ...TIMEOUT_FLAGS, CRASH_NONE_TARGETS_FLAG],
  positionals: [
    { name: "TAG", description: "The channel, e.g. net.links", required: true },
    { name: "MESSAGE", description: "The event to publish; without it, read events from stdin", required: false, text: true },
  ],
  examples: [
    "fitb pub --config cluster.toml --key probe.key net.links 'eth0 down'",
    "tail -F /var/log/links.log | fitb pub --config cluster.toml --key probe.key net.links",
  ],
  run: runPub,
};

/**
 * How long `fitb pub` waits, before it publishes, for where the channel stands (for the hint
 * after a timeout, which then says N instead): a small part of a run, not a second --timeout.
 */
const START_SEQ_WAIT_MS = 2_000;

async function runPub(args: ParsedArgs, io: CommandIo): Promise<number> {
  const flags = { ...readClientFlags(args), crashNoneTargets: readCrashNoneTargets(args) };
  const tag = requireTag(args.requiredPositional("TAG"));
  const message = args.positional("MESSAGE");
  const client = await openClient(flags, io, "pub");
  try {
    const keyNote = keyNoteOf(client, flags.keyPath);
    // Where this run's events go at the earliest, for the hint after a timeout (below).
    // Waited for at most START_SEQ_WAIT_MS: a group that answers no query within it would
    // otherwise cost the whole --timeout before the publishes even start.
    let waited: ReturnType<typeof setTimeout> | undefined;
    const startSeq = await Promise.race([
      client.nextChannelSeq(tag).catch(() => undefined),
      new Promise<undefined>((resolve) => {
        waited = setTimeout(() => resolve(undefined), Math.min(flags.timeoutMs, START_SEQ_WAIT_MS));
      }),
    ]);
    clearTimeout(waited);
    const publisher = new Publisher(client, tag);
    let failed = 0;
    let timedOut = 0;
    const answers = new InOrder<EventAck>((outcome: Settled<EventAck>) => {
      if (outcome.ok) io.out(`+OK ${outcome.value.tag} ${outcome.value.seq}`);
      else {
        failed++;
        if (outcome.error instanceof ClientError && outcome.error.code === "TIMEOUT") timedOut++;
        io.out(errLine(outcome.error, keyNote));
      }
    }, PUB_PENDING_ANSWERS_MAX);
    if (message !== undefined) answers.push(publisher.publish(new TextEncoder().encode(message)));
    else await publishLines(publisher, answers, client.config.limits.eventBytesMax);
    await answers.drained();
    await publisher.close();
    if (timedOut > 0) for (const line of timeoutHint({ client, flags, tag, timedOut, startSeq })) io.err(`fitb pub: ${line}`);
    return failed === 0 ? EXIT_OK : EXIT_FAILURE;
  } finally {
    client.close();
  }
}

/**
 * Publishes stdin line by line, pausing the reading while the publisher or the answers
 * are full. Lines of one chunk are published without yielding in between, so the
 * publisher sends them as one batch.
 */
async function publishLines(publisher: Publisher, answers: InOrder<EventAck>, eventBytesMax: number): Promise<void> {
  const splitter = new LineSplitter(eventBytesMax);
  const take = async (lines: readonly SplitLine[]): Promise<void> => {
    for (const line of lines) {
      if (answers.isFull) await answers.drained();
      if (!line.ok) {
        answers.push(Promise.reject(new ClientError("TOO_LARGE", `line of ${line.length} bytes; an event is at most ${eventBytesMax}`)));
        continue;
      }
      if (!publisher.hasRoom(line.bytes.byteLength)) await publisher.waitForRoom(line.bytes.byteLength);
      answers.push(publisher.publish(line.bytes));
    }
  };
  for await (const chunk of Bun.stdin.stream()) await take(splitter.push(chunk));
  await take(splitter.finish());
}
